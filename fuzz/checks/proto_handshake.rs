//! Handshake messages from arbitrary bytes, as a peer without the pairing key would send
//! them: the responder's first read and the initiator's reply read answer with an error
//! (or, for a real message, a session), never a panic.

use ferry_proto::handshake::{initiate, respond};

const PSK: [u8; 32] = [0x5a; 32];

pub fn run(data: &[u8]) {
    let _ = respond(&PSK, data);
    let (init, _) = initiate(&PSK).expect("a handshake starts");
    let _ = init.finish(data);
}
