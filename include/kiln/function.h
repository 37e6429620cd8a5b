/* kn_function: tf.function for C. Included by kiln.h.
 *
 * The first call with a new input signature runs the body eagerly while
 * recording every op into a graph (the trace). Later calls with the same
 * signature replay the graph: no C control flow of the body runs again, so
 * branches on C values (flags in ctx, loop counts) are baked into the trace,
 * as with tf.function. Tensors the body reaches that are not inputs
 * (parameters through ctx) are captured by reference: every call reads their
 * current values. In-place writes to them (optimizer steps) and kn_backward
 * inside the body are replayed too, so a whole training step can be one
 * kn_fn. Reading a value (kn_item, kn_copy_out, kn_data) while tracing is an
 * error: it would bake one call's data into every later call.
 *
 * The signature is grad mode plus, per input, dtype, rank, requires-grad and
 * which dims are 1: other sizes are symbolic, so one plan serves every batch
 * size. A body that reads sizes (kn_shape, kn_numel, kn_strides) gets a plan
 * for its exact shapes, since it may have computed values from them.
 */
#ifndef KILN_FUNCTION_H
#define KILN_FUNCTION_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kn_fn kn_fn;
/* The body: reads in[0..nin), sets out[0..nout); returns 0, or nonzero on error. */
typedef int (*kn_body)(void *ctx, kn_tensor *const *in, kn_tensor **out);

typedef enum { KN_COMPILE_SYNC, KN_COMPILE_ASYNC } kn_compile_mode;
typedef struct {
    bool static_shapes;       /* plans serve only the exact shapes they were traced with */
    kn_compile_mode compile;  /* ASYNC: run op by op until the fused kernels are compiled */
} kn_fn_opts;

/* Borrowed name and ctx must outlive the kn_fn. opts may be NULL (defaults:
 * symbolic sizes, synchronous compiles; KN_STATIC_SHAPES=1 and
 * KN_COMPILE=async set them for every function). Returns a new kn_fn (free
 * with kn_fn_free), or NULL with an error. */
kn_fn *kn_function(const char *name, kn_body body, void *ctx, int nin, int nout, const kn_fn_opts *opts);
/* Runs f: sets out[0..nout) to new references (owned like op results), or
 * returns -1 with an error and sets none. */
int kn_call(kn_fn *f, kn_tensor *const *in, kn_tensor **out);
void kn_fn_free(kn_fn *f);  /* waits for its background compiles */
/* With KN_COMPILE_ASYNC (or KN_COMPILE=async), a new plan runs op by op while a thread compiles its
 * fused kernels, and switches to them when they are ready. This waits until
 * every compile started for f has finished. */
void kn_fn_wait_compiled(kn_fn *f);

typedef struct {
    int64_t calls, traces, hits, eager_calls;
    double trace_seconds;     /* recording the first calls */
    int64_t nodes;            /* nodes in the newest plan, after dead-code elimination */
    int64_t peak_bytes;       /* most bytes of intermediate values alive at once, last replay */
    int64_t planned_peak_bytes; /* bytes of the newest plan's arena (kn_cond branches' included): its
                                   values that die within a call, laid out by liveness after its first
                                   replay and reused by later ones; 0 before that */
    int64_t shadow_mismatches; /* KN_SHADOW=1: calls whose plan disagreed with eager */
    char shadow_report[320];  /* the first node that disagreed, as text */
} kn_fn_stats_t;
kn_fn_stats_t kn_fn_stats(const kn_fn *f);
/* The newest plan as readable text. */
void kn_fn_dump(const kn_fn *f, FILE *out);
/* The newest plan as a Graphviz graph (dot -Tsvg). */
void kn_fn_dot(const kn_fn *f, FILE *out);
/* Data-dependent control flow: runs then_fn or else_fn (same kn_body shape)
 * on in, as pred (a one-element tensor) is nonzero or zero, and sets
 * out[0..nout) like an op. Eagerly it calls one branch. While tracing it
 * records both (each runs once, so branches must not write in place, and
 * must take every traced tensor through in) and every later call runs only
 * the taken one. The branches' outputs must match in dtype and shape.
 * Returns 0, or -1 with an error. */
int kn_cond(kn_tensor *pred, kn_body then_fn, kn_body else_fn, void *ctx, kn_tensor *const *in, int nin,
            kn_tensor **out, int nout);
/* Runs every kn_fn body eagerly (also KN_EAGER=1), for debugging with gdb. */
void kn_run_functions_eagerly(bool on);

#ifdef __cplusplus
}
#endif
#endif
