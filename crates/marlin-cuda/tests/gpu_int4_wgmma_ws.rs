//! The warp-specialised Hopper wgmma INT4 GEMM (`GemmPath::WgmmaWs`) on the
//! GPU against the f64 CPU reference. Skips (passes, saying so) without a
//! CUDA device or on a device other than compute capability 9.0. Fresh
//! random inputs every run (seed printed on failure), the output poisoned
//! with NaN before every launch, every output compared, two launches
//! bit-identical.
#![cfg(feature = "cuda")]

mod common;

use std::sync::Arc;

use common::{
    bit_identical, fresh_seed, problem_from_quant, random_problem, rel_l2_all_finite, Case,
    Problem, REL_L2_TOL,
};
use half::f16;
use marlin_cuda::int4::gemm::{
    int4_gemm, int4_gemm_prepared, GemmOptions, GemmPath, GemmWorkspace,
};
use marlin_cuda::int4::random::random_int4;
use marlin_cuda::int4::wgmma_ws::{set_ws_cluster_override, ws_cluster_launches, ws_supported};
use marlin_cuda::CudaDevice;

/// Forced-variant switch read by `wgmma_ws::ws_variant`.
const VARIANT_ENV: &str = "MARLIN_WGMMA_WS_VARIANT";
/// Stream-K (1) or split-K (0) form, read by `wgmma_ws::ws_stream_k`.
const STREAM_K_ENV: &str = "MARLIN_WGMMA_WS_STREAMK";
/// Forced number of stream-K blocks.
const SK_BLOCKS_ENV: &str = "MARLIN_WGMMA_WS_SK_BLOCKS";
/// The split-K form's subnormal dequantisation (`_n` entries), on unless 0.
const SUBNORMAL_ENV: &str = "MARLIN_WGMMA_WS_SUBNORMAL";

/// The device, or None (test skipped) without a GPU or without sm_90.
fn hopper() -> Option<Arc<CudaDevice>> {
    common::hopper(ws_supported, "wgmma ws")
}

#[test]
fn wgmma_ws_gemm_matches_reference() {
    let Some(dev) = hopper() else { return };
    let mut ws = GemmWorkspace::new(&dev).expect("workspace");
    // The split-K form (the stream-K one: the test below).
    std::env::set_var(STREAM_K_ENV, "0");
    let mut cases: Vec<Case> = Vec::new();
    for &m in &[17, 64, 255, 256, 257, 1000] {
        // g128 symmetric, K a multiple of the chunk; forced 3 splits.
        cases.push((m, 328, 2048, 128, false, None));
        cases.push((m, 328, 2048, 128, false, Some(3)));
        // g128 with zero points; K = 1000 ends inside a chunk.
        cases.push((m, 200, 1000, 128, true, None));
    }
    for &m in &[24, 130] {
        // Odd K (staged element by element), per channel.
        cases.push((m, 256, 999, 0, false, Some(2)));
        // Groups of 32 (two scale rows per chunk), zero points.
        cases.push((m, 200, 990, 32, true, Some(2)));
        // Group 192: splits start inside a scale group.
        cases.push((m, 128, 1536, 192, false, Some(5)));
    }
    // Fresh inputs per case, shared by every variant forced and the
    // automatic choice (one f64 reference per case: the host part was most
    // of this test's time). N = 328 pads to 6 tiles: blocks of 4 tiles
    // leave one consumer warpgroup without a tile. Each launch is run
    // twice against the reference, bit-identical (deterministic split-K),
    // and a forced split count must be the plan's.
    for case in cases {
        let (m, n, k, group, asym, _) = case;
        let p = random_problem(&dev, (m, n, k, group, asym), fresh_seed(), 0xA5A5);
        for variant in ["t64x1", "t64x2", "t128x1", "t128x2", "auto"] {
            if variant == "auto" {
                std::env::remove_var(VARIANT_ENV);
            } else {
                std::env::set_var(VARIANT_ENV, variant);
            }
            let label = format!("wgmma-ws [{variant}]");
            common::check_forced_path_on(&dev, &mut ws, &p, case, GemmPath::WgmmaWs, true, &label);
        }
    }
    std::env::remove_var(VARIANT_ENV);
    std::env::remove_var(STREAM_K_ENV);
}

/// The small-token variants (change 71: t16x2, t16x4, t32x4; split-K
/// form only) forced at M = 1..40: one token block with absent rows, a
/// second block of 8 rows (M = 24, 40), groups 128 / 32 / per channel,
/// zero points, K = 1000 / 999 (inside a chunk, odd), N = 328 (a block
/// whose second consumer warpgroup has fewer tiles) and 77 (N % 8 != 0),
/// forced splits; each with the subnormal dequantisation (`_n` entries)
/// and the two-step one, against the f64 reference, two launches
/// bit-identical, the forced split count the plan's.
#[test]
fn wgmma_ws_small_token_variants_match_reference() {
    let Some(dev) = hopper() else { return };
    let mut ws = GemmWorkspace::new(&dev).expect("workspace");
    std::env::set_var(STREAM_K_ENV, "0");
    let mut cases: Vec<Case> = Vec::new();
    for &m in &[1, 3, 8, 16, 24, 32, 40] {
        cases.push((m, 328, 2048, 128, false, None));
        cases.push((m, 200, 1000, 128, true, Some(3)));
    }
    for &m in &[5, 17] {
        cases.push((m, 256, 999, 0, false, Some(2)));
        cases.push((m, 200, 990, 32, true, None));
        cases.push((m, 77, 1536, 192, false, Some(4)));
    }
    let mut checks = 0;
    for case in cases {
        let (m, n, k, group, asym, _) = case;
        let p = random_problem(&dev, (m, n, k, group, asym), fresh_seed(), 0x1616);
        for variant in ["t16x2", "t16x4", "t32x4"] {
            std::env::set_var(VARIANT_ENV, variant);
            for subnormal in ["1", "0"] {
                std::env::set_var(SUBNORMAL_ENV, subnormal);
                let label = format!("wgmma-ws small [{variant}] subnormal={subnormal}");
                common::check_forced_path_on(
                    &dev,
                    &mut ws,
                    &p,
                    case,
                    GemmPath::WgmmaWs,
                    true,
                    &label,
                );
                checks += 1;
            }
        }
    }
    std::env::remove_var(VARIANT_ENV);
    std::env::remove_var(SUBNORMAL_ENV);
    std::env::remove_var(STREAM_K_ENV);
    // Auto at M = 12 on a 28672x8192 weight: the 16-token variant t16x4
    // with 2 splits (ws_auto's M = 9..16 rule), poisoned output, reference.
    let (m, n, k) = (12, 28672, 8192);
    let p = random_problem(&dev, (m, n, k, 128, false), fresh_seed(), 0x1C1C);
    let what = format!("auto M={m} {n}x{k}");
    let (plan, rel) = common::run_auto_checked(&dev, &mut ws, &p, m, &what);
    assert_eq!(
        (plan.kernel, plan.splits),
        ("w4a16_ws_t16x4n", 2),
        "{plan:?}"
    );
    println!("PASS int4 wgmma-ws small {what} {plan:?} rel_l2={rel:.2e}");
    println!("PASS small-token variants: {} checks", checks + 1);
}

/// The split-K form's output path (session 7: the f16 tile through shared
/// memory, 16-byte stores where N % 8 == 0 and C is 16-byte aligned,
/// element stores otherwise): N not a multiple of 8 (330, 77: a block
/// whose second consumer warpgroup has no tile), and C as a view one
/// element into its buffer (2-byte aligned) with the elements around it
/// left untouched; A as a view one element into a copy (2-byte aligned:
/// the staging launch reads it element by element) in the second and
/// fourth case; one to three splits, every variant and the
/// automatic choice, against the f64 reference, two launches bit-identical.
#[test]
fn wgmma_ws_unaligned_output_matches_reference() {
    let Some(dev) = hopper() else { return };
    let mut ws = GemmWorkspace::new(&dev).expect("workspace");
    std::env::set_var(STREAM_K_ENV, "0");
    let mut checks = 0;
    for (case, (m, n, k, group, splits)) in [
        (200usize, 330usize, 2048usize, 128usize, None),
        (255, 330, 2048, 128, Some(3)),
        (130, 77, 1536, 192, Some(2)),
        (1000, 256, 1024, 128, None),
    ]
    .into_iter()
    .enumerate()
    {
        let p = random_problem(&dev, (m, n, k, group, false), fresh_seed(), 0x3C3C);
        let seed = p.seed;
        // A shifted by `a_off` elements inside a larger buffer.
        let a_off = case % 2;
        let a_host = dev.download(&p.a).expect("download A");
        let mut a_buf = dev
            .alloc_zeros::<f16>("A + offset", m * k + 1)
            .expect("alloc A");
        let mut shifted = vec![f16::ZERO; a_off];
        shifted.extend_from_slice(&a_host);
        shifted.resize(m * k + 1, f16::ZERO);
        dev.write(&mut a_buf, &shifted).expect("upload A");
        // One guard element before and after C.
        let mut buf = dev
            .alloc_zeros::<f16>("C + guards", m * n + 2)
            .expect("alloc C");
        let opts = GemmOptions {
            path: GemmPath::WgmmaWs,
            splits,
        };
        for variant in ["t64x1", "t64x2", "t128x1", "t128x2", "auto"] {
            if variant == "auto" {
                std::env::remove_var(VARIANT_ENV);
            } else {
                std::env::set_var(VARIANT_ENV, variant);
            }
            let mut first: Option<Vec<f16>> = None;
            for launch in 0..2 {
                dev.write(&mut buf, &vec![f16::NAN; m * n + 2])
                    .expect("poison");
                ws.prepare(&dev, &p.weight, m, opts).expect("prepare");
                let plan = {
                    let mut c = buf.slice_mut(1..1 + m * n);
                    let a = a_buf.slice(a_off..a_off + m * k);
                    int4_gemm_prepared(&dev, &a, m, &p.weight, &mut c, &mut ws, opts)
                        .expect("launch")
                };
                assert!(plan.kernel.starts_with("w4a16_ws_t"), "{plan:?}");
                let all = dev.download(&buf).expect("download");
                assert!(
                    all[0].is_nan() && all[m * n + 1].is_nan(),
                    "M={m} N={n} [{variant}] seed={seed}: a guard element was written"
                );
                let got = all[1..1 + m * n].to_vec();
                let what = format!("M={m} N={n} K={k} g={group} A+{a_off} [{variant}] seed={seed}");
                let rel = rel_l2_all_finite(&got, &p.want, n, &what);
                assert!(
                    rel < REL_L2_TOL,
                    "{what} launch {launch}: rel L2 error {rel:.3e}"
                );
                if let Some(prev) = &first {
                    assert!(bit_identical(prev, &got), "{what}: two launches differ");
                } else {
                    println!(
                        "PASS int4 wgmma-ws unaligned C [{variant}] M={m} N={n} K={k} g={group} kernel={} splits={} rel_l2={rel:.2e}",
                        plan.kernel, plan.splits
                    );
                    checks += 1;
                }
                first = Some(got);
            }
        }
    }
    std::env::remove_var(VARIANT_ENV);
    std::env::remove_var(STREAM_K_ENV);
    println!("PASS unaligned output: {checks} checks");
}

/// The stream-K form (`w4a16_wsk_*`): every variant forced and the
/// automatic choice, with one block per SM and with 3 and 7 blocks (tiles
/// owned whole by one block, tiles shared by 2..n blocks, blocks whose
/// range lies inside one tile), against the f64 reference; two launches
/// bit-identical (the reduction order does not depend on arrival order).
#[test]
fn wgmma_ws_stream_k_matches_reference() {
    let Some(dev) = hopper() else { return };
    let mut ws = GemmWorkspace::new(&dev).expect("workspace");
    std::env::set_var(STREAM_K_ENV, "1");
    let cases: [(usize, usize, usize, usize, bool); 10] = [
        (17, 328, 2048, 128, false),
        (64, 328, 2048, 128, false),
        (255, 328, 2048, 128, false),
        (256, 200, 1000, 128, true),
        (1000, 328, 2048, 128, false),
        (64, 4096, 1024, 128, false),
        (24, 256, 999, 0, false),
        (130, 200, 990, 32, true),
        (130, 128, 1536, 192, false),
        (64, 200, 1000, 128, true),
    ];
    let mut checks = 0;
    for (m, n, k, group, asym) in cases {
        let p = random_problem(&dev, (m, n, k, group, asym), fresh_seed(), 0x5A5A);
        let seed = p.seed;
        let mut c = dev.alloc_zeros::<f16>("C", m * n).expect("alloc C");
        let opts = GemmOptions {
            path: GemmPath::WgmmaWs,
            splits: None,
        };
        for variant in ["t64x1", "t64x2", "t128x1", "t128x2", "auto"] {
            if variant == "auto" {
                std::env::remove_var(VARIANT_ENV);
            } else {
                std::env::set_var(VARIANT_ENV, variant);
            }
            for blocks in ["sm", "3", "7"] {
                if blocks == "sm" {
                    std::env::remove_var(SK_BLOCKS_ENV);
                } else {
                    std::env::set_var(SK_BLOCKS_ENV, blocks);
                }
                let mut first: Option<Vec<f16>> = None;
                for launch in 0..2 {
                    dev.write(&mut c, &vec![f16::NAN; m * n]).expect("poison");
                    let plan =
                        int4_gemm(&dev, &p.a, m, &p.weight, &mut c, &mut ws, opts).expect("launch");
                    assert!(plan.kernel.starts_with("w4a16_wsk_"), "{plan:?}");
                    let got = dev.download(&c).expect("download");
                    let what = format!(
                        "M={m} N={n} K={k} g={group} [{variant}, {blocks} blocks] seed={seed}"
                    );
                    let rel = rel_l2_all_finite(&got, &p.want, n, &what);
                    assert!(
                        rel < REL_L2_TOL,
                        "M={m} N={n} K={k} g={group} asym={asym} [{variant}, {blocks} blocks] seed={seed} launch {launch}: rel L2 error {rel:.3e}"
                    );
                    if let Some(prev) = &first {
                        assert!(
                            bit_identical(prev, &got),
                            "M={m} N={n} K={k} [{variant}, {blocks} blocks] seed={seed}: two launches differ"
                        );
                    } else {
                        println!(
                            "PASS int4 wgmma-ws stream-K [{variant}, {blocks} blocks] M={m} N={n} K={k} g={group} asym={asym} kernel={} rel_l2={rel:.2e}",
                            plan.kernel
                        );
                        checks += 1;
                    }
                    first = Some(got);
                }
            }
        }
    }
    std::env::remove_var(VARIANT_ENV);
    std::env::remove_var(SK_BLOCKS_ENV);
    std::env::remove_var(STREAM_K_ENV);
    println!("PASS stream-K: {checks} checks");
}

/// The prepared entry point records both launches (staging + main kernel)
/// into a CUDA graph in global capture mode (no allocation, module load or
/// synchronisation inside) and the replay matches an eager launch bit for
/// bit.
#[test]
fn wgmma_ws_prepared_gemm_records_in_a_cuda_graph() {
    let Some(dev) = hopper() else { return };
    // Split-K form (2 splits forced) at 17, 64, 300; the stream-K form
    // (no forced splits) at 64 and 300.
    std::env::set_var(STREAM_K_ENV, "1");
    let ms = [17usize, 64, 300, 64, 300];
    let cases: Vec<(usize, GemmOptions)> = ms
        .iter()
        .enumerate()
        .map(|(idx, &m)| {
            let opts = GemmOptions {
                path: GemmPath::WgmmaWs,
                splits: if idx < 3 { Some(2) } else { None },
            };
            (m, opts)
        })
        .collect();
    common::check_prepared_in_cuda_graph(&dev, 384, 2048, &cases);
    std::env::remove_var(STREAM_K_ENV);
    println!("PASS wgmma-ws prepared GEMM M={ms:?} (split-K, then stream-K) recorded in a CUDA graph, replayed twice");
}

/// Whether `kernel` is a subnormal-dequantisation entry: `_n`, or its
/// cluster-reduction form `_nc` (change 67) where the plan splits K.
fn subnormal_kernel(kernel: &str) -> bool {
    kernel.ends_with('n') || kernel.ends_with("nc")
}

/// One forced warp-specialised launch of `p` with the subnormal
/// dequantisation on or off (split-K form, automatic variant): the output
/// (NaN-poisoned before), checked against the f64 reference, and the
/// kernel that ran.
fn run_subnormal(
    dev: &Arc<CudaDevice>,
    ws: &mut GemmWorkspace,
    p: &Problem,
    m: usize,
    splits: Option<usize>,
    subnormal: bool,
    what: &str,
) -> (Vec<f16>, &'static str) {
    std::env::set_var(SUBNORMAL_ENV, if subnormal { "1" } else { "0" });
    let n = p.weight.n;
    let mut c = dev.alloc_zeros::<f16>("C", m * n).expect("alloc C");
    dev.write(&mut c, &vec![f16::NAN; m * n]).expect("poison");
    let opts = GemmOptions {
        path: GemmPath::WgmmaWs,
        splits,
    };
    let plan = int4_gemm(dev, &p.a, m, &p.weight, &mut c, ws, opts).expect("launch");
    let got = dev.download(&c).expect("download");
    let label = format!("{what} subnormal={subnormal} {plan:?} seed={}", p.seed);
    let rel = rel_l2_all_finite(&got, &p.want, n, &label);
    assert!(rel < REL_L2_TOL, "{label}: rel L2 error {rel:.3e}");
    println!("PASS int4 wgmma-ws {label} rel_l2={rel:.2e}");
    (got, plan.kernel)
}

/// The subnormal dequantisation (docs/CUDA.md change 51): split-K entries
/// `_n` on f16 weights whose scales fit its exact range. Each case runs
/// with it and without it (`MARLIN_WGMMA_WS_SUBNORMAL=0`), both against
/// the f64 reference; symmetric weights must give bit-identical outputs
/// both ways (the same roundings, scaled by 2^-m). Cases: M = 257 and
/// 1000, groups 32 / 64 / 128 / per channel, zero points, forced splits,
/// K not a multiple of 64; then scales at the edges of the exact range
/// (taken), just past them and far below (refused: the two-step entries
/// run), and large scales (shift 14).
#[test]
fn wgmma_ws_subnormal_dequant_matches_two_step() {
    let Some(dev) = hopper() else { return };
    let mut ws = GemmWorkspace::new(&dev).expect("workspace");
    std::env::set_var(STREAM_K_ENV, "0");
    let cases: [Case; 8] = [
        (257, 328, 2048, 128, false, None),
        (1000, 256, 2048, 128, false, None),
        (257, 200, 1000, 128, true, None),
        (257, 256, 1536, 64, false, Some(3)),
        (1000, 200, 990, 32, true, Some(2)),
        (257, 256, 999, 0, false, Some(2)),
        (300, 256, 2048, 0, true, None),
        (1000, 328, 1024, 64, true, None),
    ];
    for case in cases {
        let (m, n, k, group, asym, splits) = case;
        let p = random_problem(&dev, (m, n, k, group, asym), fresh_seed(), 0x5A5A);
        // random_int4's scales lie in [0.002, 0.022): shift 3.
        assert_eq!(p.weight.subnormal_shift(), Some(3), "{case:?}");
        let what = format!("{case:?}");
        let (new, k_new) = run_subnormal(&dev, &mut ws, &p, m, splits, true, &what);
        let (old, k_old) = run_subnormal(&dev, &mut ws, &p, m, splits, false, &what);
        assert!(
            subnormal_kernel(k_new) && !subnormal_kernel(k_old),
            "{k_new} / {k_old}"
        );
        if !asym {
            assert!(
                bit_identical(&new, &old),
                "{case:?} seed={}: subnormal and two-step outputs differ",
                p.seed
            );
        }
    }
    // Scale ranges (g128 symmetric, M = 257, N = 256, K = 1024): (scale
    // f16 bits the draws are spread over, the shift expected).
    const MAX_AT_3: u16 = 0x27FF; // 65504 * 2^-21: the largest s at shift 3
    const MIN_AT_3: u16 = 0x1000; // 2^-11: the smallest s at shift 3
    let ranges: [(&str, u16, u16, Option<i32>); 4] = [
        ("edges of shift 3", MIN_AT_3, MAX_AT_3, Some(3)),
        ("one below the edge", MIN_AT_3 - 1, MAX_AT_3, None),
        ("large [1, 60]", 0x3C00, 0x5380, Some(14)),
        ("tiny [2^-20, 2^-18]", 0x0010, 0x0040, None),
    ];
    for (what, lo, hi, shift) in ranges {
        let seed = fresh_seed();
        let mut w = random_int4(256, 1024, 128, false, seed);
        let count = w.scales.len();
        for (i, s) in w.scales.iter_mut().enumerate() {
            // Both edges present, a few zero scales, the rest between.
            let bits = match i {
                0 => lo,
                1 => hi,
                _ if i % 97 == 5 => 0,
                _ => {
                    let draw = (i as u64).wrapping_mul(0x9E37_79B9).wrapping_add(seed);
                    lo + (draw % u64::from(hi - lo + 1)) as u16
                }
            };
            *s = f16::from_bits(bits).to_f32();
        }
        assert!(count > 2);
        let p = problem_from_quant(&dev, &w, 257, seed, 0x7E7E);
        assert_eq!(p.weight.subnormal_shift(), shift, "{what}");
        let (new, k_new) = run_subnormal(&dev, &mut ws, &p, 257, None, true, what);
        let (old, k_old) = run_subnormal(&dev, &mut ws, &p, 257, None, false, what);
        assert_eq!(subnormal_kernel(k_new), shift.is_some(), "{what}: {k_new}");
        assert!(!subnormal_kernel(k_old), "{what}: {k_old}");
        assert!(
            bit_identical(&new, &old),
            "{what} seed={seed}: subnormal and two-step outputs differ"
        );
    }
    std::env::remove_var(SUBNORMAL_ENV);
    std::env::remove_var(STREAM_K_ENV);
}

/// The cluster reduction of the split-K form (docs/CUDA.md change 67):
/// every variant forced with 2..8 splits (each split's tile summed through
/// distributed shared memory by the cluster's blocks, a share of the rows
/// below M each; splits past those rows store nothing) against the ticket
/// reduction of the same plan: both against the f64 reference, the two
/// outputs bit-identical (the same split order), and the cluster launch
/// counted. M = 17 (one row pair of 16 and a second of 1 row), 100, 128,
/// 300 (a token block of 44 rows); N = 328 (a block whose second consumer
/// warpgroup has no tile); zero points and groups of 64 with K = 1000.
#[test]
fn wgmma_ws_cluster_reduction_matches_ticket() {
    let Some(dev) = hopper() else { return };
    let mut ws = GemmWorkspace::new(&dev).expect("workspace");
    std::env::set_var(STREAM_K_ENV, "0");
    let shapes: [(usize, usize, usize, usize, bool); 5] = [
        (17, 328, 2048, 128, false),
        (100, 256, 4096, 128, false),
        (128, 328, 2048, 128, false),
        (300, 200, 1000, 64, true),
        (17, 200, 1000, 64, true),
    ];
    let mut checks = 0usize;
    for (m, n, k, group, asym) in shapes {
        let p = random_problem(&dev, (m, n, k, group, asym), fresh_seed(), 0x3C3C);
        for variant in ["t64x1", "t64x2", "t128x1", "t128x2"] {
            std::env::set_var(VARIANT_ENV, variant);
            for splits in [2usize, 3, 5, 8] {
                let opts = GemmOptions {
                    path: GemmPath::WgmmaWs,
                    splits: Some(splits),
                };
                let mut outs = Vec::new();
                for cluster in [true, false] {
                    set_ws_cluster_override(Some(cluster));
                    let before = ws_cluster_launches();
                    let mut c = dev.alloc_zeros::<f16>("C", m * n).expect("alloc C");
                    dev.write(&mut c, &vec![f16::NAN; m * n]).expect("poison");
                    let plan =
                        int4_gemm(&dev, &p.a, m, &p.weight, &mut c, &mut ws, opts).expect("launch");
                    assert_eq!(plan.splits, splits, "{plan:?}");
                    let clustered = ws_cluster_launches() > before;
                    assert_eq!(
                        clustered, cluster,
                        "{variant} M={m} N={n} {plan:?}: cluster launch"
                    );
                    let got = dev.download(&c).expect("download");
                    let label = format!(
                        "M={m} N={n} K={k} g={group} asym={asym} {variant} splits={splits} cluster={cluster} seed={}",
                        p.seed
                    );
                    let rel = rel_l2_all_finite(&got, &p.want, n, &label);
                    assert!(rel < REL_L2_TOL, "{label}: rel L2 error {rel:.3e}");
                    outs.push(got);
                    checks += 1;
                }
                assert!(
                    bit_identical(&outs[0], &outs[1]),
                    "M={m} N={n} {variant} splits={splits} seed={}: cluster and ticket reductions differ",
                    p.seed
                );
            }
        }
    }
    set_ws_cluster_override(None);
    std::env::remove_var(VARIANT_ENV);
    std::env::remove_var(STREAM_K_ENV);
    println!(
        "PASS wgmma-ws cluster reduction: {checks} checks, bit-identical to the ticket reduction"
    );
}
