//! Arbitrary bytes as CRI log lines: parsing never panics, joined messages respect the size
//! cap, restart offsets never run ahead, and every emitted record is a valid Forward entry.
#![no_main]

use libfuzzer_sys::fuzz_target;
use logferry_forwarder::parse::LineFormat;

mod common;

fuzz_target!(|data: &[u8]| {
    common::run(LineFormat::Cri, data);
});
