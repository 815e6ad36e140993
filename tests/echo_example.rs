//! The echo example as a user runs it: TCP and UDP on one port, `--unix`, `--idle-timeout`,
//! `--max-conns`, `--help` and a bad flag. Started as a real process over real sockets.

mod support;

use std::io::{Read, Write};
use std::net::UdpSocket;
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
