//! Echo server: TCP and UDP on the same port, like the classic echo service (RFC 862).
//!
//! ```text
//! cargo run --release --example echo -- --addr 127.0.0.1:7000
//! nc 127.0.0.1 7000              # TCP: type a line, get it back
//! nc -u 127.0.0.1 7000           # UDP: each line is a datagram, echoed to the sender
//! RUST_LOG=debug cargo run --example echo    # see connections come and go
//! cargo run --release --example echo -- --threads 2     # two event loops, two cores
//! cargo run --release --example echo --features tls -- --tls-self-signed /tmp/echo-tls
//! openssl s_client -connect 127.0.0.1:7000 -CAfile /tmp/echo-tls/cert.pem -quiet  # TLS
//! ```
//!
//! Options: `--addr ADDR` (default 127.0.0.1:7000), `--unix PATH` (also listen on a Unix
//! stream socket), `--idle-timeout SECS`, `--max-conns N`, `--threads N` (N event loops on N
//! threads with `evloop::Workers`: one SO_REUSEPORT listener and UDP socket each, so the
//! kernel spreads clients; `--max-conns` and `--udp-rate` then hold per loop; `--unix`
//! listens in the first loop), `--round-robin` (with `--threads`: one loop accepts and hands
//! connections to the loops in turn), `--tls-cert FILE --tls-key FILE` (TCP over TLS, PEM
//! files; feature `tls`), `--tls-self-signed DIR` (TLS with a new self-signed certificate for
//! `localhost`, written to DIR/cert.pem for the client to trust). SIGINT/SIGTERM shut it down gracefully: it stops
//! accepting, flushes what each client is owed, and exits (all loops).
//!
//! UDP echo can be turned against others (a forged source address makes the server send to
//! a victim) or against itself: a datagram forged with the server's own address as its
//! source would have it answer itself forever, and one forged between two such services
//! (echo and chargen, echo and another echo) would have them answer each other forever.
//! So a datagram is not answered, only counted and logged now and then, when its source is:
//! - this server's own port (itself, or the same service elsewhere);
//! - a well-known port, below 1024 (where echo, chargen, DNS, NTP live; clients use
//!   ephemeral ports), as BSD inetd's internal services do;
//! - not a unicast address (unspecified, broadcast, multicast);
//! - over `--udp-rate N` datagrams per second from its IP (default 0: no limit, so that the
//!   load generator can measure; set it on an exposed server). This bounds what no rule
//!   can tell apart, such as a loop with another echo server on a high port.
//!
//! Echo never sends more than it received, so it amplifies nothing.

mod common;

use evloop::{
    Addr, CloseReason, Config, ConnId, Context, EventLoop, Handler, Stats, UdpId, UdpOptions,
    Workers,
};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

/// Source IPs tracked for `--udp-rate` at most: past it, idle ones are forgotten, and if
/// none is idle, datagrams from new sources are dropped (a flood of forged sources cannot
/// grow the table).
const MAX_TRACKED: usize = 65_536;

/// One source IP's token bucket.
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Which datagrams are not answered (see the header).
#[derive(Default)]
struct UdpGuard {
    /// Our UDP port, once bound.
    port: Option<u16>,
    /// `--udp-rate`: datagrams per second per source IP; `None`: no limit.
    rate: Option<f64>,
    buckets: HashMap<IpAddr, Bucket>,
    dropped: u64,
}

impl UdpGuard {
    /// Why a datagram from `from` must not be answered, if it must not.
    fn refuse(&mut self, from: SocketAddr, now: Instant) -> Option<&'static str> {
        if Some(from.port()) == self.port {
            return Some("our own port");
        }
        if from.port() < 1024 {
            return Some("a well-known port");
        }
        let ip = from.ip();
        let broadcast = ip == IpAddr::V4(Ipv4Addr::BROADCAST);
        if ip.is_unspecified() || ip.is_multicast() || broadcast {
            return Some("not a unicast address");
        }
        let rate = self.rate?;
        (!self.take_token(ip, rate, now)).then_some("over the rate limit")
    }

    fn take_token(&mut self, ip: IpAddr, rate: f64, now: Instant) -> bool {
        let refill = |b: &Bucket| b.tokens + rate * now.duration_since(b.at).as_secs_f64();
        if !self.buckets.contains_key(&ip) && self.buckets.len() >= MAX_TRACKED {
            self.buckets.retain(|_, b| refill(b) < rate);
            if self.buckets.len() >= MAX_TRACKED {
                return false;
            }
        }
        let b = self.buckets.entry(ip).or_insert(Bucket {
            tokens: rate,
            at: now,
        });
        b.tokens = refill(b).min(rate);
        b.at = now;
        if b.tokens < 1.0 {
            return false;
        }
        b.tokens -= 1.0;
        true
    }
}

struct Echo {
    udp: UdpGuard,
}

impl Handler for Echo {
    type Conn = ();

    fn on_open(&mut self, cx: &mut Context<'_, Self>, conn: ConnId, _: &mut ()) {
        if let Ok(peer) = cx.peer_addr(conn) {
            log::debug!("{conn} open from {peer}");
        }
    }

    fn on_data(
        &mut self,
        cx: &mut Context<'_, Self>,
        conn: ConnId,
        _: &mut (),
        data: &[u8],
    ) -> usize {
        // Refused only if the connection is closing, or was just closed at its output limit
        // (a client that sends but does not read): either way there is no one to echo to.
        let _ = cx.send(conn, data);
        data.len()
    }

    fn on_close(&mut self, _: &mut Context<'_, Self>, conn: ConnId, _: (), reason: &CloseReason) {
        log::debug!("{conn} closed: {reason}");
    }

    fn on_datagram(&mut self, cx: &mut Context<'_, Self>, socket: UdpId, data: &[u8], from: &Addr) {
        if let Some(inet) = from.as_inet() {
            if let Some(why) = self.udp.refuse(inet, cx.now()) {
                self.udp.dropped += 1;
                if self.udp.dropped.is_power_of_two() {
                    let n = self.udp.dropped;
                    log::warn!("dropped {n} datagram(s) not to answer (last from {from}: {why})");
                }
                return;
            }
        }
        if let Err(e) = cx.send_to(socket, data, from) {
            log::debug!("echo to {from}: {e}");
        }
    }
}

struct Args {
    addr: SocketAddr,
    unix: Option<String>,
    idle_timeout: Option<Duration>,
    max_conns: Option<usize>,
    threads: usize,
    round_robin: bool,
    udp_rate: u32,
    tls: Option<TlsArg>,
}

/// Where the TLS certificate comes from (read only with the `tls` feature).
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
enum TlsArg {
    Files(String, String),
    SelfSigned(String),
}

const USAGE: &str = "usage: echo [--addr ADDR] [--unix PATH] [--idle-timeout SECS] \
[--max-conns N] [--threads N [--round-robin]] [--udp-rate N] \
[--tls-cert FILE --tls-key FILE | --tls-self-signed DIR]";

fn parse_args() -> Args {
    let mut parsed = Args {
        addr: "127.0.0.1:7000".parse().unwrap(),
        unix: None,
        idle_timeout: None,
        max_conns: None,
        threads: 1,
        round_robin: false,
        udp_rate: 0,
        tls: None,
    };
    let (mut cert, mut key) = (None, None);
    let mut args = common::Args::new(USAGE);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--addr" => parsed.addr = args.value(&arg),
            "--unix" => parsed.unix = Some(args.value(&arg)),
            "--idle-timeout" => {
                let secs: f64 = args.value(&arg);
                let timeout = Duration::try_from_secs_f64(secs);
                parsed.idle_timeout = Some(timeout.unwrap_or_else(|e| args.fail(e)));
            }
            "--max-conns" => parsed.max_conns = Some(args.value(&arg)),
            "--threads" => parsed.threads = args.value(&arg),
            "--round-robin" => parsed.round_robin = true,
            "--udp-rate" => parsed.udp_rate = args.value(&arg),
            "--tls-cert" => cert = Some(args.value(&arg)),
            "--tls-key" => key = Some(args.value(&arg)),
            "--tls-self-signed" => parsed.tls = Some(TlsArg::SelfSigned(args.value(&arg))),
            _ => args.unexpected(&arg),
        }
    }
    if parsed.threads == 0 {
        args.fail("--threads must be at least 1");
    }
    match (cert, key) {
        (Some(c), Some(k)) => parsed.tls = Some(TlsArg::Files(c, k)),
        (None, None) => {}
        _ => args.fail("--tls-cert and --tls-key go together"),
    }
    if parsed.tls.is_some() && (parsed.threads > 1 || parsed.round_robin) {
        args.fail("TLS is served by one loop here: drop --threads / --round-robin");
    }
    if parsed.tls.is_some() && !cfg!(feature = "tls") {
        args.fail("TLS needs the `tls` feature: cargo run --example echo --features tls -- ...");
    }
    parsed
}

/// Binds the UDP socket of one loop on the TCP listener's port, and tells its handler.
fn bind_udp(el: &mut EventLoop<Echo>, addr: SocketAddr, shared: bool) -> std::io::Result<Addr> {
    let mut opts = UdpOptions::default();
    opts.reuse_port = shared; // several loops, one port: the kernel spreads the sources
    let mut cx = el.context();
    let udp = cx.bind_udp_with(addr, &opts)?;
    let bound = cx.udp_addr(udp)?;
    el.handler_mut().udp.port = bound.as_inet().map(|a| a.port());
    Ok(bound)
}

fn main() -> std::io::Result<()> {
    common::init_logging("info");
    let args = parse_args();
    let mut config = Config::default();
    config.idle_timeout = args.idle_timeout;
    if let Some(n) = args.max_conns {
        config.max_connections = n;
        config.refusal_reply = Some(b"ERR server full\n".to_vec());
    }
    let rate = (args.udp_rate > 0).then_some(f64::from(args.udp_rate));
    let echo = || Echo {
        udp: UdpGuard {
            rate,
            ..UdpGuard::default()
        },
    };
    if args.threads == 1 && !args.round_robin {
        return run_one(&args, config, echo());
    }
    let mut workers = Workers::new(args.threads, config, |_| echo())?;
    let addr = if args.round_robin {
        workers.listen_round_robin(args.addr)?
    } else {
        workers.listen(args.addr)?
    };
    let mut udp = None;
    for el in workers.loops_mut() {
        udp = Some(bind_udp(el, addr, true)?);
    }
    let how = if args.round_robin {
        "round-robin"
    } else {
        "SO_REUSEPORT"
    };
    let loops = args.threads;
    let udp = udp.map_or(String::new(), |u| u.to_string());
    log::info!("echo listening on {addr} (tcp) and {udp} (udp), {loops} event loops ({how})");
    if let Some(path) = &args.unix {
        workers.loops_mut()[0].listen_unix(path)?;
        log::info!("echo listening on unix:{path}");
    }
    workers.shutdown_on_signals(Duration::from_secs(5));
    let loops = workers.run()?;
    for (i, el) in loops.iter().enumerate() {
        let s = el.stats();
        log::info!(
            "loop {i}: accepted {}, bytes out {}",
            s.accepted,
            s.bytes_out
        );
    }
    log::info!(
        "echo stopped: {:?}",
        Stats::sum(loops.iter().map(EventLoop::stats))
    );
    Ok(())
}

/// One event loop on this thread.
fn run_one(args: &Args, config: Config, echo: Echo) -> std::io::Result<()> {
    let mut el = EventLoop::with_config(echo, config)?;
    let tcp = match &args.tls {
        None => el.listen(args.addr)?,
        Some(tls) => listen_tls(&mut el, args.addr, tls)?,
    };
    let addr = el.context().listener_addr(tcp)?;
    let udp = bind_udp(&mut el, addr.as_inet().expect("inet"), false)?;
    log::info!("echo listening on {addr} (tcp) and {udp} (udp)");
    if let Some(path) = &args.unix {
        el.listen_unix(path)?;
        log::info!("echo listening on unix:{path}");
    }
    el.shutdown_on_signals(Duration::from_secs(5))?;
    el.run()?;
    log::info!("echo stopped: {:?}", el.stats());
    Ok(())
}

/// Listens with TLS, from PEM files or a new self-signed certificate.
#[cfg(feature = "tls")]
fn listen_tls(
    el: &mut EventLoop<Echo>,
    addr: SocketAddr,
    tls: &TlsArg,
) -> std::io::Result<evloop::ListenerId> {
    let (cert, key) = match tls {
        TlsArg::Files(cert, key) => (cert.into(), key.into()),
        TlsArg::SelfSigned(dir) => {
            let made = rcgen::generate_simple_self_signed(vec!["localhost".into()])
                .map_err(std::io::Error::other)?;
            let dir = std::path::Path::new(dir);
            std::fs::create_dir_all(dir)?;
            let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
            std::fs::write(&cert, made.cert.pem())?;
            std::fs::write(&key, made.signing_key.serialize_pem())?;
            log::info!(
                "self-signed certificate for localhost in {}",
                cert.display()
            );
            (cert, key)
        }
    };
    let config = evloop::tls::server_config(&cert, &key)?;
    el.listen_tls(addr, config)
}

#[cfg(not(feature = "tls"))]
fn listen_tls(
    _: &mut EventLoop<Echo>,
    _: SocketAddr,
    _: &TlsArg,
) -> std::io::Result<evloop::ListenerId> {
    unreachable!("refused by parse_args without the tls feature")
}
