//! Deterministic test data, so a failure can be replayed: pseudo-random bytes
//! (xorshift64*) and blocks stamped with their LBA. No dependency is needed.

/// A small, fast, seedable generator; not for anything but test data.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed` (any value, zero included).
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15 | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// `len` random bytes from `seed`.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Rng::new(seed).fill(&mut v);
    v
}

/// `blocks` blocks of `block_size` bytes from `lba` on, each 16 bytes of them
/// naming their block's LBA and `generation` (xored with their place in the block),
/// so a read shows which write it returned: a misplaced, stale or torn block differs.
pub fn stamped(lba: u64, generation: u64, blocks: u32, block_size: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(blocks as usize * block_size as usize);
    for b in 0..u64::from(blocks) {
        for i in 0..u64::from(block_size / 16) {
            v.extend_from_slice(&(lba + b).to_be_bytes());
            v.extend_from_slice(&(generation ^ i).to_be_bytes());
        }
    }
    v
}

/// Writes `len` random bytes from `seed` to `path` (an image for qemu-img); returns
/// them. Random data leaves no block all zeros, so every block written is allocated.
pub fn random_file(path: &std::path::Path, seed: u64, len: usize) -> Vec<u8> {
    let data = bytes(seed, len);
    std::fs::write(path, &data).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    data
}

/// Where two equal-length buffers first differ, as a message for an assertion.
pub fn first_difference(a: &[u8], b: &[u8]) -> Option<String> {
    if a.len() != b.len() {
        return Some(format!("lengths differ: {} vs {}", a.len(), b.len()));
    }
    let i = a.iter().zip(b).position(|(x, y)| x != y)?;
    let end = (i + 16).min(a.len());
    Some(format!(
        "first difference at byte {i} (block {} of 512): {:02x?} vs {:02x?}",
        i / 512,
        &a[i..end],
        &b[i..end]
    ))
}
