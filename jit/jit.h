/* jit/jit.h - the kernel IR and the JIT's interface, free of LLVM headers.
 *
 * A kernel is a loop nest over an index space (the "domain") whose sizes and
 * strides are arguments, so one compiled kernel serves every batch size.
 * Operands are f32 arrays: inputs 0..nin-1, then outputs. Booleans exist only
 * inside a kernel, as 1.0f and 0.0f (comparisons make them, where reads them). Each is addressed
 * with its own strides in the domain (0 along broadcast dims). The last dim
 * is the inner loop; an operand's stride there has a class fixed at compile
 * time: 0 (broadcast), 1 (contiguous) or any (strided: read from the layout).
 *
 * The body is a list of phases over scalar expressions in SSA form (steps).
 * A pointwise kernel (rows = false) has only STORE phases and its range
 * counts elements of the domain. A row kernel (rows = true) runs its
 * phases in order over each row (the last dim) and its range counts rows:
 * a SUM or MAX phase reduces an expression over the row (and may store it),
 * a later phase reads that result as an ACC step, and ROW_STORE writes an
 * expression of ACCs once per row. softmax over a row is
 *   steps: {IN 0}, {ACC 0}, {OP sub 0 1}, {OP exp 2}, {ACC 1}, {IN 1},
 *          {CONST 1}, {OP div 6 4}, {OP mul 5 7}
 *   phases: {MAX 0}, {SUM 3 -> out 1}, {STORE 8 -> out 1}
 * (the exponentials are stored once, then scaled in place). */
#ifndef KN_JIT_JIT_H
#define KN_JIT_JIT_H

#include "../core/internal.h"
#include "../core/ops.h"

typedef enum {
    KN_JIT_INPUT,  /* operand `arg` at the current element */
    KN_JIT_CONST,  /* value */
    KN_JIT_OP,     /* op on steps a (and b) */
    KN_JIT_ACC,    /* the result of reduction phase `arg` for this row */
    KN_JIT_ROWLEN, /* the length of the last dim, as a float */
} kn_jit_kind;

typedef struct {
    kn_jit_kind kind;
    int arg;     /* INPUT: operand; ACC: phase */
    float value; /* CONST (compared by bits: -0 and NaN payloads count) */
    kn_op op;    /* OP: an elementwise op with a 1- to 3-argument f32 formula */
    int a, b, c; /* OP: operand steps, earlier than this one, as many as the op's arity */
    bool nonpos; /* OP exp: the operand is <= 0 or NaN (x - max of a row): kn_s_exp_nonpos_f32 */
} kn_jit_step;

/* Operand k (< the op's arity) of an OP step. */
static inline int kn__jit_arg(const kn_jit_step *s, int k) { return k == 0 ? s->a : k == 1 ? s->b : s->c; }

typedef enum { KN_PHASE_STORE, KN_PHASE_SUM, KN_PHASE_MAX, KN_PHASE_ROW_STORE } kn_phase_kind;

typedef struct {
    kn_phase_kind kind;
    int step; /* the expression */
    int out;  /* STORE, ROW_STORE: operand written; SUM, MAX: also stored there when >= 0 */
    bool shift; /* MAX whose result only shifts exps (softmax's x - max): NaN need not win
                 * (the sum of exps carries it), so a plain vector max serves */
    bool mean;  /* SUM divided by the row length in the accumulator's precision
                 * (double for a cheap summand), as eager's mean divides its sum */
} kn_jit_phase;

/* Stride classes of the last dim; outputs stored per element are contiguous. */
enum { KN_INNER_BROADCAST = 0, KN_INNER_CONTIGUOUS = 1, KN_INNER_STRIDED = 2 };

#define KN_JIT_MAX_STEPS 1024
#define KN_JIT_MAX_OPERANDS 64
#define KN_JIT_MAX_PHASES 16

typedef struct {
    bool rows;
    int nin, nout;
    uint8_t inner[KN_JIT_MAX_OPERANDS]; /* per operand: its stride class in the last dim */
    const kn_jit_step *steps;
    int nsteps;
    const kn_jit_phase *phases;
    int nphases;
} kn_jit_desc;

/* args[0..nin+nout) are the operands' data; args[nin+nout] points to the
 * layout: {nd, size[0..nd), stride of operand 0 [0..nd), operand 1, ...}
 * (strides in elements; nd >= 1). Computes elements (pointwise) or rows
 * [begin, end) and returns 0. Outputs must not overlap inputs. */
typedef int32_t (*kn_jit_kernel)(void **args, int64_t begin, int64_t end);

/* Kernels of domains of three or more dims call this (as kn_jit_offsets,
 * a host function the JIT links to) once per row: the offset of each of
 * nops operands at row r (rows of the dims before the last, row-major). */
void kn__jit_offsets(const int64_t *lay, int32_t nops, int64_t r, int64_t *off);

/* The kernel of a description, compiled on first request and cached for
 * the process and on disk (equal descriptions share code). NULL with a
 * Kiln error for an invalid description or an LLVM failure. Thread-safe. */
kn_jit_kernel kn__jit_kernel(const kn_jit_desc *d);

/* Printers of the kernel IR (jit/print.c): the C a kernel computes, with
 * the formulas of core/scalar.h (KN_DUMP=kernels), and CUDA C for the GPU
 * backend (one thread per element, or one block per row). The CUDA text
 * is malloc'ed; NULL on allocation failure. */
void kn__jit_print_c(FILE *o, const kn_jit_desc *d, const char *name);
char *kn__jit_cuda_source(const kn_jit_desc *d, const char *name);

/* Calls a kernel. Call JIT'd code only through this: UBSan's function-type
 * check (-fsanitize=function) reads 8 bytes before the callee, which JIT'd
 * code lacks (it may start a page, and that read would fault). */
#ifdef __clang__
__attribute__((no_sanitize("function")))
#endif
static inline int32_t kn__jit_run(kn_jit_kernel k, void **args, int64_t begin, int64_t end) {
    return k(args, begin, end);
}

/* The kernel cache on disk: object code under $KN_CACHE_DIR, else
 * $XDG_CACHE_HOME/kiln, else ~/.cache/kiln (made with mode 0700; refused
 * with a warning if another user owns it or group or others may write it).
 * KN_CACHE=0 turns it off; kernels are still cached in memory. */

/* Debug hooks (jit/llvm.c). The optimized IR of the latest LLVM compile as
 * text, kept only after kn__jit_keep_ir(true) (printing it slowed every
 * compile) (caller frees with free(); NULL if none; kernels loaded from
 * disk have none), how many LLVM compiles have succeeded, how many kernels
 * were loaded from the disk cache, and how many entries this process wrote. */
void kn__jit_keep_ir(bool on);
char *kn__jit_last_ir(void);
uint64_t kn__jit_compile_count(void);
uint64_t kn__jit_disk_hits(void);
uint64_t kn__jit_disk_writes(void);

#endif
