/* Reductions against plain double-precision reference loops. */
#include "helpers.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef enum { SUM, MEAN, MAX, MIN, VAR, LSE, ARGMAX, ARGMIN } rop;
static const char *const names[] = {"sum", "mean", "max", "min", "var", "logsumexp",
                                    "argmax", "argmin"};

static kn_tensor *run_op(rop op, kn_tensor *x, const int *dims, int ndims, bool keepdim,
                         int correction) {
    switch (op) {
    case SUM: return kn_sum(x, dims, ndims, keepdim);
    case MEAN: return kn_mean(x, dims, ndims, keepdim);
    case MAX: return kn_max(x, dims, ndims, keepdim);
    case MIN: return kn_min(x, dims, ndims, keepdim);
    case VAR: return kn_var(x, dims, ndims, correction, keepdim);
    case LSE: return kn_logsumexp(x, dims, ndims, keepdim);
    case ARGMAX: return kn_argmax(x, dims[0], keepdim);
    default: return kn_argmin(x, dims[0], keepdim);
    }
}

/* Reference over the elements v[0..n) in C order of the reduced dims. */
static double ref_values(rop op, const double *v, int64_t n, int correction) {
    double s = 0, m;
    int64_t best = 0;
    switch (op) {
    case SUM:
        for (int64_t i = 0; i < n; i++) s += v[i];
        return s;
    case MEAN:
        for (int64_t i = 0; i < n; i++) s += v[i];
        return s / (double)n;
    case MAX: case MIN:
        m = v[0];
        for (int64_t i = 0; i < n; i++) {
            if (isnan(v[i])) return NAN;
            if (op == MAX ? v[i] > m : v[i] < m) m = v[i];
        }
        return m;
    case VAR:
        for (int64_t i = 0; i < n; i++) s += v[i];
        m = s / (double)n;
        s = 0;
        for (int64_t i = 0; i < n; i++) s += (v[i] - m) * (v[i] - m);
        return s / (double)(n - correction > 0 ? n - correction : 0);
    case LSE:
        m = -INFINITY;
        for (int64_t i = 0; i < n; i++) {
            if (isnan(v[i])) return NAN;
            if (v[i] > m) m = v[i];
        }
        if (isinf(m)) return m;
        for (int64_t i = 0; i < n; i++) s += exp(v[i] - m);
        return m + log(s);
    default:
        for (int64_t i = 0; i < n; i++) {
            if (isnan(v[best])) break;
            if (isnan(v[i]) || (op == ARGMAX ? v[i] > v[best] : v[i] < v[best])) best = i;
        }
        return (double)best;
    }
}

/* x's values grouped by output: vals[o * R + j] is the j-th element (C order
 * of the reduced dims) that output o reduces. */
typedef struct {
    int64_t nout, R;
    double *vals;
    int64_t shape[2][KN_MAX_DIMS];  /* result shape without / with keepdim */
    int nd[2];
} groups;

static double load(const char *p, kn_dtype dt) {
    switch (dt) {
    case KN_F32: return *(const float *)p;
    case KN_F64: return *(const double *)p;
    case KN_I32: return *(const int32_t *)p;
    case KN_I64: return (double)*(const int64_t *)p;
    default: return *(const uint8_t *)p;
    }
}

static groups group(const kn_tensor *x, const int *dims, int ndims) {
    int nd = kn_ndim(x);
    const int64_t *sh = kn_shape(x), *st = kn_strides(x);
    bool red[KN_MAX_DIMS] = {false};
    if (!dims || ndims == 0)
        for (int d = 0; d < nd; d++) red[d] = true;
    for (int i = 0; dims && i < ndims; i++)
        if (nd > 0) red[dims[i] < 0 ? dims[i] + nd : dims[i]] = true;
    groups g = {.nout = 1, .R = 1};
    for (int d = 0; d < nd; d++) {
        if (red[d]) g.R *= sh[d];
        else g.nout *= sh[d];
        if (!red[d]) g.shape[0][g.nd[0]++] = sh[d];
        g.shape[1][g.nd[1]++] = red[d] ? 1 : sh[d];
    }
    g.vals = malloc((size_t)(g.nout * g.R + 1) * sizeof *g.vals);
    int64_t n = kn_numel(x), idx[KN_MAX_DIMS] = {0};
    size_t esz = kn_dtype_size(kn_dtype_of(x));
    const char *base = kn_data(x);
    for (int64_t i = 0; i < n; i++) {  /* C order over x, by a running multi-index */
        int64_t o = 0, j = 0, off = 0;
        for (int d = 0; d < nd; d++) {
            if (red[d]) j = j * sh[d] + idx[d];
            else o = o * sh[d] + idx[d];
            off += idx[d] * st[d];
        }
        g.vals[o * g.R + j] = load(base + off * (int64_t)esz, kn_dtype_of(x));
        for (int d = nd - 1; d >= 0 && ++idx[d] == sh[d]; d--) idx[d] = 0;
    }
    return g;
}

static void compare(rop op, const groups *g, kn_tensor *x, kn_tensor *got, int ndims,
                    bool keepdim, int correction, double rtol, double atol) {
    cr_assert(got, "%s failed: %s", names[op], kn_last_error() ? kn_last_error() : "?");
    kn_dtype dt = kn_dtype_of(x);
    bool integral = dt == KN_I32 || dt == KN_I64 || dt == KN_BOOL;
    kn_dtype expect = op == ARGMAX || op == ARGMIN ? KN_I64
                    : op == SUM && integral ? KN_I64 : op == LSE && integral ? KN_F32 : dt;
    cr_assert_eq(kn_dtype_of(got), expect, "%s: dtype %s, want %s", names[op],
                 kn_dtype_name(kn_dtype_of(got)), kn_dtype_name(expect));
    cr_assert_eq(kn_ndim(got), g->nd[keepdim], "%s: ndim", names[op]);
    for (int d = 0; d < kn_ndim(got); d++)
        cr_assert_eq(kn_shape(got)[d], g->shape[keepdim][d], "%s: dim %d", names[op], d);
    /* f32 sums round at about sqrt(R) ulps of the partial sums. */
    if (op == SUM && g->R > 1) atol *= sqrt((double)g->R);
    for (int64_t i = 0; i < g->nout; i++) {
        double w = ref_values(op, g->vals + i * g->R, g->R, correction), v = at(got, i);
        bool ok = isnan(w) ? isnan(v) : isinf(w) ? v == w
                : op == ARGMAX || op == ARGMIN ? v == w : fabs(v - w) <= atol + rtol * fabs(w);
        cr_assert(ok, "%s over %d dims (keepdim %d): element %lld: got %.9g, want %.9g",
                  names[op], ndims, keepdim, (long long)i, v, w);
    }
}

static void check_op(rop op, kn_tensor *x, const int *dims, int ndims, bool keepdim,
                     int correction, double rtol, double atol) {
    groups g = group(x, dims, ndims);
    kn_tensor *got = run_op(op, x, dims, ndims, keepdim, correction);
    compare(op, &g, x, got, ndims, keepdim, correction, rtol, atol);
    kn_release(got);
    free(g.vals);
}

/* Every op x's dtype allows, over one dim list (argmax/argmin: dims[0]). */
static void check_ops(kn_tensor *x, const int *dims, int ndims, bool keepdim, int correction,
                      double rtol, double atol) {
    groups g = group(x, dims, ndims);
    kn_dtype dt = kn_dtype_of(x);
    for (rop op = SUM; op <= ARGMIN; op++) {
        bool fl = dt == KN_F32 || dt == KN_F64;
        if ((op == MEAN || op == VAR) && !fl) continue;
        if ((op == ARGMAX || op == ARGMIN) && (ndims != 1 || dt == KN_BOOL)) continue;
        kn_tensor *got = run_op(op, x, dims, ndims, keepdim, correction);
        compare(op, &g, x, got, ndims, keepdim, correction, rtol, atol);
        kn_release(got);
    }
    free(g.vals);
}

/* Every reduction over a list of dim lists, keepdim both ways. */
static void check_all_ops(kn_tensor *x, double rtol, double atol) {
    static const int lists[][3] = {{0}, {1}, {2}, {-1}, {-3}, {0, 2}, {2, 0}, {1, 2},
                                   {-1, 0}, {0, 1, 2}};
    static const int lens[] = {1, 1, 1, 1, 1, 2, 2, 2, 2, 3};
    for (int keep = 0; keep < 2; keep++) {
        for (rop op = SUM; op <= LSE; op++) {
            for (size_t l = 0; l < sizeof lens / sizeof *lens; l++)
                check_op(op, x, lists[l], lens[l], keep, 1, rtol, atol);
            check_op(op, x, KN_ALL_DIMS, keep, 1, rtol, atol);
        }
        for (int d = -3; d < 3; d++) {
            check_op(ARGMAX, x, &d, 1, keep, 0, 0, 0);
            check_op(ARGMIN, x, &d, 1, keep, 0, 0, 0);
        }
    }
}

TestSuite(reduce);

Test(reduce, f32_all_ops_and_dims) {
    kn_manual_seed(1);
    kn_tensor *x = kn_randn(KN_SHAPE(4, 5, 6), KN_F32);
    check_all_ops(x, 1e-5, 1e-6);
    kn_release(x);
}

Test(reduce, f64_all_ops_and_dims) {
    kn_manual_seed(2);
    kn_tensor *x = kn_randn(KN_SHAPE(3, 7, 5), KN_F64);
    check_all_ops(x, 1e-12, 1e-13);
    kn_release(x);
}

Test(reduce, var_correction) {
    kn_manual_seed(3);
    kn_tensor *x = kn_randn(KN_SHAPE(6, 9), KN_F64);
    for (int c = -1; c <= 3; c++) {
        check_op(VAR, x, KN_DIMS(1), false, c, 1e-12, 1e-13);
        check_op(VAR, x, KN_DIMS(0), true, c, 1e-12, 1e-13);
    }
    kn_release(x);
    /* N - correction <= 0: divide by 0, like PyTorch: inf, or nan for 0/0. */
    kn_tensor *y = TF32(KN_SHAPE(2), 1, 2);
    kn_tensor *v = kn_var(y, KN_ALL_DIMS, 2, false);
    cr_assert(isinf(kn_item(v)) && kn_item(v) > 0);
    kn_release(v);
    v = kn_var(y, KN_ALL_DIMS, 5, false);
    cr_assert(isinf(kn_item(v)));
    kn_release(v);
    kn_tensor *c = TF32(KN_SHAPE(1), 4);
    v = kn_var(c, KN_ALL_DIMS, 1, false);
    cr_assert(isnan(kn_item(v)), "var of one element with correction 1 is nan");
    kn_release(v);
    v = kn_var(c, KN_ALL_DIMS, 0, false);
    cr_assert_eq(kn_item(v), 0.0);
    kn_release(v);
    kn_release(c);
    kn_release(y);
}

Test(reduce, keepdim_shapes) {
    kn_tensor *x = kn_zeros(KN_SHAPE(2, 3, 4), KN_F32);
    kn_tensor *a = kn_sum(x, KN_DIMS(1), true);
    cr_assert_eq(kn_ndim(a), 3);
    cr_assert(kn_shape(a)[0] == 2 && kn_shape(a)[1] == 1 && kn_shape(a)[2] == 4);
    kn_tensor *b = kn_sum(x, KN_DIMS(-1, 0), false);
    cr_assert_eq(kn_ndim(b), 1);
    cr_assert_eq(kn_shape(b)[0], 3);
    kn_tensor *c = kn_mean(x, KN_ALL_DIMS, true);
    cr_assert_eq(kn_ndim(c), 3);
    cr_assert(kn_shape(c)[0] == 1 && kn_shape(c)[1] == 1 && kn_shape(c)[2] == 1);
    kn_tensor *d = kn_max(x, KN_ALL_DIMS, false);
    cr_assert_eq(kn_ndim(d), 0);
    kn_tensor *e = kn_argmax(x, -2, true);
    cr_assert(kn_ndim(e) == 3 && kn_shape(e)[1] == 1 && kn_dtype_of(e) == KN_I64);
    /* dims == NULL with ndims > 0 also means every dim. */
    kn_tensor *f = kn_sum(x, NULL, 2, false);
    cr_assert_eq(kn_ndim(f), 0);
    kn_release(a); kn_release(b); kn_release(c); kn_release(d); kn_release(e);
    kn_release(f); kn_release(x);
}

/* Transposed and permuted views: read in place (column layout) or copied. */
Test(reduce, non_contiguous_input) {
    kn_manual_seed(4);
    kn_tensor *m = kn_randn(KN_SHAPE(6, 7), KN_F32);
    kn_tensor *t = kn_transpose(m, 0, 1);
    cr_assert(!kn_is_contiguous(t));
    for (rop op = SUM; op <= ARGMIN; op++)
        for (int d = -1; d < 2; d++)
            for (int keep = 0; keep < 2; keep++)
                check_op(op, t, &d, 1, keep, 1, 1e-5, 1e-6);
    check_op(SUM, t, KN_ALL_DIMS, false, 0, 1e-5, 1e-6);
    kn_tensor *x = kn_randn(KN_SHAPE(3, 4, 5), KN_F64);
    kn_tensor *p = kn_transpose(x, 0, 1);  /* [4,3,5] */
    kn_tensor *q = kn_transpose(x, 0, 2);  /* [5,4,3] */
    check_all_ops(p, 1e-12, 1e-13);
    check_all_ops(q, 1e-12, 1e-13);
    kn_release(q); kn_release(p); kn_release(x); kn_release(t); kn_release(m);
}

/* A reduction whose kept dims straddle the reduced ones: [O, R, K] in place. */
Test(reduce, middle_dims_and_column_tiles) {
    kn_manual_seed(5);
    kn_tensor *x = kn_randn(KN_SHAPE(3, 50, 300), KN_F32);  /* K = 300: two tiles */
    for (rop op = SUM; op <= ARGMIN; op++) {
        check_op(op, x, KN_DIMS(1), false, 1, 1e-5, 1e-5);
        check_op(op, x, KN_DIMS(0), true, 1, 1e-5, 1e-5);
    }
    check_op(SUM, x, KN_DIMS(0, 1), false, 0, 1e-5, 1e-5);
    check_op(VAR, x, KN_DIMS(0, 1), false, 1, 1e-5, 1e-5);
    kn_release(x);
}

Test(reduce, integer_and_bool_dtypes) {
    int32_t d32[] = {3, -7, 2, 2147483647, 5, -2147483647 - 1};
    kn_tensor *a = kn_from_data(d32, KN_SHAPE(2, 3), KN_I32);
    for (int keep = 0; keep < 2; keep++)
        for (int d = -2; d < 2; d++) {
            check_op(SUM, a, &d, 1, keep, 0, 0, 0);
            check_op(MAX, a, &d, 1, keep, 0, 0, 0);
            check_op(MIN, a, &d, 1, keep, 0, 0, 0);
            check_op(ARGMAX, a, &d, 1, keep, 0, 0, 0);
            check_op(ARGMIN, a, &d, 1, keep, 0, 0, 0);
            check_op(LSE, a, &d, 1, keep, 0, 1e-6, 0);
        }
    /* i32 sums do not overflow: the result is i64. */
    kn_tensor *s = kn_sum(a, KN_DIMS(1), false);
    cr_assert_eq(kn_dtype_of(s), KN_I64);
    cr_assert_eq(((int64_t *)kn_data(s))[1], 2147483647LL + 5 - 2147483648LL);
    kn_release(s);
    kn_tensor *big = TI64(KN_SHAPE(3), (int64_t)1 << 60, 3, -((int64_t)1 << 60));
    s = kn_sum(big, KN_ALL_DIMS, false);
    cr_assert_eq(*(int64_t *)kn_data(s), 3, "i64 sums are exact");
    kn_release(s);
    s = kn_max(big, KN_ALL_DIMS, false);
    cr_assert_eq(kn_dtype_of(s), KN_I64);
    cr_assert_eq(*(int64_t *)kn_data(s), (int64_t)1 << 60);
    kn_release(s);
    s = kn_argmin(big, 0, false);
    cr_assert_eq(*(int64_t *)kn_data(s), 2);
    kn_release(s);
    uint8_t bd[] = {1, 0, 1, 1, 0, 0};
    kn_tensor *b = kn_from_data(bd, KN_SHAPE(2, 3), KN_BOOL);
    s = kn_sum(b, KN_DIMS(1), false);
    cr_assert_eq(kn_dtype_of(s), KN_I64);
    cr_assert(((int64_t *)kn_data(s))[0] == 2 && ((int64_t *)kn_data(s))[1] == 1);
    kn_release(s);
    s = kn_max(b, KN_DIMS(0), false);
    cr_assert_eq(kn_dtype_of(s), KN_BOOL);
    cr_assert(((uint8_t *)kn_data(s))[0] == 1 && ((uint8_t *)kn_data(s))[1] == 0);
    kn_release(s);
    s = kn_logsumexp(b, KN_ALL_DIMS, false);
    cr_assert_eq(kn_dtype_of(s), KN_F32, "logsumexp of bool is f32, as in PyTorch");
    cr_assert_float_eq(kn_item(s), log(3 * exp(1.0) + 3), 1e-6);
    kn_release(s);
    /* Integer data through the column kernels. */
    int64_t col[40];
    for (int i = 0; i < 40; i++) col[i] = (i * 37) % 11 - 5;
    kn_tensor *c = kn_from_data(col, KN_SHAPE(8, 5), KN_I64);
    for (rop op = SUM; op <= ARGMIN; op++)
        if (op != MEAN && op != VAR && op != LSE) check_op(op, c, KN_DIMS(0), false, 0, 0, 0);
    kn_release(c); kn_release(b); kn_release(big); kn_release(a);
}

Test(reduce, zero_dim_input) {
    kn_tensor *x = kn_scalar(2.5, KN_F32);
    for (int d = -1; d <= 0; d++)
        for (int keep = 0; keep < 2; keep++) {
            kn_tensor *s = kn_sum(x, &d, 1, keep);
            cr_assert(s && kn_ndim(s) == 0 && kn_item(s) == 2.5);
            kn_release(s);
            s = kn_max(x, &d, 1, keep);
            cr_assert(s && kn_ndim(s) == 0 && kn_item(s) == 2.5);
            kn_release(s);
            s = kn_logsumexp(x, &d, 1, keep);
            cr_assert(s && kn_ndim(s) == 0 && kn_item(s) == 2.5);
            kn_release(s);
            s = kn_argmax(x, d, keep);
            cr_assert(s && kn_ndim(s) == 0 && kn_item(s) == 0 && kn_dtype_of(s) == KN_I64);
            kn_release(s);
        }
    kn_tensor *m = kn_mean(x, KN_ALL_DIMS, false);
    cr_assert(m && kn_ndim(m) == 0 && kn_item(m) == 2.5);
    kn_release(m);
    m = kn_var(x, KN_ALL_DIMS, 0, false);
    cr_assert(m && kn_item(m) == 0);
    kn_release(m);
    m = kn_var(x, KN_ALL_DIMS, 1, false);
    cr_assert(m && isnan(kn_item(m)));
    kn_release(m);
    kn_clear_error();
    cr_assert_null(kn_sum(x, KN_DIMS(1), false));
    cr_assert(strstr(kn_last_error(), "kn_sum"), "%s", kn_last_error());
    kn_clear_error();
    cr_assert_null(kn_sum(x, KN_DIMS(0, -1), false), "dim 0 and -1 are the same dim");
    kn_release(x);
}

Test(reduce, empty_input) {
    kn_tensor *x = kn_zeros(KN_SHAPE(0, 3), KN_F32);
    kn_tensor *s = kn_sum(x, KN_DIMS(0), false);
    cr_assert(s && kn_ndim(s) == 1 && kn_shape(s)[0] == 3);
    for (int i = 0; i < 3; i++) cr_assert_eq(at(s, i), 0.0);
    kn_release(s);
    s = kn_sum(x, KN_ALL_DIMS, false);
    cr_assert(s && kn_item(s) == 0);
    kn_release(s);
    s = kn_sum(x, KN_DIMS(1), true);
    cr_assert(s && kn_ndim(s) == 2 && kn_shape(s)[0] == 0 && kn_shape(s)[1] == 1);
    kn_release(s);
    s = kn_mean(x, KN_ALL_DIMS, false);
    cr_assert(s && isnan(kn_item(s)));
    kn_release(s);
    s = kn_var(x, KN_DIMS(0), false, 1);
    cr_assert(s && kn_numel(s) == 3 && isnan(at(s, 0)));
    kn_release(s);
    s = kn_logsumexp(x, KN_DIMS(0), false);
    cr_assert(s && kn_numel(s) == 3 && at(s, 2) == -INFINITY);
    kn_release(s);
    /* max over a non-empty dim of an empty tensor: an empty result. */
    s = kn_max(x, KN_DIMS(1), false);
    cr_assert(s && kn_ndim(s) == 1 && kn_shape(s)[0] == 0);
    kn_release(s);
    s = kn_argmin(x, 1, false);
    cr_assert(s && kn_numel(s) == 0);
    kn_release(s);
    static const char *const ops[] = {"kn_max", "kn_min", "kn_argmax", "kn_argmin"};
    for (int i = 0; i < 4; i++) {
        kn_clear_error();
        kn_tensor *r = i == 0 ? kn_max(x, KN_DIMS(0), false)
                     : i == 1 ? kn_min(x, KN_ALL_DIMS, false)
                     : i == 2 ? kn_argmax(x, 0, false) : kn_argmin(x, -2, true);
        cr_assert_null(r, "%s of an empty dim must fail", ops[i]);
        cr_assert(kn_last_error() && strstr(kn_last_error(), ops[i]), "%s", kn_last_error());
    }
    kn_clear_error();
    kn_tensor *i64 = kn_zeros(KN_SHAPE(0), KN_I64);
    s = kn_sum(i64, KN_ALL_DIMS, false);
    cr_assert(s && kn_dtype_of(s) == KN_I64 && kn_item(s) == 0);
    kn_release(s);
    kn_release(i64);
    kn_release(x);
}

Test(reduce, nan_and_inf) {
    float v[] = {1, NAN, 3, -2, 5, 0, NAN, 7, NAN};
    kn_tensor *x = kn_from_data(v, KN_SHAPE(3, 3), KN_F32);
    for (rop op = SUM; op <= ARGMIN; op++)
        for (int d = 0; d < 2; d++) check_op(op, x, &d, 1, false, 1, 1e-6, 1e-6);
    kn_tensor *m = kn_max(x, KN_ALL_DIMS, false);
    cr_assert(isnan(kn_item(m)));
    kn_release(m);
    m = kn_argmin(x, 1, false);  /* rows: [1,nan,3] [-2,5,0] [nan,7,nan] */
    cr_assert(at(m, 0) == 1 && at(m, 1) == 0 && at(m, 2) == 0);
    kn_release(m);
    m = kn_argmax(x, 0, false);  /* cols: [1,-2,nan] [nan,5,7] [3,0,nan] */
    cr_assert(at(m, 0) == 2 && at(m, 1) == 0 && at(m, 2) == 2);
    kn_release(m);
    /* A NaN late in a long row, past the first block. */
    int64_t n = 20000;
    double *big = calloc((size_t)n, sizeof *big);
    big[15000] = NAN;
    big[19000] = NAN;
    big[100] = 5;
    kn_tensor *y = kn_from_data(big, KN_SHAPE(n), KN_F64);
    m = kn_max(y, KN_ALL_DIMS, false);
    cr_assert(isnan(kn_item(m)));
    kn_release(m);
    m = kn_min(y, KN_ALL_DIMS, false);
    cr_assert(isnan(kn_item(m)));
    kn_release(m);
    m = kn_argmax(y, 0, false);
    cr_assert_eq(kn_item(m), 15000);
    kn_release(m);
    m = kn_argmin(y, 0, false);
    cr_assert_eq(kn_item(m), 15000);
    kn_release(m);
    kn_release(y);
    free(big);
    /* logsumexp: all -inf gives -inf, any +inf gives +inf, no overflow. */
    kn_tensor *a = TF32(KN_SHAPE(2, 3), -INFINITY, -INFINITY, -INFINITY,
                        INFINITY, -INFINITY, 1);
    kn_tensor *l = kn_logsumexp(a, KN_DIMS(1), false);
    cr_assert(at(l, 0) == -INFINITY && at(l, 1) == INFINITY);
    kn_release(l);
    kn_tensor *h = TF32(KN_SHAPE(3), 1000, 1000, -INFINITY);
    l = kn_logsumexp(h, KN_ALL_DIMS, false);
    cr_assert_float_eq(kn_item(l), 1000 + log(2.0), 1e-3);
    kn_release(l);
    kn_release(h);
    kn_release(a);
    kn_release(x);
}

Test(reduce, argmax_ties_first_index) {
    kn_tensor *x = TF32(KN_SHAPE(2, 4), 1, 3, 3, 2, 4, 4, 4, 4);
    kn_tensor *r = kn_argmax(x, 1, false);
    cr_assert(at(r, 0) == 1 && at(r, 1) == 0);
    kn_release(r);
    r = kn_argmin(x, 1, false);
    cr_assert(at(r, 0) == 0 && at(r, 1) == 0);
    kn_release(r);
    kn_tensor *c = TF32(KN_SHAPE(3, 2), 2, 1, 5, 1, 5, 0);  /* columns */
    r = kn_argmax(c, 0, false);
    cr_assert(at(r, 0) == 1 && at(r, 1) == 0);
    kn_release(r);
    r = kn_argmin(c, 0, false);
    cr_assert(at(r, 0) == 0 && at(r, 1) == 2);
    kn_release(r);
    /* Ties across blocks and across threads: the first one wins. */
    int64_t n = 1 << 20;
    kn_tensor *z = kn_zeros(KN_SHAPE(n), KN_F32);
    float *p = kn_data(z);
    p[700000] = 9;
    p[300001] = 9;
    p[900000] = 9;
    p[500000] = -1;
    p[800000] = -1;
    r = kn_argmax(z, 0, false);
    cr_assert_eq(kn_item(r), 300001);
    kn_release(r);
    r = kn_argmin(z, -1, true);
    cr_assert(kn_ndim(r) == 1 && at(r, 0) == 500000);
    kn_release(r);
    kn_tensor *col = kn_zeros(KN_SHAPE(n / 4, 4), KN_I32);
    int32_t *q = kn_data(col);
    q[4 * 200000 + 2] = 3;
    q[4 * 100000 + 2] = 3;
    r = kn_argmax(col, 0, false);
    cr_assert(at(r, 0) == 0 && at(r, 1) == 0 && at(r, 2) == 100000 && at(r, 3) == 0);
    kn_release(r);
    kn_release(col); kn_release(z); kn_release(c); kn_release(x);
}

/* NaNs and ties through every kernel kind: rows (R > 16), short rows and
 * columns, for every op, against the reference. */
Test(reduce, ties_and_nans_every_layout) {
    static const int64_t shapes[][2] = {{6, 37}, {37, 6}, {5, 5}, {3, 300}, {300, 3}};
    for (int s = 0; s < 5; s++) {
        int64_t r = shapes[s][0], c = shapes[s][1], n = r * c;
        float *f = malloc((size_t)n * sizeof *f);
        int32_t *q = malloc((size_t)n * sizeof *q);
        for (int64_t i = 0; i < n; i++) {
            q[i] = (int32_t)((i * 7919) % 5) - 2;          /* many ties */
            f[i] = (float)q[i] * 0.5f;
            if (i % 11 == 3) f[i] = NAN;
        }
        kn_tensor *xf = kn_from_data(f, KN_SHAPE(r, c), KN_F32);
        kn_tensor *xq = kn_from_data(q, KN_SHAPE(r, c), KN_I32);
        kn_tensor *xd = kn_cast(xf, KN_F64);
        for (int d = 0; d < 2; d++)
            for (rop op = SUM; op <= ARGMIN; op++) {
                check_op(op, xf, &d, 1, false, 1, 1e-5, 1e-6);
                check_op(op, xd, &d, 1, true, 1, 1e-12, 1e-13);
                if (op != MEAN && op != VAR) check_op(op, xq, &d, 1, false, 0, 1e-6, 0);
            }
        kn_release(xd); kn_release(xq); kn_release(xf);
        free(q);
        free(f);
    }
}

/* Large inputs cross the parallel and block thresholds. */
Test(reduce, large_sum_accuracy) {
    kn_manual_seed(6);
    int64_t n = 3000000;
    kn_tensor *u = kn_rand(KN_SHAPE(n), KN_F32);
    const float *p = kn_data(u);
    double ref = 0;
    for (int64_t i = 0; i < n; i++) ref += p[i];
    kn_tensor *s = kn_sum(u, KN_ALL_DIMS, false);
    cr_assert(fabs(kn_item(s) - ref) < 1e-6 * fabs(ref), "sum %.9g, want %.9g", kn_item(s), ref);
    kn_release(s);
    kn_tensor *m = kn_mean(u, KN_ALL_DIMS, false);
    cr_assert(fabs(kn_item(m) - ref / (double)n) < 1e-6 * fabs(ref / (double)n));
    kn_release(m);
    kn_tensor *g = kn_randn(KN_SHAPE(n), KN_F32);
    p = kn_data(g);
    double gref = 0, l1 = 0;
    for (int64_t i = 0; i < n; i++) {
        gref += p[i];
        l1 += fabs(p[i]);
    }
    s = kn_sum(g, KN_ALL_DIMS, false);
    cr_assert(fabs(kn_item(s) - gref) < 1e-6 * l1, "sum %.9g, want %.9g", kn_item(s), gref);
    kn_release(s);
    kn_release(g);
    kn_release(u);
}

Test(reduce, large_all_ops) {
    kn_manual_seed(7);
    kn_tensor *x = kn_randn(KN_SHAPE(3, 1000000), KN_F32);  /* few long rows: blocks */
    check_ops(x, KN_DIMS(1), false, 1, 1e-5, 1e-4);
    kn_tensor *y = kn_randn(KN_SHAPE(3000, 1000), KN_F32);  /* many rows; columns */
    for (int d = 0; d < 2; d++) check_ops(y, &d, 1, false, 1, 1e-5, 1e-5);
    kn_tensor *z = kn_randn(KN_SHAPE(600000, 5), KN_F64);  /* narrow, long columns */
    check_ops(z, KN_DIMS(0), false, 1, 1e-10, 1e-10);
    kn_tensor *w = kn_randn(KN_SHAPE(80, 5000), KN_F32);   /* many rows of several blocks */
    check_ops(w, KN_DIMS(1), false, 1, 1e-5, 1e-5);
    kn_tensor *v = kn_randn(KN_SHAPE(70, 10000, 2), KN_F32);  /* many tiles of several blocks */
    check_ops(v, KN_DIMS(1), false, 1, 1e-5, 1e-5);
    kn_tensor *u = kn_randn(KN_SHAPE(3, 2500), KN_F32);    /* wide columns: tiles of 1024 */
    kn_tensor *ut = kn_transpose(u, 0, 1);
    check_ops(ut, KN_DIMS(1), false, 1, 1e-5, 1e-5);
    kn_release(ut); kn_release(u); kn_release(v); kn_release(w);
    kn_release(z); kn_release(y); kn_release(x);
}

static void bits_equal(kn_tensor *a, kn_tensor *b) {
    cr_assert(a && b);
    cr_assert_eq(kn_numel(a), kn_numel(b));
    size_t nb = (size_t)kn_numel(a) * kn_dtype_size(kn_dtype_of(a));
    cr_assert(memcmp(kn_data(a), kn_data(b), nb) == 0, "results differ with thread count");
}

Test(reduce, deterministic_across_thread_counts) {
    kn_manual_seed(8);
    kn_tensor *x = kn_randn(KN_SHAPE(3000000), KN_F32);
    kn_tensor *y = kn_randn(KN_SHAPE(4096, 700), KN_F32);
    kn_tensor *z = kn_randn(KN_SHAPE(20, 100000), KN_F32);  /* 20 rows: mode depends on threads */
    enum { NR = 10 };
    kn_tensor *r[3][NR];
    static const int threads[3] = {0, 1, 3};
    for (int pass = 0; pass < 3; pass++) {
        kn_set_num_threads(threads[pass]);
        r[pass][0] = kn_sum(x, KN_ALL_DIMS, false);
        r[pass][1] = kn_var(x, KN_ALL_DIMS, 1, false);
        r[pass][2] = kn_logsumexp(x, KN_ALL_DIMS, false);
        r[pass][3] = kn_sum(y, KN_DIMS(0), false);
        r[pass][4] = kn_mean(y, KN_DIMS(1), false);
        r[pass][5] = kn_argmax(x, 0, false);
        r[pass][6] = kn_sum(z, KN_DIMS(1), false);
        r[pass][7] = kn_var(z, KN_DIMS(1), 0, false);
        r[pass][8] = kn_logsumexp(z, KN_DIMS(1), false);
        r[pass][9] = kn_var(y, KN_DIMS(0), 1, false);
    }
    kn_set_num_threads(0);
    for (int i = 0; i < NR; i++) {
        bits_equal(r[0][i], r[2][i]);
        kn_release(r[2][i]);
        bits_equal(r[0][i], r[1][i]);
        kn_release(r[0][i]);
        kn_release(r[1][i]);
    }
    kn_release(z);
    kn_release(y);
    kn_release(x);
}

Test(reduce, errors) {
    kn_clear_error();
    cr_assert_null(kn_sum(NULL, KN_ALL_DIMS, false));
    cr_assert(kn_last_error() && strstr(kn_last_error(), "kn_sum"));
    /* A NULL argument keeps the first message. */
    cr_assert_null(kn_argmax(NULL, 0, false));
    cr_assert(strstr(kn_last_error(), "kn_sum"), "%s", kn_last_error());
    kn_clear_error();
    kn_tensor *x = kn_zeros(KN_SHAPE(2, 3), KN_F32);
    cr_assert_null(kn_mean(x, KN_DIMS(2), false));
    cr_assert(strstr(kn_last_error(), "kn_mean") && strstr(kn_last_error(), "2"),
              "%s", kn_last_error());
    kn_clear_error();
    cr_assert_null(kn_max(x, KN_DIMS(-3), false));
    cr_assert(strstr(kn_last_error(), "kn_max"), "%s", kn_last_error());
    kn_clear_error();
    cr_assert_null(kn_sum(x, KN_DIMS(1, -1), false));
    cr_assert(strstr(kn_last_error(), "more than once"), "%s", kn_last_error());
    kn_clear_error();
    cr_assert_null(kn_var(x, KN_DIMS(0, 1, 0), 1, false));
    cr_assert(strstr(kn_last_error(), "kn_var"), "%s", kn_last_error());
    kn_clear_error();
    cr_assert_null(kn_argmin(x, 5, false));
    cr_assert(strstr(kn_last_error(), "kn_argmin"), "%s", kn_last_error());
    kn_clear_error();
    cr_assert_null(kn_sum(x, (const int[]){0}, -1, false));
    cr_assert_not_null(kn_last_error());
    kn_clear_error();
    kn_tensor *i = kn_zeros(KN_SHAPE(4), KN_I32);
    cr_assert_null(kn_mean(i, KN_ALL_DIMS, false));
    cr_assert(strstr(kn_last_error(), "kn_mean") && strstr(kn_last_error(), "i32"),
              "%s", kn_last_error());
    kn_clear_error();
    cr_assert_null(kn_var(i, KN_ALL_DIMS, 1, false));
    cr_assert(strstr(kn_last_error(), "kn_var"), "%s", kn_last_error());
    kn_clear_error();
    kn_tensor *b = kn_zeros(KN_SHAPE(4), KN_BOOL);
    cr_assert_null(kn_argmax(b, 0, false));
    cr_assert(strstr(kn_last_error(), "kn_argmax"), "%s", kn_last_error());
    kn_clear_error();
    kn_release(b);
    kn_release(i);
    kn_release(x);
}

Test(reduce, no_leaks_and_pools) {
    int64_t before = kn_live_tensors();
    kn_manual_seed(9);
    kn_pool_push();
    kn_tensor *x = kn_randn(KN_SHAPE(5, 6, 7), KN_F32);
    kn_tensor *t = kn_transpose(x, 0, 2);
    kn_sum(t, KN_DIMS(1), false);       /* copies through a temporary */
    kn_var(t, KN_DIMS(0, 2), 1, true);
    kn_logsumexp(kn_cast(x, KN_I32), KN_DIMS(2), false);
    kn_max(kn_zeros(KN_SHAPE(0, 2), KN_F32), KN_DIMS(0), false);  /* fails */
    kn_tensor *keep = kn_keep(kn_argmax(t, 1, false));
    kn_pool_pop();
    cr_assert_eq(kn_live_tensors(), before + 1);
    kn_release(keep);
    cr_assert_eq(kn_live_tensors(), before);
    kn_clear_error();
}
