/* Train a small MLP on Fashion-MNIST: Linear(784, 128), ReLU, Linear(128, 10),
 * cross-entropy and Adam. The program to read first. */
#include <kiln.h>

int main(void) {
    kn_tensor *x, *y, *xt, *yt;
    if (kn_fashion_mnist(NULL, true, &x, &y) || kn_fashion_mnist(NULL, false, &xt, &yt)) {
        fprintf(stderr, "%s\n", kn_last_error());
        return 1;
    }
    kn_manual_seed(0);
    kn_module *model = kn_sequential_new(kn_linear_new(784, 128, true), kn_relu_new(),
                                         kn_linear_new(128, 10, true), NULL);
    kn_tensor *params[4];
    int n = kn_parameters(model, params, NULL, 4);
    kn_optim *adam = kn_adam_new(params, n, 1e-3, 0.9, 0.999, 1e-8, 0);
    kn_loader *batches = kn_loader_new(x, y, 64, true, false, 0);

    for (int epoch = 1; epoch <= 3; epoch++) {
        double loss_value = 0;
        for (bool more = true; more;) {
            kn_pool_push();                   /* this step's tensors die at the pop */
            kn_tensor *xb, *yb;
            more = kn_loader_next(batches, &xb, &yb);
            if (more) {
                kn_tensor *loss = kn_cross_entropy(kn_forward(model, xb), yb, KN_REDUCE_MEAN);
                kn_optim_zero_grad(adam);
                if (kn_backward(loss, NULL) != 0 || kn_optim_step(adam) != 0) {
                    fprintf(stderr, "%s\n", kn_last_error());
                    return 1;
                }
                loss_value = kn_item(loss);
            }
            kn_pool_pop();
        }
        kn_loader_reset(batches);
        printf("epoch %d: last loss %.4f\n", epoch, loss_value);
    }

    kn_no_grad_begin();                   /* evaluation: no autograd graph */
    kn_pool_push();
    kn_tensor *pred = kn_argmax(kn_forward(model, xt), 1, false);
    double acc = kn_item(kn_mean(kn_cast(kn_eq(pred, yt), KN_F32), KN_ALL_DIMS, false));
    printf("test accuracy: %.2f%%\n", 100 * acc);
    kn_pool_pop();
    kn_no_grad_end();

    kn_loader_free(batches);
    kn_optim_free(adam);
    kn_module_free(model);
    return 0;
}
