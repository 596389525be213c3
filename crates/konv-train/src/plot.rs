//! Training curves as a PNG (plotters): loss, accuracy (train vs validation) and the
//! learning rate against the epoch, redrawn into the run folder after every epoch.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;

use crate::TrainError;
use crate::record::EpochMetrics;

/// Bundled so that drawing text needs no system font (DejaVu Sans, free license in
/// `assets/DejaVuSans-LICENSE.txt`).
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for style in [FontStyle::Normal, FontStyle::Bold] {
            plotters::style::register_font("sans-serif", style, FONT)
                .unwrap_or_else(|_| panic!("the bundled font is valid"));
        }
    });
}

/// Width and height of the picture.
pub const SIZE: (u32, u32) = (1200, 400);

/// Draws the curves of `history` into an RGB buffer of [`SIZE`].
pub fn draw_curves(history: &[EpochMetrics]) -> Result<Vec<u8>, String> {
    register_font();
    let (w, h) = SIZE;
    let mut buffer = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let panels = root.split_evenly((1, 3));
        let last = history.last().map_or(1, |m| m.epoch).max(2) as f64;
        let epochs: Vec<f64> = history.iter().map(|m| m.epoch as f64).collect();
        // Only finite points: a run without validation records NaN there.
        let series = |f: fn(&EpochMetrics) -> f64| -> Vec<(f64, f64)> {
            epochs
                .iter()
                .zip(history)
                .map(|(&e, m)| (e, f(m)))
                .filter(|(_, v)| v.is_finite())
                .collect()
        };
        type Curve = (&'static str, fn(&EpochMetrics) -> f64, RGBColor);
        let plots: [(&str, Vec<Curve>); 3] = [
            (
                "loss",
                vec![
                    ("train", |m| m.train_loss, BLUE),
                    ("validation", |m| m.val_loss, RED),
                ],
            ),
            (
                "accuracy (%)",
                vec![
                    ("train", |m| 100.0 * m.train_accuracy, BLUE),
                    ("validation", |m| 100.0 * m.val_accuracy, RED),
                ],
            ),
            ("learning rate", vec![("lr", |m| m.lr, BLACK)]),
        ];
        for (panel, (title, curves)) in panels.iter().zip(plots) {
            let values: Vec<f64> = curves
                .iter()
                .flat_map(|(_, f, _)| history.iter().map(f))
                .filter(|v| v.is_finite())
                .collect();
            let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let (lo, hi) = if lo.is_finite() && hi > lo {
                let pad = 0.05 * (hi - lo);
                (lo - pad, hi + pad)
            } else if lo.is_finite() {
                (lo - 0.5 * lo.abs().max(1e-3), hi + 0.5 * hi.abs().max(1e-3))
            } else {
                (0.0, 1.0)
            };
            let mut chart = ChartBuilder::on(panel)
                .caption(title, ("sans-serif", 20))
                .margin(10)
                .x_label_area_size(35)
                .y_label_area_size(60)
                .build_cartesian_2d(1.0..last, lo..hi)
                .map_err(|e| e.to_string())?;
            let span = hi - lo;
            chart
                .configure_mesh()
                .x_desc("epoch")
                .x_labels((last as usize).min(12))
                // Whole epochs only.
                .x_label_formatter(&|x| {
                    if (x - x.round()).abs() < 1e-6 {
                        format!("{x:.0}")
                    } else {
                        String::new()
                    }
                })
                .y_label_formatter(&|y| {
                    if hi.abs() < 0.01 {
                        format!("{y:.1e}")
                    } else if span >= 10.0 {
                        format!("{y:.0}")
                    } else if span >= 1.0 {
                        format!("{y:.1}")
                    } else {
                        format!("{y:.3}")
                    }
                })
                .draw()
                .map_err(|e| e.to_string())?;
            for (name, f, color) in curves {
                let points = series(f);
                if points.is_empty() {
                    continue;
                }
                chart
                    .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                    .map_err(|e| e.to_string())?
                    .label(name)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                    });
                chart
                    .draw_series(
                        points
                            .into_iter()
                            .map(|p| Circle::new(p, 3, color.filled())),
                    )
                    .map_err(|e| e.to_string())?;
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .label_font(("sans-serif", 14))
                .draw()
                .map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(buffer)
}

/// [`draw_curves`] written as a PNG to `path` (atomically).
pub fn save_curves(path: &Path, history: &[EpochMetrics]) -> Result<(), TrainError> {
    let corrupt = |reason: String| TrainError::Image {
        path: path.to_path_buf(),
        reason,
    };
    let buffer = draw_curves(history).map_err(corrupt)?;
    let picture = image::RgbImage::from_raw(SIZE.0, SIZE.1, buffer)
        .ok_or_else(|| corrupt("buffer size".into()))?;
    save_png(path, &picture)
}

/// `img` encoded as PNG; `path` names it in the error.
pub fn encode_png<P>(
    img: &image::ImageBuffer<P, Vec<P::Subpixel>>,
    path: &Path,
) -> Result<Vec<u8>, TrainError>
where
    P: image::Pixel + image::PixelWithColorType,
    [P::Subpixel]: image::EncodableLayout,
{
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| TrainError::Image {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    Ok(png)
}

/// Writes `img` to `path` as PNG, atomically.
pub fn save_png<P>(
    path: &Path,
    img: &image::ImageBuffer<P, Vec<P::Subpixel>>,
) -> Result<(), TrainError>
where
    P: image::Pixel + image::PixelWithColorType,
    [P::Subpixel]: image::EncodableLayout,
{
    let png = encode_png(img, path)?;
    crate::record::write_atomic(path, &png).map_err(|e| TrainError::io(path, e))
}

/// Writes `text` on `img` at `(x, y)` (top-left), white on a strip of `color`, in the
/// bundled font: labels of predicted boxes and masks.
pub fn draw_label(img: &mut image::RgbImage, text: &str, x: u32, y: u32, color: image::Rgb<u8>) {
    register_font();
    let (w, h) = img.dimensions();
    let strip_w = (7 * text.chars().count() as u32 + 6).min(w.saturating_sub(x));
    let strip_h = 14.min(h.saturating_sub(y));
    for yy in y..y + strip_h {
        for xx in x..x + strip_w {
            img.put_pixel(xx, yy, color);
        }
    }
    let mut buffer = std::mem::take(img).into_raw();
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (w, h)).into_drawing_area();
        let style = ("sans-serif", 12).into_font().color(&WHITE);
        // Drawing outside the picture is clipped by plotters; an error leaves the strip.
        let _ = root.draw_text(text, &style, (x as i32 + 3, y as i32 + 1));
        let _ = root.present();
    }
    *img = image::RgbImage::from_raw(w, h, buffer).expect("same size");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch(e: usize, acc: f64) -> EpochMetrics {
        EpochMetrics {
            epoch: e,
            train_loss: 1.0 / e as f64,
            train_accuracy: acc,
            val_loss: 1.2 / e as f64,
            val_accuracy: acc - 0.02,
            lr: 0.1 / e as f64,
            images_per_sec: 100.0,
            seconds: 1.0,
        }
    }

    #[test]
    fn curves_draw_for_one_and_many_epochs() {
        for n in [1, 5] {
            let history: Vec<EpochMetrics> =
                (1..=n).map(|e| epoch(e, 0.5 + 0.05 * e as f64)).collect();
            let rgb = draw_curves(&history).unwrap();
            assert_eq!(rgb.len(), (SIZE.0 * SIZE.1 * 3) as usize);
            // Not blank: the red validation curve is there.
            let red = rgb
                .chunks(3)
                .filter(|p| p[0] > 200 && p[1] < 60 && p[2] < 60)
                .count();
            assert!(red > 50, "{red} red pixels");
        }
        // A run without validation: no validation curve (nor its legend), the rest drawn.
        let unvalidated: Vec<EpochMetrics> = (1..=3)
            .map(|e| EpochMetrics {
                val_loss: f64::NAN,
                val_accuracy: f64::NAN,
                ..epoch(e, 0.6)
            })
            .collect();
        let rgb = draw_curves(&unvalidated).unwrap();
        let count = |keep: fn(&[u8]) -> bool| rgb.chunks(3).filter(|p| keep(p)).count();
        assert_eq!(count(|p| p[0] > 200 && p[1] < 60 && p[2] < 60), 0);
        assert!(count(|p| p[2] > 200 && p[0] < 60 && p[1] < 60) > 50);
        let dir = std::env::temp_dir().join(format!("konv-curves-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("curves.png");
        save_curves(&path, &[epoch(1, 0.6), epoch(2, 0.7)]).unwrap();
        let img = image::open(&path).unwrap();
        assert_eq!((img.width(), img.height()), SIZE);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
