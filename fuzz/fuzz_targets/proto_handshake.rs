//! Handshake messages from arbitrary bytes, as a peer without the pairing key would send
//! them: the responder's first read and the initiator's reply read answer with an error
//! (or, for a real message, a session), never a panic.
#![no_main]

use ferry_proto::handshake::{initiate, respond};
use libfuzzer_sys::fuzz_target;

const PSK: [u8; 32] = [0x5a; 32];

fuzz_target!(|data: &[u8]| {
    let _ = respond(&PSK, data);
    let (init, _) = initiate(&PSK).expect("a handshake starts");
    let _ = init.finish(data);
});
