/* dtype facts and PyTorch-style type promotion. */
#include "internal.h"

static const struct { const char *name; size_t size; } info[KN_DTYPE_COUNT] = {
    [KN_F32] = {"f32", 4}, [KN_F64] = {"f64", 8}, [KN_I32] = {"i32", 4},
    [KN_I64] = {"i64", 8}, [KN_BOOL] = {"bool", 1},
};

const char *kn_dtype_name(kn_dtype dt) {
    return (unsigned)dt < KN_DTYPE_COUNT ? info[dt].name : "invalid";
}

size_t kn_dtype_size(kn_dtype dt) {
    return (unsigned)dt < KN_DTYPE_COUNT ? info[dt].size : 0;
}

static int category(kn_dtype d) { return d == KN_BOOL ? 0 : kn__is_int(d) ? 1 : 2; }

/* Wider of two dtypes of one category. */
static kn_dtype wider(kn_dtype a, kn_dtype b) { return kn_dtype_size(a) >= kn_dtype_size(b) ? a : b; }

/* PyTorch's rule: dimensioned tensors decide within the top category; 0-dim
 * tensors only when they raise the category; C numbers (wrapped) last, and a
 * wrapped float over integers gives the default f32. */
kn_dtype kn__promote(kn_tensor *const *ts, int n) {
    int cat[3] = {-1, -1, -1};  /* best category seen per priority */
    kn_dtype dt[3] = {KN_BOOL, KN_BOOL, KN_BOOL};
    for (int i = 0; i < n; i++) {
        int pr = ts[i]->wrapped ? 2 : ts[i]->ndim == 0 ? 1 : 0;
        int c = category(ts[i]->dtype);
        if (c > cat[pr]) { cat[pr] = c; dt[pr] = ts[i]->dtype; }
        else if (c == cat[pr]) dt[pr] = wider(dt[pr], ts[i]->dtype);
    }
    kn_dtype r = dt[0];
    int rc = cat[0];
    if (cat[1] > rc) { r = dt[1]; rc = cat[1]; }
    if (cat[2] > rc) r = cat[2] == 2 ? KN_F32 : cat[2] == 1 ? KN_I64 : KN_BOOL;
    return r;
}

double kn__load(const void *p, kn_dtype dt) {
    switch (dt) {
    case KN_F32: return *(const float *)p;
    case KN_F64: return *(const double *)p;
    case KN_I32: return *(const int32_t *)p;
    case KN_I64: return (double)*(const int64_t *)p;
    case KN_BOOL: return *(const uint8_t *)p != 0;
    default: return 0;
    }
}

void kn__store(void *p, kn_dtype dt, double v) {
    switch (dt) {
    case KN_F32: *(float *)p = (float)v; break;
    case KN_F64: *(double *)p = v; break;
    case KN_I32: *(int32_t *)p = (int32_t)v; break;
    case KN_I64: *(int64_t *)p = (int64_t)v; break;
    case KN_BOOL: *(uint8_t *)p = v != 0; break;
    default: break;
    }
}
