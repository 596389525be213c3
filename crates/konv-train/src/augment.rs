//! On-the-fly data augmentation of grayscale images, per sample and reproducible: the same
//! seed, epoch and image index always give the same transformed image, whichever loader
//! worker draws it.
//!
//! A [`Pipeline`] is written as on the command line, `--augment flip,crop=4,erase=0.25`:
//!
//! | step | what (torchvision / Keras equivalent) |
//! | --- | --- |
//! | `flip` | horizontal flip with probability ½ (`RandomHorizontalFlip`) |
//! | `crop=P` | pad P zero pixels on every side, then crop a random window of the original size (`RandomCrop(size, padding=P)`) |
//! | `translate=P` | shift by up to P pixels in x and y, filling with zeros (`RandomAffine(translate=…)`) |
//! | `erase=p` | with probability p, zero a random rectangle of 2–33 % of the image with aspect 0.3–3.3 (`RandomErasing`) |
//! | `brightness=d` | add a uniform value in ±d to every pixel in [0, 1] (`ColorJitter(brightness)`, additive) |
//! | `contrast=d` | scale the distance to the image mean by a factor in [1 − d, 1 + d] (`ColorJitter(contrast)`) |
//!
//! Steps run in the order written, on pixel values in [0, 1], before standardization.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

/// One augmentation step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Augment {
    /// Horizontal flip with probability ½.
    Flip,
    /// Zero-pad by `pad` on every side and crop a random window of the original size.
    Crop {
        /// Padding in pixels.
        pad: usize,
    },
    /// Shift by up to `max` pixels in each direction, zero-filled.
    Translate {
        /// Largest shift in pixels.
        max: usize,
    },
    /// Random erasing with probability `p`.
    Erase {
        /// Probability.
        p: f32,
    },
    /// Additive brightness jitter in ±`delta`.
    Brightness {
        /// Largest change, in [0, 1] pixel units.
        delta: f32,
    },
    /// Contrast jitter: factor in [1 − `delta`, 1 + `delta`].
    Contrast {
        /// Largest relative change.
        delta: f32,
    },
}

/// A grayscale image with pixel values in [0, 1], row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    /// Height.
    pub height: usize,
    /// Width.
    pub width: usize,
    /// `height × width` values.
    pub pixels: Vec<f32>,
}

impl Image {
    /// An image from 8-bit pixels.
    pub fn from_u8(pixels: &[u8], height: usize, width: usize) -> Self {
        assert_eq!(pixels.len(), height * width, "pixel count");
        Self {
            height,
            width,
            pixels: pixels.iter().map(|&p| p as f32 / 255.0).collect(),
        }
    }

    fn at(&self, y: isize, x: isize) -> f32 {
        if y < 0 || x < 0 || y >= self.height as isize || x >= self.width as isize {
            0.0
        } else {
            self.pixels[y as usize * self.width + x as usize]
        }
    }

    /// The image moved by `(dy, dx)` pixels, zeros where nothing moved in.
    fn shifted(&self, dy: isize, dx: isize) -> Self {
        let mut pixels = Vec::with_capacity(self.pixels.len());
        for y in 0..self.height as isize {
            for x in 0..self.width as isize {
                pixels.push(self.at(y - dy, x - dx));
            }
        }
        Self {
            pixels,
            ..self.clone()
        }
    }
}

impl Augment {
    /// Applies this step to `image`, drawing from `rng`.
    pub fn apply(&self, image: &mut Image, rng: &mut StdRng) {
        let (h, w) = (image.height, image.width);
        match *self {
            Augment::Flip => {
                if rng.random::<bool>() {
                    for row in image.pixels.chunks_mut(w) {
                        row.reverse();
                    }
                }
            }
            Augment::Crop { pad } => {
                // Window origin in the padded image: 0..=2·pad; the shift is pad − origin.
                let oy = rng.random_range(0..=2 * pad) as isize;
                let ox = rng.random_range(0..=2 * pad) as isize;
                *image = image.shifted(pad as isize - oy, pad as isize - ox);
            }
            Augment::Translate { max } => {
                let m = max as i64;
                let dy = rng.random_range(-m..=m) as isize;
                let dx = rng.random_range(-m..=m) as isize;
                *image = image.shifted(dy, dx);
            }
            Augment::Erase { p } => {
                if rng.random::<f32>() >= p {
                    return;
                }
                let area = (h * w) as f32;
                // torchvision's RandomErasing: up to 10 tries for a rectangle that fits.
                for _ in 0..10 {
                    let target = area * rng.random_range(0.02f32..0.33);
                    let aspect = rng.random_range(0.3f32.ln()..3.3f32.ln()).exp();
                    let eh = (target * aspect).sqrt().round() as usize;
                    let ew = (target / aspect).sqrt().round() as usize;
                    if eh == 0 || ew == 0 || eh >= h || ew >= w {
                        continue;
                    }
                    let y0 = rng.random_range(0..=h - eh);
                    let x0 = rng.random_range(0..=w - ew);
                    for y in y0..y0 + eh {
                        image.pixels[y * w + x0..y * w + x0 + ew].fill(0.0);
                    }
                    return;
                }
            }
            Augment::Brightness { delta } => {
                let shift = rng.random_range(-delta..=delta);
                image
                    .pixels
                    .iter_mut()
                    .for_each(|p| *p = (*p + shift).clamp(0.0, 1.0));
            }
            Augment::Contrast { delta } => {
                let factor = rng.random_range(1.0 - delta..=1.0 + delta);
                let mean = image.pixels.iter().sum::<f32>() / image.pixels.len().max(1) as f32;
                image
                    .pixels
                    .iter_mut()
                    .for_each(|p| *p = (mean + (*p - mean) * factor).clamp(0.0, 1.0));
            }
        }
    }
}

/// Steps applied in order; empty means no augmentation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Pipeline(pub Vec<Augment>);

const VALID: &str = "valid steps: flip, crop=PIXELS, translate=PIXELS, erase=PROBABILITY, \
brightness=DELTA, contrast=DELTA (e.g. --augment flip,crop=4,erase=0.25)";

impl std::str::FromStr for Pipeline {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        let mut steps = Vec::new();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, value) = item.split_once('=').unwrap_or((item, ""));
            let bad = |why: &str| format!("`{item}`: {why}; {VALID}");
            let pixels = || {
                value
                    .parse::<usize>()
                    .map_err(|_| bad("needs a whole number of pixels"))
            };
            let fraction = |max: f32| {
                value
                    .parse::<f32>()
                    .ok()
                    .filter(|v| (0.0..=max).contains(v))
                    .ok_or_else(|| bad(&format!("needs a number in [0, {max}]")))
            };
            steps.push(match name {
                "flip" if value.is_empty() => Augment::Flip,
                "crop" => Augment::Crop { pad: pixels()? },
                "translate" => Augment::Translate { max: pixels()? },
                "erase" => Augment::Erase { p: fraction(1.0)? },
                "brightness" => Augment::Brightness {
                    delta: fraction(1.0)?,
                },
                "contrast" => Augment::Contrast {
                    delta: fraction(1.0)?,
                },
                _ => return Err(bad("unknown step")),
            });
        }
        Ok(Pipeline(steps))
    }
}

impl std::fmt::Display for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let steps: Vec<String> = self
            .0
            .iter()
            .map(|step| match step {
                Augment::Flip => "flip".to_string(),
                Augment::Crop { pad } => format!("crop={pad}"),
                Augment::Translate { max } => format!("translate={max}"),
                Augment::Erase { p } => format!("erase={p}"),
                Augment::Brightness { delta } => format!("brightness={delta}"),
                Augment::Contrast { delta } => format!("contrast={delta}"),
            })
            .collect();
        write!(f, "{}", steps.join(","))
    }
}

impl Pipeline {
    /// Whether the pipeline does nothing.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The random stream of image `index` in the epoch whose seed is `epoch_seed`.
    pub fn rng(epoch_seed: u64, index: usize) -> StdRng {
        // splitmix64 of the pair, so that neighbouring indices get unrelated streams.
        let mut z = epoch_seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        StdRng::seed_from_u64(z ^ (z >> 31))
    }

    /// Applies every step to `image`, for image `index` of the epoch seeded `epoch_seed`.
    pub fn apply(&self, image: &mut Image, epoch_seed: u64, index: usize) {
        let mut rng = Self::rng(epoch_seed, index);
        for step in &self.0 {
            step.apply(image, &mut rng);
        }
    }
}

/// A picture of what a pipeline does: one row per image (the first `count` of `set`), the
/// original in the first column and `variants` augmented versions (epoch seeds
/// `seed + 1 …`) after it, each pixel drawn `scale`×`scale`, with 2-pixel gray gaps.
pub fn grid(
    set: &konv_datasets::ImageSet,
    pipeline: &Pipeline,
    count: usize,
    variants: usize,
    seed: u64,
    scale: usize,
) -> image::GrayImage {
    let (h, w) = (set.images.rows, set.images.cols);
    let scale = scale.max(1);
    let count = count.min(set.len());
    let gap = 2;
    let cell_w = w * scale + gap;
    let cell_h = h * scale + gap;
    let mut out = image::GrayImage::from_pixel(
        (cell_w * (variants + 1) + gap) as u32,
        (cell_h * count + gap) as u32,
        image::Luma([128]),
    );
    for row in 0..count {
        for col in 0..=variants {
            let mut img = Image::from_u8(set.images.image(row), h, w);
            if col > 0 {
                pipeline.apply(&mut img, seed.wrapping_add(col as u64), row);
            }
            for y in 0..h * scale {
                for x in 0..w * scale {
                    let v = img.pixels[(y / scale) * w + x / scale];
                    out.put_pixel(
                        (gap + col * cell_w + x) as u32,
                        (gap + row * cell_h + y) as u32,
                        image::Luma([(v * 255.0).round() as u8]),
                    );
                }
            }
        }
    }
    out
}

/// [`grid`] at scale 2, written as a PNG to `path` (atomically).
pub fn save_grid(
    path: &std::path::Path,
    set: &konv_datasets::ImageSet,
    pipeline: &Pipeline,
    count: usize,
    variants: usize,
    seed: u64,
) -> Result<(), crate::TrainError> {
    let picture = grid(set, pipeline, count, variants, seed, 2);
    let mut png = Vec::new();
    picture
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| crate::TrainError::Image {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    crate::run::write_atomic(path, &png).map_err(|e| crate::TrainError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(h: usize, w: usize) -> Image {
        Image {
            height: h,
            width: w,
            pixels: (0..h * w).map(|i| (i + 1) as f32 / 100.0).collect(),
        }
    }

    /// Runs `step` with seeds until `pred` holds for the result.
    fn find(step: Augment, image: &Image, pred: impl Fn(&Image) -> bool) -> Image {
        for seed in 0..200 {
            let mut out = image.clone();
            step.apply(&mut out, &mut StdRng::seed_from_u64(seed));
            if pred(&out) {
                return out;
            }
        }
        panic!("no seed gave the expected outcome for {step:?}");
    }

    #[test]
    fn flip_mirrors_rows_or_leaves_the_image() {
        let img = ramp(2, 3);
        let flipped = find(Augment::Flip, &img, |o| o != &img);
        assert_eq!(flipped.pixels, vec![0.03, 0.02, 0.01, 0.06, 0.05, 0.04]);
        find(Augment::Flip, &img, |o| o == &img);
    }

    #[test]
    fn crop_and_translate_move_content_by_whole_pixels() {
        let img = ramp(3, 3);
        let same = Augment::Crop { pad: 0 };
        let mut out = img.clone();
        same.apply(&mut out, &mut StdRng::seed_from_u64(1));
        assert_eq!(out, img);
        // Every outcome of crop=1 is the image shifted by −1..=1 in each axis.
        for seed in 0..50 {
            let mut out = img.clone();
            Augment::Crop { pad: 1 }.apply(&mut out, &mut StdRng::seed_from_u64(seed));
            let shifts: Vec<(isize, isize)> = (-1..=1)
                .flat_map(|dy| (-1..=1).map(move |dx| (dy, dx)))
                .filter(|&(dy, dx)| img.shifted(dy, dx) == out)
                .collect();
            assert!(!shifts.is_empty(), "{out:?}");
        }
        // A shift right by one: the first column is zero, the rest is the image's.
        let right = find(Augment::Translate { max: 1 }, &img, |o| {
            o == &img.shifted(0, 1)
        });
        assert_eq!(
            right.pixels,
            vec![0.0, 0.01, 0.02, 0.0, 0.04, 0.05, 0.0, 0.07, 0.08]
        );
    }

    #[test]
    fn erase_zeroes_one_rectangle_of_the_right_size() {
        let img = Image {
            height: 28,
            width: 28,
            pixels: vec![1.0; 784],
        };
        let out = find(Augment::Erase { p: 1.0 }, &img, |o| o != &img);
        let zeros: Vec<(usize, usize)> = (0..784)
            .filter(|&i| out.pixels[i] == 0.0)
            .map(|i| (i / 28, i % 28))
            .collect();
        let (ys, xs): (Vec<_>, Vec<_>) = zeros.iter().copied().unzip();
        let (y0, y1) = (*ys.iter().min().unwrap(), *ys.iter().max().unwrap());
        let (x0, x1) = (*xs.iter().min().unwrap(), *xs.iter().max().unwrap());
        // The zeros fill their bounding box exactly: one rectangle.
        assert_eq!(zeros.len(), (y1 - y0 + 1) * (x1 - x0 + 1));
        let fraction = zeros.len() as f32 / 784.0;
        assert!((0.01..0.36).contains(&fraction), "{fraction}");
        let mut never = img.clone();
        Augment::Erase { p: 0.0 }.apply(&mut never, &mut StdRng::seed_from_u64(3));
        assert_eq!(never, img);
    }

    #[test]
    fn brightness_and_contrast_stay_in_range() {
        let img = ramp(4, 4);
        for step in [
            Augment::Brightness { delta: 0.5 },
            Augment::Contrast { delta: 0.9 },
        ] {
            for seed in 0..20 {
                let mut out = img.clone();
                step.apply(&mut out, &mut StdRng::seed_from_u64(seed));
                assert!(out.pixels.iter().all(|p| (0.0..=1.0).contains(p)));
            }
        }
        // Contrast keeps the mean where nothing clips.
        let mut out = img.clone();
        Augment::Contrast { delta: 0.5 }.apply(&mut out, &mut StdRng::seed_from_u64(7));
        let mean = |i: &Image| i.pixels.iter().sum::<f32>() / 16.0;
        assert!((mean(&out) - mean(&img)).abs() < 1e-5);
    }

    #[test]
    fn the_grid_shows_originals_then_variants() {
        let set = konv_datasets::mnist::embedded_fashion_mnist().test;
        let pipeline: Pipeline = "flip".parse().unwrap();
        let g = grid(&set, &pipeline, 3, 4, 0, 2);
        assert_eq!(
            g.dimensions(),
            ((28 * 2 + 2) as u32 * 5 + 2, (28 * 2 + 2) as u32 * 3 + 2)
        );
        // The first column is the untouched first image.
        let first = set.images.image(0);
        for y in 0..28 {
            for x in 0..28 {
                let p = g.get_pixel((2 + 2 * x) as u32, (2 + 2 * y) as u32).0[0];
                assert_eq!(p, first[y * 28 + x]);
            }
        }
    }

    #[test]
    fn pipelines_parse_print_and_reproduce() {
        let p: Pipeline = "flip,crop=4,erase=0.25".parse().unwrap();
        assert_eq!(
            p.0,
            vec![
                Augment::Flip,
                Augment::Crop { pad: 4 },
                Augment::Erase { p: 0.25 }
            ]
        );
        assert_eq!(p.to_string().parse::<Pipeline>().unwrap(), p);
        for bad in ["rotate=10", "crop=x", "erase=2", "flip=1"] {
            let err = bad.parse::<Pipeline>().unwrap_err();
            assert!(err.contains("valid steps") && err.contains(bad), "{err}");
        }
        let img = ramp(8, 8);
        let full: Pipeline = "flip,translate=2,erase=0.5,brightness=0.1,contrast=0.2"
            .parse()
            .unwrap();
        let run = |seed, index| {
            let mut out = img.clone();
            full.apply(&mut out, seed, index);
            out
        };
        assert_eq!(run(5, 17), run(5, 17));
        assert!((0..20).any(|i| run(5, i) != run(6, i)));
    }
}
