//! The echo example as a user runs it: TCP and UDP on one port, `--unix`, `--idle-timeout`,
//! `--max-conns`, `--help` and a bad flag, and `--threads 2` (both loops serve, SIGTERM
//! stops both without losing a byte). Started as a real process over real sockets. UDP
//! reflection and `--udp-rate` are in tests/adversarial_chat.rs.

mod support;

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};
use support::*;

fn temp_sock(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("evloop-echo-{}-{name}.sock", std::process::id()))
}

#[test]
fn echoes_tcp_udp_and_unix_and_limits_connections() {
    let path = temp_sock("limits");
    let p = path.to_str().unwrap();
    let echo = start_example(
        "echo",
        &["--addr", "127.0.0.1:0", "--unix", p, "--max-conns", "2"],
    );
    // TCP.
    let mut tcp = client(echo.addr);
    assert_eq!(round_trip(&mut tcp, b"over tcp\n"), b"over tcp\n");
    // UDP on the same port.
    let udp = UdpSocket::bind(localhost()).unwrap();
    udp.set_read_timeout(Some(DEADLINE)).unwrap();
    udp.send_to(b"over udp", echo.addr).unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = udp.recv_from(&mut buf).unwrap();
    assert_eq!((&buf[..n], from), (&b"over udp"[..], echo.addr));
    // Unix: the log line for it comes after the TCP one.
    recv_until(&echo.log, |l: &String| l.contains("unix:"));
    let mut unix = UnixStream::connect(&path).unwrap();
    unix.set_read_timeout(Some(DEADLINE)).unwrap();
    unix.write_all(b"over unix").unwrap();
    let mut back = [0u8; 9];
    unix.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"over unix");
    // Two are open: a third is told and closed; the first two keep working.
    let mut third = client(echo.addr);
    let mut refusal = Vec::new();
    third.read_to_end(&mut refusal).unwrap();
    assert_eq!(refusal, b"ERR server full\n");
    assert_eq!(round_trip(&mut tcp, b"still here"), b"still here");
    drop(echo);
    let _ = std::fs::remove_file(&path);
}

#[test]
fn idle_connections_are_closed_after_the_timeout() {
    let echo = start_example("echo", &["--addr", "127.0.0.1:0", "--idle-timeout", "0.3"]);
    let mut c = client(echo.addr);
    assert_eq!(round_trip(&mut c, b"hi"), b"hi");
    let quiet_since = Instant::now();
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap(); // EOF from the server, within the read deadline
    let idle = quiet_since.elapsed();
    assert!(rest.is_empty());
    assert!(
        idle >= Duration::from_millis(250),
        "closed too early: {idle:?}"
    );
}

#[test]
fn help_prints_usage_and_bad_flags_exit_2() {
    let help = std::process::Command::new(example_path("echo"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).starts_with("usage: echo"));
    let bad = std::process::Command::new(example_path("echo"))
        .args(["--max-conns", "many"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--max-conns many"));
}

/// `--threads 2` (and with `--round-robin`): 100 connections, spread over both loops (each
/// loop's count is in the log at exit), each echoed; one more connection has megabytes in
/// flight when SIGTERM comes. Every connection then ends with EOF (not a reset), the one in
/// flight got an exact prefix of what it sent, the process exits 0, and the clients received
/// exactly the bytes the loops' summed stats say were sent: none lost.
#[test]
fn threads_serve_100_connections_and_sigterm_loses_no_byte() {
    for extra in [&[][..], &["--round-robin"][..]] {
        let mut args = vec!["--addr", "127.0.0.1:0", "--threads", "2"];
        args.extend_from_slice(extra);
        let mut echo = start_example("echo", &args);
        let mut conns: Vec<TcpStream> = (0..100).map(|_| client(echo.addr)).collect();
        let mut received = 0;
        for (i, c) in conns.iter_mut().enumerate() {
            let msg = format!("hello {i}\n");
            assert_eq!(round_trip(c, msg.as_bytes()), msg.as_bytes());
            received += msg.len();
        }
        // In flight: 8 MiB written by a thread while nothing is read, until 64 KiB came back.
        let big = random_bytes(8 << 20, 3);
        let mut s = client(echo.addr);
        let writer = {
            let (mut w, big) = (s.try_clone().unwrap(), big.clone());
            std::thread::spawn(move || {
                let _ = w.write_all(&big); // refused once the server has closed: fine
                let _ = w.shutdown(std::net::Shutdown::Write);
            })
        };
        let mut got = vec![0; 64 * 1024];
        s.read_exact(&mut got).unwrap();
        let pid = echo.child.id().to_string();
        let kill = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status();
        assert!(kill.unwrap().success());
        s.read_to_end(&mut got).expect("EOF, not a reset");
        assert!(got == big[..got.len()], "not a prefix of what was sent");
        received += got.len();
        for mut c in conns {
            assert!(read_to_end(&mut c).expect("EOF, not a reset").is_empty());
        }
        writer.join().unwrap();
        // The log to the end: each loop's count, then the summed stats.
        let mut log = Vec::new();
        let end = Instant::now() + DEADLINE;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match echo.log.recv_timeout(left) {
                Ok(line) => log.push(line),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                Err(e) => panic!("still running {DEADLINE:?} after SIGTERM: {e}"),
            }
        }
        let status = echo.child.wait().unwrap();
        assert!(status.success(), "exited with {status}: {log:#?}");
        let accepted: Vec<u64> = log
            .iter()
            .filter_map(|l| l.split(": accepted ").nth(1))
            .filter_map(|rest| rest.split(',').next()?.parse().ok())
            .collect();
        assert_eq!(accepted.len(), 2, "{log:#?}");
        assert!(
            accepted.iter().all(|&n| n > 0),
            "a loop served nobody: {accepted:?}"
        );
        assert_eq!(accepted.iter().sum::<u64>(), 101);
        let stats = log
            .iter()
            .find(|l| l.contains("echo stopped"))
            .expect("stats");
        let sent: usize = stats
            .split("bytes_out: ")
            .nth(1)
            .and_then(|rest| rest.split(',').next()?.parse().ok())
            .expect("bytes_out");
        assert_eq!(
            sent, received,
            "{extra:?}: sent {sent}, received {received}"
        );
        eprintln!(
            "echo --threads 2 {extra:?}: loops accepted {accepted:?}, {sent} bytes, none lost"
        );
    }
}
