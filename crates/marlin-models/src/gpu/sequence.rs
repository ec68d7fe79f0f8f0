//! One sequence on the GPU: its KV cache, its activation scratch and its
//! captured decode step.

use cudarc::driver::CudaGraph;
use marlin_cuda::ops::{DeviceSampling, GpuKvCache};
use marlin_engine::{EngineError, SequenceModel};

use super::decoder::{LogitRows, Scratch, Select};
use super::graph::{capture, replay};
use super::{driver_err, GpuError, GpuModel, Result};
use crate::error::ModelError;

/// A sequence of up to `capacity` positions of `model`.
///
/// Prompts run in chunks of up to `max_batch_rows` rows; a single new token
/// (decode) runs as a CUDA graph captured at the second such step (the
/// first sizes every lazily allocated workspace), replayed after a copy of
/// the token id and position (and the sampling uniform) into the device
/// buffers the graph reads. The graph ends with the token choice (argmax,
/// or sampling with the parameters it was captured with: other parameters
/// run one step eagerly, then capture again).
pub struct GpuSequence<'m> {
    model: &'m GpuModel,
    cache: GpuKvCache,
    scratch: Scratch,
    len: usize,
    capacity: usize,
    /// The m = 1 step (last-row logits + token choice), once captured,
    /// with the choice it makes and the scratch's buffer generation it
    /// was captured against.
    graph: Option<(CudaGraph, Select, u64)>,
    /// Graphs captured so far (a later eager chunk that grows a GEMM
    /// workspace makes the next step capture again).
    captures: usize,
    /// The choice of the last eager m = 1 step: a step with it may be
    /// captured (its kernels are loaded, its workspaces sized).
    warm: Option<Select>,
}

impl<'m> GpuSequence<'m> {
    pub fn new(model: &'m GpuModel, capacity: usize) -> Result<Self> {
        if capacity == 0 {
            return Err(GpuError::Invalid("KV cache of 0 positions".into()));
        }
        if i32::try_from(capacity).is_err() {
            return Err(GpuError::Invalid(format!(
                "{capacity} positions exceed i32"
            )));
        }
        let dev = model.device();
        let max_m = model.options().max_batch_rows.min(capacity);
        Ok(Self {
            cache: model.decoder().new_cache(dev, 1, capacity)?,
            scratch: Scratch::new(dev, model.decoder(), max_m, 1)?,
            model,
            len: 0,
            capacity,
            graph: None,
            captures: 0,
            warm: None,
        })
    }

    /// Positions cached so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets every position from `len` on (they will be overwritten).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Whether the decode step runs as a CUDA graph now.
    pub fn graph_captured(&self) -> bool {
        self.graph.is_some()
    }

    /// [`Scratch`]'s buffer generation: changes when an eager chunk
    /// replaced a GEMM workspace buffer (tests of the re-capture).
    ///
    /// [`Scratch`]: super::decoder::Scratch
    pub fn buffers_generation(&self) -> u64 {
        self.scratch.buffers_generation()
    }

    /// How many times the decode step was captured: once, and again after
    /// an eager chunk replaced a GEMM workspace buffer the graph used.
    pub fn graph_captures(&self) -> usize {
        self.captures
    }

    /// Appends `tokens`; returns the logits (vocab) of the last one.
    pub fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        // Argmax too: the same captured step serves `forward` and `greedy`.
        self.run(tokens, Select::Argmax)?;
        let vocab = self.model.config().vocab_size;
        let s = &mut self.scratch;
        let logits = s
            .host_logits
            .fetch(self.model.device(), &s.logits.slice(0..vocab))?;
        Ok(logits.to_vec())
    }

    /// Appends `tokens`; returns the argmax of the last one's logits,
    /// computed on the device (4 bytes come back per step).
    pub fn greedy(&mut self, tokens: &[u32]) -> Result<u32> {
        self.run(tokens, Select::Argmax)?;
        self.picked_id()
    }

    /// Appends `tokens`; returns a token drawn from the last one's logits
    /// with temperature / top-k / top-p / min-p on the device
    /// (`marlin_cuda::ops::sample_rows`: the CPU sampler's draw, bit for
    /// bit; top-k 0 or at most 256) using `uniform` in [0, 1) (the caller's
    /// seeded RNG); 4 bytes come back.
    pub fn sample(&mut self, tokens: &[u32], params: DeviceSampling, uniform: f32) -> Result<u32> {
        if !(0.0..1.0).contains(&uniform) {
            return Err(GpuError::Invalid(format!(
                "sampling uniform {uniform} outside [0, 1)"
            )));
        }
        // Validates the parameters before any work is queued.
        marlin_cuda::ops::check_sampling_params(&params, self.model.config().vocab_size)?;
        self.model
            .device()
            .stream()
            .memcpy_htod(&[uniform], &mut self.scratch.uniforms.slice_mut(0..1))
            .map_err(|e| driver_err("sampling uniform to the device", e))?;
        self.run(tokens, Select::Sample(params))?;
        self.picked_id()
    }

    /// The token the last step picked (argmax or sample), copied back.
    fn picked_id(&self) -> Result<u32> {
        let stream = self.model.device().stream();
        let id = stream
            .clone_dtoh(&self.scratch.next_ids.slice(0..1))
            .map_err(|e| driver_err("picked token to the host", e))?;
        self.model.device().synchronize()?;
        match id.first() {
            Some(&t) if t != marlin_cuda::ops::NO_TOKEN => Ok(t),
            _ => Err(GpuError::Invalid(
                "no token picked (every logit is NaN)".into(),
            )),
        }
    }

    /// Appends `tokens`; returns the logits (tokens.len(), vocab) of every
    /// one of them (perplexity, reference checks).
    pub fn forward_all(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.check(tokens)?;
        let dev = self.model.device().clone();
        let vocab = self.model.config().vocab_size;
        if self.scratch.logit_rows < self.scratch.max_m {
            // Room for a whole chunk of logits; the captured graph read the
            // old buffers, so it goes too.
            self.graph = None;
            self.warm = None;
            self.scratch = Scratch::new(
                &dev,
                self.model.decoder(),
                self.scratch.max_m,
                self.scratch.max_m,
            )?;
        }
        let mut out = Vec::with_capacity(tokens.len() * vocab);
        for chunk in tokens.chunks(self.scratch.max_m) {
            self.upload_rows(chunk)?;
            let rows = self.model.decoder().forward_rows(
                &dev,
                &mut self.cache,
                &mut self.scratch,
                chunk.len(),
                LogitRows::All,
                Select::None,
            )?;
            self.len += chunk.len();
            let s = &mut self.scratch;
            out.extend_from_slice(
                s.host_logits
                    .fetch(&dev, &s.logits.slice(0..rows * vocab))?,
            );
        }
        Ok(out)
    }

    fn check(&self, tokens: &[u32]) -> Result<()> {
        if tokens.is_empty() {
            return Err(GpuError::Invalid("forward: no tokens".into()));
        }
        let vocab = self.model.config().vocab_size;
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(ModelError::TokenOutOfRange { id: bad, vocab }.into());
        }
        if self
            .len
            .checked_add(tokens.len())
            .is_none_or(|end| end > self.capacity)
        {
            return Err(ModelError::ContextOverflow {
                used: self.len,
                new: tokens.len(),
                capacity: self.capacity,
            }
            .into());
        }
        Ok(())
    }

    /// Writes the ids, sequence (0) and positions of `chunk` into the
    /// device buffers the forward pass reads.
    fn upload_rows(&mut self, chunk: &[u32]) -> Result<()> {
        let m = chunk.len();
        let pos: Vec<i32> = (self.len..self.len + m).map(|p| p as i32).collect();
        let stream = self.model.device().stream();
        stream
            .memcpy_htod(chunk, &mut self.scratch.ids.slice_mut(0..m))
            .map_err(|e| driver_err("token ids to the device", e))?;
        stream
            .memcpy_htod(&pos, &mut self.scratch.row_pos.slice_mut(0..m))
            .map_err(|e| driver_err("positions to the device", e))?;
        // row_seq stays 0: this cache holds one sequence.
        Ok(())
    }

    /// Runs `tokens` in chunks; the last chunk leaves the last row's logits
    /// (and the token `select` picks) in the scratch.
    fn run(&mut self, tokens: &[u32], select: Select) -> Result<()> {
        self.check(tokens)?;
        let dev = self.model.device().clone();
        let use_graph = self.model.options().cuda_graph;
        let n_chunks = tokens.len().div_ceil(self.scratch.max_m);
        for (i, chunk) in tokens.chunks(self.scratch.max_m).enumerate() {
            self.upload_rows(chunk)?;
            let last = i + 1 == n_chunks;
            let generation = self.scratch.buffers_generation();
            let captured =
                matches!(&self.graph, Some((_, s, g)) if *s == select && *g == generation);
            if chunk.len() == 1 && use_graph && (captured || self.warm == Some(select)) {
                if !captured {
                    self.graph = None;
                    let (decoder, cache, scratch) =
                        (self.model.decoder(), &mut self.cache, &mut self.scratch);
                    let g = capture(&dev, || {
                        decoder
                            .forward_rows(&dev, cache, scratch, 1, LogitRows::Last, select)
                            .map(|_| ())
                    })?;
                    self.graph = Some((g, select, generation));
                    self.captures += 1;
                }
                if let Some((g, ..)) = &self.graph {
                    replay(g)?;
                }
            } else {
                self.model.decoder().forward_rows(
                    &dev,
                    &mut self.cache,
                    &mut self.scratch,
                    chunk.len(),
                    LogitRows::Last,
                    if last { select } else { Select::None },
                )?;
                if chunk.len() == 1 {
                    self.warm = Some(select);
                }
            }
            self.len += chunk.len();
        }
        Ok(())
    }
}

impl SequenceModel for GpuSequence<'_> {
    fn vocab_size(&self) -> usize {
        self.model.config().vocab_size
    }
    fn max_seq_len(&self) -> usize {
        self.capacity
    }
    fn forward(&mut self, tokens: &[u32]) -> std::result::Result<Vec<f32>, EngineError> {
        GpuSequence::forward(self, tokens).map_err(|e| EngineError::Model(e.to_string()))
    }
}
