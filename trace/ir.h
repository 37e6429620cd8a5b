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
    int64_t shape[KN_MAX_DIMS];
} tvalue;

typedef enum { N_OP, N_WRITE, N_SET_GRAD, N_ZERO_GRAD } nkind;
typedef struct {
    nkind kind;
    kn_op op;
    int nin;
    int *in;            /* value ids; -1 for a NULL argument */
    kn_params p;
    int out;            /* N_OP: value id of the result */
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
    bool has_backward;  /* set gradients: replay without building autograd graphs */
    bool oom;
} kn_trace;

typedef struct {
    uint8_t *sig;
    size_t siglen;
    kn_trace *tr;       /* after dead-code elimination; held tensors dropped */
    int *outs;          /* value id per output */
    int *last_use;      /* per value: index of the last node reading it */
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
};

/* Optimizes a recorded trace in place (folding, CSE, simplification, dead
 * code) and numbers the last use of each value. false on allocation failure. */
bool kn__plan_build(plan *pl, kn_trace *tr, int *outs, int nout);
/* Runs one recorded op on actual tensors. */
kn_tensor *kn__op_call(const tnode *n, const tvalue *outv, kn_tensor **args);
/* Runs a plan: the reference executor. */
int kn__replay(kn_fn *f, const plan *pl, kn_tensor *const *in, kn_tensor **out);
/* Prints values and nodes (values unused by the plan skipped when last_use). */
void kn__dump_trace(FILE *o, const kn_trace *tr, const int *outs, int nout, const int *last_use);
/* Hands a tensor we hold one reference to over to the caller's pool. */
kn_tensor *kn__hand_over(kn_tensor *t);
#endif
