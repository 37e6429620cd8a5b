/* CPU matrix products: f32 through oneDNN, f64 and integers by our own
 * loops. Row-major, BLAS-style: op(A) is M x K, op(B) is K x N, and
 * C = op(A) op(B) + beta C. With ta, A is stored K x M (lda >= M), else
 * M x K (lda >= K); likewise B. With beta == 0, C is never read.
 * Each returns 0, or -1 after setting an error that names op. */
#ifndef KN_ONEDNN_H
#define KN_ONEDNN_H

#include <stdbool.h>
#include <stdint.h>

int kn__sgemm(const char *op, bool ta, bool tb, int64_t M, int64_t N, int64_t K,
              const float *A, int64_t lda, const float *B, int64_t ldb,
              float *C, int64_t ldc, float beta);
int kn__dgemm(const char *op, bool ta, bool tb, int64_t M, int64_t N, int64_t K,
              const double *A, int64_t lda, const double *B, int64_t ldb,
              double *C, int64_t ldc, double beta);
/* Integer products wrap on overflow, like PyTorch's CPU kernels. */
int kn__gemm_i32(const char *op, bool ta, bool tb, int64_t M, int64_t N, int64_t K,
                 const int32_t *A, int64_t lda, const int32_t *B, int64_t ldb,
                 int32_t *C, int64_t ldc, int32_t beta);
int kn__gemm_i64(const char *op, bool ta, bool tb, int64_t M, int64_t N, int64_t K,
                 const int64_t *A, int64_t lda, const int64_t *B, int64_t ldb,
                 int64_t *C, int64_t ldc, int64_t beta);

/* y = act(x @ w^T + bias) in f32 through oneDNN's matmul primitive, with the
 * bias and the activation fused as post-ops. x is M x K (row stride ldx), w
 * is N x K with element (n, k) at w[n * w_rs + k * w_cs], bias has N values
 * or is NULL, y is dense M x N. Primitives are cached by the whole geometry. */
typedef enum { KN_ACT_NONE, KN_ACT_RELU } kn_act;
int kn__linear_f32(const char *op, int64_t M, int64_t N, int64_t K, const float *x, int64_t ldx,
                   const float *w, int64_t w_rs, int64_t w_cs, const float *bias, float *y, kn_act act);

/* relu(kn_linear(x, w, b)) as one op on the path above (eager/nn.c): the node
 * a plan's epilogue pass makes. f32 only; it has no derivative, so it fails
 * on inputs that require grad while grad mode is on. */
typedef struct kn_tensor kn_tensor;
kn_tensor *kn__linear_relu(kn_tensor *x, kn_tensor *w, kn_tensor *b);

#endif
