//! A sparse file store: positional reads and writes (pread/pwrite through
//! `std::os::unix::fs::FileExt`) on tokio's blocking pool.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use super::StoreError;

/// A backing file. Clones share the same open file.
#[derive(Debug, Clone)]
pub struct FileStore {
    file: Arc<File>,
    size: u64,
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
        })
    }

    /// Wraps an already open file, e.g. one opened read-only to make writes fail.
    #[cfg(test)]
    pub(crate) fn from_file(file: File, size: u64) -> FileStore {
        FileStore {
            file: Arc::new(file),
            size,
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
        let file = Arc::clone(&self.file);
        tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; len];
            let mut done = 0;
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
            Ok(Bytes::from(buf))
        })
        .await?
    }

    /// Writes all of `data` at `offset`.
    pub(super) async fn write_at(&self, offset: u64, data: Bytes) -> Result<(), StoreError> {
        let file = Arc::clone(&self.file);
        tokio::task::spawn_blocking(move || {
            file.write_all_at(&data, offset)
                .map_err(|source| StoreError::Io {
                    op: "write",
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
        };
        let err = f.write_at(0, Bytes::from_static(b"x")).await.unwrap_err();
        assert!(matches!(err, StoreError::Io { op: "write", .. }), "{err}");
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
