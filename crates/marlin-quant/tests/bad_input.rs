//! Public entry points given impossible shapes or hand-built tensors return
//! errors instead of panicking (division by zero, overflow).

use marlin_quant::pack::{raw_to_signed, read_code, signed_to_raw};
use marlin_quant::{ElementType, QuantScheme, QuantTensor};

/// A 1 x 4 INT4 tensor with all-zero codes and unit scales, built field by
/// field (the fields are public, so nothing validated it).
fn hand_built(scheme: QuantScheme, rows: usize) -> QuantTensor {
    QuantTensor {
        scheme,
        rows,
        cols: 4,
        data: vec![0; 2],
        scales: vec![1.0],
        zeros: None,
        global_scale: 1.0,
        g_idx: None,
    }
}

#[test]
fn storage_bits_overflow_is_an_error() {
    // 2^60 rows of one INT8 code: the codes fit in u64 bits, the 2^60 f32
    // scales (2^65 bits) do not.
    let scheme = QuantScheme::int8_per_channel();
    assert!(scheme.storage_bits(1 << 60, 1).is_err());
    assert_eq!(scheme.storage_bits(2, 3).unwrap(), 2 * 3 * 8 + 2 * 32);
}

#[test]
fn scale_index_of_zero_group_size_is_an_error() {
    let t = hand_built(QuantScheme::int4_sym(0), 1);
    assert!(t.scale_index(0, 0).is_err());
    let ok = hand_built(QuantScheme::int4_sym(4), 1);
    assert_eq!(ok.scale_index(0, 3).unwrap(), 0);
}

#[test]
fn code_of_a_row_past_the_addressable_range_is_an_error() {
    // rows * row_bytes overflows usize; the row offset must not wrap.
    let t = hand_built(QuantScheme::int4_sym(4), usize::MAX);
    assert!(t.code(usize::MAX - 1, 0).is_err());
    assert!(t.code(0, 0).is_ok());
}

#[test]
fn code_helpers_with_unsupported_widths_do_not_panic() {
    for bits in [0u8, 9, 16, 31, 32, 40, 255] {
        assert_eq!(read_code(&[0xff, 0xff, 0xff], 0, bits), None);
        let _ = signed_to_raw(-1, bits);
        let _ = raw_to_signed(0xff, bits);
        for signed in [false, true] {
            let e = ElementType::Int { bits, signed };
            assert!(e.validate().is_err());
            assert_eq!(e.int_range(), None);
            let _ = (e.decode(0xff), e.encode(3.0), e.is_finite_code(0xff));
        }
    }
    // The supported widths are unchanged.
    assert_eq!(raw_to_signed(0b111, 3), -1);
    assert_eq!(signed_to_raw(-1, 3), 0b111);
    assert_eq!(read_code(&[0b1010_0101], 1, 4), Some(0b1010));
    assert_eq!(raw_to_signed(0x80, 8), -128);
    assert_eq!(signed_to_raw(-128, 8), 0x80);
}
