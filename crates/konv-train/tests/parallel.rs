//! Data parallelism over CPU cores (`konv_train::parallel`): the same step as one model, and
//! the same result whatever the threads' timing.

use burn::prelude::*;
use burn::tensor::Distribution;
use konv_models::Classifier;
use konv_train::data::ImageBatch;
use konv_train::parallel::Replicas;
use konv_train::train::{TrainConfig, parallel_train_step, train_step};

/// Burn's random generator is per process: tests that seed it must not run interleaved.
static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn random_batch(n: usize, size: usize, device: &Device) -> ImageBatch {
    ImageBatch {
        images: Tensor::random([n, 1, size, size], Distribution::Normal(0.0, 1.0), device),
        targets: Tensor::<1>::random([n], Distribution::Uniform(0.0, 10.0), device).int(),
        mix: None,
    }
}

fn max_abs_diff(a: Tensor<2>, b: Tensor<2>) -> f32 {
    (a - b).abs().max().into_scalar::<f32>()
}

/// Without batch norm or dropout, splitting the batch changes nothing but rounding: the
/// shares' losses are weighted by their size, so the summed gradient is the batch mean's —
/// also for an uneven split (7 images: 3 + 2 + 2).
#[test]
fn replicas_take_the_same_step_as_one_model() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let device = Device::flex().autodiff();
    device.seed(7);
    let batches: Vec<ImageBatch> = (0..3).map(|_| random_batch(7, 32, &device)).collect();
    let probe = Tensor::<4>::random([4, 1, 32, 32], Distribution::Normal(0.0, 1.0), &device);
    let config = TrainConfig {
        settings: konv_train::engine::Settings {
            weight_decay: 1e-3,
            ..Default::default()
        },
        ..Default::default()
    };
    let build = || {
        device.seed(11);
        konv_models::build_for("lenet5-modern", 10, 1, &device).unwrap()
    };

    let mut one = build();
    let mut optim = config.optimizer(&one);
    let mut one_losses = Vec::new();
    for batch in &batches {
        let (next, loss, correct) = train_step(one, &mut optim, batch.clone(), 0.05, 0.1).unwrap();
        one = next;
        one_losses.push((loss, correct));
    }

    let replicas = Replicas::new(3).unwrap();
    let mut split = build();
    let mut optim = config.optimizer(&split);
    let mut split_losses = Vec::new();
    for batch in &batches {
        let (next, loss, correct) =
            parallel_train_step(split, &mut optim, batch.clone(), 0.05, 0.1, &replicas).unwrap();
        split = next;
        split_losses.push((loss, correct));
    }

    for ((a, ca), (b, cb)) in one_losses.iter().zip(&split_losses) {
        assert!((a - b).abs() < 1e-5, "loss {a} vs {b}");
        assert_eq!(ca, cb);
    }
    let diff = max_abs_diff(
        one.valid().forward(probe.clone().inner()),
        split.valid().forward(probe.inner()),
    );
    assert!(diff < 1e-4, "outputs after 3 steps differ by {diff}");
    // And the steps did something.
    assert!(one_losses[0].0.is_finite() && one_losses[0] != one_losses[2]);
}

fn resnet(device: &Device) -> Classifier {
    device.seed(5);
    konv_models::build_for("resnet20", 10, 1, device).unwrap()
}

fn bn1_running_mean(model: &Classifier) -> Tensor<1> {
    match model {
        Classifier::ResNet(r) => r.bn1.running_mean.value(),
        _ => unreachable!("a ResNet"),
    }
}

/// With batch norm, each replica normalizes its own share; the running statistics become the
/// mean of the replicas' updates (here, after one step from zero: momentum × the batch's
/// channel means), and two runs give bit-identical models whatever the threads did.
#[test]
fn replicas_with_batch_norm_are_deterministic() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let device = Device::flex().autodiff();
    device.seed(3);
    let batches: Vec<ImageBatch> = (0..3).map(|_| random_batch(8, 12, &device)).collect();
    let probe = Tensor::<4>::random([2, 1, 12, 12], Distribution::Normal(0.0, 1.0), &device);
    let replicas = Replicas::new(2).unwrap();
    let config = TrainConfig::default();

    let run = || {
        let mut model = resnet(&device);
        let mut optim = config.optimizer(&model);
        let mut first_mean = None;
        for batch in &batches {
            model = parallel_train_step(model, &mut optim, batch.clone(), 0.1, 0.0, &replicas)
                .unwrap()
                .0;
            first_mean.get_or_insert_with(|| bn1_running_mean(&model));
        }
        (model, first_mean.unwrap())
    };

    // Expected running mean after the first step: 0.1 × the channel means of conv1's output
    // over the whole batch (two equal shares average to the batch's mean).
    let init = resnet(&device);
    let conv1 = match &init {
        Classifier::ResNet(r) => r.conv1.forward(batches[0].images.clone()),
        _ => unreachable!(),
    };
    let [_, c, _, _] = conv1.dims();
    let expected = conv1
        .swap_dims(0, 1)
        .reshape([c as i32, -1])
        .mean_dim(1)
        .reshape([c])
        * 0.1;

    let (a, a_mean) = run();
    let (b, _) = run();
    let diff = (a_mean - expected).abs().max().into_scalar::<f32>();
    assert!(diff < 1e-5, "running mean off by {diff}");

    let out_a = a.valid().forward(probe.clone().inner());
    let out_b = b.valid().forward(probe.inner());
    assert_eq!(
        out_a.to_data(),
        out_b.to_data(),
        "two runs, same weights and statistics"
    );
    assert!(out_a.to_data().iter::<f32>().all(f32::is_finite));
}

#[test]
fn replicas_are_checked() {
    assert!(Replicas::new(0).is_err());
    let config = TrainConfig {
        settings: konv_train::engine::Settings {
            replicas: 65,
            batch_size: 64,
            ..Default::default()
        },
        ..Default::default()
    };
    let err = config.validate().unwrap_err().to_string();
    assert!(
        err.contains("replicas: 65") && err.contains("batch size 64"),
        "{err}"
    );
}
