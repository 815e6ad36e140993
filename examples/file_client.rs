//! File client: downloads one file from `file_server`, writing it to disk as it arrives.
//!
//! ```text
//! cargo run --release --example file_server -- --root /some/dir        # on 127.0.0.1:7003
//! cargo run --release --example file_client -- notes.txt --out /tmp/notes.txt
//! ```
//!
//! Options: `--addr ADDR` (default 127.0.0.1:7003), `--out FILE` (default: the file's name,
//! in the current directory), `--timeout SECS` (default 30, fractions allowed): the longest
//! the server may stay silent, whether connecting, before its reply or mid-file. The
//! connection is the loop's own outbound `connect`: `on_open` sends `GET <path>`, `on_data`
//! decodes the `OK <size>` line from the input the loop keeps and appends the body to a
//! `FILE.part` file chunk by chunk, so a file of any size needs no more memory than one
//! read; only a whole file is renamed to `FILE`.
//!
//! Exit status 0 when exactly `size` bytes arrived; 1, with the reason on stderr, if the
//! server said `ERR`, the connection failed, the server was silent for `--timeout` (the
//! loop's idle timeout), or it closed early. Nothing is left under `FILE` then, nor the
//! `.part` file (unless the process itself is killed).

mod common;

use evloop::{CloseReason, ConnId, Context, EventLoop, Handler, LineDecoder};
use std::fs::File;
use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

struct Download {
    path: String,
    /// Where the body goes while it arrives (`FILE.part`), renamed to `FILE` when whole.
    part: PathBuf,
    header: LineDecoder,
    /// Open once the server said OK.
    file: Option<File>,
    size: u64,
    received: u64,
    /// Set when the download ended, well or not.
    outcome: Option<Result<(), String>>,
    /// The loop's idle timeout: the longest the server may be silent.
    timeout: Duration,
}

impl Download {
    /// Takes the reply so far: the header line first, then body bytes. Returns how much of
    /// `input` it used: nothing of a header line that is not complete yet (the loop keeps
    /// it and presents it again with the next bytes), then everything.
    fn take(&mut self, input: &[u8]) -> Result<usize, String> {
        let mut body = input;
        if self.file.is_none() {
            let mut header = None;
            let used = self.header.decode(input, |line| {
                header = Some(line.map(|l| String::from_utf8_lossy(l).into_owned()));
                ControlFlow::Break(())
            });
            let Some(header) = header else {
                return Ok(used); // the header line is not complete yet
            };
            let header = header.map_err(|_| "reply header too long".to_string())?;
            if let Some(reason) = header.strip_prefix("ERR ") {
                return Err(format!("server: {reason}"));
            }
            let size = header.strip_prefix("OK ").and_then(|n| n.parse().ok());
            self.size = size.ok_or(format!("bad reply header {header:?}"))?;
            let file = File::create(&self.part);
            self.file = Some(file.map_err(|e| format!("{}: {e}", self.part.display()))?);
            body = &input[used..];
        }
        if body.len() as u64 > self.size - self.received {
            return Err("server sent more than it announced".into());
        }
        let file = self.file.as_mut().expect("opened above");
        file.write_all(body)
            .map_err(|e| format!("{}: {e}", self.part.display()))?;
        self.received += body.len() as u64;
        Ok(input.len())
    }

    fn finish(&mut self, cx: &mut Context<'_, Self>, conn: ConnId, outcome: Result<(), String>) {
        self.outcome.get_or_insert(outcome);
        cx.close(conn); // on_close stops the loop
    }
}

impl Handler for Download {
    type Conn = (); // one connection: its state is the handler's

    fn on_open(&mut self, cx: &mut Context<'_, Self>, conn: ConnId, _: &mut ()) {
        if let Err(e) = cx.send(conn, format!("GET {}\n", self.path).as_bytes()) {
            self.finish(cx, conn, Err(format!("sending the request: {e}")));
        }
    }

    fn on_data(
        &mut self,
        cx: &mut Context<'_, Self>,
        conn: ConnId,
        _: &mut (),
        input: &[u8],
    ) -> usize {
        match self.take(input) {
            Err(e) => {
                self.finish(cx, conn, Err(e));
                input.len()
            }
            Ok(used) => {
                if self.file.is_some() && self.received == self.size {
                    self.finish(cx, conn, Ok(()));
                }
                used
            }
        }
    }

    fn on_close(&mut self, cx: &mut Context<'_, Self>, _conn: ConnId, _: (), reason: &CloseReason) {
        let (received, size) = (self.received, self.size);
        let why = match reason {
            CloseReason::IdleTimeout => format!("timed out: nothing for {:?}", self.timeout),
            reason => reason.to_string(),
        };
        self.outcome.get_or_insert_with(|| match self.file {
            None => Err(why),
            Some(_) => Err(format!("{why}, after {received} of {size} bytes")),
        });
        cx.stop();
    }
}

const USAGE: &str =
    "usage: file_client [--addr ADDR] PATH [--out FILE] [--timeout SECS] [--tls-ca FILE]";

/// The CA certificate (PEM) to trust for a TLS download (`--tls-ca`, feature `tls`); the
/// server name checked is `localhost`.
static TLS_CA: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

fn parse_args() -> (std::net::SocketAddr, String, Option<PathBuf>, Duration) {
    let mut addr = "127.0.0.1:7003".parse().unwrap();
    let (mut path, mut out, mut timeout) = (None, None, Duration::from_secs(30));
    let mut args = common::Args::new(USAGE);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--addr" => addr = args.value(&arg),
            "--out" => out = Some(args.value(&arg)),
            "--tls-ca" if cfg!(feature = "tls") => {
                let _ = TLS_CA.set(args.value(&arg));
            }
            "--tls-ca" => args.fail("TLS needs the `tls` feature (--features tls)"),
            "--timeout" => {
                let secs: f64 = args.value(&arg);
                timeout = Duration::try_from_secs_f64(secs)
                    .ok()
                    .filter(|t| !t.is_zero())
                    .unwrap_or_else(|| args.fail(format_args!("--timeout {secs}: not a time")));
            }
            _ if arg.starts_with("--") || path.is_some() => args.unexpected(&arg),
            _ => path = Some(arg),
        }
    }
    let path = path.unwrap_or_else(|| args.fail("which file?"));
    (addr, path, out, timeout)
}

/// `FILE.part`, beside `FILE`.
fn part_of(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or("download".as_ref()).to_owned();
    name.push(".part");
    out.with_file_name(name)
}

fn main() {
    common::init_logging("warn");
    let (addr, path, out, timeout) = parse_args();
    let name = std::path::Path::new(&path).file_name();
    let out = out.unwrap_or_else(|| PathBuf::from(name.unwrap_or("download".as_ref())));
    let fail = |e: &dyn std::fmt::Display| -> ! {
        eprintln!("file_client: cannot download {path} from {addr}: {e}");
        std::process::exit(1);
    };
    let started = Instant::now();
    let part = part_of(&out);
    let download = Download {
        path: path.clone(),
        part: part.clone(),
        header: LineDecoder::new(4096),
        file: None,
        size: 0,
        received: 0,
        outcome: None,
        timeout,
    };
    // A server silent for `timeout` (connecting, before its reply, mid-file) ends it.
    let mut config = evloop::Config::default();
    config.idle_timeout = Some(timeout);
    config.connect_timeout = Some(timeout);
    let mut el = EventLoop::with_config(download, config).unwrap_or_else(|e| fail(&e));
    match TLS_CA.get() {
        None => el.connect(addr, ()).map(drop),
        Some(ca) => connect_tls(&mut el, addr, ca),
    }
    .unwrap_or_else(|e| fail(&e));
    el.run().unwrap_or_else(|e| fail(&e));
    let d = el.handler();
    let outcome = match &d.outcome {
        Some(Ok(())) => std::fs::rename(&part, &out)
            .map_err(|e| format!("renaming {} to {}: {e}", part.display(), out.display())),
        Some(Err(e)) => Err(e.clone()),
        None => Err("the loop stopped early".to_string()),
    };
    if let Err(e) = outcome {
        if d.file.is_some() {
            let _ = std::fs::remove_file(&part); // don't leave a partial file behind
        }
        fail(&e);
    }
    let secs = started.elapsed().as_secs_f64();
    let rate = d.received as f64 / secs.max(1e-9) / 1e6;
    println!(
        "{path}: {} bytes in {secs:.3} s ({rate:.1} MB/s) -> {}",
        d.received,
        out.display()
    );
}

/// Connects over TLS, trusting `ca` for the name `localhost`.
#[cfg(feature = "tls")]
fn connect_tls(
    el: &mut EventLoop<Download>,
    addr: std::net::SocketAddr,
    ca: &Path,
) -> std::io::Result<()> {
    let config = evloop::tls::client_config(ca)?;
    el.context().connect_tls(addr, config, "localhost", ())?;
    Ok(())
}

#[cfg(not(feature = "tls"))]
fn connect_tls(
    _: &mut EventLoop<Download>,
    _: std::net::SocketAddr,
    _: &Path,
) -> std::io::Result<()> {
    unreachable!("refused by parse_args without the tls feature")
}
