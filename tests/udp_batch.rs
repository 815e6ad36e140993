//! Batched UDP (issue 16): datagrams received several per system call (recvmmsg, GRO) and
//! replies sent in batches (sendmmsg, GSO) behave for the handler exactly as one at a time:
//! one `on_datagram` per datagram, in order, with its sender; the truncation guard; the
//! per-tick budget; every error counted, and the ones known before sending still returned.
//!
//! The loop runs on the test thread (`run_once`), and each burst is sent before it runs, so
//! what one tick and one batch hold is known: batch boundaries are crossed on purpose
//! (`udp_batch` 4, bursts of 3 × 4 + 1). Loopback only; deadlines, no sleeps.

mod support;

use evloop::{Addr, Config, Context, EventLoop, Handler, UdpId, UdpOptions};
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::time::Instant;
use support::*;

/// What the handler does with a datagram (besides recording it).
type Reply = fn(&mut Probe, &mut Context<'_, Probe>, UdpId, &[u8], &Addr);

/// Records every datagram (tick, bytes, sender) and every `send_to` result.
struct Probe {
    seen: Vec<(u64, Vec<u8>, Addr)>,
    results: Vec<Result<(), (ErrorKind, Option<i32>)>>,
    reply: Reply,
}

impl Handler for Probe {
    type Conn = ();
    fn on_datagram(&mut self, cx: &mut Context<'_, Self>, socket: UdpId, data: &[u8], from: &Addr) {
        self.seen
            .push((cx.stats().ticks, data.to_vec(), from.clone()));
        (self.reply)(self, cx, socket, data, from);
    }
}

impl Probe {
    fn send(&mut self, cx: &mut Context<'_, Self>, socket: UdpId, data: &[u8], to: &Addr) {
        let r = cx.send_to(socket, data, to);
        self.results
            .push(r.map_err(|e| (e.kind(), e.raw_os_error())));
    }
}

fn echo(p: &mut Probe, cx: &mut Context<'_, Probe>, socket: UdpId, data: &[u8], from: &Addr) {
    p.send(cx, socket, data, from);
}

fn ignore(_: &mut Probe, _: &mut Context<'_, Probe>, _: UdpId, _: &[u8], _: &Addr) {}

/// A loop with one UDP socket on 127.0.0.1 (1 MiB receive buffer, so bursts fit).
fn server(config: Config, reply: Reply) -> (EventLoop<Probe>, UdpId, SocketAddr) {
    let probe = Probe {
        seen: Vec::new(),
        results: Vec::new(),
        reply,
    };
    let mut el = EventLoop::with_config(probe, config).unwrap();
    let mut opts = UdpOptions::default();
    opts.recv_buffer_size = Some(1 << 20);
    let u = el.context().bind_udp_with(localhost(), &opts).unwrap();
    let addr = el.context().udp_addr(u).unwrap().as_inet().unwrap();
    (el, u, addr)
}

/// A client socket with a 1 MiB receive buffer and the test deadline.
fn peer() -> UdpSocket {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    s.set_recv_buffer_size(1 << 20).unwrap();
    s.bind(&localhost().into()).unwrap();
    let s: UdpSocket = s.into();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s
}

/// Runs ticks until the handler has seen `n` datagrams; returns how many each tick saw.
fn run_until_seen(el: &mut EventLoop<Probe>, n: usize) -> Vec<usize> {
    let start = Instant::now();
    let mut per_tick = Vec::new();
    while el.handler().seen.len() < n {
        assert!(
            start.elapsed() < DEADLINE,
            "saw {} of {n}",
            el.handler().seen.len()
        );
        let before = el.handler().seen.len();
        el.run_once(Some(DEADLINE)).unwrap();
        per_tick.push(el.handler().seen.len() - before);
    }
    per_tick
}

fn recv_one(c: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0; 70_000];
    let (n, from) = c
        .recv_from(&mut buf)
        .expect("a datagram before the deadline");
    buf.truncate(n);
    (buf, from)
}

fn batched(batch: usize) -> Config {
    let mut config = Config::default();
    config.udp_batch = batch;
    config
}

/// 3 × 4 + 1 datagrams of all sizes, from the empty one to the largest UDP allows, queued
/// before the loop runs: with batches of 4 and a budget of 6 a tick, the ticks see 6, 6 and 1,
/// each datagram once, whole, in order, with its sender; the echoes come back in order.
#[test]
fn a_burst_across_batch_boundaries_is_one_on_datagram_each_in_order() {
    for batch in [4, 1] {
        let mut config = batched(batch);
        config.datagram_budget = 6;
        let (mut el, _u, addr) = server(config, echo);
        let c = peer();
        let me = Addr::Inet(c.local_addr().unwrap());
        let sizes = [0, 1, 65_507, 100, 0, 1200, 1472, 4000, 3, 0, 64, 500, 2];
        let msgs: Vec<Vec<u8>> = (sizes.iter().enumerate())
            .map(|(i, &n)| random_bytes(n, i as u64))
            .collect();
        for m in &msgs {
            c.send_to(m, addr).unwrap();
        }
        let per_tick = run_until_seen(&mut el, msgs.len());
        assert_eq!(per_tick, [6, 6, 1], "batch {batch}: datagrams per tick");
        let seen = &el.handler().seen;
        for (i, (_, data, from)) in seen.iter().enumerate() {
            assert_eq!((data, from), (&msgs[i], &me), "batch {batch}: datagram {i}");
        }
        for (i, m) in msgs.iter().enumerate() {
            assert_eq!(recv_one(&c), (m.clone(), addr), "batch {batch}: echo {i}");
        }
        let s = el.stats();
        assert_eq!(
            (s.datagrams_in, s.datagrams_out, s.datagrams_dropped),
            (13, 13, 0)
        );
        assert!(el.handler().results.iter().all(Result::is_ok));
    }
}

/// Three senders interleaved, 5 rounds: the handler sees the arrival order with each
/// datagram's own sender, and each sender gets its own echoes, in order.
#[test]
fn interleaved_senders_each_get_their_own_datagrams_in_order() {
    let (mut el, _u, addr) = server(batched(4), echo);
    let peers = [peer(), peer(), peer()];
    let mut sent = Vec::new();
    for round in 0..5u8 {
        for (p, c) in peers.iter().enumerate() {
            let msg = vec![p as u8; 10 + round as usize * 7 + p];
            c.send_to(&msg, addr).unwrap();
            sent.push((msg, Addr::Inet(c.local_addr().unwrap())));
        }
    }
    run_until_seen(&mut el, sent.len());
    let seen: Vec<(Vec<u8>, Addr)> = (el.handler().seen.iter())
        .map(|(_, d, f)| (d.clone(), f.clone()))
        .collect();
    assert_eq!(seen, sent);
    for (p, c) in peers.iter().enumerate() {
        for round in 0..5usize {
            assert_eq!(recv_one(c).0, vec![p as u8; 10 + round * 7 + p], "peer {p}");
        }
    }
}

/// The truncation guard with batches: with a 1 KiB read buffer (each slot 1 KiB), 2000- and
/// 5000-byte datagrams and one of exactly 1024 bytes are dropped and counted, never handed
/// over cut short; the others around them pass whole, in order.
#[test]
fn truncation_guard_holds_within_a_batch() {
    for batch in [4, 1] {
        let mut config = batched(batch);
        config.read_buffer_size = 1024;
        let (mut el, _u, addr) = server(config, echo);
        let c = peer();
        let sizes = [2000usize, 0, 1023, 1024, 0, 5000, 1, 0];
        for &n in &sizes {
            c.send_to(&random_bytes(n, n as u64), addr).unwrap();
        }
        c.send_to(b"marker", addr).unwrap();
        run_until_seen(&mut el, 6);
        let delivered: Vec<usize> = (el.handler().seen.iter())
            .map(|(_, d, _)| d.len())
            .collect();
        assert_eq!(delivered, [0, 1023, 0, 1, 0, 6], "batch {batch}");
        for (_, d, _) in &el.handler().seen[..5] {
            assert_eq!(d, &random_bytes(d.len(), d.len() as u64));
        }
        let s = el.stats();
        assert_eq!(
            (s.datagrams_in, s.datagrams_dropped),
            (6, 3),
            "batch {batch}: {s:?}"
        );
    }
}

/// A GSO sender: 20 datagrams of 1000 bytes and one of 123 in one `sendmsg`. The kernel may
/// hand them to a GRO socket as one buffer; the handler still sees 21 datagrams, whole and
/// in order. The echoes (same size, one address: a GSO run again) arrive as 21 datagrams.
/// With offloads off, the same.
#[test]
fn gro_runs_are_split_into_datagrams_and_gso_replies_arrive_as_datagrams() {
    use nix::sys::socket::{ControlMessage, MsgFlags, SockaddrStorage, sendmsg};
    use std::io::IoSlice;
    use std::os::fd::AsRawFd;
    for offload in [true, false] {
        let mut config = Config::default();
        config.udp_offload = offload;
        let (mut el, _u, addr) = server(config, echo);
        let c = peer();
        let me = Addr::Inet(c.local_addr().unwrap());
        let mut msgs: Vec<Vec<u8>> = (0..20).map(|i| random_bytes(1000, i)).collect();
        msgs.push(random_bytes(123, 99));
        let iov: Vec<IoSlice<'_>> = msgs.iter().map(|m| IoSlice::new(m)).collect();
        let segment = 1000u16;
        let to = SockaddrStorage::from(addr);
        let gso = [ControlMessage::UdpGsoSegments(&segment)];
        sendmsg(c.as_raw_fd(), &iov, &gso, MsgFlags::empty(), Some(&to)).expect("GSO send");
        run_until_seen(&mut el, msgs.len());
        let seen = &el.handler().seen;
        assert_eq!(seen.len(), msgs.len(), "offload {offload}");
        for (i, (_, data, from)) in seen.iter().enumerate() {
            assert_eq!(
                (data, from),
                (&msgs[i], &me),
                "offload {offload}: datagram {i}"
            );
        }
        for (i, m) in msgs.iter().enumerate() {
            assert_eq!(
                recv_one(&c),
                (m.clone(), addr),
                "offload {offload}: echo {i}"
            );
        }
        let s = el.stats();
        assert_eq!(
            (s.datagrams_in, s.datagrams_out, s.datagrams_dropped),
            (21, 21, 0)
        );
    }
}

/// One request makes the handler send 3 × 64 + 1 datagrams to two peers (more than a
/// sendmmsg batch of 4 and than a GSO run of 64; runs of one size to one peer, and sizes
/// and peers alternating): each peer gets its own, all of them, in order.
#[test]
fn a_burst_of_sends_bigger_than_a_batch_arrives_in_order() {
    fn burst(p: &mut Probe, cx: &mut Context<'_, Probe>, socket: UdpId, data: &[u8], _: &Addr) {
        let peers: Vec<Addr> = data
            .split(|&b| b == b' ')
            .map(|a| Addr::Inet(std::str::from_utf8(a).unwrap().parse().unwrap()))
            .collect();
        for i in 0..193usize {
            p.send(cx, socket, &burst_msg(i), &peers[burst_peer(i)]);
        }
    }
    let (mut el, _u, addr) = server(batched(4), burst);
    let peers = [peer(), peer()];
    let request = format!(
        "{} {}",
        peers[0].local_addr().unwrap(),
        peers[1].local_addr().unwrap()
    );
    peers[0].send_to(request.as_bytes(), addr).unwrap();
    run_until_seen(&mut el, 1);
    for (p, c) in peers.iter().enumerate() {
        for i in (0..193).filter(|&i| burst_peer(i) == p) {
            assert_eq!(recv_one(c), (burst_msg(i), addr), "peer {p}, datagram {i}");
        }
    }
    assert!(el.handler().results.iter().all(Result::is_ok));
    let s = el.stats();
    assert_eq!((s.datagrams_out, s.datagrams_dropped), (193, 0));
}

/// Datagram `i` of the burst: runs of ten the same size, then a few of varying sizes.
fn burst_msg(i: usize) -> Vec<u8> {
    let size = if i < 100 {
        40 + 10 * (i / 10)
    } else {
        8 + i % 7
    };
    let mut m = random_bytes(size, i as u64);
    m[..4].copy_from_slice(&(i as u32).to_le_bytes());
    m
}

/// Which peer datagram `i` goes to: the first 64 to peer 0 (one GSO run and more), then
/// alternating in blocks of 3.
fn burst_peer(i: usize) -> usize {
    if i < 64 { 0 } else { (i / 3) % 2 }
}

/// In one `on_datagram`: errors known before sending come back from `send_to` (70,000 bytes:
/// EMSGSIZE; the broadcast address without SO_BROADCAST; port 0); a destination the kernel
/// refuses only when the batch goes out (127.255.255.255, the loopback broadcast: EACCES),
/// alone or as a GSO run, is counted and logged; none of it loses the others, which arrive
/// in order.
#[test]
fn an_error_on_one_destination_does_not_lose_the_others() {
    fn mixed(p: &mut Probe, cx: &mut Context<'_, Probe>, socket: UdpId, data: &[u8], from: &Addr) {
        let b = Addr::Inet(std::str::from_utf8(data).unwrap().parse().unwrap());
        let port = from.as_inet().unwrap().port();
        let lo_broadcast = Addr::Inet(SocketAddr::from(([127, 255, 255, 255], port)));
        let broadcast = Addr::Inet(SocketAddr::from(([255, 255, 255, 255], port)));
        let port_zero = Addr::Inet(SocketAddr::from(([127, 0, 0, 1], 0)));
        p.send(cx, socket, b"a1", from);
        p.send(cx, socket, &vec![0; 70_000], from); // Err: EMSGSIZE
        p.send(cx, socket, b"b1", &b);
        p.send(cx, socket, b"x", &lo_broadcast); // Ok; refused when sent
        for _ in 0..3 {
            p.send(cx, socket, b"yyy", &lo_broadcast); // a GSO run, refused when sent
        }
        p.send(cx, socket, b"a2", from);
        p.send(cx, socket, b"zz", &broadcast); // Err: EACCES
        p.send(cx, socket, b"b2", &b);
        p.send(cx, socket, b"zz", &port_zero); // Err
        p.send(cx, socket, b"a3", from);
    }
    for batch in [4, 1] {
        let (mut el, _u, addr) = server(batched(batch), mixed);
        let (a, b) = (peer(), peer());
        a.send_to(b.local_addr().unwrap().to_string().as_bytes(), addr)
            .unwrap();
        run_until_seen(&mut el, 1);
        for want in [&b"a1"[..], b"a2", b"a3"] {
            assert_eq!(recv_one(&a), (want.to_vec(), addr), "batch {batch}");
        }
        for want in [&b"b1"[..], b"b2"] {
            assert_eq!(recv_one(&b), (want.to_vec(), addr), "batch {batch}");
        }
        let r = &el.handler().results;
        assert_eq!(r[1].unwrap_err().1, Some(libc::EMSGSIZE), "batch {batch}");
        assert_eq!(r[8].unwrap_err().1, Some(libc::EACCES), "batch {batch}");
        assert!(r[10].is_err(), "batch {batch}: port 0");
        let loopback_broadcast = &r[3..7];
        if batch == 1 {
            // Written at once: each refusal comes back from send_to.
            assert!(
                loopback_broadcast
                    .iter()
                    .all(|r| r.unwrap_err().1 == Some(libc::EACCES))
            );
        } else {
            // Gathered: accepted, then refused when the batch went out (counted below).
            assert!(loopback_broadcast.iter().all(Result::is_ok), "{r:?}");
        }
        for i in [0, 2, 7, 9, 11] {
            assert!(r[i].is_ok(), "batch {batch}: send {i}: {:?}", r[i]);
        }
        let s = el.stats();
        // 3 refused at once + 4 refused when sent; 5 delivered.
        assert_eq!(
            (s.datagrams_out, s.datagrams_dropped),
            (5, 7),
            "batch {batch}"
        );
    }
}

/// Outside `on_datagram` (here: from the embedding program, as from a timer or a posted
/// task) `send_to` writes at once, so even the refusal that a batch only learns when it
/// goes out comes back from the call.
#[test]
fn send_to_outside_a_receive_batch_writes_at_once() {
    let (mut el, u, _addr) = server(batched(32), ignore);
    let c = peer();
    let mut cx = el.context();
    let lo_broadcast = Addr::Inet(SocketAddr::from(([127, 255, 255, 255], 9)));
    let err = cx.send_to(u, b"x", &lo_broadcast).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EACCES));
    cx.send_to(u, b"now", &Addr::Inet(c.local_addr().unwrap()))
        .unwrap();
    // Already sent: no tick ran.
    assert_eq!(recv_one(&c).0, b"now");
    assert_eq!(
        (el.stats().datagrams_out, el.stats().datagrams_dropped),
        (1, 1)
    );
}

/// A handler that replies and then closes its socket in the same `on_datagram`: the reply
/// still goes out (the socket stays open until the end of the tick), and the datagrams after
/// it in the batch are not handed over.
#[test]
fn closing_the_socket_in_on_datagram_still_sends_what_it_sent() {
    fn bye(p: &mut Probe, cx: &mut Context<'_, Probe>, socket: UdpId, data: &[u8], from: &Addr) {
        p.send(cx, socket, data, from);
        if data == b"bye" {
            cx.close_udp(socket);
        }
    }
    let (mut el, _u, addr) = server(batched(4), bye);
    let c = peer();
    for m in [&b"one"[..], b"bye", b"never", b"seen"] {
        c.send_to(m, addr).unwrap();
    }
    run_until_seen(&mut el, 2);
    el.run_once(Some(std::time::Duration::ZERO)).unwrap();
    assert_eq!(recv_one(&c).0, b"one");
    assert_eq!(recv_one(&c).0, b"bye");
    assert_eq!(el.handler().seen.len(), 2);
    assert_eq!(el.stats().datagrams_out, 2);
    assert_eq!(el.slab_len(), 0, "the socket is gone");
}

/// Batching does not change what the config accepts: 0 is refused like the other budgets.
#[test]
fn udp_batch_zero_is_refused() {
    let mut config = Config::default();
    config.udp_batch = 0;
    let e = config.validate().unwrap_err();
    assert!(e.to_string().contains("udp_batch"), "{e}");
}
