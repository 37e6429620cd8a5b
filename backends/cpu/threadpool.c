/* Fork-join parallelism on the OpenMP team of libgomp, the runtime oneDNN
 * is built with. One team for both: two pools on two cores fought (each
 * spinning while the other worked), and a train step ran faster on one
 * thread than on two. We call libgomp's stable entry point GOMP_parallel
 * (what gcc emits for `#pragma omp parallel`) because clang's OpenMP
 * targets LLVM's libomp, a second runtime. Work below 2 * grain runs
 * inline, so small tensors never pay for threading. */
#include "../../core/internal.h"
#include <pthread.h>
#include <stdlib.h>

void GOMP_parallel(void (*fn)(void *), void *data, unsigned num_threads, unsigned flags);
int omp_get_thread_num(void);
int omp_get_num_threads(void);
int omp_get_max_threads(void);

static pthread_once_t once = PTHREAD_ONCE_INIT;
static int max_threads;   /* KN_NUM_THREADS, else OpenMP's default */
static _Atomic int nthreads;
static _Thread_local bool in_region;  /* nested calls run inline */

static void start(void) {
    const char *e = getenv("KN_NUM_THREADS");
    int n = e && atoi(e) > 0 ? atoi(e) : omp_get_max_threads();
    max_threads = n > 0 ? n : 1;
    nthreads = max_threads;
}

void kn_set_num_threads(int n) {
    pthread_once(&once, start);
    nthreads = n <= 0 || n > max_threads ? max_threads : n;
}

int kn_get_num_threads(void) {
    pthread_once(&once, start);
    return nthreads;
}

typedef struct {
    kn_range_fn fn;
    void *ctx;
    int64_t n;
    int chunks;
} job;

static void run_chunk(void *arg) {
    const job *j = arg;
    bool was = in_region;
    in_region = true;
    /* The team may be smaller than asked for (OMP_THREAD_LIMIT): every chunk still runs. */
    for (int c = omp_get_thread_num(); c < j->chunks; c += omp_get_num_threads()) {
        int64_t b = j->n * c / j->chunks, e = j->n * (c + 1) / j->chunks;
        if (b < e) j->fn(j->ctx, b, e);
    }
    in_region = was;
}

void kn__parallel_for(int64_t n, int64_t grain, kn_range_fn fn, void *ctx) {
    if (n <= 0) return;
    if (grain < 1) grain = 1;
    if (n < 2 * grain || in_region) {
        fn(ctx, 0, n);
        return;
    }
    int nt = kn_get_num_threads();
    int chunks = (int)(n / grain < nt ? n / grain : nt);
    if (chunks < 2) {
        fn(ctx, 0, n);
        return;
    }
    job j = {fn, ctx, n, chunks};
    GOMP_parallel(run_chunk, &j, (unsigned)chunks, 0);
}
