//! `konv eval`'s and `konv predict`'s flags.

use std::path::PathBuf;

use clap::Args;
use konv_train::backend::BackendName;

use super::*;

#[derive(Args)]
pub(crate) struct EvalArgs {
    /// Run folder of `konv train`.
    #[arg(long, required_unless_present = "checkpoint")]
    pub(crate) run: Option<PathBuf>,
    /// Weights file (a run's best.bpk or checkpoint.bpk); its folder must hold config.json.
    #[arg(long)]
    pub(crate) checkpoint: Option<PathBuf>,
    /// cpu (Flex), flex, ndarray, wgpu.
    #[arg(long, default_value = "cpu")]
    pub(crate) backend: BackendName,
    /// Images per batch.
    #[arg(long, default_value_t = 256)]
    pub(crate) batch_size: usize,
    /// Test-time augmentation: average the logits of each image and its mirror image.
    #[arg(long)]
    pub(crate) tta_flip: bool,
    /// Test-time augmentation: also average the image moved this many pixels along each
    /// diagonal, black moved in (5 views; 10 with --tta-flip, torchvision's TenCrop of the
    /// padded image). Use at most the training's crop=P.
    #[arg(long, default_value_t = 0)]
    pub(crate) tta_shift: usize,
    #[command(flatten)]
    pub(crate) data: DataArgs,
}

#[derive(Args)]
pub(crate) struct PredictArgs {
    /// Run folder of `konv train`.
    #[arg(long, required_unless_present = "model", conflicts_with = "model")]
    pub(crate) run: Option<PathBuf>,
    /// A zoo model with imported weights (needs --weights), e.g. resnet50.
    #[arg(long, requires = "weights")]
    pub(crate) model: Option<String>,
    /// Weights for --model: a PyTorch state dict (.pth/.pt/.safetensors) or a .bpk from
    /// `konv import`.
    #[arg(long)]
    pub(crate) weights: Option<PathBuf>,
    /// Classes of --model's head (default: the model's own; ImageNet's 1000 are named).
    #[arg(long)]
    pub(crate) classes: Option<usize>,
    /// Image files (PNG or JPEG); resized, cropped and normalized as the model expects.
    #[arg(required = true)]
    pub(crate) images: Vec<PathBuf>,
    /// How many classes to show per image.
    #[arg(long, default_value_t = 5)]
    pub(crate) top: usize,
    /// Invert the image first (Fashion-MNIST items are light on black; photos are usually
    /// dark on light).
    #[arg(long)]
    pub(crate) invert: bool,
    /// cpu (Flex), flex, ndarray, wgpu.
    #[arg(long, default_value = "cpu")]
    pub(crate) backend: BackendName,
    /// The run's task, checked against the run (classify, localize, segment or detect;
    /// default: the run's).
    #[arg(long, value_parser = ["classify", "localize", "segment", "detect"])]
    pub(crate) task: Option<String>,
    /// --task detect: the lowest score (objectness × class probability) of a box to keep.
    #[arg(long, default_value_t = 0.5, value_parser = parse_fraction)]
    pub(crate) score: f64,
    /// Folder for the pictures of --task localize (each image with its box and label),
    /// segment (a colour mask and an overlay per image) and detect (the kept boxes).
    #[arg(long, default_value = "predictions")]
    pub(crate) out: PathBuf,
}
