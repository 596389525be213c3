//! Evaluation: loss, accuracy and the confusion matrix of a model on an image set.

use std::sync::Arc;

use crate::model::{Classify, device_of};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::prelude::*;
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
        Tta::default(),
    )
}

/// Test-time augmentation: the views of each test image whose logits are averaged.
///
/// The views are the image itself and, with `shift` = P > 0, the four corner crops of the
/// image padded by P black pixels on every side: the image moved P pixels along each
/// diagonal, so five views in all (torchvision's `FiveCrop` of the padded image). `flip`
/// adds each view's mirror image (`TenCrop`). "Black" is a zero pixel before
/// standardization, the fill of the `crop=P` augmentation, so the shifted views are ones
/// that training with `crop` of at least P has shown the model.
///
/// ```
/// use konv_train::eval::Tta;
/// let ten_crop = Tta { flip: true, shift: 1 };
/// assert_eq!(ten_crop.views(), 10);
/// assert_eq!(Tta::default().views(), 1);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tta {
    /// Also average the mirror image (left to right) of every view.
    pub flip: bool,
    /// Also average the four views moved this many pixels diagonally (0: none).
    pub shift: usize,
}

impl Tta {
    /// Horizontal flips only: each image and its mirror image (timm's and Keras' usual TTA).
    pub fn flip() -> Self {
        Tta {
            flip: true,
            shift: 0,
        }
    }

    /// How many views each image is evaluated in: 1, 2, 5 or 10.
    pub fn views(&self) -> usize {
        let places = if self.shift > 0 { 5 } else { 1 };
        places * if self.flip { 2 } else { 1 }
    }

    /// View `index` (below [`views`](Self::views)) of a batch of standardized images
    /// `[batch, channels, rows, cols]`: views come in places (the image, then moved by
    /// `(-P,-P)`, `(-P,P)`, `(P,-P)`, `(P,P)` rows and columns), each followed by its
    /// mirror image when `flip`. A moved view keeps the image's size; the pixels moved in
    /// are black (`normalize`'s standardized zero).
    ///
    /// # Panics
    /// When `index` is not below [`views`](Self::views).
    pub fn view(&self, images: Tensor<4>, normalize: Normalize, index: usize) -> Tensor<4> {
        assert!(index < self.views(), "view {index} of {}", self.views());
        let (place, mirror) = if self.flip {
            (index / 2, index % 2 == 1)
        } else {
            (index, false)
        };
        let view = match place {
            0 => images,
            _ => {
                let p = self.shift as i64;
                let (dy, dx) = [(-p, -p), (-p, p), (p, -p), (p, p)][place - 1];
                shifted(images, normalize, dy, dx)
            }
        };
        if mirror { view.flip([3]) } else { view }
    }

    /// The mean of `model`'s logits over every view of `images`, one view at a time.
    pub fn logits<M: Classify>(
        &self,
        model: &M,
        images: Tensor<4>,
        normalize: Normalize,
    ) -> Tensor<2> {
        let views = self.views();
        if views == 1 {
            return model.logits(images);
        }
        let mut sum = model.logits(images.clone());
        for index in 1..views {
            sum = sum + model.logits(self.view(images.clone(), normalize, index));
        }
        sum / views as f32
    }
}

/// `images` moved `dy` rows down and `dx` columns right, the uncovered pixels black. The
/// image's own pixels are copied, not recomputed, so they keep their exact values.
fn shifted(images: Tensor<4>, normalize: Normalize, dy: i64, dx: i64) -> Tensor<4> {
    let [n, c, h, w] = images.dims();
    let black: Vec<f32> = (0..c)
        .map(|ch| {
            let (mean, std) = normalize.channel(ch);
            -mean / std
        })
        .collect();
    let black = Tensor::<4>::from_data(TensorData::new(black, [1, c, 1, 1]), &images.device());
    let strip = |rows: usize, cols: usize| black.clone().expand([n, c, rows, cols]);
    let (py, px) = (dy.unsigned_abs() as usize, dx.unsigned_abs() as usize);
    let moved = match dy.signum() {
        1 => Tensor::cat(
            vec![strip(py, w), images.slice([0..n, 0..c, 0..h - py, 0..w])],
            2,
        ),
        -1 => Tensor::cat(
            vec![images.slice([0..n, 0..c, py..h, 0..w]), strip(py, w)],
            2,
        ),
        _ => images,
    };
    match dx.signum() {
        1 => Tensor::cat(
            vec![strip(h, px), moved.slice([0..n, 0..c, 0..h, 0..w - px])],
            3,
        ),
        -1 => Tensor::cat(
            vec![moved.slice([0..n, 0..c, 0..h, px..w]), strip(h, px)],
            3,
        ),
        _ => moved,
    }
}

/// [`evaluate_with`], with the test-time augmentation `tta` ([`Tta`]): each image's
/// logits are the mean over its views.
///
/// # Errors
/// As [`evaluate`]; also a `tta.shift` not smaller than the images' sides.
pub fn evaluate_tta<M: Classify>(
    model: &M,
    set: &Arc<ImageSet>,
    normalize: Normalize,
    batch_size: usize,
    num_classes: usize,
    preprocess: Option<Arc<crate::augment::Pipeline>>,
    tta: Tta,
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
        let [_, _, h, w] = batch.images.dims();
        if tta.shift >= h.min(w) {
            return Err(TrainError::Config(format!(
                "--tta-shift {}: a test-time shift of that many pixels leaves nothing of \
                 {h}x{w} images; shift by fewer pixels than the images' sides (1 or 2 is usual)",
                tta.shift
            )));
        }
        let logits = tta.logits(model, batch.images, normalize);
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

    #[test]
    fn ten_crop_views_are_the_image_moved_and_mirrored_with_black_moved_in() {
        // One 3-channel 3x4 image, standardized with a different black per channel.
        let normalize = Normalize::per_channel(&[(0.5, 0.25), (0.2, 0.5), (0.1, 1.0)]);
        let (c, h, w) = (3, 3, 4);
        let pixels: Vec<f32> = (0..c * h * w).map(|i| i as f32).collect();
        let images = Tensor::<4>::from_data(
            TensorData::new(pixels.clone(), [1, c, h, w]),
            &Device::flex(),
        );
        let tta = Tta {
            flip: true,
            shift: 1,
        };
        let at = |v: &[f32], ch: usize, y: usize, x: usize| v[(ch * h + y) * w + x];
        let views: Vec<Vec<f32>> = (0..tta.views())
            .map(|i| read_values(tta.view(images.clone(), normalize, i)).unwrap())
            .collect();
        assert_eq!(views.len(), 10);
        assert_eq!(views[0], pixels, "view 0 is the image");
        for ch in 0..c {
            let (mean, std) = normalize.channel(ch);
            let black = -mean / std;
            for y in 0..h {
                for x in 0..w {
                    let moved = |dy: i64, dx: i64| {
                        let (sy, sx) = (y as i64 - dy, x as i64 - dx);
                        if (0..h as i64).contains(&sy) && (0..w as i64).contains(&sx) {
                            at(&pixels, ch, sy as usize, sx as usize)
                        } else {
                            black
                        }
                    };
                    for (place, (dy, dx)) in [(0, 0), (-1, -1), (-1, 1), (1, -1), (1, 1)]
                        .into_iter()
                        .enumerate()
                    {
                        let want = moved(dy, dx);
                        assert_eq!(
                            at(&views[2 * place], ch, y, x),
                            want,
                            "{place} {ch} {y} {x}"
                        );
                        // The mirror image: column x of the mirror is column w-1-x.
                        assert_eq!(
                            at(&views[2 * place + 1], ch, y, w - 1 - x),
                            want,
                            "mirror {place} {ch} {y} {x}"
                        );
                    }
                }
            }
        }
    }
}
