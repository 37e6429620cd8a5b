/* Kiln: a deep-learning framework in C. The one public header.
 *
 * Ownership, in one paragraph: every function that returns a kn_tensor *
 * returns a new reference. Outside a pool the caller owns it and drops it with
 * kn_release(). Between kn_pool_push() and kn_pool_pop() the innermost pool owns
 * it instead: kn_pool_pop() releases it, unless it was passed to kn_keep(),
 * which hands that reference to the caller. Ops never take ownership of their
 * arguments.
 *
 * Errors: an op given bad input returns NULL (or -1, or NaN for kn_item) and
 * sets a thread-local message, read with kn_last_error(). An op given a NULL
 * tensor returns NULL and keeps the first message, so a chain of calls reports
 * where it first went wrong. KN_ABORT_ON_ERROR=1 prints and aborts instead.
 *
 * Scalars: ops take 0-dim tensors (kn_scalar) and have _scalar forms for the
 * common arithmetic ops. Type promotion follows PyTorch: categories
 * bool < integer < float; a 0-dim tensor does not raise the dtype of a
 * dimensioned tensor of the same category. A C double passed to a _scalar form
 * acts like a Python number: integral values keep an integer tensor integer
 * (`x + 2`), others make it f32 (`x + 2.5`).
 */
#ifndef KILN_H
#define KILN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KN_MAX_DIMS 8

typedef enum { KN_F32, KN_F64, KN_I32, KN_I64, KN_BOOL, KN_DTYPE_COUNT } kn_dtype;
typedef enum { KN_CPU } kn_device;
typedef struct kn_tensor kn_tensor;

/* Shape and dim-list literals: kn_zeros(KN_SHAPE(2, 3), KN_F32). */
#define KN_SHAPE(...) ((const int64_t[]){__VA_ARGS__}), \
    ((int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)))
#define KN_DIMS(...) ((const int[]){__VA_ARGS__}), \
    ((int)(sizeof((int[]){__VA_ARGS__}) / sizeof(int)))
#define KN_ALL_DIMS NULL, 0

/* ---- dtypes ---- */
const char *kn_dtype_name(kn_dtype dt);   /* "f32"; static string */
size_t kn_dtype_size(kn_dtype dt);        /* bytes per element; 0 if invalid */

/* ---- errors ---- */
const char *kn_last_error(void);          /* NULL when no error is set; thread-local */
void kn_clear_error(void);

/* ---- memory ---- */
kn_tensor *kn_retain(kn_tensor *t);       /* returns t, one more reference */
void kn_release(kn_tensor *t);            /* NULL is a no-op */
void kn_pool_push(void);
void kn_pool_pop(void);
kn_tensor *kn_keep(kn_tensor *t);         /* detach t from its pool; caller owns it */
int64_t kn_live_tensors(void);            /* tensors alive in this process */
/* Bytes of tensor data allocated now, and the most at once since the last reset. */
void kn_memory_stats(int64_t *in_use, int64_t *peak);
void kn_memory_reset_peak(void);

/* ---- creation (all return new tensors) ---- */
kn_tensor *kn_empty(const int64_t *shape, int ndim, kn_dtype dt);
kn_tensor *kn_zeros(const int64_t *shape, int ndim, kn_dtype dt);
kn_tensor *kn_ones(const int64_t *shape, int ndim, kn_dtype dt);
kn_tensor *kn_full(const int64_t *shape, int ndim, double value, kn_dtype dt);
kn_tensor *kn_scalar(double value, kn_dtype dt);                /* 0-dim */
kn_tensor *kn_arange(double start, double end, double step, kn_dtype dt);
kn_tensor *kn_eye(int64_t n, int64_t m, kn_dtype dt);
/* Copies numel * dtype_size bytes from data (C order). */
kn_tensor *kn_from_data(const void *data, const int64_t *shape, int ndim, kn_dtype dt);
/* Philox4x32-10 streams: kn_manual_seed resets the seed and the offset. */
void kn_manual_seed(uint64_t seed);
kn_tensor *kn_rand(const int64_t *shape, int ndim, kn_dtype dt);   /* U[0, 1) */
kn_tensor *kn_randn(const int64_t *shape, int ndim, kn_dtype dt);  /* N(0, 1) */

/* ---- inspection ---- */
int kn_ndim(const kn_tensor *t);
const int64_t *kn_shape(const kn_tensor *t);    /* borrowed, ndim entries */
const int64_t *kn_strides(const kn_tensor *t);  /* borrowed, in elements */
kn_dtype kn_dtype_of(const kn_tensor *t);
int64_t kn_numel(const kn_tensor *t);
bool kn_is_contiguous(const kn_tensor *t);
/* Pointer to element 0 of t's view; borrowed, valid while t lives. */
void *kn_data(const kn_tensor *t);
/* Copies t's values in C order into buf; -1 (with an error) if nbytes is too small. */
int kn_copy_out(const kn_tensor *t, void *buf, size_t nbytes);
double kn_item(const kn_tensor *t);             /* NaN and an error if numel != 1 */
char *kn_to_string(const kn_tensor *t);         /* caller frees with free() */
void kn_print(const kn_tensor *t);              /* to stdout */

/* ---- elementwise (broadcasting, PyTorch promotion) ---- */
kn_tensor *kn_add(kn_tensor *a, kn_tensor *b);
kn_tensor *kn_sub(kn_tensor *a, kn_tensor *b);
kn_tensor *kn_mul(kn_tensor *a, kn_tensor *b);
kn_tensor *kn_div(kn_tensor *a, kn_tensor *b);      /* true division: ints give f32 */
kn_tensor *kn_pow(kn_tensor *a, kn_tensor *b);
kn_tensor *kn_maximum(kn_tensor *a, kn_tensor *b);  /* NaN-propagating */
kn_tensor *kn_minimum(kn_tensor *a, kn_tensor *b);
kn_tensor *kn_add_scalar(kn_tensor *a, double s);
kn_tensor *kn_sub_scalar(kn_tensor *a, double s);
kn_tensor *kn_mul_scalar(kn_tensor *a, double s);
kn_tensor *kn_div_scalar(kn_tensor *a, double s);
kn_tensor *kn_pow_scalar(kn_tensor *a, double s);
kn_tensor *kn_neg(kn_tensor *x);
kn_tensor *kn_abs(kn_tensor *x);
kn_tensor *kn_exp(kn_tensor *x);
kn_tensor *kn_log(kn_tensor *x);
kn_tensor *kn_sqrt(kn_tensor *x);
kn_tensor *kn_rsqrt(kn_tensor *x);
kn_tensor *kn_tanh(kn_tensor *x);
kn_tensor *kn_sigmoid(kn_tensor *x);
kn_tensor *kn_relu(kn_tensor *x);
typedef enum { KN_GELU_ERF, KN_GELU_TANH } kn_gelu_approx;
kn_tensor *kn_gelu(kn_tensor *x, kn_gelu_approx approx);
kn_tensor *kn_sin(kn_tensor *x);
kn_tensor *kn_cos(kn_tensor *x);
kn_tensor *kn_clamp(kn_tensor *x, double lo, double hi);  /* min(max(x, lo), hi) */
kn_tensor *kn_eq(kn_tensor *a, kn_tensor *b);             /* comparisons give bool */
kn_tensor *kn_ne(kn_tensor *a, kn_tensor *b);
kn_tensor *kn_lt(kn_tensor *a, kn_tensor *b);
kn_tensor *kn_le(kn_tensor *a, kn_tensor *b);
kn_tensor *kn_gt(kn_tensor *a, kn_tensor *b);
kn_tensor *kn_ge(kn_tensor *a, kn_tensor *b);
kn_tensor *kn_logical_and(kn_tensor *a, kn_tensor *b);
kn_tensor *kn_logical_or(kn_tensor *a, kn_tensor *b);
kn_tensor *kn_logical_not(kn_tensor *x);
kn_tensor *kn_where(kn_tensor *cond, kn_tensor *a, kn_tensor *b);
kn_tensor *kn_cast(kn_tensor *x, kn_dtype dt);            /* always a new tensor */

/* ---- reductions: dims == NULL / ndims == 0 reduces every dim ---- */
kn_tensor *kn_sum(kn_tensor *x, const int *dims, int ndims, bool keepdim);
kn_tensor *kn_mean(kn_tensor *x, const int *dims, int ndims, bool keepdim);
kn_tensor *kn_max(kn_tensor *x, const int *dims, int ndims, bool keepdim); /* amax */
kn_tensor *kn_min(kn_tensor *x, const int *dims, int ndims, bool keepdim);
kn_tensor *kn_var(kn_tensor *x, const int *dims, int ndims, int correction, bool keepdim);
kn_tensor *kn_logsumexp(kn_tensor *x, const int *dims, int ndims, bool keepdim);
kn_tensor *kn_argmax(kn_tensor *x, int dim, bool keepdim);  /* i64 indices */
kn_tensor *kn_argmin(kn_tensor *x, int dim, bool keepdim);

/* ---- views (share storage) and shape ops ---- */
kn_tensor *kn_reshape(kn_tensor *x, const int64_t *shape, int ndim); /* one -1 allowed; copies if needed */
kn_tensor *kn_transpose(kn_tensor *x, int d0, int d1);
kn_tensor *kn_permute(kn_tensor *x, const int *perm, int ndim);
kn_tensor *kn_slice(kn_tensor *x, int dim, int64_t start, int64_t stop, int64_t step);
kn_tensor *kn_expand(kn_tensor *x, const int64_t *shape, int ndim); /* -1 keeps a dim */
kn_tensor *kn_broadcast_to(kn_tensor *x, const int64_t *shape, int ndim);
kn_tensor *kn_squeeze(kn_tensor *x, int dim);
kn_tensor *kn_unsqueeze(kn_tensor *x, int dim);
kn_tensor *kn_contiguous(kn_tensor *x);   /* x itself (retained) when already contiguous */
kn_tensor *kn_cat(kn_tensor *const *xs, int n, int dim);
kn_tensor *kn_stack(kn_tensor *const *xs, int n, int dim);
kn_tensor *kn_gather(kn_tensor *x, int dim, kn_tensor *index);
kn_tensor *kn_index_select(kn_tensor *x, int dim, kn_tensor *index);
/* target [...] of class indices (i32 or i64) in [0, num_classes) -> [..., num_classes]
 * of dtype dt: 1 at each target's class, 0 elsewhere (PyTorch's F.one_hot). */
kn_tensor *kn_one_hot(kn_tensor *target, int64_t num_classes, kn_dtype dt);

/* ---- nn primitives ---- */
kn_tensor *kn_matmul(kn_tensor *a, kn_tensor *b);   /* 1-D, 2-D, batched with broadcast */
kn_tensor *kn_linear(kn_tensor *x, kn_tensor *w, kn_tensor *b); /* x wT + b; b may be NULL */
kn_tensor *kn_softmax(kn_tensor *x, int dim);
kn_tensor *kn_log_softmax(kn_tensor *x, int dim);
/* NCHW convolution through oneDNN: x [N,C,H,W], w [O,C,kh,kw], b [O] or NULL. */
kn_tensor *kn_conv2d(kn_tensor *x, kn_tensor *w, kn_tensor *b, int stride, int padding);
/* NCHW max pooling; padding counts as -inf. */
kn_tensor *kn_max_pool2d(kn_tensor *x, int kernel, int stride, int padding);
/* Normalizes over the last normalized_ndim dims; w and b may be NULL. */
kn_tensor *kn_layer_norm(kn_tensor *x, int normalized_ndim, kn_tensor *w, kn_tensor *b, double eps);

/* ---- more elementwise and indexing (also used by derivative rules) ---- */
kn_tensor *kn_erf(kn_tensor *x);
/* out = copy of x with src[i] added at index along dim (PyTorch scatter_add). */
kn_tensor *kn_scatter_add(kn_tensor *x, int dim, kn_tensor *index, kn_tensor *src);
/* out = copy of x with src slices added at the rows index names (PyTorch index_add). */
kn_tensor *kn_index_add(kn_tensor *x, int dim, kn_tensor *index, kn_tensor *src);

/* ---- autograd ----
 * A leaf marked with kn_set_requires_grad records a node on every op it feeds
 * while grad mode is on. kn_backward runs the derivative rules (core/derivatives.c,
 * written with kn_ ops) and accumulates into the leaves' .grad. */
/* Marks a leaf; returns t (not a new reference), NULL with an error for a
 * non-leaf or a non-float tensor. */
kn_tensor *kn_set_requires_grad(kn_tensor *t, bool on);
bool kn_requires_grad(const kn_tensor *t);
bool kn_is_leaf(const kn_tensor *t);
kn_tensor *kn_grad(const kn_tensor *t);     /* borrowed; NULL when none */
void kn_zero_grad(kn_tensor *t);            /* drops the gradient (set to none) */
/* grad_out may be NULL for a 1-element out. Frees the graph unless
 * create_graph. On error returns -1 and no leaf gradient changes. */
int kn_backward(kn_tensor *out, kn_tensor *grad_out);
int kn_backward_ex(kn_tensor *out, kn_tensor *grad_out, bool create_graph);
kn_tensor *kn_detach(kn_tensor *t);         /* a view that never requires grad */
/* Grad mode: nestable no-grad scopes, like torch.no_grad(). */
void kn_no_grad_begin(void);
void kn_no_grad_end(void);
bool kn_grad_enabled(void);

/* In-place ops (for optimizers and buffers): modify t and return 0, or -1
 * with an error. They bump t's version, so a value saved for backward that
 * changes afterwards makes kn_backward fail instead of going wrong. */
int kn_add_(kn_tensor *t, kn_tensor *other);
int kn_sub_(kn_tensor *t, kn_tensor *other);
int kn_mul_(kn_tensor *t, kn_tensor *other);
int kn_div_(kn_tensor *t, kn_tensor *other);
int kn_add_scalar_(kn_tensor *t, double s);
int kn_mul_scalar_(kn_tensor *t, double s);
int kn_copy_(kn_tensor *t, kn_tensor *src);
int kn_fill_(kn_tensor *t, double value);

/* Compares analytic and central-difference gradients of sum(f(in) * w), w
 * random, for every input that requires grad. Inputs should be f64. Returns
 * true when all agree; otherwise false with an error naming the input and
 * the element. */
typedef kn_tensor *(*kn_grad_fn)(void *ctx, kn_tensor *const *in);
bool kn_gradcheck(kn_grad_fn f, void *ctx, kn_tensor *const *in, int n, double eps,
                  double atol, double rtol);

/* ---- threads ---- */
void kn_set_num_threads(int n);   /* 0 = all cores */
int kn_get_num_threads(void);

#ifdef __cplusplus
}
#endif

#include "kiln/checkpoint.h"
#include "kiln/data.h"
#include "kiln/nn.h"
#include "kiln/function.h"
#endif
