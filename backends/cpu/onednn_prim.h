/* Cached oneDNN primitives, shared by matmul (onednn.c) and convolution
 * (onednn_conv.c). Creating a primitive costs far more than running a small
 * one, so each user keeps a small locked LRU cache keyed by geometry.
 * Entries are refcounted: one evicted while another thread runs it dies
 * after that run. Primitives use a user scratchpad, allocated per run: with
 * oneDNN's default (library) scratchpad a primitive must run on the thread
 * that created it, which a cache shared by threads cannot promise. */
#ifndef KN_ONEDNN_PRIM_H
#define KN_ONEDNN_PRIM_H

#include <oneapi/dnnl/dnnl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#define KN_PRIM_KEY 16 /* int64 words of a key; shorter keys are zero-padded */
#define KN_PRIM_MDS 4  /* memory descriptors of a primitive's arguments */

typedef struct {
    int64_t key[KN_PRIM_KEY];
    dnnl_primitive_t prim;
    dnnl_memory_desc_t md[KN_PRIM_MDS]; /* the builder's, in the order kn__prim_run binds them */
    dnnl_memory_desc_t md_scratch;
    size_t scratch_bytes;
    uint64_t stamp; /* last use, for LRU */
    int refs;       /* callers running it now */
    bool evicted;
} kn_prim;

typedef struct {
    pthread_mutex_t lock;
    int cap;
    kn_prim **slot;
    uint64_t tick;
} kn_prim_cache;

/* A static cache of n entries. */
#define KN_PRIM_CACHE(name, n)            \
    static kn_prim *name##_slots[n];     \
    static kn_prim_cache name = {PTHREAD_MUTEX_INITIALIZER, n, name##_slots, 0}

/* Fills e->md and creates e->prim (through kn__prim_create) for e->key. */
typedef dnnl_status_t (*kn_prim_build)(kn_prim *e, dnnl_engine_t engine);

/* In a builder: s = call, and on failure goto done (the cleanup). */
#define KN_DNNL_TRY(call)                                \
    do {                                                 \
        if ((s = (call)) != dnnl_success) goto done;     \
    } while (0)

/* The process's CPU engine; NULL with *st set if oneDNN cannot make one. */
dnnl_engine_t kn__dnnl_engine(dnnl_status_t *st);
/* Makes e->prim from pd and records its scratchpad. */
dnnl_status_t kn__prim_create(kn_prim *e, const_dnnl_primitive_desc_t pd);
/* The cached primitive for key (nkey words) with one hold taken, built on a
 * miss outside the lock (creation is slow); NULL with *st set on failure. */
kn_prim *kn__prim_get(kn_prim_cache *c, const int64_t *key, int nkey, kn_prim_build build, dnnl_status_t *st);
/* Runs e with bufs[i] as argument ids[i], described by e->md[i] (a NULL
 * buffer is left out), plus the scratchpad; then drops the hold. */
dnnl_status_t kn__prim_run(kn_prim_cache *c, kn_prim *e, int n, const int *ids, const void *const *bufs);

#endif
