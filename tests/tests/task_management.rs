//! Task management of the real `mosaic` binary with our own initiator: the RFC 7144
//! functions QUERY TASK, QUERY TASK SET, I_T NEXUS RESET and QUERY ASYNCHRONOUS
//! EVENT, as REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS announces them, and the I_T
//! NEXUS LOSS OCCURRED unit attention they and a lost session raise.

use bytes::Bytes;
use mosaic_proto::pdu::{tmf_function, tmf_response, Bhs, Pdu, ScsiCommand, RESERVED_TAG};
use mosaic_tests::initiator::{lun_field, Session, CHECK_CONDITION, GOOD};
use mosaic_tests::server::{Mosaic, Volume};

/// I_T NEXUS LOSS OCCURRED as (sense key, ASC, ASCQ): UNIT ATTENTION, 29h/07h.
const NEXUS_LOSS: (u8, u8, u8) = (0x06, 0x29, 0x07);

/// Sends a WRITE(10) of one block without its data and waits for the target's R2T:
/// the task then sits in the task set until its Data-Out comes. Returns its ITT.
fn write_waiting_for_data(s: &mut Session) -> u32 {
    let itt = s.next_itt();
    let mut cdb = [0u8; 16];
    cdb[..10].copy_from_slice(&[0x2a, 0, 0, 0, 0, 8, 0, 0, 1, 0]);
    let cmd = ScsiCommand {
        final_bit: true,
        write: true,
        attr: 1,
        lun: lun_field(s.lun),
        itt,
        expected_data_transfer_length: 512,
        cmd_sn: s.take_cmd_sn(),
        exp_stat_sn: s.exp_stat_sn(),
        cdb,
        ..Default::default()
    };
    s.send(&Pdu::new(Bhs::ScsiCommand(cmd), Bytes::new()))
        .expect("send WRITE(10)");
    loop {
        match s.recv().expect("R2T").bhs {
            Bhs::R2t(r) if r.itt == itt => return itt,
            Bhs::NopIn(_) => {}
            other => panic!("expected an R2T for the write, got {other:?}"),
        }
    }
}

#[test]
fn rfc_7144_task_management_functions() {
    let server = Mosaic::start(&[Volume::memory("vol", "8M")]);
    let mut s = mosaic_tests::login(&server, "vol", |o| o).expect("login");
    let mut other = mosaic_tests::login(&server, "vol", |o| o).expect("second login");
    s.command_good("TEST UNIT READY", &[0; 6], &[], 0)
        .expect("first command");
    other
        .command_good("TEST UNIT READY", &[0; 6], &[], 0)
        .expect("first command on the other nexus");

    // REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS: ATS ATSS CTSS LURS QTS TRS, then
    // QAES QTSS ITNRS.
    let rstmf = s
        .command_good(
            "REPORT SUPPORTED TMFS",
            &[0xa3, 0x0d, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0],
            &[],
            4,
        )
        .expect("REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS");
    assert_eq!(rstmf.data, vec![0xde, 0x07, 0, 0]);

    // Nothing in the task set yet.
    let r = s
        .task_mgmt(tmf_function::QUERY_TASK_SET, RESERVED_TAG)
        .expect("QUERY TASK SET");
    assert_eq!(r.response, tmf_response::COMPLETE, "empty task set");
    let r = s
        .task_mgmt(tmf_function::QUERY_ASYNC_EVENT, RESERVED_TAG)
        .expect("QUERY ASYNCHRONOUS EVENT");
    assert_eq!(r.response, tmf_response::COMPLETE, "no unit attention yet");
    assert_eq!(r.additional_response_information, [0; 3]);

    // A write waiting for its data is in the task set.
    let itt = write_waiting_for_data(&mut s);
    let r = s
        .task_mgmt(tmf_function::QUERY_TASK, itt)
        .expect("QUERY TASK");
    assert_eq!(r.response, tmf_response::FUNCTION_SUCCEEDED, "the write");
    let r = s
        .task_mgmt(tmf_function::QUERY_TASK, itt.wrapping_add(1000))
        .expect("QUERY TASK of an unknown tag");
    assert_eq!(r.response, tmf_response::COMPLETE, "no such task");
    let r = s
        .task_mgmt(tmf_function::QUERY_TASK_SET, RESERVED_TAG)
        .expect("QUERY TASK SET");
    assert_eq!(r.response, tmf_response::FUNCTION_SUCCEEDED, "one task");
    // The other nexus has no task of its own.
    let r = other
        .task_mgmt(tmf_function::QUERY_TASK_SET, RESERVED_TAG)
        .expect("QUERY TASK SET on the other nexus");
    assert_eq!(r.response, tmf_response::COMPLETE, "other nexus");

    // I_T NEXUS RESET ends the write and establishes I_T NEXUS LOSS OCCURRED for
    // this nexus only; the session stays up.
    let r = s
        .task_mgmt(tmf_function::I_T_NEXUS_RESET, RESERVED_TAG)
        .expect("I_T NEXUS RESET");
    assert_eq!(r.response, tmf_response::COMPLETE);
    let r = s
        .task_mgmt(tmf_function::QUERY_TASK, itt)
        .expect("QUERY TASK after the reset");
    assert_eq!(r.response, tmf_response::COMPLETE, "the write was aborted");
    let r = s
        .task_mgmt(tmf_function::QUERY_ASYNC_EVENT, RESERVED_TAG)
        .expect("QUERY ASYNCHRONOUS EVENT after the reset");
    assert_eq!(r.response, tmf_response::FUNCTION_SUCCEEDED);
    // UADE DEPTH 01b (one condition), sense key UNIT ATTENTION, 29h/07h.
    assert_eq!(r.additional_response_information, [0x16, 0x29, 0x07]);
    let r = other
        .task_mgmt(tmf_function::QUERY_ASYNC_EVENT, RESERVED_TAG)
        .expect("QUERY ASYNCHRONOUS EVENT on the other nexus");
    assert_eq!(r.response, tmf_response::COMPLETE, "other nexus untouched");

    // Querying did not clear it: the next command reports it, once.
    let tur = s.test_unit_ready().expect("TEST UNIT READY");
    assert_eq!(tur.status, CHECK_CONDITION);
    assert_eq!(tur.sense_key(), Some(NEXUS_LOSS));
    assert_eq!(s.test_unit_ready().expect("TEST UNIT READY").status, GOOD);
    let r = s
        .task_mgmt(tmf_function::QUERY_ASYNC_EVENT, RESERVED_TAG)
        .expect("QUERY ASYNCHRONOUS EVENT after the report");
    assert_eq!(r.response, tmf_response::COMPLETE);
    assert_eq!(
        other.test_unit_ready().expect("TEST UNIT READY").status,
        GOOD
    );

    // The session still works.
    s.write(0, &[0x5a; 512], 512)
        .expect("write after the reset");
    assert_eq!(s.read(0, 1, 512).expect("read"), vec![0x5a; 512]);
    s.logout().expect("logout");
    other.logout().expect("logout");
}

/// A session that ends (logout) or is reinstated is an I_T nexus loss: the same
/// initiator port (same InitiatorName and ISID) hears I_T NEXUS LOSS OCCURRED on
/// its next command after it logs in again; another ISID hears nothing.
#[test]
fn a_lost_nexus_hears_i_t_nexus_loss_when_it_returns() {
    use mosaic_tests::initiator::LoginOptions;
    let server = Mosaic::start(&[Volume::memory("vol", "8M")]);
    let mut s = mosaic_tests::login(&server, "vol", |o| o).expect("login");
    s.command_good("TEST UNIT READY", &[0; 6], &[], 0)
        .expect("first command");
    let isid = s.isid;
    s.logout().expect("logout");

    // Another ISID of the same initiator is another nexus: nothing pending.
    let mut other = mosaic_tests::login(&server, "vol", |o| o).expect("other login");
    assert_eq!(other.test_unit_ready().expect("TUR").status, GOOD);

    // The same port after a logout.
    let mut back = mosaic_tests::login(&server, "vol", |o| LoginOptions { isid, ..o })
        .expect("login with the same ISID");
    let tur = back.test_unit_ready().expect("TEST UNIT READY");
    assert_eq!(tur.status, CHECK_CONDITION);
    assert_eq!(tur.sense_key(), Some(NEXUS_LOSS));
    assert_eq!(back.test_unit_ready().expect("TUR").status, GOOD);

    // The same port reinstating its live session (RFC 7143 §6.3.5).
    let mut again = mosaic_tests::login(&server, "vol", |o| LoginOptions { isid, ..o })
        .expect("reinstating login");
    let tur = again.test_unit_ready().expect("TEST UNIT READY");
    assert_eq!(tur.status, CHECK_CONDITION);
    assert_eq!(tur.sense_key(), Some(NEXUS_LOSS));
    assert_eq!(again.test_unit_ready().expect("TUR").status, GOOD);
    assert_eq!(other.test_unit_ready().expect("TUR").status, GOOD);
    again.logout().expect("logout");
    other.logout().expect("logout");
}
