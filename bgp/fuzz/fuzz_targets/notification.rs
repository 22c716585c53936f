//! Fuzz the NOTIFICATION decoder: the input is one context byte, then the body.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let Some((&c, body)) = data.split_first() else {
        return;
    };
    let (d, e) = common::cx(c);
    common::check(&common::wrap(3, body), &d, &e);
});
