/* Modules: a small vtable-free struct per layer kind, dispatched on `kind`.
 * Parameters are leaves that require grad, owned by their module. */
#include "../core/internal.h"
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum { M_LINEAR, M_CONV2D, M_MAXPOOL, M_DROPOUT, M_RELU, M_FLATTEN, M_EMBEDDING, M_SEQ } kind;

struct kn_module {
    kind kind;
    bool training;
    kn_tensor *weight, *bias;   /* owned; NULL when absent */
    int k, stride, padding;     /* conv and pooling */
    double p;                   /* dropout */
    kn_module **children;       /* sequential */
    int nchildren;
    char **names;               /* parameter paths, built on demand */
    int nnames;
};

static kn_module *module_new(kind k) {
    kn_module *m = calloc(1, sizeof *m);
    if (!m) return kn__error("kn_module: out of memory");
    m->kind = k;
    m->training = true;
    return m;
}

/* U(-bound, bound) leaf owned by the module, where bound = 1/sqrt(fan_in):
 * PyTorch's kaiming_uniform(a=sqrt(5)) for weights and its bias rule. */
static kn_tensor *uniform_param(const int64_t *shape, int ndim, double fan_in) {
    double bound = fan_in > 0 ? 1.0 / sqrt(fan_in) : 0;
    kn_pool_push();
    kn_tensor *u = kn_rand(shape, ndim, KN_F32);
    kn_tensor *p = u ? kn_contiguous(kn_mul_scalar(kn_add_scalar(u, -0.5), 2 * bound)) : NULL;
    if (p) kn_keep(p);
    kn_pool_pop();
    return p ? kn_set_requires_grad(p, true) : NULL;
}

kn_module *kn_linear_new(int64_t in_features, int64_t out_features, bool bias) {
    if (in_features <= 0 || out_features <= 0)
        return kn__error("kn_linear_new: features must be positive (got %lld, %lld)",
                         (long long)in_features, (long long)out_features);
    kn_module *m = module_new(M_LINEAR);
    if (!m) return NULL;
    m->weight = uniform_param(KN_SHAPE(out_features, in_features), (double)in_features);
    if (bias) m->bias = uniform_param(KN_SHAPE(out_features), (double)in_features);
    if (!m->weight || (bias && !m->bias)) {
        kn_module_free(m);
        return NULL;
    }
    return m;
}

kn_module *kn_conv2d_new(int64_t in_ch, int64_t out_ch, int kernel, int stride, int padding, bool bias) {
    if (in_ch <= 0 || out_ch <= 0 || kernel <= 0 || stride <= 0 || padding < 0)
        return kn__error("kn_conv2d_new: bad configuration (in %lld, out %lld, kernel %d, stride %d, "
                         "padding %d)", (long long)in_ch, (long long)out_ch, kernel, stride, padding);
    kn_module *m = module_new(M_CONV2D);
    if (!m) return NULL;
    double fan_in = (double)in_ch * kernel * kernel;
    m->weight = uniform_param(KN_SHAPE(out_ch, in_ch, kernel, kernel), fan_in);
    if (bias) m->bias = uniform_param(KN_SHAPE(out_ch), fan_in);
    m->stride = stride;
    m->padding = padding;
    if (!m->weight || (bias && !m->bias)) {
        kn_module_free(m);
        return NULL;
    }
    return m;
}

kn_module *kn_max_pool2d_new(int kernel, int stride, int padding) {
    if (kernel <= 0 || stride <= 0 || padding < 0 || padding * 2 > kernel)
        return kn__error("kn_max_pool2d_new: bad configuration (kernel %d, stride %d, padding %d)",
                         kernel, stride, padding);
    kn_module *m = module_new(M_MAXPOOL);
    if (m) {
        m->k = kernel;
        m->stride = stride;
        m->padding = padding;
    }
    return m;
}

kn_module *kn_dropout_new(double p) {
    if (!(p >= 0 && p < 1)) return kn__error("kn_dropout_new: p must be in [0, 1) (got %g)", p);
    kn_module *m = module_new(M_DROPOUT);
    if (m) m->p = p;
    return m;
}

kn_module *kn_relu_new(void) { return module_new(M_RELU); }
kn_module *kn_flatten_new(void) { return module_new(M_FLATTEN); }

kn_module *kn_embedding_new(int64_t num, int64_t dim) {
    if (num <= 0 || dim <= 0)
        return kn__error("kn_embedding_new: sizes must be positive (got %lld, %lld)", (long long)num,
                         (long long)dim);
    kn_module *m = module_new(M_EMBEDDING);
    if (!m) return NULL;
    m->weight = kn_set_requires_grad(kn_keep(kn_randn(KN_SHAPE(num, dim), KN_F32)), true);
    if (!m->weight) {
        kn_module_free(m);
        return NULL;
    }
    return m;
}

kn_module *kn_sequential_new(kn_module *first, ...) {
    kn_module *m = module_new(M_SEQ);
    va_list ap;
    va_start(ap, first);
    for (kn_module *c = first; c; c = va_arg(ap, kn_module *)) {
        kn_module **ch = m ? realloc(m->children, (size_t)(m->nchildren + 1) * sizeof *ch) : NULL;
        if (!ch) {  /* we own the list: free what we cannot keep */
            kn_module_free(c);
            continue;
        }
        m->children = ch;
        m->children[m->nchildren++] = c;
    }
    va_end(ap);
    return m;
}

static kn_tensor *dropout(kn_module *m, kn_tensor *x) {
    if (!m->training || m->p == 0) return kn__ret(x);
    kn__scope_begin();
    kn_tensor *keep = kn_lt(kn_rand(x->shape, x->ndim, kn__is_float(x->dtype) ? x->dtype : KN_F32),
                            kn_scalar(1 - m->p, KN_F64));
    return kn__scope_end(kn_mul_scalar(kn_where(keep, x, kn_scalar(0, x->dtype)), 1 / (1 - m->p)));
}

/* [N, ...] -> [N, prod(...)], sized explicitly so N = 0 works. */
static kn_tensor *flatten(kn_tensor *x) {
    int64_t rest = x->ndim > 1 ? kn__numel(x->shape + 1, x->ndim - 1) : 1;
    return kn_reshape(x, KN_SHAPE(x->ndim ? x->shape[0] : 1, rest));
}

/* Indices of any shape: rows of weight, shaped index.shape + [dim]. */
static kn_tensor *embedding(kn_module *m, kn_tensor *x) {
    if (x->ndim >= KN_MAX_DIMS)
        return kn__error("kn_forward: embedding indices have %d dims (at most %d)", x->ndim, KN_MAX_DIMS - 1);
    int64_t shape[KN_MAX_DIMS];
    memcpy(shape, x->shape, (size_t)x->ndim * sizeof *shape);
    shape[x->ndim] = m->weight->shape[1];
    kn__scope_begin();
    kn_tensor *rows = kn_index_select(m->weight, 0, kn_reshape(x, KN_SHAPE(kn__tnumel(x))));
    return kn__scope_end(kn_reshape(rows, shape, x->ndim + 1));
}

kn_tensor *kn_forward(kn_module *m, kn_tensor *x) {
    if (!m) return kn__null_arg("kn_forward");
    KN_CHECK("kn_forward", x);
    switch (m->kind) {
    case M_LINEAR: return kn_linear(x, m->weight, m->bias);
    case M_CONV2D: return kn_conv2d(x, m->weight, m->bias, m->stride, m->padding);
    case M_MAXPOOL: return kn_max_pool2d(x, m->k, m->stride, m->padding);
    case M_DROPOUT: return dropout(m, x);
    case M_RELU: return kn_relu(x);
    case M_FLATTEN: return flatten(x);
    case M_EMBEDDING: return embedding(m, x);
    case M_SEQ: {
        kn__scope_begin();
        kn_tensor *h = x;
        for (int i = 0; i < m->nchildren && h; i++) h = kn_forward(m->children[i], h);
        return kn__scope_end(h == x ? kn__ret(x) : h);
    }
    }
    return kn__error("kn_forward: unknown module kind");
}

/* Walks parameters depth-first; prefix is the path so far. */
static int collect(kn_module *m, const char *prefix, kn_tensor **params, char **names, int max, int n) {
    kn_tensor *own[2] = {m->weight, m->bias};
    const char *own_names[2] = {"weight", "bias"};
    for (int i = 0; i < 2; i++) {
        if (!own[i]) continue;
        if (n < max) {
            if (params) params[n] = own[i];
            if (names) {
                size_t len = strlen(prefix) + 8;
                names[n] = malloc(len);
                if (names[n]) snprintf(names[n], len, "%s%s", prefix, own_names[i]);
            }
        }
        n++;
    }
    for (int c = 0; c < m->nchildren; c++) {
        char sub[256];
        snprintf(sub, sizeof sub, "%s%d.", prefix, c);
        n = collect(m->children[c], sub, params, names, max, n);
    }
    return n;
}

static void free_names(kn_module *m) {
    for (int i = 0; i < m->nnames; i++) free(m->names[i]);
    free(m->names);
    m->names = NULL;
    m->nnames = 0;
}

int kn_parameters(kn_module *m, kn_tensor **params, const char **names, int max) {
    if (!m) return kn__null_arg("kn_parameters"), -1;
    if (max < 0) max = 0;
    int total = collect(m, "", params, NULL, max, 0);
    if (!names) return total;
    if (!m->names) {  /* built once, so names handed out earlier stay valid */
        m->names = calloc((size_t)(total ? total : 1), sizeof *m->names);
        if (!m->names) return kn__error("kn_parameters: out of memory"), -1;
        m->nnames = total;
        collect(m, "", NULL, m->names, total, 0);
    }
    for (int i = 0; i < total && i < max; i++) names[i] = m->names[i];
    return total;
}

void kn_train(kn_module *m, bool training) {
    if (!m) return;
    m->training = training;
    for (int i = 0; i < m->nchildren; i++) kn_train(m->children[i], training);
}

void kn_module_free(kn_module *m) {
    if (!m) return;
    for (int i = 0; i < m->nchildren; i++) kn_module_free(m->children[i]);
    free(m->children);
    kn_release(m->weight);
    kn_release(m->bias);
    free_names(m);
    free(m);
}
