//! Parses arbitrary bytes as safetensors and reads every tensor.
#![no_main]

use libfuzzer_sys::fuzz_target;
use marlin_io::safetensors::SafetensorsFile;

fuzz_target!(|data: &[u8]| {
    let Ok(f) = SafetensorsFile::from_bytes(data) else {
        return;
    };
    for (name, info) in f.tensors() {
        if let Ok(view) = f.tensor(name) {
            assert_eq!(view.data.len(), info.data_offsets.len());
            let _ = view.to_f32();
        }
    }
});
