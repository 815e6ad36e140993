//! Chat room: a line-based TCP chat built on `LineDecoder`; each line goes to everyone else.
//!
//! ```text
//! cargo run --release --example chat -- --addr 127.0.0.1:7001
//! nc 127.0.0.1 7001                    # in two or more terminals, then type lines
//! socat - TCP:127.0.0.1:7001,crlf      # the same, sending CRLF line ends
//! ```
//!
//! Commands: `/nick NAME` (1 to 32 visible characters, that is no whitespace or control
//! characters; unique among connected users), `/who`, `/me ACTION`, `/quit`. Other lines
//! reach everyone else as `[nick] text`; a user without a nick is `guest<N>`. Notices start
//! with `* `, errors with `ERR ` (unknown command, line over 4096 bytes, invalid UTF-8,
//! control characters other than tab); after an error the connection stays open. A client
//! that stops reading is cut off once 256 KiB are queued for it, so it never holds up the
//! room. Options: `--addr ADDR` (default 127.0.0.1:7001).

mod common;

use evloop::{CloseReason, Config, ConnId, Context, EventLoop, FrameError, Handler, LineDecoder};
use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::ops::ControlFlow;

const MAX_LINE: usize = 4096;
const MAX_NICK: usize = 32;

/// Who is here. Kept apart from the decoders so that a connection's decoder can be fed
/// while its callback changes the room (disjoint fields of `Chat`).
#[derive(Default)]
struct Room {
    nicks: HashMap<ConnId, String>,
    guests: u64,
    /// Each outgoing line is formatted here once, then sent to every recipient.
    out: Vec<u8>,
}

#[derive(Default)]
struct Chat {
    room: Room,
    decoders: HashMap<ConnId, LineDecoder>,
}

/// Formats one line, with its "\n", into `buf` (reusing its allocation).
fn fill(buf: &mut Vec<u8>, args: fmt::Arguments<'_>) {
    buf.clear();
    let _ = buf.write_fmt(args);
    buf.push(b'\n');
}

/// 1 to 32 characters, none of them whitespace or control characters.
fn valid_nick(name: &str) -> bool {
    (1..=MAX_NICK).contains(&name.chars().count())
        && !name.chars().any(|c| c.is_whitespace() || c.is_control())
}

impl Room {
    fn taken(&self, name: &str, by_other_than: ConnId) -> bool {
        // A linear scan: nick changes are rare next to messages.
        self.nicks
            .iter()
            .any(|(&id, n)| n == name && id != by_other_than)
    }

    /// Sends the line in `out` to everyone but `except`: one formatted line, many sends.
    fn broadcast(&self, cx: &mut Context<'_>, except: ConnId) {
        for &id in self.nicks.keys().filter(|&&id| id != except) {
            cx.send(id, &self.out);
        }
    }

    fn reply(&mut self, cx: &mut Context<'_>, conn: ConnId, args: fmt::Arguments<'_>) {
        fill(&mut self.out, args);
        cx.send(conn, &self.out);
    }

    /// Handles one line (or framing error) from `conn`; `Break` stops reading its input.
    fn on_line(
        &mut self,
        cx: &mut Context<'_>,
        conn: ConnId,
        frame: Result<&[u8], FrameError>,
    ) -> ControlFlow<()> {
        let text = match text_of(frame) {
            Ok(text) => text,
            Err(why) => {
                self.reply(cx, conn, format_args!("ERR {why}"));
                return ControlFlow::Continue(());
            }
        };
        let Some(command) = text.strip_prefix('/') else {
            if !text.is_empty() {
                fill(
                    &mut self.out,
                    format_args!("[{}] {text}", self.nicks[&conn]),
                );
                self.broadcast(cx, conn);
            }
            return ControlFlow::Continue(());
        };
        let (cmd, arg) = command.split_once(' ').unwrap_or((command, ""));
        let arg = arg.trim();
        match cmd {
            "nick" => self.set_nick(cx, conn, arg),
            "who" => {
                let mut names: Vec<&str> = self.nicks.values().map(String::as_str).collect();
                names.sort_unstable();
                fill(&mut self.out, format_args!("* users: {}", names.join(" ")));
                cx.send(conn, &self.out);
            }
            "me" if arg.is_empty() => self.reply(cx, conn, format_args!("ERR usage: /me ACTION")),
            "me" => {
                fill(&mut self.out, format_args!("* {} {arg}", self.nicks[&conn]));
                self.broadcast(cx, conn);
            }
            "quit" => {
                self.reply(cx, conn, format_args!("* bye"));
                cx.close(conn); // flushes the queue, then FIN; on_close announces the leave
                return ControlFlow::Break(());
            }
            _ => self.reply(cx, conn, format_args!("ERR unknown command /{cmd}")),
        }
        ControlFlow::Continue(())
    }

    fn set_nick(&mut self, cx: &mut Context<'_>, conn: ConnId, name: &str) {
        if !valid_nick(name) {
            let msg = format_args!("ERR nick must be 1 to {MAX_NICK} visible characters");
            return self.reply(cx, conn, msg);
        }
        if self.taken(name, conn) {
            return self.reply(cx, conn, format_args!("ERR nick {name} is taken"));
        }
        let old = std::mem::replace(self.nicks.get_mut(&conn).unwrap(), name.into());
        log::info!("{old} is now {name}");
        fill(&mut self.out, format_args!("* {old} is now {name}"));
        self.broadcast(cx, conn);
        self.reply(cx, conn, format_args!("* you are now {name}"));
    }
}

/// The text of a line, or why it is refused: too long, not UTF-8, control characters.
fn text_of(frame: Result<&[u8], FrameError>) -> Result<&str, String> {
    let text = std::str::from_utf8(frame.map_err(|e| e.to_string())?)
        .map_err(|_| "invalid UTF-8".to_string())?;
    if text.chars().any(|c| c.is_control() && c != '\t') {
        return Err("control characters are not allowed".into());
    }
    Ok(text)
}

impl Handler for Chat {
    fn on_open(&mut self, cx: &mut Context<'_>, conn: ConnId) {
        let room = &mut self.room;
        let nick = loop {
            room.guests += 1;
            let nick = format!("guest{}", room.guests);
            if !room.taken(&nick, conn) {
                break nick;
            }
        };
        log::info!("{nick} joined ({conn})");
        // Keep the kernel's share small (autotuned, it can hold megabytes on loopback), so
        // that a client that stops reading meets the output limit below soon.
        let _ = cx.set_send_buffer_size(conn, 64 * 1024);
        fill(&mut room.out, format_args!("* {nick} joined"));
        room.broadcast(cx, conn);
        let help = "/nick NAME, /who, /me ACTION, /quit";
        room.reply(cx, conn, format_args!("* welcome, you are {nick} ({help})"));
        room.nicks.insert(conn, nick);
        self.decoders.insert(conn, LineDecoder::new(MAX_LINE));
    }

    fn on_data(&mut self, cx: &mut Context<'_>, conn: ConnId, data: &[u8]) {
        if let Some(decoder) = self.decoders.get_mut(&conn) {
            decoder.feed(data, |frame| self.room.on_line(cx, conn, frame));
        }
    }

    fn on_close(&mut self, cx: &mut Context<'_>, conn: ConnId, reason: &CloseReason) {
        self.decoders.remove(&conn);
        if let Some(nick) = self.room.nicks.remove(&conn) {
            log::info!("{nick} left: {reason}");
            fill(&mut self.room.out, format_args!("* {nick} left"));
            self.room.broadcast(cx, conn);
        }
    }
}

const USAGE: &str = "usage: chat [--addr ADDR]";

fn parse_args() -> std::net::SocketAddr {
    let mut addr = "127.0.0.1:7001".parse().unwrap();
    let mut args = common::Args::new(USAGE);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--addr" => addr = args.value(&arg),
            _ => args.unexpected(&arg),
        }
    }
    addr
}

fn main() -> std::io::Result<()> {
    common::init_logging("info");
    let addr = parse_args();
    let mut config = Config::default();
    // A reader that falls this far behind is cut off (CloseReason::OutputLimit); above the
    // high watermark it counts as congested, and we stop reading from it meanwhile.
    config.max_output = 256 * 1024;
    config.high_watermark = 64 * 1024;
    config.low_watermark = 16 * 1024;
    let mut el = EventLoop::with_config(Chat::default(), config)?;
    let listener = el.listen(addr)?;
    log::info!(
        "chat listening on {}",
        el.context().listener_addr(listener)?
    );
    el.watch_signals(&[libc::SIGINT, libc::SIGTERM])?;
    el.run()
}
