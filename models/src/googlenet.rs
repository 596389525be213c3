//! GoogLeNet (Szegedy et al., *Going Deeper with Convolutions*, 2014): nine inception modules
//! (parallel 1×1, 1×1→3×3, 1×1→5×5 and pool→1×1 branches, concatenated), global average
//! pooling and one dense layer, with two optional auxiliary classifiers for training.
//!
//! - `googlenet`: torchvision's layout (each convolution followed by batch norm with
//!   ε = 0.001, ceil-mode pooling, and — as torchvision keeps for its weights — a 3×3 kernel
//!   in the "5×5" branch). 6,624,904 parameters without the auxiliary heads; loads
//!   torchvision weights (`inception3a.branch2.1.conv.weight`, …).
//! - `googlenet-paper`: the 2014 paper: no batch norm (convolutions with biases), local
//!   response normalization after the stem's first pooling and third convolution, true 5×5
//!   convolutions, dropout 0.4.
//!
//! ```text
//! module   1×1   3×3 reduce   3×3   5×5 reduce   5×5   pool proj        (paper, table 1)
//! 3a        64        96      128        16       32       32
//! 3b       128       128      192        32       96       64    → max pool 3/2
//! 4a       192        96      208        16       48       64
//! 4b       160       112      224        24       64       64
//! 4c       128       128      256        24       64       64
//! 4d       112       144      288        32       64       64
//! 4e       256       160      320        32      128      128    → max pool
//! 5a       256       160      320        32      128      128
//! 5b       384       192      384        48      128      128    → avg pool, dropout, fc
//! ```

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::MaxPool2d;
use burn::nn::{
    BatchNorm, BatchNormConfig, Dropout, DropoutConfig, Initializer, Linear, LocalResponseNorm,
    LocalResponseNormConfig, PaddingConfig2d, Relu,
};
use burn::prelude::*;

use crate::conv::{FastBatchNorm, FastConv2d, FastMaxPool2d};

use crate::layers::{Taps, global_avg_pool, max_pool};
use crate::summary::{Summarize, Summary};

/// Convolution weights as torchvision initializes GoogLeNet: N(0, 0.01) (truncated at ±2σ
/// there; the truncation changes nothing that matters before training).
const INIT: Initializer = Initializer::Normal {
    mean: 0.0,
    std: 0.01,
};

/// Hyper-parameters of [`GoogLeNet`].
#[derive(Config, Debug)]
pub struct GoogLeNetConfig {
    /// Output classes.
    #[config(default = 1000)]
    pub num_classes: usize,
    /// Input channels.
    #[config(default = 3)]
    pub in_channels: usize,
    /// Build the two auxiliary classifiers (after 4a and 4d), used in training only.
    #[config(default = false)]
    pub aux_logits: bool,
    /// Dropout before the head (torchvision 0.2, the paper 0.4).
    #[config(default = 0.2)]
    pub dropout: f64,
    /// The 2014 paper's network instead of torchvision's.
    #[config(default = false)]
    pub paper: bool,
    /// Divides every width (reduced test networks that keep the keys).
    #[config(default = 1)]
    pub width_divisor: usize,
}

impl GoogLeNetConfig {
    /// torchvision's GoogLeNet.
    pub fn googlenet(num_classes: usize) -> Self {
        Self::new().with_num_classes(num_classes)
    }

    /// The 2014 paper's GoogLeNet.
    pub fn paper_2014(num_classes: usize) -> Self {
        Self::new()
            .with_num_classes(num_classes)
            .with_paper(true)
            .with_dropout(0.4)
    }

    /// Builds the network on `device`.
    pub fn init(&self, device: &Device) -> GoogLeNet {
        let d = self.width_divisor;
        let unit = |c_in: usize, c_out: usize, k: usize, stride: usize| {
            BasicConv2d::new(c_in, c_out, k, stride, !self.paper, device)
        };
        let inception = |c_in: usize, widths: [usize; 6]| {
            Inception::new(c_in / d, widths.map(|w| w / d), self.paper, device)
        };
        let lrn = || {
            self.paper
                .then(|| LocalResponseNormConfig::new(5).with_alpha(1e-4).init())
        };
        let aux = |c_in: usize| {
            self.aux_logits
                .then(|| InceptionAux::new(c_in / d, self.num_classes, d, !self.paper, device))
        };
        GoogLeNet {
            conv1: unit(self.in_channels, 64 / d, 7, 2),
            maxpool1: max_pool(3, 2, 0, true),
            lrn1: lrn(),
            conv2: unit(64 / d, 64 / d, 1, 1),
            conv3: unit(64 / d, 192 / d, 3, 1),
            lrn2: lrn(),
            maxpool2: max_pool(3, 2, 0, true),
            inception3a: inception(192, [64, 96, 128, 16, 32, 32]),
            inception3b: inception(256, [128, 128, 192, 32, 96, 64]),
            maxpool3: max_pool(3, 2, 0, true),
            inception4a: inception(480, [192, 96, 208, 16, 48, 64]),
            inception4b: inception(512, [160, 112, 224, 24, 64, 64]),
            inception4c: inception(512, [128, 128, 256, 24, 64, 64]),
            inception4d: inception(512, [112, 144, 288, 32, 64, 64]),
            inception4e: inception(528, [256, 160, 320, 32, 128, 128]),
            maxpool4: if self.paper {
                max_pool(3, 2, 0, true)
            } else {
                max_pool(2, 2, 0, true)
            },
            inception5a: inception(832, [256, 160, 320, 32, 128, 128]),
            inception5b: inception(832, [384, 192, 384, 48, 128, 128]),
            aux1: aux(512),
            aux2: aux(528),
            dropout: DropoutConfig::new(self.dropout).init(),
            fc: linear(1024 / d, self.num_classes, device),
        }
    }
}

fn linear(d_in: usize, d_out: usize, device: &Device) -> Linear {
    crate::layers::linear_zero_bias(d_in, d_out, INIT, device)
}

/// Convolution, batch norm (ε = 0.001; absent in the paper variant, whose convolution has a
/// bias instead), ReLU: torchvision's `BasicConv2d`.
#[derive(Module, Debug)]
pub struct BasicConv2d {
    /// The convolution ("same" padding for odd kernels).
    pub conv: Conv2d,
    /// Batch norm.
    pub bn: Option<BatchNorm>,
    /// ReLU.
    pub relu: Relu,
}

impl BasicConv2d {
    fn new(c_in: usize, c_out: usize, k: usize, stride: usize, bn: bool, device: &Device) -> Self {
        let pad = k / 2;
        let mut conv = Conv2dConfig::new([c_in, c_out], [k, k])
            .with_stride([stride, stride])
            .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
            .with_bias(false)
            .with_initializer(INIT)
            .init(device);
        if !bn {
            conv.bias = Some(Initializer::Zeros.init([c_out], device));
        }
        Self {
            conv,
            bn: bn.then(|| BatchNormConfig::new(c_out).with_epsilon(1e-3).init(device)),
            relu: Relu::new(),
        }
    }

    /// `relu(bn(conv(x)))`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = self.conv.fast_forward(x);
        match &self.bn {
            Some(bn) => bn.fast_forward_relu(x),
            None => self.relu.forward(x),
        }
    }
}

impl Summarize for BasicConv2d {
    fn summarize(&self, s: &mut Summary) {
        s.conv2d("conv", &self.conv);
        if let Some(bn) = &self.bn {
            s.batch_norm("bn", bn);
        }
        s.same("relu", "ReLU");
    }
}

/// An inception module: four branches on the same input, concatenated along channels.
#[derive(Module, Debug)]
pub struct Inception {
    /// 1×1.
    pub branch1: BasicConv2d,
    /// 1×1 reduce, then 3×3.
    pub branch2: (BasicConv2d, BasicConv2d),
    /// 1×1 reduce, then 5×5 (3×3 in torchvision's layout).
    pub branch3: (BasicConv2d, BasicConv2d),
    /// 3×3/1 max pooling, then 1×1 projection.
    pub branch4: (MaxPool2d, BasicConv2d),
}

impl Inception {
    /// `widths`: 1×1, 3×3 reduce, 3×3, 5×5 reduce, 5×5, pool projection.
    fn new(c_in: usize, widths: [usize; 6], paper: bool, device: &Device) -> Self {
        let [c1, r3, c3, r5, c5, pool] = widths;
        let bn = !paper;
        let k5 = if paper { 5 } else { 3 };
        Self {
            branch1: BasicConv2d::new(c_in, c1, 1, 1, bn, device),
            branch2: (
                BasicConv2d::new(c_in, r3, 1, 1, bn, device),
                BasicConv2d::new(r3, c3, 3, 1, bn, device),
            ),
            branch3: (
                BasicConv2d::new(c_in, r5, 1, 1, bn, device),
                BasicConv2d::new(r5, c5, k5, 1, bn, device),
            ),
            branch4: (
                max_pool(3, 1, 1, true),
                BasicConv2d::new(c_in, pool, 1, 1, bn, device),
            ),
        }
    }

    /// `[batch, c_in, h, w]` → `[batch, 1×1 + 3×3 + 5×5 + pool proj, h, w]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let b1 = self.branch1.forward(x.clone());
        let b2 = self.branch2.1.forward(self.branch2.0.forward(x.clone()));
        let b3 = self.branch3.1.forward(self.branch3.0.forward(x.clone()));
        let b4 = self.branch4.1.forward(self.branch4.0.fast_forward(x));
        Tensor::cat(vec![b1, b2, b3, b4], 1)
    }
}

impl Summarize for Inception {
    fn summarize(&self, s: &mut Summary) {
        let [_, h, w] = s.chw();
        let input = s.shape();
        let mut channels = 0;
        let mut branch = |s: &mut Summary, name: &str, f: &dyn Fn(&mut Summary)| {
            s.set_shape(input.clone());
            s.scope(name, f);
            channels += s.chw()[0];
        };
        branch(s, "branch1", &|s| self.branch1.summarize(s));
        branch(s, "branch2", &|s| {
            s.scope("0", |s| self.branch2.0.summarize(s));
            s.scope("1", |s| self.branch2.1.summarize(s));
        });
        branch(s, "branch3", &|s| {
            s.scope("0", |s| self.branch3.0.summarize(s));
            s.scope("1", |s| self.branch3.1.summarize(s));
        });
        branch(s, "branch4", &|s| {
            s.max_pool2d("0", &self.branch4.0);
            s.scope("1", |s| self.branch4.1.summarize(s));
        });
        s.push("concat", "Concat", vec![channels, h, w], 0, 0);
    }
}

/// An auxiliary classifier: 4×4 average pooling, 1×1 convolution to 128, dense 1024,
/// dropout 0.7, dense to the classes.
#[derive(Module, Debug)]
pub struct InceptionAux {
    /// 1×1 convolution to 128 channels.
    pub conv: BasicConv2d,
    /// Dense 1024.
    pub fc1: Linear,
    /// Dense to the classes.
    pub fc2: Linear,
    /// Dropout 0.7.
    pub dropout: Dropout,
}

impl InceptionAux {
    fn new(c_in: usize, num_classes: usize, divisor: usize, bn: bool, device: &Device) -> Self {
        Self {
            conv: BasicConv2d::new(c_in, 128 / divisor, 1, 1, bn, device),
            fc1: linear(2048 / divisor, 1024 / divisor, device),
            fc2: linear(1024 / divisor, num_classes, device),
            dropout: DropoutConfig::new(0.7).init(),
        }
    }

    /// `[batch, c_in, 14, 14]` → `[batch, num_classes]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let x = burn::tensor::module::adaptive_avg_pool2d(x, [4, 4]);
        let x = self.conv.forward(x).flatten::<2>(1, 3);
        let x = burn::tensor::activation::relu(self.fc1.forward(x));
        self.fc2.forward(self.dropout.forward(x))
    }
}

/// GoogLeNet, with torchvision's field names.
#[derive(Module, Debug)]
pub struct GoogLeNet {
    /// 7×7/2 convolution.
    pub conv1: BasicConv2d,
    /// 3×3/2 max pooling.
    pub maxpool1: MaxPool2d,
    /// LRN (paper variant).
    pub lrn1: Option<LocalResponseNorm>,
    /// 1×1 convolution.
    pub conv2: BasicConv2d,
    /// 3×3 convolution to 192.
    pub conv3: BasicConv2d,
    /// LRN (paper variant).
    pub lrn2: Option<LocalResponseNorm>,
    /// 3×3/2 max pooling.
    pub maxpool2: MaxPool2d,
    /// Inception 3a.
    pub inception3a: Inception,
    /// Inception 3b.
    pub inception3b: Inception,
    /// 3×3/2 max pooling.
    pub maxpool3: MaxPool2d,
    /// Inception 4a.
    pub inception4a: Inception,
    /// Inception 4b.
    pub inception4b: Inception,
    /// Inception 4c.
    pub inception4c: Inception,
    /// Inception 4d.
    pub inception4d: Inception,
    /// Inception 4e.
    pub inception4e: Inception,
    /// Max pooling to 7×7.
    pub maxpool4: MaxPool2d,
    /// Inception 5a.
    pub inception5a: Inception,
    /// Inception 5b.
    pub inception5b: Inception,
    /// Auxiliary classifier after 4a.
    pub aux1: Option<InceptionAux>,
    /// Auxiliary classifier after 4d.
    pub aux2: Option<InceptionAux>,
    /// Dropout before the head.
    pub dropout: Dropout,
    /// The head.
    pub fc: Linear,
}

/// GoogLeNet's outputs in training: the main logits and the auxiliary ones.
#[derive(Debug, Clone)]
pub struct GoogLeNetOutput {
    /// Main classifier logits.
    pub logits: Tensor<2>,
    /// Auxiliary classifier after 4a (when built).
    pub aux1: Option<Tensor<2>>,
    /// Auxiliary classifier after 4d (when built).
    pub aux2: Option<Tensor<2>>,
}

impl GoogLeNet {
    /// The trunk: pooled features `[batch, 1024]` and, when `aux` and built, the auxiliary
    /// logits.
    fn trunk(&self, x: Tensor<4>, aux: bool) -> (Tensor<2>, Option<Tensor<2>>, Option<Tensor<2>>) {
        let (x, aux1, aux2) = self.forward_trunk(x, aux, &mut Taps::default());
        (global_avg_pool(x), aux1, aux2)
    }

    /// The last feature map `[batch, 1024, h / 32, w / 32]`, tapping every named stage
    /// (`conv1`, `maxpool1`, …, `inception3a`, …, `inception5b`, torchvision's names).
    pub fn forward_tapped(&self, x: Tensor<4>, taps: &mut Taps) -> Tensor<4> {
        self.forward_trunk(x, false, taps).0
    }

    fn forward_trunk(
        &self,
        x: Tensor<4>,
        aux: bool,
        taps: &mut Taps,
    ) -> (Tensor<4>, Option<Tensor<2>>, Option<Tensor<2>>) {
        let mut tap = |name: &str, x| taps.tap(|| name.into(), x);
        let x = tap("conv1", self.conv1.forward(x));
        let x = tap("maxpool1", self.maxpool1.fast_forward(x));
        let x = match &self.lrn1 {
            Some(lrn) => lrn.forward(x),
            None => x,
        };
        let x = tap("conv2", self.conv2.forward(x));
        let x = tap("conv3", self.conv3.forward(x));
        let x = match &self.lrn2 {
            Some(lrn) => lrn.forward(x),
            None => x,
        };
        let x = tap("maxpool2", self.maxpool2.fast_forward(x));
        let x = tap("inception3a", self.inception3a.forward(x));
        let x = tap("inception3b", self.inception3b.forward(x));
        let x = tap("maxpool3", self.maxpool3.fast_forward(x));
        let x = tap("inception4a", self.inception4a.forward(x));
        let aux1 = self
            .aux1
            .as_ref()
            .filter(|_| aux)
            .map(|head| head.forward(x.clone()));
        let x = tap("inception4b", self.inception4b.forward(x));
        let x = tap("inception4c", self.inception4c.forward(x));
        let x = tap("inception4d", self.inception4d.forward(x));
        let aux2 = self
            .aux2
            .as_ref()
            .filter(|_| aux)
            .map(|head| head.forward(x.clone()));
        let x = tap("inception4e", self.inception4e.forward(x));
        let x = tap("maxpool4", self.maxpool4.fast_forward(x));
        let x = tap("inception5a", self.inception5a.forward(x));
        let x = tap("inception5b", self.inception5b.forward(x));
        (x, aux1, aux2)
    }

    /// All three classifiers (the auxiliary ones when built): for training with the paper's
    /// loss, `main + 0.3 · (aux1 + aux2)`.
    pub fn forward_with_aux(&self, x: Tensor<4>) -> GoogLeNetOutput {
        let (features, aux1, aux2) = self.trunk(x, true);
        GoogLeNetOutput {
            logits: self.fc.forward(self.dropout.forward(features)),
            aux1,
            aux2,
        }
    }

    /// Pooled features before the head: `[batch, 1024]`.
    pub fn forward_features(&self, x: Tensor<4>) -> Tensor<2> {
        self.trunk(x, false).0
    }

    /// Class logits of the main classifier, `[batch, num_classes]` (auxiliary heads unused).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.fc
            .forward(self.dropout.forward(self.forward_features(x)))
    }

    /// Replaces the head (and the auxiliary heads' last layers) for `num_classes` classes.
    pub fn with_num_classes(mut self, num_classes: usize, device: &Device) -> Self {
        let [features, _] = self.fc.weight.dims();
        self.fc = linear(features, num_classes, device);
        for aux in [&mut self.aux1, &mut self.aux2].into_iter().flatten() {
            let [hidden, _] = aux.fc2.weight.dims();
            aux.fc2 = linear(hidden, num_classes, device);
        }
        self
    }

    /// Freezes every parameter but the head's.
    pub fn freeze_backbone(self) -> Self {
        let mut frozen = self.freeze();
        frozen.fc = frozen.fc.unfreeze();
        frozen
    }
}

impl Summarize for GoogLeNet {
    fn summarize(&self, s: &mut Summary) {
        s.scope("conv1", |s| self.conv1.summarize(s));
        s.max_pool2d("maxpool1", &self.maxpool1);
        if self.lrn1.is_some() {
            s.same("lrn1", "LocalResponseNorm");
        }
        s.scope("conv2", |s| self.conv2.summarize(s));
        s.scope("conv3", |s| self.conv3.summarize(s));
        if self.lrn2.is_some() {
            s.same("lrn2", "LocalResponseNorm");
        }
        s.max_pool2d("maxpool2", &self.maxpool2);
        s.scope("inception3a", |s| self.inception3a.summarize(s));
        s.scope("inception3b", |s| self.inception3b.summarize(s));
        s.max_pool2d("maxpool3", &self.maxpool3);
        for (name, m) in [
            ("inception4a", &self.inception4a),
            ("inception4b", &self.inception4b),
            ("inception4c", &self.inception4c),
            ("inception4d", &self.inception4d),
            ("inception4e", &self.inception4e),
        ] {
            s.scope(name, |s| m.summarize(s));
        }
        s.max_pool2d("maxpool4", &self.maxpool4);
        s.scope("inception5a", |s| self.inception5a.summarize(s));
        s.scope("inception5b", |s| self.inception5b.summarize(s));
        s.global_pool("avgpool", "AdaptiveAvgPool2d");
        s.linear("fc", &self.fc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::parameter_count;

    #[test]
    fn parameter_counts_and_multiply_adds() {
        let device = Device::flex();
        let model = GoogLeNetConfig::googlenet(1000).init(&device);
        let s = Summary::of(&model, &[3, 224, 224]);
        assert_eq!(s.params(), 6_624_904);
        assert!((s.macs() as f64 / 1e9 - 1.50).abs() < 0.01, "{}", s.macs());
        assert_eq!(s.shape(), vec![1000]);
        let with_aux = GoogLeNetConfig::googlenet(1000)
            .with_aux_logits(true)
            .init(&device);
        // torchvision with aux_logits=True: 13,004,888.
        assert_eq!(parameter_count(&with_aux), 13_004_888);
    }

    #[test]
    fn forward_shapes_with_and_without_aux() {
        let device = Device::flex();
        let model = GoogLeNetConfig::googlenet(5)
            .with_width_divisor(8)
            .with_aux_logits(true)
            .init(&device);
        let out = model.forward_with_aux(Tensor::zeros([2, 3, 224, 224], &device));
        assert_eq!(out.logits.dims(), [2, 5]);
        assert_eq!(out.aux1.map(|t| t.dims()), Some([2, 5]));
        assert_eq!(out.aux2.map(|t| t.dims()), Some([2, 5]));
        let s = Summary::of(&model, &[3, 97, 131]);
        assert_eq!(
            model
                .forward(Tensor::zeros([1, 3, 97, 131], &device))
                .dims(),
            [1, 5]
        );
        assert_eq!(s.shape(), vec![5]);
        let paper = GoogLeNetConfig::paper_2014(5)
            .with_width_divisor(8)
            .init(&device);
        assert_eq!(
            paper
                .forward(Tensor::zeros([1, 3, 224, 224], &device))
                .dims(),
            [1, 5]
        );
    }
}
