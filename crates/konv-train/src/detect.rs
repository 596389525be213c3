//! Detection by sliding a classifier over the image: training, evaluation (mAP@0.5) and
//! prediction of a [`SlidingDetector`] on scenes of several objects.
//!
//! **Targets.** The detector's last feature map is a grid of cells, each `cell` pixels of
//! the input on a side. An object belongs to the cell its box center falls in (YOLO's
//! rule; when two centers share a cell the larger object wins); that cell learns
//! objectness 1, the object's class, and its box as
//! `(cx/cell − col, cy/cell − row, ln(w/prior_w), ln(h/prior_h))`, the first two through a
//! sigmoid (the center stays in its cell), the prior being the geometric mean size of the
//! training boxes. Every other cell learns objectness 0.
//!
//! **Loss.** Sigmoid focal loss on objectness summed over all cells (RetinaNet, α 0.25,
//! γ 2), cross-entropy of the class and smooth L1 of the four box numbers at the object
//! cells; each summed and divided by the number of objects.
//!
//! **Decoding.** A cell's score is `P(object) · P(class | object)` for its best class;
//! cells above a threshold become boxes, and class-wise non-maximum suppression
//! ([`nms`], IoU 0.5) keeps the best of overlapping boxes of one class. The metric is PASCAL
//! VOC's mean average precision at IoU 0.5 ([`mean_average_precision`]), and COCO's mean
//! over IoU 0.5 to 0.95.

use std::path::Path;

use burn::prelude::*;
use burn::tensor::activation::{log_softmax, sigmoid, softmax};
use image::RgbImage;
use konv_datasets::segmentation::{SceneConfig, SegmentationSet};
use konv_datasets::{Dataset, ImageSet};
use konv_models::detection::SlidingDetector;
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::augment::{Image, Pipeline, Sample};
use crate::data::Normalize;
use crate::engine::{Monitor, PlannedEpochs, Settings, Step, StepLoss, Task, Validation};
use crate::localize::{draw_box, pixel_stats, split_items};
use crate::loss::{sigmoid_focal_loss, smooth_l1};
use crate::metrics::{Detection, GroundTruth, average_precision, nms};
use crate::observer::Observer;
use crate::record::EpochRecord;
use crate::run::{BEST, RunDir};
use crate::schedule::LrSchedule;
use crate::segment::{SceneSpec, palette};

/// Everything that shapes a detection run; saved in the run's `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectConfig {
    /// The classifier of the zoo that slides (`resnet20`, `fashion-cnn`, …).
    pub model: String,
    /// Stride of the first convolution (ResNets): 2 puts ResNet-20's last map at 1/8.
    pub stem_stride: usize,
    /// Dataset the objects come from.
    pub dataset: String,
    /// The generated scenes.
    pub scene: SceneSpec,
    /// Largest IoU between two objects' placements in a generated scene.
    pub max_overlap: f32,
    /// Start the backbone from a trained classifier of the same model (a konv run's
    /// `best.bpk`, or imported torchvision weights): the lecture's classifier, made fully
    /// convolutional and slid over the scene. Its dense head is not used.
    #[serde(default)]
    pub init_from: Option<std::path::PathBuf>,
    /// How to train (weight decay kept off biases and batch-norm parameters by default).
    #[serde(flatten)]
    pub settings: Settings,
}

impl DetectConfig {
    /// Defaults: `model` sliding over 96×96 scenes of 2–4 objects, SGD Nesterov, one-cycle.
    pub fn new(model: &str) -> Self {
        Self {
            model: model.to_string(),
            stem_stride: 1,
            dataset: "fashion-mnist".into(),
            scene: SceneSpec::default(),
            max_overlap: 0.2,
            init_from: None,
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

    /// The scene generator for `seed`.
    pub fn scenes(&self, seed: u64) -> SceneConfig {
        SceneConfig {
            max_overlap: Some(self.max_overlap),
            ..self.scene.with_seed(seed)
        }
    }

    /// Checks the settings before anything is written.
    ///
    /// # Errors
    /// A one-line description of the first bad setting.
    pub fn validate(&self) -> Result<(), TrainError> {
        konv_models::info(&self.model)?;
        if let Some(path) = self.init_from.as_deref().filter(|p| !p.is_file()) {
            return Err(TrainError::setting(
                "init_from",
                format!(
                    "{}: no such weights file (give a run's best.bpk or `konv import`ed weights)",
                    path.display()
                ),
            ));
        }
        self.settings.validate()?;
        self.settings.check_val_size()?;
        if self.settings.progressive_resize.is_some() {
            return Err(TrainError::setting(
                "progressive_resize",
                NO_PROGRESSIVE_RESIZE.into(),
            ));
        }
        self.scenes(0).validate(28).map_err(|e| {
            TrainError::Config(format!(
                "the scenes (canvas, scale, items, max overlap): {e}"
            ))
        })
    }
}

/// Why detection trains at one size.
const NO_PROGRESSIVE_RESIZE: &str = "detection's targets are cells of the scene's grid at its full size and the box prior is in its pixels; train detection at one size";

/// The objects of one image: class and box `[x0, y0, x1, y1]` in pixels.
pub type Objects = Vec<(u8, [f32; 4])>;

/// What a detection run folder records besides the weights.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DetectInfo {
    /// Always `detect`.
    pub task: String,
    /// The settings.
    pub config: DetectConfig,
    /// Class names.
    pub class_names: Vec<String>,
    /// Input standardization (from the training scenes).
    pub normalize: Normalize,
    /// `[channels, height, width]` of the input.
    pub input: [usize; 3],
    /// Box size prior `[width, height]` in pixels.
    pub prior: [f32; 2],
}

/// The generated sets of a detection run.
#[derive(Debug, Clone)]
pub struct DetectData {
    /// Scenes of the training items.
    pub train: SegmentationSet,
    /// Scenes of the held-out training items.
    pub val: SegmentationSet,
    /// Scenes of the test items.
    pub test: SegmentationSet,
    /// Standardization of the training pixels.
    pub normalize: Normalize,
    /// Geometric mean width and height of the training boxes.
    pub prior: [f32; 2],
}

impl DetectData {
    /// Generates the three sets from `dataset`.
    ///
    /// # Errors
    /// Settings that do not fit, or no training items left.
    pub fn generate(dataset: &Dataset, config: &DetectConfig) -> Result<Self, TrainError> {
        let (train_items, val_items) = split_items(
            dataset,
            config.settings.limit,
            config.settings.val_size,
            config.settings.seed,
        )?;
        let make = |set: &ImageSet, offset: u64| {
            SegmentationSet::generate(set, &config.scenes(config.settings.seed + offset))
                .map_err(TrainError::Config)
        };
        let train = make(&train_items, 0)?;
        Ok(Self {
            normalize: pixel_stats(&train.pixels),
            prior: box_prior(&train),
            val: make(&val_items, 1)?,
            test: Self::test_set(dataset, config)?,
            train,
        })
    }

    /// The test scenes alone, for evaluating a finished run.
    ///
    /// # Errors
    /// When the scene settings do not fit.
    pub fn test_set(
        dataset: &Dataset,
        config: &DetectConfig,
    ) -> Result<SegmentationSet, TrainError> {
        SegmentationSet::generate(&dataset.test, &config.scenes(config.settings.seed + 2))
            .map_err(TrainError::Config)
    }
}

/// Geometric mean width and height of the boxes of `set` (`[32, 32]` when it has none).
pub fn box_prior(set: &SegmentationSet) -> [f32; 2] {
    let (mut lw, mut lh, mut n) = (0.0f64, 0.0f64, 0usize);
    for (_, b) in set.objects.iter().flatten() {
        lw += f64::from((b[2] - b[0]).max(1.0)).ln();
        lh += f64::from((b[3] - b[1]).max(1.0)).ln();
        n += 1;
    }
    if n == 0 {
        return [32.0, 32.0];
    }
    [(lw / n as f64).exp() as f32, (lh / n as f64).exp() as f32]
}

/// Builds the detector `config` describes for `classes` classes, with fresh weights
/// (`pretrained`: the backbone from `config.init_from`).
///
/// # Errors
/// An unknown model, a stem stride on a model that has none, or `init_from` weights that
/// cannot be read or do not fit.
pub fn build_detector(
    config: &DetectConfig,
    classes: usize,
    pretrained: bool,
    device: &Device,
) -> Result<SlidingDetector, TrainError> {
    let mut backbone = match (&config.init_from, pretrained) {
        (Some(path), true) => {
            crate::train::initial_weights(&config.model, path, classes, 1, device)?
        }
        _ => konv_models::build_for(&config.model, classes, 1, device)?,
    };
    if config.stem_stride > 1 {
        backbone = backbone.with_stem_stride(config.stem_stride)?;
    }
    Ok(SlidingDetector::new(backbone, classes, 0.01, device))
}

/// The training targets of one image on a `grid` of cells of `cell` pixels
/// (`[height, width]` each): objectness (`gh·gw`), class (`gh·gw`, 0 where there is no
/// object) and box numbers (`4·gh·gw`, channel-major as the head's output).
pub fn encode_targets(
    objects: &[(u8, [f32; 4])],
    grid: [usize; 2],
    cell: [f32; 2],
    prior: [f32; 2],
) -> (Vec<f32>, Vec<i64>, Vec<f32>) {
    let [gh, gw] = grid;
    let cells = gh * gw;
    let (mut obj, mut class, mut boxes) =
        (vec![0.0; cells], vec![0i64; cells], vec![0.0; 4 * cells]);
    let mut area = vec![0.0f32; cells];
    for &(c, b) in objects {
        let (w, h) = (b[2] - b[0], b[3] - b[1]);
        if w < 1.0 || h < 1.0 {
            continue;
        }
        let (cx, cy) = ((b[0] + b[2]) / 2.0 / cell[1], (b[1] + b[3]) / 2.0 / cell[0]);
        let (col, row) = (
            (cx.floor() as usize).min(gw - 1),
            (cy.floor() as usize).min(gh - 1),
        );
        let k = row * gw + col;
        if obj[k] > 0.0 && area[k] >= w * h {
            continue;
        }
        obj[k] = 1.0;
        area[k] = w * h;
        class[k] = i64::from(c);
        let t = [
            (cx - col as f32).clamp(0.0, 1.0),
            (cy - row as f32).clamp(0.0, 1.0),
            (w / prior[0]).ln(),
            (h / prior[1]).ln(),
        ];
        for (j, v) in t.into_iter().enumerate() {
            boxes[j * cells + k] = v;
        }
    }
    (obj, class, boxes)
}

/// The box `[x0, y0, x1, y1]` of cell (`row`, `col`) from its four raw numbers.
pub fn decode_cell(
    raw: [f32; 4],
    row: usize,
    col: usize,
    cell: [f32; 2],
    prior: [f32; 2],
) -> [f32; 4] {
    let sig = |v: f32| 1.0 / (1.0 + (-v).exp());
    let cx = (col as f32 + sig(raw[0])) * cell[1];
    let cy = (row as f32 + sig(raw[1])) * cell[0];
    let w = prior[0] * raw[2].clamp(-6.0, 6.0).exp();
    let h = prior[1] * raw[3].clamp(-6.0, 6.0).exp();
    [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0]
}

/// The detection losses of one batch and the number of object cells classified right.
struct Losses {
    total: Tensor<1>,
    right: usize,
    objects: usize,
}

/// Focal objectness, class cross-entropy and smooth-L1 box losses (module docs).
fn detection_losses(
    out: &konv_models::detection::DetectorOutput,
    objects: &[Objects],
    input: [usize; 2],
    prior: [f32; 2],
) -> Result<Losses, TrainError> {
    let [n, _, gh, gw] = out.class_logits.dims();
    let device = out.class_logits.device();
    let cell = [input[0] as f32 / gh as f32, input[1] as f32 / gw as f32];
    let (mut obj, mut cls, mut bx) = (Vec::new(), Vec::new(), Vec::new());
    for o in objects {
        let (a, b, c) = encode_targets(o, [gh, gw], cell, prior);
        obj.extend(a);
        cls.extend(b);
        bx.extend(c);
    }
    let count = obj.iter().filter(|&&v| v > 0.0).count();
    let norm = count.max(1) as f64;
    let obj = Tensor::<4>::from_data(TensorData::new(obj, [n, 1, gh, gw]), &device);
    let cls = Tensor::<3, Int>::from_data(TensorData::new(cls, [n, gh, gw]), &device);
    let bx = Tensor::<4>::from_data(TensorData::new(bx, [n, 4, gh, gw]), &device);
    let objectness = sigmoid_focal_loss(out.objectness.clone(), obj.clone(), 0.25, 2.0)
        .sum()
        .div_scalar(norm);
    let mask = obj.clone().reshape([n, gh, gw]);
    let logp = log_softmax(out.class_logits.clone(), 1);
    let picked = logp
        .gather(1, cls.clone().unsqueeze_dim::<4>(1))
        .reshape([n, gh, gw]);
    let class = (picked * mask.clone()).sum().neg().div_scalar(norm);
    let raw = out.boxes.clone();
    let centers = sigmoid(raw.clone().narrow(1, 0, 2));
    let sizes = raw.narrow(1, 2, 2);
    let pred = Tensor::cat(vec![centers, sizes], 1);
    let boxes = (smooth_l1(pred, bx) * obj).sum().div_scalar(norm);
    let predicted = out.class_logits.clone().argmax(1).reshape([n, gh, gw]);
    let right = crate::engine::read_count(predicted.equal(cls).int().mul(mask.int()).sum())?;
    Ok(Losses {
        total: objectness + class + boxes,
        right,
        objects: count,
    })
}

fn batch(
    set: &SegmentationSet,
    indices: &[usize],
    normalize: Normalize,
    augment: Option<(&Pipeline, u64)>,
    device: &Device,
) -> (Tensor<4>, Vec<Objects>) {
    let [h, w] = set.size;
    let mut pixels = Vec::with_capacity(indices.len() * h * w);
    let mut objects = Vec::with_capacity(indices.len());
    for &i in indices {
        let own = set.objects.get(i).cloned().unwrap_or_default();
        let mut sample = Sample {
            image: Image::from_u8(set.image(i), h, w),
            boxes: own.iter().map(|o| o.1).collect(),
            mask: None,
        };
        if let Some((pipeline, seed)) = augment {
            pipeline.apply_sample(&mut sample, seed, i);
        }
        pixels.extend(sample.image.pixels.iter().map(|&v| normalize.apply_unit(v)));
        // Geometric augmentation may push a box off the canvas: clip, drop what is gone.
        let clip = |b: [f32; 4]| {
            [
                b[0].clamp(0.0, w as f32),
                b[1].clamp(0.0, h as f32),
                b[2].clamp(0.0, w as f32),
                b[3].clamp(0.0, h as f32),
            ]
        };
        objects.push(
            own.iter()
                .zip(sample.boxes)
                .map(|(o, b)| (o.0, clip(b)))
                .filter(|(_, b)| b[2] - b[0] >= 1.0 && b[3] - b[1] >= 1.0)
                .collect(),
        );
    }
    let x = Tensor::from_data(TensorData::new(pixels, [indices.len(), 1, h, w]), device);
    (x, objects)
}

/// Turns the detector's output for a batch into boxes: for each image, the cells whose
/// score (objectness × class probability) reaches `threshold`, after class-wise NMS at
/// `nms_iou`, best first, at most `max_per_image`. Boxes are in input pixels, clipped.
///
/// # Errors
/// A device that failed reading the output back ([`TrainError::Device`]).
pub fn decode_detections(
    out: &konv_models::detection::DetectorOutput,
    input: [usize; 2],
    prior: [f32; 2],
    threshold: f32,
    nms_iou: f32,
    max_per_image: usize,
) -> Result<Vec<Vec<Detection>>, TrainError> {
    let [n, classes, gh, gw] = out.class_logits.dims();
    let cell = [input[0] as f32 / gh as f32, input[1] as f32 / gw as f32];
    let vec = crate::engine::read_values::<f32, 4, _>;
    let obj = vec(sigmoid(out.objectness.clone()))?;
    let probs = vec(softmax(out.class_logits.clone(), 1))?;
    let raw = vec(out.boxes.clone())?;
    let cells = gh * gw;
    Ok((0..n)
        .map(|b| {
            let mut found = Vec::new();
            for k in 0..cells {
                let p_obj = obj[b * cells + k];
                if p_obj < threshold {
                    continue;
                }
                let (class, p) = (0..classes)
                    .map(|c| (c, probs[(b * classes + c) * cells + k]))
                    .max_by(|a, c| a.1.total_cmp(&c.1))
                    .unwrap_or((0, 0.0));
                let score = p_obj * p;
                if score < threshold {
                    continue;
                }
                let r = |j: usize| raw[(b * 4 + j) * cells + k];
                let bx = decode_cell([r(0), r(1), r(2), r(3)], k / gw, k % gw, cell, prior);
                let bx = [
                    bx[0].max(0.0),
                    bx[1].max(0.0),
                    bx[2].min(input[1] as f32),
                    bx[3].min(input[0] as f32),
                ];
                found.push(Detection {
                    image: b,
                    class,
                    score,
                    bbox: bx,
                });
            }
            let mut kept = Vec::new();
            for class in 0..classes {
                let of: Vec<&Detection> = found.iter().filter(|d| d.class == class).collect();
                let boxes: Vec<[f32; 4]> = of.iter().map(|d| d.bbox).collect();
                let scores: Vec<f32> = of.iter().map(|d| d.score).collect();
                kept.extend(nms(&boxes, &scores, nms_iou).into_iter().map(|i| *of[i]));
            }
            kept.sort_by(|a, c| c.score.total_cmp(&a.score));
            kept.truncate(max_per_image);
            kept
        })
        .collect())
}

/// The score threshold of evaluation: low, so that the precision–recall curve is complete.
pub const EVAL_THRESHOLD: f32 = 0.01;

/// A detector's figures on a set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectEval {
    /// Images.
    pub count: usize,
    /// Objects.
    pub objects: usize,
    /// Mean average precision at IoU 0.5 (PASCAL VOC).
    pub map50: f64,
    /// Mean over IoU 0.5, 0.55, …, 0.95 (COCO's AP).
    pub map50_95: f64,
    /// AP@0.5 of each class (`None`: no objects of it).
    pub class_ap: Vec<Option<f64>>,
    /// Share of object cells classified right.
    pub class_accuracy: f64,
    /// Mean loss per image.
    pub loss: f64,
}

/// Evaluates `model` (inference mode) on `set`.
///
/// # Errors
/// A device that failed ([`TrainError::Device`]): no figure over part of the set.
pub fn evaluate_detector(
    model: &SlidingDetector,
    set: &SegmentationSet,
    normalize: Normalize,
    prior: [f32; 2],
    batch_size: usize,
) -> Result<DetectEval, TrainError> {
    let device = model.conv.weight.device();
    let classes = model.num_classes();
    let (mut detections, mut truths) = (Vec::new(), Vec::new());
    let (mut loss_sum, mut right, mut counted) = (0.0, 0usize, 0usize);
    let indices: Vec<usize> = (0..set.len()).collect();
    for chunk in indices.chunks(batch_size.max(1)) {
        let (x, objects) = batch(set, chunk, normalize, None, &device);
        let out = model.forward(x);
        let losses = detection_losses(&out, &objects, set.size, prior)?;
        loss_sum += crate::engine::read_loss(losses.total)? * chunk.len() as f64;
        right += losses.right;
        counted += losses.objects;
        for (found, &i) in decode_detections(&out, set.size, prior, EVAL_THRESHOLD, 0.5, 100)?
            .into_iter()
            .zip(chunk)
        {
            detections.extend(found.into_iter().map(|d| Detection { image: i, ..d }));
        }
        for (&i, o) in chunk.iter().zip(&objects) {
            truths.extend(o.iter().map(|&(class, bbox)| GroundTruth {
                image: i,
                class: usize::from(class),
                bbox,
            }));
        }
    }
    let mean = |aps: Vec<Option<f64>>| {
        let v: Vec<f64> = aps.into_iter().flatten().collect();
        if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    let class_ap = average_precision(&detections, &truths, classes, 0.5);
    let map50_95 = (0..10)
        .map(|k| {
            mean(average_precision(
                &detections,
                &truths,
                classes,
                0.5 + 0.05 * k as f32,
            ))
        })
        .sum::<f64>()
        / 10.0;
    Ok(DetectEval {
        count: set.len(),
        objects: truths.len(),
        map50: mean(class_ap.clone()),
        map50_95,
        class_ap,
        class_accuracy: right as f64 / counted.max(1) as f64,
        loss: loss_sum / set.len().max(1) as f64,
    })
}

/// Detection as an [`engine`](crate::engine) task: focal loss on the cells, box regression,
/// mAP@0.5 as the score.
struct DetectTask<'a> {
    data: &'a DetectData,
    /// The training scenes, epoch by epoch.
    epochs: PlannedEpochs<'a, (Tensor<4>, Vec<Objects>)>,
}

impl Step<SlidingDetector> for DetectTask<'_> {
    type Batch = (Tensor<4>, Vec<Objects>);

    fn batch_len(&self, batch: &Self::Batch) -> usize {
        batch.1.len()
    }

    fn loss(
        &self,
        model: &SlidingDetector,
        (x, objects): Self::Batch,
        _frozen: bool,
    ) -> Result<StepLoss, TrainError> {
        let out = model.forward(x);
        let losses = detection_losses(&out, &objects, self.data.train.size, self.data.prior)?;
        Ok(StepLoss {
            loss: losses.total,
            right: losses.right,
            counted: losses.objects,
            sums: Vec::new(),
        })
    }

    fn split(&self, (x, objects): &Self::Batch, start: usize, len: usize) -> Self::Batch {
        (
            x.clone().narrow(0, start, len),
            objects[start..start + len].to_vec(),
        )
    }
}

impl Task<SlidingDetector> for DetectTask<'_> {
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

    fn can_resize(&self) -> Result<(), String> {
        Err(NO_PROGRESSIVE_RESIZE.into())
    }

    fn resize(&self, batch: Self::Batch, _side: usize) -> Result<Self::Batch, String> {
        <Self as Task<SlidingDetector>>::can_resize(self).map(|()| batch)
    }

    fn freeze(&self, model: SlidingDetector) -> Result<SlidingDetector, String> {
        Ok(model.freeze_backbone())
    }

    fn validate(&self, model: &SlidingDetector) -> Result<Validation, TrainError> {
        let eval = evaluate_detector(
            model,
            &self.data.val,
            self.data.normalize,
            self.data.prior,
            self.epochs.batch_size(),
        )?;
        Ok(Validation {
            loss: eval.loss,
            accuracy: eval.class_accuracy,
            score: eval.map50,
            columns: vec![("val_map50", eval.map50)],
        })
    }

    fn score_label(&self) -> &'static str {
        "mAP@0.5"
    }

    fn default_monitor(&self) -> Monitor {
        Monitor::Score
    }

    fn has_validation(&self) -> bool {
        !self.data.val.is_empty()
    }
}

/// The end of a detection run.
#[derive(Debug, Clone)]
pub struct DetectOutcome {
    /// The weights of the best validation epoch (highest mAP@0.5).
    pub model: SlidingDetector,
    /// Every epoch (the accuracy columns are the class accuracy at object cells).
    pub history: Vec<EpochRecord>,
    /// Which epoch `model` is.
    pub best_epoch: usize,
    /// What picked the best epoch (the last epoch in a run without validation items).
    pub monitor: Monitor,
    /// On the test scenes.
    pub test: DetectEval,
}

/// Trains a sliding detector on `data`, writing `config.json`, `metrics.csv`, `best.bpk`
/// and each epoch's checkpoint into `run`.
///
/// # Errors
/// Bad settings, a diverging loss, or a run folder that cannot be written.
pub fn train_detector(
    config: &DetectConfig,
    class_names: &[String],
    data: &DetectData,
    device: &Device,
    run: Option<&RunDir>,
    observer: &mut dyn Observer,
) -> Result<DetectOutcome, TrainError> {
    detect_from(config, class_names, data, device, run, false, observer)
}

/// [`train_detector`] continuing the run in `run` from its last finished epoch (the CLI's
/// `--resume`), with the run's own settings and `data` generated from them again.
///
/// # Errors
/// As [`train_detector`]; a run that is not a detection run, has no finished epoch or is
/// done; data that differs from the run's.
pub fn resume_detector(
    data: &DetectData,
    device: &Device,
    run: &RunDir,
    observer: &mut dyn Observer,
) -> Result<DetectOutcome, TrainError> {
    let info = run.read_resumable("detect", ("detection", "scenes"), |info: &DetectInfo| {
        info.normalize == data.normalize && info.prior == data.prior
    })?;
    detect_from(
        &info.config,
        &info.class_names,
        data,
        device,
        Some(run),
        true,
        observer,
    )
}

fn detect_from(
    config: &DetectConfig,
    class_names: &[String],
    data: &DetectData,
    device: &Device,
    run: Option<&RunDir>,
    resuming: bool,
    observer: &mut dyn Observer,
) -> Result<DetectOutcome, TrainError> {
    // A resumed run loads its own checkpoint: the init weights need not be there any more.
    DetectConfig {
        init_from: config.init_from.clone().filter(|_| !resuming),
        ..config.clone()
    }
    .validate()?;
    let settings = &config.settings;
    let train_device = crate::engine::training_device(device);
    train_device.seed(settings.seed);
    let model = build_detector(config, class_names.len(), !resuming, &train_device)?;
    let [h, w] = data.train.size;
    konv_models::summary::checked(&model.backbone, &[1, h, w]).map_err(|e| {
        TrainError::Config(format!(
            "model `{}` cannot take {h}×{w} scenes: {e}",
            config.model
        ))
    })?;
    let mut task = DetectTask {
        data,
        epochs: PlannedEpochs::new(
            data.train.len(),
            data.train.size[0].min(data.train.size[1]),
            settings.augment_schedule(),
            settings.batch_size,
            |indices, augment, device| batch(&data.train, indices, data.normalize, augment, device),
        ),
    };
    let state = crate::engine::start_run(run, resuming, || DetectInfo {
        task: "detect".into(),
        config: config.clone(),
        class_names: class_names.to_vec(),
        normalize: data.normalize,
        input: [1, h, w],
        prior: data.prior,
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
    let test = evaluate_detector(
        &fitted.best,
        &data.test,
        data.normalize,
        data.prior,
        settings.batch_size,
    )?;
    Ok(DetectOutcome {
        model: fitted.best,
        history: fitted.history,
        best_epoch: fitted.best_epoch,
        monitor: fitted.monitor,
        test,
    })
}

/// Reads a detection run's `config.json`; `None` when the run is another task.
pub fn read_info(run: &RunDir) -> Result<Option<DetectInfo>, TrainError> {
    run.read_task_config("detect")
}

/// Builds a detection run's model and loads its best weights.
pub fn load_detector(
    run: &RunDir,
    info: &DetectInfo,
    device: &Device,
) -> Result<SlidingDetector, TrainError> {
    let model = build_detector(&info.config, info.class_names.len(), false, device)?;
    crate::run::load_module(model, &run.path.join(BEST))
}

/// Images smaller than this are drawn enlarged by a whole factor by [`detect_file`].
pub const DRAW_SIDE: u32 = 384;

/// Detects the objects of one image file (gray, resized to the run's input): the kept
/// boxes with a score of at least `threshold`, in the file's pixels, and the image with
/// them drawn (enlarged by a whole factor when its longer side is under [`DRAW_SIDE`]).
pub fn detect_file(
    model: &SlidingDetector,
    info: &DetectInfo,
    path: &Path,
    invert: bool,
    threshold: f32,
) -> Result<(Vec<Detection>, RgbImage), TrainError> {
    let [_, h, w] = info.input;
    let device = model.conv.weight.device();
    let (img, x) = crate::predict::load_input(path, [h, w], invert, info.normalize, &device)?;
    let out = model.forward(x);
    let found = decode_detections(&out, [h, w], info.prior, threshold, 0.5, 100)?
        .pop()
        .unwrap_or_default();
    let (sx, sy) = (
        img.width() as f32 / w as f32,
        img.height() as f32 / h as f32,
    );
    let found: Vec<Detection> = found
        .into_iter()
        .map(|d| Detection {
            bbox: [
                d.bbox[0] * sx,
                d.bbox[1] * sy,
                d.bbox[2] * sx,
                d.bbox[3] * sy,
            ],
            ..d
        })
        .collect();
    // Small images (a 96×96 scene) are drawn enlarged, nearest neighbour, so that the
    // labels stay readable.
    let zoom = (DRAW_SIDE / img.width().max(img.height()).max(1)).max(1);
    let mut drawn = image::imageops::resize(
        &img.to_rgb8(),
        img.width() * zoom,
        img.height() * zoom,
        image::imageops::FilterType::Nearest,
    );
    for d in &found {
        let name = info.class_names.get(d.class).map_or("?", String::as_str);
        let colour = palette(d.class as u8 + 1);
        let bbox = d.bbox.map(|v| v * zoom as f32);
        draw_box(&mut drawn, bbox, &format!("{name} {:.2}", d.score), colour);
    }
    Ok((found, drawn))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_decoding_agree() {
        // A 96×96 image, 12×12 cells of 8 pixels, prior 32×32.
        let objects = [
            (3u8, [10.0, 20.0, 42.0, 36.0]),
            (7, [50.0, 50.0, 90.0, 94.0]),
        ];
        let (obj, class, boxes) = encode_targets(&objects, [12, 12], [8.0, 8.0], [32.0, 32.0]);
        assert_eq!(obj.iter().sum::<f32>(), 2.0);
        // First center (26, 28): cell row 3, col 3, offsets (0.25, 0.5), size ln(1), ln(½).
        let k = 3 * 12 + 3;
        assert_eq!((obj[k], class[k]), (1.0, 3));
        let t: Vec<f32> = (0..4).map(|j| boxes[j * 144 + k]).collect();
        assert!((t[0] - 0.25).abs() < 1e-6 && (t[1] - 0.5).abs() < 1e-6);
        assert!(t[2].abs() < 1e-6 && (t[3] - 0.5f32.ln()).abs() < 1e-6);
        // Decoding the targets (offsets through the inverse sigmoid) gives the box back.
        let logit = |p: f32| (p / (1.0 - p)).ln();
        let b = decode_cell(
            [logit(t[0]), logit(t[1]), t[2], t[3]],
            3,
            3,
            [8.0, 8.0],
            [32.0, 32.0],
        );
        for (got, want) in b.iter().zip([10.0, 20.0, 42.0, 36.0]) {
            assert!((got - want).abs() < 1e-3, "{b:?}");
        }
        // Two centers in one cell: the larger object is the target.
        let (obj, class, _) = encode_targets(
            &[
                (1, [0.0, 0.0, 10.0, 10.0]),
                (2, [0.0, 0.0, 12.0, 12.0]),
                (4, [2.0, 2.0, 8.0, 8.0]),
            ],
            [12, 12],
            [8.0, 8.0],
            [32.0, 32.0],
        );
        assert_eq!((obj.iter().sum::<f32>(), class[0]), (1.0, 2));
    }

    #[test]
    fn decoding_scores_and_suppresses() {
        let device = Device::flex();
        // A 2×2 grid over a 16×16 image, 2 classes. Cells 0 and 1 see the same class-1
        // object (boxes overlap: NMS keeps the better), cell 3 a class-0 object, cell 2
        // nothing.
        let objectness = Tensor::<4>::from_data(
            TensorData::new(vec![3.0f32, 2.0, -5.0, 1.0], [1, 1, 2, 2]),
            &device,
        );
        let class_logits = Tensor::<4>::from_data(
            TensorData::new(
                vec![-2.0f32, -2.0, 0.0, 4.0, 2.0, 2.0, 0.0, -4.0],
                [1, 2, 2, 2],
            ),
            &device,
        );
        // Cell 0 centered at its far corner (8, 8), cell 1 at its near corner (8, 8).
        let big = 10.0;
        let boxes = Tensor::<4>::from_data(
            TensorData::new(
                vec![
                    big, -big, 0.0, 0.0, big, big, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                ],
                [1, 4, 2, 2],
            ),
            &device,
        );
        let out = konv_models::detection::DetectorOutput {
            objectness,
            class_logits,
            boxes,
        };
        let found = decode_detections(&out, [16, 16], [8.0, 8.0], 0.1, 0.5, 10).unwrap();
        assert_eq!(found.len(), 1);
        let found = &found[0];
        let sig = |x: f32| 1.0 / (1.0 + (-x).exp());
        let p1 = 1.0 / (1.0 + (-4.0f32).exp());
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].class, 1);
        assert!((found[0].score - sig(3.0) * p1).abs() < 1e-5);
        assert!((found[0].bbox[0] - 4.0).abs() < 1e-3 && (found[0].bbox[2] - 12.0).abs() < 1e-3);
        assert_eq!(found[1].class, 0);
        assert!((found[1].score - sig(1.0) * sig(8.0)).abs() < 1e-5);
        // A higher threshold drops the weaker.
        let found = decode_detections(&out, [16, 16], [8.0, 8.0], 0.8, 0.5, 10).unwrap();
        assert_eq!(found[0].len(), 1);
    }

    /// The targets of real generated scenes, written back as a detector's output, decode to
    /// the true boxes: mAP 1 at every IoU threshold.
    #[test]
    fn perfect_outputs_score_map_one() {
        let dataset = konv_datasets::mnist::embedded_fashion_mnist();
        let mut config = DetectConfig::new("resnet20");
        config.settings.limit = Some(60);
        config.settings.val_size = 10;
        let data = DetectData::generate(&dataset, &config).unwrap();
        let set = data.train.select(&(0..12).collect::<Vec<_>>());
        let (n, classes, [gh, gw]) = (set.len(), 10, [12, 12]);
        let (mut obj, mut cls, mut bx) = (Vec::new(), Vec::new(), Vec::new());
        for o in &set.objects {
            let (a, b, c) = encode_targets(o, [gh, gw], [8.0, 8.0], data.prior);
            let logit =
                |p: f32| (p.clamp(1e-4, 1.0 - 1e-4) / (1.0 - p.clamp(1e-4, 1.0 - 1e-4))).ln();
            obj.extend(a.iter().map(|&v| if v > 0.0 { 10.0 } else { -10.0 }));
            for c in 0..classes {
                cls.extend(b.iter().map(|&k| if k == c as i64 { 10.0f32 } else { 0.0 }));
            }
            bx.extend(
                c.iter()
                    .enumerate()
                    .map(|(i, &v)| if i < 2 * gh * gw { logit(v) } else { v }),
            );
        }
        let device = Device::flex();
        let out = konv_models::detection::DetectorOutput {
            objectness: Tensor::from_data(TensorData::new(obj, [n, 1, gh, gw]), &device),
            class_logits: Tensor::from_data(TensorData::new(cls, [n, classes, gh, gw]), &device),
            boxes: Tensor::from_data(TensorData::new(bx, [n, 4, gh, gw]), &device),
        };
        let detections: Vec<Detection> =
            decode_detections(&out, [96, 96], data.prior, 0.5, 0.5, 100)
                .unwrap()
                .into_iter()
                .flatten()
                .collect();
        let truths: Vec<GroundTruth> = set
            .objects
            .iter()
            .enumerate()
            .flat_map(|(image, o)| {
                o.iter().map(move |&(c, bbox)| GroundTruth {
                    image,
                    class: usize::from(c),
                    bbox,
                })
            })
            .collect();
        assert_eq!(detections.len(), truths.len());
        let aps = average_precision(&detections, &truths, classes, 0.95);
        assert!(
            aps.iter().flatten().all(|&ap| (ap - 1.0).abs() < 1e-9),
            "{aps:?}"
        );
    }

    /// `init_from` puts a trained classifier's feature extractor under the head: here
    /// registry-shaped (RGB) ResNet-20 weights, summed over RGB for gray scenes.
    #[test]
    fn the_backbone_starts_from_a_classifier() {
        let device = Device::flex();
        let dir = std::env::temp_dir().join(format!("konv-det-init-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let classifier = konv_models::build_for("resnet20", 10, 3, &device).unwrap();
        let run = RunDir { path: dir.clone() };
        run.save_module("weights.bpk", &classifier).unwrap();
        let mut config = DetectConfig::new("resnet20");
        config.stem_stride = 2;
        config.init_from = Some(dir.join("weights.bpk"));
        config.validate().unwrap();
        let model = build_detector(&config, 10, true, &device).unwrap();
        let (konv_models::Classifier::ResNet(from), konv_models::Classifier::ResNet(to)) =
            (&classifier, &model.backbone)
        else {
            panic!("a ResNet");
        };
        let summed = from.conv1.weight.val().sum_dim(1);
        to.conv1
            .weight
            .val()
            .into_data()
            .assert_approx_eq::<f32>(&summed.into_data(), Default::default());
        assert_eq!(to.conv1.stride, [2, 2]);
        // Fresh (not pretrained) when a finished run is rebuilt for its best.bpk.
        let fresh = build_detector(&config, 10, false, &device).unwrap();
        let konv_models::Classifier::ResNet(fresh) = &fresh.backbone else {
            panic!("a ResNet");
        };
        assert_ne!(
            fresh.conv1.weight.val().into_data(),
            to.conv1.weight.val().into_data()
        );
        config.init_from = Some(dir.join("missing.bpk"));
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("missing.bpk")
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_detector_trains_on_tiny_scenes_and_the_run_reloads() {
        let dataset = konv_datasets::mnist::embedded_fashion_mnist();
        let mut config = DetectConfig::new("resnet20");
        config.stem_stride = 2;
        config.scene.size = 48;
        config.scene.scale_max = 1.2;
        config.scene.items_max = 2;
        config.settings.epochs = 2;
        config.settings.batch_size = 8;
        config.settings.limit = Some(120);
        config.settings.val_size = 24;
        config.settings.augment = "flip".parse().unwrap();
        let mut data = DetectData::generate(&dataset, &config).unwrap();
        data.test = data.test.select(&(0..10).collect::<Vec<_>>());
        let names: Vec<String> = dataset
            .class_names()
            .iter()
            .map(|s| s.to_string())
            .collect();
        let dir = std::env::temp_dir().join(format!("konv-det-run-{}", std::process::id()));
        let run = RunDir::create(&dir).unwrap();
        let out = train_detector(
            &config,
            &names,
            &data,
            &Device::flex(),
            Some(&run),
            &mut crate::observer::Silent,
        )
        .unwrap();
        assert_eq!(out.history.len(), 2);
        assert!(
            out.test.objects >= 10 && out.test.loss.is_finite(),
            "{:?}",
            out.test
        );
        assert!((0.0..=1.0).contains(&out.test.map50));
        assert!(out.test.map50_95 <= out.test.map50);
        let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
        assert!(csv.lines().next().unwrap().ends_with(",val_map50"));
        let info = read_info(&run).unwrap().expect("a detection run");
        assert_eq!(info.prior, data.prior);
        let model = load_detector(&run, &info, &Device::flex()).unwrap();
        let again = evaluate_detector(&model, &data.test, info.normalize, info.prior, 8).unwrap();
        assert_eq!(again.map50, out.test.map50);
        assert!(crate::segment::read_info(&run).unwrap().is_none());
        std::fs::remove_dir_all(&dir).ok();
    }
}
