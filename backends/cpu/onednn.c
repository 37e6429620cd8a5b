/* Matrix products on the CPU. f32 goes to oneDNN's sgemm, which threads
 * itself (OpenMP), so it is never wrapped in kn__parallel_for. oneDNN has no
 * f64 or integer gemm: those use the blocked loop below, parallel over rows.
 * Every oneDNN version check of the project lives in this file. */
#include "onednn.h"
#include "onednn_prim.h"
#include "../../core/internal.h"
#include <oneapi/dnnl/dnnl.h>
#include <oneapi/dnnl/dnnl_debug.h>
#include <stdlib.h>
#include <string.h>

/* libgomp's OpenMP team, which oneDNN and Kiln share (threadpool.c) */
int omp_get_max_threads(void);
void omp_set_num_threads(int n);

#if DNNL_VERSION_MAJOR < 2
#error "Kiln needs oneDNN 2.x or newer (dnnl_sgemm with row-major layout)"
#endif

int kn__sgemm(const char *op, bool ta, bool tb, int64_t M, int64_t N, int64_t K,
              const float *A, int64_t lda, const float *B, int64_t ldb,
              float *C, int64_t ldc, float beta) {
    if (M <= 0 || N <= 0) return 0;
    if (K <= 0) {  /* an empty sum: C = beta C, without asking oneDNN */
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < N; j++)
                C[i * ldc + j] = beta == 0 ? 0.0f : beta * C[i * ldc + j];
        return 0;
    }
    /* A short reduction over a small output runs on one thread: oneDNN 2.6
     * splits [256,10]x[10,128] over two in 20.6 us, one takes 5.6 us (and a
     * 4x larger output 14.2 on two), and the result then sits in one core's
     * cache for the ops that read it next. */
    int threads = omp_get_max_threads();
    bool one = K <= 16 && M * N <= (1 << 16) && threads > 1;
    if (one) omp_set_num_threads(1);
    dnnl_status_t s = dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', M, N, K, 1.0f, A, lda,
                                 B, ldb, beta, C, ldc);
    if (one) omp_set_num_threads(threads);
    if (s != dnnl_success) {
        kn__error("%s: oneDNN sgemm failed for M=%lld N=%lld K=%lld (%s)", op, (long long)M,
                  (long long)N, (long long)K, dnnl_status2str(s));
        return -1;
    }
    return 0;
}

/* ---- our own gemm for f64 and integers ---- */
/* One K_BLOCK x N_BLOCK panel of B (256 KiB in f64) stays in L2 while a run
 * of rows streams over it; the j loop is unit-stride so it vectorizes. */
#define K_BLOCK 128
#define N_BLOCK 256

typedef struct {
    int64_t N, K, ars, acs, ldb, ldc;  /* A(i,k) = A[i*ars + k*acs]; B is row-major */
    const void *A, *B;
    void *C;
    double beta;
} gemm_job;

/* C rows [i0, i1) of one job. U is the type the arithmetic runs in: unsigned
 * for integers, so overflow wraps instead of being undefined. The k order is
 * fixed, so the result does not depend on the number of threads. */
#define GEMM_ROWS(NAME, T, U)                                                     \
    static void NAME(void *ctx, int64_t i0, int64_t i1) {                         \
        const gemm_job *g = ctx;                                                  \
        const T *A = g->A, *B = g->B;                                             \
        T *C = g->C;                                                              \
        for (int64_t i = i0; i < i1; i++) {                                       \
            T *c = C + i * g->ldc;                                                \
            if (g->beta == 0)                                                     \
                memset(c, 0, (size_t)g->N * sizeof(T));                           \
            else if (g->beta != 1)                                                \
                for (int64_t j = 0; j < g->N; j++)                                \
                    c[j] = (T)((U)(T)g->beta * (U)c[j]);                          \
        }                                                                         \
        for (int64_t j0 = 0; j0 < g->N; j0 += N_BLOCK) {                          \
            int64_t jn = g->N - j0 < N_BLOCK ? g->N - j0 : N_BLOCK;               \
            for (int64_t k0 = 0; k0 < g->K; k0 += K_BLOCK) {                      \
                int64_t k1 = g->K - k0 < K_BLOCK ? g->K : k0 + K_BLOCK;           \
                for (int64_t i = i0; i < i1; i++) {                               \
                    T *restrict c = C + i * g->ldc + j0;                          \
                    for (int64_t k = k0; k < k1; k++) {                           \
                        U a = (U)A[i * g->ars + k * g->acs];                      \
                        const T *restrict b = B + k * g->ldb + j0;                \
                        for (int64_t j = 0; j < jn; j++)                          \
                            c[j] = (T)((U)c[j] + a * (U)b[j]);                    \
                    }                                                             \
                }                                                                 \
            }                                                                     \
        }                                                                         \
    }
GEMM_ROWS(rows_f64, double, double)
GEMM_ROWS(rows_i32, int32_t, uint32_t)
GEMM_ROWS(rows_i64, int64_t, uint64_t)

static int gemm_loop(const char *op, kn_range_fn rows, size_t esz, bool ta, bool tb,
                     int64_t M, int64_t N, int64_t K, const void *A, int64_t lda,
                     const void *B, int64_t ldb, void *C, int64_t ldc, double beta) {
    if (M <= 0 || N <= 0) return 0;
    void *packed = NULL;
    if (tb && K > 0) {  /* the kernel wants B row-major: transpose it once */
        packed = malloc((size_t)K * (size_t)N * esz);
        if (!packed) {
            kn__error("%s: out of memory transposing a %lldx%lld operand", op,
                      (long long)N, (long long)K);
            return -1;
        }
        for (int64_t j = 0; j < N; j++)
            for (int64_t k = 0; k < K; k++) {
                if (esz == 8)
                    ((uint64_t *)packed)[k * N + j] = ((const uint64_t *)B)[j * ldb + k];
                else
                    ((uint32_t *)packed)[k * N + j] = ((const uint32_t *)B)[j * ldb + k];
            }
        B = packed;
        ldb = N;
    }
    gemm_job g = {.N = N, .K = K, .ars = ta ? 1 : lda, .acs = ta ? lda : 1, .ldb = ldb,
                  .ldc = ldc, .A = A, .B = B, .C = C, .beta = beta};
    int64_t work = N * (K > 0 ? K : 1);
    int64_t grain = work >= (1 << 16) ? 1 : (1 << 16) / work;
    kn__parallel_for(M, grain, rows, &g);
    free(packed);
    return 0;
}

int kn__dgemm(const char *op, bool ta, bool tb, int64_t M, int64_t N, int64_t K,
              const double *A, int64_t lda, const double *B, int64_t ldb,
              double *C, int64_t ldc, double beta) {
    return gemm_loop(op, rows_f64, sizeof *A, ta, tb, M, N, K, A, lda, B, ldb, C, ldc, beta);
}

int kn__gemm_i32(const char *op, bool ta, bool tb, int64_t M, int64_t N, int64_t K,
                 const int32_t *A, int64_t lda, const int32_t *B, int64_t ldb,
                 int32_t *C, int64_t ldc, int32_t beta) {
    return gemm_loop(op, rows_i32, sizeof *A, ta, tb, M, N, K, A, lda, B, ldb, C, ldc, beta);
}

int kn__gemm_i64(const char *op, bool ta, bool tb, int64_t M, int64_t N, int64_t K,
                 const int64_t *A, int64_t lda, const int64_t *B, int64_t ldb,
                 int64_t *C, int64_t ldc, int64_t beta) {
    return gemm_loop(op, rows_i64, sizeof *A, ta, tb, M, N, K, A, lda, B, ldb, C, ldc,
                     (double)beta);
}

/* ---- linear with fused epilogues: oneDNN's matmul primitive, cached by
 * geometry (onednn_prim.h) ---- */
KN_PRIM_CACHE(mm_cache, 32);

enum { MM_M, MM_N, MM_K, MM_LDX, MM_W_RS, MM_W_CS, MM_BIAS, MM_ACT, MM_KEY };
enum { MD_SRC, MD_WEI, MD_DST, MD_BIAS };

static dnnl_status_t md2(dnnl_memory_desc_t *md, int64_t rows, int64_t cols, int64_t rs, int64_t cs) {
    dnnl_dims_t dims = {rows, cols}, strides = {rs, cs};
    return dnnl_memory_desc_init_by_strides(md, 2, dims, dnnl_f32, strides);
}

/* y [M,N] = x [M,K] @ w^T [K,N] + bias [1,N], then the activation. */
static dnnl_status_t mm_build(kn_prim *e, dnnl_engine_t engine) {
    const int64_t *k = e->key;
    dnnl_status_t s;
    dnnl_matmul_desc_t d;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t po = NULL;
    KN_DNNL_TRY(md2(&e->md[MD_SRC], k[MM_M], k[MM_K], k[MM_LDX], 1));
    KN_DNNL_TRY(md2(&e->md[MD_WEI], k[MM_K], k[MM_N], k[MM_W_CS], k[MM_W_RS]));  /* w^T: a strided view, no copy */
    KN_DNNL_TRY(md2(&e->md[MD_BIAS], 1, k[MM_N], k[MM_N], 1));
    KN_DNNL_TRY(md2(&e->md[MD_DST], k[MM_M], k[MM_N], k[MM_N], 1));
    KN_DNNL_TRY(dnnl_primitive_attr_create(&attr));
    KN_DNNL_TRY(dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user));
    if (k[MM_ACT] == KN_ACT_RELU) {  /* relu with negative slope 0 */
        KN_DNNL_TRY(dnnl_post_ops_create(&po));
        KN_DNNL_TRY(dnnl_post_ops_append_eltwise(po, 1.0f, dnnl_eltwise_relu, 0.0f, 0.0f));
        KN_DNNL_TRY(dnnl_primitive_attr_set_post_ops(attr, po));
    }
    KN_DNNL_TRY(dnnl_matmul_desc_init(&d, &e->md[MD_SRC], &e->md[MD_WEI], k[MM_BIAS] ? &e->md[MD_BIAS] : NULL,
                              &e->md[MD_DST]));
    KN_DNNL_TRY(dnnl_primitive_desc_create(&pd, &d, attr, engine, NULL));
    KN_DNNL_TRY(kn__prim_create(e, pd));
done:
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (po) dnnl_post_ops_destroy(po);
    if (attr) dnnl_primitive_attr_destroy(attr);
    return s;
}

int kn__linear_f32(const char *op, int64_t M, int64_t N, int64_t K, const float *x, int64_t ldx,
                   const float *w, int64_t w_rs, int64_t w_cs, const float *bias, float *y, kn_act act) {
    if (M <= 0 || N <= 0) return 0;
    if (K <= 0) {  /* an empty sum: y = act(bias), without asking oneDNN */
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < N; j++) {
                float v = bias ? bias[j] : 0.0f;
                y[i * N + j] = act == KN_ACT_RELU && !(v > 0.0f) && v == v ? 0.0f : v;
            }
        return 0;
    }
    dnnl_status_t s;
    int64_t key[MM_KEY] = {M, N, K, ldx, w_rs, w_cs, bias != NULL, act};
    kn_prim *e = kn__prim_get(&mm_cache, key, MM_KEY, mm_build, &s);
    if (e) {
        static const int ids[] = {DNNL_ARG_SRC, DNNL_ARG_WEIGHTS, DNNL_ARG_DST, DNNL_ARG_BIAS};
        s = kn__prim_run(&mm_cache, e, 4, ids, (const void *[]){x, w, y, bias});
    }
    if (s == dnnl_success) return 0;
    kn__error("%s: oneDNN matmul failed for M=%lld N=%lld K=%lld (%s)", op, (long long)M, (long long)N,
              (long long)K, dnnl_status2str(s));
    return -1;
}
