//! Classification + localization: training, evaluation and prediction of a
//! [`Localizer`] on a [`LocalizationSet`] (one item per image, its class and box).
//!
//! Boxes are learned as `(centre x, centre y, width, height)` divided by the image size, so
//! the targets lie in [0, 1]; the loss is `w₀ · cross-entropy + w₁ · box loss` with the
//! lecture's `loss_weights = [0.8, 0.2]` by default. Metrics: accuracy and the mean IoU of
//! predicted and true boxes (Keras' lecture code reports the same two).

use std::path::Path;

use burn::prelude::*;
use burn::tensor::activation::softmax;
use image::{Rgb, RgbImage};
use konv_datasets::localization::{CanvasConfig, LocalizationSet};
use konv_datasets::{Dataset, ImageSet};
use konv_models::localization::Localizer;
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::augment::{Image, Pipeline, Sample};
use crate::data::Normalize;
use crate::engine::{Monitor, PlannedEpochs, Settings, Step, StepLoss, Task, Validation};
use crate::loss::{BoxLoss, LossWeights, localization_losses};
use crate::metrics::box_iou;
use crate::observer::Observer;
use crate::record::EpochMetrics;
use crate::run::{BEST, RunDir};
use crate::schedule::LrSchedule;

/// How the canvases of a generated set are drawn (serializable mirror of
/// [`CanvasConfig`], without the seed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CanvasSpec {
    /// Canvas side.
    pub size: usize,
    /// Smallest item scale.
    pub scale_min: f32,
    /// Largest item scale.
    pub scale_max: f32,
    /// Gaussian noise (fraction of white).
    pub noise: f32,
    /// Fragments of other items per canvas.
    pub clutter: usize,
}

impl Default for CanvasSpec {
    fn default() -> Self {
        let c = CanvasConfig::default();
        Self {
            size: c.size,
            scale_min: c.scale.0,
            scale_max: c.scale.1,
            noise: c.noise,
            clutter: c.clutter,
        }
    }
}

impl CanvasSpec {
    /// The generator settings with `seed`.
    pub fn with_seed(&self, seed: u64) -> CanvasConfig {
        CanvasConfig {
            size: self.size,
            scale: (self.scale_min, self.scale_max),
            noise: self.noise,
            clutter: self.clutter,
            seed,
        }
    }
}

/// Everything that shapes a localization run; saved in the run's `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalizeConfig {
    /// Backbone: any classifier of the zoo (its head is replaced by the two heads).
    pub model: String,
    /// Side of the grid the box head reads (1: the pooled features, as the lecture).
    pub box_grid: usize,
    /// Stride of the first convolution (ResNets; 1 keeps the model as it is).
    pub stem_stride: usize,
    /// Dataset the items come from (`fashion-mnist`, `mnist`).
    pub dataset: String,
    /// The generated canvases.
    pub canvas: CanvasSpec,
    /// Weights of the class and box losses.
    pub loss_weights: LossWeights,
    /// MSE or smooth L1 on the normalized box.
    pub box_loss: BoxLoss,
    /// How to train (weight decay kept off biases and batch-norm parameters by default;
    /// the best epoch is the one of lowest validation loss unless a monitor is set).
    #[serde(flatten)]
    pub settings: Settings,
}

impl LocalizeConfig {
    /// Defaults for `model`: ResNet-style SGD with Nesterov momentum and a one-cycle
    /// schedule, the lecture's 0.8/0.2 loss weights, a 4×4 box grid, flips.
    pub fn new(model: &str) -> Self {
        Self {
            model: model.to_string(),
            box_grid: 4,
            stem_stride: 1,
            dataset: "fashion-mnist".into(),
            canvas: CanvasSpec::default(),
            loss_weights: LossWeights(vec![0.8, 0.2]),
            box_loss: BoxLoss::Mse,
            settings: Settings {
                epochs: 5,
                batch_size: 64,
                lr: 0.1,
                lr_schedule: LrSchedule::OneCycle {
                    pct: 0.3,
                    div: 25.0,
                    final_div: 1e4,
                },
                weight_decay: 5e-4,
                no_decay_bias_norm: true,
                ..Settings::default()
            },
        }
    }

    /// Checks the settings before anything is written.
    ///
    /// # Errors
    /// A one-line description of the first bad setting.
    pub fn validate(&self) -> Result<(), TrainError> {
        if self.loss_weights.0.len() != 2 {
            return Err(TrainError::setting(
                "loss_weights",
                format!(
                    "{}: a localizer has two outputs (class, box); give two weights, e.g. 0.8,0.2",
                    self.loss_weights
                ),
            ));
        }
        self.settings.validate()?;
        self.settings.check_val_size()?;
        if self.box_grid == 0 {
            return Err(TrainError::setting("box_grid", "must be at least 1".into()));
        }
        self.canvas
            .with_seed(0)
            .validate(28)
            .map_err(|e| TrainError::Config(format!("the canvases (size, scale): {e}")))?;
        Ok(())
    }
}

/// What a localization run folder records besides the weights.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocalizeInfo {
    /// Always `localize`: tells `konv eval`/`predict` which task the run is.
    pub task: String,
    /// The settings.
    pub config: LocalizeConfig,
    /// Class names, by index.
    pub class_names: Vec<String>,
    /// Input standardization (from the training canvases).
    pub normalize: Normalize,
    /// `[channels, height, width]` of the input.
    pub input: [usize; 3],
}

/// The three generated sets of a run.
#[derive(Debug, Clone)]
pub struct LocalizeData {
    /// Canvases of the training items.
    pub train: LocalizationSet,
    /// Canvases of the held-out training items.
    pub val: LocalizationSet,
    /// Canvases of the test items (never seen in training).
    pub test: LocalizationSet,
    /// Standardization of the training pixels.
    pub normalize: Normalize,
}

impl LocalizeData {
    /// Generates the sets from `dataset` as `config` says: validation items drawn from the
    /// training split, the test set from the test split, each with its own seed.
    ///
    /// # Errors
    /// When the canvas settings do not fit or too few items remain for training.
    pub fn generate(dataset: &Dataset, config: &LocalizeConfig) -> Result<Self, TrainError> {
        let (train_items, val_items) = split_items(
            dataset,
            config.settings.limit,
            config.settings.val_size,
            config.settings.seed,
        )?;
        let make = |set: &ImageSet, offset: u64| {
            LocalizationSet::generate(set, &config.canvas.with_seed(config.settings.seed + offset))
                .map_err(TrainError::Config)
        };
        let train = make(&train_items, 0)?;
        let val = make(&val_items, 1)?;
        let test = Self::test_set(dataset, config)?;
        let normalize = pixel_stats(&train.pixels);
        Ok(Self {
            train,
            val,
            test,
            normalize,
        })
    }

    /// The test canvases alone (what [`LocalizeData::generate`] makes of the test items),
    /// for evaluating a finished run without drawing its training canvases again.
    ///
    /// # Errors
    /// When the canvas settings do not fit.
    pub fn test_set(
        dataset: &Dataset,
        config: &LocalizeConfig,
    ) -> Result<LocalizationSet, TrainError> {
        LocalizationSet::generate(
            &dataset.test,
            &config.canvas.with_seed(config.settings.seed + 2),
        )
        .map_err(TrainError::Config)
    }
}

/// The training items a generated set is drawn from (the first `limit`, when given), split
/// into training and validation items (`val_size` of them, chosen with `seed`).
///
/// # Errors
/// When the validation items would leave none for training.
pub fn split_items(
    dataset: &Dataset,
    limit: Option<usize>,
    val_size: usize,
    seed: u64,
) -> Result<(ImageSet, ImageSet), TrainError> {
    let items: ImageSet = match limit {
        Some(n) => dataset.train.take(n),
        None => dataset.train.clone(),
    };
    if val_size >= items.len() {
        return Err(TrainError::setting(
            "val_size",
            format!(
                "{val_size} leaves no training items (there are {})",
                items.len()
            ),
        ));
    }
    Ok(items.split_validation(val_size, seed))
}

/// Mean and standard deviation of 8-bit pixels, in [0, 1] units.
pub fn pixel_stats(pixels: &[u8]) -> Normalize {
    let n = pixels.len().max(1) as f64;
    let mean = pixels.iter().map(|&p| f64::from(p)).sum::<f64>() / n / 255.0;
    let var = pixels
        .iter()
        .map(|&p| (f64::from(p) / 255.0 - mean).powi(2))
        .sum::<f64>()
        / n;
    Normalize::new(mean as f32, var.sqrt().max(1e-6) as f32)
}

/// `[x0, y0, x1, y1]` in pixels → `(cx, cy, w, h) / size`.
pub fn encode_box(b: [f32; 4], size: [usize; 2]) -> [f32; 4] {
    let (h, w) = (size[0] as f32, size[1] as f32);
    [
        (b[0] + b[2]) / 2.0 / w,
        (b[1] + b[3]) / 2.0 / h,
        (b[2] - b[0]) / w,
        (b[3] - b[1]) / h,
    ]
}

/// The inverse of [`encode_box`], clipped to the image.
pub fn decode_box(e: [f32; 4], size: [usize; 2]) -> [f32; 4] {
    let (h, w) = (size[0] as f32, size[1] as f32);
    let (cx, cy, bw, bh) = (e[0] * w, e[1] * h, e[2].max(0.0) * w, e[3].max(0.0) * h);
    [
        (cx - bw / 2.0).clamp(0.0, w),
        (cy - bh / 2.0).clamp(0.0, h),
        (cx + bw / 2.0).clamp(0.0, w),
        (cy + bh / 2.0).clamp(0.0, h),
    ]
}

/// Builds the localizer `config` describes.
pub fn build_localizer(
    config: &LocalizeConfig,
    num_classes: usize,
    device: &Device,
) -> Result<Localizer, TrainError> {
    let mut backbone = konv_models::build_for(&config.model, 1, 1, device)?;
    if config.stem_stride > 1 {
        backbone = backbone.with_stem_stride(config.stem_stride)?;
    }
    Ok(Localizer::with_box_grid(
        backbone,
        num_classes,
        config.box_grid,
        device,
    ))
}

/// One batch as tensors: standardized images, classes, encoded boxes.
fn batch(
    set: &LocalizationSet,
    indices: &[usize],
    normalize: Normalize,
    augment: Option<(&Pipeline, u64)>,
    device: &Device,
) -> (Tensor<4>, Tensor<1, Int>, Tensor<2>) {
    let [h, w] = set.size;
    let mut pixels = Vec::with_capacity(indices.len() * h * w);
    let mut boxes = Vec::with_capacity(indices.len() * 4);
    for &i in indices {
        let mut sample = Sample {
            image: Image::from_u8(set.image(i), h, w),
            boxes: vec![set.boxes[i]],
            mask: None,
        };
        if let Some((pipeline, seed)) = augment {
            pipeline.apply_sample(&mut sample, seed, i);
        }
        pixels.extend(sample.image.pixels.iter().map(|&v| normalize.apply_unit(v)));
        boxes.extend(encode_box(sample.boxes[0], [h, w]));
    }
    let n = indices.len();
    let labels: Vec<i64> = indices.iter().map(|&i| i64::from(set.labels[i])).collect();
    (
        Tensor::from_data(TensorData::new(pixels, [n, 1, h, w]), device),
        Tensor::from_data(TensorData::new(labels, [n]), device),
        Tensor::from_data(TensorData::new(boxes, [n, 4]), device),
    )
}

/// Accuracy, mean IoU and losses of a localizer on a set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalizeEval {
    /// Images.
    pub count: usize,
    /// Share of images whose class is right.
    pub accuracy: f64,
    /// Mean IoU of predicted and true boxes.
    pub mean_iou: f64,
    /// Share of images with IoU ≥ 0.5.
    pub iou50: f64,
    /// Mean weighted loss.
    pub loss: f64,
    /// Per-class accuracy.
    pub per_class_accuracy: Vec<f64>,
}

/// Evaluates `model` (inference mode) on `set`.
///
/// # Errors
/// Outputs whose shapes do not fit the targets ([`TrainError::Config`]) or a device that
/// failed ([`TrainError::Device`]): no figure over part of the set.
pub fn evaluate_localizer(
    model: &Localizer,
    set: &LocalizationSet,
    normalize: Normalize,
    weights: &LossWeights,
    box_loss: BoxLoss,
    batch_size: usize,
    num_classes: usize,
) -> Result<LocalizeEval, TrainError> {
    let device = crate::model::device_of(&model.backbone);
    let (mut correct, mut iou_sum, mut hits, mut loss_sum) = (0usize, 0.0f64, 0usize, 0.0f64);
    let mut class_total = vec![0usize; num_classes];
    let mut class_right = vec![0usize; num_classes];
    let indices: Vec<usize> = (0..set.len()).collect();
    for chunk in indices.chunks(batch_size.max(1)) {
        let (x, y, b) = batch(set, chunk, normalize, None, &device);
        let out = model.forward(x);
        let losses = localization_losses(
            out.logits.clone(),
            y,
            out.boxes.clone(),
            b,
            weights,
            box_loss,
        )
        .map_err(TrainError::Config)?;
        loss_sum += crate::engine::read_loss(losses.total)? * chunk.len() as f64;
        let predicted: Vec<i64> = crate::engine::read_values(out.logits.argmax(1))?;
        let boxes: Vec<f32> = crate::engine::read_values(out.boxes)?;
        for (k, &i) in chunk.iter().enumerate() {
            let label = usize::from(set.labels[i]);
            let right = predicted.get(k).is_some_and(|&p| p as usize == label);
            correct += usize::from(right);
            if label < num_classes {
                class_total[label] += 1;
                class_right[label] += usize::from(right);
            }
            let e = [0, 1, 2, 3].map(|j| boxes.get(k * 4 + j).copied().unwrap_or(0.0));
            let iou = f64::from(box_iou(decode_box(e, set.size), set.boxes[i]));
            iou_sum += iou;
            hits += usize::from(iou >= 0.5);
        }
    }
    let n = set.len().max(1) as f64;
    Ok(LocalizeEval {
        count: set.len(),
        accuracy: correct as f64 / n,
        mean_iou: iou_sum / n,
        iou50: hits as f64 / n,
        loss: loss_sum / n,
        per_class_accuracy: class_total
            .iter()
            .zip(&class_right)
            .map(|(&t, &r)| if t == 0 { 0.0 } else { r as f64 / t as f64 })
            .collect(),
    })
}

/// One epoch of a localization run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalizeEpoch {
    /// The classifier-style metrics (loss, accuracy, lr, speed).
    pub metrics: EpochMetrics,
    /// Mean IoU on the training batches (the model in training mode).
    pub train_iou: f64,
    /// Mean IoU on the validation set.
    pub val_iou: f64,
}

/// The end of a localization run.
#[derive(Debug, Clone)]
pub struct LocalizeOutcome {
    /// The weights of the best validation epoch (lowest validation loss).
    pub model: Localizer,
    /// Every epoch.
    pub history: Vec<LocalizeEpoch>,
    /// Which epoch `model` is.
    pub best_epoch: usize,
    /// What picked the best epoch (the last epoch in a run without validation items).
    pub monitor: Monitor,
    /// On the test set.
    pub test: LocalizeEval,
}

/// Localization as an [`engine`](crate::engine) task: the weighted class + box loss,
/// class accuracy, mean IoU of the boxes as the score and as `metrics.csv` columns.
struct LocalizeTask<'a> {
    config: &'a LocalizeConfig,
    data: &'a LocalizeData,
    /// The training canvases, epoch by epoch.
    epochs: PlannedEpochs<'a, LocalizeBatch>,
    classes: usize,
}

/// A localization batch: standardized images, classes, encoded boxes.
type LocalizeBatch = (Tensor<4>, Tensor<1, Int>, Tensor<2>);

impl Step<Localizer> for LocalizeTask<'_> {
    type Batch = LocalizeBatch;

    fn batch_len(&self, batch: &LocalizeBatch) -> usize {
        batch.0.dims()[0]
    }

    fn loss(
        &self,
        model: &Localizer,
        (x, y, b): LocalizeBatch,
        _frozen: bool,
    ) -> Result<StepLoss, TrainError> {
        let out = model.forward(x);
        let targets = b.clone();
        let losses = localization_losses(
            out.logits.clone(),
            y.clone(),
            out.boxes.clone(),
            b,
            &self.config.loss_weights,
            self.config.box_loss,
        )
        .map_err(TrainError::Config)?;
        let right = crate::train::count_correct(out.logits, y.clone())?;
        let iou = batch_iou(out.boxes, targets, self.data.train.size)?;
        Ok(StepLoss {
            loss: losses.total,
            right,
            counted: y.dims()[0],
            sums: vec![iou],
        })
    }

    fn split(&self, (x, y, b): &LocalizeBatch, start: usize, len: usize) -> LocalizeBatch {
        (
            x.clone().narrow(0, start, len),
            y.clone().narrow(0, start, len),
            b.clone().narrow(0, start, len),
        )
    }
}

impl Task<Localizer> for LocalizeTask<'_> {
    fn train_len(&self) -> usize {
        self.epochs.examples()
    }

    fn start_epoch(
        &mut self,
        seed: u64,
        epoch: usize,
        epoch_seed: u64,
        device: &Device,
    ) -> Result<(), TrainError> {
        self.epochs.start(seed, epoch, epoch_seed, device);
        Ok(())
    }

    fn batches(&self) -> Box<dyn Iterator<Item = Result<Self::Batch, TrainError>> + '_> {
        self.epochs.batches()
    }

    fn input_side(&self) -> usize {
        self.epochs.side()
    }

    /// The boxes are coded relative to the image size, so they hold for any size.
    fn resize(&self, (x, y, b): LocalizeBatch, side: usize) -> Result<LocalizeBatch, String> {
        Ok((crate::progressive::resize_batch(x, side), y, b))
    }

    fn freeze(&self, model: Localizer) -> Result<Localizer, String> {
        Ok(model.freeze_backbone())
    }

    fn validate(&self, model: &Localizer) -> Result<Validation, TrainError> {
        let settings = &self.config.settings;
        let val = evaluate_localizer(
            model,
            &self.data.val,
            self.data.normalize,
            &self.config.loss_weights,
            self.config.box_loss,
            settings.batch_size,
            self.classes,
        )?;
        Ok(Validation {
            loss: val.loss,
            accuracy: val.accuracy,
            score: val.mean_iou,
            columns: vec![("val_iou", val.mean_iou)],
        })
    }

    fn train_columns(&self) -> &'static [&'static str] {
        &["train_iou"]
    }

    fn score_label(&self) -> &'static str {
        "IoU"
    }

    fn default_monitor(&self) -> Monitor {
        Monitor::ValLoss
    }

    fn has_validation(&self) -> bool {
        !self.data.val.is_empty()
    }
}

/// Trains a localizer on `data`, writing `config.json`, `metrics.csv`, `best.bpk` and each
/// epoch's checkpoint into `run` (when given) and reporting progress to `observer`.
///
/// # Errors
/// Bad settings, a model that cannot take the canvases, a loss that diverges, or a run
/// folder that cannot be written.
pub fn train_localizer(
    config: &LocalizeConfig,
    class_names: &[String],
    data: &LocalizeData,
    device: &Device,
    run: Option<&RunDir>,
    observer: &mut dyn Observer,
) -> Result<LocalizeOutcome, TrainError> {
    localize_from(config, class_names, data, device, run, false, observer)
}

/// [`train_localizer`] continuing the run in `run` from its last finished epoch (the CLI's
/// `--resume`), with the run's own settings and `data` generated from them again.
///
/// # Errors
/// As [`train_localizer`]; a run that is not a localization run, has no finished epoch or
/// is done; data that differs from the run's.
pub fn resume_localizer(
    data: &LocalizeData,
    device: &Device,
    run: &RunDir,
    observer: &mut dyn Observer,
) -> Result<LocalizeOutcome, TrainError> {
    let info = run.read_resumable(
        "localize",
        ("localization", "canvases"),
        |info: &LocalizeInfo| info.normalize == data.normalize,
    )?;
    localize_from(
        &info.config,
        &info.class_names,
        data,
        device,
        Some(run),
        true,
        observer,
    )
}

fn localize_from(
    config: &LocalizeConfig,
    class_names: &[String],
    data: &LocalizeData,
    device: &Device,
    run: Option<&RunDir>,
    resuming: bool,
    observer: &mut dyn Observer,
) -> Result<LocalizeOutcome, TrainError> {
    config.validate()?;
    let settings = &config.settings;
    let num_classes = class_names.len();
    let train_device = crate::engine::training_device(device);
    train_device.seed(settings.seed);
    let mut model = build_localizer(config, num_classes, &train_device)?;
    let [h, w] = data.train.size;
    // The box head starts at the average training box (as detection heads start from
    // priors), instead of a zero-sized box that overlaps nothing, with zero weights: a
    // randomly initialized head on 1,024 grid features starts with boxes far outside
    // [0, 1] and an MSE whose gradients swamp the class loss.
    let box_weight = model.box_head.weight.dims();
    model.box_head.weight =
        burn::module::Param::from_tensor(Tensor::zeros(box_weight, &train_device));
    let mut mean_box = [0.0f32; 4];
    for b in &data.train.boxes {
        for (m, v) in mean_box.iter_mut().zip(encode_box(*b, [h, w])) {
            *m += v / data.train.len().max(1) as f32;
        }
    }
    model.box_head.bias = Some(burn::module::Param::from_tensor(Tensor::from_data(
        TensorData::new(mean_box.to_vec(), [4]),
        &train_device,
    )));
    let mut sizes = vec![[h, w]];
    if let Some(p) = &settings.progressive_resize {
        sizes.push(p.smallest([h, w]));
    }
    for [h, w] in sizes {
        konv_models::summary::checked(&model.backbone, &[1, h, w]).map_err(|e| {
            TrainError::Config(format!(
                "model `{}` cannot take {h}×{w} canvases: {e}",
                config.model
            ))
        })?;
    }
    let state = crate::engine::start_run(run, resuming, || LocalizeInfo {
        task: "localize".into(),
        config: config.clone(),
        class_names: class_names.to_vec(),
        normalize: data.normalize,
        input: [1, h, w],
    })?;
    let mut task = LocalizeTask {
        config,
        data,
        epochs: PlannedEpochs::new(
            data.train.len(),
            data.train.size[0].min(data.train.size[1]),
            config.settings.augment_schedule(),
            config.settings.batch_size,
            |indices, augment, device| batch(&data.train, indices, data.normalize, augment, device),
        ),
        classes: num_classes,
    };
    let fitted = crate::engine::fit(
        settings,
        model,
        &mut task,
        &train_device,
        run,
        state,
        observer,
    )?;
    let test = evaluate_localizer(
        &fitted.best,
        &data.test,
        data.normalize,
        &config.loss_weights,
        config.box_loss,
        settings.batch_size,
        num_classes,
    )?;
    Ok(LocalizeOutcome {
        model: fitted.best,
        history: fitted
            .history
            .into_iter()
            .map(|e| LocalizeEpoch {
                train_iou: e.get("train_iou").unwrap_or(f64::NAN),
                val_iou: e.get("val_iou").unwrap_or(f64::NAN),
                metrics: e.metrics,
            })
            .collect(),
        best_epoch: fitted.best_epoch,
        monitor: fitted.monitor,
        test,
    })
}

/// Sum over a batch of the IoU of predicted (encoded) and target (encoded) boxes.
fn batch_iou(predicted: Tensor<2>, target: Tensor<2>, size: [usize; 2]) -> Result<f64, TrainError> {
    let p = crate::engine::read_values::<f32, 2, _>(predicted)?;
    let t = crate::engine::read_values::<f32, 2, _>(target)?;
    Ok(p.chunks(4)
        .zip(t.chunks(4))
        .map(|(p, t)| {
            let p = decode_box([p[0], p[1], p[2], p[3]], size);
            let t = decode_box([t[0], t[1], t[2], t[3]], size);
            f64::from(box_iou(p, t))
        })
        .sum())
}

/// Saves a localizer's weights (burnpack) as `name` in `run`, atomically.
pub fn save_localizer(run: &RunDir, name: &str, model: &Localizer) -> Result<(), TrainError> {
    run.save_module(name, model)
}

/// Reads a localization run's `config.json`; `None` when the run is another task.
pub fn read_info(run: &RunDir) -> Result<Option<LocalizeInfo>, TrainError> {
    run.read_task_config("localize")
}

/// Builds a localization run's model and loads its best weights.
pub fn load_localizer(
    run: &RunDir,
    info: &LocalizeInfo,
    device: &Device,
) -> Result<Localizer, TrainError> {
    let model = build_localizer(&info.config, info.class_names.len(), device)?;
    crate::run::load_module(model, &run.path.join(BEST))
}

/// A localizer's answer for one image.
#[derive(Debug, Clone, PartialEq)]
pub struct Located {
    /// Class index.
    pub class: usize,
    /// Its softmax probability.
    pub probability: f32,
    /// `[x0, y0, x1, y1]` in the input's pixels.
    pub bbox: [f32; 4],
}

/// Runs `model` on one image file: grayscale, resized to the run's input; the box is given
/// in the original image's pixels.
pub fn locate_file(
    model: &Localizer,
    info: &LocalizeInfo,
    path: &Path,
    invert: bool,
) -> Result<(Located, image::DynamicImage), TrainError> {
    let [_, h, w] = info.input;
    let device = crate::model::device_of(&model.backbone);
    let (img, x) = crate::predict::load_input(path, [h, w], invert, info.normalize, &device)?;
    let out = model.forward(x);
    let probs = crate::engine::read_values::<f32, 2, _>(softmax(out.logits, 1))?;
    let (class, probability) = probs
        .iter()
        .copied()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or((0, 0.0));
    let e = crate::engine::read_values::<f32, 2, _>(out.boxes)?;
    let b = decode_box([e[0], e[1], e[2], e[3]], [h, w]);
    let (sx, sy) = (
        img.width() as f32 / w as f32,
        img.height() as f32 / h as f32,
    );
    Ok((
        Located {
            class,
            probability,
            bbox: [b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy],
        },
        img,
    ))
}

/// Draws `bbox` (2-pixel frame) and a label strip above it onto `img`.
pub fn draw_box(img: &mut RgbImage, bbox: [f32; 4], label: &str, color: Rgb<u8>) {
    let (w, h) = (img.width() as i64, img.height() as i64);
    let [x0, y0, x1, y1] = bbox.map(|v| v.round() as i64);
    let mut put = |x: i64, y: i64| {
        if (0..w).contains(&x) && (0..h).contains(&y) {
            img.put_pixel(x as u32, y as u32, color);
        }
    };
    for t in 0..2 {
        for x in x0..x1 {
            put(x, y0 + t);
            put(x, y1 - 1 - t);
        }
        for y in y0..y1 {
            put(x0 + t, y);
            put(x1 - 1 - t, y);
        }
    }
    crate::plot::draw_label(img, label, x0.max(0) as u32, (y0 - 14).max(0) as u32, color);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxes_encode_and_decode() {
        let b = [8.0, 16.0, 40.0, 32.0];
        let e = encode_box(b, [64, 64]);
        assert_eq!(e, [0.375, 0.375, 0.5, 0.25]);
        assert_eq!(decode_box(e, [64, 64]), b);
        // Decoding clips to the image and never inverts a box.
        assert_eq!(
            decode_box([0.0, 1.0, 0.5, -0.2], [64, 64]),
            [0.0, 64.0, 16.0, 64.0]
        );
    }

    #[test]
    fn a_tiny_localizer_learns_and_reports_accuracy_and_iou() {
        let dataset = konv_datasets::mnist::embedded_fashion_mnist();
        let mut config = LocalizeConfig::new("resnet20");
        config.canvas.size = 40;
        config.canvas.scale_max = 1.4;
        config.stem_stride = 2;
        config.box_grid = 2;
        config.settings.epochs = 2;
        config.settings.batch_size = 16;
        config.settings.limit = Some(480);
        config.settings.val_size = 32;
        config.settings.lr = 0.02;
        config.settings.augment = "flip".parse().unwrap();
        let mut data = LocalizeData::generate(&dataset, &config).unwrap();
        data.test = data.test.select(&(0..48).collect::<Vec<_>>());
        assert_eq!((data.train.len(), data.val.len()), (448, 32));
        let names: Vec<String> = dataset
            .class_names()
            .iter()
            .map(|s| s.to_string())
            .collect();
        let dir = std::env::temp_dir().join(format!("konv-loc-run-{}", std::process::id()));
        let run = RunDir::create(&dir).unwrap();
        let out = train_localizer(
            &config,
            &names,
            &data,
            &Device::flex(),
            Some(&run),
            &mut crate::observer::Silent,
        )
        .unwrap();
        assert_eq!(out.history.len(), 2);
        assert_eq!(out.test.count, 48);
        // Starting from the average box, the boxes overlap from the first epoch on.
        assert!((0.1..=1.0).contains(&out.test.mean_iou), "{:?}", out.test);
        // The saved run reloads to the same evaluation.
        let info = read_info(&run).unwrap().expect("a localization run");
        assert_eq!(info.config, config);
        let model = load_localizer(&run, &info, &Device::flex()).unwrap();
        let again = evaluate_localizer(
            &model,
            &data.test,
            info.normalize,
            &config.loss_weights,
            config.box_loss,
            16,
            10,
        )
        .unwrap();
        assert_eq!((again.accuracy, again.count), (out.test.accuracy, 48));
        assert!((again.mean_iou - out.test.mean_iou).abs() < 1e-6);
        let csv = std::fs::read_to_string(dir.join(crate::run::METRICS)).unwrap();
        assert!(csv.lines().next().unwrap().ends_with("train_iou,val_iou"));
        assert_eq!(csv.lines().count(), 3);
        let mut bad = config.clone();
        bad.loss_weights = LossWeights(vec![1.0]);
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("two weights")
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
