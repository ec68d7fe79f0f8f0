//! The client side: [`spawn`], [`EngineHandle`] and [`RequestStream`].

use super::engine::{Engine, LockOrRecover};
use super::sequence::NewRequest;
use super::{
    BatchModel, DetokenizerSource, EngineConfig, EngineRequest, EngineStats, Event, SubmitError,
    TokenConstraint, MAX_TOP_LOGPROBS,
};
use crate::EngineError;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub(crate) enum Command {
    Submit(Box<NewRequest>),
    Shutdown { grace: Duration },
}

/// State the engine thread and the handles share.
pub(crate) struct Shared {
    pub stats: Mutex<EngineStats>,
    /// Submitted requests not yet admitted (the queue `max_queue` bounds).
    pub queued: AtomicUsize,
    pub accepting: AtomicBool,
    pub max_model_len: usize,
    pub vocab_size: usize,
    max_queue: usize,
    /// Moving average of end-to-end latency in ms (`Retry-After` hint).
    mean_e2e_ms: AtomicUsize,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Shared {
    pub(crate) fn record_latency(&self, d: Duration) {
        let ms = d.as_millis().min(usize::MAX as u128) as usize;
        let old = self.mean_e2e_ms.load(Ordering::Relaxed);
        // Weight 1/8 for the newest request.
        let new = if old == 0 { ms } else { old - old / 8 + ms / 8 };
        self.mean_e2e_ms.store(new.max(1), Ordering::Relaxed);
    }
}

/// A cloneable, thread-safe handle to a running engine.
#[derive(Clone)]
pub struct EngineHandle {
    commands: Sender<Command>,
    shared: Arc<Shared>,
}

/// The events of one request. Dropping it cancels the request: the engine
/// frees its blocks at its next step.
pub struct RequestStream {
    events: Receiver<Event>,
    cancelled: Arc<AtomicBool>,
    done: bool,
}

/// Starts the engine thread, which owns `model` (and its KV pool) and
/// `detok`.
pub fn spawn(
    model: Box<dyn BatchModel>,
    detok: Box<dyn DetokenizerSource>,
    cfg: EngineConfig,
) -> Result<EngineHandle, EngineError> {
    let bad = |m: String| Err(EngineError::InvalidParam(m));
    if cfg.max_num_seqs == 0 {
        return bad("max_num_seqs must be at least 1".into());
    }
    if cfg.max_batch_tokens < cfg.max_num_seqs {
        return bad(format!(
            "max_batch_tokens ({}) must be at least max_num_seqs ({})",
            cfg.max_batch_tokens, cfg.max_num_seqs
        ));
    }
    let pool_positions = model.n_blocks().saturating_mul(model.block_size());
    if pool_positions == 0 || model.vocab_size() == 0 {
        return bad("the model has an empty KV pool or vocabulary".into());
    }
    if cfg.max_model_len < 2 {
        return bad("max_model_len must be at least 2".into());
    }
    let shared = Arc::new(Shared {
        stats: Mutex::new(EngineStats::default()),
        queued: AtomicUsize::new(0),
        accepting: AtomicBool::new(true),
        max_model_len: cfg.max_model_len.min(pool_positions),
        vocab_size: model.vocab_size(),
        max_queue: cfg.max_queue,
        mean_e2e_ms: AtomicUsize::new(0),
        thread: Mutex::new(None),
    });
    let (tx, rx) = mpsc::channel();
    let thread_shared = Arc::clone(&shared);
    let thread = std::thread::Builder::new()
        .name("marlin-engine".into())
        .spawn(move || {
            let mut engine = Engine::new(model, detok.as_ref(), cfg, Arc::clone(&thread_shared));
            engine.run(rx);
            thread_shared.accepting.store(false, Ordering::Relaxed);
        })
        .map_err(|e| EngineError::Model(format!("starting the engine thread: {e}")))?;
    *shared.thread.lock_or_recover() = Some(thread);
    Ok(EngineHandle {
        commands: tx,
        shared,
    })
}

impl EngineHandle {
    /// Queues a request; its tokens arrive on the returned stream.
    pub fn submit(&self, req: EngineRequest) -> Result<RequestStream, SubmitError> {
        self.submit_inner(req, None)
    }

    /// As [`Self::submit`], every token chosen under `constraint`
    /// (`response_format: json_object`).
    pub fn submit_constrained(
        &self,
        req: EngineRequest,
        constraint: Box<dyn TokenConstraint>,
    ) -> Result<RequestStream, SubmitError> {
        self.submit_inner(req, Some(constraint))
    }

    fn submit_inner(
        &self,
        req: EngineRequest,
        constraint: Option<Box<dyn TokenConstraint>>,
    ) -> Result<RequestStream, SubmitError> {
        self.validate(&req)?;
        if !self.shared.accepting.load(Ordering::Relaxed) {
            return Err(SubmitError::ShuttingDown);
        }
        let waiting = self.shared.queued.fetch_add(1, Ordering::Relaxed);
        if waiting >= self.shared.max_queue {
            self.shared.queued.fetch_sub(1, Ordering::Relaxed);
            let ms = self.shared.mean_e2e_ms.load(Ordering::Relaxed).max(1000);
            return Err(SubmitError::QueueFull {
                waiting,
                retry_after: Duration::from_millis(ms as u64).max(Duration::from_secs(1)),
            });
        }
        let (tx, rx) = mpsc::channel();
        let cancelled = Arc::new(AtomicBool::new(false));
        let new = NewRequest {
            req,
            constraint,
            events: tx,
            cancelled: Arc::clone(&cancelled),
            arrival: Instant::now(),
        };
        if self.commands.send(Command::Submit(Box::new(new))).is_err() {
            self.shared.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(SubmitError::ShuttingDown);
        }
        Ok(RequestStream {
            events: rx,
            cancelled,
            done: false,
        })
    }

    fn validate(&self, req: &EngineRequest) -> Result<(), SubmitError> {
        let invalid = |m: String| Err(SubmitError::Invalid(m));
        let max = self.shared.max_model_len;
        if req.prompt.is_empty() {
            return invalid("prompt: at least one token is required".into());
        }
        if req.prompt.len() >= max {
            return Err(SubmitError::PromptTooLong {
                prompt: req.prompt.len(),
                max,
            });
        }
        let vocab = self.shared.vocab_size;
        if let Some(&bad) = req.prompt.iter().find(|&&t| t as usize >= vocab) {
            return invalid(format!(
                "prompt: token id {bad} is outside the vocabulary ({vocab})"
            ));
        }
        if req.max_tokens == 0 {
            return invalid("max_tokens: must be at least 1".into());
        }
        if req.logprobs.is_some_and(|n| n > MAX_TOP_LOGPROBS) {
            return invalid(format!("logprobs: at most {MAX_TOP_LOGPROBS}"));
        }
        req.sampling
            .validate()
            .map_err(|e| SubmitError::Invalid(e.to_string()))
    }

    /// A snapshot of the gauges and counters.
    pub fn stats(&self) -> EngineStats {
        self.shared.stats.lock_or_recover().clone()
    }

    /// Longest sequence (prompt + generated) a request may reach.
    pub fn max_model_len(&self) -> usize {
        self.shared.max_model_len
    }

    /// Stops accepting requests, lets running and waiting ones finish for
    /// up to `grace`, cancels the rest (`Finished { Cancelled }`), and
    /// waits for the engine thread to exit.
    pub fn shutdown(&self, grace: Duration) {
        self.shared.accepting.store(false, Ordering::Relaxed);
        let _ = self.commands.send(Command::Shutdown { grace });
        let thread = self.shared.thread.lock_or_recover().take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

impl RequestStream {
    /// The next event, waiting for it; `None` after the last one (or if the
    /// engine went away).
    pub fn recv(&mut self) -> Option<Event> {
        if self.done {
            return None;
        }
        let e = self.events.recv().ok();
        self.note(e)
    }

    /// As [`Self::recv`], giving up after `timeout` (`Err(())`).
    #[allow(clippy::result_unit_err)]
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Event>, ()> {
        if self.done {
            return Ok(None);
        }
        match self.events.recv_timeout(timeout) {
            Ok(e) => Ok(self.note(Some(e))),
            Err(RecvTimeoutError::Timeout) => Err(()),
            Err(RecvTimeoutError::Disconnected) => Ok(self.note(None)),
        }
    }

    /// An event if one is ready.
    pub fn try_recv(&mut self) -> Option<Event> {
        if self.done {
            return None;
        }
        match self.events.try_recv() {
            Ok(e) => self.note(Some(e)),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => self.note(None),
        }
    }

    /// Asks the engine to stop this request (it answers with
    /// `Finished { Cancelled }` unless it already finished).
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    fn note(&mut self, e: Option<Event>) -> Option<Event> {
        if !matches!(e, Some(Event::Token { .. })) {
            self.done = true;
        }
        e
    }
}

impl Iterator for RequestStream {
    type Item = Event;
    fn next(&mut self) -> Option<Event> {
        self.recv()
    }
}

impl Drop for RequestStream {
    fn drop(&mut self) {
        self.cancel();
    }
}
