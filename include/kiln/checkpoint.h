/* Checkpoints in the safetensors format (https://github.com/huggingface/safetensors):
 * an 8-byte little-endian header length N, N bytes of JSON header padded with
 * spaces to a multiple of 8, then the raw little-endian data of each tensor in
 * C order. Files written here load in Python's `safetensors`, and files it
 * writes load here (dtypes F32, F64, I32, I64 and BOOL).
 *
 * Errors follow kiln.h: -1 and a thread-local message (kn_last_error()) that
 * names the function, the file and, where there is one, the entry.
 */
#ifndef KILN_CHECKPOINT_H
#define KILN_CHECKPOINT_H

#ifdef __cplusplus
extern "C" {
#endif

/* Writes tensors[i] under names[i], i < n. Names must be distinct, valid UTF-8,
 * and not "__metadata__"; non-contiguous tensors are written in C order. The
 * file is written to "<path>.tmp.<pid>.<k>", fsynced and renamed over path, so
 * path holds either the old file or the complete new one, never a partial one;
 * on failure the temporary file is removed. Borrows every argument.
 * Returns 0, or -1 with an error. */
int kn_save(const char *path, const char *const *names, kn_tensor *const *tensors, int n);

/* Reads the entries names[i] of the file at path into the existing tensors
 * dest[i] (which may be non-contiguous views), like a strict load_state_dict:
 * every name must exist with exactly the dtype and shape of its destination.
 * All or nothing: the whole file is validated and the requested data read
 * into temporary buffers (so memory peaks at twice their size) before any
 * destination is written; on -1 every destination is unchanged. Entries of
 * dtypes Kiln lacks (F16, BF16, U8, ...) may be present but not requested.
 * Returns 0, or -1 with an error. */
int kn_load(const char *path, const char *const *names, kn_tensor *const *dest, int n);

/* Lists the tensor names in the file at path, in header order, after
 * validating the file as kn_load does. On 0, *names is a new array of *n new
 * strings: the caller frees each string and then the array with free(). On -1
 * (with an error) *names is NULL and *n is 0. */
int kn_checkpoint_entries(const char *path, char ***names, int *n);

#ifdef __cplusplus
}
#endif
#endif
