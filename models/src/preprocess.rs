//! The input preprocessing each model expects, as torchvision's weight `transforms()` and
//! Keras' `preprocess_input` define it, plus ImageNet's class names.

/// How to turn an image into a model's input: resize, center crop, then per channel
/// `(pixel / 255 − mean) / std`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Preprocess {
    /// Input channels: 1 (grayscale) or 3 (RGB).
    pub channels: usize,
    /// Length the shorter side is resized to before cropping (equal to the crop for models
    /// that take the whole image, resized).
    pub resize: usize,
    /// Center crop, `[height, width]`.
    pub crop: [usize; 2],
    /// Per-channel mean of `pixel / 255` (the first `channels` entries are used).
    pub mean: [f32; 3],
    /// Per-channel standard deviation.
    pub std: [f32; 3],
    /// Dark objects on a light background must be inverted first (MNIST-style models).
    pub light_on_dark: bool,
}

/// ImageNet mean and standard deviation of RGB values in [0, 1].
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// See [`IMAGENET_MEAN`].
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

impl Preprocess {
    /// torchvision's ImageNet classification transform: resize to `resize`, center-crop
    /// `crop`, ImageNet mean/std.
    pub const fn imagenet(resize: usize, crop: usize) -> Self {
        Self {
            channels: 3,
            resize,
            crop: [crop, crop],
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
            light_on_dark: false,
        }
    }

    /// Keras' `xception.preprocess_input` (`x / 127.5 − 1`, values in [-1, 1]) at `size`.
    pub const fn inception(size: usize) -> Self {
        Self {
            channels: 3,
            resize: size,
            crop: [size, size],
            mean: [0.5; 3],
            std: [0.5; 3],
            light_on_dark: false,
        }
    }

    /// Grayscale digits or clothes at `size`, normalized with Fashion-MNIST's training-set
    /// mean and standard deviation (0.2860, 0.3530).
    pub const fn fashion_mnist(size: usize) -> Self {
        Self {
            channels: 1,
            resize: size,
            crop: [size, size],
            mean: [0.2860; 3],
            std: [0.3530; 3],
            light_on_dark: true,
        }
    }
}

/// The 1000 ImageNet-1k class names, in the order of torchvision's (and Keras') outputs.
pub fn imagenet_classes() -> Vec<&'static str> {
    include_str!("../data/imagenet_classes.txt")
        .lines()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imagenet_class_names() {
        let names = imagenet_classes();
        assert_eq!(names.len(), 1000);
        assert_eq!(names[0], "tench");
        assert_eq!(names[999], "toilet tissue");
    }
}
