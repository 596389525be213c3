//! The CPU kernels behind [`super::FastMaxPool2d`]: 2-D max pooling and its backward on
//! contiguous NCHW slices, for `f32` and `f64`, threaded over the planes (image × channel).
//!
//! Burn 0.22's CPU backend runs every 2-D max pool as a 3-D one, one output at a time with
//! its window bounds worked out by divisions and a branch per value; it took 16% of a
//! ResNet-18 inference step (one 3×3/2 pool on a 112×112 map). Here the forward goes tap by
//! tap over whole output rows without branches (4–6× Burn's speed on the ResNet-18 and
//! Fashion-MNIST CNN pools), and the window bounds are worked out once per call. The result is
//! Burn's, bit for bit: the first largest value of a window wins, and NaN wins over any number,
//! so it propagates as in PyTorch. The backward adds each output's gradient to the input its
//! window took, found again by scanning the window in order, so no indices are kept between
//! the passes (forward and backward together take what Burn's do).

use super::cpu::{Element, valid_range};
use rayon::prelude::*;

/// The shapes of one 2-D max pool (symmetric padding, floor rounding).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PoolOptions {
    /// Window height and width.
    pub kernel: [usize; 2],
    /// Stride.
    pub stride: [usize; 2],
    /// Padding on each side (the padding holds −∞: it never wins).
    pub padding: [usize; 2],
    /// Dilation.
    pub dilation: [usize; 2],
}

impl PoolOptions {
    /// The output height and width for an input of `[h, w]`, as Burn computes them without
    /// `ceil_mode`; `None` where the window does not fit.
    pub fn output(&self, input: [usize; 2]) -> Option<[usize; 2]> {
        let side = |i: usize| {
            let span = self.dilation[i] * (self.kernel[i].checked_sub(1)?) + 1;
            let padded = input[i] + 2 * self.padding[i];
            (padded >= span && self.stride[i] > 0).then(|| (padded - span) / self.stride[i] + 1)
        };
        Some([side(0)?, side(1)?])
    }

    /// For each output index along axis `i`, the window taps `lo..hi` that land inside the
    /// input of `size`.
    fn taps(&self, i: usize, out: usize, size: usize) -> Vec<(usize, usize)> {
        let (k, s, p, d) = (
            self.kernel[i],
            self.stride[i],
            self.padding[i],
            self.dilation[i],
        );
        (0..out)
            .map(|o| {
                let start = o * s;
                let lo = p.saturating_sub(start).div_ceil(d).min(k);
                let hi = (0..k)
                    .rev()
                    .find(|&t| start + t * d < size + p)
                    .map_or(0, |t| t + 1)
                    .max(lo);
                (lo, hi)
            })
            .collect()
    }
}

/// The input index (within a plane) each output of one plane takes, or `None` for an empty
/// window, in output order; `f(output index, input index)`.
fn scan<T: Element + PartialOrd>(
    plane: &[T],
    [h, w]: [usize; 2],
    [oh, ow]: [usize; 2],
    o: &PoolOptions,
    rows: &[(usize, usize)],
    cols: &[(usize, usize)],
    mut f: impl FnMut(usize, usize),
) {
    debug_assert_eq!(plane.len(), h * w);
    for (oy, &(ky0, ky1)) in rows.iter().enumerate().take(oh) {
        for (ox, &(kx0, kx1)) in cols.iter().enumerate().take(ow) {
            let mut best: Option<(T, usize)> = None;
            for ky in ky0..ky1 {
                let iy = oy * o.stride[0] + ky * o.dilation[0] - o.padding[0];
                for kx in kx0..kx1 {
                    let ix = ox * o.stride[1] + kx * o.dilation[1] - o.padding[1];
                    let at = iy * w + ix;
                    let v = plane[at];
                    #[allow(clippy::eq_op)]
                    let nan = v != v;
                    if best.is_none_or(|(b, _)| v > b || nan) {
                        best = Some((v, at));
                    }
                }
            }
            if let Some((_, at)) = best {
                f(oy * ow + ox, at);
            }
        }
    }
}

/// Max pooling of `x` `[planes, h, w]` (planes = images × channels); returns `[planes, oh, ow]`.
/// An empty window (padding only) gives −∞, as Burn's does. Tap by tap over whole output rows
/// (`y = max(y, x shifted)`), without branches, so the compiler vectorizes it; the order of
/// the taps does not change a maximum (and NaN wins whatever the order).
pub fn max_pool<T: Element + PartialOrd>(
    x: &[T],
    [planes, h, w]: [usize; 3],
    o: &PoolOptions,
    neg_inf: T,
) -> Vec<T> {
    let Some([oh, ow]) = o.output([h, w]) else {
        return Vec::new();
    };
    let mut out = vec![neg_inf; planes * oh * ow];
    if oh * ow == 0 || h * w == 0 {
        return out;
    }
    let rows = o.taps(0, oh, h);
    // For each horizontal tap, the outputs whose tap lands inside the row, and where.
    let (sx, dx, px) = (o.stride[1], o.dilation[1], o.padding[1] as isize);
    let spans: Vec<(usize, usize, isize)> = (0..o.kernel[1])
        .map(|kx| {
            let offset = (kx * dx) as isize - px;
            let (lo, hi) = valid_range(ow, sx, offset, w);
            (lo, hi, offset)
        })
        .collect();
    out.par_chunks_mut(oh * ow)
        .zip(x.par_chunks(h * w))
        .for_each(|(y, plane)| {
            for (oy, (row, &(ky0, ky1))) in y.chunks_exact_mut(ow).zip(&rows).enumerate() {
                for ky in ky0..ky1 {
                    let iy = oy * o.stride[0] + ky * o.dilation[0] - o.padding[0];
                    let input = &plane[iy * w..(iy + 1) * w];
                    for &(lo, hi, offset) in &spans {
                        let start = (lo as isize * sx as isize + offset) as usize;
                        if sx == 1 {
                            fold_max(&mut row[lo..hi], &input[start..start + (hi - lo)]);
                        } else {
                            let taps = input[start..].iter().step_by(sx);
                            for (b, v) in row[lo..hi].iter_mut().zip(taps) {
                                *b = pick(*b, *v);
                            }
                        }
                    }
                }
            }
        });
    out
}

/// The larger of `b` and `v`, or `v` when it is NaN.
#[inline(always)]
fn pick<T: PartialOrd + Copy>(b: T, v: T) -> T {
    #[allow(clippy::eq_op)]
    let nan = v != v;
    if v > b || nan { v } else { b }
}

/// `row[i] = pick(row[i], input[i])`.
#[inline(never)]
fn fold_max<T: PartialOrd + Copy>(row: &mut [T], input: &[T]) {
    for (b, v) in row.iter_mut().zip(input) {
        *b = pick(*b, *v);
    }
}

/// The gradient of [`max_pool`] with respect to `x`: `grad` `[planes, oh, ow]` added onto the
/// input each window took; returns `[planes, h, w]`.
pub fn max_pool_backward<T: Element + PartialOrd>(
    x: &[T],
    [planes, h, w]: [usize; 3],
    o: &PoolOptions,
    grad: &[T],
) -> Vec<T> {
    let mut dx = vec![T::ZERO; planes * h * w];
    let Some([oh, ow]) = o.output([h, w]) else {
        return dx;
    };
    if oh * ow == 0 || h * w == 0 {
        return dx;
    }
    let tiled =
        o.kernel == [2, 2] && o.stride == [2, 2] && o.padding == [0, 0] && o.dilation == [1, 1];
    let (rows, cols) = (o.taps(0, oh, h), o.taps(1, ow, w));
    dx.par_chunks_mut(h * w)
        .zip(x.par_chunks(h * w))
        .zip(grad.par_chunks(oh * ow))
        .for_each(|((d, plane), g)| {
            if tiled {
                backward_2x2(d, plane, g, w, [oh, ow]);
            } else {
                scan(plane, [h, w], [oh, ow], o, &rows, &cols, |i, at| {
                    d[at] += g[i]
                });
            }
        });
    dx
}

/// [`max_pool_backward`] of one plane for 2×2 windows at stride 2 without padding (the
/// classic pool, whose windows tile the input): each window's four values compared in
/// [`scan`]'s order and the gradient stored into the one that won, without branches. Each
/// input lies in one window at most, so `d` (zeros) takes a store, not an add; a last odd row
/// or column belongs to no window and keeps its zeros. `scan`'s per-value loop with its
/// bounds and `Option` took 7.6% of a Fashion-MNIST CNN training step.
fn backward_2x2<T: Element + PartialOrd>(
    d: &mut [T],
    plane: &[T],
    g: &[T],
    w: usize,
    [oh, ow]: [usize; 2],
) {
    for (oy, g) in g.chunks_exact(ow).enumerate().take(oh) {
        let top = &plane[2 * oy * w..][..2 * ow];
        let bottom = &plane[(2 * oy + 1) * w..][..2 * ow];
        let (d_top, rest) = d[2 * oy * w..].split_at_mut(w);
        window_rows(top, bottom, g, &mut d_top[..2 * ow], &mut rest[..2 * ow]);
    }
}

/// One row of 2×2 windows: the columns `2·i, 2·i + 1` of `top` and `bottom` are output `i`'s
/// window; its gradient `g[i]` goes to the winner's place in `d_top`/`d_bottom`, zero to the
/// other three.
#[inline(never)]
fn window_rows<T: Element + PartialOrd>(
    top: &[T],
    bottom: &[T],
    g: &[T],
    d_top: &mut [T],
    d_bottom: &mut [T],
) {
    // `scan`'s rule: a later value wins if it is larger or NaN.
    #[allow(clippy::eq_op)]
    let wins = |v: T, best: T| v > best || v != v;
    let windows = top.chunks_exact(2).zip(bottom.chunks_exact(2)).zip(g);
    let outs = d_top.chunks_exact_mut(2).zip(d_bottom.chunks_exact_mut(2));
    for (((t, b), &g), (dt, db)) in windows.zip(outs) {
        let take1 = wins(t[1], t[0]);
        let best = if take1 { t[1] } else { t[0] };
        let take2 = wins(b[0], best);
        let best = if take2 { b[0] } else { best };
        let take3 = wins(b[1], best);
        let pick = |won: bool| if won { g } else { T::ZERO };
        dt[0] = pick(!take1 && !take2 && !take3);
        dt[1] = pick(take1 && !take2 && !take3);
        db[0] = pick(take2 && !take3);
        db[1] = pick(take3);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 2×2 fast path against `scan`: random values with ties and NaNs (several in one
    /// window), odd and even sizes.
    #[test]
    fn backward_2x2_matches_the_scan() {
        let o = PoolOptions {
            kernel: [2, 2],
            stride: [2, 2],
            padding: [0, 0],
            dilation: [1, 1],
        };
        let mut state = 12345u32;
        let mut next = move || {
            state = state.wrapping_mul(1664525).wrapping_add(1013904223);
            state >> 8
        };
        for [h, w] in [[4, 4], [5, 7], [9, 12], [2, 33]] {
            let [oh, ow] = o.output([h, w]).expect("fits");
            let plane: Vec<f32> = (0..h * w)
                .map(|_| match next() % 8 {
                    0 => f32::NAN,
                    1 | 2 => 1.0,
                    _ => (next() % 1000) as f32 / 100.0,
                })
                .collect();
            let g: Vec<f32> = (0..oh * ow).map(|i| i as f32 + 1.0).collect();
            let mut fast = vec![0.0f32; h * w];
            backward_2x2(&mut fast, &plane, &g, w, [oh, ow]);
            let mut slow = vec![0.0f32; h * w];
            let (rows, cols) = (o.taps(0, oh, h), o.taps(1, ow, w));
            scan(&plane, [h, w], [oh, ow], &o, &rows, &cols, |i, at| {
                slow[at] += g[i]
            });
            assert_eq!(fast, slow, "{h}×{w}");
        }
    }
}
