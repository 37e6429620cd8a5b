/* Plan arenas: a cached plan's internal values live in one block laid out by
 * liveness, so steady-state calls allocate only what they return, and the
 * results stay those of eager runs when sizes, branches or lifetimes change. */
#include "helpers.h"
#include "internal.h"
#include <math.h>
#include <stdlib.h>
#include <pthread.h>

KN_SUITE(arena, 11);

/* Tests that measure the arena need plans replayed as they are: shadow
 * mode keeps every value of a replay, eager mode has no plans. */
static void needs_plain_replays(void) {
    const char *names[] = {"KN_SHADOW", "KN_EAGER"};
    for (int i = 0; i < 2; i++) {
        const char *v = getenv(names[i]);
        if (v && *v && strcmp(v, "0")) cr_skip_test("%s is set", names[i]);
    }
}

/* ---- an MLP train step: the steady state allocates only its output ---- */

/* 256 -> 96 -> 10: the first layer's gradient (96 KiB) is a large block,
 * which outside a plan would go through the shared cache and its lock. */
static trainer trainer_new(void) {
    kn_manual_seed(5);
    trainer t = {.model = kn_sequential_new(kn_linear_new(256, 96, true), kn_relu_new(), kn_linear_new(96, 10, true), NULL)};
    kn_tensor *p[4];
    kn_parameters(t.model, p, NULL, 4);
    t.opt = kn_adam_new(p, 4, 1e-3, 0.9, 0.999, 1e-8, 0);
    return t;
}

static void trainer_free(trainer *t) {
    kn_optim_free(t->opt);
    kn_module_free(t->model);
}

Test(arena, train_step_allocates_only_its_outputs) {
    needs_plain_replays();
    enum { WARM = 10, COUNTED = 50, STEPS = WARM + COUNTED };
    kn_tensor *xy[2] = {kn_randn(KN_SHAPE(16, 256), KN_F32),
                        kn_argmax(kn_randn(KN_SHAPE(16, 10), KN_F32), 1, false)};
    double eager[STEPS], traced[STEPS];
    trainer te = trainer_new();
    for (int i = 0; i < STEPS; i++) {
        kn_pool_push();
        kn_tensor *loss;
        cr_assert_eq(train_step(&te, xy, &loss), 0, "%s", kn_last_error());
        eager[i] = kn_item(loss);
        kn_pool_pop();
    }
    trainer_free(&te);

    trainer tt = trainer_new();
    kn_fn *f = kn_function("train_step", train_step, &tt, 2, 1, NULL);
    uint64_t sys = 0, tensors = 0, locks = 0;
    for (int i = 0; i < STEPS; i++) {
        uint64_t s0 = kn__sys_allocs(), t0 = kn__tensor_mallocs(), l0 = kn__cache_locks();
        kn_pool_push();
        kn_tensor *loss;
        cr_assert_eq(kn_call(f, xy, &loss), 0, "%s", kn_last_error());
        traced[i] = kn_item(loss);
        kn_pool_pop();
        kn_fn_wait_compiled(f);  /* KN_COMPILE=async: the plan settles during the warm-up */
        if (i < WARM) continue;
        sys += kn__sys_allocs() - s0;
        tensors += kn__tensor_mallocs() - t0;
        locks += kn__cache_locks() - l0;
    }
    /* One storage per call: the loss it returns. */
    cr_assert_eq(sys, COUNTED, "%d steady-state calls took %llu storage blocks from the system or the shared cache "
                 "(want %d: their outputs)", COUNTED, (unsigned long long)sys, COUNTED);
    cr_assert_eq(tensors, 0, "%llu tensor structs from malloc", (unsigned long long)tensors);
    cr_assert_eq(locks, 0, "the shared block cache's lock was taken %llu times", (unsigned long long)locks);
    for (int i = 0; i < STEPS; i++)
        cr_assert(fabs(traced[i] - eager[i]) <= 1e-6 * fmax(1, fabs(eager[i])), "step %d: traced loss %.9g, eager %.9g",
                  i, traced[i], eager[i]);
    kn_fn_stats_t s = kn_fn_stats(f);
    cr_assert_gt(s.planned_peak_bytes, 0);
    cr_assert_eq(s.hits, STEPS - s.traces);
    kn_fn_free(f);
    trainer_free(&tt);
}

/* ---- a chain of dead intermediates: two slots serve them all ---- */
enum { CHAIN = 10, ROWS = 32, COLS = 64 };
static int chain_body(void *ctx, kn_tensor *const *in, kn_tensor **out) {
    (void)ctx;
    kn_tensor *x = in[0];
    for (int i = 0; i < CHAIN; i++) x = kn_matmul(x, in[1]);
    out[0] = x;
    return x ? 0 : -1;
}

/* Peak bytes above what was in use before running fn (eager when f is NULL). */
static int64_t peak_of(kn_fn *f, kn_tensor **in, kn_tensor **out) {
    int64_t before, peak;
    kn_memory_stats(&before, NULL);
    kn_memory_reset_peak();
    kn_pool_push();
    cr_assert_eq(f ? kn_call(f, in, out) : chain_body(NULL, in, out), 0, "%s", kn_last_error());
    kn_keep(*out);
    kn_pool_pop();
    kn_memory_stats(NULL, &peak);
    return peak - before;
}

Test(arena, planned_peak_reuses_dead_intermediates) {
    needs_plain_replays();
    kn_tensor *in[2] = {kn_randn(KN_SHAPE(ROWS, COLS), KN_F32), kn_mul_scalar(kn_randn(KN_SHAPE(COLS, COLS), KN_F32), 0.125)};
    kn_fn *f = kn_function("chain", chain_body, NULL, 2, 1, NULL);
    kn_tensor *want, *got;
    int64_t eager_peak = peak_of(NULL, in, &want);
    for (int i = 0; i < 3; i++) {  /* trace, first run (logs), first run from the arena */
        kn_tensor *o;
        cr_assert_eq(kn_call(f, in, &o), 0, "%s", kn_last_error());
        kn_fn_wait_compiled(f);
    }
    int64_t traced_peak = peak_of(f, in, &got);
    assert_close(got, want, 1e-6, 1e-6);
    int64_t value = ROWS * COLS * 4, internal = (CHAIN - 1) * value;  /* the last one is the output */
    kn_fn_stats_t s = kn_fn_stats(f);
    cr_assert_gt(s.planned_peak_bytes, 0);
    cr_assert_lt(s.planned_peak_bytes, internal, "planned %lld bytes for %lld bytes of intermediates",
                 (long long)s.planned_peak_bytes, (long long)internal);
    cr_assert_eq(s.planned_peak_bytes, 2 * value, "each matmul reads one value and writes the next: two slots");
    cr_assert_lt(traced_peak, eager_peak, "traced peak %lld, eager %lld", (long long)traced_peak, (long long)eager_peak);
    cr_assert_leq(traced_peak, 3 * value, "two slots and the output");
    kn_release(want);
    kn_release(got);
    kn_fn_free(f);
}

/* ---- sizes that change between calls ---- */
static int mlp_body(void *ctx, kn_tensor *const *in, kn_tensor **out) {
    kn_tensor **w = ctx;
    kn_tensor *h = kn_relu(kn_linear(in[0], w[0], w[1]));
    kn_tensor *y = kn_softmax(kn_matmul(h, w[2]), -1);
    out[0] = kn_add(y, kn_mean(h, KN_DIMS(1), true));
    return out[0] ? 0 : -1;
}

Test(arena, batch_sizes_that_change_replan_the_arena) {
    needs_plain_replays();
    kn_tensor *w[3] = {kn_randn(KN_SHAPE(24, 12), KN_F32), kn_randn(KN_SHAPE(24), KN_F32),
                       kn_randn(KN_SHAPE(24, 5), KN_F32)};
    kn_tensor *x[2] = {kn_randn(KN_SHAPE(7, 12), KN_F32), kn_randn(KN_SHAPE(64, 12), KN_F32)};
    kn_fn *f = kn_function("mlp", mlp_body, w, 1, 1, NULL);
    /* 7 (trace), 7 (logs), 7 (arena), 64 (too big: falls back, re-plans),
     * 64 (new layout), then 7 and 64 alternating fit it. */
    int batches[] = {0, 0, 0, 1, 1, 0, 1, 0, 1, 0};
    int64_t planned[10];
    for (int i = 0; i < 10; i++) {
        kn_tensor *got, *want;
        cr_assert_eq(kn_call(f, &x[batches[i]], &got), 0, "call %d: %s", i, kn_last_error());
        kn_fn_wait_compiled(f);
        cr_assert_eq(mlp_body(w, &x[batches[i]], &want), 0);
        assert_close(got, want, 1e-6, 1e-6);
        planned[i] = kn_fn_stats(f).planned_peak_bytes;
    }
    cr_assert_eq(kn_fn_stats(f).traces, 1, "one symbolic plan serves both batch sizes");
    cr_assert_gt(planned[2], 0);
    cr_assert_gt(planned[3], planned[2], "batch 64 re-planned a larger arena (%lld, was %lld)", (long long)planned[3],
                 (long long)planned[2]);
    cr_assert_eq(planned[9], planned[3], "batch 7 fits the batch-64 layout");
    kn_fn_free(f);
}

/* ---- outputs that are views of internal values ---- */
static int view_body(void *ctx, kn_tensor *const *in, kn_tensor **out) {
    (void)ctx;
    kn_tensor *t = kn_exp(kn_mul_scalar(kn_matmul(in[0], in[0]), 0.01));
    out[0] = kn_slice(kn_transpose(t, 0, 1), 0, 1, 3, 1);  /* a view of t */
    return out[0] ? 0 : -1;
}

Test(arena, an_output_that_views_an_internal_value_outlives_the_next_call) {
    kn_fn *f = kn_function("view", view_body, NULL, 1, 1, NULL);
    kn_tensor *kept[6], *want[6];
    for (int i = 0; i < 6; i++) {
        kn_tensor *x = kn_randn(KN_SHAPE(4, 4), KN_F32);
        cr_assert_eq(kn_call(f, &x, &kept[i]), 0, "%s", kn_last_error());
        cr_assert_eq(view_body(NULL, &x, &want[i]), 0);
    }
    for (int i = 0; i < 6; i++) assert_equal(kept[i], want[i]);  /* later calls wrote elsewhere */
    kn_fn_free(f);
}

/* ---- kn_cond: branches that allocate differently, alternating ---- */
static int small_branch(void *ctx, kn_tensor *const *in, kn_tensor **out) {
    (void)ctx;
    out[0] = kn_mul_scalar(in[0], 2);
    return 0;
}
static int big_branch(void *ctx, kn_tensor *const *in, kn_tensor **out) {
    (void)ctx;
    kn_tensor *wide = kn_cat((kn_tensor *[]){in[0], kn_exp(in[0]), kn_neg(in[0])}, 3, 1);
    kn_tensor *m = kn_matmul(kn_transpose(wide, 0, 1), wide);
    out[0] = kn_add(kn_slice(kn_sum(m, KN_DIMS(0), true), 1, 0, 8, 1), in[0]);
    return 0;
}
static int cond_body(void *ctx, kn_tensor *const *in, kn_tensor **out) {
    (void)ctx;
    kn_tensor *x = kn_tanh(in[0]);
    kn_tensor *pred = kn_gt(kn_sum(in[0], KN_ALL_DIMS, false), kn_scalar(0, KN_F32));
    kn_tensor *r;
    if (kn_cond(pred, small_branch, big_branch, NULL, &x, 1, &r, 1) != 0) return -1;
    out[0] = kn_mul(kn_add_scalar(r, 1), x);
    return 0;
}

Test(arena, cond_branches_that_allocate_differently_stay_correct) {
    kn_fn *f = kn_function("cond", cond_body, NULL, 1, 1, NULL);
    kn_tensor *pos = kn_abs(kn_randn(KN_SHAPE(8, 8), KN_F32)), *neg = kn_neg(kn_abs(kn_randn(KN_SHAPE(8, 8), KN_F32)));
    int pattern[] = {1, 0, 1, 0, 0, 1, 1, 0, 1, 0, 1, 1, 1, 0, 0, 0, 1, 0, 1, 0};
    kn_tensor *prev = NULL, *prev_want = NULL;
    for (int i = 0; i < 20; i++) {
        kn_tensor *x = pattern[i] ? pos : neg, *got, *want;
        cr_assert_eq(kn_call(f, &x, &got), 0, "call %d: %s", i, kn_last_error());
        cr_assert_eq(cond_body(NULL, &x, &want), 0);
        assert_close(got, want, 1e-6, 1e-6);
        if (prev) assert_equal(prev, prev_want);  /* the previous output is intact */
        prev = got;
        prev_want = want;
    }
    kn_fn_stats_t s = kn_fn_stats(f);
    if (s.eager_calls == 0) {  /* KN_EAGER=1 runs the body instead */
        cr_assert_eq(s.traces, 1);
        cr_assert_gt(s.planned_peak_bytes, 0);
    }
    kn_fn_free(f);
}

/* ---- the arena itself: a slot still in use is never handed out ---- */
static bool overlaps(const kn_tensor *a, const kn_tensor *b) {
    const char *pa = kn__ptr(a), *pb = kn__ptr(b);
    size_t na = (size_t)kn__tnumel(a) * 4, nb = (size_t)kn__tnumel(b) * 4;
    return pa < pb + nb && pb < pa + na;
}

/* One run: a dies before b is made, so a layout puts b over a's bytes. With
 * keep_a the caller gets a reference to a: it escapes the run. */
static kn_tensor *arena_run(kn_arena *ar, bool keep_a, const char **b_at) {
    kn_arena *prev = kn__arena_enter(ar);
    kn_tensor *a = kn_keep(kn_full(KN_SHAPE(256), 1, KN_F32)), *kept = keep_a ? kn_retain(a) : NULL;
    kn_release(a);
    kn_tensor *b = kn_full(KN_SHAPE(256), 2, KN_F32);
    if (kept) cr_assert(!overlaps(kept, b), "b was handed bytes that a still uses");
    if (b_at) *b_at = kn__ptr(b);
    kn__drop(b);
    kn__arena_leave(ar, prev, true);
    return kept;
}

Test(arena, a_slot_still_in_use_is_never_handed_out) {
    kn_arena *ar = kn__arena_new();
    arena_run(ar, false, NULL);  /* logs: a and b both die inside, one after the other */
    cr_assert_eq(kn__arena_bytes(ar), 1024, "a and b share one slot");
    const char *b_at;
    arena_run(ar, false, &b_at);
    kn_tensor *a1 = arena_run(ar, true, NULL);  /* a escapes: b falls back, the arena re-plans */
    cr_assert_eq(kn__ptr(a1), b_at, "a1 has the slot b had in the run before");
    uint64_t s0 = kn__sys_allocs();
    kn_tensor *a2 = arena_run(ar, true, NULL);
    cr_assert_geq(kn__sys_allocs() - s0, 2, "a fresh block, and a (no longer a slot) from the system");
    cr_assert(!overlaps(a1, a2));
    kn__arena_free(ar);  /* the old block lives on with a1 */
    for (int64_t i = 0; i < 256; i++) {
        cr_assert_eq(at(a1, i), 1);
        cr_assert_eq(at(a2, i), 1);
    }
    kn_release(a1);
    kn_release(a2);
}

/* ---- plans run from another thread; its cached tensor structs go at exit ---- */
typedef struct { kn_fn *f; kn_tensor *x, *got[4]; int rc; } thread_job;

static void *run_calls(void *p) {
    thread_job *j = p;
    for (int i = 0; i < 4 && j->rc == 0; i++) {
        kn_pool_push();
        kn_tensor *o = NULL;
        j->rc = kn_call(j->f, &j->x, &o);
        j->got[i] = j->rc == 0 ? kn_keep(o) : NULL;  /* released by the main thread */
        kn_pool_pop();
    }
    return NULL;
}

Test(arena, a_plan_runs_from_another_thread) {
    kn_fn *f = kn_function("view", view_body, NULL, 1, 1, NULL);
    kn_tensor *x = kn_randn(KN_SHAPE(4, 4), KN_F32), *want, *got;
    cr_assert_eq(view_body(NULL, &x, &want), 0);
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(kn_call(f, &x, &got), 0, "%s", kn_last_error());
        assert_equal(got, want);
    }
    thread_job j = {f, x, {0}, 0};
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, run_calls, &j), 0);
    pthread_join(th, NULL);
    cr_assert_eq(j.rc, 0);
    for (int i = 0; i < 4; i++) {
        assert_equal(j.got[i], want);
        kn_release(j.got[i]);
    }
    cr_assert_eq(kn_call(f, &x, &got), 0, "%s", kn_last_error());
    assert_equal(got, want);
    kn_fn_free(f);
}
