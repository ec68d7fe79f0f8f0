//! A file cache of calibration statistics (`--calib-cache DIR`), so runs
//! that differ only in format or method (a quantization table) share one
//! calibration pass per model instead of redoing it.
//!
//! The statistics depend only on the base model, the calibration windows,
//! the layers of the pass and the rows kept for AWQ: the file name is a
//! hash of exactly those (the input's path, size and mtime standing for
//! the model), so a cached file is used only where a fresh pass would
//! compute the same values. Files are written through `<file>.partial` +
//! rename; one that cannot be read back is ignored (recomputed).

use super::calib::{CalibrationSet, InputSite, SiteStats};
use crate::{Hessian, QuantizeError};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"MCALIB01";

/// The statistics of one calibration pass, by (layer, input site).
pub type PassStats = BTreeMap<(usize, InputSite), SiteStats>;

/// 64-bit FNV-1a (stable across builds and platforms, unlike `DefaultHasher`).
fn fnv1a(state: &mut u64, bytes: &[u8]) {
    for &b in bytes {
        *state ^= u64::from(b);
        *state = state.wrapping_mul(0x0000_0100_0000_01B3);
    }
}

/// The cache file of one calibration pass.
pub fn cache_file(
    dir: &Path,
    input: &Path,
    calib: &CalibrationSet,
    layers: std::ops::Range<usize>,
    awq_rows: usize,
) -> Result<PathBuf, QuantizeError> {
    let meta = std::fs::metadata(input).map_err(|source| QuantizeError::File {
        path: input.to_path_buf(),
        source,
    })?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let mut h = 0xCBF2_9CE4_8422_2325u64;
    fnv1a(&mut h, input.display().to_string().as_bytes());
    fnv1a(&mut h, &meta.len().to_le_bytes());
    fnv1a(&mut h, &mtime.to_le_bytes());
    for w in &calib.windows {
        fnv1a(&mut h, &(w.len() as u64).to_le_bytes());
        for t in w {
            fnv1a(&mut h, &t.to_le_bytes());
        }
    }
    for v in [layers.start, layers.end, awq_rows] {
        fnv1a(&mut h, &(v as u64).to_le_bytes());
    }
    Ok(dir.join(format!(
        "calib-{h:016x}-layers{}-{}.bin",
        layers.start, layers.end
    )))
}

fn site_code(s: InputSite) -> u8 {
    match s {
        InputSite::AttnIn => 0,
        InputSite::AttnOut => 1,
        InputSite::FfnIn => 2,
        InputSite::FfnAct => 3,
    }
}

fn file_err(path: &Path) -> impl Fn(std::io::Error) -> QuantizeError + '_ {
    move |source| QuantizeError::File {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `stats` to `path` atomically.
pub fn save(path: &Path, stats: &PassStats) -> Result<(), QuantizeError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(file_err(dir))?;
    }
    let partial = path.with_extension("partial");
    let file = std::fs::File::create(&partial).map_err(file_err(&partial))?;
    let mut f = std::io::BufWriter::new(file);
    let mut put = |bytes: &[u8]| f.write_all(bytes).map_err(file_err(&partial));
    put(MAGIC)?;
    put(&(stats.len() as u64).to_le_bytes())?;
    for ((layer, site), s) in stats {
        let k = s.hessian.k();
        put(&(*layer as u64).to_le_bytes())?;
        put(&[site_code(*site)])?;
        put(&(k as u64).to_le_bytes())?;
        put(&(s.hessian.n_samples() as u64).to_le_bytes())?;
        for v in s.hessian.as_slice() {
            put(&v.to_le_bytes())?;
        }
        put(&(s.n_rows as u64).to_le_bytes())?;
        for v in &s.rows {
            put(&v.to_le_bytes())?;
        }
    }
    let file = f.into_inner().map_err(|e| QuantizeError::File {
        path: partial.clone(),
        source: e.into_error(),
    })?;
    file.sync_all().map_err(file_err(&partial))?;
    std::fs::rename(&partial, path).map_err(file_err(path))
}

/// Reads a file written by [`save`]; `Ok(None)` when it does not exist.
/// Errors on a truncated or malformed file.
pub fn load(path: &Path) -> Result<Option<PassStats>, QuantizeError> {
    let mut bytes = Vec::new();
    match std::fs::File::open(path) {
        Ok(mut f) => f.read_to_end(&mut bytes).map_err(file_err(path))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(file_err(path)(e)),
    };
    let bad =
        || QuantizeError::BadInput(format!("{}: malformed calibration cache", path.display()));
    let mut pos = 0usize;
    let mut take = |n: usize| -> Result<&[u8], QuantizeError> {
        let end = pos
            .checked_add(n)
            .filter(|&e| e <= bytes.len())
            .ok_or_else(bad)?;
        let s = &bytes[pos..end];
        pos = end;
        Ok(s)
    };
    if take(MAGIC.len())? != MAGIC {
        return Err(bad());
    }
    let u64_of = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
    let to_usize = |v: u64| usize::try_from(v).map_err(|_| bad());
    let entries = to_usize(u64_of(take(8)?))?;
    let mut out = BTreeMap::new();
    for _ in 0..entries {
        let layer = to_usize(u64_of(take(8)?))?;
        let site = match take(1)?[0] {
            0 => InputSite::AttnIn,
            1 => InputSite::AttnOut,
            2 => InputSite::FfnIn,
            3 => InputSite::FfnAct,
            _ => return Err(bad()),
        };
        let k = to_usize(u64_of(take(8)?))?;
        let n_samples = to_usize(u64_of(take(8)?))?;
        let kk = k
            .checked_mul(k)
            .and_then(|v| v.checked_mul(8))
            .ok_or_else(bad)?;
        let h: Vec<f64> = take(kk)?
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect();
        let n_rows = to_usize(u64_of(take(8)?))?;
        let rk = n_rows
            .checked_mul(k)
            .and_then(|v| v.checked_mul(4))
            .ok_or_else(bad)?;
        let rows: Vec<f32> = take(rk)?
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap_or([0; 4])))
            .collect();
        let hessian = Hessian::from_matrix(h, k, n_samples)?;
        out.insert(
            (layer, site),
            SiteStats {
                hessian,
                rows,
                n_rows,
            },
        );
    }
    if pos != bytes.len() {
        return Err(bad());
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let dir = std::env::temp_dir().join(format!("marlin-calib-cache-{}", std::process::id()));
        let path = dir.join("c.bin");
        let mut stats = BTreeMap::new();
        let h = Hessian::from_matrix(vec![2.0, 0.5, 0.5, 1.0], 2, 7).unwrap();
        stats.insert(
            (3, InputSite::FfnAct),
            SiteStats {
                hessian: h.clone(),
                rows: vec![1.0, -2.0],
                n_rows: 1,
            },
        );
        assert!(load(&path).unwrap().is_none());
        save(&path, &stats).unwrap();
        let back = load(&path).unwrap().unwrap();
        let s = &back[&(3, InputSite::FfnAct)];
        assert_eq!((&s.hessian, &s.rows, s.n_rows), (&h, &vec![1.0, -2.0], 1));
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        assert!(load(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
