//! A tokio echo server written like tokio's own echo example (multi-threaded runtime, one task and
//! a 1 KiB buffer per connection), as a peer to compare against. Nagle's delay is turned off as in
//! the other servers, so pipelined echoes are not held back by delayed acknowledgements.

use std::net::{IpAddr, Ipv4Addr};

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Parser)]
struct Args {
    /// TCP port (0 picks a free one; the first line printed names it).
    #[arg(long, default_value_t = 8081)]
    port: u16,
    /// Address to listen on, IPv4 or IPv6.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    bind: IpAddr,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_io()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind((args.bind, args.port)).await?;
        println!("tokio-echo: listening on {}", listener.local_addr()?);
        loop {
            let (mut socket, _) = match listener.accept().await {
                Ok(conn) => conn,
                Err(e) => {
                    eprintln!("tokio-echo: accept: {e}");
                    tokio::task::yield_now().await;
                    continue;
                }
            };
            let _ = socket.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = vec![0; 1024];
                loop {
                    let n = match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if socket.write_all(&buf[0..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    })
}
