/* Accumulating index ops: scatter_add and index_add. They are the backward
 * of gather, index_select and slice, and differentiable themselves. */
#include "../core/autograd.h"
#include <string.h>

/* Index values as int64, contiguous (a reference to kn__drop). */
static kn_tensor *index_i64(const char *op, kn_tensor *index) {
    if (!kn__is_int(index->dtype))
        return kn__error("%s: index dtype %s is not supported (expected i64 or i32)", op,
                         kn_dtype_name(index->dtype));
    return index->dtype == KN_I64 ? kn_contiguous(index) : kn_cast(index, KN_I64);
}

static bool check_range(const char *op, const int64_t *idx, int64_t n, int64_t size) {
    for (int64_t i = 0; i < n; i++)
        if (idx[i] < 0 || idx[i] >= size) {
            kn__error("%s: index %lld is out of range for a dim of size %lld", op,
                      (long long)idx[i], (long long)size);
            return false;
        }
    return true;
}

/* out[..., idx[i], ...] += src[..., i, ...] along dim, for a dtype. */
#define ADD_ROWS(NAME, T)                                                         \
    static void NAME(char *out, const char *src, const int64_t *idx, int64_t outer, \
                     int64_t nidx, int64_t size, int64_t inner) {                 \
        for (int64_t o = 0; o < outer; o++)                                       \
            for (int64_t i = 0; i < nidx; i++) {                                  \
                T *restrict d = (T *)out + (o * size + idx[i]) * inner;           \
                const T *restrict s = (const T *)src + (o * nidx + i) * inner;    \
                for (int64_t k = 0; k < inner; k++) d[k] += s[k];                 \
            }                                                                     \
    }
ADD_ROWS(add_rows_f32, float)
ADD_ROWS(add_rows_f64, double)
ADD_ROWS(add_rows_i32, int32_t)
ADD_ROWS(add_rows_i64, int64_t)

typedef void (*add_rows_fn)(char *, const char *, const int64_t *, int64_t, int64_t, int64_t, int64_t);
static const add_rows_fn add_rows[KN_DTYPE_COUNT] = {
    [KN_F32] = add_rows_f32, [KN_F64] = add_rows_f64, [KN_I32] = add_rows_i32, [KN_I64] = add_rows_i64,
};

/* A contiguous copy of x in dtype dt: the output of both ops. */
static kn_tensor *fresh_copy(kn_tensor *x, kn_dtype dt) {
    kn_tensor *out = kn__alloc(x->shape, x->ndim, dt);
    if (out) kn__copy(out, x);
    return out;
}

kn_tensor *kn_index_add(kn_tensor *x, int dim, kn_tensor *index, kn_tensor *src) {
    const char *op = "kn_index_add";
    KN_CHECK(op, x);
    KN_CHECK(op, index);
    KN_CHECK(op, src);
    int d = kn__dim(op, dim, x->ndim);
    if (d < 0) return NULL;
    char b0[KN_SHAPE_BUF], b1[KN_SHAPE_BUF];
    int64_t nidx = kn__tnumel(index);
    bool ok = index->ndim <= 1 && src->ndim == x->ndim;
    for (int i = 0; ok && i < x->ndim; i++) ok = src->shape[i] == (i == d ? nidx : x->shape[i]);
    if (!ok)
        return kn__error("%s: source of shape %s does not fit x of shape %s with %lld indices along dim %d",
                         op, kn__shape_str(src->shape, src->ndim, b0), kn__shape_str(x->shape, x->ndim, b1),
                         (long long)nidx, d);
    kn_tensor *xs[2] = {x, src};
    kn_dtype dt = kn__promote(xs, 2);
    if (!add_rows[dt]) return kn__error("%s: dtype %s is not supported", op, kn_dtype_name(dt));
    kn__scope_begin();
    kn_tensor *idx = index_i64(op, index), *out = NULL;
    kn_tensor *s = idx ? kn_contiguous(src->dtype == dt ? src : kn_cast(src, dt)) : NULL;
    int64_t size = x->ndim ? x->shape[d] : 1;
    if (s && check_range(op, (const int64_t *)kn__ptr(idx), nidx, size) && (out = fresh_copy(x, dt))) {
        int64_t outer = 1, inner = 1;
        for (int i = 0; i < d; i++) outer *= x->shape[i];
        for (int i = d + 1; i < x->ndim; i++) inner *= x->shape[i];
        add_rows[dt](kn__ptr(out), kn__ptr(s), (const int64_t *)kn__ptr(idx), outer, nidx, size, inner);
    }
    out = kn__scope_end(out);
    return kn__record(KN_OP_index_add, out, (kn_tensor *[]){x, index, src}, 3, &(kn_params){.i = {d}});
}

/* out[i with i[dim] = index[i]] += src[i] for every position i of index. */
#define SCATTER(NAME, T)                                                          \
    static void NAME(char *out, const kn_tensor *o, const char *src, const int64_t *sst, \
                     const int64_t *idx, const int64_t *ishape, int nd, int dim) { \
        int64_t n = kn__numel(ishape, nd), pos[KN_MAX_DIMS] = {0};               \
        for (int64_t k = 0; k < n; k++) {                                         \
            int64_t oo = 0, so = 0;                                               \
            for (int i = 0; i < nd; i++) {                                        \
                oo += (i == dim ? idx[k] : pos[i]) * o->strides[i];               \
                so += pos[i] * sst[i];                                            \
            }                                                                     \
            ((T *)out)[oo] += ((const T *)src)[so];                               \
            for (int i = nd - 1; i >= 0 && ++pos[i] == ishape[i]; i--) pos[i] = 0; \
        }                                                                         \
    }
SCATTER(scatter_f32, float)
SCATTER(scatter_f64, double)
SCATTER(scatter_i32, int32_t)
SCATTER(scatter_i64, int64_t)

typedef void (*scatter_fn)(char *, const kn_tensor *, const char *, const int64_t *, const int64_t *,
                           const int64_t *, int, int);
static const scatter_fn scatters[KN_DTYPE_COUNT] = {
    [KN_F32] = scatter_f32, [KN_F64] = scatter_f64, [KN_I32] = scatter_i32, [KN_I64] = scatter_i64,
};

kn_tensor *kn_scatter_add(kn_tensor *x, int dim, kn_tensor *index, kn_tensor *src) {
    const char *op = "kn_scatter_add";
    KN_CHECK(op, x);
    KN_CHECK(op, index);
    KN_CHECK(op, src);
    int d = kn__dim(op, dim, x->ndim);
    if (d < 0) return NULL;
    char b0[KN_SHAPE_BUF], b1[KN_SHAPE_BUF], b2[KN_SHAPE_BUF];
    bool ok = index->ndim == x->ndim && src->ndim == x->ndim;
    for (int i = 0; ok && i < x->ndim; i++)
        ok = index->shape[i] <= src->shape[i] && (i == d || index->shape[i] <= x->shape[i]);
    if (!ok)
        return kn__error("%s: index %s, source %s and x %s do not fit (index dims must not exceed "
                         "source dims, nor x dims other than %d)", op,
                         kn__shape_str(index->shape, index->ndim, b0), kn__shape_str(src->shape, src->ndim, b1),
                         kn__shape_str(x->shape, x->ndim, b2), d);
    kn_tensor *xs[2] = {x, src};
    kn_dtype dt = kn__promote(xs, 2);
    if (!scatters[dt]) return kn__error("%s: dtype %s is not supported", op, kn_dtype_name(dt));
    kn__scope_begin();
    kn_tensor *idx = index_i64(op, index), *out = NULL;
    kn_tensor *s = idx ? (src->dtype == dt ? kn__ret(src) : kn_cast(src, dt)) : NULL;
    int64_t size = x->ndim ? x->shape[d] : 1;
    if (s && check_range(op, (const int64_t *)kn__ptr(idx), kn__tnumel(idx), size) &&
        (out = fresh_copy(x, dt)))
        scatters[dt](kn__ptr(out), out, kn__ptr(s), s->strides, (const int64_t *)kn__ptr(idx),
                     index->shape, index->ndim, d);
    out = kn__scope_end(out);
    return kn__record(KN_OP_scatter_add, out, (kn_tensor *[]){x, index, src}, 3, &(kn_params){.i = {d}});
}
