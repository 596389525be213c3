//! Choosing the device at run time: `cpu` (Flex), `flex`, `ndarray`, `wgpu`, and `cuda` with
//! the `cuda` feature.

use std::fmt;
use std::str::FromStr;

use burn::prelude::*;

/// Ends the process with `code` once stdout and stderr are flushed, without running the C
/// exit handlers of the libraries it loaded: the way to end a program that used the `wgpu`
/// backend (the `konv` binary and konv's wgpu test end so).
///
/// A wgpu run leaves threads behind that Burn keeps for the device (its server and poll
/// threads) and the Vulkan driver's own (Mesa's lavapipe: rasterizer, queue and disk-cache
/// threads). A normal `exit` runs the driver's exit handlers and LLVM's destructors while
/// those threads still run, and that race crashed `konv bench --backend wgpu` with SIGSEGV
/// in CI, after its JSON had been printed whole. Call this only once the program's work is
/// done and its files are written and closed (dropped): nothing else runs after it.
pub fn exit(code: i32) -> ! {
    use std::io::Write;
    std::io::stdout().flush().ok();
    std::io::stderr().flush().ok();
    #[cfg(unix)]
    // SAFETY: `_exit` only ends the process; the streams were flushed above, and the caller
    // has nothing left to run or drop.
    unsafe {
        libc::_exit(code)
    }
    #[cfg(not(unix))]
    std::process::exit(code)
}

/// Keeps the memory a training step frees in the process, for the next step to reuse,
/// instead of handing it back to the kernel: call it first thing in `main`, so that the
/// whole run allocates under it. On Linux with glibc only (elsewhere it does nothing), and
/// only when the environment does not tune the allocator itself (`GLIBC_TUNABLES`,
/// `MALLOC_*_`).
///
/// A step allocates and frees the same large buffers each time (activations, gradients,
/// im2col and Winograd scratch). With glibc's defaults, buffers past its mmap threshold (at
/// most 32 MiB) come from fresh mappings, and free space at the top of a heap past the trim
/// threshold goes back to the kernel; the next step then faults the pages in again and the
/// kernel zeroes each one. On ResNet-20's training step (batch 96, two replicas, two AVX2
/// cores, `konv bench`, three A/B pairs) that was 0.4–1.1 s of system time in 22 steps;
/// with this, 0.15–0.23 s, the median step 6–11% shorter, and the same peak memory within
/// 2 MiB.
///
/// Returns whether it changed the settings.
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if allocator_tuned_by_environment() {
            return false;
        }
        // SAFETY: `mallopt` only changes the allocator's settings, under glibc's own lock;
        // both values are in range (non-negative `c_int`s).
        unsafe {
            // Buffers up to 256 MiB from the heap, and the heap's top kept up to 1 GiB free.
            libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

/// Whether the environment sets glibc's allocator up itself: `GLIBC_TUNABLES`, or one of
/// the older `MALLOC_*_` variables (`MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`, …).
#[cfg_attr(not(all(target_os = "linux", target_env = "gnu")), allow(dead_code))]
fn allocator_tuned_by_environment() -> bool {
    std::env::vars_os().any(|(key, _)| {
        let key = key.to_string_lossy();
        key == "GLIBC_TUNABLES" || (key.starts_with("MALLOC_") && key.ends_with('_'))
    })
}

/// A compute backend, chosen by name at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendName {
    /// The fastest CPU backend here: Flex (measured against NdArray by `cargo xtask bench`).
    Cpu,
    /// Burn's pure-Rust CPU backend, with SIMD and rayon threads.
    Flex,
    /// Burn's NdArray CPU backend (deprecated upstream; kept for comparison).
    Ndarray,
    /// Any GPU through wgpu (Vulkan, Metal, DX12); on a machine without one, Mesa's lavapipe.
    Wgpu,
    /// NVIDIA GPUs through CUDA.
    #[cfg(feature = "cuda")]
    Cuda,
}

impl BackendName {
    /// Every backend this build supports.
    pub fn all() -> &'static [BackendName] {
        &[
            BackendName::Cpu,
            BackendName::Flex,
            BackendName::Ndarray,
            BackendName::Wgpu,
            #[cfg(feature = "cuda")]
            BackendName::Cuda,
        ]
    }

    /// The name used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendName::Cpu => "cpu",
            BackendName::Flex => "flex",
            BackendName::Ndarray => "ndarray",
            BackendName::Wgpu => "wgpu",
            #[cfg(feature = "cuda")]
            BackendName::Cuda => "cuda",
        }
    }

    /// Whether the backend runs on the CPU (and so gives run-to-run identical results).
    pub fn is_cpu(self) -> bool {
        matches!(
            self,
            BackendName::Cpu | BackendName::Flex | BackendName::Ndarray
        )
    }

    /// The device, without checking that it works; see [`open`](Self::open).
    pub fn device(self) -> Device {
        match self {
            BackendName::Cpu | BackendName::Flex => Device::flex(),
            #[allow(deprecated)]
            BackendName::Ndarray => Device::ndarray(),
            BackendName::Wgpu => Device::wgpu(DeviceKind::DefaultDevice),
            #[cfg(feature = "cuda")]
            BackendName::Cuda => Device::cuda(0),
        }
    }

    /// The device, after a tiny computation on it has succeeded. GPU backends initialize
    /// lazily and panic when no adapter exists; this turns that into an error.
    pub fn open(self) -> Result<Device, BackendError> {
        if self == BackendName::Wgpu && compute_adapters().is_empty() {
            // wgpu would fall back to an OpenGL adapter, which passes the probe and then
            // hangs or panics in the first real kernel.
            return Err(BackendError::Unavailable {
                backend: self,
                reason: "no Vulkan, Metal or DX12 adapter; an OpenGL-only adapter cannot run konv's compute kernels".into(),
            });
        }
        let device = self.device();
        probe(&device).map_err(|reason| BackendError::Unavailable {
            backend: self,
            reason,
        })?;
        Ok(device)
    }
}

impl fmt::Display for BackendName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BackendName {
    type Err = BackendError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::all()
            .iter()
            .copied()
            .find(|b| b.as_str() == s)
            .ok_or_else(|| BackendError::Unknown(s.to_string()))
    }
}

/// A backend that does not exist or does not work here.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The name is not a backend of this build.
    #[error("unknown backend `{0}`; valid backends: {list}", list = BackendName::all().iter().map(|b| b.as_str()).collect::<Vec<_>>().join(", "))]
    Unknown(String),
    /// The backend could not start a device.
    #[error(
        "backend `{backend}` has no usable device here ({reason}); use --backend cpu, or install a GPU driver (for wgpu without a GPU: apt-get install mesa-vulkan-drivers)"
    )]
    Unavailable {
        /// The backend.
        backend: BackendName,
        /// What went wrong, first line only.
        reason: String,
    },
}

/// A graphics adapter wgpu sees.
#[derive(Debug, Clone, PartialEq)]
pub struct Adapter {
    /// The adapter's name (`NVIDIA H200`, `llvmpipe (LLVM 19.1.7, 256 bits)`).
    pub name: String,
    /// Graphics API: `Vulkan`, `Metal`, `Dx12`, `Gl`.
    pub api: String,
    /// Discrete GPU, integrated GPU, CPU (software), virtual GPU or other.
    pub kind: String,
    /// Driver and its version.
    pub driver: String,
}

/// Every adapter wgpu finds, on every graphics API, OpenGL included.
pub fn adapters() -> Vec<Adapter> {
    list_adapters(wgpu::Backends::all())
}

/// The adapters konv can compute on: Vulkan, Metal and DX12 (OpenGL lacks the compute
/// support konv's kernels need).
pub fn compute_adapters() -> Vec<Adapter> {
    list_adapters(wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12)
}

fn list_adapters(backends: wgpu::Backends) -> Vec<Adapter> {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = backends;
    let instance = wgpu::Instance::new(desc);
    futures_lite::future::block_on(instance.enumerate_adapters(backends))
        .into_iter()
        .map(|a| {
            let info = a.get_info();
            Adapter {
                name: info.name,
                api: format!("{:?}", info.backend),
                kind: format!("{:?}", info.device_type),
                driver: format!("{} {}", info.driver, info.driver_info)
                    .trim()
                    .to_string(),
            }
        })
        .collect()
}

/// Runs a one-element computation on `device`, catching the panic a missing adapter causes.
/// The device may fail on one of its own threads; the first panic message, from whichever
/// thread, is the one that says why.
fn probe(device: &Device) -> Result<(), String> {
    use std::sync::{Arc, Mutex};
    let first: Arc<Mutex<Option<String>>> = Arc::default();
    let previous = std::panic::take_hook();
    let sink = first.clone();
    std::panic::set_hook(Box::new(move |info| {
        let mut slot = sink.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            let payload = info.payload();
            let msg = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("the device failed to start");
            *slot = Some(msg.lines().next().unwrap_or_default().to_string());
        }
    }));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Tensor::<1>::from_floats([1.0, 2.0], device)
            .sum()
            .into_scalar::<f32>()
    }));
    std::panic::set_hook(previous);
    match result {
        Ok(3.0) => Ok(()),
        Ok(v) => Err(format!("a test sum gave {v} instead of 3")),
        Err(_) => Err(first
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or_else(|| "the device failed to start".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_freed_memory_tunes_glibc_unless_the_environment_does() {
        let tuned = allocator_tuned_by_environment();
        let changed = keep_freed_memory();
        if cfg!(all(target_os = "linux", target_env = "gnu")) {
            assert_eq!(changed, !tuned);
        } else {
            assert!(!changed);
        }
        // Large buffers still come and go.
        for _ in 0..2 {
            let buffer = vec![1.0f32; 16 << 20];
            assert_eq!(buffer.iter().sum::<f32>(), (16 << 20) as f32);
        }
    }

    #[test]
    fn names_round_trip_and_unknown_lists_valid() {
        for b in BackendName::all() {
            assert_eq!(b.as_str().parse::<BackendName>().unwrap(), *b);
        }
        let err = "tpu".parse::<BackendName>().unwrap_err().to_string();
        assert!(err.contains("cpu, flex, ndarray, wgpu"), "{err}");
    }

    #[test]
    fn compute_adapters_are_the_non_opengl_ones() {
        let all = adapters();
        let compute = compute_adapters();
        assert!(compute.iter().all(|a| a.api != "Gl" && all.contains(a)));
        assert_eq!(
            compute.len(),
            all.iter().filter(|a| a.api != "Gl").count(),
            "{all:?}"
        );
    }

    #[test]
    fn cpu_backends_open() {
        assert!(BackendName::Cpu.open().is_ok());
        assert!(BackendName::Ndarray.open().is_ok());
    }
}
