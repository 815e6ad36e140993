//! evloop: a small, fast, single-threaded event-loop server framework on mio.
//!
//! One [`EventLoop`] owns a mio `Poll` and a slab of listeners, connections and datagram
//! sockets (TCP, UDP, Unix), and calls one [`Handler`] with what happens to them. Handlers
//! act through a [`Context`]: buffered `send` (a sendall that never blocks), `close`,
//! `connect`, `send_to`, timers.
//!
//! ```no_run
//! use evloop::{ConnId, Context, EventLoop, Handler};
//!
//! struct Echo;
//! impl Handler for Echo {
//!     fn on_data(&mut self, cx: &mut Context<'_>, conn: ConnId, data: &[u8]) {
//!         cx.send(conn, data);
//!     }
//! }
//!
//! fn main() -> std::io::Result<()> {
//!     let mut el = EventLoop::new(Echo)?;
//!     el.listen("127.0.0.1:7000".parse().unwrap())?;
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
pub mod framing;
mod handle;
mod handler;
mod linger;
mod listener;
pub mod outbuf;
mod reactor;
mod sockopt;
mod stats;
mod stream;
pub mod timers;
mod token;
mod udp;
mod unix;

pub use addr::Addr;
pub use config::Config;
pub use context::Context;
pub use framing::{FrameError, LengthDecoder, LineDecoder, encode_length_prefixed};
pub use handle::Handle;
pub use handler::{CloseReason, Handler};
pub use reactor::EventLoop;
pub use sockopt::{ListenOptions, UdpOptions};
pub use stats::{ClosedCounts, Stats};
pub use timers::TimerId;
pub use token::{ConnId, ListenerId, UdpId};

/// The README's examples compile (`cargo test` runs them as doctests).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
