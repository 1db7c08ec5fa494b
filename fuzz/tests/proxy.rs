//! The PROXY protocol v2 header parser (`hookgate::client_addr::read_proxy_v2`): any bytes from a trusted peer are
//! a result or an error, never a panic or a hang, and it reads at most the fixed header plus its address cap.

use std::net::{IpAddr, Ipv4Addr};

use hookgate::client_addr::read_proxy_v2;
use proptest::prelude::*;

const SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The fixed header and the largest address block the parser accepts.
const MOST_READ: usize = 16 + 1024;

fn header() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![Just(0x20u8), Just(0x21u8), any::<u8>()],
        prop_oneof![Just(0x11u8), Just(0x12u8), Just(0x21u8), Just(0x22u8), Just(0x31u8), Just(0x00u8), any::<u8>()],
        prop_oneof![Just(None), Just(Some(12u16)), Just(Some(36u16)), Just(Some(216u16)), any::<u16>().prop_map(Some)],
        proptest::collection::vec(any::<u8>(), 0..300),
        any::<bool>(),
    )
        .prop_map(|(command, family, declared, block, good_signature)| {
            let mut out = if good_signature { SIGNATURE.to_vec() } else { b"PROXY TCP4 1".to_vec() };
            out.extend_from_slice(&[command, family]);
            let len = declared.unwrap_or(u16::try_from(block.len()).unwrap_or(u16::MAX));
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&block);
            out
        })
}

fn run(input: &[u8]) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let trusted = ["127.0.0.0/8".parse::<ipnet::IpNet>().expect("net")];
    let peer = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut rest: &[u8] = input;
    let _ = rt.block_on(read_proxy_v2(&mut rest, peer, &trusted));
    let consumed = input.len() - rest.len();
    assert!(consumed <= MOST_READ, "read {consumed} bytes");
}

proptest! {
    #[test]
    fn headers_never_panic(input in header()) {
        run(&input);
    }

    #[test]
    fn arbitrary_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..2048)) {
        run(&input);
    }

    #[test]
    fn untrusted_peers_are_refused_before_reading(input in proptest::collection::vec(any::<u8>(), 0..64)) {
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let mut rest: &[u8] = &input;
        let got = rt.block_on(read_proxy_v2(&mut rest, IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9)), &[]));
        prop_assert!(got.is_err());
        prop_assert_eq!(rest.len(), input.len());
    }
}
