/* Hooks through which ops, autograd and in-place writes report to the trace
 * being recorded on this thread (trace/function.c). Each is a no-op when
 * nothing is being traced. */
#ifndef KN_TRACE_H
#define KN_TRACE_H
#include "../core/autograd.h"

extern _Thread_local struct kn_trace *kn__trace;
extern _Thread_local uint32_t kn__trace_stamp;  /* stamp for tensors made while tracing */

/* An op produced out from in (NULL inputs allowed) with params p. */
void kn__trace_op(kn_op op, kn_tensor *out, kn_tensor *const *in, int nin, const kn_params *p);
/* alias is another handle on the value of t (autograd's saved output, detach). */
void kn__trace_alias(kn_tensor *alias, kn_tensor *t);
/* In-place write of src's values into dst. */
void kn__trace_write(kn_tensor *dst, kn_tensor *src);
/* Autograd side effects: leaf->grad = g, and leaf->grad = NULL. */
void kn__trace_set_grad(kn_tensor *leaf, kn_tensor *g);
void kn__trace_zero_grad(kn_tensor *leaf);
/* kn_grad(leaf) read inside a body: its value at call time. */
void kn__trace_grad_read(kn_tensor *leaf, kn_tensor *g);
/* For reads of values (kn_item, kn_copy_out, kn_data): true, with an error
 * naming the function and op, when t is a value of the trace. */
bool kn__trace_read_error(const char *op, const kn_tensor *t);
/* User code read sizes (kn_shape, kn_numel, kn_strides): pins the trace to exact shapes. */
void kn__trace_sizes_read(void);

#endif
