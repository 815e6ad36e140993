//! Framing: cutting a byte stream into messages.
//!
//! TCP delivers bytes, not messages. This module turns those bytes into frames
//! without touching sockets or clocks:
//!
//! * [`LineDecoder`]: lines ending in `"\n"` (an optional `"\r"` before it is
//!   removed too), each at most `max_line` bytes long.
//! * [`LengthDecoder`]: a 4-byte big-endian length, then that many bytes of
//!   payload, at most `max_frame` bytes. [`encode_length_prefixed`] writes them.
//! * [`decode_with`]: any other format, given a function that tells whether a
//!   whole frame is at the start of the input, and how long it is.
//!
//! # `decode` or `feed`
//!
//! Each decoder has two entry points; use one of them per decoder, not both.
//!
//! * **`decode`, inside a handler.** [`Handler::on_data`](crate::Handler::on_data)
//!   gets the connection's input (what it left unconsumed last time, joined with
//!   the bytes just read) and returns how many bytes it consumed; the loop keeps
//!   the rest. `decode` fits that contract: it hands out every complete frame of
//!   `input`, borrowed from it, and returns how far they reach, leaving an
//!   incomplete frame unconsumed for the loop to keep and present again. The
//!   decoder buffers nothing, so a frame cut across reads exists once, in the
//!   loop's input, never in a second copy; the decoder's whole state is a flag
//!   (lines) or a skip count (length prefixes). The unconsumed tail stays within
//!   `max_line + 1` or `max_frame + 3` bytes, well inside the loop's
//!   [`Config::max_input`](crate::Config::max_input) (1 MiB by default) as long
//!   as the frame limit is below it.
//! * **`feed`, outside a loop.** When nobody keeps unconsumed bytes for you (a
//!   blocking client, a file read in pieces, a test), `feed` takes whatever one
//!   read returned and reassembles a frame cut across calls in a buffer of its
//!   own, within the same bounds.
//!
//! Both give the same frames and errors, in the same order, for the same bytes.
//!
//! ```
//! use evloop::{ConnId, Context, Handler, LineDecoder};
//!
//! /// Answers every line with its length.
//! struct Lengths;
//!
//! /// Each connection's decoder, kept by the loop beside the connection.
//! struct Conn(LineDecoder);
//!
//! impl Default for Conn {
//!     fn default() -> Self {
//!         Conn(LineDecoder::new(1024))
//!     }
//! }
//!
//! impl Handler for Lengths {
//!     type Conn = Conn;
//!
//!     fn on_data(&mut self, cx: &mut Context<'_, Self>, conn: ConnId, st: &mut Conn, input: &[u8]) -> usize {
//!         // Complete lines are handled now; a partial one is left for the loop to keep.
//!         st.0.decode(input, |line| {
//!             let reply = match line {
//!                 Ok(line) => format!("{}\n", line.len()),
//!                 Err(e) => format!("ERR {e}\n"),
//!             };
//!             let _ = cx.send(conn, reply.as_bytes()); // refused: it is closing anyway
//!         })
//!     }
//! }
//! ```
//!
//! # Guarantees
//!
//! * **Split-independent.** The frames and errors depend only on the bytes,
//!   never on how they were cut: into `feed` calls, or into reads that the loop
//!   joins to the tail `decode` left unconsumed. A stream given at once, byte by
//!   byte, or cut anywhere gives the same results in the same order, and each is
//!   delivered as soon as the bytes so far decide it.
//! * **Bounded memory.** At most one incomplete frame is held: no more than
//!   `max_line + 1` bytes (a line's content plus a possible `"\r"`) or
//!   `max_frame` bytes of payload (`max_frame + 3` with its prefix, for
//!   `decode`), whatever the peer sends. `feed` holds them in the decoder's
//!   buffer, which never grows beyond that; `decode` leaves them unconsumed.
//! * **Errors are answerable and the stream resynchronises.** An over-long line
//!   is reported once, as [`FrameError::LineTooLong`], as soon as it is known
//!   to be too long; its bytes are dropped up to and including the next
//!   `"\n"`, and decoding goes on after it. A length-prefixed frame over the
//!   maximum is reported once, as [`FrameError::FrameTooLarge`], as soon as its
//!   length has been read; its payload is skipped without being buffered, and
//!   decoding goes on with the next frame. The caller decides what to do: send
//!   an error reply, or close the connection. ([`decode_with`] cannot skip a
//!   frame whose end it cannot find: its error ends the stream.)
//! * **No copy per frame.** With `decode`, every frame is a `&[u8]` borrowed
//!   from `input`. With `feed`, a frame that lies whole in one fed chunk is
//!   borrowed from that chunk; only a frame cut across `feed` calls is copied
//!   into the decoder's buffer, which is reused; a buffer grown past 8 KiB is
//!   freed after its frame is delivered, so idle connections stay small.
//!
//! # Callbacks and stopping early
//!
//! `decode` and `feed` call `on_frame` once per frame (`Ok(bytes)`) or per error
//! (`Err`). The slice is borrowed from the input or from the decoder, and is
//! only valid during the call: copy it if you need to keep it. The closure may
//! borrow anything else mutably, such as the connection's output buffer.
//!
//! `on_frame` returns `()` to go on, or a [`ControlFlow`] (see [`FrameFlow`]):
//! `ControlFlow::Break(())` stops decoding right after that frame, for example
//! because the handler closed the connection or wants to apply backpressure.
//! Both return how many bytes of their input they consumed; the rest was not
//! looked at and is **not** buffered by the decoder (keeping it there would
//! break the memory bound). To resume, give `&data[consumed..]` later (inside a
//! handler: return the count, and the loop presents the rest again); the result
//! is the same as if decoding had never stopped. If the callback never breaks,
//! `feed` returns `data.len()`, and `decode` the end of the last complete frame
//! (or all of `input`, while an over-long line or frame is being dropped).
//!
//! # Example
//!
//! A line-based connection fed from outside a loop: it answers every line,
//! answers an over-long line with an error message, and stops at `QUIT`.
//!
//! ```
//! use evloop::framing::{FrameError, LineDecoder};
//! use std::ops::ControlFlow;
//!
//! struct Conn {
//!     decoder: LineDecoder,
//!     out: Vec<u8>,
//!     closing: bool,
//! }
//!
//! impl Conn {
//!     /// Called with whatever one read returned.
//!     fn on_data(&mut self, data: &[u8]) {
//!         // The closure borrows `out` and `closing` while `feed` borrows
//!         // `decoder`: disjoint fields, so this compiles.
//!         self.decoder.feed(data, |frame| match frame {
//!             Ok(b"QUIT") => {
//!                 self.out.extend_from_slice(b"BYE\n");
//!                 self.closing = true;
//!                 ControlFlow::Break(())
//!             }
//!             Ok(line) => {
//!                 self.out.extend_from_slice(b"echo: ");
//!                 self.out.extend_from_slice(line);
//!                 self.out.push(b'\n');
//!                 ControlFlow::Continue(())
//!             }
//!             Err(FrameError::LineTooLong { max }) => {
//!                 self.out.extend_from_slice(format!("ERR over {max} bytes\n").as_bytes());
//!                 ControlFlow::Continue(())
//!             }
//!             Err(e) => unreachable!("a line decoder reports {e}"),
//!         });
//!     }
//! }
//!
//! let mut conn = Conn { decoder: LineDecoder::new(8), out: Vec::new(), closing: false };
//! conn.on_data(b"hello\r\nthis line is far too long\nhi");
//! conn.on_data(b"\nQUIT\nignored\n");
//! assert_eq!(conn.out, b"echo: hello\nERR over 8 bytes\necho: hi\nBYE\n");
//! assert!(conn.closing);
//! ```
//!
//! Length-prefixed frames, fed in pieces, then decoded the way a loop presents
//! them (the unconsumed tail joined with the next piece):
//!
//! ```
//! use evloop::framing::{encode_length_prefixed, LengthDecoder};
//!
//! let mut wire = Vec::new();
//! encode_length_prefixed(b"first", &mut wire);
//! encode_length_prefixed(b"", &mut wire);
//! encode_length_prefixed(b"second", &mut wire);
//!
//! let mut decoder = LengthDecoder::new(1024);
//! let mut frames = Vec::new();
//! for piece in wire.chunks(3) {
//!     decoder.feed(piece, |frame| frames.push(frame.unwrap().to_vec()));
//! }
//! assert_eq!(frames, [&b"first"[..], b"", b"second"]);
//! assert_eq!(decoder.buffered(), 0);
//!
//! let mut decoder = LengthDecoder::new(1024);
//! let (mut kept, mut again) = (Vec::new(), Vec::new());
//! for piece in wire.chunks(3) {
//!     kept.extend_from_slice(piece);
//!     let used = decoder.decode(&kept, |frame| again.push(frame.unwrap().to_vec()));
//!     kept.drain(..used);
//! }
//! assert_eq!(again, frames);
//! assert!(kept.is_empty());
//! ```

#![forbid(unsafe_code)]

use std::error::Error;
use std::fmt;
use std::ops::ControlFlow;

/// A reassembly buffer with more capacity than this is freed once its frame
/// has been delivered, instead of being kept for the next one.
const RETAIN_CAPACITY: usize = 8 * 1024;

/// The smallest capacity a reassembly buffer is given (unless the maximum is
/// smaller), so that short partial frames don't reallocate byte by byte.
const MIN_CAPACITY: usize = 64;

/// A framing error, passed to `on_frame` as `Err`. Decoding goes on after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// A line (without its `"\n"` or `"\r\n"`) is longer than `max` bytes.
    /// Its bytes up to and including the next `"\n"` are dropped.
    LineTooLong {
        /// The decoder's maximum line length.
        max: usize,
    },
    /// A length prefix announced `len` bytes, more than `max`. The payload is
    /// skipped without being buffered. From [`decode_with`], which cannot know
    /// the length: more than `max` bytes came without a whole frame, and `len`
    /// is `max + 1`; the stream cannot be resynchronised.
    FrameTooLarge {
        /// The announced payload length (`max + 1` from [`decode_with`]).
        len: usize,
        /// The decoder's maximum frame size.
        max: usize,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::LineTooLong { max } => write!(f, "line longer than {max} bytes"),
            FrameError::FrameTooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the maximum of {max} bytes")
            }
        }
    }
}

impl Error for FrameError {}

/// What an `on_frame` callback returns: `()` to go on, or a
/// [`ControlFlow<()>`] whose `Break(())` stops decoding after this frame
/// (see the [module docs](self#callbacks-and-stopping-early)).
///
/// A closure whose body only panics (`|_| unreachable!()`) returns `!`, which
/// is not a `FrameFlow`: write `|_| -> () { unreachable!() }`, or pass a `fn`.
pub trait FrameFlow {
    /// Converts to a [`ControlFlow`].
    fn into_flow(self) -> ControlFlow<()>;
}

impl FrameFlow for () {
    fn into_flow(self) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
}

impl FrameFlow for ControlFlow<()> {
    fn into_flow(self) -> ControlFlow<()> {
        self
    }
}

/// Appends `extra` to `buf`, growing its capacity geometrically but never
/// beyond `limit`. The caller guarantees `buf.len() + extra.len() <= limit`.
fn extend_bounded(buf: &mut Vec<u8>, extra: &[u8], limit: usize) {
    let needed = buf.len() + extra.len();
    debug_assert!(needed <= limit);
    if needed > buf.capacity() {
        let target = needed
            .max(buf.capacity().saturating_mul(2))
            .max(MIN_CAPACITY)
            .min(limit);
        buf.reserve_exact(target - buf.len());
    }
    buf.extend_from_slice(extra);
}

/// Empties `buf`, freeing it if it grew large.
fn release(buf: &mut Vec<u8>) {
    if buf.capacity() > RETAIN_CAPACITY {
        *buf = Vec::new();
    } else {
        buf.clear();
    }
}

/// Removes one trailing `"\r"`, if any.
fn strip_cr(line: &[u8]) -> &[u8] {
    match line {
        [rest @ .., b'\r'] => rest,
        _ => line,
    }
}

/// Decodes lines ending in `"\n"`, at most `max_line` bytes each.
///
/// A line is handed out without its `"\n"` and without one `"\r"` just before
/// it; a `"\r"` anywhere else is kept. Empty lines are frames too. A line whose
/// content is longer than `max_line` is reported once as
/// [`FrameError::LineTooLong`] (as soon as more than `max_line + 1` bytes of it
/// have arrived, or at its `"\n"`), and dropped through the next `"\n"`.
///
/// Inside a handler, [`decode`](Self::decode) the loop's kept input: the bytes
/// after the last `"\n"` are left unconsumed, at most `max_line + 1` of them.
/// Outside a loop, [`feed`](Self::feed) each read: the bytes after the last
/// `"\n"` stay buffered in the decoder, as many. At end of stream they are an
/// unterminated line; [`buffered`](Self::buffered) tells whether there are any
/// (for `feed`).
#[derive(Clone, Debug)]
pub struct LineDecoder {
    max_line: usize,
    /// The start of an incomplete line, at most `max_line + 1` bytes.
    buf: Vec<u8>,
    /// Inside an over-long line that was already reported: drop through `"\n"`.
    discarding: bool,
}

impl LineDecoder {
    /// Creates a decoder for lines of at most `max_line` bytes (not counting
    /// the `"\n"` or `"\r\n"`). It allocates nothing until a line is cut across
    /// two `feed` calls.
    pub fn new(max_line: usize) -> Self {
        LineDecoder {
            max_line,
            buf: Vec::new(),
            discarding: false,
        }
    }

    /// The maximum line length given to [`new`](Self::new).
    pub fn max_line(&self) -> usize {
        self.max_line
    }

    /// Bytes held of an incomplete line: at most `max_line + 1`. Zero while
    /// dropping an over-long line, and always zero with [`decode`](Self::decode).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Decodes the complete lines of `input`, calling `on_frame` with each one
    /// (borrowed from `input`), or with `Err(LineTooLong)` once per over-long
    /// line; for a handler's [`on_data`](crate::Handler::on_data), on the input
    /// the loop keeps (see the [module docs](self#decode-or-feed)).
    ///
    /// Returns how many bytes of `input` were consumed: up to the end of the
    /// last complete line. The incomplete line after it is left unconsumed,
    /// never copied: the caller presents it again joined with the next bytes
    /// (the loop does, when `on_data` returns this count), and then the lines
    /// and errors are the same as if all the bytes had come at once. If that
    /// tail grows past `max_line + 1` bytes without a `"\n"`, the line is
    /// reported as too long at once, everything is consumed, and the bytes up
    /// to the next `"\n"` are dropped as they come (the decoder's one bit of
    /// state). So the unconsumed tail is at most `max_line + 1` bytes, and each
    /// call scans at most that much of it again.
    ///
    /// If `on_frame` returns `ControlFlow::Break(())`, decoding stops right
    /// after that line or error, and the count returned ends there (an error
    /// about an unterminated line still consumes all of `input`).
    ///
    /// Don't mix it with [`feed`](Self::feed) on one decoder: `decode` expects
    /// nothing buffered.
    ///
    /// ```
    /// use evloop::LineDecoder;
    ///
    /// let mut d = LineDecoder::new(16);
    /// let mut lines = Vec::new();
    /// // The loop's kept input: "hel", then "hel" + "lo\nwor", then "wor" + "ld\n".
    /// assert_eq!(d.decode(b"hel", |l| lines.push(l.unwrap().to_vec())), 0);
    /// assert_eq!(d.decode(b"hello\nwor", |l| lines.push(l.unwrap().to_vec())), 6);
    /// assert_eq!(d.decode(b"world\n", |l| lines.push(l.unwrap().to_vec())), 6);
    /// assert_eq!(lines, [&b"hello"[..], b"world"]);
    /// ```
    pub fn decode<F, R>(&mut self, input: &[u8], mut on_frame: F) -> usize
    where
        F: FnMut(Result<&[u8], FrameError>) -> R,
        R: FrameFlow,
    {
        debug_assert!(self.buf.is_empty(), "LineDecoder::decode after feed");
        let max = self.max_line;
        // A line's raw bytes: its content plus a possible "\r".
        let raw_max = max.saturating_add(1);
        let mut pos = 0;
        loop {
            let rest = &input[pos..];
            let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                if self.discarding {
                    return input.len(); // the rest of a line already reported
                }
                if rest.len() > raw_max {
                    self.discarding = true;
                    // All of `input` is consumed either way: it is that line's.
                    let _ = on_frame(Err(FrameError::LineTooLong { max })).into_flow();
                    return input.len();
                }
                return pos; // an incomplete line: the caller keeps it
            };
            pos += nl + 1;
            if std::mem::take(&mut self.discarding) {
                continue;
            }
            let line = strip_cr(&rest[..nl]);
            let flow = if line.len() > max {
                on_frame(Err(FrameError::LineTooLong { max }))
            } else {
                on_frame(Ok(line))
            };
            if flow.into_flow().is_break() {
                return pos;
            }
        }
    }

    /// Feeds bytes, calling `on_frame` with each complete line, or with
    /// `Err(LineTooLong)` once per over-long line.
    ///
    /// Returns how many bytes of `data` were consumed: `data.len()` unless
    /// `on_frame` returned `ControlFlow::Break(())`, in which case decoding
    /// stopped right after that line, and the rest of `data` should be fed
    /// again to resume (see the [module docs](self#callbacks-and-stopping-early)).
    pub fn feed<F, R>(&mut self, data: &[u8], mut on_frame: F) -> usize
    where
        F: FnMut(Result<&[u8], FrameError>) -> R,
        R: FrameFlow,
    {
        let max = self.max_line;
        // A line's raw bytes: its content plus a possible "\r".
        let raw_max = max.saturating_add(1);
        let mut pos = 0;
        while pos < data.len() {
            let rest = &data[pos..];
            let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                // No end of line in what is left: keep it, or drop it.
                if !self.discarding {
                    if self.buf.len() + rest.len() > raw_max {
                        release(&mut self.buf);
                        self.discarding = true;
                        // All of `data` is consumed either way: the rest
                        // belongs to the line just reported.
                        let _ = on_frame(Err(FrameError::LineTooLong { max })).into_flow();
                    } else {
                        extend_bounded(&mut self.buf, rest, raw_max);
                    }
                }
                return data.len();
            };
            let part = &rest[..nl];
            pos += nl + 1;
            if self.discarding {
                self.discarding = false;
                continue;
            }
            let flow = if self.buf.is_empty() {
                // The whole line is in `data`: lend it without copying.
                let line = strip_cr(part);
                if line.len() > max {
                    on_frame(Err(FrameError::LineTooLong { max }))
                } else {
                    on_frame(Ok(line))
                }
            } else {
                let ends_in_cr = match part.last() {
                    Some(&last) => last == b'\r',
                    None => self.buf.last() == Some(&b'\r'),
                };
                let len = self.buf.len() + part.len() - usize::from(ends_in_cr);
                if len > max {
                    release(&mut self.buf);
                    on_frame(Err(FrameError::LineTooLong { max }))
                } else {
                    extend_bounded(&mut self.buf, part, raw_max);
                    let flow = on_frame(Ok(strip_cr(&self.buf)));
                    release(&mut self.buf);
                    flow
                }
            };
            if flow.into_flow().is_break() {
                return pos;
            }
        }
        data.len()
    }
}

/// Where a [`LengthDecoder`] is in the stream.
#[derive(Clone, Copy, Debug)]
enum LengthState {
    /// Reading a length prefix (`header_len` bytes of it are in `header`).
    Header,
    /// Reading a payload of `len <= max_frame` bytes.
    Payload { len: usize },
    /// Dropping the rest of an over-large payload.
    Skip { remaining: u32 },
}

/// Decodes length-prefixed frames: a 4-byte big-endian payload length, then
/// the payload, at most `max_frame` bytes.
///
/// Zero-length payloads are frames too. A frame whose length is over
/// `max_frame` is reported once as [`FrameError::FrameTooLarge`] as soon as its
/// length prefix has arrived; its payload is then skipped (not buffered), and
/// the next frame is decoded normally.
///
/// Inside a handler, [`decode`](Self::decode) the loop's kept input; outside a
/// loop, [`feed`](Self::feed) each read. [`encode_length_prefixed`] writes this
/// format.
#[derive(Clone, Debug)]
pub struct LengthDecoder {
    max_frame: usize,
    state: LengthState,
    header: [u8; 4],
    header_len: usize,
    /// The start of an incomplete payload, at most `max_frame` bytes.
    buf: Vec<u8>,
}

impl LengthDecoder {
    /// Creates a decoder for payloads of at most `max_frame` bytes. It
    /// allocates nothing until a payload is cut across two `feed` calls.
    pub fn new(max_frame: usize) -> Self {
        LengthDecoder {
            max_frame,
            state: LengthState::Header,
            header: [0; 4],
            header_len: 0,
            buf: Vec::new(),
        }
    }

    /// The maximum payload size given to [`new`](Self::new).
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Bytes held of an incomplete frame: up to 3 bytes of a length prefix,
    /// or up to `max_frame` bytes of a payload. Zero while skipping an
    /// over-large payload. Always zero with [`decode`](Self::decode).
    pub fn buffered(&self) -> usize {
        self.header_len + self.buf.len()
    }

    /// Decodes the complete frames of `input`, calling `on_frame` with each
    /// payload (borrowed from `input`), or with `Err(FrameTooLarge)` once per
    /// over-large frame; for a handler's [`on_data`](crate::Handler::on_data),
    /// on the input the loop keeps (see the [module docs](self#decode-or-feed)).
    ///
    /// Returns how many bytes of `input` were consumed: up to the end of the
    /// last complete frame. An incomplete frame after it (its length prefix and
    /// the payload so far, at most `max_frame + 3` bytes) is left unconsumed,
    /// never copied: the caller presents it again joined with the next bytes
    /// (the loop does, when `on_data` returns this count), and then the frames
    /// and errors are the same as if all the bytes had come at once. An
    /// over-large frame is reported as soon as its prefix is in `input`; its
    /// payload is consumed and dropped as it comes (the decoder's only state:
    /// how much of it is left).
    ///
    /// If `on_frame` returns `ControlFlow::Break(())`, decoding stops right
    /// after that frame or error, and the count returned ends there.
    ///
    /// Don't mix it with [`feed`](Self::feed) on one decoder: `decode` expects
    /// nothing buffered.
    pub fn decode<F, R>(&mut self, input: &[u8], mut on_frame: F) -> usize
    where
        F: FnMut(Result<&[u8], FrameError>) -> R,
        R: FrameFlow,
    {
        debug_assert!(
            self.buffered() == 0 && !matches!(self.state, LengthState::Payload { .. }),
            "LengthDecoder::decode after feed"
        );
        let max = self.max_frame;
        let mut pos = 0;
        loop {
            if let LengthState::Skip { remaining } = self.state {
                let skip = u32::try_from(input.len() - pos).map_or(remaining, |n| n.min(remaining));
                pos += skip as usize;
                if skip < remaining {
                    self.state = LengthState::Skip {
                        remaining: remaining - skip,
                    };
                    return input.len();
                }
                self.state = LengthState::Header;
            }
            let rest = &input[pos..];
            let Some(&prefix) = rest.first_chunk::<4>() else {
                return pos; // part of a length prefix: the caller keeps it
            };
            let len = u32::from_be_bytes(prefix);
            let flow = match usize::try_from(len) {
                Ok(len) if len <= max => {
                    let Some(payload) = rest[4..].get(..len) else {
                        return pos; // an incomplete payload: the caller keeps it
                    };
                    pos += 4 + len;
                    on_frame(Ok(payload))
                }
                _ => {
                    pos += 4;
                    self.state = LengthState::Skip { remaining: len };
                    let len = usize::try_from(len).unwrap_or(usize::MAX);
                    on_frame(Err(FrameError::FrameTooLarge { len, max }))
                }
            };
            if flow.into_flow().is_break() {
                return pos;
            }
        }
    }

    /// Feeds bytes, calling `on_frame` with each complete payload, or with
    /// `Err(FrameTooLarge)` once per over-large frame.
    ///
    /// Returns how many bytes of `data` were consumed: `data.len()` unless
    /// `on_frame` returned `ControlFlow::Break(())`, in which case decoding
    /// stopped right after that frame or error, and the rest of `data` should
    /// be fed again to resume (see the
    /// [module docs](self#callbacks-and-stopping-early)).
    pub fn feed<F, R>(&mut self, data: &[u8], mut on_frame: F) -> usize
    where
        F: FnMut(Result<&[u8], FrameError>) -> R,
        R: FrameFlow,
    {
        let max = self.max_frame;
        let mut pos = 0;
        loop {
            let rest = &data[pos..];
            match self.state {
                LengthState::Header => {
                    let len = if self.header_len == 0 && rest.len() >= 4 {
                        pos += 4;
                        u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]])
                    } else {
                        let take = (4 - self.header_len).min(rest.len());
                        self.header[self.header_len..self.header_len + take]
                            .copy_from_slice(&rest[..take]);
                        self.header_len += take;
                        if self.header_len < 4 {
                            return data.len();
                        }
                        pos += take;
                        self.header_len = 0;
                        u32::from_be_bytes(self.header)
                    };
                    match usize::try_from(len) {
                        Ok(len) if len <= max => self.state = LengthState::Payload { len },
                        _ => {
                            self.state = LengthState::Skip { remaining: len };
                            let len = usize::try_from(len).unwrap_or(usize::MAX);
                            let err = FrameError::FrameTooLarge { len, max };
                            if on_frame(Err(err)).into_flow().is_break() {
                                return pos;
                            }
                        }
                    }
                }
                LengthState::Payload { len } => {
                    let flow = if self.buf.is_empty() && rest.len() >= len {
                        // The whole payload is in `data`: lend it without copying.
                        pos += len;
                        self.state = LengthState::Header;
                        on_frame(Ok(&rest[..len]))
                    } else {
                        let take = (len - self.buf.len()).min(rest.len());
                        extend_bounded(&mut self.buf, &rest[..take], len);
                        if self.buf.len() < len {
                            return data.len();
                        }
                        pos += take;
                        self.state = LengthState::Header;
                        let flow = on_frame(Ok(&self.buf));
                        release(&mut self.buf);
                        flow
                    };
                    if flow.into_flow().is_break() {
                        return pos;
                    }
                }
                LengthState::Skip { remaining } => {
                    let skip = u32::try_from(rest.len()).map_or(remaining, |n| n.min(remaining));
                    pos += skip as usize;
                    if skip < remaining {
                        self.state = LengthState::Skip {
                            remaining: remaining - skip,
                        };
                        return data.len();
                    }
                    self.state = LengthState::Header;
                }
            }
        }
    }
}

/// Decodes frames of any format that can tell where a frame ends by looking at
/// its bytes: the [`decode`](LineDecoder::decode) of a handler's own protocol,
/// with the same guarantees (split-independent, bounded, zero-copy).
///
/// `frame_len(prefix)` is asked about the start of what is left of `input`
/// (at most its first `max_frame` bytes): `Some(n)` when the first `n` bytes
/// are a whole frame (`1 <= n <= prefix.len()`, else this panics), `None` when
/// more bytes are needed. Each frame, borrowed from `input`, goes to
/// `on_frame`, which returns `()` to go on or a [`ControlFlow`] (see
/// [`FrameFlow`]) whose `Break(())` stops right after that frame.
///
/// Returns how many bytes were consumed: up to the end of the last whole frame
/// (or of the frame that broke). The rest is an incomplete frame, at most
/// `max_frame` bytes: inside [`on_data`](crate::Handler::on_data), return the
/// count and the loop keeps the rest and presents it again joined with the
/// next bytes. If there is no whole frame within the first `max_frame` bytes
/// and more than that are there, it is an error,
/// [`FrameError::FrameTooLarge`] (with `len: max_frame + 1`), after the frames
/// before it were delivered; since a frame's end cannot be found, the stream
/// cannot be resynchronised: reply if the protocol can, then close the
/// connection.
///
/// **The contract for split-independence**: `frame_len` must answer from the
/// bytes it is given alone, and a whole frame must be recognised whatever
/// follows it. That is, if the first `n` bytes are a whole frame, `frame_len`
/// returns `Some(n)` for every prefix of at least `n` bytes, and `None` for
/// every shorter prefix. Then the frames and errors depend only on the bytes,
/// however the reads cut them. ("Up to the last `\n` in the buffer", which
/// looks past the frame, breaks it; "up to the first `\n`" keeps it.)
///
/// An HTTP-like request head, ending in an empty line, at most 8 KiB:
///
/// ```
/// use evloop::framing::{decode_with, FrameError};
///
/// fn head_len(bytes: &[u8]) -> Option<usize> {
///     bytes.windows(4).position(|w| w == b"\r\n\r\n").map(|end| end + 4)
/// }
///
/// let mut heads = Vec::new();
/// // As the loop presents input: a read cut inside the second head ...
/// let input = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\n";
/// let used = decode_with(input, 8192, head_len, |head| heads.push(head.len())).unwrap();
/// assert_eq!((used, heads.len()), (27, 1));
/// // ... is presented again, joined with the next read.
/// let input = b"GET /b HTTP/1.1\r\nHost: a\r\n\r\n";
/// let used = decode_with(input, 8192, head_len, |head| heads.push(head.len())).unwrap();
/// assert_eq!((used, heads), (input.len(), vec![27, 28]));
///
/// // A peer that never ends its head is refused once it sends more than the maximum.
/// let endless = vec![b'x'; 8193];
/// assert_eq!(
///     decode_with(&endless[..8192], 8192, head_len, |_| ()),
///     Ok(0),
/// );
/// assert_eq!(
///     decode_with(&endless, 8192, head_len, |_| ()),
///     Err(FrameError::FrameTooLarge { len: 8193, max: 8192 }),
/// );
/// ```
///
/// Inside a handler, with its state kept by the loop:
///
/// ```
/// use evloop::framing::decode_with;
/// use evloop::{ConnId, Context, Handler};
///
/// /// A frame is one byte of length `n`, then `n` bytes.
/// fn tiny_frame(bytes: &[u8]) -> Option<usize> {
///     let n = 1 + usize::from(*bytes.first()?);
///     (bytes.len() >= n).then_some(n)
/// }
///
/// struct Tiny;
///
/// impl Handler for Tiny {
///     type Conn = ();
///
///     fn on_data(&mut self, cx: &mut Context<'_, Self>, conn: ConnId, _: &mut (), input: &[u8]) -> usize {
///         let echo = |frame: &[u8]| {
///             let _ = cx.send(conn, frame); // refused: the connection is closing anyway
///         };
///         match decode_with(input, 256, tiny_frame, echo) {
///             Ok(used) => used,
///             Err(_) => {
///                 cx.close(conn);
///                 input.len()
///             }
///         }
///     }
/// }
/// ```
pub fn decode_with<L, F, R>(
    input: &[u8],
    max_frame: usize,
    mut frame_len: L,
    mut on_frame: F,
) -> Result<usize, FrameError>
where
    L: FnMut(&[u8]) -> Option<usize>,
    F: FnMut(&[u8]) -> R,
    R: FrameFlow,
{
    let mut pos = 0;
    while pos < input.len() {
        let rest = &input[pos..];
        let prefix = &rest[..rest.len().min(max_frame)];
        match frame_len(prefix) {
            Some(n) => {
                assert!(
                    (1..=prefix.len()).contains(&n),
                    "decode_with: frame_len said {n} of {} bytes",
                    prefix.len()
                );
                pos += n;
                if on_frame(&rest[..n]).into_flow().is_break() {
                    break;
                }
            }
            None if rest.len() > max_frame => {
                let len = max_frame.saturating_add(1);
                return Err(FrameError::FrameTooLarge {
                    len,
                    max: max_frame,
                });
            }
            None => break,
        }
    }
    Ok(pos)
}

/// Appends `payload` to `out` as one length-prefixed frame: its length as
/// 4 bytes big-endian, then the payload itself.
///
/// # Panics
///
/// If `payload` is longer than `u32::MAX` bytes.
pub fn encode_length_prefixed(payload: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(payload.len())
        .expect("encode_length_prefixed: payload longer than u32::MAX bytes");
    out.reserve(4 + payload.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One decoder event, owned.
    type Event = Result<Vec<u8>, FrameError>;

    /// The two decoders behind one interface, plus a plain reference model of
    /// each format that the decoders must agree with.
    trait Decoder: Sized {
        fn with_max(max: usize) -> Self;
        /// Feeds `data`; pushes events; breaks after `stop_after` more events.
        fn feed_events(
            &mut self,
            data: &[u8],
            events: &mut Vec<Event>,
            stop_after: Option<usize>,
        ) -> usize;
        fn held(&self) -> usize;
        fn capacity(&self) -> usize;
        /// The most `held()` may ever be.
        fn bound(max: usize) -> usize;
        /// `decode` on `input`; pushes events; breaks after `stop_after` more events.
        fn decode_events(
            &mut self,
            input: &[u8],
            events: &mut Vec<Event>,
            stop_after: Option<usize>,
        ) -> usize;
        /// The most `decode` may leave unconsumed (without breaks).
        fn kept_bound(max: usize) -> usize;
        /// What `decode` leaves unconsumed after the same bytes this decoder was fed:
        /// the bytes `feed` holds, plus a length prefix it has already taken apart.
        fn kept_of_fed(&self) -> usize;
        /// The events the bytes `data` decide, computed naively.
        fn model(max: usize, data: &[u8]) -> Vec<Event>;
    }

    fn collect<'a>(
        events: &'a mut Vec<Event>,
        stop_after: Option<usize>,
    ) -> impl FnMut(Result<&[u8], FrameError>) -> ControlFlow<()> + 'a {
        let mut left = stop_after;
        move |frame| {
            events.push(frame.map(<[u8]>::to_vec));
            match &mut left {
                Some(0) => unreachable!(),
                Some(1) => ControlFlow::Break(()),
                Some(n) => {
                    *n -= 1;
                    ControlFlow::Continue(())
                }
                None => ControlFlow::Continue(()),
            }
        }
    }

    impl Decoder for LineDecoder {
        fn with_max(max: usize) -> Self {
            LineDecoder::new(max)
        }
        fn feed_events(&mut self, d: &[u8], ev: &mut Vec<Event>, stop: Option<usize>) -> usize {
            self.feed(d, collect(ev, stop))
        }
        fn held(&self) -> usize {
            self.buffered()
        }
        fn capacity(&self) -> usize {
            self.buf.capacity()
        }
        fn bound(max: usize) -> usize {
            max + 1
        }
        fn decode_events(&mut self, d: &[u8], ev: &mut Vec<Event>, stop: Option<usize>) -> usize {
            self.decode(d, collect(ev, stop))
        }
        fn kept_bound(max: usize) -> usize {
            max + 1
        }
        fn kept_of_fed(&self) -> usize {
            self.buffered()
        }
        fn model(max: usize, data: &[u8]) -> Vec<Event> {
            let mut events = Vec::new();
            let mut segments: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
            let last = segments.pop().unwrap(); // not terminated by "\n"
            for seg in segments {
                let line = seg.strip_suffix(b"\r").unwrap_or(seg);
                events.push(if line.len() > max {
                    Err(FrameError::LineTooLong { max })
                } else {
                    Ok(line.to_vec())
                });
            }
            if last.len() > max + 1 {
                events.push(Err(FrameError::LineTooLong { max }));
            }
            events
        }
    }

    impl Decoder for LengthDecoder {
        fn with_max(max: usize) -> Self {
            LengthDecoder::new(max)
        }
        fn feed_events(&mut self, d: &[u8], ev: &mut Vec<Event>, stop: Option<usize>) -> usize {
            self.feed(d, collect(ev, stop))
        }
        fn held(&self) -> usize {
            self.buffered()
        }
        fn capacity(&self) -> usize {
            self.buf.capacity()
        }
        fn bound(max: usize) -> usize {
            max.max(3)
        }
        fn decode_events(&mut self, d: &[u8], ev: &mut Vec<Event>, stop: Option<usize>) -> usize {
            self.decode(d, collect(ev, stop))
        }
        fn kept_bound(max: usize) -> usize {
            max + 3
        }
        fn kept_of_fed(&self) -> usize {
            let prefix = match self.state {
                LengthState::Payload { .. } => 4,
                _ => 0,
            };
            self.buffered() + prefix
        }
        fn model(max: usize, mut data: &[u8]) -> Vec<Event> {
            let mut events = Vec::new();
            while data.len() >= 4 {
                let len = u32::from_be_bytes(data[..4].try_into().unwrap()) as usize;
                data = &data[4..];
                if len > max {
                    events.push(Err(FrameError::FrameTooLarge { len, max }));
                    data = &data[len.min(data.len())..];
                } else if data.len() >= len {
                    events.push(Ok(data[..len].to_vec()));
                    data = &data[len..];
                } else {
                    break;
                }
            }
            events
        }
    }

    fn one_shot<D: Decoder>(max: usize, data: &[u8]) -> (Vec<Event>, usize) {
        let mut d = D::with_max(max);
        let mut events = Vec::new();
        assert_eq!(d.feed_events(data, &mut events, None), data.len());
        assert!(d.held() <= D::bound(max));
        (events, d.held())
    }

    /// Feeds `data` in the given chunks; checks the bounds and that after each
    /// chunk the events so far are exactly those of the prefix fed so far.
    fn chunked<D: Decoder>(max: usize, data: &[u8], cuts: &[usize]) -> (Vec<Event>, usize) {
        let mut d = D::with_max(max);
        let mut events = Vec::new();
        let mut start = 0;
        for &end in cuts.iter().chain([data.len()].iter()) {
            assert_eq!(
                d.feed_events(&data[start..end], &mut events, None),
                end - start
            );
            assert!(d.held() <= D::bound(max), "held {} > bound", d.held());
            assert!(d.capacity() <= D::bound(max), "capacity {}", d.capacity());
            assert_eq!(
                events,
                D::model(max, &data[..end]),
                "prefix of {} bytes",
                end
            );
            start = end;
        }
        (events, d.held())
    }

    /// Feeds `data` at once, but stops after every `every` events and resumes
    /// with the unconsumed rest.
    fn stopping<D: Decoder>(max: usize, data: &[u8], every: usize) -> (Vec<Event>, usize) {
        let mut d = D::with_max(max);
        let mut events = Vec::new();
        let mut rest = data;
        loop {
            let before = events.len();
            let used = d.feed_events(rest, &mut events, Some(every));
            assert!(used <= rest.len());
            if used < rest.len() {
                assert_eq!(
                    events.len(),
                    before + every,
                    "stopped early without a break"
                );
            }
            rest = &rest[used..];
            if rest.is_empty() {
                break;
            }
        }
        (events, d.held())
    }

    /// The loop's side of `decode`: each chunk is joined to the tail left unconsumed, and
    /// presented; after a break (every `stop_every` events) the rest is presented again at
    /// once, as after `resume_read`. Checks after each chunk that the tail is within its
    /// bound and is exactly what `feed` would hold (plus a taken-apart length prefix), and
    /// that the events so far are those of `feed` given the same chunks, and of the model.
    /// Returns the events and the final tail.
    fn looped<D: Decoder>(
        max: usize,
        data: &[u8],
        cuts: &[usize],
        stop_every: Option<usize>,
    ) -> (Vec<Event>, Vec<u8>) {
        let (mut d, mut fed) = (D::with_max(max), D::with_max(max));
        let (mut kept, mut events, mut fed_events) = (Vec::new(), Vec::new(), Vec::new());
        let mut start = 0;
        for &end in cuts.iter().chain([data.len()].iter()) {
            let chunk = &data[start..end];
            start = end;
            kept.extend_from_slice(chunk);
            loop {
                let before = events.len();
                let used = d.decode_events(&kept, &mut events, stop_every);
                assert!(used <= kept.len());
                kept.drain(..used);
                if stop_every.is_none_or(|n| events.len() < before + n) {
                    break; // it did not break: what is left waits for more bytes
                }
            }
            assert_eq!(fed.feed_events(chunk, &mut fed_events, None), chunk.len());
            assert!(
                kept.len() <= D::kept_bound(max),
                "kept {} > bound",
                kept.len()
            );
            assert_eq!(kept.len(), fed.kept_of_fed(), "kept vs fed, at {end}");
            assert_eq!(events, fed_events, "decode vs feed, prefix of {end} bytes");
            assert_eq!(events, D::model(max, &data[..end]), "prefix of {end} bytes");
        }
        (events, kept)
    }

    /// The split-everywhere property for one input, for `feed` and `decode`.
    fn check_splits<D: Decoder>(max: usize, data: &[u8]) {
        let expected = one_shot::<D>(max, data);
        assert_eq!(
            expected.0,
            D::model(max, data),
            "one-shot vs model, max {max}"
        );
        for cut in 0..=data.len() {
            assert_eq!(chunked::<D>(max, data, &[cut]), expected, "cut at {cut}");
        }
        let every_byte: Vec<usize> = (1..data.len()).collect();
        assert_eq!(
            chunked::<D>(max, data, &every_byte),
            expected,
            "byte at a time"
        );
        for every in 1..=3 {
            assert_eq!(
                stopping::<D>(max, data, every),
                expected,
                "stop every {every}"
            );
        }
        let (events, _) = looped::<D>(max, data, &[], None);
        assert_eq!(events, expected.0, "decode at once");
        for cut in 0..=data.len() {
            let (events, _) = looped::<D>(max, data, &[cut], None);
            assert_eq!(events, expected.0, "decode, cut at {cut}");
        }
        for every in [None, Some(1), Some(2), Some(3)] {
            let (events, _) = looped::<D>(max, data, &every_byte, every);
            assert_eq!(
                events, expected.0,
                "decode byte at a time, stop every {every:?}"
            );
            let (events, _) = looped::<D>(max, data, &[], every);
            assert_eq!(events, expected.0, "decode at once, stop every {every:?}");
        }
    }

    /// A callback for feeds that must not complete a frame.
    fn no_frame(frame: Result<&[u8], FrameError>) {
        panic!("unexpected {frame:?}");
    }

    fn ok(s: &[u8]) -> Event {
        Ok(s.to_vec())
    }

    fn lines(max: usize, data: &[u8]) -> Vec<Event> {
        check_splits::<LineDecoder>(max, data);
        one_shot::<LineDecoder>(max, data).0
    }

    fn frames(max: usize, data: &[u8]) -> Vec<Event> {
        check_splits::<LengthDecoder>(max, data);
        one_shot::<LengthDecoder>(max, data).0
    }

    fn wire(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in payloads {
            encode_length_prefixed(p, &mut out);
        }
        out
    }

    const TOO_LONG_4: Event = Err(FrameError::LineTooLong { max: 4 });

    #[test]
    fn lines_basic_crlf_and_empty() {
        assert_eq!(lines(4, b""), []);
        assert_eq!(lines(4, b"ab"), []);
        assert_eq!(lines(4, b"ab\n"), [ok(b"ab")]);
        assert_eq!(lines(4, b"ab\r\ncd\n"), [ok(b"ab"), ok(b"cd")]);
        assert_eq!(lines(4, b"\n\r\n\n"), [ok(b""), ok(b""), ok(b"")]);
        assert_eq!(lines(4, b"\r"), []);
        // Only one "\r" right before "\n" is removed.
        assert_eq!(lines(4, b"a\rb\n\r\r\n"), [ok(b"a\rb"), ok(b"\r")]);
        assert_eq!(lines(4, b"a\n\rb"), [ok(b"a")]);
    }

    #[test]
    fn lines_at_the_limit() {
        assert_eq!(lines(4, b"abcd\n"), [ok(b"abcd")]);
        assert_eq!(lines(4, b"abcd\r\n"), [ok(b"abcd")]);
        assert_eq!(lines(4, b"abcde\n"), [TOO_LONG_4]);
        assert_eq!(lines(4, b"abcde\r\n"), [TOO_LONG_4]);
        assert_eq!(lines(4, b"abc\r\r\n"), [ok(b"abc\r")]);
        assert_eq!(
            lines(0, b"\n\r\na\n"),
            [ok(b""), ok(b""), Err(FrameError::LineTooLong { max: 0 })]
        );
        // Unterminated: up to max + 1 bytes may still become a valid line ...
        assert_eq!(lines(4, b"abcde"), []);
        assert_eq!(lines(4, b"abcd\r"), []);
        // ... one more and it is reported at once.
        assert_eq!(lines(4, b"abcdef"), [TOO_LONG_4]);
    }

    #[test]
    fn lines_resync_after_too_long() {
        assert_eq!(lines(4, b"abcdefgh\nok\n"), [TOO_LONG_4, ok(b"ok")]);
        assert_eq!(
            lines(4, b"abcdefgh\r\n\nok\r\n"),
            [TOO_LONG_4, ok(b""), ok(b"ok")]
        );
        assert_eq!(
            lines(4, b"x\nabcdefghijklmnop\nabcde\nabcd\n"),
            [ok(b"x"), TOO_LONG_4, TOO_LONG_4, ok(b"abcd")]
        );
        assert_eq!(lines(4, b"abcdefgh"), [TOO_LONG_4]);
        assert_eq!(lines(4, b"abcdefgh\n"), [TOO_LONG_4]);
    }

    #[test]
    fn lines_usize_max_limit() {
        let mut d = LineDecoder::new(usize::MAX);
        let mut got = Vec::new();
        d.feed(b"abc", |f| got.push(f.map(<[u8]>::to_vec)));
        d.feed(b"d\r\n", |f| got.push(f.map(<[u8]>::to_vec)));
        assert_eq!(got, [ok(b"abcd")]);
    }

    #[test]
    fn lines_memory_bounded_for_10mb_line() {
        let max = 1024;
        let big = vec![b'x'; 10 * 1024 * 1024];
        let mut d = LineDecoder::new(max);
        let mut got = Vec::new();
        for chunk in big.chunks(65536).chain([&b"\nok\n"[..]]) {
            d.feed(chunk, |f| got.push(f.map(<[u8]>::to_vec)));
            assert!(d.buffered() <= max + 1);
            assert!(d.buf.capacity() <= max + 1, "capacity {}", d.buf.capacity());
        }
        assert_eq!(got, [Err(FrameError::LineTooLong { max }), ok(b"ok")]);
        assert_eq!(d.buffered(), 0);

        // Trickled in small pieces: the buffer fills up to the bound, then is freed.
        let mut d = LineDecoder::new(max);
        got.clear();
        for chunk in big.chunks(100).chain([&b"\nok\n"[..]]) {
            d.feed(chunk, |f| got.push(f.map(<[u8]>::to_vec)));
            assert!(d.buf.capacity() <= max + 1, "capacity {}", d.buf.capacity());
        }
        assert_eq!(got, [Err(FrameError::LineTooLong { max }), ok(b"ok")]);

        // At once: nothing is buffered at all.
        let mut d = LineDecoder::new(max);
        got.clear();
        d.feed(&[&big[..], b"\nok\n"].concat(), |f| {
            got.push(f.map(<[u8]>::to_vec))
        });
        assert_eq!(got, [Err(FrameError::LineTooLong { max }), ok(b"ok")]);
        assert_eq!(d.buf.capacity(), 0);
    }

    #[test]
    fn lines_large_buffer_is_freed_small_is_kept() {
        let mut d = LineDecoder::new(100_000);
        let long = vec![b'y'; 50_000];
        d.feed(&long, |_| ());
        assert!(d.buf.capacity() >= 50_000);
        d.feed(b"\n", |f| assert_eq!(f.unwrap().len(), 50_000));
        assert_eq!(d.buf.capacity(), 0);
        d.feed(b"abc", no_frame);
        let cap = d.buf.capacity();
        assert!(cap > 0 && cap <= RETAIN_CAPACITY);
        d.feed(b"\n", |f| assert_eq!(f.unwrap(), b"abc"));
        assert_eq!(d.buf.capacity(), cap);
    }

    #[test]
    fn lines_whole_in_chunk_are_borrowed_not_copied() {
        let data = b"one\ntwo\r\nthree\n";
        let range = data.as_ptr_range();
        let mut d = LineDecoder::new(16);
        let mut n = 0;
        d.feed(data, |f| {
            let line = f.unwrap();
            assert!(range.contains(&line.as_ptr()));
            n += 1;
        });
        assert_eq!(n, 3);
        assert_eq!(d.buf.capacity(), 0, "no allocation");
    }

    #[test]
    fn frames_basic_and_empty() {
        assert_eq!(frames(8, b""), []);
        assert_eq!(frames(8, &[0, 0, 0]), []);
        assert_eq!(frames(8, &wire(&[b""])), [ok(b"")]);
        assert_eq!(
            frames(8, &wire(&[b"abc", b"", b"defgh"])),
            [ok(b"abc"), ok(b""), ok(b"defgh")]
        );
        // A trailing partial frame is held back.
        let mut w = wire(&[b"abc", b"defgh"]);
        w.truncate(w.len() - 1);
        assert_eq!(frames(8, &w), [ok(b"abc")]);
        // Newlines and zeros mean nothing here.
        assert_eq!(frames(8, &wire(&[b"\n\r\0"])), [ok(b"\n\r\0")]);
    }

    #[test]
    fn frames_at_the_limit_and_skip() {
        let too_large = |len| Err(FrameError::FrameTooLarge { len, max: 4 });
        assert_eq!(frames(4, &wire(&[b"abcd"])), [ok(b"abcd")]);
        assert_eq!(frames(4, &wire(&[b"abcde"])), [too_large(5)]);
        assert_eq!(
            frames(4, &wire(&[b"abcde", b"ok", b"0123456789", b"", b"abcd"])),
            [too_large(5), ok(b"ok"), too_large(10), ok(b""), ok(b"abcd")]
        );
        // Reported as soon as the length is known, even with the payload missing.
        assert_eq!(frames(4, &[0, 0, 0, 5]), [too_large(5)]);
        assert_eq!(
            frames(4, &[0, 0, 0, 5, 1, 2, 3, 4, 5, 0, 0]),
            [too_large(5)]
        );
        assert_eq!(
            frames(0, &[0xff, 0xff, 0xff, 0xff, 1, 2, 3]),
            [Err(FrameError::FrameTooLarge {
                len: u32::MAX as usize,
                max: 0
            })]
        );
        assert_eq!(
            frames(0, &wire(&[b"", b"", b"x", b""])),
            [
                ok(b""),
                ok(b""),
                Err(FrameError::FrameTooLarge { len: 1, max: 0 }),
                ok(b"")
            ]
        );
    }

    #[test]
    fn frames_memory_bounded() {
        let max = 1024;
        // A 10 MB frame over the limit is skipped without buffering.
        let mut w = wire(&[&vec![7; 10 * 1024 * 1024]]);
        encode_length_prefixed(b"ok", &mut w);
        let mut d = LengthDecoder::new(max);
        let mut got = Vec::new();
        for chunk in w.chunks(65536) {
            d.feed(chunk, |f| got.push(f.map(<[u8]>::to_vec)));
            assert!(d.buffered() <= 3);
            assert_eq!(d.buf.capacity(), 0);
        }
        let len = 10 * 1024 * 1024;
        assert_eq!(
            got,
            [Err(FrameError::FrameTooLarge { len, max }), ok(b"ok")]
        );

        // A frame of exactly max bytes trickled in: the buffer stays within max.
        let payload: Vec<u8> = (0..max).map(|i| i as u8).collect();
        let w = wire(&[&payload]);
        let mut d = LengthDecoder::new(max);
        got.clear();
        for chunk in w.chunks(7) {
            d.feed(chunk, |f| got.push(f.map(<[u8]>::to_vec)));
            assert!(d.buffered() <= max);
            assert!(d.buf.capacity() <= max, "capacity {}", d.buf.capacity());
        }
        assert_eq!(got, [Ok(payload)]);
    }

    #[test]
    fn frames_whole_in_chunk_are_borrowed_not_copied() {
        let data = wire(&[b"one", b"", b"three"]);
        let range = data.as_ptr_range();
        let mut d = LengthDecoder::new(16);
        let mut n = 0;
        d.feed(&data, |f| {
            let frame = f.unwrap();
            assert!(frame.is_empty() || range.contains(&frame.as_ptr()));
            n += 1;
        });
        assert_eq!(n, 3);
        assert_eq!(d.buf.capacity(), 0, "no allocation");
        // A header cut across feeds does not force a copy of the payload either.
        let mut d = LengthDecoder::new(16);
        d.feed(&data[..2], no_frame);
        let rest = &data[2..];
        let range = rest.as_ptr_range();
        d.feed(rest, |f| {
            let frame = f.unwrap();
            assert!(frame.is_empty() || range.contains(&frame.as_ptr()));
        });
        assert_eq!(d.buf.capacity(), 0, "no allocation");
    }

    #[test]
    fn callback_mutates_caller_state() {
        struct Conn {
            lines: LineDecoder,
            frames: LengthDecoder,
            seen: Vec<String>,
            errors: usize,
        }
        impl Conn {
            fn on_lines(&mut self, data: &[u8]) {
                // Disjoint field borrows: `lines` by feed, the rest by the closure.
                self.lines.feed(data, |f| match f {
                    Ok(l) => self.seen.push(String::from_utf8_lossy(l).into_owned()),
                    Err(_) => self.errors += 1,
                });
            }
            fn on_frames(&mut self, data: &[u8]) {
                self.frames.feed(data, |f| match f {
                    Ok(p) => self.seen.push(String::from_utf8_lossy(p).into_owned()),
                    Err(_) => self.errors += 1,
                });
            }
        }
        let mut c = Conn {
            lines: LineDecoder::new(5),
            frames: LengthDecoder::new(5),
            seen: Vec::new(),
            errors: 0,
        };
        c.on_lines(b"hi\nthere");
        c.on_lines(b"\nway too long\n");
        c.on_frames(&wire(&[b"abc", b"toolong"]));
        assert_eq!(c.seen, ["hi", "there", "abc"]);
        assert_eq!(c.errors, 2);

        // And a plain local Vec.
        let mut out: Vec<Vec<u8>> = Vec::new();
        let mut d = LineDecoder::new(8);
        d.feed(b"a\nb\n", |f| out.push(f.unwrap().to_vec()));
        assert_eq!(out, [b"a".to_vec(), b"b".to_vec()]);
    }

    #[test]
    fn break_stops_and_leaves_the_rest_to_the_caller() {
        let data = b"a\nQUIT\nb\nc";
        let mut d = LineDecoder::new(8);
        let mut got = Vec::new();
        let used = d.feed(data, |f| {
            let line = f.unwrap().to_vec();
            let quit = line == b"QUIT";
            got.push(line);
            if quit {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        assert_eq!(used, 7);
        assert_eq!(got, [b"a".to_vec(), b"QUIT".to_vec()]);
        assert_eq!(d.buffered(), 0, "the rest is not buffered");
        // Resuming with the rest continues as if nothing happened.
        let used = d.feed(&data[used..], |f| got.push(f.unwrap().to_vec()));
        assert_eq!(used, 3);
        assert_eq!(got.last().unwrap(), b"b");
        assert_eq!(d.buffered(), 1);

        // Break on a buffered line and on errors.
        let mut d = LineDecoder::new(2);
        d.feed(b"x", no_frame);
        assert_eq!(d.feed(b"y\nabc\nz\n", |_| ControlFlow::Break(())), 2);
        assert_eq!(d.buffered(), 0);
        assert_eq!(
            d.feed(b"abc\nz\n", |f| {
                assert!(f.is_err());
                ControlFlow::Break(())
            }),
            4
        );
        // An over-long unterminated line consumes everything it was given.
        assert_eq!(d.feed(b"abcdef", |_| ControlFlow::Break(())), 6);

        let data = wire(&[b"abcdef", b"x", b"y"]);
        let mut d = LengthDecoder::new(4);
        assert_eq!(
            d.feed(&data, |f| {
                assert!(f.is_err());
                ControlFlow::Break(())
            }),
            4
        );
        assert_eq!(
            d.feed(&data[4..], |f| {
                assert_eq!(f.unwrap(), b"x");
                ControlFlow::Break(())
            }),
            6 + 5
        );
        assert_eq!(
            d.feed(&data[15..], |f| {
                assert_eq!(f.unwrap(), b"y");
                ControlFlow::Break(())
            }),
            5
        );
    }

    #[test]
    fn encode_and_errors_display() {
        let mut out = vec![9];
        encode_length_prefixed(b"hey", &mut out);
        encode_length_prefixed(b"", &mut out);
        assert_eq!(out, [9, 0, 0, 0, 3, b'h', b'e', b'y', 0, 0, 0, 0]);
        let e: Box<dyn Error> = Box::new(FrameError::LineTooLong { max: 3 });
        assert_eq!(e.to_string(), "line longer than 3 bytes");
        let e = FrameError::FrameTooLarge { len: 10, max: 3 };
        assert_eq!(
            e.to_string(),
            "frame of 10 bytes exceeds the maximum of 3 bytes"
        );
        assert_eq!(LineDecoder::new(7).max_line(), 7);
        assert_eq!(LengthDecoder::new(9).max_frame(), 9);
    }

    /// `decode` through a simulated loop (no breaks), with fixed-size chunks; checks the
    /// tail after every chunk against `bound` and returns the events.
    fn decode_chunked<D: Decoder>(
        max: usize,
        data: &[u8],
        chunk: usize,
        bound: usize,
    ) -> Vec<Event> {
        let mut d = D::with_max(max);
        let (mut kept, mut events) = (Vec::new(), Vec::new());
        for piece in data.chunks(chunk) {
            kept.extend_from_slice(piece);
            let used = d.decode_events(&kept, &mut events, None);
            kept.drain(..used);
            assert!(kept.len() <= bound, "kept {} > {bound}", kept.len());
            assert_eq!(d.held(), 0, "decode buffers nothing");
            assert_eq!(d.capacity(), 0, "decode allocates nothing");
        }
        events
    }

    #[test]
    fn decode_leaves_only_the_incomplete_line() {
        let mut d = LineDecoder::new(4);
        let mut got = Vec::new();
        let mut push = |f: Result<&[u8], FrameError>| got.push(f.map(<[u8]>::to_vec));
        assert_eq!(d.decode(b"", &mut push), 0);
        assert_eq!(d.decode(b"ab", &mut push), 0);
        assert_eq!(d.decode(b"ab\r\ncd", &mut push), 4);
        assert_eq!(d.decode(b"cd\n\n", &mut push), 4);
        // At the limit with a "\r" that may go with the line end: still kept ...
        assert_eq!(d.decode(b"abcd\r", &mut push), 0);
        // ... one byte more and the line is refused at once, everything consumed ...
        assert_eq!(d.decode(b"abcd\rx", &mut push), 6);
        // ... and dropped through its "\n" as it comes.
        assert_eq!(d.decode(b"yyyyyyyyyyyy", &mut push), 12);
        assert_eq!(d.decode(b"yy\nok\nn", &mut push), 6);
        assert_eq!(d.decode(b"no\n", &mut push), 3);
        assert_eq!(
            got,
            [
                ok(b"ab"),
                ok(b"cd"),
                ok(b""),
                TOO_LONG_4,
                ok(b"ok"),
                ok(b"no")
            ]
        );
        assert_eq!(d.buffered(), 0);
        assert_eq!(d.buf.capacity(), 0);

        let mut d = LineDecoder::new(usize::MAX);
        let mut got = Vec::new();
        assert_eq!(d.decode(b"abc", |f| got.push(f.map(<[u8]>::to_vec))), 0);
        assert_eq!(
            d.decode(b"abcd\r\n", |f| got.push(f.map(<[u8]>::to_vec))),
            6
        );
        assert_eq!(got, [ok(b"abcd")]);
    }

    #[test]
    fn decode_leaves_only_the_incomplete_frame() {
        let data = wire(&[b"abc", b"", b"toolong", b"xy"]);
        let mut d = LengthDecoder::new(4);
        let mut got = Vec::new();
        let mut push = |f: Result<&[u8], FrameError>| got.push(f.map(<[u8]>::to_vec));
        assert_eq!(d.decode(&data[..3], &mut push), 0); // part of a prefix
        assert_eq!(d.decode(&data[..6], &mut push), 0); // a prefix and part of its payload
        assert_eq!(d.decode(&data[..7], &mut push), 7);
        // The next prefix and the over-large one's: reported, and its payload skipped.
        assert_eq!(d.decode(&data[7..17], &mut push), 10);
        assert_eq!(d.decode(&data[17..22], &mut push), 5);
        assert_eq!(d.decode(&data[22..], &mut push), 6);
        let too_large = Err(FrameError::FrameTooLarge { len: 7, max: 4 });
        assert_eq!(got, [ok(b"abc"), ok(b""), too_large, ok(b"xy")]);
        assert_eq!(d.buffered(), 0);
        assert_eq!(d.buf.capacity(), 0);
    }

    #[test]
    fn decode_keeps_little_for_10mb_lines_and_frames() {
        let max = 1024;
        let mut data = vec![b'x'; 10 * 1024 * 1024];
        data.extend_from_slice(b"\nok\n");
        for chunk in [65536, 100, 1] {
            if chunk == 1 {
                data.drain(..9 * 1024 * 1024); // a byte at a time: 1 MiB is enough
            }
            let got = decode_chunked::<LineDecoder>(max, &data, chunk, max + 1);
            assert_eq!(got, [Err(FrameError::LineTooLong { max }), ok(b"ok")]);
        }

        let len = 10 * 1024 * 1024;
        let mut w = wire(&[&vec![7; len]]);
        encode_length_prefixed(b"ok", &mut w);
        for chunk in [65536, 100] {
            let got = decode_chunked::<LengthDecoder>(max, &w, chunk, 3);
            assert_eq!(
                got,
                [Err(FrameError::FrameTooLarge { len, max }), ok(b"ok")]
            );
        }
        // A frame of exactly max bytes trickled in: its prefix and all but a byte are kept.
        let payload: Vec<u8> = (0..max).map(|i| i as u8).collect();
        let w = wire(&[&payload, b"z"]);
        let got = decode_chunked::<LengthDecoder>(max, &w, 7, max + 3);
        assert_eq!(got, [Ok(payload), ok(b"z")]);
    }

    #[test]
    fn decode_lends_frames_from_the_input() {
        let data = b"one\ntwo\r\nthree\npart";
        let range = data.as_ptr_range();
        let mut d = LineDecoder::new(16);
        let mut n = 0;
        let used = d.decode(data, |f| {
            assert!(range.contains(&f.unwrap().as_ptr()));
            n += 1;
        });
        assert_eq!((n, used), (3, data.len() - 4));

        let data = wire(&[b"one", b"", b"three"]);
        let range = data.as_ptr_range();
        let mut d = LengthDecoder::new(16);
        let mut n = 0;
        d.decode(&data, |f| {
            let frame = f.unwrap();
            assert!(frame.is_empty() || range.contains(&frame.as_ptr()));
            n += 1;
        });
        assert_eq!(n, 3);
        // Presented again after a cut, the frame is lent from the new input.
        let kept = data[..9].to_vec();
        assert_eq!(d.decode(&kept[..5], |_| -> () { unreachable!() }), 0);
        let range = kept.as_ptr_range();
        assert_eq!(
            d.decode(&kept, |f| assert!(range.contains(&f.unwrap().as_ptr()))),
            7
        );

        let data = b"\x02ab\x00\x01c";
        let range = data.as_ptr_range();
        let mut n = 0;
        let used = decode_with(data, 8, tiny_frame, |frame| {
            assert!(range.contains(&frame.as_ptr()));
            n += 1;
        });
        assert_eq!((n, used), (3, Ok(data.len())));
    }

    #[test]
    fn decode_break_stops_and_the_rest_is_presented_again() {
        let data = b"a\nQUIT\nb\nc";
        let mut d = LineDecoder::new(8);
        let mut got = Vec::new();
        let used = d.decode(data, |f| {
            let line = f.unwrap().to_vec();
            let quit = line == b"QUIT";
            got.push(line);
            if quit {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        assert_eq!(used, 7);
        assert_eq!(got, [b"a".to_vec(), b"QUIT".to_vec()]);
        // Presented again, the rest goes on as if nothing happened; "c" stays unconsumed.
        let used = d.decode(&data[used..], |f| got.push(f.unwrap().to_vec()));
        assert_eq!(used, 2);
        assert_eq!(got.last().unwrap(), b"b");

        // Break on an error, and on an unterminated over-long line (consumes all).
        let mut d = LineDecoder::new(2);
        assert_eq!(d.decode(b"xy\nabc\nz\n", |_| ControlFlow::Break(())), 3);
        let flow = |f: Result<&[u8], FrameError>| {
            assert!(f.is_err());
            ControlFlow::Break(())
        };
        assert_eq!(d.decode(b"abc\nz\n", flow), 4);
        assert_eq!(d.decode(b"abcdef", |_| ControlFlow::Break(())), 6);
        assert_eq!(d.decode(b"g\nh\n", |f| assert_eq!(f.unwrap(), b"h")), 4);

        let data = wire(&[b"abcdef", b"x", b"y"]);
        let mut d = LengthDecoder::new(4);
        let flow = |f: Result<&[u8], FrameError>| {
            assert!(f.is_err());
            ControlFlow::Break(())
        };
        assert_eq!(d.decode(&data, flow), 4);
        let flow = |f: Result<&[u8], FrameError>| {
            assert_eq!(f.unwrap(), b"x");
            ControlFlow::Break(())
        };
        assert_eq!(d.decode(&data[4..], flow), 6 + 5);
        let flow = |f: Result<&[u8], FrameError>| {
            assert_eq!(f.unwrap(), b"y");
            ControlFlow::Break(())
        };
        assert_eq!(d.decode(&data[15..], flow), 5);

        let data = b"\x01a\x01b\x01c";
        let mut got = Vec::new();
        let used = decode_with(data, 8, tiny_frame, |f| {
            got.push(f.to_vec());
            ControlFlow::Break(())
        });
        assert_eq!((used, got), (Ok(2), vec![b"\x01a".to_vec()]));
    }

    /// `decode_with`'s test format: one byte of length `n`, then `n` bytes.
    fn tiny_frame(bytes: &[u8]) -> Option<usize> {
        let n = 1 + usize::from(*bytes.first()?);
        (bytes.len() >= n).then_some(n)
    }

    /// `decode_with` through a simulated loop: the events (frames, then at most one error,
    /// which ends the stream) and the tail; checks the tail's bound after every chunk.
    fn looped_with(max: usize, data: &[u8], cuts: &[usize], stop: bool) -> (Vec<Event>, usize) {
        let (mut kept, mut events) = (Vec::new(), Vec::new());
        let mut start = 0;
        for &end in cuts.iter().chain([data.len()].iter()) {
            kept.extend_from_slice(&data[start..end]);
            start = end;
            loop {
                let before = events.len();
                let on_frame = |f: &[u8]| {
                    events.push(Ok(f.to_vec()));
                    if stop {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                };
                match decode_with(&kept, max, tiny_frame, on_frame) {
                    Ok(used) => drop(kept.drain(..used)),
                    Err(e) => {
                        events.push(Err(e));
                        return (events, 0);
                    }
                }
                if !stop || events.len() == before {
                    break;
                }
            }
            assert!(kept.len() <= max, "kept {} > {max}", kept.len());
        }
        (events, kept.len())
    }

    /// What the bytes decide for `tiny_frame` under `decode_with`, the obvious way.
    fn tiny_model(max: usize, mut data: &[u8]) -> (Vec<Event>, usize) {
        let mut events = Vec::new();
        while let Some(&n) = data.first() {
            let n = 1 + usize::from(n);
            if n > max {
                if data.len() > max {
                    events.push(Err(FrameError::FrameTooLarge { len: max + 1, max }));
                    return (events, 0);
                }
                break;
            }
            if data.len() < n {
                break;
            }
            events.push(Ok(data[..n].to_vec()));
            data = &data[n..];
        }
        (events, data.len())
    }

    #[test]
    fn decode_with_is_split_independent_and_bounded() {
        let mut data = Vec::new();
        for n in [0u8, 3, 1, 6, 0, 2] {
            data.push(n);
            data.extend((0..n).map(|i| b'a' + i));
        }
        for max in [0, 1, 3, 4, 6, 7, 8, 100] {
            let expected = tiny_model(max, &data);
            for stop in [false, true] {
                assert_eq!(looped_with(max, &data, &[], stop), expected, "max {max}");
                for cut in 0..=data.len() {
                    let got = looped_with(max, &data, &[cut], stop);
                    assert_eq!(got, expected, "max {max} cut {cut}");
                }
                let every_byte: Vec<usize> = (1..data.len()).collect();
                let got = looped_with(max, &data, &every_byte, stop);
                assert_eq!(got, expected, "max {max} byte at a time");
            }
        }
        // A whole frame over the maximum is refused even when it came in one read: the
        // same answer as when it trickles in.
        assert_eq!(
            decode_with(b"\x05abcde", 4, tiny_frame, |_| -> () { unreachable!() }),
            Err(FrameError::FrameTooLarge { len: 5, max: 4 })
        );
        assert_eq!(decode_with(b"\x05abc", 4, tiny_frame, |_| ()), Ok(0));
        // frame_len sees at most max_frame bytes.
        let mut longest = 0;
        let seen = |b: &[u8]| {
            longest = longest.max(b.len());
            None
        };
        assert!(decode_with(&[0; 1000], 10, seen, |_| ()).is_err());
        assert_eq!(longest, 10);

        let mut rng = Rng(0x853c_49e6_748f_ea9b);
        for _ in 0..3000 {
            let max = rng.below(12);
            let data: Vec<u8> = (0..rng.below(40)).map(|_| rng.below(8) as u8).collect();
            let cuts = random_cuts(&mut rng, data.len());
            let stop = rng.below(2) == 0;
            let got = looped_with(max, &data, &cuts, stop);
            assert_eq!(
                got,
                tiny_model(max, &data),
                "max {max} cuts {cuts:?} data {data:?}"
            );
        }
    }

    #[test]
    #[should_panic(expected = "frame_len said 0")]
    fn decode_with_refuses_an_empty_frame() {
        let _ = decode_with(b"x", 8, |_| Some(0), |_| ());
    }

    #[test]
    #[should_panic(expected = "frame_len said 3 of 2 bytes")]
    fn decode_with_refuses_a_frame_longer_than_its_input() {
        let _ = decode_with(b"xy", 8, |_| Some(3), |_| ());
    }

    /// xorshift64: enough randomness for tests, no dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Random cut points, sorted.
    fn random_cuts(rng: &mut Rng, len: usize) -> Vec<usize> {
        let mut cuts: Vec<usize> = (0..rng.below(6)).map(|_| rng.below(len + 1)).collect();
        cuts.sort_unstable();
        cuts
    }

    fn check_random<D: Decoder>(rng: &mut Rng, max: usize, data: &[u8]) {
        let expected = one_shot::<D>(max, data);
        assert_eq!(
            expected.0,
            D::model(max, data),
            "model; max {max} data {data:?}"
        );
        let cuts = random_cuts(rng, data.len());
        assert_eq!(
            chunked::<D>(max, data, &cuts),
            expected,
            "cuts {cuts:?} max {max} data {data:?}"
        );
        let every = 1 + rng.below(3);
        assert_eq!(
            stopping::<D>(max, data, every),
            expected,
            "stop every {every}"
        );
        // `decode` on the loop's kept input, cut elsewhere, sometimes stopping: the same
        // events as `feed` (`looped` compares them after every chunk).
        let cuts = random_cuts(rng, data.len());
        let stop = [None, Some(1), Some(2), Some(3)][rng.below(4)];
        let (events, _) = looped::<D>(max, data, &cuts, stop);
        assert_eq!(events, expected.0, "decode, cuts {cuts:?} stop {stop:?}");
    }

    #[test]
    fn random_lines() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..3000 {
            let max = rng.below(10);
            let len = rng.below(64);
            let data: Vec<u8> = (0..len).map(|_| b"ab\r\n\n\r"[rng.below(6)]).collect();
            check_random::<LineDecoder>(&mut rng, max, &data);
        }
    }

    #[test]
    fn random_frames() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for _ in 0..3000 {
            let max = rng.below(16);
            let mut data = Vec::new();
            for _ in 0..rng.below(8) {
                let payload: Vec<u8> = (0..rng.below(24)).map(|_| rng.next() as u8).collect();
                encode_length_prefixed(&payload, &mut data);
            }
            if rng.below(4) == 0 {
                data.truncate(rng.below(data.len() + 1));
            }
            if rng.below(8) == 0 {
                data.extend((0..rng.below(12)).map(|_| rng.next() as u8));
            }
            check_random::<LengthDecoder>(&mut rng, max, &data);
        }
    }
}
