//! Scenario tests of the logical unit against a memory store (and a failing file store).

use super::*;
use mosaic_proto::scsi::opcode::{mode_page, service_action_in_16, vpd};
use mosaic_proto::scsi::sense::key;

pub(super) const BS: u32 = 512;
pub(super) const BLOCKS: u64 = 2048;

pub(super) fn cfg(block_size: u32) -> LuConfig {
    LuConfig {
        name: "vol-a".into(),
        block_size,
        serial: "MOSAIC-0001".into(),
        naa_id: LuConfig::naa_id_for("vol-a"),
        vendor: "MOSAIC".into(),
        product: "Mosaic volume".into(),
        revision: "0.1".into(),
        target_name: "iqn.2024-01.org.mosaic:vol-a".into(),
        relative_port: 1,
        tpg: 1,
    }
}

pub(super) fn lu_with(blocks: u64, block_size: u32) -> LogicalUnit {
    let store = BackingStore::memory(blocks * u64::from(block_size));
    LogicalUnit::new(cfg(block_size), store).unwrap()
}

pub(super) fn lu() -> LogicalUnit {
    lu_with(BLOCKS, BS)
}

pub(super) fn lu_opts(opts: LuOptions) -> LogicalUnit {
    let store = BackingStore::memory(BLOCKS * u64::from(BS));
    LogicalUnit::with_options(cfg(BS), store, opts).unwrap()
}

pub(super) fn thick_lu() -> LogicalUnit {
    lu_opts(LuOptions {
        thin: false,
        read_only: false,
    })
}

pub(super) async fn exec_lun(
    lu: &LogicalUnit,
    lun: u64,
    cdb: &[u8],
    data_out: &[u8],
    edtl: u32,
) -> ScsiResult {
    lu.execute(ScsiRequest {
        cdb: Bytes::copy_from_slice(cdb),
        lun,
        data_out: Bytes::copy_from_slice(data_out),
        expected_len: edtl,
    })
    .await
}

pub(super) async fn exec(lu: &LogicalUnit, cdb: &[u8]) -> ScsiResult {
    exec_lun(lu, 0, cdb, &[], 0).await
}

pub(super) async fn exec_out(lu: &LogicalUnit, cdb: &[u8], data_out: &[u8]) -> ScsiResult {
    exec_lun(lu, 0, cdb, data_out, data_out.len() as u32).await
}

pub(super) fn assert_good(r: &ScsiResult) {
    assert_eq!(r.status, status::GOOD, "sense: {:?}", r.sense_data());
    assert!(r.sense.is_empty());
}

pub(super) fn assert_check(r: &ScsiResult, sense_key: u8, asc: Asc) {
    assert_eq!(r.status, status::CHECK_CONDITION);
    let s = r.sense_data().expect("fixed-format sense");
    assert_eq!((s.key, s.asc), (sense_key, asc));
}

pub(super) fn read10(lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = 0x28;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

pub(super) fn write10(lba: u32, blocks: u16, fua: bool) -> [u8; 10] {
    let mut c = read10(lba, blocks);
    c[0] = 0x2a;
    if fua {
        c[1] = 0x08;
    }
    c
}

pub(super) fn rw16(opcode: u8, lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = opcode;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

pub(super) fn rw12(opcode: u8, lba: u32, blocks: u32) -> [u8; 12] {
    let mut c = [0u8; 12];
    c[0] = opcode;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[6..10].copy_from_slice(&blocks.to_be_bytes());
    c
}

pub(super) fn inquiry(evpd: bool, page: u8, alloc: u16) -> [u8; 6] {
    let a = alloc.to_be_bytes();
    [0x12, evpd as u8, page, a[0], a[1], 0]
}

pub(super) fn mode_sense6(dbd: bool, pc: u8, page: u8, subpage: u8, alloc: u8) -> [u8; 6] {
    [
        0x1a,
        if dbd { 0x08 } else { 0 },
        (pc << 6) | page,
        subpage,
        alloc,
        0,
    ]
}

pub(super) fn mode_sense10(llbaa: bool, dbd: bool, page: u8, alloc: u16) -> [u8; 10] {
    let a = alloc.to_be_bytes();
    let flags = if llbaa { 0x10 } else { 0 } | if dbd { 0x08 } else { 0 };
    [0x5a, flags, page, 0, 0, 0, 0, a[0], a[1], 0]
}

pub(super) fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn logical_unit_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<LogicalUnit>();
}

#[test]
fn new_rejects_unsupported_block_size() {
    let e = LogicalUnit::new(cfg(1024), BackingStore::memory(1 << 20)).unwrap_err();
    assert_eq!(e, ScsiError::BlockSize(1024));
}

#[test]
fn new_rejects_store_not_multiple_of_block_size() {
    let e = LogicalUnit::new(cfg(4096), BackingStore::memory(4096 * 3 + 512)).unwrap_err();
    assert!(matches!(e, ScsiError::Unaligned { .. }));
}

#[test]
fn new_rejects_empty_store() {
    let e = LogicalUnit::new(cfg(512), BackingStore::memory(0)).unwrap_err();
    assert_eq!(e, ScsiError::Empty);
}

#[test]
fn geometry_follows_store_and_block_size() {
    let lu = lu_with(100, 4096);
    assert_eq!((lu.block_size(), lu.num_blocks()), (4096, 100));
}

#[test]
fn naa_id_is_stable_and_distinct_per_name() {
    assert_eq!(LuConfig::naa_id_for("a"), LuConfig::naa_id_for("a"));
    assert_ne!(LuConfig::naa_id_for("a"), LuConfig::naa_id_for("b"));
    // FNV-1a 64 of "a", a published test vector.
    assert_eq!(LuConfig::naa_id_for("a"), 0xaf63_dc4c_8601_ec8c);
}

#[tokio::test]
async fn test_unit_ready_is_good() {
    let r = exec(&lu(), &[0; 6]).await;
    assert_good(&r);
    assert_eq!(r.transfer_len, 0);
}

#[tokio::test]
async fn write_then_read_same_bytes() {
    let lu = lu();
    let data = pattern(3 * BS as usize, 1);
    let w = exec_out(&lu, &write10(10, 3, false), &data).await;
    assert_good(&w);
    assert_eq!(w.transfer_len, 3 * BS);
    let r = exec(&lu, &read10(10, 3)).await;
    assert_good(&r);
    assert_eq!(r.data_in, data);
    assert_eq!(r.transfer_len, 3 * BS);
}

#[tokio::test]
async fn unwritten_blocks_read_as_zeros() {
    let r = exec(&lu(), &read10(5, 2)).await;
    assert_good(&r);
    assert_eq!(r.data_in, vec![0u8; 2 * BS as usize]);
}

#[tokio::test]
async fn write_and_read_in_all_cdb_sizes_agree() {
    let lu = lu_with(BLOCKS, 4096);
    let bs = 4096usize;
    let data = pattern(2 * bs, 7);
    assert_good(&exec_out(&lu, &[0x0a, 0, 0, 4, 2, 0], &data).await);
    assert_eq!(exec(&lu, &[0x08, 0, 0, 4, 2, 0]).await.data_in, data);
    assert_eq!(exec(&lu, &read10(4, 2)).await.data_in, data);
    assert_eq!(exec(&lu, &rw12(0xa8, 4, 2)).await.data_in, data);
    assert_eq!(exec(&lu, &rw16(0x88, 4, 2)).await.data_in, data);
    let data2 = pattern(bs, 9);
    assert_good(&exec_out(&lu, &rw12(0xaa, 100, 1), &data2).await);
    assert_good(&exec_out(&lu, &rw16(0x8a, 101, 1), &data2).await);
    let both = exec(&lu, &read10(100, 2)).await.data_in;
    assert_eq!(&both[..bs], &data2[..]);
    assert_eq!(&both[bs..], &data2[..]);
}

#[tokio::test]
async fn read6_zero_length_reads_256_blocks() {
    let r = exec(&lu(), &[0x08, 0, 0, 0, 0, 0]).await;
    assert_good(&r);
    assert_eq!(r.data_in.len(), 256 * BS as usize);
    assert_eq!(r.transfer_len, 256 * BS);
}

#[tokio::test]
async fn read10_zero_length_is_good_with_no_data() {
    let r = exec(&lu(), &read10(0, 0)).await;
    assert_good(&r);
    assert!(r.data_in.is_empty());
    assert_eq!(r.transfer_len, 0);
    // At the very end of the unit is still in range.
    assert_good(&exec(&lu(), &read10(BLOCKS as u32, 0)).await);
}

#[tokio::test]
async fn zero_length_past_the_end_is_lba_out_of_range() {
    let lu = lu();
    let r = exec(&lu, &read10(BLOCKS as u32 + 1, 0)).await;
    assert_check(&r, key::ILLEGAL_REQUEST, Asc::LBA_OUT_OF_RANGE);
    let r = exec_out(&lu, &rw16(0x8a, u64::MAX, 0), &[]).await;
    assert_check(&r, key::ILLEGAL_REQUEST, Asc::LBA_OUT_OF_RANGE);
}

#[tokio::test]
async fn read_beyond_capacity_is_lba_out_of_range() {
    let lu = lu();
    let last = BLOCKS as u32 - 1;
    assert_good(&exec(&lu, &read10(last, 1)).await);
    for cdb in [read10(last, 2), read10(u32::MAX, 1), read10(1 << 31, 1)] {
        let r = exec(&lu, &cdb).await;
        assert_check(&r, key::ILLEGAL_REQUEST, Asc::LBA_OUT_OF_RANGE);
        assert!(r.data_in.is_empty());
    }
    // LBA + length wrapping past 2^64 is out of range, not a panic.
    let r = exec(&lu, &rw16(0x88, u64::MAX, 2)).await;
    assert_check(&r, key::ILLEGAL_REQUEST, Asc::LBA_OUT_OF_RANGE);
    let r = exec(&lu, &[0x08, 0x1f, 0xff, 0xff, 1, 0]).await;
    assert_check(&r, key::ILLEGAL_REQUEST, Asc::LBA_OUT_OF_RANGE);
}

#[tokio::test]
async fn write_beyond_capacity_is_lba_out_of_range_and_writes_nothing() {
    let lu = lu();
    let last = BLOCKS as u32 - 1;
    let data = pattern(2 * BS as usize, 3);
    let r = exec_out(&lu, &write10(last, 2, false), &data).await;
    assert_check(&r, key::ILLEGAL_REQUEST, Asc::LBA_OUT_OF_RANGE);
    assert_eq!(
        exec(&lu, &read10(last, 1)).await.data_in,
        vec![0u8; BS as usize]
    );
}

#[tokio::test]
async fn transfer_above_limit_is_invalid_field_pointing_at_length() {
    let lu = lu_with(1 << 20, 512);
    let blocks = (MAX_TRANSFER_BYTES / 512) as u32;
    assert_good(&exec(&lu, &rw16(0x88, 0, blocks)).await);
    let r = exec(&lu, &rw16(0x88, 0, blocks + 1)).await;
    assert_check(&r, key::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_CDB);
    assert_eq!(r.sense_data().unwrap().field_pointer.unwrap().byte, 10);
}

#[tokio::test]
async fn high_lba_on_a_huge_sparse_volume_works() {
    // 2^33 blocks of 512 bytes = 4 TiB, allocated only where written.
    let blocks = 1u64 << 33;
    let lu = lu_with(blocks, 512);
    let data = pattern(512, 5);
    assert_good(&exec_out(&lu, &rw16(0x8a, blocks - 1, 1), &data).await);
    assert_eq!(exec(&lu, &rw16(0x88, blocks - 1, 1)).await.data_in, data);
    let rc10 = exec(&lu, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]).await;
    assert_eq!(
        &rc10.data_in[..4],
        &[0xff; 4],
        "too big for READ CAPACITY(10)"
    );
}

#[tokio::test]
async fn rdprotect_and_wrprotect_are_invalid_field_in_cdb() {
    let lu = lu();
    for prot in 1u8..8 {
        let mut c = read10(0, 1);
        c[1] = prot << 5;
        assert_check(
            &exec(&lu, &c).await,
            key::ILLEGAL_REQUEST,
            Asc::INVALID_FIELD_IN_CDB,
        );
        let mut c = write10(0, 1, false);
        c[1] = prot << 5;
        let r = exec_out(&lu, &c, &[1u8; 512]).await;
        assert_check(&r, key::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_CDB);
    }
    assert_eq!(exec(&lu, &read10(0, 1)).await.data_in, vec![0u8; 512]);
}

#[tokio::test]
async fn dpo_and_fua_are_accepted() {
    let lu = lu();
    for flags in [0x08u8, 0x10, 0x18] {
        let mut c = read10(0, 1);
        c[1] = flags;
        assert_good(&exec(&lu, &c).await);
        let mut c = write10(0, 1, false);
        c[1] = flags;
        assert_good(&exec_out(&lu, &c, &[flags; 512]).await);
        assert_eq!(exec(&lu, &read10(0, 1)).await.data_in, vec![flags; 512]);
    }
}

#[tokio::test]
async fn read_data_in_is_the_full_transfer_whatever_edtl() {
    // libiscsi test_read10_residuals: the session truncates to EDTL and computes the
    // residual from transfer_len; the LU always produces the whole transfer.
    let lu = lu();
    for edtl in [0u32, 200, 512, 10_000] {
        let r = exec_lun(&lu, 0, &read10(0, 1), &[], edtl).await;
        assert_good(&r);
        assert_eq!(r.data_in.len(), 512);
        assert_eq!(r.transfer_len, 512);
    }
}

#[tokio::test]
async fn write_without_data_out_is_good_and_writes_nothing() {
    // libiscsi test_write10_residuals: WRITE10 of 1 block with EDTL 0 must be GOOD
    // (the session reports a residual overflow of one block).
    let lu = lu();
    assert_good(&exec_out(&lu, &write10(0, 1, false), &[0xaa; 512]).await);
    let r = exec_lun(&lu, 0, &write10(0, 1, false), &[], 0).await;
    assert_good(&r);
    assert_eq!(r.transfer_len, 512);
    assert_eq!(exec(&lu, &read10(0, 1)).await.data_in, vec![0xaa; 512]);
}

#[tokio::test]
async fn write_with_short_data_out_writes_only_whole_blocks_received() {
    // libiscsi: two blocks of 'a', then WRITE10 of two blocks of 'b' with EDTL of one
    // block: the first block becomes 'b', the second stays 'a'.
    let lu = lu();
    assert_good(&exec_out(&lu, &write10(0, 2, false), &[b'a'; 1024]).await);
    let r = exec_lun(&lu, 0, &write10(0, 2, false), &[b'b'; 512], 512).await;
    assert_good(&r);
    assert_eq!(
        r.transfer_len, 1024,
        "session reports 512 bytes of overflow"
    );
    let data = exec(&lu, &read10(0, 2)).await.data_in;
    assert_eq!(&data[..512], &[b'b'; 512][..]);
    assert_eq!(&data[512..], &[b'a'; 512][..]);
}

#[tokio::test]
async fn write_with_extra_data_out_writes_only_what_the_cdb_asks() {
    // libiscsi: WRITE10 of one block of 'b' with EDTL of two blocks leaves block 1 alone.
    let lu = lu();
    assert_good(&exec_out(&lu, &write10(0, 2, false), &[b'a'; 1024]).await);
    let r = exec_lun(&lu, 0, &write10(0, 1, false), &[b'b'; 1024], 1024).await;
    assert_good(&r);
    assert_eq!(
        r.transfer_len, 512,
        "session reports 512 bytes of underflow"
    );
    let data = exec(&lu, &read10(0, 2)).await.data_in;
    assert_eq!(&data[..512], &[b'b'; 512][..]);
    assert_eq!(&data[512..], &[b'a'; 512][..]);
}

#[tokio::test]
async fn write_with_partial_block_is_refused_and_writes_nothing() {
    // libiscsi accepts GOOD or INVALID FIELD IN INFORMATION UNIT for EDTL 200; we refuse
    // rather than write a torn block.
    let lu = lu();
    let r = exec_lun(&lu, 0, &write10(0, 1, false), &[7u8; 200], 200).await;
    assert_check(
        &r,
        key::ILLEGAL_REQUEST,
        Asc::INVALID_FIELD_IN_INFORMATION_UNIT,
    );
    assert_eq!(r.transfer_len, 512, "session still reports the overflow");
    assert_eq!(exec(&lu, &read10(0, 1)).await.data_in, vec![0u8; 512]);
}

#[tokio::test]
async fn write_with_fua_is_durable_and_good() {
    let dir = tempfile::tempdir().unwrap();
    let store = BackingStore::open_file(&dir.path().join("vol"), BLOCKS * 512).unwrap();
    let lu = LogicalUnit::new(cfg(512), store).unwrap();
    let data = pattern(1024, 11);
    assert_good(&exec_out(&lu, &write10(3, 2, true), &data).await);
    assert_eq!(exec(&lu, &read10(3, 2)).await.data_in, data);
    let on_disk = std::fs::read(dir.path().join("vol")).unwrap();
    assert_eq!(&on_disk[3 * 512..5 * 512], &data[..]);
}

#[tokio::test]
async fn store_write_failure_is_medium_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vol");
    std::fs::write(&path, vec![0u8; 64 * 1024]).unwrap();
    let ro = std::fs::File::open(&path).unwrap();
    let store = BackingStore::File(crate::store::FileStore::from_file(ro, 64 * 1024));
    let lu = LogicalUnit::new(cfg(512), store).unwrap();
    let r = exec_out(&lu, &write10(4, 1, false), &[1u8; 512]).await;
    assert_check(&r, key::MEDIUM_ERROR, Asc::WRITE_ERROR);
    assert_eq!(r.sense_data().unwrap().information, Some(4));
}

#[tokio::test]
async fn store_read_failure_is_medium_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vol");
    std::fs::write(&path, vec![0u8; 64 * 1024]).unwrap();
    let wo = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    let store = BackingStore::File(crate::store::FileStore::from_file(wo, 64 * 1024));
    let lu = LogicalUnit::new(cfg(512), store).unwrap();
    let r = exec(&lu, &read10(7, 1)).await;
    assert_check(&r, key::MEDIUM_ERROR, Asc::UNRECOVERED_READ_ERROR);
    assert_eq!(r.sense_data().unwrap().information, Some(7));
}

#[tokio::test]
async fn synchronize_cache_is_good_within_range() {
    let lu = lu();
    assert_good(&exec(&lu, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0]).await);
    assert_good(&exec(&lu, &[0x35, 0x02, 0, 0, 0, 8, 0, 0, 8, 0]).await);
    assert_good(&exec(&lu, &rw16(0x91, 0, BLOCKS as u32)).await);
    let r = exec(&lu, &rw16(0x91, BLOCKS, 1)).await;
    assert_check(&r, key::ILLEGAL_REQUEST, Asc::LBA_OUT_OF_RANGE);
}

#[tokio::test]
async fn synchronize_cache_edge_cases() {
    let lu = lu();
    // Zero blocks from the last block: to the end, fine.
    assert_good(&exec(&lu, &rw16(0x91, BLOCKS - 1, 0)).await);
    // Zero blocks from one past the last block: that block does not exist.
    let r = exec(&lu, &rw16(0x91, BLOCKS, 0)).await;
    assert_check(&r, key::ILLEGAL_REQUEST, Asc::LBA_OUT_OF_RANGE);
    // A range that wraps the 64-bit LBA space.
    let r = exec(&lu, &rw16(0x91, u64::MAX, 2)).await;
    assert_check(&r, key::ILLEGAL_REQUEST, Asc::LBA_OUT_OF_RANGE);
    // SYNC_NV (obsolete) and IMMED are accepted.
    assert_good(&exec(&lu, &[0x35, 0x06, 0, 0, 0, 0, 0, 0, 1, 0]).await);
}

#[tokio::test]
async fn read_capacity10_reports_last_lba_and_block_size() {
    let r = exec(&lu(), &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]).await;
    assert_good(&r);
    assert_eq!(r.transfer_len, 8);
    assert_eq!(&r.data_in[..], &[0, 0, 0x07, 0xff, 0, 0, 0x02, 0x00]);
}

#[tokio::test]
async fn read_capacity16_reports_last_lba_and_no_protection() {
    let lu = lu_with(BLOCKS, 4096);
    let mut c = [0u8; 16];
    c[0] = 0x9e;
    c[1] = service_action_in_16::READ_CAPACITY_16;
    c[13] = 32;
    let r = exec(&lu, &c).await;
    assert_good(&r);
    assert_eq!(r.data_in.len(), 32);
    assert_eq!(&r.data_in[..8], &(BLOCKS - 1).to_be_bytes());
    assert_eq!(&r.data_in[8..12], &4096u32.to_be_bytes());
    assert_eq!(r.data_in[12], 0, "PROT_EN = 0");
    assert_eq!(r.data_in[13], 0, "LBPPBE 0 for 4 KiB blocks");
    assert_eq!(r.data_in[14] & 0xc0, 0xc0, "thin: LBPME = LBPRZ = 1");
}

#[tokio::test]
async fn read_capacity16_of_a_thick_volume_has_lbpme_0() {
    let mut c = [0u8; 16];
    c[0] = 0x9e;
    c[1] = service_action_in_16::READ_CAPACITY_16;
    c[13] = 32;
    let r = exec(&thick_lu(), &c).await;
    assert_good(&r);
    assert_eq!(r.data_in[14] & 0xc0, 0, "LBPME = LBPRZ = 0");
    assert_eq!(r.data_in[13], 3, "LBPPBE 3 for 512-byte blocks");
}

#[tokio::test]
async fn read_capacity16_small_allocation_lengths_are_good() {
    let lu = lu();
    for alloc in 0u8..16 {
        let mut c = [0u8; 16];
        c[0] = 0x9e;
        c[1] = service_action_in_16::READ_CAPACITY_16;
        c[13] = alloc;
        let r = exec(&lu, &c).await;
        assert_good(&r);
        assert_eq!(r.data_in.len(), usize::from(alloc));
    }
}

#[tokio::test]
async fn unsupported_service_action_is_invalid_field() {
    let mut c = [0u8; 16];
    c[0] = 0x9e;
    // 0x13 (REPORT REFERRALS) is not ours.
    c[1] = 0x13;
    let r = exec(&lu(), &c).await;
    assert_check(&r, key::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_CDB);
    assert_ne!(service_action_in_16::GET_LBA_STATUS, 0x13);
}

#[tokio::test]
async fn unknown_opcode_is_invalid_command_operation_code() {
    for opcode in [0x1d_u8, 0x5e, 0xc0, 0xff] {
        let mut c = [0u8; 16];
        c[0] = opcode;
        let r = exec_lun(&lu(), 0, &c, &[], 77).await;
        assert_check(
            &r,
            key::ILLEGAL_REQUEST,
            Asc::INVALID_COMMAND_OPERATION_CODE,
        );
        assert_eq!(
            r.transfer_len, 77,
            "no residual for a command we cannot size"
        );
    }
}

#[tokio::test]
async fn truncated_cdb_is_invalid_field_not_a_panic() {
    let r = exec(&lu(), &[0x88, 0, 0]).await;
    assert_check(&r, key::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_CDB);
    let r = exec(&lu(), &[]).await;
    assert_check(&r, key::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_CDB);
}

#[tokio::test]
async fn request_sense_returns_no_sense() {
    let r = exec(&lu(), &[0x03, 0, 0, 0, 252, 0]).await;
    assert_good(&r);
    assert_eq!(r.data_in.len(), 18);
    let s = Sense::parse_fixed(&r.data_in).unwrap();
    assert_eq!((s.key, s.asc), (key::NO_SENSE, Asc::NO_ADDITIONAL_SENSE));
    let r = exec(&lu(), &[0x03, 0, 0, 0, 8, 0]).await;
    assert_eq!(r.data_in.len(), 8);
}

#[tokio::test]
async fn request_sense_descriptor_format_is_invalid_field() {
    let r = exec(&lu(), &[0x03, 1, 0, 0, 252, 0]).await;
    assert_check(&r, key::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_CDB);
}

#[tokio::test]
async fn report_luns_lists_lun_zero() {
    let r = exec(&lu(), &[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]).await;
    assert_good(&r);
    assert_eq!(
        &r.data_in[..],
        &[0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    );
    assert_eq!(r.transfer_len, 16);
    let r = exec(&lu(), &[0xa0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0]).await;
    assert_eq!(&r.data_in[..], &[0u8; 8], "no well-known LUNs");
}

#[tokio::test]
async fn report_luns_allocation_below_16_is_invalid_field() {
    let r = exec(&lu(), &[0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 15, 0, 0]).await;
    assert_check(&r, key::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_CDB);
    assert_eq!(r.sense_data().unwrap().field_pointer.unwrap().byte, 6);
}

#[tokio::test]
async fn report_luns_unknown_select_report_is_invalid_field() {
    let r = exec(&lu(), &[0xa0, 0, 0x10, 0, 0, 0, 0, 0, 1, 0, 0, 0]).await;
    assert_check(&r, key::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_CDB);
}

#[tokio::test]
async fn report_luns_works_through_a_missing_lun() {
    let r = exec_lun(&lu(), 5, &[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[], 256).await;
    assert_good(&r);
    assert_eq!(r.data_in.len(), 16);
}

#[tokio::test]
async fn inquiry_to_missing_lun_has_qualifier_011b() {
    let r = exec_lun(&lu(), 3, &inquiry(false, 0, 96), &[], 96).await;
    assert_good(&r);
    assert_eq!(r.data_in[0], 0x7f);
    let r = exec_lun(&lu(), 3, &inquiry(true, 0x83, 255), &[], 255).await;
    assert_good(&r);
    assert_eq!(&r.data_in[..], &[0x7f, 0x83, 0, 0]);
}

#[tokio::test]
async fn other_commands_to_missing_lun_are_lu_not_supported() {
    let lu = lu();
    for cdb in [
        &[0u8; 6][..],
        &read10(0, 1)[..],
        &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0][..],
    ] {
        let r = exec_lun(&lu, 1, cdb, &[], 512).await;
        assert_check(&r, key::ILLEGAL_REQUEST, Asc::LOGICAL_UNIT_NOT_SUPPORTED);
    }
    let r = exec_lun(&lu, 1, &[0x03, 0, 0, 0, 18, 0], &[], 18).await;
    assert_good(&r);
    let s = Sense::parse_fixed(&r.data_in).unwrap();
    assert_eq!(s.asc, Asc::LOGICAL_UNIT_NOT_SUPPORTED);
}

#[tokio::test]
async fn inquiry_standard_claims_spc4_and_sbc3() {
    let r = exec(&lu(), &inquiry(false, 0, 260)).await;
    assert_good(&r);
    let d = &r.data_in;
    assert!(d.len() >= 36);
    assert_eq!(d[0], 0, "qualifier 0, direct access");
    assert_eq!(d[2], 0x06, "SPC-4");
    assert_eq!(d[3] & 0x0f, 2, "response data format 2");
    assert_eq!(usize::from(d[4]), d.len() - 5, "additional length");
    assert_eq!(d[3] & 0xc0, 0, "no AERC / TRMTSK");
    assert_eq!(&d[8..16], b"MOSAIC  ");
    assert_eq!(&d[16..32], b"Mosaic volume   ");
    assert_eq!(&d[32..36], b"0.1 ");
    let descriptors: Vec<u16> = d[58..74]
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    assert!(descriptors.contains(&0x04c0), "SBC-3");
    assert!(descriptors.contains(&0x0460), "SPC-4");
    assert_eq!(r.transfer_len as usize, d.len());
}

#[tokio::test]
async fn inquiry_strings_are_sanitized_to_printable_ascii() {
    let mut c = cfg(512);
    c.vendor = "ACMÉ\u{7}CORPORATION".into();
    let lu = LogicalUnit::new(c, BackingStore::memory(1 << 20)).unwrap();
    let r = exec(&lu, &inquiry(false, 0, 96)).await;
    assert!(r.data_in[8..36].iter().all(|b| (0x20..=0x7e).contains(b)));
}

#[tokio::test]
async fn inquiry_allocation_length_truncates_data() {
    let lu = lu();
    let full = exec(&lu, &inquiry(false, 0, 255)).await.data_in;
    for alloc in 0u16..=255 {
        let r = exec(&lu, &inquiry(false, 0, alloc)).await;
        assert_good(&r);
        assert_eq!(r.data_in.len(), usize::from(alloc).min(full.len()));
        assert_eq!(r.transfer_len as usize, r.data_in.len());
        assert_eq!(&r.data_in[..], &full[..r.data_in.len()]);
    }
    assert_eq!(exec(&lu, &inquiry(false, 0, 256)).await.data_in, full);
}

#[tokio::test]
async fn inquiry_page_code_without_evpd_is_invalid_field() {
    let r = exec(&lu(), &inquiry(false, 1, 256)).await;
    assert_check(&r, key::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_CDB);
}

#[tokio::test]
async fn inquiry_unknown_vpd_page_is_invalid_field() {
    for page in [0x01u8, 0x87, 0xb3, 0xc0] {
        let r = exec(&lu(), &inquiry(true, page, 255)).await;
        assert_check(&r, key::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_CDB);
    }
}

#[tokio::test]
async fn inquiry_every_supported_vpd_page_is_readable() {
    let lu = lu();
    let r = exec(&lu, &inquiry(true, vpd::SUPPORTED_PAGES, 255)).await;
    assert_good(&r);
    let d = &r.data_in;
    assert_eq!(d[1], 0);
    let n = usize::from(u16::from_be_bytes([d[2], d[3]]));
    let pages = &d[4..4 + n];
    assert_eq!(pages, &[0x00, 0x80, 0x83, 0x86, 0x8f, 0xb0, 0xb1, 0xb2]);
    for &page in pages {
        let r = exec(&lu, &inquiry(true, page, 255)).await;
        assert_good(&r);
        assert_eq!(r.data_in[1], page);
        let len = usize::from(u16::from_be_bytes([r.data_in[2], r.data_in[3]]));
        assert_eq!(r.data_in.len(), 4 + len, "page {page:#x} length");
    }
}

/// The Third-party Copy VPD page (SPC-4 §7.8.17) walked descriptor by descriptor,
/// as an initiator (sg_vpd, VMware) reads it: the descriptors a LID1 copy manager
/// must have, each a multiple of four bytes, with our EXTENDED COPY limits.
#[tokio::test]
async fn inquiry_vpd8f_describes_the_extended_copy_manager() {
    let r = exec(&lu(), &inquiry(true, vpd::THIRD_PARTY_COPY, 1024)).await;
    assert_good(&r);
    let d = &r.data_in;
    assert_eq!(d[1], 0x8f);
    let len = usize::from(u16::from_be_bytes([d[2], d[3]]));
    assert_eq!(d.len(), 4 + len);
    let mut descriptors = std::collections::BTreeMap::new();
    let mut off = 4;
    while off < d.len() {
        let kind = u16::from_be_bytes([d[off], d[off + 1]]);
        let n = usize::from(u16::from_be_bytes([d[off + 2], d[off + 3]]));
        assert_eq!(n % 4, 0, "descriptor {kind:#06x} length {n}");
        descriptors.insert(kind, d[off + 4..off + 4 + n].to_vec());
        off += 4 + n;
    }
    assert_eq!(off, d.len(), "descriptors fill the page");
    assert_eq!(
        descriptors.keys().copied().collect::<Vec<_>>(),
        vec![0x0001, 0x0004, 0x0008, 0x000c, 0x8001]
    );
    // Supported Commands: EXTENDED COPY(LID1); RECEIVE COPY RESULTS 00h 01h 03h 04h.
    let c = &descriptors[&0x0001];
    assert_eq!(
        &c[..10],
        &[9, 0x83, 1, 0x00, 0x84, 4, 0x00, 0x01, 0x03, 0x04]
    );
    // Parameter Data: 8 CSCD descriptors, 64 segment descriptors, the list length
    // they fill (8 * 32 + 64 * 28), no inline data.
    let p = &descriptors[&0x0004];
    assert_eq!(p.len(), 28);
    assert_eq!(u16::from_be_bytes([p[4], p[5]]), 8);
    assert_eq!(u16::from_be_bytes([p[6], p[7]]), 64);
    assert_eq!(
        u32::from_be_bytes([p[8], p[9], p[10], p[11]]),
        8 * 32 + 64 * 28
    );
    assert_eq!(&p[12..16], &[0, 0, 0, 0]);
    // Supported Descriptors: segment 02h, CSCD E4h.
    assert_eq!(&descriptors[&0x0008][..3], &[2, 0x02, 0xe4]);
    // Supported CSCD Descriptor IDs: none above 07FFh.
    assert_eq!(&descriptors[&0x000c][..2], &[0, 0]);
    // General Copy Operations: 4 copies at once, 32 MiB segments, 512-byte granules.
    let g = &descriptors[&0x8001];
    assert_eq!(u32::from_be_bytes([g[0], g[1], g[2], g[3]]), 4);
    assert_eq!(u32::from_be_bytes([g[4], g[5], g[6], g[7]]), 4);
    assert_eq!(u32::from_be_bytes([g[8], g[9], g[10], g[11]]), 32 << 20);
    assert_eq!(g[12], 9);
}

#[tokio::test]
async fn inquiry_vpd80_has_serial() {
    let r = exec(&lu(), &inquiry(true, vpd::UNIT_SERIAL_NUMBER, 255)).await;
    assert_good(&r);
    assert_eq!(&r.data_in[4..], b"MOSAIC-0001");
}

/// (code set, PIV, association, type, identifier) of each VPD 0x83 designator.
fn designators(page: &[u8]) -> Vec<(u8, bool, u8, u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut i = 4;
    while i + 4 <= page.len() {
        let len = usize::from(page[i + 3]);
        out.push((
            page[i] & 0x0f,
            page[i + 1] & 0x80 != 0,
            (page[i + 1] >> 4) & 0x03,
            page[i + 1] & 0x0f,
            page[i + 4..i + 4 + len].to_vec(),
        ));
        i += 4 + len;
    }
    assert_eq!(i, page.len(), "designators fill the page exactly");
    out
}

#[tokio::test]
async fn inquiry_vpd83_has_naa_designator() {
    let lu = lu();
    let r = exec(&lu, &inquiry(true, vpd::DEVICE_IDENTIFICATION, 1024)).await;
    assert_good(&r);
    let ds = designators(&r.data_in);
    let naa: Vec<_> = ds.iter().filter(|d| d.3 == 3 && d.2 == 0).collect();
    assert_eq!(naa.len(), 1);
    let id = &naa[0].4;
    assert_eq!(id.len(), 16);
    assert_eq!(id[0] >> 4, 6, "NAA IEEE Registered Extended");
    assert_eq!(&id[8..], &LuConfig::naa_id_for("vol-a").to_be_bytes());
    assert_eq!(naa[0].0, 1, "binary");
}

#[tokio::test]
async fn inquiry_vpd83_naa_differs_between_volumes() {
    let mut other = cfg(512);
    other.naa_id = LuConfig::naa_id_for("vol-b");
    let lu_b = LogicalUnit::new(other, BackingStore::memory(1 << 20)).unwrap();
    let a = exec(&lu(), &inquiry(true, 0x83, 1024)).await.data_in;
    let b = exec(&lu_b, &inquiry(true, 0x83, 1024)).await.data_in;
    assert_ne!(designators(&a)[0].4, designators(&b)[0].4);
}

#[tokio::test]
async fn inquiry_vpd83_has_target_port_designators() {
    let mut c = cfg(512);
    c.relative_port = 2;
    c.tpg = 7;
    let lu = LogicalUnit::new(c, BackingStore::memory(1 << 20)).unwrap();
    let r = exec(&lu, &inquiry(true, 0x83, 1024)).await;
    let ds = designators(&r.data_in);
    let find = |assoc: u8, ty: u8| ds.iter().find(|d| d.2 == assoc && d.3 == ty).cloned();
    let rel = find(1, 4).expect("relative target port");
    assert!(rel.1, "PIV set");
    assert_eq!(rel.4, vec![0, 0, 0, 2]);
    let tpg = find(1, 5).expect("target port group");
    assert_eq!(tpg.4, vec![0, 0, 0, 7]);
    let port_name = find(1, 8).expect("SCSI name string for the target port");
    assert_eq!(port_name.0, 3, "UTF-8");
    assert_eq!(port_name.4.len() % 4, 0, "padded to a multiple of 4");
    let s: Vec<u8> = port_name
        .4
        .iter()
        .copied()
        .take_while(|&b| b != 0)
        .collect();
    assert_eq!(s, b"iqn.2024-01.org.mosaic:vol-a,t,0x0007");
    let dev_name = find(2, 8).expect("SCSI name string for the target device");
    assert!(dev_name.4.starts_with(b"iqn.2024-01.org.mosaic:vol-a\0"));
}

#[tokio::test]
async fn inquiry_block_limits_reports_max_transfer_unmap_and_atomic_limits() {
    let lu = lu_with(BLOCKS, 4096);
    let r = exec(&lu, &inquiry(true, vpd::BLOCK_LIMITS, 64)).await;
    assert_good(&r);
    let d = &r.data_in;
    assert_eq!(d.len(), 64);
    assert_eq!(d[3], 0x3c);
    assert_eq!(d[4] & 1, 0, "WSNZ = 0");
    assert_eq!(d[5], 255, "MAXIMUM COMPARE AND WRITE LENGTH");
    let be32 = |at: usize| u32::from_be_bytes([d[at], d[at + 1], d[at + 2], d[at + 3]]);
    let max = be32(8);
    assert_eq!(u64::from(max) * 4096, MAX_TRANSFER_BYTES);
    assert_eq!(be32(20), u32::MAX, "MAXIMUM UNMAP LBA COUNT: no limit");
    assert_eq!(be32(24), 1024, "MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT");
    assert_eq!(be32(28), 16, "OPTIMAL UNMAP GRANULARITY: a 64 KiB chunk");
    assert_eq!(be32(32), 0x8000_0000, "UGAVALID, alignment 0");
    let max_ws = u64::from_be_bytes(d[36..44].try_into().unwrap());
    assert_eq!(max_ws, 256 * 1024 * 1024 / 4096);
    assert_eq!(be32(44), max, "MAXIMUM ATOMIC TRANSFER LENGTH");
    assert_eq!(
        &d[48..64],
        &[0; 16],
        "no atomic alignment/granularity/boundary"
    );
}

#[tokio::test]
async fn inquiry_extended_inquiry_claims_simple_tasks_and_a_volatile_cache() {
    let r = exec(&lu(), &inquiry(true, vpd::EXTENDED_INQUIRY, 255)).await;
    assert_good(&r);
    let d = &r.data_in;
    assert_eq!((d[1], d[3]), (0x86, 0x3c));
    assert_eq!(d[4], 0, "no protection information");
    assert_eq!(d[5], 0x01, "SIMPSUP only");
    assert_eq!(d[6], 0x01, "V_SUP, not NV_SUP");
    assert_eq!(d[13], 18, "fixed-format sense");
}

#[tokio::test]
async fn inquiry_logical_block_provisioning_thin_and_thick() {
    let r = exec(&lu(), &inquiry(true, vpd::LOGICAL_BLOCK_PROVISIONING, 255)).await;
    assert_good(&r);
    assert_eq!(&r.data_in[..], &[0, 0xb2, 0, 4, 0, 0xe4, 0x02, 0]);
    let r = exec(
        &thick_lu(),
        &inquiry(true, vpd::LOGICAL_BLOCK_PROVISIONING, 255),
    )
    .await;
    assert_eq!(&r.data_in[..], &[0, 0xb2, 0, 4, 0, 0, 0, 0]);
}

#[tokio::test]
async fn inquiry_block_limits_of_a_thick_volume_has_no_unmap() {
    let lu = thick_lu();
    let r = exec(&lu, &inquiry(true, vpd::BLOCK_LIMITS, 64)).await;
    assert_good(&r);
    assert_eq!(&r.data_in[20..36], &[0; 16], "no UNMAP limits");
}

#[tokio::test]
async fn mode_sense6_all_pages_has_caching_control_and_ie() {
    let lu = lu();
    let r = exec(&lu, &mode_sense6(false, 0, mode_page::ALL_PAGES, 0, 255)).await;
    assert_good(&r);
    let d = &r.data_in;
    assert_eq!(usize::from(d[0]), d.len() - 1, "mode data length");
    assert_eq!(d[2] & 0x80, 0, "not write protected");
    assert_eq!(d[2] & 0x10, 0x10, "DPOFUA");
    assert_eq!(d[3], 8, "short block descriptor");
    assert_eq!(&d[4..8], &(BLOCKS as u32).to_be_bytes());
    assert_eq!(&d[9..12], &[0, 2, 0], "block length 512");
    let mut pages = Vec::new();
    let mut i = 12;
    while i < d.len() {
        pages.push((d[i] & 0x3f, d[i..i + 2 + usize::from(d[i + 1])].to_vec()));
        i += 2 + usize::from(d[i + 1]);
    }
    assert_eq!(i, d.len());
    let codes: Vec<u8> = pages.iter().map(|p| p.0).collect();
    assert_eq!(codes, vec![0x08, 0x0a, 0x1c]);
    assert_eq!(pages[0].1[2] & 0x04, 0x04, "WCE");
    assert_eq!(pages[1].1[2] & 0x04, 0, "D_SENSE = 0: fixed-format sense");
}

#[tokio::test]
async fn mode_sense6_control_page_alone_matches_all_pages() {
    let lu = lu();
    let all = exec(&lu, &mode_sense6(true, 0, 0x3f, 0, 255)).await.data_in;
    let one = exec(&lu, &mode_sense6(true, 0, 0x0a, 0, 255)).await.data_in;
    assert_eq!(one.len(), 4 + 12);
    let pos = all.windows(2).position(|w| w == [0x0a, 0x0a]).unwrap();
    assert_eq!(&all[pos..pos + 12], &one[4..]);
}

#[tokio::test]
async fn mode_sense6_allocation_length_4_returns_4_bytes() {
    let r = exec(&lu(), &mode_sense6(false, 0, 0x3f, 0, 4)).await;
    assert_good(&r);
    assert_eq!(r.data_in.len(), 4);
    assert_eq!(r.transfer_len, 4);
}

#[tokio::test]
async fn mode_sense_dbd_omits_block_descriptor() {
    let r = exec(&lu(), &mode_sense6(true, 0, 0x08, 0, 255)).await;
    assert_good(&r);
    assert_eq!(r.data_in[3], 0);
    assert_eq!(r.data_in.len(), 4 + 20);
    assert_eq!(r.data_in[4], 0x08);
}

#[tokio::test]
async fn mode_sense10_llbaa_returns_long_block_descriptor() {
    let blocks = 1u64 << 33;
    let lu = lu_with(blocks, 512);
    let r = exec(&lu, &mode_sense10(true, false, 0x08, 1024)).await;
    assert_good(&r);
    let d = &r.data_in;
    assert_eq!(usize::from(u16::from_be_bytes([d[0], d[1]])), d.len() - 2);
    assert_eq!(d[4] & 1, 1, "LONGLBA");
    assert_eq!(u16::from_be_bytes([d[6], d[7]]), 16);
    assert_eq!(&d[8..16], &blocks.to_be_bytes());
    assert_eq!(&d[20..24], &512u32.to_be_bytes());
    // Without LLBAA the short descriptor saturates.
    let r = exec(&lu, &mode_sense10(false, false, 0x08, 1024)).await;
    assert_eq!(u16::from_be_bytes([r.data_in[6], r.data_in[7]]), 8);
    assert_eq!(&r.data_in[8..12], &[0xff; 4]);
}

#[tokio::test]
async fn mode_sense_changeable_values_are_only_wce_and_swp() {
    let r = exec(&lu(), &mode_sense6(true, 1, 0x3f, 0, 255)).await;
    assert_good(&r);
    let d = &r.data_in;
    let mut i = 4;
    while i < d.len() {
        let len = usize::from(d[i + 1]);
        let mut expected = vec![0u8; len];
        match d[i] {
            0x08 => expected[0] = 0x04, // WCE
            0x0a => expected[2] = 0x08, // SWP
            _ => {}
        }
        assert_eq!(&d[i + 2..i + 2 + len], &expected[..], "page {:#x}", d[i]);
        i += 2 + len;
    }
}

#[tokio::test]
async fn mode_sense_saved_values_are_not_supported() {
    let r = exec(&lu(), &mode_sense6(false, 3, 0x3f, 0, 255)).await;
    assert_check(
        &r,
        key::ILLEGAL_REQUEST,
        Asc::SAVING_PARAMETERS_NOT_SUPPORTED,
    );
}

#[tokio::test]
async fn mode_sense_unknown_page_or_subpage_is_invalid_field() {
    let lu = lu();
    let r = exec(&lu, &mode_sense6(false, 0, 0x19, 0, 255)).await;
    assert_check(&r, key::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_CDB);
    let r = exec(&lu, &mode_sense6(false, 0, 0x0a, 1, 255)).await;
    assert_check(&r, key::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_CDB);
    assert_good(&exec(&lu, &mode_sense6(false, 0, 0x3f, 0xff, 255)).await);
}

#[tokio::test]
async fn concurrent_writes_to_distinct_blocks_all_land() {
    let lu = std::sync::Arc::new(lu());
    let mut tasks = Vec::new();
    for i in 0..32u32 {
        let lu = lu.clone();
        tasks.push(tokio::spawn(async move {
            let r = exec_out(&lu, &write10(i, 1, false), &[i as u8; 512]).await;
            assert_good(&r);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let all = exec(&lu, &read10(0, 32)).await.data_in;
    for i in 0..32usize {
        assert!(all[i * 512..(i + 1) * 512].iter().all(|&b| b == i as u8));
    }
}

mod never_panics {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn execute_never_panics_and_status_is_good_or_check(
            cdb in proptest::collection::vec(any::<u8>(), 0..32),
            lun in 0u64..3,
            data_out in proptest::collection::vec(any::<u8>(), 0..2048),
            edtl in any::<u32>(),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let lu = lu_with(64, 512);
            let r = rt.block_on(exec_lun(&lu, lun, &cdb, &data_out, edtl));
            prop_assert!(r.status == status::GOOD || r.status == status::CHECK_CONDITION);
            prop_assert_eq!(r.status == status::CHECK_CONDITION, !r.sense.is_empty());
            if r.status == status::GOOD {
                prop_assert_eq!(r.data_in.len() as u64 <= u64::from(r.transfer_len), true);
            }
        }

        /// Every opcode we implement, with mostly-zero fields (so LBAs land in range and
        /// lengths stay small) and a random parameter list / Data-Out buffer: reaches
        /// the parameter list parsers (UNMAP, MODE SELECT) and every command body.
        #[test]
        fn implemented_commands_never_panic(
            which in 0usize..64,
            flags in any::<u8>(),
            rest in proptest::collection::vec(prop_oneof![3 => Just(0u8), 1 => 0u8..4, 1 => any::<u8>()], 15),
            data_out in proptest::collection::vec(prop_oneof![Just(0u8), any::<u8>()], 0..1100),
            thin: bool,
            read_only: bool,
        ) {
            let commands = super::super::opcodes::COMMANDS;
            let c = &commands[which % commands.len()];
            let mut cdb = vec![c.opcode, flags];
            cdb.extend_from_slice(&rest);
            if let Some(sa) = c.service_action {
                cdb[1] = sa as u8 | (flags & 0xe0);
            }
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let store = BackingStore::memory(64 * 512);
            let lu = LogicalUnit::with_options(cfg(512), store, LuOptions { thin, read_only }).unwrap();
            let edtl = data_out.len() as u32;
            let r = rt.block_on(exec_lun(&lu, 0, &cdb, &data_out, edtl));
            prop_assert!(r.status == status::GOOD || r.status == status::CHECK_CONDITION);
            prop_assert_eq!(r.status == status::CHECK_CONDITION, !r.sense.is_empty());
            if r.status == status::GOOD {
                prop_assert!(r.data_in.len() as u64 <= u64::from(r.transfer_len));
            }
            // The medium never changes size or becomes unreadable.
            let r = rt.block_on(exec(&lu, &read10(0, 64)));
            prop_assert_eq!(r.status, status::GOOD);
        }
    }
}
