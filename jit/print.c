/* The two text printers of the kernel IR (jit/jit.h): C for KN_DUMP=kernels
 * and CUDA C for the GPU backend. Both print the same loops the LLVM
 * printer builds, calling the formulas of core/scalar.h. */
#include "jit.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Prints the steps phase p reads, as `float vI = ...;` lines. */
static void print_steps(FILE *o, const kn_jit_desc *d, int root, bool *done, const char *ind, const char *at) {
    if (done[root]) return;
    const kn_jit_step *s = &d->steps[root];
    for (int j = 0; s->kind == KN_JIT_OP && j < kn_op_table[s->op].arity; j++)
        print_steps(o, d, kn__jit_arg(s, j), done, ind, at);
    done[root] = true;
    fprintf(o, "%sfloat v%d = ", ind, root);
    switch (s->kind) {
    case KN_JIT_INPUT:
        if (d->inner[s->arg] == KN_INNER_STRIDED) fprintf(o, "op%d[%s * st%d];\n", s->arg, at, s->arg);
        else fprintf(o, "op%d[%s];\n", s->arg, d->inner[s->arg] == KN_INNER_CONTIGUOUS ? at : "0");
        break;
    case KN_JIT_CONST: fprintf(o, "%#.9gf;\n", (double)s->value); break;
    case KN_JIT_ACC: fprintf(o, "acc%d;\n", s->arg); break;
    case KN_JIT_ROWLEN: fprintf(o, "(float)len;\n"); break;
    case KN_JIT_OP:
        fprintf(o, "kn_s_%s%s_f32(", kn_op_table[s->op].name, s->nonpos ? "_nonpos" : "");
        for (int j = 0; j < kn_op_table[s->op].arity; j++) fprintf(o, "%sv%d", j ? ", " : "", kn__jit_arg(s, j));
        fprintf(o, ");\n");
        break;
    }
}

static const char *phase_name(kn_phase_kind k) {
    static const char *const names[] = {"store", "sum", "max", "row store"};
    return (unsigned)k <= KN_PHASE_ROW_STORE ? names[k] : "?";
}

/* One phase's loop body (C and CUDA share it). */
static void print_phase(FILE *o, const kn_jit_desc *d, int p, bool *done, const char *ind, const char *at) {
    const kn_jit_phase *ph = &d->phases[p];
    memset(done, 0, (size_t)d->nsteps * sizeof *done);
    print_steps(o, d, ph->step, done, ind, at);
    if (ph->kind == KN_PHASE_ROW_STORE) fprintf(o, "%sop%d[0] = v%d;\n", ind, ph->out, ph->step);
    else if (ph->out >= 0) fprintf(o, "%sop%d[%s] = v%d;\n", ind, ph->out, at, ph->step);
    if (ph->kind == KN_PHASE_SUM) fprintf(o, "%sacc%d += v%d;\n", ind, p, ph->step);
    if (ph->kind == KN_PHASE_MAX) fprintf(o, "%sacc%d = kn_s_maximum_f32(acc%d, v%d);\n", ind, p, p, ph->step);
}

/* Operand pointers at the row; a strided operand's last-dim stride from the layout. */
static void print_operands(FILE *o, const kn_jit_desc *d, const char *ind) {
    static const char *const cls[] = {"broadcast", "contiguous", "strided"};
    for (int k = 0; k < d->nin + d->nout; k++) {
        fprintf(o, "%s%sfloat *op%d = (float *)args[%d] + off[%d];  /* %s, %s */\n", ind, k < d->nin ? "const " : "",
                k, k, k, k < d->nin ? "input" : "output", cls[d->inner[k] % 3]);
        if (d->inner[k] == KN_INNER_STRIDED)
            fprintf(o, "%sconst long long st%d = lay[lay[0] * %d];\n", ind, k, k + 2);
    }
}

void kn__jit_print_c(FILE *o, const kn_jit_desc *d, const char *name) {
    bool *done = calloc((size_t)d->nsteps, sizeof *done);
    if (!done) return;
    int nops = d->nin + d->nout;
    fprintf(o, "/* %s: %s kernel, %d phases, %d steps. lay = {nd, size[nd], strides per operand};\n"
               " * kn_jit_offsets sets each operand's offset at row r. */\n",
            name, d->rows ? "row" : "pointwise", d->nphases, d->nsteps);
    fprintf(o, "int32_t kernel(void **args, int64_t begin, int64_t end) {\n"
               "    const int64_t *lay = args[%d], len = lay[lay[0]];\n    int64_t off[%d];\n",
            nops, nops);
    if (d->rows) {
        fprintf(o, "    for (int64_t r = begin; r < end; r++) {\n        kn_jit_offsets(lay, %d, r, off);\n", nops);
        print_operands(o, d, "        ");
        for (int p = 0; p < d->nphases; p++) {
            const kn_jit_phase *ph = &d->phases[p];
            fprintf(o, "        /* phase %d: %s */\n", p, phase_name(ph->kind));
            if (ph->kind == KN_PHASE_ROW_STORE) {
                print_phase(o, d, p, done, "        ", "c");
                continue;
            }
            if (ph->kind != KN_PHASE_STORE)
                fprintf(o, "        float acc%d = %s;\n", p, ph->kind == KN_PHASE_MAX ? "-INFINITY" : "0.0f");
            fprintf(o, "        for (int64_t c = 0; c < len; c++) {\n");
            print_phase(o, d, p, done, "            ", "c");
            fprintf(o, "        }\n");
            if (ph->mean) fprintf(o, "        acc%d /= (float)len;  /* in double, when the sum is */\n", p);
        }
        fprintf(o, "    }\n");
    } else {
        fprintf(o, "    for (int64_t i = begin; i < end;) {  /* rows of the domain, split anywhere */\n"
                   "        int64_t r = i / len, c0 = i %% len, c1 = len - c0 < end - i ? len : c0 + (end - i);\n"
                   "        kn_jit_offsets(lay, %d, r, off);\n", nops);
        print_operands(o, d, "        ");
        fprintf(o, "        for (int64_t c = c0; c < c1; c++) {\n");
        for (int p = 0; p < d->nphases; p++) {  /* a block per phase: step names repeat */
            fprintf(o, "            {\n");
            print_phase(o, d, p, done, "                ", "c");
            fprintf(o, "            }\n");
        }
        fprintf(o, "        }\n        i += c1 - c0;\n    }\n");
    }
    fprintf(o, "    return 0;\n}\n");
    free(done);
}

/* ---- CUDA C ----
 * A pointwise kernel is a grid-stride loop over elements. A row kernel
 * gives each row one block: its threads stride the row in every phase and
 * combine their partial reductions in shared memory. The tree reduction
 * halves a fixed width, so a row kernel must be launched with exactly
 * KN_CUDA_BLOCK threads per block (any grid size; blocks stride the rows).
 * Both are compiled with NVRTC after the text of core/scalar.h, whose
 * KN_SCALAR_INLINE is __device__ there. Sums accumulate in double like the
 * LLVM kernels, and every thread gets the reduced value. */
#define KN_CUDA_BLOCK 256

/* Helpers of row kernels. Each reduction ends with a barrier so the next
 * one may overwrite part[] only after every thread has read part[0]. */
static const char cuda_row_helpers[] =
    "__device__ static double kn_block_sum(double *part, double x) {\n"
    "    part[threadIdx.x] = x;\n"
    "    __syncthreads();\n"
    "    for (unsigned s = KN_CUDA_BLOCK / 2; s > 0; s /= 2) {\n"
    "        if (threadIdx.x < s) part[threadIdx.x] += part[threadIdx.x + s];\n"
    "        __syncthreads();\n"
    "    }\n"
    "    double r = part[0];\n"
    "    __syncthreads();\n"
    "    return r;\n"
    "}\n"
    "/* floats round-trip through double exactly (-0 too; a NaN stays NaN) */\n"
    "__device__ static float kn_block_max(double *part, float x) {\n"
    "    part[threadIdx.x] = x;\n"
    "    __syncthreads();\n"
    "    for (unsigned s = KN_CUDA_BLOCK / 2; s > 0; s /= 2) {\n"
    "        if (threadIdx.x < s)\n"
    "            part[threadIdx.x] = kn_s_maximum_f32((float)part[threadIdx.x], (float)part[threadIdx.x + s]);\n"
    "        __syncthreads();\n"
    "    }\n"
    "    float r = (float)part[0];\n"
    "    __syncthreads();\n"
    "    return r;\n"
    "}\n";

/* One phase as a block of its own (the steps' names repeat across
 * phases): the steps at element `at`, then its store and its partial
 * reduction into `a`. */
static void cuda_phase(FILE *o, const kn_jit_desc *d, int p, bool *done, const char *ind, const char *at) {
    const kn_jit_phase *ph = &d->phases[p];
    memset(done, 0, (size_t)d->nsteps * sizeof *done);
    print_steps(o, d, ph->step, done, ind, at);
    if (ph->out >= 0) fprintf(o, "%sop%d[%s] = v%d;\n", ind, ph->out, at, ph->step);
    if (ph->kind == KN_PHASE_SUM) fprintf(o, "%sa += v%d;\n", ind, ph->step);
    if (ph->kind == KN_PHASE_MAX) fprintf(o, "%sa = kn_s_maximum_f32(a, v%d);\n", ind, ph->step);
}

static void cuda_row_body(FILE *o, const kn_jit_desc *d, bool *done) {
    for (int p = 0; p < d->nphases; p++) {
        const kn_jit_phase *ph = &d->phases[p];
        fprintf(o, "        /* phase %d: %s */\n", p, phase_name(ph->kind));
        if (ph->kind == KN_PHASE_ROW_STORE) {  /* reads only ACCs and constants */
            fprintf(o, "        if (threadIdx.x == 0) {\n");
            cuda_phase(o, d, p, done, "            ", "0");
            fprintf(o, "        }\n");
            continue;
        }
        bool sum = ph->kind == KN_PHASE_SUM, max = ph->kind == KN_PHASE_MAX;
        if (sum || max) fprintf(o, "        float acc%d;\n", p);  /* at row scope: later phases read it */
        fprintf(o, "        {\n");
        if (sum) fprintf(o, "            double a = 0.0;\n");
        if (max) fprintf(o, "            float a = __int_as_float(0xff800000);  /* -inf */\n");
        fprintf(o, "            for (long long c = threadIdx.x; c < len; c += KN_CUDA_BLOCK) {\n");
        cuda_phase(o, d, p, done, "                ", "c");
        fprintf(o, "            }\n");
        if (sum && ph->mean) fprintf(o, "            acc%d = (float)(kn_block_sum(part, a) / (double)len);\n", p);
        else if (sum) fprintf(o, "            acc%d = (float)kn_block_sum(part, a);\n", p);
        if (max) fprintf(o, "            acc%d = kn_block_max(part, a);\n", p);
        /* a reduction's own barriers already order its stores */
        if (!sum && !max && p + 1 < d->nphases)
            fprintf(o, "            __syncthreads();  /* later phases may read what this one stored */\n");
        fprintf(o, "        }\n");
    }
}

char *kn__jit_cuda_source(const kn_jit_desc *d, const char *name) {
    char *text = NULL;
    size_t len = 0;
    FILE *o = open_memstream(&text, &len);
    bool *done = calloc((size_t)d->nsteps, sizeof *done);
    if (!o || !done) {
        if (o) fclose(o);
        free(text);
        free(done);
        return NULL;
    }
    int nops = d->nin + d->nout;
    fprintf(o, "/* %s: %s kernel, %d phases. lay = {nd, size[nd], strides per operand}. */\n", name,
            d->rows ? "row" : "pointwise", d->nphases);
    if (d->rows) fprintf(o, "#define KN_CUDA_BLOCK %d  /* launch with exactly this many threads per block */\n", KN_CUDA_BLOCK);
    /* the offsets of the operands at row r (kn_jit_offsets of the CPU JIT) */
    fprintf(o, "__device__ static void kn_offsets(const long long *lay, long long r, long long *off) {\n"
               "    long long nd = lay[0];\n"
               "    for (int k = 0; k < %d; k++) off[k] = 0;\n"
               "    for (long long d = nd - 2; d >= 0; d--) {\n"
               "        long long size = lay[1 + d], i = r %% size;\n"
               "        r /= size;\n"
               "        for (int k = 0; k < %d; k++) off[k] += i * lay[1 + nd + k * nd + d];\n"
               "    }\n"
               "}\n",
            nops, nops);
    if (d->rows) fputs(cuda_row_helpers, o);
    fprintf(o, "extern \"C\" __global__ void %s%s(void **args, long long begin, long long end) {\n"
               "    const long long *lay = (const long long *)args[%d];\n"
               "    const long long len = lay[lay[0]];\n"
               "    long long off[%d];\n",
            d->rows ? "__launch_bounds__(KN_CUDA_BLOCK) " : "", name, nops, nops);
    if (d->rows) {
        fprintf(o, "    __shared__ double part[KN_CUDA_BLOCK];\n"
                   "    for (long long r = begin + blockIdx.x; r < end; r += gridDim.x) {  /* uniform in the block */\n"
                   "        kn_offsets(lay, r, off);\n");
        print_operands(o, d, "        ");
        cuda_row_body(o, d, done);
        fprintf(o, "    }\n");
    } else {
        fprintf(o, "    long long stride = (long long)gridDim.x * blockDim.x;\n"
                   "    for (long long i = begin + (long long)blockIdx.x * blockDim.x + threadIdx.x; i < end; i += stride) {\n"
                   "        long long c = i %% len;\n"
                   "        kn_offsets(lay, i / len, off);\n");
        print_operands(o, d, "        ");
        for (int p = 0; p < d->nphases; p++) {
            fprintf(o, "        {  /* phase %d: store */\n", p);
            cuda_phase(o, d, p, done, "            ", "c");
            fprintf(o, "        }\n");
        }
        fprintf(o, "    }\n");
    }
    fprintf(o, "}\n");
    free(done);
    if (fclose(o) != 0) {
        free(text);
        return NULL;
    }
    return text;
}
