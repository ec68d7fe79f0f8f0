//! Bit-exactness of the reference dequantization against gguf-py, on the
//! fixtures made by `scripts/fixtures/make_ggml_fixtures.py` (format
//! described there): real rows of the demo models and random blocks of
//! every type.

use super::{dequantize_row, GgmlTensor, GgmlType};
use std::path::PathBuf;

struct Fixture {
    name: String,
    tensor: GgmlTensor,
    want: Vec<f32>,
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn load(path: &std::path::Path) -> Fixture {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[0..4], b"MGF1", "{path:?}");
    let ty = GgmlType::from_id(u32_at(&b, 4)).unwrap();
    let (rows, cols, n_bytes) = (
        u32_at(&b, 8) as usize,
        u32_at(&b, 12) as usize,
        u32_at(&b, 16) as usize,
    );
    let data = b[20..20 + n_bytes].to_vec();
    let want: Vec<f32> = b[20 + n_bytes..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(want.len(), rows * cols, "{path:?}");
    Fixture {
        name: path.file_name().unwrap().to_string_lossy().into_owned(),
        tensor: GgmlTensor::new(ty, rows, cols, data).unwrap(),
        want,
    }
}

fn fixtures() -> Vec<Fixture> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ggml");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "bin"))
        .collect();
    paths.sort();
    paths.iter().map(|p| load(p)).collect()
}

#[test]
fn dequantize_matches_gguf_py_bit_for_bit() {
    let all = fixtures();
    let mut seen = std::collections::HashSet::new();
    for f in &all {
        let got = f.tensor.dequantize().unwrap();
        for (i, (g, w)) in got.iter().zip(&f.want).enumerate() {
            assert_eq!(
                g.to_bits(),
                w.to_bits(),
                "{}: element {i} (row {}, col {}): got {g:e}, gguf-py {w:e}",
                f.name,
                i / f.tensor.cols,
                i % f.tensor.cols
            );
        }
        seen.insert(f.tensor.ty);
    }
    use GgmlType::*;
    for ty in [
        F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2K, Q3K, Q4K, Q5K, Q6K, Q8K, Mxfp4,
    ] {
        assert!(seen.contains(&ty), "no fixture for {}", ty.name());
    }
    assert!(all.iter().filter(|f| f.name.starts_with("real_")).count() >= 5);
}

#[test]
fn dequantize_row_works_on_unaligned_bytes_and_checks_lengths() {
    for f in fixtures() {
        let t = &f.tensor;
        let rb = t.row_bytes().unwrap();
        // Copy the last row to an odd address.
        let mut shifted = vec![0u8; rb + 1];
        shifted[1..].copy_from_slice(t.row(t.rows - 1).unwrap());
        let mut out = vec![0f32; t.cols];
        dequantize_row(t.ty, &shifted[1..], &mut out).unwrap();
        let want = &f.want[(t.rows - 1) * t.cols..];
        assert!(
            out.iter()
                .zip(want)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{}",
            f.name
        );
        // One byte short, and a length that is not whole blocks.
        assert!(
            dequantize_row(t.ty, &shifted[2..], &mut out).is_err(),
            "{}",
            f.name
        );
        if t.ty.block_size() > 1 {
            let mut odd = vec![0f32; t.cols - 1];
            assert!(
                dequantize_row(t.ty, &shifted[1..], &mut odd).is_err(),
                "{}",
                f.name
            );
        }
    }
}
