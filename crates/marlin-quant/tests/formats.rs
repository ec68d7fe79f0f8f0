//! Exhaustive checks of the FP8 / FP4 / E8M0 / NF4 conversions against an
//! independent definition computed from the bit fields in f64.

use marlin_quant::formats::{
    e2m1_to_f32, e4m3_to_f32, e5m2_to_f32, e8m0_to_f32, f32_to_e2m1, f32_to_e4m3, f32_to_e5m2,
    f32_to_e8m0_ceil, f32_to_e8m0_floor, f32_to_nf4, nf4_to_f32, E2M1_MAX, E4M3_MAX, E5M2_MAX,
    NF4_VALUES,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Value of a sign / exponent / mantissa bit pattern, IEEE-style, in f64.
/// `None` for the patterns the caller declares special.
fn minifloat(code: u32, exp_bits: u32, mant_bits: u32, bias: i32) -> f64 {
    let sign = if (code >> (exp_bits + mant_bits)) & 1 == 1 {
        -1.0
    } else {
        1.0
    };
    let e = ((code >> mant_bits) & ((1 << exp_bits) - 1)) as i32;
    let m = f64::from(code & ((1 << mant_bits) - 1));
    let frac = m / f64::from(1u32 << mant_bits);
    if e == 0 {
        sign * frac * 2f64.powi(1 - bias)
    } else {
        sign * (1.0 + frac) * 2f64.powi(e - bias)
    }
}

fn e4m3_reference(code: u8) -> f64 {
    if code & 0x7f == 0x7f {
        f64::NAN
    } else {
        minifloat(u32::from(code), 4, 3, 7)
    }
}

fn e5m2_reference(code: u8) -> f64 {
    let sign = if code & 0x80 != 0 { -1.0 } else { 1.0 };
    match ((code >> 2) & 0x1f, code & 0x3) {
        (0x1f, 0) => sign * f64::INFINITY,
        (0x1f, _) => f64::NAN,
        _ => minifloat(u32::from(code), 5, 2, 15),
    }
}

fn same(a: f32, b: f64) -> bool {
    (a.is_nan() && b.is_nan())
        || (f64::from(a) == b && a.is_sign_negative() == b.is_sign_negative())
}

#[test]
fn e4m3_decode_all_256_codes() {
    for code in 0..=255u8 {
        assert!(
            same(e4m3_to_f32(code), e4m3_reference(code)),
            "code {code:#04x}"
        );
    }
    assert_eq!(e4m3_to_f32(0x7e), 448.0);
    assert_eq!(e4m3_to_f32(0x01), 2f32.powi(-9));
    assert!(e4m3_to_f32(0x7f).is_nan() && e4m3_to_f32(0xff).is_nan());
}

#[test]
fn e5m2_decode_all_256_codes() {
    for code in 0..=255u8 {
        assert!(
            same(e5m2_to_f32(code), e5m2_reference(code)),
            "code {code:#04x}"
        );
    }
    assert_eq!(e5m2_to_f32(0x7b), 57344.0);
    assert_eq!(e5m2_to_f32(0x7c), f32::INFINITY);
    assert_eq!(e5m2_to_f32(0xfc), f32::NEG_INFINITY);
    assert_eq!(e5m2_to_f32(0x01), 2f32.powi(-16));
}

#[test]
fn e2m1_decode_all_16_codes() {
    let expected = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0];
    for code in 0..16u8 {
        let reference = minifloat(u32::from(code), 2, 1, 1);
        assert!(same(e2m1_to_f32(code), reference), "code {code:#x}");
        assert_eq!(e2m1_to_f32(code).abs(), expected[usize::from(code & 7)]);
    }
}

#[test]
fn encode_inverts_decode_for_every_non_nan_code() {
    for code in 0..=255u8 {
        if !e4m3_to_f32(code).is_nan() {
            assert_eq!(f32_to_e4m3(e4m3_to_f32(code)), code, "e4m3 {code:#04x}");
        }
        if !e5m2_to_f32(code).is_nan() {
            assert_eq!(f32_to_e5m2(e5m2_to_f32(code)), code, "e5m2 {code:#04x}");
        }
    }
    for code in 0..16u8 {
        assert_eq!(f32_to_e2m1(e2m1_to_f32(code)), code, "e2m1 {code:#x}");
        assert_eq!(f32_to_nf4(nf4_to_f32(code)), code, "nf4 {code:#x}");
    }
    for code in 0..=254u8 {
        let v = e8m0_to_f32(code);
        assert_eq!(f64::from(v), 2f64.powi(i32::from(code) - 127));
        assert_eq!(f32_to_e8m0_ceil(v), code);
        assert_eq!(f32_to_e8m0_floor(v), code);
    }
    assert!(e8m0_to_f32(0xff).is_nan());
}

/// Brute-force nearest code with ties to the even code, over the finite codes.
fn brute_nearest(x: f32, codes: impl Iterator<Item = u8>, decode: impl Fn(u8) -> f32) -> u8 {
    let mut best: Option<(f64, u8)> = None;
    for code in codes {
        let v = decode(code);
        if !v.is_finite() || v.is_sign_negative() != x.is_sign_negative() {
            continue;
        }
        let d = (f64::from(x) - f64::from(v)).abs();
        best = match best {
            Some((bd, bc)) if bd < d || (bd == d && bc % 2 == 0) => Some((bd, bc)),
            _ => Some((d, code)),
        };
    }
    best.map(|(_, c)| c).unwrap_or(0)
}

#[test]
fn encoders_round_to_nearest_even_on_random_inputs() {
    let mut rng = StdRng::seed_from_u64(3);
    for _ in 0..20_000 {
        // Log-uniform magnitudes across each format's range, both signs.
        let x = rng.gen_range(-20.0f32..10.0).exp2() * if rng.gen_bool(0.5) { -1.0 } else { 1.0 };
        if x.abs() <= E4M3_MAX {
            assert_eq!(
                f32_to_e4m3(x),
                brute_nearest(x, 0..=255, e4m3_to_f32),
                "e4m3 {x}"
            );
        }
        if x.abs() <= E2M1_MAX {
            assert_eq!(
                f32_to_e2m1(x),
                brute_nearest(x, 0..16, e2m1_to_f32),
                "e2m1 {x}"
            );
        }
        let y = x * 100.0;
        if y.abs() <= E5M2_MAX {
            assert_eq!(
                f32_to_e5m2(y),
                brute_nearest(y, 0..=255, e5m2_to_f32),
                "e5m2 {y}"
            );
        }
        let z = x.clamp(-1.0, 1.0);
        let nearest = NF4_VALUES
            .iter()
            .map(|v| (z - v).abs())
            .fold(f32::INFINITY, f32::min);
        assert_eq!((nf4_to_f32(f32_to_nf4(z)) - z).abs(), nearest, "nf4 {z}");
    }
}

#[test]
fn ties_round_to_even_codes() {
    // Midpoints between every pair of adjacent positive codes, checked in
    // f64 to be exactly representable in f32 (true for all three formats).
    let check = |name: &str,
                 max_code: u8,
                 sign_bit: u8,
                 decode: &dyn Fn(u8) -> f32,
                 encode: &dyn Fn(f32) -> u8| {
        for lo in 0..max_code {
            let mid = (f64::from(decode(lo)) + f64::from(decode(lo + 1))) / 2.0;
            let mid32 = mid as f32;
            assert_eq!(f64::from(mid32), mid, "{name}: midpoint not exact");
            let even = if lo % 2 == 0 { lo } else { lo + 1 };
            assert_eq!(
                encode(mid32),
                even,
                "{name}: tie between {lo:#x} and {:#x}",
                lo + 1
            );
            assert_eq!(
                encode(-mid32),
                even | sign_bit,
                "{name}: negative tie at {lo:#x}"
            );
        }
    };
    check("e4m3", 0x7e, 0x80, &e4m3_to_f32, &f32_to_e4m3);
    check("e5m2", 0x7b, 0x80, &e5m2_to_f32, &f32_to_e5m2);
    check("e2m1", 0x7, 0x8, &e2m1_to_f32, &f32_to_e2m1);
    // Hand-picked examples: 0.25 lies between 0 and 0.5 (E2M1) -> 0;
    // 0.75 between 0.5 and 1 -> 1.0 (code 2, even); 5 between 4 and 6 -> 4.
    assert_eq!(e2m1_to_f32(f32_to_e2m1(0.25)), 0.0);
    assert_eq!(e2m1_to_f32(f32_to_e2m1(0.75)), 1.0);
    assert_eq!(e2m1_to_f32(f32_to_e2m1(5.0)), 4.0);
    assert_eq!(e2m1_to_f32(f32_to_e2m1(2.5)), 2.0);
    // E4M3: 17 lies between 16 and 18 -> 16 (even mantissa).
    assert_eq!(e4m3_to_f32(f32_to_e4m3(17.0)), 16.0);
    assert_eq!(e4m3_to_f32(f32_to_e4m3(19.0)), 20.0);
}

#[test]
fn saturation_nan_and_infinity() {
    assert_eq!(e4m3_to_f32(f32_to_e4m3(1e6)), 448.0);
    assert_eq!(e4m3_to_f32(f32_to_e4m3(-1e6)), -448.0);
    assert_eq!(e4m3_to_f32(f32_to_e4m3(f32::INFINITY)), 448.0);
    assert_eq!(e4m3_to_f32(f32_to_e4m3(f32::NEG_INFINITY)), -448.0);
    assert_eq!(e4m3_to_f32(f32_to_e4m3(464.0)), 448.0);
    assert_eq!(f32_to_e4m3(f32::NAN), 0x7f);
    assert_eq!(f32_to_e4m3(-f32::NAN), 0xff);

    assert_eq!(e5m2_to_f32(f32_to_e5m2(1e6)), 57344.0);
    assert_eq!(e5m2_to_f32(f32_to_e5m2(-1e9)), -57344.0);
    assert_eq!(f32_to_e5m2(f32::INFINITY), 0x7c);
    assert_eq!(f32_to_e5m2(f32::NEG_INFINITY), 0xfc);
    assert!(e5m2_to_f32(f32_to_e5m2(f32::NAN)).is_nan());

    assert_eq!(e2m1_to_f32(f32_to_e2m1(100.0)), 6.0);
    assert_eq!(e2m1_to_f32(f32_to_e2m1(f32::NEG_INFINITY)), -6.0);
    assert_eq!(f32_to_e2m1(f32::NAN), 0);

    assert_eq!(nf4_to_f32(f32_to_nf4(3.0)), 1.0);
    assert_eq!(nf4_to_f32(f32_to_nf4(-3.0)), -1.0);

    // Subnormals: half the smallest subnormal ties to zero, anything above
    // rounds up, signs preserved.
    let e4m3_min = 2f32.powi(-9);
    assert_eq!(f32_to_e4m3(e4m3_min * 0.5), 0x00);
    assert_eq!(f32_to_e4m3(e4m3_min * 0.500001), 0x01);
    assert_eq!(f32_to_e4m3(-e4m3_min * 0.25), 0x80);
    assert_eq!(f32_to_e4m3(e4m3_min * 1.5), 0x02);
    let e5m2_min = 2f32.powi(-16);
    assert_eq!(f32_to_e5m2(e5m2_min * 0.5), 0x00);
    assert_eq!(f32_to_e5m2(e5m2_min * 0.75), 0x01);
    assert_eq!(f32_to_e5m2(1e-30), 0x00);

    // E8M0 rounding directions and clamps.
    assert_eq!(e8m0_to_f32(f32_to_e8m0_ceil(3.0)), 4.0);
    assert_eq!(e8m0_to_f32(f32_to_e8m0_floor(3.0)), 2.0);
    assert_eq!(f32_to_e8m0_ceil(0.0), 0);
    assert_eq!(f32_to_e8m0_ceil(f32::MAX), 254);
    assert_eq!(f32_to_e8m0_floor(f32::MAX), 254);
    assert_eq!(f32_to_e8m0_ceil(f32::NAN), 255);
    assert_eq!(f32_to_e8m0_floor(1e-45), 0);
}
