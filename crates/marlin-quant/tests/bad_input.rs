//! Public entry points given impossible shapes or hand-built tensors return
//! errors instead of panicking (division by zero, overflow).

use marlin_quant::{QuantScheme, QuantTensor};

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
