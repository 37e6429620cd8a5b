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

/* A node the JIT can evaluate: f32 in and out, operands of its own shape or
 * scalar constants, and no autograd graph needed from it at call time. */
static bool candidate(const kn_trace *tr, const tnode *n) {
    if (n->kind != N_OP || !fusable_op(n->op) || n->out < 0) return false;
    const tvalue *o = &tr->vals[n->out];
    if (o->dtype != KN_F32 || (o->requires_grad && !tr->has_backward)) return false;
    for (int j = 0; j < n->nin; j++) {
        float c;
        if (n->in[j] < 0) return false;
        if (!scalar_const(tr, n->in[j], &c) && !same_type(&tr->vals[n->in[j]], o)) return false;
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
        s.kind = KN_JIT_INPUT;
        s.input = *ninputs;
        inputs[(*ninputs)++] = id;
    }
    if (*nsteps == KN_JIT_MAX_STEPS) return -1;
    steps[*nsteps] = s;
    return memo[id] = (*nsteps)++;
}

void kn__plan_fuse(plan *pl, const int *outs, int nout) {
    kn_trace *tr = pl->tr;
    const char *e = getenv("KN_JIT");
    if (e && !strcmp(e, "0")) return;  /* KN_JIT=0: plans run op by op */
    int n = tr->nnodes;
    int *uses = calloc((size_t)tr->nvals + 1, sizeof *uses), *parent = malloc(((size_t)n + 1) * sizeof *parent);
    int *size = malloc(((size_t)n + 1) * sizeof *size), *memo = malloc(((size_t)tr->nvals + 1) * sizeof *memo);
    kn_jit_step *steps = malloc(KN_JIT_MAX_STEPS * sizeof *steps);
    bool *dead = calloc((size_t)n + 1, sizeof *dead);
    if (!uses || !parent || !size || !memo || !steps || !dead) goto done;
    for (int i = 0; i < n; i++)  /* consumers: x*x uses x in one node */
        for (int j = 0; j < tr->nodes[i].nin; j++) {
            int id = tr->nodes[i].in[j];
            bool again = false;
            for (int k = 0; k < j; k++) again |= tr->nodes[i].in[k] == id;
            if (id >= 0 && !again) uses[id]++;
        }
    for (int k = 0; k < nout; k++) uses[outs[k]] += 2;  /* an output is never an internal value */
    for (int i = 0; i < n; i++) parent[i] = i, size[i] = 1;
    /* A candidate joins the group of its consumer when it is that consumer's only input from it. */
    for (int i = 0; i < n; i++) {
        tnode *c = &tr->nodes[i];
        if (!candidate(tr, c)) continue;
        for (int j = 0; j < c->nin; j++) {
            int id = c->in[j];
            if (tr->vals[id].kind != V_NODE || uses[id] != 1) continue;
            int m = tr->vals[id].index;
            if (!candidate(tr, &tr->nodes[m])) continue;
            int a = find(parent, m), b = find(parent, i);
            if (a != b) {
                parent[a] = b;
                size[b] += size[a];
            }
        }
    }
    int *group = size;  /* reused: group root of each node, or -1 */
    for (int i = 0; i < n; i++) group[i] = candidate(tr, &tr->nodes[i]) ? find(parent, i) : -1;
    for (int i = 0; i < n; i++) {
        /* The group's last member is its root: the value the rest feeds. */
        if (group[i] < 0 || find(parent, i) != i) continue;
        int members = 0;
        for (int k = 0; k < n; k++) members += group[k] == i;
        if (members < 2) continue;
        int inputs[KN_JIT_MAX_INPUTS], ninputs = 0, nsteps = 0;
        for (int v = 0; v < tr->nvals; v++) memo[v] = -1;
        tnode *root = &tr->nodes[i];
        if (emit(tr, root->out, group, i, steps, &nsteps, inputs, &ninputs, memo) < 0) continue;
        const char *dump = getenv("KN_DUMP");
        if (dump && strstr(dump, "kernels")) print_kernel(stderr, tr->name, steps, nsteps, ninputs);
        kn_jit_kernel k = kn__jit_elementwise(steps, nsteps, ninputs);
        if (!k) {  /* no JIT for this chain: the nodes run one by one */
            kn_clear_error();
            continue;
        }
        int *in = malloc(((size_t)ninputs + 1) * sizeof *in);
        if (!in) continue;
        memcpy(in, inputs, (size_t)ninputs * sizeof *in);
        for (int k2 = 0; k2 < n; k2++)
            if (group[k2] == i && k2 != i) dead[k2] = true;
        free(root->in);
        root->in = in;
        root->nin = ninputs;
        root->kind = N_FUSED;
        root->kernel = k;
        root->nfused = members;
    }
    kn__plan_compact(pl, dead, outs, nout);  /* drops the fused members */
done:
    free(uses);
    free(parent);
    free(size);
    free(memo);
    free(steps);
    free(dead);
}
