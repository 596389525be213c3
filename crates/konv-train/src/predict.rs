//! Predicting the class of image files.

use std::path::Path;

use burn::prelude::*;
use burn::tensor::activation::softmax;
use image::imageops::FilterType;
use konv_models::Classifier;

use crate::TrainError;
use crate::data::Normalize;

/// Reads an image file (PNG or JPEG), converts it to grayscale and resizes it to
/// `height × width`. Returns 8-bit pixels, row-major.
pub fn load_grayscale(path: &Path, height: usize, width: usize) -> Result<Vec<u8>, TrainError> {
    let img = image::open(path).map_err(|e| TrainError::Image {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let gray = img
        .resize_exact(width as u32, height as u32, FilterType::Triangle)
        .into_luma8();
    Ok(gray.into_raw())
}

/// Class probabilities of one image (pixels as [`load_grayscale`] gives them), sorted by
/// probability, highest first: `(class index, probability)`.
pub fn classify(
    model: &Classifier,
    pixels: &[u8],
    size: [usize; 2],
    normalize: Normalize,
) -> Vec<(usize, f32)> {
    let device = crate::eval::device_of(model);
    let input: Vec<f32> = pixels.iter().map(|&p| normalize.apply(p)).collect();
    let x = Tensor::<4>::from_data(TensorData::new(input, [1, 1, size[0], size[1]]), &device);
    let probs = softmax(model.forward(x), 1)
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap_or_default();
    let mut ranked: Vec<(usize, f32)> = probs.into_iter().enumerate().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    ranked
}
