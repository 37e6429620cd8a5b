/* The smallest Kiln program: build tensors, run a few ops, print. */
#include <kiln.h>
#include <stdlib.h>

int main(void) {
    kn_pool_push();  /* everything created below is released at kn_pool_pop */
    kn_tensor *x = kn_arange(0, 6, 1, KN_F32);
    kn_tensor *m = kn_reshape(x, KN_SHAPE(2, 3));
    kn_tensor *y = kn_softmax(kn_mul_scalar(m, 0.5), -1);
    kn_print(m);
    kn_print(y);
    kn_print(kn_sum(y, KN_DIMS(1), false));
    kn_print(kn_matmul(m, kn_transpose(m, 0, 1)));
    kn_manual_seed(0);
    kn_print(kn_randn(KN_SHAPE(2, 4), KN_F32));
    if (kn_last_error()) {
        fprintf(stderr, "error: %s\n", kn_last_error());
        return 1;
    }
    kn_print(kn_add(m, kn_ones(KN_SHAPE(4), KN_F32)));  /* a mistake, on purpose */
    printf("error, as expected: %s\n", kn_last_error());
    kn_pool_pop();
    return 0;
}
