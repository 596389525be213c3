//! Fuzzing of konv's file readers on stable Rust, without `cargo fuzz`'s nightly
//! instrumentation: every reader of a file a user hands konv (IDX, raw and gzip; PNG and
//! JPEG; a run folder's `config.json` and `state.json`; PyTorch weights) gets valid seed
//! files, and [`fuzz`] feeds it mutations of them.
//!
//! A mutated input fails the run when the reader
//! - panics (caught, with its message),
//! - allocates more at its peak than its target allows (a counting global allocator
//!   measures every allocation, so a bomb is caught before it becomes an OOM kill), or
//! - takes longer than its target allows (a hang or quadratic work).
//!
//! Without coverage instrumentation, the corpus grows by *outcome*: a mutation whose result
//! (success, or the error's message with its numbers blanked) is new joins the corpus, so
//! the mutations walk into deeper checks of each format. `cargo xtask fuzz --minutes N` runs
//! the long campaign; the tests run a short, seeded one in CI.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, RngExt, SeedableRng};

pub mod targets;

/// The global allocator of any program that links this crate: the system's, counting the
/// bytes live now and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call goes to `System` with the caller's layout; the counters only observe.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is passed on unchanged.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as above.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as above.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` and returns its result with the most bytes it had allocated at once (above
/// what was live when it started; allocations of other threads in that time count too).
pub fn measure_peak<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let start = LIVE.load(Ordering::Relaxed);
    PEAK.store(start, Ordering::Relaxed);
    let out = f();
    (out, PEAK.load(Ordering::Relaxed).saturating_sub(start))
}

/// A reader of one input: `Ok` when it accepts it, the error's message when it refuses.
pub type Reader = dyn FnMut(&[u8]) -> Result<(), String>;

/// A reader under test.
pub struct Target {
    /// Its name (`cargo xtask fuzz --target NAME`).
    pub name: &'static str,
    /// What it reads, in a few words.
    pub about: &'static str,
    /// Valid files the mutations start from.
    pub seeds: Vec<Vec<u8>>,
    /// Most mutations land in the first `hot` bytes, where formats keep their headers
    /// (the rest of a weights file is tensor data that any bytes fill validly).
    pub hot: usize,
    /// The most bytes one input may allocate at once, given its length.
    pub memory: fn(usize) -> usize,
    /// The longest one input may take.
    pub time: Duration,
    /// Reads one input: `Ok` when konv accepts it, the error's message when it refuses.
    /// A panic is a finding.
    pub run: Box<Reader>,
}

/// What went wrong with one input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The reader panicked, with this message.
    Panic(String),
    /// It allocated this many bytes at its peak, past its target's bound.
    Memory(usize),
    /// It took this long, past its target's bound.
    Slow(Duration),
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Panic(m) => write!(f, "panic: {m}"),
            Problem::Memory(b) => write!(f, "allocated {} MiB at once", b >> 20),
            Problem::Slow(d) => write!(f, "took {:.1} s", d.as_secs_f64()),
        }
    }
}

/// One input that failed, and where it was saved.
#[derive(Debug, Clone)]
pub struct Finding {
    /// What went wrong.
    pub problem: Problem,
    /// The input's length.
    pub len: usize,
    /// The file it was saved to, when a folder was given.
    pub saved: Option<PathBuf>,
}

/// The result of fuzzing one target.
#[derive(Debug, Clone)]
pub struct Report {
    /// The target.
    pub target: &'static str,
    /// Inputs run (seeds included).
    pub execs: u64,
    /// Distinct outcomes seen (acceptance, and each kind of refusal).
    pub outcomes: usize,
    /// Inputs in the corpus at the end.
    pub corpus: usize,
    /// Inputs the target accepted.
    pub accepted: u64,
    /// The failures, at most 20 (the first of each kind of problem message).
    pub findings: Vec<Finding>,
    /// Time taken.
    pub elapsed: Duration,
}

/// How long a campaign runs.
#[derive(Debug, Clone, Copy)]
pub enum Budget {
    /// This many mutated inputs (reproducible with the same seed).
    Execs(u64),
    /// Until this much time has passed.
    Time(Duration),
}

/// One campaign at a time: the panic hook and the allocation peak are per process.
static CAMPAIGN: Mutex<()> = Mutex::new(());

/// Fuzzes `target` within `budget`, from random seed `seed`; inputs that fail are written
/// into `save` (when given) as `<target>-<n>.bin`.
pub fn fuzz(target: &mut Target, budget: Budget, seed: u64, save: Option<&Path>) -> Report {
    let _one = CAMPAIGN.lock().unwrap_or_else(|e| e.into_inner());
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut corpus: Vec<Vec<u8>> = target.seeds.clone();
    let mut seen = HashSet::new();
    let mut report = Report {
        target: target.name,
        execs: 0,
        outcomes: 0,
        corpus: 0,
        accepted: 0,
        findings: Vec::new(),
        elapsed: Duration::ZERO,
    };
    let mut kinds = HashSet::new();
    let seeds = target.seeds.clone();
    let mut queue = seeds.into_iter();
    loop {
        let done = match budget {
            Budget::Execs(n) => report.execs >= n + target.seeds.len() as u64,
            Budget::Time(t) => started.elapsed() >= t,
        };
        if done {
            break;
        }
        let input = queue.next().unwrap_or_else(|| {
            let base = &corpus[rng.random_range(0..corpus.len())];
            let other = &corpus[rng.random_range(0..corpus.len())];
            mutate(base, other, target.hot, &mut rng)
        });
        report.execs += 1;
        let t0 = Instant::now();
        let (result, peak) =
            measure_peak(|| std::panic::catch_unwind(AssertUnwindSafe(|| (target.run)(&input))));
        let took = t0.elapsed();
        let problem = match &result {
            Err(payload) => Some(Problem::Panic(panic_message(payload.as_ref()))),
            Ok(_) if peak > (target.memory)(input.len()) => Some(Problem::Memory(peak)),
            Ok(_) if took > target.time => Some(Problem::Slow(took)),
            Ok(_) => None,
        };
        if let Some(problem) = problem {
            let kind = outcome_class(&problem.to_string());
            if kinds.insert(kind) && report.findings.len() < 20 {
                let saved = save.and_then(|dir| {
                    let path = dir.join(format!("{}-{}.bin", target.name, report.findings.len()));
                    std::fs::create_dir_all(dir).ok()?;
                    std::fs::write(&path, &input).ok()?;
                    Some(path)
                });
                report.findings.push(Finding {
                    problem,
                    len: input.len(),
                    saved,
                });
            }
            continue;
        }
        let outcome = match result {
            Ok(Ok(())) => {
                report.accepted += 1;
                "accepted".to_string()
            }
            Ok(Err(message)) => outcome_class(&message),
            Err(_) => unreachable!("a panic is a problem above"),
        };
        if seen.insert(outcome) && corpus.len() < 512 {
            corpus.push(input);
        }
    }
    std::panic::set_hook(hook);
    report.outcomes = seen.len();
    report.corpus = corpus.len();
    report.elapsed = started.elapsed();
    report
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic with no message".into())
}

/// A message with its numbers, paths and quoted parts blanked, cut to its first words: the
/// kind of outcome, not its instance.
fn outcome_class(message: &str) -> String {
    let mut class = String::new();
    let mut quoted = false;
    for c in message.chars() {
        match c {
            '`' | '"' | '\'' => quoted = !quoted,
            _ if quoted => {}
            '0'..='9' => {
                if !class.ends_with('#') {
                    class.push('#');
                }
            }
            _ => class.push(c),
        }
    }
    // Temporary file names differ per input; keep what follows the last path.
    let class = class.rsplit(".bin:").next().unwrap_or(&class).to_string();
    class.chars().take(80).collect()
}

/// Values that break size arithmetic and bounds when written into a header.
const INTERESTING: [u32; 10] = [
    0,
    1,
    2,
    0x7F,
    0xFF,
    0x7FFF,
    0xFFFF,
    0x7FFF_FFFF,
    0x8000_0000,
    0xFFFF_FFFF,
];

/// A mutation of `base`: one to four edits of the kinds fuzzers use (bit flips, random or
/// boundary bytes, boundary 32-bit words in either byte order, inserted, deleted or
/// duplicated runs, a cut, a splice with `other`), most of them in the first `hot` bytes.
pub fn mutate(base: &[u8], other: &[u8], hot: usize, rng: &mut impl Rng) -> Vec<u8> {
    let mut out = base.to_vec();
    let edits = 1 + rng.random_range(0..4);
    for _ in 0..edits {
        let len = out.len();
        match rng.random_range(0..10) {
            0 if len > 0 => {
                let i = pick(rng, hot, len);
                out[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = pick(rng, hot, len);
                out[i] = rng.random();
            }
            2 if len > 0 => {
                let i = pick(rng, hot, len);
                out[i] = [0u8, 1, 0x7F, 0x80, 0xFF][rng.random_range(0..5)];
            }
            3 if len >= 4 => {
                let i = pick(rng, hot, len - 3);
                let v = INTERESTING[rng.random_range(0..INTERESTING.len())];
                let bytes = if rng.random_bool(0.5) {
                    v.to_be_bytes()
                } else {
                    v.to_le_bytes()
                };
                out[i..i + 4].copy_from_slice(&bytes);
            }
            4 => {
                let i = pick(rng, hot, len + 1).min(len);
                let n = rng.random_range(1..=16);
                let run: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                out.splice(i..i, run);
            }
            5 if len > 0 => {
                let i = pick(rng, hot, len);
                let n = rng.random_range(1..=64).min(len - i);
                out.drain(i..i + n);
            }
            6 if len > 0 => {
                let i = pick(rng, hot, len);
                let n = rng.random_range(1..=64).min(len - i);
                let run = out[i..i + n].to_vec();
                out.splice(i..i, run);
            }
            7 if len > 1 => {
                let keep = rng.random_range(0..len);
                out.truncate(keep);
            }
            8 if !other.is_empty() && len > 0 => {
                let i = pick(rng, hot, len);
                let j = rng.random_range(0..other.len());
                out.truncate(i);
                out.extend_from_slice(&other[j..]);
            }
            _ if len >= 2 => {
                // Swap two bytes of the header.
                let (i, j) = (pick(rng, hot, len), pick(rng, hot, len));
                out.swap(i, j);
            }
            _ => out.push(rng.random()),
        }
    }
    out
}

/// A position below `len`, in the first `hot` bytes four times out of five.
fn pick(rng: &mut impl Rng, hot: usize, len: usize) -> usize {
    if len == 0 {
        return 0;
    }
    let window = if hot > 0 && rng.random_bool(0.8) {
        hot.min(len)
    } else {
        len
    };
    rng.random_range(0..window)
}

#[cfg(test)]
mod tests {
    // (Here, alone in its test binary: other tests allocating at the same time would count.)
    #[test]
    fn the_allocator_measures_the_peak() {
        let ((), peak) = super::measure_peak(|| {
            let big = vec![7u8; 8 << 20];
            std::hint::black_box(&big);
        });
        assert!((8 << 20..9 << 20).contains(&peak), "{peak}");
    }
}
