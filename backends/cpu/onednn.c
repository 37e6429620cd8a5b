/* Matrix products on the CPU. f32 goes to oneDNN's sgemm, which threads
 * itself (OpenMP), so it is never wrapped in kn__parallel_for. oneDNN has no
 * f64 or integer gemm: those use the blocked loop below, parallel over rows.
 * Every oneDNN version check of the project lives in this file. */
#include "onednn.h"
#include "../../core/internal.h"
#include <oneapi/dnnl/dnnl.h>
#include <oneapi/dnnl/dnnl_debug.h>
#include <stdlib.h>
#include <string.h>

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
    dnnl_status_t s = dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', M, N, K, 1.0f, A, lda,
                                 B, ldb, beta, C, ldc);
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

/* ---- linear with fused epilogues: oneDNN's matmul primitive ----
 * Creating a primitive costs far more than running a small one, so they are
 * cached by geometry in a small locked LRU cache, as the convolutions are
 * (onednn_conv.c): entries are refcounted, and one evicted while another
 * thread runs it dies after that run. A user scratchpad, allocated per call,
 * lets any thread run a cached primitive. */
#include <pthread.h>

#define MM_CACHE_CAP 32

typedef struct {  /* all int64_t, so no padding bytes spoil memcmp */
    int64_t M, N, K, ldx, w_rs, w_cs, bias, act;
} mm_key;

typedef struct {
    mm_key key;
    dnnl_primitive_t prim;
    dnnl_memory_desc_t md_src, md_wei, md_bias, md_dst, md_scratch;
    size_t scratch_bytes;
    uint64_t stamp;  /* last use, for LRU */
    int refs;        /* callers running it now */
    bool evicted;
} mm_entry;

static dnnl_engine_t mm_engine;
static dnnl_status_t mm_engine_status;
static pthread_once_t mm_engine_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t mm_lock = PTHREAD_MUTEX_INITIALIZER;
static mm_entry *mm_cache[MM_CACHE_CAP];
static uint64_t mm_tick;

static void mm_engine_init(void) { mm_engine_status = dnnl_engine_create(&mm_engine, dnnl_cpu, 0); }

static void mm_free(mm_entry *e) {
    if (e->prim) dnnl_primitive_destroy(e->prim);
    free(e);
}

static dnnl_status_t md2(dnnl_memory_desc_t *md, int64_t rows, int64_t cols, int64_t rs, int64_t cs) {
    dnnl_dims_t dims = {rows, cols}, strides = {rs, cs};
    return dnnl_memory_desc_init_by_strides(md, 2, dims, dnnl_f32, strides);
}

#define TRY(call)                                        \
    do {                                                 \
        if ((s = (call)) != dnnl_success) goto done;     \
    } while (0)

/* y [M,N] = x [M,K] @ w^T [K,N] + bias [1,N], then the activation. */
static dnnl_status_t mm_build(mm_entry *e, const mm_key *k) {
    dnnl_status_t s;
    dnnl_matmul_desc_t d;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t po = NULL;
    TRY(md2(&e->md_src, k->M, k->K, k->ldx, 1));
    TRY(md2(&e->md_wei, k->K, k->N, k->w_cs, k->w_rs));  /* w^T: a strided view, no copy */
    TRY(md2(&e->md_bias, 1, k->N, k->N, 1));
    TRY(md2(&e->md_dst, k->M, k->N, k->N, 1));
    TRY(dnnl_primitive_attr_create(&attr));
    TRY(dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user));
    if (k->act == KN_ACT_RELU) {  /* relu with negative slope 0 */
        TRY(dnnl_post_ops_create(&po));
        TRY(dnnl_post_ops_append_eltwise(po, 1.0f, dnnl_eltwise_relu, 0.0f, 0.0f));
        TRY(dnnl_primitive_attr_set_post_ops(attr, po));
    }
    TRY(dnnl_matmul_desc_init(&d, &e->md_src, &e->md_wei, k->bias ? &e->md_bias : NULL, &e->md_dst));
    TRY(dnnl_primitive_desc_create(&pd, &d, attr, mm_engine, NULL));
    e->md_scratch = *dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    e->scratch_bytes = dnnl_memory_desc_get_size(&e->md_scratch);
    TRY(dnnl_primitive_create(&e->prim, pd));
done:
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (po) dnnl_post_ops_destroy(po);
    if (attr) dnnl_primitive_attr_destroy(attr);
    return s;
}

/* The cached entry for k with one hold taken, built on a miss (outside the
 * lock: creation is slow); NULL with *st set when oneDNN refuses. */
static mm_entry *mm_get(const mm_key *k, dnnl_status_t *st) {
    pthread_mutex_lock(&mm_lock);
    for (int i = 0; i < MM_CACHE_CAP; i++)
        if (mm_cache[i] && !memcmp(&mm_cache[i]->key, k, sizeof *k)) {
            mm_cache[i]->refs++;
            mm_cache[i]->stamp = ++mm_tick;
            pthread_mutex_unlock(&mm_lock);
            return mm_cache[i];
        }
    pthread_mutex_unlock(&mm_lock);

    mm_entry *e = calloc(1, sizeof *e);
    if (!e) { *st = dnnl_out_of_memory; return NULL; }
    e->key = *k;
    if ((*st = mm_build(e, k)) != dnnl_success) { mm_free(e); return NULL; }

    pthread_mutex_lock(&mm_lock);
    int slot = 0;
    for (int i = 0; i < MM_CACHE_CAP; i++) {
        if (mm_cache[i] && !memcmp(&mm_cache[i]->key, k, sizeof *k)) {  /* another thread won */
            mm_entry *won = mm_cache[i];
            won->refs++;
            won->stamp = ++mm_tick;
            pthread_mutex_unlock(&mm_lock);
            mm_free(e);
            return won;
        }
        if (!mm_cache[i] || (mm_cache[slot] && mm_cache[i]->stamp < mm_cache[slot]->stamp)) slot = i;
    }
    if (mm_cache[slot]) {  /* full: evict the least recently used */
        if (mm_cache[slot]->refs == 0) mm_free(mm_cache[slot]);
        else mm_cache[slot]->evicted = true;  /* its last user frees it */
    }
    mm_cache[slot] = e;
    e->refs = 1;
    e->stamp = ++mm_tick;
    pthread_mutex_unlock(&mm_lock);
    return e;
}

static void mm_put(mm_entry *e) {
    pthread_mutex_lock(&mm_lock);
    if (--e->refs == 0 && e->evicted) mm_free(e);
    pthread_mutex_unlock(&mm_lock);
}

/* Wraps buf in a oneDNN memory object and appends it to args. */
static dnnl_status_t mm_arg(dnnl_exec_arg_t *args, int *n, int id, const dnnl_memory_desc_t *md, const void *buf) {
    dnnl_memory_t m;
    dnnl_status_t s = dnnl_memory_create(&m, md, mm_engine, (void *)buf);
    if (s == dnnl_success) args[(*n)++] = (dnnl_exec_arg_t){id, m};
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
    pthread_once(&mm_engine_once, mm_engine_init);
    dnnl_status_t s = mm_engine_status;
    mm_entry *e = NULL;
    if (s != dnnl_success) goto fail;
    mm_key k = {M, N, K, ldx, w_rs, w_cs, bias != NULL, act};
    if (!(e = mm_get(&k, &s))) goto fail;
    dnnl_exec_arg_t args[5];
    int nargs = 0;
    dnnl_stream_t stream = NULL;
    void *scratch = NULL;
    if (e->scratch_bytes && !(scratch = aligned_alloc(64, (e->scratch_bytes + 63) & ~(size_t)63))) {
        s = dnnl_out_of_memory;
        goto cleanup;
    }
    if ((s = mm_arg(args, &nargs, DNNL_ARG_SRC, &e->md_src, x)) != dnnl_success ||
        (s = mm_arg(args, &nargs, DNNL_ARG_WEIGHTS, &e->md_wei, w)) != dnnl_success ||
        (s = mm_arg(args, &nargs, DNNL_ARG_DST, &e->md_dst, y)) != dnnl_success ||
        (bias && (s = mm_arg(args, &nargs, DNNL_ARG_BIAS, &e->md_bias, bias)) != dnnl_success) ||
        (scratch && (s = mm_arg(args, &nargs, DNNL_ARG_SCRATCHPAD, &e->md_scratch, scratch)) != dnnl_success))
        goto cleanup;
    /* A CPU stream is cheap; one per call keeps threads from sharing one. */
    if ((s = dnnl_stream_create(&stream, mm_engine, dnnl_stream_default_flags)) != dnnl_success) goto cleanup;
    if ((s = dnnl_primitive_execute(e->prim, stream, nargs, args)) == dnnl_success) s = dnnl_stream_wait(stream);
cleanup:
    if (stream) dnnl_stream_destroy(stream);
    for (int i = 0; i < nargs; i++) dnnl_memory_destroy(args[i].memory);
    free(scratch);
    mm_put(e);
    if (s == dnnl_success) return 0;
fail:
    kn__error("%s: oneDNN matmul failed for M=%lld N=%lld K=%lld (%s)", op, (long long)M, (long long)N,
              (long long)K, dnnl_status2str(s));
    return -1;
}
