/* The main demo: an MLP (784-128-10) trained on Fashion-MNIST with
 * cross-entropy and Adam, first eagerly, then with the whole train step
 * wrapped in one kn_fn, from the same seed. Both runs must reach the same
 * test accuracy (within 0.5 points), or the demo fails. */
#include <kiln.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    int epochs;
    int64_t batch;
    double lr;
    uint64_t seed;
    const char *data;
    bool json;
} options;

typedef struct { double test_accuracy, seconds_per_epoch, final_loss; int64_t traces; } result;

typedef struct { kn_module *model; kn_optim *opt; } step_ctx;

/* One training step: the same body runs eagerly or through kn_call. */
static int train_step(void *ctx, kn_tensor *const *in, kn_tensor **out) {
    step_ctx *s = ctx;
    kn_tensor *loss = kn_cross_entropy(kn_forward(s->model, in[0]), in[1], KN_REDUCE_MEAN);
    kn_optim_zero_grad(s->opt);
    if (!loss || kn_backward(loss, NULL) != 0 || kn_optim_step(s->opt) != 0) return -1;
    out[0] = loss;
    return 0;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Eager and traced runs do the same arithmetic in a different order at
 * most, so their accuracies may differ only by noise. */
#define MAX_ACCURACY_GAP 0.5 /* percentage points */

static const char usage[] =
    "usage: kiln demo [--epochs N] [--batch N] [--lr X] [--seed N] [--data DIR] [--json]\n"
    "Trains an MLP on Fashion-MNIST eagerly, then with the train step in a kn_fn, and compares\n"
    "time per epoch and test accuracy; fails if the accuracies differ by more than 0.5 points.\n"
    "  --epochs N   epochs per run (default 3)\n"
    "  --batch N    batch size (64)\n"
    "  --lr X       Adam learning rate (1e-3)\n"
    "  --seed N     seed of the initialization and the shuffling (0)\n"
    "  --data DIR   directory of the IDX files (" KN_FASHION_MNIST_DIR ")\n"
    "  --json       also print the results as one JSON line\n";

/* 0: run; 1: --help was shown; -1: bad arguments. */
static int parse(int argc, char **argv, options *o) {
    *o = (options){.epochs = 3, .batch = 64, .lr = 1e-3, .seed = 0, .data = NULL, .json = false};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--json")) { o->json = true; continue; }
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage, stdout);
            return 1;
        }
        if (!v) goto bad;
        if (!strcmp(a, "--epochs")) o->epochs = atoi(v);
        else if (!strcmp(a, "--batch")) o->batch = atoll(v);
        else if (!strcmp(a, "--lr")) o->lr = atof(v);
        else if (!strcmp(a, "--seed")) o->seed = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--data")) o->data = v;
        else goto bad;
        i++;
    }
    if (o->epochs > 0 && o->batch > 0 && o->lr > 0) return 0;
bad:
    fputs(usage, stderr);
    return -1;
}

static void progress(bool tty, const char *mode, int epoch, int epochs, int64_t step, int64_t steps, double rate,
                     double loss) {
    if (!tty) return;
    int width = 30, done = (int)(width * step / steps);
    char bar[64];
    for (int i = 0; i < width; i++) bar[i] = i < done ? '=' : i == done ? '>' : ' ';
    bar[width] = 0;
    printf("\r%s epoch %d/%d [%s] %lld/%lld  %6.0f steps/s  loss %.4f", mode, epoch, epochs, bar,
           (long long)step, (long long)steps, rate, loss);
    fflush(stdout);
}

/* Fraction of rows of x whose argmax logit equals y, in chunks, no grad. */
static double accuracy(kn_module *model, kn_tensor *x, kn_tensor *y) {
    int64_t n = kn_shape(x)[0], hits = 0;
    kn_no_grad_begin();
    for (int64_t i = 0; i < n; i += 1000) {
        kn_pool_push();
        int64_t e = i + 1000 < n ? i + 1000 : n;
        kn_tensor *pred = kn_argmax(kn_forward(model, kn_slice(x, 0, i, e, 1)), 1, false);
        kn_tensor *ok = kn_sum(kn_eq(pred, kn_slice(y, 0, i, e, 1)), KN_ALL_DIMS, false);
        hits += ok ? (int64_t)kn_item(ok) : 0;
        kn_pool_pop();
    }
    kn_no_grad_end();
    return (double)hits / (double)n;
}

static int train(const options *o, bool traced, kn_tensor *xtr, kn_tensor *ytr, kn_tensor *xte,
                 kn_tensor *yte, result *r) {
    bool tty = isatty(STDOUT_FILENO) && !o->json;
    kn_manual_seed(o->seed);
    kn_module *model = kn_sequential_new(kn_linear_new(784, 128, true), kn_relu_new(),
                                         kn_linear_new(128, 10, true), NULL);
    kn_tensor *params[8];
    int np = kn_parameters(model, params, NULL, 8);
    kn_optim *opt = kn_adam_new(params, np, o->lr, 0.9, 0.999, 1e-8, 0);
    kn_loader *loader = kn_loader_new(xtr, ytr, o->batch, true, false, o->seed);
    step_ctx sc = {model, opt};
    kn_fn *step = kn_function("train_step", train_step, &sc, 2, 1, NULL);
    if (!model || !opt || !loader || !step) return -1;
    int64_t steps = kn_loader_batches(loader);
    double t_train = 0, running = NAN;
    for (int epoch = 1; epoch <= o->epochs; epoch++) {
        double t0 = now(), last_draw = 0;
        for (int64_t s = 1;; s++) {
            kn_pool_push();  /* one pool per step: memory stays flat */
            kn_tensor *xb, *yb;
            if (!kn_loader_next(loader, &xb, &yb)) {
                kn_pool_pop();
                break;
            }
            kn_tensor *loss;
            int rc = traced ? kn_call(step, (kn_tensor *[]){xb, yb}, &loss)
                            : train_step(&sc, (kn_tensor *[]){xb, yb}, &loss);
            if (rc != 0) {
                kn_pool_pop();
                return -1;
            }
            double l = kn_item(loss);
            running = isnan(running) ? l : 0.98 * running + 0.02 * l;
            kn_pool_pop();
            double t = now();
            if (t - last_draw > 0.1 || s == steps) {
                progress(tty, traced ? "traced" : "eager ", epoch, o->epochs, s, steps, (double)s / (t - t0), running);
                last_draw = t;
            }
        }
        double dt = now() - t0;
        t_train += dt;
        kn_loader_reset(loader);
        if (tty) printf("\r\033[K");  /* the summary line below replaces the bar */
        printf("%s epoch %d/%d: loss %.4f, %.2f s, %.0f steps/s\n", traced ? "traced" : "eager ", epoch,
               o->epochs, running, dt, (double)steps / dt);
    }
    kn_train(model, false);
    r->test_accuracy = accuracy(model, xte, yte);
    r->seconds_per_epoch = t_train / o->epochs;
    r->final_loss = running;
    r->traces = kn_fn_stats(step).traces;
    kn_fn_free(step);
    kn_loader_free(loader);
    kn_optim_free(opt);
    kn_module_free(model);
    return 0;
}

int kn_demo_main(int argc, char **argv) {
    options o;
    int p = parse(argc, argv, &o);
    if (p != 0) return p > 0 ? 0 : 2;
    kn_tensor *xtr, *ytr, *xte, *yte;
    if (kn_fashion_mnist(o.data, true, &xtr, &ytr) != 0 || kn_fashion_mnist(o.data, false, &xte, &yte) != 0) {
        fprintf(stderr, "kiln demo: %s\n", kn_last_error());
        return 1;
    }
    /* Fashion-MNIST's pixel mean and standard deviation. */
    kn_tensor *xtr_n = kn_normalize(xtr, 0.2860, 0.3530), *xte_n = kn_normalize(xte, 0.2860, 0.3530);
    printf("Fashion-MNIST: %lld training and %lld test images; MLP 784-128-10, Adam lr %g, batch %lld, "
           "%d threads\n", (long long)kn_shape(xtr)[0], (long long)kn_shape(xte)[0], o.lr,
           (long long)o.batch, kn_get_num_threads());
    result eager, traced;
    if (train(&o, false, xtr_n, ytr, xte_n, yte, &eager) != 0 ||
        train(&o, true, xtr_n, ytr, xte_n, yte, &traced) != 0) {
        fprintf(stderr, "kiln demo: %s\n", kn_last_error());
        return 1;
    }
    /* Seconds per epoch count the training loop only; the traced run's first
     * epoch includes tracing and compiling the step. */
    double speedup = eager.seconds_per_epoch / traced.seconds_per_epoch;
    double gap = 100 * fabs(traced.test_accuracy - eager.test_accuracy);
    bool same = gap <= MAX_ACCURACY_GAP;
    printf("\n%-8s %14s %16s %12s %8s\n", "", "test accuracy", "seconds/epoch", "final loss", "speedup");
    printf("%-8s %13.2f%% %16.3f %12.4f %7.2fx\n", "eager", 100 * eager.test_accuracy,
           eager.seconds_per_epoch, eager.final_loss, 1.0);
    printf("%-8s %13.2f%% %16.3f %12.4f %7.2fx   (%lld traces)\n", "traced", 100 * traced.test_accuracy,
           traced.seconds_per_epoch, traced.final_loss, speedup, (long long)traced.traces);
    printf("accuracy gap: %.2f points (at most %.1f allowed): %s\n", gap, MAX_ACCURACY_GAP,
           same ? "ok" : "FAILED");
    if (o.json)
        printf("{\"eager\": {\"test_accuracy\": %.4f, \"seconds_per_epoch\": %.3f, \"final_loss\": %.4f}, "
               "\"traced\": {\"test_accuracy\": %.4f, \"seconds_per_epoch\": %.3f, \"final_loss\": %.4f, "
               "\"speedup\": %.3f}, \"accuracy_gap_points\": %.3f, \"ok\": %s}\n",
               eager.test_accuracy, eager.seconds_per_epoch, eager.final_loss, traced.test_accuracy,
               traced.seconds_per_epoch, traced.final_loss, speedup, gap, same ? "true" : "false");
    kn_release(xtr); kn_release(ytr); kn_release(xte); kn_release(yte);
    kn_release(xtr_n); kn_release(xte_n);
    if (!same) {
        fprintf(stderr, "kiln demo: eager and traced test accuracies differ by %.2f points (more than %.1f)\n", gap,
                MAX_ACCURACY_GAP);
        return 1;
    }
    return 0;
}
