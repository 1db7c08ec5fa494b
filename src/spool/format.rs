//! The spool's byte formats: the segment header, the record frame and the event encoding inside a record.
//!
//! ```text
//! segment  := header record*
//! header   := "HGSPOOL1" (8 bytes) | flags u8 (bit 0: records encrypted) | 7 reserved zero bytes
//! record   := len u32 LE | crc u32 LE | seq u64 LE | payload (len - 8 bytes)
//!             crc = CRC-32 (IEEE) of seq and payload; len counts seq and payload
//! payload  := plaintext event, or nonce (12 bytes) | AES-256-GCM(ciphertext | tag) with AAD = seq
//! event    := version u8 (1) | source str | id str | kind str | subject opt(str)
//!             | time opt(ts) | rank opt(u8) | received_at ts | content_type str | out_of_order u8 | body bytes
//! ts       := secs i64 LE | nanos u32 LE;  str := len u32 LE | UTF-8;  bytes := len u32 LE | bytes;
//! opt(x)   := 0 | 1 x
//! ```

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::event::Event;

pub const MAGIC: &[u8; 8] = b"HGSPOOL1";
pub const HEADER_LEN: u64 = 16;
/// Frame bytes before the payload: len, crc, seq.
pub const FRAME_LEN: u64 = 16;
/// A record longer than this is garbage (bodies are capped far below it).
pub const MAX_RECORD: u32 = 64 << 20;
/// The largest request body a record can hold: [`MAX_RECORD`] less a margin for the seq, the encryption
/// nonce and tag and the event's other fields (source, id, type, subject, content type: each capped far below it).
pub const MAX_BODY_BYTES: u64 = MAX_RECORD as u64 - (1 << 20);
const VERSION: u8 = 1;

/// A record that does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("spool record does not decode: {0}")]
pub struct DecodeError(pub &'static str);

/// The segment header for a segment whose records are (or are not) encrypted.
pub fn header(encrypted: bool) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8] = u8::from(encrypted);
    h
}

/// Reads a segment header: `Some(encrypted)` when it is one.
pub fn parse_header(bytes: &[u8]) -> Option<bool> {
    let h = bytes.get(..HEADER_LEN as usize)?;
    (h.get(..8)? == MAGIC).then_some(h[8] & 1 == 1)
}

/// Frames `payload` as record `seq`.
pub fn frame(seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + FRAME_LEN as usize);
    frame_into(&mut out, seq, |out| {
        out.extend_from_slice(payload);
        Some(())
    });
    out
}

/// Appends record `seq` to `out`, its payload written by `payload` (the writer frames a whole batch into one
/// buffer, sealing in place). When `payload` fails, `out` is left as it was and `None` returned.
pub fn frame_into(out: &mut Vec<u8>, seq: u64, payload: impl FnOnce(&mut Vec<u8>) -> Option<()>) -> Option<()> {
    let start = out.len();
    out.extend_from_slice(&[0u8; 8]);
    out.extend_from_slice(&seq.to_le_bytes());
    if payload(out).is_none() {
        out.truncate(start);
        return None;
    }
    let body = &out[start + 8..];
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    let crc = crc32fast::hash(body);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Some(())
}

/// The length on disk of a record holding `plain` bytes of event (sealed: nonce and tag added).
pub fn record_len(plain: usize, encrypted: bool) -> u64 {
    let seal = if encrypted { super::crypto::SEAL_OVERHEAD } else { 0 };
    FRAME_LEN + (plain + seal) as u64
}

/// A well-formed record at the start of `bytes`: its seq, payload and total length. `None` when the bytes are
/// short (a torn write) or fail the checksum.
pub fn unframe(bytes: &[u8]) -> Option<(u64, &[u8], usize)> {
    let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?);
    if !(8..=MAX_RECORD).contains(&len) {
        return None;
    }
    let crc = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?);
    let body = bytes.get(8..8 + len as usize)?;
    if crc32fast::hash(body) != crc {
        return None;
    }
    let seq = u64::from_le_bytes(body.get(..8)?.try_into().ok()?);
    Some((seq, &body[8..], 8 + len as usize))
}

// === event encoding ===

/// Serializes an event.
pub fn encode(e: &Event) -> Vec<u8> {
    let mut w = Vec::with_capacity(e.body.len() + 256);
    w.push(VERSION);
    put_str(&mut w, &e.source);
    put_str(&mut w, &e.id);
    put_str(&mut w, &e.kind);
    match &e.subject {
        Some(s) => {
            w.push(1);
            put_str(&mut w, s);
        }
        None => w.push(0),
    }
    match &e.time {
        Some(t) => {
            w.push(1);
            put_ts(&mut w, t);
        }
        None => w.push(0),
    }
    match e.rank {
        Some(r) => w.extend_from_slice(&[1, r]),
        None => w.push(0),
    }
    put_ts(&mut w, &e.received_at);
    put_str(&mut w, &e.content_type);
    w.push(u8::from(e.out_of_order));
    w.extend_from_slice(&u32::try_from(e.body.len()).unwrap_or(u32::MAX).to_le_bytes());
    w.extend_from_slice(&e.body);
    w
}

fn put_str(w: &mut Vec<u8>, s: &str) {
    // Strings and bodies are bounded by max_body_bytes, far below 4 GiB.
    w.extend_from_slice(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_le_bytes());
    w.extend_from_slice(s.as_bytes());
}

fn put_ts(w: &mut Vec<u8>, t: &DateTime<Utc>) {
    w.extend_from_slice(&t.timestamp().to_le_bytes());
    w.extend_from_slice(&t.timestamp_subsec_nanos().to_le_bytes());
}

/// Deserializes an event.
///
/// # Errors
/// [`DecodeError`] when the bytes are not an event of a known version.
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    let mut r = Reader { bytes, at: 0 };
    if r.u8()? != VERSION {
        return Err(DecodeError("unknown version"));
    }
    let source: Arc<str> = Arc::from(r.str()?);
    let id = r.str()?;
    let kind = r.str()?;
    let subject = if r.u8()? == 1 { Some(r.str()?) } else { None };
    let time = if r.u8()? == 1 { Some(r.ts()?) } else { None };
    let rank = if r.u8()? == 1 { Some(r.u8()?) } else { None };
    let received_at = r.ts()?;
    let content_type = r.str()?;
    let out_of_order = r.u8()? == 1;
    let len = u32::from_le_bytes(r.take(4)?.try_into().map_err(|_| DecodeError("short"))?) as usize;
    let body = Bytes::copy_from_slice(r.take(len)?);
    Ok(Event { source, id, kind, subject, time, rank, received_at, content_type, body, out_of_order })
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        let out = self.bytes.get(self.at..self.at + n).ok_or(DecodeError("short"))?;
        self.at += n;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn str(&mut self) -> Result<String, DecodeError> {
        let len = u32::from_le_bytes(self.take(4)?.try_into().map_err(|_| DecodeError("short"))?) as usize;
        let s = self.take(len)?;
        String::from_utf8(s.to_vec()).map_err(|_| DecodeError("not UTF-8"))
    }

    fn ts(&mut self) -> Result<DateTime<Utc>, DecodeError> {
        let secs = i64::from_le_bytes(self.take(8)?.try_into().map_err(|_| DecodeError("short"))?);
        let nanos = u32::from_le_bytes(self.take(4)?.try_into().map_err(|_| DecodeError("short"))?);
        DateTime::from_timestamp(secs, nanos).ok_or(DecodeError("time out of range"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn event(n: u32) -> Event {
        Event {
            source: Arc::from("tyro"),
            id: format!("tx{n}:paid"),
            kind: "healthfundpaidinvoice".into(),
            subject: Some(format!("tx{n}")),
            time: DateTime::from_timestamp(1_700_000_000, 5),
            rank: Some(2),
            received_at: DateTime::from_timestamp(1_700_000_100, 7).unwrap(),
            content_type: "application/json".into(),
            body: Bytes::from(format!("{{\"n\":{n}}}")),
            out_of_order: true,
        }
    }

    #[test]
    fn events_round_trip() {
        let e = event(1);
        let d = decode(&encode(&e)).unwrap();
        assert_eq!(
            (d.id, d.subject, d.time, d.rank, d.body),
            (e.id.clone(), e.subject.clone(), e.time, e.rank, e.body.clone())
        );
        assert!(d.out_of_order);
        assert_eq!(d.received_at, e.received_at);
        assert!(decode(&encode(&e)[..10]).is_err());
        let mut long = event(2);
        long.subject = Some("é".repeat(40_000)); // 80,000 bytes: past any 16-bit length
        assert_eq!(decode(&encode(&long)).unwrap().subject, long.subject);
    }

    #[test]
    fn frames_detect_torn_and_flipped_bytes() {
        let f = frame(42, b"payload");
        assert_eq!(unframe(&f), Some((42, &b"payload"[..], f.len())));
        assert_eq!(f.len() as u64, record_len(7, false));
        let mut batch = b"kept".to_vec();
        assert_eq!(frame_into(&mut batch, 7, |_| None), None);
        assert_eq!(batch, b"kept", "a failed payload leaves the buffer as it was");
        assert_eq!(unframe(&f[..f.len() - 1]), None);
        let mut bad = f.clone();
        bad[20] ^= 1;
        assert_eq!(unframe(&bad), None);
        assert_eq!(parse_header(&header(true)), Some(true));
        assert_eq!(parse_header(b"garbage garbage!"), None);
    }
}
