/* The classic first program: fit y = 2x with Linear(1, 1), MSE and SGD. */
#include <kiln.h>

int main(void) {
    kn_manual_seed(0);
    kn_tensor *x = kn_from_data((float[]){1, 2, 3, 4}, KN_SHAPE(4, 1), KN_F32);
    kn_tensor *y = kn_from_data((float[]){2, 4, 6, 8}, KN_SHAPE(4, 1), KN_F32);
    kn_module *model = kn_linear_new(1, 1, true);
    kn_tensor *params[2];
    int n = kn_parameters(model, params, NULL, 2);
    kn_optim *opt = kn_sgd_new(params, n, 0.01, 0, 0, false);

    for (int epoch = 0; epoch < 100; epoch++) {
        kn_pool_push();  /* this step's tensors are released at the pop */
        kn_tensor *loss = kn_mse_loss(kn_forward(model, x), y, KN_REDUCE_MEAN);
        kn_optim_zero_grad(opt);
        if (kn_backward(loss, NULL) != 0 || kn_optim_step(opt) != 0) {
            fprintf(stderr, "error: %s\n", kn_last_error());
            return 1;
        }
        if (epoch % 20 == 0) printf("epoch %3d  loss %.4f\n", epoch, kn_item(loss));
        kn_pool_pop();
    }

    kn_pool_push();
    kn_tensor *pred = kn_forward(model, kn_full(KN_SHAPE(1, 1), 5.0, KN_F32));
    printf("prediction for 5.0: %.3f (expected close to 10)\n", kn_item(pred));
    kn_pool_pop();

    kn_optim_free(opt);
    kn_module_free(model);
    kn_release(x);
    kn_release(y);
    return 0;
}
