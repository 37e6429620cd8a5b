/* The primitive cache of onednn_prim.h. */
#include "onednn_prim.h"
#include <stdlib.h>
#include <string.h>

static dnnl_engine_t engine;
static dnnl_status_t engine_status;
static pthread_once_t engine_once = PTHREAD_ONCE_INIT;

static void engine_init(void) { engine_status = dnnl_engine_create(&engine, dnnl_cpu, 0); }

dnnl_engine_t kn__dnnl_engine(dnnl_status_t *st) {
    pthread_once(&engine_once, engine_init);
    *st = engine_status;
    return engine_status == dnnl_success ? engine : NULL;
}

dnnl_status_t kn__prim_create(kn_prim *e, const_dnnl_primitive_desc_t pd) {
    e->md_scratch = *dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    e->scratch_bytes = dnnl_memory_desc_get_size(&e->md_scratch);
    return dnnl_primitive_create(&e->prim, pd);
}

static void prim_free(kn_prim *e) {
    if (e->prim) dnnl_primitive_destroy(e->prim);
    free(e);
}

/* The entry for key with a hold taken, or NULL (under c->lock). */
static kn_prim *find_locked(kn_prim_cache *c, const int64_t *key) {
    for (int i = 0; i < c->cap; i++)
        if (c->slot[i] && !memcmp(c->slot[i]->key, key, sizeof c->slot[i]->key)) {
            c->slot[i]->refs++;
            c->slot[i]->stamp = ++c->tick;
            return c->slot[i];
        }
    return NULL;
}

kn_prim *kn__prim_get(kn_prim_cache *c, const int64_t *key, int nkey, kn_prim_build build, dnnl_status_t *st) {
    dnnl_engine_t eng = kn__dnnl_engine(st);
    if (!eng) return NULL;
    int64_t k[KN_PRIM_KEY] = {0};
    memcpy(k, key, (size_t)nkey * sizeof *k);
    pthread_mutex_lock(&c->lock);
    kn_prim *hit = find_locked(c, k);
    pthread_mutex_unlock(&c->lock);
    if (hit) return hit;

    kn_prim *e = calloc(1, sizeof *e);
    if (!e) return *st = dnnl_out_of_memory, NULL;
    memcpy(e->key, k, sizeof k);
    if ((*st = build(e, eng)) != dnnl_success) return prim_free(e), NULL;

    pthread_mutex_lock(&c->lock);
    if ((hit = find_locked(c, k))) {  /* another thread won */
        pthread_mutex_unlock(&c->lock);
        prim_free(e);
        return hit;
    }
    int slot = 0;
    for (int i = 0; i < c->cap; i++)
        if (!c->slot[i] || (c->slot[slot] && c->slot[i]->stamp < c->slot[slot]->stamp)) slot = i;
    if (c->slot[slot]) {  /* full: evict the least recently used */
        if (c->slot[slot]->refs == 0) prim_free(c->slot[slot]);
        else c->slot[slot]->evicted = true;  /* its last user frees it */
    }
    c->slot[slot] = e;
    e->refs = 1;
    e->stamp = ++c->tick;
    pthread_mutex_unlock(&c->lock);
    return e;
}

static void put(kn_prim_cache *c, kn_prim *e) {
    pthread_mutex_lock(&c->lock);
    if (--e->refs == 0 && e->evicted) prim_free(e);
    pthread_mutex_unlock(&c->lock);
}

/* Wraps buf in a oneDNN memory object and appends it to args. */
static dnnl_status_t arg(dnnl_exec_arg_t *args, int *n, int id, const dnnl_memory_desc_t *md, const void *buf) {
    dnnl_memory_t m;
    dnnl_status_t s = dnnl_memory_create(&m, md, engine, (void *)buf);
    if (s == dnnl_success) args[(*n)++] = (dnnl_exec_arg_t){id, m};
    return s;
}

dnnl_status_t kn__prim_run(kn_prim_cache *c, kn_prim *e, int n, const int *ids, const void *const *bufs) {
    dnnl_exec_arg_t args[KN_PRIM_MDS + 1];
    int nargs = 0;
    dnnl_stream_t stream = NULL;
    dnnl_status_t s = dnnl_success;  /* e exists, so the engine does */
    void *scratch = NULL;
    if (e->scratch_bytes && !(scratch = aligned_alloc(64, (e->scratch_bytes + 63) & ~(size_t)63)))
        s = dnnl_out_of_memory;
    for (int i = 0; i < n && s == dnnl_success; i++)
        if (bufs[i]) s = arg(args, &nargs, ids[i], &e->md[i], bufs[i]);
    if (s == dnnl_success && scratch) s = arg(args, &nargs, DNNL_ARG_SCRATCHPAD, &e->md_scratch, scratch);
    /* A CPU stream is cheap; one per call keeps threads from sharing one. */
    if (s == dnnl_success) s = dnnl_stream_create(&stream, engine, dnnl_stream_default_flags);
    if (s == dnnl_success && (s = dnnl_primitive_execute(e->prim, stream, nargs, args)) == dnnl_success)
        s = dnnl_stream_wait(stream);
    if (stream) dnnl_stream_destroy(stream);
    for (int i = 0; i < nargs; i++) dnnl_memory_destroy(args[i].memory);
    free(scratch);
    put(c, e);
    return s;
}
