/* The process-wide LLJIT: one instance, made on first use, for the host CPU
 * with all its features. Each compile gets a module cloned from the scalar
 * bitcode (parsed once per process), runs O3 (the formulas inline and the
 * loops vectorize), emits an object file, stores it in the disk cache and
 * adds it to the JIT; a later process loads that object instead of compiling. No fast-math flags are ever
 * set and the bitcode was built with -ffp-contract=off, so LLVM neither
 * contracts nor reassociates: results are bitwise those of the eager loops. */
#include "llvm.h"
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <llvm-c/Support.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* The bitcode of jit/scalar_bitcode.c, generated at build time by jit/embed.c. */
extern const unsigned char kn__scalar_bc[];
extern const size_t kn__scalar_bc_len;

static pthread_once_t once = PTHREAD_ONCE_INIT;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER; /* compiles, stats */
static LLVMOrcLLJITRef jit;
static LLVMTargetMachineRef pass_tm; /* the cost models of the pass pipeline */
static LLVMTargetMachineRef emit_tm; /* code generation, configured like the JIT's */
static char *host_triple, *host_cpu, *host_features;
static const char *host_layout;       /* owned by jit */
static char init_error[512];
static char *last_ir;
static uint64_t compiles, serial; /* serial: fallback symbol names */
static uint64_t disk_hits, disk_writes;
static void disk_init(void);

/* LLVM reports some errors (bitcode, linking) through the context's
 * diagnostic handler, whose default exits the process on an error. */
static _Thread_local char diag[512];

static void on_diag(LLVMDiagnosticInfoRef info, void *unused) {
    (void)unused;
    if (LLVMGetDiagInfoSeverity(info) != LLVMDSError) return; /* warnings: ignored */
    char *s = LLVMGetDiagInfoDescription(info);
    snprintf(diag, sizeof diag, "%s", s);
    LLVMDisposeMessage(s);
}

/* Takes and frees e's message into buf. */
static const char *error_text(LLVMErrorRef e, char *buf, size_t n) {
    char *s = LLVMGetErrorMessage(e);
    snprintf(buf, n, "%s", s);
    LLVMDisposeErrorMessage(s);
    return buf;
}

static void init(void) {
    /* No vectorized epilogue loop (and, below, no unrolling): each copy of a
     * loop holds every inlined formula again, and code generation time grows
     * with them (a 7-op chain compiled in 35 ms, now 25 ms; kernels ran as fast).
     * No loop strength reduction in code generation: a tenth of a compile
     * (2 ms) on our loop nests, and kernels ran as fast without it. */
    const char *argv[] = {"kiln", "-enable-epilogue-vectorization=false", "-disable-lsr"};
    LLVMParseCommandLineOptions(3, argv, NULL);
    LLVMInitializeNativeTarget();
    LLVMInitializeNativeAsmPrinter();
    host_triple = LLVMGetDefaultTargetTriple();
    host_cpu = LLVMGetHostCPUName();
    host_features = LLVMGetHostCPUFeatures();
    LLVMTargetRef target;
    char *msg = NULL;
    if (LLVMGetTargetFromTriple(host_triple, &target, &msg)) {
        snprintf(init_error, sizeof init_error, "%s", msg);
        LLVMDisposeMessage(msg);
        return;
    }
    /* PIC and the small code model are what LLJIT's object linker expects of
     * the objects we emit ourselves (and reload from disk). */
    LLVMTargetMachineRef tm[3];
    for (int i = 0; i < 3; i++)
        tm[i] = LLVMCreateTargetMachine(target, host_triple, host_cpu, host_features,
                                        LLVMCodeGenLevelAggressive, LLVMRelocPIC,
                                        LLVMCodeModelSmall);
    pass_tm = tm[0];
    emit_tm = tm[2];
    LLVMOrcLLJITBuilderRef b = LLVMOrcCreateLLJITBuilder();
    LLVMOrcLLJITBuilderSetJITTargetMachineBuilder(
        b, LLVMOrcJITTargetMachineBuilderCreateFromTargetMachine(tm[1]));
    LLVMErrorRef e = LLVMOrcCreateLLJIT(&jit, b);
    if (e) {
        error_text(e, init_error, sizeof init_error);
        jit = NULL;
        return;
    }
    host_layout = LLVMOrcLLJITGetDataLayoutStr(jit);
    /* Kernels (and objects from the disk cache) call the host's row offset
     * helper by name; this process's address is defined here. */
    LLVMOrcCSymbolMapPair off = {
        LLVMOrcLLJITMangleAndIntern(jit, "kn_jit_offsets"),
        {(LLVMOrcExecutorAddress)(uintptr_t)&kn__jit_offsets,
         {LLVMJITSymbolGenericFlagsExported | LLVMJITSymbolGenericFlagsCallable, 0}}};
    if ((e = LLVMOrcJITDylibDefine(LLVMOrcLLJITGetMainJITDylib(jit), LLVMOrcAbsoluteSymbols(&off, 1)))) {
        error_text(e, init_error, sizeof init_error);
        LLVMOrcDisposeLLJIT(jit);
        jit = NULL;
        return;
    }
    disk_init();
}

static void set_fn_attr(LLVMContextRef ctx, LLVMValueRef f, const char *kind, bool on) {
    unsigned k = LLVMGetEnumAttributeKindForName(kind, strlen(kind));
    if (on)
        LLVMAddAttributeAtIndex(f, LLVMAttributeFunctionIndex, LLVMCreateEnumAttribute(ctx, k, 0));
    else
        LLVMRemoveEnumAttributeAtIndex(f, LLVMAttributeFunctionIndex, k);
}

/* The formulas are parsed once into a template that each unit clones (a
 * parse and link per unit cost 1 ms). Units share the template's context,
 * so one unit exists at a time: unit_lock is held from kn__jit_unit_new
 * until the unit is compiled or disposed. The constants and metadata of
 * old kernels stay in a context, so it is replaced every CTX_UNITS units. */
#define CTX_UNITS 256
static pthread_mutex_t unit_lock = PTHREAD_MUTEX_INITIALIZER;
static LLVMContextRef shared_ctx;
static LLVMModuleRef formulas;
static unsigned ctx_units;

static void drop_formulas(void) {
    if (formulas) LLVMDisposeModule(formulas);
    if (shared_ctx) LLVMContextDispose(shared_ctx);
    formulas = NULL;
    shared_ctx = NULL;
}

static bool load_formulas(void) {
    drop_formulas();
    ctx_units = 0;
    shared_ctx = LLVMContextCreate();
    LLVMContextSetDiagnosticHandler(shared_ctx, on_diag, NULL);
    LLVMMemoryBufferRef buf = LLVMCreateMemoryBufferWithMemoryRange(
        (const char *)kn__scalar_bc, kn__scalar_bc_len, "kn_scalar.bc", 0);
    diag[0] = 0;
    bool bad = LLVMParseBitcodeInContext2(shared_ctx, buf, &formulas);
    LLVMDisposeMemoryBuffer(buf);
    if (bad) {
        kn__error("jit: cannot load the scalar formulas: %s", diag[0] ? diag : "unknown error");
        formulas = NULL;
        drop_formulas();
        return false;
    }
    LLVMContextRef c = shared_ctx;
    LLVMModuleRef m = formulas;
    LLVMSetModuleIdentifier(m, "kn_jit", 6);
    LLVMSetSourceFileName(m, "kn_jit", 6);
    LLVMSetTarget(m, host_triple);
    LLVMSetDataLayout(m, host_layout);
    /* Private to the module and inlined into the kernels; O3 drops them after. */
    for (LLVMValueRef f = LLVMGetFirstFunction(m); f; f = LLVMGetNextFunction(f)) {
        if (LLVMIsDeclaration(f)) continue;
        LLVMSetLinkage(f, LLVMInternalLinkage);
        set_fn_attr(c, f, "noinline", false);
        set_fn_attr(c, f, "optnone", false);
        set_fn_attr(c, f, "alwaysinline", true);
    }
    return true;
}

bool kn__jit_unit_new(kn_jit_unit *u) {
    pthread_once(&once, init);
    if (!jit) {
        kn__error("jit: LLVM could not start: %s", init_error);
        return false;
    }
    pthread_mutex_lock(&unit_lock);
    if ((!formulas || ctx_units >= CTX_UNITS) && !load_formulas()) {
        pthread_mutex_unlock(&unit_lock);
        return false;
    }
    ctx_units++;
    u->ctx = shared_ctx;
    u->mod = LLVMCloneModule(formulas);
    return true;
}

void kn__jit_unit_dispose(kn_jit_unit *u) {
    if (!u->ctx) return;
    LLVMDisposeModule(u->mod);
    pthread_mutex_unlock(&unit_lock);
    *u = (kn_jit_unit){0};
}

/* Every function is code-generated for this CPU; this also replaces the
 * -march=native strings clang put on the formulas, which could otherwise
 * differ from LLVM's host feature list and block inlining. */
static void target_host(LLVMModuleRef m) {
    static const char *const keys[] = {"target-cpu", "target-features", "tune-cpu"};
    for (LLVMValueRef f = LLVMGetFirstFunction(m); f; f = LLVMGetNextFunction(f)) {
        if (LLVMIsDeclaration(f)) continue;
        for (int i = 0; i < 3; i++)
            LLVMRemoveStringAttributeAtIndex(f, LLVMAttributeFunctionIndex, keys[i],
                                             (unsigned)strlen(keys[i]));
        LLVMAddTargetDependentFunctionAttr(f, "target-cpu", host_cpu);
        LLVMAddTargetDependentFunctionAttr(f, "target-features", host_features);
        LLVMAddTargetDependentFunctionAttr(f, "prefer-vector-width", "512");
    }
}

/* ---- the disk cache: one file of object code per kernel ----
 * <dir>/<32 hex digits of the key hash>.kn holds a header, the full key and
 * the object. The key is the caller's words behind a prefix naming the file
 * format, the Kiln build, the LLVM version, the target and the host CPU, so
 * another build, CPU or LLVM never reuses an entry. Files are written to a temporary name and
 * renamed into place: readers and concurrent writers never see half a file.
 * Upkeep happens when a process opens the cache: temporary files a dead
 * writer left behind go, and so do the least recently used entries (a load
 * touches an entry's mtime) while the entries exceed the size cap. Entries
 * of other builds are never read again, so this is also what removes them. */
#define KN_CACHE_FORMAT 1u
#define KN_CACHE_MAX_FILE (64u << 20) /* larger files are corrupt */
#define KN_CACHE_TMP_AGE 3600         /* seconds: a live writer renames within far less */
#define KN_CACHE_DEFAULT_MB 256.0

typedef struct {
    char magic[8];
    uint32_t format, key_len;
    uint64_t obj_len, obj_sum;
} file_header;

static const char file_magic[8] = {'K', 'I', 'L', 'N', 'O', 'B', 'J', 0};
static char *cache_dir;  /* NULL: no disk cache */
static bool cache_readonly; /* entries are loaded, nothing is written, touched or removed */
static char *key_prefix; /* the part of every key that names the host */
static size_t key_prefix_len;
static uint64_t tmp_serial;
static uint64_t burned[2]; /* a key whose disk object failed to link */

static uint64_t fnv1a64(const unsigned char *p, size_t n) {
    uint64_t h = 0xcbf29ce484222325u;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3u;
    return h;
}

static uint64_t fmix64(uint64_t z) {
    z = (z ^ (z >> 33)) * 0xff51afd7ed558ccdu;
    z = (z ^ (z >> 33)) * 0xc4ceb9fe1a85ec53u;
    return z ^ (z >> 33);
}

/* A second hash unrelated to FNV (8-byte blocks, multiply-rotate, final
 * avalanche); also the checksum of objects. */
static uint64_t mix64(const unsigned char *p, size_t n, uint64_t seed) {
    uint64_t h = seed ^ (n * 0x9e3779b97f4a7c15u);
    for (size_t i = 0; i < n; i += 8) {
        uint64_t b = 0;
        memcpy(&b, p + i, n - i < 8 ? n - i : 8);
        h ^= fmix64(b + 0x2545f4914f6cdd1du);
        h = ((h << 31) | (h >> 33)) * 0x87c37b91114253d5u + 0x52dce729u;
    }
    return fmix64(h);
}

static uint64_t checksum(const void *p, size_t n) { return mix64(p, n, 0x6a09e667f3bcc908u); }

/* mkdir -p, new directories private to the user. */
static int make_dirs(const char *dir) {
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s", dir);
    for (char *s = p + 1;; s++) {
        if (*s != '/' && *s) continue;
        char c = *s;
        *s = 0;
        if (mkdir(p, 0700) && errno != EEXIST) return errno;
        if (!(*s = c)) return 0;
    }
}

/* Why dir cannot hold the cache (made if missing), or NULL if it can. */
static const char *dir_problem(const char *dir, char *buf, size_t n) {
    int err = make_dirs(dir);
    struct stat st;
    if (err || stat(dir, &st)) snprintf(buf, n, "cannot create it: %s", strerror(err ? err : errno));
    else if (!S_ISDIR(st.st_mode)) snprintf(buf, n, "not a directory");
    else if (st.st_uid != geteuid())
        snprintf(buf, n, "owned by uid %u, not by the current user", (unsigned)st.st_uid);
    else if (st.st_mode & (S_IWGRP | S_IWOTH))
        snprintf(buf, n, "writable by group or others (mode %03o)", (unsigned)(st.st_mode & 0777));
    else return NULL;
    return buf;
}

/* The size cap in bytes: KN_CACHE_MAX_MB (MiB, fractions allowed), else 256 MiB. */
static double cache_cap(void) {
    const char *s = getenv("KN_CACHE_MAX_MB");
    if (!s || !*s) return KN_CACHE_DEFAULT_MB * 1048576.0;
    char *end;
    double mb = strtod(s, &end);
    if (*end || !(mb > 0) || mb > 1e9) {
        fprintf(stderr, "kiln: ignoring KN_CACHE_MAX_MB=%s (not a positive number of MiB)\n", s);
        mb = KN_CACHE_DEFAULT_MB;
    }
    return mb * 1048576.0;
}

typedef struct {
    char name[48]; /* "<32 hex>.kn"; longer names are not ours */
    off_t size;
    struct timespec used; /* mtime: written or last loaded */
} cache_entry;

static int older_first(const void *pa, const void *pb) {
    const cache_entry *a = pa, *b = pb;
    if (a->used.tv_sec != b->used.tv_sec) return a->used.tv_sec < b->used.tv_sec ? -1 : 1;
    if (a->used.tv_nsec != b->used.tv_nsec) return a->used.tv_nsec < b->used.tv_nsec ? -1 : 1;
    return strcmp(a->name, b->name);
}

/* Scanning costs a stat per file (about 50 ms for 20000 entries), too much
 * for every process start, and only a write can take the cache over the
 * cap. So a scan is skipped while the directory is unchanged since the last
 * one: the stamp file ".upkeep" gets the time the last scan began, and any
 * file added (a rename, a temporary file) moves the directory's mtime past
 * it. The stamp names the cap it was made for, so a lower cap scans again. */
static const char stamp_name[] = ".upkeep";

static bool upkeep_due(int dfd, double cap) {
    char want[64], got[64] = "";
    snprintf(want, sizeof want, "cap %.0f\n", cap);
    int fd = openat(dfd, stamp_name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) return true;
    ssize_t n = read(fd, got, sizeof got - 1);
    struct stat dir, st;
    bool unchanged = n > 0 && !fstat(fd, &st) && !fstat(dfd, &dir) &&
                     (dir.st_mtim.tv_sec < st.st_mtim.tv_sec ||
                      (dir.st_mtim.tv_sec == st.st_mtim.tv_sec && dir.st_mtim.tv_nsec < st.st_mtim.tv_nsec));
    close(fd);
    return !unchanged || strcmp(got, want);
}

static void upkeep_stamp(int dfd, double cap, struct timespec began) {
    char text[64];
    int len = snprintf(text, sizeof text, "cap %.0f\n", cap);
    int fd = openat(dfd, stamp_name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) return;
    if (write(fd, text, (size_t)len) == len) futimens(fd, (struct timespec[2]){began, began});
    close(fd);
}

/* Removes temporary files older than an hour, then, if the entries exceed
 * the cap, the least recently used ones until they fit in 80% of it (so
 * that the next few processes do not each evict again). Best effort: a file
 * another process removed first is simply skipped. */
static void disk_upkeep(void) {
    DIR *d = opendir(cache_dir);
    if (!d) return;
    int dfd = dirfd(d);
    double limit = cache_cap();
    if (!upkeep_due(dfd, limit)) {
        closedir(d);
        return;
    }
    /* File times come from the kernel's coarse clock, so a file added during
     * the scan gets a time >= began; 10 ms spare that for clock skew. */
    struct timespec began;
    clock_gettime(CLOCK_REALTIME_COARSE, &began);
    began.tv_nsec -= 10000000;
    if (began.tv_nsec < 0) {
        began.tv_nsec += 1000000000;
        began.tv_sec--;
    }
    time_t now = began.tv_sec;
    cache_entry *e = NULL;
    size_t n = 0, room = 0;
    double total = 0;
    bool complete = true;
    for (struct dirent *de; (de = readdir(d));) {
        const char *name = de->d_name;
        size_t len = strlen(name);
        bool tmp = !strncmp(name, ".tmp-", 5);
        bool entry = len > 3 && len < sizeof e->name && !strcmp(name + len - 3, ".kn");
        struct stat st;
        if ((!tmp && !entry) || fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) || !S_ISREG(st.st_mode))
            continue;
        if (tmp) {
            if (now - st.st_mtime > KN_CACHE_TMP_AGE) unlinkat(dfd, name, 0);
            continue;
        }
        if (n == room) {
            cache_entry *g = realloc(e, (room = room ? 2 * room : 256) * sizeof *e);
            if (!(complete = g != NULL)) break;
            e = g;
        }
        memcpy(e[n].name, name, len + 1);
        e[n].size = st.st_size;
        e[n].used = st.st_mtim;
        total += (double)st.st_size;
        n++;
    }
    if (total > limit && n) {
        qsort(e, n, sizeof *e, older_first);
        for (size_t i = 0; i < n && total > 0.8 * limit; i++)
            if (!unlinkat(dfd, e[i].name, 0) || errno == ENOENT) total -= (double)e[i].size;
    }
    free(e);
    if (complete) upkeep_stamp(dfd, limit, began);
    closedir(d);
}

/* Called once from init. KN_CACHE=0 turns the disk cache off; KN_CACHE_DIR
 * names its directory, else $XDG_CACHE_HOME/kiln or ~/.cache/kiln. */
static void disk_init(void) {
    /* Words mean different code in another Kiln build (op numbering, the
     * formulas, code generation): the key names the build by its binary's
     * size and time, and the formulas and op names by their hashes. */
    Dl_info dl;
    struct stat bin = {0};
    if (dladdr((void *)&kn__jit_load, &dl) && dl.dli_fname) stat(dl.dli_fname, &bin);
    uint64_t ops = 0;
    for (int i = 0; i < KN_OP_COUNT; i++)
        ops = mix64((const unsigned char *)kn_op_table[i].name, strlen(kn_op_table[i].name), ops);
    char prefix[4096];
    int len = snprintf(prefix, sizeof prefix,
                       "kiln kernel cache %u\nbuild %lld %lld.%09ld\nformulas %016llx\n"
                       "ops %016llx\nllvm %s\n%s\n%s\n%s\n",
                       KN_CACHE_FORMAT, (long long)bin.st_size, (long long)bin.st_mtim.tv_sec,
                       (long)bin.st_mtim.tv_nsec,
                       (unsigned long long)checksum(kn__scalar_bc, kn__scalar_bc_len),
                       (unsigned long long)ops, LLVM_VERSION_STRING, host_triple, host_cpu,
                       host_features);
    if (len <= 0 || (size_t)len >= sizeof prefix || !(key_prefix = malloc((size_t)len))) return;
    memcpy(key_prefix, prefix, (size_t)len);
    key_prefix_len = (size_t)len;
    const char *off = getenv("KN_CACHE");
    if (off && !strcmp(off, "0")) return;
    const char *d = getenv("KN_CACHE_DIR"), *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    char dir[PATH_MAX], why[PATH_MAX + 64];
    int n;
    if (d && *d) n = snprintf(dir, sizeof dir, "%s", d);
    else if (xdg && *xdg == '/') n = snprintf(dir, sizeof dir, "%s/kiln", xdg);
    else if (home && *home) n = snprintf(dir, sizeof dir, "%s/.cache/kiln", home);
    else return;
    const char *bad = n < 0 || (size_t)n + 40 >= sizeof dir ? "the path is too long"
                                                             : dir_problem(dir, why, sizeof why);
    if (bad) {
        fprintf(stderr, "kiln: not using the kernel cache at %s: %s\n", dir, bad);
        return;
    }
    cache_dir = strdup(dir);
    /* A directory without write permission (a shared, prebuilt cache, say)
     * is used for loading only. The mode bit counts even for root. */
    struct stat st;
    cache_readonly = cache_dir && (stat(dir, &st) || !(st.st_mode & S_IWUSR) || access(dir, W_OK | X_OK));
    if (cache_readonly)
        fprintf(stderr, "kiln: the kernel cache at %s is read-only: kernels are loaded from it, none written\n",
                dir);
    else if (cache_dir)
        disk_upkeep();
}

/* What a kernel's words map to: its full key, hash, symbol and file. */
typedef struct {
    unsigned char *key;
    size_t len;
    uint64_t h[2];
    char sym[40];
    char path[PATH_MAX];
} kernel_id;

static bool kernel_id_make(kernel_id *id, const uint32_t *words, size_t nwords) {
    id->len = key_prefix_len + nwords * sizeof *words;
    id->key = malloc(id->len ? id->len : 1);
    if (!id->key) return false;
    if (key_prefix_len) memcpy(id->key, key_prefix, key_prefix_len);
    memcpy(id->key + key_prefix_len, words, nwords * sizeof *words);
    id->h[0] = fnv1a64(id->key, id->len);
    id->h[1] = mix64(id->key, id->len, 0x3c6ef372fe94f82bu);
    char hex[33];
    snprintf(hex, sizeof hex, "%016llx%016llx", (unsigned long long)id->h[0],
             (unsigned long long)id->h[1]);
    snprintf(id->sym, sizeof id->sym, "kn_k_%s", hex); /* one kernel, one name */
    id->path[0] = 0;
    if (cache_dir) snprintf(id->path, sizeof id->path, "%s/%s.kn", cache_dir, hex);
    return true;
}

static bool read_all(int fd, void *p, size_t n) {
    for (size_t got = 0; got < n;) {
        ssize_t r = read(fd, (char *)p + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return false;
        got += (size_t)r;
    }
    return true;
}

static bool write_all(int fd, const void *p, size_t n) {
    for (size_t done = 0; done < n;) {
        ssize_t r = write(fd, (const char *)p + done, n - done);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return false;
        done += (size_t)r;
    }
    return true;
}

/* The object of id's entry after checking all of it, or NULL. A damaged
 * entry is removed, so it is compiled and written again. A good one gets
 * its mtime set to now: the eviction order is that of last use. */
static LLVMMemoryBufferRef disk_read(const kernel_id *id) {
    int fd = open(id->path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) return NULL;
    struct stat st;
    unsigned char *buf = NULL;
    size_t size = 0;
    bool ok = !fstat(fd, &st) && S_ISREG(st.st_mode) && st.st_size >= (off_t)sizeof(file_header) &&
              st.st_size <= (off_t)KN_CACHE_MAX_FILE;
    if (ok) {
        size = (size_t)st.st_size;
        ok = (buf = malloc(size)) && read_all(fd, buf, size);
    }
    file_header h;
    if (ok) {
        memcpy(&h, buf, sizeof h);
        ok = !memcmp(h.magic, file_magic, sizeof h.magic) && h.format == KN_CACHE_FORMAT &&
             h.key_len == id->len && h.obj_len <= size &&
             sizeof h + id->len + h.obj_len == size && !memcmp(buf + sizeof h, id->key, id->len) &&
             checksum(buf + sizeof h + id->len, (size_t)h.obj_len) == h.obj_sum;
    }
    if (ok && !cache_readonly) futimens(fd, NULL);
    close(fd);
    LLVMMemoryBufferRef obj = NULL;
    if (ok) obj = LLVMCreateMemoryBufferWithMemoryRangeCopy((const char *)buf + sizeof h + id->len,
                                                            (size_t)h.obj_len, id->sym);
    else if (!cache_readonly) unlink(id->path);
    free(buf);
    return obj;
}

static uint64_t random64(void) {
    uint64_t r;
    if (getrandom(&r, sizeof r, GRND_NONBLOCK) == (ssize_t)sizeof r) return r;
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return fmix64((uint64_t)t.tv_nsec ^ ((uint64_t)t.tv_sec << 32) ^ (uintptr_t)&r);
}

/* Best effort: a failed write only costs a compile next time. No fsync
 * (it took 5 ms, a quarter of a compile): an entry a crash leaves torn fails
 * its checksum on load and is compiled again. */
static void disk_write(const kernel_id *id, const void *obj, size_t len) {
    if (cache_readonly) return;
    char tmp[PATH_MAX + 64];
    snprintf(tmp, sizeof tmp, "%s/.tmp-%ld-%llu-%016llx", cache_dir, (long)getpid(),
             (unsigned long long)++tmp_serial, (unsigned long long)random64());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) return;
    file_header h = {.format = KN_CACHE_FORMAT, .key_len = (uint32_t)id->len,
                     .obj_len = len, .obj_sum = checksum(obj, len)};
    memcpy(h.magic, file_magic, sizeof h.magic);
    bool ok = write_all(fd, &h, sizeof h) && write_all(fd, id->key, id->len) &&
              write_all(fd, obj, len);
    ok = !close(fd) && ok;
    if (ok && !rename(tmp, id->path)) disk_writes++;
    else unlink(tmp);
}

/* Adds an object (consumed) to the JIT and returns the address of sym. */
static LLVMErrorRef add_object(LLVMMemoryBufferRef obj, const char *sym, void **code) {
    LLVMOrcExecutorAddress addr = 0;
    LLVMErrorRef e = LLVMOrcLLJITAddObjectFile(jit, LLVMOrcLLJITGetMainJITDylib(jit), obj);
    if (!e) e = LLVMOrcLLJITLookup(jit, &addr, sym);
    *code = e ? NULL : (void *)(uintptr_t)addr;
    return e;
}

void *kn__jit_load(const uint32_t *words, size_t nwords) {
    pthread_once(&once, init);
    if (!jit || !cache_dir) return NULL;
    pthread_mutex_lock(&lock);
    void *code = NULL;
    kernel_id id;
    if (kernel_id_make(&id, words, nwords)) {
        LLVMMemoryBufferRef obj = disk_read(&id);
        LLVMErrorRef e = obj ? add_object(obj, id.sym, &code) : NULL;
        if (e) { /* valid but unlinkable: drop it, and compile under another name */
            LLVMConsumeError(e);
            if (!cache_readonly) unlink(id.path);
            memcpy(burned, id.h, sizeof burned);
        } else if (code) {
            disk_hits++;
        }
        free(id.key);
    }
    pthread_mutex_unlock(&lock);
    return code;
}

static void *fail(kn_jit_unit *u, const char *what, LLVMErrorRef e) {
    char buf[512];
    kn__error("jit: %s: %s", what, error_text(e, buf, sizeof buf));
    kn__jit_unit_dispose(u);
    return NULL;
}

/* Deletes every function nothing calls but the kernel: the linked formulas
 * (f32 and f64, ~60 functions) would otherwise all go through O3 and
 * code generation, which doubled a compile. */
static void drop_unused(LLVMModuleRef m, LLVMValueRef keep) {
    for (bool again = true; again;) {
        again = false;
        for (LLVMValueRef f = LLVMGetFirstFunction(m), next; f; f = next) {
            next = LLVMGetNextFunction(f);
            if (f != keep && !LLVMGetFirstUse(f)) {
                LLVMDeleteFunction(f);
                again = true;
            }
        }
    }
}

static atomic_bool keep_ir;
void kn__jit_keep_ir(bool on) { atomic_store(&keep_ir, on); }

void *kn__jit_compile(kn_jit_unit *u, LLVMValueRef fn, const uint32_t *words, size_t nwords) {
    pthread_mutex_lock(&lock);
    void *code = NULL;
    kernel_id id;
    if (!kernel_id_make(&id, words, nwords)) {
        kn__error("jit: out of memory");
        kn__jit_unit_dispose(u);
        pthread_mutex_unlock(&lock);
        return NULL;
    }
    bool burnt = !memcmp(burned, id.h, sizeof burned);
    if (burnt) /* the failed disk object may have claimed the name */
        snprintf(id.sym, sizeof id.sym, "kn_kernel_%llu", (unsigned long long)serial++);
    LLVMSetValueName2(fn, id.sym, strlen(id.sym));
    LLVMSetLinkage(fn, LLVMExternalLinkage);
    drop_unused(u->mod, fn);
    target_host(u->mod);

    char *msg = NULL;
    if (LLVMVerifyModule(u->mod, LLVMReturnStatusAction, &msg)) {
        kn__error("jit: the generated IR is invalid: %s", msg ? msg : "");
        LLVMDisposeMessage(msg);
        kn__jit_unit_dispose(u);
        goto out;
    }
    LLVMDisposeMessage(msg);

    LLVMPassBuilderOptionsRef opts = LLVMCreatePassBuilderOptions();
    LLVMPassBuilderOptionsSetLoopVectorization(opts, 1);
    LLVMPassBuilderOptionsSetSLPVectorization(opts, 1);
    LLVMPassBuilderOptionsSetLoopInterleaving(opts, 1);
    LLVMPassBuilderOptionsSetLoopUnrolling(opts, 0);
    LLVMErrorRef e = LLVMRunPasses(u->mod, KN_LLVM_PIPELINE, pass_tm, opts);
    LLVMDisposePassBuilderOptions(opts);
    if (e) {
        fail(u, "optimizing", e);
        goto out;
    }
    if (atomic_load(&keep_ir)) {
        char *ir = LLVMPrintModuleToString(u->mod);
        free(last_ir);
        last_ir = strdup(ir);
        LLVMDisposeMessage(ir);
    }

    /* Object code first, so the very bytes that run are the ones cached. */
    LLVMMemoryBufferRef obj = NULL;
    msg = NULL;
    bool bad = LLVMTargetMachineEmitToMemoryBuffer(emit_tm, u->mod, LLVMObjectFile, &msg, &obj);
    kn__jit_unit_dispose(u);
    if (bad) {
        kn__error("jit: code generation: %s", msg ? msg : "unknown error");
        LLVMDisposeMessage(msg);
        goto out;
    }
    if (cache_dir && !burnt)
        disk_write(&id, LLVMGetBufferStart(obj), LLVMGetBufferSize(obj));
    e = add_object(obj, id.sym, &code);
    if (e) {
        fail(u, "compiling", e);
        goto out;
    }
    compiles++;
out:
    free(id.key);
    pthread_mutex_unlock(&lock);
    return code;
}

char *kn__jit_last_ir(void) {
    pthread_mutex_lock(&lock);
    char *s = last_ir ? strdup(last_ir) : NULL;
    pthread_mutex_unlock(&lock);
    return s;
}

static uint64_t read_counter(const uint64_t *c) {
    pthread_mutex_lock(&lock);
    uint64_t n = *c;
    pthread_mutex_unlock(&lock);
    return n;
}

uint64_t kn__jit_compile_count(void) { return read_counter(&compiles); }
uint64_t kn__jit_disk_hits(void) { return read_counter(&disk_hits); }
uint64_t kn__jit_disk_writes(void) { return read_counter(&disk_writes); }
