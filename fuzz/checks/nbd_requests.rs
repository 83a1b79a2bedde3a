//! Request headers from arbitrary bytes, decoded and checked in each reply mode against an
//! export; a request that passes the check must be in range, aligned and within limits.

use ferry_nbd::ExportInfo;
use ferry_nbd::negotiate::ReplyMode;
use ferry_nbd::request::{Checked, Limits, Op, check, decode_request, header_bytes};

pub fn run(data: &[u8]) {
    let info = ExportInfo {
        read_only: data.first().is_some_and(|b| b & 1 == 1),
        ..ExportInfo::new(1 << 30)
    };
    for mode in [ReplyMode::Simple, ReplyMode::Structured, ReplyMode::Extended] {
        let n = header_bytes(mode);
        if data.len() < n {
            continue;
        }
        let Ok(req) = decode_request(&data[..n], mode) else {
            continue;
        };
        let lim = Limits {
            info: &info,
            mode,
            base_allocation: data.len().is_multiple_of(2),
            payload_bytes_max: 1 << 25,
        };
        if let Checked::Op(op) = check(&req, lim) {
            let (off, len) = op.range();
            if matches!(op, Op::Read { .. } | Op::Write { .. }) {
                assert!(len <= 1 << 25);
            }
            assert!(off.checked_add(len).is_some_and(|e| e <= info.size_bytes));
            assert!(!(info.read_only && op.writes()));
        }
    }
}
