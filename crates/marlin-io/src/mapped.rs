//! Read-only file bytes: memory-mapped from disk, or owned (tests, fuzzing).

use std::fs::File;
use std::path::Path;

use memmap2::Mmap;

use crate::error::{IoError, Result};

pub(crate) enum FileBytes {
    Mmap(Mmap),
    Owned(Vec<u8>),
}

impl FileBytes {
    /// Maps `path` read-only.
    pub(crate) fn map(path: &Path) -> Result<Self> {
        let io_err = |source| IoError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        let meta = file.metadata().map_err(io_err)?;
        if !meta.is_file() {
            return Err(io_err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a regular file",
            )));
        }
        let len = meta.len();
        // An empty file cannot be mapped on every platform; the parsers
        // reject it as too short anyway.
        if len == 0 {
            return Ok(FileBytes::Owned(Vec::new()));
        }
        // SAFETY: the map is read-only. Like every mmap-based model loader
        // we rely on the file not being truncated or rewritten while it is
        // open; that is outside what Rust can check.
        let map = unsafe { Mmap::map(&file) }.map_err(io_err)?;
        Ok(FileBytes::Mmap(map))
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            FileBytes::Mmap(m) => m,
            FileBytes::Owned(v) => v,
        }
    }
}

/// Float element encodings that both GGUF and safetensors store.
#[derive(Clone, Copy, Debug)]
pub(crate) enum FloatEncoding {
    F32,
    F16,
    BF16,
}

/// Little-endian floats converted to f32 (the parsers already checked that
/// the byte length is a whole number of elements).
pub(crate) fn floats_to_f32(bytes: &[u8], encoding: FloatEncoding) -> Vec<f32> {
    match encoding {
        FloatEncoding::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        FloatEncoding::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        FloatEncoding::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
    }
}
