//! The "floor" for benchmarks: a raw mio echo server, TCP and UDP on the same port.
//!
//! ```text
//! cargo run --release --example floor_mio_echo -- --addr 127.0.0.1:7000 [--threads N]
//! ```
//!
//! Written like mio's tcp_server example, with the usual shortcuts: one shared 64 KiB read
//! buffer; a short read (n < buffer length) counts as drained (Linux, as tokio does); the data
//! is written straight back and only the unwritten remainder is kept per connection, with
//! WRITABLE registered only while something is pending (reading pauses until it is written).
//! UDP: recv_from / send_to until WouldBlock. Listen backlog 1024 (socket2), TCP_NODELAY.
//! With `--threads N`, N such loops on N threads, each with its own SO_REUSEPORT listener and
//! UDP socket on the same port (the multi-core floor). Runs until killed.

use mio::net::{TcpListener, TcpStream, UdpSocket};
use mio::{Events, Interest, Poll, Registry, Token};
use slab::Slab;
use socket2::{Domain, Socket, Type};
use std::io::{self, ErrorKind, Read, Write};
use std::net::SocketAddr;

const LISTENER: Token = Token(usize::MAX - 1);
const UDP: Token = Token(usize::MAX - 2);

struct Conn {
    s: TcpStream,
    pending: Vec<u8>,
}

fn args() -> (SocketAddr, usize) {
    let mut addr = "127.0.0.1:7000".parse().unwrap();
    let mut threads = 1;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next();
        match (flag.as_str(), value) {
            ("--addr", Some(a)) => addr = a.parse().expect("bad --addr"),
            ("--threads", Some(n)) => threads = n.parse().expect("bad --threads"),
            _ => {
                eprintln!("usage: floor_mio_echo [--addr 127.0.0.1:7000] [--threads N]");
                std::process::exit(2)
            }
        }
    }
    (addr, threads)
}

fn listener(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    s.bind(&addr.into())?;
    s.listen(1024)?;
    s.set_nonblocking(true)?;
    Ok(TcpListener::from_std(s.into()))
}

/// Writes as much of `data` as the socket takes; returns how much was written.
fn write_some(s: &mut TcpStream, data: &[u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < data.len() {
        match s.write(&data[done..]) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Echoes until the socket is drained or the peer stops taking data. Ok(false): close.
fn echo(c: &mut Conn, t: Token, buf: &mut [u8], reg: &Registry) -> io::Result<bool> {
    while c.pending.is_empty() {
        let n = match c.s.read(buf) {
            Ok(0) => return Ok(false),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let w = write_some(&mut c.s, &buf[..n])?;
        if w < n {
            c.pending.extend_from_slice(&buf[w..n]);
            reg.reregister(&mut c.s, t, Interest::READABLE | Interest::WRITABLE)?;
        } else if n < buf.len() {
            break; // short read: drained
        }
    }
    Ok(true)
}

fn main() -> io::Result<()> {
    let (addr, threads) = args();
    if threads <= 1 {
        let lis = listener(addr, false)?;
        let udp = UdpSocket::bind(lis.local_addr()?)?;
        return serve(lis, udp);
    }
    // The first listener picks the port (if 0); the others bind the same one.
    let first = listener(addr, true)?;
    let addr = first.local_addr()?;
    let mut sockets = vec![(first, udp_reuse_port(addr)?)];
    for _ in 1..threads {
        sockets.push((listener(addr, true)?, udp_reuse_port(addr)?));
    }
    let workers: Vec<_> = sockets
        .into_iter()
        .map(|(l, u)| std::thread::spawn(move || serve(l, u)))
        .collect();
    for w in workers {
        w.join().expect("worker panicked")?;
    }
    Ok(())
}

fn udp_reuse_port(addr: SocketAddr) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, None)?;
    s.set_reuse_port(true)?;
    s.bind(&addr.into())?;
    s.set_nonblocking(true)?;
    Ok(UdpSocket::from_std(s.into()))
}

/// One loop: accepts from `lis`, echoes TCP and UDP, until killed.
fn serve(mut lis: TcpListener, mut udp: UdpSocket) -> io::Result<()> {
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(1024);
    poll.registry()
        .register(&mut lis, LISTENER, Interest::READABLE)?;
    poll.registry()
        .register(&mut udp, UDP, Interest::READABLE)?;
    eprintln!(
        "floor_mio_echo: listening on {} (tcp+udp)",
        lis.local_addr()?
    );
    let mut conns: Slab<Conn> = Slab::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for ev in events.iter() {
            match ev.token() {
                LISTENER => loop {
                    match lis.accept() {
                        Ok((mut s, _)) => {
                            let _ = s.set_nodelay(true);
                            let e = conns.vacant_entry();
                            poll.registry()
                                .register(&mut s, Token(e.key()), Interest::READABLE)?;
                            e.insert(Conn {
                                s,
                                pending: Vec::new(),
                            });
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(e) => {
                            eprintln!("accept: {e}");
                            break;
                        }
                    }
                },
                UDP => loop {
                    match udp.recv_from(&mut buf) {
                        Ok((n, peer)) => {
                            let _ = udp.send_to(&buf[..n], peer); // WouldBlock: dropped
                        }
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(_) => break, // WouldBlock, or an error: wait for the next event
                    }
                },
                t => {
                    let Some(c) = conns.get_mut(t.0) else {
                        continue;
                    };
                    let mut res = Ok(true);
                    if ev.is_writable() && !c.pending.is_empty() {
                        res = write_some(&mut c.s, &c.pending).and_then(|w| {
                            c.pending.drain(..w);
                            if c.pending.is_empty() {
                                poll.registry()
                                    .reregister(&mut c.s, t, Interest::READABLE)?;
                            }
                            Ok(true)
                        });
                    }
                    // After a flush, read again: data may have been left unread meanwhile.
                    if matches!(res, Ok(true)) && c.pending.is_empty() {
                        res = echo(c, t, &mut buf, poll.registry());
                    }
                    if !matches!(res, Ok(true)) {
                        let mut c = conns.remove(t.0);
                        let _ = poll.registry().deregister(&mut c.s);
                    }
                }
            }
        }
    }
}
