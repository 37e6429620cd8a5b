/* Creation, inspection, copy-out, item and printing. */
#include "helpers.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

KN_SUITE(tensor, KN_NO_SEED);

Test(tensor, zeros_ones_full) {
    kn_tensor *z = kn_zeros(KN_SHAPE(2, 3), KN_F32);
    cr_assert_eq(kn_ndim(z), 2);
    cr_assert_eq(kn_shape(z)[0], 2);
    cr_assert_eq(kn_shape(z)[1], 3);
    cr_assert_eq(kn_strides(z)[0], 3);
    cr_assert_eq(kn_strides(z)[1], 1);
    cr_assert_eq(kn_numel(z), 6);
    cr_assert_eq(kn_dtype_of(z), KN_F32);
    cr_assert(kn_is_contiguous(z));
    for (int i = 0; i < 6; i++) cr_assert_eq(at(z, i), 0);
    kn_tensor *o = kn_ones(KN_SHAPE(4), KN_I64);
    for (int i = 0; i < 4; i++) cr_assert_eq(at(o, i), 1);
    kn_tensor *f = kn_full(KN_SHAPE(2, 2), 2.5, KN_F64);
    for (int i = 0; i < 4; i++) cr_assert_eq(at(f, i), 2.5);
    kn_tensor *b = kn_full(KN_SHAPE(3), 7, KN_BOOL);
    for (int i = 0; i < 3; i++) cr_assert_eq(at(b, i), 1);
}

Test(tensor, alignment_and_sizes) {
    for (int dt = 0; dt < KN_DTYPE_COUNT; dt++) {
        kn_tensor *t = kn_zeros(KN_SHAPE(3, 5), (kn_dtype)dt);
        cr_assert_eq((uintptr_t)kn_data(t) % 64, 0, "%s storage is not 64-byte aligned", kn_dtype_name(dt));
    }
    cr_assert_eq(kn_dtype_size(KN_F32), 4);
    cr_assert_eq(kn_dtype_size(KN_F64), 8);
    cr_assert_eq(kn_dtype_size(KN_I32), 4);
    cr_assert_eq(kn_dtype_size(KN_I64), 8);
    cr_assert_eq(kn_dtype_size(KN_BOOL), 1);
    cr_assert_str_eq(kn_dtype_name(KN_BOOL), "bool");
}

Test(tensor, scalar_and_empty) {
    kn_tensor *s = kn_scalar(3.5, KN_F32);
    cr_assert_eq(kn_ndim(s), 0);
    cr_assert_eq(kn_numel(s), 1);
    cr_assert_eq(kn_item(s), 3.5);
    kn_tensor *e = kn_zeros(KN_SHAPE(0, 4), KN_F32);
    cr_assert_eq(kn_numel(e), 0);
    cr_assert(kn_is_contiguous(e));
    kn_tensor *e2 = kn_add(e, e);
    cr_assert(e2);
    cr_assert_eq(kn_numel(e2), 0);
    cr_assert_eq(kn_shape(e2)[1], 4);
    kn_tensor *big = kn_zeros(KN_SHAPE(1, 1, 1, 1, 1, 1, 1, 2), KN_F32);
    cr_assert_eq(kn_ndim(big), 8);
}

Test(tensor, from_data_copies) {
    float src[6] = {1, 2, 3, 4, 5, 6};
    kn_tensor *t = kn_from_data(src, KN_SHAPE(2, 3), KN_F32);
    src[0] = 100;
    cr_assert_eq(at(t, 0), 1, "kn_from_data must copy");
    float out[6] = {0};
    cr_assert_eq(kn_copy_out(t, out, sizeof out), 0);
    for (int i = 0; i < 6; i++) cr_assert_eq(out[i], (float)(i + 1));
}

Test(tensor, arange_and_eye) {
    kn_tensor *a = kn_arange(0, 5, 1, KN_I64);
    cr_assert_eq(kn_numel(a), 5);
    for (int i = 0; i < 5; i++) cr_assert_eq(at(a, i), i);
    kn_tensor *b = kn_arange(1, 2, 0.25, KN_F32);
    cr_assert_eq(kn_numel(b), 4);
    cr_assert_eq(at(b, 3), 1.75);
    kn_tensor *c = kn_arange(5, 0, -2, KN_F64);
    cr_assert_eq(kn_numel(c), 3);
    cr_assert_eq(at(c, 2), 1);
    cr_assert_eq(kn_numel(kn_arange(3, 3, 1, KN_F32)), 0);
    kn_tensor *e = kn_eye(3, 4, KN_F32);
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 4; j++) cr_assert_eq(at(e, i * 4 + j), i == j);
}

Test(tensor, copy_out_of_a_view) {
    kn_tensor *t = kn_reshape(kn_arange(0, 6, 1, KN_F32), KN_SHAPE(2, 3));
    kn_tensor *tt = kn_transpose(t, 0, 1);
    cr_assert_not(kn_is_contiguous(tt));
    float out[6];
    cr_assert_eq(kn_copy_out(tt, out, sizeof out), 0);
    const float want[6] = {0, 3, 1, 4, 2, 5};
    for (int i = 0; i < 6; i++) cr_assert_eq(out[i], want[i]);
    cr_assert_eq(kn_copy_out(tt, out, 5 * sizeof(float)), -1);
    cr_assert(strstr(kn_last_error(), "kn_copy_out"));
}

Test(tensor, item) {
    cr_assert_eq(kn_item(kn_full(KN_SHAPE(1, 1), -2, KN_I32)), -2);
    cr_assert(isnan(kn_item(kn_zeros(KN_SHAPE(2), KN_F32))));
    cr_assert(strstr(kn_last_error(), "kn_item: tensor of shape [2] has 2 elements"));
}

Test(tensor, to_string_like_pytorch) {
    kn_tensor *t = kn_reshape(kn_arange(0, 6, 1, KN_F32), KN_SHAPE(2, 3));
    char *s = kn_to_string(t);
    cr_assert_str_eq(s, "tensor([[0.0000, 1.0000, 2.0000],\n        [3.0000, 4.0000, 5.0000]], "
                        "shape=[2,3], dtype=f32)");
    free(s);
    s = kn_to_string(kn_arange(0, 2000, 1, KN_I64));
    cr_assert(strstr(s, "tensor([0, 1, 2, ..., 1997, 1998, 1999], shape=[2000], dtype=i64)"), "%s", s);
    free(s);
    s = kn_to_string(kn_scalar(1, KN_BOOL));
    cr_assert_str_eq(s, "tensor(True, shape=[], dtype=bool)");
    free(s);
    float v[3] = {NAN, INFINITY, 1e-9f};
    s = kn_to_string(kn_from_data(v, KN_SHAPE(3), KN_F32));
    cr_assert(strstr(s, "nan") && strstr(s, "inf") && strstr(s, "1.0000e-09"), "%s", s);
    free(s);
}
