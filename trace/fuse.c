/* Fusion: chains of f32 elementwise nodes become one JIT'd loop (jit/), so
 * their intermediates are never stored. The kernels evaluate the formulas of
 * core/scalar.h, so fused results are bitwise equal to eager ones. Only
 * same-shape operands and 0-dim constants are fused for now: broadcasting
 * and strided loads are the next step of the kernel IR. */
#include "ir.h"
#include "../jit/jit.h"
#include <stdlib.h>
#include <string.h>

static bool fusable_op(kn_op op) {
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

static bool same_type(const tvalue *a, const tvalue *b) {
    return a->dtype == b->dtype && a->ndim == b->ndim &&
           !memcmp(a->shape, b->shape, (size_t)a->ndim * sizeof(int64_t)) && !memcmp(a->sym, b->sym, sizeof a->sym);
}

/* A 0-dim constant, as the f32 the eager op would convert it to. */
static bool scalar_const(const kn_trace *tr, int id, float *v) {
    if (id < 0 || tr->vals[id].kind != V_CONST || tr->vals[id].ndim != 0) return false;
    const kn_tensor *t = tr->vals[id].t;
    *v = (float)kn__load(t->storage->data, t->dtype);
    return true;
}

/* A 0-dim value that is not a constant: read as element 0 of an input. */
static bool scalar_value(const kn_trace *tr, int id) {
    float c;
    return id >= 0 && tr->vals[id].ndim == 0 && !scalar_const(tr, id, &c) && tr->vals[id].dtype != KN_BOOL;
}

/* A node the JIT can evaluate: f32 out, operands of its own shape (f32),
 * scalar constants or 0-dim tensors, and no autograd graph needed from it at
 * call time. */
static bool candidate(const kn_trace *tr, const tnode *n) {
    if (n->kind != N_OP || !fusable_op(n->op) || n->out < 0) return false;
    const tvalue *o = &tr->vals[n->out];
    if (o->dtype != KN_F32 || (o->requires_grad && !tr->has_backward)) return false;
    for (int j = 0; j < n->nin; j++) {
        float c;
        if (n->in[j] < 0) return false;
        if (!scalar_const(tr, n->in[j], &c) && !scalar_value(tr, n->in[j]) && !same_type(&tr->vals[n->in[j]], o))
            return false;
    }
    return true;
}

/* KN_DUMP=kernels: the chain as the C it computes, with the formulas of
 * core/scalar.h (the kernel is the same loop in LLVM IR). */
static void print_kernel(FILE *o, const char *name, const kn_jit_step *s, int nsteps, int ninputs) {
    fprintf(o, "/* %s: fused kernel, %d steps */\nvoid kernel(void **args, int64_t begin, int64_t end) {\n", name,
            nsteps);
    for (int k = 0; k < ninputs; k++) fprintf(o, "    const float *restrict in%d = args[%d];\n", k, k);
    fprintf(o, "    float *restrict out = args[%d];\n    for (int64_t i = begin; i < end; i++) {\n", ninputs);
    for (int k = 0; k < nsteps; k++) {
        fprintf(o, "        float v%d = ", k);
        if (s[k].kind == KN_JIT_INPUT) fprintf(o, "in%d[i];\n", s[k].input);
        else if (s[k].kind == KN_JIT_SCALAR) fprintf(o, "in%d[0];\n", s[k].input);
        else if (s[k].kind == KN_JIT_CONST) fprintf(o, "%#.9gf;\n", (double)s[k].value);
        else if (kn_op_table[s[k].op].arity == 2)
            fprintf(o, "kn_s_%s_f32(v%d, v%d);\n", kn_op_table[s[k].op].name, s[k].a, s[k].b);
        else
            fprintf(o, "kn_s_%s_f32(v%d);\n", kn_op_table[s[k].op].name, s[k].a);
    }
    fprintf(o, "        out[i] = v%d;\n    }\n}\n", nsteps - 1);
}

static int find(int *parent, int i) {
    while (parent[i] != i) i = parent[i] = parent[parent[i]];
    return i;
}

/* Appends the steps computing value id (recursively, members first). */
static int emit(const kn_trace *tr, int id, const int *group, int g, kn_jit_step *steps, int *nsteps,
                int *inputs, int *ninputs, int *memo) {
    if (memo[id] >= 0) return memo[id];
    const tvalue *v = &tr->vals[id];
    kn_jit_step s = {0};
    float c;
    if (v->kind == V_NODE && group[v->index] == g) {
        const tnode *n = &tr->nodes[v->index];
        s.kind = KN_JIT_OP;
        s.op = n->op;
        s.a = emit(tr, n->in[0], group, g, steps, nsteps, inputs, ninputs, memo);
        s.b = n->nin > 1 ? emit(tr, n->in[1], group, g, steps, nsteps, inputs, ninputs, memo) : 0;
        if (s.a < 0 || s.b < 0) return -1;
    } else if (scalar_const(tr, id, &c)) {
        s.kind = KN_JIT_CONST;
        s.value = c;
    } else {
        if (*ninputs == KN_JIT_MAX_INPUTS) return -1;
        s.kind = scalar_value(tr, id) ? KN_JIT_SCALAR : KN_JIT_INPUT;
        s.input = *ninputs;
        inputs[(*ninputs)++] = id;
    }
    if (*nsteps == KN_JIT_MAX_STEPS) return -1;
    steps[*nsteps] = s;
    return memo[id] = (*nsteps)++;
}

/* One chain to fuse: its root node, members and the JIT steps. */
typedef struct {
    int root, members;
    kn_jit_step *steps;
    int nsteps, ninputs;
    int *inputs;        /* value ids of the kernel's operands */
    kn_jit_kernel k;
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
        free(j->g[i].steps);
        free(j->g[i].inputs);
    }
    free(j->g);
    free(j->group);
    free(j->name);
    free(j);
}

kn_fuse_job *kn__fuse_prepare(const plan *pl, const int *outs, int nout) {
    const kn_trace *tr = pl->tr;
    const char *e = getenv("KN_JIT");
    if (e && !strcmp(e, "0")) return NULL;  /* KN_JIT=0: plans run op by op */
    int n = tr->nnodes;
    kn_fuse_job *j = calloc(1, sizeof *j);
    int *uses = calloc((size_t)tr->nvals + 1, sizeof *uses), *parent = malloc(((size_t)n + 1) * sizeof *parent);
    int *memo = malloc(((size_t)tr->nvals + 1) * sizeof *memo);
    kn_jit_step *steps = malloc(KN_JIT_MAX_STEPS * sizeof *steps);
    if (j) {
        j->group = malloc(((size_t)n + 1) * sizeof *j->group);
        j->g = calloc((size_t)n + 1, sizeof *j->g);
        j->name = strdup(tr->name);
        j->nnodes = n;
    }
    if (!j || !j->group || !j->g || !j->name || !uses || !parent || !memo || !steps) {
        kn__fuse_job_free(j);
        j = NULL;
        goto done;
    }
    for (int i = 0; i < n; i++)  /* consumers: x*x uses x in one node */
        for (int k = 0; k < tr->nodes[i].nin; k++) {
            int id = tr->nodes[i].in[k];
            bool again = false;
            for (int q = 0; q < k; q++) again |= tr->nodes[i].in[q] == id;
            if (id >= 0 && !again) uses[id]++;
        }
    for (int k = 0; k < nout; k++) uses[outs[k]] += 2;  /* an output is never an internal value */
    for (int i = 0; i < n; i++) parent[i] = i;
    /* A candidate joins the group of its consumer when it is that consumer's only input from it. */
    for (int i = 0; i < n; i++) {
        const tnode *c = &tr->nodes[i];
        if (!candidate(tr, c)) continue;
        for (int k = 0; k < c->nin; k++) {
            int id = c->in[k];
            if (tr->vals[id].kind != V_NODE || uses[id] != 1) continue;
            int m = tr->vals[id].index;
            if (!candidate(tr, &tr->nodes[m])) continue;
            int ra = find(parent, m), rb = find(parent, i);
            if (ra != rb) parent[ra] = rb;
        }
    }
    for (int i = 0; i < n; i++) j->group[i] = candidate(tr, &tr->nodes[i]) ? find(parent, i) : -1;
    for (int i = 0; i < n; i++) {
        /* The group's last member is its root: the value the rest feeds. */
        if (j->group[i] != i) continue;
        int members = 0;
        for (int k = 0; k < n; k++) members += j->group[k] == i;
        if (members < 2) continue;
        fuse_group *g = &j->g[j->ngroups];
        int inputs[KN_JIT_MAX_INPUTS];
        for (int v = 0; v < tr->nvals; v++) memo[v] = -1;
        g->nsteps = g->ninputs = 0;
        if (emit(tr, tr->nodes[i].out, j->group, i, steps, &g->nsteps, inputs, &g->ninputs, memo) < 0) continue;
        g->steps = malloc((size_t)g->nsteps * sizeof *g->steps);
        g->inputs = malloc(((size_t)g->ninputs + 1) * sizeof *g->inputs);
        if (!g->steps || !g->inputs) {
            free(g->steps);
            free(g->inputs);
            continue;
        }
        memcpy(g->steps, steps, (size_t)g->nsteps * sizeof *steps);
        memcpy(g->inputs, inputs, (size_t)g->ninputs * sizeof *inputs);
        g->root = i;
        g->members = members;
        j->ngroups++;
    }
done:
    free(uses);
    free(parent);
    free(memo);
    free(steps);
    return j;
}

void kn__fuse_compile(kn_fuse_job *j) {
    static int dump_env = -1;
    bool dump = kn__env(&dump_env, "KN_DUMP", "kernels");
    for (int i = 0; j && i < j->ngroups; i++) {
        fuse_group *g = &j->g[i];
        if (dump) print_kernel(stderr, j->name, g->steps, g->nsteps, g->ninputs);
        if (!(g->k = kn__jit_elementwise(g->steps, g->nsteps, g->ninputs)))
            kn_clear_error();  /* no JIT for this chain: its nodes run one by one */
    }
}

void kn__fuse_apply(plan *pl, kn_fuse_job *j, const int *outs, int nout) {
    kn_trace *tr = pl->tr;
    bool *dead = calloc((size_t)tr->nnodes + 1, sizeof *dead);
    if (!j || !dead || j->nnodes != tr->nnodes) {
        free(dead);
        return;
    }
    for (int i = 0; i < j->ngroups; i++) {
        fuse_group *g = &j->g[i];
        if (!g->k) continue;
        tnode *root = &tr->nodes[g->root];
        for (int k = 0; k < tr->nnodes; k++)
            if (j->group[k] == g->root && k != g->root) dead[k] = true;
        free(root->in);
        root->in = g->inputs;  /* handed over */
        g->inputs = NULL;
        root->nin = g->ninputs;
        root->kind = N_FUSED;
        root->kernel = g->k;
        root->nfused = g->members;
    }
    kn__plan_compact(pl, dead, outs, nout);  /* drops the fused members */
    free(dead);
}

void kn__plan_fuse(plan *pl, const int *outs, int nout) {
    kn_fuse_job *j = kn__fuse_prepare(pl, outs, nout);
    kn__fuse_compile(j);
    kn__fuse_apply(pl, j, outs, nout);
    kn__fuse_job_free(j);
}
