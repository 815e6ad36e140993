//! UDP chat: a chat room over datagrams, and a client for it in the same binary.
//!
//! ```text
//! cargo run --release --example udp_chat -- --addr 127.0.0.1:7002 --expiry 60    # server
//! cargo run --release --example udp_chat -- --connect 127.0.0.1:7002  # client: stdin, stdout
//! socat - UDP:127.0.0.1:7002      # or any datagram tool (pad /join lines, see below)
//! ```
//!
//! One message per datagram (a trailing "\n" or "\r\n" is ignored). Joining takes two
//! datagrams, so that nobody can enrol an address that is not theirs (UDP source addresses
//! can be forged): `/join NAME`, padded with spaces to at least 64 bytes, is answered with
//! `COOKIE C` (C: 16 hex digits, a keyed hash of the sender's address and the minute); then
//! `/join NAME C` from the same address enrols it as NAME (1 to 32 visible characters,
//! unique): `OK`. The client mode does both steps for you. Text from an enrolled peer goes
//! to every other one heard from in the last `--expiry` seconds as `[name] text`; `/leave`:
//! `OK`; mistakes: `ERR ...`. Any datagram from a peer counts as heard from (an empty one is
//! a keepalive); a repeating timer forgets the silent, who must join again.
//!
//! Limits, so that the server is no tool for reflection or amplification attacks:
//! - A sender that has not returned a cookie is answered only to `/join`, never with more
//!   bytes than its datagram carried (hence the padding), and its other datagrams are
//!   dropped without an answer. No answer starts with `/`, so two servers (or this one and
//!   an echo server) tricked into talking to each other by a forged datagram stop at once.
//! - Datagrams from the server's own address are dropped.
//! - `--max-peers N` (10,000) enrolled peers in all, `--max-per-ip N` (16) from one IP.
//!
//! Client mode binds an ephemeral socket, sends each stdin line as a datagram (a thread
//! reads stdin and posts lines into the loop through a `Handle`; EOF stops the loop) and
//! prints each datagram that arrives from the server, and only from it, with control
//! characters (escape sequences) and bidi controls shown escaped (`\u{1b}`).

mod common;

use evloop::{Addr, Context, EventLoop, Handler, TimerId, UdpId};
use ring::hmac;
use std::collections::HashMap;
use std::fmt;
use std::io::{BufRead, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

const MAX_NAME: usize = 32;
/// A `/join` without a cookie must be at least this long to be answered with one.
const JOIN_PAD: usize = 64;
/// A cookie is valid in the minute it was made and the next.
const COOKIE_WINDOW: u64 = 60;

struct Peer {
    name: String,
    seen: Instant,
}

struct Server {
    peers: HashMap<Addr, Peer>,
    /// Enrolled peers by IP, for `max_per_ip`.
    per_ip: HashMap<IpAddr, usize>,
    expiry: Duration,
    max_peers: usize,
    max_per_ip: usize,
    /// The cookies' key: random, made at start.
    key: hmac::Key,
    started: Instant,
    /// Our own address: nothing from it is answered.
    me: Option<SocketAddr>,
    /// Each outgoing datagram is formatted here once, then sent to every recipient.
    out: Vec<u8>,
}

/// Formats one datagram, with a trailing "\n", into `buf` (reusing its allocation).
fn fill(buf: &mut Vec<u8>, args: fmt::Arguments<'_>) {
    buf.clear();
    let _ = buf.write_fmt(args);
    buf.push(b'\n');
}

/// 1 to 32 characters, none of them whitespace or control characters.
fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME).contains(&name.chars().count())
        && !name.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn send<H: Handler>(cx: &mut Context<'_, H>, socket: UdpId, data: &[u8], to: &Addr) {
    if let Err(e) = cx.send_to(socket, data, to) {
        log::debug!("send to {to}: {e}"); // e.g. the queue is full: drop it, as UDP does
    }
}

/// The arguments of `/join`: a name, and a cookie if the last word looks like one.
fn join_args(arg: &str) -> (&str, Option<&str>) {
    let arg = arg.trim();
    match arg.rsplit_once(' ') {
        Some((name, cookie))
            if cookie.len() == 16 && cookie.bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            (name.trim(), Some(cookie))
        }
        _ => (arg, None),
    }
}

/// Equal without an early exit (the time taken tells nothing of where they differ).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Server {
    fn reply(
        &mut self,
        cx: &mut Context<'_, Self>,
        socket: UdpId,
        to: &Addr,
        args: fmt::Arguments<'_>,
    ) {
        fill(&mut self.out, args);
        send(cx, socket, &self.out, to);
    }

    /// Answers a sender whose address is not proven: only if the answer is no larger than
    /// what it sent (no amplification toward a forged source).
    fn reply_small(
        &mut self,
        cx: &mut Context<'_, Self>,
        socket: UdpId,
        to: &Addr,
        carried: usize,
        args: fmt::Arguments<'_>,
    ) {
        fill(&mut self.out, args);
        if self.out.len() <= carried {
            send(cx, socket, &self.out, to);
        } else {
            log::debug!("not answering {to}: {} bytes for {carried}", self.out.len());
        }
    }

    /// The cookie for `from` in time window `window`, in hex: HMAC-SHA256 of both, cut to
    /// 8 bytes.
    fn cookie(&self, from: &Addr, window: u64) -> String {
        let mut msg = window.to_be_bytes().to_vec();
        msg.extend_from_slice(from.to_string().as_bytes());
        let tag = hmac::sign(&self.key, &msg);
        tag.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn window(&self, cx: &Context<'_, Self>) -> u64 {
        cx.now().duration_since(self.started).as_secs() / COOKIE_WINDOW
    }

    fn cookie_ok(&self, cx: &Context<'_, Self>, from: &Addr, cookie: &str) -> bool {
        let now = self.window(cx);
        let given = cookie.to_ascii_lowercase();
        [Some(now), now.checked_sub(1)]
            .into_iter()
            .flatten()
            .any(|w| same(self.cookie(from, w).as_bytes(), given.as_bytes()))
    }

    fn is_me(&self, from: &Addr) -> bool {
        match (self.me, from.as_inet()) {
            (Some(me), Some(from)) => {
                from.port() == me.port()
                    && (from.ip() == me.ip() || me.ip().is_unspecified() && from.ip().is_loopback())
            }
            _ => false,
        }
    }

    /// A datagram from an address that has not proven itself: only `/join` is answered.
    fn on_unproven(
        &mut self,
        cx: &mut Context<'_, Self>,
        socket: UdpId,
        from: &Addr,
        carried: usize,
        text: &str,
    ) {
        let arg = match text.strip_prefix("/join") {
            Some(arg) if arg.is_empty() || arg.starts_with(' ') => arg,
            _ => return log::debug!("dropped a datagram from {from}: join first"),
        };
        let (name, cookie) = join_args(arg);
        if !valid_name(name) {
            let msg = format_args!("ERR name must be 1 to {MAX_NAME} visible characters");
            return self.reply_small(cx, socket, from, carried, msg);
        }
        let Some(cookie) = cookie else {
            if carried < JOIN_PAD {
                let msg = format_args!("ERR pad to {JOIN_PAD} bytes");
                return self.reply_small(cx, socket, from, carried, msg);
            }
            let cookie = self.cookie(from, self.window(cx));
            return self.reply_small(cx, socket, from, carried, format_args!("COOKIE {cookie}"));
        };
        if !self.cookie_ok(cx, from, cookie) {
            return self.reply_small(cx, socket, from, carried, format_args!("ERR bad cookie"));
        }
        // The sender has shown it receives at this address: answers may be of any size.
        let ip = from.as_inet().map(|a| a.ip());
        let from_ip = ip.map_or(0, |ip| self.per_ip.get(&ip).copied().unwrap_or(0));
        if self.peers.len() >= self.max_peers {
            self.reply(cx, socket, from, format_args!("ERR the room is full"))
        } else if from_ip >= self.max_per_ip {
            let msg = format_args!("ERR too many peers from your address");
            self.reply(cx, socket, from, msg)
        } else if self.peers.values().any(|p| p.name == name) {
            self.reply(cx, socket, from, format_args!("ERR name {name} is taken"))
        } else {
            log::info!("{name} joined from {from}");
            if let Some(ip) = ip {
                *self.per_ip.entry(ip).or_insert(0) += 1;
            }
            let seen = cx.now();
            let name = name.into();
            self.peers.insert(from.clone(), Peer { name, seen });
            self.reply(cx, socket, from, format_args!("OK"))
        }
    }

    /// Handles one datagram's text from an enrolled peer.
    fn on_text(&mut self, cx: &mut Context<'_, Self>, socket: UdpId, from: &Addr, text: &str) {
        let Some(command) = text.strip_prefix('/') else {
            return self.say(cx, socket, from, text);
        };
        let (cmd, arg) = command.split_once(' ').unwrap_or((command, ""));
        match cmd {
            "join" => {
                let (name, _) = join_args(arg); // a cookie again (a retransmission) is fine
                if !valid_name(name) {
                    let msg = format_args!("ERR name must be 1 to {MAX_NAME} visible characters");
                    self.reply(cx, socket, from, msg)
                } else if self.peers.iter().any(|(a, p)| p.name == name && a != from) {
                    self.reply(cx, socket, from, format_args!("ERR name {name} is taken"))
                } else {
                    if let Some(peer) = self.peers.get_mut(from) {
                        log::info!("{} is now {name}", peer.name);
                        peer.name = name.into();
                    }
                    self.reply(cx, socket, from, format_args!("OK"))
                }
            }
            "leave" => {
                self.forget(from);
                self.reply(cx, socket, from, format_args!("OK"))
            }
            _ => self.reply(cx, socket, from, format_args!("ERR unknown command /{cmd}")),
        }
    }

    fn forget(&mut self, addr: &Addr) {
        let Some(peer) = self.peers.remove(addr) else {
            return;
        };
        log::info!("{} left", peer.name);
        if let Some(ip) = addr.as_inet().map(|a| a.ip()) {
            if let Some(n) = self.per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    self.per_ip.remove(&ip);
                }
            }
        }
    }

    /// Text: to every other peer heard from within the expiry, formatted once.
    fn say(&mut self, cx: &mut Context<'_, Self>, socket: UdpId, from: &Addr, text: &str) {
        let Some(me) = self.peers.get(from) else {
            return;
        };
        if text.is_empty() {
            return; // a keepalive
        }
        fill(&mut self.out, format_args!("[{}] {text}", me.name));
        let now = cx.now();
        for (to, peer) in &self.peers {
            if to != from && now.duration_since(peer.seen) < self.expiry {
                send(cx, socket, &self.out, to);
            }
        }
    }
}

impl Handler for Server {
    type Conn = (); // no connections: datagrams only

    fn on_datagram(&mut self, cx: &mut Context<'_, Self>, socket: UdpId, data: &[u8], from: &Addr) {
        if self.is_me(from) {
            return log::debug!("dropped a datagram from our own address");
        }
        let carried = data.len();
        let data = data.strip_suffix(b"\n").unwrap_or(data);
        let data = data.strip_suffix(b"\r").unwrap_or(data);
        let Some(peer) = self.peers.get_mut(from) else {
            if let Ok(text) = std::str::from_utf8(data) {
                self.on_unproven(cx, socket, from, carried, text);
            }
            return;
        };
        peer.seen = cx.now();
        match std::str::from_utf8(data) {
            Err(_) => self.reply(cx, socket, from, format_args!("ERR invalid UTF-8")),
            Ok(text) if text.chars().any(|c| c.is_control() && c != '\t') => {
                let msg = format_args!("ERR control characters are not allowed");
                self.reply(cx, socket, from, msg)
            }
            Ok(text) => self.on_text(cx, socket, from, text),
        }
    }

    /// The repeating timer: forget the peers not heard from within the expiry.
    fn on_timer(&mut self, cx: &mut Context<'_, Self>, _timer: TimerId) {
        let (now, expiry) = (cx.now(), self.expiry);
        let silent: Vec<Addr> = self
            .peers
            .iter()
            .filter(|(_, p)| now.duration_since(p.seen) >= expiry)
            .map(|(a, _)| a.clone())
            .collect();
        for addr in silent {
            log::info!("{addr} expired");
            self.forget(&addr);
        }
    }
}

/// Client mode: talks to one server; prints what it sends, escaped, and nothing else.
struct Client {
    server: SocketAddr,
    /// The name of the `/join` under way: its cookie answer is returned for it.
    joining: Option<String>,
    strangers: u64,
}

/// The text with control characters (ESC, CR, ...) and bidi controls escaped (`\u{1b}`), so
/// that a datagram cannot drive the terminal or reorder what is shown. Tabs stay.
fn escaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let bidi = matches!(
            c,
            '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}'
        ) || matches!(c, '\u{2066}'..='\u{2069}');
        if (c.is_control() && c != '\t') || bidi {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

impl Client {
    /// A line typed on stdin: sent, `/join` padded (the server answers short ones with
    /// nothing), and remembered for its cookie.
    fn typed(&mut self, cx: &mut Context<'_, Self>, socket: UdpId, mut line: Vec<u8>) {
        if let Some(name) = line.strip_prefix(b"/join") {
            self.joining = Some(String::from_utf8_lossy(name).trim().to_string());
            line.resize(line.len().max(JOIN_PAD), b' ');
        }
        send(cx, socket, &line, &self.server.into());
    }
}

impl Handler for Client {
    type Conn = ();

    fn on_datagram(&mut self, cx: &mut Context<'_, Self>, socket: UdpId, data: &[u8], from: &Addr) {
        if from.as_inet() != Some(self.server) {
            self.strangers += 1;
            if self.strangers.is_power_of_two() {
                log::warn!(
                    "ignored {} datagrams not from the server (last: {from})",
                    self.strangers
                );
            }
            return;
        }
        let text = String::from_utf8_lossy(data.strip_suffix(b"\n").unwrap_or(data));
        if let (Some(cookie), Some(name)) = (text.strip_prefix("COOKIE "), &self.joining) {
            let proof = format!("/join {name} {cookie}");
            return send(cx, socket, proof.as_bytes(), &self.server.into());
        }
        // Not println!: no panic on EPIPE.
        let _ = writeln!(std::io::stdout(), "{}", escaped(&text));
    }
}

fn run_client(server: SocketAddr) -> std::io::Result<()> {
    // Loopback talks to loopback; anything else from the wildcard address.
    let ip: IpAddr = match server.ip() {
        ip if ip.is_loopback() => ip,
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let client = Client {
        server,
        joining: None,
        strangers: 0,
    };
    let mut el = EventLoop::new(client)?;
    let socket = el.bind_udp(SocketAddr::new(ip, 0))?;
    log::info!(
        "udp_chat client on {} talking to {server}",
        el.context().udp_addr(socket)?
    );
    let handle = el.handle();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().split(b'\n') {
            let Ok(line) = line else { break };
            let task =
                move |c: &mut Client, cx: &mut Context<'_, Client>| c.typed(cx, socket, line);
            if handle.post(task).is_err() {
                return; // the loop is gone
            }
        }
        let _ = handle.stop(); // EOF: runs after the lines posted before it
    });
    el.run()
}

struct Args {
    addr: SocketAddr,
    expiry: Duration,
    connect: Option<SocketAddr>,
    max_peers: usize,
    max_per_ip: usize,
}

const USAGE: &str = "usage: udp_chat [--addr ADDR] [--expiry SECS] [--max-peers N] \
[--max-per-ip N] | udp_chat --connect ADDR";

fn parse_args() -> Args {
    let mut parsed = Args {
        addr: "127.0.0.1:7002".parse().unwrap(),
        expiry: Duration::from_secs(60),
        connect: None,
        max_peers: 10_000,
        max_per_ip: 16,
    };
    let mut args = common::Args::new(USAGE);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--addr" => parsed.addr = args.value(&arg),
            "--connect" => parsed.connect = Some(args.value(&arg)),
            "--expiry" => {
                let secs: f64 = args.value(&arg);
                let expiry = Duration::try_from_secs_f64(secs);
                parsed.expiry = expiry.unwrap_or_else(|e| args.fail(e));
            }
            "--max-peers" => parsed.max_peers = args.value(&arg),
            "--max-per-ip" => parsed.max_per_ip = args.value(&arg),
            _ => args.unexpected(&arg),
        }
    }
    parsed
}

fn main() -> std::io::Result<()> {
    common::init_logging("info");
    let args = parse_args();
    if let Some(server) = args.connect {
        return run_client(server);
    }
    let random = ring::rand::SystemRandom::new();
    let key = hmac::Key::generate(hmac::HMAC_SHA256, &random)
        .map_err(|_| std::io::Error::other("no random key for the cookies"))?;
    let server = Server {
        peers: HashMap::new(),
        per_ip: HashMap::new(),
        expiry: args.expiry,
        max_peers: args.max_peers,
        max_per_ip: args.max_per_ip,
        key,
        started: Instant::now(),
        me: None,
        out: Vec::new(),
    };
    let mut el = EventLoop::new(server)?;
    let socket = el.bind_udp(args.addr)?;
    let mut cx = el.context();
    let me = cx.udp_addr(socket)?;
    log::info!("udp_chat listening on {me}");
    // Sweep a few times per expiry (at most every second), so the silent go soon after it.
    cx.set_interval((args.expiry / 4).clamp(Duration::from_millis(10), Duration::from_secs(1)));
    el.handler_mut().me = me.as_inet();
    el.shutdown_on_signals(Duration::from_secs(5))?;
    el.run()
}
