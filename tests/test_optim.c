/* Optimizers: exact updates against PyTorch, state handling, errors, and a
 * training loop whose memory must stay flat.
 *
 * The expected values come from torch 2.x (2.15.0, CPU, float64 unless said)
 * with this script; rerun it to regenerate:
 *
 *   import torch
 *   A = [1.0, 2.0, 0.5, 3.0]; C = [0.3, -0.7, 1.1, -0.2]; P0 = [0.5, -1.0, 2.0, 0.25]
 *   def run(make, dt=torch.float64, steps=5, lr_at=None):
 *       p = torch.tensor(P0, dtype=dt, requires_grad=True)
 *       a = torch.tensor(A, dtype=dt); c = torch.tensor(C, dtype=dt)
 *       o = make([p]); out = []
 *       for s in range(steps):
 *           if lr_at and s == lr_at[0]: o.param_groups[0]['lr'] = lr_at[1]
 *           o.zero_grad()
 *           (0.5 * a * p * p + c * p).sum().backward()
 *           o.step(); out.append(p.detach().tolist())
 *       return out
 *   S = torch.optim.SGD; Ad = torch.optim.Adam; AW = torch.optim.AdamW
 *   cases = {
 *    'sgd':          lambda ps: S(ps, lr=0.1),
 *    'sgd_momentum': lambda ps: S(ps, lr=0.1, momentum=0.9),
 *    'sgd_nesterov': lambda ps: S(ps, lr=0.1, momentum=0.9, nesterov=True),
 *    'sgd_wd':       lambda ps: S(ps, lr=0.1, momentum=0.9, weight_decay=0.01),
 *    'adam':         lambda ps: Ad(ps, lr=0.1, betas=(0.9, 0.999), eps=1e-8),
 *    'adam_wd':      lambda ps: Ad(ps, lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1),
 *    'adamw':        lambda ps: AW(ps, lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)}
 *   for k, f in cases.items(): print(k, [['%.17g' % v for v in r] for r in run(f)])
 *   print('adam_set_lr', [['%.17g' % v for v in r] for r in run(cases['adam'], lr_at=(2, 0.01))])
 *   print('adam_f32', [['%.9g' % v for v in r] for r in run(cases['adam'], dt=torch.float32)])
 *   print('sgd_nesterov_f32',
 *         [['%.9g' % v for v in r] for r in run(cases['sgd_nesterov'], dt=torch.float32)])
 *
 *   # late_param: a second parameter q that gets its first gradient at step 3
 *   p = torch.tensor(P0, dtype=torch.float64, requires_grad=True)
 *   q = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
 *   a = torch.tensor(A, dtype=torch.float64); c = torch.tensor(C, dtype=torch.float64)
 *   e = torch.tensor([0.5, -0.25], dtype=torch.float64)
 *   o = Ad([p, q], lr=0.1, betas=(0.9, 0.999), eps=1e-8)
 *   for s in range(5):
 *       o.zero_grad(); loss = (0.5 * a * p * p + c * p).sum()
 *       if s >= 2: loss = loss + (q * e).sum()
 *       loss.backward(); o.step(); print(s, ['%.17g' % v for v in q.tolist()])
 */
#include "helpers.h"
#include <kiln/function.h>
#include <math.h>
#include <string.h>

KN_SUITE(optim, 11);

#define EXPECT_NULL_ERR(expr, text)                                               \
    do {                                                                          \
        kn_clear_error();                                                         \
        kn_optim *o_ = (expr);                                                    \
        cr_assert_null(o_, #expr " should fail");                                 \
        kn_optim_free(o_);                                                        \
        cr_assert(kn_last_error(), #expr " set no error");                        \
        cr_assert(strstr(kn_last_error(), text), "message '%s' lacks '%s'",       \
                  kn_last_error(), text);                                         \
    } while (0)

static const double A[4] = {1.0, 2.0, 0.5, 3.0}, C[4] = {0.3, -0.7, 1.1, -0.2};
static const double P0[4] = {0.5, -1.0, 2.0, 0.25};

/* A leaf [4] of dtype dt holding P0 (owned by the test's pool). */
static kn_tensor *quad_param(kn_dtype dt) {
    kn_tensor *p = kn_cast(kn_from_data(P0, KN_SHAPE(4), KN_F64), dt);
    return kn_set_requires_grad(p, true);
}

/* Accumulates the gradient of sum(0.5 a p^2 + c p) into p. */
static void quad_backward(kn_tensor *p) {
    kn_pool_push();
    kn_dtype dt = kn_dtype_of(p);
    kn_tensor *a = kn_cast(kn_from_data(A, KN_SHAPE(4), KN_F64), dt);
    kn_tensor *c = kn_cast(kn_from_data(C, KN_SHAPE(4), KN_F64), dt);
    kn_tensor *l = kn_add(kn_mul(kn_mul_scalar(a, 0.5), kn_mul(p, p)), kn_mul(c, p));
    cr_assert_eq(kn_backward(kn_sum(l, KN_ALL_DIMS, false), NULL), 0, "%s", kn_last_error());
    kn_pool_pop();
}

typedef kn_optim *(*make_fn)(kn_tensor *const *ps, int n);

/* Five steps of zero_grad, backward, step; p after each must match want. */
static void run_case(const char *name, make_fn make, kn_dtype dt, const double want[5][4],
                     double rtol, double atol) {
    kn_tensor *p = quad_param(dt);
    kn_optim *o = make(&p, 1);
    cr_assert(o, "%s: %s", name, kn_last_error());
    for (int s = 0; s < 5; s++) {
        kn_optim_zero_grad(o);
        quad_backward(p);
        cr_assert_eq(kn_optim_step(o), 0, "%s: %s", name, kn_last_error());
        for (int i = 0; i < 4; i++)
            cr_assert(fabs(at(p, i) - want[s][i]) <= atol + rtol * fabs(want[s][i]),
                      "%s step %d elem %d: got %.17g, torch %.17g", name, s + 1, i, at(p, i),
                      want[s][i]);
    }
    kn_optim_free(o);
}

static kn_optim *mk_sgd(kn_tensor *const *ps, int n) { return kn_sgd_new(ps, n, 0.1, 0, 0, false); }
static kn_optim *mk_sgd_momentum(kn_tensor *const *ps, int n) { return kn_sgd_new(ps, n, 0.1, 0.9, 0, false); }
static kn_optim *mk_sgd_nesterov(kn_tensor *const *ps, int n) { return kn_sgd_new(ps, n, 0.1, 0.9, 0, true); }
static kn_optim *mk_sgd_wd(kn_tensor *const *ps, int n) { return kn_sgd_new(ps, n, 0.1, 0.9, 0.01, false); }
static kn_optim *mk_adam(kn_tensor *const *ps, int n) { return kn_adam_new(ps, n, 0.1, 0.9, 0.999, 1e-8, 0); }
static kn_optim *mk_adam_wd(kn_tensor *const *ps, int n) { return kn_adam_new(ps, n, 0.1, 0.9, 0.999, 1e-8, 0.1); }
static kn_optim *mk_adamw(kn_tensor *const *ps, int n) { return kn_adamw_new(ps, n, 0.1, 0.9, 0.999, 1e-8, 0.1); }

/* ---- torch reference values (script above) ---- */
static const double T_SGD[5][4] = {
    {0.41999999999999998, -0.72999999999999998, 1.79, 0.19499999999999998},
    {0.34799999999999998, -0.5139999999999999, 1.5905, 0.15649999999999997},
    {0.28320000000000001, -0.34119999999999989, 1.4009750000000001, 0.12954999999999997},
    {0.22488, -0.20295999999999989, 1.22092625, 0.11068499999999998},
    {0.17239199999999999, -0.092367999999999909, 1.0498799375000001, 0.097479499999999983}};
static const double T_SGD_MOMENTUM[5][4] = {
    {0.41999999999999998, -0.72999999999999998, 1.79, 0.19499999999999998},
    {0.27599999999999997, -0.27099999999999996, 1.4015, 0.10699999999999997},
    {0.088799999999999962, 0.26630000000000009, 0.87177499999999997, 0.015699999999999974},
    {-0.11856000000000004, 0.76661000000000012, 0.24143374999999989, -0.05118000000000001},
    {-0.323328, 1.1335670000000002, -0.44794506250000016, -0.076018000000000002}};
static const double T_SGD_NESTEROV[5][4] = {
    {0.34799999999999998, -0.48699999999999988, 1.601, 0.14549999999999999},
    {0.16008, 0.049760000000000103, 1.0698049999999999, 0.056014999999999981},
    {-0.038143200000000009, 0.49627520000000003, 0.45214302499999981, 0.0028349499999999776},
    {-0.22488967200000001, 0.78851110399999991, -0.20856511487500023, -0.011518966500000021},
    {-0.38366534712000006, 0.91121873407999987, -0.87304231872437532, 0.0028937560549999928}};
static const double T_SGD_WD[5][4] = {
    {0.41949999999999998, -0.72899999999999998, 1.788, 0.19475000000000001},
    {0.27468049999999999, -0.268571, 1.396012, 0.10640524999999999},
    {0.086600219499999978, 0.26979787100000008, 0.86202618800000008, 0.014866994749999987},
    {-0.12141865511950005, 0.77010048282900012, 0.22747562161200013, -0.051992400394750005},
    {-0.32637235810998061, 1.1355826364264712, -0.46522114483941185, -0.076516143506205253}};
static const double T_ADAM[5][4] = {
    {0.40000000125000001, -0.90000000037037042, 1.9000000004761906, 0.15000000181818179},
    {0.30056828540147756, -0.80027424693266258, 1.8000700628506598, 0.058200004793759127},
    {0.20222006950529697, -0.70103989778108089, 1.7002591561728047, -0.010013108754784131},
    {0.10560022778271645, -0.60254314571964507, 1.6006178582739499, -0.041539806465721224},
    {0.011504288046135097, -0.50506172950903871, 1.5011982757952331, -0.04085127739977059}};
static const double T_ADAM_WD[5][4] = {
    {0.40000000117647061, -0.90000000035714289, 1.9000000004347826, 0.15000000173913042},
    {0.30059828270880418, -0.80027877453005569, 1.8000776232592968, 0.057992048616602801},
    {0.20234368163803118, -0.70105760105374937, 1.7002874069567513, -0.011052589493910636},
    {0.1059289241292401, -0.60258779636955428, 1.6006859023484541, -0.04390733787777916},
    {0.012214508247408315, -0.50515336556111612, 1.5013315951972663, -0.044422245162753171}};
static const double T_ADAMW[5][4] = {
    {0.39500000125000001, -0.89000000037037041, 1.8800000004761905, 0.14750000181818179},
    {0.29166100529949673, -0.78141128465618404, 1.7612860467093363, 0.054685433316907048},
    {0.19051621156529314, -0.67446520486621742, 1.6439047537281548, -0.012524397838646166},
    {0.092226506821469142, -0.56942246074022762, 1.5279036813744902, -0.041831510752266585},
    {-0.0024028278434642947, -0.46657500473961205, 1.4133311720002861, -0.039092159928706217}};
static const double T_ADAM_SET_LR[5][4] = {  /* lr 0.1, then 0.01 from step 3 */
    {0.40000000125000001, -0.90000000037037042, 1.9000000004761906, 0.15000000181818179},
    {0.30056828540147756, -0.80027424693266258, 1.8000700628506598, 0.058200004793759127},
    {0.29073346381185949, -0.79035081201750446, 1.7900889721828743, 0.051378693438904804},
    {0.28094984345241569, -0.7804512406380899, 1.7801141455084044, 0.046247265656684133},
    {0.27119977467090933, -0.77056777016420253, 1.7701437508007509, 0.042481357868983126}};
static const double T_ADAM_F32[5][4] = {
    {0.400000006, -0.899999976, 1.89999998, 0.150000006},
    {0.300568283, -0.800274193, 1.80007005, 0.0582000092},
    {0.202220052, -0.701039851, 1.70025909, -0.0100131035},
    {0.105600201, -0.602543116, 1.60061777, -0.0415398031},
    {0.0115042552, -0.505061686, 1.50119817, -0.0408512764}};
static const double T_SGD_NESTEROV_F32[5][4] = {
    {0.34799999, -0.486999989, 1.60100007, 0.145500004},
    {0.160079986, 0.0497600175, 1.06980515, 0.0560149997},
    {-0.0381432027, 0.496275216, 0.452143192, 0.00283495407},
    {-0.224889666, 0.788511097, -0.208564952, -0.0115189617},
    {-0.383665323, 0.911218643, -0.873042166, 0.00289376336}};

/* f64 runs agree with torch to rounding; f32 to a few ulps. */
#define RT64 1e-12, 1e-14

Test(optim, sgd_plain_matches_torch) { run_case("sgd", mk_sgd, KN_F64, T_SGD, RT64); }
Test(optim, sgd_momentum_matches_torch) {
    run_case("sgd momentum", mk_sgd_momentum, KN_F64, T_SGD_MOMENTUM, RT64);
}
Test(optim, sgd_nesterov_matches_torch) {
    run_case("sgd nesterov", mk_sgd_nesterov, KN_F64, T_SGD_NESTEROV, RT64);
    run_case("sgd nesterov f32", mk_sgd_nesterov, KN_F32, T_SGD_NESTEROV_F32, 1e-6, 1e-7);
}
Test(optim, sgd_weight_decay_matches_torch) {
    run_case("sgd weight decay", mk_sgd_wd, KN_F64, T_SGD_WD, RT64);
}
Test(optim, adam_matches_torch) {
    run_case("adam", mk_adam, KN_F64, T_ADAM, RT64);
    run_case("adam f32", mk_adam, KN_F32, T_ADAM_F32, 1e-6, 1e-7);
}
Test(optim, adam_weight_decay_matches_torch) {
    run_case("adam weight decay", mk_adam_wd, KN_F64, T_ADAM_WD, RT64);
}
Test(optim, adamw_matches_torch) { run_case("adamw", mk_adamw, KN_F64, T_ADAMW, RT64); }

Test(optim, set_lr_takes_effect_next_step) {
    kn_tensor *p = quad_param(KN_F64);
    kn_optim *o = mk_adam(&p, 1);
    for (int s = 0; s < 5; s++) {
        if (s == 2) kn_optim_set_lr(o, 0.01);
        kn_optim_zero_grad(o);
        quad_backward(p);
        cr_assert_eq(kn_optim_step(o), 0, "%s", kn_last_error());
        for (int i = 0; i < 4; i++)
            cr_assert(fabs(at(p, i) - T_ADAM_SET_LR[s][i]) <= 1e-14 + 1e-12 * fabs(T_ADAM_SET_LR[s][i]),
                      "step %d elem %d: got %.17g, torch %.17g", s + 1, i, at(p, i), T_ADAM_SET_LR[s][i]);
    }
    kn_optim_free(o);
}

/* A parameter without a gradient is skipped entirely: no value change, no
 * weight decay, no state, and (as in torch) its own step count starts at
 * its first gradient. */
Test(optim, param_without_grad_is_untouched) {
    make_fn makers[] = {mk_sgd_wd, mk_sgd_nesterov, mk_adam_wd, mk_adamw};
    for (int k = 0; k < 4; k++) {
        kn_tensor *ps[2] = {quad_param(KN_F64), kn_set_requires_grad(TF64(KN_SHAPE(2), 1.0, -2.0), true)};
        kn_optim *o = makers[k](ps, 2);
        for (int s = 0; s < 3; s++) {
            kn_optim_zero_grad(o);
            quad_backward(ps[0]);
            cr_assert_eq(kn_optim_step(o), 0, "%s", kn_last_error());
        }
        cr_assert_null(kn_grad(ps[1]));
        cr_assert(at(ps[1], 0) == 1.0 && at(ps[1], 1) == -2.0, "optimizer %d moved a param with no grad", k);
        kn_optim_free(o);
    }
}

/* Outside a trace Adam runs one fused loop per parameter; a trace records
 * its ops (replayed as a JIT kernel). Both give the same bits, in f32 and
 * f64, with either kind of weight decay, on a parameter large enough for
 * the loop to split across threads. */
static int step_body(void *ctx, kn_tensor *const *in, kn_tensor **out) {
    (void)in;
    out[0] = kn_optim_step(ctx) == 0 ? kn_scalar(0, KN_F32) : NULL;
    return out[0] ? 0 : -1;
}

static void grad_of(kn_tensor *p, kn_tensor *w) {
    kn_zero_grad(p);
    cr_assert_eq(kn_backward(kn_sum(kn_mul(kn_mul(p, p), w), KN_ALL_DIMS, false), NULL), 0, "%s", kn_last_error());
}

Test(optim, fused_adam_is_its_ops_bit_for_bit) {
    make_fn makers[] = {mk_adam, mk_adam_wd, mk_adamw};
    for (int d = 0; d < 2; d++)
        for (int k = 0; k < 3; k++) {
            kn_dtype dt = d ? KN_F64 : KN_F32;
            kn_tensor *base = kn_randn(KN_SHAPE(300, 257), dt);
            kn_tensor *a = kn_set_requires_grad(kn_cast(base, dt), true), *b = kn_set_requires_grad(kn_cast(base, dt), true);
            kn_optim *oa = makers[k](&a, 1), *ob = makers[k](&b, 1);
            kn_fn *f = kn_function("adam_step", step_body, ob, 0, 1, NULL);
            for (int s = 0; s < 4; s++) {
                kn_pool_push();
                kn_tensor *w = kn_randn(KN_SHAPE(300, 257), dt), *out;
                grad_of(a, w);
                grad_of(b, w);
                cr_assert_eq(kn_optim_step(oa), 0, "%s", kn_last_error());
                cr_assert_eq(kn_call(f, NULL, &out), 0, "%s", kn_last_error());
                assert_equal(a, b);
                kn_pool_pop();
            }
            cr_assert_eq(kn_fn_stats(f).traces, 2, "the first trace makes the state; the second is replayed");
            kn_fn_free(f);
            kn_optim_free(oa);
            kn_optim_free(ob);
        }
}

/* Twelve parameters, one of them 0-d (left to the ops: its ops compute in
 * f64), through Adam and AdamW: each traced step's bias corrections are
 * scalar chains reading more values than one node may take (they split). */
Test(optim, many_parameters_and_a_0d_one_match_traced_bit_for_bit) {
    make_fn makers[] = {mk_adam, mk_adamw};
    for (int k = 0; k < 2; k++) {
        kn_tensor *a[12], *b[12], *w[12];
        for (int i = 0; i < 12; i++) {
            kn_tensor *base = i == 5 ? kn_scalar(0.0312345, KN_F32) : kn_randn(KN_SHAPE(3 + i, 2), KN_F32);
            a[i] = kn_set_requires_grad(kn_cast(base, KN_F32), true);
            b[i] = kn_set_requires_grad(kn_cast(base, KN_F32), true);
            w[i] = kn_randn(kn_shape(base), kn_ndim(base), KN_F32);
        }
        kn_optim *oa = makers[k](a, 12), *ob = makers[k](b, 12);
        kn_fn *f = kn_function("adam_many", step_body, ob, 0, 1, NULL);
        for (int s = 0; s < 4; s++) {
            kn_pool_push();
            kn_tensor *out;
            for (int i = 0; i < 12; i++) {
                grad_of(a[i], kn_mul_scalar(w[i], s + 1));
                grad_of(b[i], kn_mul_scalar(w[i], s + 1));
            }
            cr_assert_eq(kn_optim_step(oa), 0, "%s", kn_last_error());
            cr_assert_eq(kn_call(f, NULL, &out), 0, "%s", kn_last_error());
            for (int i = 0; i < 12; i++) assert_equal(a[i], b[i]);
            kn_pool_pop();
        }
        kn_fn_free(f);
        kn_optim_free(oa);
        kn_optim_free(ob);
    }
}

/* torch: q = [1, -2] gets gradient e = [0.5, -0.25] from step 3 on (script). */
Test(optim, adam_step_count_is_per_parameter) {
    static const double want[5][2] = {{1, -2}, {1, -2}, {0.90000000199999997, -1.9000000039999998},
                                      {0.8000000040000006, -1.8000000080000003},
                                      {0.70000000600000067, -1.7000000120000001}};
    kn_tensor *ps[2] = {quad_param(KN_F64), kn_set_requires_grad(TF64(KN_SHAPE(2), 1.0, -2.0), true)};
    kn_tensor *e = TF64(KN_SHAPE(2), 0.5, -0.25);
    kn_optim *o = mk_adam(ps, 2);
    for (int s = 0; s < 5; s++) {
        kn_optim_zero_grad(o);
        quad_backward(ps[0]);
        if (s >= 2) {
            kn_pool_push();
            cr_assert_eq(kn_backward(kn_sum(kn_mul(ps[1], e), KN_ALL_DIMS, false), NULL), 0);
            kn_pool_pop();
        }
        cr_assert_eq(kn_optim_step(o), 0, "%s", kn_last_error());
        for (int i = 0; i < 2; i++)
            cr_assert(fabs(at(ps[1], i) - want[s][i]) <= 1e-12 * fabs(want[s][i]),
                      "step %d elem %d: got %.17g, torch %.17g", s + 1, i, at(ps[1], i), want[s][i]);
        for (int i = 0; i < 4; i++)
            cr_assert(fabs(at(ps[0], i) - T_ADAM[s][i]) <= 1e-14 + 1e-12 * fabs(T_ADAM[s][i]));
    }
    kn_optim_free(o);
}

Test(optim, zero_grad_drops_gradients) {
    kn_tensor *ps[2] = {quad_param(KN_F32), quad_param(KN_F32)};
    kn_optim *o = kn_sgd_new(ps, 2, 0.1, 0.9, 0, false);
    quad_backward(ps[0]);
    quad_backward(ps[1]);
    cr_assert_not_null(kn_grad(ps[0]));
    cr_assert_not_null(kn_grad(ps[1]));
    kn_optim_zero_grad(o);
    cr_assert_null(kn_grad(ps[0]));
    cr_assert_null(kn_grad(ps[1]));
    /* with every gradient gone a step changes nothing */
    cr_assert_eq(kn_optim_step(o), 0);
    for (int i = 0; i < 4; i++) cr_assert_eq(at(ps[0], i), (float)P0[i]);
    /* gradients accumulate between zero_grads, as in torch */
    quad_backward(ps[0]);
    quad_backward(ps[0]);
    double g0 = A[0] * P0[0] + C[0];
    cr_assert(fabs(at(kn_grad(ps[0]), 0) - 2 * g0) < 1e-6);
    kn_optim_free(o);
}

Test(optim, params_are_retained_by_the_optimizer) {
    kn_tensor *p = kn_set_requires_grad(kn_keep(TF32(KN_SHAPE(2), 1, 2)), true);
    kn_optim *o = kn_sgd_new(&p, 1, 0.5, 0, 0, false);
    kn_pool_push();
    cr_assert_eq(kn_backward(kn_sum(p, KN_ALL_DIMS, false), NULL), 0);
    kn_pool_pop();
    kn_release(p);  /* the optimizer still holds it */
    cr_assert_eq(kn_optim_step(o), 0);
    kn_optim_free(o);
}

Test(optim, errors) {
    kn_tensor *p = quad_param(KN_F32);
    kn_tensor *nonleaf = kn_mul_scalar(p, 2);
    kn_tensor *frozen = kn_ones(KN_SHAPE(3), KN_F32);
    kn_tensor *two[2] = {p, frozen};
    EXPECT_NULL_ERR(kn_sgd_new(&nonleaf, 1, 0.1, 0, 0, false), "kn_sgd_new: parameter 0 is not a leaf");
    EXPECT_NULL_ERR(kn_adam_new(two, 2, 0.1, 0.9, 0.999, 1e-8, 0), "kn_adam_new: parameter 1");
    EXPECT_NULL_ERR(kn_adamw_new(&nonleaf, 1, 0.1, 0.9, 0.999, 1e-8, 0), "kn_adamw_new");
    EXPECT_NULL_ERR(kn_sgd_new(NULL, 1, 0.1, 0, 0, false), "kn_sgd_new");
    EXPECT_NULL_ERR(kn_sgd_new((kn_tensor *[]){NULL}, 1, 0.1, 0, 0, false), "kn_sgd_new");
    EXPECT_NULL_ERR(kn_sgd_new(&p, -1, 0.1, 0, 0, false), "kn_sgd_new: bad arguments");
    EXPECT_NULL_ERR(kn_sgd_new(&p, 1, -0.1, 0, 0, false), "kn_sgd_new: bad arguments");
    EXPECT_NULL_ERR(kn_adam_new(&p, 1, NAN, 0.9, 0.999, 1e-8, 0), "kn_adam_new: bad arguments");
    EXPECT_NULL_ERR(kn_sgd_new(&p, 1, 0.1, 0, 0, true), "nesterov");
    EXPECT_NULL_ERR(kn_sgd_new(&p, 1, 0.1, -0.5, 0, false), "kn_sgd_new: bad momentum");
    EXPECT_NULL_ERR(kn_sgd_new(&p, 1, 0.1, 0.9, -1e-3, false), "kn_sgd_new: bad weight_decay");
    EXPECT_NULL_ERR(kn_adam_new(&p, 1, 0.1, 1.0, 0.999, 1e-8, 0), "kn_adam_new: bad betas");
    EXPECT_NULL_ERR(kn_adam_new(&p, 1, 0.1, 0.9, 1.0, 1e-8, 0), "kn_adam_new: bad betas");
    EXPECT_NULL_ERR(kn_adamw_new(&p, 1, 0.1, -0.1, 0.999, 1e-8, 0), "kn_adamw_new: bad betas");
    EXPECT_NULL_ERR(kn_adam_new(&p, 1, 0.1, NAN, 0.999, 1e-8, 0), "bad betas");
    EXPECT_NULL_ERR(kn_adam_new(&p, 1, 0.1, 0.9, 0.999, -1e-8, 0), "eps");
    EXPECT_NULL_ERR(kn_adamw_new(&p, 1, 0.1, 0.9, 0.999, 1e-8, -0.1), "kn_adamw_new: bad weight_decay");
    /* an empty optimizer is fine; NULL handles are harmless */
    kn_optim *o = kn_adam_new(NULL, 0, 0.1, 0.9, 0.999, 1e-8, 0);
    cr_assert_not_null(o, "%s", kn_last_error());
    cr_assert_eq(kn_optim_step(o), 0);
    kn_optim_free(o);
    kn_clear_error();
    cr_assert_eq(kn_optim_step(NULL), -1);
    cr_assert(strstr(kn_last_error(), "kn_optim_step"));
    kn_optim_zero_grad(NULL);
    kn_optim_set_lr(NULL, 0.1);
    kn_optim_free(NULL);
}

/* An MLP 20-16-3 on labels from a fixed random linear map: the number of
 * live tensors is the same after every step, and the loss falls. */
Test(optim, training_loop_memory_is_flat) {
    const int64_t n = 256;
    kn_tensor *x = kn_randn(KN_SHAPE(n, 20), KN_F32);
    kn_tensor *y = kn_argmax(kn_matmul(x, kn_randn(KN_SHAPE(20, 3), KN_F32)), 1, false);
    kn_module *net = kn_sequential_new(kn_linear_new(20, 16, true), kn_relu_new(),
                                       kn_linear_new(16, 3, true), NULL);
    kn_tensor *ps[8];
    int np = kn_parameters(net, ps, NULL, 8);
    cr_assert_eq(np, 4);
    kn_optim *o = kn_adam_new(ps, np, 1e-2, 0.9, 0.999, 1e-8, 0);
    cr_assert_not_null(o);
    int64_t live1 = 0;
    double first = 0, last = 0;
    for (int step = 0; step < 300; step++) {
        kn_pool_push();
        kn_tensor *loss = kn_cross_entropy(kn_forward(net, x), y, KN_REDUCE_MEAN);
        cr_assert_not_null(loss, "step %d: %s", step, kn_last_error());
        last = kn_item(loss);
        kn_optim_zero_grad(o);
        cr_assert_eq(kn_backward(loss, NULL), 0, "%s", kn_last_error());
        cr_assert_eq(kn_optim_step(o), 0, "%s", kn_last_error());
        kn_pool_pop();
        if (step == 0) {
            live1 = kn_live_tensors();
            first = last;
        }
        cr_assert_eq(kn_live_tensors(), live1, "step %d: %lld live tensors, %lld after step 1", step + 1,
                     (long long)kn_live_tensors(), (long long)live1);
    }
    cr_assert(last < 0.25 * first, "loss %g -> %g", first, last);
    kn_optim_free(o);
    kn_module_free(net);
}
