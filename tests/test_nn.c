/* matmul, linear, softmax, log_softmax and layer_norm against plain loops in
 * double, on contiguous and strided inputs, edge shapes and every error. */
#include "helpers.h"
#include "../backends/cpu/onednn.h"
#include <math.h>
#include <string.h>

KN_SUITE(nn, 1234);


/* Random values of dtype dt (integers in [-9, 9]). */
static kn_tensor *rnd(const int64_t *shape, int ndim, kn_dtype dt) {
    if (dt == KN_F32 || dt == KN_F64) return kn_randn(shape, ndim, dt);
    kn_tensor *r = kn_mul_scalar(kn_rand(shape, ndim, KN_F64), 19);
    return kn_cast(kn_sub_scalar(r, 9), dt);
}

/* C-order flat index of idx in shape, with size-1 dims broadcast. */
static int64_t flat(const int64_t *shape, int nd, const int64_t *idx) {
    int64_t f = 0;
    for (int d = 0; d < nd; d++) f = f * shape[d] + (shape[d] == 1 ? 0 : idx[d]);
    return f;
}

/* torch.matmul written out: promote 1-D operands, broadcast batch, loop. */
static kn_tensor *ref_matmul(const kn_tensor *a, const kn_tensor *b) {
    int na = kn_ndim(a), nb = kn_ndim(b);
    int64_t as[KN_MAX_DIMS + 1], bs[KN_MAX_DIMS + 1];
    int an = na == 1 ? 2 : na, bn = nb == 1 ? 2 : nb;
    if (na == 1) as[0] = 1, as[1] = kn_shape(a)[0];
    else memcpy(as, kn_shape(a), (size_t)na * sizeof(int64_t));
    if (nb == 1) bs[0] = kn_shape(b)[0], bs[1] = 1;
    else memcpy(bs, kn_shape(b), (size_t)nb * sizeof(int64_t));
    int nbat = (an > bn ? an : bn) - 2;
    int64_t bat[KN_MAX_DIMS], M = as[an - 2], K = as[an - 1], N = bs[bn - 1];
    for (int d = 0; d < nbat; d++) {
        int ia = d - (nbat - (an - 2)), ib = d - (nbat - (bn - 2));
        int64_t x = ia < 0 ? 1 : as[ia], y = ib < 0 ? 1 : bs[ib];
        bat[d] = x == 1 ? y : x;
    }
    int64_t nbatch = 1;
    for (int d = 0; d < nbat; d++) nbatch *= bat[d];
    double *out = calloc((size_t)(nbatch * M * N + 1), sizeof(double));
    for (int64_t q = 0; q < nbatch; q++) {
        int64_t bi[KN_MAX_DIMS], r = q, ia[KN_MAX_DIMS + 1], ib[KN_MAX_DIMS + 1];
        for (int d = nbat - 1; d >= 0; d--) bi[d] = r % bat[d], r /= bat[d];
        for (int d = 0; d < an - 2; d++) ia[d] = bi[d + nbat - (an - 2)];
        for (int d = 0; d < bn - 2; d++) ib[d] = bi[d + nbat - (bn - 2)];
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < N; j++) {
                double acc = 0;
                for (int64_t k = 0; k < K; k++) {
                    ia[an - 2] = i, ia[an - 1] = k, ib[bn - 2] = k, ib[bn - 1] = j;
                    acc += at(a, flat(as, an, ia)) * at(b, flat(bs, bn, ib));
                }
                out[(q * M + i) * N + j] = acc;
            }
    }
    int64_t os[KN_MAX_DIMS];
    int on = nbat;
    memcpy(os, bat, (size_t)nbat * sizeof(int64_t));
    if (na > 1) os[on++] = M;
    if (nb > 1) os[on++] = N;
    kn_tensor *t = kn_from_data(out, os, on, KN_F64);
    free(out);
    return t;
}

static void check_matmul(kn_tensor *a, kn_tensor *b, kn_dtype want_dt, double tol) {
    kn_tensor *got = kn_matmul(a, b);
    cr_assert(got, "kn_matmul failed: %s", kn_last_error());
    cr_assert_eq(kn_dtype_of(got), want_dt, "dtype %s", kn_dtype_name(kn_dtype_of(got)));
    cr_assert(kn_is_contiguous(got));
    assert_close(got, ref_matmul(a, b), tol, tol);
}

static kn_tensor *T(kn_tensor *x) { return kn_transpose(x, -1, -2); }

/* ---- matmul ---- */

Test(nn, matmul_2d_every_dtype) {
    for (int dt = KN_F32; dt <= KN_I64; dt++) {
        kn_tensor *a = rnd(KN_SHAPE(5, 7), dt), *b = rnd(KN_SHAPE(7, 3), dt);
        check_matmul(a, b, dt, dt == KN_F32 ? 1e-5 : 1e-13);
    }
    kn_tensor *a = TF32(KN_SHAPE(2, 3), 1, 2, 3, 4, 5, 6);
    kn_tensor *b = TF32(KN_SHAPE(3, 2), 7, 8, 9, 10, 11, 12);
    assert_close(kn_matmul(a, b), TF64(KN_SHAPE(2, 2), 58, 64, 139, 154), 0, 0);
}

Test(nn, matmul_vectors) {
    kn_tensor *u = TF32(KN_SHAPE(3), 1, 2, 3), *v = TF32(KN_SHAPE(3), 4, 5, 6);
    kn_tensor *d = kn_matmul(u, v);
    cr_assert(d);
    cr_assert_eq(kn_ndim(d), 0);
    cr_assert_eq(kn_item(d), 32);
    for (int dt = KN_F32; dt <= KN_I64; dt++) {
        double tol = dt == KN_F32 ? 1e-5 : 1e-13;
        check_matmul(rnd(KN_SHAPE(6), dt), rnd(KN_SHAPE(6), dt), dt, tol);        /* dot */
        check_matmul(rnd(KN_SHAPE(4, 6), dt), rnd(KN_SHAPE(6), dt), dt, tol);     /* mat-vec */
        check_matmul(rnd(KN_SHAPE(6), dt), rnd(KN_SHAPE(6, 5), dt), dt, tol);     /* vec-mat */
        check_matmul(rnd(KN_SHAPE(6), dt), rnd(KN_SHAPE(2, 6, 5), dt), dt, tol);  /* vec-batch */
        check_matmul(rnd(KN_SHAPE(3, 2, 4, 6), dt), rnd(KN_SHAPE(6), dt), dt, tol);
    }
    /* strided and broadcast (stride-0) vectors */
    kn_tensor *big = rnd(KN_SHAPE(12), KN_F32);
    kn_tensor *s = kn_slice(big, 0, 0, 12, 2);
    check_matmul(s, s, KN_F32, 1e-5);
    check_matmul(rnd(KN_SHAPE(3, 6), KN_F32), s, KN_F32, 1e-5);
    check_matmul(s, rnd(KN_SHAPE(6, 2), KN_F32), KN_F32, 1e-5);
    kn_tensor *e = kn_expand(kn_scalar(2, KN_F32), KN_SHAPE(6));
    check_matmul(e, s, KN_F32, 1e-5);
    check_matmul(rnd(KN_SHAPE(2, 6), KN_F64), e, KN_F64, 1e-13);
}

Test(nn, matmul_batched_broadcast) {
    kn_tensor *a = rnd(KN_SHAPE(2, 1, 3, 4), KN_F32), *b = rnd(KN_SHAPE(5, 4, 6), KN_F32);
    kn_tensor *c = kn_matmul(a, b);
    cr_assert(c);
    cr_assert_eq(kn_ndim(c), 4);
    int64_t want[4] = {2, 5, 3, 6};
    for (int d = 0; d < 4; d++) cr_assert_eq(kn_shape(c)[d], want[d]);
    check_matmul(a, b, KN_F32, 1e-5);
    check_matmul(rnd(KN_SHAPE(3, 4), KN_F32), rnd(KN_SHAPE(2, 4, 5), KN_F32), KN_F32, 1e-5);
    /* x [B,T,K] @ w [K,N]: the stacked single-gemm path, and its f64 form */
    check_matmul(rnd(KN_SHAPE(2, 3, 4), KN_F32), rnd(KN_SHAPE(4, 5), KN_F32), KN_F32, 1e-5);
    check_matmul(rnd(KN_SHAPE(2, 3, 4), KN_F64), rnd(KN_SHAPE(4, 5), KN_F64), KN_F64, 1e-13);
    check_matmul(rnd(KN_SHAPE(2, 3, 1, 4), KN_F32), rnd(KN_SHAPE(4, 5), KN_F32), KN_F32, 1e-5);
    check_matmul(rnd(KN_SHAPE(2, 1, 3, 4), KN_F32), rnd(KN_SHAPE(1, 3, 4, 2), KN_F32), KN_F32, 1e-5);
    check_matmul(rnd(KN_SHAPE(4, 2, 3), KN_I64), rnd(KN_SHAPE(4, 3, 2), KN_I64), KN_I64, 0);
    /* batch dims that broadcast through expand (stride 0) and slices */
    kn_tensor *x = kn_expand(rnd(KN_SHAPE(1, 3, 4), KN_F32), KN_SHAPE(5, 3, 4));
    check_matmul(x, rnd(KN_SHAPE(4, 2), KN_F32), KN_F32, 1e-5);
    check_matmul(x, rnd(KN_SHAPE(5, 4, 2), KN_F32), KN_F32, 1e-5);
    kn_tensor *y = kn_slice(rnd(KN_SHAPE(6, 3, 4), KN_F32), 0, 0, 6, 2);
    check_matmul(y, rnd(KN_SHAPE(4, 2), KN_F32), KN_F32, 1e-5);
    check_matmul(rnd(KN_SHAPE(2, 2, 3, 4), KN_F32), kn_expand(rnd(KN_SHAPE(4, 5), KN_F32),
                 KN_SHAPE(2, 4, 5)), KN_F32, 1e-5);
}

Test(nn, matmul_transposed_and_strided) {
    for (int dt = KN_F32; dt <= KN_I64; dt++) {
        double tol = dt == KN_F32 ? 1e-5 : 1e-13;
        kn_tensor *a = rnd(KN_SHAPE(6, 5), dt), *b = rnd(KN_SHAPE(4, 6), dt);
        check_matmul(T(a), T(b), dt, tol);                     /* both column-major */
        check_matmul(T(a), rnd(KN_SHAPE(6, 3), dt), dt, tol);
        check_matmul(rnd(KN_SHAPE(3, 6), dt), T(b), dt, tol);
        /* batched transposes */
        kn_tensor *ab = rnd(KN_SHAPE(2, 6, 5), dt), *bb = rnd(KN_SHAPE(2, 4, 6), dt);
        check_matmul(T(ab), T(bb), dt, tol);
        kn_tensor *p = kn_permute(rnd(KN_SHAPE(5, 2, 6), dt), KN_DIMS(1, 0, 2));  /* [2,5,6] */
        check_matmul(p, T(bb), dt, tol);
        /* leading-dim gaps: column slices of wider matrices */
        kn_tensor *wide = rnd(KN_SHAPE(7, 12), dt), *wide2 = rnd(KN_SHAPE(9, 10), dt);
        kn_tensor *as = kn_slice(wide, 1, 2, 9, 1);             /* [7,7], ld 12 */
        kn_tensor *bs = kn_slice(kn_slice(wide2, 0, 1, 8, 1), 1, 3, 8, 1); /* [7,5], ld 10 */
        check_matmul(as, bs, dt, tol);
        check_matmul(T(bs), T(as), dt, tol);
        /* neither row- nor column-major: copied */
        kn_tensor *odd = kn_slice(kn_slice(rnd(KN_SHAPE(8, 14), dt), 0, 0, 8, 2), 1, 0, 14, 2);
        check_matmul(odd, rnd(KN_SHAPE(7, 3), dt), dt, tol);
        check_matmul(rnd(KN_SHAPE(2, 4), dt), odd, dt, tol);
        kn_tensor *rowb = kn_expand(rnd(KN_SHAPE(1, 5), dt), KN_SHAPE(4, 5)); /* stride-0 rows */
        check_matmul(rnd(KN_SHAPE(3, 4), dt), rowb, dt, tol);
        check_matmul(T(rowb), rnd(KN_SHAPE(4, 2), dt), dt, tol);
    }
}

Test(nn, matmul_larger_sizes) {
    /* crosses the f64 kernel's 128 x 256 blocks and splits over threads */
    check_matmul(rnd(KN_SHAPE(67, 300), KN_F64), rnd(KN_SHAPE(300, 270), KN_F64), KN_F64, 1e-12);
    check_matmul(T(rnd(KN_SHAPE(300, 67), KN_F64)), T(rnd(KN_SHAPE(270, 300), KN_F64)), KN_F64,
                 1e-12);
    check_matmul(rnd(KN_SHAPE(64, 200), KN_F32), rnd(KN_SHAPE(200, 96), KN_F32), KN_F32, 1e-4);
    check_matmul(T(rnd(KN_SHAPE(200, 64), KN_F32)), rnd(KN_SHAPE(200, 96), KN_F32), KN_F32, 1e-4);
}

Test(nn, matmul_f64_sums_in_k_order) {
    /* our f64 kernel adds a*b to 0 in k order: equal to the plain loop */
    kn_tensor *a = rnd(KN_SHAPE(9, 150), KN_F64), *b = rnd(KN_SHAPE(150, 11), KN_F64);
    kn_tensor *c = kn_matmul(a, b);
    for (int64_t i = 0; i < 9; i++)
        for (int64_t j = 0; j < 11; j++) {
            double acc = 0;
            for (int64_t k = 0; k < 150; k++) acc += at(a, i * 150 + k) * at(b, k * 11 + j);
            cr_assert_eq(at(c, i * 11 + j), acc, "(%lld,%lld)", (long long)i, (long long)j);
        }
}

Test(nn, matmul_mixed_dtypes) {
    kn_tensor *a32 = rnd(KN_SHAPE(3, 4), KN_F32), *b64 = rnd(KN_SHAPE(4, 2), KN_F64);
    check_matmul(a32, b64, KN_F64, 1e-13);
    check_matmul(rnd(KN_SHAPE(3, 4), KN_I32), rnd(KN_SHAPE(4, 2), KN_F32), KN_F32, 1e-5);
    check_matmul(rnd(KN_SHAPE(3, 4), KN_I32), rnd(KN_SHAPE(4, 2), KN_I64), KN_I64, 0);
    check_matmul(rnd(KN_SHAPE(4), KN_I64), rnd(KN_SHAPE(4, 2), KN_F64), KN_F64, 1e-13);
}

Test(nn, matmul_integer_wraps) {
    kn_tensor *a = kn_full(KN_SHAPE(1, 2), 65536, KN_I32), *b = kn_full(KN_SHAPE(2, 1), 65536, KN_I32);
    kn_tensor *c = kn_matmul(a, b);  /* 2 * 2^32 wraps to 0 in i32 */
    cr_assert(c);
    cr_assert_eq(at(c, 0), 0);
    kn_tensor *d = kn_matmul(kn_cast(a, KN_I64), kn_cast(b, KN_I64));
    cr_assert_eq(at(d, 0), 8589934592.0);
}

Test(nn, matmul_empty_shapes) {
    for (int dt = KN_F32; dt <= KN_I64; dt++) {
        kn_tensor *c = kn_matmul(kn_zeros(KN_SHAPE(3, 0), dt), kn_zeros(KN_SHAPE(0, 4), dt));
        assert_close(c, kn_zeros(KN_SHAPE(3, 4), KN_F64), 0, 0);  /* K = 0: zeros */
        kn_tensor *d = kn_matmul(kn_zeros(KN_SHAPE(0), dt), kn_zeros(KN_SHAPE(0), dt));
        cr_assert_eq(kn_ndim(d), 0);
        cr_assert_eq(at(d, 0), 0);
        c = kn_matmul(kn_zeros(KN_SHAPE(2, 3, 0), dt), kn_zeros(KN_SHAPE(0, 4), dt));
        assert_close(c, kn_zeros(KN_SHAPE(2, 3, 4), KN_F64), 0, 0);
        c = kn_matmul(kn_zeros(KN_SHAPE(0, 5), dt), rnd(KN_SHAPE(5, 4), dt));
        cr_assert(c);
        cr_assert_eq(kn_shape(c)[0], 0);
        cr_assert_eq(kn_shape(c)[1], 4);
        c = kn_matmul(rnd(KN_SHAPE(2, 5), dt), kn_zeros(KN_SHAPE(5, 0), dt));
        cr_assert_eq(kn_numel(c), 0);
        cr_assert_eq(kn_shape(c)[0], 2);
        c = kn_matmul(kn_zeros(KN_SHAPE(0, 2, 5), dt), rnd(KN_SHAPE(3, 1, 5, 4), dt));
        cr_assert(c);
        cr_assert_eq(kn_ndim(c), 4);
        cr_assert_eq(kn_shape(c)[0], 3);
        cr_assert_eq(kn_shape(c)[1], 0);
        cr_assert_eq(kn_numel(c), 0);
    }
}

Test(nn, matmul_errors) {
    kn_tensor *a = kn_zeros(KN_SHAPE(64, 784), KN_F32), *b = kn_zeros(KN_SHAPE(128, 10), KN_F32);
    EXPECT_ERR(kn_matmul(a, b),
               "kn_matmul: shapes [64,784] and [128,10] cannot be multiplied (784 != 128)");
    EXPECT_ERR(kn_matmul(kn_zeros(KN_SHAPE(3), KN_F32), kn_zeros(KN_SHAPE(4), KN_F32)),
               "kn_matmul: shapes [3] and [4] cannot be multiplied (3 != 4)");
    EXPECT_ERR(kn_matmul(kn_zeros(KN_SHAPE(2, 3), KN_F32), kn_zeros(KN_SHAPE(4), KN_F32)),
               "kn_matmul: shapes [2,3] and [4] cannot be multiplied (3 != 4)");
    EXPECT_ERR(kn_matmul(kn_zeros(KN_SHAPE(3), KN_F32), kn_zeros(KN_SHAPE(2, 4, 5), KN_F32)),
               "kn_matmul: shapes [3] and [2,4,5] cannot be multiplied (3 != 4)");
    EXPECT_ERR(kn_matmul(kn_scalar(1, KN_F32), kn_zeros(KN_SHAPE(3), KN_F32)),
               "kn_matmul: both arguments need at least 1 dim (got shapes [] and [3])");
    EXPECT_ERR(kn_matmul(kn_zeros(KN_SHAPE(3), KN_F32), kn_scalar(1, KN_F32)),
               "kn_matmul: both arguments need at least 1 dim");
    EXPECT_ERR(kn_matmul(kn_zeros(KN_SHAPE(2, 3, 4), KN_F32), kn_zeros(KN_SHAPE(5, 4, 6), KN_F32)),
               "kn_matmul: batch dims of shapes [2,3,4] and [5,4,6] cannot be broadcast");
    EXPECT_ERR(kn_matmul(kn_zeros(KN_SHAPE(2, 2), KN_BOOL), kn_zeros(KN_SHAPE(2, 2), KN_BOOL)),
               "kn_matmul: dtype bool is not supported");
    EXPECT_ERR(kn_matmul(NULL, b), "kn_matmul: argument is NULL");
    EXPECT_ERR(kn_matmul(a, NULL), "kn_matmul: argument is NULL");
    /* a NULL argument keeps the first message */
    kn_clear_error();
    cr_assert_null(kn_matmul(kn_matmul(a, b), b));
    cr_assert(strstr(kn_last_error(), "(784 != 128)"), "%s", kn_last_error());
}

/* ---- the gemm wrappers themselves ---- */

Test(nn, gemm_beta_zero_ignores_c_and_beta_one_accumulates) {
    float A[6] = {1, 2, 3, 4, 5, 6}, B[6] = {1, 0, 0, 1, 1, 1}, C[4];
    for (int i = 0; i < 4; i++) C[i] = NAN;
    cr_assert_eq(kn__sgemm("t", false, false, 2, 2, 3, A, 3, B, 2, C, 2, 0.0f), 0);
    float want[4] = {4, 5, 10, 11};
    for (int i = 0; i < 4; i++) cr_assert_eq(C[i], want[i], "C[%d] = %g", i, C[i]);
    cr_assert_eq(kn__sgemm("t", false, false, 2, 2, 3, A, 3, B, 2, C, 2, 1.0f), 0);
    for (int i = 0; i < 4; i++) cr_assert_eq(C[i], 2 * want[i]);
    double Ad[6] = {1, 2, 3, 4, 5, 6}, Bt[6] = {1, 0, 1, 0, 1, 1}, Cd[4];  /* B given as [N,K] */
    for (int i = 0; i < 4; i++) Cd[i] = NAN;
    cr_assert_eq(kn__dgemm("t", false, true, 2, 2, 3, Ad, 3, Bt, 3, Cd, 2, 0.0), 0);
    for (int i = 0; i < 4; i++) cr_assert_eq(Cd[i], want[i]);
    double At[6] = {1, 4, 2, 5, 3, 6};  /* A given as [K,M] */
    cr_assert_eq(kn__dgemm("t", true, true, 2, 2, 3, At, 2, Bt, 3, Cd, 2, 1.0), 0);
    for (int i = 0; i < 4; i++) cr_assert_eq(Cd[i], 2 * want[i]);
    int64_t Ai[2] = {3, 4}, Bi[2] = {5, 6}, Ci[1] = {100};
    cr_assert_eq(kn__gemm_i64("t", false, false, 1, 1, 2, Ai, 2, Bi, 1, Ci, 1, 1), 0);
    cr_assert_eq(Ci[0], 139);
    float Ck[2] = {NAN, NAN};  /* K = 0 */
    cr_assert_eq(kn__sgemm("t", false, false, 1, 2, 0, A, 1, B, 2, Ck, 2, 0.0f), 0);
    cr_assert(Ck[0] == 0 && Ck[1] == 0);
}

/* ---- linear ---- */

/* y[r, o] = sum_i x[r, i] w[o, i] + b[o], in double. */
static kn_tensor *ref_linear(kn_tensor *x, kn_tensor *w, kn_tensor *b) {
    kn_tensor *y = ref_matmul(x, kn_transpose(w, 0, 1));
    return b ? kn_add(y, kn_cast(b, KN_F64)) : y;
}

Test(nn, linear_matches_reference) {
    for (int dt = KN_F32; dt <= KN_F64; dt++) {
        double tol = dt == KN_F32 ? 1e-5 : 1e-13;
        kn_tensor *x = rnd(KN_SHAPE(4, 3), dt), *w = rnd(KN_SHAPE(5, 3), dt), *b = rnd(KN_SHAPE(5), dt);
        kn_tensor *y = kn_linear(x, w, b);
        cr_assert(y, "%s", kn_last_error());
        cr_assert_eq((int)kn_dtype_of(y), dt);
        assert_close(y, ref_linear(x, w, b), tol, tol);
        assert_close(kn_linear(x, w, NULL), ref_linear(x, w, NULL), tol, tol);
        kn_tensor *x3 = rnd(KN_SHAPE(2, 4, 3), dt);
        kn_tensor *y3 = kn_linear(x3, w, b);
        cr_assert_eq(kn_ndim(y3), 3);
        cr_assert_eq(kn_shape(y3)[2], 5);
        assert_close(y3, ref_linear(x3, w, b), tol, tol);
        assert_close(kn_linear(x3, w, NULL), ref_linear(x3, w, NULL), tol, tol);
        kn_tensor *x1 = rnd(KN_SHAPE(3), dt);  /* 1-D input gives [out] */
        kn_tensor *y1 = kn_linear(x1, w, b);
        cr_assert_eq(kn_ndim(y1), 1);
        assert_close(y1, ref_linear(x1, w, b), tol, tol);
        /* strided x and w, and a strided bias */
        kn_tensor *xt = T(rnd(KN_SHAPE(3, 4), dt)), *wt = T(rnd(KN_SHAPE(3, 5), dt));
        kn_tensor *bs = kn_slice(rnd(KN_SHAPE(10), dt), 0, 0, 10, 2);
        assert_close(kn_linear(xt, wt, bs), ref_linear(xt, wt, bs), tol, tol);
        kn_tensor *xp = kn_permute(rnd(KN_SHAPE(4, 2, 3), dt), KN_DIMS(1, 0, 2));
        assert_close(kn_linear(xp, w, b), ref_linear(xp, w, b), tol, tol);
        assert_close(kn_linear(xp, wt, NULL), ref_linear(xp, wt, NULL), tol, tol);
    }
    /* ints and mixed dtypes promote like matmul */
    kn_tensor *xi = rnd(KN_SHAPE(2, 3), KN_I64), *wi = rnd(KN_SHAPE(4, 3), KN_I64);
    kn_tensor *yi = kn_linear(xi, wi, rnd(KN_SHAPE(4), KN_I64));
    cr_assert_eq(kn_dtype_of(yi), KN_I64);
    kn_tensor *ym = kn_linear(rnd(KN_SHAPE(2, 3), KN_F32), rnd(KN_SHAPE(4, 3), KN_F32),
                              rnd(KN_SHAPE(4), KN_F64));
    cr_assert_eq(kn_dtype_of(ym), KN_F64);
}

Test(nn, linear_larger_and_empty) {
    kn_tensor *x = rnd(KN_SHAPE(64, 200), KN_F32), *w = rnd(KN_SHAPE(33, 200), KN_F32);
    kn_tensor *b = rnd(KN_SHAPE(33), KN_F32);
    assert_close(kn_linear(x, w, b), ref_linear(x, w, b), 1e-4, 1e-4);
    kn_tensor *e = kn_linear(kn_zeros(KN_SHAPE(0, 3), KN_F32), rnd(KN_SHAPE(5, 3), KN_F32), b);
    cr_assert_null(e);  /* bias [33] vs 5 outputs: an error, checked next */
    e = kn_linear(kn_zeros(KN_SHAPE(0, 3), KN_F32), rnd(KN_SHAPE(5, 3), KN_F32),
                  rnd(KN_SHAPE(5), KN_F32));
    cr_assert(e);
    cr_assert_eq(kn_shape(e)[0], 0);
    cr_assert_eq(kn_shape(e)[1], 5);
    /* in_features 0: y is the bias on every row */
    kn_tensor *bb = TF32(KN_SHAPE(2), 1.5f, -2);
    kn_tensor *z = kn_linear(kn_zeros(KN_SHAPE(3, 0), KN_F32), kn_zeros(KN_SHAPE(2, 0), KN_F32), bb);
    assert_close(z, TF64(KN_SHAPE(3, 2), 1.5, -2, 1.5, -2, 1.5, -2), 0, 0);
}

Test(nn, linear_errors) {
    kn_tensor *x = kn_zeros(KN_SHAPE(4, 3), KN_F32), *w = kn_zeros(KN_SHAPE(5, 3), KN_F32);
    EXPECT_ERR(kn_linear(x, kn_zeros(KN_SHAPE(5, 4), KN_F32), NULL),
               "kn_linear: shapes [4,3] and [5,4] cannot be multiplied (3 != 4)");
    EXPECT_ERR(kn_linear(x, kn_zeros(KN_SHAPE(3), KN_F32), NULL),
               "kn_linear: weight must be 2-D [out_features,in_features] (got shape [3])");
    EXPECT_ERR(kn_linear(x, w, kn_zeros(KN_SHAPE(4), KN_F32)),
               "kn_linear: bias shape [4] does not match [5] (weight [5,3])");
    EXPECT_ERR(kn_linear(x, w, kn_zeros(KN_SHAPE(1, 5), KN_F32)), "kn_linear: bias shape [1,5]");
    EXPECT_ERR(kn_linear(kn_scalar(1, KN_F32), w, NULL),
               "kn_linear: both arguments need at least 1 dim (got shapes [] and [5,3])");
    EXPECT_ERR(kn_linear(kn_zeros(KN_SHAPE(4, 3), KN_BOOL), kn_zeros(KN_SHAPE(5, 3), KN_BOOL), NULL),
               "kn_linear: dtype bool is not supported");
    EXPECT_ERR(kn_linear(NULL, w, NULL), "kn_linear: argument is NULL");
    EXPECT_ERR(kn_linear(x, NULL, NULL), "kn_linear: argument is NULL");
}

/* ---- softmax and log_softmax ---- */

/* softmax (or log_softmax) of x over dim, in double; NaN rows where the
 * max is not finite, as PyTorch gives. */
static kn_tensor *ref_softmax(const kn_tensor *x, int dim, bool logsm) {
    int nd = kn_ndim(x);
    const int64_t *sh = kn_shape(x);
    int d = nd == 0 ? 0 : (dim < 0 ? dim + nd : dim);
    int64_t L = nd ? sh[d] : 1, inner = 1, n = kn_numel(x);
    for (int i = d + 1; i < nd; i++) inner *= sh[i];
    double *y = calloc((size_t)n + 1, sizeof(double));
    for (int64_t o = 0; L && o < n / (L * inner); o++)
        for (int64_t c = 0; c < inner; c++) {
            int64_t base = o * L * inner + c;
            double m = -INFINITY, s = 0;
            bool nan = false;
            for (int64_t l = 0; l < L; l++) {
                double v = at(x, base + l * inner);
                nan |= isnan(v);
                m = v > m ? v : m;
            }
            for (int64_t l = 0; l < L; l++) s += exp(at(x, base + l * inner) - m);
            for (int64_t l = 0; l < L; l++) {
                double v = at(x, base + l * inner) - m;
                y[base + l * inner] = nan || !isfinite(m) ? NAN : logsm ? v - log(s) : exp(v) / s;
            }
        }
    kn_tensor *t = kn_from_data(y, sh, nd, KN_F64);
    free(y);
    return t;
}

static void check_softmax(kn_tensor *x, int dim) {
    double tol = kn_dtype_of(x) == KN_F32 ? 2e-6 : 1e-13;
    kn_tensor *s = kn_softmax(x, dim), *ls = kn_log_softmax(x, dim);
    cr_assert(s && ls, "%s", kn_last_error());
    cr_assert_eq(kn_dtype_of(s), kn_dtype_of(x));
    cr_assert_eq(kn_dtype_of(ls), kn_dtype_of(x));
    assert_close(s, ref_softmax(x, dim, false), tol, tol);
    assert_close(ls, ref_softmax(x, dim, true), tol, tol);
}

Test(nn, softmax_every_dim) {
    for (int dt = KN_F32; dt <= KN_F64; dt++) {
        kn_tensor *x = kn_mul_scalar(rnd(KN_SHAPE(3, 4, 5), dt), 3);
        for (int dim = -3; dim < 3; dim++) check_softmax(x, dim);
        check_softmax(T(x), 1);                       /* non-contiguous input */
        check_softmax(T(x), -1);
        check_softmax(kn_slice(x, 2, 0, 5, 2), 0);
        kn_tensor *x2 = rnd(KN_SHAPE(7, 150), dt);   /* rows with a LANES tail, cols > 64 */
        check_softmax(x2, 0);
        check_softmax(x2, 1);
        check_softmax(rnd(KN_SHAPE(2, 3, 100), dt), 1);
        check_softmax(rnd(KN_SHAPE(5), dt), 0);
    }
}

Test(nn, softmax_many_rows_in_parallel) {
    kn_tensor *x = kn_mul_scalar(rnd(KN_SHAPE(300, 1000), KN_F32), 5);
    check_softmax(x, 1);
    check_softmax(x, 0);
    kn_tensor *s = kn_sum(kn_softmax(x, -1), KN_DIMS(1), false);
    assert_close(s, kn_ones(KN_SHAPE(300), KN_F64), 1e-5, 0);
}

Test(nn, softmax_large_logits) {
    kn_tensor *x = TF32(KN_SHAPE(2, 3), 1000, 999, 0, -1000, -1000, -999);
    check_softmax(x, 1);
    check_softmax(x, 0);
    kn_tensor *s = kn_softmax(x, 1), *ls = kn_log_softmax(x, 1);
    double e1 = exp(-1.0), z = 1 + e1;
    assert_close(s, TF64(KN_SHAPE(2, 3), 1 / z, e1 / z, 0, e1 / (1 + 2 * e1), e1 / (1 + 2 * e1),
                         1 / (1 + 2 * e1)), 2e-6, 0);
    cr_assert_float_eq(at(ls, 0), -log(z), 1e-6);
    cr_assert_float_eq(at(ls, 2), -1000 - log(z), 1e-3);
    for (int i = 0; i < 6; i++) cr_assert(isfinite(at(ls, i)));
    check_softmax(kn_cast(kn_mul_scalar(rnd(KN_SHAPE(4, 9), KN_F64), 1e4), KN_F32), 1);
}

Test(nn, softmax_infinities_and_nan) {
    for (int dt = KN_F32; dt <= KN_F64; dt++) {
        double v[] = {-INFINITY, 0, 1, -INFINITY,           /* -inf entries: probability 0 */
                      -INFINITY, -INFINITY, -INFINITY, -INFINITY, /* all -inf: nan */
                      INFINITY, 1, 2, 3,                    /* +inf: nan */
                      NAN, 1, 2, 3};                        /* nan: nan */
        kn_tensor *x = kn_cast(kn_from_data(v, KN_SHAPE(4, 4), KN_F64), dt);
        check_softmax(x, 1);
        check_softmax(x, 0);
        check_softmax(T(x), 0);
        kn_tensor *s = kn_softmax(x, 1), *ls = kn_log_softmax(x, 1);
        cr_assert_eq(at(s, 0), 0);
        cr_assert_eq(at(s, 3), 0);
        cr_assert(isinf(at(ls, 0)) && at(ls, 0) < 0);
        for (int i = 4; i < 16; i++) cr_assert(isnan(at(s, i)) && isnan(at(ls, i)), "element %d", i);
        kn_tensor *wide = kn_full(KN_SHAPE(3, 40), -INFINITY, dt);  /* long all -inf rows */
        check_softmax(wide, 1);
    }
}

Test(nn, softmax_scalar_and_empty) {
    kn_tensor *s = kn_scalar(3, KN_F32);
    kn_tensor *y = kn_softmax(s, 0), *ly = kn_log_softmax(s, -1);
    cr_assert(y && ly);
    cr_assert_eq(kn_ndim(y), 0);
    cr_assert_eq(at(y, 0), 1);
    cr_assert_eq(at(ly, 0), 0);
    for (int dim = 0; dim < 2; dim++) {
        kn_tensor *e = kn_softmax(kn_zeros(KN_SHAPE(0, 3), KN_F32), dim);
        cr_assert(e);
        cr_assert_eq(kn_shape(e)[0], 0);
        cr_assert_eq(kn_shape(e)[1], 3);
        e = kn_log_softmax(kn_zeros(KN_SHAPE(3, 0), KN_F64), dim);
        cr_assert(e);
        cr_assert_eq(kn_numel(e), 0);
    }
}

Test(nn, softmax_errors) {
    kn_tensor *x = kn_zeros(KN_SHAPE(2, 3), KN_F32);
    EXPECT_ERR(kn_softmax(x, 2), "kn_softmax: dim 2 out of range for a 2-dim tensor");
    EXPECT_ERR(kn_log_softmax(x, -3), "kn_log_softmax: dim -3 out of range");
    EXPECT_ERR(kn_softmax(kn_scalar(1, KN_F32), 1), "kn_softmax: dim 1 out of range");
    EXPECT_ERR(kn_softmax(kn_zeros(KN_SHAPE(2), KN_I64), 0),
               "kn_softmax: dtype i64 is not supported (expected f32 or f64)");
    EXPECT_ERR(kn_log_softmax(kn_zeros(KN_SHAPE(2), KN_BOOL), 0),
               "kn_log_softmax: dtype bool is not supported");
    EXPECT_ERR(kn_softmax(NULL, 0), "kn_softmax: argument is NULL");
    EXPECT_ERR(kn_log_softmax(NULL, 0), "kn_log_softmax: argument is NULL");
}

/* ---- layer_norm ---- */

static kn_tensor *ref_layer_norm(const kn_tensor *x, int nn, const kn_tensor *w,
                                 const kn_tensor *b, double eps) {
    int nd = kn_ndim(x);
    int64_t n = 1, total = kn_numel(x);
    for (int i = nd - nn; i < nd; i++) n *= kn_shape(x)[i];
    double *y = calloc((size_t)total + 1, sizeof(double));
    for (int64_t r = 0; n && r < total / n; r++) {
        double mean = 0, var = 0;
        for (int64_t i = 0; i < n; i++) mean += at(x, r * n + i);
        mean /= (double)n;
        for (int64_t i = 0; i < n; i++) var += (at(x, r * n + i) - mean) * (at(x, r * n + i) - mean);
        var /= (double)n;
        for (int64_t i = 0; i < n; i++) {
            double v = (at(x, r * n + i) - mean) / sqrt(var + eps);
            y[r * n + i] = v * (w ? at(w, i) : 1) + (b ? at(b, i) : 0);
        }
    }
    kn_tensor *t = kn_from_data(y, kn_shape(x), nd, KN_F64);
    free(y);
    return t;
}

static void check_layer_norm(kn_tensor *x, int nn, kn_tensor *w, kn_tensor *b, double eps) {
    double tol = kn_dtype_of(x) == KN_F32 ? 2e-6 : 1e-12;
    kn_tensor *y = kn_layer_norm(x, nn, w, b, eps);
    cr_assert(y, "%s", kn_last_error());
    cr_assert_eq(kn_dtype_of(y), kn_dtype_of(x));
    assert_close(y, ref_layer_norm(x, nn, w, b, eps), tol, tol);
}

Test(nn, layer_norm_matches_reference) {
    for (int dt = KN_F32; dt <= KN_F64; dt++) {
        kn_tensor *x = kn_add_scalar(kn_mul_scalar(rnd(KN_SHAPE(4, 6), dt), 3), 2);
        kn_tensor *w = rnd(KN_SHAPE(6), dt), *b = rnd(KN_SHAPE(6), dt);
        check_layer_norm(x, 1, NULL, NULL, 1e-5);
        check_layer_norm(x, 1, w, NULL, 1e-5);
        check_layer_norm(x, 1, NULL, b, 1e-5);
        check_layer_norm(x, 1, w, b, 1e-5);
        check_layer_norm(x, 2, NULL, NULL, 1e-5);
        kn_tensor *x3 = rnd(KN_SHAPE(2, 3, 4), dt);
        kn_tensor *w2 = rnd(KN_SHAPE(3, 4), dt), *b2 = rnd(KN_SHAPE(3, 4), dt);
        check_layer_norm(x3, 2, w2, b2, 1e-5);
        check_layer_norm(x3, 3, NULL, NULL, 0.1);
        check_layer_norm(T(x3), 2, T(rnd(KN_SHAPE(3, 4), dt)), T(b2), 1e-5);  /* strided */
        check_layer_norm(T(x3), 1, kn_slice(rnd(KN_SHAPE(6), dt), 0, 0, 6, 2), NULL, 1e-5);
        check_layer_norm(rnd(KN_SHAPE(50, 333), dt), 1, rnd(KN_SHAPE(333), dt), NULL, 1e-5);
        check_layer_norm(rnd(KN_SHAPE(5), dt), 1, NULL, NULL, 1e-5);
    }
}

Test(nn, layer_norm_edge_values) {
    /* a constant row normalizes to 0 (+ b) */
    kn_tensor *c = kn_full(KN_SHAPE(2, 5), 7, KN_F32);
    kn_tensor *y = kn_layer_norm(c, 1, NULL, kn_full(KN_SHAPE(5), 0.5, KN_F32), 1e-5);
    assert_close(y, kn_full(KN_SHAPE(2, 5), 0.5, KN_F64), 0, 0);
    /* a large offset: the double accumulation keeps f32 accurate */
    kn_tensor *x = kn_add_scalar(rnd(KN_SHAPE(3, 64), KN_F32), 10000);
    check_layer_norm(x, 1, NULL, NULL, 1e-5);
    /* w and b of another dtype are converted to x's dtype */
    kn_tensor *x32 = rnd(KN_SHAPE(2, 4), KN_F32);
    kn_tensor *w64 = rnd(KN_SHAPE(4), KN_F64);
    kn_tensor *y32 = kn_layer_norm(x32, 1, w64, NULL, 1e-5);
    cr_assert_eq(kn_dtype_of(y32), KN_F32);
    assert_close(y32, ref_layer_norm(x32, 1, w64, NULL, 1e-5), 2e-6, 2e-6);
    /* empty shapes */
    kn_tensor *e = kn_layer_norm(kn_zeros(KN_SHAPE(0, 4), KN_F32), 1, NULL, NULL, 1e-5);
    cr_assert(e);
    cr_assert_eq(kn_numel(e), 0);
    e = kn_layer_norm(kn_zeros(KN_SHAPE(3, 0), KN_F64), 1, kn_zeros(KN_SHAPE(0), KN_F64), NULL, 1e-5);
    cr_assert(e);
    cr_assert_eq(kn_shape(e)[0], 3);
}

Test(nn, layer_norm_errors) {
    kn_tensor *x = kn_zeros(KN_SHAPE(2, 3), KN_F32);
    EXPECT_ERR(kn_layer_norm(x, 0, NULL, NULL, 1e-5),
               "kn_layer_norm: normalized_ndim 0 out of range for input of shape [2,3] (expected 1..2)");
    EXPECT_ERR(kn_layer_norm(x, 3, NULL, NULL, 1e-5), "kn_layer_norm: normalized_ndim 3 out of range");
    EXPECT_ERR(kn_layer_norm(kn_scalar(1, KN_F32), 1, NULL, NULL, 1e-5),
               "kn_layer_norm: normalized_ndim 1 out of range for input of shape []");
    EXPECT_ERR(kn_layer_norm(x, 1, kn_zeros(KN_SHAPE(2), KN_F32), NULL, 1e-5),
               "kn_layer_norm: weight shape [2] does not match the normalized shape [3] of input [2,3]");
    EXPECT_ERR(kn_layer_norm(x, 2, NULL, kn_zeros(KN_SHAPE(6), KN_F32), 1e-5),
               "kn_layer_norm: bias shape [6] does not match the normalized shape [2,3] of input [2,3]");
    EXPECT_ERR(kn_layer_norm(x, 1, kn_zeros(KN_SHAPE(1, 3), KN_F32), NULL, 1e-5),
               "kn_layer_norm: weight shape [1,3]");
    EXPECT_ERR(kn_layer_norm(kn_zeros(KN_SHAPE(2, 3), KN_I32), 1, NULL, NULL, 1e-5),
               "kn_layer_norm: dtype i32 is not supported (expected f32 or f64)");
    EXPECT_ERR(kn_layer_norm(NULL, 1, NULL, NULL, 1e-5), "kn_layer_norm: argument is NULL");
}

/* ---- autograd recording (rules are tested in test_autograd.c) ---- */

static kn_tensor *g_linear_nobias(void *c, kn_tensor *const *in) { (void)c; return kn_linear(in[0], in[1], NULL); }
static kn_tensor *g_matmul_t(void *c, kn_tensor *const *in) { (void)c; return kn_matmul(T(in[0]), in[1]); }
static kn_tensor *g_softmax_last(void *c, kn_tensor *const *in) { (void)c; return kn_softmax(in[0], -1); }
static kn_tensor *g_log_softmax_mid(void *c, kn_tensor *const *in) { (void)c; return kn_log_softmax(in[0], 1); }
static kn_tensor *g_layer_norm_bias(void *c, kn_tensor *const *in) {
    (void)c;
    return kn_layer_norm(in[0], 2, NULL, in[1], 1e-5);
}

static kn_tensor *leaf64(const int64_t *shape, int nd) {
    return kn_set_requires_grad(kn_randn(shape, nd, KN_F64), true);
}

Test(nn, ops_record_gradients) {
    kn_tensor *x = leaf64(KN_SHAPE(2, 3, 4)), *w = leaf64(KN_SHAPE(5, 4));
    cr_assert(kn_requires_grad(kn_linear(x, w, NULL)));
    cr_assert(kn_requires_grad(kn_softmax(x, 0)));
    cr_assert(kn_gradcheck(g_linear_nobias, NULL, (kn_tensor *[]){x, w}, 2, 1e-6, 1e-7, 1e-5),
              "%s", kn_last_error());
    kn_tensor *a = leaf64(KN_SHAPE(4, 3)), *b = leaf64(KN_SHAPE(4, 2));
    cr_assert(kn_gradcheck(g_matmul_t, NULL, (kn_tensor *[]){a, b}, 2, 1e-6, 1e-7, 1e-5),
              "%s", kn_last_error());
    cr_assert(kn_gradcheck(g_softmax_last, NULL, &x, 1, 1e-6, 1e-7, 1e-5), "%s", kn_last_error());
    cr_assert(kn_gradcheck(g_log_softmax_mid, NULL, &x, 1, 1e-6, 1e-7, 1e-5), "%s", kn_last_error());
    kn_tensor *bias = leaf64(KN_SHAPE(3, 4));
    cr_assert(kn_gradcheck(g_layer_norm_bias, NULL, (kn_tensor *[]){x, bias}, 2, 1e-6, 1e-7, 1e-5),
              "%s", kn_last_error());
    /* no grad for plain inputs, and none under no-grad */
    cr_assert_not(kn_requires_grad(kn_matmul(kn_randn(KN_SHAPE(2, 2), KN_F32),
                                             kn_randn(KN_SHAPE(2, 2), KN_F32))));
    kn_no_grad_begin();
    cr_assert_not(kn_requires_grad(kn_layer_norm(x, 1, NULL, NULL, 1e-5)));
    kn_no_grad_end();
}
