//! Direct convolution for stride-1 layers with few input channels, in `f32` with AVX-512 or
//! AVX2 + FMA.
//!
//! im2col + GEMM is a poor fit for a layer like ResNet-20's first stage (16 → 16, 3×3, at
//! 28×28) or the Fashion-MNIST CNN's first layer (1 → 64, 7×7): the column matrix is 9 or 49
//! times the image, written once and read once for a product with an inner dimension of 144
//! or 49 and only 16 or 64 rows, which leaves the GEMM's micro-kernels mostly loading and
//! storing. Here the products read the image itself, once it is padded (per image, into a
//! thread's scratch buffer) so that every tap of every output pixel is one fixed offset:
//!
//! ```text
//! padded width  pw = ow + kw − 1;  output pixel (oy, ox) at position q = oy·pw + ox
//! input of tap (ky, kx) for position q:   xp[c][q + ky·pw + kx]
//! ```
//!
//! The `kw − 1` positions past each output row are computed and thrown away (7% at 28×28 for
//! 3×3), which lets 16 consecutive positions share one vector load per tap.
//!
//! - **Forward**: a block of 8 output channels × 48 positions is 24 vector accumulators; per
//!   input channel and tap, 3 vector loads of the padded input and 8 broadcasts of the weights
//!   (laid out `[c_out/8][c_in][taps][8]` so the 8 are adjacent) feed 24 FMAs. The bias is
//!   the accumulators' start value.
//! - **Input gradient**: for stride 1 it is the forward of the output gradient with the
//!   kernel turned 180° ([`super::cpu::input_grad`] sends it here through the forward).
//! - **Weight gradient**: `dW[o][c][ky][kx] = Σ_q dYp[o][q] · xp[c][q + ky·pw + kx]`, with
//!   `dYp` the output gradient in the same padded layout (zeros past each row). Blocks of 2
//!   outputs × 9 taps keep 18 vector accumulators; per 16 positions, 2 + 9 loads feed 18
//!   FMAs. The accumulators are added into 16-lane partial sums per weight, summed across
//!   lanes and across the threads' image chunks once at the end.
//!
//! With AVX2 + FMA (16 `ymm` registers of 8 lanes, half of AVX-512's 32 of 16) the same
//! blocks are cut to fit ([`Isa::Avx2`]): the forward block runs as 4 quarters of 4 output
//! channels × 24 positions (12 accumulators, 3 loads and 4 broadcasts per tap, in inline
//! assembly so that all 12 stay in registers: see [`forward_kernel_avx2`]), and the
//! weight gradient takes blocks of 2 outputs × 6 taps (12 accumulators, 2 + 6 loads per 8
//! positions), its sums in the low 8 of each weight's 16 lanes. Both layouts, the padding and
//! the threading are shared, and each output value is summed in the same order, so the two
//! forwards agree bit for bit.
//!
//! On a CPU with neither, or for `f64`, [`applies`] is false and the layer takes the GEMM
//! path.

use super::cpu::Geometry;
use rayon::prelude::*;
use std::any::TypeId;
use std::mem::MaybeUninit;

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Output channels per forward block.
const OB: usize = 8;
/// `f32` lanes per vector.
const LANES: usize = 16;
/// Positions per forward block: three vectors.
const QB: usize = 3 * LANES;
/// Taps per weight-gradient block with AVX-512 (2 × 9 accumulators of 32 registers).
const TB: usize = 9;
/// Taps per weight-gradient block with AVX2 (2 × 6 accumulators of 16 registers).
const TB_AVX2: usize = 6;
/// `f32` lanes of an AVX2 vector.
const LANES_AVX2: usize = 8;

/// The vector instructions a direct kernel is compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512F: 32 registers of 16 `f32` lanes.
    Avx512,
    /// AVX2 with FMA: 16 registers of 8 lanes (every x86-64 CPU since Haswell and Zen).
    Avx2,
}

impl Isa {
    /// The widest set this CPU runs, or `None` (no AVX2 + FMA, or not x86-64).
    pub fn detect() -> Option<Isa> {
        [Isa::Avx512, Isa::Avx2]
            .into_iter()
            .find(|isa| isa.supported())
    }

    /// Whether this CPU runs the kernels compiled for `self`.
    pub fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Isa::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
                Isa::Avx2 => {
                    std::arch::is_x86_feature_detected!("avx2")
                        && std::arch::is_x86_feature_detected!("fma")
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = self;
            false
        }
    }

    /// Taps per weight-gradient block.
    fn weight_taps(self) -> usize {
        match self {
            Isa::Avx512 => TB,
            Isa::Avx2 => TB_AVX2,
        }
    }
}
/// The largest `c_in · kh · kw` sent here: past it, the GEMM's inner dimension is long
/// enough for its micro-kernels to run near their peak.
const MAX_DEPTH: usize = 256;
/// The most input channels sent here.
const MAX_C_IN: usize = 16;

/// Whether the layer `g` in element type `T` takes the direct kernels: `f32`, stride 1,
/// undilated, one group, at most 16 input channels and `c_in · kh · kw ≤ 256`, on a CPU with
/// AVX-512F or AVX2 + FMA ([`Isa::detect`]).
pub fn applies<T: 'static>(g: &Geometry) -> bool {
    TypeId::of::<T>() == TypeId::of::<f32>()
        && g.stride == [1, 1]
        && g.dilation == [1, 1]
        && g.groups == 1
        && g.c_in <= MAX_C_IN
        && g.c_in * g.kernel[0] * g.kernel[1] <= MAX_DEPTH
        && g.batch > 0
        && g.c_in > 0
        && g.c_out > 0
        && g.output[0] > 0
        && g.output[1] > 0
        && Isa::detect().is_some()
}

/// Whether the forward pass of `g` takes the direct kernel: as [`applies`], and at least
/// [`MIN_FORWARD_DEPTH`] multiply-adds per output. With fewer (ResNet-20's stem, one input
/// channel and 3×3 taps: 9) each block's 24 stores outweigh its few FMAs, and the GEMM
/// path is faster (34–35 against 24–30 GFLOP/s at batch 96).
pub fn forward_applies<T: 'static>(g: &Geometry) -> bool {
    applies::<T>(g) && g.c_in * g.kernel[0] * g.kernel[1] >= MIN_FORWARD_DEPTH
}

/// The fewest `c_in · kh · kw` whose forward pass is sent here.
const MIN_FORWARD_DEPTH: usize = 16;

/// `s` as `f32`s; `T` must be `f32`.
fn as_f32<T: 'static>(s: &[T]) -> &[f32] {
    assert_eq!(TypeId::of::<T>(), TypeId::of::<f32>(), "direct: f32 only");
    // SAFETY: T is f32 (checked above).
    unsafe { std::slice::from_raw_parts(s.as_ptr().cast(), s.len()) }
}

/// `v` as a `Vec<T>`; `T` must be `f32`.
fn from_f32<T: 'static>(v: Vec<f32>) -> Vec<T> {
    assert_eq!(TypeId::of::<T>(), TypeId::of::<f32>(), "direct: f32 only");
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: T is f32 (checked above): same layout, and the allocation is handed over whole.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr().cast(), v.len(), v.capacity()) }
}

/// The padded layout of one channel (see the module docs).
struct Layout {
    /// Padded width: `ow + kw − 1`.
    pw: usize,
    /// Positions computed per channel: `oh · pw`, rounded up to a whole forward block.
    positions: usize,
    /// Elements of one padded input channel: every tap of every position reads inside it.
    channel: usize,
    /// `ky · pw + kx` per tap, row by row.
    offsets: Vec<usize>,
}

impl Layout {
    fn of(g: &Geometry) -> Self {
        let [oh, ow] = g.output;
        let [kh, kw] = g.kernel;
        let pw = ow + kw - 1;
        let positions = (oh * pw).next_multiple_of(QB);
        let channel = (positions + (kh - 1) * pw + kw - 1).next_multiple_of(LANES);
        let offsets = (0..kh)
            .flat_map(|ky| (0..kw).map(move |kx| ky * pw + kx))
            .collect();
        Self {
            pw,
            positions,
            channel,
            offsets,
        }
    }

    /// Writes the `c_in` channels of `image` `[c_in, h, w]` padded into `xp`
    /// (`c_in · channel` elements): row `iy` of the input at padded row `iy + pad_top`, column
    /// `ix` at `ix + pad_left`; rows and columns past the `oh + kh − 1` rows and `pw` columns
    /// the output reads (padding after the image smaller than `k − 1`) are left out. The
    /// padding around is not written: `xp` is zeroed once per call, and every image writes
    /// the same elements.
    fn pad_input(&self, g: &Geometry, image: &[f32], xp: &mut [f32]) {
        let [h, w] = g.input;
        let [top, left] = g.pad;
        let rows = g.output[0] + g.kernel[0] - 1;
        let width = w.min(self.pw.saturating_sub(left));
        for (src, dst) in image
            .chunks_exact(h * w)
            .zip(xp.chunks_exact_mut(self.channel))
        {
            for (iy, row) in src.chunks_exact(w).enumerate() {
                let py = iy + top;
                if py >= rows {
                    break;
                }
                let at = py * self.pw + left;
                copy_row(&row[..width], &mut dst[at..at + width]);
            }
        }
    }

    /// Writes the `c_out` planes of `dy` `[c_out, oh, ow]` into `dyp` (`c_out · positions`
    /// elements), output pixel (oy, ox) at `oy · pw + ox`. The positions between are not
    /// written: as in [`Layout::pad_input`], `dyp` is zeroed once per call.
    fn pad_output(&self, g: &Geometry, dy: &[f32], dyp: &mut [f32]) {
        let [oh, ow] = g.output;
        for (src, dst) in dy
            .chunks_exact(oh * ow)
            .zip(dyp.chunks_exact_mut(self.positions))
        {
            for (oy, row) in src.chunks_exact(ow).enumerate() {
                copy_row(row, &mut dst[oy * self.pw..oy * self.pw + ow]);
            }
        }
    }
}

/// Copies `src` to `dst` (of the same length; rows of a few dozen values here) in 8-value
/// moves inlined into the caller, the last one overlapping the one before: `copy_from_slice`
/// called `memcpy` for each row, and at 28 values a row the calls took more time than the
/// copies (a tenth of the 16-channel layer's forward was in `memmove`).
#[inline(always)]
fn copy_row<T: Copy>(src: &[T], dst: &mut [T]) {
    // SAFETY: `MaybeUninit<T>` has `T`'s layout, and `copy_row_uninit` writes only values
    // of `src` through it, so `dst` holds initialized values throughout.
    let dst = unsafe { &mut *(dst as *mut [T] as *mut [MaybeUninit<T>]) };
    copy_row_uninit(src, dst);
}

/// [`copy_row`] into memory not yet written.
#[inline(always)]
fn copy_row_uninit<T: Copy>(src: &[T], dst: &mut [MaybeUninit<T>]) {
    assert_eq!(src.len(), dst.len(), "copy_row: lengths");
    let n = src.len();
    if n < 8 {
        for (d, s) in dst.iter_mut().zip(src) {
            d.write(*s);
        }
        return;
    }
    let mut i = 0;
    while i + 8 < n {
        let v: [T; 8] = src[i..i + 8].try_into().expect("8 values");
        for (d, s) in dst[i..i + 8].iter_mut().zip(v) {
            d.write(s);
        }
        i += 8;
    }
    let v: [T; 8] = src[n - 8..].try_into().expect("8 values");
    for (d, s) in dst[n - 8..].iter_mut().zip(v) {
        d.write(s);
    }
}

/// The forward convolution (see [`super::cpu::forward`]) when [`applies`] holds, with the
/// widest kernels the CPU has.
pub fn forward<T: 'static>(g: &Geometry, x: &[T], weight: &[T], bias: Option<&[T]>) -> Vec<T> {
    assert!(applies::<T>(g), "direct::forward: a layer it does not take");
    let isa = Isa::detect().expect("applies checked the CPU");
    forward_with(isa, g, x, weight, bias)
}

/// [`forward`] with the kernels of `isa` (to test or time one set on a CPU that has a wider
/// one).
///
/// # Panics
/// If the CPU does not run `isa`, or [`applies`] does not hold for `g` and `T`.
pub fn forward_with<T: 'static>(
    isa: Isa,
    g: &Geometry,
    x: &[T],
    weight: &[T],
    bias: Option<&[T]>,
) -> Vec<T> {
    assert!(applies::<T>(g), "direct::forward: a layer it does not take");
    assert!(isa.supported(), "direct::forward: this CPU lacks {isa:?}");
    let (x, weight) = (as_f32(x), as_f32(weight));
    let bias = bias.map(as_f32);
    let lay = Layout::of(g);
    let (c_in, c_out) = (g.c_in, g.c_out);
    let taps = g.kernel[0] * g.kernel[1];
    let [oh, ow] = g.output;
    let (plane, image_in) = (oh * ow, c_in * g.input[0] * g.input[1]);
    let image_out = c_out * plane;
    assert_eq!(weight.len(), c_out * c_in * taps, "direct: weight length");
    assert_eq!(x.len(), g.batch * image_in, "direct: input length");
    // [c_out/8][c_in][taps][8], zeros for the outputs past c_out in the last block.
    let blocks = c_out.div_ceil(OB);
    let mut wt = vec![0.0f32; blocks * c_in * taps * OB];
    for (o, w) in weight.chunks_exact(c_in * taps).enumerate() {
        for (ct, v) in w.iter().enumerate() {
            wt[((o / OB) * c_in * taps + ct) * OB + o % OB] = *v;
        }
    }
    let mut biases = vec![0.0f32; blocks * OB];
    if let Some(bias) = bias {
        biases[..c_out].copy_from_slice(bias);
    }
    let len = g.output_len();
    let mut out: Vec<f32> = Vec::with_capacity(len);
    // Not zeroed first: every output value is written once, below.
    let spare = &mut out.spare_capacity_mut()[..len];
    // One output-channel block of one padded image into `y` (its `≤ 8` output planes).
    let block = |xp: &[f32], b: usize, y: &mut [MaybeUninit<f32>], scratch: &mut [f32]| {
        let w = &wt[b * c_in * taps * OB..(b + 1) * c_in * taps * OB];
        let bias: &[f32; OB] = biases[b * OB..(b + 1) * OB].try_into().expect("8 biases");
        for q0 in (0..lay.positions).step_by(QB) {
            // SAFETY: `isa.supported()` was asserted; the kernel reads `xp` at
            // c·channel + q0 + 47 + offset < c_in·channel (the layout's `channel` covers the
            // last block's last tap), `w` at c_in·taps·8, and writes `scratch` at
            // o·positions + q0 + 47 for o < 8.
            unsafe {
                forward_block(
                    isa,
                    xp.as_ptr().add(q0),
                    lay.channel,
                    c_in,
                    &lay.offsets,
                    w.as_ptr(),
                    bias,
                    scratch.as_mut_ptr().add(q0),
                    lay.positions,
                )
            };
        }
        for (plane_out, from) in y.chunks_exact_mut(plane).zip(scratch.chunks(lay.positions)) {
            for (oy, row) in plane_out.chunks_exact_mut(ow).enumerate() {
                copy_row_uninit(&from[oy * lay.pw..oy * lay.pw + ow], row);
            }
        }
    };
    let padded = c_in * lay.channel;
    let scratch_len = OB * lay.positions;
    let (chunk, parallelism) = super::cpu::plan(g.batch);
    if matches!(parallelism, gemm::Parallelism::None) {
        spare
            .par_chunks_mut(chunk * image_out)
            .enumerate()
            .for_each(|(ci, outs)| {
                <f32 as super::cpu::Element>::with_scratch(padded + scratch_len, |buffer| {
                    let (xp, scratch) = buffer.split_at_mut(padded);
                    xp.fill(0.0);
                    for (i, y) in outs.chunks_mut(image_out).enumerate() {
                        let n = ci * chunk + i;
                        lay.pad_input(g, &x[n * image_in..(n + 1) * image_in], xp);
                        for (b, yb) in y.chunks_mut(OB * plane).enumerate() {
                            block(xp, b, yb, scratch);
                        }
                    }
                });
            });
    } else {
        // Fewer images than threads (inference): the output-channel blocks over the threads.
        let mut xp = vec![0.0f32; padded];
        for (n, y) in spare.chunks_mut(image_out).enumerate() {
            lay.pad_input(g, &x[n * image_in..(n + 1) * image_in], &mut xp);
            y.par_chunks_mut(OB * plane)
                .enumerate()
                .for_each(|(b, yb)| {
                    <f32 as super::cpu::Element>::with_scratch(scratch_len, |scratch| {
                        block(&xp, b, yb, scratch)
                    })
                });
        }
    }
    // SAFETY: every output value was written: each image's `c_out` planes are the blocks'
    // `≤ 8` planes (`chunks_mut(8 · plane)`), each plane row by row from `scratch`.
    unsafe { out.set_len(len) };
    from_f32(out)
}

/// The weight gradient (see [`super::cpu::weight_grad`]) when [`applies`] holds, with the
/// widest kernels the CPU has.
pub fn weight_grad<T: 'static>(g: &Geometry, x: &[T], grad: &[T]) -> Vec<T> {
    assert!(
        applies::<T>(g),
        "direct::weight_grad: a layer it does not take"
    );
    let isa = Isa::detect().expect("applies checked the CPU");
    weight_grad_with(isa, g, x, grad)
}

/// [`weight_grad`] with the kernels of `isa` (to test or time one set on a CPU that has a
/// wider one).
///
/// # Panics
/// If the CPU does not run `isa`, or [`applies`] does not hold for `g` and `T`.
pub fn weight_grad_with<T: 'static>(isa: Isa, g: &Geometry, x: &[T], grad: &[T]) -> Vec<T> {
    assert!(
        applies::<T>(g),
        "direct::weight_grad: a layer it does not take"
    );
    assert!(
        isa.supported(),
        "direct::weight_grad: this CPU lacks {isa:?}"
    );
    let tb = isa.weight_taps();
    let (x, grad) = (as_f32(x), as_f32(grad));
    let lay = Layout::of(g);
    let (c_in, c_out) = (g.c_in, g.c_out);
    let taps = g.kernel[0] * g.kernel[1];
    let [oh, ow] = g.output;
    let (image_in, image_out) = (c_in * g.input[0] * g.input[1], c_out * oh * ow);
    assert_eq!(x.len(), g.batch * image_in, "direct: input length");
    assert_eq!(grad.len(), g.batch * image_out, "direct: gradient length");
    let weights = c_out * c_in * taps;
    let (padded_x, padded_dy) = (c_in * lay.channel, c_out * lay.positions);
    let chunk = super::cpu::plan(g.batch).0;
    // 16 partial sums per weight over the images `chunk · ci ..`, `[c_out][c_in][taps][16]`.
    let partial = |ci: usize| {
        let mut sums = vec![0.0f32; weights * LANES];
        let images = ci * chunk..((ci + 1) * chunk).min(g.batch);
        <f32 as super::cpu::Element>::with_scratch(padded_x + padded_dy, |buffer| {
            buffer.fill(0.0);
            let (xp, dyp) = buffer.split_at_mut(padded_x);
            for n in images {
                lay.pad_input(g, &x[n * image_in..(n + 1) * image_in], xp);
                lay.pad_output(g, &grad[n * image_out..(n + 1) * image_out], dyp);
                for o in (0..c_out).step_by(2) {
                    let outputs = (c_out - o).min(2);
                    for c in 0..c_in {
                        for t in (0..taps).step_by(tb) {
                            let nt = (taps - t).min(tb);
                            let at = ((o * c_in + c) * taps + t) * LANES;
                            // SAFETY: `isa.supported()` was asserted, and `nt` is at most its
                            // block; reads `dyp` rows o, o+1 below `positions`, `xp` channel c
                            // at q + offset < positions + (kh−1)·pw + kw − 1 ≤ channel, and
                            // writes `sums` at `at` + (outputs−1)·c_in·taps·16 + nt·16 ≤ its
                            // length.
                            unsafe {
                                weight_block(
                                    isa,
                                    [outputs, nt],
                                    dyp.as_ptr().add(o * lay.positions),
                                    lay.positions,
                                    xp.as_ptr().add(c * lay.channel),
                                    &lay.offsets[t..t + nt],
                                    sums.as_mut_ptr().add(at),
                                    c_in * taps * LANES,
                                )
                            };
                        }
                    }
                }
            }
        });
        sums
    };
    let sums = super::cpu::sum_partials(
        (0..g.batch.div_ceil(chunk)).into_par_iter().map(partial),
        weights * LANES,
    );
    from_f32(
        sums.chunks_exact(LANES)
            .map(|lanes| lanes.iter().sum())
            .collect(),
    )
}

/// The forward kernel with AVX-512F: the whole block, 8 output channels × 3 vectors of 16
/// positions in 24 accumulators, from `x` (the padded input at the block's first position,
/// channels `channel` apart), summed over `c_in` channels and the taps at `offsets`, from the
/// bias; weights read at `w + (c·taps + t)·8 + o` (the layout `[c_in][taps][8]`); results to
/// `out`, output channels `row` apart. [`forward_kernel_avx2`] sums every output in the same
/// order, so the two instruction sets agree bit for bit.
///
/// # Safety
/// The CPU must have AVX-512F, and every address named above must be inside its buffer.
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f"))]
#[allow(clippy::too_many_arguments)]
unsafe fn forward_kernel(
    x: *const f32,
    channel: usize,
    c_in: usize,
    offsets: &[usize],
    w: *const f32,
    bias: &[f32; OB],
    out: *mut f32,
    row: usize,
) {
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (x, channel, c_in, offsets, w, bias, out, row);
        unreachable!("direct convolution runs on x86-64 with AVX2 or AVX-512F only")
    }
    #[cfg(target_arch = "x86_64")]
    {
        let mut acc = [[_mm512_setzero_ps(); 3]; OB];
        for (acc, b) in acc.iter_mut().zip(bias) {
            *acc = [_mm512_set1_ps(*b); 3];
        }
        let mut w = w;
        // SAFETY (this block): the caller's bounds.
        unsafe {
            for c in 0..c_in {
                let xc = x.add(c * channel);
                for &offset in offsets {
                    let p = xc.add(offset);
                    let v = [
                        _mm512_loadu_ps(p),
                        _mm512_loadu_ps(p.add(LANES)),
                        _mm512_loadu_ps(p.add(2 * LANES)),
                    ];
                    for (o, acc) in acc.iter_mut().enumerate() {
                        let wv = _mm512_set1_ps(*w.add(o));
                        for (a, v) in acc.iter_mut().zip(v) {
                            *a = _mm512_fmadd_ps(v, wv, *a);
                        }
                    }
                    w = w.add(OB);
                }
            }
            for (o, acc) in acc.iter().enumerate() {
                for (v, a) in acc.iter().enumerate() {
                    _mm512_storeu_ps(out.add(o * row + v * LANES), *a);
                }
            }
        }
    }
}

/// The forward kernel with AVX2 + FMA: a quarter of the block, 4 output channels × 24
/// positions, in 12 accumulators of 8 lanes; arguments as at [`forward_kernel`] (4
/// biases, `w` at the quarter's first channel), the same sums in the same order.
///
/// The 12 accumulators, the 3 input vectors and the broadcast weight take all 16 `ymm`
/// registers. Written with intrinsics (as the AVX-512 kernel is), the compiler kept one
/// accumulator on the stack, so every tap's FMAs waited on a reload and a store: 53 GFLOP/s
/// on ResNet-20's 16 → 16 layer at batch 96 (`conv_layer`, two threads of an AVX2 EPYC).
/// Here each tap is one block of assembly with the accumulators as register operands, so
/// they stay in registers across the loop: 84–89 GFLOP/s on the same layer.
///
/// # Safety
/// The CPU must have AVX2 and FMA, and every address named at [`forward_kernel`] must be
/// inside its buffer.
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2,fma"))]
#[allow(clippy::too_many_arguments)]
unsafe fn forward_kernel_avx2(
    x: *const f32,
    channel: usize,
    c_in: usize,
    offsets: &[usize],
    w: *const f32,
    bias: &[f32; 4],
    out: *mut f32,
    row: usize,
) {
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (x, channel, c_in, offsets, w, bias, out, row);
        unreachable!("direct convolution runs on x86-64 with AVX2 or AVX-512F only")
    }
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::asm;
        let (b0, b1) = (_mm256_set1_ps(bias[0]), _mm256_set1_ps(bias[1]));
        let (b2, b3) = (_mm256_set1_ps(bias[2]), _mm256_set1_ps(bias[3]));
        let (mut a0, mut a1, mut a2) = (b0, b0, b0);
        let (mut a3, mut a4, mut a5) = (b1, b1, b1);
        let (mut a6, mut a7, mut a8) = (b2, b2, b2);
        let (mut a9, mut a10, mut a11) = (b3, b3, b3);
        let mut w = w;
        // SAFETY (this block): the caller's bounds; the assembly reads 24 floats at `p` and 4
        // at `w`, writes only its register operands, and leaves the stack and flags alone.
        unsafe {
            for c in 0..c_in {
                let xc = x.add(c * channel);
                for &offset in offsets {
                    let p = xc.add(offset);
                    // Per output channel o: broadcast w[o], then acc[o][v] += x[v] · w[o]
                    // for the 3 vectors of positions (vfmadd231ps a, v, t: a = v·t + a).
                    asm!(
                        "vmovups {v0}, [{p}]",
                        "vmovups {v1}, [{p} + 32]",
                        "vmovups {v2}, [{p} + 64]",
                        "vbroadcastss {t}, [{w}]",
                        "vfmadd231ps {a0}, {v0}, {t}",
                        "vfmadd231ps {a1}, {v1}, {t}",
                        "vfmadd231ps {a2}, {v2}, {t}",
                        "vbroadcastss {t}, [{w} + 4]",
                        "vfmadd231ps {a3}, {v0}, {t}",
                        "vfmadd231ps {a4}, {v1}, {t}",
                        "vfmadd231ps {a5}, {v2}, {t}",
                        "vbroadcastss {t}, [{w} + 8]",
                        "vfmadd231ps {a6}, {v0}, {t}",
                        "vfmadd231ps {a7}, {v1}, {t}",
                        "vfmadd231ps {a8}, {v2}, {t}",
                        "vbroadcastss {t}, [{w} + 12]",
                        "vfmadd231ps {a9}, {v0}, {t}",
                        "vfmadd231ps {a10}, {v1}, {t}",
                        "vfmadd231ps {a11}, {v2}, {t}",
                        p = in(reg) p,
                        w = in(reg) w,
                        v0 = out(ymm_reg) _,
                        v1 = out(ymm_reg) _,
                        v2 = out(ymm_reg) _,
                        t = out(ymm_reg) _,
                        a0 = inout(ymm_reg) a0,
                        a1 = inout(ymm_reg) a1,
                        a2 = inout(ymm_reg) a2,
                        a3 = inout(ymm_reg) a3,
                        a4 = inout(ymm_reg) a4,
                        a5 = inout(ymm_reg) a5,
                        a6 = inout(ymm_reg) a6,
                        a7 = inout(ymm_reg) a7,
                        a8 = inout(ymm_reg) a8,
                        a9 = inout(ymm_reg) a9,
                        a10 = inout(ymm_reg) a10,
                        a11 = inout(ymm_reg) a11,
                        options(nostack, readonly, preserves_flags)
                    );
                    w = w.add(OB);
                }
            }
            let accs = [[a0, a1, a2], [a3, a4, a5], [a6, a7, a8], [a9, a10, a11]];
            for (o, acc) in accs.iter().enumerate() {
                for (v, a) in acc.iter().enumerate() {
                    _mm256_storeu_ps(out.add(o * row + v * LANES_AVX2), *a);
                }
            }
        }
    }
}

/// One forward block of 8 output channels × 48 positions with the kernels of `isa`: in one
/// call with AVX-512F, in 4 quarters of 4 channels × 24 positions with AVX2. Arguments as at
/// [`forward_kernel`], `w` at the block's weights `[c_in][taps][8]`.
///
/// # Safety
/// The CPU must have `isa`, and every address named at [`forward_kernel`] must be inside its
/// buffer for the whole block.
#[allow(clippy::too_many_arguments)]
unsafe fn forward_block(
    isa: Isa,
    x: *const f32,
    channel: usize,
    c_in: usize,
    offsets: &[usize],
    w: *const f32,
    bias: &[f32; OB],
    out: *mut f32,
    row: usize,
) {
    const OQ: usize = OB / 2;
    const QQ: usize = 3 * LANES_AVX2;
    // SAFETY (this function): the caller's; a quarter reads positions 24·part … 24·part + 23
    // of the block and weights 4·half … 4·half + 3 of each group of 8.
    unsafe {
        match isa {
            Isa::Avx512 => forward_kernel(x, channel, c_in, offsets, w, bias, out, row),
            Isa::Avx2 => {
                for half in 0..OB / OQ {
                    let bias: &[f32; OQ] = bias[half * OQ..(half + 1) * OQ]
                        .try_into()
                        .expect("4 biases");
                    for part in 0..QB / QQ {
                        forward_kernel_avx2(
                            x.add(part * QQ),
                            channel,
                            c_in,
                            offsets,
                            w.add(half * OQ),
                            bias,
                            out.add(half * OQ * row + part * QQ),
                            row,
                        );
                    }
                }
            }
        }
    }
}

/// The weight-gradient block `[outputs, taps]` (outputs 1–2, taps 1–9 with AVX-512, 1–6
/// with AVX2) by its monomorphic kernel.
///
/// # Safety
/// As [`weight_kernel`] (with `isa`'s features).
#[allow(clippy::too_many_arguments)]
unsafe fn weight_block(
    isa: Isa,
    [outputs, taps]: [usize; 2],
    dy: *const f32,
    positions: usize,
    x: *const f32,
    offsets: &[usize],
    sums: *mut f32,
    output_stride: usize,
) {
    macro_rules! call {
        ($kernel:ident, $no:literal, $nt:literal) => {
            // SAFETY: the caller's.
            unsafe {
                $kernel::<$no, $nt>(
                    dy,
                    positions,
                    x,
                    offsets.try_into().expect("taps"),
                    sums,
                    output_stride,
                )
            }
        };
    }
    macro_rules! by_taps {
        ($kernel:ident, $no:literal, [$($nt:literal),*]) => {
            match taps {
                $($nt => call!($kernel, $no, $nt),)*
                _ => panic!("direct: {taps} taps in one {isa:?} weight block"),
            }
        };
    }
    match (isa, outputs) {
        (Isa::Avx512, 2) => by_taps!(weight_kernel, 2, [1, 2, 3, 4, 5, 6, 7, 8, 9]),
        (Isa::Avx512, _) => by_taps!(weight_kernel, 1, [1, 2, 3, 4, 5, 6, 7, 8, 9]),
        (Isa::Avx2, 2) => by_taps!(weight_kernel_avx2, 2, [1, 2, 3, 4, 5, 6]),
        (Isa::Avx2, _) => by_taps!(weight_kernel_avx2, 1, [1, 2, 3, 4, 5, 6]),
    }
}

/// Defines a weight-gradient kernel for one instruction set: `NO × NT` accumulators over
/// all `positions` (a multiple of the lanes), `dy` rows `positions` apart, `x` one padded
/// input channel read at each of `offsets`; each accumulator is then added into the first
/// lanes of its 16 in `sums` (taps 16 apart, outputs `output_stride` apart).
macro_rules! weight_kernel {
    (
        $(#[$doc:meta])*
        $name:ident, $features:literal, $lanes:expr,
        $zero:ident, $load:ident, $fmadd:ident, $add:ident, $store:ident
    ) => {
        $(#[$doc])*
        ///
        /// # Safety
        #[doc = concat!("The CPU must have ", $features, "; `dy` must hold `NO` rows of")]
        /// `positions`, `x` every `q + offset` for `q < positions`, `sums` every lane written.
        #[cfg_attr(target_arch = "x86_64", target_feature(enable = $features))]
        unsafe fn $name<const NO: usize, const NT: usize>(
            dy: *const f32,
            positions: usize,
            x: *const f32,
            offsets: &[usize; NT],
            sums: *mut f32,
            output_stride: usize,
        ) {
            #[cfg(not(target_arch = "x86_64"))]
            {
                let _ = (dy, positions, x, offsets, sums, output_stride);
                unreachable!("direct convolution runs on x86-64 with AVX2 or AVX-512F only")
            }
            #[cfg(target_arch = "x86_64")]
            {
                let offsets = *offsets;
                let mut acc = [[$zero(); NT]; NO];
                // SAFETY (this block): the caller's bounds.
                unsafe {
                    for q in (0..positions).step_by($lanes) {
                        let mut d = [$zero(); NO];
                        for (o, d) in d.iter_mut().enumerate() {
                            *d = $load(dy.add(o * positions + q));
                        }
                        for (t, offset) in offsets.iter().enumerate() {
                            let v = $load(x.add(q + offset));
                            for (acc, d) in acc.iter_mut().zip(d) {
                                acc[t] = $fmadd(d, v, acc[t]);
                            }
                        }
                    }
                    for (o, acc) in acc.iter().enumerate() {
                        for (t, a) in acc.iter().enumerate() {
                            let p = sums.add(o * output_stride + t * LANES);
                            $store(p, $add($load(p), *a));
                        }
                    }
                }
            }
        }
    };
}

weight_kernel!(
    /// The weight-gradient kernel with AVX-512F: up to 2 × 9 accumulators of 16 lanes.
    weight_kernel, "avx512f", LANES,
    _mm512_setzero_ps, _mm512_loadu_ps, _mm512_fmadd_ps, _mm512_add_ps, _mm512_storeu_ps
);

weight_kernel!(
    /// The weight-gradient kernel with AVX2 (`NT` at most 6, so that 2 × 6 accumulators, 2
    /// output rows and the input vector fit in 16 registers); each accumulator goes into the
    /// low 8 of its 16 lanes.
    weight_kernel_avx2, "avx2,fma", LANES_AVX2,
    _mm256_setzero_ps, _mm256_loadu_ps, _mm256_fmadd_ps, _mm256_add_ps, _mm256_storeu_ps
);

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::ops::ConvOptions;

    /// The stride-1 convolution of `x` `[n, c_in, h, w]` by `weight` `[c_out, c_in, kh, kw]`
    /// with `pad` rows and columns of zeros.
    fn geometry(x: [usize; 4], weight: [usize; 4], pad: [usize; 2]) -> Geometry {
        Geometry::new(x, weight, &ConvOptions::new([1, 1], pad, [1, 1], 1))
    }

    #[test]
    fn the_layout_reads_inside_its_channel() {
        // 3×3 "same" at 28×28: rows of 30, 28·30 = 840 positions rounded up to 864.
        let g = geometry([2, 16, 28, 28], [16, 16, 3, 3], [1, 1]);
        let lay = Layout::of(&g);
        assert_eq!((lay.pw, lay.positions), (30, 864));
        let last = lay.positions - 1 + lay.offsets.last().copied().unwrap_or(0);
        assert!(last < lay.channel);
        assert_eq!(lay.offsets[..4], [0, 1, 2, 30]);
    }

    /// Plain loops: the forward convolution and its weight gradient for stride 1.
    fn reference(g: &Geometry, x: &[f32], w: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let ([h, iw], [oh, ow], [kh, kw]) = (g.input, g.output, g.kernel);
        let (mut y, mut dw) = (vec![0.0; g.output_len()], vec![0.0; w.len()]);
        for n in 0..g.batch {
            for o in 0..g.c_out {
                for c in 0..g.c_in {
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let wi = ((o * g.c_in + c) * kh + ky) * kw + kx;
                            for oy in 0..oh {
                                for ox in 0..ow {
                                    let iy = (oy + ky) as isize - g.pad[0] as isize;
                                    let ix = (ox + kx) as isize - g.pad[1] as isize;
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= iw as isize {
                                        continue;
                                    }
                                    let xi =
                                        ((n * g.c_in + c) * h + iy as usize) * iw + ix as usize;
                                    let yi = ((n * g.c_out + o) * oh + oy) * ow + ox;
                                    y[yi] += w[wi] * x[xi];
                                    dw[wi] += dy[yi] * x[xi];
                                }
                            }
                        }
                    }
                }
            }
        }
        (y, dw)
    }

    /// The sets this CPU runs, with a line for each it lacks.
    fn isas() -> Vec<Isa> {
        [Isa::Avx512, Isa::Avx2]
            .into_iter()
            .filter(|isa| {
                let ok = isa.supported();
                if !ok {
                    eprintln!("skipped: this CPU has no {isa:?}");
                }
                ok
            })
            .collect()
    }

    #[test]
    fn the_kernels_equal_plain_loops() {
        // [batch, c_in, h, w], [c_out, kernel], padding: two output blocks, a part block with
        // a batch under the thread count, 5×5 (tap blocks 9 + 9 + 7 with AVX-512, 6 × 4 + 1
        // with AVX2) with an odd c_out, 7×7, and 1×1 (one tap).
        let cases = [
            ([3, 16, 12, 11], [16, 3], [1, 1]),
            ([1, 2, 5, 9], [11, 3], [0, 2]),
            ([4, 3, 8, 7], [5, 5], [2, 2]),
            ([2, 1, 10, 10], [9, 7], [3, 3]),
            ([2, 16, 6, 5], [3, 1], [0, 0]),
        ];
        for isa in isas() {
            for ([batch, c_in, h, w], [c_out, k], pad) in cases {
                let g = geometry([batch, c_in, h, w], [c_out, c_in, k, k], pad);
                assert!(applies::<f32>(&g));
                let value = |i: usize, m: usize| ((i * 7919) % m) as f32 / m as f32 - 0.5;
                let x: Vec<f32> = (0..batch * c_in * h * w).map(|i| value(i, 31)).collect();
                let wt: Vec<f32> = (0..c_out * c_in * k * k).map(|i| value(i, 17)).collect();
                let dy: Vec<f32> = (0..g.output_len()).map(|i| value(i, 23)).collect();
                let (y, dw) = reference(&g, &x, &wt, &dy);
                let bias: Vec<f32> = (0..c_out).map(|o| o as f32).collect();
                let ours = forward_with(isa, &g, &x, &wt, Some(&bias));
                let plane = g.output[0] * g.output[1];
                for (i, (a, b)) in ours.iter().zip(&y).enumerate() {
                    let b = b + bias[(i / plane) % c_out];
                    assert!(
                        (a - b).abs() < 1e-4,
                        "{isa:?} {:?}: y[{i}] {a} vs {b}",
                        g.output_shape()
                    );
                }
                let grads = weight_grad_with(isa, &g, &x, &dy);
                assert_eq!(grads.len(), dw.len());
                for (i, (a, b)) in grads.iter().zip(&dw).enumerate() {
                    assert!(
                        (a - b).abs() < 1e-3,
                        "{isa:?} {:?}: dw[{i}] {a} vs {b}",
                        g.output_shape()
                    );
                }
            }
        }
    }

    #[test]
    fn the_two_forwards_agree_bit_for_bit() {
        if !(Isa::Avx512.supported() && Isa::Avx2.supported()) {
            eprintln!("skipped: this CPU does not run both AVX-512F and AVX2");
            return;
        }
        // 16 → 16 at 28×28 (ResNet-20's first stage) and 1 → 64 7×7 (the Fashion-MNIST
        // CNN's first layer): the same sums in the same order, so the same floats.
        for (c_in, c_out, k) in [(16, 16, 3), (1, 64, 7)] {
            let g = geometry([2, c_in, 28, 28], [c_out, c_in, k, k], [k / 2, k / 2]);
            let x: Vec<f32> = (0..2 * c_in * 28 * 28)
                .map(|i| ((i * 31) % 97) as f32 / 97.0 - 0.5)
                .collect();
            let w: Vec<f32> = (0..c_out * c_in * k * k)
                .map(|i| ((i * 7) % 13) as f32 / 13.0 - 0.5)
                .collect();
            let bias: Vec<f32> = (0..c_out).map(|o| o as f32 * 0.1).collect();
            let wide = forward_with(Isa::Avx512, &g, &x, &w, Some(&bias));
            let narrow = forward_with(Isa::Avx2, &g, &x, &w, Some(&bias));
            assert!(
                wide.iter()
                    .zip(&narrow)
                    .all(|(a, b)| a.to_bits() == b.to_bits())
            );
        }
    }

    #[test]
    fn padding_puts_rows_at_their_offsets() {
        // 1 channel 2×3, padding 1: padded rows of 5 (ow 3 + kw 3 − 1).
        let g = geometry([1, 1, 2, 3], [1, 1, 3, 3], [1, 1]);
        let lay = Layout::of(&g);
        // Zeroed once, as the kernels do, then written twice (two images of one call).
        let mut xp = vec![0.0; lay.channel];
        lay.pad_input(&g, &[9.0; 6], &mut xp);
        lay.pad_input(&g, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &mut xp);
        let expect = [
            0.0, 0.0, 0.0, 0.0, 0.0, //
            0.0, 1.0, 2.0, 3.0, 0.0, //
            0.0, 4.0, 5.0, 6.0, 0.0, //
            0.0, 0.0, 0.0, 0.0, 0.0,
        ];
        assert_eq!(xp[..20], expect);
        assert!(xp[20..].iter().all(|v| *v == 0.0));
    }
}
