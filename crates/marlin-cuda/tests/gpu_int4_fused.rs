//! The fused decode-step INT4 GEMM (`int4_gemm_fused`: RMSNorm or SwiGLU
//! folded into the activation load, the residual add into the store; the
//! deferred norm's pair: residual add with the next norm's inputs, rows
//! scaled by their inverse norms)
//! against the f64 CPU reference. These need a CUDA GPU and are `#[ignore]`d;
//! `scripts/gpu_entry.sh` runs them with `--ignored`. Fresh random inputs
//! every run (seeded from the clock, printed on failure); C poisoned with NaN
//! before every launch, the residual rewritten with fresh values.
#![cfg(feature = "cuda")]

mod common;
use common::fresh_seed;

use std::sync::Arc;

use half::f16;
use marlin_cuda::int4::gemm::{
    deferred_norm_supported, fused_supported, int4_gemm_fused, int4_gemm_glu_normed_prepared,
    row_square_parts, GemmWorkspace, GluAct, Int4Epilogue, Int4Prologue, Int4Weight, RowSquareSums,
};
use marlin_cuda::int4::random::{random_activations, random_int4, XorShift};
use marlin_cuda::int4::reference::{dequantize_int4_ref, matmul_ref};
use marlin_cuda::{CudaDevice, CudaError};

/// As `gpu_int4`: f16 output (or f16-rounded addend) and f16 staged
/// activations, fp32 accumulation. The reference rounds its activations to
/// f16 as the kernel stages them; an f32-vs-f64 difference in the norm or
/// SiLU can flip one such rounding by an ulp (2^-11 relative), far below it.
const REL_L2_TOL: f64 = 2e-3;

fn device() -> Arc<CudaDevice> {
    CudaDevice::new(0).expect("a CUDA device (these tests run on the GPU machine)")
}

/// `v` rounded to f16, back in f64.
fn f16r(v: f64) -> f64 {
    f64::from(f16::from_f64(v).to_f32())
}

#[derive(Clone, Copy, Debug)]
enum Mode {
    /// RMSNorm prologue, f16 store (q|k|v, gate|up).
    Rms,
    /// Plain activations, residual add (o).
    Res,
    /// SwiGLU prologue, residual add (down).
    GluRes,
}

/// Relative L2 error of `got` against `want`; every value must be finite.
fn rel_l2(got: &[f64], want: &[f64], what: &str) -> f64 {
    let (mut err2, mut ref2) = (0f64, 0f64);
    for (i, (g, r)) in got.iter().zip(want).enumerate() {
        assert!(g.is_finite(), "{what}: element {i} = {g} (not written?)");
        err2 += (g - r) * (g - r);
        ref2 += r * r;
    }
    (err2 / ref2.max(1e-30)).sqrt()
}

#[allow(clippy::too_many_arguments)]
fn check(
    dev: &Arc<CudaDevice>,
    ws: &mut GemmWorkspace,
    mode: Mode,
    m: usize,
    n: usize,
    k: usize,
    group: usize,
) {
    let seed = fresh_seed();
    let what = format!("{mode:?} M={m} N={n} K={k} g={group} seed={seed}");
    let w = random_int4(n, k, group, false, seed);
    let w_ref = dequantize_int4_ref(&w).expect("reference dequant");
    let wd = Int4Weight::from_quant(dev, &w).expect("upload");
    assert!(fused_supported(dev, m, &wd), "{what}: must be supported");
    let mut rng = XorShift::new(seed ^ 0x5151);
    let mut uniform = |lo: f32, hi: f32| lo + (hi - lo) * rng.next_f32();

    // The reference activations (as the kernel stages them: f16) and the
    // device inputs of the prologue.
    let eps = 1e-5f32;
    let (a_ref, x_host, nw_host, a16_host) = match mode {
        Mode::Rms => {
            let x: Vec<f32> = (0..m * k).map(|_| uniform(-2.0, 2.0)).collect();
            let nw: Vec<f32> = (0..k).map(|_| uniform(0.5, 1.5)).collect();
            let mut a = vec![0f64; m * k];
            for r in 0..m {
                let row = &x[r * k..(r + 1) * k];
                let ms = row
                    .iter()
                    .map(|&v| f64::from(v) * f64::from(v))
                    .sum::<f64>()
                    / k as f64;
                let inv = 1.0 / (ms + f64::from(eps)).sqrt();
                for c in 0..k {
                    a[r * k + c] = f16r(f64::from(row[c]) * inv * f64::from(nw[c]));
                }
            }
            (a, x, nw, Vec::new())
        }
        Mode::Res => {
            let a16 = random_activations(m, k, seed ^ 0xA5A5);
            let a = a16.iter().map(|v| f64::from(v.to_f32())).collect();
            (a, Vec::new(), Vec::new(), a16)
        }
        Mode::GluRes => {
            // (M, 2K) gate|up rows, gate columns first.
            let gu: Vec<f16> = (0..m * 2 * k)
                .map(|_| f16::from_f32(uniform(-4.0, 4.0)))
                .collect();
            let mut a = vec![0f64; m * k];
            for r in 0..m {
                for c in 0..k {
                    let g = f64::from(gu[r * 2 * k + c].to_f32());
                    let u = f64::from(gu[r * 2 * k + k + c].to_f32());
                    a[r * k + c] = f16r(g / (1.0 + (-g).exp()) * u);
                }
            }
            (a, Vec::new(), Vec::new(), gu)
        }
    };
    let want = matmul_ref(&a_ref, &w_ref, m, n, k);

    let x = dev.upload("x", &x_host.clone().max_len1()).expect("x");
    let nw = dev
        .upload("norm weight", &nw_host.clone().max_len1())
        .expect("nw");
    let a16 = dev
        .upload(
            "A",
            &if a16_host.is_empty() {
                vec![f16::ZERO]
            } else {
                a16_host
            },
        )
        .expect("A");
    let mut c = dev.alloc_zeros::<f16>("C", m * n).expect("C");
    let mut resid = dev.alloc_zeros::<f32>("residual", m * n).expect("residual");
    for launch in 0..2 {
        let r0: Vec<f32> = (0..m * n).map(|_| uniform(-1.0, 1.0)).collect();
        dev.write(&mut c, &vec![f16::NAN; m * n]).expect("poison C");
        dev.write(&mut resid, &r0).expect("residual");
        let pro = match mode {
            Mode::Rms => Int4Prologue::RmsNorm {
                x: x.as_view(),
                weight: nw.as_view(),
                eps,
            },
            Mode::Res => Int4Prologue::None(a16.as_view()),
            Mode::GluRes => Int4Prologue::Glu(a16.as_view()),
        };
        let epi = match mode {
            Mode::Rms => Int4Epilogue::Store(c.as_view_mut()),
            Mode::Res | Mode::GluRes => Int4Epilogue::AddToResidual(resid.as_view_mut()),
        };
        let plan = int4_gemm_fused(dev, pro, m, &wd, epi, ws).expect("launch");
        let got: Vec<f64> = match mode {
            Mode::Rms => dev
                .download(&c)
                .expect("C")
                .iter()
                .map(|v| f64::from(v.to_f32()))
                .collect(),
            // The GEMM's share of the residual.
            Mode::Res | Mode::GluRes => dev
                .download(&resid)
                .expect("residual")
                .iter()
                .zip(&r0)
                .map(|(g, r)| f64::from(*g) - f64::from(*r))
                .collect(),
        };
        let rel = rel_l2(&got, &want, &what);
        assert!(
            rel < REL_L2_TOL,
            "{what} {plan:?} launch {launch}: rel L2 error {rel:.3e}"
        );
        println!(
            "PASS int4 fused {what} {} splits={} rel_l2={rel:.2e}",
            plan.kernel, plan.splits
        );
    }
}

/// A one-element stand-in for an operand the mode does not read (the
/// device wants a non-empty allocation).
trait MaxLen1 {
    fn max_len1(self) -> Self;
}

impl MaxLen1 for Vec<f32> {
    fn max_len1(self) -> Self {
        if self.is_empty() {
            vec![0.0]
        } else {
            self
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn int4_fused_modes_match_reference() {
    let dev = device();
    let mut ws = GemmWorkspace::new(&dev).expect("workspace");
    for mode in [Mode::Rms, Mode::Res, Mode::GluRes] {
        for &m in &[1, 3, 5, 16] {
            // K a multiple of the tile; N not a multiple of 64 and K ending
            // inside a chunk (1000) or not a multiple of 8 (990); a longer K
            // (8 K slices at M <= 4); K = 512 (split-K with a ticket at
            // M >= 5); per-channel scales.
            check(&dev, &mut ws, mode, m, 256, 2048, 128);
            check(&dev, &mut ws, mode, m, 200, 1000, 128);
            check(&dev, &mut ws, mode, m, 192, 990, 64);
            check(&dev, &mut ws, mode, m, 256, 4096, 128);
            check(&dev, &mut ws, mode, m, 256, 512, 128);
            check(&dev, &mut ws, mode, m, 128, 1024, 0);
        }
    }
    // N >= 14336: the RMSNorm prologue on the stream-K kernel.
    for &m in &[1, 3, 16] {
        check(&dev, &mut ws, Mode::Rms, m, 14336, 512, 128);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn int4_fused_refuses_what_it_cannot_run() {
    let dev = device();
    let mut ws = GemmWorkspace::new(&dev).expect("workspace");
    let sym = Int4Weight::from_quant(&dev, &random_int4(64, 256, 128, false, 1)).expect("upload");
    let zp = Int4Weight::from_quant(&dev, &random_int4(64, 256, 128, true, 2)).expect("upload");
    let g32 = Int4Weight::from_quant(&dev, &random_int4(64, 256, 32, false, 3)).expect("upload");
    let a = dev.upload("A", &random_activations(17, 512, 4)).expect("A");
    let x = dev.alloc_zeros::<f32>("x", 17 * 256).expect("x");
    let nw = dev.alloc_zeros::<f32>("nw", 256).expect("nw");
    let mut c = dev.alloc_zeros::<f16>("C", 17 * 64).expect("C");
    let mut resid = dev.alloc_zeros::<f32>("resid", 17 * 64).expect("resid");
    assert!(
        !fused_supported(&dev, 1, &zp)
            && !fused_supported(&dev, 1, &g32)
            && !fused_supported(&dev, 17, &sym)
    );
    let rms = |eps: f32| Int4Prologue::RmsNorm {
        x: x.as_view(),
        weight: nw.as_view(),
        eps,
    };
    for (w, m) in [(&zp, 1), (&g32, 1), (&sym, 17)] {
        let r = int4_gemm_fused(
            &dev,
            rms(1e-5),
            m,
            w,
            Int4Epilogue::Store(c.as_view_mut()),
            &mut ws,
        );
        assert!(matches!(r, Err(CudaError::Unsupported(_))), "M={m}: {r:?}");
    }
    // A pair that is not compiled.
    let r = int4_gemm_fused(
        &dev,
        Int4Prologue::Glu(a.as_view()),
        1,
        &sym,
        Int4Epilogue::Store(c.as_view_mut()),
        &mut ws,
    );
    assert!(matches!(r, Err(CudaError::Unsupported(_))), "{r:?}");
    // Short operands and a bad eps.
    let r = int4_gemm_fused(
        &dev,
        Int4Prologue::None(a.slice(0..255)),
        1,
        &sym,
        Int4Epilogue::AddToResidual(resid.as_view_mut()),
        &mut ws,
    );
    assert!(matches!(r, Err(CudaError::Shape(_))), "{r:?}");
    let r = int4_gemm_fused(
        &dev,
        Int4Prologue::Glu(a.slice(0..511)),
        1,
        &sym,
        Int4Epilogue::AddToResidual(resid.as_view_mut()),
        &mut ws,
    );
    assert!(matches!(r, Err(CudaError::Shape(_))), "{r:?}");
    let r = int4_gemm_fused(
        &dev,
        rms(f32::NAN),
        1,
        &sym,
        Int4Epilogue::Store(c.as_view_mut()),
        &mut ws,
    );
    assert!(matches!(r, Err(CudaError::Shape(_))), "{r:?}");
    let r = int4_gemm_fused(
        &dev,
        rms(1e-5),
        16,
        &sym,
        Int4Epilogue::Store(c.slice_mut(0..16 * 64 - 1)),
        &mut ws,
    );
    assert!(matches!(r, Err(CudaError::Shape(_))), "{r:?}");
    println!("PASS int4 fused: unsupported weights, M, pairs and short operands refused");
}

/// One deferred-norm chain (docs/CUDA.md change 76): a producer GEMM of
/// `k1` inputs and `d` outputs with the residual add and the next norm's
/// inputs (`AddToResidualNormed`), then a consumer GEMM of `n2` outputs
/// on those rows (`DeferredNorm`, f16 store) and a GLU-epilogue consumer
/// with `f` outputs (its normed entry). Checked: the residual against the
/// reference product; h bit-exact against f16(x * weight) of the GPU's
/// own residual; the partial sums against f64 sums of that residual; both
/// consumers against f64 products of h scaled by each row's inverse norm.
fn check_deferred_norm(
    dev: &Arc<CudaDevice>,
    ws: &mut GemmWorkspace,
    m: usize,
    (k1, d, n2, f): (usize, usize, usize, usize),
) {
    let seed = fresh_seed();
    let what = format!("deferred norm M={m} K1={k1} d={d} N2={n2} F={f} seed={seed}");
    let w1q = random_int4(d, k1, 128, false, seed);
    let w2q = random_int4(n2, d, 128, false, seed ^ 0x77);
    let w3q = random_int4(2 * f, d, 128, false, seed ^ 0x99);
    let (w1r, w2r, w3r) = (
        dequantize_int4_ref(&w1q).expect("reference dequant"),
        dequantize_int4_ref(&w2q).expect("reference dequant"),
        dequantize_int4_ref(&w3q).expect("reference dequant"),
    );
    let w1 = Int4Weight::from_quant(dev, &w1q).expect("upload");
    let w2 = Int4Weight::from_quant(dev, &w2q).expect("upload");
    let w3 = Int4Weight::from_quant(dev, &w3q).expect("upload");
    assert!(
        deferred_norm_supported(dev, m, &w1) && deferred_norm_supported(dev, m, &w2),
        "{what}: must be supported"
    );
    let mut rng = XorShift::new(seed ^ 0x3C3C);
    let mut uniform = |lo: f32, hi: f32| lo + (hi - lo) * rng.next_f32();
    let a16 = random_activations(m, k1, seed ^ 0xA5A5);
    let a_ref: Vec<f64> = a16.iter().map(|v| f64::from(v.to_f32())).collect();
    let prod = matmul_ref(&a_ref, &w1r, m, d, k1);
    let gamma: Vec<f32> = (0..d).map(|_| uniform(0.5, 1.5)).collect();
    let parts = row_square_parts(&w1);
    let eps = 1e-5f32;

    let a = dev.upload("A", &a16).expect("A");
    let nw = dev.upload("norm weight", &gamma).expect("nw");
    let mut resid = dev.alloc_zeros::<f32>("residual", m * d).expect("residual");
    let mut h = dev.alloc_zeros::<f16>("h", m * d).expect("h");
    let mut sums = dev.alloc_zeros::<f32>("sums", m * parts).expect("sums");
    let mut c = dev.alloc_zeros::<f16>("C", m * n2).expect("C");
    let mut g = dev.alloc_zeros::<f16>("GLU out", m * f).expect("GLU out");
    ws.prepare_glu(dev, &w3, m).expect("GLU kernel");
    for launch in 0..2 {
        let r0: Vec<f32> = (0..m * d).map(|_| uniform(-1.0, 1.0)).collect();
        dev.write(&mut resid, &r0).expect("residual");
        dev.write(&mut h, &vec![f16::NAN; m * d]).expect("poison h");
        dev.write(&mut sums, &vec![f32::NAN; m * parts])
            .expect("poison sums");
        dev.write(&mut c, &vec![f16::NAN; m * n2])
            .expect("poison C");
        dev.write(&mut g, &vec![f16::NAN; m * f])
            .expect("poison GLU out");
        let epi = Int4Epilogue::AddToResidualNormed {
            resid: resid.as_view_mut(),
            weight: nw.as_view(),
            h: h.as_view_mut(),
            sums: sums.as_view_mut(),
        };
        let p1 = int4_gemm_fused(dev, Int4Prologue::None(a.as_view()), m, &w1, epi, ws)
            .expect("producer");
        let x = dev.download(&resid).expect("residual");
        let added: Vec<f64> = x
            .iter()
            .zip(&r0)
            .map(|(g, r)| f64::from(*g) - f64::from(*r))
            .collect();
        let rel = rel_l2(&added, &prod, &what);
        assert!(
            rel < REL_L2_TOL,
            "{what} launch {launch}: residual rel L2 {rel:.3e}"
        );
        let h_got = dev.download(&h).expect("h");
        for (i, hv) in h_got.iter().enumerate() {
            let want = f16::from_f32(x[i] * gamma[i % d]);
            assert_eq!(hv.to_bits(), want.to_bits(), "{what}: h[{i}]");
        }
        let s_got = dev.download(&sums).expect("sums");
        let mut inv = vec![0f64; m];
        for r in 0..m {
            let mut row_ss = 0f64;
            for p in 0..parts {
                let want: f64 = (16 * p..(16 * p + 16).min(d))
                    .map(|col| f64::from(x[r * d + col]).powi(2))
                    .sum();
                let got = f64::from(s_got[r * parts + p]);
                assert!(
                    (got - want).abs() <= 1e-5 * want.max(1e-3),
                    "{what}: sum of squares row {r} part {p}: {got} against {want}"
                );
                row_ss += want;
            }
            inv[r] = 1.0 / (row_ss / d as f64 + f64::from(eps)).sqrt();
        }
        let h_ref: Vec<f64> = h_got.iter().map(|v| f64::from(v.to_f32())).collect();
        let norm = || RowSquareSums {
            sums: sums.as_view(),
            parts,
            eps,
        };
        let pro = Int4Prologue::DeferredNorm {
            a: h.as_view(),
            norm: norm(),
        };
        let p2 = int4_gemm_fused(dev, pro, m, &w2, Int4Epilogue::Store(c.as_view_mut()), ws)
            .expect("consumer");
        let mut want2 = matmul_ref(&h_ref, &w2r, m, n2, d);
        for (i, v) in want2.iter_mut().enumerate() {
            *v *= inv[i / n2];
        }
        let got2: Vec<f64> = dev
            .download(&c)
            .expect("C")
            .iter()
            .map(|v| f64::from(v.to_f32()))
            .collect();
        let rel2 = rel_l2(&got2, &want2, &what);
        assert!(
            rel2 < REL_L2_TOL,
            "{what} launch {launch}: consumer rel L2 {rel2:.3e}"
        );
        let p3 = int4_gemm_glu_normed_prepared(
            dev,
            &h.as_view(),
            &norm(),
            m,
            &w3,
            &mut g.as_view_mut(),
            GluAct::Silu,
            ws,
        )
        .expect("GLU consumer");
        let gu = matmul_ref(&h_ref, &w3r, m, 2 * f, d);
        let want3: Vec<f64> = (0..m * f)
            .map(|i| {
                let (r, col) = (i / f, i % f);
                let gv = gu[r * 2 * f + col] * inv[r];
                let uv = gu[r * 2 * f + f + col] * inv[r];
                gv / (1.0 + (-gv).exp()) * uv
            })
            .collect();
        let got3: Vec<f64> = dev
            .download(&g)
            .expect("GLU out")
            .iter()
            .map(|v| f64::from(v.to_f32()))
            .collect();
        let rel3 = rel_l2(&got3, &want3, &what);
        assert!(
            rel3 < REL_L2_TOL,
            "{what} launch {launch}: GLU rel L2 {rel3:.3e}"
        );
        println!(
            "PASS {what} {} / {} / {} splits {} / {} rel_l2 {rel:.2e} {rel2:.2e} {rel3:.2e}",
            p1.kernel, p2.kernel, p3.kernel, p1.splits, p2.splits
        );
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn int4_deferred_norm_chain_matches_reference() {
    let dev = device();
    let mut ws = GemmWorkspace::new(&dev).expect("workspace");
    for &m in &[1, 3, 8, 16] {
        // d = 4096: 256 partials per row (the vector reduction); d = 1000:
        // 64 (the one-warp-per-row reduction, N not a multiple of 64).
        check_deferred_norm(&dev, &mut ws, m, (1024, 4096, 768, 256));
        check_deferred_norm(&dev, &mut ws, m, (512, 1000, 384, 128));
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn int4_deferred_norm_refuses_bad_operands() {
    let dev = device();
    let mut ws = GemmWorkspace::new(&dev).expect("workspace");
    let w = Int4Weight::from_quant(&dev, &random_int4(256, 256, 128, false, 5)).expect("upload");
    let a = dev.upload("A", &random_activations(1, 256, 6)).expect("A");
    let nw = dev.alloc_zeros::<f32>("nw", 256).expect("nw");
    let mut resid = dev.alloc_zeros::<f32>("resid", 256).expect("resid");
    let mut h = dev.alloc_zeros::<f16>("h", 256).expect("h");
    let mut sums = dev.alloc_zeros::<f32>("sums", 16).expect("sums");
    let mut c = dev.alloc_zeros::<f16>("C", 256).expect("C");
    // Too few partial sums for the producer's 16 column blocks.
    let r = int4_gemm_fused(
        &dev,
        Int4Prologue::None(a.as_view()),
        1,
        &w,
        Int4Epilogue::AddToResidualNormed {
            resid: resid.as_view_mut(),
            weight: nw.as_view(),
            h: h.as_view_mut(),
            sums: sums.slice_mut(0..15),
        },
        &mut ws,
    );
    assert!(matches!(r, Err(CudaError::Shape(_))), "{r:?}");
    // Parts that cannot cover K, a short sums buffer, a bad eps.
    for (parts, len, eps) in [(8, 16, 1e-5), (16, 15, 1e-5), (16, 16, f32::INFINITY)] {
        let r = int4_gemm_fused(
            &dev,
            Int4Prologue::DeferredNorm {
                a: a.as_view(),
                norm: RowSquareSums {
                    sums: sums.slice(0..len),
                    parts,
                    eps,
                },
            },
            1,
            &w,
            Int4Epilogue::Store(c.as_view_mut()),
            &mut ws,
        );
        assert!(
            matches!(r, Err(CudaError::Shape(_))),
            "parts {parts}: {r:?}"
        );
    }
    // A pair that is not compiled: the deferred norm with a residual add.
    let r = int4_gemm_fused(
        &dev,
        Int4Prologue::DeferredNorm {
            a: a.as_view(),
            norm: RowSquareSums {
                sums: sums.as_view(),
                parts: 16,
                eps: 1e-5,
            },
        },
        1,
        &w,
        Int4Epilogue::AddToResidual(resid.as_view_mut()),
        &mut ws,
    );
    assert!(matches!(r, Err(CudaError::Unsupported(_))), "{r:?}");
    println!("PASS int4 deferred norm: short operands, bad eps and uncompiled pairs refused");
}
