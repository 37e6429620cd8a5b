/* The trace IR: values (inputs, captures, constants, node results, gradients
 * read at call time) and nodes (ops and side effects), and the plans built
 * from them. Shared by trace/function.c, passes.c, replay.c and dump.c. */
#ifndef KN_TRACE_IR_H
#define KN_TRACE_IR_H
#include "trace.h"
#include <pthread.h>

typedef enum { V_INPUT, V_CAPTURE, V_CONST, V_NODE, V_GRAD } vkind;
typedef struct {
    vkind kind;
    int index;          /* V_INPUT: input slot; V_NODE: node */
    kn_tensor *t;       /* V_CAPTURE: the tensor; V_CONST: a snapshot; V_GRAD: the leaf (owned) */
    kn_dtype dtype;
    int ndim;
    int64_t shape[KN_MAX_DIMS];  /* at trace time */
    int16_t sym[KN_MAX_DIMS];    /* per dim: symbol (input * KN_MAX_DIMS + dim) or -1 */
    bool requires_grad;          /* V_NODE: the op recorded an autograd node when traced */
} tvalue;

/* Sizes are symbolic: a dim of a node value that equals a non-1 input dim
 * is that input dim at every call, and every replayed node's shape is
 * checked against that reading. Input dims of one size are tied: one
 * symbol, and the plan serves a call only if they are still equal. A trace
 * is exact (its plan serves only the shapes it saw) when user code read
 * sizes (kn_shape, kn_numel, kn_strides) while tracing: it may have baked
 * them into values, which no shape check would reveal. */
#define KN_MAX_SYMS (64 * KN_MAX_DIMS)

typedef enum { N_OP, N_WRITE, N_SET_GRAD, N_ZERO_GRAD, N_COND, N_FUSED, N_SCALARS } nkind;
struct plan;
typedef struct {
    nkind kind;
    kn_op op;
    int nin;
    int *in;            /* value ids; -1 for a NULL argument */
    kn_params p;
    int out;            /* N_OP, N_COND: value id of the (first) result */
    int nout;           /* N_COND: results, at value ids out .. out + nout - 1 */
    struct plan *branch[2]; /* N_COND: then, else; inputs are in[1..] */
    struct kn_fused *fused; /* N_FUSED: the JIT'd kernel over in[] (trace/fuse.c; owned) */
    int nfused;         /* N_FUSED: ops it replaced (op is the last); N_SCALARS: its ops */
    struct kn_scalars *scalars; /* N_SCALARS: the chain of 0-d ops over in[] (trace/scalars.c; owned) */
} tnode;

typedef struct kn_trace {
    uint32_t stamp;
    const char *name;
    tvalue *vals;
    int nvals, capv;
    tnode *nodes;
    int nnodes, capn;
    kn_tensor **held;   /* every tensor seen while recording: no address is reused */
    int nheld, caph;
    kn_tensor **mkey;   /* open-addressing map: tensor -> value id */
    int *mval, mcap, mcount;
    bool stateful;      /* wrote into a tensor created while tracing */
    bool exact;         /* see KN_MAX_SYMS */
    int nsyms;
    int16_t sym_id[KN_MAX_SYMS];     /* the symbols, in order */
    int64_t sym_value[KN_MAX_SYMS];  /* their sizes at trace time */
    int nties;                       /* input dims of equal size (a batch shared by x and y): */
    int16_t tie[KN_MAX_SYMS][2];     /* the plan applies only while each pair stays equal */
    bool has_backward;  /* set gradients: replay without building autograd graphs */
    bool oom;
    kn_tensor **vt;           /* while recording: the tensor of each node value (held) */
    int capvt;
    struct kn_trace *parent;  /* kn_cond branches: the enclosing trace */
    bool outer_ref;           /* a branch read a traced tensor not passed in */
} kn_trace;

typedef struct plan {
    uint8_t *sig;
    size_t siglen;
    kn_trace *tr;       /* after dead-code elimination; held tensors dropped */
    int *outs;          /* value id per output */
    int *last_use;      /* per value: index of the last node reading it */
    int *captures;      /* value ids of the captures the plan reads */
    int ncaptures;
    size_t symlen;      /* signature bytes to compare; less than siglen unless exact */
    uint64_t id;        /* finds the plan again for a background compile */
    struct kn_arena *arena; /* kn__run_plan's buffers, made on its first run (core/internal.h) */
} plan;

struct kn_fn {
    const char *name;
    kn_body body;
    void *ctx;
    int nin, nout;
    pthread_mutex_t lock;
    plan *plans;
    int nplans;
    kn_fn_stats_t stats;
    bool history[10];   /* whether each of the last 10 calls traced */
    int hpos;
    bool warned;
    kn_fn_opts opts;
    uint64_t next_id;
    int compiling;      /* background compiles not finished (tiered compilation) */
    pthread_cond_t compiled;
};

/* Runs f's body once on in, recording: res gets the eager outputs (held
 * references) and outs their value ids. NULL with an error on failure. */
kn_trace *kn__record_body(kn_fn *f, kn_tensor *const *in, kn_tensor **res, int *outs);
/* KN_SHADOW=1: runs a cached plan and the body eagerly, compares node by node. */
int kn__shadow_call(kn_fn *f, const plan *pl, kn_tensor *const *in, kn_tensor **out);
/* Optimizes a recorded trace in place (folding, CSE, simplification, dead
 * code) and numbers the last use of each value. false on allocation failure. */
bool kn__plan_build(plan *pl, kn_trace *tr, int *outs, int nout);
/* Removes the dead nodes of a plan and renumbers values and last uses. */
void kn__plan_compact(plan *pl, const bool *dead, const int *outs, int nout);
/* Fuses chains of f32 elementwise nodes of a built plan into JIT kernels
 * (trace/fuse.c) and renumbers last uses. In three steps for tiered
 * compilation: prepare (the chains), compile (slow: any thread), apply
 * (rewrites the plan; under the function's lock). */
void kn__plan_fuse(plan *pl, const int *outs, int nout);
/* Per value of tr, the capture whose storage it may share, for the two
 * checks below (malloc'd; NULL without memory). */
int *kn__storage_roots(const kn_trace *tr);
/* Write node w may change what value u holds. */
bool kn__write_may_touch(const kn_trace *tr, const int *roots, int w, int u);
/* Write node w may run right after node `to` instead (w < to): no node in
 * between reads or writes anything that may share its target's storage, and
 * none is a kn_cond. The target is a capture. */
bool kn__write_can_defer(const kn_trace *tr, const int *roots, int w, int to);
typedef struct kn_fuse_job kn_fuse_job;
kn_fuse_job *kn__fuse_prepare(const plan *pl, const int *outs, int nout);
void kn__fuse_compile(kn_fuse_job *j);
void kn__fuse_apply(plan *pl, kn_fuse_job *j, const int *outs, int nout);
void kn__fuse_job_free(kn_fuse_job *j);
/* Runs an N_FUSED node on its operands: the result, or NULL with an error. */
void kn__fused_free(struct kn_fused *f);
/* The most operands a replayed node passes to its op (replay.c's args). */
#define KN_NODE_MAX_IN 64
/* Runs of 0-d float ops become N_SCALARS nodes (trace/scalars.c); a chain
 * reads at most KN_NODE_MAX_IN values from outside and has at most
 * KN_SCALARS_MAX_OPS ops. */
#define KN_SCALARS_MAX_OPS 256
void kn__plan_scalars(plan *pl, const int *outs, int nout);
/* Runs N_SCALARS node n: res[e] gets the e-th value kn__scalars_outs names. */
int kn__scalars_run(const char *name, const tnode *n, kn_tensor **args, kn_tensor **res);
int kn__scalars_outs(const tnode *n, const int **vals);
kn_op kn__scalars_op(const tnode *n, int e);  /* the op that makes the e-th */
void kn__scalars_free(struct kn_scalars *s);
/* a and b are the same elements of the same storage. */
bool kn__same_view(const kn_tensor *a, const kn_tensor *b);
/* Runs fused node n; its extra outputs (values kn__fused_extras names) go to
 * extra[], which needs room for KN_FUSE_MAX_EXTRA. */
#define KN_FUSE_MAX_EXTRA 4
kn_tensor *kn__fused_run(const char *name, const tnode *n, const tvalue *now, kn_tensor **args, kn_tensor **extra);
int kn__fused_extras(const tnode *n, int *vals);
/* Runs one recorded op on actual tensors. */
kn_tensor *kn__op_call(const tnode *n, const tvalue *outv, kn_tensor **args);
/* kn__run_plan's result when a value's shape broke the symbolic sizes
 * before any side effect ran: the caller retraces for exact shapes. */
#define KN__REPLAY_RESHAPE (-2)
/* Registers the inputs of a trace and their sizes as symbols. */
void kn__trace_inputs(kn_trace *tr, kn_tensor *const *in, int nin);
/* Runs a plan: the reference executor. name is for errors. */
int kn__run_plan(const char *name, const plan *pl, int nout, kn_tensor *const *in, kn_tensor **out,
                 int64_t *peak_bytes, kn_tensor **all);
/* Frees a plan and its trace. */
void kn__plan_free(plan *p);
/* The value a tensor stands for in tr (a new capture or constant if unseen). */
int kn__value_of(kn_trace *tr, kn_tensor *t);
int kn__new_value(kn_trace *tr, vkind kind, int index, kn_tensor *owned, const kn_tensor *like);
tnode *kn__new_node(kn_trace *tr, nkind kind, kn_op op, int nin);
void kn__map_put(kn_trace *tr, kn_tensor *t, int v);
int kn__map_get(kn_trace *tr, const kn_tensor *t);
void kn__hold(kn_trace *tr, kn_tensor *t);
void kn__trace_free(kn_trace *tr);
/* Prints values and nodes (values unused by the plan skipped when last_use). */
void kn__dump_trace(FILE *o, const kn_trace *tr, const int *outs, int nout, const int *last_use);
/* Hands a tensor we hold one reference to over to the caller's pool. */
kn_tensor *kn__hand_over(kn_tensor *t);
#endif
