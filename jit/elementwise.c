/* Elementwise chain kernels: one loop that evaluates the whole chain per
 * element by calling the linked formulas kn_jit_<op>_f32, which inline, so
 * O3 vectorizes the loop with no intermediate arrays. */
#include "llvm.h"
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the memory cache: chain (normalized to words) -> kernel; the same
 * words key the disk cache (jit/llvm.c) ---- */
typedef struct entry {
    struct entry *next;
    uint64_t hash;
    size_t nwords;
    uint32_t *words;
    kn_jit_kernel fn;
} entry;

#define NBUCKETS 256
static entry *buckets[NBUCKETS];
static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER; /* held while compiling */

static uint32_t float_bits(float v) {
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    return u;
}

/* Four words per step with unused fields zeroed, so equal chains give equal
 * words whatever the caller left in the fields a step does not use. */
static uint32_t *normalize(const kn_jit_step *s, int nsteps, int ninputs, size_t *nwords) {
    *nwords = 2 + 4 * (size_t)nsteps;
    uint32_t *w = calloc(*nwords, sizeof *w);
    if (!w) return NULL;
    w[0] = (uint32_t)ninputs;
    w[1] = (uint32_t)nsteps;
    for (int i = 0; i < nsteps; i++) {
        uint32_t *x = w + 2 + 4 * i;
        x[0] = (uint32_t)s[i].kind;
        if (s[i].kind == KN_JIT_INPUT || s[i].kind == KN_JIT_SCALAR) x[1] = (uint32_t)s[i].input;
        if (s[i].kind == KN_JIT_CONST) x[1] = float_bits(s[i].value);
        if (s[i].kind == KN_JIT_OP) {
            x[1] = (uint32_t)s[i].op;
            x[2] = (uint32_t)s[i].a;
            x[3] = kn_op_table[s[i].op].arity == 2 ? (uint32_t)s[i].b : 0;
        }
    }
    return w;
}

static uint64_t fnv1a(const uint32_t *w, size_t n) {
    uint64_t h = 0xcbf29ce484222325u;
    for (size_t i = 0; i < n; i++)
        for (int k = 0; k < 4; k++) h = (h ^ ((w[i] >> (8 * k)) & 0xff)) * 0x100000001b3u;
    return h;
}

/* ---- validation: everything but the availability of formulas ---- */
static bool check(const kn_jit_step *s, int nsteps, int ninputs) {
    if (!s || nsteps < 1 || nsteps > KN_JIT_MAX_STEPS)
        return kn__error("jit: a chain needs 1 to %d steps, got %d", KN_JIT_MAX_STEPS, s ? nsteps : 0), false;
    if (ninputs < 0 || ninputs > KN_JIT_MAX_INPUTS)
        return kn__error("jit: a chain takes 0 to %d inputs, got %d", KN_JIT_MAX_INPUTS, ninputs), false;
    for (int i = 0; i < nsteps; i++) {
        if (s[i].kind == KN_JIT_CONST) continue;
        if (s[i].kind == KN_JIT_INPUT || s[i].kind == KN_JIT_SCALAR) {
            if (s[i].input < 0 || s[i].input >= ninputs)
                return kn__error("jit: step %d reads input %d of %d", i, s[i].input, ninputs), false;
            continue;
        }
        if (s[i].kind != KN_JIT_OP)
            return kn__error("jit: step %d has unknown kind %d", i, (int)s[i].kind), false;
        if ((unsigned)s[i].op >= KN_OP_COUNT)
            return kn__error("jit: step %d has unknown op %d", i, (int)s[i].op), false;
        const kn_op_info *info = &kn_op_table[s[i].op];
        if (info->kind != KN_KIND_ELEMENTWISE || info->arity < 1 || info->arity > 2)
            return kn__error("jit: step %d: op %s is not a unary or binary elementwise op", i,
                             info->name), false;
        bool bad_a = s[i].a < 0 || s[i].a >= i;
        bool bad_b = info->arity == 2 && (s[i].b < 0 || s[i].b >= i);
        if (bad_a || bad_b)
            return kn__error("jit: step %d (%s) uses step %d, which is not an earlier step", i,
                             info->name, bad_a ? s[i].a : s[i].b), false;
    }
    return true;
}

/* ---- code generation ---- */

/* Emits body(in0..in{n-1}, out, begin, end), internal, always-inline, with
 * noalias pointers (the vectorizer then needs no overlap checks), and the
 * exported kernel(args, begin, end) that unpacks args and calls it. */
static LLVMValueRef build(kn_jit_unit *u, const kn_jit_step *s, int nsteps, int ninputs) {
    LLVMContextRef c = u->ctx;
    LLVMTypeRef f32 = LLVMFloatTypeInContext(c), i64 = LLVMInt64TypeInContext(c);
    LLVMTypeRef ptr = LLVMPointerTypeInContext(c, 0), vd = LLVMVoidTypeInContext(c);
    LLVMTypeRef bparams[KN_JIT_MAX_INPUTS + 3];
    for (int k = 0; k <= ninputs; k++) bparams[k] = ptr;
    bparams[ninputs + 1] = bparams[ninputs + 2] = i64;
    LLVMTypeRef btype = LLVMFunctionType(vd, bparams, (unsigned)ninputs + 3, 0);
    LLVMValueRef body = LLVMAddFunction(u->mod, "kn_body", btype);
    LLVMSetLinkage(body, LLVMInternalLinkage);
    unsigned noalias = LLVMGetEnumAttributeKindForName("noalias", 7);
    unsigned inl = LLVMGetEnumAttributeKindForName("alwaysinline", 12);
    for (int k = 0; k <= ninputs; k++)
        LLVMAddAttributeAtIndex(body, (unsigned)k + 1, LLVMCreateEnumAttribute(c, noalias, 0));
    LLVMAddAttributeAtIndex(body, LLVMAttributeFunctionIndex, LLVMCreateEnumAttribute(c, inl, 0));

    LLVMBuilderRef b = LLVMCreateBuilderInContext(c);
    LLVMBasicBlockRef entry = LLVMAppendBasicBlockInContext(c, body, "entry");
    LLVMBasicBlockRef loop = LLVMAppendBasicBlockInContext(c, body, "loop");
    LLVMBasicBlockRef done = LLVMAppendBasicBlockInContext(c, body, "done");
    LLVMValueRef begin = LLVMGetParam(body, (unsigned)ninputs + 1);
    LLVMValueRef end = LLVMGetParam(body, (unsigned)ninputs + 2);
    LLVMPositionBuilderAtEnd(b, entry);
    LLVMBuildCondBr(b, LLVMBuildICmp(b, LLVMIntSLT, begin, end, ""), loop, done);

    LLVMPositionBuilderAtEnd(b, loop);
    LLVMValueRef i = LLVMBuildPhi(b, i64, "i");
    LLVMValueRef *v = malloc((size_t)nsteps * sizeof *v);
    LLVMValueRef fn = NULL;
    if (!v) {
        kn__error("jit: out of memory");
        goto out;
    }
    for (int k = 0; k < nsteps; k++) {
        if (s[k].kind == KN_JIT_INPUT || s[k].kind == KN_JIT_SCALAR) {
            LLVMValueRef zero = LLVMConstInt(i64, 0, 0), *at = s[k].kind == KN_JIT_SCALAR ? &zero : &i;
            LLVMValueRef p = LLVMBuildInBoundsGEP2(b, f32, LLVMGetParam(body, (unsigned)s[k].input), at, 1, "");
            v[k] = LLVMBuildLoad2(b, f32, p, "");  /* a scalar's load is hoisted out of the loop */
            LLVMSetAlignment(v[k], 4);
        } else if (s[k].kind == KN_JIT_CONST) {
            v[k] = LLVMConstReal(f32, s[k].value); /* a float widens to double exactly */
        } else {
            const kn_op_info *info = &kn_op_table[s[k].op];
            char name[64];
            snprintf(name, sizeof name, "kn_jit_%s_f32", info->name);
            LLVMValueRef f = LLVMGetNamedFunction(u->mod, name);
            if (!f || LLVMCountParams(f) != (unsigned)info->arity) {
                kn__error("jit: step %d: op %s has no f32 formula to compile", k, info->name);
                goto out;
            }
            LLVMValueRef args[2] = {v[s[k].a], info->arity == 2 ? v[s[k].b] : NULL};
            v[k] = LLVMBuildCall2(b, LLVMGlobalGetValueType(f), f, args, (unsigned)info->arity, "");
        }
    }
    LLVMValueRef q = LLVMBuildInBoundsGEP2(b, f32, LLVMGetParam(body, (unsigned)ninputs), &i, 1, "");
    LLVMSetAlignment(LLVMBuildStore(b, v[nsteps - 1], q), 4);
    LLVMValueRef next = LLVMBuildNSWAdd(b, i, LLVMConstInt(i64, 1, 0), "");
    LLVMBuildCondBr(b, LLVMBuildICmp(b, LLVMIntSLT, next, end, ""), loop, done);
    LLVMValueRef in_v[2] = {begin, next};
    LLVMBasicBlockRef in_b[2] = {entry, loop};
    LLVMAddIncoming(i, in_v, in_b, 2);
    LLVMPositionBuilderAtEnd(b, done);
    LLVMBuildRetVoid(b);

    LLVMTypeRef kparams[3] = {ptr, i64, i64};
    fn = LLVMAddFunction(u->mod, "kn_kernel", LLVMFunctionType(vd, kparams, 3, 0));
    LLVMPositionBuilderAtEnd(b, LLVMAppendBasicBlockInContext(c, fn, "entry"));
    LLVMValueRef cargs[KN_JIT_MAX_INPUTS + 3];
    for (int k = 0; k <= ninputs; k++) {
        LLVMValueRef idx = LLVMConstInt(i64, (unsigned long long)k, 0);
        LLVMValueRef slot = LLVMBuildInBoundsGEP2(b, ptr, LLVMGetParam(fn, 0), &idx, 1, "");
        cargs[k] = LLVMBuildLoad2(b, ptr, slot, "");
    }
    cargs[ninputs + 1] = LLVMGetParam(fn, 1);
    cargs[ninputs + 2] = LLVMGetParam(fn, 2);
    LLVMBuildCall2(b, btype, body, cargs, (unsigned)ninputs + 3, "");
    LLVMBuildRetVoid(b);
out:
    free(v);
    LLVMDisposeBuilder(b);
    return fn;
}

/* From the disk cache if there, else built and compiled (and stored). */
static kn_jit_kernel compile(const kn_jit_step *s, int nsteps, int ninputs, const uint32_t *w,
                             size_t nw) {
    void *code = kn__jit_load(w, nw);
    if (!code) {
        kn_jit_unit u;
        if (!kn__jit_unit_new(&u)) return NULL;
        LLVMValueRef fn = build(&u, s, nsteps, ninputs);
        if (!fn) {
            kn__jit_unit_dispose(&u);
            return NULL;
        }
        code = kn__jit_compile(&u, fn, w, nw);
    }
    kn_jit_kernel k;
    memcpy(&k, &code, sizeof k); /* object pointer to function pointer */
    return k;
}

kn_jit_kernel kn__jit_elementwise(const kn_jit_step *steps, int nsteps, int ninputs) {
    if (!check(steps, nsteps, ninputs)) return NULL;
    size_t nw;
    uint32_t *w = normalize(steps, nsteps, ninputs, &nw);
    if (!w) return kn__error("jit: out of memory");
    uint64_t h = fnv1a(w, nw);
    pthread_mutex_lock(&cache_lock);
    kn_jit_kernel fn = NULL;
    entry **bucket = &buckets[h % NBUCKETS];
    for (entry *e = *bucket; e && !fn; e = e->next)
        if (e->hash == h && e->nwords == nw && !memcmp(e->words, w, nw * sizeof *w)) fn = e->fn;
    if (!fn && (fn = compile(steps, nsteps, ninputs, w, nw))) {
        entry *e = malloc(sizeof *e);
        if (e) {
            *e = (entry){*bucket, h, nw, w, fn};
            *bucket = e;
            w = NULL; /* kept by the entry */
        }
    }
    pthread_mutex_unlock(&cache_lock);
    free(w);
    return fn;
}
