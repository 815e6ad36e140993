//! A client of the `file_server` example (one buffered reader, raw writes), and what the
//! tests of that example share: a temporary root, starting the server, signals.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub struct Client(pub BufReader<TcpStream>);

impl Client {
    pub fn new(addr: SocketAddr) -> Client {
        Client::from_stream(super::client(addr))
    }

    /// A client on a stream the caller connected (e.g. from another loopback address).
    pub fn from_stream(s: TcpStream) -> Client {
        s.set_nodelay(true).unwrap();
        Client(BufReader::new(s))
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.0.get_mut().write_all(bytes).expect("write request");
    }

    /// Reads one reply: `Ok(body)` after `OK <size>`, `Err(reason)` after `ERR <reason>`.
    pub fn reply(&mut self) -> Result<Vec<u8>, String> {
        let line = self.header();
        if let Some(reason) = line.strip_prefix("ERR ") {
            return Err(reason.to_string());
        }
        let size: usize = line.strip_prefix("OK ").expect(&line).parse().unwrap();
        let mut body = vec![0; size];
        self.0.read_exact(&mut body).expect("read body");
        Ok(body)
    }

    /// Reads one reply header line, without its newline.
    pub fn header(&mut self) -> String {
        let mut line = String::new();
        self.0.read_line(&mut line).expect("read reply header");
        line.strip_suffix('\n')
            .unwrap_or_else(|| panic!("not a whole header line: {line:?}"))
            .to_string()
    }

    pub fn get(&mut self, path: &str) -> Result<Vec<u8>, String> {
        self.send(format!("GET {path}\n").as_bytes());
        self.reply()
    }
}

/// How a body read with [`read_body`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum BodyEnd {
    /// All `size` bytes arrived, then a clean EOF (FIN).
    WholeThenEof,
    /// The connection was reset (RST) after this many bytes: a cut the client can tell.
    Reset(u64),
    /// A clean EOF after only this many bytes: a truncated download that looks finished.
    TruncatedEof(u64),
}

/// Reads a body of `size` zero bytes (a sparse file) and what follows it until EOF or an
/// error, checking every byte; each read has the stream's read deadline.
pub fn read_body(r: &mut impl Read, size: u64) -> BodyEnd {
    let mut buf = vec![0u8; 256 * 1024];
    let zeros = vec![0u8; buf.len()];
    let mut total = 0u64;
    loop {
        match r.read(&mut buf) {
            Ok(0) if total == size => return BodyEnd::WholeThenEof,
            Ok(0) => return BodyEnd::TruncatedEof(total),
            Ok(n) => {
                // memcmp, fast even in a debug build
                assert!(buf[..n] == zeros[..n], "non-zero byte near offset {total}");
                total += n as u64;
                assert!(
                    total <= size,
                    "{total} bytes, more than the {size} announced"
                );
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return BodyEnd::Reset(total);
            }
            Err(e) => panic!("read after {total} of {size} bytes: {e}"),
        }
    }
}

/// A directory under the system temp dir, named after the test and this process, removed
/// on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("evloop-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `data` to `rel` (creating directories) and returns it.
    pub fn file(&self, rel: &str, data: &[u8]) -> Vec<u8> {
        let path = self.0.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
        data.to_vec()
    }

    /// A sparse file of `size` zero bytes at `rel` (no disk space used).
    pub fn sparse(&self, rel: &str, size: u64) {
        let path = self.0.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::File::create(path).unwrap().set_len(size).unwrap();
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts `file_server` on a free port of 127.0.0.1 serving `root`, with `extra` arguments.
/// `FILE_SERVER_BIN=/path/to/file_server` runs another build instead (say, the one from
/// before a fix, to see a regression test fail).
pub fn file_server(root: &Path, extra: &[&str]) -> super::Example {
    let root = root.to_str().unwrap();
    let mut args = vec!["--addr", "127.0.0.1:0", "--root", root];
    args.extend_from_slice(extra);
    match std::env::var_os("FILE_SERVER_BIN") {
        Some(bin) => super::start_example_with(std::process::Command::new(bin).args(&args)),
        None => super::start_example("file_server", &args),
    }
}

/// As [`file_server`], run by `sh` with its descriptor limit lowered to `nofile` first.
pub fn file_server_with_nofile(root: &Path, nofile: u32, extra: &[&str]) -> super::Example {
    let bin = std::env::var_os("FILE_SERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| super::example_path("file_server"));
    let script = format!("ulimit -n {nofile} && exec \"$0\" \"$@\"");
    let mut cmd = std::process::Command::new("sh");
    cmd.args(["-c", &script]).arg(bin);
    cmd.args(["--addr", "127.0.0.1:0", "--root", root.to_str().unwrap()]);
    super::start_example_with(cmd.args(extra))
}

/// Reads until the peer closes: what arrived, and whether it ended with a reset (RST)
/// rather than EOF. Each read has the stream's deadline.
pub fn read_until_closed(s: &mut TcpStream) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    match s.read_to_end(&mut got) {
        Ok(_) => (got, false),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => (got, true),
        Err(e) => panic!("read after {} bytes ({got:?}): {e}", got.len()),
    }
}

/// Descriptors process `pid` has open.
pub fn fds_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Sends `signal` (`"TERM"`, `"INT"`, ...) to the example.
pub fn signal(ex: &super::Example, signal: &str) {
    let pid = ex.child.id().to_string();
    let kill = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid])
        .status();
    assert!(kill.unwrap().success());
}

/// Waits, within `within`, for the example to exit: its stderr closes, then its status is
/// read. Returns the status and the log lines it wrote meanwhile.
pub fn wait_exit(
    ex: &mut super::Example,
    within: Duration,
) -> (std::process::ExitStatus, Vec<String>) {
    let end = Instant::now() + within;
    let mut lines = Vec::new();
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match ex.log.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(e) => panic!("still running {within:?} later: {e}; log: {lines:#?}"),
        }
    }
    (ex.child.wait().unwrap(), lines)
}

/// A TCP client bound to loopback address `from` (any of 127.0.0.0/8 works on Linux), so a
/// test can be several hosts at once; with the usual deadlines.
pub fn client_from(from: std::net::Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    sock.bind(&SocketAddr::from((from, 0)).into())?;
    sock.connect_timeout(&to.into(), super::DEADLINE)?;
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(super::DEADLINE))?;
    s.set_write_timeout(Some(super::DEADLINE))?;
    Ok(s)
}
