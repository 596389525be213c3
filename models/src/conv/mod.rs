//! konv's own 2-D convolution on the CPU, as a Burn backend extension.
//!
//! Burn 0.22's CPU backend (Flex) runs every 2-D convolution as a 3-D one after copying the
//! input to NHWC, and has no backward of its own: Burn's generic fallback computes the weight
//! gradient as a convolution whose kernel is the whole output map, and the input gradient as a
//! transposed convolution with a scalar scatter. Here all three are GEMMs on the `gemm` crate's
//! micro-kernels, threaded over the batch ([`cpu`] has the layout):
//!
//! - [`KonvConvBackend`] is the extension trait (`#[backend_extension]`, the pattern of
//!   `burn-signal`): Flex runs [`cpu`]'s kernels in `f32` and `f64` (other float types fall back
//!   to Burn's convolution), and `Autodiff<B>` records a backward that calls them.
//! - [`conv2d`] is the function: on a Flex tensor (tracked or not) it takes the extension, on
//!   any other device (wgpu, CUDA, NdArray) Burn's own `conv2d`. A model runs unchanged on
//!   either.
//! - [`FastConv2d`] gives `burn::nn::conv::Conv2d` a `fast_forward`, the same computation as
//!   its `forward` (same padding rules, same parameters, so the same record keys). Every zoo
//!   model calls it; a user's own model can too:
//!
//! ```
//! use burn::nn::conv::Conv2dConfig;
//! use burn::prelude::*;
//! use konv_models::conv::FastConv2d;
//!
//! let device = Device::flex();
//! let conv = Conv2dConfig::new([3, 8], [3, 3]).init(&device);
//! let x = Tensor::<4>::ones([2, 3, 16, 16], &device);
//! let fast = conv.fast_forward(x.clone());
//! let burn = conv.forward(x);
//! assert_eq!(fast.dims(), [2, 8, 14, 14]);
//! fast.into_data().assert_approx_eq::<f32>(&burn.into_data(), Default::default());
//! ```

pub mod cpu;
pub mod direct;
pub mod pool;
pub mod simd;
pub mod winograd;

pub use pool::PoolOptions;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, OpsPrep, Tracked};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::flex::{Flex, FlexTensor, Layout};
use burn::backend::ops::{ActivationOps, ConvOptions, ModuleOps};
use burn::backend::tensor::FloatTensor;
use burn::backend::{
    AutodiffBackend, Backend, Bytes, DType, Dispatch, DispatchTensorKind, TensorMetadata,
    backend_extension,
};
use burn::nn::BatchNorm;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::nn::pool::MaxPool2d;
use burn::prelude::*;

/// Backends that run konv's convolution kernels: Flex directly, and `Autodiff` over it with a
/// backward that calls them.
#[backend_extension(Flex, Autodiff)]
pub trait KonvConvBackend: Backend {
    /// 2-D convolution without bias: `x` `[n, c_in, h, w]`, `weight`
    /// `[c_out, c_in/groups, kh, kw]`.
    fn konv_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self>;

    /// 2-D convolution plus `bias` `[c_out]` (one method per case: the extension macro of
    /// Burn 0.22.1 does not route `Option` tensor arguments).
    fn konv_conv2d_bias(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self>;

    /// The gradient of [`konv_conv2d`](Self::konv_conv2d) with respect to `x`.
    fn konv_conv2d_x_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self>;

    /// The gradient of [`konv_conv2d`](Self::konv_conv2d) with respect to `weight`.
    fn konv_conv2d_weight_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self>;

    /// Batch normalization of `x` `[n, c, ...]` with given statistics (inference).
    fn konv_batch_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self>;

    /// Batch normalization of `x` `[n, c, ...]` with the batch's own statistics: returns the
    /// output, the mean and the biased variance (Burn's `batch_norm_train`).
    fn konv_batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// Gradients of [`konv_batch_norm_train`](Self::konv_batch_norm_train) with respect to
    /// `x`, `gamma` and `beta`.
    fn konv_batch_norm_train_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        epsilon: f64,
        output_grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// `relu(batch_norm(x) + residual)` with given statistics (inference), in one pass:
    /// ResNet's block ending. `residual` has `x`'s shape, or no elements for `relu(batch_norm(x))`
    /// (the extension macro does not route `Option` tensors).
    fn konv_batch_norm_relu(
        x: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self>;

    /// [`konv_batch_norm_train`](Self::konv_batch_norm_train) with the ReLU (and the residual
    /// added before it) in its output pass, as in
    /// [`konv_batch_norm_relu`](Self::konv_batch_norm_relu).
    fn konv_batch_norm_train_relu(
        x: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// ReLU's backward from its `output`: `output_grad` where the output is positive, 0 where
    /// it is not (Burn's `relu_backward`).
    fn konv_relu_backward(
        output: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// 2-D max pooling of `x` `[n, c, h, w]` (symmetric padding, floor rounding).
    fn konv_max_pool2d(x: FloatTensor<Self>, options: PoolOptions) -> FloatTensor<Self>;

    /// The gradient of [`konv_max_pool2d`](Self::konv_max_pool2d) with respect to `x`.
    fn konv_max_pool2d_backward(
        x: FloatTensor<Self>,
        options: PoolOptions,
        output_grad: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

/// A Flex tensor's values as one contiguous slice (copied only when the tensor is a strided
/// view).
fn contiguous<T: burn::tensor::Element + bytemuck::Pod>(tensor: FlexTensor) -> FlexTensor {
    if tensor.as_slice::<T>().is_some() {
        tensor
    } else {
        tensor.to_contiguous()
    }
}

fn values<T: burn::tensor::Element + bytemuck::Pod>(tensor: &FlexTensor) -> &[T] {
    tensor
        .as_slice::<T>()
        .expect("konv conv2d: tensor made contiguous with the dtype it was matched on")
}

fn dims4(tensor: &FlexTensor) -> [usize; 4] {
    let shape = tensor.shape();
    assert_eq!(
        shape.num_dims(),
        4,
        "conv2d: expected a 4-D tensor, got {shape:?}"
    );
    [shape[0], shape[1], shape[2], shape[3]]
}

fn tensor<T: burn::tensor::Element + bytemuck::Pod>(values: Vec<T>, shape: &[usize]) -> FlexTensor {
    FlexTensor::new(
        Bytes::from_elems(values),
        Layout::contiguous(Shape::from(shape.to_vec())),
        T::dtype(),
    )
}

fn flex_forward<T: cpu::Element + burn::tensor::Element + bytemuck::Pod>(
    x: FlexTensor,
    weight: FlexTensor,
    bias: Option<FlexTensor>,
    options: &ConvOptions<2>,
) -> FlexTensor {
    let (x, weight) = (contiguous::<T>(x), contiguous::<T>(weight));
    let bias = bias.map(contiguous::<T>);
    let g = cpu::Geometry::new(dims4(&x), dims4(&weight), options);
    let out = cpu::forward(
        &g,
        values::<T>(&x),
        values::<T>(&weight),
        bias.as_ref().map(values::<T>),
    );
    tensor(out, &g.output_shape())
}

fn flex_x_backward<T: cpu::Element + burn::tensor::Element + bytemuck::Pod>(
    x: &FlexTensor,
    weight: FlexTensor,
    grad: FlexTensor,
    options: &ConvOptions<2>,
) -> FlexTensor {
    let (weight, grad) = (contiguous::<T>(weight), contiguous::<T>(grad));
    let x_dims = dims4(x);
    let g = cpu::Geometry::new(x_dims, dims4(&weight), options);
    let dx = cpu::input_grad(&g, values::<T>(&weight), values::<T>(&grad));
    tensor(dx, &x_dims)
}

fn flex_weight_backward<T: cpu::Element + burn::tensor::Element + bytemuck::Pod>(
    x: FlexTensor,
    weight: &FlexTensor,
    grad: FlexTensor,
    options: &ConvOptions<2>,
) -> FlexTensor {
    let (x, grad) = (contiguous::<T>(x), contiguous::<T>(grad));
    let w_dims = dims4(weight);
    let g = cpu::Geometry::new(dims4(&x), w_dims, options);
    let dw = cpu::weight_grad(&g, values::<T>(&x), values::<T>(&grad));
    tensor(dw, &w_dims)
}

fn flex_conv2d(
    x: FlexTensor,
    weight: FlexTensor,
    bias: Option<FlexTensor>,
    options: ConvOptions<2>,
) -> FlexTensor {
    let dtype = shared_float(&[Some(&x), Some(&weight), bias.as_ref()]);
    match dtype {
        Some(DType::F32) => flex_forward::<f32>(x, weight, bias, &options),
        Some(DType::F64) => flex_forward::<f64>(x, weight, bias, &options),
        _ => <Flex as ModuleOps<Flex>>::conv2d(x, weight, bias, options),
    }
}

/// The float type konv's kernels run in when every given tensor has it (`f32` or `f64`);
/// `None` sends the operation to Burn's own kernel (other float types, or mixed ones).
fn shared_float(tensors: &[Option<&FlexTensor>]) -> Option<DType> {
    let mut dtypes = tensors.iter().flatten().map(|t| t.dtype());
    let first = dtypes.next()?;
    (matches!(first, DType::F32 | DType::F64) && dtypes.all(|d| d == first)).then_some(first)
}

/// `[channels, elements per channel per image]` of an `[n, c, ...]` tensor.
fn channels_plane(x: &FlexTensor) -> [usize; 2] {
    let shape = x.shape();
    assert!(
        shape.num_dims() >= 2,
        "batch_norm: expected [n, c, ...], got {shape:?}"
    );
    let channels = shape[1];
    [channels, shape.iter().skip(2).product()]
}

/// A fused batch norm's residual when there is one (an empty tensor stands for none), for
/// [`shared_float`]: a residual of another float type takes Burn's path, like the other inputs.
fn given(residual: &FlexTensor) -> Option<&FlexTensor> {
    (residual.shape().num_elements() > 0).then_some(residual)
}

/// The ReLU epilogue's residual: `None` for an empty tensor (none), checked against `x`.
fn residual_of<T: burn::tensor::Element + bytemuck::Pod>(
    residual: Option<FlexTensor>,
    x: &FlexTensor,
) -> Option<FlexTensor> {
    let residual = residual.filter(|r| given(r).is_some())?;
    assert_eq!(
        residual.shape(),
        x.shape(),
        "batch_norm: the residual's shape differs from the input's"
    );
    Some(contiguous::<T>(residual))
}

/// The epilogue of a fused batch norm: `relu` with the `residual` (already checked), or none.
fn epilogue<'a, T: burn::tensor::Element + bytemuck::Pod>(
    relu: bool,
    residual: &'a Option<FlexTensor>,
) -> cpu::Epilogue<'a, T> {
    if relu {
        cpu::Epilogue::Relu(residual.as_ref().map(values::<T>))
    } else {
        cpu::Epilogue::None
    }
}

fn flex_batch_norm<T: cpu::Float + burn::tensor::Element + bytemuck::Pod>(
    x: FlexTensor,
    gamma: FlexTensor,
    beta: FlexTensor,
    epsilon: f64,
    (relu, residual): (bool, Option<FlexTensor>),
) -> (FlexTensor, FlexTensor, FlexTensor) {
    let (x, gamma, beta) = (
        contiguous::<T>(x),
        contiguous::<T>(gamma),
        contiguous::<T>(beta),
    );
    let residual = residual_of::<T>(residual, &x);
    let dims = channels_plane(&x);
    let (out, mean, var) = cpu::batch_norm_train(
        values::<T>(&x),
        dims,
        values::<T>(&gamma),
        values::<T>(&beta),
        epsilon,
        epilogue(relu, &residual),
    );
    let shape: Vec<usize> = x.shape().iter().copied().collect();
    (
        tensor(out, &shape),
        tensor(mean, &[dims[0]]),
        tensor(var, &[dims[0]]),
    )
}

fn flex_batch_norm_inference<T: cpu::Float + burn::tensor::Element + bytemuck::Pod>(
    x: FlexTensor,
    params: [FlexTensor; 4],
    epsilon: f64,
    (relu, residual): (bool, Option<FlexTensor>),
) -> FlexTensor {
    let x = contiguous::<T>(x);
    let [gamma, beta, mean, var] = params.map(contiguous::<T>);
    let residual = residual_of::<T>(residual, &x);
    let dims = channels_plane(&x);
    let out = cpu::batch_norm(
        values::<T>(&x),
        dims,
        [&gamma, &beta, &mean, &var].map(values::<T>),
        epsilon,
        epilogue(relu, &residual),
    );
    let shape: Vec<usize> = x.shape().iter().copied().collect();
    tensor(out, &shape)
}

/// `relu(y + residual)`, or `relu(y)` for an empty residual, in Burn's ops (the fallbacks of
/// the fused batch norms).
fn add_relu<B: Backend>(y: FloatTensor<B>, residual: FloatTensor<B>) -> FloatTensor<B> {
    let y = if residual.shape().num_elements() == 0 {
        y
    } else {
        B::float_add(y, residual)
    };
    B::relu(y)
}

/// The values of `tensor` to write over, when no other tensor shares its memory (contiguous
/// from `contiguous`).
fn exclusive<T: burn::tensor::Element + bytemuck::Pod>(
    tensor: &mut FlexTensor,
) -> Option<&mut [T]> {
    let (start, end) = tensor.layout().contiguous_offsets()?;
    tensor
        .try_storage_mut::<T>()
        .and_then(|values| values.get_mut(start..end))
}

fn flex_relu_backward<T: cpu::Float + burn::tensor::Element + bytemuck::Pod>(
    output: FlexTensor,
    grad: FlexTensor,
) -> FlexTensor {
    let (output, mut grad) = (contiguous::<T>(output), contiguous::<T>(grad));
    if let Some(own) = exclusive::<T>(&mut grad) {
        cpu::relu_backward_in_place(values::<T>(&output), own);
        return grad;
    }
    let shape: Vec<usize> = grad.shape().iter().copied().collect();
    tensor(
        cpu::relu_backward(values::<T>(&output), values::<T>(&grad)),
        &shape,
    )
}

fn flex_batch_norm_backward<T: cpu::Float + burn::tensor::Element + bytemuck::Pod>(
    x: FlexTensor,
    gamma: FlexTensor,
    [mean, variance]: [FlexTensor; 2],
    epsilon: f64,
    grad: FlexTensor,
) -> (FlexTensor, FlexTensor, FlexTensor) {
    let (x, gamma, mut grad) = (
        contiguous::<T>(x),
        contiguous::<T>(gamma),
        contiguous::<T>(grad),
    );
    let (mean, variance) = (contiguous::<T>(mean), contiguous::<T>(variance));
    let dims = channels_plane(&x);
    if let Some(own) = exclusive::<T>(&mut grad) {
        let (dgamma, dbeta) = cpu::batch_norm_train_backward_in_place(
            values::<T>(&x),
            dims,
            values::<T>(&gamma),
            (values::<T>(&mean), values::<T>(&variance)),
            epsilon,
            own,
        );
        return (grad, tensor(dgamma, &[dims[0]]), tensor(dbeta, &[dims[0]]));
    }
    let (dx, dgamma, dbeta) = cpu::batch_norm_train_backward(
        values::<T>(&x),
        dims,
        values::<T>(&gamma),
        (values::<T>(&mean), values::<T>(&variance)),
        epsilon,
        values::<T>(&grad),
    );
    let shape: Vec<usize> = x.shape().iter().copied().collect();
    (
        tensor(dx, &shape),
        tensor(dgamma, &[dims[0]]),
        tensor(dbeta, &[dims[0]]),
    )
}

fn flex_max_pool<T: cpu::Element + PartialOrd + burn::tensor::Element + bytemuck::Pod>(
    x: FlexTensor,
    options: &PoolOptions,
    neg_inf: T,
) -> FlexTensor {
    let x = contiguous::<T>(x);
    let [n, c, h, w] = dims4(&x);
    let out = pool::max_pool(values::<T>(&x), [n * c, h, w], options, neg_inf);
    let [oh, ow] = options.output([h, w]).unwrap_or([0, 0]);
    tensor(out, &[n, c, oh, ow])
}

fn flex_max_pool_backward<T: cpu::Element + PartialOrd + burn::tensor::Element + bytemuck::Pod>(
    x: FlexTensor,
    options: &PoolOptions,
    grad: FlexTensor,
) -> FlexTensor {
    let (x, grad) = (contiguous::<T>(x), contiguous::<T>(grad));
    let [n, c, h, w] = dims4(&x);
    let dx = pool::max_pool_backward(values::<T>(&x), [n * c, h, w], options, values::<T>(&grad));
    tensor(dx, &[n, c, h, w])
}

/// Burn's own max-pool backward (through its indices), on any backend: the fallback for float
/// types konv's kernels do not take, and the second-order use under autodiff.
fn burn_max_pool_backward<B: Backend>(
    x: FloatTensor<B>,
    o: PoolOptions,
    grad: FloatTensor<B>,
) -> FloatTensor<B> {
    let with = <B as ModuleOps<B>>::max_pool2d_with_indices(
        x.clone(),
        o.kernel,
        o.stride,
        o.padding,
        o.dilation,
        false,
        burn::tensor::IntDType::I64,
    );
    <B as ModuleOps<B>>::max_pool2d_with_indices_backward(
        x,
        o.kernel,
        o.stride,
        o.padding,
        o.dilation,
        false,
        grad,
        with.indices,
    )
    .x_grad
}

impl KonvConvBackend for Flex {
    fn konv_max_pool2d(x: FlexTensor, o: PoolOptions) -> FlexTensor {
        match shared_float(&[Some(&x)]) {
            Some(DType::F32) => flex_max_pool::<f32>(x, &o, f32::NEG_INFINITY),
            Some(DType::F64) => flex_max_pool::<f64>(x, &o, f64::NEG_INFINITY),
            _ => <Flex as ModuleOps<Flex>>::max_pool2d(
                x, o.kernel, o.stride, o.padding, o.dilation, false,
            ),
        }
    }

    fn konv_max_pool2d_backward(x: FlexTensor, o: PoolOptions, grad: FlexTensor) -> FlexTensor {
        match shared_float(&[Some(&x), Some(&grad)]) {
            Some(DType::F32) => flex_max_pool_backward::<f32>(x, &o, grad),
            Some(DType::F64) => flex_max_pool_backward::<f64>(x, &o, grad),
            _ => burn_max_pool_backward::<Flex>(x, o, grad),
        }
    }

    fn konv_conv2d(x: FlexTensor, weight: FlexTensor, options: ConvOptions<2>) -> FlexTensor {
        flex_conv2d(x, weight, None, options)
    }

    fn konv_conv2d_bias(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        options: ConvOptions<2>,
    ) -> FlexTensor {
        flex_conv2d(x, weight, Some(bias), options)
    }

    fn konv_conv2d_x_backward(
        x: FlexTensor,
        weight: FlexTensor,
        output_grad: FlexTensor,
        options: ConvOptions<2>,
    ) -> FlexTensor {
        match shared_float(&[Some(&weight), Some(&output_grad)]) {
            Some(DType::F32) => flex_x_backward::<f32>(&x, weight, output_grad, &options),
            Some(DType::F64) => flex_x_backward::<f64>(&x, weight, output_grad, &options),
            _ => <Flex as ModuleOps<Flex>>::conv2d_x_backward(x, weight, output_grad, options),
        }
    }

    fn konv_conv2d_weight_backward(
        x: FlexTensor,
        weight: FlexTensor,
        output_grad: FlexTensor,
        options: ConvOptions<2>,
    ) -> FlexTensor {
        match shared_float(&[Some(&x), Some(&output_grad)]) {
            Some(DType::F32) => flex_weight_backward::<f32>(x, &weight, output_grad, &options),
            Some(DType::F64) => flex_weight_backward::<f64>(x, &weight, output_grad, &options),
            _ => <Flex as ModuleOps<Flex>>::conv2d_weight_backward(x, weight, output_grad, options),
        }
    }

    fn konv_batch_norm(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        mean: FlexTensor,
        variance: FlexTensor,
        epsilon: f64,
    ) -> FlexTensor {
        let all = [&x, &gamma, &beta, &mean, &variance].map(Some);
        match shared_float(&all) {
            Some(DType::F32) => flex_batch_norm_inference::<f32>(
                x,
                [gamma, beta, mean, variance],
                epsilon,
                (false, None),
            ),
            Some(DType::F64) => flex_batch_norm_inference::<f64>(
                x,
                [gamma, beta, mean, variance],
                epsilon,
                (false, None),
            ),
            _ => <Flex as ModuleOps<Flex>>::batch_norm(x, gamma, beta, mean, variance, epsilon),
        }
    }

    fn konv_batch_norm_relu(
        x: FlexTensor,
        residual: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        mean: FlexTensor,
        variance: FlexTensor,
        epsilon: f64,
    ) -> FlexTensor {
        let dtype = shared_float(&[
            Some(&x),
            Some(&gamma),
            Some(&beta),
            Some(&mean),
            Some(&variance),
            given(&residual),
        ]);
        let params = [gamma, beta, mean, variance];
        match dtype {
            Some(DType::F32) => {
                flex_batch_norm_inference::<f32>(x, params, epsilon, (true, Some(residual)))
            }
            Some(DType::F64) => {
                flex_batch_norm_inference::<f64>(x, params, epsilon, (true, Some(residual)))
            }
            _ => {
                let [gamma, beta, mean, variance] = params;
                let y =
                    <Flex as ModuleOps<Flex>>::batch_norm(x, gamma, beta, mean, variance, epsilon);
                add_relu::<Flex>(y, residual)
            }
        }
    }

    fn konv_batch_norm_train_relu(
        x: FlexTensor,
        residual: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        epsilon: f64,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        match shared_float(&[Some(&x), Some(&gamma), Some(&beta), given(&residual)]) {
            Some(DType::F32) => {
                flex_batch_norm::<f32>(x, gamma, beta, epsilon, (true, Some(residual)))
            }
            Some(DType::F64) => {
                flex_batch_norm::<f64>(x, gamma, beta, epsilon, (true, Some(residual)))
            }
            _ => {
                let r = <Flex as ModuleOps<Flex>>::batch_norm_train(x, gamma, beta, epsilon);
                (add_relu::<Flex>(r.output, residual), r.mean, r.variance)
            }
        }
    }

    fn konv_relu_backward(output: FlexTensor, output_grad: FlexTensor) -> FlexTensor {
        match shared_float(&[Some(&output), Some(&output_grad)]) {
            Some(DType::F32) => flex_relu_backward::<f32>(output, output_grad),
            Some(DType::F64) => flex_relu_backward::<f64>(output, output_grad),
            _ => <Flex as ActivationOps<Flex>>::relu_backward(output, output_grad),
        }
    }

    fn konv_batch_norm_train(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        epsilon: f64,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        match shared_float(&[Some(&x), Some(&gamma), Some(&beta)]) {
            Some(DType::F32) => flex_batch_norm::<f32>(x, gamma, beta, epsilon, (false, None)),
            Some(DType::F64) => flex_batch_norm::<f64>(x, gamma, beta, epsilon, (false, None)),
            _ => {
                let r = <Flex as ModuleOps<Flex>>::batch_norm_train(x, gamma, beta, epsilon);
                (r.output, r.mean, r.variance)
            }
        }
    }

    fn konv_batch_norm_train_backward(
        x: FlexTensor,
        gamma: FlexTensor,
        mean: FlexTensor,
        variance: FlexTensor,
        epsilon: f64,
        output_grad: FlexTensor,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let all = [&x, &gamma, &mean, &variance, &output_grad].map(Some);
        match shared_float(&all) {
            Some(DType::F32) => {
                flex_batch_norm_backward::<f32>(x, gamma, [mean, variance], epsilon, output_grad)
            }
            Some(DType::F64) => {
                flex_batch_norm_backward::<f64>(x, gamma, [mean, variance], epsilon, output_grad)
            }
            _ => {
                let r = <Flex as ModuleOps<Flex>>::batch_norm_train_backward(
                    x,
                    gamma,
                    mean,
                    variance,
                    epsilon,
                    output_grad,
                );
                (r.x_grad, r.gamma_grad, r.beta_grad)
            }
        }
    }
}

/// The backward of [`KonvConvBackend::konv_conv2d`] with a bias: input and weight gradients
/// from the inner backend's kernels, the bias gradient from Burn's (a sum).
#[derive(Debug)]
struct KonvConv2dWithBias;

/// The backward of [`KonvConvBackend::konv_conv2d`] without a bias.
#[derive(Debug)]
struct KonvConv2dNoBias;

/// Registers the input and weight gradients of one convolution, and returns `x` and the output
/// gradient for the bias gradient.
fn register_x_weight<B: Backend + KonvConvBackend>(
    [node_x, node_weight]: [Option<NodeId>; 2],
    grad: &FloatTensor<B>,
    [x_state, weight_state]: [NodeId; 2],
    options: ConvOptions<2>,
    grads: &mut Gradients,
    checkpointer: &mut Checkpointer,
) -> FloatTensor<B> {
    let x = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(x_state);
    let weight = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(weight_state);
    if let Some(id) = node_x {
        let dx =
            B::konv_conv2d_x_backward(x.clone(), weight.clone(), grad.clone(), options.clone());
        grads.register::<B>(id, dx);
    }
    if let Some(id) = node_weight {
        let dw = B::konv_conv2d_weight_backward(x.clone(), weight, grad.clone(), options);
        grads.register::<B>(id, dw);
    }
    x
}

impl<B: Backend + KonvConvBackend> Backward<B, 3> for KonvConv2dWithBias {
    /// Checkpointed `x`, `weight` and `bias`, and the options.
    type State = (NodeId, NodeId, NodeId, ConvOptions<2>);

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_weight, node_bias] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x_state, weight_state, bias_state, options) = ops.state;
        let x = register_x_weight::<B>(
            [node_x.map(|n| n.id), node_weight.map(|n| n.id)],
            &grad,
            [x_state, weight_state],
            options,
            grads,
            checkpointer,
        );
        if let Some(node) = node_bias {
            let bias = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(bias_state);
            grads.register::<B>(node.id, B::conv2d_bias_backward(x, bias, grad));
        }
    }
}

impl<B: Backend + KonvConvBackend> Backward<B, 2> for KonvConv2dNoBias {
    /// Checkpointed `x` and `weight`, and the options.
    type State = (NodeId, NodeId, ConvOptions<2>);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let grad = grads.consume::<B>(&ops.node);
        let (x_state, weight_state, options) = ops.state;
        register_x_weight::<B>(
            ops.parents.map(|n| n.map(|n| n.id)),
            &grad,
            [x_state, weight_state],
            options,
            grads,
            checkpointer,
        );
    }
}

/// What batch norm's backward keeps from its forward: the checkpointed `x` and `gamma`, and
/// the batch statistics as the forward computed them.
#[derive(Clone, Debug)]
struct BatchNormSaved<B: Backend> {
    x: NodeId,
    gamma: NodeId,
    mean: B::FloatTensorPrimitive,
    variance: B::FloatTensorPrimitive,
    epsilon: f64,
}

impl<B: Backend + KonvConvBackend> BatchNormSaved<B> {
    /// The checkpoints of `x` and `gamma`, and the forward's batch `[mean, variance]`.
    fn new(
        [x, gamma]: [NodeId; 2],
        [mean, variance]: &[B::FloatTensorPrimitive; 2],
        epsilon: f64,
    ) -> Self {
        let (mean, variance) = (mean.clone(), variance.clone());
        BatchNormSaved {
            x,
            gamma,
            mean,
            variance,
            epsilon,
        }
    }

    /// Registers the input, scale and shift gradients of those of `nodes` (`x`, `gamma`,
    /// `beta`) that are tracked, from the gradient of batch norm's output.
    fn register(
        self,
        nodes: [Option<NodeId>; 3],
        grad: FloatTensor<B>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        if nodes.iter().all(Option::is_none) {
            return;
        }
        let x = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(self.x);
        let gamma = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(self.gamma);
        let (mean, variance, epsilon) = (self.mean, self.variance, self.epsilon);
        let (dx, dgamma, dbeta) =
            B::konv_batch_norm_train_backward(x, gamma, mean, variance, epsilon, grad);
        for (node, g) in nodes.into_iter().zip([dx, dgamma, dbeta]) {
            if let Some(id) = node {
                grads.register::<B>(id, g);
            }
        }
    }
}

/// The backward of [`KonvConvBackend::konv_batch_norm_train`].
#[derive(Debug)]
struct KonvBatchNormTrain;

impl<B: Backend + KonvConvBackend> Backward<B, 3> for KonvBatchNormTrain {
    type State = BatchNormSaved<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let grad = grads.consume::<B>(&ops.node);
        let nodes = ops.parents.map(|n| n.map(|n| n.id));
        ops.state.register(nodes, grad, grads, checkpointer);
    }
}

/// The backward of [`KonvConvBackend::konv_batch_norm_train_relu`]: ReLU's mask on the
/// gradient (which is also the residual's gradient), then batch norm's backward.
#[derive(Debug)]
struct KonvBatchNormTrainRelu;

impl<B: Backend + KonvConvBackend> Backward<B, 4> for KonvBatchNormTrainRelu {
    /// Batch norm's state, and the output.
    type State = (BatchNormSaved<B>, B::FloatTensorPrimitive);

    fn backward(
        self,
        ops: Ops<Self::State, 4>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_residual, node_gamma, node_beta] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (saved, output) = ops.state;
        let grad = B::konv_relu_backward(output, grad);
        if let Some(node) = node_residual {
            grads.register::<B>(node.id, grad.clone());
        }
        let nodes = [node_x, node_gamma, node_beta].map(|n| n.map(|n| n.id));
        saved.register(nodes, grad, grads, checkpointer);
    }
}

/// The backward of [`KonvConvBackend::konv_max_pool2d`].
#[derive(Debug)]
struct KonvMaxPool2d;

impl<B: Backend + KonvConvBackend> Backward<B, 1> for KonvMaxPool2d {
    /// Checkpointed `x`, and the options.
    type State = (NodeId, PoolOptions);

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x_state, options) = ops.state;
        if let Some(node) = node_x {
            let x = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(x_state);
            grads.register::<B>(node.id, B::konv_max_pool2d_backward(x, options, grad));
        }
    }
}

/// Runs one of konv's ops under autodiff: when the graph tracks it, `checkpoint` saves what
/// its backward needs from `inputs` first; `forward` then runs once on the inner backend,
/// giving the output and anything else it returns (batch statistics), and `state` makes the
/// backward's state from the checkpoints and those results.
fn record<BO, B, S, C, I, K, R, const N: usize>(
    kind: OpsKind<BO, B, S, C, N>,
    inputs: I,
    checkpoint: impl FnOnce(&mut OpsPrep<BO, B, S, C, N, Tracked>, &I) -> K,
    forward: impl FnOnce(I) -> (FloatTensor<B>, R),
    state: impl FnOnce(K, &FloatTensor<B>, &R) -> S,
) -> (FloatTensor<Autodiff<B, C>>, R)
where
    B: Backend,
    C: CheckpointStrategy,
    S: Clone + Send + std::fmt::Debug + 'static,
    BO: Backward<B, N, State = S>,
{
    match kind {
        OpsKind::Tracked(mut prep) => {
            let saved = checkpoint(&mut prep, &inputs);
            let (out, rest) = forward(inputs);
            let state = state(saved, &out, &rest);
            (prep.finish(state, out), rest)
        }
        OpsKind::UnTracked(prep) => {
            let (out, rest) = forward(inputs);
            (prep.finish(out), rest)
        }
    }
}

impl<B: Backend + KonvConvBackend, C: CheckpointStrategy> KonvConvBackend for Autodiff<B, C> {
    fn konv_max_pool2d(x: FloatTensor<Self>, options: PoolOptions) -> FloatTensor<Self> {
        let kind = KonvMaxPool2d
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful();
        record(
            kind,
            x,
            |prep, x| prep.checkpoint(x),
            |x| (B::konv_max_pool2d(x.into_primitive(), options), ()),
            |x_state, _, _| (x_state, options),
        )
        .0
    }

    fn konv_max_pool2d_backward(
        x: FloatTensor<Self>,
        options: PoolOptions,
        output_grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        // A second-order use: Burn's differentiable max pool with indices.
        burn_max_pool_backward::<Self>(x, options, output_grad)
    }

    fn konv_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        let kind = KonvConv2dNoBias
            .prepare::<C>([x.node(), weight.node()])
            .compute_bound()
            .stateful();
        record(
            kind,
            (x, weight),
            |prep, (x, weight)| (prep.checkpoint(x), prep.checkpoint(weight)),
            |(x, weight)| {
                let out =
                    B::konv_conv2d(x.into_primitive(), weight.into_primitive(), options.clone());
                (out, ())
            },
            |(x_state, weight_state), _, _| (x_state, weight_state, options.clone()),
        )
        .0
    }

    fn konv_conv2d_bias(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        let kind = KonvConv2dWithBias
            .prepare::<C>([x.node(), weight.node(), bias.node()])
            .compute_bound()
            .stateful();
        record(
            kind,
            (x, weight, bias),
            |prep, (x, weight, bias)| [x, weight, bias].map(|t| prep.checkpoint(t)),
            |(x, weight, bias)| {
                let out = B::konv_conv2d_bias(
                    x.into_primitive(),
                    weight.into_primitive(),
                    bias.into_primitive(),
                    options.clone(),
                );
                (out, ())
            },
            |[x_state, weight_state, bias_state], _, _| {
                (x_state, weight_state, bias_state, options.clone())
            },
        )
        .0
    }

    fn konv_conv2d_x_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        // Differentiating a gradient: Burn's composition of differentiable ops.
        <Self as ModuleOps<Self>>::conv2d_x_backward(x, weight, output_grad, options)
    }

    fn konv_conv2d_weight_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        <Self as ModuleOps<Self>>::conv2d_weight_backward(x, weight, output_grad, options)
    }

    fn konv_batch_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        // Frozen statistics under autodiff (fine-tuning): Burn's differentiable composition.
        <Self as ModuleOps<Self>>::batch_norm(x, gamma, beta, mean, variance, epsilon)
    }

    fn konv_batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let kind = KonvBatchNormTrain
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful();
        let (out, [mean, var]) = record(
            kind,
            (x, gamma, beta),
            |prep, (x, gamma, _)| (prep.checkpoint(x), prep.checkpoint(gamma)),
            |(x, gamma, beta)| {
                let (out, mean, var) = B::konv_batch_norm_train(
                    x.into_primitive(),
                    gamma.into_primitive(),
                    beta.into_primitive(),
                    epsilon,
                );
                (out, [mean, var])
            },
            |(x, gamma), _, stats| BatchNormSaved::new([x, gamma], stats, epsilon),
        );
        let untracked = <Self as AutodiffBackend>::from_inner;
        (out, untracked(mean), untracked(var))
    }

    fn konv_batch_norm_relu(
        x: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        // Frozen statistics under autodiff (fine-tuning): Burn's differentiable composition.
        let y = <Self as ModuleOps<Self>>::batch_norm(x, gamma, beta, mean, variance, epsilon);
        add_relu::<Self>(y, residual)
    }

    fn konv_batch_norm_train_relu(
        x: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let kind = KonvBatchNormTrainRelu
            .prepare::<C>([x.node(), residual.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful();
        let (out, [mean, var]) = record(
            kind,
            (x, residual, gamma, beta),
            |prep, (x, _, gamma, _)| (prep.checkpoint(x), prep.checkpoint(gamma)),
            |(x, residual, gamma, beta)| {
                let (out, mean, var) = B::konv_batch_norm_train_relu(
                    x.into_primitive(),
                    residual.into_primitive(),
                    gamma.into_primitive(),
                    beta.into_primitive(),
                    epsilon,
                );
                (out, [mean, var])
            },
            |(x, gamma), out, stats| (BatchNormSaved::new([x, gamma], stats, epsilon), out.clone()),
        );
        let untracked = <Self as AutodiffBackend>::from_inner;
        (out, untracked(mean), untracked(var))
    }

    fn konv_relu_backward(
        output: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        <Self as ActivationOps<Self>>::relu_backward(output, output_grad)
    }

    fn konv_batch_norm_train_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        epsilon: f64,
        output_grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let r = <Self as ModuleOps<Self>>::batch_norm_train_backward(
            x,
            gamma,
            mean,
            variance,
            epsilon,
            output_grad,
        );
        (r.x_grad, r.gamma_grad, r.beta_grad)
    }
}

/// Whether a tensor lives on Flex (with or without autodiff): the tensors konv's kernels take.
fn on_flex(kind: &DispatchTensorKind) -> bool {
    match kind {
        DispatchTensorKind::Flex(_) => true,
        DispatchTensorKind::Autodiff(inner) => on_flex(inner),
        #[allow(unreachable_patterns)]
        _ => false,
    }
}

/// Which convolution kernels run on the CPU: `KONV_CONV` in the environment, read once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvChoice {
    /// konv's kernels, Winograd F(2×2, 3×3) for the stride-1 3×3 layers with 32 channels and
    /// more, direct kernels for stride-1 layers with few input channels (unset, or `konv`).
    Konv,
    /// konv's im2col + GEMM kernels for every layer, no Winograd and no direct kernels
    /// (`gemm`): to compare them.
    Gemm,
    /// Burn's own convolution and batch norm (`burn`): to compare with Burn.
    Burn,
}

/// The [`ConvChoice`] of this process. Any value of `KONV_CONV` other than `konv`, `gemm` and
/// `burn` is named in a one-line warning on stderr and ignored.
pub fn conv_choice() -> ConvChoice {
    static CHOICE: std::sync::OnceLock<ConvChoice> = std::sync::OnceLock::new();
    *CHOICE.get_or_init(|| {
        let value = std::env::var("KONV_CONV").unwrap_or_default();
        match parse_conv_choice(&value) {
            Ok(choice) => choice,
            Err(message) => {
                eprintln!("warning: {message}");
                ConvChoice::Konv
            }
        }
    })
}

/// Whether konv's kernels are switched off (`KONV_CONV=burn`): every convolution then runs
/// Burn's own, for comparing the two.
pub fn burn_forced() -> bool {
    conv_choice() == ConvChoice::Burn
}

/// Whether the layers that fit them take [`winograd`] and [`direct`] (unless `KONV_CONV=gemm`
/// or `burn`).
fn fast_paths_enabled() -> bool {
    conv_choice() == ConvChoice::Konv
}

/// Reads a `KONV_CONV` value, or gives the warning for one it does not know.
fn parse_conv_choice(value: &str) -> Result<ConvChoice, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "burn" => Ok(ConvChoice::Burn),
        "gemm" => Ok(ConvChoice::Gemm),
        "" | "konv" => Ok(ConvChoice::Konv),
        _ => Err(format!(
            "KONV_CONV={value:?} is not one of konv, gemm, burn; using konv's CPU kernels \
             (set KONV_CONV=burn for Burn's own, gemm for konv's GEMM kernels alone, or unset it)"
        )),
    }
}

/// 2-D convolution (same arguments and result as `burn::tensor::module::conv2d`): konv's
/// kernels for tensors on the CPU (Flex), Burn's convolution on every other device (and on
/// the CPU too with `KONV_CONV=burn`).
pub fn conv2d(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    options: ConvOptions<2>,
) -> Tensor<4> {
    let x = x.into_dispatch();
    if !on_flex(&x.kind) || burn_forced() {
        return burn::tensor::module::conv2d(Tensor::from_dispatch(x), weight, bias, options);
    }
    let weight = weight.into_dispatch();
    Tensor::from_dispatch(match bias {
        Some(bias) => <Dispatch as KonvConvBackend>::konv_conv2d_bias(
            x,
            weight,
            bias.into_dispatch(),
            options,
        ),
        None => <Dispatch as KonvConvBackend>::konv_conv2d(x, weight, options),
    })
}

/// `BatchNorm::forward` with konv's fused kernels on the CPU: the batch statistics, the
/// normalization and its backward in two or three threaded passes each, instead of Burn's
/// generic composition (two transposed copies of the batch and five passes). Same layer, same
/// running statistics, same records; other devices (and `KONV_CONV=burn`) run `forward`.
///
/// `fast_forward_relu` and `fast_forward_add_relu` also take the ReLU that follows (and the
/// residual added before it, as ResNet's blocks end) into batch norm's output pass, and their
/// backward into one pass over the gradient, instead of a pass and an autodiff node each.
pub trait FastBatchNorm {
    /// The layer's output for `x` `[n, c, ...]`; the same as `forward`.
    fn fast_forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D>;

    /// `relu(forward(x))`.
    fn fast_forward_relu<const D: usize>(&self, x: Tensor<D>) -> Tensor<D>;

    /// `relu(forward(x) + residual)`, `residual` of `x`'s shape.
    fn fast_forward_add_relu<const D: usize>(&self, x: Tensor<D>, residual: Tensor<D>)
    -> Tensor<D>;
}

/// The ReLU epilogue of [`FastBatchNorm`]'s fused forms: none, alone, or after a residual.
enum Then<const D: usize> {
    Nothing,
    Relu,
    AddRelu(Box<Tensor<D>>),
}

impl FastBatchNorm for BatchNorm {
    fn fast_forward<const D: usize>(&self, input: Tensor<D>) -> Tensor<D> {
        batch_norm_then(self, input, Then::Nothing)
    }

    fn fast_forward_relu<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        batch_norm_then(self, x, Then::Relu)
    }

    fn fast_forward_add_relu<const D: usize>(
        &self,
        x: Tensor<D>,
        residual: Tensor<D>,
    ) -> Tensor<D> {
        assert_eq!(
            x.dims(),
            residual.dims(),
            "BatchNorm: the residual's shape differs from the input's"
        );
        batch_norm_then(self, x, Then::AddRelu(Box::new(residual)))
    }
}

/// Burn's `forward` of `bn`, then `then`, in Burn's ops.
fn burn_then<const D: usize>(bn: &BatchNorm, x: Tensor<D>, then: Then<D>) -> Tensor<D> {
    let y = bn.forward(x);
    match then {
        Then::Nothing => y,
        Then::Relu => burn::tensor::activation::relu(y),
        Then::AddRelu(residual) => burn::tensor::activation::relu(y + *residual),
    }
}

/// [`FastBatchNorm`]: konv's kernels on Flex, Burn's ops elsewhere.
fn batch_norm_then<const D: usize>(bn: &BatchNorm, input: Tensor<D>, then: Then<D>) -> Tensor<D> {
    // Burn's `forward` checks the same before choosing its path.
    let [features] = bn.gamma.shape().dims();
    let dims = input.dims();
    assert!(
        D >= 2 && dims[1] == features,
        "BatchNorm: input {dims:?} does not have {features} channels on axis 1"
    );
    let device = input.device();
    let training = device.is_autodiff() && bn.training.is_enabled();
    let x = input.into_dispatch();
    if !on_flex(&x.kind) || burn_forced() {
        return burn_then(bn, Tensor::from_dispatch(x), then);
    }
    let (gamma, beta) = (
        bn.gamma.val().into_dispatch(),
        bn.beta.val().into_dispatch(),
    );
    // The fused forms' residual: the tensor, or an empty one for a ReLU alone.
    let residual = match then {
        Then::Nothing => None,
        Then::Relu => Some(Tensor::<1>::empty([0], &device).into_dispatch()),
        Then::AddRelu(r) => Some(r.into_dispatch()),
    };
    if !training {
        let mean = bn.running_mean.value().to_device(&device).into_dispatch();
        let var = bn.running_var.value().to_device(&device).into_dispatch();
        let out = match residual {
            None => <Dispatch as KonvConvBackend>::konv_batch_norm(
                x, gamma, beta, mean, var, bn.epsilon,
            ),
            Some(r) => <Dispatch as KonvConvBackend>::konv_batch_norm_relu(
                x, r, gamma, beta, mean, var, bn.epsilon,
            ),
        };
        return Tensor::from_dispatch(out);
    }
    let (out, mean, var) = match residual {
        None => <Dispatch as KonvConvBackend>::konv_batch_norm_train(x, gamma, beta, bn.epsilon),
        Some(r) => {
            <Dispatch as KonvConvBackend>::konv_batch_norm_train_relu(x, r, gamma, beta, bn.epsilon)
        }
    };
    let (out, mean, var) = (
        Tensor::<D>::from_dispatch(out),
        Tensor::<1>::from_dispatch(mean),
        Tensor::<1>::from_dispatch(var),
    );
    // The running statistics exactly as Burn's `BatchNorm::forward` updates them.
    let m = bn.momentum;
    let running_mean = bn.running_mean.value_sync().to_device(&device);
    let running_var = bn.running_var.value_sync().to_device(&device);
    bn.running_mean.update(
        running_mean
            .mul_scalar(1.0 - m)
            .add(mean.detach().mul_scalar(m))
            .detach(),
    );
    bn.running_var.update(
        running_var
            .mul_scalar(1.0 - m)
            .add(var.detach().mul_scalar(m))
            .detach(),
    );
    out
}

/// `MaxPool2d::forward` with konv's max-pool kernels on the CPU (window bounds worked out once
/// per call instead of per output; the same values and gradients, bit for bit). Other devices,
/// asymmetric padding, `ceil_mode` and `KONV_CONV=burn` run `forward`.
pub trait FastMaxPool2d {
    /// The layer's output for `x` `[n, c, h, w]`; the same as `forward`.
    fn fast_forward(&self, x: Tensor<4>) -> Tensor<4>;
}

impl FastMaxPool2d for MaxPool2d {
    fn fast_forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [_, _, h, w] = x.dims();
        let [(top, bottom), (left, right)] =
            padding_pairs(&self.padding, [h, w], self.kernel_size, self.stride);
        let options = PoolOptions {
            kernel: self.kernel_size,
            stride: self.stride,
            padding: [top, left],
            dilation: self.dilation,
        };
        let x = x.into_dispatch();
        if !on_flex(&x.kind)
            || burn_forced()
            || self.ceil_mode
            || top != bottom
            || left != right
            || options.output([h, w]).is_none()
        {
            return self.forward(Tensor::from_dispatch(x));
        }
        Tensor::from_dispatch(<Dispatch as KonvConvBackend>::konv_max_pool2d(x, options))
    }
}

/// Padding as `(before, after)` pairs per spatial dimension, by Burn's rules for
/// `PaddingConfig2d` (TensorFlow's "same": the extra pixel after).
pub fn padding_pairs(
    padding: &PaddingConfig2d,
    [h, w]: [usize; 2],
    kernel: [usize; 2],
    stride: [usize; 2],
) -> [(usize, usize); 2] {
    let same = |k: usize, s: usize, size: usize| {
        let out = size.div_ceil(s);
        let total = if out > 0 {
            ((out - 1) * s + k).saturating_sub(size)
        } else {
            0
        };
        (total / 2, total - total / 2)
    };
    match padding {
        PaddingConfig2d::Valid => [(0, 0), (0, 0)],
        PaddingConfig2d::Same => [same(kernel[0], stride[0], h), same(kernel[1], stride[1], w)],
        PaddingConfig2d::Explicit(top, left, bottom, right) => [(*top, *bottom), (*left, *right)],
    }
}

/// `Conv2d::forward` through [`conv2d`]: konv's kernels on the CPU, Burn's elsewhere.
pub trait FastConv2d {
    /// The layer's output for `x` `[n, c_in, h, w]`; the same as `forward`.
    fn fast_forward(&self, x: Tensor<4>) -> Tensor<4>;
}

impl FastConv2d for Conv2d {
    fn fast_forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [_, _, h, w] = x.dims();
        let padding = padding_pairs(&self.padding, [h, w], self.kernel_size, self.stride);
        let options =
            ConvOptions::new_with_padding(self.stride, padding, self.dilation, self.groups);
        conv2d(
            x,
            self.weight.val(),
            self.bias.as_ref().map(|b| b.val()),
            options,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::{ConvChoice, parse_conv_choice};

    #[test]
    fn konv_conv_values() {
        assert_eq!(parse_conv_choice("burn"), Ok(ConvChoice::Burn));
        assert_eq!(parse_conv_choice(" Burn "), Ok(ConvChoice::Burn));
        assert_eq!(parse_conv_choice("gemm"), Ok(ConvChoice::Gemm));
        assert_eq!(parse_conv_choice(""), Ok(ConvChoice::Konv));
        assert_eq!(parse_conv_choice("konv"), Ok(ConvChoice::Konv));
        let err = parse_conv_choice("brun").unwrap_err();
        assert!(
            err.contains("KONV_CONV=\"brun\"") && err.contains("konv, gemm, burn"),
            "{err}"
        );
    }
}
