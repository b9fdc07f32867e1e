//! Unit attention conditions (SAM-5 §5.14): queued per I_T nexus, reported on the
//! next command of that nexus, and cleared by reporting them.
//!
//! Pure logic: the [`crate::device::Device`] owns one [`UnitAttentions`] per logical
//! unit, raises conditions on resets, persistent reservation changes and parameter
//! changes, and asks [`UnitAttentions::on_command`] what to do before each command.
//!
//! Delivery rules (SAM-5 §5.14, SPC-4 §6.6, §6.33, §6.39), with UA_INTLCK_CTRL = 00b:
//! - INQUIRY runs normally; the condition is neither reported nor cleared.
//! - REPORT LUNS runs normally; only REPORTED LUNS DATA HAS CHANGED is cleared (it is
//!   what REPORT LUNS reports) and nothing is reported.
//! - REQUEST SENSE returns the oldest condition as sense data with GOOD and clears it.
//! - Any other command is not executed: CHECK CONDITION, UNIT ATTENTION with the
//!   oldest condition's ASC/ASCQ, which is then cleared.
//!
//! An I_T nexus is named here by its initiator port: every device is behind a single
//! target port, so the initiator port alone identifies the nexus. Port names are
//! compared in lower case (iSCSI names are case-insensitive, RFC 3722 §6).

use std::collections::{HashMap, VecDeque};

use mosaic_proto::scsi::opcode;
use mosaic_proto::scsi::Asc;

/// The most conditions queued for one I_T nexus. SAM-5 §5.14 lets a logical unit
/// queue several; identical conditions are merged (see [`UnitAttentions::raise`]),
/// and the distinct conditions we raise (four resets, three reservation events,
/// four parameter and state changes) number fewer than this, so the limit only
/// bounds memory against a storm of events nobody reads. When full, the new
/// condition is dropped: the initiator still learns that something happened from
/// the ones queued.
pub const MAX_PENDING_PER_NEXUS: usize = 16;

/// Additional sense codes of the unit attentions we raise (SPC-4 Annex D, Table D.1).
pub mod asc {
    use mosaic_proto::scsi::Asc;

    /// POWER ON OCCURRED: a TARGET COLD RESET, which RFC 7143 §11.5.1 equates with a
    /// power-on reset.
    pub const POWER_ON_OCCURRED: Asc = Asc::new(0x29, 0x01);
    /// SCSI BUS RESET OCCURRED: the SAM-5 "hard reset" that a TARGET WARM RESET is
    /// (SAM-5 §6.3.2, Table 39).
    pub const SCSI_BUS_RESET_OCCURRED: Asc = Asc::new(0x29, 0x02);
    /// BUS DEVICE RESET FUNCTION OCCURRED: a LOGICAL UNIT RESET (SAM-5 §6.3.3).
    pub const BUS_DEVICE_RESET_FUNCTION_OCCURRED: Asc = Asc::new(0x29, 0x03);
    /// I_T NEXUS LOSS OCCURRED (SAM-5 I_T nexus loss, SPC-4 Annex D): the nexus was lost
    /// (logout, dropped connection, session reinstatement) or reset by the I_T
    /// NEXUS RESET task management function.
    pub const I_T_NEXUS_LOSS_OCCURRED: Asc = Asc::new(0x29, 0x07);
    /// MODE PARAMETERS CHANGED (SPC-4 §6.11: another I_T nexus ran MODE SELECT).
    pub const MODE_PARAMETERS_CHANGED: Asc = Asc::new(0x2a, 0x01);
    /// RESERVATIONS PREEMPTED (SPC-4 §5.13, "Clearing": PERSISTENT RESERVE OUT CLEAR
    /// removed every registration and the reservation).
    pub const RESERVATIONS_PREEMPTED: Asc = Asc::new(0x2a, 0x03);
    /// RESERVATIONS RELEASED (SPC-4 §5.13, "Releasing": release of a registrants-only or
    /// all-registrants reservation, or a type change by PREEMPT).
    pub const RESERVATIONS_RELEASED: Asc = Asc::new(0x2a, 0x04);
    /// REGISTRATIONS PREEMPTED (SPC-4 §5.13, "Preempting": PREEMPT removed the registration).
    pub const REGISTRATIONS_PREEMPTED: Asc = Asc::new(0x2a, 0x05);
    /// ASYMMETRIC ACCESS STATE CHANGED (SPC-4 §5.16.2.4): the cluster's routing
    /// table changed for this volume (owners, nodes or their states); initiators
    /// check REPORT TARGET PORT GROUPS and fetch READ ROUTING TABLE again.
    pub const ASYMMETRIC_ACCESS_STATE_CHANGED: Asc = Asc::new(0x2a, 0x06);
    /// CAPACITY DATA HAS CHANGED (SBC-3 §4.6).
    pub const CAPACITY_DATA_HAS_CHANGED: Asc = Asc::new(0x2a, 0x09);
    /// REPORTED LUNS DATA HAS CHANGED (SPC-4 §6.33).
    pub const REPORTED_LUNS_DATA_HAS_CHANGED: Asc = Asc::new(0x3f, 0x0e);
}

/// What to do with a command given the unit attentions pending for its nexus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UaAction {
    /// Nothing pending, or a command that ignores unit attentions: execute it.
    Proceed,
    /// Do not execute: CHECK CONDITION, UNIT ATTENTION with this ASC/ASCQ.
    Report(Asc),
    /// REQUEST SENSE: return this condition as sense data with GOOD.
    AsSenseData(Asc),
}

/// The unit attention queues of one logical unit, one per I_T nexus.
#[derive(Debug, Default)]
pub struct UnitAttentions {
    /// Keyed by the lower-case initiator port; a nexus with nothing pending has no entry.
    queues: HashMap<String, VecDeque<Asc>>,
}

impl UnitAttentions {
    pub fn new() -> UnitAttentions {
        UnitAttentions::default()
    }

    /// Establishes `asc` for the nexus of `port`. A condition already pending is not
    /// queued twice; beyond [`MAX_PENDING_PER_NEXUS`] the new one is dropped.
    /// Returns whether it was queued.
    pub fn raise(&mut self, port: &str, asc: Asc) -> bool {
        let q = self.queues.entry(port.to_ascii_lowercase()).or_default();
        if q.contains(&asc) {
            return false;
        }
        if q.len() >= MAX_PENDING_PER_NEXUS {
            tracing::warn!(nexus = %port, asc = asc.asc, ascq = asc.ascq, "unit attention queue full; condition dropped");
            return false;
        }
        q.push_back(asc);
        true
    }

    /// Decides what a command with operation code `cdb[0]` does with the pending
    /// conditions of `port`, and clears what it reports (see the module docs).
    pub fn on_command(&mut self, port: &str, cdb: &[u8]) -> UaAction {
        // The common case, nothing pending anywhere, costs no allocation.
        if self.queues.is_empty() {
            return UaAction::Proceed;
        }
        let port = port.to_ascii_lowercase();
        let Some(q) = self.queues.get_mut(&port) else {
            return UaAction::Proceed;
        };
        let action = match cdb.first().copied() {
            Some(opcode::INQUIRY) => UaAction::Proceed,
            Some(opcode::REPORT_LUNS) => {
                q.retain(|a| *a != asc::REPORTED_LUNS_DATA_HAS_CHANGED);
                UaAction::Proceed
            }
            // DESC = 1 asks for descriptor format, which only the logical unit
            // answers (with an error): leave the condition pending.
            Some(opcode::REQUEST_SENSE) if cdb.get(1).is_some_and(|b| b & 0x01 != 0) => {
                UaAction::Proceed
            }
            Some(opcode::REQUEST_SENSE) => match q.pop_front() {
                Some(a) => UaAction::AsSenseData(a),
                None => UaAction::Proceed,
            },
            _ => match q.pop_front() {
                Some(a) => UaAction::Report(a),
                None => UaAction::Proceed,
            },
        };
        if q.is_empty() {
            self.queues.remove(&port);
        }
        action
    }

    /// The SAM-5 I_T nexus loss for `port`: I_T NEXUS LOSS OCCURRED goes
    /// first (a 29h condition outranks the others, SAM-5 §5.14), the pending
    /// conditions `keep` accepts stay behind it, the rest are forgotten.
    pub fn nexus_lost(&mut self, port: &str, keep: impl Fn(&Asc) -> bool) {
        let q = self.queues.entry(port.to_ascii_lowercase()).or_default();
        q.retain(|a| keep(a) && *a != asc::I_T_NEXUS_LOSS_OCCURRED);
        q.truncate(MAX_PENDING_PER_NEXUS - 1);
        q.push_front(asc::I_T_NEXUS_LOSS_OCCURRED);
    }

    /// Forgets every condition of `port`.
    pub fn drop_nexus(&mut self, port: &str) {
        self.queues.remove(&port.to_ascii_lowercase());
    }

    /// The conditions pending for `port`, oldest first.
    pub fn pending(&self, port: &str) -> Vec<Asc> {
        self.queues
            .get(&port.to_ascii_lowercase())
            .map(|q| q.iter().copied().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(s: &str) -> String {
        s.to_string()
    }

    const TUR: [u8; 6] = [0; 6];
    const INQUIRY: [u8; 6] = [opcode::INQUIRY, 0, 0, 0, 36, 0];
    const REQUEST_SENSE: [u8; 6] = [opcode::REQUEST_SENSE, 0, 0, 0, 18, 0];

    #[test]
    fn reported_once_oldest_first_then_proceed() {
        let mut ua = UnitAttentions::new();
        let p = port("i,i,0x1");
        ua.raise(&p, asc::BUS_DEVICE_RESET_FUNCTION_OCCURRED);
        ua.raise(&p, asc::RESERVATIONS_RELEASED);
        assert_eq!(
            ua.on_command(&p, &TUR),
            UaAction::Report(asc::BUS_DEVICE_RESET_FUNCTION_OCCURRED)
        );
        assert_eq!(
            ua.on_command(&p, &TUR),
            UaAction::Report(asc::RESERVATIONS_RELEASED)
        );
        assert_eq!(ua.on_command(&p, &TUR), UaAction::Proceed);
    }

    #[test]
    fn inquiry_neither_reports_nor_clears() {
        let mut ua = UnitAttentions::new();
        let p = port("a");
        ua.raise(&p, asc::SCSI_BUS_RESET_OCCURRED);
        assert_eq!(ua.on_command(&p, &INQUIRY), UaAction::Proceed);
        assert_eq!(ua.pending(&p), vec![asc::SCSI_BUS_RESET_OCCURRED]);
    }

    #[test]
    fn report_luns_clears_only_luns_changed() {
        let mut ua = UnitAttentions::new();
        let p = port("a");
        ua.raise(&p, asc::REPORTED_LUNS_DATA_HAS_CHANGED);
        ua.raise(&p, asc::CAPACITY_DATA_HAS_CHANGED);
        let report_luns = [opcode::REPORT_LUNS, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0];
        assert_eq!(ua.on_command(&p, &report_luns), UaAction::Proceed);
        assert_eq!(ua.pending(&p), vec![asc::CAPACITY_DATA_HAS_CHANGED]);
    }

    #[test]
    fn request_sense_returns_condition_as_data_and_clears_it() {
        let mut ua = UnitAttentions::new();
        let p = port("a");
        ua.raise(&p, asc::POWER_ON_OCCURRED);
        assert_eq!(
            ua.on_command(&p, &REQUEST_SENSE),
            UaAction::AsSenseData(asc::POWER_ON_OCCURRED)
        );
        assert_eq!(ua.on_command(&p, &REQUEST_SENSE), UaAction::Proceed);
        assert!(ua.pending(&p).is_empty());
    }

    #[test]
    fn request_sense_in_descriptor_format_leaves_condition() {
        let mut ua = UnitAttentions::new();
        let p = port("a");
        ua.raise(&p, asc::POWER_ON_OCCURRED);
        let desc = [opcode::REQUEST_SENSE, 1, 0, 0, 18, 0];
        assert_eq!(ua.on_command(&p, &desc), UaAction::Proceed);
        assert_eq!(ua.pending(&p).len(), 1);
    }

    #[test]
    fn queues_are_per_nexus() {
        let mut ua = UnitAttentions::new();
        let (a, b) = (port("a"), port("b"));
        ua.raise(&a, asc::RESERVATIONS_PREEMPTED);
        assert_eq!(ua.on_command(&b, &TUR), UaAction::Proceed);
        assert_eq!(
            ua.on_command(&a, &TUR),
            UaAction::Report(asc::RESERVATIONS_PREEMPTED)
        );
    }

    #[test]
    fn duplicates_merge_and_queue_is_bounded() {
        let mut ua = UnitAttentions::new();
        let p = port("a");
        assert!(ua.raise(&p, asc::MODE_PARAMETERS_CHANGED));
        assert!(!ua.raise(&p, asc::MODE_PARAMETERS_CHANGED));
        for i in 0..(MAX_PENDING_PER_NEXUS as u8 + 4) {
            ua.raise(&p, Asc::new(0x80, i));
        }
        assert_eq!(ua.pending(&p).len(), MAX_PENDING_PER_NEXUS);
        assert_eq!(ua.pending(&p)[0], asc::MODE_PARAMETERS_CHANGED);
    }

    #[test]
    fn port_names_compare_case_insensitively() {
        let mut ua = UnitAttentions::new();
        ua.raise("IQN.A,i,0x1", asc::POWER_ON_OCCURRED);
        assert_eq!(
            ua.on_command("iqn.a,i,0x1", &TUR),
            UaAction::Report(asc::POWER_ON_OCCURRED)
        );
    }

    #[test]
    fn nexus_loss_goes_first_and_keeps_only_what_is_asked() {
        let mut ua = UnitAttentions::new();
        let p = port("a");
        ua.raise(&p, asc::MODE_PARAMETERS_CHANGED);
        ua.raise(&p, asc::REGISTRATIONS_PREEMPTED);
        ua.nexus_lost(&p, |a| *a == asc::REGISTRATIONS_PREEMPTED);
        assert_eq!(
            ua.pending(&p),
            vec![asc::I_T_NEXUS_LOSS_OCCURRED, asc::REGISTRATIONS_PREEMPTED]
        );
        // A second loss does not queue it twice.
        ua.nexus_lost(&p, |_| true);
        assert_eq!(ua.pending(&p).len(), 2);
        assert_eq!(
            ua.on_command(&p, &TUR),
            UaAction::Report(asc::I_T_NEXUS_LOSS_OCCURRED)
        );
    }

    #[test]
    fn drop_nexus_forgets_conditions() {
        let mut ua = UnitAttentions::new();
        let p = port("a");
        ua.raise(&p, asc::POWER_ON_OCCURRED);
        ua.drop_nexus(&p);
        assert_eq!(ua.on_command(&p, &TUR), UaAction::Proceed);
    }
}
