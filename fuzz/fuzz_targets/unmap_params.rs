//! Fuzz target `unmap_params`: the UNMAP parameter list (SBC-3 §5.28.2). Its parser
//! (`parse_unmap_list` in target/src/scsi/provisioning.rs) is private to the logical
//! unit, so the target drives it the way the session does: an UNMAP CDB and a
//! Data-Out buffer through the public `LogicalUnit::execute`, on a small memory
//! volume. The properties are `check_unmap` in target/tests/fuzz_mirror.rs (also run
//! by CI).
#![no_main]

use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../target/tests/fuzz_mirror.rs"]
mod tmirror;

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});

fn run(u: &mut Unstructured) -> Result<()> {
    let flags: u8 = u.arbitrary()?;
    let byte1 = if flags & 0x80 != 0 { u.arbitrary()? } else { 0 };
    let data_out: Vec<u8> = if flags & 0x40 != 0 {
        u.arbitrary()?
    } else {
        let n = u.int_in_range(0..=6)?;
        let mut ds = Vec::with_capacity(n);
        for _ in 0..n {
            let lba = if u.ratio(7, 8)? {
                u.int_in_range(0..=tmirror::UNMAP_BLOCKS + 2)?
            } else {
                u.arbitrary()?
            };
            let blocks = if u.ratio(7, 8)? {
                u.int_in_range(0..=6)?
            } else {
                u.arbitrary()?
            };
            ds.push((lba, blocks));
        }
        let mut list = tmirror::unmap_list(&ds);
        if flags & 0x20 != 0 {
            let dl: u16 = u.arbitrary()?;
            list[2..4].copy_from_slice(&dl.to_be_bytes());
        }
        let cut = u.int_in_range(0..=list.len())?;
        if flags & 0x10 != 0 {
            list.truncate(cut);
        }
        list
    };
    let param_len = match (flags >> 2) & 3 {
        0 | 1 => data_out.len() as u16,
        2 => u.arbitrary()?,
        _ => (data_out.len() as u16).saturating_add(u.int_in_range(1..=20)?),
    };
    tmirror::check_unmap(&tmirror::UnmapInput {
        thin: flags & 3 != 3,
        read_only: flags & 3 == 2,
        byte1,
        param_len,
        data_out,
    });
    Ok(())
}
