//! Issue 7, item 11: seeded property tests (an inline PRNG, no crates) of the output queue
//! and the close path.
//!
//! (a) `OutBuf::flush_with` against a scripted fake socket that, call by call, takes all,
//!     takes a random part (across chunk boundaries too), would block, is interrupted,
//!     takes nothing (`Ok(0)`), or resets, interleaved with random pushes: what the fake peer
//!     receives is always an in-order prefix of what was pushed, the queue holds exactly the
//!     rest, the return values say what happened, and a reset ends the flush at once (no
//!     call after it); after it the connection is dead and nothing more is written.
//! (b) Real loops over loopback TCP or Unix stream sockets, driven tick by tick from the
//!     test thread, with random handler actions (send random sizes, close, abort,
//!     shutdown_write) and random peer behaviour (read some, stop reading, write, close,
//!     reset, half-close): `on_close` runs exactly once per connection; what each peer
//!     received is an in-order prefix of what the handler's accepted sends carried (all of
//!     it when the connection closed cleanly and the peer read to EOF), what the handler
//!     received is a prefix of what the peer wrote; nothing is left in the slab or open.
//!
//! A failing case prints its seed; `EVLOOP_PROPERTY_SEED=N` replays just that case. The
//! long variants (`#[ignore]`, run by scripts/slow-tests.sh) run many more cases.

mod support;

use evloop::internals::{Flush, OutBuf};
use evloop::{CloseReason, Config, ConnId, Context, EventLoop, Handler, SendError};
use std::collections::HashMap;
use std::io::{self, ErrorKind, IoSlice, Read, Write};
use std::time::{Duration, Instant};
use support::*;

/// splitmix64: small, seedable, good enough to pick test actions.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// True with probability `pct`%.
    fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }

    /// A size: mostly small, sometimes large.
    fn size(&mut self, small: u64, large: u64) -> usize {
        let top = if self.chance(15) { large } else { small };
        1 + self.below(top) as usize
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        random_bytes(n, self.next())
    }
}

/// The seeds to run: `EVLOOP_PROPERTY_SEED` alone if set, else `base..base + count`.
fn seeds(base: u64, count: u64) -> Vec<u64> {
    match std::env::var("EVLOOP_PROPERTY_SEED") {
        Ok(s) => vec![s.parse().expect("EVLOOP_PROPERTY_SEED: a number")],
        Err(_) => (base..base + count).collect(),
    }
}

/// Runs `case(seed)` for each seed; a failure names its seed.
fn for_each_seed(base: u64, count: u64, mut case: impl FnMut(u64)) {
    for seed in seeds(base, count) {
        // The panic is re-raised at once: nothing observes state it left half-updated.
        let run = std::panic::AssertUnwindSafe(|| case(seed));
        if let Err(e) = std::panic::catch_unwind(run) {
            eprintln!("property case failed: replay with EVLOOP_PROPERTY_SEED={seed}");
            std::panic::resume_unwind(e);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// (a) OutBuf against a scripted writer.

/// A fake socket whose every write call does what the script (the PRNG) says.
struct FakeSocket {
    rng: Rng,
    received: Vec<u8>,
    /// The writer has reset: every later call is a violation.
    reset: bool,
    calls_after_reset: usize,
    /// What the last call did, for the checks after `flush_with` returns.
    last: Option<Outcome>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Outcome {
    Took(usize),
    WouldBlock,
    Interrupted,
    Zero,
    Reset,
}

impl FakeSocket {
    fn write(&mut self, slices: &[IoSlice<'_>]) -> io::Result<usize> {
        if self.reset {
            self.calls_after_reset += 1;
            return Err(ErrorKind::BrokenPipe.into());
        }
        // One vectored write offers at most 16 chunks (OutBuf's MAX_SLICES).
        assert!(
            !slices.is_empty() && slices.len() <= 16,
            "{} slices",
            slices.len()
        );
        assert!(
            slices.iter().all(|s| !s.is_empty()),
            "an empty slice was offered"
        );
        let offered: usize = slices.iter().map(|s| s.len()).sum();
        let roll = self.rng.below(100);
        let outcome = match roll {
            0..=29 => Outcome::Took(offered),
            30..=59 => Outcome::Took(1 + self.rng.below(offered as u64) as usize),
            60..=79 => Outcome::WouldBlock,
            80..=91 => Outcome::Interrupted,
            92..=94 => Outcome::Zero,
            _ => Outcome::Reset,
        };
        self.last = Some(outcome);
        match outcome {
            Outcome::Took(mut n) => {
                let took = n;
                for s in slices {
                    let k = n.min(s.len());
                    self.received.extend_from_slice(&s[..k]);
                    n -= k;
                }
                Ok(took)
            }
            Outcome::WouldBlock => Err(ErrorKind::WouldBlock.into()),
            Outcome::Interrupted => Err(ErrorKind::Interrupted.into()),
            Outcome::Zero => Ok(0),
            Outcome::Reset => {
                self.reset = true;
                Err(ErrorKind::ConnectionReset.into())
            }
        }
    }
}

fn outbuf_case(seed: u64) {
    let mut rng = Rng(seed);
    let mut sock = FakeSocket {
        rng: Rng(seed ^ 0xABCD),
        received: Vec::new(),
        reset: false,
        calls_after_reset: 0,
        last: None,
    };
    let mut out = OutBuf::new();
    let mut pushed: Vec<u8> = Vec::new();
    // The connection as the loop keeps it: dead after an error (queue dropped, no writes).
    let mut dead = false;
    for step in 0..300 {
        let ctx = || format!("seed {seed} step {step}");
        if rng.chance(55) {
            // A push (possibly empty); a dead connection takes none.
            let n = if rng.chance(5) { 0 } else { rng.size(64, 9000) };
            if !dead {
                let data = rng.bytes(n);
                out.push(&data);
                pushed.extend_from_slice(&data);
            }
        } else if !dead {
            let before = sock.received.len();
            let queued = out.len();
            sock.last = None;
            let (written, result) = out.flush_with(|s| sock.write(s));
            let got = sock.received.len() - before;
            assert_eq!(written, got, "{}: written", ctx());
            assert!(written <= queued, "{}", ctx());
            assert_eq!(out.len(), queued - written, "{}: queue length", ctx());
            match result {
                Ok(Flush::Done) => {
                    assert!(out.is_empty(), "{}", ctx());
                    assert_eq!(out.capacity(), 0, "{}: an emptied queue frees", ctx());
                }
                Ok(Flush::Blocked) => {
                    assert!(!out.is_empty(), "{}: blocked with nothing queued", ctx());
                    assert_eq!(sock.last, Some(Outcome::WouldBlock), "{}", ctx());
                }
                Ok(Flush::Yielded) => panic!("{}: yielded without file regions", ctx()),
                Err(e) => {
                    assert!(!out.is_empty(), "{}: error with nothing queued", ctx());
                    match sock.last {
                        Some(Outcome::Reset) => assert_eq!(e.kind(), ErrorKind::ConnectionReset),
                        Some(Outcome::Zero) => assert_eq!(e.kind(), ErrorKind::WriteZero),
                        other => panic!("{}: error {e} after {other:?}", ctx()),
                    }
                    // The loop kills the connection: the queue goes, nothing more is written.
                    out.clear();
                    dead = true;
                }
            }
            if queued == 0 {
                assert_eq!(sock.last, None, "{}: wrote with nothing queued", ctx());
            }
        }
        assert_eq!(
            sock.calls_after_reset,
            0,
            "{}: written after the reset",
            ctx()
        );
        let r = &sock.received;
        assert!(
            r[..] == pushed[..r.len()],
            "{}: not an in-order prefix",
            ctx()
        );
        if !dead {
            assert_eq!(r.len() + out.len(), pushed.len(), "{}: bytes lost", ctx());
        }
    }
}

#[test]
fn outbuf_flush_against_a_scripted_socket() {
    for_each_seed(1, 2000, outbuf_case);
}

#[test]
#[ignore = "slow: run by scripts/slow-tests.sh"]
fn outbuf_flush_against_a_scripted_socket_long() {
    for_each_seed(1_000_000, 200_000, outbuf_case);
}

// ---------------------------------------------------------------------------------------------
// (b) The close path on real sockets.

/// Records everything, per connection; the default EOF behaviour (close after flushing).
/// What a connection received is its state, handed over to `data` when it closes.
#[derive(Default)]
struct Rec {
    opens: Vec<ConnId>,
    data: HashMap<ConnId, Vec<u8>>,
    closes: HashMap<ConnId, Vec<String>>,
    clean: HashMap<ConnId, bool>,
}

impl Handler for Rec {
    type Conn = Vec<u8>;
    fn on_open(&mut self, _cx: &mut Context<'_, Self>, conn: ConnId, got: &mut Vec<u8>) {
        assert!(got.is_empty(), "{conn} opened with state");
        self.opens.push(conn);
    }
    fn on_data(
        &mut self,
        _cx: &mut Context<'_, Self>,
        _conn: ConnId,
        got: &mut Vec<u8>,
        data: &[u8],
    ) -> usize {
        got.extend_from_slice(data);
        data.len()
    }
    fn on_close(
        &mut self,
        _cx: &mut Context<'_, Self>,
        conn: ConnId,
        got: Vec<u8>,
        reason: &CloseReason,
    ) {
        self.closes
            .entry(conn)
            .or_default()
            .push(reason.to_string());
        self.clean.insert(conn, reason.is_clean());
        // A second on_close would show up in `closes`; the data of the first is kept.
        self.data.entry(conn).or_insert(got);
    }
}

/// A peer socket, TCP or Unix, non-blocking.
enum PeerSock {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl PeerSock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            PeerSock::Tcp(s) => s.read(buf),
            PeerSock::Unix(s) => s.read(buf),
        }
    }
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            PeerSock::Tcp(s) => s.write(buf),
            PeerSock::Unix(s) => s.write(buf),
        }
    }
    fn shutdown_write(&self) {
        let _ = match self {
            PeerSock::Tcp(s) => s.shutdown(std::net::Shutdown::Write),
            PeerSock::Unix(s) => s.shutdown(std::net::Shutdown::Write),
        };
    }
    /// RST for TCP (SO_LINGER 0); a Unix socket can only close.
    fn reset(self) {
        if let PeerSock::Tcp(s) = &self {
            let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
        }
    }
}

/// One connection as the driver sees both of its ends.
struct Pair {
    id: ConnId,
    peer: Option<PeerSock>,
    /// Bytes the handler's accepted sends carried.
    sent: Vec<u8>,
    received: Vec<u8>,
    /// Bytes the peer's writes got into its kernel.
    peer_sent: Vec<u8>,
    reading: bool,
    peer_shut_write: bool,
    /// The peer read EOF (Ok(0)), or an error.
    peer_eof: bool,
    peer_error: Option<ErrorKind>,
    /// The handler called close, abort or shutdown_write.
    handler_done: bool,
    /// The peer wrote after that (see the note in `close_path_case`).
    wrote_after_done: bool,
}

impl Pair {
    /// Reads up to `limit` bytes without blocking; notes EOF and errors.
    fn read_some(&mut self, limit: usize) {
        let Some(p) = &mut self.peer else { return };
        if self.peer_eof || self.peer_error.is_some() {
            return;
        }
        let mut buf = vec![0; 64 * 1024];
        let mut left = limit;
        while left > 0 {
            let n = left.min(buf.len());
            match p.read(&mut buf[..n]) {
                Ok(0) => {
                    self.peer_eof = true;
                    return;
                }
                Ok(k) => {
                    self.received.extend_from_slice(&buf[..k]);
                    left -= k;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    self.peer_error = Some(e.kind());
                    return;
                }
            }
        }
    }

    fn write_some(&mut self, data: &[u8]) {
        let Some(p) = &mut self.peer else { return };
        if self.peer_shut_write {
            return;
        }
        match p.write(data) {
            Ok(n) => {
                self.peer_sent.extend_from_slice(&data[..n]);
                self.wrote_after_done |= self.handler_done && n > 0;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => {} // reset or broken pipe: the connection is going away
        }
    }
}

/// What one case did, for the summary.
#[derive(Default, Debug)]
struct Tally {
    conns: usize,
    /// Connections whose peer must have received everything (clean close, read to EOF).
    complete: usize,
    /// Of those, how many had the peer write after the handler's close was done.
    late_writes: usize,
    bytes: usize,
    reasons: std::collections::BTreeMap<String, usize>,
}

fn close_path_case(seed: u64, dir: &std::path::Path, tally: &mut Tally) {
    let mut rng = Rng(seed);
    let unix = rng.chance(40);
    let mut config = Config::default();
    if rng.chance(50) {
        config.high_watermark = 1024 + rng.below(8192) as usize;
        config.low_watermark = config.high_watermark / 4;
    }
    if rng.chance(30) {
        config.read_buffer_size = 256 + rng.below(4096) as usize;
        config.read_budget = config.read_buffer_size * (1 + rng.below(4) as usize);
    }
    config.pause_read_when_congested = rng.chance(80);
    let mut el = EventLoop::with_config(Rec::default(), config).unwrap();
    let path = dir.join(format!("case-{seed}"));
    let tcp_addr = if unix {
        el.listen_unix(&path).unwrap();
        None
    } else {
        let l = el.listen(localhost()).unwrap();
        Some(el.context().listener_addr(l).unwrap().as_inet().unwrap())
    };
    let end = Instant::now() + Duration::from_secs(10);
    let tick = |el: &mut EventLoop<Rec>| el.run_once(Some(Duration::ZERO)).unwrap();

    // Connect 1 to 3 peers, one at a time, so that the i-th open is the i-th peer.
    let mut pairs: Vec<Pair> = Vec::new();
    for i in 0..1 + rng.below(3) as usize {
        let peer = match tcp_addr {
            Some(addr) => {
                // A small receive buffer is set before connecting: shrunk afterwards, below
                // the window already advertised, the kernel drops data and the sender waits
                // for retransmission timeouts (seconds).
                let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                    .unwrap();
                if rng.chance(50) {
                    s.set_recv_buffer_size(4096 + rng.below(65536) as usize)
                        .unwrap();
                }
                s.connect(&addr.into()).unwrap();
                let s: std::net::TcpStream = s.into();
                s.set_nonblocking(true).unwrap();
                PeerSock::Tcp(s)
            }
            None => {
                let s = std::os::unix::net::UnixStream::connect(&path).unwrap();
                s.set_nonblocking(true).unwrap();
                PeerSock::Unix(s)
            }
        };
        while el.handler().opens.len() <= i {
            assert!(
                Instant::now() < end,
                "seed {seed}: connection {i} never opened"
            );
            el.run_once(Some(Duration::from_millis(5))).unwrap();
        }
        let id = el.handler().opens[i];
        if rng.chance(50) {
            el.context()
                .set_send_buffer_size(id, 4096 + rng.below(32768) as usize)
                .unwrap();
        }
        pairs.push(Pair {
            id,
            peer: Some(peer),
            sent: Vec::new(),
            received: Vec::new(),
            peer_sent: Vec::new(),
            reading: true,
            peer_shut_write: false,
            peer_eof: false,
            peer_error: None,
            handler_done: false,
            wrote_after_done: false,
        });
    }

    // Random actions.
    let trace = std::env::var("EVLOOP_PROPERTY_SEED").is_ok();
    let steps = 10 + rng.below(50);
    for _ in 0..steps {
        let k = rng.below(pairs.len() as u64) as usize;
        let p = &mut pairs[k];
        let id = p.id;
        let action = rng.below(100);
        if trace {
            let q = el.context().queued(id);
            eprintln!(
                "step: conn {k} action {action} (queued {q:?}, sent {}, received {}, reading {})",
                p.sent.len(),
                p.received.len(),
                p.reading
            );
        }
        match action {
            0..=29 => {
                let data = {
                    let n = rng.size(16 * 1024, 512 * 1024);
                    rng.bytes(n)
                };
                match el.context().send(id, &data) {
                    Ok(()) => {
                        assert!(!p.handler_done, "seed {seed}: send accepted after close");
                        p.sent.extend_from_slice(&data);
                    }
                    // Refused: the connection is closed (by anyone), closing (the handler's
                    // close, or the default on_peer_eof after the peer's FIN), or its write
                    // side shut by the handler; never the 64 MiB output limit.
                    Err(e) => {
                        let peer_fin = p.peer_shut_write || p.peer.is_none();
                        let why = match e {
                            SendError::Closed => true,
                            SendError::Closing => p.handler_done || peer_fin,
                            SendError::WriteShut => p.handler_done,
                            _ => false,
                        };
                        assert!(why, "seed {seed}: refused with {e:?}");
                    }
                }
            }
            30..=33 => {
                el.context().close(id);
                p.handler_done = true;
            }
            34..=35 => {
                el.context().abort(id);
                p.handler_done = true;
            }
            36..=38 => {
                el.context().shutdown_write(id);
                p.handler_done = true;
            }
            39..=58 if p.reading => {
                let n = rng.size(8 * 1024, 1 << 20);
                p.read_some(n);
            }
            59..=62 => p.reading = !p.reading,
            63..=72 => {
                let n = rng.size(4 * 1024, 256 * 1024);
                let data = rng.bytes(n);
                p.write_some(&data);
            }
            73..=75 => drop(p.peer.take()),
            76..=77 => {
                if let Some(s) = p.peer.take() {
                    s.reset();
                }
            }
            78..=80 => {
                if let Some(s) = &p.peer {
                    s.shutdown_write();
                    p.peer_shut_write = true;
                }
            }
            _ => {}
        }
        tick(&mut el);
    }

    // Wind down: stalled peers read again or go; the handler ends what it has not ended.
    for p in &mut pairs {
        if p.peer.is_some() && !p.reading {
            if rng.chance(50) {
                p.reading = true;
            } else {
                drop(p.peer.take());
            }
        }
        if el.context().is_open(p.id) {
            if rng.chance(75) {
                el.context().close(p.id);
            } else {
                el.context().abort(p.id);
            }
            p.handler_done = true;
        }
    }
    loop {
        tick(&mut el);
        for p in &mut pairs {
            p.read_some(usize::MAX);
            if p.peer_eof || p.peer_error.is_some() {
                drop(p.peer.take());
            }
        }
        let all_closed = pairs
            .iter()
            .all(|p| el.handler().closes.contains_key(&p.id));
        if all_closed && pairs.iter().all(|p| p.peer.is_none()) {
            break;
        }
        assert!(
            Instant::now() < end,
            "seed {seed}: not wound down: {} closed of {}, {} peers left",
            el.handler().closes.len(),
            pairs.len(),
            pairs.iter().filter(|p| p.peer.is_some()).count()
        );
        el.run_once(Some(Duration::from_millis(1))).unwrap();
    }

    // The properties.
    let h = el.handler();
    if std::env::var("EVLOOP_PROPERTY_SEED").is_ok() {
        eprintln!("seed {seed}: unix {unix}");
        for (i, p) in pairs.iter().enumerate() {
            eprintln!(
                "conn {i}: sent {} received {} eof {} err {:?} peer_sent {} got {} close {:?}",
                p.sent.len(),
                p.received.len(),
                p.peer_eof,
                p.peer_error,
                p.peer_sent.len(),
                h.data.get(&p.id).map_or(0, |d| d.len()),
                h.closes[&p.id]
            );
        }
    }
    assert_eq!(h.opens.len(), pairs.len(), "seed {seed}: opens");
    for (i, p) in pairs.iter().enumerate() {
        let whys = &h.closes[&p.id];
        assert_eq!(whys.len(), 1, "seed {seed} conn {i}: on_close ran {whys:?}");
        let r = &p.received;
        assert!(
            r.len() <= p.sent.len() && r[..] == p.sent[..r.len()],
            "seed {seed} conn {i}: received {} bytes, not a prefix of the {} sent",
            r.len(),
            p.sent.len()
        );
        let got = h.data.get(&p.id).map_or(&[][..], |d| &d[..]);
        assert!(
            got.len() <= p.peer_sent.len() && got[..] == p.peer_sent[..got.len()],
            "seed {seed} conn {i}: the handler got {} bytes, not a prefix of the {} written",
            got.len(),
            p.peer_sent.len()
        );
        tally.conns += 1;
        tally.bytes += p.received.len();
        let reason = whys[0].split(':').next().unwrap().to_string();
        *tally.reasons.entry(reason).or_default() += 1;
        // Everything must have arrived when the connection closed cleanly and the peer read
        // to EOF, even if the peer wrote after the handler's close (the lingering close reads
        // that away instead of answering it with an RST that would drop the reply's tail).
        if h.clean[&p.id] && p.peer_eof {
            tally.complete += 1;
            tally.late_writes += usize::from(p.wrote_after_done);
            assert_eq!(
                r.len(),
                p.sent.len(),
                "seed {seed} conn {i}: closed cleanly ({}) and read to EOF, but short",
                whys[0]
            );
        }
    }
    assert_eq!(el.stats().connections_open, 0, "seed {seed}");
    assert_eq!(el.slab_len(), 1, "seed {seed}: only the listener is left");
    drop(el);
    let _ = std::fs::remove_file(&path);
}

fn close_path_cases(base: u64, count: u64) {
    let _serial = serial();
    let dir = std::env::temp_dir().join(format!("evloop-property-{}-{base}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let fds = settled_fds();
    let started = Instant::now();
    let mut t = Tally::default();
    for_each_seed(base, count, |seed| close_path_case(seed, &dir, &mut t));
    assert_eq!(settled_fds(), fds, "descriptors leaked");
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "close path: {count} cases, {} connections ({} checked complete, {} with late peer \
         writes), {} bytes received, closes {:?}, in {:?}",
        t.conns,
        t.complete,
        t.late_writes,
        t.bytes,
        t.reasons,
        started.elapsed()
    );
}

#[test]
fn close_path_with_random_handler_and_peer_actions() {
    close_path_cases(1, 300);
}

#[test]
#[ignore = "slow: run by scripts/slow-tests.sh"]
fn close_path_with_random_handler_and_peer_actions_long() {
    close_path_cases(1_000_000, 5000);
}
