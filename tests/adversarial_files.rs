//! Issue 12: the `file_server` example against hostile clients, as a real process.

mod support;

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use support::file_client::*;
use support::*;

fn build() {
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| support::build_examples(&["file_server", "file_client"]));
}

fn server(root: &std::path::Path, extra: &[&str]) -> Example {
    build();
    file_server(root, extra)
}

/// A racer swaps a directory inside the root with a symlink to a directory outside it
/// (renameat2 RENAME_EXCHANGE, as fast as it can) while 5,000 requests ask for a file
/// through that directory: not one reply may carry the outside file. (Checked by name then
/// opened by name, 18-28% of them did.)
#[test]
fn a_directory_swapped_for_a_symlink_out_never_leaks_a_file() {
    swap_race(&[]);
}

/// The same race against the fallback for kernels without openat2 (`--resolve walk`).
#[test]
fn a_directory_swapped_for_a_symlink_out_never_leaks_a_file_walking() {
    swap_race(&["--resolve", "walk"]);
}

fn swap_race(args: &[&str]) {
    const REQUESTS: usize = 5_000;
    const CLIENTS: usize = 4;
    let dir = TempDir::new(&format!("adv-swap{}", args.len()));
    dir.file("root/d/f", b"inside\n");
    dir.file("outside/f", b"OUTSIDE\n");
    let root = dir.path().join("root");
    std::os::unix::fs::symlink(dir.path().join("outside"), root.join("s")).unwrap();
    let ex = server(&root, args);

    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicU64::new(0));
    let racer = {
        let (stop, swaps) = (stop.clone(), swaps.clone());
        let root = std::fs::File::open(&root).unwrap();
        std::thread::spawn(move || {
            use rustix::fs::{RenameFlags, renameat_with};
            while !stop.load(Ordering::Relaxed) {
                renameat_with(&root, "d", &root, "s", RenameFlags::EXCHANGE)
                    .expect("renameat2(RENAME_EXCHANGE)");
                swaps.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let addr = ex.addr;
            std::thread::spawn(move || {
                let mut c = Client::new(addr);
                let (mut inside, mut outside) = (0, 0);
                let mut refused = std::collections::BTreeMap::new();
                for _ in 0..REQUESTS / CLIENTS {
                    match c.get("d/f") {
                        Ok(body) if body == b"inside\n" => inside += 1,
                        Ok(body) if body == b"OUTSIDE\n" => outside += 1,
                        Ok(body) => panic!("unexpected body {body:?}"),
                        Err(reason) => *refused.entry(reason).or_insert(0) += 1,
                    }
                }
                (inside, outside, refused)
            })
        })
        .collect();
    let (mut inside, mut outside) = (0, 0);
    let mut refused = std::collections::BTreeMap::new();
    for t in clients {
        let (i, o, r) = t.join().expect("client");
        inside += i;
        outside += o;
        for (reason, n) in r {
            *refused.entry(reason).or_insert(0) += n;
        }
    }
    stop.store(true, Ordering::Relaxed);
    racer.join().expect("racer");
    let swaps = swaps.load(Ordering::Relaxed);
    eprintln!(
        "{args:?}: {REQUESTS} requests during {swaps} swaps: {inside} inside, {outside} \
         OUTSIDE ({:.1}%), refused {refused:?}",
        outside as f64 * 100.0 / REQUESTS as f64
    );
    assert!(swaps > 100, "the racer barely ran ({swaps} swaps)");
    assert!(inside > 0, "nothing was served at all: {refused:?}");
    assert_eq!(
        outside, 0,
        "{outside} of {REQUESTS} replies came from outside the root"
    );
}

/// The other side of many downloads: an evloop client that adopts connected sockets, asks
/// each for `GET huge`, and reads and discards everything. Panics are not caught: an
/// assertion in a callback ends `run()` and fails the test.
struct Downloads {
    started: std::sync::mpsc::Sender<()>,
    received: Arc<AtomicU64>,
    closed: Vec<String>,
}

#[derive(Default)]
struct Dl {
    received: u64,
    reported: bool,
}

impl evloop::Handler for Downloads {
    type Conn = Dl;

    fn on_open(&mut self, cx: &mut evloop::Context<'_, Self>, conn: evloop::ConnId, _: &mut Dl) {
        cx.send(conn, b"GET huge\n").expect("send the request");
    }

    fn on_data(
        &mut self,
        _: &mut evloop::Context<'_, Self>,
        _: evloop::ConnId,
        d: &mut Dl,
        input: &[u8],
    ) -> usize {
        if d.received == 0 {
            assert!(
                input.starts_with(b"OK "),
                "reply {:?}",
                &input[..input.len().min(40)]
            );
        }
        d.received += input.len() as u64;
        self.received
            .fetch_add(input.len() as u64, Ordering::Relaxed);
        if !d.reported && d.received >= 1 << 20 {
            d.reported = true;
            self.started.send(()).expect("report a started download");
        }
        input.len()
    }

    fn on_close(
        &mut self,
        _: &mut evloop::Context<'_, Self>,
        conn: evloop::ConnId,
        _: Dl,
        reason: &evloop::CloseReason,
    ) {
        self.closed.push(format!("{conn}: {reason}"));
    }
}

/// Starts `n` downloads of `huge` from `n / 4` loopback addresses (4 each, under the
/// default per-address cap), read by an evloop client on a thread; returns once every one
/// has received 1 MiB.
fn downloads_in_flight(
    addr: std::net::SocketAddr,
    n: usize,
) -> (Running<Downloads>, Arc<AtomicU64>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let received = Arc::new(AtomicU64::new(0));
    let mut config = evloop::Config::default();
    config.catch_panics = false;
    let handler = Downloads {
        started: tx,
        received: received.clone(),
        closed: Vec::new(),
    };
    let mut el = evloop::EventLoop::with_config(handler, config).unwrap();
    for i in 0..n {
        let from = std::net::Ipv4Addr::new(127, 0, 1, 1 + (i / 4) as u8);
        let s = client_from(from, addr).expect("connect a download");
        el.context().adopt(s).expect("adopt");
    }
    let t = Instant::now();
    let running = spawn(el);
    for _ in 0..n {
        recv(&rx);
    }
    eprintln!("{n} downloads under way after {:?}", t.elapsed());
    (running, received)
}

/// 200 downloads of a huge (sparse) file in flight from 50 addresses, read as fast as a
/// client on the same machine can; meanwhile a small file asked for on an idle connection
/// comes back quickly (the aim is 100 ms; the bound asserted is a generous 1 s, for slow
/// debug builds). Both ways of sending bodies. (With 1,000 downloads it used to take
/// 0.6-1.1 s.)
#[test]
fn a_small_request_is_answered_promptly_during_200_downloads() {
    const DOWNLOADS: usize = 200;
    const SAMPLES: usize = 20;
    let dir = TempDir::new("adv-fair");
    dir.sparse("huge", 1 << 40);
    let small = dir.file("small", b"a small file\n");
    for mode in [&[][..], &["--copy"]] {
        let ex = server(dir.path(), mode);
        let (downloads, received) = downloads_in_flight(ex.addr, DOWNLOADS);
        let started = Instant::now();
        let before = received.load(Ordering::Relaxed);
        let mut idle = Client::from_stream(client_from([127, 0, 2, 1].into(), ex.addr).unwrap());
        let mut took: Vec<Duration> = (0..SAMPLES)
            .map(|_| {
                let t = Instant::now();
                assert_eq!(idle.get("small").unwrap(), small);
                t.elapsed()
            })
            .collect();
        // And on a fresh connection each time (accept, then the request).
        let mut fresh: Vec<Duration> = (0..SAMPLES)
            .map(|i| {
                let t = Instant::now();
                let s = client_from([127, 0, 2, 2 + i as u8].into(), ex.addr).unwrap();
                assert_eq!(Client::from_stream(s).get("small").unwrap(), small);
                t.elapsed()
            })
            .collect();
        let elapsed = started.elapsed();
        let moved = received.load(Ordering::Relaxed) - before;
        let el = downloads.stop();
        let d = el.handler();
        assert!(
            d.closed.is_empty(),
            "{mode:?}: downloads closed: {:?}",
            d.closed
        );
        took.sort();
        fresh.sort();
        let rate = moved as f64 / elapsed.as_secs_f64() / (1 << 30) as f64;
        eprintln!(
            "{mode:?}: {DOWNLOADS} downloads at {rate:.2} GiB/s in all; small request on an \
             idle connection: median {:?}, max {:?}; on a new connection: median {:?}, \
             max {:?}",
            took[SAMPLES / 2],
            took[SAMPLES - 1],
            fresh[SAMPLES / 2],
            fresh[SAMPLES - 1]
        );
        assert!(
            moved > 0,
            "{mode:?}: the downloads did not move while measured"
        );
        let bound = Duration::from_secs(1);
        assert!(took[SAMPLES - 1] < bound, "{mode:?}: {took:?}");
        assert!(fresh[SAMPLES - 1] < bound, "{mode:?}: {fresh:?}");
    }
}

/// Slowloris from one address: connections that send nothing, or half a request, get
/// `ERR request timeout` and a reset once `--request-timeout` passes (they used to be kept
/// forever); past `--max-per-ip` that address's connections are refused at once. Another
/// address is served meanwhile, and the first is served again once its connections went;
/// a connection idle after a reply is closed quietly after the same time.
#[test]
fn unfinished_requests_time_out_and_one_address_is_capped() {
    const CAP: usize = 8;
    const TRIES: usize = 20;
    let dir = TempDir::new("adv-slowloris");
    let ok = dir.file("ok", b"fine\n");
    let ex = server(
        dir.path(),
        &["--request-timeout", "0.5", "--max-per-ip", &CAP.to_string()],
    );
    let attacker = std::net::Ipv4Addr::new(127, 0, 3, 1);
    let opened = Instant::now();
    let mut silent: Vec<_> = (0..TRIES)
        .map(|_| client_from(attacker, ex.addr).unwrap())
        .collect();
    silent[0].write_all(b"GET o").unwrap(); // half a request
    // Another host is served at once.
    let mut user = Client::from_stream(client_from([127, 0, 3, 2].into(), ex.addr).unwrap());
    assert_eq!(user.get("ok").unwrap(), ok);

    let (mut refused, mut timed_out) = (0, 0);
    for (i, s) in silent.iter_mut().enumerate() {
        let (got, reset) = read_until_closed(s);
        match &got[..] {
            b"ERR too many connections\n" => refused += 1,
            b"ERR request timeout\n" => {
                assert!(reset, "{i}: a timed-out connection is reset");
                let after = opened.elapsed();
                assert!(
                    after >= Duration::from_millis(450),
                    "{i}: cut after {after:?}"
                );
                timed_out += 1;
            }
            other => panic!("{i}: {:?}", String::from_utf8_lossy(other)),
        }
    }
    let closed_after = opened.elapsed();
    eprintln!(
        "{TRIES} connections from one address: {refused} refused, {timed_out} timed out; \
         all closed {closed_after:?} after opening"
    );
    assert_eq!(timed_out, CAP);
    assert_eq!(refused, TRIES - CAP);
    // The address may connect again now.
    let again = client_from(attacker, ex.addr).unwrap();
    assert_eq!(Client::from_stream(again).get("ok").unwrap(), ok);
    // The user's connection sat idle after its reply for as long: closed quietly (FIN).
    let (got, reset) = read_until_closed(user.0.get_mut());
    assert_eq!((&got[..], reset), (&b""[..], false));
}

/// At a descriptor limit of 128, 200 silent connections from 200 addresses (the per-address
/// cap cannot help) fill every descriptor; a user who connects after them is served once
/// the first of them time out (here after 1 s), not never. (Without the timeout nobody was
/// ever served again.)
#[test]
fn silent_connections_at_a_low_descriptor_limit_lock_nobody_out() {
    const SILENT: usize = 200;
    let dir = TempDir::new("adv-nofile");
    let ok = dir.file("ok", b"fine\n");
    build();
    let ex = file_server_with_nofile(dir.path(), 128, &["--request-timeout", "1"]);
    let silent: Vec<_> = (0..SILENT)
        .map(|i| {
            let from = std::net::Ipv4Addr::new(127, 0, 4, 1 + i as u8);
            client_from(from, ex.addr).unwrap()
        })
        .collect();
    let t = Instant::now();
    let mut user = Client::from_stream(client_from([127, 0, 5, 1].into(), ex.addr).unwrap());
    assert_eq!(user.get("ok").unwrap(), ok);
    let served = t.elapsed();
    eprintln!("at 128 descriptors with {SILENT} silent connections: served after {served:?}");
    assert!(served < DEADLINE);
    // Every silent one was told and cut, none kept.
    for (i, mut s) in silent.into_iter().enumerate() {
        let (got, _) = read_until_closed(&mut s);
        assert_eq!(got, b"ERR request timeout\n", "silent connection {i}");
    }
}

/// Pipelining requests without reading the replies: the server stops reading once the
/// replies pile up, and holds few descriptors whatever the files: a queued reply is either
/// bytes in memory (files under 64 KiB) or a file region big enough to fill the queue by
/// itself, so a connection holds one or two open files, not one per request.
#[test]
fn pipelined_requests_never_read_hold_few_descriptors() {
    let dir = TempDir::new("adv-pipeline-fds");
    dir.file("tiny", b"x");
    dir.file("medium", &random_bytes(64 * 1024 + 1, 9));
    for mode in [&[][..], &["--copy"]] {
        let ex = server(dir.path(), mode);
        let base = fds_of(ex.child.id());
        let mut worst = 0;
        let clients: Vec<_> = ["tiny", "medium"]
            .iter()
            .map(|name| {
                let mut s = client(ex.addr);
                s.set_write_timeout(Some(Duration::from_millis(300)))
                    .unwrap();
                let lines = format!("GET {name}\n").repeat(5_000);
                let mut sent = 0;
                while sent < 16 << 20 && s.write_all(lines.as_bytes()).is_ok() {
                    sent += lines.len();
                }
                // Written until the server stopped reading: what it holds now is its most.
                worst = worst.max(fds_of(ex.child.id()));
                assert!(
                    sent < 16 << 20,
                    "{mode:?} {name}: the server never stopped reading"
                );
                (s, sent)
            })
            .collect();
        eprintln!(
            "{mode:?}: {} MB of pipelined requests unread; server descriptors {base} -> \
             at most {worst}",
            clients.iter().map(|c| c.1).sum::<usize>() / 1_000_000
        );
        assert!(
            worst <= base + 2 + 2 * 2,
            "{mode:?}: {base} -> {worst} descriptors"
        );
        // And it still serves others.
        assert_eq!(Client::new(ex.addr).get("tiny").unwrap(), b"x");
    }
}

/// 100 clients (from 25 addresses) ask for a 1 TiB file and read nothing: the server's
/// memory stays small on both paths (each holds at most its queue), and others are served.
#[test]
fn a_hundred_stalled_downloads_cost_little_memory() {
    let dir = TempDir::new("adv-stalled");
    dir.sparse("huge", 1 << 40);
    let ok = dir.file("ok", b"fine\n");
    for mode in [&[][..], &["--copy"]] {
        let ex = server(dir.path(), mode);
        let stalled: Vec<_> = (0..100)
            .map(|i| {
                let from = std::net::Ipv4Addr::new(127, 0, 6, 1 + (i / 4) as u8);
                let mut s = client_from(from, ex.addr).unwrap();
                s.write_all(b"GET huge\n").unwrap();
                s
            })
            .collect();
        // Each has its header and as much as its buffers take: then the server waits.
        for s in &stalled {
            let mut header = [0u8; 17];
            (&*s).read_exact(&mut header).unwrap();
            assert_eq!(&header, b"OK 1099511627776\n");
        }
        assert_eq!(Client::new(ex.addr).get("ok").unwrap(), ok);
        let hwm = proc_status_kb(ex.child.id(), "VmHWM");
        eprintln!("{mode:?}: 100 stalled 1 TiB downloads; server VmHWM {hwm} kB");
        assert!(hwm < 64 * 1024, "{mode:?}: server peak RSS {hwm} kB");
    }
}

/// Device files and other non-regular files are refused without being opened (an open of
/// some devices has effects: a watchdog starts counting, a tape rewinds): serving /dev
/// itself, nothing is served, and symlinks there lead out.
#[test]
fn device_files_are_refused() {
    let ex = server(std::path::Path::new("/dev"), &[]);
    let mut c = Client::new(ex.addr);
    for name in ["null", "zero", "urandom", "tty", "full"] {
        if std::path::Path::new("/dev").join(name).exists() {
            assert_eq!(c.get(name), Err("not a regular file".to_string()), "{name}");
        }
    }
    // /dev/fd -> /proc/self/fd, /dev/stdin -> /proc/self/fd/0: absolute, so refused.
    for name in ["fd/0", "stdin"] {
        if std::path::Path::new("/dev").join(name).exists() {
            assert_eq!(c.get(name), Err("forbidden".to_string()), "{name}");
        }
    }
}

/// A kB figure from /proc/PID/status (`VmRSS`, `VmHWM`, ...).
fn proc_status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}
