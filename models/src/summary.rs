//! Resource accounting: per-layer output shapes, parameters, multiply-adds and activation
//! memory, computed from the layers' own hyper-parameters without running the network.
//!
//! Each model implements [`Summarize`] by walking its layers in forward order, the way
//! Keras' `model.summary()` lists them. Conventions, chosen so that the totals match the
//! figures torchvision publishes (`GFLOPS` in its weight tables, which are multiply-adds):
//! only convolutions, transposed convolutions and dense layers count multiply-adds (one per
//! weight use; biases, normalization, pooling and activations are left out); parameters are
//! counted as PyTorch does (batch-norm running statistics are not parameters); activation
//! memory is the float32 output of every listed layer.

use burn::nn::conv::{Conv2d, ConvTranspose2d};
use burn::nn::pool::{AdaptiveAvgPool2d, AvgPool2d, MaxPool2d};
use burn::nn::{BatchNorm, Linear, PaddingConfig2d};
use burn::prelude::*;

use crate::layers::{Layer, parameter_count};

/// One row of the table: a layer and what it costs for one input instance.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Dotted path of the layer, as in the weight keys (`layer1.0.conv1`).
    pub name: String,
    /// The layer's kind (`Conv2d`, `BatchNorm`, …).
    pub kind: &'static str,
    /// Output shape for one instance: `[channels, height, width]` or `[features]`.
    pub output: Vec<usize>,
    /// Parameters of the layer.
    pub params: usize,
    /// Multiply-adds for one instance.
    pub macs: u64,
}

impl Row {
    /// Output values for one instance.
    pub fn output_len(&self) -> usize {
        self.output.iter().product()
    }
}

/// The accounting of a whole network, built by [`Summarize::summarize`].
#[derive(Debug, Clone)]
pub struct Summary {
    /// The input shape of one instance.
    pub input: Vec<usize>,
    /// Layers in forward order.
    pub rows: Vec<Row>,
    shape: Vec<usize>,
    scope: Vec<String>,
}

/// A model (or block) that can list its layers into a [`Summary`].
pub trait Summarize {
    /// Appends this module's layers, reading and updating the summary's current shape.
    fn summarize(&self, s: &mut Summary);
}

/// Output length of a convolution or pooling window along one axis.
fn window_out(
    size: usize,
    kernel: usize,
    stride: usize,
    pad: usize,
    dilation: usize,
    ceil: bool,
) -> Option<usize> {
    let span = dilation * (kernel - 1) + 1;
    let steps = (size + pad).checked_sub(span)?;
    let mut out = if ceil {
        steps.div_ceil(stride)
    } else {
        steps / stride
    } + 1;
    // PyTorch's ceil mode drops a last window that would start in the padding.
    if ceil && (out - 1) * stride >= size + pad / 2 {
        out -= 1;
    }
    Some(out)
}

/// Output height and width of a padded window operation.
///
/// # Panics
/// When the window does not fit, naming the layer ([`checked`] turns that into an error).
fn window_out_2d(
    name: &str,
    [h, w]: [usize; 2],
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    padding: &PaddingConfig2d,
    ceil: bool,
) -> [usize; 2] {
    let (ph, pw) = match padding {
        PaddingConfig2d::Same => return [h.div_ceil(stride[0]), w.div_ceil(stride[1])],
        PaddingConfig2d::Valid => (0, 0),
        PaddingConfig2d::Explicit(top, left, bottom, right) => (top + bottom, left + right),
    };
    match (
        window_out(h, kernel[0], stride[0], ph, dilation[0], ceil),
        window_out(w, kernel[1], stride[1], pw, dilation[1], ceil),
    ) {
        (Some(oh), Some(ow)) => [oh, ow],
        _ => panic!(
            "layer `{name}`: its {}×{} window does not fit its {h}×{w} input",
            kernel[0], kernel[1]
        ),
    }
}

impl Summary {
    /// An empty summary for inputs of shape `input` (one instance, e.g. `[3, 224, 224]`).
    pub fn new(input: &[usize]) -> Self {
        Self {
            input: input.to_vec(),
            rows: Vec::new(),
            shape: input.to_vec(),
            scope: Vec::new(),
        }
    }

    /// Summarizes `model` for inputs of shape `input`.
    pub fn of<M: Summarize + ?Sized>(model: &M, input: &[usize]) -> Self {
        let mut s = Self::new(input);
        model.summarize(&mut s);
        s
    }

    /// The current (last output) shape.
    pub fn shape(&self) -> Vec<usize> {
        self.shape.clone()
    }

    /// Sets the current shape (after a branch, a concatenation or a reshape).
    pub fn set_shape(&mut self, shape: Vec<usize>) {
        self.shape = shape;
    }

    /// `[channels, height, width]` of the current shape.
    ///
    /// # Panics
    /// If the current shape is not an image.
    pub fn chw(&self) -> [usize; 3] {
        match self.shape[..] {
            [c, h, w] => [c, h, w],
            _ => panic!("expected an image shape, have {:?}", self.shape),
        }
    }

    /// Runs `f` with `name` appended to the names of the rows it adds (`layer1`, `0`, …).
    pub fn scope(&mut self, name: impl Into<String>, f: impl FnOnce(&mut Self)) {
        self.scope.push(name.into());
        f(self);
        self.scope.pop();
    }

    /// Adds a row and makes `output` the current shape.
    pub fn push(
        &mut self,
        name: &str,
        kind: &'static str,
        output: Vec<usize>,
        params: usize,
        macs: u64,
    ) {
        let mut full = self.scope.join(".");
        if !name.is_empty() {
            if !full.is_empty() {
                full.push('.');
            }
            full.push_str(name);
        }
        self.shape = output.clone();
        self.rows.push(Row {
            name: full,
            kind,
            output,
            params,
            macs,
        });
    }

    /// A convolution: `out·h·w · (in/groups)·kh·kw` multiply-adds.
    pub fn conv2d(&mut self, name: &str, conv: &Conv2d) {
        let [_, h, w] = self.chw();
        let [c_out, c_in_per_group, kh, kw] = conv.weight.dims();
        let [oh, ow] = window_out_2d(
            name,
            [h, w],
            conv.kernel_size,
            conv.stride,
            conv.dilation,
            &conv.padding,
            false,
        );
        let macs = (c_out * oh * ow * c_in_per_group * kh * kw) as u64;
        self.push(
            name,
            "Conv2d",
            vec![c_out, oh, ow],
            parameter_count(conv),
            macs,
        );
    }

    /// A transposed convolution: `in·h·w · (out/groups)·kh·kw` multiply-adds.
    pub fn conv_transpose2d(&mut self, name: &str, conv: &ConvTranspose2d) {
        let [c_in, h, w] = self.chw();
        let [_, c_out_per_group, kh, kw] = conv.weight.dims();
        let c_out = c_out_per_group * conv.groups;
        let out = |size: usize, i: usize| {
            (size - 1) * conv.stride[i]
                + conv.dilation[i] * (conv.kernel_size[i] - 1)
                + conv.padding_out[i]
                + 1
                - 2 * conv.padding[i]
        };
        let macs = (c_in * h * w * c_out_per_group * kh * kw) as u64;
        self.push(
            name,
            "ConvTranspose2d",
            vec![c_out, out(h, 0), out(w, 1)],
            parameter_count(conv),
            macs,
        );
    }

    /// Batch normalization (no multiply-adds counted).
    pub fn batch_norm(&mut self, name: &str, bn: &BatchNorm) {
        let shape = self.shape();
        self.push(name, "BatchNorm", shape, parameter_count(bn), 0);
    }

    /// A parameter-free layer that keeps the shape (ReLU, LRN, dropout), listed for its
    /// activation memory.
    pub fn same(&mut self, name: &str, kind: &'static str) {
        let shape = self.shape();
        self.push(name, kind, shape, 0, 0);
    }

    /// Max pooling.
    pub fn max_pool2d(&mut self, name: &str, pool: &MaxPool2d) {
        let [c, h, w] = self.chw();
        let [oh, ow] = window_out_2d(
            name,
            [h, w],
            pool.kernel_size,
            pool.stride,
            pool.dilation,
            &pool.padding,
            pool.ceil_mode,
        );
        self.push(name, "MaxPool2d", vec![c, oh, ow], 0, 0);
    }

    /// Average pooling.
    pub fn avg_pool2d(&mut self, name: &str, pool: &AvgPool2d) {
        let [c, h, w] = self.chw();
        let [oh, ow] = window_out_2d(
            name,
            [h, w],
            pool.kernel_size,
            pool.stride,
            [1, 1],
            &pool.padding,
            pool.ceil_mode,
        );
        self.push(name, "AvgPool2d", vec![c, oh, ow], 0, 0);
    }

    /// Adaptive average pooling to a fixed size.
    pub fn adaptive_avg_pool2d(&mut self, name: &str, pool: &AdaptiveAvgPool2d) {
        let [c, _, _] = self.chw();
        let [oh, ow] = pool.output_size;
        self.push(name, "AdaptiveAvgPool2d", vec![c, oh, ow], 0, 0);
    }

    /// Global (average or max) pooling to `[channels]`.
    pub fn global_pool(&mut self, name: &str, kind: &'static str) {
        let [c, _, _] = self.chw();
        self.push(name, kind, vec![c], 0, 0);
    }

    /// Flattens the current shape to `[features]` (no row: a view, not a layer).
    pub fn flatten(&mut self) {
        self.shape = vec![self.shape.iter().product()];
    }

    /// A dense layer on the flattened input: `in·out` multiply-adds.
    pub fn linear(&mut self, name: &str, linear: &Linear) {
        self.flatten();
        let [d_in, d_out] = linear.weight.dims();
        assert_eq!(
            self.shape[0], d_in,
            "dense layer `{name}` expects {d_in} inputs, the shape has {:?}",
            self.shape
        );
        self.push(
            name,
            "Linear",
            vec![d_out],
            parameter_count(linear),
            (d_in * d_out) as u64,
        );
    }

    /// A torch-style sequential stack, rows named by their index.
    pub fn sequential(&mut self, name: &str, layers: &[Layer]) {
        self.scope(name, |s| {
            for (i, layer) in layers.iter().enumerate() {
                let i = i.to_string();
                match layer {
                    Layer::Conv2d(m) => s.conv2d(&i, m),
                    Layer::BatchNorm(m) => s.batch_norm(&i, m),
                    Layer::Relu(_) => s.same(&i, "ReLU"),
                    Layer::MaxPool2d(m) => s.max_pool2d(&i, m),
                    Layer::Lrn(_) => s.same(&i, "LocalResponseNorm"),
                    Layer::Dropout(_) => s.same(&i, "Dropout"),
                    Layer::Linear(m) => s.linear(&i, m),
                }
            }
        });
    }

    /// Total parameters.
    pub fn params(&self) -> usize {
        self.rows.iter().map(|r| r.params).sum()
    }

    /// Total multiply-adds for one instance.
    pub fn macs(&self) -> u64 {
        self.rows.iter().map(|r| r.macs).sum()
    }

    /// Float32 bytes of every listed layer's output, for one instance.
    pub fn activation_bytes(&self) -> u64 {
        self.rows.iter().map(|r| r.output_len() as u64 * 4).sum()
    }

    /// A rough training-memory estimate for a batch, in bytes: parameters, their gradients
    /// and one optimizer slot (SGD momentum), plus every layer's output kept for the
    /// backward pass (and its gradient, computed once and freed per layer, not counted).
    pub fn training_bytes(&self, batch: usize) -> u64 {
        3 * 4 * self.params() as u64 + batch as u64 * self.activation_bytes()
    }

    /// The table for people: one line per layer, then the totals for `batch` instances.
    pub fn table(&self, batch: usize) -> String {
        let shape = |s: &[usize]| {
            s.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("×")
        };
        let name_w = self
            .rows
            .iter()
            .map(|r| r.name.chars().count() + r.kind.len() + 3)
            .max()
            .unwrap_or(5)
            .max(5);
        let mut out = format!(
            "{:<name_w$}  {:>16}  {:>12}  {:>16}  {:>12}\n",
            "layer", "output", "params", "mult-adds", "activations"
        );
        out += &format!("{}\n", "─".repeat(name_w + 64));
        for r in &self.rows {
            out += &format!(
                "{:<name_w$}  {:>16}  {:>12}  {:>16}  {:>12}\n",
                format!("{} ({})", r.name, r.kind),
                shape(&r.output),
                thousands(r.params as u64),
                thousands(r.macs),
                bytes(r.output_len() as u64 * 4),
            );
        }
        out += &format!("{}\n", "─".repeat(name_w + 64));
        out += &format!("input                  {}\n", shape(&self.input));
        out += &format!(
            "parameters             {} ({})\n",
            thousands(self.params() as u64),
            bytes(4 * self.params() as u64)
        );
        out += &format!(
            "mult-adds / instance   {} ({})\n",
            thousands(self.macs()),
            giga(self.macs())
        );
        out += &format!(
            "activations / instance {} bits = {}\n",
            thousands(8 * self.activation_bytes()),
            bytes(self.activation_bytes())
        );
        out += &format!(
            "activations × {batch:<9} {}\n",
            bytes(batch as u64 * self.activation_bytes())
        );
        out += &format!(
            "training memory ≈      {} (batch {batch}: weights + gradients + momentum + activations)\n",
            bytes(self.training_bytes(batch))
        );
        out
    }
}

/// [`Summary::of`] for user-given input sizes: an input too small for the network (a window
/// that no longer fits) is an error naming the layer, not a panic.
pub fn checked<M: Summarize + ?Sized>(model: &M, input: &[usize]) -> Result<Summary, String> {
    shape_checked(|| Summary::of(model, input))
        .map_err(|first| format!("too small for this network ({first})"))
}

/// Runs `f`, a pass of a network over an input that may not fit it: a shape panic is caught
/// silently and returned as its message's first line (without `assert_eq!`'s
/// `left:`/`right:` dump).
pub fn shape_checked<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    result.map_err(|payload| {
        let message = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "the input does not fit the network".to_string());
        let first = message.lines().next().unwrap_or_default();
        first
            .strip_prefix("assertion `left == right` failed: ")
            .unwrap_or(first)
            .to_string()
    })
}

/// `1234567` → `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// Bytes in decimal units, as the lecture writes them (12 MB, 1.2 GB).
pub fn bytes(n: u64) -> String {
    let units = [(1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB")];
    for (scale, unit) in units {
        if n as f64 >= scale {
            return format!("{:.1} {unit}", n as f64 / scale);
        }
    }
    format!("{n} B")
}

/// `4_089_184_256` → `4.09 G`.
pub fn giga(n: u64) -> String {
    if n >= 1_000_000_000 {
        format!("{:.2} G", n as f64 / 1e9)
    } else {
        format!("{:.2} M", n as f64 / 1e6)
    }
}

/// A single convolution layer, for sizing one layer as the lecture does
/// (`konv summary --model conv2d:200x5x5 --input 3x150x100`).
#[derive(Module, Debug)]
pub struct SingleConv {
    /// The layer.
    pub conv: Conv2d,
}

impl Summarize for SingleConv {
    fn summarize(&self, s: &mut Summary) {
        s.conv2d("conv", &self.conv);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::conv::Conv2dConfig;

    #[test]
    fn the_lectures_slide() {
        // RGB 150×100, 200 filters 5×5, stride 1, same padding.
        let conv = Conv2dConfig::new([3, 200], [5, 5])
            .with_padding(PaddingConfig2d::Same)
            .init(&Device::flex());
        let s = Summary::of(&SingleConv { conv }, &[3, 150, 100]);
        assert_eq!(s.rows[0].output, vec![200, 150, 100]);
        assert_eq!(s.params(), 15_200);
        assert_eq!(s.macs(), 225_000_000);
        assert_eq!(8 * s.activation_bytes(), 96_000_000);
        assert_eq!(bytes(s.activation_bytes()), "12.0 MB");
        assert_eq!(bytes(100 * s.activation_bytes()), "1.2 GB");
        let table = s.table(100);
        assert!(table.contains("15,200"), "{table}");
        assert!(table.contains("225,000,000"), "{table}");
        assert!(table.contains("96,000,000 bits = 12.0 MB"), "{table}");
    }

    #[test]
    fn window_arithmetic_matches_pytorch() {
        // GoogLeNet's 3×3/2 ceil-mode pooling: 112 → 56, 56 → 28, 14 → 7.
        assert_eq!(window_out(112, 3, 2, 0, 1, true), Some(56));
        assert_eq!(window_out(14, 3, 2, 0, 1, true), Some(7));
        // Floor mode: 112 → 55.
        assert_eq!(window_out(112, 3, 2, 0, 1, false), Some(55));
        // ResNet's stem: 224 → 112 (7×7/2, pad 3).
        assert_eq!(window_out(224, 7, 2, 6, 1, false), Some(112));
        assert_eq!(window_out(4, 5, 1, 0, 1, false), None);
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(12), "12");
    }

    #[test]
    fn too_small_inputs_are_errors_naming_the_layer() {
        let conv = Conv2dConfig::new([3, 8], [5, 5]).init(&Device::flex());
        let err = checked(&SingleConv { conv }, &[3, 4, 4]).unwrap_err();
        assert!(err.contains("layer `conv`") && err.contains("5×5"), "{err}");
    }
}
