//! `marlin-cuda-bench [--quick] [--sweep] [--split-list 1,2,3] [--stream-k] [--sk-warps 8,16,32] [--shape NxK[,NxK..]]
//! [--ms 1,16] [--formats int4,mxfp4,...] [--no-ctx] [--l2-warm] [--delay-cycles C] [--dec-shapes 4x1x4,4x2x2]
//! [--ws-only] [--wgmma-only] [--tile-read] [--glu] [--act f16|bf16] [--device N]`: the quantized GEMM benchmark table (see `marlin_cuda::bench`). `--stream-k`
//! adds the stream-K INT4 kernel's column; `--no-ctx` drops the decode-context columns (GEMM
//! after a PDL-launched delay kernel of C clocks); `--l2-warm` times one copy of each weight (read
//! from L2 where it fits: the ceiling of prefetching a GEMM's weights into L2 in an earlier kernel); `--dec-shapes` times forced decode-kernel
//! block shapes (column blocks x K slices x splits); `--split-list` times the INT4 kernels
//! with each of these split-K factors forced (rows marked `*`; `--sweep` sets 1,2,4,8,16,32
//! and its own M and formats); `--ws-only` times only cuBLAS, Auto and the
//! warp-specialised INT4 kernel (same-run A/Bs of its knobs); `--wgmma-only` the same plus the
//! wgmma INT4 kernel; `--tile-read` also prints, per INT4 shape, its codes read in the split-K
//! GEMMs' block order beside the linear read peer (stderr); `--glu` times instead, for each
//! stacked gate|up shape 2FxK, the GEMM + `glu` pair against the GEMM with the GLU in its epilogue;
//! `--act bf16` runs the table with bf16 activations and outputs against cuBLAS bf16 (the bulk
//! INT4 column, an f16-only kernel, is NaN).
//! Exit status 1 when CUDA is not available or a call fails.

use marlin_cuda::act::Act;
use marlin_cuda::bench::{bench_gemm, GemmBenchConfig, GemmFormat};

const USAGE: &str =
    "usage: marlin-cuda-bench [--quick] [--sweep] [--split-list 1,2,3] [--stream-k] [--sk-warps 8,16,32] [--shape NxK[,NxK..]] [--ms 1,16] \
                     [--formats int4,int4zp,int4g32,mxfp4,nvfp4,int8,fp8,fp8b128,int3,int2] [--no-ctx] [--l2-warm] [--delay-cycles C] \
                     [--dec-shapes AxBxC[,..]] [--ws-only] [--wgmma-only] [--tile-read] [--glu] [--act f16|bf16] [--device N]";

fn main() {
    let mut cfg = GemmBenchConfig::default();
    let mut ordinal = 0usize;
    let mut glu = false;
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
                cfg.formats = vec![GemmFormat::Int4G128];
            }
            "--split-list" => match args.next().map(|s| {
                s.split(',')
                    .map(|x| x.trim().parse::<usize>().ok().filter(|&v| v > 0))
                    .collect::<Option<Vec<_>>>()
            }) {
                Some(Some(list)) if !list.is_empty() => cfg.split_sweep = list,
                _ => {
                    eprintln!("--split-list needs a comma-separated list of split counts >= 1");
                    std::process::exit(2);
                }
            },
            "--stream-k" => cfg.stream_k = true,
            "--no-ctx" => cfg.decode_context = false,
            "--l2-warm" => cfg.l2_warm = true,
            "--ws-only" => cfg.ws_only = true,
            "--tile-read" => cfg.tile_read = true,
            "--wgmma-only" => cfg.wgmma_only = true,
            "--glu" => glu = true,
            "--act" => match args.next().as_deref().and_then(Act::parse) {
                Some(act) => cfg.act = act,
                None => {
                    eprintln!("--act needs f16 or bf16");
                    std::process::exit(2);
                }
            },
            "--delay-cycles" => match args.next().and_then(|s| s.parse::<i64>().ok()) {
                Some(c) if c >= 0 => cfg.delay_cycles = c,
                _ => {
                    eprintln!("--delay-cycles needs a non-negative number of SM clocks");
                    std::process::exit(2);
                }
            },
            "--dec-shapes" => match args.next().and_then(|s| {
                s.split(',')
                    .map(|v| parse_dec_shape(v.trim()))
                    .collect::<Option<Vec<_>>>()
            }) {
                Some(shapes) if !shapes.is_empty() => cfg.decode_shapes = shapes,
                _ => {
                    eprintln!("--dec-shapes needs AxBxC[,..] (column blocks x K slices x splits, each >= 1)");
                    std::process::exit(2);
                }
            },
            "--sk-warps" => match args.next().map(|s| {
                s.split(',')
                    .map(|v| v.trim().parse::<usize>())
                    .collect::<Result<Vec<_>, _>>()
            }) {
                Some(Ok(w)) if !w.is_empty() && !w.contains(&0) => {
                    cfg.stream_k = true;
                    cfg.stream_k_sweep = w;
                }
                _ => {
                    eprintln!("--sk-warps needs a comma-separated list of warps per SM");
                    std::process::exit(2);
                }
            },
            "--shape" => match args.next().and_then(|s| {
                s.split(',')
                    .map(|v| parse_shape(v.trim()))
                    .collect::<Option<Vec<_>>>()
            }) {
                Some(shapes) if !shapes.is_empty() => cfg.shapes = shapes,
                _ => {
                    eprintln!("--shape needs NxK[,NxK...], e.g. 4096x4096,28672x8192");
                    std::process::exit(2);
                }
            },
            "--ms" => match args.next().map(|s| {
                s.split(',')
                    .map(|v| v.trim().parse::<usize>())
                    .collect::<Result<Vec<_>, _>>()
            }) {
                Some(Ok(ms)) if !ms.is_empty() && !ms.contains(&0) => cfg.ms = ms,
                _ => {
                    eprintln!("--ms needs a comma-separated list of positive batch sizes");
                    std::process::exit(2);
                }
            },
            "--formats" => match args.next().and_then(|s| GemmFormat::parse_list(&s)) {
                Some(formats) => cfg.formats = formats,
                None => {
                    eprintln!("--formats needs a comma-separated list of int4, int4zp, int4g32, mxfp4, nvfp4, int8, fp8, fp8b128, int3, int2");
                    std::process::exit(2);
                }
            },
            "--device" => match args.next().and_then(|s| s.parse().ok()) {
                Some(n) => ordinal = n,
                None => {
                    eprintln!("--device needs a number");
                    std::process::exit(2);
                }
            },
            other => {
                eprintln!("unknown argument {other}; {USAGE}");
                std::process::exit(2);
            }
        }
    }
    if glu && cfg.act != Act::F16 {
        eprintln!("--glu times the f16 decode-step kernels only (not with --act bf16)");
        std::process::exit(2);
    }
    if glu {
        match marlin_cuda::bench::bench_glu(ordinal, &cfg) {
            Ok((delay_us, rows)) => {
                println!(
                    "gate|up GEMM + glu launch (pair) vs GLU in the GEMM's epilogue (epi), SiLU; \
                     ctx = after a PDL delay kernel, minus its {delay_us:.2} us"
                );
                println!(
                    "{:>11} {:>3} {:>9} {:>9} {:>9} {:>9} {:>9}  kernel",
                    "N x K", "M", "pair us", "epi us", "pair ctx", "epi ctx", "ctx diff"
                );
                for r in rows {
                    println!(
                        "{:>11} {:>3} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}  {}",
                        format!("{}x{}", r.n, r.k),
                        r.m,
                        r.pair_us,
                        r.epilogue_us,
                        r.pair_ctx_us,
                        r.epilogue_ctx_us,
                        r.epilogue_ctx_us - r.pair_ctx_us,
                        r.kernel
                    );
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    match bench_gemm(ordinal, &cfg) {
        Ok(report) => print!("{report}"),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}

fn parse_shape(s: &str) -> Option<(usize, usize)> {
    let (n, k) = s.split_once('x')?;
    let (n, k) = (n.parse().ok()?, k.parse().ok()?);
    (n > 0 && k > 0).then_some((n, k))
}

fn parse_dec_shape(s: &str) -> Option<(usize, usize, usize)> {
    let mut it = s
        .split('x')
        .map(|v| v.parse::<usize>().ok().filter(|&v| v > 0));
    let shape = (it.next()??, it.next()??, it.next()??);
    it.next().is_none().then_some(shape)
}
