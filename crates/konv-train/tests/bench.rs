//! `konv_train::bench` on the CPU. One test, alone in its binary, runs the cases one after
//! the other: the benchmarks draw their weights from Burn's one CPU generator, which other
//! tests running at the same time would draw from too.

use burn::prelude::*;
use konv_train::bench::{BenchConfig, BenchResult, Mode, agreement, bench};

#[test]
fn benchmarks_time_steps_agree_and_refuse_bad_settings() {
    a_benchmark_times_every_step_and_reports_memory();
    the_same_seed_draws_the_same_network_and_batch();
    the_cpu_agrees_with_itself_and_bad_settings_are_refused();
}

fn tiny(mode: Mode) -> BenchConfig {
    BenchConfig {
        model: "fashion-cnn".into(),
        mode,
        batch_size: 4,
        size: 12,
        warmup: 1,
        steps: 3,
        ..BenchConfig::default()
    }
}

fn a_benchmark_times_every_step_and_reports_memory() {
    for mode in [Mode::Train, Mode::Infer] {
        let r = bench(&tiny(mode), &Device::flex()).unwrap();
        assert!(r.images_per_sec > 0.0 && r.ms_min <= r.ms_median && r.ms_median <= r.ms_max);
        assert_eq!(r.first_loss.is_some(), mode == Mode::Train);
        assert!(r.peak_memory_bytes.unwrap() > 1 << 20);
        // Its JSON reads back.
        let json = serde_json::to_string(&r).unwrap();
        let back: BenchResult = serde_json::from_str(&json).unwrap();
        assert_eq!(back.config.batch_size, 4);
    }
}

fn the_same_seed_draws_the_same_network_and_batch() {
    let config = tiny(Mode::Train);
    let a = bench(&config, &Device::flex()).unwrap();
    let b = bench(&config, &Device::flex()).unwrap();
    assert_eq!(a.first_loss, b.first_loss);
    let other = bench(
        &BenchConfig {
            seed: 9,
            ..config.clone()
        },
        &Device::flex(),
    )
    .unwrap();
    assert_ne!(a.first_loss, other.first_loss);
}

fn the_cpu_agrees_with_itself_and_bad_settings_are_refused() {
    let config = BenchConfig {
        model: "resnet20".into(),
        ..tiny(Mode::Train)
    };
    let a = agreement(&config, &Device::flex(), 2).unwrap();
    assert!(a.logits_relative < 1e-4, "{a:?}");
    assert!(a.losses_relative < 1e-4, "{a:?}");
    assert!(a.cpu_losses[1] != a.cpu_losses[0]);
    let err = bench(
        &BenchConfig {
            size: 8,
            model: "lenet5".into(),
            ..tiny(Mode::Infer)
        },
        &Device::flex(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.starts_with("size: 8"), "{err}");
    let err = bench(
        &BenchConfig {
            replicas: 5,
            ..tiny(Mode::Train)
        },
        &Device::flex(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.starts_with("replicas:"), "{err}");
}
