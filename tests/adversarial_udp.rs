//! Issue 7, item 8: adversarial datagrams. Oversize datagrams (larger than the loop's read
//! buffer) are dropped and counted, never handed over cut short; an oversize `send_to` is
//! one `EMSGSIZE` error, not a retry loop; sending to a closed port (an ICMP port
//! unreachable comes back) leaves the socket serving; empty datagrams are datagrams.
//!
//! Empty datagrams one at a time are covered by tests/core.rs
//! (`udp_datagrams_arrive_with_their_sender_and_empty_ones_count`); here they come in a burst
//! among others. Each test ends with the descriptor count back at its baseline (one test at
//! a time in this binary: `serial()`).

mod support;

use evloop::{Addr, Config, Context, EventLoop, Handler, UdpId};
use std::net::{SocketAddr, UdpSocket};
use std::sync::mpsc::{Sender, channel};
use support::*;

/// What the handler saw and did.
#[derive(Debug)]
enum Ev {
    Datagram(usize),
    SendFailed(std::io::ErrorKind, Option<i32>),
}

/// Echoes every datagram to its sender; reports its size. A datagram "big:N" is answered
/// with N bytes instead (a failed send is reported, then "sent-failed" goes back); a
/// datagram "spray:PORT" makes it send 100 datagrams to 127.0.0.1:PORT first.
struct UdpProbe(Sender<Ev>);

impl Handler for UdpProbe {
    type Conn = ();
    fn on_datagram(&mut self, cx: &mut Context<'_, Self>, socket: UdpId, data: &[u8], from: &Addr) {
        let _ = self.0.send(Ev::Datagram(data.len()));
        let text = std::str::from_utf8(data).unwrap_or("");
        if let Some(n) = text.strip_prefix("big:") {
            let big = vec![7u8; n.parse().unwrap()];
            match cx.send_to(socket, &big, from) {
                Ok(()) => cx.send_to(socket, b"sent-ok", from).unwrap(),
                Err(e) => {
                    let _ = self.0.send(Ev::SendFailed(e.kind(), e.raw_os_error()));
                    cx.send_to(socket, b"sent-failed", from).unwrap();
                }
            }
        } else if let Some(port) = text.strip_prefix("spray:") {
            let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            for _ in 0..100 {
                // Each goes out (the kernel takes it); the ICMP errors come back later.
                cx.send_to(socket, b"anyone?", &Addr::Inet(to)).unwrap();
            }
            cx.send_to(socket, b"sprayed", from).unwrap();
        } else {
            cx.send_to(socket, data, from).unwrap();
        }
    }
}

fn start(config: Config) -> (Running<UdpProbe>, SocketAddr, std::sync::mpsc::Receiver<Ev>) {
    let (tx, rx) = channel();
    let mut el = EventLoop::with_config(UdpProbe(tx), config).unwrap();
    let u = el.bind_udp(localhost()).unwrap();
    let addr = el.context().udp_addr(u).unwrap().as_inet().unwrap();
    (spawn(el), addr, rx)
}

fn peer() -> UdpSocket {
    let s = UdpSocket::bind(localhost()).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s
}

/// Sends `msg` and returns the reply.
fn ask(s: &UdpSocket, to: SocketAddr, msg: &[u8]) -> Vec<u8> {
    s.send_to(msg, to).unwrap();
    let mut buf = vec![0; 70_000];
    let (n, from) = s.recv_from(&mut buf).expect("reply");
    assert_eq!(from, to);
    buf.truncate(n);
    buf
}

/// With a 1 KiB read buffer: 2000- and 5000-byte datagrams are dropped and counted (never
/// handed over as 1024 truncated bytes); so is one of exactly 1024 bytes, which cannot be
/// told from a truncated one (documented); 1023 bytes and empty ones pass, echoed whole.
#[test]
fn datagram_larger_than_the_read_buffer_is_dropped_not_truncated() {
    let _serial = serial();
    let base = settled_fds();
    let mut config = Config::default();
    config.read_buffer_size = 1024;
    let (server, addr, rx) = start(config);
    let c = peer();
    let mut delivered = Vec::new();
    let sizes = [2000usize, 0, 1023, 1024, 0, 5000, 1, 0];
    for &n in &sizes {
        c.send_to(&random_bytes(n, n as u64), addr).unwrap();
    }
    // A marker after them: once it is echoed, all of the above were received or dropped.
    c.send_to(b"marker", addr).unwrap();
    // The echoes of what passed, whole and in order, then the marker's.
    let mut buf = vec![0; 8192];
    for want in [0, 1023, 0, 1, 0] {
        let (n, _) = c.recv_from(&mut buf).unwrap();
        assert_eq!(n, want);
        assert_eq!(&buf[..n], &random_bytes(n, n as u64)[..]);
    }
    let (n, _) = c.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"marker");
    while let Ok(Ev::Datagram(n)) = rx.try_recv() {
        delivered.push(n);
    }
    assert_eq!(delivered, [0, 1023, 0, 1, 0, 6], "delivered sizes");
    let el = server.stop();
    assert_eq!(el.stats().datagrams_dropped, 3, "{:?}", el.stats());
    assert_eq!(el.stats().datagrams_in, 6);
    assert_eq!(el.stats().datagrams_out, 6);
    drop(el);
    drop(c);
    assert_eq!(settled_fds(), base, "descriptors leaked");
}

/// `send_to` of 70,000 bytes (more than any UDP datagram): one `EMSGSIZE` error, counted as
/// dropped, nothing queued or retried; the socket goes on serving, ten times over.
#[test]
fn oversize_send_to_is_one_emsgsize_error_and_the_socket_keeps_serving() {
    let _serial = serial();
    let base = settled_fds();
    let (server, addr, rx) = start(Config::default());
    let c = peer();
    for round in 0..10 {
        assert_eq!(ask(&c, addr, b"big:70000"), b"sent-failed", "round {round}");
        match recv_until(&rx, |e| matches!(e, Ev::SendFailed(..))) {
            Ev::SendFailed(kind, errno) => {
                assert_eq!(errno, Some(libc::EMSGSIZE), "{kind:?}");
            }
            other => panic!("{other:?}"),
        }
        // Right after, a normal exchange, and a large but legal datagram.
        assert_eq!(ask(&c, addr, b"ping"), b"ping");
        assert_eq!(ask(&c, addr, b"big:60000").len(), 60000);
        let mut buf = [0u8; 16];
        let n = c.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"sent-ok");
    }
    let el = server.stop();
    let s = el.stats();
    assert_eq!(s.datagrams_dropped, 10, "one drop per oversize send: {s:?}");
    assert_eq!(s.datagrams_in, 30);
    // Per round: "sent-failed", "ping", 60000 bytes, "sent-ok".
    assert_eq!(s.datagrams_out, 40);
    drop(el);
    drop(c);
    assert_eq!(settled_fds(), base, "descriptors leaked");
}

/// The loop sends to a port nothing listens on (the kernel answers with ICMP port
/// unreachable; on a connected socket it would surface as ECONNREFUSED, on our unconnected
/// one it is dropped or read away as an error): the socket keeps serving other peers.
#[test]
fn icmp_unreachable_from_a_closed_port_leaves_the_socket_serving() {
    let _serial = serial();
    let base = settled_fds();
    let (server, addr, _rx) = start(Config::default());
    let closed_port = {
        let s = UdpSocket::bind(localhost()).unwrap();
        s.local_addr().unwrap().port()
    };
    let a = peer();
    let b = peer();
    for round in 0..20 {
        let spray = format!("spray:{closed_port}");
        assert_eq!(ask(&a, addr, spray.as_bytes()), b"sprayed", "round {round}");
        let msg = random_bytes(100 + round, round as u64);
        assert_eq!(ask(&b, addr, &msg), msg, "round {round}");
        assert_eq!(ask(&a, addr, b"after"), b"after");
    }
    let el = server.stop();
    assert_eq!(el.stats().datagrams_out, 20 * (100 + 3));
    drop(el);
    drop((a, b));
    assert_eq!(settled_fds(), base, "descriptors leaked");
}

/// A burst of 300 empty datagrams mixed with numbered ones (more than one tick's datagram
/// budget): each is delivered and echoed, the empty ones as empty datagrams, in order.
#[test]
fn burst_of_empty_datagrams_are_all_datagrams() {
    let _serial = serial();
    let base = settled_fds();
    let (server, addr, _rx) = start(Config::default());
    let c = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    c.set_recv_buffer_size(1 << 20).unwrap();
    c.bind(&localhost().into()).unwrap();
    let c: UdpSocket = c.into();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    let msgs: Vec<Vec<u8>> = (0..400u32)
        .map(|i| {
            if i % 4 == 3 {
                i.to_le_bytes().to_vec()
            } else {
                Vec::new()
            }
        })
        .collect();
    // In bursts small enough for the default socket buffers, each echoed before the next.
    for chunk in msgs.chunks(50) {
        for m in chunk {
            c.send_to(m, addr).unwrap();
        }
        let mut buf = [0u8; 16];
        for m in chunk {
            let (n, from) = c.recv_from(&mut buf).unwrap();
            assert_eq!((&buf[..n], from), (&m[..], addr));
        }
    }
    let el = server.stop();
    assert_eq!(el.stats().datagrams_in, 400);
    assert_eq!(el.stats().datagrams_out, 400);
    assert_eq!(el.stats().datagrams_dropped, 0);
    drop(el);
    drop(c);
    assert_eq!(settled_fds(), base, "descriptors leaked");
}
