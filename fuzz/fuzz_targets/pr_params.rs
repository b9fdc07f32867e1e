//! Fuzz target `pr_params`: the PERSISTENT RESERVE OUT parameter list (SPC-4
//! §6.16.3, §6.16.4) through `PrState::persistent_reserve_out`, which parses it,
//! and TransportIDs through `mosaic_target::pr::parse_transport_id` (both already
//! public). The properties are `check_prout` and `check_transport_id` in
//! target/tests/fuzz_mirror.rs (also run by CI).
//!
//! Input: an even first byte sends the rest to `parse_transport_id`; an odd one
//! builds a sequence of PROUT commands from four I_T nexuses, with parameter lists
//! either raw or built from fields and TransportIDs.
#![no_main]

use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use mosaic_target::pr::Initiator;

#[allow(dead_code)]
#[path = "../../target/tests/fuzz_mirror.rs"]
mod tmirror;

fuzz_target!(init: seeds::write_if_asked(seeds::pr_params), |data: &[u8]| {
    match data.split_first() {
        Some((mode, rest)) if mode & 1 == 0 => tmirror::check_transport_id(rest),
        Some((_, rest)) => {
            let _ = run(&mut Unstructured::new(rest));
        }
        None => {}
    }
});

#[path = "../src/seeds.rs"]
mod seeds;

fn run(u: &mut Unstructured) -> Result<()> {
    let n = u.int_in_range(1..=12)?;
    let mut ops = Vec::with_capacity(n);
    for _ in 0..n {
        ops.push(op(u)?);
    }
    tmirror::check_prout(&ops);
    Ok(())
}

fn small_key(u: &mut Unstructured) -> Result<u64> {
    if u.ratio(7, 8)? {
        u.int_in_range(0..=3)
    } else {
        u.arbitrary()
    }
}

fn op(u: &mut Unstructured) -> Result<tmirror::PrOp> {
    let nexus: u8 = u.arbitrary()?;
    let sa = if u.ratio(7, 8)? {
        u.int_in_range(0..=7)?
    } else {
        u.arbitrary()?
    };
    let scope_type: u8 = if u.ratio(3, 4)? {
        *u.choose(&[0, 1, 3, 5, 6, 7, 8])?
    } else {
        u.arbitrary()?
    };
    let data: Vec<u8> = if u.ratio(1, 4)? {
        u.arbitrary()?
    } else {
        let key = small_key(u)?;
        let sa_key = small_key(u)?;
        let flags: u8 = u.arbitrary()?;
        let rtpi = u.int_in_range(0..=2)?;
        let mut tids = Vec::new();
        for _ in 0..u.int_in_range(0..=3)? {
            let nexuses = tmirror::pr_nexuses();
            let tid = match u.int_in_range(0..=2)? {
                0 => Initiator::of(u.choose(&nexuses)?).transport_id(),
                1 => {
                    let name = *u.choose(&["iqn.a", "iqn.b", "iqn.d"])?;
                    Initiator::Device(name.into()).transport_id()
                }
                _ => u.arbitrary()?,
            };
            tmirror::check_transport_id(&tid);
            tids.extend_from_slice(&tid);
        }
        tmirror::prout_params(sa & 0x1f, key, sa_key, flags, rtpi, &tids)
    };
    let len = match u.int_in_range(0..=3)? {
        0 => 24,
        1 => data.len() as u32,
        2 => data.len() as u32 + 4,
        _ => u.arbitrary()?,
    };
    let mut cdb = tmirror::prout_cdb(sa, scope_type, len);
    if u.ratio(1, 16)? {
        cdb.truncate(u.int_in_range(0..=9)?);
    }
    Ok(tmirror::PrOp {
        nexus,
        cdb,
        data,
        can_persist: u.arbitrary()?,
    })
}
