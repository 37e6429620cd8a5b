/* kn_function overheads: the cost of a cache-hit call on tiny tensors above
 * running the same body eagerly, and a traced vs eager MLP train step. */
#include <kiln.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int add_body(void *ctx, kn_tensor *const *in, kn_tensor **out) {
    (void)ctx;
    out[0] = kn_add(in[0], in[1]);
    return out[0] ? 0 : -1;
}

typedef struct { kn_module *model; kn_optim *opt; } trainer;
static int train_step(void *ctx, kn_tensor *const *in, kn_tensor **out) {
    trainer *t = ctx;
    kn_tensor *loss = kn_cross_entropy(kn_forward(t->model, in[0]), in[1], KN_REDUCE_MEAN);
    kn_optim_zero_grad(t->opt);
    if (!loss || kn_backward(loss, NULL) != 0 || kn_optim_step(t->opt) != 0) return -1;
    out[0] = loss;
    return 0;
}

/* Best of 5 rounds of n calls, in seconds per call. */
static double per_call(kn_fn *f, kn_body body, void *ctx, kn_tensor **in, int n) {
    double best = 1e30;
    for (int r = 0; r < 5; r++) {
        double t0 = now();
        for (int i = 0; i < n; i++) {
            kn_pool_push();
            kn_tensor *out;
            if (f) kn_call(f, in, &out);
            else body(ctx, in, &out);
            kn_pool_pop();
        }
        double t = (now() - t0) / n;
        best = t < best ? t : best;
    }
    return best;
}

/* The chains on 16M floats: exp(relu(tanh(x*0.5+1)^2 - 0.25) * 3),
 * and 8 cheap arithmetic ops. */
static int ew_chain(void *ctx, kn_tensor *const *in, kn_tensor **out) {
    (void)ctx;
    kn_tensor *t = kn_tanh(kn_add_scalar(kn_mul_scalar(in[0], 0.5), 1));
    out[0] = kn_exp(kn_mul_scalar(kn_relu(kn_sub_scalar(kn_mul(t, t), 0.25)), 3));
    return out[0] ? 0 : -1;
}

static int ew_arith(void *ctx, kn_tensor *const *in, kn_tensor **out) {
    (void)ctx;
    kn_tensor *a = kn_sub(kn_add(kn_mul_scalar(in[0], 1.5), in[1]), in[0]);
    kn_tensor *b = kn_abs(kn_minimum(kn_maximum(a, in[1]), kn_scalar(2, KN_F32)));
    out[0] = kn_mul_scalar(kn_neg(b), 0.75);
    return out[0] ? 0 : -1;
}

static void bench_chain(const char *name, kn_body body, int ninputs, int reps) {
    int64_t n = 16 << 20;
    kn_tensor *in[2] = {kn_randn(KN_SHAPE(n), KN_F32), kn_randn(KN_SHAPE(n), KN_F32)};
    kn_fn *f = kn_function(name, body, NULL, ninputs, 1, NULL);
    double te = per_call(NULL, body, NULL, in, reps), tt = per_call(f, NULL, NULL, in, reps);
    /* the triad moves 12 bytes an element; a fused chain reads 4 per input and writes 4 */
    double bytes = 4.0 * (ninputs + 1) * (double)n;
    printf("%s on 16M f32: eager %.2f ms, traced (fused) %.2f ms, speedup %.2fx, %.1f GB/s, %.0f M elements/s per thread\n",
           name, te * 1e3, tt * 1e3, te / tt, bytes / tt * 1e-9, (double)n / tt * 1e-6 / kn_get_num_threads());
    printf("{\"bench\":\"%s\",\"eager_ms\":%.3f,\"traced_ms\":%.3f,\"speedup\":%.3f,\"gbs\":%.2f}\n", name,
           te * 1e3, tt * 1e3, te / tt, bytes / tt * 1e-9);
    kn_fn_free(f);
    kn_release(in[0]);
    kn_release(in[1]);
}

/* Row-wise ops on 4096x1024 f32 against the bandwidth bound (read once,
 * write once), measured by a C copy loop in the same process. */
static int softmax_body(void *ctx, kn_tensor *const *in, kn_tensor **out) {
    (void)ctx;
    out[0] = kn_softmax(in[0], -1);
    return out[0] ? 0 : -1;
}
static int layer_norm_body(void *ctx, kn_tensor *const *in, kn_tensor **out) {
    (void)ctx;
    out[0] = kn_layer_norm(in[0], 1, NULL, NULL, 1e-5);
    return out[0] ? 0 : -1;
}

/* Kiln's own thread pool (internal), so the baseline uses the same threads. */
void kn__parallel_for(int64_t n, int64_t grain, void (*fn)(void *, int64_t, int64_t), void *ctx);

typedef struct { float *src, *dst; int64_t n; } copy_ctx;
static void copy_range(void *p, int64_t b, int64_t e) {
    copy_ctx *c = p;
    for (int64_t i = b; i < e; i++) c->dst[i] = c->src[i] * 1.0001f;
}

static void bench_rows(void) {
    int64_t n = 4096 * 1024;
    kn_tensor *x = kn_randn(KN_SHAPE(4096, 1024), KN_F32), *y = kn_empty(KN_SHAPE(4096, 1024), KN_F32);
    copy_ctx cc = {kn_data(x), kn_data(y), n};
    double best = 1e30;
    for (int r = 0; r < 20; r++) {
        double t0 = now();
        kn__parallel_for(n, 1 << 16, copy_range, &cc);
        double t = now() - t0;
        best = t < best ? t : best;
    }
    double bound = 8.0 * (double)n / best;  /* bytes/s of a read-once write-once pass */
    const char *names[2] = {"softmax", "layer_norm"};
    kn_body bodies[2] = {softmax_body, layer_norm_body};
    for (int k = 0; k < 2; k++) {
        kn_fn *f = kn_function(names[k], bodies[k], NULL, 1, 1, NULL);
        double t = per_call(f, NULL, NULL, &x, 30);
        printf("%s 4096x1024 (traced): %.2f ms, %.1f GB/s = %.2f of the read+write bound (%.1f GB/s)\n", names[k],
               t * 1e3, 8.0 * (double)n / t * 1e-9, best / t, bound * 1e-9);
        printf("{\"bench\":\"%s_4096x1024\",\"ms\":%.3f,\"fraction_of_bound\":%.3f}\n", names[k], t * 1e3, best / t);
        kn_fn_free(f);
    }
    kn_release(x);
    kn_release(y);
}

int main(int argc, char **argv) {
    int n = argc > 1 && !strcmp(argv[1], "--quick") ? 20000 : 200000;
    kn_tensor *ab[2] = {kn_ones(KN_SHAPE(8), KN_F32), kn_ones(KN_SHAPE(8), KN_F32)};
    kn_fn *f = kn_function("add", add_body, NULL, 2, 1, NULL);
    double te = per_call(NULL, add_body, NULL, ab, n), tt = per_call(f, NULL, NULL, ab, n);
    printf("kn_call cache hit on 8 floats: %.0f ns per call, eager body %.0f ns: %.0f ns above the kernel "
           "(target < 1000 ns)\n", tt * 1e9, te * 1e9, (tt - te) * 1e9);
    printf("{\"bench\":\"fn_hit_add8\",\"call_ns\":%.1f,\"eager_ns\":%.1f,\"overhead_ns\":%.1f}\n", tt * 1e9,
           te * 1e9, (tt - te) * 1e9);
    kn_fn_free(f);

    for (int64_t batch = 64; batch <= 256; batch *= 4) {
        kn_manual_seed(0);
        trainer t = {kn_sequential_new(kn_linear_new(784, 128, true), kn_relu_new(), kn_linear_new(128, 10, true),
                                       NULL), NULL};
        kn_tensor *p[4];
        kn_parameters(t.model, p, NULL, 4);
        t.opt = kn_adam_new(p, 4, 1e-3, 0.9, 0.999, 1e-8, 0);
        kn_tensor *xy[2] = {kn_randn(KN_SHAPE(batch, 784), KN_F32),
                            kn_argmax(kn_randn(KN_SHAPE(batch, 10), KN_F32), 1, false)};
        kn_fn *step = kn_function("train_step", train_step, &t, 2, 1, NULL);
        int iters = n / 400;
        double se = per_call(NULL, train_step, &t, xy, iters), st = per_call(step, NULL, NULL, xy, iters);
        printf("mlp train step batch %lld: eager %.1f us, traced %.1f us, traced/eager %.2f\n", (long long)batch,
               se * 1e6, st * 1e6, st / se);
        printf("{\"bench\":\"fn_mlp_step_b%lld\",\"eager_us\":%.2f,\"traced_us\":%.2f,\"ratio\":%.3f}\n",
               (long long)batch, se * 1e6, st * 1e6, st / se);
        kn_fn_free(step);
        kn_optim_free(t.opt);
        kn_module_free(t.model);
        kn_release(xy[0]);
        kn_release(xy[1]);
    }
    kn_release(ab[0]);
    kn_release(ab[1]);
    bench_chain("ew_chain", ew_chain, 1, n / 20000 + 3);
    bench_chain("ew_arith", ew_arith, 2, n / 20000 + 3);
    bench_rows();
    return 0;
}
