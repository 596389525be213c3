//! konv against torchvision on the committed reduced-width fixture (made by
//! `xtask/parity/make_fixtures.py --divisor 8 --size 64 --batch 2`): the same weights (with
//! non-default batch-norm statistics) and input give the same output.

use std::path::Path;

use burn::prelude::*;
use konv_models::parity::check_fixtures;

#[test]
fn reduced_torchvision_models_match() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity");
    let results = check_fixtures(&dir, &Device::flex()).expect("fixtures load");
    let names: Vec<&str> = results.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "resnet18",
            "resnet34",
            "resnet50",
            "alexnet",
            "googlenet",
            "vgg16"
        ]
    );
    for r in &results {
        println!(
            "{:<10} 1/{:<2} {:>4} tensors  max|diff| {:.3e}  max|ref| {:.3e}",
            r.name, r.divisor, r.loaded, r.max_abs_diff, r.max_abs_ref
        );
        assert!(r.passes(), "{r:?}");
    }
}

#[test]
fn a_loader_that_skipped_batch_norm_statistics_would_fail() {
    // Reset the running statistics after loading: the output must then differ, so the
    // fixture really exercises them.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity");
    let device = Device::flex();
    let mut model = konv_models::registry::build_narrow("resnet18", 10, 8, &device).unwrap();
    konv_models::import::load_pytorch(&mut model, "resnet18", &dir.join("resnet18.safetensors"))
        .unwrap();
    let io = dir.join("resnet18.io.safetensors");
    let input: Tensor<4> = konv_models::parity::read_tensor(&io, "input", &device).unwrap();
    let expected: Tensor<2> = konv_models::parity::read_tensor(&io, "output", &device).unwrap();
    let konv_models::Classifier::ResNet(mut resnet) = model else {
        panic!("a ResNet")
    };
    resnet.bn1 = konv_models::layers::batch_norm(8, &device);
    let diff = (resnet.forward(input) - expected.clone())
        .abs()
        .max()
        .into_scalar::<f32>();
    let reference = expected.abs().max().into_scalar::<f32>();
    assert!(diff > 1e-2 * reference, "{diff} vs {reference}");
}

#[test]
fn import_errors_are_clear() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity");
    let device = Device::flex();
    // Wrong model: AlexNet weights into a ResNet.
    let mut model = konv_models::registry::build_narrow("resnet18", 10, 8, &device).unwrap();
    let err =
        konv_models::import::load_pytorch(&mut model, "resnet18", &dir.join("alexnet.safetensors"))
            .unwrap_err()
            .to_string();
    assert!(
        err.contains("alexnet.safetensors") && err.contains("missing"),
        "{err}"
    );
    // Keys as the file should have them: PyTorch's names.
    assert!(
        err.contains("bn1.bias") && err.contains("classifier.1.weight"),
        "{err}"
    );
    match konv_models::import::load_pytorch(
        &mut model,
        "resnet18",
        &dir.join("alexnet.safetensors"),
    ) {
        Err(konv_models::import::ImportError::Mismatch { missing, .. }) => {
            assert!(
                missing.contains(&"layer1.0.conv1.weight".to_string()),
                "{missing:?}"
            );
            assert!(
                missing.contains(&"layer1.0.bn1.running_var".to_string()),
                "{missing:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    // Right keys, wrong widths.
    let mut model = konv_models::registry::build_narrow("resnet18", 10, 4, &device).unwrap();
    let err = konv_models::import::load_pytorch(
        &mut model,
        "resnet18",
        &dir.join("resnet18.safetensors"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("wrong shape"), "{err}");
    // Not a weights file, and no file.
    let err = konv_models::import::load_pytorch(&mut model, "resnet18", &dir.join("manifest.json"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown format"), "{err}");
    let err = konv_models::import::load_pytorch(&mut model, "resnet18", &dir.join("nope.pth"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not exist"), "{err}");
    let garbage =
        std::env::temp_dir().join(format!("konv-garbage-{}.safetensors", std::process::id()));
    std::fs::write(&garbage, b"not a safetensors file").unwrap();
    let err = konv_models::import::load_pytorch(&mut model, "resnet18", &garbage)
        .unwrap_err()
        .to_string();
    std::fs::remove_file(&garbage).ok();
    assert!(err.contains("could not be read"), "{err}");
}

#[test]
fn a_torch_save_pth_file_loads_the_same() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity");
    let device = Device::flex();
    let mut model = konv_models::registry::build_narrow("resnet18", 10, 8, &device).unwrap();
    let report =
        konv_models::import::load_pytorch(&mut model, "resnet18", &dir.join("resnet18.pth"))
            .unwrap();
    // 20 convolutions/dense weights and biases + 20 batch norms × 4 tensors.
    assert!(report.loaded > 80, "{report:?}");
    assert!(report.unused.is_empty(), "{report:?}");
    let io = dir.join("resnet18.io.safetensors");
    let input: Tensor<4> = konv_models::parity::read_tensor(&io, "input", &device).unwrap();
    let expected: Tensor<2> = konv_models::parity::read_tensor(&io, "output", &device).unwrap();
    let diff = (model.forward(input) - expected.clone())
        .abs()
        .max()
        .into_scalar::<f32>();
    assert!(
        diff <= 1e-4 * expected.abs().max().into_scalar::<f32>(),
        "{diff}"
    );
}
