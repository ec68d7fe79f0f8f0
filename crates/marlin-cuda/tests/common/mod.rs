//! Helpers shared by the GPU tests (the clock seed by all INT4 and GGUF
//! tests; the rest by tests/gpu_int4_wgmma*.rs): device selection with a clean skip, fresh
//! random problems against the f64 CPU reference, output checks, and the
//! CUDA-graph capture of the prepared entry point.

// Each test crate that declares `mod common;` uses a subset of these.
#![allow(dead_code)]

pub mod formats;

use std::sync::Arc;

use cudarc::driver::CudaSlice;
use half::f16;
use marlin_cuda::int4::gemm::{
    int4_gemm, int4_gemm_prepared, GemmOptions, GemmPath, GemmPlan, GemmWorkspace, Int4Weight,
};
use marlin_cuda::int4::random::{random_activations, random_int4};
use marlin_cuda::int4::reference::{dequantize_int4_ref, matmul_ref};
use marlin_cuda::CudaDevice;
use marlin_quant::QuantTensor;

/// Same bound as the other INT4 paths (tests/gpu_int4.rs).
pub const REL_L2_TOL: f64 = 2e-3;

pub fn fresh_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(12345)
}

/// Device 0 when `supported` accepts it, or None (test skipped, saying so)
/// without a GPU or on another compute capability. `what` names the tests.
pub fn hopper(supported: fn(&CudaDevice) -> bool, what: &str) -> Option<Arc<CudaDevice>> {
    match CudaDevice::new(0) {
        Ok(dev) if supported(&dev) => Some(dev),
        Ok(dev) => {
            println!(
                "SKIP {what} tests: {} is not compute capability 9.0",
                dev.name()
            );
            None
        }
        Err(e) => {
            println!("SKIP {what} tests: no CUDA device ({e})");
            None
        }
    }
}

/// One case: (M, N, K, group (0 = per channel), asymmetric, splits).
pub type Case = (usize, usize, usize, usize, bool, Option<usize>);

/// A random INT4 problem on the device and its f64 reference product.
pub struct Problem {
    pub seed: u64,
    pub weight: Int4Weight,
    pub a: CudaSlice<f16>,
    /// (M, N) row-major reference C.
    pub want: Vec<f64>,
}

/// Fresh weights (seed `seed`) and activations (seed `seed ^ a_salt`).
pub fn random_problem(
    dev: &Arc<CudaDevice>,
    (m, n, k, group, asym): (usize, usize, usize, usize, bool),
    seed: u64,
    a_salt: u64,
) -> Problem {
    problem_from_quant(dev, &random_int4(n, k, group, asym, seed), m, seed, a_salt)
}

/// The problem of weight `w` (N = rows, K = cols) with fresh activations
/// (M rows, seed `seed ^ a_salt`) and its f64 reference product.
pub fn problem_from_quant(
    dev: &Arc<CudaDevice>,
    w: &QuantTensor,
    m: usize,
    seed: u64,
    a_salt: u64,
) -> Problem {
    let (n, k) = (w.rows, w.cols);
    let a_host = random_activations(m, k, seed ^ a_salt);
    let w_ref = dequantize_int4_ref(w).expect("reference dequant");
    let a_ref: Vec<f64> = a_host.iter().map(|v| f64::from(v.to_f32())).collect();
    let want = matmul_ref(&a_ref, &w_ref, m, n, k);
    let weight = Int4Weight::from_quant(dev, w).expect("upload");
    let a = dev.upload("A", &a_host).expect("upload A");
    Problem {
        seed,
        weight,
        a,
        want,
    }
}

/// Relative L2 error of `got` (M x N) against `want`; fails (naming the
/// element, with `what`) on a non-finite output: not written, or overflow.
pub fn rel_l2_all_finite(got: &[f16], want: &[f64], n: usize, what: &str) -> f64 {
    let (mut err2, mut ref2) = (0f64, 0f64);
    for (i, (g, r)) in got.iter().zip(want).enumerate() {
        let g = f64::from(g.to_f32());
        assert!(
            g.is_finite(),
            "{what}: C[{}, {}] = {g} (not written or overflow)",
            i / n,
            i % n
        );
        err2 += (g - r) * (g - r);
        ref2 += r * r;
    }
    (err2 / ref2.max(1e-30)).sqrt()
}

pub fn bit_identical(x: &[f16], y: &[f16]) -> bool {
    x.len() == y.len() && x.iter().zip(y).all(|(a, b)| a.to_bits() == b.to_bits())
}

/// One `GemmPath::Auto` launch of `p` for M rows into a NaN-poisoned C,
/// checked against the reference; returns the plan it took and the error.
pub fn run_auto_checked(
    dev: &Arc<CudaDevice>,
    ws: &mut GemmWorkspace,
    p: &Problem,
    m: usize,
    what: &str,
) -> (GemmPlan, f64) {
    let n = p.weight.n;
    let mut c = dev.alloc_zeros::<f16>("C", m * n).expect("alloc C");
    dev.write(&mut c, &vec![f16::NAN; m * n]).expect("poison");
    let plan =
        int4_gemm(dev, &p.a, m, &p.weight, &mut c, ws, GemmOptions::default()).expect("auto");
    let got = dev.download(&c).expect("download");
    let what = format!("{what} {plan:?} seed={}", p.seed);
    let rel = rel_l2_all_finite(&got, &p.want, n, &what);
    assert!(rel < REL_L2_TOL, "{what}: rel L2 error {rel:.3e}");
    (plan, rel)
}

/// Runs `case` twice on the forced `path`; checks both against the
/// reference and that the two outputs are bit-identical (deterministic
/// split-K). With `check_splits`, a forced split count must be the plan's
/// (capped at the number of 64-chunks). `label` names the path in the PASS
/// line.
pub fn check_forced_path(
    dev: &Arc<CudaDevice>,
    ws: &mut GemmWorkspace,
    case: Case,
    path: GemmPath,
    check_splits: bool,
    label: &str,
) {
    let (m, n, k, group, asym, _) = case;
    let p = random_problem(dev, (m, n, k, group, asym), fresh_seed(), 0xA5A5);
    check_forced_path_on(dev, ws, &p, case, path, check_splits, label);
}

/// [`check_forced_path`] on the inputs of `p` (built for `case`'s M, N,
/// K, group and zero points): several launch configurations of one
/// problem share its f64 reference, the slow part of a check on the host.
pub fn check_forced_path_on(
    dev: &Arc<CudaDevice>,
    ws: &mut GemmWorkspace,
    p: &Problem,
    case: Case,
    path: GemmPath,
    check_splits: bool,
    label: &str,
) {
    let (m, n, k, group, asym, splits) = case;
    assert_eq!(
        (p.weight.n, p.weight.k, p.a.len()),
        (n, k, m * k),
        "problem built for another case than {case:?}"
    );
    let seed = p.seed;
    let mut c = dev.alloc_zeros::<f16>("C", m * n).expect("alloc C");
    let opts = GemmOptions { path, splits };
    let mut first: Option<Vec<f16>> = None;
    for launch in 0..2 {
        dev.write(&mut c, &vec![f16::NAN; m * n]).expect("poison");
        let plan = int4_gemm(dev, &p.a, m, &p.weight, &mut c, ws, opts).expect("launch");
        assert_eq!(plan.path, path);
        if let (true, Some(s)) = (check_splits, splits) {
            assert_eq!(plan.splits, s.min(k.div_ceil(64)), "{case:?} {plan:?}");
        }
        let got = dev.download(&c).expect("download");
        let rel = rel_l2_all_finite(&got, &p.want, n, &format!("{case:?} {plan:?} seed={seed}"));
        assert!(
            rel < REL_L2_TOL,
            "{case:?} {plan:?} seed={seed} launch {launch}: rel L2 error {rel:.3e}"
        );
        if let Some(prev) = &first {
            assert!(
                bit_identical(prev, &got),
                "{case:?} {plan:?} seed={seed}: two launches differ"
            );
        } else {
            println!(
                "PASS int4 {label} M={m} N={n} K={k} g={group} asym={asym} kernel={} splits={} rel_l2={rel:.2e}",
                plan.kernel, plan.splits
            );
        }
        first = Some(got);
    }
}

/// Records `int4_gemm_prepared` for every (M, options) of `cases` (N x K
/// weights, group 128 with zero points) into one CUDA graph in global
/// capture mode (no allocation, module load or synchronisation inside) and
/// checks that two replays match eager launches bit for bit.
pub fn check_prepared_in_cuda_graph(
    dev: &Arc<CudaDevice>,
    n: usize,
    k: usize,
    cases: &[(usize, GemmOptions)],
) {
    use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
    let w =
        Int4Weight::from_quant(dev, &random_int4(n, k, 128, true, fresh_seed())).expect("upload");
    let mut runs = Vec::new();
    for &(m, opts) in cases {
        let a = dev
            .upload("A", &random_activations(m, k, fresh_seed()))
            .expect("A");
        let mut want = dev.alloc_zeros::<f16>("C eager", m * n).expect("C");
        let mut ws = GemmWorkspace::new(dev).expect("workspace");
        int4_gemm(dev, &a, m, &w, &mut want, &mut ws, opts).expect("eager");
        let want = dev.download(&want).expect("download");
        let c = dev.alloc_zeros::<f16>("C graph", m * n).expect("C");
        runs.push((m, a, c, ws, opts, want));
    }
    dev.synchronize().expect("sync");
    let stream = dev.stream().clone();
    stream
        .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_GLOBAL)
        .expect("begin capture");
    for (m, a, c, ws, opts, _) in runs.iter_mut() {
        int4_gemm_prepared(dev, &a.as_view(), *m, &w, &mut c.as_view_mut(), ws, *opts)
            .expect("prepared launch inside capture");
    }
    let graph = stream
        .end_capture(CUgraphInstantiate_flags(0))
        .expect("end capture")
        .expect("a graph");
    for replay in 0..2 {
        for (m, _, c, _, _, _) in runs.iter_mut() {
            dev.write(c, &vec![f16::NAN; *m * n]).expect("poison");
        }
        graph.launch().expect("graph launch");
        dev.synchronize().expect("sync");
        for (m, _, c, _, _, want) in &runs {
            let got = dev.download(c).expect("download");
            assert!(
                bit_identical(&got, want),
                "M={m} replay {replay}: graph output differs from the eager launch"
            );
        }
    }
}

/// Median microseconds per call of `f` over 7 batches of `reps` calls
/// between CUDA events (after 3 warm-up calls).
pub fn time_us(dev: &CudaDevice, reps: usize, mut f: impl FnMut()) -> f64 {
    use cudarc::driver::sys::CUevent_flags;
    for _ in 0..3 {
        f();
    }
    let ctx = dev.context();
    let ev = || {
        ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .expect("event")
    };
    let (start, end) = (ev(), ev());
    let mut samples: Vec<f64> = (0..7)
        .map(|_| {
            start.record(dev.stream()).expect("record");
            for _ in 0..reps {
                f();
            }
            end.record(dev.stream()).expect("record");
            f64::from(start.elapsed_ms(&end).expect("elapsed")) * 1000.0 / reps as f64
        })
        .collect();
    samples.sort_by(|a, b| a.total_cmp(b));
    samples[samples.len() / 2]
}
