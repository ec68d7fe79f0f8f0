//! A fork/join pool for the short parallel loops of decoding.
//!
//! A decode step of a small model is ~200 matmuls of 0.02-0.3 ms each. On
//! rayon, every one of them injects a job from the (non-pool) caller thread,
//! wakes the workers and puts the caller to sleep on a condvar until they
//! finish: tens of µs of scheduling per matmul, 15-20% of a decode step.
//! This pool keeps `threads - 1` workers spinning for a while after each
//! job (then yielding, then parked on a condvar), and the calling thread
//! works too, so a job costs two cache-line handoffs when the workers are
//! hot.
//!
//! Work is split into chunks claimed from an atomic counter, so a worker
//! the OS descheduled delays only the chunk it holds. The caller closes
//! the job when it runs out of chunks; a worker that wakes after that skips
//! the job without touching it.
//!
//! One job at a time per pool: a second thread calling in while a job runs
//! (or a job calling in from inside itself) runs its chunks alone on its
//! own thread instead of waiting.
//!
//! Pools are global, one per thread count, sized by
//! `rayon::current_num_threads()` so `--threads` and `ThreadPool::install`
//! keep working as before.

use crate::CpuError;
use std::any::Any;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// How long an idle worker spins (pure `pause` loop) before it starts
/// yielding its core: covers the gaps between matmuls within a step.
const SPIN: Duration = Duration::from_micros(100);
/// How long an idle worker keeps yielding before it parks: covers the gaps
/// between decode steps (sampling, detokenising) without a futex wake.
const YIELD: Duration = Duration::from_millis(3);

/// Bits of [`Shared::state`]: job generation in the high 32 bits, the
/// closed flag, and the number of workers inside the job.
const GEN_SHIFT: u32 = 32;
const CLOSED: u64 = 1 << 31;
const COUNT_MASK: u64 = CLOSED - 1;

fn generation(state: u64) -> u64 {
    state >> GEN_SHIFT
}

/// The job a worker runs: a closure on the caller's stack, alive until the
/// caller has seen every registered worker leave it.
struct JobRef<'a> {
    f: &'a (dyn Fn() + Sync),
}

struct Shared {
    /// generation << 32 | CLOSED | workers inside the job
    state: AtomicU64,
    /// `*const JobRef` of the current generation; set before the
    /// generation is published, read only by registered workers.
    job: AtomicPtr<()>,
    /// Workers parked (or about to park) on `wake`.
    sleeping: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
    shutdown: AtomicBool,
    /// The first panic of a worker in the current job, re-raised by the caller.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

/// A set of worker threads plus the calling thread.
pub struct Pool {
    threads: usize,
    shared: Arc<Shared>,
    /// Held by the thread whose job the workers run.
    busy: AtomicBool,
    handles: Vec<std::thread::JoinHandle<()>>,
}

impl Pool {
    /// A pool of `threads` participants: the caller plus `threads - 1`
    /// workers (fewer if the OS refuses to start some).
    pub fn new(threads: usize) -> Self {
        let shared = Arc::new(Shared {
            state: AtomicU64::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            sleeping: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            shutdown: AtomicBool::new(false),
            panic: Mutex::new(None),
        });
        let handles: Vec<_> = (1..threads.max(1))
            .map_while(|i| {
                let s = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("marlin-pool-{i}"))
                    .spawn(move || worker(&s))
                    .ok()
            })
            .collect();
        Self {
            threads: handles.len() + 1,
            shared,
            busy: AtomicBool::new(false),
            handles,
        }
    }

    /// Participants (workers + the caller).
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f` on the caller and on every worker that joins before the
    /// caller's `f` returns; returns when all of them have left `f`.
    /// `f` must split its work itself (e.g. chunks from a shared counter)
    /// and must do all of it even if it runs on the caller alone.
    fn broadcast(&self, f: &(dyn Fn() + Sync)) {
        if self.handles.is_empty()
            || self
                .busy
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        {
            f();
            return;
        }
        let s = &*self.shared;
        let job = JobRef { f };
        let gen = generation(s.state.load(Ordering::Relaxed)).wrapping_add(1) & 0xFFFF_FFFF;
        s.job
            .store(&job as *const JobRef as *mut (), Ordering::Relaxed);
        // Publishes the job pointer with the new generation (open, 0 inside).
        s.state.store(gen << GEN_SHIFT, Ordering::SeqCst);
        if s.sleeping.load(Ordering::SeqCst) > 0 {
            let _g = s.lock.lock().unwrap_or_else(PoisonError::into_inner);
            s.wake.notify_all();
        }
        let mine = catch_unwind(AssertUnwindSafe(f));
        // Close the job, then wait for the workers inside it to leave:
        // after that no thread touches `job` again.
        let mut st = s.state.fetch_or(CLOSED, Ordering::AcqRel) | CLOSED;
        let mut spins = 0u32;
        while st & COUNT_MASK != 0 {
            spins += 1;
            if spins < 4096 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
            st = s.state.load(Ordering::Acquire);
        }
        let theirs = s
            .panic
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        self.busy.store(false, Ordering::Release);
        if let Err(p) = mine {
            resume_unwind(p);
        }
        if let Some(p) = theirs {
            resume_unwind(p);
        }
    }

    /// Calls `f(c)` once for every c in 0..n_chunks, spread over the pool.
    /// Stops handing out chunks after the first error and returns it.
    pub fn try_for_each(
        &self,
        n_chunks: usize,
        f: impl Fn(usize) -> Result<(), CpuError> + Sync,
    ) -> Result<(), CpuError> {
        let next = AtomicUsize::new(0);
        let error: Mutex<Option<CpuError>> = Mutex::new(None);
        let failed = AtomicBool::new(false);
        let body = || loop {
            if failed.load(Ordering::Relaxed) {
                return;
            }
            let c = next.fetch_add(1, Ordering::Relaxed);
            if c >= n_chunks {
                return;
            }
            if let Err(e) = f(c) {
                failed.store(true, Ordering::Relaxed);
                let mut slot = error.lock().unwrap_or_else(PoisonError::into_inner);
                slot.get_or_insert(e);
            }
        };
        if n_chunks <= 1 {
            body();
        } else {
            self.broadcast(&body);
        }
        match error.into_inner().unwrap_or_else(PoisonError::into_inner) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Splits `data` into chunks of `chunk_len` items (the last may be
    /// shorter) and calls `f(c, chunk c)` for each, spread over the pool.
    pub fn try_for_each_chunk_mut<T: Send>(
        &self,
        data: &mut [T],
        chunk_len: usize,
        f: impl Fn(usize, &mut [T]) -> Result<(), CpuError> + Sync,
    ) -> Result<(), CpuError> {
        let chunk_len = chunk_len.max(1);
        let len = data.len();
        let base = SendPtr(data.as_mut_ptr());
        self.try_for_each(len.div_ceil(chunk_len), |c| {
            let start = c * chunk_len;
            let end = (start + chunk_len).min(len);
            // SAFETY: `try_for_each` calls each c exactly once, so the
            // ranges [start, end) handed out are disjoint and inside `data`,
            // which stays mutably borrowed until every call has returned.
            let chunk =
                unsafe { std::slice::from_raw_parts_mut(base.get().add(start), end - start) };
            f(c, chunk)
        })
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let s = &*self.shared;
        s.shutdown.store(true, Ordering::SeqCst);
        {
            let _g = s.lock.lock().unwrap_or_else(PoisonError::into_inner);
            s.wake.notify_all();
        }
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// A raw pointer the chunk closures may share (each uses a disjoint range).
struct SendPtr<T>(*mut T);
// SAFETY: only used by `try_for_each_chunk_mut`, whose chunks are disjoint.
unsafe impl<T: Send> Sync for SendPtr<T> {}
unsafe impl<T: Send> Send for SendPtr<T> {}
impl<T> SendPtr<T> {
    fn get(&self) -> *mut T {
        self.0
    }
}

fn worker(s: &Shared) {
    let mut seen = 0u64;
    loop {
        let Some(gen) = wait_for_job(s, seen) else {
            return;
        };
        seen = gen;
        // Register in generation `gen` unless the caller closed it already
        // (or moved on to a newer one, which the next wait picks up).
        let mut st = s.state.load(Ordering::Acquire);
        let registered = loop {
            if generation(st) != gen || st & CLOSED != 0 {
                break false;
            }
            match s
                .state
                .compare_exchange_weak(st, st + 1, Ordering::Acquire, Ordering::Acquire)
            {
                Ok(_) => break true,
                Err(now) => st = now,
            }
        };
        if !registered {
            continue;
        }
        // SAFETY: the job pointer was stored before generation `gen` was
        // published, and the caller keeps the job alive until this worker
        // has decremented the count below.
        let job = unsafe { &*(s.job.load(Ordering::Relaxed) as *const JobRef) };
        if let Err(p) = catch_unwind(AssertUnwindSafe(job.f)) {
            let mut slot = s.panic.lock().unwrap_or_else(PoisonError::into_inner);
            slot.get_or_insert(p);
        }
        s.state.fetch_sub(1, Ordering::Release);
    }
}

/// Waits until a generation other than `seen` is published: spinning, then
/// yielding, then parked. None on shutdown.
fn wait_for_job(s: &Shared, seen: u64) -> Option<u64> {
    let fresh = || {
        let g = generation(s.state.load(Ordering::Acquire));
        (g != seen).then_some(g)
    };
    let start = Instant::now();
    let mut polls = 0u32;
    loop {
        if let Some(g) = fresh() {
            return Some(g);
        }
        if s.shutdown.load(Ordering::Relaxed) {
            return None;
        }
        polls = polls.wrapping_add(1);
        // Reading the clock every 64 polls keeps it off the hot loop.
        if polls.is_multiple_of(64) {
            let idle = start.elapsed();
            if idle >= YIELD {
                break;
            }
            if idle >= SPIN {
                std::thread::yield_now();
                continue;
            }
        }
        std::hint::spin_loop();
    }
    s.sleeping.fetch_add(1, Ordering::SeqCst);
    let mut guard = s.lock.lock().unwrap_or_else(PoisonError::into_inner);
    let got = loop {
        if s.shutdown.load(Ordering::SeqCst) {
            break None;
        }
        let g = generation(s.state.load(Ordering::SeqCst));
        if g != seen {
            break Some(g);
        }
        guard = s.wake.wait(guard).unwrap_or_else(PoisonError::into_inner);
    };
    drop(guard);
    s.sleeping.fetch_sub(1, Ordering::SeqCst);
    got
}

/// The global pool for `threads` participants (created on first use).
pub fn pool_for(threads: usize) -> Arc<Pool> {
    static POOLS: OnceLock<Mutex<Vec<Arc<Pool>>>> = OnceLock::new();
    let threads = threads.max(1);
    let mut pools = POOLS
        .get_or_init(|| Mutex::new(Vec::new()))
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(p) = pools.iter().find(|p| p.threads() == threads) {
        return Arc::clone(p);
    }
    let p = Arc::new(Pool::new(threads));
    pools.push(Arc::clone(&p));
    p
}

/// The global pool sized like the current rayon pool (`--threads`, or the
/// pool a `ThreadPool::install` runs in).
pub fn current() -> Arc<Pool> {
    pool_for(rayon::current_num_threads())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_chunk_runs_exactly_once() {
        for threads in [1, 2, 3, 5] {
            let pool = Pool::new(threads);
            for n in [0, 1, 2, 7, 100, 1000] {
                let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                pool.try_for_each(n, |c| {
                    hits[c].fetch_add(1, Ordering::Relaxed);
                    Ok(())
                })
                .unwrap();
                assert!(
                    hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                    "{threads} {n}"
                );
            }
        }
    }

    #[test]
    fn chunks_mut_cover_the_slice() {
        let pool = Pool::new(3);
        for (len, chunk) in [(0, 4), (1, 4), (10, 3), (1000, 7), (64, 64), (65, 64)] {
            let mut v = vec![usize::MAX; len];
            pool.try_for_each_chunk_mut(&mut v, chunk, |c, part| {
                for (i, x) in part.iter_mut().enumerate() {
                    *x = c * chunk + i;
                }
                Ok(())
            })
            .unwrap();
            assert!(v.iter().enumerate().all(|(i, &x)| x == i), "{len} {chunk}");
        }
    }

    #[test]
    fn first_error_is_returned() {
        let pool = Pool::new(2);
        let r = pool.try_for_each(50, |c| {
            if c == 17 {
                Err(CpuError::Shape("chunk 17".into()))
            } else {
                Ok(())
            }
        });
        assert!(matches!(r, Err(CpuError::Shape(s)) if s == "chunk 17"));
    }

    #[test]
    fn worker_panic_reaches_the_caller_and_the_pool_survives() {
        let pool = Pool::new(2);
        let r = catch_unwind(AssertUnwindSafe(|| {
            let _ = pool.try_for_each(64, |c| {
                if c % 2 == 1 {
                    panic!("chunk {c}");
                }
                std::thread::sleep(Duration::from_micros(50));
                Ok(())
            });
        }));
        assert!(r.is_err());
        let n = AtomicUsize::new(0);
        pool.try_for_each(10, |_| {
            n.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })
        .unwrap();
        assert_eq!(n.load(Ordering::Relaxed), 10);
    }

    #[test]
    fn nested_and_concurrent_calls_run_inline() {
        let pool = Arc::new(Pool::new(2));
        let total = AtomicUsize::new(0);
        pool.try_for_each(4, |_| {
            // The pool is busy: this runs on the calling thread.
            pool.try_for_each(5, |_| {
                total.fetch_add(1, Ordering::Relaxed);
                Ok(())
            })
        })
        .unwrap();
        assert_eq!(total.load(Ordering::Relaxed), 20);
        std::thread::scope(|sc| {
            for _ in 0..4 {
                sc.spawn(|| {
                    for _ in 0..50 {
                        pool.try_for_each(8, |_| {
                            total.fetch_add(1, Ordering::Relaxed);
                            Ok(())
                        })
                        .unwrap();
                    }
                });
            }
        });
        assert_eq!(total.load(Ordering::Relaxed), 20 + 4 * 50 * 8);
    }

    #[test]
    fn parked_workers_wake_up() {
        let pool = Pool::new(3);
        std::thread::sleep(YIELD + Duration::from_millis(20));
        let n = AtomicUsize::new(0);
        pool.try_for_each(30, |_| {
            std::thread::sleep(Duration::from_micros(100));
            n.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })
        .unwrap();
        assert_eq!(n.load(Ordering::Relaxed), 30);
    }
}
