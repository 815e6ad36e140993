//! `Config`: the loop's tunables, with the defaults a server wants.

use std::time::Duration;

/// Settings for one [`EventLoop`](crate::EventLoop). Start from `Config::default()` and
/// change fields:
///
/// ```
/// let mut config = evloop::Config::default();
/// config.max_connections = 10_000;
/// config.idle_timeout = Some(std::time::Duration::from_secs(30));
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Config {
    /// How many readiness events one poll can return. Default 1024.
    pub events_capacity: usize,
    /// Size of the one read buffer the loop owns and lends to every read; also the largest
    /// datagram handed over whole. Default 64 KiB (any UDP datagram fits).
    pub read_buffer_size: usize,
    /// Bytes read from one connection in one tick before the others get their turn; what is
    /// left is read next tick. Default 256 KiB.
    pub read_budget: usize,
    /// Connections accepted from one listener in one tick. Default 256.
    pub accept_budget: usize,
    /// Datagrams received on one socket in one tick. Default 256.
    pub datagram_budget: usize,
    /// Datagrams a socket queues when the kernel would block; past it `send_to` fails with
    /// `WouldBlock`. Default 1024.
    pub datagram_queue_limit: usize,
    /// Datagrams one system call moves on a UDP socket, at most 64: received with
    /// `recvmmsg`, and, for what `on_datagram` callbacks send, gathered and sent right after
    /// the batch with `sendmmsg` (see [`Context::send_to`](crate::Context::send_to)); queued
    /// datagrams leave in batches too. 1 turns batching off: one `recvfrom` / `sendto` per
    /// datagram, and `send_to` always writes at once. The receive slots are `udp_batch` ×
    /// `read_buffer_size` bytes, one set per loop, allocated on the first batched receive;
    /// their pages cost memory only once datagrams fill them. Unix datagram sockets always
    /// go one at a time. Default 32.
    pub udp_batch: usize,
    /// UDP offloads, with batching: GRO (the kernel may hand over a run of same-size
    /// datagrams from one sender in one slot; the loop splits it again, so each still gets
    /// its own `on_datagram`; only when `read_buffer_size` is at least 64 KiB) and GSO (a run
    /// of same-size datagrams to one address goes out as one send). Set UDP_GRO on sockets
    /// that receive; no other socket option is changed. Default on.
    pub udp_offload: bool,
    /// Listen backlog. Default 1024: the usual 128 makes bursts of connects stall in SYN
    /// retries. The kernel caps it at `net.core.somaxconn`.
    pub backlog: i32,
    /// TCP_NODELAY on every accepted or outbound TCP connection. Default on.
    pub nodelay: bool,
    /// Queued output above which a connection counts as congested: reading from it pauses
    /// (if `pause_read_when_congested`) until the queue drains to `low_watermark`, and then
    /// the handler's `on_drain` runs. Default 64 KiB. Per connection, the three output limits
    /// can be overridden with [`Context::set_output_limits`](crate::Context::set_output_limits).
    pub high_watermark: usize,
    /// See `high_watermark`. Default 16 KiB.
    pub low_watermark: usize,
    /// Stop reading from a congested connection (backpressure). Default on.
    pub pause_read_when_congested: bool,
    /// Bytes of files (`Context::send_file`) sent to one connection per turn before the
    /// others get theirs, like nginx's `sendfile_max_chunk`: one fast download cannot hold
    /// the loop. Default 256 KiB.
    pub send_file_chunk: usize,
    /// Input a connection's handler may leave unconsumed (a partial frame the loop keeps for
    /// it): past it the connection closes with
    /// [`CloseReason::InputLimit`](crate::CloseReason::InputLimit), so a peer that never
    /// finishes a frame cannot grow memory. Per connection:
    /// [`Context::set_input_limit`](crate::Context::set_input_limit). Default 1 MiB.
    pub max_input: usize,
    /// Hard limit on queued output: a `send` that would pass it closes the connection with
    /// [`CloseReason::OutputLimit`](crate::CloseReason::OutputLimit). Default 64 MiB.
    pub max_output: usize,
    /// Open connections (accepted and outbound) at most; a connection accepted past it gets
    /// `refusal_reply` (if any) and is closed, and counted in `Stats::refused`. Default 100,000.
    pub max_connections: usize,
    /// Open accepted TCP connections from one IP address at most (IPv4-mapped IPv6 addresses
    /// count as IPv4); past it a connection is refused like one past `max_connections`.
    /// A cap on what one host can hold (nginx's `limit_conn`). Default none.
    pub max_connections_per_ip: Option<usize>,
    /// Sent (best effort, one write) to a connection refused for `max_connections` (or
    /// `max_connections_per_ip`).
    pub refusal_reply: Option<Vec<u8>>,
    /// Close a connection after this long without traffic in either direction, with
    /// [`CloseReason::IdleTimeout`](crate::CloseReason::IdleTimeout). Default none.
    pub idle_timeout: Option<Duration>,
    /// Close a connection that has bytes queued when none of them has left for this long
    /// (the peer stopped reading), with
    /// [`CloseReason::SendTimeout`](crate::CloseReason::SendTimeout); like nginx's
    /// `send_timeout`. Also bounds how long `close` waits for such a peer. Default 60 s.
    pub send_timeout: Option<Duration>,
    /// Close a TLS connection whose handshake has not finished after this long, with
    /// [`CloseReason::TlsHandshakeTimeout`](crate::CloseReason::TlsHandshakeTimeout)
    /// (feature `tls`). Default 10 s.
    pub tls_handshake_timeout: Duration,
    /// Give up on an outbound connect after this long. Default 10 s.
    pub connect_timeout: Option<Duration>,
    /// How long to wait before accepting again after EMFILE/ENFILE. Default 100 ms.
    pub accept_retry: Duration,
    /// After a clean close, how long a socket that has not yet seen the peer's EOF stays
    /// half-closed, reading away input, so that an RST cannot destroy the reply's tail
    /// (lingering close; see `linger.rs`). Zero closes at once. Default 2 s.
    pub linger: Duration,
    /// Catch a panic in a handler callback: the connection being handled is closed with
    /// [`CloseReason::Panicked`](crate::CloseReason::Panicked) and the loop goes on. When off,
    /// the panic unwinds out of `run()`. Default on.
    pub catch_panics: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            events_capacity: 1024,
            read_buffer_size: 64 * 1024,
            read_budget: 256 * 1024,
            accept_budget: 256,
            datagram_budget: 256,
            datagram_queue_limit: 1024,
            udp_batch: 32,
            udp_offload: true,
            backlog: 1024,
            nodelay: true,
            high_watermark: 64 * 1024,
            low_watermark: 16 * 1024,
            pause_read_when_congested: true,
            max_output: 64 * 1024 * 1024,
            max_input: 1024 * 1024,
            send_file_chunk: 256 * 1024,
            max_connections: 100_000,
            max_connections_per_ip: None,
            refusal_reply: None,
            idle_timeout: None,
            send_timeout: Some(Duration::from_secs(60)),
            tls_handshake_timeout: Duration::from_secs(10),
            connect_timeout: Some(Duration::from_secs(10)),
            accept_retry: Duration::from_millis(100),
            linger: Duration::from_secs(2),
            catch_panics: true,
        }
    }
}

impl Config {
    /// Checks the settings: budgets, capacities and buffer sizes must be at least 1 (a zero
    /// accept or datagram budget would spin without ever accepting), the low watermark at
    /// most the high one, the high one at most `max_output`, and the backlog positive.
    /// [`EventLoop::with_config`](crate::EventLoop::with_config) calls it.
    pub fn validate(&self) -> std::io::Result<()> {
        let positive = [
            ("events_capacity", self.events_capacity),
            ("read_buffer_size", self.read_buffer_size),
            ("read_budget", self.read_budget),
            ("accept_budget", self.accept_budget),
            ("datagram_budget", self.datagram_budget),
            ("udp_batch", self.udp_batch),
            ("send_file_chunk", self.send_file_chunk),
        ];
        let fail = |why: String| Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, why));
        for (name, value) in positive {
            if value == 0 {
                return fail(format!("Config::{name} must be at least 1"));
            }
        }
        if self.low_watermark > self.high_watermark {
            return fail(format!(
                "Config::low_watermark ({}) is above high_watermark ({})",
                self.low_watermark, self.high_watermark
            ));
        }
        if self.high_watermark > self.max_output {
            return fail(format!(
                "Config::high_watermark ({}) is above max_output ({})",
                self.high_watermark, self.max_output
            ));
        }
        if self.backlog <= 0 {
            return fail(format!(
                "Config::backlog ({}) must be positive",
                self.backlog
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_zero_budgets_are_not() {
        Config::default().validate().unwrap();
        let c = Config {
            accept_budget: 0,
            ..Config::default()
        };
        let e = c.validate().unwrap_err();
        assert!(e.to_string().contains("accept_budget"), "{e}");
        let c = Config {
            datagram_budget: 0,
            ..Config::default()
        };
        assert!(c.validate().is_err());
        let mut c = Config::default();
        c.low_watermark = c.high_watermark + 1;
        assert!(c.validate().is_err());
    }
}
