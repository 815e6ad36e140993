//! Issue 4: `Stats`. A scripted scenario with known sizes and known endings, after which
//! every counter has exactly the value the script implies.

mod support;

use evloop::{Addr, CloseReason, Config, ConnId, Context, EventLoop, Handler, Stats, UdpId};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::Duration;
use support::*;

#[derive(Debug)]
enum Ev {
    Open(ConnId),
    Close(ConnId, &'static str, Box<Stats>),
}

/// Echo for streams and datagrams; reports opens, and closes with a snapshot of the stats
/// as `Context::stats` shows them inside the callback.
struct Scripted {
    tx: Sender<Ev>,
}

impl Handler for Scripted {
    type Conn = ();
    fn on_open(&mut self, _cx: &mut Context<'_, Self>, conn: ConnId, _: &mut ()) {
        let _ = self.tx.send(Ev::Open(conn));
    }
    fn on_data(
        &mut self,
        cx: &mut Context<'_, Self>,
        conn: ConnId,
        _: &mut (),
        data: &[u8],
    ) -> usize {
        let _ = cx.send(conn, data);
        data.len()
    }
    fn on_close(&mut self, cx: &mut Context<'_, Self>, conn: ConnId, _: (), reason: &CloseReason) {
        let name = match reason {
            CloseReason::PeerClosed => "peer_closed",
            CloseReason::Aborted => "aborted",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::ConnectFailed(_) => "connect_failed",
            _ => "unexpected",
        };
        let _ = self
            .tx
            .send(Ev::Close(conn, name, Box::new(cx.stats().clone())));
    }
    fn on_datagram(&mut self, cx: &mut Context<'_, Self>, socket: UdpId, data: &[u8], from: &Addr) {
        cx.send_to(socket, data, from).unwrap();
    }
}

fn opened(rx: &Receiver<Ev>) -> ConnId {
    match recv(rx) {
        Ev::Open(id) => id,
        other => panic!("expected an open, got {other:?}"),
    }
}

fn closed(rx: &Receiver<Ev>, id: ConnId, reason: &str) -> Stats {
    match recv(rx) {
        Ev::Close(got, name, stats) if got == id && name == reason => *stats,
        other => panic!("expected {id} to close with {reason}, got {other:?}"),
    }
}

/// Writes `msg` while reading its echo on another thread (no buffer deadlock for big ones).
fn echo_exact(s: &mut TcpStream, msg: &[u8]) {
    let mut reader = s.try_clone().unwrap();
    let len = msg.len();
    let back = std::thread::spawn(move || {
        let mut back = vec![0; len];
        reader.read_exact(&mut back).map(|_| back)
    });
    s.write_all(msg).unwrap();
    assert!(back.join().unwrap().expect("echo") == msg, "echo differs");
}

#[test]
fn counters_match_a_scripted_scenario_exactly() {
    let mut config = Config::default();
    config.max_connections = 1;
    config.refusal_reply = Some(b"FULL\n".to_vec());
    config.idle_timeout = Some(Duration::from_millis(700));
    let (tx, rx) = channel();
    let mut el = EventLoop::with_config(Scripted { tx }, config).unwrap();
    let l = el.listen(localhost()).unwrap();
    let addr = el.context().listener_addr(l).unwrap().as_inet().unwrap();
    let udp = el.bind_udp(localhost()).unwrap();
    let udp_addr = el.context().udp_addr(udp).unwrap().as_inet().unwrap();
    let server = spawn(el);

    // 1. An outbound connect to a closed port fails.
    let closed_port: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (id_tx, id_rx) = channel();
    server
        .handle
        .post(move |_, cx| id_tx.send(cx.connect(closed_port, ()).unwrap()).unwrap())
        .unwrap();
    let out = recv(&id_rx);
    closed(&rx, out, "connect_failed");

    // 2. Echo round trips of known sizes, then the peer closes.
    let sizes = [1usize, 10, 100, 1000, 10_000, 100_000, 250_000];
    let total: usize = sizes.iter().sum();
    let mut a = client(addr);
    let ida = opened(&rx);
    for (i, &n) in sizes.iter().enumerate() {
        echo_exact(&mut a, &random_bytes(n, i as u64));
    }
    a.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut a).unwrap(), b"");
    closed(&rx, ida, "peer_closed");

    // 3. One open connection fills the limit: the next is refused.
    let mut d = client(addr);
    let idd = opened(&rx);
    let mut refused = client(addr);
    assert_eq!(read_to_end(&mut refused).unwrap(), b"FULL\n");

    // 4. That connection is aborted: the client sees a reset.
    server.handle.post(move |_, cx| cx.abort(idd)).unwrap();
    closed(&rx, idd, "aborted");
    let mut buf = [0; 1];
    assert_eq!(
        d.read(&mut buf).unwrap_err().kind(),
        ErrorKind::ConnectionReset
    );

    // 5. Datagrams of known sizes, each echoed.
    let u = UdpSocket::bind("127.0.0.1:0").unwrap();
    u.set_read_timeout(Some(DEADLINE)).unwrap();
    let dgrams = [0usize, 1, 512, 1400, 9000];
    for (i, &n) in dgrams.iter().enumerate() {
        let msg = random_bytes(n, 100 + i as u64);
        u.send_to(&msg, udp_addr).unwrap();
        let mut back = vec![0; 10_000];
        let (got, from) = u.recv_from(&mut back).unwrap();
        assert_eq!((&back[..got], from), (&msg[..], udp_addr));
    }

    // 6. A connection that says nothing times out.
    let mut e = client(addr);
    let ide = opened(&rx);
    let at_last_close = closed(&rx, ide, "idle_timeout");
    assert_eq!(read_to_end(&mut e).unwrap(), b"");

    let el = server.stop();
    let s = el.stats();
    assert_eq!(s.connections_open, 0, "connections_open");
    assert_eq!(s.accepted, 3, "accepted: a, d, e");
    assert_eq!(s.refused, 1, "refused");
    assert_eq!(s.connects_started, 1, "connects_started");
    assert_eq!(s.accept_descriptor_errors, 0);
    assert_eq!(s.closed.peer_closed, 1, "peer_closed");
    assert_eq!(s.closed.aborted, 1, "aborted");
    assert_eq!(s.closed.idle_timeout, 1, "idle_timeout");
    assert_eq!(s.closed.connect_failed, 1, "connect_failed");
    assert_eq!(s.closed.local, 0);
    assert_eq!(s.closed.error, 0);
    assert_eq!(s.closed.output_limit, 0);
    assert_eq!(s.closed.input_limit, 0);
    assert_eq!(s.closed.connect_timeout, 0);
    assert_eq!(s.closed.shutdown, 0);
    assert_eq!(s.closed.panicked, 0);
    assert_eq!(s.closed.total(), 4);
    // Stream bytes only: the refusal reply and datagrams are not in them.
    assert_eq!(s.bytes_in, total as u64, "bytes_in");
    assert_eq!(s.bytes_out, total as u64, "bytes_out");
    assert_eq!(s.datagrams_in, dgrams.len() as u64, "datagrams_in");
    assert_eq!(s.datagrams_out, dgrams.len() as u64, "datagrams_out");
    assert_eq!(s.datagrams_dropped, 0);
    assert_eq!(s.panics, 0);
    // Ticks and events depend on timing; what the script implies is a lower bound: one
    // accept event per client (4), at least one readable event per round trip (7) and per
    // datagram (5), plus the connect's writable event and the posted tasks' wake-ups (2).
    assert!(s.events >= 4 + 7 + 5 + 1 + 2, "events {}", s.events);
    assert!(s.ticks >= 1);
    assert!(s.max_events_per_tick >= 1);
    assert!(s.max_events_per_tick <= el_events_capacity());
    assert!(s.max_events_per_tick * s.ticks >= s.events);

    // Context::stats inside the last on_close saw the same counters (nothing happened
    // after it but ticks).
    let mut seen = at_last_close;
    assert_eq!(seen.connections_open, 0, "reaped before on_close ran");
    seen.ticks = s.ticks;
    seen.events = s.events;
    seen.max_events_per_tick = s.max_events_per_tick;
    assert_eq!(&seen, s);
}

fn el_events_capacity() -> u64 {
    Config::default().events_capacity as u64
}
