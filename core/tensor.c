/* Tensors and storage: allocation, refcounts, pools, views, inspection. */
#include "autograd.h"
#include "../trace/trace.h"
#include <math.h>
#include <pthread.h>
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

static void pool_add(kn_tensor *t) {
    if (pool_depth == 0) return;
    pool *p = &pools[pool_depth - 1];
    if (p->n == p->cap) {
        int64_t cap = p->cap ? p->cap * 2 : 256;
        kn_tensor **items = realloc(p->items, (size_t)cap * sizeof *items);
        if (!items) return;  /* untracked: the reference leaks, nothing crashes */
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
    if (pool_depth == 0) {
        for (int i = 0; i < MAX_POOLS && pools[i].items; i++) {
            free(pools[i].items);
            pools[i] = (pool){0};
        }
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

/* Best-fit cached block of at least total bytes and at most twice that. */
static kn_storage *cache_take(size_t total) {
    if (total < CACHE_MIN) return NULL;
    pthread_mutex_lock(&cache.lock);
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
    return s;
}

static bool cache_put(kn_storage *s) {
    if (s->capacity < CACHE_MIN) return false;
    bool kept = false;
    pthread_mutex_lock(&cache.lock);
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

static kn_storage *storage_new(size_t nbytes) {
    size_t head = (sizeof(kn_storage) + KN_ALIGN - 1) & ~(size_t)(KN_ALIGN - 1);
    size_t total = (head + nbytes + KN_ALIGN - 1) & ~(size_t)(KN_ALIGN - 1);
    if (total < nbytes) return NULL;
    kn_storage *s = cache_take(total);
    if (!s && !(s = aligned_alloc(KN_ALIGN, total))) return NULL;
    atomic_init(&s->refcount, 1);
    atomic_init(&s->version, 0);
    s->nbytes = nbytes;
    s->capacity = total;
    mem_add((int64_t)nbytes);
    s->device = KN_CPU;
    s->data = (char *)s + head;
    return s;
}

static void storage_release(kn_storage *s) {
    if (atomic_fetch_sub(&s->refcount, 1) != 1) return;
    mem_add(-(int64_t)s->nbytes);
    if (!cache_put(s)) free(s);
}

static kn_tensor *tensor_new(kn_storage *s, kn_dtype dt, const int64_t *shape,
                             const int64_t *strides, int ndim, int64_t offset) {
    kn_tensor *t = malloc(sizeof *t);
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
    free(t);
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
