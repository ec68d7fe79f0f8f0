//! The CPU GEMM benchmark (what `marlin bench gemm --device cpu` prints), as
//! an ignored test:
//!
//! `cargo test --release -p marlin-cpu --test quant_gemm_bench -- --ignored --nocapture`
//!
//! Filters (comma separated): `MARLIN_BENCH_SHAPES=4096x4096` (K x N),
//! `MARLIN_BENCH_MS=1,128`, `MARLIN_BENCH_FORMATS=int4,mxfp4,nvfp4,int8,fp8`;
//! `MARLIN_BENCH_DENSE=0` skips the dense f32 baseline.

use marlin_cpu::bench::{run_gemm_bench, BenchFormat, GemmBenchConfig};

fn env_list(name: &str) -> Option<Vec<String>> {
    let v = std::env::var(name).ok()?;
    Some(v.split(',').map(|s| s.trim().to_lowercase()).collect())
}

#[test]
#[ignore = "benchmark: run with --release -- --ignored --nocapture"]
fn gemm_bench() {
    let mut cfg = GemmBenchConfig::default();
    if let Ok(shapes) = std::env::var("MARLIN_BENCH_SHAPES") {
        cfg.shapes = shapes
            .split(',')
            .filter_map(|s| s.split_once('x'))
            .filter_map(|(k, n)| Some((k.trim().parse().ok()?, n.trim().parse().ok()?)))
            .collect();
    }
    if let Some(ms) = env_list("MARLIN_BENCH_MS") {
        cfg.ms = ms.iter().filter_map(|m| m.parse().ok()).collect();
    }
    if let Some(f) = env_list("MARLIN_BENCH_FORMATS") {
        let all = [
            ("int4", BenchFormat::Int4G128),
            ("mxfp4", BenchFormat::Mxfp4),
            ("nvfp4", BenchFormat::Nvfp4),
            ("int8", BenchFormat::Int8PerChannel),
            ("fp8", BenchFormat::Fp8PerChannel),
        ];
        cfg.formats = all
            .iter()
            .filter(|(n, _)| f.iter().any(|x| x == n))
            .map(|a| a.1)
            .collect();
    }
    if std::env::var("MARLIN_BENCH_DENSE").is_ok_and(|v| v == "0") {
        cfg.dense_baseline = false;
    }
    let report = run_gemm_bench(&cfg).expect("benchmark");
    assert!(!report.rows.is_empty());
    println!("{report}");
}
