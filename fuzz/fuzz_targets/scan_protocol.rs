//! The scan-protocol TOML parser and validator: any text gives a protocol or an error naming the
//! problem, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use telecho_control::ScanProtocol;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = ScanProtocol::from_toml_str(text, "fuzz.toml");
    }
});
