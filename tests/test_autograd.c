/* Autograd: finite-difference checks (f64) of every differentiable op, with
 * broadcasting and non-contiguous inputs, plus the engine's contracts. */
#include "helpers.h"
#include <math.h>
#include <string.h>

KN_SUITE(autograd, 5);

/* A leaf in f64 from randn (scaled, shifted), optionally as a transposed view. */
static kn_tensor *leaf(const int64_t *shape, int nd, double scale, double shift, bool transposed) {
    kn_tensor *t;
    if (transposed && nd >= 2) {
        int64_t s2[KN_MAX_DIMS];
        memcpy(s2, shape, (size_t)nd * sizeof *s2);
        s2[nd - 1] = shape[nd - 2];
        s2[nd - 2] = shape[nd - 1];
        t = kn_transpose(kn_contiguous(kn_randn(s2, nd, KN_F64)), nd - 1, nd - 2);
        t = kn_add_scalar(kn_mul_scalar(t, scale), shift);
        t = kn_transpose(kn_contiguous(kn_transpose(t, nd - 1, nd - 2)), nd - 1, nd - 2);
        cr_assert_not(kn_is_contiguous(t));
        t = kn_detach(t);
    } else {
        t = kn_detach(kn_add_scalar(kn_mul_scalar(kn_randn(shape, nd, KN_F64), scale), shift));
    }
    return kn_set_requires_grad(t, true);
}

#define CHECK(fn, ...)                                                            \
    do {                                                                          \
        kn_tensor *ins[] = {__VA_ARGS__};                                         \
        int nin = (int)(sizeof ins / sizeof *ins);                                \
        cr_assert(kn_gradcheck(fn, NULL, ins, nin, 1e-6, 1e-7, 1e-5), #fn ": %s", \
                  kn_last_error());                                               \
    } while (0)

#define F1(name, expr) static kn_tensor *name(void *c, kn_tensor *const *in) { (void)c; return (expr); }
F1(f_exp, kn_exp(in[0]))
F1(f_log, kn_log(in[0]))
F1(f_sqrt, kn_sqrt(in[0]))
F1(f_rsqrt, kn_rsqrt(in[0]))
F1(f_tanh, kn_tanh(in[0]))
F1(f_sigmoid, kn_sigmoid(in[0]))
F1(f_sin, kn_sin(in[0]))
F1(f_cos, kn_cos(in[0]))
F1(f_erf, kn_erf(in[0]))
F1(f_gelu, kn_gelu(in[0], KN_GELU_ERF))
F1(f_gelu_tanh, kn_gelu(in[0], KN_GELU_TANH))
F1(f_neg, kn_neg(in[0]))
F1(f_abs, kn_abs(in[0]))
F1(f_relu, kn_relu(in[0]))
F1(f_clamp, kn_clamp(in[0], -0.5, 0.7))
F1(f_add, kn_add(in[0], in[1]))
F1(f_sub, kn_sub(in[0], in[1]))
F1(f_mul, kn_mul(in[0], in[1]))
F1(f_div, kn_div(in[0], in[1]))
F1(f_pow, kn_pow(in[0], in[1]))
F1(f_pow_scalar, kn_pow_scalar(in[0], 3))
F1(f_maximum, kn_maximum(in[0], in[1]))
F1(f_minimum, kn_minimum(in[0], in[1]))
F1(f_where, kn_where(kn_gt(in[0], kn_scalar(0, KN_F64)), in[0], in[1]))
F1(f_sum, kn_sum(in[0], KN_DIMS(0, 2), false))
F1(f_sum_all, kn_sum(in[0], KN_ALL_DIMS, false))
F1(f_mean, kn_mean(in[0], KN_DIMS(-1), true))
F1(f_max, kn_max(in[0], KN_DIMS(1), false))
F1(f_min, kn_min(in[0], KN_DIMS(0), true))
F1(f_var, kn_var(in[0], KN_DIMS(1), 1, false))
F1(f_logsumexp, kn_logsumexp(in[0], KN_DIMS(0, 1), false))
F1(f_reshape, kn_reshape(in[0], KN_SHAPE(6, -1)))
F1(f_transpose, kn_transpose(in[0], 0, 2))
F1(f_permute, kn_permute(in[0], KN_DIMS(2, 0, 1)))
F1(f_slice, kn_slice(in[0], 1, 1, 5, 2))
F1(f_expand, kn_expand(in[0], KN_SHAPE(2, 3, 4)))
F1(f_squeeze, kn_unsqueeze(kn_squeeze(in[0], 1), 0))
F1(f_contiguous, kn_contiguous(in[0]))
F1(f_cat, kn_cat(in, 2, 1))
F1(f_stack, kn_stack(in, 2, 0))
F1(f_gather, kn_gather(in[0], 1, TI64(KN_SHAPE(3, 2), 0, 3, 1, 1, 2, 0)))
F1(f_index_select, kn_index_select(in[0], 0, TI64(KN_SHAPE(4), 2, 0, 2, 1)))
F1(f_matmul, kn_matmul(in[0], in[1]))
F1(f_linear, kn_linear(in[0], in[1], in[2]))
F1(f_softmax, kn_softmax(in[0], 1))
F1(f_log_softmax, kn_log_softmax(in[0], 0))
F1(f_layer_norm, kn_layer_norm(in[0], 1, in[1], in[2], 1e-5))
F1(f_layer_norm2, kn_layer_norm(in[0], 2, NULL, NULL, 1e-5))
F1(f_cross_entropy, kn_cross_entropy(in[0], TI64(KN_SHAPE(4), 1, 0, 2, 2), KN_REDUCE_MEAN))
F1(f_cross_entropy_none, kn_cross_entropy(in[0], TI64(KN_SHAPE(4), 1, 0, 2, 2), KN_REDUCE_NONE))
F1(f_nll, kn_nll_loss(kn_log_softmax(in[0], 1), TI64(KN_SHAPE(4), 0, 1, 2, 0), KN_REDUCE_SUM))
F1(f_mse, kn_mse_loss(in[0], in[1], KN_REDUCE_MEAN))
F1(f_scatter_add, kn_scatter_add(in[0], 0, TI64(KN_SHAPE(2, 3), 0, 1, 2, 2, 1, 0), in[1]))
F1(f_index_add, kn_index_add(in[0], 1, TI64(KN_SHAPE(2), 3, 0), in[1]))

Test(autograd, gradcheck_unary) {
    CHECK(f_exp, leaf(KN_SHAPE(3, 4), 1, 0, true));
    CHECK(f_log, leaf(KN_SHAPE(3, 4), 0.2, 2, false));
    CHECK(f_sqrt, leaf(KN_SHAPE(3, 4), 0.2, 2, true));
    CHECK(f_rsqrt, leaf(KN_SHAPE(3, 4), 0.2, 2, false));
    CHECK(f_tanh, leaf(KN_SHAPE(3, 4), 1, 0, true));
    CHECK(f_sigmoid, leaf(KN_SHAPE(3, 4), 2, 0, false));
    CHECK(f_sin, leaf(KN_SHAPE(5), 2, 0, false));
    CHECK(f_cos, leaf(KN_SHAPE(2, 3), 2, 0, true));
    CHECK(f_erf, leaf(KN_SHAPE(7), 1, 0, false));
    CHECK(f_gelu, leaf(KN_SHAPE(3, 4), 2, 0, true));
    CHECK(f_gelu_tanh, leaf(KN_SHAPE(3, 4), 2, 0, false));
    CHECK(f_neg, leaf(KN_SHAPE(3, 4), 1, 0, true));
    CHECK(f_abs, leaf(KN_SHAPE(3, 4), 1, 0, false));
    CHECK(f_relu, leaf(KN_SHAPE(3, 4), 1, 0, true));
    CHECK(f_clamp, leaf(KN_SHAPE(3, 4), 1, 0, false));
}

Test(autograd, gradcheck_binary_broadcast) {
    CHECK(f_add, leaf(KN_SHAPE(3, 1), 1, 0, false), leaf(KN_SHAPE(2, 1, 4), 1, 0, false));
    CHECK(f_sub, leaf(KN_SHAPE(3, 4), 1, 0, true), leaf(KN_SHAPE(4), 1, 0, false));
    CHECK(f_mul, leaf(KN_SHAPE(3, 4), 1, 0, true), leaf(KN_SHAPE(3, 1), 1, 0, false));
    CHECK(f_div, leaf(KN_SHAPE(2, 3), 1, 0, false), leaf(KN_SHAPE(3), 0.3, 2, false));
    CHECK(f_pow, leaf(KN_SHAPE(2, 3), 0.3, 2, false), leaf(KN_SHAPE(2, 3), 1, 0, true));
    CHECK(f_pow_scalar, leaf(KN_SHAPE(4), 1, 0, false));
    CHECK(f_maximum, leaf(KN_SHAPE(3, 4), 1, 0, true), leaf(KN_SHAPE(4), 1, 0, false));
    CHECK(f_minimum, leaf(KN_SHAPE(3, 1), 1, 0, false), leaf(KN_SHAPE(3, 4), 1, 0, false));
    CHECK(f_where, leaf(KN_SHAPE(3, 4), 1, 0, true), leaf(KN_SHAPE(1, 4), 1, 0, false));
}

Test(autograd, gradcheck_reductions) {
    CHECK(f_sum, leaf(KN_SHAPE(2, 3, 4), 1, 0, true));
    CHECK(f_sum_all, leaf(KN_SHAPE(3, 4), 1, 0, false));
    CHECK(f_mean, leaf(KN_SHAPE(2, 3, 4), 1, 0, true));
    CHECK(f_max, leaf(KN_SHAPE(3, 5), 1, 0, true));
    CHECK(f_min, leaf(KN_SHAPE(3, 5), 1, 0, false));
    CHECK(f_var, leaf(KN_SHAPE(3, 5), 1, 0, true));
    CHECK(f_logsumexp, leaf(KN_SHAPE(2, 3, 4), 1, 0, false));
}

Test(autograd, gradcheck_shapes) {
    CHECK(f_reshape, leaf(KN_SHAPE(3, 4), 1, 0, true));
    CHECK(f_transpose, leaf(KN_SHAPE(2, 3, 4), 1, 0, false));
    CHECK(f_permute, leaf(KN_SHAPE(2, 3, 4), 1, 0, true));
    CHECK(f_slice, leaf(KN_SHAPE(3, 6), 1, 0, true));
    CHECK(f_expand, leaf(KN_SHAPE(3, 1), 1, 0, false));
    CHECK(f_squeeze, leaf(KN_SHAPE(3, 1, 4), 1, 0, false));
    CHECK(f_contiguous, leaf(KN_SHAPE(3, 4), 1, 0, true));
    CHECK(f_cat, leaf(KN_SHAPE(2, 3), 1, 0, true), leaf(KN_SHAPE(2, 2), 1, 0, false));
    CHECK(f_stack, leaf(KN_SHAPE(2, 3), 1, 0, false), leaf(KN_SHAPE(2, 3), 1, 0, true));
    CHECK(f_gather, leaf(KN_SHAPE(3, 4), 1, 0, true));
    CHECK(f_index_select, leaf(KN_SHAPE(3, 4), 1, 0, false));
    CHECK(f_scatter_add, leaf(KN_SHAPE(3, 3), 1, 0, false), leaf(KN_SHAPE(2, 3), 1, 0, false));
    CHECK(f_index_add, leaf(KN_SHAPE(3, 4), 1, 0, true), leaf(KN_SHAPE(3, 2), 1, 0, false));
}

Test(autograd, gradcheck_nn) {
    CHECK(f_matmul, leaf(KN_SHAPE(3, 4), 1, 0, true), leaf(KN_SHAPE(4, 2), 1, 0, false));
    CHECK(f_matmul, leaf(KN_SHAPE(2, 1, 3, 4), 1, 0, false), leaf(KN_SHAPE(3, 4, 2), 1, 0, true));
    CHECK(f_matmul, leaf(KN_SHAPE(4), 1, 0, false), leaf(KN_SHAPE(2, 4, 3), 1, 0, false));
    CHECK(f_matmul, leaf(KN_SHAPE(3, 4), 1, 0, false), leaf(KN_SHAPE(4), 1, 0, false));
    CHECK(f_matmul, leaf(KN_SHAPE(4), 1, 0, false), leaf(KN_SHAPE(4), 1, 0, false));
    CHECK(f_linear, leaf(KN_SHAPE(2, 3, 4), 1, 0, false), leaf(KN_SHAPE(5, 4), 1, 0, true),
          leaf(KN_SHAPE(5), 1, 0, false));
    CHECK(f_softmax, leaf(KN_SHAPE(3, 4), 1, 0, true));
    CHECK(f_log_softmax, leaf(KN_SHAPE(3, 4), 1, 0, false));
    CHECK(f_layer_norm, leaf(KN_SHAPE(3, 5), 1, 0, true), leaf(KN_SHAPE(5), 1, 1, false),
          leaf(KN_SHAPE(5), 1, 0, false));
    CHECK(f_layer_norm2, leaf(KN_SHAPE(2, 3, 4), 1, 0, false));
    CHECK(f_cross_entropy, leaf(KN_SHAPE(4, 3), 2, 0, false));
    CHECK(f_cross_entropy_none, leaf(KN_SHAPE(4, 3), 2, 0, true));
    CHECK(f_nll, leaf(KN_SHAPE(4, 3), 1, 0, false));
    CHECK(f_mse, leaf(KN_SHAPE(3, 4), 1, 0, false), leaf(KN_SHAPE(4), 1, 0, true));
}

Test(autograd, accumulates_and_zero_grad) {
    kn_tensor *x = kn_set_requires_grad(TF64(KN_SHAPE(2), 1, 2), true);
    kn_tensor *y = kn_sum(kn_mul(x, x), KN_ALL_DIMS, false);
    cr_assert_eq(kn_backward(y, NULL), 0, "%s", kn_last_error());
    cr_assert_eq(at(kn_grad(x), 1), 4);
    y = kn_sum(kn_mul_scalar(x, 3), KN_ALL_DIMS, false);
    cr_assert_eq(kn_backward(y, NULL), 0);
    cr_assert_eq(at(kn_grad(x), 1), 7, "gradients accumulate");
    kn_zero_grad(x);
    cr_assert_null(kn_grad(x));
}

Test(autograd, shared_subexpression) {
    kn_tensor *x = kn_set_requires_grad(TF64(KN_SHAPE(1), 3), true);
    kn_tensor *a = kn_mul(x, x);
    kn_tensor *y = kn_add(kn_mul(a, x), a);  /* x^3 + x^2: dy/dx = 3x^2 + 2x = 33 */
    cr_assert_eq(kn_backward(y, NULL), 0);
    cr_assert_eq(at(kn_grad(x), 0), 33);
}

Test(autograd, non_scalar_needs_grad_out) {
    kn_tensor *x = kn_set_requires_grad(TF64(KN_SHAPE(2), 1, 2), true);
    kn_tensor *y = kn_mul_scalar(x, 2);
    cr_assert_eq(kn_backward(y, NULL), -1);
    cr_assert(strstr(kn_last_error(), "not a scalar"));
    cr_assert_eq(kn_backward(y, TF64(KN_SHAPE(2), 1, 10)), 0);
    cr_assert_eq(at(kn_grad(x), 1), 20);
    cr_assert_eq(kn_backward(kn_mul_scalar(x, 2), TF64(KN_SHAPE(3), 1, 1, 1)), -1);
    cr_assert(strstr(kn_last_error(), "grad_out has shape [3]"));
}

Test(autograd, no_grad_scope) {
    kn_tensor *x = kn_set_requires_grad(TF32(KN_SHAPE(2), 1, 2), true);
    kn_no_grad_begin();
    kn_no_grad_begin();
    cr_assert_not(kn_grad_enabled());
    kn_tensor *y = kn_mul(x, x);
    kn_no_grad_end();
    cr_assert_not(kn_grad_enabled(), "scopes nest");
    kn_no_grad_end();
    cr_assert(kn_grad_enabled());
    cr_assert_not(kn_requires_grad(y));
    cr_assert(kn_requires_grad(kn_mul(x, x)));
}

Test(autograd, inplace_after_save_is_an_error) {
    kn_tensor *x = kn_set_requires_grad(TF32(KN_SHAPE(2), 1, 2), true);
    kn_tensor *w = TF32(KN_SHAPE(2), 3, 4);
    kn_tensor *y = kn_sum(kn_mul(x, w), KN_ALL_DIMS, false);
    cr_assert_eq(kn_add_scalar_(w, 1), 0);  /* w was saved by kn_mul */
    cr_assert_eq(kn_backward(y, NULL), -1);
    cr_assert(strstr(kn_last_error(), "kn_mul was modified in place"), "%s", kn_last_error());
    cr_assert_null(kn_grad(x), "a failed backward changes no gradient");
}

Test(autograd, inplace_on_unsaved_input_is_fine) {
    kn_tensor *x = kn_set_requires_grad(TF32(KN_SHAPE(2), 1, 2), true);
    kn_tensor *c = TF32(KN_SHAPE(2), 3, 4);
    kn_tensor *y = kn_sum(kn_add(x, c), KN_ALL_DIMS, false);
    cr_assert_eq(kn_mul_scalar_(c, 2), 0);  /* add saves nothing */
    cr_assert_eq(kn_backward(y, NULL), 0, "%s", kn_last_error());
    cr_assert_eq(at(kn_grad(x), 0), 1);
}

Test(autograd, inplace_on_leaf_needs_no_grad) {
    kn_tensor *x = kn_set_requires_grad(TF32(KN_SHAPE(2), 1, 2), true);
    cr_assert_eq(kn_add_scalar_(x, 1), -1);
    cr_assert(strstr(kn_last_error(), "kn_add_scalar_"));
    cr_assert_eq(at(x, 0), 1, "a refused in-place op leaves the tensor unchanged");
    kn_no_grad_begin();
    cr_assert_eq(kn_add_scalar_(x, 1), 0);
    kn_no_grad_end();
    cr_assert_eq(at(x, 0), 2);
}

Test(autograd, second_backward_through_freed_graph) {
    kn_tensor *x = kn_set_requires_grad(TF32(KN_SHAPE(2), 1, 2), true);
    kn_tensor *y = kn_sum(kn_exp(x), KN_ALL_DIMS, false);
    cr_assert_eq(kn_backward(y, NULL), 0);
    cr_assert_eq(kn_backward(y, NULL), -1);
    cr_assert(strstr(kn_last_error(), "already freed"), "%s", kn_last_error());
}

Test(autograd, double_backward) {
    kn_tensor *x = kn_set_requires_grad(TF64(KN_SHAPE(1), 2), true);
    kn_tensor *y = kn_mul(kn_mul(x, x), x);  /* x^3 */
    cr_assert_eq(kn_backward_ex(y, NULL, true), 0, "%s", kn_last_error());
    kn_tensor *g = kn_retain(kn_grad(x));    /* 3x^2 = 12, with a graph */
    cr_assert_eq(at(g, 0), 12);
    cr_assert(kn_requires_grad(g));
    kn_zero_grad(x);
    cr_assert_eq(kn_backward(g, NULL), 0, "%s", kn_last_error());
    cr_assert_eq(at(kn_grad(x), 0), 12, "d(3x^2)/dx = 6x = 12");
    kn_release(g);
}

Test(autograd, requires_grad_rules) {
    kn_tensor *i = kn_zeros(KN_SHAPE(2), KN_I64);
    cr_assert_null(kn_set_requires_grad(i, true));
    cr_assert(strstr(kn_last_error(), "only float tensors"));
    kn_tensor *x = kn_set_requires_grad(TF32(KN_SHAPE(2), 1, 2), true);
    kn_tensor *y = kn_exp(x);
    cr_assert_not(kn_is_leaf(y));
    cr_assert_null(kn_set_requires_grad(y, false));
    cr_assert(strstr(kn_last_error(), "only leaves"));
    cr_assert_eq(kn_backward(kn_zeros(KN_SHAPE(1), KN_F32), NULL), -1);
    cr_assert(strstr(kn_last_error(), "does not require grad"));
    kn_tensor *d = kn_detach(y);
    cr_assert_not(kn_requires_grad(d));
}

Test(autograd, cast_passes_gradient_back_in_input_dtype) {
    kn_tensor *x = kn_set_requires_grad(TF32(KN_SHAPE(3), 1, 2, 3), true);
    kn_tensor *y = kn_sum(kn_mul(kn_cast(x, KN_F64), TF64(KN_SHAPE(3), 4, 5, 6)), KN_ALL_DIMS, false);
    cr_assert_eq(kn_backward(y, NULL), 0, "%s", kn_last_error());
    cr_assert_eq(kn_dtype_of(kn_grad(x)), KN_F32);
    cr_assert_eq(at(kn_grad(x), 2), 6);
}

Test(autograd, mixed_dtype_grads_match_leaf_dtype) {
    kn_tensor *a = kn_set_requires_grad(TF32(KN_SHAPE(2), 1, 2), true);
    kn_tensor *b = kn_set_requires_grad(TF64(KN_SHAPE(2), 3, 4), true);
    cr_assert_eq(kn_backward(kn_sum(kn_mul(a, b), KN_ALL_DIMS, false), NULL), 0);
    cr_assert_eq(kn_dtype_of(kn_grad(a)), KN_F32);
    cr_assert_eq(kn_dtype_of(kn_grad(b)), KN_F64);
    cr_assert_eq(at(kn_grad(a), 1), 4);
}

/* The graph's memory goes away with its tensors: no cycles, no leaks. */
Test(autograd, graph_is_freed_with_the_pool) {
    kn_tensor *x = kn_set_requires_grad(kn_zeros(KN_SHAPE(64), KN_F32), true);
    int64_t before = kn_live_tensors();
    for (int i = 0; i < 50; i++) {
        kn_pool_push();
        kn_tensor *y = kn_sum(kn_tanh(kn_mul_scalar(kn_exp(x), 2)), KN_ALL_DIMS, false);
        cr_assert_eq(kn_backward(y, NULL), 0);
        kn_pool_pop();
        cr_assert_eq(kn_live_tensors(), before + 1, "iteration %d", i);  /* + x's grad */
    }
}
