//! INT4 GEMM on the GPU against the f64 CPU reference. These need a CUDA GPU
//! and are `#[ignore]`d; `scripts/gpu_entry.sh` runs them with `--ignored`.
//! Fresh random inputs every run (seeded from the clock, printed on failure),
//! the output poisoned with NaN before every launch.
#![cfg(feature = "cuda")]

mod common;
use common::fresh_seed;

use std::sync::Arc;

use half::f16;
use marlin_cuda::int4::gemm::{
    decode_shape, int4_gemm, int4_gemm_prepared, set_decode_shape_override, whole_column_plan,
    GemmOptions, GemmPath, GemmWorkspace, Int4Weight,
};
use marlin_cuda::int4::pack::pack_int4;
use marlin_cuda::int4::random::{hashed_int4, random_activations, random_int4};
use marlin_cuda::int4::reference::{dequantize_int4_ref, matmul_ref};
use marlin_cuda::{CudaDevice, CudaError};

/// f16 weights and output, fp32 accumulation: the error is dominated by
/// f16 rounding of the output and of dequantized weights (2^-11 relative).
const REL_L2_TOL: f64 = 2e-3;

fn device() -> Arc<CudaDevice> {
    CudaDevice::new(0).expect("a CUDA device (these tests run on the GPU machine)")
}

#[allow(clippy::too_many_arguments)]
fn check(
    dev: &Arc<CudaDevice>,
    ws: &mut GemmWorkspace,
    m: usize,
    n: usize,
    k: usize,
    group: usize,
    asym: bool,
    opts: GemmOptions,
) {
    let seed = fresh_seed();
    let a_host = random_activations(m, k, seed ^ 0xA5A5);
    check_acts(dev, ws, m, (n, k, group, asym), opts, seed, &a_host, "");
}

/// [`check`] of the weight (N, K, group, zero points) made from `seed`
/// with the given activations (`what` names them in messages).
#[allow(clippy::too_many_arguments)]
fn check_acts(
    dev: &Arc<CudaDevice>,
    ws: &mut GemmWorkspace,
    m: usize,
    weight: (usize, usize, usize, bool),
    opts: GemmOptions,
    seed: u64,
    a_host: &[f16],
    what: &str,
) {
    let (n, k, group, asym) = weight;
    let w = random_int4(n, k, group, asym, seed);
    let w_ref = dequantize_int4_ref(&w).expect("reference dequant");
    let a_ref: Vec<f64> = a_host.iter().map(|v| f64::from(v.to_f32())).collect();
    let want = matmul_ref(&a_ref, &w_ref, m, n, k);

    let wd = Int4Weight::from_quant(dev, &w).expect("upload");
    let a = dev.upload("A", a_host).expect("upload A");
    let mut c = dev.alloc_zeros::<f16>("C", m * n).expect("alloc C");
    for launch in 0..2 {
        dev.write(&mut c, &vec![f16::NAN; m * n]).expect("poison");
        let plan = int4_gemm(dev, &a, m, &wd, &mut c, ws, opts).expect("launch");
        let got = dev.download(&c).expect("download");
        let mut err2 = 0f64;
        let mut ref2 = 0f64;
        for (i, (g, r)) in got.iter().zip(&want).enumerate() {
            let g = f64::from(g.to_f32());
            assert!(
                g.is_finite(),
                "M={m} N={n} K={k} g={group} asym={asym} {what} {plan:?} seed={seed}: C[{}, {}] = {g} (not written or overflow)",
                i / n,
                i % n
            );
            err2 += (g - r) * (g - r);
            ref2 += r * r;
        }
        let rel = (err2 / ref2.max(1e-30)).sqrt();
        assert!(
            rel < REL_L2_TOL,
            "M={m} N={n} K={k} g={group} asym={asym} {what} {plan:?} seed={seed} launch {launch}: rel L2 error {rel:.3e}"
        );
        println!(
            "PASS int4 {:?} M={m} N={n} K={k} g={group} asym={asym} {what} splits={} rel_l2={rel:.2e}",
            plan.path, plan.splits
        );
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn int4_gemm_matches_reference() {
    let dev = device();
    let mut ws = GemmWorkspace::new(&dev).expect("workspace");
    let paths = [
        GemmPath::Auto,
        GemmPath::Fused,
        GemmPath::FusedGeneral,
        GemmPath::DequantCublas,
    ];
    for &m in &[1, 3, 17, 64, 256] {
        for path in paths {
            let opts = GemmOptions { path, splits: None };
            // g128 symmetric, K a multiple of the tile.
            check(&dev, &mut ws, m, 256, 2048, 128, false, opts);
            // g128 asymmetric, N not a multiple of 64, K not a multiple of 64.
            check(&dev, &mut ws, m, 200, 1000, 128, true, opts);
            // Groups of 32 (two scale groups per 64-chunk), both zero modes;
            // K = 990 ends inside a chunk and a group.
            check(&dev, &mut ws, m, 256, 2048, 32, false, opts);
            check(&dev, &mut ws, m, 200, 990, 32, true, opts);
        }
    }
}

/// Activations at the edges of f16 for the decode kernels (written for
/// change 53's subnormal-code experiment, docs/CUDA.md, kept as a stress
/// test of the kernels in the tree): `tiny` (every |a| in [2^-24, 2^-10],
/// f16 subnormals among them), `positive` (all in [0.5, 1.5]: no
/// cancellation between tokens' products to hide an offset error), `wide`
/// (magnitudes 2^-20 .. 2^10, both signs), `huge` (a few of 5000 per row).
fn extreme_activations(kind: &str, m: usize, k: usize, seed: u64) -> Vec<f16> {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..m * k)
        .map(|i| {
            let (u, sign) = (next(), if next() < 0.5 { -1.0 } else { 1.0 });
            let v = match kind {
                "tiny" => sign * (2f64).powf(-24.0 + 14.0 * u),
                "positive" => 0.5 + u,
                "wide" => sign * (2f64).powf(-20.0 + 30.0 * u),
                _ => {
                    if i % 997 == 5 {
                        sign * 5000.0
                    } else {
                        sign * u
                    }
                }
            };
            f16::from_f64(v)
        })
        .collect()
}

/// The decode kernels (M <= 8: the paired and lean loops of the one-tile
/// kernels) against the f64 reference on activations at the edges of f16
/// (see [`extreme_activations`]): M = 1, 3, 8, group 128 (pairs inside a
/// group), 64 (one chunk per group), 192 (a K slice may start inside a
/// group), per channel; K not a multiple of 64 (odd chunk counts per warp);
/// the whole-column plan (N = 14336).
#[test]
#[ignore = "needs a CUDA GPU"]
fn int4_decode_extreme_activations_match_reference() {
    let dev = device();
    let mut ws = GemmWorkspace::new(&dev).expect("workspace");
    for kind in ["tiny", "positive", "wide", "huge"] {
        for &m in &[1, 3, 8] {
            for &(n, k, group) in &[
                (256, 2048, 128),
                (192, 1000, 128),
                (256, 2048, 64),
                (256, 1536, 192),
                (128, 1472, 0),
                (14336, 1000, 128),
            ] {
                let seed = fresh_seed();
                let a = extreme_activations(kind, m, k, seed ^ 0x5EED);
                let opts = GemmOptions::default();
                check_acts(&dev, &mut ws, m, (n, k, group, false), opts, seed, &a, kind);
            }
        }
    }
    println!("PASS int4 decode kernels on extreme activations");
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn int4_gemm_awkward_shapes_and_splits() {
    let dev = device();
    let mut ws = GemmWorkspace::new(&dev).expect("workspace");
    // Odd K (unaligned activation rows), per-channel, both zero modes.
    for path in [
        GemmPath::Fused,
        GemmPath::FusedGeneral,
        GemmPath::DequantCublas,
    ] {
        let opts = GemmOptions { path, splits: None };
        check(&dev, &mut ws, 3, 96, 1001, 0, false, opts);
        check(&dev, &mut ws, 12, 96, 1001, 0, false, opts);
        check(&dev, &mut ws, 17, 96, 1001, 0, true, opts);
    }
    // Group 64, forced split-K factors including 1 (direct f16 epilogue).
    for &s in &[1, 2, 7] {
        let opts = GemmOptions {
            path: GemmPath::Fused,
            splits: Some(s),
        };
        check(&dev, &mut ws, 5, 128, 1536, 64, true, opts);
        check(&dev, &mut ws, 16, 192, 1536, 128, true, opts);
        check(&dev, &mut ws, 33, 320, 1536, 128, false, opts);
        check(&dev, &mut ws, 9, 128, 1536, 32, false, opts);
        check(&dev, &mut ws, 24, 128, 1536, 32, true, opts);
        // Group 192: a split may start in the middle of a scale group.
        check(&dev, &mut ws, 1, 128, 1536, 192, false, opts);
    }
    // M larger than one block row (several m blocks) with split-K.
    let opts = GemmOptions {
        path: GemmPath::Fused,
        splits: Some(4),
    };
    check(&dev, &mut ws, 130, 64, 4096, 128, false, opts);
}

/// Decode-kernel block shapes the rule does not take today (several column
/// blocks AND several K slices per block, with and without split-K), forced
/// through the benchmark's thread-local override: the kernel must be right
/// for every shape the override accepts.
#[test]
#[ignore = "needs a CUDA GPU"]
fn int4_decode_block_shapes_match_reference() {
    let dev = device();
    let mut ws = GemmWorkspace::new(&dev).expect("workspace");
    let opts = GemmOptions {
        path: GemmPath::Fused,
        splits: None,
    };
    for &(nbpb, ks, sp) in &[
        (4, 2, 2),
        (2, 4, 2),
        (2, 4, 1),
        (16, 1, 4),
        (4, 4, 1),
        (2, 2, 4),
        (1, 8, 1),
        (4, 2, 3),
    ] {
        set_decode_shape_override(Some((nbpb, ks, sp)));
        for &m in &[1, 5, 9, 16, 24] {
            // At M <= 16 the override must be taken on the 256 x 2048 weight
            // (16 column blocks, 32 chunks; at M = 24 the 16-warp shape's
            // tile exceeds the shared-memory limit and the rule runs).
            if m <= 16 {
                let probe = Int4Weight::from_quant(&dev, &random_int4(256, 2048, 128, false, 7))
                    .expect("upload");
                assert_eq!(
                    decode_shape(m, &probe, &dev),
                    Some((nbpb, ks, sp)),
                    "shape {nbpb}x{ks}x{sp} not taken at M={m}"
                );
            }
            check(&dev, &mut ws, m, 256, 2048, 128, false, opts);
            // N not a multiple of 64 (12 column blocks), K not a multiple of
            // 64, zero points; groups of 32; group 192 (a K partition may
            // start inside a scale group).
            check(&dev, &mut ws, m, 192, 1000, 128, true, opts);
            check(&dev, &mut ws, m, 256, 2048, 32, false, opts);
            check(&dev, &mut ws, m, 256, 1536, 192, false, opts);
        }
        set_decode_shape_override(None);
    }
    println!("PASS int4 decode kernel with forced block shapes");
}

/// The whole-column decode plan `Auto` takes for wide weights at K <= 4096
/// and M <= 8 (7 or 14 column blocks per block, one block per SM, 1-2 K
/// slices, no split-K): M = 1, 2 (16-stage ring), 5, 8 (8 stages), K not a
/// multiple of 64, odd chunk counts per warp (K = 1000: 16 chunks; 1472:
/// 23), group 64 with zero points, groups of 32.
#[test]
#[ignore = "needs a CUDA GPU"]
fn int4_whole_column_plan_matches_reference() {
    let dev = device();
    let mut ws = GemmWorkspace::new(&dev).expect("workspace");
    let opts = GemmOptions::default();
    // The decode step's own shapes (gate|up 28672x4096, 14336x4096: the
    // plans Auto takes there, 14 x 1 x 1 and 7 x 2 x 1 column blocks x K
    // slices x splits on 132 SMs) at M = 1 and 8, and awkward K at more M.
    let cases: Vec<(usize, (usize, usize, usize, bool))> = [1, 8]
        .iter()
        .flat_map(|&m| {
            [
                (m, (28672, 4096, 128, false)),
                (m, (14336, 4096, 128, false)),
            ]
        })
        .chain([1, 2, 5, 8].iter().flat_map(|&m| {
            [
                (14336, 1000, 128, false),
                (14336, 2048, 128, false),
                (14336, 1472, 64, false),
                (28672, 1024, 64, true),
                (14336, 990, 32, true),
            ]
            .map(|shape| (m, shape))
        }))
        .collect();
    for &(m, (n, k, group, asym)) in &cases {
        let probe =
            Int4Weight::from_quant(&dev, &random_int4(n, k, group, asym, 7)).expect("upload");
        // Weights with groups of >= 64 (symmetric or with zero points)
        // must take the plan; groups of 32 with zero points may not fit
        // its shared memory: then the rule or stream-K runs, checked
        // all the same.
        if group >= 64 {
            assert!(
                whole_column_plan(m, &probe, &dev),
                "M={m} {n}x{k} g{group}: no whole-column plan"
            );
        }
        check(&dev, &mut ws, m, n, k, group, asym, opts);
    }
    println!("PASS int4 whole-column decode plan");
}

/// A decode-plan case: (M, N, K, group, zero points, decode shape
/// expected on 132 SMs: column blocks x K slices x splits).
type PlanCase = (usize, usize, usize, usize, bool, (usize, usize, usize));

/// Each case's decode shape (asserted where `assert_shapes`; with
/// `whole_column`, also whether Auto takes the whole-column plan, i.e.
/// nbpb >= 7) and its result against the f64 reference (fresh inputs).
fn check_decode_plans(
    dev: &Arc<CudaDevice>,
    ws: &mut GemmWorkspace,
    cases: &[PlanCase],
    assert_shapes: bool,
    whole_column: bool,
    probe_seed: u64,
) {
    for &(m, n, k, group, asym, want) in cases {
        let probe = Int4Weight::from_quant(dev, &random_int4(n, k, group, asym, probe_seed))
            .expect("upload");
        let shape = decode_shape(m, &probe, dev);
        let whole = whole_column_plan(m, &probe, dev);
        println!("M={m} {n}x{k} g{group} z={asym}: shape {shape:?}, whole column {whole}");
        if assert_shapes {
            assert_eq!(
                shape,
                Some(want),
                "M={m} {n}x{k} g{group} z={asym}: decode shape"
            );
            if whole_column {
                assert_eq!(
                    whole,
                    want.0 >= 7,
                    "M={m} {n}x{k} g{group} z={asym}: whole column"
                );
            }
        }
        check(dev, ws, m, n, k, group, asym, GemmOptions::default());
    }
}

/// The decode plans of sm_90's wider shared memory limit (change 48;
/// `MARLIN_INT4_DEC_WIDE_SMEM=0` or another GPU keeps session 7's plans and
/// these cases run those instead, checked all the same): the whole-column
/// plan at M = 9..16 (two token tiles, the 8-stage `w4a16_dec_m16` body),
/// at M = 3, 4 of N = 28672 (16-stage ring), at M = 5..8 with K beyond
/// 4096 (odd chunk counts per warp: K = 5000 is 79 chunks, 2 K slices of
/// 39 / 40) and with two K splits (M = 14, 16 at K = 6000: one pass's
/// activation tile does not fit) or three (M = 16 at 28672x8192 with
/// groups of 32: two splits' scale rows do not fit), zero points and
/// groups of 32; and 2
/// column blocks x 4 K slices at M = 3, 4 of N = 4096, K = 14336.
#[test]
#[ignore = "needs a CUDA GPU"]
fn int4_wide_decode_plans_match_reference() {
    let dev = device();
    let mut ws = GemmWorkspace::new(&dev).expect("workspace");
    let wide = dev.compute_capability() == (9, 0)
        && std::env::var("MARLIN_INT4_DEC_WIDE_SMEM").as_deref() != Ok("0");
    // The expected shapes are those of 132 SMs (H100 SXM); other sm_90
    // parts check the results only.
    let assert_shapes = wide && dev.sm_count() == 132;
    // (M, N, K, group, zero points, decode shape expected under the wide
    // limit: column blocks x K slices x splits; whole column: nbpb >= 7)
    let cases: [PlanCase; 12] = [
        (16, 14336, 4096, 128, false, (7, 2, 1)),
        (9, 14336, 1000, 128, false, (7, 1, 1)),
        (12, 14336, 2048, 64, true, (7, 2, 1)),
        (13, 14336, 990, 32, true, (7, 1, 1)),
        (3, 28672, 4096, 128, false, (14, 1, 1)),
        (4, 28672, 2048, 64, true, (14, 1, 1)),
        (8, 14336, 5000, 128, false, (7, 2, 1)),
        (16, 14336, 6000, 128, false, (7, 2, 2)),
        (14, 14336, 6000, 32, true, (7, 2, 2)),
        // Groups of 32 at 28672x8192: two splits' scale rows do not fit.
        (16, 28672, 8192, 32, false, (14, 1, 3)),
        (3, 4096, 14336, 128, false, (2, 4, 1)),
        (4, 4096, 14336, 64, true, (2, 4, 1)),
    ];
    check_decode_plans(&dev, &mut ws, &cases, assert_shapes, true, 7);
    println!("PASS int4 wide decode plans (wide shared memory: {wide})");
}

/// The small-N M <= 4 decode plan's deeper K-slice candidate (docs/CUDA.md
/// change 50 (e)): 8 K slices where they keep >= 24 chunks per warp and
/// one wave of blocks (K = 14336 at N = 4096), with groups of 128 and 64,
/// zero points, N and K not multiples of 64; and the rule's 4 slices where
/// the deeper plan would need two waves (M = 2; groups of 32 with zero
/// points, whose scale rows leave one block per SM) or has too few chunks
/// per warp (K = 8192).
#[test]
#[ignore = "needs a CUDA GPU"]
fn int4_deep_slice_decode_plans_match_reference() {
    let dev = device();
    let mut ws = GemmWorkspace::new(&dev).expect("workspace");
    // The expected shapes are those of 132 SMs with the knob on.
    let assert_shapes =
        dev.sm_count() == 132 && std::env::var("MARLIN_INT4_DEC_DEEP_SLICES").as_deref() != Ok("0");
    let cases: [PlanCase; 6] = [
        (1, 4096, 14336, 128, false, (1, 8, 1)),
        (1, 4100, 14300, 128, false, (1, 8, 1)),
        (1, 4096, 14336, 64, true, (1, 8, 1)),
        (1, 4096, 14336, 32, true, (1, 4, 1)),
        (2, 4096, 14336, 128, false, (1, 4, 1)),
        (1, 4096, 8192, 128, false, (1, 4, 1)),
    ];
    check_decode_plans(&dev, &mut ws, &cases, assert_shapes, false, 11);
    println!("PASS int4 deep-slice decode plans");
}

/// The shared-activation kernel (`GemmPath::SharedA`, docs/CUDA.md change
/// 77) at the M it is built for (17..64: 32- and 64-row blocks) and around
/// it: N not a multiple of a column block (warps without columns), K ending
/// inside a chunk, groups of 32 with zero points, per-channel scales, forced
/// and automatic splits, several row blocks. Run once more with
/// `MARLIN_INT4_SA_NBW=2` by scripts/gpu_entry.sh (two n16 blocks per warp).
#[test]
#[ignore = "needs a CUDA GPU"]
fn int4_shared_a_matches_reference() {
    let dev = device();
    let mut ws = GemmWorkspace::new(&dev).expect("workspace");
    for splits in [None, Some(1), Some(3)] {
        let opts = GemmOptions {
            path: GemmPath::SharedA,
            splits,
        };
        for &m in &[17, 32, 33, 64] {
            check(&dev, &mut ws, m, 256, 2048, 128, false, opts);
            check(&dev, &mut ws, m, 200, 1000, 128, true, opts);
            check(&dev, &mut ws, m, 328, 2048, 32, true, opts);
            check(&dev, &mut ws, m, 96, 1536, 0, false, opts);
        }
    }
    let opts = |splits| GemmOptions {
        path: GemmPath::SharedA,
        splits,
    };
    check(&dev, &mut ws, 3, 512, 4096, 128, false, opts(None));
    check(&dev, &mut ws, 100, 512, 4096, 128, false, opts(Some(4)));
    check(&dev, &mut ws, 130, 64, 4096, 192, true, opts(None));
    // Activation rows that are not 16-byte aligned are refused by name.
    let w = Int4Weight::from_quant(&dev, &random_int4(64, 1001, 0, false, fresh_seed()))
        .expect("upload");
    let a = dev
        .upload("A", &random_activations(17, 1001, fresh_seed()))
        .expect("A");
    let mut c = dev.alloc_zeros::<f16>("C", 17 * 64).expect("C");
    match int4_gemm(&dev, &a, 17, &w, &mut c, &mut ws, opts(None)) {
        Err(CudaError::Unsupported(msg)) => assert!(msg.contains("multiple of 8"), "{msg}"),
        other => panic!("K = 1001 on the shared-activation kernel: {other:?}"),
    }
    println!("PASS int4 shared-activation kernel refuses K = 1001");
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn int4_gemm_is_deterministic() {
    let dev = device();
    let mut ws = GemmWorkspace::new(&dev).expect("workspace");
    let (m, n, k) = (4, 512, 4096);
    let w =
        Int4Weight::from_quant(&dev, &random_int4(n, k, 128, false, fresh_seed())).expect("upload");
    let a = dev
        .upload("A", &random_activations(m, k, fresh_seed()))
        .expect("A");
    let mut c = dev.alloc_zeros::<f16>("C", m * n).expect("C");
    let opts = GemmOptions {
        path: GemmPath::Fused,
        splits: Some(8),
    };
    int4_gemm(&dev, &a, m, &w, &mut c, &mut ws, opts).expect("launch");
    let first = dev.download(&c).expect("download");
    for _ in 0..5 {
        dev.write(&mut c, &vec![f16::NAN; m * n]).expect("poison");
        int4_gemm(&dev, &a, m, &w, &mut c, &mut ws, opts).expect("launch");
        let again = dev.download(&c).expect("download");
        assert!(first
            .iter()
            .zip(&again)
            .all(|(x, y)| x.to_bits() == y.to_bits()));
    }
    println!("PASS int4 split-K reduction is bit-deterministic");
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn shape_errors_are_reported() {
    let dev = device();
    let mut ws = GemmWorkspace::new(&dev).expect("workspace");
    let w = Int4Weight::from_quant(&dev, &random_int4(64, 256, 128, false, 1)).expect("upload");
    let a = dev.upload("A", &random_activations(2, 256, 2)).expect("A");
    let mut c = dev.alloc_zeros::<f16>("C", 64).expect("C");
    // M = 2 needs 128 output elements.
    assert!(matches!(
        int4_gemm(&dev, &a, 2, &w, &mut c, &mut ws, GemmOptions::default()),
        Err(CudaError::Shape(_))
    ));
    // An allocation larger than the device is an error naming the sizes.
    let err = dev
        .alloc_zeros::<u8>("too big", 1usize << 50)
        .expect_err("must not fit");
    assert!(matches!(err, CudaError::OutOfMemory { .. }), "{err}");
    println!("PASS errors: {err}");
}

/// The device fill writes exactly the packed form of the host tensor
/// `hashed_int4` (codes, scales, padding), for groups and per channel.
#[test]
#[ignore = "needs a CUDA GPU"]
fn random_on_device_matches_host_pack() {
    let dev = device();
    let seed = fresh_seed();
    for &(n, k, group) in &[
        (200, 1000, 128),
        (64, 4096, 0),
        (130, 384, 64),
        (4096, 4096, 128),
    ] {
        let w = Int4Weight::random_on_device(&dev, n, k, group, seed).expect("fill");
        let (words, scales) = w.download_packed(&dev).expect("download");
        let want = pack_int4(&hashed_int4(n, k, group, seed)).expect("pack");
        assert_eq!(w.weight_bytes(), want.weight_bytes());
        assert!(want.neg_zero_scales.is_none());
        let bad_words = words
            .iter()
            .zip(&want.words)
            .filter(|(a, b)| a != b)
            .count();
        let bad_scales = scales
            .iter()
            .zip(&want.scales)
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(words.len(), want.words.len());
        assert_eq!(scales.len(), want.scales.len());
        assert!(
            bad_words == 0 && bad_scales == 0,
            "N={n} K={k} g={group} seed={seed}: {bad_words} words, {bad_scales} scales differ"
        );
        println!("PASS random_on_device N={n} K={k} g={group} matches the host pack");
    }
    assert!(matches!(
        Int4Weight::random_on_device(&dev, 64, 256, 96, 1),
        Err(CudaError::Unsupported(_))
    ));
}

/// The capture-safe entry point on views inside larger buffers: recorded in
/// a CUDA graph (global capture mode: any allocation or synchronisation in
/// the recorded calls fails the capture), replayed on poisoned outputs and
/// compared with the f64 reference; an unprepared workspace is an error.
#[test]
#[ignore = "needs a CUDA GPU"]
fn prepared_gemm_records_in_a_cuda_graph() {
    use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
    let dev = device();
    let seed = fresh_seed();
    let (n, k) = (320, 2048);
    let q = hashed_int4(n, k, 128, seed);
    let w = Int4Weight::random_on_device(&dev, n, k, 128, seed).expect("fill");
    let w_ref = marlin_cuda::int4::reference::dequantize_int4_ref(&q).expect("ref");
    let ms = [1usize, 8, 17, 64];
    let max_m = 64;
    let a_host = random_activations(max_m, k, seed ^ 7);
    // A and C live at an offset inside larger buffers (views).
    let a_off = 3 * k;
    let mut a_big = vec![f16::ZERO; a_off + max_m * k];
    a_big[a_off..].copy_from_slice(&a_host);
    let a = dev.upload("A", &a_big).expect("A");
    let c_len = ms.iter().map(|m| m * n).sum::<usize>();
    let mut c = dev.alloc_zeros::<f16>("C", c_len + 5).expect("C");
    let mut ws = GemmWorkspace::new(&dev).expect("workspace");
    let opts = GemmOptions::default();
    {
        let a_view = a.slice(a_off..);
        let mut c_view = c.slice_mut(5..);
        assert!(
            int4_gemm_prepared(&dev, &a_view, 1, &w, &mut c_view, &mut ws, opts).is_err(),
            "an unprepared workspace must be an error"
        );
    }
    for &m in &ms {
        ws.prepare(&dev, &w, m, opts).expect("prepare");
    }
    dev.synchronize().expect("sync");
    let stream = dev.stream().clone();
    stream
        .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_GLOBAL)
        .expect("begin capture");
    let mut at = 5;
    let mut recorded = Ok(());
    for &m in &ms {
        let a_view = a.slice(a_off..a_off + m * k);
        let mut c_view = c.slice_mut(at..at + m * n);
        if let Err(e) = int4_gemm_prepared(&dev, &a_view, m, &w, &mut c_view, &mut ws, opts) {
            recorded = Err(e);
            break;
        }
        at += m * n;
    }
    let graph = stream
        .end_capture(CUgraphInstantiate_flags(0))
        .expect("end capture");
    recorded.expect("record the GEMMs");
    let graph = graph.expect("a graph");
    for replay in 0..2 {
        dev.write(&mut c, &vec![f16::NAN; c_len + 5])
            .expect("poison");
        graph.launch().expect("graph launch");
        let got = dev.download(&c).expect("download");
        let mut at = 5;
        for &m in &ms {
            let a_ref: Vec<f64> = a_host[..m * k]
                .iter()
                .map(|v| f64::from(v.to_f32()))
                .collect();
            let want = matmul_ref(&a_ref, &w_ref, m, n, k);
            let (mut e2, mut r2) = (0f64, 0f64);
            for (g, r) in got[at..at + m * n].iter().zip(&want) {
                let g = f64::from(g.to_f32());
                assert!(g.is_finite(), "graph M={m}: non-finite output");
                e2 += (g - r) * (g - r);
                r2 += r * r;
            }
            let rel = (e2 / r2.max(1e-30)).sqrt();
            assert!(
                rel < REL_L2_TOL,
                "graph replay {replay} M={m} seed={seed}: rel L2 {rel:.3e}"
            );
            println!("PASS int4 graph replay {replay} M={m} rel_l2={rel:.2e}");
            at += m * n;
        }
    }
}

#[test]
fn without_a_gpu_the_device_is_an_error_not_a_panic() {
    if marlin_cuda::is_available() {
        assert!(CudaDevice::new(0).is_ok());
    } else {
        let err = CudaDevice::new(0).expect_err("no GPU here");
        assert!(matches!(err, CudaError::NotAvailable(_)), "{err}");
    }
}

/// The Hopper bulk-copy decode kernel (`GemmPath::Bulk`, M <= 8) against the
/// reference: M = 1, 3, 8; N not a multiple of 64; odd K (unaligned rows,
/// a last chunk ending mid-vector); groups of 64, 128, 192 (a split starts
/// mid-group) and per channel; direct (1 split) and split-K epilogues; the
/// capture-safe entry after `prepare`; bit-determinism. Below compute
/// capability 9.0 the path must be refused, never launched.
#[test]
#[ignore = "needs a CUDA GPU"]
fn int4_bulk_matches_reference() {
    let dev = device();
    let mut ws = GemmWorkspace::new(&dev).expect("workspace");
    let bulk = |splits| GemmOptions {
        path: GemmPath::Bulk,
        splits,
    };
    let w_sym = Int4Weight::from_quant(&dev, &random_int4(64, 256, 128, false, 3)).expect("upload");
    let a = dev.upload("A", &random_activations(1, 256, 4)).expect("A");
    let mut c = dev.alloc_zeros::<f16>("C", 64).expect("C");
    if !marlin_cuda::int4::bulk::bulk_supported(&dev) {
        let err = int4_gemm(&dev, &a, 1, &w_sym, &mut c, &mut ws, bulk(None))
            .expect_err("the bulk path needs sm_90");
        assert!(matches!(err, CudaError::Unsupported(_)), "{err}");
        println!("SKIP bulk kernel below sm_90 (refused: {err})");
        return;
    }
    // Unsupported operands are refused, not launched.
    let w_asym = Int4Weight::from_quant(&dev, &random_int4(64, 256, 128, true, 5)).expect("upload");
    for (what, m, w) in [("zero points", 1, &w_asym), ("M = 9", 9, &w_sym)] {
        let a9 = dev.upload("A", &random_activations(m, 256, 6)).expect("A");
        let mut c9 = dev.alloc_zeros::<f16>("C", m * 64).expect("C");
        let err = int4_gemm(&dev, &a9, m, w, &mut c9, &mut ws, bulk(None)).expect_err(what);
        assert!(matches!(err, CudaError::Unsupported(_)), "{what}: {err}");
    }
    for &m in &[1, 3, 8] {
        check(&dev, &mut ws, m, 256, 2048, 128, false, bulk(None));
        check(&dev, &mut ws, m, 200, 1000, 128, false, bulk(None));
        check(&dev, &mut ws, m, 96, 1001, 0, false, bulk(None));
        check(&dev, &mut ws, m, 4096, 4096, 128, false, bulk(None));
        for &s in &[1, 2, 7] {
            check(&dev, &mut ws, m, 128, 1536, 64, false, bulk(Some(s)));
            check(&dev, &mut ws, m, 192, 1536, 192, false, bulk(Some(s)));
            check(&dev, &mut ws, m, 320, 1531, 128, false, bulk(Some(s)));
        }
    }
    // Capture-safe entry: after prepare, int4_gemm_prepared only launches;
    // split-K results are bit-identical across launches.
    let (m, n, k) = (4, 512, 4096);
    let w =
        Int4Weight::from_quant(&dev, &random_int4(n, k, 128, false, fresh_seed())).expect("upload");
    let a = dev
        .upload("A", &random_activations(m, k, fresh_seed()))
        .expect("A");
    let mut c = dev.alloc_zeros::<f16>("C", m * n).expect("C");
    let opts = bulk(Some(8));
    let plan = ws.prepare(&dev, &w, m, opts).expect("prepare");
    assert_eq!((plan.path, plan.splits), (GemmPath::Bulk, 8));
    let mut first: Option<Vec<f16>> = None;
    for _ in 0..4 {
        dev.write(&mut c, &vec![f16::NAN; m * n]).expect("poison");
        int4_gemm_prepared(
            &dev,
            &a.as_view(),
            m,
            &w,
            &mut c.as_view_mut(),
            &mut ws,
            opts,
        )
        .expect("launch");
        let got = dev.download(&c).expect("download");
        match &first {
            None => first = Some(got),
            Some(f) => assert!(f.iter().zip(&got).all(|(x, y)| x.to_bits() == y.to_bits())),
        }
    }
    println!("PASS int4 bulk kernel (M = 1, 3, 8; odd K; split-K bit-deterministic)");
}
