/* Scalar chains: a run of nodes that compute 0-d float values (Adam's bias
 * corrections, a mean's 1/N) becomes one N_SCALARS node. It evaluates the
 * ops in order on 8-byte slots through the loops eager runs
 * (kn__ew_loop, kn__conv_loop), so the results are eager's bit for bit, and
 * makes a tensor only for the values read outside the chain: Adam's 44
 * bias-correction ops for an MLP's 4 parameters take 2.8 us as one node and
 * took 12 us as eager ops on 0-d tensors. */
#include "ir.h"
#include <stdlib.h>
#include <string.h>

typedef union { double f64; float f32; int64_t i64; int32_t i32; uint8_t b; } slot;

typedef struct {
    kn_op op;
    kn_dtype dt;          /* the result's dtype, which eager computes in */
    int nin;
    int in[2], out;       /* slots */
    double params[2];
} sstep;

struct kn_scalars {
    int nsteps, nslots;   /* slots: the node's inputs (in[] order), then one per step */
    sstep *steps;
    kn_dtype *dt;         /* per slot */
    int nout;
    int *out_val, *out_slot;  /* values stored as 0-d tensors */
};

void kn__scalars_free(struct kn_scalars *s) {
    if (!s) return;
    free(s->steps);
    free(s->dt);
    free(s->out_val);
    free(s->out_slot);
    free(s);
}

int kn__scalars_outs(const tnode *n, const int **vals) {
    *vals = n->scalars->out_val;
    return n->scalars->nout;
}

kn_op kn__scalars_op(const tnode *n, int e) {
    const struct kn_scalars *s = n->scalars;
    return s->steps[s->out_slot[e] - (s->nslots - s->nsteps)].op;
}

static bool is_float(kn_dtype d) { return d == KN_F32 || d == KN_F64; }

/* A node the chain can evaluate: a 0-d float result of an elementwise op
 * (one or two 0-d operands) that records no autograd at call time. */
static bool scalar_node(const kn_trace *tr, const tnode *n) {
    if (n->kind != N_OP || n->out < 0 || n->nin < 1 || n->nin > 2) return false;
    const tvalue *o = &tr->vals[n->out];
    if (o->ndim != 0 || !is_float(o->dtype) || (o->requires_grad && !tr->has_backward)) return false;
    if (n->op == KN_OP_cast ? !kn__conv_loop(o->dtype, tr->vals[n->in[0]].dtype)
                            : kn_op_table[n->op].kind != KN_KIND_ELEMENTWISE || !kn__ew_loop(n->op, o->dtype))
        return false;
    for (int j = 0; j < n->nin; j++)
        if (n->in[j] < 0 || tr->vals[n->in[j]].ndim != 0) return false;
    return true;
}

/* Adds the values n reads from outside the chain to ext[*next]; false,
 * adding none, when they would not fit the node's operands. */
static bool outside_fit(const kn_trace *tr, const tnode *n, const bool *member, int *ext, int *next) {
    int add[2], nadd = 0;
    for (int j = 0; j < n->nin; j++) {
        int v = n->in[j];
        bool known = tr->vals[v].kind == V_NODE && member[tr->vals[v].index];
        for (int i = 0; i < *next && !known; i++) known = ext[i] == v;
        for (int i = 0; i < nadd && !known; i++) known = add[i] == v;
        if (!known) add[nadd++] = v;
    }
    if (*next + nadd > KN_NODE_MAX_IN) return false;
    for (int i = 0; i < nadd; i++) ext[(*next)++] = add[i];
    return true;
}

/* Marks the chain that starts at node `first`; returns its last node. It
 * runs at `first`, so it takes the scalar nodes that follow up to the next
 * effect other than a write, passing over other ops, when they read nothing
 * those ops make and nothing the writes passed over may change. The values
 * it reads from outside go to ext[*next], in the order members read them. */
static int chain_of(const kn_trace *tr, const int *roots, int first, const bool *dead, bool *member, bool *later,
                    int *ext, int *next) {
    int last = first, nwrites = 0, writes[64], members = 1;
    member[first] = true;
    *next = 0;
    if (!outside_fit(tr, &tr->nodes[first], member, ext, next)) return first;
    for (int k = first + 1; k < tr->nnodes && members < KN_SCALARS_MAX_OPS; k++) {
        const tnode *n = &tr->nodes[k];
        if (dead[k]) continue;  /* in an earlier chain, which runs before this one */
        if (n->kind == N_WRITE && nwrites < 64) {
            writes[nwrites++] = k;
            continue;
        }
        if (n->kind != N_OP) break;
        bool ok = scalar_node(tr, n);
        for (int j = 0; ok && j < n->nin; j++) {
            const tvalue *v = &tr->vals[n->in[j]];
            ok = !(v->kind == V_NODE && later[v->index]);
            for (int w = 0; ok && w < nwrites; w++) ok = !kn__write_may_touch(tr, roots, writes[w], n->in[j]);
        }
        if (ok && !outside_fit(tr, n, member, ext, next)) break;  /* the chain's inputs are full */
        if (ok) member[last = k] = true, members++;
        else later[k] = true;  /* stays where it is, and so do the ops reading it */
    }
    return last;
}

static int slot_of(const int *ids, int n, int v) {
    for (int i = 0; i < n; i++)
        if (ids[i] == v) return i;
    return -1;
}

/* The member nodes first..last as one program on node `first`, whose
 * inputs become the nin values the chain reads from outside, ext. */
static bool make_chain(plan *pl, int first, int last, const bool *member, const int *ext, int nin,
                       const bool *used_after, bool *dead) {
    kn_trace *tr = pl->tr;
    /* slots: at most two operands and a result per op */
    int cap = 3 * (last - first + 1), *ids = malloc((size_t)cap * sizeof *ids);
    int *ins = malloc(((size_t)nin + 1) * sizeof *ins);
    struct kn_scalars *s = calloc(1, sizeof *s);
    if (!ids || !ins || !s) goto fail;
    memcpy(ins, ext, (size_t)nin * sizeof *ins);
    memcpy(ids, ext, (size_t)nin * sizeof *ids);
    int nslots = nin;
    s->steps = malloc((size_t)cap * sizeof *s->steps);
    s->dt = malloc((size_t)cap * sizeof *s->dt);
    s->out_val = malloc((size_t)cap * sizeof *s->out_val);
    s->out_slot = malloc((size_t)cap * sizeof *s->out_slot);
    if (!s->steps || !s->dt || !s->out_val || !s->out_slot) goto fail;
    for (int i = 0; i < nin; i++) s->dt[i] = tr->vals[ins[i]].dtype;
    for (int k = first; k <= last; k++) {
        tnode *n = &tr->nodes[k];
        if (!member[k]) continue;
        sstep *st = &s->steps[s->nsteps++];
        *st = (sstep){.op = n->op, .dt = tr->vals[n->out].dtype, .nin = n->nin, .out = nslots,
                      .params = {n->p.d[0], n->p.d[1]}};
        for (int j = 0; j < n->nin; j++) st->in[j] = slot_of(ids, nslots, n->in[j]);
        s->dt[nslots] = st->dt;
        ids[nslots++] = n->out;
        if (used_after[n->out]) {
            s->out_val[s->nout] = n->out;
            s->out_slot[s->nout++] = st->out;
        }
        if (k != first) dead[k] = true;
    }
    s->nslots = nslots;
    tnode *h = &tr->nodes[first];
    free(h->in);
    h->in = ins;
    h->nin = nin;
    h->kind = N_SCALARS;
    h->out = -1;
    h->scalars = s;
    h->nfused = s->nsteps;
    free(ids);
    return true;
fail:
    free(ids);
    free(ins);
    kn__scalars_free(s);
    return false;
}

void kn__plan_scalars(plan *pl, const int *outs, int nout) {
    kn_trace *tr = pl->tr;
    size_t nn = (size_t)tr->nnodes + 1;
    bool *dead = calloc(nn, 1), *member = calloc(nn, 1), *later = calloc(nn, 1), any = false;
    bool *used_after = calloc((size_t)tr->nvals + 1, 1);
    int *roots = kn__storage_roots(tr);  /* chains make fresh values only: they stay true */
    if (!dead || !member || !later || !used_after || !roots) goto done;
    for (int k = 0; k < tr->nnodes; k++) {
        if (dead[k] || !scalar_node(tr, &tr->nodes[k])) continue;
        memset(member, 0, nn);
        memset(later, 0, nn);
        int ext[KN_NODE_MAX_IN], nin;
        int last = chain_of(tr, roots, k, dead, member, later, ext, &nin), members = 0;
        for (int i = k; i <= last; i++) members += member[i];
        if (members < 2) continue;  /* a lone op gains nothing */
        /* values read by nodes other than members (writes included), or returned */
        memset(used_after, 0, (size_t)tr->nvals);
        for (int i = k; i < tr->nnodes; i++)
            for (int j = 0; !member[i] && j < tr->nodes[i].nin; j++)
                if (tr->nodes[i].in[j] >= 0) used_after[tr->nodes[i].in[j]] = true;
        for (int j = 0; j < nout; j++)
            if (outs[j] >= 0) used_after[outs[j]] = true;
        if (!make_chain(pl, k, last, member, ext, nin, used_after, dead)) break;
        any = true;
    }
    if (any) kn__plan_compact(pl, dead, outs, nout);
done:
    free(dead);
    free(member);
    free(later);
    free(used_after);
    free(roots);
}

int kn__scalars_run(const char *name, const tnode *n, kn_tensor **args, kn_tensor **res) {
    const struct kn_scalars *s = n->scalars;
    slot stack[64], *v = s->nslots <= 64 ? stack : malloc((size_t)s->nslots * sizeof *v);
    if (!v) return kn__error("kn_call %s: out of memory", name), -1;
    for (int i = 0; i < n->nin; i++) memcpy(&v[i], kn__ptr(args[i]), kn__size(s->dt[i]));
    for (int i = 0; i < s->nsteps; i++) {
        const sstep *st = &s->steps[i];
        slot conv[2];
        char *p[3] = {(char *)&v[st->out]};
        int64_t strides[3] = {0, 0, 0};
        for (int j = 0; j < st->nin; j++) {
            slot *x = &v[st->in[j]];
            kn_dtype from = s->dt[st->in[j]];
            if (from != st->dt && st->op != KN_OP_cast) {  /* eager casts operands to the op's dtype */
                char *cp[2] = {(char *)&conv[j], (char *)x};
                kn__conv_loop(st->dt, from)(1, cp, strides, NULL);
                x = &conv[j];
            }
            p[j + 1] = (char *)x;
        }
        kn_loop_fn fn = st->op == KN_OP_cast ? kn__conv_loop(st->dt, s->dt[st->in[0]]) : kn__ew_loop(st->op, st->dt);
        fn(1, p, strides, st->params);
    }
    int rc = 0;
    for (int e = 0; e < s->nout; e++) {
        kn_dtype dt = s->dt[s->out_slot[e]];
        int64_t none[1] = {0};
        if (!(res[e] = kn__alloc(none, 0, dt))) {
            rc = -1;
            for (int f = 0; f < e; f++) kn__drop(res[f]);
            break;
        }
        memcpy(kn__ptr(res[e]), &v[s->out_slot[e]], kn__size(dt));
    }
    if (v != stack) free(v);
    return rc;
}
