/* The error contract: NULL plus a message naming the op and shapes; a NULL
 * argument keeps the first message; KN_ABORT_ON_ERROR aborts. */
#include "helpers.h"
#include <signal.h>
#include <stdlib.h>
#include <string.h>

KN_SUITE(errors, KN_NO_SEED);


Test(errors, no_error_initially_and_clear) {
    cr_assert_null(kn_last_error());
    kn_add(kn_zeros(KN_SHAPE(2), KN_F32), kn_zeros(KN_SHAPE(3), KN_F32));
    cr_assert_not_null(kn_last_error());
    kn_clear_error();
    cr_assert_null(kn_last_error());
}

Test(errors, matmul_message_names_shapes) {
    kn_tensor *a = kn_zeros(KN_SHAPE(64, 784), KN_F32), *b = kn_zeros(KN_SHAPE(128, 10), KN_F32);
    EXPECT_ERR(kn_matmul(a, b), "kn_matmul: shapes [64,784] and [128,10] cannot be multiplied (784 != 128)");
}

Test(errors, null_input_keeps_first_message) {
    kn_tensor *a = kn_zeros(KN_SHAPE(2, 3), KN_F32), *b = kn_zeros(KN_SHAPE(4), KN_F32);
    kn_tensor *r = kn_relu(kn_exp(kn_add(a, b)));  /* fails at kn_add */
    cr_assert_null(r);
    cr_assert(strstr(kn_last_error(), "kn_add: shapes [2,3] and [4] cannot be broadcast"),
              "%s", kn_last_error());
}

Test(errors, null_input_without_earlier_error) {
    EXPECT_ERR(kn_exp(NULL), "kn_exp");
    EXPECT_ERR(kn_add(NULL, NULL), "kn_add");
    EXPECT_ERR(kn_sum(NULL, KN_ALL_DIMS, false), "kn_sum");
    EXPECT_ERR(kn_matmul(NULL, NULL), "kn_matmul");
    EXPECT_ERR(kn_from_data(NULL, KN_SHAPE(2), KN_F32), "kn_from_data");
}

Test(errors, bad_dims_and_shapes) {
    kn_tensor *x = kn_zeros(KN_SHAPE(2, 3), KN_F32);
    EXPECT_ERR(kn_sum(x, KN_DIMS(2), false), "dim 2 out of range");
    EXPECT_ERR(kn_softmax(x, -3), "kn_softmax");
    EXPECT_ERR(kn_transpose(x, 0, 5), "kn_transpose");
    EXPECT_ERR(kn_reshape(x, KN_SHAPE(4, 2)), "kn_reshape");
    EXPECT_ERR(kn_zeros(KN_SHAPE(2, -1), KN_F32), "negative size");
    EXPECT_ERR(kn_zeros((const int64_t[9]){1, 1, 1, 1, 1, 1, 1, 1, 1}, 9, KN_F32), "9 dims");
    EXPECT_ERR(kn_arange(0, 1, 0, KN_F32), "kn_arange: step must be nonzero");
}

Test(errors, bad_dtypes) {
    kn_tensor *i = kn_zeros(KN_SHAPE(2), KN_I32);
    EXPECT_ERR(kn_randn(KN_SHAPE(2), KN_I64), "kn_randn: dtype i64 is not supported");
    EXPECT_ERR(kn_cast(i, (kn_dtype)42), "kn_cast: invalid dtype");
    EXPECT_ERR(kn_zeros(KN_SHAPE(2), (kn_dtype)-1), "invalid dtype");
}

Test(errors, out_of_range_index) {
    kn_tensor *x = kn_zeros(KN_SHAPE(3, 2), KN_F32);
    kn_tensor *idx = TI64(KN_SHAPE(2), 0, 3);
    EXPECT_ERR(kn_index_select(x, 0, idx), "kn_index_select");
}

Test(errors, allocation_failure_is_an_error) {
    EXPECT_ERR(kn_zeros(KN_SHAPE(1LL << 40, 1LL << 10), KN_F32), "out of memory");
    EXPECT_ERR(kn_zeros(KN_SHAPE(1LL << 40, 1LL << 40), KN_F32), "too large");
}

Test(errors, abort_on_error, .signal = SIGABRT) {
    setenv("KN_ABORT_ON_ERROR", "1", 1);
    kn_add(kn_zeros(KN_SHAPE(2), KN_F32), kn_zeros(KN_SHAPE(3), KN_F32));
}
