//! Progressive resizing: the first epochs train on smaller images, the size grows linearly
//! over a ramp of epochs, and the last epochs train at the dataset's own size (fast.ai's
//! DAWNBench ImageNet runs, FFCV's `start_ramp`/`end_ramp`/`min_res` ResNet recipes).
//!
//! Why: a convolution's cost grows with the image area, so ResNet-20 on Fashion-MNIST trains
//! about 1.7 times as fast at 20×20 as at 28×28, and 3.5 times as fast at 14×14. The early,
//! high-learning-rate epochs learn coarse shapes, which survive the smaller images; the last
//! epochs, at full size and a falling learning rate, learn the fine detail. Models that end
//! in global average pooling (the ResNets, GoogLeNet, Xception) take any size.
//!
//! Images are shrunk by area averaging (PyTorch's `interpolate(mode="area")`, an adaptive
//! average pool), which does not alias. Validation and test always see the full size.

use burn::tensor::Tensor;
use burn::tensor::module::adaptive_avg_pool2d;
use serde::{Deserialize, Serialize};

/// The image side (the shorter one) of each epoch: `min_size` up to epoch `start`, then
/// growing linearly to the full size at epoch `end` (rounded to an even side), and the full
/// size from `end` on. Epochs count from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgressiveResize {
    /// Side of the images in the first epochs.
    pub min_size: usize,
    /// Last epoch at `min_size`.
    pub start: usize,
    /// First epoch at the full size.
    pub end: usize,
}

impl ProgressiveResize {
    /// The image side in `epoch` (1-based) for images whose own side is `full`.
    pub fn size_at(&self, epoch: usize, full: usize) -> usize {
        let min = self.min_size.min(full);
        if epoch <= self.start {
            return min;
        }
        if epoch >= self.end {
            return full;
        }
        let t = (epoch - self.start) as f64 / (self.end - self.start) as f64;
        let size = min as f64 + t * (full - min) as f64;
        // An even side, never below the start nor above the full size.
        (((size / 2.0).round() as usize) * 2).clamp(min, full)
    }

    /// The `[h, w]` of the first epochs' images, for images of `full` `[h, w]`.
    pub fn smallest(&self, full: [usize; 2]) -> [usize; 2] {
        shrunk_size(full, self.size_at(1, full[0].min(full[1])))
    }

    /// The sides of epochs `1..=epochs`, for a log line.
    pub fn plan(&self, epochs: usize, full: usize) -> Vec<usize> {
        (1..=epochs).map(|e| self.size_at(e, full)).collect()
    }

    /// Settings that cannot work, as a one-line message.
    pub fn validate(&self, epochs: usize) -> Result<(), String> {
        if self.min_size < 4 {
            return Err(format!(
                "min={}: give a side of at least 4 pixels",
                self.min_size
            ));
        }
        if self.start == 0 || self.end <= self.start {
            return Err(format!(
                "start={},end={}: need 1 <= start < end (epochs, 1-based)",
                self.start, self.end
            ));
        }
        if self.end > epochs {
            return Err(format!(
                "end={}: the full size must be reached by the last epoch ({epochs} epochs)",
                self.end
            ));
        }
        Ok(())
    }
}

/// `images` (`[batch, channels, h, w]`) shrunk by area averaging so that their shorter side
/// is `side` (the aspect ratio kept); unchanged when it already is.
pub fn resize_batch(images: Tensor<4>, side: usize) -> Tensor<4> {
    let [_, _, h, w] = images.dims();
    let size = shrunk_size([h, w], side);
    if size == [h, w] {
        images
    } else {
        adaptive_avg_pool2d(images, size)
    }
}

/// `[h, w]` scaled so that the shorter side is `side` (never enlarged).
pub fn shrunk_size([h, w]: [usize; 2], side: usize) -> [usize; 2] {
    let short = h.min(w);
    if side >= short {
        return [h, w];
    }
    let scale = |n: usize| ((n * side) as f64 / short as f64).round() as usize;
    [scale(h), scale(w)]
}

/// Label maps `[batch, h, w]` shrunk with the images of [`resize_batch`] to shorter side
/// `side`, by nearest neighbour (a label is never averaged into another).
pub fn resize_labels(
    labels: Tensor<3, burn::tensor::Int>,
    side: usize,
) -> Tensor<3, burn::tensor::Int> {
    use burn::tensor::module::interpolate;
    use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
    let [n, h, w] = labels.dims();
    let [oh, ow] = shrunk_size([h, w], side);
    if [oh, ow] == [h, w] {
        return labels;
    }
    let options = InterpolateOptions::new(InterpolateMode::Nearest)
        .with_align_corners(false)
        .with_output_size([oh, ow]);
    interpolate(labels.float().reshape([n, 1, h, w]), options)
        .reshape([n, oh, ow])
        .int()
}

impl std::str::FromStr for ProgressiveResize {
    type Err = String;

    /// `min=20,start=4,end=8`: 20×20 images through epoch 4, the full size from epoch 8.
    fn from_str(s: &str) -> Result<Self, String> {
        let usage = "expected min=SIDE,start=EPOCH,end=EPOCH (e.g. min=20,start=4,end=8)";
        let (mut min, mut start, mut end) = (None, None, None);
        for part in s.split(',').map(str::trim) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}`: {usage}"))?;
            let value: usize = value
                .trim()
                .parse()
                .map_err(|_| format!("`{part}`: `{value}` is not a whole number; {usage}"))?;
            let slot = match key.trim() {
                "min" => &mut min,
                "start" => &mut start,
                "end" => &mut end,
                other => return Err(format!("unknown key `{other}`; {usage}")),
            };
            *slot = Some(value);
        }
        match (min, start, end) {
            (Some(min_size), Some(start), Some(end)) => Ok(ProgressiveResize {
                min_size,
                start,
                end,
            }),
            _ => Err(format!("`{s}`: {usage}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::prelude::*;

    #[test]
    fn sizes_follow_the_ramp() {
        let p = ProgressiveResize {
            min_size: 20,
            start: 4,
            end: 8,
        };
        // 20 through epoch 4; 22, 24, 26 (20 + 8·k/4) in epochs 5–7; 28 from epoch 8.
        assert_eq!(p.plan(10, 28), vec![20, 20, 20, 20, 22, 24, 26, 28, 28, 28]);
        // An odd ramp rounds to even sides: 14 + 14·k/3 = 18.67, 23.33 → 18, 24.
        let q = ProgressiveResize {
            min_size: 14,
            start: 2,
            end: 5,
        };
        assert_eq!(q.plan(6, 28), vec![14, 14, 18, 24, 28, 28]);
        // A minimum above the full size never enlarges.
        let big = ProgressiveResize {
            min_size: 40,
            start: 1,
            end: 2,
        };
        assert_eq!(big.plan(3, 28), vec![28, 28, 28]);
    }

    #[test]
    fn parses_and_rejects() {
        let p: ProgressiveResize = "min=20, start=4,end=8".parse().unwrap();
        assert_eq!(
            p,
            ProgressiveResize {
                min_size: 20,
                start: 4,
                end: 8
            }
        );
        for bad in [
            "min=20,start=4",
            "min=x,start=1,end=2",
            "size=3,start=1,end=2",
            "20:4:8",
        ] {
            let err = bad.parse::<ProgressiveResize>().unwrap_err();
            assert!(
                err.contains("min=SIDE,start=EPOCH,end=EPOCH"),
                "{bad}: {err}"
            );
        }
        assert!(p.validate(8).is_ok());
        assert!(p.validate(7).unwrap_err().contains("7 epochs"));
        let backwards = ProgressiveResize {
            start: 5,
            end: 5,
            ..p
        };
        assert!(backwards.validate(9).unwrap_err().contains("start < end"));
        let tiny = ProgressiveResize { min_size: 2, ..p };
        assert!(tiny.validate(9).unwrap_err().contains("at least 4"));
    }

    #[test]
    fn halving_averages_each_two_by_two_block() {
        let device = Device::flex();
        let images = Tensor::<1, Int>::arange(0..16, &device)
            .float()
            .reshape([1, 1, 4, 4]);
        let small = resize_batch(images.clone(), 2);
        // Blocks {0,1,4,5}, {2,3,6,7}, {8,9,12,13}, {10,11,14,15}.
        let values = small.into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(values, vec![2.5, 4.5, 10.5, 12.5]);
        assert_eq!(resize_batch(images, 4).dims(), [1, 1, 4, 4]);
        // The shorter side becomes the side asked for, the aspect ratio kept.
        let wide = Tensor::<4>::zeros([2, 1, 20, 30], &device);
        assert_eq!(resize_batch(wide, 14).dims(), [2, 1, 14, 21]);
    }
}
