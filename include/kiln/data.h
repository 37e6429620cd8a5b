/* Kiln data loading: IDX files (MNIST, Fashion-MNIST), normalization and a
 * shuffling mini-batch loader. Included by kiln.h; ownership and errors follow
 * its top paragraph: returned tensors are new references (pool-owned inside a
 * pool), and failures return NULL / -1 / false with kn_last_error() set.
 */
#ifndef KILN_DATA_H
#define KILN_DATA_H

#include "../kiln.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Reads an IDX file, plain or gzip-compressed (told apart by the gzip magic),
 * into a new contiguous tensor of dtype dt whose shape is the file's dims.
 * Element types: 0x08 u8, 0x09 i8, 0x0B i16, 0x0C i32, 0x0D f32, 0x0E f64,
 * big-endian. Values are stored unscaled in dt; float values stored into an
 * integer dtype truncate toward zero, saturating, NaN -> 0; bool is value != 0.
 * Errors (NULL, message naming kn_load_idx and path): missing file, bad magic,
 * unknown type code, 0 or more than KN_MAX_DIMS dims, more than 2^36 bytes of
 * data, truncated or corrupt data. Bytes after the data are ignored.
 * Returns a new tensor (caller or pool owns it). */
kn_tensor *kn_load_idx(const char *path, kn_dtype dt);

/* Default directory of kn_fashion_mnist (Debian package dataset-fashion-mnist). */
#define KN_FASHION_MNIST_DIR "/usr/share/datasets/fashion-mnist"

/* Loads the Fashion-MNIST training (train) or test set from dir:
 * {train,t10k}-{images-idx3,labels-idx1}-ubyte, each with or without .gz.
 * dir NULL means KN_FASHION_MNIST_DIR. The original MNIST files use the same
 * names and format, so passing an MNIST directory loads MNIST.
 * On success returns 0 and sets *images to a new f32 [N, rows*cols] tensor
 * scaled to [0, 1] (pixel / 255) and *labels to a new i64 [N] tensor; the caller
 * (or the current pool) owns both. On failure returns -1, sets both to NULL and
 * an error: a missing data set says how to install it; the files must hold u8
 * [N, rows, cols] images and u8 [N] labels with the same N. */
int kn_fashion_mnist(const char *dir, bool train, kn_tensor **images, kn_tensor **labels);

/* (x - mean) / std as a new tensor (kn_sub_scalar then kn_div_scalar, so
 * integer x gives f32). std must be finite and nonzero. */
kn_tensor *kn_normalize(kn_tensor *x, double mean, double std);

/* ---- mini-batch loader ----
 * Walks the rows (dim 0) of x and y together in batches of batch_size, one
 * epoch at a time. With shuffle, each epoch visits the rows in a permutation
 * drawn by Fisher-Yates from Philox(seed, counter from (epoch, draw)): the same
 * seed gives the same orders in every run, each epoch a different one, and the
 * order of epoch e depends only on (seed, e, N). Without shuffle rows come in
 * order. A last, partial batch (N % batch_size rows) is returned unless
 * drop_last. Not thread-safe: one loader per thread.
 *
 *     kn_loader *l = kn_loader_new(x, y, 128, true, false, 42);
 *     kn_tensor *xb, *yb;
 *     for (int e = 0; e < epochs; e++) {
 *         while (kn_loader_next(l, &xb, &yb)) {
 *             kn_pool_push(); step(xb, yb); kn_pool_pop();
 *             kn_release(xb); kn_release(yb);   // or let an outer pool do it
 *         }
 *         kn_loader_reset(l);
 *     }
 *     kn_loader_free(l);
 */
typedef struct kn_loader kn_loader;

/* New loader over x [N, ...] and y [N, ...] (y may be NULL: then batches of x
 * only and *yb is set to NULL). Retains x and y, sharing their storage (a
 * contiguous copy if one is strided), so the caller may release them.
 * batch_size must be > 0.
 * Returns NULL with an error on bad arguments; free with kn_loader_free. */
kn_loader *kn_loader_new(kn_tensor *x, kn_tensor *y, int64_t batch_size, bool shuffle,
                         bool drop_last, uint64_t seed);

/* Next batch of the current epoch: sets *xb and *yb to NEW contiguous tensors
 * [B, ...] holding the epoch's next B rows of x and y (owned like any op
 * result: by the caller, or the current pool) and returns true. Returns false,
 * with *xb and *yb NULL, at the end of the epoch (and on every call after it
 * until kn_loader_reset), or on error (kn_last_error() set). xb must not be
 * NULL; yb may be NULL to skip y. */
bool kn_loader_next(kn_loader *l, kn_tensor **xb, kn_tensor **yb);

/* Starts the next epoch (with a new permutation when shuffling), wherever the
 * current one stands. */
void kn_loader_reset(kn_loader *l);

/* Batches per epoch: ceil(N / batch_size), or floor with drop_last; -1 if l is NULL. */
int64_t kn_loader_batches(const kn_loader *l);

/* Releases the loader's references to x and y and frees it; NULL is a no-op. */
void kn_loader_free(kn_loader *l);

#ifdef __cplusplus
}
#endif

#endif
