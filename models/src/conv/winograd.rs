//! Winograd's minimal filtering F(m×m, 3×3) for stride-1 3×3 convolutions (Lavin & Gray,
//! "Fast Algorithms for Convolutional Neural Networks", 2016): each m×m block of output comes
//! from an α×α patch of input (α = m + 2) in α² multiplies per channel pair instead of 9m².
//! Two sizes run here:
//!
//! - **F(2×2, 3×3)**: 4×4 patches, 16 multiplies for 4 outputs instead of 36, 2.25× fewer;
//!   its transforms only add and halve.
//! - **F(4×4, 3×3)**: 6×6 patches (interpolation points 0, ±1, ±2), 36 multiplies for 16
//!   outputs instead of 144, 4× fewer, and 36 transformed values per 16 outputs instead of
//!   64, so the transforms move less memory too. Its constants (4, 5, ⅙, 1⁄24…) round more:
//!   in `f32` the unit tests' outputs differ from the exact sums by up to 8e-6 of their
//!   largest value, against 5e-7 with F(2×2).
//!
//! ```text
//! U[ξ] (c_out × c_in)  = (G g Gᵀ)[ξ]        weights, once per call
//! V[ξ] (c_in × tiles)  = (Bᵀ d B)[ξ]        α×α input patches, one column per output tile
//! M[ξ] (c_out × tiles) = U[ξ] · V[ξ]         α² GEMMs on the gemm crate's micro-kernels
//! Y    (m×m per tile)  = Aᵀ M A  (+ bias)
//! ```
//!
//! [`tile_side`] takes F(4×4) for output maps of 24×24 and more, F(2×2) for smaller ones
//! (where the larger tiles' transforms and padding cost more than their multiplies save).
//! `KONV_WINOGRAD=2` (or `4`) fixes one size, to compare them.
//!
//! The tiles of the whole batch are cut into blocks whose `V` and `M` stay within about
//! 2 MiB each (the size `cpu`'s im2col tiles use), and the blocks run on the rayon threads,
//! one contiguous run each, in that thread's scratch memory. The input gradient of a stride-1 3×3 convolution is itself
//! one (of the output gradient, with the kernel turned 180° and its channel axes swapped), so
//! it runs here too, and so does the weight gradient (`dW = Gᵀ [Σ (A dY Aᵀ) ⊙ V] G`).

use super::cpu::{Element, Geometry, matmul};
use super::simd::{self, add, load, scale, store, sub};
use gemm::Parallelism;
use rayon::prelude::*;

/// Channels taken at once by the transforms: one AVX-512 vector of `f32`.
const LANES: usize = 16;

/// Runs `f::<LANES>(c)` over the whole chunks of `LANES` channels of `0..channels`, then
/// `f::<1>(c)` for the rest, for each kernel that calls it (a macro, as closures cannot be
/// generic over the chunk size).
macro_rules! by_lanes {
    ($channels:expr, |$c:ident, $n:ident| $body:expr) => {{
        let channels = $channels;
        let mut $c = 0;
        while $c + LANES <= channels {
            {
                const $n: usize = LANES;
                $body;
            }
            $c += LANES;
        }
        while $c < channels {
            {
                const $n: usize = 1;
                $body;
            }
            $c += 1;
        }
    }};
}

/// The output side `m` of the tiles [`forward`] and [`input_grad`] use for an output of
/// `[oh, ow]`, 2 or 4, unless `KONV_WINOGRAD` fixes it: 4 where both sides are at least
/// [`MIN_SIDE_4`], 2 elsewhere. ([`weight_grad`] keeps 2 unless `KONV_WINOGRAD=4`: its α²
/// planes of `c_out × c_in` sums grow 2.25× with 6×6 tiles, and at batch 1 ResNet-18's
/// 128-channel 28×28 layer's gradients ran slower with them.)
pub fn tile_side([oh, ow]: [usize; 2]) -> usize {
    if let Some(m) = forced_tile_side() {
        return m;
    }
    if oh.min(ow) >= MIN_SIDE_4 { 4 } else { 2 }
}

/// The smallest output side whose forward takes F(4×4, 3×3). On smaller maps its 6×6 tiles
/// cost more in transforms and padding than they save in multiplies. Measured on two AVX2
/// cores (`KONV_WINOGRAD=2` against `4`, alternated): ResNet-20's 14×14 and 7×7 layers (32
/// and 64 channels, batch 96) ran slower or no faster with it; ResNet-18's 56×56 layer
/// (64 channels, batch 1) ran its forward at a median of 230 GFLOP/s against 162, and the
/// 28×28 one (128 channels) at 200 against 163.
const MIN_SIDE_4: usize = 24;

/// The tile side `KONV_WINOGRAD` asks for (`2` or `4`), read once; anything else warns once
/// and is ignored.
fn forced_tile_side() -> Option<usize> {
    static FORCED: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    *FORCED.get_or_init(|| {
        let value = std::env::var("KONV_WINOGRAD").ok()?;
        match value.trim() {
            "" => None,
            "2" => Some(2),
            "4" => Some(4),
            other => {
                eprintln!(
                    "warning: KONV_WINOGRAD={other:?} is not 2 or 4; choosing the Winograd tile \
                     size per layer (set KONV_WINOGRAD=2 for F(2×2, 3×3), 4 for F(4×4, 3×3), or \
                     unset it)"
                );
                None
            }
        }
    })
}

/// Elements of one block's `V` (and its `M`): about 2 MiB of `f32`.
const BLOCK_ELEMENTS: usize = 1 << 19;

/// The fewest channels (in and out) for which the transforms pay for themselves (measured
/// on ResNet-20's layers with `konv_train::bench::conv_layer`, batch
/// 96, GFLOP/s forward / forward + gradients: at 32 channels 14×14, 145–204 / 130–132 here
/// against 99 / 88–90 with im2col; at 16 channels 28×28, 77–79 / 62–73 against 100–104 /
/// 71. Before the transforms ran on 16 channels at a time it was 64).
const MIN_CHANNELS: usize = 32;

/// The fewest 2×2 output tiles (over the batch) for which the transforms pay: transforming
/// the weights costs as much as the GEMMs save on about this many tiles (measured: at batch 1
/// ResNet-18's 512-channel 7×7 layer, 16 tiles, runs at half im2col's speed, the 256-channel
/// 14×14 one, 49 tiles, at the same speed, and the 128-channel 28×28 one, 196, 1.6× as fast).
const MIN_TILES: usize = 64;

/// Whether `cpu` should run `g`'s forward and weight gradient here: a 3×3 kernel, stride 1,
/// no dilation, one group, and enough channels and output tiles.
pub fn forward_applies(g: &Geometry) -> bool {
    g.batch * g.output[0].div_ceil(2) * g.output[1].div_ceil(2) >= MIN_TILES
        && g.kernel == [3, 3]
        && g.stride == [1, 1]
        && g.dilation == [1, 1]
        && g.groups == 1
        && g.c_in >= MIN_CHANNELS
        && g.c_out >= MIN_CHANNELS
        && g.output[0] >= 2
        && g.output[1] >= 2
}

/// One stride-1 3×3 correlation, in the terms both uses share.
struct Problem {
    /// The tiles' output side, 2 or 4 ([`tile_side`]).
    m: usize,
    batch: usize,
    c_in: usize,
    input: [usize; 2],
    c_out: usize,
    output: [usize; 2],
    /// Rows and columns of zeros before the input.
    pad: [usize; 2],
}

impl Problem {
    /// The forward correlation of `g`, in tiles of side `m` (2 or 4).
    fn of(g: &Geometry, m: usize) -> Self {
        assert!(m == 2 || m == 4, "winograd: tiles of side 2 or 4, not {m}");
        Self {
            m,
            batch: g.batch,
            c_in: g.c_in,
            input: g.input,
            c_out: g.c_out,
            output: g.output,
            pad: g.pad,
        }
    }

    fn tiles(&self) -> [usize; 2] {
        [
            self.output[0].div_ceil(self.m),
            self.output[1].div_ceil(self.m),
        ]
    }

    /// The side of a transformed tile, `m + 2`.
    fn alpha(&self) -> usize {
        self.m + 2
    }

    /// Values per transformed tile, `α²`: 16 or 36.
    fn xi(&self) -> usize {
        self.alpha() * self.alpha()
    }
}

/// The forward convolution, as [`super::cpu::forward`], in the tiles [`tile_side`] picks.
pub fn forward<T: Element>(g: &Geometry, x: &[T], weight: &[T], bias: Option<&[T]>) -> Vec<T> {
    forward_with(tile_side(g.output), g, x, weight, bias)
}

/// [`forward`] in tiles of side `m`: 2 for F(2×2, 3×3), 4 for F(4×4, 3×3) (to test or time
/// one against the other).
///
/// # Panics
/// If `m` is neither 2 nor 4.
pub fn forward_with<T: Element>(
    m: usize,
    g: &Geometry,
    x: &[T],
    weight: &[T],
    bias: Option<&[T]>,
) -> Vec<T> {
    let p = Problem::of(g, m);
    let (c_in, c_out) = (g.c_in, g.c_out);
    assert!(
        weight.len() >= c_out * c_in * 9,
        "weight [c_out, c_in, 3, 3]"
    );
    let u = T::with_scratch(9 * c_in * c_out, |taps| {
        // weight [c_out][c_in · 9] → taps [c_in · 9][c_out], threaded over runs of columns.
        let columns = (c_in * 9)
            .div_ceil(rayon::current_num_threads().max(1) * 4)
            .max(1);
        taps.par_chunks_mut(columns * c_out)
            .enumerate()
            .for_each(|(k, chunk)| {
                let first = k * columns;
                let count = chunk.len() / c_out;
                debug_assert!(first + count <= c_in * 9);
                // SAFETY: rows o < c_out of weight's columns first..first + count lie in
                // `weight` (asserted above), the transposed rows fill `chunk`; distinct
                // buffers.
                unsafe {
                    simd::transpose(
                        weight[first..].as_ptr(),
                        c_in * 9,
                        [c_out, count],
                        chunk.as_mut_ptr(),
                        c_out,
                    )
                };
            });
        transform_weights(c_out, c_in, taps, false, p.m)
    });
    run(&p, x, &u, bias)
}

/// The gradient with respect to the input, as [`super::cpu::input_grad`], given `t`, the
/// forward correlation that computes it ([`Geometry::transposed`]: `grad` padded by
/// `2 − pad`, input and output channels swapped); `weight` is the layer's own
/// `[t.c_in, t.c_out, 3, 3]`, read turned 180° in place. In the tiles [`tile_side`] picks.
pub fn input_grad<T: Element>(t: &Geometry, weight: &[T], grad: &[T]) -> Vec<T> {
    input_grad_with(tile_side(t.output), t, weight, grad)
}

/// [`input_grad`] in tiles of side `m` (2 or 4).
///
/// # Panics
/// If `m` is neither 2 nor 4.
pub fn input_grad_with<T: Element>(m: usize, t: &Geometry, weight: &[T], grad: &[T]) -> Vec<T> {
    let (ins, outs) = (t.c_in, t.c_out);
    let p = Problem::of(t, m);
    let u = T::with_scratch(9 * ins * outs, |taps| {
        // weight [ins][outs][9] → taps [ins][9][outs], one input channel's block at a time.
        assert!(weight.len() >= ins * outs * 9, "weight [c_out, c_in, 3, 3]");
        taps.par_chunks_mut(9 * outs)
            .enumerate()
            .for_each(|(i, chunk)| {
                // SAFETY: rows o < outs of 9 taps from i · outs · 9 lie in `weight` (asserted
                // above), the transposed rows fill `chunk`; distinct buffers.
                unsafe {
                    simd::transpose(
                        weight[i * outs * 9..].as_ptr(),
                        9,
                        [outs, 9],
                        chunk.as_mut_ptr(),
                        outs,
                    )
                };
            });
        transform_weights(outs, ins, taps, true, p.m)
    });
    run(&p, grad, &u, None)
}

/// `U = G g Gᵀ` for every (output, input) channel pair of tiles of side `m`, laid out
/// `[ins][α²][outs]` (U[ξ] is the `outs × ins` GEMM left-hand side in columns `α² · outs`
/// apart, which the `gemm` crate reads in place beside `V`'s channels-innermost columns),
/// threaded over the inputs, each on 16 outputs at a time. `taps` holds the kernels
/// `[ins][9][outs]` (tap `3r + c` of each input channel, over the outputs), read turned 180°
/// when `flip`.
fn transform_weights<T: Element>(
    outs: usize,
    ins: usize,
    taps: &[T],
    flip: bool,
    m: usize,
) -> Vec<T> {
    let xi = (m + 2) * (m + 2);
    let mut u = vec![T::ZERO; ins * xi * outs];
    if ins == 0 || outs == 0 {
        return u;
    }
    u.par_chunks_mut(xi * outs)
        .zip(taps.par_chunks(9 * outs))
        .for_each(|(ui, taps)| simd::widest(Weights((taps, ui, outs, flip, m))));
    u
}

/// [`weight_tile`] over all the outputs, as a [`simd::Kernel`].
struct Weights<'a, T>((&'a [T], &'a mut [T], usize, bool, usize));

impl<T: Element> simd::Kernel for Weights<'_, T> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        let (taps, u, outs, flip, m) = self.0;
        if m == 4 {
            by_lanes!(outs, |o, N| weight_tile(
                taps,
                u,
                (outs, o),
                flip,
                g6::<T, N>
            ));
        } else {
            by_lanes!(outs, |o, N| weight_tile(
                taps,
                u,
                (outs, o),
                flip,
                g::<T, N>
            ));
        }
    }
}

/// `G g Gᵀ` of one input channel's kernels for `N` outputs from `o`: tap `3r + c` at
/// `taps[(3r + c) · outs + o ..]` (or tap `8 − (3r + c)`, when `flip`), the `M × M` values
/// into `u` at `ξ · outs + o`. `g` is G on three values: [`g`] for F(2×2, 3×3) (`M` = 4),
/// [`g6`] for F(4×4, 3×3) (`M` = 6).
// The loops take one column across the rows of a 2-D array.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn weight_tile<T: Element, const N: usize, const M: usize>(
    taps: &[T],
    u: &mut [T],
    (outs, o): (usize, usize),
    flip: bool,
    g: impl Fn([[T; N]; 3]) -> [[T; N]; M],
) {
    // G g: M×3, column by column (gg[r][c]); then (G g) Gᵀ: each of its rows through G.
    let mut gg = [[[T::ZERO; N]; 3]; M];
    for c in 0..3 {
        let mut column = [[T::ZERO; N]; 3];
        for (r, value) in column.iter_mut().enumerate() {
            let tap = if flip { 8 - (3 * r + c) } else { 3 * r + c };
            *value = load(taps, tap * outs + o);
        }
        for (r, value) in g(column).into_iter().enumerate() {
            gg[r][c] = value;
        }
    }
    for (r, row) in gg.into_iter().enumerate() {
        for (c, value) in g(row).into_iter().enumerate() {
            store(u, (r * M + c) * outs + o, value);
        }
    }
}

/// G on three values of `N` lanes: `a, (a + b + d)/2, (a − b + d)/2, d`.
#[inline(always)]
fn g<T: Element, const N: usize>([a, b, d]: [[T; N]; 3]) -> [[T; N]; 4] {
    let ad = add(a, d);
    [a, scale(add(ad, b), T::HALF), scale(sub(ad, b), T::HALF), d]
}

/// F(4×4, 3×3)'s G on three values of `N` lanes: `a/4, −(a + b + d)/6, −(a − b + d)/6,
/// (a/4 + b/2 + d)/6, (a/4 − b/2 + d)/6, d`.
#[inline(always)]
fn g6<T: Element, const N: usize>([a, b, d]: [[T; N]; 3]) -> [[T; N]; 6] {
    let (quarter, sixth) = (T::constant(0.25), T::constant(-1.0 / 6.0));
    let a4 = scale(a, quarter);
    let (ad, a4d, b2) = (add(a, d), add(a4, d), scale(b, T::HALF));
    [
        a4,
        scale(add(ad, b), sixth),
        scale(sub(ad, b), sixth),
        scale(add(a4d, b2), T::constant(1.0 / 6.0)),
        scale(sub(a4d, b2), T::constant(1.0 / 6.0)),
        d,
    ]
}

/// A pointer to the output that the blocks write through: each output pixel belongs to one
/// tile row and each tile row to one block, so no two threads write the same element.
#[derive(Clone, Copy)]
struct Shared<T>(*mut T);

// SAFETY: see the type's comment; the buffer outlives the parallel loop that uses it.
unsafe impl<T: Send> Send for Shared<T> {}
unsafe impl<T: Send> Sync for Shared<T> {}

/// The per-thread buffers: `V` `[α²][block][c_in]`, `M` `[α²][block][c_out]` (channels
/// innermost), and `rows`, a tile row's input (α rows), output or output gradient (m rows)
/// with channels innermost.
struct Scratch<'a, T> {
    v: &'a mut [T],
    m: &'a mut [T],
    rows: &'a mut [T],
}

impl<T: Element> Scratch<'_, T> {
    /// Runs `f` on the buffers for `c_in`/`c_out` channels, `block` tiles of side `alpha`
    /// transformed, `width` columns, in this thread's scratch memory.
    fn with<R>(
        [c_in, c_out]: [usize; 2],
        [block, alpha]: [usize; 2],
        width: usize,
        f: impl FnOnce(Scratch<'_, T>) -> R,
    ) -> R {
        let xi = alpha * alpha;
        let rows = alpha * width * c_in.max(c_out);
        T::with_scratch(xi * (c_in + c_out) * block + rows, |buffer| {
            let (v, rest) = buffer.split_at_mut(xi * c_in * block);
            let (m, rows) = rest.split_at_mut(xi * c_out * block);
            f(Scratch { v, m, rows })
        })
    }
}

/// How a problem's tile rows are cut into blocks and the blocks spread over the threads.
struct Blocks {
    /// Tile rows of the whole batch.
    tile_rows: usize,
    /// Tile rows per block.
    per_block: usize,
    /// Tiles per block (the row stride of `V` and `M`).
    block: usize,
    /// Blocks.
    count: usize,
    /// Threads the blocks run on.
    threads: usize,
}

impl Blocks {
    fn new(p: &Problem) -> Self {
        let [th, tw] = p.tiles();
        let tile_rows = p.batch * th;
        let threads = rayon::current_num_threads().max(1);
        let widest = p.c_in.max(p.c_out).max(1);
        // Whole tile rows per block, about BLOCK_ELEMENTS of V and of M.
        let mut per_block =
            (BLOCK_ELEMENTS / (p.xi() * widest * tw.max(1))).clamp(1, tile_rows.max(1));
        // Enough blocks for every thread where the batch has the rows for it.
        if tile_rows >= threads * 2 {
            per_block = per_block.min(tile_rows.div_ceil(threads));
            // Few blocks that do not divide among the threads leave one idle for long:
            // ResNet-20's 64-channel layers at batch 96 made 3 blocks of 128 tile rows, so
            // one of 2 threads idled a third of the layer; 4 of 96 ran it 1.1–1.4× as fast.
            // With many blocks the idle share is small (13 on 2 threads: one block in 14),
            // so they keep the memory budget's size (the Fashion-MNIST CNN's 14×14 layers
            // as 14 blocks of 32 tile rows instead of 13 of 36 were no faster).
            let count = tile_rows.div_ceil(per_block);
            if !count.is_multiple_of(threads) && count < 4 * threads {
                per_block = tile_rows.div_ceil(count.next_multiple_of(threads));
            }
        }
        Self {
            tile_rows,
            per_block,
            block: per_block * tw,
            count: tile_rows.div_ceil(per_block),
            threads,
        }
    }

    /// The global tile rows of block `b`.
    fn rows(&self, b: usize) -> std::ops::Range<usize> {
        let first = b * self.per_block;
        first..(first + self.per_block).min(self.tile_rows)
    }

    /// Whether the blocks run on the threads (each GEMM on one), or one after the other (each
    /// GEMM threaded).
    fn split(&self) -> bool {
        self.count >= self.threads
    }

    fn parallelism(&self) -> Parallelism {
        if self.split() {
            Parallelism::None
        } else {
            Parallelism::Rayon(self.threads)
        }
    }

    /// Runs `body(scratch, state, block)` for every block: one contiguous run of blocks per
    /// thread, each on that thread's scratch and its own `init()` state; returns the states.
    fn run<T: Element, S: Send>(
        &self,
        p: &Problem,
        init: impl Fn() -> S + Sync,
        body: impl Fn(&mut Scratch<'_, T>, &mut S, usize) + Sync,
    ) -> Vec<S> {
        let channels = [p.c_in, p.c_out];
        let width = p.m * p.tiles()[1] + 2;
        let per_thread = if self.split() {
            self.count.div_ceil(self.threads)
        } else {
            self.count
        };
        (0..self.count.div_ceil(per_thread.max(1)))
            .into_par_iter()
            .map(|t| {
                let mut state = init();
                Scratch::with(channels, [self.block, p.alpha()], width, |mut s| {
                    for b in t * per_thread..((t + 1) * per_thread).min(self.count) {
                        body(&mut s, &mut state, b);
                    }
                });
                state
            })
            .collect()
    }
}

fn run<T: Element>(p: &Problem, x: &[T], u: &[T], bias: Option<&[T]>) -> Vec<T> {
    let [oh, ow] = p.output;
    let out_len = p.batch * p.c_out * oh * ow;
    let mut out = vec![T::ZERO; out_len];
    let blocks = Blocks::new(p);
    if blocks.tile_rows == 0 || p.c_out == 0 {
        return out;
    }
    let (block, tw) = (blocks.block, p.tiles()[1]);
    let (c_in, c_out) = (p.c_in, p.c_out);
    let parallelism = blocks.parallelism();
    let shared = Shared(out.as_mut_ptr());
    blocks.run(
        p,
        || (),
        |s: &mut Scratch<'_, T>, _, b| {
            let rows = blocks.rows(b);
            let count = rows.len() * tw;
            simd::widest(Input((p, x, &mut *s.v, &mut *s.rows, block, rows.clone())));
            for xi in 0..p.xi() {
                // Mᵀ[ξ] (count × c_out) = Vᵀ[ξ] (count × c_in) · U[ξ]ᵀ (c_in × c_out), U[ξ] read in place.
                matmul(
                    [count, c_out, c_in],
                    (&mut s.m[xi * c_out * block..], c_out),
                    false,
                    &s.v[xi * c_in * block..],
                    [c_in, 1],
                    &u[xi * c_out..],
                    [p.xi() * c_out, 1],
                    parallelism,
                );
            }
            let args = (p, &*s.m, &mut *s.rows, block, rows, bias, shared, out_len);
            // SAFETY: `Shared`'s invariant: this block writes only its own tile rows' pixels,
            // inside `out` (`out_len` long).
            simd::widest(unsafe { Output::new(args) });
        },
    );
    out
}

/// The gradient with respect to the weight, as [`super::cpu::weight_grad`]: with `dM = A dY Aᵀ`
/// per output tile (α×α from m×m), `dU[ξ] = Σ_tiles dM[ξ] · V[ξ]ᵀ` (α² GEMMs over the
/// tiles, 2.25× or 4× fewer multiplies than im2col's), then `dW = Gᵀ dU G`. In tiles of
/// side 2 unless `KONV_WINOGRAD=4` (see [`tile_side`]).
pub fn weight_grad<T: Element>(g: &Geometry, x: &[T], grad: &[T]) -> Vec<T> {
    weight_grad_with(forced_tile_side().unwrap_or(2), g, x, grad)
}

/// [`weight_grad`] in tiles of side `m` (2 or 4).
///
/// # Panics
/// If `m` is neither 2 nor 4.
pub fn weight_grad_with<T: Element>(m: usize, g: &Geometry, x: &[T], grad: &[T]) -> Vec<T> {
    let p = Problem::of(g, m);
    let (c_in, c_out) = (p.c_in, p.c_out);
    let mut dw = vec![T::ZERO; c_out * c_in * 9];
    let blocks = Blocks::new(&p);
    if blocks.tile_rows == 0 || c_out == 0 || c_in == 0 {
        return dw;
    }
    let (block, tw) = (blocks.block, p.tiles()[1]);
    let parallelism = blocks.parallelism();
    let xis = p.xi();
    let partials = blocks.run(
        &p,
        || vec![T::ZERO; xis * c_out * c_in],
        |s: &mut Scratch<'_, T>, du: &mut Vec<T>, b| {
            let rows = blocks.rows(b);
            let count = rows.len() * tw;
            let p = &p;
            simd::widest(Input((p, x, &mut *s.v, &mut *s.rows, block, rows.clone())));
            simd::widest(Grad((p, grad, &mut *s.m, &mut *s.rows, block, rows)));
            for xi in 0..xis {
                // dU[ξ] (c_out × c_in) += dM[ξ] (c_out × count) · V[ξ]ᵀ (count × c_in).
                matmul(
                    [c_out, c_in, count],
                    (&mut du[xi * c_out * c_in..], c_in),
                    true,
                    &s.m[xi * c_out * block..],
                    [1, c_out],
                    &s.v[xi * c_in * block..],
                    [c_in, 1],
                    parallelism,
                );
            }
        },
    );
    let mut partials = partials.into_iter();
    let mut du = partials
        .next()
        .unwrap_or_else(|| vec![T::ZERO; xis * c_out * c_in]);
    for other in partials {
        for (a, b) in du.iter_mut().zip(&other) {
            *a += *b;
        }
    }
    // dW = Gᵀ dU G per channel pair, on the rows then the columns.
    let alpha = p.alpha();
    dw.par_chunks_mut(c_in * 9)
        .enumerate()
        .for_each(|(o, dwo)| {
            for (i, k) in dwo.chunks_exact_mut(9).enumerate() {
                let at = |xi: usize| du[(xi * c_out + o) * c_in + i];
                // Gᵀ down each of the α columns, then along each of the 3 rows that gives.
                let mut columns = [[T::ZERO; 3]; 6];
                for (c, column) in columns.iter_mut().enumerate().take(alpha) {
                    let mut values = [T::ZERO; 6];
                    for (r, value) in values.iter_mut().enumerate().take(alpha) {
                        *value = at(r * alpha + c);
                    }
                    *column = g_t(values, alpha);
                }
                for r in 0..3 {
                    let mut values = [T::ZERO; 6];
                    for (c, value) in values.iter_mut().enumerate().take(alpha) {
                        *value = columns[c][r];
                    }
                    k[r * 3..r * 3 + 3].copy_from_slice(&g_t(values, alpha));
                }
            }
        });
    dw
}

/// Gᵀ on `alpha` values (the first 4 or 6 of `u`): for F(2×2, 3×3) `u0 + ½(u1 + u2),
/// ½(u1 − u2), ½(u1 + u2) + u3`; for F(4×4, 3×3) `u0/4 − (u1 + u2)/6 + (u3 + u4)/24,
/// (u2 − u1)/6 + (u3 − u4)/12, (u3 + u4 − u1 − u2)/6 + u5`.
fn g_t<T: Element>(u: [T; 6], alpha: usize) -> [T; 3] {
    if alpha == 4 {
        let half = T::HALF;
        let [a, b, c, d, ..] = u;
        [a + (b + c) * half, (b - c) * half, (b + c) * half + d]
    } else {
        let [u0, u1, u2, u3, u4, u5] = u;
        let sixth = T::constant(1.0 / 6.0);
        let (s12, s34) = (u1 + u2, u3 + u4);
        [
            u0 * T::constant(0.25) - s12 * sixth + s34 * T::constant(1.0 / 24.0),
            (u2 - u1) * sixth + (u3 - u4) * T::constant(1.0 / 12.0),
            (s34 - s12) * sixth + u5,
        ]
    }
}

/// The arguments of [`transform_input`] and [`transform_grad`]: the problem, the input (or
/// output gradient), `V` (or `M`), the rows buffer, the block's tiles and its tile rows.
type TransformArgs<'a, T> = (
    &'a Problem,
    &'a [T],
    &'a mut [T],
    &'a mut [T],
    usize,
    std::ops::Range<usize>,
);

/// The arguments of [`transform_output`]: the problem, `M`, the rows buffer, the block's
/// tiles and its tile rows, the bias, the output and its length.
type OutputArgs<'a, T> = (
    &'a Problem,
    &'a [T],
    &'a mut [T],
    usize,
    std::ops::Range<usize>,
    Option<&'a [T]>,
    Shared<T>,
    usize,
);

/// [`transform_input`] as a [`simd::Kernel`].
struct Input<'a, T>(TransformArgs<'a, T>);

impl<T: Element> simd::Kernel for Input<'_, T> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        transform_input(self.0)
    }
}

/// [`transform_grad`] as a [`simd::Kernel`].
struct Grad<'a, T>(TransformArgs<'a, T>);

impl<T: Element> simd::Kernel for Grad<'_, T> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        transform_grad(self.0)
    }
}

/// [`transform_output`] as a [`simd::Kernel`], made by [`Output::new`] only.
struct Output<'a, T>(OutputArgs<'a, T>);

impl<'a, T: Element> Output<'a, T> {
    /// # Safety
    /// As [`transform_output`]'s, for `args`.
    unsafe fn new(args: OutputArgs<'a, T>) -> Self {
        Self(args)
    }
}

impl<T: Element> simd::Kernel for Output<'_, T> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        // SAFETY: whoever called `Output::new` keeps `transform_output`'s contract.
        unsafe { transform_output(self.0) }
    }
}

/// `dM = A dY Aᵀ` of the output-gradient tiles of global tile rows `rows` (m×m of `grad`,
/// zero past the output's edge) into `m` `[α²][block][c_out]`: each tile row's m rows of
/// `dY` are first copied channels innermost into `buffer` (`[m][m · tw][c_out]`), so the
/// transform runs on `LANES` channels at a time.
#[inline(always)]
fn transform_grad<T: Element>((p, grad, m, buffer, block, rows): TransformArgs<'_, T>) {
    let [oh, ow] = p.output;
    let [th, tw] = p.tiles();
    let (c_out, side) = (p.c_out, p.m);
    let plane = oh * ow;
    let stride = c_out * block;
    let row_len = side * tw * c_out;
    let buffer = &mut buffer[..side * row_len];
    for (k, r) in rows.enumerate() {
        let (n, ty) = (r / th, r % th);
        let image = &grad[n * c_out * plane..(n + 1) * c_out * plane];
        for (a, row) in buffer.chunks_exact_mut(row_len).enumerate() {
            let y = side * ty + a;
            if y < oh {
                simd::channels_last(&image[y * ow..], plane, ow, c_out, row);
                row[ow * c_out..].fill(T::ZERO);
            } else {
                row.fill(T::ZERO);
            }
        }
        let row = |a: usize| &buffer[a * row_len..(a + 1) * row_len];
        for tx in 0..tw {
            let at = (k * tw + tx) * c_out;
            let first = side * tx * c_out;
            if side == 4 {
                let dy = [row(0), row(1), row(2), row(3)];
                by_lanes!(c_out, |c, N| grad_tile4::<T, N>(
                    dy,
                    first + c,
                    c_out,
                    m,
                    [stride, at + c]
                ));
            } else {
                let dy = [row(0), row(1)];
                by_lanes!(c_out, |c, N| grad_tile::<T, N>(
                    dy,
                    first + c,
                    c_out,
                    m,
                    [stride, at + c]
                ));
            }
        }
    }
}

/// `A dY Aᵀ` of one tile for `N` channels: `dy[a]` is output row `a`, its column `b`'s
/// channels at `first + b · c_out`; the 16 values go to `m` at `at` of planes `stride` apart.
/// A turns two values into `y0, y0 + y1, y0 − y1, −y1`.
// The loops take one column across the rows of a 2-D array.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn grad_tile<T: Element, const N: usize>(
    dy: [&[T]; 2],
    first: usize,
    c_out: usize,
    m: &mut [T],
    [stride, at]: [usize; 2],
) {
    // A on the rows, column by column: t[b][i]. (No closures in the kernels: the compiler
    // left some as calls to baseline code.)
    let t = [
        a::<T, N>([load(dy[0], first), load(dy[1], first)]),
        a::<T, N>([load(dy[0], first + c_out), load(dy[1], first + c_out)]),
    ];
    for i in 0..4 {
        for (j, v) in a([t[0][i], t[1][i]]).into_iter().enumerate() {
            store(m, (i * 4 + j) * stride + at, v);
        }
    }
}

/// A on two values of `N` lanes: `y0, y0 + y1, y0 − y1, −y1`.
#[inline(always)]
fn a<T: Element, const N: usize>([y0, y1]: [[T; N]; 2]) -> [[T; N]; 4] {
    [y0, add(y0, y1), sub(y0, y1), sub([T::ZERO; N], y1)]
}

/// [`grad_tile`] for F(4×4, 3×3): `A dY Aᵀ` (6×6) of one 4×4 tile for `N` channels.
// The loops take one column across the rows of a 2-D array.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn grad_tile4<T: Element, const N: usize>(
    dy: [&[T]; 4],
    first: usize,
    c_out: usize,
    m: &mut [T],
    [stride, at]: [usize; 2],
) {
    // A down each of the 4 columns: t[b][i]. (Built as an array of results, not filled into
    // zeros: the compiler zeroed such arrays with a call to `memset` per tile.)
    let t = [
        a6::<T, N>(column(dy, first)),
        a6::<T, N>(column(dy, first + c_out)),
        a6::<T, N>(column(dy, first + 2 * c_out)),
        a6::<T, N>(column(dy, first + 3 * c_out)),
    ];
    for i in 0..6 {
        for (j, v) in a6([t[0][i], t[1][i], t[2][i], t[3][i]])
            .into_iter()
            .enumerate()
        {
            store(m, (i * 6 + j) * stride + at, v);
        }
    }
}

/// The `N` values at `at` of each of the `R` rows.
#[inline(always)]
fn column<T: Element, const R: usize, const N: usize>(rows: [&[T]; R], at: usize) -> [[T; N]; R] {
    let mut values = [[T::ZERO; N]; R];
    for (value, row) in values.iter_mut().zip(rows) {
        *value = load(row, at);
    }
    values
}

/// F(4×4, 3×3)'s A on four values of `N` lanes: `y0, y0 + y1 + y2 + y3, y0 − y1 + y2 − y3,
/// y0 + 2y1 + 4y2 + 8y3, y0 − 2y1 + 4y2 − 8y3, y3`.
#[inline(always)]
fn a6<T: Element, const N: usize>([y0, y1, y2, y3]: [[T; N]; 4]) -> [[T; N]; 6] {
    let (even, odd) = (add(y0, y2), add(y1, y3));
    let even4 = add(y0, scale(y2, T::constant(4.0)));
    let odd8 = add(scale(y1, T::constant(2.0)), scale(y3, T::constant(8.0)));
    [
        y0,
        add(even, odd),
        sub(even, odd),
        add(even4, odd8),
        sub(even4, odd8),
        y3,
    ]
}

/// `V = Bᵀ d B` of the tiles of global tile rows `rows` (image `r / th`, tile row `r % th`)
/// into `v` `[α²][block][c_in]`, one tile row at a time: its α input rows (zero outside the
/// image) are first copied channels innermost into `buffer` (`[α][m · tw + 2][c_in]`), so
/// the transform runs on `LANES` channels at a time.
#[inline(always)]
fn transform_input<T: Element>((p, x, v, buffer, block, rows): TransformArgs<'_, T>) {
    let [h, w] = p.input;
    let [th, tw] = p.tiles();
    let (c_in, side, alpha) = (p.c_in, p.m, p.alpha());
    let plane = h * w;
    let stride = c_in * block;
    let width = side * tw + 2;
    let row_len = width * c_in;
    // Padded columns q = 0 .. width are image columns q − pad; lo..hi of them lie inside.
    let lo = p.pad[1].min(width);
    let hi = (w + p.pad[1]).min(width).max(lo);
    let buffer = &mut buffer[..alpha * row_len];
    // Where in `buffer` each of the tile row's α input rows is: the next tile row of the same
    // image starts m rows down, so it takes the last 2 as its first and reads only m more.
    let mut slots = [0, 1, 2, 3, 4, 5];
    let order = &mut slots[..alpha];
    let mut previous = None;
    for (k, r) in rows.enumerate() {
        let (n, ty) = (r / th, r % th);
        let y0 = (side * ty) as isize - p.pad[0] as isize;
        let image = &x[n * c_in * plane..(n + 1) * c_in * plane];
        let fresh = if ty > 0 && previous == Some(r - 1) {
            order.rotate_left(side);
            alpha - side
        } else {
            0
        };
        previous = Some(r);
        for (i, &slot) in order.iter().enumerate().skip(fresh) {
            let row = &mut buffer[slot * row_len..(slot + 1) * row_len];
            let iy = y0 + i as isize;
            if iy < 0 || iy >= h as isize {
                row.fill(T::ZERO);
                continue;
            }
            let start = iy as usize * w + lo - p.pad[1];
            row[..lo * c_in].fill(T::ZERO);
            row[hi * c_in..].fill(T::ZERO);
            simd::channels_last(&image[start..], plane, hi - lo, c_in, &mut row[lo * c_in..]);
        }
        let buffer = &*buffer;
        let row = |i: usize| &buffer[order[i] * row_len..(order[i] + 1) * row_len];
        for tx in 0..tw {
            let at = (k * tw + tx) * c_in;
            let first = side * tx * c_in;
            if side == 4 {
                let d = [row(0), row(1), row(2), row(3), row(4), row(5)];
                by_lanes!(c_in, |c, N| input_tile4::<T, N>(
                    d,
                    first + c,
                    c_in,
                    v,
                    [stride, at + c]
                ));
            } else {
                let d = [row(0), row(1), row(2), row(3)];
                by_lanes!(c_in, |c, N| input_tile::<T, N>(
                    d,
                    first + c,
                    c_in,
                    v,
                    [stride, at + c]
                ));
            }
        }
    }
}

/// `Bᵀ d B` of one 4×4 tile for `N` channels: `d[r]` is input row `r`, its column `q`'s
/// channels at `first + q · c_in`; the 16 values go to `v` at `at` of planes `stride` apart.
/// Bᵀ turns four values into `d0 − d2, d1 + d2, d2 − d1, d1 − d3`.
// The loops take one column across the rows of a 2-D array.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn input_tile<T: Element, const N: usize>(
    d: [&[T]; 4],
    first: usize,
    c_in: usize,
    v: &mut [T],
    [stride, at]: [usize; 2],
) {
    // Bᵀ on the rows, column by column: t[q][r]. (No closures or `[_; 4].map`: the compiler
    // left those as calls to baseline code. And an array of results, not filled into zeros.)
    let t = [
        bt::<T, N>(column(d, first)),
        bt::<T, N>(column(d, first + c_in)),
        bt::<T, N>(column(d, first + 2 * c_in)),
        bt::<T, N>(column(d, first + 3 * c_in)),
    ];
    for r in 0..4 {
        for (j, value) in bt([t[0][r], t[1][r], t[2][r], t[3][r]])
            .into_iter()
            .enumerate()
        {
            store(v, (r * 4 + j) * stride + at, value);
        }
    }
}

/// Bᵀ on four values of `N` lanes: `d0 − d2, d1 + d2, d2 − d1, d1 − d3`.
#[inline(always)]
fn bt<T: Element, const N: usize>([a, b, e, f]: [[T; N]; 4]) -> [[T; N]; 4] {
    [sub(a, e), add(b, e), sub(e, b), sub(b, f)]
}

/// [`input_tile`] for F(4×4, 3×3): `Bᵀ d B` of one 6×6 tile for `N` channels, the 36 values
/// to `v` at `at` of planes `stride` apart.
// The loops take one column across the rows of a 2-D array.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn input_tile4<T: Element, const N: usize>(
    d: [&[T]; 6],
    first: usize,
    c_in: usize,
    v: &mut [T],
    [stride, at]: [usize; 2],
) {
    // Bᵀ down each of the 6 columns: t[q][r].
    let t = [
        bt6::<T, N>(column(d, first)),
        bt6::<T, N>(column(d, first + c_in)),
        bt6::<T, N>(column(d, first + 2 * c_in)),
        bt6::<T, N>(column(d, first + 3 * c_in)),
        bt6::<T, N>(column(d, first + 4 * c_in)),
        bt6::<T, N>(column(d, first + 5 * c_in)),
    ];
    for r in 0..6 {
        for (j, value) in bt6([t[0][r], t[1][r], t[2][r], t[3][r], t[4][r], t[5][r]])
            .into_iter()
            .enumerate()
        {
            store(v, (r * 6 + j) * stride + at, value);
        }
    }
}

/// F(4×4, 3×3)'s Bᵀ on six values of `N` lanes: `4d0 − 5d2 + d4, d3 + d4 − 4(d1 + d2),
/// d4 − d3 + 4(d1 − d2), d4 − d2 + 2(d3 − d1), d4 − d2 − 2(d3 − d1), 4d1 − 5d3 + d5`.
#[inline(always)]
fn bt6<T: Element, const N: usize>([d0, d1, d2, d3, d4, d5]: [[T; N]; 6]) -> [[T; N]; 6] {
    let (two, four) = (T::constant(2.0), T::constant(4.0));
    let d42 = sub(d4, d2);
    let odd2 = scale(sub(d3, d1), two);
    [
        add(scale(sub(d0, d2), four), d42),
        sub(add(d3, d4), scale(add(d1, d2), four)),
        add(sub(d4, d3), scale(sub(d1, d2), four)),
        add(d42, odd2),
        sub(d42, odd2),
        add(scale(sub(d1, d3), four), sub(d5, d3)),
    ]
}

/// `Y = Aᵀ M A` (+ bias) of the tiles of global tile rows `rows`, from `m`
/// `[α²][block][c_out]`, into the output: each tile row's m output rows are made channels
/// innermost in `buffer` (`[m][m · tw][c_out]`), `LANES` channels at a time, then copied to
/// the output's planes.
///
/// # Safety
/// `out` points to `out_len` elements, and no other thread writes the pixels of these tile
/// rows (as `run`'s blocks do, see [`Shared`]).
#[inline(always)]
unsafe fn transform_output<T: Element>(
    (p, m, buffer, block, rows, bias, out, out_len): OutputArgs<'_, T>,
) {
    let [oh, ow] = p.output;
    let [th, tw] = p.tiles();
    let (c_out, side) = (p.c_out, p.m);
    let stride = c_out * block;
    let row_len = side * tw * c_out;
    let buffer = &mut buffer[..side * row_len];
    for (k, r) in rows.enumerate() {
        let (n, ty) = (r / th, r % th);
        for tx in 0..tw {
            let at = (k * tw + tx) * c_out;
            let first = side * tx * c_out;
            if side == 4 {
                by_lanes!(c_out, |c, N| output_tile4::<T, N>(
                    m,
                    [stride, at + c],
                    match bias {
                        Some(b) => load(b, c),
                        None => [T::ZERO; N],
                    },
                    buffer,
                    [row_len, first + c, c_out]
                ));
            } else {
                by_lanes!(c_out, |c, N| output_tile::<T, N>(
                    m,
                    [stride, at + c],
                    match bias {
                        Some(b) => load(b, c),
                        None => [T::ZERO; N],
                    },
                    buffer,
                    [row_len, first + c, c_out]
                ));
            }
        }
        for (a, row) in buffer.chunks_exact(row_len).enumerate() {
            let y = side * ty + a;
            if y >= oh {
                continue;
            }
            // Row y of every output channel of image n, from the row's ow × c_out values.
            let first = (n * c_out * oh + y) * ow;
            debug_assert!(first + (c_out - 1) * oh * ow + ow <= out_len);
            // SAFETY: the rows lie inside the output (row y < oh of channels < c_out of
            // image n < batch), belong to this tile row alone, and do not overlap `buffer`.
            unsafe { simd::transpose(row.as_ptr(), c_out, [ow, c_out], out.0.add(first), oh * ow) };
        }
    }
}

/// `Aᵀ M A + bias` of one tile for `N` channels: the 16 values from `m` at `at` of planes
/// `stride` apart; the 2×2 result into `y`, row `a` at `a · row_len`, column `b` at
/// `first + b · c_out`. Aᵀ turns four values into `m0 + m1 + m2, m1 − m2 − m3`.
// The loops take one column across the rows of a 2-D array.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn output_tile<T: Element, const N: usize>(
    m: &[T],
    [stride, at]: [usize; 2],
    bias: [T; N],
    y: &mut [T],
    [row_len, first, c_out]: [usize; 3],
) {
    // Aᵀ on the rows, column by column: s[col][a].
    let plane = 4 * stride;
    let s = [
        a_t::<T, N>(strided(m, at, plane)),
        a_t::<T, N>(strided(m, at + stride, plane)),
        a_t::<T, N>(strided(m, at + 2 * stride, plane)),
        a_t::<T, N>(strided(m, at + 3 * stride, plane)),
    ];
    for a in 0..2 {
        for (b, value) in a_t([s[0][a], s[1][a], s[2][a], s[3][a]])
            .into_iter()
            .enumerate()
        {
            store(y, a * row_len + first + b * c_out, add(value, bias));
        }
    }
}

/// Aᵀ on four values of `N` lanes: `m0 + m1 + m2, m1 − m2 − m3`.
#[inline(always)]
fn a_t<T: Element, const N: usize>([a, b, e, f]: [[T; N]; 4]) -> [[T; N]; 2] {
    [add(add(a, b), e), sub(sub(b, e), f)]
}

/// [`output_tile`] for F(4×4, 3×3): `Aᵀ M A + bias` of one tile for `N` channels, the 36
/// values from `m` at `at` of planes `stride` apart, the 4×4 result into `y`.
// The loops take one column across the rows of a 2-D array.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn output_tile4<T: Element, const N: usize>(
    m: &[T],
    [stride, at]: [usize; 2],
    bias: [T; N],
    y: &mut [T],
    [row_len, first, c_out]: [usize; 3],
) {
    // Aᵀ down each of the 6 columns: s[col][a].
    let plane = 6 * stride;
    let s = [
        a_t6::<T, N>(strided(m, at, plane)),
        a_t6::<T, N>(strided(m, at + stride, plane)),
        a_t6::<T, N>(strided(m, at + 2 * stride, plane)),
        a_t6::<T, N>(strided(m, at + 3 * stride, plane)),
        a_t6::<T, N>(strided(m, at + 4 * stride, plane)),
        a_t6::<T, N>(strided(m, at + 5 * stride, plane)),
    ];
    for a in 0..4 {
        for (b, value) in a_t6([s[0][a], s[1][a], s[2][a], s[3][a], s[4][a], s[5][a]])
            .into_iter()
            .enumerate()
        {
            store(y, a * row_len + first + b * c_out, add(value, bias));
        }
    }
}

/// `R` runs of `N` values from `m`, at `at` and `plane` apart.
#[inline(always)]
fn strided<T: Element, const R: usize, const N: usize>(
    m: &[T],
    at: usize,
    plane: usize,
) -> [[T; N]; R] {
    let mut values = [[T::ZERO; N]; R];
    for (i, value) in values.iter_mut().enumerate() {
        *value = load(m, at + i * plane);
    }
    values
}

/// F(4×4, 3×3)'s Aᵀ on six values of `N` lanes: `m0 + (m1 + m2) + (m3 + m4),
/// (m1 − m2) + 2(m3 − m4), (m1 + m2) + 4(m3 + m4), (m1 − m2) + 8(m3 − m4) + m5`.
#[inline(always)]
fn a_t6<T: Element, const N: usize>([m0, m1, m2, m3, m4, m5]: [[T; N]; 6]) -> [[T; N]; 4] {
    let (s12, d12, s34, d34) = (add(m1, m2), sub(m1, m2), add(m3, m4), sub(m3, m4));
    [
        add(add(m0, s12), s34),
        add(d12, scale(d34, T::constant(2.0))),
        add(s12, scale(s34, T::constant(4.0))),
        add(add(d12, scale(d34, T::constant(8.0))), m5),
    ]
}

#[cfg(test)]
mod tests {
    use super::{
        Blocks, Problem, forward_applies, forward_with, input_grad_with, weight_grad_with,
    };
    use crate::conv::cpu::{Element, Geometry};
    use burn::backend::ops::ConvOptions;

    /// The forward, input gradient and weight gradient of a 3×3 stride-1 correlation with
    /// padding `pad`, as plain loops in `f64`: `y`, `dx` (from `dy`), `dw` (from `dy`).
    fn reference(
        g: &Geometry,
        [x, w, dy]: [&[f64]; 3],
        pad: usize,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let ([h, wd], [oh, ow]) = (g.input, g.output);
        let (c_in, c_out) = (g.c_in, g.c_out);
        let mut y = vec![0.0; g.batch * c_out * oh * ow];
        let mut dx = vec![0.0; g.batch * c_in * h * wd];
        let mut dw = vec![0.0; c_out * c_in * 9];
        for n in 0..g.batch {
            for o in 0..c_out {
                for (oy, ox) in (0..oh).flat_map(|oy| (0..ow).map(move |ox| (oy, ox))) {
                    let yi = ((n * c_out + o) * oh + oy) * ow + ox;
                    for c in 0..c_in {
                        for (ky, kx) in (0..3).flat_map(|ky| (0..3).map(move |kx| (ky, kx))) {
                            let (iy, ix) = (oy + ky, ox + kx);
                            if iy < pad || ix < pad || iy - pad >= h || ix - pad >= wd {
                                continue;
                            }
                            let xi = ((n * c_in + c) * h + iy - pad) * wd + ix - pad;
                            let wi = ((o * c_in + c) * 3 + ky) * 3 + kx;
                            y[yi] += x[xi] * w[wi];
                            dx[xi] += dy[yi] * w[wi];
                            dw[wi] += dy[yi] * x[xi];
                        }
                    }
                }
            }
        }
        (y, dx, dw)
    }

    /// The largest difference of `ours` from `expected`, over the largest `|expected|`.
    fn relative<T: Element>(ours: &[T], expected: &[f64], to_f64: fn(T) -> f64) -> f64 {
        assert_eq!(ours.len(), expected.len());
        let scale = expected.iter().fold(1e-12f64, |m, v| m.max(v.abs()));
        let worst = ours
            .iter()
            .zip(expected)
            .map(|(a, b)| (to_f64(*a) - b).abs())
            .fold(0.0, f64::max);
        worst / scale
    }

    #[test]
    fn both_tile_sizes_equal_plain_loops() {
        // [batch, c_in, h, w], c_out, padding: sides that leave part tiles of both sizes, no
        // padding and padding 2, and channels past one chunk of 16 with a remainder.
        let cases = [
            ([3, 5, 13, 10], 7, 1),
            ([2, 3, 9, 9], 4, 0),
            ([2, 4, 8, 11], 3, 2),
            ([2, 18, 12, 12], 17, 1),
        ];
        for ([batch, c_in, h, w], c_out, pad) in cases {
            let options = ConvOptions::new([1, 1], [pad, pad], [1, 1], 1);
            let g = Geometry::new([batch, c_in, h, w], [c_out, c_in, 3, 3], &options);
            let t = g.transposed().expect("stride 1, padding below 3");
            let value = |i: usize, m: usize| ((i * 7919) % m) as f64 / m as f64 - 0.5;
            let x: Vec<f64> = (0..batch * c_in * h * w).map(|i| value(i, 31)).collect();
            let wt: Vec<f64> = (0..c_out * c_in * 9).map(|i| value(i, 17)).collect();
            let dy: Vec<f64> = (0..g.output_len()).map(|i| value(i, 23)).collect();
            let (y, dx, dw) = reference(&g, [&x, &wt, &dy], pad);
            let f32s = |v: &[f64]| v.iter().map(|v| *v as f32).collect::<Vec<f32>>();
            let (x32, w32, dy32) = (f32s(&x), f32s(&wt), f32s(&dy));
            for m in [2, 4] {
                let what = format!("F({m}×{m}, 3×3) on {:?} → {c_out}, pad {pad}", g.input);
                // f64: only rounding, far below any error in the transforms.
                let f64s = |v: f64| v;
                let checks = [
                    ("y", relative(&forward_with(m, &g, &x, &wt, None), &y, f64s)),
                    ("dx", relative(&input_grad_with(m, &t, &wt, &dy), &dx, f64s)),
                    ("dw", relative(&weight_grad_with(m, &g, &x, &dy), &dw, f64s)),
                ];
                for (name, error) in checks {
                    assert!(error < 1e-12, "{what}, f64: {name} off by {error:e}");
                }
                // f32: within the rounding the module docs give (measured here: 1–5e-7 with
                // F(2×2), 0.5–8e-6 with F(4×4), the most with the most channels).
                let bound = if m == 2 { 2e-6 } else { 3e-5 };
                let wide = |v: f32| v as f64;
                let checks = [
                    (
                        "y",
                        relative(&forward_with(m, &g, &x32, &w32, None), &y, wide),
                    ),
                    (
                        "dx",
                        relative(&input_grad_with(m, &t, &w32, &dy32), &dx, wide),
                    ),
                    (
                        "dw",
                        relative(&weight_grad_with(m, &g, &x32, &dy32), &dw, wide),
                    ),
                ];
                for (name, error) in checks {
                    assert!(error < bound, "{what}, f32: {name} off by {error:e}");
                }
            }
        }
    }

    fn geometry(
        batch: usize,
        [c_in, c_out]: [usize; 2],
        side: usize,
        stride: usize,
        pad: usize,
    ) -> Geometry {
        let options = ConvOptions::new([stride, stride], [pad, pad], [1, 1], 1);
        Geometry::new([batch, c_in, side, side], [c_out, c_in, 3, 3], &options)
    }

    #[test]
    fn few_blocks_divide_among_the_threads() {
        let blocks = |g: Geometry, threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("a thread pool");
            pool.install(|| Blocks::new(&Problem::of(&g, 2)))
        };
        // ResNet-20's 64-channel layers at batch 96: 384 tile rows, 4 blocks of 96 on 2
        // threads (3 of 128 before), 3 of 128 on 3.
        let b = blocks(geometry(96, [64, 64], 7, 1, 1), 2);
        assert_eq!((b.count, b.per_block), (4, 96));
        let b = blocks(geometry(96, [64, 64], 7, 1, 1), 3);
        assert_eq!((b.count, b.per_block), (3, 128));
        // The Fashion-MNIST CNN's 128-channel 14×14 layers at batch 64: 448 tile rows in 13
        // blocks of 36, the size the memory budget gives, although 13 do not divide by 2.
        let b = blocks(geometry(64, [128, 128], 14, 1, 1), 2);
        assert_eq!((b.count, b.per_block), (13, 36));
        // Every tile row in exactly one block.
        for (g, threads) in [
            (geometry(96, [64, 64], 7, 1, 1), 2),
            (geometry(7, [64, 72], 9, 1, 1), 2),
        ] {
            let b = blocks(g, threads);
            let rows: Vec<usize> = (0..b.count).flat_map(|i| b.rows(i)).collect();
            assert_eq!(rows, (0..b.tile_rows).collect::<Vec<_>>(), "{g:?}");
        }
    }

    #[test]
    fn winograd_takes_wide_stride_1_layers_with_enough_tiles() {
        // ResNet-18's layer1 at batch 1 (784 tiles), and the Fashion-MNIST CNN's last layer.
        assert!(forward_applies(&geometry(1, [64, 64], 56, 1, 1)));
        let transposed = |g: Geometry| g.transposed().expect("stride 1, padding below 3");
        assert!(forward_applies(&transposed(geometry(
            1,
            [64, 64],
            56,
            1,
            1
        ))));
        assert!(forward_applies(&geometry(32, [256, 256], 7, 1, 1)));
        // Too few tiles (ResNet-18's layer4 at batch 1: 16), too few channels, stride 2.
        assert!(!forward_applies(&geometry(1, [512, 512], 7, 1, 1)));
        assert!(forward_applies(&geometry(48, [32, 32], 14, 1, 1)));
        assert!(!forward_applies(&geometry(48, [16, 16], 28, 1, 1)));
        assert!(!forward_applies(&geometry(8, [64, 64], 56, 2, 1)));
        // Padding 3: the forward, not the input gradient (its own padding would be −1).
        assert!(forward_applies(&geometry(4, [64, 64], 8, 1, 3)));
        assert!(geometry(4, [64, 64], 8, 1, 3).transposed().is_none());
    }
}
