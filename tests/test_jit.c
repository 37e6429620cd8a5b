/* The CPU JIT (jit/): chain kernels are bitwise equal to the eager ops on
 * random and special values, vectorize without libm calls, compile once per
 * chain, reject bad chains with an error, and split into ranges freely. */
#include "../jit/jit.h"
#include "helpers.h"
#include <math.h>
#include <pthread.h>
#include <stdlib.h>

KN_SUITE(jit, KN_NO_SEED);

#define NOTNULL(t) cr_assert((t), "NULL: %s", kn_last_error() ? kn_last_error() : "(no error)")
#define IN(k) {.kind = KN_JIT_INPUT, .input = (k)}
#define C(v) {.kind = KN_JIT_CONST, .value = (v)}
#define OP1(o, x) {.kind = KN_JIT_OP, .op = KN_OP_##o, .a = (x)}
#define OP2(o, x, y) {.kind = KN_JIT_OP, .op = KN_OP_##o, .a = (x), .b = (y)}
#define N (1 << 20)

/* exp(relu(tanh(x*0.5+1)^2 - 0.25) * 3) */
static const kn_jit_step chain_a[] = {
    IN(0), C(0.5f), OP2(mul, 0, 1), C(1.0f), OP2(add, 2, 3), OP1(tanh, 4), OP2(mul, 5, 5),
    C(0.25f), OP2(sub, 6, 7), OP1(relu, 8), C(3.0f), OP2(mul, 9, 10), OP1(exp, 11),
};
static kn_tensor *eager_a(kn_tensor *x) {
    kn_tensor *t = kn_tanh(kn_add_scalar(kn_mul_scalar(x, 0.5), 1.0));
    return kn_exp(kn_mul_scalar(kn_relu(kn_sub_scalar(kn_mul(t, t), 0.25)), 3.0));
}

/* sqrt(min(max(((x + w) * 1.5 - w) / (|x| + 0.1), -w), 4)): ten ops, two inputs */
static const kn_jit_step chain_b[] = {
    IN(0), IN(1), OP2(add, 0, 1), C(1.5f), OP2(mul, 2, 3), OP2(sub, 4, 1), OP1(abs, 0),
    C(0.1f), OP2(add, 6, 7), OP2(div, 5, 8), OP1(neg, 1), OP2(maximum, 9, 10), C(4.0f),
    OP2(minimum, 11, 12), OP1(sqrt, 13),
};
static kn_tensor *eager_b(kn_tensor *x, kn_tensor *w) {
    kn_tensor *q = kn_div(kn_sub(kn_mul_scalar(kn_add(x, w), 1.5), w), kn_add_scalar(kn_abs(x), 0.1));
    return kn_sqrt(kn_minimum(kn_maximum(q, kn_neg(w)), kn_scalar(4.0, KN_F32)));
}

/* gelu(x) - log(sigmoid(w)) * x, the remaining formulas */
static const kn_jit_step chain_c[] = {
    IN(0), IN(1), OP1(gelu, 0), OP1(sigmoid, 1), OP1(log, 3), OP2(mul, 4, 0), OP2(sub, 2, 5),
};
static kn_tensor *eager_c(kn_tensor *x, kn_tensor *w) {
    return kn_sub(kn_gelu(x, KN_GELU_ERF), kn_mul(kn_log(kn_sigmoid(w)), x));
}

static uint64_t rng = 0x243f6a8885a308d3u;
static uint32_t rnd32(void) { /* splitmix64, high half */
    uint64_t z = (rng += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return (uint32_t)((z ^ (z >> 31)) >> 32);
}

/* Special values first, then thirds: uniform in [-12, 12], in [-1, 1], and
 * arbitrary bit patterns (every exponent, NaNs, infinities, denormals). */
static kn_tensor *test_values(void) {
    static const float special[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, -NAN, 1e-45f, -1e-45f,
                                    1e-40f, -1e-40f, 1.17549435e-38f, 3.4028235e38f, -3.4028235e38f,
                                    1.0f, -1.0f, 0.5f, -2.0f, 88.7f, -88.7f, 100.0f, -100.0f};
    kn_tensor *t = kn_empty(KN_SHAPE(N), KN_F32);
    float *p = kn_data(t);
    size_t ns = sizeof special / sizeof special[0];
    for (int64_t i = 0; i < N; i++) {
        uint32_t u = rnd32();
        float r = (float)u * 0x1p-32f;
        if ((size_t)i < ns) p[i] = special[i];
        else if (i % 3 == 0) p[i] = -12.0f + 24.0f * r;
        else if (i % 3 == 1) p[i] = -1.0f + 2.0f * r;
        else memcpy(&p[i], &u, sizeof u);
    }
    return t;
}

static kn_tensor *run_kernel(kn_jit_kernel k, kn_tensor *const *in, int nin, int64_t split) {
    kn_tensor *out = kn_empty(KN_SHAPE(N), KN_F32);
    void *args[4];
    for (int i = 0; i < nin; i++) args[i] = kn_data(in[i]);
    args[nin] = kn_data(out);
    kn__jit_run(k, args, 0, split);
    kn__jit_run(k, args, split, N);
    return out;
}

/* Bitwise equal; two NaNs count as equal whatever their payloads (the IEEE
 * standard does not fix which operand's payload an op propagates). */
static void assert_bitwise(const kn_tensor *got, const kn_tensor *want) {
    const uint32_t *g = kn_data(got), *w = kn_data(want);
    int64_t bad = 0, first = -1;
    for (int64_t i = 0; i < N; i++) {
        float gf, wf;
        memcpy(&gf, &g[i], 4);
        memcpy(&wf, &w[i], 4);
        if (g[i] != w[i] && !(isnan(gf) && isnan(wf)) && bad++ == 0) first = i;
    }
    cr_assert_eq(bad, 0, "%lld of %d differ, first at %lld: jit %08x eager %08x", (long long)bad, N,
                 (long long)first, first >= 0 ? g[first] : 0, first >= 0 ? w[first] : 0);
}

static void check_chain(const kn_jit_step *s, int n, int nin, kn_tensor *want, kn_tensor *const *in) {
    NOTNULL(want);
    kn_jit_kernel k = kn__jit_elementwise(s, n, nin);
    NOTNULL(k);
    assert_bitwise(run_kernel(k, in, nin, N), want);
}

Test(jit, chain_bitwise_equals_eager) {
    kn_tensor *x = test_values(), *w = test_values();
    check_chain(chain_a, 13, 1, eager_a(x), &x);
    check_chain(chain_b, 15, 2, eager_b(x, w), (kn_tensor *[]){x, w});
    check_chain(chain_c, 7, 2, eager_c(x, w), (kn_tensor *[]){x, w});
}

/* Every supported op alone, on both argument orders for binary ones. */
Test(jit, single_ops_bitwise_equal_eager) {
    kn_tensor *x = test_values(), *w = test_values();
    static const kn_op un[] = {KN_OP_exp, KN_OP_log, KN_OP_sqrt, KN_OP_rsqrt, KN_OP_tanh,
                               KN_OP_sigmoid, KN_OP_sin, KN_OP_cos, KN_OP_erf, KN_OP_gelu,
                               KN_OP_neg, KN_OP_abs, KN_OP_relu};
    kn_tensor *(*const ue[])(kn_tensor *) = {kn_exp, kn_log, kn_sqrt, kn_rsqrt, kn_tanh, kn_sigmoid,
                                             kn_sin, kn_cos, kn_erf, NULL, kn_neg, kn_abs, kn_relu};
    for (size_t i = 0; i < sizeof un / sizeof un[0]; i++) {
        kn_jit_step s[] = {IN(0), {.kind = KN_JIT_OP, .op = un[i], .a = 0}};
        check_chain(s, 2, 1, ue[i] ? ue[i](x) : kn_gelu(x, KN_GELU_ERF), &x);
    }
    static const kn_op bin[] = {KN_OP_add, KN_OP_sub, KN_OP_mul, KN_OP_div, KN_OP_pow,
                                KN_OP_maximum, KN_OP_minimum};
    kn_tensor *(*const be[])(kn_tensor *, kn_tensor *) = {kn_add, kn_sub, kn_mul, kn_div, kn_pow,
                                                          kn_maximum, kn_minimum};
    for (size_t i = 0; i < sizeof bin / sizeof bin[0]; i++) {
        kn_jit_step s[] = {IN(0), IN(1), {.kind = KN_JIT_OP, .op = bin[i], .a = 0, .b = 1}};
        check_chain(s, 3, 2, be[i](x, w), (kn_tensor *[]){x, w});
    }
}

/* The loop is vectorized and every formula inlined: the only calls left are
 * LLVM intrinsics (no libm, no formula functions). */
Test(jit, kernel_is_vectorized_without_calls) {
    NOTNULL(kn__jit_elementwise(chain_a, 13, 1));
    char *ir = kn__jit_last_ir();
    cr_assert(ir);
    cr_assert(strstr(ir, "<8 x float>") || strstr(ir, "<16 x float>"), "not vectorized:\n%s", ir);
    for (const char *p = strstr(ir, "call "); p; p = strstr(p + 1, "call ")) {
        const char *at = strchr(p, '@'), *eol = strchr(p, '\n');
        cr_assert(at && (!eol || at < eol) && !strncmp(at, "@llvm.", 6), "a call survives: %.80s", p);
    }
    cr_assert(!strstr(ir, "@expf") && !strstr(ir, "@logf") && !strstr(ir, "@tanhf"));
    free(ir);
}

Test(jit, same_chain_compiles_once) {
    kn_jit_step s[] = {IN(0), C(-7.25f), OP2(mul, 0, 1), OP1(sigmoid, 2)};
    uint64_t before = kn__jit_compile_count();
    kn_jit_kernel k1 = kn__jit_elementwise(s, 4, 1);
    NOTNULL(k1);
    cr_assert_eq(kn__jit_compile_count(), before + 1);
    s[1].input = 5; /* unused fields do not matter */
    s[3].b = 99;
    cr_assert_eq(kn__jit_elementwise(s, 4, 1), k1);
    cr_assert_eq(kn__jit_compile_count(), before + 1);
    s[1].value = -7.0f; /* a different constant is a different chain */
    kn_jit_kernel k2 = kn__jit_elementwise(s, 4, 1);
    NOTNULL(k2);
    cr_assert_neq(k2, k1);
    cr_assert_eq(kn__jit_compile_count(), before + 2);
}

Test(jit, invalid_chains_give_errors) {
    kn_jit_step later[] = {IN(0), OP2(add, 0, 2), OP1(exp, 0)};
    EXPECT_ERR(kn__jit_elementwise(later, 3, 1), "not an earlier step");
    kn_jit_step self[] = {IN(0), OP1(exp, 1)};
    EXPECT_ERR(kn__jit_elementwise(self, 2, 1), "not an earlier step");
    kn_jit_step input[] = {IN(1)};
    EXPECT_ERR(kn__jit_elementwise(input, 1, 1), "reads input 1 of 1");
    kn_jit_step reduce[] = {IN(0), OP1(sum, 0)};
    EXPECT_ERR(kn__jit_elementwise(reduce, 2, 1), "op sum is not");
    kn_jit_step cmp[] = {IN(0), OP2(eq, 0, 0)}; /* elementwise, but no float formula */
    EXPECT_ERR(kn__jit_elementwise(cmp, 2, 1), "op eq has no f32 formula");
    kn_jit_step clamp[] = {IN(0), OP1(clamp, 0)};
    EXPECT_ERR(kn__jit_elementwise(clamp, 2, 1), "op clamp has no f32 formula");
    kn_jit_step bad_op[] = {IN(0), {.kind = KN_JIT_OP, .op = (kn_op)9999, .a = 0}};
    EXPECT_ERR(kn__jit_elementwise(bad_op, 2, 1), "unknown op");
    kn_jit_step bad_kind[] = {{.kind = (kn_jit_kind)7}};
    EXPECT_ERR(kn__jit_elementwise(bad_kind, 1, 0), "unknown kind");
    EXPECT_ERR(kn__jit_elementwise(NULL, 3, 1), "1 to");
    EXPECT_ERR(kn__jit_elementwise(input, 0, 1), "1 to");
    EXPECT_ERR(kn__jit_elementwise(input, 1, -1), "inputs");
    /* The JIT still works after the failures. */
    kn_clear_error();
    NOTNULL(kn__jit_elementwise((kn_jit_step[]){IN(0), OP1(neg, 0)}, 2, 1));
}

Test(jit, split_ranges_give_the_same_result) {
    kn_tensor *x = test_values();
    kn_jit_kernel k = kn__jit_elementwise(chain_a, 13, 1);
    NOTNULL(k);
    kn_tensor *whole = run_kernel(k, &x, 1, N);
    assert_bitwise(run_kernel(k, &x, 1, N / 2), whole);
    assert_bitwise(run_kernel(k, &x, 1, 12345), whole); /* unaligned split, odd tails */
    /* empty and reversed ranges write nothing */
    kn_tensor *out = kn_zeros(KN_SHAPE(N), KN_F32);
    kn__jit_run(k, (void *[]){kn_data(x), kn_data(out)}, 5, 5);
    kn__jit_run(k, (void *[]){kn_data(x), kn_data(out)}, 9, 3);
    cr_assert_eq(((float *)kn_data(out))[5], 0.0f);
}

/* A chain of constants only (no inputs) fills the output. */
Test(jit, constant_chain) {
    kn_jit_kernel k = kn__jit_elementwise((kn_jit_step[]){C(2.0f), OP1(sqrt, 0)}, 2, 0);
    NOTNULL(k);
    float out[37];
    kn__jit_run(k, (void *[]){out}, 0, 37);
    for (int i = 0; i < 37; i++) cr_assert_eq(out[i], sqrtf(2.0f));
}

/* Threads asking for the same new chain at once get one compile. */
static void *compile_race(void *out) {
    kn_jit_step s[] = {IN(0), C(0.125f), OP2(pow, 0, 1), OP1(cos, 2)};
    *(kn_jit_kernel *)out = kn__jit_elementwise(s, 4, 1);
    return NULL;
}

Test(jit, concurrent_requests_compile_once) {
    uint64_t before = kn__jit_compile_count();
    pthread_t t[4];
    kn_jit_kernel k[4];
    for (int i = 0; i < 4; i++) cr_assert_eq(pthread_create(&t[i], NULL, compile_race, &k[i]), 0);
    for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
    for (int i = 0; i < 4; i++) cr_assert(k[i] && k[i] == k[0]);
    cr_assert_eq(kn__jit_compile_count(), before + 1);
}
