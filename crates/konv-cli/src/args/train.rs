//! `konv train`'s flags.

use std::path::PathBuf;

use clap::Args;
use konv_train::backend::BackendName;

use super::*;

#[derive(Args)]
pub(crate) struct TrainArgs {
    /// Model name (see `konv models`).
    #[arg(long, default_value = "fashion-cnn")]
    pub(crate) model: String,
    /// Dataset: fashion-mnist, mnist, or folder (your own images: --data-dir DIR with one
    /// sub-folder per class).
    #[arg(long, default_value = "fashion-mnist", value_parser = folder::parse_dataset_choice)]
    pub(crate) dataset: DatasetChoice,
    /// Passes over the training set.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) epochs: u32,
    /// Images per step.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) batch_size: u32,
    /// Learning rate.
    #[arg(long, default_value_t = 0.01, value_parser = parse_positive)]
    pub(crate) lr: f64,
    /// Learning-rate schedule: constant; keras-decay:DECAY (the lecture's `SGD(decay=0.01)`:
    /// lr / (1 + decay · updates)); step:every=EPOCHS[,gamma=G]; multistep:at=E1+E2[,gamma=G];
    /// exponential:gamma=G (per epoch); cosine[:warmup=EPOCHS,min-lr=L];
    /// one-cycle[:pct=0.3,div=25,final-div=1e4];
    /// plateau[:patience=N,factor=F,min-lr=L] (on the validation loss).
    #[arg(long, default_value = "constant", value_parser = parse_schedule)]
    pub(crate) lr_schedule: konv_train::schedule::LrSchedule,
    /// Augmentation of the training images, steps in order: flip, crop=PIXELS,
    /// translate=PIXELS, rotate=DEGREES, zoom=FRACTION, shear=DEGREES, resize=HxW (also
    /// applied when evaluating), erase=PROBABILITY (black), erase-random=PROBABILITY
    /// (noise), brightness=DELTA, contrast=DELTA; batch level: mixup=ALPHA, cutmix=ALPHA
    /// (e.g. flip,crop=4,rotate=10,erase=0.25).
    #[arg(long, default_value = "", value_parser = parse_augment)]
    pub(crate) augment: konv_train::augment::Pipeline,
    /// From this epoch on (counting from 1), train on the images without --augment's random
    /// steps, as the test sees them (timm's --mixup-off-epoch, for every step; e.g. 44 of 46
    /// epochs for three clean ones at the end). --augment's resize stays.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) augment_off_epoch: Option<u32>,
    /// L2 weight decay (PyTorch SGD's weight_decay, e.g. 5e-4); 0 for none.
    #[arg(long, default_value_t = 0.0, value_parser = parse_non_negative)]
    pub(crate) weight_decay: f64,
    /// Clip each parameter's gradient to this L2 norm.
    #[arg(long, value_parser = parse_positive)]
    pub(crate) clip_grad_norm: Option<f64>,
    /// Stop when the monitored metric (--monitor) has not improved for this many epochs (the best
    /// epoch's weights are kept either way).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) early_stop: Option<u32>,
    /// What picks the best epoch (best.bpk, the test evaluation) and what --early-stop
    /// watches: val-accuracy (highest), val-loss (lowest), score (the task's: mean IoU for
    /// localize and segment, mAP@0.5 for detect) or last (the final epoch; not with
    /// --early-stop). Default: val-accuracy for classification, val-loss for localize, score
    /// for segment and detect.
    #[arg(long)]
    pub(crate) monitor: Option<konv_train::train::Monitor>,
    /// Optimizer: sgd, adam, adamw (decoupled weight decay) or rmsprop.
    #[arg(long, default_value = "sgd")]
    pub(crate) optimizer: konv_train::optim::OptimizerName,
    /// Keep weight decay off biases and batch-norm parameters (timm's default).
    #[arg(long)]
    pub(crate) no_decay_bias_norm: bool,
    /// Label smoothing of the cross-entropy loss (e.g. 0.1); 0 for none.
    #[arg(long, default_value_t = 0.0, value_parser = parse_fraction)]
    pub(crate) label_smoothing: f64,
    /// Start a fresh ResNet with each residual unit's last batch norm at zero scale, so
    /// that every unit begins as its shortcut (torchvision's zero_init_residual). ResNets,
    /// classification.
    #[arg(long)]
    pub(crate) zero_init_residual: bool,
    /// Split each batch between this many model replicas, one CPU thread each, gradients
    /// summed (data parallelism over cores: --replicas 2 on a 2-core machine). Batch norm
    /// then normalizes each replica's share on its own; dropout masks are drawn in thread
    /// order, so runs with dropout are no longer bit-reproducible. CPU backend, every task.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) replicas: u32,
    /// Train the first epochs on smaller images: `min=20,start=4,end=8` trains on 20×20
    /// through epoch 4, grows the side linearly, and trains at the full size from epoch 8
    /// (FFCV's progressive resizing). Validation and test stay at the full size; the model
    /// must take any size (the ResNets, GoogLeNet, Xception).
    #[arg(long)]
    pub(crate) progressive_resize: Option<konv_train::progressive::ProgressiveResize>,
    /// Keep an exponential moving average of the weights with this decay (e.g. 0.999; timm's
    /// --model-ema, Keras' use_ema), updated after every step. Validation, best.bpk and the
    /// test use the average; checkpoint.bpk keeps the trained weights for --resume, ema.bpk
    /// the latest average.
    #[arg(long, value_parser = parse_decay)]
    pub(crate) ema: Option<f64>,
    /// SGD momentum (0 for plain SGD); RMSProp's momentum with --optimizer rmsprop.
    #[arg(long, default_value_t = 0.9, value_parser = parse_momentum)]
    pub(crate) momentum: f64,
    /// Nesterov momentum.
    #[arg(long)]
    pub(crate) nesterov: bool,
    /// Seed for weights, dropout, validation split and shuffling.
    #[arg(long, default_value_t = 42)]
    pub(crate) seed: u64,
    /// cpu (Flex), flex, ndarray, wgpu (or cuda when built with it).
    #[arg(long, default_value = "cpu")]
    pub(crate) backend: BackendName,
    /// Train on the first N training images only.
    #[arg(long)]
    pub(crate) limit: Option<usize>,
    /// Training images held out for validation (the lecture's 5,000 on the full set;
    /// 500 on the embedded subset when not given). 0 trains on all of them: the run keeps
    /// its last epoch and refuses a validation --monitor, --early-stop and a plateau
    /// schedule.
    #[arg(long)]
    pub(crate) val_size: Option<usize>,
    /// Start from these weights (also --weights): a run's best.bpk or checkpoint.bpk,
    /// `konv import`ed weights, or a PyTorch state dict of the same architecture
    /// (torchvision's resnet18-f37072fd.pth, a .pt or .safetensors), imported on the fly.
    /// Weights for another number of classes get a fresh head (transfer learning). With
    /// --task detect: the classifier (same --model) to slide.
    #[arg(long, visible_alias = "weights")]
    pub(crate) init_from: Option<PathBuf>,
    /// Train on these classes only, relabelled 0, 1, … in this order (e.g. 5,6,7,8,9).
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u8))]
    pub(crate) classes: Option<Vec<u8>>,
    /// Transfer learning, phase 1: train only the head for this many epochs (the backbone
    /// frozen, batch norm in inference mode) at --head-lr; then fine-tune everything at --lr.
    #[arg(long, default_value_t = 0)]
    pub(crate) freeze_epochs: usize,
    /// Learning rate of phase 1 (--freeze-epochs); --lr when not given.
    #[arg(long, value_parser = parse_positive)]
    pub(crate) head_lr: Option<f64>,
    /// Epoch checkpoints to keep besides best.bpk (the newest).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) keep_checkpoints: u32,
    /// Continue the run in this folder from its last finished epoch, with its own settings
    /// (config.json): the result is the same as a run never interrupted.
    #[arg(long)]
    pub(crate) resume: Option<PathBuf>,
    /// Run folder (default: runs/MODEL-DATASET-TIME).
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
    /// What to learn: classify; localize (one item per generated canvas: its class and
    /// bounding box, a two-head model of the zoo; metrics accuracy and mean IoU); segment
    /// (several items per canvas, a class per pixel: --model fcn32s|fcn16s|fcn8s with
    /// --backbone; metrics pixel accuracy and mean IoU); or detect (several items per
    /// canvas, a box and class for each: --model slides fully convolutionally over the
    /// canvas; metric mAP@0.5).
    #[arg(long, value_enum, default_value_t = Task::Classify)]
    pub(crate) task: Task,
    /// --task segment: the FCN's backbone, a ResNet of the zoo.
    #[arg(long, default_value = "resnet20")]
    pub(crate) backbone: String,
    /// --task segment/detect: fewest and most items per canvas.
    #[arg(long, default_value = "2,4", value_parser = parse_pair::<usize>)]
    pub(crate) items: (usize, usize),
    /// --task localize: weights of the class and box losses (Keras' loss_weights).
    #[arg(long, default_value = "0.8,0.2")]
    pub(crate) loss_weights: konv_train::loss::LossWeights,
    /// --task localize: box loss on the normalized box, mse or smooth-l1.
    #[arg(long, default_value = "mse", value_parser = ["mse", "smooth-l1"])]
    pub(crate) box_loss: String,
    /// --task localize: the box head reads the last feature map averaged to an N×N grid
    /// (1: the globally pooled features, as the lecture's model).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) box_grid: u32,
    /// --task localize/segment/detect: stride of the backbone's first convolution (ResNets),
    /// e.g. 2 to run 64×64 canvases at the cost of 32×32.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4))]
    pub(crate) stem_stride: u32,
    /// --task localize/segment/detect: canvas side in pixels (default 64 to localize, 96 to
    /// segment and detect).
    #[arg(long, value_parser = clap::value_parser!(u32).range(28..=512))]
    pub(crate) canvas: Option<u32>,
    /// --task localize/segment/detect: smallest and largest item scale, the 28×28 item ×
    /// scale (default 1.0,2.0 to localize, 1.0,1.5 to segment and detect).
    #[arg(long, value_parser = parse_pair::<f32>)]
    pub(crate) scale: Option<(f32, f32)>,
    /// --task detect: the largest IoU two items' placements may have (0: apart).
    #[arg(long, default_value_t = 0.2, value_parser = parse_fraction)]
    pub(crate) max_overlap: f64,
    /// --task localize: Gaussian pixel noise, as a fraction of white.
    #[arg(long, default_value_t = 0.0, value_parser = parse_fraction)]
    pub(crate) noise: f64,
    /// --task localize: fragments of other items scattered on each canvas.
    #[arg(long, default_value_t = 0)]
    pub(crate) clutter: usize,
    /// Print only the final result.
    #[arg(long, short)]
    pub(crate) quiet: bool,
    #[command(flatten)]
    pub(crate) data: DataArgs,
    #[command(flatten)]
    pub(crate) folder: FolderArgs,
}

/// What `konv train` trains (`--task`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Task {
    /// One class per image.
    Classify,
    /// A class and a box per image.
    Localize,
    /// A class per pixel.
    Segment,
    /// A box and a class per object.
    Detect,
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Task::Classify => "classify",
            Task::Localize => "localize",
            Task::Segment => "segment",
            Task::Detect => "detect",
        })
    }
}
