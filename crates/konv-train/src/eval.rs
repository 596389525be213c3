//! Evaluation: loss, accuracy and the confusion matrix of a model on an image set.

use std::sync::Arc;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::prelude::*;
use konv_datasets::ImageSet;
use konv_models::Classifier;

use crate::data::{Normalize, loader};

/// What a model scores on a labelled set.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalReport {
    /// Mean cross-entropy loss.
    pub loss: f64,
    /// `confusion[actual][predicted]` counts.
    pub confusion: Vec<Vec<usize>>,
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

/// The device `model`'s parameters live on (Flex for a model without parameters).
pub(crate) fn device_of(model: &Classifier) -> Device {
    model
        .devices()
        .into_iter()
        .next()
        .unwrap_or_else(Device::flex)
}

/// Evaluates `model` (in inference mode: call `valid()` first) on `set`.
pub fn evaluate(
    model: &Classifier,
    set: &Arc<ImageSet>,
    normalize: Normalize,
    batch_size: usize,
    num_classes: usize,
) -> EvalReport {
    let device = device_of(model);
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let mut confusion = vec![vec![0usize; num_classes]; num_classes];
    let mut loss_sum = 0.0;
    for batch in loader(set.clone(), normalize, batch_size, None, None, &device).iter() {
        let Ok(batch) = batch else { continue };
        let n = batch.targets.dims()[0];
        let logits = model.forward(batch.images);
        let loss = loss_fn.forward(logits.clone(), batch.targets.clone());
        loss_sum += loss.into_scalar::<f64>() * n as f64;
        let predicted = logits
            .argmax(1)
            .into_data()
            .convert::<i64>()
            .try_to_vec::<i64>()
            .unwrap_or_default();
        let actual = batch
            .targets
            .into_data()
            .convert::<i64>()
            .try_to_vec::<i64>()
            .unwrap_or_default();
        for (a, p) in actual.into_iter().zip(predicted) {
            confusion[a as usize][p as usize] += 1;
        }
    }
    let total: usize = confusion.iter().flatten().sum();
    EvalReport {
        loss: loss_sum / total.max(1) as f64,
        confusion,
    }
}
