//! Issue 7, item 9: bad input to the example servers, as real processes. What tests/chat.rs
//! and tests/file_server.rs already cover is not repeated: chat's 5 KiB line, invalid UTF-8,
//! NUL, escape sequences, CR and C1 controls, unknown commands and a slow consumer among 20
//! (`bad_input_gets_err_and_the_connection_stays`, `slow_consumer_is_cut_off_...`); the file
//! server's `..`, absolute paths, symlinks out of the root, FIFOs, malformed verbs, a 1 MiB
//! request line, and stalled, flooding and babbling clients next to a download
//! (`paths_out_of_the_root_...`, `malformed_and_overlong_...`, `misbehaving_clients_...`).
//!
//! Added here: chat lines of 1 MiB (with and without their newline) and at the limit,
//! a line and a command dripped one byte at a time (with a UTF-8 character split across
//! bytes), a slow consumer among 50 clients; file server traversal spellings (percent- and
//! backslash-encoded, `//`, `./..`), NUL and non-UTF-8 paths, CRLF, 1 MiB of random
//! garbage lines, and a dripped request, all while another client downloads. In each, the
//! other clients see nothing of it.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::chat_user::User;
use support::file_client::Client;
use support::*;

/// Builds the two examples once per test binary (see `support::build_examples`).
fn build_examples() {
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| support::build_examples(&["chat", "file_server"]));
}

// ---------------------------------------------------------------------------------------------
// Chat.

fn chat() -> Example {
    build_examples();
    start_example("chat", &["--addr", "127.0.0.1:0"])
}

/// 1 MiB lines: with the newline, one ERR; without it, one ERR as soon as the limit is
/// passed, and the rest of the line (however much more comes) is dropped up to its
/// newline. A line of exactly 4096 bytes passes, one of 4097 does not. Bob, in the room,
/// sees only the lines that passed.
#[test]
fn chat_megabyte_lines_are_refused_once_and_the_room_sees_nothing() {
    let ex = chat();
    let mut alice = User::join(ex.addr, "alice");
    let mut bob = User::join(ex.addr, "bob");
    alice.skip_until("* guest2 is now bob");

    let mut huge = vec![b'x'; 1 << 20];
    huge.push(b'\n');
    alice.send(&huge);
    alice.expect("ERR line longer than 4096 bytes");
    alice.say("after one");
    bob.expect("[alice] after one");

    // Without its newline: refused once, and 3 more MiB of the same line change nothing.
    alice.send(&vec![b'y'; 1 << 20]);
    alice.expect("ERR line longer than 4096 bytes");
    for _ in 0..3 {
        alice.send(&vec![b'y'; 1 << 20]);
    }
    alice.send(b"end of the long line\n");
    alice.say("after two");
    bob.expect("[alice] after two");

    // The limit is on the line alice sends: 4096 bytes pass, 4097 do not.
    let at_limit = "z".repeat(4096);
    alice.say(&at_limit);
    bob.expect(&format!("[alice] {at_limit}"));
    alice.say(&"z".repeat(4097));
    alice.expect("ERR line longer than 4096 bytes");
    alice.say("/who");
    alice.expect("* users: alice bob");
    bob.say("done");
    alice.expect("[bob] done");
    // Nothing else reached bob: his next line is the one alice sends now.
    alice.say("last");
    bob.expect("[alice] last");
}

/// A client that drips a whole line one byte at a time (each byte its own TCP segment),
/// pacing itself by the server's replies to another client's `/who`: the room gets the
/// line once and whole, including a two-byte UTF-8 character split across two segments,
/// and a dripped command works.
#[test]
fn chat_line_dripped_byte_by_byte_arrives_whole_once() {
    let ex = chat();
    let mut drip = User::join(ex.addr, "drip");
    let mut bob = User::join(ex.addr, "bob");
    let mut carol = User::join(ex.addr, "carol");
    drip.skip_until("* guest3 is now carol");
    bob.skip_until("* guest3 is now carol");
    // Returns what carol heard besides her /who replies.
    let drip_bytes = |drip: &mut User, carol: &mut User, bytes: &[u8]| {
        let mut heard = Vec::new();
        for &b in bytes {
            drip.send(&[b]);
            // A round trip through the loop between bytes: the gap is the server's reply.
            carol.say("/who");
            loop {
                let line = carol.line();
                if line.starts_with("* users: ") {
                    break;
                }
                heard.push(line);
            }
        }
        heard
    };
    let line = "caf\u{e9} au lait, typed one byte at a time";
    let heard = drip_bytes(&mut drip, &mut carol, format!("{line}\n").as_bytes());
    assert_eq!(heard, [format!("[drip] {line}")]);
    bob.expect(&format!("[drip] {line}"));
    let heard = drip_bytes(&mut drip, &mut carol, b"/nick dripper\r\n");
    assert_eq!(heard, ["* drip is now dripper"]);
    drip.expect("* you are now dripper");
    bob.expect("* drip is now dripper");
    // Nothing else: the next lines bob and carol get are these.
    drip.say("plain");
    bob.expect("[dripper] plain");
    carol.expect("[dripper] plain");
}

/// 50 clients: a sender, 48 readers, and one slow consumer that stops reading. The slow
/// one is cut off at its output limit; every reader gets every line, in order, each batch
/// promptly.
#[test]
fn chat_slow_consumer_among_50_clients() {
    const READERS: usize = 48;
    const BATCHES: usize = 12;
    const PER_BATCH: usize = 64;
    let pad = "x".repeat(1000);
    let text = move |i: usize| format!("{i:05} {pad}");
    let ex = chat();
    let mut readers: Vec<User> = (0..READERS)
        .map(|i| User::join(ex.addr, &format!("r{i}")))
        .collect();
    let mut sender = User::join(ex.addr, "sender");
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&ex.addr.into()).unwrap();
    let mut slow = User::from_stream(sock.into());
    slow.line();
    slow.say("/nick slow");
    slow.skip_until("* you are now slow");

    let (tx, rx) = mpsc::channel();
    let threads: Vec<_> = readers
        .drain(..)
        .enumerate()
        .map(|(n, mut u)| {
            let (tx, text) = (tx.clone(), text.clone());
            std::thread::spawn(move || {
                let mut i = 0;
                while i < BATCHES * PER_BATCH {
                    let line = u.line();
                    if line.starts_with("* ") {
                        continue;
                    }
                    assert_eq!(line, format!("[sender] {}", text(i)), "r{n}");
                    i += 1;
                    if i % PER_BATCH == 0 {
                        tx.send(n).unwrap();
                    }
                }
                u
            })
        })
        .collect();
    drop(tx);
    let prompt = Duration::from_secs(5);
    let started = Instant::now();
    for batch in 0..BATCHES {
        let mut bytes = Vec::new();
        for i in batch * PER_BATCH..(batch + 1) * PER_BATCH {
            bytes.extend_from_slice(format!("{}\n", text(i)).as_bytes());
        }
        sender.send(&bytes);
        for _ in 0..READERS {
            rx.recv_timeout(prompt)
                .unwrap_or_else(|e| panic!("batch {batch} not delivered in {prompt:?}: {e}"));
        }
    }
    let took = started.elapsed();
    let _readers: Vec<User> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    sender.skip_until("* slow left");
    let mut got = 0;
    loop {
        let mut line = String::new();
        match slow.r.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) if line.starts_with("* ") => {}
            Ok(_) if !line.ends_with('\n') => break, // cut mid-line
            Ok(_) => got += 1,
        }
    }
    assert!(
        got < BATCHES * PER_BATCH,
        "the slow one got all {got} lines"
    );
    eprintln!(
        "chat: {} lines of 1 KB to {READERS} readers in {took:?}; the slow one got {got} \
         before it was cut",
        BATCHES * PER_BATCH
    );
}

// ---------------------------------------------------------------------------------------------
// File server.

/// A directory for the served root, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("evloop-adv-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn file(&self, rel: &str, data: &[u8]) -> Vec<u8> {
        std::fs::write(self.0.join(rel), data).unwrap();
        data.to_vec()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn file_server(root: &Path) -> Example {
    build_examples();
    let root = root.to_str().unwrap();
    start_example("file_server", &["--addr", "127.0.0.1:0", "--root", root])
}

/// While a second client downloads a 2 MiB file over and over (every byte checked), one
/// client tries traversal spellings, NUL and non-UTF-8 paths, CRLF, paths at the length
/// limit, 1 MiB of random garbage lines (one ERR per line, read by a thread while it is
/// written), and a request dripped one byte at a time; after each, its next GET works.
#[test]
fn file_server_bad_requests_do_not_disturb_a_download() {
    let dir = TempDir::new("fs-bad");
    let ok = dir.file("ok", b"fine\n");
    let big = dir.file("big", &random_bytes(2 << 20, 77));
    let server = file_server(&dir.0);

    // The downloader, until told to stop (at least 3 downloads).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let downloader = {
        let (stop, addr, big) = (stop.clone(), server.addr, big.clone());
        std::thread::spawn(move || {
            let mut c = Client::new(addr);
            let mut n = 0;
            while n < 3 || !stop.load(std::sync::atomic::Ordering::SeqCst) {
                assert!(c.get("big").unwrap() == big, "download {n} differs");
                n += 1;
            }
            n
        })
    };

    let mut c = Client::new(server.addr);
    let cases: &[(&[u8], Result<(), &str>)] = &[
        (b"GET ../ok\n", Err("forbidden")),
        (b"GET ./../ok\n", Err("forbidden")),
        (b"GET //etc/passwd\n", Err("forbidden")),
        (b"GET ..%2f..%2fetc%2fpasswd\n", Err("not found")),
        (b"GET ..\\..\\etc\\passwd\n", Err("not found")),
        (b"GET %2e%2e/ok\n", Err("not found")),
        (b"GET ok/\n", Err("not found")),
        (b"GET ok/.\n", Err("not found")),
        (b"GET \xff\xfe\n", Err("not found")),
        (b"GET ok\0\n", Err("cannot open")),
        (b"GET ok\r\n", Ok(())), // CRLF: the CR goes with the line end
        (b"GET ok \n", Err("not found")),
        (b"GET $(reboot)\n", Err("not found")),
        (b"get ok\n", Err("bad request")),
        (b"\r\n", Err("bad request")),
    ];
    for (request, want) in cases {
        c.send(request);
        let got = c.reply();
        let shown = String::from_utf8_lossy(request);
        match want {
            Ok(()) => assert_eq!(got.as_deref().ok(), Some(&ok[..]), "{shown:?}"),
            Err(reason) => assert_eq!(got, Err(reason.to_string()), "{shown:?}"),
        }
        assert_eq!(c.get("ok").unwrap(), ok, "after {shown:?}");
    }
    // Many components, up to the request limit (4096 bytes): parsed, not found.
    let deep = format!("GET {}xy", "a/".repeat(2045));
    assert_eq!(deep.len(), 4096);
    c.send(format!("{deep}\n").as_bytes());
    assert_eq!(c.reply(), Err("not found".to_string()));
    // One byte more: too long.
    c.send(format!("{deep}z\n").as_bytes());
    assert_eq!(c.reply(), Err("request too long".to_string()));

    // 1 MiB of random garbage, newlines included: one ERR per line, none OK. Replies are
    // read by a thread while the garbage is written (the server stops reading a client
    // whose replies pile up).
    let mut garbage = random_bytes(1 << 20, 5);
    for b in garbage.iter_mut().step_by(997) {
        *b = b'\n';
    }
    // And one 100 KB stretch without a newline: a request too long.
    for b in &mut garbage[600_000..700_000] {
        if *b == b'\n' {
            *b = b'x';
        }
    }
    garbage.push(b'\n');
    let lines = garbage.iter().filter(|&&b| b == b'\n').count();
    let mut reader = Client(BufReader::new(c.0.get_ref().try_clone().unwrap()));
    let replies = std::thread::spawn(move || {
        let mut errs = std::collections::BTreeMap::new();
        for _ in 0..lines {
            let reason = reader.reply().expect_err("garbage got an OK");
            *errs.entry(reason).or_insert(0) += 1;
        }
        errs
    });
    c.send(&garbage);
    let errs = replies.join().unwrap();
    assert_eq!(errs.values().sum::<usize>(), lines);
    assert_eq!(errs.get("request too long"), Some(&1), "{errs:?}");
    assert_eq!(c.get("ok").unwrap(), ok, "after the garbage");

    // A request dripped one byte at a time, each byte its own segment.
    for &b in b"GET ok\n" {
        c.send(&[b]);
    }
    assert_eq!(c.reply().unwrap(), ok);

    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let downloads = downloader.join().expect("downloader");
    eprintln!(
        "file_server: {} bad requests + {lines} garbage lines ({errs:?}); {downloads} \
         concurrent 2 MiB downloads intact",
        cases.len() + 2
    );
}
