//! READ ROUTING TABLE (vendor C5h, docs/wire-formats.md) against the lab cluster
//! (`mosaic lab`), with our blocking initiator:
//!
//! - through every node, the table fetched in pieces decodes (checksum and all) and
//!   equals what `mosaic routing show` prints: epoch, every page's owner, pages per
//!   node; its node list carries every node's portals; REPORT TARGET PORT GROUPS
//!   names the node owning most pages active/optimized, the others
//!   active/non-optimized;
//! - a change that does not touch the volume (another volume created) leaves its
//!   nexuses alone, yet a fresh fetch carries the new epoch;
//! - a change that does (the volume resized) gives every nexus, on every node, the
//!   unit attention ASYMMETRIC ACCESS STATE CHANGED (2Ah/06h), and a fresh fetch
//!   carries the new epoch and geometry;
//! - pages moved to another node (`mosaic routing move`): the same unit attention,
//!   and a fresh fetch shows the new owners;
//! - libiscsi's `SCSI.Inquiry` and `SCSI.ReportSupportedOpcodes` pass against a lab
//!   node (the vendor command in the list breaks nothing).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use mosaic_proto::scsi::vendor::ReadRoutingTableCdb;
use mosaic_routing::wire::{Assembler, Progress, WireTable};
use mosaic_routing::NodeId;
use mosaic_tests::cunit::{self, Verdict};
use mosaic_tests::initiator::{LoginOptions, Session, GOOD};
use mosaic_tests::lab::{Lab, LabOptions, Routing, NICS, NODES};
use mosaic_tests::tools;

const IQN: &str = "iqn.2026-11.io.mosaic:lv";
/// 256 MiB in 1 MiB pages: 256 pages, a page map of many runs.
const VOLUME_BYTES: u64 = 256 << 20;
const RESIZED_BYTES: u64 = 320 << 20;
const PAGE_BYTES: u64 = 1 << 20;
const BLOCK: u64 = 512;
/// Piece size of the paged fetch: small, so the table takes many commands.
const PIECE: u32 = 64;
/// How long the unit attention may take to be established after the change is
/// answered (the admin endpoint answers once every node followed the table; the
/// devices follow it in their own tasks, a moment later at most).
const UA_DEADLINE: Duration = Duration::from_secs(10);
/// ASYMMETRIC ACCESS STATE CHANGED (ASC, ASCQ), a unit attention.
const ASYMMETRIC_ACCESS_STATE_CHANGED: (u8, u8) = (0x2a, 0x06);

fn start_lab() -> Lab {
    LabOptions::new()
        .page_size(PAGE_BYTES)
        .volume(format!("name=lv,size={VOLUME_BYTES},backing=memory"))
        .start()
}

fn routing_show(lab: &Lab) -> Routing {
    lab.routing("lv").1
}

fn login(lab: &Lab, node: u32) -> Session {
    let opts = LoginOptions::new(IQN);
    let mut s = Session::login(lab.portal(node, 1), &opts)
        .unwrap_or_else(|e| panic!("login at node {node}: {e}"));
    s.lun = 0;
    s
}

/// The node with the most primaries, the lowest id on a tie.
fn preferred(shown: &Routing) -> u32 {
    let mut best = (0u32, 0u64);
    for n in &shown.nodes {
        if n.primary > best.1 {
            best = (n.node, n.primary);
        }
    }
    best.0
}

/// The whole table through READ ROUTING TABLE in pieces of `piece` bytes; the
/// number of commands it took and the bytes they returned.
fn fetch(s: &mut Session, piece: u32) -> (WireTable, usize, usize) {
    let mut asm = Assembler::new();
    let mut offset = 0u64;
    let mut bytes = 0;
    for n in 1..=1_000_000usize {
        let cdb = ReadRoutingTableCdb {
            offset,
            alloc_len: piece,
        }
        .encode();
        let r = s.command(&cdb, &[], piece).expect("READ ROUTING TABLE");
        assert_eq!(
            r.status,
            GOOD,
            "READ ROUTING TABLE at {offset}: sense {:x?}",
            r.sense_key()
        );
        assert!(r.data.len() <= piece as usize);
        bytes += r.data.len();
        match asm.push(offset, &r.data).expect("a valid piece") {
            Progress::Complete(t) => return (*t, n, bytes),
            Progress::NeedMore { offset: next, .. } => offset = next,
        }
    }
    panic!("the table never completed");
}

/// Owner id of every page of `t`.
fn owners(t: &WireTable) -> Vec<u32> {
    t.owners
        .iter()
        .map(|&i| t.nodes[usize::from(i)].id.0)
        .collect()
}

/// The fetched table says what `routing show` says.
fn assert_matches(t: &WireTable, shown: &Routing, blocks: u64, node: u32) {
    assert_eq!(t.epoch.0, shown.epoch, "node {node}: epoch");
    assert_eq!(t.name, "lv");
    assert_eq!(t.blocks, blocks, "node {node}: blocks");
    assert_eq!(u64::from(t.block_size), BLOCK);
    assert_eq!(u64::from(t.page_blocks), PAGE_BYTES / BLOCK);
    assert_eq!(owners(t), shown.primaries, "node {node}: page owners");
    let mut per_node = BTreeMap::new();
    for o in owners(t) {
        *per_node.entry(o).or_insert(0u64) += 1;
    }
    for n in &shown.nodes {
        assert_eq!(
            per_node.get(&n.node).copied().unwrap_or(0),
            n.primary,
            "node {}'s pages",
            n.node
        );
    }
}

/// REPORT TARGET PORT GROUPS: (state byte, group id, relative port) per group.
fn port_groups(s: &mut Session) -> Vec<(u8, u16, u16)> {
    let cdb = [0xa3, 0x0a, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0];
    let r = s
        .command_good("REPORT TARGET PORT GROUPS", &cdb, &[], 1024)
        .expect("RTPG");
    let len = u32::from_be_bytes(r.data[0..4].try_into().unwrap()) as usize;
    assert_eq!(len + 4, r.data.len());
    r.data[4..]
        .chunks(12)
        .map(|g| {
            assert_eq!(g[7], 1, "one port per group");
            (
                g[0],
                u16::from_be_bytes([g[2], g[3]]),
                u16::from_be_bytes([g[10], g[11]]),
            )
        })
        .collect()
}

/// TEST UNIT READY until GOOD: the unit attentions reported on the way, in order.
/// Waits (bounded) for the nexus's ASYMMETRIC ACCESS STATE CHANGED and checks it
/// came once.
fn hears_the_change_once(test: &str, s: &mut Session, node: u32) {
    let start = Instant::now();
    let mut seen = Vec::new();
    while !seen.contains(&ASYMMETRIC_ACCESS_STATE_CHANGED) {
        assert!(
            start.elapsed() < UA_DEADLINE,
            "node {node}: no ASYMMETRIC ACCESS STATE CHANGED within {UA_DEADLINE:?} (saw {seen:x?})"
        );
        seen.extend(s.drain_unit_attentions());
        if seen.is_empty() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    eprintln!("{test}: node {node}: {seen:x?} after {:?}", start.elapsed());
    assert_eq!(
        seen.iter()
            .filter(|x| **x == ASYMMETRIC_ACCESS_STATE_CHANGED)
            .count(),
        1,
        "node {node}: reported once"
    );
}

#[test]
fn initiators_fetch_the_routing_table_over_scsi_and_hear_of_changes() {
    let test = "initiators_fetch_the_routing_table_over_scsi_and_hear_of_changes";
    if mosaic_tests::skip_against_external_target(test) {
        return;
    }
    let mut lab = start_lab();
    let shown = routing_show(&lab);
    assert_eq!(shown.primaries.len() as u64, VOLUME_BYTES / PAGE_BYTES);
    assert_eq!(shown.nodes.len(), NODES as usize);
    assert!(
        shown.nodes.iter().all(|n| n.primary > 0),
        "pages on every node: {shown:?}"
    );
    let mut sessions: Vec<Session> = (1..=NODES).map(|n| login(&lab, n)).collect();

    // The table through every node, in small pieces and in one.
    for (i, s) in sessions.iter_mut().enumerate() {
        let node = i as u32 + 1;
        let (t, commands, bytes) = fetch(s, PIECE);
        assert_eq!(
            commands,
            bytes.div_ceil(PIECE as usize),
            "node {node}: {bytes} bytes in pieces of {PIECE}"
        );
        assert!(commands > 1, "node {node}: a table of {bytes} bytes");
        assert_matches(&t, &shown, VOLUME_BYTES / BLOCK, node);
        let (whole, one, whole_bytes) = fetch(s, 1 << 20);
        assert_eq!((one, whole_bytes), (1, bytes));
        assert_eq!(whole, t, "node {node}: one piece or many, the same table");
        // Every node with its NICs' portals.
        let ids: Vec<NodeId> = t.nodes.iter().map(|n| n.id).collect();
        assert_eq!(ids, (1..=NODES).map(NodeId).collect::<Vec<_>>());
        for n in &t.nodes {
            let portals: Vec<SocketAddr> = n.nics.iter().flat_map(|c| c.portals.clone()).collect();
            let want: Vec<SocketAddr> = (1..=NICS).map(|j| lab.portal(n.id.0, j)).collect();
            assert_eq!(portals, want, "node {}'s portals", n.id.0);
        }
        // ALUA: the node owning most pages is preferred, whichever node answers.
        let groups = port_groups(s);
        assert_eq!(groups.len(), NODES as usize);
        for (state, group, port) in groups {
            assert_eq!(group, port);
            let want = if u32::from(group) == preferred(&shown) {
                0x80
            } else {
                0x01
            };
            assert_eq!(state, want, "node {node}: group {group}'s state");
        }
    }

    // Another volume: a new epoch that does not concern lv.
    lab.cli_ok(&[
        "volume",
        "create",
        "lv2",
        "--size",
        "64M",
        "--backing",
        "memory",
    ]);
    let after_create = routing_show(&lab);
    assert!(after_create.epoch > shown.epoch);
    assert_eq!(after_create.primaries, shown.primaries);
    for (i, s) in sessions.iter_mut().enumerate() {
        let node = i as u32 + 1;
        assert_eq!(
            s.drain_unit_attentions(),
            vec![],
            "node {node}: lv did not change"
        );
        let (t, _, _) = fetch(s, 4096);
        assert_matches(&t, &after_create, VOLUME_BYTES / BLOCK, node);
    }

    // lv resized: every nexus of lv, on every node, hears of it on its next
    // command, and a fresh fetch carries the new epoch.
    lab.cli_ok(&[
        "volume",
        "resize",
        "lv",
        "--size",
        &RESIZED_BYTES.to_string(),
    ]);
    let resized = routing_show(&lab);
    assert!(resized.epoch > after_create.epoch);
    assert_eq!(
        resized.primaries.len() as u64,
        RESIZED_BYTES / PAGE_BYTES,
        "{resized:?}"
    );
    for (i, s) in sessions.iter_mut().enumerate() {
        let node = i as u32 + 1;
        hears_the_change_once(test, s, node);
        let (t, _, _) = fetch(s, PIECE);
        assert_matches(&t, &resized, RESIZED_BYTES / BLOCK, node);
    }

    // Pages moved: the same unit attention, and a fresh fetch shows the new owners.
    let to = if resized.primaries[0] == 3 { 2 } else { 3 };
    lab.cli_ok(&[
        "routing",
        "move",
        "lv",
        "--pages",
        "0-9",
        "--to",
        &to.to_string(),
    ]);
    let moved = routing_show(&lab);
    assert!(moved.epoch > resized.epoch);
    assert!(
        moved.primaries[..10].iter().all(|&p| p == to),
        "pages 0-9 on node {to}: {moved:?}"
    );
    for (i, s) in sessions.iter_mut().enumerate() {
        let node = i as u32 + 1;
        hears_the_change_once(test, s, node);
        let (t, _, _) = fetch(s, PIECE);
        assert_matches(&t, &moved, RESIZED_BYTES / BLOCK, node);
    }
    lab.mosaic.assert_alive("after the routing-table fetches");
    for s in sessions {
        s.logout().expect("logout");
    }

    // libiscsi against node 2: nothing regressed.
    let Some(cu) = tools::require(test, "iscsi-test-cu", "libiscsi-bin") else {
        return;
    };
    let url = lab.url(lab.portal(2, 1), "lv");
    let selection = "SCSI.Inquiry,SCSI.ReportSupportedOpcodes";
    let out = tools::run(
        Command::new(&cu).args(["-t", selection]).arg(&url),
        Duration::from_secs(300),
    );
    let report = cunit::parse(&out.stdout);
    eprintln!(
        "{test}: iscsi-test-cu -t {selection} {url}: {}",
        report.counts()
    );
    assert!(
        !report.with(Verdict::Passed).is_empty(),
        "no test passed:\n{}",
        out.both()
    );
    assert!(
        report.with(Verdict::Failed).is_empty() && report.with(Verdict::NoVerdict).is_empty(),
        "iscsi-test-cu failures:\n{}\n{}",
        report.describe_failures(),
        out.tail(40)
    );
    lab.mosaic.assert_alive("after iscsi-test-cu");
}
