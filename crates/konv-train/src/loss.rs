//! Training models with several outputs on a weighted sum of their losses: Keras'
//! `model.compile(loss=[...], loss_weights=[0.8, 0.2])`, here for the lecture's
//! classification + localization model (class cross-entropy + box regression).

use std::str::FromStr;

use burn::nn::loss::{CrossEntropyLossConfig, HuberLossConfig, MseLoss, Reduction};
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use konv_models::localization::Localizer;
use serde::{Deserialize, Serialize};

/// One weight per output, in the model's output order (`--loss-weights 0.8,0.2`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossWeights(pub Vec<f64>);

impl FromStr for LossWeights {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let weights = s
            .split(',')
            .map(|w| {
                w.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite() && *v >= 0.0)
                    .ok_or_else(|| format!("`{w}` is not a weight; give non-negative numbers, one per output, e.g. 0.8,0.2"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if weights.iter().all(|w| *w == 0.0) {
            return Err("the loss weights are all zero: nothing would train".into());
        }
        Ok(LossWeights(weights))
    }
}

impl std::fmt::Display for LossWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|w| w.to_string()).collect();
        f.write_str(&parts.join(","))
    }
}

impl LossWeights {
    /// `Σ wᵢ · lossᵢ`; the number of losses must match the weights.
    pub fn combine(&self, losses: Vec<Tensor<1>>) -> Result<Tensor<1>, String> {
        if losses.len() != self.0.len() {
            return Err(format!(
                "{} loss weights for a model with {} outputs",
                self.0.len(),
                losses.len()
            ));
        }
        let mut terms = losses.into_iter().zip(&self.0).map(|(l, &w)| l * w);
        let first = terms.next().ok_or("a model has at least one output")?;
        Ok(terms.fold(first, |sum, t| sum + t))
    }
}

/// The box regression loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum BoxLoss {
    /// Mean squared error (the lecture's `"mse"`).
    #[default]
    Mse,
    /// Smooth L1 / Huber with δ = 1 (Fast R-CNN).
    SmoothL1,
}

/// The losses of one localization batch.
#[derive(Debug, Clone)]
pub struct LocalizationLosses {
    /// The weighted sum that is minimized.
    pub total: Tensor<1>,
    /// Class cross-entropy.
    pub class: Tensor<1>,
    /// Box regression loss.
    pub boxes: Tensor<1>,
}

/// Class cross-entropy and box regression, weighted: `weights` has two entries.
pub fn localization_losses(
    logits: Tensor<2>,
    classes: Tensor<1, Int>,
    predicted_boxes: Tensor<2>,
    boxes: Tensor<2>,
    weights: &LossWeights,
    box_loss: BoxLoss,
) -> Result<LocalizationLosses, String> {
    let device = logits.device();
    let class = CrossEntropyLossConfig::new()
        .init(&device)
        .forward(logits, classes);
    let boxes = match box_loss {
        BoxLoss::Mse => MseLoss::new().forward(predicted_boxes, boxes, Reduction::Mean),
        BoxLoss::SmoothL1 => {
            HuberLossConfig::new(1.0)
                .init()
                .forward(predicted_boxes, boxes, Reduction::Mean)
        }
    };
    let total = weights.combine(vec![class.clone(), boxes.clone()])?;
    Ok(LocalizationLosses {
        total,
        class,
        boxes,
    })
}

/// One optimization step of a [`Localizer`] on images, class labels and boxes `[batch, 4]`:
/// returns the model and the batch's (total, class, box) losses.
#[allow(clippy::too_many_arguments)]
pub fn localization_step(
    model: Localizer,
    optim: &mut ModuleOptimizer,
    images: Tensor<4>,
    classes: Tensor<1, Int>,
    boxes: Tensor<2>,
    lr: f64,
    weights: &LossWeights,
    box_loss: BoxLoss,
) -> Result<(Localizer, [f64; 3]), String> {
    let out = model.forward(images);
    let losses = localization_losses(out.logits, classes, out.boxes, boxes, weights, box_loss)?;
    let values = [
        losses.total.clone().into_scalar::<f64>(),
        losses.class.into_scalar::<f64>(),
        losses.boxes.into_scalar::<f64>(),
    ];
    let grads = GradientsParams::from_grads(losses.total.backward(), &model);
    Ok((optim.step(lr, model, grads), values))
}

/// Sigmoid focal loss of `logits` against 0/1 `targets`, element by element (not reduced):
/// `−α_t (1 − p_t)^γ log p_t` (Lin et al., *Focal Loss for Dense Object Detection*, and
/// torchvision's `sigmoid_focal_loss`). With γ = 0 and α = 0.5 it is half the binary
/// cross-entropy; γ > 0 turns down the many easy negatives of a dense detector. Pass
/// `alpha < 0` for no class weighting.
pub fn sigmoid_focal_loss<const D: usize>(
    logits: Tensor<D>,
    targets: Tensor<D>,
    alpha: f64,
    gamma: f64,
) -> Tensor<D> {
    use burn::tensor::activation::{log_sigmoid, sigmoid};
    let p = sigmoid(logits.clone());
    let negative = targets.clone().neg().add_scalar(1.0);
    let ce = (targets.clone() * log_sigmoid(logits.clone())
        + negative.clone() * log_sigmoid(logits.neg()))
    .neg();
    let p_t = p.clone() * targets.clone() + p.neg().add_scalar(1.0) * negative.clone();
    let mut loss = ce * p_t.neg().add_scalar(1.0).powf_scalar(gamma);
    if alpha >= 0.0 {
        loss = loss * (targets.mul_scalar(alpha) + negative.mul_scalar(1.0 - alpha));
    }
    loss
}

/// Smooth L1 (Huber with δ = 1) of `x − target`, element by element: `½d²` below 1, `|d| − ½`
/// above (Fast R-CNN's box loss).
pub fn smooth_l1<const D: usize>(x: Tensor<D>, target: Tensor<D>) -> Tensor<D> {
    let d = (x - target).abs();
    let small = d.clone().clamp_max(1.0);
    small.clone().powf_scalar(2.0).mul_scalar(0.5) + (d - small)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::optim::SgdConfig;

    #[test]
    fn weights_parse_and_combine() {
        let w: LossWeights = "0.8,0.2".parse().unwrap();
        assert_eq!(w.0, vec![0.8, 0.2]);
        assert_eq!(w.to_string().parse::<LossWeights>().unwrap(), w);
        assert!("0.8,x".parse::<LossWeights>().unwrap_err().contains("`x`"));
        assert!("0,0".parse::<LossWeights>().is_err());
        let device = Device::flex();
        let a = Tensor::<1>::from_floats([2.0], &device);
        let b = Tensor::<1>::from_floats([10.0], &device);
        let total = w.combine(vec![a.clone(), b.clone()]).unwrap();
        assert!((total.into_scalar::<f32>() - 3.6).abs() < 1e-6);
        assert!(w.combine(vec![a]).unwrap_err().contains("2 loss weights"));
    }

    #[test]
    fn focal_loss_and_smooth_l1_by_hand() {
        let device = Device::flex();
        let logits = Tensor::<1>::from_floats([0.0, 2.0, -1.0], &device);
        let targets = Tensor::<1>::from_floats([1.0, 0.0, 1.0], &device);
        let got: Vec<f32> = sigmoid_focal_loss(logits.clone(), targets.clone(), 0.25, 2.0)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let sig = |x: f32| 1.0 / (1.0 + (-x).exp());
        // x = 0, t = 1: p = ½, ce = ln 2, (1 − ½)² · 0.25.
        let want = [
            0.25 * 0.25 * std::f32::consts::LN_2,
            // x = 2, t = 0: p_t = 1 − σ(2), ce = −ln(1 − σ(2)), α_t = 0.75.
            0.75 * sig(2.0).powi(2) * -(1.0 - sig(2.0)).ln(),
            0.25 * (1.0 - sig(-1.0)).powi(2) * -sig(-1.0).ln(),
        ];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
        }
        // γ = 0 without α: the binary cross-entropy.
        let bce: Vec<f32> = sigmoid_focal_loss(logits, targets, -1.0, 0.0)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert!((bce[1] + (1.0 - sig(2.0)).ln()).abs() < 1e-6);
        let d: Vec<f32> = smooth_l1(
            Tensor::<1>::from_floats([0.5, 3.0, -2.0], &device),
            Tensor::<1>::zeros([3], &device),
        )
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
        assert_eq!(d, vec![0.125, 2.5, 1.5]);
    }

    /// With the box loss weighted 0 the box head gets no gradient and keeps its weights;
    /// with weight 1 it moves.
    #[test]
    fn a_zero_weight_leaves_its_head_alone() {
        let device = Device::flex().autodiff();
        device.seed(2);
        let backbone = konv_models::build_for("lenet5-modern", 3, 1, &device).unwrap();
        let images =
            Tensor::<4>::random([4, 1, 32, 32], burn::tensor::Distribution::Default, &device);
        let classes = Tensor::<1, Int>::from_ints([0, 1, 2, 1], &device);
        let boxes = Tensor::<2>::random([4, 4], burn::tensor::Distribution::Default, &device);
        for (spec, moves) in [("1,0", false), ("1,1", true)] {
            let model = Localizer::new(backbone.clone(), 3, &device);
            let before = model.box_head.weight.val().inner();
            let mut optim = SgdConfig::new().init();
            let (after, losses) = localization_step(
                model,
                &mut optim,
                images.clone(),
                classes.clone(),
                boxes.clone(),
                0.1,
                &spec.parse().unwrap(),
                BoxLoss::SmoothL1,
            )
            .unwrap();
            let change = (after.box_head.weight.val().inner() - before)
                .abs()
                .max()
                .into_scalar::<f32>();
            assert_eq!(change > 0.0, moves, "{spec}: {change}");
            let w: Vec<f64> = spec.split(',').map(|x| x.parse().unwrap()).collect();
            assert!((losses[0] - (w[0] * losses[1] + w[1] * losses[2])).abs() < 1e-5);
        }
    }
}
