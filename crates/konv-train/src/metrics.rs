//! Metrics beyond classification accuracy: intersection over union of boxes, mean IoU and
//! pixel accuracy of segmentation masks (accumulated over a dataset, as torchvision's
//! segmentation reference and Keras' `MeanIoU` do), and for detection greedy non-maximum
//! suppression and PASCAL VOC's average precision (mAP@0.5).

/// Intersection over union of two boxes `[x0, y0, x1, y1]`; 0 when both are empty.
pub fn box_iou(a: [f32; 4], b: [f32; 4]) -> f32 {
    let area = |r: [f32; 4]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let inter = [
        a[0].max(b[0]),
        a[1].max(b[1]),
        a[2].min(b[2]),
        a[3].min(b[3]),
    ];
    let i = area(inter);
    let union = area(a) + area(b) - i;
    if union > 0.0 { i / union } else { 0.0 }
}

/// Mean [`box_iou`] of predicted boxes against their targets, pair by pair.
pub fn mean_box_iou(predicted: &[[f32; 4]], target: &[[f32; 4]]) -> f32 {
    assert_eq!(predicted.len(), target.len(), "one target per prediction");
    if predicted.is_empty() {
        return 0.0;
    }
    predicted
        .iter()
        .zip(target)
        .map(|(p, t)| box_iou(*p, *t))
        .sum::<f32>()
        / predicted.len() as f32
}

/// Greedy non-maximum suppression: the indices of the boxes kept, best score first. A box
/// is dropped when its IoU with an already kept box exceeds `iou_threshold` (torchvision's
/// `nms`; run it per class for class-aware suppression).
pub fn nms(boxes: &[[f32; 4]], scores: &[f32], iou_threshold: f32) -> Vec<usize> {
    assert_eq!(boxes.len(), scores.len(), "one score per box");
    let mut order: Vec<usize> = (0..boxes.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut kept: Vec<usize> = Vec::new();
    for i in order {
        if kept
            .iter()
            .all(|&k| box_iou(boxes[k], boxes[i]) <= iou_threshold)
        {
            kept.push(i);
        }
    }
    kept
}

/// One predicted box of a detector.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    /// Which image.
    pub image: usize,
    /// Predicted class.
    pub class: usize,
    /// Confidence.
    pub score: f32,
    /// `[x0, y0, x1, y1]`.
    pub bbox: [f32; 4],
}

/// One true object.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroundTruth {
    /// Which image.
    pub image: usize,
    /// Its class.
    pub class: usize,
    /// `[x0, y0, x1, y1]`.
    pub bbox: [f32; 4],
}

/// Average precision of each class at IoU `iou` (PASCAL VOC 2010+: the area under the
/// precision–recall curve with precision made monotone, all points). Detections are
/// matched best score first, each true object at most once; a second detection of a
/// matched object is a false positive. `None` for a class with no true objects.
pub fn average_precision(
    detections: &[Detection],
    truths: &[GroundTruth],
    classes: usize,
    iou: f32,
) -> Vec<Option<f64>> {
    (0..classes)
        .map(|class| {
            let objects: Vec<&GroundTruth> = truths.iter().filter(|t| t.class == class).collect();
            if objects.is_empty() {
                return None;
            }
            let mut dets: Vec<&Detection> =
                detections.iter().filter(|d| d.class == class).collect();
            dets.sort_by(|a, b| b.score.total_cmp(&a.score));
            let mut used = vec![false; objects.len()];
            let (mut tp, mut fp) = (0usize, 0usize);
            let mut points = Vec::with_capacity(dets.len());
            for d in dets {
                let best = objects
                    .iter()
                    .enumerate()
                    .filter(|(_, t)| t.image == d.image)
                    .map(|(j, t)| (j, box_iou(d.bbox, t.bbox)))
                    .max_by(|a, b| a.1.total_cmp(&b.1));
                match best {
                    Some((j, overlap)) if overlap >= iou && !used[j] => {
                        used[j] = true;
                        tp += 1;
                    }
                    _ => fp += 1,
                }
                points.push((
                    tp as f64 / objects.len() as f64,
                    tp as f64 / (tp + fp) as f64,
                ));
            }
            // Precision envelope from the right, then the area under the step curve.
            let mut ap = 0.0;
            let mut prev_recall = 0.0;
            for k in 0..points.len() {
                let recall = points[k].0;
                if recall > prev_recall {
                    let precision = points[k..].iter().map(|p| p.1).fold(0.0, f64::max);
                    ap += (recall - prev_recall) * precision;
                    prev_recall = recall;
                }
            }
            Some(ap)
        })
        .collect()
}

/// Mean of [`average_precision`] over the classes that have objects (mAP@`iou`).
pub fn mean_average_precision(
    detections: &[Detection],
    truths: &[GroundTruth],
    classes: usize,
    iou: f32,
) -> f64 {
    let aps: Vec<f64> = average_precision(detections, truths, classes, iou)
        .into_iter()
        .flatten()
        .collect();
    if aps.is_empty() {
        0.0
    } else {
        aps.iter().sum::<f64>() / aps.len() as f64
    }
}

/// Pixel counts of a segmentation run: `confusion[target][predicted]`.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentationMetrics {
    /// `classes × classes` pixel counts.
    pub confusion: Vec<Vec<u64>>,
    /// Pixels with this target label are not counted (e.g. 255, VOC's boundary label).
    pub ignore: Option<u8>,
}

impl SegmentationMetrics {
    /// Empty counts for `classes` classes.
    pub fn new(classes: usize, ignore: Option<u8>) -> Self {
        Self {
            confusion: vec![vec![0; classes]; classes],
            ignore,
        }
    }

    /// Adds one mask's (or a batch's) pixels: `predicted` and `target` labels, same length.
    pub fn update(&mut self, predicted: &[u8], target: &[u8]) {
        assert_eq!(predicted.len(), target.len(), "one prediction per pixel");
        let classes = self.confusion.len();
        for (&p, &t) in predicted.iter().zip(target) {
            if Some(t) == self.ignore || t as usize >= classes {
                continue;
            }
            self.confusion[t as usize][(p as usize).min(classes - 1)] += 1;
        }
    }

    /// Share of counted pixels labelled correctly.
    pub fn pixel_accuracy(&self) -> f64 {
        let total: u64 = self.confusion.iter().flatten().sum();
        let right: u64 = (0..self.confusion.len())
            .map(|c| self.confusion[c][c])
            .sum();
        if total == 0 {
            0.0
        } else {
            right as f64 / total as f64
        }
    }

    /// IoU of each class (`None` for a class neither predicted nor present).
    pub fn class_iou(&self) -> Vec<Option<f64>> {
        let n = self.confusion.len();
        (0..n)
            .map(|c| {
                let tp = self.confusion[c][c];
                let target: u64 = self.confusion[c].iter().sum();
                let predicted: u64 = (0..n).map(|t| self.confusion[t][c]).sum();
                let union = target + predicted - tp;
                (union > 0).then(|| tp as f64 / union as f64)
            })
            .collect()
    }

    /// Mean IoU over the classes that occur (in targets or predictions).
    pub fn mean_iou(&self) -> f64 {
        let ious: Vec<f64> = self.class_iou().into_iter().flatten().collect();
        if ious.is_empty() {
            0.0
        } else {
            ious.iter().sum::<f64>() / ious.len() as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn box_iou_by_hand() {
        assert_eq!(box_iou([0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 2.0]), 1.0);
        // Overlap 1×2 = 2; union 4 + 4 − 2 = 6.
        assert!((box_iou([0.0, 0.0, 2.0, 2.0], [1.0, 0.0, 3.0, 2.0]) - 2.0 / 6.0).abs() < 1e-6);
        assert_eq!(box_iou([0.0, 0.0, 1.0, 1.0], [2.0, 2.0, 3.0, 3.0]), 0.0);
        assert_eq!(box_iou([0.0; 4], [0.0; 4]), 0.0);
        let m = mean_box_iou(
            &[[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]],
            &[[0.0, 0.0, 2.0, 2.0], [2.0, 2.0, 3.0, 3.0]],
        );
        assert!((m - 0.5).abs() < 1e-6);
    }

    #[test]
    fn segmentation_metrics_by_hand() {
        // 3 classes, 8 pixels, one ignored.
        let target = [0, 0, 1, 1, 1, 2, 2, 255];
        let predicted = [0, 1, 1, 1, 0, 2, 0, 2];
        let mut m = SegmentationMetrics::new(3, Some(255));
        m.update(&predicted, &target);
        // Right: pixels 0, 2, 3, 5 → 4 of 7 counted.
        assert!((m.pixel_accuracy() - 4.0 / 7.0).abs() < 1e-12);
        // Class 0: tp 1, target 2, predicted 3 → 1/4. Class 1: tp 2, target 3, predicted 3
        // → 2/4. Class 2: tp 1, target 2, predicted 1 → 1/2.
        let iou: Vec<f64> = m.class_iou().into_iter().map(Option::unwrap).collect();
        assert_eq!(iou, vec![0.25, 0.5, 0.5]);
        assert!((m.mean_iou() - 1.25 / 3.0).abs() < 1e-12);
        // A class that never occurs does not count in the mean.
        let mut m = SegmentationMetrics::new(4, None);
        m.update(&[0, 1], &[0, 1]);
        assert_eq!(m.class_iou()[3], None);
        assert_eq!(m.mean_iou(), 1.0);
    }

    #[test]
    fn nms_keeps_the_best_of_each_cluster() {
        let boxes = [
            [0.0, 0.0, 10.0, 10.0],
            [1.0, 1.0, 11.0, 11.0], // IoU with 0: 81 / 119 = 0.68
            [20.0, 20.0, 30.0, 30.0],
            [0.0, 0.0, 10.0, 5.0], // IoU with 0: 0.5 exactly, kept at threshold 0.5
        ];
        let scores = [0.9, 0.95, 0.5, 0.3];
        assert_eq!(nms(&boxes, &scores, 0.5), vec![1, 2, 3]);
        assert_eq!(nms(&boxes, &scores, 0.7), vec![1, 0, 2, 3]);
        assert_eq!(nms(&boxes, &scores, 0.3), vec![1, 2]);
        assert!(nms(&[], &[], 0.5).is_empty());
    }

    #[test]
    fn average_precision_by_hand() {
        let t = |image, bbox| GroundTruth {
            image,
            class: 0,
            bbox,
        };
        let d = |image, score, bbox| Detection {
            image,
            class: 0,
            score,
            bbox,
        };
        let a = [0.0, 0.0, 10.0, 10.0];
        let b = [20.0, 20.0, 30.0, 30.0];
        let far = [50.0, 50.0, 60.0, 60.0];
        let truths = [t(0, a), t(0, b), t(1, a)];
        // Ranked: hit, miss, hit, duplicate of a hit, hit.
        // (recall, precision): (1/3, 1), (1/3, 1/2), (2/3, 2/3), (2/3, 1/2), (1, 3/5).
        // Envelope: 1 up to 1/3, 2/3 up to 2/3, 3/5 up to 1 → AP = 1/3 + 2/9 + 1/5.
        let dets = [
            d(0, 0.9, a),
            d(0, 0.8, far),
            d(1, 0.7, a),
            d(1, 0.6, a),
            d(0, 0.5, b),
        ];
        let ap = average_precision(&dets, &truths, 2, 0.5);
        assert!(
            (ap[0].unwrap() - (1.0 / 3.0 + 2.0 / 9.0 + 1.0 / 5.0)).abs() < 1e-12,
            "{ap:?}"
        );
        assert_eq!(ap[1], None);
        // Perfect detections: AP 1; nothing detected: AP 0.
        let perfect: Vec<Detection> = truths.iter().map(|g| d(g.image, 1.0, g.bbox)).collect();
        assert_eq!(mean_average_precision(&perfect, &truths, 2, 0.5), 1.0);
        assert_eq!(mean_average_precision(&[], &truths, 2, 0.5), 0.0);
        // A box with IoU 0.68 counts at 0.5 and not at 0.75.
        let shifted = [d(0, 1.0, [1.0, 1.0, 11.0, 11.0])];
        let one = [t(0, a)];
        assert_eq!(mean_average_precision(&shifted, &one, 1, 0.5), 1.0);
        assert_eq!(mean_average_precision(&shifted, &one, 1, 0.75), 0.0);
    }
}
