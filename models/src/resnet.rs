//! ResNet (He et al., *Deep Residual Learning for Image Recognition*, 2015), in torchvision's
//! layout so that torchvision state dicts load key for key (`conv1`, `bn1`,
//! `layer1.0.conv1`, `layer2.0.downsample.0`, `fc`).
//!
//! Two families from the same paper:
//! - ImageNet (section 3.4, table 1): a 7×7/2 stem and max pooling, four stages of 64–512
//!   filters, basic 3×3-3×3 units for 18/34 layers and bottleneck 1×1-3×3-1×1 units (×4
//!   expansion, stride on the 3×3 as torchvision's "v1.5") for 50/101/152; a 1×1 projection
//!   with batch norm where the stride or width changes.
//! - Small images (section 4.2, CIFAR-10): a 3×3 stem without pooling, three stages of
//!   16/32/64 filters with `n` basic units each, `6n + 2` layers: ResNet-20/32/44/56/110.
//!   The paper's shortcut where the shape changes is option A (stride-2 subsampling padded
//!   with zero channels, no parameters); option B (projection) is available.
//!
//! ```text
//! name        units per stage    unit         parameters (1000 classes)
//! resnet18    2-2-2-2            basic        11,689,512
//! resnet34    3-4-6-3            basic        21,797,672
//! resnet50    3-4-6-3            bottleneck   25,557,032
//! resnet101   3-4-23-3           bottleneck   44,549,160
//! resnet152   3-8-36-3           bottleneck   60,192,808
//! resnet20    3-3-3 (n = 3)      basic        269,722 (10 classes)
//! ```

use burn::nn::conv::Conv2d;
use burn::nn::pool::MaxPool2d;
use burn::nn::{BatchNorm, Linear, LinearConfig, Relu};
use burn::prelude::*;

use crate::conv::{FastBatchNorm, FastConv2d, FastMaxPool2d};
use burn::tensor::s;

use crate::layers::{Taps, batch_norm, conv, global_avg_pool, max_pool};
use crate::summary::{Summarize, Summary};

/// The residual unit of a ResNet.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// Two 3×3 convolutions (ResNet-18/34 and the small-image ResNets). Expansion 1.
    Basic,
    /// 1×1 reduce, 3×3, 1×1 expand ×4 (ResNet-50/101/152).
    Bottleneck,
}

impl BlockKind {
    /// Output channels per unit width.
    pub fn expansion(self) -> usize {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

/// How a unit's shortcut matches a change of stride or width.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum Shortcut {
    /// Option B: a 1×1 convolution with the unit's stride, then batch norm (`downsample.0/1`).
    Projection,
    /// Option A: subsample by the stride and pad the new channels with zeros; no parameters.
    ZeroPad,
}

/// Hyper-parameters of a [`ResNet`].
#[derive(Config, Debug)]
pub struct ResNetConfig {
    /// Basic or bottleneck units.
    pub block: BlockKind,
    /// Units per stage: four stages for the ImageNet family, three for the small-image one.
    pub layers: Vec<usize>,
    /// Output classes.
    #[config(default = 1000)]
    pub num_classes: usize,
    /// Input channels.
    #[config(default = 3)]
    pub in_channels: usize,
    /// Filters of the first stage (64 for ImageNet, 16 for the small-image family); each
    /// later stage doubles it. Smaller values give reduced-width test networks with the same
    /// keys.
    #[config(default = 64)]
    pub width: usize,
    /// The small-image stem (3×3/1 convolution, no max pooling) instead of 7×7/2 + pooling.
    #[config(default = false)]
    pub small_input: bool,
    /// Shortcut where the shape changes.
    #[config(default = "Shortcut::Projection")]
    pub shortcut: Shortcut,
    /// Stride of the small-image stem's 3×3 convolution (2 runs a 64×64 input at the cost
    /// of 32×32, for generated canvases; the ImageNet stem is always 7×7/2).
    #[config(default = 1)]
    pub stem_stride: usize,
    /// Start the last batch norm of every residual unit (`bn2` of a basic unit, `bn3` of a
    /// bottleneck) with a zero scale, so that each unit begins as its shortcut alone
    /// (torchvision's `zero_init_residual`; Goyal et al., *Accurate, Large Minibatch SGD*,
    /// 2017, section 5.1). The keys and the parameter count are unchanged.
    #[config(default = false)]
    pub zero_init_residual: bool,
}

impl ResNetConfig {
    /// ResNet-18: basic units, 2-2-2-2.
    pub fn resnet18(num_classes: usize) -> Self {
        Self::new(BlockKind::Basic, vec![2, 2, 2, 2]).with_num_classes(num_classes)
    }
    /// ResNet-34: basic units, 3-4-6-3.
    pub fn resnet34(num_classes: usize) -> Self {
        Self::new(BlockKind::Basic, vec![3, 4, 6, 3]).with_num_classes(num_classes)
    }
    /// ResNet-50: bottleneck units, 3-4-6-3.
    pub fn resnet50(num_classes: usize) -> Self {
        Self::new(BlockKind::Bottleneck, vec![3, 4, 6, 3]).with_num_classes(num_classes)
    }
    /// ResNet-101: bottleneck units, 3-4-23-3.
    pub fn resnet101(num_classes: usize) -> Self {
        Self::new(BlockKind::Bottleneck, vec![3, 4, 23, 3]).with_num_classes(num_classes)
    }
    /// ResNet-152: bottleneck units, 3-8-36-3.
    pub fn resnet152(num_classes: usize) -> Self {
        Self::new(BlockKind::Bottleneck, vec![3, 8, 36, 3]).with_num_classes(num_classes)
    }
    /// The small-image ResNet with `6n + 2` layers (20, 32, 44, 56, 110 for n = 3, 5, 7, 9,
    /// 18): three stages of `n` basic units with 16, 32, 64 filters, option-A shortcuts.
    pub fn small(n: usize, num_classes: usize, in_channels: usize) -> Self {
        Self::new(BlockKind::Basic, vec![n; 3])
            .with_num_classes(num_classes)
            .with_in_channels(in_channels)
            .with_width(16)
            .with_small_input(true)
            .with_shortcut(Shortcut::ZeroPad)
    }

    /// Channels of the features before the head.
    pub fn feature_channels(&self) -> usize {
        (self.width << (self.layers.len() - 1)) * self.block.expansion()
    }

    /// Builds the network on `device`.
    pub fn init(&self, device: &Device) -> ResNet {
        assert!(
            (1..=4).contains(&self.layers.len()),
            "a ResNet has 1 to 4 stages"
        );
        let (conv1, maxpool) = if self.small_input {
            (
                conv(
                    [self.in_channels, self.width],
                    3,
                    self.stem_stride.max(1),
                    1,
                    false,
                    device,
                ),
                None,
            )
        } else {
            (
                conv([self.in_channels, self.width], 7, 2, 3, false, device),
                Some(max_pool(3, 2, 1, false)),
            )
        };
        let mut c_in = self.width;
        let mut stages: Vec<Vec<Block>> = Vec::new();
        for (i, &units) in self.layers.iter().enumerate() {
            let planes = self.width << i;
            let stride = if i == 0 { 1 } else { 2 };
            let mut stage = Vec::with_capacity(units);
            for u in 0..units {
                let stride = if u == 0 { stride } else { 1 };
                stage.push(Block::new(self, c_in, planes, stride, device));
                c_in = planes * self.block.expansion();
            }
            stages.push(stage);
        }
        stages.resize_with(4, Vec::new);
        let mut stages = stages.into_iter();
        let mut next = || stages.next().unwrap_or_default();
        let model = ResNet {
            conv1,
            bn1: batch_norm(self.width, device),
            relu: Relu::new(),
            maxpool,
            layer1: next(),
            layer2: next(),
            layer3: next(),
            layer4: next(),
            fc: LinearConfig::new(c_in, self.num_classes).init(device),
        };
        if self.zero_init_residual {
            model.zero_init_residual()
        } else {
            model
        }
    }
}

/// `bn` with its scale (gamma) set to zero; the parameter keeps its id, and is trained as
/// before (the new tensor tracks gradients where the old one did).
fn zero_scale(mut bn: BatchNorm) -> BatchNorm {
    bn.gamma = bn.gamma.map(|gamma| {
        let tracked = gamma.is_require_grad();
        gamma.zeros_like().set_require_grad(tracked)
    });
    bn
}

/// A residual unit: basic or bottleneck.
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)] // Module derives need the modules inline, not boxed.
pub enum Block {
    /// 3×3, 3×3.
    Basic(BasicBlock),
    /// 1×1, 3×3, 1×1.
    Bottleneck(Bottleneck),
}

impl Block {
    fn new(
        config: &ResNetConfig,
        c_in: usize,
        planes: usize,
        stride: usize,
        device: &Device,
    ) -> Self {
        let c_out = planes * config.block.expansion();
        let reshapes = stride != 1 || c_in != c_out;
        let downsample = (reshapes && config.shortcut == Shortcut::Projection).then(|| {
            (
                conv([c_in, c_out], 1, stride, 0, false, device),
                batch_norm(c_out, device),
            )
        });
        let pad_channels = if reshapes && config.shortcut == Shortcut::ZeroPad {
            c_out - c_in
        } else {
            0
        };
        match config.block {
            BlockKind::Basic => Block::Basic(BasicBlock {
                conv1: conv([c_in, planes], 3, stride, 1, false, device),
                bn1: batch_norm(planes, device),
                conv2: conv([planes, planes], 3, 1, 1, false, device),
                bn2: batch_norm(planes, device),
                relu: Relu::new(),
                downsample,
                stride,
                pad_channels,
            }),
            BlockKind::Bottleneck => Block::Bottleneck(Bottleneck {
                conv1: conv([c_in, planes], 1, 1, 0, false, device),
                bn1: batch_norm(planes, device),
                conv2: conv([planes, planes], 3, stride, 1, false, device),
                bn2: batch_norm(planes, device),
                conv3: conv([planes, c_out], 1, 1, 0, false, device),
                bn3: batch_norm(c_out, device),
                relu: Relu::new(),
                downsample,
                stride,
                pad_channels,
            }),
        }
    }

    /// The unit with the scale of its last batch norm set to zero, so that it starts as
    /// its shortcut alone (see [`ResNetConfig::zero_init_residual`]).
    pub fn zero_init_residual(self) -> Self {
        match self {
            Block::Basic(b) => Block::Basic(BasicBlock {
                bn2: zero_scale(b.bn2),
                ..b
            }),
            Block::Bottleneck(b) => Block::Bottleneck(Bottleneck {
                bn3: zero_scale(b.bn3),
                ..b
            }),
        }
    }

    /// `[batch, c_in, h, w]` → `[batch, c_out, h / stride, w / stride]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        match self {
            Block::Basic(b) => b.forward(x),
            Block::Bottleneck(b) => b.forward(x),
        }
    }
}

/// The shortcut branch: identity, projection (option B) or zero-padded subsampling (A).
fn shortcut(
    x: Tensor<4>,
    downsample: &Option<(Conv2d, BatchNorm)>,
    stride: usize,
    pad_channels: usize,
) -> Tensor<4> {
    if let Some((conv, bn)) = downsample {
        return bn.fast_forward(conv.fast_forward(x));
    }
    let x = if stride > 1 {
        x.slice(s![.., .., ..;stride as isize, ..;stride as isize])
    } else {
        x
    };
    if pad_channels == 0 {
        return x;
    }
    let [n, _, h, w] = x.dims();
    let zeros = Tensor::zeros([n, pad_channels, h, w], &x.device());
    Tensor::cat(vec![x, zeros], 1)
}

/// Summary rows of the shortcut branch, from the unit's input shape.
fn summarize_shortcut(
    s: &mut Summary,
    input: Vec<usize>,
    downsample: &Option<(Conv2d, BatchNorm)>,
) {
    if let Some((conv, bn)) = downsample {
        let main = s.shape();
        s.set_shape(input);
        s.conv2d("downsample.0", conv);
        s.batch_norm("downsample.1", bn);
        s.set_shape(main);
    }
}

/// Two 3×3 convolutions with a shortcut around them.
#[derive(Module, Debug)]
pub struct BasicBlock {
    /// 3×3, with the unit's stride.
    pub conv1: Conv2d,
    /// Batch norm after `conv1`.
    pub bn1: BatchNorm,
    /// 3×3.
    pub conv2: Conv2d,
    /// Batch norm after `conv2`.
    pub bn2: BatchNorm,
    /// ReLU.
    pub relu: Relu,
    /// Projection shortcut (1×1 convolution, batch norm), where the shape changes.
    pub downsample: Option<(Conv2d, BatchNorm)>,
    /// The unit's stride.
    pub stride: usize,
    /// Zero channels appended to the shortcut (option A), 0 otherwise.
    pub pad_channels: usize,
}

impl BasicBlock {
    /// `relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let identity = shortcut(x.clone(), &self.downsample, self.stride, self.pad_channels);
        // ReLU (and the shortcut's sum) in batch norm's own pass: see `FastBatchNorm`.
        let out = self.bn1.fast_forward_relu(self.conv1.fast_forward(x));
        self.bn2
            .fast_forward_add_relu(self.conv2.fast_forward(out), identity)
    }
}

impl Summarize for BasicBlock {
    fn summarize(&self, s: &mut Summary) {
        let input = s.shape();
        s.conv2d("conv1", &self.conv1);
        s.batch_norm("bn1", &self.bn1);
        s.same("relu", "ReLU");
        s.conv2d("conv2", &self.conv2);
        s.batch_norm("bn2", &self.bn2);
        summarize_shortcut(s, input, &self.downsample);
        s.same("relu", "ReLU");
    }
}

/// 1×1 reduce, 3×3 (with the unit's stride), 1×1 expand ×4, with a shortcut around them.
#[derive(Module, Debug)]
pub struct Bottleneck {
    /// 1×1 to `planes`.
    pub conv1: Conv2d,
    /// Batch norm after `conv1`.
    pub bn1: BatchNorm,
    /// 3×3 with the unit's stride.
    pub conv2: Conv2d,
    /// Batch norm after `conv2`.
    pub bn2: BatchNorm,
    /// 1×1 to `4 · planes`.
    pub conv3: Conv2d,
    /// Batch norm after `conv3`.
    pub bn3: BatchNorm,
    /// ReLU.
    pub relu: Relu,
    /// Projection shortcut where the shape changes.
    pub downsample: Option<(Conv2d, BatchNorm)>,
    /// The unit's stride.
    pub stride: usize,
    /// Zero channels appended to the shortcut (option A), 0 otherwise.
    pub pad_channels: usize,
}

impl Bottleneck {
    /// `relu(bn3(conv3(…)) + shortcut(x))`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let identity = shortcut(x.clone(), &self.downsample, self.stride, self.pad_channels);
        let out = self.bn1.fast_forward_relu(self.conv1.fast_forward(x));
        let out = self.bn2.fast_forward_relu(self.conv2.fast_forward(out));
        self.bn3
            .fast_forward_add_relu(self.conv3.fast_forward(out), identity)
    }
}

impl Summarize for Bottleneck {
    fn summarize(&self, s: &mut Summary) {
        let input = s.shape();
        s.conv2d("conv1", &self.conv1);
        s.batch_norm("bn1", &self.bn1);
        s.same("relu", "ReLU");
        s.conv2d("conv2", &self.conv2);
        s.batch_norm("bn2", &self.bn2);
        s.same("relu", "ReLU");
        s.conv2d("conv3", &self.conv3);
        s.batch_norm("bn3", &self.bn3);
        summarize_shortcut(s, input, &self.downsample);
        s.same("relu", "ReLU");
    }
}

impl Summarize for Block {
    fn summarize(&self, s: &mut Summary) {
        match self {
            Block::Basic(b) => b.summarize(s),
            Block::Bottleneck(b) => b.summarize(s),
        }
    }
}

/// A residual network. Stages the configuration does not use are empty.
#[derive(Module, Debug)]
pub struct ResNet {
    /// Stem convolution: 7×7/2 (ImageNet) or 3×3/1 (small images).
    pub conv1: Conv2d,
    /// Batch norm after the stem.
    pub bn1: BatchNorm,
    /// ReLU.
    pub relu: Relu,
    /// 3×3/2 max pooling after the stem (ImageNet family only).
    pub maxpool: Option<MaxPool2d>,
    /// Stage 1 (stride 1).
    pub layer1: Vec<Block>,
    /// Stage 2 (stride 2).
    pub layer2: Vec<Block>,
    /// Stage 3 (stride 2).
    pub layer3: Vec<Block>,
    /// Stage 4 (stride 2); empty in the small-image family.
    pub layer4: Vec<Block>,
    /// The classifier head.
    pub fc: Linear,
}

impl ResNet {
    /// The network with the last batch norm of every residual unit scaled to zero
    /// (torchvision's `zero_init_residual`, see [`ResNetConfig::zero_init_residual`]): for a
    /// network built from a registry name, before training it from scratch.
    pub fn zero_init_residual(self) -> Self {
        let zero = |stage: Vec<Block>| stage.into_iter().map(Block::zero_init_residual).collect();
        ResNet {
            layer1: zero(self.layer1),
            layer2: zero(self.layer2),
            layer3: zero(self.layer3),
            layer4: zero(self.layer4),
            ..self
        }
    }

    /// The stages' outputs: `[stem, layer1, layer2, layer3, layer4]` for the stages that
    /// exist, at strides 4, 4, 8, 16, 32 (ImageNet) or 1, 1, 2, 4 (small images). FCN's skip
    /// connections read these.
    pub fn forward_stages(&self, x: Tensor<4>) -> Vec<Tensor<4>> {
        self.forward_tapped(x, &mut Taps::default())
    }

    /// [`ResNet::forward_stages`], tapping `relu` (the stem), `maxpool`, every unit
    /// (`layer1.0`, …) and every stage (`layer1`, …), torchvision's names.
    pub fn forward_tapped(&self, x: Tensor<4>, taps: &mut Taps) -> Vec<Tensor<4>> {
        let x = self.bn1.fast_forward_relu(self.conv1.fast_forward(x));
        let x = taps.tap(|| "relu".into(), x);
        let x = match &self.maxpool {
            Some(pool) => taps.tap(|| "maxpool".into(), pool.fast_forward(x)),
            None => x,
        };
        let mut outputs = vec![x];
        for (s, stage) in self.stages().enumerate() {
            let x = outputs.last().expect("the stem output is there").clone();
            let x = stage.iter().enumerate().fold(x, |x, (b, block)| {
                taps.tap(|| format!("layer{}.{b}", s + 1), block.forward(x))
            });
            outputs.push(taps.tap(|| format!("layer{}", s + 1), x));
        }
        outputs
    }

    /// The non-empty stages, in order.
    pub fn stages(&self) -> impl Iterator<Item = &Vec<Block>> {
        [&self.layer1, &self.layer2, &self.layer3, &self.layer4]
            .into_iter()
            .filter(|stage| !stage.is_empty())
    }

    /// The last stage's feature map, `[batch, channels, h / 32, w / 32]` (ImageNet family).
    pub fn forward_feature_map(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward_stages(x).pop().expect("at least the stem")
    }

    /// Globally pooled features, `[batch, channels]`: everything but the head.
    pub fn forward_features(&self, x: Tensor<4>) -> Tensor<2> {
        global_avg_pool(self.forward_feature_map(x))
    }

    /// Class logits, `[batch, num_classes]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.fc.forward(self.forward_features(x))
    }

    /// Replaces the head with a fresh one for `num_classes` classes.
    pub fn with_num_classes(mut self, num_classes: usize, device: &Device) -> Self {
        let [features, _] = self.fc.weight.dims();
        self.fc = LinearConfig::new(features, num_classes).init(device);
        self
    }

    /// Freezes every parameter but the head's (transfer learning's first phase).
    pub fn freeze_backbone(self) -> Self {
        let mut frozen = self.freeze();
        frozen.fc = frozen.fc.unfreeze();
        frozen
    }
}

impl ResNet {
    /// Summary rows of everything before the global pooling.
    pub fn summarize_features(&self, s: &mut Summary) {
        s.conv2d("conv1", &self.conv1);
        s.batch_norm("bn1", &self.bn1);
        s.same("relu", "ReLU");
        if let Some(pool) = &self.maxpool {
            s.max_pool2d("maxpool", pool);
        }
        for (name, stage) in [
            ("layer1", &self.layer1),
            ("layer2", &self.layer2),
            ("layer3", &self.layer3),
            ("layer4", &self.layer4),
        ] {
            s.scope(name, |s| {
                for (i, block) in stage.iter().enumerate() {
                    s.scope(i.to_string(), |s| block.summarize(s));
                }
            });
        }
    }
}

impl Summarize for ResNet {
    fn summarize(&self, s: &mut Summary) {
        self.summarize_features(s);
        s.global_pool("avgpool", "AdaptiveAvgPool2d");
        s.linear("fc", &self.fc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::parameter_count;

    #[test]
    fn torchvision_parameter_counts() {
        let device = Device::flex();
        for (config, params) in [
            (ResNetConfig::resnet18(1000), 11_689_512),
            (ResNetConfig::resnet34(1000), 21_797_672),
            (ResNetConfig::resnet50(1000), 25_557_032),
            (ResNetConfig::resnet101(1000), 44_549_160),
            (ResNetConfig::resnet152(1000), 60_192_808),
        ] {
            let s = Summary::of(&config.init(&device), &[3, 224, 224]);
            assert_eq!(s.params(), params, "{config:?}");
        }
    }

    #[test]
    fn small_resnet_counts_and_shapes() {
        let device = Device::flex();
        let model = ResNetConfig::small(3, 10, 3).init(&device);
        assert_eq!(parameter_count(&model), 269_722);
        let out = model.forward(Tensor::zeros([2, 3, 32, 32], &device));
        assert_eq!(out.dims(), [2, 10]);
        // 28×28 grayscale (Fashion-MNIST), odd sizes in the last stage: 28 → 14 → 7.
        let model = ResNetConfig::small(3, 10, 1).init(&device);
        let stages = model.forward_stages(Tensor::ones([1, 1, 28, 28], &device));
        let dims: Vec<_> = stages.iter().map(|t| t.dims()).collect();
        assert_eq!(
            dims,
            vec![
                [1, 16, 28, 28],
                [1, 16, 28, 28],
                [1, 32, 14, 14],
                [1, 64, 7, 7]
            ]
        );
        let s = Summary::of(&model, &[1, 28, 28]);
        assert_eq!(s.params(), parameter_count(&model));
        assert_eq!(s.shape(), vec![10]);
        for n in [5, 7, 9, 18] {
            let layers = 6 * n + 2;
            let conv_layers = ResNetConfig::small(n, 10, 3).init(&device);
            let count = Summary::of(&conv_layers, &[3, 32, 32])
                .rows
                .iter()
                .filter(|r| r.kind == "Conv2d" || r.kind == "Linear")
                .count();
            assert_eq!(count, layers);
        }
    }

    #[test]
    fn summary_shapes_agree_with_forward_at_two_sizes() {
        let device = Device::flex();
        for config in [
            ResNetConfig::resnet18(7).with_width(8),
            ResNetConfig::resnet50(7).with_width(4),
        ] {
            let model = config.init(&device);
            for [h, w] in [[64, 64], [65, 97]] {
                let stages = model.forward_stages(Tensor::zeros([1, 3, h, w], &device));
                let s = Summary::of(&model, &[3, h, w]);
                let last = stages.last().unwrap().dims();
                let pooled = s.rows.iter().rev().find(|r| r.kind == "ReLU").unwrap();
                assert_eq!(pooled.output, last[1..].to_vec(), "{h}×{w}");
                assert_eq!(
                    model.forward(Tensor::zeros([2, 3, h, w], &device)).dims(),
                    [2, 7]
                );
            }
        }
    }

    #[test]
    fn published_multiply_adds() {
        let device = Device::flex();
        let gmacs =
            |c: ResNetConfig| Summary::of(&c.init(&device), &[3, 224, 224]).macs() as f64 / 1e9;
        assert!((gmacs(ResNetConfig::resnet18(1000)) - 1.81).abs() < 0.005);
        assert!((gmacs(ResNetConfig::resnet50(1000)) - 4.09).abs() < 0.005);
    }

    #[test]
    fn zero_init_residual_starts_every_unit_as_its_shortcut() {
        let device = Device::flex();
        let plain = ResNetConfig::small(3, 10, 1).init(&device);
        let zeroed = ResNetConfig::small(3, 10, 1)
            .with_zero_init_residual(true)
            .init(&device);
        assert_eq!(parameter_count(&zeroed), parameter_count(&plain));
        // Only the units' last scales change.
        for (z, p) in zeroed.stages().flatten().zip(plain.stages().flatten()) {
            let (Block::Basic(z), Block::Basic(p)) = (z, p) else {
                unreachable!("ResNet-20 has basic units")
            };
            assert_eq!(z.bn2.gamma.val().abs().max().into_scalar::<f32>(), 0.0);
            assert_eq!(z.bn1.gamma.val().min().into_scalar::<f32>(), 1.0);
            assert_eq!(p.bn2.gamma.val().min().into_scalar::<f32>(), 1.0);
        }
        // Each stage then passes its input through: layer1 (identity shortcuts) returns the
        // stem's output unchanged, layer2 its input subsampled and padded with zero channels.
        let x = Tensor::random(
            [2, 1, 12, 12],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let stages = zeroed.forward_stages(x);
        stages[1]
            .clone()
            .into_data()
            .assert_eq(&stages[0].clone().into_data(), true);
        let expected = Tensor::cat(
            vec![
                stages[1].clone().slice(s![.., .., ..;2, ..;2]),
                Tensor::zeros([2, 16, 6, 6], &device),
            ],
            1,
        );
        stages[2]
            .clone()
            .into_data()
            .assert_eq(&expected.into_data(), true);
        // The same on a built network (`ResNet::zero_init_residual`), for a bottleneck unit.
        let model = ResNetConfig::resnet50(7).with_width(4).init(&device);
        let model = model.zero_init_residual();
        let unit = &model.layer1[1];
        let x = Tensor::random(
            [1, 16, 5, 5],
            burn::tensor::Distribution::Uniform(0.0, 1.0),
            &device,
        );
        unit.forward(x.clone())
            .into_data()
            .assert_eq(&x.into_data(), true);
    }

    #[test]
    fn head_replacement_and_freezing() {
        // Gradients are tracked on autodiff devices only.
        let device = Device::flex().autodiff();
        let model = ResNetConfig::resnet18(1000)
            .with_width(8)
            .init(&device)
            .with_num_classes(5, &device)
            .freeze_backbone();
        assert!(!model.conv1.weight.is_require_grad());
        assert!(model.fc.weight.is_require_grad());
        assert_eq!(model.fc.weight.dims(), [64, 5]);
    }
}
