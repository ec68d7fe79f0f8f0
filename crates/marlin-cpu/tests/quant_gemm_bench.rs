//! The CPU GEMM benchmark (what `marlin bench gemm --device cpu` prints), as
//! an ignored test:
//!
//! `cargo test --release -p marlin-cpu --test quant_gemm_bench -- --ignored --nocapture`
//!
//! Filters (comma separated): `MARLIN_BENCH_SHAPES=4096x4096` (K x N),
//! `MARLIN_BENCH_MS=1,128`, `MARLIN_BENCH_FORMATS=int4,mxfp4,nvfp4,int8,fp8,int3,int2`;
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
        cfg.formats = f
            .iter()
            .filter_map(|n| BenchFormat::from_short_name(n))
            .collect();
    }
    if std::env::var("MARLIN_BENCH_DENSE").is_ok_and(|v| v == "0") {
        cfg.dense_baseline = false;
    }
    let report = run_gemm_bench(&cfg).expect("benchmark");
    assert!(!report.rows.is_empty());
    println!("{report}");
}

/// CPU seconds (user + system) of this process, from /proc (10 ms ticks).
fn process_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |s| s.1);
    // Fields 14 and 15 (utime, stime) are the 12th and 13th after the
    // command name.
    let f: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

/// Single-threaded CPU time per call of the M = 128 products (INT4 g128,
/// MXFP4, dense f32): a contention-proof view of kernel efficiency for
/// tuning, since wall time on a shared machine is noisy.
/// `MATMUL_NUM_THREADS=1 cargo test --release -p marlin-cpu --test quant_gemm_bench -- --ignored --nocapture --test-threads=1 cpu_time`
/// (one test at a time: the CPU time is the whole process's).
#[test]
#[ignore = "tuning aid: run with --release -- --ignored --nocapture"]
fn cpu_time_m128() {
    use marlin_cpu::bench::random_quant_tensor;
    use marlin_cpu::dense::DenseWeight;
    use marlin_cpu::quant_gemm::PreparedQuant;
    let (k, n, m, iters) = (4096, 2048, 128, 24);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("pool");
    let x: Vec<f32> = (0..m * k)
        .map(|i| ((i * 7919) % 2001) as f32 / 1000.0 - 1.0)
        .collect();
    let mut y = vec![0f32; m * n];
    let flops = 2.0 * (m * n * k) as f64;
    for fmt in [
        BenchFormat::Int4G128,
        BenchFormat::Mxfp4,
        BenchFormat::Fp8PerChannel,
    ] {
        let t = random_quant_tensor(fmt.scheme(), n, k, 7).expect("tensor");
        let p = PreparedQuant::new(&t).expect("prepare");
        pool.install(|| {
            p.matmul(&x, m, &mut y).expect("warm-up");
            let c0 = process_cpu_seconds();
            for _ in 0..iters {
                p.matmul(std::hint::black_box(&x), m, &mut y)
                    .expect("matmul");
            }
            let s = (process_cpu_seconds() - c0) / iters as f64;
            println!(
                "{:<10} cpu {:.1} ms/call, {:.1} GFLOP/s per core",
                fmt.name(),
                s * 1e3,
                flops / s / 1e9
            );
        });
    }
    let w: Vec<f32> = (0..n * k)
        .map(|i| ((i * 31) % 97) as f32 / 97.0 - 0.5)
        .collect();
    let d = DenseWeight::new(n, k, w).expect("dense");
    d.matmul(&x, m, &mut y).expect("warm-up");
    let c0 = process_cpu_seconds();
    for _ in 0..iters {
        d.matmul(std::hint::black_box(&x), m, &mut y)
            .expect("matmul");
    }
    let s = (process_cpu_seconds() - c0) / iters as f64;
    println!(
        "dense f32  cpu {:.1} ms/call, {:.1} GFLOP/s (MATMUL_NUM_THREADS threads)",
        s * 1e3,
        flops / s / 1e9
    );
}

/// Single-threaded CPU time of the decode kernel (m = 1) on weights that
/// stay in cache (512 x 4096: L2 for 4-bit formats): its compute speed,
/// which must stay well above the memory bandwidth for the m = 1 product
/// to be memory-bound. Every SIMD instruction set.
#[test]
#[ignore = "tuning aid: run with --release -- --ignored --nocapture"]
fn cpu_time_decode_in_cache() {
    use marlin_cpu::bench::random_quant_tensor;
    use marlin_cpu::quant_gemm::{KernelIsa, PreparedQuant};
    let (k, n, iters) = (4096, 512, 4000);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("pool");
    let x: Vec<f32> = (0..k)
        .map(|i| ((i * 7919) % 2001) as f32 / 1000.0 - 1.0)
        .collect();
    let mut y = vec![0f32; n];
    // Every SIMD instruction set, so that a new kernel and the one it
    // replaces are timed in the same run.
    let isas: Vec<KernelIsa> = KernelIsa::available()
        .into_iter()
        .filter(|&i| i != KernelIsa::Scalar)
        .collect();
    for fmt in [
        BenchFormat::Int4G128,
        BenchFormat::Mxfp4,
        BenchFormat::Int8PerChannel,
        BenchFormat::Fp8PerChannel,
        BenchFormat::Int3G128,
        BenchFormat::Int2G128,
    ] {
        let t = random_quant_tensor(fmt.scheme(), n, k, 7).expect("tensor");
        for &isa in &isas {
            let p = PreparedQuant::with_isa(&t, isa).expect("prepare");
            pool.install(|| {
                let c0 = process_cpu_seconds();
                let mut best = f64::MAX;
                for _ in 0..iters {
                    let t0 = std::time::Instant::now();
                    p.matmul(std::hint::black_box(&x), 1, &mut y)
                        .expect("matmul");
                    best = best.min(t0.elapsed().as_secs_f64());
                }
                let s = (process_cpu_seconds() - c0) / iters as f64;
                // The best wall time: a call that ran without being
                // preempted (robust on a loaded machine).
                println!(
                    "{:<16} {:<28} m=1 in cache: cpu {:.1} us/call, best {:.1} us = {:.1} GB/s of weights per core",
                    fmt.name(),
                    p.kernel_name(),
                    s * 1e6,
                    best * 1e6,
                    p.stream_bytes() as f64 / best / 1e9
                );
            });
        }
    }
}

/// Issue rates of the instructions the int-dot kernels are built from, in
/// CPU time per ymm instruction (8 independent chains, so throughput, not
/// latency): the ceiling of the M = 128 kernel against f32 FMA (sgemm).
/// `cargo test --release -p marlin-cpu --test quant_gemm_bench -- --ignored --nocapture instruction_rates`
#[cfg(target_arch = "x86_64")]
#[test]
#[ignore = "tuning aid: run with --release -- --ignored --nocapture"]
fn instruction_rates() {
    use std::arch::x86_64::*;
    const N: usize = 400_000_000;

    #[target_feature(enable = "avx2,fma")]
    unsafe fn fma() -> __m256i {
        let mut f = [_mm256_set1_ps(1.0); 10];
        let c = _mm256_set1_ps(0.999);
        for _ in 0..N / 10 {
            for v in f.iter_mut() {
                *v = _mm256_fmadd_ps(*v, c, c);
            }
        }
        _mm256_castps_si256(
            f.iter()
                .fold(_mm256_setzero_ps(), |a, &v| _mm256_add_ps(a, v)),
        )
    }
    #[target_feature(enable = "avx2,fma")]
    unsafe fn maddubs() -> __m256i {
        let mut a = [_mm256_set1_epi8(1); 8];
        let w = _mm256_set1_epi8(3);
        for _ in 0..N / 8 {
            for v in a.iter_mut() {
                *v = _mm256_maddubs_epi16(w, *v);
            }
        }
        a.iter()
            .fold(_mm256_setzero_si256(), |s, &v| _mm256_xor_si256(s, v))
    }
    /// The int-dot inner loop: maddubs, i16 add per product vector, one
    /// madd(.., 1) widening per 8 (depth 8) and an i32 add.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn maddubs_add_madd() -> __m256i {
        let mut acc = [_mm256_setzero_si256(); 4];
        let w = _mm256_set1_epi8(3);
        let ones = _mm256_set1_epi16(1);
        // Activations as memory operands, from L1, as in the kernels.
        let x: Vec<__m256i> = (0..64).map(|i| _mm256_set1_epi8(i as i8)).collect();
        let xp = std::hint::black_box(x.as_ptr());
        for it in 0..N / 8 {
            let mut s16 = _mm256_setzero_si256();
            for j in 0..8 {
                let xv = _mm256_loadu_si256(xp.add((it * 8 + j) & 63));
                s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(w, xv));
            }
            acc[it & 3] = _mm256_add_epi32(acc[it & 3], _mm256_madd_epi16(s16, ones));
        }
        acc.iter()
            .fold(_mm256_setzero_si256(), |s, &v| _mm256_xor_si256(s, v))
    }
    if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
        return;
    }
    let time = |name: &str, macs: f64, f: unsafe fn() -> __m256i| {
        let c0 = process_cpu_seconds();
        // SAFETY: each caller detected the features `f` needs (AVX2 and
        // FMA above; AVX-512 ones at the calls).
        std::hint::black_box(unsafe { f() });
        let ns = (process_cpu_seconds() - c0) / N as f64 * 1e9;
        println!(
            "{name:<34} {ns:.3} ns per instruction, {:.1} G multiply-adds/s",
            macs / ns
        );
    };
    time("vfmadd231ps ymm", 8.0, fma);
    time("vpmaddubsw ymm", 32.0, maddubs);
    time("vpmaddubsw + vpaddw (+ madd per 8)", 32.0, maddubs_add_madd);

    /// 512-bit FMA (the dense baseline's kernel on AVX-512 machines).
    #[target_feature(enable = "avx512f")]
    unsafe fn fma512() -> __m256i {
        let mut f = [_mm512_set1_ps(1.0); 10];
        let c = _mm512_set1_ps(1e-3);
        for _ in 0..N / 10 {
            // Opaque multiplier: the chains cannot be folded.
            let b = std::hint::black_box(_mm512_set1_ps(0.999));
            for v in f.iter_mut() {
                *v = _mm512_fmadd_ps(*v, b, c);
            }
        }
        let s = f
            .iter()
            .fold(_mm512_setzero_ps(), |a, &v| _mm512_add_ps(a, v));
        _mm256_castps_si256(_mm512_castps512_ps256(s))
    }
    /// 512-bit `vpdpbusd` (the VNNI kernels' dot product).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn dpbusd512() -> __m256i {
        let mut a = [_mm512_setzero_si512(); 10];
        let w = _mm512_set1_epi8(3);
        let x = _mm512_set1_epi8(-2);
        for _ in 0..N / 10 {
            for v in a.iter_mut() {
                *v = _mm512_dpbusd_epi32(*v, w, x);
            }
        }
        let s = a
            .iter()
            .fold(_mm512_setzero_si512(), |s, &v| _mm512_xor_si512(s, v));
        _mm512_castsi512_si256(s)
    }
    if is_x86_feature_detected!("avx512f") {
        time("vfmadd231ps zmm", 16.0, fma512);
    }
    if is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vnni") {
        time("vpdpbusd zmm", 64.0, dpbusd512);
    }
}
