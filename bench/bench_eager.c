/* Eager benchmarks. Every figure is a ratio to a reference timed in the same
 * process: a plain C loop or a direct oneDNN call. Usage: bench_eager [--quick] */
#include <kiln.h>
#include <oneapi/dnnl/dnnl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median seconds of `reps` runs of fn(ctx). */
static double time_median(void (*fn)(void *), void *ctx, int reps) {
    double t[64];
    if (reps > 64) reps = 64;
    fn(ctx);  /* warm-up */
    for (int i = 0; i < reps; i++) {
        double t0 = now();
        fn(ctx);
        t[i] = now() - t0;
    }
    qsort(t, (size_t)reps, sizeof *t, cmp_double);
    return t[reps / 2];
}

/* ---- dispatch: eager add of two 8-element tensors ---- */
typedef struct { kn_tensor *a, *b; int n; } disp_ctx;
static void disp_run(void *p) {
    disp_ctx *c = p;
    for (int i = 0; i < c->n; i++) kn_release(kn_add(c->a, c->b));
}

/* ---- bandwidth: 16M-element add vs a triad in C ---- */
typedef struct { float *x, *y, *z; int64_t n; int nthreads; } triad_ctx;
typedef struct { triad_ctx *c; int part; } triad_part;
#include <pthread.h>
static void *triad_thread(void *p) {
    triad_part *tp = p;
    triad_ctx *c = tp->c;
    int64_t b = c->n * tp->part / c->nthreads, e = c->n * (tp->part + 1) / c->nthreads;
    float *restrict z = c->z;
    const float *restrict x = c->x, *restrict y = c->y;
    for (int64_t i = b; i < e; i++) z[i] = x[i] + 3.0f * y[i];
    return NULL;
}
static void triad_run(void *p) {
    triad_ctx *c = p;
    pthread_t th[64];
    triad_part parts[64];
    for (int i = 0; i < c->nthreads; i++) {
        parts[i] = (triad_part){c, i};
        if (i) pthread_create(&th[i], NULL, triad_thread, &parts[i]);
    }
    triad_thread(&parts[0]);
    for (int i = 1; i < c->nthreads; i++) pthread_join(th[i], NULL);
}
typedef struct { kn_tensor *a, *b; } add_ctx;
static void add_run(void *p) {
    add_ctx *c = p;
    kn_release(kn_add(c->a, c->b));
}

/* ---- matmul vs dnnl_sgemm ---- */
typedef struct { kn_tensor *a, *b; int64_t m, n, k; float *c; } mm_ctx;
static void mm_kiln(void *p) {
    mm_ctx *c = p;
    kn_release(kn_matmul(c->a, c->b));
}
static void mm_dnnl(void *p) {
    mm_ctx *c = p;
    dnnl_sgemm('N', 'N', c->m, c->n, c->k, 1.0f, kn_data(c->a), c->k, kn_data(c->b), c->n, 0.0f,
               c->c, c->n);
}

static void bench_matmul(int64_t m, int64_t k, int64_t n, int reps) {
    mm_ctx c = {kn_randn(KN_SHAPE(m, k), KN_F32), kn_randn(KN_SHAPE(k, n), KN_F32), m, n, k,
                aligned_alloc(64, (size_t)(m * n * 4 + 63) / 64 * 64)};
    double tk = 0, td = 0;
    for (int round = 0; round < 3; round++) {  /* interleave to share noise */
        tk += time_median(mm_kiln, &c, reps);
        td += time_median(mm_dnnl, &c, reps);
    }
    double gflops = 2.0 * m * n * k / (tk / 3) * 1e-9;
    printf("matmul %lldx%lldx%lld: kiln %.1f GFLOP/s, dnnl_sgemm %.1f GFLOP/s, ratio %.2f\n",
           (long long)m, (long long)k, (long long)n, gflops, 2.0 * m * n * k / (td / 3) * 1e-9, td / tk);
    printf("{\"bench\":\"matmul_%lldx%lldx%lld\",\"kiln_s\":%.3e,\"dnnl_s\":%.3e,\"ratio\":%.3f}\n",
           (long long)m, (long long)k, (long long)n, tk / 3, td / 3, td / tk);
    kn_release(c.a);
    kn_release(c.b);
    free(c.c);
}

int main(int argc, char **argv) {
    bool quick = argc > 1 && !strcmp(argv[1], "--quick");
    int reps = quick ? 5 : 21;
    printf("threads: %d\n", kn_get_num_threads());

    disp_ctx d = {kn_ones(KN_SHAPE(8), KN_F32), kn_ones(KN_SHAPE(8), KN_F32), 100000};
    double td = time_median(disp_run, &d, quick ? 3 : 11) / d.n;
    printf("dispatch: eager add of 8 f32 = %.0f ns/op (target <= 300 ns)\n", td * 1e9);
    printf("{\"bench\":\"dispatch_add8\",\"ns_per_op\":%.1f}\n", td * 1e9);

    int64_t n = 16 << 20;
    kn_tensor *a = kn_randn(KN_SHAPE(n), KN_F32), *b = kn_randn(KN_SHAPE(n), KN_F32);
    triad_ctx tc = {kn_data(a), kn_data(b), aligned_alloc(64, (size_t)n * 4), n, kn_get_num_threads()};
    memset(tc.z, 0, (size_t)n * 4);
    add_ctx ac = {a, b};
    double tt = 0, ta = 0;
    for (int round = 0; round < 3; round++) {
        tt += time_median(triad_run, &tc, reps);
        ta += time_median(add_run, &ac, reps);
    }
    double bytes = 12.0 * (double)n;
    printf("bandwidth: triad %.1f GB/s, kn_add %.1f GB/s, ratio %.2f (target >= 0.70)\n",
           bytes / (tt / 3) * 1e-9, bytes / (ta / 3) * 1e-9, tt / ta);
    printf("{\"bench\":\"add_16M\",\"triad_gbs\":%.2f,\"add_gbs\":%.2f,\"ratio\":%.3f}\n",
           bytes / (tt / 3) * 1e-9, bytes / (ta / 3) * 1e-9, tt / ta);
    free(tc.z);

    bench_matmul(1024, 1024, 1024, quick ? 3 : 9);
    bench_matmul(64, 784, 128, reps);
    kn_release(a);
    kn_release(b);
    kn_release(d.a);
    kn_release(d.b);
    return 0;
}
