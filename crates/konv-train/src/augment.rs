//! On-the-fly data augmentation of grayscale images, per sample and reproducible: the same
//! seed, epoch and image index always give the same transformed image, whichever loader
//! worker draws it.
//!
//! A [`Pipeline`] is written as on the command line, `--augment flip,crop=4,erase=0.25`:
//!
//! | step | what (torchvision / Keras equivalent) |
//! | --- | --- |
//! | `flip` | horizontal flip with probability ½ (`RandomHorizontalFlip`) |
//! | `flip=alternate` | alternating flip (Jordan 2024): each image mirrored in every other epoch, from a random start per image, so any two consecutive epochs show it both ways |
//! | `crop=P` | pad P zero pixels on every side, then crop a random window of the original size (`RandomCrop(size, padding=P)`) |
//! | `translate=P` | shift by up to P pixels in x and y, filling with zeros (`RandomAffine(translate=…)`) |
//! | `erase=p` | with probability p, zero a random rectangle of 2–33 % of the image with aspect 0.3–3.3 (`RandomErasing`) |
//! | `brightness=d` | add a uniform value in ±d to every pixel in [0, 1] (`ColorJitter(brightness)`, additive) |
//! | `contrast=d` | scale the distance to the image mean by a factor in [1 − d, 1 + d] (`ColorJitter(contrast)`) |
//! | `rotate=D` | rotate about the centre by an angle in ±D degrees, bilinear, zero fill (`RandomRotation(D)`) |
//! | `zoom=z` | scale about the centre by a factor in [1 − z, 1 + z] (> 1 magnifies; Keras `zoom_range`) |
//! | `shear=D` | shear along x by an angle in ±D degrees (`RandomAffine(shear=D)`) |
//! | `resize=HxW` | resize to H×W, bilinear (`Resize`) |
//! | `mixup=α` | batch level: blend each image with another of the batch, ratio λ ~ Beta(α, α), and the two labels' losses by λ (Zhang et al.) |
//! | `cutmix=α` | batch level: paste a box of another image covering 1 − λ of the area, λ ~ Beta(α, α) (Yun et al.); with `mixup`, one of the two per batch |
//!
//! Steps run in the order written, on pixel values in [0, 1], before standardization.
//!
//! Geometric steps (`flip`, `crop`, `translate`, `rotate`, `zoom`, `shear`, `resize`) are
//! affine maps ([`Affine`]); [`Pipeline::apply_sample`] moves a [`Sample`]'s bounding boxes
//! and segmentation mask with its image, for localization and segmentation.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

/// One augmentation step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Augment {
    /// Horizontal flip with probability ½.
    Flip,
    /// Alternating flip (K. Jordan, "94% on CIFAR-10 in 3.29 seconds on a single GPU",
    /// 2024): whether an image starts mirrored is drawn once per run, and it is mirrored
    /// in every other epoch from there, so any two consecutive epochs show both
    /// orientations of every image, where random flips show one of them twice in a quarter
    /// of the pairs. The paper finds it better than random flipping wherever flipping helps
    /// at all, most so in short runs. [`Pipeline::for_epoch`] binds it to an epoch; unbound
    /// (as parsed), it flips at random like [`Augment::Flip`].
    AlternatingFlip {
        /// The run's seed and the epoch (from 1), set by [`Pipeline::for_epoch`].
        epoch: Option<(u64, usize)>,
    },
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
    /// Random erasing with probability `p`: a rectangle of 2–33% of the image, aspect ratio
    /// 0.3–3.3 (torchvision's `RandomErasing`), set to black (0).
    Erase {
        /// Probability.
        p: f32,
    },
    /// [`Augment::Erase`] with every erased pixel set to a random value in [0, 1] instead of
    /// black: random erasing as Zhong et al. define it, each erased pixel a random value
    /// (torchvision's `RandomErasing(value="random")`, timm's `mode="pixel"`). The same
    /// rectangle as `Erase` for the same random stream. Channels draw the same values.
    EraseRandom {
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
    /// Rotation about the centre by up to ±`degrees`.
    Rotate {
        /// Largest angle.
        degrees: f32,
    },
    /// Scaling about the centre by a factor in [1 − `range`, 1 + `range`].
    Zoom {
        /// Largest relative change of size.
        range: f32,
    },
    /// Shear along x by up to ±`degrees`.
    Shear {
        /// Largest shear angle.
        degrees: f32,
    },
    /// Resize to `height` × `width`.
    Resize {
        /// New height.
        height: usize,
        /// New width.
        width: usize,
    },
    /// torchvision's `RandomResizedCrop` on the stored image: a window of a random share
    /// of the area in [`min_scale`, 1] and aspect ratio in [3/4, 4/3], stretched back to the
    /// image's size (bilinear). The standard training crop of ImageNet models.
    ResizedCrop {
        /// Smallest share of the area kept (torchvision: 0.08).
        min_scale: f32,
    },
    /// Batch-level mixup with Beta(`alpha`, `alpha`) ratios.
    Mixup {
        /// Beta parameter.
        alpha: f32,
    },
    /// Batch-level cutmix with Beta(`alpha`, `alpha`) ratios.
    Cutmix {
        /// Beta parameter.
        alpha: f32,
    },
}

/// A geometric transform in continuous pixel coordinates (pixel `(row i, column j)` covers
/// `[j, j + 1] × [i, i + 1]`): the forward map `x' = a·x + b·y + c`, `y' = d·x + e·y + f`
/// and the output size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Affine {
    /// `[a, b, c, d, e, f]`.
    pub m: [f32; 6],
    /// Output height.
    pub height: usize,
    /// Output width.
    pub width: usize,
}

impl Affine {
    /// Nothing moves.
    pub fn identity(height: usize, width: usize) -> Self {
        Self {
            m: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
            height,
            width,
        }
    }

    /// Mirror left–right.
    pub fn flip(height: usize, width: usize) -> Self {
        Self {
            m: [-1.0, 0.0, width as f32, 0.0, 1.0, 0.0],
            height,
            width,
        }
    }

    /// Move by `dy` rows and `dx` columns.
    pub fn shift(height: usize, width: usize, dy: f32, dx: f32) -> Self {
        Self {
            m: [1.0, 0.0, dx, 0.0, 1.0, dy],
            height,
            width,
        }
    }

    /// `[[a, b], [d, e]]` applied about the image centre.
    fn about_centre(height: usize, width: usize, a: f32, b: f32, d: f32, e: f32) -> Self {
        let (cx, cy) = (width as f32 / 2.0, height as f32 / 2.0);
        Self {
            m: [a, b, cx - a * cx - b * cy, d, e, cy - d * cx - e * cy],
            height,
            width,
        }
    }

    /// Rotate by `degrees` about the centre (clockwise on screen, rows growing downwards).
    pub fn rotation(height: usize, width: usize, degrees: f32) -> Self {
        let (sin, cos) = degrees.to_radians().sin_cos();
        Self::about_centre(height, width, cos, -sin, sin, cos)
    }

    /// Scale by `factor` about the centre (> 1 magnifies).
    pub fn zoom(height: usize, width: usize, factor: f32) -> Self {
        Self::about_centre(height, width, factor, 0.0, 0.0, factor)
    }

    /// Shear along x by `degrees`: `x' = x + tan(angle)·(y − centre)`.
    pub fn shear(height: usize, width: usize, degrees: f32) -> Self {
        Self::about_centre(height, width, 1.0, degrees.to_radians().tan(), 0.0, 1.0)
    }

    /// Stretch a `height` × `width` image to `new_height` × `new_width`.
    pub fn resize(height: usize, width: usize, new_height: usize, new_width: usize) -> Self {
        Self {
            m: [
                new_width as f32 / width as f32,
                0.0,
                0.0,
                0.0,
                new_height as f32 / height as f32,
                0.0,
            ],
            height: new_height,
            width: new_width,
        }
    }

    /// The window of `crop_height × crop_width` at `(y0, x0)` stretched to the whole
    /// `height × width` image.
    pub fn crop_to(
        height: usize,
        width: usize,
        [y0, x0, crop_height, crop_width]: [f32; 4],
    ) -> Self {
        let (sx, sy) = (width as f32 / crop_width, height as f32 / crop_height);
        Self {
            m: [sx, 0.0, -x0 * sx, 0.0, sy, -y0 * sy],
            height,
            width,
        }
    }

    /// Where the point `(x, y)` goes.
    pub fn apply(&self, x: f32, y: f32) -> (f32, f32) {
        let [a, b, c, d, e, f] = self.m;
        (a * x + b * y + c, d * x + e * y + f)
    }

    /// Where a point of the output came from.
    fn source(&self, x: f32, y: f32) -> (f32, f32) {
        let [a, b, c, d, e, f] = self.m;
        let det = a * e - b * d;
        let (x, y) = (x - c, y - f);
        ((e * x - b * y) / det, (a * y - d * x) / det)
    }

    /// A box `[x0, y0, x1, y1]` moved: the bounding box of its moved corners, clipped to
    /// the output.
    pub fn apply_box(&self, [x0, y0, x1, y1]: [f32; 4]) -> [f32; 4] {
        let corners = [(x0, y0), (x1, y0), (x0, y1), (x1, y1)].map(|(x, y)| self.apply(x, y));
        let (w, h) = (self.width as f32, self.height as f32);
        let xs = corners.map(|c| c.0);
        let ys = corners.map(|c| c.1);
        let min = |v: [f32; 4]| v.into_iter().fold(f32::INFINITY, f32::min);
        let max = |v: [f32; 4]| v.into_iter().fold(f32::NEG_INFINITY, f32::max);
        [
            min(xs).clamp(0.0, w),
            min(ys).clamp(0.0, h),
            max(xs).clamp(0.0, w),
            max(ys).clamp(0.0, h),
        ]
    }

    /// The image moved: bilinear sampling, zeros outside.
    pub fn warp_image(&self, image: &Image) -> Image {
        let mut pixels = Vec::with_capacity(self.height * self.width);
        for y in 0..self.height {
            for x in 0..self.width {
                let (sx, sy) = self.source(x as f32 + 0.5, y as f32 + 0.5);
                let (u, v) = (sx - 0.5, sy - 0.5);
                let (x0, y0) = (u.floor(), v.floor());
                let (fx, fy) = (u - x0, v - y0);
                let (x0, y0) = (x0 as isize, y0 as isize);
                let p = |yy: isize, xx: isize| image.at(yy, xx);
                let top = p(y0, x0) * (1.0 - fx) + p(y0, x0 + 1) * fx;
                let bottom = p(y0 + 1, x0) * (1.0 - fx) + p(y0 + 1, x0 + 1) * fx;
                pixels.push(top * (1.0 - fy) + bottom * fy);
            }
        }
        Image {
            height: self.height,
            width: self.width,
            pixels,
        }
    }

    /// The mask moved: nearest neighbour (labels are not blended), `mask.fill` outside.
    pub fn warp_mask(&self, mask: &Mask) -> Mask {
        let mut labels = Vec::with_capacity(self.height * self.width);
        for y in 0..self.height {
            for x in 0..self.width {
                let (sx, sy) = self.source(x as f32 + 0.5, y as f32 + 0.5);
                let (i, j) = (sy.floor(), sx.floor());
                labels.push(
                    if i < 0.0 || j < 0.0 || i >= mask.height as f32 || j >= mask.width as f32 {
                        mask.fill
                    } else {
                        mask.labels[i as usize * mask.width + j as usize]
                    },
                );
            }
        }
        Mask {
            height: self.height,
            width: self.width,
            labels,
            fill: mask.fill,
        }
    }
}

/// A segmentation mask: one class label per pixel.
#[derive(Debug, Clone, PartialEq)]
pub struct Mask {
    /// Height.
    pub height: usize,
    /// Width.
    pub width: usize,
    /// `height × width` labels, row-major.
    pub labels: Vec<u8>,
    /// The label of pixels a transform brings in from outside (background, or an ignore
    /// label such as 255).
    pub fill: u8,
}

/// An image with the targets that move with it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The image.
    pub image: Image,
    /// Bounding boxes `[x0, y0, x1, y1]` in pixels.
    pub boxes: Vec<[f32; 4]>,
    /// A segmentation mask of the image's size.
    pub mask: Option<Mask>,
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

/// Random erasing of `image` with probability `p`: torchvision's `RandomErasing` rectangle
/// (up to 10 tries for one that fits), filled with black or, with `random`, with a uniform
/// random value per pixel.
fn erase(image: &mut Image, p: f32, random: bool, rng: &mut StdRng) {
    if rng.random::<f32>() >= p {
        return;
    }
    let (h, w) = (image.height, image.width);
    let area = (h * w) as f32;
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
            let row = &mut image.pixels[y * w + x0..y * w + x0 + ew];
            if random {
                row.iter_mut().for_each(|v| *v = rng.random::<f32>());
            } else {
                row.fill(0.0);
            }
        }
        return;
    }
}

impl Augment {
    /// Whether the step works on whole batches (mixup, cutmix) rather than single images.
    pub fn is_batch_level(&self) -> bool {
        matches!(self, Augment::Mixup { .. } | Augment::Cutmix { .. })
    }

    /// Applies this step to `sample`, image `index` of its set (boxes and mask follow
    /// geometric steps), drawing the same random numbers as [`Augment::apply`].
    pub fn apply_sample(&self, sample: &mut Sample, rng: &mut StdRng, index: usize) {
        if !self.is_geometric() {
            self.apply(&mut sample.image, rng, index);
            return;
        }
        let (h, w) = (sample.image.height, sample.image.width);
        if let Some(affine) = self.draw_geometry(h, w, rng, index) {
            sample.image = self.move_image(&affine, &sample.image);
            for b in &mut sample.boxes {
                *b = affine.apply_box(*b);
            }
            if let Some(mask) = &mut sample.mask {
                *mask = affine.warp_mask(mask);
            }
        }
    }

    /// Whether the step moves pixels (and so boxes and masks).
    fn is_geometric(&self) -> bool {
        matches!(
            self,
            Augment::Flip
                | Augment::AlternatingFlip { .. }
                | Augment::Crop { .. }
                | Augment::Translate { .. }
                | Augment::Rotate { .. }
                | Augment::Zoom { .. }
                | Augment::Shear { .. }
                | Augment::Resize { .. }
                | Augment::ResizedCrop { .. }
        )
    }

    /// The random map of a geometric step (`None` when it leaves the image as it is, as an
    /// unflipped `flip`) for image `index` of its set. The one place a geometric step draws
    /// its random numbers, for images and samples alike.
    fn draw_geometry(&self, h: usize, w: usize, rng: &mut StdRng, index: usize) -> Option<Affine> {
        Some(match *self {
            Augment::Flip | Augment::AlternatingFlip { epoch: None } => {
                return rng.random::<bool>().then(|| Affine::flip(h, w));
            }
            Augment::AlternatingFlip {
                epoch: Some((seed, epoch)),
            } => {
                // The image's start, the same in every epoch of the run; then every other
                // epoch the other way.
                let start = Pipeline::rng(seed ^ ALTERNATING_FLIP_STREAM, index).random::<bool>();
                return (start != epoch.is_multiple_of(2)).then(|| Affine::flip(h, w));
            }
            Augment::Crop { pad } => {
                // Window origin in the padded image: 0..=2·pad; the shift is pad − origin.
                let oy = rng.random_range(0..=2 * pad) as f32;
                let ox = rng.random_range(0..=2 * pad) as f32;
                Affine::shift(h, w, pad as f32 - oy, pad as f32 - ox)
            }
            Augment::Translate { max } => {
                let m = max as i64;
                let dy = rng.random_range(-m..=m) as f32;
                let dx = rng.random_range(-m..=m) as f32;
                Affine::shift(h, w, dy, dx)
            }
            Augment::Rotate { degrees } => {
                Affine::rotation(h, w, rng.random_range(-degrees..=degrees))
            }
            Augment::Zoom { range } => {
                Affine::zoom(h, w, rng.random_range(1.0 - range..=1.0 + range))
            }
            Augment::Shear { degrees } => Affine::shear(h, w, rng.random_range(-degrees..=degrees)),
            Augment::Resize { height, width } => Affine::resize(h, w, height, width),
            Augment::ResizedCrop { min_scale } => {
                // torchvision: up to 10 tries for a window that fits, else the whole image.
                let area = (h * w) as f32;
                let log_ratio = (0.75f32.ln(), (4.0f32 / 3.0).ln());
                for _ in 0..10 {
                    let target = area * rng.random_range(min_scale..=1.0);
                    let ratio = rng.random_range(log_ratio.0..=log_ratio.1).exp();
                    let cw = (target * ratio).sqrt().round();
                    let ch = (target / ratio).sqrt().round();
                    if cw >= 1.0 && ch >= 1.0 && cw <= w as f32 && ch <= h as f32 {
                        let y0 = rng.random_range(0..=(h - ch as usize)) as f32;
                        let x0 = rng.random_range(0..=(w - cw as usize)) as f32;
                        return Some(Affine::crop_to(h, w, [y0, x0, ch, cw]));
                    }
                }
                return None;
            }
            _ => return None,
        })
    }

    /// `image` moved by this step's `affine`: whole-pixel moves (flip, crop, translate) as
    /// exact copies, the others by bilinear sampling.
    fn move_image(&self, affine: &Affine, image: &Image) -> Image {
        match *self {
            Augment::Flip | Augment::AlternatingFlip { .. } => {
                let mut image = image.clone();
                image
                    .pixels
                    .chunks_mut(image.width)
                    .for_each(<[f32]>::reverse);
                image
            }
            Augment::Crop { .. } | Augment::Translate { .. } => {
                let [_, _, dx, _, _, dy] = affine.m;
                image.shifted(dy as isize, dx as isize)
            }
            _ => affine.warp_image(image),
        }
    }

    /// Applies this step to `image`, image `index` of its set, drawing from `rng`
    /// (batch-level steps do nothing here).
    pub fn apply(&self, image: &mut Image, rng: &mut StdRng, index: usize) {
        let (h, w) = (image.height, image.width);
        if self.is_geometric() {
            if let Some(affine) = self.draw_geometry(h, w, rng, index) {
                *image = self.move_image(&affine, image);
            }
            return;
        }
        match *self {
            // Geometric steps are done above; batch-level ones act on whole batches.
            Augment::Flip
            | Augment::AlternatingFlip { .. }
            | Augment::Crop { .. }
            | Augment::Translate { .. }
            | Augment::Rotate { .. }
            | Augment::Zoom { .. }
            | Augment::Shear { .. }
            | Augment::Resize { .. }
            | Augment::ResizedCrop { .. }
            | Augment::Mixup { .. }
            | Augment::Cutmix { .. } => {}
            Augment::Erase { p } => erase(image, p, false, rng),
            Augment::EraseRandom { p } => erase(image, p, true, rng),
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

/// A run's augmentation over its epochs: `pipeline` bound to each epoch
/// ([`Pipeline::for_epoch`]) until `off_epoch`, and from that epoch on only its evaluation
/// steps ([`Pipeline::eval_steps`], e.g. `resize`), so that the last epochs train on the
/// images as the test sees them. timm's `--mixup-off-epoch` does this for mixup and cutmix;
/// here it stops every random step, batch-level ones included.
///
/// ```
/// use konv_train::augment::{AugmentSchedule, Pipeline};
///
/// let pipeline: Pipeline = "flip,crop=2,erase=0.5,resize=32x32".parse()?;
/// let schedule = AugmentSchedule::new(pipeline.clone(), Some(9));
/// assert_eq!(schedule.for_epoch(42, 8), pipeline.for_epoch(42, 8));
/// assert_eq!(schedule.for_epoch(42, 9).to_string(), "resize=32x32");
/// # Ok::<(), String>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AugmentSchedule {
    /// The steps, in order.
    pub pipeline: Pipeline,
    /// The first epoch (from 1) without the random steps; `None` keeps them to the end.
    pub off_epoch: Option<usize>,
}

impl AugmentSchedule {
    /// `pipeline` for every epoch before `off_epoch`.
    pub fn new(pipeline: Pipeline, off_epoch: Option<usize>) -> Self {
        Self {
            pipeline,
            off_epoch,
        }
    }

    /// The pipeline of epoch `epoch` (from 1) of a run seeded `seed`.
    pub fn for_epoch(&self, seed: u64, epoch: usize) -> Pipeline {
        match self.off_epoch {
            Some(off) if epoch >= off => self.pipeline.eval_steps(),
            _ => self.pipeline.for_epoch(seed, epoch),
        }
    }
}

impl From<Pipeline> for AugmentSchedule {
    /// `pipeline` in every epoch.
    fn from(pipeline: Pipeline) -> Self {
        Self::new(pipeline, None)
    }
}

/// Mixed into the run's seed for the starts of [`Augment::AlternatingFlip`], so that they
/// are unrelated to any epoch's stream.
const ALTERNATING_FLIP_STREAM: u64 = 0x616c_7466_6c69_7073;

const VALID: &str = "valid steps: flip, flip=alternate, crop=PIXELS, translate=PIXELS, rotate=DEGREES, \
zoom=FRACTION, shear=DEGREES, resize=HxW, resized-crop=MIN_SCALE, erase=PROBABILITY, erase-random=PROBABILITY, brightness=DELTA, contrast=DELTA, \
mixup=ALPHA, cutmix=ALPHA (e.g. --augment flip,crop=4,rotate=10,erase=0.25)";

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
                "flip" if value == "alternate" => Augment::AlternatingFlip { epoch: None },
                "crop" => Augment::Crop { pad: pixels()? },
                "translate" => Augment::Translate { max: pixels()? },
                "erase" => Augment::Erase { p: fraction(1.0)? },
                "erase-random" => Augment::EraseRandom { p: fraction(1.0)? },
                "brightness" => Augment::Brightness {
                    delta: fraction(1.0)?,
                },
                "contrast" => Augment::Contrast {
                    delta: fraction(1.0)?,
                },
                "rotate" => Augment::Rotate {
                    degrees: fraction(180.0)?,
                },
                "zoom" => Augment::Zoom {
                    range: fraction(0.9)?,
                },
                "shear" => Augment::Shear {
                    degrees: fraction(60.0)?,
                },
                "resized-crop" => {
                    let min_scale = value
                        .parse::<f32>()
                        .ok()
                        .filter(|v| *v > 0.0 && *v <= 1.0)
                        .ok_or_else(|| bad("needs the smallest area share in (0, 1], e.g. 0.08"))?;
                    Augment::ResizedCrop { min_scale }
                }
                "resize" => {
                    let size = value
                        .split_once('x')
                        .and_then(|(h, w)| Some((h.parse().ok()?, w.parse().ok()?)))
                        .filter(|&(h, w): &(usize, usize)| h > 0 && w > 0)
                        .ok_or_else(|| bad("needs HEIGHTxWIDTH, e.g. resize=32x32"))?;
                    Augment::Resize {
                        height: size.0,
                        width: size.1,
                    }
                }
                "mixup" | "cutmix" => {
                    let alpha = value
                        .parse::<f32>()
                        .ok()
                        .filter(|a| *a > 0.0 && a.is_finite())
                        .ok_or_else(|| {
                            bad("needs a positive alpha, e.g. 0.2 (mixup) or 1.0 (cutmix)")
                        })?;
                    if name == "mixup" {
                        Augment::Mixup { alpha }
                    } else {
                        Augment::Cutmix { alpha }
                    }
                }
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
                Augment::AlternatingFlip { .. } => "flip=alternate".to_string(),
                Augment::Crop { pad } => format!("crop={pad}"),
                Augment::Translate { max } => format!("translate={max}"),
                Augment::Erase { p } => format!("erase={p}"),
                Augment::EraseRandom { p } => format!("erase-random={p}"),
                Augment::Brightness { delta } => format!("brightness={delta}"),
                Augment::Contrast { delta } => format!("contrast={delta}"),
                Augment::Rotate { degrees } => format!("rotate={degrees}"),
                Augment::Zoom { range } => format!("zoom={range}"),
                Augment::Shear { degrees } => format!("shear={degrees}"),
                Augment::Resize { height, width } => format!("resize={height}x{width}"),
                Augment::ResizedCrop { min_scale } => format!("resized-crop={min_scale}"),
                Augment::Mixup { alpha } => format!("mixup={alpha}"),
                Augment::Cutmix { alpha } => format!("cutmix={alpha}"),
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

    /// Applies every per-image step to `image`, for image `index` of the epoch seeded
    /// `epoch_seed`.
    pub fn apply(&self, image: &mut Image, epoch_seed: u64, index: usize) {
        let mut rng = Self::rng(epoch_seed, index);
        for step in &self.0 {
            step.apply(image, &mut rng, index);
        }
    }

    /// [`Pipeline::apply`] on a sample: its boxes and mask move with the image.
    pub fn apply_sample(&self, sample: &mut Sample, epoch_seed: u64, index: usize) {
        let mut rng = Self::rng(epoch_seed, index);
        for step in &self.0 {
            step.apply_sample(sample, &mut rng, index);
        }
    }

    /// The pipeline for epoch `epoch` (from 1) of a run seeded `seed`: its alternating
    /// flips know which way each image goes this epoch. Other steps are unchanged.
    pub fn for_epoch(&self, seed: u64, epoch: usize) -> Pipeline {
        Pipeline(
            self.0
                .iter()
                .map(|step| match step {
                    Augment::AlternatingFlip { .. } => Augment::AlternatingFlip {
                        epoch: Some((seed, epoch)),
                    },
                    other => *other,
                })
                .collect(),
        )
    }

    /// The image size after the pipeline, for `height` × `width` inputs.
    pub fn output_size(&self, height: usize, width: usize) -> (usize, usize) {
        self.0
            .iter()
            .fold((height, width), |size, step| match *step {
                Augment::Resize { height, width } => (height, width),
                _ => size,
            })
    }

    /// The deterministic steps evaluation must apply too (`resize`).
    pub fn eval_steps(&self) -> Pipeline {
        Pipeline(
            self.0
                .iter()
                .copied()
                .filter(|s| matches!(s, Augment::Resize { .. }))
                .collect(),
        )
    }

    /// Whether the pipeline mixes images across a batch.
    pub fn mixes(&self) -> bool {
        self.0.iter().any(Augment::is_batch_level)
    }

    /// Mixes a batch of `n` images of `c` planes of `h × w` values (`pixels`, image after
    /// image) in place
    /// with the batch reversed (timm's pairing), per the pipeline's mixup / cutmix steps
    /// (one of the two, chosen at random, when both are given). Returns λ, the share of
    /// each image's own label, or `None` when the pipeline does not mix.
    pub fn mix_batch(
        &self,
        pixels: &mut [f32],
        n: usize,
        c: usize,
        h: usize,
        w: usize,
        rng: &mut StdRng,
    ) -> Option<f32> {
        let options: Vec<Augment> = self
            .0
            .iter()
            .copied()
            .filter(Augment::is_batch_level)
            .collect();
        if options.is_empty() || n == 0 {
            return None;
        }
        let step = options[rng.random_range(0..options.len())];
        let (Augment::Mixup { alpha } | Augment::Cutmix { alpha }) = step else {
            unreachable!("batch-level steps only")
        };
        let beta = rand_distr::Beta::new(alpha, alpha).expect("alpha > 0 by parsing");
        let lambda: f32 = rand_distr::Distribution::sample(&beta, rng);
        let plane = h * w;
        let size = c * plane;
        let original = pixels.to_vec();
        match step {
            Augment::Mixup { .. } => {
                for i in 0..n {
                    let j = n - 1 - i;
                    for k in 0..size {
                        pixels[i * size + k] = lambda * original[i * size + k]
                            + (1.0 - lambda) * original[j * size + k];
                    }
                }
                Some(lambda)
            }
            _ => {
                // A box of (1 − λ) of the area, centred anywhere, clipped to the image.
                let cut = (1.0 - lambda).sqrt();
                let (ch, cw) = ((h as f32 * cut) as usize, (w as f32 * cut) as usize);
                let cy = rng.random_range(0..h);
                let cx = rng.random_range(0..w);
                let (y0, y1) = (cy.saturating_sub(ch / 2), (cy + ch / 2).min(h));
                let (x0, x1) = (cx.saturating_sub(cw / 2), (cx + cw / 2).min(w));
                for i in 0..n {
                    let j = n - 1 - i;
                    for k in 0..c {
                        for y in y0..y1 {
                            for x in x0..x1 {
                                let at = k * plane + y * w + x;
                                pixels[i * size + at] = original[j * size + at];
                            }
                        }
                    }
                }
                // The share actually left after clipping.
                Some(1.0 - ((y1 - y0) * (x1 - x0)) as f32 / plane as f32)
            }
        }
    }
}

/// A picture of what a pipeline does: one row per image (the first `count` of `set`), the
/// original in the first column and `variants` augmented versions (epochs 1, 2 … of a run
/// seeded `seed`, with epoch seeds `seed + 1 …`) after it, each pixel drawn
/// `scale`×`scale`, with 2-pixel gray gaps.
pub fn grid(
    set: &konv_datasets::ImageSet,
    pipeline: &Pipeline,
    count: usize,
    variants: usize,
    seed: u64,
    scale: usize,
) -> image::GrayImage {
    let (h, w) = (set.images.rows, set.images.cols);
    let (oh, ow) = pipeline.output_size(h, w);
    let scale = scale.max(1);
    let count = count.min(set.len());
    let gap = 2;
    let cell_w = w.max(ow) * scale + gap;
    let cell_h = h.max(oh) * scale + gap;
    let mut out = image::GrayImage::from_pixel(
        (cell_w * (variants + 1) + gap) as u32,
        (cell_h * count + gap) as u32,
        image::Luma([128]),
    );
    for row in 0..count {
        for col in 0..=variants {
            let mut img = Image::from_u8(set.images.image(row), h, w);
            if col > 0 {
                pipeline
                    .for_epoch(seed, col)
                    .apply(&mut img, seed.wrapping_add(col as u64), row);
            }
            for y in 0..img.height * scale {
                for x in 0..img.width * scale {
                    let v = img.pixels[(y / scale) * img.width + x / scale];
                    out.put_pixel(
                        (gap + col * cell_w + x) as u32,
                        (gap + row * cell_h + y) as u32,
                        image::Luma([(v.clamp(0.0, 1.0) * 255.0).round() as u8]),
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
    crate::plot::save_png(path, &grid(set, pipeline, count, variants, seed, 2))
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

    /// A 28×28 image of one value.
    fn flat(value: f32) -> Image {
        Image {
            height: 28,
            width: 28,
            pixels: vec![value; 784],
        }
    }

    /// Runs `step` with seeds until `pred` holds for the result.
    fn find(step: Augment, image: &Image, pred: impl Fn(&Image) -> bool) -> Image {
        for seed in 0..200 {
            let mut out = image.clone();
            step.apply(&mut out, &mut StdRng::seed_from_u64(seed), 0);
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

    /// `flip=alternate`: each image's orientation alternates from epoch to epoch, from a
    /// start that varies between images and runs but not with the epoch's stream; boxes
    /// follow; unbound to an epoch it is a random flip.
    #[test]
    fn alternating_flip_mirrors_each_image_in_every_other_epoch() {
        let pipeline: Pipeline = "flip=alternate".parse().unwrap();
        assert_eq!(pipeline.0, vec![Augment::AlternatingFlip { epoch: None }]);
        assert_eq!(pipeline.to_string(), "flip=alternate");
        assert!("flip=sometimes".parse::<Pipeline>().is_err());
        let img = ramp(2, 3);
        let mirrored_row = vec![0.03, 0.02, 0.01, 0.06, 0.05, 0.04];
        // Whether image `index` comes out mirrored in `epoch` of the run seeded `seed`; the
        // epoch's stream seed is a different arbitrary value each time.
        let mirrored = |seed: u64, epoch: usize, index: usize| {
            let mut out = img.clone();
            let stream = 1000 * epoch as u64 + index as u64;
            pipeline
                .for_epoch(seed, epoch)
                .apply(&mut out, stream, index);
            assert!(out == img || out.pixels == mirrored_row, "{out:?}");
            out != img
        };
        let starts: Vec<bool> = (0..64).map(|i| mirrored(5, 1, i)).collect();
        let flipped = starts.iter().filter(|&&f| f).count();
        assert!(
            (16..=48).contains(&flipped),
            "{flipped} of 64 start mirrored"
        );
        for epoch in 2..=5 {
            for (i, &start) in starts.iter().enumerate() {
                assert_eq!(
                    mirrored(5, epoch, i),
                    start != (epoch % 2 == 0),
                    "epoch {epoch}"
                );
            }
        }
        let other_run: Vec<bool> = (0..64).map(|i| mirrored(6, 1, i)).collect();
        assert_ne!(other_run, starts);
        // Boxes move with the image: the first image mirrored in epoch 1 has its box on the
        // left moved to the right.
        let index = starts.iter().position(|&f| f).unwrap();
        let mut sample = Sample {
            image: img.clone(),
            boxes: vec![[0.0, 0.0, 1.0, 2.0]],
            mask: None,
        };
        pipeline
            .for_epoch(5, 1)
            .apply_sample(&mut sample, 77, index);
        assert_eq!(sample.image.pixels, mirrored_row);
        assert_eq!(sample.boxes, vec![[2.0, 0.0, 3.0, 2.0]]);
        // Unbound: a random flip, both ways over seeds.
        let unbound = Augment::AlternatingFlip { epoch: None };
        find(unbound, &img, |o| o != &img);
        find(unbound, &img, |o| o == &img);
    }

    #[test]
    fn crop_and_translate_move_content_by_whole_pixels() {
        let img = ramp(3, 3);
        let same = Augment::Crop { pad: 0 };
        let mut out = img.clone();
        same.apply(&mut out, &mut StdRng::seed_from_u64(1), 0);
        assert_eq!(out, img);
        // Every outcome of crop=1 is the image shifted by −1..=1 in each axis.
        for seed in 0..50 {
            let mut out = img.clone();
            Augment::Crop { pad: 1 }.apply(&mut out, &mut StdRng::seed_from_u64(seed), 0);
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
        let img = flat(1.0);
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
        Augment::Erase { p: 0.0 }.apply(&mut never, &mut StdRng::seed_from_u64(3), 0);
        assert_eq!(never, img);
    }

    /// `erase-random`: the rectangle `erase` would black out with the same stream, filled
    /// with varied values in [0, 1]; the pixels around it untouched.
    #[test]
    fn erase_random_fills_the_same_rectangle_with_noise() {
        let img = flat(2.0);
        for seed in 0..20 {
            let (mut black, mut noise) = (img.clone(), img.clone());
            Augment::Erase { p: 0.9 }.apply(&mut black, &mut StdRng::seed_from_u64(seed), 0);
            Augment::EraseRandom { p: 0.9 }.apply(&mut noise, &mut StdRng::seed_from_u64(seed), 0);
            let erased: Vec<usize> = (0..784).filter(|&i| black.pixels[i] == 0.0).collect();
            let changed: Vec<usize> = (0..784).filter(|&i| noise.pixels[i] != 2.0).collect();
            assert_eq!(changed, erased, "seed {seed}");
            let values: Vec<f32> = erased.iter().map(|&i| noise.pixels[i]).collect();
            assert!(values.iter().all(|v| (0.0..1.0).contains(v)), "{values:?}");
            if values.len() > 2 {
                assert!(values.iter().any(|&v| v != values[0]), "{values:?}");
            }
        }
        let mut never = img.clone();
        Augment::EraseRandom { p: 0.0 }.apply(&mut never, &mut StdRng::seed_from_u64(3), 0);
        assert_eq!(never, img);
        assert!(
            find(Augment::EraseRandom { p: 1.0 }, &img, |o| o != &img)
                .pixels
                .iter()
                .any(|&v| v < 1.0)
        );
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
                step.apply(&mut out, &mut StdRng::seed_from_u64(seed), 0);
                assert!(out.pixels.iter().all(|p| (0.0..=1.0).contains(p)));
            }
        }
        // Contrast keeps the mean where nothing clips.
        let mut out = img.clone();
        Augment::Contrast { delta: 0.5 }.apply(&mut out, &mut StdRng::seed_from_u64(7), 0);
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

    /// A 10×10 sample: a bright 2×2 block at rows 0–1, columns 0–1, its box and its mask.
    fn block_sample() -> Sample {
        let mut pixels = vec![0.0; 100];
        let mut labels = vec![0u8; 100];
        for (y, x) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
            pixels[y * 10 + x] = 1.0;
            labels[y * 10 + x] = 3;
        }
        Sample {
            image: Image {
                height: 10,
                width: 10,
                pixels,
            },
            boxes: vec![[0.0, 0.0, 2.0, 2.0]],
            mask: Some(Mask {
                height: 10,
                width: 10,
                labels,
                fill: 0,
            }),
        }
    }

    /// The mask's labelled pixels as a box `[x0, y0, x1, y1]`.
    fn mask_box(mask: &Mask, label: u8) -> [f32; 4] {
        let cells: Vec<(usize, usize)> = (0..mask.labels.len())
            .filter(|&i| mask.labels[i] == label)
            .map(|i| (i % mask.width, i / mask.width))
            .collect();
        let x0 = cells.iter().map(|c| c.0).min().unwrap() as f32;
        let y0 = cells.iter().map(|c| c.1).min().unwrap() as f32;
        let x1 = cells.iter().map(|c| c.0).max().unwrap() as f32 + 1.0;
        let y1 = cells.iter().map(|c| c.1).max().unwrap() as f32 + 1.0;
        [x0, y0, x1, y1]
    }

    fn moved(sample: &Sample, affine: &Affine) -> Sample {
        Sample {
            image: affine.warp_image(&sample.image),
            boxes: sample.boxes.iter().map(|b| affine.apply_box(*b)).collect(),
            mask: sample.mask.as_ref().map(|m| affine.warp_mask(m)),
        }
    }

    fn close(a: [f32; 4], b: [f32; 4]) {
        assert!(
            a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-4),
            "{a:?} vs {b:?}"
        );
    }

    #[test]
    fn boxes_and_masks_follow_each_geometric_transform() {
        let s = block_sample();
        // Flip: the block goes to columns 8–9.
        let out = moved(&s, &Affine::flip(10, 10));
        close(out.boxes[0], [8.0, 0.0, 10.0, 2.0]);
        close(
            mask_box(out.mask.as_ref().unwrap(), 3),
            [8.0, 0.0, 10.0, 2.0],
        );
        assert_eq!(out.image.pixels[9], 1.0);
        // Shift by 3 rows and 4 columns (crop and translate).
        let out = moved(&s, &Affine::shift(10, 10, 3.0, 4.0));
        close(out.boxes[0], [4.0, 3.0, 6.0, 5.0]);
        close(
            mask_box(out.mask.as_ref().unwrap(), 3),
            [4.0, 3.0, 6.0, 5.0],
        );
        assert_eq!(out.image.pixels[3 * 10 + 4], 1.0);
        // Rotation by 90° clockwise about the centre: top-left goes to top-right.
        let out = moved(&s, &Affine::rotation(10, 10, 90.0));
        close(out.boxes[0], [8.0, 0.0, 10.0, 2.0]);
        close(
            mask_box(out.mask.as_ref().unwrap(), 3),
            [8.0, 0.0, 10.0, 2.0],
        );
        assert!((out.image.pixels[8] - 1.0).abs() < 1e-4);
        // Zoom ×2 about the centre: a centred 2×2 box becomes 4×4.
        let mut centred = s.clone();
        centred.boxes = vec![[4.0, 4.0, 6.0, 6.0]];
        let mask = centred.mask.as_mut().unwrap();
        mask.labels = vec![0; 100];
        for (y, x) in [(4, 4), (4, 5), (5, 4), (5, 5)] {
            mask.labels[y * 10 + x] = 3;
        }
        let out = moved(&centred, &Affine::zoom(10, 10, 2.0));
        close(out.boxes[0], [3.0, 3.0, 7.0, 7.0]);
        close(
            mask_box(out.mask.as_ref().unwrap(), 3),
            [3.0, 3.0, 7.0, 7.0],
        );
        // Shear by 45°: x' = x + (y − 5), so rows 0–2 move left by 5 to 3 and clip at 0.
        let mut sheared = s.clone();
        sheared.boxes = vec![[4.0, 0.0, 6.0, 2.0]];
        let out = moved(&sheared, &Affine::shear(10, 10, 45.0));
        close(out.boxes[0], [0.0, 0.0, 3.0, 2.0]);
        // Resize to 20×30: coordinates scale by 3 in x and 2 in y; the mask's block too.
        let out = moved(&s, &Affine::resize(10, 10, 20, 30));
        assert_eq!((out.image.height, out.image.width), (20, 30));
        close(out.boxes[0], [0.0, 0.0, 6.0, 4.0]);
        close(
            mask_box(out.mask.as_ref().unwrap(), 3),
            [0.0, 0.0, 6.0, 4.0],
        );
        // Pixels brought in from outside take the mask's fill label.
        let mut ignore = s.clone();
        ignore.mask.as_mut().unwrap().fill = 255;
        let out = moved(&ignore, &Affine::shift(10, 10, 0.0, 2.0));
        assert_eq!(out.mask.unwrap().labels[0], 255);
    }

    #[test]
    fn random_steps_move_boxes_with_their_images() {
        // Through the pipeline, each random geometric step moves the box exactly as the
        // image: the bright block's bounding box and the transformed box agree.
        let pipeline: Pipeline =
            "flip,crop=2,translate=2,rotate=15,zoom=0.2,shear=10,brightness=0.1"
                .parse()
                .unwrap();
        let mut base = block_sample();
        base.boxes = vec![[4.0, 4.0, 6.0, 6.0]];
        base.image.pixels = vec![0.0; 100];
        for (y, x) in [(4, 4), (4, 5), (5, 4), (5, 5)] {
            base.image.pixels[y * 10 + x] = 1.0;
        }
        base.mask = None;
        for index in 0..20 {
            let mut sample = base.clone();
            pipeline.apply_sample(&mut sample, 9, index);
            // The same draws as the image-only path.
            let mut image = base.image.clone();
            pipeline.apply(&mut image, 9, index);
            assert_eq!(image, sample.image);
            // Every pixel brighter than half lies inside the moved box (one pixel of slack
            // for bilinear spread).
            let [x0, y0, x1, y1] = sample.boxes[0];
            for (i, &p) in sample.image.pixels.iter().enumerate() {
                if p > 0.6 {
                    let (x, y) = ((i % 10) as f32 + 0.5, (i / 10) as f32 + 0.5);
                    assert!(
                        x > x0 - 1.0 && x < x1 + 1.0 && y > y0 - 1.0 && y < y1 + 1.0,
                        "index {index}: pixel ({x}, {y}) outside {:?}",
                        sample.boxes[0]
                    );
                }
            }
        }
    }

    #[test]
    fn mixup_and_cutmix_mix_with_the_reversed_batch() {
        let (n, h, w) = (4, 6, 6);
        let base: Vec<f32> = (0..n).flat_map(|i| vec![i as f32; h * w]).collect();
        let mixup: Pipeline = "mixup=0.4".parse().unwrap();
        let mut pixels = base.clone();
        let lambda = mixup
            .mix_batch(&mut pixels, n, 1, h, w, &mut StdRng::seed_from_u64(1))
            .unwrap();
        assert!((0.0..=1.0).contains(&lambda));
        // Image 0 is λ·0 + (1 − λ)·3.
        assert!((pixels[0] - (1.0 - lambda) * 3.0).abs() < 1e-5);
        let cutmix: Pipeline = "cutmix=1.0".parse().unwrap();
        let mut pixels = base.clone();
        let lambda = cutmix
            .mix_batch(&mut pixels, n, 1, h, w, &mut StdRng::seed_from_u64(2))
            .unwrap();
        // Image 1's pixels are its own (1) or image 2's, the share of its own being λ.
        let own = pixels[h * w..2 * h * w]
            .iter()
            .filter(|&&p| p == 1.0)
            .count();
        let other = pixels[h * w..2 * h * w]
            .iter()
            .filter(|&&p| p == 2.0)
            .count();
        assert_eq!(own + other, h * w);
        assert!((own as f32 / (h * w) as f32 - lambda).abs() < 1e-6);
        assert!(
            Pipeline::default()
                .mix_batch(&mut pixels, n, 1, h, w, &mut StdRng::seed_from_u64(0))
                .is_none()
        );
    }

    #[test]
    fn cutmix_cuts_the_same_box_from_every_channel() {
        let (n, c, h, w) = (2, 3, 8, 8);
        // Image i, channel k holds 10·i + k everywhere.
        let base: Vec<f32> = (0..n)
            .flat_map(|i| (0..c).flat_map(move |k| vec![(10 * i + k) as f32; h * w]))
            .collect();
        let cutmix: Pipeline = "cutmix=1.0".parse().unwrap();
        let mut pixels = base.clone();
        let lambda = cutmix
            .mix_batch(&mut pixels, n, c, h, w, &mut StdRng::seed_from_u64(3))
            .unwrap();
        let plane = h * w;
        let taken: Vec<Vec<bool>> = (0..c)
            .map(|k| {
                pixels[k * plane..(k + 1) * plane]
                    .iter()
                    .map(|&p| p == (10 + k) as f32)
                    .collect()
            })
            .collect();
        assert_eq!(taken[0], taken[1]);
        assert_eq!(taken[0], taken[2]);
        let own = taken[0].iter().filter(|t| !**t).count();
        assert!((own as f32 / plane as f32 - lambda).abs() < 1e-6);
    }

    #[test]
    fn resized_crops_zoom_in_on_a_window_of_the_image() {
        let step: Pipeline = "resized-crop=0.25".parse().unwrap();
        assert_eq!(step.to_string(), "resized-crop=0.25");
        assert!("resized-crop=0".parse::<Pipeline>().is_err());
        assert!("resized-crop=1.5".parse::<Pipeline>().is_err());
        let image = ramp(16, 16);
        let mut changed = 0;
        for index in 0..20 {
            let mut out = image.clone();
            step.apply(&mut out, 9, index);
            assert_eq!((out.height, out.width), (16, 16));
            // A window stretched: no value beyond the ramp's largest.
            let hi = out.pixels.iter().fold(f32::MIN, |a, &p| a.max(p));
            assert!(hi <= 2.56 + 1e-4, "{hi}");
            changed += usize::from(out != image);
        }
        assert!(changed >= 15, "most draws crop: {changed}");
        // Boxes follow: the window's own corners map to the image's.
        let affine = Affine::crop_to(16, 16, [4.0, 2.0, 8.0, 8.0]);
        close(
            affine.apply_box([2.0, 4.0, 10.0, 12.0]),
            [0.0, 0.0, 16.0, 16.0],
        );
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
        let random: Pipeline = "erase-random=0.5".parse().unwrap();
        assert_eq!(random.0, vec![Augment::EraseRandom { p: 0.5 }]);
        assert_eq!(random.to_string(), "erase-random=0.5");
        let all: Pipeline = "rotate=10,zoom=0.1,shear=5,resize=32x30,mixup=0.2,cutmix=1"
            .parse()
            .unwrap();
        assert_eq!(all.to_string().parse::<Pipeline>().unwrap(), all);
        assert_eq!(all.output_size(28, 28), (32, 30));
        assert!(all.mixes());
        for bad in [
            "spin=10",
            "crop=x",
            "erase=2",
            "erase-random=-1",
            "flip=1",
            "resize=32",
            "mixup=0",
        ] {
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
