//! Decode-path GPU ops (`marlin_cuda::ops`) against the CPU references
//! (`marlin_cpu::ops` where they exist, else a scalar f64 reference here).
//! Fresh random inputs every run (the seed is printed), every output
//! NaN-poisoned before each launch and buffers longer than needed (the tail
//! must stay untouched). Without a GPU each test prints why and passes.
//!
//! Tolerances: f32 elementwise ops 1e-5 relative (`--use_fast_math`
//! exp/rsqrt); conversions exact; attention against the f64 reference over
//! the same f16-rounded K/V 2e-4 absolute (outputs are convex combinations
//! of values in [-1, 1]; f32 accumulation and exp2.approx); f16 K/V versus
//! f32 K/V adds about 1e-3 relative, which the tests do not need to cover.
//!
//! `bench_decode_attention` (ignored; `--include-ignored`) prints decode
//! attention time, KV bytes read per second and the device copy bandwidth.
#![cfg(feature = "cuda")]

mod common;

use common::time_us;
use std::sync::Arc;

use cudarc::driver::CudaSlice;
use half::f16;
use marlin_cpu::ops::norm::rms_norm_ref;
use marlin_cpu::ops::simd::{gelu_tanh_ref, silu_ref};
use marlin_cpu::ops::{soft_cap, Rope, RopeScaling, RopeStyle};
use marlin_cuda::ops::{
    self, AttnParams, DeviceSampling, GpuKvCache, GpuRope, PagedKvPool, RowChoice,
};
use marlin_cuda::CudaDevice;
use marlin_engine::sampler::draw_with_uniform;
use marlin_engine::SamplingParams;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Extra elements past the needed length of every output buffer.
const SLACK: usize = 7;

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

fn rand_vec(r: &mut StdRng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| r.gen_range(lo..hi)).collect()
}

/// A device buffer of `n + SLACK` NaNs.
fn poisoned(dev: &CudaDevice, n: usize) -> CudaSlice<f32> {
    dev.upload("poisoned", &vec![f32::NAN; n + SLACK])
        .expect("upload")
}

fn up<T: cudarc::driver::DeviceRepr>(dev: &CudaDevice, host: &[T]) -> CudaSlice<T> {
    dev.upload("test input", host).expect("upload")
}

/// `got[..want.len()]` within `rel * max(|want|, 1)`, the slack still NaN.
fn assert_close(what: &str, got: &[f32], want: &[f32], rel: f32) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            g == w || (g - w).abs() <= rel * w.abs().max(1.0),
            "{what}[{i}]: got {g}, want {w}"
        );
    }
    assert!(
        got[want.len()..].iter().all(|v| v.is_nan()),
        "{what}: wrote past the needed length"
    );
}

#[test]
fn norms_match_cpu() {
    let Some(dev) = device() else { return };
    let mut r = rng("norms");
    for (rows, dim) in [(1, 1), (1, 64), (3, 576), (17, 640), (5, 2304), (2, 4097)] {
        for w_offset in [0.0f32, 1.0] {
            let x = rand_vec(&mut r, rows * dim, -3.0, 3.0);
            let delta = rand_vec(&mut r, rows * dim, -1.0, 1.0);
            let w = rand_vec(&mut r, dim, -0.5, 1.5);
            let w_eff: Vec<f32> = w.iter().map(|v| v + w_offset).collect();
            let (xd, dd, wd) = (up(&dev, &x), up(&dev, &delta), up(&dev, &w));
            let mut out = poisoned(&dev, rows * dim);
            ops::rms_norm(&dev, &xd, &wd, rows, dim, 1e-6, w_offset, &mut out).unwrap();
            let got = dev.download(&out).unwrap();
            assert_close("rms_norm", &got, &rms_norm_ref(&x, &w_eff, 1e-6), 1e-5);

            let mut resid = up(&dev, &x);
            let mut out = poisoned(&dev, rows * dim);
            ops::add_rms_norm(
                &dev, &mut resid, &dd, &wd, rows, dim, 1e-6, w_offset, &mut out,
            )
            .unwrap();
            let sum: Vec<f32> = x.iter().zip(&delta).map(|(a, b)| a + b).collect();
            assert_eq!(dev.download(&resid).unwrap(), sum, "residual sum");
            let got = dev.download(&out).unwrap();
            assert_close(
                "add_rms_norm",
                &got,
                &rms_norm_ref(&sum, &w_eff, 1e-6),
                1e-5,
            );
        }
    }
    for (n_vectors, hd) in [(1, 64), (3, 128), (17 * 4, 256), (9, 96)] {
        let x = rand_vec(&mut r, n_vectors * hd, -3.0, 3.0);
        let w = rand_vec(&mut r, hd, 0.0, 2.0);
        let mut xd = up(&dev, &x);
        ops::rms_norm_heads_inplace(&dev, &mut xd, &up(&dev, &w), n_vectors, hd, 1e-6, 1.0)
            .unwrap();
        let w_eff: Vec<f32> = w.iter().map(|v| v + 1.0).collect();
        let got = dev.download(&xd).unwrap();
        let want = rms_norm_ref(&x, &w_eff, 1e-6);
        assert_close(
            "rms_norm_heads",
            &[got, vec![f32::NAN; SLACK]].concat(),
            &want,
            1e-5,
        );
    }
    println!("PASS norms");
}

/// Element type of the fused kernels' GEMM-side activations, for the tests.
trait TestElem: ops::ActElem {
    fn of(v: f32) -> Self;
    fn widen(self) -> f32;
    const NAN: Self;
}

impl TestElem for f32 {
    fn of(v: f32) -> Self {
        v
    }
    fn widen(self) -> f32 {
        self
    }
    const NAN: Self = f32::NAN;
}

impl TestElem for f16 {
    fn of(v: f32) -> Self {
        f16::from_f32(v)
    }
    fn widen(self) -> f32 {
        self.to_f32()
    }
    const NAN: Self = f16::NAN;
}

/// One `resid_norm_with` call against the f64 reference: `resid += delta`
/// (after the post-norm when `post`), `out = norm(resid)`; without a delta
/// only the norm (resid untouched). The residual exact where no post-norm
/// rounds it (one f32 add, as on the CPU), else 1e-5 relative; the output
/// 1e-5 relative in f32, 2e-3 in f16 (one f16 ulp is 2^-11 relative); the
/// slack of every buffer stays NaN.
#[allow(clippy::too_many_arguments)]
fn check_resid_norm<T: TestElem>(
    dev: &CudaDevice,
    r: &mut StdRng,
    form: ops::NormForm,
    rows: usize,
    dim: usize,
    with_delta: bool,
    post: bool,
    w_offset: f32,
) {
    let what = format!(
        "resid_norm {form:?} {} rows {rows} dim {dim} delta {with_delta} post {post} offset {w_offset}",
        if T::IS_F16 { "f16" } else { "f32" }
    );
    let n = rows * dim;
    let eps = 1e-6;
    let x = rand_vec(r, n, -3.0, 3.0);
    // The delta as the kernel sees it (f16-rounded on the f16 path).
    let delta: Vec<f32> = rand_vec(r, n, -1.0, 1.0)
        .into_iter()
        .map(|v| T::of(v).widen())
        .collect();
    let w = rand_vec(r, dim, -0.5, 1.5);
    let pw = rand_vec(r, dim, -0.5, 1.5);
    let eff = |v: &[f32]| -> Vec<f32> { v.iter().map(|a| a + w_offset).collect() };
    let mut resid_host = x.clone();
    resid_host.extend([f32::NAN; SLACK]);
    let mut resid = up(dev, &resid_host);
    let delta_dev = up(dev, &delta.iter().map(|&v| T::of(v)).collect::<Vec<T>>());
    let (wd, pwd) = (up(dev, &w), up(dev, &pw));
    let mut out = up(dev, &vec![T::NAN; n + SLACK]);
    ops::resid_norm_with::<T>(
        dev,
        form,
        &mut resid,
        with_delta.then_some(&delta_dev),
        (with_delta && post).then_some(&pwd),
        &wd,
        rows,
        dim,
        eps,
        w_offset,
        &mut out,
    )
    .unwrap_or_else(|e| panic!("{what}: {e}"));
    let added: Vec<f32> = match (with_delta, post) {
        (false, _) => vec![0.0; n],
        (true, false) => delta.clone(),
        (true, true) => rms_norm_ref(&delta, &eff(&pw), eps),
    };
    let sum: Vec<f32> = x.iter().zip(&added).map(|(a, b)| a + b).collect();
    let got_resid = dev.download(&resid).unwrap();
    if post {
        assert_close(&format!("{what}: residual"), &got_resid, &sum, 1e-5);
    } else {
        assert_eq!(got_resid[..n], sum[..], "{what}: residual");
        assert!(
            got_resid[n..].iter().all(|v| v.is_nan()),
            "{what}: residual slack"
        );
    }
    let got: Vec<f32> = dev
        .download(&out)
        .unwrap()
        .into_iter()
        .map(T::widen)
        .collect();
    let want = rms_norm_ref(&sum, &eff(&w), eps);
    let rel = if T::IS_F16 { 2e-3 } else { 1e-5 };
    assert_close(&format!("{what}: output"), &got, &want, rel);
}

/// The decoder's residual add + RMSNorm in both kernel forms (scalar and
/// vector, docs/CUDA.md change 44), f32 and f16 activations, norm only,
/// with a delta and with Gemma's post-norm, against the f64 reference: rows
/// the vector form takes (dim % 4 == 0 up to 8192, 1 to 17 rows) and rows
/// it hands to the scalar kernel (dim 4097 and 2302: not a multiple of 4;
/// 12288: wider than its 1024 threads; 20000: the scalar kernel's loop).
/// The scalar form at 4097 and above runs at the driver's thread limit for
/// its ~128 registers (512 threads; before change 44 it asked for up to
/// 1024 and failed to launch).
#[test]
fn resid_norm_forms_match_reference() {
    let Some(dev) = device() else { return };
    let mut r = rng("resid_norm");
    let shapes = [
        (1, 4),
        (1, 64),
        (3, 576),
        (17, 640),
        (1, 4096),
        (5, 4096),
        (2, 8192),
        (1, 4097),
        (2, 2302),
        (1, 12288),
        (1, 20000),
    ];
    for form in [ops::NormForm::Vector, ops::NormForm::Scalar] {
        for (k, &(rows, dim)) in shapes.iter().enumerate() {
            let w_offset = if k % 2 == 0 { 0.0 } else { 1.0 };
            for (with_delta, post) in [(false, false), (true, false), (true, true)] {
                check_resid_norm::<f32>(&dev, &mut r, form, rows, dim, with_delta, post, w_offset);
                check_resid_norm::<f16>(&dev, &mut r, form, rows, dim, with_delta, post, w_offset);
            }
        }
    }
    println!("PASS resid_norm (both forms)");
}

#[test]
fn rope_matches_cpu() {
    let Some(dev) = device() else { return };
    let mut r = rng("rope");
    let llama3 = RopeScaling::Llama3 {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position: 8192.0,
    };
    let cases = [
        (64, 64, RopeStyle::Normal, RopeScaling::None, 9, 1),
        (128, 128, RopeStyle::Neox, llama3, 32, 3),
        (
            256,
            256,
            RopeStyle::Neox,
            RopeScaling::Linear { factor: 8.0 },
            4,
            17,
        ),
        (128, 64, RopeStyle::Neox, RopeScaling::None, 2, 5),
        (96, 32, RopeStyle::Normal, RopeScaling::None, 3, 4),
    ];
    for (hd, n_rot, style, scaling, heads, rows) in cases {
        let rope = Rope::new(hd, n_rot, 500_000.0, style, &scaling).unwrap();
        let gpu_rope = GpuRope::new(&dev, &rope).unwrap();
        let x = rand_vec(&mut r, rows * heads * hd, -2.0, 2.0);
        let positions: Vec<usize> = (0..rows).map(|_| r.gen_range(0..200_000)).collect();
        let pos_i32: Vec<i32> = positions.iter().map(|&p| p as i32).collect();
        let mut want = x.clone();
        rope.apply(&mut want, heads, &positions).unwrap();
        let mut xd = up(&dev, &[x, vec![f32::NAN; SLACK]].concat());
        ops::rope_inplace(&dev, &mut xd, rows, heads, &gpu_rope, &up(&dev, &pos_i32)).unwrap();
        assert_close("rope", &dev.download(&xd).unwrap(), &want, 2e-5);
    }
    println!("PASS rope");
}

#[test]
fn elementwise_match_cpu() {
    let Some(dev) = device() else { return };
    let mut r = rng("elementwise");
    for n in [1, 3, 17, 1000, 65_537] {
        let g = rand_vec(&mut r, n, -12.0, 12.0);
        let u = rand_vec(&mut r, n, -2.0, 2.0);
        let (gd, ud) = (up(&dev, &g), up(&dev, &u));
        let mut out = poisoned(&dev, n);
        ops::silu_mul(&dev, &gd, &ud, n, &mut out).unwrap();
        let want: Vec<f32> = g.iter().zip(&u).map(|(a, b)| silu_ref(*a) * b).collect();
        assert_close("silu_mul", &dev.download(&out).unwrap(), &want, 1e-5);
        let mut out = poisoned(&dev, n);
        ops::gelu_tanh_mul(&dev, &gd, &ud, n, &mut out).unwrap();
        let want: Vec<f32> = g
            .iter()
            .zip(&u)
            .map(|(a, b)| gelu_tanh_ref(*a) * b)
            .collect();
        assert_close("gelu_tanh_mul", &dev.download(&out).unwrap(), &want, 1e-5);

        let mut xd = up(&dev, &[g.clone(), vec![f32::NAN; SLACK]].concat());
        ops::add_inplace(&dev, &mut xd, &ud, n).unwrap();
        let want: Vec<f32> = g.iter().zip(&u).map(|(a, b)| a + b).collect();
        assert_close("add_inplace", &dev.download(&xd).unwrap(), &want, 0.0);
        ops::scale_inplace(&dev, &mut xd, n, 0.37).unwrap();
        let want: Vec<f32> = want.iter().map(|v| v * 0.37).collect();
        assert_close("scale_inplace", &dev.download(&xd).unwrap(), &want, 0.0);

        let big = rand_vec(&mut r, n, -200.0, 200.0);
        let mut xd = up(&dev, &[big.clone(), vec![f32::NAN; SLACK]].concat());
        ops::softcap_inplace(&dev, &mut xd, n, 30.0).unwrap();
        let mut want = big;
        soft_cap(&mut want, 30.0);
        assert_close("softcap", &dev.download(&xd).unwrap(), &want, 1e-5);
    }
    println!("PASS elementwise");
}

#[test]
fn conversions_and_embedding() {
    let Some(dev) = device() else { return };
    let mut r = rng("conversions");
    let mut x = rand_vec(&mut r, 1000, -70_000.0, 70_000.0);
    x.extend(rand_vec(&mut r, 1000, -1e-6, 1e-6)); // f16 subnormals
    x.extend([
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        65_519.0,
        65_520.0,
    ]);
    let n = x.len();
    let mut h = up(&dev, &vec![f16::NAN; n + SLACK]);
    ops::f32_to_f16(&dev, &up(&dev, &x), n, &mut h).unwrap();
    let got = dev.download(&h).unwrap();
    for (i, v) in x.iter().enumerate() {
        assert_eq!(
            got[i].to_bits(),
            f16::from_f32(*v).to_bits(),
            "f32_to_f16({v})"
        );
    }
    assert!(got[n..].iter().all(|v| v.is_nan()));
    let mut back = poisoned(&dev, n);
    ops::f16_to_f32(&dev, &h, n, &mut back).unwrap();
    let want: Vec<f32> = got[..n].iter().map(|v| v.to_f32()).collect();
    assert_close("f16_to_f32", &dev.download(&back).unwrap(), &want, 0.0);

    let (vocab, dim) = (1000, 640);
    let table = rand_vec(&mut r, vocab * dim, -1.0, 1.0);
    let ids: Vec<u32> = vec![0, 999, 1000, u32::MAX, 17, 17, 3];
    let mut out = poisoned(&dev, ids.len() * dim);
    let scale = (dim as f32).sqrt();
    let td = up(&dev, &table);
    ops::embedding_rows(
        &dev,
        &td,
        vocab,
        dim,
        &up(&dev, &ids),
        ids.len(),
        scale,
        &mut out,
    )
    .unwrap();
    let want: Vec<f32> = ids
        .iter()
        .flat_map(
            |&id| match table.get(id as usize * dim..(id as usize + 1) * dim) {
                Some(row) if (id as usize) < vocab => row.iter().map(|v| v * scale).collect(),
                _ => vec![0.0; dim],
            },
        )
        .collect();
    assert_close("embedding_rows", &dev.download(&out).unwrap(), &want, 0.0);
    println!("PASS conversions and embedding");
}

/// f64 attention of one query head vector against f16-rounded keys/values
/// `k`, `v` (positions, head_dim) over keys `lo..hi`.
fn attend_ref(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    hd: usize,
    lo: usize,
    hi: usize,
    p: &AttnParams,
) -> Vec<f32> {
    if lo >= hi {
        return vec![0.0; hd];
    }
    let s: Vec<f64> = (lo..hi)
        .map(|j| {
            let dot: f64 = (0..hd).map(|d| q[d] as f64 * k[j * hd + d] as f64).sum();
            let s = dot * p.scale as f64;
            match p.softcap {
                Some(c) => c as f64 * (s / c as f64).tanh(),
                None => s,
            }
        })
        .collect();
    let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = s.iter().map(|x| (x - mx).exp()).collect();
    let sum: f64 = e.iter().sum();
    (0..hd)
        .map(|d| {
            (lo..hi)
                .zip(&e)
                .map(|(j, w)| w / sum * v[j * hd + d] as f64)
                .sum::<f64>() as f32
        })
        .collect()
}

struct AttnCase {
    n_heads: usize,
    n_kv: usize,
    hd: usize,
    window: Option<usize>,
    softcap: Option<f32>,
    /// (sequence, position) of each query row.
    rows: Vec<(i32, i32)>,
}

/// Checks decode, prefill and auto attention of case `c` against the f64
/// reference; the decode kernel also with each side of its per-thread
/// overrides: the shared-memory key ring and the register ring must agree
/// bit for bit, the cluster merge (forced on) within the tolerance.
/// Returns how many cluster launches the forced run made.
fn check_attention(
    dev: &CudaDevice,
    r: &mut StdRng,
    c: &AttnCase,
    n_seqs: usize,
    cap: usize,
) -> u64 {
    let (n_layers, layer) = (2, 1);
    let mut cache = GpuKvCache::new(dev, n_layers, c.n_kv, c.hd, n_seqs, cap).unwrap();
    // Fill every position of every sequence of `layer` through kv_write.
    let kv_row = c.n_kv * c.hd;
    let all = n_seqs * cap;
    let k = rand_vec(r, all * kv_row, -1.0, 1.0);
    let v = rand_vec(r, all * kv_row, -1.0, 1.0);
    let seq: Vec<i32> = (0..all).map(|i| (i / cap) as i32).collect();
    let pos: Vec<i32> = (0..all).map(|i| (i % cap) as i32).collect();
    let (kd, vd) = (up(dev, &k), up(dev, &v));
    ops::kv_write(
        dev,
        &mut cache,
        layer,
        &kd,
        &vd,
        all,
        &up(dev, &seq),
        &up(dev, &pos),
    )
    .unwrap();
    // The cache holds the f16-rounded rows of `layer` and zeros elsewhere.
    let round = |x: f32| f16::from_f32(x).to_f32();
    let (kc, vc) = cache.download(dev).unwrap();
    for (src, got) in [(&k, &kc), (&v, &vc)] {
        for (i, g) in got.iter().enumerate() {
            let d = i % c.hd;
            let p = (i / c.hd) % cap;
            let g_head = (i / (c.hd * cap)) % c.n_kv;
            let l = (i / (c.hd * cap * c.n_kv)) % n_layers;
            let s = i / (c.hd * cap * c.n_kv * n_layers);
            let want = if l == layer {
                round(src[(s * cap + p) * kv_row + g_head * c.hd + d])
            } else {
                0.0
            };
            assert_eq!(g.to_f32(), want, "kv_write: cache element {i}");
        }
    }
    // Rows outside the cache are skipped: the cache must not change.
    let bad_seq = [n_seqs as i32, -1, 0, 0];
    let bad_pos = [0, 0, cap as i32, -1];
    ops::kv_write(
        dev,
        &mut cache,
        layer,
        &kd,
        &vd,
        4,
        &up(dev, &bad_seq),
        &up(dev, &bad_pos),
    )
    .unwrap();
    assert_eq!(
        (kc, vc),
        cache.download(dev).unwrap(),
        "kv_write out of range"
    );
    // (seq, kv head) -> (cap, hd) f16-rounded keys and values, as stored.
    let head_rows = |src: &[f32], s: usize, g: usize| -> Vec<f32> {
        (0..cap)
            .flat_map(|p| {
                src[(s * cap + p) * kv_row + g * c.hd..][..c.hd]
                    .iter()
                    .map(|x| round(*x))
            })
            .collect()
    };
    let p = AttnParams {
        n_heads: c.n_heads,
        n_kv_heads: c.n_kv,
        head_dim: c.hd,
        scale: 1.0 / (c.hd as f32).sqrt(),
        window: c.window,
        softcap: c.softcap,
    };
    let rows = c.rows.len();
    let q = rand_vec(r, rows * c.n_heads * c.hd, -3.0, 3.0);
    let mut want = Vec::with_capacity(q.len());
    let group = c.n_heads / c.n_kv;
    for (ri, &(s, ps)) in c.rows.iter().enumerate() {
        for h in 0..c.n_heads {
            let valid = s >= 0 && (s as usize) < n_seqs && ps >= 0 && (ps as usize) < cap;
            if !valid {
                want.extend(vec![0.0; c.hd]);
                continue;
            }
            let (s, ps) = (s as usize, ps as usize);
            let lo = c.window.map_or(0, |w| (ps + 1).saturating_sub(w));
            let kh = head_rows(&k, s, h / group);
            let vh = head_rows(&v, s, h / group);
            let qh = &q[(ri * c.n_heads + h) * c.hd..][..c.hd];
            want.extend(attend_ref(qh, &kh, &vh, c.hd, lo, ps + 1, &p));
        }
    }
    let qd = up(dev, &q);
    let seq: Vec<i32> = c.rows.iter().map(|x| x.0).collect();
    let pos: Vec<i32> = c.rows.iter().map(|x| x.1).collect();
    let (sd, pd) = (up(dev, &seq), up(dev, &pos));
    let run = |f: AttnFn| -> Vec<f32> {
        let mut out = poisoned(dev, q.len());
        f(dev, &p, &qd, &cache, layer, rows, &sd, &pd, &mut out).unwrap();
        dev.download(&out).unwrap()
    };
    let what = format!(
        "h{} kv{} hd{} rows{rows} window {:?} softcap {:?}",
        c.n_heads, c.n_kv, c.hd, c.window, c.softcap
    );
    // The two key rings of the decode kernel: same keys, same order, same
    // key step, so the same bits (the cluster merge off on both sides).
    let mut ring = Vec::new();
    for stage_kv in [true, false] {
        ops::set_attn_override(ops::AttnOverride {
            stage_kv: Some(stage_kv),
            cluster: Some(false),
            max_splits: None,
        });
        ring.push(run(ops::attention_decode as AttnFn));
    }
    // One split per row: each block's key loop runs the whole row.
    ops::set_attn_override(ops::AttnOverride {
        cluster: Some(false),
        max_splits: Some(1),
        ..Default::default()
    });
    let one_split = run(ops::attention_decode as AttnFn);
    ops::set_attn_override(ops::AttnOverride {
        stage_kv: None,
        cluster: Some(true),
        max_splits: None,
    });
    let before = ops::attn_cluster_launches();
    let cluster_out = run(ops::attention_decode as AttnFn);
    let cluster_launches = ops::attn_cluster_launches() - before;
    ops::set_attn_override(ops::AttnOverride::default());
    // Bits, the NaN-poisoned tails included.
    if let Some(i) = (0..ring[0].len()).find(|&i| ring[0][i].to_bits() != ring[1][i].to_bits()) {
        panic!(
            "attention decode {what}: shared-memory ring {} != register ring {} at {i}",
            ring[0][i], ring[1][i]
        );
    }
    // `attention` takes the tensor-core prefill kernel above the decode
    // kernel's row count (head_dim 64 / 128 / 256).
    let auto_tc = rows > ops::DECODE_MAX_ROWS.max(n_seqs) && [64, 128, 256].contains(&c.hd);
    let auto_tol = if auto_tc { PREFILL_TC_TOL } else { 2e-4 };
    for (name, got, tol) in [
        ("decode", run(ops::attention_decode as AttnFn), 2e-4),
        ("decode (register ring)", ring.swap_remove(1), 2e-4),
        ("decode (one split per row)", one_split, 2e-4),
        ("decode (cluster merge forced on)", cluster_out, 2e-4),
        (
            "prefill (CUDA cores)",
            run(prefill_on::<false> as AttnFn),
            2e-4,
        ),
        (
            "prefill (tensor cores)",
            run(prefill_on::<true> as AttnFn),
            PREFILL_TC_TOL,
        ),
        ("auto", run(ops::attention as AttnFn), auto_tol),
    ] {
        let max_err = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (g - w).abs())
            .fold(0.0f32, f32::max);
        let what = format!("attention {name} {what}");
        assert!(
            got[..want.len()].iter().all(|x| x.is_finite()),
            "{what}: non-finite output"
        );
        assert!(max_err <= tol, "{what}: max error {max_err:.2e}");
        assert!(
            got[want.len()..].iter().all(|x| x.is_nan()),
            "{what}: wrote past out"
        );
        println!("PASS {what} max_err {max_err:.1e}");
    }
    cluster_launches
}

/// Largest |error| of the tensor-core prefill kernel against the f64
/// reference (values in [-1, 1]): it rounds the scaled queries and the
/// probabilities to f16 (the f32 kernels: 2e-4).
const PREFILL_TC_TOL: f32 = 2e-3;

/// The tensor-core (`TC`) or CUDA-core prefill kernel, as an [`AttnFn`].
#[allow(clippy::too_many_arguments)]
fn prefill_on<const TC: bool>(
    dev: &CudaDevice,
    p: &AttnParams,
    q: &CudaSlice<f32>,
    cache: &GpuKvCache,
    layer: usize,
    rows: usize,
    row_seq: &CudaSlice<i32>,
    row_pos: &CudaSlice<i32>,
    out: &mut CudaSlice<f32>,
) -> marlin_cuda::Result<()> {
    let kind = if TC {
        ops::PrefillKernel::TensorCore
    } else {
        ops::PrefillKernel::Scalar
    };
    ops::attention_prefill_with(dev, kind, p, q, cache, layer, rows, row_seq, row_pos, out)
}

type AttnFn = fn(
    &CudaDevice,
    &AttnParams,
    &CudaSlice<f32>,
    &GpuKvCache,
    usize,
    usize,
    &CudaSlice<i32>,
    &CudaSlice<i32>,
    &mut CudaSlice<f32>,
) -> marlin_cuda::Result<()>;

#[test]
fn attention_matches_reference() {
    let Some(dev) = device() else { return };
    let mut r = rng("attention");
    let cap = 300;
    let mut cases = Vec::new();
    for &(n_heads, n_kv, hd) in &[
        (8, 8, 64),
        (16, 4, 128),
        (8, 1, 256),
        (9, 3, 64),
        (32, 2, 128),
    ] {
        for window in [None, Some(37)] {
            let softcap = if hd == 256 { Some(5.0) } else { None };
            let case = |rows| AttnCase {
                n_heads,
                n_kv,
                hd,
                window,
                softcap,
                rows,
            };
            // Batched decode: one row per sequence, positions near the end
            // of the cache, one past it and one bad sequence (zeros).
            let mut rows: Vec<(i32, i32)> =
                (0..3).map(|s| (s, r.gen_range(0..cap as i32))).collect();
            rows.push((1, cap as i32 - 1));
            rows.push((2, cap as i32));
            rows.push((5, 0));
            rows.push((0, 0));
            cases.push(case(rows));
            // Prefill: 17 consecutive tokens of sequence 1, then 40 mixed
            // rows of sequences 0 and 2 (two passes per prefill tile).
            let p0 = r.gen_range(0..cap as i32 - 17);
            cases.push(case((0..17).map(|i| (1, p0 + i)).collect()));
            let rows = (0..40)
                .map(|i| (2 * (i % 2), r.gen_range(0..cap as i32)))
                .collect();
            cases.push(case(rows));
            // A whole causal prefill of sequence 0 (every position of the
            // cache): several row blocks and key tiles, the diagonal tiles
            // masked, the others not.
            cases.push(case((0..cap as i32).map(|i| (0, i)).collect()));
        }
    }
    for c in &cases {
        check_attention(&dev, &mut r, c, 3, cap);
    }
    // One row, a single key, a window of 1.
    let c = AttnCase {
        n_heads: 4,
        n_kv: 1,
        hd: 128,
        window: Some(1),
        softcap: None,
        rows: vec![(0, 5)],
    };
    check_attention(&dev, &mut r, &c, 1, 8);
    // Batch 1 of a longer cache: 23 splits of 48 keys, more than the 16
    // whose partials the merge loads with the (max, sum) pairs.
    let c = AttnCase {
        n_heads: 16,
        n_kv: 4,
        hd: 128,
        window: None,
        softcap: None,
        rows: vec![(0, 1090)],
    };
    check_attention(&dev, &mut r, &c, 1, 1100);
    // Batch 1 of a 700-key cache: 15 splits of 48 keys, the cluster sizes
    // above the portable 8 that the decode-step benches ran (docs/CUDA.md
    // change 42). Forced on, the cluster merge must have run on sm_90;
    // with MARLIN_CUDA_ATTN_CLUSTER=1 (gpu_entry.sh's second run) the
    // default launches must take it too.
    let c = AttnCase {
        rows: vec![(0, 690)],
        ..c
    };
    let before = ops::attn_cluster_launches();
    let forced = check_attention(&dev, &mut r, &c, 1, 700);
    let all = ops::attn_cluster_launches() - before;
    if dev.compute_capability().0 >= 9 {
        assert!(forced > 0, "700-key case: the cluster merge never ran");
        if std::env::var("MARLIN_CUDA_ATTN_CLUSTER").as_deref() == Ok("1") {
            assert!(
                all > forced,
                "700-key case: MARLIN_CUDA_ATTN_CLUSTER=1 but only the forced launch took the cluster merge"
            );
        }
        println!(
            "PASS 700-key case: {forced} forced and {} default cluster launches",
            all - forced
        );
    }
}

/// One case of the fused decode attention (QK-norm + RoPE + KV write in
/// the attention launch): rows are (sequence, position), distinct
/// sequences.
struct RopeCase {
    n_heads: usize,
    n_kv: usize,
    hd: usize,
    n_rot: usize,
    style: RopeStyle,
    qk_norm: bool,
    window: Option<usize>,
    rows: Vec<(i32, i32)>,
    n_seqs: usize,
    cap: usize,
}

/// The fused decode kernel under `fused_with(override)`: its two key rings
/// (the shared-memory ring's first keys issued before the PDL wait, the
/// register ring's loaded before it) give the same bits, and one split per
/// row (the step's key anywhere in a long key loop) stays within `tol` of
/// `want` (the two-launch reference).
fn check_rings_and_one_split(
    what: &str,
    mut fused_with: impl FnMut(ops::AttnOverride) -> Vec<f32>,
    want: &[f32],
    tol: f32,
) {
    let ring: Vec<Vec<f32>> = [true, false]
        .into_iter()
        .map(|stage_kv| {
            fused_with(ops::AttnOverride {
                stage_kv: Some(stage_kv),
                cluster: Some(false),
                max_splits: None,
            })
        })
        .collect();
    if let Some(i) = (0..want.len()).find(|&i| ring[0][i].to_bits() != ring[1][i].to_bits()) {
        panic!(
            "{what}: shared-memory ring {} != register ring {} at {i}",
            ring[0][i], ring[1][i]
        );
    }
    let one = fused_with(ops::AttnOverride {
        max_splits: Some(1),
        ..Default::default()
    });
    assert_close(&format!("{what} (one split)"), &one, want, tol);
}

/// A [`RopeCase`]'s inputs on the device: q | k | v projection rows of
/// each row side by side plus an odd pad (the row stride), QK-norm weights,
/// the RoPE table, the rows' sequences and positions.
struct RopeDeviceInputs<T> {
    proj: CudaSlice<T>,
    width: usize,
    q_norm: CudaSlice<f32>,
    k_norm: CudaSlice<f32>,
    rope: GpuRope,
    row_seq: CudaSlice<i32>,
    row_pos: CudaSlice<i32>,
}

impl<T: ops::ActElem> RopeDeviceInputs<T> {
    fn new(dev: &CudaDevice, r: &mut StdRng, c: &RopeCase, conv: &impl Fn(f32) -> T) -> Self {
        let width = (c.n_heads + 2 * c.n_kv) * c.hd + 5;
        let proj: Vec<T> = rand_vec(r, c.rows.len() * width, -2.0, 2.0)
            .into_iter()
            .map(conv)
            .collect();
        let rope = Rope::new(c.hd, c.n_rot, 10_000.0, c.style, &RopeScaling::None).unwrap();
        Self {
            proj: up(dev, &proj),
            width,
            q_norm: up(dev, &rand_vec(r, c.hd, 0.5, 1.5)),
            k_norm: up(dev, &rand_vec(r, c.hd, 0.5, 1.5)),
            rope: GpuRope::new(dev, &rope).unwrap(),
            row_seq: up(dev, &c.rows.iter().map(|x| x.0).collect::<Vec<_>>()),
            row_pos: up(dev, &c.rows.iter().map(|x| x.1).collect::<Vec<_>>()),
        }
    }

    /// The projection rows from column `offset` (q 0, k n_heads*hd, v after).
    fn rows(&self, offset: usize) -> ops::ProjRows<'_, T> {
        ops::ProjRows {
            data: self.proj.slice(offset..),
            stride: self.width,
        }
    }

    fn params(&self, c: &RopeCase) -> AttnParams {
        AttnParams {
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv,
            head_dim: c.hd,
            scale: 1.0 / (c.hd as f32).sqrt(),
            window: c.window,
            softcap: None,
        }
    }

    fn shape(&self, c: &RopeCase) -> ops::HeadShape {
        ops::HeadShape {
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv,
            head_dim: c.hd,
        }
    }
}

/// `attention_decode_rope` against `qkv_rope_kv` + `attention_decode` on
/// the same projection rows and cache history: the caches must end equal
/// bit for bit (same f16 rounding of the same roped key), the outputs
/// within `out_tol` relative (the same arithmetic in another kernel); the
/// fused entry's shared-memory and register key rings bit for bit.
fn check_attention_rope<T: ops::ActElem>(
    dev: &CudaDevice,
    r: &mut StdRng,
    c: &RopeCase,
    conv: impl Fn(f32) -> T,
    back: impl Fn(T) -> f32,
    out_tol: f32,
) {
    let (n_layers, layer) = (2, 1);
    let (qd, kvd) = (c.n_heads * c.hd, c.n_kv * c.hd);
    let m = c.rows.len();
    let new_cache = || GpuKvCache::new(dev, n_layers, c.n_kv, c.hd, c.n_seqs, c.cap).unwrap();
    let mut caches = [new_cache(), new_cache()];
    let all = c.n_seqs * c.cap;
    let (kd, vd) = (
        up(dev, &rand_vec(r, all * kvd, -1.0, 1.0)),
        up(dev, &rand_vec(r, all * kvd, -1.0, 1.0)),
    );
    let hist_seq: Vec<i32> = (0..all).map(|i| (i / c.cap) as i32).collect();
    let hist_pos: Vec<i32> = (0..all).map(|i| (i % c.cap) as i32).collect();
    let (hs, hp) = (up(dev, &hist_seq), up(dev, &hist_pos));
    for cache in caches.iter_mut() {
        ops::kv_write(dev, cache, layer, &kd, &vd, all, &hs, &hp).unwrap();
    }
    let d = RopeDeviceInputs::new(dev, r, c, &conv);
    let (q, k, v) = (d.rows(0), d.rows(qd), d.rows(qd + kvd));
    let qk_norm = c.qk_norm.then_some((&d.q_norm, &d.k_norm));
    let (gpu_rope, seqd, posd, p, shape) =
        (&d.rope, &d.row_seq, &d.row_pos, d.params(c), d.shape(c));
    let eps = 1e-6;
    let poisoned_t = || up(dev, &vec![conv(f32::NAN); m * qd + SLACK]);
    // Two launches into cache 0.
    let mut qf = poisoned(dev, m * qd);
    let dest = ops::KvDest::Cache {
        cache: &mut caches[0],
        layer,
    };
    ops::qkv_rope_kv(
        dev, &q, &k, &v, m, shape, qk_norm, eps, 0.0, gpu_rope, dest, seqd, posd, &mut qf,
    )
    .unwrap();
    let mut out_a = poisoned_t();
    ops::attention_decode(dev, &p, &qf, &caches[0], layer, m, seqd, posd, &mut out_a).unwrap();
    // One launch into cache 1.
    let inp = ops::RopeInputs {
        q: &q,
        k: &k,
        v: &v,
        qk_norm,
        eps,
        w_offset: 0.0,
        rope: gpu_rope,
    };
    let mut out_b = poisoned_t();
    ops::attention_decode_rope(
        dev,
        &p,
        &inp,
        &mut caches[1],
        layer,
        m,
        seqd,
        posd,
        &mut out_b,
    )
    .unwrap();
    let what = format!(
        "fused attention h{}/kv{} hd{} rot {} {:?} norm {} window {:?} rows {:?} f16 {}",
        c.n_heads,
        c.n_kv,
        c.hd,
        c.n_rot,
        c.style,
        c.qk_norm,
        c.window,
        c.rows,
        T::IS_F16
    );
    let (ka, va) = caches[0].download(dev).unwrap();
    let (kb, vb) = caches[1].download(dev).unwrap();
    for (name, a, b) in [("keys", &ka, &kb), ("values", &va, &vb)] {
        if let Some(i) = (0..a.len()).find(|&i| a[i].to_bits() != b[i].to_bits()) {
            panic!("{what}: cache {name}[{i}] {} vs {}", a[i], b[i]);
        }
    }
    let to_f32 = |x: Vec<T>| x.into_iter().map(&back).collect::<Vec<f32>>();
    let (a, b) = (
        to_f32(dev.download(&out_a).unwrap()),
        to_f32(dev.download(&out_b).unwrap()),
    );
    assert_close(&what, &b, &a[..m * qd], out_tol);
    // The fused entry under a per-thread override, rerun into cache 1
    // (rewriting the same keys).
    let fused_with = |o: ops::AttnOverride| -> Vec<f32> {
        ops::set_attn_override(o);
        let mut out = poisoned_t();
        let r = ops::attention_decode_rope(
            dev,
            &p,
            &inp,
            &mut caches[1],
            layer,
            m,
            seqd,
            posd,
            &mut out,
        );
        ops::set_attn_override(ops::AttnOverride::default());
        r.unwrap();
        to_f32(dev.download(&out).unwrap())
    };
    check_rings_and_one_split(&what, fused_with, &a[..m * qd], out_tol);
    // A q row stride below the q width is refused.
    let short = ops::ProjRows {
        data: d.proj.slice(0..),
        stride: qd - 1,
    };
    let bad = ops::RopeInputs { q: &short, ..inp };
    assert!(ops::attention_decode_rope(
        dev,
        &p,
        &bad,
        &mut caches[1],
        layer,
        m,
        seqd,
        posd,
        &mut out_b
    )
    .is_err());
}

#[test]
fn fused_rope_attention_matches_two_launches() {
    let Some(dev) = device() else { return };
    let mut r = rng("fused rope attention");
    let cap = 700;
    let mut cases = Vec::new();
    // (n_heads, n_kv, head_dim, n_rot, style, qk-norm): GQA groups 4, 4
    // (partial rotation), 8, 3, 16 (two head chunks), 2; head_dim 16..256.
    for &(n_heads, n_kv, hd, n_rot, style, qk_norm) in &[
        (32, 8, 128, 128, RopeStyle::Neox, false),
        (16, 4, 128, 64, RopeStyle::Neox, true),
        (8, 1, 64, 64, RopeStyle::Normal, true),
        (9, 3, 64, 64, RopeStyle::Neox, false),
        (32, 2, 128, 128, RopeStyle::Neox, true),
        (4, 2, 16, 16, RopeStyle::Neox, true),
        (8, 1, 256, 256, RopeStyle::Neox, false),
    ] {
        for window in [None, Some(37)] {
            // Decode at batch 1 (many splits: the merge by ticket, the
            // step's key in the last split).
            cases.push(RopeCase {
                n_heads,
                n_kv,
                hd,
                n_rot,
                style,
                qk_norm,
                window,
                rows: vec![(0, r.gen_range(0..cap as i32))],
                n_seqs: 1,
                cap,
            });
            // Batched: three sequences, one row past the cache, one bad
            // sequence (nothing written, zeros out), one at position 0.
            let rows = vec![
                (0, r.gen_range(0..cap as i32)),
                (1, cap as i32 - 1),
                (2, r.gen_range(0..cap as i32)),
                (3, cap as i32),
                (6, 0),
                (4, 0),
            ];
            cases.push(RopeCase {
                n_heads,
                n_kv,
                hd,
                n_rot,
                style,
                qk_norm,
                window,
                rows,
                n_seqs: 5,
                cap,
            });
        }
    }
    for c in &cases {
        check_attention_rope(&dev, &mut r, c, |x| x, |x| x, 1e-5);
        // f16 output: one f16 ulp of slack for a differently fused multiply.
        check_attention_rope(&dev, &mut r, c, f16::from_f32, f16::to_f32, 1e-3);
    }
    println!(
        "PASS fused rope attention ({} cases x 2 types)",
        cases.len()
    );
}

/// `paged_attention_decode_rope` (the fused decode kernel reading and
/// writing the paged pool through its block tables) against
/// `qkv_rope_kv` into a second pool + `paged_attention` (the serving
/// pass's two launches): the pools must end equal bit for bit, the outputs
/// within `out_tol`; and, where every table is full, against
/// `attention_decode_rope` over a contiguous cache of the same capacity
/// and history: the same splits and arithmetic, so the same bits. Blocks
/// of `block_size` positions, shuffled over a pool with spare blocks;
/// `short_table`: the last table covers one block only, so that a row past
/// it attends keys in a block the table does not have (skipped: the two
/// launches skip them too).
#[allow(clippy::too_many_arguments)]
fn check_paged_attention_rope<T: ops::ActElem>(
    dev: &CudaDevice,
    r: &mut StdRng,
    c: &RopeCase,
    block_size: usize,
    short_table: bool,
    conv: impl Fn(f32) -> T + Copy,
    back: impl Fn(T) -> f32 + Copy,
    out_tol: f32,
) {
    use rand::seq::SliceRandom;
    let (n_layers, layer) = (2, 1);
    let (qd, kvd) = (c.n_heads * c.hd, c.n_kv * c.hd);
    let m = c.rows.len();
    let per_table = c.cap.div_ceil(block_size);
    let positions = per_table * block_size;
    let n_blocks = c.n_seqs * per_table + 3;
    let mut ids: Vec<u32> = (0..n_blocks as u32).collect();
    ids.shuffle(r);
    let mut tables: Vec<Vec<u32>> = ids
        .chunks(per_table)
        .take(c.n_seqs)
        .map(|t| t.to_vec())
        .collect();
    if short_table {
        tables.last_mut().unwrap().truncate(1);
    }
    let table_refs: Vec<&[u32]> = tables.iter().map(|t| t.as_slice()).collect();
    let new_pool = || {
        let mut pool = PagedKvPool::new(dev, n_layers, c.n_kv, c.hd, block_size, n_blocks).unwrap();
        pool.set_block_tables(dev, &table_refs).unwrap();
        pool
    };
    let mut pools = [new_pool(), new_pool()];
    let mut cache = GpuKvCache::new(dev, n_layers, c.n_kv, c.hd, c.n_seqs, positions).unwrap();
    // History: every position each table covers, the same values in the
    // contiguous cache.
    let hist: Vec<(i32, i32)> = tables
        .iter()
        .enumerate()
        .flat_map(|(s, t)| (0..(t.len() * block_size) as i32).map(move |p| (s as i32, p)))
        .collect();
    let all = hist.len();
    let (kd, vd) = (
        up(dev, &rand_vec(r, all * kvd, -1.0, 1.0)),
        up(dev, &rand_vec(r, all * kvd, -1.0, 1.0)),
    );
    let hs = up(dev, &hist.iter().map(|x| x.0).collect::<Vec<_>>());
    let hp = up(dev, &hist.iter().map(|x| x.1).collect::<Vec<_>>());
    for pool in pools.iter_mut() {
        ops::paged_kv_write(dev, pool, layer, &kd, &vd, all, &hs, &hp).unwrap();
    }
    ops::kv_write(dev, &mut cache, layer, &kd, &vd, all, &hs, &hp).unwrap();
    let d = RopeDeviceInputs::new(dev, r, c, &conv);
    let (q, k, v) = (d.rows(0), d.rows(qd), d.rows(qd + kvd));
    let qk_norm = c.qk_norm.then_some((&d.q_norm, &d.k_norm));
    let (gpu_rope, seqd, posd, p, shape) =
        (&d.rope, &d.row_seq, &d.row_pos, d.params(c), d.shape(c));
    let eps = 1e-6;
    let poisoned_t = || up(dev, &vec![conv(f32::NAN); m * qd + SLACK]);
    let what = format!(
        "fused paged attention h{}/kv{} hd{} rot {} {:?} norm {} window {:?} blocks of {block_size} \
         short table {short_table} rows {:?} f16 {}",
        c.n_heads, c.n_kv, c.hd, c.n_rot, c.style, c.qk_norm, c.window, c.rows, T::IS_F16
    );
    // The serving pass's two launches into pool 0.
    let mut qf = poisoned(dev, m * qd);
    let dest = ops::KvDest::Paged {
        pool: &mut pools[0],
        layer,
    };
    ops::qkv_rope_kv(
        dev, &q, &k, &v, m, shape, qk_norm, eps, 0.0, gpu_rope, dest, seqd, posd, &mut qf,
    )
    .unwrap();
    let mut out_a = poisoned(dev, m * qd);
    ops::paged_attention(dev, &p, &qf, &pools[0], layer, m, seqd, posd, &mut out_a).unwrap();
    let inp = ops::RopeInputs {
        q: &q,
        k: &k,
        v: &v,
        qk_norm,
        eps,
        w_offset: 0.0,
        rope: gpu_rope,
    };
    let to_f32 = |x: Vec<T>| x.into_iter().map(back).collect::<Vec<f32>>();
    // One launch into pool 1, under an override (the default first).
    let mut fused_with = |o: ops::AttnOverride| -> Vec<f32> {
        ops::set_attn_override(o);
        let mut out = poisoned_t();
        let res = ops::paged_attention_decode_rope(
            dev,
            &p,
            &inp,
            &mut pools[1],
            layer,
            m,
            seqd,
            posd,
            &mut out,
        );
        ops::set_attn_override(ops::AttnOverride::default());
        res.unwrap();
        let host = to_f32(dev.download(&out).unwrap());
        assert!(
            host[m * qd..].iter().all(|x| x.is_nan()),
            "{what}: slack written"
        );
        host
    };
    let fused = fused_with(ops::AttnOverride::default());
    let a = dev.download(&out_a).unwrap();
    assert_close(&what, &fused, &a[..m * qd], out_tol);
    // Rerun into pool 1 (rewriting the same keys).
    check_rings_and_one_split(&what, fused_with, &a[..m * qd], out_tol);
    let (ka, va) = pools[0].download(dev).unwrap();
    let (kb, vb) = pools[1].download(dev).unwrap();
    for (name, x, y) in [("keys", &ka, &kb), ("values", &va, &vb)] {
        if let Some(i) = (0..x.len()).find(|&i| x[i].to_bits() != y[i].to_bits()) {
            panic!("{what}: pool {name}[{i}] {} vs {}", x[i], y[i]);
        }
    }
    if !short_table {
        let mut out_c = poisoned_t();
        ops::attention_decode_rope(dev, &p, &inp, &mut cache, layer, m, seqd, posd, &mut out_c)
            .unwrap();
        let contiguous = to_f32(dev.download(&out_c).unwrap());
        if let Some(i) = (0..m * qd).find(|&i| fused[i].to_bits() != contiguous[i].to_bits()) {
            panic!(
                "{what}: paged {} != contiguous {} at {i}",
                fused[i], contiguous[i]
            );
        }
    }
    // Refusals: a q row stride below the q width, a layer outside the pool.
    let short = ops::ProjRows {
        data: d.proj.slice(0..),
        stride: qd - 1,
    };
    let bad = ops::RopeInputs { q: &short, ..inp };
    let mut out = poisoned_t();
    assert!(ops::paged_attention_decode_rope(
        dev,
        &p,
        &bad,
        &mut pools[1],
        layer,
        m,
        seqd,
        posd,
        &mut out
    )
    .is_err());
    assert!(ops::paged_attention_decode_rope(
        dev,
        &p,
        &inp,
        &mut pools[1],
        n_layers,
        m,
        seqd,
        posd,
        &mut out
    )
    .is_err());
}

#[test]
fn fused_paged_rope_attention_matches_two_launches_and_the_cache() {
    let Some(dev) = device() else { return };
    let mut r = rng("fused paged rope attention");
    let cap = 700;
    let mut n = 0;
    for &(n_heads, n_kv, hd, n_rot, style, qk_norm) in &[
        (32, 8, 128, 128, RopeStyle::Neox, false),
        (16, 4, 128, 64, RopeStyle::Neox, true),
        (9, 3, 64, 64, RopeStyle::Neox, false),
        (32, 2, 128, 128, RopeStyle::Neox, true),
        (4, 2, 16, 16, RopeStyle::Normal, true),
        (8, 1, 256, 256, RopeStyle::Neox, false),
    ] {
        for (window, block_size) in [(None, 16), (Some(37), 16), (None, 5)] {
            let cases = [
                // One decode row (many splits, the ticket merge).
                RopeCase {
                    n_heads,
                    n_kv,
                    hd,
                    n_rot,
                    style,
                    qk_norm,
                    window,
                    rows: vec![(0, r.gen_range(0..cap as i32))],
                    n_seqs: 1,
                    cap,
                },
                // A serving pass: rows in any order, one at its table's
                // last position, one past every table, one of no table,
                // one at position 0 of the last table.
                RopeCase {
                    n_heads,
                    n_kv,
                    hd,
                    n_rot,
                    style,
                    qk_norm,
                    window,
                    rows: vec![
                        (2, r.gen_range(0..cap as i32)),
                        (0, cap.div_ceil(block_size) as i32 * block_size as i32 - 1),
                        (1, r.gen_range(0..cap as i32)),
                        (3, 1 << 20),
                        (6, 0),
                        (4, 0),
                    ],
                    n_seqs: 5,
                    cap,
                },
            ];
            for c in &cases {
                for short_table in [false, true] {
                    check_paged_attention_rope(
                        &dev,
                        &mut r,
                        c,
                        block_size,
                        short_table,
                        |x| x,
                        |x| x,
                        1e-5,
                    );
                    check_paged_attention_rope(
                        &dev,
                        &mut r,
                        c,
                        block_size,
                        short_table,
                        f16::from_f32,
                        f16::to_f32,
                        1e-3,
                    );
                    n += 2;
                }
            }
        }
    }
    // A row past the short table's one block: its keys in the missing
    // blocks are skipped by both paths (the check above compares them).
    let c = RopeCase {
        n_heads: 8,
        n_kv: 2,
        hd: 64,
        n_rot: 64,
        style: RopeStyle::Neox,
        qk_norm: false,
        window: None,
        rows: vec![(0, 300), (1, 40)],
        n_seqs: 2,
        cap: 320,
    };
    check_paged_attention_rope(&dev, &mut r, &c, 16, true, |x| x, |x| x, 1e-5);
    println!("PASS fused paged rope attention ({} checks)", n + 1);
}

fn argmax_ref(row: &[f32]) -> u32 {
    let mut best: Option<(usize, f32)> = None;
    for (i, &l) in row.iter().enumerate() {
        if l.is_nan() {
            continue;
        }
        match best {
            Some((_, b)) if l <= b => {}
            _ => best = Some((i, l)),
        }
    }
    best.map_or(u32::MAX, |(i, _)| i as u32)
}

#[test]
fn argmax_matches_cpu() {
    let Some(dev) = device() else { return };
    let mut r = rng("argmax");
    for (rows, vocab) in [(1, 262_144), (3, 262_144), (17, 32_000), (2, 5), (1, 1)] {
        let mut logits = rand_vec(&mut r, rows * vocab, -30.0, 30.0);
        for row in logits.chunks_mut(vocab) {
            // A tie at the maximum (lowest index must win) and some NaN.
            let a = r.gen_range(0..vocab);
            let b = r.gen_range(0..vocab);
            row[a] = 31.0;
            row[b] = 31.0;
            let c = r.gen_range(0..vocab);
            if c != a && c != b {
                row[c] = f32::NAN;
            }
        }
        if vocab == 5 {
            logits[5..10].fill(f32::NAN); // second row: all NaN
        }
        if vocab == 32_000 {
            // Signed zeros tie (lowest index wins) above a negative row:
            // -0 at the lowest index, so a kernel that orders +0 above -0
            // answers 9_000 and fails.
            let row = &mut logits[..vocab];
            row.fill(-1.0);
            row[5_000] = -0.0;
            row[9_000] = 0.0;
            row[20_000] = -0.0;
        }
        let ld = up(&dev, &logits);
        let mut out = up(&dev, &vec![0xdead_beef_u32; rows + SLACK]);
        ops::argmax_rows(&dev, &ld, rows, vocab, &mut out).unwrap();
        let got = dev.download(&out).unwrap();
        for (i, row) in logits.chunks(vocab).enumerate() {
            assert_eq!(got[i], argmax_ref(row), "row {i} of {rows} x {vocab}");
        }
        assert!(got[rows..].iter().all(|&v| v == 0xdead_beef));
        // The split form, twice on one workspace (its keys and tickets
        // must be back at zero after each launch).
        let mut ws = ops::ArgmaxWorkspace::new(&dev, rows).unwrap();
        for pass in 0..2 {
            let mut out = up(&dev, &vec![0xdead_beef_u32; rows + SLACK]);
            ops::argmax_rows_ws(&dev, &ld, rows, vocab, &mut ws, &mut out).unwrap();
            let got = dev.download(&out).unwrap();
            for (i, row) in logits.chunks(vocab).enumerate() {
                assert_eq!(
                    got[i],
                    argmax_ref(row),
                    "split argmax pass {pass} row {i} of {rows} x {vocab}"
                );
            }
            assert!(got[rows..].iter().all(|&v| v == 0xdead_beef));
        }
        // The f16 form (an INT4 LM head's output): the same launch writes
        // the f32 logits, equal to logits_from_f16's (bit for bit without a
        // cap), and picks each row's argmax of them.
        let l16: Vec<f16> = logits.iter().map(|&v| f16::from_f32(v)).collect();
        let x16 = up(&dev, &l16);
        for cap in [None, Some(20.0f32)] {
            let mut want_d = poisoned(&dev, rows * vocab);
            ops::logits_from_f16(&dev, &x16, rows * vocab, cap, &mut want_d).unwrap();
            let want = dev.download(&want_d).unwrap();
            for pass in 0..2 {
                let mut got_d = poisoned(&dev, rows * vocab);
                let mut out = up(&dev, &vec![0xdead_beef_u32; rows + SLACK]);
                ops::argmax_rows_ws_f16(
                    &dev, &x16, rows, vocab, cap, &mut got_d, &mut ws, &mut out,
                )
                .unwrap();
                let got_l = dev.download(&got_d).unwrap();
                let tol = if cap.is_some() { 1e-6 } else { 0.0 };
                for (i, (g, w)) in got_l[..rows * vocab].iter().zip(&want).enumerate() {
                    assert!(
                        g.to_bits() == w.to_bits()
                            || (g.is_nan() && w.is_nan())
                            || (g - w).abs() <= tol * w.abs().max(1.0),
                        "f16 logits [{i}] cap {cap:?}: got {g}, want {w}"
                    );
                }
                assert!(got_l[rows * vocab..].iter().all(|v| v.is_nan()));
                let got = dev.download(&out).unwrap();
                for (i, row) in got_l[..rows * vocab].chunks(vocab).enumerate() {
                    assert_eq!(
                        got[i],
                        argmax_ref(row),
                        "f16 split argmax cap {cap:?} pass {pass} row {i} of {rows} x {vocab}"
                    );
                }
                assert!(got[rows..].iter().all(|&v| v == 0xdead_beef));
            }
        }
        let mut bad = poisoned(&dev, rows * vocab);
        let mut out = up(&dev, &vec![0u32; rows]);
        let e = ops::argmax_rows_ws_f16(
            &dev,
            &x16,
            rows,
            vocab,
            Some(-1.0),
            &mut bad,
            &mut ws,
            &mut out,
        );
        assert!(e.is_err(), "negative cap");
        if rows > 1 {
            let mut small = ops::ArgmaxWorkspace::new(&dev, rows - 1).unwrap();
            let mut out = up(&dev, &vec![0u32; rows]);
            let e = ops::argmax_rows_ws(&dev, &ld, rows, vocab, &mut small, &mut out);
            assert!(e.is_err(), "{rows} rows in a workspace for {}", rows - 1);
        }
    }
    println!("PASS argmax");
}

/// The CPU sampler's token for `logits` with `p` and the uniform `u`: the
/// definition the device computes bit for bit.
fn host_draw(logits: &[f32], p: &DeviceSampling, u: f32) -> u32 {
    let params = SamplingParams::unpenalised(p.temperature, p.top_k, p.top_p, p.min_p);
    draw_with_uniform(&params, logits, u).unwrap_or(ops::NO_TOKEN)
}

/// Asserts that `got[i]` is the CPU sampler's token for row `i` of `logits`
/// (rows of `vocab`) with `p` and `uniforms[i]`; returns the rows checked.
fn assert_host_draws(
    got: &[u32],
    logits: &[f32],
    vocab: usize,
    p: &DeviceSampling,
    uniforms: &[f32],
    what: &str,
) -> usize {
    let rows = logits.len() / vocab;
    for (i, row) in logits.chunks(vocab).enumerate() {
        let u = uniforms[i];
        assert_eq!(
            got[i],
            host_draw(row, p, u),
            "{what}: row {i} of {rows} x {vocab} {p:?} u {u}"
        );
    }
    rows
}

#[test]
fn sampling_matches_the_cpu_sampler_exactly() {
    let Some(dev) = device() else { return };
    let mut r = rng("sampling");
    let mut checked = 0;
    let params = |temperature, top_k, top_p, min_p| DeviceSampling {
        temperature,
        top_k,
        top_p,
        min_p,
    };
    for (rows, vocab) in [(1, 262_144), (3, 1000), (17, 32_000)] {
        for p in [
            params(0.7, 40, 0.9, 0.0),
            params(1.0, 256, 1.0, 0.05),
            params(1.3, 0, 0.5, 0.0),
            params(0.8, 3, 1.0, 0.0),
            params(1.0, 0, 1.0, 0.0),
            params(0.6, 0, 0.95, 0.05),
            params(2.0, vocab, 0.999, 0.0),
        ] {
            // Continuous logits, then ties: copies of each row's 40th
            // largest value (at a top-k threshold and inside a top-p cut),
            // a NaN and a -inf.
            let mut logits = rand_vec(&mut r, rows * vocab, -8.0, 8.0);
            for row in logits.chunks_mut(vocab) {
                let mut sorted = row.to_vec();
                sorted.sort_by(|a, b| b.total_cmp(a));
                let tie = sorted[39.min(vocab - 1)];
                for _ in 0..3 {
                    row[r.gen_range(0..vocab)] = tie;
                }
                row[r.gen_range(0..vocab)] = f32::NAN;
                row[r.gen_range(0..vocab)] = f32::NEG_INFINITY;
            }
            let uniforms = rand_vec(&mut r, rows, 0.0, 1.0);
            let mut out = up(&dev, &vec![0xdead_beef_u32; rows + SLACK]);
            let (ld, ud) = (up(&dev, &logits), up(&dev, &uniforms));
            ops::sample_rows(&dev, &ld, rows, vocab, &p, &ud, &mut out).unwrap();
            let got = dev.download(&out).unwrap();
            checked += assert_host_draws(&got, &logits, vocab, &p, &uniforms, "single-row");
            assert!(got[rows..].iter().all(|&v| v == 0xdead_beef));
        }
    }
    // Thousands of ties (integer logits): at the top-k threshold (the
    // ordered gather) and at the top-p cut (the ordered tie pass).
    let (rows, vocab) = (4, 32_000);
    let logits: Vec<f32> = (0..rows * vocab)
        .map(|_| r.gen_range(0..8) as f32)
        .collect();
    for p in [
        params(1.0, 40, 1.0, 0.0),
        params(1.0, 0, 0.3, 0.0),
        params(0.5, 0, 0.7, 0.0),
    ] {
        let uniforms = rand_vec(&mut r, rows, 0.0, 1.0);
        let mut out = up(&dev, &vec![0u32; rows]);
        let (ld, ud) = (up(&dev, &logits), up(&dev, &uniforms));
        ops::sample_rows(&dev, &ld, rows, vocab, &p, &ud, &mut out).unwrap();
        let got = dev.download(&out).unwrap();
        checked += assert_host_draws(&got, &logits, vocab, &p, &uniforms, "tied");
    }
    // Each row its own choice: argmax, draws of every path, none.
    let (rows, vocab) = (6, 50_000);
    let logits = rand_vec(&mut r, rows * vocab, -6.0, 6.0);
    let choices = [
        RowChoice::Argmax,
        RowChoice::Draw {
            params: params(1.0, 0, 1.0, 0.0),
            uniform: 0.61,
        },
        RowChoice::None,
        RowChoice::Draw {
            params: params(0.7, 40, 0.9, 0.05),
            uniform: 0.02,
        },
        RowChoice::Draw {
            params: params(1.2, 0, 0.8, 0.0),
            uniform: 0.93,
        },
        RowChoice::Draw {
            params: params(0.0, 0, 1.0, 0.0),
            uniform: 0.5,
        },
    ];
    let words = ops::pack_row_choices(&choices, vocab).unwrap();
    let mut out = up(&dev, &vec![0xdead_beef_u32; rows]);
    ops::sample_rows_each(
        &dev,
        &up(&dev, &logits),
        rows,
        vocab,
        &up(&dev, &words),
        &mut out,
    )
    .unwrap();
    let got = dev.download(&out).unwrap();
    for (i, (row, c)) in logits.chunks(vocab).zip(&choices).enumerate() {
        let want = match *c {
            RowChoice::None => ops::NO_TOKEN,
            RowChoice::Argmax => host_draw(row, &params(0.0, 0, 1.0, 0.0), 0.5),
            RowChoice::Draw { params, uniform } => host_draw(row, &params, uniform),
        };
        assert_eq!(got[i], want, "row {i}: {c:?}");
        checked += 1;
    }
    // Greedy goes through argmax; a row of NaN has no token.
    let logits = vec![
        0.5f32,
        2.0,
        2.0,
        -1.0,
        f32::NAN,
        f32::NAN,
        f32::NAN,
        f32::NAN,
    ];
    let mut out = up(&dev, &[0u32; 2]);
    ops::sample_rows(
        &dev,
        &up(&dev, &logits),
        2,
        4,
        &params(0.0, 40, 0.9, 0.0),
        &up(&dev, &[0.5f32, 0.5]),
        &mut out,
    )
    .unwrap();
    assert_eq!(dev.download(&out).unwrap(), vec![1, ops::NO_TOKEN]);
    println!("PASS sampling ({checked} rows equal to the CPU sampler's draw)");
}

/// The split draw (`sample_rows_ws` / `sample_rows_each_ws`: split argmax,
/// then many blocks per row) against the CPU sampler on rows of 1 to 262k
/// tokens: continuous logits with ties, NaN and -inf, rows of NaN, of -inf
/// and with +inf; min-p; the draws the split path leaves to the single-row
/// kernel; each launch twice (the tickets reset), and a row mix through
/// the per-row entry.
#[test]
fn split_draw_matches_the_cpu_sampler_exactly() {
    let Some(dev) = device() else { return };
    let mut r = rng("split_draw");
    let params = |temperature, top_k, top_p, min_p| DeviceSampling {
        temperature,
        top_k,
        top_p,
        min_p,
    };
    let mut checked = 0;
    for (rows, vocab) in [
        (1, 262_144),
        (1, 128_256),
        (2, 49_152),
        (3, 4097),
        (5, 1000),
        (4, 7),
        (40, 32_000),
    ] {
        let mut ws = ops::ArgmaxWorkspace::new(&dev, rows).unwrap();
        for p in [
            params(1.0, 0, 1.0, 0.0),
            params(0.7, 0, 1.0, 0.05),
            params(1.3, vocab, 1.0, 0.0),
            params(40.0, 0, 1.0, 0.0),
            params(0.7, 40.min(vocab - 1), 0.9, 0.0),
            params(0.8, 40.min(vocab - 1), 0.95, 0.05),
            params(1.0, 256.min(vocab - 1), 1.0, 0.05),
            params(2.0, 3, 1.0, 0.0),
            params(1.0, 0, 0.5, 0.0),
            params(0.7, 0, 0.9, 0.05),
            params(2.0, 0, 0.999, 0.0),
        ] {
            let mut logits = rand_vec(&mut r, rows * vocab, -8.0, 8.0);
            for (i, row) in logits.chunks_mut(vocab).enumerate() {
                let mut sorted = row.to_vec();
                sorted.sort_by(|a, b| b.total_cmp(a));
                let tie = sorted[39.min(vocab - 1)];
                for _ in 0..3 {
                    row[r.gen_range(0..vocab)] = tie;
                }
                row[r.gen_range(0..vocab)] = f32::NAN;
                row[r.gen_range(0..vocab)] = f32::NEG_INFINITY;
                // Rows with no token, and a tied maximum.
                match (rows > 3).then_some(i) {
                    Some(1) => row.fill(f32::NAN),
                    Some(2) => row.fill(f32::NEG_INFINITY),
                    Some(3) => row[r.gen_range(0..vocab)] = f32::INFINITY,
                    Some(4) => {
                        let top = sorted[0];
                        row[r.gen_range(0..vocab)] = top;
                    }
                    _ => {}
                }
            }
            let uniforms = rand_vec(&mut r, rows, 0.0, 1.0);
            let (ld, ud) = (up(&dev, &logits), up(&dev, &uniforms));
            for round in 0..2 {
                let mut out = up(&dev, &vec![0xdead_beef_u32; rows + SLACK]);
                ops::sample_rows_ws(&dev, &ld, rows, vocab, &p, &ud, &mut ws, &mut out).unwrap();
                let got = dev.download(&out).unwrap();
                let what = format!("split, round {round}");
                checked += assert_host_draws(&got, &logits, vocab, &p, &uniforms, &what);
                assert!(got[rows..].iter().all(|&v| v == 0xdead_beef));
            }
        }
    }
    // Thousands of ties (integer logits) at the top-k threshold (the
    // ordered gathers of both selections) and in the top-p cut bin (more
    // than 2048 tokens: the single-row kernel); hundreds (64 values): the
    // split top-p draw's sort of the cut bin.
    let (rows, vocab) = (4, 32_000);
    let mut ws = ops::ArgmaxWorkspace::new(&dev, rows).unwrap();
    for (values, p) in [
        (8, params(1.0, 40, 1.0, 0.0)),
        (8, params(0.9, 256, 0.8, 0.0)),
        (8, params(1.0, 0, 0.3, 0.0)),
        (8, params(0.5, 0, 0.7, 0.0)),
        (64, params(1.0, 0, 0.6, 0.0)),
        (64, params(3.0, 0, 0.95, 0.01)),
    ] {
        let logits: Vec<f32> = (0..rows * vocab)
            .map(|_| r.gen_range(0..values) as f32 * 0.25)
            .collect();
        let uniforms = rand_vec(&mut r, rows, 0.0, 1.0);
        let mut out = up(&dev, &vec![0u32; rows]);
        let (ld, ud) = (up(&dev, &logits), up(&dev, &uniforms));
        ops::sample_rows_ws(&dev, &ld, rows, vocab, &p, &ud, &mut ws, &mut out).unwrap();
        let got = dev.download(&out).unwrap();
        checked += assert_host_draws(&got, &logits, vocab, &p, &uniforms, "tied");
    }
    // Signed zeros tied at the top-k threshold and across the top-p cut
    // (the CPU sampler and the device keys take -0 as +0, ties by index),
    // spread over the chunks: single-row and split kernels.
    let (rows, vocab) = (2, 40_000);
    let mut logits = vec![f32::NEG_INFINITY; rows * vocab];
    for row in logits.chunks_mut(vocab) {
        for _ in 0..300 {
            row[r.gen_range(0..vocab)] = if r.gen_bool(0.5) { -0.0 } else { 0.0 };
        }
        for _ in 0..10 {
            row[r.gen_range(0..vocab)] = r.gen_range(0.5..2.0);
        }
    }
    let mut ws = ops::ArgmaxWorkspace::new(&dev, rows).unwrap();
    for p in [
        params(1.0, 40, 1.0, 0.0),
        params(1.0, 12, 0.9, 0.0),
        params(1.0, 0, 0.97, 0.0),
        params(1.0, 0, 1.0, 0.0),
    ] {
        let uniforms = rand_vec(&mut r, rows, 0.0, 1.0);
        let (ld, ud) = (up(&dev, &logits), up(&dev, &uniforms));
        let mut single = up(&dev, &vec![0u32; rows]);
        let mut split = up(&dev, &vec![0u32; rows]);
        ops::sample_rows(&dev, &ld, rows, vocab, &p, &ud, &mut single).unwrap();
        ops::sample_rows_ws(&dev, &ld, rows, vocab, &p, &ud, &mut ws, &mut split).unwrap();
        let (single, split) = (
            dev.download(&single).unwrap(),
            dev.download(&split).unwrap(),
        );
        assert_host_draws(
            &single,
            &logits,
            vocab,
            &p,
            &uniforms,
            "signed zeros, single-row",
        );
        checked += assert_host_draws(&split, &logits, vocab, &p, &uniforms, "signed zeros, split");
    }
    // Each row its own choice, through the six launches.
    let (rows, vocab) = (7, 150_000);
    let logits = rand_vec(&mut r, rows * vocab, -6.0, 6.0);
    let choices = [
        RowChoice::Draw {
            params: params(1.0, 0, 1.0, 0.0),
            uniform: 0.61,
        },
        RowChoice::Argmax,
        RowChoice::None,
        RowChoice::Draw {
            params: params(0.7, 40, 0.9, 0.05),
            uniform: 0.02,
        },
        RowChoice::Draw {
            params: params(0.9, 0, 1.0, 0.02),
            uniform: 0.999,
        },
        RowChoice::Draw {
            params: params(1.2, 0, 0.8, 0.0),
            uniform: 0.93,
        },
        RowChoice::Draw {
            params: params(0.0, 0, 1.0, 0.0),
            uniform: 0.5,
        },
    ];
    let words = ops::pack_row_choices(&choices, vocab).unwrap();
    let (ld, pd) = (up(&dev, &logits), up(&dev, &words));
    let mut ws = ops::ArgmaxWorkspace::new(&dev, rows).unwrap();
    for round in 0..2 {
        let mut out = up(&dev, &vec![0xdead_beef_u32; rows]);
        ops::sample_rows_each_ws(&dev, &ld, rows, vocab, &pd, &mut ws, &mut out).unwrap();
        let got = dev.download(&out).unwrap();
        for (i, (row, c)) in logits.chunks(vocab).zip(&choices).enumerate() {
            let want = match *c {
                RowChoice::None => ops::NO_TOKEN,
                RowChoice::Argmax => host_draw(row, &params(0.0, 0, 1.0, 0.0), 0.5),
                RowChoice::Draw { params, uniform } => host_draw(row, &params, uniform),
            };
            assert_eq!(got[i], want, "round {round} row {i}: {c:?}");
            checked += 1;
        }
    }
    // A workspace for fewer rows is an error, not a wrong answer.
    let mut small = ops::ArgmaxWorkspace::new(&dev, rows - 1).unwrap();
    let mut out = up(&dev, &vec![0u32; rows]);
    let p = params(1.0, 0, 1.0, 0.0);
    let ud = up(&dev, &vec![0.5f32; rows]);
    assert!(ops::sample_rows_ws(&dev, &ld, rows, vocab, &p, &ud, &mut small, &mut out).is_err());
    assert!(ops::sample_rows_each_ws(&dev, &ld, rows, vocab, &pd, &mut small, &mut out).is_err());
    println!("PASS split draw ({checked} rows equal to the CPU sampler's draw)");
}

/// Decode attention at context 4096 (32 heads / 8 kv heads, head_dim 128)
/// for batch 1, 8 and 32: time per call and KV bytes read per second,
/// against the device-to-device copy bandwidth of the same run; then causal
/// prefills of 512 / 2048 / 4096 tokens (both prefill kernels) and sampling
/// at Gemma's vocabulary.
#[test]
#[ignore = "benchmark: run with --include-ignored on the GPU machine"]
fn bench_decode_attention() {
    let Some(dev) = device() else { return };
    let mut r = rng("bench");
    let (n_heads, n_kv, hd, ctx, n_seqs) = (32, 8, 128, 4096, 32);
    let copy_tbps = marlin_cuda::bench::copy_bandwidth_tbps(&dev).unwrap();
    let mut cache = GpuKvCache::new(&dev, 1, n_kv, hd, n_seqs, ctx).unwrap();
    let kv_row = n_kv * hd;
    let k = up(&dev, &rand_vec(&mut r, ctx * kv_row, -1.0, 1.0));
    let v = up(&dev, &rand_vec(&mut r, ctx * kv_row, -1.0, 1.0));
    let all_pos = up(&dev, &(0..ctx as i32).collect::<Vec<_>>());
    for s in 0..n_seqs {
        let sd = up(&dev, &vec![s as i32; ctx]);
        ops::kv_write(&dev, &mut cache, 0, &k, &v, ctx, &sd, &all_pos).unwrap();
    }
    let p = AttnParams {
        n_heads,
        n_kv_heads: n_kv,
        head_dim: hd,
        scale: 1.0 / (hd as f32).sqrt(),
        window: None,
        softcap: None,
    };
    println!("BENCH copy bandwidth {:.2} TB/s (read + write)", copy_tbps);
    for batch in [1, 8, 32] {
        let q = up(&dev, &rand_vec(&mut r, batch * n_heads * hd, -1.0, 1.0));
        let sd = up(&dev, &(0..batch as i32).collect::<Vec<_>>());
        let pd = up(&dev, &vec![ctx as i32 - 1; batch]);
        let mut out = dev.alloc_zeros::<f32>("out", batch * n_heads * hd).unwrap();
        let us = time_us(&dev, 50, || {
            ops::attention(&dev, &p, &q, &cache, 0, batch, &sd, &pd, &mut out).unwrap()
        });
        let bytes = (batch * ctx * kv_row * 2 * 2) as f64;
        let tbps = bytes / (us * 1e-6) / 1e12;
        println!(
            "BENCH attention decode ctx {ctx} h{n_heads}/kv{n_kv} hd{hd} batch {batch:>2}: \
             {us:8.1} us  KV read {tbps:.2} TB/s = {:.0}% of copy",
            100.0 * tbps / copy_tbps
        );
    }
    // Causal prefill of one sequence (positions 0..rows), both kernels, f32
    // and f16 output; scripts/gpu_attn_peer.py times PyTorch's
    // scaled_dot_product_attention (FlashAttention-2 / cuDNN) and a dense
    // f16 GEMM on the same shapes for the summary.
    for rows in [512, 2048, 4096] {
        let q = up(&dev, &rand_vec(&mut r, rows * n_heads * hd, -1.0, 1.0));
        let sd = up(&dev, &vec![0i32; rows]);
        let pd = up(&dev, &(0..rows as i32).collect::<Vec<_>>());
        let mut out = dev.alloc_zeros::<f32>("out", rows * n_heads * hd).unwrap();
        let mut out_h = dev.alloc_zeros::<f16>("out", rows * n_heads * hd).unwrap();
        let flops = 4.0 * (rows * (rows + 1) / 2 * n_heads * hd) as f64;
        let tflops = |us: f64| flops / (us * 1e-6) / 1e12;
        let reps = (20 * 512 / rows).max(2);
        let (tc_kind, scalar_kind) = (ops::PrefillKernel::TensorCore, ops::PrefillKernel::Scalar);
        let scalar = time_us(&dev, reps.div_ceil(8), || {
            ops::attention_prefill_with(
                &dev,
                scalar_kind,
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
        let tc = time_us(&dev, reps, || {
            ops::attention_prefill_with(&dev, tc_kind, &p, &q, &cache, 0, rows, &sd, &pd, &mut out)
                .unwrap()
        });
        let tc_h = time_us(&dev, reps, || {
            ops::attention_prefill_with(
                &dev, tc_kind, &p, &q, &cache, 0, rows, &sd, &pd, &mut out_h,
            )
            .unwrap()
        });
        println!(
            "BENCH attention prefill {rows} tokens h{n_heads}/kv{n_kv} hd{hd} causal: \
             tensor cores {tc:8.1} us {:6.1} TFLOP/s (f16 out {tc_h:8.1} us {:6.1}), \
             CUDA cores {scalar:9.1} us {:5.1} TFLOP/s",
            tflops(tc),
            tflops(tc_h),
            tflops(scalar)
        );
    }
    let vocab = 262_144;
    for batch in [1, 8, 32] {
        let logits = up(&dev, &rand_vec(&mut r, batch * vocab, -20.0, 20.0));
        let uniforms = up(&dev, &rand_vec(&mut r, batch, 0.0, 1.0));
        let mut out = dev.alloc_zeros::<u32>("tokens", batch).unwrap();
        let greedy = time_us(&dev, 20, || {
            ops::argmax_rows(&dev, &logits, batch, vocab, &mut out).unwrap()
        });
        let mut ws = ops::ArgmaxWorkspace::new(&dev, batch).unwrap();
        let split = time_us(&dev, 20, || {
            ops::argmax_rows_ws(&dev, &logits, batch, vocab, &mut ws, &mut out).unwrap()
        });
        let draw = |temperature, top_k, top_p| DeviceSampling {
            temperature,
            top_k,
            top_p,
            min_p: 0.0,
        };
        let mut time_draw = |p: DeviceSampling| {
            time_us(&dev, 20, || {
                ops::sample_rows(&dev, &logits, batch, vocab, &p, &uniforms, &mut out).unwrap()
            })
        };
        let top_k = time_draw(draw(0.8, 40, 0.95));
        let t1 = time_draw(draw(1.0, 0, 1.0));
        let nucleus = time_draw(draw(0.7, 0, 0.9));
        // The split argmax + split draw (change 87), same rows.
        let t1_split = time_us(&dev, 20, || {
            let p = draw(1.0, 0, 1.0);
            ops::sample_rows_ws(
                &dev, &logits, batch, vocab, &p, &uniforms, &mut ws, &mut out,
            )
            .unwrap()
        });
        let top_k_split = time_us(&dev, 20, || {
            let p = draw(0.8, 40, 0.95);
            ops::sample_rows_ws(
                &dev, &logits, batch, vocab, &p, &uniforms, &mut ws, &mut out,
            )
            .unwrap()
        });
        let nucleus_split = time_us(&dev, 20, || {
            let p = draw(0.7, 0, 0.9);
            ops::sample_rows_ws(
                &dev, &logits, batch, vocab, &p, &uniforms, &mut ws, &mut out,
            )
            .unwrap()
        });
        println!(
            "BENCH sampling vocab {vocab} batch {batch:>2}: argmax {greedy:7.1} us \
             (split {split:5.1} us), top-k 40 / top-p 0.95 {top_k:7.1} us (split \
             {top_k_split:5.1} us), T 1 {t1:7.1} us (split {t1_split:5.1} us), \
             T 0.7 / top-p 0.9 {nucleus:7.1} us (split {nucleus_split:5.1} us)"
        );
    }
}
