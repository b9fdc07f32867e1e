//! Fuzz target `read_routing_table`: the vendor READ ROUTING TABLE CDB (C5h,
//! docs/wire-formats.md). Each input is decoded as it comes (any opcode), then with
//! its first byte set to C5h so that most inputs reach the field checks, and that
//! CDB also goes through a stand-alone device the way a session sends it. The
//! properties are `check_read_routing_table_cdb` in proto/tests/fuzz_mirror.rs and
//! `check_read_routing_table` in target/tests/fuzz_mirror.rs (also run by CI).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mosaic_proto::scsi::opcode::READ_ROUTING_TABLE;

#[allow(dead_code)]
#[path = "../../proto/tests/fuzz_mirror.rs"]
mod mirror;

#[allow(dead_code)]
#[path = "../../target/tests/fuzz_mirror.rs"]
mod tmirror;

fuzz_target!(init: seeds::write_if_asked(seeds::read_routing_table), |data: &[u8]| {
    mirror::check_read_routing_table_cdb(data);
    let mut cdb = data.to_vec();
    match cdb.first_mut() {
        Some(b) => *b = READ_ROUTING_TABLE,
        None => cdb.push(READ_ROUTING_TABLE),
    }
    mirror::check_read_routing_table_cdb(&cdb);
    tmirror::check_read_routing_table(&cdb);
});

#[path = "../src/seeds.rs"]
mod seeds;
