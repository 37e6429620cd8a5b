/* kn_function: traced calls agree with eager ones, plans are reused, and the
 * contracts (capture by reference, in-place write-back, backward inside the
 * body, random streams, the data-read error) hold. */
#include "helpers.h"
#include <math.h>
#include <stdlib.h>
#include <unistd.h>

KN_SUITE(function, 7);

typedef kn_tensor *(*op1)(kn_tensor *const *in);
typedef struct { op1 f; } op_ctx;

static int apply_body(void *ctx, kn_tensor *const *in, kn_tensor **out) {
    out[0] = ((op_ctx *)ctx)->f(in);
    return out[0] ? 0 : -1;
}

#define OP(name, expr) static kn_tensor *name(kn_tensor *const *in) { return (expr); }
OP(o_exp, kn_exp(in[0]))
OP(o_log, kn_log(kn_abs(in[0])))
OP(o_sqrt, kn_sqrt(kn_abs(in[0])))
OP(o_rsqrt, kn_rsqrt(kn_add_scalar(kn_abs(in[0]), 1)))
OP(o_tanh, kn_tanh(in[0]))
OP(o_sigmoid, kn_sigmoid(in[0]))
OP(o_sin, kn_sin(in[0]))
OP(o_cos, kn_cos(in[0]))
OP(o_erf, kn_erf(in[0]))
OP(o_gelu, kn_gelu(in[0], KN_GELU_ERF))
OP(o_gelu_tanh, kn_gelu(in[0], KN_GELU_TANH))
OP(o_neg, kn_neg(in[0]))
OP(o_relu, kn_relu(in[0]))
OP(o_clamp, kn_clamp(in[0], -0.3, 0.4))
OP(o_add, kn_add(in[0], in[1]))
OP(o_sub, kn_sub(in[0], in[1]))
OP(o_mul, kn_mul(in[0], in[1]))
OP(o_div, kn_div(in[0], in[1]))
OP(o_pow, kn_pow(kn_abs(in[0]), in[1]))
OP(o_pow_scalar, kn_pow_scalar(in[0], 3))
OP(o_maximum, kn_maximum(in[0], in[1]))
OP(o_minimum, kn_minimum(in[0], in[1]))
OP(o_cmp, kn_cast(kn_logical_or(kn_lt(in[0], in[1]), kn_logical_not(kn_ge(in[0], in[1]))), KN_F32))
OP(o_eqne, kn_cast(kn_logical_and(kn_eq(in[0], in[0]), kn_ne(in[0], in[1])), KN_I64))
OP(o_where, kn_where(kn_gt(in[0], in[1]), in[0], in[1]))
OP(o_sum, kn_sum(in[0], KN_DIMS(0), false))
OP(o_mean, kn_mean(in[0], KN_DIMS(-1), true))
OP(o_max, kn_max(in[0], KN_ALL_DIMS, false))
OP(o_min, kn_min(in[0], KN_DIMS(1), false))
OP(o_var, kn_var(in[0], KN_DIMS(1), 1, false))
OP(o_lse, kn_logsumexp(in[0], KN_DIMS(0, 1), false))
OP(o_argmax, kn_argmax(in[0], 1, false))
OP(o_argmin, kn_argmin(in[0], 0, true))
OP(o_reshape, kn_reshape(in[0], KN_SHAPE(-1)))
OP(o_transpose, kn_contiguous(kn_transpose(in[0], 0, 1)))
OP(o_permute, kn_permute(in[0], KN_DIMS(1, 0)))
OP(o_slice, kn_slice(in[0], 1, 1, 5, 2))
OP(o_expand, kn_expand(kn_unsqueeze(in[0], 0), KN_SHAPE(3, -1, -1)))
OP(o_squeeze, kn_squeeze(kn_unsqueeze(in[0], 2), 2))
OP(o_cat, kn_cat(in, 2, 0))
OP(o_stack, kn_stack(in, 2, 1))
OP(o_gather, kn_gather(in[0], 1, kn_cast(kn_gt(in[1], in[0]), KN_I64)))
OP(o_index_select, kn_index_select(in[0], 1, kn_arange(0, 3, 1, KN_I64)))
OP(o_scatter_add, kn_scatter_add(in[0], 1, kn_cast(kn_gt(in[1], in[0]), KN_I64), in[1]))
OP(o_index_add, kn_index_add(in[0], 0, kn_arange(0, 4, 1, KN_I64), in[1]))
OP(o_one_hot, kn_mul(kn_one_hot(kn_argmax(in[1], 1, false), 6, KN_F32), in[0]))
OP(o_matmul, kn_matmul(in[0], kn_transpose(in[1], 0, 1)))
OP(o_linear, kn_linear(in[0], in[1], kn_sum(in[1], KN_DIMS(1), false)))
OP(o_softmax, kn_softmax(in[0], 1))
OP(o_log_softmax, kn_log_softmax(in[0], 0))
OP(o_layer_norm, kn_layer_norm(in[0], 1, NULL, NULL, 1e-5))
OP(o_cross_entropy, kn_cross_entropy(in[0], kn_argmax(in[1], 1, false), KN_REDUCE_MEAN))
OP(o_nll, kn_nll_loss(kn_log_softmax(in[0], 1), kn_argmin(in[1], 1, false), KN_REDUCE_SUM))
OP(o_mse, kn_mse_loss(in[0], in[1], KN_REDUCE_MEAN))
OP(o_conv, kn_conv2d(kn_reshape(in[0], KN_SHAPE(1, 1, 4, 6)), kn_reshape(kn_slice(in[1], 1, 0, 3, 1), KN_SHAPE(1, 1, 3, 4)), NULL, 1, 1))
OP(o_pool, kn_max_pool2d(kn_reshape(in[0], KN_SHAPE(1, 1, 4, 6)), 2, 2, 0))

static const struct { const char *name; op1 f; } ops[] = {
#define E(n) {#n, o_##n}
    E(exp), E(log), E(sqrt), E(rsqrt), E(tanh), E(sigmoid), E(sin), E(cos), E(erf), E(gelu),
    E(gelu_tanh), E(neg), E(relu), E(clamp), E(add), E(sub), E(mul), E(div), E(pow),
    E(pow_scalar), E(maximum), E(minimum), E(cmp), E(eqne), E(where), E(sum), E(mean), E(max),
    E(min), E(var), E(lse), E(argmax), E(argmin), E(reshape), E(transpose), E(permute), E(slice),
    E(expand), E(squeeze), E(cat), E(stack), E(gather), E(index_select), E(scatter_add),
    E(index_add), E(one_hot), E(matmul), E(linear), E(softmax), E(log_softmax), E(layer_norm),
    E(cross_entropy), E(nll), E(mse), E(conv), E(pool),
};

/* Plans fuse elementwise ops into kernels that evaluate the eager formulas
 * (bit for bit) and lower row ops (softmax, layer_norm, sums over the last
 * dim) to row kernels that sum in another order: those agree to rounding. */
static bool is_elementwise(const char *name) {
    for (size_t i = 0; i < sizeof ops / sizeof *ops && strcmp(ops[i].name, "sum"); i++)
        if (!strcmp(ops[i].name, name)) return true;
    return false;
}

static void assert_matches(const char *name, const kn_tensor *got, const kn_tensor *want) {
    if (is_elementwise(name)) assert_equal(got, want);
    else assert_close(got, want, 1e-5, 1e-6);
}

/* Every op: the tracing call and two replays equal eager (bit for bit for
 * elementwise ops). */
Test(function, every_op_matches_eager) {
    kn_tensor *in[2] = {kn_randn(KN_SHAPE(4, 6), KN_F32), kn_randn(KN_SHAPE(4, 6), KN_F32)};
    for (size_t i = 0; i < sizeof ops / sizeof *ops; i++) {
        op_ctx c = {ops[i].f};
        kn_tensor *want = ops[i].f(in);
        cr_assert(want, "%s eager: %s", ops[i].name, kn_last_error());
        kn_fn *f = kn_function(ops[i].name, apply_body, &c, 2, 1, NULL);
        for (int call = 0; call < 3; call++) {
            kn_tensor *got;
            cr_assert_eq(kn_call(f, in, &got), 0, "%s call %d: %s", ops[i].name, call, kn_last_error());
            cr_log_info("%s call %d", ops[i].name, call);
            assert_matches(ops[i].name, got, want);
        }
        kn_fn_stats_t s = kn_fn_stats(f);
        cr_assert_eq(s.traces, 1, "%s traced %lld times", ops[i].name, (long long)s.traces);
        cr_assert_eq(s.hits, 2, "%s", ops[i].name);
        kn_fn_free(f);
    }
}

/* Gradients: kn_backward inside the body, returning the leaf's gradient. */
typedef struct { op1 f; kn_tensor *x, *y; } grad_ctx;
static int grad_body(void *ctx, kn_tensor *const *in, kn_tensor **out) {
    grad_ctx *c = ctx;
    kn_zero_grad(c->x);
    kn_tensor *xy[2] = {c->x, c->y};
    kn_tensor *loss = kn_sum(kn_mul(c->f(xy), in[0]), KN_ALL_DIMS, false);
    if (!loss || kn_backward(loss, NULL) != 0) return -1;
    out[0] = kn_grad(c->x);
    return 0;
}

Test(function, backward_inside_the_body_matches_eager) {
    op1 diff[sizeof ops / sizeof *ops];
    const char *name[sizeof ops / sizeof *ops];
    size_t ndiff = 0;
    for (size_t i = 0; i < sizeof ops / sizeof *ops; i++)  /* every op with a gradient */
        if (strcmp(ops[i].name, "cmp") && strcmp(ops[i].name, "eqne") && strncmp(ops[i].name, "arg", 3))
            name[ndiff] = ops[i].name, diff[ndiff++] = ops[i].f;
    for (size_t i = 0; i < ndiff; i++) {
        grad_ctx c = {diff[i], kn_set_requires_grad(kn_randn(KN_SHAPE(4, 6), KN_F32), true),
                      kn_randn(KN_SHAPE(4, 6), KN_F32)};
        kn_tensor *xy[2] = {c.x, c.y};
        kn_tensor *w = kn_randn(kn_shape(diff[i](xy)), kn_ndim(diff[i](xy)), KN_F32);
        kn_tensor *want;
        cr_assert_eq(grad_body(&c, &w, &want), 0, "eager %zu: %s", i, kn_last_error());
        want = kn_contiguous(want);
        kn_fn *f = kn_function("grad", grad_body, &c, 1, 1, NULL);
        for (int call = 0; call < 3; call++) {
            kn_tensor *got;
            cr_assert_eq(kn_call(f, &w, &got), 0, "op %zu call %d: %s", i, call, kn_last_error());
            cr_log_info("%s call %d", name[i], call);
            assert_matches(name[i], got, want);
            assert_matches(name[i], kn_grad(c.x), want);
        }
        cr_assert_eq(kn_fn_stats(f).traces, 1);
        kn_fn_free(f);
    }
}

static int scale_body(void *ctx, kn_tensor *const *in, kn_tensor **out) {
    out[0] = kn_mul(kn_add(in[0], (kn_tensor *)ctx), kn_scalar(2, KN_F32));
    return out[0] ? 0 : -1;
}

/* Autograd through a call, for every op with a gradient: no backward in the
 * body; the loss and backward happen outside, on the call's output. */
static int fwd_body(void *ctx, kn_tensor *const *in, kn_tensor **out) {
    out[0] = ((op_ctx *)ctx)->f(in);
    return out[0] ? 0 : -1;
}

Test(function, autograd_through_a_call_for_every_op) {
    for (size_t i = 0; i < sizeof ops / sizeof *ops; i++) {
        if (!strcmp(ops[i].name, "cmp") || !strcmp(ops[i].name, "eqne") || !strncmp(ops[i].name, "arg", 3)) continue;
        op_ctx c = {ops[i].f};
        kn_tensor *in[2] = {kn_set_requires_grad(kn_randn(KN_SHAPE(4, 6), KN_F64), true),
                            kn_set_requires_grad(kn_randn(KN_SHAPE(4, 6), KN_F64), true)};
        kn_fn *f = kn_function(ops[i].name, fwd_body, &c, 2, 1, NULL);
        kn_tensor *grads[2][2] = {{0}};
        for (int traced = 0; traced < 2; traced++)
            for (int call = 0; call < 2; call++) {
                kn_zero_grad(in[0]);
                kn_zero_grad(in[1]);
                kn_tensor *y;
                cr_assert_eq(traced ? kn_call(f, in, &y) : fwd_body(&c, in, &y), 0, "%s: %s", ops[i].name,
                             kn_last_error());
                kn_tensor *w = kn_cos(kn_arange(0, (double)kn_numel(y), 1, KN_F64));
                kn_tensor *loss = kn_sum(kn_mul(kn_cast(y, KN_F64), kn_reshape(w, kn_shape(y), kn_ndim(y))),
                                         KN_ALL_DIMS, false);
                cr_assert_eq(kn_backward(loss, NULL), 0, "%s: %s", ops[i].name, kn_last_error());
                for (int k = 0; k < 2; k++)
                    grads[traced][k] = kn_grad(in[k]) ? kn_contiguous(kn_grad(in[k])) : NULL;
            }
        for (int k = 0; k < 2; k++) {
            cr_assert_eq(grads[0][k] == NULL, grads[1][k] == NULL, "%s input %d", ops[i].name, k);
            if (grads[0][k]) assert_close(grads[1][k], grads[0][k], 1e-12, 1e-12);
        }
        cr_assert_eq(kn_fn_stats(f).hits, 1, "%s", ops[i].name);
        kn_fn_free(f);
    }
}

Test(function, retraces_on_new_signatures_only) {
    kn_tensor *w = kn_ones(KN_SHAPE(3), KN_F32);
    kn_fn *f = kn_function("scale", scale_body, w, 1, 1, NULL);
    const int64_t batches[] = {1, 7, 64, 64, 7};
    kn_tensor *out;
    for (int i = 0; i < 5; i++) {
        kn_tensor *x = kn_randn(KN_SHAPE(batches[i], 3), KN_F32), *want;
        cr_assert_eq(kn_call(f, &x, &out), 0);
        scale_body(w, &x, &want);
        assert_equal(out, want);
    }
    cr_assert_eq(kn_fn_stats(f).traces, 2, "sizes are symbolic: batch 1 (a dim of 1) and one plan for 7 and 64");
    cr_assert_eq(kn_fn_stats(f).hits, 3);
    cr_assert_eq(kn_call(f, (kn_tensor *[]){kn_zeros(KN_SHAPE(7, 3), KN_F64)}, &out), 0);
    cr_assert_eq(kn_fn_stats(f).traces, 3, "a new dtype retraces");
    cr_assert_eq(kn_dtype_of(out), KN_F64);
    kn_fn_free(f);
}

Test(function, captures_are_read_by_reference) {
    kn_tensor *w = kn_ones(KN_SHAPE(3), KN_F32);
    kn_fn *f = kn_function("scale", scale_body, w, 1, 1, NULL);
    kn_tensor *x = kn_zeros(KN_SHAPE(2, 3), KN_F32), *out;
    cr_assert_eq(kn_call(f, &x, &out), 0);
    cr_assert_eq(at(out, 0), 2);
    cr_assert_eq(kn_fill_(w, 5), 0);  /* like an optimizer step between calls */
    cr_assert_eq(kn_call(f, &x, &out), 0);
    cr_assert_eq(at(out, 0), 10, "the replay must read w's current values");
    cr_assert_eq(kn_fn_stats(f).hits, 1);
    kn_fn_free(f);
}

static int count_body(void *ctx, kn_tensor *const *in, kn_tensor **out) {
    kn_tensor *counter = ctx;
    if (kn_add_(counter, in[0]) != 0) return -1;
    out[0] = kn_mul_scalar(counter, 10);
    return out[0] ? 0 : -1;
}

Test(function, in_place_writes_are_replayed) {
    kn_tensor *counter = kn_zeros(KN_SHAPE(2), KN_F32), *one = kn_ones(KN_SHAPE(2), KN_F32), *out;
    kn_fn *f = kn_function("count", count_body, counter, 1, 1, NULL);
    for (int i = 1; i <= 4; i++) {
        cr_assert_eq(kn_call(f, &one, &out), 0, "%s", kn_last_error());
        cr_assert_eq(at(counter, 1), i, "call %d", i);
        cr_assert_eq(at(out, 0), 10 * i);
    }
    cr_assert_eq(kn_fn_stats(f).traces, 1);
    kn_fn_free(f);
}

static int item_body(void *ctx, kn_tensor *const *in, kn_tensor **out) {
    (void)ctx;
    double s = kn_item(kn_sum(in[0], KN_ALL_DIMS, false));
    out[0] = s > 0 ? kn_exp(in[0]) : kn_neg(in[0]);
    return s == s ? 0 : -1;
}

Test(function, reading_a_value_while_tracing_is_an_error) {
    kn_fn *f = kn_function("branchy", item_body, NULL, 1, 1, NULL);
    kn_tensor *out = NULL;
    cr_assert_eq(kn_call(f, (kn_tensor *[]){kn_ones(KN_SHAPE(2), KN_F32)}, &out), -1);
    const char *e = kn_last_error();
    cr_assert(e && strstr(e, "kn_item") && strstr(e, "branchy") && strstr(e, "kn_where"), "%s", e);
    kn_fn_free(f);
}

static int noise_body(void *ctx, kn_tensor *const *in, kn_tensor **out) {
    (void)ctx;
    out[0] = kn_add(in[0], kn_randn(KN_SHAPE(5), KN_F32));
    return out[0] ? 0 : -1;
}

Test(function, random_streams_match_eager) {
    kn_tensor *x = kn_zeros(KN_SHAPE(5), KN_F32), *eager[3], *traced[3];
    kn_manual_seed(3);
    for (int i = 0; i < 3; i++) noise_body(NULL, &x, &eager[i]);
    kn_manual_seed(3);
    kn_fn *f = kn_function("noise", noise_body, NULL, 1, 1, NULL);
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(kn_call(f, &x, &traced[i]), 0);
        assert_equal(traced[i], eager[i]);
    }
    cr_assert_neq(at(traced[1], 0), at(traced[2], 0), "two calls never repeat the same numbers");
    kn_fn_free(f);
}

/* A whole training step in one kn_fn: forward, loss, backward, Adam. */

static void train(bool traced, double *losses, int steps) {
    kn_manual_seed(21);
    trainer t = {.model = kn_sequential_new(kn_linear_new(12, 16, true), kn_relu_new(), kn_linear_new(16, 4, true), NULL)};
    kn_tensor *p[4];
    kn_parameters(t.model, p, NULL, 4);
    t.opt = kn_adam_new(p, 4, 1e-2, 0.9, 0.999, 1e-8, 0);
    kn_tensor *x = kn_randn(KN_SHAPE(32, 12), KN_F32);
    kn_tensor *y = kn_argmax(kn_matmul(x, kn_randn(KN_SHAPE(12, 4), KN_F32)), 1, false);
    kn_fn *f = kn_function("train_step", train_step, &t, 2, 1, NULL);
    for (int s = 0; s < steps; s++) {
        kn_pool_push();
        kn_tensor *loss;
        int rc = traced ? kn_call(f, (kn_tensor *[]){x, y}, &loss) : train_step(&t, (kn_tensor *[]){x, y}, &loss);
        cr_assert_eq(rc, 0, "step %d: %s", s, kn_last_error());
        losses[s] = kn_item(loss);
        kn_pool_pop();
    }
    if (traced) {
        kn_fn_stats_t st = kn_fn_stats(f);
        cr_assert_eq(st.traces, 2, "the first trace makes Adam's state, the second is kept");
        cr_assert_eq(st.hits, steps - 2);
    }
    kn_fn_free(f);
    kn_optim_free(t.opt);
    kn_module_free(t.model);
}

Test(function, training_step_matches_eager) {
    double eager[30], traced[30];
    train(false, eager, 30);
    train(true, traced, 30);
    /* the plan's softmax is a row kernel that sums in its own order: rounding apart */
    for (int s = 0; s < 30; s++)
        cr_assert_leq(fabs(traced[s] - eager[s]), 1e-5 * fabs(eager[s]), "step %d: %.9g vs %.9g", s, traced[s],
                      eager[s]);
    cr_assert_lt(eager[29], 0.5 * eager[0], "the model learns");
}

Test(function, dump_and_eager_mode) {
    kn_tensor *w = kn_ones(KN_SHAPE(3), KN_F32), *x = kn_zeros(KN_SHAPE(2, 3), KN_F32), *out;
    kn_fn *f = kn_function("scale", scale_body, w, 1, 1, NULL);
    cr_assert_eq(kn_call(f, &x, &out), 0);
    char *buf = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&buf, &len);
    kn_fn_dump(f, m);
    fclose(m);
    cr_assert(strstr(buf, "kn_function scale") && strstr(buf, "= fused<2 ops, last mul>(%0, %1) f32[2,3]") &&
              strstr(buf, "capture f32[3]") && strstr(buf, "return"), "%s", buf);
    free(buf);
    kn_run_functions_eagerly(true);
    cr_assert_eq(kn_call(f, &x, &out), 0);
    kn_run_functions_eagerly(false);
    cr_assert_eq(kn_fn_stats(f).eager_calls, 1);
    cr_assert_eq(kn_fn_stats(f).traces, 1);
    kn_fn_free(f);
}

static int null_body(void *ctx, kn_tensor *const *in, kn_tensor **out) {
    (void)ctx;
    out[0] = kn_add(in[0], kn_ones(KN_SHAPE(7), KN_F32));  /* shapes do not broadcast */
    return 0;
}

Test(function, body_errors_are_reported) {
    kn_fn *f = kn_function("bad", null_body, NULL, 1, 1, NULL);
    kn_tensor *out = NULL;
    cr_assert_eq(kn_call(f, (kn_tensor *[]){kn_ones(KN_SHAPE(3), KN_F32)}, &out), -1);
    cr_assert(strstr(kn_last_error(), "kn_add: shapes [3] and [7]"), "%s", kn_last_error());
    cr_assert_null(kn_function("x", NULL, NULL, 1, 1, NULL));
    kn_fn_free(f);
}

static int passes_body(void *ctx, kn_tensor *const *in, kn_tensor **out) {
    kn_tensor *w = ctx;
    kn_tensor *a = kn_mul_scalar(kn_add(in[0], w), 1.0);          /* x*1: simplified away */
    kn_tensor *b = kn_add(in[0], w);                                /* the same add: CSE */
    kn_tensor *c = kn_transpose(kn_transpose(a, 0, 1), 0, 1);       /* double transpose */
    kn_tensor *k = kn_exp(kn_full(KN_SHAPE(2, 3), 0.5, KN_F32));    /* constant: folded */
    kn_tanh(in[0]);                                                 /* dead */
    out[0] = kn_mul(kn_add(c, b), k);
    return 0;
}

Test(function, passes_fold_cse_simplify_and_eliminate) {
    setenv("KN_JIT", "0", 1);  /* the passes alone, without fusion */
    kn_tensor *w = kn_ones(KN_SHAPE(3), KN_F32), *x = kn_randn(KN_SHAPE(2, 3), KN_F32), *got;
    kn_tensor *want;
    passes_body(w, &x, &want);
    kn_fn *f = kn_function("passes", passes_body, w, 1, 1, NULL);
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(kn_call(f, &x, &got), 0);
        assert_equal(got, want);
    }
    cr_assert_eq(kn_fn_stats(f).nodes, 3, "add, add, mul remain (got %lld)", (long long)kn_fn_stats(f).nodes);
    char *text = dump_of(f, kn_fn_dump);
    cr_assert(!strstr(text, "tanh") && !strstr(text, "permute") && !strstr(text, "exp("), "%s", text);
    cr_assert(strstr(text, "const f32[2,3]"), "%s", text);
    free(text);
    char *dot = dump_of(f, kn_fn_dot);
    cr_assert(!strncmp(dot, "digraph \"passes\" {", 18) && strstr(dot, "-> out0;") && dot[strlen(dot) - 2] == '}',
              "%s", dot);
    free(dot);
    kn_fn_free(f);
}

/* Autograd through a call: the outputs of kn_call carry a grad function. */
static int mlp_body(void *ctx, kn_tensor *const *in, kn_tensor **out) {
    kn_tensor **w = ctx;
    out[0] = kn_tanh(kn_linear(kn_relu(kn_linear(in[0], w[0], w[1])), w[2], NULL));
    return out[0] ? 0 : -1;
}

Test(function, autograd_through_a_call_matches_eager) {
    kn_tensor *w[3] = {kn_set_requires_grad(kn_randn(KN_SHAPE(5, 4), KN_F64), true),
                       kn_set_requires_grad(kn_randn(KN_SHAPE(5), KN_F64), true),
                       kn_set_requires_grad(kn_randn(KN_SHAPE(2, 5), KN_F64), true)};
    kn_tensor *x = kn_set_requires_grad(kn_randn(KN_SHAPE(3, 4), KN_F64), true);
    kn_tensor *grads[2][4];
    kn_fn *f = kn_function("mlp", mlp_body, w, 1, 1, NULL);
    for (int traced = 0; traced < 2; traced++) {
        for (int call = 0; call < 2; call++) {  /* a trace, then a replay */
            for (int i = 0; i < 3; i++) kn_zero_grad(w[i]);
            kn_zero_grad(x);
            kn_tensor *y;
            cr_assert_eq(traced ? kn_call(f, &x, &y) : mlp_body(w, &x, &y), 0, "%s", kn_last_error());
            cr_assert(kn_requires_grad(y));
            /* part eager, part traced: the loss is computed outside the call */
            kn_tensor *loss = kn_sum(kn_mul(y, kn_exp(y)), KN_ALL_DIMS, false);
            cr_assert_eq(kn_backward(loss, NULL), 0, "%s", kn_last_error());
            for (int i = 0; i < 3; i++) grads[traced][i] = kn_contiguous(kn_grad(w[i]));
            grads[traced][3] = kn_contiguous(kn_grad(x));
        }
    }
    for (int i = 0; i < 4; i++) assert_close(grads[1][i], grads[0][i], 1e-12, 1e-12);
    cr_assert_eq(kn_fn_stats(f).hits, 1);
    kn_fn_free(f);
}

static int then_b(void *ctx, kn_tensor *const *in, kn_tensor **out) {
    (void)ctx;
    out[0] = kn_mul_scalar(in[0], 2);
    return 0;
}
static int else_b(void *ctx, kn_tensor *const *in, kn_tensor **out) {
    (void)ctx;
    out[0] = kn_neg(kn_exp(in[0]));
    return 0;
}
static int cond_body(void *ctx, kn_tensor *const *in, kn_tensor **out) {
    int *calls = ctx;
    (*calls)++;
    kn_tensor *x = kn_add_scalar(in[0], 1);
    kn_tensor *pred = kn_gt(kn_sum(x, KN_ALL_DIMS, false), kn_scalar(0, KN_F32));
    kn_tensor *r;
    if (kn_cond(pred, then_b, else_b, NULL, &x, 1, &r, 1) != 0) return -1;
    out[0] = kn_add_scalar(r, 0.5);
    return 0;
}

Test(function, cond_runs_the_taken_branch) {
    int body_runs = 0;
    kn_fn *f = kn_function("cond", cond_body, &body_runs, 1, 1, NULL);
    kn_tensor *pos = kn_full(KN_SHAPE(3), 2, KN_F32), *neg = kn_full(KN_SHAPE(3), -3, KN_F32);
    for (int i = 0; i < 3; i++) {
        kn_tensor *a, *b, *want_a, *want_b;
        cr_assert_eq(kn_call(f, &pos, &a), 0, "%s", kn_last_error());
        cr_assert_eq(kn_call(f, &neg, &b), 0, "%s", kn_last_error());
        cond_body(&(int){0}, &pos, &want_a);
        cond_body(&(int){0}, &neg, &want_b);
        assert_equal(a, want_a);
        assert_equal(b, want_b);
        cr_assert_eq(at(a, 0), 6.5);
    }
    cr_assert_eq(body_runs, 1, "one trace serves both branches (the body ran %d times)", body_runs);
    cr_assert_eq(kn_fn_stats(f).traces, 1);
    char *text = dump_of(f, kn_fn_dump);
    cr_assert(strstr(text, "cond("), "%s", text);
    free(text);
    kn_fn_free(f);
}

static int bad_else(void *ctx, kn_tensor *const *in, kn_tensor **out) {
    (void)ctx;
    out[0] = kn_sum(in[0], KN_ALL_DIMS, false);
    return 0;
}
static int bad_cond_body(void *ctx, kn_tensor *const *in, kn_tensor **out) {
    (void)ctx;
    return kn_cond(kn_scalar(1, KN_BOOL), then_b, bad_else, NULL, in, 1, out, 1);
}

Test(function, cond_branches_must_agree) {
    kn_fn *f = kn_function("bad_cond", bad_cond_body, NULL, 1, 1, NULL);
    kn_tensor *out;
    cr_assert_eq(kn_call(f, (kn_tensor *[]){kn_ones(KN_SHAPE(3), KN_F32)}, &out), -1);
    cr_assert(strstr(kn_last_error(), "kn_cond: output 0 is f32[3] in one branch and f32[] in the other"),
              "%s", kn_last_error());
    kn_fn_free(f);
}

/* The replay frees each value after its last use, so a traced training step
 * never holds more memory than the same step run eagerly. */
Test(function, traced_peak_memory_is_at_most_eager) {
    kn_manual_seed(4);
    trainer t = {.model = kn_sequential_new(kn_linear_new(256, 512, true), kn_relu_new(), kn_linear_new(512, 10, true), NULL)};
    kn_tensor *p[4];
    kn_parameters(t.model, p, NULL, 4);
    t.opt = kn_adam_new(p, 4, 1e-3, 0.9, 0.999, 1e-8, 0);
    kn_tensor *x = kn_randn(KN_SHAPE(128, 256), KN_F32), *y = kn_argmax(kn_randn(KN_SHAPE(128, 10), KN_F32), 1, false);
    kn_fn *f = kn_function("train_step", train_step, &t, 2, 1, NULL);
    int64_t peaks[2];
    for (int traced = 0; traced < 2; traced++) {
        for (int s = 0; s < 4; s++) {  /* the last step is measured: state exists, the plan is cached */
            kn_pool_push();
            int64_t before;
            kn_memory_stats(&before, NULL);
            kn_memory_reset_peak();
            kn_tensor *loss;
            cr_assert_eq(traced ? kn_call(f, (kn_tensor *[]){x, y}, &loss) : train_step(&t, (kn_tensor *[]){x, y}, &loss), 0);
            kn_memory_stats(NULL, &peaks[traced]);
            peaks[traced] -= before;
            kn_pool_pop();
        }
    }
    cr_log_info("peak bytes above the start: eager %lld, traced %lld (plan's own count %lld)",
                (long long)peaks[0], (long long)peaks[1], (long long)kn_fn_stats(f).peak_bytes);
    cr_assert_leq(peaks[1], peaks[0], "traced %lld > eager %lld", (long long)peaks[1], (long long)peaks[0]);
    cr_assert_gt(kn_fn_stats(f).peak_bytes, 0);
    kn_fn_free(f);
    kn_optim_free(t.opt);
    kn_module_free(t.model);
}

/* A C number read from ctx is baked into the trace: the shadow mode catches
 * the replay drifting from eager at the node that uses it. */
typedef struct { int step; kn_tensor *acc; } shadow_ctx;
static int baked_body(void *ctx, kn_tensor *const *in, kn_tensor **out) {
    shadow_ctx *c = ctx;
    c->step++;
    if (kn_add_(c->acc, in[0]) != 0) return -1;  /* a side effect the shadow must undo once */
    out[0] = kn_mul_scalar(kn_tanh(in[0]), (double)c->step);
    return out[0] ? 0 : -1;
}

Test(function, shadow_mode_names_the_first_differing_node) {
    setenv("KN_SHADOW", "1", 1);
    shadow_ctx c = {0, kn_zeros(KN_SHAPE(4), KN_F32)};
    kn_fn *f = kn_function("baked", baked_body, &c, 1, 1, NULL);
    kn_tensor *x = kn_ones(KN_SHAPE(4), KN_F32), *y;
    for (int i = 0; i < 3; i++) cr_assert_eq(kn_call(f, &x, &y), 0, "%s", kn_last_error());
    kn_fn_stats_t s = kn_fn_stats(f);
    cr_assert_eq(s.shadow_mismatches, 2, "both replays drift (got %lld)", (long long)s.shadow_mismatches);
    cr_assert(strstr(s.shadow_report, "= mul differs from eager at element 0"), "%s", s.shadow_report);
    cr_assert_eq(at(y, 0), at(kn_mul_scalar(kn_tanh(x), c.step), 0), "the call returns eager results");
    cr_assert_eq(at(c.acc, 0), 3, "side effects happen once per call");
    kn_fn_free(f);
}

Test(function, shadow_mode_is_quiet_when_plans_agree) {
    setenv("KN_SHADOW", "1", 1);
    double losses[6];
    train(true, losses, 6);  /* asserts traces and hits itself */
    kn_tensor *w = kn_ones(KN_SHAPE(3), KN_F32), *x = kn_randn(KN_SHAPE(2, 3), KN_F32), *y;
    kn_fn *f = kn_function("passes", passes_body, w, 1, 1, NULL);
    for (int i = 0; i < 3; i++) cr_assert_eq(kn_call(f, &x, &y), 0);
    cr_assert_eq(kn_fn_stats(f).shadow_mismatches, 0, "%s", kn_fn_stats(f).shadow_report);
    kn_fn_free(f);
}

static int const_body(void *ctx, kn_tensor *const *in, kn_tensor **out) {
    (void)ctx;
    out[0] = kn_full(KN_SHAPE(2), 3, KN_F32);  /* a constant output */
    out[1] = in[0];                             /* an input returned as is, as eager would */
    return kn_add_(in[1], kn_cast(in[1], KN_F64)) == 0 ? 0 : -1;  /* a promoting in-place write */
}

Test(function, outputs_do_not_share_storage_between_calls) {
    kn_fn *f = kn_function("consts", const_body, NULL, 2, 2, NULL);
    kn_tensor *x = kn_ones(KN_SHAPE(3), KN_F32), *acc = kn_ones(KN_SHAPE(2), KN_F32), *o1[2], *o2[2];
    cr_assert_eq(kn_call(f, (kn_tensor *[]){x, acc}, o1), 0, "%s", kn_last_error());
    cr_assert_eq(kn_call(f, (kn_tensor *[]){x, acc}, o2), 0, "%s", kn_last_error());
    cr_assert_eq(kn_call(f, (kn_tensor *[]){x, acc}, o2), 0, "%s", kn_last_error());
    cr_assert_neq(kn_data(o1[0]), kn_data(o2[0]), "constant outputs are fresh tensors");
    cr_assert_eq(kn_fill_(o2[0], 7), 0);
    cr_assert_eq(kn_call(f, (kn_tensor *[]){x, acc}, o2), 0);
    cr_assert_eq(at(o2[0], 0), 3, "writing to an output must not change later calls");
    cr_assert_eq(o2[1], x, "an input returned as output is that input, as in eager");
    cr_assert_eq(at(acc, 0), 16, "4 doublings");
    cr_assert_eq(kn_fn_stats(f).hits, 3);
    kn_fn_free(f);
}

typedef struct { kn_tensor *w; } holder;
static int holder_body(void *ctx, kn_tensor *const *in, kn_tensor **out) {
    out[0] = kn_mul(in[0], ((holder *)ctx)->w);
    return out[0] ? 0 : -1;
}

Test(function, a_replaced_capture_retraces) {
    holder h = {kn_keep(kn_full(KN_SHAPE(2), 2, KN_F32))};
    kn_fn *f = kn_function("holder", holder_body, &h, 1, 1, NULL);
    kn_tensor *x = kn_ones(KN_SHAPE(2), KN_F32), *y;
    cr_assert_eq(kn_call(f, &x, &y), 0);
    cr_assert_eq(kn_call(f, &x, &y), 0);
    kn_release(h.w);  /* the owner swaps in a new parameter */
    h.w = kn_keep(kn_full(KN_SHAPE(2), 5, KN_F32));
    cr_assert_eq(kn_call(f, &x, &y), 0, "%s", kn_last_error());
    cr_assert_eq(at(y, 0), 5, "the new parameter is used, not the stale one");
    cr_assert_eq(kn_fn_stats(f).traces, 2);
    kn_fn_free(f);
    kn_release(h.w);
}

/* A training step replayed at another batch size: the last, partial batch
 * of an epoch reuses the plan, and the 1/N of the mean follows N. */
Test(function, symbolic_batch_sizes_match_eager) {
    kn_manual_seed(8);
    trainer t = {.model = kn_sequential_new(kn_linear_new(12, 16, true), kn_relu_new(), kn_linear_new(16, 4, true), NULL)};
    trainer e = {.model = kn_sequential_new(kn_linear_new(12, 16, true), kn_relu_new(), kn_linear_new(16, 4, true), NULL)};
    kn_tensor *pt[4], *pe[4];
    kn_parameters(t.model, pt, NULL, 4);
    kn_parameters(e.model, pe, NULL, 4);
    kn_no_grad_begin();
    for (int i = 0; i < 4; i++) kn_copy_(pe[i], pt[i]);
    kn_no_grad_end();
    t.opt = kn_adam_new(pt, 4, 1e-2, 0.9, 0.999, 1e-8, 0);
    e.opt = kn_adam_new(pe, 4, 1e-2, 0.9, 0.999, 1e-8, 0);
    kn_fn *f = kn_function("train_step", train_step, &t, 2, 1, NULL);
    const int64_t batches[] = {32, 32, 32, 20, 32, 9, 32};
    for (int s = 0; s < 7; s++) {
        kn_tensor *x = kn_randn(KN_SHAPE(batches[s], 12), KN_F32);
        kn_tensor *y = kn_argmax(kn_randn(KN_SHAPE(batches[s], 4), KN_F32), 1, false);
        kn_tensor *lt, *le;
        cr_assert_eq(kn_call(f, (kn_tensor *[]){x, y}, &lt), 0, "step %d: %s", s, kn_last_error());
        cr_assert_eq(train_step(&e, (kn_tensor *[]){x, y}, &le), 0);
        cr_assert_leq(fabs(at(lt, 0) - at(le, 0)), 1e-5 * fabs(at(le, 0)), "step %d (batch %lld)", s,
                      (long long)batches[s]);
    }
    for (int i = 0; i < 4; i++) assert_close(pt[i], pe[i], 1e-5, 1e-6);
    cr_assert_eq(kn_fn_stats(f).traces, 2, "the state-making first trace and one symbolic plan");
    kn_fn_free(f);
    for (int m = 0; m < 2; m++) {
        trainer *tt = m ? &e : &t;
        kn_optim_free(tt->opt);
        kn_module_free(tt->model);
    }
}

static int shape_reading_body(void *ctx, kn_tensor *const *in, kn_tensor **out) {
    (void)ctx;
    out[0] = kn_div_scalar(kn_sum(in[0], KN_ALL_DIMS, false), (double)kn_shape(in[0])[0]);  /* bakes a size */
    return 0;
}

static int literal_reshape_body(void *ctx, kn_tensor *const *in, kn_tensor **out) {
    (void)ctx;
    out[0] = kn_sum(kn_reshape(in[0], KN_SHAPE(48)), KN_ALL_DIMS, false);  /* 16 x 3 spelled out */
    return 0;
}

Test(function, baked_sizes_pin_plans_to_exact_shapes) {
    kn_fn *f = kn_function("mean0", shape_reading_body, NULL, 1, 1, NULL);
    kn_tensor *out;
    for (int64_t n = 4; n <= 6; n++) {
        cr_assert_eq(kn_call(f, (kn_tensor *[]){kn_ones(KN_SHAPE(n, 3), KN_F32)}, &out), 0);
        cr_assert_eq(at(out, 0), 3, "n %lld: the size read by kn_shape must follow the call", (long long)n);
    }
    cr_assert_eq(kn_fn_stats(f).traces, 3, "a body that reads sizes gets exact plans");
    kn_fn_free(f);
    kn_fn *g = kn_function("literal", literal_reshape_body, NULL, 1, 1, NULL);
    cr_assert_eq(kn_call(g, (kn_tensor *[]){kn_ones(KN_SHAPE(16, 3), KN_F32)}, &out), 0);
    cr_assert_eq(kn_call(g, (kn_tensor *[]){kn_ones(KN_SHAPE(16, 3), KN_F32)}, &out), 0);
    cr_assert_eq(kn_fn_stats(g).hits, 1);
    /* [8,3] cannot become [48]: the symbolic plan fails before any side
     * effect, so the call retraces and reports the eager error. */
    cr_assert_eq(kn_call(g, (kn_tensor *[]){kn_ones(KN_SHAPE(8, 3), KN_F32)}, &out), -1);
    cr_assert(strstr(kn_last_error(), "kn_reshape"), "%s", kn_last_error());
    kn_fn_free(g);
}

/* Fusion: a chain of elementwise ops becomes one JIT'd kernel, with results
 * bitwise equal to eager. */
static int chain_body(void *ctx, kn_tensor *const *in, kn_tensor **out) {
    (void)ctx;
    kn_tensor *t = kn_tanh(kn_add_scalar(kn_mul_scalar(in[0], 0.5), 1));
    out[0] = kn_exp(kn_mul_scalar(kn_relu(kn_sub_scalar(kn_mul(t, t), 0.25)), 3));
    out[1] = kn_sum(kn_mul(out[0], in[1]), KN_DIMS(1), false);  /* out[0] escapes: the chain ends there */
    return 0;
}

Test(function, elementwise_chains_fuse_into_jit_kernels) {
    kn_fn *f = kn_function("chain", chain_body, NULL, 2, 2, NULL);
    for (int64_t n = 1000; n <= 3000; n += 2000) {  /* a second size reuses the plan */
        kn_tensor *in[2] = {kn_randn(KN_SHAPE(4, n), KN_F32), kn_randn(KN_SHAPE(4, n), KN_F32)};
        kn_tensor *want[2], *got[2];
        chain_body(NULL, in, want);
        for (int call = 0; call < 2; call++) {
            cr_assert_eq(kn_call(f, in, got), 0, "%s", kn_last_error());
            assert_equal(got[0], want[0]);
            /* a row kernel sums in its own order: n * eps * max|term| = 1000 * 6e-8 * 20 */
            assert_close(got[1], want[1], 1e-5, 1e-3);
        }
    }
    cr_assert_eq(kn_fn_stats(f).traces, 1);
    char *text = dump_of(f, kn_fn_dump);
    cr_assert(strstr(text, "= fused<8 ops, last exp>(%0) f32[4,1000]"), "%s", text);
    cr_assert(strstr(text, "= fused<2 ops, last sum>("), "%s", text);
    free(text);
    kn_fn_free(f);
}

Test(function, dump_kernels_prints_the_fused_loop_as_c) {
    setenv("KN_DUMP", "kernels", 1);
    FILE *m = tmpfile();
    int saved = dup(2);
    fflush(stderr);
    dup2(fileno(m), 2);  /* the dump goes to stderr */
    kn_fn *f = kn_function("chain", chain_body, NULL, 2, 2, NULL);
    kn_tensor *in[2] = {kn_randn(KN_SHAPE(2, 8), KN_F32), kn_randn(KN_SHAPE(2, 8), KN_F32)}, *out[2];
    int rc = kn_call(f, in, out);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    char buf[8192] = {0};
    rewind(m);
    size_t got = fread(buf, 1, sizeof buf - 1, m);
    fclose(m);
    cr_assert_eq(rc, 0);
    cr_assert(got > 0 && strstr(buf, "int32_t kernel(void **args, int64_t begin, int64_t end)") &&
              strstr(buf, "kn_s_tanh_f32(") && strstr(buf, "0.500000000f"), "%s", buf);
    kn_fn_free(f);
}

/* Tiered compilation: the plan runs op by op until its kernels are ready,
 * then switches, with the same results throughout. */
Test(function, async_compile_switches_to_fused_kernels) {
    kn_fn *f = kn_function("chain", chain_body, NULL, 2, 2, &(kn_fn_opts){.compile = KN_COMPILE_ASYNC});
    kn_tensor *in[2] = {kn_randn(KN_SHAPE(4, 500), KN_F32), kn_randn(KN_SHAPE(4, 500), KN_F32)};
    kn_tensor *want[2], *got[2];
    chain_body(NULL, in, want);
    for (int call = 0; call < 3; call++) {  /* trace, then replays while compiling */
        cr_assert_eq(kn_call(f, in, got), 0, "%s", kn_last_error());
        assert_equal(got[0], want[0]);
        assert_close(got[1], want[1], 1e-5, 1e-3);
    }
    kn_fn_wait_compiled(f);
    cr_assert_eq(kn_call(f, in, got), 0);
    assert_equal(got[0], want[0]);
    assert_close(got[1], want[1], 1e-5, 1e-3);
    char *text = dump_of(f, kn_fn_dump);
    cr_assert(strstr(text, "fused<8 ops"), "%s", text);
    free(text);
    cr_assert_eq(kn_fn_stats(f).nodes, 2, "the chain, then mul and sum in a row kernel (got %lld)",
                 (long long)kn_fn_stats(f).nodes);
    kn_fn_free(f);
}

/* A 0-dim tensor captured by a fused chain (a learning rate, say) is read at
 * every call, like any capture. */
static int scaled_body(void *ctx, kn_tensor *const *in, kn_tensor **out) {
    out[0] = kn_tanh(kn_mul(kn_exp(in[0]), (kn_tensor *)ctx));
    return 0;
}

Test(function, fused_chains_read_scalar_captures_at_each_call) {
    kn_tensor *lr = kn_scalar(0.5, KN_F64), *x = kn_randn(KN_SHAPE(3, 70), KN_F32), *got, *want;
    kn_fn *f = kn_function("scaled", scaled_body, lr, 1, 1, NULL);
    for (int call = 0; call < 4; call++) {
        cr_assert_eq(kn_fill_(lr, 0.25 * (call + 1)), 0);
        cr_assert_eq(kn_call(f, &x, &got), 0, "%s", kn_last_error());
        scaled_body(lr, &x, &want);
        assert_equal(got, want);
    }
    char *text = dump_of(f, kn_fn_dump);
    cr_assert(strstr(text, "fused<3 ops, last tanh>(%0, %2)"), "%s", text);
    free(text);
    kn_fn_free(f);
}

Test(function, static_shapes_option_pins_plans) {
    kn_tensor *w = kn_ones(KN_SHAPE(3), KN_F32), *out;
    kn_fn *f = kn_function("scale", scale_body, w, 1, 1, &(kn_fn_opts){.static_shapes = true});
    for (int64_t n = 5; n <= 7; n++)
        cr_assert_eq(kn_call(f, (kn_tensor *[]){kn_zeros(KN_SHAPE(n, 3), KN_F32)}, &out), 0);
    cr_assert_eq(kn_call(f, (kn_tensor *[]){kn_zeros(KN_SHAPE(6, 3), KN_F32)}, &out), 0);
    cr_assert_eq(kn_fn_stats(f).traces, 3, "one plan per exact shape");
    cr_assert_eq(kn_fn_stats(f).hits, 1);
    kn_fn_free(f);
}
