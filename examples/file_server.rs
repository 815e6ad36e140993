//! File server: `GET <path>\n` is answered with `OK <size>\n` and exactly that many bytes,
//! or with `ERR <reason>\n`, for regular files under one root directory, however large.
//!
//! ```text
//! cargo run --release --example file_server -- --root /some/dir     # on 127.0.0.1:7003
//! cargo run --release --example file_client -- notes.txt --out /tmp/notes.txt
//! printf 'GET notes.txt\nGET nope\n' | nc -N 127.0.0.1 7003   # two answers, in order
//! ```
//!
//! Options: `--addr ADDR` (default 127.0.0.1:7003), `--root DIR` (default `.`).
//!
//! - **Confinement.** A path must be relative without `..`; canonicalized (symlinks resolved)
//!   it must still lie under the canonical root, and be a regular file (opened O_NONBLOCK, so
//!   a FIFO can't block the loop).
//! - **Streaming.** Files are read in 64 KiB chunks into one shared buffer and sent while the
//!   connection is not congested; `on_drain` goes on once its queue has drained, so a client
//!   that stops reading costs ~128 KiB of queue, not the file. A turn sends at most 1 MiB,
//!   then a zero-delay timer goes on: a fast reader can't hold the loop.
//! - **Order.** Requests are decoded one line at a time from the input the loop keeps
//!   (`on_data` consumes only the lines it answered); while a file streams or replies pile
//!   up, reading is paused (`pause_read`) and the lines already read wait there, presented
//!   again on `resume_read`. Disk reads block the loop: fine from the page cache.

mod common;

use evloop::{CloseReason, ConnId, Context, EventLoop, Handler, LineDecoder, TimerId};
use std::io::{ErrorKind, Read};
use std::os::unix::{ffi::OsStrExt, fs::OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::{fs::File, ops::ControlFlow, time::Duration};

const CHUNK: usize = 64 * 1024;
const CHUNKS_PER_TURN: usize = 16;
const MAX_REQUEST: usize = 4096;

/// Each connection's state, kept by the loop beside it.
struct Session {
    decoder: LineDecoder,
    /// The file being sent, limited to the size announced.
    download: Option<std::io::Take<File>>,
}

impl Default for Session {
    fn default() -> Self {
        Session {
            decoder: LineDecoder::new(MAX_REQUEST),
            download: None,
        }
    }
}

struct FileServer {
    root: PathBuf,
    chunk: Vec<u8>,
}

/// Resolves `GET <path>` to an open regular file under `root`, or a reason to refuse.
fn open_request(root: &Path, line: &[u8]) -> Result<(File, u64), &'static str> {
    let rel = line.strip_prefix(b"GET ").filter(|p| !p.is_empty());
    let rel = Path::new(std::ffi::OsStr::from_bytes(rel.ok_or("bad request")?));
    let plain = |c| matches!(c, Component::Normal(_) | Component::CurDir);
    if !rel.components().all(plain) {
        return Err("forbidden"); // absolute, or a `..`
    }
    let io_reason = |e: std::io::Error| match e.kind() {
        ErrorKind::NotFound | ErrorKind::NotADirectory => "not found",
        ErrorKind::PermissionDenied => "permission denied",
        _ => "cannot open",
    };
    let path = root.join(rel).canonicalize().map_err(io_reason)?;
    if !path.starts_with(root) {
        return Err("forbidden"); // a symlink out of the root
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(&path)
        .map_err(io_reason)?;
    match file.metadata().map_err(io_reason)? {
        meta if meta.is_file() => Ok((file, meta.len())),
        _ => Err("not a regular file"),
    }
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
            if let Some(dl) = &mut s.download {
                let mut turn = CHUNKS_PER_TURN;
                while dl.limit() > 0 && !cx.is_congested(conn) && turn > 0 {
                    let n = dl.read(&mut self.chunk).unwrap_or(0);
                    if n == 0 {
                        log::warn!("{conn}: file shrank or failed: cutting the reply short");
                        cx.abort(conn);
                        return input.len();
                    }
                    if cx.send(conn, &self.chunk[..n]).is_err() {
                        return input.len(); // closed: on_close follows
                    }
                    turn -= 1;
                }
                if dl.limit() > 0 {
                    cx.pause_read(conn);
                    if !cx.is_congested(conn) {
                        cx.set_conn_timer(conn, Duration::ZERO); // next turn: on_conn_timer
                    } // else on_drain comes back here
                    return used;
                }
                s.download = None;
            }
            if cx.is_congested(conn) {
                cx.pause_read(conn); // replies pile up: on_drain comes back here
                return used;
            }
            // Take the next request line from what was read.
            let (mut next, root) = (None, &self.root);
            used += s.decoder.decode(&input[used..], |frame| {
                let line = frame.map_err(|_| "request too long");
                next = Some(line.and_then(|line| open_request(root, line)));
                ControlFlow::Break(())
            });
            let Some(reply) = next else {
                // All answered (a partial line stays in the loop): read on, and have what
                // waited while paused presented again.
                cx.resume_read(conn);
                return used;
            };
            let header = match reply {
                Ok((file, size)) => {
                    s.download = Some(file.take(size));
                    format!("OK {size}\n")
                }
                Err(reason) => format!("ERR {reason}\n"),
            };
            log::debug!("{conn}: {}", header.trim_end());
            if cx.send(conn, header.as_bytes()).is_err() {
                return input.len(); // closed: on_close follows
            }
        }
    }
}

impl Handler for FileServer {
    type Conn = Session;

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
        _: TimerId,
    ) {
        self.work(cx, conn, s, &[]);
    }

    fn on_close(
        &mut self,
        _cx: &mut Context<'_, Self>,
        conn: ConnId,
        _: Session,
        reason: &CloseReason,
    ) {
        log::debug!("{conn} closed: {reason}");
    }
}

const USAGE: &str = "usage: file_server [--addr ADDR] [--root DIR]";

fn parse_args() -> (std::net::SocketAddr, PathBuf) {
    let (mut addr, mut root) = ("127.0.0.1:7003".parse().unwrap(), PathBuf::from("."));
    let mut args = common::Args::new(USAGE);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--addr" => addr = args.value(&arg),
            "--root" => root = args.value(&arg),
            _ => args.unexpected(&arg),
        }
    }
    match root.canonicalize() {
        Ok(root) if root.is_dir() => (addr, root),
        Ok(_) => args.fail(format_args!("--root {}: not a directory", root.display())),
        Err(e) => args.fail(format_args!("--root {}: {e}", root.display())),
    }
}

fn main() -> std::io::Result<()> {
    common::init_logging("info");
    let (addr, root) = parse_args();
    let root_shown = root.display().to_string();
    let server = FileServer {
        root,
        chunk: vec![0; CHUNK],
    };
    let mut el = EventLoop::new(server)?;
    let listener = el.listen(addr)?;
    let addr = el.context().listener_addr(listener)?;
    log::info!("file_server listening on {addr} (root {root_shown})");
    el.shutdown_on_signals(Duration::from_secs(5))?;
    el.run()?;
    log::info!("file_server stopped: {:?}", el.stats());
    Ok(())
}
