/* Refcounts and pools: a training-style loop with one pool per step must not
 * grow, and kn_keep must hand a tensor over to the caller. */
#include "helpers.h"

Test(pool, pop_releases_everything_created) {
    int64_t live0 = kn_live_tensors();
    kn_pool_push();
    kn_tensor *a = kn_ones(KN_SHAPE(4, 4), KN_F32);
    kn_tensor *b = kn_add(kn_mul(a, a), a);
    cr_assert(b);
    cr_assert_gt(kn_live_tensors(), live0 + 2);
    kn_pool_pop();
    cr_assert_eq(kn_live_tensors(), live0);
}

Test(pool, keep_survives_pop) {
    int64_t live0 = kn_live_tensors();
    kn_pool_push();
    kn_tensor *a = kn_full(KN_SHAPE(3), 2, KN_F32);
    kn_tensor *k = kn_keep(kn_mul(a, a));
    kn_pool_pop();
    cr_assert_eq(kn_live_tensors(), live0 + 1);
    cr_assert_eq(at(k, 2), 4);
    kn_release(k);
    cr_assert_eq(kn_live_tensors(), live0);
}

Test(pool, nested_pools) {
    int64_t live0 = kn_live_tensors();
    kn_pool_push();
    kn_tensor *outer = kn_ones(KN_SHAPE(2), KN_F32);
    kn_pool_push();
    kn_tensor *inner = kn_add(outer, outer);
    kn_tensor *kept = kn_keep(kn_add(inner, outer));
    kn_pool_pop();
    cr_assert_eq(at(outer, 0), 1, "outer tensor must live until its own pool pops");
    cr_assert_eq(at(kept, 0), 3);
    kn_pool_pop();
    cr_assert_eq(kn_live_tensors(), live0 + 1);
    kn_release(kept);
}

Test(pool, views_keep_storage_alive) {
    int64_t live0 = kn_live_tensors();
    kn_tensor *base = kn_arange(0, 6, 1, KN_F32);
    kn_tensor *v = kn_reshape(base, KN_SHAPE(2, 3));
    kn_release(base);
    cr_assert_eq(at(v, 5), 5, "a view keeps its storage alive");
    kn_release(v);
    cr_assert_eq(kn_live_tensors(), live0);
}

Test(pool, retain_release) {
    int64_t live0 = kn_live_tensors();
    kn_tensor *t = kn_zeros(KN_SHAPE(2), KN_F32);
    cr_assert_eq(kn_retain(t), t);
    kn_release(t);
    cr_assert_eq(kn_live_tensors(), live0 + 1);
    kn_release(t);
    cr_assert_eq(kn_live_tensors(), live0);
    kn_release(NULL);
}

Test(pool, release_by_hand_inside_a_pool) {
    int64_t live0 = kn_live_tensors();
    kn_pool_push();
    kn_tensor *t = kn_zeros(KN_SHAPE(2), KN_F32);
    kn_release(t);  /* the pool forgets it; pop must not free it twice */
    cr_assert_eq(kn_live_tensors(), live0);
    kn_pool_pop();
    cr_assert_eq(kn_live_tensors(), live0);
}

/* A step shaped like training: params kept outside, all else per-step. */
Test(pool, training_loop_does_not_grow) {
    kn_manual_seed(1);
    kn_tensor *w = kn_randn(KN_SHAPE(16, 8), KN_F32);
    int64_t live_after_first = -1;
    for (int step = 0; step < 200; step++) {
        kn_pool_push();
        kn_tensor *x = kn_randn(KN_SHAPE(4, 16), KN_F32);
        kn_tensor *h = kn_relu(kn_matmul(x, w));
        kn_tensor *loss = kn_mean(kn_mul(h, h), KN_ALL_DIMS, false);
        cr_assert(loss, "%s", kn_last_error());
        kn_tensor *upd = kn_sub(w, kn_mul_scalar(kn_sum(h, KN_ALL_DIMS, false), 1e-6));
        kn_tensor *nw = kn_keep(kn_contiguous(upd));
        kn_pool_pop();
        kn_release(w);
        w = nw;
        if (step == 0) live_after_first = kn_live_tensors();
        cr_assert_eq(kn_live_tensors(), live_after_first, "step %d: live tensors grew", step);
    }
    kn_release(w);
}

Test(pool, pop_without_push_is_an_error) {
    kn_clear_error();
    kn_pool_pop();
    cr_assert(kn_last_error());
    cr_assert(strstr(kn_last_error(), "kn_pool_pop"));
}
