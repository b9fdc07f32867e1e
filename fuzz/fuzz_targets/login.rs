//! Fuzz target `login`: sequences of Login Requests with arbitrary headers and text
//! through `mosaic_target::login::TargetLogin::handle` (odd first byte), or rounds of
//! keys straight into the target's `mosaic_proto::negotiate::Negotiator::respond`
//! (even first byte). The properties are `check_login` in target/tests/fuzz_mirror.rs
//! and `check_negotiator` in proto/tests/fuzz_mirror.rs (also run by CI).
#![no_main]

use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use mosaic_proto::negotiate::SessionType;
use mosaic_proto::pdu::LoginRequest;

#[allow(dead_code)]
#[path = "../../target/tests/fuzz_mirror.rs"]
mod tmirror;

use tmirror::mirror;

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});

fn run(u: &mut Unstructured) -> Result<()> {
    let mode: u8 = u.arbitrary()?;
    let limits = mirror::limits_from(u.arbitrary()?, u.int_in_range(0..=2)?, u.arbitrary()?);
    if mode & 1 == 1 {
        let setup = tmirror::LoginSetup {
            limits,
            discovery_chap: u.arbitrary()?,
        };
        let n = u.int_in_range(1..=6)?;
        let mut steps = Vec::with_capacity(n);
        for _ in 0..n {
            steps.push(login_input(u)?);
        }
        tmirror::check_login(&setup, &steps);
    } else {
        let session_type = if u.arbitrary()? {
            SessionType::Discovery
        } else {
            SessionType::Normal
        };
        let leading = u.arbitrary()?;
        let n = u.int_in_range(1..=5)?;
        let mut rounds = Vec::with_capacity(n);
        for _ in 0..n {
            rounds.push(mirror::NegotiationRound {
                stage: mirror::stage_from(u.arbitrary()?),
                keys: pairs(u)?,
                finish: u.arbitrary()?,
            });
        }
        mirror::check_negotiator(&limits, session_type, leading, &rounds);
    }
    Ok(())
}

fn pairs(u: &mut Unstructured) -> Result<Vec<(String, String)>> {
    let keys = mirror::key_names();
    let n = u.int_in_range(0..=8)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let k = if u.ratio(7, 8)? {
            u.choose(&keys)?.to_string()
        } else {
            u.arbitrary()?
        };
        let v = if u.ratio(3, 4)? {
            u.choose(mirror::VALUES)?.to_string()
        } else {
            u.arbitrary()?
        };
        out.push((k, v));
    }
    Ok(out)
}

fn login_input(u: &mut Unstructured) -> Result<tmirror::LoginInput> {
    let flags: u8 = u.arbitrary()?;
    let req = LoginRequest {
        transit: flags & 0x80 != 0,
        continue_bit: flags & 0x40 != 0,
        csg: (flags >> 2) & 3,
        nsg: flags & 3,
        version_max: 0,
        version_min: if flags & 0x20 != 0 { u.arbitrary()? } else { 0 },
        isid: if u.arbitrary()? {
            1
        } else {
            u.arbitrary::<u64>()? & 0xffff_ffff_ffff
        },
        tsih: if u.arbitrary()? { 0 } else { u.arbitrary()? },
        itt: u.arbitrary()?,
        cid: u.int_in_range(0..=1)?,
        cmd_sn: u.arbitrary()?,
        exp_stat_sn: u.arbitrary()?,
    };
    let mut data = Vec::new();
    match u.int_in_range(0..=3)? {
        0 => data = u.arbitrary()?,
        kind => {
            let mut p = Vec::new();
            if kind >= 2 {
                let initiator = if u.arbitrary()? {
                    tmirror::ALLOWED_INITIATOR.to_string()
                } else {
                    u.arbitrary()?
                };
                p.push(("InitiatorName".to_string(), initiator));
            }
            if kind == 3 {
                let target = *u.choose(&[
                    tmirror::OPEN_TARGET,
                    tmirror::CHAP_TARGET,
                    tmirror::ACL_TARGET,
                ])?;
                p.push(("TargetName".to_string(), target.to_string()));
            }
            p.extend(pairs(u)?);
            for (k, v) in p {
                data.extend_from_slice(k.as_bytes());
                data.push(b'=');
                data.extend_from_slice(v.as_bytes());
                data.push(0);
            }
        }
    }
    Ok(tmirror::LoginInput {
        req,
        data,
        answer_chap: u.ratio(1, 4)?,
    })
}
