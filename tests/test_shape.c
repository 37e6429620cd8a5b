/* Views and shape ops against plain loops and PyTorch semantics: views share
 * storage, copies do not, strided inputs work, every bad input is an error. */
#include "helpers.h"
#include <stdlib.h>
#include <string.h>

KN_SUITE(shape, KN_NO_SEED);


/* expr's tensor, asserting it is not NULL */
static kn_tensor *ok_(kn_tensor *r, const char *expr) {
    cr_assert(r, "%s failed: %s", expr, kn_last_error() ? kn_last_error() : "?");
    return r;
}
#define OK(expr) ok_((expr), #expr)

/* values 0, 1, 2, ... in C order (bool: i % 2) */
static kn_tensor *seq(kn_dtype dt, const int64_t *shape, int nd) {
    kn_tensor *t = OK(kn_empty(shape, nd, dt));
    char *p = kn_data(t);
    for (int64_t i = 0; i < kn_numel(t); i++) {
        switch (dt) {
        case KN_F32: ((float *)p)[i] = (float)i; break;
        case KN_F64: ((double *)p)[i] = (double)i; break;
        case KN_I32: ((int32_t *)p)[i] = (int32_t)i; break;
        case KN_I64: ((int64_t *)p)[i] = i; break;
        default: ((uint8_t *)p)[i] = (uint8_t)(i % 2); break;
        }
    }
    return t;
}

/* element at a multi-index, read through the strides */
static double el(const kn_tensor *t, const int64_t *ix) {
    int64_t off = 0;
    for (int d = 0; d < kn_ndim(t); d++) off += ix[d] * kn_strides(t)[d];
    const char *p = (const char *)kn_data(t) + off * (int64_t)kn_dtype_size(kn_dtype_of(t));
    switch (kn_dtype_of(t)) {
    case KN_F32: return *(const float *)p;
    case KN_F64: return *(const double *)p;
    case KN_I32: return *(const int32_t *)p;
    case KN_I64: return (double)*(const int64_t *)p;
    default: return *(const uint8_t *)p;
    }
}
#define EL(t, ...) el(t, (const int64_t[]){__VA_ARGS__})

static void assert_shape(const kn_tensor *t, const int64_t *shape, int nd) {
    cr_assert(t);
    cr_assert_eq(kn_ndim(t), nd, "ndim %d != %d", kn_ndim(t), nd);
    for (int d = 0; d < nd; d++)
        cr_assert_eq(kn_shape(t)[d], shape[d], "dim %d: %lld != %lld", d,
                     (long long)kn_shape(t)[d], (long long)shape[d]);
}
#define ASSERT_SHAPE(t, ...) assert_shape(t, KN_SHAPE(__VA_ARGS__))

static void assert_strides(const kn_tensor *t, const int64_t *st, int nd) {
    cr_assert_eq(kn_ndim(t), nd);
    for (int d = 0; d < nd; d++)
        cr_assert_eq(kn_strides(t)[d], st[d], "stride %d: %lld != %lld", d,
                     (long long)kn_strides(t)[d], (long long)st[d]);
}
#define ASSERT_STRIDES(t, ...) assert_strides(t, KN_SHAPE(__VA_ARGS__))

/* offset of view v from base's element 0, in elements */
static int64_t off_from(const kn_tensor *v, const kn_tensor *base) {
    return ((const char *)kn_data(v) - (const char *)kn_data(base)) /
           (int64_t)kn_dtype_size(kn_dtype_of(base));
}

static void assert_values(const kn_tensor *t, const double *want, int64_t n) {
    cr_assert_eq(kn_numel(t), n, "numel %lld != %lld", (long long)kn_numel(t), (long long)n);
    for (int64_t i = 0; i < n; i++)
        cr_assert_eq(at(t, i), want[i], "element %lld: %g != %g", (long long)i, at(t, i), want[i]);
}
#define ASSERT_VALUES(t, ...)                                                     \
    assert_values(t, (const double[]){__VA_ARGS__},                              \
                  (int64_t)(sizeof((double[]){__VA_ARGS__}) / sizeof(double)))

/* ---- transpose / permute ---- */

Test(shape, transpose_is_a_view) {
    kn_tensor *x = seq(KN_F32, KN_SHAPE(2, 3));
    kn_tensor *t = OK(kn_transpose(x, 0, 1));
    ASSERT_SHAPE(t, 3, 2);
    ASSERT_STRIDES(t, 1, 3);
    cr_assert_eq(kn_data(t), kn_data(x));
    cr_assert(!kn_is_contiguous(t));
    for (int64_t i = 0; i < 3; i++)
        for (int64_t j = 0; j < 2; j++) cr_assert_eq(EL(t, i, j), EL(x, j, i));
    ((float *)kn_data(x))[1] = 42;  /* x[0][1] is t[1][0] */
    cr_assert_eq(EL(t, 1, 0), 42);
    kn_tensor *u = OK(kn_transpose(x, -1, -2));
    ASSERT_STRIDES(u, 1, 3);
    kn_tensor *same = OK(kn_transpose(x, 1, 1));
    ASSERT_STRIDES(same, 3, 1);
    kn_tensor *s = OK(kn_scalar(7, KN_I64));
    kn_tensor *st = OK(kn_transpose(s, 0, -1));
    cr_assert_eq(kn_ndim(st), 0);
    cr_assert_eq(kn_item(st), 7);
}

Test(shape, transpose_3d_of_a_slice) {
    kn_tensor *x = seq(KN_I64, KN_SHAPE(4, 3, 5));
    kn_tensor *s = OK(kn_slice(x, 2, 1, 5, 2));       /* [4,3,2] */
    kn_tensor *t = OK(kn_transpose(s, 0, 2));         /* [2,3,4] */
    ASSERT_SHAPE(t, 2, 3, 4);
    ASSERT_STRIDES(t, 2, 5, 15);
    for (int64_t i = 0; i < 2; i++)
        for (int64_t j = 0; j < 3; j++)
            for (int64_t k = 0; k < 4; k++)
                cr_assert_eq(EL(t, i, j, k), (double)(k * 15 + j * 5 + 1 + 2 * i));
}

Test(shape, permute_is_a_view) {
    kn_tensor *x = seq(KN_F64, KN_SHAPE(2, 3, 4));
    kn_tensor *p = OK(kn_permute(x, KN_DIMS(2, 0, 1)));
    ASSERT_SHAPE(p, 4, 2, 3);
    ASSERT_STRIDES(p, 1, 12, 4);
    cr_assert_eq(kn_data(p), kn_data(x));
    for (int64_t a = 0; a < 4; a++)
        for (int64_t b = 0; b < 2; b++)
            for (int64_t c = 0; c < 3; c++) cr_assert_eq(EL(p, a, b, c), EL(x, b, c, a));
    kn_tensor *q = OK(kn_permute(x, KN_DIMS(-1, -3, 1)));  /* negative dims */
    ASSERT_STRIDES(q, 1, 12, 4);
    kn_tensor *id = OK(kn_permute(p, KN_DIMS(1, 2, 0)));   /* back to x */
    ASSERT_SHAPE(id, 2, 3, 4);
    cr_assert(kn_is_contiguous(id));
    ((double *)kn_data(x))[5] = -1;  /* x[0][1][1] */
    cr_assert_eq(EL(p, 1, 0, 1), -1);
    kn_tensor *s = OK(kn_scalar(3, KN_F32));
    cr_assert_eq(kn_ndim(OK(kn_permute(s, NULL, 0))), 0);
}

Test(shape, permute_errors) {
    kn_tensor *x = seq(KN_F32, KN_SHAPE(2, 3, 4));
    EXPECT_ERR(kn_permute(x, KN_DIMS(0, 1)), "kn_permute: 2 dims given for a 3-dim tensor");
    EXPECT_ERR(kn_permute(x, KN_DIMS(0, 1, 1)), "kn_permute: dim 1 appears twice");
    EXPECT_ERR(kn_permute(x, KN_DIMS(0, -2, -2)), "kn_permute: dim -2 appears twice");
    EXPECT_ERR(kn_permute(x, KN_DIMS(0, 1, 3)), "kn_permute: dim 3 out of range");
    EXPECT_ERR(kn_permute(x, NULL, 3), "kn_permute");
    EXPECT_ERR(kn_permute(NULL, KN_DIMS(0)), "kn_permute");
}

Test(shape, transpose_errors) {
    kn_tensor *x = seq(KN_F32, KN_SHAPE(2, 3));
    EXPECT_ERR(kn_transpose(x, 0, 2), "kn_transpose: dim 2 out of range for a 2-dim tensor");
    EXPECT_ERR(kn_transpose(x, -3, 0), "kn_transpose: dim -3");
    EXPECT_ERR(kn_transpose(kn_scalar(1, KN_F32), 0, 1), "kn_transpose");
    EXPECT_ERR(kn_transpose(NULL, 0, 1), "kn_transpose: argument is NULL");
}

/* ---- slice ---- */

/* Python's range of a slice of a length-n list, for reference. */
static int64_t py_slice(int64_t n, int64_t start, int64_t stop, int64_t step, int64_t *out) {
    if (start < 0) start = start + n < 0 ? 0 : start + n;
    else if (start > n) start = n;
    if (stop < 0) stop = stop + n < 0 ? 0 : stop + n;
    else if (stop > n) stop = n;
    int64_t k = 0;
    for (int64_t i = start; i < stop; i += step) {
        out[k++] = i;
        if (step > stop) break;  /* avoids overflow of i += step */
    }
    return k;
}

Test(shape, slice_python_bounds) {
    static const int64_t cases[][3] = {
        {2, 8, 3}, {-3, 100, 1}, {-100, 3, 1}, {5, 2, 1}, {0, 10, 4}, {9, -1, 1}, {-1, 10, 1},
        {10, 20, 1}, {0, -11, 1}, {INT64_MIN, INT64_MAX, 1}, {0, 10, INT64_MAX}, {3, 3, 1},
        {-4, -1, 2}, {1, 10, 9}, {1, 10, 8}, {0, 10, 1},
    };
    kn_tensor *x = seq(KN_I32, KN_SHAPE(10));
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        int64_t want[10];
        int64_t n = py_slice(10, cases[c][0], cases[c][1], cases[c][2], want);
        kn_tensor *s = OK(kn_slice(x, 0, cases[c][0], cases[c][1], cases[c][2]));
        cr_assert_eq(kn_shape(s)[0], n, "case %zu: size %lld != %lld", c,
                     (long long)kn_shape(s)[0], (long long)n);
        for (int64_t i = 0; i < n; i++)
            cr_assert_eq(at(s, i), (double)want[i], "case %zu element %lld", c, (long long)i);
    }
    kn_tensor *s = OK(kn_slice(x, -1, 2, 8, 3));
    ASSERT_SHAPE(s, 2);
    ASSERT_STRIDES(s, 3);
    cr_assert_eq(off_from(s, x), 2);
    ((int32_t *)kn_data(x))[5] = 99;
    ASSERT_VALUES(s, 2, 99);
}

Test(shape, slice_inner_dim_of_transposed) {
    kn_tensor *x = seq(KN_F32, KN_SHAPE(3, 4));
    kn_tensor *t = OK(kn_transpose(x, 0, 1));   /* [4,3], strides [1,4] */
    kn_tensor *s = OK(kn_slice(t, 1, 1, 3, 1)); /* columns 1..2 of t = rows 1..2 of x */
    ASSERT_SHAPE(s, 4, 2);
    ASSERT_STRIDES(s, 1, 4);
    cr_assert_eq(off_from(s, x), 4);
    for (int64_t i = 0; i < 4; i++)
        for (int64_t j = 0; j < 2; j++) cr_assert_eq(EL(s, i, j), (double)((j + 1) * 4 + i));
    kn_tensor *ss = OK(kn_slice(s, 0, 1, 4, 2));  /* slice of a slice */
    ASSERT_SHAPE(ss, 2, 2);
    ASSERT_STRIDES(ss, 2, 4);
    cr_assert_eq(off_from(ss, x), 5);
    ASSERT_VALUES(ss, 5, 9, 7, 11);
    kn_tensor *e = OK(kn_slice(x, 0, 2, 1, 1));  /* empty */
    ASSERT_SHAPE(e, 0, 4);
    cr_assert_eq(kn_numel(e), 0);
}

Test(shape, slice_errors) {
    kn_tensor *x = seq(KN_F32, KN_SHAPE(3, 4));
    EXPECT_ERR(kn_slice(x, 0, 0, 3, 0), "kn_slice: step must be positive (got 0)");
    EXPECT_ERR(kn_slice(x, 0, 3, 0, -1), "kn_slice: step must be positive (got -1)");
    EXPECT_ERR(kn_slice(x, 2, 0, 1, 1), "kn_slice: dim 2 out of range");
    EXPECT_ERR(kn_slice(kn_scalar(1, KN_F32), 0, 0, 1, 1), "kn_slice: cannot slice a 0-dim");
    EXPECT_ERR(kn_slice(NULL, 0, 0, 1, 1), "kn_slice");
}

/* ---- expand / broadcast_to ---- */

Test(shape, expand_is_a_stride0_view) {
    kn_tensor *x = seq(KN_F32, KN_SHAPE(3, 1));
    kn_tensor *e = OK(kn_expand(x, KN_SHAPE(2, 3, 4)));
    ASSERT_SHAPE(e, 2, 3, 4);
    ASSERT_STRIDES(e, 0, 1, 0);
    cr_assert_eq(kn_data(e), kn_data(x));
    for (int64_t i = 0; i < 2; i++)
        for (int64_t j = 0; j < 3; j++)
            for (int64_t k = 0; k < 4; k++) cr_assert_eq(EL(e, i, j, k), (double)j);
    ((float *)kn_data(x))[2] = 8;
    cr_assert_eq(EL(e, 1, 2, 3), 8);
    kn_tensor *k = OK(kn_expand(x, KN_SHAPE(-1, 5)));  /* -1 keeps the size */
    ASSERT_SHAPE(k, 3, 5);
    ASSERT_STRIDES(k, 1, 0);
    kn_tensor *z = OK(kn_expand(x, KN_SHAPE(3, 0)));   /* a 1 may become 0 */
    ASSERT_SHAPE(z, 3, 0);
    kn_tensor *n0 = OK(kn_expand(x, KN_SHAPE(0, 3, 2)));  /* new leading dim of 0 */
    ASSERT_SHAPE(n0, 0, 3, 2);
    kn_tensor *s = OK(kn_scalar(2.5, KN_F64));
    kn_tensor *se = OK(kn_broadcast_to(s, KN_SHAPE(2, 2)));
    ASSERT_STRIDES(se, 0, 0);
    ASSERT_VALUES(se, 2.5, 2.5, 2.5, 2.5);
    /* expanding a transposed (strided) tensor keeps its real strides */
    kn_tensor *t = OK(kn_transpose(seq(KN_I64, KN_SHAPE(1, 3)), 0, 1));  /* [3,1], strides [1,3] */
    kn_tensor *te = OK(kn_broadcast_to(t, KN_SHAPE(3, 2)));
    ASSERT_STRIDES(te, 1, 0);
    ASSERT_VALUES(te, 0, 0, 1, 1, 2, 2);
}

Test(shape, expand_errors) {
    kn_tensor *x = seq(KN_F32, KN_SHAPE(3, 1));
    EXPECT_ERR(kn_expand(x, KN_SHAPE(4, 1)),
               "kn_expand: cannot expand shape [3,1] to [4,1] (dim 0 has size 3");
    EXPECT_ERR(kn_broadcast_to(x, KN_SHAPE(2, 4, 2)), "kn_broadcast_to: cannot expand shape [3,1] to [2,4,2]");
    EXPECT_ERR(kn_expand(x, KN_SHAPE(5)), "kn_expand: cannot expand shape [3,1] to [5] (fewer dims)");
    EXPECT_ERR(kn_expand(x, KN_SHAPE(-1, 3, 2)), "kn_expand: invalid size -1 at dim 0");
    EXPECT_ERR(kn_expand(x, KN_SHAPE(3, -2)), "kn_expand: invalid size -2 at dim 1");
    EXPECT_ERR(kn_expand(x, (const int64_t[9]){1, 1, 1, 1, 1, 1, 1, 3, 1}, 9), "kn_expand: 9 dims");
    EXPECT_ERR(kn_expand(x, NULL, 2), "kn_expand");
    EXPECT_ERR(kn_broadcast_to(NULL, KN_SHAPE(2)), "kn_broadcast_to");
    EXPECT_ERR(kn_expand(x, KN_SHAPE(1LL << 40, 1LL << 40, 3, 1LL << 20)), "too many elements");
}

/* ---- squeeze / unsqueeze ---- */

Test(shape, squeeze_and_unsqueeze) {
    kn_tensor *x = seq(KN_F32, KN_SHAPE(2, 1, 3));
    kn_tensor *s = OK(kn_squeeze(x, 1));
    ASSERT_SHAPE(s, 2, 3);
    ASSERT_STRIDES(s, 3, 1);
    cr_assert_eq(kn_data(s), kn_data(x));
    ASSERT_SHAPE(OK(kn_squeeze(x, -2)), 2, 3);
    kn_tensor *n = OK(kn_squeeze(x, 0));  /* size 2: a no-op view, like PyTorch */
    ASSERT_SHAPE(n, 2, 1, 3);
    cr_assert_neq(n, x);
    ((float *)kn_data(x))[4] = 40;
    cr_assert_eq(EL(n, 1, 0, 1), 40);
    cr_assert_eq(EL(s, 1, 1), 40);
    kn_tensor *sc = OK(kn_squeeze(OK(kn_scalar(1, KN_BOOL)), -1));
    cr_assert_eq(kn_ndim(sc), 0);

    kn_tensor *y = seq(KN_I64, KN_SHAPE(2, 3));
    kn_tensor *u0 = OK(kn_unsqueeze(y, 0));
    ASSERT_SHAPE(u0, 1, 2, 3);
    ASSERT_STRIDES(u0, 6, 3, 1);
    cr_assert(kn_is_contiguous(u0));
    kn_tensor *u1 = OK(kn_unsqueeze(y, 1));
    ASSERT_SHAPE(u1, 2, 1, 3);
    ASSERT_STRIDES(u1, 3, 3, 1);
    kn_tensor *u2 = OK(kn_unsqueeze(y, -1));
    ASSERT_SHAPE(u2, 2, 3, 1);
    ASSERT_STRIDES(u2, 3, 1, 1);
    ASSERT_SHAPE(OK(kn_unsqueeze(y, -3)), 1, 2, 3);
    ASSERT_SHAPE(OK(kn_unsqueeze(y, 2)), 2, 3, 1);
    cr_assert_eq(kn_data(u2), kn_data(y));
    /* of a transposed input: values follow, strides come from the input */
    kn_tensor *t = OK(kn_transpose(y, 0, 1));
    kn_tensor *tu = OK(kn_unsqueeze(t, 1));
    ASSERT_SHAPE(tu, 3, 1, 2);
    for (int64_t i = 0; i < 3; i++)
        for (int64_t j = 0; j < 2; j++) cr_assert_eq(EL(tu, i, 0, j), EL(y, j, i));
    kn_tensor *s0 = OK(kn_unsqueeze(OK(kn_scalar(5, KN_F32)), 0));
    ASSERT_SHAPE(s0, 1);
    cr_assert_eq(at(s0, 0), 5);
    ASSERT_SHAPE(OK(kn_unsqueeze(OK(kn_scalar(5, KN_F32)), -1)), 1);
    kn_tensor *sq = OK(kn_squeeze(u1, 1));  /* round trip */
    ASSERT_STRIDES(sq, 3, 1);
}

Test(shape, squeeze_unsqueeze_errors) {
    kn_tensor *x = seq(KN_F32, KN_SHAPE(2, 3));
    EXPECT_ERR(kn_squeeze(x, 2), "kn_squeeze: dim 2 out of range");
    EXPECT_ERR(kn_squeeze(x, -3), "kn_squeeze");
    EXPECT_ERR(kn_unsqueeze(x, 3), "kn_unsqueeze: dim 3 out of range for inserting into a 2-dim tensor (expected -3..2)");
    EXPECT_ERR(kn_unsqueeze(x, -4), "kn_unsqueeze: dim -4");
    EXPECT_ERR(kn_unsqueeze(OK(kn_zeros(KN_SHAPE(1, 1, 1, 1, 1, 1, 1, 1), KN_F32)), 0),
               "kn_unsqueeze: result would have more than 8 dims");
    EXPECT_ERR(kn_squeeze(NULL, 0), "kn_squeeze");
    EXPECT_ERR(kn_unsqueeze(NULL, 0), "kn_unsqueeze");
}

/* ---- reshape / contiguous ---- */

Test(shape, reshape_contiguous_is_a_view) {
    kn_tensor *x = seq(KN_F32, KN_SHAPE(2, 3, 4));
    kn_tensor *r = OK(kn_reshape(x, KN_SHAPE(4, -1)));
    ASSERT_SHAPE(r, 4, 6);
    ASSERT_STRIDES(r, 6, 1);
    cr_assert_eq(kn_data(r), kn_data(x));
    ((float *)kn_data(x))[23] = -5;
    cr_assert_eq(EL(r, 3, 5), -5);
    kn_tensor *f = OK(kn_reshape(x, KN_SHAPE(-1)));
    ASSERT_SHAPE(f, 24);
    cr_assert_eq(kn_data(f), kn_data(x));
    kn_tensor *o = OK(kn_reshape(x, KN_SHAPE(1, 2, 1, 12, 1)));
    ASSERT_SHAPE(o, 1, 2, 1, 12, 1);
    cr_assert(kn_is_contiguous(o));
    kn_tensor *s = OK(kn_scalar(4, KN_I32));
    kn_tensor *s11 = OK(kn_reshape(s, KN_SHAPE(1, 1)));
    ASSERT_SHAPE(s11, 1, 1);
    cr_assert_eq(kn_data(s11), kn_data(s));
    kn_tensor *back = OK(kn_reshape(s11, NULL, 0));
    cr_assert_eq(kn_ndim(back), 0);
    cr_assert_eq(kn_item(back), 4);
}

Test(shape, reshape_strided_view_or_copy) {
    kn_tensor *x = seq(KN_F64, KN_SHAPE(2, 3, 4));
    /* [3,2,4] transposed: splitting the last dim is a view */
    kn_tensor *t = OK(kn_transpose(x, 0, 1));
    kn_tensor *v = OK(kn_reshape(t, KN_SHAPE(3, 2, 2, 2)));
    ASSERT_STRIDES(v, 4, 12, 2, 1);
    cr_assert_eq(kn_data(v), kn_data(x));
    /* merging dims 1 and 2 of t (strides 12 and 1) needs a copy */
    kn_tensor *m = OK(kn_reshape(t, KN_SHAPE(3, 8)));
    cr_assert_neq(kn_data(m), kn_data(x));
    for (int64_t i = 0; i < 24; i++) cr_assert_eq(at(m, i), at(t, i));
    /* merging the transposed pair needs a copy */
    kn_tensor *c = OK(kn_reshape(t, KN_SHAPE(6, 4)));
    cr_assert(kn_is_contiguous(c));
    cr_assert_neq(kn_data(c), kn_data(x));
    for (int64_t i = 0; i < 24; i++) cr_assert_eq(at(c, i), at(t, i));
    ((double *)kn_data(x))[0] = 100;  /* the copy does not see it */
    cr_assert_eq(at(c, 0), 0);
    cr_assert_eq(at(v, 0), 100);
    /* every-other row keeps rows dense: a view with the row stride kept */
    kn_tensor *y = seq(KN_I32, KN_SHAPE(4, 6));
    kn_tensor *rows = OK(kn_slice(y, 0, 0, 4, 2));
    kn_tensor *rv = OK(kn_reshape(rows, KN_SHAPE(2, 2, 3)));
    ASSERT_STRIDES(rv, 12, 3, 1);
    cr_assert_eq(kn_data(rv), kn_data(y));
    ASSERT_VALUES(rv, 0, 1, 2, 3, 4, 5, 12, 13, 14, 15, 16, 17);
    /* flattening the row slice needs a copy */
    kn_tensor *rc = OK(kn_reshape(rows, KN_SHAPE(12)));
    cr_assert(kn_is_contiguous(rc));
    ASSERT_VALUES(rc, 0, 1, 2, 3, 4, 5, 12, 13, 14, 15, 16, 17);
    /* size-1 dims with odd strides do not block a view */
    kn_tensor *col = OK(kn_transpose(seq(KN_F32, KN_SHAPE(1, 3)), 0, 1));  /* [3,1], strides [1,3] */
    kn_tensor *cv = OK(kn_reshape(col, KN_SHAPE(3)));
    ASSERT_STRIDES(cv, 1);
    /* expanded input: a view while the stride-0 dim stays whole */
    kn_tensor *e = OK(kn_expand(seq(KN_F32, KN_SHAPE(3)), KN_SHAPE(2, 3)));
    kn_tensor *ev = OK(kn_reshape(e, KN_SHAPE(2, 1, 3)));
    ASSERT_STRIDES(ev, 0, 3, 1);
    kn_tensor *ec = OK(kn_reshape(e, KN_SHAPE(6)));
    ASSERT_STRIDES(ec, 1);
    ASSERT_VALUES(ec, 0, 1, 2, 0, 1, 2);
}

/* Every reshape, view or copy, must hold the input's values in C order. */
Test(shape, reshape_matches_c_order_over_many_layouts) {
    kn_tensor *x = seq(KN_F32, KN_SHAPE(4, 3, 2, 2));
    static const int perms[][4] = {{0, 1, 2, 3}, {1, 0, 2, 3}, {0, 2, 1, 3}, {3, 2, 1, 0},
                                   {0, 1, 3, 2}, {2, 3, 0, 1}};
    static const int64_t shapes[][4] = {{48, 1, 1, 1}, {4, 12, 1, 1}, {2, 2, 12, 1},
                                        {12, 4, 1, 1}, {3, 4, 4, 1}, {2, 24, 1, 1},
                                        {1, 48, 1, 1}, {6, 8, 1, 1}};
    static const int shape_nd[] = {1, 2, 3, 2, 3, 2, 2, 2};
    int views = 0, copies = 0;
    for (size_t p = 0; p < sizeof perms / sizeof *perms; p++) {
        for (int sl = 0; sl < 2; sl++) {
            kn_tensor *v = OK(kn_permute(x, perms[p], 4));
            if (sl) v = OK(kn_slice(v, 0, 0, kn_shape(v)[0], 1));  /* same view, new object */
            int64_t n = kn_numel(v);
            float want[48];
            cr_assert_eq(kn_copy_out(v, want, sizeof want), 0);
            for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
                kn_tensor *r = OK(kn_reshape(v, shapes[s], shape_nd[s]));
                cr_assert_eq(kn_numel(r), n);
                for (int64_t i = 0; i < n; i++)
                    cr_assert_eq(at(r, i), want[i], "perm %zu shape %zu element %lld", p, s,
                                 (long long)i);
                if (kn_data(r) == kn_data(v) && !kn_is_contiguous(v)) views++;
                if (kn_data(r) != kn_data(v)) copies++;
            }
        }
    }
    cr_assert(views > 0 && copies > 0, "views %d copies %d", views, copies);
}

Test(shape, reshape_empty_and_errors) {
    kn_tensor *z = OK(kn_zeros(KN_SHAPE(0, 3), KN_F32));
    ASSERT_SHAPE(OK(kn_reshape(z, KN_SHAPE(3, 0))), 3, 0);
    ASSERT_SHAPE(OK(kn_reshape(z, KN_SHAPE(-1, 3))), 0, 3);
    ASSERT_SHAPE(OK(kn_reshape(z, KN_SHAPE(2, -1, 3))), 2, 0, 3);
    EXPECT_ERR(kn_reshape(z, KN_SHAPE(0, -1)), "kn_reshape: cannot infer -1 in shape [0,-1]");
    kn_tensor *x = seq(KN_F32, KN_SHAPE(2, 3));
    EXPECT_ERR(kn_reshape(x, KN_SHAPE(4, 2)),
               "kn_reshape: cannot reshape a tensor of shape [2,3] (6 elements) into shape [4,2]");
    EXPECT_ERR(kn_reshape(x, KN_SHAPE(4, -1)), "shape [2,3] (6 elements) into shape [4,-1]");
    EXPECT_ERR(kn_reshape(x, KN_SHAPE(-1, -1)), "kn_reshape: only one -1 allowed in shape [-1,-1]");
    EXPECT_ERR(kn_reshape(x, KN_SHAPE(-2, -3)), "kn_reshape: negative size in shape [-2,-3]");
    EXPECT_ERR(kn_reshape(x, (const int64_t[9]){1, 1, 1, 1, 1, 1, 1, 2, 3}, 9), "kn_reshape: 9 dims");
    EXPECT_ERR(kn_reshape(x, NULL, 2), "kn_reshape");
    EXPECT_ERR(kn_reshape(x, KN_SHAPE(1LL << 40, 1LL << 40)), "kn_reshape");
    EXPECT_ERR(kn_reshape(NULL, KN_SHAPE(6)), "kn_reshape");
}

Test(shape, contiguous_retains_or_copies) {
    kn_tensor *x = seq(KN_I64, KN_SHAPE(3, 4));
    kn_tensor *c = OK(kn_contiguous(x));
    cr_assert_eq(c, x);  /* a second reference, owned by the pool */
    cr_assert_eq(kn_data(c), kn_data(x));
    kn_tensor *t = OK(kn_transpose(x, 0, 1));
    kn_tensor *ct = OK(kn_contiguous(t));
    cr_assert_neq(ct, t);
    cr_assert(kn_is_contiguous(ct));
    ASSERT_STRIDES(ct, 3, 1);
    for (int64_t i = 0; i < 4; i++)
        for (int64_t j = 0; j < 3; j++) cr_assert_eq(EL(ct, i, j), (double)(j * 4 + i));
    ((int64_t *)kn_data(x))[1] = 77;
    cr_assert_eq(EL(ct, 1, 0), 1);  /* a real copy */
    kn_tensor *e = OK(kn_expand(OK(kn_scalar(3, KN_BOOL)), KN_SHAPE(2, 2)));
    kn_tensor *ce = OK(kn_contiguous(e));
    cr_assert_neq(ce, e);
    ASSERT_VALUES(ce, 1, 1, 1, 1);
    kn_tensor *em = OK(kn_slice(t, 0, 1, 1, 1));  /* empty */
    kn_tensor *cem = OK(kn_contiguous(em));
    ASSERT_SHAPE(cem, 0, 3);
    cr_assert(kn_is_contiguous(cem));
    EXPECT_ERR(kn_contiguous(NULL), "kn_contiguous");
}

/* ---- cat / stack ---- */

/* Reference cat along dim of 2-D inputs via at(), into a flat double array. */
static void ref_cat2(kn_tensor *const *xs, int n, int dim, double *out) {
    int64_t R = dim == 0 ? 0 : kn_shape(xs[0])[0], C = dim == 1 ? 0 : kn_shape(xs[0])[1];
    for (int i = 0; i < n; i++) {
        if (dim == 0) R += kn_shape(xs[i])[0];
        else C += kn_shape(xs[i])[1];
    }
    int64_t base = 0;
    for (int i = 0; i < n; i++) {
        int64_t r = kn_shape(xs[i])[0], c = kn_shape(xs[i])[1];
        for (int64_t a = 0; a < r; a++)
            for (int64_t b = 0; b < c; b++) {
                int64_t oa = dim == 0 ? base + a : a, ob = dim == 1 ? base + b : b;
                out[oa * C + ob] = EL(xs[i], a, b);
            }
        base += dim == 0 ? r : c;
    }
    (void)R;
}

Test(shape, cat_dims_0_1_neg1) {
    kn_tensor *a = seq(KN_F32, KN_SHAPE(2, 3));
    kn_tensor *b = OK(kn_add_scalar(seq(KN_F32, KN_SHAPE(2, 3)), 10));
    kn_tensor *c0 = OK(kn_cat((kn_tensor *[]){a, b}, 2, 0));
    ASSERT_SHAPE(c0, 4, 3);
    ASSERT_VALUES(c0, 0, 1, 2, 3, 4, 5, 10, 11, 12, 13, 14, 15);
    kn_tensor *c1 = OK(kn_cat((kn_tensor *[]){a, b}, 2, 1));
    ASSERT_SHAPE(c1, 2, 6);
    ASSERT_VALUES(c1, 0, 1, 2, 10, 11, 12, 3, 4, 5, 13, 14, 15);
    kn_tensor *cm = OK(kn_cat((kn_tensor *[]){a, b, a}, 3, -1));
    ASSERT_SHAPE(cm, 2, 9);
    ASSERT_VALUES(cm, 0, 1, 2, 10, 11, 12, 0, 1, 2, 3, 4, 5, 13, 14, 15, 3, 4, 5);
    kn_tensor *one = OK(kn_cat(&a, 1, 0));
    cr_assert_neq(kn_data(one), kn_data(a));  /* a copy, even of one tensor */
    assert_equal(one, a);
    cr_assert_eq(kn_dtype_of(c0), KN_F32);
}

Test(shape, cat_strided_inputs_and_promotion) {
    kn_tensor *x = seq(KN_F64, KN_SHAPE(3, 2));
    kn_tensor *t = OK(kn_transpose(x, 0, 1));                      /* [2,3] strided f64 */
    kn_tensor *s = OK(kn_slice(seq(KN_I32, KN_SHAPE(2, 8)), 1, 1, 8, 3)); /* [2,3] strided i32 */
    kn_tensor *e = OK(kn_expand(OK(kn_from_data((const uint8_t[]){1, 0, 1}, KN_SHAPE(1, 3), KN_BOOL)),
                                KN_SHAPE(2, 3)));                  /* [2,3] stride-0 bool */
    kn_tensor *xs[] = {t, s, e};
    for (int dim = -2; dim < 2; dim++) {
        kn_tensor *c = OK(kn_cat(xs, 3, dim));
        cr_assert_eq(kn_dtype_of(c), KN_F64);
        double want[18];
        ref_cat2(xs, 3, dim < 0 ? dim + 2 : dim, want);
        assert_values(c, want, 18);
    }
    kn_tensor *ib[] = {s, e};
    kn_tensor *c = OK(kn_cat(ib, 2, 1));
    cr_assert_eq(kn_dtype_of(c), KN_I32);
    ASSERT_VALUES(c, 1, 4, 7, 1, 0, 1, 9, 12, 15, 1, 0, 1);
    kn_tensor *fl[] = {OK(kn_cast(s, KN_I64)), OK(kn_cast(seq(KN_F32, KN_SHAPE(1, 3)), KN_F32))};
    kn_tensor *cf = OK(kn_cat(fl, 2, 0));
    cr_assert_eq(kn_dtype_of(cf), KN_F32);
    ASSERT_VALUES(cf, 1, 4, 7, 9, 12, 15, 0, 1, 2);
    kn_tensor *bb[] = {e, e};
    cr_assert_eq(kn_dtype_of(OK(kn_cat(bb, 2, 0))), KN_BOOL);
}

Test(shape, cat_skips_legacy_empty_and_handles_empty) {
    kn_tensor *a = seq(KN_F32, KN_SHAPE(2, 3));
    kn_tensor *e1 = OK(kn_zeros(KN_SHAPE(0), KN_F64));
    kn_tensor *c = OK(kn_cat((kn_tensor *[]){e1, a, e1}, 3, 1));
    ASSERT_SHAPE(c, 2, 3);
    cr_assert_eq(kn_dtype_of(c), KN_F64);  /* skipped tensors still promote */
    ASSERT_VALUES(c, 0, 1, 2, 3, 4, 5);
    kn_tensor *all = OK(kn_cat((kn_tensor *[]){e1, e1}, 2, 0));
    ASSERT_SHAPE(all, 0);
    kn_tensor *z = OK(kn_zeros(KN_SHAPE(2, 0), KN_F32));
    kn_tensor *c2 = OK(kn_cat((kn_tensor *[]){z, a, z}, 3, 1));
    ASSERT_SHAPE(c2, 2, 3);
    ASSERT_VALUES(c2, 0, 1, 2, 3, 4, 5);
    kn_tensor *c3 = OK(kn_cat((kn_tensor *[]){z, z}, 2, 0));
    ASSERT_SHAPE(c3, 4, 0);
    kn_tensor *v1 = seq(KN_I64, KN_SHAPE(3));
    ASSERT_VALUES(OK(kn_cat((kn_tensor *[]){v1, e1, v1}, 3, 0)), 0, 1, 2, 0, 1, 2);
}

/* Big enough for the threaded memcpy path, and its strided twin. */
Test(shape, cat_large_matches_reference) {
    kn_tensor *a = seq(KN_F32, KN_SHAPE(300, 1000));
    kn_tensor *b = seq(KN_F32, KN_SHAPE(300, 7));
    kn_tensor *c = seq(KN_F32, KN_SHAPE(300, 513));
    kn_tensor *xs[] = {a, b, c};
    kn_tensor *r = OK(kn_cat(xs, 3, 1));
    ASSERT_SHAPE(r, 300, 1520);
    const float *p = kn_data(r);
    for (int64_t i = 0; i < 300; i++)
        for (int64_t j = 0; j < 1520; j++) {
            float want = j < 1000 ? (float)(i * 1000 + j) : j < 1007 ? (float)(i * 7 + j - 1000)
                                                                       : (float)(i * 513 + j - 1007);
            if (p[i * 1520 + j] != want)
                cr_assert_fail("(%lld,%lld): %g != %g", (long long)i, (long long)j, p[i * 1520 + j], want);
        }
    kn_tensor *at0 = OK(kn_cat((kn_tensor *[]){a, a}, 2, 0));
    ASSERT_SHAPE(at0, 600, 1000);
    cr_assert_eq(memcmp(kn_data(at0), kn_data(a), 300000 * 4), 0);
    cr_assert_eq(memcmp((float *)kn_data(at0) + 300000, kn_data(a), 300000 * 4), 0);
    kn_tensor *ta = OK(kn_transpose(seq(KN_F32, KN_SHAPE(1000, 300)), 0, 1));
    kn_tensor *rt = OK(kn_cat((kn_tensor *[]){ta, b}, 2, -1));
    ASSERT_SHAPE(rt, 300, 1007);
    for (int64_t i = 0; i < 300; i += 7)
        for (int64_t j = 0; j < 1007; j++)
            cr_assert_eq(EL(rt, i, j), j < 1000 ? (double)(j * 300 + i) : (double)(i * 7 + j - 1000));
}

Test(shape, cat_errors) {
    kn_tensor *a = seq(KN_F32, KN_SHAPE(2, 3)), *b = seq(KN_F32, KN_SHAPE(2, 4));
    EXPECT_ERR(kn_cat((kn_tensor *[]){a, b}, 2, 0),
               "kn_cat: tensor 1 has shape [2,4] but tensor 0 has [2,3] (dims other than 0 must match)");
    kn_tensor *c = seq(KN_F32, KN_SHAPE(2, 3, 1));
    EXPECT_ERR(kn_cat((kn_tensor *[]){a, c}, 2, 0), "kn_cat: tensor 1 has shape [2,3,1] but tensor 0 has [2,3]");
    kn_tensor *s = OK(kn_scalar(1, KN_F32));
    EXPECT_ERR(kn_cat((kn_tensor *[]){s, s}, 2, 0), "kn_cat: tensor 0 is 0-dim");
    EXPECT_ERR(kn_cat((kn_tensor *[]){a, s}, 2, 0), "kn_cat: tensor 1 has shape [] but tensor 0 has [2,3]");
    EXPECT_ERR(kn_cat((kn_tensor *[]){a, b}, 2, 2), "kn_cat: dim 2 out of range");
    EXPECT_ERR(kn_cat((kn_tensor *[]){a}, 0, 0), "kn_cat: needs at least one tensor (got 0)");
    EXPECT_ERR(kn_cat(NULL, 2, 0), "kn_cat");
    EXPECT_ERR(kn_cat((kn_tensor *[]){a, NULL}, 2, 0), "kn_cat: argument is NULL");
}

Test(shape, stack_dims_and_promotion) {
    kn_tensor *a = seq(KN_F32, KN_SHAPE(2, 3));
    kn_tensor *b = OK(kn_transpose(seq(KN_I64, KN_SHAPE(3, 2)), 0, 1));  /* strided i64 */
    kn_tensor *xs[] = {a, b};
    for (int dim = -3; dim <= 2; dim++) {
        kn_tensor *r = OK(kn_stack(xs, 2, dim));
        int d = dim < 0 ? dim + 3 : dim;
        int64_t want_shape[3] = {2, 3, 0};
        memmove(want_shape + d + 1, want_shape + d, (size_t)(2 - d) * sizeof *want_shape);
        want_shape[d] = 2;
        assert_shape(r, want_shape, 3);
        cr_assert_eq(kn_dtype_of(r), KN_F32);
        for (int64_t k = 0; k < 2; k++)
            for (int64_t i = 0; i < 2; i++)
                for (int64_t j = 0; j < 3; j++) {
                    int64_t ix[3], o = 0;
                    for (int q = 0; q < 3; q++) ix[q] = q == d ? k : (o++ == 0 ? i : j);
                    cr_assert_eq(el(r, ix), EL(xs[k], i, j), "dim %d", dim);
                }
    }
    kn_tensor *s0 = OK(kn_scalar(1, KN_I32)), *s1 = OK(kn_scalar(2.5, KN_F64));
    kn_tensor *ss = OK(kn_stack((kn_tensor *[]){s0, s1, s0}, 3, 0));
    ASSERT_SHAPE(ss, 3);
    cr_assert_eq(kn_dtype_of(ss), KN_F64);
    ASSERT_VALUES(ss, 1, 2.5, 1);
    kn_tensor *c = seq(KN_F32, KN_SHAPE(2, 3));  /* same dtype, dense: one-element segments */
    kn_tensor *cs = OK(kn_stack((kn_tensor *[]){c, OK(kn_add_scalar(c, 10))}, 2, -1));
    ASSERT_SHAPE(cs, 2, 3, 2);
    ASSERT_VALUES(cs, 0, 10, 1, 11, 2, 12, 3, 13, 4, 14, 5, 15);
    kn_tensor *e = OK(kn_zeros(KN_SHAPE(0), KN_F32));  /* [0] is not skipped by stack */
    ASSERT_SHAPE(OK(kn_stack((kn_tensor *[]){e, e}, 2, 0)), 2, 0);
    kn_tensor *big = seq(KN_F64, KN_SHAPE(200, 300));
    kn_tensor *bs = OK(kn_stack((kn_tensor *[]){big, big}, 2, 1));
    ASSERT_SHAPE(bs, 200, 2, 300);
    for (int64_t i = 0; i < 200; i += 13)
        for (int64_t j = 0; j < 300; j++)
            cr_assert_eq(EL(bs, i, 1, j), (double)(i * 300 + j));
}

Test(shape, stack_errors) {
    kn_tensor *a = seq(KN_F32, KN_SHAPE(2, 3)), *b = seq(KN_F32, KN_SHAPE(3, 2));
    EXPECT_ERR(kn_stack((kn_tensor *[]){a, b}, 2, 0),
               "kn_stack: tensor 1 has shape [3,2] but tensor 0 has [2,3] (all must match)");
    EXPECT_ERR(kn_stack((kn_tensor *[]){a, a}, 2, 3), "kn_stack: dim 3 out of range for inserting into a 2-dim tensor (expected -3..2)");
    EXPECT_ERR(kn_stack((kn_tensor *[]){a, a}, 2, -4), "kn_stack: dim -4");
    EXPECT_ERR(kn_stack((kn_tensor *[]){a}, 0, 0), "kn_stack: needs at least one tensor");
    EXPECT_ERR(kn_stack(NULL, 1, 0), "kn_stack");
    EXPECT_ERR(kn_stack((kn_tensor *[]){NULL}, 1, 0), "kn_stack");
    kn_tensor *m = OK(kn_zeros(KN_SHAPE(1, 1, 1, 1, 1, 1, 1, 1), KN_F32));
    EXPECT_ERR(kn_stack((kn_tensor *[]){m}, 1, 0), "kn_stack: result would have more than 8 dims");
}

/* ---- gather / index_select ---- */

/* Reference gather for 2-D x/index over dim via el(). */
static void ref_gather2(const kn_tensor *x, int dim, const kn_tensor *idx, double *out) {
    int64_t R = kn_shape(idx)[0], C = kn_shape(idx)[1];
    for (int64_t i = 0; i < R; i++)
        for (int64_t j = 0; j < C; j++) {
            int64_t v = (int64_t)EL(idx, i, j);
            out[i * C + j] = dim == 0 ? EL(x, v, j) : EL(x, i, v);
        }
}

Test(shape, gather_against_loops) {
    kn_tensor *x = seq(KN_F32, KN_SHAPE(3, 4));
    kn_tensor *i1 = TI64(KN_SHAPE(2, 3), 3, 0, 1, 2, 2, 0);
    kn_tensor *g1 = OK(kn_gather(x, 1, i1));
    ASSERT_SHAPE(g1, 2, 3);
    cr_assert_eq(kn_dtype_of(g1), KN_F32);
    ASSERT_VALUES(g1, 3, 0, 1, 6, 6, 4);
    ASSERT_VALUES(OK(kn_gather(x, -1, i1)), 3, 0, 1, 6, 6, 4);
    kn_tensor *i0 = TI64(KN_SHAPE(2, 4), 2, 0, 1, 2, 0, 0, 2, 1);
    ASSERT_VALUES(OK(kn_gather(x, 0, i0)), 8, 1, 6, 11, 0, 1, 10, 7);
    /* strided x and strided i32 index, every dtype */
    kn_dtype dts[] = {KN_F32, KN_F64, KN_I32, KN_I64, KN_BOOL};
    kn_tensor *idx[2] = {
        OK(kn_transpose(OK(kn_cast(TI64(KN_SHAPE(3, 2), 3, 0, 1, 3, 2, 2), KN_I32)), 0, 1)),
        OK(kn_transpose(OK(kn_cast(TI64(KN_SHAPE(3, 2), 4, 0, 1, 3, 2, 2), KN_I32)), 0, 1)),
    };
    for (size_t k = 0; k < sizeof dts / sizeof *dts; k++) {
        kn_tensor *xt = OK(kn_transpose(seq(dts[k], KN_SHAPE(5, 4)), 0, 1));  /* [4,5] */
        for (int dim = 0; dim < 2; dim++) {
            kn_tensor *g = OK(kn_gather(xt, dim, idx[dim]));
            ASSERT_SHAPE(g, 2, 3);
            cr_assert_eq(kn_dtype_of(g), dts[k]);
            double want[6];
            ref_gather2(xt, dim, idx[dim], want);
            assert_values(g, want, 6);
        }
    }
}

Test(shape, gather_0dim_empty_and_large) {
    kn_tensor *s = OK(kn_scalar(9, KN_F64));
    kn_tensor *g = OK(kn_gather(s, 0, OK(kn_scalar(0, KN_I64))));
    cr_assert_eq(kn_ndim(g), 0);
    cr_assert_eq(kn_item(g), 9);
    ASSERT_VALUES(OK(kn_gather(s, 0, TI64(KN_SHAPE(1), 0))), 9);
    kn_tensor *v = seq(KN_I64, KN_SHAPE(4));
    ASSERT_VALUES(OK(kn_gather(v, 0, OK(kn_scalar(2, KN_I64)))), 2);
    kn_tensor *x = seq(KN_F32, KN_SHAPE(3, 4));
    kn_tensor *ge = OK(kn_gather(x, 1, OK(kn_zeros(KN_SHAPE(3, 0), KN_I64))));
    ASSERT_SHAPE(ge, 3, 0);
    /* large: rows of a [512,300] f32 gathered along dim 1 in reverse */
    kn_tensor *big = seq(KN_F32, KN_SHAPE(512, 300));
    kn_tensor *idx = OK(kn_empty(KN_SHAPE(512, 600), KN_I64));
    int64_t *ip = kn_data(idx);
    for (int64_t i = 0; i < 512 * 600; i++) ip[i] = (i * 7919) % 300;
    kn_tensor *gb = OK(kn_gather(big, 1, idx));
    const float *gp = kn_data(gb);
    for (int64_t i = 0; i < 512; i++)
        for (int64_t j = 0; j < 600; j++)
            if (gp[i * 600 + j] != (float)(i * 300 + ip[i * 600 + j]))
                cr_assert_fail("(%lld,%lld)", (long long)i, (long long)j);
    /* an out-of-range index deep inside a big threaded gather */
    ip[512 * 600 - 3] = 300;
    EXPECT_ERR(kn_gather(big, 1, idx), "kn_gather: index 300 is out of range for dim 1 with size 300 (expected 0..299)");
}

Test(shape, gather_errors) {
    kn_tensor *x = seq(KN_F32, KN_SHAPE(3, 4));
    EXPECT_ERR(kn_gather(x, 1, TI64(KN_SHAPE(1, 2), 1, 4)),
               "kn_gather: index 4 is out of range for dim 1 with size 4 (expected 0..3)");
    EXPECT_ERR(kn_gather(x, 0, TI64(KN_SHAPE(1, 2), 0, -1)), "kn_gather: index -1 is out of range for dim 0 with size 3");
    EXPECT_ERR(kn_gather(x, 1, TF32(KN_SHAPE(1, 1), 0)), "kn_gather: index must be i64 or i32 (got f32)");
    EXPECT_ERR(kn_gather(x, 1, TI64(KN_SHAPE(2), 0, 1)), "kn_gather: index of shape [2] does not fit input of shape [3,4]");
    EXPECT_ERR(kn_gather(x, 1, TI64(KN_SHAPE(4, 1), 0, 0, 0, 0)), "kn_gather: index of shape [4,1] does not fit input of shape [3,4] along dim 1");
    EXPECT_ERR(kn_gather(x, 2, TI64(KN_SHAPE(1, 1), 0)), "kn_gather: dim 2 out of range");
    EXPECT_ERR(kn_gather(NULL, 0, x), "kn_gather");
    EXPECT_ERR(kn_gather(x, 0, NULL), "kn_gather");
}

Test(shape, index_select_against_loops) {
    kn_tensor *idx = TI64(KN_SHAPE(5), 2, 0, 2, 1, 0);
    kn_dtype dts[] = {KN_F32, KN_F64, KN_I32, KN_I64, KN_BOOL};
    for (size_t k = 0; k < sizeof dts / sizeof *dts; k++) {
        /* [3,40]: dim 0 rows are >= 64 bytes for 4/8-byte types (memcpy path) */
        kn_tensor *x = seq(dts[k], KN_SHAPE(3, 40));
        kn_tensor *xt = OK(kn_transpose(seq(dts[k], KN_SHAPE(40, 3)), 0, 1));  /* strided [3,40] */
        kn_tensor *srcs[] = {x, xt};
        for (int s = 0; s < 2; s++) {
            kn_tensor *r0 = OK(kn_index_select(srcs[s], 0, idx));
            ASSERT_SHAPE(r0, 5, 40);
            cr_assert_eq(kn_dtype_of(r0), dts[k]);
            for (int64_t i = 0; i < 5; i++)
                for (int64_t j = 0; j < 40; j++)
                    cr_assert_eq(EL(r0, i, j), EL(srcs[s], (int64_t)at(idx, i), j));
            kn_tensor *i1 = TI64(KN_SHAPE(4), 39, 0, 7, 7);
            kn_tensor *r1 = OK(kn_index_select(srcs[s], -1, i1));
            ASSERT_SHAPE(r1, 3, 4);
            for (int64_t i = 0; i < 3; i++)
                for (int64_t j = 0; j < 4; j++)
                    cr_assert_eq(EL(r1, i, j), EL(srcs[s], i, (int64_t)at(i1, j)));
        }
    }
    /* strided i32 index */
    kn_tensor *ii = OK(kn_slice(OK(kn_cast(TI64(KN_SHAPE(4), 1, 9, 0, 9), KN_I32)), 0, 0, 4, 2));
    kn_tensor *x = seq(KN_F32, KN_SHAPE(2, 3, 20));
    kn_tensor *r = OK(kn_index_select(x, 1, ii));
    ASSERT_SHAPE(r, 2, 2, 20);
    for (int64_t a = 0; a < 2; a++)
        for (int64_t j = 0; j < 20; j++) {
            cr_assert_eq(EL(r, a, 0, j), EL(x, a, 1, j));
            cr_assert_eq(EL(r, a, 1, j), EL(x, a, 0, j));
        }
}

Test(shape, index_select_edge_cases) {
    kn_tensor *x = seq(KN_F64, KN_SHAPE(3, 4));
    kn_tensor *r = OK(kn_index_select(x, 0, OK(kn_scalar(2, KN_I64))));  /* 0-dim index */
    ASSERT_SHAPE(r, 1, 4);
    ASSERT_VALUES(r, 8, 9, 10, 11);
    kn_tensor *e = OK(kn_index_select(x, 1, OK(kn_zeros(KN_SHAPE(0), KN_I32))));
    ASSERT_SHAPE(e, 3, 0);
    kn_tensor *s = OK(kn_scalar(4, KN_I32));
    kn_tensor *rs = OK(kn_index_select(s, 0, TI64(KN_SHAPE(1), 0)));
    cr_assert_eq(kn_ndim(rs), 0);
    cr_assert_eq(kn_item(rs), 4);
    /* large contiguous rows, threaded memcpy path */
    kn_tensor *big = seq(KN_F32, KN_SHAPE(64, 1024));
    kn_tensor *bi = OK(kn_empty(KN_SHAPE(4096), KN_I64));
    int64_t *bp = kn_data(bi);
    for (int64_t i = 0; i < 4096; i++) bp[i] = (i * 37) % 64;
    kn_tensor *rb = OK(kn_index_select(big, 0, bi));
    const float *rp = kn_data(rb);
    for (int64_t i = 0; i < 4096; i++)
        if (memcmp(rp + i * 1024, (const float *)kn_data(big) + bp[i] * 1024, 4096))
            cr_assert_fail("row %lld", (long long)i);
}

Test(shape, index_select_errors) {
    kn_tensor *x = seq(KN_F32, KN_SHAPE(3, 2));
    EXPECT_ERR(kn_index_select(x, 0, TI64(KN_SHAPE(2), 0, 3)),
               "kn_index_select: index 3 is out of range for dim 0 with size 3 (expected 0..2)");
    EXPECT_ERR(kn_index_select(x, 1, TI64(KN_SHAPE(2), -1, 0)), "kn_index_select: index -1 is out of range for dim 1");
    EXPECT_ERR(kn_index_select(x, 0, TI64(KN_SHAPE(1, 1), 0)), "kn_index_select: index must be 0-dim or 1-D (got shape [1,1])");
    EXPECT_ERR(kn_index_select(x, 0, TF64(KN_SHAPE(1), 0)), "kn_index_select: index must be i64 or i32 (got f64)");
    EXPECT_ERR(kn_index_select(x, 2, TI64(KN_SHAPE(1), 0)), "kn_index_select: dim 2 out of range");
    EXPECT_ERR(kn_index_select(OK(kn_scalar(1, KN_F32)), 0, TI64(KN_SHAPE(2), 0, 0)),
               "kn_index_select: a 0-dim input takes exactly one index (got 2)");
    EXPECT_ERR(kn_index_select(OK(kn_scalar(1, KN_F32)), 0, TI64(KN_SHAPE(1), 1)), "kn_index_select: index 1");
    EXPECT_ERR(kn_index_select(NULL, 0, x), "kn_index_select");
    EXPECT_ERR(kn_index_select(x, 0, NULL), "kn_index_select");
}

/* ---- one_hot ---- */
Test(shape, one_hot_against_loops) {
    kn_tensor *t = TI64(KN_SHAPE(5), 0, 2, 1, 2, 0);
    kn_tensor *r = OK(kn_one_hot(t, 3, KN_F32));
    ASSERT_SHAPE(r, 5, 3);
    cr_assert_eq(kn_dtype_of(r), KN_F32);
    ASSERT_VALUES(r, 1, 0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 1, 1, 0, 0);
    /* i32 targets of any rank (a transposed view), other dtypes */
    kn_tensor *t2 = kn_transpose(kn_cast(TI64(KN_SHAPE(2, 3), 3, 0, 1, 1, 2, 3), KN_I32), 0, 1);
    for (kn_dtype dt = KN_F32; dt < KN_DTYPE_COUNT; dt++) {
        kn_tensor *r2 = OK(kn_one_hot(t2, 4, dt));
        ASSERT_SHAPE(r2, 3, 2, 4);
        cr_assert_eq(kn_dtype_of(r2), dt);
        for (int64_t i = 0; i < 3; i++)
            for (int64_t j = 0; j < 2; j++)
                for (int64_t c = 0; c < 4; c++)
                    cr_assert_eq(at(r2, (i * 2 + j) * 4 + c), at(t2, i * 2 + j) == c ? 1.0 : 0.0,
                                 "%s [%lld,%lld,%lld]", kn_dtype_name(dt), (long long)i, (long long)j, (long long)c);
    }
    kn_tensor *s = OK(kn_one_hot(OK(kn_scalar(1, KN_I64)), 2, KN_F64));  /* 0-dim target */
    ASSERT_SHAPE(s, 2);
    ASSERT_VALUES(s, 0, 1);
    ASSERT_SHAPE(OK(kn_one_hot(OK(kn_zeros(KN_SHAPE(0), KN_I64)), 0, KN_F32)), 0, 0);
}

Test(shape, one_hot_errors) {
    EXPECT_ERR(kn_one_hot(TI64(KN_SHAPE(3), 0, 3, 1), 3, KN_F32),
               "kn_one_hot: class 3 at element 1 is out of range for 3 classes");
    EXPECT_ERR(kn_one_hot(TI64(KN_SHAPE(2), 0, -1), 3, KN_F32), "kn_one_hot: class -1 at element 1");
    EXPECT_ERR(kn_one_hot(TF64(KN_SHAPE(1), 0), 3, KN_F32), "kn_one_hot: index must be i64 or i32 (got f64)");
    EXPECT_ERR(kn_one_hot(TI64(KN_SHAPE(1), 0), -1, KN_F32), "kn_one_hot: num_classes is -1");
    EXPECT_ERR(kn_one_hot(TI64(KN_SHAPE(1), 0), 2, (kn_dtype)99), "kn_one_hot: unknown dtype 99");
    EXPECT_ERR(kn_one_hot(NULL, 2, KN_F32), "kn_one_hot");
}

Test(shape, null_keeps_first_error) {
    kn_tensor *x = seq(KN_F32, KN_SHAPE(2, 3));
    kn_tensor *r = kn_contiguous(kn_transpose(kn_unsqueeze(kn_reshape(x, KN_SHAPE(5)), 0), 0, 1));
    cr_assert_null(r);
    cr_assert(strstr(kn_last_error(), "kn_reshape: cannot reshape"), "%s", kn_last_error());
    kn_tensor *g = kn_gather(kn_slice(x, 0, 0, 1, 0), 0, x);
    cr_assert_null(g);
    cr_assert(strstr(kn_last_error(), "kn_slice: step"), "%s", kn_last_error());
}

/* The views and copies record autograd nodes; the rules live in core/derivatives.c. */
Test(shape, ops_record_for_autograd) {
    kn_tensor *a = OK(kn_set_requires_grad(seq(KN_F64, KN_SHAPE(2, 3)), true));
    kn_tensor *t = OK(kn_transpose(a, 0, 1));                 /* t[i][j] = a[j][i] */
    kn_tensor *s = OK(kn_slice(t, 0, 0, 3, 2));               /* s[k][j] = a[j][2k] */
    kn_tensor *is = OK(kn_index_select(a, 1, TI64(KN_SHAPE(2), 1, 1)));
    kn_tensor *c = OK(kn_stack((kn_tensor *[]){s, OK(kn_reshape(is, KN_SHAPE(2, 2)))}, 2, 0));
    cr_assert(kn_requires_grad(t) && kn_requires_grad(s) && kn_requires_grad(c));
    cr_assert(!kn_is_leaf(c));
    cr_assert_eq(kn_backward(c, seq(KN_F64, KN_SHAPE(2, 2, 2))), 0, "%s", kn_last_error());
    ASSERT_VALUES(kn_grad(a), 0, 9, 2, 1, 13, 3);
    kn_no_grad_begin();
    cr_assert(!kn_requires_grad(OK(kn_unsqueeze(a, 0))));
    kn_no_grad_end();
    cr_assert(!kn_requires_grad(OK(kn_expand(seq(KN_F64, KN_SHAPE(1)), KN_SHAPE(3)))));
}
