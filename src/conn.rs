//! One stream connection (TCP or Unix) as a state machine: its socket, output queue, kept
//! input and flags. Every operation acts on this connection's own socket only and returns
//! the [`Effects`] the loop must apply (count bytes, re-register interest, read again next
//! tick, close); `Core::apply` is the one place they are applied. So send, flush, the read
//! step and close are testable on a socket pair without a loop.
//!
//! Reading: into the loop's one buffer. On Linux a read shorter than the buffer means the
//! socket's receive queue was empty at that moment, and edge-triggered epoll raises a new edge
//! for any byte that arrives after it, so the loop stops there instead of paying one more
//! `read` to hear `WouldBlock` (tokio does the same). The exception is an event that already
//! said the peer closed its side: then no new edge will come, so reading goes on until it
//! returns 0. Elsewhere reads go on until `WouldBlock`.
//!
//! Writing: `send` writes at once when nothing is queued; the remainder is queued in order
//! and WRITABLE is asked for only while the queue holds bytes (a reregister on the way up
//! and one on the way down).

use crate::input::Input;
use crate::outbuf::{Flush, OutBuf};
use crate::stream::{Stream, interrupted, would_block};
use crate::timers::TimerId;
use crate::{CloseReason, ListenerId, SendError};
use bytes::Bytes;
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

/// Per-connection override of the config's output limits and input bound.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub(crate) high: usize,
    pub(crate) low: usize,
    pub(crate) max_output: usize,
    pub(crate) max_input: usize,
}

/// What the loop must do after an operation on one connection. Applied by `Core::apply`.
#[derive(Debug, Default)]
#[must_use]
pub(crate) struct Effects {
    /// Bytes the kernel took (for `Stats::bytes_out` and the idle clock).
    pub(crate) written: usize,
    /// The wanted interest changed: re-register.
    pub(crate) reregister: bool,
    /// Read again next tick: reading resumed, and edges that came meanwhile were not acted on.
    pub(crate) ready: bool,
    /// The queue fell from congested to the low watermark: `on_drain` is due.
    pub(crate) drained: bool,
    /// The per-turn file budget ran out with the socket still writable: flush again next
    /// tick (no WRITABLE edge will come for it).
    pub(crate) flush_again: bool,
    /// Close the connection for this reason.
    pub(crate) close: Option<CloseReason>,
}

impl Effects {
    fn close(reason: CloseReason) -> Effects {
        Effects {
            close: Some(reason),
            ..Effects::default()
        }
    }
}

/// One step of the read loop.
pub(crate) enum ReadStep {
    /// `n` bytes; `drained` if a short read proved the socket empty.
    Data(usize, bool),
    /// The peer's FIN: recv returned 0.
    Eof,
    /// Nothing more to read now.
    Blocked,
    Error(io::Error),
}

pub(crate) struct Conn {
    pub(crate) stream: Stream,
    pub(crate) out: OutBuf,
    /// Bytes the handler left unconsumed, presented again with the next ones.
    pub(crate) input: Input,
    pub(crate) state: State,
    /// Set when the entry is marked dead; taken by the reaper for `on_close`.
    pub(crate) reason: Option<CloseReason>,
    /// The listener that accepted it; `None` for an outbound connection.
    pub(crate) origin: Option<ListenerId>,
    /// The connect timer while connecting, the idle timer once open.
    pub(crate) timer: Option<TimerId>,
    /// The handler's timers on this connection, cancelled when it closes.
    pub(crate) user_timers: Vec<TimerId>,
    /// The send deadline, running while bytes are queued (`Config::send_timeout`).
    pub(crate) send_timer: Option<TimerId>,
    pub(crate) last_active: Instant,
    /// The last time queued bytes left (or the queue started), for the send deadline.
    pub(crate) last_write: Instant,
    /// `None`: the config's.
    pub(crate) limits: Option<Box<Limits>>,
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
    /// Reading resumed: present the kept input again before reading more.
    pub(crate) replay: bool,
    /// The TLS session of a TLS connection: reads go through it, sends are encrypted.
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<Box<crate::tls::Tls>>,
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
            input: Input::default(),
            state,
            reason: None,
            origin,
            timer: None,
            user_timers: Vec::new(),
            send_timer: None,
            last_active: now,
            last_write: now,
            limits: None,
            writable_armed: state == State::Connecting,
            read_closed: false,
            eof: false,
            paused: false,
            congested: false,
            shutdown_write: false,
            close_when_open: false,
            replay: false,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// Whether the read loop should read (or present kept input) now.
    #[inline]
    pub(crate) fn wants_read(&self, pause_when_congested: bool) -> bool {
        self.state == State::Open
            && !self.eof
            && !self.paused
            && (!self.congested || !pause_when_congested)
    }

    /// Why a clean close ends: the peer's EOF came first, or we closed.
    pub(crate) fn clean_reason(&self) -> CloseReason {
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

    /// Whether `send` takes bytes now, and if not, why.
    #[inline]
    pub(crate) fn accepts_output(&self) -> Result<(), SendError> {
        if self.state == State::Closing || self.close_when_open {
            Err(SendError::Closing)
        } else if self.shutdown_write {
            Err(SendError::WriteShut)
        } else {
            Ok(())
        }
    }

    /// One read into `buf`, retrying `Interrupted`.
    #[inline]
    pub(crate) fn read_step(&mut self, buf: &mut [u8]) -> ReadStep {
        loop {
            return match self.stream.read(buf) {
                Ok(0) => {
                    self.eof = true;
                    ReadStep::Eof
                }
                Ok(n) => ReadStep::Data(n, SHORT_READ_DRAINS && n < buf.len() && !self.read_closed),
                Err(e) if would_block(&e) => ReadStep::Blocked,
                Err(e) if interrupted(&e) => continue,
                Err(e) => ReadStep::Error(e),
            };
        }
    }

    /// The fast path of `send`: with nothing queued, one `send(2)`. `Ok(n)`: the kernel took
    /// all `n` bytes. `Err(written)`: it took only `written` (maybe 0), or bytes are queued,
    /// or the send failed: pass the rest to `send`, which retries and queues (a failure
    /// repeats there and is reported; a second call after a partial write most likely
    /// blocks: the price of keeping this path small).
    #[inline]
    pub(crate) fn send_now(&mut self, data: &[u8]) -> Result<usize, usize> {
        if !self.out.is_empty() || self.state != State::Open {
            return Err(0);
        }
        match self.stream.send(data) {
            Ok(n) if n == data.len() => Ok(n),
            Ok(n) => Err(n),
            Err(_) => Err(0),
        }
    }

    /// Buffered sendall: write now if nothing is queued, queue the rest in order (as a copy,
    /// or as `shared` without one when given). Check `accepts_output` first.
    #[inline]
    pub(crate) fn send(
        &mut self,
        data: &[u8],
        shared: Option<&Bytes>,
        high: usize,
        max_output: usize,
    ) -> Effects {
        let mut written = 0;
        if self.out.is_empty() && self.state == State::Open {
            loop {
                match self.stream.send(data) {
                    Ok(n) => written = n,
                    Err(e) if would_block(&e) => {}
                    Err(e) if interrupted(&e) => continue,
                    Err(e) => return Effects::close(CloseReason::Error(e)),
                }
                break;
            }
            if written == data.len() {
                return Effects {
                    written,
                    ..Effects::default()
                };
            }
        }
        let mut effects = self.queue(
            &data[written..],
            shared.map(|b| b.slice(written..)),
            high,
            max_output,
        );
        effects.written = written;
        effects
    }

    /// Queues what `send` could not write now: checks the output limit, marks congestion
    /// and arms WRITABLE.
    #[cold]
    #[inline(never)]
    fn queue(
        &mut self,
        rest: &[u8],
        shared: Option<Bytes>,
        high: usize,
        max_output: usize,
    ) -> Effects {
        if self.out.len().saturating_add(rest.len()) > max_output {
            return Effects::close(CloseReason::OutputLimit);
        }
        match shared {
            Some(bytes) => self.out.push_shared(bytes),
            None => self.out.push(rest),
        }
        if self.out.len() > high {
            self.congested = true;
        }
        let reregister = !self.writable_armed;
        self.writable_armed = true;
        Effects {
            reregister,
            ..Effects::default()
        }
    }

    /// Queues `len` bytes of `file` from `offset`, after everything queued, and writes what
    /// the socket takes now (within `file_budget`). Check `accepts_output` first. The file
    /// bytes do not count toward `max_output` (they are not in memory) but do toward the
    /// watermarks.
    pub(crate) fn send_file(
        &mut self,
        file: std::sync::Arc<std::fs::File>,
        offset: u64,
        len: usize,
        high: usize,
        low: usize,
        file_budget: usize,
    ) -> Effects {
        self.out.push_file(file, offset, len);
        if self.out.len() > high {
            self.congested = true;
        }
        let mut effects = self.flush(low, file_budget);
        if !self.out.is_empty() && !self.writable_armed && effects.close.is_none() {
            self.writable_armed = true;
            effects.reregister = true;
        }
        effects
    }

    /// Writes the queue (at most `file_budget` bytes of file regions); finishes a pending
    /// close or write shutdown once it is empty, and says when congestion cleared
    /// (`drained`, `ready`).
    pub(crate) fn flush(&mut self, low: usize, file_budget: usize) -> Effects {
        if self.state == State::Connecting {
            return Effects::default();
        }
        let (written, result) = self.out.flush_to(&mut &self.stream, file_budget);
        let mut effects = Effects {
            written,
            ..Effects::default()
        };
        match result {
            Err(e) => {
                effects.close = Some(CloseReason::Error(e));
                return effects;
            }
            Ok(Flush::Blocked) => {}
            Ok(Flush::Yielded) => effects.flush_again = true,
            Ok(Flush::Done) => {
                if self.shutdown_write {
                    let _ = self.stream.shutdown(std::net::Shutdown::Write);
                }
                if self.state == State::Closing {
                    effects.close = Some(self.clean_reason());
                    return effects;
                }
                if self.writable_armed {
                    self.writable_armed = false;
                    effects.reregister = true;
                }
            }
        }
        if self.congested && self.out.len() <= low {
            self.congested = false;
            // Reading was paused while congested, and its edges were not acted on.
            self.replay = true;
            effects.ready = true;
            effects.drained = true;
        }
        effects
    }

    /// Graceful close: flush what is queued, then FIN. `None`: later, when the queue empties.
    pub(crate) fn close(&mut self) -> Option<CloseReason> {
        match self.state {
            // Already flushing towards a close (e.g. `close` again from `on_drain`): closing
            // now would drop the queue.
            State::Closing => None,
            State::Open if !self.out.is_empty() => {
                self.state = State::Closing;
                None
            }
            // Sends made while connecting are owed too: flush them once connected.
            State::Connecting if !self.out.is_empty() => {
                self.close_when_open = true;
                None
            }
            _ => Some(self.clean_reason()),
        }
    }

    /// Drops the queue and arranges an RST (SO_LINGER 0) rather than FIN, so nothing the
    /// kernel still holds trickles out afterwards: abort, shutdown deadline, panics.
    pub(crate) fn reset(&mut self) {
        self.out.clear();
        if self.stream.is_tcp() {
            let _ = self
                .stream
                .sock()
                .set_linger(Some(std::time::Duration::ZERO));
        }
    }

    /// FIN after the queue drains; reading goes on.
    pub(crate) fn shutdown_write(&mut self) {
        self.shutdown_write = true;
        if self.out.is_empty() && self.state == State::Open {
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
    }

    /// Pauses or resumes reading; resuming reads (and presents kept input) next tick.
    pub(crate) fn set_paused(&mut self, paused: bool) -> Effects {
        let resumed = self.paused && !paused;
        self.paused = paused;
        self.replay |= resumed;
        Effects {
            ready: resumed,
            ..Effects::default()
        }
    }

    /// The first WRITABLE of an outbound connect: `Ok(true)` connected, `Ok(false)` not yet
    /// (a spurious early wake-up has neither an error nor a peer address), `Err` failed.
    pub(crate) fn finish_connect(&mut self) -> Result<bool, io::Error> {
        match self.stream.take_error() {
            Ok(Some(e)) | Err(e) => return Err(e),
            Ok(None) => {}
        }
        match self.stream.peer_addr() {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(false),
            Err(e) => return Err(e),
        }
        self.state = if self.close_when_open {
            State::Closing
        } else {
            State::Open
        };
        Ok(true)
    }
}

#[cfg(test)]
#[path = "conn_tests.rs"]
mod tests;
