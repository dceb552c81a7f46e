//! The teleoperation message decoder: any bytes give a message or an error, never a panic; a
//! decoded message re-encodes to bytes that decode to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use telecho_teleop::wire::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = Message::decode(data) {
        let mut again = Vec::new();
        msg.encode(&mut again);
        let round = Message::decode(&again).expect("a re-encoded message decodes");
        assert_eq!(round, msg);
    }
});
