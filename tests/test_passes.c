/* Plan passes: write forwarding and dead writes keep eager's results (values,
 * state, gradients) while merging in-place sequences into one write; the
 * linear + relu epilogue runs as one oneDNN node. */
#include "helpers.h"
#include "../backends/cpu/onednn.h"
#include <kiln/function.h>
#include <kiln/nn.h>
#include <stdio.h>
#include <stdlib.h>

KN_SUITE(passes, 11);

/* The newest plan as text, and how often s occurs in it. */
static int count_in_plan(const kn_fn *f, const char *s) {
    char *buf = dump_of(f, kn_fn_dump);
    int n = 0;
    for (const char *p = buf; (p = strstr(p, s)); p++) n++;
    free(buf);
    return n;
}

/* A body over state tensors (ctx) and inputs, run eagerly on one copy of the
 * state and traced on another: outputs and state must agree bitwise. */
typedef struct { kn_tensor *t[4]; int n; } state;

static state clone_state(const state *s) {
    state c = {.n = s->n};
    for (int i = 0; i < s->n; i++) c.t[i] = kn_cast(s->t[i], kn_dtype_of(s->t[i]));
    return c;
}

static void expect_like_eager(kn_body body, const char *name, state *eager, state *traced, kn_tensor **in_e,
                              kn_tensor **in_t, int nin, int nout, int calls, kn_fn **keep) {
    kn_fn *f = kn_function(name, body, traced, nin, nout, NULL);
    for (int c = 0; c < calls; c++) {
        kn_tensor *want[4], *got[4];
        cr_assert_eq(body(eager, in_e, want), 0, "%s", kn_last_error());
        cr_assert_eq(kn_call(f, in_t, got), 0, "%s call %d: %s", name, c, kn_last_error());
        for (int k = 0; k < nout; k++) assert_equal(got[k], want[k]);
        for (int i = 0; i < eager->n; i++) assert_equal(traced->t[i], eager->t[i]);
        for (int i = 0; i < nin; i++) assert_equal(in_t[i], in_e[i]);
    }
    cr_assert_eq(kn_fn_stats(f).traces, 1, "%s retraced", name);
    *keep = f;
}

/* ---- write forwarding ---- */

/* Adam's moments: m = b1 m + (1-b1) g and v = b2 v + (1-b2) g^2, in place. */
static int moments_body(void *ctx, kn_tensor *const *in, kn_tensor **out) {
    state *s = ctx;
    /* A gradient the body computes (an input read between the writes could
     * be a view of m, which would keep both writes). */
    kn_tensor *m = s->t[0], *v = s->t[1], *b1 = s->t[2], *g = kn_tanh(in[0]);
    if (kn_mul_(m, b1) || kn_add_(m, kn_mul_scalar(g, 0.1)) || kn_mul_scalar_(v, 0.999) ||
        kn_add_(v, kn_mul_scalar(kn_mul(g, g), 0.001)))
        return -1;
    out[0] = kn_div(m, kn_add_scalar(kn_sqrt(v), 1e-8));  /* reads both after their writes */
    return out[0] ? 0 : -1;
}

Test(passes, inplace_sequences_become_one_write) {
    setenv("KN_JIT", "0", 1);  /* the passes alone */
    state e = {{kn_randn(KN_SHAPE(8, 16), KN_F32), kn_rand(KN_SHAPE(8, 16), KN_F32), kn_scalar(0.9, KN_F32)}, 3};
    state t = clone_state(&e);
    kn_tensor *g = kn_randn(KN_SHAPE(8, 16), KN_F32);
    kn_fn *f;
    expect_like_eager(moments_body, "moments", &e, &t, &g, &g, 1, 1, 4, &f);
    cr_assert_eq(count_in_plan(f, "write("), 2, "one write per moment, not two");
    kn_fn_free(f);
}

Test(passes, forwarded_chains_fuse_and_stay_bitwise) {
    state e = {{kn_randn(KN_SHAPE(64, 33), KN_F32), kn_rand(KN_SHAPE(64, 33), KN_F32), kn_scalar(0.9, KN_F32)}, 3};
    state t = clone_state(&e);
    kn_tensor *g = kn_randn(KN_SHAPE(64, 33), KN_F32);
    kn_fn *f;
    expect_like_eager(moments_body, "moments_jit", &e, &t, &g, &g, 1, 1, 4, &f);
    cr_assert_eq(count_in_plan(f, "write("), 2);
    kn_fn_free(f);
}

/* a and b are two captures over one storage: every write to one may change
 * the other, so nothing is forwarded across them and no write is dropped. */
static int alias_body(void *ctx, kn_tensor *const *in, kn_tensor **out) {
    state *s = ctx;
    kn_tensor *a = s->t[1], *b = s->t[2];
    if (kn_mul_scalar_(a, 2) || kn_add_(b, in[0]) || kn_mul_scalar_(a, 3) || kn_add_scalar_(b, 1)) return -1;
    out[0] = kn_mul(b, kn_sum(a, KN_DIMS(0), true));
    return out[0] ? 0 : -1;
}

static state views_of(kn_tensor *base, bool overlap) {
    /* overlap: a is row 0 of b (b is base); else a and b are rows 0 and 1 */
    kn_tensor *a = kn_slice(base, 0, 0, 1, 1), *b = overlap ? base : kn_slice(base, 0, 1, 2, 1);
    return (state){{base, a, b}, 3};
}

Test(passes, views_of_one_storage_written_alternately_match_eager) {
    setenv("KN_JIT", "0", 1);
    for (int overlap = 0; overlap < 2; overlap++) {
        kn_tensor *base_e = kn_randn(KN_SHAPE(2, 4), KN_F32), *base_t = kn_cast(base_e, KN_F32);
        state e = views_of(base_e, overlap), t = views_of(base_t, overlap);
        kn_tensor *x = overlap ? kn_randn(KN_SHAPE(2, 4), KN_F32) : kn_randn(KN_SHAPE(1, 4), KN_F32);
        kn_fn *f;
        expect_like_eager(alias_body, "alias", &e, &t, &x, &x, 1, 1, 3, &f);
        cr_assert_eq(count_in_plan(f, "write("), 4, "overlap %d: every write stays", overlap);
        kn_fn_free(f);
    }
}

/* Views made inside the body read the storage when they are read: after a
 * later write they show it, in eager and in the plan alike. */
static int view_read_body(void *ctx, kn_tensor *const *in, kn_tensor **out) {
    state *s = ctx;
    kn_tensor *c = s->t[0];
    kn_tensor *flat = kn_reshape(c, KN_SHAPE(8));  /* before any write */
    if (kn_mul_scalar_(c, 2)) return -1;
    kn_tensor *tr = kn_transpose(c, 0, 1);           /* after the first write */
    if (kn_add_(c, in[0]) || kn_mul_scalar_(c, 0.5)) return -1;
    out[0] = kn_mul_scalar(kn_contiguous(tr), 1.5);
    out[1] = kn_add(flat, kn_reshape(c, KN_SHAPE(8)));
    return out[0] && out[1] ? 0 : -1;
}

Test(passes, reads_through_views_see_later_writes) {
    setenv("KN_JIT", "0", 1);
    state e = {{kn_randn(KN_SHAPE(2, 4), KN_F32)}, 1}, t = clone_state(&e);
    kn_tensor *x = kn_randn(KN_SHAPE(2, 4), KN_F32);
    kn_fn *f;
    expect_like_eager(view_read_body, "view_read", &e, &t, &x, &x, 1, 2, 3, &f);
    kn_fn_free(f);
}

/* The input may be a view of the capture: a write to it ends forwarding, and
 * reading it keeps the capture's earlier write. */
static int input_alias_body(void *ctx, kn_tensor *const *in, kn_tensor **out) {
    state *st = ctx;
    kn_tensor *c = st->t[0];
    if (kn_mul_scalar_(c, 2)) return -1;
    kn_tensor *s = kn_sum(in[0], KN_ALL_DIMS, false);
    if (kn_add_scalar_(in[0], 1) || kn_add_(c, kn_mul_scalar(s, 0.5))) return -1;
    out[0] = kn_mul_scalar(c, 3);
    return out[0] ? 0 : -1;
}

Test(passes, inputs_that_view_a_capture_match_eager) {
    setenv("KN_JIT", "0", 1);
    state e = {{kn_randn(KN_SHAPE(8), KN_F32)}, 1}, t = clone_state(&e);
    kn_tensor *ve = kn_reshape(e.t[0], KN_SHAPE(2, 4)), *vt = kn_reshape(t.t[0], KN_SHAPE(2, 4));
    kn_fn *f;
    expect_like_eager(input_alias_body, "input_alias", &e, &t, &ve, &vt, 1, 1, 3, &f);
    cr_assert_eq(count_in_plan(f, "write("), 3);
    kn_fn_free(f);
}

/* A write overwritten before anything reads it is dropped; one that is read
 * (here through a reduction) stays. */
static int dead_write_body(void *ctx, kn_tensor *const *in, kn_tensor **out) {
    state *st = ctx;
    kn_tensor *c = st->t[0], *d = st->t[1];
    kn_tensor *x = kn_tanh(in[0]);  /* not the input itself: it might view c */
    if (kn_fill_(c, 1) || kn_copy_(c, x)) return -1;
    if (kn_fill_(d, 2)) return -1;
    kn_tensor *s = kn_sum(d, KN_ALL_DIMS, false);
    if (kn_copy_(d, x)) return -1;
    out[0] = kn_add(kn_add(c, d), s);
    return out[0] ? 0 : -1;
}

Test(passes, overwritten_writes_are_dropped) {
    setenv("KN_JIT", "0", 1);
    state e = {{kn_zeros(KN_SHAPE(3), KN_F32), kn_zeros(KN_SHAPE(3), KN_F32)}, 2}, t = clone_state(&e);
    kn_tensor *x = kn_randn(KN_SHAPE(3), KN_F32);
    kn_fn *f;
    expect_like_eager(dead_write_body, "dead_write", &e, &t, &x, &x, 1, 1, 3, &f);
    cr_assert_eq(count_in_plan(f, "write("), 3, "c's fill is dead, d's is read");
    kn_fn_free(f);
}

/* x*1 is a copy taken before the write: it must not become a read of c after it. */
static int identity_body(void *ctx, kn_tensor *const *in, kn_tensor **out) {
    state *st = ctx;
    kn_tensor *c = st->t[0];
    kn_tensor *old = kn_mul_scalar(c, 1.0);
    kn_tensor *flat = kn_reshape(kn_transpose(c, 0, 1), KN_SHAPE(6));  /* a copy: c^T is not contiguous */
    if (kn_add_scalar_(c, 1)) return -1;
    out[0] = kn_add(kn_add(old, c), in[0]);
    out[1] = kn_mul_scalar(kn_reshape(flat, KN_SHAPE(3, 2)), 2);  /* not reshape(c^T): c changed */
    return out[0] && out[1] ? 0 : -1;
}

Test(passes, simplification_never_moves_a_read_past_a_write) {
    setenv("KN_JIT", "0", 1);
    state e = {{kn_randn(KN_SHAPE(2, 3), KN_F32)}, 1}, t = clone_state(&e);
    kn_tensor *x = kn_randn(KN_SHAPE(2, 3), KN_F32);
    kn_fn *f;
    expect_like_eager(identity_body, "identity", &e, &t, &x, &x, 1, 2, 3, &f);
    kn_fn_free(f);
}

/* kn_cond between two writes: the branches read the capture directly and
 * one returns its input as the result; the first write must stay. */
static int then_fn(void *ctx, kn_tensor *const *in, kn_tensor **out) {
    state *st = ctx;
    out[0] = kn_add(in[0], st->t[0]);
    return out[0] ? 0 : -1;
}
static int else_fn(void *ctx, kn_tensor *const *in, kn_tensor **out) {
    (void)ctx;
    out[0] = in[0];
    return 0;
}
static int cond_body(void *ctx, kn_tensor *const *in, kn_tensor **out) {
    state *st = ctx;
    kn_tensor *c = st->t[0], *r;
    if (kn_mul_scalar_(c, 2)) return -1;
    if (kn_cond(kn_gt(kn_sum(in[0], KN_ALL_DIMS, false), kn_scalar(0, KN_F32)), then_fn, else_fn, st, &c, 1, &r, 1))
        return -1;
    if (kn_add_scalar_(c, 1)) return -1;
    out[0] = kn_mul_scalar(r, 1.5);
    return out[0] ? 0 : -1;
}

Test(passes, cond_branches_read_the_written_values) {
    setenv("KN_JIT", "0", 1);
    state e = {{kn_randn(KN_SHAPE(4), KN_F32)}, 1}, t = clone_state(&e);
    kn_tensor *pos = kn_ones(KN_SHAPE(4), KN_F32), *neg = kn_full(KN_SHAPE(4), -1, KN_F32);
    kn_fn *f = kn_function("cond", cond_body, &t, 1, 1, NULL);
    for (int c = 0; c < 4; c++) {
        kn_tensor *x = c % 2 ? neg : pos, *want, *got;
        cr_assert_eq(cond_body(&e, &x, &want), 0, "%s", kn_last_error());
        cr_assert_eq(kn_call(f, &x, &got), 0, "call %d: %s", c, kn_last_error());
        assert_equal(got, want);
        assert_equal(t.t[0], e.t[0]);
    }
    cr_assert_eq(count_in_plan(f, "write("), 2);
    kn_fn_free(f);
}

/* A capture that requires grad keeps its reads: gradients flow to it. */
static int grad_capture_body(void *ctx, kn_tensor *const *in, kn_tensor **out) {
    state *st = ctx;
    kn_tensor *w = st->t[0], *m = st->t[1];
    kn_no_grad_begin();
    int rc = kn_mul_scalar_(w, 0.5);
    kn_no_grad_end();
    if (rc || kn_mul_scalar_(m, 3)) return -1;
    out[0] = kn_sum(kn_mul(kn_mul(w, in[0]), m), KN_ALL_DIMS, false);  /* m feeds an op that records */
    return out[0] ? 0 : -1;
}

Test(passes, gradients_see_the_written_tensors) {
    setenv("KN_JIT", "0", 1);
    state e = {{kn_randn(KN_SHAPE(5), KN_F32), kn_randn(KN_SHAPE(5), KN_F32)}, 2}, t = clone_state(&e);
    kn_tensor *xe = kn_randn(KN_SHAPE(5), KN_F32), *xt = kn_cast(xe, KN_F32);
    kn_tensor *leaves[] = {e.t[0], t.t[0], xe, xt};
    for (int i = 0; i < 4; i++) kn_set_requires_grad(leaves[i], true);
    kn_fn *f = kn_function("grad_capture", grad_capture_body, &t, 1, 1, NULL);
    for (int c = 0; c < 3; c++) {
        kn_tensor *want, *got;
        for (int i = 0; i < 4; i++) kn_zero_grad(leaves[i]);
        cr_assert_eq(grad_capture_body(&e, &xe, &want), 0, "%s", kn_last_error());
        cr_assert_eq(kn_call(f, &xt, &got), 0, "%s", kn_last_error());
        assert_equal(got, want);
        cr_assert_eq(kn_backward(want, NULL), 0, "%s", kn_last_error());
        cr_assert_eq(kn_backward(got, NULL), 0, "%s", kn_last_error());
        assert_equal(kn_grad(t.t[0]), kn_grad(e.t[0]));
        assert_equal(kn_grad(xt), kn_grad(xe));
    }
    kn_fn_free(f);
}

/* ---- training loops: traced vs eager, bitwise ---- */
/* The optimizer alone, with gradients from an eager backward: the plan
 * reads them at call time. */
static int step_only(void *ctx, kn_tensor *const *in, kn_tensor **out) {
    (void)in;
    trainer *t = ctx;
    if (kn_optim_step(t->opt) != 0) return -1;
    out[0] = t->p[0];
    return 0;
}

static trainer make_trainer(int opt) {
    kn_manual_seed(5);
    trainer t = {kn_sequential_new(kn_linear_new(12, 16, true), kn_relu_new(), kn_linear_new(16, 4, true), NULL), NULL, {0}};
    kn_parameters(t.model, t.p, NULL, 4);
    t.opt = opt == 0 ? kn_sgd_new(t.p, 4, 0.05, 0.9, 1e-4, false)
          : opt == 1 ? kn_adam_new(t.p, 4, 1e-2, 0.9, 0.999, 1e-8, 0)
                     : kn_adamw_new(t.p, 4, 1e-2, 0.9, 0.999, 1e-8, 0.01);
    return t;
}

/* Bitwise with plans run op by op. With JIT kernels on, row kernels sum in
 * their own order, so losses and parameters agree to rounding only. */
static void expect_same(const kn_tensor *got, const kn_tensor *want, bool jit) {
    if (jit) assert_close(got, want, 1e-5, 1e-7);
    else assert_equal(got, want);
}

static void train_both(int opt, bool whole_step, bool jit) {
    if (!jit) setenv("KN_JIT", "0", 1);
    trainer e = make_trainer(opt), t = make_trainer(opt);
    kn_tensor *x = kn_randn(KN_SHAPE(32, 12), KN_F32);
    kn_tensor *y = kn_argmax(kn_matmul(x, kn_randn(KN_SHAPE(12, 4), KN_F32)), 1, false), *xy[2] = {x, y};
    kn_fn *f = kn_function("train", whole_step ? train_step : step_only, &t, whole_step ? 2 : 0, 1, NULL);
    for (int s = 0; s < 5; s++) {
        kn_pool_push();
        kn_tensor *le, *lt;
        cr_assert_eq(train_step(&e, xy, &le), 0, "%s", kn_last_error());
        if (whole_step) {
            cr_assert_eq(kn_call(f, xy, &lt), 0, "step %d: %s", s, kn_last_error());
            expect_same(lt, le, jit);
        } else {
            kn_tensor *loss = kn_cross_entropy(kn_forward(t.model, x), y, KN_REDUCE_MEAN);
            kn_optim_zero_grad(t.opt);
            cr_assert_eq(kn_backward(loss, NULL), 0, "%s", kn_last_error());
            cr_assert_eq(kn_call(f, NULL, &lt), 0, "step %d: %s", s, kn_last_error());
            expect_same(loss, le, jit);
        }
        for (int i = 0; i < 4; i++) expect_same(t.p[i], e.p[i], jit);
        kn_pool_pop();
    }
    cr_assert_eq(kn_fn_stats(f).traces, 2, "the first trace makes the optimizer's state");
    /* One write per tensor and step: SGD's momentum (twice before
     * forwarding) and the parameter; Adam's moments (twice each), step count
     * and parameter (AdamW: twice, with its decay). */
    int writes = count_in_plan(f, "write("), per = opt == 0 ? 2 : 4;
    cr_assert_eq(writes, 4 * per, "%d writes for %d parameters", writes, 4);
    kn_fn_free(f);
    for (int i = 0; i < 2; i++) {
        trainer *z = i ? &t : &e;
        kn_optim_free(z->opt);
        kn_module_free(z->model);
    }
}

Test(passes, sgd_training_step_matches_eager_bitwise) { train_both(0, true, false); }
Test(passes, adam_training_step_matches_eager_bitwise) { train_both(1, true, false); }
Test(passes, adamw_training_step_matches_eager_bitwise) { train_both(2, true, false); }
Test(passes, sgd_step_alone_matches_eager_bitwise) { train_both(0, false, false); }
Test(passes, adam_step_alone_matches_eager_bitwise) { train_both(1, false, false); }
Test(passes, sgd_training_step_with_jit_kernels) { train_both(0, true, true); }
Test(passes, adam_training_step_with_jit_kernels) { train_both(1, true, true); }

/* ---- the linear + relu epilogue ---- */
static int lr_body(void *ctx, kn_tensor *const *in, kn_tensor **out) {
    state *st = ctx;
    out[0] = kn_relu(kn_linear(in[0], st->t[0], st->n > 1 ? st->t[1] : NULL));
    return out[0] ? 0 : -1;
}

Test(passes, linear_relu_runs_as_one_onednn_node) {
    kn_tensor *w = kn_randn(KN_SHAPE(24, 40), KN_F32), *b = kn_randn(KN_SHAPE(24), KN_F32);
    kn_tensor *wt = kn_transpose(kn_randn(KN_SHAPE(40, 24), KN_F32), 0, 1);  /* column-major weight */
    state cases[] = {{{w, b}, 2}, {{w}, 1}, {{wt, b}, 2}};
    kn_tensor *xs[] = {kn_randn(KN_SHAPE(16, 40), KN_F32), kn_randn(KN_SHAPE(3, 5, 40), KN_F32),
                       kn_transpose(kn_randn(KN_SHAPE(40, 7), KN_F32), 0, 1)};
    for (int c = 0; c < 3; c++)
        for (int i = 0; i < 3; i++) {
            kn_fn *f = kn_function("linear_relu", lr_body, &cases[c], 1, 1, NULL);
            for (int call = 0; call < 2; call++) {
                kn_tensor *want, *got;
                cr_assert_eq(lr_body(&cases[c], &xs[i], &want), 0);
                cr_assert_eq(kn_call(f, &xs[i], &got), 0, "%s", kn_last_error());
                assert_close(got, want, 1e-5, 1e-5);
            }
            cr_assert_eq(kn_fn_stats(f).nodes, 1, "case %d x %d: one node, not linear and relu", c, i);
            cr_assert_eq(count_in_plan(f, "linear_relu("), 1);
            kn_fn_free(f);
        }
}

/* KN_SHADOW=1 compares a linear_relu node with the relu eager recorded. */
Test(passes, shadow_mode_accepts_linear_relu) {
    setenv("KN_SHADOW", "1", 1);
    state st = {{kn_randn(KN_SHAPE(8, 6), KN_F32), kn_randn(KN_SHAPE(8), KN_F32)}, 2};
    kn_tensor *x = kn_randn(KN_SHAPE(4, 6), KN_F32), *got;
    kn_fn *f = kn_function("shadowed", lr_body, &st, 1, 1, NULL);
    for (int call = 0; call < 3; call++) cr_assert_eq(kn_call(f, &x, &got), 0, "%s", kn_last_error());
    cr_assert_eq(count_in_plan(f, "linear_relu("), 1);
    cr_assert_eq(kn_fn_stats(f).shadow_mismatches, 0, "%s", kn_fn_stats(f).shadow_report);
    kn_fn_free(f);
}

Test(passes, linear_relu_epilogue_can_be_turned_off) {
    setenv("KN_EPILOGUE", "0", 1);
    state st = {{kn_randn(KN_SHAPE(8, 6), KN_F32), kn_randn(KN_SHAPE(8), KN_F32)}, 2};
    kn_tensor *x = kn_randn(KN_SHAPE(4, 6), KN_F32), *want, *got;
    kn_fn *f = kn_function("off", lr_body, &st, 1, 1, NULL);
    for (int call = 0; call < 2; call++) {
        cr_assert_eq(lr_body(&st, &x, &want), 0);
        cr_assert_eq(kn_call(f, &x, &got), 0);
        assert_equal(got, want);  /* the eager ops: bitwise */
    }
    cr_assert_eq(kn_fn_stats(f).nodes, 2);
    kn_fn_free(f);
}

/* Its result used twice (relu and an output): the linear is not fused. */
static int lr_shared_body(void *ctx, kn_tensor *const *in, kn_tensor **out) {
    state *st = ctx;
    kn_tensor *y = kn_linear(in[0], st->t[0], st->t[1]);
    out[0] = kn_relu(y);
    out[1] = y;
    return out[0] ? 0 : -1;
}

Test(passes, linear_relu_is_not_fused_where_it_must_not_be) {
    state st = {{kn_randn(KN_SHAPE(8, 6), KN_F32), kn_randn(KN_SHAPE(8), KN_F32)}, 2};
    kn_tensor *x = kn_randn(KN_SHAPE(4, 6), KN_F32), *out[2];
    kn_fn *f = kn_function("shared", lr_shared_body, &st, 1, 2, NULL);
    cr_assert_eq(kn_call(f, &x, out), 0);
    cr_assert_eq(count_in_plan(f, "linear_relu("), 0);
    kn_fn_free(f);
    /* Gradients needed at call time: the eager ops, which record autograd. */
    kn_set_requires_grad(st.t[0], true);
    f = kn_function("needs_grad", lr_body, &st, 1, 1, NULL);
    for (int call = 0; call < 2; call++) {
        cr_assert_eq(kn_call(f, &x, out), 0);
        cr_assert(kn_requires_grad(out[0]));
        cr_assert_eq(kn_backward(kn_sum(out[0], KN_ALL_DIMS, false), NULL), 0, "%s", kn_last_error());
    }
    cr_assert_eq(count_in_plan(f, "linear_relu("), 0);
    cr_assert_eq(kn_fn_stats(f).nodes, 2);
    kn_fn_free(f);
    /* f64 stays on the eager ops too. */
    state st64 = {{kn_cast(st.t[0], KN_F64), kn_cast(st.t[1], KN_F64)}, 2};
    kn_tensor *x64 = kn_cast(x, KN_F64);
    f = kn_function("f64", lr_body, &st64, 1, 1, NULL);
    cr_assert_eq(kn_call(f, &x64, out), 0);
    cr_assert_eq(count_in_plan(f, "linear_relu("), 0);
    kn_fn_free(f);
}

static int counting_lr_body(void *ctx, kn_tensor *const *in, kn_tensor **out) {
    state *st = ctx;
    if (kn_add_scalar_(st->t[2], 1)) return -1;  /* a side effect first */
    out[0] = kn_relu(kn_linear(in[0], st->t[0], st->t[1]));
    return out[0] ? 0 : -1;
}

Test(passes, linear_relu_refuses_inputs_that_require_grad) {
    kn_tensor *w = kn_randn(KN_SHAPE(8, 6), KN_F32), *b = kn_randn(KN_SHAPE(8), KN_F32);
    kn_tensor *x = kn_randn(KN_SHAPE(4, 6), KN_F32), *out;
    /* The op itself: no derivative, so no grad-requiring inputs in grad mode. */
    kn_set_requires_grad(w, true);
    EXPECT_ERR(kn__linear_relu(x, w, b), "no derivative");
    kn_no_grad_begin();
    cr_assert_not_null(kn__linear_relu(x, w, b), "under no-grad it runs: %s", kn_last_error());
    kn_no_grad_end();
    EXPECT_ERR(kn__linear_relu(kn_cast(x, KN_F64), kn_detach(w), NULL), "f32 only");
    EXPECT_ERR(kn__linear_relu(kn_randn(KN_SHAPE(4, 5), KN_F32), kn_detach(w), NULL), "do not fit");
    /* A plan traced while w needed no gradient, called after it does: the
     * node fails before any side effect, so the call retraces (the eager ops
     * record the graph). After a side effect it fails loudly instead. */
    kn_set_requires_grad(w, false);
    state st = {{w, b}, 2};
    kn_fn *f = kn_function("later_grad", lr_body, &st, 1, 1, NULL);
    cr_assert_eq(kn_call(f, &x, &out), 0);
    cr_assert_eq(count_in_plan(f, "linear_relu("), 1);
    kn_set_requires_grad(w, true);
    cr_assert_eq(kn_call(f, &x, &out), 0, "%s", kn_last_error());
    cr_assert(kn_requires_grad(out));
    cr_assert_eq(kn_fn_stats(f).traces, 2);
    kn_fn_free(f);
    kn_set_requires_grad(w, false);
    kn_tensor *counter = kn_zeros(KN_SHAPE(1), KN_F32);
    state st2 = {{w, b, counter}, 3};
    f = kn_function("later_grad_after_write", counting_lr_body, &st2, 1, 1, NULL);
    cr_assert_eq(kn_call(f, &x, &out), 0);
    cr_assert_eq(count_in_plan(f, "linear_relu("), 1);
    kn_set_requires_grad(w, true);
    kn_clear_error();
    cr_assert_eq(kn_call(f, &x, &out), -1);
    cr_assert(kn_last_error() && strstr(kn_last_error(), "no derivative"), "%s", kn_last_error());
    kn_fn_free(f);
}

/* A fused group runs at its root's place: a member reading capture A before
 * a write into B, which shares A's storage, must not move past the write
 * (write forwarding sees only writes into A itself). */
static int alias_fuse_body(void *ctx, kn_tensor *const *in, kn_tensor **out) {
    state *s = ctx;
    kn_tensor *a = kn_mul_scalar(s->t[0], 2);
    if (kn_copy_(s->t[1], in[0])) return -1;
    out[0] = kn_add(kn_exp(a), kn_mul(in[0], s->t[0]));
    return out[0] ? 0 : -1;
}

Test(passes, fusion_keeps_reads_before_writes_into_shared_storage) {
    kn_tensor *base[2] = {kn_randn(KN_SHAPE(1, 6), KN_F32), NULL};
    base[1] = kn_cast(base[0], KN_F32);
    state eager = {{kn_reshape(base[0], KN_SHAPE(6)), kn_reshape(base[0], KN_SHAPE(6))}, 2};
    state traced = {{kn_reshape(base[1], KN_SHAPE(6)), kn_reshape(base[1], KN_SHAPE(6))}, 2};
    kn_tensor *x[3] = {kn_randn(KN_SHAPE(6), KN_F32), kn_randn(KN_SHAPE(6), KN_F32), kn_randn(KN_SHAPE(6), KN_F32)};
    kn_fn *f = kn_function("alias_fuse", alias_fuse_body, &traced, 1, 1, NULL);
    for (int call = 0; call < 3; call++) {
        kn_tensor *want, *got;
        cr_assert_eq(alias_fuse_body(&eager, &x[call], &want), 0);
        cr_assert_eq(kn_call(f, &x[call], &got), 0, "%s", kn_last_error());
        assert_equal(got, want);
        assert_equal(base[1], base[0]);
    }
    cr_assert_eq(count_in_plan(f, "fused<"), 1, "exp and what follows still fuse");
    kn_fn_free(f);
}

/* ---- scalar chains (trace/scalars.c) ---- */

/* Adam's bias corrections: a counter written in place, powers, a square
 * root, an integer constant and a cast, all 0-d, then one tensor op. */
static int bias_body(void *ctx, kn_tensor *const *in, kn_tensor **out) {
    state *s = ctx;
    kn_tensor *step = s->t[0];
    if (kn_add_scalar_(step, 1)) return -1;
    kn_tensor *b1 = kn_add_scalar(kn_neg(kn_pow(kn_scalar(0.9, KN_F64), step)), 1);
    kn_tensor *b2 = kn_add_scalar(kn_neg(kn_pow(kn_scalar(0.999, KN_F64), step)), 1);
    kn_tensor *c = kn_cast(kn_div(kn_mul_scalar(kn_sqrt(b2), 3), b1), KN_F32);
    out[0] = kn_mul(in[0], c);
    return out[0] ? 0 : -1;
}

Test(passes, scalar_chains_run_as_one_node_and_match_eager_bitwise) {
    state eager = {{kn_scalar(0, KN_F64)}, 1}, traced = clone_state(&eager);
    kn_tensor *x = kn_randn(KN_SHAPE(37), KN_F32);
    kn_fn *f;
    expect_like_eager(bias_body, "bias", &eager, &traced, &x, &x, 1, 1, 6, &f);
    cr_assert_eq(count_in_plan(f, "scalars<"), 1, "one chain");
    cr_assert_eq(count_in_plan(f, "pow("), 0, "no 0-d op left on its own");
    cr_assert_eq(kn_item(traced.t[0]), 6.0);
    kn_fn_free(f);
    /* KN_SHADOW=1 compares each value the chain stores with eager's */
    setenv("KN_SHADOW", "1", 1);
    kn_tensor *out;
    f = kn_function("bias_shadowed", bias_body, &traced, 1, 1, NULL);
    for (int call = 0; call < 3; call++) cr_assert_eq(kn_call(f, &x, &out), 0, "%s", kn_last_error());
    cr_assert_eq(count_in_plan(f, "scalars<"), 1);
    cr_assert_eq(kn_fn_stats(f).shadow_mismatches, 0, "%s", kn_fn_stats(f).shadow_report);
    kn_fn_free(f);
}

/* 100 distinct 0-d captures summed: a chain takes at most KN_NODE_MAX_IN
 * values from outside, so this is several chains. */
static int wide_body(void *ctx, kn_tensor *const *in, kn_tensor **out) {
    kn_tensor **c = ctx, *acc = kn_mul_scalar(c[0], 1.5);
    for (int i = 1; i < 100; i++) acc = kn_add(acc, c[i]);
    out[0] = kn_mul(in[0], kn_cast(acc, KN_F32));
    return out[0] ? 0 : -1;
}

Test(passes, scalar_chains_split_where_their_inputs_would_not_fit) {
    kn_tensor *c[100], *x = kn_randn(KN_SHAPE(4), KN_F32), *want, *got;
    for (int i = 0; i < 100; i++) c[i] = kn_scalar(0.01 * i - 0.3, KN_F64);
    kn_fn *f = kn_function("wide", wide_body, c, 1, 1, NULL);
    for (int call = 0; call < 3; call++) {
        cr_assert_eq(wide_body(c, &x, &want), 0);
        cr_assert_eq(kn_call(f, &x, &got), 0, "%s", kn_last_error());
        assert_equal(got, want);
    }
    cr_assert_geq(count_in_plan(f, "scalars<"), 2);
    kn_fn_free(f);
}

/* s and s2 are two tensors on one storage: b reads s2 after the write into
 * s, so it must not run before the write (write forwarding does not see
 * through s2). u reads a sum, so it stays after the sum. */
static int ordered_body(void *ctx, kn_tensor *const *in, kn_tensor **out) {
    state *s = ctx;
    kn_tensor *a = kn_mul_scalar(s->t[0], 2);
    kn_tensor *e = kn_add_scalar(a, 5);
    if (kn_copy_(s->t[0], kn_add_scalar(a, 1))) return -1;
    kn_tensor *b = kn_mul_scalar(s->t[1], 3);
    kn_tensor *t = kn_cast(kn_sum(in[0], KN_ALL_DIMS, false), KN_F64);
    kn_tensor *u = kn_add_scalar(kn_mul(t, a), 1);
    out[0] = kn_mul(in[0], kn_cast(kn_add(kn_add(b, e), u), KN_F32));
    return out[0] ? 0 : -1;
}

Test(passes, scalar_chains_keep_reads_after_writes_and_the_ops_they_read) {
    kn_tensor *base = kn_full(KN_SHAPE(1), 1.25, KN_F64), *base2 = kn_cast(base, KN_F64);
    int64_t none[1] = {0};
    state eager = {{kn_reshape(base, none, 0), kn_reshape(base, none, 0)}, 2};
    state traced = {{kn_reshape(base2, none, 0), kn_reshape(base2, none, 0)}, 2};
    kn_tensor *x = kn_randn(KN_SHAPE(9), KN_F32);
    kn_fn *f;
    expect_like_eager(ordered_body, "ordered", &eager, &traced, &x, &x, 1, 1, 4, &f);
    /* a, e and a + 1 before the write; b and b + e after it; the rest after the sum */
    cr_assert_eq(count_in_plan(f, "scalars<"), 3);
    kn_fn_free(f);
}

/* ---- random bodies: traced vs eager, bit for bit ----
 * Programs of ops over six captures, 0-d or [3] (two pairs share storage), with
 * in-place writes, sums of the input and casts between them: they exercise
 * write forwarding, dead writes, scalar chains and fusion against the
 * order eager runs them in. A seed that differs names itself. */
#define RB_CAPS 6
#define RB_OPS 40
typedef struct { int kind, a, b, op; } rb_ins;
typedef struct { kn_tensor *cap[RB_CAPS]; rb_ins prog[RB_OPS]; int n; } rb_state;

static kn_tensor *rb_binary(int op, kn_tensor *a, kn_tensor *b) {
    switch (op) {
    case 0: return kn_add(a, b);
    case 1: return kn_mul(a, b);
    case 2: return kn_sub(a, b);
    case 3: return kn_div(a, kn_add_scalar(kn_abs(b), 1));
    case 4: return kn_add_scalar(kn_mul_scalar(a, 0.7), 0.3);
    default: return kn_sqrt(kn_abs(a));
    }
}

static int rb_body(void *ctx, kn_tensor *const *in, kn_tensor **out) {
    rb_state *s = ctx;
    kn_tensor *v[RB_OPS + RB_CAPS];
    int nv = 0;
    for (int i = 0; i < RB_CAPS; i++) v[nv++] = s->cap[i];
    for (int i = 0; i < s->n; i++) {
        const rb_ins *p = &s->prog[i];
        kn_tensor *a = v[p->a % nv], *b = v[p->b % nv], *cap = s->cap[p->a % RB_CAPS];
        switch (p->kind) {
        case 0: v[nv++] = rb_binary(p->op, a, b); break;
        case 1: if (kn_copy_(cap, b)) return -1; break;
        case 2: if (kn_add_(cap, b)) return -1; break;
        case 3: v[nv++] = kn_cast(kn_sum(in[0], KN_ALL_DIMS, false), p->op & 1 ? KN_F64 : KN_F32); break;
        default: v[nv++] = kn_cast(a, p->op & 1 ? KN_F64 : KN_F32); break;
        }
        if (!v[nv - 1]) return -1;
    }
    kn_tensor *acc = kn_cast(v[nv - 1], KN_F64);
    for (int i = nv - 2; i >= RB_CAPS && i > nv - 6; i--) acc = kn_add(acc, v[i]);
    out[0] = kn_mul(in[0], kn_cast(acc, KN_F32));
    return out[0] ? 0 : -1;
}

/* 0-d captures, or [3] ones (n = 3) that fused kernels loop over. */
static void rb_captures(kn_tensor **c, int64_t n) {
    kn_tensor *b64 = kn_full(KN_SHAPE(1, n), 1.25, KN_F64), *b32 = kn_full(KN_SHAPE(1, n), 0.5, KN_F32);
    int64_t shape[1] = {n};
    int nd = n > 1;
    c[0] = kn_reshape(b64, shape, nd), c[1] = kn_reshape(b64, shape, nd);  /* one storage */
    c[2] = kn_reshape(b32, shape, nd), c[3] = kn_reshape(b32, shape, nd);  /* another */
    c[4] = kn_full(shape, nd, 0.75, KN_F64), c[5] = kn_full(shape, nd, -0.3, KN_F32);
}

Test(passes, random_bodies_with_shared_storage_match_eager, .timeout = 120) {
    for (unsigned seed = 0; seed < 10000; seed++) {
        kn_pool_push();
        srand(seed);
        rb_state e, t;
        int64_t n = seed % 10 == 1 ? 3 : 1;  /* one in ten loops over [3] (those compile kernels) */
        rb_captures(e.cap, n);
        rb_captures(t.cap, n);
        e.n = t.n = 8 + rand() % (RB_OPS - 8);
        for (int i = 0; i < e.n; i++) {
            int r = rand() % 10;
            rb_ins p = {r < 5 ? 0 : r < 7 ? 1 : r < 8 ? 2 : r < 9 ? 3 : 4, rand(), rand(), rand() % 6};
            e.prog[i] = t.prog[i] = p;
        }
        kn_tensor *x = kn_randn(KN_SHAPE(n > 1 ? n : 5), KN_F32);
        kn_fn *f = kn_function("random_body", rb_body, &t, 1, 1, NULL);
        for (int call = 0; call < 4; call++) {
            kn_tensor *want, *got;
            cr_assert_eq(rb_body(&e, &x, &want), 0, "seed %u: %s", seed, kn_last_error());
            cr_assert_eq(kn_call(f, &x, &got), 0, "seed %u: %s", seed, kn_last_error());
            cr_assert(memcmp(kn_data(got), kn_data(want), (size_t)kn_numel(want) * sizeof(float)) == 0,
                      "seed %u call %d: output", seed, call);
            for (int i = 0; i < RB_CAPS; i++)
                cr_assert(memcmp(kn_data(t.cap[i]), kn_data(e.cap[i]), (size_t)n * kn_dtype_size(kn_dtype_of(e.cap[i]))) == 0,
                          "seed %u call %d: capture %d", seed, call, i);
        }
        kn_fn_free(f);
        kn_pool_pop();
    }
}
