//! Tokio echo server for comparison, TCP and UDP on the same port.
//!
//! ```text
//! cargo run --release --example tokio_echo -- --addr 127.0.0.1:7000 --flavor current_thread
//! ```
//!
//! `--flavor current_thread` (default) or `multi_thread` (2 workers). One task per TCP
//! connection with a 4 KiB buffer (read, write_all), TCP_NODELAY, listen backlog 1024 via
//! `TcpSocket`; one UDP echo task (recv_from / send_to). Runs until killed.

use std::io;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};

fn usage() -> ! {
    eprintln!("usage: tokio_echo [--addr 127.0.0.1:7000] [--flavor current_thread|multi_thread]");
    std::process::exit(2)
}

async fn conn(mut s: TcpStream) {
    let _ = s.set_nodelay(true);
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if s.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn udp_echo(s: UdpSocket) {
    let mut buf = vec![0u8; 65536];
    loop {
        if let Ok((n, peer)) = s.recv_from(&mut buf).await {
            let _ = s.send_to(&buf[..n], peer).await;
        }
    }
}

async fn serve(addr: SocketAddr) -> io::Result<()> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    let lis = sock.listen(1024)?;
    let local = lis.local_addr()?;
    tokio::spawn(udp_echo(UdpSocket::bind(local).await?));
    eprintln!("tokio_echo: listening on {local} (tcp+udp)");
    loop {
        match lis.accept().await {
            Ok((s, _)) => {
                tokio::spawn(conn(s));
            }
            Err(e) => eprintln!("accept: {e}"),
        }
    }
}

fn main() -> io::Result<()> {
    let (mut addr, mut multi) = ("127.0.0.1:7000".to_string(), false);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().unwrap_or_else(|| usage());
        match (a.as_str(), v.as_str()) {
            ("--addr", _) => addr = v,
            ("--flavor", "current_thread") => multi = false,
            ("--flavor", "multi_thread") => multi = true,
            _ => usage(),
        }
    }
    let addr: SocketAddr = addr.parse().unwrap_or_else(|_| usage());
    let rt = if multi {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_io()
            .build()?
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?
    };
    rt.block_on(serve(addr))
}
