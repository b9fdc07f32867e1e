//! CHAP authentication with MD5 (RFC 1994, as RFC 7143 §12.1.3 uses it), one-way and
//! mutual, as pure logic: the caller supplies the random challenge and identifier,
//! and feeds the CHAP_* keys the negotiator set aside.
//!
//! Target side: [`TargetChap`] answers `CHAP_A` with `CHAP_A`, `CHAP_I`, `CHAP_C`,
//! then checks `CHAP_N`/`CHAP_R`; with mutual CHAP it also answers the initiator's
//! `CHAP_I`/`CHAP_C` with its own `CHAP_N`/`CHAP_R`.

use md5::{Digest, Md5};
use thiserror::Error;

use crate::text::{format_hex, parse_binary, parse_number, KeyValue};

/// CHAP_A value of MD5 (RFC 7143 §12.1.3, IANA PPP authentication algorithms).
pub const ALGORITHM_MD5: u32 = 5;
/// Length of the challenges we send: RFC 7143 §12.1.3 asks for at least the
/// length of the hash (16 bytes for MD5).
pub const CHALLENGE_LEN: usize = 16;
/// Longest challenge we accept from an initiator (RFC 7143 §12.1.3 caps values at
/// 1024 bytes of binary).
const MAX_PEER_CHALLENGE: usize = 1024;

/// Credentials for one direction of CHAP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub secret: String,
}

/// What a target requires of an initiator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChapConfig {
    /// What the initiator must prove it knows.
    pub initiator: Credentials,
    /// What we prove to an initiator asking for mutual CHAP; without it, a request
    /// for mutual authentication fails.
    pub target: Option<Credentials>,
}

/// Why CHAP failed. Every variant ends the login with "authentication failure".
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum ChapError {
    /// The initiator offered no algorithm we implement.
    #[error("no supported CHAP_A in {0:?}")]
    NoAlgorithm(String),
    /// A CHAP key arrived out of order or was missing.
    #[error("CHAP protocol error: {0}")]
    Protocol(String),
    /// A value could not be decoded.
    #[error("malformed {key}: {value:?}")]
    Malformed { key: &'static str, value: String },
    /// The initiator named a user we do not know.
    #[error("unknown CHAP user {0:?}")]
    UnknownUser(String),
    /// The response does not match the secret.
    #[error("wrong CHAP response for user {0:?}")]
    WrongResponse(String),
    /// The initiator asked for mutual CHAP but we have no target secret.
    #[error("mutual CHAP requested but no target credentials are configured")]
    NoMutualCredentials,
    /// The initiator sent back our own challenge (a reflection attack).
    #[error("initiator reflected the target's challenge")]
    Reflected,
}

/// The CHAP response: MD5(identifier || secret || challenge) (RFC 1994 §4.1).
pub fn response(identifier: u8, secret: &[u8], challenge: &[u8]) -> [u8; 16] {
    let mut h = Md5::new();
    h.update([identifier]);
    h.update(secret);
    h.update(challenge);
    h.finalize().into()
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Waiting for CHAP_A.
    Start,
    /// Challenge sent; waiting for CHAP_N and CHAP_R.
    Challenged { id: u8, challenge: Vec<u8> },
    /// Authenticated.
    Done,
}

/// The target side of one CHAP exchange.
#[derive(Debug, Clone)]
pub struct TargetChap {
    config: ChapConfig,
    id: u8,
    challenge: Vec<u8>,
    state: State,
}

fn get<'a>(keys: &'a [KeyValue], k: &str) -> Option<&'a str> {
    keys.iter()
        .find(|(key, _)| key == k)
        .map(|(_, v)| v.as_str())
}

impl TargetChap {
    /// A new exchange; `id` and `challenge` must come from a secure random source.
    pub fn new(config: ChapConfig, id: u8, challenge: [u8; CHALLENGE_LEN]) -> TargetChap {
        TargetChap {
            config,
            id,
            challenge: challenge.to_vec(),
            state: State::Start,
        }
    }

    /// Whether the initiator has proven itself.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes the CHAP keys of one Login Request and returns the keys to answer.
    pub fn step(&mut self, keys: &[KeyValue]) -> Result<Vec<KeyValue>, ChapError> {
        match self.state.clone() {
            State::Start => {
                let Some(algs) = get(keys, "CHAP_A") else {
                    if keys.is_empty() {
                        return Ok(Vec::new());
                    }
                    return Err(ChapError::Protocol("expected CHAP_A first".into()));
                };
                let supported = algs
                    .split(',')
                    .any(|a| parse_number(a.trim()).ok() == Some(ALGORITHM_MD5 as u64));
                if !supported {
                    return Err(ChapError::NoAlgorithm(algs.to_string()));
                }
                self.state = State::Challenged {
                    id: self.id,
                    challenge: self.challenge.clone(),
                };
                Ok(vec![
                    ("CHAP_A".into(), ALGORITHM_MD5.to_string()),
                    ("CHAP_I".into(), self.id.to_string()),
                    ("CHAP_C".into(), format_hex(&self.challenge)),
                ])
            }
            State::Challenged { id, challenge } => {
                let name = get(keys, "CHAP_N")
                    .ok_or_else(|| ChapError::Protocol("CHAP_N missing".into()))?;
                let r = get(keys, "CHAP_R")
                    .ok_or_else(|| ChapError::Protocol("CHAP_R missing".into()))?;
                let r = parse_binary(r).map_err(|_| ChapError::Malformed {
                    key: "CHAP_R",
                    value: r.to_string(),
                })?;
                if name != self.config.initiator.user {
                    return Err(ChapError::UnknownUser(name.to_string()));
                }
                let want = response(id, self.config.initiator.secret.as_bytes(), &challenge);
                if !constant_time_eq(&r, &want) {
                    return Err(ChapError::WrongResponse(name.to_string()));
                }
                let mut out = Vec::new();
                match (get(keys, "CHAP_I"), get(keys, "CHAP_C")) {
                    (None, None) => {}
                    (Some(i), Some(c)) => {
                        let Some(target) = &self.config.target else {
                            return Err(ChapError::NoMutualCredentials);
                        };
                        let i = parse_number(i)
                            .ok()
                            .and_then(|v| u8::try_from(v).ok())
                            .ok_or_else(|| ChapError::Malformed {
                                key: "CHAP_I",
                                value: i.to_string(),
                            })?;
                        let c = parse_binary(c).map_err(|_| ChapError::Malformed {
                            key: "CHAP_C",
                            value: c.to_string(),
                        })?;
                        if c.is_empty() || c.len() > MAX_PEER_CHALLENGE {
                            return Err(ChapError::Malformed {
                                key: "CHAP_C",
                                value: format!("{} bytes", c.len()),
                            });
                        }
                        if c == challenge {
                            return Err(ChapError::Reflected);
                        }
                        let resp = response(i, target.secret.as_bytes(), &c);
                        out.push(("CHAP_N".into(), target.user.clone()));
                        out.push(("CHAP_R".into(), format_hex(&resp)));
                    }
                    _ => {
                        return Err(ChapError::Protocol(
                            "mutual CHAP needs both CHAP_I and CHAP_C".into(),
                        ))
                    }
                }
                self.state = State::Done;
                Ok(out)
            }
            State::Done => {
                if keys.is_empty() {
                    Ok(Vec::new())
                } else {
                    Err(ChapError::Protocol("CHAP keys after authentication".into()))
                }
            }
        }
    }
}

/// Compares without an early exit, so timing does not reveal how much matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(k: &str, v: &str) -> KeyValue {
        (k.to_string(), v.to_string())
    }

    fn config(mutual: bool) -> ChapConfig {
        ChapConfig {
            initiator: Credentials {
                user: "alice".into(),
                secret: "alice-secret-12".into(),
            },
            target: mutual.then(|| Credentials {
                user: "target".into(),
                secret: "target-secret-1".into(),
            }),
        }
    }

    /// RFC 1994-style check value computed independently: MD5(0x01 || "secret" || 0x00..0x0f).
    #[test]
    fn response_is_md5_of_id_secret_challenge() {
        let c: Vec<u8> = (0u8..16).collect();
        let mut h = Md5::new();
        h.update([1u8]);
        h.update(b"secret");
        h.update(&c);
        let want: [u8; 16] = h.finalize().into();
        assert_eq!(response(1, b"secret", &c), want);
    }

    fn answer_for(t: &mut TargetChap, secret: &str) -> (u8, Vec<u8>) {
        let a = t.step(&[kv("CHAP_A", "7,5")]).unwrap();
        assert_eq!(a[0], kv("CHAP_A", "5"));
        let id: u8 = a[1].1.parse().unwrap();
        let c = parse_binary(&a[2].1).unwrap();
        (id, response(id, secret.as_bytes(), &c).to_vec())
    }

    #[test]
    fn one_way_right_secret_passes() {
        let mut t = TargetChap::new(config(false), 7, [9; 16]);
        let (_, r) = answer_for(&mut t, "alice-secret-12");
        let out = t
            .step(&[kv("CHAP_N", "alice"), kv("CHAP_R", &format_hex(&r))])
            .unwrap();
        assert!(out.is_empty());
        assert!(t.is_done());
    }

    #[test]
    fn wrong_secret_fails() {
        let mut t = TargetChap::new(config(false), 7, [9; 16]);
        let (_, r) = answer_for(&mut t, "not-the-secret");
        assert_eq!(
            t.step(&[kv("CHAP_N", "alice"), kv("CHAP_R", &format_hex(&r))]),
            Err(ChapError::WrongResponse("alice".into()))
        );
        assert!(!t.is_done());
    }

    #[test]
    fn unknown_user_fails() {
        let mut t = TargetChap::new(config(false), 7, [9; 16]);
        let (_, r) = answer_for(&mut t, "alice-secret-12");
        assert!(matches!(
            t.step(&[kv("CHAP_N", "mallory"), kv("CHAP_R", &format_hex(&r))]),
            Err(ChapError::UnknownUser(_))
        ));
    }

    #[test]
    fn mutual_answers_with_target_credentials() {
        let mut t = TargetChap::new(config(true), 7, [9; 16]);
        let (_, r) = answer_for(&mut t, "alice-secret-12");
        let ic = [3u8; 16];
        let out = t
            .step(&[
                kv("CHAP_N", "alice"),
                kv("CHAP_R", &format_hex(&r)),
                kv("CHAP_I", "42"),
                kv("CHAP_C", &format_hex(&ic)),
            ])
            .unwrap();
        assert_eq!(out[0], kv("CHAP_N", "target"));
        assert_eq!(
            parse_binary(&out[1].1).unwrap(),
            response(42, b"target-secret-1", &ic).to_vec()
        );
    }

    #[test]
    fn mutual_without_target_credentials_fails() {
        let mut t = TargetChap::new(config(false), 7, [9; 16]);
        let (_, r) = answer_for(&mut t, "alice-secret-12");
        assert_eq!(
            t.step(&[
                kv("CHAP_N", "alice"),
                kv("CHAP_R", &format_hex(&r)),
                kv("CHAP_I", "1"),
                kv("CHAP_C", "0x0102030405060708")
            ]),
            Err(ChapError::NoMutualCredentials)
        );
    }

    #[test]
    fn reflected_challenge_fails() {
        let mut t = TargetChap::new(config(true), 7, [9; 16]);
        let (_, r) = answer_for(&mut t, "alice-secret-12");
        assert_eq!(
            t.step(&[
                kv("CHAP_N", "alice"),
                kv("CHAP_R", &format_hex(&r)),
                kv("CHAP_I", "7"),
                kv("CHAP_C", &format_hex(&[9; 16])),
            ]),
            Err(ChapError::Reflected)
        );
    }

    #[test]
    fn md5_not_offered_fails() {
        let mut t = TargetChap::new(config(false), 7, [9; 16]);
        assert!(matches!(
            t.step(&[kv("CHAP_A", "6,7")]),
            Err(ChapError::NoAlgorithm(_))
        ));
    }

    #[test]
    fn garbage_response_is_malformed() {
        let mut t = TargetChap::new(config(false), 7, [9; 16]);
        let _ = answer_for(&mut t, "x");
        assert!(matches!(
            t.step(&[kv("CHAP_N", "alice"), kv("CHAP_R", "0xzz")]),
            Err(ChapError::Malformed { .. })
        ));
    }
}
