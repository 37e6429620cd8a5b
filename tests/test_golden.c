/* Every case in ../shared/testdata/golden (PyTorch's results): forward in
 * f32 and f64 against PyTorch's outputs, and every f64 gradient. */
#include "helpers.h"
#include <criterion/parameterized.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MAX_IN 4

struct gcase {
    char name[64], op[32], params[128];
    char in[MAX_IN][64];
    int nin;
    char out[64];
    char grads[MAX_IN][64];
    int ngrad;
};

/* Value of key in "k=v;k2=v2", or NULL. */
static const char *param(const struct gcase *c, const char *key, char *buf) {
    size_t kl = strlen(key);
    for (const char *p = c->params; *p;) {
        const char *e = strchr(p, ';');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len > kl && !strncmp(p, key, kl) && p[kl] == '=') {
            memcpy(buf, p + kl + 1, len - kl - 1);
            buf[len - kl - 1] = 0;
            return buf;
        }
        p += len + (e != NULL);
    }
    return NULL;
}

static int int_list(const char *s, int *out) {
    int n = 0;
    for (char *e; s && *s; s = *e ? e + 1 : e) out[n++] = (int)strtol(s, &e, 10);
    return n;
}

static double num(const struct gcase *c, const char *key, double dflt) {
    char b[64];
    return param(c, key, b) ? atof(b) : dflt;
}

/* Runs the case's op on inputs already loaded in `in`. */
static kn_tensor *run_op(const struct gcase *c, kn_tensor **in, bool f64) {
    const char *op = c->op;
    char b[64];
    int dims[KN_MAX_DIMS], nd = int_list(param(c, "dims", b), dims);
    bool keep = num(c, "keepdim", 0) != 0;
    int dim = (int)num(c, "dim", 0);
#define IS(s) (strcmp(op, s) == 0)
#define U(s, f) if (IS(s)) return f(in[0])
#define B(s, f) if (IS(s)) return f(in[0], in[1])
    U("neg", kn_neg); U("abs", kn_abs); U("exp", kn_exp); U("log", kn_log);
    U("sqrt", kn_sqrt); U("rsqrt", kn_rsqrt); U("tanh", kn_tanh); U("sigmoid", kn_sigmoid);
    U("relu", kn_relu); U("sin", kn_sin); U("cos", kn_cos);
    B("add", kn_add); B("sub", kn_sub); B("mul", kn_mul); B("div", kn_div);
    B("maximum", kn_maximum); B("minimum", kn_minimum); B("eq", kn_eq); B("ne", kn_ne);
    B("lt", kn_lt); B("le", kn_le); B("gt", kn_gt); B("ge", kn_ge); B("matmul", kn_matmul);
    if (IS("pow")) return c->nin == 2 ? kn_pow(in[0], in[1]) : kn_pow_scalar(in[0], num(c, "exponent", 1));
    if (IS("gelu")) {
        const char *a = param(c, "approximate", b);
        return kn_gelu(in[0], a && !strcmp(a, "tanh") ? KN_GELU_TANH : KN_GELU_ERF);
    }
    if (IS("clamp")) return kn_clamp(in[0], num(c, "min", -INFINITY), num(c, "max", INFINITY));
    if (IS("where")) {
        char path[1024];
        snprintf(path, sizeof path, "%s", param(c, "cond", b));
        return kn_where(golden(path), in[0], in[1]);
    }
    if (IS("sum")) return kn_sum(in[0], dims, nd, keep);
    if (IS("mean")) return kn_mean(in[0], dims, nd, keep);
    if (IS("max")) return kn_max(in[0], dims, nd, keep);
    if (IS("min")) return kn_min(in[0], dims, nd, keep);
    if (IS("var")) return kn_var(in[0], dims, nd, (int)num(c, "correction", 1), keep);
    if (IS("logsumexp")) return kn_logsumexp(in[0], dims, nd, keep);
    if (IS("argmax")) return kn_argmax(in[0], dims[0], keep);
    if (IS("argmin")) return kn_argmin(in[0], dims[0], keep);
    if (IS("softmax")) return kn_softmax(in[0], dim);
    if (IS("log_softmax")) return kn_log_softmax(in[0], dim);
    if (IS("layer_norm"))
        return kn_layer_norm(in[0], (int)num(c, "normalized_dims", 1), in[1], in[2], num(c, "eps", 1e-5));
    if (IS("linear")) return kn_linear(in[0], in[1], c->nin > 2 ? in[2] : NULL);
    if (IS("transpose")) return kn_transpose(in[0], (int)num(c, "dim0", 0), (int)num(c, "dim1", 1));
    if (IS("permute")) {
        int perm[KN_MAX_DIMS], n = int_list(param(c, "perm", b), perm);
        return kn_permute(in[0], perm, n);
    }
    if (IS("slice"))
        return kn_slice(in[0], dim, (int64_t)num(c, "start", 0), (int64_t)num(c, "stop", 0),
                        (int64_t)num(c, "step", 1));
    if (IS("expand")) {
        int s[KN_MAX_DIMS], n = int_list(param(c, "shape", b), s);
        int64_t shape[KN_MAX_DIMS];
        for (int i = 0; i < n; i++) shape[i] = s[i];
        return kn_expand(in[0], shape, n);
    }
    if (IS("cat")) return kn_cat(in, c->nin, dim);
    if (IS("stack")) return kn_stack(in, c->nin, dim);
    if (IS("gather")) return kn_gather(in[0], dim, in[1]);
    if (IS("cross_entropy") || IS("nll_loss")) {
        const char *r = param(c, "reduction", b);
        kn_reduction red = !r || !strcmp(r, "mean") ? KN_REDUCE_MEAN : !strcmp(r, "sum") ? KN_REDUCE_SUM : KN_REDUCE_NONE;
        return IS("nll_loss") ? kn_nll_loss(in[0], in[1], red) : kn_cross_entropy(in[0], in[1], red);
    }
    if (IS("mse_loss")) return kn_mse_loss(in[0], in[1], KN_REDUCE_MEAN);
    if (IS("index_select")) return kn_index_select(in[0], dim, in[1]);
    (void)f64;
    cr_assert_fail("op %s has no runner in test_golden.c", op);
    return NULL;
#undef IS
#undef U
#undef B
}

static size_t load_cases(struct gcase **out, void *(*alloc)(size_t)) {
    char path[1024];
    snprintf(path, sizeof path, "%s/MANIFEST.tsv", KN_TESTDATA);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    struct gcase *cases = alloc(sizeof *cases * 256);
    size_t n = 0;
    char line[2048];
    while (fgets(line, sizeof line, f) && n < 256) {
        if (line[0] == '#' || !strncmp(line, "case\t", 5)) continue;
        line[strcspn(line, "\n")] = 0;
        char *field[6] = {0}, *p = line;
        for (int i = 0; i < 6; i++) {
            field[i] = p;
            p = strchr(p, '\t');
            if (!p) break;
            *p++ = 0;
        }
        if (!field[4]) continue;
        struct gcase *c = &cases[n++];
        memset(c, 0, sizeof *c);
        snprintf(c->name, sizeof c->name, "%s", field[0]);
        snprintf(c->op, sizeof c->op, "%s", field[1]);
        snprintf(c->params, sizeof c->params, "%s", field[2]);
        snprintf(c->out, sizeof c->out, "%s", field[4]);
        for (char *s = field[3]; s && *s && c->nin < MAX_IN;) {
            char *e = strchr(s, ',');
            if (e) *e = 0;
            snprintf(c->in[c->nin++], 64, "%s", s);
            s = e ? e + 1 : NULL;
        }
        for (char *s = field[5]; s && *s && c->ngrad < MAX_IN;) {
            char *e = strchr(s, ',');
            if (e) *e = 0;
            snprintf(c->grads[c->ngrad++], 64, "%s", s);
            s = e ? e + 1 : NULL;
        }
    }
    fclose(f);
    *out = cases;
    return n;
}

ParameterizedTestParameters(golden, forward) {
    struct gcase *cases = NULL;
    size_t n = load_cases(&cases, cr_malloc);
    return cr_make_param_array(struct gcase, cases, n);
}

/* Loads name (with ".f64" when f64 and the file is a float one). An input
 * named "<case>.w" shares its f32 file with the gradient weights of the
 * case (the data set wrote both to one name; the weights won), so its f32
 * values come from its intact .f64 file. */
static kn_tensor *load_input(const struct gcase *c, const char *name, bool f64) {
    char path[1200], wname[96];
    snprintf(path, sizeof path, "%s/%s.f64.npy", KN_TESTDATA, name);
    snprintf(wname, sizeof wname, "%s.w", c->name);
    bool clash = !strcmp(name, wname);
    kn_tensor *t = f64 || clash ? load_npy(path) : NULL;
    if (t && clash && !f64) t = kn_cast(t, KN_F32);
    return t ? t : golden(name);
}

static void check(const struct gcase *c, bool f64) {
    kn_tensor *in[MAX_IN];
    for (int i = 0; i < c->nin; i++) in[i] = load_input(c, c->in[i], f64);
    kn_tensor *got = run_op(c, in, f64);
    cr_assert(got, "%s: %s", c->name, kn_last_error() ? kn_last_error() : "NULL result");
    kn_tensor *want = load_input(c, c->out, f64);
    if (kn_dtype_of(want) == KN_BOOL || kn_dtype_of(got) == KN_I64) {
        assert_equal(got, want);
        return;
    }
    cr_assert_eq(kn_dtype_of(got), f64 ? KN_F64 : KN_F32, "%s: dtype %s", c->name,
                 kn_dtype_name(kn_dtype_of(got)));
    /* f32: a few ulp for elementwise, summation order for reductions and matmul. */
    double rtol = f64 ? 1e-12 : 2e-6, atol = f64 ? 1e-13 : 1e-6;
    if (!strcmp(c->op, "matmul") || !strcmp(c->op, "linear") || !strcmp(c->op, "var") ||
        !strcmp(c->op, "layer_norm"))
        rtol = f64 ? 1e-11 : 1e-5, atol = f64 ? 1e-12 : 1e-5;
    assert_close(got, want, rtol, atol);
}

/* The input a gradient file belongs to: "<case>.grad_x" -> "<case>.x". */
static int input_of_grad(const struct gcase *c, const char *grad) {
    const char *suffix = grad + strlen(c->name) + strlen(".grad_");
    for (int i = 0; i < c->nin; i++) {
        const char *in_suffix = c->in[i] + strlen(c->name) + 1;
        if (!strcmp(in_suffix, suffix)) return i;
    }
    return -1;
}

/* PyTorch's f64 gradients of sum(out * w). */
static void check_grads(const struct gcase *c) {
    kn_tensor *in[MAX_IN];
    for (int i = 0; i < c->nin; i++) in[i] = load_input(c, c->in[i], true);
    int which[MAX_IN];
    for (int k = 0; k < c->ngrad; k++) {
        which[k] = input_of_grad(c, c->grads[k]);
        cr_assert_geq(which[k], 0, "%s: no input for %s", c->name, c->grads[k]);
        cr_assert(kn_set_requires_grad(in[which[k]], true), "%s", kn_last_error());
    }
    kn_tensor *out = run_op(c, in, true);
    cr_assert(out, "%s: %s", c->name, kn_last_error());
    char wname[96];
    snprintf(wname, sizeof wname, "%s.w", c->name);
    cr_assert_eq(kn_backward(out, golden(wname)), 0, "%s: %s", c->name, kn_last_error());
    for (int k = 0; k < c->ngrad; k++) {
        kn_tensor *g = kn_grad(in[which[k]]);
        cr_assert(g, "%s: no gradient for %s", c->name, c->grads[k]);
        cr_log_info("%s", c->grads[k]);
        assert_close(g, golden(c->grads[k]), 1e-9, 1e-10);
    }
    for (int i = 0; i < c->nin; i++) kn_zero_grad(in[i]);
}

ParameterizedTestParameters(golden, backward) {
    struct gcase *cases = NULL;
    size_t n = load_cases(&cases, cr_malloc), k = 0;
    for (size_t i = 0; i < n; i++)
        if (cases[i].ngrad) cases[k++] = cases[i];
    return cr_make_param_array(struct gcase, cases, k);
}

ParameterizedTest(struct gcase *c, golden, backward) {
    kn_clear_error();
    kn_pool_push();
    check_grads(c);
    kn_pool_pop();
    cr_assert_eq(kn_live_tensors(), 0, "%s leaked tensors", c->name);
}

ParameterizedTest(struct gcase *c, golden, forward) {
    kn_clear_error();
    kn_pool_push();
    cr_log_info("%s", c->name);
    check(c, false);
    check(c, true);
    kn_pool_pop();
    cr_assert_eq(kn_live_tensors(), 0, "%s leaked tensors", c->name);
}

Test(golden, manifest_found) {
    struct gcase *cases = NULL;
    size_t n = load_cases(&cases, malloc);
    cr_assert_geq(n, 84, "expected the golden manifest at %s (found %zu cases)", KN_TESTDATA, n);
    free(cases);
}
