/* Kiln internals shared by core/, eager/ and backends/. Not installed. */
#ifndef KN_INTERNAL_H
#define KN_INTERNAL_H

#include "kiln.h"
#include "ops.h"
#include <stdatomic.h>

#define KN_ALIGN 64

typedef struct kn_storage {
    atomic_long refcount;
    size_t nbytes;
    size_t capacity;     /* bytes of the whole block, header included */
    kn_device device;
    void *data;          /* KN_ALIGN-aligned */
    atomic_ulong version; /* bumped by in-place writes (autograd checks it) */
    struct kn_arena_block *arena_block; /* data lies in a plan's arena block; NULL: own block */
    uint64_t arena_run;   /* the plan run that allocated it (0: none), which logs its release */
    int32_t arena_seq;    /* its allocation index in that run */
} kn_storage;

struct kn_tensor {
    atomic_long refcount;
    kn_dtype dtype;
    int ndim;
    int64_t shape[KN_MAX_DIMS];
    int64_t strides[KN_MAX_DIMS]; /* in elements */
    int64_t offset;               /* in elements, into storage */
    kn_storage *storage;
    int pool_level;               /* 1-based depth of its latest pool entry; 0 none */
    bool wrapped;                 /* made from a C number (_scalar forms): weak dtype */
    bool requires_grad;
    uint32_t trace_stamp;         /* id of the trace it was created in; 0 none */
    struct kn_tensor *grad;       /* leaves: accumulated gradient, owned */
    struct kn_node *grad_fn;      /* non-leaves: the node that made it, owned */
};

/* Bytes per element of a valid dtype, inline for the hot paths. */
static inline size_t kn__size(kn_dtype d) { return (size_t)(d == KN_BOOL ? 1 : d == KN_F64 || d == KN_I64 ? 8 : 4); }

/* ---- environment switches (core/error.c) ---- */
/* Whether variable name is set to something other than "" and "0" (word
 * NULL), or contains word (KN_LOG=recompiles). Read once into *cache, which
 * starts at -1. */
bool kn__env(int *cache, const char *name, const char *word);

/* ---- errors (core/error.c) ---- */
/* Sets the thread-local message (printf-style). Always returns NULL. */
void *kn__error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* For a NULL argument: sets "op: argument is NULL" only if no error is set. */
void *kn__null_arg(const char *op);
/* Formats a shape as "[2,3]" into buf (at least 8*21+3 bytes). */
const char *kn__shape_str(const int64_t *shape, int ndim, char *buf);
#define KN_SHAPE_BUF 200
#define KN_CHECK(op, t) do { if (!(t)) return kn__null_arg(op); } while (0)

/* ---- tensors (core/tensor.c) ---- */
/* New contiguous tensor with uninitialized storage; registered with the pool. */
kn_tensor *kn__alloc(const int64_t *shape, int ndim, kn_dtype dt);
/* Library code owns the references ops return exactly like users do: inside
 * a pool, the pool holds them. kn__drop disposes of such a reference (a
 * temporary) in either case; kn__ret returns an existing tensor as one. Use
 * kn_retain/kn_release only for references the library keeps (nodes). */
void kn__drop(kn_tensor *t);
kn_tensor *kn__ret(kn_tensor *t);
/* A composite op runs between these: its temporaries die at the end, and
 * the result becomes a reference of the caller's pool (or the caller's). */
void kn__scope_begin(void);
kn_tensor *kn__scope_end(kn_tensor *result);
/* New view of base's storage with the given geometry. */
kn_tensor *kn__view(kn_tensor *base, const int64_t *shape, const int64_t *strides,
                    int ndim, int64_t offset);
int64_t kn__numel(const int64_t *shape, int ndim);
/* Elements of t. Library code uses this, not kn_numel: reading sizes
 * through the public accessors while tracing pins a plan to exact shapes. */
static inline int64_t kn__tnumel(const kn_tensor *t) { return t ? kn__numel(t->shape, t->ndim) : -1; }
void kn__contig_strides(const int64_t *shape, int ndim, int64_t *strides);
static inline char *kn__ptr(const kn_tensor *t) {
    return (char *)t->storage->data + t->offset * (int64_t)kn__size(t->dtype);
}
/* Normalizes dim into [0, ndim); -1 with an error naming op otherwise. */
int kn__dim(const char *op, int dim, int ndim);

/* ---- plan arenas (core/tensor.c) ----
 * While kn__run_plan runs a plan, kn__arena_active is the plan's arena and
 * every storage allocation on this thread goes through it: the run logs each
 * allocation's size and whether it was released before the run ended. From
 * that log the arena lays out the allocations that died inside the run in
 * one block by liveness; later runs hand the k-th allocation its slot of the
 * block when it fits and no live storage overlaps it, else fall back to the
 * normal allocator. A log that differs from the layout re-plans it. */
typedef struct kn_arena kn_arena;
extern _Thread_local kn_arena *kn__arena_active;
kn_arena *kn__arena_new(void);  /* NULL when out of memory: plans run without one */
/* Frees a (NULL is fine); storages still in its block keep the block alive. */
void kn__arena_free(kn_arena *a);
/* Starts a run of a on this thread; returns the arena to pass to leave,
 * which restores it (kn_cond branches run nested). ok: the run finished,
 * so its log may re-plan the layout. */
kn_arena *kn__arena_enter(kn_arena *a);
void kn__arena_leave(kn_arena *a, kn_arena *prev, bool ok);
/* Bytes of a's block: the planned peak of its internal values (0: no layout yet). */
int64_t kn__arena_bytes(const kn_arena *a);
/* A zeroed buffer of bytes that a keeps for its runs; NULL on failure. */
void *kn__arena_scratch(kn_arena *a, size_t bytes);
/* Counters of this thread, for tests: storage blocks taken from the system
 * allocator or the shared block cache (arena blocks included), tensor
 * structs from malloc, and acquisitions of the shared cache's lock. */
uint64_t kn__sys_allocs(void);
uint64_t kn__tensor_mallocs(void);
uint64_t kn__cache_locks(void);

/* ---- dtypes (core/dtype.c) ---- */
static inline bool kn__is_float(kn_dtype d) { return d == KN_F32 || d == KN_F64; }
static inline bool kn__is_int(kn_dtype d) { return d == KN_I32 || d == KN_I64; }
kn_dtype kn__promote(kn_tensor *const *ts, int n);
double kn__load(const void *p, kn_dtype dt);
void kn__store(void *p, kn_dtype dt, double v);

/* ---- strided iteration (eager/iter.c) ---- */
#define KN_MAX_OPS 4
/* Inner loop over n elements; ptrs[k] and strides[k] (bytes) per operand, 0 = output. */
typedef void (*kn_loop_fn)(int64_t n, char **ptrs, const int64_t *strides, const void *params);
typedef struct {
    int ndim, nop;
    int64_t shape[KN_MAX_DIMS];
    char *base[KN_MAX_OPS];
    int64_t strides[KN_MAX_OPS][KN_MAX_DIMS]; /* bytes */
} kn_iter;
/* Operand k viewed over shape (broadcast dims get stride 0). t->ndim <= ndim. */
void kn__iter_add(kn_iter *it, const kn_tensor *t);
void kn__iter_run(kn_iter *it, kn_loop_fn fn, const void *params, int64_t grain);
/* dst[i] = src[i] with dtype conversion; shapes must broadcast src -> dst. */
void kn__copy(kn_tensor *dst, const kn_tensor *src);
/* The loops eager ops run: converting src elements to dst's dtype, and op
 * on operands of dtype dt (NULL where eager has none). Used one element at
 * a time by trace/scalars.c, so its results are eager's bit for bit. */
kn_loop_fn kn__conv_loop(kn_dtype dst, kn_dtype src);
kn_loop_fn kn__ew_loop(kn_op op, kn_dtype dt);
/* Broadcast shape of a and b into out; false if incompatible. */
bool kn__broadcast_shape(const int64_t *a, int na, const int64_t *b, int nb,
                         int64_t *out, int *nout);

/* ---- threads (backends/cpu/threadpool.c) ---- */
typedef void (*kn_range_fn)(void *ctx, int64_t begin, int64_t end);
/* Splits [0, n) across the pool when n >= 2 * grain; runs inline otherwise. */
void kn__parallel_for(int64_t n, int64_t grain, kn_range_fn fn, void *ctx);

/* ---- random (core/philox.c) ---- */
/* Reserves n 32-bit draws from the global stream; returns (seed, offset). */
void kn__philox_reserve(uint64_t n, uint64_t *seed, uint64_t *offset);
void kn__philox4x32(uint64_t seed, uint64_t counter, uint32_t out[4]);
/* The global stream's position, to undo draws (shadow mode runs a call twice). */
void kn__philox_state(uint64_t *seed, uint64_t *offset);
void kn__philox_restore(uint64_t seed, uint64_t offset);

#endif
