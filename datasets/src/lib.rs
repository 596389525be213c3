//! Data sources for konv.
//!
//! - [`idx`]: a validating reader for MNIST-style IDX files, raw or gzipped.
//! - [`mnist`]: MNIST and Fashion-MNIST as named datasets, found in a folder, the system
//!   location, a download, or the Fashion-MNIST subset built into konv.
//! - [`localization`]: items placed on a larger canvas with their class and box, and real
//!   images with CSV/JSON boxes.

pub mod idx;
pub mod localization;
pub mod mnist;

pub use idx::{IdxError, IdxImages};
pub use mnist::{DataError, DataSource, Dataset, DatasetName, ImageSet, Locator};
