/* tests/scalar_accuracy_main.c - accuracy of the f32 formulas in
 * core/scalar.h against double-precision libm.
 *
 *   scalar_accuracy          thorough: every one of the 2^32 float inputs of
 *                            each unary function (~14 CPU-minutes, so ~7 min
 *                            on 2 idle cores; one thread per core)
 *   scalar_accuracy quick    every 97th bit pattern (~8 CPU-seconds)
 *
 * Error metric: |got - ref| / ulp(float(ref)) where ref is the double result
 * and ulp() the float spacing at float(ref) (2^-149 at and below the
 * subnormal range), so errors are relative even for tiny results; no
 * absolute tolerance is used anywhere.  A NaN where the reference is not
 * NaN (or vice versa), an infinity where the reference is finite in float,
 * or a zero of the wrong sign counts as an unbounded error.
 * sin/cos are held to their bound for |x| <= 1e6 (the documented range);
 * for 1e6 < |x| < 2^24 the error is printed for information only, and for
 * every finite |x| > 1e6 |result| <= 1 is checked.
 * Binary functions (add .. pow, clamp) are checked on special-value grids
 * and on pseudo-random inputs; f64 versions on special values.
 * Exit status: 0 if every function is within its bound and every special
 * value is right, 1 otherwise. */
#define _POSIX_C_SOURCE 200809L
#include "scalar.h"

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#ifndef __STDC_NO_THREADS__
#include <threads.h>
#endif

#define BLK 4096
#define MAX_THREADS 16

static float u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static uint32_t f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* float spacing at |f| (f finite) */
static double ulp_at(float f) {
    f = fabsf(f);
    if (f < FLT_MIN) return 0x1p-149;
    return ldexp(1.0, ilogbf(f) - 23);
}

#define ERR_BAD 1e30 /* NaN/inf/sign mismatch */

static double ulp_err(float got, double ref) {
    if (isnan(ref)) return isnan(got) ? 0.0 : ERR_BAD;
    if (isnan(got)) return ERR_BAD;
    float rf = (float)ref;
    if (isinf(rf)) return got == rf ? 0.0 : ERR_BAD;
    if (isinf(got)) return ERR_BAD;
    if (got == 0.0f && rf == 0.0f && signbit(got) != signbit(ref)) return ERR_BAD;
    return fabs((double)got - ref) / ulp_at(rf);
}

/* ---- references (double libm) ---- */
static double ref_exp(double x) { return exp(x); }
static double ref_log(double x) { return log(x); }
static double ref_tanh(double x) { return tanh(x); }
static double ref_erf(double x) { return erf(x); }
static double ref_sin(double x) { return sin(x); }
static double ref_cos(double x) { return cos(x); }
static double ref_sigmoid(double x) {
    double e = exp(-fabs(x));
    return (x >= 0 ? 1.0 : e) / (1.0 + e);
}
/* gelu(-inf) is NaN, as in PyTorch (-inf * 0), which the special values check */
static double ref_gelu(double x) {
    if (x == -INFINITY) return NAN;
    return 0.5 * x * erfc(-x * 0.70710678118654752440);
}
static double ref_gelu_tanh(double x) {
    if (isinf(x)) return x > 0 ? x : NAN;
    double u2 = 2.0 * 0.79788456080286535588 * (x + 0.044715 * x * x * x);
    double e = exp(-fabs(u2));
    return (u2 >= 0 ? x : x * e) / (1.0 + e);
}
static double ref_relu(double x) { return x > 0 || isnan(x) ? x : 0.0; }
static double ref_neg(double x) { return -x; }
static double ref_abs(double x) { return fabs(x); }
static double ref_sqrt(double x) { return sqrt(x); }
static double ref_rsqrt(double x) { return 1.0 / sqrt(x); }

/* ---- vectorizable block kernels ---- */
#define BLOCK_FN(name)                                                     \
    static void blk_##name(const float *restrict x, float *restrict y,    \
                           int n) {                                        \
        for (int i = 0; i < n; i++) y[i] = kn_s_##name##_f32(x[i]);       \
    }
BLOCK_FN(exp)
BLOCK_FN(log)
BLOCK_FN(tanh)
BLOCK_FN(erf)
BLOCK_FN(sigmoid)
BLOCK_FN(sin)
BLOCK_FN(cos)
BLOCK_FN(gelu)
BLOCK_FN(gelu_tanh)
BLOCK_FN(relu)
BLOCK_FN(neg)
BLOCK_FN(abs)
BLOCK_FN(sqrt)
BLOCK_FN(rsqrt)

typedef struct {
    const char *name;
    void (*blk)(const float *, float *, int);
    double (*ref)(double);
    double bound;   /* max ulp allowed */
    double acc_lim; /* 0, or |x| limit of the accurate range (sin/cos) */
} ufn;

/* Bounds: the measured thorough-mode maximum rounded up (see scalar.h). */
static const ufn UFNS[] = {
    {"exp", blk_exp, ref_exp, 1.0, 0},
    {"log", blk_log, ref_log, 1.0, 0},
    {"tanh", blk_tanh, ref_tanh, 2.0, 0},
    {"erf", blk_erf, ref_erf, 2.0, 0},
    {"sigmoid", blk_sigmoid, ref_sigmoid, 2.0, 0},
    {"sin", blk_sin, ref_sin, 2.0, 1e6},
    {"cos", blk_cos, ref_cos, 2.0, 1e6},
    {"gelu", blk_gelu, ref_gelu, 3.0, 0},
    {"gelu_tanh", blk_gelu_tanh, ref_gelu_tanh, 3.0, 0},
    {"relu", blk_relu, ref_relu, 0.0, 0},
    {"neg", blk_neg, ref_neg, 0.0, 0},
    {"abs", blk_abs, ref_abs, 0.0, 0},
    {"sqrt", blk_sqrt, ref_sqrt, 0.5, 0},
    {"rsqrt", blk_rsqrt, ref_rsqrt, 1.5, 0},
};
#define N_UFNS (sizeof UFNS / sizeof UFNS[0])

typedef struct {
    const ufn *fn;
    uint64_t stride;
    int tid, nthreads;
    double max_err;
    float worst_x, worst_got;
    double max_err_wide; /* sin/cos beyond acc_lim, information only */
    float worst_x_wide;
    uint64_t unbounded; /* |sin/cos| > 1 or non-finite for finite x */
    uint64_t count;
} job;

static int sweep_worker(void *arg) {
    job *j = arg;
    const ufn *f = j->fn;
    float x[BLK], y[BLK];
    const uint64_t total = ((1ull << 32) + j->stride - 1) / j->stride;
    const uint64_t nblk = (total + BLK - 1) / BLK;
    for (uint64_t b = (uint64_t)j->tid; b < nblk; b += (uint64_t)j->nthreads) {
        uint64_t i0 = b * BLK;
        int n = (int)(total - i0 < BLK ? total - i0 : BLK);
        for (int i = 0; i < n; i++) x[i] = u2f((uint32_t)((i0 + (uint64_t)i) * j->stride));
        f->blk(x, y, n);
        for (int i = 0; i < n; i++) {
            double ax = fabs((double)x[i]);
            if (f->acc_lim > 0 && ax > f->acc_lim && !isinf(x[i]) && !isnan(x[i])) {
                if (!(fabsf(y[i]) <= 1.0f)) j->unbounded++;
                if (ax < 0x1p24) {
                    double e = ulp_err(y[i], f->ref(x[i]));
                    if (e > j->max_err_wide) { j->max_err_wide = e; j->worst_x_wide = x[i]; }
                }
                continue;
            }
            double e = ulp_err(y[i], f->ref(x[i]));
            if (e > j->max_err || (e == j->max_err && j->count == 0)) {
                j->max_err = e; j->worst_x = x[i]; j->worst_got = y[i];
            }
            j->count++;
        }
    }
    return 0;
}

static int nthreads_avail(void) {
#ifdef __STDC_NO_THREADS__
    return 1;
#else
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1) n = 1;
    if (n > MAX_THREADS) n = MAX_THREADS;
    return (int)n;
#endif
}

static int g_fail = 0;

static void check_unary(const ufn *f, uint64_t stride, int nthreads) {
    job jobs[MAX_THREADS];
    double t0 = now_s();
    for (int t = 0; t < nthreads; t++) {
        memset(&jobs[t], 0, sizeof jobs[t]);
        jobs[t].fn = f; jobs[t].stride = stride; jobs[t].tid = t; jobs[t].nthreads = nthreads;
    }
#ifndef __STDC_NO_THREADS__
    thrd_t th[MAX_THREADS];
    for (int t = 1; t < nthreads; t++) thrd_create(&th[t], sweep_worker, &jobs[t]);
    sweep_worker(&jobs[0]);
    for (int t = 1; t < nthreads; t++) thrd_join(th[t], NULL);
#else
    sweep_worker(&jobs[0]);
#endif
    job all = jobs[0];
    for (int t = 1; t < nthreads; t++) {
        job *j = &jobs[t];
        if (j->max_err > all.max_err) { all.max_err = j->max_err; all.worst_x = j->worst_x; all.worst_got = j->worst_got; }
        if (j->max_err_wide > all.max_err_wide) { all.max_err_wide = j->max_err_wide; all.worst_x_wide = j->worst_x_wide; }
        all.unbounded += j->unbounded;
        all.count += j->count;
    }
    int ok = all.max_err <= f->bound && all.unbounded == 0;
    if (!ok) g_fail = 1;
    printf("%-10s max %8.3f ulp (bound %.1f) at x=%a (%.9g) got %a ref %a  [%llu inputs, %.1fs]%s\n",
           f->name, all.max_err, f->bound, (double)all.worst_x, (double)all.worst_x,
           (double)all.worst_got, f->ref(all.worst_x), (unsigned long long)all.count,
           now_s() - t0, ok ? "" : "  FAIL");
    if (f->acc_lim > 0)
        printf("%-10s   info: %.3g < |x| < 2^24: max %.3f ulp at x=%a; |x| >= %.3g: %llu results outside [-1,1]\n",
               f->name, f->acc_lim, all.max_err_wide, (double)all.worst_x_wide, f->acc_lim,
               (unsigned long long)all.unbounded);
}

/* ---- special values ---- */

/* same value, or both NaN; zeros must match in sign */
static int same(float a, float b) {
    if (isnan(a) || isnan(b)) return isnan(a) && isnan(b);
    return f2u(a) == f2u(b);
}

#define SPECIAL(fn, in, want)                                                       \
    do {                                                                            \
        float got_ = kn_s_##fn##_f32(in);                                           \
        if (!same(got_, (float)(want))) {                                           \
            printf("special FAIL: %s(%a) = %a, want %a\n", #fn, (double)(in),       \
                   (double)got_, (double)(float)(want));                            \
            g_fail = 1;                                                             \
        }                                                                           \
        n_special++;                                                                \
    } while (0)

static int n_special = 0;

static void check_specials(void) {
    const float inf = INFINITY, nan = NAN, den = 0x1p-149f;
    SPECIAL(exp, -inf, 0.0f); SPECIAL(exp, inf, inf); SPECIAL(exp, nan, nan);
    SPECIAL(exp, 0.0f, 1.0f); SPECIAL(exp, -0.0f, 1.0f); SPECIAL(exp, den, 1.0f);
    SPECIAL(exp, 89.0f, inf); SPECIAL(exp, FLT_MAX, inf); SPECIAL(exp, -104.0f, 0.0f);
    SPECIAL(exp, -FLT_MAX, 0.0f); SPECIAL(exp, 0x1.62e42ep+6f, (float)exp((double)0x1.62e42ep+6f));
    SPECIAL(log, 0.0f, -inf); SPECIAL(log, -0.0f, -inf); SPECIAL(log, -1.0f, nan);
    SPECIAL(log, -den, nan); SPECIAL(log, -inf, nan); SPECIAL(log, inf, inf);
    SPECIAL(log, nan, nan); SPECIAL(log, 1.0f, 0.0f);
    SPECIAL(log, den, (float)log(0x1p-149)); SPECIAL(log, FLT_MAX, (float)log((double)FLT_MAX));
    SPECIAL(tanh, inf, 1.0f); SPECIAL(tanh, -inf, -1.0f); SPECIAL(tanh, -0.0f, -0.0f);
    SPECIAL(tanh, 0.0f, 0.0f); SPECIAL(tanh, nan, nan); SPECIAL(tanh, 20.0f, 1.0f);
    SPECIAL(tanh, -den, -den); SPECIAL(tanh, 1e-4f, (float)tanh((double)1e-4f));
    SPECIAL(erf, inf, 1.0f); SPECIAL(erf, -inf, -1.0f); SPECIAL(erf, -0.0f, -0.0f);
    SPECIAL(erf, nan, nan); SPECIAL(erf, 10.0f, 1.0f);
    SPECIAL(sigmoid, inf, 1.0f); SPECIAL(sigmoid, -inf, 0.0f); SPECIAL(sigmoid, nan, nan);
    SPECIAL(sigmoid, 0.0f, 0.5f); SPECIAL(sigmoid, -0.0f, 0.5f); SPECIAL(sigmoid, 100.0f, 1.0f);
    SPECIAL(sigmoid, -200.0f, 0.0f); SPECIAL(sigmoid, -100.0f, (float)exp(-100.0));
    SPECIAL(gelu, inf, inf); SPECIAL(gelu, -inf, nan); SPECIAL(gelu, nan, nan);
    SPECIAL(gelu, 0.0f, 0.0f); SPECIAL(gelu, -0.0f, -0.0f); SPECIAL(gelu, -30.0f, -0.0f);
    SPECIAL(gelu, FLT_MAX, FLT_MAX);
    SPECIAL(gelu_tanh, inf, inf); SPECIAL(gelu_tanh, -inf, nan); SPECIAL(gelu_tanh, nan, nan);
    SPECIAL(gelu_tanh, 0.0f, 0.0f); SPECIAL(gelu_tanh, -0.0f, -0.0f);
    SPECIAL(gelu_tanh, FLT_MAX, FLT_MAX);
    SPECIAL(sin, inf, nan); SPECIAL(sin, -inf, nan); SPECIAL(sin, nan, nan);
    SPECIAL(sin, -0.0f, -0.0f); SPECIAL(sin, 0.0f, 0.0f); SPECIAL(sin, -den, -den);
    SPECIAL(cos, inf, nan); SPECIAL(cos, -inf, nan); SPECIAL(cos, nan, nan);
    SPECIAL(cos, 0.0f, 1.0f); SPECIAL(cos, -0.0f, 1.0f);
    SPECIAL(relu, nan, nan); SPECIAL(relu, -1.0f, 0.0f); SPECIAL(relu, -0.0f, 0.0f);
    SPECIAL(relu, inf, inf); SPECIAL(relu, -inf, 0.0f); SPECIAL(relu, 2.5f, 2.5f);
    SPECIAL(sqrt, -1.0f, nan); SPECIAL(sqrt, -0.0f, -0.0f); SPECIAL(sqrt, inf, inf);
    SPECIAL(sqrt, 4.0f, 2.0f);
    SPECIAL(rsqrt, 0.0f, inf); SPECIAL(rsqrt, -0.0f, -inf); SPECIAL(rsqrt, inf, 0.0f);
    SPECIAL(rsqrt, -1.0f, nan); SPECIAL(rsqrt, 4.0f, 0.5f);
    SPECIAL(abs, -0.0f, 0.0f); SPECIAL(neg, 0.0f, -0.0f);
}

/* f64 versions: libm-based, checked for special values only */
static int same64(double a, double b) {
    if (isnan(a) || isnan(b)) return isnan(a) && isnan(b);
    return memcmp(&a, &b, sizeof a) == 0;
}
#define SPECIAL64(expr, want)                                                      \
    do {                                                                           \
        double got_ = (expr);                                                      \
        if (!same64(got_, (double)(want))) {                                       \
            printf("special FAIL: %s = %a, want %a\n", #expr, got_, (double)(want)); \
            g_fail = 1;                                                            \
        }                                                                          \
        n_special++;                                                               \
    } while (0)

static void check_specials_f64(void) {
    const double inf = INFINITY, nan = NAN;
    SPECIAL64(kn_s_exp_f64(-inf), 0.0); SPECIAL64(kn_s_exp_f64(inf), inf);
    SPECIAL64(kn_s_log_f64(0.0), -inf); SPECIAL64(kn_s_log_f64(-1.0), nan);
    SPECIAL64(kn_s_tanh_f64(-inf), -1.0); SPECIAL64(kn_s_tanh_f64(-0.0), -0.0);
    SPECIAL64(kn_s_erf_f64(inf), 1.0); SPECIAL64(kn_s_erf_f64(-0.0), -0.0);
    SPECIAL64(kn_s_sigmoid_f64(inf), 1.0); SPECIAL64(kn_s_sigmoid_f64(-inf), 0.0);
    SPECIAL64(kn_s_sigmoid_f64(nan), nan); SPECIAL64(kn_s_sigmoid_f64(-800.0), 0.0);
    SPECIAL64(kn_s_gelu_f64(inf), inf); SPECIAL64(kn_s_gelu_f64(-inf), nan);
    SPECIAL64(kn_s_gelu_f64(nan), nan); SPECIAL64(kn_s_gelu_f64(-0.0), -0.0);
    SPECIAL64(kn_s_gelu_tanh_f64(inf), inf); SPECIAL64(kn_s_gelu_tanh_f64(-inf), nan);
    SPECIAL64(kn_s_gelu_tanh_f64(nan), nan); SPECIAL64(kn_s_gelu_tanh_f64(-0.0), -0.0);
    SPECIAL64(kn_s_gelu_tanh_f64(1e300), 1e300);
    SPECIAL64(kn_s_sin_f64(inf), nan); SPECIAL64(kn_s_cos_f64(nan), nan);
    SPECIAL64(kn_s_relu_f64(nan), nan); SPECIAL64(kn_s_relu_f64(-0.0), 0.0);
    SPECIAL64(kn_s_rsqrt_f64(0.0), inf); SPECIAL64(kn_s_sqrt_f64(-1.0), nan);
    SPECIAL64(kn_s_maximum_f64(nan, 1.0), nan); SPECIAL64(kn_s_maximum_f64(-0.0, 0.0), 0.0);
    SPECIAL64(kn_s_minimum_f64(1.0, nan), nan); SPECIAL64(kn_s_minimum_f64(0.0, -0.0), -0.0);
    SPECIAL64(kn_s_clamp_f64(5.0, 0.0, 1.0), 1.0); SPECIAL64(kn_s_clamp_f64(nan, 0.0, 1.0), nan);
    SPECIAL64(kn_s_pow_f64(-2.0, 3.0), -8.0); SPECIAL64(kn_s_pow_f64(-2.0, 0.5), nan);
    SPECIAL64(kn_s_pow_f64(nan, 0.0), 1.0);
    /* the f64 gelu tail must not cancel (1 + erf(-7.07) == 0 in double) */
    double g = kn_s_gelu_f64(-10.0), gr = -10.0 * 0.5 * erfc(10.0 / sqrt(2.0));
    if (!(fabs(g - gr) <= 1e-12 * fabs(gr))) { printf("special FAIL: gelu_f64(-10) = %a\n", g); g_fail = 1; }
    n_special++;
}

#define SPECIAL2(fn, a, b, want)                                                   \
    do {                                                                           \
        float got_ = kn_s_##fn##_f32(a, b);                                        \
        if (!same(got_, (float)(want))) {                                          \
            printf("special FAIL: %s(%a, %a) = %a, want %a\n", #fn, (double)(a),   \
                   (double)(b), (double)got_, (double)(float)(want));              \
            g_fail = 1;                                                            \
        }                                                                          \
        n_special++;                                                               \
    } while (0)

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t rng(void) { /* splitmix64 */
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static float rnd_bits(void) { return u2f((uint32_t)rng()); }
static double rnd_unit(void) { return (double)(rng() >> 11) * 0x1p-53; }

static const float GRID[] = {
    0.0f, -0.0f, 1.0f, -1.0f, 2.0f, -2.0f, 0.5f, -0.5f, 3.0f, -3.0f, 1.5f, -1.5f,
    INFINITY, -INFINITY, NAN, 0x1p-149f, -0x1p-149f, 0x1p-126f, FLT_MAX, -FLT_MAX,
    0x1p24f, -0x1p24f, 0x1p24f + 2.0f, 127.0f, -149.0f, 1e10f, -1e10f, 0.1f, 7.0f,
};
#define N_GRID (sizeof GRID / sizeof GRID[0])

static void check_binary(long n_random) {
    SPECIAL2(maximum, NAN, 1.0f, NAN); SPECIAL2(maximum, 1.0f, NAN, NAN);
    SPECIAL2(maximum, -0.0f, 0.0f, 0.0f); SPECIAL2(maximum, 0.0f, -0.0f, 0.0f);
    SPECIAL2(maximum, 1.0f, 2.0f, 2.0f); SPECIAL2(maximum, -INFINITY, 2.0f, 2.0f);
    SPECIAL2(minimum, NAN, 1.0f, NAN); SPECIAL2(minimum, 1.0f, NAN, NAN);
    SPECIAL2(minimum, -0.0f, 0.0f, -0.0f); SPECIAL2(minimum, 0.0f, -0.0f, -0.0f);
    SPECIAL2(minimum, 1.0f, 2.0f, 1.0f);
    struct { float x, lo, hi, want; } cl[] = {
        {NAN, 0, 1, NAN}, {5, 0, 1, 1}, {-5, 0, 1, 0}, {0.5f, NAN, 1, NAN},
        {0.5f, 0, NAN, NAN}, {0.5f, 2, 1, 1}, {0.5f, 0, 1, 0.5f}, {-INFINITY, -1, 1, -1},
    };
    for (size_t i = 0; i < sizeof cl / sizeof cl[0]; i++) {
        float got = kn_s_clamp_f32(cl[i].x, cl[i].lo, cl[i].hi);
        if (!same(got, cl[i].want)) {
            printf("special FAIL: clamp(%a, %a, %a) = %a, want %a\n", (double)cl[i].x,
                   (double)cl[i].lo, (double)cl[i].hi, (double)got, (double)cl[i].want);
            g_fail = 1;
        }
        n_special++;
    }

    /* exact ops on the special grid and on random bit patterns: the double
     * result rounded to float is the correctly rounded float result */
    long bad = 0;
    for (long i = 0; i < n_random + (long)(N_GRID * N_GRID); i++) {
        float a, b;
        if (i < (long)(N_GRID * N_GRID)) { a = GRID[i / (long)N_GRID]; b = GRID[i % (long)N_GRID]; }
        else { a = rnd_bits(); b = (i & 1) ? rnd_bits() : u2f(f2u(a) + (uint32_t)(rng() & 0xffff)); }
        double da = a, db = b;
        bad += !same(kn_s_add_f32(a, b), (float)(da + db));
        bad += !same(kn_s_sub_f32(a, b), (float)(da - db));
        bad += !same(kn_s_mul_f32(a, b), (float)(da * db));
        bad += !same(kn_s_div_f32(a, b), (float)(da / db));
        float mx = isnan(a) || isnan(b) ? NAN : (a > b ? a : (b > a ? b : u2f(f2u(a) & f2u(b))));
        float mn = isnan(a) || isnan(b) ? NAN : (a < b ? a : (b < a ? b : u2f(f2u(a) | f2u(b))));
        bad += !same(kn_s_maximum_f32(a, b), mx);
        bad += !same(kn_s_minimum_f32(a, b), mn);
    }
    printf("%-10s add/sub/mul/div/maximum/minimum exact on %ld pairs: %ld mismatches%s\n",
           "binary", n_random + (long)(N_GRID * N_GRID), bad, bad ? "  FAIL" : "");
    if (bad) g_fail = 1;
}

/* pow: special grid must match C99 pow (double, rounded) within the bound,
 * NaN-for-NaN and signed zeros exactly; then random inputs in several
 * regimes (bit patterns, x near 1 with big y, integer y with negative x,
 * results near overflow/underflow). */
static const double POW_BOUND = 2.0;

static void check_pow(long n_random) {
    double t0 = now_s();
    double max_err = 0;
    float wx = 0, wy = 0;
    long n = 0;
    for (long i = 0; i < n_random + (long)(N_GRID * N_GRID); i++) {
        float x, y;
        if (i < (long)(N_GRID * N_GRID)) { x = GRID[i / (long)N_GRID]; y = GRID[i % (long)N_GRID]; }
        else {
            switch (i & 7) {
            case 0: x = rnd_bits(); y = rnd_bits(); break;
            case 1: x = rnd_bits(); y = (float)(rnd_unit() * 60.0 - 30.0); break;
            case 2: x = (float)(0.5 + rnd_unit()); y = (float)((rnd_unit() - 0.5) * 2e4); break;
            case 3: x = -fabsf(rnd_bits()); y = (float)((int)(rng() % 401) - 200); break;
            case 4: case 5: { /* |y log x| near the over/underflow limits */
                x = fabsf(rnd_bits());
                if (!(x > 0) || isinf(x) || x == 1.0f) x = 3.0f;
                double target = (i & 1 ? 88.7 : -103.9) + (rnd_unit() - 0.5) * 2.0;
                y = (float)(target / log((double)x));
                if (rng() & 1) { x = -x; y = rintf(y); }
                break;
            }
            case 6: x = (float)(rnd_unit() * 10.0); y = (float)(rnd_unit() * 10.0 - 5.0); break;
            default: x = (float)((rnd_unit() - 0.5) * 20.0); y = (float)((int)(rng() % 41) - 20); break;
            }
        }
        float got = kn_s_pow_f32(x, y);
        double e = ulp_err(got, pow((double)x, (double)y));
        if (e > max_err) { max_err = e; wx = x; wy = y; }
        n++;
    }
    /* exactness for y = 2 and y = 1 */
    long bad = 0;
    for (long i = 0; i < 100000; i++) {
        float x = rnd_bits();
        bad += !same(kn_s_pow_f32(x, 2.0f), x * x);
        bad += !same(kn_s_pow_f32(x, 1.0f), x);
    }
    int ok = max_err <= POW_BOUND && bad == 0;
    if (!ok) g_fail = 1;
    printf("%-10s max %8.3f ulp (bound %.1f) at x=%a y=%a got %a ref %a  [%ld pairs, %.1fs]; y=1,2 exact: %ld mismatches%s\n",
           "pow", max_err, POW_BOUND, (double)wx, (double)wy, (double)kn_s_pow_f32(wx, wy),
           pow((double)wx, (double)wy), n, now_s() - t0, bad, ok ? "" : "  FAIL");
}

/* The row kernels' exp of x - max: kn_s_exp_f32 bit for bit on every
 * non-positive x down to ln(FLT_MIN), +0 below it (where kn_s_exp_f32 is
 * subnormal or 0), NaN for NaN. */
static void check_exp_nonpos(uint64_t stride) {
    uint64_t n = 0, bad = 0;
    for (uint64_t u = 0x80000000u; u <= 0xffffffffu; u += stride, n++) {
        float x = kn__u2f((uint32_t)u), a = kn_s_exp_nonpos_f32(x), b = kn_s_exp_f32(x);
        int ok = x != x ? a != a
                : x < -0x1.5d589ep+6f ? kn__f2u(a) == 0 && b < 0x1p-126f
                : kn__f2u(a) == kn__f2u(b);
        if (!ok && bad++ < 3) printf("exp_nonpos FAIL at x=%a: %a, exp gives %a\n", x, a, b);
    }
    float z = kn_s_exp_nonpos_f32(0.0f), mz = kn_s_exp_nonpos_f32(-0.0f);
    if (z != 1.0f || mz != 1.0f) bad++, printf("exp_nonpos FAIL at 0: %a %a\n", z, mz);
    printf("exp_nonpos equal to exp on %llu non-positive inputs: %llu mismatches\n", (unsigned long long)n,
           (unsigned long long)bad);
    if (bad) g_fail = 1;
}

int main(int argc, char **argv) {
    int quick = argc > 1 && strcmp(argv[1], "quick") == 0;
    if (argc > 1 && !quick) {
        fprintf(stderr, "usage: %s [quick]\n", argv[0]);
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0); /* progress shows up in CI logs */
    uint64_t stride = quick ? 97 : 1;
    int nthreads = nthreads_avail();
    double t0 = now_s();
    printf("scalar accuracy: %s mode (stride %llu over the 2^32 float bit patterns), %d thread(s)\n",
           quick ? "quick" : "thorough", (unsigned long long)stride, nthreads);
    check_specials();
    check_specials_f64();
    printf("special values: %d checked (f32 and f64)\n", n_special);
    for (size_t i = 0; i < N_UFNS; i++) check_unary(&UFNS[i], stride, nthreads);
    check_exp_nonpos(stride);
    check_binary(quick ? 200000 : 20000000);
    check_pow(quick ? 1000000 : 100000000);
    printf("total %.1fs: %s\n", now_s() - t0, g_fail ? "FAILED" : "all within bounds");
    return g_fail ? 1 : 0;
}
