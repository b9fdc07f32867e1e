//! The lab cluster in short-cut mode: a node that receives a read of a page another
//! node owns hands the task's connection state to the owner, which builds the final
//! Data-In and SCSI Response PDUs; the receiving node writes them out unchanged.
//!
//! - qemu-img (a real initiator, many reads in flight on one connection) reads back
//!   through node 2 exactly what it wrote through node 1, while node 2 short-cuts;
//! - our initiator with CRC32C header and data digests reads single blocks, runs
//!   inside a page, whole pages and runs across a page boundary through node 3;
//! - `mosaic io-mode forward` switches the running cluster back: reads are then
//!   forwarded, and no more short-cuts are counted.

use mosaic_tests::initiator::{self, LoginOptions, Session};
use mosaic_tests::lab::{samples, Lab, LabOptions};
use mosaic_tests::tools;

const BLOCK: usize = 512;
const PAGE: usize = 1 << 20;
const VOLUME_BYTES: usize = 48 << 20;
const VOLUME: &str = "sc";
const IQN: &str = "iqn.2026-11.io.mosaic:sc";

/// Short-cut reads and forwarded pieces, summed over the nodes, from the admin
/// endpoint's Prometheus metrics.
fn counters(lab: &Lab) -> (u64, u64) {
    let samples = samples(&lab.metrics());
    let sum = |name: &str| -> u64 {
        samples
            .iter()
            .filter(|s| s.name == name)
            .map(|s| s.as_u64())
            .sum()
    };
    (
        sum("mosaic_node_shortcut_reads_total"),
        sum("mosaic_node_forwarded_pieces_total"),
    )
}

fn read(s: &mut Session, offset: usize, len: usize) -> Vec<u8> {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x88;
    cdb[2..10].copy_from_slice(&((offset / BLOCK) as u64).to_be_bytes());
    cdb[10..14].copy_from_slice(&((len / BLOCK) as u32).to_be_bytes());
    let r = s.command(&cdb, &[], len as u32).expect("READ(16)");
    assert_eq!(
        r.status,
        initiator::GOOD,
        "READ(16) of {len} bytes at {offset}: sense {:x?}",
        r.sense_key()
    );
    assert_eq!(r.residual_count, 0);
    r.data
}

#[test]
fn short_cut_reads_return_the_data_through_every_node() {
    let test = "short_cut_reads_return_the_data_through_every_node";
    if mosaic_tests::skip_against_external_target(test) {
        return;
    }
    let Some(qemu) = tools::require_qemu_img(test) else {
        return;
    };
    let mut lab = LabOptions::new()
        .page_size("1M")
        .args(&["--io-mode", "short-cut"])
        .volume(format!("name={VOLUME},size={VOLUME_BYTES},backing=file"))
        .start();
    assert!(lab.cli_ok(&["io-mode"]).contains("short-cut"));
    let url = |node: u32| lab.url(lab.portal(node, 1), VOLUME);

    let dir = tempfile::tempdir().expect("temp dir");
    let image = dir.path().join("random.img");
    let data = mosaic_tests::pattern::random_file(&image, 3, VOLUME_BYTES);
    let image = image.to_str().expect("utf-8").to_string();
    qemu.convert(
        "qemu-img convert into node 1",
        &["-n", "-m", "8", "-W", &image, &url(1)],
    );
    let (sc0, _) = counters(&lab);

    // qemu-img reads through node 2, 16 requests in flight on one connection.
    let back = dir.path().join("back.img");
    let back = back.to_str().expect("utf-8").to_string();
    qemu.convert(
        "qemu-img convert out of node 2",
        &["-m", "16", "-W", &url(2), &back],
    );
    let got = std::fs::read(&back).expect("read back");
    assert!(got == data, "qemu-img read back other bytes through node 2");
    let (sc1, _) = counters(&lab);
    assert!(
        sc1 > sc0,
        "node 2 owns a third of the pages at most: its reads of the others must short-cut \
         ({sc0} -> {sc1})"
    );

    // Our initiator, with digests, through node 3: sizes within and across pages.
    let mut opts = LoginOptions::new(IQN).digests(true, true);
    opts.isid = initiator::fresh_isid();
    let mut s = Session::login(lab.portal(3, 1), &opts).expect("login");
    s.lun = 0;
    let _ = s.test_unit_ready();
    for (offset, len) in [
        (0, BLOCK),
        (PAGE + 7 * BLOCK, 64 << 10),
        (5 * PAGE, PAGE),
        (7 * PAGE - 4096, 8192),
        (11 * PAGE + PAGE / 2, 256 << 10),
        (VOLUME_BYTES - BLOCK, BLOCK),
    ] {
        assert!(
            read(&mut s, offset, len) == data[offset..offset + len],
            "{len} bytes at {offset} differ through node 3"
        );
    }
    let (sc2, fw2) = counters(&lab);
    assert!(sc2 > sc1, "node 3's reads of other nodes' pages short-cut");

    // Back to forward at run time: reads are forwarded, none short-cut.
    assert!(lab.cli_ok(&["io-mode", "forward"]).contains("forward"));
    for page in 0..VOLUME_BYTES / PAGE {
        let offset = page * PAGE + 3 * BLOCK;
        assert!(read(&mut s, offset, 4096) == data[offset..offset + 4096]);
    }
    let (sc3, fw3) = counters(&lab);
    assert_eq!(sc3, sc2, "no short-cut after switching to forward");
    assert!(fw3 > fw2, "reads of other nodes' pages are forwarded");
    lab.mosaic.assert_alive("after the short-cut reads");
    drop(s);
    assert!(lab.mosaic.stop(), "lab stops on SIGTERM");
}
