//! `marlin bench`: figures printed beside their peer or limit, measured in
//! the same run.

use crate::ComputeArgs;
use marlin_core::Device;

/// `marlin bench gemm`: `formats` (short names) and `ms` replace the
/// defaults where given.
pub fn gemm(
    compute: &ComputeArgs,
    quick: bool,
    formats: &[String],
    ms: &[usize],
) -> anyhow::Result<()> {
    crate::init_threads(compute.threads)?;
    let ms = batch_sizes(ms)?;
    match compute.device {
        Device::Cpu => {
            let mut cfg = marlin_cpu::bench::GemmBenchConfig::default();
            if quick {
                cfg.shapes.truncate(1);
                cfg.runs = 3;
                cfg.warmup = 1;
            }
            if let Some(f) = cpu_formats(formats)? {
                cfg.formats = f;
            }
            if let Some(ms) = ms {
                cfg.ms = ms;
            }
            let report = marlin_cpu::bench::run_gemm_bench(&cfg)?;
            print!("{report}");
            Ok(())
        }
        Device::Cuda(ordinal) => cuda_gemm(ordinal, quick, formats, ms),
    }
}

/// `--ms`: None when not given; every M at least 1.
fn batch_sizes(ms: &[usize]) -> anyhow::Result<Option<Vec<usize>>> {
    if ms.contains(&0) {
        anyhow::bail!("--ms: batch sizes must be at least 1, got {ms:?}");
    }
    Ok((!ms.is_empty()).then(|| ms.to_vec()))
}

/// `--formats`: each short name through `parse`; None when not given, an
/// error naming the unknown name and the `known` ones.
fn parse_formats<T>(
    names: &[String],
    device: &str,
    known: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> anyhow::Result<Option<Vec<T>>> {
    if names.is_empty() {
        return Ok(None);
    }
    names
        .iter()
        .map(|n| {
            parse(n.trim()).ok_or_else(|| {
                anyhow::anyhow!("--formats: unknown {device} format {n:?} (known: {known})")
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()
        .map(Some)
}

/// `--formats` for the CPU benchmark.
fn cpu_formats(names: &[String]) -> anyhow::Result<Option<Vec<marlin_cpu::bench::BenchFormat>>> {
    use marlin_cpu::bench::BenchFormat;
    let known: Vec<&str> = BenchFormat::ALL.iter().map(|a| a.0).collect();
    parse_formats(
        names,
        "CPU",
        &known.join(", "),
        BenchFormat::from_short_name,
    )
}

/// `--formats` for the CUDA benchmark.
#[cfg(feature = "cuda")]
fn cuda_formats(names: &[String]) -> anyhow::Result<Option<Vec<marlin_cuda::bench::GemmFormat>>> {
    use marlin_cuda::bench::GemmFormat;
    parse_formats(
        names,
        "CUDA",
        "int4, int4zp, int4g32, mxfp4, nvfp4, int8, fp8, fp8b128, int3, int2",
        GemmFormat::parse,
    )
}

#[cfg(feature = "cuda")]
fn cuda_gemm(
    ordinal: usize,
    quick: bool,
    formats: &[String],
    ms: Option<Vec<usize>>,
) -> anyhow::Result<()> {
    let mut cfg = marlin_cuda::bench::GemmBenchConfig::default();
    if quick {
        cfg.shapes.truncate(1);
        cfg.ms = vec![1, 16, 128];
    }
    if let Some(f) = cuda_formats(formats)? {
        cfg.formats = f;
    }
    if let Some(ms) = ms {
        cfg.ms = ms;
    }
    let report = marlin_cuda::bench::bench_gemm(ordinal, &cfg)?;
    print!("{report}");
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn cuda_gemm(
    _ordinal: usize,
    _quick: bool,
    _formats: &[String],
    _ms: Option<Vec<usize>>,
) -> anyhow::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn gemm_bench_lists_parse_or_name_what_is_wrong() {
        use marlin_cpu::bench::BenchFormat;
        assert_eq!(batch_sizes(&[]).unwrap(), None);
        assert_eq!(batch_sizes(&[1, 16]).unwrap(), Some(vec![1, 16]));
        assert!(batch_sizes(&[1, 0]).is_err());
        assert_eq!(cpu_formats(&[]).unwrap(), None);
        assert_eq!(
            cpu_formats(&names(&["int4", "MXFP4"])).unwrap(),
            Some(vec![BenchFormat::Int4G128, BenchFormat::Mxfp4])
        );
        let err = cpu_formats(&names(&["int4", "int9"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("int9") && err.contains("mxfp4"), "{err}");
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_gemm_bench_formats_parse() {
        use marlin_cuda::bench::GemmFormat;
        assert_eq!(cuda_formats(&[]).unwrap(), None);
        assert_eq!(
            cuda_formats(&names(&["int4zp", " int4g32"])).unwrap(),
            Some(vec![GemmFormat::Int4Zp128, GemmFormat::Int4G32])
        );
        let err = cuda_formats(&names(&["int4", "fp5"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("fp5") && err.contains("int4zp"), "{err}");
    }
}
