//! Predicting the class of image files.

use std::path::Path;

use burn::prelude::*;
use burn::tensor::activation::softmax;
use image::imageops::FilterType;
use konv_models::Classifier;
use konv_models::preprocess::Preprocess;

use crate::TrainError;
use crate::data::Normalize;

/// Reads an image file (PNG or JPEG), converts it to grayscale and resizes it to
/// `height × width`. Returns 8-bit pixels, row-major.
pub fn load_grayscale(path: &Path, height: usize, width: usize) -> Result<Vec<u8>, TrainError> {
    Ok(grayscale(&open_image(path)?, height, width))
}

/// Opens an image file (PNG or JPEG); an unreadable file, or one cut short (a JPEG
/// without its end marker, a PNG without `IEND`, which decoders fill in silently), is an
/// error naming it.
pub fn open_image(path: &Path) -> Result<image::DynamicImage, TrainError> {
    use konv_datasets::folder::FolderError;
    match konv_datasets::folder::open_image(path, false) {
        Ok((img, _)) => Ok(img),
        Err(FolderError::BadImage { path, reason }) => Err(TrainError::Image { path, reason }),
        Err(FolderError::Io { path, source }) => Err(TrainError::io(&path, source)),
        Err(other) => Err(TrainError::Image {
            path: path.to_path_buf(),
            reason: other.to_string(),
        }),
    }
}

/// `img` in grayscale, resized to `height × width`: 8-bit pixels, row-major.
pub fn grayscale(img: &image::DynamicImage, height: usize, width: usize) -> Vec<u8> {
    img.resize_exact(width as u32, height as u32, FilterType::Triangle)
        .into_luma8()
        .into_raw()
}

/// The input of a dense-task model (localize, segment, detect) for one image file: the file
/// opened once, and the `[1, 1, height, width]` tensor of its grayscale pixels (inverted
/// when asked), standardized with `normalize`, on `device`.
pub fn load_input(
    path: &Path,
    size: [usize; 2],
    invert: bool,
    normalize: Normalize,
    device: &Device,
) -> Result<(image::DynamicImage, Tensor<4>), TrainError> {
    let img = open_image(path)?;
    let [h, w] = size;
    let values: Vec<f32> = grayscale(&img, h, w)
        .into_iter()
        .map(|p| normalize.apply(if invert { 255 - p } else { p }))
        .collect();
    let x = Tensor::<4>::from_data(TensorData::new(values, [1, 1, h, w]), device);
    Ok((img, x))
}

/// Class probabilities of one image (pixels as [`load_grayscale`] gives them), sorted by
/// probability, highest first: `(class index, probability)`.
///
/// # Errors
/// A device that failed reading the probabilities back ([`TrainError::Device`]).
pub fn classify(
    model: &Classifier,
    pixels: &[u8],
    size: [usize; 2],
    normalize: Normalize,
) -> Result<Vec<(usize, f32)>, TrainError> {
    let device = crate::model::device_of(model);
    let input: Vec<f32> = pixels.iter().map(|&p| normalize.apply(p)).collect();
    let x = Tensor::<4>::from_data(TensorData::new(input, [1, 1, size[0], size[1]]), &device);
    classify_tensor(model, x)
}

/// Reads an image file and applies a model's [`Preprocess`]: resize so that the shorter side
/// is `resize` (bilinear), center-crop, scale to [0, 1], normalize per channel. Returns the
/// `[1, channels, height, width]` input.
pub fn load_preprocessed(
    path: &Path,
    pre: &Preprocess,
    device: &Device,
) -> Result<Tensor<4>, TrainError> {
    use konv_datasets::folder::{planes, resize_center_crop};
    let [ch, cw] = pre.crop;
    let cropped = resize_center_crop(&open_image(path)?, pre.resize, pre.crop);
    let plane = ch * cw;
    let values: Vec<f32> = planes(&cropped, pre.channels)
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let c = i / plane;
            (p as f32 / 255.0 - pre.mean[c]) / pre.std[c]
        })
        .collect();
    Ok(Tensor::from_data(
        TensorData::new(values, [1, pre.channels, ch, cw]),
        device,
    ))
}

/// Class probabilities of a preprocessed `[1, c, h, w]` input, highest first.
///
/// # Errors
/// A device that failed reading the probabilities back ([`TrainError::Device`]).
pub fn classify_tensor(model: &Classifier, x: Tensor<4>) -> Result<Vec<(usize, f32)>, TrainError> {
    let probs = crate::engine::read_values::<f32, 2, _>(softmax(model.forward(x), 1))?;
    let mut ranked: Vec<(usize, f32)> = probs.into_iter().enumerate().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(ranked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imagenet_preprocessing_resizes_crops_and_normalizes() {
        let path = std::env::temp_dir().join(format!("konv-pre-{}.png", std::process::id()));
        image::RgbImage::from_pixel(300, 200, image::Rgb([255, 128, 0]))
            .save(&path)
            .unwrap();
        let pre = Preprocess::imagenet(256, 224);
        let x = load_preprocessed(&path, &pre, &Device::flex()).unwrap();
        assert_eq!(x.dims(), [1, 3, 224, 224]);
        let values = x.into_data().try_to_vec::<f32>().unwrap();
        let plane = 224 * 224;
        for (c, v) in [255.0f32, 128.0, 0.0].iter().enumerate() {
            let want = (v / 255.0 - pre.mean[c]) / pre.std[c];
            let got = values[c * plane + plane / 2];
            assert!((got - want).abs() < 1e-5, "channel {c}: {got} vs {want}");
        }
        let gray =
            load_preprocessed(&path, &Preprocess::fashion_mnist(28), &Device::flex()).unwrap();
        assert_eq!(gray.dims(), [1, 1, 28, 28]);
        let err =
            load_preprocessed(Path::new("/nonexistent.png"), &pre, &Device::flex()).unwrap_err();
        assert!(err.to_string().contains("/nonexistent.png"));
        std::fs::remove_file(path).ok();
    }
}
