//! Login and Text data segments: ordered `key=value` pairs, each ended by a NUL byte
//! (RFC 7143 §6.1), plus the value encodings keys use (numbers, booleans, binary).
//!
//! [`parse`] turns a complete segment into pairs and refuses a key sent twice, as a
//! negotiation must (RFC 7143 §6.2); [`parse_allow_duplicates`] is for the few answers
//! that repeat keys on purpose (TargetName/TargetAddress in a SendTargets response,
//! RFC 7143 §13.3). [`encode`] writes pairs back. [`TextAccumulator`] joins the pieces
//! of a text that the sender split over several PDUs with the C (continue) bit
//! (RFC 7143 §11.10.2, §11.12.2).
//!
//! Nothing here knows what a key means: that is [`crate::negotiate`]'s job.

use bytes::{Bytes, BytesMut};
use nom::branch::alt;
use nom::bytes::complete::{tag, take_till, take_while1};
use nom::character::complete::digit1;
use nom::combinator::{all_consuming, map_res};
use nom::sequence::preceded;
use nom::IResult;
use thiserror::Error;

/// Longest key name: "A key-name ... must not exceed 63 bytes" (RFC 7143 §6.1).
pub const MAX_KEY_LEN: usize = 63;

/// Longest simple value, not counting its delimiter (comma or NUL): "If not otherwise
/// specified, the maximum length of a simple-value ... is 255 bytes" (RFC 7143 §6.1).
/// A list value is checked element by element.
pub const MAX_SIMPLE_VALUE_LEN: usize = 255;

/// Longest value of a key that carries large binary data (CHAP challenges and
/// responses, SRP and Kerberos exchanges, RFC 7143 §12). Every node must accept
/// 8192 bytes of key=value text in one negotiation sequence (RFC 7143 §6.1), so
/// no value needs to be longer than that.
pub const MAX_LARGE_VALUE_LEN: usize = 8192;

/// Keys whose value may exceed [`MAX_SIMPLE_VALUE_LEN`] (up to
/// [`MAX_LARGE_VALUE_LEN`]): the large-binary-value keys of RFC 7143 §12.
pub const LARGE_VALUE_KEYS: &[&str] = &[
    "CHAP_C",
    "CHAP_R",
    "SRP_s",
    "SRP_A",
    "SRP_B",
    "SRP_M",
    "SRP_HM",
    "KRB_AP_REQ",
    "KRB_AP_REP",
];

/// Most bytes a [`TextAccumulator`] joins before giving up. RFC 7143 §6.1 only
/// obliges a node to take 8192 bytes per negotiation sequence; 64 KiB is eight
/// times that, room for every standard key plus CHAP values hex-encoded, while a
/// peer that keeps the C bit set forever cannot make us buffer without bound.
/// Initiators reading a large SendTargets answer can choose a larger limit with
/// [`TextAccumulator::with_limit`].
pub const MAX_TEXT_LEN: usize = 64 * 1024;

/// A text key and its value, in the order they appeared.
pub type KeyValue = (String, String);

/// Why a text segment or a value could not be decoded.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum TextError {
    /// A record has no `=` between its key and its value.
    #[error("text record at byte {offset} has no '='")]
    MissingEquals { offset: usize },
    /// A record is not valid UTF-8 (RFC 7143 §6.1 requires UTF-8).
    #[error("text record at byte {offset} is not UTF-8")]
    NotUtf8 { offset: usize },
    /// The key is empty or has a character a key-name may not hold (RFC 7143 §6.1).
    #[error("invalid key name {key:?}")]
    InvalidKey { key: String },
    /// The key is longer than [`MAX_KEY_LEN`].
    #[error("key of {len} bytes exceeds {MAX_KEY_LEN}")]
    KeyTooLong { len: usize },
    /// A value (or one element of a list value) is longer than the key allows.
    #[error("value of {key} is {len} bytes, more than {max}")]
    ValueTooLong { key: String, len: usize, max: usize },
    /// The same key appears twice in one negotiation (RFC 7143 §6.2).
    #[error("key {key} sent twice")]
    DuplicateKey { key: String },
    /// A value to encode holds a NUL byte, which would end the record early.
    #[error("value of {key} holds a NUL byte")]
    NulInValue { key: String },
    /// Text split over PDUs with the C bit grew past the accumulator's limit.
    #[error("continued text of {len} bytes exceeds {limit}")]
    TooLong { len: usize, limit: usize },
    /// Not a numerical value: decimal, `0x` hex or `0b` base64 (RFC 7143 §6.1).
    #[error("invalid numerical value {value:?}")]
    InvalidNumber { value: String },
    /// Not a binary value: `0x` hex or `0b` base64 (RFC 7143 §6.1).
    #[error("invalid binary value {value:?}")]
    InvalidBinary { value: String },
    /// Not `Yes` or `No` (RFC 7143 §6.1 boolean-value).
    #[error("invalid boolean value {value:?}")]
    InvalidBoolean { value: String },
}

/// Parse a complete Login or Text data segment into its pairs, in order. A key sent
/// twice is an error. Empty records (NUL padding, a trailing NUL run) are skipped
/// and the last record may lack its NUL.
pub fn parse(data: &[u8]) -> Result<Vec<KeyValue>, TextError> {
    let pairs = parse_allow_duplicates(data)?;
    let mut seen = std::collections::HashSet::with_capacity(pairs.len());
    for (k, _) in &pairs {
        if !seen.insert(k.as_str()) {
            return Err(TextError::DuplicateKey { key: k.clone() });
        }
    }
    Ok(pairs)
}

/// Like [`parse`], but keeps repeated keys: for answers such as SendTargets, where a
/// TargetAddress follows each TargetName (RFC 7143 §13.3).
pub fn parse_allow_duplicates(data: &[u8]) -> Result<Vec<KeyValue>, TextError> {
    let mut pairs = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let offset = data.len() - rest.len();
        let (after, record) = record(rest).map_err(|_| TextError::MissingEquals { offset })?;
        // Step over the NUL that ends the record, if there is one.
        rest = after.get(1..).unwrap_or(&[]);
        if record.is_empty() {
            continue;
        }
        pairs.push(parse_record(record, offset)?);
    }
    Ok(pairs)
}

/// One record: everything up to the next NUL (or the end).
fn record(input: &[u8]) -> IResult<&[u8], &[u8]> {
    take_till(|b| b == 0)(input)
}

fn parse_record(record: &[u8], offset: usize) -> Result<KeyValue, TextError> {
    let text = std::str::from_utf8(record).map_err(|_| TextError::NotUtf8 { offset })?;
    let (key, value) = text
        .split_once('=')
        .ok_or(TextError::MissingEquals { offset })?;
    check_key(key)?;
    check_value(key, value)?;
    Ok((key.to_owned(), value.to_owned()))
}

/// A key-name is letters, digits and `. - + @ _` (RFC 7143 §6.1), plus `#` for the
/// IANA-registered `X#` keys (RFC 7143 §13.22).
fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+' | '@' | '_' | '#')
}

fn check_key(key: &str) -> Result<(), TextError> {
    if key.len() > MAX_KEY_LEN {
        return Err(TextError::KeyTooLong { len: key.len() });
    }
    if key.is_empty() || !key.chars().all(is_key_char) {
        return Err(TextError::InvalidKey {
            key: key.to_owned(),
        });
    }
    Ok(())
}

fn check_value(key: &str, value: &str) -> Result<(), TextError> {
    let too_long = |len, max| TextError::ValueTooLong {
        key: key.to_owned(),
        len,
        max,
    };
    if value.len() > MAX_LARGE_VALUE_LEN {
        return Err(too_long(value.len(), MAX_LARGE_VALUE_LEN));
    }
    if LARGE_VALUE_KEYS.contains(&key) {
        return Ok(());
    }
    match value.split(',').map(str::len).max() {
        Some(len) if len > MAX_SIMPLE_VALUE_LEN => Err(too_long(len, MAX_SIMPLE_VALUE_LEN)),
        _ => Ok(()),
    }
}

/// Encode pairs as `key=value\0` records, in order. Repeated keys are written as
/// given. Every pair is checked as [`parse`] would check it, so what this writes
/// always parses back.
pub fn encode<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> Result<Bytes, TextError> {
    let len = pairs
        .iter()
        .map(|(k, v)| k.as_ref().len() + v.as_ref().len() + 2)
        .sum();
    let mut buf = BytesMut::with_capacity(len);
    for (k, v) in pairs {
        let (k, v) = (k.as_ref(), v.as_ref());
        check_key(k)?;
        if v.contains('\0') {
            return Err(TextError::NulInValue { key: k.to_owned() });
        }
        check_value(k, v)?;
        buf.extend_from_slice(k.as_bytes());
        buf.extend_from_slice(b"=");
        buf.extend_from_slice(v.as_bytes());
        buf.extend_from_slice(&[0]);
    }
    Ok(buf.freeze())
}

/// Joins the data segments of a Login or Text sequence sent with the C bit
/// (RFC 7143 §11.10.2, §11.12.2): a key=value pair may be cut anywhere, so nothing
/// is parsed until the PDU with C = 0 arrives.
#[derive(Debug)]
pub struct TextAccumulator {
    buf: BytesMut,
    limit: usize,
}

impl Default for TextAccumulator {
    fn default() -> Self {
        Self::new()
    }
}

impl TextAccumulator {
    /// An empty accumulator bounded by [`MAX_TEXT_LEN`].
    pub fn new() -> Self {
        Self::with_limit(MAX_TEXT_LEN)
    }

    /// An empty accumulator that refuses text longer than `limit` bytes.
    pub fn with_limit(limit: usize) -> Self {
        TextAccumulator {
            buf: BytesMut::new(),
            limit,
        }
    }

    /// Add one PDU's data segment. With `continues` (the C bit) set, returns `None`:
    /// more is to come. Otherwise returns the whole text and starts over. Going past
    /// the limit drops what was gathered and is an error.
    pub fn push(&mut self, data: &[u8], continues: bool) -> Result<Option<Bytes>, TextError> {
        let len = self.buf.len() + data.len();
        if len > self.limit {
            self.buf.clear();
            return Err(TextError::TooLong {
                len,
                limit: self.limit,
            });
        }
        self.buf.extend_from_slice(data);
        if continues {
            Ok(None)
        } else {
            Ok(Some(self.buf.split().freeze()))
        }
    }

    /// [`push`](Self::push), then [`parse`] the completed text.
    pub fn push_pairs(
        &mut self,
        data: &[u8],
        continues: bool,
    ) -> Result<Option<Vec<KeyValue>>, TextError> {
        match self.push(data, continues)? {
            Some(text) => parse(&text).map(Some),
            None => Ok(None),
        }
    }

    /// Bytes gathered so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// `true` when nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Forget anything gathered (the login or text exchange was abandoned).
    pub fn reset(&mut self) {
        self.buf.clear();
    }
}

fn hex_number(i: &str) -> IResult<&str, u64> {
    preceded(
        alt((tag("0x"), tag("0X"))),
        map_res(take_while1(|c: char| c.is_ascii_hexdigit()), |s| {
            let s: &str = s;
            let s = s.trim_start_matches('0');
            if s.is_empty() {
                Ok(0)
            } else {
                u64::from_str_radix(s, 16)
            }
        }),
    )(i)
}

fn is_base64_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=')
}

fn base64_number(i: &str) -> IResult<&str, u64> {
    preceded(
        alt((tag("0b"), tag("0B"))),
        map_res(take_while1(is_base64_char), |s: &str| {
            let bytes = decode_base64(s).ok_or(())?;
            bytes_to_u64(&bytes).ok_or(())
        }),
    )(i)
}

fn decimal_number(i: &str) -> IResult<&str, u64> {
    map_res(digit1, str::parse::<u64>)(i)
}

/// Parse a numerical value (RFC 7143 §6.1): a decimal constant, a `0x`/`0X` hex
/// constant or a `0b`/`0B` base64 constant, less than 2^64.
pub fn parse_number(value: &str) -> Result<u64, TextError> {
    all_consuming(alt((hex_number, base64_number, decimal_number)))(value)
        .map(|(_, n)| n)
        .map_err(|_| TextError::InvalidNumber {
            value: value.to_owned(),
        })
}

/// Parse a binary value (RFC 7143 §6.1): `0x` hex (an odd digit count gets a
/// leading zero nibble) or `0b` base64. Used by the CHAP keys (RFC 7143 §12.1.3).
pub fn parse_binary(value: &str) -> Result<Vec<u8>, TextError> {
    let err = || TextError::InvalidBinary {
        value: value.to_owned(),
    };
    let (prefix, body) = (value.get(..2).ok_or_else(err)?, &value[2..]);
    if body.is_empty() {
        return Err(err());
    }
    match prefix {
        "0x" | "0X" => decode_hex(body).ok_or_else(err),
        "0b" | "0B" => decode_base64(body).ok_or_else(err),
        _ => Err(err()),
    }
}

/// Encode bytes as a `0x` hex binary value (RFC 7143 §6.1).
pub fn format_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(2 + bytes.len() * 2);
    s.push_str("0x");
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Parse a boolean value: exactly `Yes` or `No`; values are case sensitive
/// (RFC 7143 §6.1).
pub fn parse_bool(value: &str) -> Result<bool, TextError> {
    match value {
        "Yes" => Ok(true),
        "No" => Ok(false),
        _ => Err(TextError::InvalidBoolean {
            value: value.to_owned(),
        }),
    }
}

/// The wire form of a boolean.
pub fn format_bool(b: bool) -> &'static str {
    if b {
        "Yes"
    } else {
        "No"
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let digits: Vec<u8> = s
        .bytes()
        .map(|c| (c as char).to_digit(16).unwrap_or(0) as u8)
        .collect();
    let mut out = Vec::with_capacity(digits.len().div_ceil(2));
    let mut it = digits.as_slice();
    if it.len() % 2 == 1 {
        out.push(it[0]);
        it = &it[1..];
    }
    out.extend(it.chunks_exact(2).map(|p| (p[0] << 4) | p[1]));
    Some(out)
}

fn base64_digit(c: u8) -> Option<u32> {
    Some(match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => return None,
    } as u32)
}

/// Standard base64 (RFC 4648 §4) as RFC 7143 §6.1 uses it; padding optional.
fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let body = s.trim_end_matches('=');
    if s.len() - body.len() > 2 || body.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in body.bytes() {
        acc = (acc << 6) | base64_digit(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Big-endian bytes as a number, if it fits in 64 bits.
fn bytes_to_u64(bytes: &[u8]) -> Option<u64> {
    let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    let significant = &bytes[first..];
    if significant.len() > 8 {
        return None;
    }
    Some(significant.iter().fold(0u64, |n, &b| (n << 8) | b as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kv(k: &str, v: &str) -> KeyValue {
        (k.to_owned(), v.to_owned())
    }

    #[test]
    fn login_segment_parses_in_order() {
        let data =
            b"InitiatorName=iqn.1994-05.com.redhat:x\0SessionType=Normal\0AuthMethod=CHAP,None\0";
        assert_eq!(
            parse(data).unwrap(),
            vec![
                kv("InitiatorName", "iqn.1994-05.com.redhat:x"),
                kv("SessionType", "Normal"),
                kv("AuthMethod", "CHAP,None"),
            ]
        );
    }

    #[test]
    fn trailing_pad_and_missing_final_nul_are_tolerated() {
        assert_eq!(
            parse(b"A=1\0B=2\0\0\0").unwrap(),
            vec![kv("A", "1"), kv("B", "2")]
        );
        assert_eq!(
            parse(b"A=1\0B=2").unwrap(),
            vec![kv("A", "1"), kv("B", "2")]
        );
        assert_eq!(parse(b"").unwrap(), vec![]);
        assert_eq!(parse(b"\0\0\0").unwrap(), vec![]);
    }

    #[test]
    fn empty_value_and_equals_in_value_are_kept() {
        assert_eq!(
            parse(b"A=\0B=x=y\0").unwrap(),
            vec![kv("A", ""), kv("B", "x=y")]
        );
    }

    #[test]
    fn record_without_equals_is_rejected() {
        assert_eq!(
            parse(b"A=1\0Broken\0"),
            Err(TextError::MissingEquals { offset: 4 })
        );
    }

    #[test]
    fn non_utf8_is_rejected() {
        assert_eq!(
            parse(b"A=\xff\xfe\0"),
            Err(TextError::NotUtf8 { offset: 0 })
        );
    }

    #[test]
    fn key_of_64_bytes_is_rejected_and_63_accepted() {
        let ok = format!("{}=1\0", "K".repeat(63));
        assert!(parse(ok.as_bytes()).is_ok());
        let long = format!("{}=1\0", "K".repeat(64));
        assert_eq!(
            parse(long.as_bytes()),
            Err(TextError::KeyTooLong { len: 64 })
        );
    }

    #[test]
    fn bad_key_characters_are_rejected() {
        assert!(matches!(
            parse(b"Bad Key=1\0"),
            Err(TextError::InvalidKey { .. })
        ));
        assert!(matches!(parse(b"=1\0"), Err(TextError::InvalidKey { .. })));
        assert!(parse(b"X#NodeArchitecture=x\0").is_ok());
    }

    #[test]
    fn simple_value_longer_than_255_is_rejected() {
        let ok = format!("TargetAlias={}\0", "a".repeat(255));
        assert!(parse(ok.as_bytes()).is_ok());
        let long = format!("TargetAlias={}\0", "a".repeat(256));
        assert_eq!(
            parse(long.as_bytes()),
            Err(TextError::ValueTooLong {
                key: "TargetAlias".into(),
                len: 256,
                max: 255
            })
        );
    }

    #[test]
    fn list_elements_are_checked_one_by_one() {
        let v = format!("{},{}", "a".repeat(200), "b".repeat(200));
        assert!(parse(format!("X-List={v}\0").as_bytes()).is_ok());
    }

    #[test]
    fn chap_challenge_may_be_long_but_not_past_8192() {
        let ok = format!("CHAP_C=0x{}\0", "ab".repeat(1024));
        assert!(parse(ok.as_bytes()).is_ok());
        let long = format!("CHAP_C=0x{}\0", "a".repeat(8192));
        assert!(matches!(
            parse(long.as_bytes()),
            Err(TextError::ValueTooLong { max: 8192, .. })
        ));
    }

    #[test]
    fn duplicate_key_is_an_error_unless_allowed() {
        let data = b"TargetName=iqn.a\0TargetAddress=1.2.3.4:3260,1\0TargetName=iqn.b\0";
        assert_eq!(
            parse(data),
            Err(TextError::DuplicateKey {
                key: "TargetName".into()
            })
        );
        assert_eq!(parse_allow_duplicates(data).unwrap().len(), 3);
    }

    #[test]
    fn encode_writes_nul_terminated_records_and_allows_duplicates() {
        let pairs = [("TargetName", "iqn.a"), ("TargetName", "iqn.b")];
        assert_eq!(
            &encode(&pairs).unwrap()[..],
            b"TargetName=iqn.a\0TargetName=iqn.b\0"
        );
    }

    #[test]
    fn encode_refuses_what_would_not_parse_back() {
        assert!(matches!(
            encode(&[("A", "x\0y")]),
            Err(TextError::NulInValue { .. })
        ));
        assert!(matches!(
            encode(&[("A=B", "x")]),
            Err(TextError::InvalidKey { .. })
        ));
    }

    #[test]
    fn accumulator_joins_a_pair_split_across_pdus() {
        let mut acc = TextAccumulator::new();
        assert_eq!(acc.push_pairs(b"MaxBurstLen", true).unwrap(), None);
        assert_eq!(acc.push_pairs(b"gth=65536\0Immed", true).unwrap(), None);
        assert_eq!(
            acc.push_pairs(b"iateData=Yes\0", false).unwrap(),
            Some(vec![
                kv("MaxBurstLength", "65536"),
                kv("ImmediateData", "Yes")
            ])
        );
        assert!(acc.is_empty());
    }

    #[test]
    fn accumulator_refuses_text_past_its_limit() {
        let mut acc = TextAccumulator::with_limit(10);
        assert_eq!(acc.push(b"A=12345", true).unwrap(), None);
        assert_eq!(
            acc.push(b"6789", true),
            Err(TextError::TooLong { len: 11, limit: 10 })
        );
        assert!(acc.is_empty());
        assert_eq!(
            acc.push(b"A=1\0", false).unwrap().as_deref(),
            Some(&b"A=1\0"[..])
        );
    }

    #[test]
    fn numbers_in_decimal_hex_and_base64() {
        assert_eq!(parse_number("0"), Ok(0));
        assert_eq!(parse_number("262144"), Ok(262144));
        assert_eq!(parse_number("0x40000"), Ok(262144));
        assert_eq!(parse_number("0X00ff"), Ok(255));
        // 0x040000 in base64.
        assert_eq!(parse_number("0bBAAA"), Ok(262144));
        assert_eq!(parse_number("18446744073709551615"), Ok(u64::MAX));
        for bad in [
            "",
            "x",
            "0x",
            "0b",
            "12a",
            "-1",
            " 1",
            "18446744073709551616",
            "0x1_0",
        ] {
            assert!(parse_number(bad).is_err(), "{bad:?} parsed");
        }
        assert!(parse_number(&format!("0x1{}", "0".repeat(16))).is_err());
    }

    #[test]
    fn binary_values_in_hex_and_base64() {
        assert_eq!(parse_binary("0x0102ff"), Ok(vec![1, 2, 0xff]));
        assert_eq!(parse_binary("0x102"), Ok(vec![1, 2]));
        assert_eq!(parse_binary("0bAQL/"), Ok(vec![1, 2, 0xff]));
        assert_eq!(parse_binary("0bAQI="), Ok(vec![1, 2]));
        assert!(parse_binary("0x").is_err());
        assert!(parse_binary("12").is_err());
        assert!(parse_binary("0bA").is_err());
        assert_eq!(format_hex(&[1, 0xab]), "0x01ab");
    }

    #[test]
    fn booleans_are_case_sensitive() {
        assert_eq!(parse_bool("Yes"), Ok(true));
        assert_eq!(parse_bool("No"), Ok(false));
        assert!(parse_bool("yes").is_err());
        assert_eq!(format_bool(true), "Yes");
    }

    fn key_strategy() -> impl Strategy<Value = String> {
        "[A-Z][A-Za-z0-9.+@_#-]{0,62}"
    }

    fn value_strategy() -> impl Strategy<Value = String> {
        // Any non-NUL text, UTF-8 included; short enough for a simple value.
        "[^\\x00]{0,60}"
    }

    proptest! {
        #[test]
        fn parse_inverts_encode(pairs in proptest::collection::btree_map(key_strategy(), value_strategy(), 0..12)) {
            let pairs: Vec<KeyValue> = pairs.into_iter().collect();
            let bytes = encode(&pairs).unwrap();
            prop_assert_eq!(parse(&bytes).unwrap(), pairs);
        }

        #[test]
        fn accumulated_pieces_parse_like_the_whole(
            pairs in proptest::collection::btree_map(key_strategy(), value_strategy(), 0..8),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..4),
        ) {
            let pairs: Vec<KeyValue> = pairs.into_iter().collect();
            let bytes = encode(&pairs).unwrap();
            let mut at: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
            at.sort_unstable();
            let mut acc = TextAccumulator::new();
            let mut start = 0;
            for &cut in &at {
                prop_assert_eq!(acc.push(&bytes[start..cut], true).unwrap(), None);
                start = cut;
            }
            let got = acc.push_pairs(&bytes[start..], false).unwrap();
            prop_assert_eq!(got, Some(pairs));
        }

        #[test]
        fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&data);
        }

        #[test]
        fn numbers_round_trip_in_every_encoding(n in any::<u64>()) {
            prop_assert_eq!(parse_number(&n.to_string()), Ok(n));
            prop_assert_eq!(parse_number(&format!("0x{n:x}")), Ok(n));
            prop_assert_eq!(parse_binary(&format_hex(&n.to_be_bytes())), Ok(n.to_be_bytes().to_vec()));
        }
    }
}
