//! Choosing an optimizer by name and building it from Burn's: SGD (momentum, Nesterov),
//! Adam, AdamW and RMSProp, with weight decay optionally kept off biases and normalization
//! parameters (timm's `filter_bias_and_bn`, torchvision's `--norm-weight-decay 0`).

use std::fmt;
use std::str::FromStr;

use burn::grad_clipping::GradientClippingConfig;
use burn::module::{Module, ModuleVisitor, Param, ParamGroup, ParamId};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, AdamWConfig, ModuleOptimizer, RmsPropConfig, SgdConfig};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// An optimizer of `--optimizer`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerName {
    /// SGD with optional momentum and Nesterov (dampening 0, as Keras and PyTorch).
    #[default]
    Sgd,
    /// Adam (β = 0.9, 0.999; ε = 1e-8 as PyTorch); weight decay is L2 added to the gradient.
    Adam,
    /// AdamW: weight decay decoupled from the gradient (Loshchilov & Hutter).
    Adamw,
    /// RMSProp (α = 0.99 as PyTorch; `--momentum` is its momentum).
    Rmsprop,
}

impl OptimizerName {
    /// Every optimizer.
    pub const ALL: [OptimizerName; 4] = [
        OptimizerName::Sgd,
        OptimizerName::Adam,
        OptimizerName::Adamw,
        OptimizerName::Rmsprop,
    ];

    /// The name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            OptimizerName::Sgd => "sgd",
            OptimizerName::Adam => "adam",
            OptimizerName::Adamw => "adamw",
            OptimizerName::Rmsprop => "rmsprop",
        }
    }
}

impl fmt::Display for OptimizerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OptimizerName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| {
                format!("unknown optimizer `{s}`; valid optimizers: sgd, adam, adamw, rmsprop")
            })
    }
}

/// Everything that shapes the optimizer.
#[derive(Debug, Clone, PartialEq)]
pub struct OptimizerSettings {
    /// Which optimizer.
    pub name: OptimizerName,
    /// SGD and RMSProp momentum (0 for none).
    pub momentum: f64,
    /// Nesterov momentum (SGD).
    pub nesterov: bool,
    /// Weight decay (L2 for SGD, Adam and RMSProp; decoupled for AdamW); 0 for none.
    pub weight_decay: f64,
    /// Keep weight decay off biases and normalization parameters (every parameter of one
    /// dimension, timm's rule).
    pub no_decay_bias_norm: bool,
    /// Clip each parameter's gradient to this L2 norm.
    pub clip_grad_norm: Option<f64>,
}

impl OptimizerSettings {
    /// The optimizer for `model`'s parameters.
    pub fn build<M: Module>(&self, model: &M) -> ModuleOptimizer {
        let clipping = self
            .clip_grad_norm
            .map(|norm| GradientClippingConfig::Norm(norm as f32));
        let decay = self.weight_decay;
        let optim = match self.name {
            OptimizerName::Sgd => self.sgd(decay, clipping.clone()).init(),
            OptimizerName::Adam => self.adam(decay, clipping.clone()).init(),
            OptimizerName::Adamw => self.adamw(decay, clipping.clone()).init(),
            OptimizerName::Rmsprop => self.rmsprop(decay, clipping.clone()).init(),
        };
        if !(self.no_decay_bias_norm && decay > 0.0) {
            return optim;
        }
        // The same optimizer without decay, for the one-dimensional parameters.
        let group = one_dimensional(model);
        let clip = clipping.map(|c| c.init());
        match self.name {
            OptimizerName::Sgd => optim.with_group(group, self.sgd(0.0, None).build(), clip),
            OptimizerName::Adam => optim.with_group(group, self.adam(0.0, None).build(), clip),
            OptimizerName::Adamw => optim.with_group(group, self.adamw(0.0, None).build(), clip),
            OptimizerName::Rmsprop => {
                optim.with_group(group, self.rmsprop(0.0, None).build(), clip)
            }
        }
    }

    fn l2(decay: f64) -> Option<WeightDecayConfig> {
        (decay > 0.0).then(|| WeightDecayConfig::new(decay as f32))
    }

    fn sgd(&self, decay: f64, clipping: Option<GradientClippingConfig>) -> SgdConfig {
        let momentum = (self.momentum > 0.0).then(|| {
            // Burn's `MomentumConfig` defaults dampening to 0.1; Keras and PyTorch use 0.
            MomentumConfig::new()
                .with_momentum(self.momentum)
                .with_dampening(0.0)
                .with_nesterov(self.nesterov)
        });
        SgdConfig::new()
            .with_momentum(momentum)
            .with_weight_decay(Self::l2(decay))
            .with_gradient_clipping(clipping)
    }

    fn adam(&self, decay: f64, clipping: Option<GradientClippingConfig>) -> AdamConfig {
        AdamConfig::new()
            .with_epsilon(1e-8)
            .with_weight_decay(Self::l2(decay))
            .with_grad_clipping(clipping)
    }

    fn adamw(&self, decay: f64, clipping: Option<GradientClippingConfig>) -> AdamWConfig {
        AdamWConfig::new()
            .with_epsilon(1e-8)
            .with_weight_decay(decay as f32)
            .with_grad_clipping(clipping)
    }

    fn rmsprop(&self, decay: f64, clipping: Option<GradientClippingConfig>) -> RmsPropConfig {
        RmsPropConfig::new()
            .with_momentum(self.momentum as f32)
            .with_epsilon(1e-8)
            .with_weight_decay(Self::l2(decay))
            .with_grad_clipping(clipping)
    }
}

/// The parameters of one dimension in `model`: biases and normalization scales and shifts.
pub fn one_dimensional<M: Module>(model: &M) -> ParamGroup {
    struct Collect(Vec<ParamId>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if D <= 1 {
                self.0.push(param.id);
            }
        }
    }
    let mut collect = Collect(Vec::new());
    model.visit(&mut collect);
    ParamGroup::from_ids(collect.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::optim::GradientsParams;

    #[test]
    fn names_parse_and_list_the_valid_ones() {
        for o in OptimizerName::ALL {
            assert_eq!(o.as_str().parse::<OptimizerName>(), Ok(o));
        }
        let err = "lamb".parse::<OptimizerName>().unwrap_err();
        assert!(err.contains("sgd, adam, adamw, rmsprop"), "{err}");
    }

    /// With a zero gradient, an SGD step changes a parameter only through weight decay: the
    /// weight matrix shrinks, the bias (one dimension) keeps its value when excluded.
    #[test]
    fn weight_decay_can_skip_biases() {
        let device = Device::flex().autodiff();
        let linear = burn::nn::LinearConfig::new(3, 2).init(&device);
        let bias0 = linear.bias.as_ref().unwrap().val().into_data();
        let weight0 = linear.weight.val().into_data();
        for skip in [false, true] {
            let settings = OptimizerSettings {
                name: OptimizerName::Sgd,
                momentum: 0.0,
                nesterov: false,
                weight_decay: 0.5,
                no_decay_bias_norm: skip,
                clip_grad_norm: None,
            };
            let mut optim = settings.build(&linear);
            let x = Tensor::<2>::zeros([1, 3], &device);
            let loss = linear.forward(x).sum() * 0.0;
            let grads = GradientsParams::from_grads(loss.backward(), &linear);
            let next = optim.step(0.1, linear.clone(), grads);
            // w ← w − lr·(0 + 0.5·w) = 0.95·w.
            let w: Vec<f32> = next.weight.val().into_data().try_to_vec::<f32>().unwrap();
            let w0: Vec<f32> = weight0.try_to_vec::<f32>().unwrap();
            for (a, b) in w.iter().zip(&w0) {
                assert!((a - 0.95 * b).abs() < 1e-6);
            }
            let b: Vec<f32> = next
                .bias
                .unwrap()
                .val()
                .into_data()
                .try_to_vec::<f32>()
                .unwrap();
            let b0: Vec<f32> = bias0.try_to_vec::<f32>().unwrap();
            for (a, c) in b.iter().zip(&b0) {
                let want = if skip { *c } else { 0.95 * c };
                assert!((a - want).abs() < 1e-6, "skip={skip}: {a} vs {want}");
            }
        }
    }
}
