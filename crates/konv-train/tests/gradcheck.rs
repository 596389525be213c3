//! Finite-difference gradient checks of the layers and losses konv writes itself: for each,
//! the gradient autodiff gives for the input (and, for layers with weights, for every
//! parameter) is compared with central differences of the same scalar (the output weighted by fixed random numbers, so that no symmetry hides an
//! error), coordinate by coordinate.
//!
//! In f64 on the CPU backend (the device configured so that every float tensor, the layers'
//! parameters included, is f64): central differences with a step of 1e-5 (the functions are
//! smooth at the probed points: max-pool inputs are distinct by far more than the step), and
//! a relative tolerance of 1e-5 on the larger of the two values (absolute below 1e-6). A
//! wrong backward pass is off by far more: a dropped term, a transposed kernel or a missing
//! chain-rule factor shows as an error of order 1.
//!
//! `cargo test --release -p konv-train --test gradcheck -- --nocapture` prints the table.

use burn::prelude::*;
use burn::tensor::Distribution;
use konv_models::conv::{FastBatchNorm, FastConv2d};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

/// Max relative error over up to `probes` input coordinates between autodiff and central
/// differences of `f` at `x`.
fn max_rel_error<const D: usize>(
    f: &dyn Fn(Tensor<D>) -> Tensor<1>,
    x: &[f64],
    shape: [usize; D],
    probes: usize,
) -> f64 {
    max_rel_error_with(f, x, shape, probes, 1e-5)
}

/// [`max_rel_error`] with central differences of step `eps`.
fn max_rel_error_with<const D: usize>(
    f: &dyn Fn(Tensor<D>) -> Tensor<1>,
    x: &[f64],
    shape: [usize; D],
    probes: usize,
    eps: f64,
) -> f64 {
    let device = f64_device();
    let input = Tensor::<D>::from_data(TensorData::new(x.to_vec(), shape), &device).require_grad();
    let grads = f(input.clone()).backward();
    let autodiff: Vec<f64> = input
        .grad(&grads)
        .expect("the input takes part in the output")
        .into_data()
        .try_to_vec()
        .expect("an f64 gradient");
    let value = |v: Vec<f64>| -> f64 {
        f(Tensor::from_data(TensorData::new(v, shape), &device)).into_scalar::<f64>()
    };
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.shuffle(&mut StdRng::seed_from_u64(7));
    let mut worst = 0.0f64;
    for &i in order.iter().take(probes) {
        let (mut plus, mut minus) = (x.to_vec(), x.to_vec());
        plus[i] += eps;
        minus[i] -= eps;
        let numeric = (value(plus) - value(minus)) / (2.0 * eps);
        let analytic = autodiff[i];
        let scale = numeric.abs().max(analytic.abs()).max(1e-6);
        worst = worst.max((numeric - analytic).abs() / scale);
    }
    worst
}

/// The CPU device computing in f64, with autodiff.
fn f64_device() -> Device {
    // Once per process, before the device is first used.
    static CONFIGURED: std::sync::Once = std::sync::Once::new();
    CONFIGURED.call_once(|| {
        Device::flex()
            .configure(burn::tensor::FloatDType::F64)
            .expect("the CPU backend computes in f64");
    });
    Device::flex().autodiff()
}

/// One float parameter's values and, when taken, its gradient (flattened).
struct ParamValues {
    values: Vec<f64>,
    grad: Vec<f64>,
}

/// Collects every float parameter of a module, in visiting order, with its gradient.
struct Collect<'a> {
    grads: &'a burn::tensor::Gradients,
    params: Vec<ParamValues>,
}

impl burn::module::ModuleVisitor for Collect<'_> {
    fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
        let t = param.val();
        let values = t.clone().into_data().convert::<f64>().try_to_vec::<f64>();
        let grad = t.grad(self.grads).map_or_else(
            || vec![0.0; values.as_ref().map_or(0, Vec::len)],
            |g| {
                g.into_data()
                    .convert::<f64>()
                    .try_to_vec::<f64>()
                    .unwrap_or_default()
            },
        );
        self.params.push(ParamValues {
            values: values.unwrap_or_default(),
            grad,
        });
    }
}

/// Replaces element `index` of parameter number `which` (visiting order) by `value`.
struct Set {
    which: usize,
    index: usize,
    value: f64,
    seen: usize,
}

impl burn::module::ModuleMapper for Set {
    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<Tensor<D>>,
    ) -> burn::module::Param<Tensor<D>> {
        let hit = self.seen == self.which;
        self.seen += 1;
        if !hit {
            return param;
        }
        let (index, value) = (self.index, self.value);
        param.map(|t| {
            let shape = t.shape();
            let device = t.device();
            let mut v = t
                .into_data()
                .convert::<f64>()
                .try_to_vec::<f64>()
                .unwrap_or_default();
            v[index] = value;
            Tensor::from_data(TensorData::new(v, shape), &device)
        })
    }
}

/// Max relative error over up to `probes` parameter coordinates (spread over every float
/// parameter) between autodiff and central differences of `f` at `module`'s weights.
fn max_param_error<M: burn::module::Module>(
    module: &M,
    f: &dyn Fn(&M) -> Tensor<1>,
    probes: usize,
) -> f64 {
    // Parameters with gradients on (Burn's `valid` → `train` transition).
    let module = &module.valid().train();
    let grads = f(module).backward();
    let mut collect = Collect {
        grads: &grads,
        params: Vec::new(),
    };
    module.visit(&mut collect);
    let mut coords: Vec<(usize, usize)> = collect
        .params
        .iter()
        .enumerate()
        .flat_map(|(p, v)| (0..v.values.len()).map(move |i| (p, i)))
        .collect();
    coords.shuffle(&mut StdRng::seed_from_u64(17));
    let eps = 1e-5f64;
    let value = |which: usize, index: usize, value: f64| -> f64 {
        let moved = module.clone().map(&mut Set {
            which,
            index,
            value,
            seen: 0,
        });
        f(&moved).into_scalar::<f64>()
    };
    let mut worst = 0.0f64;
    let mut largest = 0.0f64;
    for &(p, i) in coords.iter().take(probes) {
        let x = collect.params[p].values[i];
        let numeric = (value(p, i, x + eps) - value(p, i, x - eps)) / (2.0 * eps);
        let analytic = collect.params[p].grad[i];
        let scale = numeric.abs().max(analytic.abs()).max(1e-6);
        worst = worst.max((numeric - analytic).abs() / scale);
        largest = largest.max(analytic.abs());
    }
    // A check of gradients that are all zero would prove nothing.
    assert!(
        largest > 1e-3,
        "the probed parameters have no gradient ({largest})"
    );
    worst
}

/// `n` inputs 0.025 apart, centred on 0, shuffled: no two within the finite-difference
/// step, so max pooling picks the same element on both sides of it.
fn distinct(n: usize, seed: u64) -> Vec<f64> {
    let mut v: Vec<f64> = (0..n)
        .map(|i| 0.025 * (i as f64 - n as f64 / 2.0))
        .collect();
    v.shuffle(&mut StdRng::seed_from_u64(seed));
    v
}

/// Fixed random weights for the output, so the scalar checked is `sum(w · out)`.
fn weighted<const D: usize>(out: Tensor<D>) -> Tensor<1> {
    let w = Tensor::<D>::random(out.dims(), Distribution::Normal(0.0, 1.0), &out.device());
    // The same weights on every call: seeded right before they are drawn.
    (out * w).sum()
}

fn seeded_weighted<const D: usize>(out: Tensor<D>) -> Tensor<1> {
    let device = out.device();
    device.seed(11);
    weighted(out)
}

#[test]
fn konv_layers_and_losses_pass_gradient_checks() {
    use konv_models::layers::{ChannelMaxPool2d, GlobalMaxPool2d, SeparableConv2dConfig};
    let device = f64_device();
    device.seed(3);
    let mut rows: Vec<(&str, f64)> = Vec::new();

    let sep = SeparableConv2dConfig::new([3, 5], [3, 3]).init(&device);
    rows.push((
        "SeparableConv2d 3→5, 3×3 (Xception)",
        max_rel_error(
            &|x| seeded_weighted(sep.forward(x)),
            &distinct(2 * 3 * 7 * 7, 1),
            [2, 3, 7, 7],
            60,
        ),
    ));
    let pool = ChannelMaxPool2d::new(2);
    rows.push((
        "ChannelMaxPool2d k=2 (Maxout)",
        max_rel_error(
            &|x| seeded_weighted(pool.forward(x)),
            &distinct(2 * 4 * 5 * 5, 2),
            [2, 4, 5, 5],
            60,
        ),
    ));
    rows.push((
        "GlobalMaxPool2d",
        max_rel_error(
            &|x| seeded_weighted(GlobalMaxPool2d.forward(x)),
            &distinct(2 * 3 * 6 * 6, 3),
            [2, 3, 6, 6],
            60,
        ),
    ));
    let lrn = konv_models::layers::paper_lrn();
    rows.push((
        "LocalResponseNorm n=5 (AlexNet, GoogLeNet)",
        max_rel_error(
            &|x| seeded_weighted(lrn.forward(x)),
            &distinct(2 * 7 * 4 * 4, 4),
            [2, 7, 4, 4],
            60,
        ),
    ));
    let lenet = konv_models::build("lenet5", 10, &device).unwrap();
    rows.push((
        "LeNet-5 (paper) to F6: S2/S4 subsampling, C3 table",
        max_rel_error(
            &|x| seeded_weighted(lenet.forward_features(x)),
            // Scaled into the squashing function's working range.
            &distinct(32 * 32, 5)
                .iter()
                .map(|v| v / 8.0)
                .collect::<Vec<_>>(),
            [1, 1, 32, 32],
            60,
        ),
    ));
    // The RBF output alone too (its squared distances are large next to the per-pixel
    // derivatives through the whole network).
    let rbf = konv_models::lenet::Rbf::new(12, 5, &device);
    rows.push((
        "LeNet-5 RBF output (12 → 5)",
        max_rel_error(
            &|x| seeded_weighted(rbf.forward(x)),
            &distinct(3 * 12, 13),
            [3, 12],
            36,
        ),
    ));
    let up = konv_models::layers::init_bilinear(
        burn::nn::conv::ConvTranspose2dConfig::new([3, 3], [4, 4])
            .with_stride([2, 2])
            .with_bias(false)
            .init(&device),
    );
    rows.push((
        "FCN bilinear ConvTranspose2d ×2",
        max_rel_error(
            &|x| seeded_weighted(up.forward(x)),
            &distinct(2 * 3 * 5 * 5, 6),
            [2, 3, 5, 5],
            60,
        ),
    ));
    let targets: Vec<f64> = (0..24).map(|i| f64::from(u8::from(i % 3 == 0))).collect();
    rows.push((
        "sigmoid focal loss (α 0.25, γ 2)",
        max_rel_error(
            &|x| {
                let t =
                    Tensor::<2>::from_data(TensorData::new(targets.clone(), [4, 6]), &x.device());
                konv_train::loss::sigmoid_focal_loss(x, t, 0.25, 2.0).sum()
            },
            &distinct(24, 7),
            [4, 6],
            24,
        ),
    ));
    rows.push((
        "smooth L1 (both branches)",
        max_rel_error(
            &|x| {
                let t = Tensor::<2>::zeros([4, 6], &x.device());
                konv_train::loss::smooth_l1(x, t).sum()
            },
            // |x| < 1 and > 1 both, away from the kink at ±1.
            &distinct(24, 8)
                .iter()
                .map(|v| {
                    if (v.abs() - 1.0).abs() < 0.05 {
                        v * 0.5
                    } else {
                        *v
                    }
                })
                .collect::<Vec<_>>(),
            [4, 6],
            24,
        ),
    ));
    let classes = [1i64, 0, 3, 2];
    let label_smoothing = |x: Tensor<2>| {
        let y = Tensor::<1, Int>::from_data(TensorData::new(classes.to_vec(), [4]), &x.device());
        konv_train::train::classification_loss(x, y, None, 0.1)
            .unwrap()
            .0
    };
    rows.push((
        "cross-entropy with label smoothing 0.1",
        max_rel_error(&label_smoothing, &distinct(16, 9), [4, 4], 16),
    ));
    let weights = konv_train::loss::LossWeights(vec![0.8, 0.2]);
    rows.push((
        "weighted class + box loss (0.8, 0.2; smooth L1)",
        max_rel_error(
            &|x: Tensor<2>| {
                let d = x.device();
                let logits = x.clone().slice([0..4, 0..3]);
                let boxes = x.slice([0..4, 3..7]);
                let y = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 2, 1, 0], [4]), &d);
                let b = Tensor::<2>::zeros([4, 4], &d).add_scalar(0.3);
                konv_train::loss::localization_losses(
                    logits,
                    y,
                    boxes,
                    b,
                    &weights,
                    konv_train::loss::BoxLoss::SmoothL1,
                )
                .expect("two outputs, two weights")
                .total
            },
            &distinct(28, 10),
            [4, 7],
            28,
        ),
    ));

    // The same layers' parameters: the weights autodiff trains.
    let x = |n: usize, shape: [usize; 4], seed: u64, scale: f64| {
        let v: Vec<f64> = distinct(n, seed).iter().map(|v| v * scale).collect();
        Tensor::<4>::from_data(TensorData::new(v, shape), &device)
    };
    let sep_x = x(2 * 3 * 7 * 7, [2, 3, 7, 7], 21, 1.0);
    rows.push((
        "  parameters: SeparableConv2d (depthwise, pointwise)",
        max_param_error(&sep, &|m| seeded_weighted(m.forward(sep_x.clone())), 60),
    ));
    let lenet_x = x(32 * 32, [1, 1, 32, 32], 22, 1.0 / 8.0);
    rows.push((
        "  parameters: LeNet-5 to F6 (S2/S4 coefficients, C3)",
        max_param_error(
            &lenet,
            &|m| seeded_weighted(m.forward_features(lenet_x.clone())),
            80,
        ),
    ));
    // (The RBF centres are frozen prototypes, as in the paper: no parameter to check.)
    let up_x = x(2 * 3 * 5 * 5, [2, 3, 5, 5], 24, 1.0);
    rows.push((
        "  parameters: FCN ConvTranspose2d",
        max_param_error(&up, &|m| seeded_weighted(m.forward(up_x.clone())), 60),
    ));

    // konv's own CPU kernels (konv_models::conv), input and parameters, over the shapes
    // the zoo uses: [c_in, c_out], kernel, stride, padding, dilation, groups, batch, side.
    let mut rows: Vec<(String, f64)> = rows.into_iter().map(|(n, e)| (n.to_string(), e)).collect();
    /// `[c_in, c_out]`, kernel, stride, padding, dilation, groups, batch, side.
    type Case = ([usize; 2], usize, usize, usize, usize, usize, usize, usize);
    let cases: [Case; 9] = [
        ([3, 4], 1, 1, 0, 1, 1, 7, 5),
        ([4, 6], 1, 2, 0, 1, 1, 1, 7),
        ([3, 4], 3, 1, 1, 1, 1, 7, 6),
        ([3, 4], 3, 2, 1, 1, 1, 1, 7),
        ([2, 3], 5, 2, 2, 2, 1, 1, 9),
        ([1, 4], 7, 2, 3, 1, 1, 1, 9),
        ([4, 4], 3, 1, 1, 1, 4, 7, 5),
        ([4, 6], 3, 1, 0, 1, 2, 1, 6),
        ([64, 64], 3, 1, 1, 1, 1, 4, 8), // Winograd F(2×2, 3×3): 64 tiles
    ];
    for (i, ([c_in, c_out], k, s, p, d, g, n, side)) in cases.into_iter().enumerate() {
        let conv = burn::nn::conv::Conv2dConfig::new([c_in, c_out], [k, k])
            .with_stride([s, s])
            .with_padding(burn::nn::PaddingConfig2d::Explicit(p, p, p, p))
            .with_dilation([d, d])
            .with_groups(g)
            .init(&device);
        let shape = [n, c_in, side, side];
        let len = shape.iter().product();
        let input = x(len, shape, 30 + i as u64, 1.0);
        let name =
            format!("konv conv2d {c_in}→{c_out} {k}×{k}/{s} pad {p} dil {d} groups {g}, batch {n}");
        // A convolution is affine in its input, so central differences have no truncation
        // error at any step; the Winograd case sums 16,384 outputs, whose rounding would swamp
        // a 1e-5 step, so its step is 1e-2.
        let eps = if len > 4096 { 1e-2 } else { 1e-5 };
        rows.push((
            name.clone(),
            max_rel_error_with(
                &|x| seeded_weighted(conv.fast_forward(x)),
                &distinct(len, 40 + i as u64),
                shape,
                40,
                eps,
            ),
        ));
        rows.push((
            format!("  parameters: {name}"),
            max_param_error(
                &conv,
                &|m| seeded_weighted(m.fast_forward(input.clone())),
                40,
            ),
        ));
    }
    let bn = burn::nn::BatchNormConfig::new(3).init(&device);
    let bn_shape = [4, 3, 3, 5];
    rows.push((
        "konv batch norm (batch statistics), 4×3×3×5".into(),
        max_rel_error(
            &|x| seeded_weighted(bn.fast_forward(x)),
            &distinct(180, 50),
            bn_shape,
            60,
        ),
    ));
    let bn_x = x(180, bn_shape, 51, 1.0);
    rows.push((
        "  parameters: konv batch norm (γ, β)".into(),
        max_param_error(&bn, &|m| seeded_weighted(m.fast_forward(bn_x.clone())), 6),
    ));

    println!("{:<72} {:>18}", "layer / loss", "max relative error");
    for (name, err) in &rows {
        println!("{name:<72} {err:>18.2e}");
    }
    for (name, err) in rows {
        assert!(
            err < 1e-5,
            "{name}: autodiff and finite differences differ by {err}"
        );
    }
}

/// The check fails when the gradient is wrong: a function whose backward pass is replaced by
/// another's (the output detached from one term) is caught.
#[test]
fn a_wrong_gradient_is_caught() {
    let f = |x: Tensor<1>| {
        let detached = Tensor::from_inner(x.clone().inner()).powf_scalar(2.0);
        (x + detached).sum()
    };
    let err = max_rel_error(&f, &distinct(8, 12), [8], 8);
    assert!(err > 0.1, "a missing gradient term went unnoticed ({err})");
}
