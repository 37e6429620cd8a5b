/* Philox streams: reproducible with a seed, never repeating between calls,
 * independent of the thread count, and with the right moments. */
#include "helpers.h"
#include <math.h>

KN_SUITE(random, KN_NO_SEED);

Test(random, seed_reproduces) {
    kn_manual_seed(42);
    kn_tensor *a = kn_randn(KN_SHAPE(1000), KN_F32);
    kn_tensor *b = kn_rand(KN_SHAPE(7), KN_F64);
    kn_manual_seed(42);
    assert_equal(kn_randn(KN_SHAPE(1000), KN_F32), a);
    assert_equal(kn_rand(KN_SHAPE(7), KN_F64), b);
}

Test(random, calls_do_not_repeat) {
    kn_manual_seed(7);
    kn_tensor *a = kn_rand(KN_SHAPE(64), KN_F32);
    kn_tensor *b = kn_rand(KN_SHAPE(64), KN_F32);
    int same = 0;
    for (int i = 0; i < 64; i++) same += at(a, i) == at(b, i);
    cr_assert_lt(same, 3);
}

Test(random, threads_do_not_change_values) {
    kn_manual_seed(3);
    kn_tensor *a = kn_randn(KN_SHAPE(1 << 18), KN_F32);
    kn_set_num_threads(1);
    kn_manual_seed(3);
    kn_tensor *b = kn_randn(KN_SHAPE(1 << 18), KN_F32);
    assert_equal(a, b);
}

Test(random, uniform_moments_and_range) {
    kn_manual_seed(11);
    int64_t n = 1 << 20;
    kn_tensor *u = kn_rand(KN_SHAPE(n), KN_F32);
    double s = 0, s2 = 0, lo = 1, hi = 0;
    for (int64_t i = 0; i < n; i++) {
        double v = at(u, i);
        s += v; s2 += v * v;
        lo = fmin(lo, v); hi = fmax(hi, v);
    }
    double mean = s / n, var = s2 / n - mean * mean;
    cr_assert(lo >= 0 && hi < 1, "range [%g, %g]", lo, hi);
    cr_assert(fabs(mean - 0.5) < 3e-3, "mean %g", mean);
    cr_assert(fabs(var - 1.0 / 12) < 2e-3, "var %g", var);
}

Test(random, normal_moments) {
    kn_manual_seed(12);
    int64_t n = 1 << 20;
    kn_tensor *z = kn_randn(KN_SHAPE(n), KN_F64);
    double s = 0, s2 = 0, s4 = 0;
    for (int64_t i = 0; i < n; i++) {
        double v = at(z, i);
        cr_assert(isfinite(v));
        s += v; s2 += v * v; s4 += v * v * v * v;
    }
    double mean = s / n, var = s2 / n;
    cr_assert(fabs(mean) < 5e-3, "mean %g", mean);
    cr_assert(fabs(var - 1) < 1e-2, "var %g", var);
    cr_assert(fabs(s4 / n - 3) < 0.05, "kurtosis %g", s4 / n);
}

Test(random, integer_dtype_is_an_error) {
    cr_assert_null(kn_rand(KN_SHAPE(2), KN_I32));
    cr_assert(strstr(kn_last_error(), "kn_rand"));
}
