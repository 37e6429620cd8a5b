/* Eager elementwise ops. Every loop applies the scalar formula of its op from
 * core/scalar.h (ints use the plain C expressions below), so traced code that
 * links the same formulas gives bitwise-equal results. */
#include "../core/autograd.h"
#include "../core/scalar.h"
#include <math.h>
#include <string.h>

#define GRAIN (1 << 15)

/* ---- loop generators: contiguous fast paths first, strided fallback ---- */
#define LOOP1(NAME, TO, TI, EXPR)                                                 \
    static void NAME(int64_t n, char **p, const int64_t *s, const void *prm) {   \
        const double *P = prm; (void)P;                                           \
        TO *restrict y = (TO *)p[0];                                              \
        const TI *restrict x = (const TI *)p[1];                                  \
        if (s[0] == sizeof(TO) && s[1] == sizeof(TI))                             \
            for (int64_t i = 0; i < n; i++) { TI a = x[i]; y[i] = (EXPR); }       \
        else                                                                      \
            for (int64_t i = 0; i < n; i++) {                                     \
                TI a = *(const TI *)(p[1] + i * s[1]);                            \
                *(TO *)(p[0] + i * s[0]) = (EXPR);                                \
            }                                                                     \
    }

#define LOOP2(NAME, TO, TI, EXPR)                                                 \
    static void NAME(int64_t n, char **p, const int64_t *s, const void *prm) {   \
        (void)prm;                                                                \
        TO *restrict y = (TO *)p[0];                                              \
        const TI *restrict xa = (const TI *)p[1], *restrict xb = (const TI *)p[2]; \
        if (s[0] == sizeof(TO) && s[1] == sizeof(TI) && s[2] == sizeof(TI))       \
            for (int64_t i = 0; i < n; i++) { TI a = xa[i], b = xb[i]; y[i] = (EXPR); } \
        else if (s[0] == sizeof(TO) && s[1] == sizeof(TI) && s[2] == 0) {         \
            const TI b = xb[0];                                                   \
            for (int64_t i = 0; i < n; i++) { TI a = xa[i]; y[i] = (EXPR); }      \
        } else if (s[0] == sizeof(TO) && s[1] == 0 && s[2] == sizeof(TI)) {       \
            const TI a = xa[0];                                                   \
            for (int64_t i = 0; i < n; i++) { TI b = xb[i]; y[i] = (EXPR); }      \
        } else                                                                    \
            for (int64_t i = 0; i < n; i++) {                                     \
                TI a = *(const TI *)(p[1] + i * s[1]);                            \
                TI b = *(const TI *)(p[2] + i * s[2]);                            \
                *(TO *)(p[0] + i * s[0]) = (EXPR);                                \
            }                                                                     \
    }

/* Integer formulas. Wrapping arithmetic goes through unsigned to avoid UB. */
#define IADD(T, U) ((T)((U)a + (U)b))
#define ISUB(T, U) ((T)((U)a - (U)b))
#define IMUL(T, U) ((T)((U)a * (U)b))
#define INEG(T, U) ((T)(0 - (U)a))

static inline int64_t ipow(int64_t a, int64_t b) {
    if (b < 0) return a == 1 ? 1 : a == -1 ? (b & 1 ? -1 : 1) : 0;
    uint64_t r = 1, x = (uint64_t)a;
    for (; b; b >>= 1, x *= x)
        if (b & 1) r *= x;
    return (int64_t)r;
}

/* ---- unary float ops: f32 and f64 loops from ops.def ---- */
#define KN_UNARY_FLOAT(name)                                                      \
    LOOP1(name##_f32, float, float, kn_s_##name##_f32(a))                         \
    LOOP1(name##_f64, double, double, kn_s_##name##_f64(a))
#include "../core/ops.def"

/* ---- numeric unary ops, with integer forms ---- */
#define NUM_UNARY(name, IEXPR32, IEXPR64)                                         \
    LOOP1(name##_f32, float, float, kn_s_##name##_f32(a))                         \
    LOOP1(name##_f64, double, double, kn_s_##name##_f64(a))                       \
    LOOP1(name##_i32, int32_t, int32_t, IEXPR32)                                  \
    LOOP1(name##_i64, int64_t, int64_t, IEXPR64)
NUM_UNARY(neg, INEG(int32_t, uint32_t), INEG(int64_t, uint64_t))
NUM_UNARY(abs, (a < 0 ? INEG(int32_t, uint32_t) : a), (a < 0 ? INEG(int64_t, uint64_t) : a))
NUM_UNARY(relu, (a > 0 ? a : 0), (a > 0 ? a : 0))
LOOP1(clamp_f32, float, float, kn_s_clamp_f32(a, (float)P[0], (float)P[1]))
LOOP1(clamp_f64, double, double, kn_s_clamp_f64(a, P[0], P[1]))
LOOP1(clamp_i32, int32_t, int32_t, (a < P[0] ? (int32_t)P[0] : a > P[1] ? (int32_t)P[1] : a))
LOOP1(clamp_i64, int64_t, int64_t, (a < P[0] ? (int64_t)P[0] : a > P[1] ? (int64_t)P[1] : a))

/* ---- binary arithmetic ---- */
#define NUM_BINARY(name, IEXPR32, IEXPR64)                                        \
    LOOP2(name##_f32, float, float, kn_s_##name##_f32(a, b))                      \
    LOOP2(name##_f64, double, double, kn_s_##name##_f64(a, b))                    \
    LOOP2(name##_i32, int32_t, int32_t, IEXPR32)                                  \
    LOOP2(name##_i64, int64_t, int64_t, IEXPR64)
NUM_BINARY(add, IADD(int32_t, uint32_t), IADD(int64_t, uint64_t))
NUM_BINARY(sub, ISUB(int32_t, uint32_t), ISUB(int64_t, uint64_t))
NUM_BINARY(mul, IMUL(int32_t, uint32_t), IMUL(int64_t, uint64_t))
NUM_BINARY(pow, (int32_t)ipow(a, b), ipow(a, b))
NUM_BINARY(maximum, (a > b ? a : b), (a > b ? a : b))
NUM_BINARY(minimum, (a < b ? a : b), (a < b ? a : b))
LOOP2(div_f32, float, float, kn_s_div_f32(a, b))
LOOP2(div_f64, double, double, kn_s_div_f64(a, b))

/* ---- comparisons and logical ops: every dtype, bool out ---- */
#define CMP_ALL(name, OP)                                                         \
    LOOP2(name##_f32, uint8_t, float, a OP b)                                     \
    LOOP2(name##_f64, uint8_t, double, a OP b)                                    \
    LOOP2(name##_i32, uint8_t, int32_t, a OP b)                                   \
    LOOP2(name##_i64, uint8_t, int64_t, a OP b)                                   \
    LOOP2(name##_bool, uint8_t, uint8_t, a OP b)
#define KN_COMPARE(name, OP) CMP_ALL(name, OP)
#define KN_LOGICAL(name, OP) LOOP2(name##_bool, uint8_t, uint8_t, (uint8_t)(a OP b))
#include "../core/ops.def"
LOOP1(logical_not_bool, uint8_t, uint8_t, (uint8_t)!a)

/* ---- loop tables, indexed by op and compute dtype ---- */
#define F_ONLY(name) [KN_F32] = name##_f32, [KN_F64] = name##_f64
#define NUMERIC(name) F_ONLY(name), [KN_I32] = name##_i32, [KN_I64] = name##_i64
static const kn_loop_fn loops[KN_OP_COUNT][KN_DTYPE_COUNT] = {
#define KN_UNARY_FLOAT(name) [KN_OP_##name] = {F_ONLY(name)},
#define KN_COMPARE(name, OP) [KN_OP_##name] = {NUMERIC(name), [KN_BOOL] = name##_bool},
#define KN_LOGICAL(name, OP) [KN_OP_##name] = {[KN_BOOL] = name##_bool},
#include "../core/ops.def"
    [KN_OP_neg] = {NUMERIC(neg)}, [KN_OP_abs] = {NUMERIC(abs)},
    [KN_OP_relu] = {NUMERIC(relu)}, [KN_OP_clamp] = {NUMERIC(clamp)},
    [KN_OP_add] = {NUMERIC(add)}, [KN_OP_sub] = {NUMERIC(sub)},
    [KN_OP_mul] = {NUMERIC(mul)}, [KN_OP_pow] = {NUMERIC(pow)},
    [KN_OP_maximum] = {NUMERIC(maximum)}, [KN_OP_minimum] = {NUMERIC(minimum)},
    [KN_OP_div] = {F_ONLY(div)}, [KN_OP_logical_not] = {[KN_BOOL] = logical_not_bool},
};

/* ---- dispatch ---- */
static const char *const opname[KN_OP_COUNT] = {
#define KN_OP(name, arity, kind) [KN_OP_##name] = "kn_" #name,
#include "../core/ops.def"
};

static const char *name_of(kn_op op) { return opname[op]; }

kn_loop_fn kn__ew_loop(kn_op op, kn_dtype dt) { return loops[op][dt]; }

/* x converted to dt, or x itself when it already is dt (a reference to kn__drop). */
static kn_tensor *as_dtype(kn_tensor *x, kn_dtype dt) {
    return x->dtype == dt ? kn__ret(x) : kn_cast(x, dt);
}

/* Runs op over n operands (already NULL-checked and of dtype `dt`) into a
 * new tensor of dtype `out_dt` with their broadcast shape. */
static kn_tensor *run(kn_op op, kn_tensor *const *in, int n, kn_dtype dt, kn_dtype out_dt,
                      const double *params) {
    kn_loop_fn fn = loops[op][dt];
    if (!fn) return kn__error("%s: dtype %s is not supported", name_of(op), kn_dtype_name(dt));
    int64_t shape[KN_MAX_DIMS];
    int nd = in[0]->ndim;
    memcpy(shape, in[0]->shape, (size_t)nd * sizeof *shape);
    for (int i = 1; i < n; i++) {
        if (!kn__broadcast_shape(shape, nd, in[i]->shape, in[i]->ndim, shape, &nd)) {
            char b0[KN_SHAPE_BUF], b1[KN_SHAPE_BUF];
            return kn__error("%s: shapes %s and %s cannot be broadcast", name_of(op),
                             kn__shape_str(in[i - 1]->shape, in[i - 1]->ndim, b0),
                             kn__shape_str(in[i]->shape, in[i]->ndim, b1));
        }
    }
    kn_tensor *cv[KN_MAX_OPS] = {0};  /* converted inputs; NULL: use in[i] as is */
    kn_tensor *out = NULL;
    for (int i = 0; i < n; i++)
        if (in[i]->dtype != dt && !(cv[i] = kn_cast(in[i], dt))) goto done;
    if (!(out = kn__alloc(shape, nd, out_dt))) goto done;
    kn_iter it = {.ndim = nd};
    memcpy(it.shape, shape, sizeof it.shape);
    kn__iter_add(&it, out);
    for (int i = 0; i < n; i++) kn__iter_add(&it, cv[i] ? cv[i] : in[i]);
    kn__iter_run(&it, fn, params, GRAIN);
done:
    for (int i = 0; i < n; i++) kn__drop(cv[i]);
    kn_params p = {.d = {params ? params[0] : 0, params ? params[1] : 0}};
    return kn__record(op, out, in, n, &p);
}

static kn_dtype float_of(kn_dtype dt) { return kn__is_float(dt) ? dt : KN_F32; }

static kn_tensor *unary(kn_op op, kn_tensor *x, const double *params) {
    KN_CHECK(name_of(op), x);
    kn_dtype dt = loops[op][KN_F32] && !loops[op][KN_I32] ? float_of(x->dtype) : x->dtype;
    if (x->dtype == KN_BOOL && op != KN_OP_logical_not)
        return kn__error("%s: dtype bool is not supported", name_of(op));
    return run(op, &x, 1, dt, dt, params);
}

static kn_tensor *binary(kn_op op, kn_tensor *a, kn_tensor *b) {
    KN_CHECK(name_of(op), a);
    KN_CHECK(name_of(op), b);
    kn_tensor *in[2] = {a, b};
    kn_dtype dt = kn__promote(in, 2);
    if (op == KN_OP_div) dt = float_of(dt);
    bool cmp = op >= KN_OP_eq && op <= KN_OP_logical_or;
    if (op == KN_OP_logical_and || op == KN_OP_logical_or) dt = KN_BOOL;
    if (dt == KN_BOOL && !cmp)
        return kn__error("%s: dtype bool is not supported (cast to an integer dtype first)",
                         name_of(op));
    return run(op, in, 2, dt, cmp ? KN_BOOL : dt, NULL);
}

#define KN_UNARY_FLOAT(name) kn_tensor *kn_##name(kn_tensor *x) { return unary(KN_OP_##name, x, NULL); }
#define KN_UNARY_FLOAT_NOAPI(name)
#define KN_BINARY(name) kn_tensor *kn_##name(kn_tensor *a, kn_tensor *b) { return binary(KN_OP_##name, a, b); }
#define KN_COMPARE(name, OP) KN_BINARY(name)
#define KN_LOGICAL(name, OP) KN_BINARY(name)
#include "../core/ops.def"
/* gelu_tanh has no public name of its own: kn_gelu picks the form. */
kn_tensor *kn_neg(kn_tensor *x) { return unary(KN_OP_neg, x, NULL); }
kn_tensor *kn_abs(kn_tensor *x) { return unary(KN_OP_abs, x, NULL); }
kn_tensor *kn_relu(kn_tensor *x) { return unary(KN_OP_relu, x, NULL); }
kn_tensor *kn_logical_not(kn_tensor *x) {
    KN_CHECK("kn_logical_not", x);
    kn_tensor *b = as_dtype(x, KN_BOOL);
    kn_tensor *r = b ? unary(KN_OP_logical_not, b, NULL) : NULL;
    kn__drop(b);
    return r;
}

kn_tensor *kn_gelu(kn_tensor *x, kn_gelu_approx approx) {
    KN_CHECK("kn_gelu", x);
    if (approx != KN_GELU_ERF && approx != KN_GELU_TANH)
        return kn__error("kn_gelu: unknown approximation %d", (int)approx);
    return unary(approx == KN_GELU_TANH ? KN_OP_gelu_tanh : KN_OP_gelu, x, NULL);
}

/* A C number that acts like a Python int: integral and within int64. */
static bool integral(double s) { return isfinite(s) && s == trunc(s) && fabs(s) < 0x1p63; }

kn_tensor *kn_clamp(kn_tensor *x, double lo, double hi) {
    KN_CHECK("kn_clamp", x);
    if (lo > hi) return kn__error("kn_clamp: min %g is greater than max %g", lo, hi);
    double p[2] = {lo, hi};
    if (kn__is_int(x->dtype) && !(integral(lo) && integral(hi))) {
        /* fractional bounds promote an integer tensor to f32, as in PyTorch */
        kn_tensor *f = kn_cast(x, KN_F32);
        kn_tensor *r = f ? unary(KN_OP_clamp, f, p) : NULL;
        kn__drop(f);
        return r;
    }
    if (x->dtype == KN_I32)  /* the i32 loop converts a bound it applies */
        for (int i = 0; i < 2; i++) p[i] = fmin(fmax(p[i], INT32_MIN), INT32_MAX);
    return unary(KN_OP_clamp, x, p);
}

/* ---- scalar forms: the C number becomes a weak (wrapped) 0-dim tensor ---- */
static kn_tensor *wrap(double s) {
    kn_tensor *t = kn_scalar(s, integral(s) ? KN_I64 : KN_F64);
    if (t) t->wrapped = true;
    return t;
}

#define SCALAR_FORM(name)                                                         \
    kn_tensor *kn_##name##_scalar(kn_tensor *a, double s) {                       \
        KN_CHECK("kn_" #name "_scalar", a);                                       \
        kn_tensor *w = wrap(s);                                                   \
        kn_tensor *r = w ? kn_##name(a, w) : NULL;                                \
        kn__drop(w);                                                              \
        return r;                                                                 \
    }
SCALAR_FORM(add)
SCALAR_FORM(sub)
SCALAR_FORM(mul)
SCALAR_FORM(div)
SCALAR_FORM(pow)

/* ---- where and cast ---- */
/* Dense operands (b may be one broadcast value, as in relu's gradient) take
 * a loop that vectorizes: both values are loaded, then selected. */
#define WHERE_LOOP(NAME, T)                                                               \
    static void NAME(int64_t n, char **p, const int64_t *s, const void *u) {             \
        (void)u;                                                                          \
        T *o = (T *)p[0];                                                                 \
        const uint8_t *c = (const uint8_t *)p[1];                                         \
        const T *a = (const T *)p[2], *b = (const T *)p[3];                               \
        if (s[0] == sizeof(T) && s[1] == 1 && s[2] == sizeof(T) && (s[3] == 0 || s[3] == sizeof(T))) { \
            int64_t bs = s[3] ? 1 : 0;                                                    \
            for (int64_t i = 0; i < n; i++) {                                             \
                T av = a[i], bv = b[i * bs];                                              \
                o[i] = c[i] ? av : bv;                                                    \
            }                                                                             \
            return;                                                                       \
        }                                                                                 \
        for (int64_t i = 0; i < n; i++)                                                   \
            *(T *)(p[0] + i * s[0]) = *(const uint8_t *)(p[1] + i * s[1])                 \
                ? *(const T *)(p[2] + i * s[2]) : *(const T *)(p[3] + i * s[3]);          \
    }
WHERE_LOOP(where1, uint8_t)
WHERE_LOOP(where4, uint32_t)
WHERE_LOOP(where8, uint64_t)

kn_tensor *kn_where(kn_tensor *cond, kn_tensor *a, kn_tensor *b) {
    KN_CHECK("kn_where", cond);
    KN_CHECK("kn_where", a);
    KN_CHECK("kn_where", b);
    kn_tensor *ab[2] = {a, b};
    kn_dtype dt = kn__promote(ab, 2);
    size_t sz = kn_dtype_size(dt);
    kn_loop_fn fn = sz == 1 ? where1 : sz == 4 ? where4 : where8;
    kn_tensor *c = as_dtype(cond, KN_BOOL);
    if (!c) return NULL;
    /* run() expects one dtype for all inputs; where mixes bool and dt. */
    int64_t shape[KN_MAX_DIMS];
    int nd;
    kn_tensor *in[3] = {c, a, b}, *ca = NULL, *cb = NULL, *out = NULL;
    bool ok = kn__broadcast_shape(c->shape, c->ndim, a->shape, a->ndim, shape, &nd) &&
              kn__broadcast_shape(shape, nd, b->shape, b->ndim, shape, &nd);
    if (!ok) {
        char b0[KN_SHAPE_BUF], b1[KN_SHAPE_BUF], b2[KN_SHAPE_BUF];
        kn__error("kn_where: shapes %s, %s and %s cannot be broadcast",
                  kn__shape_str(c->shape, c->ndim, b0), kn__shape_str(a->shape, a->ndim, b1),
                  kn__shape_str(b->shape, b->ndim, b2));
        goto done;
    }
    if (!(ca = as_dtype(a, dt)) || !(cb = as_dtype(b, dt)) || !(out = kn__alloc(shape, nd, dt)))
        goto done;
    in[1] = ca;
    in[2] = cb;
    kn_iter it = {.ndim = nd};
    memcpy(it.shape, shape, sizeof it.shape);
    kn__iter_add(&it, out);
    for (int i = 0; i < 3; i++) kn__iter_add(&it, in[i]);
    kn__iter_run(&it, fn, NULL, GRAIN);
done:
    kn__drop(c);
    kn__drop(ca);
    kn__drop(cb);
    return kn__record(KN_OP_where, out, (kn_tensor *[]){cond, a, b}, 3, NULL);
}

kn_tensor *kn_cast(kn_tensor *x, kn_dtype dt) {
    KN_CHECK("kn_cast", x);
    if ((unsigned)dt >= KN_DTYPE_COUNT) return kn__error("kn_cast: invalid dtype %d", (int)dt);
    kn_tensor *out = kn__alloc(x->shape, x->ndim, dt);
    if (out) kn__copy(out, x);
    return kn__record(KN_OP_cast, out, &x, 1, NULL);
}
