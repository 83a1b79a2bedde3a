//! A client's byte stream after the handshake, arbitrary, sent in pieces to a server whose
//! export guesses along with the reader (small WRITEs read several at once into buffers
//! asked for before their headers): the server ends with a reply or a protocol error,
//! never a panic, and every buffer it asked for is dropped.

#[path = "../../nbd/tests/mem/mod.rs"]
mod mem;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use ferry_nbd::{ExportInfo, ServerConfig, serve_connection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

pub fn run(data: &[u8]) {
    let Some((&piece, stream)) = data.split_first() else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let export = mem::Mem::new(ExportInfo::new(1 << 20), vec![0; 1 << 20]);
        let (mut client, server) = tokio::net::UnixStream::pair().unwrap();
        let cfg = Arc::new(ServerConfig {
            inflight_bytes_max: 64 << 20,
            ..ServerConfig::default()
        });
        let task = tokio::spawn(serve_connection(
            server,
            "fuzz",
            Arc::new(mem::One(export.clone())),
            cfg,
            CancellationToken::new(),
        ));
        mem::handshake(&mut client).await.unwrap();
        let (mut rd, mut wr) = client.into_split();
        let replies = tokio::spawn(async move {
            let mut sink = vec![0u8; 1 << 16];
            while rd.read(&mut sink).await.is_ok_and(|n| n > 0) {}
        });
        for chunk in stream.chunks(piece as usize * 61 + 1) {
            if wr.write_all(chunk).await.is_err() {
                break;
            }
            tokio::task::yield_now().await;
        }
        drop(wr); // end of stream
        let _ = task.await.expect("the server does not panic");
        replies.await.unwrap();
        assert_eq!(export.live.load(Ordering::SeqCst), 0, "every buffer dropped once");
    });
}
