//! GPTQ checkpoints (AutoGPTQ / GPTQModel / transformers + optimum).
//!
//! For a linear `<base>` with N outputs, K inputs, `b`-bit codes
//! (b in {2, 4, 8}, pack factor `pf = 32 / b`) and G = K / group_size groups:
//!
//! | tensor | dtype | shape | content |
//! |---|---|---|---|
//! | `qweight` | I32 | (K / pf, N) | code (k, n) in bits `b * (k % pf)` of word (k / pf, n) |
//! | `qzeros` | I32 | (G, N / pf) | zero (g, n) in bits `b * (n % pf)` of word (g, n / pf) |
//! | `scales` | F16 | (G, N) | |
//! | `g_idx` | I32 | (K) | group of input column k (act order) |
//!
//! `w(n, k) = scales[g, n] * (q(k, n) - zero(g, n))` with `g = g_idx[k]`.
//! `checkpoint_format: "gptq"` (v1, the default, what transformers loads)
//! stores `zero - 1`; `"gptq_v2"` (GPTQModel) stores the zero itself.

use super::{
    check_bits, checked_g_idx, config_err, exact_div, field, i32_values, json_bool, json_int,
    matrix_of, scale_dtype_of, shape_err, Unpacked,
};
use crate::checkpoint::{read_quant_tensor, write_index, write_json_atomic, SafetensorsWriter};
use crate::error::{IoError, Result};
use crate::hf::HfModelDir;
use crate::safetensors::Dtype;
use marlin_quant::{ElementType, Granularity, QuantTensor, ScaleDType, ZeroPoint};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Zero-point convention of the stored `qzeros`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GptqZeroFormat {
    /// `checkpoint_format: "gptq"`: stored = zero - 1.
    V1,
    /// `checkpoint_format: "gptq_v2"`: stored = zero.
    V2,
}

impl GptqZeroFormat {
    pub fn name(self) -> &'static str {
        match self {
            GptqZeroFormat::V1 => "gptq",
            GptqZeroFormat::V2 => "gptq_v2",
        }
    }
}

/// The fields of a GPTQ `quantization_config` marlin reads.
#[derive(Clone, Debug, PartialEq)]
pub struct GptqConfig {
    pub bits: u8,
    /// `None`: per output channel (`group_size: -1`).
    pub group_size: Option<usize>,
    pub desc_act: bool,
    pub sym: bool,
    pub zero_format: GptqZeroFormat,
}

impl GptqConfig {
    pub fn from_json(q: &serde_json::Value) -> Result<Self> {
        let bits = check_bits(json_int(q, "bits")?.ok_or_else(|| config_err("no `bits`"))?)?;
        if 32 % u32::from(bits) != 0 {
            return Err(config_err(format!(
                "GPTQ with {bits} bits (codes straddle int32 words; supported: 2, 4, 8)"
            )));
        }
        let group_size = match json_int(q, "group_size")?.unwrap_or(-1) {
            -1 => None,
            g => Some(
                usize::try_from(g)
                    .ok()
                    .filter(|&g| g > 0)
                    .ok_or_else(|| config_err(format!("group_size = {g}")))?,
            ),
        };
        let format = q
            .get("checkpoint_format")
            .or_else(|| q.get("format"))
            .and_then(|f| f.as_str())
            .unwrap_or("gptq");
        let zero_format = match format {
            "gptq" => GptqZeroFormat::V1,
            "gptq_v2" => GptqZeroFormat::V2,
            other => {
                return Err(config_err(format!(
                    "GPTQ checkpoint_format `{other}` (supported: gptq, gptq_v2)"
                )))
            }
        };
        Ok(Self {
            bits,
            group_size,
            desc_act: json_bool(q, "desc_act", false)?,
            sym: json_bool(q, "sym", true)?,
            zero_format,
        })
    }

    /// The `quantization_config` block transformers reads.
    pub fn to_json(&self, lm_head: bool) -> serde_json::Value {
        let group = self.group_size.map_or(-1, |g| g as i64);
        serde_json::json!({
            "quant_method": "gptq",
            "bits": self.bits,
            "group_size": group,
            "desc_act": self.desc_act,
            "sym": self.sym,
            "lm_head": lm_head,
            "checkpoint_format": self.zero_format.name(),
            "format": self.zero_format.name(),
            "true_sequential": true,
            "meta": { "quantizer": ["marlin"] },
        })
    }
}

/// The tensors of one GPTQ linear, as stored (row-major).
#[derive(Clone, Debug, PartialEq)]
pub struct GptqTensors {
    pub bits: u8,
    /// N.
    pub rows: usize,
    /// K.
    pub cols: usize,
    /// (K / pf, N).
    pub qweight: Vec<i32>,
    /// (G, N / pf).
    pub qzeros: Vec<i32>,
    /// (G, N), f16 values.
    pub scales: Vec<f32>,
    /// (K).
    pub g_idx: Vec<i32>,
    pub zero_format: GptqZeroFormat,
}

impl GptqTensors {
    fn pack_factor(&self) -> usize {
        32 / usize::from(self.bits)
    }

    /// Repacks into marlin's layout (see [`Unpacked::into_quant`]). G is
    /// `scales.len() / N`; `group_size` None means per-channel (G = 1).
    pub fn to_quant(&self, group_size: Option<usize>, name: &str) -> Result<QuantTensor> {
        let (n, k, bits) = (self.rows, self.cols, self.bits);
        if !(2..=8).contains(&bits) || 32 % u32::from(bits) != 0 {
            return Err(shape_err(name, format!("{bits}-bit GPTQ codes")));
        }
        let pf = self.pack_factor();
        let group_size = group_size.unwrap_or(k);
        let n_groups = exact_div(name, k, group_size, "K / group_size")?;
        let k_words = exact_div(name, k, pf, "K / pack factor")?;
        let n_words = exact_div(name, n, pf, "N / pack factor")?;
        let expect = |what: &str, len: usize, want: Option<usize>| {
            if Some(len) == want {
                Ok(())
            } else {
                Err(shape_err(
                    name,
                    format!("{what} has {len} elements, expected {want:?}"),
                ))
            }
        };
        expect("qweight", self.qweight.len(), k_words.checked_mul(n))?;
        expect("qzeros", self.qzeros.len(), n_groups.checked_mul(n_words))?;
        expect("scales", self.scales.len(), n_groups.checked_mul(n))?;
        let b = u32::from(bits);
        let mut codes = vec![0u8; n * k]; // (N, K)
        for kw in 0..k_words {
            for (col, &word) in self.qweight[kw * n..(kw + 1) * n].iter().enumerate() {
                for i in 0..pf {
                    codes[col * k + kw * pf + i] = field(word, b * i as u32, bits) as u8;
                }
            }
        }
        let offset = match self.zero_format {
            GptqZeroFormat::V1 => 1,
            GptqZeroFormat::V2 => 0,
        };
        let mut zeros = vec![0u32; n * n_groups]; // (N, G)
        let mut scales = vec![0f32; n * n_groups]; // (N, G)
        for g in 0..n_groups {
            for nw in 0..n_words {
                let word = self.qzeros[g * n_words + nw];
                for i in 0..pf {
                    zeros[(nw * pf + i) * n_groups + g] = field(word, b * i as u32, bits) + offset;
                }
            }
            for col in 0..n {
                scales[col * n_groups + g] = self.scales[g * n + col];
            }
        }
        let g_idx = checked_g_idx(name, &self.g_idx, k, group_size, n_groups)?;
        Unpacked {
            bits,
            rows: n,
            cols: k,
            group_size,
            codes,
            scales,
            zeros,
            scale_dtype: ScaleDType::F16,
            g_idx,
        }
        .into_quant()
    }

    /// The GPTQ tensors of a marlin [`QuantTensor`]: integer codes of 2, 4
    /// or 8 bits, per group or per channel, signed symmetric (zero
    /// 2^(b-1)) or unsigned with integer zero points. Scales are rounded to
    /// f16 (exact for f16 schemes; `rounded_scales` counts the others).
    /// `zero_format`: V1 needs every zero >= 1.
    pub fn from_quant(t: &QuantTensor, zero_format: GptqZeroFormat) -> Result<(Self, usize)> {
        t.validate()?;
        let (bits, signed) = match t.scheme.element {
            ElementType::Int { bits, signed } if 32 % u32::from(bits) == 0 => (bits, signed),
            other => {
                return Err(IoError::Quant(marlin_quant::QuantError::Unsupported(
                    format!("GPTQ export of {other:?} (integer codes of 2, 4 or 8 bits only)"),
                )))
            }
        };
        let (n, k) = (t.rows, t.cols);
        let group_size = match t.scheme.granularity {
            Granularity::PerGroup { group_size } => group_size,
            Granularity::PerChannel => k,
            other => {
                return Err(IoError::Quant(marlin_quant::QuantError::Unsupported(
                    format!("GPTQ export of {other:?} scales"),
                )))
            }
        };
        let n_groups = k / group_size; // validate() checked the divisibility
        let pf = 32 / usize::from(bits);
        let name = "GPTQ export";
        let k_words = exact_div(name, k, pf, "K / pack factor")?;
        let n_words = exact_div(name, n, pf, "N / pack factor")?;
        let half = 1u32 << (bits - 1);
        let zero_of = |grid: usize| -> Result<u32> {
            match (&t.zeros, t.scheme.zero_point) {
                (None, ZeroPoint::None) if signed => Ok(half),
                (Some(z), ZeroPoint::Int | ZeroPoint::Float) if !signed => {
                    let v = z[grid];
                    if v.fract() == 0.0 && v >= 0.0 && v < (1u32 << bits) as f32 {
                        Ok(v as u32)
                    } else {
                        Err(shape_err(
                            name,
                            format!("zero point {v} is not a {bits}-bit integer"),
                        ))
                    }
                }
                _ => Err(shape_err(name, "inconsistent zero points")),
            }
        };
        let flip = if signed { half as u8 } else { 0 };
        let b = u32::from(bits);
        let mut qweight = vec![0i32; k_words * n]; // (K / pf, N)
        let row_bytes = t.scheme.row_bytes(k)?;
        for col in 0..n {
            let row = &t.data[col * row_bytes..(col + 1) * row_bytes];
            for kk in 0..k {
                let raw = marlin_quant::pack::read_code(row, kk, bits)
                    .ok_or_else(|| shape_err(name, "packed row too short"))?;
                let q = u32::from(raw ^ flip);
                qweight[(kk / pf) * n + col] |= (q << (b * (kk % pf) as u32)) as i32;
            }
        }
        let mut qzeros = vec![0i32; n_groups * n_words]; // (G, N / pf)
        let mut scales = vec![0f32; n_groups * n]; // (G, N)
        let mut rounded_scales = 0usize;
        for col in 0..n {
            for g in 0..n_groups {
                let grid = t.scheme.scale_index(col, g * group_size, k);
                let zero = zero_of(grid)?;
                let stored = match zero_format {
                    GptqZeroFormat::V2 => zero,
                    GptqZeroFormat::V1 => zero.checked_sub(1).ok_or_else(|| {
                        shape_err(
                            name,
                            "zero point 0 cannot be stored in GPTQ v1 (use gptq_v2)",
                        )
                    })?,
                };
                qzeros[g * n_words + col / pf] |= (stored << (b * (col % pf) as u32)) as i32;
                let s = t.scales[grid];
                let s16 = ScaleDType::F16.round(s);
                if s16 != s {
                    rounded_scales += 1;
                }
                scales[g * n + col] = s16;
            }
        }
        let g_idx = match &t.g_idx {
            Some(g) => g.iter().map(|&g| g as i32).collect(),
            None => (0..k).map(|kk| (kk / group_size) as i32).collect(),
        };
        Ok((
            Self {
                bits,
                rows: n,
                cols: k,
                qweight,
                qzeros,
                scales,
                g_idx,
                zero_format,
            },
            rounded_scales,
        ))
    }

    /// Queues `<base>.qweight`, `.qzeros`, `.scales` (F16) and `.g_idx`.
    pub fn write(&self, w: &mut SafetensorsWriter, base: &str) -> Result<()> {
        let pf = self.pack_factor();
        let n_groups = self.scales.len() / self.rows.max(1);
        w.add_i32(
            &format!("{base}.qweight"),
            &[self.cols / pf, self.rows],
            &self.qweight,
        )?;
        w.add_i32(
            &format!("{base}.qzeros"),
            &[n_groups, self.rows / pf],
            &self.qzeros,
        )?;
        let scale_bytes = self
            .scales
            .iter()
            .flat_map(|&s| half::f16::from_f32(s).to_bits().to_le_bytes())
            .collect();
        w.add_bytes(
            &format!("{base}.scales"),
            Dtype::F16,
            &[n_groups, self.rows],
            scale_bytes,
        )?;
        w.add_i32(&format!("{base}.g_idx"), &[self.cols], &self.g_idx)
    }
}

/// Reads GPTQ linear `base` of `dir` into a [`QuantTensor`]; N and K come
/// from the `scales` and `g_idx` shapes (or `qweight` without g_idx).
pub fn read_gptq_linear(dir: &HfModelDir, cfg: &GptqConfig, base: &str) -> Result<QuantTensor> {
    let qweight = dir.tensor(&format!("{base}.qweight"))?;
    let qzeros = dir.tensor(&format!("{base}.qzeros"))?;
    let scales = dir.tensor(&format!("{base}.scales"))?;
    let (k_words, n) = matrix_of(&qweight, &[Dtype::I32])?;
    matrix_of(&qzeros, &[Dtype::I32])?;
    matrix_of(&scales, &[Dtype::F16, Dtype::BF16, Dtype::F32])?;
    if scale_dtype_of(&scales)? != ScaleDType::F16 {
        return Err(shape_err(scales.name, "GPTQ scales must be F16"));
    }
    let pf = 32 / usize::from(cfg.bits);
    let k = k_words
        .checked_mul(pf)
        .ok_or_else(|| shape_err(qweight.name, "K overflows"))?;
    let g_idx_name = format!("{base}.g_idx");
    let g_idx = if dir.contains(&g_idx_name) {
        let v = dir.tensor(&g_idx_name)?;
        if v.dtype != Dtype::I32 || v.shape != [k] {
            return Err(shape_err(
                v.name,
                format!("{} {:?}, expected I32 [{k}]", v.dtype.name(), v.shape),
            ));
        }
        i32_values(&v)
    } else {
        let g = cfg.group_size.unwrap_or(k.max(1));
        (0..k).map(|kk| (kk / g) as i32).collect()
    };
    let t = GptqTensors {
        bits: cfg.bits,
        rows: n,
        cols: k,
        qweight: i32_values(&qweight),
        qzeros: i32_values(&qzeros),
        scales: scales.to_f32()?,
        g_idx,
        zero_format: cfg.zero_format,
    };
    t.to_quant(cfg.group_size, base)
        .map_err(|e| e.in_file(dir.dir().join(base)))
}

/// What [`export_gptq_dir`] wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct GptqExport {
    pub config: GptqConfig,
    pub linears: usize,
    /// Scales that were not f16 values (INT8 per-channel f32 scales) and
    /// were rounded to the nearest f16.
    pub rounded_scales: usize,
}

/// Tokenizer and generation files copied next to the weights.
const SIDE_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
];

/// Converts a marlin checkpoint directory `src` into a GPTQ checkpoint in
/// `dst` (created): every quantized linear in the GPTQ layout (one format
/// for all: the same bits, group size, symmetry and act order, as
/// `quantization_config` has one), every other tensor copied as it is,
/// shards mirrored, config.json with a GPTQ `quantization_config`, and the
/// tokenizer files. v1 (`checkpoint_format: "gptq"`, what transformers
/// loads) unless a zero point is 0, which only v2 can store.
pub fn export_gptq_dir(src: &Path, dst: &Path) -> Result<GptqExport> {
    let dir = HfModelDir::open(src)?;
    let bases: BTreeSet<String> = dir
        .tensor_names()
        .into_iter()
        .filter_map(|name| name.strip_suffix(".qcodes").map(str::to_string))
        .collect();
    if bases.is_empty() {
        return Err(IoError::ModelDir(format!(
            "{}: no quantized linears (`*.qcodes`) to export",
            src.display()
        )));
    }
    let mut tensors = BTreeMap::new();
    let mut signature = None;
    let mut any_zero_zero = false;
    for base in &bases {
        let t = read_quant_tensor(&dir, base)?
            .ok_or_else(|| IoError::MissingTensor(format!("{base}.qcodes")))?;
        let group_size = match t.scheme.granularity {
            Granularity::PerGroup { group_size } if group_size != t.cols => Some(group_size),
            _ => None,
        };
        let sym = t.scheme.zero_point == ZeroPoint::None;
        let sig = (t.scheme.element, group_size, sym, t.g_idx.is_some());
        match &signature {
            None => signature = Some(sig),
            Some(s) if *s == sig => {}
            Some(s) => {
                return Err(IoError::ModelDir(format!(
                    "{base}: {sig:?} differs from the other linears' {s:?}; a GPTQ \
                     quantization_config holds one format (quantize with one format and \
                     no overrides to export)"
                )))
            }
        }
        any_zero_zero |= t.zeros.as_ref().is_some_and(|z| z.contains(&0.0));
        tensors.insert(base.clone(), t);
    }
    let Some((element, group_size, sym, desc_act)) = signature else {
        return Err(IoError::ModelDir("no quantized linears".into()));
    };
    let zero_format = if any_zero_zero {
        GptqZeroFormat::V2
    } else {
        GptqZeroFormat::V1
    };
    let config = GptqConfig {
        bits: element.bits(),
        group_size,
        desc_act,
        sym,
        zero_format,
    };
    std::fs::create_dir_all(dst).map_err(|source| IoError::Io {
        path: dst.to_path_buf(),
        source,
    })?;
    let quant_part = |name: &str| {
        bases.iter().any(|b| {
            name.strip_prefix(b.as_str()).is_some_and(|rest| {
                matches!(
                    rest,
                    ".qcodes" | ".scales" | ".zeros" | ".g_idx" | ".global_scale"
                )
            })
        })
    };
    let mut weight_map = BTreeMap::new();
    let mut total_size = 0u64;
    let mut rounded_scales = 0;
    let mut shard_names = BTreeSet::new();
    for shard in dir.shards() {
        let file_name = shard
            .path()
            .and_then(|p| p.file_name())
            .and_then(|f| f.to_str())
            .ok_or_else(|| IoError::ModelDir("shard without a file name".into()))?
            .to_string();
        if !shard_names.insert(file_name.clone()) {
            return Err(IoError::ModelDir(format!("shard {file_name} listed twice")));
        }
        let mut w = SafetensorsWriter::new();
        for (name, _) in shard.tensors() {
            if let Some(base) = name.strip_suffix(".qcodes") {
                let (g, rounded) = GptqTensors::from_quant(&tensors[base], zero_format)?;
                rounded_scales += rounded;
                g.write(&mut w, base)?;
            } else if !quant_part(name) {
                let v = shard.tensor(name)?;
                w.add_bytes(name, v.dtype, v.shape, v.data.to_vec())?;
            }
        }
        for name in w.tensor_names() {
            weight_map.insert(name.to_string(), file_name.clone());
        }
        w.write(&dst.join(&file_name))?;
        let size = std::fs::metadata(dst.join(&file_name))
            .map_err(|source| IoError::Io {
                path: dst.join(&file_name),
                source,
            })?
            .len();
        total_size = total_size.saturating_add(size);
    }
    if dir.dir().join(crate::hf::INDEX_FILE).is_file() {
        write_index(dst, &weight_map, total_size)?;
    }
    let lm_head = bases.contains("lm_head");
    let mut cfg_json = dir.config().clone();
    if let Some(obj) = cfg_json.as_object_mut() {
        obj.insert("quantization_config".into(), config.to_json(lm_head));
    }
    write_json_atomic(&dst.join("config.json"), &cfg_json)?;
    for file in SIDE_FILES {
        let from = src.join(file);
        if from.is_file() {
            std::fs::copy(&from, dst.join(file)).map_err(|source| IoError::Io {
                path: from.clone(),
                source,
            })?;
        }
    }
    Ok(GptqExport {
        config,
        linears: tensors.len(),
        rounded_scales,
    })
}
