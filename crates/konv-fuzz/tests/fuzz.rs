//! A short, seeded fuzz run of every reader (CI's share of `cargo xtask fuzz`), and a test
//! that the harness does find what it looks for.

use std::time::Duration;

use konv_fuzz::targets::{NAMES, target};
use konv_fuzz::{Budget, Problem, Target, fuzz};

/// Mutated inputs per target in CI: a few seconds each in release.
fn execs(name: &str) -> u64 {
    match name {
        "idx-raw" | "idx-gzip" => 4000,
        "image" => 1500,
        "run-config" => 300,
        "run-state" => 30,
        _ => 150,
    }
}

#[test]
fn every_reader_survives_mutated_files() {
    for name in NAMES {
        let mut t = target(name);
        let seeds = t.seeds.len() as u64;
        // The seeds the reader takes whole. Not every seed is one: run-config's dense-task
        // descriptions of a classification run are refused when their weights load, and are
        // there so that the dense readers parse valid JSON too.
        let whole = t
            .seeds
            .clone()
            .iter()
            .filter(|s| (t.run)(s).is_ok())
            .count() as u64;
        assert!(whole >= 1, "{name}: no seed is read whole");
        let report = fuzz(&mut t, Budget::Execs(execs(name)), 7, None);
        println!(
            "{name:<20} {:>6} inputs, {:>4} accepted, {:>3} outcomes, {:.1} s",
            report.execs,
            report.accepted,
            report.outcomes,
            report.elapsed.as_secs_f64()
        );
        assert!(report.findings.is_empty(), "{name}: {:?}", report.findings);
        assert_eq!(report.execs, execs(name) + seeds);
        // The whole seeds are read again, and the mutations reach the readers' refusals.
        assert!(report.accepted >= whole, "{name}: {report:?}");
        assert!(report.outcomes >= 2, "{name}: {report:?}");
    }
}

/// A reader with planted bugs: it panics on a header word, and allocates what a header
/// field asks for. The harness must find both, from a valid seed, and save the inputs.
#[test]
fn the_harness_finds_a_planted_panic_and_a_bomb() {
    let mut t = Target {
        name: "planted",
        about: "a reader with two bugs",
        seeds: vec![b"KONV\x00\x00\x00\x10rest of the file".to_vec()],
        hot: 8,
        memory: |len| (1 << 20) + len,
        time: Duration::from_secs(5),
        run: Box::new(|bytes| {
            if bytes.len() < 8 || &bytes[..4] != b"KONV" {
                return Err("not a KONV file".into());
            }
            let n = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
            if n == 0xFFFF_FFFF {
                panic!("the planted bug");
            }
            // The bomb: the declared size is allocated before it is checked.
            let buffer = vec![1u8; (n as usize).min(64 << 20)];
            std::hint::black_box(&buffer);
            Ok(())
        }),
    };
    let dir = std::env::temp_dir().join(format!("konv-fuzz-planted-{}", std::process::id()));
    let report = fuzz(&mut t, Budget::Execs(20_000), 1, Some(&dir));
    let panic = report
        .findings
        .iter()
        .find(|f| matches!(&f.problem, Problem::Panic(m) if m == "the planted bug"));
    let bomb = report
        .findings
        .iter()
        .find(|f| matches!(f.problem, Problem::Memory(_)));
    assert!(panic.is_some() && bomb.is_some(), "{report:?}");
    let saved = panic
        .and_then(|f| f.saved.clone())
        .expect("the input is saved");
    let input = std::fs::read(&saved).unwrap();
    assert_eq!(&input[4..8], &[0xFF; 4]);
    std::fs::remove_dir_all(&dir).ok();
}
