//! Block geometry of every ggml tensor type id that a GGUF file may name,
//! including the ones marlin has no kernels for, so that `inspect` can size
//! and list any well-formed file.

use marlin_quant::GgmlType;

/// Name, elements per block and bytes per block of a ggml type id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GgmlTypeInfo {
    pub id: u32,
    pub name: &'static str,
    pub block_size: usize,
    pub type_size: usize,
}

/// ggml's type table (ggml.c `type_traits`) for ids marlin-quant does not
/// cover; ids 4, 5, 31-33 and 36-38 were removed upstream and stay unknown.
const OTHER_TYPES: &[(u32, &str, usize, usize)] = &[
    (16, "iq2_xxs", 256, 66),
    (17, "iq2_xs", 256, 74),
    (18, "iq3_xxs", 256, 98),
    (19, "iq1_s", 256, 50),
    (20, "iq4_nl", 32, 18),
    (21, "iq3_s", 256, 110),
    (22, "iq2_s", 256, 82),
    (23, "iq4_xs", 256, 136),
    (24, "i8", 1, 1),
    (25, "i16", 1, 2),
    (26, "i32", 1, 4),
    (27, "i64", 1, 8),
    (28, "f64", 1, 8),
    (29, "iq1_m", 256, 56),
    (34, "tq1_0", 256, 54),
    (35, "tq2_0", 256, 66),
    (40, "nvfp4", 64, 36),
    (41, "q1_0", 128, 18),
];

/// Geometry of type `id`, or `None` for an id ggml does not define.
pub fn ggml_type_info(id: u32) -> Option<GgmlTypeInfo> {
    if let Some(t) = GgmlType::from_id(id) {
        return Some(GgmlTypeInfo {
            id,
            name: t.name(),
            block_size: t.block_size(),
            type_size: t.type_size(),
        });
    }
    OTHER_TYPES
        .iter()
        .find(|(i, ..)| *i == id)
        .map(|&(id, name, block_size, type_size)| GgmlTypeInfo {
            id,
            name,
            block_size,
            type_size,
        })
}

impl GgmlTypeInfo {
    pub fn bits_per_weight(&self) -> f64 {
        (self.type_size * 8) as f64 / self.block_size as f64
    }
}
