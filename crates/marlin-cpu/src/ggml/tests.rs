//! Every ggml kernel (scalar and AVX2) against the scalar reference: the
//! bit-exact dequantized weights dotted in f64 with (a) the same 8-bit
//! activations the kernel uses (tight: only f32 rounding differs) and (b)
//! the exact f32 activations (bounded by the activation quantization error,
//! see `act`).

use super::act::{dequant_k, dequant_x32, quantize_k, quantize_x32, ActQ8K, ActQ8x32};
use super::*;
use half::f16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Byte offsets of the f16 scale fields of each block type.
fn f16_fields(ty: GgmlType) -> &'static [usize] {
    use GgmlType::*;
    match ty {
        Q4_0 | Q5_0 | Q8_0 => &[0],
        Q4_1 | Q5_1 | Q8_1 | Q4K | Q5K => &[0, 2],
        Q2K => &[80, 82],
        Q3K => &[108],
        Q6K => &[208],
        _ => &[],
    }
}

/// Random (rows, cols) tensor of `ty`: random codes, moderate finite scales.
pub(super) fn random_tensor(
    rng: &mut StdRng,
    ty: GgmlType,
    rows: usize,
    cols: usize,
) -> GgmlTensor {
    use GgmlType::*;
    let n = rows * cols;
    let data: Vec<u8> = match ty {
        F32 => (0..n)
            .flat_map(|_| rng.gen_range(-1f32..1.0).to_le_bytes())
            .collect(),
        F16 => (0..n)
            .flat_map(|_| f16::from_f32(rng.gen_range(-1f32..1.0)).to_le_bytes())
            .collect(),
        BF16 => (0..n)
            .flat_map(|_| ((rng.gen_range(-1f32..1.0).to_bits() >> 16) as u16).to_le_bytes())
            .collect(),
        _ => {
            let ts = ty.type_size();
            let mut d = vec![0u8; n / ty.block_size() * ts];
            rng.fill(d.as_mut_slice());
            for blk in d.chunks_exact_mut(ts) {
                for &off in f16_fields(ty) {
                    let v = f16::from_f32(rng.gen_range(-0.05f32..0.05));
                    blk[off..off + 2].copy_from_slice(&v.to_le_bytes());
                }
                if ty == Q8K {
                    blk[0..4].copy_from_slice(&rng.gen_range(-0.05f32..0.05).to_le_bytes());
                }
                if ty == Mxfp4 {
                    blk[0] = rng.gen_range(118..130);
                }
            }
            d
        }
    };
    GgmlTensor::new(ty, rows, cols, data).unwrap()
}

fn random_x(rng: &mut StdRng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.gen_range(-2f32..2.0)).collect()
}

/// x rows as the kernels see them: 8-bit codes times their block scale.
fn quantized_x(ty: GgmlType, x: &[f32], k: usize) -> Vec<f32> {
    x.chunks_exact(k)
        .flat_map(|xr| {
            if ty.block_size() == 256 {
                let mut a = vec![ActQ8K::default(); k / 256];
                quantize_k(xr, &mut a);
                dequant_k(&a)
            } else {
                let mut a = vec![ActQ8x32::default(); k / 32];
                quantize_x32(xr, &mut a);
                dequant_x32(&a)
            }
        })
        .collect()
}

/// Per-element bound on the activation quantization error: half its block
/// scale, d = max|x| / 127 over the block.
fn x_error_bound(ty: GgmlType, x: &[f32]) -> Vec<f32> {
    x.chunks(ty.block_size().max(32))
        .flat_map(|b| {
            let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
            std::iter::repeat_n(amax / 127.0 / 2.0, b.len())
        })
        .collect()
}

fn kernel_tables() -> Vec<Kernels> {
    let mut v = vec![scalar_kernels()];
    v.extend(avx2_kernels());
    v
}

/// Checks y against the f64 reference for one type, one kernel table.
fn check(ty: GgmlType, kernels: Kernels, n: usize, k: usize, m: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let t = random_tensor(&mut rng, ty, n, k);
    check_tensor(t, kernels, m, &mut rng);
}

/// Checks y = x · tᵀ for random x of m rows against the f64 reference.
fn check_tensor(t: GgmlTensor, kernels: Kernels, m: usize, rng: &mut StdRng) {
    let (ty, n, k) = (t.ty, t.rows, t.cols);
    let w = t.dequantize().unwrap(); // (N, K)
    let x = random_x(rng, m * k); // (m, K)
    let p = PreparedGgml::with_kernels(t, kernels).unwrap();
    let mut y = vec![f32::NAN; m * n]; // (m, N)
    p.matmul(&x, m, &mut y).unwrap();

    let integer = p.has_integer_kernel();
    let xq = if integer {
        quantized_x(ty, &x, k)
    } else {
        x.clone()
    };
    let xerr = x_error_bound(ty, &x);
    let bs = ty.block_size().max(32);
    for j in 0..m {
        for r in 0..n {
            let wr = &w[r * k..(r + 1) * k];
            let (xr, xqr, er) = (&x[j * k..][..k], &xq[j * k..][..k], &xerr[j * k..][..k]);
            let exact: f64 = wr.iter().zip(xr).map(|(&a, &b)| a as f64 * b as f64).sum();
            let same_x: f64 = wr.iter().zip(xqr).map(|(&a, &b)| a as f64 * b as f64).sum();
            // f32 rounding scale: every weight magnitude counted with its
            // block's largest (offsets and bias codes cancel inside a block).
            let mag: f64 = wr
                .chunks(bs)
                .zip(xqr.chunks(bs))
                .map(|(wb, xb)| {
                    let wmax = wb.iter().fold(0f32, |a, v| a.max(v.abs())) as f64;
                    wb.iter()
                        .zip(xb)
                        .map(|(&a, &b)| (a.abs() as f64 + wmax) * b.abs() as f64)
                        .sum::<f64>()
                })
                .sum();
            let got = y[j * n + r] as f64;
            let tight = 1e-5 * mag + 1e-30;
            assert!(
                (got - same_x).abs() <= tight,
                "{} {} n={n} k={k} m={m} y[{j},{r}] = {got}, reference {same_x} (tol {tight})",
                ty.name(),
                kernels.name
            );
            // Against exact x: the activation rounding bound on top.
            let xbound: f64 = if integer {
                wr.iter()
                    .zip(er)
                    .map(|(&a, &e)| a.abs() as f64 * e as f64)
                    .sum::<f64>()
                    * 1.001
            } else {
                0.0
            };
            assert!(
                (got - exact).abs() <= tight + xbound,
                "{} {} vs exact x: y[{j},{r}] = {got}, exact {exact} (tol {})",
                ty.name(),
                kernels.name,
                tight + xbound
            );
        }
    }
}

use GgmlType::*;
const FAST_32: [GgmlType; 6] = [Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Mxfp4];
const FAST_K: [GgmlType; 2] = [Q4K, Q6K];
const GENERIC: [GgmlType; 8] = [F32, F16, BF16, Q8_1, Q2K, Q3K, Q5K, Q8K];

#[test]
fn integer_kernels_match_reference_at_awkward_shapes() {
    let mut seed = 1;
    for kernels in kernel_tables() {
        for ty in FAST_32.into_iter().chain(FAST_K) {
            let bs = ty.block_size();
            for k in [bs, 3 * bs, if bs == 32 { 576 } else { 2048 }] {
                for m in [1, 3, 17] {
                    seed += 1;
                    check(ty, kernels, 7, k, m, seed);
                }
            }
        }
    }
}

/// The VNNI x8 kernels give the AVX2 ones' outputs bit for bit (same
/// exact integer sums, same f32 operations).
#[cfg(target_arch = "x86_64")]
#[test]
fn vnni_and_avx2_x8_kernels_agree_bitwise() {
    if !super::x8_avx2::has_vnni() {
        return;
    }
    let (Some(vnni), Some(avx2)) = (
        super::dot_avx2::kernels_with(true),
        super::dot_avx2::kernels_with(false),
    ) else {
        return;
    };
    let mut rng = StdRng::seed_from_u64(21);
    for ty in [Q4_1, Q5_0, Q8_0, Q4K, Q6K] {
        let (n, k) = (37, if ty.block_size() == 256 { 1024 } else { 640 });
        let t = random_tensor(&mut rng, ty, n, k);
        let (pv, pa) = (
            PreparedGgml::with_kernels(t.clone(), vnni).unwrap(),
            PreparedGgml::with_kernels(t, avx2).unwrap(),
        );
        for m in [1, 5, 17] {
            let x = random_x(&mut rng, m * k);
            let (mut yv, mut ya) = (vec![f32::NAN; m * n], vec![f32::NAN; m * n]);
            pv.matmul(&x, m, &mut yv).unwrap();
            pa.matmul(&x, m, &mut ya).unwrap();
            assert!(
                yv.iter().zip(&ya).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{} m={m}",
                ty.name()
            );
        }
    }
}

#[test]
fn many_chunks_over_threads() {
    // Enough rows that the work splits into several rayon tasks.
    for kernels in kernel_tables() {
        for ty in [Q4_1, Q8_0, Q5_0, Q4K, Q6K] {
            let k = if ty.block_size() == 32 { 576 } else { 1024 };
            for m in [1, 17] {
                check(ty, kernels, 257, k, m, 99);
            }
        }
    }
}

/// Batch invariance: row j of an M-row product is bitwise the M = 1 result
/// of that x row, whatever M and whichever rows share the batch (the tile
/// kernels and the decode kernel must agree to the bit).
#[test]
fn outputs_do_not_depend_on_the_batch() {
    let mut rng = StdRng::seed_from_u64(11);
    const CANDIDATES: usize = 40;
    for kernels in kernel_tables() {
        for ty in FAST_32.into_iter().chain(FAST_K).chain([F32]) {
            let (n, k) = (37, if ty.block_size() == 256 { 512 } else { 96 });
            let p = PreparedGgml::with_kernels(random_tensor(&mut rng, ty, n, k), kernels).unwrap();
            let xs = random_x(&mut rng, CANDIDATES * k); // (CANDIDATES, K)
            let single: Vec<Vec<f32>> = xs
                .chunks_exact(k)
                .map(|xr| {
                    let mut y = vec![f32::NAN; n];
                    p.matmul(xr, 1, &mut y).unwrap();
                    y
                })
                .collect();
            for m in [3, 17, 128] {
                let pick: Vec<usize> = (0..m).map(|_| rng.gen_range(0..CANDIDATES)).collect();
                let x: Vec<f32> = pick
                    .iter()
                    .flat_map(|&c| xs[c * k..(c + 1) * k].iter().copied())
                    .collect();
                let mut y = vec![f32::NAN; m * n]; // (m, N)
                p.matmul(&x, m, &mut y).unwrap();
                for (j, &c) in pick.iter().enumerate() {
                    let same = y[j * n..(j + 1) * n]
                        .iter()
                        .zip(&single[c])
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(
                        same,
                        "{} {}: row {j} of m = {m} differs from m = 1",
                        ty.name(),
                        kernels.name
                    );
                }
            }
        }
    }
}

#[test]
fn generic_path_matches_reference() {
    for ty in GENERIC {
        let bs = ty.block_size().max(32);
        for m in [1, 3, 17] {
            for k in [bs, 3 * bs] {
                check(ty, scalar_kernels(), 5, k, m, 7 + m as u64);
                check(ty, *best_kernels(), 5, k, m, 8 + m as u64);
            }
        }
    }
    // Float weights need no whole blocks: K = 37.
    check(F32, *best_kernels(), 9, 37, 3, 5);
    check(F16, *best_kernels(), 9, 37, 1, 6);
}

#[test]
fn avx2_and_scalar_agree_closely() {
    let Some(avx2) = avx2_kernels() else { return };
    let mut rng = StdRng::seed_from_u64(3);
    for ty in FAST_32.into_iter().chain(FAST_K) {
        let (n, k, m) = (33, 4 * 256, 5);
        let t = random_tensor(&mut rng, ty, n, k);
        let x = random_x(&mut rng, m * k);
        let (mut ya, mut ys) = (vec![0f32; m * n], vec![0f32; m * n]);
        PreparedGgml::with_kernels(t.clone(), avx2)
            .unwrap()
            .matmul(&x, m, &mut ya)
            .unwrap();
        PreparedGgml::with_kernels(t, scalar_kernels())
            .unwrap()
            .matmul(&x, m, &mut ys)
            .unwrap();
        let scale = ys.iter().fold(0f32, |a, v| a.max(v.abs()));
        for (a, s) in ya.iter().zip(&ys) {
            assert!((a - s).abs() <= 1e-4 * scale, "{}: {a} vs {s}", ty.name());
        }
    }
}

#[test]
fn bad_shapes_are_errors_and_nan_propagates() {
    let mut rng = StdRng::seed_from_u64(4);
    let p = PreparedGgml::new(random_tensor(&mut rng, Q4_1, 4, 64)).unwrap();
    let mut y = vec![0f32; 4];
    assert!(p.matmul(&[0.0; 63], 1, &mut y).is_err());
    assert!(p.matmul(&[0.0; 64], 1, &mut y[..3]).is_err());
    assert!(p.matmul(&[0.0; 64], 2, &mut y).is_err());
    let mut x = vec![1f32; 64];
    x[40] = f32::NAN;
    p.matmul(&x, 1, &mut y).unwrap();
    assert!(y.iter().all(|v| v.is_nan()), "{y:?}");
    // A tensor whose public fields were edited after construction.
    let mut t = random_tensor(&mut rng, Q4K, 2, 256);
    t.data.pop();
    assert!(PreparedGgml::new(t).is_err());
    // m = 0 is an empty product.
    p.matmul(&[], 0, &mut []).unwrap();
}

#[test]
fn real_model_rows() {
    // Rows of the demo models' tensors, from marlin-quant's fixtures (made
    // by scripts/fixtures/make_ggml_fixtures.py; format described there).
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../marlin-quant/tests/fixtures/ggml"
    );
    let mut rng = StdRng::seed_from_u64(11);
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.starts_with("real_") {
            continue;
        }
        let b = std::fs::read(&path).unwrap();
        let word = |i: usize| u32::from_le_bytes(b[4 * i..4 * i + 4].try_into().unwrap()) as usize;
        let ty = GgmlType::from_id(word(1) as u32).unwrap();
        let (rows, cols, n_bytes) = (word(2), word(3), word(4));
        let t = GgmlTensor::new(ty, rows, cols, b[20..20 + n_bytes].to_vec()).unwrap();
        for kernels in kernel_tables() {
            for m in [1, 3, 17] {
                check_tensor(t.clone(), kernels, m, &mut rng);
            }
        }
        seen += 1;
    }
    assert!(seen >= 5, "found {seen} real-model fixtures in {dir}");
}

#[test]
fn row_f32_matches_reference_dequantization() {
    let mut rng = StdRng::seed_from_u64(12);
    for ty in FAST_32.into_iter().chain(FAST_K).chain(GENERIC) {
        let k = ty.block_size().max(32) * 2;
        let t = random_tensor(&mut rng, ty, 3, k);
        let want = t.dequantize().unwrap();
        let p = PreparedGgml::new(t).unwrap();
        let mut row = vec![0f32; k];
        for r in 0..3 {
            p.row_f32(r, &mut row).unwrap();
            let same = row
                .iter()
                .zip(&want[r * k..])
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{} row {r}", ty.name());
        }
        assert!(p.row_f32(3, &mut row).is_err());
        assert!(p.row_f32(0, &mut row[1..]).is_err());
    }
}
