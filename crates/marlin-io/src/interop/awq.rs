//! AWQ checkpoints (AutoAWQ, `version: "gemm"`), 4-bit codes only.
//!
//! For a linear `<base>` with N outputs, K inputs and G = K / group_size:
//!
//! | tensor | dtype | shape | content |
//! |---|---|---|---|
//! | `qweight` | I32 | (K, N / 8) | code (k, 8j + ORDER[i]) in bits 4i of word (k, j) |
//! | `qzeros` | I32 | (G, N / 8) | zero (g, 8j + ORDER[i]) in bits 4i of word (g, j) |
//! | `scales` | F16 | (G, N) | |
//!
//! with `ORDER = [0, 2, 4, 6, 1, 3, 5, 7]` (the interleave AutoAWQ's GEMM
//! kernel dequantizes in), and `w(n, k) = scales[k / g, n] * (q - zero)`;
//! zero points are stored as they are (no GPTQ v1 offset).

use super::{
    check_bits, config_err, exact_div, field, i32_values, json_bool, json_int, matrix_of,
    scale_dtype_of, shape_err, Unpacked,
};
use crate::error::Result;
use crate::hf::HfModelDir;
use crate::safetensors::Dtype;
use marlin_quant::{QuantTensor, ScaleDType};

/// Output column of nibble `i` (bits 4i) within a packed word.
pub const AWQ_ORDER: [usize; 8] = [0, 2, 4, 6, 1, 3, 5, 7];

/// The fields of an AWQ `quantization_config` marlin reads.
#[derive(Clone, Debug, PartialEq)]
pub struct AwqConfig {
    pub group_size: usize,
}

impl AwqConfig {
    pub fn from_json(q: &serde_json::Value) -> Result<Self> {
        let bits = json_int(q, "bits")?
            .or(json_int(q, "w_bit")?)
            .ok_or_else(|| config_err("no `bits`"))?;
        if check_bits(bits)? != 4 {
            return Err(config_err(format!("AWQ with {bits} bits (supported: 4)")));
        }
        let version = q
            .get("version")
            .and_then(|v| v.as_str())
            .unwrap_or("gemm")
            .to_ascii_lowercase();
        if version != "gemm" {
            return Err(config_err(format!(
                "AWQ version `{version}` (supported: gemm)"
            )));
        }
        if !json_bool(q, "zero_point", true)? {
            return Err(config_err(
                "AWQ without zero points (supported: zero_point true)",
            ));
        }
        let g = json_int(q, "group_size")?
            .or(json_int(q, "q_group_size")?)
            .ok_or_else(|| config_err("no `group_size`"))?;
        let group_size = usize::try_from(g)
            .ok()
            .filter(|&g| g > 0)
            .ok_or_else(|| config_err(format!("AWQ group_size = {g}")))?;
        Ok(Self { group_size })
    }
}

/// Repacks AWQ tensors (row-major as stored) of an (N, K) linear.
pub fn awq_to_quant(
    name: &str,
    qweight: &[i32],
    qzeros: &[i32],
    scales: &[f32],
    (n, k): (usize, usize),
    group_size: usize,
) -> Result<QuantTensor> {
    let n_words = exact_div(name, n, 8, "N / 8")?;
    let n_groups = exact_div(name, k, group_size, "K / group_size")?;
    let check = |what: &str, len: usize, want: Option<usize>| {
        if Some(len) == want {
            Ok(())
        } else {
            Err(shape_err(
                name,
                format!("{what} has {len} elements, expected {want:?}"),
            ))
        }
    };
    check("qweight", qweight.len(), k.checked_mul(n_words))?;
    check("qzeros", qzeros.len(), n_groups.checked_mul(n_words))?;
    check("scales", scales.len(), n_groups.checked_mul(n))?;
    let mut codes = vec![0u8; n * k]; // (N, K)
    for kk in 0..k {
        for j in 0..n_words {
            let word = qweight[kk * n_words + j];
            for (i, &col) in AWQ_ORDER.iter().enumerate() {
                codes[(8 * j + col) * k + kk] = field(word, 4 * i as u32, 4) as u8;
            }
        }
    }
    let mut zeros = vec![0u32; n * n_groups]; // (N, G)
    let mut grid_scales = vec![0f32; n * n_groups]; // (N, G)
    for g in 0..n_groups {
        for j in 0..n_words {
            let word = qzeros[g * n_words + j];
            for (i, &col) in AWQ_ORDER.iter().enumerate() {
                zeros[(8 * j + col) * n_groups + g] = field(word, 4 * i as u32, 4);
            }
        }
        for col in 0..n {
            grid_scales[col * n_groups + g] = scales[g * n + col];
        }
    }
    Unpacked {
        bits: 4,
        rows: n,
        cols: k,
        group_size,
        codes,
        scales: grid_scales,
        zeros,
        scale_dtype: ScaleDType::F16,
        g_idx: None,
    }
    .into_quant()
}

/// Reads AWQ linear `base` of `dir`; K comes from `qweight`, N from `scales`.
pub fn read_awq_linear(dir: &HfModelDir, cfg: &AwqConfig, base: &str) -> Result<QuantTensor> {
    let qweight = dir.tensor(&format!("{base}.qweight"))?;
    let qzeros = dir.tensor(&format!("{base}.qzeros"))?;
    let scales = dir.tensor(&format!("{base}.scales"))?;
    let (k, _) = matrix_of(&qweight, &[Dtype::I32])?;
    matrix_of(&qzeros, &[Dtype::I32])?;
    let (_, n) = matrix_of(&scales, &[Dtype::F16, Dtype::BF16, Dtype::F32])?;
    if scale_dtype_of(&scales)? != ScaleDType::F16 {
        return Err(shape_err(scales.name, "AWQ scales must be F16"));
    }
    awq_to_quant(
        base,
        &i32_values(&qweight),
        &i32_values(&qzeros),
        &scales.to_f32()?,
        (n, k),
        cfg.group_size,
    )
    .map_err(|e| e.in_file(dir.dir().join(base)))
}
