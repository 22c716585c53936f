//! Fuzz the stream framer as the reader task uses it: cut messages off a
//! byte stream with `frame`, decode each; a framing error ends the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let Some((&c, mut rest)) = data.split_first() else {
        return;
    };
    let (d, e) = common::cx(c);
    loop {
        match bgp::wire::frame(rest) {
            Ok(Some(len)) => {
                assert!(
                    len >= 19 && len <= rest.len(),
                    "frame length {len} of {}",
                    rest.len()
                );
                common::check(&rest[..len], &d, &e);
                rest = &rest[len..];
            }
            Ok(None) | Err(_) => return,
        }
    }
});
