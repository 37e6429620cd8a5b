/* Eager nn primitives: matmul and linear (one gemm per matrix, strided views
 * handed to the gemm as they are), softmax, log_softmax and layer_norm. Each
 * records its autograd node; the rules are in core/derivatives.c. */
#include "../core/autograd.h"
#include "../core/scalar.h"
#include "../backends/cpu/onednn.h"
#include <math.h>
#include <string.h>

/* x as a dense tensor of dtype dt, or x itself when it already is one: a
 * temporary either way, for kn__drop. */
static kn_tensor *dense(kn_tensor *x, kn_dtype dt) {
    if (x->dtype == dt && kn_is_contiguous(x)) return kn__ret(x);
    kn_tensor *d = kn__alloc(x->shape, x->ndim, dt);
    if (d) kn__copy(d, x);
    return d;
}

/* ---- matmul and linear ---- */

/* One side of a product: batch dims, then a rows x cols matrix that the gemm
 * reads row-major (trans false) or column-major (trans true) with stride ld. */
typedef struct {
    kn_tensor *t;  /* temporary: the argument itself, or a converted copy */
    int nb;
    int64_t bshape[KN_MAX_DIMS], bstride[KN_MAX_DIMS];
    int64_t rows, cols, ld;
    bool trans;
} operand;

/* Fills o from o->t; a 1-D tensor is a row (as_row) or a column vector.
 * False when the matrix is neither row- nor column-major (stride-0 rows,
 * overlapping or negative strides, both strides > 1). */
static bool describe(operand *o, bool as_row) {
    const kn_tensor *t = o->t;
    int64_t rs, cs;
    if (t->ndim == 1) {
        o->nb = 0;
        o->rows = as_row ? 1 : t->shape[0];
        o->cols = as_row ? t->shape[0] : 1;
        rs = as_row ? 0 : t->strides[0];
        cs = as_row ? t->strides[0] : 0;
    } else {
        int nb = o->nb = t->ndim - 2;
        memcpy(o->bshape, t->shape, (size_t)nb * sizeof(int64_t));
        memcpy(o->bstride, t->strides, (size_t)nb * sizeof(int64_t));
        o->rows = t->shape[nb];
        o->cols = t->shape[nb + 1];
        rs = t->strides[nb];
        cs = t->strides[nb + 1];
    }
    int64_t R = o->rows, C = o->cols;
    int64_t minr = C > 1 ? C : 1, minc = R > 1 ? R : 1;  /* smallest valid ld */
    o->trans = false;
    o->ld = minr;
    if (R == 0 || C == 0) return true;  /* never read */
    if ((cs == 1 || C == 1) && (R == 1 || rs >= minr)) {
        if (R > 1) o->ld = rs;
        return true;
    }
    if ((rs == 1 || R == 1) && (C == 1 || cs >= minc)) {
        o->trans = true;
        o->ld = C > 1 ? cs : minc;
        return true;
    }
    return false;
}

/* o from x converted to dt; copied dense only when the gemm cannot read it. */
static bool prepare(operand *o, kn_tensor *x, kn_dtype dt, bool as_row) {
    o->t = x->dtype == dt ? kn__ret(x) : dense(x, dt);
    if (!o->t) return false;
    if (describe(o, as_row)) return true;
    kn_tensor *d = dense(o->t, dt);
    kn__drop(o->t);
    o->t = d;
    return d && describe(o, as_row);
}

/* o's batch strides over the broadcast batch shape (0 where broadcast). */
static void batch_strides(const operand *o, int nb, int64_t *st) {
    for (int d = 0; d < nb; d++) {
        int j = d - (nb - o->nb);
        st[d] = j < 0 || o->bshape[j] == 1 ? 0 : o->bstride[j];
    }
}

static int gemm(const char *op, kn_dtype dt, const operand *a, const operand *b, int64_t M,
                int64_t N, int64_t K, char *A, char *B, char *C, bool acc) {
    switch (dt) {
    case KN_F32:
        return kn__sgemm(op, a->trans, b->trans, M, N, K, (const float *)A, a->ld,
                         (const float *)B, b->ld, (float *)C, N, acc ? 1.0f : 0.0f);
    case KN_F64:
        return kn__dgemm(op, a->trans, b->trans, M, N, K, (const double *)A, a->ld,
                         (const double *)B, b->ld, (double *)C, N, acc ? 1.0 : 0.0);
    case KN_I32:
        return kn__gemm_i32(op, a->trans, b->trans, M, N, K, (const int32_t *)A, a->ld,
                            (const int32_t *)B, b->ld, (int32_t *)C, N, acc);
    case KN_I64:
        return kn__gemm_i64(op, a->trans, b->trans, M, N, K, (const int64_t *)A, a->ld,
                            (const int64_t *)B, b->ld, (int64_t *)C, N, acc);
    default:
        kn__error("%s: dtype %s is not supported", op, kn_dtype_name(dt));
        return -1;
    }
}

/* out[batch] = a[batch] @ b[batch] (+= when acc) over the broadcast batch. */
static int run_batches(const char *op, kn_dtype dt, const operand *a, const operand *b,
                       const int64_t *bshape, int nb, kn_tensor *out, bool acc) {
    int64_t M = a->rows, N = b->cols, K = a->cols, nbatch = kn__numel(bshape, nb);
    if (nbatch == 0 || M == 0 || N == 0) return 0;
    int64_t sa[KN_MAX_DIMS], sb[KN_MAX_DIMS];
    batch_strides(a, nb, sa);
    batch_strides(b, nb, sb);
    int64_t esz = (int64_t)kn_dtype_size(dt);
    char *A = kn__ptr(a->t), *B = kn__ptr(b->t), *C = kn__ptr(out);
    /* One b for every batch and a's matrices stacked row after row (x @ w
     * with x [B,T,K]): a single gemm with nbatch * M rows. */
    bool fold = !a->trans;
    int64_t next = a->ld * M;
    for (int d = nb - 1; d >= 0 && fold; d--) {
        if (bshape[d] == 1) continue;
        fold = sb[d] == 0 && sa[d] == next;
        next *= bshape[d];
    }
    if (fold) return gemm(op, dt, a, b, nbatch * M, N, K, A, B, C, acc);
    int64_t idx[KN_MAX_DIMS] = {0};
    for (int64_t i = 0; i < nbatch; i++) {
        int64_t oa = 0, ob = 0;
        for (int d = 0; d < nb; d++) {
            oa += idx[d] * sa[d];
            ob += idx[d] * sb[d];
        }
        if (gemm(op, dt, a, b, M, N, K, A + oa * esz, B + ob * esz, C + i * M * N * esz, acc))
            return -1;
        for (int d = nb - 1; d >= 0 && ++idx[d] == bshape[d]; d--) idx[d] = 0;
    }
    return 0;
}

/* torch.matmul semantics, plus an optional bias [N] added to every row.
 * Messages show ys's shape for y (kn_linear passes w, not its view wT). */
static kn_tensor *matmul_impl(const char *op, kn_tensor *x, kn_tensor *y, kn_tensor *bias,
                              const kn_tensor *ys) {
    char s0[KN_SHAPE_BUF], s1[KN_SHAPE_BUF];
    if (x->ndim == 0 || y->ndim == 0)
        return kn__error("%s: both arguments need at least 1 dim (got shapes %s and %s)", op,
                         kn__shape_str(x->shape, x->ndim, s0),
                         kn__shape_str(ys->shape, ys->ndim, s1));
    kn_tensor *ts[3] = {x, y, bias};
    kn_dtype dt = kn__promote(ts, bias ? 3 : 2);
    if (dt == KN_BOOL)
        return kn__error("%s: dtype bool is not supported (cast to a number dtype first)", op);
    int64_t K = x->shape[x->ndim - 1], Ky = y->shape[y->ndim == 1 ? 0 : y->ndim - 2];
    if (K != Ky)
        return kn__error("%s: shapes %s and %s cannot be multiplied (%lld != %lld)", op,
                         kn__shape_str(x->shape, x->ndim, s0),
                         kn__shape_str(ys->shape, ys->ndim, s1), (long long)K, (long long)Ky);
    int nbx = x->ndim > 2 ? x->ndim - 2 : 0, nby = y->ndim > 2 ? y->ndim - 2 : 0, nb;
    int64_t shape[KN_MAX_DIMS];
    if (!kn__broadcast_shape(x->shape, nbx, y->shape, nby, shape, &nb))
        return kn__error("%s: batch dims of shapes %s and %s cannot be broadcast", op,
                         kn__shape_str(x->shape, x->ndim, s0),
                         kn__shape_str(ys->shape, ys->ndim, s1));
    operand a = {0}, b = {0};
    kn_tensor *out = NULL, *bd = NULL;
    if (!prepare(&a, x, dt, true) || !prepare(&b, y, dt, false)) goto done;
    int on = nb;  /* 1-D operands lose their added dim again */
    if (x->ndim > 1) shape[on++] = a.rows;
    if (y->ndim > 1) shape[on++] = b.cols;
    if (!(out = kn__alloc(shape, on, dt))) goto done;
    int64_t N = b.cols, rows = N ? kn__numel(shape, on) / N : 0;
    if (bias && rows) {  /* start every row at the bias, then accumulate */
        if (!(bd = dense(bias, dt))) goto fail;
        size_t row = (size_t)N * kn_dtype_size(dt);
        for (int64_t r = 0; r < rows; r++) memcpy(kn__ptr(out) + r * row, kn__ptr(bd), row);
    }
    if (run_batches(op, dt, &a, &b, shape, nb, out, bd != NULL) == 0) goto done;
fail:
    kn__drop(out);
    out = NULL;
done:
    kn__drop(bd);
    kn__drop(a.t);
    kn__drop(b.t);
    return out;
}

kn_tensor *kn_matmul(kn_tensor *a, kn_tensor *b) {
    KN_CHECK("kn_matmul", a);
    KN_CHECK("kn_matmul", b);
    kn_tensor *out = matmul_impl("kn_matmul", a, b, NULL, b);
    return kn__record(KN_OP_matmul, out, (kn_tensor *[]){a, b}, 2, NULL);
}

kn_tensor *kn_linear(kn_tensor *x, kn_tensor *w, kn_tensor *b) {
    KN_CHECK("kn_linear", x);
    KN_CHECK("kn_linear", w);
    char s0[KN_SHAPE_BUF], s1[KN_SHAPE_BUF];
    if (w->ndim != 2)
        return kn__error("kn_linear: weight must be 2-D [out_features,in_features] (got shape %s)",
                         kn__shape_str(w->shape, w->ndim, s0));
    if (b && (b->ndim != 1 || b->shape[0] != w->shape[0]))
        return kn__error("kn_linear: bias shape %s does not match [%lld] (weight %s)",
                         kn__shape_str(b->shape, b->ndim, s0), (long long)w->shape[0],
                         kn__shape_str(w->shape, w->ndim, s1));
    if (x->ndim > 0 && x->shape[x->ndim - 1] != w->shape[1])
        return kn__error("kn_linear: shapes %s and %s cannot be multiplied (%lld != %lld)",
                         kn__shape_str(x->shape, x->ndim, s0), kn__shape_str(w->shape, 2, s1),
                         (long long)x->shape[x->ndim - 1], (long long)w->shape[1]);
    /* w viewed as [in,out]: the gemm reads it transposed, no copy. */
    int64_t shape[2] = {w->shape[1], w->shape[0]}, strides[2] = {w->strides[1], w->strides[0]};
    kn_tensor *wt = kn__view(w, shape, strides, 2, w->offset);
    if (!wt) return NULL;
    kn_tensor *y = matmul_impl("kn_linear", x, wt, b, w);
    kn__drop(wt);
    return kn__record(KN_OP_linear, y, (kn_tensor *[]){x, w, b}, 3, NULL);
}

/* relu(kn_linear(x, w, b)) as one oneDNN matmul with the bias and the relu
 * fused (the node of a plan's epilogue pass, trace/passes.c). The relu comes
 * from oneDNN: it may give -0 where kn_relu gives +0. */
kn_tensor *kn__linear_relu(kn_tensor *x, kn_tensor *w, kn_tensor *b) {
    KN_CHECK("kn_linear_relu", x);
    KN_CHECK("kn_linear_relu", w);
    char s0[KN_SHAPE_BUF], s1[KN_SHAPE_BUF];
    kn_tensor *in[3] = {x, w, b};
    if (kn__needs_grad(in, 3))
        return kn__error("kn_linear_relu: the fused op has no derivative and an input requires grad "
                         "with grad mode on (a plan fuses it only for values that need no gradient; "
                         "use kn_relu(kn_linear(x, w, b)) where gradients are needed)");
    if (x->dtype != KN_F32 || w->dtype != KN_F32 || (b && b->dtype != KN_F32))
        return kn__error("kn_linear_relu: f32 only (got %s, %s, %s)", kn_dtype_name(x->dtype),
                         kn_dtype_name(w->dtype), b ? kn_dtype_name(b->dtype) : "no bias");
    if (w->ndim != 2 || x->ndim == 0 || x->shape[x->ndim - 1] != w->shape[1] ||
        (b && (b->ndim != 1 || b->shape[0] != w->shape[0])))
        return kn__error("kn_linear_relu: shapes %s and %s%s do not fit [...,K] @ [N,K]^T + [N]",
                         kn__shape_str(x->shape, x->ndim, s0), kn__shape_str(w->shape, w->ndim, s1),
                         b ? " with a bias" : "");
    int64_t K = w->shape[1], N = w->shape[0], M = K ? kn__tnumel(x) / K : 0;
    int64_t shape[KN_MAX_DIMS];
    memcpy(shape, x->shape, (size_t)x->ndim * sizeof *shape);
    shape[x->ndim - 1] = N;
    /* oneDNN reads x as rows of K at a row stride, and w row- or column-major. */
    int64_t ldx = K, w_rs = K, w_cs = 1;
    kn_tensor *xd, *wd, *bd = b ? dense(b, KN_F32) : NULL;
    if (kn_is_contiguous(x)) xd = kn__ret(x);
    else if (x->ndim == 2 && x->strides[1] == 1 && x->strides[0] >= K) xd = kn__ret(x), ldx = x->strides[0];
    else xd = dense(x, KN_F32);
    if (kn_is_contiguous(w)) wd = kn__ret(w);
    else if (w->strides[0] == 1 && w->strides[1] >= N) wd = kn__ret(w), w_rs = 1, w_cs = w->strides[1];
    else wd = dense(w, KN_F32);
    kn_tensor *out = kn__alloc(shape, x->ndim, KN_F32);
    if (!xd || !wd || (b && !bd) || !out) goto fail;
    if (kn__linear_f32("kn_linear_relu", M, N, K, (const float *)kn__ptr(xd), ldx, (const float *)kn__ptr(wd),
                       w_rs, w_cs, bd ? (const float *)kn__ptr(bd) : NULL, (float *)kn__ptr(out), KN_ACT_RELU) == 0)
        goto done;
fail:
    kn__drop(out);
    out = NULL;
done:
    kn__drop(xd);
    kn__drop(wd);
    kn__drop(bd);
    return kn__record(KN_OP_linear_relu, out, in, 3, NULL);
}

/* ---- softmax and log_softmax ---- */
/* x is seen as [outer, L, inner] with softmax over L. Rows (inner == 1) are
 * contiguous; otherwise a tile of up to MAX_COLS columns is processed at once,
 * walking its rows front to back so every pass streams unit-stride memory.
 * A row whose max is not finite (all -inf, a +inf or a NaN) is all NaN, as
 * in PyTorch. */
#define LANES 16
#define MAX_COLS 1024

typedef struct {
    const char *x;
    char *y;
    int64_t L, inner, cols, tiles;  /* column kernel: tile width, tiles per outer */
    bool log;
} sm_job;

#define SOFTMAX_KERNELS(T, SFX, EXP, LOG)                                         \
    /* NaN-propagating max of n values: NaN > m is false, so test v != v. */     \
    static T row_max_##SFX(const T *restrict x, int64_t n) {                      \
        T m[LANES], r = -INFINITY;                                                \
        for (int l = 0; l < LANES; l++) m[l] = -INFINITY;                         \
        int64_t i = 0;                                                            \
        for (; i + LANES <= n; i += LANES)                                        \
            for (int l = 0; l < LANES; l++) {                                     \
                T v = x[i + l];                                                   \
                m[l] = v > m[l] || v != v ? v : m[l];                             \
            }                                                                     \
        for (; i < n; i++) r = x[i] > r || x[i] != x[i] ? x[i] : r;               \
        for (int l = 0; l < LANES; l++) r = m[l] > r || m[l] != m[l] ? m[l] : r;  \
        return r;                                                                 \
    }                                                                             \
    /* Sum of exp(x - m); also stores the terms into y when y is given. */       \
    static T row_expsum_##SFX(const T *restrict x, T *restrict y, int64_t n, T m) { \
        T s[LANES] = {0}, r = 0;                                                  \
        int64_t i = 0;                                                            \
        if (y) {                                                                  \
            for (; i + LANES <= n; i += LANES)                                    \
                for (int l = 0; l < LANES; l++) {                                 \
                    T e = EXP(x[i + l] - m);                                      \
                    y[i + l] = e;                                                 \
                    s[l] += e;                                                    \
                }                                                                 \
            for (; i < n; i++) r += y[i] = EXP(x[i] - m);                         \
        } else {                                                                  \
            for (; i + LANES <= n; i += LANES)                                    \
                for (int l = 0; l < LANES; l++) s[l] += EXP(x[i + l] - m);        \
            for (; i < n; i++) r += EXP(x[i] - m);                                \
        }                                                                         \
        for (int l = 0; l < LANES; l++) r += s[l];                                \
        return r;                                                                 \
    }                                                                             \
    static void softmax_rows_##SFX(void *ctx, int64_t r0, int64_t r1) {           \
        const sm_job *j = ctx;                                                    \
        int64_t L = j->L;                                                         \
        for (int64_t r = r0; r < r1; r++) {                                       \
            const T *restrict x = (const T *)j->x + r * L;                        \
            T *restrict y = (T *)j->y + r * L;                                    \
            T m = row_max_##SFX(x, L);                                            \
            if (!isfinite(m)) {                                                   \
                for (int64_t i = 0; i < L; i++) y[i] = NAN;                       \
            } else if (j->log) {                                                  \
                T ls = LOG(row_expsum_##SFX(x, NULL, L, m));                      \
                for (int64_t i = 0; i < L; i++) y[i] = (x[i] - m) - ls;           \
            } else {                                                              \
                T inv = (T)1 / row_expsum_##SFX(x, y, L, m);                      \
                for (int64_t i = 0; i < L; i++) y[i] *= inv;                      \
            }                                                                     \
        }                                                                         \
    }                                                                             \
    static void softmax_cols_##SFX(void *ctx, int64_t t0, int64_t t1) {           \
        const sm_job *j = ctx;                                                    \
        int64_t L = j->L, in = j->inner;                                          \
        for (int64_t t = t0; t < t1; t++) {                                       \
            int64_t o = t / j->tiles, c0 = t % j->tiles * j->cols;                \
            int64_t w = in - c0 < j->cols ? in - c0 : j->cols;                    \
            const T *restrict x = (const T *)j->x + o * L * in + c0;              \
            T *restrict y = (T *)j->y + o * L * in + c0;                          \
            T m[MAX_COLS], s[MAX_COLS];                                           \
            for (int64_t c = 0; c < w; c++) m[c] = -INFINITY, s[c] = 0;           \
            for (int64_t l = 0; l < L; l++)                                       \
                for (int64_t c = 0; c < w; c++) {                                 \
                    T v = x[l * in + c];                                          \
                    m[c] = v > m[c] || v != v ? v : m[c];                         \
                }                                                                 \
            for (int64_t c = 0; c < w; c++)                                       \
                if (!isfinite(m[c])) m[c] = NAN;  /* NaN column in, NaN out */    \
            if (j->log) {                                                         \
                for (int64_t l = 0; l < L; l++)                                   \
                    for (int64_t c = 0; c < w; c++) s[c] += EXP(x[l * in + c] - m[c]); \
                for (int64_t c = 0; c < w; c++) s[c] = LOG(s[c]);                 \
                for (int64_t l = 0; l < L; l++)                                   \
                    for (int64_t c = 0; c < w; c++)                               \
                        y[l * in + c] = (x[l * in + c] - m[c]) - s[c];            \
            } else {                                                              \
                for (int64_t l = 0; l < L; l++)                                   \
                    for (int64_t c = 0; c < w; c++) {                             \
                        T e = EXP(x[l * in + c] - m[c]);                          \
                        y[l * in + c] = e;                                        \
                        s[c] += e;                                                \
                    }                                                             \
                for (int64_t c = 0; c < w; c++) s[c] = (T)1 / s[c];               \
                for (int64_t l = 0; l < L; l++)                                   \
                    for (int64_t c = 0; c < w; c++) y[l * in + c] *= s[c];        \
            }                                                                     \
            for (int64_t c = 0; c < w; c++)                                       \
                if (m[c] != m[c])                                                 \
                    for (int64_t l = 0; l < L; l++) y[l * in + c] = NAN;          \
        }                                                                         \
    }
SOFTMAX_KERNELS(float, f32, kn_s_exp_nonpos_f32, kn_s_log_f32)  /* exps of x - max <= 0 */
SOFTMAX_KERNELS(double, f64, kn_s_exp_f64, kn_s_log_f64)

static kn_tensor *softmax_impl(const char *op, kn_tensor *x, int dim, bool log) {
    KN_CHECK(op, x);
    if (!kn__is_float(x->dtype))
        return kn__error("%s: dtype %s is not supported (expected f32 or f64)", op,
                         kn_dtype_name(x->dtype));
    int d = kn__dim(op, dim, x->ndim);
    if (d < 0) return NULL;
    kn_tensor *xd = dense(x, x->dtype);
    if (!xd) return NULL;
    kn_tensor *out = kn__alloc(x->shape, x->ndim, x->dtype);
    int64_t L = x->ndim ? x->shape[d] : 1, n = kn__numel(x->shape, x->ndim);
    if (out && n > 0) {
        int64_t inner = x->ndim ? kn__numel(x->shape + d + 1, x->ndim - d - 1) : 1;
        sm_job j = {.x = kn__ptr(xd), .y = kn__ptr(out), .L = L, .inner = inner, .log = log};
        bool f32 = x->dtype == KN_F32;
        if (inner == 1) {
            int64_t grain = L >= 8192 ? 1 : 8192 / L;
            kn__parallel_for(n / L, grain, f32 ? softmax_rows_f32 : softmax_rows_f64, &j);
        } else {
            /* Wide tiles stream best: split the columns only as far as the
             * threads need, in multiples of 16. */
            int64_t outer = n / (L * inner), nt = kn_get_num_threads();
            int64_t split = outer >= nt ? 1 : (nt + outer - 1) / outer;
            int64_t cols = ((inner + split - 1) / split + 15) / 16 * 16;
            j.cols = cols < MAX_COLS ? cols : MAX_COLS;
            j.tiles = (inner + j.cols - 1) / j.cols;
            int64_t per = L * j.cols, grain = per >= 8192 ? 1 : 8192 / per;
            kn__parallel_for(outer * j.tiles, grain, f32 ? softmax_cols_f32 : softmax_cols_f64,
                             &j);
        }
    }
    kn__drop(xd);
    kn_params p = {.i = {d}};
    return kn__record(log ? KN_OP_log_softmax : KN_OP_softmax, out, &x, 1, &p);
}

kn_tensor *kn_softmax(kn_tensor *x, int dim) { return softmax_impl("kn_softmax", x, dim, false); }
kn_tensor *kn_log_softmax(kn_tensor *x, int dim) {
    return softmax_impl("kn_log_softmax", x, dim, true);
}

/* ---- layer_norm ---- */
typedef struct {
    const char *x, *w, *b;
    char *y;
    int64_t n;
    double eps;
} ln_job;

/* Mean and biased variance in double (two passes over a row that is in
 * cache), then y = (x - mean) * rstd [* w] [+ b]. */
#define LAYER_NORM_ROWS(T, SFX)                                                   \
    static void layer_norm_rows_##SFX(void *ctx, int64_t r0, int64_t r1) {        \
        const ln_job *j = ctx;                                                    \
        int64_t n = j->n;                                                         \
        const T *restrict w = (const T *)j->w, *restrict b = (const T *)j->b;     \
        for (int64_t r = r0; r < r1; r++) {                                       \
            const T *restrict x = (const T *)j->x + r * n;                        \
            T *restrict y = (T *)j->y + r * n;                                    \
            double acc[LANES / 2] = {0}, sum = 0, sq = 0;                         \
            int64_t i = 0;                                                        \
            for (; i + LANES / 2 <= n; i += LANES / 2)                            \
                for (int l = 0; l < LANES / 2; l++) acc[l] += (double)x[i + l];  \
            for (; i < n; i++) sum += (double)x[i];                               \
            for (int l = 0; l < LANES / 2; l++) sum += acc[l], acc[l] = 0;        \
            double mean = sum / (double)n;                                        \
            for (i = 0; i + LANES / 2 <= n; i += LANES / 2)                       \
                for (int l = 0; l < LANES / 2; l++) {                             \
                    double d = (double)x[i + l] - mean;                           \
                    acc[l] += d * d;                                              \
                }                                                                 \
            for (; i < n; i++) sq += ((double)x[i] - mean) * ((double)x[i] - mean); \
            for (int l = 0; l < LANES / 2; l++) sq += acc[l];                     \
            double rstd = 1.0 / sqrt(sq / (double)n + j->eps);                    \
            for (i = 0; i < n; i++) y[i] = (T)(((double)x[i] - mean) * rstd);     \
            if (w)                                                                \
                for (i = 0; i < n; i++) y[i] *= w[i];                             \
            if (b)                                                                \
                for (i = 0; i < n; i++) y[i] += b[i];                             \
        }                                                                         \
    }
LAYER_NORM_ROWS(float, f32)
LAYER_NORM_ROWS(double, f64)

static bool check_affine(const char *what, const kn_tensor *p, const kn_tensor *x, int nn) {
    const int64_t *ns = x->shape + x->ndim - nn;
    if (!p || (p->ndim == nn && memcmp(p->shape, ns, (size_t)nn * sizeof *ns) == 0))
        return true;
    char s0[KN_SHAPE_BUF], s1[KN_SHAPE_BUF], s2[KN_SHAPE_BUF];
    kn__error("kn_layer_norm: %s shape %s does not match the normalized shape %s of input %s",
              what, kn__shape_str(p->shape, p->ndim, s0), kn__shape_str(ns, nn, s1),
              kn__shape_str(x->shape, x->ndim, s2));
    return false;
}

kn_tensor *kn_layer_norm(kn_tensor *x, int normalized_ndim, kn_tensor *w, kn_tensor *b,
                         double eps) {
    KN_CHECK("kn_layer_norm", x);
    char s0[KN_SHAPE_BUF];
    if (!kn__is_float(x->dtype))
        return kn__error("kn_layer_norm: dtype %s is not supported (expected f32 or f64)",
                         kn_dtype_name(x->dtype));
    int nn = normalized_ndim;
    if (nn < 1 || nn > x->ndim)
        return kn__error("kn_layer_norm: normalized_ndim %d out of range for input of shape %s "
                         "(expected 1..%d)", nn, kn__shape_str(x->shape, x->ndim, s0), x->ndim);
    if (!check_affine("weight", w, x, nn) || !check_affine("bias", b, x, nn)) return NULL;
    kn_dtype dt = x->dtype;
    kn_tensor *xd = dense(x, dt), *wd = NULL, *bd = NULL, *out = NULL;
    if (!xd || (w && !(wd = dense(w, dt))) || (b && !(bd = dense(b, dt)))) goto done;
    if (!(out = kn__alloc(x->shape, x->ndim, dt))) goto done;
    int64_t n = kn__numel(x->shape + x->ndim - nn, nn);
    if (n > 0) {
        ln_job j = {.x = kn__ptr(xd), .w = wd ? kn__ptr(wd) : NULL,
                    .b = bd ? kn__ptr(bd) : NULL, .y = kn__ptr(out), .n = n, .eps = eps};
        int64_t grain = n >= 8192 ? 1 : 8192 / n;
        kn__parallel_for(kn__numel(x->shape, x->ndim) / n, grain,
                         dt == KN_F32 ? layer_norm_rows_f32 : layer_norm_rows_f64, &j);
    }
done:
    kn__drop(xd);
    kn__drop(wd);
    kn__drop(bd);
    kn_params p = {.i = {nn}, .d = {eps}};
    return kn__record(KN_OP_layer_norm, out, (kn_tensor *[]){x, w, b}, 3, &p);
}
