//! Classification + localization data: one item per image with its class and bounding box.
//!
//! - [`LocalizationSet::generate`] places each item of a 28×28 set (Fashion-MNIST, MNIST) at
//!   a random scale and position on a larger black canvas (64×64 by default), optionally with
//!   Gaussian noise and clutter (fragments of other items, as in "cluttered MNIST"). The box
//!   is the tight box of the item's pixels on the canvas. Reproducible for a seed.
//! - [`LocalizationSet::load_folder`] reads real labelled images: a folder of JPEG/PNG files
//!   and a CSV (`file,label,x0,y0,x1,y1`) or JSON (`[{"file", "label", "box": [x0, y0, x1,
//!   y1]}]`) annotation file, boxes in pixels of the original image.
//!
//! Boxes are `[x0, y0, x1, y1]` in canvas pixels, edges (not pixel centres): an item whose
//! pixels occupy columns 3..=10 has `x0 = 3`, `x1 = 11`.

use std::path::{Path, PathBuf};

use image::GrayImage;
use image::imageops::FilterType;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::Deserialize;

use crate::mnist::{DataError, ImageSet};

/// How [`LocalizationSet::generate`] draws its canvases.
#[derive(Debug, Clone, PartialEq)]
pub struct CanvasConfig {
    /// Canvas side in pixels.
    pub size: usize,
    /// Smallest and largest scale of the 28×28 item (1.0 keeps it 28 pixels wide).
    pub scale: (f32, f32),
    /// Standard deviation of Gaussian pixel noise, as a fraction of white (0 for none).
    pub noise: f32,
    /// Fragments of other items scattered on the canvas before the item is drawn.
    pub clutter: usize,
    /// Seed of every random draw.
    pub seed: u64,
}

impl Default for CanvasConfig {
    fn default() -> Self {
        Self {
            size: 64,
            scale: (1.0, 2.0),
            noise: 0.0,
            clutter: 0,
            seed: 0,
        }
    }
}

impl CanvasConfig {
    /// Checks the settings: the largest item must fit on the canvas.
    ///
    /// # Errors
    /// A one-line description of the first bad setting.
    pub fn validate(&self, item: usize) -> Result<(), String> {
        check_scale(self.scale, item, self.size)?;
        if !(0.0..=1.0).contains(&self.noise) {
            return Err(format!(
                "noise {}: give a fraction of white in 0..1",
                self.noise
            ));
        }
        Ok(())
    }
}

/// Images with one item each, its class and its box.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalizationSet {
    /// Image height and width.
    pub size: [usize; 2],
    /// `len × height × width` 8-bit gray pixels, row-major.
    pub pixels: Vec<u8>,
    /// Class of each image.
    pub labels: Vec<u8>,
    /// `[x0, y0, x1, y1]` of each image's item, in pixels.
    pub boxes: Vec<[f32; 4]>,
}

impl LocalizationSet {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Pixels of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.size[0] * self.size[1];
        &self.pixels[i * n..(i + 1) * n]
    }

    /// The images at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Self {
        Self {
            size: self.size,
            pixels: indices
                .iter()
                .flat_map(|&i| self.image(i).to_vec())
                .collect(),
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            boxes: indices.iter().map(|&i| self.boxes[i]).collect(),
        }
    }

    /// Places every item of `items` on its own canvas (image `i` holds item `i`).
    ///
    /// # Errors
    /// When the settings do not fit ([`CanvasConfig::validate`]).
    pub fn generate(items: &ImageSet, config: &CanvasConfig) -> Result<Self, String> {
        let (rows, cols) = (items.images.rows, items.images.cols);
        config.validate(rows.max(cols))?;
        let side = config.size;
        let mut rng = StdRng::seed_from_u64(config.seed);
        let mut pixels = Vec::with_capacity(items.len() * side * side);
        let mut boxes = Vec::with_capacity(items.len());
        for i in 0..items.len() {
            let mut canvas = vec![0u8; side * side];
            for _ in 0..config.clutter {
                let other = rng.random_range(0..items.len());
                scatter_fragment(
                    &mut canvas,
                    side,
                    items.images.image(other),
                    rows,
                    cols,
                    &mut rng,
                );
            }
            let scale = rng.random_range(config.scale.0..=config.scale.1);
            let (h, w) = (
                ((rows as f32 * scale).round() as usize).clamp(1, side),
                ((cols as f32 * scale).round() as usize).clamp(1, side),
            );
            let item = resize(items.images.image(i), rows, cols, h, w);
            let (y, x) = (
                rng.random_range(0..=side - h),
                rng.random_range(0..=side - w),
            );
            let mut tight = [usize::MAX, usize::MAX, 0, 0];
            for r in 0..h {
                for c in 0..w {
                    let v = item[r * w + c];
                    if v == 0 {
                        continue;
                    }
                    let p = &mut canvas[(y + r) * side + x + c];
                    *p = (*p).max(v);
                    tight = [
                        tight[0].min(x + c),
                        tight[1].min(y + r),
                        tight[2].max(x + c + 1),
                        tight[3].max(y + r + 1),
                    ];
                }
            }
            if tight[0] == usize::MAX {
                // A blank item: its box is where it was placed.
                tight = [x, y, x + w, y + h];
            }
            if config.noise > 0.0 {
                add_noise(&mut canvas, config.noise, &mut rng);
            }
            pixels.extend_from_slice(&canvas);
            boxes.push(tight.map(|v| v as f32));
        }
        Ok(Self {
            size: [side, side],
            pixels,
            labels: items.labels.clone(),
            boxes,
        })
    }

    /// Reads real labelled images: every annotated file of `dir`, converted to gray and
    /// resized to `size` (boxes scaled with it). `annotations` is a `.csv` (`file,label,x0,
    /// y0,x1,y1`, an optional header line) or a `.json` list of `{"file", "label", "box"}`;
    /// labels are class indices or names from `class_names`.
    ///
    /// # Errors
    /// An unreadable file, an unknown class, or a box outside its image, naming the file
    /// (and line).
    pub fn load_folder(
        dir: &Path,
        annotations: &Path,
        class_names: &[String],
        size: [usize; 2],
    ) -> Result<Self, DataError> {
        let bad = |reason: String| DataError::Invalid {
            path: annotations.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(annotations).map_err(|e| DataError::Io {
            path: annotations.to_path_buf(),
            source: e,
        })?;
        let entries = if annotations.extension().is_some_and(|e| e == "json") {
            serde_json::from_str::<Vec<JsonEntry>>(&text)
                .map_err(|e| {
                    bad(format!(
                        "not a JSON list of {{\"file\", \"label\", \"box\"}}: {e}"
                    ))
                })?
                .into_iter()
                .map(|e| (e.file, e.label.to_string(), e.bbox))
                .collect::<Vec<_>>()
        } else {
            parse_csv(&text).map_err(bad)?
        };
        let mut set = Self {
            size,
            pixels: Vec::new(),
            labels: Vec::new(),
            boxes: Vec::new(),
        };
        for (n, (file, label, [x0, y0, x1, y1])) in entries.into_iter().enumerate() {
            let label = parse_label(&label, class_names)
                .map_err(|reason| bad(format!("entry {}: {reason}", n + 1)))?;
            let path: PathBuf = dir.join(&file);
            let img = image::open(&path).map_err(|e| DataError::Invalid {
                path: path.clone(),
                reason: format!("cannot read image ({e})"),
            })?;
            let (w, h) = (img.width() as f32, img.height() as f32);
            if !(0.0 <= x0 && x0 < x1 && x1 <= w && 0.0 <= y0 && y0 < y1 && y1 <= h) {
                return Err(bad(format!(
                    "entry {} ({file}): box [{x0}, {y0}, {x1}, {y1}] is not inside the {w}×{h} image",
                    n + 1
                )));
            }
            let gray = img
                .resize_exact(size[1] as u32, size[0] as u32, FilterType::Triangle)
                .into_luma8();
            let (sx, sy) = (size[1] as f32 / w, size[0] as f32 / h);
            set.pixels.extend_from_slice(gray.as_raw());
            set.labels.push(label);
            set.boxes.push([x0 * sx, y0 * sy, x1 * sx, y1 * sy]);
        }
        if set.is_empty() {
            return Err(bad("no annotated images".into()));
        }
        Ok(set)
    }
}

#[derive(Deserialize)]
struct JsonEntry {
    file: String,
    label: serde_json::Value,
    #[serde(rename = "box")]
    bbox: [f32; 4],
}

type Entry = (String, String, [f32; 4]);

fn parse_csv(text: &str) -> Result<Vec<Entry>, String> {
    let mut entries = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || (i == 0 && line.starts_with("file")) {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let coords: Option<Vec<f32>> = fields
            .get(2..6)
            .and_then(|c| c.iter().map(|v| v.parse().ok()).collect());
        match (fields.len(), coords) {
            (6, Some(c)) => entries.push((
                fields[0].to_string(),
                fields[1].trim_matches('"').to_string(),
                [c[0], c[1], c[2], c[3]],
            )),
            _ => {
                return Err(format!(
                    "line {}: expected file,label,x0,y0,x1,y1 with numbers for the box, got `{line}`",
                    i + 1
                ));
            }
        }
    }
    Ok(entries)
}

fn parse_label(label: &str, class_names: &[String]) -> Result<u8, String> {
    let label = label.trim_matches('"');
    if let Some(i) = class_names.iter().position(|c| c == label) {
        return Ok(i as u8);
    }
    match label.parse::<usize>() {
        Ok(i) if i < class_names.len() => Ok(i as u8),
        _ => Err(format!(
            "label `{label}` is neither a class index below {} nor one of {}",
            class_names.len(),
            class_names.join(", ")
        )),
    }
}

/// Bilinear resize of a `rows × cols` 8-bit image to `h × w`.
/// Checks an item scale range for `item`-pixel items on a `size`-pixel canvas.
pub(crate) fn check_scale(scale: (f32, f32), item: usize, size: usize) -> Result<(), String> {
    let (lo, hi) = scale;
    if !(lo > 0.0 && lo <= hi && hi.is_finite()) {
        return Err(format!(
            "scale {lo}..{hi}: give 0 < smallest ≤ largest, e.g. 1.0..2.0"
        ));
    }
    let largest = (item as f32 * hi).round() as usize;
    if largest > size {
        return Err(format!(
            "a {item}-pixel item at scale {hi} is {largest} pixels, larger than the {size}×{size} canvas"
        ));
    }
    Ok(())
}

/// Bilinear resize of a `rows × cols` 8-bit item to `h × w`.
pub(crate) fn resize(pixels: &[u8], rows: usize, cols: usize, h: usize, w: usize) -> Vec<u8> {
    if (h, w) == (rows, cols) {
        return pixels.to_vec();
    }
    let img = GrayImage::from_raw(cols as u32, rows as u32, pixels.to_vec()).expect("rows × cols");
    image::imageops::resize(&img, w as u32, h as u32, FilterType::Triangle).into_raw()
}

/// Pastes a random `rows/3`-square piece of `item` at a random place (lighter pixel wins).
fn scatter_fragment(
    canvas: &mut [u8],
    side: usize,
    item: &[u8],
    rows: usize,
    cols: usize,
    rng: &mut StdRng,
) {
    let f = (rows.min(cols) / 3).max(2);
    let (sy, sx) = (
        rng.random_range(0..=rows - f),
        rng.random_range(0..=cols - f),
    );
    let (y, x) = (
        rng.random_range(0..=side - f),
        rng.random_range(0..=side - f),
    );
    for r in 0..f {
        for c in 0..f {
            let v = item[(sy + r) * cols + sx + c];
            let p = &mut canvas[(y + r) * side + x + c];
            *p = (*p).max(v);
        }
    }
}

/// Adds Gaussian noise (Box–Muller) of standard deviation `sigma` × 255, clamped.
fn add_noise(canvas: &mut [u8], sigma: f32, rng: &mut StdRng) {
    for p in canvas.iter_mut() {
        let (u1, u2): (f32, f32) = (rng.random::<f32>().max(f32::MIN_POSITIVE), rng.random());
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos();
        *p = (f32::from(*p) + z * sigma * 255.0)
            .round()
            .clamp(0.0, 255.0) as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IdxImages;

    /// Three 28×28 items: a filled 10×6 block at a known place, and two others.
    fn items() -> ImageSet {
        let mut pixels = vec![0u8; 3 * 28 * 28];
        for r in 5..15 {
            for c in 8..14 {
                pixels[r * 28 + c] = 200;
            }
        }
        for (i, p) in pixels.iter_mut().enumerate().skip(28 * 28) {
            *p = if (i / 28) % 2 == 0 && i % 3 == 0 {
                150
            } else {
                0
            };
        }
        ImageSet {
            images: IdxImages {
                count: 3,
                channels: 1,
                rows: 28,
                cols: 28,
                pixels,
            },
            labels: vec![4, 1, 7],
        }
    }

    #[test]
    fn boxes_agree_with_the_pixels_and_seeds_reproduce() {
        let config = CanvasConfig {
            seed: 7,
            ..CanvasConfig::default()
        };
        let set = LocalizationSet::generate(&items(), &config).unwrap();
        assert_eq!(set.len(), 3);
        assert_eq!(set.labels, vec![4, 1, 7]);
        assert_eq!(set, LocalizationSet::generate(&items(), &config).unwrap());
        let other = CanvasConfig {
            seed: 8,
            ..config.clone()
        };
        assert_ne!(
            set.boxes,
            LocalizationSet::generate(&items(), &other).unwrap().boxes
        );
        for i in 0..set.len() {
            let [x0, y0, x1, y1] = set.boxes[i].map(|v| v as usize);
            let img = set.image(i);
            let lit = |r: usize, c: usize| img[r * 64 + c] > 0;
            // Nothing lit outside the box, and every edge of the box touches a lit pixel.
            for r in 0..64 {
                for c in 0..64 {
                    if lit(r, c) {
                        assert!(
                            (x0..x1).contains(&c) && (y0..y1).contains(&r),
                            "image {i} ({r}, {c})"
                        );
                    }
                }
            }
            assert!((y0..y1).any(|r| lit(r, x0)) && (y0..y1).any(|r| lit(r, x1 - 1)));
            assert!((x0..x1).any(|c| lit(y0, c)) && (x0..x1).any(|c| lit(y1 - 1, c)));
        }
        // The block is 10 rows × 6 columns at scale 1..2: its box is that shape, scaled.
        let [x0, y0, x1, y1] = set.boxes[0];
        let (h, w) = (y1 - y0, x1 - x0);
        assert!(
            (10.0..=21.0).contains(&h) && (6.0..=13.0).contains(&w),
            "{h}×{w}"
        );
        assert!((h / w - 10.0 / 6.0).abs() < 0.35, "{h}×{w}");
    }

    #[test]
    fn scale_one_keeps_the_item_and_settings_are_checked() {
        let config = CanvasConfig {
            scale: (1.0, 1.0),
            seed: 3,
            ..CanvasConfig::default()
        };
        let set = LocalizationSet::generate(&items(), &config).unwrap();
        let [x0, y0, x1, y1] = set.boxes[0];
        assert_eq!((x1 - x0, y1 - y0), (6.0, 10.0));
        // The block's pixels are copied exactly.
        assert_eq!(set.image(0)[y0 as usize * 64 + x0 as usize], 200);
        let too_big = CanvasConfig {
            scale: (1.0, 3.0),
            ..CanvasConfig::default()
        };
        assert!(
            LocalizationSet::generate(&items(), &too_big)
                .unwrap_err()
                .contains("larger than the 64×64 canvas")
        );
        let backwards = CanvasConfig {
            scale: (2.0, 1.0),
            ..CanvasConfig::default()
        };
        assert!(backwards.validate(28).is_err());
        // Noise and clutter leave the labels and boxes' definition alone.
        let noisy = CanvasConfig {
            noise: 0.1,
            clutter: 4,
            ..config
        };
        let set2 = LocalizationSet::generate(&items(), &noisy).unwrap();
        assert_eq!(set2.labels, set.labels);
        assert_ne!(set2.pixels, set.pixels);
    }

    #[test]
    fn real_folders_with_csv_or_json_boxes() {
        let dir = std::env::temp_dir().join(format!("konv-loc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        image::RgbImage::from_pixel(100, 50, image::Rgb([10, 20, 30]))
            .save(dir.join("a.png"))
            .unwrap();
        let names: Vec<String> = ["cat", "dog"].map(String::from).to_vec();
        std::fs::write(
            dir.join("boxes.csv"),
            "file,label,x0,y0,x1,y1\na.png,dog,10,5,60,45\n",
        )
        .unwrap();
        let set =
            LocalizationSet::load_folder(&dir, &dir.join("boxes.csv"), &names, [32, 32]).unwrap();
        assert_eq!(set.labels, vec![1]);
        for (got, want) in set.boxes[0].iter().zip([3.2, 3.2, 19.2, 28.8]) {
            assert!((got - want).abs() < 1e-5, "{:?}", set.boxes[0]);
        }
        assert_eq!(set.pixels.len(), 32 * 32);
        std::fs::write(
            dir.join("boxes.json"),
            r#"[{"file": "a.png", "label": 0, "box": [0, 0, 100, 50]}]"#,
        )
        .unwrap();
        let set =
            LocalizationSet::load_folder(&dir, &dir.join("boxes.json"), &names, [32, 32]).unwrap();
        assert_eq!((set.labels[0], set.boxes[0]), (0, [0.0, 0.0, 32.0, 32.0]));
        for (text, needle) in [
            ("a.png,bird,1,1,2,2", "label `bird`"),
            ("a.png,0,1,1,200,2", "not inside the 100×50 image"),
            ("a.png,0,1,1", "expected file,label,x0,y0,x1,y1"),
            ("b.png,0,1,1,2,2", "b.png"),
        ] {
            std::fs::write(dir.join("bad.csv"), text).unwrap();
            let err = LocalizationSet::load_folder(&dir, &dir.join("bad.csv"), &names, [32, 32])
                .unwrap_err();
            assert!(err.to_string().contains(needle), "{err}");
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
