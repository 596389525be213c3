//! Evaluation: loss, accuracy and the confusion matrix of a model on an image set.

use std::sync::Arc;

use crate::model::{Classify, device_of};
use burn::nn::loss::CrossEntropyLossConfig;
use konv_datasets::ImageSet;

use crate::TrainError;
use crate::data::{Normalize, loader};
use crate::engine::{read_loss, read_values};

/// What a model scores on a labelled set.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalReport {
    /// Mean cross-entropy loss.
    pub loss: f64,
    /// `confusion[actual][predicted]` counts.
    pub confusion: Vec<Vec<usize>>,
    /// Images whose class is among the 5 highest scores.
    pub top5_correct: usize,
}

impl EvalReport {
    /// Number of images evaluated.
    pub fn total(&self) -> usize {
        self.confusion.iter().flatten().sum()
    }

    /// Fraction predicted correctly.
    pub fn accuracy(&self) -> f64 {
        let correct: usize = (0..self.confusion.len())
            .map(|i| self.confusion[i][i])
            .sum();
        correct as f64 / self.total().max(1) as f64
    }

    /// Fraction whose class is among the 5 highest scores (all of them with 5 classes or
    /// fewer).
    pub fn top5_accuracy(&self) -> f64 {
        self.top5_correct as f64 / self.total().max(1) as f64
    }

    /// Accuracy of each class (recall), `NaN` for a class with no images.
    pub fn per_class_accuracy(&self) -> Vec<f64> {
        self.confusion
            .iter()
            .enumerate()
            .map(|(i, row)| row[i] as f64 / row.iter().sum::<usize>() as f64)
            .collect()
    }

    /// The confusion matrix as an aligned table, rows = actual class, columns = predicted.
    pub fn confusion_table(&self, class_names: &[String]) -> String {
        let label_w = class_names
            .iter()
            .map(|n| n.len())
            .max()
            .unwrap_or(0)
            .max(6);
        let col_w = self
            .confusion
            .iter()
            .flatten()
            .map(|c| c.to_string().len())
            .max()
            .unwrap_or(1)
            .max(4);
        let mut header = format!("{:w$}", "", w = label_w + 2);
        for j in 0..self.confusion.len() {
            header.push_str(&format!(" {:>col_w$}", j));
        }
        header.push_str("   accuracy\n");
        let mut table = String::new();
        table.push_str(&format!(
            "rows: actual class, columns: predicted class index\n{header}"
        ));
        let per_class = self.per_class_accuracy();
        for (i, (row, accuracy)) in self.confusion.iter().zip(per_class).enumerate() {
            let name = class_names.get(i).map_or("?", String::as_str);
            table.push_str(&format!("{i} {name:<label_w$}"));
            for c in row {
                table.push_str(&format!(" {c:>col_w$}"));
            }
            table.push_str(&format!("   {:>7.2}%\n", 100.0 * accuracy));
        }
        table
    }
}

/// Evaluates `model` (in inference mode: call `valid()` first) on `set`.
///
/// # Errors
/// A batch that could not be made ([`TrainError::Config`]) or a device that failed
/// ([`TrainError::Device`]): no figure over part of the set.
pub fn evaluate<M: Classify>(
    model: &M,
    set: &Arc<ImageSet>,
    normalize: Normalize,
    batch_size: usize,
    num_classes: usize,
) -> Result<EvalReport, TrainError> {
    evaluate_with(model, set, normalize, batch_size, num_classes, None)
}

/// [`evaluate`] with the deterministic preprocessing of a training pipeline
/// ([`Pipeline::eval_steps`](crate::augment::Pipeline::eval_steps), e.g. `resize`).
///
/// # Errors
/// As [`evaluate`].
pub fn evaluate_with<M: Classify>(
    model: &M,
    set: &Arc<ImageSet>,
    normalize: Normalize,
    batch_size: usize,
    num_classes: usize,
    preprocess: Option<Arc<crate::augment::Pipeline>>,
) -> Result<EvalReport, TrainError> {
    evaluate_tta(
        model,
        set,
        normalize,
        batch_size,
        num_classes,
        preprocess,
        false,
    )
}

/// [`evaluate_with`], with test-time augmentation when `flip_tta`: the logits of each image
/// and of its mirror image are averaged (timm's and Keras' usual horizontal-flip TTA).
///
/// # Errors
/// As [`evaluate`].
pub fn evaluate_tta<M: Classify>(
    model: &M,
    set: &Arc<ImageSet>,
    normalize: Normalize,
    batch_size: usize,
    num_classes: usize,
    preprocess: Option<Arc<crate::augment::Pipeline>>,
    flip_tta: bool,
) -> Result<EvalReport, TrainError> {
    let device = device_of(model);
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let mut confusion = vec![vec![0usize; num_classes]; num_classes];
    let mut loss_sum = 0.0;
    let mut top5_correct = 0;
    for batch in loader(
        set.clone(),
        normalize,
        batch_size,
        None,
        preprocess,
        &device,
    )
    .iter()
    {
        let batch = batch.map_err(|e| TrainError::Config(e.to_string()))?;
        let n = batch.targets.dims()[0];
        let logits = if flip_tta {
            let mirrored = model.logits(batch.images.clone().flip([3]));
            (model.logits(batch.images) + mirrored) / 2.0
        } else {
            model.logits(batch.images)
        };
        let loss = loss_fn.forward(logits.clone(), batch.targets.clone());
        loss_sum += read_loss(loss)? * n as f64;
        let scores: Vec<f32> = read_values(logits.clone())?;
        let predicted: Vec<i64> = read_values(logits.argmax(1))?;
        let actual: Vec<i64> = read_values(batch.targets)?;
        for (row, (a, p)) in actual.into_iter().zip(predicted).enumerate() {
            let (a, p) = (a as usize, p as usize);
            if a >= num_classes || p >= num_classes {
                return Err(TrainError::Config(format!(
                    "label {a} or prediction {p} is outside the {num_classes} classes evaluated; \
                     evaluate with the model's number of classes"
                )));
            }
            confusion[a][p] += 1;
            top5_correct += usize::from(top_k_hit(&scores, row, num_classes, a, 5));
        }
    }
    let total: usize = confusion.iter().flatten().sum();
    Ok(EvalReport {
        loss: loss_sum / total.max(1) as f64,
        confusion,
        top5_correct,
    })
}

/// Whether class `target` is among the `k` highest of row `row` of `scores`
/// (`[rows, classes]`, row-major); ties count in the target's favour.
pub fn top_k_hit(scores: &[f32], row: usize, classes: usize, target: usize, k: usize) -> bool {
    let Some(row) = scores.get(row * classes..(row + 1) * classes) else {
        return false;
    };
    let t = row[target];
    row.iter().filter(|&&s| s > t).count() < k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_counts_classes_ranked_above_the_target() {
        let scores = [0.1, 0.5, 0.2, 0.9, 0.3, 0.8, 0.0];
        // Target 2 (0.2) has 4 scores above it (0.5, 0.9, 0.3, 0.8): in the top 5, not the top 4.
        assert!(top_k_hit(&scores, 0, 7, 2, 5));
        assert!(!top_k_hit(&scores, 0, 7, 2, 4));
        assert!(top_k_hit(&scores, 0, 7, 3, 1));
        assert!(!top_k_hit(&scores, 1, 7, 3, 1), "no second row");
    }
}
