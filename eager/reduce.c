/* Eager reductions: sum, mean, max (amax), min (amin), var, logsumexp, argmax,
 * argmin.
 *
 * Layout. Every reduction is seen as x[O][R][K]: O and K are the kept dims
 * before and after the reduced ones, R the product of the reduced sizes, and
 * out[o][k] reduces x[o][.][k]. When x's memory is dense in an order that keeps
 * the kept dims in their logical order and the reduced dims next to each
 * other (any contiguous tensor reduced over one run of dims, a transposed
 * view, ...), x is read in place. Otherwise a contiguous copy with the reduced
 * dims moved last is made first (K = 1). Three kinds of kernels:
 *   rows     K == 1, R > SHORT_R: one contiguous run of R per output, summed
 *            in independent lanes that vectorize;
 *   columns  K > 1: tiles of up to KT adjacent outputs at once, vectorized
 *            across the outputs;
 *   short    K == 1, R <= SHORT_R: the column kernels again, with the outputs
 *            R elements apart, so one call serves many outputs.
 *
 * Determinism. R is cut into blocks whose size depends only on the shape,
 * never on the thread count. Each block gives a partial result, and the
 * partials of one output are combined in block order. The threads split
 * either tiles of outputs (many of them) or blocks (few outputs, long
 * reductions: the sum of 16M elements); both do the same arithmetic, so a
 * result is bitwise the same whatever kn_set_num_threads says.
 *
 * One pass over memory. var and logsumexp need two passes over the data
 * (mean then squared deviations; max then sum of exp(x - max)); both are made
 * within a block, which is still in cache, and blocks combine their
 * (count, mean, M2) with Chan's formula and their (max, sum) by rescaling.
 *
 * Accuracy. Row f32 sums add into 16 f32 lanes within a block of ROW_BLK
 * elements (clang vectorizes them to <16 x float>); the lanes and the blocks
 * are added in double. Squared deviations and column sums accumulate in
 * double. logsumexp sums kn_s_exp_nonpos_f32(x - max) like an f32 sum.
 *
 * Dtypes (PyTorch's rules): sum of i32, i64 or bool gives i64; max and min
 * keep any dtype, bool included; mean and var need f32 or f64 and reject
 * others, as PyTorch does; logsumexp of integer or bool input is computed in
 * f32 and returns f32, as PyTorch (>= 2.1) does with its default float dtype;
 * argmax and argmin take f32, f64, i32 and i64 (PyTorch has no bool kernel)
 * and return i64.
 *
 * Empty reductions (R == 0): sum gives 0, mean and var nan, logsumexp -inf;
 * max, min, argmax and argmin are errors, as in PyTorch. */
#include "../core/autograd.h"
#include "../core/scalar.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define KT 1024              /* outputs per column tile: 4 KiB rows of f32 */
#define ROW_BLK 4096         /* elements per block of a row */
#define COL_BLK 16384        /* elements per block of a column tile, */
#define COL_MIN_ROWS 64      /* but at least this many steps */
#define SHORT_R 16           /* K == 1 and R <= SHORT_R: short rows */
#define GRAIN (1 << 15)      /* elements per thread chunk, at least */

/* ---- per-block partial results ---- */
/* d: float value, sum, mean (var) or max (logsumexp); e: M2 (var) or sum of
 * exp (logsumexp); v: integer value or sum; i: index (arg ops) or count (var). */
typedef struct { double d, e; int64_t v, i; } acc_t;

/* One block: n steps along R starting at r0. x points to x[o][r0][k0]; step r
 * of output k is x[r * ld + k * ks], k < kw. Row kernels have kw == 1. */
typedef void (*blk_fn)(const char *x, int64_t n, int64_t ld, int64_t ks, int64_t kw,
                       acc_t *out, int64_t r0);

typedef enum { R_SUM, R_MEAN, R_MAX, R_MIN, R_VAR, R_LSE, R_ARGMAX, R_ARGMIN, R_COUNT } rop;

#define KERNEL(NAME)                                                              \
    static void NAME(const char *xp, int64_t n, int64_t ld, int64_t ks, int64_t kw, \
                     acc_t *out, int64_t r0)
#define UNUSED_ARGS (void)ld; (void)ks; (void)kw; (void)r0

/* NaN-propagating pick: v replaces m if it beats it or is NaN. A NaN m is
 * never replaced by a number (no comparison with it is true). */
#define FPICK(v, m, CMP) (((v) CMP (m)) || (v) != (v))

/* ---- row helpers: x[0..n) contiguous, n >= 1 ---- */

/* Sum of EXPR(v) over L lanes of AT (p: a parameter); lanes added in double. */
#define ROW_ACC(NAME, T, AT, L, EXPR)                                             \
    static inline double NAME(const T *restrict x, int64_t n, double p) {        \
        const float pf = (float)p;                                                \
        (void)pf;                                                                 \
        AT a[L] = {0};                                                            \
        int64_t i = 0;                                                            \
        for (; i + L <= n; i += L)                                                \
            for (int l = 0; l < L; l++) { T v = x[i + l]; a[l] += (EXPR); }       \
        if (i < n) { /* the tail: masked lanes add 0 */                           \
            T t[L];                                                               \
            for (int l = 0; l < L; l++) t[l] = i + l < n ? x[i + l] : 0;          \
            for (int l = 0; l < L; l++) {                                         \
                T v = t[l];                                                       \
                AT e = (EXPR);                                                    \
                a[l] += i + l < n ? e : 0;                                        \
            }                                                                     \
        }                                                                         \
        double s = 0;                                                             \
        for (int l = 0; l < L; l++) s += (double)a[l];                            \
        return s;                                                                 \
    }
#define SQ(e) ((e) * (e))
ROW_ACC(rsum_f32, float, float, 16, v)
ROW_ACC(rsum_f64, double, double, 8, v)
ROW_ACC(rsqdev_f32, float, double, 8, SQ((double)v - p))
ROW_ACC(rsqdev_f64, double, double, 8, SQ(v - p))
ROW_ACC(rexpsum_f32, float, float, 16, kn_s_exp_nonpos_f32(v - pf))
ROW_ACC(rexpsum_f64, double, double, 8, kn_s_exp_f64(v - p))

/* Extreme over L lanes, NaN-propagating. */
#define ROW_FEXT(NAME, T, L, CMP)                                                 \
    static inline T NAME(const T *restrict x, int64_t n) {                       \
        T m[L];                                                                   \
        for (int l = 0; l < L; l++) m[l] = x[0];                                  \
        int64_t i = 0;                                                            \
        for (; i + L <= n; i += L)                                                \
            for (int l = 0; l < L; l++) {                                         \
                T v = x[i + l];                                                   \
                m[l] = FPICK(v, m[l], CMP) ? v : m[l];                            \
            }                                                                     \
        if (i < n) /* the tail: masked lanes compare with themselves */           \
            for (int l = 0; l < L; l++) {                                         \
                T v = i + l < n ? x[i + l] : m[l];                                \
                m[l] = FPICK(v, m[l], CMP) ? v : m[l];                            \
            }                                                                     \
        T best = m[0];                                                            \
        for (int l = 1; l < L; l++) best = FPICK(m[l], best, CMP) ? m[l] : best;  \
        return best;                                                              \
    }
ROW_FEXT(rmax_f32, float, 16, >)
ROW_FEXT(rmax_f64, double, 8, >)
ROW_FEXT(rmin_f32, float, 16, <)
ROW_FEXT(rmin_f64, double, 8, <)

#define ROW_IEXT(NAME, T, CMP)                                                    \
    static inline T NAME(const T *restrict x, int64_t n) {                       \
        T best = x[0];                                                            \
        for (int64_t i = 1; i < n; i++) best = x[i] CMP best ? x[i] : best;      \
        return best;                                                              \
    }
ROW_IEXT(rmax_i32, int32_t, >)
ROW_IEXT(rmax_i64, int64_t, >)
ROW_IEXT(rmax_bool, uint8_t, >)
ROW_IEXT(rmin_i32, int32_t, <)
ROW_IEXT(rmin_i64, int64_t, <)
ROW_IEXT(rmin_bool, uint8_t, <)

/* ---- row kernels ---- */
#define ROW_SUM(SUF, T)                                                           \
    KERNEL(sum_row_##SUF) {                                                       \
        UNUSED_ARGS;                                                              \
        out->d = rsum_##SUF((const T *)xp, n, 0);                                 \
    }                                                                             \
    KERNEL(var_row_##SUF) {  /* mean, then squared deviations in cache */        \
        UNUSED_ARGS;                                                              \
        const T *x = (const T *)xp;                                               \
        double mean = rsum_##SUF(x, n, 0) / (double)n;                           \
        out->d = mean;                                                            \
        out->e = rsqdev_##SUF(x, n, mean);                                        \
        out->i = n;                                                               \
    }                                                                             \
    KERNEL(lse_row_##SUF) {  /* max, then sum of exp(x - max) in cache */        \
        UNUSED_ARGS;                                                              \
        const T *x = (const T *)xp;                                               \
        T m = rmax_##SUF(x, n);                                                   \
        out->d = m;                                                               \
        out->e = isfinite(m) ? rexpsum_##SUF(x, n, m) : 0;                        \
    }
ROW_SUM(f32, float)
ROW_SUM(f64, double)

/* Integer sums wrap like PyTorch's i64 (through unsigned: no UB). */
#define ROW_ISUM(SUF, T)                                                          \
    KERNEL(sum_row_##SUF) {                                                       \
        UNUSED_ARGS;                                                              \
        const T *restrict x = (const T *)xp;                                      \
        uint64_t s = 0;                                                           \
        for (int64_t i = 0; i < n; i++) s += (uint64_t)(int64_t)x[i];             \
        out->v = (int64_t)s;                                                      \
    }
ROW_ISUM(i32, int32_t)
ROW_ISUM(i64, int64_t)
ROW_ISUM(bool, uint8_t)

/* Extremes; arg forms find the first index holding the extreme (the first
 * NaN when it is NaN) in a second, cached pass. FIELD: d or v. */
#define ROW_EXT(SUF, T, FIELD, ISF)                                               \
    KERNEL(max_row_##SUF) { UNUSED_ARGS; out->FIELD = rmax_##SUF((const T *)xp, n); } \
    KERNEL(min_row_##SUF) { UNUSED_ARGS; out->FIELD = rmin_##SUF((const T *)xp, n); } \
    static inline void arg_row_##SUF(const T *x, int64_t n, T best, acc_t *out,   \
                                     int64_t r0) {                                \
        (void)n;  /* best is in x[0..n): the scans stop */                        \
        int64_t j = 0;                                                            \
        if (ISF && best != best) { while (x[j] == x[j]) j++; }                    \
        else { while (x[j] != best) j++; }                                        \
        out->FIELD = best;                                                        \
        out->i = r0 + j;                                                          \
    }                                                                             \
    KERNEL(argmax_row_##SUF) {                                                    \
        UNUSED_ARGS;                                                              \
        const T *x = (const T *)xp;                                               \
        arg_row_##SUF(x, n, rmax_##SUF(x, n), out, r0);                           \
    }                                                                             \
    KERNEL(argmin_row_##SUF) {                                                    \
        UNUSED_ARGS;                                                              \
        const T *x = (const T *)xp;                                               \
        arg_row_##SUF(x, n, rmin_##SUF(x, n), out, r0);                           \
    }
ROW_EXT(f32, float, d, 1)
ROW_EXT(f64, double, d, 1)
ROW_EXT(i32, int32_t, v, 0)
ROW_EXT(i64, int64_t, v, 0)
KERNEL(max_row_bool) { UNUSED_ARGS; out->v = rmax_bool((const uint8_t *)xp, n); }
KERNEL(min_row_bool) { UNUSED_ARGS; out->v = rmin_bool((const uint8_t *)xp, n); }

/* ---- column kernels: kw outputs side by side ---- */
/* Step r of output k is x[r * ld + k * ks]. ks == 1 (outputs adjacent in
 * memory) gets its own copy of the loop so it vectorizes across outputs;
 * ks == R serves short rows. */
#define COL_LOOP(T, FIRST, BODY)                                                  \
    if (ks == 1)                                                                  \
        for (int64_t r = FIRST; r < n; r++) {                                     \
            const T *restrict row = x + r * ld;                                   \
            for (int64_t k = 0; k < kw; k++) { T v = row[k]; BODY; }              \
        }                                                                         \
    else                                                                          \
        for (int64_t r = FIRST; r < n; r++) {                                     \
            const T *restrict row = x + r * ld;                                   \
            for (int64_t k = 0; k < kw; k++) { T v = row[k * ks]; BODY; }         \
        }

/* Extremes into m[] (ARG: with the step in idx[]). PICK(v, m): v replaces m. */
#define COL_EXT_LOOP(T, PICK, ARG)                                                \
    for (int64_t k = 0; k < kw; k++) { m[k] = x[k * ks]; idx[k] = 0; }            \
    COL_LOOP(T, 1, bool take = PICK(v, m[k]); m[k] = take ? v : m[k];             \
             if (ARG) idx[k] = take ? r : idx[k])

/* For arg ops a NaN m is kept (the first NaN wins); plain max keeps a NaN too. */
#define FMAX(v, m) ((m) == (m) && FPICK(v, m, >))
#define FMIN(v, m) ((m) == (m) && FPICK(v, m, <))
#define IMAX(v, m) ((v) > (m))
#define IMIN(v, m) ((v) < (m))

/* Adjacent outputs summed COL_REG at a time over all steps, so their
 * accumulators stay in registers (the same additions in the same order). */
#define COL_REG 32
#define COL_FLOAT(SUF, T)                                                         \
    KERNEL(sum_col_##SUF) {                                                       \
        (void)r0;                                                                 \
        const T *restrict x = (const T *)xp;                                      \
        double a[KT];                                                             \
        int64_t k0 = 0;                                                           \
        for (; ks == 1 && k0 + COL_REG <= kw; k0 += COL_REG) {                    \
            double acc[COL_REG] = {0};                                            \
            for (int64_t r = 0; r < n; r++)                                       \
                for (int k = 0; k < COL_REG; k++) acc[k] += x[r * ld + k0 + k];   \
            for (int k = 0; k < COL_REG; k++) out[k0 + k].d = acc[k];             \
        }                                                                         \
        if (k0 == kw) return;                                                     \
        x += k0;                                                                  \
        kw -= k0;                                                                 \
        out += k0;                                                                \
        for (int64_t k = 0; k < kw; k++) a[k] = 0;                                \
        COL_LOOP(T, 0, a[k] += v)                                                 \
        for (int64_t k = 0; k < kw; k++) out[k].d = a[k];                         \
    }                                                                             \
    KERNEL(var_col_##SUF) {                                                       \
        (void)r0;                                                                 \
        const T *restrict x = (const T *)xp;                                      \
        double a[KT], mu[KT];                                                     \
        for (int64_t k = 0; k < kw; k++) a[k] = 0;                                \
        COL_LOOP(T, 0, a[k] += v)                                                 \
        for (int64_t k = 0; k < kw; k++) { mu[k] = a[k] / (double)n; a[k] = 0; }  \
        COL_LOOP(T, 0, a[k] += SQ((double)v - mu[k]))                             \
        for (int64_t k = 0; k < kw; k++) out[k] = (acc_t){.d = mu[k], .e = a[k], .i = n}; \
    }                                                                             \
    KERNEL(lse_col_##SUF) {                                                       \
        (void)r0;                                                                 \
        const T *restrict x = (const T *)xp;                                      \
        T m[KT], mf[KT];                                                          \
        int64_t idx[KT];                                                          \
        double a[KT];                                                             \
        COL_EXT_LOOP(T, FMAX, 0)                                                  \
        for (int64_t k = 0; k < kw; k++) { mf[k] = isfinite(m[k]) ? m[k] : 0; a[k] = 0; } \
        COL_LOOP(T, 0, a[k] += (double)kn_s_exp_##SUF(v - mf[k]))                 \
        for (int64_t k = 0; k < kw; k++)                                          \
            out[k] = (acc_t){.d = m[k], .e = isfinite(m[k]) ? a[k] : 0};          \
    }
COL_FLOAT(f32, float)
COL_FLOAT(f64, double)

#define COL_ISUM(SUF, T)                                                          \
    KERNEL(sum_col_##SUF) {                                                       \
        (void)r0;                                                                 \
        const T *restrict x = (const T *)xp;                                      \
        uint64_t a[KT];                                                           \
        for (int64_t k = 0; k < kw; k++) a[k] = 0;                                \
        COL_LOOP(T, 0, a[k] += (uint64_t)(int64_t)v)                              \
        for (int64_t k = 0; k < kw; k++) out[k].v = (int64_t)a[k];                \
    }
COL_ISUM(i32, int32_t)
COL_ISUM(i64, int64_t)
COL_ISUM(bool, uint8_t)

#define COL_EXT(NAME, T, PICK, ARG, FIELD)                                        \
    KERNEL(NAME) {                                                                \
        const T *restrict x = (const T *)xp;                                      \
        T m[KT];                                                                  \
        int64_t idx[KT];                                                          \
        COL_EXT_LOOP(T, PICK, ARG)                                                \
        for (int64_t k = 0; k < kw; k++) {                                        \
            out[k].FIELD = m[k];                                                  \
            out[k].i = r0 + idx[k];                                               \
        }                                                                         \
    }
COL_EXT(max_col_f32, float, FMAX, 0, d)
COL_EXT(max_col_f64, double, FMAX, 0, d)
COL_EXT(min_col_f32, float, FMIN, 0, d)
COL_EXT(min_col_f64, double, FMIN, 0, d)
COL_EXT(max_col_i32, int32_t, IMAX, 0, v)
COL_EXT(max_col_i64, int64_t, IMAX, 0, v)
COL_EXT(max_col_bool, uint8_t, IMAX, 0, v)
COL_EXT(min_col_i32, int32_t, IMIN, 0, v)
COL_EXT(min_col_i64, int64_t, IMIN, 0, v)
COL_EXT(min_col_bool, uint8_t, IMIN, 0, v)
COL_EXT(argmax_col_f32, float, FMAX, 1, d)
COL_EXT(argmax_col_f64, double, FMAX, 1, d)
COL_EXT(argmin_col_f32, float, FMIN, 1, d)
COL_EXT(argmin_col_f64, double, FMIN, 1, d)
COL_EXT(argmax_col_i32, int32_t, IMAX, 1, v)
COL_EXT(argmax_col_i64, int64_t, IMAX, 1, v)
COL_EXT(argmin_col_i32, int32_t, IMIN, 1, v)
COL_EXT(argmin_col_i64, int64_t, IMIN, 1, v)

/* [op][dtype] (mean uses sum's kernels); NULL: not supported. Order: f32,
 * f64, i32, i64, bool. */
#define ALL5(P, S) {P##_##S##_f32, P##_##S##_f64, P##_##S##_i32, P##_##S##_i64, P##_##S##_bool}
#define NUM4(P, S) {P##_##S##_f32, P##_##S##_f64, P##_##S##_i32, P##_##S##_i64, NULL}
#define FLT2(P, S) {P##_##S##_f32, P##_##S##_f64, NULL, NULL, NULL}
#define TABLE(S)                                                                  \
    {[R_SUM] = ALL5(sum, S), [R_MEAN] = FLT2(sum, S), [R_MAX] = ALL5(max, S),    \
     [R_MIN] = ALL5(min, S), [R_VAR] = FLT2(var, S), [R_LSE] = FLT2(lse, S),     \
     [R_ARGMAX] = NUM4(argmax, S), [R_ARGMIN] = NUM4(argmin, S)}
static const blk_fn row_k[R_COUNT][KN_DTYPE_COUNT] = TABLE(row);
static const blk_fn col_k[R_COUNT][KN_DTYPE_COUNT] = TABLE(col);

/* a = a then p, p covering the elements after a's. */
static void combine(rop op, bool isf, acc_t *a, const acc_t *p) {
    switch (op) {
    case R_SUM: case R_MEAN:
        if (isf) a->d += p->d;
        else a->v = (int64_t)((uint64_t)a->v + (uint64_t)p->v);
        break;
    case R_MAX: case R_ARGMAX:
        if (isf ? FMAX(p->d, a->d) : p->v > a->v) *a = *p;
        break;
    case R_MIN: case R_ARGMIN:
        if (isf ? FMIN(p->d, a->d) : p->v < a->v) *a = *p;
        break;
    case R_VAR: {  /* Chan et al.: merge (count, mean, M2) */
        double n1 = (double)a->i, n2 = (double)p->i, n = n1 + n2;
        double delta = p->d - a->d;
        a->d += delta * (n2 / n);
        a->e += p->e + delta * delta * (n1 * n2 / n);
        a->i += p->i;
        break;
    }
    case R_LSE: {  /* merge (max, sum of exp(x - max)) */
        double m1 = a->d, m2 = p->d;
        if (m1 != m1 || m2 != m2) {
            a->d = NAN;
            break;
        }
        double m = m1 > m2 ? m1 : m2;
        a->e = isinf(m) ? 0 : a->e * kn_s_exp_f64(m1 - m) + p->e * kn_s_exp_f64(m2 - m);
        a->d = m;
        break;
    }
    default: break;
    }
}

/* ---- running a reduction ---- */
static const char *const op_names[] = {"kn_sum", "kn_mean", "kn_max", "kn_min", "kn_var",
                                       "kn_logsumexp", "kn_argmax", "kn_argmin"};

typedef struct {
    rop op;
    bool isf;
    blk_fn fn;
    const char *x;
    int64_t esz;
    int64_t O, R, K;
    int64_t so, sr, sk;         /* element strides of x along o, r and k */
    int64_t blk, nb;            /* steps along R per block; blocks */
    int64_t kt, ntiles;         /* outputs per tile; tiles per o */
    int correction;
    kn_dtype odt;
    char *out;
    acc_t *part;                /* blocks mode: O * nb * K partials */
} job;

static void store(kn_dtype dt, char *p, double d, int64_t v) {
    switch (dt) {
    case KN_F32: *(float *)p = (float)d; break;
    case KN_F64: *(double *)p = d; break;
    case KN_I32: *(int32_t *)p = (int32_t)v; break;
    case KN_I64: *(int64_t *)p = v; break;
    default: *(uint8_t *)p = v != 0; break;
    }
}

/* Writes output e from its combined state. */
static void finish(const job *j, int64_t e, const acc_t *s) {
    char *p = j->out + e * (int64_t)kn_dtype_size(j->odt);
    switch (j->op) {
    case R_SUM: case R_MAX: case R_MIN: store(j->odt, p, s->d, s->v); break;
    case R_MEAN: store(j->odt, p, s->d / (double)j->R, 0); break;
    case R_VAR: {  /* PyTorch: divide by max(0, N - correction); 0 gives inf or nan */
        double div = j->R > j->correction ? (double)(j->R - j->correction) : 0.0;
        store(j->odt, p, s->e / div, 0);
        break;
    }
    case R_LSE:  /* a max of nan, +inf or -inf is the result */
        store(j->odt, p, isfinite(s->d) ? s->d + log(s->e) : s->d, 0);
        break;
    default: store(KN_I64, p, 0, s->i); break;  /* argmax, argmin */
    }
}

static const char *at(const job *j, int64_t o, int64_t r, int64_t k) {
    return j->x + (o * j->so + r * j->sr + k * j->sk) * j->esz;
}

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* Tiles mode: one item = one tile of outputs over all of R, blocks combined
 * in order as they come. */
static void tiles_fn(void *ctx, int64_t begin, int64_t end) {
    const job *j = ctx;
    acc_t st[KT], p[KT];  /* 64 KiB of stack; the kernels add up to 40 KiB */
    for (int64_t it = begin; it < end; it++) {
        int64_t o = it / j->ntiles, k0 = it % j->ntiles * j->kt;
        int64_t kw = min64(j->K - k0, j->kt);
        for (int64_t b = 0; b < j->nb; b++) {
            int64_t r0 = b * j->blk, n = min64(j->R - r0, j->blk);
            j->fn(at(j, o, r0, k0), n, j->sr, j->sk, kw, b ? p : st, r0);
            if (b)
                for (int64_t k = 0; k < kw; k++) combine(j->op, j->isf, &st[k], &p[k]);
        }
        for (int64_t k = 0; k < kw; k++) finish(j, o * j->K + k0 + k, &st[k]);
    }
}

/* Blocks mode: one item = one block of one tile; partials combined after. */
static void blocks_fn(void *ctx, int64_t begin, int64_t end) {
    const job *j = ctx;
    for (int64_t it = begin; it < end; it++) {
        int64_t b = it % j->nb, t = it / j->nb % j->ntiles, o = it / j->nb / j->ntiles;
        int64_t k0 = t * j->kt, kw = min64(j->K - k0, j->kt);
        int64_t r0 = b * j->blk, n = min64(j->R - r0, j->blk);
        j->fn(at(j, o, r0, k0), n, j->sr, j->sk, kw, j->part + (o * j->nb + b) * j->K + k0, r0);
    }
}

static int run_job(job *j, kn_dtype dt) {
    bool row = j->K == 1 && j->R > SHORT_R;
    if (row) {                     /* one contiguous run of R per output */
        j->so = j->R;
        j->sr = j->sk = 1;
    } else if (j->K > 1) {         /* outputs side by side */
        j->so = j->R * j->K;
        j->sr = j->K;
        j->sk = 1;
    } else {                       /* short rows: many outputs per call, R apart */
        j->K = j->O;
        j->O = 1;
        j->so = 0;
        j->sr = 1;
        j->sk = j->R;
    }
    j->fn = (row ? row_k : col_k)[j->op][dt];
    j->kt = row ? 1 : KT;
    j->ntiles = (j->K + j->kt - 1) / j->kt;
    int64_t kw = min64(j->K, j->kt);
    j->blk = row ? ROW_BLK : COL_BLK / kw > COL_MIN_ROWS ? COL_BLK / kw : COL_MIN_ROWS;
    j->nb = (j->R + j->blk - 1) / j->blk;
    int64_t tiles = j->O * j->ntiles;
    /* Either mode gives the same bits; blocks mode only adds parallelism. */
    if (j->nb == 1 || tiles >= 4 * (int64_t)kn_get_num_threads()) {
        int64_t per = j->R * kw;
        kn__parallel_for(tiles, GRAIN / per > 0 ? GRAIN / per : 1, tiles_fn, j);
        return 0;
    }
    int64_t nout = j->O * j->K;
    j->part = malloc((size_t)(nout * j->nb) * sizeof *j->part);
    if (!j->part) {
        kn__error("%s: out of memory for partial results", op_names[j->op]);
        return -1;
    }
    int64_t per = j->blk * kw;
    kn__parallel_for(tiles * j->nb, GRAIN / per > 0 ? GRAIN / per : 1, blocks_fn, j);
    for (int64_t o = 0; o < j->O; o++)
        for (int64_t k = 0; k < j->K; k++) {
            acc_t s = j->part[o * j->nb * j->K + k];
            for (int64_t b = 1; b < j->nb; b++)
                combine(j->op, j->isf, &s, &j->part[(o * j->nb + b) * j->K + k]);
            finish(j, o * j->K + k, &s);
        }
    free(j->part);
    return 0;
}

/* ---- dims, layout and the entry point ---- */

/* Fills red[] from the dim list; false (error set) on a bad or repeated dim. */
static bool parse_dims(const char *op, const kn_tensor *x, const int *dims, int ndims,
                       bool red[KN_MAX_DIMS]) {
    memset(red, 0, KN_MAX_DIMS * sizeof *red);
    if (ndims < 0) {
        kn__error("%s: ndims is %d (expected >= 0)", op, ndims);
        return false;
    }
    if (!dims || ndims == 0) {
        for (int d = 0; d < x->ndim; d++) red[d] = true;
        return true;
    }
    bool seen[KN_MAX_DIMS] = {false};
    for (int i = 0; i < ndims; i++) {
        int d = kn__dim(op, dims[i], x->ndim);
        if (d < 0) return false;
        if (seen[d]) {
            kn__error("%s: dim %d appears more than once in the dim list", op, dims[i]);
            return false;
        }
        seen[d] = true;
        if (x->ndim > 0) red[d] = true;
    }
    return true;
}

/* x's memory as [O][R][K], if dense in an order that keeps the kept dims in
 * logical order and the reduced dims together. */
static bool dense_layout(const kn_tensor *x, const bool *red, int64_t *O, int64_t *R, int64_t *K) {
    int ord[KN_MAX_DIMS], n = 0;
    for (int d = 0; d < x->ndim; d++)
        if (x->shape[d] != 1) ord[n++] = d;
    for (int i = 1; i < n; i++)  /* insertion sort by stride, descending */
        for (int k = i; k > 0 && x->strides[ord[k - 1]] < x->strides[ord[k]]; k--) {
            int t = ord[k];
            ord[k] = ord[k - 1];
            ord[k - 1] = t;
        }
    int64_t expect = 1;
    for (int i = n - 1; i >= 0; i--) {
        if (x->strides[ord[i]] != expect) return false;
        expect *= x->shape[ord[i]];
    }
    int first = -1, last = -1, prev_kept = -1;
    for (int i = 0; i < n; i++) {
        if (red[ord[i]]) {
            if (first < 0) first = i;
            else if (last != i - 1) return false;
            last = i;
        } else {
            if (ord[i] < prev_kept) return false;
            prev_kept = ord[i];
        }
    }
    *O = *R = *K = 1;
    for (int i = 0; i < n; i++) {
        int64_t s = x->shape[ord[i]];
        if (first < 0 || i < first) *O *= s;
        else if (i <= last) *R *= s;
        else *K *= s;
    }
    return true;
}

/* A contiguous copy of x (as dtype dt) with the reduced dims moved last. */
static kn_tensor *reduced_last(kn_tensor *x, const bool *red, kn_dtype dt) {
    int64_t shape[KN_MAX_DIMS], strides[KN_MAX_DIMS];
    int n = 0;
    for (int pass = 0; pass < 2; pass++)
        for (int d = 0; d < x->ndim; d++)
            if (red[d] == (pass == 1)) {
                shape[n] = x->shape[d];
                strides[n++] = x->strides[d];
            }
    kn_tensor *v = kn__view(x, shape, strides, n, x->offset);
    kn_tensor *c = v ? kn__alloc(shape, n, dt) : NULL;
    if (c) kn__copy(c, v);
    kn__drop(v);
    return c;
}

/* The autograd node's parameters (core/derivatives.c reads them): p.i[0] =
 * mask of reduced input dims (bit d), p.i[1] = keepdim, p.i[2] = correction
 * (var). argmax and argmin have no derivative rule. */
static kn_tensor *record(rop op, kn_tensor *out, kn_tensor *x, const bool *red, bool keepdim,
                         int correction) {
    static const kn_op ids[] = {KN_OP_sum, KN_OP_mean, KN_OP_max, KN_OP_min, KN_OP_var,
                                KN_OP_logsumexp, KN_OP_argmax, KN_OP_argmin};
    kn_params p;
    memset(&p, 0, sizeof p);
    for (int d = 0; d < KN_MAX_DIMS; d++)
        if (red[d]) p.i[0] |= (int64_t)1 << d;
    p.i[1] = keepdim;
    p.i[2] = correction;
    return kn__record(ids[op], out, &x, 1, &p);
}

static kn_tensor *reduce(rop op, kn_tensor *x, const int *dims, int ndims, bool keepdim,
                         int correction) {
    const char *name = op_names[op];
    KN_CHECK(name, x);
    kn_dtype dt = x->dtype;
    bool is_arg = op == R_ARGMAX || op == R_ARGMIN;
    if ((unsigned)dt >= KN_DTYPE_COUNT) return kn__error("%s: invalid dtype %d", name, (int)dt);
    if ((op == R_MEAN || op == R_VAR) && !kn__is_float(dt))
        return kn__error("%s: dtype %s is not supported (expected f32 or f64; cast "
                         "integer input first, as PyTorch requires)", name, kn_dtype_name(dt));
    if (is_arg && dt == KN_BOOL)
        return kn__error("%s: dtype bool is not supported (expected f32, f64, i32 or i64)", name);
    bool red[KN_MAX_DIMS];
    if (!parse_dims(name, x, dims, ndims, red)) return NULL;

    int64_t oshape[KN_MAX_DIMS], R = 1, nout = 1;
    int ond = 0;
    for (int d = 0; d < x->ndim; d++) {
        if (red[d]) {
            R *= x->shape[d];
            if (keepdim) oshape[ond++] = 1;
        } else {
            oshape[ond++] = x->shape[d];
            nout *= x->shape[d];
        }
    }
    if (R == 0 && (op == R_MAX || op == R_MIN || is_arg)) {
        char b[KN_SHAPE_BUF];
        return kn__error("%s: cannot reduce an empty dim: input of shape %s has 0 elements "
                         "along the reduced dims (the result is undefined)",
                         name, kn__shape_str(x->shape, x->ndim, b));
    }
    /* logsumexp of integers or bools: computed in f32 (PyTorch's default float). */
    kn_dtype cdt = op == R_LSE && !kn__is_float(dt) ? KN_F32 : dt;
    kn_dtype odt = is_arg ? KN_I64 : op == R_SUM && !kn__is_float(dt) ? KN_I64 : cdt;
    kn_tensor *out = kn__alloc(oshape, ond, odt);
    if (!out) return NULL;
    if (nout > 0 && R == 0) {  /* sum 0, mean and var nan, logsumexp -inf */
        double v = op == R_SUM ? 0 : op == R_LSE ? -INFINITY : NAN;
        for (int64_t e = 0; e < nout; e++)
            store(odt, kn__ptr(out) + e * (int64_t)kn_dtype_size(odt), v, 0);
    }
    if (nout == 0 || R == 0) return record(op, out, x, red, keepdim, correction);

    kn_tensor *src = NULL;
    int64_t O = nout, K = 1;
    if (cdt != dt || !dense_layout(x, red, &O, &R, &K)) {
        src = reduced_last(x, red, cdt);
        if (!src) {
            kn__drop(out);
            return NULL;
        }
        O = nout;
        K = 1;
    }
    const kn_tensor *in = src ? src : x;
    job j = {
        .op = op, .isf = kn__is_float(cdt), .x = kn__ptr(in),
        .esz = (int64_t)kn_dtype_size(cdt), .O = O, .R = R, .K = K,
        .correction = correction, .odt = odt, .out = kn__ptr(out),
    };
    int rc = run_job(&j, cdt);
    kn__drop(src);
    if (rc != 0) {
        kn__drop(out);
        return NULL;
    }
    return record(op, out, x, red, keepdim, correction);
}

kn_tensor *kn_sum(kn_tensor *x, const int *dims, int ndims, bool keepdim) {
    return reduce(R_SUM, x, dims, ndims, keepdim, 0);
}
kn_tensor *kn_mean(kn_tensor *x, const int *dims, int ndims, bool keepdim) {
    return reduce(R_MEAN, x, dims, ndims, keepdim, 0);
}
kn_tensor *kn_max(kn_tensor *x, const int *dims, int ndims, bool keepdim) {
    return reduce(R_MAX, x, dims, ndims, keepdim, 0);
}
kn_tensor *kn_min(kn_tensor *x, const int *dims, int ndims, bool keepdim) {
    return reduce(R_MIN, x, dims, ndims, keepdim, 0);
}
kn_tensor *kn_var(kn_tensor *x, const int *dims, int ndims, int correction, bool keepdim) {
    return reduce(R_VAR, x, dims, ndims, keepdim, correction);
}
kn_tensor *kn_logsumexp(kn_tensor *x, const int *dims, int ndims, bool keepdim) {
    return reduce(R_LSE, x, dims, ndims, keepdim, 0);
}
kn_tensor *kn_argmax(kn_tensor *x, int dim, bool keepdim) {
    return reduce(R_ARGMAX, x, &dim, 1, keepdim, 0);
}
kn_tensor *kn_argmin(kn_tensor *x, int dim, bool keepdim) {
    return reduce(R_ARGMIN, x, &dim, 1, keepdim, 0);
}
