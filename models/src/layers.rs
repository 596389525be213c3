//! Layers the zoo needs and `burn::nn` lacks, each written once as a reusable module:
//! [`SeparableConv2d`] (Xception), [`ChannelMaxPool2d`] (the lecture's depthwise max pooling),
//! [`GlobalMaxPool2d`], global average pooling, a torch-style [`Layer`] for `nn.Sequential`
//! stacks whose indices must match torchvision's keys, and the bilinear initializer of FCN's
//! transposed convolutions.
//!
//! Local response normalization is Burn's [`LocalResponseNorm`]: it computes PyTorch's (and
//! Caffe's) formula `b = a / (k + α/n · Σ a²)^β`, with the sum over `n` neighbouring channels
//! and zeros past the edges. Krizhevsky et al. write `α` without the `/n`, so the paper's
//! `α = 1e-4` is [`paper_lrn`]'s `α = n · 1e-4` in Burn's terms (tested below).

use burn::module::{ModuleVisitor, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig, ConvTranspose2d};
use burn::nn::pool::{AdaptiveAvgPool2d, MaxPool2d, MaxPool2dConfig};
use burn::nn::{
    BatchNorm, BatchNormConfig, Dropout, Initializer, Linear, LinearConfig, LocalResponseNorm,
    LocalResponseNormConfig, PaddingConfig2d, Relu,
};
use burn::prelude::*;

use crate::conv::{FastBatchNorm, FastConv2d, FastMaxPool2d};

use crate::summary::{Summarize, Summary};

/// Named feature maps collected during one forward pass: `konv filters --layer NAME` and
/// [`crate::Classifier::feature_maps`] read them. Off (the default), [`Taps::tap`] only
/// passes its tensor through, so the models' ordinary forward passes share the tapped code.
#[derive(Debug, Default)]
pub struct Taps {
    recording: bool,
    maps: Vec<(String, Tensor<4>)>,
}

impl Taps {
    /// Taps that keep every map they see.
    pub fn recording() -> Self {
        Self {
            recording: true,
            maps: Vec::new(),
        }
    }

    /// Keeps `x` under `name` (when recording) and returns it.
    pub fn tap(&mut self, name: impl FnOnce() -> String, x: Tensor<4>) -> Tensor<4> {
        if self.recording {
            self.maps.push((name(), x.clone()));
        }
        x
    }

    /// The maps kept, in forward order.
    pub fn into_maps(self) -> Vec<(String, Tensor<4>)> {
        self.maps
    }
}

/// One entry of a torch-style `nn.Sequential`: a `Vec<Layer>` field named `features` gives
/// the keys `features.0.weight`, `features.3.weight`, … exactly where torchvision has them,
/// because the parameter-free entries (ReLU, pooling, dropout) keep their indices.
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Layer {
    /// A 2-D convolution.
    Conv2d(Conv2d),
    /// Batch normalization.
    BatchNorm(BatchNorm),
    /// ReLU.
    Relu(Relu),
    /// Max pooling.
    MaxPool2d(MaxPool2d),
    /// Local response normalization.
    Lrn(LocalResponseNorm),
    /// Dropout.
    Dropout(Dropout),
    /// A dense layer.
    Linear(Linear),
}

impl Layer {
    /// Applies a convolutional-stage entry: `[batch, channels, height, width]`.
    ///
    /// # Panics
    /// On a [`Layer::Linear`], which needs flattened input ([`Layer::forward_flat`]).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        match self {
            Layer::Conv2d(m) => m.fast_forward(x),
            Layer::BatchNorm(m) => m.fast_forward(x),
            Layer::Relu(m) => m.forward(x),
            Layer::MaxPool2d(m) => m.fast_forward(x),
            Layer::Lrn(m) => m.forward(x),
            Layer::Dropout(m) => m.forward(x),
            Layer::Linear(_) => panic!("a Linear layer needs [batch, features] input"),
        }
    }

    /// Applies a classifier entry: `[batch, features]`.
    ///
    /// # Panics
    /// On a layer that needs images (convolution, pooling, normalization).
    pub fn forward_flat(&self, x: Tensor<2>) -> Tensor<2> {
        match self {
            Layer::Linear(m) => m.forward(x),
            Layer::Relu(m) => m.forward(x),
            Layer::Dropout(m) => m.forward(x),
            other => panic!("{other:?} needs [batch, channels, height, width] input"),
        }
    }
}

/// Runs `x` through a stack of image layers.
pub fn sequential(layers: &[Layer], x: Tensor<4>) -> Tensor<4> {
    layers.iter().fold(x, |x, layer| layer.forward(x))
}

/// Runs `x` through a stack of dense layers.
pub fn sequential_flat(layers: &[Layer], x: Tensor<2>) -> Tensor<2> {
    layers.iter().fold(x, |x, layer| layer.forward_flat(x))
}

/// torchvision's AlexNet and VGG layout: a convolutional `features` stack, adaptive average
/// pooling, and a dense `classifier` stack whose last layer is the head, all indexed as
/// torchvision's `nn.Sequential`s (`features.0.weight`, `classifier.6.weight`).
#[derive(Module, Debug)]
pub struct FeaturesClassifier {
    /// Convolutions, [normalizations], ReLUs, poolings.
    pub features: Vec<Layer>,
    /// Average pooling to a fixed size, so that other input sizes work.
    pub avgpool: AdaptiveAvgPool2d,
    /// Dense layers, ReLUs and dropouts; the head last.
    pub classifier: Vec<Layer>,
}

impl FeaturesClassifier {
    /// The last feature map, `[batch, channels, h', w']`.
    pub fn forward_feature_map(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward_tapped(x, &mut Taps::default())
    }

    /// [`FeaturesClassifier::forward_feature_map`], tapping each entry of `features` as
    /// `features.I` (torchvision's names).
    pub fn forward_tapped(&self, x: Tensor<4>, taps: &mut Taps) -> Tensor<4> {
        self.features.iter().enumerate().fold(x, |x, (i, layer)| {
            taps.tap(|| format!("features.{i}"), layer.forward(x))
        })
    }

    /// The output of each max pooling of `features` (FCN's skip sources).
    pub fn forward_pools(&self, x: Tensor<4>) -> Vec<Tensor<4>> {
        let mut outputs = Vec::new();
        let mut x = x;
        for layer in &self.features {
            x = layer.forward(x);
            if matches!(layer, Layer::MaxPool2d(_)) {
                outputs.push(x.clone());
            }
        }
        outputs
    }

    /// Everything but the head: `[batch, hidden]`.
    pub fn forward_features(&self, x: Tensor<4>) -> Tensor<2> {
        self.features_from_map(self.forward_feature_map(x))
    }

    /// Average pooling and the dense layers before the head, from the last feature map.
    pub fn features_from_map(&self, map: Tensor<4>) -> Tensor<2> {
        let x = self.avgpool.forward(map).flatten::<2>(1, 3);
        sequential_flat(
            &self.classifier[..self.classifier.len().saturating_sub(1)],
            x,
        )
    }

    /// Class logits, `[batch, num_classes]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.head().forward(self.forward_features(x))
    }

    /// The head (`classifier.6`).
    ///
    /// # Panics
    /// If `classifier` does not end with a dense layer (the zoo's always do).
    pub fn head(&self) -> &Linear {
        match self.classifier.last() {
            Some(Layer::Linear(fc)) => fc,
            _ => panic!("the classifier stack ends with a dense layer"),
        }
    }

    /// Replaces the head with a fresh one for `num_classes` classes.
    pub fn with_num_classes(mut self, num_classes: usize, device: &Device) -> Self {
        let [features, _] = self.head().weight.dims();
        if let Some(last) = self.classifier.last_mut() {
            *last = Layer::Linear(LinearConfig::new(features, num_classes).init(device));
        }
        self
    }

    /// Freezes every parameter but the head's.
    pub fn freeze_backbone(self) -> Self {
        let mut frozen = self.freeze();
        if let Some(Layer::Linear(head)) = frozen.classifier.pop() {
            frozen.classifier.push(Layer::Linear(head.unfreeze()));
        }
        frozen
    }
}

impl Summarize for FeaturesClassifier {
    fn summarize(&self, s: &mut Summary) {
        s.sequential("features", &self.features);
        s.adaptive_avg_pool2d("avgpool", &self.avgpool);
        s.flatten();
        s.sequential("classifier", &self.classifier);
    }
}

/// Local response normalization with the constants of Krizhevsky et al. (2012): `k = 2`,
/// `n = 5`, `α = 1e-4`, `β = 0.75`, with `α` not divided by `n` as in the paper.
pub fn paper_lrn() -> LocalResponseNorm {
    LocalResponseNormConfig::new(5)
        .with_alpha(5.0 * 1e-4)
        .with_beta(0.75)
        .with_k(2.0)
        .init()
}

/// Hyper-parameters of [`SeparableConv2d`], named as `Conv2dConfig`'s.
#[derive(Config, Debug)]
pub struct SeparableConv2dConfig {
    /// Input and output channels.
    pub channels: [usize; 2],
    /// Kernel size of the depthwise step.
    pub kernel_size: [usize; 2],
    /// Stride of the depthwise step.
    #[config(default = "[1, 1]")]
    pub stride: [usize; 2],
    /// Dilation of the depthwise step.
    #[config(default = "[1, 1]")]
    pub dilation: [usize; 2],
    /// Depthwise filters per input channel (Keras' `depth_multiplier`).
    #[config(default = 1)]
    pub depth_multiplier: usize,
    /// Padding of the depthwise step.
    #[config(default = "PaddingConfig2d::Valid")]
    pub padding: PaddingConfig2d,
    /// One bias per output channel, after the pointwise step (Keras' `use_bias`). The
    /// depthwise step never has one, as in Keras.
    #[config(default = true)]
    pub bias: bool,
    /// Initializer of both kernels (Keras: Glorot-uniform).
    #[config(default = "Initializer::XavierUniform { gain: 1.0 }")]
    pub initializer: Initializer,
}

/// Depthwise separable convolution (Chollet 2017; Keras' `SeparableConv2D`): a per-channel
/// `k×k` convolution, then a `1×1` convolution that mixes channels. Parameters:
/// `k·k·in·m + in·m·out (+ out)` instead of a full convolution's `k·k·in·out (+ out)`.
#[derive(Module, Debug)]
pub struct SeparableConv2d {
    /// The per-channel spatial filters: `groups = in`, `in·m` outputs, no bias.
    pub depthwise: Conv2d,
    /// The `1×1` channel mixer, with the layer's bias if any.
    pub pointwise: Conv2d,
}

impl SeparableConv2dConfig {
    /// Builds the layer on `device`.
    pub fn init(&self, device: &Device) -> SeparableConv2d {
        let [c_in, c_out] = self.channels;
        let mid = c_in * self.depth_multiplier;
        let depthwise = Conv2dConfig::new([c_in, mid], self.kernel_size)
            .with_stride(self.stride)
            .with_dilation(self.dilation)
            .with_groups(c_in)
            .with_padding(self.padding.clone())
            .with_bias(false)
            .with_initializer(self.initializer.clone())
            .init(device);
        let mut pointwise = Conv2dConfig::new([mid, c_out], [1, 1])
            .with_bias(false)
            .with_initializer(self.initializer.clone())
            .init(device);
        if self.bias {
            pointwise.bias = Some(Initializer::Zeros.init([c_out], device));
        }
        SeparableConv2d {
            depthwise,
            pointwise,
        }
    }
}

impl SeparableConv2d {
    /// `[batch, in, height, width]` → `[batch, out, height', width']`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.pointwise.fast_forward(self.depthwise.fast_forward(x))
    }
}

/// Max pooling across channels (the lecture's depthwise max pooling, TensorFlow's
/// `tf.nn.max_pool(x, ksize=(1, 1, 1, k), strides=(1, 1, 1, k))`): each output channel is
/// the maximum of `k` consecutive input channels, at every position.
#[derive(Module, Debug)]
pub struct ChannelMaxPool2d {
    /// Channels pooled together; the input's channel count must be a multiple of it.
    pub kernel: usize,
}

impl ChannelMaxPool2d {
    /// A pooling of `kernel` consecutive channels.
    pub fn new(kernel: usize) -> Self {
        assert!(kernel > 0, "channel pooling needs a kernel of at least 1");
        Self { kernel }
    }

    /// `[batch, channels, height, width]` → `[batch, channels / kernel, height, width]`.
    ///
    /// # Panics
    /// If `channels` is not a multiple of the kernel (TensorFlow refuses those too).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [n, c, h, w] = x.dims();
        assert!(
            c % self.kernel == 0,
            "channel max pooling of {} needs a channel count that is a multiple of it, got {c}",
            self.kernel
        );
        let groups = c / self.kernel;
        x.reshape([n, groups, self.kernel, h * w])
            .max_dim(2)
            .reshape([n, groups, h, w])
    }
}

/// Global max pooling (Keras' `GlobalMaxPooling2D`): the largest value of each channel.
#[derive(Module, Debug, Default)]
pub struct GlobalMaxPool2d;

impl GlobalMaxPool2d {
    /// `[batch, channels, height, width]` → `[batch, channels]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let [n, c, h, w] = x.dims();
        x.reshape([n, c, h * w]).max_dim(2).reshape([n, c])
    }
}

/// Global average pooling: the mean of each channel, `[batch, channels, h, w]` →
/// `[batch, channels]` (torchvision's `AdaptiveAvgPool2d(1)` then `flatten`).
pub fn global_avg_pool(x: Tensor<4>) -> Tensor<2> {
    let [n, c, h, w] = x.dims();
    x.reshape([n, c, h * w]).mean_dim(2).reshape([n, c])
}

/// The bilinear-interpolation kernel of FCN's upsampling layers, `[channels, channels, k, k]`:
/// channel `i` is upsampled from channel `i` alone. With stride `k / 2` (and padding `k / 4`)
/// a transposed convolution with this weight is bilinear upsampling by `k / 2`.
pub fn bilinear_kernel(channels: usize, kernel: usize, device: &Device) -> Tensor<4> {
    let factor = kernel.div_ceil(2) as f32;
    let center = if kernel % 2 == 1 {
        factor - 1.0
    } else {
        factor - 0.5
    };
    let tap = |i: usize| 1.0 - (i as f32 - center).abs() / factor;
    let mut data = vec![0.0f32; channels * channels * kernel * kernel];
    for c in 0..channels {
        for y in 0..kernel {
            for x in 0..kernel {
                data[((c * channels + c) * kernel + y) * kernel + x] = tap(y) * tap(x);
            }
        }
    }
    Tensor::from_data(
        TensorData::new(data, [channels, channels, kernel, kernel]),
        device,
    )
}

/// Sets a transposed convolution's weight to [`bilinear_kernel`] and its bias (if any) to 0.
pub fn init_bilinear(mut layer: ConvTranspose2d) -> ConvTranspose2d {
    let [c_in, c_out_per_group, k, _] = layer.weight.dims();
    assert_eq!(
        c_in, c_out_per_group,
        "bilinear upsampling keeps the channels"
    );
    let device = layer.weight.device();
    layer.weight = Param::from_tensor(bilinear_kernel(c_in, k, &device));
    if let Some(bias) = layer.bias.take() {
        layer.bias = Some(Param::from_tensor(bias.val().zeros_like()));
    }
    layer
}

/// A dense layer with `init` weights and a zero bias (Keras' and torchvision's VGG/GoogLeNet
/// dense layers; Burn's initializer would draw the bias too).
pub fn linear_zero_bias(d_in: usize, d_out: usize, init: Initializer, device: &Device) -> Linear {
    let mut layer = LinearConfig::new(d_in, d_out)
        .with_initializer(init)
        .with_bias(false)
        .init(device);
    layer.bias = Some(Initializer::Zeros.init([d_out], device));
    layer
}

/// torchvision's convolution initialization: Kaiming-normal, fan-out, ReLU gain.
pub const KAIMING_FAN_OUT: Initializer = Initializer::KaimingNormal {
    gain: std::f64::consts::SQRT_2,
    fan_out_only: true,
};

/// A square convolution with symmetric padding, as torchvision writes them:
/// `nn.Conv2d(c_in, c_out, k, stride, padding, bias=bias)`, Kaiming-normal (fan-out) weights.
pub fn conv(
    [c_in, c_out]: [usize; 2],
    k: usize,
    stride: usize,
    padding: usize,
    bias: bool,
    device: &Device,
) -> Conv2d {
    let mut conv = Conv2dConfig::new([c_in, c_out], [k, k])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(
            padding, padding, padding, padding,
        ))
        .with_bias(false)
        .with_initializer(KAIMING_FAN_OUT)
        .init(device);
    if bias {
        conv.bias = Some(Initializer::Zeros.init([c_out], device));
    }
    conv
}

/// Batch normalization with PyTorch's defaults (ε = 1e-5, momentum 0.1, γ = 1, β = 0).
pub fn batch_norm(channels: usize, device: &Device) -> BatchNorm {
    BatchNormConfig::new(channels).init(device)
}

/// Square max pooling with symmetric padding (`nn.MaxPool2d(k, stride, padding, ceil_mode)`).
pub fn max_pool(k: usize, stride: usize, padding: usize, ceil_mode: bool) -> MaxPool2d {
    MaxPool2dConfig::new([k, k])
        .with_strides([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(
            padding, padding, padding, padding,
        ))
        .with_ceil_mode(ceil_mode)
        .init()
}

/// Parameters as PyTorch counts them (`sum(p.numel() for p in model.parameters())`): every
/// float parameter, frozen ones included, but not batch norm's running mean and variance,
/// which Burn stores as module state and `Module::num_params` counts too.
pub fn parameter_count<M: Module>(module: &M) -> usize {
    #[derive(Default)]
    struct Counter {
        path: Vec<String>,
        count: usize,
    }
    impl ModuleVisitor for Counter {
        fn enter_module(&mut self, name: &str, _container: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let state = matches!(
                self.path.last().map(String::as_str),
                Some("running_mean" | "running_var")
            );
            if !state {
                self.count += param.lazy_shape().num_elements();
            }
        }
    }
    let mut counter = Counter::default();
    module.visit(&mut counter);
    counter.count
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor<const D: usize>(data: Vec<f32>, shape: [usize; D]) -> Tensor<D> {
        Tensor::from_data(TensorData::new(data, shape), &Device::flex())
    }

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn channel_max_pool_takes_the_max_of_consecutive_channels() {
        // 1×4×1×2: channels (1,5), (7,-2), (3,3), (0,9) → pairs {0,1} and {2,3}.
        let x = tensor(vec![1., 5., 7., -2., 3., 3., 0., 9.], [1, 4, 1, 2]);
        let y = ChannelMaxPool2d::new(2).forward(x);
        assert_eq!(y.dims(), [1, 2, 1, 2]);
        assert_eq!(values(y), vec![7., 5., 3., 9.]);
    }

    #[test]
    #[should_panic(expected = "multiple")]
    fn channel_max_pool_refuses_a_ragged_channel_count() {
        ChannelMaxPool2d::new(3).forward(tensor(vec![0.; 4], [1, 4, 1, 1]));
    }

    #[test]
    fn global_max_and_average_pooling() {
        let x = tensor(vec![1., -4., 2., 8., 0., 0., -1., 3.], [1, 2, 2, 2]);
        assert_eq!(values(GlobalMaxPool2d.forward(x.clone())), vec![8., 3.]);
        assert_eq!(values(global_avg_pool(x)), vec![7. / 4., 2. / 4.]);
    }

    #[test]
    fn separable_conv_matches_hand_computation_and_keras_counts() {
        let device = Device::flex();
        // Keras: SeparableConv2D(64, 3) on 32 channels = 3·3·32 + 32·64 + 64 = 2,400.
        let layer = SeparableConv2dConfig::new([32, 64], [3, 3]).init(&device);
        assert_eq!(parameter_count(&layer), 2_400);
        let no_bias = SeparableConv2dConfig::new([32, 64], [3, 3])
            .with_bias(false)
            .init(&device);
        assert_eq!(parameter_count(&no_bias), 2_336);

        // Two channels, 2×2 kernel of ones on channel 0 and twos on channel 1, then mix 1·a + 10·b.
        let mut layer = SeparableConv2dConfig::new([2, 1], [2, 2]).init(&device);
        layer.depthwise.weight =
            Param::from_tensor(tensor(vec![1., 1., 1., 1., 2., 2., 2., 2.], [2, 1, 2, 2]));
        layer.pointwise.weight = Param::from_tensor(tensor(vec![1., 10.], [1, 2, 1, 1]));
        layer.pointwise.bias = Some(Param::from_tensor(tensor(vec![0.5], [1])));
        let x = tensor(
            vec![
                1., 2., 3., 4., 5., 6., 7., 8., 9., 1., 1., 1., 1., 1., 1., 1., 1., 1.,
            ],
            [1, 2, 3, 3],
        );
        let y = layer.forward(x);
        assert_eq!(y.dims(), [1, 1, 2, 2]);
        // channel 0 window sums: 12 16 24 28; channel 1: 2·4 = 8 everywhere.
        assert_eq!(values(y), vec![92.5, 96.5, 104.5, 108.5]);
    }

    #[test]
    fn lrn_is_pytorchs_formula_and_paper_lrn_the_papers() {
        // One position, 3 channels a = (1, 2, 3), n = 3: sums of squares over (c-1..=c+1)
        // with zero padding: 5, 14, 13.
        let x = tensor(vec![1., 2., 3.], [1, 3, 1, 1]);
        let torch = LocalResponseNormConfig::new(3)
            .with_alpha(0.3)
            .with_beta(0.5)
            .with_k(1.0)
            .init();
        let expect: Vec<f32> = [(1., 5.), (2., 14.), (3., 13.)]
            .iter()
            .map(|&(a, s): &(f32, f32)| a / (1.0 + 0.3 / 3.0 * s).powf(0.5))
            .collect();
        for (got, want) in values(torch.forward(x.clone())).iter().zip(&expect) {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
        // The paper: b = a / (2 + 1e-4 · Σ a²)^0.75 over 5 channels (all three here).
        let paper: Vec<f32> = [(1., 14.), (2., 14.), (3., 14.)]
            .iter()
            .map(|&(a, s): &(f32, f32)| a / (2.0 + 1e-4 * s).powf(0.75))
            .collect();
        for (got, want) in values(paper_lrn().forward(x)).iter().zip(&paper) {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
    }

    #[test]
    fn bilinear_kernel_is_fcns() {
        // k = 4 (upsampling by 2): taps 0.25, 0.75, 0.75, 0.25.
        let k = values(bilinear_kernel(2, 4, &Device::flex()));
        let taps = [0.25f32, 0.75, 0.75, 0.25];
        for y in 0..4 {
            for x in 0..4 {
                assert_eq!(k[y * 4 + x], taps[y] * taps[x]);
                assert_eq!(k[16 + y * 4 + x], 0.0, "no cross-channel weight");
                assert_eq!(k[48 + y * 4 + x], taps[y] * taps[x]);
            }
        }
    }

    #[test]
    fn parameter_count_leaves_out_running_statistics() {
        let bn = BatchNormConfig::new(8).init(&Device::flex());
        assert_eq!(bn.num_params(), 32);
        assert_eq!(parameter_count(&bn), 16);
    }
}
