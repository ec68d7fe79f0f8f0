//! Property test: for random shapes, schemes and weights, RTN produces a
//! valid tensor whose every element dequantizes to a nearest grid value.

use marlin_quant::{
    quantize_rtn, ElementType, Granularity, QuantScheme, RtnOptions, ScaleDType, ZeroPoint,
};
use proptest::prelude::*;

fn element() -> impl Strategy<Value = ElementType> {
    prop_oneof![
        (2u8..=8, any::<bool>()).prop_map(|(bits, signed)| ElementType::Int { bits, signed }),
        Just(ElementType::Fp4E2M1),
        Just(ElementType::Fp8E4M3),
        Just(ElementType::Fp8E5M2),
        Just(ElementType::Nf4),
    ]
}

fn scale_dtype() -> impl Strategy<Value = ScaleDType> {
    prop_oneof![
        Just(ScaleDType::F32),
        Just(ScaleDType::F16),
        Just(ScaleDType::BF16),
        Just(ScaleDType::E8M0),
        Just(ScaleDType::E4M3),
    ]
}

/// (scheme, rows, cols, weights) with a granularity valid for the shape.
fn case() -> impl Strategy<Value = (QuantScheme, usize, usize, Vec<f32>)> {
    (
        element(),
        scale_dtype(),
        any::<bool>(),
        1usize..6,
        1usize..5,
        1usize..12,
        0usize..4,
        1usize..5,
    )
        .prop_flat_map(
            |(element, dtype, global, rows, groups, group, gran, block_rows)| {
                let cols = groups * group;
                let granularity = match gran {
                    0 => Granularity::PerTensor,
                    1 => Granularity::PerChannel,
                    2 => Granularity::PerGroup { group_size: group },
                    _ => Granularity::Block2d {
                        rows: block_rows,
                        cols: group,
                    },
                };
                let zero_point = match element {
                    ElementType::Int { signed: false, .. }
                        if dtype == ScaleDType::E8M0 || global =>
                    {
                        ZeroPoint::Int
                    }
                    ElementType::Int { signed: false, .. } => ZeroPoint::Float,
                    _ => ZeroPoint::None,
                };
                let scheme = QuantScheme::plain(element, granularity, dtype, zero_point)
                    .with_global_scale(global);
                (
                    Just(scheme),
                    Just(rows),
                    Just(cols),
                    proptest::collection::vec(-4.0f32..4.0, rows * cols),
                )
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn rtn_is_nearest_on_the_stored_grid((scheme, rows, cols, w) in case(), mse in any::<bool>()) {
        let opts = if mse { RtnOptions::mse() } else { RtnOptions::min_max() };
        let t = quantize_rtn(&w, rows, cols, scheme, &opts).unwrap();
        t.validate().unwrap();
        t.check_codes().unwrap();
        let deq = t.dequantize().unwrap();
        for r in 0..rows {
            for c in 0..cols {
                let i = r * cols + c;
                let g = t.scale_index(r, c).unwrap();
                let s = t.global_scale * t.scales[g];
                let zero = t.zeros.as_ref().map_or(0.0, |z| z[g]);
                let best = (0..(1u16 << scheme.element.bits()))
                    .map(|raw| scheme.element.decode(raw as u8))
                    .filter(|v| v.is_finite())
                    .map(|v| (w[i] - s * (v - zero)).abs())
                    .fold(f32::INFINITY, f32::min);
                let err = (w[i] - deq[i]).abs();
                prop_assert!(err <= best + 1e-6 * w[i].abs().max(s), "{:?} ({r},{c}) w={} err={} best={}", scheme, w[i], err, best);
            }
        }
    }
}
