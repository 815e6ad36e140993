//! Issue 7, the adversarial reliability suite (stream part): floods, resets and dead peers,
//! shutdown under mixed load, per-connection handler state across slot reuse, signal
//! storms, and regressions (a panic escaping `on_close`, zero budgets, aborted accepts, a
//! client reconnecting during a shutdown). Every test checks at the end that the loop's
//! books balance: `on_close` exactly once per connection with the expected reason,
//! `connections_open == 0`, only the listener left in the slab, and the process's
//! descriptor count back to its baseline.
//!
//! Descriptors are counted process-wide, so the tests of this binary run one at a time
//! (`serial()`); UDP, SIGPIPE, churn, the examples and the property tests have their own
//! binaries (`adversarial_udp`, `sigpipe`, `churn`, `adversarial_examples`, `property`).
//!
//! Already covered elsewhere, and not repeated here: half-close (tests/toolbox.rs,
//! `half_close_*`), graceful shutdown basics (`graceful_shutdown_flushes_readers_and_cuts_the_rest`),
//! slot reuse by tokens and ids (tests/core.rs `reused_slot_gets_nothing_of_the_dead_connection`,
//! src/reactor_tests.rs), EMFILE (tests/emfile.rs), panics caught by the loop
//! (tests/panics.rs).

mod support;

use evloop::{CloseReason, Config, ConnId, Context, EventLoop, Handle, Handler, Signal};
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
/// largest output queue it ever saw. Each connection's state is its own id, set in
/// `on_open`: it must come back in `on_close` (never another connection's state).
#[derive(Default)]
struct Probe {
    tx: Option<Sender<Ev>>,
    echo: bool,
    /// Sent to every new connection (after shrinking its send buffer to `sndbuf`).
    greeting: Option<Arc<Vec<u8>>>,
    sndbuf: Option<usize>,
    max_queued: Arc<AtomicUsize>,
    /// Ledgers of what happened (they outlive the connections, so they are maps).
    opens: HashMap<ConnId, u32>,
    closes: HashMap<ConnId, Vec<Why>>,
    /// Connections whose state was not their own in `on_open` or `on_close`.
    wrong_state: Vec<String>,
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
        assert!(self.wrong_state.is_empty(), "{:?}", self.wrong_state);
    }
}

impl Handler for Probe {
    type Conn = Option<ConnId>;

    fn on_open(&mut self, cx: &mut Context<'_, Self>, conn: ConnId, me: &mut Option<ConnId>) {
        *self.opens.entry(conn).or_default() += 1;
        if let Some(other) = me.replace(conn) {
            self.wrong_state
                .push(format!("{conn} opened with {other}'s state"));
        }
        if let Some(n) = self.sndbuf {
            cx.set_send_buffer_size(conn, n).unwrap();
        }
        if let Some(g) = &self.greeting {
            cx.send(conn, g).unwrap();
        }
        if let Some(tx) = &self.tx {
            let _ = tx.send(Ev::Open(conn));
        }
    }

    fn on_data(
        &mut self,
        cx: &mut Context<'_, Self>,
        conn: ConnId,
        _: &mut Option<ConnId>,
        data: &[u8],
    ) -> usize {
        if self.echo {
            let _ = cx.send(conn, data);
            let q = cx.queued(conn).unwrap_or(0);
            self.max_queued.fetch_max(q, Ordering::SeqCst);
        }
        data.len()
    }

    fn on_close(
        &mut self,
        _cx: &mut Context<'_, Self>,
        conn: ConnId,
        me: Option<ConnId>,
        reason: &CloseReason,
    ) {
        if me != Some(conn) {
            self.wrong_state
                .push(format!("{conn} closed with state {me:?}"));
        }
        self.closes.entry(conn).or_default().push(reason.into());
        if let Some(tx) = &self.tx {
            let _ = tx.send(Ev::Close(conn, reason.into()));
        }
    }
}

fn start<H: Handler + Send + 'static>(h: H, config: Config) -> (Running<H>, SocketAddr)
where
    H::Conn: Send,
{
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
    f: impl FnOnce(&mut H, &mut Context<'_, H>) -> T + Send + 'static,
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
        type Conn = ();
        fn on_data(
            &mut self,
            cx: &mut Context<'_, Self>,
            conn: ConnId,
            _: &mut (),
            data: &[u8],
        ) -> usize {
            self.0 += data.len() as u64;
            if self.0 > 32 << 20 && cx.is_open(conn) {
                cx.close(conn);
                let _ = self.1.send(Ev::Open(conn)); // "closing now"
            }
            data.len()
        }
        fn on_close(
            &mut self,
            _cx: &mut Context<'_, Self>,
            conn: ConnId,
            _: (),
            reason: &CloseReason,
        ) {
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
                cx.send(id, &p).unwrap();
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

/// A handler keeps per-connection state (once in a map keyed by `ConnId`, now the loop's
/// `type Conn`, handed back in `on_close`). Three connections are live at a time; 300
/// times one of them is killed (handler abort or close, peer reset or close) and a new
/// client takes its slot. The newcomer never sees the dead connection's state: it starts
/// with none, and every transcript it is sent back holds only its own bytes.
#[test]
fn handler_state_keyed_by_conn_id_never_reaches_a_slot_reuser() {
    /// One connection's state: whose it is, and what it said.
    #[derive(Default)]
    struct Session {
        owner: Option<ConnId>,
        transcript: Vec<u8>,
    }
    #[derive(Default)]
    struct Sessions {
        /// States handed out in `on_open` and not yet handed back in `on_close`.
        live: usize,
        tx: Option<Sender<Ev>>,
        bad: Vec<String>,
    }
    impl Handler for Sessions {
        type Conn = Session;
        fn on_open(&mut self, _cx: &mut Context<'_, Self>, conn: ConnId, state: &mut Session) {
            if state.owner.is_some() || !state.transcript.is_empty() {
                self.bad.push(format!(
                    "{conn} opened with {:?}'s state ({} bytes)",
                    state.owner,
                    state.transcript.len()
                ));
            }
            state.owner = Some(conn);
            self.live += 1;
            let _ = self.tx.as_ref().unwrap().send(Ev::Open(conn));
        }
        fn on_data(
            &mut self,
            cx: &mut Context<'_, Self>,
            conn: ConnId,
            state: &mut Session,
            data: &[u8],
        ) -> usize {
            if state.owner != Some(conn) {
                self.bad
                    .push(format!("data for {conn} with {:?}'s state", state.owner));
                return data.len();
            }
            // Whole lines only; the loop keeps a partial one for next time.
            let mut used = 0;
            while let Some(nl) = data[used..].iter().position(|&b| b == b'\n') {
                let line = &data[used..used + nl + 1];
                used += nl + 1;
                match line {
                    b"abort\n" => cx.abort(conn),
                    b"close\n" => cx.close(conn),
                    _ => {
                        state.transcript.extend_from_slice(line);
                        let len = (state.transcript.len() as u32).to_le_bytes();
                        let _ = cx.send(conn, &len);
                        let _ = cx.send(conn, &state.transcript);
                    }
                }
            }
            used
        }
        fn on_close(
            &mut self,
            _cx: &mut Context<'_, Self>,
            conn: ConnId,
            state: Session,
            reason: &CloseReason,
        ) {
            if state.owner != Some(conn) {
                self.bad
                    .push(format!("{conn} closed with {:?}'s state", state.owner));
            }
            self.live -= 1;
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
    assert_eq!(h.live, 0, "states not handed back");
    assert_eq!(el.stats().closed.total(), 303);
    base.check(el, 1);
}

// ---------------------------------------------------------------------------------------------
// 7. Signals.

/// Echoes; counts the signals `on_signal` is given (instead of shutting down).
struct SignalEcho(Arc<AtomicU64>);

impl Handler for SignalEcho {
    type Conn = ();
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
    fn on_signal(&mut self, _cx: &mut Context<'_, Self>, _signal: Signal) {
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
        el.watch_signals(&[Signal::User1]).unwrap();
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

// ---------------------------------------------------------------------------------------------
// 8. Regressions: a panic escaping on_close, budgets of zero, aborted accepts, reconnecting
// clients during a shutdown.

/// The text of a panic payload.
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(p) => p
            .downcast_ref::<&str>()
            .map_or_else(|| "(not a string)".to_string(), |s| s.to_string()),
    }
}

/// With `catch_panics` off, a panic in `on_close` unwinds out of `run()` (and out of
/// `run_once()`). The loop can be run again afterwards: no `on_close` runs twice for the
/// same connection (the panicking one included), a connection still waiting for its
/// `on_close` gets exactly one, a newcomer that takes a freed slot in the very tick the
/// next panic happens is neither closed nor disturbed, `connections_open` stays exact (it
/// would underflow, a panic of its own in this debug build, if a close were counted twice),
/// and new clients are accepted and echoed.
#[test]
fn a_panic_in_on_close_escapes_and_the_loop_goes_on_without_a_second_close() {
    /// Echoes; a connection whose state is `true` panics in its `on_close`.
    #[derive(Default)]
    struct Fused {
        opened: Vec<ConnId>,
        closes: Vec<ConnId>,
    }
    impl Handler for Fused {
        type Conn = bool;
        fn on_open(&mut self, _cx: &mut Context<'_, Self>, conn: ConnId, explode: &mut bool) {
            assert!(!*explode, "{conn} opened with another connection's state");
            self.opened.push(conn);
        }
        fn on_data(
            &mut self,
            cx: &mut Context<'_, Self>,
            conn: ConnId,
            _: &mut bool,
            data: &[u8],
        ) -> usize {
            cx.send(conn, data).unwrap();
            data.len()
        }
        fn on_close(
            &mut self,
            _cx: &mut Context<'_, Self>,
            conn: ConnId,
            explode: bool,
            _: &CloseReason,
        ) {
            self.closes.push(conn);
            if explode {
                panic!("on_close of {conn} blew up");
            }
        }
    }
    /// One tick; a panic out of it is returned, not propagated.
    fn tick(el: &mut EventLoop<Fused>) -> Result<(), String> {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            el.run_once(Some(Duration::from_millis(10)))
        }));
        match r {
            Ok(io) => {
                io.expect("run_once");
                Ok(())
            }
            Err(p) => Err(panic_message(p)),
        }
    }
    /// Ticks until `done`; no panic is expected meanwhile.
    fn until(el: &mut EventLoop<Fused>, what: &str, done: impl Fn(&EventLoop<Fused>) -> bool) {
        let end = Instant::now() + DEADLINE;
        while !done(el) {
            assert!(Instant::now() < end, "{what}: not within {DEADLINE:?}");
            if let Err(p) = tick(el) {
                panic!("{what}: unexpected panic out of the loop: {p}");
            }
        }
    }
    /// A round trip through the loop, driven from this thread.
    fn echo(el: &mut EventLoop<Fused>, s: &mut TcpStream, msg: &[u8]) {
        let want = el.stats().bytes_out + msg.len() as u64;
        s.write_all(msg).unwrap();
        until(el, "echo", |el| el.stats().bytes_out >= want);
        let mut back = vec![0; msg.len()];
        s.read_exact(&mut back).unwrap();
        assert_eq!(back, msg);
    }

    let _serial = serial();
    let base = Baseline::take();
    let mut config = Config::default();
    config.catch_panics = false;
    // No lingering sockets: freed slots go straight to the next connection.
    config.linger = Duration::ZERO;
    let mut el = EventLoop::with_config(Fused::default(), config).unwrap();
    let l = el.listen(localhost()).unwrap();
    let addr = el.context().listener_addr(l).unwrap().as_inet().unwrap();
    // One at a time, so that the i-th open is the i-th client.
    let mut clients = Vec::new();
    for i in 0..3 {
        clients.push(client(addr));
        until(&mut el, "open", |el| el.handler().opened.len() > i);
    }
    let [ia, ib, ic] = el.handler().opened[..] else {
        unreachable!()
    };
    let mut c = clients.pop().unwrap();
    echo(&mut el, &mut c, b"c before");
    // a and b will panic in on_close; both are aborted before the next tick, so b's
    // on_close is still waiting when a's panics.
    *el.conn_state(ia).unwrap() = true;
    *el.conn_state(ib).unwrap() = true;
    el.context().abort(ia);
    el.context().abort(ib);

    // 1. The panic leaves run().
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| el.run()));
    let message = panic_message(r.expect_err("run() returned though on_close panicked"));
    assert_eq!(message, format!("on_close of {ia} blew up"));
    assert_eq!(el.handler().closes, [ia]);

    // 2. Run again, with a newcomer d already waiting to be accepted: the next tick accepts
    // d into a freed slot and then runs b's on_close, which panics out of run_once.
    let mut d = client(addr);
    let end = Instant::now() + DEADLINE;
    let mut panics = Vec::new();
    while el.handler().opened.len() < 4 || el.handler().closes.len() < 2 {
        assert!(
            Instant::now() < end,
            "d not opened or b not closed: {:?}",
            el.handler().closes
        );
        if let Err(p) = tick(&mut el) {
            panics.push(p);
        }
    }
    assert_eq!(panics, [format!("on_close of {ib} blew up")]);
    let id = el.handler().opened[3];
    assert!(
        id.slot() == ia.slot() || id.slot() == ib.slot(),
        "{id} took neither freed slot ({ia}, {ib})"
    );
    assert_eq!(el.handler().closes, [ia, ib], "each on_close once");
    assert_eq!(el.stats().connections_open, 2, "c and d");
    assert_eq!(el.stats().closed.aborted, 2);

    // 3. The dead ids do nothing; the newcomer and the old survivor are served.
    assert_eq!(el.context().send(ia, b"x"), Err(evloop::SendError::Closed));
    assert_eq!(el.context().send(ib, b"x"), Err(evloop::SendError::Closed));
    assert!(el.context().is_open(id));
    assert!(el.context().is_open(ic));
    echo(&mut el, &mut d, b"d is new");
    echo(&mut el, &mut c, b"c still here");
    let mut e = client(addr);
    until(&mut el, "open e", |el| el.handler().opened.len() == 5);
    echo(&mut el, &mut e, b"e after both panics");
    assert_eq!(el.handler().closes, [ia, ib], "nothing else closed");
    assert_eq!(el.stats().connections_open, 3);

    // 4. Everyone leaves: each closes once more, and the books balance.
    drop((clients, c, d, e));
    until(&mut el, "all closed", |el| el.handler().closes.len() == 5);
    let h = el.handler();
    let mut closes = h.closes.clone();
    closes.sort_by_key(|c| c.to_string());
    closes.dedup();
    assert_eq!(closes.len(), 5, "on_close twice for one id: {:?}", h.closes);
    assert!(h.opened.iter().all(|o| h.closes.contains(o)));
    assert_eq!(el.stats().closed.peer_closed, 3);
    assert_eq!(el.stats().closed.total(), 5);
    assert_eq!(el.stats().accepted, 5);
    base.check(el, 1);
}

/// A budget of zero would make the accept or receive loop spin without ever accepting or
/// receiving: `EventLoop::with_config` refuses such a config (InvalidInput) instead.
#[test]
fn zero_accept_or_datagram_budget_is_refused_by_with_config() {
    struct Nop;
    impl Handler for Nop {
        type Conn = ();
    }
    let zero_accept = |c: &mut Config| c.accept_budget = 0;
    let zero_datagram = |c: &mut Config| c.datagram_budget = 0;
    type Breaks<'a> = (&'a str, &'a dyn Fn(&mut Config));
    let cases: [Breaks<'_>; 2] = [
        ("accept_budget", &zero_accept),
        ("datagram_budget", &zero_datagram),
    ];
    for (name, zero) in cases {
        let mut config = Config::default();
        zero(&mut config);
        let Err(e) = EventLoop::with_config(Nop, config) else {
            panic!("a config with {name} = 0 was accepted");
        };
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{name}: {e}");
        assert!(e.to_string().contains(name), "{name}: {e}");
    }
    // Budgets of one are fine.
    let mut config = Config::default();
    config.accept_budget = 1;
    config.datagram_budget = 1;
    assert!(EventLoop::with_config(Nop, config).is_ok());
}

const FAKE_ABORTS: &str = "EVLOOP_FAKE_ECONNABORTED";

/// A shim for `accept4` that fails the first `$EVLOOP_FAKE_ECONNABORTED` calls with
/// ECONNABORTED (without taking the pending connection, as when the kernel reports an
/// aborted one), saying so on stderr, then passes every call to libc.
const FAKE_ACCEPT_C: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags) {
    static int (*real)(int, struct sockaddr *, socklen_t *, int);
    static int left = -1;
    if (!real) real = (int (*)(int, struct sockaddr *, socklen_t *, int))dlsym(RTLD_NEXT, "accept4");
    if (left < 0) {
        const char *n = getenv("EVLOOP_FAKE_ECONNABORTED");
        left = n ? atoi(n) : 0;
    }
    if (left > 0) {
        static const char msg[] = "FAKE accept4 -> ECONNABORTED\n";
        left--;
        (void)!write(2, msg, sizeof msg - 1);
        errno = ECONNABORTED;
        return -1;
    }
    return real(fd, addr, len, flags);
}
"#;

/// `accept` failing with ECONNABORTED (a connection aborted while it waited in the
/// backlog) is about that connection, not the listener: the loop skips it and goes on
/// accepting in the same turn. No `on_listener_error`, no back-off, and the client behind
/// it is served at once (were the error taken for the listener's, the accept loop would
/// stop, and with edge-triggered readiness nothing would wake it for the waiting client).
///
/// Linux does not produce ECONNABORTED on demand, so the test re-runs itself in a child
/// process with an `accept4` shim preloaded (LD_PRELOAD) that fails the first three calls.
/// The shim is compiled with `cc` (the linker Rust uses on Linux); without it, the test is
/// skipped with a message.
#[test]
fn econnaborted_on_accept_is_skipped_and_accepting_goes_on() {
    const ABORTS: usize = 3;
    if std::env::var_os(FAKE_ABORTS).is_some() {
        return econnaborted_child();
    }
    let _serial = serial();
    let dir = std::env::temp_dir().join(format!("evloop-fake-accept-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("fake_accept.c");
    let lib = dir.join("fake_accept.so");
    std::fs::write(&src, FAKE_ACCEPT_C).unwrap();
    let built = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&lib)
        .arg(&src)
        .arg("-ldl")
        .output();
    match built {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            let _ = std::fs::remove_dir_all(&dir);
            eprintln!(
                "SKIPPED: cc could not build the accept4 shim: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return;
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            eprintln!("SKIPPED: no cc to build the accept4 shim ({e})");
            return;
        }
    }
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "econnaborted_on_accept_is_skipped_and_accepting_goes_on",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(FAKE_ABORTS, ABORTS.to_string())
        .env("LD_PRELOAD", &lib)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("re-run the test binary");
    let (tx, rx) = channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    let out = recv(&rx).expect("wait for the child");
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "child failed: {:?}\n{stdout}\n{stderr}",
        out.status
    );
    let faked = stderr.matches("FAKE accept4 -> ECONNABORTED").count();
    assert_eq!(faked, ABORTS, "the shim was not used as planned:\n{stderr}");
    let report = stdout
        .lines()
        .find_map(|l| l.split_once("REPORT ").map(|(_, r)| r))
        .unwrap_or_else(|| panic!("no report:\n{stdout}\n{stderr}"));
    assert_eq!(
        report,
        "served listener_errors=0 accepted=1 descriptor_errors=0"
    );
}

/// The child: a client behind three failed accepts is echoed within a second.
fn econnaborted_child() {
    #[derive(Default)]
    struct Watch {
        listener_errors: Vec<String>,
    }
    impl Handler for Watch {
        type Conn = ();
        fn on_data(
            &mut self,
            cx: &mut Context<'_, Self>,
            conn: ConnId,
            _: &mut (),
            data: &[u8],
        ) -> usize {
            cx.send(conn, data).unwrap();
            data.len()
        }
        fn on_listener_error(
            &mut self,
            _cx: &mut Context<'_, Self>,
            listener: evloop::ListenerId,
            error: &std::io::Error,
        ) {
            self.listener_errors.push(format!("{listener}: {error}"));
        }
    }
    let (server, addr) = start(Watch::default(), Config::default());
    let mut c = client(addr);
    // Skipped aborts cost nothing; a listener error would leave the client waiting for an
    // accept that only another connection's edge (or a retry timer) would bring.
    c.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    assert_eq!(
        round_trip(&mut c, b"behind three aborts"),
        b"behind three aborts"
    );
    drop(c);
    let el = server.stop();
    let h = el.handler();
    assert!(h.listener_errors.is_empty(), "{:?}", h.listener_errors);
    println!(
        "REPORT served listener_errors={} accepted={} descriptor_errors={}",
        h.listener_errors.len(),
        el.stats().accepted,
        el.stats().accept_descriptor_errors
    );
    std::io::stdout().flush().unwrap();
}

/// A reconnecting client: every connection that closes dials again from `on_close`. A
/// graceful shutdown still ends: connects are refused once it has started, so the closes it
/// causes (one at once, one cut at the deadline because its peer never reads) do not bring
/// new connections, and `run()` returns by itself well before a generous deadline.
#[test]
fn a_client_reconnecting_in_on_close_does_not_stall_a_graceful_shutdown() {
    /// The state of a connection: whether it pushes 4 MiB its peer will never read.
    struct Redialer {
        target: SocketAddr,
        tx: Sender<Ev>,
        /// Redials made (they succeeded) and refused, and whether the loop was shutting down.
        redialed: Vec<bool>,
        refused: Vec<(bool, String)>,
    }
    impl Handler for Redialer {
        type Conn = bool;
        fn on_open(&mut self, cx: &mut Context<'_, Self>, conn: ConnId, heavy: &mut bool) {
            if *heavy {
                cx.set_send_buffer_size(conn, 16 * 1024).unwrap();
                cx.send(conn, &vec![b'h'; 4 << 20]).unwrap();
            }
            let _ = self.tx.send(Ev::Open(conn));
        }
        fn on_close(
            &mut self,
            cx: &mut Context<'_, Self>,
            conn: ConnId,
            heavy: bool,
            reason: &CloseReason,
        ) {
            let shutting_down = cx.is_shutting_down();
            match cx.connect(self.target, heavy) {
                Ok(_) => self.redialed.push(shutting_down),
                Err(e) => self.refused.push((shutting_down, e.to_string())),
            }
            let _ = self.tx.send(Ev::Close(conn, reason.into()));
        }
    }
    let _serial = serial();
    let base = Baseline::take();
    let remote = std::net::TcpListener::bind(localhost()).unwrap();
    let target = remote.local_addr().unwrap();
    let (tx, rx) = channel();
    let h = Redialer {
        target,
        tx,
        redialed: Vec::new(),
        refused: Vec::new(),
    };
    let mut el = EventLoop::new(h).unwrap();
    el.connect(target, false).unwrap();
    el.connect(target, true).unwrap();
    let server = spawn(el);
    let mut peers: Vec<TcpStream> = (0..2).map(|_| remote.accept().unwrap().0).collect();
    let first = [recv_open(&rx), recv_open(&rx)];

    // Before the shutdown, a close brings a new connection: it really does redial.
    drop(peers.remove(0));
    let (closed, _) = recv_close(&rx);
    assert!(first.contains(&closed));
    peers.push(remote.accept().unwrap().0);
    let again = recv_open(&rx);
    assert!(!first.contains(&again));

    // The shutdown: the light connection closes at once, the heavy one at the deadline;
    // each on_close redials, and is refused.
    let grace = Duration::from_millis(500);
    let started = Instant::now();
    server.handle.shutdown(grace).unwrap();
    let (done_tx, done_rx) = channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(server.join());
    });
    let el = match done_rx.recv_timeout(grace + DEADLINE) {
        Ok(el) => el,
        Err(_) => panic!(
            "run() did not return within {:?} of the shutdown",
            grace + DEADLINE
        ),
    };
    let took = started.elapsed();
    assert!(
        took < grace + Duration::from_secs(3),
        "shutdown took {took:?}"
    );
    let mut whys = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        if let Ev::Close(_, why) = ev {
            whys.push(why);
        }
    }
    let h = el.handler();
    assert_eq!(
        h.redialed,
        [false],
        "only the redial before the shutdown went through"
    );
    assert_eq!(h.refused.len(), 2, "{:?}", h.refused);
    assert!(
        h.refused.iter().all(|(shutting_down, _)| *shutting_down),
        "{:?}",
        h.refused
    );
    assert_eq!(whys.len(), 2, "{whys:?}");
    assert!(
        whys.contains(&Why::Shutdown),
        "the heavy one is cut at the deadline: {whys:?}"
    );
    assert_eq!(el.stats().connects_started, 3);
    eprintln!(
        "reconnecting client: shutdown ended after {took:?}, closes {whys:?}, redials refused {:?}",
        h.refused
    );
    drop(peers);
    drop(remote);
    base.check(el, 0);
}
