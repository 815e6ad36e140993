//! Issue 5, item 5, and issue 12: the file_server and file_client examples, run as child
//! processes and driven over loopback with blocking clients that have deadlines. Tests that
//! depend on how bodies are sent run against both paths: sendfile (the default) and
//! `--copy`.

mod support;

use std::io::{BufRead, Read, Write};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use support::file_client::*;
use support::*;

fn server(root: &Path) -> Example {
    file_server(root, &[])
}

/// The two ways bodies leave: the default (sendfile) and `--copy`.
const MODES: [&[&str]; 2] = [&[], &["--copy"]];

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
        // Just under and at the size where sendfile takes over from memory.
        ("small.bin", dir.file("small.bin", &random_bytes(65_535, 6))),
        ("edge.bin", dir.file("edge.bin", &random_bytes(65_536, 7))),
        ("./big.bin", dir.file("big.bin", &random_bytes(3 << 20, 2))),
    ];
    for mode in MODES {
        let server = file_server(dir.path(), mode);
        let mut c = Client::new(server.addr);
        // Several requests, one after the other, on one connection.
        for (name, want) in &files {
            let got = c
                .get(name)
                .unwrap_or_else(|e| panic!("{mode:?} GET {name}: ERR {e}"));
            assert!(got == *want, "{mode:?} {name}: {} bytes differ", got.len());
        }
    }
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let dir = TempDir::new("fs-pipelined");
    let a = dir.file("a", b"first file\n");
    let big = dir.file("big", &random_bytes(8 << 20, 3));
    let b = dir.file("b", b"second file\n");
    for mode in MODES {
        let server = file_server(dir.path(), mode);
        let mut c = Client::new(server.addr);
        // One write; the big file streams (and congests) while the lines after it wait.
        c.send(b"GET a\nGET missing\nGET big\nGET b\nGET big\nGET a\n");
        assert_eq!(c.reply().unwrap(), a, "{mode:?}");
        assert_eq!(c.reply(), Err("not found".to_string()), "{mode:?}");
        assert!(c.reply().unwrap() == big, "{mode:?}: big file differs");
        assert_eq!(c.reply().unwrap(), b, "{mode:?}");
        assert!(c.reply().unwrap() == big, "{mode:?}: big file differs");
        assert_eq!(c.reply().unwrap(), a, "{mode:?}");
    }
}

/// A root with files, symlinks in and out, a directory and a FIFO; the paths a client may
/// not have, and why.
fn confinement_fixture(dir: &TempDir) -> std::path::PathBuf {
    let root = dir.path().join("root");
    dir.file("root/ok.txt", b"inside\n");
    dir.file("secret.txt", b"outside\n");
    dir.file("root/a/inner.txt", b"in a\n");
    std::os::unix::fs::symlink(dir.path().join("secret.txt"), root.join("link-out")).unwrap();
    std::os::unix::fs::symlink("../secret.txt", root.join("rel-link-out")).unwrap();
    std::os::unix::fs::symlink(dir.path(), root.join("dir-out")).unwrap();
    std::os::unix::fs::symlink("ok.txt", root.join("link-in")).unwrap();
    std::os::unix::fs::symlink("a", root.join("dir-in")).unwrap();
    // An absolute symlink, even to a file inside, would be resolved from outside the root.
    std::os::unix::fs::symlink(root.join("ok.txt"), root.join("abs-link-in")).unwrap();
    std::os::unix::fs::symlink("/proc/self/root/etc/passwd", root.join("magic")).unwrap();
    std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
    let fifo = Command::new("mkfifo").arg(root.join("fifo")).status();
    assert!(fifo.is_ok_and(|s| s.success()), "mkfifo");
    root
}

/// Refused in either way of resolving, and the connection goes on.
const REFUSED: [(&str, &str); 20] = [
    ("../secret.txt", "forbidden"),
    ("../x", "forbidden"),
    ("/etc/passwd", "forbidden"),
    ("a/../../secret.txt", "forbidden"),
    ("a/../ok.txt", "forbidden"), // any `..` is refused, even one that stays inside
    ("link-out", "forbidden"),
    ("rel-link-out", "forbidden"),
    ("dir-out/secret.txt", "forbidden"),
    ("abs-link-in", "forbidden"),
    ("magic", "forbidden"),
    ("loop", "forbidden"),
    ("a", "not a regular file"),
    ("a/", "not a regular file"),
    (".", "not a regular file"),
    ("fifo", "not a regular file"),
    ("nope", "not found"),
    ("ok.txt/x", "not found"),
    ("ok.txt/", "not found"),
    ("ok.txt/.", "not found"),
    ("a/nope", "not found"),
];

#[test]
fn paths_out_of_the_root_are_refused_and_the_connection_goes_on() {
    let dir = TempDir::new("fs-confined");
    let root = confinement_fixture(&dir);
    let server = file_server(&root, &["--resolve", "beneath"]);
    let mut c = Client::new(server.addr);
    for (path, reason) in REFUSED {
        assert_eq!(c.get(path), Err(reason.to_string()), "GET {path}");
        assert_eq!(c.get("ok.txt").unwrap(), b"inside\n", "after GET {path}");
    }
    // A relative symlink that stays inside the root is followed, to a file or a directory.
    assert_eq!(c.get("link-in").unwrap(), b"inside\n");
    assert_eq!(c.get("dir-in/inner.txt").unwrap(), b"in a\n");
    assert_eq!(c.get("a/inner.txt").unwrap(), b"in a\n");
    assert_eq!(c.get("./a//inner.txt").unwrap(), b"in a\n");
}

/// The fallback where openat2 is missing: one `openat(O_NOFOLLOW)` per component from the
/// root's descriptor refuses the same paths, and every symlink, even one that stays inside.
#[test]
fn the_walking_fallback_refuses_the_same_paths_and_every_symlink() {
    let dir = TempDir::new("fs-confined-walk");
    let root = confinement_fixture(&dir);
    let server = file_server(&root, &["--resolve", "walk"]);
    let mut c = Client::new(server.addr);
    for (path, reason) in REFUSED {
        assert_eq!(c.get(path), Err(reason.to_string()), "GET {path}");
        assert_eq!(c.get("ok.txt").unwrap(), b"inside\n", "after GET {path}");
    }
    assert_eq!(c.get("link-in"), Err("forbidden".to_string()));
    assert_eq!(c.get("dir-in/inner.txt"), Err("forbidden".to_string()));
    assert_eq!(c.get("a/inner.txt").unwrap(), b"in a\n");
    assert_eq!(c.get("./a//inner.txt").unwrap(), b"in a\n");
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
    dir.sparse("huge", 1 << 30);
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
    dir.sparse("sparse", SIZE);
    for mode in MODES {
        let server = file_server(dir.path(), mode);
        let mut c = Client::new(server.addr);
        let started = Instant::now();
        c.send(b"GET sparse\n");
        assert_eq!(c.header(), format!("OK {SIZE}"));
        let zeros = vec![0u8; 256 * 1024];
        let mut buf = vec![0u8; zeros.len()];
        let mut total = 0u64;
        while total < SIZE {
            let want = buf.len().min((SIZE - total) as usize);
            let n = c.0.read(&mut buf[..want]).unwrap_or_else(|e| {
                let t = started.elapsed();
                panic!("{mode:?}: read after {total} of {SIZE} bytes, {t:?}: {e}")
            });
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
        eprintln!("{mode:?}: 1 GiB in {elapsed:?}; server VmHWM {hwm} kB, VmRSS {rss} kB");
        assert!(hwm < 64 * 1024, "{mode:?}: server peak RSS {hwm} kB");
        assert!(elapsed < Duration::from_secs(120), "took {elapsed:?}");
    }
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
    assert!(
        !dir.path().join("out.bin.part").exists(),
        "the .part file stayed"
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

/// A server that announces 1,000,000 bytes, sends 1,000 and goes silent (and one that
/// never answers at all): file_client gives up after `--timeout` with a clear error and
/// exit status 1, and leaves nothing under the target name, nor its `.part` file. (It used
/// to wait forever.)
#[test]
fn file_client_gives_up_on_a_server_that_stalls() {
    let dir = TempDir::new("fs-client-stall");
    for (reply, shown) in [
        (&b"OK 1000000\n"[..], "mid-file"),
        (b"", "before the header"),
    ] {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stall = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(DEADLINE)).unwrap();
            let mut r = std::io::BufReader::new(s);
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let mut s = r.into_inner();
            if !reply.is_empty() {
                s.write_all(reply).unwrap();
                s.write_all(&[7; 1000]).unwrap();
            }
            s // held open, silent, until the test ends
        });
        let out = dir.path().join("stalled.bin");
        let started = Instant::now();
        let args = ["--addr", &addr, "f", "--out", out.to_str().unwrap()];
        let output = run_example("file_client", &[&args[..], &["--timeout", "0.5"]].concat());
        let took = started.elapsed();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{shown}: {output:?}");
        assert!(stderr.contains("timed out"), "{shown}: stderr {stderr}");
        if !reply.is_empty() {
            assert!(
                stderr.contains("after 1000 of 1000000 bytes"),
                "stderr {stderr}"
            );
        }
        assert!(
            took >= Duration::from_millis(500),
            "{shown}: gave up after {took:?}"
        );
        assert!(
            !out.exists(),
            "{shown}: a partial file under the target name"
        );
        assert!(
            !dir.path().join("stalled.bin.part").exists(),
            "{shown}: .part left"
        );
        drop(stall.join().unwrap());
    }
}

/// SIGTERM starts a graceful shutdown: a connected client is closed with FIN, and the
/// process exits cleanly.
#[test]
fn sigterm_closes_clients_and_exits() {
    let dir = TempDir::new("fs-sigterm");
    let ok = dir.file("ok", b"fine\n");
    for mode in MODES {
        let mut server = file_server(dir.path(), mode);
        let mut c = Client::new(server.addr);
        assert_eq!(c.get("ok").unwrap(), ok);
        signal(&server, "TERM");
        let mut rest = Vec::new();
        c.0.read_to_end(&mut rest).expect("EOF, not a reset");
        assert!(rest.is_empty(), "{rest:?}");
        drop(c); // closed: the server need not linger for it
        let (status, _) = wait_exit(&mut server, DEADLINE);
        assert!(status.success(), "{mode:?}: exited with {status}");
    }
}

/// Four 256 MiB downloads (sparse files), SIGTERM when each is under way: every client
/// gets its whole file, then EOF, and the server exits cleanly after the last one. (They
/// used to stop at about 28 MiB each with a clean FIN.) The deadline is long so a slow
/// machine cannot cut them; the next test has a short one.
#[test]
fn sigterm_lets_every_download_in_flight_finish() {
    const SIZE: u64 = 256 << 20;
    let dir = TempDir::new("fs-sigterm-finish");
    for i in 0..4 {
        dir.sparse(&format!("big{i}"), SIZE);
    }
    for mode in MODES {
        let args = [mode, &["--shutdown-deadline", "60"]].concat();
        let mut server = file_server(dir.path(), &args);
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let clients: Vec<_> = (0..4)
            .map(|i| {
                let (addr, started) = (server.addr, started_tx.clone());
                std::thread::spawn(move || {
                    let mut c = Client::new(addr);
                    c.send(format!("GET big{i}\n").as_bytes());
                    assert_eq!(c.header(), format!("OK {SIZE}"));
                    // 1 MiB in, then say so and read the rest.
                    let mut first = vec![0u8; 1 << 20];
                    c.0.read_exact(&mut first).unwrap();
                    assert!(first.iter().all(|&b| b == 0));
                    started.send(()).unwrap();
                    read_body(&mut c.0, SIZE - first.len() as u64)
                })
            })
            .collect();
        for _ in 0..4 {
            recv(&started_rx);
        }
        let t = Instant::now();
        signal(&server, "TERM");
        for (i, c) in clients.into_iter().enumerate() {
            let end = c.join().expect("client");
            assert_eq!(end, BodyEnd::WholeThenEof, "{mode:?}: download {i}");
        }
        let (status, log) = wait_exit(&mut server, DEADLINE);
        assert!(status.success(), "{mode:?}: exited with {status}");
        assert!(
            !log.iter().any(|l| l.contains("shutdown deadline")),
            "{mode:?}: {log:#?}"
        );
        eprintln!(
            "{mode:?}: 4 x 256 MiB finished {:?} after SIGTERM",
            t.elapsed()
        );
    }
}

/// The same four downloads, but their clients stop reading and the deadline is 0.3 s:
/// each connection is reset at the deadline, and a client that reads on gets what was in
/// flight and then ECONNRESET, never a clean EOF after part of the file.
#[test]
fn sigterm_deadline_resets_unfinished_downloads() {
    const SIZE: u64 = 256 << 20;
    let dir = TempDir::new("fs-sigterm-cut");
    dir.sparse("big", SIZE);
    for mode in MODES {
        let args = [mode, &["--shutdown-deadline", "0.3"]].concat();
        let mut server = file_server(dir.path(), &args);
        let mut clients: Vec<Client> = (0..4)
            .map(|_| {
                let mut c = Client::new(server.addr);
                c.send(b"GET big\n");
                assert_eq!(c.header(), format!("OK {SIZE}"));
                let mut first = vec![0u8; 1 << 20];
                c.0.read_exact(&mut first).unwrap();
                c
            })
            .collect();
        // An idle client too: it gets a clean EOF.
        let mut idle = Client::new(server.addr);
        assert_eq!(idle.get("nope"), Err("not found".to_string()));
        signal(&server, "TERM");
        let (status, log) = wait_exit(&mut server, DEADLINE);
        assert!(status.success(), "{mode:?}: exited with {status}");
        assert!(
            log.iter().any(|l| l.contains("shutdown deadline")),
            "{mode:?}: {log:#?}"
        );
        for (i, c) in clients.iter_mut().enumerate() {
            match read_body(&mut c.0, SIZE - (1 << 20)) {
                BodyEnd::Reset(n) => assert!(n < SIZE, "{mode:?}: {i}: {n}"),
                end => panic!("{mode:?}: download {i}: {end:?}, not a reset"),
            }
        }
        let mut rest = Vec::new();
        idle.0.read_to_end(&mut rest).expect("the idle client: EOF");
        assert!(rest.is_empty());
    }
}

/// The state (`st`, hex) of the loopback TCP socket from `local` to `remote` in
/// /proc/net/tcp (IPv4 only), if it exists.
fn tcp_state(local: std::net::SocketAddr, remote: std::net::SocketAddr) -> Option<u8> {
    let hex = |a: std::net::SocketAddr| match a {
        std::net::SocketAddr::V4(v4) => {
            format!(
                "{:08X}:{:04X}",
                u32::from_le_bytes(v4.ip().octets()),
                v4.port()
            )
        }
        _ => unreachable!("IPv4 only"),
    };
    let (l, r) = (hex(local), hex(remote));
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f[1] == l && f[2] == r).then(|| u8::from_str_radix(f[3], 16).unwrap())
    })
}

/// A reader that has not taken a 3 MiB reply when the server's loop has handed all of it to
/// the kernel: the request timeout then finds the connection idle and closes it with FIN
/// (after what the kernel still holds), so the reader, once it reads, gets the whole file
/// and then EOF; not a reset that would throw the kernel's tail away.
#[test]
fn an_idle_timeout_after_a_reply_never_cuts_its_tail() {
    const SIZE: usize = 3 << 20;
    let dir = TempDir::new("fs-idle-tail");
    let want = dir.file("f", &random_bytes(SIZE, 8));
    for mode in MODES {
        let args = [mode, &["--request-timeout", "0.3"]].concat();
        let ex = file_server(dir.path(), &args);
        let mut c = Client::new(ex.addr);
        c.send(b"GET f\n");
        let me = c.0.get_ref().local_addr().unwrap();
        // Wait (bounded) until the server's socket leaves ESTABLISHED (1): FIN_WAIT1 after
        // a close with bytes this reader has not taken yet (or gone, after a reset).
        let end = Instant::now() + DEADLINE;
        while tcp_state(ex.addr, me) == Some(1) {
            assert!(Instant::now() < end, "{mode:?}: the server never closed");
            std::thread::yield_now();
        }
        assert_eq!(tcp_state(ex.addr, me), Some(4), "{mode:?}: not FIN_WAIT1");
        assert_eq!(c.reply().unwrap(), want, "{mode:?}");
        let mut rest = Vec::new();
        c.0.read_to_end(&mut rest).expect("EOF, not a reset");
        assert!(rest.is_empty(), "{mode:?}: {} more bytes", rest.len());
    }
}

/// `printf 'GET big\nGET a\n' | nc -N`: the client shuts its write side right after its
/// requests; the server answers both in full, then closes with FIN.
#[test]
fn a_half_closed_client_gets_every_reply_in_full() {
    let dir = TempDir::new("fs-half-close");
    let big = dir.file("big", &random_bytes(16 << 20, 10));
    let a = dir.file("a", b"after the big one\n");
    for mode in MODES {
        let ex = file_server(dir.path(), mode);
        let mut c = Client::new(ex.addr);
        c.send(b"GET big\nGET a\n");
        c.0.get_ref().shutdown(std::net::Shutdown::Write).unwrap();
        assert!(c.reply().unwrap() == big, "{mode:?}: big file differs");
        assert_eq!(c.reply().unwrap(), a, "{mode:?}");
        let mut rest = Vec::new();
        c.0.read_to_end(&mut rest).expect("EOF, not a reset");
        assert!(rest.is_empty(), "{mode:?}");
    }
}
