//! The lecture's Fashion-MNIST CNN (Géron, *Hands-On Machine Learning*, chapter 14):
//!
//! ```text
//! input 28×28×1
//! conv1  64 filters 7×7 same, ReLU      → max pool 2
//! conv2 128 filters 3×3 same, ReLU
//! conv3 128 filters 3×3 same, ReLU      → max pool 2
//! conv4 256 filters 3×3 same, ReLU
//! conv5 256 filters 3×3 same, ReLU      → max pool 2
//! flatten → fc1 128 ReLU → dropout 0.5 → fc2 64 ReLU → dropout 0.5 → fc3 10
//! ```
//!
//! 1,413,834 parameters for 28×28 inputs. Weights start as Keras' do (Glorot-uniform, zero
//! biases): with Burn's default initialization this network does not start learning.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Dropout, DropoutConfig, Initializer, Linear, PaddingConfig2d, Relu};
use burn::prelude::*;

use crate::conv::{FastConv2d, FastMaxPool2d};

use crate::layers::Taps;
use crate::summary::{Summarize, Summary};

/// Keras' default kernel initializer: Glorot (Xavier) uniform, gain 1.
pub(crate) const GLOROT_UNIFORM: Initializer = Initializer::XavierUniform { gain: 1.0 };

/// Hyper-parameters of [`FashionCnn`].
#[derive(Config, Debug)]
pub struct FashionCnnConfig {
    /// Number of output classes.
    #[config(default = 10)]
    pub num_classes: usize,
    /// Input channels (1 for grayscale).
    #[config(default = 1)]
    pub in_channels: usize,
    /// Input height and width. Any size divisible into the three poolings works; the lecture
    /// uses 28×28. Tests use small sizes.
    #[config(default = "[28, 28]")]
    pub input_size: [usize; 2],
    /// Dropout probability after each hidden dense layer.
    #[config(default = 0.5)]
    pub dropout: f64,
}

/// The Fashion-MNIST CNN. Field names follow Keras' layer order.
#[derive(Module, Debug)]
pub struct FashionCnn {
    /// 64 filters 7×7, same padding.
    pub conv1: Conv2d,
    /// 128 filters 3×3.
    pub conv2: Conv2d,
    /// 128 filters 3×3.
    pub conv3: Conv2d,
    /// 256 filters 3×3.
    pub conv4: Conv2d,
    /// 256 filters 3×3.
    pub conv5: Conv2d,
    /// 2×2 max pooling, stride 2 (shared: it has no parameters).
    pub pool: MaxPool2d,
    /// Dense 128.
    pub fc1: Linear,
    /// Dense 64.
    pub fc2: Linear,
    /// Dense `num_classes`: the head.
    pub fc3: Linear,
    /// Dropout after `fc1` and `fc2`.
    pub dropout: Dropout,
    /// ReLU.
    pub activation: Relu,
}

/// A 3×3 (or `k`×`k`) same-padded convolution with Keras' initialization.
pub(crate) fn keras_conv(in_ch: usize, out_ch: usize, k: usize, device: &Device) -> Conv2d {
    let mut conv = Conv2dConfig::new([in_ch, out_ch], [k, k])
        .with_padding(PaddingConfig2d::Same)
        .with_bias(false)
        .with_initializer(GLOROT_UNIFORM)
        .init(device);
    conv.bias = Some(Initializer::Zeros.init([out_ch], device));
    conv
}

/// A dense layer with Keras' initialization (Glorot-uniform weights, zero bias).
pub(crate) fn keras_linear(d_in: usize, d_out: usize, device: &Device) -> Linear {
    crate::layers::linear_zero_bias(d_in, d_out, GLOROT_UNIFORM, device)
}

impl FashionCnnConfig {
    /// Height and width after the three 2×2 poolings (each rounds down, as Keras' `valid`).
    pub fn feature_size(&self) -> [usize; 2] {
        self.input_size.map(|s| s / 2 / 2 / 2)
    }

    /// Builds the network on `device`.
    ///
    /// # Panics
    /// If the input is too small to survive three poolings (smaller than 8×8).
    pub fn init(&self, device: &Device) -> FashionCnn {
        let [h, w] = self.feature_size();
        assert!(
            h > 0 && w > 0,
            "FashionCnn needs inputs of at least 8×8, got {:?}",
            self.input_size
        );
        FashionCnn {
            conv1: keras_conv(self.in_channels, 64, 7, device),
            conv2: keras_conv(64, 128, 3, device),
            conv3: keras_conv(128, 128, 3, device),
            conv4: keras_conv(128, 256, 3, device),
            conv5: keras_conv(256, 256, 3, device),
            pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
            fc1: keras_linear(256 * h * w, 128, device),
            fc2: keras_linear(128, 64, device),
            fc3: keras_linear(64, self.num_classes, device),
            dropout: DropoutConfig::new(self.dropout).init(),
            activation: Relu::new(),
        }
    }
}

impl FashionCnn {
    /// Everything up to the head: `[batch, channels, height, width]` → `[batch, 64]`.
    pub fn forward_features(&self, x: Tensor<4>) -> Tensor<2> {
        self.features_from_map(self.forward_tapped(x, &mut Taps::default()))
    }

    /// The dense layers before the head, from the last pooled map: `[batch, 64]`.
    pub fn features_from_map(&self, x: Tensor<4>) -> Tensor<2> {
        // Keras flattens channels-last; the order only matters for imported Keras weights.
        let x = x.flatten::<2>(1, 3);
        let x = self
            .dropout
            .forward(self.activation.forward(self.fc1.forward(x)));
        self.dropout
            .forward(self.activation.forward(self.fc2.forward(x)))
    }

    /// The convolutional part, tapping `conv1` … `conv5` (after their ReLU) and `pool1` …
    /// `pool3`: `[batch, 256, h / 8, w / 8]`.
    pub fn forward_tapped(&self, x: Tensor<4>, taps: &mut Taps) -> Tensor<4> {
        let conv = |name: &str, conv: &Conv2d, x, taps: &mut Taps| {
            taps.tap(
                || name.into(),
                self.activation.forward(conv.fast_forward(x)),
            )
        };
        let x = conv("conv1", &self.conv1, x, taps);
        let x = taps.tap(|| "pool1".into(), self.pool.fast_forward(x));
        let x = conv("conv2", &self.conv2, x, taps);
        let x = conv("conv3", &self.conv3, x, taps);
        let x = taps.tap(|| "pool2".into(), self.pool.fast_forward(x));
        let x = conv("conv4", &self.conv4, x, taps);
        let x = conv("conv5", &self.conv5, x, taps);
        taps.tap(|| "pool3".into(), self.pool.fast_forward(x))
    }

    /// Class logits: `[batch, channels, height, width]` → `[batch, num_classes]`.
    /// Apply softmax for probabilities.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.fc3.forward(self.forward_features(x))
    }

    /// Replaces the head with a fresh one for `num_classes` classes (transfer learning).
    pub fn with_num_classes(mut self, num_classes: usize, device: &Device) -> Self {
        self.fc3 = keras_linear(64, num_classes, device);
        self
    }

    /// Freezes every parameter but the head's.
    pub fn freeze_backbone(self) -> Self {
        let mut frozen = self.freeze();
        frozen.fc3 = frozen.fc3.unfreeze();
        frozen
    }
}

impl Summarize for FashionCnn {
    fn summarize(&self, s: &mut Summary) {
        s.conv2d("conv1", &self.conv1);
        s.same("relu", "ReLU");
        s.max_pool2d("pool", &self.pool);
        s.conv2d("conv2", &self.conv2);
        s.same("relu", "ReLU");
        s.conv2d("conv3", &self.conv3);
        s.same("relu", "ReLU");
        s.max_pool2d("pool", &self.pool);
        s.conv2d("conv4", &self.conv4);
        s.same("relu", "ReLU");
        s.conv2d("conv5", &self.conv5);
        s.same("relu", "ReLU");
        s.max_pool2d("pool", &self.pool);
        s.linear("fc1", &self.fc1);
        s.same("relu", "ReLU");
        s.linear("fc2", &self.fc2);
        s.same("relu", "ReLU");
        s.linear("fc3", &self.fc3);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_count_matches_the_lecture() {
        let model = FashionCnnConfig::new().init(&Device::flex());
        assert_eq!(model.num_params(), 1_413_834);
    }

    #[test]
    fn output_shape_and_keras_init() {
        let device = Device::flex();
        let model = FashionCnnConfig::new().init(&device);
        let out = model.forward(Tensor::zeros([3, 1, 28, 28], &device));
        assert_eq!(out.dims(), [3, 10]);
        // Zero biases and zero input: the logits are exactly zero.
        let max = out.abs().max().into_scalar::<f32>();
        assert_eq!(max, 0.0);
        // Glorot-uniform bound for conv1: sqrt(6 / (49 + 64·49)).
        let bound = (6.0f32 / (49.0 + 64.0 * 49.0)).sqrt();
        let w = model.conv1.weight.val().abs().max().into_scalar::<f32>();
        assert!(w <= bound && w > 0.8 * bound, "{w} vs {bound}");
    }

    #[test]
    fn small_inputs_and_new_heads() {
        let device = Device::flex();
        let model = FashionCnnConfig::new()
            .with_input_size([8, 8])
            .init(&device);
        let model = model.with_num_classes(3, &device);
        let out = model.forward(Tensor::ones([2, 1, 8, 8], &device));
        assert_eq!(out.dims(), [2, 3]);
    }
}
