/* Kiln nn: losses, layers (modules) and optimizers. Included by kiln.h. */
#ifndef KILN_NN_H
#define KILN_NN_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- losses ---- */
typedef enum { KN_REDUCE_MEAN, KN_REDUCE_SUM, KN_REDUCE_NONE } kn_reduction;
/* logits [N,C] (f32/f64), target [N] of class indices (i64/i32). A fused,
 * numerically stable log-softmax; out-of-range targets are an error. */
kn_tensor *kn_cross_entropy(kn_tensor *logits, kn_tensor *target, kn_reduction r);
/* logp [N,C] log-probabilities, target [N]: -logp[i, target[i]]. */
kn_tensor *kn_nll_loss(kn_tensor *logp, kn_tensor *target, kn_reduction r);
/* (x - y)^2 with broadcasting, then the reduction. */
kn_tensor *kn_mse_loss(kn_tensor *x, kn_tensor *y, kn_reduction r);

/* ---- modules ----
 * A module owns its parameters (tensors that require grad) and, for
 * kn_sequential, its children. kn_module_free frees all of it. Random
 * initialization draws from the global Philox stream (kn_manual_seed). */
typedef struct kn_module kn_module;
/* Linear(in, out): weight [out, in] and bias [out], kaiming-uniform like PyTorch. */
kn_module *kn_linear_new(int64_t in_features, int64_t out_features, bool bias);
/* Conv2d: weight [out_ch, in_ch, k, k], bias [out_ch], kaiming-uniform. */
kn_module *kn_conv2d_new(int64_t in_ch, int64_t out_ch, int kernel, int stride, int padding, bool bias);
kn_module *kn_max_pool2d_new(int kernel, int stride, int padding);
kn_module *kn_dropout_new(double p);        /* Philox masks; identity in eval mode */
kn_module *kn_relu_new(void);
kn_module *kn_flatten_new(void);            /* [N, ...] -> [N, prod(...)] */
kn_module *kn_embedding_new(int64_t num, int64_t dim);  /* weight ~ N(0, 1) */
/* Takes ownership of the NULL-terminated list of modules. */
kn_module *kn_sequential_new(kn_module *first, ...);
kn_tensor *kn_forward(kn_module *m, kn_tensor *x);      /* a new tensor, like any op */
/* Fills up to max parameter pointers (borrowed) in registration order and
 * returns how many the module has. names (optional) get "0.weight"-style
 * paths, borrowed, valid until kn_module_free. */
int kn_parameters(kn_module *m, kn_tensor **params, const char **names, int max);
void kn_train(kn_module *m, bool training);  /* default: training */
void kn_module_free(kn_module *m);

/* ---- optimizers: update parameters in place under no-grad ---- */
typedef struct kn_optim kn_optim;
kn_optim *kn_sgd_new(kn_tensor *const *params, int n, double lr, double momentum,
                     double weight_decay, bool nesterov);
/* Adam with PyTorch's update and bias correction; weight_decay is L2 in the gradient. */
kn_optim *kn_adam_new(kn_tensor *const *params, int n, double lr, double beta1, double beta2,
                      double eps, double weight_decay);
/* AdamW: decoupled weight decay (p *= 1 - lr * weight_decay). */
kn_optim *kn_adamw_new(kn_tensor *const *params, int n, double lr, double beta1, double beta2,
                       double eps, double weight_decay);
int kn_optim_step(kn_optim *o);             /* 0, or -1 with an error */
void kn_optim_zero_grad(kn_optim *o);
void kn_optim_set_lr(kn_optim *o, double lr);
void kn_optim_free(kn_optim *o);

#ifdef __cplusplus
}
#endif
#endif
