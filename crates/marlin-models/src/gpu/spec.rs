//! What distinguishes the supported architectures, as data: the generic GPU
//! decoder reads a [`DecoderSpec`] and never the architecture's name.
//!
//! The values are derived exactly as the CPU architectures derive them
//! (`arch/llama.rs`, `arch/qwen3.rs`, `arch/gemma3.rs`); the GPU end-to-end
//! check compares both backends token for token.

use crate::config::{base_config, rope_scaling, HParam, ModelConfig, Params};
use crate::error::{ModelError, Result};
use crate::layers::Activation;
use crate::source::{SourceKind, WeightSource};
use marlin_cpu::ops::{Rope, RopeScaling, RopeStyle};

/// Gemma 3: every `pattern`-th layer is global (llama.cpp / transformers default).
const GEMMA_DEFAULT_SLIDING_WINDOW_PATTERN: usize = 6;
/// Gemma 3: RoPE base of local layers when the checkpoint does not say.
const GEMMA_DEFAULT_LOCAL_ROPE_BASE: f32 = 10_000.0;

/// Per-layer attention geometry.
#[derive(Clone, Debug)]
pub struct LayerSpec {
    /// Sliding window (keys `p - window < j <= p`), `None` for global layers.
    pub window: Option<usize>,
    /// Index into [`DecoderSpec::ropes`].
    pub rope: usize,
}

/// A decoder-only transformer, described by its numbers.
#[derive(Clone, Debug)]
pub struct DecoderSpec {
    pub cfg: ModelConfig,
    /// Multiplies the looked-up embedding rows (Gemma: sqrt(d)).
    pub embed_scale: f32,
    /// Multiplies q·k.
    pub attn_scale: f32,
    /// Added to every RMSNorm weight at load (Hugging Face Gemma: 1).
    pub norm_offset: f32,
    /// Per-head RMSNorm of q and k (Qwen3, Gemma 3).
    pub qk_norm: bool,
    /// RMSNorm of the attention and MLP outputs before the residual add (Gemma 3).
    pub post_norms: bool,
    pub activation: Activation,
    /// Distinct rotary embeddings (Gemma 3: global and local).
    pub ropes: Vec<Rope>,
    pub layers: Vec<LayerSpec>,
}

/// The spec of the checkpoint `src`, whose token embedding has `vocab_rows` rows.
pub fn spec_from_source(src: &dyn WeightSource, vocab_rows: usize) -> Result<DecoderSpec> {
    match src.architecture() {
        "llama" | "mistral" => {
            // llama.cpp permutes Llama Q/K rows in GGUF so that RoPE pairs are
            // adjacent; Hugging Face checkpoints pair i with i + n_rot/2.
            let style = match src.kind() {
                SourceKind::Gguf => RopeStyle::Normal,
                SourceKind::HfDir => RopeStyle::Neox,
            };
            llama_like(src, vocab_rows, "llama", style, false)
        }
        "qwen3" => llama_like(src, vocab_rows, "qwen3", RopeStyle::Neox, true),
        "gemma3" | "gemma3_text" => gemma3(src, vocab_rows),
        other => Err(ModelError::UnsupportedArch(
            other.to_string(),
            "llama, mistral, qwen3, gemma3, gemma3_text (GPU decoder)".into(),
        )),
    }
}

fn llama_like(
    src: &dyn WeightSource,
    vocab_rows: usize,
    arch: &str,
    style: RopeStyle,
    qk_norm: bool,
) -> Result<DecoderSpec> {
    let cfg = base_config(src, arch, vocab_rows)?;
    let n_rot = Params { src }
        .usize_opt(HParam::RopeDimCount, cfg.head_dim)?
        .unwrap_or(cfg.head_dim);
    let rope = Rope::new(
        cfg.head_dim,
        n_rot,
        cfg.rope_base,
        style,
        &rope_scaling(src)?,
    )?;
    let layers = vec![
        LayerSpec {
            window: None,
            rope: 0
        };
        cfg.n_layers
    ];
    Ok(DecoderSpec {
        embed_scale: 1.0,
        attn_scale: 1.0 / (cfg.head_dim as f32).sqrt(),
        norm_offset: 0.0,
        qk_norm,
        post_norms: false,
        activation: Activation::Silu,
        ropes: vec![rope],
        layers,
        cfg,
    })
}

fn gemma3(src: &dyn WeightSource, vocab_rows: usize) -> Result<DecoderSpec> {
    let cfg = base_config(src, "gemma3", vocab_rows)?;
    let p = Params { src };
    // GGUF conversion stores norm weights as 1 + w; HF stores w.
    let norm_offset = match src.kind() {
        SourceKind::Gguf => 0.0,
        SourceKind::HfDir => 1.0,
    };
    let attn_scale = match src.kind() {
        // llama.cpp's `attention.scale` is the multiplier itself.
        SourceKind::Gguf => p.f32_or(
            HParam::QueryPreAttnScalar,
            1.0 / (cfg.head_dim as f32).sqrt(),
        )?,
        SourceKind::HfDir => {
            1.0 / p
                .f32_or(HParam::QueryPreAttnScalar, cfg.head_dim as f32)?
                .sqrt()
        }
    };
    if !(attn_scale.is_finite() && attn_scale > 0.0) {
        return Err(ModelError::Config(format!("attention scale {attn_scale}")));
    }
    let pattern = p
        .usize_opt(HParam::SlidingWindowPattern, cfg.n_layers.max(1))?
        .unwrap_or(GEMMA_DEFAULT_SLIDING_WINDOW_PATTERN);
    let local_base = p.f32_or(HParam::RopeFreqBaseLocal, GEMMA_DEFAULT_LOCAL_ROPE_BASE)?;
    let global = Rope::new(
        cfg.head_dim,
        cfg.head_dim,
        cfg.rope_base,
        RopeStyle::Neox,
        &rope_scaling(src)?,
    )?;
    let local = Rope::new(
        cfg.head_dim,
        cfg.head_dim,
        local_base,
        RopeStyle::Neox,
        &RopeScaling::None,
    )?;
    let window = cfg.sliding_window;
    let layers = (0..cfg.n_layers)
        .map(|il| {
            let is_local = window.is_some() && !(il + 1).is_multiple_of(pattern);
            LayerSpec {
                window: if is_local { window } else { None },
                rope: usize::from(is_local),
            }
        })
        .collect();
    Ok(DecoderSpec {
        embed_scale: (cfg.hidden_size as f32).sqrt(),
        attn_scale,
        norm_offset,
        qk_norm: true,
        post_norms: true,
        activation: Activation::GeluTanh,
        ropes: vec![global, local],
        layers,
        cfg,
    })
}
