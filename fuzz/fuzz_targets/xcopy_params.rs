//! Fuzz target `xcopy_params`: the EXTENDED COPY(LID1) parameter list (SPC-4
//! §6.4.3) through `mosaic_target::xcopy::parse_param_list`, then `plan` against
//! arbitrary copy-target geometries and `chunks` (all public, pure). The properties
//! are `check_xcopy` in target/tests/fuzz_mirror.rs (also run by CI).
//!
//! Input: byte 0 picks PARAMETER LIST LENGTH (the list's length, 0, or bytes 1-4);
//! bytes 5.. give up to four copy targets (one byte each: bit 7 unresolved, bit 6
//! the block size, bits 0-5 the capacity); then the list.
#![no_main]

use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use mosaic_target::xcopy::TargetGeometry;

#[allow(dead_code)]
#[path = "../../target/tests/fuzz_mirror.rs"]
mod tmirror;

fuzz_target!(init: seeds::write_if_asked(seeds::xcopy_params), |data: &[u8]| {
    let _ = run(Unstructured::new(data));
});

#[path = "../src/seeds.rs"]
mod seeds;

fn run(mut u: Unstructured) -> Result<()> {
    let u = &mut u;
    let mode: u8 = u.arbitrary()?;
    let explicit_len: u32 = u.arbitrary()?;
    let n = u.int_in_range(0..=4)?;
    let mut targets = Vec::with_capacity(n);
    for _ in 0..n {
        let t: u8 = u.arbitrary()?;
        targets.push((t & 0x80 == 0).then(|| TargetGeometry {
            block_size: if t & 0x40 != 0 { 4096 } else { 512 },
            num_blocks: u64::from(t & 0x3f),
        }));
    }
    let list = std::mem::replace(u, Unstructured::new(&[])).take_rest();
    let param_len = match mode % 4 {
        0 | 1 => list.len() as u32,
        2 => 0,
        _ => explicit_len,
    };
    tmirror::check_xcopy(list, param_len, &targets);
    Ok(())
}
