//! File client: downloads one file from `file_server`, writing it to disk as it arrives.
//!
//! ```text
//! cargo run --release --example file_server -- --root /some/dir        # on 127.0.0.1:7003
//! cargo run --release --example file_client -- notes.txt --out /tmp/notes.txt
//! ```
//!
//! Options: `--addr ADDR` (default 127.0.0.1:7003), `--out FILE` (default: the file's name,
//! in the current directory). The connection is the loop's own outbound `connect`: `on_open`
//! sends `GET <path>`, `on_data` decodes the `OK <size>` line from the input the loop keeps
//! and appends the body to the output file chunk by chunk, so a file of any size needs no
//! more memory than one read.
//! Exit status 0 when exactly `size` bytes arrived; 1, with the reason on stderr, if the
//! server said `ERR`, the connection failed, or it closed early (the partial file is removed).

mod common;

use evloop::{CloseReason, ConnId, Context, EventLoop, Handler, LineDecoder};
use std::fs::File;
use std::io::Write;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

struct Download {
    path: String,
    out: PathBuf,
    header: LineDecoder,
    /// Open once the server said OK.
    file: Option<File>,
    size: u64,
    received: u64,
    /// Set when the download ended, well or not.
    outcome: Option<Result<(), String>>,
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
            let file = File::create(&self.out);
            self.file = Some(file.map_err(|e| format!("{}: {e}", self.out.display()))?);
            body = &input[used..];
        }
        if body.len() as u64 > self.size - self.received {
            return Err("server sent more than it announced".into());
        }
        let file = self.file.as_mut().expect("opened above");
        file.write_all(body)
            .map_err(|e| format!("{}: {e}", self.out.display()))?;
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
        self.outcome.get_or_insert_with(|| match self.file {
            None => Err(reason.to_string()),
            Some(_) => Err(format!("{reason} after {received} of {size} bytes")),
        });
        cx.stop();
    }
}

const USAGE: &str = "usage: file_client [--addr ADDR] PATH [--out FILE]";

fn parse_args() -> (std::net::SocketAddr, String, Option<PathBuf>) {
    let mut addr = "127.0.0.1:7003".parse().unwrap();
    let (mut path, mut out) = (None, None);
    let mut args = common::Args::new(USAGE);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--addr" => addr = args.value(&arg),
            "--out" => out = Some(args.value(&arg)),
            _ if arg.starts_with("--") || path.is_some() => args.unexpected(&arg),
            _ => path = Some(arg),
        }
    }
    let path = path.unwrap_or_else(|| args.fail("which file?"));
    (addr, path, out)
}

fn main() {
    common::init_logging("warn");
    let (addr, path, out) = parse_args();
    let name = std::path::Path::new(&path).file_name();
    let out = out.unwrap_or_else(|| PathBuf::from(name.unwrap_or("download".as_ref())));
    let fail = |e: &dyn std::fmt::Display| -> ! {
        eprintln!("file_client: cannot download {path} from {addr}: {e}");
        std::process::exit(1);
    };
    let started = Instant::now();
    let download = Download {
        path: path.clone(),
        out: out.clone(),
        header: LineDecoder::new(4096),
        file: None,
        size: 0,
        received: 0,
        outcome: None,
    };
    let mut el = EventLoop::new(download).unwrap_or_else(|e| fail(&e));
    el.connect(addr, ()).unwrap_or_else(|e| fail(&e));
    el.run().unwrap_or_else(|e| fail(&e));
    let d = el.handler();
    if let Some(Err(e)) = &d.outcome {
        if d.file.is_some() {
            let _ = std::fs::remove_file(&out); // don't leave a partial file behind
        }
        fail(e);
    }
    let secs = started.elapsed().as_secs_f64();
    let rate = d.received as f64 / secs.max(1e-9) / 1e6;
    println!(
        "{path}: {} bytes in {secs:.3} s ({rate:.1} MB/s) -> {}",
        d.received,
        out.display()
    );
}
