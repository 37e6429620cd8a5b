/* Kernels from the kernel IR (jit/jit.h): each phase becomes a loop over
 * the inner dim that calls the linked formulas kn_jit_<op>_f32, which
 * inline, so O3 vectorizes it with no intermediate arrays. Sums reassociate
 * (and vectorize); max reductions use llvm.maximum, which propagates NaN
 * like kn_max. */
#include "llvm.h"
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the memory cache: description (normalized to words) -> kernel; the
 * same words key the disk cache (jit/llvm.c) ---- */
typedef struct entry {
    struct entry *next;
    uint64_t hash;
    size_t nwords;
    uint32_t *words;
    kn_jit_kernel fn;
} entry;

#define NBUCKETS 256
static entry *buckets[NBUCKETS];
static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER; /* held while compiling */

static uint32_t float_bits(float v) {
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    return u;
}

/* Fixed-size records with unused fields zeroed, so equal descriptions give
 * equal words whatever the caller left in the fields a step does not use. */
static uint32_t *normalize(const kn_jit_desc *d, size_t *nwords) {
    int nops = d->nin + d->nout;
    *nwords = 6 + (size_t)nops + 5 * (size_t)d->nsteps + 3 * (size_t)d->nphases;
    uint32_t *w = calloc(*nwords, sizeof *w), *x = w;
    if (!w) return NULL;
    *x++ = 3; /* the IR's version: bump when codegen changes meaning */
    *x++ = d->rows;
    *x++ = (uint32_t)d->nin;
    *x++ = (uint32_t)d->nout;
    *x++ = (uint32_t)d->nsteps;
    *x++ = (uint32_t)d->nphases;
    for (int k = 0; k < nops; k++) *x++ = d->inner[k];
    for (int i = 0; i < d->nsteps; i++, x += 5) {
        const kn_jit_step *s = &d->steps[i];
        x[0] = (uint32_t)s->kind;
        if (s->kind == KN_JIT_INPUT || s->kind == KN_JIT_ACC) x[1] = (uint32_t)s->arg;
        if (s->kind == KN_JIT_CONST) x[1] = float_bits(s->value);
        if (s->kind == KN_JIT_OP) {
            x[1] = (uint32_t)s->op | (s->nonpos ? 1u << 31 : 0);
            for (int j = 0; j < kn_op_table[s->op].arity; j++) x[2 + j] = (uint32_t)kn__jit_arg(s, j);
        }
    }
    for (int p = 0; p < d->nphases; p++, x += 3) {
        x[0] = (uint32_t)d->phases[p].kind | (d->phases[p].shift ? 1u << 8 : 0) | (d->phases[p].mean ? 1u << 9 : 0);
        x[1] = (uint32_t)d->phases[p].step;
        x[2] = (uint32_t)d->phases[p].out;
    }
    return w;
}

static uint64_t fnv1a(const uint32_t *w, size_t n) {
    uint64_t h = 0xcbf29ce484222325u;
    for (size_t i = 0; i < n; i++)
        for (int k = 0; k < 4; k++) h = (h ^ ((w[i] >> (8 * k)) & 0xff)) * 0x100000001b3u;
    return h;
}

/* ---- validation: everything but the availability of formulas ---- */

/* Marks the steps phase p reads; on a step it may not read, sets *bad and
 * *why. A row store reads no elements; an ACC must be an earlier
 * reduction; an output is read only after an earlier phase wrote it. */
static bool reaches(const kn_jit_desc *d, int root, bool *seen, int p, int *bad, const char **why) {
    if (seen[root]) return true;
    seen[root] = true;
    const kn_jit_step *s = &d->steps[root];
    *bad = root;
    if (s->kind == KN_JIT_INPUT && d->phases[p].kind == KN_PHASE_ROW_STORE)
        return *why = "a row store reads no elements", false;
    if (s->kind == KN_JIT_INPUT && s->arg >= d->nin) {
        bool written = false;
        for (int q = 0; q < p; q++)
            written |= d->phases[q].out == s->arg && d->phases[q].kind != KN_PHASE_ROW_STORE;
        if (!written) return *why = "it reads an output no earlier phase wrote", false;
    }
    if (s->kind == KN_JIT_ACC &&
        (s->arg >= p || d->phases[s->arg].kind == KN_PHASE_STORE || d->phases[s->arg].kind == KN_PHASE_ROW_STORE))
        return *why = "not the result of an earlier reduction", false;
    if (s->kind != KN_JIT_OP) return true;
    for (int j = 0; j < kn_op_table[s->op].arity; j++)
        if (!reaches(d, kn__jit_arg(s, j), seen, p, bad, why)) return false;
    return true;
}

static bool check(const kn_jit_desc *d) {
    if (!d || !d->steps || d->nsteps < 1 || d->nsteps > KN_JIT_MAX_STEPS)
        return kn__error("jit: a kernel needs 1 to %d steps, got %d", KN_JIT_MAX_STEPS,
                         d && d->steps ? d->nsteps : 0), false;
    int nops = d->nin + d->nout;
    if (d->nin < 0 || d->nout < 1 || nops > KN_JIT_MAX_OPERANDS)
        return kn__error("jit: a kernel takes 0 to %d operands with at least one output, got %d in, %d out",
                         KN_JIT_MAX_OPERANDS, d->nin, d->nout), false;
    if (!d->phases || d->nphases < 1 || d->nphases > KN_JIT_MAX_PHASES)
        return kn__error("jit: a kernel needs 1 to %d phases, got %d", KN_JIT_MAX_PHASES, d->nphases), false;
    for (int k = 0; k < nops; k++)
        if (d->inner[k] > KN_INNER_STRIDED)
            return kn__error("jit: operand %d has inner stride class %d", k, d->inner[k]), false;
    for (int i = 0; i < d->nsteps; i++) {
        const kn_jit_step *s = &d->steps[i];
        if (s->kind == KN_JIT_CONST || s->kind == KN_JIT_ROWLEN) continue;
        if (s->kind == KN_JIT_INPUT) {
            if (s->arg < 0 || s->arg >= nops)
                return kn__error("jit: step %d reads operand %d of %d", i, s->arg, nops), false;
            continue;
        }
        if (s->kind == KN_JIT_ACC) {
            if (!d->rows || s->arg < 0 || s->arg >= d->nphases)
                return kn__error("jit: step %d reads the result of phase %d, which is not a reduction", i, s->arg),
                       false;
            continue;
        }
        if (s->kind != KN_JIT_OP) return kn__error("jit: step %d has unknown kind %d", i, (int)s->kind), false;
        if ((unsigned)s->op >= KN_OP_COUNT) return kn__error("jit: step %d has unknown op %d", i, (int)s->op), false;
        const kn_op_info *info = &kn_op_table[s->op];
        if (info->kind != KN_KIND_ELEMENTWISE || info->arity < 1 || info->arity > 3)
            return kn__error("jit: step %d: op %s is not an elementwise op of 1 to 3 arguments", i, info->name),
                   false;
        if (s->nonpos && s->op != KN_OP_exp)
            return kn__error("jit: step %d: only exp has a non-positive form, not %s", i, info->name), false;
        for (int j = 0; j < info->arity; j++)
            if (kn__jit_arg(s, j) < 0 || kn__jit_arg(s, j) >= i)
                return kn__error("jit: step %d (%s) uses step %d, which is not an earlier step", i, info->name,
                                 kn__jit_arg(s, j)), false;
    }
    bool *seen = calloc((size_t)d->nsteps, sizeof *seen);
    if (!seen) return kn__error("jit: out of memory"), false;
    bool ok = true;
    for (int p = 0; p < d->nphases && ok; p++) {
        const kn_jit_phase *ph = &d->phases[p];
        bool stores = ph->kind == KN_PHASE_STORE || ph->kind == KN_PHASE_ROW_STORE || ph->out >= 0;
        int bad = -1;
        if ((unsigned)ph->kind > KN_PHASE_ROW_STORE || (!d->rows && ph->kind != KN_PHASE_STORE)) {
            ok = false, kn__error("jit: phase %d: a %s kernel cannot have phase kind %d", p,
                                  d->rows ? "row" : "pointwise", (int)ph->kind);
        } else if (ph->shift && ph->kind != KN_PHASE_MAX) {
            ok = false, kn__error("jit: phase %d: only a max can be a shift", p);
        } else if (ph->mean && ph->kind != KN_PHASE_SUM) {
            ok = false, kn__error("jit: phase %d: only a sum can be a mean", p);
        } else if (ph->step < 0 || ph->step >= d->nsteps) {
            ok = false, kn__error("jit: phase %d evaluates step %d of %d", p, ph->step, d->nsteps);
        } else if (stores && (ph->out < d->nin || ph->out >= nops)) {
            ok = false, kn__error("jit: phase %d writes operand %d, which is not an output", p, ph->out);
        } else if (stores && ph->kind != KN_PHASE_ROW_STORE && d->inner[ph->out] != KN_INNER_CONTIGUOUS) {
            ok = false, kn__error("jit: phase %d stores elements into operand %d, which is not contiguous", p,
                                  ph->out);
        } else {
            const char *why = "";
            memset(seen, 0, (size_t)d->nsteps * sizeof *seen);
            if (!reaches(d, ph->step, seen, p, &bad, &why))
                ok = false, kn__error("jit: phase %d cannot read step %d: %s", p, bad, why);
        }
    }
    free(seen);
    return ok;
}

/* ---- code generation ---- */

typedef struct {
    kn_jit_unit *u;
    const kn_jit_desc *d;
    LLVMBuilderRef b;
    LLVMTypeRef f32, i64, i32, ptr;
    LLVMValueRef *v;   /* per step, within the current function; NULL if not built */
    LLVMValueRef *ops; /* operand pointers at the row start */
    LLVMValueRef *acc; /* per phase: its reduction result */
    LLVMValueRef c, len;
    LLVMValueRef *stride; /* per operand: its stride in the last dim */
} gen;

static LLVMValueRef formula(gen *g, const kn_jit_step *s) {
    const kn_op_info *info = &kn_op_table[s->op];
    char name[64];
    snprintf(name, sizeof name, "kn_jit_%s%s_f32", info->name, s->nonpos ? "_nonpos" : "");
    LLVMValueRef f = LLVMGetNamedFunction(g->u->mod, name);
    if (!f || LLVMCountParams(f) != (unsigned)info->arity) return NULL;
    return f;
}

/* The value of step i at element c of the current row. */
static LLVMValueRef expr(gen *g, int i) {
    if (g->v[i]) return g->v[i];
    const kn_jit_step *s = &g->d->steps[i];
    LLVMBuilderRef b = g->b;
    LLVMValueRef r = NULL;
    switch (s->kind) {
    case KN_JIT_INPUT: {
        /* a broadcast operand reads its one element, which LLVM hoists */
        uint8_t cls = g->d->inner[s->arg];
        LLVMValueRef at = cls == KN_INNER_BROADCAST    ? LLVMConstInt(g->i64, 0, 0)
                          : cls == KN_INNER_CONTIGUOUS ? g->c
                                                       : LLVMBuildNSWMul(b, g->c, g->stride[s->arg], "");
        LLVMValueRef p = LLVMBuildInBoundsGEP2(b, g->f32, g->ops[s->arg], &at, 1, "");
        r = LLVMBuildLoad2(b, g->f32, p, "");
        LLVMSetAlignment(r, 4);
        break;
    }
    case KN_JIT_CONST: r = LLVMConstReal(g->f32, s->value); break; /* a float widens to double exactly */
    case KN_JIT_ACC: r = g->acc[s->arg]; break;
    case KN_JIT_ROWLEN: r = LLVMBuildSIToFP(b, g->len, g->f32, ""); break;
    case KN_JIT_OP: {
        LLVMValueRef f = formula(g, s);
        if (!f) return kn__error("jit: step %d: op %s has no f32 formula to compile", i, kn_op_table[s->op].name);
        int arity = kn_op_table[s->op].arity;
        LLVMValueRef args[3];
        for (int j = 0; j < arity; j++)
            if (!(args[j] = expr(g, kn__jit_arg(s, j)))) return NULL;
        r = LLVMBuildCall2(b, LLVMGlobalGetValueType(f), f, args, (unsigned)arity, "");
        break;
    }
    }
    return g->v[i] = r;
}

static void clear_steps(gen *g) { memset(g->v, 0, (size_t)g->d->nsteps * sizeof *g->v); }

/* Whether step `root` (or, with root < 0, any step) evaluates a
 * transcendental formula: tens of instructions per element. */
static bool costly(const kn_jit_desc *d, int root) {
    bool c[KN_JIT_MAX_STEPS], any = false;
    for (int i = 0; i < d->nsteps; i++) {
        const kn_jit_step *s = &d->steps[i];
        kn_op op = s->op;
        c[i] = s->kind == KN_JIT_OP &&
               (op == KN_OP_exp || op == KN_OP_log || op == KN_OP_tanh || op == KN_OP_sigmoid || op == KN_OP_sin ||
                op == KN_OP_cos || op == KN_OP_erf || op == KN_OP_gelu || op == KN_OP_gelu_tanh || op == KN_OP_pow);
        for (int j = 0; s->kind == KN_JIT_OP && j < kn_op_table[op].arity; j++) c[i] |= c[kn__jit_arg(s, j)];
        any |= c[i];
    }
    return root < 0 ? any : c[root];
}

/* Asks the loop vectorizer to fold the loop's remainder into masked vector
 * iterations instead of a scalar loop: a 10-class row is then one masked
 * iteration, not ten scalar exps, and a pointwise kernel with
 * transcendentals holds its inlined formulas once, not twice (a 7-op chain
 * compiled in 19.5 ms, now 17; it runs as fast, while a cheap memory-bound
 * chain lost 6% folded, so it keeps its scalar remainder). */
static void fold_tail(LLVMContextRef c, LLVMValueRef latch_br) {
    LLVMMetadataRef hint[2] = {LLVMMDStringInContext2(c, "llvm.loop.vectorize.predicate.enable", 36),
                               LLVMValueAsMetadata(LLVMConstInt(LLVMInt1TypeInContext(c), 1, 0))};
    LLVMMetadataRef self = LLVMTemporaryMDNode(c, NULL, 0);
    LLVMMetadataRef ops[2] = {self, LLVMMDNodeInContext2(c, hint, 2)};
    LLVMMetadataRef id = LLVMMDNodeInContext2(c, ops, 2);
    LLVMMetadataReplaceAllUsesWith(self, id); /* a loop ID names itself first */
    LLVMSetMetadata(latch_br, LLVMGetMDKindIDInContext(c, "llvm.loop", 9), LLVMMetadataAsValue(c, id));
}

/* phase_p(op0..opN (noalias), c0, c1, len, acc0..accP, stride0..strideN)
 * -> float: the loop over [c0, c1) of phases p..last (several only for the
 * store phases of a pointwise kernel, which read earlier phases' outputs at
 * the same element: one loop keeps the divider of Adam's update busy while
 * the moments are computed); internal and always inlined into the kernel,
 * so the noalias facts survive as scopes and the loop needs no overlap
 * checks to vectorize. Returns the reduction (0 for a store phase). */
static LLVMValueRef build_phase(gen *g, int p, int last, bool short_rows) {
    const kn_jit_desc *d = g->d;
    const kn_jit_phase *ph = &d->phases[p];
    LLVMContextRef c = g->u->ctx;
    int nops = d->nin + d->nout, np = d->nphases;
    LLVMTypeRef params[2 * KN_JIT_MAX_OPERANDS + 3 + KN_JIT_MAX_PHASES];
    for (int k = 0; k < nops; k++) params[k] = g->ptr;
    params[nops] = params[nops + 1] = params[nops + 2] = g->i64;
    for (int k = 0; k < np; k++) params[nops + 3 + k] = g->f32;
    for (int k = 0; k < nops; k++) params[nops + 3 + np + k] = g->i64;
    LLVMTypeRef ft = LLVMFunctionType(g->f32, params, (unsigned)(2 * nops + 3 + np), 0);
    char name[32];
    snprintf(name, sizeof name, "kn_phase%d%s", p, short_rows ? "_short" : "");
    LLVMValueRef fn = LLVMAddFunction(g->u->mod, name, ft);
    LLVMSetLinkage(fn, LLVMInternalLinkage);
    unsigned noalias = LLVMGetEnumAttributeKindForName("noalias", 7);
    unsigned inl = LLVMGetEnumAttributeKindForName("alwaysinline", 12);
    for (int k = 0; k < nops; k++)
        LLVMAddAttributeAtIndex(fn, (unsigned)k + 1, LLVMCreateEnumAttribute(c, noalias, 0));
    LLVMAddAttributeAtIndex(fn, LLVMAttributeFunctionIndex, LLVMCreateEnumAttribute(c, inl, 0));

    LLVMBuilderRef b = g->b;
    LLVMBasicBlockRef entry = LLVMAppendBasicBlockInContext(c, fn, "entry");
    LLVMBasicBlockRef loop = LLVMAppendBasicBlockInContext(c, fn, "loop");
    LLVMBasicBlockRef done = LLVMAppendBasicBlockInContext(c, fn, "done");
    LLVMValueRef c0 = LLVMGetParam(fn, (unsigned)nops), c1 = LLVMGetParam(fn, (unsigned)nops + 1);
    LLVMValueRef ops[KN_JIT_MAX_OPERANDS], accs[KN_JIT_MAX_PHASES], strides[KN_JIT_MAX_OPERANDS];
    for (int k = 0; k < nops; k++) ops[k] = LLVMGetParam(fn, (unsigned)k);
    for (int k = 0; k < np; k++) accs[k] = LLVMGetParam(fn, (unsigned)(nops + 3 + k));
    for (int k = 0; k < nops; k++) strides[k] = LLVMGetParam(fn, (unsigned)(nops + 3 + np + k));
    g->ops = ops;
    g->stride = strides;
    g->acc = accs;
    g->len = LLVMGetParam(fn, (unsigned)nops + 2);
    bool reduce = ph->kind == KN_PHASE_SUM || ph->kind == KN_PHASE_MAX;
    /* Sums accumulate in double, like kn_sum's partials, unless the summand
     * is costly (softmax's exp): double lanes halve the vector width of the
     * whole loop (softmax 4096x1024: 1.9 -> 1.1 ms in f32, whose 64 partial
     * sums of a row are as accurate as eager's 16 f32 lanes per block). */
    LLVMTypeRef at = ph->kind == KN_PHASE_SUM && !costly(d, ph->step) ? LLVMDoubleTypeInContext(c) : g->f32;
    LLVMValueRef ident = LLVMConstReal(at, ph->kind == KN_PHASE_MAX ? -INFINITY : 0.0);

    LLVMPositionBuilderAtEnd(b, entry);
    LLVMBuildCondBr(b, LLVMBuildICmp(b, LLVMIntSLT, c0, c1, ""), loop, done);
    LLVMPositionBuilderAtEnd(b, loop);
    LLVMValueRef i = LLVMBuildPhi(b, g->i64, "c");
    LLVMValueRef a = reduce ? LLVMBuildPhi(b, at, "acc") : NULL, next_a = NULL;
    g->c = i;
    clear_steps(g);
    LLVMValueRef v = NULL;
    for (int q = p; q <= last; q++) {
        if (!(v = expr(g, d->phases[q].step))) return NULL;
        if (d->phases[q].out >= 0) {
            LLVMValueRef at = LLVMBuildInBoundsGEP2(b, g->f32, ops[d->phases[q].out], &i, 1, "");
            LLVMSetAlignment(LLVMBuildStore(b, v, at), 4);
        }
    }
    if (ph->kind == KN_PHASE_SUM) {
        next_a = LLVMBuildFAdd(b, a, at == g->f32 ? v : LLVMBuildFPExt(b, v, at, ""), "");
        LLVMSetFastMathFlags(next_a, LLVMFastMathAllowReassoc);
    } else if (ph->kind == KN_PHASE_MAX) {
        /* llvm.maximum propagates NaN like kn_max (and costs 4 instructions
         * more per vector); a shift takes the plain max (softmax 12% faster) */
        bool loose = ph->shift;
        const char *name = loose ? "llvm.maxnum" : "llvm.maximum";
        unsigned id = LLVMLookupIntrinsicID(name, strlen(name));
        LLVMValueRef f = LLVMGetIntrinsicDeclaration(g->u->mod, id, &g->f32, 1);
        LLVMValueRef xy[2] = {a, v};
        next_a = LLVMBuildCall2(b, LLVMIntrinsicGetType(c, id, &g->f32, 1), f, xy, 2, "");
        if (loose) LLVMSetFastMathFlags(next_a, LLVMFastMathNoNaNs | LLVMFastMathNoSignedZeros);
    }
    LLVMValueRef next = LLVMBuildNSWAdd(b, i, LLVMConstInt(g->i64, 1, 0), "");
    LLVMBasicBlockRef tail = LLVMGetInsertBlock(b);
    LLVMValueRef latch = LLVMBuildCondBr(b, LLVMBuildICmp(b, LLVMIntSLT, next, c1, ""), loop, done);
    if (short_rows || (!d->rows && costly(d, -1))) fold_tail(c, latch);
    LLVMValueRef in_v[2] = {c0, next};
    LLVMBasicBlockRef in_b[2] = {entry, tail};
    LLVMAddIncoming(i, in_v, in_b, 2);
    if (reduce) {
        LLVMValueRef av[2] = {ident, next_a};
        LLVMAddIncoming(a, av, in_b, 2);
    }
    LLVMPositionBuilderAtEnd(b, done);
    if (reduce) {
        LLVMValueRef r = LLVMBuildPhi(b, at, "r");
        LLVMValueRef rv[2] = {ident, next_a};
        LLVMAddIncoming(r, rv, in_b, 2);
        if (ph->mean) r = LLVMBuildFDiv(b, r, LLVMBuildSIToFP(b, g->len, at, ""), "mean");
        LLVMBuildRet(b, at == g->f32 ? r : LLVMBuildFPTrunc(b, r, g->f32, ""));
    } else {
        LLVMBuildRet(b, LLVMConstReal(g->f32, 0.0));
    }
    return fn;
}

void kn__jit_offsets(const int64_t *lay, int32_t nops, int64_t r, int64_t *off) {
    int64_t nd = lay[0];
    for (int k = 0; k < nops; k++) off[k] = 0;
    for (int64_t d = nd - 2; d >= 0; d--) {
        int64_t size = lay[1 + d], i = r % size;
        r /= size;
        for (int k = 0; k < nops; k++) off[k] += i * lay[1 + nd + k * nd + d];
    }
}

static LLVMValueRef load_i64(gen *g, LLVMValueRef base, LLVMValueRef index) {
    LLVMValueRef p = LLVMBuildInBoundsGEP2(g->b, g->i64, base, &index, 1, "");
    return LLVMBuildLoad2(g->b, g->i64, p, "");
}


#define PF_BLOCK 128        /* elements per block of a pointwise row (1024: ew_chain 11.2 ms, compile 14 ms; 128: 9.2 ms, 12 ms) */
#define SHORT_ROW 16        /* row kernels: rows shorter than this run tail-folded loops */
#define PF_AHEAD 4096       /* prefetch distance in elements (16 KiB) */
#define PF_MAX_INPUTS 4
#define PF_STEP 16          /* one prefetch per 64-byte line (every other line: ew_chain 11.3 -> 13.4 ms) */

/* kernel(args, begin, end): for each row touched by [begin, end), the
 * operand pointers at the row (inline, or kn__jit_offsets for deep domains), then the
 * phases in order. A pointwise range may start and end inside a row. */
static LLVMValueRef build(kn_jit_unit *u, const kn_jit_desc *d) {
    LLVMContextRef c = u->ctx;
    gen g = {.u = u, .d = d, .f32 = LLVMFloatTypeInContext(c), .i64 = LLVMInt64TypeInContext(c),
             .i32 = LLVMInt32TypeInContext(c), .ptr = LLVMPointerTypeInContext(c, 0)};
    int nops = d->nin + d->nout, np = d->nphases;
    LLVMValueRef phase_fn[KN_JIT_MAX_PHASES] = {0}, short_fn[KN_JIT_MAX_PHASES] = {0}, fn = NULL;
    g.b = LLVMCreateBuilderInContext(c);
    g.v = calloc((size_t)d->nsteps, sizeof *g.v);
    if (!g.v) {
        kn__error("jit: out of memory");
        goto out;
    }
    for (int p = 0; p < (d->rows ? np : 1); p++)
        if (d->phases[p].kind != KN_PHASE_ROW_STORE &&
            (!(phase_fn[p] = build_phase(&g, p, d->rows ? p : np - 1, false)) ||
             (d->rows && !(short_fn[p] = build_phase(&g, p, p, true)))))
            goto out;
    /* kn__jit_offsets, linked by name (jit/llvm.c defines the symbol): compiled
     * into every module, even out of line, it took 3.5 ms of a 16 ms compile */
    LLVMTypeRef oparams[4] = {g.ptr, g.i32, g.i64, g.ptr};
    LLVMTypeRef otype = LLVMFunctionType(LLVMVoidTypeInContext(c), oparams, 4, 0);
    LLVMValueRef offsets = LLVMAddFunction(u->mod, "kn_jit_offsets", otype);

    LLVMTypeRef kparams[3] = {g.ptr, g.i64, g.i64};
    fn = LLVMAddFunction(u->mod, "kn_kernel", LLVMFunctionType(g.i32, kparams, 3, 0));
    LLVMBuilderRef b = g.b;
    LLVMBasicBlockRef entry = LLVMAppendBasicBlockInContext(c, fn, "entry");
    LLVMBasicBlockRef loop = LLVMAppendBasicBlockInContext(c, fn, "row");
    LLVMBasicBlockRef done = LLVMAppendBasicBlockInContext(c, fn, "done");
    LLVMPositionBuilderAtEnd(b, entry);
    LLVMValueRef args = LLVMGetParam(fn, 0), begin = LLVMGetParam(fn, 1), end = LLVMGetParam(fn, 2);
    LLVMValueRef base[KN_JIT_MAX_OPERANDS], ops[KN_JIT_MAX_OPERANDS], accs[KN_JIT_MAX_PHASES];
    for (int k = 0; k <= nops; k++) {
        LLVMValueRef idx = LLVMConstInt(g.i64, (unsigned long long)k, 0);
        LLVMValueRef slot = LLVMBuildInBoundsGEP2(b, g.ptr, args, &idx, 1, "");
        base[k] = LLVMBuildLoad2(b, g.ptr, slot, "");
    }
    LLVMValueRef lay = base[nops];
    LLVMValueRef nd = load_i64(&g, lay, LLVMConstInt(g.i64, 0, 0));
    LLVMValueRef len = load_i64(&g, lay, nd); /* size[nd - 1] is lay[nd] */
    LLVMValueRef off = LLVMBuildArrayAlloca(b, g.i64, LLVMConstInt(g.i64, (unsigned long long)nops, 0), "off");
    LLVMValueRef strides[KN_JIT_MAX_OPERANDS]; /* in the last dim: lay[1 + nd + k * nd + nd - 1] */
    LLVMValueRef first[KN_JIT_MAX_OPERANDS];   /* in the first dim: lay[1 + nd + k * nd] */
    for (int k = 0; k < nops; k++) {
        LLVMValueRef at = LLVMBuildMul(b, nd, LLVMConstInt(g.i64, (unsigned long long)k + 2, 0), "");
        strides[k] = load_i64(&g, lay, at);
        at = LLVMBuildAdd(b, LLVMBuildMul(b, nd, LLVMConstInt(g.i64, (unsigned long long)k + 1, 0), ""),
                          LLVMConstInt(g.i64, 1, 0), "");
        first[k] = load_i64(&g, lay, at);
    }
    LLVMValueRef one = LLVMConstInt(g.i64, 1, 0), zero = LLVMConstInt(g.i64, 0, 0);
    /* rows [r0, r1); in a pointwise kernel the first row starts at cf and the last ends at ce */
    LLVMValueRef r0 = begin, r1 = end, cf = zero, ce = len, rlast = NULL;
    if (!d->rows) {
        LLVMValueRef safe = LLVMBuildSelect(b, LLVMBuildICmp(b, LLVMIntSGT, len, zero, ""), len, one, "");
        LLVMValueRef e1 = LLVMBuildSub(b, end, one, "");
        r0 = LLVMBuildSDiv(b, begin, safe, "");
        cf = LLVMBuildSRem(b, begin, safe, "");
        rlast = LLVMBuildSDiv(b, e1, safe, "");
        r1 = LLVMBuildAdd(b, rlast, one, "");
        ce = LLVMBuildAdd(b, LLVMBuildSRem(b, e1, safe, ""), one, "");
    }
    LLVMBuildCondBr(b, LLVMBuildICmp(b, LLVMIntSLT, r0, r1, ""), loop, done);

    LLVMPositionBuilderAtEnd(b, loop);
    LLVMValueRef r = LLVMBuildPhi(b, g.i64, "r");
    /* Row r of a domain of one or two dims (the usual case once dims are
     * merged) starts r first-dim strides in; deeper domains ask the helper,
     * a call that would spill the loop's vector registers on every row. */
    LLVMBasicBlockRef deep = LLVMAppendBasicBlockInContext(c, fn, "deep_row"),
                      flat = LLVMAppendBasicBlockInContext(c, fn, "row_ops");
    LLVMBasicBlockRef shallow = LLVMGetInsertBlock(b);
    LLVMValueRef at_flat[KN_JIT_MAX_OPERANDS];
    for (int k = 0; k < nops; k++) at_flat[k] = LLVMBuildNSWMul(b, r, first[k], "");
    LLVMBuildCondBr(b, LLVMBuildICmp(b, LLVMIntSLE, nd, LLVMConstInt(g.i64, 2, 0), ""), flat, deep);
    LLVMPositionBuilderAtEnd(b, deep);
    LLVMValueRef oargs[4] = {lay, LLVMConstInt(g.i32, (unsigned long long)nops, 0), r, off};
    LLVMBuildCall2(b, LLVMGlobalGetValueType(offsets), offsets, oargs, 4, "");
    LLVMValueRef at_deep[KN_JIT_MAX_OPERANDS];
    for (int k = 0; k < nops; k++) at_deep[k] = load_i64(&g, off, LLVMConstInt(g.i64, (unsigned long long)k, 0));
    LLVMBuildBr(b, flat);
    LLVMPositionBuilderAtEnd(b, flat);
    for (int k = 0; k < nops; k++) {  /* phis first, then the pointers */
        LLVMValueRef vals[2] = {at_flat[k], at_deep[k]};
        LLVMBasicBlockRef from[2] = {shallow, deep};
        at_flat[k] = LLVMBuildPhi(b, g.i64, "");
        LLVMAddIncoming(at_flat[k], vals, from, 2);
    }
    for (int k = 0; k < nops; k++) ops[k] = LLVMBuildInBoundsGEP2(b, g.f32, base[k], &at_flat[k], 1, "");
    LLVMValueRef c0 = zero, c1 = len;
    if (!d->rows) {
        c0 = LLVMBuildSelect(b, LLVMBuildICmp(b, LLVMIntEQ, r, r0, ""), cf, zero, "");
        c1 = LLVMBuildSelect(b, LLVMBuildICmp(b, LLVMIntEQ, r, rlast, ""), ce, len, "");
    }
    LLVMValueRef undef = LLVMGetUndef(g.f32);
    for (int p = 0; p < np; p++) accs[p] = undef;
    LLVMBasicBlockRef blk_done = NULL, blk_loop = NULL;
    LLVMValueRef cb = NULL, cn = NULL, row_end = c1;
    if (!d->rows) {
        /* Pointwise rows run in blocks, each prefetching its inputs a few
         * blocks ahead when the kernel computes much per byte: such a loop
         * keeps too few loads in flight for the hardware prefetcher (half
         * its in-cache speed at 16M elements, measured; cheap kernels
         * stream fine and lose 7% to the prefetches). Prefetches never fault. */
        blk_loop = LLVMAppendBasicBlockInContext(c, fn, "block");
        blk_done = LLVMAppendBasicBlockInContext(c, fn, "blocks_done");
        LLVMBasicBlockRef pre = LLVMGetInsertBlock(b);
        LLVMBuildCondBr(b, LLVMBuildICmp(b, LLVMIntSLT, c0, c1, ""), blk_loop, blk_done);
        LLVMPositionBuilderAtEnd(b, blk_loop);
        cb = LLVMBuildPhi(b, g.i64, "cb");
        LLVMValueRef bend = LLVMBuildAdd(b, cb, LLVMConstInt(g.i64, PF_BLOCK, 0), "");
        LLVMValueRef ce_b = LLVMBuildSelect(b, LLVMBuildICmp(b, LLVMIntSLT, bend, c1, ""), bend, c1, "");
        unsigned pf_id = LLVMLookupIntrinsicID("llvm.prefetch", 13);
        LLVMValueRef pf = LLVMGetIntrinsicDeclaration(u->mod, pf_id, &g.ptr, 1);
        LLVMTypeRef pft = LLVMIntrinsicGetType(c, pf_id, &g.ptr, 1);
        for (int k = 0, n = costly(d, -1) ? 0 : PF_MAX_INPUTS; k < d->nin && n < PF_MAX_INPUTS; k++) {
            if (d->inner[k] != KN_INNER_CONTIGUOUS) continue;
            n++;
            for (int q = 0; q < PF_BLOCK; q += PF_STEP) {
                LLVMValueRef at = LLVMBuildAdd(b, cb, LLVMConstInt(g.i64, PF_AHEAD + q, 0), "");
                /* into L2 (locality 2): non-temporal prefetches halved a cheap chain's bandwidth */
                LLVMValueRef pargs[4] = {LLVMBuildGEP2(b, g.f32, ops[k], &at, 1, ""), LLVMConstInt(g.i32, 0, 0),
                                         LLVMConstInt(g.i32, 2, 0), LLVMConstInt(g.i32, 1, 0)};
                LLVMBuildCall2(b, pft, pf, pargs, 4, "");
            }
        }
        LLVMValueRef cv[1] = {c0};
        LLVMBasicBlockRef cbb[1] = {pre};
        LLVMAddIncoming(cb, cv, cbb, 1);
        c0 = cb;
        c1 = ce_b;
        cn = bend;
    }
    for (int p = 0; p < np; p++) {
        const kn_jit_phase *ph = &d->phases[p];
        if (ph->kind == KN_PHASE_ROW_STORE) {
            g.ops = ops;
            g.acc = accs;
            g.len = len;
            g.stride = strides;
            clear_steps(&g);
            LLVMValueRef v = expr(&g, ph->step);
            if (!v) {
                fn = NULL;
                goto out;
            }
            LLVMSetAlignment(LLVMBuildStore(b, v, ops[ph->out]), 4);
            continue;
        }
        LLVMValueRef call[2 * KN_JIT_MAX_OPERANDS + 3 + KN_JIT_MAX_PHASES];
        for (int k = 0; k < nops; k++) call[k] = ops[k];
        call[nops] = c0;
        call[nops + 1] = c1;
        call[nops + 2] = len;
        for (int k = 0; k < np; k++) call[nops + 3 + k] = accs[k];
        for (int k = 0; k < nops; k++) call[nops + 3 + np + k] = strides[k];
        if (!d->rows) {  /* phase 0's loop runs them all */
            if (p == 0)
                accs[p] = LLVMBuildCall2(b, LLVMGlobalGetValueType(phase_fn[p]), phase_fn[p], call,
                                         (unsigned)(2 * nops + 3 + np), "");
            continue;
        }
        /* Rows shorter than a vector take the tail-folded loop; longer rows
         * keep the plain one (folding every iteration slowed softmax on
         * 1024-wide rows by 40%). */
        LLVMBasicBlockRef bs = LLVMAppendBasicBlockInContext(c, fn, "short"),
                          bl = LLVMAppendBasicBlockInContext(c, fn, "long"),
                          join = LLVMAppendBasicBlockInContext(c, fn, "phase_done");
        LLVMBuildCondBr(b, LLVMBuildICmp(b, LLVMIntSLT, len, LLVMConstInt(g.i64, SHORT_ROW, 0), ""), bs, bl);
        LLVMValueRef res[2];
        LLVMBasicBlockRef from[2] = {bs, bl};
        for (int s = 0; s < 2; s++) {
            LLVMPositionBuilderAtEnd(b, from[s]);
            LLVMValueRef f = s ? phase_fn[p] : short_fn[p];
            res[s] = LLVMBuildCall2(b, LLVMGlobalGetValueType(f), f, call, (unsigned)(2 * nops + 3 + np), "");
            LLVMBuildBr(b, join);
        }
        LLVMPositionBuilderAtEnd(b, join);
        accs[p] = LLVMBuildPhi(b, g.f32, "");
        LLVMAddIncoming(accs[p], res, from, 2);
    }
    if (!d->rows) {
        LLVMBasicBlockRef btail = LLVMGetInsertBlock(b);
        LLVMAddIncoming(cb, &cn, &btail, 1);
        LLVMBuildCondBr(b, LLVMBuildICmp(b, LLVMIntSLT, cn, row_end, ""), blk_loop, blk_done);
        LLVMPositionBuilderAtEnd(b, blk_done);
    }
    LLVMValueRef rn = LLVMBuildNSWAdd(b, r, one, "");
    LLVMBasicBlockRef tail = LLVMGetInsertBlock(b);
    LLVMBuildCondBr(b, LLVMBuildICmp(b, LLVMIntSLT, rn, r1, ""), loop, done);
    LLVMValueRef rv[2] = {r0, rn};
    LLVMBasicBlockRef rb[2] = {entry, tail};
    LLVMAddIncoming(r, rv, rb, 2);
    LLVMPositionBuilderAtEnd(b, done);
    LLVMBuildRet(b, LLVMConstInt(g.i32, 0, 0));
out:
    free(g.v);
    LLVMDisposeBuilder(g.b);
    return fn;
}

/* From the disk cache if there, else built and compiled (and stored). */
static kn_jit_kernel compile(const kn_jit_desc *d, const uint32_t *w, size_t nw) {
    void *code = kn__jit_load(w, nw);
    if (!code) {
        kn_jit_unit u;
        if (!kn__jit_unit_new(&u)) return NULL;
        LLVMValueRef fn = build(&u, d);
        if (!fn) {
            kn__jit_unit_dispose(&u);
            return NULL;
        }
        code = kn__jit_compile(&u, fn, w, nw);
    }
    kn_jit_kernel k;
    memcpy(&k, &code, sizeof k); /* object pointer to function pointer */
    return k;
}

kn_jit_kernel kn__jit_kernel(const kn_jit_desc *d) {
    if (!check(d)) return NULL;
    size_t nw;
    uint32_t *w = normalize(d, &nw);
    if (!w) return kn__error("jit: out of memory");
    uint64_t h = fnv1a(w, nw);
    pthread_mutex_lock(&cache_lock);
    kn_jit_kernel fn = NULL;
    entry **bucket = &buckets[h % NBUCKETS];
    for (entry *e = *bucket; e && !fn; e = e->next)
        if (e->hash == h && e->nwords == nw && !memcmp(e->words, w, nw * sizeof *w)) fn = e->fn;
    if (!fn && (fn = compile(d, w, nw))) {
        entry *e = malloc(sizeof *e);
        if (e) {
            *e = (entry){*bucket, h, nw, w, fn};
            *bucket = e;
            w = NULL; /* kept by the entry */
        }
    }
    pthread_mutex_unlock(&cache_lock);
    free(w);
    return fn;
}
