//! CRC32C header and data digests (RFC 7143 §11.1, §13.1).
//!
//! The digest is the CRC32C (Castagnoli) of the covered bytes; on the wire it is sent
//! least-significant byte first (RFC 7143 Appendix B.4 check values). A data digest
//! covers the data segment and its pad bytes.

/// Bytes a digest takes on the wire.
pub const DIGEST_LEN: usize = 4;

/// CRC32C over one buffer (hardware-accelerated where the CPU has it).
#[inline]
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

/// CRC32C over several buffers as if they were one (data segment, then pad bytes).
#[inline]
pub fn crc32c_parts(parts: &[&[u8]]) -> u32 {
    parts
        .iter()
        .fold(0u32, |crc, p| crc32c::crc32c_append(crc, p))
}

/// The digest as it goes on the wire.
#[inline]
pub fn to_wire(crc: u32) -> [u8; DIGEST_LEN] {
    crc.to_le_bytes()
}

/// A digest as read from the wire.
#[inline]
pub fn from_wire(b: [u8; DIGEST_LEN]) -> u32 {
    u32::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 3720 Appendix B.4: 32 bytes of zeros.
    #[test]
    fn rfc_check_value_zeros() {
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(to_wire(0x8a91_36aa), [0xaa, 0x36, 0x91, 0x8a]);
    }

    /// RFC 3720 Appendix B.4: 32 bytes of 0xff.
    #[test]
    fn rfc_check_value_ones() {
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62a8_ab43);
    }

    /// RFC 3720 Appendix B.4: 32 incrementing bytes.
    #[test]
    fn rfc_check_value_incrementing() {
        let v: Vec<u8> = (0u8..32).collect();
        assert_eq!(crc32c(&v), 0x46dd_794e);
    }

    #[test]
    fn parts_equal_whole() {
        let v: Vec<u8> = (0u8..100).collect();
        assert_eq!(crc32c_parts(&[&v[..37], &v[37..]]), crc32c(&v));
    }
}
