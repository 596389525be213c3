//! Data sources for konv.
//!
//! - [`idx`]: a validating reader for MNIST-style IDX files, raw or gzipped.
//! - [`mnist`]: MNIST and Fashion-MNIST as named datasets, found in a folder, the system
//!   location, a download, or the Fashion-MNIST subset built into konv.
//! - [`folder`]: your own images in torchvision's `ImageFolder` layout
//!   (`root/<class>/*.png|jpg`), gray or RGB, resized and cached.
//! - [`localization`]: items placed on a larger canvas with their class and box, and real
//!   images with CSV/JSON boxes.
//! - [`segmentation`]: several items per canvas with a class for every pixel, and real
//!   images with mask PNGs.

pub mod folder;
pub mod idx;
pub mod localization;
pub mod mnist;
pub mod segmentation;

pub use folder::{FolderError, FolderOptions, ImageFolder};
pub use idx::{IdxError, IdxImages};
pub use mnist::{DataError, DataSource, Dataset, DatasetName, ImageSet, Locator};
