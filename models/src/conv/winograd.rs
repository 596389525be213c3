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
use gemm::Parallelism;
use rayon::prelude::*;

/// Values per transformed tile: 4×4.
const XI: usize = 16;

/// Elements of one block's `V` (and its `M`): about 2 MiB of `f32`.
const BLOCK_ELEMENTS: usize = 1 << 19;

/// The fewest channels (in and out) for which the transforms pay for themselves (measured on
/// the ResNet and Fashion-MNIST CNN layers; below it `cpu`'s im2col + GEMM is as fast).
const MIN_CHANNELS: usize = 64;

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
    // weight [c_out, c_in, 3, 3]
    let u = transform_weights(g.c_out, g.c_in, |o, i, r, c| {
        weight[((o * g.c_in + i) * 3 + r) * 3 + c]
    });
    run(&p, x, &u, bias)
}

/// The gradient with respect to the input, as [`super::cpu::input_grad`], given `t`, the
/// forward correlation that computes it ([`Geometry::transposed`]: `grad` padded by
/// `2 − pad`, input and output channels swapped); `weight` is the layer's own
/// `[t.c_in, t.c_out, 3, 3]`, read turned 180° in place.
pub fn input_grad<T: Element>(t: &Geometry, weight: &[T], grad: &[T]) -> Vec<T> {
    let u = transform_weights(t.c_out, t.c_in, |o, i, r, c| {
        weight[((i * t.c_out + o) * 3 + (2 - r)) * 3 + (2 - c)]
    });
    run(&Problem::of(t), grad, &u, None)
}

/// `U = G g Gᵀ` for every (output, input) channel pair, laid out `[outs][16][ins]` (the GEMM
/// left-hand side of ξ starts at `ξ · ins`, rows `16 · ins` apart), threaded over the outputs.
/// `w(o, i, r, c)` reads the 3×3 kernel of the pair.
#[inline(never)]
fn transform_weights<T: Element>(
    outs: usize,
    ins: usize,
    w: impl Fn(usize, usize, usize, usize) -> T + Sync,
) -> Vec<T> {
    let mut u = vec![T::ZERO; outs * XI * ins];
    if ins == 0 {
        return u;
    }
    let half = T::HALF;
    // G applied to three values: a, (a + b + d)/2, (a − b + d)/2, d.
    let g = |[a, b, d]: [T; 3]| [a, (a + b + d) * half, (a - b + d) * half, d];
    u.par_chunks_mut(XI * ins).enumerate().for_each(|(o, uo)| {
        for i in 0..ins {
            // G g: 4×3, column by column; then (G g) Gᵀ: each of its rows through G.
            let columns: [[T; 4]; 3] =
                std::array::from_fn(|c| g([w(o, i, 0, c), w(o, i, 1, c), w(o, i, 2, c)]));
            for r in 0..4 {
                for (c, v) in g(columns.map(|col| col[r])).into_iter().enumerate() {
                    uo[(r * 4 + c) * ins + i] = v;
                }
            }
        }
    });
    u
}

/// A pointer to the output that the blocks write through: each output pixel belongs to one
/// tile row and each tile row to one block, so no two threads write the same element.
#[derive(Clone, Copy)]
struct Shared<T>(*mut T);

// SAFETY: see the type's comment; the buffer outlives the parallel loop that uses it.
unsafe impl<T: Send> Send for Shared<T> {}
unsafe impl<T: Send> Sync for Shared<T> {}

/// The per-thread buffers: `V` `[16][c_in][block]`, `M` `[16][c_out][block]`, and the 4
/// vertical combinations of one tile row's input rows.
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
        T::with_scratch(XI * (c_in + c_out) * block + 8 * width, |buffer| {
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
    let parallelism = blocks.parallelism();
    let shared = Shared(out.as_mut_ptr());
    blocks.run(
        p,
        || (),
        |s: &mut Scratch<'_, T>, _, b| {
            let rows = blocks.rows(b);
            let count = rows.len() * tw;
            transform_input(p, x, s, block, rows.clone());
            for xi in 0..XI {
                matmul(
                    [p.c_out, count, p.c_in],
                    (&mut s.m[xi * p.c_out * block..], block),
                    false,
                    &u[xi * p.c_in..],
                    [XI * p.c_in, 1],
                    &s.v[xi * p.c_in * block..],
                    [block, 1],
                    parallelism,
                );
            }
            // SAFETY: `Shared`'s invariant: this block writes only its own tile rows' pixels,
            // inside `out` (`transform_output` keeps each write within the output size).
            unsafe { transform_output(p, s.m, block, rows, bias, shared, out_len) };
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
            transform_input(&p, x, s, block, rows.clone());
            transform_grad(&p, grad, s.m, s.rows, block, rows);
            for xi in 0..XI {
                // dU[ξ] (c_out × c_in) += dM[ξ] (c_out × count) · V[ξ]ᵀ (count × c_in).
                matmul(
                    [c_out, c_in, count],
                    (&mut du[xi * c_out * c_in..], c_in),
                    true,
                    &s.m[xi * c_out * block..],
                    [block, 1],
                    &s.v[xi * c_in * block..],
                    [1, block],
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

/// `dM = A dY Aᵀ` of the output-gradient tiles of global tile rows `rows` (2×2 of `grad`,
/// zero past the output's edge) into `m` `[16][c_out][block]`, in two passes over a tile
/// row as the input transform does: [`rows_a`] combines the two rows (`y0, y0 + y1,
/// y0 − y1, −y1`), its even and odd columns apart, and [`cols_a`] the columns of each into 4
/// planes. `rows_buffer` holds the two padded rows of `2 · tw` and the 8 combined ones of
/// `tw`. (One pass per tile, with 16 scattered stores each, took twice the time of the input
/// transform.)
fn transform_grad<T: Element>(
    p: &Problem,
    grad: &[T],
    m: &mut [T],
    rows_buffer: &mut [T],
    block: usize,
    rows: std::ops::Range<usize>,
) {
    let [oh, ow] = p.output;
    let [th, tw] = p.tiles();
    let plane = oh * ow;
    let stride = p.c_out * block;
    let (top, rest) = rows_buffer.split_at_mut(2 * tw);
    let (bottom, combined) = rest.split_at_mut(2 * tw);
    let [e0, e1, e2, e3, o0, o1, o2, o3] = split8(combined, tw);
    for o in 0..p.c_out {
        for (k, r) in rows.clone().enumerate() {
            let (n, ty) = (r / th, r % th);
            let image = &grad[(n * p.c_out + o) * plane..(n * p.c_out + o + 1) * plane];
            // The tile row's two rows of dY, zero past the right and bottom edges.
            for (a, row) in [&mut *top, &mut *bottom].into_iter().enumerate() {
                let y = 2 * ty + a;
                if y < oh {
                    copy(&image[y * ow..(y + 1) * ow], &mut row[..ow]);
                    row[ow..].fill(T::ZERO);
                } else {
                    row.fill(T::ZERO);
                }
            }
            rows_a(
                top,
                bottom,
                [&mut *e0, &mut *e1, &mut *e2, &mut *e3],
                [&mut *o0, &mut *o1, &mut *o2, &mut *o3],
            );
            let (even, odd) = ([&*e0, &*e1, &*e2, &*e3], [&*o0, &*o1, &*o2, &*o3]);
            into_planes(even, odd, m, [o * block + k * tw, stride, tw], cols_a);
        }
    }
}

/// The second pass of the input and gradient transforms: `cols` turns the even and odd
/// columns of each of the first pass's 4 rows (`even[r]`, `odd[r]`) into the `tw` tiles'
/// values of planes `4r … 4r + 3` of `out` (`[16][channels][block]`), at `base` of each,
/// the planes `stride` apart.
#[inline(always)]
fn into_planes<T: Element>(
    even: [&[T]; 4],
    odd: [&[T]; 4],
    out: &mut [T],
    [base, stride, tw]: [usize; 3],
    cols: impl Fn(&[T], &[T], &mut [T], &mut [T], &mut [T], &mut [T]),
) {
    for (r4, (e, o)) in even.into_iter().zip(odd).enumerate() {
        let (v0, rest) = out[r4 * 4 * stride + base..].split_at_mut(stride);
        let (v1, rest) = rest.split_at_mut(stride);
        let (v2, v3) = rest.split_at_mut(stride);
        cols(
            e,
            o,
            &mut v0[..tw],
            &mut v1[..tw],
            &mut v2[..tw],
            &mut v3[..tw],
        );
    }
}

/// A on two rows of dY (`top`, `bottom`, `2 · n` long): `y0, y0 + y1, y0 − y1, −y1`, the even
/// columns into `even`, the odd into `odd` (`n` each).
#[inline(never)]
fn rows_a<T: Element>(top: &[T], bottom: &[T], even: [&mut [T]; 4], odd: [&mut [T]; 4]) {
    split_columns(
        [top, bottom],
        |[a, b]| [a, a + b, a - b, T::ZERO - b],
        even,
        odd,
    );
}

/// A on the columns of one combined row: tile `j`'s columns are `e[j], o[j]`, giving `e[j]`,
/// `e[j] + o[j]`, `e[j] − o[j]`, `−o[j]` into `v0 … v3`.
#[inline(never)]
fn cols_a<T: Element>(e: &[T], o: &[T], v0: &mut [T], v1: &mut [T], v2: &mut [T], v3: &mut [T]) {
    let n = v0.len();
    let (e, o) = (&e[..n], &o[..n]);
    let (v1, v2, v3) = (&mut v1[..n], &mut v2[..n], &mut v3[..n]);
    let outs = v0
        .iter_mut()
        .zip(v1.iter_mut())
        .zip(v2.iter_mut())
        .zip(v3.iter_mut());
    for ((((v0, v1), v2), v3), (&e, &o)) in outs.zip(e.iter().zip(o)) {
        *v0 = e;
        *v1 = e + o;
        *v2 = e - o;
        *v3 = T::ZERO - o;
    }
}

/// `V = Bᵀ d B` of the tiles of global tile rows `rows` (image `r / th`, tile row `r % th`)
/// into `s.v` `[16][c_in][block]`, one tile row at a time: the 4 input rows (zero outside the
/// image) combined vertically over the whole width, then horizontally per tile.
#[inline(never)]
fn transform_input<T: Element>(
    p: &Problem,
    x: &[T],
    s: &mut Scratch<T>,
    block: usize,
    rows: std::ops::Range<usize>,
) {
    let [h, w] = p.input;
    let [th, tw] = p.tiles();
    let plane = h * w;
    let stride = p.c_in * block;
    let width = 2 * tw + 2;
    let half = tw + 1;
    // Padded columns q = 0 .. width are image columns q − pad; lo..hi of them lie inside.
    let lo = p.pad[1].min(width);
    let hi = (w + p.pad[1]).min(width).max(lo);
    let (padded, combined) = s.rows.split_at_mut(4 * width);
    // Channel by channel, so each ξ's part of V is written front to back.
    for c in 0..p.c_in {
        for (k, r) in rows.clone().enumerate() {
            let (n, ty) = (r / th, r % th);
            let y0 = (2 * ty) as isize - p.pad[0] as isize;
            let image = &x[(n * p.c_in + c) * plane..(n * p.c_in + c + 1) * plane];
            // The 4 input rows, zero outside the image.
            for (i, row) in padded.chunks_exact_mut(width).enumerate() {
                let iy = y0 + i as isize;
                if iy < 0 || iy >= h as isize {
                    row.fill(T::ZERO);
                    continue;
                }
                let start = iy as usize * w + lo - p.pad[1];
                row[..lo].fill(T::ZERO);
                row[hi..].fill(T::ZERO);
                copy(&image[start..start + (hi - lo)], &mut row[lo..hi]);
            }
            // Bᵀ d, its even and odd columns apart: 8 rows of tw + 1.
            let (d01, d23) = padded.split_at(2 * width);
            let (d0, d1) = d01.split_at(width);
            let (d2, d3) = d23.split_at(width);
            let [e0, e1, e2, e3, o0, o1, o2, o3] = split8(combined, half);
            rows_bt(d0, d1, d2, d3, [e0, e1, e2, e3], [o0, o1, o2, o3]);
            // (Bᵀ d) B per tile: columns 2·tx .. 2·tx + 4 are e[tx], o[tx], e[tx+1], o[tx+1].
            let (even, odd) = ([&*e0, &*e1, &*e2, &*e3], [&*o0, &*o1, &*o2, &*o3]);
            into_planes(even, odd, s.v, [c * block + k * tw, stride, tw], cols_b);
        }
    }
}

/// Splits `buffer` into 8 rows of `len`.
fn split8<T>(buffer: &mut [T], len: usize) -> [&mut [T]; 8] {
    let mut rows = buffer.chunks_exact_mut(len);
    std::array::from_fn(|_| rows.next().expect("8 rows of scratch"))
}

/// `dst = src` element by element (for rows too short for `copy_from_slice`'s call to pay).
#[inline]
fn copy<T: Copy>(src: &[T], dst: &mut [T]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = *s;
    }
}

/// Bᵀ d over 4 padded input rows: d0 − d2, d1 + d2, d2 − d1, d1 − d3, the even columns into
/// `even`, the odd into `odd`.
#[inline(never)]
fn rows_bt<T: Element>(
    d0: &[T],
    d1: &[T],
    d2: &[T],
    d3: &[T],
    even: [&mut [T]; 4],
    odd: [&mut [T]; 4],
) {
    split_columns(
        [d0, d1, d2, d3],
        |[a, b, e, f]| [a - e, b + e, e - b, b - f],
        even,
        odd,
    );
}

/// The first pass of the input and gradient transforms: `f` combines the `R` rows (`2 · n`
/// long) column by column into 4 values, those of the even columns go into `even`, of the odd
/// ones into `odd` (`n` each).
#[inline(always)]
fn split_columns<T: Element, const R: usize>(
    rows: [&[T]; R],
    f: impl Fn([T; R]) -> [T; 4],
    [e0, e1, e2, e3]: [&mut [T]; 4],
    [o0, o1, o2, o3]: [&mut [T]; 4],
) {
    let n = e0.len();
    let rows = rows.map(|r| &r[..2 * n]);
    let (e1, e2, e3) = (&mut e1[..n], &mut e2[..n], &mut e3[..n]);
    let (o0, o1, o2, o3) = (&mut o0[..n], &mut o1[..n], &mut o2[..n], &mut o3[..n]);
    for j in 0..n {
        for (q, [t0, t1, t2, t3]) in [
            (2 * j, [&mut e0[j], &mut e1[j], &mut e2[j], &mut e3[j]]),
            (2 * j + 1, [&mut o0[j], &mut o1[j], &mut o2[j], &mut o3[j]]),
        ] {
            [*t0, *t1, *t2, *t3] = f(rows.map(|r| r[q]));
        }
    }
}

/// (Bᵀ d) B for one row of the 4×4 tiles: tile `j`'s columns are `e[j], o[j], e[j+1],
/// o[j+1]`, giving `e[j] − e[j+1]`, `o[j] + e[j+1]`, `e[j+1] − o[j]`, `o[j] − o[j+1]`.
#[inline(never)]
fn cols_b<T: Element>(e: &[T], o: &[T], v0: &mut [T], v1: &mut [T], v2: &mut [T], v3: &mut [T]) {
    let n = v0.len();
    let (e, o) = (&e[..n + 1], &o[..n + 1]);
    let (v1, v2, v3) = (&mut v1[..n], &mut v2[..n], &mut v3[..n]);
    for j in 0..n {
        v0[j] = e[j] - e[j + 1];
        v1[j] = o[j] + e[j + 1];
        v2[j] = e[j + 1] - o[j];
        v3[j] = o[j] - o[j + 1];
    }
}

/// `Y = Aᵀ M A` (+ bias) of the tiles of global tile rows `rows`, from `m`
/// `[16][c_out][block]`, into the output.
///
/// # Safety
/// `out` points to `out_len` elements, and no other thread writes the pixels of these tile
/// rows.
#[inline(never)]
unsafe fn transform_output<T: Element>(
    p: &Problem,
    m: &[T],
    block: usize,
    rows: std::ops::Range<usize>,
    bias: Option<&[T]>,
    out: Shared<T>,
    out_len: usize,
) {
    let [oh, ow] = p.output;
    let [th, tw] = p.tiles();
    let stride = p.c_out * block;
    // Aᵀ M per column col of the 4×4 tiles: row 0 is M0 + M1 + M2, row 1 is M1 − M2 − M3
    // (over the tiles of a tile row at once); then A combines the columns.
    let mut sums = vec![T::ZERO; 8 * tw];
    // Channel by channel, so each ξ's part of M is read front to back.
    for o in 0..p.c_out {
        let b0 = bias.map_or(T::ZERO, |b| b[o]);
        for (k, r) in rows.clone().enumerate() {
            let (n, ty) = (r / th, r % th);
            let base = o * block + k * tw;
            let at = |xi: usize| &m[xi * stride + base..xi * stride + base + tw];
            let (s0, s1) = sums.split_at_mut(4 * tw);
            for col in 0..4 {
                let (m0, m1, m2, m3) = (at(col), at(4 + col), at(8 + col), at(12 + col));
                let row0 = &mut s0[col * tw..(col + 1) * tw];
                let row1 = &mut s1[col * tw..(col + 1) * tw];
                for (q, (x0, x1)) in row0.iter_mut().zip(row1.iter_mut()).enumerate() {
                    *x0 = m0[q] + m1[q] + m2[q];
                    *x1 = m1[q] - m2[q] - m3[q];
                }
            }
            let plane = (n * p.c_out + o) * oh * ow;
            for (a, sa) in [&*s0, &*s1].into_iter().enumerate() {
                let y = 2 * ty + a;
                if y >= oh {
                    continue;
                }
                let row_start = plane + y * ow;
                debug_assert!(row_start + ow <= out_len);
                // SAFETY: the row lies inside the output; it belongs to this tile row alone.
                let row = unsafe { std::slice::from_raw_parts_mut(out.0.add(row_start), ow) };
                let (c0, rest) = sa.split_at(tw);
                let (c1, rest) = rest.split_at(tw);
                let (c2, c3) = rest.split_at(tw);
                let pairs = row.chunks_exact_mut(2);
                let odd = ow % 2 == 1;
                for (pair, (((c0, c1), c2), c3)) in pairs.zip(c0.iter().zip(c1).zip(c2).zip(c3)) {
                    pair[0] = *c0 + *c1 + *c2 + b0;
                    pair[1] = *c1 - *c2 - *c3 + b0;
                }
                if odd {
                    let tx = tw - 1;
                    row[2 * tx] = c0[tx] + c1[tx] + c2[tx] + b0;
                }
            }
        }
    }
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
        assert!(!forward_applies(&geometry(48, [32, 32], 14, 1, 1)));
        assert!(!forward_applies(&geometry(8, [64, 64], 56, 2, 1)));
        // Padding 3: the forward, not the input gradient (its own padding would be −1).
        assert!(forward_applies(&geometry(4, [64, 64], 8, 1, 3)));
        assert!(geometry(4, [64, 64], 8, 1, 3).transposed().is_none());
    }
}
