//! Training behaviour on tiny data, on the CPU.

use std::sync::Arc;

use burn::prelude::*;
use konv_datasets::mnist::embedded_fashion_mnist;
use konv_models::Classifier;
use konv_models::fashion_cnn::FashionCnnConfig;
use konv_train::backend::BackendName;
use konv_train::data::{Normalize, loader};
use konv_train::eval::Tta;
use konv_train::observer::Silent;
use konv_train::run::{self, RunDir};
use konv_train::train::{SplitData, TrainConfig, train, train_step};

/// Burn's random generator is per process: tests that seed it must not run interleaved.
static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn tiny_model(device: &Device, dropout: f64) -> Classifier {
    Classifier::FashionCnn(
        FashionCnnConfig::new()
            .with_input_size([28, 28])
            .with_dropout(dropout)
            .init(device),
    )
}

#[test]
fn a_few_steps_lower_the_loss_on_a_tiny_batch() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let device = Device::flex().autodiff();
    device.seed(1);
    let data = embedded_fashion_mnist();
    let set = Arc::new(data.train.take(16));
    let normalize = Normalize::new(0.286, 0.353);
    let batch = loader(set, normalize, 16, None, None, &device)
        .iter()
        .next()
        .unwrap()
        .unwrap();
    let mut model = tiny_model(&device, 0.0);
    let mut optim = TrainConfig::default().optimizer(&model);
    let mut losses = Vec::new();
    for _ in 0..10 {
        let (next, loss, _) = train_step(model, &mut optim, batch.clone(), 0.02, 0.0).unwrap();
        model = next;
        losses.push(loss);
    }
    assert!(losses.iter().all(|l| l.is_finite()));
    assert!(losses[9] < 0.75 * losses[0], "losses {losses:?}");
}

fn tiny_config() -> TrainConfig {
    TrainConfig {
        settings: konv_train::engine::Settings {
            epochs: 2,
            batch_size: 16,
            limit: Some(48),
            val_size: 32,
            seed: 3,
            // Augmented, so that the same-seed test covers the augmentation's reproducibility.
            augment: "flip,crop=2,erase=0.5".parse().unwrap(),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// ResNet-20 (batch norm) for 3 epochs of 3 steps on the embedded subset, with flips.
fn tiny_resnet() -> TrainConfig {
    TrainConfig {
        model: "resnet20".into(),
        settings: konv_train::engine::Settings {
            epochs: 3,
            lr: 0.05,
            augment: "flip".parse().unwrap(),
            ..tiny_config().settings
        },
        ..tiny_config()
    }
}

/// `config` trained on the embedded subset without a run folder, tested on `test` images.
fn train_tiny(config: &TrainConfig, test: usize) -> konv_train::train::TrainOutcome {
    let dataset = embedded_fashion_mnist();
    let mut data = SplitData::new(
        &dataset,
        config.settings.val_size,
        config.settings.limit,
        config.settings.seed,
    );
    data.test = Arc::new(dataset.test.take(test));
    let device = BackendName::Cpu.open().unwrap();
    train(config, 10, &data, &device, None, &mut Silent).unwrap()
}

#[test]
fn same_seed_same_curve_and_checkpoints_reload() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let dataset = embedded_fashion_mnist();
    let config = tiny_config();
    let mut data = SplitData::new(
        &dataset,
        config.settings.val_size,
        config.settings.limit,
        config.settings.seed,
    );
    data.test = Arc::new(dataset.test.take(40));
    let device = BackendName::Cpu.open().unwrap();
    let dir = std::env::temp_dir().join(format!("konv-train-test-{}", std::process::id()));
    let run_dir = RunDir::create(&dir).unwrap();
    let a = train(&config, 10, &data, &device, Some(&run_dir), &mut Silent).unwrap();
    let b = train(&config, 10, &data, &device, None, &mut Silent).unwrap();
    assert_eq!(a.history.len(), 2);
    for (x, y) in a.history.iter().zip(&b.history) {
        assert_eq!(x.train_loss, y.train_loss, "same seed, same loss curve");
        assert_eq!(x.val_loss, y.val_loss);
    }
    // A different seed gives a different curve.
    let c = train(
        &TrainConfig {
            settings: konv_train::engine::Settings {
                seed: 4,
                ..config.settings.clone()
            },
            ..config.clone()
        },
        10,
        &data,
        &device,
        None,
        &mut Silent,
    )
    .unwrap();
    assert_ne!(a.history[0].train_loss, c.history[0].train_loss);

    // The run folder: metrics, checkpoint, optimizer state and best weights, no temp files.
    let csv = std::fs::read_to_string(dir.join(run::METRICS)).unwrap();
    assert_eq!(csv.lines().count(), 3);
    for f in [run::CHECKPOINT, run::OPTIMIZER, run::BEST] {
        assert!(dir.join(f).is_file(), "{f}");
    }
    assert!(
        std::fs::read_dir(&dir).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".tmp"))
    );

    // The best weights reload and evaluate to the same test accuracy.
    let model = konv_models::build("fashion-cnn", 10, &device).unwrap();
    let model = run::load_module(model, &dir.join(run::BEST)).unwrap();
    let report = konv_train::eval::evaluate(&model, &data.test, data.normalize, 16, 10).unwrap();
    assert_eq!(report.confusion, a.test.confusion);
    // Fewer classes than the labels and the model's outputs: an error naming the mismatch,
    // not an index panic or a confusion matrix over part of the set.
    let err = konv_train::eval::evaluate(&model, &data.test, data.normalize, 16, 3).unwrap_err();
    assert!(err.to_string().contains("outside the 3 classes"), "{err}");

    // Flip test-time augmentation sees an image and its mirror alike: the mirrored test set
    // gets exactly the same predictions. So does ten-crop (flips of the image and of its
    // four diagonal shifts), whose shifts mirror into one another.
    let mut mirrored = (*data.test).clone();
    let cols = mirrored.images.cols;
    for row in mirrored.images.pixels.chunks_mut(cols) {
        row.reverse();
    }
    let mirrored = Arc::new(mirrored);
    let evaluate = |set: &Arc<konv_datasets::ImageSet>, tta| {
        konv_train::eval::evaluate_tta(&model, set, data.normalize, 16, 10, None, tta).unwrap()
    };
    for tta in [
        Tta::flip(),
        Tta {
            flip: true,
            shift: 1,
        },
    ] {
        let (plain, mirror) = (evaluate(&data.test, tta), evaluate(&mirrored, tta));
        assert_eq!(plain.confusion, mirror.confusion, "{tta:?}");
        assert!((plain.loss - mirror.loss).abs() < 1e-5, "{tta:?}");
    }
    // Shifting by the images' side leaves nothing to see: an error, not a blank view.
    let err = konv_train::eval::evaluate_tta(
        &model,
        &data.test,
        data.normalize,
        16,
        10,
        None,
        Tta {
            flip: false,
            shift: 28,
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("28x28"), "{err}");

    // Starting from the saved weights: with a negligible learning rate, the first epoch
    // validates as the saved model does.
    let resumed = TrainConfig {
        init_from: Some(dir.join(run::BEST)),
        settings: konv_train::engine::Settings {
            epochs: 1,
            lr: 1e-12,
            ..config.settings.clone()
        },
        ..config.clone()
    };
    let r = train(&resumed, 10, &data, &device, None, &mut Silent).unwrap();
    // best.bpk holds the first epoch with the highest validation accuracy.
    let best = a.history.iter().fold(&a.history[0], |b, m| {
        if m.val_accuracy > b.val_accuracy {
            m
        } else {
            b
        }
    });
    assert_eq!(a.best_epoch, best.epoch);
    assert_eq!(r.history[0].val_accuracy, best.val_accuracy);
    let (got, want) = (r.history[0].val_loss, best.val_loss);
    assert!((got - want).abs() < 1e-4, "{got} vs {want}");

    // A corrupt weights file is an error naming it, not a panic.
    std::fs::write(dir.join("bad.bpk"), b"not a burnpack").unwrap();
    let model = konv_models::build("fashion-cnn", 10, &device).unwrap();
    let err = run::load_module(model, &dir.join("bad.bpk"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("bad.bpk"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn augmentation_stops_at_its_off_epoch() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let with = |augment: &str, off: Option<usize>| {
        let mut config = tiny_config();
        config.settings.augment = augment.parse().unwrap();
        config.settings.augment_off_epoch = off;
        curve(&train_tiny(&config, 16).history)
    };
    let augmented = with("flip,crop=2,erase=0.5", None);
    let clean = with("", None);
    assert_ne!(augmented[0], clean[0], "the augmentation changes epoch 1");
    // Off from epoch 1: the whole run is the clean one.
    assert_eq!(with("flip,crop=2,erase=0.5", Some(1)), clean);
    // Off from epoch 2: epoch 1 is augmented as before, epoch 2 is not.
    let off2 = with("flip,crop=2,erase=0.5", Some(2));
    assert_eq!(off2[0], augmented[0]);
    assert_ne!(off2[1], augmented[1]);
}

#[test]
fn the_dense_tasks_epochs_stop_augmenting_at_the_off_epoch() {
    use konv_train::augment::AugmentSchedule;
    use konv_train::engine::PlannedEpochs;
    let device: Device = Default::default();
    let schedule = AugmentSchedule::new("flip,resize=8x8".parse().unwrap(), Some(3));
    // Each batch reports the pipeline it was handed.
    let mut epochs = PlannedEpochs::new(4, 8, schedule, 4, |_, augment, _| {
        augment.map(|(pipeline, _)| pipeline.to_string())
    });
    let mut seen = Vec::new();
    for epoch in 1..=4 {
        epochs.start(7, epoch, epoch as u64, &device);
        for batch in epochs.batches() {
            seen.push(batch.unwrap());
        }
    }
    let flip = Some("flip,resize=8x8".to_string());
    let resize = Some("resize=8x8".to_string());
    assert_eq!(seen, [flip.clone(), flip, resize.clone(), resize]);
}

#[test]
fn zero_init_residual_starts_a_fresh_resnet_and_refuses_what_it_cannot_do() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let zeroed = TrainConfig {
        zero_init_residual: true,
        ..tiny_resnet()
    };
    let (plain, trained) = (train_tiny(&tiny_resnet(), 20), train_tiny(&zeroed, 20));
    assert!(trained.history.iter().all(|e| e.train_loss.is_finite()));
    // The setting reaches the model: another start, another curve, from the same seed.
    assert_ne!(plain.history[0].train_loss, trained.history[0].train_loss);
    // The zeroed scales are trained like any other parameter, from zero.
    let Classifier::ResNet(model) = &trained.model else {
        unreachable!("resnet20 is a ResNet")
    };
    for unit in model.stages().flatten() {
        let konv_models::resnet::Block::Basic(unit) = unit else {
            unreachable!("ResNet-20 has basic units")
        };
        let largest = unit.bn2.gamma.val().abs().max().into_scalar::<f32>();
        assert!(largest > 0.0, "bn2 scale {largest}");
    }

    // A family without residual units, and trained weights to start from, are refused before
    // anything is built.
    let cnn = TrainConfig {
        zero_init_residual: true,
        ..tiny_config()
    };
    let err = konv_train::train::check_config_input(&cnn, 10, [1, 28, 28]).unwrap_err();
    assert!(
        matches!(
            &err,
            konv_train::TrainError::Setting {
                name: "zero_init_residual",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("ResNets"), "{err}");
    let from_weights = TrainConfig {
        init_from: Some("run/best.bpk".into()),
        ..zeroed
    };
    let err = from_weights.validate().unwrap_err();
    assert!(err.to_string().contains("init_from"), "{err}");
}

/// The largest change of `conv1`'s weights after one step with `config`'s optimizer.
fn first_step_change(config: &TrainConfig, lr: f64) -> (f32, f32) {
    let device = Device::flex().autodiff();
    device.seed(4);
    let data = embedded_fashion_mnist();
    let normalize = Normalize::new(0.286, 0.353);
    let batch = loader(
        Arc::new(data.train.take(8)),
        normalize,
        8,
        None,
        None,
        &device,
    )
    .iter()
    .next()
    .unwrap()
    .unwrap();
    let model = tiny_model(&device, 0.0);
    let Classifier::FashionCnn(before) = &model else {
        unreachable!()
    };
    let w0 = before.conv1.weight.val().inner();
    let mut optim = config.optimizer(&model);
    let (model, _, _) = train_step(model, &mut optim, batch, lr, 0.0).unwrap();
    let Classifier::FashionCnn(after) = &model else {
        unreachable!()
    };
    let w1 = after.conv1.weight.val().inner();
    let delta = (w1.clone() - w0.clone()).powf_scalar(2.0).sum().sqrt();
    (
        delta.into_scalar::<f32>(),
        w0.powf_scalar(2.0).sum().sqrt().into_scalar::<f32>(),
    )
}

#[test]
fn weight_decay_and_gradient_clipping_reach_the_optimizer() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    // Plain SGD, so that a step is exactly lr · gradient.
    let plain = TrainConfig {
        settings: konv_train::engine::Settings {
            momentum: 0.0,
            ..Default::default()
        },
        ..TrainConfig::default()
    };
    let (step, _) = first_step_change(&plain, 0.1);
    // Clipping each gradient to norm 1e-3: one step of lr 0.1 moves conv1 by at most 1e-4.
    let clipped = TrainConfig {
        settings: konv_train::engine::Settings {
            clip_grad_norm: Some(1e-3),
            ..plain.settings.clone()
        },
        ..plain.clone()
    };
    let (clipped_step, _) = first_step_change(&clipped, 0.1);
    assert!(clipped_step <= 1.0001e-4, "{clipped_step}");
    assert!(step > 10.0 * clipped_step, "{step} vs {clipped_step}");
    // A weight decay of 10 adds 10·w to the gradient: the step grows by about lr·10·|w|.
    let decayed = TrainConfig {
        settings: konv_train::engine::Settings {
            weight_decay: 10.0,
            ..plain.settings.clone()
        },
        ..plain.clone()
    };
    let (decayed_step, norm) = first_step_change(&decayed, 0.1);
    assert!(
        (decayed_step - norm).abs() < 0.5 * norm && decayed_step > 2.0 * step,
        "{decayed_step} vs |w| {norm}, plain step {step}"
    );
}

#[test]
fn early_stopping_ends_the_run_and_keeps_the_best_epoch() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    // A learning rate of 0: nothing improves after the first epoch.
    let config = TrainConfig {
        settings: konv_train::engine::Settings {
            epochs: 6,
            lr: 0.0,
            early_stop: Some(2),
            ..tiny_config().settings
        },
        ..tiny_config()
    };
    let outcome = train_tiny(&config, 16);
    assert_eq!(
        outcome.history.len(),
        3,
        "epoch 1 best, 2 and 3 without improvement"
    );
    assert_eq!(outcome.stopped_early, Some(3));
    assert_eq!(outcome.best_epoch, 1);
    // Watching the validation loss instead: the same, since nothing changes.
    let by_loss = TrainConfig {
        settings: konv_train::engine::Settings {
            monitor: Some("val-loss".parse().unwrap()),
            ..config.settings.clone()
        },
        ..config
    };
    let outcome = train_tiny(&by_loss, 16);
    assert_eq!((outcome.stopped_early, outcome.best_epoch), (Some(3), 1));
    assert!(
        "val-acc"
            .parse::<konv_train::train::Monitor>()
            .unwrap_err()
            .contains("val-loss")
    );
}

/// Interrupts training after `after` steps in all, as a kill would.
struct KillAfter {
    steps: usize,
    after: usize,
}

impl konv_train::observer::Observer for KillAfter {
    fn epoch_start(&mut self, _: usize, _: usize, _: usize) {}
    fn step(&mut self, _: usize, _: f64, _: f64, _: f64) {
        self.steps += 1;
    }
    fn epoch_end(&mut self, _: &konv_train::train::EpochMetrics, _: bool) {}
    fn interrupted(&self) -> bool {
        self.steps >= self.after
    }
}

/// A run of `config` in a new folder `dir`, killed after `after` steps in all, which falls
/// in epoch `epoch`.
fn killed_run(
    config: &TrainConfig,
    data: &SplitData,
    device: &Device,
    dir: &std::path::Path,
    after: usize,
    epoch: usize,
) -> RunDir {
    let run = RunDir::create(dir).unwrap();
    let err = train(
        config,
        10,
        data,
        device,
        Some(&run),
        &mut KillAfter { steps: 0, after },
    )
    .unwrap_err();
    assert!(
        matches!(err, konv_train::TrainError::Interrupted { epoch: e } if e == epoch),
        "{err}"
    );
    run
}

/// Everything but the timings of an epoch's metrics, bit for bit (so that the NaN of a run
/// without validation compares equal to itself).
fn curve(h: &[konv_train::train::EpochMetrics]) -> Vec<[u64; 5]> {
    h.iter()
        .map(|m| {
            [
                m.train_loss,
                m.train_accuracy,
                m.val_loss,
                m.val_accuracy,
                m.lr,
            ]
            .map(f64::to_bits)
        })
        .collect()
}

#[test]
fn an_interrupted_run_resumes_to_exactly_the_same_end() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let dataset = embedded_fashion_mnist();
    // Dropout, augmentation, momentum, a plateau schedule and two parameter groups: every
    // piece of state a resume must restore.
    let config = TrainConfig {
        label_smoothing: 0.1,
        settings: konv_train::engine::Settings {
            epochs: 4,
            lr_schedule: "plateau:patience=1,factor=0.5".parse().unwrap(),
            keep_checkpoints: 2,
            // A second parameter group (biases and norms without decay): its members are
            // matched by parameter id, which must survive the resume.
            weight_decay: 5e-3,
            no_decay_bias_norm: true,
            ..tiny_config().settings
        },
        ..tiny_config()
    };
    let mut data = SplitData::new(
        &dataset,
        config.settings.val_size,
        config.settings.limit,
        config.settings.seed,
    );
    data.test = Arc::new(dataset.test.take(32));
    let device = BackendName::Cpu.open().unwrap();
    let base = std::env::temp_dir().join(format!("konv-resume-{}", std::process::id()));
    let whole_dir = RunDir::create(&base.join("whole")).unwrap();
    let whole = train(&config, 10, &data, &device, Some(&whole_dir), &mut Silent).unwrap();

    // Killed in the middle of epoch 2 (3 steps per epoch), then again in epoch 4.
    let cut_dir = killed_run(&config, &data, &device, &base.join("cut"), 5, 2);
    assert_eq!(cut_dir.read_state().unwrap().epoch, 1);
    let err = konv_train::train::resume(
        &config,
        10,
        &data,
        &device,
        &cut_dir,
        &mut KillAfter { steps: 0, after: 7 },
    )
    .unwrap_err();
    assert!(
        matches!(err, konv_train::TrainError::Interrupted { epoch: 4 }),
        "{err}"
    );
    let resumed =
        konv_train::train::resume(&config, 10, &data, &device, &cut_dir, &mut Silent).unwrap();
    assert_eq!(curve(&resumed.history), curve(&whole.history));
    assert_eq!(resumed.best_epoch, whole.best_epoch);
    assert_eq!(resumed.test.confusion, whole.test.confusion);
    assert_eq!(resumed.test.loss, whole.test.loss);

    // Only the newest two epoch checkpoints are kept, and nothing half-written.
    let names: Vec<String> = std::fs::read_dir(&cut_dir.path)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with("epoch-0002") || n.ends_with(".tmp")),
        "{names:?}"
    );
    for f in [
        "epoch-0003.bpk",
        "epoch-0004.bpk",
        "epoch-0004.optim.bpk",
        run::STATE,
        run::CURVES,
    ] {
        assert!(names.iter().any(|n| n == f), "{f} in {names:?}");
    }

    // A finished run does not resume; a corrupt state is a clear error.
    let err = konv_train::train::resume(&config, 10, &data, &device, &cut_dir, &mut Silent)
        .unwrap_err()
        .to_string();
    assert!(err.contains("already finished"), "{err}");
    std::fs::write(cut_dir.path.join(run::STATE), b"{ not json").unwrap();
    let err = konv_train::train::resume(&config, 10, &data, &device, &cut_dir, &mut Silent)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("state.json") && err.contains("corrupt"),
        "{err}"
    );
    std::fs::remove_dir_all(&base).ok();
}

/// Trains `config` (3 steps an epoch) on the embedded subset twice: uninterrupted, and killed
/// after 4 steps (in epoch 2) and resumed. Checks that both end exactly alike and returns the
/// uninterrupted outcome.
fn resumes_exactly(config: &TrainConfig, tag: &str) -> konv_train::train::TrainOutcome {
    let dataset = embedded_fashion_mnist();
    let mut data = SplitData::new(
        &dataset,
        config.settings.val_size,
        config.settings.limit,
        config.settings.seed,
    );
    data.test = Arc::new(dataset.test.take(32));
    let device = BackendName::Cpu.open().unwrap();
    let base = std::env::temp_dir().join(format!("konv-{tag}-{}", std::process::id()));
    let whole_dir = RunDir::create(&base.join("whole")).unwrap();
    let whole = train(config, 10, &data, &device, Some(&whole_dir), &mut Silent).unwrap();
    let cut_dir = killed_run(config, &data, &device, &base.join("cut"), 4, 2);
    let resumed =
        konv_train::train::resume(config, 10, &data, &device, &cut_dir, &mut Silent).unwrap();
    assert_eq!(curve(&resumed.history), curve(&whole.history));
    assert_eq!(resumed.test.confusion, whole.test.confusion);
    assert_eq!(resumed.test.loss, whole.test.loss);
    std::fs::remove_dir_all(&base).ok();
    whole
}

/// Data parallelism (`--replicas 2`) in the training loop: a ResNet run (batch norm, no
/// dropout) killed mid-run and resumed ends exactly where the uninterrupted one does, and
/// both learn.
#[test]
fn a_run_on_two_replicas_resumes_exactly() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let config = TrainConfig {
        model: "resnet20".into(),
        settings: konv_train::engine::Settings {
            epochs: 3,
            replicas: 2,
            lr: 0.05,
            weight_decay: 5e-4,
            ..tiny_config().settings
        },
        ..tiny_config()
    };
    let whole = resumes_exactly(&config, "replicas");
    assert!(whole.history[2].train_loss < whole.history[0].train_loss);
}

/// A moving average of the weights (`ema`) in the loop: validation and the test use the
/// average (so the curve differs from a run without one), the run folder keeps it beside the
/// trained weights, and a run killed mid-epoch resumes to exactly the uninterrupted end, the
/// average's update count (its warm-up) and batch norm's averaged statistics included.
#[test]
fn a_run_with_a_moving_average_validates_it_and_resumes_exactly() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let plain = tiny_resnet();
    let config = TrainConfig {
        settings: konv_train::engine::Settings {
            ema: Some(0.9),
            ..plain.settings.clone()
        },
        ..plain.clone()
    };
    let whole = resumes_exactly(&config, "ema");
    let without = train_tiny(&plain, 32);
    // The same steps train both runs: their training losses agree, their validation does not.
    assert_eq!(whole.history[0].train_loss, without.history[0].train_loss);
    assert_eq!(whole.history[2].train_loss, without.history[2].train_loss);
    assert_ne!(whole.history[2].val_loss, without.history[2].val_loss);

    // The run folder: ema.bpk and the epoch's average named in state.json, best.bpk the
    // average of the best epoch.
    let dataset = embedded_fashion_mnist();
    let mut data = SplitData::new(&dataset, 32, Some(48), 3);
    data.test = Arc::new(dataset.test.take(32));
    let device = BackendName::Cpu.open().unwrap();
    let dir = std::env::temp_dir().join(format!("konv-ema-files-{}", std::process::id()));
    let run = RunDir::create(&dir).unwrap();
    let config = TrainConfig {
        settings: konv_train::engine::Settings {
            epochs: 1,
            ..config.settings.clone()
        },
        ..config.clone()
    };
    train(&config, 10, &data, &device, Some(&run), &mut Silent).unwrap();
    let state = run.read_state().unwrap();
    assert_eq!(state.ema.as_deref(), Some("epoch-0001.ema.bpk"));
    assert_eq!(state.ema_updates, 3, "one update per step");
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
    assert_eq!(read("ema.bpk"), read("epoch-0001.ema.bpk"));
    assert_eq!(read("best.bpk"), read("ema.bpk"));
    assert_ne!(read("checkpoint.bpk"), read("ema.bpk"));
    // A state that names no average (written without one) is refused by name.
    let json = std::fs::read_to_string(dir.join("state.json")).unwrap();
    let mut value: serde_json::Value = serde_json::from_str(&json).unwrap();
    value.as_object_mut().unwrap().remove("ema");
    std::fs::write(dir.join("state.json"), value.to_string()).unwrap();
    let longer = TrainConfig {
        settings: konv_train::engine::Settings {
            epochs: 2,
            ..config.settings.clone()
        },
        ..config.clone()
    };
    let err =
        konv_train::train::resume(&longer, 10, &data, &device, &run, &mut Silent).unwrap_err();
    assert!(err.to_string().contains("names no moving average"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Progressive resizing in the loop: the first epoch trains on 14×14 images (so its curve
/// differs from a full-size run's), later epochs at 22×22 and 28×28, and a run killed in the
/// ramp resumes to exactly the uninterrupted end.
#[test]
fn progressive_resizing_trains_small_first_and_resumes_exactly() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let full = tiny_resnet();
    let config = TrainConfig {
        settings: konv_train::engine::Settings {
            progressive_resize: Some("min=14,start=1,end=3".parse().unwrap()),
            ..full.settings.clone()
        },
        ..full.clone()
    };
    let whole = resumes_exactly(&config, "progressive");
    assert!(whole.history.iter().all(|m| m.train_loss.is_finite()));
    let at_full_size = train_tiny(&full, 32);
    // Same seed, same weights at the start: only the image size tells the runs apart.
    assert_ne!(
        whole.history[0].train_loss,
        at_full_size.history[0].train_loss
    );
}

/// A run that holds no validation images out (Keras' `validation_split=0`): it keeps and
/// tests its last epoch, records the validation metrics as NaN (through `state.json`, so it
/// resumes exactly), and refuses the settings that would watch validation.
#[test]
fn a_run_without_validation_keeps_its_last_epoch_and_resumes_exactly() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let config = TrainConfig {
        settings: konv_train::engine::Settings {
            val_size: 0,
            ..tiny_config().settings
        },
        ..tiny_config()
    };
    let whole = resumes_exactly(&config, "noval");
    assert_eq!(whole.best_epoch, config.settings.epochs);
    assert_eq!(whole.monitor, konv_train::train::Monitor::Last);
    assert!(
        whole
            .history
            .iter()
            .all(|m| !m.validated() && m.train_loss.is_finite())
    );
    assert_eq!(whole.test.total(), 32);
    for (name, settings) in [
        (
            "monitor: val-accuracy watches validation",
            konv_train::engine::Settings {
                monitor: Some("val-accuracy".parse().unwrap()),
                ..config.settings.clone()
            },
        ),
        (
            "early_stop: 2 watches validation",
            konv_train::engine::Settings {
                early_stop: Some(2),
                ..config.settings.clone()
            },
        ),
        (
            "lr_schedule: plateau",
            konv_train::engine::Settings {
                lr_schedule: "plateau".parse().unwrap(),
                ..config.settings.clone()
            },
        ),
    ] {
        let dataset = embedded_fashion_mnist();
        let data = SplitData::new(&dataset, 0, Some(48), 3);
        let device = BackendName::Cpu.open().unwrap();
        let config = TrainConfig {
            settings,
            ..config.clone()
        };
        let err = train(&config, 10, &data, &device, None, &mut Silent)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(name) && err.contains("holds no validation examples out"),
            "{err}"
        );
    }
}

/// The dense tasks hold `val_size` scenes out of the ones they generate; with none, their
/// configs refuse what would watch validation in `validate()`, before any scene is made.
#[test]
fn dense_configs_without_validation_refuse_what_watches_it() {
    use konv_train::detect::DetectConfig;
    use konv_train::engine::{Monitor, Settings};
    use konv_train::localize::LocalizeConfig;
    use konv_train::segment::SegmentConfig;
    type Validate = Box<dyn Fn(&dyn Fn(&mut Settings)) -> Result<(), konv_train::TrainError>>;
    let configs: [(&str, Validate); 3] = [
        (
            "localize",
            Box::new(|edit| {
                let mut c = LocalizeConfig::new("resnet20");
                edit(&mut c.settings);
                c.validate()
            }),
        ),
        (
            "segment",
            Box::new(|edit| {
                let mut c = SegmentConfig::new("fcn8s", "resnet20");
                edit(&mut c.settings);
                c.validate()
            }),
        ),
        (
            "detect",
            Box::new(|edit| {
                let mut c = DetectConfig::new("resnet20");
                edit(&mut c.settings);
                c.validate()
            }),
        ),
    ];
    for (task, validate) in &configs {
        validate(&|s| s.val_size = 0).unwrap_or_else(|e| panic!("{task}: {e}"));
        let err = validate(&|s| {
            s.val_size = 0;
            s.monitor = Some(Monitor::Score);
        })
        .expect_err(task)
        .to_string();
        assert!(err.contains("no validation examples"), "{task}: {err}");
        let err = validate(&|s| {
            s.val_size = 0;
            s.early_stop = Some(3);
        })
        .expect_err(task)
        .to_string();
        assert!(err.contains("no validation examples"), "{task}: {err}");
        // Held out, the same settings are fine.
        validate(&|s| {
            s.val_size = 10;
            s.monitor = Some(Monitor::Score);
            s.early_stop = Some(3);
        })
        .unwrap_or_else(|e| panic!("{task}: {e}"));
    }
}

/// The best epoch is the one the monitor scores best: the lowest validation loss with
/// `--monitor val-loss`, the highest accuracy with the default.
#[test]
fn the_monitor_picks_the_best_epoch_by_its_own_metric() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let config = TrainConfig {
        settings: konv_train::engine::Settings {
            epochs: 4,
            lr: 0.02,
            limit: Some(96),
            monitor: Some("val-loss".parse().unwrap()),
            ..tiny_config().settings
        },
        ..tiny_config()
    };
    let outcome = train_tiny(&config, 16);
    let losses: Vec<f64> = outcome.history.iter().map(|m| m.val_loss).collect();
    let lowest = 1
        + (0..losses.len())
            .min_by(|&a, &b| losses[a].total_cmp(&losses[b]))
            .unwrap();
    // The validation loss falls after the first epoch here, so a monitor stuck on epoch 1
    // would fail.
    assert!(lowest > 1, "losses {losses:?}");
    assert_eq!(outcome.best_epoch, lowest, "losses {losses:?}");
    let by_accuracy = train_tiny(
        &TrainConfig {
            settings: konv_train::engine::Settings {
                monitor: Some("val-accuracy".parse().unwrap()),
                ..config.settings.clone()
            },
            ..config.clone()
        },
        16,
    );
    let accs: Vec<f64> = by_accuracy.history.iter().map(|m| m.val_accuracy).collect();
    let highest = accs.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let first_highest = 1 + accs.iter().position(|&a| a == highest).unwrap();
    assert_eq!(by_accuracy.best_epoch, first_highest, "accuracies {accs:?}");
    // `last` keeps the final epoch even though validation loss rose after `lowest`.
    let last = train_tiny(
        &TrainConfig {
            settings: konv_train::engine::Settings {
                monitor: Some("last".parse().unwrap()),
                ..config.settings.clone()
            },
            ..config.clone()
        },
        16,
    );
    assert_eq!(last.best_epoch, config.settings.epochs);
    // The same run as the others up to the choice of weights.
    let last_losses: Vec<f64> = last.history.iter().map(|m| m.val_loss).collect();
    assert_eq!(last_losses, losses);
    // Early stopping needs a metric to watch.
    let err = TrainConfig {
        settings: konv_train::engine::Settings {
            monitor: Some("last".parse().unwrap()),
            early_stop: Some(2),
            ..config.settings.clone()
        },
        ..config
    }
    .validate()
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("early_stop: 2") && err.contains("not last"),
        "{err}"
    );
}

#[test]
fn transfer_phases_train_the_head_then_everything() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let dataset = embedded_fashion_mnist();
    let device = BackendName::Cpu.open().unwrap();
    let base = std::env::temp_dir().join(format!("konv-transfer-{}", std::process::id()));
    // Pretrain on classes 0–4.
    let pre_config = TrainConfig {
        classes: Some(vec![0, 1, 2, 3, 4]),
        settings: konv_train::engine::Settings {
            epochs: 1,
            ..tiny_config().settings
        },
        ..tiny_config()
    };
    let pre_data = SplitData::with_classes(&dataset, Some(&[0, 1, 2, 3, 4]), 32, Some(48), 3);
    assert!(pre_data.train.labels.iter().all(|&l| l < 5));
    let pre_dir = RunDir::create(&base.join("pre")).unwrap();
    let info = konv_train::train::RunInfo {
        config: pre_config.clone(),
        data_source: "embedded".into(),
        subset: true,
        class_names: (0..5).map(|i| i.to_string()).collect(),
        input: [1, 28, 28],
        normalize: pre_data.normalize,
        train_size: pre_data.train.len(),
        val_size: pre_data.val.len(),
    };
    pre_dir.write_config(&info).unwrap();
    let pre = train(
        &pre_config,
        5,
        &pre_data,
        &device,
        Some(&pre_dir),
        &mut Silent,
    )
    .unwrap();

    // Transfer to 3 other classes: one frozen epoch, then one of fine-tuning.
    let config = TrainConfig {
        classes: Some(vec![5, 7, 9]),
        init_from: Some(pre_dir.path.join(run::BEST)),
        settings: konv_train::engine::Settings {
            epochs: 2,
            freeze_epochs: 1,
            head_lr: Some(0.1),
            keep_checkpoints: 2,
            ..tiny_config().settings
        },
        ..tiny_config()
    };
    let data = SplitData::with_classes(&dataset, Some(&[5, 7, 9]), 32, Some(48), 3);
    let dir = RunDir::create(&base.join("transfer")).unwrap();
    let out = train(&config, 3, &data, &device, Some(&dir), &mut Silent).unwrap();
    assert_eq!(out.history[0].lr, 0.1, "phase 1 at --head-lr");
    assert_eq!(out.history[1].lr, config.settings.lr, "phase 2 at --lr");
    // After phase 1 the backbone equals the pretrained one (frozen, and its batch-norm
    // statistics untouched); the head has changed.
    let after_head = konv_models::build_for("fashion-cnn", 3, 1, &device).unwrap();
    let after_head = run::load_module(after_head, &dir.path.join("epoch-0001.bpk")).unwrap();
    let (Classifier::FashionCnn(p), Classifier::FashionCnn(h), Classifier::FashionCnn(t)) =
        (&pre.best, &after_head, &out.model)
    else {
        unreachable!()
    };
    let diff = |a: Tensor<4>, b: Tensor<4>| (a - b).abs().max().into_scalar::<f32>();
    assert_eq!(diff(p.conv1.weight.val(), h.conv1.weight.val()), 0.0);
    assert_eq!(diff(p.conv5.weight.val(), h.conv5.weight.val()), 0.0);
    // Phase 2 trained the backbone too.
    assert!(diff(p.conv1.weight.val(), t.conv1.weight.val()) > 0.0);
    assert_eq!(t.fc3.weight.dims()[1], 3);
    std::fs::remove_dir_all(&base).ok();
}

/// A detection run (the shared `fit` loop) killed mid-epoch and resumed from its last
/// finished epoch ends exactly where the uninterrupted run does.
#[test]
fn an_interrupted_detection_run_resumes_to_the_same_end() {
    use konv_train::detect::{DetectConfig, DetectData, resume_detector, train_detector};
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let dataset = embedded_fashion_mnist();
    let mut config = DetectConfig::new("resnet20");
    config.stem_stride = 2;
    config.scene.size = 48;
    config.scene.scale_max = 1.2;
    config.scene.items_max = 2;
    config.settings.epochs = 3;
    config.settings.batch_size = 8;
    config.settings.limit = Some(100);
    config.settings.val_size = 16;
    config.settings.weight_decay = 5e-3;
    config.settings.augment = "flip".parse().unwrap();
    let mut data = DetectData::generate(&dataset, &config).unwrap();
    data.test = data.test.select(&(0..6).collect::<Vec<_>>());
    let names: Vec<String> = dataset
        .class_names()
        .iter()
        .map(|s| s.to_string())
        .collect();
    let device = BackendName::Cpu.open().unwrap();
    let base = std::env::temp_dir().join(format!("konv-det-resume-{}", std::process::id()));
    let whole_dir = RunDir::create(&base.join("whole")).unwrap();
    let whole = train_detector(
        &config,
        &names,
        &data,
        &device,
        Some(&whole_dir),
        &mut Silent,
    )
    .unwrap();
    let steps = data.train.len().div_ceil(config.settings.batch_size);
    let cut_dir = RunDir::create(&base.join("cut")).unwrap();
    let err = train_detector(
        &config,
        &names,
        &data,
        &device,
        Some(&cut_dir),
        &mut KillAfter {
            steps: 0,
            after: steps + 2,
        },
    )
    .unwrap_err();
    assert!(
        matches!(err, konv_train::TrainError::Interrupted { epoch: 2 }),
        "{err}"
    );
    let resumed = resume_detector(&data, &device, &cut_dir, &mut Silent).unwrap();
    let metrics = |h: &[konv_train::record::EpochRecord]| {
        let m: Vec<_> = h.iter().map(|e| e.metrics.clone()).collect();
        (
            curve(&m),
            h.iter().map(|e| e.get("val_map50")).collect::<Vec<_>>(),
        )
    };
    assert_eq!(metrics(&resumed.history), metrics(&whole.history));
    assert_eq!(resumed.best_epoch, whole.best_epoch);
    assert_eq!(resumed.test, whole.test);
    // Only the last epoch's files remain; a finished run does not resume again.
    assert!(cut_dir.path.join("epoch-0003.bpk").exists());
    assert!(!cut_dir.path.join("epoch-0002.bpk").exists());
    let err = resume_detector(&data, &device, &cut_dir, &mut Silent).unwrap_err();
    assert!(err.to_string().contains("already finished"), "{err}");
    // Scenes of other data are refused.
    let mut other = data.clone();
    other.normalize.mean += 0.01;
    let fresh = RunDir::create(&base.join("fresh")).unwrap();
    assert!(resume_detector(&data, &device, &fresh, &mut Silent).is_err());
    let err = resume_detector(&other, &device, &whole_dir, &mut Silent).unwrap_err();
    assert!(err.to_string().contains("scenes differ"), "{err}");
    std::fs::remove_dir_all(&base).ok();
}

#[test]
fn an_exported_folder_trains_exactly_like_the_idx_files() {
    use konv_datasets::folder::{FolderOptions, ImageFolder, export_set};
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let dataset = embedded_fashion_mnist();
    let (train_set, test_set) = (dataset.train.take(160), dataset.test.take(60));
    let root = std::env::temp_dir().join(format!("konv-folder-idx-{}", std::process::id()));
    std::fs::remove_dir_all(&root).ok();
    let names: Vec<String> = (0..10).map(|i| format!("{i}-class")).collect();
    export_set(&train_set, &names, &root.join("train")).unwrap();
    export_set(&test_set, &names, &root.join("test")).unwrap();
    let options = FolderOptions {
        cache: None,
        ..FolderOptions::default()
    };
    let folder = ImageFolder::open(&root, &options).unwrap();
    assert_eq!(folder.input(), [1, 28, 28], "gray PNGs read as one channel");
    let config = TrainConfig {
        settings: konv_train::engine::Settings {
            epochs: 2,
            batch_size: 16,
            val_size: 40,
            seed: 5,
            augment: "flip,crop=2".parse().unwrap(),
            ..Default::default()
        },
        ..Default::default()
    };
    let from_folder = SplitData::from_folder(
        &folder,
        config.settings.val_size,
        None,
        config.settings.seed,
    );
    // The folder lists images class by class (torchvision's ImageFolder order): the same
    // IDX images in that order are the same run.
    let by_class = |set: &konv_datasets::ImageSet| {
        let mut order: Vec<usize> = (0..set.len()).collect();
        order.sort_by_key(|&i| set.labels[i]);
        set.select(&order)
    };
    let idx = konv_datasets::Dataset {
        train: by_class(&train_set),
        test: by_class(&test_set),
        ..dataset
    };
    let mut from_idx = SplitData::new(&idx, config.settings.val_size, None, config.settings.seed);
    assert_eq!(
        from_idx.train.images, from_folder.train.images,
        "PNGs are lossless"
    );
    assert_eq!(from_idx.test.labels, from_folder.test.labels);
    // The folder's standardization is measured on its training images.
    let measured = konv_datasets::folder::channel_stats(&from_idx.train)[0];
    assert_eq!(
        (from_folder.normalize.mean, from_folder.normalize.std),
        measured
    );
    from_idx.normalize = from_folder.normalize;
    let device = BackendName::Cpu.open().unwrap();
    let a = train(&config, 10, &from_folder, &device, None, &mut Silent).unwrap();
    let b = train(&config, 10, &from_idx, &device, None, &mut Silent).unwrap();
    assert_eq!(curve(&a.history), curve(&b.history));
    assert_eq!(a.test.confusion, b.test.confusion);
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn rgb_images_train_through_every_channel() {
    use konv_datasets::{IdxImages, ImageSet};
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    // Two classes with the same first channel that differ in the other two only: a model
    // that saw one channel could not tell them apart.
    let make = |n: usize| {
        let mut pixels = Vec::new();
        let mut labels = Vec::new();
        for i in 0..n {
            let label = (i % 2) as u8;
            let (g, b) = if label == 0 { (200, 0) } else { (0, 200) };
            for value in [100, g, b] {
                pixels.extend(std::iter::repeat_n(value, 8 * 8));
            }
            labels.push(label);
        }
        ImageSet {
            images: IdxImages {
                count: n,
                channels: 3,
                rows: 8,
                cols: 8,
                pixels,
            },
            labels,
        }
    };
    let stats = konv_datasets::folder::channel_stats(&make(64));
    let data = SplitData {
        train: Arc::new(make(64)),
        val: Arc::new(make(16)),
        test: Arc::new(make(16)),
        normalize: Normalize::per_channel(&stats),
    };
    let config = TrainConfig {
        model: "resnet20".into(),
        settings: konv_train::engine::Settings {
            epochs: 4,
            batch_size: 16,
            lr: 0.05,
            seed: 1,
            augment: "flip".parse().unwrap(),
            ..Default::default()
        },
        ..Default::default()
    };
    let device = BackendName::Cpu.open().unwrap();
    let outcome = train(&config, 2, &data, &device, None, &mut Silent).unwrap();
    assert_eq!(outcome.test.accuracy(), 1.0, "{:?}", outcome.history);
}

/// A model of the user's own, not from the zoo: one convolution and a linear head.
#[derive(burn::module::Module, Debug)]
struct OwnNet {
    conv: burn::nn::conv::Conv2d,
    fc: burn::nn::Linear,
}

impl OwnNet {
    fn new(device: &Device) -> Self {
        OwnNet {
            conv: burn::nn::conv::Conv2dConfig::new([1, 4], [5, 5])
                .with_stride([3, 3])
                .init(device),
            fc: burn::nn::LinearConfig::new(4 * 8 * 8, 10).init(device),
        }
    }
}

impl konv_train::model::Classify for OwnNet {
    fn logits(&self, images: Tensor<4>) -> Tensor<2> {
        let x = burn::tensor::activation::relu(self.conv.forward(images));
        self.fc.forward(x.flatten(1, 3))
    }
}

#[test]
fn a_model_of_your_own_trains_and_resumes_exactly() {
    use konv_train::train::{resume_model, train_model};
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let config = TrainConfig {
        model: "own-net".into(),
        settings: konv_train::engine::Settings {
            lr: 0.05,
            ..tiny_config().settings
        },
        ..tiny_config()
    };
    let dataset = embedded_fashion_mnist();
    let mut data = SplitData::new(
        &dataset,
        config.settings.val_size,
        config.settings.limit,
        config.settings.seed,
    );
    data.test = Arc::new(dataset.test.take(64));
    let device = BackendName::Cpu.open().unwrap();
    // Built on the plain device, as a user would; the same weights each time.
    let fresh = || {
        device.seed(11);
        OwnNet::new(&device)
    };
    let base = std::env::temp_dir().join(format!("konv-own-{}", std::process::id()));
    let whole_dir = RunDir::create(&base.join("whole")).unwrap();
    let whole = train_model(
        fresh(),
        &config,
        10,
        &data,
        &device,
        Some(&whole_dir),
        &mut Silent,
    )
    .unwrap();
    assert!(
        whole.history[1].train_loss < whole.history[0].train_loss,
        "{:?}",
        whole.history
    );
    let cut_dir = RunDir::create(&base.join("cut")).unwrap();
    let err = train_model(
        fresh(),
        &config,
        10,
        &data,
        &device,
        Some(&cut_dir),
        &mut KillAfter { steps: 0, after: 4 },
    )
    .unwrap_err();
    assert!(
        matches!(err, konv_train::TrainError::Interrupted { epoch: 2 }),
        "{err}"
    );
    let resumed =
        resume_model(fresh(), &config, 10, &data, &device, &cut_dir, &mut Silent).unwrap();
    assert_eq!(curve(&resumed.history), curve(&whole.history));
    assert_eq!(resumed.test.confusion, whole.test.confusion);
    // A model that does not fit the data is one error, not a panic.
    let wrong = OwnNet {
        fc: burn::nn::LinearConfig::new(7, 10).init(&device),
        ..fresh()
    };
    let err = train_model(wrong, &config, 10, &data, &device, None, &mut Silent).unwrap_err();
    assert!(
        err.to_string()
            .contains("cannot take the dataset's 28×28 images"),
        "{err}"
    );
    let err = train_model(fresh(), &config, 5, &data, &device, None, &mut Silent).unwrap_err();
    assert!(err.to_string().contains("not [1, 5]"), "{err}");
    // No backbone/head split: a frozen phase is refused.
    let frozen = TrainConfig {
        settings: konv_train::engine::Settings {
            freeze_epochs: 1,
            ..config.settings.clone()
        },
        ..config.clone()
    };
    let err = train_model(fresh(), &frozen, 10, &data, &device, None, &mut Silent).unwrap_err();
    assert!(err.to_string().contains("no backbone/head split"), "{err}");
    std::fs::remove_dir_all(&base).ok();
}

#[test]
fn imported_weights_bring_their_own_standardization() {
    use konv_train::train::pretrained_normalize;
    let dir = std::env::temp_dir().join(format!("konv-pretrained-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Imported torchvision weights (no konv run beside them): ImageNet's statistics.
    let weights = dir.join("resnet18.bpk");
    std::fs::write(&weights, b"").unwrap();
    let n = pretrained_normalize("resnet18", &weights, 3)
        .unwrap()
        .unwrap();
    assert_eq!(n.channel(0), (0.485, 0.229));
    assert_eq!(n.channel(2), (0.406, 0.225));
    // For gray data the RGB statistics do not apply: measure instead.
    assert!(
        pretrained_normalize("resnet18", &weights, 1)
            .unwrap()
            .is_none()
    );
    // A konv run's weights saw konv's own standardization.
    std::fs::write(dir.join("config.json"), b"{}").unwrap();
    assert!(
        pretrained_normalize("resnet18", &weights, 3)
            .unwrap()
            .is_none()
    );
    assert!(pretrained_normalize("resnet18", &dir.join("missing.bpk"), 3).is_err());
    std::fs::remove_dir_all(&dir).ok();
}

/// Localization and segmentation runs (the same engine) killed in the middle of epoch 2
/// and resumed end exactly where the uninterrupted runs do.
#[test]
fn interrupted_localization_and_segmentation_runs_resume_to_the_same_end() {
    use konv_train::localize::{LocalizeConfig, LocalizeData, resume_localizer, train_localizer};
    use konv_train::segment::{SegmentConfig, SegmentData, resume_segmenter, train_segmenter};
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let dataset = embedded_fashion_mnist();
    let names: Vec<String> = dataset
        .class_names()
        .iter()
        .map(|s| s.to_string())
        .collect();
    let device = BackendName::Cpu.open().unwrap();
    let base = std::env::temp_dir().join(format!("konv-dense-resume-{}", std::process::id()));
    let kill = |steps_per_epoch: usize| KillAfter {
        steps: 0,
        after: steps_per_epoch + 1,
    };

    let mut loc = LocalizeConfig::new("resnet20");
    loc.canvas.size = 40;
    loc.canvas.scale_max = 1.4;
    loc.stem_stride = 2;
    loc.box_grid = 2;
    loc.settings.epochs = 3;
    loc.settings.batch_size = 16;
    loc.settings.limit = Some(80);
    loc.settings.val_size = 16;
    loc.settings.lr = 0.02;
    loc.settings.augment = "flip".parse().unwrap();
    let mut data = LocalizeData::generate(&dataset, &loc).unwrap();
    data.test = data.test.select(&(0..16).collect::<Vec<_>>());
    let whole_dir = RunDir::create(&base.join("loc-whole")).unwrap();
    let whole =
        train_localizer(&loc, &names, &data, &device, Some(&whole_dir), &mut Silent).unwrap();
    let cut_dir = RunDir::create(&base.join("loc-cut")).unwrap();
    let steps = data.train.len().div_ceil(loc.settings.batch_size);
    let err = train_localizer(
        &loc,
        &names,
        &data,
        &device,
        Some(&cut_dir),
        &mut kill(steps),
    )
    .unwrap_err();
    assert!(
        matches!(err, konv_train::TrainError::Interrupted { epoch: 2 }),
        "{err}"
    );
    let resumed = resume_localizer(&data, &device, &cut_dir, &mut Silent).unwrap();
    let loc_curve = |h: &[konv_train::localize::LocalizeEpoch]| {
        let m: Vec<_> = h.iter().map(|e| e.metrics.clone()).collect();
        let iou: Vec<_> = h.iter().map(|e| (e.train_iou, e.val_iou)).collect();
        (curve(&m), iou)
    };
    assert_eq!(loc_curve(&resumed.history), loc_curve(&whole.history));
    assert_eq!(resumed.best_epoch, whole.best_epoch);
    assert_eq!(resumed.test, whole.test);
    assert_eq!(
        std::fs::read_to_string(cut_dir.path.join(run::METRICS))
            .unwrap()
            .lines()
            .count(),
        4,
        "metrics.csv holds every epoch"
    );

    let mut seg = SegmentConfig::new("fcn8s", "resnet20");
    seg.stem_stride = 2;
    seg.scene.size = 48;
    seg.scene.scale_max = 1.2;
    seg.scene.items_max = 2;
    seg.settings.epochs = 3;
    seg.settings.batch_size = 8;
    seg.settings.limit = Some(40);
    seg.settings.val_size = 8;
    let mut data = SegmentData::generate(&dataset, &seg).unwrap();
    data.test = data.test.select(&(0..8).collect::<Vec<_>>());
    let mut seg_names = vec!["background".to_string()];
    seg_names.extend(names.iter().cloned());
    let whole_dir = RunDir::create(&base.join("seg-whole")).unwrap();
    let whole = train_segmenter(
        &seg,
        &seg_names,
        &data,
        &device,
        Some(&whole_dir),
        &mut Silent,
    )
    .unwrap();
    let cut_dir = RunDir::create(&base.join("seg-cut")).unwrap();
    let steps = data.train.len().div_ceil(seg.settings.batch_size);
    let err = train_segmenter(
        &seg,
        &seg_names,
        &data,
        &device,
        Some(&cut_dir),
        &mut kill(steps),
    )
    .unwrap_err();
    assert!(
        matches!(err, konv_train::TrainError::Interrupted { epoch: 2 }),
        "{err}"
    );
    let resumed = resume_segmenter(&data, &device, &cut_dir, &mut Silent).unwrap();
    let seg_curve = |h: &[konv_train::segment::SegmentEpoch]| {
        let m: Vec<_> = h.iter().map(|e| e.metrics.clone()).collect();
        (curve(&m), h.iter().map(|e| e.val_iou).collect::<Vec<_>>())
    };
    assert_eq!(seg_curve(&resumed.history), seg_curve(&whole.history));
    assert_eq!(resumed.best_epoch, whole.best_epoch);
    assert_eq!(resumed.test, whole.test);
    std::fs::remove_dir_all(&base).ok();
}

/// What the loop does works for a dense task too: a localizer trained with two replicas,
/// a frozen first epoch, progressive resizing, early stopping and the task's score as
/// the monitor.
#[test]
fn a_localizer_trains_with_every_feature_of_the_loop() {
    use konv_train::engine::Monitor;
    use konv_train::localize::{LocalizeConfig, LocalizeData, train_localizer};
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let dataset = embedded_fashion_mnist();
    let names: Vec<String> = dataset
        .class_names()
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut config = LocalizeConfig::new("resnet20");
    config.canvas.size = 40;
    config.canvas.scale_max = 1.4;
    config.stem_stride = 2;
    config.box_grid = 1;
    config.settings.epochs = 3;
    config.settings.batch_size = 16;
    config.settings.limit = Some(64);
    config.settings.val_size = 16;
    config.settings.lr = 0.02;
    config.settings.replicas = 2;
    config.settings.freeze_epochs = 1;
    config.settings.head_lr = Some(0.05);
    config.settings.progressive_resize = Some("min=24,start=1,end=3".parse().unwrap());
    config.settings.early_stop = Some(5);
    config.settings.monitor = Some(Monitor::Score);
    let mut data = LocalizeData::generate(&dataset, &config).unwrap();
    data.test = data.test.select(&(0..16).collect::<Vec<_>>());
    let device = BackendName::Cpu.open().unwrap();
    let dir = std::env::temp_dir().join(format!("konv-loc-all-{}", std::process::id()));
    let run_dir = RunDir::create(&dir).unwrap();
    let out =
        train_localizer(&config, &names, &data, &device, Some(&run_dir), &mut Silent).unwrap();
    assert_eq!(out.history.len(), 3);
    assert_eq!(
        out.history[0].metrics.lr, 0.05,
        "the frozen epoch runs at head_lr"
    );
    assert!(out.history.iter().all(|e| e.metrics.train_loss.is_finite()));
    // The best epoch is the one of highest validation IoU.
    let best = out
        .history
        .iter()
        .max_by(|a, b| a.val_iou.total_cmp(&b.val_iou))
        .unwrap();
    assert_eq!(out.best_epoch, best.metrics.epoch);
    assert!(dir.join(run::CURVES).is_file() && dir.join(run::STATE).is_file());
    std::fs::remove_dir_all(&dir).ok();
}

/// A PyTorch state dict (here a `.safetensors` in PyTorch's layout, as torchvision's
/// weights are after `safetensors.torch.save_file`) starts a run directly: imported on the
/// fly, a fresh head for the new classes, the rest the file's; another architecture's file
/// is one clear error.
#[test]
fn pytorch_weights_start_a_run_with_a_fresh_head() {
    use burn::store::{BurnToPyTorchAdapter, ModuleSnapshot, SafetensorsStore};
    // Building models draws from the backend's one random generator, which the seeded
    // tests in this file share.
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let device = Device::flex();
    let dir = std::env::temp_dir().join(format!("konv-pth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("fashion-cnn.safetensors");
    let pretrained = konv_models::build_for("fashion-cnn", 10, 1, &device).unwrap();
    let mut store = SafetensorsStore::from_file(&path)
        .with_to_adapter(BurnToPyTorchAdapter)
        .skip_enum_variants(true);
    pretrained.save_into(&mut store).unwrap();
    assert!(konv_train::train::is_pytorch_file(&path));

    let model = konv_train::train::initial_weights("fashion-cnn", &path, 3, 1, &device).unwrap();
    let logits = |m: &konv_models::Classifier| m.forward(Tensor::zeros([2, 1, 28, 28], &device));
    assert_eq!(logits(&model).dims(), [2, 3], "a fresh 3-class head");
    // The features are the file's: the same as the pretrained model's before the head.
    let features = |m: &konv_models::Classifier| {
        m.valid()
            .forward_features(Tensor::ones([1, 1, 28, 28], &device))
            .into_data()
            .try_to_vec::<f32>()
            .unwrap()
    };
    assert_eq!(features(&model), features(&pretrained));

    let err = konv_train::train::initial_weights("resnet20", &path, 3, 1, &device)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("init_from:") && err.contains("fashion-cnn.safetensors"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
