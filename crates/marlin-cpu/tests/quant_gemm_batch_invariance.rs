//! Batch invariance: the engine batches several sequences' rows into one
//! product, and greedy outputs must not depend on the batch. For every path
//! (int-dot formats, FP8, generic) and instruction set, each output row of a
//! product with M rows must be bitwise identical to the M = 1 product of that
//! activation row, whatever M is (decode kernel below `BATCHED_MIN_M`,
//! batched kernel above) and whichever other rows share the batch.

mod quant_gemm_common;

use marlin_cpu::quant_gemm::{KernelIsa, PreparedQuant};
use marlin_quant::{
    ElementType as E, Granularity as G, QuantScheme, ScaleDType as S, ZeroPoint as Z,
};
use quant_gemm_common::*;
use rand::seq::SliceRandom;

/// Activation rows in the pool the batches are drawn from.
const POOL: usize = 128;

fn int(bits: u8, signed: bool) -> E {
    E::Int { bits, signed }
}

/// A scheme of every path and kernel variant, with the family it must take.
fn schemes() -> Vec<(QuantScheme, Option<bool>, &'static str)> {
    let g = |group_size| G::PerGroup { group_size };
    let mut nvfp4 = scheme(E::Fp4E2M1, g(16), S::E4M3, Z::None);
    nvfp4.global_scale = true;
    vec![
        (
            scheme(int(4, true), g(128), S::F16, Z::None),
            None,
            "int-dot",
        ),
        (
            scheme(int(4, false), g(32), S::F16, Z::Int),
            None,
            "int-dot",
        ),
        (
            scheme(int(4, false), g(64), S::F32, Z::Float),
            None,
            "int-dot",
        ),
        (
            scheme(int(4, true), g(16), S::F32, Z::None),
            None,
            "int-dot",
        ),
        (
            scheme(int(4, true), g(32), S::F16, Z::None),
            Some(true),
            "int-dot",
        ),
        (
            scheme(int(3, true), g(64), S::F16, Z::None),
            None,
            "int-dot",
        ),
        (
            scheme(int(2, false), g(32), S::F16, Z::Int),
            None,
            "int-dot",
        ),
        (
            scheme(int(8, true), G::PerChannel, S::F32, Z::None),
            None,
            "int-dot",
        ),
        (
            scheme(int(6, true), g(32), S::F16, Z::None),
            None,
            "int-dot",
        ),
        (scheme(E::Fp4E2M1, g(32), S::E8M0, Z::None), None, "int-dot"),
        (nvfp4, None, "int-dot"),
        (
            scheme(E::Fp8E4M3, G::PerChannel, S::F32, Z::None),
            None,
            "fp8",
        ),
        (scheme(E::Fp8E5M2, g(32), S::F32, Z::None), None, "fp8"),
        (
            scheme(
                E::Fp8E4M3,
                G::Block2d {
                    rows: 16,
                    cols: 128,
                },
                S::F32,
                Z::None,
            ),
            None,
            "fp8",
        ),
        (scheme(E::Nf4, g(32), S::F32, Z::None), None, "generic"),
        (
            scheme(int(4, true), g(32), S::F16, Z::None),
            Some(false),
            "generic",
        ),
    ]
}

#[test]
fn every_path_is_batch_invariant() {
    let (mut rng, seed) = rng();
    // N crosses the batched kernel's 16-row tiles with a remainder; K is not
    // a multiple of the 256-column superblock.
    let (n, k) = (37, 640);
    let isas = KernelIsa::available();
    for (s, g_idx, family) in schemes() {
        let t = random_tensor(&mut rng, s, n, k, g_idx).t;
        let x = random_x(&mut rng, POOL * k);
        for &isa in &isas {
            let p = PreparedQuant::with_isa(&t, isa).expect("prepare");
            assert!(
                p.kernel_name().starts_with(family),
                "{s:?}: path {} (want {family})",
                p.kernel_name()
            );
            // Row i alone: the reference every batch must reproduce.
            let mut single = vec![0f32; POOL * n];
            for (xi, yi) in x.chunks(k).zip(single.chunks_mut(n)) {
                p.matmul(xi, 1, yi).expect("m = 1");
            }
            for m in [3, 17, POOL] {
                // A random selection (and order) of pool rows.
                let mut pick: Vec<usize> = (0..POOL).collect();
                pick.shuffle(&mut rng);
                pick.truncate(m);
                let xb: Vec<f32> = pick
                    .iter()
                    .flat_map(|&i| x[i * k..(i + 1) * k].iter().copied())
                    .collect();
                let mut yb = vec![f32::NAN; m * n];
                p.matmul(&xb, m, &mut yb).expect("batched");
                for (bi, &i) in pick.iter().enumerate() {
                    let (got, want) = (&yb[bi * n..(bi + 1) * n], &single[i * n..(i + 1) * n]);
                    for j in 0..n {
                        assert_eq!(
                            got[j].to_bits(),
                            want[j].to_bits(),
                            "{} {s:?} g_idx {g_idx:?}: m {m}, batch row {bi} (pool row {i}), \
                             column {j}: {} batched vs {} alone (seed {seed})",
                            p.kernel_name(),
                            got[j],
                            want[j]
                        );
                    }
                }
            }
        }
    }
}
