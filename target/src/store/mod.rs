//! Backing stores for logical units: a sparse file or sparse memory, behind one enum
//! (the Firecracker block device's shape: one type, one match per operation, no trait
//! objects).
//!
//! Every operation is positional and takes `&self`, so one store is shared by all
//! sessions through the logical unit. File I/O runs on tokio's blocking pool, never on
//! the runtime's worker threads. Errors are typed and returned, never panics: the
//! logical unit turns them into MEDIUM ERROR sense.

mod file;
mod memory;

pub use file::FileStore;
pub use memory::MemoryStore;

use std::path::{Path, PathBuf};

use std::sync::Arc;

use bytes::Bytes;

use crate::cluster::store::{ClusterIoError, ClusterStore};

/// Errors of the store layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backing file could not be opened, created or sized.
    #[error("cannot open backing file {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The backing file is larger than the configured volume; we never shrink a volume,
    /// because that would destroy data.
    #[error(
        "backing file {path} is {existing} bytes, larger than the configured {requested}; \
         refusing to shrink it"
    )]
    WouldShrink {
        path: PathBuf,
        existing: u64,
        requested: u64,
    },
    /// A read-only backing file does not have the configured size (a read-only volume
    /// is never created or resized).
    #[error("backing file {path} is {existing} bytes, not the configured {requested}")]
    SizeMismatch {
        path: PathBuf,
        existing: u64,
        requested: u64,
    },
    /// The request reaches past the end of the store.
    #[error("I/O at offset {offset} length {len} is beyond the store size {size}")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    /// The operating system failed a read, write or flush.
    #[error("{op} at offset {offset} failed: {source}")]
    Io {
        op: &'static str,
        offset: u64,
        #[source]
        source: std::io::Error,
    },
    /// The blocking task that ran the I/O died (panicked or was cancelled at shutdown).
    #[error("blocking I/O task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// A clustered volume's piece failed at this node or a peer.
    #[error("cluster: {0}")]
    Cluster(String),
}

fn cluster_err(e: ClusterIoError) -> StoreError {
    match e {
        ClusterIoError::Store(s) => s,
        other => StoreError::Cluster(other.to_string()),
    }
}

/// A logical unit's backing store.
#[derive(Debug, Clone)]
pub enum BackingStore {
    /// A sparse file, accessed with pread/pwrite.
    File(FileStore),
    /// Sparse memory, for tests and scratch volumes.
    Memory(MemoryStore),
    /// A volume spread over the cluster's nodes by pages (see `cluster::store`). Its
    /// futures are boxed: the pages a node holds live in a `BackingStore` too.
    Cluster(Arc<ClusterStore>),
}

impl BackingStore {
    /// Opens (or creates, sparse) a backing file of `size_bytes`. An existing smaller
    /// file is grown with `set_len` (the new part reads as zeros); a larger one is
    /// refused with [`StoreError::WouldShrink`].
    pub fn open_file(path: &Path, size_bytes: u64) -> Result<BackingStore, StoreError> {
        FileStore::open(path, size_bytes).map(BackingStore::File)
    }

    /// Opens an existing backing file of exactly `size_bytes` for reading only, for a
    /// read-only volume.
    pub fn open_file_read_only(path: &Path, size_bytes: u64) -> Result<BackingStore, StoreError> {
        FileStore::open_read_only(path, size_bytes).map(BackingStore::File)
    }

    /// A zero-filled in-memory store of `size_bytes`; memory is allocated only for
    /// chunks that are written.
    pub fn memory(size_bytes: u64) -> BackingStore {
        BackingStore::Memory(MemoryStore::new(size_bytes))
    }

    /// The same data at `size_bytes` (a volume resized at run time): a file is grown
    /// or truncated, memory shares its chunks. The result shares the data with
    /// `self`, which keeps its old size. A clustered store is resized by its
    /// node instead (`cluster::volumes`), and refused here.
    pub fn resized(&self, size_bytes: u64) -> Result<BackingStore, StoreError> {
        match self {
            BackingStore::File(f) => f.resized(size_bytes).map(BackingStore::File),
            BackingStore::Memory(m) => Ok(BackingStore::Memory(m.resized(size_bytes))),
            BackingStore::Cluster(_) => Err(StoreError::Cluster(
                "a clustered volume is resized through the routing table".into(),
            )),
        }
    }

    /// Size of the store in bytes.
    pub fn len(&self) -> u64 {
        match self {
            BackingStore::File(f) => f.len(),
            BackingStore::Memory(m) => m.len(),
            BackingStore::Cluster(c) => c.len(),
        }
    }

    /// True for a zero-byte store.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The unit in which space is allocated and freed, in bytes: a filesystem block
    /// (its preferred I/O size) for a file, a chunk for memory. Reported as OPTIMAL
    /// UNMAP GRANULARITY.
    pub fn allocation_unit(&self) -> u64 {
        match self {
            BackingStore::File(f) => f.block_size(),
            BackingStore::Memory(_) => memory::CHUNK_SIZE as u64,
            BackingStore::Cluster(_) => memory::CHUNK_SIZE as u64,
        }
    }

    /// Reads `len` bytes at `offset`. Parts that were never written read as zeros.
    pub async fn read_at(&self, offset: u64, len: usize) -> Result<Bytes, StoreError> {
        check_range(offset, len as u64, self.len())?;
        match self {
            BackingStore::File(f) => f.read_at(offset, len).await,
            BackingStore::Memory(m) => Ok(m.read_at(offset, len)),
            BackingStore::Cluster(c) => Box::pin(c.read_at(offset, len)).await.map_err(cluster_err),
        }
    }

    /// Writes `data` at `offset`.
    pub async fn write_at(&self, offset: u64, data: Bytes) -> Result<(), StoreError> {
        check_range(offset, data.len() as u64, self.len())?;
        match self {
            BackingStore::File(f) => f.write_at(offset, data).await,
            BackingStore::Memory(m) => {
                m.write_at(offset, &data);
                Ok(())
            }
            BackingStore::Cluster(c) => Box::pin(c.write_at(offset, data, false))
                .await
                .map_err(cluster_err),
        }
    }

    /// COMPARE AND WRITE (SBC-4 §5.3): if the medium at `offset` equals `compare`,
    /// writes `write` there (same length) and returns `None`; otherwise writes
    /// nothing and returns the offset of the first differing byte. Local stores
    /// rely on the caller's range lock for atomicity; a clustered volume runs it at
    /// the page's primary, under the lock that orders every write to the page.
    pub async fn compare_and_write(
        &self,
        offset: u64,
        compare: Bytes,
        write: Bytes,
    ) -> Result<Option<usize>, StoreError> {
        check_range(offset, compare.len() as u64, self.len())?;
        if let BackingStore::Cluster(c) = self {
            return Box::pin(c.compare_and_write(offset, compare, write))
                .await
                .map(|at| at.map(|at| at as usize))
                .map_err(cluster_err);
        }
        let medium = self.read_at(offset, compare.len()).await?;
        if let Some(at) = medium.iter().zip(compare.iter()).position(|(a, b)| a != b) {
            return Ok(Some(at));
        }
        self.write_at(offset, write).await?;
        Ok(None)
    }

    /// ORWRITE (SBC-4 §5.9): `[offset, offset + data.len())` becomes the bitwise OR
    /// of its contents and `data`. Local stores rely on the caller's range lock; a
    /// clustered volume runs it at each page's primary, under the lock that orders
    /// every write to the page.
    pub async fn or_write(&self, offset: u64, data: Bytes) -> Result<(), StoreError> {
        check_range(offset, data.len() as u64, self.len())?;
        if let BackingStore::Cluster(c) = self {
            return Box::pin(c.or_write(offset, data))
                .await
                .map_err(cluster_err);
        }
        let mut merged = bytes::BytesMut::from(&self.read_at(offset, data.len()).await?[..]);
        for (m, d) in merged.iter_mut().zip(data.iter()) {
            *m |= d;
        }
        self.write_at(offset, merged.freeze()).await
    }

    /// Deallocates `[offset, offset + len)` (UNMAP, WRITE SAME with UNMAP): the range
    /// reads back as zeros afterwards, and whole allocation units are freed (holes
    /// punched in a file, chunks dropped in memory).
    pub async fn deallocate(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        check_range(offset, len, self.len())?;
        if len == 0 {
            return Ok(());
        }
        match self {
            BackingStore::File(f) => f.deallocate(offset, len).await,
            BackingStore::Memory(m) => {
                m.deallocate(offset, len);
                Ok(())
            }
            BackingStore::Cluster(c) => Box::pin(c.deallocate(offset, len))
                .await
                .map_err(cluster_err),
        }
    }

    /// Whether the byte at `offset` is allocated, and the length of the run from
    /// `offset` (at most `len`, at least 1 when `len` > 0) that shares its state
    /// (GET LBA STATUS).
    pub async fn allocation(&self, offset: u64, len: u64) -> Result<(bool, u64), StoreError> {
        check_range(offset, len, self.len())?;
        if len == 0 {
            return Ok((true, 0));
        }
        match self {
            BackingStore::File(f) => f.allocation(offset, len).await,
            BackingStore::Memory(m) => Ok(m.allocation(offset, len)),
            BackingStore::Cluster(c) => Box::pin(c.allocation(offset, len))
                .await
                .map_err(cluster_err),
        }
    }

    /// Hints that `[offset, offset + len)` will be read soon (PRE-FETCH).
    pub async fn prefetch(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        check_range(offset, len, self.len())?;
        match self {
            BackingStore::File(f) => f.prefetch(offset, len).await,
            // Memory is always "cached"; a clustered volume's owners cache their pages.
            BackingStore::Memory(_) | BackingStore::Cluster(_) => Ok(()),
        }
    }

    /// Allocates the whole store up front, for a fully provisioned (thick) volume.
    /// Returns whether anything was preallocated: a memory store allocates on write,
    /// and a filesystem without fallocate stays sparse. Blocking; call at startup.
    pub fn preallocate(&self) -> Result<bool, StoreError> {
        match self {
            BackingStore::File(f) => f.preallocate(),
            BackingStore::Memory(_) | BackingStore::Cluster(_) => Ok(false),
        }
    }

    /// Makes every completed write durable (fdatasync for a file; nothing for memory).
    pub async fn flush(&self) -> Result<(), StoreError> {
        match self {
            BackingStore::File(f) => f.flush().await,
            BackingStore::Memory(m) => {
                m.flush();
                Ok(())
            }
            BackingStore::Cluster(c) => Box::pin(c.flush()).await.map_err(cluster_err),
        }
    }
}

/// Checks that `[offset, offset + len)` lies inside a store of `size` bytes.
fn check_range(offset: u64, len: u64, size: u64) -> Result<(), StoreError> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(StoreError::OutOfRange { offset, len, size }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_and_file_stores_behave_alike() {
        let dir = tempfile::tempdir().unwrap();
        let stores = [
            BackingStore::memory(1 << 20),
            BackingStore::open_file(&dir.path().join("vol"), 1 << 20).unwrap(),
        ];
        for s in stores {
            assert_eq!(s.len(), 1 << 20);
            assert!(!s.is_empty());
            let data = Bytes::from((0..10_000u32).map(|i| i as u8).collect::<Vec<_>>());
            s.write_at(4095, data.clone()).await.unwrap();
            assert_eq!(s.read_at(4095, data.len()).await.unwrap(), data);
            assert_eq!(s.read_at(0, 4095).await.unwrap(), vec![0u8; 4095]);
            s.flush().await.unwrap();
        }
    }

    #[tokio::test]
    async fn both_stores_deallocate_to_zeros_and_report_allocation() {
        let dir = tempfile::tempdir().unwrap();
        let stores = [
            BackingStore::memory(1 << 20),
            BackingStore::open_file(&dir.path().join("vol"), 1 << 20).unwrap(),
        ];
        for s in stores {
            s.write_at(0, Bytes::from(vec![9u8; 1 << 20]))
                .await
                .unwrap();
            let (mapped, run) = s.allocation(0, 1 << 20).await.unwrap();
            assert!(mapped);
            assert_eq!(run, 1 << 20);
            s.deallocate(0, 1 << 19).await.unwrap();
            assert_eq!(s.read_at(0, 1 << 19).await.unwrap(), vec![0u8; 1 << 19]);
            assert_eq!(s.read_at(1 << 19, 4).await.unwrap(), vec![9u8; 4]);
            let (mapped, run) = s.allocation(0, 1 << 20).await.unwrap();
            assert!(!mapped);
            assert_eq!(run, 1 << 19);
            s.prefetch(0, 4096).await.unwrap();
        }
    }

    #[tokio::test]
    async fn deallocate_past_the_end_is_out_of_range() {
        let s = BackingStore::memory(4096);
        assert!(matches!(
            s.deallocate(4000, 100).await,
            Err(StoreError::OutOfRange { .. })
        ));
        assert!(matches!(
            s.allocation(4096, 1).await,
            Err(StoreError::OutOfRange { .. })
        ));
    }

    #[tokio::test]
    async fn io_past_the_end_is_out_of_range() {
        let s = BackingStore::memory(4096);
        assert!(matches!(
            s.read_at(4000, 100).await,
            Err(StoreError::OutOfRange { .. })
        ));
        assert!(matches!(
            s.write_at(u64::MAX, Bytes::from_static(b"x")).await,
            Err(StoreError::OutOfRange { .. })
        ));
        assert_eq!(s.read_at(4096, 0).await.unwrap().len(), 0);
    }
}
