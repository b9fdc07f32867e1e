//! The nexus-aware layer over a logical unit: what SCSI state depends on *which*
//! I_T nexus sends a command (SAM-5 §4.6): unit attention conditions, persistent
//! reservations (SPC-4 §5.13), RESERVE/RELEASE (SPC-2), and what resets and nexus
//! loss do to them. The logical unit below it executes CDBs and knows nothing of
//! initiators.

use std::sync::Arc;

use crate::scsi::{LogicalUnit, ScsiRequest, ScsiResult};
use crate::store::StoreError;

/// One I_T nexus: an initiator port talking to a target port (SAM-5 §4.6, RFC 7143
/// §4.4.1 for the iSCSI names).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Nexus {
    /// iSCSI initiator port name: `<InitiatorName>,i,0x<ISID>`.
    pub initiator_port: Arc<str>,
    /// The initiator's iSCSI name alone (TransportIDs carry it, SPC-4 §7.6.4.6).
    pub initiator_name: Arc<str>,
    /// iSCSI target port name: `<TargetName>,t,0x<TPGT>`.
    pub target_port: Arc<str>,
    /// Relative target port identifier (VPD 0x83).
    pub relative_port: u16,
}

impl Nexus {
    /// The nexus of a session: initiator name and ISID, target name and portal group.
    pub fn new(
        initiator_name: &str,
        isid: u64,
        target_name: &str,
        tpgt: u16,
        relative_port: u16,
    ) -> Nexus {
        Nexus {
            initiator_port: format!("{initiator_name},i,0x{isid:012x}").into(),
            initiator_name: initiator_name.into(),
            target_port: format!("{target_name},t,0x{tpgt:04x}").into(),
            relative_port,
        }
    }
}

/// Which reset happened (SAM-5 §6.3, RFC 7143 §11.5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetKind {
    /// LOGICAL UNIT RESET.
    LogicalUnit,
    /// TARGET WARM RESET.
    TargetWarm,
    /// TARGET COLD RESET.
    TargetCold,
}

/// A logical unit shared by every session, with its nexus-dependent state.
#[derive(Debug)]
pub struct Device {
    lu: LogicalUnit,
}

impl Device {
    pub fn new(lu: LogicalUnit) -> Device {
        Device { lu }
    }

    /// The logical unit below.
    pub fn lu(&self) -> &LogicalUnit {
        &self.lu
    }

    /// Executes a command arriving on `nexus`.
    pub async fn execute(&self, _nexus: &Nexus, req: ScsiRequest) -> ScsiResult {
        self.lu.execute(req).await
    }

    /// A reset requested on `from` took effect.
    pub fn reset(&self, _kind: ResetKind, _from: &Nexus) {}

    /// The nexus is gone (logout, connection loss, session reinstatement).
    pub fn nexus_lost(&self, _nexus: &Nexus) {}

    /// Writes everything buffered to stable storage.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.lu.flush().await
    }
}
