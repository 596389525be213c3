//! Reader for the IDX format of MNIST-style datasets (`idx1` labels, `idx3` images),
//! raw or gzip-compressed.
//!
//! The format is a 4-byte magic number (`0x00 0x00 type rank`), `rank` big-endian `u32`
//! dimensions, then the items as unsigned bytes. MNIST and Fashion-MNIST use type `0x08`
//! (`u8`), rank 1 for labels and rank 3 (`count × rows × cols`) for images.

use std::io::Read;
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;

/// The IDX type code for unsigned bytes, the only element type MNIST-style files use.
const TYPE_U8: u8 = 0x08;
/// Largest file, after decompression, that the reader accepts (the full MNIST training
/// images are 47 MB).
const MAX_BYTES: u64 = 1 << 31;

/// What went wrong while reading an IDX file; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum IdxError {
    /// The file could not be opened or read.
    #[error("{path}: cannot read: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The first four bytes are not an IDX magic number of the expected kind.
    #[error(
        "{path}: not an IDX {expected} file (magic bytes {found:02x?}, expected [00, 00, 08, {rank:02x}])"
    )]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// What the file should have held (`images` or `labels`).
        expected: &'static str,
        /// The rank the magic number should carry.
        rank: u8,
        /// The bytes found.
        found: [u8; 4],
    },
    /// A dimension is zero, or the header is cut short.
    #[error("{path}: bad header: {reason}")]
    BadHeader {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The data does not have the size the header announces.
    #[error(
        "{path}: header announces {expected} data bytes but the file holds {found} (truncated or corrupt; download it again)"
    )]
    SizeMismatch {
        /// The file.
        path: PathBuf,
        /// Bytes the header announces.
        expected: u64,
        /// Bytes found after the header.
        found: u64,
    },
    /// A label is not a valid class index.
    #[error(
        "{path}: label {label} at item {index} is out of range (the dataset has {classes} classes)"
    )]
    LabelOutOfRange {
        /// The file.
        path: PathBuf,
        /// The item.
        index: usize,
        /// The label found.
        label: u8,
        /// Number of classes.
        classes: usize,
    },
    /// The images and labels files hold different numbers of items.
    #[error(
        "{images} holds {image_count} images but {labels} holds {label_count} labels; the files do not belong together"
    )]
    CountMismatch {
        /// The images file.
        images: PathBuf,
        /// Items in it.
        image_count: usize,
        /// The labels file.
        labels: PathBuf,
        /// Items in it.
        label_count: usize,
    },
    /// The training and test images of one dataset differ in size.
    #[error(
        "{test} holds {test_rows}×{test_cols} images but {train} holds {train_rows}×{train_cols}; a model trained on one cannot be tested on the other (the files do not belong together)"
    )]
    ShapeMismatch {
        /// The training images file.
        train: PathBuf,
        /// Its image height.
        train_rows: usize,
        /// Its image width.
        train_cols: usize,
        /// The test images file.
        test: PathBuf,
        /// Its image height.
        test_rows: usize,
        /// Its image width.
        test_cols: usize,
    },
}

/// A stack of 8-bit images of one size: read from an `idx3` file (grayscale), or decoded
/// from an image folder (gray or RGB).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxImages {
    /// Number of images.
    pub count: usize,
    /// Channels per image (1 for IDX files; 3 for RGB), stored as planes: an image's first
    /// channel, then its second …
    pub channels: usize,
    /// Image height.
    pub rows: usize,
    /// Image width.
    pub cols: usize,
    /// `count × channels × rows × cols` pixels, row-major, 0 = black.
    pub pixels: Vec<u8>,
}

impl IdxImages {
    /// Bytes per image: `channels × rows × cols`.
    pub fn image_len(&self) -> usize {
        self.channels * self.rows * self.cols
    }

    /// The pixels of image `index`.
    pub fn image(&self, index: usize) -> &[u8] {
        let size = self.image_len();
        &self.pixels[index * size..(index + 1) * size]
    }
}

/// Reads an IDX file of `rank` dimensions (raw, or gzip when it starts with gzip's magic
/// bytes) with bounded work: the header first, then at most the data it announces plus one
/// byte (to detect trailing data). A header announcing more than konv reads (2 GiB) is
/// refused before anything else is read or inflated, so a small gzip bomb costs nothing.
pub fn read_bounded(path: &Path, rank: u8) -> Result<Vec<u8>, IdxError> {
    let io = |source| IdxError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::io::BufReader::new(std::fs::File::open(path).map_err(io)?);
    let mut magic = Vec::with_capacity(2);
    (&mut file).take(2).read_to_end(&mut magic).map_err(io)?;
    let mut reader: Box<dyn Read> = if magic == [0x1f, 0x8b] {
        Box::new(GzDecoder::new(std::io::Cursor::new(magic).chain(file)))
    } else {
        Box::new(std::io::Cursor::new(magic).chain(file))
    };
    let header_len = 4 + 4 * rank as usize;
    let mut bytes = Vec::with_capacity(header_len);
    (&mut reader)
        .take(header_len as u64)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() == header_len && bytes[..3] == [0, 0, TYPE_U8] && bytes[3] == rank {
        let announced = bytes[4..]
            .chunks_exact(4)
            .map(|b| u64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]])))
            .try_fold(1u64, u64::checked_mul)
            .unwrap_or(u64::MAX);
        if announced > MAX_BYTES {
            return Err(IdxError::BadHeader {
                path: path.to_path_buf(),
                reason: format!(
                    "it announces {announced} bytes of data, more than konv reads ({MAX_BYTES}); the file is corrupt or not a dataset"
                ),
            });
        }
        reader
            .take(announced + 1)
            .read_to_end(&mut bytes)
            .map_err(io)?;
    }
    // (A bad magic number or a short header: `parse` says which.)
    Ok(bytes)
}

/// Parses the header of an IDX buffer of unsigned bytes with the given rank, and checks
/// that the data after it has exactly the announced size. Returns the dimensions and the data.
fn parse<'a>(
    path: &Path,
    bytes: &'a [u8],
    rank: u8,
    expected: &'static str,
) -> Result<(Vec<usize>, &'a [u8]), IdxError> {
    let header_len = 4 + 4 * rank as usize;
    if bytes.len() < 4 {
        return Err(IdxError::BadHeader {
            path: path.to_path_buf(),
            reason: format!("file is only {} bytes long", bytes.len()),
        });
    }
    let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
    if magic != [0, 0, TYPE_U8, rank] {
        return Err(IdxError::BadMagic {
            path: path.to_path_buf(),
            expected,
            rank,
            found: magic,
        });
    }
    if bytes.len() < header_len {
        return Err(IdxError::BadHeader {
            path: path.to_path_buf(),
            reason: format!(
                "{} dimensions announced but the file ends after {} bytes",
                rank,
                bytes.len()
            ),
        });
    }
    let dims: Vec<usize> = bytes[4..header_len]
        .chunks_exact(4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .collect();
    if let Some(axis) = dims.iter().position(|&d| d == 0) {
        return Err(IdxError::BadHeader {
            path: path.to_path_buf(),
            reason: format!("dimension {axis} is zero"),
        });
    }
    let expected_len = dims.iter().map(|&d| d as u64).product::<u64>();
    let data = &bytes[header_len..];
    if data.len() as u64 > expected_len {
        return Err(IdxError::BadHeader {
            path: path.to_path_buf(),
            reason: format!(
                "the data runs past the {expected_len} bytes the header announces (trailing data; corrupt or not this kind of file)"
            ),
        });
    }
    if data.len() as u64 != expected_len {
        return Err(IdxError::SizeMismatch {
            path: path.to_path_buf(),
            expected: expected_len,
            found: data.len() as u64,
        });
    }
    Ok((dims, data))
}

/// Parses an `idx3` images buffer that was read from `path` (used in errors).
pub fn parse_images(path: &Path, bytes: &[u8]) -> Result<IdxImages, IdxError> {
    let (dims, data) = parse(path, bytes, 3, "images (idx3)")?;
    Ok(IdxImages {
        count: dims[0],
        channels: 1,
        rows: dims[1],
        cols: dims[2],
        pixels: data.to_vec(),
    })
}

/// Parses an `idx1` labels buffer read from `path`, checking every label is below `classes`.
pub fn parse_labels(path: &Path, bytes: &[u8], classes: usize) -> Result<Vec<u8>, IdxError> {
    let (_, data) = parse(path, bytes, 1, "labels (idx1)")?;
    if let Some((index, &label)) = data
        .iter()
        .enumerate()
        .find(|&(_, &l)| l as usize >= classes)
    {
        return Err(IdxError::LabelOutOfRange {
            path: path.to_path_buf(),
            index,
            label,
            classes,
        });
    }
    Ok(data.to_vec())
}

/// Reads an `idx3` images file (raw or `.gz`).
pub fn read_images(path: &Path) -> Result<IdxImages, IdxError> {
    parse_images(path, &read_bounded(path, 3)?)
}

/// Reads an `idx1` labels file (raw or `.gz`), checking every label is below `classes`.
pub fn read_labels(path: &Path, classes: usize) -> Result<Vec<u8>, IdxError> {
    parse_labels(path, &read_bounded(path, 1)?, classes)
}

/// Checks that an images file and a labels file hold the same number of items.
pub fn check_pair(
    images_path: &Path,
    images: &IdxImages,
    labels_path: &Path,
    labels: &[u8],
) -> Result<(), IdxError> {
    if images.count != labels.len() {
        return Err(IdxError::CountMismatch {
            images: images_path.to_path_buf(),
            image_count: images.count,
            labels: labels_path.to_path_buf(),
            label_count: labels.len(),
        });
    }
    Ok(())
}

/// Encodes images as an `idx3` buffer (uncompressed).
pub fn encode_images(images: &IdxImages) -> Vec<u8> {
    let mut out = vec![0, 0, TYPE_U8, 3];
    for d in [images.count, images.rows, images.cols] {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(&images.pixels);
    out
}

/// Encodes labels as an `idx1` buffer (uncompressed).
pub fn encode_labels(labels: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, TYPE_U8, 1];
    out.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    out.extend_from_slice(labels);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn images(count: usize) -> IdxImages {
        IdxImages {
            count,
            channels: 1,
            rows: 2,
            cols: 3,
            pixels: (0..count * 6).map(|i| i as u8).collect(),
        }
    }

    fn p() -> &'static Path {
        Path::new("test.idx")
    }

    #[test]
    fn round_trip() {
        let imgs = images(4);
        assert_eq!(parse_images(p(), &encode_images(&imgs)).unwrap(), imgs);
        let labels = vec![0, 3, 9, 1];
        assert_eq!(
            parse_labels(p(), &encode_labels(&labels), 10).unwrap(),
            labels
        );
        assert_eq!(imgs.image(1), &[6, 7, 8, 9, 10, 11]);
    }

    #[test]
    fn truncated_file_is_a_size_error() {
        let mut bytes = encode_images(&images(4));
        bytes.truncate(bytes.len() - 5);
        let err = parse_images(p(), &bytes).unwrap_err();
        assert!(
            matches!(
                err,
                IdxError::SizeMismatch {
                    expected: 24,
                    found: 19,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().starts_with("test.idx:"));
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let mut bytes = encode_labels(&[1, 2]);
        bytes.push(0);
        // (Trailing data is read only one byte past what the header announces.)
        assert!(matches!(
            parse_labels(p(), &bytes, 10),
            Err(IdxError::BadHeader { ref reason, .. }) if reason.contains("trailing data")
        ));
    }

    #[test]
    fn wrong_magic_is_an_error() {
        // A labels file given where images are expected.
        let err = parse_images(p(), &encode_labels(&[1, 2])).unwrap_err();
        assert!(matches!(err, IdxError::BadMagic { .. }));
        assert!(err.to_string().contains("not an IDX images"));
        let err = parse_labels(p(), b"PK\x03\x04junk", 10).unwrap_err();
        assert!(matches!(err, IdxError::BadMagic { .. }));
    }

    #[test]
    fn short_header_and_zero_dims_are_errors() {
        assert!(matches!(
            parse_images(p(), &[0, 0]),
            Err(IdxError::BadHeader { .. })
        ));
        assert!(matches!(
            parse_images(p(), &[0, 0, 8, 3, 0, 0, 0, 1]),
            Err(IdxError::BadHeader { .. })
        ));
        let mut zero = images(1);
        zero.count = 0;
        zero.pixels.clear();
        assert!(matches!(
            parse_images(p(), &encode_images(&zero)),
            Err(IdxError::BadHeader { .. })
        ));
    }

    #[test]
    fn labels_out_of_range_are_an_error() {
        let err = parse_labels(p(), &encode_labels(&[1, 10, 2]), 10).unwrap_err();
        assert!(matches!(
            err,
            IdxError::LabelOutOfRange {
                index: 1,
                label: 10,
                ..
            }
        ));
    }

    #[test]
    fn count_mismatch_names_both_files() {
        let err = check_pair(Path::new("a"), &images(3), Path::new("b"), &[1, 2]).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("a holds 3 images") && msg.contains("b holds 2 labels"),
            "{msg}"
        );
    }

    #[test]
    fn gzip_files_are_read() {
        use flate2::{Compression, write::GzEncoder};
        use std::io::Write;
        let dir = std::env::temp_dir().join(format!("konv-idx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("labels.gz");
        let mut enc = GzEncoder::new(Vec::new(), Compression::default());
        enc.write_all(&encode_labels(&[4, 5, 6])).unwrap();
        std::fs::write(&path, enc.finish().unwrap()).unwrap();
        assert_eq!(read_labels(&path, 10).unwrap(), vec![4, 5, 6]);
        let missing = read_labels(&dir.join("nope"), 10).unwrap_err();
        assert!(matches!(missing, IdxError::Io { .. }));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_gzip_bomb_is_refused_from_its_header() {
        use flate2::{Compression, write::GzEncoder};
        use std::io::Write;
        let dir = std::env::temp_dir().join(format!("konv-idx-bomb-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // A header claiming 10⁹ images of 28×28, then 8 MiB of zeros that would inflate on.
        let mut enc = GzEncoder::new(Vec::new(), Compression::best());
        let mut header = vec![0, 0, TYPE_U8, 3];
        for d in [1_000_000_000u32, 28, 28] {
            header.extend_from_slice(&d.to_be_bytes());
        }
        enc.write_all(&header).unwrap();
        enc.write_all(&vec![0u8; 8 << 20]).unwrap();
        let path = dir.join("bomb-idx3-ubyte.gz");
        std::fs::write(&path, enc.finish().unwrap()).unwrap();
        let start = std::time::Instant::now();
        let err = read_images(&path).unwrap_err().to_string();
        assert!(err.contains("announces 784000000000 bytes"), "{err}");
        assert!(
            start.elapsed().as_secs_f64() < 1.0,
            "refused from the header alone"
        );
        // The same bound for a raw file; a file with trailing data is still caught.
        let raw = dir.join("trailing-idx3-ubyte");
        let mut bytes = encode_images(&IdxImages {
            count: 1,
            channels: 1,
            rows: 2,
            cols: 2,
            pixels: vec![1, 2, 3, 4],
        });
        bytes.extend_from_slice(&[9, 9, 9]);
        std::fs::write(&raw, &bytes).unwrap();
        let err = read_images(&raw).unwrap_err().to_string();
        assert!(err.contains("runs past the 4 bytes"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
