//! The OpenIGTLink decoder: any bytes, whole or split at any point of a stream, give messages or
//! errors, never a panic; a decoded message re-encodes to bytes that decode to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use telecho_igtl::codec::{Decoder, Message};

fuzz_target!(|data: &[u8]| {
    if let Ok((msg, used)) = Message::decode(data) {
        assert!(used <= data.len());
        if let Ok(bytes) = msg.encode() {
            let (again, n) = Message::decode(&bytes).expect("a re-encoded message decodes");
            assert_eq!(n, bytes.len());
            assert_eq!(again, msg);
        }
    }
    // The same bytes as a stream arriving in two pieces.
    let split = data.first().map_or(0, |&b| usize::from(b) % (data.len() + 1));
    let mut dec = Decoder::new(1 << 20);
    dec.push(&data[..split]);
    let _ = dec.next_message();
    dec.push(&data[split..]);
    for _ in 0..64 {
        match dec.next_message() {
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
});
