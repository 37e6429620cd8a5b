/* The CUDA printer (jit/print.c): kernels of every shape print as CUDA C
 * that NVRTC compiles together with core/scalar.h. NVRTC is loaded with
 * dlopen, so the build needs no CUDA headers and the tests are skipped
 * where it is missing. No GPU is needed: NVRTC only emits PTX. */
#include "../jit/jit.h"
#include "helpers.h"
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

static void cuda_setup(void) {
    test_setup(KN_NO_SEED);
    setenv("KN_CACHE", "0", 1); /* the descriptions are checked by the CPU JIT: keep its cache off disk */
}
TestSuite(cuda, .init = cuda_setup, .fini = test_teardown);

#define IN(k) {.kind = KN_JIT_INPUT, .arg = (k)}
#define C(v) {.kind = KN_JIT_CONST, .value = (v)}
#define ACC(p) {.kind = KN_JIT_ACC, .arg = (p)}
#define ROWLEN {.kind = KN_JIT_ROWLEN}
#define OP1(o, x) {.kind = KN_JIT_OP, .op = KN_OP_##o, .a = (x)}
#define OP2(o, x, y) {.kind = KN_JIT_OP, .op = KN_OP_##o, .a = (x), .b = (y)}
#define DESC(rows_, nin_, nout_, steps_, phases_, ...)                                                      \
    (kn_jit_desc) {                                                                                         \
        .rows = (rows_), .nin = (nin_), .nout = (nout_), .inner = {__VA_ARGS__}, .steps = (steps_),         \
        .nsteps = (int)(sizeof(steps_) / sizeof *(steps_)), .phases = (phases_),                           \
        .nphases = (int)(sizeof(phases_) / sizeof *(phases_))                                               \
    }

/* ---- the kernels ---- */

/* out2 = tanh(x + b) * 0.5 + sigmoid(x), out3 = exp(x + b), where b is
 * broadcast along the row (inner stride 0); two phases share steps. */
static const kn_jit_step pw_steps[] = {
    IN(0), IN(1), OP2(add, 0, 1), OP1(tanh, 2), C(0.5f), OP2(mul, 3, 4), OP1(sigmoid, 0), OP2(add, 5, 6),
    OP1(exp, 2),
};
static const kn_jit_phase pw_phases[] = {{KN_PHASE_STORE, 7, 2, false, false}, {KN_PHASE_STORE, 8, 3, false, false}};

/* softmax as in jit/jit.h: the exponentials (of x - max: exp's non-positive
 * form) are stored, then scaled in place */
static const kn_jit_step sm_steps[] = {
    IN(0), ACC(0), OP2(sub, 0, 1), {.kind = KN_JIT_OP, .op = KN_OP_exp, .a = 2, .nonpos = true}, ACC(1), IN(1),
    C(1.0f), OP2(div, 6, 4), OP2(mul, 5, 7),
};
static const kn_jit_phase sm_phases[] = {
    {KN_PHASE_MAX, 0, -1, true, false}, {KN_PHASE_SUM, 3, 1, false, false}, {KN_PHASE_STORE, 8, 1, false, false},
};

/* y = (x - mean) * rstd * w + b, also storing mean and rstd once per row */
static const kn_jit_step ln_steps[] = {
    IN(0), ACC(0), ROWLEN, OP2(div, 1, 2),                    /* 3: mean */
    OP2(sub, 0, 3), OP2(mul, 4, 4), ACC(1), OP2(div, 6, 2),   /* 7: var */
    C(1e-5f), OP2(add, 7, 8), OP1(rsqrt, 9),                  /* 10: rstd */
    OP2(mul, 4, 10), IN(1), OP2(mul, 11, 12), IN(2), OP2(add, 13, 14),
};
static const kn_jit_phase ln_phases[] = {
    {KN_PHASE_SUM, 0, -1, false, false}, {KN_PHASE_SUM, 5, -1, false, false}, {KN_PHASE_STORE, 15, 3, false, false},
    {KN_PHASE_ROW_STORE, 3, 4, false, false}, {KN_PHASE_ROW_STORE, 10, 5, false, false},
};

/* max |x| over each row, one value per row */
static const kn_jit_step mx_steps[] = {IN(0), OP1(abs, 0), ACC(0)};
static const kn_jit_phase mx_phases[] = {{KN_PHASE_MAX, 1, -1, false, false}, {KN_PHASE_ROW_STORE, 2, 1, false, false}};

/* relu's gradient: where(y > 0, g, 0), the boolean a float inside the kernel */
static const kn_jit_step wh_steps[] = {
    IN(0), C(0.0f), OP2(gt, 0, 1), IN(1), {.kind = KN_JIT_OP, .op = KN_OP_where, .a = 2, .b = 3, .c = 1},
};
static const kn_jit_phase wh_phases[] = {{KN_PHASE_STORE, 4, 2, false, false}};

static kn_jit_desc pointwise_desc(void) { return DESC(false, 2, 2, pw_steps, pw_phases, 1, 0, 1, 1); }
static kn_jit_desc softmax_desc(void) { return DESC(true, 1, 1, sm_steps, sm_phases, 1, 1); }
static kn_jit_desc layer_norm_desc(void) { return DESC(true, 3, 3, ln_steps, ln_phases, 1, 1, 1, 1, 0, 0); }
static kn_jit_desc row_max_desc(void) { return DESC(true, 1, 1, mx_steps, mx_phases, 1, 0); }
static kn_jit_desc where_desc(void) { return DESC(false, 2, 1, wh_steps, wh_phases, 1, 1, 1); }

/* The CUDA text of d, after checking that d is a valid description (the
 * CPU JIT compiles only those). Caller frees. */
static char *cuda_source(const kn_jit_desc *d, const char *name) {
    cr_assert(kn__jit_kernel(d), "invalid description %s: %s", name, kn_last_error() ? kn_last_error() : "?");
    char *src = kn__jit_cuda_source(d, name);
    cr_assert(src, "kn__jit_cuda_source(%s) failed", name);
    return src;
}

/* ---- NVRTC, loaded at run time ---- */

typedef int nvrtc_result; /* NVRTC_SUCCESS is 0 */
typedef struct nvrtc_program_s *nvrtc_program;
static struct {
    nvrtc_result (*create)(nvrtc_program *, const char *, const char *, int, const char *const *,
                           const char *const *);
    nvrtc_result (*compile)(nvrtc_program, int, const char *const *);
    nvrtc_result (*log_size)(nvrtc_program, size_t *);
    nvrtc_result (*log)(nvrtc_program, char *);
    nvrtc_result (*ptx_size)(nvrtc_program, size_t *);
    nvrtc_result (*ptx)(nvrtc_program, char *);
    nvrtc_result (*destroy)(nvrtc_program *);
} nvrtc;

/* Loads NVRTC or skips the test. */
static void need_nvrtc(void) {
    static const char *const libs[] = {
        "libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so.11.2",
        "/usr/local/cuda/lib64/libnvrtc.so", "/usr/local/cuda/targets/x86_64-linux/lib/libnvrtc.so",
    };
    void *h = NULL;
    for (size_t i = 0; !h && i < sizeof libs / sizeof *libs; i++) h = dlopen(libs[i], RTLD_NOW | RTLD_LOCAL);
    if (!h) cr_skip_test("NVRTC not found (libnvrtc.so, also under /usr/local/cuda): CUDA source not compiled");
#define LOAD(field, sym) cr_assert((nvrtc.field = (__typeof__(nvrtc.field))dlsym(h, sym)), "NVRTC lacks " sym)
    LOAD(create, "nvrtcCreateProgram");
    LOAD(compile, "nvrtcCompileProgram");
    LOAD(log_size, "nvrtcGetProgramLogSize");
    LOAD(log, "nvrtcGetProgramLog");
    LOAD(ptx_size, "nvrtcGetPTXSize");
    LOAD(ptx, "nvrtcGetPTX");
    LOAD(destroy, "nvrtcDestroyProgram");
#undef LOAD
}

/* The text of core/scalar.h (read from the source tree). Caller frees. */
static char *scalar_header(void) {
    const char *path = KN_SOURCE_ROOT "/core/scalar.h";
    FILE *f = fopen(path, "rb");
    cr_assert(f, "cannot open %s", path);
    char *text = NULL;
    size_t len = 0;
    FILE *o = open_memstream(&text, &len);
    cr_assert(o);
    char buf[4096];
    for (size_t n; (n = fread(buf, 1, sizeof buf, f)) > 0;) fwrite(buf, 1, n, o);
    fclose(f);
    cr_assert_eq(fclose(o), 0);
    return text;
}

#define ARCH "compute_80"

/* Compiles scalar.h + the kernel's text for ARCH and checks that the PTX
 * defines the entry `name`. The #line makes the log's line numbers count
 * in the kernel's own text. */
static void compile_cuda(const kn_jit_desc *d, const char *name) {
    need_nvrtc();
    char *kernel = cuda_source(d, name), *scalar = scalar_header(), *src = NULL;
    size_t len = 0;
    FILE *o = open_memstream(&src, &len);
    cr_assert(o);
    fprintf(o, "%s\n#line 1 \"%s.cu\"\n%s", scalar, name, kernel);
    cr_assert_eq(fclose(o), 0);

    nvrtc_program prog;
    cr_assert_eq(nvrtc.create(&prog, src, name, 0, NULL, NULL), 0, "nvrtcCreateProgram failed");
    const char *opts[] = {"--gpu-architecture=" ARCH, "--std=c++17"};
    nvrtc_result rc = nvrtc.compile(prog, 2, opts);
    size_t n = 0;
    cr_assert_eq(nvrtc.log_size(prog, &n), 0);
    char *log = calloc(n + 1, 1);
    cr_assert(log);
    cr_assert_eq(nvrtc.log(prog, log), 0);
    cr_assert_eq(rc, 0, "NVRTC failed on %s (%s):\n%s\n---- %s.cu ----\n%s", name, ARCH, log, name, kernel);
    /* scalar.h's unused formulas warn (#177-D); the kernel's own text must not */
    char file[128];
    snprintf(file, sizeof file, "%s.cu(", name);
    cr_assert(!strstr(log, file), "NVRTC warns on %s:\n%s\n---- %s.cu ----\n%s", name, log, name, kernel);

    cr_assert_eq(nvrtc.ptx_size(prog, &n), 0);
    char *ptx = calloc(n + 1, 1);
    cr_assert(ptx);
    cr_assert_eq(nvrtc.ptx(prog, ptx), 0);
    char entry[128];
    snprintf(entry, sizeof entry, ".entry %s(", name);
    cr_assert(strstr(ptx, entry), "the PTX of %s lacks '%s'", name, entry);

    nvrtc.destroy(&prog);
    free(ptx);
    free(log);
    free(src);
    free(scalar);
    free(kernel);
}

Test(cuda, nvrtc_pointwise_broadcast) {
    kn_jit_desc d = pointwise_desc();
    compile_cuda(&d, "kn_pointwise");
}

Test(cuda, nvrtc_softmax) {
    kn_jit_desc d = softmax_desc();
    compile_cuda(&d, "kn_softmax");
}

Test(cuda, nvrtc_layer_norm) {
    kn_jit_desc d = layer_norm_desc();
    compile_cuda(&d, "kn_layer_norm");
}

Test(cuda, nvrtc_row_max) {
    kn_jit_desc d = row_max_desc();
    compile_cuda(&d, "kn_row_max");
}

Test(cuda, nvrtc_where) {
    kn_jit_desc d = where_desc();
    compile_cuda(&d, "kn_where");
}

/* ---- the printed text, without NVRTC ---- */

static void assert_has(const char *text, const char *what) {
    cr_assert(strstr(text, what), "'%s' missing from:\n%s", what, text);
}

/* Every thread gets each reduced value, stored elements are ordered before
 * later phases, and a row store is written once per row. */
Test(cuda, row_kernel_text) {
    kn_jit_desc d = softmax_desc();
    char *s = cuda_source(&d, "kn_softmax");
    assert_has(s, "__launch_bounds__(KN_CUDA_BLOCK) kn_softmax(");
    assert_has(s, "acc0 = kn_block_max(part, a);");
    assert_has(s, "acc1 = (float)kn_block_sum(part, a);");
    assert_has(s, "op1[c] = v3;");
    cr_assert(!strstr(s, "INFINITY"), "NVRTC has no INFINITY:\n%s", s);
    free(s);

    d = layer_norm_desc();
    s = cuda_source(&d, "kn_layer_norm");
    assert_has(s, "__syncthreads();  /* later phases may read");
    assert_has(s, "if (threadIdx.x == 0) {");
    assert_has(s, "op4[0] = v3;");
    assert_has(s, "op5[0] = v10;");
    free(s);

    d = pointwise_desc();
    s = cuda_source(&d, "kn_pointwise");
    assert_has(s, "op1[0];"); /* the broadcast operand */
    assert_has(s, "op2[c] = v7;");
    assert_has(s, "op3[c] = v8;");
    cr_assert(!strstr(s, "__syncthreads"), "a pointwise kernel needs no barrier:\n%s", s);
    free(s);
}

Test(cuda, c_printer_softmax) {
    kn_jit_desc d = softmax_desc();
    char *text = NULL;
    size_t len = 0;
    FILE *o = open_memstream(&text, &len);
    cr_assert(o);
    kn__jit_print_c(o, &d, "softmax");
    cr_assert_eq(fclose(o), 0);
    assert_has(text, "phase 0: max");
    assert_has(text, "phase 1: sum");
    assert_has(text, "phase 2: store");
    assert_has(text, "acc1");
    assert_has(text, "kn_s_exp_nonpos_f32(");
    assert_has(text, "op1[c] = v8;");
    free(text);
}
