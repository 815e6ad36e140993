//! UDP chat: a chat room over datagrams, and a client for it in the same binary.
//!
//! ```text
//! cargo run --release --example udp_chat -- --addr 127.0.0.1:7002 --expiry 60    # server
//! cargo run --release --example udp_chat -- --connect 127.0.0.1:7002  # client: stdin, stdout
//! nc -u 127.0.0.1 7002            # or any datagram tool (nc sends one datagram per line)
//! socat - UDP:127.0.0.1:7002
//! ```
//!
//! One message per datagram (a trailing "\n" or "\r\n" is ignored). `/join NAME` registers
//! the sender's address as NAME (1 to 32 visible characters, unique): `OK`. Text from a
//! registered sender goes to every other one heard from in the last `--expiry` seconds as
//! `[name] text`; `/leave`: `OK`; anything else: `ERR ...`. Any datagram counts as heard
//! from (an empty one is a keepalive); a repeating timer forgets the silent, who must join
//! again. Client mode binds an ephemeral socket, sends each stdin line as a datagram (a
//! thread reads stdin and posts lines into the loop through a `Handle`; EOF stops the loop)
//! and prints each datagram that arrives.

mod common;

use evloop::{Addr, Context, EventLoop, Handler, TimerId, UdpId};
use std::collections::HashMap;
use std::fmt;
use std::io::{BufRead, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

const MAX_NAME: usize = 32;

struct Peer {
    name: String,
    seen: Instant,
}

struct Server {
    peers: HashMap<Addr, Peer>,
    expiry: Duration,
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

    /// Handles one datagram's text from `from`.
    fn on_text(&mut self, cx: &mut Context<'_, Self>, socket: UdpId, from: &Addr, text: &str) {
        let Some(command) = text.strip_prefix('/') else {
            return self.say(cx, socket, from, text);
        };
        let (cmd, arg) = command.split_once(' ').unwrap_or((command, ""));
        let name = arg.trim();
        match cmd {
            "join" if !valid_name(name) => {
                let msg = format_args!("ERR name must be 1 to {MAX_NAME} visible characters");
                self.reply(cx, socket, from, msg)
            }
            "join" if self.peers.iter().any(|(a, p)| p.name == name && a != from) => {
                self.reply(cx, socket, from, format_args!("ERR name {name} is taken"))
            }
            "join" => {
                log::info!("{name} joined from {from}");
                let seen = cx.now();
                let name = name.into();
                self.peers.insert(from.clone(), Peer { name, seen });
                self.reply(cx, socket, from, format_args!("OK"))
            }
            "leave" => match self.peers.remove(from) {
                Some(peer) => {
                    log::info!("{} left", peer.name);
                    self.reply(cx, socket, from, format_args!("OK"))
                }
                None => self.reply(cx, socket, from, format_args!("ERR join first")),
            },
            _ => self.reply(cx, socket, from, format_args!("ERR unknown command /{cmd}")),
        }
    }

    /// Text: to every other peer heard from within the expiry, formatted once.
    fn say(&mut self, cx: &mut Context<'_, Self>, socket: UdpId, from: &Addr, text: &str) {
        let Some(me) = self.peers.get(from) else {
            return self.reply(cx, socket, from, format_args!("ERR join first"));
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
        if let Some(peer) = self.peers.get_mut(from) {
            peer.seen = cx.now();
        }
        let data = data.strip_suffix(b"\n").unwrap_or(data);
        let data = data.strip_suffix(b"\r").unwrap_or(data);
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
        self.peers.retain(|addr, peer| {
            let keep = now.duration_since(peer.seen) < expiry;
            if !keep {
                log::info!("{} ({addr}) expired", peer.name);
            }
            keep
        });
    }
}

/// Client mode: prints every datagram that arrives, one per line.
struct Client;

impl Handler for Client {
    type Conn = ();

    fn on_datagram(&mut self, _: &mut Context<'_, Self>, _: UdpId, data: &[u8], _: &Addr) {
        let text = String::from_utf8_lossy(data.strip_suffix(b"\n").unwrap_or(data));
        let _ = writeln!(std::io::stdout(), "{text}"); // not println!: no panic on EPIPE
    }
}

fn run_client(server: SocketAddr) -> std::io::Result<()> {
    // Loopback talks to loopback; anything else from the wildcard address.
    let ip: IpAddr = match server.ip() {
        ip if ip.is_loopback() => ip,
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let mut el = EventLoop::new(Client)?;
    let socket = el.bind_udp(SocketAddr::new(ip, 0))?;
    log::info!(
        "udp_chat client on {} talking to {server}",
        el.context().udp_addr(socket)?
    );
    let handle = el.handle();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().split(b'\n') {
            let Ok(line) = line else { break };
            let task = move |_: &mut Client, cx: &mut Context<'_, Client>| {
                send(cx, socket, &line, &server.into());
            };
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
}

const USAGE: &str = "usage: udp_chat [--addr ADDR] [--expiry SECS] | udp_chat --connect ADDR";

fn parse_args() -> Args {
    let mut parsed = Args {
        addr: "127.0.0.1:7002".parse().unwrap(),
        expiry: Duration::from_secs(60),
        connect: None,
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
    let server = Server {
        peers: HashMap::new(),
        expiry: args.expiry,
        out: Vec::new(),
    };
    let mut el = EventLoop::new(server)?;
    let socket = el.bind_udp(args.addr)?;
    let mut cx = el.context();
    log::info!("udp_chat listening on {}", cx.udp_addr(socket)?);
    // Sweep a few times per expiry (at most every second), so the silent go soon after it.
    cx.set_interval((args.expiry / 4).clamp(Duration::from_millis(10), Duration::from_secs(1)));
    el.shutdown_on_signals(Duration::from_secs(5))?;
    el.run()
}
