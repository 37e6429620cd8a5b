/* Views (transpose, permute, slice, expand, squeeze, unsqueeze, reshape) share
 * their input's storage; contiguous, cat, stack, gather and index_select copy.
 * Every op accepts arbitrary strided inputs. For autograd, transpose records
 * as permute, squeeze/unsqueeze as reshape, and stack as unsqueeze + cat. */
#include "../core/autograd.h"
#include <stdlib.h>
#include <string.h>

#define GRAIN (1 << 15)            /* elements per task for element loops */
#define GRAIN_BYTES (1 << 16)      /* bytes per task for memcpy loops */

/* A view of x recorded for autograd as a reshape (the gradient is g reshaped). */
static kn_tensor *shape_view(kn_tensor *x, const int64_t *shape, const int64_t *strides, int ndim) {
    kn_tensor *v = kn__view(x, shape, strides, ndim, x->offset);
    return kn__record(KN_OP_reshape, v, &x, 1, NULL);
}

static kn_tensor *same_view(kn_tensor *x) { return shape_view(x, x->shape, x->strides, x->ndim); }

/* A permuted view (perm already checked), recorded as permute. */
static kn_tensor *permuted(kn_tensor *x, const int *perm) {
    int64_t shape[KN_MAX_DIMS], strides[KN_MAX_DIMS];
    kn_params p = {0};
    for (int i = 0; i < x->ndim; i++) {
        shape[i] = x->shape[perm[i]];
        strides[i] = x->strides[perm[i]];
        p.i[i] = perm[i];
    }
    kn_tensor *v = kn__view(x, shape, strides, x->ndim, x->offset);
    return kn__record(KN_OP_permute, v, &x, 1, &p);
}

/* False (with an error) when shape's element count overflows int64. */
static bool numel_fits(const char *op, const int64_t *shape, int ndim) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (__builtin_mul_overflow(n, shape[i], &n)) {
            char b[KN_SHAPE_BUF];
            kn__error("%s: shape %s has too many elements", op, kn__shape_str(shape, ndim, b));
            return false;
        }
    }
    return true;
}

/* ---- pure views ---- */

kn_tensor *kn_transpose(kn_tensor *x, int d0, int d1) {
    KN_CHECK("kn_transpose", x);
    if ((d0 = kn__dim("kn_transpose", d0, x->ndim)) < 0) return NULL;
    if ((d1 = kn__dim("kn_transpose", d1, x->ndim)) < 0) return NULL;
    if (x->ndim == 0) return same_view(x);
    int perm[KN_MAX_DIMS];
    for (int i = 0; i < x->ndim; i++) perm[i] = i;
    perm[d0] = d1, perm[d1] = d0;
    return permuted(x, perm);
}

kn_tensor *kn_permute(kn_tensor *x, const int *perm, int ndim) {
    KN_CHECK("kn_permute", x);
    if (ndim != x->ndim)
        return kn__error("kn_permute: %d dims given for a %d-dim tensor", ndim, x->ndim);
    if (ndim > 0 && !perm) return kn__null_arg("kn_permute");
    int p[KN_MAX_DIMS];
    bool seen[KN_MAX_DIMS] = {0};
    for (int i = 0; i < ndim; i++) {
        int d = kn__dim("kn_permute", perm[i], ndim);
        if (d < 0) return NULL;
        if (seen[d])
            return kn__error("kn_permute: dim %d appears twice (perm must list each of 0..%d once)",
                             perm[i], ndim - 1);
        seen[d] = true;
        p[i] = d;
    }
    return permuted(x, p);
}

kn_tensor *kn_slice(kn_tensor *x, int dim, int64_t start, int64_t stop, int64_t step) {
    KN_CHECK("kn_slice", x);
    if (x->ndim == 0) return kn__error("kn_slice: cannot slice a 0-dim tensor");
    if ((dim = kn__dim("kn_slice", dim, x->ndim)) < 0) return NULL;
    if (step <= 0) return kn__error("kn_slice: step must be positive (got %lld)", (long long)step);
    int64_t size = x->shape[dim];
    /* Python rules: negatives count from the end, then clamp into [0, size]. */
    if (start < 0) start += size;
    if (stop < 0) stop += size;
    start = start < 0 ? 0 : start > size ? size : start;
    stop = stop < start ? start : stop > size ? size : stop;
    int64_t len = stop == start ? 0 : (stop - start - 1) / step + 1;
    int64_t shape[KN_MAX_DIMS], strides[KN_MAX_DIMS];
    memcpy(shape, x->shape, sizeof shape);
    memcpy(strides, x->strides, sizeof strides);
    shape[dim] = len;
    /* A huge step only matters when len > 1, and then it cannot overflow. */
    if (__builtin_mul_overflow(x->strides[dim], step, &strides[dim])) strides[dim] = x->strides[dim];
    kn_tensor *v = kn__view(x, shape, strides, x->ndim, x->offset + start * x->strides[dim]);
    return kn__record(KN_OP_slice, v, &x, 1, &(kn_params){.i = {dim, start, step}});
}

/* PyTorch expand: new leading dims, -1 keeps a size, only size-1 dims grow. */
static kn_tensor *expand(const char *op, kn_tensor *x, const int64_t *shape, int ndim) {
    KN_CHECK(op, x);
    char b0[KN_SHAPE_BUF], b1[KN_SHAPE_BUF];
    if (ndim < 0 || ndim > KN_MAX_DIMS)
        return kn__error("%s: %d dims requested (expected 0..%d)", op, ndim, KN_MAX_DIMS);
    if (ndim > 0 && !shape) return kn__null_arg(op);
    if (ndim < x->ndim)
        return kn__error("%s: cannot expand shape %s to %s (fewer dims)", op,
                         kn__shape_str(x->shape, x->ndim, b0), kn__shape_str(shape, ndim, b1));
    int64_t nshape[KN_MAX_DIMS], nstrides[KN_MAX_DIMS];
    int lead = ndim - x->ndim;
    for (int i = 0; i < ndim; i++) {
        int j = i - lead;
        int64_t want = shape[i];
        if (want < -1 || (want == -1 && j < 0))
            return kn__error("%s: invalid size %lld at dim %d in shape %s (for input %s)", op,
                             (long long)want, i, kn__shape_str(shape, ndim, b1),
                             kn__shape_str(x->shape, x->ndim, b0));
        if (j < 0) {
            nshape[i] = want, nstrides[i] = 0;
        } else if (want == -1 || want == x->shape[j]) {
            nshape[i] = x->shape[j], nstrides[i] = x->strides[j];
        } else if (x->shape[j] == 1) {
            nshape[i] = want, nstrides[i] = 0;
        } else {
            return kn__error("%s: cannot expand shape %s to %s (dim %d has size %lld, "
                             "only size-1 dims can expand)", op,
                             kn__shape_str(x->shape, x->ndim, b0), kn__shape_str(shape, ndim, b1),
                             j, (long long)x->shape[j]);
        }
    }
    if (!numel_fits(op, nshape, ndim)) return NULL;
    return kn__record(KN_OP_expand, kn__view(x, nshape, nstrides, ndim, x->offset), &x, 1, NULL);
}

kn_tensor *kn_expand(kn_tensor *x, const int64_t *shape, int ndim) {
    return expand("kn_expand", x, shape, ndim);
}

kn_tensor *kn_broadcast_to(kn_tensor *x, const int64_t *shape, int ndim) {
    return expand("kn_broadcast_to", x, shape, ndim);
}

kn_tensor *kn_squeeze(kn_tensor *x, int dim) {
    KN_CHECK("kn_squeeze", x);
    if ((dim = kn__dim("kn_squeeze", dim, x->ndim)) < 0) return NULL;
    if (x->ndim == 0 || x->shape[dim] != 1) return same_view(x);
    int64_t shape[KN_MAX_DIMS], strides[KN_MAX_DIMS];
    for (int i = 0, k = 0; i < x->ndim; i++) {
        if (i == dim) continue;
        shape[k] = x->shape[i], strides[k++] = x->strides[i];
    }
    return shape_view(x, shape, strides, x->ndim - 1);
}

/* Geometry of x with a size-1 dim inserted at dim (already in [0, ndim]). Its
 * stride follows PyTorch, so a contiguous x stays contiguous. */
static void insert_dim(const kn_tensor *x, int dim, int64_t *shape, int64_t *strides) {
    for (int i = 0, k = 0; i <= x->ndim; i++) {
        if (i == dim) {
            shape[i] = 1;
            strides[i] = dim < x->ndim ? x->shape[dim] * x->strides[dim] : 1;
        } else {
            shape[i] = x->shape[k], strides[i] = x->strides[k++];
        }
    }
}

/* dim for an op that adds a dim: valid in [-ndim-1, ndim]; -1 with an error. */
static int new_dim(const char *op, int dim, int ndim) {
    if (ndim >= KN_MAX_DIMS) {
        kn__error("%s: result would have more than %d dims", op, KN_MAX_DIMS);
        return -1;
    }
    if (dim < -ndim - 1 || dim > ndim) {
        kn__error("%s: dim %d out of range for inserting into a %d-dim tensor (expected %d..%d)",
                  op, dim, ndim, -ndim - 1, ndim);
        return -1;
    }
    return dim < 0 ? dim + ndim + 1 : dim;
}

kn_tensor *kn_unsqueeze(kn_tensor *x, int dim) {
    KN_CHECK("kn_unsqueeze", x);
    if ((dim = new_dim("kn_unsqueeze", dim, x->ndim)) < 0) return NULL;
    int64_t shape[KN_MAX_DIMS], strides[KN_MAX_DIMS];
    insert_dim(x, dim, shape, strides);
    return shape_view(x, shape, strides, x->ndim + 1);
}

/* ---- reshape and contiguous ---- */

/* Strides that show x's elements (numel > 0) in shape nshape without a copy,
 * as PyTorch's view does; false when the layout does not allow it. Old dims
 * group into runs that are contiguous among themselves, and each run must be
 * tiled exactly by whole new dims, innermost first. */
static bool view_strides(const kn_tensor *x, const int64_t *nshape, int nd, int64_t *nst) {
    int j = nd - 1, i = x->ndim - 1;
    int64_t outer = 1;  /* stride just past the last run, for leading 1s */
    while (i >= 0) {
        if (x->shape[i] == 1) { i--; continue; }
        int64_t base = x->strides[i], run = x->shape[i];
        for (i--; i >= 0; i--) {
            if (x->shape[i] == 1) continue;
            if (x->strides[i] != base * run) break;
            run *= x->shape[i];
        }
        int64_t prod = 1;
        for (; j >= 0 && (prod < run || nshape[j] == 1); j--) {
            nst[j] = base * prod;
            if (__builtin_mul_overflow(prod, nshape[j], &prod)) return false;
        }
        if (prod != run) return false;
        outer = base * run;
    }
    for (; j >= 0; j--) {
        if (nshape[j] != 1) return false;
        nst[j] = outer;
    }
    return true;
}

/* A stack header for a dense tensor `out` seen with x's shape (same numel). */
static kn_tensor reshaped_header(const kn_tensor *out, const kn_tensor *x) {
    kn_tensor h = *out;
    h.ndim = x->ndim;
    memcpy(h.shape, x->shape, sizeof h.shape);
    kn__contig_strides(h.shape, h.ndim, h.strides);
    return h;
}

kn_tensor *kn_reshape(kn_tensor *x, const int64_t *shape, int ndim) {
    KN_CHECK("kn_reshape", x);
    char b0[KN_SHAPE_BUF], b1[KN_SHAPE_BUF];
    if (ndim < 0 || ndim > KN_MAX_DIMS)
        return kn__error("kn_reshape: %d dims requested (expected 0..%d)", ndim, KN_MAX_DIMS);
    if (ndim > 0 && !shape) return kn__null_arg("kn_reshape");
    int64_t nshape[KN_MAX_DIMS], known = 1;
    int infer = -1;
    for (int i = 0; i < ndim; i++) {
        nshape[i] = shape[i];
        if (shape[i] == -1 && infer < 0) {
            infer = i;
        } else if (shape[i] < 0) {
            return kn__error(shape[i] == -1 ? "kn_reshape: only one -1 allowed in shape %s"
                                            : "kn_reshape: negative size in shape %s",
                             kn__shape_str(shape, ndim, b1));
        } else if (__builtin_mul_overflow(known, shape[i], &known)) {
            return kn__error("kn_reshape: shape %s has too many elements",
                             kn__shape_str(shape, ndim, b1));
        }
    }
    int64_t numel = kn__numel(x->shape, x->ndim);
    if (infer >= 0) {
        if (known == 0)
            return kn__error("kn_reshape: cannot infer -1 in shape %s for a tensor of shape %s "
                             "(the other sizes multiply to 0)", kn__shape_str(shape, ndim, b1),
                             kn__shape_str(x->shape, x->ndim, b0));
        nshape[infer] = numel / known;
        known *= nshape[infer];
    }
    if (known != numel)
        return kn__error("kn_reshape: cannot reshape a tensor of shape %s (%lld elements) into "
                         "shape %s", kn__shape_str(x->shape, x->ndim, b0), (long long)numel,
                         kn__shape_str(shape, ndim, b1));
    int64_t nst[KN_MAX_DIMS];
    if (numel == 0) {
        /* No data to lay out: keep strides when the shape is unchanged. */
        bool same = ndim == x->ndim && !memcmp(nshape, x->shape, (size_t)ndim * sizeof *nshape);
        if (same) memcpy(nst, x->strides, sizeof nst);
        else kn__contig_strides(nshape, ndim, nst);
        return shape_view(x, nshape, nst, ndim);
    }
    if (view_strides(x, nshape, ndim, nst)) return shape_view(x, nshape, nst, ndim);
    kn_tensor *out = kn__alloc(nshape, ndim, x->dtype);
    if (!out) return NULL;
    kn_tensor h = reshaped_header(out, x);
    kn__copy(&h, x);
    return kn__record(KN_OP_reshape, out, &x, 1, NULL);
}

kn_tensor *kn_contiguous(kn_tensor *x) {
    KN_CHECK("kn_contiguous", x);
    if (kn_is_contiguous(x)) return kn__ret(x);
    kn_tensor *out = kn__alloc(x->shape, x->ndim, x->dtype);
    if (out) kn__copy(out, x);
    return kn__record(KN_OP_contiguous, out, &x, 1, NULL);
}

/* ---- cat and stack ---- */

/* Dense same-dtype inputs: the output, read as flat bytes, is rows of
 * segments, one per input; each task copies a byte range with memcpy. */
typedef struct {
    kn_tensor *const *xs;
    char *out;
    int64_t row;        /* bytes per output row */
    const int64_t *col; /* n + 1 byte offsets of each input's segment in a row */
} cat_ctx;

static void cat_range(void *p, int64_t b, int64_t e) {
    const cat_ctx *c = p;
    int64_t r = b / c->row, pos = b % c->row;
    int i = 0;
    while (b < e) {
        while (c->col[i + 1] <= pos) i++;  /* also skips empty segments */
        int64_t seg = c->col[i + 1] - c->col[i];
        int64_t len = c->col[i + 1] - pos;
        if (len > e - b) len = e - b;
        memcpy(c->out + b, kn__ptr(c->xs[i]) + r * seg + (pos - c->col[i]), (size_t)len);
        b += len, pos += len;
        if (pos == c->row) pos = 0, r++, i = 0;
    }
}

/* Copies xs into out along dim. Inputs with no elements are skipped, so the
 * legacy [0]-shaped ones that cat ignores never reach the copy. */
static kn_tensor *cat_into(const char *op, kn_tensor *out, kn_tensor *const *xs, int n, int dim) {
    if (kn__tnumel(out) == 0) return out;
    size_t esz = kn_dtype_size(out->dtype);
    int64_t inner = (int64_t)esz * kn__numel(out->shape + dim + 1, out->ndim - dim - 1);
    /* One-element segments (stack along the last dim) copy faster as one
     * long strided loop per input than as many tiny memcpys. */
    bool fast = true;
    for (int i = 0; i < n && fast; i++)
        fast = kn__tnumel(xs[i]) == 0 || (xs[i]->dtype == out->dtype && kn_is_contiguous(xs[i]) &&
                                        xs[i]->shape[dim] * inner > (int64_t)esz);
    if (!fast) {
        int64_t at = 0;
        for (int i = 0; i < n; i++) {
            if (kn__tnumel(xs[i]) == 0) continue;
            kn_tensor h = *out;  /* out's slab for input i */
            h.shape[dim] = xs[i]->shape[dim];
            h.offset = out->offset + at * out->strides[dim];
            kn__copy(&h, xs[i]);
            at += xs[i]->shape[dim];
        }
        return out;
    }
    int64_t *col = malloc((size_t)(n + 1) * sizeof *col);
    if (!col) {
        kn__drop(out);
        return kn__error("%s: out of memory", op);
    }
    col[0] = 0;
    for (int i = 0; i < n; i++)
        col[i + 1] = col[i] + (kn__tnumel(xs[i]) ? xs[i]->shape[dim] * inner : 0);
    cat_ctx c = {xs, kn__ptr(out), col[n], col};
    kn__parallel_for(kn__tnumel(out) * (int64_t)esz, GRAIN_BYTES, cat_range, &c);
    free(col);
    return out;
}

kn_tensor *kn_cat(kn_tensor *const *xs, int n, int dim) {
    if (!xs) return kn__null_arg("kn_cat");
    if (n < 1) return kn__error("kn_cat: needs at least one tensor (got %d)", n);
    for (int i = 0; i < n; i++) KN_CHECK("kn_cat", xs[i]);
    char b0[KN_SHAPE_BUF], b1[KN_SHAPE_BUF];
    /* Like PyTorch, 1-D tensors of shape [0] are ignored whatever their shape. */
    int ref = -1;
    for (int i = 0; i < n && ref < 0; i++)
        if (!(xs[i]->ndim == 1 && xs[i]->shape[0] == 0)) ref = i;
    const kn_tensor *r = xs[ref < 0 ? 0 : ref];
    if (r->ndim == 0)
        return kn__error("kn_cat: tensor %d is 0-dim and cannot be concatenated", ref);
    if ((dim = kn__dim("kn_cat", dim, r->ndim)) < 0) return NULL;
    int64_t shape[KN_MAX_DIMS];
    memcpy(shape, r->shape, sizeof shape);
    for (int i = ref + 1; ref >= 0 && i < n; i++) {
        const kn_tensor *x = xs[i];
        if (x->ndim == 1 && x->shape[0] == 0) continue;
        if (x->ndim != r->ndim)
            return kn__error("kn_cat: tensor %d has shape %s but tensor %d has %s (ranks differ)",
                             i, kn__shape_str(x->shape, x->ndim, b0), ref,
                             kn__shape_str(r->shape, r->ndim, b1));
        for (int d = 0; d < r->ndim; d++)
            if (d != dim && x->shape[d] != r->shape[d])
                return kn__error("kn_cat: tensor %d has shape %s but tensor %d has %s "
                                 "(dims other than %d must match)", i,
                                 kn__shape_str(x->shape, x->ndim, b0), ref,
                                 kn__shape_str(r->shape, r->ndim, b1), dim);
        if (__builtin_add_overflow(shape[dim], x->shape[dim], &shape[dim]))
            return kn__error("kn_cat: size along dim %d overflows", dim);
    }
    kn_tensor *out = kn__alloc(shape, r->ndim, kn__promote(xs, n));
    if (out) out = cat_into("kn_cat", out, xs, n, dim);
    return kn__record(KN_OP_cat, out, xs, n, &(kn_params){.i = {dim}});
}

kn_tensor *kn_stack(kn_tensor *const *xs, int n, int dim) {
    if (!xs) return kn__null_arg("kn_stack");
    if (n < 1) return kn__error("kn_stack: needs at least one tensor (got %d)", n);
    for (int i = 0; i < n; i++) KN_CHECK("kn_stack", xs[i]);
    const kn_tensor *r = xs[0];
    char b0[KN_SHAPE_BUF], b1[KN_SHAPE_BUF];
    for (int i = 1; i < n; i++)
        if (xs[i]->ndim != r->ndim ||
            memcmp(xs[i]->shape, r->shape, (size_t)r->ndim * sizeof *r->shape))
            return kn__error("kn_stack: tensor %d has shape %s but tensor 0 has %s (all must match)",
                             i, kn__shape_str(xs[i]->shape, xs[i]->ndim, b0),
                             kn__shape_str(r->shape, r->ndim, b1));
    if ((dim = new_dim("kn_stack", dim, r->ndim)) < 0) return NULL;
    /* Unsqueezed views, then cat: the views carry autograd for free. */
    kn_tensor **vs = calloc((size_t)n, sizeof *vs);
    if (!vs) return kn__error("kn_stack: out of memory");
    kn_tensor *out = NULL;
    int made = 0;
    for (; made < n; made++)
        if (!(vs[made] = kn_unsqueeze(xs[made], dim))) goto done;
    out = kn_cat(vs, n, dim);
done:
    for (int i = 0; i < made; i++) kn__drop(vs[i]);
    free(vs);
    return out;
}

/* ---- gather and index_select ---- */

/* out[i] = x[idx[i] * stride] over a 3-operand iteration (out, index, x with
 * stride 0 along the indexed dim). Bad indices are recorded, not read. */
typedef struct {
    int64_t size, stride;  /* x's size along dim; its stride in bytes */
    atomic_bool bad;
    atomic_llong bad_value;
} gather_params;

static void note_bad(gather_params *g, int64_t v) {
    if (!atomic_exchange(&g->bad, true)) atomic_store(&g->bad_value, v);
}

#define GATHER_LOOP(NAME, T, TI)                                                  \
    static void NAME(int64_t n, char **p, const int64_t *s, const void *prm) {   \
        gather_params *g = (gather_params *)prm;                                  \
        const int64_t size = g->size, st = g->stride;                             \
        if (s[0] == sizeof(T) && s[1] == sizeof(TI)) {                            \
            T *restrict y = (T *)p[0];                                            \
            const TI *restrict ix = (const TI *)p[1];                             \
            for (int64_t i = 0; i < n; i++) {                                     \
                int64_t v = ix[i];                                                \
                if ((uint64_t)v >= (uint64_t)size) { note_bad(g, v); continue; } \
                y[i] = *(const T *)(p[2] + i * s[2] + v * st);                    \
            }                                                                     \
            return;                                                               \
        }                                                                         \
        for (int64_t i = 0; i < n; i++) {                                         \
            int64_t v = *(const TI *)(p[1] + i * s[1]);                           \
            if ((uint64_t)v >= (uint64_t)size) { note_bad(g, v); continue; }     \
            *(T *)(p[0] + i * s[0]) = *(const T *)(p[2] + i * s[2] + v * st);     \
        }                                                                         \
    }
GATHER_LOOP(gather1_i32, uint8_t, int32_t)
GATHER_LOOP(gather4_i32, uint32_t, int32_t)
GATHER_LOOP(gather8_i32, uint64_t, int32_t)
GATHER_LOOP(gather1_i64, uint8_t, int64_t)
GATHER_LOOP(gather4_i64, uint32_t, int64_t)
GATHER_LOOP(gather8_i64, uint64_t, int64_t)

/* Runs the gather loop. idx must already have out's ndim (broadcast dims with
 * stride 0); x's header gets out's shape and stride 0 along dim. False (with
 * an error naming op) if an index was out of range. */
static bool run_gather(const char *op, kn_tensor *out, const kn_tensor *x, const kn_tensor *idx,
                       int dim) {
    gather_params g = {.size = x->ndim ? x->shape[dim] : 1};
    g.stride = x->ndim ? x->strides[dim] * (int64_t)kn_dtype_size(x->dtype) : 0;
    atomic_init(&g.bad, false);
    atomic_init(&g.bad_value, 0);
    kn_tensor xh = *x;
    xh.ndim = out->ndim;
    memcpy(xh.shape, out->shape, sizeof xh.shape);
    if (x->ndim) xh.strides[dim] = 0;
    kn_iter it = {.ndim = out->ndim};
    memcpy(it.shape, out->shape, sizeof it.shape);
    kn__iter_add(&it, out);
    kn__iter_add(&it, idx);
    kn__iter_add(&it, &xh);
    size_t esz = kn_dtype_size(x->dtype);
    kn_loop_fn fn = idx->dtype == KN_I32 ? (esz == 1 ? gather1_i32 : esz == 4 ? gather4_i32 : gather8_i32)
                                         : (esz == 1 ? gather1_i64 : esz == 4 ? gather4_i64 : gather8_i64);
    kn__iter_run(&it, fn, &g, GRAIN);
    if (!atomic_load(&g.bad)) return true;
    kn__error("%s: index %lld is out of range for dim %d with size %lld (expected 0..%lld)", op,
              (long long)atomic_load(&g.bad_value), dim, (long long)g.size, (long long)g.size - 1);
    return false;
}

static bool index_dtype_ok(const char *op, const kn_tensor *index) {
    if (index->dtype == KN_I64 || index->dtype == KN_I32) return true;
    kn__error("%s: index must be i64 or i32 (got %s)", op, kn_dtype_name(index->dtype));
    return false;
}

kn_tensor *kn_gather(kn_tensor *x, int dim, kn_tensor *index) {
    KN_CHECK("kn_gather", x);
    KN_CHECK("kn_gather", index);
    if (!index_dtype_ok("kn_gather", index)) return NULL;
    if ((dim = kn__dim("kn_gather", dim, x->ndim)) < 0) return NULL;
    char b0[KN_SHAPE_BUF], b1[KN_SHAPE_BUF];
    /* PyTorch lets a 0-dim side pair with a 1-D one of size <= 1. */
    int xn = x->ndim ? x->ndim : 1, in = index->ndim ? index->ndim : 1;
    bool ok = xn == in;
    for (int d = 0; ok && d < index->ndim; d++)
        ok = d == dim || index->shape[d] <= (x->ndim ? x->shape[d] : 1);
    if (!ok)
        return kn__error("kn_gather: index of shape %s does not fit input of shape %s along dim %d "
                         "(same ndim, index.size(d) <= input.size(d) for d != %d)",
                         kn__shape_str(index->shape, index->ndim, b0),
                         kn__shape_str(x->shape, x->ndim, b1), dim, dim);
    kn_tensor *out = kn__alloc(index->shape, index->ndim, x->dtype);
    if (!out) return NULL;
    kn_tensor xh = *x;  /* a 0-dim x seen as 1-D, so run_gather has a dim to index */
    if (x->ndim == 0 && index->ndim == 1) xh.ndim = 1, xh.shape[0] = 1, xh.strides[0] = 0;
    if (!run_gather("kn_gather", out, &xh, index, dim)) {
        kn__drop(out);
        return NULL;
    }
    return kn__record(KN_OP_gather, out, (kn_tensor *[]){x, index}, 2, &(kn_params){.i = {dim}});
}

kn_tensor *kn_one_hot(kn_tensor *target, int64_t num_classes, kn_dtype dt) {
    KN_CHECK("kn_one_hot", target);
    if (!index_dtype_ok("kn_one_hot", target)) return NULL;
    if (num_classes < 0) return kn__error("kn_one_hot: num_classes is %lld (pass the class count)", (long long)num_classes);
    if ((unsigned)dt >= KN_DTYPE_COUNT) return kn__error("kn_one_hot: unknown dtype %d", (int)dt);
    if (target->ndim >= KN_MAX_DIMS)
        return kn__error("kn_one_hot: target has %d dims; the result would exceed %d", target->ndim, KN_MAX_DIMS);
    kn_tensor *t = kn_contiguous(target), *out = NULL;
    if (!t) return NULL;
    int64_t n = kn__tnumel(t), shape[KN_MAX_DIMS];
    const char *tv = kn__ptr(t);
    for (int64_t i = 0; i < n; i++) {  /* checked first: a bad class makes nothing */
        int64_t c = t->dtype == KN_I32 ? ((const int32_t *)tv)[i] : ((const int64_t *)tv)[i];
        if (c < 0 || c >= num_classes) {
            kn__error("kn_one_hot: class %lld at element %lld is out of range for %lld classes", (long long)c,
                      (long long)i, (long long)num_classes);
            goto done;
        }
    }
    memcpy(shape, target->shape, (size_t)target->ndim * sizeof *shape);
    shape[target->ndim] = num_classes;
    if (!(out = kn__alloc(shape, target->ndim + 1, dt))) goto done;
    size_t esz = kn_dtype_size(dt);
    char *o = kn__ptr(out);
    memset(o, 0, (size_t)(n * num_classes) * esz);  /* zero bits are 0 in every dtype */
    for (int64_t i = 0; i < n; i++) {
        int64_t c = t->dtype == KN_I32 ? ((const int32_t *)tv)[i] : ((const int64_t *)tv)[i];
        kn__store(o + (size_t)(i * num_classes + c) * esz, dt, 1.0);
    }
done:
    kn__drop(t);
    return out ? kn__record(KN_OP_one_hot, out, &target, 1, &(kn_params){.i = {num_classes}}) : NULL;
}

static int64_t index_at(const kn_tensor *index, int64_t j) {
    const char *p = kn__ptr(index);
    int64_t st = index->ndim ? index->strides[0] : 0;
    return index->dtype == KN_I32 ? ((const int32_t *)p)[j * st] : ((const int64_t *)p)[j * st];
}

/* Dense x with long rows: each output row is one memcpy. */
typedef struct {
    const kn_tensor *x, *index;
    char *out;
    int64_t k, size, row;  /* index length, x's size along dim, bytes per row */
} isel_ctx;

static void isel_range(void *p, int64_t b, int64_t e) {
    const isel_ctx *c = p;
    const char *src = kn__ptr(c->x);
    for (int64_t r = b; r < e; r++) {
        int64_t o = r / c->k, j = index_at(c->index, r % c->k);
        memcpy(c->out + r * c->row, src + (o * c->size + j) * c->row, (size_t)c->row);
    }
}

kn_tensor *kn_index_select(kn_tensor *x, int dim, kn_tensor *index) {
    KN_CHECK("kn_index_select", x);
    KN_CHECK("kn_index_select", index);
    if (!index_dtype_ok("kn_index_select", index)) return NULL;
    char b0[KN_SHAPE_BUF];
    if (index->ndim > 1)
        return kn__error("kn_index_select: index must be 0-dim or 1-D (got shape %s)",
                         kn__shape_str(index->shape, index->ndim, b0));
    if ((dim = kn__dim("kn_index_select", dim, x->ndim)) < 0) return NULL;
    int64_t k = kn__tnumel(index), size = x->ndim ? x->shape[dim] : 1;
    if (x->ndim == 0 && k != 1)
        return kn__error("kn_index_select: a 0-dim input takes exactly one index (got %lld)",
                         (long long)k);
    /* Checked up front (the index is short) so the copy cannot fail. */
    for (int64_t j = 0; j < k; j++) {
        int64_t v = index_at(index, j);
        if (v < 0 || v >= size)
            return kn__error("kn_index_select: index %lld is out of range for dim %d with size "
                             "%lld (expected 0..%lld)", (long long)v, dim, (long long)size,
                             (long long)size - 1);
    }
    int64_t shape[KN_MAX_DIMS];
    memcpy(shape, x->shape, sizeof shape);
    if (x->ndim) shape[dim] = k;
    kn_tensor *out = kn__alloc(shape, x->ndim, x->dtype);
    if (!out) return NULL;
    size_t esz = kn_dtype_size(x->dtype);
    int64_t row = (int64_t)esz * kn__numel(x->shape + dim + 1, x->ndim - dim - 1);
    if (kn__tnumel(out) == 0) {
        /* nothing to copy */
    } else if (x->ndim && kn_is_contiguous(x) && row >= 64) {
        isel_ctx c = {x, index, kn__ptr(out), k, size, row};
        int64_t rows = kn__tnumel(out) * (int64_t)esz / row;
        kn__parallel_for(rows, GRAIN_BYTES / row + 1, isel_range, &c);
    } else {
        /* General strides: gather with the index spread along dim. */
        kn_tensor ih = *index;
        ih.ndim = out->ndim;
        for (int d = 0; d < out->ndim; d++) {
            ih.shape[d] = d == dim ? k : 1;
            ih.strides[d] = d == dim && index->ndim ? index->strides[0] : 0;
        }
        run_gather("kn_index_select", out, x, &ih, dim);
    }
    return kn__record(KN_OP_index_select, out, (kn_tensor *[]){x, index}, 2,
                      &(kn_params){.i = {dim}});
}
