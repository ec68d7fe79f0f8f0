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

    /// Tells the kernel it may drop the resident pages of `range` once a
    /// copy of them has been taken, so loading a model peaks at one copy of
    /// its weights instead of two (the map's pages plus the copy).
    /// Best effort: failure only means the pages stay resident.
    pub(crate) fn release(&self, range: std::ops::Range<usize>) {
        #[cfg(unix)]
        if let FileBytes::Mmap(m) = self {
            // SAFETY: the map is a read-only, private, file-backed mapping:
            // after MADV_DONTNEED a later access re-reads the same bytes from
            // the file, so every outstanding `&[u8]` into it stays valid and
            // unchanged (the same assumption as mapping at all: the file is
            // not rewritten while open).
            let _ = unsafe {
                m.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    range.start,
                    range.len(),
                )
            };
        }
        #[cfg(not(unix))]
        let _ = range;
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
