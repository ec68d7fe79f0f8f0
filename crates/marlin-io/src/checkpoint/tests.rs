use super::*;
use crate::hf::HfModelDir;
use marlin_quant::{quantize_rtn, QuantScheme, RtnOptions};
use std::collections::BTreeMap;
use std::path::PathBuf;

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("marlin-ckpt-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn weights(n: usize, k: usize, seed: u32) -> Vec<f32> {
    (0..n * k)
        .map(|i| {
            let x = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8;
            (x % 2001) as f32 / 1000.0 - 1.0
        })
        .collect()
}

#[test]
fn quant_tensors_round_trip_through_sharded_directory() {
    let dir = temp_dir("roundtrip");
    let (n, k) = (17, 64);
    let mut act_order = RtnOptions::min_max();
    act_order.g_idx = Some((0..k as u32).map(|c| (c * 7 % k as u32) / 32).collect());
    let cases = [
        ("a", QuantScheme::int4_asym(32), RtnOptions::min_max()),
        ("b", QuantScheme::int4_asym(32), act_order),
        ("c", QuantScheme::int3_asym(64), RtnOptions::mse()),
        ("d", QuantScheme::int2_asym(32), RtnOptions::min_max()),
        ("e", QuantScheme::int8_per_channel(), RtnOptions::min_max()),
        ("f", QuantScheme::mxfp4(), RtnOptions::min_max()),
        ("g", QuantScheme::nvfp4(), RtnOptions::min_max()),
        (
            "h",
            QuantScheme::fp8_e4m3_per_channel(),
            RtnOptions::min_max(),
        ),
    ];
    let mut weight_map = BTreeMap::new();
    let mut originals = Vec::new();
    for (i, (name, scheme, opts)) in cases.iter().enumerate() {
        let t = quantize_rtn(&weights(n, k, i as u32), n, k, *scheme, opts).unwrap();
        let base = format!("model.layers.{i}.{name}");
        // One shard per tensor: the reader must find each scheme in its shard.
        let shard = format!("model-{i:05}.safetensors");
        let mut w = SafetensorsWriter::new();
        w.add_quant(&base, &t).unwrap();
        for tensor in w.tensor_names() {
            weight_map.insert(tensor.to_string(), shard.clone());
        }
        w.write(&dir.join(&shard)).unwrap();
        originals.push((base, t));
    }
    write_index(&dir, &weight_map, 0).unwrap();
    write_json_atomic(
        &dir.join("config.json"),
        &serde_json::json!({"model_type": "llama"}),
    )
    .unwrap();
    let hf = HfModelDir::open(&dir).unwrap();
    for (base, t) in &originals {
        let back = read_quant_tensor(&hf, base).unwrap().unwrap();
        assert_eq!(&back, t, "{base}");
    }
    assert!(read_quant_tensor(&hf, "model.layers.0.missing")
        .unwrap()
        .is_none());
    assert!(!dir.join("model-00000.safetensors.partial").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn corrupt_metadata_and_shapes_are_errors() {
    let dir = temp_dir("corrupt");
    let (n, k) = (4, 32);
    let t = quantize_rtn(
        &weights(n, k, 3),
        n,
        k,
        QuantScheme::int4_asym(32),
        &RtnOptions::min_max(),
    )
    .unwrap();
    // Scheme metadata claiming another K.
    let mut w = SafetensorsWriter::new();
    w.add_quant("x", &t).unwrap();
    w.metadata(
        format!("{SCHEME_METADATA_PREFIX}x"),
        r#"{"element":"int","bits":4,"signed":false,"granularity":"group","group_size":32,"scale_dtype":"f16","zero_point":"int","global_scale":false,"rows":4,"cols":64}"#,
    );
    // No metadata at all.
    let codes_only = QuantTensorNames::new("y").codes;
    w.add_bytes(
        &codes_only,
        crate::safetensors::Dtype::U8,
        &[4, 16],
        vec![0; 64],
    )
    .unwrap();
    // Garbage JSON.
    w.add_bytes("z.qcodes", crate::safetensors::Dtype::U8, &[1], vec![0])
        .unwrap();
    w.metadata(format!("{SCHEME_METADATA_PREFIX}z"), "{not json");
    w.write(&dir.join("model.safetensors")).unwrap();
    write_json_atomic(&dir.join("config.json"), &serde_json::json!({})).unwrap();
    let hf = HfModelDir::open(&dir).unwrap();
    for base in ["x", "y", "z"] {
        assert!(read_quant_tensor(&hf, base).is_err(), "{base}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn writer_rejects_mismatched_bytes_and_duplicates() {
    let mut w = SafetensorsWriter::new();
    assert!(w.add_f32("a", &[2, 2], &[1.0; 3]).is_err());
    w.add_f32("a", &[2], &[1.0; 2]).unwrap();
    assert!(w.add_f32("a", &[2], &[1.0; 2]).is_err());
}
