/* PyTorch type promotion as kiln.h states it, kn_cast, and the error paths of
 * elementwise ops. */
#include "helpers.h"
#include <math.h>
#include <string.h>

KN_SUITE(promotion, KN_NO_SEED);

#define TI32(shape_ndim, ...) kn_from_data((const int32_t[]){__VA_ARGS__}, shape_ndim, KN_I32)
#define TBOOL(shape_ndim, ...) kn_from_data((const uint8_t[]){__VA_ARGS__}, shape_ndim, KN_BOOL)

/* r is non-NULL, of dtype dt, and holds the n values in want. */
static void expect(kn_tensor *r, kn_dtype dt, const double *want, int64_t n) {
    cr_assert(r, "NULL result: %s", kn_last_error() ? kn_last_error() : "(no error)");
    cr_assert_eq(kn_dtype_of(r), dt, "dtype %s, want %s", kn_dtype_name(kn_dtype_of(r)),
                 kn_dtype_name(dt));
    cr_assert_eq(kn_numel(r), n, "numel %lld, want %lld", (long long)kn_numel(r), (long long)n);
    for (int64_t i = 0; i < n; i++) {
        double g = at(r, i);
        cr_assert(g == want[i] || (isnan(g) && isnan(want[i])), "element %lld: got %.17g, want %.17g",
                  (long long)i, g, want[i]);
    }
}
#define EXPECT(r, dt, ...) expect((r), (dt), (const double[]){__VA_ARGS__}, \
    (int64_t)(sizeof((double[]){__VA_ARGS__}) / sizeof(double)))


/* ---- dimensioned tensors: the wider dtype of the higher category ---- */

Test(promotion, f32_f64_gives_f64) {
    kn_tensor *a = TF32(KN_SHAPE(2), 1.5f, 0.1f), *b = TF64(KN_SHAPE(2), 0.25, 0.1);
    EXPECT(kn_add(a, b), KN_F64, 1.75, (double)0.1f + 0.1);
    EXPECT(kn_add(b, a), KN_F64, 1.75, 0.1 + (double)0.1f);
    EXPECT(kn_mul(a, b), KN_F64, 0.375, (double)0.1f * 0.1);
    EXPECT(kn_maximum(a, b), KN_F64, 1.5, (double)0.1f);
}

Test(promotion, i32_i64_gives_i64) {
    kn_tensor *a = TI32(KN_SHAPE(2), 2000000000, -7), *b = TI64(KN_SHAPE(2), 2000000000, 3);
    EXPECT(kn_add(a, b), KN_I64, 4000000000.0, -4);
    EXPECT(kn_sub(b, a), KN_I64, 0, 10);
    EXPECT(kn_mul(a, b), KN_I64, 4e18, -21);
}

Test(promotion, int_and_float_give_float) {
    kn_tensor *i32 = TI32(KN_SHAPE(2), 3, -4), *i64 = TI64(KN_SHAPE(2), 5, 6);
    kn_tensor *f32 = TF32(KN_SHAPE(2), 0.5f, 0.25f), *f64 = TF64(KN_SHAPE(2), 0.5, 0.25);
    EXPECT(kn_add(i32, f32), KN_F32, 3.5, -3.75);
    EXPECT(kn_add(f32, i32), KN_F32, 3.5, -3.75);
    EXPECT(kn_mul(i64, f32), KN_F32, 2.5, 1.5);
    EXPECT(kn_sub(i32, f64), KN_F64, 2.5, -4.25);
}

Test(promotion, bool_and_int_gives_int) {
    kn_tensor *b = TBOOL(KN_SHAPE(3), 1, 0, 1), *i = TI32(KN_SHAPE(3), 5, 6, -7);
    EXPECT(kn_add(b, i), KN_I32, 6, 6, -6);
    EXPECT(kn_mul(i, b), KN_I32, 5, 0, -7);
    EXPECT(kn_add(b, TF64(KN_SHAPE(3), 0.5, 0.5, 0.5)), KN_F64, 1.5, 0.5, 1.5);
    EXPECT(kn_maximum(b, TI64(KN_SHAPE(3), 0, 0, 0)), KN_I64, 1, 0, 1);
}

Test(promotion, comparisons_give_bool) {
    kn_tensor *b1 = TBOOL(KN_SHAPE(4), 0, 0, 1, 1), *b2 = TBOOL(KN_SHAPE(4), 0, 1, 0, 1);
    EXPECT(kn_eq(b1, b2), KN_BOOL, 1, 0, 0, 1);
    EXPECT(kn_ne(b1, b2), KN_BOOL, 0, 1, 1, 0);
    EXPECT(kn_lt(b1, b2), KN_BOOL, 0, 1, 0, 0);
    EXPECT(kn_ge(b1, b2), KN_BOOL, 1, 0, 1, 1);
    kn_tensor *i = TI32(KN_SHAPE(3), 1, 2, 3), *f = TF64(KN_SHAPE(3), 1.5, 2, 2.5);
    EXPECT(kn_lt(i, f), KN_BOOL, 1, 0, 0);
    EXPECT(kn_eq(i, f), KN_BOOL, 0, 1, 0);
    EXPECT(kn_gt(i, kn_scalar(2, KN_F32)), KN_BOOL, 0, 0, 1);
    EXPECT(kn_le(kn_scalar(2, KN_I64), i), KN_BOOL, 0, 1, 1);
    EXPECT(kn_logical_and(i, f), KN_BOOL, 1, 1, 1);
}

/* ---- 0-dim tensors only raise the category ---- */

Test(promotion, zero_dim_same_category_does_not_widen) {
    kn_tensor *x = TF32(KN_SHAPE(2), 1, 2), *s = kn_scalar(0.5, KN_F64);
    EXPECT(kn_add(x, s), KN_F32, 1.5, 2.5);
    EXPECT(kn_add(s, x), KN_F32, 1.5, 2.5);
    kn_tensor *i = TI32(KN_SHAPE(2), 1, 2);
    EXPECT(kn_mul(i, kn_scalar(3, KN_I64)), KN_I32, 3, 6);
    EXPECT(kn_mul(kn_scalar(3, KN_I64), i), KN_I32, 3, 6);
}

Test(promotion, zero_dim_higher_category_decides) {
    kn_tensor *i64 = TI64(KN_SHAPE(2), 1, 2), *i32 = TI32(KN_SHAPE(2), 1, 2);
    EXPECT(kn_add(i64, kn_scalar(0.5, KN_F32)), KN_F32, 1.5, 2.5);
    EXPECT(kn_add(kn_scalar(0.5, KN_F32), i64), KN_F32, 1.5, 2.5);
    EXPECT(kn_add(i32, kn_scalar(0.5, KN_F64)), KN_F64, 1.5, 2.5);
    kn_tensor *b = TBOOL(KN_SHAPE(2), 1, 0);
    EXPECT(kn_add(b, kn_scalar(2, KN_I32)), KN_I32, 3, 2);
    EXPECT(kn_add(b, kn_scalar(2, KN_I64)), KN_I64, 3, 2);
}

Test(promotion, zero_dim_with_zero_dim_is_ordinary) {
    kn_tensor *r = kn_add(kn_scalar(1, KN_F32), kn_scalar(2, KN_F64));
    EXPECT(r, KN_F64, 3);
    cr_assert_eq(kn_ndim(r), 0);
    EXPECT(kn_add(kn_scalar(1, KN_I32), kn_scalar(2, KN_I64)), KN_I64, 3);
    EXPECT(kn_add(kn_scalar(1, KN_I64), kn_scalar(0.5, KN_F32)), KN_F32, 1.5);
}

/* ---- C numbers through the _scalar forms ---- */

Test(promotion, integral_scalar_keeps_int) {
    kn_tensor *i32 = TI32(KN_SHAPE(3), 1, -2, 3);
    EXPECT(kn_add_scalar(i32, 2), KN_I32, 3, 0, 5);
    EXPECT(kn_sub_scalar(i32, 2), KN_I32, -1, -4, 1);
    EXPECT(kn_mul_scalar(i32, -3), KN_I32, -3, 6, -9);
    EXPECT(kn_pow_scalar(i32, 2), KN_I32, 1, 4, 9);
    EXPECT(kn_add_scalar(TI64(KN_SHAPE(1), 5), 1e15), KN_I64, 1e15 + 5);
    /* a C number never widens a tensor of its category */
    EXPECT(kn_add_scalar(TF32(KN_SHAPE(1), 1), 2), KN_F32, 3);
    EXPECT(kn_add_scalar(TBOOL(KN_SHAPE(2), 1, 0), 2), KN_I64, 3, 2);
}

Test(promotion, fractional_scalar_gives_default_float) {
    kn_tensor *i32 = TI32(KN_SHAPE(3), 1, -2, 3);
    EXPECT(kn_add_scalar(i32, 2.5), KN_F32, 3.5, 0.5, 5.5);
    EXPECT(kn_mul_scalar(TI64(KN_SHAPE(1), 4), 0.25), KN_F32, 1);
    EXPECT(kn_pow_scalar(TI32(KN_SHAPE(2), 4, 9), 0.5), KN_F32, 2, 3);
    EXPECT(kn_mul_scalar(TF64(KN_SHAPE(2), 1, 0.1), 2.5), KN_F64, 2.5, 0.1 * 2.5);
    EXPECT(kn_mul_scalar(TF32(KN_SHAPE(1), 0.1f), 2.5), KN_F32, (double)(0.1f * 2.5f));
    /* a 0-dim i32 tensor with a fractional C number */
    EXPECT(kn_add_scalar(kn_scalar(1, KN_I32), 0.5), KN_F32, 1.5);
}

Test(promotion, non_finite_and_huge_scalars) {
    kn_tensor *i32 = TI32(KN_SHAPE(2), 1, -2);
    EXPECT(kn_add_scalar(i32, INFINITY), KN_F32, INFINITY, INFINITY);
    EXPECT(kn_mul_scalar(i32, -INFINITY), KN_F32, -INFINITY, INFINITY);
    EXPECT(kn_add_scalar(i32, NAN), KN_F32, NAN, NAN);
    /* an integral value beyond int64 acts as a float */
    EXPECT(kn_add_scalar(i32, 1e20), KN_F32, (double)1e20f, (double)1e20f);
    EXPECT(kn_add_scalar(TF64(KN_SHAPE(1), 1), 1e300), KN_F64, 1e300);
}

Test(promotion, int_division_is_true_division) {
    kn_tensor *a = TI32(KN_SHAPE(4), 7, -7, 1, 0), *b = TI32(KN_SHAPE(4), 2, 2, 3, 5);
    EXPECT(kn_div(a, b), KN_F32, 3.5, -3.5, (double)(1.0f / 3.0f), 0);
    EXPECT(kn_div(TI64(KN_SHAPE(2), 9, -1), TI64(KN_SHAPE(2), 4, 8)), KN_F32, 2.25, -0.125);
    EXPECT(kn_div_scalar(a, 2), KN_F32, 3.5, -3.5, 0.5, 0);
    EXPECT(kn_div(a, TI32(KN_SHAPE(1), 0)), KN_F32, INFINITY, -INFINITY, INFINITY, NAN);
    EXPECT(kn_div(TF64(KN_SHAPE(1), 1), TI32(KN_SHAPE(1), 3)), KN_F64, 1.0 / 3.0);
}

Test(promotion, where_promotes_branches) {
    kn_tensor *c = TBOOL(KN_SHAPE(2), 1, 0);
    EXPECT(kn_where(c, TF32(KN_SHAPE(2), 1, 2), TF64(KN_SHAPE(2), 3, 4)), KN_F64, 1, 4);
    EXPECT(kn_where(c, TI32(KN_SHAPE(2), 1, 2), TF32(KN_SHAPE(2), 0.5f, 0.5f)), KN_F32, 1, 0.5);
    EXPECT(kn_where(c, TI32(KN_SHAPE(2), 1, 2), TI64(KN_SHAPE(2), 3, 4)), KN_I64, 1, 4);
    EXPECT(kn_where(c, TI32(KN_SHAPE(2), 1, 2), kn_scalar(0.5, KN_F64)), KN_F64, 1, 0.5);
    EXPECT(kn_where(c, TF32(KN_SHAPE(2), 1, 2), kn_scalar(0.5, KN_F64)), KN_F32, 1, 0.5);
    EXPECT(kn_where(c, TBOOL(KN_SHAPE(2), 0, 0), TBOOL(KN_SHAPE(2), 1, 1)), KN_BOOL, 0, 1);
}

/* ---- kn_cast ---- */

Test(promotion, cast_round_trips) {
    kn_tensor *f = TF32(KN_SHAPE(5), 0.1f, -3.5f, 1e30f, -0.0f, INFINITY);
    kn_tensor *back = kn_cast(kn_cast(f, KN_F64), KN_F32);
    assert_equal(back, f);
    cr_assert(signbit(at(back, 3)), "-0 lost its sign");
    kn_tensor *i = TI32(KN_SHAPE(4), INT32_MIN, -1, 0, INT32_MAX);
    assert_equal(kn_cast(kn_cast(i, KN_I64), KN_I32), i);
    assert_equal(kn_cast(kn_cast(i, KN_F64), KN_I32), i);
    kn_tensor *b = TBOOL(KN_SHAPE(3), 1, 0, 1);
    assert_equal(kn_cast(kn_cast(b, KN_I32), KN_BOOL), b);
    assert_equal(kn_cast(kn_cast(b, KN_F32), KN_BOOL), b);
    EXPECT(kn_cast(b, KN_F64), KN_F64, 1, 0, 1);
    EXPECT(kn_cast(TI64(KN_SHAPE(1), (1LL << 53) + 1), KN_F64), KN_F64, 9007199254740992.0);
    EXPECT(kn_cast(TF64(KN_SHAPE(1), 0.1), KN_F32), KN_F32, (double)0.1f);
}

Test(promotion, cast_to_same_dtype_is_a_new_tensor) {
    kn_tensor *f = TF32(KN_SHAPE(2), 1, 2);
    kn_tensor *g = kn_cast(f, KN_F32);
    cr_assert(g && g != f);
    cr_assert_neq(kn_data(g), kn_data(f), "cast shares storage");
    assert_equal(g, f);
}

Test(promotion, cast_float_to_int_truncates) {
    kn_tensor *f = TF64(KN_SHAPE(7), 2.7, -2.7, 0.5, -0.5, 1e9, -2147483648.0, 3.0);
    EXPECT(kn_cast(f, KN_I32), KN_I32, 2, -2, 0, 0, 1e9, -2147483648.0, 3);
    EXPECT(kn_cast(f, KN_I64), KN_I64, 2, -2, 0, 0, 1e9, -2147483648.0, 3);
    EXPECT(kn_cast(TF32(KN_SHAPE(3), 1e12f, -9.99f, 16777216.0f), KN_I64), KN_I64,
           (double)1e12f, -9, 16777216);
}

Test(promotion, cast_float_to_int_out_of_range) {
    /* NaN, inf and out-of-range values give the minimum, as PyTorch on x86 */
    kn_tensor *f = TF32(KN_SHAPE(6), NAN, INFINITY, -INFINITY, 3e9f, -3e9f, 2147483520.0f);
    EXPECT(kn_cast(f, KN_I32), KN_I32, INT32_MIN, INT32_MIN, INT32_MIN, INT32_MIN, INT32_MIN, 2147483520.0);
    EXPECT(kn_cast(f, KN_I64), KN_I64, (double)INT64_MIN, (double)INT64_MIN, (double)INT64_MIN, 3e9, -3e9,
           2147483520.0);
    kn_tensor *d = TF64(KN_SHAPE(4), 0x1p63, -0x1p63, 2147483647.9, -2147483648.9);
    EXPECT(kn_cast(d, KN_I64), KN_I64, (double)INT64_MIN, -0x1p63, 2147483647, -2147483648.0);
    EXPECT(kn_cast(d, KN_I32), KN_I32, INT32_MIN, INT32_MIN, INT32_MAX, INT32_MIN);
    /* int64 -> int32 wraps */
    EXPECT(kn_cast(TI64(KN_SHAPE(2), (1LL << 32) + 5, -1), KN_I32), KN_I32, 5, -1);
}

Test(promotion, cast_to_bool_is_nonzero) {
    EXPECT(kn_cast(TF32(KN_SHAPE(7), 0, -0.0f, 0.5f, NAN, -3, INFINITY, 1e-45f), KN_BOOL),
           KN_BOOL, 0, 0, 1, 1, 1, 1, 1);
    EXPECT(kn_cast(TI32(KN_SHAPE(4), 0, 1, -1, 256), KN_BOOL), KN_BOOL, 0, 1, 1, 1);
    EXPECT(kn_cast(TI64(KN_SHAPE(2), 1LL << 40, 0), KN_BOOL), KN_BOOL, 1, 0);
    EXPECT(kn_cast(TF64(KN_SHAPE(2), 1e-300, 0), KN_BOOL), KN_BOOL, 1, 0);
}

Test(promotion, cast_keeps_shape_of_views_and_empty) {
    kn_tensor *x = TI32(KN_SHAPE(2, 3), 1, 2, 3, 4, 5, 6);
    kn_tensor *y = kn_cast(kn_transpose(x, 0, 1), KN_F32);
    cr_assert(y, "%s", kn_last_error());
    cr_assert(kn_ndim(y) == 2 && kn_shape(y)[0] == 3 && kn_shape(y)[1] == 2);
    EXPECT(y, KN_F32, 1, 4, 2, 5, 3, 6);
    kn_tensor *e = kn_cast(kn_zeros(KN_SHAPE(0, 4), KN_F64), KN_I32);
    cr_assert(e && kn_dtype_of(e) == KN_I32 && kn_numel(e) == 0 && kn_shape(e)[1] == 4);
    EXPECT(kn_cast(kn_scalar(2.5, KN_F64), KN_I64), KN_I64, 2);
}

/* ---- errors ---- */

Test(promotion, bool_arithmetic_is_an_error) {
    kn_tensor *a = TBOOL(KN_SHAPE(2), 1, 0), *b = TBOOL(KN_SHAPE(2), 1, 1);
    EXPECT_ERR(kn_add(a, b), "kn_add");
    EXPECT_ERR(kn_sub(a, b), "kn_sub");
    EXPECT_ERR(kn_mul(a, b), "kn_mul");
    EXPECT_ERR(kn_pow(a, b), "kn_pow");
    EXPECT_ERR(kn_add(a, b), "bool");
    EXPECT_ERR(kn_neg(a), "kn_neg");
    EXPECT_ERR(kn_abs(a), "kn_abs");
    EXPECT_ERR(kn_relu(a), "kn_relu");
    EXPECT_ERR(kn_clamp(a, 0, 1), "kn_clamp");
}

Test(promotion, float_math_of_bool_is_an_error) {
    kn_tensor *a = TBOOL(KN_SHAPE(2), 1, 0);
    EXPECT_ERR(kn_exp(a), "kn_exp");
    EXPECT_ERR(kn_exp(a), "bool");
    EXPECT_ERR(kn_log(a), "kn_log");
    EXPECT_ERR(kn_sigmoid(kn_scalar(1, KN_BOOL)), "kn_sigmoid");
    EXPECT_ERR(kn_gelu(a, KN_GELU_TANH), "kn_gelu");
}

Test(promotion, clamp_lo_above_hi_is_an_error) {
    kn_tensor *x = TF32(KN_SHAPE(2), 1, 2);
    EXPECT_ERR(kn_clamp(x, 2, 1), "kn_clamp");
    EXPECT_ERR(kn_clamp(TI32(KN_SHAPE(1), 1), 0.5, -0.5), "kn_clamp");
    kn_clear_error();
    EXPECT(kn_clamp(x, 1.5, 1.5), KN_F32, 1.5, 1.5);
}

Test(promotion, shape_mismatch_names_both_shapes) {
    kn_tensor *a = kn_zeros(KN_SHAPE(2, 3), KN_F32), *b = kn_zeros(KN_SHAPE(4), KN_F32);
    EXPECT_ERR(kn_add(a, b), "kn_add: shapes [2,3] and [4] cannot be broadcast");
    EXPECT_ERR(kn_mul(b, a), "kn_mul: shapes [4] and [2,3] cannot be broadcast");
    EXPECT_ERR(kn_lt(a, b), "kn_lt: shapes [2,3] and [4]");
    EXPECT_ERR(kn_logical_or(a, b), "kn_logical_or: shapes [2,3] and [4]");
    EXPECT_ERR(kn_add(kn_zeros(KN_SHAPE(0), KN_F32), kn_zeros(KN_SHAPE(2), KN_F32)),
               "kn_add: shapes [0] and [2]");
    EXPECT_ERR(kn_where(kn_zeros(KN_SHAPE(4), KN_BOOL), a, a), "kn_where: shapes [4], [2,3] and [2,3]");
}

Test(promotion, invalid_enum_arguments) {
    kn_tensor *x = TF32(KN_SHAPE(2), 1, 2);
    EXPECT_ERR(kn_cast(x, KN_DTYPE_COUNT), "kn_cast");
    EXPECT_ERR(kn_gelu(x, (kn_gelu_approx)7), "kn_gelu");
}

Test(promotion, null_argument_without_earlier_error) {
    kn_tensor *x = TF32(KN_SHAPE(2), 1, 2);
    EXPECT_ERR(kn_add(NULL, x), "kn_add");
    EXPECT_ERR(kn_add(x, NULL), "kn_add");
    EXPECT_ERR(kn_exp(NULL), "kn_exp");
    EXPECT_ERR(kn_neg(NULL), "kn_neg");
    EXPECT_ERR(kn_eq(x, NULL), "kn_eq");
    EXPECT_ERR(kn_logical_not(NULL), "kn_logical_not");
    EXPECT_ERR(kn_where(NULL, x, x), "kn_where");
    EXPECT_ERR(kn_cast(NULL, KN_F64), "kn_cast");
    EXPECT_ERR(kn_clamp(NULL, 0, 1), "kn_clamp");
    EXPECT_ERR(kn_gelu(NULL, KN_GELU_ERF), "kn_gelu");
    EXPECT_ERR(kn_mul_scalar(NULL, 2), "kn_mul_scalar");
}

Test(promotion, null_argument_keeps_earlier_error) {
    kn_tensor *a = kn_zeros(KN_SHAPE(2, 3), KN_F32), *b = kn_zeros(KN_SHAPE(4), KN_F32);
    const char *want = "kn_add: shapes [2,3] and [4] cannot be broadcast";
    kn_tensor *bad = kn_add(a, b);
    cr_assert_null(bad);
    kn_tensor *r[] = {
        kn_exp(bad), kn_mul(bad, a), kn_sub(a, bad), kn_where(bad, a, a), kn_where(a, a, bad),
        kn_cast(bad, KN_I32), kn_add_scalar(bad, 1), kn_pow_scalar(bad, 2.5), kn_clamp(bad, 0, 1),
        kn_clamp(bad, 1, 0), kn_gelu(bad, KN_GELU_TANH), kn_gelu(bad, (kn_gelu_approx)7),
        kn_logical_not(bad), kn_ge(bad, bad), kn_relu(kn_neg(kn_abs(bad))),
    };
    for (size_t i = 0; i < sizeof r / sizeof *r; i++) cr_assert_null(r[i], "call %zu", i);
    cr_assert_str_eq(kn_last_error(), want);
}
