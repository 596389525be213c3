//! Data parallelism over CPU cores: each batch is split between model replicas, each replica
//! runs forward and backward on its share in its own single-threaded pool, and the gradients
//! are summed into one optimizer step (PyTorch's `DistributedDataParallel`, on one machine's
//! cores).
//!
//! Why: Burn's CPU backend parallelizes *inside* each operation, and a small network's many
//! small operations (batch norm, ReLU, the 64-channel convolutions of a 7×7 map) keep the
//! second core idle much of the time — ResNet-20 at batch 128 used 1.4 of 2 cores. One
//! replica per core keeps both busy, each on a smaller, more cache-friendly batch.
//!
//! The step is exactly the full batch's: each replica's loss is weighted by its share of the
//! batch, so the summed gradient is the gradient of the batch mean. What differs from one
//! replica is batch norm, which normalizes each replica's share with that share's own
//! statistics (as `DistributedDataParallel` does without `SyncBatchNorm`); the running
//! statistics become the mean of the replicas'. Results do not depend on thread timing: the
//! gradients are summed in replica order and the running statistics settled after each step.
//! Dropout is the exception: the replicas draw its masks from Burn's one random generator in
//! whatever order their threads reach it, so a model with dropout trains reproducibly only
//! on one replica.

use burn::optim::{GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::prelude::*;

use crate::TrainError;
use crate::engine::{Step, StepTotals};

/// One single-threaded pool per replica, made once per run.
pub struct Replicas {
    pools: Vec<rayon::ThreadPool>,
}

impl std::fmt::Debug for Replicas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Replicas({})", self.pools.len())
    }
}

impl Replicas {
    /// `n` replicas (at least 1), each computing on one thread.
    pub fn new(n: usize) -> Result<Self, TrainError> {
        if n == 0 {
            return Err(TrainError::setting(
                "replicas",
                "0: give at least 1 (one model replica per CPU core)".into(),
            ));
        }
        let pools = (0..n)
            .map(|i| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(1)
                    .thread_name(move |_| format!("konv-replica-{i}"))
                    .build()
                    .map_err(|e| {
                        TrainError::Config(format!("cannot start replica thread {i}: {e}"))
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Replicas { pools })
    }

    /// Number of replicas.
    pub fn len(&self) -> usize {
        self.pools.len()
    }

    /// Always false: there is at least one replica.
    pub fn is_empty(&self) -> bool {
        self.pools.is_empty()
    }
}

/// What one replica sends back: its gradients and its (weighted) figures.
struct Share {
    grads: GradientsParams,
    totals: StepTotals,
}

/// Forward and backward of one replica on its share, the loss weighted by `weight` (the
/// share's fraction of the batch).
fn replica_pass<M: Module, T: Step<M>>(
    task: &T,
    replica: M,
    share: T::Batch,
    weight: f64,
) -> Result<Share, TrainError> {
    let out = task.loss(&replica, share, false)?;
    let loss = out.loss * weight;
    let value = crate::engine::read_loss(loss.clone())?;
    let grads = GradientsParams::from_grads(loss.backward(), &replica);
    Ok(Share {
        grads,
        totals: StepTotals {
            loss: value,
            right: out.right,
            counted: out.counted,
            sums: out.sums,
        },
    })
}

/// One optimization step of any task with `batch` split between `replicas`
/// ([`Step::split`]): returns the updated model and the batch's figures (its mean loss).
///
/// # Errors
/// When a replica's share does not fit the task.
pub fn parallel_step<M: Module, T: Step<M>>(
    task: &T,
    model: M,
    optim: &mut ModuleOptimizer,
    batch: T::Batch,
    lr: f64,
    replicas: &Replicas,
) -> Result<(M, StepTotals), TrainError> {
    let n = task.batch_len(&batch);
    let parts = replicas.len().min(n).max(1);
    let device = crate::model::device_of(&model);
    // Shares as even as possible, the first ones one larger.
    let mut jobs = Vec::with_capacity(parts);
    let mut start = 0;
    for i in 0..parts {
        let len = n / parts + usize::from(i < n % parts);
        // Each replica gets its own autodiff graph (parameters with the same ids).
        let replica = model.clone().fork(&device);
        jobs.push((
            replica,
            task.split(&batch, start, len),
            len as f64 / n as f64,
        ));
        start += len;
    }
    drop(batch);
    let shares: Vec<Result<Share, TrainError>> = std::thread::scope(|scope| {
        let mut jobs = jobs.into_iter().zip(&replicas.pools);
        let ((replica, share, weight), first_pool) = jobs.next().expect("at least one share");
        let handles: Vec<_> = jobs
            .map(|((replica, share, weight), pool)| {
                scope.spawn(move || pool.install(|| replica_pass(task, replica, share, weight)))
            })
            .collect();
        let mut shares = vec![first_pool.install(|| replica_pass(task, replica, share, weight))];
        for handle in handles {
            match handle.join() {
                Ok(share) => shares.push(share),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        shares
    });
    let mut accumulator = GradientsAccumulator::new();
    let mut totals = StepTotals::default();
    for share in shares {
        let share = share?;
        accumulator.accumulate(&model, share.grads);
        totals.loss += share.totals.loss;
        totals.right += share.totals.right;
        totals.counted += share.totals.counted;
        if totals.sums.is_empty() {
            totals.sums = share.totals.sums;
        } else {
            for (s, v) in totals.sums.iter_mut().zip(share.totals.sums) {
                *s += v;
            }
        }
    }
    let model = optim.step(lr, model, accumulator.grads());
    // Batch norm's running statistics: each replica's thread left its update; `valid()`
    // averages them now, on this thread, so the next step starts from settled values.
    let _ = model.valid();
    Ok((model, totals))
}
