//! RTN quantization and the reference dequantizer: error bounds per scheme,
//! act order, and bad input.

use marlin_quant::{
    quantize_rtn, ClipMethod, ElementType, Granularity, QuantError, QuantScheme, QuantTensor, RtnOptions,
    ScaleDType, ZeroPoint,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn random_weights(rng: &mut StdRng, n: usize) -> Vec<f32> {
    // Mostly Gaussian-like values with a few outliers, as in real weights.
    (0..n)
        .map(|_| {
            let x: f32 = (0..4).map(|_| rng.gen_range(-1.0f32..1.0)).sum::<f32>() * 0.05;
            if rng.gen_bool(0.01) {
                x * 20.0
            } else {
                x
            }
        })
        .collect()
}

/// Every scheme the tests sweep, with shapes it accepts.
fn schemes() -> Vec<(&'static str, QuantScheme)> {
    let mut v = vec![
        ("int4_sym_g32", QuantScheme::int4_sym(32)),
        ("int4_sym_g128", QuantScheme::int4_sym(128)),
        ("int4_asym_g32", QuantScheme::int4_asym(32)),
        ("int3_sym_g32", QuantScheme::int3_sym(32)),
        ("int3_asym_g64", QuantScheme::int3_asym(64)),
        ("int2_sym_g32", QuantScheme::int2_sym(32)),
        ("int2_asym_g32", QuantScheme::int2_asym(32)),
        ("int8_per_channel", QuantScheme::int8_per_channel()),
        ("int8_asym_g64", QuantScheme::int8_asym(64)),
        ("mxfp4", QuantScheme::mxfp4()),
        ("nvfp4", QuantScheme::nvfp4()),
        ("fp8_e4m3_per_channel", QuantScheme::fp8_e4m3_per_channel()),
        ("fp8_e4m3_per_tensor", QuantScheme::fp8_e4m3_per_tensor()),
        ("fp8_e4m3_block128", QuantScheme::fp8_e4m3_block128()),
        ("fp8_e5m2_per_channel", QuantScheme::fp8_e5m2_per_channel()),
        ("nf4_g64", QuantScheme::nf4(64)),
        ("fp4_e2m1_per_channel_bf16", QuantScheme::fp4_e2m1(Granularity::PerChannel, ScaleDType::BF16)),
        ("int4_sym_block16x32_e8m0", QuantScheme::int_sym(4, Granularity::Block2d { rows: 16, cols: 32 }, ScaleDType::E8M0)),
        ("int5_sym_per_tensor", QuantScheme::int_sym(5, Granularity::PerTensor, ScaleDType::F32)),
        ("int6_asym_float_zero_g32", QuantScheme::int_asym(6, Granularity::PerGroup { group_size: 32 }, ScaleDType::F16).with_zero_point(ZeroPoint::Float)),
        ("int7_sym_g32_e4m3", QuantScheme::int_sym(7, Granularity::PerGroup { group_size: 32 }, ScaleDType::E4M3)),
        ("int4_sym_g32_global_f16", QuantScheme::int4_sym(32).with_global_scale(true)),
    ];
    v.push(("fp8_e5m2_g32_e8m0", QuantScheme::plain(ElementType::Fp8E5M2, Granularity::PerGroup { group_size: 32 }, ScaleDType::E8M0, ZeroPoint::None)));
    v
}

/// All values the element grid of `t` can produce for group `g`.
fn grid_values(t: &QuantTensor, g: usize) -> Vec<f32> {
    let zero = t.zeros.as_ref().map_or(0.0, |z| z[g]);
    (0..(1u16 << t.scheme.element.bits()))
        .map(|raw| t.scheme.element.decode(raw as u8))
        .filter(|v| v.is_finite())
        .map(|v| (t.global_scale * t.scales[g]) * (v - zero))
        .collect()
}

/// RTN invariant: given the stored scales and zeros, every element was
/// encoded to (one of) the nearest representable values.
fn assert_nearest(name: &str, w: &[f32], t: &QuantTensor, deq: &[f32]) {
    for r in 0..t.rows {
        for c in 0..t.cols {
            let i = r * t.cols + c;
            let g = t.scale_index(r, c).unwrap();
            let best = grid_values(t, g).iter().map(|v| (w[i] - v).abs()).fold(f32::INFINITY, f32::min);
            let err = (w[i] - deq[i]).abs();
            // Slack: one f32 rounding of the division x / scale.
            let slack = 1e-6 * w[i].abs().max(t.global_scale * t.scales[g]);
            assert!(err <= best + slack, "{name}: ({r},{c}) w={} deq={} err={err} best={best}", w[i], deq[i]);
        }
    }
}

#[test]
fn rtn_picks_the_nearest_grid_point_for_every_scheme() {
    let mut rng = StdRng::seed_from_u64(1);
    for (name, scheme) in schemes() {
        for (rows, cols) in [(1, 128), (3, 256), (17, 128)] {
            let w = random_weights(&mut rng, rows * cols);
            for opts in [RtnOptions::min_max(), RtnOptions { clip: ClipMethod::Mse { grid: 20, max_shrink: 0.5 }, g_idx: None }] {
                let t = quantize_rtn(&w, rows, cols, scheme, &opts).unwrap_or_else(|e| panic!("{name}: {e}"));
                t.validate().unwrap();
                t.check_codes().unwrap();
                let deq = t.dequantize().unwrap();
                assert_eq!(deq.len(), rows * cols);
                assert_nearest(name, &w, &t, &deq);
            }
        }
    }
}

fn sq_err(w: &[f32], d: &[f32]) -> f64 {
    w.iter().zip(d).map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2)).sum()
}

#[test]
fn mse_clipping_never_loses_to_min_max() {
    let mut rng = StdRng::seed_from_u64(2);
    let mut improved = 0;
    for (name, scheme) in schemes() {
        let (rows, cols) = (4, 256);
        let w = random_weights(&mut rng, rows * cols);
        let mm = quantize_rtn(&w, rows, cols, scheme, &RtnOptions::min_max()).unwrap().dequantize().unwrap();
        let mse = quantize_rtn(&w, rows, cols, scheme, &RtnOptions::mse()).unwrap().dequantize().unwrap();
        let (e_mm, e_mse) = (sq_err(&w, &mm), sq_err(&w, &mse));
        assert!(e_mse <= e_mm * (1.0 + 1e-9), "{name}: mse {e_mse} > min-max {e_mm}");
        if e_mse < e_mm * 0.99 {
            improved += 1;
        }
    }
    // Outliers make clipping pay for the low-bit schemes.
    assert!(improved >= 5, "MSE search improved only {improved} schemes");
}
