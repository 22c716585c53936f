//! Fuzz Message::decode on whole messages, header included (marker, length
//! and type checks): the input is one context byte, then the message.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let Some((&c, msg)) = data.split_first() else {
        return;
    };
    let (d, e) = common::cx(c);
    common::check(msg, &d, &e);
});
