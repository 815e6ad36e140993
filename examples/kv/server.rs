//! The server: the evloop `Handler` that feeds each connection's input through the parser
//! and the command executor against the one keyspace, and expires keys on a timer.
//!
//! Per read (`on_data`): every complete command in the input is executed in order and the
//! replies are gathered in the connection's buffer and sent with one `send`; the loop keeps
//! the unfinished tail and presents it again with the next bytes. Execution stops early
//! only for backpressure: once 64 KiB of replies are gathered they are sent, and if the
//! client is not reading them (its queue is above the loop's high watermark) the remaining
//! commands wait, kept by the loop, until it drains, so a client that pipelines without
//! reading cannot make the server build replies without bound. Malformed input gets
//! Redis's protocol error reply and the connection is closed once it is flushed; QUIT
//! replies +OK and closes the same way.

use crate::cmd::{self, Outcome, ServerInfo};
use crate::conn::Conn;
use crate::db::Db;
use crate::resp::Limits;
use evloop::{CloseReason, ConnId, Context, Handler, TimerId};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Replies gathered past this are sent before the next command runs (and execution stops
/// if the client is congested).
const FLUSH_AT: usize = 64 * 1024;

/// Keys deleted by one run of the active expiry; more due ones are left to the next tick,
/// so a mass expiry never holds the loop up for long (about 0.5 ms a batch).
const EXPIRE_BUDGET: usize = 4096;

/// The key-value server: one keyspace for all connections.
pub struct Server {
    db: Db,
    limits: Limits,
    /// The INFO figures; refreshed just before an INFO command runs.
    info: ServerInfo,
    /// The loop's monotonic clock at start, and the Unix time then in milliseconds: the
    /// keyspace's clock is Unix milliseconds (EXPIREAT takes Unix times), advanced by the
    /// loop's tick time, so it reads no clock of its own and never goes backwards.
    started: Instant,
    unix_ms_at_start: u64,
    next_client_id: u64,
    commands: u64,
    /// The active-expiry timer and the keyspace time (ms) it is set for.
    expiry: Option<(u64, TimerId)>,
}

impl Server {
    /// An empty server whose requests are bounded by `limits`.
    pub fn new(limits: Limits) -> Server {
        let unix_ms_at_start = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Server {
            db: Db::new(),
            limits,
            info: ServerInfo {
                process_id: std::process::id(),
                ..ServerInfo::default()
            },
            started: Instant::now(),
            unix_ms_at_start,
            next_client_id: 1,
            commands: 0,
            expiry: None,
        }
    }

    /// The TCP port INFO reports.
    pub fn set_port(&mut self, port: u16) {
        self.info.tcp_port = port;
    }

    /// Commands executed so far.
    pub fn commands(&self) -> u64 {
        self.commands
    }

    /// The keyspace's time now: Unix milliseconds at this tick.
    fn now_ms(&self, cx: &Context<'_, Self>) -> u64 {
        let elapsed = cx.now().saturating_duration_since(self.started);
        self.unix_ms_at_start + elapsed.as_millis() as u64
    }

    /// Fills in the INFO figures that change (the rest are set at start).
    fn refresh_info(&mut self, cx: &Context<'_, Self>) {
        let stats = cx.stats();
        self.info.connected_clients = stats.connections_open;
        self.info.total_connections_received = stats.accepted;
        self.info.rejected_connections = stats.refused;
        self.info.total_commands_processed = self.commands;
        self.info.uptime_secs = cx.now().saturating_duration_since(self.started).as_secs();
        self.info.used_memory = rss_bytes();
    }

    /// Makes sure the active-expiry timer fires once the earliest deadline has passed (a
    /// key expires when the time is past its deadline, as in Redis). A timer set for a
    /// later time is moved earlier; one left for keys that are gone fires and finds nothing.
    fn arm_expiry(&mut self, cx: &mut Context<'_, Self>, now: u64) {
        let Some(deadline) = self.db.next_expiry() else {
            return;
        };
        let at = deadline.saturating_add(1);
        if let Some((armed, timer)) = self.expiry {
            if armed <= at {
                return;
            }
            cx.cancel_timer(timer);
        }
        let timer = cx.set_timer(Duration::from_millis(at.saturating_sub(now)));
        self.expiry = Some((at, timer));
    }
}

/// This process's resident set size in bytes (INFO's `used_memory`; 0 if unknown).
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Whether a command name is INFO, the one command that needs fresh server figures.
fn is_info(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"info")
}

impl Handler for Server {
    type Conn = Conn;

    fn on_open(&mut self, _: &mut Context<'_, Self>, conn: ConnId, c: &mut Conn) {
        *c = Conn::new(self.limits);
        c.client.id = self.next_client_id;
        self.next_client_id += 1;
        log::debug!("{conn} open (client id {})", c.client.id);
    }

    fn on_data(
        &mut self,
        cx: &mut Context<'_, Self>,
        conn: ConnId,
        c: &mut Conn,
        input: &[u8],
    ) -> usize {
        let now = self.now_ms(cx);
        let mut used = 0;
        let mut close = false;
        loop {
            match c.parser.parse(&input[used..], &mut c.argv) {
                Ok(Some(n)) => {
                    used += n;
                    let Some(name) = c.argv.first() else {
                        continue; // an empty command: no reply, as in Redis
                    };
                    if is_info(name) {
                        self.refresh_info(cx);
                    }
                    self.commands += 1;
                    let outcome = cmd::execute(
                        &mut self.db,
                        &mut c.client,
                        &self.info,
                        &mut c.argv,
                        now,
                        &mut c.out,
                    );
                    if outcome == Outcome::Close {
                        close = true;
                        break;
                    }
                    if c.out.len() >= FLUSH_AT {
                        if c.flush(cx, conn).is_err() {
                            return input.len(); // closing or closed: nobody to answer
                        }
                        if cx.is_congested(conn) {
                            break; // the rest waits, kept by the loop, until it drains
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    log::debug!("{conn}: {e}");
                    e.write_reply(&mut c.out);
                    close = true;
                    break;
                }
            }
        }
        let _ = c.flush(cx, conn);
        self.arm_expiry(cx, now);
        if close {
            cx.close(conn); // after the replies are flushed, as Redis does
            return input.len();
        }
        c.bound_input(cx, conn, input.len() - used);
        used
    }

    fn on_timer(&mut self, cx: &mut Context<'_, Self>, timer: TimerId) {
        if self.expiry.is_some_and(|(_, armed)| armed == timer) {
            self.expiry = None;
        }
        let now = self.now_ms(cx);
        let expired = self.db.active_expire(now, EXPIRE_BUDGET);
        if expired > 0 {
            log::debug!("active expiry: {expired} keys");
        }
        // More due keys (the budget ran out) make the next timer due at once: next tick.
        self.arm_expiry(cx, now);
    }

    fn on_close(&mut self, _: &mut Context<'_, Self>, conn: ConnId, _: Conn, why: &CloseReason) {
        match why {
            CloseReason::InputLimit | CloseReason::OutputLimit | CloseReason::SendTimeout => {
                log::warn!("{conn} closed: {why}")
            }
            _ => log::debug!("{conn} closed: {why}"),
        }
    }
}
