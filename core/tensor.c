/* Tensors and storage: allocation, refcounts, pools, views, inspection. */
#include "autograd.h"
#include "../trace/trace.h"
#include <math.h>
#include <pthread.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

static atomic_llong live_tensors;

int64_t kn_live_tensors(void) { return atomic_load(&live_tensors); }

int64_t kn__numel(const int64_t *shape, int ndim) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    return n;
}

void kn__contig_strides(const int64_t *shape, int ndim, int64_t *strides) {
    int64_t s = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        strides[i] = s;
        s *= shape[i] > 0 ? shape[i] : 1;
    }
}

int kn__dim(const char *op, int dim, int ndim) {
    int n = ndim > 0 ? ndim : 1;  /* a 0-dim tensor accepts dim 0 and -1 */
    if (dim < -n || dim >= n) {
        kn__error("%s: dim %d out of range for a %d-dim tensor (expected %d..%d)",
                  op, dim, ndim, -n, n - 1);
        return -1;
    }
    return dim < 0 ? dim + n : dim;
}

/* ---- pools: a thread-local stack of reference lists ----
 * Each entry is one reference that kn_pool_pop releases; a tensor returned
 * twice (kn__ret) has two entries. t->pool_level is the depth of its latest
 * entry, so a release to zero can forget its entries. */
typedef struct { kn_tensor **items; int64_t n, cap; } pool;
#define MAX_POOLS 64
static _Thread_local pool pools[MAX_POOLS];
static _Thread_local int pool_depth;
#define POOL_KEEP 1024  /* entries of a list kept when the pools empty */
static void pools_trim(size_t keep);
static void thread_register(void);

static void pool_add(kn_tensor *t) {
    if (pool_depth == 0) return;
    pool *p = &pools[pool_depth - 1];
    if (p->n == p->cap) {
        int64_t cap = p->cap ? p->cap * 2 : 256;
        kn_tensor **items = realloc(p->items, (size_t)cap * sizeof *items);
        if (!items) return;  /* untracked: the reference leaks, nothing crashes */
        thread_register();
        p->items = items;
        p->cap = cap;
    }
    t->pool_level = pool_depth;
    p->items[p->n++] = t;
}

/* Removes the latest pool entry for t; false if it has none. */
static bool pool_remove(kn_tensor *t) {
    for (int d = pool_depth - 1; d >= 0; d--) {
        pool *p = &pools[d];
        for (int64_t i = p->n - 1; i >= 0; i--) {
            if (p->items[i] != t) continue;
            p->items[i] = NULL;
            while (p->n > 0 && !p->items[p->n - 1]) p->n--;
            return true;
        }
    }
    return false;
}

void kn_pool_push(void) {
    if (pool_depth == MAX_POOLS) {
        kn__error("kn_pool_push: more than %d nested pools", MAX_POOLS);
        return;
    }
    pools[pool_depth++].n = 0;
}

void kn_pool_pop(void) {
    if (pool_depth == 0) {
        kn__error("kn_pool_pop: no pool to pop");
        return;
    }
    pool *p = &pools[pool_depth - 1];
    /* Release in reverse creation order. */
    while (p->n > 0) {
        kn_tensor *t = p->items[--p->n];
        if (!t) continue;
        if (t->pool_level == pool_depth) t->pool_level = 0;
        kn_release(t);
    }
    pool_depth--;
    if (pool_depth == 0) pools_trim(POOL_KEEP);
}

/* Frees the reference lists of empty pools longer than keep entries; the
 * others stay for the next push (thread_exit frees them). */
static void pools_trim(size_t keep) {
    for (int i = pool_depth; i < MAX_POOLS; i++)
        if (pools[i].items && (size_t)pools[i].cap > keep) {
            free(pools[i].items);
            pools[i] = (pool){0};
        }
}

kn_tensor *kn_keep(kn_tensor *t) {
    KN_CHECK("kn_keep", t);
    pool_remove(t);
    return t;
}

kn_tensor *kn__ret(kn_tensor *t) {
    kn_retain(t);
    pool_add(t);
    return t;
}

void kn__scope_begin(void) { kn_pool_push(); }

kn_tensor *kn__scope_end(kn_tensor *result) {
    if (result) pool_remove(result);
    kn_pool_pop();
    if (result) pool_add(result);
    return result;
}

void kn__drop(kn_tensor *t) {
    if (!t) return;
    pool_remove(t);
    kn_release(t);
}

/* ---- storage and tensor objects ---- */
/* Counters of this thread (kn__sys_allocs and friends, for tests). */
static _Thread_local uint64_t sys_allocs, tensor_mallocs, cache_locks;
uint64_t kn__sys_allocs(void) { return sys_allocs; }
uint64_t kn__tensor_mallocs(void) { return tensor_mallocs; }
uint64_t kn__cache_locks(void) { return cache_locks; }

/* Memory the allocator keeps for reuse (arena slots and bins, cached blocks
 * and tensor structs) is poisoned under ASan, so a use after release is still reported. */
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define KN_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(KN_ASAN)
#include <sanitizer/asan_interface.h>
#define POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define POISON(p, n) ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

static size_t round_up(size_t n) { return (n + KN_ALIGN - 1) & ~(size_t)(KN_ALIGN - 1); }

/* Large blocks are kept in a small cache when freed: a fresh large
 * allocation is mmap'ed and page-faults on first touch, which halved the
 * bandwidth of an eager op over 16M floats and dominated an MLP train step.
 * Small blocks go back to malloc. */
#define CACHE_MIN ((size_t)1 << 16)
#define CACHE_SLOTS 64
#define CACHE_MAX_BYTES ((size_t)1 << 30)
static struct {
    pthread_mutex_t lock;
    kn_storage *slot[CACHE_SLOTS];
    size_t bytes;
} cache = {.lock = PTHREAD_MUTEX_INITIALIZER};

/* A storage's header takes the first bytes of its own block. */
#define STORAGE_HEAD round_up(sizeof(kn_storage))

/* Best-fit cached block of at least total bytes and at most twice that. */
static kn_storage *cache_take(size_t total) {
    if (total < CACHE_MIN) return NULL;
    pthread_mutex_lock(&cache.lock);
    cache_locks++;
    int best = -1;
    for (int i = 0; i < CACHE_SLOTS; i++) {
        kn_storage *c = cache.slot[i];
        if (c && c->capacity >= total && c->capacity <= 2 * total &&
            (best < 0 || c->capacity < cache.slot[best]->capacity))
            best = i;
    }
    kn_storage *s = NULL;
    if (best >= 0) {
        s = cache.slot[best];
        cache.slot[best] = NULL;
        cache.bytes -= s->capacity;
    }
    pthread_mutex_unlock(&cache.lock);
    if (s) UNPOISON((char *)s + STORAGE_HEAD, s->capacity - STORAGE_HEAD);
    return s;
}

/* A kept block is poisoned (it may come poisoned already: an arena's bin). */
static bool cache_put(kn_storage *s) {
    if (s->capacity < CACHE_MIN) return false;
    POISON((char *)s + STORAGE_HEAD, s->capacity - STORAGE_HEAD);
    bool kept = false;
    pthread_mutex_lock(&cache.lock);
    cache_locks++;
    for (int i = 0; i < CACHE_SLOTS && !kept && cache.bytes + s->capacity <= CACHE_MAX_BYTES; i++)
        if (!cache.slot[i]) {
            cache.slot[i] = s;
            cache.bytes += s->capacity;
            kept = true;
        }
    pthread_mutex_unlock(&cache.lock);
    return kept;
}

/* Bytes of tensor data allocated (cached blocks not counted), and the peak. */
static _Atomic int64_t mem_in_use, mem_peak;

void kn_memory_stats(int64_t *in_use, int64_t *peak) {
    if (in_use) *in_use = atomic_load(&mem_in_use);
    if (peak) *peak = atomic_load(&mem_peak);
}

void kn_memory_reset_peak(void) { atomic_store(&mem_peak, atomic_load(&mem_in_use)); }

static void mem_add(int64_t n) {
    int64_t now = atomic_fetch_add(&mem_in_use, n) + n, p = atomic_load(&mem_peak);
    while (now > p && !atomic_compare_exchange_weak(&mem_peak, &p, now)) {}
}

static void storage_free(kn_storage *s) {
    if (!cache_put(s)) free(s);
}

/* ---- plan arenas (see core/internal.h) ----
 * A block holds one storage header per allocation of the layout and the
 * planned bytes. Slot storages point into it and each holds a reference to
 * it, so a storage that outlives its run (or its plan) keeps it alive. */
_Thread_local kn_arena *kn__arena_active;
static atomic_ullong run_serial;

#define SLOT_FREE (-1)  /* refcount of a header no storage uses */
#define BIN_SLOTS 16

typedef struct kn_arena_block {
    atomic_long refs;   /* the arena's, while it still hands slots out, + one per live slot storage */
    kn_storage *hdr;    /* per allocation index of the layout */
    char *data;
    size_t bytes;
} arena_block;

/* One allocation of a run: its bytes, and how many allocations the run had
 * made when it was released (-1: it outlived the run). */
typedef struct { size_t bytes; int32_t freed; } arena_event;

struct kn_arena {
    uint64_t run;        /* serial of the current run: storages carry it to log their release */
    /* the layout, planned from one run's log */
    int n;               /* allocations of that run */
    int64_t *off;        /* per allocation: offset of its slot, -1 if it is not a slot */
    size_t *cap;         /* per allocation: bytes of its slot */
    int *ovl_at, *ovl;   /* slots whose bytes overlap slot i: ovl[ovl_at[i] .. ovl_at[i + 1]) */
    size_t bytes;        /* the block's size: planned peak */
    arena_block *block;  /* NULL until a run needs one */
    /* the current run */
    arena_event *log;
    int nlog, caplog;
    bool deviated;       /* a request broke the layout: re-plan from this run */
    bool lost;           /* the log is incomplete (out of memory): no slots, no re-plan */
    kn_storage *bin[BIN_SLOTS]; /* own blocks released during the run, for its later fallbacks */
    int nbin;
    void *scratch;
    size_t scratch_bytes;
};

kn_arena *kn__arena_new(void) { return calloc(1, sizeof(kn_arena)); }

int64_t kn__arena_bytes(const kn_arena *a) { return a ? (int64_t)a->bytes : 0; }

void *kn__arena_scratch(kn_arena *a, size_t bytes) {
    if (bytes > a->scratch_bytes) {
        void *p = realloc(a->scratch, bytes);
        if (!p) return NULL;
        a->scratch = p;
        a->scratch_bytes = bytes;
    }
    memset(a->scratch, 0, bytes);
    return a->scratch;
}

static void block_release(arena_block *b) {
    if (atomic_fetch_sub(&b->refs, 1) != 1) return;
    UNPOISON(b->data, b->bytes);
    free(b);
}

static arena_block *block_new(const kn_arena *a) {
    size_t head = round_up(sizeof(arena_block)), hdrs = round_up((size_t)a->n * sizeof(kn_storage));
    char *p = aligned_alloc(KN_ALIGN, head + hdrs + a->bytes);
    if (!p) return NULL;
    sys_allocs++;
    arena_block *b = (arena_block *)p;
    atomic_init(&b->refs, 1);
    b->hdr = (kn_storage *)(p + head);
    b->data = p + head + hdrs;
    b->bytes = a->bytes;
    for (int i = 0; i < a->n; i++) atomic_init(&b->hdr[i].refcount, SLOT_FREE);
    POISON(b->data, b->bytes);
    return b;
}

/* The slot of this run's next allocation, if the layout has one that fits
 * and no live storage uses any of its bytes; NULL otherwise. */
static kn_storage *arena_take(kn_arena *a, size_t nbytes) {
    int k = a->nlog;
    if (a->lost) return NULL;
    if (k >= a->n) {  /* more allocations than the layout's run made */
        a->deviated = true;
        return NULL;
    }
    arena_block *b = a->block;
    if (a->off[k] < 0 || !b) return NULL;
    bool free_now = nbytes <= a->cap[k] && atomic_load(&b->hdr[k].refcount) == SLOT_FREE;
    for (int i = a->ovl_at[k]; free_now && i < a->ovl_at[k + 1]; i++)
        free_now = atomic_load(&b->hdr[a->ovl[i]].refcount) == SLOT_FREE;
    if (!free_now) {  /* sizes or lifetimes changed: this allocation falls back */
        a->deviated = true;
        return NULL;
    }
    kn_storage *s = &b->hdr[k];
    s->capacity = 0;
    s->data = b->data + a->off[k];
    s->arena_block = b;
    atomic_fetch_add(&b->refs, 1);
    UNPOISON(s->data, nbytes);
    return s;
}

/* Keeps a block released during the run for a later fallback of the run. */
static bool bin_put(kn_arena *a, kn_storage *s) {
    if (a->nbin == BIN_SLOTS) return false;
    POISON((char *)s + STORAGE_HEAD, s->capacity - STORAGE_HEAD);
    a->bin[a->nbin++] = s;
    return true;
}

/* Best fit of the bin for a block of total bytes (at most twice that). */
static kn_storage *bin_take(kn_arena *a, size_t total) {
    int best = -1;
    for (int i = 0; i < a->nbin; i++) {
        size_t c = a->bin[i]->capacity;
        if (c >= total && c <= 2 * total && (best < 0 || c < a->bin[best]->capacity)) best = i;
    }
    if (best < 0) return NULL;
    kn_storage *s = a->bin[best];
    a->bin[best] = a->bin[--a->nbin];
    UNPOISON((char *)s + STORAGE_HEAD, s->capacity - STORAGE_HEAD);
    return s;
}

static bool log_push(kn_arena *a, size_t nbytes) {
    if (a->nlog == a->caplog) {
        int cap = a->caplog ? a->caplog * 2 : 64;
        arena_event *l = realloc(a->log, (size_t)cap * sizeof *l);
        if (!l) return false;
        a->log = l;
        a->caplog = cap;
    }
    a->log[a->nlog++] = (arena_event){nbytes, -1};
    return true;
}

kn_arena *kn__arena_enter(kn_arena *a) {
    kn_arena *prev = kn__arena_active;
    a->run = atomic_fetch_add(&run_serial, 1) + 1;
    a->nlog = 0;
    a->deviated = a->lost = false;
    /* A storage of an earlier run still uses the block (an output kept a
     * view, a kn_cond took the other branch): this run gets a fresh block,
     * and the old one goes with its last storage. */
    if (a->block && atomic_load(&a->block->refs) > 1) {
        block_release(a->block);
        a->block = NULL;
    }
    if (!a->block && a->bytes > 0) a->block = block_new(a);
    kn__arena_active = a;
    return prev;
}

typedef struct { size_t cap; int i; } by_size;
static int larger_first(const void *x, const void *y) {
    const by_size *a = x, *b = y;
    return a->cap != b->cap ? (a->cap < b->cap ? 1 : -1) : a->i - b->i;
}

static void layout_free(kn_arena *a) {
    free(a->off);
    free(a->cap);
    free(a->ovl_at);
    free(a->ovl);
    a->off = NULL;
    a->cap = NULL;
    a->ovl_at = a->ovl = NULL;
    a->n = 0;
    a->bytes = 0;
    if (a->block) block_release(a->block);
    a->block = NULL;
}

/* Lays out the allocations the last run released before it ended, largest
 * first, each at the lowest offset clear of every slot whose lifetime
 * overlaps its own, so values that are never alive together share bytes.
 * Then lists, per slot, the slots whose bytes overlap it (arena_take checks
 * that they are all released). */
static void arena_plan(kn_arena *a) {
    layout_free(a);
    int n = a->nlog, m = 0;
    const arena_event *l = a->log;
    a->off = malloc((size_t)(n + 1) * sizeof *a->off);
    a->cap = malloc((size_t)(n + 1) * sizeof *a->cap);
    a->ovl_at = calloc((size_t)n + 1, sizeof *a->ovl_at);
    by_size *order = malloc((size_t)(n + 1) * sizeof *order);
    int *placed = malloc((size_t)(n + 1) * sizeof *placed);  /* slots placed so far, by offset */
    int *fill = malloc((size_t)(n + 1) * sizeof *fill);
    if (!a->off || !a->cap || !a->ovl_at || !order || !placed || !fill) goto fail;
    for (int i = 0; i < n; i++) {
        a->cap[i] = round_up(l[i].bytes ? l[i].bytes : 1);
        a->off[i] = -1;
        if (l[i].freed >= 0) order[m++] = (by_size){a->cap[i], i};
    }
    qsort(order, (size_t)m, sizeof *order, larger_first);
    size_t total = 0;
    for (int s = 0; s < m; s++) {
        int i = order[s].i;
        size_t off = 0;
        for (int p = 0; p < s; p++) {
            int j = placed[p];
            if (!(i < l[j].freed && j < l[i].freed)) continue;  /* never alive together */
            if ((size_t)a->off[j] >= off + a->cap[i]) break;     /* fits in the gap before j */
            if ((size_t)a->off[j] + a->cap[j] > off) off = (size_t)a->off[j] + a->cap[j];
        }
        a->off[i] = (int64_t)off;
        int at = s;
        while (at > 0 && a->off[placed[at - 1]] > a->off[i]) at--;
        memmove(placed + at + 1, placed + at, (size_t)(s - at) * sizeof *placed);
        placed[at] = i;
        total = off + a->cap[i] > total ? off + a->cap[i] : total;
    }
    /* Slots sorted by offset: the ones overlapping placed[p] follow it until
     * one starts at or past its end. Counted, then listed. */
    for (int pass = 0; pass < 2; pass++) {
        for (int p = 0; p < m; p++) {
            int i = placed[p];
            size_t end = (size_t)a->off[i] + a->cap[i];
            for (int q = p + 1; q < m && (size_t)a->off[placed[q]] < end; q++) {
                int j = placed[q];
                if (pass == 0) {
                    a->ovl_at[i + 1]++;
                    a->ovl_at[j + 1]++;
                } else {
                    a->ovl[fill[i]++] = j;
                    a->ovl[fill[j]++] = i;
                }
            }
        }
        if (pass == 1) break;
        for (int i = 0; i < n; i++) a->ovl_at[i + 1] += a->ovl_at[i];
        memcpy(fill, a->ovl_at, (size_t)n * sizeof *fill);
        if (!(a->ovl = malloc((size_t)(a->ovl_at[n] + 1) * sizeof *a->ovl))) goto fail;
    }
    a->n = n;
    a->bytes = total;
    free(order);
    free(placed);
    free(fill);
    return;
fail:
    free(order);
    free(placed);
    free(fill);
    layout_free(a);
}

void kn__arena_leave(kn_arena *a, kn_arena *prev, bool ok) {
    kn__arena_active = prev;
    while (a->nbin > 0) storage_free(a->bin[--a->nbin]);
    if (!ok || a->lost) return;
    /* Re-plan when this run's requests or lifetimes differ from the layout's. */
    bool replan = a->deviated || a->nlog != a->n;
    for (int i = 0; i < a->nlog && !replan; i++) replan = (a->log[i].freed >= 0) != (a->off[i] >= 0);
    if (replan) arena_plan(a);
}

void kn__arena_free(kn_arena *a) {
    if (!a) return;
    while (a->nbin > 0) storage_free(a->bin[--a->nbin]);
    layout_free(a);
    free(a->log);
    free(a->scratch);
    free(a);
}

static kn_storage *storage_new(size_t nbytes) {
    size_t total = round_up(STORAGE_HEAD + nbytes);
    if (total < nbytes) return NULL;
    kn_arena *a = kn__arena_active;
    kn_storage *s = a ? arena_take(a, nbytes) : NULL;
    if (!s) {
        /* A reused block (bin, cache) keeps its capacity. */
        if (!(s = a ? bin_take(a, total) : NULL)) {
            if (!(s = cache_take(total))) {
                if (!(s = aligned_alloc(KN_ALIGN, total))) return NULL;
                s->capacity = total;
            }
            sys_allocs++;
        }
        s->data = (char *)s + STORAGE_HEAD;
        s->arena_block = NULL;
    }
    atomic_init(&s->refcount, 1);
    atomic_init(&s->version, 0);
    s->nbytes = nbytes;
    s->device = KN_CPU;
    s->arena_run = 0;
    mem_add((int64_t)nbytes);
    if (a && !a->lost && !(a->lost = !log_push(a, nbytes))) {
        s->arena_run = a->run;
        s->arena_seq = a->nlog - 1;
    }
    return s;
}

static void storage_release(kn_storage *s) {
    if (atomic_fetch_sub(&s->refcount, 1) != 1) return;
    mem_add(-(int64_t)s->nbytes);
    kn_arena *a = kn__arena_active;
    if (a && s->arena_run == a->run) a->log[s->arena_seq].freed = a->nlog;
    arena_block *b = s->arena_block;
    if (b) {
        POISON(s->data, s->nbytes);
        atomic_store(&s->refcount, SLOT_FREE);  /* only now may a run hand its bytes out again */
        block_release(b);
    } else if (!a || !bin_put(a, s)) {
        storage_free(s);
    }
}

/* Tensor structs: a small free list per thread, so that steady-state
 * replays do not call malloc and free for them. */
#define TENSOR_CACHE 256
static _Thread_local kn_tensor *free_tensors;  /* linked through ->grad */
static _Thread_local int nfree_tensors;
static _Thread_local bool registered;           /* thread_exit will run */

static pthread_key_t thread_key;
static pthread_once_t thread_once = PTHREAD_ONCE_INIT;

/* At thread exit: what the thread keeps for reuse goes back to malloc. */
static void thread_exit(void *unused) {
    (void)unused;
    while (free_tensors) {
        kn_tensor *t = free_tensors;
        UNPOISON(t, sizeof *t);
        free_tensors = t->grad;
        free(t);
    }
    nfree_tensors = 0;
    pool_depth = 0;  /* a pool left open leaks its tensors, but not its list */
    pools_trim(0);
    registered = false;  /* a later destructor that caches again registers again */
}
static void thread_key_init(void) { pthread_key_create(&thread_key, thread_exit); }
static void thread_register(void) {
    if (registered) return;
    registered = true;
    pthread_once(&thread_once, thread_key_init);
    pthread_setspecific(thread_key, &registered);
}

static kn_tensor *tensor_get(void) {
    kn_tensor *t = free_tensors;
    if (t) {
        UNPOISON(t, sizeof *t);
        free_tensors = t->grad;
        nfree_tensors--;
        return t;
    }
    tensor_mallocs++;
    return malloc(sizeof *t);
}

static void tensor_put(kn_tensor *t) {
    if (nfree_tensors == TENSOR_CACHE) {
        free(t);
        return;
    }
    thread_register();
    t->grad = free_tensors;
    free_tensors = t;
    nfree_tensors++;
    /* Poisoned but its link, which LeakSanitizer reads to find the rest. */
    size_t link = offsetof(kn_tensor, grad), after = link + sizeof t->grad;
    POISON(t, link);
    POISON((char *)t + after, sizeof *t - after);
}

static kn_tensor *tensor_new(kn_storage *s, kn_dtype dt, const int64_t *shape,
                             const int64_t *strides, int ndim, int64_t offset) {
    kn_tensor *t = tensor_get();
    if (!t) return kn__error("out of memory allocating a tensor");
    memset(t, 0, sizeof *t);
    atomic_init(&t->refcount, 1);
    t->dtype = dt;
    t->ndim = ndim;
    if (ndim > 0) {  /* a 0-dim tensor may come with NULL arrays */
        memcpy(t->shape, shape, (size_t)ndim * sizeof *shape);
        memcpy(t->strides, strides, (size_t)ndim * sizeof *strides);
    }
    t->offset = offset;
    t->storage = s;
    t->trace_stamp = kn__trace_stamp;
    atomic_fetch_add(&live_tensors, 1);
    pool_add(t);
    return t;
}

static bool check_shape(const char *op, const int64_t *shape, int ndim, int64_t *numel) {
    char b[KN_SHAPE_BUF];
    if (ndim < 0 || ndim > KN_MAX_DIMS) {
        kn__error("%s: %d dims requested (expected 0..%d)", op, ndim, KN_MAX_DIMS);
        return false;
    }
    if (ndim > 0 && !shape) {
        kn__null_arg(op);
        return false;
    }
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) {
            kn__error("%s: negative size in shape %s", op, kn__shape_str(shape, ndim, b));
            return false;
        }
        if (shape[i] && n > INT64_MAX / 16 / shape[i]) {
            kn__error("%s: shape %s is too large", op, kn__shape_str(shape, ndim, b));
            return false;
        }
        n *= shape[i];
    }
    *numel = n;
    return true;
}

kn_tensor *kn__alloc(const int64_t *shape, int ndim, kn_dtype dt) {
    int64_t n;
    if ((unsigned)dt >= KN_DTYPE_COUNT) return kn__error("kn_empty: invalid dtype %d", (int)dt);
    if (!check_shape("kn_empty", shape, ndim, &n)) return NULL;
    size_t nbytes = (size_t)n * kn__size(dt);
    kn_storage *s = storage_new(nbytes);
    if (!s) {
        char b[KN_SHAPE_BUF];
        return kn__error("out of memory allocating %zu bytes for a %s tensor of shape %s",
                         nbytes, kn_dtype_name(dt), kn__shape_str(shape, ndim, b));
    }
    int64_t strides[KN_MAX_DIMS];
    kn__contig_strides(shape, ndim, strides);
    kn_tensor *t = tensor_new(s, dt, shape, strides, ndim, 0);
    if (!t) storage_release(s);
    return t;
}

kn_tensor *kn__view(kn_tensor *base, const int64_t *shape, const int64_t *strides,
                    int ndim, int64_t offset) {
    atomic_fetch_add(&base->storage->refcount, 1);
    kn_tensor *t = tensor_new(base->storage, base->dtype, shape, strides, ndim, offset);
    if (!t) storage_release(base->storage);
    return t;
}

kn_tensor *kn_retain(kn_tensor *t) {
    if (t) atomic_fetch_add(&t->refcount, 1);
    return t;
}

void kn_release(kn_tensor *t) {
    if (!t || atomic_fetch_sub(&t->refcount, 1) != 1) return;
    while (t->pool_level > 0 && pool_remove(t)) {}  /* over-released by hand: forget it */
    kn_release(t->grad);
    kn__node_release(t->grad_fn);
    storage_release(t->storage);
    atomic_fetch_sub(&live_tensors, 1);
    tensor_put(t);
}

/* ---- inspection ---- */
int kn_ndim(const kn_tensor *t) { return t ? t->ndim : -1; }
const int64_t *kn_shape(const kn_tensor *t) {
    kn__trace_sizes_read();
    return t ? t->shape : NULL;
}
const int64_t *kn_strides(const kn_tensor *t) {
    kn__trace_sizes_read();
    return t ? t->strides : NULL;
}
kn_dtype kn_dtype_of(const kn_tensor *t) { return t ? t->dtype : KN_DTYPE_COUNT; }
int64_t kn_numel(const kn_tensor *t) {
    kn__trace_sizes_read();
    return t ? kn__numel(t->shape, t->ndim) : -1;
}
void *kn_data(const kn_tensor *t) {
    if (!t) return kn__null_arg("kn_data");
    return kn__trace_read_error("kn_data", t) ? NULL : kn__ptr(t);
}

bool kn_is_contiguous(const kn_tensor *t) {
    if (!t) return false;
    if (kn__numel(t->shape, t->ndim) == 0) return true;
    int64_t s = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        if (t->shape[i] != 1 && t->strides[i] != s) return false;
        s *= t->shape[i];
    }
    return true;
}

int kn_copy_out(const kn_tensor *t, void *buf, size_t nbytes) {
    if (!t || !buf) return kn__null_arg("kn_copy_out"), -1;
    if (kn__trace_read_error("kn_copy_out", t)) return -1;
    size_t need = (size_t)kn__tnumel(t) * kn_dtype_size(t->dtype);
    if (nbytes < need) {
        kn__error("kn_copy_out: buffer of %zu bytes is too small (need %zu)", nbytes, need);
        return -1;
    }
    if (kn_is_contiguous(t)) {
        memcpy(buf, kn__ptr(t), need);
        return 0;
    }
    kn_tensor dst = *t;  /* a stack tensor over the caller's buffer */
    kn_storage st = {.data = buf, .nbytes = need};
    dst.storage = &st;
    dst.offset = 0;
    kn__contig_strides(t->shape, t->ndim, dst.strides);
    kn__copy(&dst, t);
    return 0;
}

double kn_item(const kn_tensor *t) {
    if (!t) return kn__null_arg("kn_item"), (double)NAN;
    if (kn__trace_read_error("kn_item", t)) return (double)NAN;
    if (kn__tnumel(t) != 1) {
        char b[KN_SHAPE_BUF];
        kn__error("kn_item: tensor of shape %s has %lld elements (expected 1)",
                  kn__shape_str(t->shape, t->ndim, b), (long long)kn__tnumel(t));
        return (double)NAN;
    }
    return kn__load(kn__ptr(t), t->dtype);
}

/* ---- creation ---- */
kn_tensor *kn_empty(const int64_t *shape, int ndim, kn_dtype dt) { return kn__alloc(shape, ndim, dt); }

kn_tensor *kn_full(const int64_t *shape, int ndim, double value, kn_dtype dt) {
    kn_tensor *t = kn__alloc(shape, ndim, dt);
    if (!t) return NULL;
    int64_t n = kn__tnumel(t);
    char *p = kn__ptr(t);
    switch (dt) {
    case KN_F32: for (int64_t i = 0; i < n; i++) ((float *)p)[i] = (float)value; break;
    case KN_F64: for (int64_t i = 0; i < n; i++) ((double *)p)[i] = value; break;
    case KN_I32: for (int64_t i = 0; i < n; i++) ((int32_t *)p)[i] = (int32_t)value; break;
    case KN_I64: for (int64_t i = 0; i < n; i++) ((int64_t *)p)[i] = (int64_t)value; break;
    default: memset(p, value != 0, (size_t)n); break;
    }
    return t;
}

kn_tensor *kn_zeros(const int64_t *shape, int ndim, kn_dtype dt) { return kn_full(shape, ndim, 0, dt); }
kn_tensor *kn_ones(const int64_t *shape, int ndim, kn_dtype dt) { return kn_full(shape, ndim, 1, dt); }
kn_tensor *kn_scalar(double value, kn_dtype dt) { return kn_full(NULL, 0, value, dt); }

kn_tensor *kn_from_data(const void *data, const int64_t *shape, int ndim, kn_dtype dt) {
    if (!data) return kn__null_arg("kn_from_data");
    kn_tensor *t = kn__alloc(shape, ndim, dt);
    if (t) memcpy(kn__ptr(t), data, t->storage->nbytes);
    return t;
}

kn_tensor *kn_arange(double start, double end, double step, kn_dtype dt) {
    if (step == 0 || step != step)
        return kn__error("kn_arange: step must be nonzero (got %g)", step);
    if ((end - start) / step > 1e15)
        return kn__error("kn_arange: range [%g, %g) with step %g is too large", start, end, step);
    int64_t n = (int64_t)ceil((end - start) / step);
    if (n < 0) n = 0;
    kn_tensor *t = kn__alloc(&n, 1, dt);
    if (!t) return NULL;
    size_t sz = kn_dtype_size(dt);
    for (int64_t i = 0; i < n; i++) kn__store(kn__ptr(t) + i * sz, dt, start + (double)i * step);
    return t;
}

kn_tensor *kn_eye(int64_t n, int64_t m, kn_dtype dt) {
    kn_tensor *t = kn_zeros(KN_SHAPE(n, m), dt);
    if (!t) return NULL;
    size_t sz = kn_dtype_size(dt);
    for (int64_t i = 0; i < n && i < m; i++) kn__store(kn__ptr(t) + (i * m + i) * sz, dt, 1);
    return t;
}
