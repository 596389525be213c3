//! Reporting training progress: a progress bar per epoch on a terminal, plain lines
//! otherwise, or nothing.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::record::EpochMetrics;

/// Receives training progress.
pub trait Observer {
    /// An epoch of `steps` batches begins.
    fn epoch_start(&mut self, epoch: usize, epochs: usize, steps: usize);
    /// After each step: images seen this epoch, mean loss and accuracy so far, images/s.
    fn step(&mut self, seen: usize, loss: f64, accuracy: f64, images_per_sec: f64);
    /// An epoch ended; `best` when its validation accuracy is the best so far.
    fn epoch_end(&mut self, metrics: &EpochMetrics, best: bool);
    /// [`Observer::epoch_end`] with more metrics to show (`extra`, e.g. the mean IoU of a
    /// localizer); by default they are dropped.
    fn epoch_end_with(&mut self, metrics: &EpochMetrics, best: bool, extra: &str) {
        let _ = extra;
        self.epoch_end(metrics, best);
    }
    /// Asked after every step: `true` ends training at once with
    /// [`TrainError::Interrupted`](crate::TrainError::Interrupted), as if the process were
    /// killed there (the run folder keeps the last finished epoch, for `--resume`).
    fn interrupted(&self) -> bool {
        false
    }
}

/// How [`ConsoleObserver`] prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputMode {
    /// A progress bar per epoch, then a summary line.
    Bar,
    /// Only the summary line of each epoch (when stdout is not a terminal).
    Plain,
    /// Nothing.
    Quiet,
}

impl OutputMode {
    /// `Bar` on a terminal, `Plain` otherwise; `Quiet` when asked.
    pub fn detect(quiet: bool) -> Self {
        if quiet {
            OutputMode::Quiet
        } else if std::io::stdout().is_terminal() {
            OutputMode::Bar
        } else {
            OutputMode::Plain
        }
    }
}

/// Prints progress to the console.
pub struct ConsoleObserver {
    mode: OutputMode,
    bar: Option<ProgressBar>,
    epochs: usize,
    batch_size: usize,
    steps: usize,
}

impl ConsoleObserver {
    /// A console observer; `batch_size` converts images seen into steps.
    pub fn new(mode: OutputMode, batch_size: usize) -> Self {
        ConsoleObserver {
            mode,
            bar: None,
            epochs: 0,
            batch_size,
            steps: 0,
        }
    }
}

impl Observer for ConsoleObserver {
    fn epoch_start(&mut self, epoch: usize, epochs: usize, steps: usize) {
        self.epochs = epochs;
        self.steps = steps;
        if self.mode == OutputMode::Bar {
            let bar = ProgressBar::new(steps as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:30.cyan/blue}] {pos}/{len} {msg} ETA {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix(format!("epoch {epoch}/{epochs}"));
            bar.enable_steady_tick(Duration::from_millis(500));
            self.bar = Some(bar);
        }
    }

    fn step(&mut self, seen: usize, loss: f64, accuracy: f64, images_per_sec: f64) {
        if let Some(bar) = &self.bar {
            bar.set_position(seen.div_ceil(self.batch_size).min(self.steps) as u64);
            bar.set_message(format!(
                "loss {loss:.4} acc {:.2}% {images_per_sec:.0} img/s",
                100.0 * accuracy
            ));
        }
    }

    fn epoch_end(&mut self, m: &EpochMetrics, best: bool) {
        self.epoch_end_with(m, best, "");
    }

    fn epoch_end_with(&mut self, m: &EpochMetrics, best: bool, extra: &str) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        if self.mode != OutputMode::Quiet {
            // (A run without validation examples shows none.)
            let val = if m.validated() {
                format!(
                    "  val loss {:.4} acc {:6.2}%",
                    m.val_loss,
                    100.0 * m.val_accuracy
                )
            } else {
                String::new()
            };
            println!(
                "epoch {:>2}/{}  train loss {:.4} acc {:6.2}%{val}{extra}  {:.0} img/s  {:.0}s{}",
                m.epoch,
                self.epochs,
                m.train_loss,
                100.0 * m.train_accuracy,
                m.images_per_sec,
                m.seconds,
                if best { "  *best" } else { "" }
            );
        }
    }
}

/// Reports nothing.
pub struct Silent;

impl Observer for Silent {
    fn epoch_start(&mut self, _: usize, _: usize, _: usize) {}
    fn step(&mut self, _: usize, _: f64, _: f64, _: f64) {}
    fn epoch_end(&mut self, _: &EpochMetrics, _: bool) {}
}
