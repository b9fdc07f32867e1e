//! A sparse file store: positional reads and writes (pread/pwrite through
//! `std::os::unix::fs::FileExt`) on tokio's blocking pool.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use bytes::{Bytes, BytesMut};

use super::StoreError;

/// A backing file. Clones share the same open file.
#[derive(Debug, Clone)]
pub struct FileStore {
    file: Arc<File>,
    size: u64,
    /// Buffered writes with RWF_NOWAIT work here; cleared the first time the
    /// kernel says it does not support them, so we stop trying.
    nowait_writes: Arc<AtomicBool>,
    /// Writes still to send to the pool after an inline write was slow.
    pool_writes_left: Arc<AtomicU32>,
}

/// Largest write done on the runtime's worker thread when non-blocking buffered
/// writes are unsupported; larger ones go to the pool so a worker is not held for a
/// long copy.
const INLINE_WRITE_MAX: usize = 256 * 1024;

/// An inline write slower than this means the kernel is throttling writers hard.
/// Short pauses under ordinary writeback stay inline: measured with 4 KiB random
/// writes on a file under writeback, a 500 µs threshold with 1,024 pool writes after
/// it gave 20k IOPS at 66 µs CPU per write, 5 ms with 64 gave 25-27k at 44-48 µs
/// (docs/benchmarks.md).
const SLOW_INLINE_WRITE: std::time::Duration = std::time::Duration::from_millis(5);
/// Writes sent to the pool after a slow inline one, before trying inline again.
const POOL_WRITES_AFTER_STALL: u32 = 64;

/// What a non-blocking attempt at an I/O gave.
enum NoWait {
    /// This many bytes were transferred (possibly fewer than asked).
    Done(usize),
    /// It would have blocked: do it on a pool thread.
    WouldBlock,
    /// The kernel or filesystem does not do this without blocking.
    Unsupported,
}

/// Reads up to `len` bytes at `offset` into `buf`'s spare capacity, only if the page
/// cache can serve them at once (preadv2 with RWF_NOWAIT, Linux 4.14). Returns the
/// bytes read, or `None` when it would block or failed (the blocking path then
/// reads, and reports any real error).
#[allow(unsafe_code)]
fn read_nowait(file: &File, buf: &mut BytesMut, offset: u64, len: usize) -> Option<usize> {
    buf.reserve(len);
    let spare = buf.spare_capacity_mut();
    let iov = libc::iovec {
        iov_base: spare.as_mut_ptr().cast(),
        iov_len: len.min(spare.len()),
    };
    let off = libc::off_t::try_from(offset).ok()?;
    // SAFETY: `iov` points into `buf`'s spare capacity, valid for `iov_len` bytes
    // and not aliased while the call runs; the kernel writes at most that many.
    let rc = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, off, libc::RWF_NOWAIT) };
    if rc <= 0 {
        return None;
    }
    let n = rc as usize;
    // SAFETY: the kernel initialised the first `n` bytes of the spare capacity.
    unsafe { buf.set_len(buf.len() + n) };
    Some(n)
}

/// Writes `data` at `offset` only if it can be done without blocking (pwritev2 with
/// RWF_NOWAIT).
#[allow(unsafe_code)]
fn write_nowait(file: &File, data: &[u8], offset: u64) -> NoWait {
    let iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let Ok(off) = libc::off_t::try_from(offset) else {
        return NoWait::WouldBlock;
    };
    // SAFETY: `iov` describes `data`, valid for reads of `data.len()` bytes for the
    // duration of the call; the kernel only reads it.
    let rc = unsafe { libc::pwritev2(file.as_raw_fd(), &iov, 1, off, libc::RWF_NOWAIT) };
    if rc >= 0 {
        return NoWait::Done(rc as usize);
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) | Some(libc::ENOSYS) => NoWait::Unsupported,
        _ => NoWait::WouldBlock,
    }
}

impl FileStore {
    /// Opens or creates `path` with `size` bytes: a missing file is created sparse, a
    /// smaller one grown with `set_len` (a hole, no zeros written), a larger one refused.
    pub fn open(path: &Path, size: u64) -> Result<FileStore, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(open_err)?;
        let existing = file.metadata().map_err(open_err)?.len();
        if existing > size {
            return Err(StoreError::WouldShrink {
                path: path.to_path_buf(),
                existing,
                requested: size,
            });
        }
        if existing < size {
            file.set_len(size).map_err(open_err)?;
        }
        Ok(FileStore {
            file: Arc::new(file),
            size,
            nowait_writes: Arc::new(AtomicBool::new(true)),
            pool_writes_left: Arc::new(AtomicU32::new(0)),
        })
    }

    /// Opens an existing file of exactly `size` bytes for reading only (a read-only
    /// volume): every write through it fails at the operating system.
    pub fn open_read_only(path: &Path, size: u64) -> Result<FileStore, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(open_err)?;
        let existing = file.metadata().map_err(open_err)?.len();
        if existing != size {
            return Err(StoreError::SizeMismatch {
                path: path.to_path_buf(),
                existing,
                requested: size,
            });
        }
        Ok(FileStore {
            file: Arc::new(file),
            size,
            nowait_writes: Arc::new(AtomicBool::new(true)),
            pool_writes_left: Arc::new(AtomicU32::new(0)),
        })
    }

    /// The same file at `size` bytes (a volume resized at run time): the file is
    /// grown with a hole or truncated, and the store returned shares the open file
    /// with this one, whose own size is unchanged.
    pub fn resized(&self, size: u64) -> Result<FileStore, StoreError> {
        self.file.set_len(size).map_err(|source| StoreError::Io {
            op: "resize",
            offset: size,
            source,
        })?;
        Ok(FileStore {
            file: Arc::clone(&self.file),
            size,
            nowait_writes: Arc::clone(&self.nowait_writes),
            pool_writes_left: Arc::clone(&self.pool_writes_left),
        })
    }

    /// Wraps an already open file, e.g. one opened read-only to make writes fail.
    #[cfg(test)]
    pub(crate) fn from_file(file: File, size: u64) -> FileStore {
        FileStore {
            file: Arc::new(file),
            size,
            nowait_writes: Arc::new(AtomicBool::new(true)),
            pool_writes_left: Arc::new(AtomicU32::new(0)),
        }
    }

    /// The filesystem's preferred I/O size (st_blksize), the granularity of holes;
    /// 4096 if it cannot be read.
    pub fn block_size(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        const FALLBACK_BLOCK_SIZE: u64 = 4096;
        match self.file.metadata() {
            Ok(m) if m.blksize() > 0 => m.blksize(),
            _ => FALLBACK_BLOCK_SIZE,
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

    /// Reads `len` bytes at `offset`; bytes past the physical end of the file (if it was
    /// truncated behind our back) read as zeros.
    pub(super) async fn read_at(&self, offset: u64, len: usize) -> Result<Bytes, StoreError> {
        let mut buf = BytesMut::with_capacity(len);
        // A page-cache hit is served here, without handing the read to a pool
        // thread (measured: the hand-off cost more than the read itself).
        if read_nowait(&self.file, &mut buf, offset, len) == Some(len) {
            return Ok(buf.freeze());
        }
        let file = Arc::clone(&self.file);
        tokio::task::spawn_blocking(move || {
            let mut done = buf.len();
            buf.resize(len, 0);
            while done < len {
                let pos = offset + done as u64;
                match file.read_at(&mut buf[done..], pos) {
                    Ok(0) => break, // EOF: the rest stays zero.
                    Ok(n) => done += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(source) => {
                        return Err(StoreError::Io {
                            op: "read",
                            offset: pos,
                            source,
                        })
                    }
                }
            }
            Ok(buf.freeze())
        })
        .await?
    }

    /// Writes all of `data` at `offset`.
    pub(super) async fn write_at(&self, offset: u64, data: Bytes) -> Result<(), StoreError> {
        // Copying into the page cache without waiting is done here; only a write
        // that would block (writeback throttling, a filesystem without RWF_NOWAIT
        // for buffered writes) goes to a pool thread.
        let done = if self.nowait_writes.load(Ordering::Relaxed) {
            match write_nowait(&self.file, &data, offset) {
                NoWait::Done(n) => n,
                NoWait::WouldBlock => 0,
                NoWait::Unsupported => {
                    self.nowait_writes.store(false, Ordering::Relaxed);
                    0
                }
            }
        } else {
            0
        };
        if done == data.len() {
            return Ok(());
        }
        let pos = offset + done as u64;
        let io_err = |source| StoreError::Io {
            op: "write",
            offset: pos,
            source,
        };
        if data.len() <= INLINE_WRITE_MAX && self.pool_writes_left.load(Ordering::Relaxed) == 0 {
            // A small buffered write is a copy into the page cache, a few
            // microseconds: done on this worker it costs less than any hand-off
            // (measured: block_in_place and spawn_blocking both cost more than the
            // copy). When the kernel starts throttling (writeback), a write takes
            // long: the next writes then go to the pool, so workers keep serving.
            let started = std::time::Instant::now();
            let r = self.file.write_all_at(&data[done..], pos).map_err(io_err);
            if started.elapsed() > SLOW_INLINE_WRITE {
                self.pool_writes_left
                    .store(POOL_WRITES_AFTER_STALL, Ordering::Relaxed);
            }
            return r;
        }
        let _ = self
            .pool_writes_left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        let file = Arc::clone(&self.file);
        tokio::task::spawn_blocking(move || {
            let pos = offset + done as u64;
            file.write_all_at(&data[done..], pos)
                .map_err(|source| StoreError::Io {
                    op: "write",
                    offset: pos,
                    source,
                })
        })
        .await?
    }

    /// Punches a hole over `[offset, offset + len)` (fallocate PUNCH_HOLE|KEEP_SIZE):
    /// whole filesystem blocks are freed, partial ones zeroed, so the range reads back
    /// as zeros. A filesystem without hole punching gets zeros written instead.
    pub(super) async fn deallocate(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        let file = Arc::clone(&self.file);
        tokio::task::spawn_blocking(move || {
            let io_err = |source| StoreError::Io {
                op: "punch hole",
                offset,
                source,
            };
            match fallocate(&file, PUNCH_HOLE_MODE, offset, len) {
                Ok(()) => Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                    write_zeros(&file, offset, len).map_err(io_err)
                }
                Err(e) => Err(io_err(e)),
            }
        })
        .await?
    }

    /// Allocates every block of the file (fallocate mode 0), for fully provisioned
    /// volumes. Filesystems that cannot preallocate are left sparse (returns false).
    pub(super) fn preallocate(&self) -> Result<bool, StoreError> {
        match fallocate(&self.file, 0, 0, self.size) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(false),
            Err(source) => Err(StoreError::Io {
                op: "preallocate",
                offset: 0,
                source,
            }),
        }
    }

    /// Whether the byte at `offset` is in allocated data (not a hole), and how many
    /// bytes from `offset` (at most `len`) share that state: SEEK_DATA / SEEK_HOLE.
    /// Bytes past the physical end of the file are a hole.
    pub(super) async fn allocation(
        &self,
        offset: u64,
        len: u64,
    ) -> Result<(bool, u64), StoreError> {
        let file = Arc::clone(&self.file);
        tokio::task::spawn_blocking(move || {
            let io_err = |source| StoreError::Io {
                op: "seek",
                offset,
                source,
            };
            let end = offset + len;
            let next_data = match seek(&file, offset, libc::SEEK_DATA) {
                Ok(pos) => pos,
                // ENXIO: no data at or after `offset`.
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) => u64::MAX,
                Err(e) => return Err(io_err(e)),
            };
            if next_data > offset {
                return Ok((false, next_data.min(end) - offset));
            }
            let next_hole = match seek(&file, offset, libc::SEEK_HOLE) {
                Ok(pos) => pos,
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) => end,
                Err(e) => return Err(io_err(e)),
            };
            // A hole always follows data (EOF counts), so the run is never empty.
            Ok((true, next_hole.min(end).max(offset + 1) - offset))
        })
        .await?
    }

    /// Tells the kernel the range will be read soon (POSIX_FADV_WILLNEED): PRE-FETCH.
    pub(super) async fn prefetch(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        let file = Arc::clone(&self.file);
        tokio::task::spawn_blocking(move || {
            fadvise_willneed(&file, offset, len).map_err(|source| StoreError::Io {
                op: "prefetch",
                offset,
                source,
            })
        })
        .await?
    }

    /// fdatasync: makes completed writes durable.
    pub(super) async fn flush(&self) -> Result<(), StoreError> {
        let file = Arc::clone(&self.file);
        tokio::task::spawn_blocking(move || {
            file.sync_data().map_err(|source| StoreError::Io {
                op: "flush",
                offset: 0,
                source,
            })
        })
        .await?
    }
}

/// fallocate(2) mode for UNMAP: free the blocks, keep the file size.
const PUNCH_HOLE_MODE: libc::c_int = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
/// Buffer size when a filesystem without hole punching gets zeros written instead.
const ZERO_FILL_CHUNK: usize = 1 << 20;

fn off_t(v: u64) -> std::io::Result<libc::off_t> {
    libc::off_t::try_from(v).map_err(|_| std::io::Error::from_raw_os_error(libc::EFBIG))
}

/// fallocate(2) on `file`.
#[allow(unsafe_code)]
fn fallocate(file: &File, mode: libc::c_int, offset: u64, len: u64) -> std::io::Result<()> {
    let (offset, len) = (off_t(offset)?, off_t(len)?);
    if len == 0 {
        return Ok(());
    }
    loop {
        // SAFETY: fallocate takes a file descriptor that `file` keeps open for the
        // duration of the call and plain integers; it touches no memory of ours.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), mode, offset, len) };
        if rc == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// lseek(2) with SEEK_DATA or SEEK_HOLE. The file position it moves is never used:
/// every read and write is positional.
#[allow(unsafe_code)]
fn seek(file: &File, offset: u64, whence: libc::c_int) -> std::io::Result<u64> {
    let offset = off_t(offset)?;
    // SAFETY: lseek takes an open file descriptor (kept open by `file`) and integers.
    let rc = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(rc as u64)
}

/// posix_fadvise(2) WILLNEED.
#[allow(unsafe_code)]
fn fadvise_willneed(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    let (offset, len) = (off_t(offset)?, off_t(len)?);
    // SAFETY: posix_fadvise takes an open file descriptor and integers.
    let rc =
        unsafe { libc::posix_fadvise(file.as_raw_fd(), offset, len, libc::POSIX_FADV_WILLNEED) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Writes zeros over `[offset, offset + len)`.
fn write_zeros(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    let zeros = vec![0u8; ZERO_FILL_CHUNK.min(len as usize)];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn new_file_is_created_sparse() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vol");
        let f = FileStore::open(&path, 1 << 30).unwrap();
        assert_eq!(f.len(), 1 << 30);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 1 << 30);
        // st_blocks counts 512-byte units actually allocated.
        assert!(
            meta.blocks() * 512 < 1 << 20,
            "{} blocks allocated",
            meta.blocks()
        );
    }

    #[test]
    fn smaller_existing_file_is_grown_and_keeps_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vol");
        std::fs::write(&path, b"hello").unwrap();
        let f = FileStore::open(&path, 8192).unwrap();
        assert_eq!(f.len(), 8192);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 8192);
        assert_eq!(&std::fs::read(&path).unwrap()[..5], b"hello");
    }

    #[test]
    fn larger_existing_file_is_not_shrunk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vol");
        std::fs::write(&path, vec![1u8; 8192]).unwrap();
        let err = FileStore::open(&path, 4096).unwrap_err();
        assert!(matches!(
            err,
            StoreError::WouldShrink {
                existing: 8192,
                requested: 4096,
                ..
            }
        ));
        assert!(err.to_string().contains("refusing to shrink"));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 8192);
    }

    #[test]
    fn open_in_missing_directory_is_an_open_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = FileStore::open(&dir.path().join("no/such/vol"), 4096).unwrap_err();
        assert!(matches!(err, StoreError::Open { .. }));
    }

    #[tokio::test]
    async fn read_past_physical_eof_returns_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vol");
        let f = FileStore::open(&path, 8192).unwrap();
        f.write_at(0, Bytes::from(vec![9u8; 8192])).await.unwrap();
        // Someone truncates the file behind our back.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(100)
            .unwrap();
        let data = f.read_at(50, 100).await.unwrap();
        assert_eq!(&data[..50], &[9u8; 50][..]);
        assert_eq!(&data[50..], &[0u8; 50][..]);
    }

    #[tokio::test]
    async fn write_to_read_only_file_returns_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vol");
        std::fs::write(&path, vec![0u8; 4096]).unwrap();
        let f = FileStore {
            file: Arc::new(File::open(&path).unwrap()),
            size: 4096,
            nowait_writes: Arc::new(AtomicBool::new(true)),
            pool_writes_left: Arc::new(AtomicU32::new(0)),
        };
        let err = f.write_at(0, Bytes::from_static(b"x")).await.unwrap_err();
        assert!(matches!(err, StoreError::Io { op: "write", .. }), "{err}");
    }

    #[tokio::test]
    async fn punched_hole_reads_zero_and_frees_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vol");
        let f = FileStore::open(&path, 1 << 20).unwrap();
        f.write_at(0, Bytes::from(vec![7u8; 1 << 20]))
            .await
            .unwrap();
        f.flush().await.unwrap();
        let before = std::fs::metadata(&path).unwrap().blocks();
        f.deallocate(4096, 512 * 1024).await.unwrap();
        let data = f.read_at(0, 1 << 20).await.unwrap();
        assert!(data[..4096].iter().all(|&b| b == 7));
        assert!(data[4096..4096 + 512 * 1024].iter().all(|&b| b == 0));
        assert!(data[4096 + 512 * 1024..].iter().all(|&b| b == 7));
        let after = std::fs::metadata(&path).unwrap().blocks();
        assert!(after < before, "blocks {before} -> {after}");
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            1 << 20,
            "size kept"
        );
    }

    #[tokio::test]
    async fn partial_block_hole_zeroes_only_the_range() {
        let dir = tempfile::tempdir().unwrap();
        let f = FileStore::open(&dir.path().join("vol"), 8192).unwrap();
        f.write_at(0, Bytes::from(vec![5u8; 8192])).await.unwrap();
        f.deallocate(512, 1024).await.unwrap();
        let data = f.read_at(0, 8192).await.unwrap();
        assert!(data[..512].iter().all(|&b| b == 5));
        assert!(data[512..1536].iter().all(|&b| b == 0));
        assert!(data[1536..].iter().all(|&b| b == 5));
    }

    #[tokio::test]
    async fn allocation_follows_data_and_holes() {
        let dir = tempfile::tempdir().unwrap();
        let f = FileStore::open(&dir.path().join("vol"), 1 << 20).unwrap();
        let (mapped, run) = f.allocation(0, 1 << 20).await.unwrap();
        assert_eq!((mapped, run), (false, 1 << 20), "a new file is one hole");
        f.write_at(256 * 1024, Bytes::from(vec![1u8; 64 * 1024]))
            .await
            .unwrap();
        let (mapped, run) = f.allocation(0, 1 << 20).await.unwrap();
        assert!(!mapped);
        assert!(run <= 256 * 1024, "hole ends at or before the data: {run}");
        let (mapped, run) = f.allocation(256 * 1024, 1 << 19).await.unwrap();
        assert!(mapped);
        assert!(run >= 64 * 1024, "data run covers the write: {run}");
        f.deallocate(256 * 1024, 64 * 1024).await.unwrap();
        let (mapped, _) = f.allocation(256 * 1024, 4096).await.unwrap();
        assert!(!mapped, "punched range is a hole again");
    }

    #[test]
    fn preallocate_allocates_every_block() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vol");
        let f = FileStore::open(&path, 1 << 20).unwrap();
        if f.preallocate().unwrap() {
            let meta = std::fs::metadata(&path).unwrap();
            assert!(meta.blocks() * 512 >= 1 << 20, "{} blocks", meta.blocks());
        }
    }

    #[tokio::test]
    async fn read_only_open_refuses_writes_and_size_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vol");
        std::fs::write(&path, vec![3u8; 4096]).unwrap();
        let f = FileStore::open_read_only(&path, 4096).unwrap();
        assert_eq!(f.read_at(0, 2).await.unwrap(), &[3u8, 3][..]);
        assert!(f.write_at(0, Bytes::from_static(b"x")).await.is_err());
        assert!(matches!(
            FileStore::open_read_only(&path, 8192),
            Err(StoreError::SizeMismatch { .. })
        ));
    }

    #[tokio::test]
    async fn prefetch_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let f = FileStore::open(&dir.path().join("vol"), 8192).unwrap();
        f.prefetch(0, 8192).await.unwrap();
    }

    #[tokio::test]
    async fn data_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vol");
        let f = FileStore::open(&path, 1 << 20).unwrap();
        f.write_at(512 * 7, Bytes::from_static(b"persist"))
            .await
            .unwrap();
        f.flush().await.unwrap();
        drop(f);
        let f = FileStore::open(&path, 1 << 20).unwrap();
        assert_eq!(f.read_at(512 * 7, 7).await.unwrap(), &b"persist"[..]);
    }
}
