/* Losses. cross_entropy is one fused primitive (log-softmax and pick per
 * row); nll_loss and mse_loss are compositions of kn_ ops, so their
 * gradients come from the ops they use. */
#include "../core/autograd.h"
#include "../core/scalar.h"
#include <math.h>
#include <stdlib.h>

static const char *reduction_ok(kn_reduction r) {
    return r == KN_REDUCE_MEAN || r == KN_REDUCE_SUM || r == KN_REDUCE_NONE ? NULL : "bad";
}

/* Checks logits [N,C] and target [N] of class indices in [0, C). Returns the
 * target as a contiguous i64 tensor (a reference to kn__drop), or NULL. */
static kn_tensor *check_target(const char *op, kn_tensor *x, kn_tensor *target) {
    char b0[KN_SHAPE_BUF], b1[KN_SHAPE_BUF];
    if (x->ndim != 2 || target->ndim != 1 || target->shape[0] != x->shape[0])
        return kn__error("%s: expected input [N,C] and target [N], got %s and %s", op,
                         kn__shape_str(x->shape, x->ndim, b0), kn__shape_str(target->shape, target->ndim, b1));
    if (!kn__is_float(x->dtype))
        return kn__error("%s: input dtype %s is not supported (expected f32 or f64)", op,
                         kn_dtype_name(x->dtype));
    if (!kn__is_int(target->dtype))
        return kn__error("%s: target dtype %s is not supported (expected class indices, i64 or i32)",
                         op, kn_dtype_name(target->dtype));
    kn_tensor *t = target->dtype == KN_I64 ? kn_contiguous(target) : kn_cast(target, KN_I64);
    if (!t) return NULL;
    const int64_t *tv = (const int64_t *)kn__ptr(t);
    for (int64_t i = 0; i < t->shape[0]; i++)
        if (tv[i] < 0 || tv[i] >= x->shape[1]) {
            kn__drop(t);
            return kn__error("%s: target %lld at row %lld is out of range for %lld classes", op,
                             (long long)tv[i], (long long)i, (long long)x->shape[1]);
        }
    return t;
}

typedef struct { const char *x; const int64_t *t; double *loss; int64_t c; kn_dtype dt; } ce_ctx;

/* loss_i = logsumexp(x_i) - x_i[t_i], max-shifted so large logits are exact.
 * The exponentials of a chunk are computed apart from their in-order sum so
 * that they vectorize, with the remainder masked: a 10-class row is one
 * vector of exps instead of ten scalar ones. */
#define CE_CHUNK 256
#define CE_ROWS(NAME, T, EXP, LOG, VEC)                                           \
    static void NAME(void *p, int64_t begin, int64_t end) {                       \
        ce_ctx *c = p;                                                            \
        T e[CE_CHUNK];                                                            \
        for (int64_t i = begin; i < end; i++) {                                   \
            const T *x = (const T *)c->x + i * c->c;                              \
            T m = x[0];                                                           \
            for (int64_t j = 1; j < c->c; j++) m = x[j] > m ? x[j] : m;           \
            T s = 0;                                                              \
            for (int64_t j0 = 0; j0 < c->c; j0 += CE_CHUNK) {                     \
                int64_t n = c->c - j0 < CE_CHUNK ? c->c - j0 : CE_CHUNK;          \
                VEC                                                               \
                for (int64_t j = 0; j < n; j++) e[j] = EXP(x[j0 + j] - m);        \
                for (int64_t j = 0; j < n; j++) s += e[j];                        \
            }                                                                     \
            c->loss[i] = (double)(m + LOG(s) - x[c->t[i]]);                       \
        }                                                                         \
    }
CE_ROWS(ce_rows_f32, float, kn_s_exp_nonpos_f32, kn_s_log_f32,
        _Pragma("clang loop vectorize(enable) vectorize_predicate(enable)"))
CE_ROWS(ce_rows_f64, double, kn_s_exp_f64, kn_s_log_f64, ) /* libm's exp: nothing to vectorize */

/* f32 rows of at most CE_LANES_MAX classes (a classifier's 10), CE_LANES
 * rows at a time with row r in lane r: the max, the exps, the in-order sum
 * and the log run as vector ops across rows, and each row sees exactly the
 * operations of ce_rows_f32 in the same order, so the losses are its bits.
 * One row at a time, a 10-class row leaves most of a vector idle. */
#define CE_LANES 16
#define CE_LANES_MAX 32
static void ce_lanes_f32(void *p, int64_t begin, int64_t end) {
    ce_ctx *c = p;
    const float *x = (const float *)c->x;
    int64_t nc = c->c;
    for (int64_t i0 = begin; i0 < end; i0 += CE_LANES) {
        int64_t nr = end - i0 < CE_LANES ? end - i0 : CE_LANES;
        float t[CE_LANES_MAX][CE_LANES] = {{0}}, m[CE_LANES], s[CE_LANES], l[CE_LANES];
        for (int64_t r = 0; r < nr; r++)
            for (int64_t j = 0; j < nc; j++) t[j][r] = x[(i0 + r) * nc + j];
        for (int r = 0; r < CE_LANES; r++) m[r] = t[0][r], s[r] = 0;
        for (int64_t j = 1; j < nc; j++)
            for (int r = 0; r < CE_LANES; r++) m[r] = t[j][r] > m[r] ? t[j][r] : m[r];
        for (int64_t j = 0; j < nc; j++)
            for (int r = 0; r < CE_LANES; r++) s[r] += kn_s_exp_nonpos_f32(t[j][r] - m[r]);
        for (int r = 0; r < CE_LANES; r++) l[r] = m[r] + kn_s_log_f32(s[r]);
        for (int64_t r = 0; r < nr; r++) c->loss[i0 + r] = (double)(l[r] - x[(i0 + r) * nc + c->t[i0 + r]]);
    }
}

/* Per-row losses reduced as asked, in dtype dt. */
static kn_tensor *reduce_rows(const double *loss, int64_t n, kn_reduction r, kn_dtype dt) {
    if (r == KN_REDUCE_NONE) {
        kn_tensor *out = kn__alloc(&n, 1, dt);
        for (int64_t i = 0; out && i < n; i++) kn__store(kn__ptr(out) + i * (int64_t)kn_dtype_size(dt), dt, loss[i]);
        return out;
    }
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += loss[i];
    return kn_scalar(r == KN_REDUCE_MEAN ? s / (double)n : s, dt);
}

kn_tensor *kn_cross_entropy(kn_tensor *logits, kn_tensor *target, kn_reduction r) {
    KN_CHECK("kn_cross_entropy", logits);
    KN_CHECK("kn_cross_entropy", target);
    if (reduction_ok(r)) return kn__error("kn_cross_entropy: unknown reduction %d", (int)r);
    kn_tensor *t = check_target("kn_cross_entropy", logits, target);
    if (!t) return NULL;
    kn_tensor *x = kn_contiguous(logits), *out = NULL;
    int64_t n = logits->shape[0];
    double *loss = malloc((size_t)(n ? n : 1) * sizeof *loss);
    if (!x || !loss) {
        if (x) kn__error("kn_cross_entropy: out of memory");
        goto done;
    }
    ce_ctx c = {kn__ptr(x), (const int64_t *)kn__ptr(t), loss, logits->shape[1], x->dtype};
    if (c.c == 0) {
        kn__error("kn_cross_entropy: input has 0 classes");
        goto done;
    }
    kn_range_fn rows = x->dtype == KN_F64 ? ce_rows_f64 : c.c <= CE_LANES_MAX ? ce_lanes_f32 : ce_rows_f32;
    kn__parallel_for(n, 256, rows, &c);
    out = reduce_rows(loss, n, r, x->dtype);
done:
    free(loss);
    kn__drop(x);
    kn__drop(t);
    return kn__record(KN_OP_cross_entropy, out, (kn_tensor *[]){logits, target}, 2,
                      &(kn_params){.i = {r}});
}

static kn_tensor *reduce(kn_tensor *v, kn_reduction r) {
    if (r == KN_REDUCE_NONE) return kn__ret(v);
    return r == KN_REDUCE_MEAN ? kn_mean(v, KN_ALL_DIMS, false) : kn_sum(v, KN_ALL_DIMS, false);
}

kn_tensor *kn_nll_loss(kn_tensor *logp, kn_tensor *target, kn_reduction r) {
    KN_CHECK("kn_nll_loss", logp);
    KN_CHECK("kn_nll_loss", target);
    if (reduction_ok(r)) return kn__error("kn_nll_loss: unknown reduction %d", (int)r);
    kn__scope_begin();
    kn_tensor *t = check_target("kn_nll_loss", logp, target);
    kn_tensor *picked = t ? kn_squeeze(kn_gather(logp, 1, kn_unsqueeze(t, 1)), 1) : NULL;
    return kn__scope_end(picked ? reduce(kn_neg(picked), r) : NULL);
}

kn_tensor *kn_mse_loss(kn_tensor *x, kn_tensor *y, kn_reduction r) {
    KN_CHECK("kn_mse_loss", x);
    KN_CHECK("kn_mse_loss", y);
    if (reduction_ok(r)) return kn__error("kn_mse_loss: unknown reduction %d", (int)r);
    kn__scope_begin();
    kn_tensor *d = kn_sub(x, y);
    return kn__scope_end(d ? reduce(kn_mul(d, d), r) : NULL);
}
