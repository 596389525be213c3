//! An exponential moving average of a model's weights, kept beside training (Polyak
//! averaging; timm's `ModelEmaV2`, Keras' `use_ema`, TensorFlow's
//! `ExponentialMovingAverage`).
//!
//! After every optimizer step the average moves toward the trained weights:
//!
//! ```text
//! ema ← d · ema + (1 − d) · weights,   d = min(decay, (1 + n) / (10 + n))
//! ```
//!
//! where `n` counts the updates so far (TensorFlow's `num_updates` warm-up, so early
//! averages are not dominated by the random initial weights). Every float tensor of the
//! module is averaged, batch norm's running statistics included (as timm does); integer and
//! boolean tensors are copied. The average is an inference-mode copy: it never trains and
//! takes no memory for gradients.
//!
//! It works on any [`Module`], a zoo model or a user's own: the two modules are walked in
//! the same order ([`ModuleVisitor`], then [`ModuleMapper`]), so no names are needed.
//!
//! ```
//! use burn::prelude::*;
//! use burn::nn::{Linear, LinearConfig};
//! use konv_train::ema::ModelEma;
//!
//! let device = Device::default();
//! let model: Linear = LinearConfig::new(2, 1).init(&device);
//! let mut ema = ModelEma::new(0.999);
//! ema.update(&model); // after each optimizer step
//! let averaged: &Linear = ema.model().expect("updated once");
//! assert_eq!(ema.updates(), 1);
//! # let _ = averaged;
//! ```

use std::collections::VecDeque;

use burn::module::{ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;

/// The moving average of a module's weights, and how many updates made it.
#[derive(Debug, Clone)]
pub struct ModelEma<M> {
    decay: f64,
    updates: u64,
    model: Option<M>,
}

impl<M: Module> ModelEma<M> {
    /// An average with this decay (0 < `decay` < 1; 0.999 or 0.9999 as in timm), empty until
    /// the first [`update`](Self::update).
    pub fn new(decay: f64) -> Self {
        ModelEma {
            decay,
            updates: 0,
            model: None,
        }
    }

    /// An average restored from a checkpoint: `model` after `updates` updates.
    pub fn resume(decay: f64, model: M, updates: u64) -> Self {
        ModelEma {
            decay,
            updates,
            model: Some(model.valid()),
        }
    }

    /// The decay the next update uses: `min(decay, (1 + n) / (10 + n))`.
    pub fn next_decay(&self) -> f64 {
        let n = self.updates as f64;
        self.decay.min((1.0 + n) / (10.0 + n))
    }

    /// Moves the average toward `model`'s weights (in training or inference mode); the first
    /// update copies them.
    pub fn update(&mut self, model: &M) {
        let live = model.valid();
        let decay = self.next_decay();
        self.model = Some(match self.model.take() {
            None => live,
            Some(ema) => {
                let mut tensors = Tensors::default();
                live.visit(&mut tensors);
                let mut blend = Blend { decay, tensors };
                let ema = ema.map(&mut blend);
                debug_assert!(
                    blend.tensors.is_empty(),
                    "the modules have the same tensors"
                );
                ema
            }
        });
        self.updates += 1;
    }

    /// The averaged weights in inference mode (`None` before the first update).
    pub fn model(&self) -> Option<&M> {
        self.model.as_ref()
    }

    /// A copy of the averaged weights that later updates leave alone (batch norm's running
    /// statistics are shared between clones of a module, and updates write them in place).
    pub fn snapshot(&self) -> Option<M> {
        self.model.as_ref().map(|m| m.valid())
    }

    /// Updates made so far.
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// The decay it was made with.
    pub fn decay(&self) -> f64 {
        self.decay
    }
}

/// The live module's tensors in visiting order, flattened (their shapes are the average's).
#[derive(Default)]
struct Tensors {
    floats: VecDeque<Tensor<1>>,
    ints: VecDeque<Tensor<1, Int>>,
    bools: VecDeque<Tensor<1, Bool>>,
}

impl Tensors {
    fn is_empty(&self) -> bool {
        self.floats.is_empty() && self.ints.is_empty() && self.bools.is_empty()
    }
}

impl ModuleVisitor for Tensors {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.floats.push_back(param.val().flatten(0, D - 1));
    }

    fn visit_int<const D: usize>(&mut self, param: &Param<Tensor<D, Int>>) {
        self.ints.push_back(param.val().flatten(0, D - 1));
    }

    fn visit_bool<const D: usize>(&mut self, param: &Param<Tensor<D, Bool>>) {
        self.bools.push_back(param.val().flatten(0, D - 1));
    }
}

/// Blends each tensor of the average with the live one in the same place.
struct Blend {
    decay: f64,
    tensors: Tensors,
}

const SAME_MODULE: &str = "the average and the trained model have the same tensors";

impl ModuleMapper for Blend {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let live = self.tensors.floats.pop_front().expect(SAME_MODULE);
        let decay = self.decay;
        param.map(|ema| {
            let live = live.reshape(ema.shape());
            ema.mul_scalar(decay).add(live.mul_scalar(1.0 - decay))
        })
    }

    fn map_int<const D: usize>(&mut self, param: Param<Tensor<D, Int>>) -> Param<Tensor<D, Int>> {
        let live = self.tensors.ints.pop_front().expect(SAME_MODULE);
        param.map(|ema| live.reshape(ema.shape()))
    }

    fn map_bool<const D: usize>(
        &mut self,
        param: Param<Tensor<D, Bool>>,
    ) -> Param<Tensor<D, Bool>> {
        let live = self.tensors.bools.pop_front().expect(SAME_MODULE);
        param.map(|ema| live.reshape(ema.shape()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig};

    #[derive(Module, Debug)]
    struct Net {
        fc: Linear,
        bn: BatchNorm,
    }

    fn net(device: &Device) -> Net {
        Net {
            fc: LinearConfig::new(3, 2).init(device),
            bn: BatchNormConfig::new(2).init(device),
        }
    }

    fn floats(net: &Net) -> Vec<Vec<f32>> {
        let mut t = Tensors::default();
        net.visit(&mut t);
        t.floats
            .into_iter()
            .map(|t| t.into_data().try_to_vec::<f32>().unwrap())
            .collect()
    }

    #[test]
    fn warm_up_then_the_set_decay() {
        let mut ema = ModelEma::<Net>::new(0.99);
        assert_eq!(ema.next_decay(), 0.1);
        ema.updates = 5;
        assert_eq!(ema.next_decay(), 6.0 / 15.0);
        ema.updates = 10_000;
        assert_eq!(ema.next_decay(), 0.99);
    }

    #[test]
    fn the_average_blends_weights_and_running_statistics() {
        let device = Device::default();
        let a = net(&device);
        // A second set of weights, and batch norm's running statistics moved by a forward
        // pass in training mode.
        let train = device.clone().autodiff();
        let b = net(&train);
        let x = Tensor::<4>::from_data([[[[1.0f32]], [[3.0]]], [[[5.0]], [[-2.0]]]], &train);
        let _ = b.bn.forward(x);
        let b = b.valid();
        let mut ema = ModelEma::new(0.5);
        ema.update(&a);
        assert_eq!(floats(ema.model().unwrap()), floats(&a));
        let before = ema.snapshot().unwrap();
        // The second update's decay is min(0.5, 2/11).
        let d = 2.0f32 / 11.0;
        ema.update(&b);
        let expected: Vec<Vec<f32>> = floats(&a)
            .iter()
            .zip(floats(&b))
            .map(|(x, y)| {
                x.iter()
                    .zip(&y)
                    .map(|(x, y)| d * x + (1.0 - d) * y)
                    .collect()
            })
            .collect();
        let got = floats(ema.model().unwrap());
        assert_eq!(
            got.len(),
            6,
            "weight, bias, gamma, beta, running mean and variance"
        );
        for (g, e) in got.iter().zip(&expected) {
            for (g, e) in g.iter().zip(e) {
                assert!((g - e).abs() < 1e-6, "{g} vs {e}");
            }
        }
        // The running mean moved, so the test covers the buffers.
        assert_ne!(floats(&a)[4], floats(&b)[4]);
        // The snapshot taken before kept its values.
        assert_eq!(floats(&before), floats(&a));
        assert_eq!(ema.updates(), 2);
    }
}
