//! The flags of `konv filters`, `augment`, `summary` and `import`.

use std::path::PathBuf;

use clap::Args;
use konv_datasets::DatasetName;
use konv_train::backend::BackendName;

use super::*;

#[derive(Args)]
pub(crate) struct FiltersArgs {
    /// An image file (PNG or JPEG, colour or gray); repeat for several.
    #[arg(long = "image", required = true)]
    pub(crate) images: Vec<PathBuf>,
    /// A hand-made filter; repeat for several: vertical, horizontal (lines of ones, --size
    /// wide), sobel-x, sobel-y, laplacian, blur, an inline kernel with rows split by `;`
    /// (`1,0,-1;2,0,-2;1,0,-1`, or named: `edges=1,0,-1;2,0,-2;1,0,-1`), or file:PATH.
    /// Default without --run/--model: vertical and horizontal.
    #[arg(long = "filter")]
    pub(crate) filters: Vec<String>,
    /// Size of the vertical, horizontal and blur filters.
    #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) size: u32,
    /// same (output ⌈n / stride⌉) or valid (output ⌊(n − size) / stride⌋ + 1).
    #[arg(long, default_value = "same")]
    pub(crate) padding: konv_train::filters::Padding,
    /// Stride of the hand-made filters.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) stride: u32,
    /// Folder for the PNGs (created if needed).
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// A `konv train` run: draw its first-layer filters, and the feature maps of --layer.
    #[arg(long, conflicts_with = "model")]
    pub(crate) run: Option<PathBuf>,
    /// A zoo model with imported weights (needs --weights), e.g. resnet18.
    #[arg(long, requires = "weights")]
    pub(crate) model: Option<String>,
    /// Weights for --model: a PyTorch state dict or a .bpk from `konv import`.
    #[arg(long)]
    pub(crate) weights: Option<PathBuf>,
    /// Classes of --model's head (default: the model's own).
    #[arg(long)]
    pub(crate) classes: Option<usize>,
    /// A layer whose feature maps to draw for each image (e.g. layer1.0, features.3,
    /// conv2); repeat for several. Without it the model's layer names are listed.
    #[arg(long = "layer")]
    pub(crate) layers: Vec<String>,
    /// At most this many channels per feature-map grid.
    #[arg(long, default_value_t = 64)]
    pub(crate) max_channels: usize,
    /// Invert images first for a Fashion-MNIST run (its items are light on black).
    #[arg(long)]
    pub(crate) invert: bool,
    /// cpu (Flex), flex, ndarray, wgpu.
    #[arg(long, default_value = "cpu")]
    pub(crate) backend: BackendName,
}

#[derive(Args)]
pub(crate) struct AugmentArgs {
    /// Dataset: fashion-mnist or mnist.
    #[arg(long, default_value = "fashion-mnist", value_parser = parse_dataset)]
    pub(crate) dataset: DatasetName,
    /// The pipeline, as for `konv train --augment`.
    #[arg(long, value_parser = parse_augment)]
    pub(crate) augment: konv_train::augment::Pipeline,
    /// Where to write the PNG.
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// Images (rows).
    #[arg(long, default_value_t = 8)]
    pub(crate) count: usize,
    /// Augmented versions of each (columns after the original).
    #[arg(long, default_value_t = 7)]
    pub(crate) variants: usize,
    /// Seed.
    #[arg(long, default_value_t = 42)]
    pub(crate) seed: u64,
    #[command(flatten)]
    pub(crate) data: DataArgs,
}

#[derive(Args)]
pub(crate) struct SummaryArgs {
    /// A zoo model (see `konv models`), or one convolution layer as `conv2d:FILTERSxKxK`
    /// (e.g. `conv2d:200x5x5`, with --stride and --padding).
    #[arg(long)]
    pub(crate) model: String,
    /// Input as CxHxW (default: the model's own input size).
    #[arg(long, value_parser = parse_chw)]
    pub(crate) input: Option<[usize; 3]>,
    /// Instances per batch, for the memory totals.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) batch: u32,
    /// Classes of the head (default: the model's own).
    #[arg(long)]
    pub(crate) classes: Option<usize>,
    /// Stride of a `conv2d:` layer.
    #[arg(long, default_value_t = 1)]
    pub(crate) stride: usize,
    /// Padding of a `conv2d:` layer: same or valid.
    #[arg(long, default_value = "same", value_parser = ["same", "valid"])]
    pub(crate) padding: String,
}

#[derive(Args)]
pub(crate) struct ImportArgs {
    /// Zoo model the weights are for (torchvision's layout: resnet18…152, alexnet, vgg16,
    /// googlenet, …).
    #[arg(long)]
    pub(crate) model: String,
    /// PyTorch state dict: .pth/.pt (torch.save) or .safetensors.
    #[arg(long)]
    pub(crate) weights: PathBuf,
    /// Classes of the weights' head (default: the model's own, 1000 for ImageNet models).
    #[arg(long)]
    pub(crate) classes: Option<usize>,
    /// Where to write the Burn weights (.bpk), for `konv predict --weights`.
    #[arg(long)]
    pub(crate) out: PathBuf,
}

/// `konv bench`'s mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum BenchModeArg {
    /// Full training steps: forward, backward, SGD update.
    Train,
    /// The forward pass alone, in inference mode.
    Infer,
}

#[derive(Args)]
pub(crate) struct BenchArgs {
    /// A zoo model (see `konv models`).
    #[arg(long, default_value = "fashion-cnn")]
    pub(crate) model: String,
    /// cpu (Flex), flex, ndarray, wgpu.
    #[arg(long, default_value = "cpu")]
    pub(crate) backend: BackendName,
    /// Training steps or inference.
    #[arg(long, value_enum, default_value = "train")]
    pub(crate) mode: BenchModeArg,
    /// Images per step.
    #[arg(long, default_value_t = 64)]
    pub(crate) batch_size: usize,
    /// Input height and width (default: the model's own).
    #[arg(long)]
    pub(crate) size: Option<usize>,
    /// Input channels (default: the model's own).
    #[arg(long)]
    pub(crate) channels: Option<usize>,
    /// Classes of the head (default: the model's own).
    #[arg(long)]
    pub(crate) classes: Option<usize>,
    /// Untimed steps first (allocation; on wgpu, kernel autotuning).
    #[arg(long, default_value_t = 2)]
    pub(crate) warmup: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 10)]
    pub(crate) steps: usize,
    /// Model replicas a training batch is split between (data parallelism over CPU cores).
    #[arg(long, default_value_t = 1)]
    pub(crate) replicas: usize,
    /// Seed of the weights and the batch (drawn on the CPU, the same on every backend).
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// First compare the backend with the CPU on the same weights and batch: the logits, and
    /// the losses of two training steps.
    #[arg(long)]
    pub(crate) check_cpu: bool,
    /// Print one JSON object instead of the text.
    #[arg(long)]
    pub(crate) json: bool,
}
