/* Passes over a recorded trace: write forwarding, constant folding,
 * common-subexpression elimination, algebraic simplification, dead writes,
 * dead-code elimination (which also drops the autograd nodes no output or
 * side effect needs) and matmul epilogues. */
#include "ir.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

static bool dump_ir(void) {
    static int cache = -1;
    return kn__env(&cache, "KN_DUMP", "ir");
}

static bool is_random(kn_op op) { return op == KN_OP_rand || op == KN_OP_randn; }

static bool same_shape(const tvalue *a, const tvalue *b) {
    return a->dtype == b->dtype && a->ndim == b->ndim &&
           !memcmp(a->shape, b->shape, (size_t)a->ndim * sizeof(int64_t));
}

/* A constant whose every element equals v. */
static bool const_all(const kn_trace *tr, int id, double v) {
    if (id < 0 || tr->vals[id].kind != V_CONST) return false;
    const kn_tensor *t = tr->vals[id].t;
    int64_t n = kn__tnumel(t);
    size_t sz = kn_dtype_size(t->dtype);
    for (int64_t i = 0; i < n; i++)
        if (kn__load((const char *)t->storage->data + (size_t)i * sz, t->dtype) != v) return false;
    return n > 0;
}

/* A constant whose every element is a zero of this sign: x + (-0) and
 * x - (+0) give x for every x, x + (+0) turns -0 into +0. */
static bool const_zero(const kn_trace *tr, int id, bool negative) {
    if (!const_all(tr, id, 0)) return false;
    const kn_tensor *t = tr->vals[id].t;
    size_t sz = kn_dtype_size(t->dtype);
    for (int64_t i = 0; i < kn__tnumel(t); i++)
        if (signbit(kn__load((const char *)t->storage->data + (size_t)i * sz, t->dtype)) != negative) return false;
    return true;
}

static bool unchanging(const kn_trace *tr, int id);

/* A value that is contiguous at every call: a constant or a computing op's result. */
static bool contiguous_value(const kn_trace *tr, int id) {
    const tvalue *v = &tr->vals[id];
    if (v->kind == V_CONST) return kn_is_contiguous(v->t);
    if (v->kind != V_NODE) return false;
    const tnode *m = &tr->nodes[v->index];
    return m->kind == N_OP && kn_op_table[m->op].kind != KN_KIND_VIEW;
}

/* x*1, 1*x, x/1, x+0, 0+x, x-0, a cast to x's dtype and a permute undoing
 * a permute give an input unchanged: the value it stands for, or -1. (The
 * autograd engine casts each leaf's gradient, a copy of a fresh matmul
 * result in a train step.) */
static int identity_of(const kn_trace *tr, const tnode *n) {
    const tvalue *out = &tr->vals[n->out];
    int a = n->nin > 0 ? n->in[0] : -1, b = n->nin > 1 ? n->in[1] : -1;
    int keep = -1;
    switch (n->op) {
    case KN_OP_mul: keep = const_all(tr, b, 1) ? a : const_all(tr, a, 1) ? b : -1; break;
    case KN_OP_div: keep = const_all(tr, b, 1) ? a : -1; break;
    case KN_OP_add: {
        bool fl = out->dtype == KN_F32 || out->dtype == KN_F64;  /* -0 + +0 is +0 */
        keep = (fl ? const_zero(tr, b, true) : const_all(tr, b, 0)) ? a
             : (fl ? const_zero(tr, a, true) : const_all(tr, a, 0)) ? b : -1;
        break;
    }
    case KN_OP_sub: keep = const_zero(tr, b, false) ? a : -1; break;
    case KN_OP_cast:  /* a copy; only of a computed value (never a tensor the caller holds) */
        keep = a >= 0 && tr->vals[a].kind == V_NODE && unchanging(tr, a) ? a : -1;
        break;
    case KN_OP_permute: {
        if (a < 0 || tr->vals[a].kind != V_NODE) break;
        const tnode *m = &tr->nodes[tr->vals[a].index];
        if (m->kind != N_OP || m->op != KN_OP_permute) break;
        bool undo = true;
        for (int d = 0; d < out->ndim && undo; d++) undo = m->p.i[n->p.i[d]] == d;
        keep = undo ? m->in[0] : -1;
        break;
    }
    default: break;
    }
    /* Only when nothing about the value changes: dtype and shape included, and
     * layout (the op's result is contiguous; a reduction or matmul reading a
     * strided capture, input or view instead adds in another order). */
    return keep >= 0 && same_shape(&tr->vals[keep], out) && contiguous_value(tr, keep) ? keep : -1;
}

/* A value no write of the plan can change: a constant or a computed result
 * (a view follows its source; a kn_cond result may be what a branch read). */
static bool unchanging(const kn_trace *tr, int id) {
    while (id >= 0) {
        const tvalue *v = &tr->vals[id];
        if (v->kind == V_CONST) return true;
        if (v->kind != V_NODE) return false;
        const tnode *m = &tr->nodes[v->index];
        if (m->kind != N_OP) return false;
        if (kn_op_table[m->op].kind != KN_KIND_VIEW) return true;
        id = m->in[0];
    }
    return false;
}

/* reshape(reshape(x)) reads x directly. In a plan that writes, only when x
 * cannot change: the inner reshape may have been a copy taken before a write. */
static void skip_reshape_chain(kn_trace *tr, tnode *n, bool writes) {
    if (n->op != KN_OP_reshape || n->in[0] < 0 || tr->vals[n->in[0]].kind != V_NODE) return;
    const tnode *m = &tr->nodes[tr->vals[n->in[0]].index];
    if (m->kind == N_OP && m->op == KN_OP_reshape && (!writes || unchanging(tr, m->in[0]))) n->in[0] = m->in[0];
}

/* Same op on the same values with the same params and result type: some ops
 * (reshape, expand, cast) take their target from the result, not params. */
static bool same_node(const kn_trace *tr, const tnode *a, const tnode *b) {
    const tvalue *va = &tr->vals[a->out], *vb = &tr->vals[b->out];
    return a->op == b->op && a->nin == b->nin && !memcmp(a->in, b->in, (size_t)a->nin * sizeof(int)) &&
           !memcmp(&a->p, &b->p, sizeof a->p) && same_shape(va, vb) &&
           !memcmp(va->sym, vb->sym, sizeof va->sym);
}

/* Evaluates a node whose inputs are all constants; the new constant's id, or -1. */
static int fold(kn_trace *tr, const tnode *n) {
    if (n->nin == 0 || is_random(n->op)) return -1;
    kn_tensor *args[KN_NODE_MAX_IN];
    for (int j = 0; j < n->nin; j++) {
        if (n->in[j] >= 0 && tr->vals[n->in[j]].kind != V_CONST) return -1;
        args[j] = n->in[j] >= 0 ? tr->vals[n->in[j]].t : NULL;
    }
    kn_no_grad_begin();
    kn_tensor *r = kn__op_call(n, &tr->vals[n->out], args);
    kn_no_grad_end();
    if (!r) {  /* an op that fails on constants fails at call time too: leave it */
        kn_clear_error();
        return -1;
    }
    kn_tensor *c = kn_contiguous(r);  /* never a view of another constant */
    if (c == r) c = kn_cast(r, r->dtype);
    kn__drop(r);
    if (!c) return -1;
    kn_keep(c);
    tvalue *v = &tr->vals[n->out];
    v->kind = V_CONST;
    v->t = c;
    return n->out;
}

/* ---- write forwarding and dead writes ----
 * kn_mul_(m, b1) then kn_add_(m, u) records write(m, m*b1) and a read of m
 * after it. Reading the written value instead (forwarding) and dropping a
 * write that a later write to the same tensor overwrites before anyone reads
 * it turns the pair into one expression written once, which fusion can then
 * compile into one kernel. Both need to know which values may share storage. */

#define ROOT_FRESH (-1)  /* storage of its own that no write of the plan reaches */
#define ROOT_ANY (-2)    /* may share storage with any tensor */

/* Where each value's storage comes from: a capture or a gradient (its own
 * value id; gradients are copies kn_backward made, so they share nothing),
 * ROOT_ANY for inputs (a caller may pass a view of a capture) and kn_cond
 * results (a branch may return what it reads), ROOT_FRESH for results of
 * computing ops and constants; views share their source's root. */
static void root_of_leaves(const kn_trace *tr, int *root) {
    for (int v = 0; v < tr->nvals; v++) {
        vkind k = tr->vals[v].kind;
        root[v] = k == V_CAPTURE || k == V_GRAD ? v : k == V_INPUT ? ROOT_ANY : ROOT_FRESH;
    }
}

static void root_of_results(const tnode *n, int *root) {
    if (n->out < 0) return;
    if (n->kind == N_COND) {
        for (int k = 0; k < n->nout; k++) root[n->out + k] = ROOT_ANY;
    } else if (n->kind == N_OP) {
        bool view = kn_op_table[n->op].kind == KN_KIND_VIEW && n->in[0] >= 0;
        root[n->out] = view ? root[n->in[0]] : ROOT_FRESH;
    }
}

/* Value u may share storage with capture x. */
static bool may_alias(const kn_trace *tr, const int *root, int u, int x) {
    int r = u >= 0 ? root[u] : ROOT_FRESH;
    if (r == ROOT_ANY || r == x) return true;
    if (r == ROOT_FRESH || tr->vals[r].kind != V_CAPTURE) return false;
    return tr->vals[r].t->storage == tr->vals[x].t->storage;
}

static bool same_dims(const tvalue *a, const tvalue *b) {
    return a->ndim == b->ndim && !memcmp(a->shape, b->shape, (size_t)a->ndim * sizeof(int64_t));
}

/* v has capture x's shape at every call, or its node fails its shape check:
 * x's static shape, or an elementwise result of x's shape with an operand
 * that has it (broadcasting gives that shape or fails). A symbolic dim that
 * only coincides with x's (a batch of 128 and 128 features) might not. */
static bool pinned_to(const kn_trace *tr, int v, int x, int depth) {
    const tvalue *tv = &tr->vals[v], *tx = &tr->vals[x];
    if (!same_dims(tv, tx)) return false;
    bool symbolic = false;
    for (int d = 0; d < tv->ndim; d++) symbolic |= tv->sym[d] >= 0;
    if (!symbolic) return true;
    if (tv->kind != V_NODE || depth == 0) return false;
    const tnode *n = &tr->nodes[tv->index];
    if (n->kind != N_OP || kn_op_table[n->op].kind != KN_KIND_ELEMENTWISE) return false;
    for (int j = 0; j < n->nin; j++)
        if (n->in[j] >= 0 && pinned_to(tr, n->in[j], x, depth - 1)) return true;
    return false;
}

/* A capture whose writes we may forward and drop: after write(x, v) its
 * elements are exactly v's (contiguous: no element stored twice), and no
 * autograd graph at call time depends on reading x itself. */
static bool tracked_target(const kn_trace *tr, int x) {
    const tvalue *v = x >= 0 ? &tr->vals[x] : NULL;
    return v && v->kind == V_CAPTURE && kn_is_contiguous(v->t) && !(v->t->requires_grad && !tr->has_backward);
}

/* Input j of n may read a forwarded value in place of the tensor: not the
 * target of a write or a gradient assignment (identity matters there), not a
 * view (it would keep reading the tensor after later writes), not a kn_cond
 * (a branch may return its input as the result), and not an op that records
 * autograd at call time (it saves the tensor and checks its version). */
static bool reads_data(const kn_trace *tr, const tnode *n, int j) {
    if (n->kind == N_WRITE) return j == 1;
    if (n->kind != N_OP || kn_op_table[n->op].kind == KN_KIND_VIEW) return false;
    return !(tr->vals[n->out].requires_grad && !tr->has_backward);
}

/* True when every write targets an input, a capture or a gradient, which any
 * kept plan guarantees (a write into a tensor made by the body is state, and
 * such a trace is not kept). */
static bool writes_external(const kn_trace *tr) {
    for (int i = 0; i < tr->nnodes; i++) {
        const tnode *n = &tr->nodes[i];
        if (n->kind != N_WRITE) continue;
        vkind k = n->in[0] >= 0 ? tr->vals[n->in[0]].kind : V_NODE;
        if (k != V_INPUT && k != V_CAPTURE && k != V_GRAD) return false;
    }
    return true;
}

/* After write(x, v), reads of x take v until a write that may touch x. */
static void forward_writes(kn_trace *tr, int *root) {
    int *fw = malloc(((size_t)tr->nvals + 1) * sizeof *fw), *active = malloc(((size_t)tr->nvals + 1) * sizeof *active);
    if (!fw || !active || !writes_external(tr)) {
        free(fw);
        free(active);
        return;
    }
    int nactive = 0;
    for (int v = 0; v < tr->nvals; v++) fw[v] = -1;
    root_of_leaves(tr, root);
    for (int i = 0; i < tr->nnodes; i++) {
        tnode *n = &tr->nodes[i];
        for (int j = 0; j < n->nin; j++)
            if (n->in[j] >= 0 && fw[n->in[j]] >= 0 && reads_data(tr, n, j)) n->in[j] = fw[n->in[j]];
        root_of_results(n, root);
        if (n->kind != N_WRITE) continue;
        int x = n->in[0], v = n->in[1];
        for (int a = 0; a < nactive; a++)  /* this write may change what those tensors hold */
            if (may_alias(tr, root, x, active[a])) {
                fw[active[a]] = -1;
                active[a--] = active[--nactive];
            }
        /* v: a computed value (never written: storage of its own) of x's dtype
         * and shape. Where a call gives v another shape (symbolic sizes), the
         * write fails before any forwarded read: sizes that are 1 are part of
         * the signature, so the write cannot broadcast. */
        if (!tracked_target(tr, x) || v < 0 || tr->vals[v].kind != V_NODE || root[v] != ROOT_FRESH ||
            !same_shape(&tr->vals[v], &tr->vals[x]) || (tr->vals[v].requires_grad && !tr->has_backward))
            continue;
        fw[x] = v;
        active[nactive++] = x;
    }
    free(fw);
    free(active);
}

/* write(x, v) is dead when a later write(x, w) overwrites all of x (a write
 * always covers its whole target) and nothing in between reads or writes
 * anything that may share x's storage. kn_cond nodes count as reading
 * everything: their branches may read captures directly. v must fit x at
 * every call, or dropping the write would hide the error eager reports. */
static void drop_dead_writes(const kn_trace *tr, int *root, bool *dead) {
    if (!writes_external(tr)) return;
    root_of_leaves(tr, root);
    for (int i = 0; i < tr->nnodes; i++)
        if (!dead[i]) root_of_results(&tr->nodes[i], root);
    for (int i = 0; i < tr->nnodes; i++) {
        const tnode *w = &tr->nodes[i];
        if (dead[i] || w->kind != N_WRITE || !tracked_target(tr, w->in[0]) || w->in[1] < 0 ||
            (tr->vals[w->in[1]].ndim > 0 && !pinned_to(tr, w->in[1], w->in[0], 8)))
            continue;
        int x = w->in[0];
        for (int k = i + 1; k < tr->nnodes; k++) {
            const tnode *n = &tr->nodes[k];
            if (dead[k]) continue;
            if (n->kind == N_COND) break;
            if (n->kind == N_WRITE && n->in[0] == x && !may_alias(tr, root, n->in[1], x)) {
                dead[i] = true;
                break;
            }
            bool touches = false;
            for (int j = 0; j < n->nin && !touches; j++) touches = may_alias(tr, root, n->in[j], x);
            if (touches) break;
        }
    }
}

int *kn__storage_roots(const kn_trace *tr) {
    int *root = malloc(((size_t)tr->nvals + 1) * sizeof *root);
    if (!root) return NULL;
    root_of_leaves(tr, root);
    for (int i = 0; i < tr->nnodes; i++) root_of_results(&tr->nodes[i], root);
    return root;
}

bool kn__write_may_touch(const kn_trace *tr, const int *root, int w, int u) {
    int x = tr->nodes[w].in[0];
    if (u < 0) return false;
    if (x >= 0 && tr->vals[x].kind == V_CAPTURE) return may_alias(tr, root, u, x);
    return root[u] != ROOT_FRESH;  /* an input or a gradient: whatever is not fresh may be it */
}

bool kn__write_can_defer(const kn_trace *tr, const int *roots, int w, int to) {
    const tnode *wn = &tr->nodes[w];
    if (wn->kind != N_WRITE || wn->in[0] < 0 || tr->vals[wn->in[0]].kind != V_CAPTURE || to <= w ||
        to >= tr->nnodes || !writes_external(tr))
        return false;
    bool ok = true;
    for (int k = w + 1; k <= to && ok; k++) {
        const tnode *n = &tr->nodes[k];
        ok = n->kind != N_COND;
        for (int j = 0; j < n->nin && ok; j++) ok = !kn__write_may_touch(tr, roots, w, n->in[j]);
    }
    return ok;
}

static void optimize(kn_trace *tr, int *outs, int nout, bool *dead) {
    int *rep = malloc(((size_t)tr->nvals + 1) * sizeof *rep);
    int *seen = malloc(((size_t)tr->nnodes + 1) * sizeof *seen);  /* CSE candidates */
    if (!rep || !seen) {
        free(rep);
        free(seen);
        return;
    }
    for (int v = 0; v < tr->nvals; v++) rep[v] = v;
    int nseen = 0;
    bool writes = false;
    for (int i = 0; i < tr->nnodes; i++) writes |= tr->nodes[i].kind == N_WRITE;
    for (int i = 0; i < tr->nnodes; i++) {
        tnode *n = &tr->nodes[i];
        for (int j = 0; j < n->nin; j++)
            if (n->in[j] >= 0) n->in[j] = rep[n->in[j]];
        if (n->kind != N_OP) {
            nseen = 0;  /* a write may change any value: forget earlier candidates */
            continue;
        }
        bool is_output = false;
        for (int k = 0; k < nout; k++) is_output |= outs[k] == n->out;
        skip_reshape_chain(tr, n, writes);
        int same = is_output ? -1 : identity_of(tr, n);
        /* x*1 is a copy of x taken at that point: once the plan writes, it may
         * stand for x only if x cannot change (undoing a permute is a view). */
        if (same >= 0 && writes && n->op != KN_OP_permute && !unchanging(tr, same)) same = -1;
        for (int k = 0; same >= 0 && n->op == KN_OP_cast && k < nout; k++)
            if (outs[k] == same) same = -1;  /* the copy must not alias what the caller gets */
        if (same >= 0) {
            rep[n->out] = same;
            dead[i] = true;
            continue;
        }
        if (fold(tr, n) >= 0) {
            dead[i] = true;
            continue;
        }
        if (is_random(n->op)) continue;
        int hit = -1;
        for (int s = 0; s < nseen && hit < 0; s++)
            if (same_node(tr, &tr->nodes[seen[s]], n)) hit = seen[s];
        if (hit >= 0 && !is_output) {
            rep[n->out] = tr->nodes[hit].out;
            dead[i] = true;
        } else {
            seen[nseen++] = i;
        }
    }
    free(rep);
    free(seen);
}

void kn__plan_compact(plan *pl, const bool *dead, const int *outs, int nout) {
    kn_trace *tr = pl->tr;
    int m = 0;
    for (int i = 0; i < tr->nnodes; i++) {
        if (dead[i]) {
            free(tr->nodes[i].in);
            continue;
        }
        tr->nodes[m] = tr->nodes[i];
        for (int k = 0; tr->nodes[m].out >= 0 && k < (tr->nodes[m].kind == N_COND ? tr->nodes[m].nout : 1); k++)
            tr->vals[tr->nodes[m].out + k].index = m;
        const int *sv;
        for (int k = 0, ns = tr->nodes[m].kind == N_SCALARS ? kn__scalars_outs(&tr->nodes[m], &sv) : 0; k < ns; k++)
            tr->vals[sv[k]].index = m;
        m++;
    }
    tr->nnodes = m;
    for (int v = 0; v < tr->nvals; v++) pl->last_use[v] = -1;
    for (int i = 0; i < m; i++)
        for (int j = 0; j < tr->nodes[i].nin; j++)
            if (tr->nodes[i].in[j] >= 0) pl->last_use[tr->nodes[i].in[j]] = i;
    for (int k = 0; k < nout; k++)
        if (outs[k] >= 0) pl->last_use[outs[k]] = INT32_MAX;
}

/* ---- matmul epilogues ----
 * relu(linear(x, w, b)) becomes one linear_relu node: one oneDNN matmul with
 * the bias and a relu post-op, so the linear's result is never stored and
 * re-read (4-15% faster than sgemm then relu at [64..256,784]x[128,784]).
 * The op records no autograd, so it replaces only nodes that need none at
 * call time (the rule fusion uses): inference plans, and training steps,
 * whose relu gradient reads the relu's result, not the linear's.
 * KN_EPILOGUE=0 turns it off. relu(conv2d) stays two nodes: for plain nchw
 * oneDNN 2.6 picks its gemm convolution, which applies a relu post-op so
 * slowly that the pair ran 2 to 6 times slower fused ([64,1,28,28] to 16
 * channels, 3x3: 2.05 ms with the post-op, 0.36 ms without). */
static bool epilogues_on(void) {
    static int off = -1;
    if (off < 0) {
        const char *e = getenv("KN_EPILOGUE");
        off = e && !strcmp(e, "0");
    }
    return !off;
}

static bool epilogue_ok(const kn_trace *tr, const tnode *l, const tnode *r) {
    const tvalue *lo = &tr->vals[l->out], *ro = &tr->vals[r->out];
    if (l->kind != N_OP || l->op != KN_OP_linear || lo->dtype != KN_F32 || ro->dtype != KN_F32) return false;
    if ((lo->requires_grad || ro->requires_grad) && !tr->has_backward) return false;
    for (int j = 0; j < l->nin; j++)
        if (l->in[j] >= 0 && tr->vals[l->in[j]].dtype != KN_F32) return false;
    return l->nin >= 2 && l->in[0] >= 0 && l->in[1] >= 0;
}

static void fuse_epilogues(plan *pl, const int *outs, int nout) {
    kn_trace *tr = pl->tr;
    if (!epilogues_on()) return;
    int *uses = calloc((size_t)tr->nvals + 1, sizeof *uses);
    bool *dead = calloc((size_t)tr->nnodes + 1, sizeof *dead), any = false;
    if (!uses || !dead) goto done;
    for (int i = 0; i < tr->nnodes; i++)
        for (int j = 0; j < tr->nodes[i].nin; j++)
            if (tr->nodes[i].in[j] >= 0) uses[tr->nodes[i].in[j]]++;
    for (int k = 0; k < nout; k++)
        if (outs[k] >= 0) uses[outs[k]] += 2;  /* an output is kept as it is */
    for (int i = 0; i < tr->nnodes; i++) {
        tnode *r = &tr->nodes[i];
        if (r->kind != N_OP || r->op != KN_OP_relu || r->in[0] < 0 || tr->vals[r->in[0]].kind != V_NODE ||
            uses[r->in[0]] != 1)
            continue;
        int li = tr->vals[r->in[0]].index;
        tnode *l = &tr->nodes[li];
        if (!epilogue_ok(tr, l, r)) continue;
        /* The linear's node computes the relu's value: it reads its inputs
         * where it always did, before any write that follows it. */
        l->op = KN_OP_linear_relu;
        l->out = r->out;
        dead[i] = any = true;
    }
    if (any) kn__plan_compact(pl, dead, outs, nout);
done:
    free(uses);
    free(dead);
}

bool kn__plan_build(plan *pl, kn_trace *tr, int *outs, int nout) {
    if (dump_ir()) {
        fprintf(stderr, "KN_DUMP=ir: %s as recorded\n", tr->name);
        kn__dump_trace(stderr, tr, outs, nout, NULL);
    }
    bool *live = calloc((size_t)tr->nvals + 1, sizeof *live);
    bool *dead = calloc((size_t)tr->nnodes + 1, sizeof *dead);
    pl->last_use = malloc(((size_t)tr->nvals + 1) * sizeof *pl->last_use);
    if (!live || !dead || !pl->last_use) {
        free(live);
        free(dead);
        return false;
    }
    int *root = malloc(((size_t)tr->nvals + 1) * sizeof *root);
    if (root) forward_writes(tr, root);
    optimize(tr, outs, nout, dead);
    if (root) drop_dead_writes(tr, root, dead);
    free(root);
    /* Dead code: keep what reaches an output or a side effect. */
    for (int k = 0; k < nout; k++)
        if (outs[k] >= 0) live[outs[k]] = true;
    for (int i = tr->nnodes - 1; i >= 0; i--) {
        tnode *n = &tr->nodes[i];
        bool keep = !dead[i] && (n->kind != N_OP || (n->out >= 0 && live[n->out]));
        dead[i] = !keep;
        for (int j = 0; keep && j < n->nin; j++)
            if (n->in[j] >= 0) live[n->in[j]] = true;
    }
    kn__plan_compact(pl, dead, outs, nout);
    fuse_epilogues(pl, outs, nout);
    kn__plan_scalars(pl, outs, nout);
    pl->captures = malloc(((size_t)tr->nvals + 1) * sizeof *pl->captures);
    for (int v = 0; pl->captures && v < tr->nvals; v++)
        if (tr->vals[v].kind == V_CAPTURE && pl->last_use[v] >= 0) pl->captures[pl->ncaptures++] = v;
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
    free(dead);
    if (dump_ir()) {
        fprintf(stderr, "KN_DUMP=ir: %s after the passes (forwarding, folding, CSE, simplification, dead code, epilogues, scalar chains)\n",
                tr->name);
        kn__dump_trace(stderr, tr, outs, nout, pl->last_use);
    }
    return true;
}
