/* Fusion: groups of f32 nodes of a plan become one JIT kernel each (kernel
 * IR in jit/jit.h), so their intermediates are never stored.
 *  - Elementwise chains with broadcasting over one domain (the result's
 *    shape) become a pointwise kernel.
 *  - softmax, log_softmax and layer_norm over the last dim, and sum, mean
 *    and max over the last dim, become a row kernel, together with the
 *    elementwise ops that feed them and consume them in the same domain
 *    (the reduction's input shape).
 * A node joins its consumer's group when that consumer is its only user, so
 * only a group's last node (its root) is seen outside and the group runs at
 * the root's place. The one exception are extra outputs (below): a value
 * whose other reader is a write into a capture is stored there too. Elementwise steps evaluate the formulas of
 * core/scalar.h: fused elementwise results are bitwise equal to eager. */
#include "ir.h"
#include "../jit/jit.h"
#include <stdlib.h>
#include <string.h>

#define MAX_VARIANTS 4

/* What the kernel needs at call time, next to the node's operand ids. */
struct kn_fused {
    kn_jit_kernel k;
    bool rows;
    bool row_out;   /* the result is one value per row (a reduction) */
    int nd;         /* the domain's rank at trace time */
    int nin;
    int inplace;    /* a pointwise kernel may write over this operand (its last use), or -1 */
    kn_tensor *into; /* a capture the next node overwrites with the result: written directly (or NULL) */
    int nextra;      /* extra outputs: value extra_val[e] is stored into capture extra_into[e] */
    int extra_val[KN_FUSE_MAX_EXTRA];
    kn_tensor *extra_into[KN_FUSE_MAX_EXTRA];
    uint8_t inner[KN_JIT_MAX_OPERANDS];
    /* The description, for variants compiled at call time when operands
     * come with other last-dim strides (a transposed input, say). A slot is
     * claimed by count, filled, then published by its kernel pointer. */
    kn_jit_step *steps;
    int nsteps, nphases;
    kn_jit_phase phases[KN_JIT_MAX_PHASES];
    _Atomic int nvariants;
    struct { uint8_t inner[KN_JIT_MAX_OPERANDS]; _Atomic(kn_jit_kernel) k; } variant[MAX_VARIANTS];
};

void kn__fused_free(struct kn_fused *f) {
    if (!f) return;
    free(f->steps);
    free(f);
}

/* The kernel description of f for operands of these stride classes. */
static kn_jit_desc desc_of(const struct kn_fused *f, const uint8_t *inner) {
    kn_jit_desc d = {.rows = f->rows, .nin = f->nin, .nout = 1 + f->nextra, .steps = f->steps,
                     .nsteps = f->nsteps, .phases = f->phases, .nphases = f->nphases};
    memcpy(d.inner, inner, (size_t)f->nin + 1 + (size_t)f->nextra);
    return d;
}

static bool ew_op(kn_op op) {
    switch (op) {
    case KN_OP_exp: case KN_OP_log: case KN_OP_sqrt: case KN_OP_rsqrt: case KN_OP_tanh:
    case KN_OP_sigmoid: case KN_OP_sin: case KN_OP_cos: case KN_OP_erf: case KN_OP_gelu:
    case KN_OP_gelu_tanh: case KN_OP_neg: case KN_OP_abs: case KN_OP_relu: case KN_OP_add:
    case KN_OP_sub: case KN_OP_mul: case KN_OP_div: case KN_OP_pow: case KN_OP_maximum:
    case KN_OP_minimum:
        return true;
    default:
        return false;
    }
}

/* Shapes at trace time. Symbols are not compared: a weight's fixed 784 and
 * an input's symbolic 784 meet in one kernel, and each call broadcasts the
 * actual operands together, failing where eager's op would. */
static bool same_shape(const tvalue *a, const tvalue *b) {
    return a->ndim == b->ndim && !memcmp(a->shape, b->shape, (size_t)a->ndim * sizeof(int64_t));
}

/* a broadcasts to b (right-aligned, a's dims equal to b's or 1). */
static bool broadcasts_to(const tvalue *a, const tvalue *b) {
    if (a->ndim > b->ndim) return false;
    for (int d = 0; d < a->ndim; d++)
        if (a->shape[d] != 1 && a->shape[d] != b->shape[d + b->ndim - a->ndim]) return false;
    return true;
}

/* A 0-dim constant, as the f32 the eager op would convert it to. */
static bool scalar_const(const kn_trace *tr, int id, float *v) {
    if (id < 0 || tr->vals[id].kind != V_CONST || tr->vals[id].ndim != 0) return false;
    const kn_tensor *t = tr->vals[id].t;
    *v = (float)kn__load(t->storage->data, t->dtype);
    return true;
}

/* ---- which nodes fuse ---- */
typedef enum { C_NONE, C_EW, C_ROW } nclass;

static bool is_last_dim(const tnode *n, int ndim) { return ndim >= 1 && n->p.i[0] == (int64_t)1 << (ndim - 1); }

/* A row op: softmax, log_softmax, layer_norm (one normalized dim) or a
 * sum, mean or max over the last dim, of an f32 input. */
static bool row_op(const kn_trace *tr, const tnode *n) {
    const tvalue *x = &tr->vals[n->in[0]];
    if (x->dtype != KN_F32 || x->ndim < 1) return false;
    switch (n->op) {
    case KN_OP_softmax: case KN_OP_log_softmax: return n->p.i[0] == x->ndim - 1;
    case KN_OP_layer_norm:
        for (int k = 1; k < n->nin; k++)
            if (n->in[k] >= 0 && (tr->vals[n->in[k]].dtype != KN_F32 || tr->vals[n->in[k]].ndim != 1)) return false;
        return n->p.i[0] == 1;
    case KN_OP_sum: case KN_OP_mean: case KN_OP_max: return is_last_dim(n, x->ndim);
    default: return false;
    }
}

static bool is_reduction(kn_op op) { return op == KN_OP_sum || op == KN_OP_mean || op == KN_OP_max; }

static bool compare_op(kn_op op) {
    return op == KN_OP_eq || op == KN_OP_ne || op == KN_OP_lt || op == KN_OP_le || op == KN_OP_gt || op == KN_OP_ge;
}

/* Booleans never leave a kernel (they are floats inside it): a comparison
 * of f32 values fuses only when its one reader is a where (as the
 * condition) or a cast to f32 of the same shape, and those read booleans
 * only from such a comparison (classified before them). */
static bool bool_reader(const kn_trace *tr, int id, const tnode *u) {
    return u->kind == N_OP && u->out >= 0 && tr->vals[u->out].dtype == KN_F32 &&
           same_shape(&tr->vals[id], &tr->vals[u->out]) &&
           ((u->op == KN_OP_where && u->in[0] == id) || (u->op == KN_OP_cast && u->in[0] == id));
}

/* A node the JIT can evaluate: f32 out (or a comparison's boolean, see
 * above), operands it can load (f32 values that broadcast to its domain,
 * 0-dim values), and no autograd graph needed from it at call time.
 * uses and user count and name each value's readers. */
static nclass classify(const kn_trace *tr, const tnode *n, const nclass *cls, const int *uses, const int *user) {
    if (n->kind != N_OP || n->out < 0 || n->nin < 1 || n->in[0] < 0) return C_NONE;
    const tvalue *o = &tr->vals[n->out];
    if (o->requires_grad && !tr->has_backward) return C_NONE;
    if (compare_op(n->op)) {
        if (o->dtype != KN_BOOL || uses[n->out] != 1 || !bool_reader(tr, n->out, &tr->nodes[user[n->out]]))
            return C_NONE;
    } else if (o->dtype != KN_F32) {
        return C_NONE;
    }
    if (row_op(tr, n)) return C_ROW;
    if (!ew_op(n->op) && !compare_op(n->op) && n->op != KN_OP_where && n->op != KN_OP_cast) return C_NONE;
    for (int j = 0; j < n->nin; j++) {
        const tvalue *x = n->in[j] >= 0 ? &tr->vals[n->in[j]] : NULL;
        if (!x || (x->ndim > 0 && !broadcasts_to(x, o))) return C_NONE;
        if (x->dtype == KN_BOOL) {
            if (!bool_reader(tr, n->in[j], n) || x->kind != V_NODE || cls[x->index] != C_EW) return C_NONE;
        } else if ((x->ndim > 0 && x->dtype != KN_F32) || n->op == KN_OP_cast) {
            return C_NONE;
        }
    }
    return C_EW;
}

/* The shape a node's kernel loops over. */
static const tvalue *domain(const kn_trace *tr, const tnode *n, nclass c) {
    return c == C_ROW ? &tr->vals[n->in[0]] : &tr->vals[n->out];
}

/* Whether producer m may join consumer i's group (m's value read by i). */
static bool may_join(const kn_trace *tr, const tnode *m, nclass cm, const tnode *i, nclass ci) {
    if (!same_shape(domain(tr, m, cm), domain(tr, i, ci))) return false;
    /* a row value is read broadcast along the row: only with keepdim */
    if (cm == C_ROW && is_reduction(m->op) && !m->p.i[1]) return false;
    /* a row op of the consumer reads its main input per element; weights are inputs */
    if (ci == C_ROW && i->in[0] != m->out) return false;
    return true;
}

/* ---- the layout of operands in the domain, shared by planning and calls ---- */

/* Strides of each operand in the domain (0 along broadcast dims; strides[k]
 * gives operand k's own strides, NULL for contiguous), then
 * size-1 dims dropped and mergeable dims merged (never the last of a row
 * kernel). shapes[k] is operand k's shape; the output is the last operand,
 * and a row result (row_out) without keepdim has rank nd - 1 and gets a
 * trailing 1. lay gets {nd, sizes, strides};
 * inner[k] the stride class of the last dim. */
static void layout(const int64_t *dom, int nd, int nops, const int64_t *const *shapes, const int *ranks,
                   const int64_t *const *strides, bool rows, bool row_out, int64_t *lay, uint8_t *inner) {
    int64_t size[KN_MAX_DIMS], st[KN_JIT_MAX_OPERANDS][KN_MAX_DIMS], one = 1;
    if (nd == 0) dom = &one, nd = 1;  /* a 0-dim domain is one element */
    for (int k = 0; k < nops; k++) {
        int64_t sh[KN_MAX_DIMS] = {1}, cs[KN_MAX_DIMS];
        int r = ranks[k];
        memcpy(sh, shapes[k], (size_t)r * sizeof *sh);
        if (strides && strides[k]) memcpy(cs, strides[k], (size_t)r * sizeof *cs);
        r += r == 0;  /* a 0-dim operand is one element, broadcast */
        if (row_out && k == nops - 1 && r == nd - 1) sh[r++] = 1;  /* a row result without keepdim */
        if (!strides || !strides[k]) kn__contig_strides(sh, r, cs);
        else if (r > ranks[k]) cs[r - 1] = 1;  /* the dim a 0-dim operand or a row result gained */
        for (int d = 0; d < nd; d++) {
            int e = d - (nd - r);
            st[k][d] = e >= 0 && sh[e] == dom[d] ? cs[e] : 0;
        }
    }
    int m = 0;
    for (int d = 0; d < nd; d++) {
        bool last = d == nd - 1;
        if (dom[d] == 1 && !(rows && last) && !(last && m == 0)) continue;
        bool merge = m > 0 && !(rows && last);
        for (int k = 0; merge && k < nops; k++) merge = st[k][m - 1] == st[k][d] * dom[d];
        if (merge) {
            size[m - 1] *= dom[d];
            for (int k = 0; k < nops; k++) st[k][m - 1] = st[k][d];
            continue;
        }
        size[m] = dom[d];
        for (int k = 0; k < nops; k++) st[k][m] = st[k][d];
        m++;
    }
    lay[0] = m;
    for (int d = 0; d < m; d++) lay[1 + d] = size[d];
    for (int k = 0; k < nops; k++) {
        for (int d = 0; d < m; d++) lay[1 + m + k * m + d] = st[k][d];
        int64_t last = st[k][m - 1];
        inner[k] = last == 0 ? KN_INNER_BROADCAST : last == 1 ? KN_INNER_CONTIGUOUS : KN_INNER_STRIDED;
    }
}

/* ---- lowering a group to the kernel IR ---- */
typedef struct {
    kn_jit_step *s;
    int ns;
    kn_jit_phase ph[KN_JIT_MAX_PHASES];
    int np;
    int *inputs, nin;   /* value ids of the kernel's inputs */
    int *step_of;       /* per value: its step, or -1 */
    bool *row_value;    /* per value: one value per row (an ACC expression) */
    int out;            /* the output operand, once inputs are known: nin */
    bool stored;        /* a softmax already keeps its exponentials in the output */
    bool failed;
} lower;

static int step(lower *L, kn_jit_step s) {
    if (L->ns == KN_JIT_MAX_STEPS) return L->failed = true, 0;
    L->s[L->ns] = s;
    return L->ns++;
}
static int op1(lower *L, kn_op op, int a) { return step(L, (kn_jit_step){.kind = KN_JIT_OP, .op = op, .a = a}); }
static int op2(lower *L, kn_op op, int a, int b) {
    return step(L, (kn_jit_step){.kind = KN_JIT_OP, .op = op, .a = a, .b = b});
}
/* exp of x - max(row), which is <= 0 or NaN: the cheaper formula eager's
 * row kernels use too */
static int exp_nonpos(lower *L, int a) {
    return step(L, (kn_jit_step){.kind = KN_JIT_OP, .op = KN_OP_exp, .a = a, .nonpos = true});
}
static int cst(lower *L, float v) { return step(L, (kn_jit_step){.kind = KN_JIT_CONST, .value = v}); }
static int acc(lower *L, int p) { return step(L, (kn_jit_step){.kind = KN_JIT_ACC, .arg = p}); }
static int phase(lower *L, kn_phase_kind k, int s, int out) {
    if (L->np == KN_JIT_MAX_PHASES) return L->failed = true, 0;
    L->ph[L->np] = (kn_jit_phase){.kind = k, .step = s, .out = out};
    return L->np++;
}
/* The row max that softmax subtracts: a NaN in the row reaches every output
 * through the sum of exps, so the max need not propagate it. */
static int shift_max(lower *L, int x) {
    int p = phase(L, KN_PHASE_MAX, x, -1);
    L->ph[p].shift = true;
    return p;
}

/* A row's mean: a sum the kernel divides by the row length in double. */
static int mean_sum(lower *L, int x) {
    int p = phase(L, KN_PHASE_SUM, x, -1);
    L->ph[p].mean = true;
    return p;
}

/* The step of value id: a member's, a constant, or a new input. The
 * output operands' indices are not known yet: OUTPUT_MARK stands for the
 * result's, EXTRA_MARK(e) for extra output e's. */
#define OUTPUT_MARK (-2)
#define EXTRA_MARK(e) (-3 - (e))
static int value(lower *L, const kn_trace *tr, int id) {
    if (L->step_of[id] >= 0) return L->step_of[id];
    float c;
    if (scalar_const(tr, id, &c)) return L->step_of[id] = cst(L, c);
    /* a comparison's boolean left the group (its reader reads it as f32): no kernel */
    if (tr->vals[id].ndim > 0 && tr->vals[id].dtype != KN_F32) return L->failed = true, 0;
    if (L->nin == KN_JIT_MAX_OPERANDS - 1) return L->failed = true, 0;
    L->inputs[L->nin] = id;
    return L->step_of[id] = step(L, (kn_jit_step){.kind = KN_JIT_INPUT, .arg = L->nin++});
}

static void lower_node(lower *L, const kn_trace *tr, const tnode *n) {
    int x = value(L, tr, n->in[0]);
    int r;
    if (!row_op(tr, n) || n->kind != N_OP) {
        int arity = kn_op_table[n->op].arity;
        kn_jit_step s = {.kind = KN_JIT_OP, .op = n->op, .a = x};
        if (arity > 1) s.b = value(L, tr, n->in[1]);
        if (arity > 2) s.c = value(L, tr, n->in[2]);
        r = n->op == KN_OP_cast ? x : step(L, s);  /* a boolean already is the f32 0 or 1 */
        L->row_value[n->out] = false;
        L->step_of[n->out] = r;
        return;
    }
    int one = cst(L, 1.0f);
    switch (n->op) {
    case KN_OP_softmax: {
        int m = acc(L, shift_max(L, x));
        int e = exp_nonpos(L, op2(L, KN_OP_sub, x, m));
        /* keep the exponentials in the output and scale them in place: one exp per element */
        bool keep = !L->stored;
        L->stored = true;
        int s = acc(L, phase(L, KN_PHASE_SUM, e, keep ? OUTPUT_MARK : -1));
        int ev = keep ? step(L, (kn_jit_step){.kind = KN_JIT_INPUT, .arg = OUTPUT_MARK}) : e;
        r = op2(L, KN_OP_mul, ev, op2(L, KN_OP_div, one, s));
        break;
    }
    case KN_OP_log_softmax: {
        int m = acc(L, shift_max(L, x));
        int d = op2(L, KN_OP_sub, x, m);
        int s = acc(L, phase(L, KN_PHASE_SUM, exp_nonpos(L, d), -1));
        r = op2(L, KN_OP_sub, d, op1(L, KN_OP_log, s));
        break;
    }
    case KN_OP_layer_norm: {
        int mean = acc(L, mean_sum(L, x));
        int d = op2(L, KN_OP_sub, x, mean);
        int var = acc(L, mean_sum(L, op2(L, KN_OP_mul, d, d)));
        int rstd = op2(L, KN_OP_div, one, op1(L, KN_OP_sqrt, op2(L, KN_OP_add, var, cst(L, (float)n->p.d[0]))));
        r = op2(L, KN_OP_mul, d, rstd);
        if (n->nin > 1 && n->in[1] >= 0) r = op2(L, KN_OP_mul, r, value(L, tr, n->in[1]));
        if (n->nin > 2 && n->in[2] >= 0) r = op2(L, KN_OP_add, r, value(L, tr, n->in[2]));
        break;
    }
    default: { /* sum, mean, max over the row */
        r = acc(L, n->op == KN_OP_mean ? mean_sum(L, x) : phase(L, n->op == KN_OP_max ? KN_PHASE_MAX : KN_PHASE_SUM, x, -1));
        L->row_value[n->out] = true;
        L->step_of[n->out] = r;
        return;
    }
    }
    L->row_value[n->out] = false;
    L->step_of[n->out] = r;
}

/* ---- planning ---- */

/* A group's extra outputs: values stored into the captures that write
 * nodes write them to; those writes move after the group's root. */
typedef struct {
    int n;
    int val[KN_FUSE_MAX_EXTRA], write[KN_FUSE_MAX_EXTRA];
    int from[KN_FUSE_MAX_EXTRA]; /* the root of the group that computed it */
} extras;

/* One group to fuse: its root node, members, inputs and its kernel (f). */
typedef struct {
    int root, members;
    extras x;
    int *inputs;        /* value ids of the kernel's inputs */
    struct kn_fused *f;
} fuse_group;

struct kn_fuse_job {
    fuse_group *g;
    int ngroups;
    int *group;         /* per node: its group's root, or -1 */
    int nnodes;
    char *name;
};

void kn__fuse_job_free(kn_fuse_job *j) {
    if (!j) return;
    for (int i = 0; i < j->ngroups; i++) {
        free(j->g[i].inputs);
        kn__fused_free(j->g[i].f);
    }
    free(j->g);
    free(j->group);
    free(j->name);
    free(j);
}

/* All of group r's nodes are elementwise (a pointwise kernel). */
static bool pointwise_group(const int *group, const nclass *cls, int r) {
    for (int k = 0; k <= r; k++)
        if (group[k] == r && cls[k] != C_EW) return false;
    return true;
}

/* The write node in (h, r) that stores value id, computed by node h, into a
 * capture of its shape and dtype; -1 if none. */
static int write_of(const kn_trace *tr, int id, int h, int r) {
    for (int w = h + 1; w < r; w++) {
        const tnode *n = &tr->nodes[w];
        if (n->kind != N_WRITE || n->nin != 2 || n->in[1] != id || n->in[0] < 0) continue;
        const tvalue *x = &tr->vals[n->in[0]];
        return x->kind == V_CAPTURE && x->dtype == KN_F32 && same_shape(x, &tr->vals[id]) ? w : -1;
    }
    return -1;
}

/* 1 when node r+1 writes r's result (move_writes keeps it next to r, so
 * writes moved after r land after it), else 0. */
static int own_write(const kn_trace *tr, int r) {
    const tnode *w = r + 1 < tr->nnodes ? &tr->nodes[r + 1] : NULL;
    return w && w->kind == N_WRITE && w->nin == 2 && w->in[1] == tr->nodes[r].out;
}

/* Extra outputs. Adam writes m2 = b1*m + (1-b1)*g into m, v2 into v, then
 * p2 = p - step*m2/(sqrt(v2)+eps) into p: three kernels that read g twice
 * and m2, v2 back. A pointwise group absorbs a pointwise group of its
 * domain whose result it reads when that result's only other reader is a
 * write into a capture that may move after the group's root: the kernel
 * stores the result into the capture in a phase of its own, later phases
 * read it back from there, and the write finds its data in place. Nothing
 * else in the merged group may read that capture (its old value would be
 * gone); otherwise the merge is undone. */
static void merge_extras(const kn_trace *tr, int *group, const nclass *cls, const int *uses, int r, extras *xs,
                         int *orig, const int *roots) {
    extras *x = &xs[r];
    if (group[r] != r || !pointwise_group(group, cls, r)) return;
    const tvalue *dom = &tr->vals[tr->nodes[r].out];
    memcpy(orig, group, (size_t)(r + 1) * sizeof *orig);
    for (int k = 0; k < r; k++) {
        const tnode *q = &tr->nodes[k];
        for (int a = 0; group[k] == r && a < q->nin && x->n < KN_FUSE_MAX_EXTRA; a++) {
            int id = q->in[a];
            if (id < 0 || tr->vals[id].kind != V_NODE || uses[id] != 2) continue;
            int h = tr->vals[id].index, w;
            if (group[h] != h || xs[h].n || !pointwise_group(group, cls, h) || !same_shape(&tr->vals[id], dom) ||
                (w = write_of(tr, id, h, r)) < 0 || !kn__write_can_defer(tr, roots, w, r + own_write(tr, r)))
                continue;
            for (int m = 0; m <= h; m++)
                if (group[m] == h) group[m] = r;
            x->val[x->n] = id;
            x->write[x->n] = w;
            x->from[x->n++] = h;
        }
    }
    for (int e = 0; e < x->n; e++)
        for (int k = 0; k <= r; k++) {
            const tnode *q = &tr->nodes[k];
            bool reads = false;
            for (int a = 0; a < q->nin; a++) reads |= kn__write_may_touch(tr, roots, x->write[e], q->in[a]);
            if (group[k] == r && reads && orig[k] != x->from[e]) {
                memcpy(group, orig, (size_t)(r + 1) * sizeof *orig);
                x->n = 0;
                return;
            }
        }
}

static int find(int *parent, int i) {
    while (parent[i] != i) i = parent[i] = parent[parent[i]];
    return i;
}

/* Lowers the group rooted at node root into g; false if it does not fit. */
static bool plan_group(const kn_trace *tr, const int *group, int root, const nclass *cls, const extras *x,
                       fuse_group *g, lower *L) {
    L->ns = L->np = L->nin = 0;
    L->failed = false;
    /* a softmax keeps its exponentials in an element-wise result only */
    L->stored = is_reduction(tr->nodes[root].op);
    for (int v = 0; v < tr->nvals; v++) L->step_of[v] = -1;
    bool rows = false;
    for (int k = 0; k <= root && !L->failed; k++)
        if (group[k] == root) {
            rows |= cls[k] == C_ROW;
            lower_node(L, tr, &tr->nodes[k]);
            /* an extra output is stored by its own phase; later phases read it back */
            for (int e = 0; e < x->n; e++)
                if (tr->nodes[k].out == x->val[e]) {
                    phase(L, KN_PHASE_STORE, L->step_of[x->val[e]], EXTRA_MARK(e));
                    L->step_of[x->val[e]] = step(L, (kn_jit_step){.kind = KN_JIT_INPUT, .arg = EXTRA_MARK(e)});
                }
        }
    const tnode *rn = &tr->nodes[root];
    if (tr->vals[rn->out].dtype != KN_F32) return false;  /* a comparison whose reader did not fuse */
    bool row_out = L->row_value[rn->out];
    int out_step = L->step_of[rn->out];
    phase(L, row_out ? KN_PHASE_ROW_STORE : KN_PHASE_STORE, out_step, OUTPUT_MARK);
    if (L->failed) return false;
    for (int i = 0; i < L->ns; i++)
        if (L->s[i].kind == KN_JIT_INPUT && L->s[i].arg <= OUTPUT_MARK) L->s[i].arg = L->nin - 2 - L->s[i].arg;
    for (int p = 0; p < L->np; p++)
        if (L->ph[p].out <= OUTPUT_MARK) L->ph[p].out = L->nin - 2 - L->ph[p].out;

    /* inner stride classes from the trace-time shapes */
    const tvalue *dom = domain(tr, rn, cls[root]);
    for (int k = 0; k < tr->nnodes; k++)
        if (group[k] == root && cls[k] == C_ROW) dom = domain(tr, &tr->nodes[k], C_ROW);
    const int64_t *shapes[KN_JIT_MAX_OPERANDS];
    int ranks[KN_JIT_MAX_OPERANDS];
    for (int k = 0; k < L->nin; k++) {
        shapes[k] = tr->vals[L->inputs[k]].shape;
        ranks[k] = tr->vals[L->inputs[k]].ndim;
    }
    if (L->nin + 1 + x->n > KN_JIT_MAX_OPERANDS) return false;
    for (int e = -1; e < x->n; e++) {
        shapes[L->nin + 1 + e] = tr->vals[e < 0 ? rn->out : x->val[e]].shape;
        ranks[L->nin + 1 + e] = tr->vals[e < 0 ? rn->out : x->val[e]].ndim;
    }
    int64_t lay[1 + KN_MAX_DIMS * (KN_JIT_MAX_OPERANDS + 1)];
    if (!(g->f = calloc(1, sizeof *g->f))) return false;
    *g->f = (struct kn_fused){.rows = rows, .row_out = row_out, .nd = dom->ndim, .nin = L->nin, .nextra = x->n};
    for (int e = 0; e < x->n; e++) g->f->extra_val[e] = x->val[e];
    layout(dom->shape, dom->ndim, L->nin + 1 + x->n, shapes, ranks, NULL, rows, row_out, lay, g->f->inner);

    struct kn_fused *f = g->f;
    f->steps = malloc((size_t)L->ns * sizeof *f->steps);
    g->inputs = malloc(((size_t)L->nin + 1) * sizeof *g->inputs);
    if (!f->steps || !g->inputs) return false;
    memcpy(f->steps, L->s, (size_t)L->ns * sizeof *L->s);
    memcpy(g->inputs, L->inputs, (size_t)L->nin * sizeof *L->inputs);
    memcpy(f->phases, L->ph, (size_t)L->np * sizeof *L->ph);
    f->nsteps = L->ns;
    f->nphases = L->np;
    return true;
}

/* Node k leaves group r, and so do the members that feed it (their values
 * are read by k alone) and the extra outputs they make. */
static void eject(const kn_trace *tr, int *group, extras *x, int k, int r) {
    group[k] = -1;
    for (int e = 0; e < x->n; e++)
        if (x->val[e] == tr->nodes[k].out) {
            x->n--;
            x->val[e] = x->val[x->n], x->write[e] = x->write[x->n], x->from[e] = x->from[x->n];
            e--;
        }
    for (int j = 0; j < tr->nodes[k].nin; j++) {
        int u = tr->nodes[k].in[j];
        if (u >= 0 && tr->vals[u].kind == V_NODE && group[tr->vals[u].index] == r) eject(tr, group, x, tr->vals[u].index, r);
    }
}

/* A group runs at its root's place, so its members read their operands
 * there. A member reading a value that a write in between may change (a
 * capture on the storage of the write's target) leaves the group. Writes
 * of the group's own extra outputs move after the root: they do not count. */
static void keep_reads_before_writes(const kn_trace *tr, const int *roots, int *group, extras *xs) {
    for (int k = tr->nnodes - 1; k >= 0; k--) {
        int r = group[k];
        bool hit = false;
        for (int w = k + 1; r > k && w < r && !hit; w++) {
            bool moved = false;
            for (int e = 0; e < xs[r].n; e++) moved |= xs[r].write[e] == w;
            for (int j = 0; tr->nodes[w].kind == N_WRITE && !moved && j < tr->nodes[k].nin && !hit; j++)
                hit = kn__write_may_touch(tr, roots, w, tr->nodes[k].in[j]);
        }
        if (hit) eject(tr, group, &xs[r], k, r);
    }
}

kn_fuse_job *kn__fuse_prepare(const plan *pl, const int *outs, int nout) {
    const kn_trace *tr = pl->tr;
    const char *e = getenv("KN_JIT");
    if (e && !strcmp(e, "0")) return NULL;  /* KN_JIT=0: plans run op by op */
    int n = tr->nnodes;
    kn_fuse_job *j = calloc(1, sizeof *j);
    int *uses = calloc((size_t)tr->nvals + 1, sizeof *uses), *parent = malloc(((size_t)n + 1) * sizeof *parent);
    int *user = calloc((size_t)tr->nvals + 1, sizeof *user);
    extras *xs = calloc((size_t)n + 1, sizeof *xs);
    nclass *cls = malloc(((size_t)n + 1) * sizeof *cls);
    lower L = {.s = malloc(KN_JIT_MAX_STEPS * sizeof *L.s),
               .inputs = malloc(KN_JIT_MAX_OPERANDS * sizeof *L.inputs),
               .step_of = malloc(((size_t)tr->nvals + 1) * sizeof *L.step_of),
               .row_value = calloc((size_t)tr->nvals + 1, sizeof *L.row_value)};
    if (j) {
        j->group = malloc(((size_t)n + 1) * sizeof *j->group);
        j->g = calloc((size_t)n + 1, sizeof *j->g);
        j->name = strdup(tr->name);
        j->nnodes = n;
    }
    if (!j || !j->group || !j->g || !j->name || !uses || !user || !xs || !parent || !cls || !L.s || !L.inputs ||
        !L.step_of || !L.row_value) {
        kn__fuse_job_free(j);
        j = NULL;
        goto done;
    }
    for (int i = 0; i < n; i++) {  /* consumers: x*x uses x in one node */
        for (int k = 0; k < tr->nodes[i].nin; k++) {
            int id = tr->nodes[i].in[k];
            bool again = false;
            for (int q = 0; q < k; q++) again |= tr->nodes[i].in[q] == id;
            if (id >= 0 && !again) uses[id]++, user[id] = i;
        }
    }
    for (int k = 0; k < nout; k++) uses[outs[k]] += 2;  /* an output is never an internal value */
    for (int i = 0; i < n; i++) cls[i] = classify(tr, &tr->nodes[i], cls, uses, user);
    for (int i = 0; i < n; i++) parent[i] = i;
    /* A node joins the group of its consumer when that consumer is its only user. */
    for (int i = 0; i < n; i++) {
        const tnode *c = &tr->nodes[i];
        if (cls[i] == C_NONE) continue;
        for (int k = 0; k < c->nin; k++) {
            int id = c->in[k];
            if (id < 0 || tr->vals[id].kind != V_NODE || uses[id] != 1) continue;
            int m = tr->vals[id].index;
            if (cls[m] == C_NONE || !may_join(tr, &tr->nodes[m], cls[m], c, cls[i])) continue;
            int ra = find(parent, m), rb = find(parent, i);
            if (ra != rb) parent[ra] = rb;
        }
    }
    for (int i = 0; i < n; i++) j->group[i] = cls[i] != C_NONE ? find(parent, i) : -1;
    int *roots = kn__storage_roots(tr);
    for (int r = 0; roots && r < n; r++) merge_extras(tr, j->group, cls, uses, r, xs, parent, roots);  /* parent: scratch now */
    if (roots) keep_reads_before_writes(tr, roots, j->group, xs);
    else
        for (int i = 0; i < n; i++) j->group[i] = -1;  /* no memory to check: no fusion */
    free(roots);
    for (int i = 0; i < n; i++) {
        /* The group's last member is its root: the value the rest feeds. */
        if (j->group[i] != i) continue;
        int members = 0, rowops = 0;
        for (int k = 0; k < n; k++)
            if (j->group[k] == i) {
                members++;
                rowops += cls[k] == C_ROW && !is_reduction(tr->nodes[k].op);
            }
        /* a lone elementwise op or reduction gains nothing over its eager loop */
        if (members < 2 && !rowops) continue;
        fuse_group *g = &j->g[j->ngroups];
        if (!plan_group(tr, j->group, i, cls, &xs[i], g, &L)) {
            free(g->inputs);
            kn__fused_free(g->f);
            *g = (fuse_group){0};
            for (int k = 0; k < n; k++)
                if (j->group[k] == i) j->group[k] = -1;
            continue;
        }
        g->root = i;
        g->members = members;
        g->x = xs[i];
        j->ngroups++;
    }
done:
    free(uses);
    free(user);
    free(xs);
    free(parent);
    free(cls);
    free(L.s);
    free(L.inputs);
    free(L.step_of);
    free(L.row_value);
    return j;
}

void kn__fuse_compile(kn_fuse_job *j) {
    static int dump_env = -1;
    bool dump = kn__env(&dump_env, "KN_DUMP", "kernels");
    for (int i = 0; j && i < j->ngroups; i++) {
        fuse_group *g = &j->g[i];
        kn_jit_desc d = desc_of(g->f, g->f->inner);
        if (dump) kn__jit_print_c(stderr, &d, j->name);
        if (!(g->f->k = kn__jit_kernel(&d)))
            kn_clear_error();  /* no JIT for this group: its nodes run one by one */
    }
}

bool kn__same_view(const kn_tensor *a, const kn_tensor *b) {
    return a->storage == b->storage && a->offset == b->offset && a->ndim == b->ndim &&
           !memcmp(a->shape, b->shape, (size_t)a->ndim * sizeof *a->shape) &&
           !memcmp(a->strides, b->strides, (size_t)a->ndim * sizeof *a->strides);
}

/* The capture that node k+1 overwrites with node k's result, if the result
 * may live in it: no later write touches that capture's storage while the
 * result is still read (its readers then read the capture). */
static kn_tensor *write_target(const kn_trace *tr, const int *last_use, int k) {
    if (k + 1 >= tr->nnodes) return NULL;
    const tnode *n = &tr->nodes[k], *w = &tr->nodes[k + 1];
    if (w->kind != N_WRITE || w->nin != 2 || w->in[1] != n->out || w->in[0] < 0) return NULL;
    const tvalue *x = &tr->vals[w->in[0]];
    if (x->kind != V_CAPTURE || !same_shape(x, &tr->vals[n->out]) || x->dtype != KN_F32) return NULL;
    for (int i = k + 2; i < tr->nnodes && i <= last_use[n->out]; i++) {
        const tnode *m = &tr->nodes[i];
        if (m->kind == N_COND) return NULL;
        if (m->kind == N_WRITE && m->in[0] >= 0 && tr->vals[m->in[0]].kind != V_NODE &&
            (!tr->vals[m->in[0]].t || tr->vals[m->in[0]].t->storage == x->t->storage))
            return NULL;
    }
    return x->t;
}

/* Write node w with after[w] = r >= 0 moves right after node r, or after
 * r's own write when that follows r (it stays next to r for `into`). */
static void move_writes(kn_trace *tr, bool *dead, const int *after, tnode *nodes, bool *d) {
    int n = tr->nnodes, m = 0;
    for (int k = 0; k < n; k++) {
        if (after[k] >= 0) continue;
        int r = k;
        nodes[m] = tr->nodes[k], d[m++] = dead[k];
        bool own = k + 1 < n && after[k + 1] < 0 && tr->nodes[k + 1].kind == N_WRITE &&
                   tr->nodes[k + 1].nin == 2 && tr->nodes[k + 1].in[1] == tr->nodes[k].out;
        if (own) nodes[m] = tr->nodes[++k], d[m++] = dead[k];  /* its next node either way */
        for (int w = 0; w < n; w++)
            if (after[w] == r) nodes[m] = tr->nodes[w], d[m++] = dead[w];
    }
    memcpy(tr->nodes, nodes, (size_t)n * sizeof *nodes);
    memcpy(dead, d, (size_t)n * sizeof *d);
}

void kn__fuse_apply(plan *pl, kn_fuse_job *j, const int *outs, int nout) {
    kn_trace *tr = pl->tr;
    bool *dead = calloc((size_t)tr->nnodes + 1, sizeof *dead);
    if (!j || !dead || j->nnodes != tr->nnodes) {
        free(dead);
        return;
    }
    int n = tr->nnodes, *after = malloc(((size_t)n + 1) * sizeof *after);
    tnode *order = malloc(((size_t)n + 1) * sizeof *order);
    bool *dorder = malloc(((size_t)n + 1) * sizeof *dorder);
    if (!after || !order || !dorder) {
        free(dead);
        free(after);
        free(order);
        free(dorder);
        return;
    }
    for (int k = 0; k < n; k++) after[k] = -1;
    for (int i = 0; i < j->ngroups; i++) {
        fuse_group *g = &j->g[i];
        if (!g->f->k) continue;
        tnode *root = &tr->nodes[g->root];
        for (int e = 0; e < g->x.n; e++) {
            after[g->x.write[e]] = g->root;
            g->f->extra_into[e] = tr->vals[tr->nodes[g->x.write[e]].in[0]].t;
        }
        for (int k = 0; k < tr->nnodes; k++)
            if (j->group[k] == g->root && k != g->root) dead[k] = true;
        free(root->in);
        root->in = g->inputs;  /* handed over */
        g->inputs = NULL;
        root->nin = g->f->nin;
        root->kind = N_FUSED;
        root->fused = g->f;
        g->f = NULL;
        root->nfused = g->members;
    }
    move_writes(tr, dead, after, order, dorder);
    free(after);
    free(order);
    free(dorder);
    kn__plan_compact(pl, dead, outs, nout);  /* drops the fused members */
    free(dead);
    for (int k = 0; k < tr->nnodes; k++)  /* extra outputs are made by their kernel now */
        for (int e = 0; tr->nodes[k].kind == N_FUSED && e < tr->nodes[k].fused->nextra; e++)
            tr->vals[tr->nodes[k].fused->extra_val[e]].index = k;
    /* A pointwise kernel reads each element before it writes it: it can write
     * over a node value of its own shape that dies here (checked again per
     * call: nothing else may hold the buffer), or straight into the capture
     * the next node overwrites with its result (an optimizer's update). */
    for (int k = 0; k < tr->nnodes; k++) {
        tnode *n = &tr->nodes[k];
        if (n->kind != N_FUSED) continue;
        n->fused->inplace = -1;
        n->fused->into = n->fused->rows ? NULL : write_target(tr, pl->last_use, k);
        for (int j = 0; j < n->nin && !n->fused->rows; j++) {
            const tvalue *v = &tr->vals[n->in[j]];
            if (v->kind == V_NODE && pl->last_use[n->in[j]] == k && v->dtype == KN_F32 &&
                same_shape(v, &tr->vals[n->out])) {
                n->fused->inplace = j;
                break;
            }
        }
    }
}

void kn__plan_fuse(plan *pl, const int *outs, int nout) {
    kn_fuse_job *j = kn__fuse_prepare(pl, outs, nout);
    kn__fuse_compile(j);
    kn__fuse_apply(pl, j, outs, nout);
    kn__fuse_job_free(j);
}

/* ---- running a fused node ---- */
typedef struct {
    kn_jit_kernel k;
    void **args;
    bool failed;
} run_ctx;

static void run_range(void *p, int64_t begin, int64_t end) {
    run_ctx *c = p;
    if (kn__jit_run(c->k, c->args, begin, end) != 0) c->failed = true;
}

/* The kernel for operands with these last-dim stride classes: the planned
 * one, a variant compiled earlier, or a new variant (NULL with an error). */
static kn_jit_kernel kernel_for(struct kn_fused *f, const uint8_t *inner, int nops) {
    if (!memcmp(inner, f->inner, (size_t)nops)) return f->k;
    int nv = atomic_load(&f->nvariants);
    for (int v = 0; v < nv && v < MAX_VARIANTS; v++) {
        kn_jit_kernel k = atomic_load(&f->variant[v].k);
        if (k && !memcmp(inner, f->variant[v].inner, (size_t)nops)) return k;
    }
    kn_jit_desc d = desc_of(f, inner);
    kn_jit_kernel k = kn__jit_kernel(&d);
    int v = k ? atomic_fetch_add(&f->nvariants, 1) : MAX_VARIANTS;
    if (v < MAX_VARIANTS) {
        memcpy(f->variant[v].inner, inner, (size_t)nops);
        atomic_store(&f->variant[v].k, k);
    }
    return k;
}

int kn__fused_extras(const tnode *n, int *vals) {
    for (int e = 0; e < n->fused->nextra; e++) vals[e] = n->fused->extra_val[e];
    return n->fused->nextra;
}

/* A capture a kernel may store into directly: a contiguous f32 of the
 * domain's shape whose storage no operand reads through another view (they
 * read what it held before) and no output taken so far uses. */
static bool capture_fits(const kn_tensor *t, const tnode *n, const tvalue *now, kn_tensor *const *args,
                         kn_tensor *const *taken, int ntaken) {
    bool fits = t && kn_is_contiguous(t) && t->dtype == KN_F32 && t->ndim == now->ndim &&
                !memcmp(t->shape, now->shape, (size_t)t->ndim * sizeof *t->shape);
    for (int j = 0; fits && j < n->nin; j++) fits = args[j]->storage != t->storage || kn__same_view(args[j], t);
    for (int k = 0; fits && k < ntaken; k++) fits = taken[k]->storage != t->storage;
    return fits;
}

kn_tensor *kn__fused_run(const char *name, const tnode *n, const tvalue *now, kn_tensor **args, kn_tensor **extra) {
    struct kn_fused *f = n->fused;
    int nops = n->nin + 1 + f->nextra;
    kn_tensor *outs[1 + KN_FUSE_MAX_EXTRA] = {0};
    bool ok = false;
    void *ptrs[KN_JIT_MAX_OPERANDS + 1];
    kn_tensor *conv[KN_JIT_MAX_OPERANDS] = {0}, *r = NULL;
    const int64_t *shapes[KN_JIT_MAX_OPERANDS], *strides[KN_JIT_MAX_OPERANDS];
    int ranks[KN_JIT_MAX_OPERANDS];
    /* the domain: every operand broadcast together (and the result, unless one per row) */
    int64_t dom[KN_MAX_DIMS];
    int nd = f->row_out ? 0 : now->ndim;
    if (!f->row_out) memcpy(dom, now->shape, (size_t)nd * sizeof *dom);
    for (int j = 0; j < n->nin; j++) {
        kn_tensor *x = args[j];
        if (x->ndim == 0 && x->dtype != KN_F32) {  /* a scalar operand, as f32 the way the op converts it */
            if (!(x = conv[j] = kn_cast(x, KN_F32))) goto done;
        } else if (x->dtype != KN_F32) {
            kn__error("kn_call %s: a fused operand is %s where the plan expected f32", name, kn_dtype_name(x->dtype));
            goto done;
        }
        ptrs[j] = kn__ptr(x);  /* strided views are read in place */
        shapes[j] = x->shape;
        strides[j] = x->strides;
        ranks[j] = x->ndim;
        if (!kn__broadcast_shape(dom, nd, x->shape, x->ndim, dom, &nd)) {
            kn__error("kn_call %s: fused operands no longer broadcast together", name);
            goto done;
        }
    }
    if (nd != f->nd) {
        char b0[KN_SHAPE_BUF];
        kn__error("kn_call %s: a fused kernel's domain is %s where the plan expected rank %d", name,
                  kn__shape_str(dom, nd, b0), f->nd);
        goto done;
    }
    kn_tensor *x = f->inplace >= 0 ? args[f->inplace] : NULL;
    if (capture_fits(f->into, n, now, args, NULL, 0))
        r = kn__ret(f->into);  /* the write that follows finds its data in place */
    /* the plan holds the one reference */
    else if (x && atomic_load(&x->refcount) == 1 && atomic_load(&x->storage->refcount) == 1 && kn_is_contiguous(x) &&
             x->dtype == KN_F32 && !x->requires_grad && x->ndim == now->ndim &&
             !memcmp(x->shape, now->shape, (size_t)x->ndim * sizeof *x->shape))
        r = kn__ret(x);  /* written in place: the buffer dies here and nothing else holds it */
    else if (!(r = kn__alloc(now->shape, now->ndim, KN_F32)))
        goto done;
    outs[0] = r;
    for (int e = 0; e < f->nextra; e++)  /* else a new buffer, which the moved write copies */
        if (!(outs[1 + e] = capture_fits(f->extra_into[e], n, now, args, outs, 1 + e)
                                ? kn__ret(f->extra_into[e])
                                : kn__alloc(now->shape, now->ndim, KN_F32)))
            goto done;
    /* a row kernel runs for every row, even empty ones (a sum of nothing is 0) */
    int64_t count = f->rows ? kn__numel(dom, nd - 1) : kn__numel(dom, nd);
    if (count > 0 && kn__numel(r->shape, r->ndim) > 0) {
        for (int e = 0; e <= f->nextra; e++) {
            ptrs[n->nin + e] = kn__ptr(outs[e]);
            shapes[n->nin + e] = outs[e]->shape;
            strides[n->nin + e] = NULL;  /* contiguous; a row result may lack the last dim */
            ranks[n->nin + e] = outs[e]->ndim;
        }
        int64_t lay[1 + KN_MAX_DIMS * (KN_JIT_MAX_OPERANDS + 1)];
        uint8_t inner[KN_JIT_MAX_OPERANDS];
        layout(dom, nd, nops, shapes, ranks, strides, f->rows, f->row_out, lay, inner);
        kn_jit_kernel k = kernel_for(f, inner, nops);
        if (!k) goto done;
        ptrs[nops] = lay;
        int64_t len = lay[lay[0]], per = f->rows && len > 0 ? len : 1;
        run_ctx c = {k, ptrs, false};
        kn__parallel_for(count, (1 << 14) / per > 0 ? (1 << 14) / per : 1, run_range, &c);
        if (c.failed) {
            kn__error("kn_call %s: a fused kernel failed", name);
            goto done;
        }
    }
    ok = true;
done:
    for (int j = 0; j < n->nin; j++) kn__drop(conv[j]);
    for (int e = 0; e <= f->nextra; e++)
        if (!ok) kn__drop(outs[e]);
        else if (e > 0) extra[e - 1] = outs[e];
    return ok ? r : NULL;
}
