//! A sparse in-memory store: fixed-size chunks allocated on first write, so a large
//! volume costs only what has been written.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use parking_lot::RwLock;

/// Allocation unit of the memory store. 64 KiB keeps the chunk map small for large
/// volumes while a 4 KiB write costs at most 64 KiB.
pub(super) const CHUNK_SIZE: usize = 64 * 1024;

/// Sparse memory. Clones share the same data.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    size: u64,
    /// Chunk index -> chunk bytes; a missing chunk reads as zeros. One lock makes each
    /// write atomic with respect to reads.
    chunks: Arc<RwLock<HashMap<u64, Box<[u8]>>>>,
    /// Flush requests seen: memory is never more durable, but callers (and tests)
    /// can see that a flush was asked for (FUA, WCE = 0, SYNCHRONIZE CACHE).
    flushes: Arc<AtomicU64>,
}

impl MemoryStore {
    /// A zero-filled store of `size` bytes with nothing allocated.
    pub fn new(size: u64) -> MemoryStore {
        MemoryStore {
            size,
            chunks: Arc::new(RwLock::new(HashMap::new())),
            flushes: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The same memory at `size` bytes (a volume resized at run time), sharing the
    /// chunks with this store. Shrinking frees what lies past the new end, so a
    /// later growth reads zeros there.
    pub fn resized(&self, size: u64) -> MemoryStore {
        if size < self.size {
            self.deallocate(size, self.size - size);
        }
        MemoryStore {
            size,
            chunks: Arc::clone(&self.chunks),
            flushes: Arc::clone(&self.flushes),
        }
    }

    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.size
    }

    /// True for a zero-byte store.
    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// Number of flushes requested so far.
    pub fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }

    /// Records a flush request (there is nothing to write back).
    pub(super) fn flush(&self) {
        self.flushes.fetch_add(1, Ordering::Relaxed);
    }

    /// Bytes of chunk memory allocated so far.
    pub fn allocated_bytes(&self) -> u64 {
        (self.chunks.read().len() * CHUNK_SIZE) as u64
    }

    /// Reads `len` bytes at `offset`; the caller has checked the range.
    pub(super) fn read_at(&self, offset: u64, len: usize) -> Bytes {
        let mut out = BytesMut::zeroed(len);
        let chunks = self.chunks.read();
        for_each_piece(offset, len, |index, in_chunk, in_buf, n| {
            if let Some(chunk) = chunks.get(&index) {
                out[in_buf..in_buf + n].copy_from_slice(&chunk[in_chunk..in_chunk + n]);
            }
        });
        out.freeze()
    }

    /// Deallocates `[offset, offset + len)`: whole chunks are dropped, the partial
    /// chunks at either end are zeroed (so the range always reads back as zeros).
    pub(super) fn deallocate(&self, offset: u64, len: u64) {
        let mut chunks = self.chunks.write();
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            let index = pos / CHUNK_SIZE as u64;
            let in_chunk = (pos % CHUNK_SIZE as u64) as usize;
            let n = ((CHUNK_SIZE - in_chunk) as u64).min(end - pos) as usize;
            if n == CHUNK_SIZE {
                chunks.remove(&index);
            } else if let Some(chunk) = chunks.get_mut(&index) {
                chunk[in_chunk..in_chunk + n].fill(0);
                if chunk.iter().all(|&b| b == 0) {
                    chunks.remove(&index);
                }
            }
            pos += n as u64;
        }
    }

    /// Whether the byte at `offset` is backed by allocated memory, and how many bytes
    /// from `offset` (at most `len`) share that state. Allocation has chunk
    /// granularity.
    pub(super) fn allocation(&self, offset: u64, len: u64) -> (bool, u64) {
        let chunks = self.chunks.read();
        let chunk = CHUNK_SIZE as u64;
        let end = offset + len;
        let mapped = chunks.contains_key(&(offset / chunk));
        let mut pos = (offset / chunk + 1) * chunk;
        while pos < end && chunks.contains_key(&(pos / chunk)) == mapped {
            pos += chunk;
        }
        (mapped, pos.min(end) - offset)
    }

    /// Writes `data` at `offset`; the caller has checked the range.
    pub(super) fn write_at(&self, offset: u64, data: &[u8]) {
        let mut chunks = self.chunks.write();
        for_each_piece(offset, data.len(), |index, in_chunk, in_buf, n| {
            let chunk = chunks
                .entry(index)
                .or_insert_with(|| vec![0u8; CHUNK_SIZE].into_boxed_slice());
            chunk[in_chunk..in_chunk + n].copy_from_slice(&data[in_buf..in_buf + n]);
        });
    }
}

/// Splits `[offset, offset + len)` at chunk boundaries and calls
/// `f(chunk index, offset in chunk, offset in buffer, length)` for each piece.
fn for_each_piece(offset: u64, len: usize, mut f: impl FnMut(u64, usize, usize, usize)) {
    let mut done = 0usize;
    while done < len {
        let pos = offset + done as u64;
        let index = pos / CHUNK_SIZE as u64;
        let in_chunk = (pos % CHUNK_SIZE as u64) as usize;
        let n = (CHUNK_SIZE - in_chunk).min(len - done);
        f(index, in_chunk, done, n);
        done += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_gib_volume_allocates_nothing_up_front() {
        let m = MemoryStore::new(1 << 30);
        assert_eq!(m.allocated_bytes(), 0);
        assert_eq!(m.read_at((1 << 30) - 512, 512), vec![0u8; 512]);
        assert_eq!(m.allocated_bytes(), 0, "reads do not allocate");
    }

    #[test]
    fn write_allocates_only_touched_chunks() {
        let m = MemoryStore::new(1 << 30);
        m.write_at(CHUNK_SIZE as u64 - 1, &[7, 8]);
        assert_eq!(m.allocated_bytes(), 2 * CHUNK_SIZE as u64);
        assert_eq!(m.read_at(CHUNK_SIZE as u64 - 2, 4), vec![0, 7, 8, 0]);
    }

    #[test]
    fn write_spanning_many_chunks_reads_back() {
        let m = MemoryStore::new(1 << 22);
        let data: Vec<u8> = (0..3 * CHUNK_SIZE + 17).map(|i| (i % 251) as u8).collect();
        m.write_at(1000, &data);
        assert_eq!(m.read_at(1000, data.len()), data);
    }

    #[test]
    fn a_resized_store_keeps_its_data_and_a_shrink_forgets_the_tail() {
        let c = CHUNK_SIZE as u64;
        let m = MemoryStore::new(4 * c);
        m.write_at(0, &vec![0xaa; 4 * CHUNK_SIZE]);
        let grown = m.resized(8 * c);
        assert_eq!(grown.len(), 8 * c);
        assert_eq!(m.len(), 4 * c, "the old store keeps its size");
        assert!(grown.read_at(0, 4 * CHUNK_SIZE).iter().all(|&b| b == 0xaa));
        assert!(grown.read_at(4 * c, CHUNK_SIZE).iter().all(|&b| b == 0));
        let shrunk = grown.resized(c + c / 2);
        let regrown = shrunk.resized(4 * c);
        let data = regrown.read_at(0, 4 * CHUNK_SIZE);
        let cut = CHUNK_SIZE + CHUNK_SIZE / 2;
        assert!(data[..cut].iter().all(|&b| b == 0xaa), "kept below the cut");
        assert!(data[cut..].iter().all(|&b| b == 0), "zeros past the cut");
    }

    #[test]
    fn deallocate_drops_whole_chunks_and_zeroes_partial_ones() {
        let c = CHUNK_SIZE as u64;
        let m = MemoryStore::new(8 * c);
        m.write_at(0, &vec![0xaa; 4 * CHUNK_SIZE]);
        m.deallocate(c / 2, 2 * c);
        assert_eq!(m.allocated_bytes(), 3 * c, "chunk 1 dropped, 0 and 2 kept");
        let data = m.read_at(0, 4 * CHUNK_SIZE);
        assert!(data[..CHUNK_SIZE / 2].iter().all(|&b| b == 0xaa));
        assert!(data[CHUNK_SIZE / 2..5 * CHUNK_SIZE / 2]
            .iter()
            .all(|&b| b == 0));
        assert!(data[5 * CHUNK_SIZE / 2..].iter().all(|&b| b == 0xaa));
    }

    #[test]
    fn deallocating_all_data_of_a_chunk_frees_it() {
        let m = MemoryStore::new(CHUNK_SIZE as u64);
        m.write_at(100, &[1, 2, 3]);
        m.deallocate(64, 512);
        assert_eq!(m.allocated_bytes(), 0);
    }

    #[test]
    fn allocation_reports_runs_of_chunks() {
        let c = CHUNK_SIZE as u64;
        let m = MemoryStore::new(10 * c);
        m.write_at(2 * c, &vec![1; 2 * CHUNK_SIZE]);
        assert_eq!(m.allocation(0, 10 * c), (false, 2 * c));
        assert_eq!(m.allocation(c + 5, 10), (false, 10));
        assert_eq!(m.allocation(2 * c + 7, 8 * c - 7), (true, 2 * c - 7));
        assert_eq!(m.allocation(4 * c, 6 * c), (false, 6 * c));
    }

    #[test]
    fn clones_share_data() {
        let a = MemoryStore::new(4096);
        let b = a.clone();
        a.write_at(0, b"abc");
        assert_eq!(b.read_at(0, 3), &b"abc"[..]);
    }
}
