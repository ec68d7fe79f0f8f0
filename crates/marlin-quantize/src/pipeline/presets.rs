//! Which scheme each tensor gets: the target format, the preset's choice of
//! layer classes kept in high precision (or raised to INT8), and regex
//! overrides over Hugging Face tensor names (first match wins).

use crate::QuantizeError;
use marlin_quant::{Granularity, QuantScheme, ScaleDType};
use regex::Regex;

/// A target number format of `--format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Unsigned 4-bit codes, integer zero point, f16 scale per group.
    Int4,
    /// Unsigned 3-bit codes, integer zero point, f16 scale per group.
    Int3,
    /// Unsigned 2-bit codes, integer zero point, f16 scale per group.
    Int2,
    /// Signed 8-bit codes, one f32 scale per output row.
    Int8,
    /// FP4 E2M1 with an f16 scale per group.
    Fp4,
    /// OCP MXFP4 (E8M0 scale per 32).
    Mxfp4,
    /// NVFP4 (E4M3 scale per 16 and an f32 tensor scale).
    Nvfp4,
    /// FP8 E4M3, one f32 scale per output row.
    Fp8,
    /// Not quantized: stored as f32.
    Dense,
}

impl Format {
    pub fn parse(s: &str) -> Result<Self, QuantizeError> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "int4" => Format::Int4,
            "int3" => Format::Int3,
            "int2" => Format::Int2,
            "int8" => Format::Int8,
            "fp4" => Format::Fp4,
            "mxfp4" => Format::Mxfp4,
            "nvfp4" => Format::Nvfp4,
            "fp8" => Format::Fp8,
            "f32" | "dense" | "none" => Format::Dense,
            other => {
                return Err(QuantizeError::InvalidOption(format!(
                    "unknown format `{other}` (int4, int3, int2, int8, fp4, mxfp4, nvfp4, fp8, f32)"
                )))
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Int4 => "int4",
            Format::Int3 => "int3",
            Format::Int2 => "int2",
            Format::Int8 => "int8",
            Format::Fp4 => "fp4",
            Format::Mxfp4 => "mxfp4",
            Format::Nvfp4 => "nvfp4",
            Format::Fp8 => "fp8",
            Format::Dense => "f32",
        }
    }

    /// The scheme, `None` for [`Format::Dense`]. `group_size` applies to the
    /// grouped integer and FP4 formats; MXFP4 / NVFP4 have fixed blocks and
    /// INT8 / FP8 are per-channel.
    pub fn scheme(self, group_size: usize) -> Option<QuantScheme> {
        let group = Granularity::PerGroup { group_size };
        Some(match self {
            Format::Int4 => QuantScheme::int4_asym(group_size),
            Format::Int3 => QuantScheme::int3_asym(group_size),
            Format::Int2 => QuantScheme::int2_asym(group_size),
            Format::Int8 => QuantScheme::int8_per_channel(),
            Format::Fp4 => QuantScheme::fp4_e2m1(group, ScaleDType::F16),
            Format::Mxfp4 => QuantScheme::mxfp4(),
            Format::Nvfp4 => QuantScheme::nvfp4(),
            Format::Fp8 => QuantScheme::fp8_e4m3_per_channel(),
            Format::Dense => return None,
        })
    }

    /// Whether `group_size` means anything for this format.
    pub fn uses_group_size(self) -> bool {
        matches!(
            self,
            Format::Int4 | Format::Int3 | Format::Int2 | Format::Fp4
        )
    }
}

/// Layer classes a preset treats differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerClass {
    Embedding,
    LmHead,
    AttnQkv,
    AttnV,
    AttnOut,
    Mlp,
    MlpDown,
    /// MoE router (`ffn_gate_inp`): always kept in f32 (a few KB, and
    /// expert selection flips on small errors).
    Router,
    /// Routed experts (`ffn_{gate,up,down}_exps`).
    Expert,
    /// Shared experts (`ffn_{gate,up,down}_shexp`), run for every token.
    SharedExpert,
}

impl LayerClass {
    /// The class of a GGUF-style tensor name, `None` for non-linears
    /// (norms), which always stay in f32.
    pub fn of(gguf_name: &str) -> Option<Self> {
        Some(match gguf_name {
            "token_embd.weight" => LayerClass::Embedding,
            "output.weight" => LayerClass::LmHead,
            n if n.ends_with(".attn_q.weight") || n.ends_with(".attn_k.weight") => {
                LayerClass::AttnQkv
            }
            n if n.ends_with(".attn_v.weight") => LayerClass::AttnV,
            n if n.ends_with(".attn_output.weight") => LayerClass::AttnOut,
            n if n.ends_with(".ffn_gate.weight") || n.ends_with(".ffn_up.weight") => {
                LayerClass::Mlp
            }
            n if n.ends_with(".ffn_down.weight") => LayerClass::MlpDown,
            n if n.ends_with(".ffn_gate_inp.weight") => LayerClass::Router,
            n if n.ends_with("_exps.weight") => LayerClass::Expert,
            n if n.ends_with("_shexp.weight") => LayerClass::SharedExpert,
            _ => return None,
        })
    }
}

/// `--preset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// Embeddings and LM head in f32; attention V and MLP down at INT8
    /// (the most sensitive linears, as llama.cpp's Q4_K_M raises them).
    Quality,
    /// Embeddings and LM head in f32; every other linear in the format.
    Balanced,
    /// Like balanced, but an untied LM head is quantized too (INT8); the
    /// embedding table stays f32 (it is read, not multiplied).
    Speed,
    /// For mixture-of-experts models: the routed experts (most of the
    /// weights, each read by few tokens) in the format; attention and
    /// shared experts (read by every token) at INT8; router, embeddings
    /// and LM head f32. On a dense model the MLP counts as the experts.
    Moe,
}

impl Preset {
    pub fn parse(s: &str) -> Result<Self, QuantizeError> {
        match s {
            "quality" => Ok(Preset::Quality),
            "balanced" => Ok(Preset::Balanced),
            "speed" => Ok(Preset::Speed),
            "moe" => Ok(Preset::Moe),
            other => Err(QuantizeError::InvalidOption(format!(
                "unknown preset `{other}` (quality, balanced, speed, moe)"
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Preset::Quality => "quality",
            Preset::Balanced => "balanced",
            Preset::Speed => "speed",
            Preset::Moe => "moe",
        }
    }

    /// The format of a class when the target is `target`.
    pub fn format_for(self, class: LayerClass, target: Format) -> Format {
        let int8_unless_finer = if matches!(target, Format::Int8 | Format::Fp8 | Format::Dense) {
            target
        } else {
            Format::Int8
        };
        match (self, class) {
            (_, LayerClass::Embedding | LayerClass::Router) => Format::Dense,
            (Preset::Speed, LayerClass::LmHead) => Format::Int8,
            (_, LayerClass::LmHead) => Format::Dense,
            (Preset::Quality, LayerClass::AttnV | LayerClass::MlpDown)
                if !matches!(target, Format::Int8 | Format::Fp8 | Format::Dense) =>
            {
                Format::Int8
            }
            (
                Preset::Moe,
                LayerClass::AttnQkv
                | LayerClass::AttnV
                | LayerClass::AttnOut
                | LayerClass::SharedExpert,
            ) => int8_unless_finer,
            _ => target,
        }
    }
}

/// One `--override RE=FORMAT`.
#[derive(Clone, Debug)]
pub struct Override {
    pub pattern: Regex,
    pub format: Format,
}

impl Override {
    /// Parses `RE=FORMAT` (the last `=` splits, so the regex may hold `=`).
    pub fn parse(s: &str) -> Result<Self, QuantizeError> {
        let (re, fmt) = s.rsplit_once('=').ok_or_else(|| {
            QuantizeError::InvalidOption(format!("override `{s}` is not RE=FORMAT"))
        })?;
        let pattern = Regex::new(&format!("^(?:{re})$"))
            .map_err(|e| QuantizeError::InvalidOption(format!("override `{s}`: {e}")))?;
        Ok(Self {
            pattern,
            format: Format::parse(fmt)?,
        })
    }
}

/// The format of one tensor: an override matching its Hugging Face name
/// (with or without the `.weight` suffix) wins, else the preset.
pub fn choose_format(
    hf_name: &str,
    class: LayerClass,
    target: Format,
    preset: Preset,
    overrides: &[Override],
) -> Format {
    let base = hf_name.strip_suffix(".weight").unwrap_or(hf_name);
    overrides
        .iter()
        .find(|o| o.pattern.is_match(hf_name) || o.pattern.is_match(base))
        .map(|o| o.format)
        .unwrap_or_else(|| preset.format_for(class, target))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_and_overrides() {
        let ovr = [Override::parse(r"model\.layers\.0\..*=int8").unwrap()];
        let name = "model.layers.0.mlp.up_proj.weight";
        assert_eq!(
            choose_format(name, LayerClass::Mlp, Format::Int4, Preset::Balanced, &ovr),
            Format::Int8
        );
        assert_eq!(
            choose_format(
                "model.layers.1.mlp.up_proj.weight",
                LayerClass::Mlp,
                Format::Int4,
                Preset::Balanced,
                &ovr
            ),
            Format::Int4
        );
        assert_eq!(
            Preset::Quality.format_for(LayerClass::MlpDown, Format::Int4),
            Format::Int8
        );
        assert_eq!(
            Preset::Balanced.format_for(LayerClass::Embedding, Format::Int4),
            Format::Dense
        );
        assert!(Override::parse("no-equals").is_err());
        assert!(Override::parse("(=int4").is_err());
        assert!(Override::parse("x=int5").is_err());
        assert!(Format::parse("mxfp4").unwrap().scheme(128).is_some());
    }

    #[test]
    fn moe_preset() {
        let moe = Preset::parse("moe").unwrap();
        assert_eq!(moe.name(), "moe");
        let class = |n: &str| LayerClass::of(n).unwrap();
        let router = class("blk.3.ffn_gate_inp.weight");
        let experts = class("blk.3.ffn_up_exps.weight");
        let shared = class("blk.3.ffn_down_shexp.weight");
        assert_eq!(
            (router, experts, shared),
            (
                LayerClass::Router,
                LayerClass::Expert,
                LayerClass::SharedExpert
            )
        );
        for p in [
            Preset::Quality,
            Preset::Balanced,
            Preset::Speed,
            Preset::Moe,
        ] {
            assert_eq!(p.format_for(router, Format::Int4), Format::Dense);
        }
        assert_eq!(moe.format_for(experts, Format::Mxfp4), Format::Mxfp4);
        assert_eq!(moe.format_for(shared, Format::Mxfp4), Format::Int8);
        assert_eq!(
            moe.format_for(class("blk.0.attn_q.weight"), Format::Int4),
            Format::Int8
        );
        assert_eq!(
            moe.format_for(class("blk.0.attn_q.weight"), Format::Fp8),
            Format::Fp8
        );
        assert_eq!(
            moe.format_for(class("blk.0.ffn_up.weight"), Format::Int4),
            Format::Int4
        );
        assert_eq!(
            moe.format_for(LayerClass::LmHead, Format::Int4),
            Format::Dense
        );
        assert_eq!(
            moe.format_for(LayerClass::Embedding, Format::Int4),
            Format::Dense
        );
    }
}
