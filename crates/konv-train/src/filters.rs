//! Feature maps, the lecture's first code example: convolve an image with hand-made filters
//! (a vertical line, a horizontal line, Sobel, Laplacian, or any kernel you write) and look
//! at what each one responds to; and the same for a trained network, whose first-layer
//! filters and any named layer's feature maps are drawn as image grids.
//!
//! Sizes follow the lecture's (and Keras') formulas: with `valid` padding the output has
//! `⌊(n − k) / s⌋ + 1` rows, with `same` padding `⌈n / s⌉`, the zeros split as TensorFlow
//! splits them (the odd one at the bottom/right). As in TensorFlow's `tf.nn.conv2d`, the
//! operation is a cross-correlation and a filter sees every channel of an RGB image (the
//! same kernel on each, summed), with pixels scaled to [0, 1].

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use burn::prelude::*;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use image::{DynamicImage, GrayImage, Rgb, RgbImage};
use konv_models::Classifier;

use crate::TrainError;

/// How a convolution treats the image borders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// Zeros around the image so that the output has `⌈n / stride⌉` rows and columns.
    Same,
    /// No padding: the filter stays inside the image, `⌊(n − k) / stride⌋ + 1`.
    Valid,
}

impl FromStr for Padding {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "same" => Ok(Padding::Same),
            "valid" => Ok(Padding::Valid),
            other => Err(format!("padding `{other}`: use same or valid")),
        }
    }
}

impl fmt::Display for Padding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Padding::Same => "same",
            Padding::Valid => "valid",
        })
    }
}

/// Output length of a convolution over `input` pixels with a `kernel`-wide filter; `None`
/// when `valid` padding leaves nothing (the filter is larger than the image).
pub fn output_size(input: usize, kernel: usize, stride: usize, padding: Padding) -> Option<usize> {
    match padding {
        Padding::Same => Some(input.div_ceil(stride)),
        Padding::Valid => (input >= kernel).then(|| (input - kernel) / stride + 1),
    }
}

/// Zeros added `(before, after)` along one axis for `same` padding, TensorFlow's split:
/// the total is `max((out − 1)·s + k − n, 0)`, the extra one after.
pub fn same_padding(input: usize, kernel: usize, stride: usize) -> (usize, usize) {
    let out = input.div_ceil(stride);
    let total = ((out - 1) * stride + kernel).saturating_sub(input);
    (total / 2, total - total / 2)
}

/// A hand-made filter: a named `height × width` kernel, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    /// Name used for the output files.
    pub name: String,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// `height × width` weights, row-major.
    pub weights: Vec<f32>,
}

/// The named filters [`Filter::parse`] knows.
pub const NAMED_FILTERS: &[&str] = &[
    "vertical",
    "horizontal",
    "sobel-x",
    "sobel-y",
    "laplacian",
    "blur",
];

impl Filter {
    /// A filter from rows of weights.
    ///
    /// # Errors
    /// When the rows are empty or of different lengths.
    pub fn from_rows(name: &str, rows: &[Vec<f32>]) -> Result<Self, String> {
        let width = rows.first().map_or(0, Vec::len);
        if width == 0 {
            return Err(format!("filter `{name}` has no weights"));
        }
        if let Some(bad) = rows.iter().position(|r| r.len() != width) {
            return Err(format!(
                "filter `{name}`: row {} has {} weights, row 1 has {width}",
                bad + 1,
                rows[bad].len()
            ));
        }
        Ok(Self {
            name: name.to_string(),
            height: rows.len(),
            width,
            weights: rows.concat(),
        })
    }

    /// The lecture's vertical-line filter: `size × size` zeros with a column of ones in the
    /// middle (`filters[:, 3, :, 0] = 1` for 7×7).
    pub fn vertical(size: usize) -> Self {
        let rows: Vec<Vec<f32>> = (0..size)
            .map(|_| (0..size).map(|c| f32::from(c == size / 2)).collect())
            .collect();
        Self::from_rows("vertical", &rows).expect("a square kernel")
    }

    /// The lecture's horizontal-line filter: a row of ones in the middle.
    pub fn horizontal(size: usize) -> Self {
        let rows: Vec<Vec<f32>> = (0..size)
            .map(|r| vec![f32::from(r == size / 2); size])
            .collect();
        Self::from_rows("horizontal", &rows).expect("a square kernel")
    }

    /// Reads a filter spec: a name ([`NAMED_FILTERS`]; `vertical`, `horizontal` and `blur`
    /// are `size × size`), an inline kernel with rows separated by `;` and weights by `,`
    /// (`1,0,-1;2,0,-2;1,0,-1`, optionally named: `edges=1,0,-1;2,0,-2;1,0,-1`), or
    /// `file:PATH`, a text file with one row per line (weights separated by spaces or
    /// commas; `#` starts a comment).
    ///
    /// # Errors
    /// A one-line message naming the spec (or file) and what is valid.
    pub fn parse(spec: &str, size: usize) -> Result<Self, String> {
        let spec = spec.trim();
        let sobel = [[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]];
        let rows = |a: &[[f32; 3]; 3]| a.iter().map(|r| r.to_vec()).collect::<Vec<_>>();
        match spec {
            "vertical" => return Ok(Self::vertical(size)),
            "horizontal" => return Ok(Self::horizontal(size)),
            "sobel-x" => return Self::from_rows(spec, &rows(&sobel)),
            "sobel-y" => {
                let t: Vec<Vec<f32>> = (0..3)
                    .map(|r| (0..3).map(|c| sobel[c][r]).collect())
                    .collect();
                return Self::from_rows(spec, &t);
            }
            "laplacian" => {
                return Self::from_rows(
                    spec,
                    &rows(&[[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]),
                );
            }
            "blur" => {
                let w = 1.0 / (size * size) as f32;
                return Self::from_rows(spec, &vec![vec![w; size]; size]);
            }
            _ => {}
        }
        if let Some(path) = spec.strip_prefix("file:") {
            return Self::read(Path::new(path));
        }
        let (name, body) = match spec.split_once('=') {
            Some((name, body)) if !name.is_empty() => (name.trim(), body),
            _ => ("custom", spec),
        };
        let looks_inline = body
            .chars()
            .all(|c| c.is_ascii_digit() || " ,;.-+eE".contains(c));
        if !looks_inline || body.trim().is_empty() {
            return Err(format!(
                "filter `{spec}`: use one of {}, an inline kernel such as \
                 `1,0,-1;2,0,-2;1,0,-1` (rows split by `;`), or file:PATH",
                NAMED_FILTERS.join(", ")
            ));
        }
        let rows = body
            .split(';')
            .map(|row| parse_row(row).map_err(|e| format!("filter `{spec}`: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        Self::from_rows(name, &rows)
    }

    /// Reads a kernel file: one row per line, weights separated by spaces or commas.
    ///
    /// # Errors
    /// A missing file or a bad weight, naming the file and line.
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("filter file {}: {e}", path.display()))?;
        let mut rows = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            rows.push(
                parse_row(line)
                    .map_err(|e| format!("filter file {} line {}: {e}", path.display(), i + 1))?,
            );
        }
        let name = path
            .file_stem()
            .map_or("custom".into(), |s| s.to_string_lossy().into_owned());
        Self::from_rows(&name, &rows).map_err(|e| format!("filter file {}: {e}", path.display()))
    }
}

fn parse_row(row: &str) -> Result<Vec<f32>, String> {
    row.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|w| !w.is_empty())
        .map(|w| {
            w.parse::<f32>()
                .map_err(|_| format!("`{w}` is not a number"))
        })
        .collect()
}

/// An image as the filters see it: `[channels, height, width]` in [0, 1], 1 channel for
/// grayscale files and 3 for colour ones.
pub fn load_image(path: &Path, device: &Device) -> Result<Tensor<3>, TrainError> {
    let img = image::open(path).map_err(|e| TrainError::Image {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(image_tensor(&img, device))
}

/// [`load_image`] of an image already in memory.
pub fn image_tensor(img: &DynamicImage, device: &Device) -> Tensor<3> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (channels, values): (usize, Vec<f32>) = if img.color().has_color() {
        let rgb = img.to_rgb8().into_raw();
        let planes = (0..3)
            .flat_map(|c| rgb.iter().skip(c).step_by(3).map(|&p| f32::from(p) / 255.0))
            .collect();
        (3, planes)
    } else {
        let gray = img.to_luma8().into_raw();
        (1, gray.iter().map(|&p| f32::from(p) / 255.0).collect())
    };
    Tensor::from_data(TensorData::new(values, [channels, h, w]), device)
}

/// Convolves `image` (`[channels, h, w]`) with `filter` (the same kernel on every channel,
/// summed): the feature map `[h', w']`.
///
/// # Errors
/// When `valid` padding leaves no output (the filter is larger than the image) or the
/// stride is 0.
pub fn convolve(
    image: Tensor<3>,
    filter: &Filter,
    stride: usize,
    padding: Padding,
) -> Result<Tensor<2>, String> {
    let [channels, h, w] = image.dims();
    if stride == 0 {
        return Err("--stride must be at least 1".into());
    }
    let (out_h, out_w) = (
        output_size(h, filter.height, stride, padding),
        output_size(w, filter.width, stride, padding),
    );
    let (Some(out_h), Some(out_w)) = (out_h, out_w) else {
        return Err(format!(
            "filter `{}` is {}×{}, larger than the {h}×{w} image: use --padding same or a \
             smaller --size",
            filter.name, filter.height, filter.width
        ));
    };
    let pads = match padding {
        Padding::Same => [
            same_padding(h, filter.height, stride),
            same_padding(w, filter.width, stride),
        ],
        Padding::Valid => [(0, 0); 2],
    };
    let device = image.device();
    let kernel: Vec<f32> = filter
        .weights
        .iter()
        .copied()
        .cycle()
        .take(channels * filter.weights.len())
        .collect();
    let weight = Tensor::<4>::from_data(
        TensorData::new(kernel, [1, channels, filter.height, filter.width]),
        &device,
    );
    let options = ConvOptions::new_with_padding([stride; 2], pads, [1, 1], 1);
    let out = conv2d(image.unsqueeze::<4>(), weight, None, options);
    debug_assert_eq!(out.dims(), [1, 1, out_h, out_w]);
    Ok(out.reshape([out_h, out_w]))
}

/// A feature map as an 8-bit image, stretched so that its minimum is black and its maximum
/// white (matplotlib's default scaling); a constant map is mid-gray.
///
/// # Errors
/// A device that failed reading the map back ([`TrainError::Device`]).
pub fn to_gray_image(map: Tensor<2>) -> Result<GrayImage, TrainError> {
    let [h, w] = map.dims();
    let values = crate::engine::read_values::<f32, 2, _>(map)?;
    let (lo, hi) = values
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    let pixels = values
        .iter()
        .map(|&v| {
            if hi > lo {
                (255.0 * (v - lo) / (hi - lo)).round() as u8
            } else {
                128
            }
        })
        .collect();
    Ok(GrayImage::from_raw(w as u32, h as u32, pixels).expect("h × w pixels"))
}

/// Tiles laid out in rows (each row one image and its maps), each cell as large as the
/// largest tile, `gap` white pixels between them.
pub fn sheet(rows: &[Vec<RgbImage>], gap: u32) -> RgbImage {
    let cell_w = rows
        .iter()
        .flatten()
        .map(RgbImage::width)
        .max()
        .unwrap_or(1);
    let cell_h = rows
        .iter()
        .flatten()
        .map(RgbImage::height)
        .max()
        .unwrap_or(1);
    let cols = rows.iter().map(Vec::len).max().unwrap_or(1) as u32;
    let mut out = RgbImage::from_pixel(
        gap + cols * (cell_w + gap),
        gap + rows.len() as u32 * (cell_h + gap),
        Rgb([255, 255, 255]),
    );
    for (r, row) in rows.iter().enumerate() {
        for (c, tile) in row.iter().enumerate() {
            let x = gap + c as u32 * (cell_w + gap);
            let y = gap + r as u32 * (cell_h + gap);
            image::imageops::replace(&mut out, tile, i64::from(x), i64::from(y));
        }
    }
    out
}

/// `tiles` in a square-ish grid (`columns` wide), `gap` white pixels apart.
pub fn grid(tiles: Vec<RgbImage>, columns: usize, gap: u32) -> RgbImage {
    let rows: Vec<Vec<RgbImage>> = tiles
        .chunks(columns.max(1))
        .map(<[RgbImage]>::to_vec)
        .collect();
    sheet(&rows, gap)
}

/// Scales `img` up by an integer factor with nearest neighbour, so small kernels and maps
/// stay crisp.
pub fn upscale(img: &RgbImage, factor: u32) -> RgbImage {
    let f = factor.max(1);
    image::imageops::resize(
        img,
        img.width() * f,
        img.height() * f,
        image::imageops::FilterType::Nearest,
    )
}

/// A network's first-layer filters (`[filters, in_channels, k, k]`) as a grid: RGB tiles
/// for 3 input channels, gray otherwise (the mean over channels), each filter stretched
/// to its own range, scaled up to about 48 pixels.
///
/// # Errors
/// A device that failed reading the weights back ([`TrainError::Device`]).
pub fn filter_grid(weights: Tensor<4>) -> Result<RgbImage, TrainError> {
    let [n, c, kh, kw] = weights.dims();
    let values = crate::engine::read_values::<f32, 4, _>(weights)?;
    let per = c * kh * kw;
    let factor = (48 / kh.max(kw).max(1)).max(1) as u32;
    let tiles = (0..n)
        .map(|f| {
            let w = &values[f * per..(f + 1) * per];
            let (lo, hi) = w
                .iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
                    (lo.min(v), hi.max(v))
                });
            let scale = |v: f32| {
                if hi > lo {
                    (255.0 * (v - lo) / (hi - lo)).round() as u8
                } else {
                    128
                }
            };
            let tile = RgbImage::from_fn(kw as u32, kh as u32, |x, y| {
                let at = |ch: usize| w[ch * kh * kw + y as usize * kw + x as usize];
                if c == 3 {
                    Rgb([scale(at(0)), scale(at(1)), scale(at(2))])
                } else {
                    let v = scale((0..c).map(at).sum::<f32>() / c as f32);
                    Rgb([v, v, v])
                }
            });
            upscale(&tile, factor)
        })
        .collect();
    Ok(grid(tiles, (n as f64).sqrt().ceil() as usize, 2))
}

/// The channels of one feature map (`[channels, h, w]`) as a grid of gray tiles, at most
/// `max_channels` of them, each stretched to its own range and scaled up to about 64 pixels.
///
/// # Errors
/// A device that failed reading the maps back ([`TrainError::Device`]).
pub fn feature_map_grid(maps: Tensor<3>, max_channels: usize) -> Result<RgbImage, TrainError> {
    let [c, h, w] = maps.dims();
    let shown = c.min(max_channels.max(1));
    let factor = (64 / h.max(w).max(1)).max(1) as u32;
    let tiles = (0..shown)
        .map(|i| {
            let map = maps.clone().slice([i..i + 1, 0..h, 0..w]).reshape([h, w]);
            let gray = DynamicImage::ImageLuma8(to_gray_image(map)?).to_rgb8();
            Ok(upscale(&gray, factor))
        })
        .collect::<Result<_, TrainError>>()?;
    Ok(grid(tiles, (shown as f64).sqrt().ceil() as usize, 2))
}

/// The feature maps of the layer named `layer` (see [`Classifier::feature_maps`]) for one
/// input `[1, c, h, w]`: `[channels, h', w']`.
///
/// # Errors
/// When the model has no such layer; the message lists the names it has.
pub fn layer_maps(model: &Classifier, input: Tensor<4>, layer: &str) -> Result<Tensor<3>, String> {
    let maps = model.feature_maps(input);
    let names: Vec<&str> = maps.iter().map(|(name, _)| name.as_str()).collect();
    match maps.iter().find(|(name, _)| name == layer) {
        Some((_, map)) => {
            let [_, c, h, w] = map.dims();
            Ok(map
                .clone()
                .slice([0..1, 0..c, 0..h, 0..w])
                .reshape([c, h, w]))
        }
        None => Err(format!(
            "--layer {layer}: the model has no such layer; its layers are {}",
            names.join(", ")
        )),
    }
}

/// One written file: where, and what it shows.
#[derive(Debug, Clone)]
pub struct Written {
    /// The PNG.
    pub path: PathBuf,
    /// Width and height.
    pub size: [u32; 2],
    /// A few words.
    pub what: String,
}

/// Saves `img` as a PNG at `path`.
pub fn save_png(img: &RgbImage, path: &Path) -> Result<(), TrainError> {
    img.save(path).map_err(|e| TrainError::Image {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Convolves every image with every filter and writes `STEM-FILTER.png` for each feature
/// map, and `sheet.png` (one row per image: the image, then its maps) into `out`.
///
/// # Errors
/// A missing or unreadable image, an output folder that cannot be written, or a filter
/// larger than an image with `valid` padding.
pub fn write_feature_maps(
    images: &[PathBuf],
    filters: &[Filter],
    stride: usize,
    padding: Padding,
    out: &Path,
    device: &Device,
) -> Result<Vec<Written>, TrainError> {
    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    let mut written = Vec::new();
    let mut rows = Vec::new();
    for path in images {
        let dynamic = image::open(path).map_err(|e| TrainError::Image {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let tensor = image_tensor(&dynamic, device);
        let stem = path
            .file_stem()
            .map_or("image".into(), |s| s.to_string_lossy().into_owned());
        let mut row = vec![dynamic.to_rgb8()];
        for filter in filters {
            let map = convolve(tensor.clone(), filter, stride, padding).map_err(|reason| {
                TrainError::Image {
                    path: path.to_path_buf(),
                    reason,
                }
            })?;
            let img = DynamicImage::ImageLuma8(to_gray_image(map)?).to_rgb8();
            let file = out.join(format!("{stem}-{}.png", filter.name));
            save_png(&img, &file)?;
            written.push(Written {
                path: file,
                size: [img.width(), img.height()],
                what: format!(
                    "{} filter {}×{}, {padding} padding, stride {stride}",
                    filter.name, filter.height, filter.width
                ),
            });
            row.push(img);
        }
        rows.push(row);
    }
    let sheet_img = sheet(&rows, 4);
    let file = out.join("sheet.png");
    save_png(&sheet_img, &file)?;
    written.push(Written {
        path: file,
        size: [sheet_img.width(), sheet_img.height()],
        what: "each image, then its feature maps".into(),
    });
    Ok(written)
}

/// Draws a trained network: `filters.png` (its first-layer filters) and, for each input
/// (`(name, [1, c, h, w])`, already preprocessed as the model expects) and each of
/// `layers`, `NAME-LAYER.png` with that layer's feature maps (at most `max_channels`).
///
/// # Errors
/// An unknown layer (listing the model's layers) or an output that cannot be written.
pub fn write_model_views(
    model: &Classifier,
    inputs: &[(String, Tensor<4>)],
    layers: &[String],
    max_channels: usize,
    out: &Path,
) -> Result<Vec<Written>, TrainError> {
    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    let weights = model.first_conv_weights();
    let [n, c, kh, kw] = weights.dims();
    let img = filter_grid(weights)?;
    let file = out.join("filters.png");
    save_png(&img, &file)?;
    let mut written = vec![Written {
        path: file,
        size: [img.width(), img.height()],
        what: format!("first layer: {n} filters {kh}×{kw} over {c} channel(s)"),
    }];
    for (name, input) in inputs {
        for layer in layers {
            let maps = layer_maps(model, input.clone(), layer).map_err(TrainError::Config)?;
            let [channels, h, w] = maps.dims();
            let img = feature_map_grid(maps, max_channels)?;
            let file = out.join(format!("{name}-{layer}.png"));
            save_png(&img, &file)?;
            written.push(Written {
                path: file,
                size: [img.width(), img.height()],
                what: format!(
                    "{layer}: {} of {channels} feature maps {h}×{w}",
                    channels.min(max_channels)
                ),
            });
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor3(values: &[f32], dims: [usize; 3]) -> Tensor<3> {
        Tensor::from_data(TensorData::new(values.to_vec(), dims), &Device::flex())
    }

    fn values(t: Tensor<2>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn output_sizes_follow_the_formulas() {
        // valid: ⌊(n − k) / s⌋ + 1; same: ⌈n / s⌉.
        assert_eq!(output_size(28, 7, 1, Padding::Valid), Some(22));
        assert_eq!(output_size(28, 7, 2, Padding::Valid), Some(11));
        assert_eq!(output_size(28, 7, 1, Padding::Same), Some(28));
        assert_eq!(output_size(28, 7, 3, Padding::Same), Some(10));
        assert_eq!(output_size(5, 7, 1, Padding::Valid), None);
        // TensorFlow's split: the odd zero goes after.
        assert_eq!(same_padding(28, 7, 1), (3, 3));
        assert_eq!(same_padding(6, 2, 1), (0, 1));
        assert_eq!(same_padding(7, 3, 2), (1, 1));
        assert_eq!(same_padding(8, 3, 2), (0, 1));

        let image = tensor3(&vec![0.5; 3 * 13 * 17], [3, 13, 17]);
        for (stride, padding) in [
            (1, Padding::Same),
            (2, Padding::Same),
            (1, Padding::Valid),
            (3, Padding::Valid),
        ] {
            for size in [3, 4, 7] {
                let f = Filter::vertical(size);
                let map = convolve(image.clone(), &f, stride, padding).unwrap();
                assert_eq!(
                    map.dims(),
                    [
                        output_size(13, size, stride, padding).unwrap(),
                        output_size(17, size, stride, padding).unwrap()
                    ],
                    "size {size}, stride {stride}, {padding}"
                );
            }
        }
        let err = convolve(
            tensor3(&[0.0; 16], [1, 4, 4]),
            &Filter::vertical(7),
            1,
            Padding::Valid,
        )
        .unwrap_err();
        assert!(err.contains("larger than the 4×4 image"), "{err}");
    }

    #[test]
    fn a_small_case_computed_by_hand() {
        // 4×4 image, 3×3 kernel [[1,0,-1],[2,0,-2],[1,0,-1]] (cross-correlation).
        let img: Vec<f32> = (1..=16).map(|v| v as f32).collect();
        let image = tensor3(&img, [1, 4, 4]);
        let f = Filter::parse("1,0,-1;2,0,-2;1,0,-1", 3).unwrap();
        // Each row of the image increases by 1 per column, so every full window gives
        // (1 + 2 + 1) · (x − (x + 2)) = −8.
        assert_eq!(
            values(convolve(image.clone(), &f, 1, Padding::Valid).unwrap()),
            vec![-8.0; 4]
        );
        // same, stride 1: one zero on each side; every output checked against the sum.
        let same = values(convolve(image.clone(), &f, 1, Padding::Same).unwrap());
        let at = |r: isize, c: isize| -> f32 {
            if (0..4).contains(&r) && (0..4).contains(&c) {
                img[(r * 4 + c) as usize]
            } else {
                0.0
            }
        };
        let k = [[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]];
        for r in 0..4 {
            for c in 0..4 {
                let mut want = 0.0;
                for (i, row) in k.iter().enumerate() {
                    for (j, w) in row.iter().enumerate() {
                        want += w * at(r + i as isize - 1, c + j as isize - 1);
                    }
                }
                assert_eq!(same[(r * 4 + c) as usize], want, "({r}, {c})");
            }
        }
        assert_eq!(same[0], -(2.0 * 2.0 + 6.0)); // 0 − (2·2 + 1·6)
        // Stride 2 with same padding on 4×4 and a 3×3 kernel: pads (0, 1), output 2×2 at
        // window corners (0,0), (0,2), (2,0), (2,2).
        let strided = values(convolve(image.clone(), &f, 2, Padding::Same).unwrap());
        // (0,0): −8; (0,2): 3 + 2·7 + 11 = 28 (column 4 is padding); (2,0): (9 − 11) +
        // 2·(13 − 15) = −6 (row 4 is padding); (2,2): 11 + 2·15 = 41.
        assert_eq!(strided, vec![-8.0, 28.0, -6.0, 41.0]);
    }

    #[test]
    fn filter_specs() {
        let v = Filter::parse("vertical", 7).unwrap();
        assert_eq!((v.height, v.width), (7, 7));
        assert_eq!(v.weights.iter().sum::<f32>(), 7.0);
        assert!((0..7).all(|r| v.weights[r * 7 + 3] == 1.0));
        let h = Filter::parse("horizontal", 5).unwrap();
        assert!((0..5).all(|c| h.weights[2 * 5 + c] == 1.0));
        let sy = Filter::parse("sobel-y", 3).unwrap();
        assert_eq!(
            sy.weights,
            vec![-1.0, -2.0, -1.0, 0.0, 0.0, 0.0, 1.0, 2.0, 1.0]
        );
        let named = Filter::parse("edge=1 -1; -1 1", 3).unwrap();
        assert_eq!(
            (named.name.as_str(), named.height, named.width),
            ("edge", 2, 2)
        );
        assert_eq!(named.weights, vec![1.0, -1.0, -1.0, 1.0]);
        let path = std::env::temp_dir().join(format!("konv-kernel-{}.txt", std::process::id()));
        std::fs::write(&path, "# a 2x3 kernel\n1, 2, 3\n4 5 6\n").unwrap();
        let f = Filter::parse(&format!("file:{}", path.display()), 3).unwrap();
        assert_eq!((f.height, f.width), (2, 3));
        assert_eq!(f.weights, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        std::fs::write(&path, "1 2\n3\n").unwrap();
        let err = Filter::parse(&format!("file:{}", path.display()), 3).unwrap_err();
        assert!(err.contains("row 2 has 1 weights"), "{err}");
        std::fs::remove_file(&path).ok();
        let err = Filter::parse("diagonal", 3).unwrap_err();
        assert!(err.contains("vertical, horizontal"), "{err}");
        let err = Filter::parse("1,x;2,3", 3).unwrap_err();
        assert!(err.contains("filter `1,x;2,3`"), "{err}");
        assert!(
            Filter::parse("file:/nonexistent/k.txt", 3)
                .unwrap_err()
                .contains("/nonexistent/k.txt")
        );
    }

    #[test]
    fn rgb_images_sum_the_kernel_over_channels() {
        let img = image::RgbImage::from_fn(5, 4, |x, y| {
            image::Rgb([(x * 10) as u8, (y * 20) as u8, 255])
        });
        let t = image_tensor(&DynamicImage::ImageRgb8(img), &Device::flex());
        assert_eq!(t.dims(), [3, 4, 5]);
        let one = Filter::parse("1", 1).unwrap();
        let map = values(convolve(t, &one, 1, Padding::Valid).unwrap());
        // Pixel (x=2, y=1): (20 + 20 + 255) / 255.
        assert!((map[5 + 2] - 295.0 / 255.0).abs() < 1e-6);
        let gray = to_gray_image(Tensor::from_data(
            TensorData::new(vec![-1.0f32, 0.0, 3.0, 1.0], [2, 2]),
            &Device::flex(),
        ))
        .unwrap();
        assert_eq!(gray.into_raw(), vec![0, 64, 255, 128]);
    }

    #[test]
    fn feature_maps_of_named_layers() {
        let device = Device::flex();
        let model = konv_models::build_for("resnet20", 10, 1, &device).unwrap();
        let input = Tensor::<4>::ones([1, 1, 28, 28], &device);
        let maps = layer_maps(&model, input.clone(), "layer2.0").unwrap();
        assert_eq!(maps.dims(), [32, 14, 14]);
        let err = layer_maps(&model, input, "layer9").unwrap_err();
        assert!(err.contains("layer1.0, layer1.1"), "{err}");
        let grid = filter_grid(model.first_conv_weights()).unwrap();
        // 16 filters of 3×3 scaled ×16, 4 per row, 2-pixel gaps.
        assert_eq!(grid.dimensions(), (2 + 4 * (48 + 2), 2 + 4 * (48 + 2)));
    }
}
