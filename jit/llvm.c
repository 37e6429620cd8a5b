/* The process-wide LLJIT: one instance, made on first use, for the host CPU
 * with all its features. Each compile gets a fresh context and module with
 * the scalar bitcode linked in, runs O3 (the formulas inline and the loops
 * vectorize), and adds the module to the JIT. No fast-math flags are ever
 * set and the bitcode was built with -ffp-contract=off, so LLVM neither
 * contracts nor reassociates: results are bitwise those of the eager loops. */
#include "llvm.h"
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The bitcode of jit/scalar_bitcode.c, generated at build time by jit/embed.c. */
extern const unsigned char kn__scalar_bc[];
extern const size_t kn__scalar_bc_len;

static pthread_once_t once = PTHREAD_ONCE_INIT;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER; /* compiles, stats */
static LLVMOrcLLJITRef jit;
static LLVMTargetMachineRef pass_tm; /* the cost models of the pass pipeline */
static char *host_triple, *host_cpu, *host_features;
static const char *host_layout;       /* owned by jit */
static char init_error[512];
static char *last_ir;
static uint64_t compiles, serial; /* serial: symbol names, failures included */

/* LLVM reports some errors (bitcode, linking) through the context's
 * diagnostic handler, whose default exits the process on an error. */
static _Thread_local char diag[512];

static void on_diag(LLVMDiagnosticInfoRef info, void *unused) {
    (void)unused;
    if (LLVMGetDiagInfoSeverity(info) != LLVMDSError) return; /* warnings: ignored */
    char *s = LLVMGetDiagInfoDescription(info);
    snprintf(diag, sizeof diag, "%s", s);
    LLVMDisposeMessage(s);
}

/* Takes and frees e's message into buf. */
static const char *error_text(LLVMErrorRef e, char *buf, size_t n) {
    char *s = LLVMGetErrorMessage(e);
    snprintf(buf, n, "%s", s);
    LLVMDisposeErrorMessage(s);
    return buf;
}

static void init(void) {
    LLVMInitializeNativeTarget();
    LLVMInitializeNativeAsmPrinter();
    host_triple = LLVMGetDefaultTargetTriple();
    host_cpu = LLVMGetHostCPUName();
    host_features = LLVMGetHostCPUFeatures();
    LLVMTargetRef target;
    char *msg = NULL;
    if (LLVMGetTargetFromTriple(host_triple, &target, &msg)) {
        snprintf(init_error, sizeof init_error, "%s", msg);
        LLVMDisposeMessage(msg);
        return;
    }
    LLVMTargetMachineRef tm[2];
    for (int i = 0; i < 2; i++)
        tm[i] = LLVMCreateTargetMachine(target, host_triple, host_cpu, host_features,
                                        LLVMCodeGenLevelAggressive, LLVMRelocDefault,
                                        LLVMCodeModelJITDefault);
    pass_tm = tm[0];
    LLVMOrcLLJITBuilderRef b = LLVMOrcCreateLLJITBuilder();
    LLVMOrcLLJITBuilderSetJITTargetMachineBuilder(
        b, LLVMOrcJITTargetMachineBuilderCreateFromTargetMachine(tm[1]));
    LLVMErrorRef e = LLVMOrcCreateLLJIT(&jit, b);
    if (e) {
        error_text(e, init_error, sizeof init_error);
        jit = NULL;
        return;
    }
    host_layout = LLVMOrcLLJITGetDataLayoutStr(jit);
}

static void set_fn_attr(LLVMContextRef ctx, LLVMValueRef f, const char *kind, bool on) {
    unsigned k = LLVMGetEnumAttributeKindForName(kind, strlen(kind));
    if (on)
        LLVMAddAttributeAtIndex(f, LLVMAttributeFunctionIndex, LLVMCreateEnumAttribute(ctx, k, 0));
    else
        LLVMRemoveEnumAttributeAtIndex(f, LLVMAttributeFunctionIndex, k);
}

bool kn__jit_unit_new(kn_jit_unit *u) {
    pthread_once(&once, init);
    if (!jit) {
        kn__error("jit: LLVM could not start: %s", init_error);
        return false;
    }
    u->tsc = LLVMOrcCreateNewThreadSafeContext();
    u->ctx = LLVMOrcThreadSafeContextGetContext(u->tsc);
    LLVMContextSetDiagnosticHandler(u->ctx, on_diag, NULL);
    u->mod = LLVMModuleCreateWithNameInContext("kn_jit", u->ctx);
    LLVMSetTarget(u->mod, host_triple);
    LLVMSetDataLayout(u->mod, host_layout);

    /* A fresh parse per unit: a module can be linked (and consumed) once. */
    LLVMMemoryBufferRef buf = LLVMCreateMemoryBufferWithMemoryRange(
        (const char *)kn__scalar_bc, kn__scalar_bc_len, "kn_scalar.bc", 0);
    LLVMModuleRef formulas;
    diag[0] = 0;
    bool bad = LLVMParseBitcodeInContext2(u->ctx, buf, &formulas);
    LLVMDisposeMemoryBuffer(buf);
    if (!bad) {
        /* Same triple and layout as the JIT: no mismatch warnings when linking. */
        LLVMSetTarget(formulas, host_triple);
        LLVMSetDataLayout(formulas, host_layout);
        bad = LLVMLinkModules2(u->mod, formulas); /* consumes formulas */
    }
    if (bad) {
        kn__error("jit: cannot load the scalar formulas: %s", diag[0] ? diag : "unknown error");
        kn__jit_unit_dispose(u);
        return false;
    }
    /* Private to the module and inlined into the kernels; O3 drops them after. */
    for (LLVMValueRef f = LLVMGetFirstFunction(u->mod); f; f = LLVMGetNextFunction(f)) {
        if (LLVMIsDeclaration(f)) continue;
        LLVMSetLinkage(f, LLVMInternalLinkage);
        set_fn_attr(u->ctx, f, "noinline", false);
        set_fn_attr(u->ctx, f, "optnone", false);
        set_fn_attr(u->ctx, f, "alwaysinline", true);
    }
    return true;
}

void kn__jit_unit_dispose(kn_jit_unit *u) {
    if (u->mod) LLVMDisposeModule(u->mod);
    if (u->tsc) LLVMOrcDisposeThreadSafeContext(u->tsc);
    *u = (kn_jit_unit){0};
}

/* Every function is code-generated for this CPU; this also replaces the
 * -march=native strings clang put on the formulas, which could otherwise
 * differ from LLVM's host feature list and block inlining. */
static void target_host(LLVMModuleRef m) {
    static const char *const keys[] = {"target-cpu", "target-features", "tune-cpu"};
    for (LLVMValueRef f = LLVMGetFirstFunction(m); f; f = LLVMGetNextFunction(f)) {
        if (LLVMIsDeclaration(f)) continue;
        for (int i = 0; i < 3; i++)
            LLVMRemoveStringAttributeAtIndex(f, LLVMAttributeFunctionIndex, keys[i],
                                             (unsigned)strlen(keys[i]));
        LLVMAddTargetDependentFunctionAttr(f, "target-cpu", host_cpu);
        LLVMAddTargetDependentFunctionAttr(f, "target-features", host_features);
    }
}

static void *fail(kn_jit_unit *u, const char *what, LLVMErrorRef e) {
    char buf[512];
    kn__error("jit: %s: %s", what, error_text(e, buf, sizeof buf));
    kn__jit_unit_dispose(u);
    return NULL;
}

void *kn__jit_compile(kn_jit_unit *u, LLVMValueRef fn) {
    pthread_mutex_lock(&lock);
    void *code = NULL;
    char name[40];
    snprintf(name, sizeof name, "kn_kernel_%llu", (unsigned long long)serial++);
    LLVMSetValueName2(fn, name, strlen(name));
    LLVMSetLinkage(fn, LLVMExternalLinkage);
    target_host(u->mod);

    char *msg = NULL;
    if (LLVMVerifyModule(u->mod, LLVMReturnStatusAction, &msg)) {
        kn__error("jit: the generated IR is invalid: %s", msg ? msg : "");
        LLVMDisposeMessage(msg);
        kn__jit_unit_dispose(u);
        goto out;
    }
    LLVMDisposeMessage(msg);

    LLVMPassBuilderOptionsRef opts = LLVMCreatePassBuilderOptions();
    LLVMPassBuilderOptionsSetLoopVectorization(opts, 1);
    LLVMPassBuilderOptionsSetSLPVectorization(opts, 1);
    LLVMPassBuilderOptionsSetLoopInterleaving(opts, 1);
    LLVMPassBuilderOptionsSetLoopUnrolling(opts, 1);
    LLVMErrorRef e = LLVMRunPasses(u->mod, KN_LLVM_PIPELINE, pass_tm, opts);
    LLVMDisposePassBuilderOptions(opts);
    if (e) {
        fail(u, "optimizing", e);
        goto out;
    }
    char *ir = LLVMPrintModuleToString(u->mod);
    free(last_ir);
    last_ir = strdup(ir);
    LLVMDisposeMessage(ir);

    LLVMOrcThreadSafeModuleRef tsm = LLVMOrcCreateNewThreadSafeModule(u->mod, u->tsc);
    LLVMOrcDisposeThreadSafeContext(u->tsc); /* tsm keeps the context alive */
    *u = (kn_jit_unit){0};
    e = LLVMOrcLLJITAddLLVMIRModule(jit, LLVMOrcLLJITGetMainJITDylib(jit), tsm);
    LLVMOrcExecutorAddress addr = 0;
    if (!e) e = LLVMOrcLLJITLookup(jit, &addr, name); /* code generation happens here */
    if (e) {
        fail(u, "compiling", e);
        goto out;
    }
    compiles++;
    code = (void *)(uintptr_t)addr;
out:
    pthread_mutex_unlock(&lock);
    return code;
}

char *kn__jit_last_ir(void) {
    pthread_mutex_lock(&lock);
    char *s = last_ir ? strdup(last_ir) : NULL;
    pthread_mutex_unlock(&lock);
    return s;
}

uint64_t kn__jit_compile_count(void) {
    pthread_mutex_lock(&lock);
    uint64_t n = compiles;
    pthread_mutex_unlock(&lock);
    return n;
}
