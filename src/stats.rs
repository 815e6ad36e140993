//! `Stats`: counters the loop keeps as it goes, readable by handlers and the embedding program.

use crate::CloseReason;

/// Counters since the loop was created. Plain integers, updated on the loop thread only;
/// read them with [`Context::stats`](crate::Context::stats) or
/// [`EventLoop::stats`](crate::EventLoop::stats).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Connections open now (accepted or outbound, including outbound still connecting).
    pub connections_open: u64,
    /// Connections accepted from listeners (not counting refused ones).
    pub accepted: u64,
    /// Outbound connects started.
    pub connects_started: u64,
    /// Connections accepted and closed at once because of `max_connections`.
    pub refused: u64,
    /// Times accept failed for lack of descriptors (EMFILE/ENFILE).
    pub accept_descriptor_errors: u64,
    /// Connections closed, by reason.
    pub closed: ClosedCounts,
    /// Bytes read from connections.
    pub bytes_in: u64,
    /// Bytes written to connections (taken by the kernel).
    pub bytes_out: u64,
    /// Datagrams received.
    pub datagrams_in: u64,
    /// Datagrams sent (taken by the kernel).
    pub datagrams_out: u64,
    /// Datagrams dropped because the send queue was full, or failed to send.
    pub datagrams_dropped: u64,
    /// Sockets closed cleanly that are still half-closed, waiting for the peer's EOF
    /// (lingering close); not connections any more.
    pub lingering: u64,
    /// Lingering sockets closed early to make room under `max_connections`.
    pub lingering_dropped: u64,
    /// Handler callbacks that panicked.
    pub panics: u64,
    /// Ticks of the loop.
    pub ticks: u64,
    /// Readiness events dispatched, all ticks together (`events / ticks` is events per tick).
    pub events: u64,
    /// The most events one tick returned.
    pub max_events_per_tick: u64,
}

/// Closed connections, one counter per [`CloseReason`] variant.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
#[allow(missing_docs)]
pub struct ClosedCounts {
    pub peer_closed: u64,
    pub local: u64,
    pub aborted: u64,
    pub error: u64,
    pub idle_timeout: u64,
    pub output_limit: u64,
    pub input_limit: u64,
    pub send_timeout: u64,
    pub tls: u64,
    pub tls_handshake_timeout: u64,
    pub connect_failed: u64,
    pub connect_timeout: u64,
    pub shutdown: u64,
    pub panicked: u64,
}

impl ClosedCounts {
    pub(crate) fn count(&mut self, reason: &CloseReason) {
        let counter = match reason {
            CloseReason::PeerClosed => &mut self.peer_closed,
            CloseReason::Local => &mut self.local,
            CloseReason::Aborted => &mut self.aborted,
            CloseReason::Error(_) => &mut self.error,
            CloseReason::IdleTimeout => &mut self.idle_timeout,
            CloseReason::OutputLimit => &mut self.output_limit,
            CloseReason::InputLimit => &mut self.input_limit,
            CloseReason::SendTimeout => &mut self.send_timeout,
            CloseReason::Tls(_) => &mut self.tls,
            CloseReason::TlsHandshakeTimeout => &mut self.tls_handshake_timeout,
            CloseReason::ConnectFailed(_) => &mut self.connect_failed,
            CloseReason::ConnectTimeout => &mut self.connect_timeout,
            CloseReason::Shutdown => &mut self.shutdown,
            CloseReason::Panicked => &mut self.panicked,
        };
        *counter += 1;
    }

    /// All closed connections.
    pub fn total(&self) -> u64 {
        self.peer_closed
            + self.local
            + self.aborted
            + self.error
            + self.idle_timeout
            + self.output_limit
            + self.input_limit
            + self.send_timeout
            + self.tls
            + self.tls_handshake_timeout
            + self.connect_failed
            + self.connect_timeout
            + self.shutdown
            + self.panicked
    }
}

impl Stats {
    /// Adds another loop's counters to these (`max_events_per_tick`: the larger).
    pub(crate) fn add(&mut self, other: &Stats) {
        self.connections_open += other.connections_open;
        self.accepted += other.accepted;
        self.connects_started += other.connects_started;
        self.refused += other.refused;
        self.accept_descriptor_errors += other.accept_descriptor_errors;
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        self.datagrams_in += other.datagrams_in;
        self.datagrams_out += other.datagrams_out;
        self.datagrams_dropped += other.datagrams_dropped;
        self.lingering += other.lingering;
        self.lingering_dropped += other.lingering_dropped;
        self.panics += other.panics;
        self.ticks += other.ticks;
        self.events += other.events;
        self.max_events_per_tick = self.max_events_per_tick.max(other.max_events_per_tick);
        self.closed.add(&other.closed);
    }
}

impl ClosedCounts {
    fn add(&mut self, other: &ClosedCounts) {
        self.peer_closed += other.peer_closed;
        self.local += other.local;
        self.aborted += other.aborted;
        self.error += other.error;
        self.idle_timeout += other.idle_timeout;
        self.output_limit += other.output_limit;
        self.input_limit += other.input_limit;
        self.send_timeout += other.send_timeout;
        self.tls += other.tls;
        self.tls_handshake_timeout += other.tls_handshake_timeout;
        self.connect_failed += other.connect_failed;
        self.connect_timeout += other.connect_timeout;
        self.shutdown += other.shutdown;
        self.panicked += other.panicked;
    }
}
