/* Eager MLP train step (784-128-10, cross-entropy, Adam): microseconds per
 * step at batch 64 and 256, and the share of the step spent in matmul,
 * from the same step's five matmuls timed alone in the same process. */
#include <kiln.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

typedef struct { kn_module *model; kn_optim *opt; kn_tensor *x, *y; } step_ctx;

static int step(step_ctx *c) {
    kn_pool_push();
    kn_tensor *loss = kn_cross_entropy(kn_forward(c->model, c->x), c->y, KN_REDUCE_MEAN);
    kn_optim_zero_grad(c->opt);
    int rc = !loss || kn_backward(loss, NULL) || kn_optim_step(c->opt);
    kn_pool_pop();
    return rc;
}

/* The step's matmuls: two forward linears, and the weight and hidden
 * gradients of backward (the input needs none). */
static void matmuls(kn_tensor *x, kn_tensor *h, kn_tensor *g2, kn_tensor *g1, kn_tensor *w1, kn_tensor *w2) {
    kn_pool_push();
    kn_linear(x, w1, NULL);
    kn_linear(h, w2, NULL);
    kn_matmul(g2, w2);
    kn_matmul(kn_transpose(g2, 0, 1), h);
    kn_matmul(kn_transpose(g1, 0, 1), x);
    kn_pool_pop();
}

static void run(int64_t batch, int iters) {
    kn_manual_seed(0);
    step_ctx c = {
        kn_sequential_new(kn_linear_new(784, 128, true), kn_relu_new(), kn_linear_new(128, 10, true), NULL),
        NULL, kn_randn(KN_SHAPE(batch, 784), KN_F32), NULL};
    c.y = kn_cast(kn_mul_scalar(kn_rand(KN_SHAPE(batch), KN_F32), 10), KN_I64);
    kn_tensor *p[4];
    kn_parameters(c.model, p, NULL, 4);
    c.opt = kn_adam_new(p, 4, 1e-3, 0.9, 0.999, 1e-8, 0);
    for (int i = 0; i < 20; i++) step(&c);
    double t0 = now();
    for (int i = 0; i < iters; i++)
        if (step(&c)) {
            fprintf(stderr, "step failed: %s\n", kn_last_error());
            exit(1);
        }
    double t_step = (now() - t0) / iters;

    kn_tensor *h = kn_randn(KN_SHAPE(batch, 128), KN_F32), *g2 = kn_randn(KN_SHAPE(batch, 10), KN_F32);
    kn_tensor *g1 = kn_randn(KN_SHAPE(batch, 128), KN_F32);
    kn_no_grad_begin();
    for (int i = 0; i < 20; i++) matmuls(c.x, h, g2, g1, p[0], p[2]);
    t0 = now();
    for (int i = 0; i < iters; i++) matmuls(c.x, h, g2, g1, p[0], p[2]);
    double t_mm = (now() - t0) / iters;
    kn_no_grad_end();
    printf("mlp train step, batch %lld: %.1f us/step, matmul share %.0f%%\n", (long long)batch,
           t_step * 1e6, 100 * t_mm / t_step);
    printf("{\"bench\":\"mlp_step_b%lld\",\"us_per_step\":%.2f,\"matmul_share\":%.3f}\n",
           (long long)batch, t_step * 1e6, t_mm / t_step);
    kn_release(h); kn_release(g1); kn_release(g2);
    kn_release(c.x); kn_release(c.y);
    kn_optim_free(c.opt);
    kn_module_free(c.model);
}

int main(int argc, char **argv) {
    int iters = argc > 1 && !strcmp(argv[1], "--quick") ? 100 : 1000;
    run(64, iters);
    run(256, iters / 2);
    return 0;
}
