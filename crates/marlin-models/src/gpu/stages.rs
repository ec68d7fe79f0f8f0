//! Per-stage GPU timing of one forward pass (`marlin bench decode
//! --breakdown`): CUDA events after each kernel group of an un-captured
//! step. Before each layer the timer enqueues a spin kernel long enough
//! for the host to queue that layer's launches behind it, so the events
//! time the kernels back to back on the GPU (as a graph replays them), not
//! the host's launch rate.

use std::collections::BTreeMap;

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::CudaEvent;
use marlin_cuda::{ops, CudaDevice};

use super::{driver_err, Result};

/// Kernel groups of a forward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// Embedding gather + the first RMSNorm.
    Embed,
    /// q|k|v projection(s).
    QkvGemm,
    /// QK-norm + RoPE + KV-cache write.
    QkvRopeKv,
    /// Attention (decode: one flash-decoding launch, splits merged in it;
    /// with QK-norm + RoPE + KV write fused in for distinct-sequence rows,
    /// when the previous stage is absent).
    Attention,
    /// Output projection.
    OGemm,
    /// Residual add + RMSNorm (two per layer).
    ResidNorm,
    /// gate|up projection(s).
    GateUpGemm,
    /// SwiGLU / GeGLU.
    Glu,
    /// Down projection.
    DownGemm,
    /// Final row copy + LM head (+ f16 -> f32 logits, soft-cap).
    LmHead,
    /// Argmax or sampling.
    Select,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Embed => "embed + first norm",
            Stage::QkvGemm => "qkv GEMM",
            Stage::QkvRopeKv => "qk-norm/rope/kv write",
            Stage::Attention => "attention",
            Stage::OGemm => "o GEMM",
            Stage::ResidNorm => "residual + norm",
            Stage::GateUpGemm => "gate|up GEMM",
            Stage::Glu => "SwiGLU/GeGLU",
            Stage::DownGemm => "down GEMM",
            Stage::LmHead => "LM head + logits",
            Stage::Select => "argmax / sampling",
        }
    }

    /// Whether the group is a projection (GEMM) launch.
    pub fn is_gemm(self) -> bool {
        matches!(
            self,
            Stage::QkvGemm | Stage::OGemm | Stage::GateUpGemm | Stage::DownGemm | Stage::LmHead
        )
    }
}

/// Events of one timed forward pass.
pub struct StageTimer {
    spin_ns: u64,
    /// (stage ended by the event, or None for a section start).
    events: Vec<(Option<Stage>, CudaEvent)>,
}

impl StageTimer {
    /// A timer that spins `spin_ns` of GPU time before each section.
    pub fn new(spin_ns: u64) -> Self {
        Self {
            spin_ns,
            events: Vec::new(),
        }
    }

    fn record(&mut self, dev: &CudaDevice, stage: Option<Stage>) -> Result<()> {
        let ev = dev
            .stream()
            .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(|e| driver_err("cuEventRecord", e))?;
        self.events.push((stage, ev));
        Ok(())
    }

    /// Starts a section: spin, then a boundary event.
    pub fn begin(&mut self, dev: &CudaDevice) -> Result<()> {
        ops::spin(dev, self.spin_ns)?;
        self.record(dev, None)
    }

    /// The work enqueued since the previous event belongs to `stage`.
    pub fn mark(&mut self, dev: &CudaDevice, stage: Stage) -> Result<()> {
        self.record(dev, Some(stage))
    }

    /// Microseconds per stage, summed over the pass (the caller has
    /// synchronised the stream); (stage, total us, occurrences).
    pub fn totals(&self) -> Result<Vec<(Stage, f64, usize)>> {
        let mut by: BTreeMap<Stage, (f64, usize)> = BTreeMap::new();
        for pair in self.events.windows(2) {
            let (Some(stage), end) = (&pair[1].0, &pair[1].1) else {
                continue;
            };
            let ms = pair[0]
                .1
                .elapsed_ms(end)
                .map_err(|e| driver_err("cuEventElapsedTime", e))?;
            let e = by.entry(*stage).or_insert((0.0, 0));
            e.0 += f64::from(ms) * 1e3;
            e.1 += 1;
        }
        Ok(by.into_iter().map(|(s, (us, n))| (s, us, n)).collect())
    }
}
