//! Fuzz target `cdb`: `mosaic_proto::scsi::Cdb::decode` over arbitrary bytes. The
//! properties are `check_cdb` in proto/tests/fuzz_mirror.rs (also run by CI).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../proto/tests/fuzz_mirror.rs"]
mod mirror;

fuzz_target!(init: seeds::write_if_asked(seeds::cdb), |data: &[u8]| {
    mirror::check_cdb(data);
});

#[path = "../src/seeds.rs"]
mod seeds;
