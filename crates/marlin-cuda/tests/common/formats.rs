//! Shared by tests/gpu_gemm_formats.rs (f16) and
//! tests/gpu_gemm_formats_bf16.rs: the (format, scheme, K) case table, the
//! random problems against `QuantTensor::dequantize` + an f64 matmul, and
//! the check loop, generic over the activation type; each file passes its
//! own tolerances.

use std::sync::Arc;

use cudarc::driver::CudaSlice;
use marlin_cuda::act::ActDtype;
use marlin_cuda::int4::gemm::{GemmOptions, GemmWorkspace};
use marlin_cuda::int4::random::XorShift;
use marlin_cuda::int4::reference::matmul_ref;
use marlin_cuda::wgemm::gemm::{wx_gemm, WxWeight};
use marlin_cuda::CudaDevice;
use marlin_quant::{quantize_rtn, Granularity, QuantScheme, QuantTensor, RtnOptions, ScaleDType};

use super::fresh_seed;

pub fn device() -> Arc<CudaDevice> {
    CudaDevice::new(0).expect("a CUDA device (these tests run on the GPU machine)")
}

pub fn quantized(scheme: QuantScheme, n: usize, k: usize, seed: u64) -> QuantTensor {
    let mut rng = XorShift::new(seed);
    let w: Vec<f32> = (0..n * k)
        .map(|i| (rng.next_f32() - 0.5) * 0.05 * (1.0 + (i / k % 5) as f32))
        .collect();
    quantize_rtn(&w, n, k, scheme, &RtnOptions::min_max()).expect("quantize")
}

/// Random activations in [-1, 1): the f32 draws of `random_activations`
/// (f16) and `random_activations_bf16` for the same seed, rounded to `T`.
pub fn activations<T: ActDtype>(m: usize, k: usize, seed: u64) -> Vec<T> {
    let mut rng = XorShift::new(seed);
    (0..m * k)
        .map(|_| T::from_f32(2.0 * rng.next_f32() - 1.0))
        .collect()
}

/// An INT4 tensor with a GPTQ-style random act-order g_idx (a random column
/// order, group = position / g).
pub fn act_order_int4(scheme: QuantScheme, n: usize, k: usize, g: usize, seed: u64) -> QuantTensor {
    let mut q = quantized(scheme, n, k, seed);
    let mut rng = XorShift::new(seed ^ 0xA5);
    let mut order: Vec<usize> = (0..k).collect();
    for i in (1..k).rev() {
        order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    let mut g_idx = vec![0u32; k];
    for (pos, &c) in order.iter().enumerate() {
        g_idx[c] = (pos / g) as u32;
    }
    q.g_idx = Some(g_idx);
    q.validate().expect("valid act-order tensor");
    q
}

/// (name, scheme, K): K not a multiple of the 64 tile (FP4 needs whole
/// groups of 32 / 16; the 8-bit formats take any K, also K % 8 != 0).
/// Grouped INT3 / INT2 need K a multiple of the group (so of 64); their
/// per-channel variants take K = 1000 / 1001.
pub fn formats() -> Vec<(&'static str, QuantScheme, usize)> {
    vec![
        ("mxfp4", QuantScheme::mxfp4(), 1056),
        ("nvfp4", QuantScheme::nvfp4(), 1040),
        ("int8", QuantScheme::int8_per_channel(), 1001),
        ("fp8", QuantScheme::fp8_e4m3_per_channel(), 1000),
        ("fp8b128", QuantScheme::fp8_e4m3_block128(), 1000),
        ("int3g128", QuantScheme::int3_sym(128), 1152),
        ("int3g128z", QuantScheme::int3_asym(128), 1152),
        ("int2g64", QuantScheme::int2_sym(64), 1088),
        ("int2g64z", QuantScheme::int2_asym(64), 1088),
        (
            "int3pc",
            QuantScheme::int_sym(3, Granularity::PerChannel, ScaleDType::F16),
            1001,
        ),
        (
            "int2pcz",
            QuantScheme::int_asym(2, Granularity::PerChannel, ScaleDType::F16),
            1000,
        ),
    ]
}

/// What a check accepts: the relative L2 error bound and, where the file
/// documents one, the per-element bound `u |c| + 1.5 u sum_k |a_k w_k| +
/// K 2^-24 sum_k |a_k w_k|` with unit roundoff `u` (fp32 accumulation's
/// worst case in the last term).
#[derive(Clone, Copy, Debug)]
pub struct Tolerance {
    pub rel_l2: f64,
    pub elementwise_u: Option<f64>,
}

/// A random problem: the quantized weight on the device, the activations
/// on the host, the f64 reference and the per-element bounds (if any).
pub struct FormatProblem<T> {
    pub seed: u64,
    pub weight: WxWeight,
    pub a_host: Vec<T>,
    pub want: Vec<f64>,
    pub bound: Option<Vec<f64>>,
}

/// Fresh weights (seed `seed`) and activations (seed `seed ^ 0x5A5A`).
pub fn format_problem<T: ActDtype>(
    dev: &Arc<CudaDevice>,
    scheme: QuantScheme,
    (m, n, k): (usize, usize, usize),
    tol: Tolerance,
) -> FormatProblem<T> {
    let seed = fresh_seed();
    let q = quantized(scheme, n, k, seed);
    let w_ref: Vec<f64> = q
        .dequantize()
        .expect("dequantize")
        .iter()
        .map(|v| f64::from(*v))
        .collect();
    let a_host = activations::<T>(m, k, seed ^ 0x5A5A);
    let a_ref: Vec<f64> = a_host.iter().map(|v| f64::from(v.to_f32())).collect();
    let want = matmul_ref(&a_ref, &w_ref, m, n, k);
    let bound = tol.elementwise_u.map(|u| {
        let a_abs: Vec<f64> = a_ref.iter().map(|v| v.abs()).collect();
        let w_abs: Vec<f64> = w_ref.iter().map(|v| v.abs()).collect();
        let abs_prod = matmul_ref(&a_abs, &w_abs, m, n, k);
        want.iter()
            .zip(&abs_prod)
            .map(|(c, p)| u * c.abs() + 1.5 * u * p + k as f64 * f64::powi(2.0, -24) * p)
            .collect()
    });
    FormatProblem {
        seed,
        weight: WxWeight::from_quant(dev, &q).expect("repack + upload"),
        a_host,
        want,
        bound,
    }
}

/// Relative L2 error of `got` (M x N); fails (naming `what`, the seed and
/// the element) on a non-finite output, an element outside its bound, or
/// a relative L2 error at or above `tol.rel_l2`.
pub fn compare<T: ActDtype>(
    p: &FormatProblem<T>,
    got: &[T],
    n: usize,
    what: &str,
    tol: Tolerance,
) -> f64 {
    let (mut e2, mut r2) = (0f64, 0f64);
    for (i, (g, r)) in got.iter().zip(&p.want).enumerate() {
        let g = f64::from(g.to_f32());
        let b = p.bound.as_ref().map_or(f64::INFINITY, |b| b[i]);
        assert!(
            g.is_finite() && (g - r).abs() <= b,
            "{what} seed={}: C[{}, {}] = {g}, reference {r}, bound {b:.3e}",
            p.seed,
            i / n,
            i % n
        );
        e2 += (g - r) * (g - r);
        r2 += r * r;
    }
    let rel = (e2 / r2.max(1e-30)).sqrt();
    assert!(
        rel < tol.rel_l2,
        "{what} seed={}: rel L2 {rel:.3e} (bound {:.1e})",
        p.seed,
        tol.rel_l2
    );
    rel
}

/// One format case: a fresh problem, two launches of `wx_gemm` on
/// NaN-poisoned outputs, both compared; the first prints
/// `PASS {tag}{name} ...`.
#[allow(clippy::too_many_arguments)]
pub fn check_format<T: ActDtype>(
    dev: &Arc<CudaDevice>,
    ws: &mut GemmWorkspace,
    tag: &str,
    name: &str,
    scheme: QuantScheme,
    (m, n, k): (usize, usize, usize),
    opts: GemmOptions,
    tol: Tolerance,
) {
    let p = format_problem::<T>(dev, scheme, (m, n, k), tol);
    let a: CudaSlice<T> = dev.upload("A", &p.a_host).expect("A");
    let mut c = dev.alloc_zeros::<T>("C", m * n).expect("C");
    for launch in 0..2 {
        dev.write(&mut c, &vec![T::NAN; m * n]).expect("poison");
        let plan = wx_gemm(dev, &a, m, &p.weight, &mut c, ws, opts).expect("launch");
        let got = dev.download(&c).expect("download");
        let what = format!("{tag}{name} M={m} N={n} K={k} {plan:?} launch {launch}");
        let rel = compare(&p, &got, n, &what, tol);
        if launch == 0 {
            println!(
                "PASS {tag}{name} {:?} M={m} N={n} K={k} splits={} rel_l2={rel:.2e}",
                plan.path, plan.splits
            );
        }
    }
}
