//! evloop: a small, fast, single-threaded event-loop server framework on mio.
//!
//! One [`EventLoop`] owns a mio `Poll` and a slab of listeners, connections and datagram
//! sockets (TCP, UDP, Unix), and calls one [`Handler`] with what happens to them. Each
//! connection carries a state of the handler's type, kept by the loop; input the handler
//! leaves unconsumed is kept and presented again. Handlers act through a [`Context`]:
//! buffered `send` (a sendall that never blocks), `close`, `connect`, `send_to`, timers.
//!
//! ```no_run
//! use evloop::{ConnId, Context, EventLoop, Handler};
//!
//! struct Echo;
//! impl Handler for Echo {
//!     type Conn = ();
//!     fn on_data(&mut self, cx: &mut Context<'_, Self>, conn: ConnId, _: &mut (), data: &[u8]) -> usize {
//!         let _ = cx.send(conn, data);
//!         data.len()
//!     }
//! }
//!
//! fn main() -> std::io::Result<()> {
//!     let mut el = EventLoop::new(Echo)?;
//!     el.listen("127.0.0.1:7000".parse().unwrap())?;
//!     el.shutdown_on_signals(std::time::Duration::from_secs(5))?;
//!     el.run()
//! }
//! ```
//!
//! See ARCHITECTURE.md for how the pieces fit and the invariants they keep.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod addr;
mod config;
mod conn;
mod context;
mod core;
mod dispatch;
pub mod framing;
mod handle;
mod handler;
mod input;
mod linger;
mod listener;
mod outbuf;
mod reactor;
mod reason;
mod signal;
mod sockopt;
mod stats;
mod stream;
mod timers;
#[cfg(feature = "tls")]
pub mod tls;
mod token;
mod udp;
mod unix;
mod workers;

pub use addr::Addr;
pub use bytes::Bytes;
pub use config::Config;
pub use context::Context;
pub use framing::{FrameError, LengthDecoder, LineDecoder, encode_length_prefixed};
pub use handle::Handle;
pub use handler::Handler;
pub use reactor::EventLoop;
pub use reason::{CloseReason, SendError};
pub use signal::Signal;
pub use sockopt::{ListenOptions, UdpOptions};
pub use stats::{ClosedCounts, Stats};
pub use timers::TimerId;
pub use token::{ConnId, ListenerId, UdpId};
pub use workers::{Peers, Workers};

/// Not part of the API: the pure output queue and timer store, exposed for the crate's
/// own benchmarks and property tests. May change in any release.
#[doc(hidden)]
pub mod internals {
    pub use crate::outbuf::{Flush, OutBuf};
    pub use crate::timers::Timers;
}

/// The README's examples compile (`cargo test` runs them as doctests).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
