//! Semantic segmentation data: images with a class label for every pixel.
//!
//! - [`SegmentationSet::generate`] places several items of a 28×28 set (Fashion-MNIST) at
//!   random scales and places on a black canvas (96×96 by default); every pixel of an item
//!   is labelled with its class + 1, the rest 0 (background). Where items overlap, the one
//!   drawn later is on top, in the image and in the mask alike. Each item is used once, in
//!   order, so a set built from the test images holds only test items. Reproducible for a
//!   seed.
//! - [`SegmentationSet::load_folder`] reads real data: images and mask PNGs of the same
//!   file stem, the mask's gray value being the class index (255: ignore).

use std::path::Path;

use image::imageops::FilterType;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::localization::{check_scale, resize};
use crate::mnist::{DataError, ImageSet};

/// The mask value of pixels no class is given for (PASCAL VOC's convention).
pub const IGNORE: u8 = 255;

/// How [`SegmentationSet::generate`] draws its scenes.
#[derive(Debug, Clone, PartialEq)]
pub struct SceneConfig {
    /// Canvas side in pixels.
    pub size: usize,
    /// Fewest and most items per canvas.
    pub items: (usize, usize),
    /// Smallest and largest item scale (28 pixels × scale).
    pub scale: (f32, f32),
    /// Largest IoU an item's placement may have with an earlier item's placement (`None`:
    /// anywhere). Detection sets use it so that no object is mostly hidden; a placement is
    /// drawn again up to 50 times, then the least overlapping draw is kept.
    pub max_overlap: Option<f32>,
    /// Seed of every random draw.
    pub seed: u64,
}

impl Default for SceneConfig {
    fn default() -> Self {
        Self {
            size: 96,
            items: (2, 4),
            scale: (1.0, 1.5),
            max_overlap: None,
            seed: 0,
        }
    }
}

impl SceneConfig {
    /// Checks the settings for `item`-pixel items.
    ///
    /// # Errors
    /// A one-line description of the first bad setting.
    pub fn validate(&self, item: usize) -> Result<(), String> {
        check_scale(self.scale, item, self.size)?;
        if self.items.0 == 0 || self.items.0 > self.items.1 {
            return Err(format!(
                "items per canvas {}..{}: give 1 ≤ fewest ≤ most",
                self.items.0, self.items.1
            ));
        }
        if let Some(o) = self.max_overlap
            && !(0.0..=1.0).contains(&o)
        {
            return Err(format!("max overlap {o}: give an IoU in [0, 1]"));
        }
        Ok(())
    }
}

fn iou(a: [f32; 4], b: [f32; 4]) -> f32 {
    let area = |r: [f32; 4]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let i = area([
        a[0].max(b[0]),
        a[1].max(b[1]),
        a[2].min(b[2]),
        a[3].min(b[3]),
    ]);
    i / (area(a) + area(b) - i).max(f32::MIN_POSITIVE)
}

/// Images and their per-pixel labels.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentationSet {
    /// Height and width of every image.
    pub size: [usize; 2],
    /// `len × h × w` 8-bit gray pixels.
    pub pixels: Vec<u8>,
    /// `len × h × w` labels: 0 background, `c + 1` for class `c`, [`IGNORE`] for none.
    pub masks: Vec<u8>,
    /// Number of images.
    pub count: usize,
    /// The items of each image as `(class, [x0, y0, x1, y1])`, the box around the pixels
    /// left visible (for detection); empty for loaded data.
    pub objects: Vec<Vec<(u8, [f32; 4])>>,
}

impl SegmentationSet {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Pixels of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.size[0] * self.size[1];
        &self.pixels[i * n..(i + 1) * n]
    }

    /// Mask of image `i`.
    pub fn mask(&self, i: usize) -> &[u8] {
        let n = self.size[0] * self.size[1];
        &self.masks[i * n..(i + 1) * n]
    }

    /// The images at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Self {
        Self {
            size: self.size,
            pixels: indices
                .iter()
                .flat_map(|&i| self.image(i).to_vec())
                .collect(),
            masks: indices
                .iter()
                .flat_map(|&i| self.mask(i).to_vec())
                .collect(),
            count: indices.len(),
            objects: indices
                .iter()
                .map(|&i| self.objects.get(i).cloned().unwrap_or_default())
                .collect(),
        }
    }

    /// Scenes of the items of `items`, each used once in order (the last scene may hold
    /// fewer than the fewest).
    ///
    /// # Errors
    /// When the settings do not fit ([`SceneConfig::validate`]).
    pub fn generate(items: &ImageSet, config: &SceneConfig) -> Result<Self, String> {
        let (rows, cols) = (items.images.rows, items.images.cols);
        config.validate(rows.max(cols))?;
        let side = config.size;
        let mut rng = StdRng::seed_from_u64(config.seed);
        let (mut pixels, mut masks, mut count) = (Vec::new(), Vec::new(), 0);
        let mut objects = Vec::new();
        let mut next = 0;
        while next < items.len() {
            let k = rng
                .random_range(config.items.0..=config.items.1)
                .min(items.len() - next);
            let mut canvas = vec![0u8; side * side];
            let mut mask = vec![0u8; side * side];
            // Which item (of this scene) each pixel shows, for the visible boxes.
            let mut owner = vec![usize::MAX; side * side];
            let mut placed: Vec<[f32; 4]> = Vec::with_capacity(k);
            for item in next..next + k {
                let scale = rng.random_range(config.scale.0..=config.scale.1);
                let h = ((rows as f32 * scale).round() as usize).clamp(1, side);
                let w = ((cols as f32 * scale).round() as usize).clamp(1, side);
                let img = resize(items.images.image(item), rows, cols, h, w);
                // The first draw within the overlap limit, else the least overlapping.
                let (mut y, mut x, mut least) = (0, 0, f32::INFINITY);
                for _ in 0..50 {
                    let (ty, tx) = (
                        rng.random_range(0..=side - h),
                        rng.random_range(0..=side - w),
                    );
                    let cell = [tx, ty, tx + w, ty + h].map(|v| v as f32);
                    let overlap = placed.iter().map(|p| iou(*p, cell)).fold(0.0, f32::max);
                    if overlap < least {
                        (y, x, least) = (ty, tx, overlap);
                    }
                    if config.max_overlap.is_none_or(|limit| overlap <= limit) {
                        break;
                    }
                }
                placed.push([x, y, x + w, y + h].map(|v| v as f32));
                let label = items.labels[item] + 1;
                for r in 0..h {
                    for c in 0..w {
                        let v = img[r * w + c];
                        if v > 0 {
                            canvas[(y + r) * side + x + c] = v;
                            mask[(y + r) * side + x + c] = label;
                            owner[(y + r) * side + x + c] = item - next;
                        }
                    }
                }
            }
            let mut boxes = vec![[usize::MAX, usize::MAX, 0, 0]; k];
            for (p, &o) in owner.iter().enumerate() {
                if let Some(b) = boxes.get_mut(o) {
                    let (y, x) = (p / side, p % side);
                    *b = [b[0].min(x), b[1].min(y), b[2].max(x + 1), b[3].max(y + 1)];
                }
            }
            objects.push(
                boxes
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| b[0] != usize::MAX)
                    .map(|(j, b)| (items.labels[next + j], b.map(|v| v as f32)))
                    .collect(),
            );
            next += k;
            pixels.extend_from_slice(&canvas);
            masks.extend_from_slice(&mask);
            count += 1;
        }
        Ok(Self {
            size: [side, side],
            pixels,
            masks,
            count,
            objects,
        })
    }

    /// Reads `images` (JPEG/PNG) and, for each, the PNG of the same stem in `masks` whose
    /// gray values are class indices (255 ignored), both resized to `size` (bilinear for the
    /// image, nearest neighbour for the mask).
    ///
    /// # Errors
    /// A missing or unreadable mask or image, naming it, or a label of `classes` or more.
    pub fn load_folder(
        images: &Path,
        masks: &Path,
        classes: usize,
        size: [usize; 2],
    ) -> Result<Self, DataError> {
        let io = |path: &Path, e: std::io::Error| DataError::Io {
            path: path.to_path_buf(),
            source: e,
        };
        let mut files: Vec<_> = std::fs::read_dir(images)
            .map_err(|e| io(images, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                    ["png", "jpg", "jpeg"].contains(&e.to_ascii_lowercase().as_str())
                })
            })
            .collect();
        files.sort();
        let mut set = Self {
            size,
            pixels: Vec::new(),
            masks: Vec::new(),
            count: 0,
            objects: Vec::new(),
        };
        let (w, h) = (size[1] as u32, size[0] as u32);
        for file in files {
            let stem = file.file_stem().unwrap_or_default();
            let mask_path = masks.join(stem).with_extension("png");
            let invalid = |path: &Path, reason: String| DataError::Invalid {
                path: path.to_path_buf(),
                reason,
            };
            let img = image::open(&file)
                .map_err(|e| invalid(&file, format!("cannot read image ({e})")))?;
            let mask = image::open(&mask_path)
                .map_err(|e| {
                    invalid(
                        &mask_path,
                        format!("cannot read the mask of {} ({e}); masks are PNGs named as their images", file.display()),
                    )
                })?
                .into_luma8();
            let mask = image::imageops::resize(&mask, w, h, FilterType::Nearest);
            if let Some(bad) = mask
                .as_raw()
                .iter()
                .find(|&&v| v != IGNORE && usize::from(v) >= classes)
            {
                return Err(invalid(
                    &mask_path,
                    format!(
                        "label {bad}: masks hold class indices below {classes}, or 255 to ignore"
                    ),
                ));
            }
            set.pixels.extend_from_slice(
                img.resize_exact(w, h, FilterType::Triangle)
                    .into_luma8()
                    .as_raw(),
            );
            set.masks.extend_from_slice(mask.as_raw());
            set.count += 1;
        }
        if set.count == 0 {
            return Err(DataError::Invalid {
                path: images.to_path_buf(),
                reason: "no PNG or JPEG images".into(),
            });
        }
        Ok(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IdxImages;

    fn items(n: usize) -> ImageSet {
        let mut pixels = vec![0u8; n * 28 * 28];
        for i in 0..n {
            for r in 4..24 {
                for c in 6..20 {
                    pixels[i * 784 + r * 28 + c] = 100 + (i % 100) as u8;
                }
            }
        }
        ImageSet {
            images: IdxImages {
                count: n,
                channels: 1,
                rows: 28,
                cols: 28,
                pixels,
            },
            labels: (0..n).map(|i| (i % 10) as u8).collect(),
        }
    }

    #[test]
    fn masks_agree_with_the_pixels_and_every_item_is_used_once() {
        let config = SceneConfig {
            seed: 5,
            ..SceneConfig::default()
        };
        let set = SegmentationSet::generate(&items(25), &config).unwrap();
        assert_eq!(set, SegmentationSet::generate(&items(25), &config).unwrap());
        let (mut labelled_items, mut pixels) = (Vec::new(), 0);
        for i in 0..set.len() {
            for (p, m) in set.image(i).iter().zip(set.mask(i)) {
                // Lit exactly where labelled; labels are classes + 1.
                assert_eq!(*p > 0, *m > 0);
                assert!(*m <= 10);
                pixels += usize::from(*m > 0);
            }
            let mut present: Vec<u8> = set.mask(i).iter().copied().filter(|&m| m > 0).collect();
            present.sort_unstable();
            present.dedup();
            labelled_items.push(present.len());
        }
        // Each visible item's box is the tight box of the pixels labelled with its class
        // inside it, and every labelled pixel lies in a box of its class.
        for i in 0..set.len() {
            let mask = set.mask(i);
            for (r, row) in mask.chunks(96).enumerate() {
                for (c, &m) in row.iter().enumerate() {
                    if m > 0 {
                        let inside = set.objects[i].iter().any(|&(class, b)| {
                            class + 1 == m
                                && (b[0] as usize..b[2] as usize).contains(&c)
                                && (b[1] as usize..b[3] as usize).contains(&r)
                        });
                        assert!(inside, "scene {i} pixel ({r}, {c})");
                    }
                }
            }
            for &(class, b) in &set.objects[i] {
                let [x0, y0, x1, y1] = b.map(|v| v as usize);
                let lit = |r: usize, c: usize| mask[r * 96 + c] == class + 1;
                assert!((y0..y1).any(|r| lit(r, x0)) && (y0..y1).any(|r| lit(r, x1 - 1)));
                assert!((x0..x1).any(|c| lit(y0, c)) && (x0..x1).any(|c| lit(y1 - 1, c)));
            }
        }
        // 25 items in scenes of 2 to 4 (the last may hold fewer); overlaps can hide an item.
        assert!((7..=13).contains(&set.len()), "{} scenes", set.len());
        assert!(labelled_items.iter().sum::<usize>() <= 25);
        assert!(pixels > 25 * 20 * 14 / 2);
        let other = SceneConfig {
            seed: 6,
            ..config.clone()
        };
        assert_ne!(
            set.masks,
            SegmentationSet::generate(&items(25), &other).unwrap().masks
        );
        let small = SceneConfig {
            size: 32,
            scale: (1.0, 1.5),
            ..config
        };
        assert!(
            small
                .validate(28)
                .unwrap_err()
                .contains("larger than the 32×32 canvas")
        );
    }

    #[test]
    fn max_overlap_keeps_items_apart() {
        // Items of 20×14 lit pixels in 28×28 cells on a 96×96 canvas: apart, every item
        // keeps most of its pixels visible.
        let config = SceneConfig {
            seed: 3,
            items: (3, 3),
            scale: (1.0, 1.0),
            max_overlap: Some(0.0),
            ..SceneConfig::default()
        };
        let set = SegmentationSet::generate(&items(60), &config).unwrap();
        assert_eq!(set.len(), 20);
        for objects in &set.objects {
            assert_eq!(objects.len(), 3);
            for (j, a) in objects.iter().enumerate() {
                for b in &objects[j + 1..] {
                    assert_eq!(iou(a.1, b.1), 0.0, "{objects:?}");
                }
            }
        }
        let bad = SceneConfig {
            max_overlap: Some(1.5),
            ..config
        };
        assert!(bad.validate(28).unwrap_err().contains("max overlap"));
    }

    #[test]
    fn real_images_and_mask_pngs() {
        let dir = std::env::temp_dir().join(format!("konv-seg-{}", std::process::id()));
        let (img_dir, mask_dir) = (dir.join("images"), dir.join("masks"));
        std::fs::create_dir_all(&img_dir).unwrap();
        std::fs::create_dir_all(&mask_dir).unwrap();
        image::RgbImage::from_pixel(40, 20, image::Rgb([200, 100, 0]))
            .save(img_dir.join("a.jpg"))
            .unwrap();
        image::GrayImage::from_fn(40, 20, |x, _| image::Luma([if x < 20 { 0 } else { 2 }]))
            .save(mask_dir.join("a.png"))
            .unwrap();
        let set = SegmentationSet::load_folder(&img_dir, &mask_dir, 3, [10, 20]).unwrap();
        assert_eq!((set.len(), set.size), (1, [10, 20]));
        assert_eq!(&set.mask(0)[..20], &[[0u8; 10], [2u8; 10]].concat()[..]);
        let err = SegmentationSet::load_folder(&img_dir, &mask_dir, 2, [10, 20]).unwrap_err();
        assert!(err.to_string().contains("label 2"), "{err}");
        std::fs::remove_file(mask_dir.join("a.png")).unwrap();
        let err = SegmentationSet::load_folder(&img_dir, &mask_dir, 3, [10, 20]).unwrap_err();
        assert!(
            err.to_string().contains("a.png") && err.to_string().contains("mask"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
