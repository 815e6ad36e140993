//! One stream connection (TCP or Unix): its socket, output queue, state and interest.
//!
//! Reading: into the loop's one buffer, handed to `on_data` as a slice. On Linux a read
//! shorter than the buffer means the socket's receive queue was empty at that moment, and
//! edge-triggered epoll raises a new edge for any byte that arrives after it, so the loop
//! stops there instead of paying one more `read` to hear `WouldBlock` (tokio does the same).
//! The exception is an event that already said the peer closed its side: then no new edge
//! will come, so reading goes on until it returns 0. Elsewhere reads go on until
//! `WouldBlock`.
//!
//! Writing: `send` writes at once when nothing is queued; the remainder is queued in order
//! and WRITABLE is asked for only while the queue holds bytes (a reregister on the way up
//! and one on the way down).

use crate::core::{Core, Kind, TimerKind, interrupted, live_in, would_block};
use crate::outbuf::{Flush, OutBuf};
use crate::stream::Stream;
use crate::timers::TimerId;
use crate::{CloseReason, ConnId, Handler, ListenerId, token::Key};
use mio::Interest;
use std::io;
use std::time::Instant;

/// Whether a short read proves the socket drained (see the module docs).
const SHORT_READ_DRAINS: bool = cfg!(any(target_os = "linux", target_os = "android"));

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    /// Outbound connect under way: waiting for the first WRITABLE.
    Connecting,
    Open,
    /// `close` was called with bytes queued: no more reading; closes when the queue empties.
    Closing,
}

pub(crate) struct Conn {
    pub(crate) stream: Stream,
    pub(crate) out: OutBuf,
    pub(crate) state: State,
    /// Set when the entry is marked dead; taken by the reaper for `on_close`.
    pub(crate) reason: Option<CloseReason>,
    /// The listener that accepted it; `None` for an outbound connection.
    pub(crate) origin: Option<ListenerId>,
    /// The connect timer while connecting, the idle timer once open.
    pub(crate) timer: Option<TimerId>,
    pub(crate) last_active: Instant,
    /// WRITABLE is in the registered interest.
    pub(crate) writable_armed: bool,
    /// An event reported the peer's side closed (RDHUP/HUP): read until 0.
    pub(crate) read_closed: bool,
    /// A read returned 0.
    pub(crate) eof: bool,
    /// The handler paused reading.
    pub(crate) paused: bool,
    /// Queued output passed the high watermark and has not yet drained to the low one.
    pub(crate) congested: bool,
    /// `shutdown_write` was asked for: FIN once the queue is empty.
    pub(crate) shutdown_write: bool,
    /// `close` was called while connecting with bytes queued: once connected, flush them and
    /// close (state `Closing`) instead of dropping them.
    pub(crate) close_when_open: bool,
    /// Watermarks and output cap set by `Context::set_output_limits`; `None`: the config's.
    pub(crate) limits: Option<OutputLimits>,
}

/// Per-connection override of `Config::{high_watermark, low_watermark, max_output}`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OutputLimits {
    pub(crate) high: usize,
    pub(crate) low: usize,
    pub(crate) max_output: usize,
}

impl Conn {
    pub(crate) fn new(
        stream: Stream,
        state: State,
        origin: Option<ListenerId>,
        now: Instant,
    ) -> Conn {
        Conn {
            stream,
            out: OutBuf::new(),
            state,
            reason: None,
            origin,
            timer: None,
            last_active: now,
            writable_armed: state == State::Connecting,
            read_closed: false,
            eof: false,
            paused: false,
            congested: false,
            shutdown_write: false,
            close_when_open: false,
            limits: None,
        }
    }

    fn wants_read(&self, pause_when_congested: bool) -> bool {
        self.state == State::Open
            && !self.eof
            && !self.paused
            && (!self.congested || !pause_when_congested)
    }

    /// Why a clean close ends: the peer's EOF came first, or we closed.
    fn clean_reason(&self) -> CloseReason {
        if self.eof {
            CloseReason::PeerClosed
        } else {
            CloseReason::Local
        }
    }

    pub(crate) fn interest(&self) -> Interest {
        if self.writable_armed {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        }
    }
}

/// Reads from connection `key` until drained, EOF, an error, or the per-tick budget.
/// Inlined into the dispatcher: this is the hottest path of the loop.
#[inline]
pub(crate) fn read<H: Handler>(core: &mut Core, handler: &mut H, buf: &mut [u8], key: Key) {
    let id = ConnId(key);
    let pause = core.config.pause_read_when_congested;
    let stamp = core.activity_stamp();
    let mut budget = core.config.read_budget;
    loop {
        let Some(conn) = core.conn_mut(key) else {
            return;
        };
        if !conn.wants_read(pause) {
            return;
        }
        match conn.stream.read(buf) {
            Ok(0) => {
                conn.eof = true;
                core.invoke(handler, Some(key), |h, cx| h.on_peer_eof(cx, id));
                return;
            }
            Ok(n) => {
                let drained = SHORT_READ_DRAINS && n < buf.len() && !conn.read_closed;
                if let Some(t) = stamp {
                    conn.last_active = t;
                }
                core.stats.bytes_in += n as u64;
                core.invoke(handler, Some(key), |h, cx| h.on_data(cx, id, &buf[..n]));
                if drained {
                    return;
                }
                budget = budget.saturating_sub(n);
                if budget == 0 {
                    // Others' turn; edge-triggered readiness will not remind us, the list will.
                    core.ready.push(key);
                    return;
                }
            }
            // Drained: the next byte raises a new edge.
            Err(e) if would_block(&e) => return,
            Err(e) if interrupted(&e) => {}
            Err(e) => {
                core.kill(key, CloseReason::Error(e));
                return;
            }
        }
    }
}

/// WRITABLE on connection `key`: finish a connect, or flush the queue.
pub(crate) fn writable<H: Handler>(core: &mut Core, handler: &mut H, key: Key) {
    match core.conn_mut(key) {
        Some(conn) if conn.state == State::Connecting => finish_connect(core, handler, key),
        Some(_) => flush(core, handler, key),
        None => {}
    }
}

/// Writes queued bytes; runs `on_drain` if the queue fell from congested to the low mark.
pub(crate) fn flush<H: Handler>(core: &mut Core, handler: &mut H, key: Key) {
    if core.flush_queue(key) {
        core.invoke(handler, Some(key), |h, cx| h.on_drain(cx, ConnId(key)));
    }
}

/// First WRITABLE of an outbound connect: the socket error says whether it worked, and a
/// peer address says it is really connected (an early spurious wake-up has neither).
fn finish_connect<H: Handler>(core: &mut Core, handler: &mut H, key: Key) {
    let Some(conn) = core.conn_mut(key) else {
        return;
    };
    let failure = match conn.stream.take_error() {
        Ok(Some(e)) | Err(e) => Some(e),
        Ok(None) => match conn.stream.peer_addr() {
            Ok(_) => None,
            // Not connected yet: wait for the next edge.
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
            Err(e) => Some(e),
        },
    };
    if let Some(e) = failure {
        core.kill(key, CloseReason::ConnectFailed(e));
        return;
    }
    conn.state = if conn.close_when_open {
        State::Closing
    } else {
        State::Open
    };
    let timer = conn.timer.take();
    if let Some(t) = timer {
        core.timers.cancel(t);
    }
    core.arm_idle_timer(key);
    core.invoke(handler, Some(key), |h, cx| h.on_open(cx, ConnId(key)));
    // Sends made while connecting or in on_open; drops WRITABLE if nothing is left.
    flush(core, handler, key);
}

impl Core {
    /// Buffered sendall: write now if nothing is queued, queue the rest in order.
    /// Inlined: the common case (open, nothing queued, the kernel takes it all) is one check
    /// of the entry and one `send`; queueing is out of line in `conn_queue`.
    #[inline]
    pub(crate) fn conn_send(&mut self, key: Key, data: &[u8]) -> bool {
        let stamp = self.activity_stamp();
        let Some(Kind::Conn(conn)) = live_in(&mut self.slab, key) else {
            return false;
        };
        if conn.state == State::Closing || conn.shutdown_write || conn.close_when_open {
            return false;
        }
        let mut rest = data;
        if conn.out.is_empty() && conn.state == State::Open {
            loop {
                match conn.stream.send(rest) {
                    Ok(n) => {
                        rest = &rest[n..];
                        if let Some(t) = stamp {
                            conn.last_active = t;
                        }
                        self.stats.bytes_out += n as u64;
                        break;
                    }
                    Err(e) if would_block(&e) => break,
                    Err(e) if interrupted(&e) => {}
                    Err(e) => {
                        self.kill(key, CloseReason::Error(e));
                        return false;
                    }
                }
            }
            if rest.is_empty() {
                return true;
            }
        }
        self.conn_queue(key, rest)
    }

    /// Queues what `send` could not write now: checks the output limit, marks congestion
    /// and arms WRITABLE.
    #[cold]
    #[inline(never)]
    fn conn_queue(&mut self, key: Key, rest: &[u8]) -> bool {
        let (max_output, high) = (self.config.max_output, self.config.high_watermark);
        let conn = self.conn_mut(key).expect("checked live by conn_send");
        let (max_output, high) = conn
            .limits
            .map_or((max_output, high), |l| (l.max_output, l.high));
        if conn.out.len() + rest.len() > max_output {
            log::warn!(
                "{}: output limit of {max_output} bytes reached",
                ConnId(key)
            );
            self.kill(key, CloseReason::OutputLimit);
            return false;
        }
        conn.out.push(rest);
        if conn.out.len() > high {
            conn.congested = true;
        }
        if !conn.writable_armed {
            conn.writable_armed = true;
            self.reregister_conn(key);
        }
        true
    }

    /// Writes the queue; returns true when the connection stops being congested. Finishes a
    /// pending close or write shutdown once the queue is empty.
    pub(crate) fn flush_queue(&mut self, key: Key) -> bool {
        let (stamp, low) = (self.activity_stamp(), self.config.low_watermark);
        let Some(Kind::Conn(conn)) = live_in(&mut self.slab, key) else {
            return false;
        };
        let low = conn.limits.map_or(low, |l| l.low);
        if conn.state == State::Connecting {
            return false;
        }
        let stream = &conn.stream;
        let (written, result) = conn.out.flush_with(|bufs| stream.send_vectored(bufs));
        if let (true, Some(t)) = (written > 0, stamp) {
            conn.last_active = t;
        }
        self.stats.bytes_out += written as u64;
        let conn = self.conn_mut(key).expect("live above");
        match result {
            Err(e) => {
                self.kill(key, CloseReason::Error(e));
                return false;
            }
            Ok(Flush::Blocked) => {}
            Ok(Flush::Done) => {
                if conn.shutdown_write {
                    let _ = conn.stream.shutdown(std::net::Shutdown::Write);
                }
                if conn.state == State::Closing {
                    let reason = conn.clean_reason();
                    self.kill(key, reason);
                    return false;
                }
                if conn.writable_armed {
                    conn.writable_armed = false;
                    self.reregister_conn(key);
                }
            }
        }
        let conn = self.conn_mut(key).expect("live above");
        if conn.congested && conn.out.len() <= low {
            conn.congested = false;
            // Reading was paused while congested, and its edges were not acted on.
            self.ready.push(key);
            return true;
        }
        false
    }

    /// Graceful close: flush what is queued, then FIN.
    pub(crate) fn conn_close(&mut self, key: Key) {
        let Some(conn) = self.conn_mut(key) else {
            return;
        };
        if conn.state == State::Closing {
            // Already flushing towards a close (e.g. `close` again from `on_drain`): killing
            // it now would drop the queue.
            return;
        }
        if conn.state == State::Open && !conn.out.is_empty() {
            conn.state = State::Closing;
            return;
        }
        if conn.state == State::Connecting && !conn.out.is_empty() {
            // Sends made while connecting are owed too: flush them once connected.
            conn.close_when_open = true;
            return;
        }
        let reason = conn.clean_reason();
        self.kill(key, reason);
    }

    /// Drop the queue and reset the connection now.
    pub(crate) fn conn_abort(&mut self, key: Key) {
        self.conn_reset(key, CloseReason::Aborted);
    }

    /// Drops the queue and closes with RST (SO_LINGER 0) rather than FIN, so nothing the
    /// kernel still holds trickles out afterwards: abort, shutdown deadline, panics.
    pub(crate) fn conn_reset(&mut self, key: Key, reason: CloseReason) {
        let Some(conn) = self.conn_mut(key) else {
            return;
        };
        conn.out.clear();
        if conn.stream.is_tcp() {
            let _ = conn
                .stream
                .sock()
                .set_linger(Some(std::time::Duration::ZERO));
        }
        self.kill(key, reason);
    }

    /// FIN after the queue drains, keep reading.
    pub(crate) fn conn_shutdown_write(&mut self, key: Key) {
        let Some(conn) = self.conn_mut(key) else {
            return;
        };
        conn.shutdown_write = true;
        if conn.out.is_empty() && conn.state == State::Open {
            let _ = conn.stream.shutdown(std::net::Shutdown::Write);
        }
    }

    /// `Context::set_output_limits`: the new marks apply from the next send or flush; a
    /// queue already above the new high mark is congested now (a WRITABLE edge is pending
    /// for it, so the flush that clears it will come).
    pub(crate) fn conn_set_limits(
        &mut self,
        key: Key,
        high: usize,
        low: usize,
        max: usize,
    ) -> bool {
        let Some(conn) = self.conn_mut(key) else {
            return false;
        };
        conn.limits = Some(OutputLimits {
            high,
            low: low.min(high),
            max_output: max,
        });
        if conn.out.len() > high {
            conn.congested = true;
        }
        true
    }

    pub(crate) fn conn_set_paused(&mut self, key: Key, paused: bool) {
        let Some(conn) = self.conn_mut(key) else {
            return;
        };
        let was = conn.paused;
        conn.paused = paused;
        if was && !paused {
            // Edges that came while paused were not acted on: read next tick.
            self.ready.push(key);
        }
    }

    fn reregister_conn(&mut self, key: Key) {
        let Some(Kind::Conn(conn)) = live_in(&mut self.slab, key) else {
            return;
        };
        let interest = conn.interest();
        if let Err(e) = self
            .registry
            .reregister(conn.stream.source(), key.token(), interest)
        {
            self.kill(key, CloseReason::Error(e));
        }
    }

    pub(crate) fn arm_idle_timer(&mut self, key: Key) {
        if let Some(idle) = self.config.idle_timeout {
            let timer = self
                .timers
                .insert(self.now() + idle, None, TimerKind::Idle(key));
            if let Some(conn) = self.conn_mut(key) {
                conn.timer = Some(timer);
            }
        }
    }

    /// The idle timer fired: close if there was no traffic since, else re-arm it for the
    /// rest of the period. (Traffic only stamps `last_active`; the timer is never moved on
    /// the data path.)
    pub(crate) fn idle_check(&mut self, key: Key) {
        let (now, Some(idle)) = (self.now(), self.config.idle_timeout) else {
            return;
        };
        let Some(conn) = self.conn_mut(key) else {
            return;
        };
        let due = conn.last_active + idle;
        if due <= now {
            conn.timer = None;
            self.kill(key, CloseReason::IdleTimeout);
        } else {
            let timer = self.timers.insert(due, None, TimerKind::Idle(key));
            if let Some(conn) = self.conn_mut(key) {
                conn.timer = Some(timer);
            }
        }
    }

    pub(crate) fn connect_timed_out(&mut self, key: Key) {
        if let Some(Kind::Conn(conn)) = self.live_mut(key) {
            if conn.state == State::Connecting {
                conn.timer = None;
                self.kill(key, CloseReason::ConnectTimeout);
            }
        }
    }
}
