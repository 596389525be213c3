//! Metrics beyond classification accuracy: intersection over union of boxes, and mean IoU
//! and pixel accuracy of segmentation masks (accumulated over a dataset, as torchvision's
//! segmentation reference and Keras' `MeanIoU` do).

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
}
