//! URDF loading into a kinematic chain: any text gives a chain or an error, never a panic; a
//! chain that loads evaluates its forward kinematics at its middle configuration.
#![no_main]

use libfuzzer_sys::fuzz_target;
use telecho_control::Chain;

fuzz_target!(|data: &[u8]| {
    if let Ok(xml) = std::str::from_utf8(data) {
        if let Ok(chain) = Chain::from_urdf_str(xml, None, "probe_tip") {
            let q = chain.mid_configuration();
            let _ = chain.fk(&q);
        }
    }
});
