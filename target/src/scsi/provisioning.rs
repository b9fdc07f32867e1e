//! Logical block provisioning (SBC-3 §4.7): UNMAP, WRITE SAME (with UNMAP) and GET
//! LBA STATUS.
//!
//! A thin volume deallocates through the store (fallocate PUNCH_HOLE in a file,
//! dropped chunks in memory); deallocated blocks read as zeros (LBPRZ = 1), and GET
//! LBA STATUS reports what the store really holds (SEEK_DATA / SEEK_HOLE, the chunk
//! map). A fully provisioned volume does not support UNMAP and reports every block
//! mapped. We do not support anchored blocks (ANC_SUP = 0).

use bytes::{Bytes, BytesMut};
use mosaic_proto::scsi::sense::{key, FieldPointer};
use mosaic_proto::scsi::{Asc, Sense, WriteSameCdb};

use super::{LogicalUnit, ScsiResult};

/// MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT (Block Limits VPD): bounds one UNMAP's
/// parameter list to 16 KiB of descriptors.
pub(super) const MAX_UNMAP_DESCRIPTORS: u32 = 1024;
/// MAXIMUM UNMAP LBA COUNT: FFFFFFFFh, no limit (SBC-3 §6.5.3); punching holes costs
/// the same whatever the length.
pub(super) const MAX_UNMAP_LBA_COUNT: u32 = u32::MAX;
/// MAXIMUM WRITE SAME LENGTH in bytes: bounds the time one WRITE SAME without UNMAP
/// spends writing (reported in blocks in the Block Limits VPD page).
pub(super) const MAX_WRITE_SAME_BYTES: u64 = 256 * 1024 * 1024;
/// WRITE SAME writes its pattern in pieces of at most this many bytes.
const WRITE_SAME_PIECE_BYTES: usize = 1024 * 1024;
/// GET LBA STATUS returns at most this many descriptors, however large the
/// allocation length.
const MAX_LBA_STATUS_DESCRIPTORS: u32 = 256;
/// UNMAP parameter list header (SBC-3 §5.28.2, Table 121).
const UNMAP_HEADER_LEN: usize = 8;
/// One UNMAP block descriptor (SBC-3 Table 122).
const UNMAP_DESCRIPTOR_LEN: usize = 16;
/// GET LBA STATUS parameter data header and descriptor (SBC-3 §5.7.2).
const LBA_STATUS_HEADER_LEN: usize = 8;
const LBA_STATUS_DESCRIPTOR_LEN: usize = 16;
/// PROVISIONING STATUS values (SBC-3 Table 53).
const STATUS_MAPPED: u8 = 0x0;
const STATUS_DEALLOCATED: u8 = 0x1;

impl LogicalUnit {
    /// MAXIMUM WRITE SAME LENGTH in blocks.
    pub(super) fn max_write_same_blocks(&self) -> u64 {
        MAX_WRITE_SAME_BYTES / u64::from(self.cfg.block_size)
    }

    /// UNMAP (SBC-3 §5.28). Checks the CDB and the whole parameter list before
    /// deallocating anything: a list shorter than its header is PARAMETER LIST LENGTH
    /// ERROR, too many descriptors or LBAs INVALID FIELD IN PARAMETER LIST, a range
    /// past the end LBA OUT OF RANGE. A truncated last descriptor is ignored. Each
    /// range is deallocated under the exclusive range lock.
    pub(super) async fn unmap(&self, anchor: bool, param_len: u16, data_out: Bytes) -> ScsiResult {
        let transfer_len = u32::from(param_len);
        if !self.opts.thin {
            // Fully provisioned: UNMAP is not supported (LBPU = 0).
            return ScsiResult::check(
                Sense::new(key::ILLEGAL_REQUEST, Asc::INVALID_COMMAND_OPERATION_CODE)
                    .with_field_pointer(FieldPointer {
                        in_cdb: true,
                        byte: 0,
                        bit: None,
                    }),
                transfer_len,
            );
        }
        if anchor {
            return ScsiResult::check(Sense::invalid_field_in_cdb(1, Some(0)), transfer_len);
        }
        if let Err(sense) = self.check_writable() {
            return ScsiResult::check(sense, transfer_len);
        }
        if param_len == 0 {
            return ScsiResult::ok(0);
        }
        let list = &data_out[..data_out.len().min(usize::from(param_len))];
        let ranges = match self.parse_unmap_list(list) {
            Ok(r) => r,
            Err(sense) => return ScsiResult::check(sense, transfer_len),
        };
        for (lba, blocks) in ranges {
            if blocks == 0 {
                continue;
            }
            let _range = self.locks.lock(lba, blocks, true).await;
            if let Err(sense) = self.deallocate(lba, blocks).await {
                return ScsiResult::check(sense, transfer_len);
            }
        }
        ScsiResult::ok(transfer_len)
    }

    /// The (LBA, blocks) ranges of an UNMAP parameter list, all checked.
    fn parse_unmap_list(&self, list: &[u8]) -> Result<Vec<(u64, u64)>, Sense> {
        if list.len() < UNMAP_HEADER_LEN {
            return Err(Sense::new(
                key::ILLEGAL_REQUEST,
                Asc::PARAMETER_LIST_LENGTH_ERROR,
            ));
        }
        let descriptor_bytes = usize::from(u16::from_be_bytes([list[2], list[3]]));
        let available = descriptor_bytes.min(list.len() - UNMAP_HEADER_LEN);
        let count = available / UNMAP_DESCRIPTOR_LEN;
        if count > MAX_UNMAP_DESCRIPTORS as usize {
            return Err(Sense::invalid_field_in_param(2, None));
        }
        let mut total: u64 = 0;
        let mut ranges = Vec::with_capacity(count);
        for i in 0..count {
            let at = UNMAP_HEADER_LEN + i * UNMAP_DESCRIPTOR_LEN;
            let d = &list[at..at + UNMAP_DESCRIPTOR_LEN];
            let lba = u64::from_be_bytes(d[0..8].try_into().unwrap_or_default());
            let blocks = u32::from_be_bytes(d[8..12].try_into().unwrap_or_default());
            self.check_range(lba, blocks)?;
            total += u64::from(blocks);
            if total > u64::from(MAX_UNMAP_LBA_COUNT) {
                return Err(Sense::invalid_field_in_param((at + 8) as u16, None));
            }
            ranges.push((lba, u64::from(blocks)));
        }
        Ok(ranges)
    }

    /// Deallocates `blocks` blocks at `lba`, durable when the write cache is off.
    async fn deallocate(&self, lba: u64, blocks: u64) -> Result<(), Sense> {
        let len = blocks * u64::from(self.cfg.block_size);
        if let Err(e) = self.store.deallocate(self.offset_of(lba), len).await {
            tracing::warn!(lu = %self.cfg.name, lba, error = %e, "deallocate failed");
            return Err(Sense::new(key::MEDIUM_ERROR, Asc::WRITE_ERROR).with_information(lba));
        }
        self.flush_if_needed(lba, false).await
    }

    /// WRITE SAME(10/16) (SBC-3 §5.42, §5.43): writes one block (zeros with NDOB) to
    /// every block of the range, or with UNMAP deallocates the range on a thin volume
    /// (which then reads as zeros, LBPRZ = 1). ANCHOR is not supported. A NUMBER OF
    /// LOGICAL BLOCKS of 0 means "to the last block" (WSNZ = 0); more blocks than
    /// MAXIMUM WRITE SAME LENGTH are refused. Without NDOB the Data-Out buffer must be
    /// exactly one block.
    pub(super) async fn write_same(
        &self,
        ws: WriteSameCdb,
        len_field: u16,
        data_out: Bytes,
    ) -> ScsiResult {
        let bs = self.cfg.block_size as usize;
        let transfer_len = if ws.ndob { 0 } else { self.cfg.block_size };
        if ws.anchor {
            // ANC_SUP = 0: ANCHOR is invalid with or without UNMAP.
            return ScsiResult::check(Sense::invalid_field_in_cdb(1, Some(4)), transfer_len);
        }
        if ws.unmap && !self.opts.thin {
            // LBPWS = LBPWS10 = 0 on a fully provisioned volume.
            return ScsiResult::check(Sense::invalid_field_in_cdb(1, Some(3)), transfer_len);
        }
        if let Err(sense) = self.check_range(ws.lba, ws.blocks) {
            return ScsiResult::check(sense, transfer_len);
        }
        // NUMBER OF LOGICAL BLOCKS 0: to the last block (WSNZ = 0).
        let blocks = match ws.blocks {
            0 => self.num_blocks - ws.lba,
            n => u64::from(n),
        };
        if blocks > self.max_write_same_blocks() {
            return ScsiResult::check(Sense::invalid_field_in_cdb(len_field, None), transfer_len);
        }
        if let Err(sense) = self.check_writable() {
            return ScsiResult::check(sense, transfer_len);
        }
        let block = if ws.ndob {
            Bytes::from(vec![0u8; bs])
        } else if data_out.len() == bs {
            data_out
        } else {
            return ScsiResult::check(Sense::invalid_field_in_cdb(len_field, None), transfer_len);
        };
        if blocks == 0 {
            return ScsiResult::ok(transfer_len);
        }
        let _range = self.locks.lock(ws.lba, blocks, true).await;
        let result = if ws.unmap {
            self.deallocate(ws.lba, blocks).await
        } else {
            self.write_pattern(ws.lba, blocks, &block).await
        };
        match result {
            Ok(()) => ScsiResult::ok(transfer_len),
            Err(sense) => ScsiResult::check(sense, transfer_len),
        }
    }

    /// Writes `block` to `blocks` consecutive blocks from `lba`, in pieces of at most
    /// [`WRITE_SAME_PIECE_BYTES`].
    async fn write_pattern(&self, lba: u64, blocks: u64, block: &[u8]) -> Result<(), Sense> {
        let per_piece = (WRITE_SAME_PIECE_BYTES / block.len()).max(1) as u64;
        let mut piece = BytesMut::with_capacity(block.len() * per_piece.min(blocks) as usize);
        for _ in 0..per_piece.min(blocks) {
            piece.extend_from_slice(block);
        }
        let piece = piece.freeze();
        let mut done = 0u64;
        while done < blocks {
            let n = per_piece.min(blocks - done);
            let data = piece.slice(..n as usize * block.len());
            let last = done + n == blocks;
            // Flush (if WCE = 0) once, after the last piece.
            if last {
                self.write_medium(lba + done, data, false).await?;
            } else if let Err(e) = self.store.write_at(self.offset_of(lba + done), data).await {
                tracing::warn!(lu = %self.cfg.name, lba = lba + done, error = %e, "write failed");
                return Err(
                    Sense::new(key::MEDIUM_ERROR, Asc::WRITE_ERROR).with_information(lba + done)
                );
            }
            done += n;
        }
        Ok(())
    }

    /// GET LBA STATUS (SBC-3 §5.7): descriptors of mapped / deallocated runs from
    /// `lba`, as many as fit the allocation length (at most
    /// [`MAX_LBA_STATUS_DESCRIPTORS`]) or until the end of the unit. A starting LBA
    /// past the last block is LBA OUT OF RANGE. A block only partly backed by storage
    /// counts as mapped. Status is reported per physical block: a starting LBA inside
    /// a physical block starts the report at the next one (as libiscsi's
    /// GetLBAStatus.UnmapSingle expects), unless that is past the end.
    pub(super) async fn get_lba_status(&self, lba: u64, alloc_len: u32) -> ScsiResult {
        if lba >= self.num_blocks {
            return ScsiResult::check(Sense::new(key::ILLEGAL_REQUEST, Asc::LBA_OUT_OF_RANGE), 0);
        }
        let lba = match lba.next_multiple_of(self.lbppb()) {
            aligned if aligned < self.num_blocks => aligned,
            _ => lba,
        };
        let fit =
            (alloc_len as usize).saturating_sub(LBA_STATUS_HEADER_LEN) / LBA_STATUS_DESCRIPTOR_LEN;
        let max = (fit as u32).clamp(1, MAX_LBA_STATUS_DESCRIPTORS);
        let bs = u64::from(self.cfg.block_size);
        let mut descriptors: Vec<(u64, u64, u8)> = Vec::new();
        let mut pos = lba;
        while pos < self.num_blocks && (descriptors.len() as u32) < max {
            let left = self.num_blocks - pos;
            let (status, run) = if self.opts.thin {
                match self.store.allocation(self.offset_of(pos), left * bs).await {
                    Ok((true, bytes)) => (STATUS_MAPPED, bytes.div_ceil(bs)),
                    Ok((false, bytes)) if bytes >= bs => (STATUS_DEALLOCATED, bytes / bs),
                    // A hole smaller than a block: the block is partly mapped.
                    Ok((false, _)) => (STATUS_MAPPED, 1),
                    Err(e) => {
                        tracing::warn!(lu = %self.cfg.name, lba = pos, error = %e, "allocation query failed");
                        return ScsiResult::check(
                            Sense::new(key::MEDIUM_ERROR, Asc::UNRECOVERED_READ_ERROR)
                                .with_information(pos),
                            0,
                        );
                    }
                }
            } else {
                (STATUS_MAPPED, left)
            };
            // NUMBER OF LOGICAL BLOCKS is 32 bits: longer runs take several descriptors.
            let run = run.clamp(1, left).min(u64::from(u32::MAX));
            match descriptors.last_mut() {
                Some(last) if last.2 == status && last.1 + run <= u64::from(u32::MAX) => {
                    last.1 += run
                }
                _ => descriptors.push((pos, run, status)),
            }
            pos += run;
        }
        let mut d = Vec::with_capacity(LBA_STATUS_HEADER_LEN + descriptors.len() * 16);
        // PARAMETER DATA LENGTH: the bytes after this field.
        let param_len = (4 + descriptors.len() * LBA_STATUS_DESCRIPTOR_LEN) as u32;
        d.extend_from_slice(&param_len.to_be_bytes());
        d.extend_from_slice(&[0; 4]);
        for (start, blocks, status) in descriptors {
            d.extend_from_slice(&start.to_be_bytes());
            d.extend_from_slice(&(blocks as u32).to_be_bytes());
            d.extend_from_slice(&[status, 0, 0, 0]);
        }
        ScsiResult::good_truncated(d, alloc_len as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::super::{BackingStore, LogicalUnit, LuOptions};
    use mosaic_proto::scsi::sense::key;
    use mosaic_proto::scsi::Asc;

    fn unmap_cdb(param_len: u16) -> [u8; 10] {
        let l = param_len.to_be_bytes();
        [0x42, 0, 0, 0, 0, 0, 0, l[0], l[1], 0]
    }

    fn unmap_list(ranges: &[(u64, u32)]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((6 + 16 * ranges.len()) as u16).to_be_bytes());
        v.extend_from_slice(&((16 * ranges.len()) as u16).to_be_bytes());
        v.extend_from_slice(&[0; 4]);
        for &(lba, n) in ranges {
            v.extend_from_slice(&lba.to_be_bytes());
            v.extend_from_slice(&n.to_be_bytes());
            v.extend_from_slice(&[0; 4]);
        }
        v
    }

    fn ws10(lba: u32, blocks: u16, flags: u8) -> [u8; 10] {
        let mut c = read10(lba, blocks);
        c[0] = 0x41;
        c[1] = flags;
        c
    }

    fn get_lba_status(lba: u64, alloc: u32) -> [u8; 16] {
        let mut c = rw16(0x9e, lba, alloc);
        c[1] = 0x12;
        c
    }

    /// (lba, blocks, status) of each GET LBA STATUS descriptor.
    fn descriptors(d: &[u8]) -> Vec<(u64, u32, u8)> {
        d[8..]
            .chunks_exact(16)
            .map(|x| {
                (
                    u64::from_be_bytes(x[0..8].try_into().unwrap()),
                    u32::from_be_bytes(x[8..12].try_into().unwrap()),
                    x[12] & 0x0f,
                )
            })
            .collect()
    }

    async fn fill(lu: &LogicalUnit, lba: u32, blocks: u16, byte: u8) {
        let data = vec![byte; blocks as usize * BS as usize];
        assert_good(&exec_out(lu, &write10(lba, blocks, false), &data).await);
    }

    #[tokio::test]
    async fn unmap_deallocates_and_reads_back_zeros() {
        let lu = lu();
        fill(&lu, 0, 256, 0xaa).await;
        let list = unmap_list(&[(8, 16), (100, 1)]);
        let r = exec_out(&lu, &unmap_cdb(list.len() as u16), &list).await;
        assert_good(&r);
        let d = exec(&lu, &read10(0, 256)).await.data_in;
        for (i, block) in d.chunks(BS as usize).enumerate() {
            let zero = (8..24).contains(&i) || i == 100;
            let want = if zero { 0 } else { 0xaa };
            assert!(block.iter().all(|&b| b == want), "block {i}");
        }
    }

    #[tokio::test]
    async fn unmap_of_whole_chunks_frees_memory() {
        let store = BackingStore::memory(BLOCKS * u64::from(BS));
        let lu = LogicalUnit::new(cfg(BS), store.clone()).unwrap();
        fill(&lu, 0, 1024, 1).await;
        let BackingStore::Memory(m) = &store else {
            unreachable!()
        };
        assert_eq!(m.allocated_bytes(), 1024 * 512);
        let list = unmap_list(&[(0, 1024)]);
        assert_good(&exec_out(&lu, &unmap_cdb(list.len() as u16), &list).await);
        assert_eq!(m.allocated_bytes(), 0);
    }

    #[tokio::test]
    async fn unmap_parameter_list_errors() {
        let lu = lu();
        // No parameter list at all: nothing to do.
        assert_good(&exec(&lu, &unmap_cdb(0)).await);
        // Shorter than the header.
        let r = exec_out(&lu, &unmap_cdb(4), &[0, 2, 0, 0]).await;
        assert_check(&r, key::ILLEGAL_REQUEST, Asc::PARAMETER_LIST_LENGTH_ERROR);
        // A range past the end: nothing is unmapped.
        fill(&lu, 0, 1, 0x11).await;
        let list = unmap_list(&[(0, 1), (BLOCKS - 1, 2)]);
        let r = exec_out(&lu, &unmap_cdb(list.len() as u16), &list).await;
        assert_check(&r, key::ILLEGAL_REQUEST, Asc::LBA_OUT_OF_RANGE);
        assert_eq!(exec(&lu, &read10(0, 1)).await.data_in[0], 0x11);
        // Too many descriptors.
        let many: Vec<(u64, u32)> = (0..1025).map(|i| (i, 0)).collect();
        let list = unmap_list(&many);
        let r = exec_out(&lu, &unmap_cdb(list.len() as u16), &list).await;
        assert_check(
            &r,
            key::ILLEGAL_REQUEST,
            Asc::INVALID_FIELD_IN_PARAMETER_LIST,
        );
        // ANCHOR without ANC_SUP.
        let mut c = unmap_cdb(24);
        c[1] = 1;
        let r = exec_out(&lu, &c, &unmap_list(&[(0, 1)])).await;
        assert_check(&r, key::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_CDB);
    }

    #[tokio::test]
    async fn unmap_ignores_a_truncated_last_descriptor_and_zero_length_ranges() {
        let lu = lu();
        fill(&lu, 0, 4, 0x22).await;
        let mut list = unmap_list(&[(1, 1), (2, 1)]);
        list.truncate(8 + 16 + 10);
        let r = exec_out(&lu, &unmap_cdb(list.len() as u16), &list).await;
        assert_good(&r);
        let d = exec(&lu, &read10(0, 4)).await.data_in;
        assert_eq!((d[0], d[512], d[1024]), (0x22, 0, 0x22));
        let list = unmap_list(&[(BLOCKS, 0), (3, 0)]);
        assert_good(&exec_out(&lu, &unmap_cdb(list.len() as u16), &list).await);
    }

    #[tokio::test]
    async fn unmap_on_thick_volume_is_not_supported() {
        let lu = thick_lu();
        let list = unmap_list(&[(0, 1)]);
        let r = exec_out(&lu, &unmap_cdb(list.len() as u16), &list).await;
        assert_check(
            &r,
            key::ILLEGAL_REQUEST,
            Asc::INVALID_COMMAND_OPERATION_CODE,
        );
    }

    #[tokio::test]
    async fn write_same_writes_the_block_everywhere() {
        let lu = lu();
        let block = pattern(BS as usize, 7);
        let r = exec_out(&lu, &ws10(10, 300, 0), &block).await;
        assert_good(&r);
        assert_eq!(r.transfer_len, BS);
        let d = exec(&lu, &read10(9, 302)).await.data_in;
        assert!(d[..512].iter().all(|&b| b == 0));
        for b in d[512..301 * 512].chunks(512) {
            assert_eq!(b, &block[..]);
        }
        assert!(d[301 * 512..].iter().all(|&b| b == 0));
    }

    #[tokio::test]
    async fn write_same_with_unmap_deallocates_whatever_the_data() {
        let lu = lu();
        fill(&lu, 0, 64, 0xff).await;
        assert_good(&exec_out(&lu, &ws10(0, 64, 0x08), &[0xff; 512]).await);
        assert!(exec(&lu, &read10(0, 64))
            .await
            .data_in
            .iter()
            .all(|&b| b == 0));
    }

    #[tokio::test]
    async fn write_same_zero_blocks_reaches_the_last_block() {
        let lu = lu();
        assert_good(&exec_out(&lu, &ws10(BLOCKS as u32 - 3, 0, 0), &[5; 512]).await);
        let d = exec(&lu, &read10(BLOCKS as u32 - 4, 4)).await.data_in;
        assert!(d[..512].iter().all(|&b| b == 0));
        assert!(d[512..].iter().all(|&b| b == 5));
    }

    #[tokio::test]
    async fn write_same_16_ndob_writes_zeros_without_data() {
        let lu = lu();
        fill(&lu, 0, 4, 0x33).await;
        let mut c = rw16(0x93, 1, 2);
        c[1] = 0x01;
        let r = exec(&lu, &c).await;
        assert_good(&r);
        assert_eq!(r.transfer_len, 0);
        let d = exec(&lu, &read10(0, 4)).await.data_in;
        assert_eq!((d[0], d[512], d[1024], d[1536]), (0x33, 0, 0, 0x33));
    }

    #[tokio::test]
    async fn write_same_refusals() {
        let lu = lu();
        let one = [0u8; 512];
        let cases: [(&[u8], [u8; 10], Asc); 5] = [
            // ANCHOR alone, and ANCHOR with UNMAP (no ANC_SUP).
            (&one, ws10(0, 1, 0x10), Asc::INVALID_FIELD_IN_CDB),
            (&one, ws10(0, 1, 0x18), Asc::INVALID_FIELD_IN_CDB),
            // Data-Out not exactly one block.
            (&one[..256], ws10(0, 1, 0), Asc::INVALID_FIELD_IN_CDB),
            (&[0u8; 1024], ws10(0, 1, 0), Asc::INVALID_FIELD_IN_CDB),
            (&one, ws10(BLOCKS as u32, 1, 0), Asc::LBA_OUT_OF_RANGE),
        ];
        for (data, cdb, asc) in cases {
            let r = exec_out(&lu, &cdb, data).await;
            assert_check(&r, key::ILLEGAL_REQUEST, asc);
        }
        let r = exec_out(&thick_lu(), &ws10(0, 1, 0x08), &one).await;
        assert_check(&r, key::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_CDB);
        let big = lu_with(1 << 20, BS);
        let mut c = rw16(0x93, 0, (1 << 19) + 1);
        c[1] = 0x01;
        let r = exec(&big, &c).await;
        assert_check(&r, key::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_CDB);
    }

    #[tokio::test]
    async fn get_lba_status_reports_mapped_and_deallocated_runs() {
        let lu = lu();
        // Chunks are 64 KiB = 128 blocks: map chunk 1 only.
        fill(&lu, 128, 128, 1).await;
        let r = exec(&lu, &get_lba_status(0, 1024)).await;
        assert_good(&r);
        let d = descriptors(&r.data_in);
        assert_eq!(
            d,
            vec![(0, 128, 1), (128, 128, 0), (256, BLOCKS as u32 - 256, 1)]
        );
        let len = u32::from_be_bytes(r.data_in[0..4].try_into().unwrap());
        assert_eq!(len as usize, 4 + 16 * 3);
        // Starting inside the mapped run.
        let r = exec(&lu, &get_lba_status(200, 24)).await;
        assert_eq!(r.data_in.len(), 24);
        assert_eq!(descriptors(&r.data_in), vec![(200, 56, 0)]);
    }

    #[tokio::test]
    async fn get_lba_status_beyond_the_end_is_lba_out_of_range() {
        let lu = lu();
        for lba in [BLOCKS, BLOCKS + 1, 1 << 63, u64::MAX] {
            let r = exec(&lu, &get_lba_status(lba, 24)).await;
            assert_check(&r, key::ILLEGAL_REQUEST, Asc::LBA_OUT_OF_RANGE);
        }
        assert_good(&exec(&lu, &get_lba_status(BLOCKS - 1, 24)).await);
    }

    #[tokio::test]
    async fn get_lba_status_on_thick_volume_is_all_mapped() {
        let r = exec(&thick_lu(), &get_lba_status(8, 64)).await;
        assert_good(&r);
        assert_eq!(descriptors(&r.data_in), vec![(8, BLOCKS as u32 - 8, 0)]);
    }

    #[tokio::test]
    async fn get_lba_status_reports_whole_physical_blocks() {
        let lu = lu();
        fill(&lu, 128, 128, 1).await;
        // 512-byte blocks, 8 per physical block: LBA 129 reports from 136.
        let r = exec(&lu, &get_lba_status(129, 24)).await;
        assert_eq!(descriptors(&r.data_in), vec![(136, 120, 0)]);
        // In the last physical block: from the requested LBA.
        let r = exec(&lu, &get_lba_status(BLOCKS - 3, 24)).await;
        assert_eq!(descriptors(&r.data_in), vec![(BLOCKS - 3, 3, 1)]);
    }

    #[tokio::test]
    async fn file_backed_unmap_punches_holes_seen_by_get_lba_status() {
        let dir = tempfile::tempdir().unwrap();
        let store = BackingStore::open_file(&dir.path().join("vol"), 1 << 20).unwrap();
        let lu = LogicalUnit::with_options(cfg(BS), store, LuOptions::default()).unwrap();
        fill(&lu, 0, 2048, 0x44).await;
        let r = exec(&lu, &get_lba_status(0, 24)).await;
        assert_eq!(descriptors(&r.data_in), vec![(0, 2048, 0)]);
        // 256 KiB aligned: whole filesystem blocks become a hole.
        let list = unmap_list(&[(512, 512)]);
        assert_good(&exec_out(&lu, &unmap_cdb(list.len() as u16), &list).await);
        let r = exec(&lu, &get_lba_status(0, 1024)).await;
        assert_eq!(
            descriptors(&r.data_in),
            vec![(0, 512, 0), (512, 512, 1), (1024, 1024, 0)]
        );
        let d = exec(&lu, &read10(511, 2)).await.data_in;
        assert_eq!((d[0], d[512]), (0x44, 0));
    }
}
