//! Metadata files from arbitrary bytes (damaged, cut, foreign, from a newer agent):
//! opening the envelope gives the body or a reason, never a panic; a body it gives is the
//! file's tail, after one line of text.

use ferry_journal::envelope::{MetaKind, open_envelope};

const KIND: MetaKind = MetaKind {
    name: "volumes",
    version: 1,
};

pub fn run(data: &[u8]) {
    if let Ok((version, body)) = open_envelope(KIND, data) {
        assert!(version <= KIND.version);
        assert!(data.ends_with(body));
        if version == 0 {
            assert_eq!(body, data, "a bare file is its own body");
        } else {
            let line = &data[..data.len() - body.len()];
            assert!(
                line.ends_with(b"\n") && std::str::from_utf8(line).is_ok(),
                "one text line, then the body"
            );
        }
    }
}
