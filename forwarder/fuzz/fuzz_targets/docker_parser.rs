//! Arbitrary bytes as docker json-file lines: parsing (including JSON string unescaping and
//! the skipping of unknown values) never panics, and every emitted record is a valid Forward
//! entry whose record transcodes to JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use logferry_forwarder::parse::LineFormat;

mod common;

fuzz_target!(|data: &[u8]| {
    common::run(LineFormat::Docker, data);
});
