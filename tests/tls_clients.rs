//! TLS against peers nobody here wrote: `openssl s_client` and Python's `ssl` module as
//! clients of an evloop TLS server (skipped, with a message, when the program is absent), and
//! an evloop client (`connect_tls`) against a plain blocking rustls server. TLS 1.3 and 1.2.
#![cfg(feature = "tls")]

mod support;

use evloop::tls::{client_config_der, rustls, server_config};
use evloop::{CloseReason, Config, ConnId, Context, EventLoop, Handler};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc::{Sender, channel};
use support::*;

/// A self-signed certificate for "localhost", as DER and as PEM files in a directory of its
/// own (removed on drop).
struct Cert {
    der: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    dir: PathBuf,
}

impl Cert {
    fn new(tag: &str) -> Cert {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let dir = std::env::temp_dir().join(format!("evloop-tls-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cert.pem"), c.cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), c.signing_key.serialize_pem()).unwrap();
        Cert {
            der: CertificateDer::from(c.cert.der().to_vec()),
            key: PrivateKeyDer::try_from(c.signing_key.serialize_der()).unwrap(),
            dir,
        }
    }
    fn cert_pem(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }
    fn key_pem(&self) -> PathBuf {
        self.dir.join("key.pem")
    }
}

impl Drop for Cert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Echoes whole lines; on the line "bye" it answers "bye" and closes (close_notify, FIN).
/// Reports every close.
struct LineEcho {
    tx: Sender<String>,
}

impl Handler for LineEcho {
    type Conn = ();
    fn on_data(
        &mut self,
        cx: &mut Context<'_, Self>,
        conn: ConnId,
        _: &mut (),
        input: &[u8],
    ) -> usize {
        let mut used = 0;
        while let Some(nl) = input[used..].iter().position(|&b| b == b'\n') {
            let line = &input[used..used + nl + 1];
            used += nl + 1;
            cx.send(conn, line).unwrap();
            if line == b"bye\n" {
                cx.close(conn);
                break;
            }
        }
        used
    }
    fn on_close(&mut self, _: &mut Context<'_, Self>, _: ConnId, _: (), reason: &CloseReason) {
        let _ = self.tx.send(format!("{reason:?}"));
    }
}

/// An evloop TLS server configured from the PEM files (the path a real server takes).
fn pem_server(
    cert: &Cert,
) -> (
    Running<LineEcho>,
    SocketAddr,
    std::sync::mpsc::Receiver<String>,
) {
    let (tx, rx) = channel();
    let mut config = Config::default();
    config.catch_panics = false;
    let mut el = EventLoop::with_config(LineEcho { tx }, config).unwrap();
    let tls = server_config(&cert.cert_pem(), &cert.key_pem()).unwrap();
    let l = el.listen_tls(localhost(), tls).unwrap();
    let addr = el.context().listener_addr(l).unwrap().as_inet().unwrap();
    (spawn(el), addr, rx)
}

/// Whether `program` can be started; prints why a test is skipped when not.
fn have(program: &str, version_arg: &str) -> bool {
    let ok = Command::new(program)
        .arg(version_arg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("SKIPPED: `{program}` is not installed here");
    }
    ok
}

/// What a finished child printed.
struct Output {
    status: std::process::ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` with `input` on its stdin (then closed) and collects its output; kills it if
/// it has not finished within `DEADLINE`.
fn run_with_deadline(cmd: &mut Command, input: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child.stdin.take().unwrap().write_all(input).unwrap(); // closed when dropped
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let (tx, rx) = channel();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        let _ = tx.send((true, s));
    });
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        let _ = tx2.send((false, s));
    });
    // Both pipes close when the child exits (or is killed).
    let (mut stdout, mut stderr) = (String::new(), String::new());
    for _ in 0..2 {
        match rx.recv_timeout(DEADLINE) {
            Ok((true, s)) => stdout = s,
            Ok((false, s)) => stderr = s,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{cmd:?} did not finish within {DEADLINE:?}; killed");
            }
        }
    }
    let status = child.wait().unwrap();
    Output {
        status,
        stdout,
        stderr,
    }
}

fn s_client(version: &str) {
    if !have("openssl", "version") {
        return;
    }
    let cert = Cert::new(&format!("openssl{version}"));
    let (server, addr, rx) = pem_server(&cert);
    let out = run_with_deadline(
        Command::new("openssl").args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            "localhost",
            "-verify_hostname",
            "localhost",
            "-CAfile",
            cert.cert_pem().to_str().unwrap(),
            "-verify_return_error",
            version,
            // Not -quiet: it hides "Verify return code". -ign_eof: stdin's end does not end
            // the session; the server's close_notify after "bye" does. -nocommands: a line
            // starting with Q, R or k is data, not a command.
            "-ign_eof",
            "-nocommands",
        ]),
        b"hello from openssl\nbye\n",
    );
    let context = format!("stdout:\n{}\nstderr:\n{}", out.stdout, out.stderr);
    assert!(out.status.success(), "{}\n{context}", out.status);
    assert!(
        out.stdout.contains("Verify return code: 0 (ok)"),
        "{context}"
    );
    let proto = if version == "-tls1_3" {
        "TLSv1.3"
    } else {
        "TLSv1.2"
    };
    assert!(
        out.stdout.contains(&format!("Protocol  : {proto}"))
            || out.stdout.contains(&format!("New, {proto}")),
        "{context}"
    );
    // The echo comes after the session information.
    let echoed = out.stdout.find("hello from openssl\nbye\n");
    let verified = out.stdout.find("Verify return code: 0 (ok)");
    assert!(
        echoed.is_some() && echoed > verified,
        "no echo after the handshake: {context}"
    );
    // The server closed after "bye", close_notify first: s_client prints "closed" on stdout
    // for a close_notify (a bare FIN would be "read:errno=0" on stderr).
    assert!(out.stdout.ends_with("closed\n"), "{context}");
    assert_eq!(recv(&rx), "Local");
    let el = server.stop();
    assert_eq!(el.stats().closed.tls, 0);
}

#[test]
fn openssl_s_client_talks_to_an_evloop_tls_server_over_tls13() {
    s_client("-tls1_3");
}

#[test]
fn openssl_s_client_talks_to_an_evloop_tls_server_over_tls12() {
    s_client("-tls1_2");
}

/// Python's ssl module: verify the certificate, send, read the echo, then `unwrap()`: our
/// close_notify, and it waits for the server's, which the server sends on seeing ours.
const PYTHON_CLIENT: &str = r#"
import socket, ssl, sys
port, cafile, version = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ctx = ssl.create_default_context(cafile=cafile)
ctx.verify_flags &= ~getattr(ssl, "VERIFY_X509_STRICT", 0)
v = ssl.TLSVersion.TLSv1_3 if version == "1.3" else ssl.TLSVersion.TLSv1_2
ctx.minimum_version = ctx.maximum_version = v
raw = socket.create_connection(("127.0.0.1", port), timeout=10)
tls = ctx.wrap_socket(raw, server_hostname="localhost")
msg = b"hello from python\n"
tls.sendall(msg)
got = b""
while len(got) < len(msg):
    chunk = tls.recv(4096)
    if not chunk:
        sys.exit("EOF before the echo: %r" % got)
    got += chunk
assert got == msg, got
print("version", tls.version())
plain = tls.unwrap()
print("unwrapped")
plain.close()
"#;

fn python(version: &str) {
    if !have("python3", "--version") {
        return;
    }
    let cert = Cert::new(&format!("python{version}"));
    let (server, addr, rx) = pem_server(&cert);
    let out = run_with_deadline(
        Command::new("python3").args([
            "-c",
            PYTHON_CLIENT,
            &addr.port().to_string(),
            cert.cert_pem().to_str().unwrap(),
            version,
        ]),
        b"",
    );
    let context = format!("stdout:\n{}\nstderr:\n{}", out.stdout, out.stderr);
    assert!(out.status.success(), "{}\n{context}", out.status);
    assert!(
        out.stdout.contains(&format!("version TLSv{version}")),
        "{context}"
    );
    assert!(out.stdout.contains("unwrapped"), "{context}");
    // Python's close_notify is the peer's end: on_peer_eof, close, our close_notify.
    assert_eq!(recv(&rx), "PeerClosed");
    server.stop();
}

#[test]
fn python_ssl_talks_to_an_evloop_tls_server_over_tls13() {
    python("1.3");
}

#[test]
fn python_ssl_talks_to_an_evloop_tls_server_over_tls12() {
    python("1.2");
}

// ---- An evloop client against a plain rustls server ----

/// A blocking rustls server on a thread for one connection: reads "ping\n", answers "pong\n"
/// and `bulk` bytes, then either waits for the client's close (`server_closes` false) or
/// sends close_notify and shuts its write side first. Reports how the client's end came.
fn rustls_server(
    cert: &Cert,
    tls12_only: bool,
    bulk: Vec<u8>,
    server_closes: bool,
) -> (SocketAddr, std::sync::mpsc::Receiver<String>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12_only {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der.clone()], cert.key.clone_key())
        .unwrap();
    let listener = TcpListener::bind(localhost()).unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let (sock, _) = listener.accept().unwrap();
        sock.set_read_timeout(Some(DEADLINE)).unwrap();
        sock.set_write_timeout(Some(DEADLINE)).unwrap();
        let conn = rustls::ServerConnection::new(Arc::new(config)).unwrap();
        let mut s = rustls::StreamOwned::new(conn, sock);
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\n") {
            s.read_exact(&mut byte).expect("the client's line");
            line.push(byte[0]);
        }
        let _ = tx.send(format!(
            "server got {}",
            String::from_utf8_lossy(&line).trim_end()
        ));
        let version = s.conn.protocol_version();
        let _ = tx.send(format!("server version {version:?}"));
        s.write_all(b"pong\n").unwrap();
        s.write_all(&bulk).unwrap();
        s.flush().unwrap();
        if server_closes {
            s.conn.send_close_notify();
            s.flush().unwrap();
            s.sock.shutdown(std::net::Shutdown::Write).unwrap();
        }
        let mut rest = Vec::new();
        let end = match s.read_to_end(&mut rest) {
            Ok(_) => format!("server saw a clean end after {} more bytes", rest.len()),
            Err(e) => format!("server saw {:?}: {e}", e.kind()),
        };
        let _ = tx.send(end);
    });
    (addr, rx)
}

/// Sends "ping\n" on open; collects `want` bytes, checks them, and closes (or waits for the
/// server's close when `wait_for_peer`). Reports what it saw.
struct Pinger {
    want: Vec<u8>,
    wait_for_peer: bool,
    tx: Sender<String>,
}

impl Handler for Pinger {
    type Conn = Vec<u8>;
    fn on_open(&mut self, cx: &mut Context<'_, Self>, conn: ConnId, _: &mut Vec<u8>) {
        cx.send(conn, b"ping\n").unwrap();
    }
    fn on_data(
        &mut self,
        cx: &mut Context<'_, Self>,
        conn: ConnId,
        got: &mut Vec<u8>,
        input: &[u8],
    ) -> usize {
        got.extend_from_slice(input);
        assert!(got.len() <= self.want.len(), "more than was sent");
        if got.len() == self.want.len() {
            assert!(*got == self.want, "the reply arrived altered");
            let _ = self.tx.send(format!("client got {} bytes", got.len()));
            if !self.wait_for_peer {
                cx.close(conn);
            }
        }
        input.len()
    }
    fn on_peer_eof(&mut self, cx: &mut Context<'_, Self>, conn: ConnId, got: &mut Vec<u8>) {
        let _ = self.tx.send(format!(
            "client saw the peer's end after {} bytes",
            got.len()
        ));
        cx.close(conn);
    }
    fn on_close(&mut self, _: &mut Context<'_, Self>, _: ConnId, _: Vec<u8>, reason: &CloseReason) {
        let _ = self.tx.send(format!("client closed: {reason:?}"));
    }
}

fn evloop_client_against_rustls(tls12_only: bool, server_closes: bool) {
    let cert = Cert::new(&format!("rustls-server-{tls12_only}-{server_closes}"));
    let bulk = random_bytes(4 << 20, 11);
    let (addr, server_rx) = rustls_server(&cert, tls12_only, bulk.clone(), server_closes);
    let mut want = b"pong\n".to_vec();
    want.extend_from_slice(&bulk);
    let (tx, rx) = channel();
    let mut config = Config::default();
    config.catch_panics = false;
    let pinger = Pinger {
        want,
        wait_for_peer: server_closes,
        tx,
    };
    let mut el = EventLoop::with_config(pinger, config).unwrap();
    let roots = client_config_der(vec![cert.der.clone()]).unwrap();
    el.context()
        .connect_tls(addr, roots, "localhost", Vec::new())
        .unwrap();
    let client = spawn(el);
    assert_eq!(recv(&server_rx), "server got ping");
    let version = if tls12_only { "TLSv1_2" } else { "TLSv1_3" };
    assert_eq!(recv(&server_rx), format!("server version Some({version})"));
    assert_eq!(recv(&rx), format!("client got {} bytes", 5 + bulk.len()));
    if server_closes {
        // close_notify, then FIN: the client's on_peer_eof; its close sends close_notify.
        assert_eq!(
            recv(&rx),
            format!("client saw the peer's end after {} bytes", 5 + bulk.len())
        );
        assert_eq!(recv(&rx), "client closed: PeerClosed");
    } else {
        assert_eq!(recv(&rx), "client closed: Local");
    }
    assert_eq!(
        recv(&server_rx),
        "server saw a clean end after 0 more bytes"
    );
    let el = client.stop();
    assert_eq!(el.stats().closed.tls, 0);
}

#[test]
fn an_evloop_client_talks_to_a_rustls_server_and_closes_with_close_notify() {
    evloop_client_against_rustls(false, false);
}

#[test]
fn an_evloop_client_sees_a_rustls_servers_close_notify_as_the_peers_end() {
    evloop_client_against_rustls(false, true);
}

#[test]
fn an_evloop_client_talks_tls12_to_a_rustls_server() {
    evloop_client_against_rustls(true, false);
}

/// The echo example over TLS, as the README shows it (`--tls-self-signed DIR`), with Python's
/// `ssl` as the client.
#[test]
fn the_echo_example_serves_tls_with_a_self_signed_certificate() {
    if !have("python3", "--version") {
        return;
    }
    // This test binary may have been built alone (`--test tls_clients`): build the example
    // with TLS too.
    let mut build = Command::new(env!("CARGO"));
    build.args(["build", "--quiet", "--features", "tls", "--example", "echo"]);
    build.current_dir(env!("CARGO_MANIFEST_DIR"));
    if !cfg!(debug_assertions) {
        build.arg("--release");
    }
    assert!(
        build.status().unwrap().success(),
        "cargo build --example echo"
    );
    let dir = std::env::temp_dir().join(format!("evloop-echo-tls-{}", std::process::id()));
    let echo = start_example(
        "echo",
        &[
            "--addr",
            "127.0.0.1:0",
            "--tls-self-signed",
            dir.to_str().unwrap(),
        ],
    );
    let out = run_with_deadline(
        Command::new("python3").args([
            "-c",
            PYTHON_CLIENT,
            &echo.addr.port().to_string(),
            dir.join("cert.pem").to_str().unwrap(),
            "1.3",
        ]),
        b"",
    );
    let context = format!("stdout:\n{}\nstderr:\n{}", out.stdout, out.stderr);
    assert!(out.status.success(), "{}\n{context}", out.status);
    assert!(out.stdout.contains("version TLSv1.3"), "{context}");
    assert!(out.stdout.contains("unwrapped"), "{context}");
    drop(echo);
    let _ = std::fs::remove_dir_all(dir);
}

/// file_server `--tls-cert/--tls-key` and file_client `--tls-ca`: a download over TLS
/// arrives whole.
#[test]
fn file_client_downloads_from_file_server_over_tls() {
    let mut build = Command::new(env!("CARGO"));
    build.args(["build", "--quiet", "--features", "tls"]);
    build.args(["--example", "file_server", "--example", "file_client"]);
    build.current_dir(env!("CARGO_MANIFEST_DIR"));
    if !cfg!(debug_assertions) {
        build.arg("--release");
    }
    assert!(
        build.status().unwrap().success(),
        "cargo build --example file_*"
    );
    let dir = std::env::temp_dir().join(format!("evloop-files-tls-{}", std::process::id()));
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    let content = random_bytes(3 << 20, 21);
    std::fs::write(root.join("data.bin"), &content).unwrap();
    let server = start_example(
        "file_server",
        &[
            "--addr",
            "127.0.0.1:0",
            "--root",
            root.to_str().unwrap(),
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let out = dir.join("got.bin");
    let done = run_with_deadline(
        Command::new(example_path("file_client")).args([
            "--addr",
            &server.addr.to_string(),
            "--tls-ca",
            cert.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "data.bin",
        ]),
        b"",
    );
    assert!(done.status.success(), "{}: {}", done.status, done.stderr);
    assert!(std::fs::read(&out).unwrap() == content, "the file differs");
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}
