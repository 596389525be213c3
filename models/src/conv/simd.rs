//! Runs a kernel compiled for the widest vector instructions the CPU has, chosen at run time.
//!
//! konv is built for the baseline of its target (on x86-64, SSE2: 4 `f32` lanes), so that one
//! binary runs everywhere. A loop the compiler vectorizes gets 4 lanes there; [`widest`]
//! compiles it again with AVX-512 (16 lanes) and AVX2 + FMA (8 lanes) enabled and takes the
//! widest copy the CPU supports, the way the `gemm` crate picks its micro-kernels.
//!
//! A kernel is a [`Kernel`] whose `run` is `#[inline(always)]`: inlined into each
//! `#[target_feature]` wrapper, its body is optimized under that wrapper's features. Every
//! function it calls must be `#[inline(always)]` too (or small enough to be inlined), or that
//! part runs with the baseline's lanes. (A function item or closure passed instead is called
//! through its `FnOnce` shim, which the compiler does not inline there: the body then stays
//! baseline code, as measured on the Winograd transforms.)
//!
//! ```
//! use konv_models::conv::simd::{self, Kernel};
//!
//! struct Double<'a>(&'a [f32], &'a mut [f32]);
//!
//! impl Kernel for Double<'_> {
//!     type Output = ();
//!     #[inline(always)]
//!     fn run(self) {
//!         for (y, x) in self.1.iter_mut().zip(self.0) {
//!             *y = 2.0 * x;
//!         }
//!     }
//! }
//!
//! let x = [1.0, 2.0, 3.0];
//! let mut y = [0.0; 3];
//! simd::widest(Double(&x, &mut y));
//! assert_eq!(y, [2.0, 4.0, 6.0]);
//! ```

/// A computation for [`widest`] to compile per instruction set; `run` must be
/// `#[inline(always)]`.
pub trait Kernel {
    /// What the computation returns.
    type Output;
    /// Runs the computation.
    fn run(self) -> Self::Output;
}

/// Runs `kernel` in the copy compiled for the widest vector unit the CPU has.
#[inline(always)]
pub fn widest<K: Kernel>(kernel: K) -> K::Output {
    #[cfg(target_arch = "x86_64")]
    {
        let has_avx2 = std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma");
        if has_avx2 && std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the three features `avx512` enables.
            return unsafe { avx512(kernel) };
        }
        if has_avx2 {
            // SAFETY: the CPU has both features `avx2` enables.
            return unsafe { avx2(kernel) };
        }
    }
    kernel.run()
}

/// `kernel` with AVX-512F (and AVX2, FMA) enabled.
///
/// # Safety
/// The CPU must support AVX-512F, AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn avx512<K: Kernel>(kernel: K) -> K::Output {
    kernel.run()
}

/// `kernel` with AVX2 and FMA enabled.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2<K: Kernel>(kernel: K) -> K::Output {
    kernel.run()
}

/// `N` values from `s[at..]`. (The helpers here avoid `std::array::from_fn`, which the
/// compiler left as a call in the transforms.)
#[inline(always)]
pub fn load<T: Copy, const N: usize>(s: &[T], at: usize) -> [T; N] {
    let s: &[T; N] = s[at..at + N].try_into().expect("N values");
    *s
}

/// Writes `v` to `s[at..at + N]`.
#[inline(always)]
pub fn store<T: Copy, const N: usize>(s: &mut [T], at: usize, v: [T; N]) {
    s[at..at + N].copy_from_slice(&v);
}

/// Lane by lane `a + b`.
#[inline(always)]
pub fn add<T: Copy + std::ops::Add<Output = T>, const N: usize>(a: [T; N], b: [T; N]) -> [T; N] {
    let mut sum = a;
    for (s, b) in sum.iter_mut().zip(b) {
        *s = *s + b;
    }
    sum
}

/// Lane by lane `a − b`.
#[inline(always)]
pub fn sub<T: Copy + std::ops::Sub<Output = T>, const N: usize>(a: [T; N], b: [T; N]) -> [T; N] {
    let mut difference = a;
    for (d, b) in difference.iter_mut().zip(b) {
        *d = *d - b;
    }
    difference
}

/// Lane by lane `a · s`.
#[inline(always)]
pub fn scale<T: Copy + std::ops::Mul<Output = T>, const N: usize>(a: [T; N], s: T) -> [T; N] {
    let mut product = a;
    for p in product.iter_mut() {
        *p = *p * s;
    }
    product
}

/// `dst[q · channels + c] = src[c · channel_stride + q]` for `q < len`, `c < channels`: `len`
/// values of each of `channels` rows `channel_stride` apart, channels innermost.
#[inline(always)]
pub fn channels_last<T: Copy + 'static>(
    src: &[T],
    channel_stride: usize,
    len: usize,
    channels: usize,
    dst: &mut [T],
) {
    if len == 0 || channels == 0 {
        return;
    }
    assert!(
        src.len() >= (channels - 1) * channel_stride + len,
        "source too short"
    );
    assert!(dst.len() >= len * channels, "destination too short");
    // SAFETY: the asserts above keep every read inside `src` and every write inside `dst`
    // (row c < channels of the source, column q < len; row q of the destination, column c).
    unsafe {
        transpose(
            src.as_ptr(),
            channel_stride,
            [channels, len],
            dst.as_mut_ptr(),
            channels,
        )
    }
}

/// `dst[c · dst_rs + r] = src[r · src_rs + c]` for `r < rows`, `c < cols`: the `rows × cols`
/// matrix at `src` (rows `src_rs` apart), transposed to `dst` (rows `dst_rs` apart). In `f32`
/// on a CPU with AVX, 8×8 blocks at a time in registers (the compiler leaves a transpose
/// written in plain Rust as one scalar move per element).
///
/// # Safety
/// Every `src` and `dst` element so addressed must be valid, and the two must not overlap.
#[inline(always)]
pub unsafe fn transpose<T: Copy + 'static>(
    src: *const T,
    src_rs: usize,
    [rows, cols]: [usize; 2],
    dst: *mut T,
    dst_rs: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()
        && std::arch::is_x86_feature_detected!("avx")
    {
        let (src, dst) = (src.cast::<f32>(), dst.cast::<f32>());
        // 8×8 blocks; those at the right and bottom edges (the Winograd rows are 7 or 14
        // long) load and store only their valid part, under masks.
        for r in (0..rows).step_by(8) {
            for c in (0..cols).step_by(8) {
                let valid = [(rows - r).min(8), (cols - c).min(8)];
                let from = src.wrapping_add(r * src_rs + c);
                let to = dst.wrapping_add(c * dst_rs + r);
                // SAFETY: T is f32; the block's valid part lies inside the matrices (the
                // caller's promise), and only it is read or written.
                unsafe {
                    if valid == [8, 8] {
                        x86::transpose8(from, src_rs, to, dst_rs)
                    } else {
                        x86::transpose8_part(from, src_rs, to, dst_rs, valid)
                    }
                };
            }
        }
        return;
    }
    // SAFETY: the caller's promise, element by element.
    unsafe {
        for r in 0..rows {
            for c in 0..cols {
                *dst.add(c * dst_rs + r) = *src.add(r * src_rs + c);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{
        __m256, __m256i, _mm256_loadu_ps, _mm256_loadu_si256, _mm256_maskload_ps,
        _mm256_permute2f128_ps, _mm256_setzero_ps, _mm256_shuffle_ps, _mm256_storeu_ps,
        _mm256_unpackhi_ps, _mm256_unpacklo_ps,
    };

    /// Transposes the 8×8 block at `src` (rows `src_rs` apart) into `dst` (rows `dst_rs`
    /// apart).
    ///
    /// # Safety
    /// The CPU has AVX; the 8 rows of 8 at `src` and at `dst` are valid and do not overlap.
    #[inline]
    #[target_feature(enable = "avx")]
    pub unsafe fn transpose8(src: *const f32, src_rs: usize, dst: *mut f32, dst_rs: usize) {
        let mut r = [_mm256_setzero_ps(); 8];
        for (i, r) in r.iter_mut().enumerate() {
            // SAFETY: the caller's promise.
            *r = unsafe { _mm256_loadu_ps(src.add(i * src_rs)) };
        }
        for (i, v) in in_registers(r).into_iter().enumerate() {
            // SAFETY: the caller's promise.
            unsafe { _mm256_storeu_ps(dst.add(i * dst_rs), v) };
        }
    }

    /// [`transpose8`] of the top-left `rows × cols` of the block (each 1 to 8): only those
    /// elements are read (the other lanes masked off, the other rows not loaded), and only
    /// their transposed places written.
    ///
    /// # Safety
    /// The CPU has AVX; the `rows` rows of `cols` at `src` and the `cols` rows of `rows` at
    /// `dst` are valid and do not overlap.
    #[inline]
    #[target_feature(enable = "avx")]
    pub unsafe fn transpose8_part(
        src: *const f32,
        src_rs: usize,
        dst: *mut f32,
        dst_rs: usize,
        [rows, cols]: [usize; 2],
    ) {
        let load_mask = first_lanes(cols);
        let mut r = [_mm256_setzero_ps(); 8];
        for (i, r) in r.iter_mut().enumerate().take(rows) {
            // SAFETY: the caller's promise; masked-off lanes are not read.
            *r = unsafe {
                if cols == 8 {
                    _mm256_loadu_ps(src.add(i * src_rs))
                } else {
                    _mm256_maskload_ps(src.add(i * src_rs), load_mask)
                }
            };
        }
        for (i, v) in in_registers(r).into_iter().enumerate().take(cols) {
            let to = dst.wrapping_add(i * dst_rs);
            if rows == 8 {
                // SAFETY: the caller's promise: 8 valid places.
                unsafe { _mm256_storeu_ps(to, v) };
            } else {
                // A masked store (`vmaskmovps` to memory) is microcoded on AMD's Zen cores,
                // many times slower than a plain one; the valid lanes go out one by one.
                let mut lanes = [0.0f32; 8];
                // SAFETY: `lanes` holds 8 floats.
                unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), v) };
                for (j, lane) in lanes.iter().enumerate().take(rows) {
                    // SAFETY: the caller's promise: `rows` valid places.
                    unsafe { *to.add(j) = *lane };
                }
            }
        }
    }

    /// The mask of the first `n` (at most 8) of 8 lanes.
    #[target_feature(enable = "avx")]
    fn first_lanes(n: usize) -> __m256i {
        const ONES_THEN_ZEROS: [i32; 16] = [-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0];
        let from = &ONES_THEN_ZEROS[8 - n.min(8)..][..8];
        // SAFETY: `from` is 8 readable i32s (32 bytes); the load is unaligned.
        unsafe { _mm256_loadu_si256(from.as_ptr().cast()) }
    }

    /// The transpose of 8 rows of 8: pairs of rows interleaved, then pairs of pairs, then the
    /// 128-bit halves exchanged.
    #[target_feature(enable = "avx")]
    fn in_registers(r: [__m256; 8]) -> [__m256; 8] {
        let t = [
            _mm256_unpacklo_ps(r[0], r[1]),
            _mm256_unpackhi_ps(r[0], r[1]),
            _mm256_unpacklo_ps(r[2], r[3]),
            _mm256_unpackhi_ps(r[2], r[3]),
            _mm256_unpacklo_ps(r[4], r[5]),
            _mm256_unpackhi_ps(r[4], r[5]),
            _mm256_unpacklo_ps(r[6], r[7]),
            _mm256_unpackhi_ps(r[6], r[7]),
        ];
        let s = [
            _mm256_shuffle_ps::<0x44>(t[0], t[2]),
            _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
            _mm256_shuffle_ps::<0x44>(t[1], t[3]),
            _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
            _mm256_shuffle_ps::<0x44>(t[4], t[6]),
            _mm256_shuffle_ps::<0xEE>(t[4], t[6]),
            _mm256_shuffle_ps::<0x44>(t[5], t[7]),
            _mm256_shuffle_ps::<0xEE>(t[5], t[7]),
        ];
        [
            _mm256_permute2f128_ps::<0x20>(s[0], s[4]),
            _mm256_permute2f128_ps::<0x20>(s[1], s[5]),
            _mm256_permute2f128_ps::<0x20>(s[2], s[6]),
            _mm256_permute2f128_ps::<0x20>(s[3], s[7]),
            _mm256_permute2f128_ps::<0x31>(s[0], s[4]),
            _mm256_permute2f128_ps::<0x31>(s[1], s[5]),
            _mm256_permute2f128_ps::<0x31>(s[2], s[6]),
            _mm256_permute2f128_ps::<0x31>(s[3], s[7]),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::{Kernel, channels_last, widest};

    struct Double<'a>(&'a [f32], &'a mut [f32]);

    impl Kernel for Double<'_> {
        type Output = ();
        #[inline(always)]
        fn run(self) {
            for (y, x) in self.1.iter_mut().zip(self.0) {
                *y = 2.0 * x;
            }
        }
    }

    #[test]
    fn widest_runs_the_kernel() {
        let x: Vec<f32> = (0..37).map(|i| i as f32).collect();
        let mut y = vec![0.0; 37];
        widest(Double(&x, &mut y));
        assert!(y.iter().zip(&x).all(|(y, x)| *y == 2.0 * x));
    }

    #[test]
    fn channels_last_transposes() {
        // 19 channels of 13 values, rows 23 apart (past the 13, other data): two 8×8 blocks
        // down, one across, and the edges; in f32 (blocks in registers) and u32 (scalar).
        let src: Vec<u32> = (0..19 * 23).collect();
        let mut dst = vec![0; 13 * 19];
        channels_last(&src, 23, 13, 19, &mut dst);
        let floats: Vec<f32> = src.iter().map(|&v| v as f32).collect();
        let mut dst_f32 = vec![0.0; 13 * 19];
        channels_last(&floats, 23, 13, 19, &mut dst_f32);
        for q in 0..13 {
            for c in 0..19 {
                assert_eq!(dst[q * 19 + c], src[c * 23 + q]);
                assert_eq!(dst_f32[q * 19 + c], floats[c * 23 + q]);
            }
        }
    }
}
