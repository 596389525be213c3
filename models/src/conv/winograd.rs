//! Winograd's minimal filtering F(2×2, 3×3) for stride-1 3×3 convolutions (Lavin & Gray,
//! "Fast Algorithms for Convolutional Neural Networks", 2016): each 2×2 block of output comes
//! from a 4×4 patch of input in 16 multiplies per channel pair instead of 36, 2.25× fewer.
//!
//! ```text
//! U[ξ] (c_out × c_in)  = (G g Gᵀ)[ξ]        weights, once per call
//! V[ξ] (c_in × tiles)  = (Bᵀ d B)[ξ]        4×4 input patches, one column per output tile
//! M[ξ] (c_out × tiles) = U[ξ] · V[ξ]         16 GEMMs on the gemm crate's micro-kernels
//! Y    (2×2 per tile)  = Aᵀ M A  (+ bias)
//! ```
//!
//! The tiles of the whole batch are cut into blocks whose `V` and `M` stay within about
//! 2 MiB each (the size `cpu`'s im2col tiles use), and the blocks run on the rayon threads,
//! one contiguous run each, in that thread's scratch memory. The input gradient of a stride-1 3×3 convolution is itself
//! one (of the output gradient, with the kernel turned 180° and its channel axes swapped), so
//! it runs here too. F(2×2, 3×3)'s transforms only add and halve, so its rounding stays
//! within a few ulps of the direct sum's (F(4×4, 3×3) would save more multiplies at a larger
//! error).

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

/// Values per transformed tile: 4×4.
const XI: usize = 16;

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
    batch: usize,
    c_in: usize,
    input: [usize; 2],
    c_out: usize,
    output: [usize; 2],
    /// Rows and columns of zeros before the input.
    pad: [usize; 2],
}

impl Problem {
    /// The forward correlation of `g`.
    fn of(g: &Geometry) -> Self {
        Self {
            batch: g.batch,
            c_in: g.c_in,
            input: g.input,
            c_out: g.c_out,
            output: g.output,
            pad: g.pad,
        }
    }

    fn tiles(&self) -> [usize; 2] {
        [self.output[0].div_ceil(2), self.output[1].div_ceil(2)]
    }
}

/// The forward convolution, as [`super::cpu::forward`].
pub fn forward<T: Element>(g: &Geometry, x: &[T], weight: &[T], bias: Option<&[T]>) -> Vec<T> {
    let p = Problem::of(g);
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
        transform_weights(c_out, c_in, taps, false)
    });
    run(&p, x, &u, bias)
}

/// The gradient with respect to the input, as [`super::cpu::input_grad`], given `t`, the
/// forward correlation that computes it ([`Geometry::transposed`]: `grad` padded by
/// `2 − pad`, input and output channels swapped); `weight` is the layer's own
/// `[t.c_in, t.c_out, 3, 3]`, read turned 180° in place.
pub fn input_grad<T: Element>(t: &Geometry, weight: &[T], grad: &[T]) -> Vec<T> {
    let (ins, outs) = (t.c_in, t.c_out);
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
        transform_weights(outs, ins, taps, true)
    });
    run(&Problem::of(t), grad, &u, None)
}

/// `U = G g Gᵀ` for every (output, input) channel pair, laid out `[ins][16][outs]` (U[ξ] is
/// the `outs × ins` GEMM left-hand side in columns `16 · outs` apart, which the `gemm` crate
/// reads in place beside `V`'s channels-innermost columns), threaded over the inputs, each
/// on 16 outputs at a time. `taps` holds the kernels `[ins][9][outs]` (tap `3r + c` of each
/// input channel, over the outputs), read turned 180° when `flip`.
fn transform_weights<T: Element>(outs: usize, ins: usize, taps: &[T], flip: bool) -> Vec<T> {
    let mut u = vec![T::ZERO; ins * XI * outs];
    if ins == 0 || outs == 0 {
        return u;
    }
    u.par_chunks_mut(XI * outs)
        .zip(taps.par_chunks(9 * outs))
        .for_each(|(ui, taps)| simd::widest(Weights((taps, ui, outs, flip))));
    u
}

/// [`weight_tile`] over all the outputs, as a [`simd::Kernel`].
struct Weights<'a, T>((&'a [T], &'a mut [T], usize, bool));

impl<T: Element> simd::Kernel for Weights<'_, T> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        let (taps, u, outs, flip) = self.0;
        by_lanes!(outs, |o, N| weight_tile::<T, N>(taps, u, outs, o, flip));
    }
}

/// `G g Gᵀ` of one input channel's kernels for `N` outputs from `o`: tap `3r + c` at
/// `taps[(3r + c) · outs + o ..]` (or tap `8 − (3r + c)`, when `flip`), the 16 values into
/// `u` at `ξ · outs + o`. G turns three values into `a, (a + b + d)/2, (a − b + d)/2, d`.
// The loops take one column across the rows of a 2-D array.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn weight_tile<T: Element, const N: usize>(
    taps: &[T],
    u: &mut [T],
    outs: usize,
    o: usize,
    flip: bool,
) {
    // G g: 4×3, column by column (gg[r][c]); then (G g) Gᵀ: each of its rows through G.
    let mut gg = [[[T::ZERO; N]; 3]; 4];
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
            store(u, (r * 4 + c) * outs + o, value);
        }
    }
}

/// G on three values of `N` lanes: `a, (a + b + d)/2, (a − b + d)/2, d`.
#[inline(always)]
fn g<T: Element, const N: usize>([a, b, d]: [[T; N]; 3]) -> [[T; N]; 4] {
    let ad = add(a, d);
    [a, scale(add(ad, b), T::HALF), scale(sub(ad, b), T::HALF), d]
}

/// A pointer to the output that the blocks write through: each output pixel belongs to one
/// tile row and each tile row to one block, so no two threads write the same element.
#[derive(Clone, Copy)]
struct Shared<T>(*mut T);

// SAFETY: see the type's comment; the buffer outlives the parallel loop that uses it.
unsafe impl<T: Send> Send for Shared<T> {}
unsafe impl<T: Send> Sync for Shared<T> {}

/// The per-thread buffers: `V` `[16][block][c_in]`, `M` `[16][block][c_out]` (channels
/// innermost), and `rows`, a tile row's input (4 rows), output or output gradient (2 rows)
/// with channels innermost.
struct Scratch<'a, T> {
    v: &'a mut [T],
    m: &'a mut [T],
    rows: &'a mut [T],
}

impl<T: Element> Scratch<'_, T> {
    /// Runs `f` on the buffers for `c_in`/`c_out` channels, `block` tiles, `width` columns,
    /// in this thread's scratch memory.
    fn with<R>(
        [c_in, c_out]: [usize; 2],
        block: usize,
        width: usize,
        f: impl FnOnce(Scratch<'_, T>) -> R,
    ) -> R {
        let rows = 4 * width * c_in.max(c_out);
        T::with_scratch(XI * (c_in + c_out) * block + rows, |buffer| {
            let (v, rest) = buffer.split_at_mut(XI * c_in * block);
            let (m, rows) = rest.split_at_mut(XI * c_out * block);
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
        let mut per_block = (BLOCK_ELEMENTS / (XI * widest * tw.max(1))).clamp(1, tile_rows.max(1));
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
        let width = 2 * p.tiles()[1] + 2;
        let per_thread = if self.split() {
            self.count.div_ceil(self.threads)
        } else {
            self.count
        };
        (0..self.count.div_ceil(per_thread.max(1)))
            .into_par_iter()
            .map(|t| {
                let mut state = init();
                Scratch::with(channels, self.block, width, |mut s| {
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
            for xi in 0..XI {
                // Mᵀ[ξ] (count × c_out) = Vᵀ[ξ] (count × c_in) · U[ξ]ᵀ (c_in × c_out), U[ξ] read in place.
                matmul(
                    [count, c_out, c_in],
                    (&mut s.m[xi * c_out * block..], c_out),
                    false,
                    &s.v[xi * c_in * block..],
                    [c_in, 1],
                    &u[xi * c_out..],
                    [XI * c_out, 1],
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
/// per output tile (4×4 from 2×2), `dU[ξ] = Σ_tiles dM[ξ] · V[ξ]ᵀ` (16 GEMMs over the
/// tiles, 2.25× fewer multiplies than im2col's), then `dW = Gᵀ dU G`.
pub fn weight_grad<T: Element>(g: &Geometry, x: &[T], grad: &[T]) -> Vec<T> {
    let p = Problem::of(g);
    let (c_in, c_out) = (p.c_in, p.c_out);
    let mut dw = vec![T::ZERO; c_out * c_in * 9];
    let blocks = Blocks::new(&p);
    if blocks.tile_rows == 0 || c_out == 0 || c_in == 0 {
        return dw;
    }
    let (block, tw) = (blocks.block, p.tiles()[1]);
    let parallelism = blocks.parallelism();
    let partials = blocks.run(
        &p,
        || vec![T::ZERO; XI * c_out * c_in],
        |s: &mut Scratch<'_, T>, du: &mut Vec<T>, b| {
            let rows = blocks.rows(b);
            let count = rows.len() * tw;
            let p = &p;
            simd::widest(Input((p, x, &mut *s.v, &mut *s.rows, block, rows.clone())));
            simd::widest(Grad((p, grad, &mut *s.m, &mut *s.rows, block, rows)));
            for xi in 0..XI {
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
        .unwrap_or_else(|| vec![T::ZERO; XI * c_out * c_in]);
    for other in partials {
        for (a, b) in du.iter_mut().zip(&other) {
            *a += *b;
        }
    }
    // dW = Gᵀ dU G per channel pair: Gᵀ combines rows u0 + ½u1 + ½u2, ½u1 − ½u2, ½u1 + ½u2 + u3,
    // G the columns the same way.
    let half = T::HALF;
    let combine = |[a, b, c, d]: [T; 4]| [a + (b + c) * half, (b - c) * half, (b + c) * half + d];
    dw.par_chunks_mut(c_in * 9)
        .enumerate()
        .for_each(|(o, dwo)| {
            for (i, k) in dwo.chunks_exact_mut(9).enumerate() {
                let at = |xi: usize| du[(xi * c_out + o) * c_in + i];
                let rows: [[T; 4]; 4] =
                    std::array::from_fn(|r| std::array::from_fn(|c| at(r * 4 + c)));
                let columns: [[T; 3]; 4] = std::array::from_fn(|c| combine(rows.map(|row| row[c])));
                for r in 0..3 {
                    let row = combine(columns.map(|col| col[r]));
                    k[r * 3..r * 3 + 3].copy_from_slice(&row);
                }
            }
        });
    dw
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

/// `dM = A dY Aᵀ` of the output-gradient tiles of global tile rows `rows` (2×2 of `grad`,
/// zero past the output's edge) into `m` `[16][block][c_out]`: each tile row's two rows of
/// `dY` are first copied channels innermost into `buffer` (`[2][2 · tw][c_out]`), so the
/// transform runs on `LANES` channels at a time.
#[inline(always)]
fn transform_grad<T: Element>((p, grad, m, buffer, block, rows): TransformArgs<'_, T>) {
    let [oh, ow] = p.output;
    let [th, tw] = p.tiles();
    let c_out = p.c_out;
    let plane = oh * ow;
    let stride = c_out * block;
    let row_len = 2 * tw * c_out;
    let buffer = &mut buffer[..2 * row_len];
    for (k, r) in rows.enumerate() {
        let (n, ty) = (r / th, r % th);
        let image = &grad[n * c_out * plane..(n + 1) * c_out * plane];
        for (a, row) in buffer.chunks_exact_mut(row_len).enumerate() {
            let y = 2 * ty + a;
            if y < oh {
                simd::channels_last(&image[y * ow..], plane, ow, c_out, row);
                row[ow * c_out..].fill(T::ZERO);
            } else {
                row.fill(T::ZERO);
            }
        }
        let (top, bottom) = buffer.split_at(row_len);
        for tx in 0..tw {
            let at = (k * tw + tx) * c_out;
            by_lanes!(c_out, |c, N| grad_tile::<T, N>(
                [top, bottom],
                2 * tx * c_out + c,
                c_out,
                m,
                [stride, at + c]
            ));
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

/// `V = Bᵀ d B` of the tiles of global tile rows `rows` (image `r / th`, tile row `r % th`)
/// into `v` `[16][block][c_in]`, one tile row at a time: its 4 input rows (zero outside the
/// image) are first copied channels innermost into `buffer` (`[4][2 · tw + 2][c_in]`), so
/// the transform runs on `LANES` channels at a time.
#[inline(always)]
fn transform_input<T: Element>((p, x, v, buffer, block, rows): TransformArgs<'_, T>) {
    let [h, w] = p.input;
    let [th, tw] = p.tiles();
    let c_in = p.c_in;
    let plane = h * w;
    let stride = c_in * block;
    let width = 2 * tw + 2;
    let row_len = width * c_in;
    // Padded columns q = 0 .. width are image columns q − pad; lo..hi of them lie inside.
    let lo = p.pad[1].min(width);
    let hi = (w + p.pad[1]).min(width).max(lo);
    let buffer = &mut buffer[..4 * row_len];
    // Where in `buffer` each of the tile row's 4 input rows is: the next tile row of the same
    // image starts 2 rows down, so it takes the last 2 as its first and reads only 2 more.
    let mut order = [0, 1, 2, 3];
    let mut previous = None;
    for (k, r) in rows.enumerate() {
        let (n, ty) = (r / th, r % th);
        let y0 = (2 * ty) as isize - p.pad[0] as isize;
        let image = &x[n * c_in * plane..(n + 1) * c_in * plane];
        let fresh = if ty > 0 && previous == Some(r - 1) {
            order = [order[2], order[3], order[0], order[1]];
            2
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
        let d = [row(0), row(1), row(2), row(3)];
        for tx in 0..tw {
            let at = (k * tw + tx) * c_in;
            by_lanes!(c_in, |c, N| input_tile::<T, N>(
                d,
                2 * tx * c_in + c,
                c_in,
                v,
                [stride, at + c]
            ));
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
    // Bᵀ on the rows, column by column: t[q][r]. (Arrays built element by element, and no
    // closures: the compiler left `[_; 4].map` and some closures as calls to baseline code.)
    let mut t = [[[T::ZERO; N]; 4]; 4];
    for (q, t) in t.iter_mut().enumerate() {
        let at = first + q * c_in;
        *t = bt([
            load(d[0], at),
            load(d[1], at),
            load(d[2], at),
            load(d[3], at),
        ]);
    }
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

/// `Y = Aᵀ M A` (+ bias) of the tiles of global tile rows `rows`, from `m`
/// `[16][block][c_out]`, into the output: each tile row's two output rows are made channels
/// innermost in `buffer` (`[2][2 · tw][c_out]`), `LANES` channels at a time, then copied to
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
    let c_out = p.c_out;
    let stride = c_out * block;
    let row_len = 2 * tw * c_out;
    let buffer = &mut buffer[..2 * row_len];
    for (k, r) in rows.enumerate() {
        let (n, ty) = (r / th, r % th);
        for tx in 0..tw {
            let at = (k * tw + tx) * c_out;
            by_lanes!(c_out, |c, N| output_tile::<T, N>(
                m,
                [stride, at + c],
                match bias {
                    Some(b) => load(b, c),
                    None => [T::ZERO; N],
                },
                buffer,
                [row_len, 2 * tx * c_out + c, c_out]
            ));
        }
        for (a, row) in buffer.chunks_exact(row_len).enumerate() {
            let y = 2 * ty + a;
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
    let mut s = [[[T::ZERO; N]; 2]; 4];
    for (col, s) in s.iter_mut().enumerate() {
        let at = col * stride + at;
        let plane = 4 * stride;
        *s = a_t([
            load(m, at),
            load(m, at + plane),
            load(m, at + 2 * plane),
            load(m, at + 3 * plane),
        ]);
    }
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

#[cfg(test)]
mod tests {
    use super::{Blocks, Problem, forward_applies};
    use crate::conv::cpu::Geometry;
    use burn::backend::ops::ConvOptions;

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
            pool.install(|| Blocks::new(&Problem::of(&g)))
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
