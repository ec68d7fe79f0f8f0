//! The paged KV pool (`marlin_cuda::ops::PagedKvPool`): its write and its
//! attention through block tables against a scalar f64 reference over the
//! same f16-rounded keys and values. Fresh random inputs every run (the
//! seed is printed), outputs NaN-poisoned before each launch, block tables
//! shuffled (no sequence's blocks are contiguous), several sequences per
//! pass, prefill rows (a chunk attending its sequence's earlier blocks and
//! causally within itself) beside decode rows, GQA, sliding windows,
//! soft-capping, every head dim with kernels. Without a GPU each test
//! prints why and passes.
//!
//! Tolerance: 2e-4 absolute (outputs are convex combinations of values in
//! [-1, 1]; f32 accumulation and exp2.approx), as for the contiguous cache
//! in `gpu_ops.rs`; 2e-3 for prompt rows on the tensor-core tile kernel
//! (f16 queries and probabilities), as `gpu_ops.rs` allows that kernel.
#![cfg(feature = "cuda")]

mod common;

use std::sync::Arc;

use common::time_us;

use half::f16;
use marlin_cuda::ops::{self, AttnParams, GpuKvCache, PagedKvPool};
use marlin_cuda::CudaDevice;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

const TOLERANCE: f32 = 2e-4;
/// Prompt rows on the tensor-core tile kernel: queries and probabilities
/// rounded to f16 (as `PREFILL_TC_TOL` in `gpu_ops.rs`).
const TC_TOLERANCE: f32 = 2e-3;

fn device() -> Option<Arc<CudaDevice>> {
    match CudaDevice::new(0) {
        Ok(d) => Some(d),
        Err(e) => {
            println!("SKIP: no usable CUDA device ({e})");
            None
        }
    }
}

fn rng(test: &str) -> StdRng {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(7);
    println!("{test}: seed {seed}");
    StdRng::seed_from_u64(seed)
}

fn rand_vec(r: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| r.gen_range(-1.0f32..1.0)).collect()
}

fn round_f16(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

/// One attention configuration.
struct Case {
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    window: Option<usize>,
    softcap: Option<f32>,
}

/// softmax(scale q·k [capped]) v over keys `lo..=pos` of one sequence, in f64.
#[allow(clippy::too_many_arguments)]
fn reference_row(
    c: &Case,
    scale: f32,
    q: &[f32],    // (n_heads, hd)
    keys: &[f32], // (len, n_kv, hd), f16-rounded
    vals: &[f32],
    pos: usize,
    out: &mut [f32],
) {
    let (hd, kvd) = (c.head_dim, c.n_kv_heads * c.head_dim);
    let group = c.n_heads / c.n_kv_heads;
    let lo = c.window.map_or(0, |w| (pos + 1).saturating_sub(w));
    for h in 0..c.n_heads {
        let kvh = h / group;
        let scores: Vec<f64> = (lo..=pos)
            .map(|j| {
                let k = &keys[j * kvd + kvh * hd..][..hd];
                let dot: f64 = (0..hd).map(|e| q[h * hd + e] as f64 * k[e] as f64).sum();
                let s = dot * scale as f64;
                match c.softcap {
                    Some(cap) => cap as f64 * (s / cap as f64).tanh(),
                    None => s,
                }
            })
            .collect();
        let mx = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let w: Vec<f64> = scores.iter().map(|s| (s - mx).exp()).collect();
        let sum: f64 = w.iter().sum();
        for e in 0..hd {
            let acc: f64 = (lo..=pos)
                .zip(&w)
                .map(|(j, wj)| wj * vals[j * kvd + kvh * hd + e] as f64)
                .sum();
            out[h * hd + e] = (acc / sum) as f32;
        }
    }
}

/// Rows of one pass: (table index, position).
fn upload_rows(
    dev: &CudaDevice,
    rows: &[(i32, i32)],
) -> (
    cudarc::driver::CudaSlice<i32>,
    cudarc::driver::CudaSlice<i32>,
) {
    let seq: Vec<i32> = rows.iter().map(|r| r.0).collect();
    let pos: Vec<i32> = rows.iter().map(|r| r.1).collect();
    (
        dev.upload("row_seq", &seq).unwrap(),
        dev.upload("row_pos", &pos).unwrap(),
    )
}

/// Pool geometry and sequence lengths of one run.
struct Geometry {
    block: usize,
    n_blocks: usize,
    lens: [usize; 3],
}

/// Short sequences in blocks of 4 (one key split), and long ones in blocks
/// of 16 (decode rows split their keys: the combine kernel runs).
const GEOMETRIES: [Geometry; 2] = [
    Geometry {
        block: 4,
        n_blocks: 16,
        lens: [13, 9, 6],
    },
    Geometry {
        block: 16,
        n_blocks: 40,
        lens: [300, 70, 17],
    },
];

fn run_case(dev: &Arc<CudaDevice>, r: &mut StdRng, c: &Case, g: &Geometry) {
    const LAYERS: usize = 2;
    let (block, n_blocks) = (g.block, g.n_blocks);
    let layer = 1;
    let (hd, kvd) = (c.head_dim, c.n_kv_heads * c.head_dim);
    let lens = g.lens;
    let mut pool = PagedKvPool::new(dev, LAYERS, c.n_kv_heads, hd, block, n_blocks).unwrap();
    // Shuffled blocks, handed out round-robin: interleaved, not contiguous.
    let mut free: Vec<u32> = (0..n_blocks as u32).collect();
    free.shuffle(r);
    let mut tables: Vec<Vec<u32>> = vec![Vec::new(); lens.len()];
    for b in 0..lens[0].div_ceil(block) {
        for (s, t) in tables.iter_mut().enumerate() {
            if b * block < lens[s] {
                t.push(free.pop().unwrap());
            }
        }
    }
    let table_refs: Vec<&[u32]> = tables.iter().map(Vec::as_slice).collect();
    pool.set_block_tables(dev, &table_refs).unwrap();
    // Keys and values of every position, written in two passes whose rows
    // mix the sequences (first their prompt parts, then the rest).
    let keys: Vec<Vec<f32>> = lens.iter().map(|&l| rand_vec(r, l * kvd)).collect();
    let vals: Vec<Vec<f32>> = lens.iter().map(|&l| rand_vec(r, l * kvd)).collect();
    for first in [true, false] {
        let mut rows = Vec::new();
        let (mut k, mut v) = (Vec::new(), Vec::new());
        for (s, &len) in lens.iter().enumerate() {
            let split = len - 3;
            let range = if first { 0..split } else { split..len };
            for p in range {
                rows.push((s as i32, p as i32));
                k.extend_from_slice(&keys[s][p * kvd..(p + 1) * kvd]);
                v.extend_from_slice(&vals[s][p * kvd..(p + 1) * kvd]);
            }
        }
        // A row outside the tables and one past a table's end: not written.
        rows.push((7, 0));
        rows.push((2, (tables[2].len() * block) as i32));
        k.extend(vec![9.0; 2 * kvd]);
        v.extend(vec![9.0; 2 * kvd]);
        let (row_seq, row_pos) = upload_rows(dev, &rows);
        let kd = dev.upload("k", &k).unwrap();
        let vd = dev.upload("v", &v).unwrap();
        ops::paged_kv_write(
            dev,
            &mut pool,
            layer,
            &kd,
            &vd,
            rows.len(),
            &row_seq,
            &row_pos,
        )
        .unwrap();
    }
    // The pool holds every key where the tables say, f16-rounded.
    let (pk, pv) = pool.download(dev).unwrap();
    for (s, &len) in lens.iter().enumerate() {
        for p in 0..len {
            let blk = tables[s][p / block] as usize;
            for kvh in 0..c.n_kv_heads {
                let off =
                    (((layer * n_blocks + blk) * c.n_kv_heads + kvh) * block + p % block) * hd;
                for e in 0..hd {
                    let i = p * kvd + kvh * hd + e;
                    assert_eq!(pk[off + e].to_f32(), round_f16(keys[s][i]), "key s{s} p{p}");
                    assert_eq!(
                        pv[off + e].to_f32(),
                        round_f16(vals[s][i]),
                        "value s{s} p{p}"
                    );
                }
            }
        }
    }
    let keys16: Vec<Vec<f32>> = keys
        .iter()
        .map(|k| k.iter().map(|&x| round_f16(x)).collect())
        .collect();
    let vals16: Vec<Vec<f32>> = vals
        .iter()
        .map(|v| v.iter().map(|&x| round_f16(x)).collect())
        .collect();

    // Attention rows: a prefill chunk of sequence 0 (its last 4 positions), a
    // decode row of each other sequence, and a row outside the tables; all
    // on the decode kernel (no prompt rows declared).
    let mut rows: Vec<(i32, i32)> = (lens[0] - 4..lens[0]).map(|p| (0, p as i32)).collect();
    rows.push((1, lens[1] as i32 - 1));
    rows.push((2, lens[2] as i32 - 2));
    rows.push((3, 0));
    let kv = StoredKv {
        lens: &lens,
        keys: &keys16,
        vals: &vals16,
    };
    check_attention(dev, r, &mut pool, c, layer, &kv, &rows, 0);
    // Prompt chunks as the serving engine lays out a pass: the prompt rows
    // of two sequences first (sequence 1's from position 2 on, so that
    // they also attend earlier blocks; a row outside the tables among
    // them), then decode rows. More than
    // DECODE_MAX_ROWS prompt rows: the tensor-core tile kernel runs them.
    let mut rows: Vec<(i32, i32)> = (0..lens[0]).map(|p| (0, p as i32)).collect();
    rows.push((7, 3));
    rows.extend((2..lens[1]).map(|p| (1, p as i32)));
    let prompt = rows.len();
    assert!(prompt > ops::DECODE_MAX_ROWS);
    rows.push((2, lens[2] as i32 - 1));
    rows.push((1, lens[1] as i32 - 1));
    check_attention(dev, r, &mut pool, c, layer, &kv, &rows, prompt);
}

/// The keys and values every sequence stored (f16-rounded), per sequence
/// (len, n_kv_heads, head_dim).
struct StoredKv<'a> {
    lens: &'a [usize],
    keys: &'a [Vec<f32>],
    vals: &'a [Vec<f32>],
}

/// Runs paged attention of `rows` (table, position) with rows
/// `0..prompt_rows` declared prompt rows, on fresh queries into a
/// NaN-poisoned output, and compares every row with the f64 reference:
/// prompt rows within [`TC_TOLERANCE`] when the tile kernel runs them,
/// the others within [`TOLERANCE`]; rows outside the tables are zeros and
/// nothing past the rows is written.
#[allow(clippy::too_many_arguments)]
fn check_attention(
    dev: &Arc<CudaDevice>,
    r: &mut StdRng,
    pool: &mut PagedKvPool,
    c: &Case,
    layer: usize,
    kv: &StoredKv,
    rows: &[(i32, i32)],
    prompt_rows: usize,
) {
    let hd = c.head_dim;
    let qd = c.n_heads * hd;
    let q = rand_vec(r, rows.len() * qd);
    let scale = 1.0 / (hd as f32).sqrt();
    let params = AttnParams {
        n_heads: c.n_heads,
        n_kv_heads: c.n_kv_heads,
        head_dim: hd,
        scale,
        window: c.window,
        softcap: c.softcap,
    };
    pool.set_prompt_rows(prompt_rows);
    let (row_seq, row_pos) = upload_rows(dev, rows);
    let qdev = dev.upload("q", &q).unwrap();
    let slack = 5;
    let mut out = dev
        .upload("out", &vec![f32::NAN; rows.len() * qd + slack])
        .unwrap();
    ops::paged_attention(
        dev,
        &params,
        &qdev,
        pool,
        layer,
        rows.len(),
        &row_seq,
        &row_pos,
        &mut out,
    )
    .unwrap();
    let got = dev.download(&out).unwrap();
    let mut want = vec![0.0f32; rows.len() * qd];
    for (i, &(s, p)) in rows.iter().enumerate() {
        let s = s as usize;
        if s >= kv.lens.len() || p as usize >= kv.lens[s] {
            continue; // outside the tables or past the stored keys: zeros
        }
        reference_row(
            c,
            scale,
            &q[i * qd..(i + 1) * qd],
            &kv.keys[s],
            &kv.vals[s],
            p as usize,
            &mut want[i * qd..(i + 1) * qd],
        );
    }
    let worst = |range: std::ops::Range<usize>| {
        want[range.start * qd..range.end * qd]
            .iter()
            .zip(&got[range.start * qd..range.end * qd])
            .map(|(a, b)| {
                if b.is_nan() {
                    f32::INFINITY
                } else {
                    (a - b).abs()
                }
            })
            .fold(0.0f32, f32::max)
    };
    let tiled = prompt_rows > ops::DECODE_MAX_ROWS && hd >= 64;
    let (prompt_worst, rest_worst) = (worst(0..prompt_rows), worst(prompt_rows..rows.len()));
    println!(
        "paged attention hd {hd}, {} / {} heads, window {:?}, softcap {:?}, blocks of {}, \
         lengths {:?}, {} rows ({prompt_rows} prompt{}): max |Δ| prompt {prompt_worst:.2e}, \
         others {rest_worst:.2e}",
        c.n_heads,
        c.n_kv_heads,
        c.window,
        c.softcap,
        pool.block_size(),
        kv.lens,
        rows.len(),
        if tiled { ", tensor cores" } else { "" },
    );
    let prompt_tol = if tiled { TC_TOLERANCE } else { TOLERANCE };
    assert!(
        prompt_worst < prompt_tol,
        "prompt rows: max |Δ| {prompt_worst}"
    );
    assert!(rest_worst < TOLERANCE, "other rows: max |Δ| {rest_worst}");
    assert!(
        got[rows.len() * qd..].iter().all(|x| x.is_nan()),
        "tail written"
    );
}

#[test]
fn paged_attention_matches_reference() {
    let Some(dev) = device() else { return };
    let mut r = rng("paged_attention_matches_reference");
    let cases = [
        // SmolLM2-135M: 9 heads / 3 kv of 64.
        Case {
            n_heads: 9,
            n_kv_heads: 3,
            head_dim: 64,
            window: None,
            softcap: None,
        },
        // Gemma 3 270M: 4 heads / 1 kv of 256, sliding-window layer.
        Case {
            n_heads: 4,
            n_kv_heads: 1,
            head_dim: 256,
            window: Some(5),
            softcap: None,
        },
        Case {
            n_heads: 4,
            n_kv_heads: 1,
            head_dim: 256,
            window: Some(100),
            softcap: None,
        },
        Case {
            n_heads: 16,
            n_kv_heads: 4,
            head_dim: 128,
            window: Some(3),
            softcap: Some(20.0),
        },
        // Llama-8B-like group of 4 with 8 kv heads.
        Case {
            n_heads: 32,
            n_kv_heads: 8,
            head_dim: 128,
            window: None,
            softcap: None,
        },
        // Tiny test models.
        Case {
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 16,
            window: None,
            softcap: None,
        },
        Case {
            n_heads: 12,
            n_kv_heads: 1,
            head_dim: 32,
            window: Some(4),
            softcap: None,
        },
    ];
    // Every case runs (a failure is reported with the others at the end).
    let mut failed = 0;
    for c in &cases {
        for g in &GEOMETRIES {
            let run = std::panic::AssertUnwindSafe(|| run_case(&dev, &mut r, c, g));
            failed += usize::from(std::panic::catch_unwind(run).is_err());
        }
    }
    assert_eq!(failed, 0, "{failed} cases failed (see above)");
}

#[test]
fn bad_tables_and_shapes_are_errors() {
    let Some(dev) = device() else { return };
    let mut pool = PagedKvPool::new(&dev, 2, 2, 64, 16, 4).unwrap();
    // A block id outside the pool is refused before anything is uploaded.
    assert!(pool.set_block_tables(&dev, &[&[0, 1], &[4]]).is_err());
    assert!(pool.set_block_tables(&dev, &[]).is_err());
    // No tables set yet: the ops refuse to run.
    let q = dev.upload("q", &vec![0.0f32; 4 * 64]).unwrap();
    let seqs = dev.upload("seq", &[0i32]).unwrap();
    let mut out = dev.upload("out", &vec![0.0f32; 4 * 64]).unwrap();
    let p = AttnParams {
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 64,
        scale: 0.125,
        window: None,
        softcap: None,
    };
    assert!(ops::paged_attention(&dev, &p, &q, &pool, 0, 1, &seqs, &seqs, &mut out).is_err());
    pool.set_block_tables(&dev, &[&[3, 0]]).unwrap();
    ops::paged_attention(&dev, &p, &q, &pool, 0, 1, &seqs, &seqs, &mut out).unwrap();
    // Wrong layer, kv heads, head dim, short buffers.
    assert!(ops::paged_attention(&dev, &p, &q, &pool, 2, 1, &seqs, &seqs, &mut out).is_err());
    let p3 = AttnParams { n_kv_heads: 4, ..p };
    assert!(ops::paged_attention(&dev, &p3, &q, &pool, 0, 1, &seqs, &seqs, &mut out).is_err());
    assert!(ops::paged_attention(&dev, &p, &q, &pool, 0, 2, &seqs, &seqs, &mut out).is_err());
    // Unsupported head dims and empty pools are errors.
    assert!(PagedKvPool::new(&dev, 2, 2, 96, 16, 4).is_err());
    assert!(PagedKvPool::new(&dev, 2, 2, 64, 16, 0).is_err());
    assert!(PagedKvPool::new(&dev, 2, 2, 64, 0, 4).is_err());
    dev.synchronize().unwrap();
}

/// Prompt rows of the serving path: one sequence's prompt through a paged
/// pool (blocks of 16, shuffled) at 32 / 8 heads of 128, causal, on the
/// decode-structured kernel (no prompt rows declared: the schedule before
/// the tile kernel) and on the tensor-core tile kernel, beside the
/// contiguous cache's tensor-core prefill on the same keys (the peer:
/// `gpu_ops`' benchmark puts that kernel beside PyTorch's FlashAttention-2).
/// Whole prompts of 512 / 2048 tokens, and a chunk of 512 rows at
/// positions 3584..4096 (chunked prefill after 3584 cached keys).
#[test]
#[ignore = "benchmark: run with --include-ignored on the GPU machine"]
fn bench_paged_prefill() {
    let Some(dev) = device() else { return };
    let mut r = rng("bench_paged_prefill");
    let (n_heads, n_kv, hd, block, ctx) = (32, 8, 128, 16, 4096);
    let kvd = n_kv * hd;
    let n_blocks = ctx / block;
    let mut pool = PagedKvPool::new(&dev, 1, n_kv, hd, block, n_blocks).unwrap();
    let mut table: Vec<u32> = (0..n_blocks as u32).collect();
    table.shuffle(&mut r);
    pool.set_block_tables(&dev, &[&table]).unwrap();
    let mut cache = GpuKvCache::new(&dev, 1, n_kv, hd, 1, ctx).unwrap();
    let k = dev.upload("k", &rand_vec(&mut r, ctx * kvd)).unwrap();
    let v = dev.upload("v", &rand_vec(&mut r, ctx * kvd)).unwrap();
    let all: Vec<(i32, i32)> = (0..ctx as i32).map(|p| (0, p)).collect();
    let (sd, pd) = upload_rows(&dev, &all);
    ops::paged_kv_write(&dev, &mut pool, 0, &k, &v, ctx, &sd, &pd).unwrap();
    ops::kv_write(&dev, &mut cache, 0, &k, &v, ctx, &sd, &pd).unwrap();
    let p = AttnParams {
        n_heads,
        n_kv_heads: n_kv,
        head_dim: hd,
        scale: 1.0 / (hd as f32).sqrt(),
        window: None,
        softcap: None,
    };
    for (rows, first) in [(512, 0), (2048, 0), (512, ctx - 512)] {
        let q = dev
            .upload("q", &rand_vec(&mut r, rows * n_heads * hd))
            .unwrap();
        let chunk: Vec<(i32, i32)> = (first..first + rows).map(|p| (0, p as i32)).collect();
        let (sd, pd) = upload_rows(&dev, &chunk);
        let mut out = dev.alloc_zeros::<f32>("out", rows * n_heads * hd).unwrap();
        let keys: usize = (first..first + rows).map(|p| p + 1).sum();
        let flops = 4.0 * (keys * n_heads * hd) as f64;
        let tflops = |us: f64| flops / (us * 1e-6) / 1e12;
        let reps = (20 * 512 / rows).max(2);
        pool.set_prompt_rows(0);
        let decode = time_us(&dev, reps.div_ceil(4), || {
            ops::paged_attention(&dev, &p, &q, &pool, 0, rows, &sd, &pd, &mut out).unwrap()
        });
        pool.set_prompt_rows(rows);
        let tile = time_us(&dev, reps, || {
            ops::paged_attention(&dev, &p, &q, &pool, 0, rows, &sd, &pd, &mut out).unwrap()
        });
        let contiguous = time_us(&dev, reps, || {
            ops::attention_prefill_with(
                &dev,
                ops::PrefillKernel::TensorCore,
                &p,
                &q,
                &cache,
                0,
                rows,
                &sd,
                &pd,
                &mut out,
            )
            .unwrap()
        });
        println!(
            "BENCH paged prefill {rows} rows at positions {first}..{} h{n_heads}/kv{n_kv} hd{hd} \
             blocks of {block}: tile kernel {tile:8.1} us {:6.1} TFLOP/s, decode kernel \
             {decode:9.1} us {:5.1} TFLOP/s; contiguous cache tensor cores {contiguous:8.1} us \
             {:6.1} TFLOP/s",
            first + rows,
            tflops(tile),
            tflops(decode),
            tflops(contiguous)
        );
    }
}
