//! The spool record format (`hookgate::spool::format`): decode(encode(e)) == e for every event, frames round
//! trip and catch damage, and no bytes read back from a disk make the decoders panic.

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use hookgate::event::Event;
use hookgate::spool::{format, Cipher};
use proptest::prelude::*;

fn time() -> impl Strategy<Value = DateTime<Utc>> {
    // chrono's whole range; now and then a leap second (nanos past 1e9, only at :59).
    (-8_334_601_228_800i64..8_210_266_876_799, 0u32..1_000_000_000, proptest::bool::weighted(0.05)).prop_filter_map(
        "in range",
        |(s, n, leap)| match leap {
            true => DateTime::from_timestamp(s - s.rem_euclid(60) + 59, n + 1_000_000_000),
            false => DateTime::from_timestamp(s, n),
        },
    )
}

fn event() -> impl Strategy<Value = Event> {
    (
        ("[a-z0-9_-]{1,32}", ".{0,80}", ".{0,40}", proptest::option::of(".{0,80}")),
        (proptest::option::of(time()), proptest::option::of(any::<u8>()), time(), ".{0,40}"),
        (proptest::collection::vec(any::<u8>(), 0..2048), any::<bool>()),
    )
        .prop_map(|((source, id, kind, subject), (t, rank, received_at, content_type), (body, out_of_order))| {
            Event {
                source: Arc::from(source),
                id,
                kind,
                subject,
                time: t,
                rank,
                received_at,
                content_type,
                body: Bytes::from(body),
                out_of_order,
            }
        })
}

fn same(a: &Event, b: &Event) -> bool {
    (&a.source, &a.id, &a.kind, &a.subject, a.time, a.rank, a.received_at, &a.content_type, &a.body, a.out_of_order)
        == (
            &b.source,
            &b.id,
            &b.kind,
            &b.subject,
            b.time,
            b.rank,
            b.received_at,
            &b.content_type,
            &b.body,
            b.out_of_order,
        )
}

proptest! {
    #[test]
    fn events_round_trip(e in event()) {
        let bytes = format::encode(&e);
        let back = format::decode(&bytes).expect("an encoded event decodes");
        prop_assert!(same(&e, &back), "{e:?} != {back:?}");
    }

    #[test]
    fn sealed_records_round_trip(e in event(), seq in any::<u64>(), key in any::<[u8; 32]>()) {
        let cipher = Cipher::new(&key);
        let sealed = cipher.seal(seq, &format::encode(&e)).expect("seal");
        let framed = format::frame(seq, &sealed);
        let (got_seq, payload, len) = format::unframe(&framed).expect("unframe");
        prop_assert_eq!((got_seq, len), (seq, framed.len()));
        let plain = cipher.open(seq, payload).expect("open");
        prop_assert!(same(&e, &format::decode(&plain).expect("decode")));
        prop_assert!(cipher.open(seq.wrapping_add(1), payload).is_none(), "the seq is bound to the record");
    }

    #[test]
    fn damaged_frames_are_refused(e in event(), seq in any::<u64>(), at in any::<usize>(), flip in 1u8..=255) {
        let mut framed = format::frame(seq, &format::encode(&e));
        let at = at % framed.len();
        framed[at] ^= flip;
        // A flipped length can still frame a shorter, valid-looking prefix only if the checksum matches too.
        if let Some((_, payload, len)) = format::unframe(&framed) {
            prop_assert!(len <= framed.len());
            let _ = format::decode(payload);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let _ = format::decode(&bytes);
        let _ = format::parse_header(&bytes);
        if let Some((_, payload, len)) = format::unframe(&bytes) {
            prop_assert!(len <= bytes.len() && payload.len() + 16 == len);
        }
    }

    #[test]
    fn truncated_events_are_errors(e in event(), cut in any::<usize>()) {
        let bytes = format::encode(&e);
        let cut = cut % bytes.len();
        prop_assert!(format::decode(&bytes[..cut]).is_err());
    }

    #[test]
    fn mutated_events_never_panic(e in event(), edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let mut bytes = format::encode(&e);
        for (at, b) in edits {
            let at = at % bytes.len();
            bytes[at] = b;
        }
        let _ = format::decode(&bytes);
    }
}
