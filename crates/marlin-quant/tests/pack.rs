//! Pack / unpack round trips for every code width, and the documented bit
//! positions.

use marlin_quant::pack::{
    pack_codes, packed_len, raw_to_signed, read_code, row_bytes, signed_to_raw, unpack_codes,
};
use proptest::prelude::*;

fn matrix(bits: u8) -> impl Strategy<Value = (usize, usize, Vec<u8>)> {
    (1usize..6, 1usize..70).prop_flat_map(move |(rows, cols)| {
        let max = ((1u16 << bits) - 1) as u8;
        (
            Just(rows),
            Just(cols),
            proptest::collection::vec(0..=max, rows * cols),
        )
    })
}

fn round_trip(bits: u8, rows: usize, cols: usize, codes: &[u8]) -> Result<(), TestCaseError> {
    let packed = pack_codes(codes, rows, cols, bits).unwrap();
    prop_assert_eq!(packed.len(), rows * (cols * usize::from(bits)).div_ceil(8));
    prop_assert_eq!(packed.len(), packed_len(rows, cols, bits).unwrap());
    prop_assert_eq!(
        unpack_codes(&packed, rows, cols, bits).unwrap(),
        codes.to_vec()
    );
    // Independent bit-level definition: bit (j*bits + t) of the row stream.
    let rb = row_bytes(cols, bits).unwrap();
    for r in 0..rows {
        for j in 0..cols {
            let mut v = 0u8;
            for t in 0..usize::from(bits) {
                let bit = j * usize::from(bits) + t;
                v |= ((packed[r * rb + bit / 8] >> (bit % 8)) & 1) << t;
            }
            prop_assert_eq!(v, codes[r * cols + j]);
        }
        // Padding bits at the end of the row are zero.
        let used = cols * usize::from(bits);
        for bit in used..rb * 8 {
            prop_assert_eq!((packed[r * rb + bit / 8] >> (bit % 8)) & 1, 0);
        }
    }
    Ok(())
}

macro_rules! round_trip_test {
    ($name:ident, $bits:expr) => {
        proptest! {
            #[test]
            fn $name((rows, cols, codes) in matrix($bits)) {
                round_trip($bits, rows, cols, &codes)?;
            }
        }
    };
}

round_trip_test!(round_trip_2_bits, 2);
round_trip_test!(round_trip_3_bits, 3);
round_trip_test!(round_trip_4_bits, 4);
round_trip_test!(round_trip_5_bits, 5);
round_trip_test!(round_trip_6_bits, 6);
round_trip_test!(round_trip_7_bits, 7);
round_trip_test!(round_trip_8_bits, 8);

proptest! {
    #[test]
    fn signed_codes_round_trip(bits in 2u8..=8, v in -128i32..128) {
        let half = 1i32 << (bits - 1);
        let v = v.clamp(-half, half - 1);
        prop_assert_eq!(raw_to_signed(signed_to_raw(v, bits), bits), v);
    }
}

#[test]
fn int3_layout_example() {
    // Codes 1, 2, 3, 4, 5, 6, 7, 0 of 3 bits, code j at bits 3j..3j+3 of the
    // little-endian stream (code bit t at stream bit 3j+t):
    // byte 0 = bits 0-7 = code0 | code1 << 3 | (code2 & 0b11) << 6 = 0b11_010_001
    // byte 1 = code2 >> 2 | code3 << 1 | code4 << 4 | (code5 & 1) << 7 = 0b0_101_100_0
    // byte 2 = code5 >> 1 | code6 << 2 | code7 << 5 = 0b000_111_11
    let codes = [1u8, 2, 3, 4, 5, 6, 7, 0];
    let packed = pack_codes(&codes, 1, 8, 3).unwrap();
    assert_eq!(packed, vec![0b1101_0001, 0b0101_1000, 0b0001_1111]);
    assert_eq!(read_code(&packed, 2, 3), Some(3)); // straddles bytes 0 and 1
}

#[test]
fn bad_sizes_and_codes_are_errors() {
    assert!(pack_codes(&[0; 5], 2, 3, 4).is_err());
    assert!(pack_codes(&[16], 1, 1, 4).is_err());
    assert!(pack_codes(&[0; 4], 2, 2, 9).is_err());
    assert!(pack_codes(&[0; 4], 2, 2, 1).is_err());
    assert!(unpack_codes(&[0; 3], 2, 3, 4).is_err());
    assert!(row_bytes(usize::MAX, 8).is_err());
    assert!(packed_len(usize::MAX / 2, 16, 8).is_err());
    assert_eq!(read_code(&[0xff], 3, 3), None);
}
