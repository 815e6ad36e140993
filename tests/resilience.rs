//! Regression tests for the library's resilience against peers that attack rather than
//! misbehave: bounded lingering, shutdown that waits for lingering sockets, the send
//! deadline, deadlines that cannot overflow.

mod support;

use evloop::{CloseReason, Config, ConnId, Context, EventLoop, Handler};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc::{Sender, channel};
use std::time::{Duration, Instant};
use support::*;

/// Replies and closes first (so every socket lingers, waiting for a peer that never closes).
struct CloseFirst {
    reply: Vec<u8>,
}

impl Handler for CloseFirst {
    type Conn = ();
    fn on_open(&mut self, cx: &mut Context<'_, Self>, conn: ConnId, _: &mut ()) {
        cx.send(conn, &self.reply).unwrap();
        cx.close(conn);
    }
}

/// Issue 11.1: with `max_connections = N`, connections plus lingering sockets never pass
/// N (+ the refusal slack), whatever peers do: here 300 clients connect and never close.
#[test]
fn lingering_sockets_count_toward_the_connection_limit() {
    let mut config = Config::default();
    config.max_connections = 10;
    config.refusal_reply = Some(b"busy\n".to_vec());
    config.linger = Duration::from_secs(60);
    let mut el = EventLoop::with_config(
        CloseFirst {
            reply: b"hello\n".to_vec(),
        },
        config,
    )
    .unwrap();
    let l = el.listen(localhost()).unwrap();
    let addr = el.context().listener_addr(l).unwrap().as_inet().unwrap();
    let mut clients = Vec::new();
    let mut most = 0;
    for i in 0..300 {
        let mut c = client(addr);
        // Keep each peer talking, so its socket would linger for the full minute.
        c.write_all(b"x").unwrap();
        clients.push(c);
        if i % 10 == 9 {
            for _ in 0..5 {
                el.run_once(Some(Duration::from_millis(5))).unwrap();
                let s = el.stats();
                most = most.max(s.connections_open + s.lingering);
            }
        }
    }
    let end = Instant::now() + DEADLINE;
    while el.stats().accepted + el.stats().refused < 300 {
        assert!(Instant::now() < end, "not all clients were handled");
        el.run_once(Some(Duration::from_millis(5))).unwrap();
        let s = el.stats();
        most = most.max(s.connections_open + s.lingering);
    }
    assert!(
        most <= 10 + 16,
        "{most} sockets held with max_connections = 10"
    );
    assert!(el.stats().lingering_dropped > 0, "{:?}", el.stats());
    // The newest client still got its reply.
    let last = clients.last_mut().unwrap();
    let mut got = [0u8; 6];
    last.read_exact(&mut got).unwrap();
    assert!(&got == b"hello\n" || &got[..5] == b"busy\n", "{got:?}");
}

/// Issue 11.2: a graceful shutdown waits for lingering sockets, so a client that keeps
/// writing after our close still gets the whole 40 KiB reply (no RST when `run` returns).
#[test]
fn graceful_shutdown_waits_for_lingering_sockets() {
    let reply = random_bytes(40 * 1024, 7);
    let mut el = EventLoop::new(CloseFirst {
        reply: reply.clone(),
    })
    .unwrap();
    let l = el.listen(localhost()).unwrap();
    let addr = el.context().listener_addr(l).unwrap().as_inet().unwrap();
    let mut c = client(addr);
    // Wait until the server has closed and the socket lingers.
    let end = Instant::now() + DEADLINE;
    while el.stats().lingering == 0 {
        assert!(Instant::now() < end, "no lingering socket");
        el.run_once(Some(Duration::from_millis(5))).unwrap();
    }
    el.context().shutdown(Duration::from_secs(10));
    let (done_tx, done_rx) = channel();
    let thread = std::thread::spawn(move || {
        el.run().unwrap();
        done_tx.send(()).unwrap();
        el
    });
    // The peer writes after our close (this is what turns a plain close into an RST).
    c.write_all(&[b'y'; 1000]).unwrap();
    assert!(
        done_rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "run() returned while a socket still lingered"
    );
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    assert_eq!(got.len(), reply.len());
    assert!(got == reply);
    drop(c); // our EOF: the lingering socket ends, and with it the shutdown
    recv(&done_rx);
    let el = thread.join().unwrap();
    assert_eq!(el.stats().lingering, 0);
}

struct Flooder {
    tx: Sender<String>,
}

impl Handler for Flooder {
    type Conn = ();
    fn on_open(&mut self, cx: &mut Context<'_, Self>, conn: ConnId, _: &mut ()) {
        cx.set_send_buffer_size(conn, 4096).unwrap();
        cx.send(conn, &vec![1u8; 8 << 20]).unwrap();
        cx.close(conn); // waits for the queue to drain: the peer never reads
    }
    fn on_close(&mut self, _: &mut Context<'_, Self>, _: ConnId, _: (), reason: &CloseReason) {
        let _ = self.tx.send(format!("{reason:?}"));
    }
}

/// Issue 11.6: `close()` to a peer that never reads does not wait forever: with no write
/// progress for `send_timeout`, the connection closes with `SendTimeout`.
#[test]
fn a_peer_that_never_reads_meets_the_send_deadline() {
    let (tx, rx) = channel();
    let mut config = Config::default();
    config.send_timeout = Some(Duration::from_millis(300));
    let el = EventLoop::with_config(Flooder { tx }, config).unwrap();
    let mut el = el;
    let l = el.listen(localhost()).unwrap();
    let addr = el.context().listener_addr(l).unwrap().as_inet().unwrap();
    let server = spawn(el);
    let c = TcpStream::connect(addr).unwrap();
    socket2::SockRef::from(&c)
        .set_recv_buffer_size(4096)
        .unwrap();
    assert_eq!(recv(&rx), "SendTimeout");
    let el = server.stop();
    assert_eq!(el.stats().closed.send_timeout, 1);
    drop(c);
}

/// Write progress keeps a slow reader alive: the deadline is between writes, not for the
/// whole transfer.
#[test]
fn a_slow_reader_that_keeps_reading_is_not_cut_off() {
    let (tx, rx) = channel();
    let mut config = Config::default();
    config.send_timeout = Some(Duration::from_millis(500));
    let mut el = EventLoop::with_config(Flooder { tx }, config).unwrap();
    let l = el.listen(localhost()).unwrap();
    let addr = el.context().listener_addr(l).unwrap().as_inet().unwrap();
    let server = spawn(el);
    // (A tiny receive buffer here would make TCP itself stall for its persist timer, longer
    // than the deadline: progress is what is measured, and TCP decides its pace.)
    let mut c = client(addr);
    let mut total = 0;
    let mut buf = [0u8; 65536];
    loop {
        let n = c.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n;
    }
    let reason = recv(&rx);
    assert_eq!(total, 8 << 20, "closed with {reason}");
    assert_eq!(reason, "Local");
    server.stop();
}

/// Issue 11.3: deadlines past the representable range mean "never", not a panic.
#[test]
fn huge_timeouts_mean_never() {
    struct Timers;
    impl Handler for Timers {
        type Conn = ();
        fn on_open(&mut self, cx: &mut Context<'_, Self>, conn: ConnId, _: &mut ()) {
            cx.set_timer(Duration::MAX);
            cx.set_interval(Duration::MAX);
            cx.set_conn_timer(conn, Duration::MAX).unwrap();
        }
        fn on_data(
            &mut self,
            cx: &mut Context<'_, Self>,
            conn: ConnId,
            _: &mut (),
            input: &[u8],
        ) -> usize {
            cx.send(conn, input).unwrap();
            input.len()
        }
    }
    let mut config = Config::default();
    config.idle_timeout = Some(Duration::MAX);
    config.send_timeout = Some(Duration::MAX);
    config.linger = Duration::MAX;
    config.connect_timeout = Some(Duration::MAX);
    let mut el = EventLoop::with_config(Timers, config).unwrap();
    let l = el.listen(localhost()).unwrap();
    let addr = el.context().listener_addr(l).unwrap().as_inet().unwrap();
    el.context().shutdown(Duration::MAX);
    el.context().set_timer(Duration::MAX);
    drop(el);
    // The same settings serve traffic (a loop that is not shutting down).
    let mut config = Config::default();
    config.idle_timeout = Some(Duration::MAX);
    let mut el = EventLoop::with_config(Timers, config).unwrap();
    let l = el.listen(localhost()).unwrap();
    let addr2 = el.context().listener_addr(l).unwrap().as_inet().unwrap();
    let _ = addr;
    let server = spawn(el);
    let mut c = client(addr2);
    assert_eq!(round_trip(&mut c, b"still here"), b"still here");
    server.stop();
}

struct Echo;

impl Handler for Echo {
    type Conn = ();
    fn on_data(
        &mut self,
        cx: &mut Context<'_, Self>,
        conn: ConnId,
        _: &mut (),
        input: &[u8],
    ) -> usize {
        cx.send(conn, input).unwrap();
        input.len()
    }
}

/// A client bound to a given loopback source address.
fn client_from(source: &str, addr: std::net::SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let from: std::net::SocketAddr = format!("{source}:0").parse().unwrap();
    s.bind(&from.into()).unwrap();
    s.connect(&addr.into()).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s
}

/// `max_connections_per_ip`: one host cannot hold more than its share; other hosts are
/// served, and a closed connection frees its host's room.
#[test]
fn connections_per_ip_are_capped() {
    let mut config = Config::default();
    config.max_connections_per_ip = Some(3);
    config.refusal_reply = Some(b"busy\n".to_vec());
    let mut el = EventLoop::with_config(Echo, config).unwrap();
    let l = el.listen(localhost()).unwrap();
    let addr = el.context().listener_addr(l).unwrap().as_inet().unwrap();
    let server = spawn(el);
    let mut held: Vec<TcpStream> = (0..3).map(|_| client_from("127.0.0.1", addr)).collect();
    for c in &mut held {
        assert_eq!(round_trip(c, b"hi"), b"hi");
    }
    let mut over = client_from("127.0.0.1", addr);
    let mut reply = Vec::new();
    over.read_to_end(&mut reply).unwrap();
    assert_eq!(reply, b"busy\n");
    // Another host is not affected.
    let mut other = client_from("127.0.0.2", addr);
    assert_eq!(round_trip(&mut other, b"other"), b"other");
    // One of the first host's connections closes: its room comes back.
    let gone = held.pop().unwrap();
    drop(gone);
    let end = Instant::now() + DEADLINE;
    loop {
        let mut again = client_from("127.0.0.1", addr);
        again.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        if again.read_exact(&mut b).is_ok() && &b == b"x" {
            break;
        }
        assert!(
            Instant::now() < end,
            "the closed connection's room never came back"
        );
    }
    let el = server.stop();
    assert!(el.stats().refused >= 1);
}
