//! Block commands beyond READ and WRITE (SBC-3, SBC-4): VERIFY, WRITE AND VERIFY,
//! PRE-FETCH, ORWRITE, COMPARE AND WRITE, WRITE ATOMIC, START STOP UNIT and PREVENT
//! ALLOW MEDIUM REMOVAL.
//!
//! Every command that reads and then writes (ORWRITE, COMPARE AND WRITE) or writes
//! and then reads back (WRITE AND VERIFY) holds its range exclusively for the whole
//! sequence, so no other write can slip in between.

use bytes::Bytes;
use mosaic_proto::scsi::sense::key;
use mosaic_proto::scsi::{Asc, PreFetchCdb, RwCdb, Sense, StartStopCdb, VerifyCdb};

use super::{LogicalUnit, ScsiResult};

/// MAXIMUM COMPARE AND WRITE LENGTH in blocks (Block Limits VPD byte 5): the largest
/// value the one-byte NUMBER OF LOGICAL BLOCKS field can hold.
pub(super) const MAX_COMPARE_AND_WRITE_BLOCKS: u32 = 255;

/// BYTCHK values of VERIFY / WRITE AND VERIFY (SBC-4 §5.33.1, Table 158).
const BYTCHK_MEDIUM_ONLY: u8 = 0b00;
const BYTCHK_COMPARE: u8 = 0b01;
const BYTCHK_ONE_BLOCK: u8 = 0b11;

/// POWER CONDITION values of START STOP UNIT we accept (SBC-3 §5.25, Table 105):
/// START_VALID, ACTIVE, IDLE, STANDBY, LU_CONTROL, FORCE_IDLE_0, FORCE_STANDBY_0.
/// The unit has no power states to enter, so all of them leave it active.
const POWER_CONDITIONS: [u8; 7] = [0x0, 0x1, 0x2, 0x3, 0x7, 0xa, 0xb];
/// PREVENT values (SBC-3 §5.13): 00b allow, 01b prevent; 1xb are obsolete.
const PREVENT_MAX: u8 = 0b01;

/// MISCOMPARE / MISCOMPARE DURING VERIFY OPERATION with the offset of the first
/// differing byte in the INFORMATION field (SBC-3 §5.2, §5.33).
fn miscompare(offset: usize) -> Sense {
    Sense::new(key::MISCOMPARE, Asc::MISCOMPARE_DURING_VERIFY).with_information(offset as u64)
}

/// Index of the first byte where `a` and `b` differ (over their common length).
fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

impl LogicalUnit {
    /// VERIFY(10/12/16) (SBC-3 §5.33-5.35). BYTCHK 00b reads the range back (a read
    /// error is MEDIUM ERROR); 01b compares the Data-Out buffer with the medium; 11b
    /// compares one Data-Out block with every block of the range. A difference is
    /// MISCOMPARE with the byte offset (into the Data-Out buffer, or into the range
    /// for 11b) in INFORMATION. Like WRITE, a Data-Out shorter than the CDB asks
    /// compares the whole blocks that arrived.
    pub(super) async fn verify(&self, v: VerifyCdb, len_field: u16, data_out: Bytes) -> ScsiResult {
        let bs = self.cfg.block_size as usize;
        let transfer_len = match v.bytchk {
            BYTCHK_COMPARE => self.blocks_len(v.blocks),
            BYTCHK_ONE_BLOCK => self.cfg.block_size,
            _ => 0,
        };
        let bytes = match self.check_rw(&as_rw(&v), len_field) {
            Ok(bytes) => bytes as usize,
            Err(sense) => return ScsiResult::check(sense, transfer_len),
        };
        if bytes == 0 {
            return ScsiResult::ok(0);
        }
        let expected = match v.bytchk {
            BYTCHK_COMPARE => match self.whole_blocks(data_out, bytes) {
                Ok(d) => d,
                Err(sense) => return ScsiResult::check(sense, transfer_len),
            },
            BYTCHK_ONE_BLOCK => {
                if data_out.len() < bs {
                    return ScsiResult::check(
                        Sense::new(key::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_INFORMATION_UNIT),
                        transfer_len,
                    );
                }
                data_out.slice(..bs)
            }
            _ => Bytes::new(),
        };
        let read_len = if v.bytchk == BYTCHK_COMPARE {
            expected.len()
        } else {
            bytes
        };
        let _range = self.locks.lock(v.lba, (read_len / bs) as u64, false).await;
        let medium = match self.read_medium(v.lba, read_len).await {
            Ok(d) => d,
            Err(sense) => return ScsiResult::check(sense, transfer_len),
        };
        let difference = match v.bytchk {
            BYTCHK_MEDIUM_ONLY => None,
            BYTCHK_ONE_BLOCK => medium
                .chunks(bs)
                .enumerate()
                .find_map(|(i, block)| first_difference(block, &expected).map(|o| i * bs + o)),
            _ => first_difference(&medium, &expected),
        };
        match difference {
            Some(offset) => ScsiResult::check(miscompare(offset), transfer_len),
            None => ScsiResult::ok(transfer_len),
        }
    }

    /// WRITE AND VERIFY(10/12/16) (SBC-3 §5.45-5.47): writes, makes the data durable
    /// (verification is of the medium, not of a cache), reads it back and, with
    /// BYTCHK 01b, compares it with the Data-Out buffer. The range stays locked from
    /// the write to the compare.
    pub(super) async fn write_and_verify(
        &self,
        v: VerifyCdb,
        len_field: u16,
        data_out: Bytes,
    ) -> ScsiResult {
        let rw = as_rw(&v);
        let transfer_len = self.rw_transfer_len(&rw);
        let bytes = match self.check_rw(&rw, len_field) {
            Ok(bytes) => bytes as usize,
            Err(sense) => return ScsiResult::check(sense, transfer_len),
        };
        if let Err(sense) = self.check_writable() {
            return ScsiResult::check(sense, transfer_len);
        }
        if bytes == 0 {
            return ScsiResult::ok(0);
        }
        let data = match self.whole_blocks(data_out, bytes) {
            Ok(d) => d,
            Err(sense) => return ScsiResult::check(sense, transfer_len),
        };
        let blocks = (data.len() / self.cfg.block_size as usize) as u64;
        let _range = self.locks.lock(v.lba, blocks, true).await;
        if let Err(sense) = self.write_medium(v.lba, data.clone(), true).await {
            return ScsiResult::check(sense, transfer_len);
        }
        let medium = match self.read_medium(v.lba, data.len()).await {
            Ok(d) => d,
            Err(sense) => return ScsiResult::check(sense, transfer_len),
        };
        if v.bytchk == BYTCHK_COMPARE {
            if let Some(offset) = first_difference(&medium, &data) {
                return ScsiResult::check(miscompare(offset), transfer_len);
            }
        }
        ScsiResult::ok(transfer_len)
    }

    /// PRE-FETCH(10/16) (SBC-3 §5.9, §5.10): asks the host to read the range into its
    /// page cache (POSIX_FADV_WILLNEED). A PREFETCH LENGTH of 0 means "to the end".
    /// The answer is GOOD, not CONDITION MET: the page cache may evict the blocks
    /// again, so we cannot promise they stay cached.
    pub(super) async fn prefetch(&self, p: PreFetchCdb) -> ScsiResult {
        if let Err(sense) = self.check_range(p.lba, p.blocks) {
            return ScsiResult::check(sense, 0);
        }
        let blocks = if p.blocks == 0 {
            self.num_blocks - p.lba
        } else {
            u64::from(p.blocks)
        };
        let len = blocks * u64::from(self.cfg.block_size);
        match self.store.prefetch(self.offset_of(p.lba), len).await {
            Ok(()) => ScsiResult::ok(0),
            Err(e) => {
                tracing::warn!(lu = %self.cfg.name, lba = p.lba, error = %e, "prefetch failed");
                ScsiResult::check(
                    Sense::new(key::MEDIUM_ERROR, Asc::UNRECOVERED_READ_ERROR)
                        .with_information(p.lba),
                    0,
                )
            }
        }
    }

    /// ORWRITE(16) (SBC-4 §5.9): each block becomes the bitwise OR of the medium and
    /// the Data-Out buffer, read-modify-write under the exclusive range lock.
    pub(super) async fn orwrite(&self, rw: RwCdb, data_out: Bytes) -> ScsiResult {
        let transfer_len = self.rw_transfer_len(&rw);
        let bytes = match self.check_rw(&rw, 10) {
            Ok(bytes) => bytes as usize,
            Err(sense) => return ScsiResult::check(sense, transfer_len),
        };
        if let Err(sense) = self.check_writable() {
            return ScsiResult::check(sense, transfer_len);
        }
        if bytes == 0 {
            return ScsiResult::ok(0);
        }
        let data = match self.whole_blocks(data_out, bytes) {
            Ok(d) => d,
            Err(sense) => return ScsiResult::check(sense, transfer_len),
        };
        let blocks = (data.len() / self.cfg.block_size as usize) as u64;
        let _range = self.locks.lock(rw.lba, blocks, true).await;
        // The store reads, ORs and writes: a clustered volume does it at each
        // page's primary, atomically against writes received by other nodes.
        if let Err(e) = self.store.or_write(self.offset_of(rw.lba), data).await {
            tracing::warn!(lu = %self.cfg.name, lba = rw.lba, error = %e, "orwrite failed");
            return ScsiResult::check(
                Sense::new(key::MEDIUM_ERROR, Asc::WRITE_ERROR).with_information(rw.lba),
                transfer_len,
            );
        }
        match self.flush_if_needed(rw.lba, rw.fua).await {
            Ok(()) => ScsiResult::ok(transfer_len),
            Err(sense) => ScsiResult::check(sense, transfer_len),
        }
    }

    /// COMPARE AND WRITE (SBC-3 §5.2): the Data-Out buffer holds N verify blocks then N
    /// write blocks. Under the exclusive range lock (which every write takes), the
    /// medium is compared with the first half; on a difference nothing is written and
    /// the answer is MISCOMPARE with the offset of the first differing byte in
    /// INFORMATION; otherwise the second half is written. N = 0 does nothing.
    pub(super) async fn compare_and_write(&self, rw: RwCdb, data_out: Bytes) -> ScsiResult {
        let half = self.blocks_len(rw.blocks) as usize;
        let transfer_len = (2 * half) as u32;
        if let Err(sense) = self.check_range(rw.lba, rw.blocks) {
            return ScsiResult::check(sense, transfer_len);
        }
        // A Data-Out buffer larger than any COMPARE AND WRITE we support means the
        // initiator wanted more blocks than the one-byte field holds (libiscsi sends
        // 256 blocks as NUMBER OF LOGICAL BLOCKS 0): refuse it like too many blocks.
        let max_data = 2 * MAX_COMPARE_AND_WRITE_BLOCKS as usize * self.cfg.block_size as usize;
        if rw.blocks > MAX_COMPARE_AND_WRITE_BLOCKS || data_out.len() > max_data {
            return ScsiResult::check(Sense::invalid_field_in_cdb(13, None), transfer_len);
        }
        if let Err(sense) = self.check_writable() {
            return ScsiResult::check(sense, transfer_len);
        }
        if rw.blocks == 0 {
            return ScsiResult::ok(0);
        }
        if data_out.len() != 2 * half {
            // The Data-Out buffer must be exactly the verify and the write data.
            return ScsiResult::check(Sense::invalid_field_in_cdb(13, None), transfer_len);
        }
        let (verify, write) = (data_out.slice(..half), data_out.slice(half..));
        let _range = self.locks.lock(rw.lba, u64::from(rw.blocks), true).await;
        // The store compares and writes: a clustered volume does both at the
        // page's primary, atomically against writes received by other nodes.
        match self
            .store
            .compare_and_write(self.offset_of(rw.lba), verify, write)
            .await
        {
            Ok(Some(offset)) => ScsiResult::check(miscompare(offset), transfer_len),
            Ok(None) => match self.flush_if_needed(rw.lba, rw.fua).await {
                Ok(()) => ScsiResult::ok(transfer_len),
                Err(sense) => ScsiResult::check(sense, transfer_len),
            },
            Err(e) => {
                tracing::warn!(lu = %self.cfg.name, lba = rw.lba, error = %e, "compare and write failed");
                ScsiResult::check(
                    Sense::new(key::MEDIUM_ERROR, Asc::WRITE_ERROR).with_information(rw.lba),
                    transfer_len,
                )
            }
        }
    }

    /// WRITE ATOMIC(16) (SBC-4 §5.48): a WRITE whose data lands all or nothing. Every
    /// write holds its range exclusively and reads share theirs, so any write up to
    /// the maximum transfer length is atomic; the ATOMIC BOUNDARY field must be 0 (we
    /// report MAXIMUM ATOMIC BOUNDARY SIZE 0), and the Data-Out buffer must be complete.
    pub(super) async fn write_atomic(&self, rw: RwCdb, cdb: &[u8], data_out: Bytes) -> ScsiResult {
        let transfer_len = self.rw_transfer_len(&rw);
        let bytes = match self.check_rw(&rw, 12) {
            Ok(bytes) => bytes as usize,
            Err(sense) => return ScsiResult::check(sense, transfer_len),
        };
        if cdb.get(10..12).is_some_and(|b| b != [0, 0]) {
            return ScsiResult::check(Sense::invalid_field_in_cdb(10, None), transfer_len);
        }
        if let Err(sense) = self.check_writable() {
            return ScsiResult::check(sense, transfer_len);
        }
        if bytes == 0 {
            return ScsiResult::ok(0);
        }
        if data_out.len() < bytes {
            return ScsiResult::check(
                Sense::new(key::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_INFORMATION_UNIT),
                transfer_len,
            );
        }
        let _range = self.locks.lock(rw.lba, u64::from(rw.blocks), true).await;
        match self
            .write_medium(rw.lba, data_out.slice(..bytes), rw.fua)
            .await
        {
            Ok(()) => ScsiResult::ok(transfer_len),
            Err(sense) => ScsiResult::check(sense, transfer_len),
        }
    }

    /// START STOP UNIT (SBC-3 §5.25). The medium is not removable, so LOEJ is INVALID
    /// FIELD IN CDB. The unit cannot spin down and stays ready; a stop (START = 0 with
    /// power condition START_VALID) synchronizes the cache first unless NO_FLUSH is set.
    pub(super) async fn start_stop_unit(&self, ss: StartStopCdb) -> ScsiResult {
        if ss.loej {
            return ScsiResult::check(Sense::invalid_field_in_cdb(4, Some(1)), 0);
        }
        if !POWER_CONDITIONS.contains(&ss.power_condition) {
            return ScsiResult::check(Sense::invalid_field_in_cdb(4, Some(7)), 0);
        }
        if ss.power_condition == 0 && !ss.start && !ss.no_flush {
            if let Err(e) = self.store.flush().await {
                tracing::warn!(lu = %self.cfg.name, error = %e, "flush on stop failed");
                return ScsiResult::check(Sense::new(key::MEDIUM_ERROR, Asc::WRITE_ERROR), 0);
            }
        }
        ScsiResult::ok(0)
    }
}

/// PREVENT ALLOW MEDIUM REMOVAL (SBC-3 §5.13): the medium is not removable, so both
/// allowing and preventing removal are trivially honoured; the obsolete values 1xb are
/// INVALID FIELD IN CDB.
pub(super) fn prevent_allow(prevent: u8) -> ScsiResult {
    if prevent > PREVENT_MAX {
        return ScsiResult::check(Sense::invalid_field_in_cdb(4, Some(1)), 0);
    }
    ScsiResult::ok(0)
}

/// READ DEFECT DATA(10/12) (SBC-3 §5.17, §5.18): a volume has no defects, so both
/// the primary and the grown list are empty. The lists asked for are reported valid
/// (PLISTV, GLISTV) in the requested format: an empty list is the same in every
/// format.
pub(super) fn read_defect_data(
    twelve: bool,
    req_plist: bool,
    req_glist: bool,
    format: u8,
    alloc_len: u32,
) -> ScsiResult {
    const PLISTV: u8 = 0x10;
    const GLISTV: u8 = 0x08;
    let mut flags = format & 0x07;
    if req_plist {
        flags |= PLISTV;
    }
    if req_glist {
        flags |= GLISTV;
    }
    // Header: 4 bytes with a 16-bit DEFECT LIST LENGTH (10), 8 bytes with a 32-bit
    // one (12); the length is 0 either way.
    let mut d = vec![0u8; if twelve { 8 } else { 4 }];
    d[1] = flags;
    ScsiResult::good_truncated(d, alloc_len as usize)
}

/// VERIFY fields as the READ/WRITE range fields (for the shared range checks).
fn as_rw(v: &VerifyCdb) -> RwCdb {
    RwCdb {
        lba: v.lba,
        blocks: v.blocks,
        dpo: v.dpo,
        fua: false,
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::super::{LuOptions, ScsiResult};
    use mosaic_proto::scsi::sense::key;
    use mosaic_proto::scsi::{status, Asc};

    fn verify10(lba: u32, blocks: u16, bytchk: u8) -> [u8; 10] {
        let mut c = read10(lba, blocks);
        c[0] = 0x2f;
        c[1] = bytchk << 1;
        c
    }

    fn write_verify16(lba: u64, blocks: u32, bytchk: u8) -> [u8; 16] {
        let mut c = rw16(0x8e, lba, blocks);
        c[1] = bytchk << 1;
        c
    }

    fn caw(lba: u64, blocks: u8) -> [u8; 16] {
        let mut c = rw16(0x89, lba, 0);
        c[13] = blocks;
        c
    }

    fn information(r: &ScsiResult) -> Option<u64> {
        r.sense_data().and_then(|s| s.information)
    }

    #[tokio::test]
    async fn verify_with_bytchk_1_matches_written_data() {
        let lu = lu();
        let data = pattern(4 * BS as usize, 3);
        assert_good(&exec_out(&lu, &write10(8, 4, false), &data).await);
        let r = exec_out(&lu, &verify10(8, 4, 1), &data).await;
        assert_good(&r);
        assert_eq!(r.transfer_len, 4 * BS);
    }

    #[tokio::test]
    async fn verify_miscompare_reports_offset_of_first_differing_byte() {
        let lu = lu();
        let data = pattern(4 * BS as usize, 3);
        assert_good(&exec_out(&lu, &write10(8, 4, false), &data).await);
        let mut wrong = data.clone();
        wrong[1234] ^= b'X';
        wrong[1500] ^= b'X';
        let r = exec_out(&lu, &verify10(8, 4, 1), &wrong).await;
        assert_check(&r, key::MISCOMPARE, Asc::MISCOMPARE_DURING_VERIFY);
        assert_eq!(information(&r), Some(1234));
    }

    #[tokio::test]
    async fn verify_without_bytchk_ignores_data_and_checks_medium() {
        let lu = lu();
        let r = exec_out(&lu, &verify10(0, 8, 0), &[0xff; 512]).await;
        assert_good(&r);
        assert_eq!(r.transfer_len, 0, "BYTCHK 0 transfers nothing");
    }

    #[tokio::test]
    async fn verify_bytchk_3_compares_one_block_with_every_block() {
        let lu = lu();
        let block = pattern(BS as usize, 9);
        let data: Vec<u8> = block
            .iter()
            .cycle()
            .take(3 * BS as usize)
            .copied()
            .collect();
        assert_good(&exec_out(&lu, &write10(0, 3, false), &data).await);
        assert_good(&exec_out(&lu, &verify10(0, 3, 3), &block).await);
        let mut other = data.clone();
        other[2 * BS as usize + 7] ^= 1;
        assert_good(&exec_out(&lu, &write10(0, 3, false), &other).await);
        let r = exec_out(&lu, &verify10(0, 3, 3), &block).await;
        assert_check(&r, key::MISCOMPARE, Asc::MISCOMPARE_DURING_VERIFY);
        assert_eq!(information(&r), Some(2 * u64::from(BS) + 7));
    }

    #[tokio::test]
    async fn verify_beyond_end_and_zero_blocks() {
        let lu = lu();
        let r = exec(&lu, &verify10(BLOCKS as u32, 1, 0)).await;
        assert_check(&r, key::ILLEGAL_REQUEST, Asc::LBA_OUT_OF_RANGE);
        assert_good(&exec(&lu, &verify10(0, 0, 1)).await);
        let r = exec(&lu, &verify10(BLOCKS as u32 + 1, 0, 1)).await;
        assert_check(&r, key::ILLEGAL_REQUEST, Asc::LBA_OUT_OF_RANGE);
    }

    #[tokio::test]
    async fn write_and_verify_writes_and_reads_back() {
        let lu = lu();
        let data = pattern(2 * BS as usize, 5);
        for bytchk in [0, 1] {
            let r = exec_out(&lu, &write_verify16(100, 2, bytchk), &data).await;
            assert_good(&r);
            let r = exec(&lu, &read10(100, 2)).await;
            assert_eq!(r.data_in, data);
        }
    }

    #[tokio::test]
    async fn write_and_verify_on_write_protected_unit_is_data_protect() {
        let lu = lu_opts(LuOptions {
            thin: true,
            read_only: true,
        });
        let r = exec_out(&lu, &write_verify16(0, 1, 1), &[1; 512]).await;
        assert_check(&r, key::DATA_PROTECT, Asc::WRITE_PROTECTED);
    }

    #[tokio::test]
    async fn prefetch_in_range_is_good_and_beyond_is_lba_out_of_range() {
        let lu = lu();
        let r = exec(&lu, &[0x34, 0x02, 0, 0, 0, 0, 0, 0, 8, 0]).await;
        assert_eq!(r.status, status::GOOD);
        let r = exec(&lu, &rw16(0x90, BLOCKS - 1, 2)).await;
        assert_check(&r, key::ILLEGAL_REQUEST, Asc::LBA_OUT_OF_RANGE);
        // Length 0: to the end.
        assert_good(&exec(&lu, &rw16(0x90, BLOCKS - 1, 0)).await);
    }

    #[tokio::test]
    async fn orwrite_ors_data_into_the_medium() {
        let lu = lu();
        assert_good(&exec_out(&lu, &write10(5, 1, false), &[0xa0; 512]).await);
        assert_good(&exec_out(&lu, &rw16(0x8b, 5, 1), &[0x05; 512]).await);
        let r = exec(&lu, &read10(5, 1)).await;
        assert_eq!(r.data_in, vec![0xa5u8; 512]);
    }

    #[tokio::test]
    async fn compare_and_write_writes_when_the_medium_matches() {
        let lu = lu();
        let old = pattern(2 * BS as usize, 1);
        let new = pattern(2 * BS as usize, 2);
        assert_good(&exec_out(&lu, &write10(10, 2, false), &old).await);
        let buf = [old.clone(), new.clone()].concat();
        let r = exec_out(&lu, &caw(10, 2), &buf).await;
        assert_good(&r);
        assert_eq!(r.transfer_len, 4 * BS);
        assert_eq!(exec(&lu, &read10(10, 2)).await.data_in, new);
    }

    #[tokio::test]
    async fn compare_and_write_miscompare_writes_nothing_and_reports_offset() {
        let lu = lu();
        let old = pattern(2 * BS as usize, 1);
        assert_good(&exec_out(&lu, &write10(10, 2, false), &old).await);
        let mut verify = old.clone();
        verify[BS as usize + 27] ^= 0x40;
        let buf = [verify, vec![0xee; 2 * BS as usize]].concat();
        let r = exec_out(&lu, &caw(10, 2), &buf).await;
        assert_check(&r, key::MISCOMPARE, Asc::MISCOMPARE_DURING_VERIFY);
        assert_eq!(information(&r), Some(u64::from(BS) + 27));
        assert_eq!(exec(&lu, &read10(10, 2)).await.data_in, old);
    }

    #[tokio::test]
    async fn compare_and_write_rejects_wrong_data_out_size_and_too_many_blocks() {
        let lu = lu();
        let r = exec_out(&lu, &caw(0, 1), &[0; 3 * 512]).await;
        assert_check(&r, key::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_CDB);
        let r = exec_out(&lu, &caw(0, 1), &[0; 512]).await;
        assert_check(&r, key::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_CDB);
        let big = lu_with(4096, BS);
        let mut c = caw(0, 0);
        c[13] = 255;
        assert_good(&exec_out(&big, &c, &vec![0; 2 * 255 * 512]).await);
        assert_good(&exec(&lu, &caw(0, 0)).await);
        // Zero blocks with a block of data (libiscsi's DPO/FUA probe) is a no-op...
        assert_good(&exec_out(&lu, &caw(0, 0), &[0; 512]).await);
        // ...but data for 256 blocks (which wraps the one-byte field to 0) is refused.
        let r = exec_out(&big, &caw(0, 0), &vec![0; 2 * 256 * 512]).await;
        assert_check(&r, key::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_CDB);
    }

    #[tokio::test]
    async fn concurrent_compare_and_writes_on_one_block_succeed_exactly_once_each_step() {
        // Many initiators race to move a counter block from value v to v + 1 with
        // COMPARE AND WRITE; atomicity means exactly one wins per value.
        let lu = std::sync::Arc::new(lu());
        let block = |v: u8| vec![v; BS as usize];
        assert_good(&exec_out(&lu, &write10(0, 1, false), &block(0)).await);
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let lu = std::sync::Arc::clone(&lu);
            tasks.push(tokio::spawn(async move {
                let mut wins = 0u32;
                for v in 0..20u8 {
                    let buf = [block(v), block(v + 1)].concat();
                    let r = exec_out(&lu, &caw(0, 1), &buf).await;
                    if r.status == status::GOOD {
                        wins += 1;
                    }
                }
                wins
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        let r = exec(&lu, &read10(0, 1)).await;
        let final_value = r.data_in[0];
        assert_eq!(u32::from(final_value), total, "one win per increment");
        assert!(r.data_in.iter().all(|&b| b == final_value), "no torn block");
    }

    #[tokio::test]
    async fn write_atomic16_writes_whole_buffer_or_refuses() {
        let lu = lu();
        let mut c = rw16(0x9c, 7, 0);
        c[12..14].copy_from_slice(&2u16.to_be_bytes());
        let data = pattern(2 * BS as usize, 4);
        assert_good(&exec_out(&lu, &c, &data).await);
        assert_eq!(exec(&lu, &read10(7, 2)).await.data_in, data);
        let r = exec_out(&lu, &c, &data[..BS as usize]).await;
        assert_check(
            &r,
            key::ILLEGAL_REQUEST,
            Asc::INVALID_FIELD_IN_INFORMATION_UNIT,
        );
        c[11] = 1; // ATOMIC BOUNDARY
        let r = exec_out(&lu, &c, &data).await;
        assert_check(&r, key::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_CDB);
    }

    #[tokio::test]
    async fn start_stop_unit_rejects_eject_and_accepts_start_stop() {
        let lu = lu();
        let r = exec(&lu, &[0x1b, 1, 0, 0, 0x02, 0]).await;
        assert_check(&r, key::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_CDB);
        assert_good(&exec(&lu, &[0x1b, 0, 0, 0, 0x00, 0]).await);
        assert_good(&exec(&lu, &[0x1b, 0, 0, 0, 0x01, 0]).await);
        assert_good(&exec(&lu, &[0x1b, 0, 0, 0, 0x30, 0]).await);
        let r = exec(&lu, &[0x1b, 0, 0, 0, 0x40, 0]).await;
        assert_check(&r, key::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_CDB);
        // The unit stays ready after a stop.
        assert_good(&exec(&lu, &[0; 6]).await);
    }

    #[tokio::test]
    async fn read_defect_data_reports_empty_valid_lists() {
        let lu = lu();
        let r = exec(&lu, &[0x37, 0, 0x18 | 0x04, 0, 0, 0, 0, 0, 32, 0]).await;
        assert_good(&r);
        assert_eq!(&r.data_in[..], &[0, 0x1c, 0, 0]);
        let mut c = [0u8; 12];
        c[0] = 0xb7;
        c[9] = 32;
        let r = exec(&lu, &c).await;
        assert_good(&r);
        assert_eq!(&r.data_in[..], &[0; 8]);
        c[9] = 2;
        assert_eq!(exec(&lu, &c).await.data_in.len(), 2);
    }

    #[tokio::test]
    async fn prevent_allow_accepts_allow_and_prevent_only() {
        let lu = lu();
        assert_good(&exec(&lu, &[0x1e, 0, 0, 0, 0, 0]).await);
        assert_good(&exec(&lu, &[0x1e, 0, 0, 0, 1, 0]).await);
        let r = exec(&lu, &[0x1e, 0, 0, 0, 2, 0]).await;
        assert_check(&r, key::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_CDB);
    }
}
