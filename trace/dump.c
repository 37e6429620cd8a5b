/* The plan as readable text (kn_fn_dump, KN_DUMP=ir) and as Graphviz DOT
 * (kn_fn_dot). */
#include "ir.h"

static const char *kind_name[] = {"input", "capture", "const", "node", "grad of"};
static const char *effect_name[] = {"", "write", "set_grad", "zero_grad", "cond", "fused", "scalars"};

static void put_type(FILE *o, const tvalue *v) {
    char b[KN_SHAPE_BUF];
    fprintf(o, "%s%s", kn_dtype_name(v->dtype), kn__shape_str(v->shape, v->ndim, b));
}

static void dump_at(FILE *o, const kn_trace *tr, const int *outs, int nout, const int *last_use, int indent);

void kn__dump_trace(FILE *o, const kn_trace *tr, const int *outs, int nout, const int *last_use) {
    dump_at(o, tr, outs, nout, last_use, 2);
}

static void dump_at(FILE *o, const kn_trace *tr, const int *outs, int nout, const int *last_use, int indent) {
    for (int i = 0; i < tr->nvals; i++) {
        const tvalue *v = &tr->vals[i];
        if (v->kind == V_NODE || (last_use && last_use[i] < 0)) continue;
        fprintf(o, "%*s%%%d = %s", indent, "", i, kind_name[v->kind]);
        if (v->kind == V_INPUT) fprintf(o, " %d", v->index);
        fputc(' ', o);
        put_type(o, v);
        fputc('\n', o);
    }
    for (int k = 0; k < tr->nnodes; k++) {
        const tnode *n = &tr->nodes[k];
        fprintf(o, "%*s", indent, "");
        for (int k = 0; n->kind == N_COND && k < n->nout; k++) fprintf(o, "%s%%%d", k ? ", " : "", n->out + k);
        if (n->kind == N_OP) fprintf(o, "%%%d = %s(", n->out, kn_op_table[n->op].name);
        else if (n->kind == N_FUSED)
            fprintf(o, "%%%d = fused<%d ops, last %s>(", n->out, n->nfused, kn_op_table[n->op].name);
        else if (n->kind == N_SCALARS) {
            const int *sv;
            for (int e = 0, ns = kn__scalars_outs(n, &sv); e < ns; e++) fprintf(o, "%s%%%d", e ? ", " : "", sv[e]);
            fprintf(o, " = scalars<%d ops>(", n->nfused);
        }
        else fprintf(o, "%s%s(", n->kind == N_COND ? " = " : "", effect_name[n->kind]);
        for (int j = 0; j < n->nin; j++) {
            if (n->in[j] >= 0) fprintf(o, "%s%%%d", j ? ", " : "", n->in[j]);
            else fprintf(o, "%snull", j ? ", " : "");
        }
        fputc(')', o);
        if (n->kind == N_OP || n->kind == N_FUSED) {
            fputc(' ', o);
            put_type(o, &tr->vals[n->out]);
        }
        int xv[KN_FUSE_MAX_EXTRA];
        for (int e = 0, nx = n->kind == N_FUSED ? kn__fused_extras(n, xv) : 0; e < nx; e++)
            fprintf(o, "%s%%%d", e ? ", " : ", also stores ", xv[e]);
        fputc('\n', o);
        for (int b = 0; n->kind == N_COND && b < 2; b++) {
            fprintf(o, "%*s%s:\n", indent + 2, "",
                    b ? "else" : "then");
            dump_at(o, n->branch[b]->tr, n->branch[b]->outs, n->nout, n->branch[b]->last_use, indent + 4);
        }
    }
    fprintf(o, "%*sreturn", indent, "");
    for (int k = 0; k < nout; k++) fprintf(o, "%s %%%d", k ? "," : "", outs[k]);
    fputc('\n', o);
}

void kn_fn_dump(const kn_fn *f, FILE *o) {
    if (!f || !o) return;
    if (f->nplans == 0) {
        fprintf(o, "kn_function %s: not traced yet\n", f->name);
        return;
    }
    const plan *pl = &f->plans[f->nplans - 1];
    fprintf(o, "kn_function %s: plan %d of %d, %d nodes\n", f->name, f->nplans, f->nplans, pl->tr->nnodes);
    kn__dump_trace(o, pl->tr, pl->outs, f->nout, pl->last_use);
}

void kn_fn_dot(const kn_fn *f, FILE *o) {
    if (!f || !o) return;
    fprintf(o, "digraph \"%s\" {\n  rankdir=TB;\n  node [fontname=monospace, fontsize=10];\n", f->name);
    if (f->nplans > 0) {
        const plan *pl = &f->plans[f->nplans - 1];
        const kn_trace *tr = pl->tr;
        for (int i = 0; i < tr->nvals; i++) {
            const tvalue *v = &tr->vals[i];
            if (v->kind == V_NODE || pl->last_use[i] < 0) continue;
            fprintf(o, "  v%d [shape=box, style=rounded, label=\"%%%d %s ", i, i, kind_name[v->kind]);
            put_type(o, v);
            fprintf(o, "\"];\n");
        }
        for (int k = 0; k < tr->nnodes; k++) {
            const tnode *n = &tr->nodes[k];
            int id = n->kind == N_OP ? n->out : -(k + 1);
            fprintf(o, "  %s%d [label=\"", id >= 0 ? "v" : "e", id >= 0 ? id : k);
            if (n->kind == N_OP) {
                fprintf(o, "%%%d %s\\n", n->out, kn_op_table[n->op].name);
                put_type(o, &tr->vals[n->out]);
            } else {
                fprintf(o, "%s", effect_name[n->kind]);
            }
            fprintf(o, "\"%s];\n", n->kind == N_OP ? "" : ", shape=diamond");
            for (int j = 0; j < n->nin; j++)
                if (n->in[j] >= 0) fprintf(o, "  v%d -> %s%d;\n", n->in[j], id >= 0 ? "v" : "e", id >= 0 ? id : k);
        }
        for (int k = 0; k < f->nout; k++)
            fprintf(o, "  out%d [shape=plaintext, label=\"output %d\"];\n  v%d -> out%d;\n", k, k, pl->outs[k], k);
    }
    fprintf(o, "}\n");
}
