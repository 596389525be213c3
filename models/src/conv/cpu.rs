//! The CPU kernels behind [`super::conv2d`]: 2-D convolution forward, input gradient and weight
//! gradient on contiguous NCHW slices, for `f32` and `f64`.
//!
//! Every case is a matrix product on the `gemm` crate's micro-kernels (the ones Burn's Flex
//! backend uses for its matmul), grouped the way Caffe and PyTorch's CPU path group them:
//!
//! ```text
//! forward        Y[n]  (c_out × OH·OW)  = W (c_out × c_in·KH·KW) · cols(X[n])  (+ bias)
//! input grad     dX[n]                   = col2im( Wᵀ · dY[n] )   (stride 1: the forward of
//!                                            dY[n] with W turned 180°, channels swapped)
//! weight grad    dW    (c_out × c_in·KH·KW) = Σ_n dY[n] · cols(X[n])ᵀ
//! ```
//!
//! per group. `cols` is im2col; a 1×1 convolution with stride 1 and no padding needs none (the
//! image *is* its column matrix), so it is a plain GEMM. The batch is split over the rayon
//! threads in contiguous chunks, each with one column buffer for all its images (no per-image
//! allocation, memory independent of the batch size); when there are fewer images than threads
//! (inference at batch 1), the images run one after the other and the GEMM itself is threaded.
//! The weight gradient accumulates into one buffer per chunk, summed at the end.

use burn::backend::ops::ConvOptions;
use gemm::Parallelism;
use rayon::prelude::*;

/// The element types the kernels run in.
pub trait Element:
    Copy
    + Send
    + Sync
    + 'static
    + std::ops::AddAssign
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
{
    /// 0.
    const ZERO: Self;
    /// 1.
    const ONE: Self;
    /// ½.
    const HALF: Self;
    /// The value nearest `v` (the transforms' constants, such as Winograd's ⅙).
    fn constant(v: f64) -> Self;
    /// Runs `f` on `len` elements of this thread's scratch buffer, kept between calls so a
    /// kernel called every step does not fault in and zero fresh pages each time (its contents
    /// are whatever the last user left; a nested call gets a fresh buffer).
    fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [Self]) -> R) -> R;
}

/// [`Element::with_scratch`] for one type, on its own thread-local buffer.
macro_rules! scratch {
    ($t:ty) => {
        fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [Self]) -> R) -> R {
            thread_local! {
                static SCRATCH: std::cell::RefCell<Vec<$t>> =
                    const { std::cell::RefCell::new(Vec::new()) };
            }
            SCRATCH.with(|cell| match cell.try_borrow_mut() {
                Ok(mut buffer) => {
                    if buffer.len() < len {
                        buffer.resize(len, 0.0);
                    }
                    f(&mut buffer[..len])
                }
                Err(_) => f(&mut vec![0.0; len]),
            })
        }
    };
}

impl Element for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const HALF: Self = 0.5;
    fn constant(v: f64) -> Self {
        v as f32
    }
    scratch!(f32);
}

impl Element for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const HALF: Self = 0.5;
    fn constant(v: f64) -> Self {
        v
    }
    scratch!(f64);
}

/// The shapes of one 2-D convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Images.
    pub batch: usize,
    /// Input channels (all groups).
    pub c_in: usize,
    /// Input height and width.
    pub input: [usize; 2],
    /// Output channels (all groups).
    pub c_out: usize,
    /// Kernel height and width.
    pub kernel: [usize; 2],
    /// Output height and width.
    pub output: [usize; 2],
    /// Stride.
    pub stride: [usize; 2],
    /// Padding before the first row and column (the padding after only shortens the output).
    pub pad: [usize; 2],
    /// Dilation.
    pub dilation: [usize; 2],
    /// Groups.
    pub groups: usize,
}

impl Geometry {
    /// The geometry of `x` `[n, c_in, h, w]` convolved with `weight`
    /// `[c_out, c_in / groups, kh, kw]`. Panics on shapes that do not fit, as Burn's own
    /// convolution does (the layers check their configuration before this).
    pub fn new(x: [usize; 4], weight: [usize; 4], options: &ConvOptions<2>) -> Self {
        let [batch, c_in, h, w] = x;
        let [c_out, c_in_group, kh, kw] = weight;
        let groups = options.groups;
        assert!(
            c_in_group * groups == c_in && c_out.is_multiple_of(groups),
            "conv2d: {c_in} input channels and {c_out} output channels do not split into {groups} groups of weight {weight:?}"
        );
        let out = |i: usize, size: usize, k: usize| {
            let (before, after) = options.padding[i];
            let span = options.dilation[i] * (k - 1) + 1;
            let padded = size + before + after;
            assert!(
                padded >= span,
                "conv2d: kernel {k} (dilation {}) is larger than the padded input {padded}",
                options.dilation[i]
            );
            (padded - span) / options.stride[i] + 1
        };
        Self {
            batch,
            c_in,
            input: [h, w],
            c_out,
            kernel: [kh, kw],
            output: [out(0, h, kh), out(1, w, kw)],
            stride: options.stride,
            pad: [options.padding[0].0, options.padding[1].0],
            dilation: options.dilation,
            groups,
        }
    }

    fn c_in_group(&self) -> usize {
        self.c_in / self.groups
    }

    fn c_out_group(&self) -> usize {
        self.c_out / self.groups
    }

    /// Rows of a group's column matrix: `c_in / groups · kh · kw`.
    fn depth(&self) -> usize {
        self.c_in_group() * self.kernel[0] * self.kernel[1]
    }

    fn in_plane(&self) -> usize {
        self.input[0] * self.input[1]
    }

    fn out_plane(&self) -> usize {
        self.output[0] * self.output[1]
    }

    /// A 1×1 convolution that reads every pixel once: the image is its own column matrix.
    fn pointwise(&self) -> bool {
        self.kernel == [1, 1]
            && self.stride == [1, 1]
            && self.pad == [0, 0]
            && self.output == self.input
    }

    /// Elements of the output `[n, c_out, oh, ow]`.
    pub fn output_len(&self) -> usize {
        self.batch * self.c_out * self.out_plane()
    }

    /// The output shape.
    pub fn output_shape(&self) -> [usize; 4] {
        [self.batch, self.c_out, self.output[0], self.output[1]]
    }

    fn weight_len(&self) -> usize {
        self.c_out * self.depth()
    }

    /// Output rows per column tile: the tile (`depth × rows · ow`) stays within about
    /// 2 MiB of `f32` (measured on this machine, 64→64 3×3 at 56×56, batch 8: 82–91 GFLOP/s tiled against 58–62 untiled; 512 KiB tiles made the GEMMs of deep layers too narrow), so im2col writes it into the cache the GEMM then reads it from.
    fn tile_rows(&self) -> usize {
        (TILE_ELEMENTS / (self.depth() * self.output[1]).max(1)).clamp(1, self.output[0].max(1))
    }

    /// Images whose column matrices the forward pass lays side by side for one GEMM, out of a
    /// thread's `chunk`: for output planes of at most [`BATCHED_PLANE`] pixels (the 7×7 and
    /// 14×14 maps of ResNet's late stages), as many as fit one tile. One image there is a
    /// GEMM of only 49 or 196 columns against a weight matrix of up to 512 × 4,608, which
    /// `gemm` packs again on every call; side by side, the columns are wider and the weights
    /// packed once per group of images. 1 for grouped and pointwise layers and for small
    /// weight matrices (under [`BATCHED_WEIGHTS`]). Where Winograd would take the layer but has
    /// few tiles per thread (under [`WINOGRAD_MIN_THREAD_TILES`]), the forward pass runs side
    /// by side instead (and the weight gradient, in [`weight_grad_side_by_side`], where that
    /// applies); the input gradient stays in Winograd.
    fn images_per_gemm(&self, chunk: usize) -> usize {
        if !self.small_maps() {
            return 1;
        }
        (TILE_ELEMENTS / (self.depth() * self.out_plane())).clamp(1, chunk.max(1))
    }

    /// One group, not pointwise, an output plane of 1 to [`BATCHED_PLANE`] pixels and at least
    /// [`BATCHED_WEIGHTS`] weights: where images go side by side in the GEMMs
    /// ([`Geometry::images_per_gemm`], [`weight_grad_side_by_side`]).
    fn small_maps(&self) -> bool {
        let plane = self.out_plane();
        self.groups == 1
            && !self.pointwise()
            && plane > 0
            && plane <= BATCHED_PLANE
            && self.weight_len() >= BATCHED_WEIGHTS
    }

    /// The output row ranges of the column tiles.
    fn tiles(&self) -> impl Iterator<Item = std::ops::Range<usize>> + use<> {
        let (oh, step) = (self.output[0], self.tile_rows());
        (0..oh).step_by(step).map(move |y| y..(y + step).min(oh))
    }

    /// For a stride-1, undilated convolution whose padding is smaller than its kernel: the
    /// forward convolution that computes its input gradient (the output gradient padded by
    /// `k − 1 − pad`, convolved with the kernel turned 180° and its channel axes swapped;
    /// [`transposed_weight`] makes that kernel). None for other convolutions and for 1×1.
    pub(super) fn transposed(&self) -> Option<Geometry> {
        let [kh, kw] = self.kernel;
        (self.stride == [1, 1]
            && self.dilation == [1, 1]
            && self.kernel != [1, 1]
            && self.pad[0] < kh
            && self.pad[1] < kw)
            .then_some(Geometry {
                batch: self.batch,
                c_in: self.c_out,
                input: self.output,
                c_out: self.c_in,
                kernel: self.kernel,
                output: self.input,
                stride: [1, 1],
                pad: [kh - 1 - self.pad[0], kw - 1 - self.pad[1]],
                dilation: [1, 1],
                groups: self.groups,
            })
    }

    fn column_len(&self) -> usize {
        if self.pointwise() {
            0
        } else {
            self.depth() * self.tile_rows() * self.output[1]
        }
    }
}

/// Elements of one column tile: about 2 MiB of `f32` (see [`Geometry::tile_rows`]).
const TILE_ELEMENTS: usize = 1 << 19;

/// The largest output plane whose images the forward pass batches into one GEMM
/// ([`Geometry::images_per_gemm`]).
const BATCHED_PLANE: usize = 196;

/// The fewest weights (`c_out · c_in · kh · kw`) for which side-by-side images pay: below
/// it packing the weights again per image costs little, and the wider GEMM plus the copy
/// out was slower (ResNet-20's 16 → 32 3×3/2 at batch 96: 49–54 against 55–59 GFLOP/s).
const BATCHED_WEIGHTS: usize = 1 << 14;

/// The fewest 2×2 output tiles per thread for which Winograd's forward beats side-by-side
/// images where those apply: ResNet-18's 512-channel 7×7 layer at batch 8 (64 tiles per
/// thread) ran at 166–169 GFLOP/s in Winograd against 230 side by side, its 256-channel
/// 14×14 layer (196 per thread) at 318 against 174.
const WINOGRAD_MIN_THREAD_TILES: usize = 128;

/// The element counts the kernels index by.
struct Sizes {
    /// One input image, all channels.
    image_in: usize,
    /// One output image, all channels.
    image_out: usize,
    /// Rows of a group's column matrix.
    depth: usize,
    /// Output pixels per channel.
    plane: usize,
    /// Output channels per group.
    cog: usize,
    /// One group of one input image.
    in_group: usize,
    /// Output width.
    ow: usize,
}

impl Geometry {
    fn sizes(&self) -> Sizes {
        Sizes {
            image_in: self.c_in * self.in_plane(),
            image_out: self.c_out * self.out_plane(),
            depth: self.depth(),
            plane: self.out_plane(),
            cog: self.c_out_group(),
            in_group: self.c_in_group() * self.in_plane(),
            ow: self.output[1],
        }
    }
}

/// How the batch is split: contiguous chunks of images over the threads, and the threading
/// left to each GEMM.
pub(super) fn plan(batch: usize) -> (usize, Parallelism) {
    let threads = rayon::current_num_threads().max(1);
    if batch >= threads {
        (batch.div_ceil(threads), Parallelism::None)
    } else {
        (1, Parallelism::Rayon(threads))
    }
}

/// Whether Winograd takes the forward pass of `g` (and its weight gradient, see
/// [`weight_grad`]): where it applies, unless images side by side apply too
/// ([`Geometry::images_per_gemm`]) and Winograd would have fewer than
/// [`WINOGRAD_MIN_THREAD_TILES`] tiles per thread.
fn winograd_takes(g: &Geometry) -> bool {
    if !super::winograd::forward_applies(g) {
        return false;
    }
    let (chunk, _) = plan(g.batch);
    let tiles = g.output[0].div_ceil(2) * g.output[1].div_ceil(2) * chunk;
    g.images_per_gemm(chunk) == 1 || tiles >= WINOGRAD_MIN_THREAD_TILES
}

/// The valid output columns `lo..hi` for kernel column offset `offset` (= `kj·d − pad`):
/// those whose input column `o·stride + offset` lies in `0..width`.
pub(super) fn valid_range(
    out: usize,
    stride: usize,
    offset: isize,
    width: usize,
) -> (usize, usize) {
    let lo = if offset >= 0 {
        0
    } else {
        ((-offset) as usize).div_ceil(stride)
    };
    let end = width as isize - offset;
    let hi = if end <= 0 {
        0
    } else {
        (end as usize).div_ceil(stride).min(out)
    };
    (lo.min(hi), hi)
}

/// im2col of output rows `rows` of one group of one image: `x` is `[c_in/groups, h, w]`,
/// `col` is `[c_in/groups · kh · kw, rows · ow]`.
fn im2col<T: Element>(g: &Geometry, x: &[T], col: &mut [T], rows: std::ops::Range<usize>) {
    let plane = rows.len() * g.output[1];
    im2col_at(g, x, (col, plane, 0), rows);
}

/// [`im2col`] into columns `at .. at + rows · ow` of a column matrix whose rows are `stride`
/// apart (`stride ≥ at + rows · ow`): several images side by side.
fn im2col_at<T: Element>(
    g: &Geometry,
    x: &[T],
    (col, stride, at): (&mut [T], usize, usize),
    rows: std::ops::Range<usize>,
) {
    let [h, w] = g.input;
    let ow = g.output[1];
    let [kh, kw] = g.kernel;
    let [sh, sw] = g.stride;
    let [dh, dw] = g.dilation;
    let plane = rows.len() * ow;
    if g.stride == [2, 2] && kh > 1 && kw > 1 && rows == (0..g.output[0]) {
        return im2col_stride2(g, x, (col, stride, at));
    }
    // Stride 1 and an output as wide as the input ("same" padding): consecutive output rows
    // read consecutive input rows, so one tap's rows are one contiguous copy of the input,
    // shifted ([`shifted_copy`]).
    let contiguous = sh == 1 && sw == 1 && ow == w;
    for c in 0..g.c_in_group() {
        let image = &x[c * h * w..(c + 1) * h * w];
        for ki in 0..kh {
            for kj in 0..kw {
                let row = ((c * kh + ki) * kw + kj) * stride + at;
                let dst = &mut col[row..row + plane];
                let offset = (kj * dw) as isize - g.pad[1] as isize;
                if contiguous {
                    // Input row of tile row r: base + r.
                    let base = (rows.start + ki * dh) as isize - g.pad[0] as isize;
                    shifted_copy(dst, image, [h, w], [rows.len(), ow], [base, offset]);
                    continue;
                }
                let (lo, hi) = valid_range(ow, sw, offset, w);
                for (r, y) in rows.clone().enumerate() {
                    let iy = (y * sh + ki * dh) as isize - g.pad[0] as isize;
                    let d = &mut dst[r * ow..(r + 1) * ow];
                    if iy < 0 || iy >= h as isize {
                        d.fill(T::ZERO);
                        continue;
                    }
                    let src = &image[iy as usize * w..(iy as usize + 1) * w];
                    zero_few(&mut d[..lo]);
                    zero_few(&mut d[hi..]);
                    if hi == lo {
                        // No kernel tap of this column lands inside the image.
                    } else if sw == 1 {
                        let start = (lo as isize + offset) as usize;
                        d[lo..hi].copy_from_slice(&src[start..start + (hi - lo)]);
                    } else {
                        gather(
                            &mut d[lo..hi],
                            &src[(lo as isize * sw as isize + offset) as usize..],
                            sw,
                        );
                    }
                }
            }
        }
    }
}

/// [`im2col_at`] of all output rows for stride 2: each channel is first split into its four
/// phases (even or odd rows × even or odd columns), after which every tap reads one phase at
/// a fixed shift, whole rows ([`shifted_copy`]; one copy per tap where the phase is as wide as
/// the output, as with ResNet's stride-2 layers), instead of gathering every other value of
/// each input row once per tap. The split reads the image once; the taps (9 for 3×3) read
/// it 2.25 times over.
fn im2col_stride2<T: Element>(g: &Geometry, x: &[T], (col, stride, at): (&mut [T], usize, usize)) {
    let [h, w] = g.input;
    let [oh, ow] = g.output;
    let [kh, kw] = g.kernel;
    let [dh, dw] = g.dilation;
    let plane = oh * ow;
    // Phase (py, px) holds rows py, py + 2, … and columns px, px + 2, …: rows[py] × cols[px]
    // values from `starts[py][px]`.
    let (rows, cols) = ([h.div_ceil(2), h / 2], [w.div_ceil(2), w / 2]);
    let starts = [
        [0, rows[0] * cols[0]],
        [rows[0] * w, rows[0] * w + rows[1] * cols[0]],
    ];
    let mut phases = vec![T::ZERO; h * w];
    // The phase and shift of kernel offset `k·d − pad`: input index 2·o + offset is in phase
    // offset mod 2, at index o + ⌊offset / 2⌋ there.
    let phase = |offset: isize| (offset.rem_euclid(2) as usize, offset.div_euclid(2));
    for c in 0..g.c_in_group() {
        let image = &x[c * h * w..(c + 1) * h * w];
        for (py, starts) in starts.iter().enumerate() {
            for (px, &start) in starts.iter().enumerate() {
                let width = cols[px];
                for r in 0..rows[py] {
                    let src = &image[(2 * r + py) * w + px..(2 * r + py + 1) * w];
                    gather(
                        &mut phases[start + r * width..start + (r + 1) * width],
                        src,
                        2,
                    );
                }
            }
        }
        for ki in 0..kh {
            let (py, sy) = phase((ki * dh) as isize - g.pad[0] as isize);
            for kj in 0..kw {
                let (px, sx) = phase((kj * dw) as isize - g.pad[1] as isize);
                let row = ((c * kh + ki) * kw + kj) * stride + at;
                let size = [rows[py], cols[px]];
                let src = &phases[starts[py][px]..starts[py][px] + size[0] * size[1]];
                shifted_copy(&mut col[row..row + plane], src, size, [oh, ow], [sy, sx]);
            }
        }
    }
}

/// `dst[r · ow + o] = src[(r + sy) · sw + o + sx]` for the `[oh, ow]` output, 0 where that
/// falls outside the `[sh, sw]` source: one tap's rows of im2col when they read whole input
/// rows (stride 1, or one phase of a stride-2 input). Where the output is as wide as the
/// source, consecutive output rows read consecutive source rows, so it is one contiguous copy
/// and then zeros at each row's ends (row by row, the call per 28-value row cost more than the
/// copy); otherwise one copy per row.
fn shifted_copy<T: Element>(
    dst: &mut [T],
    src: &[T],
    [sh, sw]: [usize; 2],
    [oh, ow]: [usize; 2],
    [sy, sx]: [isize; 2],
) {
    let (lo, hi) = valid_range(ow, 1, sx, sw);
    // Output rows r0..r1 read inside the source.
    let r0 = (-sy).clamp(0, oh as isize) as usize;
    let r1 = (sh as isize - sy).clamp(r0 as isize, oh as isize) as usize;
    dst[..r0 * ow].fill(T::ZERO);
    dst[r1 * ow..oh * ow].fill(T::ZERO);
    if r0 == r1 || lo == hi {
        dst[r0 * ow..r1 * ow].fill(T::ZERO);
        return;
    }
    let first = (r0 as isize + sy) as usize * sw + (lo as isize + sx) as usize;
    if ow == sw {
        let to = r0 * ow + lo;
        let len = (r1 - 1 - r0) * ow + (hi - lo);
        dst[to..to + len].copy_from_slice(&src[first..first + len]);
    } else {
        for r in r0..r1 {
            let from = first + (r - r0) * sw;
            dst[r * ow + lo..r * ow + hi].copy_from_slice(&src[from..from + (hi - lo)]);
        }
    }
    for r in r0..r1 {
        let d = &mut dst[r * ow..(r + 1) * ow];
        zero_few(&mut d[..lo]);
        zero_few(&mut d[hi..]);
    }
}

/// `d[i] = src[i · step]`: a strided row of im2col (stride 2 and up). Stride 2, the common
/// one, takes whole pairs with `chunks_exact(2)`, which the compiler turns into vector loads
/// and shuffles, with no index arithmetic or bounds check per value (the indexed loop it
/// replaces ran one value at a time); the last value may lack a full group after it.
#[inline]
fn gather<T: Element>(d: &mut [T], src: &[T], step: usize) {
    if step == 2 {
        gather_by(d, src, 2);
    } else {
        gather_by(d, src, step);
    }
}

#[inline(always)]
fn gather_by<T: Element>(d: &mut [T], src: &[T], step: usize) {
    let whole = (src.len() / step).min(d.len());
    let (head, tail) = d.split_at_mut(whole);
    for (v, group) in head.iter_mut().zip(src.chunks_exact(step)) {
        *v = group[0];
    }
    for (i, v) in tail.iter_mut().enumerate() {
        *v = src[(whole + i) * step];
    }
}

/// Zeros `d`, usually 0–2 elements (a row's columns outside the image): stored one by one up
/// to three, where a `fill` call (memset) would cost more than the stores.
#[inline(always)]
fn zero_few<T: Element>(d: &mut [T]) {
    match d {
        [] => {}
        [a] => *a = T::ZERO,
        [a, b] => (*a, *b) = (T::ZERO, T::ZERO),
        [a, b, c] => (*a, *b, *c) = (T::ZERO, T::ZERO, T::ZERO),
        _ => d.fill(T::ZERO),
    }
}

/// col2im of output rows `rows` of one group of one image: adds each column entry back onto
/// the pixel it was read from. `dx` is `[c_in/groups, h, w]` (accumulated into), `col` as in
/// [`im2col`].
fn col2im<T: Element>(g: &Geometry, col: &[T], dx: &mut [T], rows: std::ops::Range<usize>) {
    let plane = rows.len() * g.output[1];
    col2im_at(g, (col, plane, 0), dx, rows);
}

/// [`col2im`] from columns `at .. at + rows · ow` of a column matrix whose rows are `stride`
/// apart: one of several images side by side.
fn col2im_at<T: Element>(
    g: &Geometry,
    (col, stride, at): (&[T], usize, usize),
    dx: &mut [T],
    rows: std::ops::Range<usize>,
) {
    let [h, w] = g.input;
    let ow = g.output[1];
    let [kh, kw] = g.kernel;
    let [sh, sw] = g.stride;
    let [dh, dw] = g.dilation;
    let plane = rows.len() * ow;
    for c in 0..g.c_in_group() {
        let image = &mut dx[c * h * w..(c + 1) * h * w];
        for ki in 0..kh {
            for kj in 0..kw {
                let row = ((c * kh + ki) * kw + kj) * stride + at;
                let src = &col[row..row + plane];
                let offset = (kj * dw) as isize - g.pad[1] as isize;
                let (lo, hi) = valid_range(ow, sw, offset, w);
                for (r, y) in rows.clone().enumerate() {
                    let iy = (y * sh + ki * dh) as isize - g.pad[0] as isize;
                    if iy < 0 || iy >= h as isize {
                        continue;
                    }
                    let s = &src[r * ow..(r + 1) * ow];
                    let d = &mut image[iy as usize * w..(iy as usize + 1) * w];
                    if hi == lo {
                        continue;
                    } else if sw == 1 {
                        let start = (lo as isize + offset) as usize;
                        for (dst, v) in d[start..start + (hi - lo)].iter_mut().zip(&s[lo..hi]) {
                            *dst += *v;
                        }
                    } else {
                        for o in lo..hi {
                            d[((o * sw) as isize + offset) as usize] += s[o];
                        }
                    }
                }
            }
        }
    }
}

/// `dst (m × n) = [dst +] lhs (m × k) · rhs (k × n)`, each matrix given by its row and column
/// strides (`dst`'s rows `dst_rs` apart, its columns adjacent).
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul<T: Element>(
    [m, n, k]: [usize; 3],
    (dst, dst_rs): (&mut [T], usize),
    accumulate: bool,
    lhs: &[T],
    [lhs_rs, lhs_cs]: [usize; 2],
    rhs: &[T],
    [rhs_rs, rhs_cs]: [usize; 2],
    parallelism: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    debug_assert!(dst.len() >= (m - 1) * dst_rs + n);
    debug_assert!(k == 0 || lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs);
    debug_assert!(k == 0 || rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs);
    // gemm turns every product so that `dst`'s adjacent elements run down its columns: here
    // it computes dstᵀ = rhsᵀ · lhsᵀ, with `rhs`'s columns as its left operand. Its
    // micro-kernel reads that operand a vector of adjacent elements at a time, so gemm first
    // copies (packs) it, one element at a time, unless `rhs`'s columns are adjacent
    // (`rhs_cs == 1`); a convolution's caller lays its operands out so that they are.
    // SAFETY: the strides and sizes above address only elements inside the three slices (checked
    // in debug builds; every caller passes the shapes of a `Geometry` whose buffers it sized),
    // and `dst` is borrowed mutably, so it aliases neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            T::ONE,
            T::ONE,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// The forward convolution: `x` `[n, c_in, h, w]`, `weight` `[c_out, c_in/groups, kh, kw]`,
/// optional `bias` `[c_out]`; returns `[n, c_out, oh, ow]`.
pub fn forward<T: Element>(g: &Geometry, x: &[T], weight: &[T], bias: Option<&[T]>) -> Vec<T> {
    let (chunk, parallelism) = plan(g.batch);
    let per = g.images_per_gemm(chunk);
    if super::fast_paths_enabled() {
        if winograd_takes(g) {
            return super::winograd::forward(g, x, weight, bias);
        }
        if super::direct::forward_applies::<T>(g) {
            return super::direct::forward(g, x, weight, bias);
        }
    }
    if per > 1 {
        return forward_side_by_side(g, x, weight, bias, chunk, per);
    }
    let mut out = vec![T::ZERO; g.output_len()];
    let Sizes {
        image_in,
        image_out,
        depth,
        plane,
        cog,
        in_group,
        ow,
    } = g.sizes();
    if image_out == 0 {
        return out;
    }
    out.par_chunks_mut(chunk * image_out)
        .enumerate()
        .for_each(|(ci, outs)| {
            T::with_scratch(g.column_len(), |col| {
                for (i, y) in outs.chunks_mut(image_out).enumerate() {
                    let n = ci * chunk + i;
                    let image = &x[n * image_in..(n + 1) * image_in];
                    if let Some(bias) = bias {
                        for (row, b) in y.chunks_mut(plane).zip(bias) {
                            row.fill(*b);
                        }
                    }
                    for grp in 0..g.groups {
                        let xg = &image[grp * in_group..(grp + 1) * in_group];
                        let wg = &weight[grp * cog * depth..(grp + 1) * cog * depth];
                        let yg = &mut y[grp * cog * plane..(grp + 1) * cog * plane];
                        if g.pointwise() {
                            let shape = [cog, plane, depth];
                            let lhs = [depth, 1];
                            matmul(
                                shape,
                                (yg, plane),
                                bias.is_some(),
                                wg,
                                lhs,
                                xg,
                                [plane, 1],
                                parallelism,
                            );
                            continue;
                        }
                        for rows in g.tiles() {
                            let cols = rows.len() * ow;
                            let start = rows.start * ow;
                            im2col(g, xg, col, rows);
                            matmul(
                                [cog, cols, depth],
                                (&mut yg[start..], plane),
                                bias.is_some(),
                                wg,
                                [depth, 1],
                                col,
                                [cols, 1],
                                parallelism,
                            );
                        }
                    }
                }
            });
        });
    out
}

/// [`forward`] with `per` images' column matrices side by side in each GEMM (one group,
/// whole images; see [`Geometry::images_per_gemm`]), each thread taking `chunk` images.
fn forward_side_by_side<T: Element>(
    g: &Geometry,
    x: &[T],
    weight: &[T],
    bias: Option<&[T]>,
    chunk: usize,
    per: usize,
) -> Vec<T> {
    let mut out = vec![T::ZERO; g.output_len()];
    let Sizes {
        image_in,
        image_out,
        depth,
        plane,
        ..
    } = g.sizes();
    let c_out = g.c_out;
    let (col_len, product_len) = (depth * per * plane, c_out * per * plane);
    by_image_groups(
        &mut out,
        image_out,
        [chunk, per],
        col_len + product_len,
        |first, ys, buffer| {
            let (col, product) = buffer.split_at_mut(col_len);
            let images = ys.len() / image_out;
            let cols = images * plane;
            for i in 0..images {
                let image = &x[(first + i) * image_in..(first + i + 1) * image_in];
                im2col_at(g, image, (col, cols, i * plane), 0..g.output[0]);
            }
            // [c_out, images · plane], then each image's planes to its place.
            matmul(
                [c_out, cols, depth],
                (product, cols),
                false,
                weight,
                [depth, 1],
                col,
                [cols, 1],
                Parallelism::None,
            );
            for (i, y) in ys.chunks_mut(image_out).enumerate() {
                for (o, row) in y.chunks_mut(plane).enumerate() {
                    let from = &product[o * cols + i * plane..o * cols + (i + 1) * plane];
                    match bias {
                        Some(bias) => {
                            for (d, v) in row.iter_mut().zip(from) {
                                *d = *v + bias[o];
                            }
                        }
                        None => row.copy_from_slice(from),
                    }
                }
            }
        },
    );
    out
}

/// Runs `f(first image, the outputs of its group, scratch)` over groups of up to `per`
/// images: `out` (`image` elements per image) in contiguous chunks of `chunk` images over the
/// threads, each chunk in groups of `per`, with `scratch` elements of the thread's scratch
/// buffer (see [`Element::with_scratch`]).
fn by_image_groups<T: Element>(
    out: &mut [T],
    image: usize,
    [chunk, per]: [usize; 2],
    scratch: usize,
    f: impl Fn(usize, &mut [T], &mut [T]) + Sync,
) {
    if image == 0 {
        return;
    }
    out.par_chunks_mut(chunk * image)
        .enumerate()
        .for_each(|(ci, outs)| {
            T::with_scratch(scratch, |buffer| {
                for (gi, group) in outs.chunks_mut(per * image).enumerate() {
                    f(ci * chunk + gi * per, group, buffer);
                }
            });
        });
}

/// The gradient with respect to the input: `grad` `[n, c_out, oh, ow]`, `weight` as in
/// [`forward`]; returns `[n, c_in, h, w]`.
pub fn input_grad<T: Element>(g: &Geometry, weight: &[T], grad: &[T]) -> Vec<T> {
    if let Some(t) = g.transposed() {
        // The same multiplies as Wᵀ · dY + col2im, but as the forward convolution `t`:
        // Winograd where `t` takes it (reading the kernel turned in place), otherwise
        // im2col + a GEMM whose inner dimension is c_out·kh·kw instead of c_out (16 in
        // ResNet-20's first stage, where that GEMM mostly wrote its output), and no
        // scattered accumulation.
        // (Winograd takes it wherever it applies: on ResNet-18's 512-channel 7×7 layer at
        // batch 8, where images side by side beat it in the forward pass, it ran at 214–240
        // GFLOP/s against 167 through the forward side by side and 133 as Wᵀ · dY + col2im.)
        if super::fast_paths_enabled() && super::winograd::forward_applies(&t) {
            return super::winograd::input_grad(&t, weight, grad);
        }
        return forward(&t, grad, &transposed_weight(g, weight), None);
    }
    let (chunk, parallelism) = plan(g.batch);
    let per = g.images_per_gemm(chunk);
    if per > 1 {
        return input_grad_side_by_side(g, weight, grad, chunk, per);
    }
    let Sizes {
        image_in,
        image_out,
        depth,
        plane,
        cog,
        in_group,
        ow,
    } = g.sizes();
    let mut dx = vec![T::ZERO; g.batch * image_in];
    if image_in == 0 {
        return dx;
    }
    dx.par_chunks_mut(chunk * image_in)
        .enumerate()
        .for_each(|(ci, dxs)| {
            T::with_scratch(g.column_len(), |col| {
                for (i, dxi) in dxs.chunks_mut(image_in).enumerate() {
                    let n = ci * chunk + i;
                    let dy = &grad[n * image_out..(n + 1) * image_out];
                    for grp in 0..g.groups {
                        let dxg = &mut dxi[grp * in_group..(grp + 1) * in_group];
                        let wg = &weight[grp * cog * depth..(grp + 1) * cog * depth];
                        let dyg = &dy[grp * cog * plane..(grp + 1) * cog * plane];
                        // Wᵀ (depth × c_out/g): element (i, p) is w[p·depth + i].
                        if g.pointwise() {
                            let shape = [depth, plane, cog];
                            matmul(
                                shape,
                                (dxg, plane),
                                false,
                                wg,
                                [1, depth],
                                dyg,
                                [plane, 1],
                                parallelism,
                            );
                            continue;
                        }
                        for rows in g.tiles() {
                            let cols = rows.len() * ow;
                            let start = rows.start * ow;
                            matmul(
                                [depth, cols, cog],
                                (col, cols),
                                false,
                                wg,
                                [1, depth],
                                &dyg[start..],
                                [plane, 1],
                                parallelism,
                            );
                            col2im(g, col, dxg, rows);
                        }
                    }
                }
            });
        });
    dx
}

/// [`input_grad`] with `per` images side by side in each GEMM, as [`forward_side_by_side`]:
/// the images' output gradients are copied next to each other (`[c_out, per · plane]`), one
/// GEMM with `Wᵀ` gives their column matrices side by side, and each goes back onto its image
/// by col2im. One image alone was a GEMM of 49 or 196 columns that packed all of `W` again.
fn input_grad_side_by_side<T: Element>(
    g: &Geometry,
    weight: &[T],
    grad: &[T],
    chunk: usize,
    per: usize,
) -> Vec<T> {
    let Sizes {
        image_in,
        image_out,
        depth,
        plane,
        ..
    } = g.sizes();
    let c_out = g.c_out;
    let mut dx = vec![T::ZERO; g.batch * image_in];
    let (col_len, dys_len) = (depth * per * plane, c_out * per * plane);
    by_image_groups(
        &mut dx,
        image_in,
        [chunk, per],
        col_len + dys_len,
        |first, dxg, buffer| {
            let (col, dys) = buffer.split_at_mut(col_len);
            let images = dxg.len() / image_in;
            let cols = images * plane;
            for i in 0..images {
                let dy = &grad[(first + i) * image_out..(first + i + 1) * image_out];
                for (o, from) in dy.chunks_exact(plane).enumerate() {
                    dys[o * cols + i * plane..o * cols + (i + 1) * plane].copy_from_slice(from);
                }
            }
            // Wᵀ (depth × c_out): element (i, p) is w[p·depth + i].
            matmul(
                [depth, cols, c_out],
                (col, cols),
                false,
                weight,
                [1, depth],
                dys,
                [cols, 1],
                Parallelism::None,
            );
            for (i, dxi) in dxg.chunks_mut(image_in).enumerate() {
                col2im_at(g, (col, cols, i * plane), dxi, 0..g.output[0]);
            }
        },
    );
    dx
}

/// The kernel of [`Geometry::transposed`]: `weight` `[c_out, c_in/groups, kh, kw]` turned 180°
/// with each group's channel axes swapped, `[c_in, c_out/groups, kh, kw]`.
fn transposed_weight<T: Element>(g: &Geometry, weight: &[T]) -> Vec<T> {
    let [kh, kw] = g.kernel;
    let (cig, cog, taps) = (g.c_in_group(), g.c_out_group(), kh * kw);
    let mut out = vec![T::ZERO; weight.len()];
    for grp in 0..g.groups {
        for o in 0..cog {
            for i in 0..cig {
                let src = ((grp * cog + o) * cig + i) * taps;
                let dst = ((grp * cig + i) * cog + o) * taps;
                for t in 0..taps {
                    out[dst + taps - 1 - t] = weight[src + t];
                }
            }
        }
    }
    out
}

/// The gradient with respect to the weight: `x` and `grad` as in [`forward`] and
/// [`input_grad`]; returns `[c_out, c_in/groups, kh, kw]`.
pub fn weight_grad<T: Element>(g: &Geometry, x: &[T], grad: &[T]) -> Vec<T> {
    let side_by_side = g.small_maps() && g.batch > 1 && g.weight_len() >= WEIGHT_GRAD_SIDE_BY_SIDE;
    if super::fast_paths_enabled() {
        // Winograd where it takes the forward pass too, and where images side by side do
        // not apply here (per image, the GEMMs below were slower).
        if super::winograd::forward_applies(g) && (winograd_takes(g) || !side_by_side) {
            return super::winograd::weight_grad(g, x, grad);
        }
        if super::direct::applies::<T>(g) {
            return super::direct::weight_grad(g, x, grad);
        }
    }
    if side_by_side {
        return weight_grad_side_by_side(g, x, grad);
    }
    let (chunk, parallelism) = plan(g.batch);
    let Sizes {
        image_in,
        image_out,
        depth,
        plane,
        cog,
        in_group,
        ow,
    } = g.sizes();
    let weight_len = g.weight_len();
    if g.batch == 0 || image_out == 0 {
        return vec![T::ZERO; weight_len];
    }
    // Each group's dWᵀ (depth × c_out/g) = Σ over images of cols (depth × pixels) · dYᵀ
    // (pixels × c_out/g). Both cols and dY keep pixels adjacent; gemm wants its right
    // operand's columns adjacent (see `matmul`), so each image's dY is first transposed,
    // in 8×8 register blocks, and dW is turned back once at the end. (Given dY as it is,
    // gemm packed it one element at a time: 18% of a ResNet-20 training step.)
    let partial = |ci: usize, images: usize| {
        let mut dwt = vec![T::ZERO; weight_len];
        let mut dyt = vec![T::ZERO; cog * plane];
        T::with_scratch(g.column_len(), |col| {
            for i in 0..images {
                let n = ci * chunk + i;
                let image = &x[n * image_in..(n + 1) * image_in];
                let dy = &grad[n * image_out..(n + 1) * image_out];
                for grp in 0..g.groups {
                    let xg = &image[grp * in_group..(grp + 1) * in_group];
                    let dyg = &dy[grp * cog * plane..(grp + 1) * cog * plane];
                    let dwg = &mut dwt[grp * cog * depth..(grp + 1) * cog * depth];
                    super::simd::channels_last(dyg, plane, plane, cog, &mut dyt);
                    if g.pointwise() {
                        matmul(
                            [depth, cog, plane],
                            (dwg, cog),
                            i > 0,
                            xg,
                            [plane, 1],
                            &dyt,
                            [cog, 1],
                            parallelism,
                        );
                        continue;
                    }
                    for rows in g.tiles() {
                        let accumulate = i > 0 || rows.start > 0;
                        let cols = rows.len() * ow;
                        let start = rows.start * ow;
                        im2col(g, xg, col, rows);
                        matmul(
                            [depth, cog, cols],
                            (&mut *dwg, cog),
                            accumulate,
                            col,
                            [cols, 1],
                            &dyt[start * cog..],
                            [cog, 1],
                            parallelism,
                        );
                    }
                }
            }
        });
        dwt
    };
    let chunks = g.batch.div_ceil(chunk);
    let dwt = sum_partials(
        (0..chunks)
            .into_par_iter()
            .map(|ci| partial(ci, chunk.min(g.batch - ci * chunk))),
        weight_len,
    );
    let mut dw = vec![T::ZERO; weight_len];
    for (from, to) in dwt.chunks(cog * depth).zip(dw.chunks_mut(cog * depth)) {
        super::simd::channels_last(from, cog, cog, depth, to);
    }
    dw
}

/// The fewest weights for which [`weight_grad`] puts the images of small maps side by side:
/// 2²⁰, `dWᵀ` of 4 MiB and more, which no longer stays in cache between per-image GEMMs.
/// Smaller ones kept their per-thread sums: ResNet-18's 128 → 256 3×3/2 (294,912 weights)
/// at batch 8 ran at 233 GFLOP/s per image against 211 side by side.
const WEIGHT_GRAD_SIDE_BY_SIDE: usize = 1 << 20;

/// Elements of the column matrix of one [`weight_grad_side_by_side`] GEMM: 8 MiB of `f32`.
const WEIGHT_GRAD_COLUMNS: usize = 4 * TILE_ELEMENTS;

/// [`weight_grad`] on small maps, with the images side by side: `dWᵀ` (depth × c_out) =
/// Σ over groups of images of their column matrices side by side (depth × images · plane) ·
/// their `dYᵀ` one under another (images · plane × c_out). Each GEMM has as many images as fit
/// [`WEIGHT_GRAD_COLUMNS`] and runs on all threads; im2col splits the channels over them.
/// Per image, the GEMM's inner dimension was only 49 or 196 pixels while it read and wrote
/// all of `dWᵀ` (up to 4,608 × 512) every time, and each thread summed a copy of it.
fn weight_grad_side_by_side<T: Element>(g: &Geometry, x: &[T], grad: &[T]) -> Vec<T> {
    let Sizes {
        image_in,
        image_out,
        depth,
        plane,
        ..
    } = g.sizes();
    let (c_out, c_in) = (g.c_out, g.c_in);
    let (taps, in_plane) = (g.kernel[0] * g.kernel[1], g.in_plane());
    let weight_len = g.weight_len();
    let threads = rayon::current_num_threads().max(1);
    let per = (WEIGHT_GRAD_COLUMNS / (depth * plane).max(1)).clamp(1, g.batch.max(1));
    let channels = c_in.div_ceil(threads);
    let mut dwt = vec![T::ZERO; weight_len];
    T::with_scratch(depth * per * plane + per * plane * c_out, |buffer| {
        let (col, dyt) = buffer.split_at_mut(depth * per * plane);
        for first in (0..g.batch).step_by(per) {
            let images = per.min(g.batch - first);
            let cols = images * plane;
            let col = &mut col[..depth * cols];
            // The channels over the threads, each writing its rows of every image's columns.
            col.par_chunks_mut(channels * taps * cols)
                .enumerate()
                .for_each(|(part, rows)| {
                    let c0 = part * channels;
                    let sub = Geometry {
                        c_in: rows.len() / (taps * cols),
                        ..*g
                    };
                    for i in 0..images {
                        let image = &x[(first + i) * image_in + c0 * in_plane..];
                        let image = &image[..sub.c_in * in_plane];
                        im2col_at(&sub, image, (&mut *rows, cols, i * plane), 0..g.output[0]);
                    }
                });
            dyt[..cols * c_out]
                .par_chunks_mut(plane * c_out)
                .enumerate()
                .for_each(|(i, d)| {
                    let dy = &grad[(first + i) * image_out..(first + i + 1) * image_out];
                    super::simd::channels_last(dy, plane, plane, c_out, d);
                });
            matmul(
                [depth, c_out, cols],
                (&mut dwt, c_out),
                first > 0,
                col,
                [cols, 1],
                &dyt[..cols * c_out],
                [c_out, 1],
                if threads > 1 {
                    Parallelism::Rayon(threads)
                } else {
                    Parallelism::None
                },
            );
        }
    });
    // dWᵀ back to [c_out, depth], the output channels over the threads.
    let mut dw = vec![T::ZERO; weight_len];
    let outputs = c_out.div_ceil(threads);
    dw.par_chunks_mut(outputs * depth)
        .enumerate()
        .for_each(|(part, to)| {
            let o0 = part * outputs;
            super::simd::channels_last(&dwt[o0..], c_out, to.len() / depth, depth, to);
        });
    dw
}

/// The element-wise sum of the threads' `partials` (each `len` long): zeros when there are
/// none.
pub(super) fn sum_partials<T: Element>(
    partials: impl ParallelIterator<Item = Vec<T>>,
    len: usize,
) -> Vec<T> {
    partials
        .reduce_with(|mut a, b| {
            for (a, b) in a.iter_mut().zip(&b) {
                *a += *b;
            }
            a
        })
        .unwrap_or_else(|| vec![T::ZERO; len])
}

/// The ceiling these kernels run against: GFLOP/s of one `n × n × n` `f32` GEMM on the same
/// micro-kernels, threaded over the rayon pool (best of `repeats`).
pub fn sgemm_gflops(n: usize, repeats: usize) -> f64 {
    let a: Vec<f32> = (0..n * n).map(|i| (i % 17) as f32 * 0.01).collect();
    let b: Vec<f32> = (0..n * n).map(|i| (i % 13) as f32 * 0.01).collect();
    let mut c = vec![0.0f32; n * n];
    let threads = rayon::current_num_threads().max(1);
    let mut best = f64::INFINITY;
    for _ in 0..repeats.max(1) {
        let t = std::time::Instant::now();
        matmul(
            [n, n, n],
            (&mut c, n),
            false,
            &a,
            [n, 1],
            &b,
            [n, 1],
            Parallelism::Rayon(threads),
        );
        best = best.min(t.elapsed().as_secs_f64());
    }
    2.0 * (n * n * n) as f64 / best / 1e9
}

/// Element conversions for the batch-norm statistics, accumulated in `f64`.
pub trait Float: Element + PartialOrd {
    /// To `f64`.
    fn to_f64(self) -> f64;
    /// From `f64`.
    fn from_f64(v: f64) -> Self;
}

impl Float for f32 {
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }
}

impl Float for f64 {
    fn to_f64(self) -> f64 {
        self
    }
    fn from_f64(v: f64) -> Self {
        v
    }
}

/// The planes of channel `c` in an `[n, channels, plane]` buffer.
fn planes<T>(x: &[T], channels: usize, plane: usize, c: usize) -> impl Iterator<Item = &[T]> {
    x.chunks(channels * plane)
        .map(move |image| &image[c * plane..(c + 1) * plane])
}

/// Applies `f(image index, that image's values for all channels)` to each image of an
/// `[n, channels, plane]` output in parallel.
fn per_image<T: Send>(out: &mut [T], image: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    if image == 0 {
        return;
    }
    out.par_chunks_mut(image)
        .enumerate()
        .for_each(|(n, y)| f(n, y));
}

/// What [`PlaneSums`] adds up.
#[derive(Clone, Copy, PartialEq)]
enum Sum {
    /// `[Σ a, 0]`.
    Values,
    /// `[Σ (a − shift)², 0]`.
    Squares,
    /// `[Σ b, Σ b · (a − shift)]`: batch norm's backward, `a` the input, `b` its gradient.
    Gradients,
}

/// Two sums over one plane (`a`, and `b` of the same length), in `T` across 16 lanes within
/// blocks of 1,024 values and in `f64` across blocks, so that the compiler vectorizes them in
/// the widest registers while a long plane keeps `f64`'s accuracy. (Summed in `f64` in the
/// x86-64 baseline, two lanes wide, batch norm's sums had been a tenth of a ResNet-20
/// training step.)
struct PlaneSums<'a, T> {
    a: &'a [T],
    b: &'a [T],
    shift: T,
    sum: Sum,
}

impl<T: Float> super::simd::Kernel for PlaneSums<'_, T> {
    type Output = [f64; 2];

    #[inline(always)]
    fn run(self) -> [f64; 2] {
        const LANES: usize = 16;
        const BLOCK: usize = 64 * LANES;
        let Self { a, b, shift, sum } = self;
        let mut total = [0.0f64; 2];
        for (ab, bb) in a.chunks(BLOCK).zip(b.chunks(BLOCK)) {
            let mut acc = [[T::ZERO; LANES]; 2];
            let (ac, bc) = (ab.chunks_exact(LANES), bb.chunks_exact(LANES));
            let (a_rest, b_rest) = (ac.remainder(), bc.remainder());
            // One loop per sum, on whole arrays (a `match` inside the loop, or indexing the
            // chunks, left it scalar).
            match sum {
                Sum::Values => {
                    for av in ac {
                        let av: [T; LANES] = super::simd::load(av, 0);
                        for l in 0..LANES {
                            acc[0][l] += av[l];
                        }
                    }
                }
                Sum::Squares => {
                    for av in ac {
                        let av: [T; LANES] = super::simd::load(av, 0);
                        for l in 0..LANES {
                            let d = av[l] - shift;
                            acc[0][l] += d * d;
                        }
                    }
                }
                Sum::Gradients => {
                    for (av, bv) in ac.zip(bc) {
                        let av: [T; LANES] = super::simd::load(av, 0);
                        let bv: [T; LANES] = super::simd::load(bv, 0);
                        for l in 0..LANES {
                            acc[0][l] += bv[l];
                            acc[1][l] += bv[l] * (av[l] - shift);
                        }
                    }
                }
            }
            for (l, (&x, &y)) in a_rest.iter().zip(b_rest).enumerate() {
                match sum {
                    Sum::Values => acc[0][l] += x,
                    Sum::Squares => acc[0][l] += (x - shift) * (x - shift),
                    Sum::Gradients => {
                        acc[0][l] += y;
                        acc[1][l] += y * (x - shift);
                    }
                }
            }
            for (t, lanes) in total.iter_mut().zip(&acc) {
                for v in lanes {
                    *t += v.to_f64();
                }
            }
        }
        total
    }
}

/// [`PlaneSums`] of channel `c` over the images of the `[n, channels, plane]` buffers `a` and
/// `b`, in the widest vectors the CPU has.
fn channel_sums<T: Float>(
    (a, b): (&[T], &[T]),
    [channels, plane]: [usize; 2],
    c: usize,
    shift: f64,
    sum: Sum,
) -> [f64; 2] {
    let shift = T::from_f64(shift);
    let mut total = [0.0; 2];
    for (a, b) in planes(a, channels, plane, c).zip(planes(b, channels, plane, c)) {
        let [p, q] = super::simd::widest(PlaneSums { a, b, shift, sum });
        total[0] += p;
        total[1] += q;
    }
    total
}

/// Values per channel (`n · plane`) of an `[n, channels, plane]` buffer of `len` elements, at
/// least 1.
fn per_channel(len: usize, [channels, plane]: [usize; 2]) -> f64 {
    (len / (channels * plane).max(1) * plane).max(1) as f64
}

/// What batch norm's output pass applies after the affine map, in the same pass: nothing, or
/// a ReLU, with a residual (same shape as the input) added before it, as ResNet's blocks end.
#[derive(Debug, Clone, Copy)]
pub enum Epilogue<'a, T> {
    /// `y`.
    None,
    /// `max(y, 0)`, and `max(y + residual, 0)` with a residual.
    Relu(Option<&'a [T]>),
}

/// ReLU as Burn's: 0 where `v ≤ 0`, `v` elsewhere (NaN stays NaN).
#[inline(always)]
fn relu<T: Float>(v: T) -> T {
    if v <= T::ZERO { T::ZERO } else { v }
}

/// ReLU's backward from its output, as Burn's: `grad` where `output > 0` (or NaN), 0 where
/// `output ≤ 0`; one threaded pass. [`relu_backward_in_place`] writes over `grad` instead.
pub fn relu_backward<T: Float>(output: &[T], grad: &[T]) -> Vec<T> {
    let mut out = grad.to_vec();
    relu_backward_in_place(output, &mut out);
    out
}

/// [`relu_backward`] written over `grad` (no new buffer: the backward pass of a network owns
/// most of its gradients alone).
pub fn relu_backward_in_place<T: Float>(output: &[T], grad: &mut [T]) {
    assert_eq!(
        output.len(),
        grad.len(),
        "relu_backward: output and gradient sizes"
    );
    const CHUNK: usize = 1 << 14;
    grad.par_chunks_mut(CHUNK)
        .zip(output.par_chunks(CHUNK))
        .for_each(|(g, o)| {
            for (g, o) in g.iter_mut().zip(o) {
                // Both loaded first, so the choice is a vector select, not a branch (which
                // mispredicts on ReLU's half-zero masks).
                let (o, v) = (*o, *g);
                *g = if o <= T::ZERO { T::ZERO } else { v };
            }
        });
}

/// `y = x · γ/√(var + ε) + (β − mean · γ/√(var + ε))` per channel, then `epilogue`, in one
/// threaded pass; `stats` are each channel's `(mean, variance)`.
fn normalize<T: Float>(
    x: &[T],
    [channels, plane]: [usize; 2],
    gamma: &[T],
    beta: &[T],
    stats: &[(f64, f64)],
    epsilon: f64,
    epilogue: Epilogue<'_, T>,
) -> Vec<T> {
    if let Epilogue::Relu(Some(residual)) = epilogue {
        assert_eq!(
            residual.len(),
            x.len(),
            "batch_norm: residual and input sizes"
        );
    }
    let affine: Vec<(T, T)> = stats
        .iter()
        .zip(gamma.iter().zip(beta))
        .map(|(&(mean, var), (g, b))| {
            let scale = g.to_f64() / (var + epsilon).sqrt();
            (T::from_f64(scale), T::from_f64(b.to_f64() - mean * scale))
        })
        .collect();
    let image = channels * plane;
    if x.is_empty() {
        return Vec::new();
    }
    assert!(
        image > 0 && x.len().is_multiple_of(image) && affine.len() == channels,
        "batch_norm: input of {} values, not whole images of {channels} channels × {plane}",
        x.len()
    );
    let mut out = Vec::with_capacity(x.len());
    // Every element of the output is written below (one value per input value), so it is not
    // zeroed first: that was a whole pass over the output's memory.
    let y = &mut out.spare_capacity_mut()[..x.len()];
    let fill = |n: usize, y: &mut [std::mem::MaybeUninit<T>]| {
        let xs = &x[n * image..(n + 1) * image];
        for (c, ((yc, xc), &(scale, shift))) in y
            .chunks_mut(plane)
            .zip(xs.chunks(plane))
            .zip(&affine)
            .enumerate()
        {
            match epilogue {
                Epilogue::None => {
                    for (o, v) in yc.iter_mut().zip(xc) {
                        o.write(*v * scale + shift);
                    }
                }
                Epilogue::Relu(None) => {
                    for (o, v) in yc.iter_mut().zip(xc) {
                        o.write(relu(*v * scale + shift));
                    }
                }
                Epilogue::Relu(Some(residual)) => {
                    let start = n * image + c * plane;
                    let rc = &residual[start..start + yc.len()];
                    for ((o, v), r) in yc.iter_mut().zip(xc).zip(rc) {
                        o.write(relu(*v * scale + shift + *r));
                    }
                }
            }
        }
    };
    per_image(y, image, fill);
    // SAFETY: `x.len()` is a whole number of images of `channels` planes (asserted above),
    // and `fill` wrote every element of each: plane `c` of `y` beside plane `c` of `xs`, of
    // the same length, with one of the `channels` affine maps, one value per element.
    unsafe { out.set_len(x.len()) };
    out
}

/// Batch normalization with the batch's own statistics, in one pass for the mean, one for the
/// (biased) variance and one for the output with its `epilogue`, each threaded (Burn's
/// generic version transposes the batch twice and makes five passes). `x` is
/// `[n, channels, plane]`; returns the output, the mean and the variance.
pub fn batch_norm_train<T: Float>(
    x: &[T],
    [channels, plane]: [usize; 2],
    gamma: &[T],
    beta: &[T],
    epsilon: f64,
    epilogue: Epilogue<'_, T>,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let count = per_channel(x.len(), [channels, plane]);
    let stats: Vec<(f64, f64)> = (0..channels)
        .into_par_iter()
        .map(|c| {
            let sums = |shift, sum| channel_sums((x, x), [channels, plane], c, shift, sum)[0];
            let mean = sums(0.0, Sum::Values) / count;
            (mean, sums(mean, Sum::Squares) / count)
        })
        .collect();
    let out = normalize(x, [channels, plane], gamma, beta, &stats, epsilon, epilogue);
    let mean = stats.iter().map(|s| T::from_f64(s.0)).collect();
    let var = stats.iter().map(|s| T::from_f64(s.1)).collect();
    (out, mean, var)
}

/// Gradients of [`batch_norm_train`] with respect to `x`, `gamma` and `beta`, given the
/// statistics it returned: one threaded pass for the two sums per channel, one for `dx`.
/// [`batch_norm_train_backward_in_place`] writes `dx` over `grad` instead.
pub fn batch_norm_train_backward<T: Float>(
    x: &[T],
    dims: [usize; 2],
    gamma: &[T],
    stats: (&[T], &[T]),
    epsilon: f64,
    grad: &[T],
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let mut dx = grad.to_vec();
    let (dgamma, dbeta) =
        batch_norm_train_backward_in_place(x, dims, gamma, stats, epsilon, &mut dx);
    (dx, dgamma, dbeta)
}

/// [`batch_norm_train_backward`] with `dx` written over `grad` (each `dx` value depends only
/// on the `grad` value it replaces, once the per-channel sums are taken); returns the
/// gradients of `gamma` and `beta`.
pub fn batch_norm_train_backward_in_place<T: Float>(
    x: &[T],
    [channels, plane]: [usize; 2],
    gamma: &[T],
    (mean, var): (&[T], &[T]),
    epsilon: f64,
    grad: &mut [T],
) -> (Vec<T>, Vec<T>) {
    assert_eq!(grad.len(), x.len(), "batch_norm: gradient and input sizes");
    let count = per_channel(x.len(), [channels, plane]);
    let inv_std: Vec<f64> = var
        .iter()
        .map(|v| 1.0 / (v.to_f64() + epsilon).sqrt())
        .collect();
    // Per channel: Σ dy and Σ dy · x̂.
    let sums: Vec<(f64, f64)> = (0..channels)
        .into_par_iter()
        .map(|c| {
            let (m, s) = (mean[c].to_f64(), inv_std[c]);
            let [dy, dy_x] = channel_sums((x, grad), [channels, plane], c, m, Sum::Gradients);
            (dy, dy_x * s)
        })
        .collect();
    // dx = γ/σ · (dy − mean(dy) − x̂ · mean(dy · x̂)) = a·dy + b·x + c per channel.
    let coeffs: Vec<(T, T, T)> = (0..channels)
        .map(|c| {
            let k = gamma[c].to_f64() * inv_std[c];
            let (mean_dy, mean_dy_xhat) = (sums[c].0 / count, sums[c].1 / count);
            let b = -k * mean_dy_xhat * inv_std[c];
            let c0 = -k * mean_dy - b * mean[c].to_f64();
            (T::from_f64(k), T::from_f64(b), T::from_f64(c0))
        })
        .collect();
    let image = channels * plane;
    per_image(grad, image, |n, d| {
        let xs = &x[n * image..(n + 1) * image];
        for ((dc, xc), &(a, b, c0)) in d.chunks_mut(plane).zip(xs.chunks(plane)).zip(&coeffs) {
            for (g, v) in dc.iter_mut().zip(xc) {
                *g = a * *g + b * *v + c0;
            }
        }
    });
    let dgamma = sums.iter().map(|s| T::from_f64(s.1)).collect();
    let dbeta = sums.iter().map(|s| T::from_f64(s.0)).collect();
    (dgamma, dbeta)
}

/// Batch normalization with given statistics (inference), in one threaded pass:
/// `y = x · γ/√(var + ε) + (β − mean · γ/√(var + ε))`, then `epilogue`.
pub fn batch_norm<T: Float>(
    x: &[T],
    [channels, plane]: [usize; 2],
    [gamma, beta, mean, var]: [&[T]; 4],
    epsilon: f64,
    epilogue: Epilogue<'_, T>,
) -> Vec<T> {
    let stats: Vec<(f64, f64)> = mean
        .iter()
        .zip(var)
        .map(|(m, v)| (m.to_f64(), v.to_f64()))
        .collect();
    normalize(x, [channels, plane], gamma, beta, &stats, epsilon, epilogue)
}

#[cfg(test)]
mod tests {
    use super::{
        Epilogue, batch_norm_train, batch_norm_train_backward, batch_norm_train_backward_in_place,
        relu_backward, relu_backward_in_place,
    };

    #[test]
    fn relu_backward_in_place_masks_the_gradient() {
        let output: Vec<f32> = (0..37).map(|i| (i as f32 - 18.0) * 0.5).collect();
        let grad: Vec<f32> = (0..37).map(|i| i as f32 * 0.25 - 3.0).collect();
        let expected: Vec<f32> = output
            .iter()
            .zip(&grad)
            .map(|(o, g)| if *o <= 0.0 { 0.0 } else { *g })
            .collect();
        assert_eq!(relu_backward(&output, &grad), expected);
        let mut own = grad.clone();
        relu_backward_in_place(&output, &mut own);
        assert_eq!(own, expected);
    }

    #[test]
    fn batch_norm_backward_in_place_equals_the_formula() {
        // [2 images, 3 channels, 5 values]: dx = γ/σ · (dy − mean(dy) − x̂ · mean(dy · x̂)) per
        // channel, in f64.
        let (channels, plane, images) = (3, 5, 2);
        let x: Vec<f64> = (0..30).map(|i| ((i * 7) % 11) as f64 * 0.3 - 1.0).collect();
        let dy: Vec<f64> = (0..30).map(|i| ((i * 5) % 13) as f64 * 0.2 - 1.1).collect();
        let (gamma, beta) = (vec![0.5, 1.5, -2.0], vec![0.1, 0.2, 0.3]);
        let eps = 1e-5;
        let dims = [channels, plane];
        let (_, mean, var) = batch_norm_train(&x, dims, &gamma, &beta, eps, Epilogue::None);
        let at = |n: usize, c: usize, q: usize| (n * channels + c) * plane + q;
        let mut expected = vec![0.0; 30];
        for c in 0..channels {
            let s = 1.0 / (var[c] + eps).sqrt();
            let points: Vec<(usize, usize)> = (0..images)
                .flat_map(|n| (0..plane).map(move |q| (n, q)))
                .collect();
            let count = points.len() as f64;
            let xhat = |n, q| (x[at(n, c, q)] - mean[c]) * s;
            let mean_dy = points.iter().map(|&(n, q)| dy[at(n, c, q)]).sum::<f64>() / count;
            let mean_dy_xhat = points
                .iter()
                .map(|&(n, q)| dy[at(n, c, q)] * xhat(n, q))
                .sum::<f64>()
                / count;
            for &(n, q) in &points {
                expected[at(n, c, q)] =
                    gamma[c] * s * (dy[at(n, c, q)] - mean_dy - xhat(n, q) * mean_dy_xhat);
            }
        }
        let (dx, dgamma, dbeta) =
            batch_norm_train_backward(&x, [channels, plane], &gamma, (&mean, &var), eps, &dy);
        let mut own = dy.clone();
        let (dgamma_own, dbeta_own) = batch_norm_train_backward_in_place(
            &x,
            [channels, plane],
            &gamma,
            (&mean, &var),
            eps,
            &mut own,
        );
        assert_eq!((dgamma, dbeta), (dgamma_own, dbeta_own));
        for (i, ((a, b), e)) in dx.iter().zip(&own).zip(&expected).enumerate() {
            assert!((a - e).abs() < 1e-12, "dx[{i}]: {a} against {e}");
            assert_eq!(a, b, "dx[{i}]: in place and allocating");
        }
    }
}
