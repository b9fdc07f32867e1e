//! qemu-img (QEMU's iSCSI block driver, built on libiscsi) against the real `mosaic`
//! binary: a 64 MiB random image goes into a volume over `iscsi://` and comes back
//! out byte-identical; again with header digests (CRC32C only, so a target that does
//! not agree fails the login); and on a file-backed volume with 4096-byte blocks.
//!
//! libiscsi has no data digests: tests/tests/digests.rs checks those with our own
//! initiator.

use std::path::Path;
use std::time::Duration;

use mosaic_tests::pattern;
use mosaic_tests::server::{Mosaic, Volume};
use mosaic_tests::tools::{self, QemuImg};

const IMAGE_LEN: usize = 64 << 20;
/// One 64 MiB convert over loopback takes well under a second against tgt; a debug
/// build of the target is slower. This bounds a hang, not the speed.
const CONVERT_LIMIT: Duration = Duration::from_secs(240);

/// The qemu `--image-opts` string for `volume` on `server`, raw format over iscsi.
fn image_opts(server: &Mosaic, volume: &str, header_digest: Option<&str>) -> String {
    let mut s = format!(
        "driver=raw,file.driver=iscsi,file.transport=tcp,file.portal={},file.target={},file.lun={}",
        server.portal(),
        server.iqn(volume),
        server.lun()
    );
    if let Some(d) = header_digest {
        s.push_str(&format!(",file.header-digest={d}"));
    }
    s
}

fn convert(q: &QemuImg, what: &str, args: &[&str]) {
    let out = tools::run(q.command().arg("convert").args(args), CONVERT_LIMIT);
    assert!(
        out.success(),
        "{what}: qemu-img convert {} failed (exit {:?}, timed out: {}) after {:.1}s\n{}",
        args.join(" "),
        out.status,
        out.timed_out,
        out.elapsed.as_secs_f64(),
        out.tail(30)
    );
    eprintln!("{what}: {:.2}s", out.elapsed.as_secs_f64());
}

fn assert_same_prefix(src: &Path, back: &Path) {
    let a = std::fs::read(src).expect("read source image");
    let b = std::fs::read(back).expect("read image read back");
    assert!(
        b.len() >= a.len(),
        "read back {} bytes, wrote {}",
        b.len(),
        a.len()
    );
    if let Some(diff) = pattern::first_difference(&a, &b[..a.len()]) {
        panic!("the image read back differs from the one written: {diff}");
    }
}

/// Writes a random image into `volume` and reads it back, with or without header
/// digests, and compares.
fn round_trip(test: &str, volume: Volume, header_digest: Option<&str>, seed: u64) {
    let Some(q) = tools::require_qemu_img(test) else {
        return;
    };
    let name = volume.name.clone();
    let mut server = Mosaic::start(&[volume]);
    let src = server.scratch().join("src.img");
    let back = server.scratch().join("back.img");
    std::fs::write(&src, pattern::bytes(seed, IMAGE_LEN)).expect("write source image");
    let src_s = src.display().to_string();
    let back_s = back.display().to_string();

    let info = tools::run(
        q.command()
            .args(["info", "--output=json"])
            .arg(server.url(&name)),
        Duration::from_secs(60),
    );
    assert!(info.success(), "qemu-img info failed\n{}", info.both());
    eprintln!("{test}: qemu-img info: {}", info.stdout.replace('\n', " "));

    match header_digest {
        None => {
            let url = server.url(&name);
            convert(&q, "write", &["-n", "-f", "raw", "-O", "raw", &src_s, &url]);
            convert(&q, "read", &["-f", "raw", "-O", "raw", &url, &back_s]);
        }
        Some(_) => {
            let opts = image_opts(&server, &name, header_digest);
            let target_opts = opts.trim_start_matches("driver=raw,").replace("file.", "");
            // --target-image-opts takes the protocol driver's options (no format layer).
            convert(
                &q,
                "write with header digests",
                &[
                    "-n",
                    "-f",
                    "raw",
                    "--target-image-opts",
                    &src_s,
                    &target_opts,
                ],
            );
            convert(
                &q,
                "read with header digests",
                &["-O", "raw", "--image-opts", &opts, &back_s],
            );
        }
    }
    server.assert_alive("after qemu-img convert");
    assert_same_prefix(&src, &back);
}

#[test]
fn convert_64mib_in_and_out_byte_identical() {
    round_trip(
        "convert_64mib_in_and_out_byte_identical",
        Volume::memory("vol", "64M"),
        None,
        1,
    );
}

#[test]
fn convert_64mib_with_header_digest_crc32c() {
    round_trip(
        "convert_64mib_with_header_digest_crc32c",
        Volume::memory("vol", "64M"),
        Some("crc32c"),
        2,
    );
}

#[test]
fn convert_64mib_file_backed_4096_byte_blocks() {
    round_trip(
        "convert_64mib_file_backed_4096_byte_blocks",
        Volume::file("vol4k", "64M").block(4096),
        None,
        3,
    );
}

/// `qemu-img info` sees the volume's size.
#[test]
fn info_reports_volume_size() {
    let test = "info_reports_volume_size";
    let Some(q) = tools::require_qemu_img(test) else {
        return;
    };
    let server = Mosaic::start(&[Volume::memory("sized", "96M")]);
    let out = tools::run(
        q.command()
            .args(["info", "--output=json"])
            .arg(server.url("sized")),
        Duration::from_secs(60),
    );
    assert!(out.success(), "qemu-img info failed\n{}", out.both());
    if std::env::var_os("MOSAIC_TEST_TARGET").is_none() {
        assert!(
            out.stdout
                .contains(&format!("\"virtual-size\": {}", 96u64 << 20)),
            "qemu-img info does not report 96 MiB:\n{}",
            out.stdout
        );
    }
}
