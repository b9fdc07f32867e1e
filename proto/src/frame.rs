//! Framing of whole PDUs over a byte stream (RFC 7143 §11.2): check that a PDU is
//! complete before parsing it ("incomplete" is not an error), validate the header
//! (digest, segment length) before taking the data, and verify the data digest.
//!
//! Sans I/O: the caller owns the socket and hands in a `BytesMut` of received bytes.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;

use crate::digest::{self, DIGEST_LEN};
use crate::pdu::{pad_len, raw_ahs_len, raw_data_len, Bhs, Pdu, BHS_LEN};

/// What a receiver has negotiated about the PDUs it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    /// HeaderDigest=CRC32C is in effect.
    pub header_digest: bool,
    /// DataDigest=CRC32C is in effect.
    pub data_digest: bool,
    /// The MaxRecvDataSegmentLength this side declared (RFC 7143 §13.12).
    pub max_recv_data_segment_length: u32,
}

impl Default for FrameLimits {
    /// The limits in force during login: no digests, and 8192 bytes, the value every
    /// implementation must accept before negotiation (RFC 7143 §13.12).
    fn default() -> Self {
        FrameLimits {
            header_digest: false,
            data_digest: false,
            max_recv_data_segment_length: 8192,
        }
    }
}

/// Why a PDU could not be taken from the stream.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum FrameError {
    /// The header digest does not match: the lengths cannot be trusted, so the
    /// connection must be dropped (RFC 7143 §7.8).
    #[error("header digest mismatch: received {received:#010x}, computed {computed:#010x}")]
    HeaderDigest { received: u32, computed: u32 },
    /// The data digest does not match. The PDU was consumed; answer it with a Reject
    /// (reason "data digest error") and go on (RFC 7143 §7.8).
    #[error("data digest mismatch on opcode {:#04x}", .header[0] & 0x3f)]
    DataDigest { header: Box<[u8; BHS_LEN]> },
    /// The data segment is longer than we declared we would receive. The stream is
    /// no longer trustworthy: Reject (protocol error) and drop the connection.
    #[error("data segment of {len} bytes exceeds MaxRecvDataSegmentLength {max}")]
    DataSegmentTooLong {
        header: Box<[u8; BHS_LEN]>,
        len: u32,
        max: u32,
    },
}

/// Total wire length of a PDU whose header is `raw`, under `limits`.
pub fn wire_len(raw: &[u8; BHS_LEN], limits: &FrameLimits) -> usize {
    let dl = raw_data_len(raw) as usize;
    let hd = if limits.header_digest { DIGEST_LEN } else { 0 };
    let dd = if limits.data_digest && dl > 0 {
        DIGEST_LEN
    } else {
        0
    };
    BHS_LEN + raw_ahs_len(raw) + hd + dl + pad_len(dl) + dd
}

/// Takes one whole PDU from the front of `buf`, or returns `Ok(None)` when more bytes
/// are needed. On an error the bytes of the bad PDU are consumed only where the
/// stream can go on ([`FrameError::DataDigest`]).
pub fn decode(buf: &mut BytesMut, limits: &FrameLimits) -> Result<Option<Pdu>, FrameError> {
    if buf.len() < BHS_LEN {
        return Ok(None);
    }
    let mut raw = [0u8; BHS_LEN];
    raw.copy_from_slice(&buf[..BHS_LEN]);
    let ahs_len = raw_ahs_len(&raw);
    let hd = if limits.header_digest { DIGEST_LEN } else { 0 };
    if limits.header_digest {
        if buf.len() < BHS_LEN + ahs_len + hd {
            return Ok(None);
        }
        let received = digest::from_wire(
            buf[BHS_LEN + ahs_len..BHS_LEN + ahs_len + DIGEST_LEN]
                .try_into()
                .expect("slice of DIGEST_LEN"),
        );
        let computed = digest::crc32c(&buf[..BHS_LEN + ahs_len]);
        if received != computed {
            return Err(FrameError::HeaderDigest { received, computed });
        }
    }
    let dl = raw_data_len(&raw);
    if dl > limits.max_recv_data_segment_length {
        return Err(FrameError::DataSegmentTooLong {
            header: Box::new(raw),
            len: dl,
            max: limits.max_recv_data_segment_length,
        });
    }
    let total = wire_len(&raw, limits);
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let mut pdu_bytes = buf.split_to(total);
    pdu_bytes.advance(BHS_LEN);
    let ahs = pdu_bytes.split_to(ahs_len).freeze();
    pdu_bytes.advance(hd);
    let dl = dl as usize;
    let padded = dl + pad_len(dl);
    if limits.data_digest && dl > 0 {
        let received = digest::from_wire(
            pdu_bytes[padded..padded + DIGEST_LEN]
                .try_into()
                .expect("slice of DIGEST_LEN"),
        );
        if received != digest::crc32c(&pdu_bytes[..padded]) {
            return Err(FrameError::DataDigest {
                header: Box::new(raw),
            });
        }
    }
    pdu_bytes.truncate(dl);
    Ok(Some(Pdu {
        bhs: Bhs::decode(&raw),
        ahs,
        data: pdu_bytes.freeze(),
    }))
}

/// A PDU ready for a vectored write: header part (BHS, AHS, header digest), the data
/// segment shared without a copy, and the tail (pad bytes and data digest).
#[derive(Debug, Clone)]
pub struct EncodedPdu {
    pub head: Bytes,
    pub data: Bytes,
    pub tail: Bytes,
}

impl EncodedPdu {
    /// Total bytes on the wire.
    pub fn len(&self) -> usize {
        self.head.len() + self.data.len() + self.tail.len()
    }
    /// `true` never happens for a real PDU; here for clippy's sake.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The three parts as one buffer (tests, small PDUs).
    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(self.len());
        b.put_slice(&self.head);
        b.put_slice(&self.data);
        b.put_slice(&self.tail);
        b.freeze()
    }
}

/// Encodes a PDU under the sender-side digest settings in `limits`.
pub fn encode(pdu: &Pdu, limits: &FrameLimits) -> EncodedPdu {
    let raw = pdu.bhs.encode(pdu.ahs.len(), pdu.data.len() as u32);
    let mut head = BytesMut::with_capacity(BHS_LEN + pdu.ahs.len() + DIGEST_LEN);
    head.put_slice(&raw);
    head.put_slice(&pdu.ahs);
    if limits.header_digest {
        let crc = digest::crc32c(&head);
        head.put_slice(&digest::to_wire(crc));
    }
    let dl = pdu.data.len();
    let pad = pad_len(dl);
    let tail = if dl == 0 {
        Bytes::new()
    } else {
        let zeros = [0u8; 3];
        let mut t = BytesMut::with_capacity(pad + DIGEST_LEN);
        t.put_slice(&zeros[..pad]);
        if limits.data_digest {
            let crc = digest::crc32c_parts(&[&pdu.data, &zeros[..pad]]);
            t.put_slice(&digest::to_wire(crc));
        }
        t.freeze()
    };
    EncodedPdu {
        head: head.freeze(),
        data: pdu.data.clone(),
        tail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pdu::{NopOut, TextRequest};
    use proptest::prelude::*;

    fn digests() -> FrameLimits {
        FrameLimits {
            header_digest: true,
            data_digest: true,
            max_recv_data_segment_length: 65536,
        }
    }

    fn sample(data: &[u8]) -> Pdu {
        Pdu::new(
            Bhs::TextRequest(TextRequest {
                final_bit: true,
                itt: 3,
                ttt: u32::MAX,
                cmd_sn: 1,
                ..Default::default()
            }),
            Bytes::copy_from_slice(data),
        )
    }

    #[test]
    fn incomplete_is_not_an_error() {
        let enc = encode(&sample(b"SendTargets=All\0"), &digests()).to_bytes();
        for cut in 0..enc.len() {
            let mut b = BytesMut::from(&enc[..cut]);
            assert_eq!(decode(&mut b, &digests()), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn bad_header_digest_drops() {
        let mut enc = BytesMut::from(&encode(&sample(b"a=b\0"), &digests()).to_bytes()[..]);
        enc[49] ^= 1;
        assert!(matches!(
            decode(&mut enc, &digests()),
            Err(FrameError::HeaderDigest { .. })
        ));
    }

    #[test]
    fn bad_data_digest_consumes_the_pdu() {
        let one = encode(&sample(b"a=b\0"), &digests()).to_bytes();
        let mut enc = BytesMut::from(&one[..]);
        let n = enc.len();
        enc[n - 1] ^= 0xff;
        enc.extend_from_slice(&one);
        assert!(matches!(
            decode(&mut enc, &digests()),
            Err(FrameError::DataDigest { .. })
        ));
        assert_eq!(
            decode(&mut enc, &digests()).unwrap(),
            Some(sample(b"a=b\0"))
        );
    }

    #[test]
    fn oversized_segment_is_refused_before_the_data() {
        let limits = FrameLimits::default();
        let big = sample(&vec![0u8; 9000]);
        let enc = encode(&big, &limits).to_bytes();
        let mut b = BytesMut::from(&enc[..BHS_LEN]);
        assert!(matches!(
            decode(&mut b, &limits),
            Err(FrameError::DataSegmentTooLong { len: 9000, .. })
        ));
    }

    #[test]
    fn nop_without_data_has_no_data_digest() {
        let p = Pdu::new(Bhs::NopOut(NopOut::default()), Bytes::new());
        let enc = encode(&p, &digests());
        assert_eq!(enc.len(), BHS_LEN + DIGEST_LEN);
    }

    proptest! {
        #[test]
        fn roundtrip_with_and_without_digests(data in proptest::collection::vec(any::<u8>(), 0..300),
                                              hd: bool, dd: bool) {
            let limits = FrameLimits { header_digest: hd, data_digest: dd, max_recv_data_segment_length: 1024 };
            let p = sample(&data);
            let mut b = BytesMut::from(&encode(&p, &limits).to_bytes()[..]);
            prop_assert_eq!(decode(&mut b, &limits).unwrap(), Some(p));
            prop_assert!(b.is_empty());
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400), hd: bool, dd: bool) {
            let limits = FrameLimits { header_digest: hd, data_digest: dd, max_recv_data_segment_length: 256 };
            let mut b = BytesMut::from(&bytes[..]);
            for _ in 0..8 {
                match decode(&mut b, &limits) {
                    Ok(Some(_)) | Err(FrameError::DataDigest { .. }) => continue,
                    _ => break,
                }
            }
        }
    }
}
