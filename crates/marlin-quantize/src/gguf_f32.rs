//! The dequantized base as an F32 GGUF file.
//!
//! `marlin quantize` dequantizes a GGUF input to f32 and treats that as the
//! base. To compare with llama.cpp's own quantizers *from the same base*,
//! llama.cpp needs that base as a file it reads: [`write_dequantized_gguf`]
//! writes every tensor of a GGUF as F32 (ggml's reference dequantization,
//! the one the pipeline uses) with the names, ggml shapes and metadata of
//! the input (tokenizer, chat template, hyper-parameters), so
//! `llama-quantize OUT.gguf Q4_K_M` quantizes exactly what marlin's
//! quantizers start from. F32 rather than F16: a dequantized Q4_1 / Q4_K
//! value (`d·q + m`, d and m f16) is generally not an f16 value.

use std::io::Write;
use std::path::Path;

use marlin_io::gguf::{GgufBuilder, GgufFile, GgufValue};

use crate::error::QuantizeError;

/// The GGUF metadata key of the file's overall type.
const FILE_TYPE_KEY: &str = "general.file_type";
/// llama.cpp's `LLAMA_FTYPE_ALL_F32`.
const FILE_TYPE_ALL_F32: u32 = 0;
/// ggml's type id of F32 tensors.
const GGML_TYPE_F32: u32 = 0;

/// What [`write_dequantized_gguf`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DequantizedGguf {
    /// Tensors written (all of the input's).
    pub tensors: usize,
    /// Of those, how many were stored in another type and dequantized.
    pub dequantized: usize,
    /// Metadata entries copied (general.file_type set to ALL_F32).
    pub metadata: usize,
    /// Size of the written file.
    pub bytes: u64,
}

/// Writes `input` (a GGUF file) to `output` with every tensor as F32.
///
/// The file is written to `<output>.partial` and renamed when complete, so
/// an interrupted run leaves no file that looks finished. Refuses an
/// existing `output` (so a mistyped `-o` cannot replace the input) and
/// tensor types marlin cannot dequantize, before writing anything.
pub fn write_dequantized_gguf(
    input: &Path,
    output: &Path,
) -> Result<DequantizedGguf, QuantizeError> {
    if output.exists() {
        return Err(QuantizeError::BadInput(format!(
            "{} exists; remove it first",
            output.display()
        )));
    }
    let file = GgufFile::open(input)?;
    // Every tensor's type is checked up front: no half-done work on an
    // unsupported file.
    for info in file.tensors() {
        if info.ggml_type().is_none() {
            return Err(QuantizeError::Unsupported(format!(
                "tensor {} has type {}, which marlin cannot dequantize",
                info.name,
                info.type_name()
            )));
        }
    }

    let mut builder = GgufBuilder::new();
    let mut has_file_type = false;
    for (key, value) in file.metadata() {
        let value = if key == FILE_TYPE_KEY {
            has_file_type = true;
            GgufValue::U32(FILE_TYPE_ALL_F32)
        } else {
            value.clone()
        };
        builder = builder.kv(key.clone(), value);
    }
    if !has_file_type {
        builder = builder.kv(FILE_TYPE_KEY, GgufValue::U32(FILE_TYPE_ALL_F32));
    }
    let metadata = file.metadata().len() + usize::from(!has_file_type);

    let mut dequantized = 0;
    for info in file.tensors() {
        let values = file.ggml_tensor(&info.name)?.dequantize()?;
        if info.type_id != GGML_TYPE_F32 {
            dequantized += 1;
        }
        let mut data = Vec::new();
        data.try_reserve_exact(values.len().checked_mul(4).ok_or_else(|| {
            QuantizeError::Shape(format!("{}: {} values overflow", info.name, values.len()))
        })?)
        .map_err(|e| QuantizeError::Shape(format!("{}: {e}", info.name)))?;
        for v in &values {
            data.extend_from_slice(&v.to_le_bytes());
        }
        let dims: Vec<u64> = info.dims.iter().map(|&d| d as u64).collect();
        builder = builder.tensor(info.name.clone(), &dims, GGML_TYPE_F32, data);
    }

    let bytes = builder.to_bytes();
    drop(builder);
    let mut partial = output.as_os_str().to_owned();
    partial.push(".partial");
    let partial = std::path::PathBuf::from(partial);
    let file_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| QuantizeError::File { path, source }
    };
    {
        let mut f = std::fs::File::create(&partial).map_err(file_err(&partial))?;
        f.write_all(&bytes).map_err(file_err(&partial))?;
        f.sync_all().map_err(file_err(&partial))?;
    }
    std::fs::rename(&partial, output).map_err(file_err(output))?;
    Ok(DequantizedGguf {
        tensors: file.tensors().len(),
        dequantized,
        metadata,
        bytes: bytes.len() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use marlin_io::gguf::GgufArray;

    /// A Q8_0 block: f16 scale then 32 signed codes.
    fn q8_0_block(scale_f16: u16, codes: impl Iterator<Item = i8>) -> Vec<u8> {
        let mut b = scale_f16.to_le_bytes().to_vec();
        b.extend(codes.map(|c| c as u8));
        b
    }

    fn tiny_gguf() -> Vec<u8> {
        // Two rows of 32: Q8_0 with scales 0.5 (0x3800) and 0.25 (0x3400).
        let mut q8 = q8_0_block(0x3800, (0..32).map(|i| i as i8 - 16));
        q8.extend(q8_0_block(0x3400, (0..32).map(|i| 15 - i as i8)));
        let f16: Vec<u8> = [0x3c00u16, 0xc000, 0x3555, 0x0001]
            .iter()
            .flat_map(|h| h.to_le_bytes())
            .collect();
        let f32s: Vec<u8> = [1.5f32, -2.25]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        GgufBuilder::new()
            .kv("general.architecture", GgufValue::String("llama".into()))
            .kv(FILE_TYPE_KEY, GgufValue::U32(7))
            .kv(
                "tokenizer.ggml.tokens",
                GgufValue::Array(GgufArray::String(vec!["<s>".into(), "a".into()])),
            )
            .tensor("blk.0.attn_q.weight", &[32, 2], 8, q8)
            .tensor("blk.0.attn_norm.weight", &[4], 1, f16)
            .tensor("output_norm.weight", &[2], 0, f32s)
            .to_bytes()
    }

    #[test]
    fn every_tensor_becomes_its_f32_dequantization_and_metadata_is_kept() {
        let dir = std::env::temp_dir().join(format!("marlin-gguf-f32-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (src, dst) = (dir.join("in.gguf"), dir.join("out.gguf"));
        std::fs::write(&src, tiny_gguf()).unwrap();
        let _ = std::fs::remove_file(&dst);

        let report = write_dequantized_gguf(&src, &dst).unwrap();
        assert_eq!(
            (report.tensors, report.dequantized, report.metadata),
            (3, 2, 3)
        );
        assert!(!dir.join("out.gguf.partial").exists());

        let (a, b) = (GgufFile::open(&src).unwrap(), GgufFile::open(&dst).unwrap());
        assert_eq!(b.metadata().len(), a.metadata().len());
        for ((ka, va), (kb, vb)) in a.metadata().iter().zip(b.metadata()) {
            assert_eq!(ka, kb);
            if ka == FILE_TYPE_KEY {
                assert_eq!(vb.as_u64(), Some(0));
            } else {
                assert_eq!(va, vb);
            }
        }
        for (ta, tb) in a.tensors().iter().zip(b.tensors()) {
            assert_eq!((&ta.name, &ta.dims), (&tb.name, &tb.dims));
            assert_eq!(tb.type_id, GGML_TYPE_F32);
            let want = a.ggml_tensor(&ta.name).unwrap().dequantize().unwrap();
            let got = b.tensor_f32(&tb.name).unwrap();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{}", ta.name);
        }
        // Spot values: Q8_0 row 0 starts at 0.5 * -16, row 1 at 0.25 * 15.
        let q = b.tensor_f32("blk.0.attn_q.weight").unwrap();
        assert_eq!((q[0], q[32]), (-8.0, 3.75));

        // An existing output is refused, and left alone.
        let before = std::fs::read(&dst).unwrap();
        assert!(matches!(
            write_dequantized_gguf(&src, &dst),
            Err(QuantizeError::BadInput(_))
        ));
        assert_eq!(std::fs::read(&dst).unwrap(), before);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unsupported_tensor_type_fails_before_writing() {
        let dir = std::env::temp_dir().join(format!("marlin-gguf-f32-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (src, dst) = (dir.join("in.gguf"), dir.join("out.gguf"));
        // Type 16 (IQ2_XXS) is a ggml type marlin does not dequantize.
        let bytes = GgufBuilder::new()
            .tensor("w", &[256, 1], 16, vec![0; 66])
            .to_bytes();
        std::fs::write(&src, bytes).unwrap();
        let err = write_dequantized_gguf(&src, &dst).unwrap_err();
        assert!(err.to_string().contains("cannot dequantize"), "{err}");
        assert!(!dst.exists() && !dir.join("out.gguf.partial").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
