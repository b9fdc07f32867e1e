//! The target side of the login phase (RFC 7143 §6.3, §11.12, §11.13), as pure
//! logic: each Login Request (with its text) goes in, the Login Response fields and
//! text come out, and when the initiator moves to full-feature phase the agreed
//! session parameters. No sockets: the connection drives it.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use mosaic_proto::chap::{ChapConfig, TargetChap, CHALLENGE_LEN};

use crate::cluster::portals::PortalLoad;
use mosaic_proto::negotiate::{
    NegotiationError, Negotiator, SessionParams, SessionType, Stage, TargetLimits,
};
use mosaic_proto::pdu::{login_status, stage, LoginRequest, LoginResponse, ISCSI_VERSION};
use mosaic_proto::text::{self, TextAccumulator};

/// Keys that name the parties; an initiator repeating one with the same value is
/// tolerated.
const IDENTITY_KEYS: &[&str] = &[
    "InitiatorName",
    "TargetName",
    "SessionType",
    "InitiatorAlias",
    "AuthMethod",
];

/// The most text a login may send across Login Requests with the C bit (bounds memory).
const MAX_LOGIN_TEXT: usize = 64 * 1024;

/// What the login needs to know about the target it runs in.
#[derive(Debug, Clone)]
pub struct LoginTarget {
    /// IQNs of the targets this portal exports.
    pub target_names: Vec<String>,
    /// Our target portal group tag (RFC 7143 §13.9).
    pub portal_group_tag: u16,
    /// What we offer and accept in negotiation.
    pub limits: TargetLimits,
    /// CHAP required for discovery sessions, if any.
    pub discovery_chap: Option<ChapConfig>,
    /// Per target IQN: CHAP and the initiators allowed in.
    pub access: HashMap<String, TargetAccess>,
    /// At a cluster's group portal: Normal logins are redirected to the portal this
    /// picks (RFC 7143 §11.13.5, "Target moved temporarily").
    pub redirect: Option<Arc<PortalLoad>>,
}

/// Who may log in to one target, and how they prove it.
#[derive(Debug, Clone, Default)]
pub struct TargetAccess {
    /// CHAP required for this target, if any.
    pub chap: Option<ChapConfig>,
    /// Initiator names allowed; empty allows every initiator.
    pub initiators: Vec<String>,
}

/// What a finished login agreed on.
#[derive(Debug, Clone)]
pub struct LoginResult {
    pub initiator_name: String,
    pub target_name: Option<String>,
    pub session_type: SessionType,
    pub isid: u64,
    /// The TSIH the initiator sent: 0 for a new session.
    pub tsih: u16,
    pub cid: u16,
    /// CmdSN of the leading login: the first ExpCmdSN.
    pub cmd_sn: u32,
    pub params: SessionParams,
}

/// What to do after a Login Request.
#[derive(Debug)]
pub enum LoginStep {
    /// Send the response and wait for the next request.
    Continue(LoginResponse, Bytes),
    /// Send the response (after filling in the TSIH) and enter full-feature phase.
    Complete(LoginResponse, Bytes, Box<LoginResult>),
    /// Send the response (a failure status) and close the connection.
    Fail(LoginResponse, String),
    /// Send the response (Target moved temporarily, with the TargetAddress to use)
    /// and close the connection; the initiator logs in there.
    Redirect(LoginResponse, Bytes),
}

/// The login state of one connection.
#[derive(Debug)]
pub struct TargetLogin {
    target: LoginTarget,
    first: Option<LoginRequest>,
    stage: u8,
    accum: TextAccumulator,
    negotiator: Option<Negotiator>,
    initiator_name: String,
    target_name: Option<String>,
    session_type: SessionType,
    sent_tpgt: bool,
    /// Identity keys already received, to recognise harmless repeats.
    identity_seen: HashMap<String, String>,
    /// The CHAP exchange, when this login must authenticate.
    chap: Option<TargetChap>,
    /// Random identifier and challenge for CHAP, supplied by the caller.
    chap_seed: (u8, [u8; CHALLENGE_LEN]),
}

impl TargetLogin {
    /// A login for `target`; `chap_seed` (identifier and challenge) must come from a
    /// secure random source and is used only if CHAP is required.
    pub fn new(target: LoginTarget, chap_seed: (u8, [u8; CHALLENGE_LEN])) -> TargetLogin {
        TargetLogin {
            identity_seen: HashMap::new(),
            chap: None,
            chap_seed,
            target,
            first: None,
            stage: stage::SECURITY_NEGOTIATION,
            accum: TextAccumulator::with_limit(MAX_LOGIN_TEXT),
            negotiator: None,
            initiator_name: String::new(),
            target_name: None,
            session_type: SessionType::Normal,
            sent_tpgt: false,
        }
    }

    fn response(&self, req: &LoginRequest) -> LoginResponse {
        LoginResponse {
            transit: false,
            continue_bit: false,
            csg: req.csg,
            nsg: req.nsg,
            version_max: ISCSI_VERSION,
            version_active: ISCSI_VERSION,
            isid: req.isid,
            tsih: req.tsih,
            itt: req.itt,
            ..Default::default()
        }
    }

    fn fail(&self, req: &LoginRequest, status: (u8, u8), why: String) -> LoginStep {
        let mut r = self.response(req);
        r.status_class = status.0;
        r.status_detail = status.1;
        LoginStep::Fail(r, why)
    }

    /// Handles one Login Request and its data segment.
    pub fn handle(&mut self, req: &LoginRequest, data: &[u8]) -> LoginStep {
        if req.version_min > ISCSI_VERSION {
            return self.fail(
                req,
                login_status::UNSUPPORTED_VERSION,
                format!("initiator needs iSCSI version >= {}", req.version_min),
            );
        }
        match &self.first {
            None => {
                if req.csg != stage::SECURITY_NEGOTIATION
                    && req.csg != stage::LOGIN_OPERATIONAL_NEGOTIATION
                {
                    return self.fail(
                        req,
                        login_status::INITIATOR_ERROR,
                        format!("login starts in invalid stage {}", req.csg),
                    );
                }
                self.stage = req.csg;
                self.first = Some(*req);
            }
            Some(first) => {
                if first.isid != req.isid || first.tsih != req.tsih || first.cid != req.cid {
                    return self.fail(
                        req,
                        login_status::INITIATOR_ERROR,
                        "ISID, TSIH or CID changed during login".into(),
                    );
                }
                if req.csg != self.stage {
                    return self.fail(
                        req,
                        login_status::INITIATOR_ERROR,
                        format!(
                            "login request in stage {} while in stage {}",
                            req.csg, self.stage
                        ),
                    );
                }
            }
        }
        if req.transit && req.continue_bit {
            return self.fail(
                req,
                login_status::INITIATOR_ERROR,
                "T and C bits both set".into(),
            );
        }
        let keys = match self.accum.push_pairs(data, req.continue_bit) {
            Ok(Some(k)) => k,
            Ok(None) => {
                // More text follows: acknowledge with an empty response (RFC 7143 §11.12.2).
                let r = self.response(req);
                return LoginStep::Continue(LoginResponse { nsg: 0, ..r }, Bytes::new());
            }
            Err(e) => return self.fail(req, login_status::INITIATOR_ERROR, e.to_string()),
        };
        if self.negotiator.is_none() {
            if let Err(step) = self.leading_keys(req, &keys) {
                return step;
            }
        }
        // Some initiators (libiscsi) repeat their identity keys in every
        // security-stage PDU; the same value again is harmless, so drop it rather
        // than fail the login on a repeated key.
        let keys: Vec<(String, String)> = keys
            .into_iter()
            .filter(|(k, v)| {
                let repeat = IDENTITY_KEYS.contains(&k.as_str())
                    && self.identity_seen.get(k).is_some_and(|old| old == v);
                self.identity_seen.insert(k.clone(), v.clone());
                !repeat
            })
            .collect();
        let negotiator = self.negotiator.as_mut().expect("set by leading_keys");
        negotiator.set_stage(stage_of(self.stage));
        let mut answer = match negotiator.respond(&keys) {
            Ok(a) => a,
            Err(e) => {
                let status = match &e {
                    NegotiationError::NoAcceptableValue { key } if *key == "AuthMethod" => {
                        login_status::AUTHENTICATION_FAILURE
                    }
                    _ => login_status::INITIATOR_ERROR,
                };
                return self.fail(req, status, format!("negotiation: {e}"));
            }
        };
        answer.extend(negotiator.target_declarations());
        let auth_keys = negotiator.take_auth_keys();
        if let Some(chap) = self.chap.as_mut() {
            if negotiator.params().auth_method == "CHAP" {
                match chap.step(&auth_keys) {
                    Ok(out) => answer.extend(out),
                    Err(e) => {
                        return self.fail(
                            req,
                            login_status::AUTHENTICATION_FAILURE,
                            format!("initiator {}: {e}", self.initiator_name),
                        )
                    }
                }
            }
        }
        if self.session_type == SessionType::Normal && !self.sent_tpgt {
            // RFC 7143 §13.9: returned in the first Login Response of a Normal session.
            answer.push((
                "TargetPortalGroupTag".into(),
                self.target.portal_group_tag.to_string(),
            ));
            self.sent_tpgt = true;
        }
        let transit_to = if req.transit { Some(req.nsg) } else { None };
        let moves_on = matches!(transit_to, Some(n) if n > self.stage && n != 2);
        if let Some(n) = transit_to {
            if !moves_on {
                return self.fail(
                    req,
                    login_status::INITIATOR_ERROR,
                    format!("invalid stage transition {} -> {n}", self.stage),
                );
            }
        }
        // Until CHAP has succeeded we stay in the security stage: answering T=0 to
        // an initiator that asked to move on is how the target holds it there
        // (RFC 7143 §6.3), and skipping the stage altogether is refused.
        let authenticated = self.chap.as_ref().is_none_or(|c| c.is_done());
        let moves_on = if moves_on && !authenticated {
            if self.stage != stage::SECURITY_NEGOTIATION {
                return self.fail(
                    req,
                    login_status::AUTHENTICATION_FAILURE,
                    format!("initiator {} skipped authentication", self.initiator_name),
                );
            }
            false
        } else {
            moves_on
        };
        let mut resp = self.response(req);
        let body = match text::encode(&answer) {
            Ok(b) => b,
            Err(e) => return self.fail(req, login_status::TARGET_ERROR, e.to_string()),
        };
        if moves_on {
            resp.transit = true;
            resp.nsg = req.nsg;
            let negotiator = self.negotiator.as_mut().expect("set");
            if let Err(e) = negotiator.finish_stage() {
                return self.fail(req, login_status::INITIATOR_ERROR, e.to_string());
            }
            if req.nsg == stage::FULL_FEATURE_PHASE {
                let first = self.first.expect("set");
                let result = LoginResult {
                    initiator_name: self.initiator_name.clone(),
                    target_name: self.target_name.clone(),
                    session_type: self.session_type,
                    isid: first.isid,
                    tsih: first.tsih,
                    cid: first.cid,
                    cmd_sn: first.cmd_sn,
                    params: negotiator.params().clone(),
                };
                return LoginStep::Complete(resp, body, Box::new(result));
            }
            self.stage = req.nsg;
        } else {
            resp.nsg = 0;
        }
        LoginStep::Continue(resp, body)
    }

    /// Reads the keys only the leading Login Request carries (RFC 7143 §13.4, §13.5,
    /// §13.21) and sets up negotiation for the session type.
    fn leading_keys(
        &mut self,
        req: &LoginRequest,
        keys: &[(String, String)],
    ) -> Result<(), LoginStep> {
        let get = |k: &str| {
            keys.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        let Some(initiator) = get("InitiatorName") else {
            return Err(self.fail(
                req,
                login_status::MISSING_PARAMETER,
                "no InitiatorName in the leading login".into(),
            ));
        };
        self.initiator_name = initiator;
        self.session_type = match get("SessionType").as_deref() {
            None | Some("Normal") => SessionType::Normal,
            Some("Discovery") => SessionType::Discovery,
            Some(other) => {
                return Err(self.fail(
                    req,
                    login_status::SESSION_TYPE_NOT_SUPPORTED,
                    format!("SessionType={other}"),
                ))
            }
        };
        if self.session_type == SessionType::Normal {
            let Some(name) = get("TargetName") else {
                return Err(self.fail(
                    req,
                    login_status::MISSING_PARAMETER,
                    "no TargetName in a Normal session's leading login".into(),
                ));
            };
            if !self.target.target_names.iter().any(|t| t == &name) {
                return Err(self.fail(
                    req,
                    login_status::NOT_FOUND,
                    format!("no target named {name}"),
                ));
            }
            let access = self.target.access.get(&name).cloned().unwrap_or_default();
            if !access.initiators.is_empty()
                && !access.initiators.iter().any(|i| i == &self.initiator_name)
            {
                return Err(self.fail(
                    req,
                    login_status::AUTHORIZATION_FAILURE,
                    format!("initiator {} is not allowed to {name}", self.initiator_name),
                ));
            }
            self.chap = access.chap.clone().map(|c| self.new_chap(c));
            let group = get(crate::cluster::portals::MPIO_GROUP_KEY);
            let chosen = self.target.redirect.as_ref().and_then(|r| match &group {
                Some(g) => r.choose_for_group(g),
                None => r.choose(),
            });
            if let Some(address) = chosen {
                let mut r = self.response(req);
                r.status_class = login_status::TARGET_MOVED_TEMPORARILY.0;
                r.status_detail = login_status::TARGET_MOVED_TEMPORARILY.1;
                r.transit = false;
                let body = text::encode(&[("TargetAddress", address.as_str())]).unwrap_or_default();
                return Err(LoginStep::Redirect(r, body));
            }
            self.target_name = Some(name);
        } else {
            self.chap = self.target.discovery_chap.clone().map(|c| self.new_chap(c));
        }
        let mut limits = self.target.limits.clone();
        limits.auth_methods = if self.chap.is_some() {
            vec!["CHAP".to_string()]
        } else {
            vec!["None".to_string()]
        };
        let mut n = Negotiator::target(limits);
        n.set_session_type(self.session_type);
        n.set_leading(req.tsih == 0);
        self.negotiator = Some(n);
        Ok(())
    }
}

impl TargetLogin {
    fn new_chap(&self, config: ChapConfig) -> TargetChap {
        TargetChap::new(config, self.chap_seed.0, self.chap_seed.1)
    }
}

/// The negotiator's name for a login stage number.
fn stage_of(csg: u8) -> Stage {
    match csg {
        stage::SECURITY_NEGOTIATION => Stage::Security,
        stage::LOGIN_OPERATIONAL_NEGOTIATION => Stage::Operational,
        _ => Stage::FullFeature,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mosaic_proto::chap::{response, Credentials};
    use mosaic_proto::text::{format_hex, parse_binary};

    fn target() -> LoginTarget {
        LoginTarget {
            target_names: vec!["iqn.2026-11.io.mosaic:demo".into()],
            portal_group_tag: 1,
            limits: TargetLimits::default(),
            discovery_chap: None,
            access: HashMap::new(),
            redirect: None,
        }
    }

    fn seed() -> (u8, [u8; CHALLENGE_LEN]) {
        (3, [0x5a; CHALLENGE_LEN])
    }

    fn req(csg: u8, nsg: u8, transit: bool) -> LoginRequest {
        LoginRequest {
            transit,
            csg,
            nsg,
            isid: 0x23d000001,
            itt: 1,
            ..Default::default()
        }
    }

    fn kv(pairs: &[(&str, &str)]) -> Vec<u8> {
        let v: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        text::encode(&v).unwrap().to_vec()
    }

    fn answer(b: &Bytes) -> Vec<(String, String)> {
        text::parse(b).unwrap()
    }

    #[test]
    fn normal_login_security_then_operational() {
        let mut l = TargetLogin::new(target(), seed());
        let step = l.handle(
            &req(0, 1, true),
            &kv(&[
                ("InitiatorName", "iqn.x"),
                ("TargetName", "iqn.2026-11.io.mosaic:demo"),
                ("SessionType", "Normal"),
                ("AuthMethod", "None"),
            ]),
        );
        let LoginStep::Continue(r, body) = step else {
            panic!("{step:?}")
        };
        assert!(r.transit);
        assert_eq!(r.nsg, 1);
        let a = answer(&body);
        assert!(a.contains(&("AuthMethod".into(), "None".into())));
        assert!(a.contains(&("TargetPortalGroupTag".into(), "1".into())));
        let step = l.handle(
            &req(1, 3, true),
            &kv(&[
                ("HeaderDigest", "CRC32C,None"),
                ("MaxRecvDataSegmentLength", "65536"),
            ]),
        );
        let LoginStep::Complete(r, body, result) = step else {
            panic!("{step:?}")
        };
        assert!(r.transit);
        assert_eq!(r.nsg, 3);
        assert!(answer(&body).contains(&("HeaderDigest".into(), "CRC32C".into())));
        assert!(result.params.header_digest);
        assert_eq!(
            result.target_name.as_deref(),
            Some("iqn.2026-11.io.mosaic:demo")
        );
    }

    #[test]
    fn unknown_target_is_not_found() {
        let mut l = TargetLogin::new(target(), seed());
        let step = l.handle(
            &req(0, 1, true),
            &kv(&[("InitiatorName", "iqn.x"), ("TargetName", "iqn.nope")]),
        );
        let LoginStep::Fail(r, _) = step else {
            panic!("{step:?}")
        };
        assert_eq!((r.status_class, r.status_detail), login_status::NOT_FOUND);
    }

    #[test]
    fn missing_initiator_name_is_missing_parameter() {
        let mut l = TargetLogin::new(target(), seed());
        let step = l.handle(&req(0, 1, true), &kv(&[("SessionType", "Discovery")]));
        let LoginStep::Fail(r, _) = step else {
            panic!("{step:?}")
        };
        assert_eq!(
            (r.status_class, r.status_detail),
            login_status::MISSING_PARAMETER
        );
    }

    #[test]
    fn discovery_straight_to_full_feature() {
        let mut l = TargetLogin::new(target(), seed());
        let step = l.handle(
            &req(1, 3, true),
            &kv(&[("InitiatorName", "iqn.x"), ("SessionType", "Discovery")]),
        );
        let LoginStep::Complete(_, body, result) = step else {
            panic!("{step:?}")
        };
        assert_eq!(result.session_type, SessionType::Discovery);
        assert!(!answer(&body)
            .iter()
            .any(|(k, _)| k == "TargetPortalGroupTag"));
    }

    #[test]
    fn continued_text_is_joined() {
        let mut l = TargetLogin::new(target(), seed());
        let all = kv(&[("InitiatorName", "iqn.x"), ("SessionType", "Discovery")]);
        let mut r1 = req(1, 3, false);
        r1.continue_bit = true;
        let LoginStep::Continue(_, body) = l.handle(&r1, &all[..5]) else {
            panic!()
        };
        assert!(body.is_empty());
        assert!(matches!(
            l.handle(&req(1, 3, true), &all[5..]),
            LoginStep::Complete(..)
        ));
    }

    #[test]
    fn isid_change_mid_login_fails() {
        let mut l = TargetLogin::new(target(), seed());
        let _ = l.handle(
            &req(0, 1, false),
            &kv(&[("InitiatorName", "iqn.x"), ("SessionType", "Discovery")]),
        );
        let mut r = req(0, 1, true);
        r.isid = 99;
        assert!(matches!(l.handle(&r, &[]), LoginStep::Fail(..)));
    }

    fn chap_target(mutual: bool) -> LoginTarget {
        let mut t = target();
        t.access.insert(
            "iqn.2026-11.io.mosaic:demo".into(),
            TargetAccess {
                chap: Some(ChapConfig {
                    initiator: Credentials {
                        user: "u".into(),
                        secret: "initiator-secret".into(),
                    },
                    target: mutual.then(|| Credentials {
                        user: "t".into(),
                        secret: "target-secret-1".into(),
                    }),
                }),
                initiators: vec!["iqn.x".into()],
            },
        );
        t
    }

    fn chap_login(secret: &str, mutual: bool) -> LoginStep {
        let mut l = TargetLogin::new(chap_target(mutual), seed());
        let LoginStep::Continue(_, body) = l.handle(
            &req(0, 1, false),
            &kv(&[
                ("InitiatorName", "iqn.x"),
                ("TargetName", "iqn.2026-11.io.mosaic:demo"),
                ("AuthMethod", "CHAP,None"),
            ]),
        ) else {
            panic!()
        };
        assert!(answer(&body).contains(&("AuthMethod".into(), "CHAP".into())));
        let LoginStep::Continue(_, body) = l.handle(&req(0, 1, false), &kv(&[("CHAP_A", "5")]))
        else {
            panic!()
        };
        let a = answer(&body);
        let id: u8 = a
            .iter()
            .find(|(k, _)| k == "CHAP_I")
            .unwrap()
            .1
            .parse()
            .unwrap();
        let c = parse_binary(&a.iter().find(|(k, _)| k == "CHAP_C").unwrap().1).unwrap();
        let r = format_hex(&response(id, secret.as_bytes(), &c));
        let mut keys = vec![("CHAP_N", "u"), ("CHAP_R", r.as_str())];
        if mutual {
            keys.push(("CHAP_I", "9"));
            keys.push(("CHAP_C", "0x00112233445566778899aabbccddeeff"));
        }
        l.handle(&req(0, 1, true), &kv(&keys))
    }

    #[test]
    fn chap_right_secret_moves_on() {
        let LoginStep::Continue(r, _) = chap_login("initiator-secret", false) else {
            panic!()
        };
        assert!(r.transit);
    }

    #[test]
    fn chap_wrong_secret_is_authentication_failure() {
        let LoginStep::Fail(r, _) = chap_login("guess", false) else {
            panic!()
        };
        assert_eq!(
            (r.status_class, r.status_detail),
            login_status::AUTHENTICATION_FAILURE
        );
    }

    #[test]
    fn mutual_chap_answers_with_target_response() {
        let LoginStep::Continue(_, body) = chap_login("initiator-secret", true) else {
            panic!()
        };
        let a = answer(&body);
        assert!(a.contains(&("CHAP_N".into(), "t".into())));
        let r = parse_binary(&a.iter().find(|(k, _)| k == "CHAP_R").unwrap().1).unwrap();
        let c = parse_binary("0x00112233445566778899aabbccddeeff").unwrap();
        assert_eq!(r, response(9, b"target-secret-1", &c).to_vec());
    }

    #[test]
    fn chap_required_but_none_offered_fails() {
        let mut l = TargetLogin::new(chap_target(false), seed());
        let step = l.handle(
            &req(0, 1, true),
            &kv(&[
                ("InitiatorName", "iqn.x"),
                ("TargetName", "iqn.2026-11.io.mosaic:demo"),
                ("AuthMethod", "None"),
            ]),
        );
        let LoginStep::Fail(r, _) = step else {
            panic!("{step:?}")
        };
        assert_eq!(
            (r.status_class, r.status_detail),
            login_status::AUTHENTICATION_FAILURE
        );
    }

    #[test]
    fn skipping_security_with_chap_required_fails() {
        let mut l = TargetLogin::new(chap_target(false), seed());
        let step = l.handle(
            &req(1, 3, true),
            &kv(&[
                ("InitiatorName", "iqn.x"),
                ("TargetName", "iqn.2026-11.io.mosaic:demo"),
            ]),
        );
        let LoginStep::Fail(r, _) = step else {
            panic!("{step:?}")
        };
        assert_eq!(
            (r.status_class, r.status_detail),
            login_status::AUTHENTICATION_FAILURE
        );
    }

    #[test]
    fn initiator_not_in_acl_is_authorization_failure() {
        let mut l = TargetLogin::new(chap_target(false), seed());
        let step = l.handle(
            &req(0, 1, true),
            &kv(&[
                ("InitiatorName", "iqn.other"),
                ("TargetName", "iqn.2026-11.io.mosaic:demo"),
            ]),
        );
        let LoginStep::Fail(r, _) = step else {
            panic!("{step:?}")
        };
        assert_eq!(
            (r.status_class, r.status_detail),
            login_status::AUTHORIZATION_FAILURE
        );
    }

    #[test]
    fn group_portal_redirects_normal_logins_but_serves_discovery() {
        let mut t = target();
        t.redirect = Some(Arc::new(PortalLoad::new([(
            "127.0.2.1:3260".parse().unwrap(),
            2,
            2,
        )])));
        let mut l = TargetLogin::new(t.clone(), seed());
        let step = l.handle(
            &req(0, 1, true),
            &kv(&[
                ("InitiatorName", "iqn.x"),
                ("TargetName", "iqn.2026-11.io.mosaic:demo"),
            ]),
        );
        let LoginStep::Redirect(r, body) = step else {
            panic!("{step:?}")
        };
        assert_eq!(
            (r.status_class, r.status_detail),
            login_status::TARGET_MOVED_TEMPORARILY
        );
        assert_eq!(
            answer(&body),
            vec![("TargetAddress".into(), "127.0.2.1:3260,2".into())]
        );
        let mut d = TargetLogin::new(t, seed());
        let step = d.handle(
            &req(1, 3, true),
            &kv(&[("InitiatorName", "iqn.x"), ("SessionType", "Discovery")]),
        );
        assert!(matches!(step, LoginStep::Complete(..)), "{step:?}");
    }

    #[test]
    fn backwards_transition_fails() {
        let mut l = TargetLogin::new(target(), seed());
        let step = l.handle(
            &req(1, 0, true),
            &kv(&[("InitiatorName", "iqn.x"), ("SessionType", "Discovery")]),
        );
        assert!(matches!(step, LoginStep::Fail(..)));
    }
}
