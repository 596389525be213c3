//! Feeding image sets to models through Burn's `Dataset`, `Batcher` and `DataLoader`.

use std::sync::Arc;

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataloader::{DataLoader, DataLoaderBuilder};
use burn::data::dataset::{Dataset, DatasetError};
use burn::prelude::*;
use konv_datasets::ImageSet;

use crate::augment::{Image, Pipeline};

/// One labelled image: 8-bit pixels, row-major, channel after channel.
#[derive(Debug, Clone)]
pub struct ImageItem {
    /// `channels × rows × cols` pixels.
    pub pixels: Vec<u8>,
    /// Class index.
    pub label: u8,
    /// Position in the dataset (seeds the item's augmentation).
    pub index: usize,
}

/// An [`ImageSet`] seen as a Burn [`Dataset`].
#[derive(Debug, Clone)]
pub struct ImageDataset(pub Arc<ImageSet>);

impl Dataset<ImageItem> for ImageDataset {
    fn get(&self, index: usize) -> Result<ImageItem, DatasetError> {
        Ok(ImageItem {
            pixels: self.0.images.image(index).to_vec(),
            label: self.0.labels[index],
            index,
        })
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

/// Pixel standardization: `(p / 255 - mean) / std`, per channel for RGB images.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Normalize {
    /// Mean of the training pixels in `[0, 1]` (of every channel, unless `rgb` is given).
    pub mean: f32,
    /// Standard deviation of the training pixels in `[0, 1]`.
    pub std: f32,
    /// Per-channel `(mean, std)` of RGB images (torchvision's `Normalize(mean, std)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rgb: Option<[(f32, f32); 3]>,
}

impl Normalize {
    /// The same mean and standard deviation for every channel.
    pub fn new(mean: f32, std: f32) -> Self {
        Normalize {
            mean,
            std,
            rgb: None,
        }
    }

    /// Per-channel statistics: one pair for gray images, three for RGB.
    pub fn per_channel(stats: &[(f32, f32)]) -> Self {
        match stats {
            [(m, s)] => Normalize::new(*m, *s),
            [r, g, b] => Normalize {
                mean: (r.0 + g.0 + b.0) / 3.0,
                std: (r.1 + g.1 + b.1) / 3.0,
                rgb: Some([*r, *g, *b]),
            },
            _ => panic!("per_channel takes 1 or 3 channels, got {}", stats.len()),
        }
    }

    /// Standardizes one 8-bit pixel.
    pub fn apply(&self, pixel: u8) -> f32 {
        self.apply_unit(pixel as f32 / 255.0)
    }

    /// Standardizes one pixel value in [0, 1].
    pub fn apply_unit(&self, value: f32) -> f32 {
        (value - self.mean) / self.std
    }

    /// `(mean, std)` of `channel`.
    pub fn channel(&self, channel: usize) -> (f32, f32) {
        match self.rgb {
            Some(rgb) => rgb[channel.min(2)],
            None => (self.mean, self.std),
        }
    }

    /// Standardizes `values` (in [0, 1]) of an image of `channels` planes, in place.
    pub fn apply_planes(&self, values: &mut [f32], channels: usize) {
        let plane = values.len() / channels.max(1);
        for (c, chunk) in values.chunks_mut(plane.max(1)).enumerate() {
            let (mean, std) = self.channel(c);
            chunk.iter_mut().for_each(|v| *v = (*v - mean) / std);
        }
    }
}

/// A batch ready for a model.
#[derive(Debug, Clone)]
pub struct ImageBatch {
    /// `[batch, channels, rows, cols]`, standardized.
    pub images: Tensor<4>,
    /// `[batch]` class indices.
    pub targets: Tensor<1, Int>,
    /// When the images are mixes of two (mixup, cutmix): the other image's classes and the
    /// share of `targets`.
    pub mix: Option<Mix>,
}

/// The second label set of a mixed batch.
#[derive(Debug, Clone)]
pub struct Mix {
    /// `[batch]` classes of the images mixed in.
    pub targets: Tensor<1, Int>,
    /// Share of the batch's own images (and of `targets` of [`ImageBatch`]) in the mix.
    pub lambda: f32,
}

/// Turns [`ImageItem`]s into an [`ImageBatch`].
#[derive(Debug, Clone)]
pub struct ImageBatcher {
    /// Standardization.
    pub normalize: Normalize,
    /// Image channels, height and width.
    pub size: [usize; 3],
    /// Augmentation of each item, with the epoch's seed.
    pub augment: Option<(Arc<Pipeline>, u64)>,
}

impl Batcher<ImageItem, ImageBatch> for ImageBatcher {
    fn batch(&self, items: Vec<ImageItem>, device: &Device) -> ImageBatch {
        let [c, h, w] = self.size;
        let (mut pixels, (h, w)): (Vec<f32>, _) = match &self.augment {
            None => {
                let mut pixels = Vec::with_capacity(items.len() * c * h * w);
                for item in &items {
                    let start = pixels.len();
                    pixels.extend(item.pixels.iter().map(|&p| p as f32 / 255.0));
                    self.normalize.apply_planes(&mut pixels[start..], c);
                }
                (pixels, (h, w))
            }
            Some((pipeline, epoch_seed)) => {
                let (oh, ow) = pipeline.output_size(h, w);
                let mut pixels = Vec::with_capacity(items.len() * c * oh * ow);
                for item in &items {
                    let start = pixels.len();
                    // Each channel draws the same random numbers, so all move together.
                    for plane in item.pixels.chunks(h * w) {
                        let mut image = Image::from_u8(plane, h, w);
                        pipeline.apply(&mut image, *epoch_seed, item.index);
                        pixels.extend(image.pixels);
                    }
                    self.normalize.apply_planes(&mut pixels[start..], c);
                }
                (pixels, (oh, ow))
            }
        };
        let labels: Vec<i64> = items.iter().map(|item| item.label as i64).collect();
        let n = items.len();
        let mix = self.augment.as_ref().and_then(|(pipeline, epoch_seed)| {
            // One stream per batch, from the epoch and the batch's first image.
            let first = items.first().map_or(0, |item| item.index);
            let mut rng = Pipeline::rng(epoch_seed ^ 0x6d69_7865_6261_7463, first);
            let lambda = pipeline.mix_batch(&mut pixels, n, c, h, w, &mut rng)?;
            let partners: Vec<i64> = labels.iter().rev().copied().collect();
            Some(Mix {
                targets: Tensor::from_data(TensorData::new(partners, [n]), device),
                lambda,
            })
        });
        ImageBatch {
            images: Tensor::from_data(TensorData::new(pixels, [n, c, h, w]), device),
            targets: Tensor::from_data(TensorData::new(labels, [n]), device),
            mix,
        }
    }
}

/// A loader over `set` on `device`. With `shuffle_seed`, the order is a permutation drawn
/// from that seed (give each epoch its own seed); without, the set's order. With `augment`,
/// each image goes through the pipeline, seeded by `shuffle_seed` (or 0) and its index.
pub fn loader(
    set: Arc<ImageSet>,
    normalize: Normalize,
    batch_size: usize,
    shuffle_seed: Option<u64>,
    augment: Option<Arc<Pipeline>>,
    device: &Device,
) -> Arc<dyn DataLoader<ImageBatch>> {
    let size = [set.images.channels, set.images.rows, set.images.cols];
    let augment = augment
        .filter(|p| !p.is_empty())
        .map(|p| (p, shuffle_seed.unwrap_or(0)));
    let mut builder = DataLoaderBuilder::new(ImageBatcher {
        normalize,
        size,
        augment,
    })
    .batch_size(batch_size)
    .num_workers(1)
    .set_device(device.clone());
    if let Some(seed) = shuffle_seed {
        builder = builder.shuffle(seed);
    }
    builder.build(ImageDataset(set))
}
