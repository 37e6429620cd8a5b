/* kn_function: record a body's ops on its first call (trace by execution),
 * then replay the recorded graph (trace/replay.c) for every later call with
 * the same input signature. This file holds the recording hooks, the
 * signature cache and the retrace log. */
#include "ir.h"
#include <stdlib.h>
#include <string.h>
#include <time.h>

_Thread_local struct kn_trace *kn__trace;
_Thread_local uint32_t kn__trace_stamp;
static atomic_uint next_stamp = 1;

static bool grow(void **p, int *cap, int need, size_t elem) {
    if (need <= *cap) return true;
    int c = *cap ? *cap * 2 : 64;
    while (c < need) c *= 2;
    void *q = realloc(*p, (size_t)c * elem);
    if (!q) return false;
    *p = q;
    *cap = c;
    return true;
}

static size_t hash_ptr(const void *p, int cap) {
    uintptr_t x = (uintptr_t)p;
    x ^= x >> 17;
    x *= 0xed5ad4bbu;
    x ^= x >> 11;
    return (size_t)x & (size_t)(cap - 1);
}

int kn__map_get(kn_trace *tr, const kn_tensor *t) {
    if (!tr->mcap) return -1;
    for (size_t i = hash_ptr(t, tr->mcap);; i = (i + 1) & (size_t)(tr->mcap - 1)) {
        if (!tr->mkey[i]) return -1;
        if (tr->mkey[i] == t) return tr->mval[i];
    }
}

void kn__map_put(kn_trace *tr, kn_tensor *t, int v) {
    if ((tr->mcount + 1) * 2 > tr->mcap) {
        int cap = tr->mcap ? tr->mcap * 2 : 256;
        kn_tensor **k = calloc((size_t)cap, sizeof *k);
        int *vv = calloc((size_t)cap, sizeof *vv);
        if (!k || !vv) {
            free(k);
            free(vv);
            tr->oom = true;
            return;
        }
        for (int i = 0; i < tr->mcap; i++)
            if (tr->mkey[i]) {
                size_t j = hash_ptr(tr->mkey[i], cap);
                while (k[j]) j = (j + 1) & (size_t)(cap - 1);
                k[j] = tr->mkey[i];
                vv[j] = tr->mval[i];
            }
        free(tr->mkey);
        free(tr->mval);
        tr->mkey = k;
        tr->mval = vv;
        tr->mcap = cap;
    }
    size_t i = hash_ptr(t, tr->mcap);
    while (tr->mkey[i] && tr->mkey[i] != t) i = (i + 1) & (size_t)(tr->mcap - 1);
    if (!tr->mkey[i]) tr->mcount++;
    tr->mkey[i] = t;
    tr->mval[i] = v;
}

void kn__hold(kn_trace *tr, kn_tensor *t) {
    if (!grow((void **)&tr->held, &tr->caph, tr->nheld + 1, sizeof *tr->held)) {
        tr->oom = true;
        return;
    }
    tr->held[tr->nheld++] = kn_retain(t);
}

int kn__new_value(kn_trace *tr, vkind kind, int index, kn_tensor *owned, const kn_tensor *like) {
    if (!grow((void **)&tr->vals, &tr->capv, tr->nvals + 1, sizeof *tr->vals)) {
        tr->oom = true;
        kn_release(owned);
        return -1;
    }
    tvalue *v = &tr->vals[tr->nvals];
    *v = (tvalue){.kind = kind, .index = index, .t = owned, .dtype = like->dtype, .ndim = like->ndim};
    memcpy(v->shape, like->shape, sizeof v->shape);
    for (int d = 0; d < KN_MAX_DIMS; d++) v->sym[d] = -1;
    for (int d = 0; d < like->ndim; d++) {
        if (kind == V_INPUT && like->shape[d] == 1) continue;
        /* Node dims equal to an input size follow it. Constants (captures,
         * snapshots) keep their sizes: where one coincides with an input size
         * and that size changes, the op that mixes them fails loudly, and the
         * call retraces for exact shapes. */
        for (int s = 0; (kind == V_NODE || kind == V_INPUT) && s < tr->nsyms && v->sym[d] < 0; s++)
            if (tr->sym_value[s] == like->shape[d]) v->sym[d] = tr->sym_id[s];
    }
    return tr->nvals++;
}

/* The value a tensor stands for; first sight of an unknown tensor makes it a
 * constant (made while tracing: snapshot now) or a capture (by reference). */
int kn__value_of(kn_trace *tr, kn_tensor *t) {
    if (!t) return -1;
    int v = kn__map_get(tr, t);
    if (v >= 0) return v;
    if (tr->parent) {  /* a branch may capture what the body captures, nothing it computed */
        int pv = kn__map_get(tr->parent, t);
        if (pv >= 0 && tr->parent->vals[pv].kind != V_CAPTURE) tr->outer_ref = true;
    }
    if (t->trace_stamp == tr->stamp) {
        kn_tensor *c = kn__alloc(t->shape, t->ndim, t->dtype);
        if (!c) {
            tr->oom = true;
            return -1;
        }
        kn__copy(c, t);
        c->wrapped = t->wrapped;
        kn_keep(c);
        v = kn__new_value(tr, V_CONST, 0, c, t);
    } else {
        v = kn__new_value(tr, V_CAPTURE, 0, kn_retain(t), t);
    }
    if (v >= 0) {
        kn__map_put(tr, t, v);
        kn__hold(tr, t);
    }
    return v;
}

tnode *kn__new_node(kn_trace *tr, nkind kind, kn_op op, int nin) {
    if (!grow((void **)&tr->nodes, &tr->capn, tr->nnodes + 1, sizeof *tr->nodes)) {
        tr->oom = true;
        return NULL;
    }
    tnode *n = &tr->nodes[tr->nnodes];
    *n = (tnode){.kind = kind, .op = op, .nin = nin, .in = calloc((size_t)(nin ? nin : 1), sizeof(int)), .out = -1};
    if (!n->in) {
        tr->oom = true;
        return NULL;
    }
    tr->nnodes++;
    return n;
}

/* ---- hooks (trace/trace.h) ---- */
void kn__trace_op(kn_op op, kn_tensor *out, kn_tensor *const *in, int nin, const kn_params *p) {
    kn_trace *tr = kn__trace;
    if (!tr || !out) return;
    int ids[64];
    if (nin > 64) {
        tr->oom = true;
        return;
    }
    for (int i = 0; i < nin; i++) ids[i] = kn__value_of(tr, in[i]);
    tnode *n = kn__new_node(tr, N_OP, op, nin);
    if (!n) return;
    memcpy(n->in, ids, (size_t)nin * sizeof *ids);
    if (p) n->p = *p;
    int v = kn__new_value(tr, V_NODE, tr->nnodes - 1, NULL, out);
    n->out = v;
    if (v >= 0)
        tr->vals[v].requires_grad = kn__needs_grad(in, nin) && kn__is_float(out->dtype) && kn_derivatives[op].rule;
    if (v >= 0 && grow((void **)&tr->vt, &tr->capvt, v + 1, sizeof *tr->vt)) {
        tr->vt[v] = out;
        kn__map_put(tr, out, v);
        kn__hold(tr, out);
    }
}

void kn__trace_alias(kn_tensor *alias, kn_tensor *t) {
    kn_trace *tr = kn__trace;
    if (!tr || !alias || !t) return;
    int v = kn__value_of(tr, t);
    if (v < 0) return;
    kn__map_put(tr, alias, v);
    kn__hold(tr, alias);
}

static void side_effect(nkind kind, kn_tensor *a, kn_tensor *b) {
    kn_trace *tr = kn__trace;
    if (!tr) return;
    int va = kn__value_of(tr, a), vb = b ? kn__value_of(tr, b) : -1;
    tnode *n = kn__new_node(tr, kind, KN_OP_COUNT, b ? 2 : 1);
    if (!n) return;
    n->in[0] = va;
    if (b) n->in[1] = vb;
    if (kind == N_WRITE && va >= 0 && (tr->vals[va].kind == V_CONST || tr->vals[va].kind == V_NODE))
        tr->stateful = true;
    if (kind == N_SET_GRAD) tr->has_backward = true;
}

void kn__trace_write(kn_tensor *dst, kn_tensor *src) { side_effect(N_WRITE, dst, src); }
void kn__trace_set_grad(kn_tensor *leaf, kn_tensor *g) { side_effect(N_SET_GRAD, leaf, g); }
void kn__trace_zero_grad(kn_tensor *leaf) { side_effect(N_ZERO_GRAD, leaf, NULL); }

void kn__trace_grad_read(kn_tensor *leaf, kn_tensor *g) {
    kn_trace *tr = kn__trace;
    if (!tr || !g || kn__map_get(tr, g) >= 0) return;
    int v = kn__new_value(tr, V_GRAD, 0, kn_retain(leaf), g);
    if (v < 0) return;
    kn__map_put(tr, g, v);
    kn__hold(tr, g);
}

void kn__trace_sizes_read(void) {
    if (kn__trace) kn__trace->exact = true;
}

bool kn__trace_read_error(const char *op, const kn_tensor *t) {
    (void)t;
    if (!kn__trace) return false;
    kn__error("%s: cannot read a tensor's values while kn_function '%s' is being traced: the value "
              "would be baked into every later call (compute with kn_where or kn_cond instead, or "
              "read the outputs after kn_call)", op, kn__trace->name);
    return true;
}

void kn__trace_free(kn_trace *tr) {
    if (!tr) return;
    for (int i = 0; i < tr->nheld; i++) kn_release(tr->held[i]);
    for (int i = 0; i < tr->nvals; i++) kn_release(tr->vals[i].t);
    for (int i = 0; i < tr->nnodes; i++) {
        free(tr->nodes[i].in);
        kn__fused_free(tr->nodes[i].fused);
        kn__scalars_free(tr->nodes[i].scalars);
        for (int b = 0; b < 2; b++)
            if (tr->nodes[i].branch[b]) {
                kn__plan_free(tr->nodes[i].branch[b]);
                free(tr->nodes[i].branch[b]);
            }
    }
    free(tr->held);
    free(tr->vt);
    free(tr->vals);
    free(tr->nodes);
    free(tr->mkey);
    free(tr->mval);
    free(tr);
}


static atomic_bool force_eager;
void kn_run_functions_eagerly(bool on) { atomic_store(&force_eager, on); }

static int eager_cache = -1, shadow_cache = -1, log_cache = -1;
static bool eager_env(void) { return kn__env(&eager_cache, "KN_EAGER", NULL) || atomic_load(&force_eager); }
static bool shadow_env(void) { return kn__env(&shadow_cache, "KN_SHADOW", NULL); }
static bool log_recompiles(void) { return kn__env(&log_cache, "KN_LOG", "recompiles"); }

kn_fn *kn_function(const char *name, kn_body body, void *ctx, int nin, int nout, const kn_fn_opts *opts) {
    if (!name || !body) return kn__null_arg("kn_function");
    if (nin < 0 || nout < 1 || nin > 64 || nout > 64)
        return kn__error("kn_function %s: %d inputs and %d outputs (expected 0..64 and 1..64)", name, nin, nout);
    kn_fn *f = calloc(1, sizeof *f);
    if (!f) return kn__error("kn_function %s: out of memory", name);
    *f = (kn_fn){.name = name, .body = body, .ctx = ctx, .nin = nin, .nout = nout};
    if (opts) f->opts = *opts;
    pthread_mutex_init(&f->lock, NULL);
    pthread_cond_init(&f->compiled, NULL);
    return f;
}

void kn__plan_free(plan *p) {
    kn__arena_free(p->arena);
    free(p->captures);
    free(p->sig);
    free(p->outs);
    free(p->last_use);
    kn__trace_free(p->tr);
}

void kn_fn_free(kn_fn *f) {
    if (!f) return;
    kn_fn_wait_compiled(f);
    for (int i = 0; i < f->nplans; i++) kn__plan_free(&f->plans[i]);
    free(f->plans);
    pthread_cond_destroy(&f->compiled);
    pthread_mutex_destroy(&f->lock);
    free(f);
}

void kn_fn_wait_compiled(kn_fn *f) {
    if (!f) return;
    pthread_mutex_lock(&f->lock);
    while (f->compiling > 0) pthread_cond_wait(&f->compiled, &f->lock);
    pthread_mutex_unlock(&f->lock);
}

/* ---- tiered compilation: plans run op by op until their kernels are ready ---- */
typedef struct {
    kn_fn *f;
    uint64_t plan_id;
    kn_fuse_job *job;
    int *outs;
} compile_task;

static void *compile_in_background(void *arg) {
    compile_task *t = arg;
    kn__fuse_compile(t->job);  /* the slow part, outside the lock */
    kn_fn *f = t->f;
    pthread_mutex_lock(&f->lock);
    for (int i = 0; i < f->nplans; i++)  /* the plan may be gone (a replaced capture) */
        if (f->plans[i].id == t->plan_id) {
            kn__fuse_apply(&f->plans[i], t->job, t->outs, f->nout);
            if (i == f->nplans - 1) f->stats.nodes = f->plans[i].tr->nnodes;
        }
    f->compiling--;
    pthread_cond_broadcast(&f->compiled);
    pthread_mutex_unlock(&f->lock);
    kn__fuse_job_free(t->job);
    free(t->outs);
    free(t);
    return NULL;
}

/* Fuses now, or (KN_COMPILE=async) starts the compile on a thread of its own. */
static void fuse_plan(kn_fn *f, plan *pl, const int *outs) {
    static int async_env = -1;
    if (f->opts.compile != KN_COMPILE_ASYNC && !kn__env(&async_env, "KN_COMPILE", "async")) {
        kn__plan_fuse(pl, outs, f->nout);
        return;
    }
    compile_task *t = calloc(1, sizeof *t);
    if (t) t->outs = malloc((size_t)f->nout * sizeof *t->outs);
    if (t && t->outs && (t->job = kn__fuse_prepare(pl, outs, f->nout))) {
        memcpy(t->outs, outs, (size_t)f->nout * sizeof *outs);
        t->f = f;
        t->plan_id = pl->id;
        pthread_t th;
        pthread_attr_t a;
        pthread_attr_init(&a);
        pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
        f->compiling++;  /* under f->lock: kn_call holds it */
        if (pthread_create(&th, &a, compile_in_background, t) == 0) t = NULL;
        else f->compiling--;
        pthread_attr_destroy(&a);
    }
    if (t) {  /* no thread: compile here */
        if (t->job) kn__plan_fuse(pl, outs, f->nout);
        kn__fuse_job_free(t->job);
        free(t->outs);
        free(t);
    }
}

kn_fn_stats_t kn_fn_stats(const kn_fn *f) { return f ? f->stats : (kn_fn_stats_t){0}; }

/* Bytes of a plan's arena and of its kn_cond branches' arenas. */
static int64_t arena_bytes(const plan *pl) {
    int64_t b = kn__arena_bytes(pl->arena);
    for (int i = 0; i < pl->tr->nnodes; i++)
        for (int k = 0; k < 2; k++)
            if (pl->tr->nodes[i].branch[k]) b += arena_bytes(pl->tr->nodes[i].branch[k]);
    return b;
}

/* The signature: grad mode, then per input dtype, rank, requires-grad and
 * which dims are 1; then the exact shapes, which only an exact plan
 * compares (*symlen is the length of the first part). */
static size_t signature(kn_tensor *const *in, int nin, uint8_t *buf, size_t *symlen) {
    size_t n = 0;
    buf[n++] = kn_grad_enabled();
    for (int i = 0; i < nin; i++) {
        uint8_t ones = 0;
        for (int d = 0; d < in[i]->ndim; d++) ones |= (uint8_t)((in[i]->shape[d] == 1) << d);
        buf[n++] = (uint8_t)in[i]->dtype;
        buf[n++] = (uint8_t)in[i]->ndim;
        buf[n++] = in[i]->requires_grad;
        buf[n++] = ones;
    }
    *symlen = n;
    for (int i = 0; i < nin; i++) {
        memcpy(buf + n, in[i]->shape, (size_t)in[i]->ndim * sizeof(int64_t));
        n += (size_t)in[i]->ndim * sizeof(int64_t);
    }
    return n;
}

/* Why sig differs from the newest plan's, for the retrace log. */
static void retrace_reason(const kn_fn *f, kn_tensor *const *in, char *buf, size_t len) {
    if (f->nplans == 0) {
        snprintf(buf, len, f->stats.traces ? "the previous trace made state and was not kept" : "first call");
        return;
    }
    const uint8_t *s = f->plans[f->nplans - 1].sig;
    if (s[0] != kn_grad_enabled()) {
        snprintf(buf, len, "grad mode %s -> %s", s[0] ? "on" : "off", s[0] ? "off" : "on");
        return;
    }
    const plan *last = &f->plans[f->nplans - 1];
    size_t shapes = 1 + 4 * (size_t)f->nin;  /* exact shapes follow the per-input bytes */
    for (int i = 0; i < f->nin; i++) {
        const uint8_t *e = s + 1 + 4 * i;
        kn_dtype dt = (kn_dtype)e[0];
        int nd = e[1];
        bool rg = e[2];
        int64_t shape[KN_MAX_DIMS];
        memcpy(shape, s + shapes, (size_t)nd * sizeof(int64_t));
        shapes += (size_t)nd * sizeof(int64_t);
        char b0[KN_SHAPE_BUF], b1[KN_SHAPE_BUF];
        bool ones_differ = false;
        for (int d = 0; d < nd && d < in[i]->ndim; d++) ones_differ |= (shape[d] == 1) != (in[i]->shape[d] == 1);
        if (dt != in[i]->dtype)
            snprintf(buf, len, "input %d dtype %s -> %s", i, kn_dtype_name(dt), kn_dtype_name(in[i]->dtype));
        else if (rg != in[i]->requires_grad)
            snprintf(buf, len, "input %d requires_grad %d -> %d", i, rg, in[i]->requires_grad);
        else if (nd != in[i]->ndim || ones_differ ||
                 (last->symlen == last->siglen && memcmp(shape, in[i]->shape, (size_t)nd * sizeof(int64_t))))
            snprintf(buf, len, "input %d shape %s -> %s%s", i, kn__shape_str(shape, nd, b0),
                     kn__shape_str(in[i]->shape, in[i]->ndim, b1),
                     last->symlen == last->siglen ? " (the plan was exact)" : "");
        else
            continue;
        return;
    }
    snprintf(buf, len, "the previous trace could not be kept");
}

/* Tied input dims are still equal. */
static bool ties_hold(const plan *pl, kn_tensor *const *in) {
    const kn_trace *tr = pl->tr;
    for (int t = 0; t < tr->nties; t++) {
        int a = tr->tie[t][0], b = tr->tie[t][1];
        if (in[a / KN_MAX_DIMS]->shape[a % KN_MAX_DIMS] != in[b / KN_MAX_DIMS]->shape[b % KN_MAX_DIMS]) return false;
    }
    return true;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

kn_tensor *kn__hand_over(kn_tensor *t) {
    kn__ret(t);
    kn_release(t);
    return t;
}

void kn__trace_inputs(kn_trace *tr, kn_tensor *const *in, int nin) {
    for (int i = 0; i < nin; i++)
        for (int d = 0; d < in[i]->ndim; d++) {
            if (in[i]->shape[d] == 1) continue;
            int16_t id = (int16_t)(i * KN_MAX_DIMS + d);
            int s = 0;
            while (s < tr->nsyms && tr->sym_value[s] != in[i]->shape[d]) s++;
            if (s < tr->nsyms) {  /* the same size again: tie it to the first */
                tr->tie[tr->nties][0] = tr->sym_id[s];
                tr->tie[tr->nties++][1] = id;
                continue;
            }
            tr->sym_id[tr->nsyms] = id;
            tr->sym_value[tr->nsyms++] = in[i]->shape[d];
        }
    for (int i = 0; i < nin; i++) {
        int v = kn__map_get(tr, in[i]);
        if (v < 0) {  /* the same tensor twice is one input value */
            v = kn__new_value(tr, V_INPUT, i, NULL, in[i]);
            if (v >= 0) {
                kn__map_put(tr, in[i], v);
                kn__hold(tr, in[i]);
            }
        }
    }
}

kn_trace *kn__record_body(kn_fn *f, kn_tensor *const *in, kn_tensor **res, int *outs) {
    kn_trace *tr = calloc(1, sizeof *tr);
    if (!tr) return kn__error("kn_function %s: out of memory", f->name);
    tr->stamp = atomic_fetch_add(&next_stamp, 1);
    tr->name = f->name;
    kn__trace_inputs(tr, in, f->nin);
    uint32_t saved_stamp = kn__trace_stamp;
    kn__trace = tr;
    kn__trace_stamp = tr->stamp;
    kn_pool_push();
    int rc = f->body(f->ctx, in, res);
    for (int k = 0; k < f->nout && rc == 0; k++) {
        if (!res[k]) {
            if (!kn_last_error()) kn__error("kn_function %s: the body left output %d NULL", f->name, k);
            rc = -1;
            break;
        }
        outs[k] = kn__value_of(tr, res[k]);
    }
    for (int k = 0; k < f->nout && rc == 0; k++) kn_retain(res[k]);
    kn__trace = NULL;
    kn__trace_stamp = saved_stamp;
    kn_pool_pop();
    if (rc != 0 || tr->oom) {
        if (rc == 0) {
            for (int k = 0; k < f->nout; k++) kn_release(res[k]);
            kn__error("kn_function %s: out of memory while tracing", f->name);
        } else if (!kn_last_error()) {
            kn__error("kn_function %s: the body returned %d", f->name, rc);
        }
        kn__trace_free(tr);
        return NULL;
    }
    return tr;
}

/* Runs the body once, recording. Outputs are the eager results. */
static int static_cache = -1;

static int trace_call(kn_fn *f, kn_tensor *const *in, kn_tensor **out, const uint8_t *sig, size_t siglen,
                      size_t symlen, bool force_exact, const char *why) {
    char reason[256];
    if (why) snprintf(reason, sizeof reason, "%s", why);
    else retrace_reason(f, in, reason, sizeof reason);
    f->stats.traces++;
    if (log_recompiles())
        fprintf(stderr, "kn_function %s: %s #%lld: %s\n", f->name, f->stats.traces == 1 ? "trace" : "retrace",
                (long long)f->stats.traces, reason);
    double t0 = now();
    kn_tensor *res[64] = {0};
    int outs[64];
    kn_trace *tr = kn__record_body(f, in, res, outs);
    f->stats.trace_seconds += now() - t0;
    if (!tr) return -1;
    for (int k = 0; k < f->nout; k++) out[k] = kn__hand_over(res[k]);
    /* State made inside the body (optimizer moments on their first step) is
     * a value of this trace, not a capture: such a trace runs once. */
    if (tr->stateful) {
        if (log_recompiles())
            fprintf(stderr, "kn_function %s: trace #%lld not kept: the body wrote into tensors it created "
                    "(state made on a first call, e.g. optimizer moments); the next call retraces\n",
                    f->name, (long long)f->stats.traces);
        kn__trace_free(tr);
        return 0;
    }
    plan pl = {.tr = tr};
    pl.sig = malloc(siglen);
    pl.outs = malloc((size_t)f->nout * sizeof *pl.outs);
    plan *grown = realloc(f->plans, (size_t)(f->nplans + 1) * sizeof *grown);
    if (grown) f->plans = grown;
    if (!pl.sig || !pl.outs || !grown || !kn__plan_build(&pl, tr, outs, f->nout)) {
        kn__plan_free(&pl);  /* the call itself succeeded: only caching failed */
        return 0;
    }
    memcpy(pl.sig, sig, siglen);
    pl.siglen = siglen;
    bool exact = tr->exact || force_exact || f->opts.static_shapes || kn__env(&static_cache, "KN_STATIC_SHAPES", NULL);
    pl.symlen = exact ? siglen : symlen;
    if (exact && log_recompiles())
        fprintf(stderr, "kn_function %s: trace #%lld serves its exact shapes only (%s)\n", f->name,
                (long long)f->stats.traces,
                force_exact ? "symbolic sizes failed for these shapes"
                : tr->exact ? "the body read sizes with kn_shape, kn_numel or kn_strides"
                            : "static_shapes or KN_STATIC_SHAPES");
    memcpy(pl.outs, outs, (size_t)f->nout * sizeof *outs);
    pl.id = ++f->next_id;
    fuse_plan(f, &pl, outs);
    f->plans[f->nplans++] = pl;
    f->stats.nodes = tr->nnodes;
    return 0;
}

int kn_call(kn_fn *f, kn_tensor *const *in, kn_tensor **out) {
    if (!f || !out || (f->nin && !in)) return kn__null_arg("kn_call"), -1;
    for (int i = 0; i < f->nin; i++)
        if (!in[i]) return kn__null_arg("kn_call"), -1;
    f->stats.calls++;
    /* Eager mode, and a kn_fn called while another is traced: run inline. */
    if (eager_env() || kn__trace) {
        f->stats.eager_calls++;
        kn_tensor *res[64] = {0};
        kn_pool_push();
        int rc = f->body(f->ctx, in, res);
        for (int k = 0; k < f->nout && rc == 0; k++) rc = res[k] ? 0 : -1;
        for (int k = 0; k < f->nout && rc == 0; k++) kn_retain(res[k]);
        kn_pool_pop();
        if (rc != 0) return kn_last_error() ? -1 : (kn__error("kn_function %s: the body failed", f->name), -1);
        for (int k = 0; k < f->nout; k++) out[k] = kn__hand_over(res[k]);
        return 0;
    }
    uint8_t sig[1 + 64 * (3 + KN_MAX_DIMS * 8)];
    size_t symlen, siglen = signature(in, f->nin, sig, &symlen);
    pthread_mutex_lock(&f->lock);
    const plan *hit = NULL;
    for (int i = f->nplans - 1; i >= 0 && !hit; i--)
        if (f->plans[i].siglen >= symlen && !memcmp(f->plans[i].sig, sig, f->plans[i].symlen) &&
            (f->plans[i].symlen < f->plans[i].siglen || f->plans[i].siglen == siglen) && ties_hold(&f->plans[i], in))
            hit = &f->plans[i];
    f->history[f->hpos] = !hit;
    f->hpos = (f->hpos + 1) % 10;
    /* A capture only the plan still holds was dropped by its owner (a
     * replaced parameter, say): the plan would read a stale tensor. */
    char why[160] = "";
    for (int c = 0; hit && c < hit->ncaptures; c++) {
        const tvalue *v = &hit->tr->vals[hit->captures[c]];
        if (atomic_load(&v->t->refcount) > 1) continue;
        char b[KN_SHAPE_BUF];
        snprintf(why, sizeof why, "captured tensor %%%d %s%s is no longer referenced outside the plan (replaced?)",
                 hit->captures[c], kn_dtype_name(v->dtype), kn__shape_str(v->shape, v->ndim, b));
        int at = (int)(hit - f->plans);
        kn__plan_free(&f->plans[at]);
        memmove(&f->plans[at], &f->plans[at + 1], (size_t)(f->nplans - at - 1) * sizeof *f->plans);
        f->nplans--;
        hit = NULL;
    }
    f->history[(f->hpos + 9) % 10] = !hit;
    int rc;
    if (hit) {
        f->stats.hits++;
        rc = shadow_env() ? kn__shadow_call(f, hit, in, out)
                          : kn__run_plan(f->name, hit, f->nout, in, out, &f->stats.peak_bytes, NULL);
        if (rc == KN__REPLAY_RESHAPE) {  /* symbolic sizes failed before any side effect */
            kn_clear_error();
            rc = trace_call(f, in, out, sig, siglen, symlen, true,
                            "a symbolic plan did not fit these sizes");
        }
    } else {
        rc = trace_call(f, in, out, sig, siglen, symlen, false, why[0] ? why : NULL);
        int recent = 0;
        for (int i = 0; i < 10; i++) recent += f->history[i];
        if (recent >= 5 && !f->warned) {
            f->warned = true;
            fprintf(stderr, "kn_function %s: warning: %d traces in the last 10 calls. The likely cause: "
                    "input shapes or dtypes change from call to call (plans are specialized to exact "
                    "shapes); pad batches to a few fixed sizes, or keep dtypes fixed\n", f->name, recent);
        }
    }
    if (f->nplans > 0) f->stats.planned_peak_bytes = arena_bytes(&f->plans[f->nplans - 1]);
    pthread_mutex_unlock(&f->lock);
    return rc;
}

