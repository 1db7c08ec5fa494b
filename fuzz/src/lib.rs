//! Shared generators for the property tests in `tests/`. See the README ("Fuzzing") for how to run them.

use proptest::prelude::*;

/// Bytes that look like the input a decoder expects often enough to get past its first check: fragments of the
/// format mixed with arbitrary bytes.
pub fn shaped(fragments: &'static [&'static str], max_len: usize) -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        3 => proptest::sample::select(fragments).prop_map(|f| f.as_bytes().to_vec()),
        1 => proptest::collection::vec(any::<u8>(), 0..8),
        1 => "[a-zA-Z0-9 _.:/-]{0,12}".prop_map(String::into_bytes),
    ];
    proptest::collection::vec(piece, 0..max_len).prop_map(|pieces| pieces.concat())
}
