//! `Workers`: N loops on N threads. Connections spread over the loops, loops post work to
//! each other, a graceful shutdown of the group loses no byte, a loop that panics stops the
//! group and is reported.

mod support;

use evloop::{Config, ConnId, Context, Handler, Peers, Stats, Workers};
use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Sender, channel};
use std::time::Duration;
use support::*;

/// Counts the connections each loop opened (test-only shared counters), echoes, and on every
/// open tells the other loops, which count what they were told.
struct Counting {
    peers: Peers<Counting>,
    opened: Arc<Vec<AtomicUsize>>,
    told: Arc<Vec<AtomicUsize>>,
}

impl Handler for Counting {
    type Conn = ();
    fn on_open(&mut self, _: &mut Context<'_, Self>, _: ConnId, _: &mut ()) {
        self.opened[self.peers.index()].fetch_add(1, Ordering::SeqCst);
        self.peers
            .post_others(|h: &mut Counting, _| {
                h.told[h.peers.index()].fetch_add(1, Ordering::SeqCst);
            })
            .unwrap();
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

fn counters(n: usize) -> Arc<Vec<AtomicUsize>> {
    Arc::new((0..n).map(|_| AtomicUsize::new(0)).collect())
}

fn sum(c: &[AtomicUsize]) -> usize {
    c.iter().map(|a| a.load(Ordering::SeqCst)).sum()
}

/// 1,000 connections over 2 loops: neither gets more than 1.5x its share, every connection
/// is served, and every open is told to the other loop exactly once.
#[test]
fn connections_spread_over_the_loops_and_loops_talk() {
    let n = 2;
    let (opened, told) = (counters(n), counters(n));
    let (o, t) = (opened.clone(), told.clone());
    let mut workers = Workers::new(n, Config::default(), move |peers| Counting {
        peers,
        opened: o.clone(),
        told: t.clone(),
    })
    .unwrap();
    let addr = workers.listen(localhost()).unwrap();
    let handles = workers.handles();
    let runner = std::thread::spawn(move || workers.run());
    let mut clients = Vec::new();
    for i in 0..1000u32 {
        let mut c = client(addr);
        if i % 100 == 0 {
            assert_eq!(round_trip(&mut c, &i.to_le_bytes()), i.to_le_bytes());
        }
        clients.push(c);
    }
    let end = std::time::Instant::now() + DEADLINE;
    while sum(&opened) < 1000 || sum(&told) < 1000 {
        assert!(
            std::time::Instant::now() < end,
            "opened {opened:?}, told {told:?}"
        );
        std::thread::yield_now();
    }
    let share = 1000 / n;
    for (i, c) in opened.iter().enumerate() {
        let got = c.load(Ordering::SeqCst);
        assert!(
            got * 2 <= share * 3,
            "loop {i} got {got} of 1000: {opened:?}"
        );
        // Told once per connection the other loop opened.
        assert_eq!(told[i].load(Ordering::SeqCst), 1000 - got);
    }
    for h in &handles {
        h.shutdown(Duration::from_secs(5)).unwrap();
    }
    drop(clients);
    let loops = runner.join().unwrap().unwrap();
    let total = Stats::sum(loops.iter().map(|l| l.stats()));
    assert_eq!(total.accepted, 1000);
    assert_eq!(total.closed.total(), 1000);
}

/// The other way to spread: one loop accepts and hands connections out in turn.
#[test]
fn round_robin_hand_off_gives_even_shares() {
    let n = 3;
    let (opened, told) = (counters(n), counters(n));
    let (o, t) = (opened.clone(), told.clone());
    let mut workers = Workers::new(n, Config::default(), move |peers| Counting {
        peers,
        opened: o.clone(),
        told: t.clone(),
    })
    .unwrap();
    let addr = workers.listen_round_robin(localhost()).unwrap();
    let handles = workers.handles();
    let runner = std::thread::spawn(move || workers.run());
    let mut clients = Vec::new();
    for i in 0..300u32 {
        let mut c = client(addr);
        assert_eq!(round_trip(&mut c, &i.to_le_bytes()), i.to_le_bytes());
        clients.push(c);
    }
    for (i, c) in opened.iter().enumerate() {
        assert_eq!(c.load(Ordering::SeqCst), 100, "loop {i}: {opened:?}");
    }
    for h in &handles {
        h.shutdown(Duration::from_secs(5)).unwrap();
    }
    drop(clients);
    let loops = runner.join().unwrap().unwrap();
    assert_eq!(Stats::sum(loops.iter().map(|l| l.stats())).accepted, 300);
}

/// Each connection is sent 256 KiB; the group is shut down while clients are still reading
/// slowly: every client gets every byte, then EOF, and `run` returns when all loops are done.
#[test]
fn graceful_shutdown_of_every_loop_loses_no_byte() {
    struct Sender1(Arc<Vec<u8>>);
    impl Handler for Sender1 {
        type Conn = ();
        fn on_open(&mut self, cx: &mut Context<'_, Self>, conn: ConnId, _: &mut ()) {
            cx.set_send_buffer_size(conn, 8192).unwrap();
            cx.send(conn, &self.0).unwrap();
        }
    }
    let payload = Arc::new(random_bytes(256 * 1024, 3));
    let p = payload.clone();
    let mut workers = Workers::new(2, Config::default(), move |_| Sender1(p.clone())).unwrap();
    let addr = workers.listen(localhost()).unwrap();
    let handles = workers.handles();
    let runner = std::thread::spawn(move || workers.run());
    let mut clients: Vec<_> = (0..20).map(|_| client(addr)).collect();
    // Every client has its first bytes: every connection is open on some loop.
    for c in &mut clients {
        let mut first = [0u8; 1];
        c.read_exact(&mut first).unwrap();
    }
    for h in &handles {
        h.shutdown(Duration::from_secs(20)).unwrap();
    }
    for c in &mut clients {
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).unwrap();
        assert_eq!(rest.len() + 1, payload.len());
        assert!(rest[..] == payload[1..]);
    }
    drop(clients);
    let loops = runner.join().unwrap().unwrap();
    assert_eq!(loops.len(), 2);
    let total = Stats::sum(loops.iter().map(|l| l.stats()));
    assert_eq!(total.closed.shutdown, 0, "{total:?}");
    assert_eq!(total.bytes_out, 20 * payload.len() as u64);
}

/// A loop that panics (with `catch_panics` off) stops the whole group, and `run` says which
/// loop and why.
#[test]
fn a_loop_that_panics_stops_the_group_and_is_reported() {
    struct Quiet;
    impl Handler for Quiet {
        type Conn = ();
    }
    let mut config = Config::default();
    config.catch_panics = false;
    let mut workers = Workers::new(3, config, |_| Quiet).unwrap();
    let addr = workers.listen(localhost()).unwrap();
    let handles = workers.handles();
    let (tx, rx): (Sender<()>, _) = channel();
    let runner = std::thread::spawn(move || {
        let r = workers.run();
        tx.send(()).unwrap();
        r
    });
    handles[1].post(|_, _| panic!("boom in loop 1")).unwrap();
    recv(&rx);
    let err = match runner.join().unwrap() {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a panicking loop was not reported"),
    };
    assert!(
        err.contains("event loop 1 panicked: boom in loop 1"),
        "{err}"
    );
    // Nobody is left listening on the port.
    let refused = std::net::TcpStream::connect_timeout(&addr, DEADLINE);
    if let Ok(mut s) = refused {
        // A connection may still complete in a listener's backlog before it closed;
        // then it is reset, never served.
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        let _ = s.write_all(b"x");
        let mut b = [0u8; 1];
        assert!(matches!(s.read(&mut b), Ok(0) | Err(_)));
    }
}
