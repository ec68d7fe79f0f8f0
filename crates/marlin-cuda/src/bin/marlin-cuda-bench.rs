//! `marlin-cuda-bench [--quick] [--sweep] [--device N]`: the INT4 GEMM
//! benchmark table (see `marlin_cuda::bench`). Exit status 1 when CUDA is not
//! available or a call fails.

use marlin_cuda::bench::{bench_gemm, GemmBenchConfig};

fn main() {
    let mut cfg = GemmBenchConfig::default();
    let mut ordinal = 0usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => {
                cfg.shapes.truncate(1);
                cfg.ms = vec![1, 16, 256];
            }
            "--sweep" => {
                cfg.split_sweep = vec![1, 2, 4, 8, 16, 32];
                cfg.ms = vec![1, 4, 16, 64, 256];
            }
            "--device" => match args.next().and_then(|s| s.parse().ok()) {
                Some(n) => ordinal = n,
                None => {
                    eprintln!("--device needs a number");
                    std::process::exit(2);
                }
            },
            other => {
                eprintln!("unknown argument {other}; usage: marlin-cuda-bench [--quick] [--sweep] [--device N]");
                std::process::exit(2);
            }
        }
    }
    match bench_gemm(ordinal, &cfg) {
        Ok(report) => print!("{report}"),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
