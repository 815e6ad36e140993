//! A client connection's state, kept by the loop beside the connection: its request parser,
//! what commands know of the client, the argument buffers reused from command to command,
//! and the replies gathered for one send.

use crate::cmd::ClientState;
use crate::resp::{Limits, Parser};
use evloop::{Bytes, ConnId, Context, Handler, SendError};

/// The input a connection may leave unconsumed while no command of it promised more: a
/// partial header or inline line (64 KiB at most) and the commands left when execution
/// stopped for backpressure fit easily. Also the loop's `Config::max_input`.
pub const MIN_INPUT: usize = 1024 * 1024;

/// The most input one connection may hold, however many arguments its command has: Redis's
/// `client-query-buffer-limit` (1 GiB). A single bulk of `proto-max-bulk-len` (512 MiB)
/// fits; past this the connection closes with `CloseReason::InputLimit`.
pub const MAX_QUERY: usize = 1024 * 1024 * 1024;

/// Replies gathered past this size are handed to the loop as a shared buffer instead of a
/// borrowed slice: what the kernel does not take at once is then queued without a copy,
/// and the buffer leaves with it (a big GET reply does not stay allocated on the connection).
const SHARE_OVER: usize = 256 * 1024;

/// A reply buffer that grew past this is freed after its send rather than kept.
const KEEP_OUT: usize = 64 * 1024;

/// One client.
pub struct Conn {
    /// Where the unfinished request at the start of the input stands.
    pub parser: Parser,
    /// The client's id and name (CLIENT ID, CLIENT SETNAME, HELLO).
    pub client: ClientState,
    /// The current command's arguments; element buffers are reused by the parser.
    pub argv: Vec<Vec<u8>>,
    /// Replies to the commands of one read, sent together.
    pub out: Vec<u8>,
    /// The input bound last set on the connection with `Context::set_input_limit`.
    input_limit: usize,
}

impl Default for Conn {
    fn default() -> Self {
        Conn::new(Limits::default())
    }
}

impl Conn {
    /// A connection whose requests are bounded by `limits`.
    pub fn new(limits: Limits) -> Conn {
        Conn {
            parser: Parser::new(limits),
            client: ClientState::default(),
            argv: Vec::new(),
            out: Vec::new(),
            input_limit: MIN_INPUT,
        }
    }

    /// Sends the gathered replies in one `send` and empties the buffer.
    pub fn flush<H: Handler>(
        &mut self,
        cx: &mut Context<'_, H>,
        conn: ConnId,
    ) -> Result<(), SendError> {
        if self.out.is_empty() {
            return Ok(());
        }
        if self.out.len() > SHARE_OVER {
            let bytes = Bytes::from(std::mem::take(&mut self.out));
            return cx.send_shared(conn, &bytes);
        }
        let sent = cx.send(conn, &self.out);
        self.out.clear();
        if self.out.capacity() > KEEP_OUT {
            self.out = Vec::new();
        }
        sent
    }

    /// Bounds the input the loop keeps for this connection by what its unfinished command
    /// needs (`kept` bytes are being left unconsumed now): 1 MiB normally, as much as a
    /// pending bulk's header announced while it arrives, never more than [`MAX_QUERY`]. An
    /// idle client cannot make the server hold more than 1 MiB for it, and a 512 MiB
    /// argument still gets through. Sets the bound only when it changes.
    pub fn bound_input<H: Handler>(&mut self, cx: &mut Context<'_, H>, conn: ConnId, kept: usize) {
        let want = self
            .parser
            .input_bound()
            .max(kept)
            .clamp(MIN_INPUT, MAX_QUERY);
        if want != self.input_limit {
            cx.set_input_limit(conn, want);
            self.input_limit = want;
        }
    }
}
