//! LeNet-5 (LeCun, Bottou, Bengio & Haffner, *Gradient-Based Learning Applied to Document
//! Recognition*, 1998), two ways.
//!
//! `lenet5`, as in the paper (section II.B and appendix A), for 32×32 inputs:
//!
//! ```text
//! C1  6 maps 28×28, 5×5 convolution                                156 parameters
//! S2  6 maps 14×14, 2×2 sum · trained coefficient + trained bias    12
//! C3 16 maps 10×10, 5×5 convolution over the S2 maps of table I   1,516
//! S4 16 maps 5×5, as S2                                             32
//! C5 120 maps 1×1, 5×5 convolution (full connection)            48,120
//! F6 84 units                                                   10,164
//!                                                        total  60,000
//! output: 10 Euclidean RBF units, one fixed ±1 84-vector per class
//! ```
//!
//! Every layer up to F6 passes its weighted sum through the scaled hyperbolic tangent
//! `f(a) = 1.7159 · tanh(2a / 3)`. The RBF unit of class `i` outputs `y_i = Σ_j (x_j − w_ij)²`,
//! a penalty; [`LeNet5::forward`] returns `−y_i` so that the largest output is the predicted
//! class and cross-entropy on it is the paper's discriminative criterion without the
//! constant `j`. The RBF vectors are drawn once (±1 with equal probability; the paper drew
//! stylized 7×12 bitmaps) and frozen, as in the paper.
//!
//! `lenet5-modern`: the same stack with ReLU, 2×2 max pooling, full C3 connections and a
//! dense softmax head (61,706 parameters): what people mean by "LeNet" today.

use burn::module::Param;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::MaxPool2d;
use burn::nn::{Initializer, Linear, LinearConfig, PaddingConfig2d, Relu};
use burn::prelude::*;

use crate::conv::{FastConv2d, FastMaxPool2d};
use burn::tensor::Distribution;

use crate::layers::{Taps, max_pool, parameter_count};
use crate::summary::{Summarize, Summary};

/// Table I of the paper: the S2 maps each C3 map reads.
pub const C3_TABLE: [&[usize]; 16] = [
    &[0, 1, 2],
    &[1, 2, 3],
    &[2, 3, 4],
    &[3, 4, 5],
    &[0, 4, 5],
    &[0, 1, 5],
    &[0, 1, 2, 3],
    &[1, 2, 3, 4],
    &[2, 3, 4, 5],
    &[0, 3, 4, 5],
    &[0, 1, 4, 5],
    &[0, 1, 2, 5],
    &[0, 1, 3, 4],
    &[1, 2, 4, 5],
    &[0, 2, 3, 5],
    &[0, 1, 2, 3, 4, 5],
];

/// The paper's squashing function, `1.7159 · tanh(2a / 3)`.
pub fn scaled_tanh<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    x.mul_scalar(2.0 / 3.0).tanh().mul_scalar(1.7159)
}

/// Which LeNet-5.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum LeNetVariant {
    /// The 1998 paper's network.
    Paper,
    /// ReLU, max pooling, full connections, dense head.
    Modern,
}

/// Hyper-parameters of [`LeNet5`].
#[derive(Config, Debug)]
pub struct LeNet5Config {
    /// Which variant.
    pub variant: LeNetVariant,
    /// Output classes.
    #[config(default = 10)]
    pub num_classes: usize,
    /// Input channels.
    #[config(default = 1)]
    pub in_channels: usize,
}

/// A trainable subsampling layer (S2, S4): each map's 2×2 sums, times a trained coefficient,
/// plus a trained bias.
#[derive(Module, Debug)]
pub struct Subsampling {
    /// One coefficient per map.
    pub weight: Param<Tensor<1>>,
    /// One bias per map.
    pub bias: Param<Tensor<1>>,
}

impl Subsampling {
    /// `maps` maps, coefficients and biases drawn as the paper's other weights
    /// (uniform in ±2.4 / fan-in, fan-in 4).
    pub fn new(maps: usize, device: &Device) -> Self {
        let init = Initializer::Uniform {
            min: -0.6,
            max: 0.6,
        };
        Self {
            weight: init.init([maps], device),
            bias: init.init([maps], device),
        }
    }

    /// `[batch, maps, h, w]` → `[batch, maps, h / 2, w / 2]`, before the squashing function.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let maps = self.weight.dims()[0];
        let sums =
            burn::tensor::module::avg_pool2d(x, burn::tensor::ops::AvgPoolOptions::new([2, 2]))
                .mul_scalar(4.0);
        let w = self.weight.val().reshape([1, maps, 1, 1]);
        let b = self.bias.val().reshape([1, maps, 1, 1]);
        sums * w + b
    }
}

/// C3 with the paper's partial connections: the 16 maps, grouped by fan-in (six read 3 maps,
/// nine read 4, one reads all 6), as three grouped convolutions over the S2 maps gathered in
/// table order. Exactly the paper's 1,516 parameters.
#[derive(Module, Debug)]
pub struct PartialConv {
    /// Maps 0–5: 6 groups of 3 inputs.
    pub three: Conv2d,
    /// Maps 6–14: 9 groups of 4 inputs.
    pub four: Conv2d,
    /// Map 15: all 6 inputs.
    pub six: Conv2d,
}

impl PartialConv {
    fn new(device: &Device) -> Self {
        let grouped = |maps: usize, fan_in: usize| {
            let mut conv = Conv2dConfig::new([maps * fan_in, maps], [5, 5])
                .with_groups(maps)
                .with_initializer(paper_init(fan_in * 25))
                .init(device);
            conv.bias = Some(paper_init(fan_in * 25).init([maps], device));
            conv
        };
        Self {
            three: grouped(6, 3),
            four: grouped(9, 4),
            six: grouped(1, 6),
        }
    }

    /// `[batch, 6, h, w]` → `[batch, 16, h − 4, w − 4]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let device = x.device();
        let gather = |maps: &[&[usize]]| {
            let idx: Vec<i64> = maps
                .iter()
                .flat_map(|m| m.iter().map(|&i| i as i64))
                .collect();
            let len = idx.len();
            x.clone().select(
                1,
                Tensor::<1, Int>::from_data(TensorData::new(idx, [len]), &device),
            )
        };
        Tensor::cat(
            vec![
                self.three.fast_forward(gather(&C3_TABLE[0..6])),
                self.four.fast_forward(gather(&C3_TABLE[6..15])),
                self.six.fast_forward(gather(&C3_TABLE[15..16])),
            ],
            1,
        )
    }
}

/// The paper's weight initialization: uniform in `±2.4 / fan_in`.
fn paper_init(fan_in: usize) -> Initializer {
    let a = 2.4 / fan_in as f64;
    Initializer::Uniform { min: -a, max: a }
}

/// Euclidean radial basis function units: `y_i = Σ_j (x_j − w_ij)²`.
#[derive(Module, Debug)]
pub struct Rbf {
    /// One prototype per class, `[classes, inputs]`, frozen.
    pub centers: Param<Tensor<2>>,
}

impl Rbf {
    /// `classes` prototypes of ±1 entries, frozen.
    pub fn new(inputs: usize, classes: usize, device: &Device) -> Self {
        let signs = Tensor::<2>::random([classes, inputs], Distribution::Bernoulli(0.5), device)
            .mul_scalar(2.0)
            .sub_scalar(1.0);
        Self {
            centers: Param::from_tensor(signs).set_require_grad(false),
        }
    }

    /// `[batch, inputs]` → `[batch, classes]` squared distances.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let c = self.centers.val();
        let [classes, _] = c.dims();
        // |x − c|² = |x|² − 2 x·c + |c|²
        let x2 = x.clone().square().sum_dim(1);
        let c2 = c.clone().square().sum_dim(1).reshape([1, classes]);
        x2 - x.matmul(c.transpose()).mul_scalar(2.0) + c2
    }
}

/// C3: the paper's partial connections or a full convolution (modern).
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)] // Module derives need the modules inline, not boxed.
pub enum C3 {
    /// Table I's connections.
    Partial(PartialConv),
    /// Every C3 map reads every S2 map.
    Full(Conv2d),
}

impl C3 {
    /// `[batch, 6, h, w]` → `[batch, 16, h − 4, w − 4]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        match self {
            C3::Partial(c3) => c3.forward(x),
            C3::Full(c3) => c3.fast_forward(x),
        }
    }
}

/// LeNet-5, paper or modern. The modern variant has no subsampling coefficients, a full C3
/// and a dense head instead of the RBF units.
#[derive(Module, Debug)]
pub struct LeNet5 {
    /// C1: 6 maps, 5×5.
    pub c1: Conv2d,
    /// S2 (paper).
    pub s2: Option<Subsampling>,
    /// C3: partially connected (paper) or full.
    pub c3: C3,
    /// S4 (paper).
    pub s4: Option<Subsampling>,
    /// 2×2 max pooling (modern).
    pub pool: Option<MaxPool2d>,
    /// C5: 120 maps, 5×5.
    pub c5: Conv2d,
    /// F6: 84 units.
    pub f6: Linear,
    /// RBF output (paper).
    pub rbf: Option<Rbf>,
    /// Dense output (modern).
    pub fc: Option<Linear>,
    /// ReLU (modern).
    pub relu: Relu,
}

impl LeNet5Config {
    /// The paper's LeNet-5.
    pub fn paper(num_classes: usize) -> Self {
        Self::new(LeNetVariant::Paper).with_num_classes(num_classes)
    }

    /// The modern LeNet-5.
    pub fn modern(num_classes: usize) -> Self {
        Self::new(LeNetVariant::Modern).with_num_classes(num_classes)
    }

    /// Builds the network on `device`.
    pub fn init(&self, device: &Device) -> LeNet5 {
        let paper = self.variant == LeNetVariant::Paper;
        let conv = |c_in: usize, c_out: usize| {
            let config =
                Conv2dConfig::new([c_in, c_out], [5, 5]).with_padding(PaddingConfig2d::Valid);
            if paper {
                let mut conv = config.with_initializer(paper_init(c_in * 25)).init(device);
                conv.bias = Some(paper_init(c_in * 25).init([c_out], device));
                conv
            } else {
                config.init(device)
            }
        };
        let c3 = if paper {
            C3::Partial(PartialConv::new(device))
        } else {
            C3::Full(conv(6, 16))
        };
        let f6 = if paper {
            let mut f6 = LinearConfig::new(120, 84)
                .with_initializer(paper_init(120))
                .init(device);
            f6.bias = Some(paper_init(120).init([84], device));
            f6
        } else {
            LinearConfig::new(120, 84).init(device)
        };
        LeNet5 {
            c1: conv(self.in_channels, 6),
            s2: paper.then(|| Subsampling::new(6, device)),
            c3,
            s4: paper.then(|| Subsampling::new(16, device)),
            pool: (!paper).then(|| max_pool(2, 2, 0, false)),
            c5: conv(16, 120),
            f6,
            rbf: paper.then(|| Rbf::new(84, self.num_classes, device)),
            fc: (!paper).then(|| LinearConfig::new(84, self.num_classes).init(device)),
            relu: Relu::new(),
        }
    }
}

impl LeNet5 {
    fn is_paper(&self) -> bool {
        self.rbf.is_some()
    }

    /// F6's output, `[batch, 84]`: everything but the output layer.
    pub fn forward_features(&self, x: Tensor<4>) -> Tensor<2> {
        self.features_from_map(self.forward_tapped(x, &mut Taps::default()))
    }

    /// F6 from C5's map: `[batch, 84]`.
    pub fn features_from_map(&self, x: Tensor<4>) -> Tensor<2> {
        let [n, c, h, w] = x.dims();
        let x = self.f6.forward(x.reshape([n, c * h * w]));
        if self.is_paper() {
            scaled_tanh(x)
        } else {
            self.relu.forward(x)
        }
    }

    /// C1 to C5 (after their activations), tapping `c1`, `s2`, `c3`, `s4`, `c5` (the
    /// paper's names; S2 and S4 are the modern variant's max poolings): `[batch, 120, 1, 1]`
    /// at 32×32.
    pub fn forward_tapped(&self, x: Tensor<4>, taps: &mut Taps) -> Tensor<4> {
        let mut tap = |name: &str, x| taps.tap(|| name.into(), x);
        let x = self.c1.fast_forward(x);
        if let (Some(s2), Some(s4)) = (&self.s2, &self.s4) {
            let x = tap("c1", scaled_tanh(x));
            let x = tap("s2", scaled_tanh(s2.forward(x)));
            let x = tap("c3", scaled_tanh(self.c3.forward(x)));
            let x = tap("s4", scaled_tanh(s4.forward(x)));
            tap("c5", scaled_tanh(self.c5.fast_forward(x)))
        } else {
            let pool = self.pool.as_ref().expect("the modern LeNet-5 pools");
            let x = tap("c1", self.relu.forward(x));
            let x = tap("s2", pool.fast_forward(x));
            let x = tap("c3", self.relu.forward(self.c3.forward(x)));
            let x = tap("s4", pool.fast_forward(x));
            tap("c5", self.relu.forward(self.c5.fast_forward(x)))
        }
    }

    /// Class scores, `[batch, num_classes]`: logits (modern) or negated RBF penalties (paper).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let f = self.forward_features(x);
        match (&self.rbf, &self.fc) {
            (Some(rbf), _) => rbf.forward(f).neg(),
            (None, Some(fc)) => fc.forward(f),
            (None, None) => unreachable!("LeNet-5 has an output layer"),
        }
    }

    /// Replaces the output layer for `num_classes` classes.
    pub fn with_num_classes(mut self, num_classes: usize, device: &Device) -> Self {
        if self.is_paper() {
            self.rbf = Some(Rbf::new(84, num_classes, device));
        } else {
            self.fc = Some(LinearConfig::new(84, num_classes).init(device));
        }
        self
    }

    /// Freezes every parameter but the output layer's.
    pub fn freeze_backbone(self) -> Self {
        let mut frozen = self.freeze();
        // The paper's RBF prototypes stay fixed; a dense head trains.
        frozen.fc = frozen.fc.map(Module::unfreeze);
        frozen
    }
}

impl Summarize for LeNet5 {
    fn summarize(&self, s: &mut Summary) {
        s.conv2d("c1", &self.c1);
        let subsampling = |s: &mut Summary, name: &str, layer: &Subsampling| {
            let [c, h, w] = s.chw();
            s.push(
                name,
                "Subsampling",
                vec![c, h / 2, w / 2],
                parameter_count(layer),
                0,
            );
        };
        if let Some(s2) = &self.s2 {
            subsampling(s, "s2", s2);
        } else if let Some(pool) = &self.pool {
            s.same("relu", "ReLU");
            s.max_pool2d("pool", pool);
        }
        match &self.c3 {
            C3::Partial(c3) => {
                let [_, h, w] = s.chw();
                // (As `Summary::conv2d` reports a window that does not fit.)
                assert!(
                    h >= 5 && w >= 5,
                    "layer `c3`: its 5×5 window does not fit its {h}×{w} input"
                );
                let (oh, ow) = (h - 4, w - 4);
                let macs: usize = C3_TABLE
                    .iter()
                    .map(|reads| reads.len() * 25 * oh * ow)
                    .sum();
                s.push(
                    "c3",
                    "PartialConv",
                    vec![16, oh, ow],
                    parameter_count(c3),
                    macs as u64,
                );
            }
            C3::Full(conv) => s.conv2d("c3", conv),
        }
        if let Some(s4) = &self.s4 {
            subsampling(s, "s4", s4);
        } else if let Some(pool) = &self.pool {
            s.same("relu", "ReLU");
            s.max_pool2d("pool", pool);
        }
        s.conv2d("c5", &self.c5);
        s.linear("f6", &self.f6);
        if let Some(rbf) = &self.rbf {
            let [classes, inputs] = rbf.centers.dims();
            s.push(
                "rbf",
                "Rbf",
                vec![classes],
                classes * inputs,
                (classes * inputs) as u64,
            );
        }
        if let Some(fc) = &self.fc {
            s.linear("fc", fc);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_papers_60000_parameters() {
        let device = Device::flex().autodiff();
        let model = LeNet5Config::paper(10).init(&device);
        let rbf = model.rbf.as_ref().map(parameter_count).unwrap();
        assert_eq!(rbf, 840);
        assert_eq!(parameter_count(&model) - rbf, 60_000);
        assert_eq!(parameter_count(&model.c3), 1_516);
        assert_eq!(
            model.forward(Tensor::zeros([2, 1, 32, 32], &device)).dims(),
            [2, 10]
        );
        let s = Summary::of(&model, &[1, 32, 32]);
        assert_eq!(s.params(), 60_840);
        let shapes: Vec<_> = s
            .rows
            .iter()
            .map(|r| (r.name.as_str(), r.output.clone()))
            .collect();
        assert_eq!(
            shapes,
            vec![
                ("c1", vec![6, 28, 28]),
                ("s2", vec![6, 14, 14]),
                ("c3", vec![16, 10, 10]),
                ("s4", vec![16, 5, 5]),
                ("c5", vec![120, 1, 1]),
                ("f6", vec![84]),
                ("rbf", vec![10]),
            ]
        );
        assert!(!model.rbf.as_ref().unwrap().centers.is_require_grad());
        assert!(model.f6.weight.is_require_grad());
    }

    #[test]
    fn partial_connections_follow_table_one() {
        // Feeding only S2 map k must change exactly the C3 maps whose row lists k.
        let device = Device::flex();
        let c3 = PartialConv::new(&device);
        let base = c3.forward(Tensor::zeros([1, 6, 5, 5], &device));
        for k in 0..6 {
            let mut input = vec![0f32; 6 * 25];
            input[k * 25..(k + 1) * 25].fill(1.0);
            let out = c3.forward(Tensor::from_data(
                TensorData::new(input, [1, 6, 5, 5]),
                &device,
            ));
            let diff = (out - base.clone())
                .abs()
                .reshape([16])
                .into_data()
                .try_to_vec::<f32>()
                .unwrap();
            for (map, reads) in C3_TABLE.iter().enumerate() {
                assert_eq!(diff[map] > 0.0, reads.contains(&k), "map {map}, input {k}");
            }
        }
    }

    #[test]
    fn rbf_and_scaled_tanh() {
        let device = Device::flex();
        let rbf = Rbf {
            centers: Param::from_tensor(Tensor::from_data(
                TensorData::new(vec![1f32, -1., -1., 1.], [2, 2]),
                &device,
            )),
        };
        let x = Tensor::from_data(TensorData::new(vec![1f32, 0.], [1, 2]), &device);
        assert_eq!(
            rbf.forward(x).into_data().try_to_vec::<f32>().unwrap(),
            vec![1.0, 5.0]
        );
        let y = scaled_tanh(Tensor::<4>::from_data(
            TensorData::new(vec![1.5f32], [1, 1, 1, 1]),
            &device,
        ));
        let want = 1.7159 * (1.0f32).tanh();
        assert!((y.into_scalar::<f32>() - want).abs() < 1e-6);
    }

    #[test]
    fn modern_variant() {
        let device = Device::flex();
        let model = LeNet5Config::modern(10).init(&device);
        assert_eq!(parameter_count(&model), 61_706);
        let out = model.forward(Tensor::zeros([3, 1, 32, 32], &device));
        assert_eq!(out.dims(), [3, 10]);
        let s = Summary::of(&model, &[1, 32, 32]);
        assert_eq!(s.shape(), vec![10]);
        assert_eq!(s.params(), 61_706);
    }
}
