/* jit/llvm.h - Kiln's process-wide LLVM ORC JIT (internal).
 *
 * A code generator asks for a unit (a module, in a context all units share,
 * that already holds the scalar formulas of core/scalar.h as internal,
 * always-inline functions kn_jit_<op>_<f32|f64>), builds one function into
 * it with the LLVM-C builder, and hands the unit to kn__jit_compile, which
 * optimizes it for the host CPU (O3, loop and SLP vectorizers, no FP
 * contraction) and returns native code. Errors are Kiln errors. */
#ifndef KN_JIT_LLVM_H
#define KN_JIT_LLVM_H

#include "jit.h"
#include "llvm_compat.h"

typedef struct {
    LLVMContextRef ctx; /* shared by all units */
    LLVMModuleRef mod;
} kn_jit_unit;

/* Starts a unit; one exists at a time (a second call waits until the first
 * unit is compiled or disposed). Returns false with a Kiln error. */
bool kn__jit_unit_new(kn_jit_unit *u);
/* Frees a unit that will not be compiled (a generator gave up). */
void kn__jit_unit_dispose(kn_jit_unit *u);
/* words identify a kernel (the generator's normalized input): equal words
 * must mean equal code. The disk cache keys entries by them plus the host
 * CPU, its features and the LLVM version. */

/* The kernel of words from the disk cache, linked into the JIT; NULL (no
 * error) on a miss or with the disk cache off. Thread-safe. */
void *kn__jit_load(const uint32_t *words, size_t nwords);
/* Optimizes u, compiles it to object code, writes that to the disk cache
 * and returns the address of fn (a definition in u->mod, renamed to a
 * symbol derived from words). Always consumes u. The code lives until the
 * process exits. NULL with a Kiln error. Thread-safe. */
void *kn__jit_compile(kn_jit_unit *u, LLVMValueRef fn, const uint32_t *words, size_t nwords);

#endif
