//! Shared helpers of the reference tests.

#![allow(dead_code)]

use std::path::PathBuf;

pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
}

/// `$MARLIN_MODELS`, else `<repo>/models`.
pub fn models_dir() -> PathBuf {
    match std::env::var_os("MARLIN_MODELS") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models"),
    }
}

/// The model file, or `None` (with a message) when it is absent.
pub fn model_or_skip(file: &str) -> Option<PathBuf> {
    let p = models_dir().join(file);
    if p.exists() {
        Some(p)
    } else {
        eprintln!(
            "SKIPPED: {} not found (set MARLIN_MODELS or fetch the demo models)",
            p.display()
        );
        None
    }
}

pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in x.iter().enumerate() {
        if *v > x[best] {
            best = i;
        }
    }
    best
}
