//! Unit tests: GPTQ export -> import round trips on random tensors, and
//! bad input.

use super::gptq::{GptqConfig, GptqTensors, GptqZeroFormat};
use super::ForeignFormat;
use marlin_quant::{quantize_rtn, QuantScheme, QuantTensor, RtnOptions};

/// A deterministic pseudo-random (N, K) matrix.
fn matrix(n: usize, k: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n * k)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect()
}

fn quantized(scheme: QuantScheme, n: usize, k: usize, seed: u64) -> QuantTensor {
    quantize_rtn(&matrix(n, k, seed), n, k, scheme, &RtnOptions::default())
        .expect("quantize test matrix")
}

fn round_trip(t: &QuantTensor, format: GptqZeroFormat, group: Option<usize>) -> QuantTensor {
    let (g, rounded) = GptqTensors::from_quant(t, format).expect("export");
    assert_eq!(rounded, 0, "f16 scales need no rounding");
    g.to_quant(group, "test").expect("import")
}

#[test]
fn gptq_round_trip_is_bit_exact() {
    for (scheme, group) in [
        (QuantScheme::int4_sym(32), Some(32)),
        (QuantScheme::int4_asym(32), Some(32)),
        (QuantScheme::int2_asym(16), Some(16)),
        (QuantScheme::int8_asym(64), Some(64)),
    ] {
        let t = quantized(
            scheme.with_scale_dtype(marlin_quant::ScaleDType::F16),
            16,
            64,
            7,
        );
        for format in [GptqZeroFormat::V1, GptqZeroFormat::V2] {
            if format == GptqZeroFormat::V1 && t.zeros.as_ref().is_some_and(|z| z.contains(&0.0)) {
                assert!(GptqTensors::from_quant(&t, format).is_err());
                continue;
            }
            let back = round_trip(&t, format, group);
            assert_eq!(
                back.dequantize().expect("dequantize"),
                t.dequantize().expect("dequantize"),
                "{scheme:?} {format:?}"
            );
        }
    }
}

#[test]
fn gptq_round_trip_keeps_act_order() {
    let mut t = quantized(QuantScheme::int4_sym(16), 8, 64, 3);
    // A permuted assignment of columns to the 4 groups.
    t.g_idx = Some((0..64u32).map(|c| (c * 7 + 3) % 4).collect());
    let back = round_trip(&t, GptqZeroFormat::V1, Some(16));
    assert_eq!(back.g_idx, t.g_idx);
    assert_eq!(
        back.dequantize().expect("deq"),
        t.dequantize().expect("deq")
    );
}

#[test]
fn int8_per_channel_f32_scales_are_rounded_and_counted() {
    let t = quantized(QuantScheme::int8_per_channel(), 8, 32, 5);
    let (g, rounded) = GptqTensors::from_quant(&t, GptqZeroFormat::V1).expect("export");
    assert!(rounded > 0);
    let back = g.to_quant(None, "int8").expect("import");
    let (a, b) = (
        back.dequantize().expect("deq"),
        t.dequantize().expect("deq"),
    );
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= y.abs() * 1e-3 + 1e-6, "{x} vs {y}");
    }
}

#[test]
fn bad_gptq_tensors_are_errors() {
    let t = quantized(QuantScheme::int4_sym(32), 16, 64, 9);
    let (g, _) = GptqTensors::from_quant(&t, GptqZeroFormat::V1).expect("export");
    let mut short = g.clone();
    short.qweight.pop();
    assert!(short.to_quant(Some(32), "short").is_err());
    let mut bad_g = g.clone();
    bad_g.g_idx[3] = 99;
    assert!(bad_g.to_quant(Some(32), "g_idx").is_err());
    assert!(g.to_quant(Some(48), "group").is_err());
    // FP formats have no GPTQ form.
    let fp = quantized(QuantScheme::mxfp4(), 16, 64, 1);
    assert!(GptqTensors::from_quant(&fp, GptqZeroFormat::V1).is_err());
}

#[test]
fn configs_parse_and_reject() {
    let cfg = |q: serde_json::Value| serde_json::json!({ "quantization_config": q });
    let g = ForeignFormat::of_config(&cfg(serde_json::json!({
        "quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": true, "sym": false
    })))
    .expect("parse");
    assert_eq!(
        g,
        Some(ForeignFormat::Gptq(GptqConfig {
            bits: 4,
            group_size: Some(128),
            desc_act: true,
            sym: false,
            zero_format: GptqZeroFormat::V1,
        }))
    );
    for bad in [
        serde_json::json!({"quant_method": "gptq", "bits": 3, "group_size": 128}),
        serde_json::json!({"quant_method": "gptq", "bits": 4, "group_size": 0}),
        serde_json::json!({"quant_method": "gptq", "bits": 4, "checkpoint_format": "marlin"}),
        serde_json::json!({"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemv"}),
        serde_json::json!({"quant_method": "awq", "bits": 8, "group_size": 128}),
        serde_json::json!({"quant_method": "compressed-tensors", "format": "float-quantized",
            "config_groups": {"g": {"weights": {"num_bits": 8, "type": "float"}}}}),
    ] {
        assert!(
            ForeignFormat::of_config(&cfg(bad.clone())).is_err(),
            "{bad}"
        );
    }
    let marlin = cfg(serde_json::json!({"quant_method": "marlin"}));
    assert_eq!(ForeignFormat::of_config(&marlin).expect("parse"), None);
}
