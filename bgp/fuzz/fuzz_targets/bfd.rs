//! Fuzz the BFD Control packet decoder: whatever it accepts must encode
//! and decode to the same packet (the encoder writes no authentication and
//! no trailing octets, so the bytes may differ; the packet may not).
#![no_main]

use bgp::bfd::Packet;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Packet::decode(data) {
        let again = p.to_bytes();
        assert_eq!(again.len(), 24);
        assert_eq!(Packet::decode(&again), Ok(p));
    }
});
