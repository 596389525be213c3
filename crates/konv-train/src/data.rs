//! Feeding image sets to models through Burn's `Dataset`, `Batcher` and `DataLoader`.

use std::sync::Arc;

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataloader::{DataLoader, DataLoaderBuilder};
use burn::data::dataset::{Dataset, DatasetError};
use burn::prelude::*;
use konv_datasets::ImageSet;

/// One labelled image: 8-bit pixels, row-major.
#[derive(Debug, Clone)]
pub struct ImageItem {
    /// `rows × cols` pixels.
    pub pixels: Vec<u8>,
    /// Class index.
    pub label: u8,
}

/// An [`ImageSet`] seen as a Burn [`Dataset`].
#[derive(Debug, Clone)]
pub struct ImageDataset(pub Arc<ImageSet>);

impl Dataset<ImageItem> for ImageDataset {
    fn get(&self, index: usize) -> Result<ImageItem, DatasetError> {
        Ok(ImageItem {
            pixels: self.0.images.image(index).to_vec(),
            label: self.0.labels[index],
        })
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

/// Pixel standardization: `(p / 255 - mean) / std`.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Normalize {
    /// Mean of the training pixels in `[0, 1]`.
    pub mean: f32,
    /// Standard deviation of the training pixels in `[0, 1]`.
    pub std: f32,
}

impl Normalize {
    /// Standardizes one 8-bit pixel.
    pub fn apply(&self, pixel: u8) -> f32 {
        (pixel as f32 / 255.0 - self.mean) / self.std
    }
}

/// A batch ready for a model.
#[derive(Debug, Clone)]
pub struct ImageBatch {
    /// `[batch, 1, rows, cols]`, standardized.
    pub images: Tensor<4>,
    /// `[batch]` class indices.
    pub targets: Tensor<1, Int>,
}

/// Turns [`ImageItem`]s into an [`ImageBatch`].
#[derive(Debug, Clone)]
pub struct ImageBatcher {
    /// Standardization.
    pub normalize: Normalize,
    /// Image height and width.
    pub size: [usize; 2],
}

impl Batcher<ImageItem, ImageBatch> for ImageBatcher {
    fn batch(&self, items: Vec<ImageItem>, device: &Device) -> ImageBatch {
        let [h, w] = self.size;
        let pixels: Vec<f32> = items
            .iter()
            .flat_map(|item| item.pixels.iter().map(|&p| self.normalize.apply(p)))
            .collect();
        let labels: Vec<i64> = items.iter().map(|item| item.label as i64).collect();
        ImageBatch {
            images: Tensor::from_data(TensorData::new(pixels, [items.len(), 1, h, w]), device),
            targets: Tensor::from_data(TensorData::new(labels, [items.len()]), device),
        }
    }
}

/// A loader over `set` on `device`. With `shuffle_seed`, the order is a permutation drawn
/// from that seed (give each epoch its own seed); without, the set's order.
pub fn loader(
    set: Arc<ImageSet>,
    normalize: Normalize,
    batch_size: usize,
    shuffle_seed: Option<u64>,
    device: &Device,
) -> Arc<dyn DataLoader<ImageBatch>> {
    let size = [set.images.rows, set.images.cols];
    let mut builder = DataLoaderBuilder::new(ImageBatcher { normalize, size })
        .batch_size(batch_size)
        .num_workers(1)
        .set_device(device.clone());
    if let Some(seed) = shuffle_seed {
        builder = builder.shuffle(seed);
    }
    builder.build(ImageDataset(set))
}
