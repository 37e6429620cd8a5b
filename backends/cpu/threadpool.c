/* A small fork-join pool: the caller runs chunk 0, workers the rest. Work
 * below 2 * grain runs inline, so small tensors never pay for threading. */
#include "../../core/internal.h"
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#define MAX_THREADS 64

static struct {
    pthread_once_t once;
    pthread_mutex_t run_lock;   /* one parallel region at a time */
    pthread_mutex_t lock;
    pthread_cond_t wake, done;
    int nworkers, nthreads;     /* started workers; threads used (incl. caller) */
    uint64_t generation;
    int pending;
    kn_range_fn fn;
    void *ctx;
    int64_t n;
    int nchunks;
} P = {.once = PTHREAD_ONCE_INIT, .run_lock = PTHREAD_MUTEX_INITIALIZER,
       .lock = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER,
       .done = PTHREAD_COND_INITIALIZER};

static _Thread_local bool in_region;  /* nested calls run inline */

static void run_chunk(int c) {
    int64_t b = P.n * c / P.nchunks, e = P.n * (c + 1) / P.nchunks;
    if (b < e) P.fn(P.ctx, b, e);
}

static void *worker(void *arg) {
    int id = (int)(intptr_t)arg;  /* chunk id: 1..nworkers */
    uint64_t seen = 0;
    in_region = true;
    pthread_mutex_lock(&P.lock);
    for (;;) {
        while (P.generation == seen) pthread_cond_wait(&P.wake, &P.lock);
        seen = P.generation;
        if (id >= P.nchunks) continue;
        pthread_mutex_unlock(&P.lock);
        run_chunk(id);
        pthread_mutex_lock(&P.lock);
        if (--P.pending == 0) pthread_cond_signal(&P.done);
    }
    return NULL;
}

static void start(void) {
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    const char *e = getenv("KN_NUM_THREADS");
    int n = e && atoi(e) > 0 ? atoi(e) : (int)(ncpu > 0 ? ncpu : 1);
    if (n > MAX_THREADS) n = MAX_THREADS;
    P.nthreads = n;
    for (int i = 1; i < n; i++) {
        pthread_t th;
        pthread_attr_t a;
        pthread_attr_init(&a);
        pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
        if (pthread_create(&th, &a, worker, (void *)(intptr_t)i) == 0) P.nworkers++;
        pthread_attr_destroy(&a);
    }
    if (P.nthreads > P.nworkers + 1) P.nthreads = P.nworkers + 1;
}

void kn_set_num_threads(int n) {
    pthread_once(&P.once, start);
    pthread_mutex_lock(&P.run_lock);
    P.nthreads = n <= 0 || n > P.nworkers + 1 ? P.nworkers + 1 : n;
    pthread_mutex_unlock(&P.run_lock);
}

int kn_get_num_threads(void) {
    pthread_once(&P.once, start);
    return P.nthreads;
}

void kn__parallel_for(int64_t n, int64_t grain, kn_range_fn fn, void *ctx) {
    if (n <= 0) return;
    if (grain < 1) grain = 1;
    if (n < 2 * grain || in_region) {
        fn(ctx, 0, n);
        return;
    }
    pthread_once(&P.once, start);
    int chunks = (int)(n / grain < P.nthreads ? n / grain : P.nthreads);
    if (chunks < 2) {
        fn(ctx, 0, n);
        return;
    }
    pthread_mutex_lock(&P.run_lock);
    pthread_mutex_lock(&P.lock);
    P.fn = fn;
    P.ctx = ctx;
    P.n = n;
    P.nchunks = chunks;
    P.pending = chunks - 1;
    P.generation++;
    pthread_cond_broadcast(&P.wake);
    pthread_mutex_unlock(&P.lock);
    in_region = true;
    run_chunk(0);
    in_region = false;
    pthread_mutex_lock(&P.lock);
    while (P.pending > 0) pthread_cond_wait(&P.done, &P.lock);
    pthread_mutex_unlock(&P.lock);
    pthread_mutex_unlock(&P.run_lock);
}
