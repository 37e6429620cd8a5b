/* Elementwise ops against plain C loops: libm references in double, exact
 * checks for arithmetic, broadcasting, views, 0-dim and empty tensors, ints,
 * NaN/inf, threading, and bitwise agreement with the scalar formulas of
 * core/scalar.h (the property the JIT relies on). */
#include "helpers.h"
#include "scalar.h"
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

KN_SUITE(elementwise, KN_NO_SEED);

#define TI32(shape_ndim, ...) kn_from_data((const int32_t[]){__VA_ARGS__}, shape_ndim, KN_I32)
#define TBOOL(shape_ndim, ...) kn_from_data((const uint8_t[]){__VA_ARGS__}, shape_ndim, KN_BOOL)
#define NOTNULL(t) cr_assert((t), "NULL: %s", kn_last_error() ? kn_last_error() : "(no error)")

/* ---- helpers ---- */

static uint64_t rng_state = 0x9e3779b97f4a7c15u;
static uint64_t rnd(void) {  /* splitmix64 */
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}
static double uniform(double lo, double hi) { return lo + (hi - lo) * (double)(rnd() >> 11) * 0x1p-53; }

/* n values in [lo, hi]: an even grid, then random points. */
static kn_tensor *values(int64_t n, double lo, double hi, kn_dtype dt) {
    kn_tensor *t = kn_empty(KN_SHAPE(n), dt);
    for (int64_t i = 0; i < n; i++) {
        double v = i < n / 2 ? lo + (hi - lo) * (double)i / (double)(n / 2) : uniform(lo, hi);
        if (dt == KN_F32) ((float *)kn_data(t))[i] = (float)v;
        else if (dt == KN_F64) ((double *)kn_data(t))[i] = v;
        else if (dt == KN_I32) ((int32_t *)kn_data(t))[i] = (int32_t)floor(v);
        else ((int64_t *)kn_data(t))[i] = (int64_t)floor(v);
    }
    return t;
}

/* Ordered-integer image of a float, so ulp distance is a subtraction. */
static int64_t ord32(float f) {
    int32_t b;
    memcpy(&b, &f, 4);
    return b < 0 ? (int64_t)INT32_MIN - b : b;
}
static __int128 ord64(double d) {
    int64_t b;
    memcpy(&b, &d, 8);
    return b < 0 ? -(__int128)(b & INT64_MAX) : b;
}

/* Distance in ulps of dt between got and want rounded to dt (0 or inf for ints). */
static double ulps_off(double got, double want, kn_dtype dt) {
    if (dt == KN_F32) {
        float g = (float)got, w = (float)want;
        if (isnan(g) || isnan(w)) return isnan(g) && isnan(w) ? 0 : INFINITY;
        return g == w ? 0 : (double)llabs(ord32(g) - ord32(w));
    }
    if (dt == KN_F64) {
        if (isnan(got) || isnan(want)) return isnan(got) && isnan(want) ? 0 : INFINITY;
        __int128 d = ord64(got) - ord64(want);
        return got == want ? 0 : (double)(d < 0 ? -d : d);
    }
    return got == want ? 0 : INFINITY;
}
static bool near(double got, double want, kn_dtype dt, double ulps, double atol) {
    return ulps_off(got, want, dt) <= ulps || (isfinite(want) && fabs(got - want) <= atol);
}

static void bcast(const kn_tensor *a, const kn_tensor *b, int64_t *sh, int *nd) {
    int na = kn_ndim(a), nb = kn_ndim(b), n = na > nb ? na : nb;
    for (int i = 0; i < n; i++) {
        int64_t x = i < n - na ? 1 : kn_shape(a)[i - (n - na)];
        int64_t y = i < n - nb ? 1 : kn_shape(b)[i - (n - nb)];
        cr_assert(x == y || x == 1 || y == 1, "test bug: shapes do not broadcast");
        sh[i] = x == 1 ? y : x;
    }
    *nd = n;
}

/* Flat C-order index into t of the element that output element i reads. */
static int64_t src(const kn_tensor *t, const int64_t *sh, int nd, int64_t i) {
    int tnd = kn_ndim(t);
    int64_t idx = 0, mul = 1;
    for (int d = nd - 1; d >= 0; d--) {
        int64_t c = i % sh[d];
        i /= sh[d];
        int td = d - (nd - tnd);
        if (td < 0) continue;
        if (kn_shape(t)[td] != 1) idx += c * mul;
        mul *= kn_shape(t)[td];
    }
    return idx;
}

static void assert_shape(const kn_tensor *y, const int64_t *sh, int nd) {
    NOTNULL(y);
    cr_assert_eq(kn_ndim(y), nd, "ndim %d, want %d", kn_ndim(y), nd);
    for (int d = 0; d < nd; d++)
        cr_assert_eq(kn_shape(y)[d], sh[d], "dim %d: %lld, want %lld", d,
                     (long long)kn_shape(y)[d], (long long)sh[d]);
}

typedef kn_tensor *(*unop)(kn_tensor *);
typedef kn_tensor *(*binop)(kn_tensor *, kn_tensor *);
typedef double (*ref1)(double);
typedef double (*ref2)(double, double);

/* y = op(x) against ref in double, to ulps of dt (or atol). */
static void check_unary(const char *name, unop op, ref1 ref, kn_tensor *x, kn_dtype dt,
                        double ulps, double atol) {
    NOTNULL(x);
    kn_tensor *y = op(x);
    cr_assert(y, "%s: %s", name, kn_last_error());
    assert_shape(y, kn_shape(x), kn_ndim(x));
    cr_assert_eq(kn_dtype_of(y), dt, "%s: dtype %s, want %s", name,
                 kn_dtype_name(kn_dtype_of(y)), kn_dtype_name(dt));
    for (int64_t i = 0; i < kn_numel(x); i++) {
        double xv = at(x, i), g = at(y, i), w = ref(xv);
        cr_assert(near(g, w, dt, ulps, atol), "%s(%.9g) [%s] = %.9g, want %.9g (%g ulps)", name,
                  xv, kn_dtype_name(kn_dtype_of(x)), g, w, ulps_off(g, w, dt));
    }
}

/* y = op(a, b) with broadcasting against ref in double. */
static void check_binary(const char *name, binop op, ref2 ref, kn_tensor *a, kn_tensor *b,
                         kn_dtype dt, double ulps) {
    NOTNULL(a);
    NOTNULL(b);
    kn_tensor *y = op(a, b);
    cr_assert(y, "%s: %s", name, kn_last_error());
    int64_t sh[KN_MAX_DIMS];
    int nd;
    bcast(a, b, sh, &nd);
    assert_shape(y, sh, nd);
    cr_assert_eq(kn_dtype_of(y), dt, "%s: dtype %s, want %s", name,
                 kn_dtype_name(kn_dtype_of(y)), kn_dtype_name(dt));
    for (int64_t i = 0; i < kn_numel(y); i++) {
        double av = at(a, src(a, sh, nd, i)), bv = at(b, src(b, sh, nd, i));
        double g = at(y, i), w = ref(av, bv);
        cr_assert(near(g, w, dt, ulps, 0), "%s(%.9g, %.9g) = %.17g, want %.17g", name, av, bv, g, w);
    }
}

/* ---- references in double ---- */
static double r_exp(double x) { return exp(x); }
static double r_log(double x) { return log(x); }
static double r_sqrt(double x) { return sqrt(x); }
static double r_rsqrt(double x) { return 1 / sqrt(x); }
static double r_tanh(double x) { return tanh(x); }
static double r_sigmoid(double x) { return 1 / (1 + exp(-x)); }
static double r_sin(double x) { return sin(x); }
static double r_cos(double x) { return cos(x); }
static double r_erf(double x) { return erf(x); }
static double r_gelu(double x) { return 0.5 * x * erfc(-x / sqrt(2.0)); }
static double r_gelu_tanh(double x) {  /* 0.5x(1 + tanh z) = x / (1 + exp(-2z)) */
    double z = sqrt(2 / M_PI) * (x + 0.044715 * x * x * x);
    return x / (1 + exp(-2 * z));
}
static double r_neg(double x) { return -x; }
static double r_abs(double x) { return fabs(x); }
static double r_relu(double x) { return isnan(x) ? x : x > 0 ? x : 0; }
static double r_clamp(double x) { return isnan(x) ? x : x < -0.5 ? -0.5 : x > 0.75 ? 0.75 : x; }
static double r_clampi(double x) { return x < -3 ? -3 : x > 40 ? 40 : x; }
static double r_not(double x) { return x == 0; }

static double r_add(double a, double b) { return a + b; }
static double r_sub(double a, double b) { return a - b; }
static double r_mul(double a, double b) { return a * b; }
static double r_div(double a, double b) { return a / b; }
static double r_pow(double a, double b) { return pow(a, b); }
static double r_max(double a, double b) { return isnan(a) || isnan(b) ? NAN : a > b ? a : b; }
static double r_min(double a, double b) { return isnan(a) || isnan(b) ? NAN : a < b ? a : b; }
static double r_eq(double a, double b) { return a == b; }
static double r_ne(double a, double b) { return a != b; }
static double r_lt(double a, double b) { return a < b; }
static double r_le(double a, double b) { return a <= b; }
static double r_gt(double a, double b) { return a > b; }
static double r_ge(double a, double b) { return a >= b; }
static double r_and(double a, double b) { return a != 0 && b != 0; }
static double r_or(double a, double b) { return a != 0 || b != 0; }

/* Ops with parameters, as unary functions. */
static kn_tensor *gelu_erf(kn_tensor *x) { return kn_gelu(x, KN_GELU_ERF); }
static kn_tensor *gelu_tanh(kn_tensor *x) { return kn_gelu(x, KN_GELU_TANH); }
static kn_tensor *clamp_f(kn_tensor *x) { return kn_clamp(x, -0.5, 0.75); }
static kn_tensor *clamp_i(kn_tensor *x) { return kn_clamp(x, -3, 40); }
static kn_tensor *add_s(kn_tensor *x) { return kn_add_scalar(x, 1.25); }
static kn_tensor *sub_s(kn_tensor *x) { return kn_sub_scalar(x, 1.25); }
static kn_tensor *mul_s(kn_tensor *x) { return kn_mul_scalar(x, -1.25); }
static kn_tensor *div_s(kn_tensor *x) { return kn_div_scalar(x, 1.25); }
static kn_tensor *pow_s(kn_tensor *x) { return kn_pow_scalar(x, 1.25); }
static kn_tensor *add_si(kn_tensor *x) { return kn_add_scalar(x, 7); }
static kn_tensor *mul_si(kn_tensor *x) { return kn_mul_scalar(x, -3); }
static kn_tensor *pow_si(kn_tensor *x) { return kn_pow_scalar(x, 3); }
static double r_add_s(double x) { return x + 1.25; }
static double r_sub_s(double x) { return x - 1.25; }
static double r_mul_s(double x) { return x * -1.25; }
static double r_div_s(double x) { return x / 1.25; }
static double r_pow_s(double x) { return pow(x, 1.25); }
static double r_add_si(double x) { return x + 7; }
static double r_mul_si(double x) { return x * -3; }
static double r_pow_si(double x) { return x * x * x; }

/* ---- op tables ---- */
/* f64 tolerance for float math, in f64 ulps (the f64 formulas use libm). The
 * gelu tails amplify the rounding of their argument by about x^2. */
#define F64_ULPS 8

typedef struct {
    const char *name;
    unop op;
    ref1 ref;
    double lo, hi, ulps, atol;   /* f32 test domain and tolerance */
    double ulps64;               /* f64 tolerance */
    float (*s32)(float);
    double (*s64)(double);
} unary_case;

static const unary_case unary_float[] = {
    {"exp", kn_exp, r_exp, -103, 88, 4, 0, F64_ULPS, kn_s_exp_f32, kn_s_exp_f64},
    {"log", kn_log, r_log, 1e-6, 1e6, 4, 0, F64_ULPS, kn_s_log_f32, kn_s_log_f64},
    {"sqrt", kn_sqrt, r_sqrt, 0, 1e6, 0, 0, 0, kn_s_sqrt_f32, kn_s_sqrt_f64},
    {"rsqrt", kn_rsqrt, r_rsqrt, 1e-6, 1e6, 2, 0, F64_ULPS, kn_s_rsqrt_f32, kn_s_rsqrt_f64},
    {"tanh", kn_tanh, r_tanh, -10, 10, 4, 0, F64_ULPS, kn_s_tanh_f32, kn_s_tanh_f64},
    {"sigmoid", kn_sigmoid, r_sigmoid, -40, 40, 4, 0, F64_ULPS, kn_s_sigmoid_f32, kn_s_sigmoid_f64},
    {"sin", kn_sin, r_sin, -100, 100, 4, 0, F64_ULPS, kn_s_sin_f32, kn_s_sin_f64},
    {"cos", kn_cos, r_cos, -100, 100, 4, 0, F64_ULPS, kn_s_cos_f32, kn_s_cos_f64},
    {"erf", kn_erf, r_erf, -5, 5, 4, 0, F64_ULPS, kn_s_erf_f32, kn_s_erf_f64},
    {"gelu", gelu_erf, r_gelu, -12, 8, 4, 0, 512, kn_s_gelu_f32, kn_s_gelu_f64},
    {"gelu_tanh", gelu_tanh, r_gelu_tanh, -12, 8, 4, 0, 512, kn_s_gelu_tanh_f32, kn_s_gelu_tanh_f64},
};
#define N_UNARY_FLOAT (int)(sizeof unary_float / sizeof *unary_float)

static float s_clamp32(float x) { return kn_s_clamp_f32(x, -0.5f, 0.75f); }
static double s_clamp64(double x) { return kn_s_clamp_f64(x, -0.5, 0.75); }
static float s_add_s32(float x) { return kn_s_add_f32(x, 1.25f); }
static double s_add_s64(double x) { return kn_s_add_f64(x, 1.25); }
static float s_sub_s32(float x) { return kn_s_sub_f32(x, 1.25f); }
static double s_sub_s64(double x) { return kn_s_sub_f64(x, 1.25); }
static float s_mul_s32(float x) { return kn_s_mul_f32(x, -1.25f); }
static double s_mul_s64(double x) { return kn_s_mul_f64(x, -1.25); }
static float s_div_s32(float x) { return kn_s_div_f32(x, 1.25f); }
static double s_div_s64(double x) { return kn_s_div_f64(x, 1.25); }
static float s_pow_s32(float x) { return kn_s_pow_f32(x, 1.25f); }
static double s_pow_s64(double x) { return kn_s_pow_f64(x, 1.25); }

/* Numeric unary ops and _scalar forms; exact except pow. */
static const unary_case unary_num[] = {
    {"neg", kn_neg, r_neg, -1e3, 1e3, 0, 0, 0, kn_s_neg_f32, kn_s_neg_f64},
    {"abs", kn_abs, r_abs, -1e3, 1e3, 0, 0, 0, kn_s_abs_f32, kn_s_abs_f64},
    {"relu", kn_relu, r_relu, -1e3, 1e3, 0, 0, 0, kn_s_relu_f32, kn_s_relu_f64},
    {"clamp", clamp_f, r_clamp, -2, 2, 0, 0, 0, s_clamp32, s_clamp64},
    {"add_scalar", add_s, r_add_s, -1e3, 1e3, 0, 0, 0, s_add_s32, s_add_s64},
    {"sub_scalar", sub_s, r_sub_s, -1e3, 1e3, 0, 0, 0, s_sub_s32, s_sub_s64},
    {"mul_scalar", mul_s, r_mul_s, -1e3, 1e3, 0, 0, 0, s_mul_s32, s_mul_s64},
    {"div_scalar", div_s, r_div_s, -1e3, 1e3, 0, 0, 0, s_div_s32, s_div_s64},
    {"pow_scalar", pow_s, r_pow_s, 0, 1e3, 4, 0, F64_ULPS, s_pow_s32, s_pow_s64},
};
#define N_UNARY_NUM (int)(sizeof unary_num / sizeof *unary_num)

typedef struct {
    const char *name;
    binop op;
    ref2 ref;
    double ulps;
    float (*s32)(float, float);
    double (*s64)(double, double);
} binary_case;

static const binary_case binary_float[] = {
    {"add", kn_add, r_add, 0, kn_s_add_f32, kn_s_add_f64},
    {"sub", kn_sub, r_sub, 0, kn_s_sub_f32, kn_s_sub_f64},
    {"mul", kn_mul, r_mul, 0, kn_s_mul_f32, kn_s_mul_f64},
    {"div", kn_div, r_div, 0, kn_s_div_f32, kn_s_div_f64},
    {"pow", kn_pow, r_pow, 4, kn_s_pow_f32, kn_s_pow_f64},
    {"maximum", kn_maximum, r_max, 0, kn_s_maximum_f32, kn_s_maximum_f64},
    {"minimum", kn_minimum, r_min, 0, kn_s_minimum_f32, kn_s_minimum_f64},
};
#define N_BINARY_FLOAT (int)(sizeof binary_float / sizeof *binary_float)

static const struct { const char *name; binop op; ref2 ref; } compare_ops[] = {
    {"eq", kn_eq, r_eq}, {"ne", kn_ne, r_ne}, {"lt", kn_lt, r_lt},
    {"le", kn_le, r_le}, {"gt", kn_gt, r_gt}, {"ge", kn_ge, r_ge},
};
#define N_COMPARE (int)(sizeof compare_ops / sizeof *compare_ops)


/* ---- float reference checks ---- */

Test(elementwise, unary_float_ops_match_libm_f32) {
    for (int k = 0; k < N_UNARY_FLOAT; k++) {
        const unary_case *c = &unary_float[k];
        check_unary(c->name, c->op, c->ref, values(2000, c->lo, c->hi, KN_F32), KN_F32, c->ulps,
                    c->atol);
    }
    /* log over many binades */
    kn_tensor *x = kn_exp(values(2000, -80, 80, KN_F32));
    check_unary("log", kn_log, r_log, x, KN_F32, 4, 0);
}

Test(elementwise, unary_float_ops_match_libm_f64) {
    for (int k = 0; k < N_UNARY_FLOAT; k++) {
        const unary_case *c = &unary_float[k];
        check_unary(c->name, c->op, c->ref, values(2000, c->lo, c->hi, KN_F64), KN_F64, c->ulps64, 0);
    }
}

Test(elementwise, unary_float_ops_of_ints_give_f32) {
    kn_tensor *i32 = TI32(KN_SHAPE(2, 3), -3, -1, 0, 1, 4, 9);
    kn_tensor *pos = TI64(KN_SHAPE(4), 1, 2, 16, 1000);
    for (int k = 0; k < N_UNARY_FLOAT; k++) {
        const unary_case *c = &unary_float[k];
        bool positive = !strcmp(c->name, "log") || !strcmp(c->name, "sqrt") || !strcmp(c->name, "rsqrt");
        check_unary(c->name, c->op, c->ref, positive ? pos : i32, KN_F32, c->ulps, c->atol);
    }
    check_unary("exp", kn_exp, r_exp, TI64(KN_SHAPE(3), -2, 0, 5), KN_F32, 4, 0);
    check_unary("sqrt", kn_sqrt, r_sqrt, TI32(KN_SHAPE(3), 4, 9, 2), KN_F32, 0, 0);
}

Test(elementwise, numeric_unary_and_scalar_forms_f32_f64) {
    for (int k = 0; k < N_UNARY_NUM; k++) {
        const unary_case *c = &unary_num[k];
        check_unary(c->name, c->op, c->ref, values(1000, c->lo, c->hi, KN_F32), KN_F32, c->ulps, 0);
        check_unary(c->name, c->op, c->ref, values(1000, c->lo, c->hi, KN_F64), KN_F64, c->ulps64, 0);
    }
}

Test(elementwise, binary_float_ops_exact_f32_f64) {
    for (int k = 0; k < N_BINARY_FLOAT; k++) {
        const binary_case *c = &binary_float[k];
        bool is_pow = !strcmp(c->name, "pow");
        for (int d = 0; d < 2; d++) {
            kn_dtype dt = d ? KN_F64 : KN_F32;
            kn_tensor *a = values(1500, is_pow ? 0 : -1e4, 1e4, dt);
            kn_tensor *b = values(1500, is_pow ? -4 : -1e4, is_pow ? 4 : 1e4, dt);
            check_binary(c->name, c->op, c->ref, a, b, dt, d && c->ulps ? F64_ULPS : c->ulps);
            /* tiny and huge magnitudes: rounding and overflow */
            kn_tensor *s = kn_mul_scalar(values(500, -1, 1, dt), d ? 1e300 : 1e37);
            kn_tensor *t = kn_mul_scalar(values(500, -1, 1, dt), d ? 1e-300 : 1e-37);
            if (!is_pow) {
                check_binary(c->name, c->op, c->ref, s, t, dt, 0);
                check_binary(c->name, c->op, c->ref, t, s, dt, 0);
                check_binary(c->name, c->op, c->ref, s, s, dt, 0);
            }
        }
    }
}

Test(elementwise, pow_special_cases) {
    kn_tensor *a = TF32(KN_SHAPE(12), 2, -2, -2, 0, 0, NAN, 1, -8, 2, 0.5f, -INFINITY, 4);
    kn_tensor *b = TF32(KN_SHAPE(12), 10, 3, 2, -1, 0, 0, NAN, 1.0f / 3, INFINITY, INFINITY, 3, 0.5f);
    check_binary("pow", kn_pow, r_pow, a, b, KN_F32, 0);
    check_binary("pow", kn_pow, r_pow, kn_cast(a, KN_F64), kn_cast(b, KN_F64), KN_F64, 0);
}

/* ---- integer dtypes ---- */

static int64_t ipow_ref(int64_t a, int64_t b) {
    int64_t r = 1;
    for (int64_t i = 0; i < b; i++) r *= a;
    return r;
}

Test(elementwise, integer_arithmetic_i32_i64) {
    static const struct { const char *name; binop op; ref2 ref; } ops[] = {
        {"add", kn_add, r_add}, {"sub", kn_sub, r_sub}, {"mul", kn_mul, r_mul},
        {"maximum", kn_maximum, r_max}, {"minimum", kn_minimum, r_min},
    };
    for (int d = 0; d < 2; d++) {
        kn_dtype dt = d ? KN_I64 : KN_I32;
        kn_tensor *a = values(800, -30000, 30000, dt), *b = values(800, -30000, 30000, dt);
        for (size_t k = 0; k < sizeof ops / sizeof *ops; k++) {
            check_binary(ops[k].name, ops[k].op, ops[k].ref, a, b, dt, 0);
            check_binary(ops[k].name, ops[k].op, ops[k].ref, kn_reshape(a, KN_SHAPE(40, 20)),
                         kn_scalar(-7, dt), dt, 0);
        }
        check_unary("neg", kn_neg, r_neg, a, dt, 0, 0);
        check_unary("abs", kn_abs, r_abs, a, dt, 0, 0);
        check_unary("relu", kn_relu, r_relu, a, dt, 0, 0);
        check_unary("clamp", clamp_i, r_clampi, values(200, -50, 50, dt), dt, 0, 0);
        check_unary("add_scalar", add_si, r_add_si, a, dt, 0, 0);
        check_unary("mul_scalar", mul_si, r_mul_si, a, dt, 0, 0);
        check_unary("pow_scalar", pow_si, r_pow_si, values(200, -1000, 1000, dt), dt, 0, 0);
    }
}

Test(elementwise, integer_pow_exact) {
    int64_t base[] = {2, 3, -2, 0, 5, 1, -1, 7, 10, -3};
    int64_t ex[] = {10, 3, 3, 0, 1, 31, 7, 2, 9, 19};
    kn_tensor *a = kn_from_data(base, KN_SHAPE(10), KN_I64), *b = kn_from_data(ex, KN_SHAPE(10), KN_I64);
    kn_tensor *r64 = kn_pow(a, b), *r32 = kn_pow(kn_cast(a, KN_I32), kn_cast(b, KN_I32));
    NOTNULL(r64);
    NOTNULL(r32);
    cr_assert_eq(kn_dtype_of(r64), KN_I64);
    cr_assert_eq(kn_dtype_of(r32), KN_I32);
    for (int i = 0; i < 10; i++) {
        int64_t w = ipow_ref(base[i], ex[i]);
        cr_assert_eq(((int64_t *)kn_data(r64))[i], w, "%lld^%lld", (long long)base[i], (long long)ex[i]);
        cr_assert_eq(((int32_t *)kn_data(r32))[i], (int32_t)w);
    }
    int64_t big = ((int64_t *)kn_data(kn_pow(TI64(KN_SHAPE(1), 2), TI64(KN_SHAPE(1), 62))))[0];
    cr_assert_eq(big, (int64_t)1 << 62);
}

Test(elementwise, integer_overflow_wraps) {
    kn_tensor *a = TI32(KN_SHAPE(3), INT32_MAX, INT32_MIN, 65536);
    kn_tensor *r = kn_add(a, TI32(KN_SHAPE(3), 1, -1, 0));
    cr_assert_eq(((int32_t *)kn_data(r))[0], INT32_MIN);
    cr_assert_eq(((int32_t *)kn_data(r))[1], INT32_MAX);
    r = kn_mul(a, a);
    cr_assert_eq(((int32_t *)kn_data(r))[2], 0);
    cr_assert_eq(((int32_t *)kn_data(kn_neg(a)))[1], INT32_MIN);
    cr_assert_eq(((int32_t *)kn_data(kn_abs(a)))[1], INT32_MIN);
    kn_tensor *b = TI64(KN_SHAPE(2), INT64_MAX, INT64_MIN);
    r = kn_add_scalar(b, 1);
    cr_assert_eq(((int64_t *)kn_data(r))[0], INT64_MIN);
    cr_assert_eq(((int64_t *)kn_data(kn_sub_scalar(b, 1)))[1], INT64_MAX);
    cr_assert_eq(((int64_t *)kn_data(kn_neg(b)))[1], INT64_MIN);
}

Test(elementwise, integer_clamp_bounds) {
    kn_tensor *x = TI32(KN_SHAPE(5), INT32_MIN, -5, 0, 5, INT32_MAX);
    assert_equal(kn_clamp(x, -1e15, 1e15), x);  /* integral bounds beyond i32 */
    assert_equal(kn_clamp(x, -3, 3), TI32(KN_SHAPE(5), -3, -3, 0, 3, 3));
    assert_equal(kn_clamp(kn_cast(x, KN_I64), -3, 3), kn_cast(TI32(KN_SHAPE(5), -3, -3, 0, 3, 3), KN_I64));
    /* integral bounds beyond the dtype saturate */
    assert_equal(kn_clamp(x, 1e10, 2e10), TI32(KN_SHAPE(5), INT32_MAX, INT32_MAX, INT32_MAX, INT32_MAX, INT32_MAX));
    assert_equal(kn_clamp(x, -2e10, -1e10), TI32(KN_SHAPE(5), INT32_MIN, INT32_MIN, INT32_MIN, INT32_MIN, INT32_MIN));
    kn_tensor *y = TI64(KN_SHAPE(3), INT64_MIN, 0, INT64_MAX);
    assert_equal(kn_clamp(y, -0x1p62, 0x1p62), TI64(KN_SHAPE(3), -(1LL << 62), 0, 1LL << 62));
    /* fractional or non-finite bounds promote to f32, as torch.clamp(int_tensor, 0.5) does */
    cr_assert_eq(kn_dtype_of(kn_clamp(x, -INFINITY, 0)), KN_F32);
    kn_tensor *nan = kn_clamp(x, NAN, 0);
    cr_assert(kn_dtype_of(nan) == KN_F32 && isnan(at(nan, 2)));
    kn_tensor *f = kn_clamp(TI32(KN_SHAPE(3), -5, 1, 5), -0.5, 2.5);
    assert_equal(f, TF32(KN_SHAPE(3), -0.5f, 1, 2.5f));
}

/* ---- comparisons, logical ops, where, cast ---- */

Test(elementwise, comparisons_all_dtypes) {
    kn_tensor *fa = TF32(KN_SHAPE(8), 1, 2, 3, NAN, NAN, INFINITY, -0.0f, -INFINITY);
    kn_tensor *fb = TF32(KN_SHAPE(8), 1, 3, 2, 1, NAN, INFINITY, 0, 5);
    kn_tensor *ia = values(500, -20, 20, KN_I32), *ib = values(500, -20, 20, KN_I32);
    kn_tensor *ba = TBOOL(KN_SHAPE(4), 0, 0, 1, 1), *bb = TBOOL(KN_SHAPE(4), 0, 1, 0, 1);
    for (int k = 0; k < N_COMPARE; k++) {
        binop op = compare_ops[k].op;
        ref2 ref = compare_ops[k].ref;
        const char *n = compare_ops[k].name;
        check_binary(n, op, ref, fa, fb, KN_BOOL, 0);
        check_binary(n, op, ref, kn_cast(fa, KN_F64), kn_cast(fb, KN_F64), KN_BOOL, 0);
        check_binary(n, op, ref, ia, ib, KN_BOOL, 0);
        check_binary(n, op, ref, kn_cast(ia, KN_I64), kn_cast(ib, KN_I64), KN_BOOL, 0);
        check_binary(n, op, ref, ba, bb, KN_BOOL, 0);
        check_binary(n, op, ref, ia, kn_scalar(3, KN_I32), KN_BOOL, 0);
        check_binary(n, op, ref, kn_cast(ia, KN_F32), kn_reshape(ia, KN_SHAPE(500, 1)), KN_BOOL, 0);
        check_binary(n, op, ref, fa, kn_scalar(NAN, KN_F32), KN_BOOL, 0);
    }
    /* int64 values beyond 2^53 compare exactly */
    kn_tensor *big = TI64(KN_SHAPE(1), (1LL << 60) + 1), *big2 = TI64(KN_SHAPE(1), 1LL << 60);
    cr_assert_eq(at(kn_gt(big, big2), 0), 1);
    cr_assert_eq(at(kn_eq(big, big2), 0), 0);
}

Test(elementwise, logical_ops) {
    kn_tensor *a = TF32(KN_SHAPE(6), 0, 1, -0.0f, NAN, 0, 2);
    kn_tensor *b = TI32(KN_SHAPE(6), 0, 0, 5, 0, -1, 3);
    check_binary("logical_and", kn_logical_and, r_and, a, b, KN_BOOL, 0);
    check_binary("logical_or", kn_logical_or, r_or, a, b, KN_BOOL, 0);
    check_unary("logical_not", kn_logical_not, r_not, a, KN_BOOL, 0, 0);
    check_unary("logical_not", kn_logical_not, r_not, b, KN_BOOL, 0, 0);
    kn_tensor *ba = TBOOL(KN_SHAPE(2, 1), 0, 1), *bb = TBOOL(KN_SHAPE(1, 2), 0, 1);
    check_binary("logical_and", kn_logical_and, r_and, ba, bb, KN_BOOL, 0);
    check_binary("logical_or", kn_logical_or, r_or, ba, bb, KN_BOOL, 0);
    check_unary("logical_not", kn_logical_not, r_not, ba, KN_BOOL, 0, 0);
    check_binary("logical_or", kn_logical_or, r_or, kn_scalar(0, KN_F64), kn_scalar(0, KN_I64), KN_BOOL, 0);
}

/* where(c, a, b) checked element by element with broadcasting of all three. */
static void check_where(kn_tensor *c, kn_tensor *a, kn_tensor *b, kn_dtype dt) {
    kn_tensor *y = kn_where(c, a, b);
    NOTNULL(y);
    cr_assert_eq(kn_dtype_of(y), dt);
    int64_t s1[KN_MAX_DIMS], sh[KN_MAX_DIMS];
    int n1, nd;
    bcast(c, a, s1, &n1);
    kn_tensor *tmp = kn_zeros(s1, n1, KN_BOOL);
    bcast(tmp, b, sh, &nd);
    assert_shape(y, sh, nd);
    for (int64_t i = 0; i < kn_numel(y); i++) {
        double cv = at(c, src(c, sh, nd, i));
        double w = cv != 0 ? at(a, src(a, sh, nd, i)) : at(b, src(b, sh, nd, i));
        cr_assert(ulps_off(at(y, i), w, dt) == 0, "element %lld: %g, want %g", (long long)i, at(y, i), w);
    }
}

Test(elementwise, where_broadcasts_and_selects) {
    kn_tensor *c = TBOOL(KN_SHAPE(3, 1), 1, 0, 1);
    kn_tensor *a = TF32(KN_SHAPE(1, 4), 1, 2, NAN, 4), *b = kn_scalar(-1, KN_F32);
    check_where(c, a, b, KN_F32);
    check_where(c, b, a, KN_F32);
    check_where(kn_reshape(kn_gt(values(12, -1, 1, KN_F32), kn_scalar(0, KN_F32)), KN_SHAPE(3, 4)),
                kn_reshape(values(24, 0, 10, KN_F64), KN_SHAPE(2, 3, 4)), values(4, -5, 5, KN_F64), KN_F64);
    check_where(TBOOL(KN_SHAPE(4), 1, 0, 0, 1), values(4, 0, 100, KN_I32), kn_scalar(-9, KN_I32), KN_I32);
    check_where(TBOOL(KN_SHAPE(2), 1, 0), TI64(KN_SHAPE(2), INT64_MAX, 1), TI64(KN_SHAPE(2), 0, INT64_MIN), KN_I64);
    check_where(TBOOL(KN_SHAPE(2), 1, 0), TBOOL(KN_SHAPE(2), 1, 1), TBOOL(KN_SHAPE(1), 0), KN_BOOL);
    /* a non-bool condition: nonzero selects a */
    check_where(TF32(KN_SHAPE(3), 0, NAN, -2), TF32(KN_SHAPE(3), 1, 1, 1), kn_scalar(0, KN_F32), KN_F32);
    kn_tensor *z = kn_where(kn_scalar(1, KN_BOOL), kn_scalar(2, KN_F32), kn_scalar(3, KN_F32));
    NOTNULL(z);
    cr_assert(kn_ndim(z) == 0 && at(z, 0) == 2);
}

static double r_trunc32(double x) { return (double)(int32_t)x; }
static double r_id(double x) { return x; }
static double r_f32(double x) { return (double)(float)x; }
static double r_bool(double x) { return x != 0; }
static kn_tensor *to_i32(kn_tensor *x) { return kn_cast(x, KN_I32); }
static kn_tensor *to_i64(kn_tensor *x) { return kn_cast(x, KN_I64); }
static kn_tensor *to_f32(kn_tensor *x) { return kn_cast(x, KN_F32); }
static kn_tensor *to_f64(kn_tensor *x) { return kn_cast(x, KN_F64); }
static kn_tensor *to_bool(kn_tensor *x) { return kn_cast(x, KN_BOOL); }

Test(elementwise, cast_all_pairs) {
    kn_tensor *src_t[] = {
        values(300, -1e6, 1e6, KN_F32), values(300, -1e6, 1e6, KN_F64),
        values(300, -1e6, 1e6, KN_I32), values(300, -1e6, 1e6, KN_I64),
        kn_gt(values(300, -1, 1, KN_F32), kn_scalar(0, KN_F32)),
    };
    for (int s = 0; s < 5; s++) {
        kn_tensor *x = src_t[s];
        bool isf = s < 2;
        check_unary("cast_f32", to_f32, r_f32, x, KN_F32, 0, 0);
        check_unary("cast_f64", to_f64, r_id, x, KN_F64, 0, 0);
        check_unary("cast_i32", to_i32, isf ? r_trunc32 : r_id, x, KN_I32, 0, 0);
        check_unary("cast_i64", to_i64, isf ? r_trunc32 : r_id, x, KN_I64, 0, 0);
        check_unary("cast_bool", to_bool, r_bool, x, KN_BOOL, 0, 0);
        /* a strided view of the same values */
        kn_tensor *v = kn_transpose(kn_reshape(x, KN_SHAPE(20, 15)), 0, 1);
        check_unary("cast_f64", to_f64, r_id, v, KN_F64, 0, 0);
        check_unary("cast_bool", to_bool, r_bool, v, KN_BOOL, 0, 0);
    }
}

/* ---- shapes: broadcasting, views, 0-dim, empty ---- */

/* Runs every binary op (float ones in f32, comparisons, logical) on a and b. */
static void check_all_binary(kn_tensor *a, kn_tensor *b) {
    for (int k = 0; k < N_BINARY_FLOAT; k++) {
        const binary_case *c = &binary_float[k];
        kn_tensor *aa = a, *bb = b;
        if (!strcmp(c->name, "pow")) aa = kn_abs(a);
        check_binary(c->name, c->op, c->ref, aa, bb, KN_F32, c->ulps);
    }
    for (int k = 0; k < N_COMPARE; k++)
        check_binary(compare_ops[k].name, compare_ops[k].op, compare_ops[k].ref, a, b, KN_BOOL, 0);
    check_binary("logical_and", kn_logical_and, r_and, a, b, KN_BOOL, 0);
    check_binary("logical_or", kn_logical_or, r_or, a, b, KN_BOOL, 0);
}

static void check_all_unary(kn_tensor *x) {
    for (int k = 0; k < N_UNARY_FLOAT; k++) {
        const unary_case *c = &unary_float[k];
        bool positive = !strcmp(c->name, "log") || !strcmp(c->name, "sqrt") || !strcmp(c->name, "rsqrt");
        check_unary(c->name, c->op, c->ref, positive ? kn_add_scalar(kn_abs(x), 0.5) : x, KN_F32,
                    c->ulps, c->atol);
    }
    for (int k = 0; k < N_UNARY_NUM; k++) {
        const unary_case *c = &unary_num[k];
        bool is_pow = !strcmp(c->name, "pow_scalar");
        check_unary(c->name, c->op, c->ref, is_pow ? kn_abs(x) : x, KN_F32, c->ulps, 0);
    }
    check_unary("logical_not", kn_logical_not, r_not, x, KN_BOOL, 0, 0);
}

static kn_tensor *grid(const int64_t *shape, int nd, double lo, double hi) {
    int64_t n = 1;
    for (int i = 0; i < nd; i++) n *= shape[i];
    return kn_reshape(values(n, lo, hi, KN_F32), shape, nd);
}

Test(elementwise, broadcast_column_with_row) {
    kn_tensor *a = grid(KN_SHAPE(3, 1), -3, 3), *b = grid(KN_SHAPE(1, 4), -2, 2);
    check_all_binary(a, b);
    check_all_binary(b, a);
    check_all_binary(grid(KN_SHAPE(3, 4), -3, 3), b);
    check_all_binary(a, grid(KN_SHAPE(3, 4), -3, 3));
}

Test(elementwise, broadcast_vector_with_3d) {
    kn_tensor *a = grid(KN_SHAPE(4), -3, 3), *b = grid(KN_SHAPE(2, 3, 4), -2, 2);
    check_all_binary(a, b);
    check_all_binary(b, a);
    check_all_binary(grid(KN_SHAPE(3, 1), -1, 1), b);
    check_all_binary(grid(KN_SHAPE(2, 1, 1), -1, 1), grid(KN_SHAPE(1, 3, 1), -1, 1));
    check_binary("add", kn_add, r_add, values(4, -10, 10, KN_I32), kn_cast(b, KN_I64), KN_I64, 0);
    check_binary("mul", kn_mul, r_mul, values(4, -10, 10, KN_I32), b, KN_F32, 0);
}

Test(elementwise, expanded_views) {
    kn_tensor *c = kn_expand(grid(KN_SHAPE(3, 1), -2, 2), KN_SHAPE(3, 4));
    NOTNULL(c);
    check_all_unary(c);
    check_all_binary(c, grid(KN_SHAPE(3, 4), -1, 1));
    check_all_binary(kn_expand(grid(KN_SHAPE(1, 4), -1, 1), KN_SHAPE(3, 4)), c);
    check_where(kn_expand(TBOOL(KN_SHAPE(1), 1), KN_SHAPE(5)), kn_expand(kn_scalar(2, KN_F32), KN_SHAPE(5)),
                grid(KN_SHAPE(5), 0, 1), KN_F32);
}

Test(elementwise, broadcast_zero_dim_with_nd) {
    kn_tensor *s = kn_scalar(0.75, KN_F32), *x = grid(KN_SHAPE(2, 3, 4), -2, 2);
    check_all_binary(s, x);
    check_all_binary(x, s);
    check_all_binary(s, grid(KN_SHAPE(5), -2, 2));
    check_binary("mul", kn_mul, r_mul, kn_scalar(3, KN_I64), values(6, -9, 9, KN_I64), KN_I64, 0);
}

Test(elementwise, zero_dim_tensors) {
    kn_tensor *a = kn_scalar(1.5, KN_F32), *b = kn_scalar(-0.25, KN_F32);
    check_all_binary(a, b);
    check_all_unary(a);
    check_all_unary(b);
    kn_tensor *y = kn_add(a, b);
    cr_assert_eq(kn_ndim(y), 0);
    cr_assert_eq(at(y, 0), 1.25);
    cr_assert_eq(kn_ndim(kn_exp(kn_scalar(1, KN_I32))), 0);
    cr_assert_eq(kn_ndim(kn_cast(a, KN_I32)), 0);
    cr_assert_eq(kn_ndim(kn_add_scalar(a, 1)), 0);
}

Test(elementwise, transposed_views) {
    kn_tensor *base = grid(KN_SHAPE(5, 7), -3, 3);
    kn_tensor *t = kn_transpose(base, 0, 1);
    NOTNULL(t);
    cr_assert(!kn_is_contiguous(t));
    check_all_unary(t);
    check_all_binary(t, grid(KN_SHAPE(7, 5), -2, 2));
    check_all_binary(grid(KN_SHAPE(7, 5), -2, 2), t);
    check_all_binary(t, t);
    check_all_binary(t, grid(KN_SHAPE(5), -1, 1));
    check_all_binary(kn_transpose(grid(KN_SHAPE(2, 3, 4), -1, 1), 0, 2), grid(KN_SHAPE(3, 1), -1, 1));
    /* int view through the cast path */
    kn_tensor *ti = kn_transpose(kn_reshape(values(35, -40, 40, KN_I32), KN_SHAPE(5, 7)), 0, 1);
    check_unary("exp", kn_exp, r_exp, ti, KN_F32, 4, 0);
    check_unary("neg", kn_neg, r_neg, ti, KN_I32, 0, 0);
    check_binary("add", kn_add, r_add, ti, kn_transpose(kn_cast(base, KN_I32), 0, 1), KN_I32, 0);
    check_binary("add", kn_add, r_add, ti, t, KN_F32, 0);
}

Test(elementwise, sliced_views_with_step) {
    kn_tensor *base = grid(KN_SHAPE(4, 9), -3, 3);
    kn_tensor *s = kn_slice(base, 1, 1, 8, 2);  /* [4,4], column stride 2 */
    NOTNULL(s);
    cr_assert(kn_shape(s)[1] == 4 && !kn_is_contiguous(s));
    check_all_unary(s);
    check_all_binary(s, grid(KN_SHAPE(4, 4), -2, 2));
    check_all_binary(kn_slice(s, 0, 1, 2, 1), s);          /* [1,4] view with [4,4] view */
    kn_tensor *s2 = kn_slice(kn_slice(base, 0, 0, 4, 3), 1, 0, 9, 3);  /* [2,3] */
    NOTNULL(s2);
    check_all_binary(s2, grid(KN_SHAPE(3), -1, 1));
    check_all_binary(kn_transpose(s2, 0, 1), kn_slice(kn_slice(base, 0, 0, 3, 1), 1, 2, 3, 1));
}

Test(elementwise, empty_tensors) {
    kn_tensor *e = kn_zeros(KN_SHAPE(0, 3), KN_F32);
    check_all_unary(e);
    check_all_binary(e, grid(KN_SHAPE(1, 3), -1, 1));
    check_all_binary(grid(KN_SHAPE(3), -1, 1), e);
    check_all_binary(e, kn_scalar(2, KN_F32));
    check_all_binary(grid(KN_SHAPE(3, 1), -1, 1), kn_zeros(KN_SHAPE(3, 0), KN_F32));
    check_all_binary(kn_zeros(KN_SHAPE(2, 0, 3), KN_F32), grid(KN_SHAPE(1, 3), -1, 1));
    check_all_binary(kn_zeros(KN_SHAPE(0), KN_F32), kn_zeros(KN_SHAPE(1), KN_F32));
    check_binary("add", kn_add, r_add, kn_zeros(KN_SHAPE(0), KN_I32), kn_zeros(KN_SHAPE(1), KN_I64), KN_I64, 0);
    check_unary("cast", to_i64, r_id, e, KN_I64, 0, 0);
    check_unary("neg", kn_neg, r_neg, kn_zeros(KN_SHAPE(4, 0), KN_I32), KN_I32, 0, 0);
    check_unary("exp", kn_exp, r_exp, kn_zeros(KN_SHAPE(4, 0), KN_I32), KN_F32, 0, 0);
    check_where(kn_zeros(KN_SHAPE(0, 1), KN_BOOL), grid(KN_SHAPE(1, 3), 0, 1), kn_scalar(1, KN_F32), KN_F32);
    check_where(kn_scalar(1, KN_BOOL), kn_zeros(KN_SHAPE(0), KN_F64), kn_scalar(1, KN_F32), KN_F64);
    kn_tensor *t = kn_transpose(kn_zeros(KN_SHAPE(0, 5), KN_F32), 0, 1);
    check_all_unary(t);
    kn_clear_error();
    cr_assert_null(kn_add(kn_zeros(KN_SHAPE(0), KN_F32), kn_zeros(KN_SHAPE(2), KN_F32)));
    cr_assert(kn_last_error() && strstr(kn_last_error(), "shapes [0] and [2]"), "%s", kn_last_error());
    kn_clear_error();
}

/* ---- NaN and infinity ---- */

static void expect_vals(kn_tensor *y, kn_dtype dt, const double *want, int n) {
    NOTNULL(y);
    cr_assert_eq(kn_dtype_of(y), dt);
    cr_assert_eq(kn_numel(y), n);
    for (int i = 0; i < n; i++)
        cr_assert(ulps_off(at(y, i), want[i], dt) == 0, "element %d: %.9g, want %.9g", i, at(y, i), want[i]);
}
#define EXPECT(y, dt, ...) expect_vals((y), (dt), (const double[]){__VA_ARGS__}, \
    (int)(sizeof((double[]){__VA_ARGS__}) / sizeof(double)))

Test(elementwise, maximum_minimum_propagate_nan) {
    for (int d = 0; d < 2; d++) {
        kn_dtype dt = d ? KN_F64 : KN_F32;
        kn_tensor *a = kn_cast(TF64(KN_SHAPE(6), NAN, 1, NAN, -INFINITY, 0, INFINITY), dt);
        kn_tensor *b = kn_cast(TF64(KN_SHAPE(6), 1, NAN, NAN, INFINITY, -1, NAN), dt);
        EXPECT(kn_maximum(a, b), dt, NAN, NAN, NAN, INFINITY, 0, NAN);
        EXPECT(kn_minimum(a, b), dt, NAN, NAN, NAN, -INFINITY, -1, NAN);
        kn_tensor *n = kn_cast(kn_scalar(NAN, KN_F64), dt);
        EXPECT(kn_maximum(a, n), dt, NAN, NAN, NAN, NAN, NAN, NAN);
        EXPECT(kn_minimum(n, b), dt, NAN, NAN, NAN, NAN, NAN, NAN);
        EXPECT(kn_maximum(kn_reshape(a, KN_SHAPE(6, 1)), kn_scalar(0.5, dt)), dt, NAN, 1, NAN, 0.5, 0.5, INFINITY);
    }
}

Test(elementwise, relu_abs_clamp_keep_nan) {
    for (int d = 0; d < 2; d++) {
        kn_dtype dt = d ? KN_F64 : KN_F32;
        kn_tensor *x = kn_cast(TF64(KN_SHAPE(6), NAN, -INFINITY, INFINITY, -5, 0.25, 3), dt);
        EXPECT(kn_relu(x), dt, NAN, 0, INFINITY, 0, 0.25, 3);
        EXPECT(kn_abs(x), dt, NAN, INFINITY, INFINITY, 5, 0.25, 3);
        EXPECT(kn_neg(x), dt, NAN, INFINITY, -INFINITY, 5, -0.25, -3);
        EXPECT(kn_clamp(x, 0, 1), dt, NAN, 0, 1, 0, 0.25, 1);
        EXPECT(kn_clamp(x, -INFINITY, INFINITY), dt, NAN, -INFINITY, INFINITY, -5, 0.25, 3);
        EXPECT(kn_clamp(x, -1, -1), dt, NAN, -1, -1, -1, -1, -1);
    }
}

Test(elementwise, float_math_special_values) {
    for (int d = 0; d < 2; d++) {
        kn_dtype dt = d ? KN_F64 : KN_F32;
        double big = d ? 710 : 89;
#define X(...) kn_cast(TF64(KN_SHAPE((int64_t)(sizeof((double[]){__VA_ARGS__}) / sizeof(double))), __VA_ARGS__), dt)
        EXPECT(kn_exp(X(INFINITY, -INFINITY, NAN, 0, big, -big * 2)), dt, INFINITY, 0, NAN, 1, INFINITY, 0);
        EXPECT(kn_log(X(0, -0.0, -1, INFINITY, NAN, 1, -INFINITY)), dt, -INFINITY, -INFINITY, NAN, INFINITY, NAN, 0, NAN);
        EXPECT(kn_sqrt(X(-1, INFINITY, 0, NAN, 4)), dt, NAN, INFINITY, 0, NAN, 2);
        EXPECT(kn_rsqrt(X(0, INFINITY, -1, NAN, 4)), dt, INFINITY, 0, NAN, NAN, 0.5);
        EXPECT(kn_tanh(X(INFINITY, -INFINITY, NAN, 0, 50, -50)), dt, 1, -1, NAN, 0, 1, -1);
        EXPECT(kn_sigmoid(X(INFINITY, -INFINITY, NAN, 0, 800)), dt, 1, 0, NAN, 0.5, 1);
        EXPECT(kn_sin(X(INFINITY, -INFINITY, NAN, 0)), dt, NAN, NAN, NAN, 0);
        EXPECT(kn_cos(X(INFINITY, -INFINITY, NAN, 0)), dt, NAN, NAN, NAN, 1);
        EXPECT(kn_gelu(X(INFINITY, NAN, 0), KN_GELU_ERF), dt, INFINITY, NAN, 0);
        EXPECT(kn_gelu(X(INFINITY, NAN, 0), KN_GELU_TANH), dt, INFINITY, NAN, 0);
        kn_tensor *a = X(INFINITY, 0, 1, -1, 0, NAN, INFINITY);
        kn_tensor *b = X(-INFINITY, INFINITY, 0, 0, 0, 1, INFINITY);
        EXPECT(kn_add(a, b), dt, NAN, INFINITY, 1, -1, 0, NAN, INFINITY);
        EXPECT(kn_mul(a, b), dt, -INFINITY, NAN, 0, -0.0, 0, NAN, INFINITY);
        EXPECT(kn_div(a, b), dt, NAN, 0, INFINITY, -INFINITY, NAN, NAN, NAN);
        EXPECT(kn_sub(a, b), dt, INFINITY, -INFINITY, 1, -1, 0, NAN, NAN);
#undef X
    }
}

/* ---- threads and large tensors: results must not depend on the split ---- */

#define BIG (1 << 20)

/* An odd thread count splits rows unevenly, even on a small machine; it only
 * takes effect if the pool has not started yet in this test's process. */
static void many_threads(void) { setenv("KN_NUM_THREADS", "7", 0); }

/* Both NaN, or the same bits. */
static bool same(const void *p, const void *q, kn_dtype dt) {
    size_t sz = kn_dtype_size(dt);
    if (!memcmp(p, q, sz)) return true;
    if (dt == KN_F32) return isnan(*(const float *)p) && isnan(*(const float *)q);
    if (dt == KN_F64) return isnan(*(const double *)p) && isnan(*(const double *)q);
    return false;
}

/* Counts elements of y (contiguous) that differ from want (contiguous). */
static int64_t count_diff(const kn_tensor *y, const kn_tensor *want, int64_t *first) {
    cr_assert_eq(kn_dtype_of(y), kn_dtype_of(want));
    cr_assert_eq(kn_numel(y), kn_numel(want));
    size_t sz = kn_dtype_size(kn_dtype_of(y));
    int64_t bad = 0;
    for (int64_t i = 0; i < kn_numel(y); i++)
        if (!same((char *)kn_data(y) + i * sz, (char *)kn_data(want) + i * sz, kn_dtype_of(y)))
            if (!bad++) *first = i;
    return bad;
}

/* Second operand of binary ops in check_chunks: big_b from chunk_off on. */
static kn_tensor *big_b;
static int64_t chunk_off;

/* op on the whole of x (threaded) equals op on 1000-element chunks of it. */
static void check_chunks(const char *name, unop op, kn_tensor *x) {
    chunk_off = 0;
    kn_tensor *y = op(x);
    NOTNULL(y);
    int64_t n = kn_numel(x), esz = (int64_t)kn_dtype_size(kn_dtype_of(x)), bad = 0, first = 0;
    int64_t osz = (int64_t)kn_dtype_size(kn_dtype_of(y));
    for (int64_t off = 0; off < n; off += 1000) {
        int64_t m = n - off < 1000 ? n - off : 1000;
        kn_pool_push();
        chunk_off = off;
        kn_tensor *part = op(kn_from_data((char *)kn_data(x) + off * esz, KN_SHAPE(m), kn_dtype_of(x)));
        for (int64_t i = 0; i < m; i++)
            if (!same((char *)kn_data(part) + i * osz, (char *)kn_data(y) + (off + i) * osz, kn_dtype_of(y)))
                if (!bad++) first = off + i;
        kn_pool_pop();
    }
    cr_assert_eq(bad, 0, "%s: %lld elements differ from the small-tensor result, first %lld", name,
                 (long long)bad, (long long)first);
    /* one thread gives the same */
    int nt = kn_get_num_threads();
    kn_set_num_threads(1);
    chunk_off = 0;
    kn_tensor *y1 = op(x);
    kn_set_num_threads(nt);
    cr_assert_eq(count_diff(y1, y, &first), 0, "%s: one thread differs at %lld", name, (long long)first);
}

static kn_tensor *other(kn_tensor *x) { return kn_slice(big_b, 0, chunk_off, chunk_off + kn_numel(x), 1); }
static kn_tensor *add_big(kn_tensor *x) { return kn_add(x, other(x)); }
static kn_tensor *pow_big(kn_tensor *x) { return kn_pow(kn_abs(x), other(x)); }
static kn_tensor *max_big(kn_tensor *x) { return kn_maximum(x, other(x)); }
static kn_tensor *lt_big(kn_tensor *x) { return kn_lt(x, other(x)); }
static kn_tensor *where_big(kn_tensor *x) { return kn_where(kn_gt(x, kn_scalar(0, KN_F32)), x, other(x)); }

Test(elementwise, large_tensors_match_small_ones) {
    many_threads();
    kn_tensor *x = values(BIG, -10, 10, KN_F32);
    big_b = values(BIG, -3, 3, KN_F32);
    for (int k = 0; k < N_UNARY_FLOAT; k++) check_chunks(unary_float[k].name, unary_float[k].op, x);
    for (int k = 0; k < N_UNARY_NUM; k++) check_chunks(unary_num[k].name, unary_num[k].op, x);
    check_chunks("add", add_big, x);
    check_chunks("pow", pow_big, x);
    check_chunks("maximum", max_big, x);
    check_chunks("lt", lt_big, x);
    check_chunks("where", where_big, x);
    check_chunks("cast_i32", to_i32, x);
    check_chunks("cast_f64", to_f64, x);
    check_chunks("logical_not", kn_logical_not, x);
    kn_tensor *xi = values(BIG, -1e5, 1e5, KN_I64);
    check_chunks("neg", kn_neg, xi);
    check_chunks("mul_scalar", mul_si, xi);
    check_chunks("exp", kn_exp, kn_mul_scalar(xi, 1e-4));
}

Test(elementwise, large_strided_and_broadcast) {
    many_threads();
    const int64_t n = 1024;
    kn_tensor *x = values(n * n, -5, 5, KN_F32);
    const float *xv = kn_data(x);
    float *tv = malloc((size_t)(n * n) * sizeof *tv);
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < n; j++) tv[i * n + j] = xv[j * n + i];
    kn_tensor *view = kn_transpose(kn_reshape(x, KN_SHAPE(n, n)), 0, 1);
    kn_tensor *copy = kn_from_data(tv, KN_SHAPE(n, n), KN_F32);
    free(tv);
    int64_t first = 0;
    for (int k = 0; k < N_UNARY_FLOAT; k++) {
        kn_tensor *a = unary_float[k].op(view), *b = unary_float[k].op(copy);
        NOTNULL(a);
        cr_assert_eq(count_diff(a, b, &first), 0, "%s of a transposed view differs at %lld",
                     unary_float[k].name, (long long)first);
    }
    kn_tensor *col = values(n, -1, 1, KN_F32);
    cr_assert_eq(count_diff(kn_mul(view, col), kn_mul(copy, col), &first), 0, "mul at %lld", (long long)first);
    cr_assert_eq(count_diff(kn_sub(kn_reshape(col, KN_SHAPE(n, 1)), view),
                            kn_sub(kn_reshape(col, KN_SHAPE(n, 1)), copy), &first), 0, "sub at %lld", (long long)first);
    /* [n,1] op [1,n]: a broadcast product, checked against a plain loop */
    kn_tensor *row = values(n, -3, 3, KN_F32);
    for (int k = 0; k < N_BINARY_FLOAT; k++) {
        const binary_case *c = &binary_float[k];
        kn_tensor *y = c->op(kn_reshape(kn_abs(col), KN_SHAPE(n, 1)), kn_reshape(row, KN_SHAPE(1, n)));
        NOTNULL(y);
        const float *cv = kn_data(kn_abs(col)), *rv = kn_data(row), *yv = kn_data(y);
        int64_t bad = 0;
        for (int64_t i = 0; i < n; i++)
            for (int64_t j = 0; j < n; j++) {
                float w = c->s32(cv[i], rv[j]);
                if (!same(&w, &yv[i * n + j], KN_F32)) bad++;
            }
        cr_assert_eq(bad, 0, "%s: %lld broadcast elements differ", c->name, (long long)bad);
    }
}

/* ---- bitwise agreement with core/scalar.h ---- */

#define NBITS 4096
#define NSPECIAL 40

static void fill_f32(float *v) {
    static const float sp[NSPECIAL] = {
        0.0f, -0.0f, 1, -1, 0.5f, -0.5f, 2, -2, 3, -3, INFINITY, -INFINITY, NAN, -NAN,
        FLT_MIN, -FLT_MIN, FLT_MAX, -FLT_MAX, FLT_TRUE_MIN, -FLT_TRUE_MIN, 1e-30f, -1e-30f,
        88.72f, 88.73f, -87.3f, -103.9f, -104, 1e10f, -1e10f, 3.14159265f, 1.5707964f, 20, -20,
        9, -9, 1e-3f, 0.1f, 1e30f, 16777217.0f, -0.75f,
    };
    memcpy(v, sp, sizeof sp);
    rng_state = 12345;
    for (int i = NSPECIAL; i < NBITS; i++) {
        uint32_t r = (uint32_t)rnd();
        switch (i % 4) {
        case 0: v[i] = (float)uniform(-10, 10); break;
        case 1: v[i] = (float)uniform(-100, 100); break;
        case 2: v[i] = (float)uniform(-1, 1); break;
        default: memcpy(&v[i], &r, 4);  /* any bit pattern: subnormals, huge, NaN payloads */
        }
    }
}

static void fill_f64(double *v) {
    float f[NBITS];
    fill_f32(f);
    for (int i = 0; i < NBITS; i++) {
        v[i] = f[i];
        if (i >= NSPECIAL && i % 4 == 3) {
            uint64_t r = rnd();
            memcpy(&v[i], &r, 8);
        } else if (i >= NSPECIAL && i % 4 == 0) {
            v[i] = uniform(-10, 10);
        }
    }
    v[22] = 709.7;
    v[23] = 709.8;
    v[24] = -745.1;
}

static bool bits32(float got, float want) {
    uint32_t g, w;
    memcpy(&g, &got, 4);
    memcpy(&w, &want, 4);
    return g == w || (isnan(got) && isnan(want));
}
static bool bits64(double got, double want) {
    uint64_t g, w;
    memcpy(&g, &got, 8);
    memcpy(&w, &want, 8);
    return g == w || (isnan(got) && isnan(want));
}

static void bitwise_unary_f32(const unary_case *c, const float *v) {
    kn_tensor *x = kn_from_data(v, KN_SHAPE(NBITS), KN_F32);
    const float *y = kn_data(c->op(x));
    NOTNULL(y);
    for (int i = 0; i < NBITS; i++)
        cr_assert(bits32(y[i], c->s32(v[i])), "%s(%a): eager %a, formula %a", c->name, v[i], y[i], c->s32(v[i]));
    /* strided input */
    const float *yt = kn_data(kn_contiguous(c->op(kn_transpose(kn_reshape(x, KN_SHAPE(64, 64)), 0, 1))));
    for (int i = 0; i < 64; i++)
        for (int j = 0; j < 64; j++)
            cr_assert(bits32(yt[i * 64 + j], c->s32(v[j * 64 + i])), "%s(%a) strided", c->name, v[j * 64 + i]);
    /* 0-dim */
    for (int i = 0; i < NSPECIAL; i++) {
        kn_tensor *r = c->op(kn_from_data(&v[i], NULL, 0, KN_F32));
        NOTNULL(r);
        cr_assert(bits32(*(float *)kn_data(r), c->s32(v[i])), "%s(%a) 0-dim", c->name, v[i]);
    }
}

static void bitwise_unary_f64(const unary_case *c, const double *v) {
    kn_tensor *x = kn_from_data(v, KN_SHAPE(NBITS), KN_F64);
    const double *y = kn_data(c->op(x));
    NOTNULL(y);
    for (int i = 0; i < NBITS; i++)
        cr_assert(bits64(y[i], c->s64(v[i])), "%s(%a): eager %a, formula %a", c->name, v[i], y[i], c->s64(v[i]));
    const double *yt = kn_data(kn_contiguous(c->op(kn_transpose(kn_reshape(x, KN_SHAPE(64, 64)), 0, 1))));
    for (int i = 0; i < 64; i++)
        for (int j = 0; j < 64; j++)
            cr_assert(bits64(yt[i * 64 + j], c->s64(v[j * 64 + i])), "%s(%a) strided", c->name, v[j * 64 + i]);
}

Test(elementwise, bitwise_unary_matches_scalar_formula_f32) {
    static float v[NBITS];
    fill_f32(v);
    for (int k = 0; k < N_UNARY_FLOAT; k++) bitwise_unary_f32(&unary_float[k], v);
    for (int k = 0; k < N_UNARY_NUM; k++) bitwise_unary_f32(&unary_num[k], v);
}

Test(elementwise, bitwise_unary_matches_scalar_formula_f64) {
    static double v[NBITS];
    fill_f64(v);
    for (int k = 0; k < N_UNARY_FLOAT; k++) bitwise_unary_f64(&unary_float[k], v);
    for (int k = 0; k < N_UNARY_NUM; k++) bitwise_unary_f64(&unary_num[k], v);
}

Test(elementwise, bitwise_binary_matches_scalar_formula_f32) {
    static float a[NBITS], b[NBITS];
    fill_f32(a);
    for (int i = 0; i < NBITS; i++) b[i] = a[(i * 1031 + 7) % NBITS];
    /* every pair of specials too */
    for (int i = 0; i < NSPECIAL; i++)
        for (int j = 0; j < NSPECIAL; j++) {
            a[NSPECIAL + i * NSPECIAL + j] = a[i];
            b[NSPECIAL + i * NSPECIAL + j] = a[j];
        }
    kn_tensor *ta = kn_from_data(a, KN_SHAPE(NBITS), KN_F32), *tb = kn_from_data(b, KN_SHAPE(NBITS), KN_F32);
    for (int k = 0; k < N_BINARY_FLOAT; k++) {
        const binary_case *c = &binary_float[k];
        const float *y = kn_data(c->op(ta, tb));
        NOTNULL(y);
        for (int i = 0; i < NBITS; i++)
            cr_assert(bits32(y[i], c->s32(a[i], b[i])), "%s(%a, %a): eager %a, formula %a", c->name,
                      a[i], b[i], y[i], c->s32(a[i], b[i]));
        /* 0-dim on either side: the broadcast fast paths */
        for (int j = 0; j < NSPECIAL; j++) {
            kn_pool_push();
            kn_tensor *s = kn_from_data(&a[j], NULL, 0, KN_F32);
            const float *y1 = kn_data(c->op(ta, s)), *y2 = kn_data(c->op(s, ta));
            for (int i = 0; i < NBITS; i++) {
                cr_assert(bits32(y1[i], c->s32(a[i], a[j])), "%s(%a, %a) bcast", c->name, a[i], a[j]);
                cr_assert(bits32(y2[i], c->s32(a[j], a[i])), "%s(%a, %a) bcast", c->name, a[j], a[i]);
            }
            kn_pool_pop();
        }
        /* [64,1] with [1,64]: the strided loop */
        const float *yo = kn_data(c->op(kn_reshape(kn_slice(ta, 0, 0, 64, 1), KN_SHAPE(64, 1)),
                                        kn_reshape(kn_slice(tb, 0, 100, 164, 1), KN_SHAPE(1, 64))));
        for (int i = 0; i < 64; i++)
            for (int j = 0; j < 64; j++)
                cr_assert(bits32(yo[i * 64 + j], c->s32(a[i], b[100 + j])), "%s(%a, %a) outer", c->name,
                          a[i], b[100 + j]);
    }
}

Test(elementwise, bitwise_binary_matches_scalar_formula_f64) {
    static double a[NBITS], b[NBITS];
    fill_f64(a);
    for (int i = 0; i < NBITS; i++) b[i] = a[(i * 1031 + 7) % NBITS];
    for (int i = 0; i < NSPECIAL; i++)
        for (int j = 0; j < NSPECIAL; j++) {
            a[NSPECIAL + i * NSPECIAL + j] = a[i];
            b[NSPECIAL + i * NSPECIAL + j] = a[j];
        }
    kn_tensor *ta = kn_from_data(a, KN_SHAPE(NBITS), KN_F64), *tb = kn_from_data(b, KN_SHAPE(NBITS), KN_F64);
    for (int k = 0; k < N_BINARY_FLOAT; k++) {
        const binary_case *c = &binary_float[k];
        const double *y = kn_data(c->op(ta, tb));
        NOTNULL(y);
        for (int i = 0; i < NBITS; i++)
            cr_assert(bits64(y[i], c->s64(a[i], b[i])), "%s(%a, %a): eager %a, formula %a", c->name,
                      a[i], b[i], y[i], c->s64(a[i], b[i]));
        for (int j = 0; j < NSPECIAL; j += 3) {
            kn_pool_push();
            kn_tensor *s = kn_from_data(&a[j], NULL, 0, KN_F64);
            const double *y1 = kn_data(c->op(ta, s)), *y2 = kn_data(c->op(s, ta));
            for (int i = 0; i < NBITS; i++) {
                cr_assert(bits64(y1[i], c->s64(a[i], a[j])), "%s(%a, %a) bcast", c->name, a[i], a[j]);
                cr_assert(bits64(y2[i], c->s64(a[j], a[i])), "%s(%a, %a) bcast", c->name, a[j], a[i]);
            }
            kn_pool_pop();
        }
    }
}

Test(elementwise, bitwise_clamp_bounds_f32) {
    static float v[NBITS];
    fill_f32(v);
    static const float bounds[][2] = {{-1, 1}, {0, INFINITY}, {-INFINITY, 0}, {0.5f, 0.5f}, {-0.0f, 0.0f},
                                      {NAN, 1}, {-1, NAN}, {1e-45f, 3e38f}};
    kn_tensor *x = kn_from_data(v, KN_SHAPE(NBITS), KN_F32);
    for (size_t k = 0; k < sizeof bounds / sizeof *bounds; k++) {
        const float *y = kn_data(kn_clamp(x, bounds[k][0], bounds[k][1]));
        NOTNULL(y);
        for (int i = 0; i < NBITS; i++) {
            float w = kn_s_clamp_f32(v[i], bounds[k][0], bounds[k][1]);
            cr_assert(bits32(y[i], w), "clamp(%a, %g, %g): eager %a, formula %a", v[i], bounds[k][0],
                      bounds[k][1], y[i], w);
        }
    }
}
