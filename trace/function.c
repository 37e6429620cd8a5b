/* kn_function: record a body's ops on its first call (trace by execution),
 * then replay the recorded graph for every later call with the same input
 * signature. The replay is the reference executor: node by node, through the
 * same eager ops, freeing each value after its last use. */
#include "trace.h"
#include "../eager/conv.h"
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

_Thread_local struct kn_trace *kn__trace;
_Thread_local uint32_t kn__trace_stamp;
static atomic_uint next_stamp = 1;

/* ---- the recorded graph ---- */
typedef enum { V_INPUT, V_CAPTURE, V_CONST, V_NODE, V_GRAD } vkind;
typedef struct {
    vkind kind;
    int index;          /* V_INPUT: input slot; V_NODE: node */
    kn_tensor *t;       /* V_CAPTURE: the tensor; V_CONST: a snapshot; V_GRAD: the leaf (owned) */
    kn_dtype dtype;
    int ndim;
    int64_t shape[KN_MAX_DIMS];
} tvalue;

typedef enum { N_OP, N_WRITE, N_SET_GRAD, N_ZERO_GRAD } nkind;
typedef struct {
    nkind kind;
    kn_op op;
    int nin;
    int *in;            /* value ids; -1 for a NULL argument */
    kn_params p;
    int out;            /* N_OP: value id of the result */
} tnode;

typedef struct kn_trace {
    uint32_t stamp;
    const char *name;
    tvalue *vals;
    int nvals, capv;
    tnode *nodes;
    int nnodes, capn;
    kn_tensor **held;   /* every tensor seen while recording: no address is reused */
    int nheld, caph;
    kn_tensor **mkey;   /* open-addressing map: tensor -> value id */
    int *mval, mcap, mcount;
    bool stateful;      /* wrote into a tensor created while tracing */
    bool has_backward;  /* set gradients: replay without building autograd graphs */
    bool oom;
} kn_trace;

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

static int map_get(kn_trace *tr, const kn_tensor *t) {
    if (!tr->mcap) return -1;
    for (size_t i = hash_ptr(t, tr->mcap);; i = (i + 1) & (size_t)(tr->mcap - 1)) {
        if (!tr->mkey[i]) return -1;
        if (tr->mkey[i] == t) return tr->mval[i];
    }
}

static void map_put(kn_trace *tr, kn_tensor *t, int v) {
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

static void hold(kn_trace *tr, kn_tensor *t) {
    if (!grow((void **)&tr->held, &tr->caph, tr->nheld + 1, sizeof *tr->held)) {
        tr->oom = true;
        return;
    }
    tr->held[tr->nheld++] = kn_retain(t);
}

static int new_value(kn_trace *tr, vkind kind, int index, kn_tensor *owned, const kn_tensor *like) {
    if (!grow((void **)&tr->vals, &tr->capv, tr->nvals + 1, sizeof *tr->vals)) {
        tr->oom = true;
        kn_release(owned);
        return -1;
    }
    tvalue *v = &tr->vals[tr->nvals];
    *v = (tvalue){.kind = kind, .index = index, .t = owned, .dtype = like->dtype, .ndim = like->ndim};
    memcpy(v->shape, like->shape, sizeof v->shape);
    return tr->nvals++;
}

/* The value a tensor stands for; first sight of an unknown tensor makes it a
 * constant (made while tracing: snapshot now) or a capture (by reference). */
static int value_of(kn_trace *tr, kn_tensor *t) {
    if (!t) return -1;
    int v = map_get(tr, t);
    if (v >= 0) return v;
    if (t->trace_stamp == tr->stamp) {
        kn_tensor *c = kn__alloc(t->shape, t->ndim, t->dtype);
        if (!c) {
            tr->oom = true;
            return -1;
        }
        kn__copy(c, t);
        c->wrapped = t->wrapped;
        kn_keep(c);
        v = new_value(tr, V_CONST, 0, c, t);
    } else {
        v = new_value(tr, V_CAPTURE, 0, kn_retain(t), t);
    }
    if (v >= 0) {
        map_put(tr, t, v);
        hold(tr, t);
    }
    return v;
}

static tnode *new_node(kn_trace *tr, nkind kind, kn_op op, int nin) {
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
    for (int i = 0; i < nin; i++) ids[i] = value_of(tr, in[i]);
    tnode *n = new_node(tr, N_OP, op, nin);
    if (!n) return;
    memcpy(n->in, ids, (size_t)nin * sizeof *ids);
    if (p) n->p = *p;
    int v = new_value(tr, V_NODE, tr->nnodes - 1, NULL, out);
    n->out = v;
    if (v >= 0) {
        map_put(tr, out, v);
        hold(tr, out);
    }
}

void kn__trace_alias(kn_tensor *alias, kn_tensor *t) {
    kn_trace *tr = kn__trace;
    if (!tr || !alias || !t) return;
    int v = value_of(tr, t);
    if (v < 0) return;
    map_put(tr, alias, v);
    hold(tr, alias);
}

static void side_effect(nkind kind, kn_tensor *a, kn_tensor *b) {
    kn_trace *tr = kn__trace;
    if (!tr) return;
    int va = value_of(tr, a), vb = b ? value_of(tr, b) : -1;
    tnode *n = new_node(tr, kind, KN_OP_COUNT, b ? 2 : 1);
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
    if (!tr || !g || map_get(tr, g) >= 0) return;
    int v = new_value(tr, V_GRAD, 0, kn_retain(leaf), g);
    if (v < 0) return;
    map_put(tr, g, v);
    hold(tr, g);
}

bool kn__trace_read_error(const char *op, const kn_tensor *t) {
    (void)t;
    if (!kn__trace) return false;
    kn__error("%s: cannot read a tensor's values while kn_function '%s' is being traced: the value "
              "would be baked into every later call (compute with kn_where or kn_cond instead, or "
              "read the outputs after kn_call)", op, kn__trace->name);
    return true;
}

static void trace_free(kn_trace *tr) {
    if (!tr) return;
    for (int i = 0; i < tr->nheld; i++) kn_release(tr->held[i]);
    for (int i = 0; i < tr->nvals; i++) kn_release(tr->vals[i].t);
    for (int i = 0; i < tr->nnodes; i++) free(tr->nodes[i].in);
    free(tr->held);
    free(tr->vals);
    free(tr->nodes);
    free(tr->mkey);
    free(tr->mval);
    free(tr);
}

/* ---- plans and the function object ---- */
typedef struct {
    uint8_t *sig;
    size_t siglen;
    kn_trace *tr;       /* after dead-code elimination; held tensors dropped */
    int *outs;          /* value id per output */
    int *last_use;      /* per value: index of the last node reading it */
} plan;

struct kn_fn {
    const char *name;
    kn_body body;
    void *ctx;
    int nin, nout;
    pthread_mutex_t lock;
    plan *plans;
    int nplans;
    kn_fn_stats_t stats;
    bool history[10];   /* whether each of the last 10 calls traced */
    int hpos;
    bool warned;
};

static atomic_bool force_eager;
void kn_run_functions_eagerly(bool on) { atomic_store(&force_eager, on); }

static bool eager_env(void) {
    static int cached = -1;
    if (cached < 0) {
        const char *e = getenv("KN_EAGER");
        cached = e && *e && strcmp(e, "0") != 0;
    }
    return cached || atomic_load(&force_eager);
}

static bool log_recompiles(void) {
    static int cached = -1;
    if (cached < 0) {
        const char *e = getenv("KN_LOG");
        cached = e && strstr(e, "recompiles") != NULL;
    }
    return cached;
}

kn_fn *kn_function(const char *name, kn_body body, void *ctx, int nin, int nout, const void *opts) {
    (void)opts;
    if (!name || !body) return kn__null_arg("kn_function");
    if (nin < 0 || nout < 1 || nin > 64 || nout > 64)
        return kn__error("kn_function %s: %d inputs and %d outputs (expected 0..64 and 1..64)", name, nin, nout);
    kn_fn *f = calloc(1, sizeof *f);
    if (!f) return kn__error("kn_function %s: out of memory", name);
    *f = (kn_fn){.name = name, .body = body, .ctx = ctx, .nin = nin, .nout = nout};
    pthread_mutex_init(&f->lock, NULL);
    return f;
}

static void plan_free(plan *p) {
    free(p->sig);
    free(p->outs);
    free(p->last_use);
    trace_free(p->tr);
}

void kn_fn_free(kn_fn *f) {
    if (!f) return;
    for (int i = 0; i < f->nplans; i++) plan_free(&f->plans[i]);
    free(f->plans);
    pthread_mutex_destroy(&f->lock);
    free(f);
}

kn_fn_stats_t kn_fn_stats(const kn_fn *f) { return f ? f->stats : (kn_fn_stats_t){0}; }

/* The signature: grad mode, then per input dtype, rank, requires-grad and
 * shape. Shapes are exact: derivative rules bake sizes into constants (the
 * 1/N of a mean), so a plan is only valid for the shapes it was traced at. */
static size_t signature(kn_tensor *const *in, int nin, uint8_t *buf) {
    size_t n = 0;
    buf[n++] = kn_grad_enabled();
    for (int i = 0; i < nin; i++) {
        buf[n++] = (uint8_t)in[i]->dtype;
        buf[n++] = (uint8_t)in[i]->ndim;
        buf[n++] = in[i]->requires_grad;
        memcpy(buf + n, in[i]->shape, (size_t)in[i]->ndim * sizeof(int64_t));
        n += (size_t)in[i]->ndim * sizeof(int64_t);
    }
    return n;
}

/* Why sig differs from the newest plan's, for the retrace log. */
static void retrace_reason(const kn_fn *f, kn_tensor *const *in, char *buf, size_t len) {
    if (f->nplans == 0) {
        snprintf(buf, len, "first call");
        return;
    }
    const uint8_t *s = f->plans[f->nplans - 1].sig;
    if (s[0] != kn_grad_enabled()) {
        snprintf(buf, len, "grad mode %s -> %s", s[0] ? "on" : "off", s[0] ? "off" : "on");
        return;
    }
    size_t pos = 1;
    for (int i = 0; i < f->nin; i++) {
        kn_dtype dt = (kn_dtype)s[pos];
        int nd = s[pos + 1];
        bool rg = s[pos + 2];
        int64_t shape[KN_MAX_DIMS];
        memcpy(shape, s + pos + 3, (size_t)nd * sizeof(int64_t));
        pos += 3 + (size_t)nd * sizeof(int64_t);
        char b0[KN_SHAPE_BUF], b1[KN_SHAPE_BUF];
        if (dt != in[i]->dtype)
            snprintf(buf, len, "input %d dtype %s -> %s", i, kn_dtype_name(dt), kn_dtype_name(in[i]->dtype));
        else if (rg != in[i]->requires_grad)
            snprintf(buf, len, "input %d requires_grad %d -> %d", i, rg, in[i]->requires_grad);
        else if (nd != in[i]->ndim || memcmp(shape, in[i]->shape, (size_t)nd * sizeof(int64_t)))
            snprintf(buf, len, "input %d shape %s -> %s", i, kn__shape_str(shape, nd, b0),
                     kn__shape_str(in[i]->shape, in[i]->ndim, b1));
        else
            continue;
        return;
    }
    snprintf(buf, len, "the previous trace could not be kept");
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Hands a tensor we hold one reference to over to the caller's pool. */
static kn_tensor *hand_over(kn_tensor *t) {
    kn__ret(t);
    kn_release(t);
    return t;
}

/* Keeps the nodes that reach an output or have a side effect; numbers the
 * last use of every value. */
static bool build_plan(plan *pl, kn_trace *tr, const int *outs, int nout) {
    bool *live = calloc((size_t)tr->nvals + 1, sizeof *live);
    bool *keep = calloc((size_t)tr->nnodes + 1, sizeof *keep);
    pl->last_use = malloc(((size_t)tr->nvals + 1) * sizeof *pl->last_use);
    if (!live || !keep || !pl->last_use) {
        free(live);
        free(keep);
        return false;
    }
    for (int k = 0; k < nout; k++)
        if (outs[k] >= 0) live[outs[k]] = true;
    for (int i = tr->nnodes - 1; i >= 0; i--) {
        tnode *n = &tr->nodes[i];
        keep[i] = n->kind != N_OP || (n->out >= 0 && live[n->out]);
        for (int j = 0; keep[i] && j < n->nin; j++)
            if (n->in[j] >= 0) live[n->in[j]] = true;
    }
    int m = 0;
    for (int i = 0; i < tr->nnodes; i++) {
        if (!keep[i]) {
            free(tr->nodes[i].in);
            continue;
        }
        tr->nodes[m] = tr->nodes[i];
        if (tr->nodes[m].out >= 0) tr->vals[tr->nodes[m].out].index = m;
        m++;
    }
    tr->nnodes = m;
    for (int v = 0; v < tr->nvals; v++) pl->last_use[v] = -1;
    for (int i = 0; i < m; i++)
        for (int j = 0; j < tr->nodes[i].nin; j++)
            if (tr->nodes[i].in[j] >= 0) pl->last_use[tr->nodes[i].in[j]] = i;
    for (int k = 0; k < nout; k++)
        if (outs[k] >= 0) pl->last_use[outs[k]] = INT32_MAX;
    /* The recording is over: drop the tensors held against address reuse. */
    for (int i = 0; i < tr->nheld; i++) kn_release(tr->held[i]);
    free(tr->held);
    tr->held = NULL;
    tr->nheld = tr->caph = 0;
    free(tr->mkey);
    free(tr->mval);
    tr->mkey = NULL;
    tr->mval = NULL;
    tr->mcap = tr->mcount = 0;
    free(live);
    free(keep);
    return true;
}

/* Runs the body once, recording. Outputs are the eager results. */
static int trace_call(kn_fn *f, kn_tensor *const *in, kn_tensor **out, const uint8_t *sig, size_t siglen) {
    char reason[256];
    retrace_reason(f, in, reason, sizeof reason);
    f->stats.traces++;
    if (log_recompiles())
        fprintf(stderr, "kn_function %s: %s #%lld: %s\n", f->name, f->stats.traces == 1 ? "trace" : "retrace",
                (long long)f->stats.traces, reason);
    double t0 = now();
    kn_trace *tr = calloc(1, sizeof *tr);
    if (!tr) return kn__error("kn_function %s: out of memory", f->name), -1;
    tr->stamp = atomic_fetch_add(&next_stamp, 1);
    tr->name = f->name;
    for (int i = 0; i < f->nin; i++) {
        int v = map_get(tr, in[i]);
        if (v < 0) {  /* the same tensor twice is one input value */
            v = new_value(tr, V_INPUT, i, NULL, in[i]);
            if (v >= 0) {
                map_put(tr, in[i], v);
                hold(tr, in[i]);
            }
        }
    }
    kn_tensor *res[64] = {0};
    uint32_t saved_stamp = kn__trace_stamp;
    kn__trace = tr;
    kn__trace_stamp = tr->stamp;
    kn_pool_push();
    int rc = f->body(f->ctx, in, res);
    int outs[64];
    for (int k = 0; k < f->nout && rc == 0; k++) {
        if (!res[k]) {
            if (!kn_last_error()) kn__error("kn_function %s: the body left output %d NULL", f->name, k);
            rc = -1;
            break;
        }
        outs[k] = value_of(tr, res[k]);
    }
    for (int k = 0; k < f->nout && rc == 0; k++) kn_retain(res[k]);
    kn__trace = NULL;
    kn__trace_stamp = saved_stamp;
    kn_pool_pop();
    f->stats.trace_seconds += now() - t0;
    if (rc != 0 || tr->oom) {
        if (rc == 0) {
            for (int k = 0; k < f->nout; k++) kn_release(res[k]);
            kn__error("kn_function %s: out of memory while tracing", f->name);
        } else if (!kn_last_error()) {
            kn__error("kn_function %s: the body returned %d", f->name, rc);
        }
        trace_free(tr);
        return -1;
    }
    for (int k = 0; k < f->nout; k++) out[k] = hand_over(res[k]);
    /* State made inside the body (optimizer moments on their first step) is
     * a value of this trace, not a capture: such a trace runs once. */
    if (tr->stateful) {
        if (log_recompiles())
            fprintf(stderr, "kn_function %s: trace #%lld not kept: the body wrote into tensors it created "
                    "(state made on a first call, e.g. optimizer moments); the next call retraces\n",
                    f->name, (long long)f->stats.traces);
        trace_free(tr);
        return 0;
    }
    plan pl = {.tr = tr};
    pl.sig = malloc(siglen);
    pl.outs = malloc((size_t)f->nout * sizeof *pl.outs);
    plan *grown = realloc(f->plans, (size_t)(f->nplans + 1) * sizeof *grown);
    if (grown) f->plans = grown;
    if (!pl.sig || !pl.outs || !grown || !build_plan(&pl, tr, outs, f->nout)) {
        plan_free(&pl);  /* the call itself succeeded: only caching failed */
        return 0;
    }
    memcpy(pl.sig, sig, siglen);
    pl.siglen = siglen;
    memcpy(pl.outs, outs, (size_t)f->nout * sizeof *outs);
    f->plans[f->nplans++] = pl;
    f->stats.nodes = tr->nnodes;
    return 0;
}

/* ---- replay ---- */
static int dims_of_mask(int64_t mask, int *dims) {
    int n = 0;
    for (int d = 0; d < KN_MAX_DIMS; d++)
        if (mask >> d & 1) dims[n++] = d;
    return n;
}

/* Runs one recorded op on actual tensors. */
static kn_tensor *op_call(const tnode *n, const tvalue *outv, kn_tensor **a) {
    const kn_params *p = &n->p;
    int dims[KN_MAX_DIMS], nd = dims_of_mask(p->i[0], dims);
    bool keep = p->i[1] != 0;
    switch (n->op) {
#define KN_UNARY_FLOAT(name) case KN_OP_##name: return kn_##name(a[0]);
#define KN_UNARY_FLOAT_NOAPI(name)
#define KN_BINARY(name) case KN_OP_##name: return kn_##name(a[0], a[1]);
#define KN_COMPARE(name, op) KN_BINARY(name)
#define KN_LOGICAL(name, op) KN_BINARY(name)
#include "../core/ops.def"
    case KN_OP_gelu: return kn_gelu(a[0], KN_GELU_ERF);
    case KN_OP_gelu_tanh: return kn_gelu(a[0], KN_GELU_TANH);
    case KN_OP_neg: return kn_neg(a[0]);
    case KN_OP_abs: return kn_abs(a[0]);
    case KN_OP_relu: return kn_relu(a[0]);
    case KN_OP_clamp: return kn_clamp(a[0], p->d[0], p->d[1]);
    case KN_OP_logical_not: return kn_logical_not(a[0]);
    case KN_OP_where: return kn_where(a[0], a[1], a[2]);
    case KN_OP_cast: return kn_cast(a[0], outv->dtype);
    case KN_OP_sum: return kn_sum(a[0], dims, nd, keep);
    case KN_OP_mean: return kn_mean(a[0], dims, nd, keep);
    case KN_OP_max: return kn_max(a[0], dims, nd, keep);
    case KN_OP_min: return kn_min(a[0], dims, nd, keep);
    case KN_OP_var: return kn_var(a[0], dims, nd, (int)p->i[2], keep);
    case KN_OP_logsumexp: return kn_logsumexp(a[0], dims, nd, keep);
    case KN_OP_argmax: return kn_argmax(a[0], nd ? dims[0] : 0, keep);
    case KN_OP_argmin: return kn_argmin(a[0], nd ? dims[0] : 0, keep);
    case KN_OP_rand: return kn_rand(outv->shape, outv->ndim, outv->dtype);
    case KN_OP_randn: return kn_randn(outv->shape, outv->ndim, outv->dtype);
    case KN_OP_reshape: return kn_reshape(a[0], outv->shape, outv->ndim);
    case KN_OP_permute: {
        int perm[KN_MAX_DIMS];
        for (int d = 0; d < outv->ndim; d++) perm[d] = (int)p->i[d];
        return kn_permute(a[0], perm, outv->ndim);
    }
    case KN_OP_slice: {
        int dim = (int)p->i[0];
        int64_t start = p->i[1], step = p->i[2], len = outv->shape[dim];
        return kn_slice(a[0], dim, start, len ? start + (len - 1) * step + 1 : start, step);
    }
    case KN_OP_expand: return kn_expand(a[0], outv->shape, outv->ndim);
    case KN_OP_contiguous: return kn_contiguous(a[0]);
    case KN_OP_cat: return kn_cat(a, n->nin, (int)p->i[0]);
    case KN_OP_gather: return kn_gather(a[0], (int)p->i[0], a[1]);
    case KN_OP_index_select: return kn_index_select(a[0], (int)p->i[0], a[1]);
    case KN_OP_scatter_add: return kn_scatter_add(a[0], (int)p->i[0], a[1], a[2]);
    case KN_OP_index_add: return kn_index_add(a[0], (int)p->i[0], a[1], a[2]);
    case KN_OP_matmul: return kn_matmul(a[0], a[1]);
    case KN_OP_linear: return kn_linear(a[0], a[1], n->nin > 2 ? a[2] : NULL);
    case KN_OP_softmax: return kn_softmax(a[0], (int)p->i[0]);
    case KN_OP_log_softmax: return kn_log_softmax(a[0], (int)p->i[0]);
    case KN_OP_layer_norm:
        return kn_layer_norm(a[0], (int)p->i[0], n->nin > 1 ? a[1] : NULL, n->nin > 2 ? a[2] : NULL, p->d[0]);
    case KN_OP_cross_entropy: return kn_cross_entropy(a[0], a[1], (kn_reduction)p->i[0]);
    case KN_OP_conv2d: return kn_conv2d(a[0], a[1], n->nin > 2 ? a[2] : NULL, (int)p->i[0], (int)p->i[1]);
    case KN_OP_conv2d_grad_input: return kn__conv2d_grad_input(a[0], a[1], &p->i[2], (int)p->i[0], (int)p->i[1]);
    case KN_OP_conv2d_grad_weight: return kn__conv2d_grad_weight(a[0], a[1], &p->i[2], (int)p->i[0], (int)p->i[1]);
    case KN_OP_max_pool2d: return kn_max_pool2d(a[0], (int)p->i[0], (int)p->i[1], (int)p->i[2]);
    case KN_OP_max_pool2d_grad: return kn__max_pool2d_grad(a[0], a[1], (int)p->i[0], (int)p->i[1], (int)p->i[2]);
    default: return kn__error("kn_call: op kn_%s cannot be replayed", kn_op_table[n->op].name);
    }
}

static int replay(kn_fn *f, const plan *pl, kn_tensor *const *in, kn_tensor **out) {
    const kn_trace *tr = pl->tr;
    kn_tensor **v = calloc((size_t)tr->nvals + 1, sizeof *v);
    if (!v) return kn__error("kn_call %s: out of memory", f->name), -1;
    int rc = 0;
    for (int i = 0; i < tr->nvals && rc == 0; i++) {
        const tvalue *tv = &tr->vals[i];
        if (tv->kind == V_INPUT) v[i] = in[tv->index];
        else if (tv->kind == V_CAPTURE || tv->kind == V_CONST) v[i] = tv->t;
        else if (tv->kind == V_GRAD && !(v[i] = tv->t->grad) && pl->last_use[i] >= 0)
            rc = -1, kn__error("kn_call %s: a gradient the trace reads is missing (it existed when the "
                               "function was traced)", f->name);
    }
    kn_pool_push();
    if (tr->has_backward) kn_no_grad_begin();
    for (int k = 0; k < tr->nnodes && rc == 0; k++) {
        const tnode *n = &tr->nodes[k];
        kn_tensor *args[64];
        for (int j = 0; j < n->nin; j++) args[j] = n->in[j] >= 0 ? v[n->in[j]] : NULL;
        switch (n->kind) {
        case N_OP:
            if (!(v[n->out] = op_call(n, &tr->vals[n->out], args))) rc = -1;
            break;
        case N_WRITE:
            if (args[1]->dtype != args[0]->dtype || kn_numel(args[1]) > kn_numel(args[0])) {
                rc = -1;
                kn__error("kn_call %s: an in-place write no longer fits its target", f->name);
                break;
            }
            kn__copy(args[0], args[1]);
            kn__bump_version(args[0]);
            break;
        case N_SET_GRAD:
            kn_release(args[0]->grad);
            args[0]->grad = kn_retain(args[1]);
            break;
        case N_ZERO_GRAD:
            kn_zero_grad(args[0]);
            break;
        }
        /* Free node values after their last use (liveness). */
        for (int j = 0; j < n->nin; j++) {
            int id = n->in[j];
            if (id >= 0 && pl->last_use[id] == k && tr->vals[id].kind == V_NODE && v[id]) {
                kn__drop(v[id]);
                v[id] = NULL;
            }
        }
    }
    if (tr->has_backward) kn_no_grad_end();
    if (rc == 0)
        for (int k = 0; k < f->nout; k++) kn_retain(v[pl->outs[k]]);
    kn_pool_pop();
    if (rc == 0)
        for (int k = 0; k < f->nout; k++) out[k] = hand_over(v[pl->outs[k]]);
    free(v);
    return rc;
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
        for (int k = 0; k < f->nout; k++) out[k] = hand_over(res[k]);
        return 0;
    }
    uint8_t sig[1 + 64 * (3 + KN_MAX_DIMS * 8)];
    size_t siglen = signature(in, f->nin, sig);
    pthread_mutex_lock(&f->lock);
    const plan *hit = NULL;
    for (int i = f->nplans - 1; i >= 0 && !hit; i--)
        if (f->plans[i].siglen == siglen && !memcmp(f->plans[i].sig, sig, siglen)) hit = &f->plans[i];
    f->history[f->hpos] = !hit;
    f->hpos = (f->hpos + 1) % 10;
    int rc;
    if (hit) {
        f->stats.hits++;
        rc = replay(f, hit, in, out);
    } else {
        rc = trace_call(f, in, out, sig, siglen);
        int recent = 0;
        for (int i = 0; i < 10; i++) recent += f->history[i];
        if (recent >= 5 && !f->warned) {
            f->warned = true;
            fprintf(stderr, "kn_function %s: warning: %d traces in the last 10 calls. The likely cause: "
                    "input shapes or dtypes change from call to call (plans are specialized to exact "
                    "shapes); pad batches to a few fixed sizes, or keep dtypes fixed\n", f->name, recent);
        }
    }
    pthread_mutex_unlock(&f->lock);
    return rc;
}

/* ---- dumps ---- */
static void put_value(FILE *o, const tvalue *v) {
    char b[KN_SHAPE_BUF];
    fprintf(o, "%s%s", kn_dtype_name(v->dtype), kn__shape_str(v->shape, v->ndim, b));
}

void kn_fn_dump(const kn_fn *f, FILE *o) {
    if (!f || !o) return;
    if (f->nplans == 0) {
        fprintf(o, "kn_function %s: not traced yet\n", f->name);
        return;
    }
    const plan *pl = &f->plans[f->nplans - 1];
    const kn_trace *tr = pl->tr;
    fprintf(o, "kn_function %s: plan %d of %d, %d nodes\n", f->name, f->nplans, f->nplans, tr->nnodes);
    static const char *kinds[] = {"input", "capture", "const", "node", "grad of"};
    for (int i = 0; i < tr->nvals; i++) {
        const tvalue *v = &tr->vals[i];
        if (v->kind == V_NODE || pl->last_use[i] < 0) continue;
        fprintf(o, "  %%%d = %s", i, kinds[v->kind]);
        if (v->kind == V_INPUT) fprintf(o, " %d", v->index);
        fputc(' ', o);
        put_value(o, v);
        fputc('\n', o);
    }
    for (int k = 0; k < tr->nnodes; k++) {
        const tnode *n = &tr->nodes[k];
        if (n->kind == N_OP) {
            fprintf(o, "  %%%d = %s(", n->out, kn_op_table[n->op].name);
        } else {
            fprintf(o, "  %s(", n->kind == N_WRITE ? "write" : n->kind == N_SET_GRAD ? "set_grad" : "zero_grad");
        }
        for (int j = 0; j < n->nin; j++) {
            if (n->in[j] >= 0) fprintf(o, "%s%%%d", j ? ", " : "", n->in[j]);
            else fprintf(o, "%snull", j ? ", " : "");
        }
        fputc(')', o);
        if (n->kind == N_OP) {
            fputc(' ', o);
            put_value(o, &tr->vals[n->out]);
        }
        fputc('\n', o);
    }
    fprintf(o, "  return");
    for (int k = 0; k < f->nout; k++) fprintf(o, "%s %%%d", k ? "," : "", pl->outs[k]);
    fputc('\n', o);
}
