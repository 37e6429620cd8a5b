/* Modules (Linear, Conv2d, Sequential, Dropout, ReLU, Flatten, Embedding,
 * MaxPool2d) and losses (cross_entropy, nll_loss, mse_loss): shapes, PyTorch's
 * init bounds, forward against the plain ops, parameter listing, gradients
 * and every error. */
#include "helpers.h"
#include "../core/scalar.h"
#include <math.h>
#include <string.h>

KN_SUITE(module, 42);


static void assert_shape(const kn_tensor *t, const int64_t *shape, int nd) {
    cr_assert_not_null(t, "%s", kn_last_error());
    cr_assert_eq(kn_ndim(t), nd);
    for (int d = 0; d < nd; d++)
        cr_assert_eq(kn_shape(t)[d], shape[d], "dim %d: %lld != %lld", d, (long long)kn_shape(t)[d],
                     (long long)shape[d]);
}

static kn_tensor *param(kn_module *m, int i) {
    kn_tensor *ps[8] = {0};
    int n = kn_parameters(m, ps, NULL, 8);
    cr_assert(i < n, "module has %d parameters", n);
    return ps[i];
}

/* Values lie in [-bound, bound], reach near both ends and fill 8 equal bins
 * evenly (within frac of the expected count). */
static void assert_uniform(const kn_tensor *t, double bound, double frac) {
    int64_t n = kn_numel(t), bins[8] = {0};
    double lo = INFINITY, hi = -INFINITY;
    for (int64_t i = 0; i < n; i++) {
        double v = at(t, i);
        cr_assert(v >= -bound && v <= bound, "element %lld = %g outside +-%g", (long long)i, v, bound);
        lo = fmin(lo, v), hi = fmax(hi, v);
        int b = (int)((v + bound) / (2 * bound) * 8);
        bins[b > 7 ? 7 : b]++;
    }
    cr_assert(lo < -0.95 * bound && hi > 0.95 * bound, "range [%g, %g] for bound %g", lo, hi, bound);
    for (int b = 0; b < 8; b++)
        cr_assert(fabs((double)bins[b] - n / 8.0) <= frac * n / 8.0, "bin %d holds %lld of %lld", b,
                  (long long)bins[b], (long long)n);
}

/* ---- Linear and Conv2d ---- */

Test(module, linear_shapes_and_init) {
    kn_module *m = kn_linear_new(256, 192, true);
    cr_assert_not_null(m, "%s", kn_last_error());
    kn_tensor *ps[4];
    const char *names[4];
    cr_assert_eq(kn_parameters(m, ps, names, 4), 2);
    cr_assert_str_eq(names[0], "weight");
    cr_assert_str_eq(names[1], "bias");
    assert_shape(ps[0], KN_SHAPE(192, 256));
    assert_shape(ps[1], KN_SHAPE(192));
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(kn_dtype_of(ps[i]), KN_F32);
        cr_assert(kn_requires_grad(ps[i]) && kn_is_leaf(ps[i]));
        cr_assert(kn_is_contiguous(ps[i]));
    }
    assert_uniform(ps[0], 1 / sqrt(256.0), 0.05);  /* torch: kaiming_uniform(a=sqrt(5)) */
    assert_uniform(ps[1], 1 / sqrt(256.0), 0.5);
    kn_module_free(m);

    m = kn_linear_new(3, 2, false);
    cr_assert_eq(kn_parameters(m, ps, names, 4), 1);
    cr_assert_str_eq(names[0], "weight");
    kn_module_free(m);
}

Test(module, conv2d_shapes_and_init) {
    kn_module *m = kn_conv2d_new(16, 32, 3, 1, 1, true);
    cr_assert_not_null(m, "%s", kn_last_error());
    assert_shape(param(m, 0), KN_SHAPE(32, 16, 3, 3));
    assert_shape(param(m, 1), KN_SHAPE(32));
    assert_uniform(param(m, 0), 1 / sqrt(16.0 * 9), 0.1);  /* fan_in = in_ch * k * k */
    assert_uniform(param(m, 1), 1 / sqrt(16.0 * 9), 1.0);
    kn_module_free(m);
    m = kn_conv2d_new(2, 4, 5, 2, 0, false);
    cr_assert_eq(kn_parameters(m, NULL, NULL, 0), 1);
    assert_shape(param(m, 0), KN_SHAPE(4, 2, 5, 5));
    kn_module_free(m);
}

Test(module, init_is_reproducible_under_seed) {
    kn_manual_seed(7);
    kn_module *a = kn_linear_new(5, 4, true);
    kn_module *b = kn_linear_new(5, 4, true);
    kn_manual_seed(7);
    kn_module *c = kn_linear_new(5, 4, true);
    kn_manual_seed(8);
    kn_module *d = kn_linear_new(5, 4, true);
    assert_equal(param(c, 0), param(a, 0));
    assert_equal(param(c, 1), param(a, 1));
    bool ab = false, ad = false;
    for (int i = 0; i < 20; i++) {
        ab |= at(param(a, 0), i) != at(param(b, 0), i);
        ad |= at(param(a, 0), i) != at(param(d, 0), i);
    }
    cr_assert(ab, "the stream must advance between modules");
    cr_assert(ad, "another seed must give other weights");
    kn_module_free(a);
    kn_module_free(b);
    kn_module_free(c);
    kn_module_free(d);
}

Test(module, linear_forward_is_kn_linear) {
    kn_module *m = kn_linear_new(5, 3, true);
    kn_tensor *w = param(m, 0), *b = param(m, 1);
    kn_tensor *x = kn_randn(KN_SHAPE(4, 5), KN_F32);
    assert_equal(kn_forward(m, x), kn_linear(x, w, b));
    kn_tensor *x3 = kn_randn(KN_SHAPE(2, 4, 5), KN_F32);
    kn_tensor *y3 = kn_forward(m, x3);
    assert_shape(y3, KN_SHAPE(2, 4, 3));
    assert_equal(y3, kn_linear(x3, w, b));
    /* gradients reach both parameters */
    cr_assert_eq(kn_backward(kn_sum(y3, KN_ALL_DIMS, false), NULL), 0, "%s", kn_last_error());
    assert_shape(kn_grad(w), KN_SHAPE(3, 5));
    assert_close(kn_grad(b), kn_full(KN_SHAPE(3), 8, KN_F32), 0, 0);
    kn_module *nb = kn_linear_new(5, 3, false);
    assert_equal(kn_forward(nb, x), kn_linear(x, param(nb, 0), NULL));
    EXPECT_ERR(kn_forward(m, kn_randn(KN_SHAPE(4, 6), KN_F32)), "kn_linear");
    kn_module_free(m);
    kn_module_free(nb);
}

Test(module, conv2d_and_max_pool2d_forward) {
    kn_module *conv = kn_conv2d_new(3, 4, 3, 2, 1, true);
    kn_module *pool = kn_max_pool2d_new(2, 2, 0);
    cr_assert(conv && pool, "%s", kn_last_error());
    kn_tensor *x = kn_randn(KN_SHAPE(2, 3, 9, 9), KN_F32);
    kn_tensor *y = kn_forward(conv, x);
    assert_shape(y, KN_SHAPE(2, 4, 5, 5));
    assert_equal(y, kn_conv2d(x, param(conv, 0), param(conv, 1), 2, 1));
    kn_tensor *z = kn_forward(pool, y);
    assert_shape(z, KN_SHAPE(2, 4, 2, 2));
    assert_equal(z, kn_max_pool2d(y, 2, 2, 0));
    cr_assert_eq(kn_backward(kn_sum(z, KN_ALL_DIMS, false), NULL), 0, "%s", kn_last_error());
    assert_shape(kn_grad(param(conv, 0)), KN_SHAPE(4, 3, 3, 3));
    assert_shape(kn_grad(param(conv, 1)), KN_SHAPE(4));
    /* each output channel has 2 images x 4 pooled maxima, each fed by one conv output */
    assert_close(kn_grad(param(conv, 1)), kn_full(KN_SHAPE(4), 8, KN_F32), 0, 0);
    EXPECT_ERR(kn_forward(conv, kn_randn(KN_SHAPE(2, 5, 9, 9), KN_F32)), "kn_conv2d");
    kn_module_free(conv);
    kn_module_free(pool);
}

/* ---- Sequential and parameters ---- */

Test(module, sequential_parameters_order_and_names) {
    kn_module *l0 = kn_linear_new(4, 8, true), *l2 = kn_linear_new(8, 3, true), *l4 = kn_linear_new(3, 2, false);
    kn_module *m = kn_sequential_new(l0, kn_relu_new(), l2, kn_dropout_new(0.5), l4, NULL);
    cr_assert_not_null(m, "%s", kn_last_error());
    kn_tensor *ps[8] = {0};
    const char *names[8] = {0};
    cr_assert_eq(kn_parameters(m, ps, names, 8), 5);
    const char *want[] = {"0.weight", "0.bias", "2.weight", "2.bias", "4.weight"};
    kn_tensor *wantp[] = {param(l0, 0), param(l0, 1), param(l2, 0), param(l2, 1), param(l4, 0)};
    for (int i = 0; i < 5; i++) {
        cr_assert_str_eq(names[i], want[i]);
        cr_assert_eq(ps[i], wantp[i], "parameter %d is not %s", i, want[i]);
    }
    cr_assert_null(ps[5]);
    cr_assert_null(names[5]);

    /* fewer slots than parameters: the total comes back, nothing past max is written */
    kn_tensor *few[3] = {0};
    const char *few_names[3] = {0};
    cr_assert_eq(kn_parameters(m, few, few_names, 2), 5);
    cr_assert(few[0] == ps[0] && few[1] == ps[1] && !few[2]);
    cr_assert_str_eq(few_names[1], "0.bias");
    cr_assert_null(few_names[2]);
    cr_assert_eq(kn_parameters(m, NULL, NULL, 0), 5);
    cr_assert_eq(kn_parameters(m, few, NULL, -3), 5);
    /* names from the first call stay valid after a second call */
    cr_assert_str_eq(names[4], "4.weight");
    cr_assert_str_eq(names[0], "0.weight");

    kn_module *nested = kn_sequential_new(kn_sequential_new(kn_linear_new(2, 2, true), kn_relu_new(), NULL),
                                          kn_linear_new(2, 1, true), NULL);
    cr_assert_eq(kn_parameters(nested, ps, names, 8), 4);
    const char *want_nested[] = {"0.0.weight", "0.0.bias", "1.weight", "1.bias"};
    for (int i = 0; i < 4; i++) cr_assert_str_eq(names[i], want_nested[i]);
    kn_module_free(m);
    kn_module_free(nested);
}

Test(module, sequential_forward_composes) {
    kn_module *l0 = kn_linear_new(6, 5, true), *l2 = kn_linear_new(5, 2, true);
    kn_module *m = kn_sequential_new(l0, kn_relu_new(), l2, NULL);
    kn_tensor *x = kn_randn(KN_SHAPE(7, 6), KN_F32);
    kn_tensor *want = kn_linear(kn_relu(kn_linear(x, param(l0, 0), param(l0, 1))), param(l2, 0), param(l2, 1));
    assert_equal(kn_forward(m, x), want);
    /* an empty Sequential is the identity; it has no parameters */
    kn_module *id = kn_sequential_new(NULL);
    cr_assert_not_null(id);
    assert_equal(kn_forward(id, x), x);
    cr_assert_eq(kn_parameters(id, NULL, NULL, 0), 0);
    /* the first failing child's error comes back; nothing leaks (teardown) */
    EXPECT_ERR(kn_forward(m, kn_randn(KN_SHAPE(7, 4), KN_F32)), "kn_linear");
    kn_module_free(m);
    kn_module_free(id);
}

Test(module, train_and_eval_reach_children) {
    kn_module *m = kn_sequential_new(kn_linear_new(4, 4, true), kn_dropout_new(0.9), NULL);
    kn_tensor *x = kn_randn(KN_SHAPE(3, 4), KN_F32);
    kn_train(m, false);
    kn_tensor *a = kn_forward(m, x);
    assert_equal(kn_forward(m, x), a);
    kn_train(m, true);
    kn_tensor *b = kn_forward(m, x);
    int zeros = 0;
    for (int i = 0; i < 12; i++) zeros += at(b, i) == 0;
    cr_assert(zeros > 0, "dropout in train mode after kn_train(m, true)");
    kn_train(NULL, true);
    kn_module_free(m);
}

/* ---- Dropout ---- */

Test(module, dropout_eval_is_identity) {
    kn_module *d = kn_dropout_new(0.5);
    kn_train(d, false);
    kn_tensor *x = kn_randn(KN_SHAPE(10, 10), KN_F32);
    assert_equal(kn_forward(d, x), x);
    /* p = 0 is the identity in training too */
    kn_module *d0 = kn_dropout_new(0);
    assert_equal(kn_forward(d0, x), x);
    kn_module_free(d);
    kn_module_free(d0);
}

Test(module, dropout_train_zeroes_p_and_scales) {
    const double p = 0.3;
    const int64_t n = 200000;
    kn_module *d = kn_dropout_new(p);
    kn_tensor *x = kn_ones(KN_SHAPE(n), KN_F32);
    kn_tensor *y = kn_forward(d, x);
    assert_shape(y, KN_SHAPE(n));
    cr_assert_eq(kn_dtype_of(y), KN_F32);
    int64_t zeros = 0;
    float scale = (float)(1 / (1 - p));
    for (int64_t i = 0; i < n; i++) {
        double v = at(y, i);
        if (v == 0) zeros++;
        else cr_assert(fabs(v - scale) <= 1e-6 * scale, "kept element %lld = %.9g, want %.9g", (long long)i, v, scale);
    }
    double frac = (double)zeros / (double)n;  /* sd of frac is about 0.001 */
    cr_assert(fabs(frac - p) < 0.006, "dropped fraction %g for p = %g", frac, p);
    /* the expectation is kept (mean of y close to 1) */
    cr_assert(fabs(kn_item(kn_mean(y, KN_ALL_DIMS, false)) - 1) < 0.01);
    kn_module_free(d);
}

Test(module, dropout_is_reproducible_under_seed) {
    kn_module *d = kn_dropout_new(0.5);
    kn_tensor *x = kn_randn(KN_SHAPE(64), KN_F64);
    kn_manual_seed(3);
    kn_tensor *a = kn_forward(d, x), *b = kn_forward(d, x);
    kn_manual_seed(3);
    kn_tensor *c = kn_forward(d, x);
    assert_equal(c, a);
    bool differ = false;
    for (int i = 0; i < 64; i++) differ |= (at(a, i) == 0) != (at(b, i) == 0);
    cr_assert(differ, "consecutive calls must draw new masks");
    cr_assert_eq(kn_dtype_of(a), KN_F64);
    kn_module_free(d);
}

Test(module, dropout_gradient_flows_through_kept_only) {
    const double p = 0.4;
    kn_module *d = kn_dropout_new(p);
    kn_tensor *x = kn_set_requires_grad(kn_randn(KN_SHAPE(500), KN_F64), true);
    kn_tensor *y = kn_forward(d, x);
    cr_assert(kn_requires_grad(y));
    cr_assert_eq(kn_backward(kn_sum(y, KN_ALL_DIMS, false), NULL), 0, "%s", kn_last_error());
    kn_tensor *g = kn_grad(x);
    int kept = 0;
    for (int i = 0; i < 500; i++) {
        bool keep = at(y, i) != 0;
        kept += keep;
        if (keep) cr_assert(fabs(at(y, i) - at(x, i) / (1 - p)) < 1e-12);
        cr_assert_eq(at(g, i), keep ? 1 / (1 - p) : 0, "grad %d = %g (kept %d)", i, at(g, i), keep);
    }
    cr_assert(kept > 200 && kept < 400, "kept %d of 500", kept);
    kn_module_free(d);
}

/* ---- ReLU, Flatten, Embedding ---- */

Test(module, relu_and_flatten) {
    kn_module *r = kn_relu_new(), *f = kn_flatten_new();
    kn_tensor *x = kn_randn(KN_SHAPE(2, 3, 4, 5), KN_F32);
    assert_equal(kn_forward(r, x), kn_relu(x));
    kn_tensor *y = kn_forward(f, x);
    assert_shape(y, KN_SHAPE(2, 60));
    for (int i = 0; i < 120; i++) cr_assert_eq(at(y, i), at(x, i));
    assert_shape(kn_forward(f, kn_zeros(KN_SHAPE(3, 7), KN_F32)), KN_SHAPE(3, 7));
    assert_shape(kn_forward(f, kn_zeros(KN_SHAPE(0, 3, 4), KN_F32)), KN_SHAPE(0, 12));
    assert_shape(kn_forward(f, kn_zeros(KN_SHAPE(2, 0, 4), KN_F32)), KN_SHAPE(2, 0));
    /* a strided input flattens in C order */
    kn_tensor *t = kn_transpose(kn_randn(KN_SHAPE(2, 3, 4), KN_F32), 1, 2);
    kn_tensor *ft = kn_forward(f, t);
    assert_shape(ft, KN_SHAPE(2, 12));
    for (int i = 0; i < 24; i++) cr_assert_eq(at(ft, i), at(t, i));
    kn_module_free(r);
    kn_module_free(f);
}

Test(module, embedding_lookup_and_init) {
    kn_module *e = kn_embedding_new(10, 4);
    cr_assert_not_null(e, "%s", kn_last_error());
    kn_tensor *w = param(e, 0);
    assert_shape(w, KN_SHAPE(10, 4));
    cr_assert(kn_requires_grad(w) && kn_is_leaf(w));
    kn_tensor *y = kn_forward(e, TI64(KN_SHAPE(4), 3, 1, 3, 0));
    assert_shape(y, KN_SHAPE(4, 4));
    const int rows[4] = {3, 1, 3, 0};
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) cr_assert_eq(at(y, i * 4 + j), at(w, rows[i] * 4 + j));
    /* i32 indices, and any index shape: out = index.shape + [dim] */
    kn_tensor *i32 = kn_from_data((const int32_t[]){9, 0, 5, 5, 2, 1}, KN_SHAPE(2, 3), KN_I32);
    kn_tensor *y2 = kn_forward(e, i32);
    assert_shape(y2, KN_SHAPE(2, 3, 4));
    for (int i = 0; i < 6; i++)
        for (int j = 0; j < 4; j++) cr_assert_eq(at(y2, i * 4 + j), at(w, (int64_t)at(i32, i) * 4 + j));
    assert_shape(kn_forward(e, kn_scalar(7, KN_I64)), KN_SHAPE(4));
    EXPECT_ERR(kn_forward(e, TI64(KN_SHAPE(2), 1, 10)), "10");
    EXPECT_ERR(kn_forward(e, TI64(KN_SHAPE(1), -1)), "-1");
    EXPECT_ERR(kn_forward(e, TF32(KN_SHAPE(1), 1)), "f32");
    kn_module_free(e);

    kn_module *big = kn_embedding_new(200, 50);  /* N(0, 1) like torch */
    kn_tensor *bw = param(big, 0);
    double mean = kn_item(kn_mean(bw, KN_ALL_DIMS, false)), var = kn_item(kn_var(bw, KN_ALL_DIMS, 1, false));
    cr_assert(fabs(mean) < 0.04 && fabs(var - 1) < 0.05, "mean %g var %g", mean, var);
    kn_module_free(big);
}

Test(module, embedding_gradient_accumulates_repeated_rows) {
    kn_module *e = kn_embedding_new(5, 3);
    kn_tensor *w = param(e, 0);
    kn_tensor *idx = TI64(KN_SHAPE(2, 3), 1, 4, 1, 1, 0, 4);
    kn_tensor *up = kn_randn(KN_SHAPE(2, 3, 3), KN_F32);
    kn_tensor *y = kn_forward(e, idx);
    cr_assert_eq(kn_backward(kn_sum(kn_mul(y, up), KN_ALL_DIMS, false), NULL), 0, "%s", kn_last_error());
    kn_tensor *g = kn_grad(w);
    assert_shape(g, KN_SHAPE(5, 3));
    for (int r = 0; r < 5; r++)
        for (int j = 0; j < 3; j++) {
            double want = 0;
            for (int k = 0; k < 6; k++)
                if (at(idx, k) == r) want += at(up, k * 3 + j);
            cr_assert(fabs(at(g, r * 3 + j) - want) < 1e-6, "grad[%d,%d] = %g, want %g", r, j,
                      at(g, r * 3 + j), want);
        }
    kn_module_free(e);
}

/* ---- constructor and API errors ---- */

Test(module, constructor_errors) {
    EXPECT_ERR(kn_linear_new(0, 3, true), "kn_linear_new");
    EXPECT_ERR(kn_linear_new(3, -1, false), "kn_linear_new");
    EXPECT_ERR(kn_conv2d_new(0, 3, 3, 1, 0, true), "kn_conv2d_new");
    EXPECT_ERR(kn_conv2d_new(3, 0, 3, 1, 0, true), "kn_conv2d_new");
    EXPECT_ERR(kn_conv2d_new(3, 3, 0, 1, 0, true), "kn_conv2d_new");
    EXPECT_ERR(kn_conv2d_new(3, 3, 3, 0, 0, true), "kn_conv2d_new");
    EXPECT_ERR(kn_conv2d_new(3, 3, 3, 1, -1, true), "kn_conv2d_new");
    EXPECT_ERR(kn_max_pool2d_new(0, 1, 0), "kn_max_pool2d_new");
    EXPECT_ERR(kn_max_pool2d_new(2, 0, 0), "kn_max_pool2d_new");
    EXPECT_ERR(kn_max_pool2d_new(2, 2, -1), "kn_max_pool2d_new");
    EXPECT_ERR(kn_max_pool2d_new(3, 1, 2), "kn_max_pool2d_new");  /* padding over half the kernel */
    EXPECT_ERR(kn_dropout_new(-0.1), "kn_dropout_new");
    EXPECT_ERR(kn_dropout_new(1.0), "kn_dropout_new");
    EXPECT_ERR(kn_dropout_new(NAN), "kn_dropout_new");
    EXPECT_ERR(kn_embedding_new(0, 4), "kn_embedding_new");
    EXPECT_ERR(kn_embedding_new(4, -2), "kn_embedding_new");
    /* the boundary cases are accepted */
    kn_module *ok[] = {kn_max_pool2d_new(2, 1, 1), kn_dropout_new(0), kn_conv2d_new(1, 1, 1, 1, 0, false),
                       kn_linear_new(1, 1, true), kn_embedding_new(1, 1)};
    for (int i = 0; i < 5; i++) {
        cr_assert_not_null(ok[i], "case %d: %s", i, kn_last_error());
        kn_module_free(ok[i]);
    }
    /* NULL handling */
    kn_module *r = kn_relu_new();
    EXPECT_ERR(kn_forward(NULL, kn_ones(KN_SHAPE(1), KN_F32)), "kn_forward");
    EXPECT_ERR(kn_forward(r, NULL), "kn_forward");
    kn_clear_error();
    kn_tensor *bad = kn_reshape(kn_ones(KN_SHAPE(4), KN_F32), KN_SHAPE(3));
    cr_assert_null(kn_forward(r, bad));
    cr_assert(strstr(kn_last_error(), "kn_reshape"), "the first error is kept: %s", kn_last_error());
    kn_clear_error();
    cr_assert_eq(kn_parameters(NULL, NULL, NULL, 0), -1);
    cr_assert(strstr(kn_last_error(), "kn_parameters"));
    kn_module_free(NULL);
    kn_module_free(r);
}

/* ---- losses ---- */

/* Per-row cross entropy in double: logsumexp(x_i) - x_i[t_i]. */
static double ref_ce(const kn_tensor *x, int64_t i, int64_t t) {
    int64_t c = kn_shape(x)[1];
    double m = -INFINITY, s = 0;
    for (int64_t j = 0; j < c; j++) m = fmax(m, at(x, i * c + j));
    for (int64_t j = 0; j < c; j++) s += exp(at(x, i * c + j) - m);
    return m + log(s) - at(x, i * c + t);
}

static void check_ce(kn_dtype dt, kn_dtype tdt, double rtol, double atol) {
    const int64_t n = 7, c = 5;
    kn_tensor *x = kn_mul_scalar(kn_randn(KN_SHAPE(n, c), dt), 3);
    kn_tensor *t = kn_cast(kn_mul_scalar(kn_rand(KN_SHAPE(n), KN_F64), (double)c), tdt);
    double rows[7], sum = 0;
    for (int i = 0; i < n; i++) sum += rows[i] = ref_ce(x, i, (int64_t)at(t, i));
    kn_tensor *none = kn_cross_entropy(x, t, KN_REDUCE_NONE);
    assert_shape(none, KN_SHAPE(n));
    cr_assert_eq(kn_dtype_of(none), dt);
    for (int i = 0; i < n; i++)
        cr_assert(fabs(at(none, i) - rows[i]) <= rtol * fabs(rows[i]) + atol, "row %d: %.17g vs %.17g", i,
                  at(none, i), rows[i]);
    kn_tensor *s = kn_cross_entropy(x, t, KN_REDUCE_SUM), *m = kn_cross_entropy(x, t, KN_REDUCE_MEAN);
    assert_shape(s, NULL, 0);
    assert_shape(m, NULL, 0);
    cr_assert_eq(kn_dtype_of(m), dt);
    cr_assert(fabs(kn_item(s) - sum) <= rtol * sum + n * atol, "sum %.17g vs %.17g", kn_item(s), sum);
    cr_assert(fabs(kn_item(m) - sum / n) <= rtol * sum / n + atol, "mean %.17g vs %.17g", kn_item(m), sum / n);
}

Test(module, loss_cross_entropy_matches_reference) {
    check_ce(KN_F64, KN_I64, 1e-13, 1e-14);
    check_ce(KN_F64, KN_I32, 1e-13, 1e-14);
    /* f32: logsumexp - x_t cancels, so an absolute part of a few ulps of |x| ~ 10 */
    check_ce(KN_F32, KN_I64, 2e-6, 4e-6);
    check_ce(KN_F32, KN_I32, 2e-6, 4e-6);
}

/* The f32 loss of one row as nn/loss.c documents it, in f32: the max, the
 * in-order sum of kn_s_exp_nonpos_f32(x - max), then max + log(sum) - x[t]. */
static float ce_row_f32(const float *x, int64_t c, int64_t t) {
    float m = x[0], s = 0;
    for (int64_t j = 1; j < c; j++) m = x[j] > m ? x[j] : m;
    for (int64_t j = 0; j < c; j++) s += kn_s_exp_nonpos_f32(x[j] - m);
    return m + kn_s_log_f32(s) - x[t];
}

/* Short rows run 16 to a vector (one row per lane), longer ones one by one:
 * both give the formula's bits, for partial blocks, special values and
 * rows split across threads. */
Test(module, loss_cross_entropy_f32_rows_are_the_formula_bit_for_bit) {
    const int64_t shapes[][2] = {{1, 10}, {15, 10}, {16, 10}, {37, 10}, {40, 32}, {9, 33}, {300, 3}, {5, 1}, {700, 10}};
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
        int64_t n = shapes[k][0], c = shapes[k][1];
        kn_tensor *x = kn_mul_scalar(kn_randn(KN_SHAPE(n, c), KN_F32), 4);
        float *xv = kn_data(x);
        if (n > 3 && c > 2) {  /* a NaN, an infinite max, a row of -inf but one */
            xv[c + 1] = NAN;
            xv[2 * c] = INFINITY;
            for (int64_t j = 1; j < c; j++) xv[3 * c + j] = -INFINITY;
        }
        kn_tensor *t = kn_cast(kn_mul_scalar(kn_rand(KN_SHAPE(n), KN_F64), (double)c), KN_I64);
        const int64_t *tv = kn_data(t);
        kn_tensor *l = kn_cross_entropy(x, t, KN_REDUCE_NONE);
        cr_assert_not_null(l, "%s", kn_last_error());
        const float *lv = kn_data(l);
        for (int64_t i = 0; i < n; i++) {
            float want = ce_row_f32(xv + i * c, c, tv[i]);
            cr_assert(memcmp(&lv[i], &want, sizeof want) == 0 || (isnan(lv[i]) && isnan(want)),
                      "[%lld,%lld] row %lld: %.9g, formula %.9g", (long long)n, (long long)c, (long long)i,
                      lv[i], want);
        }
    }
}

Test(module, loss_cross_entropy_is_stable_for_huge_logits) {
    for (int k = 0; k < 2; k++) {
        kn_dtype dt = k ? KN_F32 : KN_F64;
        kn_tensor *x = kn_set_requires_grad(
            kn_cast(TF64(KN_SHAPE(3, 3), 1e4, -1e4, 0, -1e4, 1e4, 1e4, 0, 0, 1e4), dt), true);
        kn_tensor *t = TI64(KN_SHAPE(3), 1, 2, 0);
        kn_tensor *l = kn_cross_entropy(x, t, KN_REDUCE_NONE);
        const double want[3] = {2e4, log(2.0), 1e4};
        for (int i = 0; i < 3; i++)
            cr_assert(fabs(at(l, i) - want[i]) <= (k ? 1e-3 : 1e-9), "%s row %d: %.9g vs %.9g",
                      kn_dtype_name(dt), i, at(l, i), want[i]);
        kn_tensor *m = kn_cross_entropy(x, t, KN_REDUCE_MEAN);
        cr_assert(isfinite(kn_item(m)));
        cr_assert_eq(kn_backward(m, NULL), 0, "%s", kn_last_error());
        /* d/dx = (softmax - onehot) / N */
        const double g[9] = {1, -1, 0, 0, 0.5, -0.5, -1, 0, 1};
        for (int i = 0; i < 9; i++)
            cr_assert(fabs(at(kn_grad(x), i) - g[i] / 3) < 1e-6, "grad %d = %g", i, at(kn_grad(x), i));
    }
}

Test(module, loss_cross_entropy_errors) {
    kn_tensor *x = kn_randn(KN_SHAPE(3, 4), KN_F32);
    EXPECT_ERR(kn_cross_entropy(x, TI64(KN_SHAPE(3), 0, 4, 1), KN_REDUCE_MEAN), "kn_cross_entropy: target 4");
    EXPECT_ERR(kn_cross_entropy(x, TI64(KN_SHAPE(3), 0, -1, 1), KN_REDUCE_SUM), "kn_cross_entropy");
    EXPECT_ERR(kn_cross_entropy(x, TI64(KN_SHAPE(2), 0, 1), KN_REDUCE_MEAN), "kn_cross_entropy");
    EXPECT_ERR(kn_cross_entropy(x, TI64(KN_SHAPE(3, 1), 0, 1, 2), KN_REDUCE_MEAN), "[3,1]");
    EXPECT_ERR(kn_cross_entropy(kn_randn(KN_SHAPE(4), KN_F32), TI64(KN_SHAPE(1), 0), KN_REDUCE_MEAN),
               "kn_cross_entropy: expected input [N,C]");
    EXPECT_ERR(kn_cross_entropy(kn_ones(KN_SHAPE(3, 4), KN_I64), TI64(KN_SHAPE(3), 0, 1, 2), KN_REDUCE_MEAN),
               "kn_cross_entropy");
    EXPECT_ERR(kn_cross_entropy(x, TF32(KN_SHAPE(3), 0, 1, 2), KN_REDUCE_MEAN), "kn_cross_entropy");
    EXPECT_ERR(kn_cross_entropy(x, TI64(KN_SHAPE(3), 0, 1, 2), (kn_reduction)7), "reduction");
    EXPECT_ERR(kn_cross_entropy(NULL, TI64(KN_SHAPE(3), 0, 1, 2), KN_REDUCE_MEAN), "kn_cross_entropy");
    EXPECT_ERR(kn_cross_entropy(x, NULL, KN_REDUCE_MEAN), "kn_cross_entropy");
}

Test(module, loss_nll_matches_reference) {
    kn_tensor *x = kn_randn(KN_SHAPE(6, 4), KN_F64);
    kn_tensor *lp = kn_log_softmax(x, 1);
    kn_tensor *t = kn_from_data((const int32_t[]){3, 0, 0, 2, 1, 3}, KN_SHAPE(6), KN_I32);
    kn_tensor *none = kn_nll_loss(lp, t, KN_REDUCE_NONE);
    assert_shape(none, KN_SHAPE(6));
    double sum = 0;
    for (int i = 0; i < 6; i++) {
        double want = -at(lp, i * 4 + (int64_t)at(t, i));
        sum += want;
        cr_assert_eq(at(none, i), want);
    }
    cr_assert(fabs(kn_item(kn_nll_loss(lp, t, KN_REDUCE_SUM)) - sum) < 1e-13);
    cr_assert(fabs(kn_item(kn_nll_loss(lp, t, KN_REDUCE_MEAN)) - sum / 6) < 1e-13);
    /* nll(log_softmax(x)) is cross entropy */
    assert_close(kn_nll_loss(lp, t, KN_REDUCE_NONE), kn_cross_entropy(x, t, KN_REDUCE_NONE), 1e-12, 1e-14);
    EXPECT_ERR(kn_nll_loss(lp, TI64(KN_SHAPE(6), 0, 0, 0, 0, 0, 4), KN_REDUCE_MEAN), "kn_nll_loss: target 4");
    EXPECT_ERR(kn_nll_loss(lp, TI64(KN_SHAPE(5), 0, 0, 0, 0, 0), KN_REDUCE_MEAN), "kn_nll_loss");
    EXPECT_ERR(kn_nll_loss(lp, t, (kn_reduction)-1), "kn_nll_loss");
    EXPECT_ERR(kn_nll_loss(NULL, t, KN_REDUCE_MEAN), "kn_nll_loss");
}

Test(module, loss_mse_broadcasts) {
    kn_tensor *x = kn_randn(KN_SHAPE(3, 4), KN_F64), *y = kn_randn(KN_SHAPE(4), KN_F64);
    kn_tensor *none = kn_mse_loss(x, y, KN_REDUCE_NONE);
    assert_shape(none, KN_SHAPE(3, 4));
    double sum = 0;
    for (int i = 0; i < 12; i++) {
        double d = at(x, i) - at(y, i % 4);
        sum += d * d;
        cr_assert(fabs(at(none, i) - d * d) < 1e-15);
    }
    cr_assert(fabs(kn_item(kn_mse_loss(x, y, KN_REDUCE_SUM)) - sum) < 1e-13);
    cr_assert(fabs(kn_item(kn_mse_loss(x, y, KN_REDUCE_MEAN)) - sum / 12) < 1e-13);
    /* y broadcasting up: [3,1] against [4] gives [3,4] */
    assert_shape(kn_mse_loss(kn_randn(KN_SHAPE(3, 1), KN_F32), kn_randn(KN_SHAPE(4), KN_F32), KN_REDUCE_NONE),
                 KN_SHAPE(3, 4));
    EXPECT_ERR(kn_mse_loss(x, kn_randn(KN_SHAPE(3), KN_F64), KN_REDUCE_MEAN), "[3,4]");
    EXPECT_ERR(kn_mse_loss(x, y, (kn_reduction)9), "kn_mse_loss");
    EXPECT_ERR(kn_mse_loss(x, NULL, KN_REDUCE_MEAN), "kn_mse_loss");
}

/* Gradients by central differences in f64. */
static kn_tensor *g_ce(void *ctx, kn_tensor *const *in) {
    return kn_cross_entropy(in[0], kn_from_data((const int32_t[]){2, 0, 3, 3, 1}, KN_SHAPE(5), KN_I32),
                            *(kn_reduction *)ctx);
}
static kn_tensor *g_nll(void *ctx, kn_tensor *const *in) {
    return kn_nll_loss(in[0], TI64(KN_SHAPE(5), 1, 1, 0, 3, 2), *(kn_reduction *)ctx);
}
static kn_tensor *g_mse(void *ctx, kn_tensor *const *in) { return kn_mse_loss(in[0], in[1], *(kn_reduction *)ctx); }

Test(module, loss_gradcheck) {
    kn_reduction rs[3] = {KN_REDUCE_MEAN, KN_REDUCE_SUM, KN_REDUCE_NONE};
    for (int k = 0; k < 3; k++) {
        kn_tensor *x = kn_set_requires_grad(kn_mul_scalar(kn_randn(KN_SHAPE(5, 4), KN_F64), 2), true);
        cr_assert(kn_gradcheck(g_ce, &rs[k], &x, 1, 1e-6, 1e-7, 1e-5), "ce %d: %s", k, kn_last_error());
        cr_assert(kn_gradcheck(g_nll, &rs[k], &x, 1, 1e-6, 1e-7, 1e-5), "nll %d: %s", k, kn_last_error());
        kn_tensor *ab[2] = {kn_set_requires_grad(kn_randn(KN_SHAPE(3, 1, 4), KN_F64), true),
                            kn_set_requires_grad(kn_randn(KN_SHAPE(2, 1), KN_F64), true)};
        cr_assert(kn_gradcheck(g_mse, &rs[k], ab, 2, 1e-6, 1e-7, 1e-5), "mse %d: %s", k, kn_last_error());
    }
}
