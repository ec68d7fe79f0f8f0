//! `marlin bench decode`: decode steps of a Llama-3.1-8B-shaped model with
//! random INT4 (g128) weights, built by the same decoder code as real
//! models, at several batch sizes, against the roofline (bytes of weights +
//! KV cache read per step ÷ the copy bandwidth measured in the same run).

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use marlin_cpu::ops::{Rope, RopeScaling, RopeStyle};
use marlin_cuda::int4::gemm::Int4Weight;
use marlin_cuda::ops::GpuRope;
use marlin_cuda::CudaDevice;
use rayon::prelude::*;

use super::decoder::{
    GateUpWeights, GpuBlock, GpuDecoder, GpuEmbedding, LogitRows, QkvWeights, Scratch, Select,
    SkipForDiagnosis,
};
use super::graph::{capture, replay};
use super::linear::GpuLinear;
use super::spec::{DecoderSpec, LayerSpec};
use super::stages::{Stage, StageTimer};
use super::{driver_err, GpuError, Result};
use crate::config::ModelConfig;
use crate::layers::Activation;

/// Shape of the synthetic model.
#[derive(Clone, Debug)]
pub struct SyntheticShape {
    pub n_layers: usize,
    pub hidden: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub vocab: usize,
    /// INT4 scale group along K.
    pub group: usize,
}

impl SyntheticShape {
    /// Llama-3.1-8B: 32 layers, d 4096, 32 heads / 8 KV heads of 128, ffn 14336, vocab 128256.
    pub fn llama31_8b() -> Self {
        Self {
            n_layers: 32,
            hidden: 4096,
            n_heads: 32,
            n_kv_heads: 8,
            head_dim: 128,
            ffn: 14336,
            vocab: 128_256,
            group: 128,
        }
    }
}

/// What `bench_decode` runs.
#[derive(Clone, Debug)]
pub struct DecodeBenchConfig {
    pub ordinal: usize,
    pub shape: SyntheticShape,
    /// Sequences decoded together (one row each per step).
    pub batches: Vec<usize>,
    /// KV positions each sequence holds when timing starts.
    pub ctx: usize,
    /// Timed decode steps per configuration.
    pub steps: usize,
    /// Also time each kernel group of one step per batch ([`StageTimer`]).
    pub breakdown: bool,
}

impl Default for DecodeBenchConfig {
    fn default() -> Self {
        Self {
            ordinal: 0,
            shape: SyntheticShape::llama31_8b(),
            batches: vec![1, 8, 32],
            ctx: 512,
            steps: 64,
            breakdown: false,
        }
    }
}

/// One measured configuration.
#[derive(Clone, Debug)]
pub struct DecodeBenchRow {
    pub batch: usize,
    pub graph: bool,
    /// Wall time of one step (host launch overhead included), median of 3 runs.
    pub step_us: f64,
    pub weight_bytes: usize,
    /// KV bytes one step reads (every sequence, every layer, the mean context).
    pub kv_bytes: usize,
    /// (weights + KV) / copy bandwidth.
    pub roofline_us: f64,
}

impl DecodeBenchRow {
    pub fn tok_per_s(&self) -> f64 {
        self.batch as f64 / (self.step_us * 1e-6)
    }
    pub fn roofline_fraction(&self) -> f64 {
        self.roofline_us / self.step_us
    }
}

/// The benchmark's table.
#[derive(Clone, Debug)]
pub struct DecodeBenchReport {
    pub device: String,
    pub copy_tbps: f64,
    pub ctx: usize,
    pub shape: SyntheticShape,
    pub rows: Vec<DecodeBenchRow>,
    /// Per batch: GPU microseconds of each kernel group in one step.
    pub breakdowns: Vec<StageBreakdown>,
    /// Whether the GEMM activations were f16 (INT4 everywhere).
    pub f16_activations: bool,
    /// Whether the decode step's kernels took programmatic dependent launch
    /// (sm_90+, not `MARLIN_CUDA_PDL=0`).
    pub pdl: bool,
    /// Kernels left out of every step for a timing diagnosis
    /// (`MARLIN_BENCH_DECODE_DIAG`); the table is then no result.
    pub skipped: SkipForDiagnosis,
    /// Per batch (graph steps): the decode attention kernels' stamp report
    /// (`MARLIN_CUDA_ATTN_STAMPS=1`, a measurement build of attention).
    pub attn_stamps: Vec<(usize, String)>,
}

/// The kernels `MARLIN_BENCH_DECODE_DIAG` leaves out of the benchmark's
/// steps (timing diagnosis only: `ops` keeps the GEMMs, embedding and token
/// choice; `gemms` everything else; `norms` the per-layer residual + norm
/// kernels), or an error for another value.
fn diagnosis_from_env() -> Result<SkipForDiagnosis> {
    match std::env::var("MARLIN_BENCH_DECODE_DIAG") {
        Err(_) => Ok(SkipForDiagnosis::Nothing),
        Ok(v) => match v.trim() {
            "" | "0" => Ok(SkipForDiagnosis::Nothing),
            "ops" => Ok(SkipForDiagnosis::SmallOps),
            "gemms" => Ok(SkipForDiagnosis::Gemms),
            "norms" => Ok(SkipForDiagnosis::Norms),
            other => Err(GpuError::Invalid(format!(
                "MARLIN_BENCH_DECODE_DIAG={other}: expected ops, gemms or norms"
            ))),
        },
    }
}

/// One step's kernel groups at one batch size.
#[derive(Clone, Debug)]
pub struct StageBreakdown {
    pub batch: usize,
    /// (stage, total us over the step, launches of the group)
    pub stages: Vec<(Stage, f64, usize)>,
}

impl StageBreakdown {
    pub fn total_us(&self) -> f64 {
        self.stages.iter().map(|s| s.1).sum()
    }
    pub fn gemm_us(&self) -> f64 {
        self.stages
            .iter()
            .filter(|s| s.0.is_gemm())
            .map(|s| s.1)
            .sum()
    }
}

impl fmt::Display for DecodeBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.shape;
        writeln!(f, "device: {}", self.device)?;
        match self.skipped {
            SkipForDiagnosis::Nothing => {}
            SkipForDiagnosis::SmallOps => writeln!(
                f,
                "DIAGNOSTIC, NOT A RESULT (MARLIN_BENCH_DECODE_DIAG=ops): residual+norm, attention and GLU kernels left out of every step"
            )?,
            SkipForDiagnosis::Gemms => writeln!(
                f,
                "DIAGNOSTIC, NOT A RESULT (MARLIN_BENCH_DECODE_DIAG=gemms): every projection GEMM and the LM head left out of every step"
            )?,
            SkipForDiagnosis::Norms => writeln!(
                f,
                "DIAGNOSTIC, NOT A RESULT (MARLIN_BENCH_DECODE_DIAG=norms): the per-layer residual+norm kernels left out of every step"
            )?,
        }
        writeln!(
            f,
            "model: {} layers, d {}, {} heads / {} kv heads of {}, ffn {}, vocab {}; INT4 g{} weights (LM head too), {} GEMM activations, f16 KV",
            s.n_layers, s.hidden, s.n_heads, s.n_kv_heads, s.head_dim, s.ffn, s.vocab, s.group,
            if self.f16_activations { "f16" } else { "f32 (converted to f16 around each GEMM)" }
        )?;
        writeln!(
            f,
            "copy bandwidth (D2D, read+write): {:.3} TB/s; programmatic dependent launch {}",
            self.copy_tbps,
            if self.pdl {
                "on"
            } else {
                "off (MARLIN_CUDA_PDL=0 or below sm_90)"
            }
        )?;
        writeln!(
            f,
            "{:>5} {:>5} {:>6} {:>10} {:>10} {:>9} {:>8} {:>11} {:>9}",
            "batch",
            "ctx",
            "graph",
            "step us",
            "tok/s",
            "weight GB",
            "KV GB",
            "roofline us",
            "%roofline"
        )?;
        for r in &self.rows {
            writeln!(
                f,
                "{:>5} {:>5} {:>6} {:>10.1} {:>10.1} {:>9.3} {:>8.3} {:>11.1} {:>8.1}%",
                r.batch,
                self.ctx,
                if r.graph { "on" } else { "off" },
                r.step_us,
                r.tok_per_s(),
                r.weight_bytes as f64 / 1e9,
                r.kv_bytes as f64 / 1e9,
                r.roofline_us,
                100.0 * r.roofline_fraction()
            )?;
        }
        for (batch, report) in &self.attn_stamps {
            write!(f, "batch {batch}, {report}")?;
        }
        for b in &self.breakdowns {
            let total = b.total_us();
            let graph_step = self
                .rows
                .iter()
                .find(|r| r.batch == b.batch && r.graph)
                .map(|r| r.step_us);
            writeln!(
                f,
                "breakdown batch {} (one eager step, GPU time between events; a spin ahead of each layer keeps the queue full):",
                b.batch
            )?;
            writeln!(
                f,
                "  {:<24} {:>6} {:>10} {:>9} {:>7}",
                "stage", "groups", "total us", "us/group", "share"
            )?;
            for (stage, us, n) in &b.stages {
                writeln!(
                    f,
                    "  {:<24} {:>6} {:>10.1} {:>9.2} {:>6.1}%",
                    stage.name(),
                    n,
                    us,
                    us / (*n).max(1) as f64,
                    100.0 * us / total.max(1e-9)
                )?;
            }
            let gemm = b.gemm_us();
            writeln!(
                f,
                "  sum {:.1} us = GEMMs (incl. LM head) {:.1} us + other {:.1} us{}",
                total,
                gemm,
                total - gemm,
                match graph_step {
                    Some(g) => format!("; graph step {g:.1} us"),
                    None => String::new(),
                }
            )?;
        }
        Ok(())
    }
}

/// Uniform values in [lo, hi) from a seeded xorshift, filled in parallel.
fn random_vec(len: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    const CHUNK: usize = 1 << 16;
    let mut v = vec![0.0f32; len];
    v.par_chunks_mut(CHUNK).enumerate().for_each(|(i, c)| {
        let mut s = seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        for x in c.iter_mut() {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let u = (s >> 40) as f32 / (1u64 << 24) as f32;
            *x = lo + (hi - lo) * u;
        }
    });
    v
}

/// A decoder of `shape` with random weights generated on the device.
pub fn synthetic_decoder(
    dev: &Arc<CudaDevice>,
    shape: &SyntheticShape,
    seed: u64,
) -> Result<GpuDecoder> {
    let s = shape;
    let (d, qd, kvd) = (s.hidden, s.n_heads * s.head_dim, s.n_kv_heads * s.head_dim);
    let mut next_seed = seed;
    let mut int4 = |n: usize, k: usize| -> Result<GpuLinear> {
        next_seed = next_seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        Ok(GpuLinear::Int4(Box::new(Int4Weight::random_on_device(
            dev, n, k, s.group, next_seed,
        )?)))
    };
    let norm = |len: usize, seed: u64| -> Result<cudarc::driver::CudaSlice<f32>> {
        Ok(dev.upload("norm weight", &random_vec(len, seed, 0.9, 1.1))?)
    };
    let mut blocks = Vec::with_capacity(s.n_layers);
    for il in 0..s.n_layers {
        let ls = seed.wrapping_add(il as u64 * 16);
        blocks.push(GpuBlock {
            attn_norm: norm(d, ls + 1)?,
            qkv: QkvWeights::Fused(int4(qd + 2 * kvd, d)?),
            wo: int4(d, qd)?,
            q_norm: None,
            k_norm: None,
            post_attn_norm: None,
            ffn_norm: norm(d, ls + 2)?,
            gate_up: GateUpWeights::Fused(int4(2 * s.ffn, d)?),
            down: int4(d, s.ffn)?,
            post_ffn_norm: None,
        });
    }
    let vocab_len = s
        .vocab
        .checked_mul(d)
        .ok_or_else(|| GpuError::Invalid("embedding table overflows".into()))?;
    let table = dev.upload(
        "embedding table",
        &random_vec(vocab_len, seed ^ 0xE, -0.05, 0.05),
    )?;
    let rope = Rope::new(
        s.head_dim,
        s.head_dim,
        500_000.0,
        RopeStyle::Neox,
        &RopeScaling::None,
    )?;
    let cfg = ModelConfig {
        arch: "llama".into(),
        vocab_size: s.vocab,
        context_length: 131_072,
        hidden_size: d,
        n_layers: s.n_layers,
        n_heads: s.n_heads,
        n_kv_heads: s.n_kv_heads,
        head_dim: s.head_dim,
        ffn_size: s.ffn,
        rms_eps: 1e-5,
        rope_base: 500_000.0,
        sliding_window: None,
        final_logit_softcap: None,
        tied_embeddings: false,
    };
    let spec = DecoderSpec {
        cfg,
        embed_scale: 1.0,
        attn_scale: 1.0 / (s.head_dim as f32).sqrt(),
        norm_offset: 0.0,
        qk_norm: false,
        post_norms: false,
        activation: Activation::Silu,
        ropes: vec![rope.clone()],
        layers: vec![
            LayerSpec {
                window: None,
                rope: 0
            };
            s.n_layers
        ],
    };
    Ok(GpuDecoder {
        embed: GpuEmbedding::Dense {
            table,
            vocab: s.vocab,
        },
        blocks,
        ropes: vec![GpuRope::new(dev, &rope)?],
        out_norm: norm(d, seed ^ 0xF)?,
        lm_head: int4(s.vocab, d)?,
        spec,
    })
}

/// Times `steps` decode steps of `batch` sequences at positions `ctx..`.
fn time_steps(
    dev: &Arc<CudaDevice>,
    dec: &GpuDecoder,
    batch: usize,
    ctx: usize,
    steps: usize,
    use_graph: bool,
    skipped: SkipForDiagnosis,
) -> Result<f64> {
    const WARMUP: usize = 2;
    const RUNS: usize = 3;
    let total = ctx + WARMUP + RUNS * steps + 1;
    let mut cache = dec.new_cache(dev, batch, total)?;
    let mut s = Scratch::new(dev, dec, batch, batch)?;
    s.skip_for_diagnosis = skipped;
    // Row i is sequence i.
    let stream = dev.stream().clone();
    let seqs: Vec<i32> = (0..batch as i32).collect();
    s.set_row_sequences(dev, &seqs)?;
    let vocab = dec.spec.cfg.vocab_size as u64;
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut pos = ctx;
    let mut step_inputs = |s: &mut Scratch, pos: usize| -> Result<()> {
        let ids: Vec<u32> = (0..batch)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state % vocab) as u32
            })
            .collect();
        let p = vec![pos as i32; batch];
        stream
            .memcpy_htod(&ids, &mut s.ids.slice_mut(0..batch))
            .map_err(|e| driver_err("token ids to the device", e))?;
        stream
            .memcpy_htod(&p, &mut s.row_pos.slice_mut(0..batch))
            .map_err(|e| driver_err("positions to the device", e))?;
        Ok(())
    };
    for _ in 0..WARMUP {
        step_inputs(&mut s, pos)?;
        dec.forward_rows(
            dev,
            &mut cache,
            &mut s,
            batch,
            LogitRows::All,
            Select::Argmax,
        )?;
        pos += 1;
    }
    dev.synchronize()?;
    let graph = if use_graph {
        Some(capture(dev, || {
            dec.forward_rows(
                dev,
                &mut cache,
                &mut s,
                batch,
                LogitRows::All,
                Select::Argmax,
            )
            .map(|_| ())
        })?)
    } else {
        None
    };
    let mut samples = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let t0 = Instant::now();
        for _ in 0..steps {
            step_inputs(&mut s, pos)?;
            match &graph {
                Some(g) => replay(g)?,
                None => {
                    dec.forward_rows(
                        dev,
                        &mut cache,
                        &mut s,
                        batch,
                        LogitRows::All,
                        Select::Argmax,
                    )?;
                }
            }
            pos += 1;
        }
        dev.synchronize()?;
        samples.push(t0.elapsed().as_secs_f64() * 1e6 / steps as f64);
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[samples.len() / 2])
}

/// GPU time of each kernel group of one eager decode step of `batch`
/// sequences at position `ctx` (after two warm-up steps).
fn stage_breakdown(
    dev: &Arc<CudaDevice>,
    dec: &GpuDecoder,
    batch: usize,
    ctx: usize,
) -> Result<StageBreakdown> {
    /// GPU spin ahead of each layer: longer than the host needs to queue
    /// one layer's launches and events.
    const SPIN_NS: u64 = 1_000_000;
    let mut cache = dec.new_cache(dev, batch, ctx + 4)?;
    let mut s = Scratch::new(dev, dec, batch, batch)?;
    // Row i is sequence i.
    let stream = dev.stream().clone();
    let seqs: Vec<i32> = (0..batch as i32).collect();
    s.set_row_sequences(dev, &seqs)?;
    let ids: Vec<u32> = (0..batch as u32)
        .map(|i| (i * 7919 + 13) % dec.spec.cfg.vocab_size as u32)
        .collect();
    stream
        .memcpy_htod(&ids, &mut s.ids.slice_mut(0..batch))
        .map_err(|e| driver_err("token ids to the device", e))?;
    let set_pos = |s: &mut Scratch, pos: usize| -> Result<()> {
        stream
            .memcpy_htod(&vec![pos as i32; batch], &mut s.row_pos.slice_mut(0..batch))
            .map_err(|e| driver_err("positions to the device", e))
    };
    for step in 0..2 {
        set_pos(&mut s, ctx + step)?;
        dec.forward_rows(
            dev,
            &mut cache,
            &mut s,
            batch,
            LogitRows::All,
            Select::Argmax,
        )?;
    }
    set_pos(&mut s, ctx + 2)?;
    dev.synchronize()?;
    let mut timer = StageTimer::new(SPIN_NS);
    dec.forward_rows_timed(
        dev,
        (&mut cache).into(),
        &mut s,
        batch,
        LogitRows::All,
        Select::Argmax,
        Some(&mut timer),
    )?;
    dev.synchronize()?;
    Ok(StageBreakdown {
        batch,
        stages: timer.totals()?,
    })
}

/// Runs the benchmark of `cfg`.
pub fn bench_decode(cfg: &DecodeBenchConfig) -> Result<DecodeBenchReport> {
    if cfg.batches.is_empty() || cfg.batches.contains(&0) || cfg.steps == 0 || cfg.ctx == 0 {
        return Err(GpuError::Invalid(
            "bench decode: batches, steps and ctx must be at least 1".into(),
        ));
    }
    let skipped = diagnosis_from_env()?;
    let dev = CudaDevice::new(cfg.ordinal)?;
    let copy_tbps = marlin_cuda::bench::copy_bandwidth_tbps(&dev)?;
    let dec = synthetic_decoder(&dev, &cfg.shape, 0x5EED)?;
    let s = &cfg.shape;
    let weight_bytes = dec.weight_bytes();
    // f16 K and V of every layer; the timed steps read ctx .. ctx + 3*steps + 2 keys.
    let mean_keys = cfg.ctx + 2 + 3 * cfg.steps / 2;
    let kv_per_seq = s.n_layers * 2 * s.n_kv_heads * s.head_dim * 2 * mean_keys;
    let mut rows = Vec::new();
    let mut attn_stamps = Vec::new();
    for &batch in &cfg.batches {
        for use_graph in [true, false] {
            let step_us = time_steps(&dev, &dec, batch, cfg.ctx, cfg.steps, use_graph, skipped)?;
            if use_graph {
                if let Some(r) = marlin_cuda::ops::attn_stamp_report(&dev, s.head_dim)? {
                    attn_stamps.push((batch, r));
                }
            }
            let kv_bytes = kv_per_seq * batch;
            let roofline_us = (weight_bytes + kv_bytes) as f64 / (copy_tbps * 1e12) * 1e6;
            rows.push(DecodeBenchRow {
                batch,
                graph: use_graph,
                step_us,
                weight_bytes,
                kv_bytes,
                roofline_us,
            });
        }
    }
    let mut breakdowns = Vec::new();
    if cfg.breakdown && skipped == SkipForDiagnosis::Nothing {
        for &batch in &cfg.batches {
            breakdowns.push(stage_breakdown(&dev, &dec, batch, cfg.ctx)?);
        }
    }
    Ok(DecodeBenchReport {
        breakdowns,
        attn_stamps,
        f16_activations: dec.f16_activations(),
        pdl: marlin_cuda::ops::launch::pdl_active(&dev),
        skipped,
        device: format!(
            "{} (sm_{}{}, {} SMs)",
            dev.name(),
            dev.compute_capability().0,
            dev.compute_capability().1,
            dev.sm_count()
        ),
        copy_tbps,
        ctx: cfg.ctx,
        shape: cfg.shape.clone(),
        rows,
    })
}
