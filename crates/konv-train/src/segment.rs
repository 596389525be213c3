//! Semantic segmentation with FCN: training, evaluation and prediction of an [`Fcn`] on a
//! [`SegmentationSet`] (a class for every pixel, background included).
//!
//! The loss is the per-pixel cross-entropy averaged over the labelled pixels (pixels
//! marked [`IGNORE`] count for nothing, as PyTorch's `ignore_index=255`); the metrics are
//! pixel accuracy and the mean IoU over the classes that occur (the FCN paper's figures).

use std::path::Path;

use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use image::{Rgb, RgbImage};
use konv_datasets::segmentation::{IGNORE, SceneConfig, SegmentationSet};
use konv_datasets::{Dataset, ImageSet};
use konv_models::fcn::{BackboneConfig, Fcn, FcnConfig, FcnVariant};
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::augment::{Image, Mask, Pipeline, Sample};
use crate::data::Normalize;
use crate::engine::{Monitor, PlannedEpochs, Settings, Step, StepLoss, Task, Validation};
use crate::localize::{pixel_stats, split_items};
use crate::metrics::SegmentationMetrics;
use crate::observer::Observer;
use crate::record::EpochMetrics;
use crate::run::{BEST, RunDir};
use crate::schedule::LrSchedule;

/// How the scenes of a generated set are drawn (serializable [`SceneConfig`] without seed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SceneSpec {
    /// Canvas side.
    pub size: usize,
    /// Fewest items per canvas.
    pub items_min: usize,
    /// Most items per canvas.
    pub items_max: usize,
    /// Smallest item scale.
    pub scale_min: f32,
    /// Largest item scale.
    pub scale_max: f32,
}

impl Default for SceneSpec {
    fn default() -> Self {
        let c = SceneConfig::default();
        Self {
            size: c.size,
            items_min: c.items.0,
            items_max: c.items.1,
            scale_min: c.scale.0,
            scale_max: c.scale.1,
        }
    }
}

impl SceneSpec {
    /// The generator settings with `seed`.
    pub fn with_seed(&self, seed: u64) -> SceneConfig {
        SceneConfig {
            size: self.size,
            items: (self.items_min, self.items_max),
            scale: (self.scale_min, self.scale_max),
            max_overlap: None,
            seed,
        }
    }
}

/// Everything that shapes a segmentation run; saved in the run's `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentConfig {
    /// `fcn32s`, `fcn16s` or `fcn8s`.
    pub variant: String,
    /// A ResNet of the zoo (`resnet20`, `resnet18`, …).
    pub backbone: String,
    /// Stride of the backbone's stem (small-image ResNets): 2 makes ResNet-20's stages
    /// 1/2, 1/4, 1/8 of the input, so that FCN-32s, -16s and -8s upsample ×8, ×4, ×2.
    pub stem_stride: usize,
    /// Dataset the items come from.
    pub dataset: String,
    /// The generated scenes.
    pub scene: SceneSpec,
    /// How to train (weight decay kept off biases and batch-norm parameters by default).
    #[serde(flatten)]
    pub settings: Settings,
}

impl SegmentConfig {
    /// Defaults: FCN `variant` over `backbone`, SGD Nesterov with one-cycle.
    pub fn new(variant: &str, backbone: &str) -> Self {
        Self {
            variant: variant.to_string(),
            backbone: backbone.to_string(),
            stem_stride: 1,
            dataset: "fashion-mnist".into(),
            scene: SceneSpec::default(),
            settings: Settings {
                epochs: 5,
                batch_size: 32,
                lr: 0.05,
                lr_schedule: LrSchedule::OneCycle {
                    pct: 0.3,
                    div: 25.0,
                    final_div: 1e4,
                },
                weight_decay: 1e-4,
                no_decay_bias_norm: true,
                val_size: 2000,
                ..Settings::default()
            },
        }
    }

    fn fcn_variant(&self) -> Result<FcnVariant, TrainError> {
        match self.variant.as_str() {
            "fcn32s" => Ok(FcnVariant::Fcn32s),
            "fcn16s" => Ok(FcnVariant::Fcn16s),
            "fcn8s" => Ok(FcnVariant::Fcn8s),
            other => Err(TrainError::setting(
                "model",
                format!(
                    "{other}: segmentation models are fcn32s, fcn16s and fcn8s (over a ResNet backbone)"
                ),
            )),
        }
    }

    /// Checks the settings before anything is written.
    ///
    /// # Errors
    /// A one-line description of the first bad setting.
    pub fn validate(&self) -> Result<(), TrainError> {
        self.fcn_variant()?;
        if konv_models::registry::resnet_config(&self.backbone, 1, 1).is_none() {
            return Err(TrainError::setting(
                "backbone",
                format!(
                    "{}: FCN here builds on the ResNets (resnet20, resnet32, …, resnet18, resnet50, …)",
                    self.backbone
                ),
            ));
        }
        self.settings.validate()?;
        self.settings.check_val_size()?;
        self.scene
            .with_seed(0)
            .validate(28)
            .map_err(|e| TrainError::Config(format!("the scenes (canvas, scale, items): {e}")))
    }
}

/// What a segmentation run folder records besides the weights.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SegmentInfo {
    /// Always `segment`.
    pub task: String,
    /// The settings.
    pub config: SegmentConfig,
    /// Label names: `background`, then the dataset's classes.
    pub class_names: Vec<String>,
    /// Input standardization (from the training scenes).
    pub normalize: Normalize,
    /// `[channels, height, width]` of the input.
    pub input: [usize; 3],
}

/// The generated sets of a run.
#[derive(Debug, Clone)]
pub struct SegmentData {
    /// Scenes of the training items.
    pub train: SegmentationSet,
    /// Scenes of the held-out training items.
    pub val: SegmentationSet,
    /// Scenes of the test items.
    pub test: SegmentationSet,
    /// Standardization of the training pixels.
    pub normalize: Normalize,
}

impl SegmentData {
    /// Generates the three sets from `dataset`.
    ///
    /// # Errors
    /// Settings that do not fit, or no training items left.
    pub fn generate(dataset: &Dataset, config: &SegmentConfig) -> Result<Self, TrainError> {
        let (train_items, val_items) = split_items(
            dataset,
            config.settings.limit,
            config.settings.val_size,
            config.settings.seed,
        )?;
        let make = |set: &ImageSet, offset: u64| {
            SegmentationSet::generate(set, &config.scene.with_seed(config.settings.seed + offset))
                .map_err(TrainError::Config)
        };
        let train = make(&train_items, 0)?;
        let normalize = pixel_stats(&train.pixels);
        Ok(Self {
            val: make(&val_items, 1)?,
            test: Self::test_set(dataset, config)?,
            train,
            normalize,
        })
    }

    /// The test scenes alone (what [`SegmentData::generate`] makes of the test items), for
    /// evaluating a finished run without drawing its training scenes again.
    ///
    /// # Errors
    /// When the scene settings do not fit.
    pub fn test_set(
        dataset: &Dataset,
        config: &SegmentConfig,
    ) -> Result<SegmentationSet, TrainError> {
        SegmentationSet::generate(
            &dataset.test,
            &config.scene.with_seed(config.settings.seed + 2),
        )
        .map_err(TrainError::Config)
    }
}

/// Builds the FCN `config` describes for `classes` labels (background included).
pub fn build_fcn(
    config: &SegmentConfig,
    classes: usize,
    device: &Device,
) -> Result<Fcn, TrainError> {
    let resnet = konv_models::registry::resnet_config(&config.backbone, 1, 1)
        .ok_or_else(|| {
            TrainError::setting("backbone", format!("{}: not a ResNet", config.backbone))
        })?
        .with_stem_stride(config.stem_stride.max(1));
    Ok(
        FcnConfig::new(config.fcn_variant()?, BackboneConfig::ResNet(resnet))
            .with_num_classes(classes)
            .init(device),
    )
}

fn batch(
    set: &SegmentationSet,
    indices: &[usize],
    normalize: Normalize,
    augment: Option<(&Pipeline, u64)>,
    device: &Device,
) -> (Tensor<4>, Tensor<3, Int>) {
    let [h, w] = set.size;
    let mut pixels = Vec::with_capacity(indices.len() * h * w);
    let mut labels = Vec::with_capacity(indices.len() * h * w);
    for &i in indices {
        let mut sample = Sample {
            image: Image::from_u8(set.image(i), h, w),
            boxes: Vec::new(),
            mask: Some(Mask {
                height: h,
                width: w,
                labels: set.mask(i).to_vec(),
                fill: 0,
            }),
        };
        if let Some((pipeline, seed)) = augment {
            pipeline.apply_sample(&mut sample, seed, i);
        }
        pixels.extend(sample.image.pixels.iter().map(|&v| normalize.apply_unit(v)));
        let mask = sample.mask.map(|m| m.labels).unwrap_or_default();
        labels.extend(mask.iter().map(|&l| i64::from(l)));
    }
    let n = indices.len();
    (
        Tensor::from_data(TensorData::new(pixels, [n, 1, h, w]), device),
        Tensor::from_data(TensorData::new(labels, [n, h, w]), device),
    )
}

/// Per-pixel cross-entropy of `logits` `[batch, classes, h, w]` against `labels`
/// `[batch, h, w]`, averaged over the pixels not labelled [`IGNORE`].
pub fn pixel_cross_entropy(logits: Tensor<4>, labels: Tensor<3, Int>) -> Tensor<1> {
    let [n, c, h, w] = logits.dims();
    let logp = log_softmax(logits.permute([0, 2, 3, 1]).reshape([n * h * w, c]), 1);
    let labels = labels.reshape([n * h * w]);
    let valid = labels.clone().lower_elem(c as i64).float();
    let picked = logp
        .gather(1, labels.clamp(0, c as i64 - 1).unsqueeze_dim::<2>(1))
        .reshape([n * h * w]);
    let count = valid.clone().sum().clamp_min(1.0);
    (picked * valid).sum().neg() / count
}

/// Pixel accuracy, IoU per label and mean IoU of a segmenter on a set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentEval {
    /// Images.
    pub count: usize,
    /// Share of labelled pixels predicted right.
    pub pixel_accuracy: f64,
    /// Mean IoU over the labels that occur.
    pub mean_iou: f64,
    /// IoU of each label (`None`: absent from targets and predictions).
    pub class_iou: Vec<Option<f64>>,
    /// Mean per-pixel cross-entropy.
    pub loss: f64,
}

/// The label of every pixel of `logits` `[batch, classes, h, w]`: `batch × h × w` bytes.
///
/// # Errors
/// A device that failed reading the labels back ([`TrainError::Device`]).
pub fn argmax_labels(logits: Tensor<4>) -> Result<Vec<u8>, TrainError> {
    Ok(crate::engine::read_values::<i64, 4, _>(logits.argmax(1))?
        .into_iter()
        .map(|l| l as u8)
        .collect())
}

/// Evaluates `model` (inference mode) on `set`.
///
/// # Errors
/// A device that failed ([`TrainError::Device`]): no figure over part of the set.
pub fn evaluate_segmenter(
    model: &Fcn,
    set: &SegmentationSet,
    normalize: Normalize,
    batch_size: usize,
    classes: usize,
) -> Result<SegmentEval, TrainError> {
    let device = fcn_device(model);
    let mut metrics = SegmentationMetrics::new(classes, Some(IGNORE));
    let mut loss_sum = 0.0;
    let indices: Vec<usize> = (0..set.len()).collect();
    for chunk in indices.chunks(batch_size.max(1)) {
        let (x, y) = batch(set, chunk, normalize, None, &device);
        let logits = model.forward(x);
        loss_sum +=
            crate::engine::read_loss(pixel_cross_entropy(logits.clone(), y))? * chunk.len() as f64;
        let predicted: Vec<u8> = crate::engine::read_values::<i64, 4, _>(logits.argmax(1))?
            .into_iter()
            .map(|l| l as u8)
            .collect();
        let targets: Vec<u8> = chunk.iter().flat_map(|&i| set.mask(i).to_vec()).collect();
        metrics.update(&predicted, &targets);
    }
    Ok(SegmentEval {
        count: set.len(),
        pixel_accuracy: metrics.pixel_accuracy(),
        mean_iou: metrics.mean_iou(),
        class_iou: metrics.class_iou(),
        loss: loss_sum / set.len().max(1) as f64,
    })
}

fn fcn_device(model: &Fcn) -> Device {
    model.score_fr.weight.device()
}

/// One epoch of a segmentation run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentEpoch {
    /// Loss, pixel accuracy (as "accuracy"), lr and speed.
    pub metrics: EpochMetrics,
    /// Mean IoU on the validation scenes.
    pub val_iou: f64,
}

/// The end of a segmentation run.
#[derive(Debug, Clone)]
pub struct SegmentOutcome {
    /// The weights of the best validation epoch (highest mean IoU).
    pub model: Fcn,
    /// Every epoch.
    pub history: Vec<SegmentEpoch>,
    /// Which epoch `model` is.
    pub best_epoch: usize,
    /// What picked the best epoch (the last epoch in a run without validation items).
    pub monitor: Monitor,
    /// On the test scenes.
    pub test: SegmentEval,
}

/// Segmentation as an [`engine`](crate::engine) task: pixel cross-entropy, pixel accuracy,
/// mean IoU as the score.
struct SegmentTask<'a> {
    data: &'a SegmentData,
    /// The training scenes, epoch by epoch.
    epochs: PlannedEpochs<'a, (Tensor<4>, Tensor<3, Int>)>,
    classes: usize,
}

impl Step<Fcn> for SegmentTask<'_> {
    type Batch = (Tensor<4>, Tensor<3, Int>);

    fn batch_len(&self, batch: &Self::Batch) -> usize {
        batch.0.dims()[0]
    }

    fn loss(
        &self,
        model: &Fcn,
        (x, y): Self::Batch,
        _frozen: bool,
    ) -> Result<StepLoss, TrainError> {
        let logits = model.forward(x);
        let predicted = logits.clone().argmax(1).squeeze_dim::<3>(1);
        let valid = y.clone().lower_elem(self.classes as i64);
        let right = crate::engine::read_count(
            predicted
                .equal(y.clone())
                .int()
                .mul(valid.clone().int())
                .sum(),
        )?;
        let counted = crate::engine::read_count(valid.int().sum())?;
        Ok(StepLoss {
            loss: pixel_cross_entropy(logits, y),
            right,
            counted,
            sums: Vec::new(),
        })
    }

    fn split(&self, (x, y): &Self::Batch, start: usize, len: usize) -> Self::Batch {
        (
            x.clone().narrow(0, start, len),
            y.clone().narrow(0, start, len),
        )
    }
}

impl Task<Fcn> for SegmentTask<'_> {
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

    /// The scenes and their masks shrink together (the masks by nearest neighbour).
    fn resize(&self, (x, y): Self::Batch, side: usize) -> Result<Self::Batch, String> {
        Ok((
            crate::progressive::resize_batch(x, side),
            crate::progressive::resize_labels(y, side),
        ))
    }

    fn freeze(&self, mut model: Fcn) -> Result<Fcn, String> {
        model.backbone = model.backbone.freeze();
        Ok(model)
    }

    fn validate(&self, model: &Fcn) -> Result<Validation, TrainError> {
        let val = evaluate_segmenter(
            model,
            &self.data.val,
            self.data.normalize,
            self.epochs.batch_size(),
            self.classes,
        )?;
        Ok(Validation {
            loss: val.loss,
            accuracy: val.pixel_accuracy,
            score: val.mean_iou,
            columns: vec![("val_mean_iou", val.mean_iou)],
        })
    }

    fn score_label(&self) -> &'static str {
        "mIoU"
    }

    fn default_monitor(&self) -> Monitor {
        Monitor::Score
    }

    fn has_validation(&self) -> bool {
        !self.data.val.is_empty()
    }
}

/// Trains an FCN on `data`, writing `config.json`, `metrics.csv`, `best.bpk` and each
/// epoch's checkpoint into `run`.
///
/// # Errors
/// Bad settings, a diverging loss, or a run folder that cannot be written.
pub fn train_segmenter(
    config: &SegmentConfig,
    class_names: &[String],
    data: &SegmentData,
    device: &Device,
    run: Option<&RunDir>,
    observer: &mut dyn Observer,
) -> Result<SegmentOutcome, TrainError> {
    segment_from(config, class_names, data, device, run, false, observer)
}

/// [`train_segmenter`] continuing the run in `run` from its last finished epoch (the CLI's
/// `--resume`), with the run's own settings and `data` generated from them again.
///
/// # Errors
/// As [`train_segmenter`]; a run that is not a segmentation run, has no finished epoch or
/// is done; data that differs from the run's.
pub fn resume_segmenter(
    data: &SegmentData,
    device: &Device,
    run: &RunDir,
    observer: &mut dyn Observer,
) -> Result<SegmentOutcome, TrainError> {
    let info = run.read_resumable(
        "segment",
        ("segmentation", "scenes"),
        |info: &SegmentInfo| info.normalize == data.normalize,
    )?;
    segment_from(
        &info.config,
        &info.class_names,
        data,
        device,
        Some(run),
        true,
        observer,
    )
}

fn segment_from(
    config: &SegmentConfig,
    class_names: &[String],
    data: &SegmentData,
    device: &Device,
    run: Option<&RunDir>,
    resuming: bool,
    observer: &mut dyn Observer,
) -> Result<SegmentOutcome, TrainError> {
    config.validate()?;
    let settings = &config.settings;
    let classes = class_names.len();
    let train_device = crate::engine::training_device(device);
    train_device.seed(settings.seed);
    let model = build_fcn(config, classes, &train_device)?;
    let [h, w] = data.train.size;
    let mut task = SegmentTask {
        data,
        epochs: PlannedEpochs::new(
            data.train.len(),
            h.min(w),
            settings.augment_schedule(),
            settings.batch_size,
            |indices, augment, device| batch(&data.train, indices, data.normalize, augment, device),
        ),
        classes,
    };
    let state = crate::engine::start_run(run, resuming, || SegmentInfo {
        task: "segment".into(),
        config: config.clone(),
        class_names: class_names.to_vec(),
        normalize: data.normalize,
        input: [1, h, w],
    })?;
    let fitted = crate::engine::fit(
        settings,
        model,
        &mut task,
        &train_device,
        run,
        state,
        observer,
    )?;
    let test = evaluate_segmenter(
        &fitted.best,
        &data.test,
        data.normalize,
        settings.batch_size,
        classes,
    )?;
    Ok(SegmentOutcome {
        history: fitted
            .history
            .into_iter()
            .map(|e| SegmentEpoch {
                val_iou: e.get("val_mean_iou").unwrap_or(f64::NAN),
                metrics: e.metrics,
            })
            .collect(),
        model: fitted.best,
        best_epoch: fitted.best_epoch,
        monitor: fitted.monitor,
        test,
    })
}

/// Saves an FCN's weights as `name` in `run`, atomically.
pub fn save_fcn(run: &RunDir, name: &str, model: &Fcn) -> Result<(), TrainError> {
    run.save_module(name, model)
}

/// Reads a segmentation run's `config.json`; `None` when the run is another task.
pub fn read_info(run: &RunDir) -> Result<Option<SegmentInfo>, TrainError> {
    run.read_task_config("segment")
}

/// Builds a segmentation run's FCN and loads its best weights.
pub fn load_fcn(run: &RunDir, info: &SegmentInfo, device: &Device) -> Result<Fcn, TrainError> {
    let model = build_fcn(&info.config, info.class_names.len(), device)?;
    crate::run::load_module(model, &run.path.join(BEST))
}

/// A distinct colour per label (background black), PASCAL VOC's bit-interleaved palette.
pub fn palette(label: u8) -> Rgb<u8> {
    let (mut r, mut g, mut b) = (0u8, 0u8, 0u8);
    let mut c = label;
    for shift in (0..8).rev() {
        r |= (c & 1) << shift;
        g |= ((c >> 1) & 1) << shift;
        b |= ((c >> 2) & 1) << shift;
        c >>= 3;
        if c == 0 {
            break;
        }
    }
    Rgb([r, g, b])
}

/// Segments one image file (gray, resized to the run's input); returns the label map at the
/// input size and the colour mask and overlay at the file's own size.
pub fn segment_file(
    model: &Fcn,
    info: &SegmentInfo,
    path: &Path,
    invert: bool,
) -> Result<(Vec<u8>, RgbImage, RgbImage), TrainError> {
    let [_, h, w] = info.input;
    let device = fcn_device(model);
    let (img, x) = crate::predict::load_input(path, [h, w], invert, info.normalize, &device)?;
    let labels = argmax_labels(model.forward(x))?;
    let small = RgbImage::from_fn(w as u32, h as u32, |x, y| {
        palette(labels[y as usize * w + x as usize])
    });
    let (fw, fh) = (img.width(), img.height());
    let mask = image::imageops::resize(&small, fw, fh, image::imageops::FilterType::Nearest);
    let base = img.to_rgb8();
    let overlay = RgbImage::from_fn(fw, fh, |x, y| {
        let (p, m) = (base.get_pixel(x, y), mask.get_pixel(x, y));
        if m.0 == [0, 0, 0] {
            *p
        } else {
            Rgb([0, 1, 2].map(|c| ((u16::from(p[c]) + u16::from(m[c])) / 2) as u8))
        }
    });
    Ok((labels, mask, overlay))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pixel_cross_entropy_skips_ignored_pixels() {
        let device = Device::flex();
        // Two pixels, two classes: logits (0, 0) → −log ½ each; the second pixel ignored.
        let logits = Tensor::<4>::zeros([1, 2, 1, 2], &device);
        let labels =
            Tensor::<3, Int>::from_data(TensorData::new(vec![1i64, 255], [1, 1, 2]), &device);
        let loss = pixel_cross_entropy(logits, labels).into_scalar::<f32>();
        assert!((loss - std::f32::consts::LN_2).abs() < 1e-6, "{loss}");
        // A confident right answer costs almost nothing.
        let logits =
            Tensor::<4>::from_data(TensorData::new(vec![-10.0f32, 10.0], [1, 2, 1, 1]), &device);
        let labels = Tensor::<3, Int>::from_data(TensorData::new(vec![1i64], [1, 1, 1]), &device);
        assert!(pixel_cross_entropy(logits, labels).into_scalar::<f32>() < 1e-6);
        assert_eq!(palette(0), Rgb([0, 0, 0]));
        assert_eq!(palette(1), Rgb([128, 0, 0]));
        assert_eq!(palette(2), Rgb([0, 128, 0]));
    }

    #[test]
    fn fcn8s_trains_on_tiny_scenes_and_the_run_reloads() {
        let dataset = konv_datasets::mnist::embedded_fashion_mnist();
        let mut config = SegmentConfig::new("fcn8s", "resnet20");
        config.stem_stride = 2;
        config.scene.size = 48;
        config.scene.scale_max = 1.2;
        config.settings.epochs = 2;
        config.settings.batch_size = 8;
        config.settings.limit = Some(200);
        config.settings.val_size = 24;
        config.settings.augment = "flip".parse().unwrap();
        let mut data = SegmentData::generate(&dataset, &config).unwrap();
        data.test = data.test.select(&(0..12).collect::<Vec<_>>());
        let mut names = vec!["background".to_string()];
        names.extend(dataset.class_names().iter().map(|s| s.to_string()));
        let dir = std::env::temp_dir().join(format!("konv-seg-run-{}", std::process::id()));
        let run = RunDir::create(&dir).unwrap();
        let out = train_segmenter(
            &config,
            &names,
            &data,
            &Device::flex(),
            Some(&run),
            &mut crate::observer::Silent,
        )
        .unwrap();
        assert_eq!(out.history.len(), 2);
        // Background is most pixels: even a barely trained FCN gets most of them right.
        assert!(out.test.pixel_accuracy > 0.5, "{:?}", out.test);
        let info = read_info(&run).unwrap().expect("a segmentation run");
        let model = load_fcn(&run, &info, &Device::flex()).unwrap();
        let again = evaluate_segmenter(&model, &data.test, info.normalize, 8, 11).unwrap();
        assert_eq!(again.pixel_accuracy, out.test.pixel_accuracy);
        // The output has the input's size: one label per pixel.
        let x = Tensor::<4>::zeros([1, 1, 48, 48], &Device::flex());
        assert_eq!(argmax_labels(model.forward(x)).unwrap().len(), 48 * 48);
        assert!(crate::localize::read_info(&run).unwrap().is_none());
        std::fs::remove_dir_all(&dir).ok();
    }
}
