//! GPTQ / AWQ / compressed-tensors checkpoints written by
//! `scripts/fixtures/make_interop_fixtures.py` import with bit-exact
//! dequantization (the expected weights come from the script's own numpy
//! reference), and a marlin checkpoint exported to GPTQ imports back to the
//! same values.

use marlin_io::checkpoint::{write_json_atomic, SafetensorsWriter};
use marlin_io::hf::HfModelDir;
use marlin_io::interop::gptq::{export_gptq_dir, GptqZeroFormat};
use marlin_io::interop::ForeignFormat;
use marlin_quant::{quantize_rtn, ElementType, QuantScheme, QuantTensor, RtnOptions, ZeroPoint};
use std::path::{Path, PathBuf};

const BASE: &str = "model.layers.0.mlp.up_proj";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/interop")
        .join(name)
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("marlin-interop-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// Imports the fixture's linear and checks its dequantization bit for bit.
fn import_fixture(name: &str) -> QuantTensor {
    let dir = HfModelDir::open(fixture(name)).expect("open fixture");
    let format = ForeignFormat::of_dir(&dir)
        .expect("parse quantization_config")
        .expect("a foreign format");
    assert!(format.contains_linear(&dir, BASE));
    assert!(!format.contains_linear(&dir, "model.layers.0.mlp.down_proj"));
    let t = format
        .read_linear(&dir, BASE)
        .expect("import")
        .expect("linear present");
    let expected = dir
        .tensor(&format!("expected.{BASE}"))
        .expect("expected tensor");
    assert_eq!(expected.shape, [t.rows, t.cols], "{name}");
    let want = expected.to_f32().expect("f32");
    let got = t.dequantize().expect("dequantize");
    let mismatches = got
        .iter()
        .zip(&want)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    assert_eq!(
        mismatches,
        0,
        "{name}: {mismatches} of {} differ",
        want.len()
    );
    t
}

#[test]
fn gptq_v1_symmetric_imports_as_signed_codes() {
    let t = import_fixture("gptq_v1_sym_g32");
    assert_eq!(t.scheme, QuantScheme::int4_sym(32));
    assert!(t.g_idx.is_none());
}

#[test]
fn gptq_v1_asymmetric_act_order_keeps_g_idx_and_zero_2_pow_bits() {
    let t = import_fixture("gptq_v1_asym_actorder_g16");
    assert!(t.g_idx.is_some());
    // Stored -1 (zero 0 in v1) reads back as 16: only a float zero holds it.
    assert_eq!(t.scheme.zero_point, ZeroPoint::Float);
}

#[test]
fn gptq_v2_int8_per_channel_and_int2_import() {
    let t = import_fixture("gptq_v2_int8_channel");
    assert_eq!(t.scheme.element.bits(), 8);
    assert_eq!(t.scales.len(), t.rows);
    let t = import_fixture("gptq_v2_int2_g16");
    assert_eq!(t.scheme.element.bits(), 2);
    assert_eq!(t.scheme.zero_point, ZeroPoint::Int);
}

#[test]
fn awq_gemm_order_imports() {
    let t = import_fixture("awq_g32");
    assert_eq!(t.scheme, QuantScheme::int4_asym(32));
}

#[test]
fn compressed_tensors_pack_quantized_imports() {
    let t = import_fixture("ct_int4_sym_g32_bf16");
    assert_eq!(t.scheme.scale_dtype, marlin_quant::ScaleDType::BF16);
    assert_eq!(
        t.scheme.element,
        ElementType::Int {
            bits: 4,
            signed: true
        }
    );
    let t = import_fixture("ct_int4_asym_actorder_g16");
    assert!(t.g_idx.is_some());
    assert_eq!(t.scheme.zero_point, ZeroPoint::Int);
    import_fixture("ct_int8_channel_sym");
    let t = import_fixture("ct_int3_asym_g32");
    assert_eq!(t.scheme.element.bits(), 3);
}

/// A one-linear marlin checkpoint holding `t` under `BASE`, plus a dense
/// tensor that must be copied unchanged.
fn marlin_checkpoint(dir: &Path, t: &QuantTensor) {
    let mut w = SafetensorsWriter::new();
    w.add_quant(BASE, t).expect("add quant");
    w.add_f32("model.norm.weight", &[4], &[1.0, 2.0, 3.0, 4.0])
        .expect("add dense");
    w.write(&dir.join("model.safetensors")).expect("write");
    let config = serde_json::json!({
        "model_type": "llama",
        "quantization_config": { "quant_method": "marlin" },
    });
    write_json_atomic(&dir.join("config.json"), &config).expect("config");
}

fn matrix(n: usize, k: usize) -> Vec<f32> {
    (0..n * k)
        .map(|i| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * (1.0 + (i % 13) as f32))
        .collect()
}

#[test]
fn gptq_export_then_import_is_bit_exact() {
    let (n, k) = (32, 128);
    let cases = [
        (QuantScheme::int4_sym(32), None, GptqZeroFormat::V1),
        (QuantScheme::int4_asym(64), None, GptqZeroFormat::V2),
        (
            QuantScheme::int4_sym(32),
            Some((0..k as u32).map(|c| (c * 5 + 1) % 4).collect::<Vec<u32>>()),
            GptqZeroFormat::V1,
        ),
    ];
    for (i, (scheme, g_idx, _)) in cases.iter().enumerate() {
        let opts = RtnOptions {
            g_idx: g_idx.clone(),
            ..RtnOptions::default()
        };
        let t = quantize_rtn(&matrix(n, k), n, k, *scheme, &opts).expect("rtn");
        let src = temp_dir(&format!("src{i}"));
        let dst = temp_dir(&format!("dst{i}"));
        marlin_checkpoint(&src, &t);
        let report = export_gptq_dir(&src, &dst).expect("export");
        assert_eq!(report.linears, 1);
        assert_eq!(report.rounded_scales, 0);
        // An asymmetric RTN grid has zero points of 0 -> only v2 holds them.
        let has_zero_zero = t.zeros.as_ref().is_some_and(|z| z.contains(&0.0));
        let want_format = if has_zero_zero {
            GptqZeroFormat::V2
        } else {
            GptqZeroFormat::V1
        };
        assert_eq!(report.config.zero_format, want_format);
        let dir = HfModelDir::open(&dst).expect("open export");
        let q = &dir.config()["quantization_config"];
        assert_eq!(q["quant_method"], "gptq");
        assert_eq!(q["desc_act"], g_idx.is_some());
        assert_eq!(q["sym"], scheme.zero_point == ZeroPoint::None);
        let qweight = dir.tensor(&format!("{BASE}.qweight")).expect("qweight");
        assert_eq!(qweight.shape, [k / 8, n]);
        let norm = dir.tensor("model.norm.weight").expect("dense copied");
        assert_eq!(norm.to_f32().expect("f32"), [1.0, 2.0, 3.0, 4.0]);
        let format = ForeignFormat::of_dir(&dir).expect("parse").expect("gptq");
        let back = format
            .read_linear(&dir, BASE)
            .expect("import")
            .expect("present");
        assert_eq!(back.g_idx, t.g_idx);
        assert_eq!(
            back.dequantize().expect("dequantize"),
            t.dequantize().expect("dequantize"),
            "case {i}"
        );
        let _ = std::fs::remove_dir_all(&src);
        let _ = std::fs::remove_dir_all(&dst);
    }
}

#[test]
fn export_refuses_non_integer_formats() {
    let t = quantize_rtn(
        &matrix(8, 64),
        8,
        64,
        QuantScheme::mxfp4(),
        &RtnOptions::default(),
    )
    .expect("rtn");
    let src = temp_dir("mxfp4");
    marlin_checkpoint(&src, &t);
    let err = export_gptq_dir(&src, &src.join("out")).expect_err("mxfp4 has no GPTQ form");
    assert!(err.to_string().contains("GPTQ"), "{err}");
    let _ = std::fs::remove_dir_all(&src);
}

#[test]
fn corrupt_tensors_are_errors_not_panics() {
    // qweight shape that does not match scales: copy a fixture, swap a tensor.
    let dir = temp_dir("corrupt");
    let src = HfModelDir::open(fixture("awq_g32")).expect("open");
    let mut w = SafetensorsWriter::new();
    for name in src.tensor_names() {
        let v = src.tensor(name).expect("tensor");
        if name.ends_with(".qweight") {
            // Drop the last row.
            let shape = [v.shape[0] - 1, v.shape[1]];
            let bytes = v.data[..v.data.len() - 4 * v.shape[1]].to_vec();
            w.add_bytes(name, v.dtype, &shape, bytes).expect("add");
        } else {
            w.add_bytes(name, v.dtype, v.shape, v.data.to_vec())
                .expect("add");
        }
    }
    w.write(&dir.join("model.safetensors")).expect("write");
    std::fs::copy(
        fixture("awq_g32").join("config.json"),
        dir.join("config.json"),
    )
    .expect("copy");
    let d = HfModelDir::open(&dir).expect("open");
    let format = ForeignFormat::of_dir(&d).expect("parse").expect("awq");
    assert!(format.read_linear(&d, BASE).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}
