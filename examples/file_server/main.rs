//! File server: `GET <path>\n` is answered with `OK <size>\n` and exactly that many bytes,
//! or with `ERR <reason>\n`, for regular files under one root directory, however large.
//!
//! ```text
//! cargo run --release --example file_server -- --root /some/dir     # on 127.0.0.1:7003
//! cargo run --release --example file_client -- notes.txt --out /tmp/notes.txt
//! printf 'GET notes.txt\nGET nope\n' | nc -N 127.0.0.1 7003   # two answers, in order
//! ```
//!
//! Options:
//!
//! - `--addr ADDR` (default 127.0.0.1:7003), `--root DIR` (default `.`).
//! - `--copy`: send bodies by reading the file and sending the bytes (the path to compare
//!   against), instead of sendfile(2) (`Context::send_file`, the default).
//! - `--request-timeout SECS` (default 10, fractions allowed): a connection waiting for a
//!   request (from accept, and again once its replies are queued) gets this long to send a
//!   whole request line. A connection that never sent one, or is in the middle of one,
//!   then gets `ERR request timeout` and a reset (which frees its descriptor at once); one
//!   idle between requests is closed quietly with FIN (what the kernel still holds of its
//!   last reply is delivered first). A connection whose reply is still queued in the loop
//!   is not waiting.
//! - `--max-per-ip N` (default 64) connections from one IP address, `--max-conns N`
//!   (default 10,000) in all: past either, a client gets `ERR too many connections` and is
//!   closed.
//! - `--shutdown-deadline SECS` (default 5): on SIGTERM or SIGINT the server stops
//!   accepting and lets every download in flight finish, for this long at most; a download
//!   still unfinished then is reset (RST), never closed with a clean FIN, so no client can
//!   take a cut-off file for a whole one. A second signal cuts off at once.
//! - `--turn-kib N` (default 64): file bytes one connection is sent per turn of the loop
//!   (`Config::send_file_chunk`, and the same on the copy path), so a request is answered
//!   promptly however many downloads run: a turn costs at most N KiB per busy connection.
//! - `--resolve beneath|walk` (default: beneath where the kernel has openat2, else walk):
//!   how paths are confined to the root (see `confine.rs`).
//!
//! Other limits: a request line of at most 4096 bytes (`ERR request too long`); a reader
//! that takes no byte of its queued reply for 60 s is closed (the loop's `send_timeout`).
//!
//! - **Confinement.** Every request is resolved beneath a descriptor of the root, by the
//!   kernel, in the call that opens it: no path is checked and then opened again by name
//!   (which a rename between the two would defeat). A path must be relative without `..`;
//!   symlinks are followed only while they stay beneath the root (with `walk`, not at all);
//!   only regular files are served: a directory, FIFO or device is looked at with `O_PATH`,
//!   never opened.
//! - **Zero copy.** A file body is queued whole with `Context::send_file` and leaves with
//!   sendfile(2), a turn's share at a time. Files under 64 KiB are read and sent from
//!   memory instead: their bytes cost less than a descriptor held per queued reply, and a
//!   client pipelining requests for tiny files without reading could otherwise make the
//!   queue hold thousands of open files. With `--copy`, a file is read 64 KiB at a time into
//!   one shared buffer and sent while the connection is not congested, a turn's share at a
//!   time; `on_drain` or a zero-delay connection timer goes on.
//! - **Order.** Requests are decoded one line at a time from the input the loop keeps
//!   (`on_data` consumes only the lines it answered); while a file streams or replies pile
//!   up, reading is paused (`pause_read`) and the lines already read wait there, presented
//!   again on `resume_read`. Disk reads block the loop: fine from the page cache.
//! - **Shutdown.** SIGTERM/SIGINT are watched by the handler (`watch_signals`), not handed
//!   to the loop's own shutdown at once: downloads the copy path still produces need the
//!   handler to go on producing them. Once none is left (at once with sendfile, whose
//!   whole body is queued), `Context::shutdown` with what is left of the deadline flushes
//!   every queue and closes with FIN, or resets at the deadline.

#[path = "../common/mod.rs"]
mod common;
mod confine;

use confine::{Resolve, Root};
use evloop::{
    CloseReason, Config, ConnId, Context, EventLoop, Handler, LineDecoder, ListenerId, Signal,
    TimerId,
};
use std::collections::HashSet;
use std::fs::File;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Read size of the copy path, and the size under which a file is sent from memory.
const CHUNK: usize = 64 * 1024;
const MAX_REQUEST: usize = 4096;

/// A body the handler is still producing (the copy path): what is left of it.
struct Download {
    file: File,
    offset: u64,
    left: u64,
}

/// Each connection's state, kept by the loop beside it.
struct Session {
    decoder: LineDecoder,
    download: Option<Download>,
    /// Armed while the connection waits for a request line.
    request_timer: Option<TimerId>,
    /// Request lines taken on this connection.
    answered: u64,
    /// The zero-delay timer that gives a download its next turn (copy path).
    pace_timer: Option<TimerId>,
}

impl Default for Session {
    fn default() -> Self {
        Session {
            decoder: LineDecoder::new(MAX_REQUEST),
            download: None,
            request_timer: None,
            answered: 0,
            pace_timer: None,
        }
    }
}

/// A graceful shutdown under way (after SIGTERM or SIGINT).
struct Draining {
    /// `None`: too far away to represent, that is, never.
    deadline: Option<Instant>,
    /// Fires at the deadline, while the handler still produces downloads itself.
    timer: Option<TimerId>,
    /// Once no download is produced by the handler any more, the loop's own graceful
    /// shutdown takes over: it flushes every queue (file regions included), then FIN.
    handed_over: bool,
}

struct FileServer {
    root: Root,
    copy: bool,
    /// File bytes one connection gets per turn, on either path.
    turn: usize,
    request_timeout: Duration,
    shutdown_deadline: Duration,
    listener: Option<ListenerId>,
    chunk: Vec<u8>,
    /// Header and body of a small reply, sent with one `send`.
    reply: Vec<u8>,
    /// Connections whose body the handler is still producing (copy path): a graceful
    /// shutdown waits for them, and resets them if they are unfinished at the deadline.
    producing: HashSet<ConnId>,
    draining: Option<Draining>,
}

/// How far a download got this turn.
enum Pump {
    Done,
    Later,
    Closed,
}

impl FileServer {
    /// Serves `conn` as far as it can go now: the current download, then the requests in
    /// `input`. Returns how much of `input` it answered; the rest waits in the loop.
    fn work(
        &mut self,
        cx: &mut Context<'_, Self>,
        conn: ConnId,
        s: &mut Session,
        input: &[u8],
    ) -> usize {
        let mut used = 0;
        loop {
            if s.download.is_some() {
                match self.pump(cx, conn, s) {
                    Pump::Done => self.produced(cx, conn, s),
                    Pump::Later => {
                        cx.pause_read(conn);
                        return used;
                    }
                    Pump::Closed => return input.len(), // on_close follows
                }
            }
            if !cx.is_open(conn) {
                return input.len();
            }
            if self.draining.is_some() {
                // Shutting down: no new request starts; what was owed is flushed first.
                cx.close(conn);
                return input.len();
            }
            if cx.is_congested(conn) {
                cx.pause_read(conn); // replies pile up: on_drain comes back here
                return used;
            }
            // Take the next request line from what was read.
            let (mut next, root) = (None, &self.root);
            used += s.decoder.decode(&input[used..], |frame| {
                next = Some(match frame {
                    Ok(line) => match line.strip_prefix(b"GET ") {
                        Some(path) => root.open_file(path),
                        None => Err("bad request"),
                    },
                    Err(_) => Err("request too long"),
                });
                ControlFlow::Break(())
            });
            let Some(reply) = next else {
                // All answered (a partial line stays in the loop): read on, have what
                // waited while paused presented again, and wait for a request in time.
                cx.resume_read(conn);
                if s.request_timer.is_none() {
                    s.request_timer = cx.set_conn_timer(conn, self.request_timeout);
                }
                return used;
            };
            if let Some(t) = s.request_timer.take() {
                cx.cancel_timer(t);
            }
            s.answered += 1;
            if !self.answer(cx, conn, s, reply) {
                return input.len(); // closed: on_close follows
            }
        }
    }

    /// Sends the reply to one request: the header, and the body or the start of it.
    /// `false` if the connection closed.
    fn answer(
        &mut self,
        cx: &mut Context<'_, Self>,
        conn: ConnId,
        s: &mut Session,
        reply: Result<(File, u64), confine::Refusal>,
    ) -> bool {
        self.reply.clear();
        let (file, size) = match reply {
            Err(reason) => {
                log::debug!("{conn}: ERR {reason}");
                self.reply
                    .extend_from_slice(format!("ERR {reason}\n").as_bytes());
                return cx.send(conn, &self.reply).is_ok();
            }
            Ok(found) => found,
        };
        log::debug!("{conn}: OK {size}");
        if size < CHUNK as u64 {
            // Small: read it now, and announce what was read (the file may have shrunk).
            let n = read_full(&file, 0, &mut self.chunk[..size as usize]);
            self.reply.extend_from_slice(format!("OK {n}\n").as_bytes());
            self.reply.extend_from_slice(&self.chunk[..n]);
            return cx.send(conn, &self.reply).is_ok();
        }
        if cx.send(conn, format!("OK {size}\n").as_bytes()).is_err() {
            return false;
        }
        if self.copy {
            s.download = Some(Download {
                file,
                offset: 0,
                left: size,
            });
            self.producing.insert(conn);
            true
        } else {
            // The whole body at once: the loop sends it, a per-turn cap at a time, and a
            // graceful close flushes it to its end.
            cx.send_file(conn, Arc::new(file), 0, size).is_ok()
        }
    }

    /// The copy path: reads and sends the current download, a turn's share at most, while
    /// the connection is not congested.
    fn pump(&mut self, cx: &mut Context<'_, Self>, conn: ConnId, s: &mut Session) -> Pump {
        let dl = s.download.as_mut().expect("a download");
        let mut turn = self.turn;
        while dl.left > 0 && turn > 0 && !cx.is_congested(conn) {
            let want = dl.left.min(CHUNK.min(turn) as u64) as usize;
            let n = read_full(&dl.file, dl.offset, &mut self.chunk[..want]);
            if n == 0 {
                log::warn!("{conn}: file shrank or failed: resetting the connection");
                cx.abort(conn); // an RST, so the client cannot take the cut for an end
                return Pump::Closed;
            }
            if cx.send(conn, &self.chunk[..n]).is_err() {
                return Pump::Closed;
            }
            dl.offset += n as u64;
            dl.left -= n as u64;
            turn -= n;
        }
        if dl.left == 0 {
            return Pump::Done;
        }
        if !cx.is_congested(conn) && s.pace_timer.is_none() {
            s.pace_timer = cx.set_conn_timer(conn, Duration::ZERO); // next turn
        } // else on_drain comes back here
        Pump::Later
    }

    /// The handler finished producing `conn`'s download (all of it is queued).
    fn produced(&mut self, cx: &mut Context<'_, Self>, conn: ConnId, s: &mut Session) {
        s.download = None;
        if self.producing.remove(&conn) && self.draining.is_some() {
            self.hand_over_if_done(cx);
        }
    }

    /// SIGTERM or SIGINT: stop accepting, let downloads finish; a second one cuts them off.
    fn begin_shutdown(&mut self, cx: &mut Context<'_, Self>) {
        if self.draining.is_some() {
            log::warn!("second signal: cutting off what is left");
            return self.cut(cx);
        }
        log::info!(
            "graceful shutdown: {:?} for downloads to finish ({} produced by the copy path)",
            self.shutdown_deadline,
            self.producing.len()
        );
        if let Some(l) = self.listener.take() {
            cx.close_listener(l);
        }
        self.draining = Some(Draining {
            deadline: cx.now().checked_add(self.shutdown_deadline),
            timer: Some(cx.set_timer(self.shutdown_deadline)),
            handed_over: false,
        });
        self.hand_over_if_done(cx);
    }

    /// Once the handler produces nothing any more, the loop's graceful shutdown finishes the
    /// job within what is left of the deadline: each queue (whole files, with sendfile) is
    /// flushed, then FIN; a queue not flushed at the deadline is reset.
    fn hand_over_if_done(&mut self, cx: &mut Context<'_, Self>) {
        let Some(d) = &mut self.draining else { return };
        if d.handed_over || !self.producing.is_empty() {
            return;
        }
        d.handed_over = true;
        if let Some(t) = d.timer.take() {
            cx.cancel_timer(t);
        }
        let now = cx.now();
        cx.shutdown(
            d.deadline
                .map_or(Duration::MAX, |at| at.saturating_duration_since(now)),
        );
    }

    /// The deadline (or a second signal): downloads still being produced are reset, and
    /// the loop's shutdown resets whatever else has not been flushed.
    fn cut(&mut self, cx: &mut Context<'_, Self>) {
        for conn in self.producing.drain() {
            cx.abort(conn);
        }
        if let Some(d) = &mut self.draining {
            d.handed_over = true;
            if let Some(t) = d.timer.take() {
                cx.cancel_timer(t);
            }
        }
        cx.shutdown(Duration::ZERO);
    }
}

/// Reads `buf.len()` bytes of `file` from `offset`, or fewer if it ends first (or fails).
fn read_full(file: &File, offset: u64, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    n
}

impl Handler for FileServer {
    type Conn = Session;

    fn on_open(&mut self, cx: &mut Context<'_, Self>, conn: ConnId, s: &mut Session) {
        s.request_timer = cx.set_conn_timer(conn, self.request_timeout);
    }

    fn on_data(
        &mut self,
        cx: &mut Context<'_, Self>,
        conn: ConnId,
        s: &mut Session,
        input: &[u8],
    ) -> usize {
        self.work(cx, conn, s, input)
    }

    fn on_drain(&mut self, cx: &mut Context<'_, Self>, conn: ConnId, s: &mut Session) {
        self.work(cx, conn, s, &[]);
    }

    fn on_conn_timer(
        &mut self,
        cx: &mut Context<'_, Self>,
        conn: ConnId,
        s: &mut Session,
        timer: TimerId,
    ) {
        if s.pace_timer == Some(timer) {
            s.pace_timer = None;
            self.work(cx, conn, s, &[]);
        } else if s.request_timer == Some(timer) {
            s.request_timer = None;
            if s.download.is_some() || cx.queued(conn).unwrap_or(0) > 0 {
                // Still sending a reply: not waiting for a request (a reader that stops
                // taking bytes is the loop's send_timeout's business).
                s.request_timer = cx.set_conn_timer(conn, self.request_timeout);
                return;
            }
            if s.answered > 0 && cx.kept_input(conn) == Some(0) {
                // Idle between requests (keep-alive): closed quietly and cleanly, so the
                // tail of the last reply the kernel may still hold reaches a slow reader.
                log::debug!("{conn}: idle for {:?}", self.request_timeout);
                return cx.close(conn);
            }
            log::debug!("{conn}: no whole request in {:?}", self.request_timeout);
            // Told why, then reset: a reset frees the descriptor at once, where a clean
            // close would linger (`Config::linger`) for a peer that may never answer.
            let _ = cx.send(conn, b"ERR request timeout\n");
            cx.abort(conn);
        }
    }

    fn on_close(
        &mut self,
        cx: &mut Context<'_, Self>,
        conn: ConnId,
        _: Session,
        reason: &CloseReason,
    ) {
        log::debug!("{conn} closed: {reason}");
        if self.producing.remove(&conn) {
            self.hand_over_if_done(cx);
        }
    }

    fn on_signal(&mut self, cx: &mut Context<'_, Self>, signal: Signal) {
        if matches!(signal, Signal::Terminate | Signal::Interrupt) {
            self.begin_shutdown(cx);
        }
    }

    fn on_timer(&mut self, cx: &mut Context<'_, Self>, timer: TimerId) {
        if self
            .draining
            .as_ref()
            .is_some_and(|d| d.timer == Some(timer))
        {
            log::warn!(
                "shutdown deadline: resetting {} unfinished downloads",
                self.producing.len()
            );
            self.cut(cx);
        }
    }
}

const USAGE: &str = "usage: file_server [--addr ADDR] [--root DIR] [--copy] \
[--request-timeout SECS] [--max-per-ip N] [--max-conns N] [--shutdown-deadline SECS] \
[--resolve beneath|walk] [--turn-kib N] [--tls-cert FILE --tls-key FILE]";

struct Options {
    addr: SocketAddr,
    root: PathBuf,
    copy: bool,
    request_timeout: Duration,
    max_per_ip: usize,
    max_conns: usize,
    shutdown_deadline: Duration,
    resolve: Option<Resolve>,
    turn_kib: usize,
    /// PEM certificate chain and key: serve over TLS (feature `tls`).
    tls: Option<(PathBuf, PathBuf)>,
}

fn parse_args() -> (Options, common::Args) {
    let mut o = Options {
        addr: "127.0.0.1:7003".parse().unwrap(),
        root: PathBuf::from("."),
        copy: false,
        request_timeout: Duration::from_secs(10),
        max_per_ip: 64,
        max_conns: 10_000,
        shutdown_deadline: Duration::from_secs(5),
        resolve: None,
        turn_kib: 64,
        tls: None,
    };
    let (mut cert, mut key): (Option<PathBuf>, Option<PathBuf>) = (None, None);
    let mut args = common::Args::new(USAGE);
    let secs = |args: &mut common::Args, flag: &str| {
        let s: f64 = args.value(flag);
        Duration::try_from_secs_f64(s)
            .unwrap_or_else(|e| args.fail(format_args!("{flag} {s}: {e}")))
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--addr" => o.addr = args.value(&arg),
            "--root" => o.root = args.value(&arg),
            "--copy" => o.copy = true,
            "--request-timeout" => {
                o.request_timeout = secs(&mut args, &arg);
                if o.request_timeout.is_zero() {
                    args.fail("--request-timeout must be more than 0");
                }
            }
            "--max-per-ip" => o.max_per_ip = args.value(&arg),
            "--max-conns" => o.max_conns = args.value(&arg),
            "--shutdown-deadline" => o.shutdown_deadline = secs(&mut args, &arg),
            "--resolve" => o.resolve = Some(args.value(&arg)),
            "--turn-kib" => o.turn_kib = args.value(&arg),
            "--tls-cert" => cert = Some(args.value(&arg)),
            "--tls-key" => key = Some(args.value(&arg)),
            _ => args.unexpected(&arg),
        }
    }
    match (cert, key) {
        (Some(c), Some(k)) if cfg!(feature = "tls") => o.tls = Some((c, k)),
        (Some(_), Some(_)) => args.fail("TLS needs the `tls` feature (--features tls)"),
        (None, None) => {}
        _ => args.fail("--tls-cert and --tls-key go together"),
    }
    // sendfile(2) cannot encrypt: over TLS bodies are read and sent in turns (--copy).
    o.copy |= o.tls.is_some();
    (o, args)
}

fn main() -> std::io::Result<()> {
    common::init_logging("info");
    let (o, args) = parse_args();
    let root = Root::open(&o.root, o.resolve)
        .unwrap_or_else(|e| args.fail(format_args!("--root {}: {e}", o.root.display())));
    let resolve = root.resolve;
    let server = FileServer {
        root,
        copy: o.copy,
        turn: o.turn_kib.max(1) * 1024,
        request_timeout: o.request_timeout,
        shutdown_deadline: o.shutdown_deadline,
        listener: None,
        chunk: vec![0; CHUNK],
        reply: Vec::with_capacity(CHUNK + 32),
        producing: HashSet::new(),
        draining: None,
    };
    let mut config = Config::default();
    config.max_connections = o.max_conns;
    config.max_connections_per_ip = Some(o.max_per_ip);
    config.send_file_chunk = o.turn_kib.max(1) * 1024;
    config.refusal_reply = Some(b"ERR too many connections\n".to_vec());
    let mut el = EventLoop::with_config(server, config)?;
    let listener = match &o.tls {
        None => el.listen(o.addr)?,
        Some((cert, key)) => listen_tls(&mut el, o.addr, cert, key)?,
    };
    el.handler_mut().listener = Some(listener);
    let addr = el.context().listener_addr(listener)?;
    let body = if o.copy { "copy" } else { "sendfile" };
    log::info!(
        "file_server listening on {addr} (root {}, {body}, resolve {resolve:?})",
        o.root.display()
    );
    el.watch_signals(&[Signal::Terminate, Signal::Interrupt])?;
    el.run()?;
    log::info!("file_server stopped: {:?}", el.stats());
    Ok(())
}

/// Listens with TLS from PEM files.
#[cfg(feature = "tls")]
fn listen_tls(
    el: &mut EventLoop<FileServer>,
    addr: SocketAddr,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> std::io::Result<evloop::ListenerId> {
    el.listen_tls(addr, evloop::tls::server_config(cert, key)?)
}

#[cfg(not(feature = "tls"))]
fn listen_tls(
    _: &mut EventLoop<FileServer>,
    _: SocketAddr,
    _: &std::path::Path,
    _: &std::path::Path,
) -> std::io::Result<evloop::ListenerId> {
    unreachable!("refused by parse_args without the tls feature")
}
