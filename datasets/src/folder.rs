//! Your own images: a folder in torchvision's `ImageFolder` layout (Keras'
//! `image_dataset_from_directory`), one sub-folder per class.
//!
//! ```text
//! root/cat/001.jpg            root/train/cat/001.jpg
//! root/cat/002.png     or     root/train/dog/…
//! root/dog/…                  root/val/…   (optional)
//!                             root/test/…  (optional)
//! ```
//!
//! - Class names are the sub-folder names, sorted; labels follow that order.
//! - Images are PNG or JPEG (`.png`, `.jpg`, `.jpeg`, any case), decoded in parallel, read
//!   as gray or RGB ([`FolderOptions::channels`], by default RGB when any image has color).
//! - With [`FolderOptions::image_size`] `S`, each image's shorter side is resized to `S`
//!   and the centre `S × S` kept (torchvision's `Resize(S)` + `CenterCrop(S)`); without it,
//!   every image must already have the size of the first.
//! - The decoded images are cached on disk ([`FolderOptions::cache`]), keyed by the files'
//!   names, sizes and times and the options, so a second run decodes nothing.
//! - A file that cannot be decoded is an error naming it, or with
//!   [`FolderOptions::skip_bad`] is skipped and counted.

use std::collections::hash_map::DefaultHasher;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use image::imageops::FilterType;
use image::{DynamicImage, GenericImageView};

use crate::idx::IdxImages;
use crate::mnist::ImageSet;

/// The largest image side konv decodes (larger files are refused before their pixels are
/// allocated).
pub const MAX_SIDE: u32 = 16_384;

/// The most pixels an image konv decodes may have (Pillow's decompression-bomb limit,
/// about 9,459² or 89 megapixels): a 100-byte file can declare any size, and its pixels are
/// allocated before the data is read, so the header's size is refused past this first.
pub const MAX_PIXELS: u64 = 89_478_485;

/// The most classes a folder may have (labels are bytes).
pub const MAX_CLASSES: usize = 256;

/// How to read an image folder.
#[derive(Debug, Clone)]
pub struct FolderOptions {
    /// 1 (gray) or 3 (RGB); `None` for RGB when any image has color, gray otherwise.
    pub channels: Option<usize>,
    /// Resize the shorter side to this and keep the centre square; `None` keeps the images'
    /// own size, which must then be the same for all.
    pub image_size: Option<usize>,
    /// Skip (and count) files that cannot be decoded instead of failing.
    pub skip_bad: bool,
    /// Folder for the decoded-image cache; `None` decodes every time.
    pub cache: Option<PathBuf>,
    /// Decoding threads (0: one per core).
    pub workers: usize,
    /// Decode files cut short (a JPEG without its end marker, a PNG without `IEND`),
    /// their missing part filled in by the decoder, instead of refusing them; each is
    /// listed in [`ImageFolder::truncated`].
    pub allow_truncated: bool,
}

impl Default for FolderOptions {
    fn default() -> Self {
        FolderOptions {
            channels: None,
            image_size: None,
            skip_bad: false,
            cache: Some(default_cache_dir()),
            workers: 0,
            allow_truncated: false,
        }
    }
}

/// Where decoded folders are cached by default: `folders/` in konv's cache folder
/// ([`crate::mnist::cache_dir`]).
pub fn default_cache_dir() -> PathBuf {
    crate::mnist::cache_dir().join("folders")
}

/// What can be wrong with an image folder.
#[derive(Debug, thiserror::Error)]
pub enum FolderError {
    /// The folder or one of its parts could not be listed.
    #[error("{path}: {source}")]
    Io {
        /// The folder or file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// No class folders with images.
    #[error(
        "{0}: no images found; expected one sub-folder per class with .png/.jpg files (root/<class>/*.png), optionally under train/, val/ and test/"
    )]
    NoImages(PathBuf),
    /// A class folder without images.
    #[error("{0}: class folder holds no .png/.jpg images; add images or remove the folder")]
    EmptyClass(PathBuf),
    /// Only one class.
    #[error(
        "{0}: only one class folder ({1}); a classifier needs at least two, one sub-folder each"
    )]
    SingleClass(PathBuf, String),
    /// More classes than labels can hold.
    #[error("{0}: {1} class folders; konv takes at most 256")]
    TooManyClasses(PathBuf, usize),
    /// A val/ or test/ class that train/ does not have.
    #[error("{0}: class `{1}` is not among the train/ classes ({2})")]
    UnknownClass(PathBuf, String, String),
    /// A file that could not be decoded.
    #[error("{path}: cannot decode image ({reason})")]
    BadImage {
        /// The file.
        path: PathBuf,
        /// The decoder's message.
        reason: String,
    },
    /// Images of different sizes without a size to resize to.
    #[error(
        "{path}: image is {got_w}×{got_h}, the others {want_w}×{want_h}; images of different sizes need a size to resize them to"
    )]
    MixedSizes {
        /// The file.
        path: PathBuf,
        /// Its width.
        got_w: u32,
        /// Its height.
        got_h: u32,
        /// The first image's width.
        want_w: u32,
        /// The first image's height.
        want_h: u32,
    },
    /// A set that cannot be exported as it is.
    #[error("cannot export this set: {0}")]
    Export(String),
    /// An image file that could not be written.
    #[error("{path}: cannot write image ({reason})")]
    Write {
        /// The file.
        path: PathBuf,
        /// The encoder's or file system's message.
        reason: String,
    },
    /// A channel count other than 1 or 3.
    #[error("{0} channels: konv reads images as gray (1) or RGB (3)")]
    Channels(usize),
}

impl FolderError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        FolderError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The files of one split: `(path, label)` in class order, then file-name order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FileList(pub Vec<(PathBuf, u8)>);

/// An image folder listed but not decoded yet.
#[derive(Debug, Clone, PartialEq)]
pub struct FolderLayout {
    /// The root folder.
    pub root: PathBuf,
    /// Class names, sorted.
    pub class_names: Vec<String>,
    /// The training files (`root/train/` or `root/` itself).
    pub train: FileList,
    /// The files of `root/val/`, when present.
    pub val: Option<FileList>,
    /// The files of `root/test/`, when present.
    pub test: Option<FileList>,
}

/// A decoded image folder.
#[derive(Debug, Clone)]
pub struct ImageFolder {
    /// The root folder.
    pub root: PathBuf,
    /// Class names, in label order.
    pub class_names: Vec<String>,
    /// Training images (`train/`, or the whole folder).
    pub train: ImageSet,
    /// `val/`, when the folder has one.
    pub val: Option<ImageSet>,
    /// `test/`, when the folder has one.
    pub test: Option<ImageSet>,
    /// Files skipped as undecodable ([`FolderOptions::skip_bad`]).
    pub skipped: Vec<PathBuf>,
    /// Files cut short that were decoded anyway ([`FolderOptions::allow_truncated`]), found
    /// while decoding (empty when the images came from the cache).
    pub truncated: Vec<PathBuf>,
    /// Whether the images came from the decoded cache.
    pub from_cache: bool,
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, FolderError> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| FolderError::io(dir, e))?
        .map(|e| e.map(|e| e.path()).map_err(|err| FolderError::io(dir, err)))
        .collect::<Result<_, _>>()?;
    entries.sort();
    Ok(entries)
}

/// Class sub-folders of `dir` (hidden ones skipped), sorted.
fn class_dirs(dir: &Path) -> Result<Vec<(String, PathBuf)>, FolderError> {
    Ok(sorted_entries(dir)?
        .into_iter()
        .filter(|p| p.is_dir())
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.to_string();
            (!name.starts_with('.')).then_some((name, p))
        })
        .collect())
}

fn images_in(dir: &Path) -> Result<Vec<PathBuf>, FolderError> {
    Ok(sorted_entries(dir)?
        .into_iter()
        .filter(|p| p.is_file() && is_image(p))
        .collect())
}

impl FolderLayout {
    /// Lists `root`: with a `train/` sub-folder, the `train/`, `val/` and `test/` splits;
    /// otherwise one class folder per sub-folder of `root`.
    pub fn scan(root: &Path) -> Result<Self, FolderError> {
        if !root.is_dir() {
            return Err(FolderError::io(
                root,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such folder"),
            ));
        }
        let split_root = root.join("train");
        let train_dir = if split_root.is_dir() {
            split_root
        } else {
            root.to_path_buf()
        };
        let classes = class_dirs(&train_dir)?;
        if classes.is_empty() {
            return Err(FolderError::NoImages(train_dir));
        }
        if classes.len() > MAX_CLASSES {
            return Err(FolderError::TooManyClasses(train_dir, classes.len()));
        }
        let class_names: Vec<String> = classes.iter().map(|(n, _)| n.clone()).collect();
        let mut train = FileList::default();
        for (label, (_, dir)) in classes.iter().enumerate() {
            let files = images_in(dir)?;
            if files.is_empty() {
                return Err(FolderError::EmptyClass(dir.clone()));
            }
            train.0.extend(files.into_iter().map(|f| (f, label as u8)));
        }
        if class_names.len() == 1 {
            return Err(FolderError::SingleClass(train_dir, class_names[0].clone()));
        }
        let other = |name: &str| -> Result<Option<FileList>, FolderError> {
            let dir = root.join(name);
            if train_dir == root || !dir.is_dir() {
                return Ok(None);
            }
            let mut list = FileList::default();
            for (class, class_dir) in class_dirs(&dir)? {
                let label = class_names
                    .iter()
                    .position(|c| *c == class)
                    .ok_or_else(|| {
                        FolderError::UnknownClass(
                            dir.clone(),
                            class.clone(),
                            class_names.join(", "),
                        )
                    })?;
                list.0
                    .extend(images_in(&class_dir)?.into_iter().map(|f| (f, label as u8)));
            }
            list.0.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
            if list.0.is_empty() {
                return Err(FolderError::NoImages(dir));
            }
            Ok(Some(list))
        };
        Ok(FolderLayout {
            root: root.to_path_buf(),
            val: other("val")?,
            test: other("test")?,
            class_names,
            train,
        })
    }

    /// Every file of every split.
    fn all_files(&self) -> impl Iterator<Item = &PathBuf> {
        self.train
            .0
            .iter()
            .chain(self.val.iter().flat_map(|l| &l.0))
            .chain(self.test.iter().flat_map(|l| &l.0))
            .map(|(p, _)| p)
    }

    /// Decodes every split with `options` (from the cache when it holds them).
    pub fn load(self, options: &FolderOptions) -> Result<ImageFolder, FolderError> {
        if let Some(c) = options.channels
            && c != 1
            && c != 3
        {
            return Err(FolderError::Channels(c));
        }
        let key = self.cache_key(options)?;
        let cache_file = options
            .cache
            .as_ref()
            .map(|dir| dir.join(format!("{key:016x}.bin")));
        if let Some(file) = &cache_file
            && let Some(folder) = read_cache(file, &self)
        {
            return Ok(folder);
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(options.workers)
            .build()
            .map_err(|e| FolderError::io(&self.root, std::io::Error::other(e.to_string())))?;
        let channels = match options.channels {
            Some(c) => c,
            None if pool.install(|| any_color(self.all_files()))? => 3,
            None => 1,
        };
        let mut skipped = Vec::new();
        let mut truncated = Vec::new();
        let mut size = options.image_size.map(|s| (s as u32, s as u32));
        let mut decode = |list: &FileList| -> Result<ImageSet, FolderError> {
            let (set, bad, cut) =
                pool.install(|| decode_list(list, channels, &mut size, options))?;
            skipped.extend(bad);
            truncated.extend(cut);
            Ok(set)
        };
        let train = decode(&self.train)?;
        let val = self.val.as_ref().map(&mut decode).transpose()?;
        let test = self.test.as_ref().map(&mut decode).transpose()?;
        if train.is_empty() {
            return Err(FolderError::NoImages(self.root.clone()));
        }
        let folder = ImageFolder {
            root: self.root,
            class_names: self.class_names,
            train,
            val,
            test,
            skipped,
            truncated,
            from_cache: false,
        };
        if let Some(file) = &cache_file {
            // A cache that cannot be written costs the next run a decode, nothing more.
            write_cache(file, &folder).ok();
        }
        Ok(folder)
    }

    /// What the decoded images depend on: the files (names, sizes, times) and the options.
    fn cache_key(&self, options: &FolderOptions) -> Result<u64, FolderError> {
        let mut h = DefaultHasher::new();
        (
            options.channels,
            options.image_size,
            options.skip_bad,
            options.allow_truncated,
        )
            .hash(&mut h);
        self.class_names.hash(&mut h);
        for (i, list) in [Some(&self.train), self.val.as_ref(), self.test.as_ref()]
            .iter()
            .enumerate()
        {
            i.hash(&mut h);
            for (path, label) in list.iter().flat_map(|l| &l.0) {
                let meta = std::fs::metadata(path).map_err(|e| FolderError::io(path, e))?;
                (path, label, meta.len()).hash(&mut h);
                if let Ok(t) = meta.modified()
                    && let Ok(d) = t.duration_since(std::time::UNIX_EPOCH)
                {
                    d.as_nanos().hash(&mut h);
                }
            }
        }
        Ok(h.finish())
    }
}

impl ImageFolder {
    /// Lists and decodes `root` (see the module docs).
    pub fn open(root: &Path, options: &FolderOptions) -> Result<Self, FolderError> {
        FolderLayout::scan(root)?.load(options)
    }

    /// `[channels, height, width]` of the images.
    pub fn input(&self) -> [usize; 3] {
        let i = &self.train.images;
        [i.channels, i.rows, i.cols]
    }
}

impl fmt::Display for ImageFolder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} classes, {} train",
            self.root.display(),
            self.class_names.len(),
            self.train.len()
        )?;
        if let Some(v) = &self.val {
            write!(f, " / {} val", v.len())?;
        }
        if let Some(t) = &self.test {
            write!(f, " / {} test", t.len())?;
        }
        let [c, h, w] = self.input();
        write!(f, " images, {}×{}×{}", c, h, w)?;
        if !self.skipped.is_empty() {
            write!(f, ", {} undecodable files skipped", self.skipped.len())?;
        }
        Ok(())
    }
}

/// Why `path` is cut short, when it is: a JPEG whose last bytes hold no end-of-image
/// marker (`FF D9`), or a PNG without its `IEND` chunk. Decoders fill a missing tail with
/// grey and say nothing; this reads only the file's first and last bytes. Other formats:
/// `None`.
///
/// # Errors
/// When the file cannot be read.
pub fn truncation(path: &Path) -> std::io::Result<Option<&'static str>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let mut head = Vec::with_capacity(8);
    (&mut file).take(8).read_to_end(&mut head)?;
    let mut tail = Vec::new();
    file.seek(SeekFrom::Start(len.saturating_sub(TAIL)))?;
    file.read_to_end(&mut tail)?;
    Ok(cut_short(&head, &tail))
}

/// How many of a file's last bytes [`truncation`] searches for the end marker.
const TAIL: u64 = 1024;

/// [`truncation`] of a file's first bytes (8 are enough) and its last [`TAIL`] bytes.
fn cut_short(head: &[u8], tail: &[u8]) -> Option<&'static str> {
    let has = |needle: &[u8]| tail.windows(needle.len()).any(|w| w == needle);
    if head.starts_with(&[0xFF, 0xD8, 0xFF]) {
        (!has(&[0xFF, 0xD9])).then_some("truncated: the JPEG has no end-of-image marker")
    } else if head.starts_with(b"\x89PNG\r\n\x1a\n") {
        (!has(b"IEND")).then_some("truncated: the PNG has no IEND chunk")
    } else {
        None
    }
}

/// The largest image file konv reads (1 GiB): past it, a file is refused before it is read.
pub const MAX_FILE_BYTES: u64 = 1 << 30;

/// Decodes an image file's bytes (PNG or JPEG) with bounded work: the format from the
/// bytes, the size from the header, refused past [`MAX_SIDE`] before the pixels are
/// allocated, and a file cut short refused unless `allow_truncated` (then decoded anyway).
/// Returns the image and why it is cut short, when it is. The error is the reason alone;
/// callers add the file's name.
///
/// # Errors
/// Not an image konv reads, too large, cut short, or corrupt.
pub fn decode_image(
    bytes: &[u8],
    allow_truncated: bool,
) -> Result<(DynamicImage, Option<&'static str>), String> {
    let tail = &bytes[bytes.len().saturating_sub(TAIL as usize)..];
    let cut = cut_short(bytes, tail);
    if let Some(why) = cut.filter(|_| !allow_truncated) {
        return Err(format!(
            "{why} (the decoder would fill in the rest); download or export it again"
        ));
    }
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    // The pixels of the largest image allowed, in 16-bit RGBA, and the decoders' own buffers.
    // (The size itself is checked below, with konv's message.)
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_PIXELS * 8 + (64 << 20));
    reader.limits(limits);
    let decoder = reader.into_decoder().map_err(|e| e.to_string())?;
    let (w, h) = image::ImageDecoder::dimensions(&decoder);
    if w > MAX_SIDE || h > MAX_SIDE {
        return Err(format!(
            "the image is {w}×{h}, past konv's limit of {MAX_SIDE} pixels a side"
        ));
    }
    if u64::from(w) * u64::from(h) > MAX_PIXELS {
        return Err(format!(
            "the image is {w}×{h}, more than konv's limit of {MAX_PIXELS} pixels (a decompression bomb, or an image to shrink first)"
        ));
    }
    if w == 0 || h == 0 {
        return Err(format!("the image is {w}×{h} pixels"));
    }
    let img = DynamicImage::from_decoder(decoder).map_err(|e| e.to_string())?;
    Ok((img, cut))
}

/// Reads and decodes image file `path` as [`decode_image`] does.
///
/// # Errors
/// An unreadable file, or one [`decode_image`] refuses.
pub fn open_image(
    path: &Path,
    allow_truncated: bool,
) -> Result<(DynamicImage, Option<&'static str>), FolderError> {
    let bad = |reason: String| FolderError::BadImage {
        path: path.to_path_buf(),
        reason,
    };
    let len = std::fs::metadata(path)
        .map_err(|e| FolderError::io(path, e))?
        .len();
    if len > MAX_FILE_BYTES {
        return Err(bad(format!(
            "{len} bytes, more than the {MAX_FILE_BYTES} konv reads for one image"
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| FolderError::io(path, e))?;
    decode_image(&bytes, allow_truncated).map_err(bad)
}

fn open_reader(
    path: &Path,
) -> Result<image::ImageReader<std::io::BufReader<std::fs::File>>, String> {
    image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| e.to_string())
}

/// Whether any file holds a color image (read from the headers only).
fn any_color<'a>(files: impl Iterator<Item = &'a PathBuf>) -> Result<bool, FolderError> {
    use rayon::prelude::*;
    let files: Vec<&PathBuf> = files.collect();
    let found = AtomicBool::new(false);
    files.par_iter().for_each(|path| {
        if found.load(Ordering::Relaxed) {
            return;
        }
        let color = open_reader(path)
            .ok()
            .and_then(|r| r.into_decoder().ok())
            .map(|d| image::ImageDecoder::color_type(&d))
            .is_some_and(|c| c.has_color());
        if color {
            found.store(true, Ordering::Relaxed);
        }
    });
    Ok(found.into_inner())
}

/// A decoded image: width, height, its channel planes, and whether the file was cut short
/// (decoded anyway, as allowed).
type Decoded = (u32, u32, Vec<u8>, bool);

/// Decodes one file to `channels` planes of `size` (or its own size).
fn decode_one(
    path: &Path,
    channels: usize,
    image_size: Option<usize>,
    allow_truncated: bool,
) -> Result<Decoded, FolderError> {
    let (img, cut) = open_image(path, allow_truncated)?;
    let img = match image_size {
        Some(s) if (img.width(), img.height()) != (s as u32, s as u32) => {
            resize_center_crop(&img, s, [s, s])
        }
        _ => img,
    };
    let (w, h) = img.dimensions();
    Ok((w, h, planes(&img, channels), cut.is_some()))
}

/// The shorter side resized to `resize` (bilinear, antialiased), then the centre
/// `[height, width]` kept: torchvision's `Resize(resize)` + `CenterCrop(crop)`.
pub fn resize_center_crop(img: &DynamicImage, resize: usize, crop: [usize; 2]) -> DynamicImage {
    let (w, h) = (img.width().max(1), img.height().max(1));
    let [ch, cw] = crop.map(|c| c as u32);
    let scale = resize as f64 / w.min(h) as f64;
    let rw = ((w as f64 * scale).round() as u32).max(cw);
    let rh = ((h as f64 * scale).round() as u32).max(ch);
    let resized = img.resize_exact(rw, rh, FilterType::Triangle);
    resized.crop_imm((rw - cw) / 2, (rh - ch) / 2, cw, ch)
}

/// `img` as 8-bit channel planes, channel-first as the models take them: one (gray) or three
/// (RGB).
pub fn planes(img: &DynamicImage, channels: usize) -> Vec<u8> {
    if channels == 1 {
        return img.to_luma8().into_raw();
    }
    let rgb = img.to_rgb8().into_raw();
    let n = rgb.len() / 3;
    let mut planes = vec![0u8; 3 * n];
    for (i, px) in rgb.chunks_exact(3).enumerate() {
        planes[i] = px[0];
        planes[n + i] = px[1];
        planes[2 * n + i] = px[2];
    }
    planes
}

/// Decodes `list` in parallel on the current pool: the set, the files skipped and the
/// truncated files decoded anyway.
fn decode_list(
    list: &FileList,
    channels: usize,
    size: &mut Option<(u32, u32)>,
    options: &FolderOptions,
) -> Result<(ImageSet, Vec<PathBuf>, Vec<PathBuf>), FolderError> {
    use rayon::prelude::*;
    let decoded: Vec<Result<Decoded, FolderError>> = list
        .0
        .par_iter()
        .map(|(path, _)| decode_one(path, channels, options.image_size, options.allow_truncated))
        .collect();
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    let mut skipped = Vec::new();
    let mut truncated = Vec::new();
    for ((path, label), result) in list.0.iter().zip(decoded) {
        let (w, h, planes, cut) = match result {
            Ok(d) => d,
            Err(FolderError::BadImage { .. }) if options.skip_bad => {
                skipped.push(path.clone());
                continue;
            }
            Err(e) => return Err(e),
        };
        match *size {
            None => *size = Some((w, h)),
            Some((sw, sh)) if (sw, sh) != (w, h) => {
                return Err(FolderError::MixedSizes {
                    path: path.clone(),
                    got_w: w,
                    got_h: h,
                    want_w: sw,
                    want_h: sh,
                });
            }
            Some(_) => {}
        }
        if cut {
            truncated.push(path.clone());
        }
        pixels.extend_from_slice(&planes);
        labels.push(*label);
    }
    let (w, h) = size.unwrap_or((0, 0));
    Ok((
        ImageSet {
            images: IdxImages {
                count: labels.len(),
                channels,
                rows: h as usize,
                cols: w as usize,
                pixels,
            },
            labels,
        },
        skipped,
        truncated,
    ))
}

const CACHE_MAGIC: &[u8; 8] = b"KONVDIR1";

fn write_set(out: &mut Vec<u8>, set: Option<&ImageSet>) {
    let Some(set) = set else {
        out.push(0);
        return;
    };
    out.push(1);
    let i = &set.images;
    for v in [i.count, i.channels, i.rows, i.cols] {
        out.extend_from_slice(&(v as u64).to_le_bytes());
    }
    out.extend_from_slice(&i.pixels);
    out.extend_from_slice(&set.labels);
}

fn write_cache(file: &Path, folder: &ImageFolder) -> std::io::Result<()> {
    let mut out = CACHE_MAGIC.to_vec();
    out.extend_from_slice(&(folder.skipped.len() as u64).to_le_bytes());
    for p in &folder.skipped {
        let s = p.to_string_lossy();
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    write_set(&mut out, Some(&folder.train));
    write_set(&mut out, folder.val.as_ref());
    write_set(&mut out, folder.test.as_ref());
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // Written beside, then renamed: a killed run leaves no half cache.
    let tmp = file.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&out)?;
    f.sync_all()?;
    std::fs::rename(&tmp, file)
}

/// A reader over the cache bytes that fails (returns `None`) on anything short or odd.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        (self.0.len() >= n).then(|| {
            let (a, b) = self.0.split_at(n);
            self.0 = b;
            a
        })
    }

    fn u64(&mut self) -> Option<usize> {
        let v = u64::from_le_bytes(self.take(8)?.try_into().ok()?);
        usize::try_from(v).ok()
    }

    fn set(&mut self) -> Option<Option<ImageSet>> {
        match self.take(1)?[0] {
            0 => Some(None),
            1 => {
                let (count, channels, rows, cols) =
                    (self.u64()?, self.u64()?, self.u64()?, self.u64()?);
                let n = count
                    .checked_mul(channels)?
                    .checked_mul(rows)?
                    .checked_mul(cols)?;
                let pixels = self.take(n)?.to_vec();
                let labels = self.take(count)?.to_vec();
                Some(Some(ImageSet {
                    images: IdxImages {
                        count,
                        channels,
                        rows,
                        cols,
                        pixels,
                    },
                    labels,
                }))
            }
            _ => None,
        }
    }
}

/// The cached folder, when `file` holds a valid one for `layout`.
fn read_cache(file: &Path, layout: &FolderLayout) -> Option<ImageFolder> {
    let bytes = std::fs::read(file).ok()?;
    let mut c = Cursor(&bytes);
    if c.take(8)? != CACHE_MAGIC {
        return None;
    }
    let mut skipped = Vec::new();
    for _ in 0..c.u64()? {
        let n = c.u64()?;
        skipped.push(PathBuf::from(String::from_utf8(c.take(n)?.to_vec()).ok()?));
    }
    let train = c.set()??;
    let val = c.set()?;
    let test = c.set()?;
    let classes = layout.class_names.len();
    let ok = |s: &ImageSet| s.labels.iter().all(|&l| (l as usize) < classes);
    if !c.0.is_empty() || !ok(&train) || !val.iter().chain(&test).all(ok) {
        return None;
    }
    Some(ImageFolder {
        root: layout.root.clone(),
        class_names: layout.class_names.clone(),
        train,
        val,
        test,
        skipped,
        truncated: Vec::new(),
        from_cache: true,
    })
}

/// Per-channel mean and standard deviation of `set`'s pixels, in [0, 1].
pub fn channel_stats(set: &ImageSet) -> Vec<(f32, f32)> {
    let i = &set.images;
    let plane = i.rows * i.cols;
    (0..i.channels)
        .map(|c| {
            let (mut sum, mut sq, mut n) = (0f64, 0f64, 0f64);
            for k in 0..i.count {
                let start = (k * i.channels + c) * plane;
                for &p in &i.pixels[start..start + plane] {
                    let v = p as f64 / 255.0;
                    sum += v;
                    sq += v * v;
                    n += 1.0;
                }
            }
            let mean = sum / n.max(1.0);
            let var = (sq / n.max(1.0) - mean * mean).max(0.0);
            (mean as f32, (var.sqrt() as f32).max(1e-3))
        })
        .collect()
}

/// Writes `set` as `dir/<class>/<index>.png` (index zero-padded, in the set's order): the
/// layout [`FolderLayout::scan`] reads. Creates the class folders.
pub fn export_set(set: &ImageSet, class_names: &[String], dir: &Path) -> Result<(), FolderError> {
    let i = &set.images;
    // Everything checked before the first file is written.
    if i.channels != 1 && i.channels != 3 {
        return Err(FolderError::Channels(i.channels));
    }
    if i.count != set.len() || i.pixels.len() != set.len() * i.image_len() {
        return Err(FolderError::Export(format!(
            "{} labels and {} pixel bytes do not make {} images of {}×{}×{}",
            set.len(),
            i.pixels.len(),
            i.count,
            i.channels,
            i.rows,
            i.cols
        )));
    }
    if let Some(&label) = set
        .labels
        .iter()
        .find(|&&l| l as usize >= class_names.len())
    {
        return Err(FolderError::Export(format!(
            "label {label} has no class name ({} names given)",
            class_names.len()
        )));
    }
    let digits = set.len().max(1).to_string().len().max(5);
    for name in class_names {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).map_err(|e| FolderError::io(&d, e))?;
    }
    for (k, &label) in set.labels.iter().enumerate() {
        let path = dir
            .join(&class_names[label as usize])
            .join(format!("{k:0digits$}.png"));
        let px = i.image(k);
        let (w, h) = (i.cols as u32, i.rows as u32);
        let result = if i.channels == 1 {
            image::GrayImage::from_raw(w, h, px.to_vec()).map(DynamicImage::ImageLuma8)
        } else {
            let n = i.rows * i.cols;
            let rgb: Vec<u8> = (0..n)
                .flat_map(|p| [px[p], px[n + p], px[2 * n + p]])
                .collect();
            image::RgbImage::from_raw(w, h, rgb).map(DynamicImage::ImageRgb8)
        };
        let img = result.ok_or_else(|| FolderError::Write {
            path: path.clone(),
            reason: "pixel count does not match the size".into(),
        })?;
        img.save(&path).map_err(|e| FolderError::Write {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A test's own folder, removed when the test ends.
    fn temp(name: &str) -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix(&format!("konv-folder-{name}-"))
            .tempdir()
            .unwrap()
    }

    fn gray(path: &Path, w: u32, h: u32, v: u8) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        image::GrayImage::from_fn(w, h, |x, y| image::Luma([v.wrapping_add((x + y) as u8)]))
            .save(path)
            .unwrap();
    }

    fn rgb(path: &Path, w: u32, h: u32, c: [u8; 3]) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        image::RgbImage::from_pixel(w, h, image::Rgb(c))
            .save(path)
            .unwrap();
    }

    fn no_cache() -> FolderOptions {
        FolderOptions {
            cache: None,
            ..FolderOptions::default()
        }
    }

    #[test]
    fn a_flat_folder_gives_sorted_classes_and_gray_images() {
        let root_dir = temp("flat");
        let root = root_dir.path();
        gray(&root.join("zebra/b.png"), 6, 4, 10);
        gray(&root.join("zebra/a.PNG"), 6, 4, 20);
        gray(&root.join("ant/x.png"), 6, 4, 30);
        std::fs::write(root.join("ant/notes.txt"), "not an image").unwrap();
        let f = ImageFolder::open(root, &no_cache()).unwrap();
        assert_eq!(f.class_names, ["ant", "zebra"]);
        assert_eq!(f.train.labels, [0, 1, 1]);
        assert_eq!(f.input(), [1, 4, 6]);
        assert!(f.val.is_none() && f.test.is_none());
        // Files in name order within a class: a.PNG (20) before b.png (10).
        assert_eq!(f.train.images.image(1)[0], 20);
        assert_eq!(f.train.images.image(2)[0], 10);
    }

    #[test]
    fn train_val_test_splits_and_rgb_planes() {
        let root_dir = temp("splits");
        let root = root_dir.path();
        rgb(&root.join("train/cat/1.png"), 3, 3, [200, 100, 0]);
        rgb(&root.join("train/dog/1.png"), 3, 3, [0, 50, 250]);
        rgb(&root.join("val/dog/2.png"), 3, 3, [1, 2, 3]);
        rgb(&root.join("test/cat/3.png"), 3, 3, [4, 5, 6]);
        let f = ImageFolder::open(root, &no_cache()).unwrap();
        assert_eq!(f.class_names, ["cat", "dog"]);
        assert_eq!(f.input(), [3, 3, 3]);
        assert_eq!(f.val.as_ref().unwrap().labels, [1]);
        assert_eq!(f.test.as_ref().unwrap().labels, [0]);
        // Channel-first planes: nine reds, nine greens, nine blues.
        let px = f.train.images.image(0);
        assert_eq!((px[0], px[9], px[18]), (200, 100, 0));
        let stats = channel_stats(&f.train);
        assert!((stats[0].0 - 100.0 / 255.0).abs() < 1e-5, "{stats:?}");
        // Forced gray: one plane.
        let g = ImageFolder::open(
            root,
            &FolderOptions {
                channels: Some(1),
                ..no_cache()
            },
        )
        .unwrap();
        assert_eq!(g.input(), [1, 3, 3]);
        // A val/ class that train/ lacks.
        rgb(&root.join("val/bird/1.png"), 3, 3, [0, 0, 0]);
        let err = ImageFolder::open(root, &no_cache()).unwrap_err();
        assert!(err.to_string().contains("class `bird`"), "{err}");
    }

    #[test]
    fn bad_folders_are_clear_errors() {
        let root_dir = temp("bad");
        let root = root_dir.path();
        let err = ImageFolder::open(root, &no_cache()).unwrap_err();
        assert!(matches!(err, FolderError::NoImages(_)), "{err}");
        gray(&root.join("a/1.png"), 4, 4, 0);
        let err = ImageFolder::open(root, &no_cache()).unwrap_err();
        assert!(matches!(err, FolderError::SingleClass(..)), "{err}");
        std::fs::create_dir_all(root.join("b")).unwrap();
        let err = ImageFolder::open(root, &no_cache()).unwrap_err();
        assert!(
            matches!(err, FolderError::EmptyClass(ref p) if p.ends_with("b")),
            "{err}"
        );
        gray(&root.join("b/1.png"), 5, 4, 0);
        let err = ImageFolder::open(root, &no_cache()).unwrap_err();
        assert!(err.to_string().contains("5×4, the others 4×4"), "{err}");
        let resized = ImageFolder::open(
            root,
            &FolderOptions {
                image_size: Some(3),
                ..no_cache()
            },
        )
        .unwrap();
        assert_eq!(resized.input(), [1, 3, 3]);
        // A corrupt file: an error naming it, or skipped and counted.
        std::fs::write(root.join("b/2.jpg"), b"\xff\xd8\xff garbage").unwrap();
        let opts = FolderOptions {
            image_size: Some(3),
            ..no_cache()
        };
        let err = ImageFolder::open(root, &opts).unwrap_err();
        assert!(err.to_string().contains("2.jpg: cannot decode"), "{err}");
        let f = ImageFolder::open(
            root,
            &FolderOptions {
                skip_bad: true,
                ..opts
            },
        )
        .unwrap();
        assert_eq!(f.skipped.len(), 1);
        assert_eq!(f.train.len(), 2);
        assert!(f.to_string().contains("1 undecodable files skipped"), "{f}");
    }

    #[test]
    fn resize_keeps_the_centre_of_the_shorter_side() {
        // 8 wide, 4 high: left half black, right half white; resized to 2×… then centre.
        let img =
            image::GrayImage::from_fn(8, 4, |x, _| image::Luma([if x < 4 { 0 } else { 255 }]));
        let out = resize_center_crop(&DynamicImage::ImageLuma8(img), 2, [2, 2]).to_luma8();
        assert_eq!(out.dimensions(), (2, 2));
        // The centre 2 of 4 columns straddle the edge: dark left, light right.
        assert!(out.get_pixel(0, 0)[0] < 128 && out.get_pixel(1, 0)[0] > 128);
    }

    #[test]
    fn the_cache_returns_what_was_decoded_and_notices_changes() {
        let root_dir = temp("cache");
        let root = root_dir.path();
        let cache_dir = temp("cache-dir");
        let cache = cache_dir.path();
        gray(&root.join("a/1.png"), 4, 4, 1);
        gray(&root.join("b/1.png"), 4, 4, 2);
        let opts = FolderOptions {
            cache: Some(cache.to_path_buf()),
            ..FolderOptions::default()
        };
        let first = ImageFolder::open(root, &opts).unwrap();
        assert!(!first.from_cache);
        let second = ImageFolder::open(root, &opts).unwrap();
        assert!(second.from_cache);
        assert_eq!(first.train.images, second.train.images);
        assert_eq!(first.train.labels, second.train.labels);
        // A new file changes the key: decoded again.
        gray(&root.join("b/2.png"), 4, 4, 3);
        let third = ImageFolder::open(root, &opts).unwrap();
        assert!(!third.from_cache);
        assert_eq!(third.train.len(), 3);
        // A damaged cache file is ignored, not trusted.
        for entry in std::fs::read_dir(cache).unwrap() {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        }
        let fourth = ImageFolder::open(root, &opts).unwrap();
        assert!(!fourth.from_cache);
        assert_eq!(fourth.train.images, third.train.images);
    }

    #[test]
    fn exported_sets_read_back_exactly() {
        let root_dir = temp("export");
        let root = root_dir.path();
        let set = ImageSet {
            images: IdxImages {
                count: 3,
                channels: 3,
                rows: 2,
                cols: 2,
                pixels: (0..36).map(|i| (i * 7) as u8).collect(),
            },
            labels: vec![1, 0, 1],
        };
        let names = vec!["0-a".to_string(), "1-b".to_string()];
        // A label without a name, or pixels that do not fill the images: refused, nothing
        // written.
        let err = export_set(&set, &names[..1], &root.join("train")).unwrap_err();
        assert!(
            err.to_string().contains("label 1 has no class name"),
            "{err}"
        );
        let mut short = set.clone();
        short.images.pixels.pop();
        assert!(matches!(
            export_set(&short, &names, &root.join("train")),
            Err(FolderError::Export(_))
        ));
        assert!(!root.join("train").exists());
        export_set(&set, &names, &root.join("train")).unwrap();
        let f = ImageFolder::open(root, &no_cache()).unwrap();
        assert_eq!(f.class_names, names);
        // Class by class: image 1 (label 0), then images 0 and 2.
        assert_eq!(f.train.labels, [0, 1, 1]);
        assert_eq!(f.train.images.image(0), set.images.image(1));
        assert_eq!(f.train.images.image(1), set.images.image(0));
        assert_eq!(f.train.images.image(2), set.images.image(2));
    }

    /// `bytes` of an image encoded as `format`.
    fn encoded(img: DynamicImage, format: image::ImageFormat) -> Vec<u8> {
        let mut out = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut out), format)
            .unwrap();
        out
    }

    #[test]
    fn a_header_declaring_a_huge_image_is_refused_before_its_pixels_exist() {
        // A PNG whose IHDR (CRC fixed up) declares 20,000 × 20,000: 1.6 GB of RGBA pixels
        // from a file of 70 bytes.
        let mut png = encoded(
            DynamicImage::ImageRgba8(image::RgbaImage::new(1, 1)),
            image::ImageFormat::Png,
        );
        png[16..20].copy_from_slice(&20_000u32.to_be_bytes());
        png[20..24].copy_from_slice(&20_000u32.to_be_bytes());
        let mut crc = flate2::Crc::new();
        crc.update(&png[12..29]);
        png[29..33].copy_from_slice(&crc.sum().to_be_bytes());
        let err = decode_image(&png, true).unwrap_err();
        assert!(
            err.contains("20000×20000") && err.contains("limit"),
            "{err}"
        );
        // A JPEG whose frame header declares 12,000 × 12,000 (past the pixel limit, inside
        // the side limit).
        let mut jpg = encoded(
            DynamicImage::ImageLuma8(image::GrayImage::new(8, 8)),
            image::ImageFormat::Jpeg,
        );
        let sof = jpg.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        jpg[sof + 5..sof + 7].copy_from_slice(&12_000u16.to_be_bytes());
        jpg[sof + 7..sof + 9].copy_from_slice(&12_000u16.to_be_bytes());
        let err = decode_image(&jpg, true).unwrap_err();
        assert!(
            err.contains("12000×12000") && err.contains("pixels"),
            "{err}"
        );
        // The same files at their own size decode.
        let small = encoded(
            DynamicImage::ImageLuma8(image::GrayImage::new(8, 8)),
            image::ImageFormat::Jpeg,
        );
        assert_eq!(decode_image(&small, false).unwrap().0.width(), 8);
    }

    #[test]
    fn files_cut_short_are_refused_or_decoded_with_a_list() {
        let root_dir = temp("truncated");
        let root = root_dir.path();
        for (class, v) in [("a", 10u8), ("b", 90)] {
            for i in 0..2 {
                gray(&root.join(format!("{class}/{i}.png")), 32, 32, v + i);
            }
        }
        rgb(&root.join("b/photo.jpg"), 32, 32, [200, 10, 10]);
        let jpg = root.join("b/photo.jpg");
        assert_eq!(truncation(&jpg).unwrap(), None);
        assert_eq!(truncation(&root.join("a/0.png")).unwrap(), None);
        // Cut both files in the middle of their data.
        for path in [jpg.clone(), root.join("a/1.png")] {
            let bytes = std::fs::read(&path).unwrap();
            std::fs::write(&path, &bytes[..bytes.len() * 2 / 3]).unwrap();
        }
        assert!(truncation(&jpg).unwrap().unwrap().contains("JPEG"));
        assert!(
            truncation(&root.join("a/1.png"))
                .unwrap()
                .unwrap()
                .contains("IEND")
        );
        let options = FolderOptions {
            channels: Some(1),
            ..no_cache()
        };
        let err = ImageFolder::open(root, &options).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
        assert!(err.contains("1.png") || err.contains("photo.jpg"), "{err}");
        let allowed = ImageFolder::open(
            root,
            &FolderOptions {
                allow_truncated: true,
                ..options
            },
        );
        // The cut PNG may not decode at all (its data stream ends); the JPEG does, filled in.
        match allowed {
            Ok(f) => assert!(f.truncated.contains(&jpg), "{:?}", f.truncated),
            Err(e) => assert!(e.to_string().contains("1.png"), "{e}"),
        }
        std::fs::remove_dir_all(root).ok();
    }
}
