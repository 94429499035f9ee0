//! Open Protocol framing: a telegram is a 20-byte ASCII header, a data field and a NUL.
//! Telegrams are framed by the 4-digit length at their start, never by the NUL: binary
//! MIDs carry NULs inside and have none at the end. A NUL after a telegram is consumed
//! when it is there (peek-and-consume), so a NUL that arrives in the next TCP segment is
//! harmless.
//!
//! Pure functions over bytes; `Ok(None)` (incomplete) is a normal outcome. This file
//! depends on nothing in the crate so that the fuzz target can include it as it is.

use std::fmt;

/// Header length; the data field starts at byte 21 (1-based, as the spec counts).
pub const HEADER_LEN: usize = 20;
/// The length field counts the header and the data, not the trailing NUL.
pub const MAX_LEN: usize = 9999;

/// The 20-byte header. Optional fields are blank (spaces) on the wire when `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub mid: u16,
    /// `"   "`, `"000"` and `"001"` all mean revision 1.
    pub revision: u16,
    /// Only meaningful on subscribe MIDs.
    pub no_ack: bool,
    pub station: Option<u8>,
    pub spindle: Option<u8>,
    /// Link-level sequence number 1..=99; `None` when blank or `00` (not used).
    pub seq: Option<u8>,
    pub parts: Option<u8>,
    pub part: Option<u8>,
}

impl Header {
    /// A header with every optional field blank.
    pub fn new(mid: u16, revision: u16) -> Header {
        Header { mid, revision, no_ack: false, station: None, spindle: None, seq: None, parts: None, part: None }
    }
}

/// One telegram. `data` excludes the trailing NUL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Telegram {
    pub header: Header,
    pub data: Vec<u8>,
}

impl Telegram {
    pub fn new(mid: u16, revision: u16, data: impl Into<Vec<u8>>) -> Telegram {
        Telegram { header: Header::new(mid, revision), data: data.into() }
    }

    pub fn mid(&self) -> u16 {
        self.header.mid
    }
}

/// The stream cannot be resynchronised after one of these: the caller drops the link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The first four bytes are not digits, or give a length outside 20..=9999.
    Length(String),
    /// A header field is malformed; names the field and what was there.
    Header { field: &'static str, found: String },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Length(found) => write!(f, "bad length field {found:?}"),
            FrameError::Header { field, found } => write!(f, "bad header field {field}: {found:?}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Why a telegram cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncodeError {
    TooLong(usize),
    FieldRange(&'static str),
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::TooLong(len) => write!(f, "telegram of {len} bytes exceeds {MAX_LEN}"),
            EncodeError::FieldRange(field) => write!(f, "header field {field} out of range"),
        }
    }
}

impl std::error::Error for EncodeError {}

/// Takes one telegram off the front of `buf`. `Ok(None)` means more bytes are needed; the
/// bytes stay in `buf`. Leading NULs (the terminator of the previous telegram, split off
/// into this read) are skipped.
pub fn decode(buf: &mut Vec<u8>) -> Result<Option<Telegram>, FrameError> {
    let nuls = buf.iter().take_while(|b| **b == 0).count();
    if nuls > 0 {
        buf.drain(..nuls);
    }
    if buf.len() < 4 {
        // Fail early on garbage rather than waiting for four bytes that will not help.
        if let Some(bad) = buf.iter().find(|b| !b.is_ascii_digit()) {
            return Err(FrameError::Length(format!("{:?}", *bad as char)));
        }
        return Ok(None);
    }
    let len = digits(&buf[0..4]).ok_or_else(|| FrameError::Length(lossy(&buf[0..4])))? as usize;
    if !(HEADER_LEN..=MAX_LEN).contains(&len) {
        return Err(FrameError::Length(lossy(&buf[0..4])));
    }
    if buf.len() < len {
        return Ok(None);
    }
    let header = parse_header(&buf[..HEADER_LEN])?;
    let data = buf[HEADER_LEN..len].to_vec();
    let consumed = if buf.get(len) == Some(&0) { len + 1 } else { len };
    buf.drain(..consumed);
    Ok(Some(Telegram { header, data }))
}

/// Appends the telegram and its NUL terminator to `out`.
pub fn encode(telegram: &Telegram, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let h = &telegram.header;
    let len = HEADER_LEN + telegram.data.len();
    if len > MAX_LEN {
        return Err(EncodeError::TooLong(len));
    }
    if h.mid > 9999 {
        return Err(EncodeError::FieldRange("mid"));
    }
    if h.revision > 999 {
        return Err(EncodeError::FieldRange("revision"));
    }
    for (field, value, max) in [
        ("station", h.station, 99),
        ("spindle", h.spindle, 99),
        ("seq", h.seq, 99),
        ("parts", h.parts, 9),
        ("part", h.part, 9),
    ] {
        if value.is_some_and(|v| v > max) || (field == "seq" && h.seq == Some(0)) {
            return Err(EncodeError::FieldRange(field));
        }
    }
    out.reserve(len + 1);
    out.extend_from_slice(format!("{len:04}{:04}{:03}", h.mid, h.revision).as_bytes());
    out.push(if h.no_ack { b'1' } else { b'0' });
    for (value, width) in [(h.station, 2), (h.spindle, 2), (h.seq, 2), (h.parts, 1), (h.part, 1)] {
        match value {
            Some(v) => out.extend_from_slice(format!("{v:0width$}").as_bytes()),
            None => out.extend(std::iter::repeat_n(b' ', width)),
        }
    }
    out.extend_from_slice(&telegram.data);
    out.push(0);
    Ok(())
}

fn parse_header(h: &[u8]) -> Result<Header, FrameError> {
    let bad = |field: &'static str, bytes: &[u8]| FrameError::Header { field, found: lossy(bytes) };
    let mid = digits(&h[4..8]).ok_or_else(|| bad("mid", &h[4..8]))? as u16;
    let revision = match optional(&h[8..11]).map_err(|()| bad("revision", &h[8..11]))? {
        None | Some(0) => 1,
        Some(rev) => rev as u16,
    };
    let no_ack = match h[11] {
        b'1' => true,
        b'0' | b' ' => false,
        _ => return Err(bad("no_ack", &h[11..12])),
    };
    let small = |field: &'static str, bytes: &[u8]| -> Result<Option<u8>, FrameError> {
        optional(bytes).map(|v| v.map(|v| v as u8)).map_err(|()| bad(field, bytes))
    };
    let station = small("station", &h[12..14])?;
    let spindle = small("spindle", &h[14..16])?;
    let seq = small("seq", &h[16..18])?.filter(|s| *s != 0);
    let parts = small("parts", &h[18..19])?.filter(|p| *p != 0);
    let part = small("part", &h[19..20])?.filter(|p| *p != 0);
    Ok(Header { mid, revision, no_ack, station, spindle, seq, parts, part })
}

/// All digits: the value. Anything else: `None`.
fn digits(bytes: &[u8]) -> Option<u32> {
    if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(bytes.iter().fold(0u32, |acc, b| acc * 10 + u32::from(b - b'0')))
}

/// All spaces: `None`; all digits: the value; a mix is an error.
fn optional(bytes: &[u8]) -> Result<Option<u32>, ()> {
    if bytes.iter().all(|b| *b == b' ') {
        return Ok(None);
    }
    digits(bytes).map(Some).ok_or(())
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(text: &str) -> Vec<u8> {
        let mut bytes = text.replace('·', " ").into_bytes();
        bytes.push(0);
        bytes
    }

    fn decode_one(bytes: &[u8]) -> Telegram {
        let mut buf = bytes.to_vec();
        let telegram = decode(&mut buf).unwrap().expect("a whole telegram");
        assert!(buf.is_empty(), "left over: {buf:?}");
        telegram
    }

    /// The example telegrams of the implementer's notes (§1.4 and §7): decoded fields,
    /// and re-encoded they give the same header semantics.
    #[test]
    fn spec_examples() {
        let cases: &[(&str, u16, u16, &str)] = &[
            ("00200001003·········", 1, 3, ""),
            ("00209999001·········", 9999, 1, ""),
            ("00200060002·········", 60, 2, ""),
            ("00230018001·········005", 18, 1, "005"),
            ("00260004············001802", 4, 1, "001802"),
            ("00240005············0018", 5, 1, "0018"),
            (
                "00570002············010001020103Airbag1                  ",
                2,
                1,
                "010001020103Airbag1                  ",
            ),
        ];
        for (text, mid, revision, data) in cases {
            let telegram = decode_one(&frame(text));
            assert_eq!(telegram.header.mid, *mid, "{text}");
            assert_eq!(telegram.header.revision, *revision, "{text}");
            assert_eq!(telegram.data, data.as_bytes(), "{text}");
            let mut again = Vec::new();
            encode(&telegram, &mut again).unwrap();
            assert_eq!(decode_one(&again), telegram, "{text}");
        }
    }

    #[test]
    fn link_ack_example_carries_its_sequence_number() {
        let telegram = decode_one(&frame("00249997001·····05··0061"));
        assert_eq!(telegram.header.mid, 9997);
        assert_eq!(telegram.header.seq, Some(5));
        assert_eq!(telegram.data, b"0061");
    }

    #[test]
    fn partial_reads_wait_for_the_length_and_a_late_nul_is_skipped() {
        let bytes = frame("00230018001·········005");
        // Split at every byte boundary, including between the length and the body and
        // before the NUL.
        for split in 1..bytes.len() {
            let mut buf = bytes[..split].to_vec();
            let first = decode(&mut buf).unwrap();
            if split < bytes.len() - 1 {
                assert_eq!(first, None, "split {split}");
                buf.extend_from_slice(&bytes[split..]);
                assert_eq!(decode(&mut buf).unwrap().unwrap().data, b"005");
            } else {
                assert_eq!(first.unwrap().data, b"005");
                buf.extend_from_slice(&bytes[split..]);
                assert_eq!(decode(&mut buf).unwrap(), None);
            }
            assert!(buf.is_empty(), "split {split}: {buf:?}");
        }
    }

    #[test]
    fn concatenated_telegrams_come_out_one_by_one() {
        let mut buf = frame("00209999001·········");
        buf.extend(frame("00240005············0018"));
        buf.extend(b"0020".iter()); // the start of a third
        assert_eq!(decode(&mut buf).unwrap().unwrap().header.mid, 9999);
        assert_eq!(decode(&mut buf).unwrap().unwrap().header.mid, 5);
        assert_eq!(decode(&mut buf).unwrap(), None);
        assert_eq!(buf, b"0020");
    }

    #[test]
    fn binary_payload_without_a_trailing_nul_is_framed_by_length() {
        // ASCII part, NUL, binary part with a NUL in it, and no terminator.
        let mut body = b"00290900001         abc\0".to_vec();
        body.extend([0x00, 0xff, 0x00, 0x10, 0x20]);
        let mut buf = body.clone();
        buf.extend(frame("00209999001·········"));
        let first = decode(&mut buf).unwrap().unwrap();
        assert_eq!(first.header.mid, 900);
        assert_eq!(first.data, &body[20..]);
        // The next telegram follows directly; its leading digit is never taken for a NUL.
        assert_eq!(decode(&mut buf).unwrap().unwrap().header.mid, 9999);
    }

    #[test]
    fn framing_errors_name_the_problem() {
        let cases: &[(&[u8], &str)] = &[
            (b"00x0", "bad length field \"00x0\""),
            (b"0019", "bad length field \"0019\""),
            (b"A", "bad length field \"'A'\""),
            (b"00200A01001         ", "bad header field mid: \"0A01\""),
            (b"002000010X1         ", "bad header field revision: \"0X1\""),
            (b"00200001001X        ", "bad header field no_ack: \"X\""),
            (b"002000010010 1      ", "bad header field station: \" 1\""),
        ];
        for (bytes, expected) in cases {
            let err = decode(&mut bytes.to_vec()).unwrap_err();
            assert_eq!(err.to_string(), *expected);
        }
    }

    #[test]
    fn encode_round_trips_every_header_field() {
        let telegram = Telegram {
            header: Header {
                mid: 61,
                revision: 999,
                no_ack: true,
                station: Some(3),
                spindle: Some(0),
                seq: Some(99),
                parts: Some(2),
                part: Some(1),
            },
            data: b"payload".to_vec(),
        };
        let mut out = Vec::new();
        encode(&telegram, &mut out).unwrap();
        assert_eq!(out, b"00270061999103009921payload\0");
        assert_eq!(decode_one(&out), telegram);
    }

    #[test]
    fn encode_refuses_what_cannot_be_framed() {
        let mut out = Vec::new();
        let long = Telegram::new(61, 1, vec![b'x'; MAX_LEN]);
        assert_eq!(encode(&long, &mut out), Err(EncodeError::TooLong(MAX_LEN + HEADER_LEN)));
        let mut bad_seq = Telegram::new(61, 1, "");
        bad_seq.header.seq = Some(0);
        assert_eq!(encode(&bad_seq, &mut out), Err(EncodeError::FieldRange("seq")));
        assert!(out.is_empty());
    }
}
