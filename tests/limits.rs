//! Issue 4: backpressure (watermarks, `on_drain`, pause/resume, automatic read pause), the
//! output cap, per-connection output limits, and the connection limit. Each test runs a
//! real loop on a thread and talks to it over loopback; handlers report through channels.

mod support;

use evloop::{CloseReason, Config, ConnId, Context, EventLoop, Handler, SendError};
use socket2::SockRef;
use std::io::{ErrorKind, Read, Write};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Sender, TryRecvError, channel};
use std::time::Duration;
use support::*;

fn start<H: Handler + Send + 'static>(h: H, config: Config) -> (Running<H>, SocketAddr)
where
    H::Conn: Send,
{
    let mut el = EventLoop::with_config(h, config).unwrap();
    let l = el.listen(localhost()).unwrap();
    let addr = el.context().listener_addr(l).unwrap().as_inet().unwrap();
    (spawn(el), addr)
}

fn reason_name(reason: &CloseReason) -> &'static str {
    match reason {
        CloseReason::PeerClosed => "peer_closed",
        CloseReason::Local => "local",
        CloseReason::Aborted => "aborted",
        CloseReason::Error(_) => "error",
        CloseReason::IdleTimeout => "idle_timeout",
        CloseReason::OutputLimit => "output_limit",
        CloseReason::InputLimit => "input_limit",
        CloseReason::ConnectFailed(_) => "connect_failed",
        CloseReason::ConnectTimeout => "connect_timeout",
        CloseReason::Shutdown => "shutdown",
        CloseReason::Panicked => "panicked",
        _ => "other",
    }
}

// ---- 1a. A producer that streams while not congested and resumes in on_drain ----

/// Streams `data` to every connection the way a file server does: send chunks while the
/// connection is not congested, stop, and go on in `on_drain`; close when all is sent.
struct Producer {
    data: Vec<u8>,
    chunk: usize,
    /// Per-connection `(high, low, max)` set in `on_open`, if any.
    limits: Option<(usize, usize, usize)>,
    sent: usize,
    max_queued: usize,
    drains: usize,
    /// The largest queue seen when `on_drain` ran.
    max_queued_at_drain: usize,
    tx: Sender<&'static str>,
}

impl Producer {
    fn pump(&mut self, cx: &mut Context<'_, Self>, conn: ConnId) {
        while self.sent < self.data.len() && !cx.is_congested(conn) {
            let end = (self.sent + self.chunk).min(self.data.len());
            cx.send(conn, &self.data[self.sent..end])
                .expect("send refused");
            self.sent = end;
            self.max_queued = self.max_queued.max(cx.queued(conn).unwrap());
        }
        if self.sent == self.data.len() {
            cx.close(conn);
        }
    }
}

impl Handler for Producer {
    type Conn = ();
    fn on_open(&mut self, cx: &mut Context<'_, Self>, conn: ConnId, _: &mut ()) {
        // A small kernel buffer, so that our own queue does the buffering.
        cx.set_send_buffer_size(conn, 16 * 1024).unwrap();
        if let Some((high, low, max)) = self.limits {
            assert!(cx.set_output_limits(conn, high, low, max));
        }
        self.pump(cx, conn);
    }
    fn on_drain(&mut self, cx: &mut Context<'_, Self>, conn: ConnId, _: &mut ()) {
        self.drains += 1;
        self.max_queued_at_drain = self.max_queued_at_drain.max(cx.queued(conn).unwrap());
        assert!(!cx.is_congested(conn), "on_drain while still congested");
        self.pump(cx, conn);
    }
    fn on_close(
        &mut self,
        _cx: &mut Context<'_, Self>,
        _conn: ConnId,
        _: (),
        reason: &CloseReason,
    ) {
        let _ = self.tx.send(reason_name(reason));
    }
}

/// Runs the producer against a client that reads in small pieces; checks the bytes and
/// returns what the producer saw.
fn stream_to_slow_client(config: Config, limits: Option<(usize, usize, usize)>) -> Seen {
    let (tx, rx) = channel();
    let data = random_bytes(4 << 20, 41);
    let producer = Producer {
        data: data.clone(),
        chunk: 8 * 1024,
        limits,
        sent: 0,
        max_queued: 0,
        drains: 0,
        max_queued_at_drain: 0,
        tx,
    };
    let (server, addr) = start(producer, config);
    let mut c = client(addr);
    let mut got = Vec::with_capacity(data.len());
    let mut piece = [0u8; 1024];
    loop {
        let n = c.read(&mut piece).expect("read");
        if n == 0 {
            break;
        }
        got.extend_from_slice(&piece[..n]);
    }
    assert_eq!(recv(&rx), "local", "closed after flushing everything");
    if got != data {
        let first = got.iter().zip(&data).position(|(a, b)| a != b);
        panic!(
            "stream corrupted: got {} of {} bytes, first difference at {first:?}",
            got.len(),
            data.len()
        );
    }
    let el = server.stop();
    assert_eq!(el.stats().closed.local, 1);
    let p = el.handler();
    Seen {
        chunk: p.chunk,
        max_queued: p.max_queued,
        drains: p.drains,
        max_queued_at_drain: p.max_queued_at_drain,
    }
}

struct Seen {
    chunk: usize,
    max_queued: usize,
    drains: usize,
    max_queued_at_drain: usize,
}

#[test]
fn producer_paced_by_on_drain_streams_intact_with_bounded_queue() {
    let config = Config::default();
    let (high, low) = (config.high_watermark, config.low_watermark);
    let p = stream_to_slow_client(config, None);
    assert!(
        p.max_queued > high,
        "the queue never went above the high watermark ({} <= {high}): nothing was tested",
        p.max_queued
    );
    assert!(
        p.max_queued <= high + p.chunk,
        "queue reached {} > high {high} + one chunk {}",
        p.max_queued,
        p.chunk
    );
    assert!(p.drains > 0, "on_drain never ran");
    assert!(
        p.max_queued_at_drain <= low,
        "on_drain ran with {} queued, above the low watermark {low}",
        p.max_queued_at_drain
    );
}

#[test]
fn per_connection_watermarks_override_the_config() {
    // The config's marks are far above what this connection is allowed.
    let mut config = Config::default();
    config.high_watermark = 1 << 20;
    config.low_watermark = 512 * 1024;
    let (high, low) = (16 * 1024, 4 * 1024);
    let p = stream_to_slow_client(config, Some((high, low, 8 << 20)));
    assert!(
        p.max_queued > high,
        "never congested at the per-connection mark"
    );
    assert!(
        p.max_queued <= high + p.chunk,
        "queue reached {}",
        p.max_queued
    );
    assert!(p.drains > 0);
    assert!(
        p.max_queued_at_drain <= low,
        "on_drain at {}",
        p.max_queued_at_drain
    );
}

// ---- 1b. pause_read / resume_read ----

#[derive(Debug)]
enum PauseEv {
    Open(ConnId),
    Data(Vec<u8>),
    /// Bytes waiting in the server's receive queue (MSG_PEEK).
    Peeked(usize),
    Barrier,
    Close,
}

struct PauseRec {
    tx: Sender<PauseEv>,
}

impl Handler for PauseRec {
    type Conn = ();
    fn on_open(&mut self, _cx: &mut Context<'_, Self>, conn: ConnId, _: &mut ()) {
        let _ = self.tx.send(PauseEv::Open(conn));
    }
    fn on_data(
        &mut self,
        _cx: &mut Context<'_, Self>,
        _conn: ConnId,
        _: &mut (),
        data: &[u8],
    ) -> usize {
        let _ = self.tx.send(PauseEv::Data(data.to_vec()));
        data.len()
    }
    fn on_close(
        &mut self,
        _cx: &mut Context<'_, Self>,
        _conn: ConnId,
        _: (),
        _reason: &CloseReason,
    ) {
        let _ = self.tx.send(PauseEv::Close);
    }
}

#[test]
fn pause_read_holds_data_back_and_resume_delivers_it() {
    let (tx, rx) = channel();
    let (server, addr) = start(PauseRec { tx }, Config::default());
    let mut c = client(addr);
    let PauseEv::Open(id) = recv(&rx) else {
        panic!("expected open")
    };
    server
        .handle
        .post(move |h, cx| {
            cx.pause_read(id);
            let _ = h.tx.send(PauseEv::Barrier);
        })
        .unwrap();
    assert!(matches!(recv(&rx), PauseEv::Barrier));

    let msg = random_bytes(3000, 7);
    c.write_all(&msg[..1000]).unwrap();
    c.write_all(&msg[1000..]).unwrap();
    // Wait (through the loop, no sleeping) until the bytes sit in the server's receive
    // queue: from then on, any tick that polls has seen the readable edge.
    loop {
        server
            .handle
            .post(move |h, cx| {
                let mut buf = [MaybeUninit::<u8>::uninit(); 8192];
                let n = cx.socket(id).unwrap().peek(&mut buf).unwrap_or(0);
                let _ = h.tx.send(PauseEv::Peeked(n));
            })
            .unwrap();
        match recv(&rx) {
            PauseEv::Peeked(n) if n == msg.len() => break,
            PauseEv::Peeked(_) => {}
            other => panic!("{other:?} while paused"),
        }
    }
    // A task posted now runs after a poll that reported the edge: an unpaused connection
    // would have had its on_data by then.
    server
        .handle
        .post(|h, _| {
            let _ = h.tx.send(PauseEv::Barrier);
        })
        .unwrap();
    match recv(&rx) {
        PauseEv::Barrier => {}
        other => panic!("{other:?} while paused"),
    }

    server.handle.post(move |_, cx| cx.resume_read(id)).unwrap();
    let mut got = Vec::new();
    while got.len() < msg.len() {
        match recv(&rx) {
            PauseEv::Data(d) => got.extend_from_slice(&d),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        got, msg,
        "bytes sent while paused arrive intact after resume"
    );

    // Reading goes on normally afterwards.
    c.write_all(b"after").unwrap();
    match recv(&rx) {
        PauseEv::Data(d) => assert_eq!(d, b"after"),
        other => panic!("unexpected {other:?}"),
    }
    let el = server.stop();
    assert_eq!(el.stats().bytes_in, msg.len() as u64 + 5);
}

// ---- 1c. Automatic read pause when congested ----

/// Echo that records the largest queue it ever had, and whether congestion was reached.
struct MeasuredEcho {
    max_queued: Arc<AtomicUsize>,
    congested: Arc<AtomicBool>,
    tx: Sender<ConnId>,
}

impl Handler for MeasuredEcho {
    type Conn = ();
    fn on_open(&mut self, cx: &mut Context<'_, Self>, conn: ConnId, _: &mut ()) {
        cx.set_recv_buffer_size(conn, 64 * 1024).unwrap();
        cx.set_send_buffer_size(conn, 64 * 1024).unwrap();
        let _ = self.tx.send(conn);
    }
    fn on_data(
        &mut self,
        cx: &mut Context<'_, Self>,
        conn: ConnId,
        _: &mut (),
        data: &[u8],
    ) -> usize {
        cx.send(conn, data).unwrap();
        let q = cx.queued(conn).unwrap();
        self.max_queued.fetch_max(q, Ordering::SeqCst);
        if cx.is_congested(conn) {
            self.congested.store(true, Ordering::SeqCst);
        }
        data.len()
    }
    fn on_close(
        &mut self,
        _cx: &mut Context<'_, Self>,
        conn: ConnId,
        _: (),
        _reason: &CloseReason,
    ) {
        let _ = self.tx.send(conn);
    }
}

#[test]
fn congestion_pauses_reading_so_a_client_that_never_reads_is_blocked() {
    let mut config = Config::default();
    config.read_buffer_size = 16 * 1024;
    // Reading stops once the queue passes `high`; before that read the queue was at most
    // `high`, and one read hands over at most `read_buffer_size` bytes to echo.
    let bound = config.high_watermark + config.read_buffer_size;
    let max_queued = Arc::new(AtomicUsize::new(0));
    let congested = Arc::new(AtomicBool::new(false));
    let (tx, rx) = channel();
    let h = MeasuredEcho {
        max_queued: max_queued.clone(),
        congested: congested.clone(),
        tx,
    };
    let (server, addr) = start(h, config);
    let mut c = client(addr);
    let id = recv(&rx);
    let sock = SockRef::from(&c);
    sock.set_send_buffer_size(64 * 1024).unwrap();
    sock.set_recv_buffer_size(64 * 1024).unwrap();
    let kernel = sock.send_buffer_size().unwrap() + sock.recv_buffer_size().unwrap();

    // Write without reading until a write blocks for 300 ms after the server said it was
    // congested: that is backpressure reaching the client.
    let cap = 16 << 20;
    let data = random_bytes(cap, 99);
    c.set_write_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut written = 0;
    loop {
        assert!(written < cap, "wrote {cap} bytes without ever blocking");
        match c.write(&data[written..(written + 64 * 1024).min(cap)]) {
            Ok(n) => written += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if congested.load(Ordering::SeqCst) {
                    break;
                }
            }
            Err(e) => panic!("write: {e}"),
        }
    }
    let peak = max_queued.load(Ordering::SeqCst);
    assert!(peak <= bound, "server queue reached {peak} > {bound}");
    // What the client got rid of fits in the server's bounded queue plus four kernel
    // buffers (client send, server receive, server send, client receive), each at most
    // twice what the server and client asked for; reading everything would have taken
    // the whole 16 MiB.
    let limit = bound + 2 * kernel + 64 * 1024;
    assert!(written <= limit, "client wrote {written} > {limit} bytes");

    // Nothing was closed, and everything comes back once the client reads.
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    let mut back = vec![0; written];
    c.read_exact(&mut back).expect("echo of everything written");
    assert!(back == data[..written], "echo corrupted");
    c.write_all(b"still open").unwrap();
    let mut tail = [0; 10];
    c.read_exact(&mut tail).unwrap();
    assert_eq!(&tail, b"still open");
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    let el = server.stop();
    assert_eq!(el.stats().connections_open, 1, "{id} still open");
    assert_eq!(el.stats().closed.total(), 0);
}

// ---- 1d. The hard output cap ----

#[derive(Debug)]
enum FloodEv {
    /// (max queued seen, queued before the refused send, why it was refused, open after it,
    /// sends accepted)
    Flooded(usize, usize, SendError, bool, usize),
    Closed(&'static str),
}

/// Sends 64 KiB chunks, ignoring congestion, until `send` refuses.
struct Flood {
    limits: Option<(usize, usize, usize)>,
    tx: Sender<FloodEv>,
}

const FLOOD_CHUNK: usize = 64 * 1024;

impl Handler for Flood {
    type Conn = ();
    fn on_open(&mut self, cx: &mut Context<'_, Self>, conn: ConnId, _: &mut ()) {
        cx.set_send_buffer_size(conn, 32 * 1024).unwrap();
        if let Some((high, low, max)) = self.limits {
            assert!(cx.set_output_limits(conn, high, low, max));
        }
        let chunk = vec![b'x'; FLOOD_CHUNK];
        let (mut max_queued, mut sends) = (0, 0);
        loop {
            let before = cx.queued(conn).unwrap();
            if let Err(why) = cx.send(conn, &chunk) {
                let open = cx.is_open(conn);
                let _ = self
                    .tx
                    .send(FloodEv::Flooded(max_queued, before, why, open, sends));
                return;
            }
            sends += 1;
            assert!(sends < 100_000, "send never refused");
            max_queued = max_queued.max(cx.queued(conn).unwrap());
        }
    }
    fn on_close(
        &mut self,
        _cx: &mut Context<'_, Self>,
        _conn: ConnId,
        _: (),
        reason: &CloseReason,
    ) {
        let _ = self.tx.send(FloodEv::Closed(reason_name(reason)));
    }
}

fn flood(config: Config, limits: Option<(usize, usize, usize)>, cap: usize) {
    let (tx, rx) = channel();
    let (server, addr) = start(Flood { limits, tx }, config);
    let mut c = client(addr);
    let FloodEv::Flooded(max_queued, before, why, open, sends) = recv(&rx) else {
        panic!("expected the flood report")
    };
    assert!(sends > 0);
    assert_eq!(why, SendError::OutputLimit, "refused for the cap");
    assert!(max_queued <= cap, "queue grew to {max_queued} > cap {cap}");
    assert!(
        before + FLOOD_CHUNK > cap,
        "send refused at {before} queued, though {FLOOD_CHUNK} more fit under {cap}"
    );
    assert!(!open, "still open after passing the cap");
    assert!(matches!(recv(&rx), FloodEv::Closed("output_limit")));
    // The client sees the connection reset, not a clean EOF: what it got was cut off.
    let mut got = Vec::new();
    let end = c.read_to_end(&mut got);
    assert_eq!(
        end.expect_err("a clean EOF after a cut-off stream").kind(),
        std::io::ErrorKind::ConnectionReset
    );
    assert!(got.iter().all(|&b| b == b'x'));
    let el = server.stop();
    assert_eq!(el.stats().closed.output_limit, 1);
    assert_eq!(el.stats().connections_open, 0);
}

#[test]
fn max_output_closes_with_output_limit_and_queue_never_passes_it() {
    let mut config = Config::default();
    config.max_output = 1 << 20;
    flood(config, None, 1 << 20);
}

#[test]
fn per_connection_max_output_overrides_the_config() {
    let config = Config::default(); // 64 MiB
    flood(config, Some((8 * 1024, 2 * 1024, 256 * 1024)), 256 * 1024);
}

// ---- 1e. close() twice while the queue is flushing ----

/// Queues a large reply, then closes twice (as a producer does that calls `close` both when
/// it finishes and again from a late `on_drain`).
struct DoubleClose {
    reply: Vec<u8>,
    tx: Sender<usize>,
}

impl Handler for DoubleClose {
    type Conn = ();
    fn on_open(&mut self, cx: &mut Context<'_, Self>, conn: ConnId, _: &mut ()) {
        cx.set_send_buffer_size(conn, 16 * 1024).unwrap();
        cx.send(conn, &self.reply).unwrap();
        cx.close(conn);
        let queued = cx.queued(conn).unwrap_or(0);
        cx.close(conn);
        let _ = self.tx.send(queued);
    }
}

#[test]
fn closing_twice_still_flushes_everything_queued() {
    let (tx, rx) = channel();
    let reply = random_bytes(2 << 20, 5);
    let h = DoubleClose {
        reply: reply.clone(),
        tx,
    };
    let (server, addr) = start(h, Config::default());
    let mut c = client(addr);
    let queued = recv(&rx);
    assert!(queued > 0, "the kernel took all of it: nothing was tested");
    let got = read_to_end(&mut c).expect("read to EOF");
    assert_eq!(got.len(), reply.len());
    assert!(got == reply);
    let el = server.stop();
    assert_eq!(el.stats().closed.local, 1);
    assert_eq!(el.stats().bytes_out, reply.len() as u64);
}

// ---- 2. The connection limit ----

#[derive(Debug)]
enum Ev {
    Open(ConnId),
    Close(ConnId),
}

struct Echo {
    tx: Sender<Ev>,
}

impl Handler for Echo {
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
    fn on_close(
        &mut self,
        _cx: &mut Context<'_, Self>,
        conn: ConnId,
        _: (),
        _reason: &CloseReason,
    ) {
        let _ = self.tx.send(Ev::Close(conn));
    }
}

fn opened(rx: &std::sync::mpsc::Receiver<Ev>) -> ConnId {
    match recv(rx) {
        Ev::Open(id) => id,
        other => panic!("expected an open, got {other:?}"),
    }
}

#[test]
fn max_connections_refuses_with_reply_counts_and_recovers() {
    let mut config = Config::default();
    config.max_connections = 2;
    config.refusal_reply = Some(b"BUSY\n".to_vec());
    let (tx, rx) = channel();
    let (server, addr) = start(Echo { tx }, config);

    let mut a = client(addr);
    let ida = opened(&rx);
    assert_eq!(round_trip(&mut a, b"a"), b"a");
    let mut b = client(addr);
    let _idb = opened(&rx);
    assert_eq!(round_trip(&mut b, b"b"), b"b");

    // Over the limit: accepted, told, closed. One of them has already sent a request.
    let mut quiet = client(addr);
    assert_eq!(read_to_end(&mut quiet).unwrap(), b"BUSY\n");
    // Hold the loop while the eager one connects and writes, so its request is already
    // waiting when it is refused: closing over unread input must not turn into a reset
    // that destroys the reply.
    let (gate_tx, gate_rx) = channel::<()>();
    let (held_tx, held_rx) = channel::<()>();
    server
        .handle
        .post(move |_, _| {
            held_tx.send(()).unwrap();
            let _ = gate_rx.recv_timeout(DEADLINE);
        })
        .unwrap();
    recv(&held_rx);
    let mut eager = client(addr);
    eager.write_all(b"hello?").unwrap();
    gate_tx.send(()).unwrap();
    assert_eq!(read_to_end(&mut eager).unwrap(), b"BUSY\n");

    // The ones already open are not affected.
    assert_eq!(round_trip(&mut a, b"still here"), b"still here");
    assert_eq!(round_trip(&mut b, b"me too"), b"me too");
    assert!(
        matches!(rx.try_recv(), Err(TryRecvError::Empty)),
        "no open for refused ones"
    );

    // Once one closes, a new one is served.
    drop(a);
    match recv(&rx) {
        Ev::Close(id) => assert_eq!(id, ida),
        other => panic!("expected a's close, got {other:?}"),
    }
    let mut c = client(addr);
    opened(&rx);
    assert_eq!(round_trip(&mut c, b"c"), b"c");

    let el = server.stop();
    let s = el.stats();
    assert_eq!(s.refused, 2);
    assert_eq!(s.accepted, 3);
    assert_eq!(s.connections_open, 2);
    assert_eq!(s.closed.total(), 1);
}

/// A refused client on a Unix listener gets the reply too (same path as TCP).
#[test]
fn max_connections_applies_to_unix_listeners() {
    let dir = std::env::temp_dir().join(format!("evloop-limits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("s.sock");
    let mut config = Config::default();
    config.max_connections = 1;
    config.refusal_reply = Some(b"FULL\n".to_vec());
    let (tx, rx) = channel();
    let mut el = EventLoop::with_config(Echo { tx }, config).unwrap();
    el.listen_unix(&path).unwrap();
    let server = spawn(el);
    let mut a = std::os::unix::net::UnixStream::connect(&path).unwrap();
    a.set_read_timeout(Some(DEADLINE)).unwrap();
    opened(&rx);
    let mut b = std::os::unix::net::UnixStream::connect(&path).unwrap();
    b.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut got = Vec::new();
    b.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"FULL\n");
    a.write_all(b"x").unwrap();
    let mut one = [0];
    a.read_exact(&mut one).unwrap();
    assert_eq!(&one, b"x");
    let el = server.stop();
    assert_eq!(el.stats().refused, 1);
    drop(el);
    let _ = std::fs::remove_dir_all(&dir);
}
