//! Blocking std echo server for comparison: one thread per TCP connection, plus one thread
//! for UDP echo on the same port.
//!
//! ```text
//! cargo run --release --example std_thread_echo -- --addr 127.0.0.1:7000
//! ```
//!
//! Each connection thread (64 KiB stack) reads into a 4 KiB buffer and write_all's it back,
//! TCP_NODELAY. Listen backlog 1024 (socket2). Runs until killed.

use socket2::{Domain, Socket, Type};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::thread;

fn conn(mut s: TcpStream) {
    let _ = s.set_nodelay(true);
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

fn udp_echo(s: UdpSocket) {
    let mut buf = vec![0u8; 65536];
    loop {
        if let Ok((n, peer)) = s.recv_from(&mut buf) {
            let _ = s.send_to(&buf[..n], peer);
        }
    }
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr: SocketAddr = match args.as_slice() {
        [] => "127.0.0.1:7000".parse().unwrap(),
        [f, a] if f == "--addr" => a.parse().expect("bad --addr"),
        _ => {
            eprintln!("usage: std_thread_echo [--addr 127.0.0.1:7000]");
            std::process::exit(2)
        }
    };
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    sock.set_reuse_address(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    let lis: TcpListener = sock.into();
    let udp = UdpSocket::bind(lis.local_addr()?)?;
    thread::spawn(move || udp_echo(udp));
    eprintln!(
        "std_thread_echo: listening on {} (tcp+udp)",
        lis.local_addr()?
    );
    for s in lis.incoming() {
        match s {
            Ok(s) => {
                if let Err(e) = thread::Builder::new()
                    .stack_size(64 * 1024)
                    .spawn(move || conn(s))
                {
                    eprintln!("spawn: {e}");
                }
            }
            Err(e) => eprintln!("accept: {e}"),
        }
    }
    Ok(())
}
