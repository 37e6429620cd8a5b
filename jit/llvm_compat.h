/* jit/llvm_compat.h - the one place for LLVM version differences. Every
 * jit/ file includes LLVM through this header. */
#ifndef KN_JIT_LLVM_COMPAT_H
#define KN_JIT_LLVM_COMPAT_H

#include <llvm-c/Analysis.h>
#include <llvm-c/BitReader.h>
#include <llvm-c/Core.h>
#include <llvm-c/DebugInfo.h>
#include <llvm-c/Error.h>
#include <llvm-c/LLJIT.h>
#include <llvm-c/Linker.h>
#include <llvm-c/Orc.h>
#include <llvm-c/Target.h>
#include <llvm-c/TargetMachine.h>
#include <llvm-c/Transforms/PassBuilder.h>
#include <llvm/Config/llvm-config.h>

/* The C API used here (LLJIT, LLVMRunPasses with vectorizer switches,
 * LLVMGetHostCPUFeatures) is complete from LLVM 16; the build asks for 19,
 * and the scalar bitcode must come from a clang no newer than this LLVM. */
#if LLVM_VERSION_MAJOR < 16
#error "Kiln's JIT needs LLVM 16 or newer"
#endif

/* The pipeline the JIT runs on every module (new pass manager syntax). */
#define KN_LLVM_PIPELINE "default<O3>"

#endif
