//! Dense K-major bit packing ([`crate::Layout::KMajorDense`]).
//!
//! A (rows, cols) matrix of `bits`-bit codes (2 <= bits <= 8) is stored row
//! by row. Row `r` starts at byte `r * row_bytes(cols, bits)`, with
//! `row_bytes = ceil(cols * bits / 8)` (rows are padded with zero bits to a
//! whole byte). Code `j` of a row occupies bits `j*bits .. (j+1)*bits` of the
//! row read as a little-endian bit stream: it starts at byte
//! `(j*bits) / 8`, bit `(j*bits) % 8`, and for 3, 5, 6 and 7 bits it may
//! straddle two bytes (low bits in the first byte). Codes are raw bit
//! patterns: signed integers are b-bit two's complement.

use crate::QuantError;

/// Checks that `bits` is a supported packing width.
pub fn check_bits(bits: u8) -> Result<(), QuantError> {
    if (2..=8).contains(&bits) {
        Ok(())
    } else {
        Err(QuantError::Unsupported(format!(
            "code width {bits} bits (supported: 2..=8)"
        )))
    }
}

/// Bytes of one packed row of `cols` codes: ceil(cols * bits / 8).
pub fn row_bytes(cols: usize, bits: u8) -> Result<usize, QuantError> {
    check_bits(bits)?;
    let total_bits = cols
        .checked_mul(usize::from(bits))
        .ok_or_else(|| QuantError::Shape(format!("row of {cols} codes x {bits} bits overflows")))?;
    Ok(total_bits.div_ceil(8))
}

/// Bytes of a packed (rows, cols) matrix.
pub fn packed_len(rows: usize, cols: usize, bits: u8) -> Result<usize, QuantError> {
    row_bytes(cols, bits)?
        .checked_mul(rows)
        .ok_or_else(|| QuantError::Shape(format!("{rows} x {cols} x {bits} bits overflows")))
}

/// Reads code `j` of a packed row. Returns `None` when the code lies (even
/// partly) outside `row`, or for a width outside 1..=8.
#[inline]
pub fn read_code(row: &[u8], j: usize, bits: u8) -> Option<u8> {
    if !(1..=8).contains(&bits) {
        return None;
    }
    let bit = j.checked_mul(usize::from(bits))?;
    let byte = bit / 8;
    let shift = bit % 8;
    let first = u16::from(*row.get(byte)?);
    let window = if shift + usize::from(bits) > 8 {
        first | (u16::from(*row.get(byte + 1)?) << 8)
    } else {
        first
    };
    let mask = (1u16 << bits) - 1;
    Some(((window >> shift) & mask) as u8)
}

/// ORs code `code` into position `j` of a zero-initialised packed row.
/// The caller guarantees `code < 2^bits` and that the row is large enough.
#[inline]
fn write_code(row: &mut [u8], j: usize, bits: u8, code: u8) {
    let bit = j * usize::from(bits);
    let byte = bit / 8;
    let shift = bit % 8;
    let window = u16::from(code) << shift;
    row[byte] |= window as u8;
    if shift + usize::from(bits) > 8 {
        row[byte + 1] |= (window >> 8) as u8;
    }
}

/// Packs a row-major (rows, cols) matrix of raw codes. Every code must be
/// below 2^bits.
pub fn pack_codes(codes: &[u8], rows: usize, cols: usize, bits: u8) -> Result<Vec<u8>, QuantError> {
    let rb = row_bytes(cols, bits)?;
    let total = packed_len(rows, cols, bits)?;
    let n = rows
        .checked_mul(cols)
        .ok_or_else(|| QuantError::Shape(format!("{rows} x {cols} overflows")))?;
    if codes.len() != n {
        return Err(QuantError::Shape(format!(
            "{} codes given for a {rows} x {cols} matrix",
            codes.len()
        )));
    }
    let limit = 1u16 << bits;
    if let Some(index) = codes.iter().position(|&c| u16::from(c) >= limit) {
        return Err(QuantError::InvalidData(format!(
            "code {} at index {index} does not fit in {bits} bits",
            codes[index]
        )));
    }
    let mut data = vec![0u8; total];
    if cols == 0 {
        return Ok(data);
    }
    for (row_codes, row) in codes.chunks_exact(cols).zip(data.chunks_exact_mut(rb)) {
        for (j, &code) in row_codes.iter().enumerate() {
            write_code(row, j, bits, code);
        }
    }
    Ok(data)
}

/// Unpacks one packed row (`row.len()` must equal `row_bytes(cols, bits)`)
/// into `out` (length `cols`).
pub fn unpack_row(row: &[u8], bits: u8, out: &mut [u8]) -> Result<(), QuantError> {
    let expected = row_bytes(out.len(), bits)?;
    if row.len() != expected {
        return Err(QuantError::Shape(format!(
            "packed row of {} bytes, expected {expected} for {} codes of {bits} bits",
            row.len(),
            out.len()
        )));
    }
    for (j, slot) in out.iter_mut().enumerate() {
        *slot = read_code(row, j, bits)
            .ok_or_else(|| QuantError::Shape(format!("code {j} outside the packed row")))?;
    }
    Ok(())
}

/// Unpacks a packed (rows, cols) matrix into row-major raw codes.
pub fn unpack_codes(
    data: &[u8],
    rows: usize,
    cols: usize,
    bits: u8,
) -> Result<Vec<u8>, QuantError> {
    let rb = row_bytes(cols, bits)?;
    let total = packed_len(rows, cols, bits)?;
    if data.len() != total {
        return Err(QuantError::Shape(format!(
            "packed data of {} bytes, expected {total} for {rows} x {cols} x {bits} bits",
            data.len()
        )));
    }
    let n = rows
        .checked_mul(cols)
        .ok_or_else(|| QuantError::Shape(format!("{rows} x {cols} overflows")))?;
    let mut codes = vec![0u8; n];
    if cols == 0 {
        return Ok(codes);
    }
    for (row, out) in data
        .chunks_exact(rb.max(1))
        .zip(codes.chunks_exact_mut(cols))
    {
        unpack_row(row, bits, out)?;
    }
    Ok(codes)
}

/// The raw b-bit two's-complement pattern of a signed integer code (widths
/// of 8 bits or more keep the whole byte).
#[inline]
pub fn signed_to_raw(value: i32, bits: u8) -> u8 {
    // checked_shl: a width >= 32 must not overflow the shift.
    let mask = 1u32
        .checked_shl(u32::from(bits))
        .map_or(u32::MAX, |bit| bit - 1);
    (value as u32 & mask) as u8
}

/// Sign-extends a raw b-bit two's-complement pattern (0 for a width of 0;
/// widths above 8 read the byte as a signed 8-bit value or wider).
#[inline]
pub fn raw_to_signed(raw: u8, bits: u8) -> i32 {
    let shift = 32u32.saturating_sub(u32::from(bits));
    if shift >= 32 {
        // Width 0: the shifts below would overflow; a 0-bit code is 0.
        return 0;
    }
    ((u32::from(raw) << shift) as i32) >> shift
}
