/* f32 convolution through oneDNN's convolution primitives (forward,
 * backward data, backward weights) on plain nchw / oihw buffers.
 *
 * Creating a primitive costs far more than running a small one, so
 * primitives are cached by geometry in a small locked LRU cache. Entries are
 * refcounted: one evicted while another thread runs it dies after that run.
 * Primitives use a user scratchpad, allocated per call: with oneDNN's default
 * (library) scratchpad a primitive must run on the thread that created it,
 * which a cache shared by threads cannot promise. */
#include "../../eager/conv.h"
#include <oneapi/dnnl/dnnl.h>
#include <oneapi/dnnl/dnnl_debug.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define CACHE_CAP 64

typedef struct {  /* all int64_t, so no padding bytes spoil memcmp */
    int64_t kind, n, c, h, w, o, kh, kw, oh, ow, stride, pad, bias;
} conv_key;

typedef struct {
    conv_key key;
    dnnl_primitive_t prim;
    dnnl_memory_desc_t md_a, md_b, md_bias, md_out, md_scratch;
    size_t scratch_bytes;
    uint64_t stamp;  /* last use, for LRU */
    int refs;        /* callers running it now */
    bool evicted;
} conv_entry;

static dnnl_engine_t engine;
static dnnl_status_t engine_status;
static pthread_once_t engine_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;
static conv_entry *cache[CACHE_CAP];
static uint64_t tick;

static void engine_init(void) { engine_status = dnnl_engine_create(&engine, dnnl_cpu, 0); }

static void entry_free(conv_entry *e) {
    if (e->prim) dnnl_primitive_destroy(e->prim);
    free(e);
}

static dnnl_status_t md4(dnnl_memory_desc_t *md, int64_t a, int64_t b, int64_t c, int64_t d,
                         dnnl_format_tag_t tag) {
    dnnl_dims_t dims = {a, b, c, d};
    return dnnl_memory_desc_init_by_tag(md, 4, dims, dnnl_f32, tag);
}

#define TRY(call)                                        \
    do {                                                 \
        if ((s = (call)) != dnnl_success) goto done;     \
    } while (0)

/* Builds the primitive for k into e; returns oneDNN's status. */
static dnnl_status_t entry_build(conv_entry *e, const conv_key *k) {
    dnnl_status_t s;
    dnnl_memory_desc_t src, wei, dst, bias;
    dnnl_convolution_desc_t fd, bd;
    dnnl_primitive_desc_t fpd = NULL, pd = NULL;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_dims_t strides = {k->stride, k->stride}, pad = {k->pad, k->pad};
    TRY(md4(&src, k->n, k->c, k->h, k->w, dnnl_nchw));
    TRY(md4(&wei, k->o, k->c, k->kh, k->kw, dnnl_oihw));
    TRY(md4(&dst, k->n, k->o, k->oh, k->ow, dnnl_nchw));
    dnnl_dims_t bdims = {k->o};
    TRY(dnnl_memory_desc_init_by_tag(&bias, 1, bdims, dnnl_f32, dnnl_a));
    TRY(dnnl_primitive_attr_create(&attr));
    TRY(dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user));
    bool fwd = k->kind == KN_CONV_FWD;
    TRY(dnnl_convolution_forward_desc_init(&fd, fwd ? dnnl_forward_inference : dnnl_forward_training,
                                           dnnl_convolution_direct, &src, &wei,
                                           k->bias ? &bias : NULL, &dst, strides, pad, pad));
    /* The forward primitive desc is the primitive itself, or the hint that
     * the backward ones require. */
    TRY(dnnl_primitive_desc_create(&fpd, &fd, fwd ? attr : NULL, engine, NULL));
    if (fwd) {
        pd = fpd;
        fpd = NULL;
        e->md_a = src, e->md_b = wei, e->md_bias = bias, e->md_out = dst;
    } else if (k->kind == KN_CONV_BWD_DATA) {
        TRY(dnnl_convolution_backward_data_desc_init(&bd, dnnl_convolution_direct, &src, &wei,
                                                     &dst, strides, pad, pad));
        TRY(dnnl_primitive_desc_create(&pd, &bd, attr, engine, fpd));
        e->md_a = dst, e->md_b = wei, e->md_out = src;
    } else {
        TRY(dnnl_convolution_backward_weights_desc_init(&bd, dnnl_convolution_direct, &src, &wei,
                                                        NULL, &dst, strides, pad, pad));
        TRY(dnnl_primitive_desc_create(&pd, &bd, attr, engine, fpd));
        e->md_a = dst, e->md_b = src, e->md_out = wei;
    }
    e->md_scratch = *dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    e->scratch_bytes = dnnl_memory_desc_get_size(&e->md_scratch);
    TRY(dnnl_primitive_create(&e->prim, pd));
done:
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (fpd) dnnl_primitive_desc_destroy(fpd);
    if (attr) dnnl_primitive_attr_destroy(attr);
    return s;
}

/* Drops the caller's hold on e (under cache_lock). */
static void entry_put_locked(conv_entry *e) {
    if (--e->refs == 0 && e->evicted) entry_free(e);
}

/* The cached entry for k with one hold taken, building it on a miss; NULL
 * with *st set when oneDNN refuses. Built outside the lock: creation is slow. */
static conv_entry *entry_get(const conv_key *k, dnnl_status_t *st) {
    pthread_mutex_lock(&cache_lock);
    for (int i = 0; i < CACHE_CAP; i++)
        if (cache[i] && !memcmp(&cache[i]->key, k, sizeof *k)) {
            cache[i]->refs++;
            cache[i]->stamp = ++tick;
            pthread_mutex_unlock(&cache_lock);
            return cache[i];
        }
    pthread_mutex_unlock(&cache_lock);

    conv_entry *e = calloc(1, sizeof *e);
    if (!e) { *st = dnnl_out_of_memory; return NULL; }
    e->key = *k;
    if ((*st = entry_build(e, k)) != dnnl_success) { entry_free(e); return NULL; }

    pthread_mutex_lock(&cache_lock);
    int slot = 0;
    for (int i = 0; i < CACHE_CAP; i++) {
        if (cache[i] && !memcmp(&cache[i]->key, k, sizeof *k)) {  /* another thread won */
            cache[i]->refs++;
            cache[i]->stamp = ++tick;
            conv_entry *won = cache[i];
            pthread_mutex_unlock(&cache_lock);
            entry_free(e);
            return won;
        }
        if (!cache[i] || (cache[slot] && cache[i]->stamp < cache[slot]->stamp)) slot = i;
    }
    if (cache[slot]) {  /* full: evict the least recently used */
        if (cache[slot]->refs == 0) entry_free(cache[slot]);
        else cache[slot]->evicted = true;  /* its last user frees it */
    }
    cache[slot] = e;
    e->refs = 1;
    e->stamp = ++tick;
    pthread_mutex_unlock(&cache_lock);
    return e;
}

static void entry_put(conv_entry *e) {
    pthread_mutex_lock(&cache_lock);
    entry_put_locked(e);
    pthread_mutex_unlock(&cache_lock);
}

/* Wraps buf in a oneDNN memory object and appends it to args. */
static dnnl_status_t arg(dnnl_exec_arg_t *args, int *n, int id, const dnnl_memory_desc_t *md,
                         const void *buf) {
    dnnl_memory_t m;
    dnnl_status_t s = dnnl_memory_create(&m, md, engine, (void *)buf);
    if (s == dnnl_success) args[(*n)++] = (dnnl_exec_arg_t){id, m};
    return s;
}

int kn__conv2d_f32(const char *op, kn_conv_kind kind, const kn_conv_geom *g, const float *a,
                   const float *b, const float *bias, float *out) {
    pthread_once(&engine_once, engine_init);
    dnnl_status_t s = engine_status;
    if (s != dnnl_success) goto fail;
    conv_key k = {kind, g->n, g->c, g->h, g->w, g->o, g->kh, g->kw, g->oh, g->ow,
                  g->stride, g->pad, kind == KN_CONV_FWD && bias != NULL};
    conv_entry *e = entry_get(&k, &s);
    if (!e) goto fail;

    static const int ids[3][3] = {
        [KN_CONV_FWD] = {DNNL_ARG_SRC, DNNL_ARG_WEIGHTS, DNNL_ARG_DST},
        [KN_CONV_BWD_DATA] = {DNNL_ARG_DIFF_DST, DNNL_ARG_WEIGHTS, DNNL_ARG_DIFF_SRC},
        [KN_CONV_BWD_WEIGHTS] = {DNNL_ARG_DIFF_DST, DNNL_ARG_SRC, DNNL_ARG_DIFF_WEIGHTS},
    };
    dnnl_exec_arg_t args[5];
    int nargs = 0;
    dnnl_stream_t stream = NULL;
    void *scratch = NULL;
    if (e->scratch_bytes) {
        scratch = aligned_alloc(64, (e->scratch_bytes + 63) & ~(size_t)63);
        if (!scratch) { s = dnnl_out_of_memory; goto cleanup; }
    }
    if ((s = arg(args, &nargs, ids[kind][0], &e->md_a, a)) != dnnl_success ||
        (s = arg(args, &nargs, ids[kind][1], &e->md_b, b)) != dnnl_success ||
        (s = arg(args, &nargs, ids[kind][2], &e->md_out, out)) != dnnl_success ||
        (k.bias && (s = arg(args, &nargs, DNNL_ARG_BIAS, &e->md_bias, bias)) != dnnl_success) ||
        (scratch && (s = arg(args, &nargs, DNNL_ARG_SCRATCHPAD, &e->md_scratch, scratch)) != dnnl_success))
        goto cleanup;
    /* A CPU stream is cheap; one per call keeps threads from sharing one. */
    if ((s = dnnl_stream_create(&stream, engine, dnnl_stream_default_flags)) != dnnl_success)
        goto cleanup;
    if ((s = dnnl_primitive_execute(e->prim, stream, nargs, args)) == dnnl_success)
        s = dnnl_stream_wait(stream);
cleanup:
    if (stream) dnnl_stream_destroy(stream);
    for (int i = 0; i < nargs; i++) dnnl_memory_destroy(args[i].memory);
    free(scratch);
    entry_put(e);
    if (s == dnnl_success) return 0;
fail:
    kn__error("%s: oneDNN convolution failed for x [%lld,%lld,%lld,%lld], w [%lld,%lld,%lld,%lld], "
              "stride %d, padding %d (%s)", op, (long long)g->n, (long long)g->c, (long long)g->h,
              (long long)g->w, (long long)g->o, (long long)g->c, (long long)g->kh,
              (long long)g->kw, g->stride, g->pad, dnnl_status2str(s));
    return -1;
}
