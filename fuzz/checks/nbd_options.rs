//! Option haggling fed arbitrary bytes: the client flags, then a stream of option headers
//! and data, through the same decoders and state machine the server uses. Nothing may
//! panic, and every reply must be well framed.

use std::sync::Arc;

use ferry_nbd::negotiate::{Negotiation, Step};
use ferry_nbd::option::{OPTION_DATA_BYTES_MAX, decode_client_flags, decode_option_header};
use ferry_nbd::{Catalog, Export, ExportInfo, ExportResult, Extent, ZeroMode};

struct Dummy(ExportInfo);

impl Export for Dummy {
    type Buf = Vec<u8>;
    fn info(&self) -> &ExportInfo {
        &self.0
    }
    fn buffer(&self, len: usize) -> Vec<u8> {
        vec![0; len]
    }
    async fn read(&self, _: u64, b: Vec<u8>) -> ExportResult<Vec<u8>> {
        Ok(b)
    }
    async fn write(&self, _: u64, _: Vec<u8>, _: bool) -> ExportResult<()> {
        Ok(())
    }
    async fn flush(&self) -> ExportResult<()> {
        Ok(())
    }
    async fn trim(&self, _: u64, _: u64, _: bool) -> ExportResult<()> {
        Ok(())
    }
    async fn write_zeroes(&self, _: u64, _: u64, _: ZeroMode) -> ExportResult<()> {
        Ok(())
    }
    async fn cache(&self, _: u64, _: u64) -> ExportResult<()> {
        Ok(())
    }
    async fn block_status(&self, _: u64, len: u64, _: usize) -> ExportResult<Vec<Extent>> {
        Ok(vec![Extent { length: len, flags: 0 }])
    }
}

struct One(Arc<Dummy>);

impl Catalog for One {
    type Export = Dummy;
    fn open(&self, name: &str) -> Option<Arc<Dummy>> {
        (name.is_empty() || name == "disk").then(|| self.0.clone())
    }
    fn list(&self) -> Vec<(String, String)> {
        vec![("disk".into(), "fuzz".into())]
    }
}

/// Checks that `out` is a sequence of complete option replies.
fn framed(out: &[u8]) {
    let mut rest = out;
    while !rest.is_empty() {
        assert!(rest.len() >= 20, "truncated option reply");
        assert_eq!(&rest[..8], &0x0003_e889_0455_65a9u64.to_be_bytes());
        let len = u32::from_be_bytes(rest[16..20].try_into().unwrap()) as usize;
        assert!(rest.len() >= 20 + len, "reply length runs past the output");
        rest = &rest[20 + len..];
    }
}

pub fn run(data: &[u8]) {
    if data.len() < 4 {
        return;
    }
    let Ok(flags) = decode_client_flags(data[..4].try_into().unwrap()) else {
        return;
    };
    let catalog = One(Arc::new(Dummy(ExportInfo {
        size_bytes: 1 << 20,
        read_only: data.len().is_multiple_of(2),
        description: "fuzz".into(),
        can_trim: true,
        can_fast_zero: true,
        block_bytes_min: 512,
        block_bytes_preferred: 4096,
        rotational: false,
    })));
    let mut neg = Negotiation::new(flags, 1 << 16);
    let mut rest = &data[4..];
    let mut out = Vec::new();
    while rest.len() >= 16 {
        let Ok(h) = decode_option_header(rest[..16].try_into().unwrap()) else {
            return;
        };
        rest = &rest[16..];
        if h.length > OPTION_DATA_BYTES_MAX {
            return;
        }
        let n = (h.length as usize).min(rest.len());
        out.clear();
        let step = neg.on_option(h.code, &rest[..n], &catalog, &mut out);
        rest = &rest[n..];
        match step {
            Step::Continue => framed(&out),
            Step::Close | Step::Transmission(_) => return,
        }
    }
}
