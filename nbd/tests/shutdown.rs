//! Shutdown with a request that never finishes: after the grace period the server answers
//! it with ESHUTDOWN, then closes. Driven over an in-memory stream against an export whose
//! writes hang, which no real datastore does on demand.

use std::future::pending;
use std::sync::Arc;
use std::time::Duration;

use ferry_nbd::{Catalog, Export, ExportInfo, ExportResult, Extent, ServerConfig, ZeroMode, serve_connection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

struct Stuck(ExportInfo);

impl Export for Stuck {
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
        pending().await
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

struct One(Arc<Stuck>);

impl Catalog for One {
    type Export = Stuck;
    fn open(&self, name: &str) -> Option<Arc<Stuck>> {
        (name == "x").then(|| self.0.clone())
    }
    fn list(&self) -> Vec<(String, String)> {
        vec![("x".into(), String::new())]
    }
}

#[tokio::test]
async fn stuck_request_gets_eshutdown_after_the_grace_period() {
    let info = ExportInfo::new(1 << 20);
    let catalog = Arc::new(One(Arc::new(Stuck(info))));
    let cfg = Arc::new(ServerConfig {
        shutdown_grace: Duration::from_millis(200),
        ..ServerConfig::default()
    });
    let shutdown = CancellationToken::new();
    let (mut client, server) = tokio::io::duplex(1 << 20);
    let s = shutdown.clone();
    let task = tokio::spawn(async move { serve_connection(server, "test", catalog, cfg, s).await });

    let mut greeting = [0u8; 18];
    client.read_exact(&mut greeting).await.unwrap();
    client.write_all(&1u32.to_be_bytes()).await.unwrap(); // FIXED_NEWSTYLE, zeroes kept
    let mut opt = 0x4948_4156_454f_5054u64.to_be_bytes().to_vec();
    opt.extend_from_slice(&1u32.to_be_bytes()); // EXPORT_NAME
    opt.extend_from_slice(&1u32.to_be_bytes());
    opt.push(b'x');
    client.write_all(&opt).await.unwrap();
    let mut export = [0u8; 8 + 2 + 124];
    client.read_exact(&mut export).await.unwrap();
    assert_eq!(u64::from_be_bytes(export[..8].try_into().unwrap()), 1 << 20);

    // A WRITE that will never complete, then the agent is told to stop.
    let mut req = 0x2560_9513u32.to_be_bytes().to_vec();
    req.extend_from_slice(&[0, 0, 0, 1]);
    req.extend_from_slice(&77u64.to_be_bytes());
    req.extend_from_slice(&0u64.to_be_bytes());
    req.extend_from_slice(&512u32.to_be_bytes());
    req.extend_from_slice(&[0xaa; 512]);
    client.write_all(&req).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    shutdown.cancel();

    let mut reply = [0u8; 16];
    tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut reply))
        .await
        .expect("answered")
        .unwrap();
    assert_eq!(&reply[..4], &0x6744_6698u32.to_be_bytes());
    assert_eq!(u32::from_be_bytes(reply[4..8].try_into().unwrap()), 108, "ESHUTDOWN");
    assert_eq!(u64::from_be_bytes(reply[8..16].try_into().unwrap()), 77);
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "closed after the reply");
    task.await.unwrap().unwrap();
}
