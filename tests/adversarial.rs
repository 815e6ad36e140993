//! Issue 7, the adversarial reliability suite (stream part): floods, resets and dead peers,
//! shutdown under mixed load, per-connection handler state across slot reuse, and signal
//! storms. Every test checks at the end that the loop's books balance: `on_close` exactly
//! once per connection with the expected reason, `connections_open == 0`, only the
//! listener left in the slab, and the process's descriptor count back to its baseline.
//!
//! Descriptors are counted process-wide, so the tests of this binary run one at a time
//! (`serial()`); UDP, SIGPIPE, churn, the examples and the property tests have their own
//! binaries (`adversarial_udp`, `sigpipe`, `churn`, `adversarial_examples`, `property`).
//!
//! Already covered elsewhere, and not repeated here: half-close (tests/toolbox.rs,
//! `half_close_*`), graceful shutdown basics (`graceful_shutdown_flushes_readers_and_cuts_the_rest`),
//! slot reuse by tokens and ids (tests/core.rs `reused_slot_gets_nothing_of_the_dead_connection`,
//! src/reactor_tests.rs), EMFILE (tests/emfile.rs), panics (tests/panics.rs).

mod support;

use evloop::{CloseReason, Config, ConnId, Context, EventLoop, Handle, Handler};
use socket2::SockRef;
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};
use support::*;

// ---------------------------------------------------------------------------------------------
// Books: descriptors, slab, connections.

/// The descriptor count before the loop was created.
struct Baseline(usize);

impl Baseline {
    fn take() -> Baseline {
        Baseline(settled_fds())
    }

    /// Consumes the stopped loop: no connection open, no callback panicked, `entries` left
    /// in the slab; then, with the loop dropped (and the caller's sockets gone),
    /// descriptors back to baseline.
    fn check<H: Handler>(self, el: EventLoop<H>, entries: usize) {
        assert_eq!(el.stats().connections_open, 0, "{:?}", el.stats());
        assert_eq!(el.stats().panics, 0, "a callback panicked");
        assert_eq!(el.slab_len(), entries, "slab entries left");
        drop(el);
        assert_eq!(settled_fds(), self.0, "descriptors leaked");
    }
}

/// `CloseReason` without the `io::Error`, comparable.
#[derive(Clone, Debug, PartialEq)]
enum Why {
    PeerClosed,
    Local,
    Aborted,
    Error(ErrorKind),
    Shutdown,
    OutputLimit,
    Other(String),
}

impl From<&CloseReason> for Why {
    fn from(r: &CloseReason) -> Why {
        match r {
            CloseReason::PeerClosed => Why::PeerClosed,
            CloseReason::Local => Why::Local,
            CloseReason::Aborted => Why::Aborted,
            CloseReason::Error(e) => Why::Error(e.kind()),
            CloseReason::Shutdown => Why::Shutdown,
            CloseReason::OutputLimit => Why::OutputLimit,
            other => Why::Other(other.to_string()),
        }
    }
}

/// A reset peer: reported as a reset, or as a broken pipe when our write met it first.
fn is_reset(why: &Why) -> bool {
    matches!(
        why,
        Why::Error(ErrorKind::ConnectionReset | ErrorKind::BrokenPipe)
    )
}

#[derive(Debug)]
enum Ev {
    Open(ConnId),
    Close(ConnId, Why),
}

/// Echoes (if asked), reports opens and closes, counts both per connection, and tracks the
/// largest output queue it ever saw.
#[derive(Default)]
struct Probe {
    tx: Option<Sender<Ev>>,
    echo: bool,
    /// Sent to every new connection (after shrinking its send buffer to `sndbuf`).
    greeting: Option<Arc<Vec<u8>>>,
    sndbuf: Option<usize>,
    max_queued: Arc<AtomicUsize>,
    opens: HashMap<ConnId, u32>,
    closes: HashMap<ConnId, Vec<Why>>,
}

impl Probe {
    fn new(tx: Sender<Ev>) -> Probe {
        Probe {
            tx: Some(tx),
            ..Probe::default()
        }
    }

    fn echo(tx: Sender<Ev>) -> Probe {
        Probe {
            echo: true,
            ..Probe::new(tx)
        }
    }

    /// Every opened connection closed exactly once (and nothing closed that never opened).
    fn assert_closed_once(&self) {
        for (conn, whys) in &self.closes {
            assert_eq!(whys.len(), 1, "{conn}: on_close ran {} times", whys.len());
            assert_eq!(self.opens.get(conn), Some(&1), "{conn}: opens");
        }
        assert_eq!(self.opens.len(), self.closes.len(), "opened vs closed");
    }
}

impl Handler for Probe {
    fn on_open(&mut self, cx: &mut Context<'_>, conn: ConnId) {
        *self.opens.entry(conn).or_default() += 1;
        if let Some(n) = self.sndbuf {
            cx.set_send_buffer_size(conn, n).unwrap();
        }
        if let Some(g) = &self.greeting {
            assert!(cx.send(conn, g));
        }
        if let Some(tx) = &self.tx {
            let _ = tx.send(Ev::Open(conn));
        }
    }

    fn on_data(&mut self, cx: &mut Context<'_>, conn: ConnId, data: &[u8]) {
        if self.echo {
            cx.send(conn, data);
            let q = cx.queued(conn).unwrap_or(0);
            self.max_queued.fetch_max(q, Ordering::SeqCst);
        }
    }

    fn on_close(&mut self, _cx: &mut Context<'_>, conn: ConnId, reason: &CloseReason) {
        self.closes.entry(conn).or_default().push(reason.into());
        if let Some(tx) = &self.tx {
            let _ = tx.send(Ev::Close(conn, reason.into()));
        }
    }
}

fn start<H: Handler + Send + 'static>(h: H, config: Config) -> (Running<H>, SocketAddr) {
    let mut el = EventLoop::with_config(h, config).unwrap();
    let l = el.listen(localhost()).unwrap();
    let addr = el.context().listener_addr(l).unwrap().as_inet().unwrap();
    (spawn(el), addr)
}

fn recv_open(rx: &Receiver<Ev>) -> ConnId {
    match recv_until(rx, |e| matches!(e, Ev::Open(_))) {
        Ev::Open(c) => c,
        _ => unreachable!(),
    }
}

fn recv_close(rx: &Receiver<Ev>) -> (ConnId, Why) {
    match recv_until(rx, |e| matches!(e, Ev::Close(..))) {
        Ev::Close(c, why) => (c, why),
        _ => unreachable!(),
    }
}

/// Runs `f` on the loop thread and returns its result.
fn on_loop<H: Handler + 'static, T: Send + 'static>(
    handle: &Handle<H>,
    f: impl FnOnce(&mut H, &mut Context<'_>) -> T + Send + 'static,
) -> T {
    let (tx, rx) = channel();
    handle
        .post(move |h, cx| {
            let _ = tx.send(f(h, cx));
        })
        .unwrap();
    recv(&rx)
}

/// A TCP client with small kernel buffers, so what it does not read stays in the server.
fn small_client(addr: SocketAddr, rcvbuf: usize) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(rcvbuf).unwrap();
    s.set_send_buffer_size(64 * 1024).unwrap();
    s.connect(&addr.into()).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.set_write_timeout(Some(DEADLINE)).unwrap();
    s
}

/// Resets the connection (SO_LINGER 0, then close).
fn reset(s: TcpStream) {
    SockRef::from(&s).set_linger(Some(Duration::ZERO)).unwrap();
    drop(s);
}

/// The calling thread's kernel id (from /proc/thread-self, without unsafe code).
fn thread_id() -> u32 {
    let link = std::fs::read_link("/proc/thread-self").expect("/proc/thread-self");
    link.file_name().unwrap().to_str().unwrap().parse().unwrap()
}

/// The scheduler state of thread `tid` of this process ('R' running, 'S' sleeping, ...).
fn thread_state(tid: u32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
    stat[stat.rfind(')').unwrap() + 2..].chars().next().unwrap()
}

/// CPU time (user + system) thread `tid` of this process has used, in clock ticks
/// (usually 10 ms each).
fn thread_cpu_ticks(tid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

// ---------------------------------------------------------------------------------------------
// 1. Floods.

/// A client writes without ever reading to an echo handler. Its queued output never passes
/// `high_watermark + read_buffer_size` (reading stops once the queue passes the high mark,
/// and one read adds at most one buffer; this is tighter than `high + read_budget`); reading
/// from it pauses (`bytes_in` stands still); while it is stalled the loop sleeps (fewer than
/// 50 ticks and under 0.2 s of CPU in a 1 s window); other clients' round trips stay prompt.
#[test]
fn flood_without_reading_is_capped_paused_and_does_not_spin() {
    let _serial = serial();
    let base = Baseline::take();
    let config = Config::default();
    let bound = config.high_watermark + config.read_buffer_size;
    let (tx, rx) = channel();
    let probe = Probe {
        sndbuf: Some(64 * 1024),
        ..Probe::echo(tx)
    };
    let max_queued = probe.max_queued.clone();
    let (server, addr) = start(probe, config);

    let flooder = small_client(addr, 64 * 1024);
    let flood_id = recv_open(&rx);
    let stop = Arc::new(AtomicBool::new(false));
    let (stall_tx, stall_rx) = channel();
    let flood = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut flooder = flooder;
            flooder
                .set_write_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            let chunk = random_bytes(64 * 1024, 1);
            let (mut sent, mut stalled) = (0usize, false);
            while !stop.load(Ordering::SeqCst) {
                assert!(sent < 256 << 20, "wrote {sent} bytes and never stalled");
                match flooder.write(&chunk) {
                    Ok(n) => sent += n,
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        if !std::mem::replace(&mut stalled, true) {
                            stall_tx.send(sent).unwrap();
                        }
                    }
                    Err(e) => panic!("flooder: {e}"),
                }
            }
            (flooder, sent)
        })
    };
    // 300 ms without a byte taken: the server has stopped reading the flooder.
    let sent_at_stall = recv(&stall_rx);
    let (congested, queued, tid) = on_loop(&server.handle, move |_, cx| {
        (cx.is_congested(flood_id), cx.queued(flood_id), thread_id())
    });
    assert!(congested, "stalled but not congested");
    let queued = queued.expect("the flooder is still open");
    assert!(queued <= bound, "queued {queued} > {bound}");

    // The stall, measured over 1 s (a measurement window, not a synchronisation).
    let before = on_loop(&server.handle, |_, cx| {
        (cx.stats().ticks, cx.stats().bytes_in)
    });
    let cpu_before = thread_cpu_ticks(tid);
    std::thread::sleep(Duration::from_secs(1));
    let cpu = thread_cpu_ticks(tid) - cpu_before;
    let after = on_loop(&server.handle, |_, cx| {
        (cx.stats().ticks, cx.stats().bytes_in)
    });
    let ticks = after.0 - before.0;
    assert!(ticks < 50, "{ticks} ticks in 1 s of stall: the loop spins");
    assert!(
        cpu < 20,
        "the loop thread used {cpu} clock ticks of CPU in 1 s of stall"
    );
    assert_eq!(
        after.1, before.1,
        "bytes were read from a congested flooder"
    );

    // Other clients are served promptly meanwhile.
    let mut worst = Duration::ZERO;
    let mut others: Vec<TcpStream> = (0..5).map(|_| client(addr)).collect();
    for i in 0..50u32 {
        for (k, c) in others.iter_mut().enumerate() {
            let msg = random_bytes(100 + k, u64::from(i) * 7 + k as u64);
            let t = Instant::now();
            assert_eq!(round_trip(c, &msg), msg);
            worst = worst.max(t.elapsed());
        }
    }
    assert!(worst < Duration::from_secs(2), "worst round trip {worst:?}");
    let peak = max_queued.load(Ordering::SeqCst);
    assert!(peak <= bound, "queue peaked at {peak} > {bound}");
    eprintln!(
        "flood: {sent_at_stall} bytes before the stall, queue peak {peak} <= {bound}, \
         {ticks} ticks and {cpu} CPU ticks in 1 s stalled, worst round trip {worst:?}"
    );

    // The flooder goes away with unread echoes: a reset, reported once.
    stop.store(true, Ordering::SeqCst);
    let (flooder, _) = flood.join().unwrap();
    drop(flooder);
    let (id, why) = recv_close(&rx);
    assert_eq!(id, flood_id);
    assert!(is_reset(&why), "{why:?}");
    drop(others);
    for _ in 0..5 {
        assert_eq!(recv_close(&rx).1, Why::PeerClosed);
    }
    let el = server.stop();
    el.handler().assert_closed_once();
    base.check(el, 1);
}

// ---------------------------------------------------------------------------------------------
// 2. Resets and dead peers.

/// Twenty clients are each sent 8 MiB through a 16 KiB send buffer (so MiBs stay queued in
/// the loop), read a different part of it, then reset (SO_LINGER 0) in the middle of the
/// transfer. Each connection closes once, with the reset as its reason; nothing leaks.
#[test]
fn reset_in_the_middle_of_a_partial_write() {
    const CLIENTS: usize = 20;
    let _serial = serial();
    let base = Baseline::take();
    let (tx, rx) = channel();
    let probe = Probe {
        greeting: Some(Arc::new(random_bytes(8 << 20, 3))),
        sndbuf: Some(16 * 1024),
        ..Probe::new(tx)
    };
    let greeting = probe.greeting.clone().unwrap();
    let (server, addr) = start(probe, Config::default());
    for i in 0..CLIENTS {
        let mut c = small_client(addr, 16 * 1024);
        let id = recv_open(&rx);
        let queued = on_loop(&server.handle, move |_, cx| cx.queued(id)).unwrap();
        assert!(queued > 4 << 20, "only {queued} bytes queued");
        // Read a prefix of 0 to ~1 MiB, check it, then reset mid-stream.
        let want = i * 50_000;
        let mut got = vec![0; want];
        c.read_exact(&mut got).unwrap();
        assert!(got[..] == greeting[..want], "prefix differs");
        reset(c);
        let (closed, why) = recv_close(&rx);
        assert_eq!(closed, id);
        assert!(is_reset(&why), "{id}: {why:?}");
    }
    let el = server.stop();
    el.handler().assert_closed_once();
    assert_eq!(el.stats().closed.error, CLIENTS as u64);
    base.check(el, 1);
}

/// The peer vanishes with 1 MiB queued for it: it closes without reading (its kernel
/// answers our data with RST); it half-closes, the handler closes gracefully (flushing),
/// then the peer is gone; on a Unix socket it just closes (EPIPE on our next write). Each
/// connection closes once with the error.
#[test]
fn peer_vanishes_with_a_mib_queued() {
    let _serial = serial();
    let base = Baseline::take();
    let (tx, rx) = channel();
    let probe = Probe {
        greeting: Some(Arc::new(vec![b'q'; 1 << 20])),
        sndbuf: Some(16 * 1024),
        ..Probe::new(tx)
    };
    let mut el = EventLoop::new(probe).unwrap();
    let l = el.listen(localhost()).unwrap();
    let addr = el.context().listener_addr(l).unwrap().as_inet().unwrap();
    let dir = std::env::temp_dir().join(format!("evloop-adv-vanish-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sock");
    el.listen_unix(&path).unwrap();
    let server = spawn(el);

    let queued_of = |id: ConnId| on_loop(&server.handle, move |_, cx| cx.queued(id));
    // (a) Plain close with unread data.
    let c = small_client(addr, 16 * 1024);
    let a = recv_open(&rx);
    assert!(queued_of(a).unwrap() > 512 * 1024);
    drop(c);
    let (id, why) = recv_close(&rx);
    assert_eq!(id, a);
    assert!(is_reset(&why), "plain close: {why:?}");

    // (b) Half-closed, and the handler is flushing towards a graceful close, when the peer
    // is gone for good. (Its EOF is not even seen: reading a congested connection pauses.)
    let c = small_client(addr, 16 * 1024);
    let b = recv_open(&rx);
    c.shutdown(Shutdown::Write).unwrap();
    let open = on_loop(&server.handle, move |_, cx| {
        cx.close(b);
        (cx.is_open(b), cx.queued(b))
    });
    assert!(!open.0, "closing");
    assert!(open.1.unwrap() > 512 * 1024, "still flushing: {open:?}");
    drop(c);
    let (id, why) = recv_close(&rx);
    assert_eq!(id, b);
    assert!(is_reset(&why), "half-closed then gone: {why:?}");

    // (c) A Unix stream peer closes: the next write is EPIPE.
    let u = std::os::unix::net::UnixStream::connect(&path).unwrap();
    let c_id = recv_open(&rx);
    assert!(queued_of(c_id).unwrap() > 0);
    drop(u);
    let (id, why) = recv_close(&rx);
    assert_eq!(id, c_id);
    assert!(is_reset(&why), "unix peer gone: {why:?}");

    let el = server.stop();
    el.handler().assert_closed_once();
    assert_eq!(el.stats().closed.error, 3);
    let _ = std::fs::remove_dir_all(&dir);
    base.check(el, 2);
}

/// 200 clients connect (the kernel completes their handshakes in the backlog) and reset
/// before the loop has accepted any of them; then the loop runs. Whatever accept hands
/// over is closed once with the reset; a client that connects afterwards is served.
#[test]
fn connections_reset_in_the_backlog_before_accept() {
    const CLIENTS: usize = 200;
    let _serial = serial();
    let base = Baseline::take();
    let (tx, rx) = channel();
    let mut el = EventLoop::new(Probe::echo(tx)).unwrap();
    let l = el.listen(localhost()).unwrap();
    let addr = el.context().listener_addr(l).unwrap().as_inet().unwrap();
    let clients: Vec<TcpStream> = (0..CLIENTS).map(|_| client(addr)).collect();
    for c in clients {
        reset(c);
    }
    let server = spawn(el);
    // Accepting is FIFO: once the sentinel is served, every earlier connection has been
    // handed over (or skipped by accept); then each of those closes.
    let mut sentinel = client(addr);
    assert_eq!(round_trip(&mut sentinel, b"after"), b"after");
    let opened = on_loop(&server.handle, |h: &mut Probe, _| h.opens.len());
    assert!(opened <= CLIENTS + 1);
    for _ in 1..opened {
        let (_, why) = recv_close(&rx);
        assert!(is_reset(&why) || why == Why::PeerClosed, "{why:?}");
    }
    drop(sentinel);
    assert_eq!(recv_close(&rx).1, Why::PeerClosed, "the sentinel");
    let el = server.stop();
    let h = el.handler();
    h.assert_closed_once();
    let mut resets = 0;
    for (id, whys) in &h.closes {
        match &whys[0] {
            w if is_reset(w) => resets += 1,
            Why::PeerClosed => {}
            other => panic!("{id}: {other:?}"),
        }
    }
    eprintln!(
        "backlog resets: {} accepted of {CLIENTS} (+1 sentinel), {resets} closed as reset",
        h.opens.len() - 1
    );
    assert_eq!(
        resets,
        h.opens.len() - 1,
        "every reset connection closed as reset"
    );
    assert_eq!(el.stats().panics, 0);
    base.check(el, 1);
}

/// A graceful close of a peer that keeps flooding: the close reads away what the peer
/// already sent (so the kernel does not answer with RST) and must not get stuck doing so
/// while the flood goes on.
#[test]
fn graceful_close_while_the_peer_floods_finishes_promptly() {
    struct Sink(u64, Sender<Ev>);
    impl Handler for Sink {
        fn on_data(&mut self, cx: &mut Context<'_>, conn: ConnId, data: &[u8]) {
            self.0 += data.len() as u64;
            if self.0 > 32 << 20 && cx.is_open(conn) {
                cx.close(conn);
                let _ = self.1.send(Ev::Open(conn)); // "closing now"
            }
        }
        fn on_close(&mut self, _cx: &mut Context<'_>, conn: ConnId, reason: &CloseReason) {
            let _ = self.1.send(Ev::Close(conn, reason.into()));
        }
    }
    let _serial = serial();
    let base = Baseline::take();
    let (tx, rx) = channel();
    let (server, addr) = start(Sink(0, tx), Config::default());
    let flooder = client(addr);
    let writers: Vec<_> = (0..2)
        .map(|_| {
            let mut f = flooder.try_clone().unwrap();
            std::thread::spawn(move || {
                let chunk = vec![b'x'; 256 * 1024];
                while f.write(&chunk).is_ok() {}
            })
        })
        .collect();
    let closing = recv_open(&rx);
    let t = Instant::now();
    let (closed, why) = recv_close(&rx);
    let took = t.elapsed();
    assert_eq!(closed, closing);
    assert_eq!(why, Why::Local);
    assert!(took < Duration::from_secs(1), "the close took {took:?}");
    // The writers stop at the reset that their next bytes meet.
    for w in writers {
        w.join().unwrap();
    }
    drop(flooder);
    base.check(server.stop(), 1);
}

// ---------------------------------------------------------------------------------------------
// 4. Shutdown under mixed load (half-close and the shutdown basics: tests/toolbox.rs).

/// 50 clients are each owed 1 MiB when a graceful shutdown with a 1.5 s deadline starts:
/// the 25 that read get every byte then EOF (closed `Local`), the 25 that never read are
/// cut at the deadline (`Shutdown`), and `run()` returns by itself within deadline + 3 s.
#[test]
fn shutdown_with_50_clients_half_reading_half_not() {
    const HALF: usize = 25;
    const SIZE: usize = 1 << 20;
    let grace = Duration::from_millis(1500);
    let _serial = serial();
    let base = Baseline::take();
    let (tx, rx) = channel();
    let (server, addr) = start(Probe::new(tx), Config::default());
    let mut readers = vec![];
    let mut lazy = vec![];
    for i in 0..2 * HALF {
        let c = small_client(addr, 8 * 1024);
        let id = recv_open(&rx);
        if i % 2 == 0 {
            readers.push((c, id));
        } else {
            lazy.push((c, id));
        }
    }
    let payload = Arc::new(random_bytes(SIZE, 50));
    let ids: Vec<ConnId> = readers.iter().chain(&lazy).map(|(_, id)| *id).collect();
    let p = payload.clone();
    let min_queued = on_loop(&server.handle, move |_, cx| {
        ids.iter()
            .map(|&id| {
                cx.set_send_buffer_size(id, 16 * 1024).unwrap();
                assert!(cx.send(id, &p));
                cx.queued(id).unwrap()
            })
            .min()
            .unwrap()
    });
    assert!(min_queued > SIZE / 2, "queued only {min_queued}");
    let start_at = Instant::now();
    server.handle.shutdown(grace).unwrap();
    let reader_ids: Vec<ConnId> = readers.iter().map(|(_, id)| *id).collect();
    let threads: Vec<_> = readers
        .into_iter()
        .map(|(mut c, _)| {
            let payload = payload.clone();
            std::thread::spawn(move || {
                let mut got = Vec::with_capacity(SIZE);
                c.read_to_end(&mut got).expect("reader: all, then EOF");
                assert!(got == *payload, "reader got {} bytes, differing", got.len());
            })
        })
        .collect();
    let (done_tx, done_rx) = channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(server.join());
    });
    let el = recv(&done_rx);
    let took = start_at.elapsed();
    for t in threads {
        t.join().expect("reader");
    }
    assert!(took >= grace, "returned before the deadline: {took:?}");
    assert!(took < grace + Duration::from_secs(3), "took {took:?}");
    let h = el.handler();
    h.assert_closed_once();
    for (id, whys) in &h.closes {
        let want = if reader_ids.contains(id) {
            Why::Local
        } else {
            Why::Shutdown
        };
        assert_eq!(whys[0], want, "{id}");
    }
    assert_eq!(el.stats().closed.shutdown, HALF as u64);
    assert_eq!(el.stats().closed.local, HALF as u64);
    for (mut c, _) in lazy {
        let mut rest = Vec::new();
        let _ = c.read_to_end(&mut rest); // what the kernel held, then a reset
        assert!(rest.len() < SIZE, "a lazy peer was not cut off");
    }
    eprintln!("shutdown: 25 readers flushed, 25 cut, run() returned after {took:?}");
    base.check(el, 0);
}

// ---------------------------------------------------------------------------------------------
// 5. Slot reuse with state in the handler (ids and tokens: tests/core.rs, reactor_tests.rs).

/// A handler keeps per-connection state in a map keyed by `ConnId`, dropped in `on_close`.
/// Three connections are live at a time; 300 times one of them is killed (handler abort or
/// close, peer reset or close) and a new client takes its slot. The newcomer never sees the
/// dead connection's state: it starts with none, and every transcript it is sent back holds
/// only its own bytes.
#[test]
fn handler_state_keyed_by_conn_id_never_reaches_a_slot_reuser() {
    #[derive(Default)]
    struct Sessions {
        state: HashMap<ConnId, Vec<u8>>,
        tx: Option<Sender<Ev>>,
        bad: Vec<String>,
    }
    impl Handler for Sessions {
        fn on_open(&mut self, _cx: &mut Context<'_>, conn: ConnId) {
            if let Some(old) = self.state.keys().find(|k| k.slot() == conn.slot()) {
                self.bad
                    .push(format!("{conn} opened while {old}'s state is kept"));
            }
            self.state.insert(conn, Vec::new());
            let _ = self.tx.as_ref().unwrap().send(Ev::Open(conn));
        }
        fn on_data(&mut self, cx: &mut Context<'_>, conn: ConnId, data: &[u8]) {
            let Some(transcript) = self.state.get_mut(&conn) else {
                self.bad.push(format!("data for {conn} without state"));
                return;
            };
            for line in data.split_inclusive(|&b| b == b'\n') {
                match line {
                    b"abort\n" => cx.abort(conn),
                    b"close\n" => cx.close(conn),
                    _ => {
                        transcript.extend_from_slice(line);
                        if line.ends_with(b"\n") {
                            let len = (transcript.len() as u32).to_le_bytes();
                            cx.send(conn, &len);
                            cx.send(conn, transcript);
                        }
                    }
                }
            }
        }
        fn on_close(&mut self, _cx: &mut Context<'_>, conn: ConnId, reason: &CloseReason) {
            if self.state.remove(&conn).is_none() {
                self.bad.push(format!("{conn} closed without state"));
            }
            let _ = self
                .tx
                .as_ref()
                .unwrap()
                .send(Ev::Close(conn, reason.into()));
        }
    }
    /// One client and what it has sent (the transcript it expects back).
    struct Peer {
        s: TcpStream,
        id: ConnId,
        sent: Vec<u8>,
    }
    impl Peer {
        fn say(&mut self, line: &[u8]) {
            self.s.write_all(line).unwrap();
            self.sent.extend_from_slice(line);
            let mut len = [0; 4];
            self.s.read_exact(&mut len).unwrap();
            let mut back = vec![0; u32::from_le_bytes(len) as usize];
            self.s.read_exact(&mut back).unwrap();
            assert_eq!(back, self.sent, "{}: transcript", self.id);
        }
    }

    let _serial = serial();
    let base = Baseline::take();
    let (tx, rx) = channel();
    let h = Sessions {
        tx: Some(tx),
        ..Sessions::default()
    };
    // No lingering close: a lingering socket would take the freed slot, and this test wants
    // the next connection to reuse it.
    let mut config = Config::default();
    config.linger = Duration::ZERO;
    let (server, addr) = start(h, config);
    let connect = |n: usize| {
        let s = client(addr);
        let id = recv_open(&rx);
        let mut p = Peer {
            s,
            id,
            sent: Vec::new(),
        };
        p.say(format!("hello from {n}\n").as_bytes());
        p
    };
    let mut live: Vec<Peer> = (0..3).map(connect).collect();
    let mut rng = 0x5eed_u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for round in 0..300 {
        let k = (next() % 3) as usize;
        let mut victim = live.swap_remove(k);
        // State first, so there is something to leak.
        victim.say(format!("secret {round} of {}\n", victim.id).as_bytes());
        let expect = match next() % 4 {
            0 => {
                victim.s.write_all(b"abort\n").unwrap();
                Why::Aborted
            }
            1 => {
                victim.s.write_all(b"close\n").unwrap();
                Why::Local
            }
            2 => {
                reset(victim.s);
                Why::Error(ErrorKind::ConnectionReset)
            }
            _ => {
                drop(victim.s);
                Why::PeerClosed
            }
        };
        let (closed, why) = recv_close(&rx);
        assert_eq!(closed, victim.id);
        assert_eq!(why, expect, "round {round}");
        let mut p = connect(1000 + round);
        assert_eq!(
            p.id.slot(),
            victim.id.slot(),
            "the newcomer took the freed slot"
        );
        assert_ne!(p.id, victim.id);
        p.say(b"and again\n");
        live.push(p);
        // The others' transcripts go on intact.
        let j = (next() % 3) as usize;
        live[j].say(format!("round {round}\n").as_bytes());
    }
    drop(live);
    for _ in 0..3 {
        assert_eq!(recv_close(&rx).1, Why::PeerClosed);
    }
    let el = server.stop();
    let h = el.handler();
    assert!(h.bad.is_empty(), "{:?}", h.bad);
    assert!(h.state.is_empty(), "state kept for {:?}", h.state.keys());
    assert_eq!(el.stats().closed.total(), 303);
    base.check(el, 1);
}

// ---------------------------------------------------------------------------------------------
// 7. Signals.

/// Echoes; counts the signals `on_signal` is given (instead of shutting down).
struct SignalEcho(Arc<AtomicU64>);

impl Handler for SignalEcho {
    fn on_data(&mut self, cx: &mut Context<'_>, conn: ConnId, data: &[u8]) {
        cx.send(conn, data);
    }
    fn on_signal(&mut self, _cx: &mut Context<'_>, _signal: i32) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Sends `signal` to one thread of this process (pthread_kill). The one unsafe call of
/// this file: a thread-directed signal needs it (a process-directed one would land on
/// whichever thread the kernel picks, usually not the loop's), and the target thread is
/// alive for as long as the caller holds its `JoinHandle` unjoined.
fn signal_thread(thread: libc::pthread_t, signal: i32) {
    // SAFETY: `thread` belongs to a JoinHandle that has not been joined or detached.
    let rc = unsafe { libc::pthread_kill(thread, signal) };
    assert_eq!(rc, 0, "pthread_kill");
}

/// A thousand SIGUSR1s aimed at the loop thread while ten clients echo random messages:
/// every byte comes back, in order, and the loop keeps running. With `watch`, the loop
/// watches SIGUSR1 (signal-hook-mio) and `on_signal` counts them; without, a plain
/// signal-hook handler is the only one, and each signal interrupts the loop's epoll_wait
/// (EINTR, retried).
fn signal_storm(watch: bool) {
    use std::os::unix::thread::JoinHandleExt;
    const SIGNALS: usize = 1000;
    const CLIENTS: usize = 10;
    let _serial = serial();
    // Installed first (and for good), so that no SIGUSR1 ever finds the default action.
    static FLAG: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
    FLAG.get_or_init(|| {
        let flag = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(libc::SIGUSR1, flag.clone()).unwrap();
        flag
    });
    let base = Baseline::take();
    let counted = Arc::new(AtomicU64::new(0));
    let mut el = EventLoop::new(SignalEcho(counted.clone())).unwrap();
    if watch {
        el.watch_signals(&[libc::SIGUSR1]).unwrap();
    }
    let l = el.listen(localhost()).unwrap();
    let addr = el.context().listener_addr(l).unwrap().as_inet().unwrap();
    let handle = el.handle();
    let thread = std::thread::spawn(move || {
        el.run().expect("run survives the signals");
        el
    });
    let pthread = thread.as_pthread_t();

    let done = Arc::new(AtomicBool::new(false));
    let echoed = Arc::new(AtomicU64::new(0));
    let trips = Arc::new(AtomicU64::new(0));
    let message = |k: usize, round: u64| {
        let size = 1 + (round as usize * 977 + k * 131) % 8192;
        random_bytes(size, round * 16 + k as u64)
    };
    let clients: Vec<_> = (0..CLIENTS)
        .map(|k| {
            let (done, echoed, trips) = (done.clone(), echoed.clone(), trips.clone());
            std::thread::spawn(move || {
                let mut c = client(addr);
                let mut round = 0u64;
                // At least 20 round trips each, and on until phase 1 is over.
                while round < 20 || !done.load(Ordering::SeqCst) {
                    let msg = message(k, round);
                    assert_eq!(round_trip(&mut c, &msg), msg, "client {k} round {round}");
                    echoed.fetch_add(msg.len() as u64, Ordering::SeqCst);
                    trips.fetch_add(1, Ordering::SeqCst);
                    round += 1;
                }
                (c, round)
            })
        })
        .collect();
    // Phase 1: paced by the traffic, not by the clock: signal i goes once i round trips
    // are done, so the storm spans the echoing and lands wherever the loop is.
    let end = Instant::now() + DEADLINE;
    for i in 0..SIGNALS as u64 / 2 {
        while trips.load(Ordering::SeqCst) < i {
            assert!(Instant::now() < end, "echo stalled at {i} signals");
            std::thread::yield_now();
        }
        signal_thread(pthread, libc::SIGUSR1);
    }
    done.store(true, Ordering::SeqCst);
    let mut clients: Vec<(TcpStream, u64)> =
        clients.into_iter().map(|c| c.join().unwrap()).collect();
    // Phase 2: lockstep. Each signal waits until the loop thread sleeps (in epoll_wait:
    // state S), so it interrupts the wait; then a client does a round trip.
    let tid = on_loop(&handle, |_, _| thread_id());
    for j in 0..SIGNALS / 2 {
        while thread_state(tid) != 'S' {
            assert!(Instant::now() < end, "the idle loop does not sleep");
            std::thread::yield_now();
        }
        signal_thread(pthread, libc::SIGUSR1);
        let (c, round) = &mut clients[j % CLIENTS];
        let msg = message(j % CLIENTS, *round);
        assert_eq!(
            round_trip(c, &msg),
            msg,
            "client {} round {round}",
            j % CLIENTS
        );
        echoed.fetch_add(msg.len() as u64, Ordering::SeqCst);
        *round += 1;
    }
    let rounds: u64 = clients.iter().map(|(_, r)| r).sum();
    drop(clients);
    // Still running: a fresh client is served after the storm.
    let mut c = client(addr);
    assert_eq!(round_trip(&mut c, b"still here"), b"still here");
    drop(c);
    handle.stop().unwrap();
    let el = thread.join().expect("loop thread");
    let n = counted.load(Ordering::SeqCst);
    eprintln!(
        "signals (watch: {watch}): {SIGNALS} sent (half to a sleeping loop), {n} seen by \
         on_signal, {rounds} round trips, {} bytes echoed, none lost",
        echoed.load(Ordering::SeqCst)
    );
    if watch {
        // Signals coalesce while one is pending, so phase 1 may show fewer than it sent;
        // each of phase 2's found the loop asleep and is seen on its own.
        assert!(
            (SIGNALS as u64 / 2..=SIGNALS as u64).contains(&n),
            "on_signal ran {n} times"
        );
    } else {
        assert_eq!(n, 0);
    }
    assert_eq!(el.stats().bytes_in, el.stats().bytes_out);
    assert_eq!(el.stats().closed.total(), CLIENTS as u64 + 1);
    assert_eq!(el.stats().closed.peer_closed, CLIENTS as u64 + 1);
    base.check(el, 1);
}

#[test]
fn signal_storm_interrupting_the_poll_loses_no_bytes() {
    signal_storm(false);
}

#[test]
fn signal_storm_watched_by_the_loop_is_counted_and_loses_no_bytes() {
    signal_storm(true);
}
