//! RTN quantization and the reference dequantizer: error bounds per scheme,
//! act order, and bad input.

use marlin_quant::formats::NF4_VALUES;
use marlin_quant::{
    quantize_rtn, ClipMethod, ElementType, Granularity, QuantError, QuantScheme, QuantTensor,
    RtnOptions, ScaleDType, ZeroPoint,
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
        (
            "fp4_e2m1_per_channel_bf16",
            QuantScheme::fp4_e2m1(Granularity::PerChannel, ScaleDType::BF16),
        ),
        (
            "int4_sym_block16x32_e8m0",
            QuantScheme::int_sym(
                4,
                Granularity::Block2d { rows: 16, cols: 32 },
                ScaleDType::E8M0,
            ),
        ),
        (
            "int5_sym_per_tensor",
            QuantScheme::int_sym(5, Granularity::PerTensor, ScaleDType::F32),
        ),
        (
            "int6_asym_float_zero_g32",
            QuantScheme::int_asym(6, Granularity::PerGroup { group_size: 32 }, ScaleDType::F16)
                .with_zero_point(ZeroPoint::Float),
        ),
        (
            // Global scale keeps the E4M3 scales out of the subnormal range.
            "int7_sym_g32_e4m3_global",
            QuantScheme::int_sym(
                7,
                Granularity::PerGroup { group_size: 32 },
                ScaleDType::E4M3,
            )
            .with_global_scale(true),
        ),
        (
            "int4_sym_g32_global_f16",
            QuantScheme::int4_sym(32).with_global_scale(true),
        ),
    ];
    v.push((
        "fp8_e5m2_g32_e8m0",
        QuantScheme::plain(
            ElementType::Fp8E5M2,
            Granularity::PerGroup { group_size: 32 },
            ScaleDType::E8M0,
            ZeroPoint::None,
        ),
    ));
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
            let best = grid_values(t, g)
                .iter()
                .map(|v| (w[i] - v).abs())
                .fold(f32::INFINITY, f32::min);
            let err = (w[i] - deq[i]).abs();
            // Slack: one f32 rounding of the division x / scale.
            let slack = 1e-6 * w[i].abs().max(t.global_scale * t.scales[g]);
            assert!(
                err <= best + slack,
                "{name}: ({r},{c}) w={} deq={} err={err} best={best}",
                w[i],
                deq[i]
            );
        }
    }
}

#[test]
fn rtn_picks_the_nearest_grid_point_for_every_scheme() {
    let mut rng = StdRng::seed_from_u64(1);
    for (name, scheme) in schemes() {
        for (rows, cols) in [(1, 128), (3, 256), (17, 128)] {
            let w = random_weights(&mut rng, rows * cols);
            for opts in [
                RtnOptions::min_max(),
                RtnOptions {
                    clip: ClipMethod::Mse {
                        grid: 20,
                        max_shrink: 0.5,
                    },
                    g_idx: None,
                },
            ] {
                let t = quantize_rtn(&w, rows, cols, scheme, &opts)
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
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
    w.iter()
        .zip(d)
        .map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2))
        .sum()
}

#[test]
fn mse_clipping_never_loses_to_min_max() {
    let mut rng = StdRng::seed_from_u64(2);
    let mut improved = 0;
    for (name, scheme) in schemes() {
        let (rows, cols) = (4, 256);
        let w = random_weights(&mut rng, rows * cols);
        let mm = quantize_rtn(&w, rows, cols, scheme, &RtnOptions::min_max())
            .unwrap()
            .dequantize()
            .unwrap();
        let mse = quantize_rtn(&w, rows, cols, scheme, &RtnOptions::mse())
            .unwrap()
            .dequantize()
            .unwrap();
        let (e_mm, e_mse) = (sq_err(&w, &mm), sq_err(&w, &mse));
        assert!(
            e_mse <= e_mm * (1.0 + 1e-9),
            "{name}: mse {e_mse} > min-max {e_mm}"
        );
        if e_mse < e_mm * 0.99 {
            improved += 1;
        }
    }
    // Outliers make clipping pay for the low-bit schemes.
    assert!(improved >= 5, "MSE search improved only {improved} schemes");
}

/// Largest relative amount by which rounding a scale to `dtype` can shrink
/// it: delta / (1 - delta) for a relative half-ulp delta (0 for E8M0, which
/// rounds up).
fn scale_shrink(dtype: ScaleDType) -> f32 {
    let delta = match dtype {
        ScaleDType::F32 => 2f32.powi(-24),
        ScaleDType::F16 => 2f32.powi(-11),
        ScaleDType::BF16 => 2f32.powi(-8),
        ScaleDType::E4M3 => 2f32.powi(-4),
        ScaleDType::E8M0 => 0.0,
    };
    delta / (1.0 - delta)
}

/// The closed-form min-max error bounds of docs/FORMATS.md, for element x
/// with effective scale `s = global_scale * scale`.
fn documented_bound(scheme: &QuantScheme, x: f32, s: f32) -> f32 {
    let x = x.abs();
    let m = scheme.element.max_value();
    let shrink = scale_shrink(scheme.scale_dtype);
    match scheme.element {
        ElementType::Int { signed: true, .. } => (s / 2.0).max(m * s * shrink),
        ElementType::Int { signed: false, .. } => s / 2.0 + m * s * shrink,
        ElementType::Fp4E2M1 => (s / 4.0).max(x / 4.0),
        ElementType::Fp8E4M3 => (s * 2f32.powi(-10)).max(x / 16.0),
        ElementType::Fp8E5M2 => (s * 2f32.powi(-17)).max(x / 8.0),
        ElementType::Nf4 => {
            let max_gap = NF4_VALUES
                .windows(2)
                .map(|w| w[1] - w[0])
                .fold(0.0f32, f32::max);
            s * max_gap / 2.0
        }
    }
}

#[test]
fn min_max_errors_within_documented_bounds() {
    let mut rng = StdRng::seed_from_u64(4);
    let mut all = schemes();
    all.push((
        "int8_asym_g64_bf16",
        QuantScheme::int8_asym(64).with_scale_dtype(ScaleDType::BF16),
    ));
    all.push((
        "int8_sym_g64_bf16",
        QuantScheme::int_sym(
            8,
            Granularity::PerGroup { group_size: 64 },
            ScaleDType::BF16,
        ),
    ));
    for (name, scheme) in all {
        for seed_round in 0..4 {
            let (rows, cols) = (16, 384);
            let w = random_weights(&mut rng, rows * cols);
            let t = quantize_rtn(&w, rows, cols, scheme, &RtnOptions::min_max()).unwrap();
            let deq = t.dequantize().unwrap();
            let mut worst = 0.0f32;
            for r in 0..rows {
                let mut row = vec![0.0; cols];
                t.dequantize_row(r, &mut row).unwrap();
                assert_eq!(row, deq[r * cols..(r + 1) * cols].to_vec());
                for c in 0..cols {
                    let i = r * cols + c;
                    let s = t.global_scale * t.scales[t.scale_index(r, c).unwrap()];
                    let bound = documented_bound(&scheme, w[i], s) * (1.0 + 1e-5) + 1e-12;
                    let err = (w[i] - deq[i]).abs();
                    assert!(
                        err <= bound,
                        "{name} #{seed_round}: ({r},{c}) w={} err={err} bound={bound}",
                        w[i]
                    );
                    worst = worst.max(err / bound);
                }
            }
            assert!(worst > 0.0, "{name}: suspiciously exact");
        }
    }
}

#[test]
fn symmetric_int8_relative_error_is_small() {
    let mut rng = StdRng::seed_from_u64(5);
    let w = random_weights(&mut rng, 8 * 512);
    let t = quantize_rtn(
        &w,
        8,
        512,
        QuantScheme::int8_per_channel(),
        &RtnOptions::min_max(),
    )
    .unwrap();
    let deq = t.dequantize().unwrap();
    for r in 0..8 {
        let amax = w[r * 512..(r + 1) * 512]
            .iter()
            .fold(0.0f32, |m, x| m.max(x.abs()));
        assert!((t.scales[r] - amax / 127.0).abs() <= amax * 1e-7);
        for c in 0..512 {
            assert!((w[r * 512 + c] - deq[r * 512 + c]).abs() <= amax / 254.0 * (1.0 + 1e-6));
        }
    }
}

#[test]
fn act_order_matches_quantizing_permuted_columns() {
    let mut rng = StdRng::seed_from_u64(6);
    let (rows, cols, g) = (3usize, 96usize, 32usize);
    let w = random_weights(&mut rng, rows * cols);
    // A random assignment with exactly g columns per group.
    let mut g_idx: Vec<u32> = (0..cols).map(|c| (c / g) as u32).collect();
    for i in (1..cols).rev() {
        g_idx.swap(i, rng.gen_range(0..=i));
    }
    for scheme in [
        QuantScheme::int4_asym(g),
        QuantScheme::int4_sym(g),
        QuantScheme::nvfp4().with_granularity(Granularity::PerGroup { group_size: g }),
    ] {
        let opts = RtnOptions {
            clip: ClipMethod::MinMax,
            g_idx: Some(g_idx.clone()),
        };
        let t = quantize_rtn(&w, rows, cols, scheme, &opts).unwrap();
        let deq = t.dequantize().unwrap();
        // Sort columns by group (stable), quantize without act order.
        let mut order: Vec<usize> = (0..cols).collect();
        order.sort_by_key(|&c| g_idx[c]);
        let permuted: Vec<f32> = (0..rows)
            .flat_map(|r| order.iter().map(move |&c| (r, c)))
            .map(|(r, c)| w[r * cols + c])
            .collect();
        let p = quantize_rtn(&permuted, rows, cols, scheme, &RtnOptions::min_max()).unwrap();
        let pdeq = p.dequantize().unwrap();
        assert_eq!(t.scales, p.scales);
        assert_eq!(t.zeros, p.zeros);
        for r in 0..rows {
            for (j, &c) in order.iter().enumerate() {
                assert_eq!(deq[r * cols + c], pdeq[r * cols + j]);
            }
        }
    }
}

#[test]
fn nvfp4_and_mxfp4_scales_follow_their_rules() {
    let mut rng = StdRng::seed_from_u64(7);
    let w = random_weights(&mut rng, 4 * 64);
    let t = quantize_rtn(&w, 4, 64, QuantScheme::nvfp4(), &RtnOptions::min_max()).unwrap();
    let amax = w.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    assert!((t.global_scale - amax / (6.0 * 448.0)).abs() <= t.global_scale * 1e-6);
    assert!(t.scales.contains(&448.0));
    let t = quantize_rtn(&w, 4, 64, QuantScheme::mxfp4(), &RtnOptions::min_max()).unwrap();
    for (g, &s) in t.scales.iter().enumerate() {
        let block = &w[g * 32..(g + 1) * 32];
        let amax = block.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        assert_eq!(s, 2f32.powi(amax.log2().floor() as i32 - 2), "block {g}");
    }
}

#[test]
fn zero_and_constant_groups() {
    let zeros = vec![0.0f32; 2 * 128];
    for (name, scheme) in schemes() {
        let t = quantize_rtn(&zeros, 2, 128, scheme, &RtnOptions::mse())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(t.dequantize().unwrap().iter().all(|&v| v == 0.0), "{name}");
    }
    let constant = vec![-0.375f32; 64];
    let t = quantize_rtn(
        &constant,
        1,
        64,
        QuantScheme::int4_asym(32).with_zero_point(ZeroPoint::Float),
        &RtnOptions::min_max(),
    )
    .unwrap();
    let eff = t.scales[0];
    assert!(eff > 0.0);
    assert!(t
        .dequantize()
        .unwrap()
        .iter()
        .all(|&v| (v + 0.375).abs() <= eff / 2.0));
}

#[test]
fn bad_input_is_an_error() {
    let w = vec![0.5f32; 2 * 96];
    let opts = RtnOptions::min_max();
    // Group size not dividing K.
    assert!(matches!(
        quantize_rtn(&w, 2, 96, QuantScheme::int4_sym(64), &opts),
        Err(QuantError::GroupSize { group: 64, k: 96 })
    ));
    // Non-finite weights name their index.
    let mut bad = w.clone();
    bad[77] = f32::NAN;
    assert!(matches!(
        quantize_rtn(&bad, 2, 96, QuantScheme::int4_sym(32), &opts),
        Err(QuantError::NonFinite { index: 77, .. })
    ));
    bad[77] = 0.0;
    bad[5] = f32::NEG_INFINITY;
    assert!(matches!(
        quantize_rtn(&bad, 2, 96, QuantScheme::int4_sym(32), &opts),
        Err(QuantError::NonFinite { index: 5, .. })
    ));
    // Length mismatch, empty shapes, bad schemes.
    assert!(quantize_rtn(&w, 3, 96, QuantScheme::int4_sym(32), &opts).is_err());
    assert!(quantize_rtn(&[], 0, 96, QuantScheme::int4_sym(32), &opts).is_err());
    assert!(quantize_rtn(
        &w,
        2,
        96,
        QuantScheme::int_sym(9, Granularity::PerChannel, ScaleDType::F32),
        &opts
    )
    .is_err());
    assert!(quantize_rtn(
        &w,
        2,
        96,
        QuantScheme::int_sym(1, Granularity::PerChannel, ScaleDType::F32),
        &opts
    )
    .is_err());
    assert!(quantize_rtn(
        &w,
        2,
        96,
        QuantScheme::int4_sym(32).with_zero_point(ZeroPoint::Int),
        &opts
    )
    .is_err());
    assert!(quantize_rtn(
        &w,
        2,
        96,
        QuantScheme::int4_asym(32).with_zero_point(ZeroPoint::None),
        &opts
    )
    .is_err());
    assert!(quantize_rtn(
        &w,
        2,
        96,
        QuantScheme::mxfp4().with_zero_point(ZeroPoint::Float),
        &opts
    )
    .is_err());
    assert!(quantize_rtn(&w, 2, 96, QuantScheme::int4_sym(0), &opts).is_err());
    assert!(quantize_rtn(
        &w,
        2,
        96,
        QuantScheme::fp8_e4m3_block128()
            .with_granularity(Granularity::Block2d { rows: 0, cols: 8 }),
        &opts
    )
    .is_err());
    let mse = RtnOptions {
        clip: ClipMethod::Mse {
            grid: 0,
            max_shrink: 0.5,
        },
        g_idx: None,
    };
    assert!(quantize_rtn(&w, 2, 96, QuantScheme::int4_sym(32), &mse).is_err());
    // g_idx: wrong length, out of range, on a non-group scheme.
    let g = |g_idx: Vec<u32>| RtnOptions {
        clip: ClipMethod::MinMax,
        g_idx: Some(g_idx),
    };
    assert!(quantize_rtn(&w, 2, 96, QuantScheme::int4_sym(32), &g(vec![0; 95])).is_err());
    assert!(quantize_rtn(&w, 2, 96, QuantScheme::int4_sym(32), &g(vec![3; 96])).is_err());
    assert!(quantize_rtn(&w, 2, 96, QuantScheme::int8_per_channel(), &g(vec![0; 96])).is_err());
}

#[test]
fn malformed_tensors_are_rejected_by_the_reference() {
    let mut rng = StdRng::seed_from_u64(8);
    let w = random_weights(&mut rng, 2 * 64);
    let good = quantize_rtn(
        &w,
        2,
        64,
        QuantScheme::int4_asym(32),
        &RtnOptions::min_max(),
    )
    .unwrap();
    good.validate().unwrap();
    let broken = |f: &dyn Fn(&mut QuantTensor)| {
        let mut t = good.clone();
        f(&mut t);
        t
    };
    let cases: Vec<(&str, QuantTensor)> = vec![
        (
            "short data",
            broken(&|t| t.data.pop().map(|_| ()).unwrap_or(())),
        ),
        ("extra scale", broken(&|t| t.scales.push(1.0))),
        ("missing zeros", broken(&|t| t.zeros = None)),
        ("short zeros", broken(&|t| t.zeros = Some(vec![0.0; 3]))),
        (
            "zero out of range",
            broken(&|t| t.zeros = Some(vec![16.0; 4])),
        ),
        (
            "fractional int zero",
            broken(&|t| t.zeros = Some(vec![1.5; 4])),
        ),
        ("scale not f16", broken(&|t| t.scales[0] = 0.1)),
        ("negative scale", broken(&|t| t.scales[0] = -1.0)),
        ("NaN scale", broken(&|t| t.scales[1] = f32::NAN)),
        (
            "global scale on non-global scheme",
            broken(&|t| t.global_scale = 2.0),
        ),
        (
            "g_idx out of range",
            broken(&|t| t.g_idx = Some(vec![2; 64])),
        ),
        (
            "g_idx wrong length",
            broken(&|t| t.g_idx = Some(vec![0; 63])),
        ),
        ("rows mismatch", broken(&|t| t.rows = 3)),
        ("zero cols", broken(&|t| t.cols = 0)),
    ];
    for (name, t) in cases {
        assert!(t.validate().is_err(), "{name}: validate accepted");
        assert!(t.dequantize().is_err(), "{name}: dequantize accepted");
    }
    // Row-level API.
    let mut row = vec![0.0f32; 64];
    assert!(good.dequantize_row(2, &mut row).is_err());
    assert!(good.dequantize_row(0, &mut row[..63]).is_err());
    let oob = broken(&|t| t.g_idx = Some(vec![5; 64]));
    assert!(oob.dequantize_row(0, &mut row).is_err());
    assert!(good.code(2, 0).is_err());
    assert!(good.code(0, 64).is_err());
    assert!(good.code(1, 63).is_ok());
    // FP8 NaN codes are found by check_codes.
    let mut fp8 = quantize_rtn(
        &w,
        2,
        64,
        QuantScheme::fp8_e4m3_per_channel(),
        &RtnOptions::min_max(),
    )
    .unwrap();
    fp8.check_codes().unwrap();
    fp8.data[3] = 0x7f;
    assert!(fp8.check_codes().is_err());
}

#[test]
fn awkward_shapes_with_partial_tiles_and_row_padding() {
    let mut rng = StdRng::seed_from_u64(9);
    let cases: Vec<(QuantScheme, usize, usize)> = vec![
        (QuantScheme::fp8_e4m3_block128(), 17, 200),
        (
            QuantScheme::fp8_e4m3_block128()
                .with_granularity(Granularity::Block2d { rows: 4, cols: 7 }),
            9,
            23,
        ),
        (
            QuantScheme::int_sym(3, Granularity::PerChannel, ScaleDType::F32),
            3,
            11,
        ),
        (
            QuantScheme::int_asym(5, Granularity::PerTensor, ScaleDType::BF16),
            1,
            13,
        ),
        (QuantScheme::int3_sym(3), 17, 33),
        (QuantScheme::int2_asym(1), 2, 5),
        (
            QuantScheme::int_sym(6, Granularity::PerGroup { group_size: 7 }, ScaleDType::E8M0),
            5,
            21,
        ),
        (QuantScheme::nf4(5), 3, 15),
        (
            QuantScheme::fp4_e2m1(Granularity::Block2d { rows: 2, cols: 3 }, ScaleDType::E8M0),
            3,
            7,
        ),
    ];
    for (scheme, rows, cols) in cases {
        let w = random_weights(&mut rng, rows * cols);
        for opts in [RtnOptions::min_max(), RtnOptions::mse()] {
            let t = quantize_rtn(&w, rows, cols, scheme, &opts)
                .unwrap_or_else(|e| panic!("{scheme:?}: {e}"));
            assert_eq!(
                t.data.len(),
                rows * (cols * usize::from(scheme.element.bits())).div_ceil(8)
            );
            assert_eq!(t.scales.len(), scheme.num_scales(rows, cols).unwrap());
            let deq = t.dequantize().unwrap();
            assert_nearest(&format!("{scheme:?}"), &w, &t, &deq);
            // Every code read back through `code` decodes to what the
            // reference produced.
            for r in 0..rows {
                for c in 0..cols {
                    let g = t.scale_index(r, c).unwrap();
                    let zero = t.zeros.as_ref().map_or(0.0, |z| z[g]);
                    let v = (t.global_scale * t.scales[g])
                        * (scheme.element.decode(t.code(r, c).unwrap()) - zero);
                    assert_eq!(v, deq[r * cols + c]);
                }
            }
        }
    }
}

#[test]
fn storage_accounting() {
    assert_eq!(
        QuantScheme::int4_sym(128).bits_per_weight(),
        4.0 + 16.0 / 128.0
    );
    assert_eq!(
        QuantScheme::int4_asym(128).bits_per_weight(),
        4.0 + 20.0 / 128.0
    );
    assert_eq!(QuantScheme::mxfp4().bits_per_weight(), 4.25);
    assert_eq!(QuantScheme::nvfp4().bits_per_weight(), 4.5);
    assert_eq!(
        QuantScheme::fp8_e4m3_block128().bits_per_weight(),
        8.0 + 32.0 / 16384.0
    );
    assert_eq!(QuantScheme::int8_per_channel().bits_per_weight(), 8.0);
    // 3 x 11 INT3 per channel: 3 rows of ceil(33 / 8) = 5 bytes, 3 f32 scales.
    let s = QuantScheme::int_sym(3, Granularity::PerChannel, ScaleDType::F32);
    assert_eq!(s.storage_bits(3, 11).unwrap(), 3 * 5 * 8 + 3 * 32);
    assert_eq!(
        QuantScheme::nvfp4().storage_bits(2, 32).unwrap(),
        2 * 16 * 8 + 4 * 8 + 32
    );
    assert_eq!(
        QuantScheme::fp8_e4m3_block128()
            .scale_grid(300, 129)
            .unwrap(),
        (3, 2)
    );
    assert!(QuantScheme::int4_sym(128).scale_grid(4, 100).is_err());
}

#[test]
fn extreme_finite_values_quantize_without_panicking() {
    let big = marlin_quant::rtn::MAX_WEIGHT;
    let specials = [
        big,
        -big,
        f32::MIN_POSITIVE,
        1e-45,
        -1e-45,
        0.0,
        -0.0,
        1e30,
        -3e-39,
    ];
    let w: Vec<f32> = (0..2 * 128).map(|i| specials[i % specials.len()]).collect();
    for (name, scheme) in schemes() {
        for opts in [
            RtnOptions::min_max(),
            RtnOptions {
                clip: ClipMethod::Mse {
                    grid: 5,
                    max_shrink: 0.5,
                },
                g_idx: None,
            },
        ] {
            let t =
                quantize_rtn(&w, 2, 128, scheme, &opts).unwrap_or_else(|e| panic!("{name}: {e}"));
            let deq = t.dequantize().unwrap();
            assert!(deq.iter().all(|v| v.is_finite()), "{name}");
        }
    }
    let mut too_big = w.clone();
    too_big[3] = f32::MAX;
    assert!(matches!(
        quantize_rtn(
            &too_big,
            2,
            128,
            QuantScheme::int4_sym(32),
            &RtnOptions::min_max()
        ),
        Err(QuantError::InvalidData(_))
    ));
}
