/* Passes over a recorded trace: constant folding, common-subexpression
 * elimination, algebraic simplification and dead-code elimination (which
 * also drops the autograd nodes no output or side effect needs). */
#include "ir.h"
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

/* x*1, 1*x, x/1, x+0, 0+x, x-0 and a permute undoing a permute give an
 * input unchanged: the value it stands for, or -1. */
static int identity_of(const kn_trace *tr, const tnode *n) {
    const tvalue *out = &tr->vals[n->out];
    int a = n->nin > 0 ? n->in[0] : -1, b = n->nin > 1 ? n->in[1] : -1;
    int keep = -1;
    switch (n->op) {
    case KN_OP_mul: keep = const_all(tr, b, 1) ? a : const_all(tr, a, 1) ? b : -1; break;
    case KN_OP_div: keep = const_all(tr, b, 1) ? a : -1; break;
    case KN_OP_add: keep = const_all(tr, b, 0) ? a : const_all(tr, a, 0) ? b : -1; break;
    case KN_OP_sub: keep = const_all(tr, b, 0) ? a : -1; break;
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
    /* Only when nothing about the value changes: dtype and shape included. */
    return keep >= 0 && same_shape(&tr->vals[keep], out) ? keep : -1;
}

/* reshape(reshape(x)) reads x directly. */
static void skip_reshape_chain(kn_trace *tr, tnode *n) {
    if (n->op != KN_OP_reshape || n->in[0] < 0 || tr->vals[n->in[0]].kind != V_NODE) return;
    const tnode *m = &tr->nodes[tr->vals[n->in[0]].index];
    if (m->kind == N_OP && m->op == KN_OP_reshape) n->in[0] = m->in[0];
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
    kn_tensor *args[64];
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
        skip_reshape_chain(tr, n);
        int same = is_output ? -1 : identity_of(tr, n);
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
    optimize(tr, outs, nout, dead);
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
        fprintf(stderr, "KN_DUMP=ir: %s after folding, CSE, simplification and dead-code elimination\n",
                tr->name);
        kn__dump_trace(stderr, tr, outs, nout, pl->last_use);
    }
    return true;
}
