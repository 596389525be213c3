//! The zoo's one table from model name to builder, used by the library and the CLI alike
//! (timm's `create_model`). The table is data: name, kind, canonical input, parameters and
//! multiply-adds at that input (tests check every figure against the built model), the
//! preprocessing and a line of description.

use burn::module::ParamGroup;
use burn::nn::Linear;
use burn::nn::conv::Conv2d;
use burn::prelude::*;

use crate::alexnet::{AlexNet, AlexNetConfig};
use crate::fashion_cnn::{FashionCnn, FashionCnnConfig};
use crate::fcn::{BackboneConfig, Fcn, FcnConfig, FcnVariant};
use crate::googlenet::{GoogLeNet, GoogLeNetConfig};
use crate::layers::{Layer, Taps};
use crate::lenet::{LeNet5, LeNet5Config};
use crate::localization::Localizer;
use crate::preprocess::Preprocess;
use crate::resnet::{ResNet, ResNetConfig};
use crate::summary::{Summarize, Summary};
use crate::vgg::{Vgg, VggConfig};
use crate::xception::{Xception, XceptionConfig};

/// A model of the zoo that maps images to class logits.
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)] // Module derives need the modules inline, not boxed.
pub enum Classifier {
    /// The lecture's Fashion-MNIST CNN.
    FashionCnn(FashionCnn),
    /// LeNet-5 (paper or modern).
    LeNet5(LeNet5),
    /// AlexNet (torchvision or paper).
    AlexNet(AlexNet),
    /// VGG.
    Vgg(Vgg),
    /// GoogLeNet (torchvision or paper).
    GoogLeNet(GoogLeNet),
    /// ResNet (ImageNet or small-image family).
    ResNet(ResNet),
    /// Xception.
    Xception(Xception),
}

macro_rules! each {
    ($self:expr, $m:ident => $body:expr) => {
        match $self {
            Classifier::FashionCnn($m) => $body,
            Classifier::LeNet5($m) => $body,
            Classifier::AlexNet($m) => $body,
            Classifier::Vgg($m) => $body,
            Classifier::GoogLeNet($m) => $body,
            Classifier::ResNet($m) => $body,
            Classifier::Xception($m) => $body,
        }
    };
}

macro_rules! each_into {
    ($self:expr, $m:ident => $body:expr) => {
        match $self {
            Classifier::FashionCnn($m) => Classifier::FashionCnn($body),
            Classifier::LeNet5($m) => Classifier::LeNet5($body),
            Classifier::AlexNet($m) => Classifier::AlexNet($body),
            Classifier::Vgg($m) => Classifier::Vgg($body),
            Classifier::GoogLeNet($m) => Classifier::GoogLeNet($body),
            Classifier::ResNet($m) => Classifier::ResNet($body),
            Classifier::Xception($m) => Classifier::Xception($body),
        }
    };
}

impl Classifier {
    /// Class logits: `[batch, channels, height, width]` → `[batch, num_classes]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        each!(self, m => m.forward(x))
    }

    /// The named feature maps of one forward pass, in order (names as torchvision's
    /// `create_feature_extractor` would give them: `layer1.0`, `features.3`, `inception4a`,
    /// `conv2`, …), for looking at what a layer responds to.
    pub fn feature_maps(&self, x: Tensor<4>) -> Vec<(String, Tensor<4>)> {
        let mut taps = Taps::recording();
        match self {
            Classifier::FashionCnn(m) => drop(m.forward_tapped(x, &mut taps)),
            Classifier::LeNet5(m) => drop(m.forward_tapped(x, &mut taps)),
            Classifier::AlexNet(m) | Classifier::Vgg(m) => drop(m.forward_tapped(x, &mut taps)),
            Classifier::GoogLeNet(m) => drop(m.forward_tapped(x, &mut taps)),
            Classifier::ResNet(m) => drop(m.forward_tapped(x, &mut taps)),
            Classifier::Xception(m) => drop(m.forward_tapped(x, &mut taps)),
        }
        taps.into_maps()
    }

    /// The last convolutional feature map, `[batch, channels, h', w']`: what
    /// [`Classifier::features_from_map`] turns into [`Classifier::forward_features`].
    pub fn forward_feature_map(&self, x: Tensor<4>) -> Tensor<4> {
        let mut off = Taps::default();
        match self {
            Classifier::FashionCnn(m) => m.forward_tapped(x, &mut off),
            Classifier::LeNet5(m) => m.forward_tapped(x, &mut off),
            Classifier::AlexNet(m) | Classifier::Vgg(m) => m.forward_feature_map(x),
            Classifier::GoogLeNet(m) => m.forward_tapped(x, &mut off),
            Classifier::ResNet(m) => m.forward_feature_map(x),
            Classifier::Xception(m) => m.forward_feature_map(x),
        }
    }

    /// The rest of the feature extractor: `forward_features(x) ==
    /// features_from_map(forward_feature_map(x))` (global average pooling, or the dense
    /// layers before the head).
    pub fn features_from_map(&self, map: Tensor<4>) -> Tensor<2> {
        match self {
            Classifier::FashionCnn(m) => m.features_from_map(map),
            Classifier::LeNet5(m) => m.features_from_map(map),
            Classifier::AlexNet(m) | Classifier::Vgg(m) => m.features_from_map(map),
            Classifier::GoogLeNet(_) | Classifier::ResNet(_) | Classifier::Xception(_) => {
                crate::layers::global_avg_pool(map)
            }
        }
    }

    /// Channels of [`Classifier::forward_feature_map`].
    pub fn feature_map_channels(&self) -> usize {
        match self {
            Classifier::FashionCnn(m) => m.conv5.weight.dims()[0],
            Classifier::LeNet5(m) => m.c5.weight.dims()[0],
            Classifier::AlexNet(m) | Classifier::Vgg(m) => m
                .features
                .iter()
                .rev()
                .find_map(|layer| match layer {
                    Layer::Conv2d(conv) => Some(conv.weight.dims()[0]),
                    _ => None,
                })
                .expect("AlexNet and VGG have convolutions"),
            Classifier::GoogLeNet(m) => m.fc.weight.dims()[0],
            Classifier::ResNet(m) => m.fc.weight.dims()[0],
            Classifier::Xception(m) => m.fc.weight.dims()[0],
        }
    }

    /// The same network with its first convolution at `stride` (a small-image ResNet on a
    /// 64×64 canvas with stride 2 costs what it costs on 32×32, its filters still seeing
    /// every pixel).
    ///
    /// # Errors
    /// For families other than ResNet.
    pub fn with_stem_stride(self, stride: usize) -> Result<Self, ModelError> {
        match self {
            Classifier::ResNet(mut m) => {
                m.conv1.stride = [stride.max(1); 2];
                Ok(Classifier::ResNet(m))
            }
            _ => Err(ModelError::Unsupported(
                "a stem stride is available for the ResNets only".into(),
            )),
        }
    }

    /// The same network with the last batch norm of each residual unit scaled to zero, so
    /// that every unit starts as its shortcut (torchvision's `zero_init_residual`, see
    /// [`ResNetConfig::zero_init_residual`]): for training a ResNet from scratch.
    ///
    /// # Errors
    /// For families other than ResNet.
    pub fn with_zero_init_residual(self) -> Result<Self, ModelError> {
        match self {
            Classifier::ResNet(m) => Ok(Classifier::ResNet(m.zero_init_residual())),
            _ => Err(ModelError::Unsupported(
                "zero-initialized residual units are for the ResNets (each unit ends in the batch norm it zeroes)".into(),
            )),
        }
    }

    /// The first convolution's weights, `[filters, in_channels, k, k]` (what the network
    /// learned to look for in pixels).
    pub fn first_conv_weights(&self) -> Tensor<4> {
        match self {
            Classifier::FashionCnn(m) => m.conv1.weight.val(),
            Classifier::LeNet5(m) => m.c1.weight.val(),
            Classifier::AlexNet(m) | Classifier::Vgg(m) => m
                .features
                .iter()
                .find_map(|layer| match layer {
                    Layer::Conv2d(conv) => Some(conv.weight.val()),
                    _ => None,
                })
                .expect("AlexNet and VGG start with a convolution"),
            Classifier::GoogLeNet(m) => m.conv1.conv.weight.val(),
            Classifier::ResNet(m) => m.conv1.weight.val(),
            Classifier::Xception(m) => m.conv1.weight.val(),
        }
    }

    /// Features without the head: `[batch, num_features]`.
    pub fn forward_features(&self, x: Tensor<4>) -> Tensor<2> {
        each!(self, m => m.forward_features(x))
    }

    /// The head alone: class logits from [`Classifier::forward_features`]' output, so that
    /// `forward(x) == forward_head(forward_features(x))` (in inference; GoogLeNet's dropout
    /// before its head is skipped). Transfer learning's first phase runs the frozen backbone
    /// once, in inference mode, and trains only this.
    pub fn forward_head(&self, features: Tensor<2>) -> Tensor<2> {
        match self {
            Classifier::FashionCnn(m) => m.fc3.forward(features),
            Classifier::LeNet5(m) => match (&m.rbf, &m.fc) {
                (Some(rbf), _) => rbf.forward(features).neg(),
                (None, Some(fc)) => fc.forward(features),
                (None, None) => unreachable!("LeNet-5 has an output layer"),
            },
            Classifier::AlexNet(m) => m.head().forward(features),
            Classifier::Vgg(m) => m.head().forward(features),
            Classifier::GoogLeNet(m) => m.fc.forward(features),
            Classifier::ResNet(m) => m.fc.forward(features),
            Classifier::Xception(m) => m.fc.forward(features),
        }
    }

    /// The model for one-channel (grayscale) images when its first convolution takes three:
    /// each first-layer filter summed over its RGB inputs, so that a gray image excites it as
    /// the same image in color did (timm's `adapt_input_conv`). Transfer learning from
    /// ImageNet weights to Fashion-MNIST starts here. Other models are returned unchanged.
    pub fn to_grayscale(self) -> Self {
        fn gray(conv: Conv2d) -> Conv2d {
            if conv.weight.dims()[1] != 3 || conv.groups != 1 {
                return conv;
            }
            let mut conv = conv;
            conv.weight = conv.weight.map(|w| w.sum_dim(1));
            conv
        }
        match self {
            Classifier::ResNet(mut m) => {
                m.conv1 = gray(m.conv1);
                Classifier::ResNet(m)
            }
            Classifier::GoogLeNet(mut m) => {
                m.conv1.conv = gray(m.conv1.conv);
                Classifier::GoogLeNet(m)
            }
            Classifier::Xception(mut m) => {
                m.conv1 = gray(m.conv1);
                Classifier::Xception(m)
            }
            Classifier::AlexNet(mut m) => {
                if let Some(crate::layers::Layer::Conv2d(c)) = m.features.first_mut() {
                    *c = gray(c.clone());
                }
                Classifier::AlexNet(m)
            }
            Classifier::Vgg(mut m) => {
                if let Some(crate::layers::Layer::Conv2d(c)) = m.features.first_mut() {
                    *c = gray(c.clone());
                }
                Classifier::Vgg(m)
            }
            other => other,
        }
    }

    /// Width of [`Classifier::forward_features`].
    pub fn num_features(&self) -> usize {
        match self {
            Classifier::FashionCnn(m) => m.fc3.weight.dims()[0],
            Classifier::LeNet5(_) => 84,
            Classifier::AlexNet(m) => m.head().weight.dims()[0],
            Classifier::Vgg(m) => m.head().weight.dims()[0],
            Classifier::GoogLeNet(m) => m.fc.weight.dims()[0],
            Classifier::ResNet(m) => m.fc.weight.dims()[0],
            Classifier::Xception(m) => m.fc.weight.dims()[0],
        }
    }

    /// Replaces the head with a fresh one for `num_classes` classes (transfer learning).
    pub fn with_num_classes(self, num_classes: usize, device: &Device) -> Self {
        each_into!(self, m => m.with_num_classes(num_classes, device))
    }

    /// The head's parameters, as a Burn parameter group (for per-group learning rates or
    /// `freeze_group`).
    pub fn head_group(&self) -> ParamGroup {
        let ids = |m: Linear| ParamGroup::ids_from_module(m);
        match self {
            Classifier::FashionCnn(m) => ids(m.fc3.clone()),
            Classifier::LeNet5(m) => match (&m.fc, &m.rbf) {
                (Some(fc), _) => ids(fc.clone()),
                (None, Some(rbf)) => ParamGroup::ids_from_module(rbf.clone()),
                (None, None) => ParamGroup::from_ids(Vec::new()),
            },
            Classifier::AlexNet(m) => ids(m.head().clone()),
            Classifier::Vgg(m) => ids(m.head().clone()),
            Classifier::GoogLeNet(m) => ids(m.fc.clone()),
            Classifier::ResNet(m) => ids(m.fc.clone()),
            Classifier::Xception(m) => ids(m.fc.clone()),
        }
    }

    /// Every parameter but the head's.
    pub fn backbone_group(&self) -> ParamGroup {
        ParamGroup::all().exclude(self.head_group())
    }

    /// Freezes every parameter but the head's (train the head first, then
    /// [`Module::unfreeze`] to fine-tune everything).
    pub fn freeze_backbone(self) -> Self {
        each_into!(self, m => m.freeze_backbone())
    }
}

impl Summarize for Classifier {
    fn summarize(&self, s: &mut Summary) {
        each!(self, m => m.summarize(s))
    }
}

/// What a model outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// Class logits, `[batch, classes]`.
    Classifier,
    /// Per-pixel class scores, `[batch, classes, height, width]`.
    Segmenter,
    /// Class logits and a box, `[batch, classes]` and `[batch, 4]`.
    Localizer,
}

/// What the registry knows of a model without building it.
#[derive(Debug, Clone, Copy)]
pub struct ModelInfo {
    /// The name used by [`build`] and `konv --model`.
    pub name: &'static str,
    /// Classifier, segmenter or localizer.
    pub kind: ModelKind,
    /// Input `[channels, height, width]` the model was designed for.
    pub input: [usize; 3],
    /// Classes of the default head (1000 for ImageNet models, 10 for the small ones, 21
    /// for FCNs as PASCAL VOC).
    pub classes: usize,
    /// Parameters with the default head (as PyTorch counts them).
    pub params: usize,
    /// Multiply-adds for one input of the canonical size.
    pub macs: u64,
    /// The preprocessing the model expects.
    pub preprocess: Preprocess,
    /// One line on what it is.
    pub description: &'static str,
}

const IMAGENET: Preprocess = Preprocess::imagenet(256, 224);

macro_rules! model {
    ($name:literal, $kind:ident, $input:expr, $classes:literal, $params:literal, $macs:literal, $pre:expr, $desc:literal) => {
        ModelInfo {
            name: $name,
            kind: ModelKind::$kind,
            input: $input,
            classes: $classes,
            params: $params,
            macs: $macs,
            preprocess: $pre,
            description: $desc,
        }
    };
}

static MODELS: &[ModelInfo] = &[
    model!(
        "fashion-cnn",
        Classifier,
        [1, 28, 28],
        10,
        1_413_834,
        89_466_496,
        Preprocess::fashion_mnist(28),
        "the lecture's Fashion-MNIST CNN: 64-128-128-256-256 convs, 3 poolings, 128-64 dense with dropout"
    ),
    model!(
        "lenet5",
        Classifier,
        [1, 32, 32],
        10,
        60_840,
        326_520,
        Preprocess::fashion_mnist(32),
        "LeNet-5 as LeCun et al. 1998: trainable subsampling, table-I C3, scaled tanh, RBF output"
    ),
    model!(
        "lenet5-modern",
        Classifier,
        [1, 32, 32],
        10,
        61_706,
        416_520,
        Preprocess::fashion_mnist(32),
        "LeNet-5 with ReLU, max pooling, full C3 and a softmax head"
    ),
    model!(
        "alexnet",
        Classifier,
        [3, 224, 224],
        1000,
        61_100_840,
        714_188_480,
        IMAGENET,
        "AlexNet in torchvision's layout (64-192-384-256-256), loads torchvision weights"
    ),
    model!(
        "alexnet-paper",
        Classifier,
        [3, 227, 227],
        1000,
        62_378_344,
        1_135_256_096,
        Preprocess::imagenet(256, 227),
        "AlexNet as Krizhevsky et al. 2012 on one GPU: 96-256-384-384-256, LRN"
    ),
    model!(
        "vgg16",
        Classifier,
        [3, 224, 224],
        1000,
        138_357_544,
        15_470_264_320,
        IMAGENET,
        "VGG-16 (configuration D) in torchvision's layout, FCN's backbone"
    ),
    model!(
        "googlenet",
        Classifier,
        [3, 224, 224],
        1000,
        6_624_904,
        1_498_376_192,
        IMAGENET,
        "GoogLeNet in torchvision's layout (batch norm), 9 inception modules, optional aux heads"
    ),
    model!(
        "googlenet-paper",
        Classifier,
        [3, 224, 224],
        1000,
        6_998_552,
        1_582_671_872,
        IMAGENET,
        "GoogLeNet as Szegedy et al. 2014: LRN, 5×5 branches, no batch norm"
    ),
    model!(
        "resnet18",
        Classifier,
        [3, 224, 224],
        1000,
        11_689_512,
        1_814_073_344,
        IMAGENET,
        "ResNet-18: basic units 2-2-2-2, torchvision layout"
    ),
    model!(
        "resnet34",
        Classifier,
        [3, 224, 224],
        1000,
        21_797_672,
        3_663_761_408,
        IMAGENET,
        "ResNet-34: basic units 3-4-6-3, torchvision layout"
    ),
    model!(
        "resnet50",
        Classifier,
        [3, 224, 224],
        1000,
        25_557_032,
        4_089_184_256,
        IMAGENET,
        "ResNet-50: bottleneck units 3-4-6-3, torchvision layout"
    ),
    model!(
        "resnet101",
        Classifier,
        [3, 224, 224],
        1000,
        44_549_160,
        7_801_405_440,
        IMAGENET,
        "ResNet-101: bottleneck units 3-4-23-3, torchvision layout"
    ),
    model!(
        "resnet152",
        Classifier,
        [3, 224, 224],
        1000,
        60_192_808,
        11_513_626_624,
        IMAGENET,
        "ResNet-152: bottleneck units 3-8-36-3, torchvision layout"
    ),
    model!(
        "resnet20",
        Classifier,
        [3, 32, 32],
        10,
        269_722,
        40_551_040,
        Preprocess::inception(32),
        "ResNet-20 for small images (He et al. section 4.2): 3×3 units 16-32-64, option-A shortcuts"
    ),
    model!(
        "resnet32",
        Classifier,
        [3, 32, 32],
        10,
        464_154,
        68_862_592,
        Preprocess::inception(32),
        "ResNet-32 for small images"
    ),
    model!(
        "resnet44",
        Classifier,
        [3, 32, 32],
        10,
        658_586,
        97_174_144,
        Preprocess::inception(32),
        "ResNet-44 for small images"
    ),
    model!(
        "resnet56",
        Classifier,
        [3, 32, 32],
        10,
        853_018,
        125_485_696,
        Preprocess::inception(32),
        "ResNet-56 for small images"
    ),
    model!(
        "resnet110",
        Classifier,
        [3, 32, 32],
        10,
        1_727_962,
        252_887_680,
        Preprocess::inception(32),
        "ResNet-110 for small images"
    ),
    model!(
        "xception",
        Classifier,
        [3, 299, 299],
        1000,
        22_855_952,
        8_357_403_496,
        Preprocess::inception(299),
        "Xception as Keras: entry/middle (8)/exit flows of separable convolutions"
    ),
    model!(
        "fcn32s-vgg16",
        Segmenter,
        [3, 224, 224],
        21,
        136_152_917,
        21_296_701_440,
        IMAGENET,
        "FCN-32s over VGG-16 (fc6/fc7 as convolutions), bilinear-initialized upsampling"
    ),
    model!(
        "fcn16s-vgg16",
        Segmenter,
        [3, 224, 224],
        21,
        134_815_994,
        21_299_154_576,
        IMAGENET,
        "FCN-16s over VGG-16: plus a pool4 skip"
    ),
    model!(
        "fcn8s-vgg16",
        Segmenter,
        [3, 224, 224],
        21,
        134_489_759,
        21_304_752_336,
        IMAGENET,
        "FCN-8s over VGG-16: plus pool4 and pool3 skips"
    ),
    model!(
        "fcn32s-resnet18",
        Segmenter,
        [3, 224, 224],
        21,
        12_993_621,
        1_902_598_656,
        IMAGENET,
        "FCN-32s over ResNet-18"
    ),
    model!(
        "fcn16s-resnet18",
        Segmenter,
        [3, 224, 224],
        21,
        11_651_322,
        1_903_998_096,
        IMAGENET,
        "FCN-16s over ResNet-18 (layer3 skip)"
    ),
    model!(
        "fcn8s-resnet18",
        Segmenter,
        [3, 224, 224],
        21,
        11_322_399,
        1_907_488_464,
        IMAGENET,
        "FCN-8s over ResNet-18 (layer3 and layer2 skips)"
    ),
    model!(
        "fcn8s-resnet50",
        Segmenter,
        [3, 224, 224],
        21,
        23_710_367,
        4_192_127_184,
        IMAGENET,
        "FCN-8s over ResNet-50"
    ),
    model!(
        "fcn32s-resnet20",
        Segmenter,
        [3, 64, 64],
        21,
        298_661,
        169_771_008,
        Preprocess::inception(64),
        "FCN-32s over the small-image ResNet-20 (total stride 4)"
    ),
    model!(
        "fcn16s-resnet20",
        Segmenter,
        [3, 64, 64],
        21,
        285_242,
        172_265_472,
        Preprocess::inception(64),
        "FCN-16s over ResNet-20"
    ),
    model!(
        "fcn8s-resnet20",
        Segmenter,
        [3, 64, 64],
        21,
        285_599,
        173_641_728,
        Preprocess::inception(64),
        "FCN-8s over ResNet-20 (no final upsampling: the stride-1 skip is full size)"
    ),
    model!(
        "loc-resnet18",
        Localizer,
        [3, 224, 224],
        1000,
        11_691_564,
        1_814_075_392,
        IMAGENET,
        "classification + localization: ResNet-18 features, a class head and a 4-number box head"
    ),
    model!(
        "loc-resnet20",
        Localizer,
        [3, 32, 32],
        10,
        269_982,
        40_551_296,
        Preprocess::inception(32),
        "classification + localization over ResNet-20"
    ),
];

/// Every model of the zoo. Any classifier `NAME` also works as `loc-NAME`.
pub fn models() -> &'static [ModelInfo] {
    MODELS
}

/// A model name the registry does not know, or a model of the wrong kind.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Not in the table.
    #[error("unknown model `{name}`; known models: {known}")]
    Unknown {
        /// The name asked for.
        name: String,
        /// The names the registry knows, comma-separated.
        known: String,
    },
    /// A model that is not a classifier where one is needed.
    #[error(
        "`{name}` is a {kind:?} model, not a classifier; this needs a classifier (see `konv models`)"
    )]
    NotAClassifier {
        /// The name asked for.
        name: String,
        /// What it is.
        kind: ModelKind,
    },
    /// An option the model does not have.
    #[error("{0}")]
    Unsupported(String),
}

/// Information on model `name`, or an error listing the known names.
pub fn info(name: &str) -> Result<&'static ModelInfo, ModelError> {
    models()
        .iter()
        .find(|m| m.name == name)
        .ok_or_else(|| ModelError::Unknown {
            name: name.to_string(),
            known: models()
                .iter()
                .map(|m| m.name)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// Any model of the zoo, built.
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Model {
    /// Class logits.
    Classifier(Classifier),
    /// Per-pixel scores.
    Segmenter(Fcn),
    /// Class logits and a box.
    Localizer(Localizer),
}

impl Summarize for Model {
    fn summarize(&self, s: &mut Summary) {
        match self {
            Model::Classifier(m) => m.summarize(s),
            Model::Segmenter(m) => m.summarize(s),
            Model::Localizer(m) => m.summarize(s),
        }
    }
}

/// Builds classifier `name` with a head for `num_classes` classes, for the registry's input
/// channels, on `device`.
pub fn build(name: &str, num_classes: usize, device: &Device) -> Result<Classifier, ModelError> {
    let channels = info(name)?.input[0];
    build_for(name, num_classes, channels, device)
}

/// Builds classifier `name` for `in_channels`-channel inputs (a ResNet-20 for grayscale
/// Fashion-MNIST, say).
pub fn build_for(
    name: &str,
    num_classes: usize,
    in_channels: usize,
    device: &Device,
) -> Result<Classifier, ModelError> {
    match build_model(name, num_classes, in_channels, device)? {
        Model::Classifier(m) => Ok(m),
        other => Err(ModelError::NotAClassifier {
            name: name.to_string(),
            kind: match other {
                Model::Segmenter(_) => ModelKind::Segmenter,
                _ => ModelKind::Localizer,
            },
        }),
    }
}

fn small_resnet_depth(name: &str) -> Option<usize> {
    let layers: usize = name.strip_prefix("resnet")?.parse().ok()?;
    [20, 32, 44, 56, 110]
        .contains(&layers)
        .then_some((layers - 2) / 6)
}

/// The configuration of ResNet `name` (any of the ImageNet or small-image family), for
/// building variants such as FCN backbones; `None` for other names.
pub fn resnet_config(name: &str, num_classes: usize, in_channels: usize) -> Option<ResNetConfig> {
    let config = match name {
        "resnet18" => ResNetConfig::resnet18(num_classes),
        "resnet34" => ResNetConfig::resnet34(num_classes),
        "resnet50" => ResNetConfig::resnet50(num_classes),
        "resnet101" => ResNetConfig::resnet101(num_classes),
        "resnet152" => ResNetConfig::resnet152(num_classes),
        other => ResNetConfig::small(small_resnet_depth(other)?, num_classes, in_channels),
    };
    Some(config.with_in_channels(in_channels))
}

/// Builds any model of the zoo (`loc-NAME` for any classifier `NAME`).
pub fn build_model(
    name: &str,
    num_classes: usize,
    in_channels: usize,
    device: &Device,
) -> Result<Model, ModelError> {
    if let Some(backbone) = name.strip_prefix("loc-") {
        let features = build_for(backbone, 1, in_channels, device)?;
        return Ok(Model::Localizer(Localizer::new(
            features,
            num_classes,
            device,
        )));
    }
    let known = info(name)?;
    let c = in_channels;
    let k = num_classes;
    let classifier = match known.name {
        "fashion-cnn" => Classifier::FashionCnn(
            FashionCnnConfig::new()
                .with_num_classes(k)
                .with_in_channels(c)
                .init(device),
        ),
        "lenet5" => Classifier::LeNet5(LeNet5Config::paper(k).with_in_channels(c).init(device)),
        "lenet5-modern" => {
            Classifier::LeNet5(LeNet5Config::modern(k).with_in_channels(c).init(device))
        }
        "alexnet" => {
            Classifier::AlexNet(AlexNetConfig::alexnet(k).with_in_channels(c).init(device))
        }
        "alexnet-paper" => Classifier::AlexNet(
            AlexNetConfig::paper_2012(k)
                .with_in_channels(c)
                .init(device),
        ),
        "vgg16" => Classifier::Vgg(VggConfig::vgg16(k).with_in_channels(c).init(device)),
        "googlenet" => Classifier::GoogLeNet(
            GoogLeNetConfig::googlenet(k)
                .with_in_channels(c)
                .init(device),
        ),
        "googlenet-paper" => Classifier::GoogLeNet(
            GoogLeNetConfig::paper_2014(k)
                .with_in_channels(c)
                .init(device),
        ),
        "xception" => Classifier::Xception(
            XceptionConfig::new()
                .with_num_classes(k)
                .with_in_channels(c)
                .init(device),
        ),
        other if other.starts_with("fcn") => {
            let (variant, backbone) = other.split_once('-').expect("fcn names have a backbone");
            let variant = match variant {
                "fcn32s" => FcnVariant::Fcn32s,
                "fcn16s" => FcnVariant::Fcn16s,
                _ => FcnVariant::Fcn8s,
            };
            let backbone = match backbone {
                "vgg16" => BackboneConfig::Vgg(VggConfig::vgg16(1000).with_in_channels(c)),
                resnet => BackboneConfig::ResNet(
                    resnet_config(resnet, 1000, c).expect("listed FCN backbones exist"),
                ),
            };
            return Ok(Model::Segmenter(
                FcnConfig::new(variant, backbone)
                    .with_num_classes(k)
                    .init(device),
            ));
        }
        other => Classifier::ResNet(
            resnet_config(other, k, c)
                .unwrap_or_else(|| unreachable!("model `{other}` is listed but has no builder"))
                .init(device),
        ),
    };
    Ok(Model::Classifier(classifier))
}

/// Builds a reduced-width copy of classifier `name` (`resnet18/34/50/101/152`, `alexnet`,
/// `vgg16`, `googlenet`): every width divided by `divisor`, the keys unchanged. Used for
/// small parity fixtures and fast tests.
pub fn build_narrow(
    name: &str,
    num_classes: usize,
    divisor: usize,
    device: &Device,
) -> Result<Classifier, ModelError> {
    let d = divisor.max(1);
    let k = num_classes;
    Ok(match info(name)?.name {
        "alexnet" => Classifier::AlexNet(
            AlexNetConfig::alexnet(k)
                .with_filters([64, 192, 384, 256, 256].map(|c| c / d))
                .with_hidden(4096 / d)
                .init(device),
        ),
        "vgg16" => Classifier::Vgg(VggConfig::vgg16(k).narrowed(d).init(device)),
        "googlenet" => Classifier::GoogLeNet(
            GoogLeNetConfig::googlenet(k)
                .with_width_divisor(d)
                .init(device),
        ),
        other => match resnet_config(other, k, 3).filter(|c| !c.small_input) {
            Some(config) => Classifier::ResNet(config.with_width(64 / d).init(device)),
            None => {
                return Err(ModelError::Unknown {
                    name: format!("{other} (reduced width)"),
                    known: "resnet18, resnet34, resnet50, resnet101, resnet152, alexnet, vgg16, googlenet"
                        .to_string(),
                });
            }
        },
    })
}

/// The summary of model `name` at its canonical input and head.
pub fn summary(name: &str, device: &Device) -> Result<Summary, ModelError> {
    let known = info(name)?;
    let model = build_model(name, known.classes, known.input[0], device)?;
    Ok(Summary::of(&model, &known.input))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_figure_is_the_built_models() {
        let device = Device::flex();
        let mut wrong = Vec::new();
        for m in models() {
            let s = summary(m.name, &device).unwrap();
            if s.params() != m.params || s.macs() != m.macs {
                wrong.push(format!(
                    "{}: listed {} / {}, built {} / {}",
                    m.name,
                    m.params,
                    m.macs,
                    s.params(),
                    s.macs()
                ));
            }
        }
        assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
    }

    #[test]
    fn every_model_runs_at_its_input_with_the_summarys_output_shape() {
        let device = Device::flex();
        for m in models() {
            let model = build_model(m.name, m.classes, m.input[0], &device).unwrap();
            let [c, h, w] = m.input;
            let x = Tensor::zeros([1, c, h, w], &device);
            let dims = match &model {
                Model::Classifier(net) => net.forward(x).dims().to_vec(),
                Model::Segmenter(net) => net.forward(x).dims().to_vec(),
                Model::Localizer(net) => {
                    let out = net.forward(x);
                    assert_eq!(out.logits.dims(), [1, m.classes], "{}", m.name);
                    // The summary ends with the box head.
                    out.boxes.dims().to_vec()
                }
            };
            let s = Summary::of(&model, &m.input);
            assert_eq!(dims[1..].to_vec(), s.shape(), "{}", m.name);
        }
    }

    #[test]
    fn feature_maps_are_named_as_torchvision_and_end_where_the_features_begin() {
        let device = Device::flex();
        let cases: Vec<(Classifier, [usize; 3], &[&str])> = vec![
            (
                build("fashion-cnn", 10, &device).unwrap(),
                [1, 28, 28],
                &["conv1", "pool1", "conv5", "pool3"],
            ),
            (
                build("lenet5", 10, &device).unwrap(),
                [1, 32, 32],
                &["c1", "s2", "c3", "s4", "c5"],
            ),
            (
                build("lenet5-modern", 10, &device).unwrap(),
                [1, 32, 32],
                &["c1", "s4", "c5"],
            ),
            (
                build_for("resnet20", 10, 1, &device).unwrap(),
                [1, 28, 28],
                &["relu", "layer1.0", "layer3.2", "layer3"],
            ),
            (
                build_narrow("resnet18", 10, 16, &device).unwrap(),
                [3, 64, 64],
                &["relu", "maxpool", "layer4.1", "layer4"],
            ),
            (
                build_narrow("alexnet", 10, 16, &device).unwrap(),
                [3, 64, 64],
                &["features.0", "features.12"],
            ),
            (
                build_narrow("googlenet", 10, 16, &device).unwrap(),
                [3, 64, 64],
                &["conv1", "maxpool1", "inception4e", "inception5b"],
            ),
        ];
        for (model, [c, h, w], expected) in cases {
            let x = Tensor::<4>::random([2, c, h, w], burn::tensor::Distribution::Default, &device);
            let maps = model.feature_maps(x.clone());
            let names: Vec<&str> = maps.iter().map(|(n, _)| n.as_str()).collect();
            for name in expected {
                assert!(names.contains(name), "{name} missing from {names:?}");
            }
            assert_eq!(maps[0].1.dims()[0], 2);
            assert_eq!(model.first_conv_weights().dims()[1], c);
            // Tapping changes nothing: the ordinary forward pass gives the same logits.
            let again = model.forward(x.clone()).into_data();
            model
                .forward(x)
                .into_data()
                .assert_approx_eq::<f32>(&again, Default::default());
        }
    }

    #[test]
    fn small_classifiers_run_and_errors_name_the_models() {
        let device = Device::flex();
        for name in ["fashion-cnn", "lenet5", "lenet5-modern", "resnet20"] {
            let m = info(name).unwrap();
            let [_, h, w] = m.input;
            let model = build_for(name, 7, 1, &device).unwrap();
            assert_eq!(
                model.forward(Tensor::zeros([2, 1, h, w], &device)).dims(),
                [2, 7]
            );
            let x = Tensor::<4>::random([2, 1, h, w], burn::tensor::Distribution::Default, &device);
            let features = model.forward_features(x.clone());
            assert_eq!(features.dims(), [2, model.num_features()]);
            // The head on the features is the whole network.
            let whole: Vec<f32> = model.forward(x).into_data().try_to_vec::<f32>().unwrap();
            let split: Vec<f32> = model
                .forward_head(features)
                .into_data()
                .try_to_vec::<f32>()
                .unwrap();
            for (a, b) in whole.iter().zip(&split) {
                assert!((a - b).abs() < 1e-5, "{name}: {a} vs {b}");
            }
            let model = model.with_num_classes(3, &device).freeze_backbone();
            let _ = model.clone().to_grayscale();
            assert_eq!(
                model.forward(Tensor::zeros([1, 1, h, w], &device)).dims(),
                [1, 3]
            );
        }
        // Grayscale from RGB weights: a gray image gives the RGB model's output.
        let rgb = build_for("resnet20", 4, 3, &device).unwrap();
        let x = Tensor::<4>::random([2, 1, 28, 28], burn::tensor::Distribution::Default, &device);
        let want: Vec<f32> = rgb
            .forward(x.clone().repeat_dim(1, 3))
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let got: Vec<f32> = rgb
            .to_grayscale()
            .forward(x)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
        let model = build("resnet20", 10, &device.clone().autodiff()).unwrap();
        let group = model.backbone_group();
        let model = model.freeze_group(group);
        let Classifier::ResNet(resnet) = &model else {
            panic!()
        };
        assert!(!resnet.conv1.weight.is_require_grad());
        assert!(resnet.fc.weight.is_require_grad());
        let err = build("resnet9000", 10, &device).unwrap_err().to_string();
        assert!(
            err.contains("fashion-cnn") && err.contains("resnet152"),
            "{err}"
        );
        let err = build("fcn8s-resnet20", 10, &device)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a classifier"), "{err}");
    }

    #[test]
    fn zero_init_residual_is_for_the_resnets() {
        let device = Device::flex();
        for name in ["resnet20", "resnet18"] {
            let Classifier::ResNet(m) = build_for(name, 10, 1, &device)
                .unwrap()
                .with_zero_init_residual()
                .unwrap()
            else {
                panic!("{name} is a ResNet")
            };
            let last_scale = |unit: &crate::resnet::Block| match unit {
                crate::resnet::Block::Basic(b) => b.bn2.gamma.val(),
                crate::resnet::Block::Bottleneck(b) => b.bn3.gamma.val(),
            };
            for unit in m.stages().flatten() {
                assert_eq!(last_scale(unit).abs().sum().into_scalar::<f32>(), 0.0);
            }
        }
        for name in ["fashion-cnn", "lenet5"] {
            let err = build_for(name, 10, 1, &device)
                .unwrap()
                .with_zero_init_residual()
                .unwrap_err();
            assert!(err.to_string().contains("ResNets"), "{name}: {err}");
        }
    }
}
