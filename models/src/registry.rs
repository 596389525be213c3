//! The zoo's one table from model name to builder, used by the library and the CLI alike.

use burn::prelude::*;

use crate::fashion_cnn::{FashionCnn, FashionCnnConfig};

/// A model of the zoo that maps images to class logits.
#[derive(Module, Debug)]
pub enum Classifier {
    /// The lecture's Fashion-MNIST CNN.
    FashionCnn(FashionCnn),
}

impl Classifier {
    /// Class logits: `[batch, channels, height, width]` → `[batch, num_classes]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        match self {
            Classifier::FashionCnn(m) => m.forward(x),
        }
    }
}

/// What the registry knows of a model without building it.
#[derive(Debug, Clone, Copy)]
pub struct ModelInfo {
    /// The name used by [`build`] and `konv --model`.
    pub name: &'static str,
    /// Input `[channels, height, width]` the model was designed for.
    pub input: [usize; 3],
    /// One line on what it is.
    pub description: &'static str,
}

/// Every model of the zoo.
pub fn models() -> &'static [ModelInfo] {
    &[ModelInfo {
        name: "fashion-cnn",
        input: [1, 28, 28],
        description: "the lecture's Fashion-MNIST CNN: 64-128-128-256-256 convs, 3 poolings, 128-64 dense with dropout",
    }]
}

/// A model name the registry does not know.
#[derive(Debug, thiserror::Error)]
#[error("unknown model `{name}`; known models: {known}")]
pub struct ModelError {
    /// The name asked for.
    pub name: String,
    /// The names the registry knows, comma-separated.
    pub known: String,
}

/// Builds the model `name` with a head for `num_classes` classes, on `device`.
pub fn build(name: &str, num_classes: usize, device: &Device) -> Result<Classifier, ModelError> {
    match info(name)?.name {
        "fashion-cnn" => Ok(Classifier::FashionCnn(
            FashionCnnConfig::new()
                .with_num_classes(num_classes)
                .init(device),
        )),
        other => unreachable!("model `{other}` is listed but has no builder"),
    }
}

/// Information on model `name`, or an error listing the known names.
pub fn info(name: &str) -> Result<&'static ModelInfo, ModelError> {
    models()
        .iter()
        .find(|m| m.name == name)
        .ok_or_else(|| ModelError {
            name: name.to_string(),
            known: models()
                .iter()
                .map(|m| m.name)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_model_builds() {
        let device = Device::flex();
        for m in models() {
            let model = build(m.name, 10, &device).unwrap();
            let [c, h, w] = m.input;
            assert_eq!(
                model.forward(Tensor::zeros([1, c, h, w], &device)).dims(),
                [1, 10]
            );
        }
        let err = build("resnet9000", 10, &device).unwrap_err().to_string();
        assert!(err.contains("fashion-cnn"), "{err}");
    }
}
