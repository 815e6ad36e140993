//! Issue 7, item 6: connection churn. Several client threads run connect, echo, close
//! cycles against one loop: half the connections are closed by the server right after its
//! echo, a quarter by the client (FIN), a quarter by a client reset (RST). Every echo must
//! be exact, every connection must close once with the reason its client chose, and
//! afterwards the slab, the descriptors, `connections_open` and the loop thread's heap
//! must be back where they started.
//!
//! Heap: the loop runs on its own thread inside `allocation_counter::measure`, which counts
//! that thread's allocations only (the client threads' are not counted). The loop is first
//! warmed up with the same client threads and concurrency (which sizes the slab, the loop's
//! ready and closing lists and the events buffer), then the measured run starts from that
//! state. What the measured run may keep is growth of those vectors' capacity if it ever
//! has more connections in flight than the warm-up had (a `Slab` never shrinks): a
//! handful of allocations and a few KiB, and nothing per cycle. The handler allocates
//! nothing, and the measured run ends by itself (`cx.stop()` from the handler), since a
//! task posted from another thread is allocated there and freed on the loop thread.
//!
//! Descriptors are counted process-wide, so the tests of this binary run one at a time.

mod support;

use evloop::{CloseReason, ConnId, Context, EventLoop, Handler};
use socket2::SockRef;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::*;

/// Echoes; a message whose last byte is `CLOSE` is echoed and then closed by the server.
/// Counts closes by reason, and stops the loop once `stop_after` connections have closed.
#[derive(Default)]
struct Churn {
    opened: u64,
    local: u64,
    peer_closed: u64,
    reset: u64,
    other: u64,
    stop_after: u64,
}

const CLOSE: u8 = b'!';

impl Handler for Churn {
    type Conn = ();

    fn on_open(&mut self, _cx: &mut Context<'_, Self>, _conn: ConnId, _: &mut ()) {
        self.opened += 1;
    }

    fn on_data(
        &mut self,
        cx: &mut Context<'_, Self>,
        conn: ConnId,
        _: &mut (),
        data: &[u8],
    ) -> usize {
        let _ = cx.send(conn, data);
        if data.last() == Some(&CLOSE) {
            cx.close(conn);
        }
        data.len()
    }

    fn on_close(&mut self, cx: &mut Context<'_, Self>, _conn: ConnId, _: (), reason: &CloseReason) {
        match reason {
            CloseReason::Local => self.local += 1,
            CloseReason::PeerClosed => self.peer_closed += 1,
            CloseReason::Error(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                self.reset += 1
            }
            _ => self.other += 1,
        }
        if self.local + self.peer_closed + self.reset + self.other == self.stop_after {
            cx.stop();
        }
    }
}

/// How many cycles of each kind a client thread ran.
#[derive(Default, Debug, Clone, Copy)]
struct Tally {
    server_closed: u64,
    client_closed: u64,
    client_reset: u64,
}

/// `cycles` connect, echo, close cycles against `addr`; thread `k` of a run seeded `seed`.
/// Messages never end in `CLOSE` except on purpose, and one write each (under 2 KiB) so
/// that the server reads each message whole... or in pieces: only the last byte matters.
fn client_cycles(addr: SocketAddr, k: u64, seed: u64, cycles: u64) -> Tally {
    let mut t = Tally::default();
    let mut x = seed ^ (k + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for i in 0..cycles {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = 1 + (x % 2000) as usize;
        let mut msg = random_bytes(len, x);
        let kind = (x >> 32) % 4; // 0, 1: server closes; 2: client closes; 3: client resets
        for b in msg.iter_mut() {
            if *b == CLOSE {
                *b = b'.';
            }
        }
        if kind < 2 {
            *msg.last_mut().unwrap() = CLOSE;
        }
        let mut c = client(addr);
        c.write_all(&msg).unwrap();
        let mut back = vec![0; len];
        c.read_exact(&mut back)
            .unwrap_or_else(|e| panic!("thread {k} cycle {i}: {e}"));
        assert!(back == msg, "thread {k} cycle {i}: echo differs");
        match kind {
            0 | 1 => {
                let mut rest = [0u8; 16];
                assert_eq!(c.read(&mut rest).unwrap(), 0, "EOF after the echo");
                t.server_closed += 1;
            }
            2 => t.client_closed += 1,
            _ => {
                SockRef::from(&c).set_linger(Some(Duration::ZERO)).unwrap();
                t.client_reset += 1;
            }
        }
        drop(c);
    }
    t
}

fn churn(total: u64, threads: u64) {
    let _serial = serial();
    // The counter counts in this binary (a Vec of 10 bytes is one allocation).
    let check = allocation_counter::measure(|| drop(std::hint::black_box(vec![1u8; 10])));
    assert_eq!((check.count_total, check.bytes_total), (1, 10));
    let fds = settled_fds();
    let mut el = EventLoop::new(Churn::default()).unwrap();
    let l = el.listen(localhost()).unwrap();
    let addr = el.context().listener_addr(l).unwrap().as_inet().unwrap();
    let run_clients = |seed: u64, per_thread: u64| -> Tally {
        let handles: Vec<_> = (0..threads)
            .map(|k| std::thread::spawn(move || client_cycles(addr, k, seed, per_thread)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .fold(Tally::default(), |a, b| Tally {
                server_closed: a.server_closed + b.server_closed,
                client_closed: a.client_closed + b.client_closed,
                client_reset: a.client_reset + b.client_reset,
            })
    };

    // Warm-up, unmeasured: the same concurrency, 50 cycles a thread.
    let warm = 50 * threads;
    el.handler_mut().stop_after = warm;
    let looper = std::thread::spawn(move || {
        el.run().unwrap();
        el
    });
    run_clients(1, 50);
    let mut el = looper.join().unwrap();
    assert_eq!(el.stats().connections_open, 0);
    let slab_after_warmup = el.slab_len();

    // The measured churn.
    *el.handler_mut() = Churn {
        stop_after: total,
        ..Churn::default()
    };
    let started = Instant::now();
    let looper = std::thread::spawn(move || {
        let info = allocation_counter::measure(|| el.run().unwrap());
        (el, info)
    });
    let tally = run_clients(2, total / threads);
    let (el, info) = recv_within(looper);
    let took = started.elapsed();

    let h = el.handler();
    assert_eq!(h.opened, total);
    assert_eq!(h.other, 0, "unexpected close reasons");
    assert_eq!(h.local, tally.server_closed, "server-closed");
    assert_eq!(h.peer_closed, tally.client_closed, "client-closed");
    assert_eq!(h.reset, tally.client_reset, "client-reset");
    let s = el.stats();
    assert_eq!(s.connections_open, 0);
    assert_eq!(s.accepted, warm + total);
    assert_eq!(s.bytes_in, s.bytes_out, "every byte echoed");
    assert_eq!(s.panics, 0);
    assert_eq!(el.slab_len(), 1, "only the listener is left");
    assert_eq!(slab_after_warmup, 1);
    eprintln!(
        "churn: {total} cycles on {threads} threads in {took:?} ({tally:?}); loop thread heap: \
         {} allocations ({} bytes) made, {} ({} bytes) still held at the end, peak {} bytes",
        info.count_total, info.bytes_total, info.count_current, info.bytes_current, info.bytes_max
    );
    // Nothing per cycle is kept: at most a few vectors grown past their warm-up capacity.
    assert!(
        (0..=8).contains(&info.count_current),
        "{} allocations kept after {total} cycles",
        info.count_current
    );
    assert!(
        (0..=16 * 1024).contains(&info.bytes_current),
        "{} bytes kept after {total} cycles",
        info.bytes_current
    );
    drop(el);
    assert_eq!(settled_fds(), fds, "descriptors leaked");
}

/// Joins the loop thread, failing the test if it has not returned within the deadline.
fn recv_within<T: Send + 'static>(t: std::thread::JoinHandle<T>) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(t.join());
    });
    recv(&rx).expect("loop thread panicked")
}

/// 10,000 cycles on four threads: under a second even in a debug build, so it runs by
/// default.
#[test]
fn churn_10000_connect_echo_close_cycles() {
    churn(10_000, 4);
}

/// 100,000 cycles on eight threads: `scripts/slow-tests.sh` (release) runs it.
#[test]
#[ignore = "slow: run by scripts/slow-tests.sh"]
fn churn_100000_connect_echo_close_cycles() {
    churn(100_000, 8);
}
