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
use std::time::Duration;

const MAX_LINE: usize = 4096;
const MAX_NICK: usize = 32;

/// Each user's own state, kept by the loop beside the connection.
struct User {
    nick: String,
    decoder: LineDecoder,
}

impl Default for User {
    fn default() -> Self {
        User {
            nick: String::new(),
            decoder: LineDecoder::new(MAX_LINE),
        }
    }
}

/// Who is here: what the room needs to reach the others and keep nicks unique.
#[derive(Default)]
struct Chat {
    members: HashMap<String, ConnId>,
    guests: u64,
    /// Each outgoing line is formatted here once, then sent to every recipient.
    out: Vec<u8>,
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

impl Chat {
    fn taken(&self, name: &str, by_other_than: ConnId) -> bool {
        self.members
            .get(name)
            .is_some_and(|&id| id != by_other_than)
    }

    /// Sends the line in `out` to everyone but `except`: one formatted line, one shared copy.
    /// A member that refuses it is closing, or is cut off now at its output limit (its
    /// `on_close` announces the leave): the room goes on without it.
    fn broadcast(&self, cx: &mut Context<'_, Self>, except: ConnId) {
        let others = self.members.values().copied().filter(|&id| id != except);
        cx.broadcast(others, &self.out);
    }

    /// Answers `conn`; `Break` if it refused (it is closing, or was just cut off at its
    /// output limit), so that its remaining lines are not handled.
    fn reply(
        &mut self,
        cx: &mut Context<'_, Self>,
        conn: ConnId,
        args: fmt::Arguments<'_>,
    ) -> ControlFlow<()> {
        fill(&mut self.out, args);
        match cx.send(conn, &self.out) {
            Ok(()) => ControlFlow::Continue(()),
            Err(_) => ControlFlow::Break(()),
        }
    }

    /// Handles one line (or framing error) from `conn`; `Break` stops reading its input.
    fn on_line(
        &mut self,
        cx: &mut Context<'_, Self>,
        conn: ConnId,
        nick: &mut String,
        frame: Result<&[u8], FrameError>,
    ) -> ControlFlow<()> {
        let text = match text_of(frame) {
            Ok(text) => text,
            Err(why) => return self.reply(cx, conn, format_args!("ERR {why}")),
        };
        let Some(command) = text.strip_prefix('/') else {
            if !text.is_empty() {
                fill(&mut self.out, format_args!("[{nick}] {text}"));
                self.broadcast(cx, conn);
            }
            return ControlFlow::Continue(());
        };
        let (cmd, arg) = command.split_once(' ').unwrap_or((command, ""));
        let arg = arg.trim();
        match cmd {
            "nick" => self.set_nick(cx, conn, nick, arg),
            "who" => {
                let mut names: Vec<&str> = self.members.keys().map(String::as_str).collect();
                names.sort_unstable();
                let names = names.join(" ");
                self.reply(cx, conn, format_args!("* users: {names}"))
            }
            "me" if arg.is_empty() => self.reply(cx, conn, format_args!("ERR usage: /me ACTION")),
            "me" => {
                fill(&mut self.out, format_args!("* {nick} {arg}"));
                self.broadcast(cx, conn);
                ControlFlow::Continue(())
            }
            "quit" => {
                let _ = self.reply(cx, conn, format_args!("* bye")); // closing either way
                cx.close(conn); // flushes the queue, then FIN; on_close announces the leave
                ControlFlow::Break(())
            }
            _ => self.reply(cx, conn, format_args!("ERR unknown command /{cmd}")),
        }
    }

    fn set_nick(
        &mut self,
        cx: &mut Context<'_, Self>,
        conn: ConnId,
        nick: &mut String,
        name: &str,
    ) -> ControlFlow<()> {
        if !valid_nick(name) {
            let msg = format_args!("ERR nick must be 1 to {MAX_NICK} visible characters");
            return self.reply(cx, conn, msg);
        }
        if self.taken(name, conn) {
            return self.reply(cx, conn, format_args!("ERR nick {name} is taken"));
        }
        let old = std::mem::replace(nick, name.into());
        self.members.remove(&old);
        self.members.insert(name.into(), conn);
        log::info!("{old} is now {name}");
        fill(&mut self.out, format_args!("* {old} is now {name}"));
        self.broadcast(cx, conn);
        self.reply(cx, conn, format_args!("* you are now {name}"))
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
    type Conn = User;

    fn on_open(&mut self, cx: &mut Context<'_, Self>, conn: ConnId, user: &mut User) {
        user.nick = loop {
            self.guests += 1;
            let nick = format!("guest{}", self.guests);
            if !self.taken(&nick, conn) {
                break nick;
            }
        };
        log::info!("{} joined ({conn})", user.nick);
        // Keep the kernel's share small (autotuned, it can hold megabytes on loopback), so
        // that a client that stops reading meets the output limit below soon.
        let _ = cx.set_send_buffer_size(conn, 64 * 1024);
        fill(&mut self.out, format_args!("* {} joined", user.nick));
        self.broadcast(cx, conn);
        let help = "/nick NAME, /who, /me ACTION, /quit";
        let welcome = format_args!("* welcome, you are {} ({help})", user.nick);
        let _ = self.reply(cx, conn, welcome); // a refusal closes it: on_close says it left
        self.members.insert(user.nick.clone(), conn);
    }

    fn on_data(
        &mut self,
        cx: &mut Context<'_, Self>,
        conn: ConnId,
        user: &mut User,
        input: &[u8],
    ) -> usize {
        // Whole lines only: the loop keeps a partial one (at most MAX_LINE + 1 bytes) and
        // presents it again with the next bytes.
        let nick = &mut user.nick; // beside the decoder: disjoint fields of the state
        user.decoder
            .decode(input, |line| self.on_line(cx, conn, nick, line))
    }

    fn on_close(
        &mut self,
        cx: &mut Context<'_, Self>,
        conn: ConnId,
        user: User,
        reason: &CloseReason,
    ) {
        if self.members.remove(&user.nick).is_some() {
            log::info!("{} left: {reason}", user.nick);
            fill(&mut self.out, format_args!("* {} left", user.nick));
            self.broadcast(cx, conn);
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
    el.shutdown_on_signals(Duration::from_secs(5))?;
    el.run()
}
