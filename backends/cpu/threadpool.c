/* A small fork-join pool: the caller runs chunk 0, workers the rest. Work
 * below 2 * grain runs inline, so small tensors never pay for threading.
 * Workers spin briefly before sleeping: a training step issues hundreds of
 * parallel ops back to back, and a futex wake per op cost more than the ops. */
#include "../../core/internal.h"
#include <immintrin.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <unistd.h>

#define MAX_THREADS 64
#define SPIN_ROUNDS 20000  /* about 50-100 us of pause instructions */

static struct {
    pthread_once_t once;
    pthread_mutex_t run_lock;   /* one parallel region at a time */
    pthread_mutex_t lock;       /* guards sleeping and the condvar */
    pthread_cond_t wake;
    int nworkers, nthreads;     /* started workers; threads used (incl. caller) */
    atomic_ulong generation;    /* bumped once per parallel region */
    atomic_int pending;         /* chunks not yet finished by workers */
    atomic_int sleepers;
    kn_range_fn fn;
    void *ctx;
    int64_t n;
    int nchunks;
} P = {.once = PTHREAD_ONCE_INIT, .run_lock = PTHREAD_MUTEX_INITIALIZER,
       .lock = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER};

static _Thread_local bool in_region;  /* nested calls run inline */

static void run_chunk(int c) {
    int64_t b = P.n * c / P.nchunks, e = P.n * (c + 1) / P.nchunks;
    if (b < e) P.fn(P.ctx, b, e);
}

/* Waits until the generation moves past seen: spin first, then sleep. */
static unsigned long await_generation(unsigned long seen) {
    for (int i = 0; i < SPIN_ROUNDS; i++) {
        unsigned long g = atomic_load_explicit(&P.generation, memory_order_acquire);
        if (g != seen) return g;
        _mm_pause();
    }
    pthread_mutex_lock(&P.lock);
    atomic_fetch_add(&P.sleepers, 1);
    unsigned long g;
    while ((g = atomic_load_explicit(&P.generation, memory_order_acquire)) == seen)
        pthread_cond_wait(&P.wake, &P.lock);
    atomic_fetch_sub(&P.sleepers, 1);
    pthread_mutex_unlock(&P.lock);
    return g;
}

static void *worker(void *arg) {
    int id = (int)(intptr_t)arg;  /* chunk id: 1..nworkers */
    unsigned long seen = 0;
    in_region = true;
    for (;;) {
        seen = await_generation(seen);
        if (id >= P.nchunks) continue;
        run_chunk(id);
        atomic_fetch_sub_explicit(&P.pending, 1, memory_order_release);
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
    P.fn = fn;
    P.ctx = ctx;
    P.n = n;
    P.nchunks = chunks;
    atomic_store(&P.pending, chunks - 1);
    atomic_fetch_add_explicit(&P.generation, 1, memory_order_release);
    if (atomic_load(&P.sleepers) > 0) {
        pthread_mutex_lock(&P.lock);
        pthread_cond_broadcast(&P.wake);
        pthread_mutex_unlock(&P.lock);
    }
    in_region = true;
    run_chunk(0);
    in_region = false;
    /* Spin briefly, then yield: on an oversubscribed machine the workers may
     * need this core to finish. */
    for (int i = 0; atomic_load_explicit(&P.pending, memory_order_acquire) > 0; i++) {
        if (i < SPIN_ROUNDS) _mm_pause();
        else sched_yield();
    }
    pthread_mutex_unlock(&P.run_lock);
}
