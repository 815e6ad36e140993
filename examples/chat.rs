//! Chat room: a line-based TCP chat built on `LineDecoder`; each line goes to everyone else.
//!
//! ```text
//! cargo run --release --example chat -- --addr 127.0.0.1:7001
//! nc 127.0.0.1 7001                    # in two or more terminals, then type lines
//! socat - TCP:127.0.0.1:7001,crlf      # the same, sending CRLF line ends
//! cargo run --release --example chat -- --threads 2    # one room over two event loops
//! ```
//!
//! Commands: `/nick NAME` (1 to 32 visible characters: no whitespace, control, format,
//! default-ignorable or bidi-control characters, so no invisible or look-alike nicks;
//! unique among connected users), `/who`, `/me ACTION`, `/quit`. Other lines reach everyone
//! else as `[nick] text`; a user without a nick is `guest<N>`. Notices start with `* `,
//! errors with `ERR ` (unknown command, line over 4096 bytes, invalid UTF-8, control
//! characters other than tab); after an error the connection stays open.
//!
//! Limits, so that hostile clients cannot take the room down (each with its option):
//! - `--login-timeout SECS` (30): a connection that has not completed a line (say `/nick
//!   NAME`) this long after connecting is told `ERR timed out: ...` and closed.
//! - `--line-timeout SECS` (30): so is one that leaves a line unfinished this long.
//! - `--max-per-ip N` (64; 0: none): connections from one IP address; past it a connection
//!   is told `ERR too many connections from your address` and closed. With `--threads`,
//!   each loop counts its own.
//! - `--idle-timeout SECS` (0: off): close connections silent in both directions.
//! - Floods are paced, not passed on: while any reader's queue is above 64 KiB (the high
//!   watermark), reading from every sender pauses, and resumes when the readers have
//!   drained to 16 KiB (across loops too); and after each 32 KiB of chat a loop delivers,
//!   its senders wait for the next tick. So a burst from one user slows that user down and
//!   cuts no reader off.
//! - `--stall-timeout SECS` (2): a congested reader must take at least 16 KiB of its queue
//!   every this long; one that does not (it stopped reading) is cut off, so it cannot hold
//!   the room up. 256 KiB queued for one reader cuts it off in any case.
//! - Joins and leaves are announced at most every 250 ms, in one batch (`* 37 users
//!   joined`), so a storm of connects costs each user a line per batch, not one per join.
//!
//! `--threads N` runs N event loops (`evloop::Workers`, SO_REUSEPORT): a line is delivered
//! to its own loop's users and posted to the other loops (`Peers::post_others`), which
//! deliver it to theirs; posts between two loops keep their order, so each sender's lines
//! arrive in order everywhere. Nicks are kept unique across loops in one shared set, used
//! on joins, leaves and renames only. SIGINT/SIGTERM shut every loop down gracefully.
//! Options: `--addr ADDR` (default 127.0.0.1:7001), `--threads N` (1).

mod common;

use evloop::{
    Bytes, CloseReason, Config, ConnId, Context, FrameError, Handler, LineDecoder, Peers, TimerId,
    Workers,
};
use icu_properties::props::{BidiControl, DefaultIgnorableCodePoint, GeneralCategory};
use icu_properties::{CodePointMapData, CodePointSetData};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::Write;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

const MAX_LINE: usize = 4096;
const MAX_NICK: usize = 32;
/// Join and leave announcements go out at most this often, batched.
const ANNOUNCE_EVERY: Duration = Duration::from_millis(250);
/// Chat text from one sender is gathered up to this much before it is delivered.
const TEXT_BATCH: usize = 16 * 1024;
/// Chat text a loop delivers before its senders wait for the next tick (the count starts
/// again then): one sender cannot hold the loop, and other loops hear of congestion soon.
const TICK_BUDGET: usize = 32 * 1024;
/// What a congested reader must take of its queue per stall check.
const MIN_PROGRESS: usize = 16 * 1024;
/// More joins (or leaves) than this in one batch are announced as a count.
const LIST_UP_TO: usize = 3;

/// What the loops share: the nicks in use (unique across the room) and the guest counter.
/// Touched on joins, leaves and renames, never per message.
#[derive(Default)]
struct Names {
    taken: Mutex<HashSet<String>>,
    guests: AtomicU64,
}

impl Names {
    fn lock(&self) -> MutexGuard<'_, HashSet<String>> {
        self.taken.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The timeouts, from the command line (zero: off).
#[derive(Clone, Copy)]
struct Limits {
    login_timeout: f64,
    line_timeout: f64,
    stall_timeout: f64,
}

/// Each user's own state, kept by the loop beside the connection.
struct User {
    nick: String,
    decoder: LineDecoder,
    /// Has completed a line since connecting.
    registered: bool,
    login_timer: Option<TimerId>,
    /// Armed while a line is left unfinished.
    line_timer: Option<TimerId>,
}

impl Default for User {
    fn default() -> Self {
        User {
            nick: String::new(),
            decoder: LineDecoder::new(MAX_LINE),
            registered: false,
            login_timer: None,
            line_timer: None,
        }
    }
}

/// A join or leave waiting to be announced.
enum Event {
    Joined(String, ConnId),
    Left(String),
}

/// A reader whose queue is above the high watermark.
struct Congested {
    /// Its queue at the last stall check.
    queued: usize,
    timer: Option<TimerId>,
}

/// One loop's share of the room.
struct Chat {
    peers: Peers<Chat>,
    names: Arc<Names>,
    limits: Limits,
    /// The users connected to this loop.
    members: HashSet<ConnId>,
    /// Joins and leaves not yet announced, in order.
    pending: Vec<Event>,
    last_announce: Option<Instant>,
    announce_timer: Option<TimerId>,
    /// This loop's congested readers.
    congested: HashMap<ConnId, Congested>,
    /// Whether the other loops were told that this one has congested readers.
    told_congested: bool,
    /// Other loops with congested readers, by index.
    remote_congested: Vec<bool>,
    /// Senders paused until the room has drained.
    waiting: HashSet<ConnId>,
    /// Senders paused until the next tick, and the chat text delivered in this one.
    yielded: Vec<ConnId>,
    tick_bytes: usize,
    /// Chat text of the sender being read, gathered.
    text: Vec<u8>,
    /// Lines for the other loops, gathered during a callback and posted at its end.
    remote: Vec<u8>,
    /// Each notice or reply is formatted here once.
    out: Vec<u8>,
}

/// Formats one line, with its "\n", into `buf` (reusing its allocation).
fn fill(buf: &mut Vec<u8>, args: fmt::Arguments<'_>) {
    buf.clear();
    let _ = buf.write_fmt(args);
    buf.push(b'\n');
}

/// 1 to 32 characters, each of them visible: no whitespace or control characters, no
/// format (Cf) or default-ignorable ones (zero-width spaces and joiners, word joiner, BOM,
/// soft hyphen, Hangul fillers, variation selectors, tags), no bidi controls (overrides,
/// isolates, marks), no unassigned or private-use code points. The Unicode properties come
/// from ICU4X's compiled data, not from a hand-written table.
fn valid_nick(name: &str) -> bool {
    let category = CodePointMapData::<GeneralCategory>::new();
    let ignorable = CodePointSetData::new::<DefaultIgnorableCodePoint>();
    let bidi = CodePointSetData::new::<BidiControl>();
    (1..=MAX_NICK).contains(&name.chars().count())
        && name.chars().all(|c| {
            !c.is_whitespace()
                && !ignorable.contains(c)
                && !bidi.contains(c)
                && !matches!(
                    category.get(c),
                    GeneralCategory::Control
                        | GeneralCategory::Format
                        | GeneralCategory::Unassigned
                        | GeneralCategory::PrivateUse
                        | GeneralCategory::Surrogate
                        | GeneralCategory::SpaceSeparator
                        | GeneralCategory::LineSeparator
                        | GeneralCategory::ParagraphSeparator
                )
        })
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

fn secs(s: f64) -> Option<Duration> {
    (s > 0.0).then(|| Duration::from_secs_f64(s))
}

impl Chat {
    fn new(peers: Peers<Chat>, names: Arc<Names>, limits: Limits) -> Chat {
        let loops = peers.len();
        Chat {
            peers,
            names,
            limits,
            members: HashSet::new(),
            pending: Vec::new(),
            last_announce: None,
            announce_timer: None,
            congested: HashMap::new(),
            told_congested: false,
            remote_congested: vec![false; loops],
            waiting: HashSet::new(),
            yielded: Vec::new(),
            tick_bytes: 0,
            text: Vec::new(),
            remote: Vec::new(),
            out: Vec::new(),
        }
    }

    // ---- Delivery ----

    /// Sends `line` to this loop's users but those `skip` names, one shared copy, and notes
    /// who became congested. A user that refuses is closing, or is cut off now at its
    /// output limit (its `on_close` announces the leave): the room goes on without it.
    fn deliver(&mut self, cx: &mut Context<'_, Self>, line: &[u8], skip: impl Fn(ConnId) -> bool) {
        let shared = Bytes::copy_from_slice(line);
        let mut newly = Vec::new();
        for &m in &self.members {
            if skip(m) || cx.send_shared(m, &shared).is_err() {
                continue;
            }
            if cx.is_congested(m) && !self.congested.contains_key(&m) {
                newly.push(m);
            }
        }
        for m in newly {
            let queued = cx.queued(m).unwrap_or(0);
            let timer = secs(self.limits.stall_timeout).and_then(|t| cx.set_conn_timer(m, t));
            self.congested.insert(m, Congested { queued, timer });
        }
        if !self.congested.is_empty() && !self.told_congested {
            self.told_congested = true;
            self.tell_others(true);
        }
    }

    /// A line for every user: this loop's but `skip`, and the other loops' (posted at the
    /// end of the callback).
    fn tell_room(
        &mut self,
        cx: &mut Context<'_, Self>,
        line: &[u8],
        skip: impl Fn(ConnId) -> bool,
    ) {
        self.deliver(cx, line, skip);
        if self.peers.len() > 1 {
            self.remote.extend_from_slice(line);
        }
    }

    /// Posts the lines gathered for the other loops; they deliver them to their users.
    fn post_remote(&mut self) {
        if self.remote.is_empty() {
            return;
        }
        let lines = Bytes::from(std::mem::take(&mut self.remote));
        let posted = self
            .peers
            .post_others(move |chat: &mut Chat, cx| chat.deliver(cx, &lines, |_| false));
        if let Err(e) = posted {
            log::debug!("posting to the other loops: {e}"); // they are shutting down
        }
    }

    /// Tells the other loops whether this one has congested readers.
    fn tell_others(&self, congested: bool) {
        if self.peers.len() < 2 {
            return;
        }
        let from = self.peers.index();
        let told = self.peers.post_others(move |chat: &mut Chat, cx| {
            chat.remote_congested[from] = congested;
            chat.resume_if_clear(cx);
        });
        if let Err(e) = told {
            log::debug!("telling the other loops: {e}");
        }
    }

    fn room_congested(&self) -> bool {
        !self.congested.is_empty() || self.remote_congested.contains(&true)
    }

    /// A reader drained or left: when no reader anywhere is congested, the senders go on.
    fn resume_if_clear(&mut self, cx: &mut Context<'_, Self>) {
        if self.congested.is_empty() && self.told_congested {
            self.told_congested = false;
            self.tell_others(false);
        }
        if !self.room_congested() {
            for s in self.waiting.drain() {
                cx.resume_read(s); // what it sent meanwhile is presented again
            }
        }
    }

    /// Delivers the chat text gathered from `from` to the room.
    fn flush_text(&mut self, cx: &mut Context<'_, Self>, from: ConnId) {
        if self.text.is_empty() {
            return;
        }
        let text = std::mem::take(&mut self.text);
        self.tell_room(cx, &text, |m| m == from);
        self.tick_bytes += text.len();
        self.text = text;
        self.text.clear();
    }

    /// Whether `sender` must stop for now: some reader is congested (it waits for the room
    /// to drain), or this loop delivered its share for this tick (it waits for the next).
    fn must_wait(&mut self, cx: &mut Context<'_, Self>, sender: ConnId) -> bool {
        if self.room_congested() {
            cx.pause_read(sender);
            self.waiting.insert(sender);
            return true;
        }
        if self.tick_bytes >= TICK_BUDGET {
            cx.pause_read(sender);
            if self.yielded.is_empty() {
                cx.defer(|chat: &mut Chat, cx| {
                    chat.tick_bytes = 0;
                    for s in std::mem::take(&mut chat.yielded) {
                        cx.resume_read(s);
                    }
                });
            }
            self.yielded.push(sender);
            return true;
        }
        false
    }

    // ---- Joins and leaves, in batches ----

    fn event(&mut self, cx: &mut Context<'_, Self>, event: Event) {
        self.pending.push(event);
        if self.announce_timer.is_some() {
            return; // the batch goes out when it fires
        }
        let now = cx.now();
        match self.last_announce.map(|t| t + ANNOUNCE_EVERY) {
            Some(next) if next > now => self.announce_timer = Some(cx.set_timer(next - now)),
            _ => self.announce(cx),
        }
    }

    /// Announces the pending joins, then the pending leaves: a line each if there are few,
    /// else a count. Those who joined in this batch are not told of this batch.
    fn announce(&mut self, cx: &mut Context<'_, Self>) {
        if self.pending.is_empty() {
            return;
        }
        self.last_announce = Some(cx.now());
        let mut joins = Vec::new();
        let mut leaves = Vec::new();
        for event in std::mem::take(&mut self.pending) {
            match event {
                Event::Joined(nick, conn) => joins.push((nick, conn)),
                Event::Left(nick) => leaves.push(nick),
            }
        }
        let mut out = std::mem::take(&mut self.out);
        let fresh: HashSet<ConnId> = joins.iter().map(|&(_, c)| c).collect();
        if joins.len() <= LIST_UP_TO {
            for (nick, conn) in &joins {
                fill(&mut out, format_args!("* {nick} joined"));
                self.tell_room(cx, &out, |m| m == *conn);
            }
        } else {
            fill(&mut out, format_args!("* {} users joined", joins.len()));
            self.tell_room(cx, &out, |m| fresh.contains(&m));
        }
        if leaves.len() <= LIST_UP_TO {
            for nick in &leaves {
                fill(&mut out, format_args!("* {nick} left"));
                self.tell_room(cx, &out, |m| fresh.contains(&m));
            }
        } else {
            fill(&mut out, format_args!("* {} users left", leaves.len()));
            self.tell_room(cx, &out, |m| fresh.contains(&m));
        }
        self.out = out;
    }

    // ---- Commands ----

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
            Err(why) => {
                self.flush_text(cx, conn);
                return self.reply(cx, conn, format_args!("ERR {why}"));
            }
        };
        // Joins and leaves before this line are announced before it.
        if !self.pending.is_empty() {
            self.flush_text(cx, conn);
            self.announce(cx);
        }
        let Some(command) = text.strip_prefix('/') else {
            if !text.is_empty() {
                let _ = writeln!(self.text, "[{nick}] {text}");
            }
            return ControlFlow::Continue(());
        };
        let (cmd, arg) = command.split_once(' ').unwrap_or((command, ""));
        let arg = arg.trim();
        if cmd == "me" && !arg.is_empty() {
            let _ = writeln!(self.text, "* {nick} {arg}");
            return ControlFlow::Continue(());
        }
        self.flush_text(cx, conn); // what came before the command goes first
        match cmd {
            "nick" => self.set_nick(cx, conn, nick, arg),
            "who" => {
                let mut names: Vec<String> = self.names.lock().iter().cloned().collect();
                names.sort_unstable();
                let names = names.join(" ");
                self.reply(cx, conn, format_args!("* users: {names}"))
            }
            "me" => self.reply(cx, conn, format_args!("ERR usage: /me ACTION")),
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
        if name != nick.as_str() {
            let mut taken = self.names.lock();
            if !taken.insert(name.into()) {
                drop(taken);
                return self.reply(cx, conn, format_args!("ERR nick {name} is taken"));
            }
            taken.remove(nick.as_str());
        }
        let old = std::mem::replace(nick, name.into());
        log::info!("{old} is now {name}");
        let mut out = std::mem::take(&mut self.out);
        fill(&mut out, format_args!("* {old} is now {name}"));
        self.tell_room(cx, &out, |m| m == conn);
        self.out = out;
        self.reply(cx, conn, format_args!("* you are now {name}"))
    }

    /// A free guest name, reserved.
    fn guest_name(&self) -> String {
        loop {
            let n = self.names.guests.fetch_add(1, Ordering::Relaxed) + 1;
            let nick = format!("guest{n}");
            if self.names.lock().insert(nick.clone()) {
                return nick;
            }
        }
    }

    /// Keeps the unfinished-line timer: armed while a line is left unfinished, restarted
    /// when a line was completed meanwhile, cancelled when nothing is left.
    fn line_timer(
        &mut self,
        cx: &mut Context<'_, Self>,
        conn: ConnId,
        user: &mut User,
        unfinished: bool,
        completed: bool,
    ) {
        let Some(after) = secs(self.limits.line_timeout) else {
            return;
        };
        if !unfinished || completed {
            if let Some(t) = user.line_timer.take() {
                cx.cancel_timer(t);
            }
        }
        if unfinished && user.registered && user.line_timer.is_none() {
            user.line_timer = cx.set_conn_timer(conn, after);
        }
    }
}

impl Handler for Chat {
    type Conn = User;

    fn on_open(&mut self, cx: &mut Context<'_, Self>, conn: ConnId, user: &mut User) {
        user.nick = self.guest_name();
        log::info!("{} joined ({conn}, loop {})", user.nick, self.peers.index());
        // Keep the kernel's share small (autotuned, it can hold megabytes on loopback), so
        // that a client that stops reading shows as congested soon.
        let _ = cx.set_send_buffer_size(conn, 64 * 1024);
        if let Some(after) = secs(self.limits.login_timeout) {
            user.login_timer = cx.set_conn_timer(conn, after);
        }
        let help = "/nick NAME, /who, /me ACTION, /quit";
        let welcome = format_args!("* welcome, you are {} ({help})", user.nick);
        let _ = self.reply(cx, conn, welcome); // a refusal closes it: on_close says it left
        self.members.insert(conn);
        self.event(cx, Event::Joined(user.nick.clone(), conn));
        self.post_remote();
    }

    fn on_data(
        &mut self,
        cx: &mut Context<'_, Self>,
        conn: ConnId,
        user: &mut User,
        input: &[u8],
    ) -> usize {
        if self.must_wait(cx, conn) {
            return 0; // all of it is kept and presented again when reading resumes
        }
        // Whole lines only: the loop keeps a partial one (at most MAX_LINE + 1 bytes) and
        // presents it again with the next bytes; and the lines after a pause.
        let (mut completed, mut paused) = (false, false);
        let nick = &mut user.nick; // beside the decoder: disjoint fields of the state
        let (registered, login_timer) = (&mut user.registered, &mut user.login_timer);
        let used = user.decoder.decode(input, |line| {
            completed = true;
            if !*registered {
                *registered = true;
                if let Some(t) = login_timer.take() {
                    cx.cancel_timer(t);
                }
            }
            self.on_line(cx, conn, nick, line)?;
            if self.text.len() >= TEXT_BATCH {
                self.flush_text(cx, conn);
                if self.must_wait(cx, conn) {
                    paused = true;
                    return ControlFlow::Break(());
                }
            }
            ControlFlow::Continue(())
        });
        self.flush_text(cx, conn);
        if !paused && cx.is_open(conn) && self.must_wait(cx, conn) {
            paused = true;
        }
        let unfinished = used < input.len() && !paused;
        self.line_timer(cx, conn, user, unfinished, completed);
        self.post_remote();
        used
    }

    fn on_drain(&mut self, cx: &mut Context<'_, Self>, conn: ConnId, _: &mut User) {
        if let Some(c) = self.congested.remove(&conn) {
            if let Some(t) = c.timer {
                cx.cancel_timer(t);
            }
            self.resume_if_clear(cx);
        }
    }

    fn on_conn_timer(
        &mut self,
        cx: &mut Context<'_, Self>,
        conn: ConnId,
        user: &mut User,
        timer: TimerId,
    ) {
        if let Some(c) = self
            .congested
            .get_mut(&conn)
            .filter(|c| c.timer == Some(timer))
        {
            // A stall check: a congested reader must be taking its queue.
            let queued = cx.queued(conn).unwrap_or(0);
            if queued + MIN_PROGRESS <= c.queued {
                c.queued = queued;
                c.timer = secs(self.limits.stall_timeout).and_then(|t| cx.set_conn_timer(conn, t));
                return;
            }
            log::info!("{} cut off: not reading ({queued} bytes queued)", user.nick);
            self.congested.remove(&conn);
            cx.abort(conn); // its queue is full: no room for a last word
            self.resume_if_clear(cx);
        } else if user.login_timer == Some(timer) {
            user.login_timer = None;
            if self.waiting.contains(&conn) {
                // Its input waits for the room to drain: our doing, not a slowloris.
                user.login_timer = secs(self.limits.login_timeout)
                    .and_then(|after| cx.set_conn_timer(conn, after));
                return;
            }
            let after = self.limits.login_timeout;
            let _ = self.reply(
                cx,
                conn,
                format_args!("ERR timed out: no line within {after} s"),
            );
            cx.close(conn);
        } else if user.line_timer == Some(timer) {
            user.line_timer = None;
            let after = self.limits.line_timeout;
            let msg = format_args!("ERR timed out: unfinished line for {after} s");
            let _ = self.reply(cx, conn, msg);
            cx.close(conn);
        }
    }

    fn on_close(
        &mut self,
        cx: &mut Context<'_, Self>,
        conn: ConnId,
        user: User,
        reason: &CloseReason,
    ) {
        if !self.members.remove(&conn) {
            return;
        }
        self.names.lock().remove(&user.nick);
        self.waiting.remove(&conn);
        log::info!("{} left: {reason}", user.nick);
        if self.congested.remove(&conn).is_some() {
            self.resume_if_clear(cx);
        }
        self.event(cx, Event::Left(user.nick));
        self.post_remote();
    }

    fn on_timer(&mut self, cx: &mut Context<'_, Self>, timer: TimerId) {
        if self.announce_timer == Some(timer) {
            self.announce_timer = None;
            self.announce(cx);
            self.post_remote();
        }
    }
}

struct Args {
    addr: std::net::SocketAddr,
    threads: usize,
    max_per_ip: usize,
    idle_timeout: f64,
    limits: Limits,
}

const USAGE: &str = "usage: chat [--addr ADDR] [--threads N] [--max-per-ip N] \
[--login-timeout SECS] [--line-timeout SECS] [--stall-timeout SECS] [--idle-timeout SECS]";

fn parse_args() -> Args {
    let mut parsed = Args {
        addr: "127.0.0.1:7001".parse().unwrap(),
        threads: 1,
        max_per_ip: 64,
        idle_timeout: 0.0,
        limits: Limits {
            login_timeout: 30.0,
            line_timeout: 30.0,
            stall_timeout: 2.0,
        },
    };
    let mut args = common::Args::new(USAGE);
    while let Some(arg) = args.next() {
        let secs = |args: &mut common::Args| {
            let s: f64 = args.value(&arg);
            match Duration::try_from_secs_f64(s) {
                Ok(_) => s,
                Err(e) => args.fail(format_args!("{arg} {s}: {e}")),
            }
        };
        match arg.as_str() {
            "--addr" => parsed.addr = args.value(&arg),
            "--threads" => parsed.threads = args.value(&arg),
            "--max-per-ip" => parsed.max_per_ip = args.value(&arg),
            "--login-timeout" => parsed.limits.login_timeout = secs(&mut args),
            "--line-timeout" => parsed.limits.line_timeout = secs(&mut args),
            "--stall-timeout" => parsed.limits.stall_timeout = secs(&mut args),
            "--idle-timeout" => parsed.idle_timeout = secs(&mut args),
            _ => args.unexpected(&arg),
        }
    }
    if parsed.threads == 0 {
        args.fail("--threads must be at least 1");
    }
    parsed
}

fn main() -> std::io::Result<()> {
    common::init_logging("info");
    let args = parse_args();
    let mut config = Config::default();
    // A reader that falls this far behind is cut off (CloseReason::OutputLimit); above the
    // high watermark it counts as congested: senders pause, and we stop reading from it.
    config.max_output = 256 * 1024;
    config.high_watermark = 64 * 1024;
    config.low_watermark = 16 * 1024;
    config.max_connections_per_ip = (args.max_per_ip > 0).then_some(args.max_per_ip);
    config.refusal_reply = Some(b"ERR too many connections from your address\n".to_vec());
    config.idle_timeout = secs(args.idle_timeout);
    let names = Arc::new(Names::default());
    let limits = args.limits;
    let mut workers = Workers::new(args.threads, config, |peers| {
        Chat::new(peers, names.clone(), limits)
    })?;
    let addr = workers.listen(args.addr)?;
    log::info!("chat listening on {addr} ({} event loops)", args.threads);
    workers.shutdown_on_signals(Duration::from_secs(5));
    workers.run()?;
    Ok(())
}
