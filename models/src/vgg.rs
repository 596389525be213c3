//! VGG (Simonyan & Zisserman, *Very Deep Convolutional Networks for Large-Scale Image
//! Recognition*, 2014), in torchvision's layout: stacks of 3×3 convolutions (padding 1) and
//! 2×2 max poolings in `features`, adaptive 7×7 average pooling, and a 4096-4096 dropout
//! classifier. VGG-16 (configuration D, 138,357,544 parameters) is FCN's backbone and loads
//! torchvision weights.

use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig};
use burn::nn::{DropoutConfig, Initializer, Linear, LinearConfig, Relu};
use burn::prelude::*;

use crate::layers::{Layer, batch_norm, conv, max_pool, sequential, sequential_flat};
use crate::summary::{Summarize, Summary};

/// Hyper-parameters of a [`Vgg`].
#[derive(Config, Debug)]
pub struct VggConfig {
    /// The stack, as in the paper's table 1: a filter count per 3×3 convolution, `0` for a
    /// 2×2 max pooling.
    pub layers: Vec<usize>,
    /// Output classes.
    #[config(default = 1000)]
    pub num_classes: usize,
    /// Input channels.
    #[config(default = 3)]
    pub in_channels: usize,
    /// Width of the two hidden dense layers.
    #[config(default = 4096)]
    pub hidden: usize,
    /// Batch norm after each convolution (torchvision's `vgg16_bn`).
    #[config(default = false)]
    pub batch_norm: bool,
    /// Dropout after each hidden dense layer.
    #[config(default = 0.5)]
    pub dropout: f64,
}

impl VggConfig {
    /// VGG-11 (configuration A).
    pub fn vgg11(num_classes: usize) -> Self {
        Self::new(vec![64, 0, 128, 0, 256, 256, 0, 512, 512, 0, 512, 512, 0])
            .with_num_classes(num_classes)
    }

    /// VGG-16 (configuration D).
    pub fn vgg16(num_classes: usize) -> Self {
        Self::new(vec![
            64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0,
        ])
        .with_num_classes(num_classes)
    }

    /// The same stack with every width divided by `divisor` (reduced test networks that keep
    /// the keys).
    pub fn narrowed(mut self, divisor: usize) -> Self {
        self.layers = self.layers.iter().map(|&c| c / divisor).collect();
        self.hidden /= divisor;
        self
    }

    /// Builds the network on `device`.
    pub fn init(&self, device: &Device) -> Vgg {
        let mut features = Vec::new();
        let mut c_in = self.in_channels;
        for &c in &self.layers {
            if c == 0 {
                features.push(Layer::MaxPool2d(max_pool(2, 2, 0, false)));
                continue;
            }
            features.push(Layer::Conv2d(conv([c_in, c], 3, 1, 1, true, device)));
            if self.batch_norm {
                features.push(Layer::BatchNorm(batch_norm(c, device)));
            }
            features.push(Layer::Relu(Relu::new()));
            c_in = c;
        }
        // torchvision: dense weights N(0, 0.01), zero biases.
        let linear = |d_in: usize, d_out: usize| {
            let mut layer = LinearConfig::new(d_in, d_out)
                .with_initializer(Initializer::Normal {
                    mean: 0.0,
                    std: 0.01,
                })
                .with_bias(false)
                .init(device);
            layer.bias = Some(Initializer::Zeros.init([d_out], device));
            Layer::Linear(layer)
        };
        let dropout = || Layer::Dropout(DropoutConfig::new(self.dropout).init());
        Vgg {
            features,
            avgpool: AdaptiveAvgPool2dConfig::new([7, 7]).init(),
            classifier: vec![
                linear(c_in * 49, self.hidden),
                Layer::Relu(Relu::new()),
                dropout(),
                linear(self.hidden, self.hidden),
                Layer::Relu(Relu::new()),
                dropout(),
                linear(self.hidden, self.num_classes),
            ],
        }
    }
}

/// A VGG network, indexed as torchvision's.
#[derive(Module, Debug)]
pub struct Vgg {
    /// 3×3 convolutions, [batch norms], ReLUs and poolings.
    pub features: Vec<Layer>,
    /// Average pooling to 7×7.
    pub avgpool: AdaptiveAvgPool2d,
    /// Dense, ReLU, dropout, dense, ReLU, dropout, dense (the head).
    pub classifier: Vec<Layer>,
}

impl Vgg {
    /// The outputs of each max pooling (strides 2, 4, 8, 16, 32): FCN's skip sources.
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

    /// The last feature map, `[batch, 512, h / 32, w / 32]`.
    pub fn forward_feature_map(&self, x: Tensor<4>) -> Tensor<4> {
        sequential(&self.features, x)
    }

    /// Everything but the head: `[batch, hidden]`.
    pub fn forward_features(&self, x: Tensor<4>) -> Tensor<2> {
        let x = self
            .avgpool
            .forward(self.forward_feature_map(x))
            .flatten::<2>(1, 3);
        sequential_flat(&self.classifier[..self.classifier.len() - 1], x)
    }

    /// Class logits, `[batch, num_classes]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let head = self.classifier.last().expect("the classifier has a head");
        head.forward_flat(self.forward_features(x))
    }

    /// The head (`classifier.6`).
    pub fn head(&self) -> &Linear {
        match self.classifier.last() {
            Some(Layer::Linear(fc)) => fc,
            _ => unreachable!("VGG's classifier ends with a dense layer"),
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

impl Summarize for Vgg {
    fn summarize(&self, s: &mut Summary) {
        s.sequential("features", &self.features);
        s.adaptive_avg_pool2d("avgpool", &self.avgpool);
        s.flatten();
        s.sequential("classifier", &self.classifier);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vgg16_counts() {
        let device = Device::flex();
        let s = Summary::of(&VggConfig::vgg16(1000).init(&device), &[3, 224, 224]);
        assert_eq!(s.params(), 138_357_544);
        assert!((s.macs() as f64 / 1e9 - 15.47).abs() < 0.01, "{}", s.macs());
    }

    #[test]
    fn narrowed_vgg_runs_at_other_sizes() {
        let device = Device::flex();
        let model = VggConfig::vgg16(4).narrowed(16).init(&device);
        assert_eq!(
            model.forward(Tensor::zeros([1, 3, 64, 96], &device)).dims(),
            [1, 4]
        );
        let pools = model.forward_pools(Tensor::zeros([1, 3, 64, 96], &device));
        assert_eq!(pools.len(), 5);
        assert_eq!(pools[4].dims(), [1, 32, 2, 3]);
    }
}
