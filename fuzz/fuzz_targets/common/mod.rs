//! Helpers shared by the fuzz targets that need several inputs (a model
//! directory's files, a template and its messages) out of one byte string.

// Each target uses a subset of the helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// Separates the sections of one fuzz input. Never valid UTF-8, so it cannot
/// occur inside a JSON or template section of a seed; libFuzzer's comparison
/// tracing learns it quickly for mutated inputs.
pub const SECTION_SEPARATOR: &[u8] = b"\xff\xfe\xfd\xfc";

/// The input cut at each [`SECTION_SEPARATOR`]; missing trailing sections are
/// empty, so every input yields exactly `count` sections.
pub fn sections(data: &[u8], count: usize) -> Vec<&[u8]> {
    let mut out = Vec::with_capacity(count);
    let mut rest = data;
    while out.len() + 1 < count {
        match rest
            .windows(SECTION_SEPARATOR.len())
            .position(|w| w == SECTION_SEPARATOR)
        {
            Some(at) => {
                out.push(&rest[..at]);
                rest = &rest[at + SECTION_SEPARATOR.len()..];
            }
            None => break,
        }
    }
    out.push(rest);
    out.resize(count, &[]);
    out
}

/// A directory private to this fuzzing process (libFuzzer's `-fork`/`-jobs`
/// workers each get their own), emptied of the files listed before reuse.
pub fn scratch_dir(target: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("marlin-fuzz-{target}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch directory for the fuzz target");
    dir
}

/// Writes `bytes` to `dir/name`, or removes the file when `bytes` is `None`
/// (so a previous input's file does not leak into this one).
pub fn put_file(dir: &Path, name: &str, bytes: Option<&[u8]>) {
    let path = dir.join(name);
    match bytes {
        Some(bytes) => std::fs::write(&path, bytes).expect("write a scratch file"),
        None => {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Lets panics raised inside the `tokenizers` crate unwind instead of
/// aborting at once (libfuzzer-sys's panic hook aborts on every panic).
/// That crate `expect`s on some malformed inputs, and marlin-io catches those
/// panics and returns an error; a panic anywhere else still aborts here, and
/// one from `tokenizers` that marlin-io fails to catch aborts when it reaches
/// the fuzz harness. Call from `fuzz_target!(init: ...)`.
pub fn let_tokenizers_panics_unwind() {
    let abort_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let in_tokenizers = info
            .location()
            .is_some_and(|l| l.file().contains("/tokenizers-"));
        if in_tokenizers {
            // Said once per panic, so a crash that follows (the panic was
            // not caught) shows where it started.
            eprintln!("tokenizers panicked (unwinding to marlin-io's guard): {info}");
        } else {
            abort_hook(info);
        }
    }));
}
