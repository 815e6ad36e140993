//! Issue 5, item 5: the file_server and file_client examples, run as child processes and
//! driven over loopback with blocking clients that have deadlines.

mod support;

use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use support::file_client::Client;
use support::*;

/// A directory under the system temp dir, named after the test and this process, removed
/// on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("evloop-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `data` to `rel` (creating directories) and returns it.
    fn file(&self, rel: &str, data: &[u8]) -> Vec<u8> {
        let path = self.0.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
        data.to_vec()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn server(root: &Path) -> Example {
    let root = root.to_str().unwrap();
    start_example("file_server", &["--addr", "127.0.0.1:0", "--root", root])
}

/// A kB figure from /proc/PID/status (`VmRSS`, `VmHWM`, ...).
fn proc_status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Runs a built example to completion (at most `DEADLINE`) and returns its output.
fn run_example(name: &str, args: &[&str]) -> Output {
    let child = Command::new(example_path(name))
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    recv(&rx).expect("wait for the example")
}

#[test]
fn small_files_come_back_byte_for_byte() {
    let dir = TempDir::new("fs-small");
    let files = [
        ("empty", dir.file("empty", b"")),
        ("one", dir.file("one", b"x")),
        (
            "sub/dir/random.bin",
            dir.file("sub/dir/random.bin", &random_bytes(100_000, 1)),
        ),
        (
            "with space.txt",
            dir.file("with space.txt", b"spaces are fine\n"),
        ),
        ("./big.bin", dir.file("big.bin", &random_bytes(3 << 20, 2))),
    ];
    let server = server(dir.path());
    let mut c = Client::new(server.addr);
    // Several requests, one after the other, on one connection.
    for (name, want) in &files {
        let got = c
            .get(name)
            .unwrap_or_else(|e| panic!("GET {name}: ERR {e}"));
        assert!(got == *want, "{name}: {} bytes differ", got.len());
    }
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let dir = TempDir::new("fs-pipelined");
    let a = dir.file("a", b"first file\n");
    let big = dir.file("big", &random_bytes(8 << 20, 3));
    let b = dir.file("b", b"second file\n");
    let server = server(dir.path());
    let mut c = Client::new(server.addr);
    // One write; the big file streams (and congests) while the lines after it wait.
    c.send(b"GET a\nGET missing\nGET big\nGET b\nGET a\n");
    assert_eq!(c.reply().unwrap(), a);
    assert_eq!(c.reply(), Err("not found".to_string()));
    assert!(c.reply().unwrap() == big, "big file differs");
    assert_eq!(c.reply().unwrap(), b);
    assert_eq!(c.reply().unwrap(), a);
}

#[test]
fn paths_out_of_the_root_are_refused_and_the_connection_goes_on() {
    let dir = TempDir::new("fs-confined");
    let root = dir.path().join("root");
    let ok = dir.file("root/ok.txt", b"inside\n");
    dir.file("secret.txt", b"outside\n");
    dir.file("root/a/inner.txt", b"in a\n");
    std::os::unix::fs::symlink(dir.path().join("secret.txt"), root.join("link-out")).unwrap();
    std::os::unix::fs::symlink(dir.path(), root.join("dir-out")).unwrap();
    std::os::unix::fs::symlink(root.join("ok.txt"), root.join("link-in")).unwrap();
    let fifo = Command::new("mkfifo").arg(root.join("fifo")).status();
    let server = server(&root);
    let mut c = Client::new(server.addr);
    let refused = [
        ("../secret.txt", "forbidden"),
        ("../x", "forbidden"),
        ("/etc/passwd", "forbidden"),
        ("a/../../secret.txt", "forbidden"),
        ("a/../ok.txt", "forbidden"), // any `..` is refused, even one that stays inside
        ("link-out", "forbidden"),
        ("dir-out/secret.txt", "forbidden"),
        ("a", "not a regular file"),
        (".", "not a regular file"),
        ("nope", "not found"),
        ("ok.txt/x", "not found"),
    ];
    for (path, reason) in refused {
        assert_eq!(c.get(path), Err(reason.to_string()), "GET {path}");
        assert_eq!(c.get("ok.txt").unwrap(), ok, "after GET {path}");
    }
    if fifo.is_ok_and(|s| s.success()) {
        assert_eq!(c.get("fifo"), Err("not a regular file".to_string()));
    }
    // A symlink that stays inside the root is followed.
    assert_eq!(c.get("link-in").unwrap(), ok);
    assert_eq!(c.get("a/inner.txt").unwrap(), b"in a\n");
}

#[test]
fn malformed_and_overlong_requests_get_err_and_the_connection_goes_on() {
    let dir = TempDir::new("fs-malformed");
    let ok = dir.file("ok", b"fine\n");
    let server = server(dir.path());
    let mut c = Client::new(server.addr);
    for bad in [
        &b"PUT x\n"[..],
        b"GET\n",
        b"GET \n",
        b"\n",
        b"get ok\n",
        b"GETok\n",
    ] {
        c.send(bad);
        let shown = String::from_utf8_lossy(bad);
        assert_eq!(c.reply(), Err("bad request".to_string()), "{shown:?}");
        assert_eq!(c.get("ok").unwrap(), ok, "after {shown:?}");
    }
    // 1 MiB without a newline: refused as soon as it passes the limit, not buffered.
    c.send(&vec![b'a'; 1 << 20]);
    assert_eq!(c.reply(), Err("request too long".to_string()));
    c.send(b"still the same line\n");
    assert_eq!(c.get("ok").unwrap(), ok);
    // The longest request line allowed (4096 bytes) is parsed.
    c.send(format!("GET {}\n", "x".repeat(4092)).as_bytes());
    assert_eq!(c.reply(), Err("cannot open".to_string())); // ENAMETOOLONG
}

#[test]
fn misbehaving_clients_do_not_disturb_a_download() {
    let dir = TempDir::new("fs-bad-clients");
    let file = dir.file("file", &random_bytes(4 << 20, 4));
    std::fs::File::create(dir.path().join("huge"))
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let server = server(dir.path());
    // Asks for 1 GiB and reads nothing.
    let mut stalled = client(server.addr);
    stalled.write_all(b"GET huge\n").unwrap();
    // Pipelines error replies it never reads, until the server stops reading from it.
    let flooder = client(server.addr);
    let flood = std::thread::spawn(move || {
        let mut flooder = flooder;
        flooder
            .set_write_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let lines = b"GET nope\n".repeat(10_000);
        let mut sent = 0;
        while sent < 64 << 20 && flooder.write_all(&lines).is_ok() {
            sent += lines.len();
        }
        (flooder, sent)
    });
    // Sends an endless line, and half a request.
    let mut babbler = client(server.addr);
    babbler.write_all(&vec![b'z'; 4 << 20]).unwrap();
    let mut half = client(server.addr);
    half.write_all(b"GET fi").unwrap();

    let started = Instant::now();
    let mut good = Client::new(server.addr);
    for _ in 0..5 {
        assert!(good.get("file").unwrap() == file, "download differs");
    }
    let elapsed = started.elapsed();
    let (_flooder, sent) = flood.join().unwrap();
    assert!(
        sent < 64 << 20,
        "the server never stopped reading the flooder"
    );
    assert!(elapsed < DEADLINE, "5 downloads of 4 MiB took {elapsed:?}");
    // Nobody's backlog was buffered whole.
    let hwm = proc_status_kb(server.child.id(), "VmHWM");
    assert!(hwm < 64 * 1024, "server peak RSS {hwm} kB");
}

/// 1 GiB of zeros (a sparse file) is streamed, every byte checked, while the server's peak
/// RSS stays small: it never holds more than a chunk and a queue. Takes 0.5 to 5 s in a
/// debug build on loopback, so it runs by default.
#[test]
fn sparse_1_gib_file_streams_in_little_memory() {
    const SIZE: u64 = 1 << 30;
    let dir = TempDir::new("fs-sparse");
    let f = std::fs::File::create(dir.path().join("sparse")).unwrap();
    f.set_len(SIZE).unwrap();
    let server = server(dir.path());
    let mut c = Client::new(server.addr);
    let started = Instant::now();
    c.send(b"GET sparse\n");
    let mut header = String::new();
    c.0.read_line(&mut header).unwrap();
    assert_eq!(header, format!("OK {SIZE}\n"));
    let zeros = vec![0u8; 256 * 1024];
    let mut buf = vec![0u8; zeros.len()];
    let mut total = 0u64;
    while total < SIZE {
        let n = c.0.read(&mut buf).expect("read body");
        assert!(n > 0, "EOF after {total} of {SIZE} bytes");
        assert!(buf[..n] == zeros[..n], "non-zero byte near offset {total}");
        total += n as u64;
    }
    let elapsed = started.elapsed();
    // Nothing extra was sent: the next reply comes right after.
    c.send(b"GET nope\n");
    assert_eq!(c.reply(), Err("not found".to_string()));
    let hwm = proc_status_kb(server.child.id(), "VmHWM");
    let rss = proc_status_kb(server.child.id(), "VmRSS");
    eprintln!("1 GiB in {elapsed:?}; server VmHWM {hwm} kB, VmRSS {rss} kB");
    assert!(hwm < 64 * 1024, "server peak RSS {hwm} kB");
    assert!(elapsed < Duration::from_secs(120), "took {elapsed:?}");
}

#[test]
fn file_client_downloads_to_disk() {
    let dir = TempDir::new("fs-client");
    let want = dir.file("root/data/file.bin", &random_bytes(5 << 20, 5));
    let server = server(&dir.path().join("root"));
    let out = dir.path().join("out.bin");
    let addr = server.addr.to_string();
    let args = [
        "--addr",
        &addr,
        "data/file.bin",
        "--out",
        out.to_str().unwrap(),
    ];
    let output = run_example("file_client", &args);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(stdout.contains("5242880 bytes"), "summary: {stdout}");
    assert!(
        std::fs::read(&out).unwrap() == want,
        "downloaded file differs"
    );
}

#[test]
fn file_client_reports_a_missing_file_and_a_refused_connection() {
    let dir = TempDir::new("fs-client-errors");
    let server = server(dir.path());
    let out = dir.path().join("out");
    let addr = server.addr.to_string();
    let output = run_example(
        "file_client",
        &["--addr", &addr, "nope", "--out", out.to_str().unwrap()],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{output:?}");
    assert!(
        stderr.contains("nope") && stderr.contains("not found"),
        "stderr: {stderr}"
    );
    assert!(!out.exists(), "no output file for a failed download");

    // A port nobody listens on: bind one, then free it.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = free.local_addr().unwrap().to_string();
    drop(free);
    let output = run_example(
        "file_client",
        &["--addr", &addr, "x", "--out", out.to_str().unwrap()],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{output:?}");
    assert!(stderr.contains("refused"), "stderr: {stderr}");
    assert!(!out.exists());
}

/// SIGTERM starts a graceful shutdown (`shutdown_on_signals`): a connected client is closed
/// with FIN, and the process exits cleanly.
#[test]
fn sigterm_closes_clients_and_exits() {
    let dir = TempDir::new("fs-sigterm");
    let ok = dir.file("ok", b"fine\n");
    let mut server = server(dir.path());
    let mut c = Client::new(server.addr);
    assert_eq!(c.get("ok").unwrap(), ok);
    sigterm(&server);
    let mut rest = Vec::new();
    c.0.read_to_end(&mut rest).expect("EOF, not a reset");
    assert!(rest.is_empty(), "{rest:?}");
    drop(c); // closed: the server need not linger for it
    exits_cleanly(&mut server);
}

/// Sends SIGTERM to the example.
fn sigterm(ex: &Example) {
    let pid = ex.child.id().to_string();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    assert!(kill.unwrap().success());
}

/// Waits, within the deadline, for the example to exit cleanly: its stderr closes, then
/// its status is success.
fn exits_cleanly(ex: &mut Example) {
    let end = std::time::Instant::now() + DEADLINE;
    loop {
        let left = end.saturating_duration_since(std::time::Instant::now());
        match ex.log.recv_timeout(left) {
            Ok(_) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(e) => panic!("still running {DEADLINE:?} after SIGTERM: {e}"),
        }
    }
    let status = ex.child.wait().unwrap();
    assert!(status.success(), "exited with {status}");
}
