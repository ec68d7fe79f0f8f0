//! `marlin bench`: figures printed beside their peer or limit, measured in
//! the same run.

use crate::ComputeArgs;
use marlin_core::Device;

pub fn gemm(compute: &ComputeArgs, quick: bool) -> anyhow::Result<()> {
    crate::init_threads(compute.threads)?;
    match compute.device {
        Device::Cpu => {
            let mut cfg = marlin_cpu::bench::GemmBenchConfig::default();
            if quick {
                cfg.shapes.truncate(1);
                cfg.runs = 3;
                cfg.warmup = 1;
            }
            let report = marlin_cpu::bench::run_gemm_bench(&cfg)?;
            print!("{report}");
            Ok(())
        }
        Device::Cuda(ordinal) => cuda_gemm(ordinal, quick),
    }
}

#[cfg(feature = "cuda")]
fn cuda_gemm(ordinal: usize, quick: bool) -> anyhow::Result<()> {
    let mut cfg = marlin_cuda::bench::GemmBenchConfig::default();
    if quick {
        cfg.shapes.truncate(1);
        cfg.ms = vec![1, 16, 128];
    }
    let report = marlin_cuda::bench::bench_gemm(ordinal, &cfg)?;
    print!("{report}");
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn cuda_gemm(_ordinal: usize, _quick: bool) -> anyhow::Result<()> {
    anyhow::bail!("--device cuda: this marlin was built without the `cuda` feature (cargo build --release --features cuda)")
}

/// llama-bench's pp/tg: prompt processing of `pp` tokens into an empty cache,
/// and decoding `tg` tokens one at a time from an empty cache.
pub fn model(
    path: &std::path::Path,
    pp: usize,
    tg: usize,
    reps: usize,
    compute: &ComputeArgs,
) -> anyhow::Result<()> {
    crate::init_threads(compute.threads)?;
    if pp == 0 || tg == 0 || reps == 0 {
        anyhow::bail!("--pp, --tg and --reps must be at least 1");
    }
    let loaded = crate::session::load_on(path, compute.device)?;
    let model = &loaded.model;
    let vocab = model.config().vocab_size as u64;
    if vocab == 0 {
        anyhow::bail!("{}: the model has an empty vocabulary", path.display());
    }
    // Deterministic pseudo-random tokens (never a constant prompt).
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next_token = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % vocab) as u32
    };
    let prompt: Vec<u32> = (0..pp).map(|_| next_token()).collect();
    let gen: Vec<u32> = (0..tg).map(|_| next_token()).collect();
    let mut seq = model.new_sequence(pp.max(tg) + 1)?;
    // Warm-up: page in the weights, size the scratch buffers (on the GPU:
    // compile the kernels, capture the decode step's CUDA graph).
    seq.forward(&prompt[..pp.min(16)])?;
    for &tok in gen.iter().take(2) {
        seq.forward(&[tok])?;
    }
    let (mut pp_times, mut tg_times) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        seq.clear();
        let t = std::time::Instant::now();
        seq.forward(&prompt)?;
        pp_times.push(t.elapsed().as_secs_f64());
        seq.clear();
        let t = std::time::Instant::now();
        for &tok in &gen {
            seq.forward(&[tok])?;
        }
        tg_times.push(t.elapsed().as_secs_f64());
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (pp_s, tg_s) = (median(&mut pp_times), median(&mut tg_times));
    let threads = rayon::current_num_threads();
    // The CPU column says threads; a GPU run names its device.
    let (unit_name, unit) = match compute.device {
        Device::Cpu => ("threads", threads.to_string()),
        Device::Cuda(n) => ("device", format!("cuda:{n}")),
    };
    println!("model: {} ({})", path.display(), model.config().arch);
    println!(
        "{:<8} {unit_name:>8} {:>12} {:>10}",
        "test", "tok/s", "ms/tok"
    );
    println!(
        "{:<8} {unit:>8} {:>12.1} {:>10.3}",
        format!("pp{pp}"),
        pp as f64 / pp_s,
        pp_s * 1e3 / pp as f64
    );
    println!(
        "{:<8} {unit:>8} {:>12.1} {:>10.3}",
        format!("tg{tg}"),
        tg as f64 / tg_s,
        tg_s * 1e3 / tg as f64
    );
    Ok(())
}
