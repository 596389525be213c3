//! konv's CPU convolution (`konv_models::conv`) against Burn's own, forward and all three
//! gradients, over the shapes the zoo and users' models use: kernel sizes 1/3/5/7/11, strides 1
//! and 2, no padding, "same" and asymmetric padding, dilation, groups and depthwise, odd sizes,
//! batch 1 and 7. (The finite-difference checks in f64 are in konv-train's `gradcheck`.)

use burn::backend::ops::ConvOptions;
use burn::prelude::*;
use burn::tensor::{Distribution, TensorData};
use konv_models::conv;

/// One convolution: `[c_in, c_out]`, kernel, stride, padding (before, after) per side,
/// dilation, groups, batch, input `[h, w]`, bias.
struct Case {
    channels: [usize; 2],
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [(usize, usize); 2],
    dilation: [usize; 2],
    groups: usize,
    batch: usize,
    input: [usize; 2],
    bias: bool,
}

fn cases() -> Vec<Case> {
    let c = |channels, k: usize, s: usize, p: usize, groups, batch, input, bias| Case {
        channels,
        kernel: [k, k],
        stride: [s, s],
        padding: [(p, p), (p, p)],
        dilation: [1, 1],
        groups,
        batch,
        input,
        bias,
    };
    let mut all = vec![
        c([3, 8], 1, 1, 0, 1, 7, [9, 11], true),  // 1×1: plain GEMM
        c([5, 6], 1, 2, 0, 1, 1, [9, 9], false),  // 1×1 stride 2 (ResNet downsample)
        c([3, 4], 3, 1, 1, 1, 7, [13, 10], true), // 3×3 same
        c([4, 6], 3, 2, 1, 1, 7, [15, 15], false),
        c([2, 5], 3, 1, 0, 1, 1, [7, 9], true),
        c([3, 4], 5, 1, 2, 1, 7, [12, 11], true),
        c([3, 4], 5, 2, 0, 1, 1, [17, 16], false),
        c([1, 8], 7, 1, 3, 1, 7, [14, 14], true), // Fashion-MNIST CNN's first layer
        c([3, 4], 7, 2, 3, 1, 1, [23, 21], false), // ResNet stem
        c([3, 5], 11, 4, 2, 1, 1, [35, 37], true), // AlexNet stem
        c([4, 6], 3, 1, 1, 2, 7, [9, 8], true),   // groups
        c([6, 6], 3, 1, 1, 6, 7, [10, 9], false), // depthwise
        c([4, 8], 3, 2, 1, 4, 1, [11, 11], true), // depthwise ×2
        c([3, 4], 3, 1, 0, 1, 7, [3, 3], true),   // output 1×1
        c([3, 4], 3, 3, 1, 1, 7, [10, 7], true),  // stride > padding, uneven tails
        c([2, 3], 3, 1, 9, 1, 1, [2, 3], true),   // padding past the image (FCN's pad 100)
        c([2, 3], 3, 2, 6, 1, 7, [1, 2], false),
        // "Same" stride 1 in column tiles of 3 rows (576 × 300 per row), so im2col's
        // contiguous copies start inside the image and end at its bottom edge.
        c([64, 8], 3, 1, 1, 1, 1, [11, 300], true),
        // Small output planes, several images side by side per GEMM: 10×10 from 256 channels
        // (2 images per GEMM, so a thread's 4 or 3 images make groups of 2 + 2 and 2 + 1).
        c([256, 8], 3, 2, 1, 1, 7, [20, 20], true),
        // The weight gradient on small maps with a large dW (2²⁰ weights and more) in GEMMs of
        // several images over all threads: 4,608 × 169 columns per image, so GEMMs of
        // 2 + 2 + 2 + 1 images, the later ones accumulating.
        c([512, 256], 3, 2, 1, 1, 7, [26, 26], false),
        // Stride-1 3×3 on a 7×7 map, where Winograd would have few tiles per thread (with 2
        // threads): the forward pass side by side, the gradients in Winograd.
        c([256, 64], 3, 1, 1, 1, 7, [7, 7], true),
        // The same with a dW of 2²⁰ weights and more (ResNet-18's layer4 at batch 8): the weight
        // gradient side by side too.
        c([512, 256], 3, 1, 1, 1, 7, [7, 7], false),
    ];
    // Winograd F(2×2, 3×3) (stride-1 3×3, 32 channels and more, 64 tiles and more): odd and
    // even sides, narrow and wide rows of tiles, several tile blocks over the threads and one
    // block with a threaded GEMM, padding 0–2 (the input gradient's own padding is 2 − pad)
    // and 3 (forward only), an output of 2×2.
    all.extend([
        c([64, 72], 3, 1, 1, 1, 7, [9, 13], true),
        c([72, 64], 3, 1, 1, 1, 7, [14, 14], false),
        c([64, 80], 3, 1, 0, 1, 7, [9, 8], true),
        c([64, 64], 3, 1, 2, 1, 5, [9, 8], true),
        c([64, 64], 3, 1, 3, 1, 4, [4, 5], false),
        c([65, 64], 3, 1, 0, 1, 64, [4, 4], true),
        c([64, 64], 3, 1, 1, 1, 1, [28, 27], true),
        // 32 channels in (two chunks of 16) and 33 out (one channel past the chunks).
        c([32, 33], 3, 1, 1, 1, 6, [10, 11], true),
        // Rows of 19 tiles (every other case here has fewer than 16).
        c([64, 64], 3, 1, 1, 1, 2, [5, 37], false),
    ]);
    // Direct kernels (stride 1, at most 16 channels in, f32 with AVX-512 or AVX2): ResNet-20's first
    // stage (two blocks of 8 outputs) and the Fashion-MNIST CNN's first layer at their sizes;
    // batch 1 (the output blocks over the threads) with 10 outputs (a part block); 5×5 with 3
    // outputs (weight-gradient blocks of 9, 9 and 7 taps, one output left after the pair);
    // padding that crops (the last input rows and columns unread).
    all.extend([
        c([16, 16], 3, 1, 1, 1, 7, [28, 28], true),
        c([1, 64], 7, 1, 3, 1, 2, [28, 28], true),
        c([16, 10], 3, 1, 1, 1, 1, [9, 13], false),
        c([5, 3], 5, 1, 2, 1, 3, [6, 50], true),
    ]);
    all.push(Case {
        padding: [(2, 0), (1, 0)],
        ..c([4, 8], 3, 1, 0, 1, 2, [7, 6], true)
    });
    all.push(Case {
        padding: [(0, 2), (2, 1)],
        ..c([64, 64], 3, 1, 0, 1, 6, [6, 7], true)
    });
    // Asymmetric padding ("same" with an even kernel) and dilation.
    all.push(Case {
        padding: [(0, 1), (1, 0)],
        ..c([3, 4], 2, 1, 0, 1, 7, [8, 9], true)
    });
    all.push(Case {
        dilation: [2, 2],
        ..c([3, 4], 3, 1, 2, 1, 7, [12, 13], true)
    });
    all.push(Case {
        dilation: [2, 3],
        ..c([3, 4], 3, 1, 2, 1, 7, [12, 13], true)
    });
    all
}

fn random(shape: Vec<usize>, device: &Device) -> Tensor<1> {
    let n: usize = shape.iter().product();
    Tensor::<1>::random([n], Distribution::Normal(0.0, 1.0), device)
}

/// Fixed weights for the output, so both sides differentiate the same scalar `sum(r · y)`
/// (not drawn from Burn's one global generator, which the other tests of this binary use at
/// the same time).
fn fixed_weights(dims: [usize; 4], device: &Device) -> Tensor<4> {
    let n: usize = dims.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 23) as f32 / 7.0 - 1.5)
        .collect();
    Tensor::<4>::from_data(TensorData::new(values, dims), device)
}

fn close(what: &str, ours: Tensor<4>, theirs: Tensor<4>) {
    let (ours, theirs) = (ours.into_data(), theirs.into_data());
    assert_eq!(ours.shape(), theirs.shape(), "{what}: shape");
    let a: Vec<f32> = ours.try_to_vec().expect("f32");
    let b: Vec<f32> = theirs.try_to_vec().expect("f32");
    let scale = b.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(
        worst <= 1e-5 * scale.max(1.0) * 10.0,
        "{what}: max |konv − burn| = {worst} (max |burn| = {scale})"
    );
}

#[test]
fn konv_convolution_equals_burns_forward_and_gradients() {
    let device = Device::flex().autodiff();
    device.seed(5);
    for (i, case) in cases().into_iter().enumerate() {
        let [c_in, c_out] = case.channels;
        let name = format!(
            "case {i}: {c_in}→{c_out}, kernel {:?}, stride {:?}, padding {:?}, dilation {:?}, groups {}, batch {}, input {:?}",
            case.kernel,
            case.stride,
            case.padding,
            case.dilation,
            case.groups,
            case.batch,
            case.input
        );
        let x_shape = [case.batch, c_in, case.input[0], case.input[1]];
        let w_shape = [c_out, c_in / case.groups, case.kernel[0], case.kernel[1]];
        let x = random(x_shape.to_vec(), &device).reshape(x_shape);
        let w = random(w_shape.to_vec(), &device).reshape(w_shape);
        let b = case.bias.then(|| random(vec![c_out], &device));
        let options =
            ConvOptions::new_with_padding(case.stride, case.padding, case.dilation, case.groups);

        // The same scalar through both: sum(r · conv(x)).
        let run = |ours: bool| {
            let (x, w) = (x.clone().require_grad(), w.clone().require_grad());
            let b = b.clone().map(|b| b.require_grad());
            let out = if ours {
                conv::conv2d(x.clone(), w.clone(), b.clone(), options.clone())
            } else {
                burn::tensor::module::conv2d(x.clone(), w.clone(), b.clone(), options.clone())
            };
            let r = fixed_weights(out.dims(), &device);
            let grads = (out.clone() * r).sum().backward();
            let grad = |t: &Tensor<4>| t.grad(&grads).expect("a gradient");
            let db = b.as_ref().map(|b| {
                let g = b.grad(&grads).expect("a bias gradient");
                g.reshape([1, 1, 1, c_out])
            });
            (out.inner(), grad(&x), grad(&w), db)
        };
        let (y, dx, dw, db) = run(true);
        let (y_ref, dx_ref, dw_ref, db_ref) = run(false);
        close(&format!("{name}: output"), y, y_ref);
        close(&format!("{name}: input gradient"), dx, dx_ref);
        close(&format!("{name}: weight gradient"), dw, dw_ref);
        if let (Some(db), Some(db_ref)) = (db, db_ref) {
            close(&format!("{name}: bias gradient"), db, db_ref);
        }
    }
}

#[test]
fn a_strided_view_is_convolved_as_its_values() {
    // A transposed (non-contiguous) input gives the same result as its contiguous copy.
    let device = Device::flex();
    let x = Tensor::<4>::from_data(
        TensorData::new(
            (0..2 * 3 * 5 * 6)
                .map(|v| v as f32 * 0.1)
                .collect::<Vec<_>>(),
            [2, 3, 6, 5],
        ),
        &device,
    )
    .swap_dims(2, 3);
    let w = Tensor::<4>::ones([4, 3, 3, 3], &device);
    let options = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
    let ours = conv::conv2d(x.clone(), w.clone(), None, options.clone());
    let burn = burn::tensor::module::conv2d(x, w, None, options);
    close("strided view", ours, burn);
}

/// konv's batch norm against Burn's `BatchNorm::forward`, alone and with the ReLU (and the
/// residual added before it) that `fast_forward_relu` and `fast_forward_add_relu` fuse into
/// it: outputs, the gradients of the input, the residual, gamma and beta, the running
/// statistics, and inference with them.
#[test]
fn konv_batch_norm_equals_burns_in_training_and_inference() {
    use burn::nn::BatchNormConfig;
    use burn::tensor::activation::relu;
    use konv_models::conv::FastBatchNorm;
    let device = Device::flex().autodiff();
    device.seed(6);
    for (shape, channels) in [
        ([7usize, 5, 9, 11], 5usize),
        ([1, 3, 4, 4], 3),
        ([4, 16, 1, 1], 16),
    ] {
        // 0: batch norm alone, 1: + ReLU, 2: + residual + ReLU.
        for fused in 0..3 {
            let make = || {
                let mut bn = BatchNormConfig::new(channels).init(&device);
                bn.gamma = bn
                    .gamma
                    .map(|g| (g.add_scalar(0.5) * 1.5).detach().require_grad());
                bn.beta = bn.beta.map(|b| b.add_scalar(-0.25).detach().require_grad());
                bn
            };
            let (ours_bn, burn_bn) = (make(), make());
            let x = random(shape.to_vec(), &device)
                .reshape(shape)
                .mul_scalar(2.0)
                .add_scalar(0.7);
            let residual = random(shape.to_vec(), &device).reshape(shape);
            let run = |bn: &burn::nn::BatchNorm, ours: bool| {
                let x = x.clone().require_grad();
                let res = residual.clone().require_grad();
                let out = match (fused, ours) {
                    (0, true) => bn.fast_forward(x.clone()),
                    (0, false) => bn.forward(x.clone()),
                    (1, true) => bn.fast_forward_relu(x.clone()),
                    (1, false) => relu(bn.forward(x.clone())),
                    (_, true) => bn.fast_forward_add_relu(x.clone(), res.clone()),
                    (_, false) => relu(bn.forward(x.clone()) + res.clone()),
                };
                let r = fixed_weights(out.dims(), &device);
                let grads = (out.clone() * r).sum().backward();
                let as4 = |t: Tensor<1>| t.reshape([1, 1, 1, channels]);
                (
                    [
                        out.inner(),
                        x.grad(&grads).expect("dx"),
                        as4(bn.gamma.grad(&grads).expect("dgamma")),
                        as4(bn.beta.grad(&grads).expect("dbeta")),
                    ],
                    res.grad(&grads),
                )
            };
            let (ours, ours_res) = run(&ours_bn, true);
            let (theirs, theirs_res) = run(&burn_bn, false);
            let what = format!("batch norm {shape:?}, fused {fused}");
            for ((a, b), part) in ours.into_iter().zip(theirs).zip([
                "output",
                "input gradient",
                "gamma gradient",
                "beta gradient",
            ]) {
                close(&format!("{what}: {part}"), a, b);
            }
            match (ours_res, theirs_res) {
                (Some(a), Some(b)) => close(&format!("{what}: residual gradient"), a, b),
                (None, None) => assert!(fused < 2, "{what}: no residual gradient"),
                _ => panic!("{what}: a residual gradient on one side only"),
            }
            let stat = |t: Tensor<1>| t.reshape([1, 1, 1, channels]).inner();
            close(
                &format!("{what}: running mean"),
                stat(ours_bn.running_mean.value()),
                stat(burn_bn.running_mean.value()),
            );
            close(
                &format!("{what}: running variance"),
                stat(ours_bn.running_var.value()),
                stat(burn_bn.running_var.value()),
            );
            // Inference (no autodiff): the running statistics.
            let plain = Device::flex();
            let (ours_bn, burn_bn) = (ours_bn.valid(), burn_bn.valid());
            let x = x.inner().to_device(&plain);
            let res = residual.inner().to_device(&plain);
            let (a, b) = match fused {
                0 => (ours_bn.fast_forward(x.clone()), burn_bn.forward(x)),
                1 => (
                    ours_bn.fast_forward_relu(x.clone()),
                    relu(burn_bn.forward(x)),
                ),
                _ => (
                    ours_bn.fast_forward_add_relu(x.clone(), res.clone()),
                    relu(burn_bn.forward(x) + res),
                ),
            };
            close(&format!("{what}: inference"), a, b);
        }
    }
}

/// konv's max pool (`FastMaxPool2d`) against Burn's `MaxPool2d::forward`: values and input
/// gradients bit for bit, over the pools the zoo uses (2×2/2, ResNet's 3×3/2 pad 1, GoogLeNet's
/// 3×3/1 pad 1), dilation, "same" padding, odd sizes, ties (ReLU's zeros) and NaN.
#[test]
fn konv_max_pool_equals_burns_values_and_gradients() {
    use burn::nn::PaddingConfig2d;
    use burn::nn::pool::MaxPool2dConfig;
    use conv::FastMaxPool2d;
    let device = Device::flex().autodiff();
    device.seed(9);
    let pools = [
        MaxPool2dConfig::new([2, 2]).with_strides([2, 2]),
        MaxPool2dConfig::new([3, 3])
            .with_strides([2, 2])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)),
        MaxPool2dConfig::new([3, 3])
            .with_strides([1, 1])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)),
        MaxPool2dConfig::new([3, 2])
            .with_strides([1, 2])
            .with_dilation([2, 1]),
        MaxPool2dConfig::new([3, 3])
            .with_strides([1, 1])
            .with_padding(PaddingConfig2d::Same),
    ];
    for (i, config) in pools.iter().enumerate() {
        let pool = config.init();
        for (shape, relu) in [
            ([3, 5, 9, 11], false),
            ([2, 4, 8, 8], true),
            ([1, 1, 5, 4], false),
        ] {
            let x = random(shape.to_vec(), &device).reshape(shape);
            let x = if relu { x.clamp_min(0.0) } else { x };
            let run = |ours: bool| {
                let x = x.clone().require_grad();
                let out = if ours {
                    pool.fast_forward(x.clone())
                } else {
                    pool.forward(x.clone())
                };
                let r = fixed_weights(out.dims(), &device);
                let grads = (out.clone() * r).sum().backward();
                (
                    out.inner().into_data(),
                    x.grad(&grads).expect("a gradient").into_data(),
                )
            };
            let ((y, dx), (y_ref, dx_ref)) = (run(true), run(false));
            assert_eq!(y, y_ref, "pool {i}, input {shape:?}: values");
            assert_eq!(dx, dx_ref, "pool {i}, input {shape:?}: input gradient");
        }
    }
    // NaN wins its window, as in Burn and PyTorch.
    let x = Tensor::<4>::from_data(
        TensorData::new(vec![1.0f32, f32::NAN, 3.0, 2.0], [1, 1, 2, 2]),
        &Device::flex(),
    );
    let y = MaxPool2dConfig::new([2, 2]).init().fast_forward(x);
    let v: Vec<f32> = y.into_data().try_to_vec().expect("f32");
    assert!(v[0].is_nan(), "{v:?}");
}
