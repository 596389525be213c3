//! MNIST and Fashion-MNIST as named datasets: where their files are found, the embedded
//! Fashion-MNIST subset, and the train/validation split.

use std::fmt;
use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::idx::{self, IdxError, IdxImages};

/// The four files of an MNIST-style dataset, without the optional `.gz` suffix.
const FILES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// The Fashion-MNIST classes, in label order.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// The MNIST classes, in label order.
pub const MNIST_CLASSES: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];

/// A named MNIST-style dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DatasetName {
    /// Zalando's Fashion-MNIST: 60,000 + 10,000 28×28 grayscale clothing images, 10 classes.
    FashionMnist,
    /// LeCun's MNIST handwritten digits: 60,000 + 10,000 28×28 grayscale images, 10 classes.
    Mnist,
}

impl DatasetName {
    /// Every named dataset.
    pub const ALL: [DatasetName; 2] = [DatasetName::FashionMnist, DatasetName::Mnist];

    /// The name used on the command line and in folder names (`fashion-mnist`, `mnist`).
    pub fn as_str(self) -> &'static str {
        match self {
            DatasetName::FashionMnist => "fashion-mnist",
            DatasetName::Mnist => "mnist",
        }
    }

    /// Parses a name given on the command line.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.as_str() == name)
    }

    /// Class names, in label order.
    pub fn class_names(self) -> &'static [&'static str] {
        match self {
            DatasetName::FashionMnist => &FASHION_MNIST_CLASSES,
            DatasetName::Mnist => &MNIST_CLASSES,
        }
    }

    /// Mean and standard deviation of the training pixels, scaled to `[0, 1]`: the
    /// standardization the models are trained with.
    pub fn mean_std(self) -> (f32, f32) {
        match self {
            DatasetName::FashionMnist => (0.2860, 0.3530),
            DatasetName::Mnist => (0.1307, 0.3081),
        }
    }

    /// Public addresses the files can be downloaded from (the file name and `.gz` are appended).
    pub fn download_base(self) -> &'static str {
        match self {
            DatasetName::FashionMnist => {
                "https://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
            }
            DatasetName::Mnist => "https://ossci-datasets.s3.amazonaws.com/mnist/",
        }
    }

    /// How to install the files system-wide, where a package exists (for error messages).
    pub fn install_hint(self) -> &'static str {
        match self {
            DatasetName::FashionMnist => {
                ", or install them (Debian: apt-get install dataset-fashion-mnist)"
            }
            DatasetName::Mnist => "",
        }
    }

    /// Where a system package installs the files (Debian's `dataset-fashion-mnist`).
    pub fn system_dir(self) -> PathBuf {
        PathBuf::from("/usr/share/datasets").join(self.as_str())
    }
}

impl fmt::Display for DatasetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of labelled 8-bit grayscale images of one size.
#[derive(Debug, Clone)]
pub struct ImageSet {
    /// The images.
    pub images: IdxImages,
    /// One label per image.
    pub labels: Vec<u8>,
}

impl ImageSet {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The images at `indices`, in that order, as a new set.
    pub fn select(&self, indices: &[usize]) -> ImageSet {
        let mut pixels = Vec::with_capacity(indices.len() * self.images.image_len());
        for &i in indices {
            pixels.extend_from_slice(self.images.image(i));
        }
        ImageSet {
            images: IdxImages {
                count: indices.len(),
                channels: self.images.channels,
                rows: self.images.rows,
                cols: self.images.cols,
                pixels,
            },
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
        }
    }

    /// The first `n` items (all of them when `n` is larger).
    pub fn take(&self, n: usize) -> ImageSet {
        let indices: Vec<usize> = (0..n.min(self.len())).collect();
        self.select(&indices)
    }

    /// `n` items drawn at random (deterministic for `seed`), kept in their order (all of
    /// them when `n` is larger): a subset with every class in proportion when the set is
    /// sorted by class, as an image folder is.
    pub fn sample(&self, n: usize, seed: u64) -> ImageSet {
        let mut order: Vec<usize> = (0..self.len()).collect();
        order.shuffle(&mut StdRng::seed_from_u64(seed));
        let picked = &mut order[..n.min(self.len())];
        picked.sort_unstable();
        self.select(picked)
    }

    /// The items of `classes` only, in their order, relabelled by position in `classes`
    /// (`with_classes(&[5, 6, 7, 8, 9])` turns labels 5–9 into 0–4).
    pub fn with_classes(&self, classes: &[u8]) -> ImageSet {
        let indices: Vec<usize> = (0..self.len())
            .filter(|&i| classes.contains(&self.labels[i]))
            .collect();
        let mut set = self.select(&indices);
        for label in &mut set.labels {
            *label = classes
                .iter()
                .position(|c| c == label)
                .expect("selected by class") as u8;
        }
        set
    }

    /// Splits off a validation set of `val_size` items chosen at random (deterministic for
    /// `seed`); returns `(train, validation)`, each in the original order.
    pub fn split_validation(&self, val_size: usize, seed: u64) -> (ImageSet, ImageSet) {
        let val_size = val_size.min(self.len());
        let mut order: Vec<usize> = (0..self.len()).collect();
        order.shuffle(&mut StdRng::seed_from_u64(seed));
        let (val, train) = order.split_at_mut(val_size);
        val.sort_unstable();
        train.sort_unstable();
        (self.select(train), self.select(val))
    }
}

/// Where a dataset's files came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSource {
    /// Files in this folder.
    Folder(PathBuf),
    /// The small real subset of Fashion-MNIST built into konv.
    Embedded,
}

impl fmt::Display for DataSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataSource::Folder(dir) => write!(f, "{}", dir.display()),
            DataSource::Embedded => {
                f.write_str("the embedded Fashion-MNIST subset (6,000 train / 1,000 test images)")
            }
        }
    }
}

/// A loaded dataset: training and test sets with their class names.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Which dataset.
    pub name: DatasetName,
    /// Where the files came from.
    pub source: DataSource,
    /// The training set (before any validation split).
    pub train: ImageSet,
    /// The test set.
    pub test: ImageSet,
}

impl Dataset {
    /// Class names, in label order.
    pub fn class_names(&self) -> &'static [&'static str] {
        self.name.class_names()
    }

    /// Whether this is the embedded subset rather than the full dataset.
    pub fn is_subset(&self) -> bool {
        self.source == DataSource::Embedded
    }
}

/// Failure to find or load a dataset.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file was found but is not valid.
    #[error(transparent)]
    Idx(#[from] IdxError),
    /// No location held the files.
    #[error(
        "{name}: data not found. Tried: {tried}. Fix: pass --data-dir DIR with the four IDX files ({files}, raw or .gz), set KONV_DATA, or install them (Debian: apt-get install dataset-{name})"
    )]
    NotFound {
        /// The dataset.
        name: DatasetName,
        /// Every place tried, and why it failed.
        tried: String,
        /// The file names expected.
        files: String,
        /// How to install the files, where a package exists.
        hint: &'static str,
    },
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file was read but its contents are wrong.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, and how to fix it.
        reason: String,
    },
}

/// Where to look for a dataset, and whether a download and the embedded subset may be used.
#[derive(Debug, Clone, Default)]
pub struct Locator {
    /// A folder given by the user (`--data-dir`); when set, it is the only place looked at.
    pub data_dir: Option<PathBuf>,
    /// Try downloading into the cache when no folder has the files.
    pub download: bool,
    /// Fall back to the embedded subset (Fashion-MNIST only) when the full data is not found.
    pub allow_embedded: bool,
}

/// The folder downloads go to: `$KONV_CACHE`, else `$XDG_CACHE_HOME/konv`, else `~/.cache/konv`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KONV_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("konv");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache").join("konv")
}

/// Finds one of the dataset files in `dir`, raw or gzipped.
fn find_file(dir: &Path, stem: &str) -> Option<PathBuf> {
    [format!("{stem}.gz"), stem.to_string()]
        .into_iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
}

/// The four files in `dir`, or the name of the first one missing.
fn files_in(dir: &Path) -> Result<[PathBuf; 4], String> {
    if !dir.is_dir() {
        return Err("no such folder".into());
    }
    let mut found = Vec::with_capacity(4);
    for stem in FILES {
        match find_file(dir, stem) {
            Some(p) => found.push(p),
            None => return Err(format!("no {stem}[.gz]")),
        }
    }
    Ok(found.try_into().expect("four files"))
}

/// Reads and checks the four files of a dataset.
pub fn load_files(
    name: DatasetName,
    files: &[PathBuf; 4],
) -> Result<(ImageSet, ImageSet), IdxError> {
    let classes = name.class_names().len();
    let load = |images: &Path, labels: &Path| -> Result<ImageSet, IdxError> {
        let imgs = idx::read_images(images)?;
        let lbls = idx::read_labels(labels, classes)?;
        idx::check_pair(images, &imgs, labels, &lbls)?;
        Ok(ImageSet {
            images: imgs,
            labels: lbls,
        })
    };
    let (train, test) = (load(&files[0], &files[1])?, load(&files[2], &files[3])?);
    let size = |s: &ImageSet| (s.images.rows, s.images.cols);
    if size(&train) != size(&test) {
        return Err(IdxError::ShapeMismatch {
            train: files[0].clone(),
            train_rows: train.images.rows,
            train_cols: train.images.cols,
            test: files[2].clone(),
            test_rows: test.images.rows,
            test_cols: test.images.cols,
        });
    }
    Ok((train, test))
}

/// Loads the embedded Fashion-MNIST subset: 600 training and 100 test images per class,
/// the first of each class in the real files.
pub fn embedded_fashion_mnist() -> Dataset {
    const TRAIN_IMAGES: &[u8] =
        include_bytes!("../embedded/fashion-mnist/train-images-idx3-ubyte.gz");
    const TRAIN_LABELS: &[u8] =
        include_bytes!("../embedded/fashion-mnist/train-labels-idx1-ubyte.gz");
    const TEST_IMAGES: &[u8] =
        include_bytes!("../embedded/fashion-mnist/t10k-images-idx3-ubyte.gz");
    const TEST_LABELS: &[u8] =
        include_bytes!("../embedded/fashion-mnist/t10k-labels-idx1-ubyte.gz");
    let set = |images: &[u8], labels: &[u8]| {
        let path = Path::new("<embedded fashion-mnist>");
        let gunzip = |bytes: &[u8]| {
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(bytes), &mut out)
                .expect("embedded data is valid gzip");
            out
        };
        ImageSet {
            images: idx::parse_images(path, &gunzip(images)).expect("embedded images are valid"),
            labels: idx::parse_labels(path, &gunzip(labels), 10)
                .expect("embedded labels are valid"),
        }
    };
    Dataset {
        name: DatasetName::FashionMnist,
        source: DataSource::Embedded,
        train: set(TRAIN_IMAGES, TRAIN_LABELS),
        test: set(TEST_IMAGES, TEST_LABELS),
    }
}

impl Locator {
    /// The folders searched, in order, each with a label for messages.
    pub fn search_path(&self, name: DatasetName) -> Vec<(String, PathBuf)> {
        if let Some(dir) = &self.data_dir {
            return vec![("--data-dir".into(), dir.clone())];
        }
        let mut dirs = Vec::new();
        if let Some(dir) = std::env::var_os("KONV_DATA") {
            let dir = PathBuf::from(dir);
            // KONV_DATA may be the dataset's own folder or a folder of datasets.
            dirs.push(("KONV_DATA".into(), dir.join(name.as_str())));
            dirs.push(("KONV_DATA".into(), dir));
        }
        dirs.push(("repo".into(), PathBuf::from("datasets").join(name.as_str())));
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join(name.as_str());
        if repo.is_dir() {
            dirs.push(("repo".into(), repo));
        }
        dirs.push(("system".into(), name.system_dir()));
        dirs.push(("cache".into(), cache_dir().join(name.as_str())));
        dirs
    }

    /// Finds and loads `name`: the folders of [`search_path`](Self::search_path) in order,
    /// then a download into the cache (when allowed), then the embedded subset (when allowed,
    /// Fashion-MNIST only). A folder that holds the files but holds broken ones is an error,
    /// not a reason to look further.
    pub fn load(&self, name: DatasetName) -> Result<Dataset, DataError> {
        let mut tried = Vec::new();
        for (label, dir) in self.search_path(name) {
            match files_in(&dir) {
                Ok(files) => {
                    let (train, test) = load_files(name, &files)?;
                    return Ok(Dataset {
                        name,
                        source: DataSource::Folder(dir),
                        train,
                        test,
                    });
                }
                Err(why) => tried.push(format!("{} [{label}] ({why})", dir.display())),
            }
        }
        if self.data_dir.is_none() {
            if self.download {
                let dir = cache_dir().join(name.as_str());
                match download(name, &dir) {
                    Ok(files) => {
                        let (train, test) = load_files(name, &files)?;
                        return Ok(Dataset {
                            name,
                            source: DataSource::Folder(dir),
                            train,
                            test,
                        });
                    }
                    Err(why) => {
                        tried.push(format!("download from {} ({why})", name.download_base()))
                    }
                }
            }
            if self.allow_embedded && name == DatasetName::FashionMnist {
                return Ok(embedded_fashion_mnist());
            }
        }
        Err(DataError::NotFound {
            name,
            tried: tried.join("; "),
            files: FILES.join(", "),
            hint: name.install_hint(),
        })
    }
}

/// Downloads the four gzipped files into `dir` (each written to a temporary name, then renamed).
#[cfg(feature = "download")]
pub fn download(name: DatasetName, dir: &Path) -> Result<[PathBuf; 4], String> {
    use std::io::Read;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(std::time::Duration::from_secs(120)))
        .build()
        .new_agent();
    let mut out = Vec::new();
    for stem in FILES {
        let file = format!("{stem}.gz");
        let target = dir.join(&file);
        if !target.is_file() {
            let url = format!("{}{file}", name.download_base());
            let mut body = Vec::new();
            agent
                .get(&url)
                .call()
                .map_err(|e| e.to_string())?
                .into_body()
                .into_reader()
                .take(100 << 20)
                .read_to_end(&mut body)
                .map_err(|e| format!("{url}: {e}"))?;
            let tmp = dir.join(format!("{file}.tmp"));
            std::fs::write(&tmp, &body).map_err(|e| format!("{}: {e}", tmp.display()))?;
            std::fs::rename(&tmp, &target).map_err(|e| format!("{}: {e}", target.display()))?;
        }
        out.push(target);
    }
    Ok(out.try_into().expect("four files"))
}

/// Without the `download` feature there is no network access.
#[cfg(not(feature = "download"))]
pub fn download(_name: DatasetName, _dir: &Path) -> Result<[PathBuf; 4], String> {
    Err("konv was built without the `download` feature".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_images_of_another_size_are_refused_when_loading() {
        let dir = std::env::temp_dir().join(format!("konv-shape-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let images = |rows, cols| {
            idx::encode_images(&idx::IdxImages {
                count: 2,
                channels: 1,
                rows,
                cols,
                pixels: vec![0; 2 * rows * cols],
            })
        };
        // The same byte count (784 per image), another shape: 56×14 against 28×28.
        let files = ["tr-img", "tr-lbl", "te-img", "te-lbl"].map(|f| dir.join(f));
        std::fs::write(&files[0], images(28, 28)).unwrap();
        std::fs::write(&files[1], idx::encode_labels(&[0, 1])).unwrap();
        std::fs::write(&files[2], images(56, 14)).unwrap();
        std::fs::write(&files[3], idx::encode_labels(&[1, 0])).unwrap();
        let err = load_files(DatasetName::FashionMnist, &files)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("te-img holds 56×14 images") && err.contains("28×28"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn embedded_subset_is_balanced_real_data() {
        let d = embedded_fashion_mnist();
        assert_eq!((d.train.len(), d.test.len()), (6000, 1000));
        assert_eq!((d.train.images.rows, d.train.images.cols), (28, 28));
        for class in 0..10u8 {
            assert_eq!(d.train.labels.iter().filter(|&&l| l == class).count(), 600);
            assert_eq!(d.test.labels.iter().filter(|&&l| l == class).count(), 100);
        }
        // Standardization constants are those of the real training set; the subset is close.
        let mean = d.train.images.pixels.iter().map(|&p| p as f64).sum::<f64>()
            / d.train.images.pixels.len() as f64
            / 255.0;
        assert!((mean - 0.286).abs() < 0.01, "mean {mean}");
    }

    #[test]
    fn validation_split_is_deterministic_and_disjoint() {
        let d = embedded_fashion_mnist().test;
        let (t1, v1) = d.split_validation(100, 7);
        let (t2, v2) = d.split_validation(100, 7);
        let (_, v3) = d.split_validation(100, 8);
        assert_eq!((t1.len(), v1.len()), (900, 100));
        assert_eq!(v1.labels, v2.labels);
        assert_eq!(v1.images.pixels, v2.images.pixels);
        assert_eq!(t1.images.pixels, t2.images.pixels);
        assert_ne!(v1.images.pixels, v3.images.pixels);
    }

    #[test]
    fn random_samples_of_a_class_sorted_set_keep_every_class() {
        let d = embedded_fashion_mnist().test;
        let mut order: Vec<usize> = (0..d.len()).collect();
        order.sort_by_key(|&i| d.labels[i]);
        let sorted = d.select(&order);
        let s = sorted.sample(100, 3);
        assert_eq!(s.len(), 100);
        for class in 0..10u8 {
            let n = s.labels.iter().filter(|&&l| l == class).count();
            assert!((3..=20).contains(&n), "class {class}: {n} of 100");
        }
        assert!(s.labels.is_sorted(), "kept in the set's order");
        assert_eq!(s.labels, sorted.sample(100, 3).labels);
        assert_eq!(sorted.sample(5000, 3).len(), 1000);
    }

    #[test]
    fn class_subsets_keep_their_images_and_relabel() {
        let d = embedded_fashion_mnist().test;
        let sub = d.with_classes(&[7, 2]);
        let want: Vec<usize> = (0..d.len())
            .filter(|&i| d.labels[i] == 7 || d.labels[i] == 2)
            .collect();
        assert_eq!(sub.len(), want.len());
        for (j, &i) in want.iter().enumerate() {
            assert_eq!(sub.labels[j], if d.labels[i] == 7 { 0 } else { 1 });
            assert_eq!(sub.images.image(j), d.images.image(i));
        }
    }

    #[test]
    fn missing_data_dir_lists_what_was_tried() {
        let locator = Locator {
            data_dir: Some(PathBuf::from("/nonexistent/konv")),
            download: true,
            allow_embedded: true,
        };
        let err = locator
            .load(DatasetName::FashionMnist)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/nonexistent/konv [--data-dir] (no such folder)"),
            "{err}"
        );
        assert!(err.contains("--data-dir DIR"), "{err}");
    }

    #[test]
    fn broken_files_in_a_folder_are_an_error_naming_the_file() {
        let dir = std::env::temp_dir().join(format!("konv-broken-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let imgs = IdxImages {
            count: 2,
            channels: 1,
            rows: 2,
            cols: 2,
            pixels: vec![0; 8],
        };
        std::fs::write(dir.join(FILES[0]), idx::encode_images(&imgs)).unwrap();
        std::fs::write(dir.join(FILES[1]), idx::encode_labels(&[1, 2, 3])).unwrap();
        std::fs::write(dir.join(FILES[2]), idx::encode_images(&imgs)).unwrap();
        std::fs::write(dir.join(FILES[3]), idx::encode_labels(&[1, 2])).unwrap();
        let locator = Locator {
            data_dir: Some(dir.clone()),
            ..Default::default()
        };
        let err = locator.load(DatasetName::Mnist).unwrap_err().to_string();
        assert!(
            err.contains("holds 2 images") && err.contains("holds 3 labels"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
