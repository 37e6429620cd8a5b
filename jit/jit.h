/* jit/jit.h - the JIT's internal interface, free of LLVM headers.
 *
 * Elementwise chains over contiguous f32 arrays (jit/elementwise.c). A chain is a list of steps in SSA form: each step is an
 * input, a constant or an op on earlier steps; the last step is the result.
 * exp(x * 0.5f) over one input is
 *   {IN 0}, {CONST 0.5f}, {OP mul 0 1}, {OP exp 2}. */
#ifndef KN_JIT_JIT_H
#define KN_JIT_JIT_H

#include "../core/internal.h"
#include "../core/ops.h"

/* KN_JIT_SCALAR reads element 0 of an input for every element: a 0-dim operand. */
typedef enum { KN_JIT_INPUT, KN_JIT_CONST, KN_JIT_OP, KN_JIT_SCALAR } kn_jit_kind;

typedef struct {
    kn_jit_kind kind;
    int input;   /* KN_JIT_INPUT, KN_JIT_SCALAR: which input array */
    float value; /* KN_JIT_CONST (compared by bits: -0 and NaN payloads count) */
    kn_op op;    /* KN_JIT_OP: an elementwise op with a 1- or 2-argument f32 formula */
    int a, b;    /* KN_JIT_OP: operand steps, earlier than this one; b for binary ops */
} kn_jit_step;

#define KN_JIT_MAX_STEPS 1024
#define KN_JIT_MAX_INPUTS 64

/* args: the ninputs input arrays, then the output array; computes elements
 * [begin, end). The arrays must not overlap the output. */
typedef void (*kn_jit_kernel)(void **args, int64_t begin, int64_t end);

/* The kernel of a chain, compiled on first request and cached for the
 * process (the same chain returns the same code). NULL with a Kiln error
 * for an invalid chain or an LLVM failure. Thread-safe. */
kn_jit_kernel kn__jit_elementwise(const kn_jit_step *steps, int nsteps, int ninputs);

/* Calls a kernel. Call JIT'd code only through this: UBSan's function-type
 * check (-fsanitize=function) reads 8 bytes before the callee, which JIT'd
 * code lacks (it may start a page, and that read would fault). */
#ifdef __clang__
__attribute__((no_sanitize("function")))
#endif
static inline void kn__jit_run(kn_jit_kernel k, void **args, int64_t begin, int64_t end) {
    k(args, begin, end);
}

/* The kernel cache on disk: object code under $KN_CACHE_DIR, else
 * $XDG_CACHE_HOME/kiln, else ~/.cache/kiln (made with mode 0700; refused
 * with a warning if another user owns it or group or others may write it).
 * KN_CACHE=0 turns it off; kernels are still cached in memory. */

/* Debug hooks (jit/llvm.c). The optimized IR of the latest LLVM compile as
 * text (caller frees with free(); NULL if none; kernels loaded from disk
 * have none), how many LLVM compiles have succeeded, how many kernels were
 * loaded from the disk cache, and how many entries this process wrote. */
char *kn__jit_last_ir(void);
uint64_t kn__jit_compile_count(void);
uint64_t kn__jit_disk_hits(void);
uint64_t kn__jit_disk_writes(void);

#endif
