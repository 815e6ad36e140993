//! The request parser: RESP2 multibulk commands and inline commands, incremental and bounded.
//!
//! A connection's unconsumed input is handed to [`Parser::parse`] again and again as bytes
//! arrive. Each call either finds one whole command (its argv is filled in and the number of
//! bytes it took is returned, so the caller drops them and calls again with the rest), or
//! reports that the command is not complete yet (`Ok(None)`: keep the bytes, append more,
//! call again), or fails with the [`ProtocolError`] Redis would answer with, after which the
//! connection is to be closed (Redis replies with the error text and closes too).
//!
//! The result does not depend on how the bytes were cut into reads. Work is bounded: the
//! parser remembers how far it got inside an unfinished command (the headers it has read and
//! where the pending bulk starts), so presenting the same growing tail costs only the new
//! bytes, a bulk is checked for completeness by its length alone, and argv elements are
//! copied out once, when the whole command is present. Lines (inline commands, `*` and `$`
//! headers) are searched for their terminator only within [`Limits::max_inline_len`].
//!
//! The rules follow Redis 7's `processInlineBuffer` / `processMultibulkBuffer`
//! (networking.c) and `sdssplitargs` (sds.c), with one deliberate difference: Redis rejects
//! an over-long line only while its terminator has not arrived, so the same line may pass or
//! fail depending on how it was split; here a line longer than `max_inline_len` is always an
//! error. A multibulk count above [`Limits::max_args`] is `invalid multibulk length` (Redis 7
//! allows up to `INT_MAX`; Redis 2.6 to 6.2 capped it at 1024*1024, our default).

use std::fmt;

/// Bounds on what one request may make the server buffer or allocate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest bulk string accepted (Redis `proto-max-bulk-len`, 512 MiB by default).
    pub max_bulk_len: usize,
    /// Largest multibulk count accepted (1024*1024 by default).
    pub max_args: usize,
    /// Longest inline command line or `*`/`$` header line (Redis `PROTO_INLINE_MAX_SIZE`,
    /// 64 KiB).
    pub max_inline_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bulk_len: 512 * 1024 * 1024,
            max_args: 1024 * 1024,
            max_inline_len: 64 * 1024,
        }
    }
}

/// A request that breaks the protocol; the connection is answered with
/// [`ProtocolError::write_reply`] and closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolError {
    /// An inline command line longer than `max_inline_len`.
    TooBigInlineRequest,
    /// An inline command with an unterminated quote, or a closing quote not followed by a
    /// space.
    UnbalancedQuotes,
    /// A `*` header line longer than `max_inline_len`.
    TooBigMbulkCount,
    /// A `*` count that is not an integer or is above `max_args`.
    InvalidMultibulkLength,
    /// A `$` header line longer than `max_inline_len`.
    TooBigBulkCount,
    /// A multibulk element that does not start with `$`; holds the byte found instead.
    ExpectedDollar(u8),
    /// A `$` length that is not an integer, is negative or is above `max_bulk_len`.
    InvalidBulkLength,
}

impl ProtocolError {
    /// The message after `ERR `, as Redis words it (the `%c` of `expected '$', got '%c'`
    /// is the raw byte; like Redis, CR and LF become spaces and a NUL ends the text).
    fn message(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"Protocol error: ");
        let text: &[u8] = match self {
            ProtocolError::TooBigInlineRequest => b"too big inline request",
            ProtocolError::UnbalancedQuotes => b"unbalanced quotes in request",
            ProtocolError::TooBigMbulkCount => b"too big mbulk count string",
            ProtocolError::InvalidMultibulkLength => b"invalid multibulk length",
            ProtocolError::TooBigBulkCount => b"too big bulk count string",
            ProtocolError::InvalidBulkLength => b"invalid bulk length",
            ProtocolError::ExpectedDollar(got) => {
                out.extend_from_slice(b"expected '$', got '");
                match got {
                    0 => return,
                    b'\r' | b'\n' => out.push(b' '),
                    _ => out.push(*got),
                }
                b"'"
            }
        };
        out.extend_from_slice(text);
    }

    /// Appends the error reply Redis sends, e.g. `-ERR Protocol error: invalid bulk length\r\n`.
    pub fn write_reply(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"-ERR ");
        self.message(out);
        out.extend_from_slice(b"\r\n");
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = Vec::new();
        self.message(&mut text);
        f.write_str(&String::from_utf8_lossy(&text))
    }
}

impl std::error::Error for ProtocolError {}

/// Where the parser stands inside the command at the start of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Nothing read yet: the first byte decides between multibulk and inline.
    Start,
    /// An inline command: waiting for its `\n`.
    Inline,
    /// A multibulk command: waiting for the `*<count>\r\n` line.
    MultibulkHeader,
    /// Waiting for the `$<len>\r\n` line of the next of `remaining` elements.
    BulkHeader { remaining: usize },
    /// Waiting for `len` bytes plus CRLF of the next of `remaining` elements.
    BulkData { remaining: usize, len: usize },
}

/// Argv buffers with a capacity above this are not reused for the next command, so that one
/// huge argument does not stay allocated for the life of the connection.
const REUSE_MAX: usize = 4096;

/// The incremental parser of one connection's requests.
///
/// Between calls that return `Ok(None)` the caller must present the same bytes again with
/// more appended; after `Ok(Some(n))` the next call starts at the byte after those `n`.
#[derive(Debug, Clone)]
pub struct Parser {
    limits: Limits,
    mode: Mode,
    /// Bytes of the current command already parsed (headers and complete elements).
    pos: usize,
    /// Where the search for the pending line's terminator goes on.
    scan: usize,
    /// Byte ranges of the complete elements of the current multibulk command.
    spans: Vec<(usize, usize)>,
}

impl Default for Parser {
    fn default() -> Self {
        Parser::new(Limits::default())
    }
}

impl Parser {
    /// A parser with the given bounds, at the start of a command.
    pub fn new(limits: Limits) -> Parser {
        Parser {
            limits,
            mode: Mode::Start,
            pos: 0,
            scan: 0,
            spans: Vec::new(),
        }
    }

    /// Forgets any partly parsed command (e.g. after the caller discarded its input).
    pub fn reset(&mut self) {
        self.mode = Mode::Start;
        self.pos = 0;
        self.scan = 0;
        if self.spans.capacity() > 1024 {
            self.spans = Vec::new();
        } else {
            self.spans.clear();
        }
    }

    /// While a bulk is pending: the input length at which it will be complete, so the caller
    /// can reserve room for a big argument at once instead of growing its buffer step by step.
    pub fn needed(&self) -> Option<usize> {
        match self.mode {
            Mode::BulkData { len, .. } => Some(self.pos.saturating_add(len).saturating_add(2)),
            _ => None,
        }
    }

    /// The most input the unfinished command at the start of the input can take before the
    /// parser moves on or fails: while a bulk is pending, the length at which it is complete
    /// ([`needed`](Self::needed)); while a header line is pending, where the longest line
    /// [`Limits::max_inline_len`] allows would end. A caller that bounds a connection's kept
    /// input by it grants a big argument room only once its header has promised it.
    pub fn input_bound(&self) -> usize {
        if let Some(needed) = self.needed() {
            return needed;
        }
        let line = self.limits.max_inline_len.saturating_add(2);
        match self.mode {
            Mode::BulkHeader { .. } => self.pos.saturating_add(line),
            _ => line,
        }
    }

    /// Parses one command from the start of `input`.
    ///
    /// `Ok(Some(n))`: the command took `n` bytes and its arguments are in `argv` (cleared
    /// first; element buffers are reused). `argv` is empty for an empty command (a blank
    /// inline line, `*0` or `*-1`), which the caller skips without a reply, as Redis does.
    /// `Ok(None)`: more bytes are needed. `Err`: the request breaks the protocol; `argv` is
    /// then unspecified and the parser is back at the start.
    pub fn parse(
        &mut self,
        input: &[u8],
        argv: &mut Vec<Vec<u8>>,
    ) -> Result<Option<usize>, ProtocolError> {
        if self.mode == Mode::Start {
            if let Some(n) = self.parse_whole(input, argv) {
                return Ok(Some(n));
            }
        }
        self.parse_general(input, argv)
    }

    /// The fast path for the common case, a whole and well-formed multibulk command: one
    /// pass, arguments copied straight into `argv`, no resumable state. `None` for anything
    /// else (an unfinished, inline, empty or malformed command, a header with a sign or
    /// leading zeros, over a limit); [`parse_general`](Self::parse_general) then gives the
    /// answer it always gives, so both paths agree byte for byte (tested).
    fn parse_whole(&self, input: &[u8], argv: &mut Vec<Vec<u8>>) -> Option<usize> {
        if input.first() != Some(&b'*') {
            return None;
        }
        let (count, cr) = self.header(input, 0)?;
        if count == 0 || count > self.limits.max_args {
            return None;
        }
        let mut at = cr + 2;
        let mut out = ArgvWriter::new(argv);
        for _ in 0..count {
            if input.get(at) != Some(&b'$') {
                return None;
            }
            let (len, cr) = self.header(input, at)?;
            if len > self.limits.max_bulk_len {
                return None;
            }
            let start = cr + 2;
            let end = start + len;
            if end + 2 > input.len() {
                return None;
            }
            out.next().extend_from_slice(&input[start..end]);
            at = end + 2;
        }
        out.finish();
        Some(at)
    }

    /// The number in the header line starting at `line` (`*` or `$`, then digits), and where
    /// its `\r` is, if the line is plain (1 to 18 digits, no leading zero, within
    /// `max_inline_len`) and the byte after the `\r` has arrived.
    fn header(&self, input: &[u8], line: usize) -> Option<(usize, usize)> {
        let mut cr = line + 1;
        let mut value = 0usize;
        loop {
            match *input.get(cr)? {
                d @ b'0'..=b'9' => value = value * 10 + usize::from(d - b'0'),
                b'\r' => break,
                _ => return None,
            }
            cr += 1;
            if cr - line > 19 {
                return None;
            }
        }
        let digits = cr - line - 1;
        if digits == 0 || (digits > 1 && input[line + 1] == b'0') {
            return None;
        }
        if cr + 1 >= input.len() || cr - line > self.limits.max_inline_len {
            return None;
        }
        Some((value, cr))
    }

    /// The resumable parser: any input, any cut.
    fn parse_general(
        &mut self,
        input: &[u8],
        argv: &mut Vec<Vec<u8>>,
    ) -> Result<Option<usize>, ProtocolError> {
        if input.len() < self.pos.max(self.scan) {
            // Not the same growing tail as before: start over rather than index past it.
            self.reset();
        }
        let result = self.step(input, argv);
        if !matches!(result, Ok(None)) {
            self.reset();
        }
        result
    }

    fn step(
        &mut self,
        input: &[u8],
        argv: &mut Vec<Vec<u8>>,
    ) -> Result<Option<usize>, ProtocolError> {
        loop {
            match self.mode {
                Mode::Start => {
                    let Some(&first) = input.first() else {
                        return Ok(None);
                    };
                    self.mode = if first == b'*' {
                        Mode::MultibulkHeader
                    } else {
                        Mode::Inline
                    };
                    self.pos = 0;
                    self.scan = 0;
                }
                Mode::Inline => {
                    let max = self.limits.max_inline_len;
                    let window = &input[self.scan..input.len().min(max.saturating_add(1))];
                    let Some(offset) = window.iter().position(|&b| b == b'\n') else {
                        if input.len() > max {
                            return Err(ProtocolError::TooBigInlineRequest);
                        }
                        self.scan = input.len();
                        return Ok(None);
                    };
                    let newline = self.scan + offset;
                    let mut line = &input[..newline];
                    if let [rest @ .., b'\r'] = line {
                        line = rest;
                    }
                    split_inline(line, argv)?;
                    return Ok(Some(newline + 1));
                }
                Mode::MultibulkHeader => {
                    let Some(cr) = self.line_end(input, ProtocolError::TooBigMbulkCount)? else {
                        return Ok(None);
                    };
                    let count = match parse_i64(&input[1..cr]) {
                        Some(n) if n <= self.limits.max_args as i64 => n,
                        _ => return Err(ProtocolError::InvalidMultibulkLength),
                    };
                    self.pos = cr + 2;
                    if count <= 0 {
                        argv.clear();
                        return Ok(Some(self.pos));
                    }
                    let count = count as usize;
                    self.spans.clear();
                    self.spans.reserve(count.min(1024));
                    self.mode = Mode::BulkHeader { remaining: count };
                    self.scan = self.pos;
                }
                Mode::BulkHeader { remaining } => {
                    let Some(cr) = self.line_end(input, ProtocolError::TooBigBulkCount)? else {
                        return Ok(None);
                    };
                    let head = input[self.pos];
                    if head != b'$' {
                        return Err(ProtocolError::ExpectedDollar(head));
                    }
                    let len = match parse_i64(&input[self.pos + 1..cr]) {
                        Some(n) if n >= 0 && n as u64 <= self.limits.max_bulk_len as u64 => {
                            n as usize
                        }
                        _ => return Err(ProtocolError::InvalidBulkLength),
                    };
                    self.pos = cr + 2;
                    self.mode = Mode::BulkData { remaining, len };
                }
                Mode::BulkData { remaining, len } => {
                    let end = self.pos.saturating_add(len);
                    if input.len() < end.saturating_add(2) {
                        return Ok(None);
                    }
                    // Like Redis, the two bytes after the data are taken as the CRLF unseen.
                    self.spans.push((self.pos, end));
                    self.pos = end + 2;
                    if remaining == 1 {
                        let mut out = ArgvWriter::new(argv);
                        for &(start, end) in &self.spans {
                            out.next().extend_from_slice(&input[start..end]);
                        }
                        out.finish();
                        return Ok(Some(self.pos));
                    }
                    self.mode = Mode::BulkHeader {
                        remaining: remaining - 1,
                    };
                    self.scan = self.pos;
                }
            }
        }
    }

    /// Finds the `\r` ending the header line that starts at `self.pos`, once the byte after
    /// it (taken as the `\n`, unchecked, like Redis) has arrived too.
    fn line_end(
        &mut self,
        input: &[u8],
        too_big: ProtocolError,
    ) -> Result<Option<usize>, ProtocolError> {
        let max = self.limits.max_inline_len;
        let limit = input
            .len()
            .min(self.pos.saturating_add(max).saturating_add(1));
        let from = self.scan.min(limit);
        match input[from..limit].iter().position(|&b| b == b'\r') {
            None => {
                if input.len() - self.pos > max {
                    return Err(too_big);
                }
                self.scan = input.len();
                Ok(None)
            }
            Some(offset) => {
                let cr = from + offset;
                if cr + 1 >= input.len() {
                    self.scan = cr;
                    return Ok(None);
                }
                Ok(Some(cr))
            }
        }
    }
}

/// Parses one command from the start of `input` with a fresh [`Parser`]: the stateless
/// form, for callers that do not keep a parser per connection (each call then rescans the
/// unfinished command's headers). The server keeps a parser per connection; the tests use
/// this.
#[cfg(test)]
pub fn parse(
    input: &[u8],
    limits: &Limits,
    argv: &mut Vec<Vec<u8>>,
) -> Result<Option<usize>, ProtocolError> {
    Parser::new(*limits).parse(input, argv)
}

/// Parses a decimal integer exactly as Redis's `string2ll`: an optional `-`, no `+`, no
/// leading zeros, no spaces, at most 20 bytes, within `i64`.
pub fn parse_i64(s: &[u8]) -> Option<i64> {
    if s.is_empty() || s.len() >= 21 {
        return None;
    }
    if s == b"0" {
        return Some(0);
    }
    let (negative, digits) = match s {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, s),
    };
    match digits.first() {
        Some(b'1'..=b'9') => {}
        _ => return None,
    }
    let mut v: u64 = 0;
    for &b in digits {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    if negative {
        if v > i64::MAX as u64 + 1 {
            return None;
        }
        Some((v as i64).wrapping_neg())
    } else {
        i64::try_from(v).ok()
    }
}

/// Fills `argv` element by element, reusing the buffers it already holds.
struct ArgvWriter<'a> {
    argv: &'a mut Vec<Vec<u8>>,
    n: usize,
}

impl<'a> ArgvWriter<'a> {
    fn new(argv: &'a mut Vec<Vec<u8>>) -> Self {
        ArgvWriter { argv, n: 0 }
    }

    /// An empty buffer for the next argument.
    fn next(&mut self) -> &mut Vec<u8> {
        if self.n == self.argv.len() {
            self.argv.push(Vec::new());
        }
        let buf = &mut self.argv[self.n];
        self.n += 1;
        if buf.capacity() > REUSE_MAX {
            *buf = Vec::new();
        } else {
            buf.clear();
        }
        buf
    }

    /// Drops the elements left over from a longer previous command.
    fn finish(self) {
        self.argv.truncate(self.n);
    }
}

/// C's `isspace` in the C locale.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Splits an inline command line into arguments with Redis's `sdssplitargs` rules: blanks
/// separate; `"..."` takes the escapes `\xHH`, `\n`, `\r`, `\t`, `\b`, `\a` and `\<any>`;
/// `'...'` takes only `\'`; a closing quote must be followed by a blank or the end; quotes
/// may open in the middle of a word (`a"b c"` is one argument `ab c`). The line is a C string
/// there, so a NUL byte ends it.
fn split_inline(line: &[u8], argv: &mut Vec<Vec<u8>>) -> Result<(), ProtocolError> {
    let line = match line.iter().position(|&b| b == 0) {
        Some(nul) => &line[..nul],
        None => line,
    };
    // The byte at `i`, or 0 (C's terminator) past the end.
    let at = |i: usize| line.get(i).copied().unwrap_or(0);
    let mut out = ArgvWriter::new(argv);
    let mut i = 0;
    loop {
        while i < line.len() && is_space(line[i]) {
            i += 1;
        }
        if i >= line.len() {
            out.finish();
            return Ok(());
        }
        let current = out.next();
        let (mut in_double, mut in_single, mut done) = (false, false, false);
        while !done {
            let c = at(i);
            if in_double {
                if c == b'\\' && at(i + 1) == b'x' {
                    if let (Some(hi), Some(lo)) = (hex_value(at(i + 2)), hex_value(at(i + 3))) {
                        current.push(hi * 16 + lo);
                        i += 3;
                    } else {
                        // `\x` without two hex digits is an escaped `x`.
                        i += 1;
                        current.push(b'x');
                    }
                } else if c == b'\\' && at(i + 1) != 0 {
                    i += 1;
                    current.push(match at(i) {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 0x08,
                        b'a' => 0x07,
                        other => other,
                    });
                } else if c == b'"' {
                    if at(i + 1) != 0 && !is_space(at(i + 1)) {
                        return Err(ProtocolError::UnbalancedQuotes);
                    }
                    done = true;
                } else if c == 0 {
                    return Err(ProtocolError::UnbalancedQuotes);
                } else {
                    current.push(c);
                }
            } else if in_single {
                if c == b'\\' && at(i + 1) == b'\'' {
                    i += 1;
                    current.push(b'\'');
                } else if c == b'\'' {
                    if at(i + 1) != 0 && !is_space(at(i + 1)) {
                        return Err(ProtocolError::UnbalancedQuotes);
                    }
                    done = true;
                } else if c == 0 {
                    return Err(ProtocolError::UnbalancedQuotes);
                } else {
                    current.push(c);
                }
            } else {
                match c {
                    b' ' | b'\n' | b'\r' | b'\t' | 0 => done = true,
                    b'"' => in_double = true,
                    b'\'' => in_single = true,
                    _ => current.push(c),
                }
            }
            if at(i) != 0 {
                i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses everything in `input` with one parser, feeding it in pieces cut at `cuts`
    /// the way a connection would (append, parse until `None`, append more).
    fn run(
        input: &[u8],
        cuts: &[usize],
        limits: Limits,
    ) -> Result<Vec<Vec<Vec<u8>>>, ProtocolError> {
        let mut parser = Parser::new(limits);
        let mut buf = Vec::new();
        let mut argv = Vec::new();
        let mut commands = Vec::new();
        let mut fed = 0;
        let mut ends: Vec<usize> = cuts.to_vec();
        ends.push(input.len());
        for end in ends {
            buf.extend_from_slice(&input[fed..end]);
            fed = end;
            while let Some(n) = parser.parse(&buf, &mut argv)? {
                buf.drain(..n);
                if !argv.is_empty() {
                    commands.push(argv.clone());
                }
            }
        }
        Ok(commands)
    }

    fn args(list: &[&str]) -> Vec<Vec<u8>> {
        list.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    fn whole(input: &[u8]) -> Result<Vec<Vec<Vec<u8>>>, ProtocolError> {
        run(input, &[], Limits::default())
    }

    fn reply(e: ProtocolError) -> String {
        let mut out = Vec::new();
        e.write_reply(&mut out);
        String::from_utf8(out).unwrap()
    }

    /// Every single cut and every pair of cuts gives the same result as the whole input.
    fn assert_split_independent(input: &[u8], limits: Limits) {
        let expected = run(input, &[], limits);
        for a in 0..=input.len() {
            assert_eq!(run(input, &[a], limits), expected, "cut at {a}");
        }
        if input.len() <= 80 {
            for a in 0..=input.len() {
                for b in a..=input.len() {
                    assert_eq!(run(input, &[a, b], limits), expected, "cuts at {a}, {b}");
                }
            }
        }
        // One byte at a time.
        let all: Vec<usize> = (1..input.len()).collect();
        assert_eq!(run(input, &all, limits), expected, "byte by byte");
    }

    #[test]
    fn multibulk_command() {
        let input = b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n";
        assert_eq!(whole(input).unwrap(), vec![args(&["SET", "key", "value"])]);
        let mut argv = Vec::new();
        assert_eq!(
            parse(input, &Limits::default(), &mut argv),
            Ok(Some(input.len()))
        );
        assert_eq!(argv, args(&["SET", "key", "value"]));
    }

    #[test]
    fn every_command_at_every_cut() {
        let commands: &[&[u8]] = &[
            b"*1\r\n$4\r\nPING\r\n",
            b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n",
            b"*2\r\n$3\r\nGET\r\n$0\r\n\r\n",
            b"*2\r\n$4\r\nECHO\r\n$4\r\na\r\nb\r\n",
            b"PING\r\n",
            b"PING\n",
            b"set k \"a b\\x41\\n\" 'it\\'s'\r\n",
            b"\r\n\n   \r\nGET x\r\n",
            b"*0\r\n*-1\r\n*1\r\n$1\r\nx\r\n",
        ];
        for input in commands {
            assert!(whole(input).is_ok(), "{:?}", String::from_utf8_lossy(input));
            assert_split_independent(input, Limits::default());
        }
    }

    #[test]
    fn pipeline_of_many_commands() {
        let mut input = Vec::new();
        let mut expected = Vec::new();
        for i in 0..200 {
            let key = format!("key:{i}");
            let value = "v".repeat(i % 17);
            if i % 3 == 0 {
                input.extend_from_slice(format!("SET {key} x{value}\r\n").as_bytes());
                expected.push(args(&["SET", &key, &format!("x{value}")]));
            } else {
                input.extend_from_slice(
                    format!(
                        "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n{value}\r\n",
                        key.len(),
                        value.len()
                    )
                    .as_bytes(),
                );
                expected.push(args(&["SET", &key, &value]));
            }
        }
        assert_eq!(whole(&input).unwrap(), expected);
        for cut in (0..input.len()).step_by(7) {
            assert_eq!(run(&input, &[cut], Limits::default()).unwrap(), expected);
        }
        let all: Vec<usize> = (1..input.len()).collect();
        assert_eq!(run(&input, &all, Limits::default()).unwrap(), expected);
    }

    #[test]
    fn incomplete_commands_wait() {
        let mut argv = Vec::new();
        let full = b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n";
        for end in 0..full.len() {
            assert_eq!(
                parse(&full[..end], &Limits::default(), &mut argv),
                Ok(None),
                "{end}"
            );
        }
        assert_eq!(parse(b"PING", &Limits::default(), &mut argv), Ok(None));
        assert_eq!(parse(b"PING\r", &Limits::default(), &mut argv), Ok(None));
        assert_eq!(parse(b"", &Limits::default(), &mut argv), Ok(None));
    }

    #[test]
    fn empty_commands_are_consumed_without_arguments() {
        let mut argv = vec![b"old".to_vec()];
        assert_eq!(parse(b"*0\r\n", &Limits::default(), &mut argv), Ok(Some(4)));
        assert!(argv.is_empty());
        assert_eq!(
            parse(b"*-1\r\nX", &Limits::default(), &mut argv),
            Ok(Some(5))
        );
        assert_eq!(
            parse(b"*-7\r\n", &Limits::default(), &mut argv),
            Ok(Some(5))
        );
        assert_eq!(parse(b"\r\n", &Limits::default(), &mut argv), Ok(Some(2)));
        assert_eq!(parse(b"\n", &Limits::default(), &mut argv), Ok(Some(1)));
        assert_eq!(
            parse(b"  \t \r\n", &Limits::default(), &mut argv),
            Ok(Some(6))
        );
        assert!(argv.is_empty());
    }

    #[test]
    fn protocol_error_texts() {
        let cases: &[(&[u8], &str)] = &[
            (
                b"*x\r\n",
                "-ERR Protocol error: invalid multibulk length\r\n",
            ),
            (
                b"*01\r\n",
                "-ERR Protocol error: invalid multibulk length\r\n",
            ),
            (
                b"*\r\n",
                "-ERR Protocol error: invalid multibulk length\r\n",
            ),
            (
                b"*1\r\n$x\r\n",
                "-ERR Protocol error: invalid bulk length\r\n",
            ),
            (
                b"*1\r\n$-1\r\n",
                "-ERR Protocol error: invalid bulk length\r\n",
            ),
            (
                b"*1\r\n$+1\r\n",
                "-ERR Protocol error: invalid bulk length\r\n",
            ),
            (
                b"*1\r\nx3\r\n",
                "-ERR Protocol error: expected '$', got 'x'\r\n",
            ),
            (
                b"*1\r\n\r\n",
                "-ERR Protocol error: expected '$', got ' '\r\n",
            ),
            (
                b"*1\r\n\0\r\n",
                "-ERR Protocol error: expected '$', got '\r\n",
            ),
            (
                b"SET \"a\r\n",
                "-ERR Protocol error: unbalanced quotes in request\r\n",
            ),
            (
                b"SET 'a\r\n",
                "-ERR Protocol error: unbalanced quotes in request\r\n",
            ),
            (
                b"SET \"a\"b\r\n",
                "-ERR Protocol error: unbalanced quotes in request\r\n",
            ),
            (
                b"SET 'a'b\r\n",
                "-ERR Protocol error: unbalanced quotes in request\r\n",
            ),
        ];
        for (input, text) in cases {
            let err = whole(input).unwrap_err();
            assert_eq!(reply(err), *text, "{:?}", String::from_utf8_lossy(input));
            assert_split_independent(input, Limits::default());
        }
        assert_eq!(
            ProtocolError::InvalidBulkLength.to_string(),
            "Protocol error: invalid bulk length"
        );
    }

    #[test]
    fn too_big_lines() {
        let limits = Limits {
            max_inline_len: 16,
            ..Limits::default()
        };
        let cases: &[(&[u8], ProtocolError)] = &[
            (
                b"GET aaaaaaaaaaaaaaaaaaaa",
                ProtocolError::TooBigInlineRequest,
            ),
            (
                b"GET aaaaaaaaaaaaaaaaaaaa\r\n",
                ProtocolError::TooBigInlineRequest,
            ),
            (b"*11111111111111111111", ProtocolError::TooBigMbulkCount),
            (
                b"*1\r\n$1111111111111111111111",
                ProtocolError::TooBigBulkCount,
            ),
            (
                b"*1\r\nxxxxxxxxxxxxxxxxxxxxxxxx",
                ProtocolError::TooBigBulkCount,
            ),
        ];
        for (input, err) in cases {
            assert_eq!(run(input, &[], limits), Err(*err));
            assert_split_independent(input, limits);
        }
        assert_eq!(
            reply(ProtocolError::TooBigInlineRequest),
            "-ERR Protocol error: too big inline request\r\n"
        );
        assert_eq!(
            reply(ProtocolError::TooBigMbulkCount),
            "-ERR Protocol error: too big mbulk count string\r\n"
        );
        // Exactly at the limit is fine.
        let line = b"GET aaaaaaaaaaa\r\n"; // 16 bytes before '\n'
        assert_eq!(
            run(line, &[], limits).unwrap(),
            vec![args(&["GET", "aaaaaaaaaaa"])]
        );
    }

    #[test]
    fn bulk_over_the_limit_fails_at_its_header() {
        let limits = Limits {
            max_bulk_len: 10,
            ..Limits::default()
        };
        let mut argv = Vec::new();
        // Only the header has arrived: the error comes before any data is buffered.
        assert_eq!(
            parse(b"*2\r\n$3\r\nSET\r\n$11\r\n", &limits, &mut argv),
            Err(ProtocolError::InvalidBulkLength)
        );
        assert_eq!(
            parse(b"*1\r\n$10\r\n0123456789\r\n", &limits, &mut argv),
            Ok(Some(21))
        );
        // The default limit is 512 MiB.
        assert_eq!(
            parse(b"*1\r\n$536870913\r\n", &Limits::default(), &mut argv),
            Err(ProtocolError::InvalidBulkLength)
        );
        assert_eq!(
            parse(b"*1\r\n$536870912\r\n", &Limits::default(), &mut argv),
            Ok(None)
        );
    }

    #[test]
    fn multibulk_count_over_the_limit() {
        let limits = Limits {
            max_args: 3,
            ..Limits::default()
        };
        let mut argv = Vec::new();
        assert_eq!(
            parse(b"*4\r\n", &limits, &mut argv),
            Err(ProtocolError::InvalidMultibulkLength)
        );
        assert_eq!(parse(b"*3\r\n", &limits, &mut argv), Ok(None));
        assert_eq!(
            parse(b"*1048577\r\n", &Limits::default(), &mut argv),
            Err(ProtocolError::InvalidMultibulkLength)
        );
        assert_eq!(
            parse(b"*99999999999999999999\r\n", &Limits::default(), &mut argv),
            Err(ProtocolError::InvalidMultibulkLength)
        );
    }

    #[test]
    fn big_bulk_is_checked_by_length_and_copied_once() {
        let mut parser = Parser::default();
        let mut argv = Vec::new();
        let mut buf = b"*2\r\n$3\r\nSET\r\n$1000000\r\n".to_vec();
        assert_eq!(parser.parse(&buf, &mut argv), Ok(None));
        assert_eq!(parser.needed(), Some(buf.len() + 1_000_002));
        for _ in 0..999 {
            buf.extend_from_slice(&[b'z'; 1000]);
            assert_eq!(parser.parse(&buf, &mut argv), Ok(None));
        }
        buf.extend_from_slice(&[b'z'; 1000]);
        buf.extend_from_slice(b"\r\n");
        assert_eq!(parser.parse(&buf, &mut argv), Ok(Some(buf.len())));
        assert_eq!(argv[0], b"SET");
        assert_eq!(argv[1].len(), 1_000_000);
        assert_eq!(argv[1].capacity(), 1_000_000);
        assert_eq!(parser.needed(), None);
    }

    #[test]
    fn the_fast_path_agrees_with_the_general_parser() {
        // Whole commands, well-formed or not, with tight and default limits: the fast path
        // either declines or gives exactly the general parser's result.
        const ALPHABET: &[u8] = b"*$\r\n0123456789-+ aX";
        let tight = Limits {
            max_bulk_len: 5,
            max_args: 3,
            max_inline_len: 4,
        };
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut checked = 0;
        for round in 0..20_000 {
            // Half the inputs are real commands, mutated in one byte or cut short.
            let mut input = if round % 2 == 0 {
                let argc = 1 + (next() % 4) as usize;
                let mut cmd = format!("*{argc}\r\n").into_bytes();
                for _ in 0..argc {
                    let len = (next() % 8) as usize;
                    cmd.extend_from_slice(format!("${len}\r\n").as_bytes());
                    cmd.extend((0..len).map(|_| b'a' + (next() % 26) as u8));
                    cmd.extend_from_slice(b"\r\n");
                }
                if next() % 3 == 0 {
                    let at = (next() as usize) % cmd.len();
                    cmd[at] = ALPHABET[(next() % ALPHABET.len() as u64) as usize];
                }
                cmd
            } else {
                let len = (next() % 24) as usize;
                (0..len)
                    .map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize])
                    .collect()
            };
            if next() % 4 == 0 {
                let keep = (next() as usize) % (input.len() + 1);
                input.truncate(keep);
            }
            for limits in [tight, Limits::default()] {
                let fast_parser = Parser::new(limits);
                let mut fast_argv = vec![b"stale".to_vec(); 5];
                let Some(n) = fast_parser.parse_whole(&input, &mut fast_argv) else {
                    continue;
                };
                let mut argv = Vec::new();
                let general = Parser::new(limits).parse_general(&input, &mut argv);
                assert_eq!(
                    (general, &argv),
                    (Ok(Some(n)), &fast_argv),
                    "{:?}",
                    String::from_utf8_lossy(&input)
                );
                checked += 1;
            }
        }
        assert!(checked > 5000, "{checked}");
    }

    #[test]
    fn input_bound_follows_the_pending_command() {
        let mut parser = Parser::default();
        let mut argv = Vec::new();
        let line = Limits::default().max_inline_len + 2;
        // Nothing yet, or a header still arriving: one line's worth.
        assert_eq!(parser.input_bound(), line);
        assert_eq!(parser.parse(b"*2\r\n$3", &mut argv), Ok(None));
        assert_eq!(parser.input_bound(), 4 + line);
        // The first bulk's header arrived: its 3 bytes and CRLF.
        assert_eq!(parser.parse(b"*2\r\n$3\r\nSE", &mut argv), Ok(None));
        assert_eq!(parser.input_bound(), 13);
        // A bulk header promised 1,000,000 bytes: room for them and the CRLF, no more.
        let buf = b"*2\r\n$3\r\nSET\r\n$1000000\r\n";
        assert_eq!(parser.parse(buf, &mut argv), Ok(None));
        assert_eq!(parser.input_bound(), buf.len() + 1_000_002);
        // Between elements: the elements so far plus one header line.
        let mut parser = Parser::default();
        assert_eq!(parser.parse(b"*3\r\n$1\r\na\r\n", &mut argv), Ok(None));
        assert_eq!(parser.input_bound(), 11 + line);
        // An inline command.
        let mut parser = Parser::default();
        assert_eq!(parser.parse(b"GET ke", &mut argv), Ok(None));
        assert_eq!(parser.input_bound(), line);
    }

    #[test]
    fn random_inputs_are_split_independent() {
        // Bytes drawn from the protocol's own alphabet, with tight limits so that every
        // error path is reached; any cut must give the whole input's result, and nothing
        // may panic.
        const ALPHABET: &[u8] = b"**$$\r\n\r\n0123-ax \"'\\";
        let limits = Limits {
            max_bulk_len: 5,
            max_args: 3,
            max_inline_len: 8,
        };
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..3000 {
            let len = (next() % 24) as usize;
            let input: Vec<u8> = (0..len)
                .map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize])
                .collect();
            let expected = run(&input, &[], limits);
            for _ in 0..4 {
                let mut cuts: Vec<usize> = (0..3).map(|_| (next() as usize) % (len + 1)).collect();
                cuts.sort_unstable();
                assert_eq!(
                    run(&input, &cuts, limits),
                    expected,
                    "{:?} cut at {cuts:?}",
                    String::from_utf8_lossy(&input)
                );
            }
        }
    }

    #[test]
    fn many_arguments_in_small_reads_parse_in_linear_time() {
        // 200,000 arguments (about 2 MB) arriving 512 bytes at a time: a parser that rescanned
        // the command from its start on every read would do ~4,000 passes over megabytes.
        let n = 200_000;
        let mut input = format!("*{}\r\n$4\r\nMSET\r\n", n + 1).into_bytes();
        for i in 0..n {
            let arg = format!("k{i}");
            input.extend_from_slice(format!("${}\r\n{arg}\r\n", arg.len()).as_bytes());
        }
        let mut parser = Parser::default();
        let mut argv = Vec::new();
        let mut end = 0;
        let mut reads = 0;
        let consumed = loop {
            end = (end + 512).min(input.len());
            reads += 1;
            if let Some(consumed) = parser.parse(&input[..end], &mut argv).unwrap() {
                break consumed;
            }
        };
        assert_eq!(consumed, input.len());
        assert!(reads > 4000);
        assert_eq!(argv.len(), n + 1);
        assert_eq!(argv[n], format!("k{}", n - 1).into_bytes());
    }

    #[test]
    fn inline_quoting() {
        let cases: &[(&[u8], &[&[u8]])] = &[
            (b"set a b", &[b"set", b"a", b"b"]),
            (b"  set   a\tb  ", &[b"set", b"a", b"b"]),
            (b"\"a b\" 'c d'", &[b"a b", b"c d"]),
            (
                b"\"\\x41\\x4a\\xzz\\n\\r\\t\\b\\a\\\\\\\"\"",
                &[b"AJxzz\n\r\t\x08\x07\\\""],
            ),
            (b"'it\\'s' '\\n'", &[b"it's", b"\\n"]),
            (b"a\"b c\" d", &[b"ab c", b"d"]),
            (b"\"\"", &[b""]),
            (b"''  x", &[b"", b"x"]),
            (b"a\x0bb", &[b"a\x0bb"]),
            (b"a\rb", &[b"a", b"b"]),
            (b"get a\0b", &[b"get", b"a"]),
            (b"\xff\xfe x", &[b"\xff\xfe", b"x"]),
        ];
        for (line, expected) in cases {
            let mut argv = Vec::new();
            split_inline(line, &mut argv).unwrap();
            let expected: Vec<Vec<u8>> = expected.iter().map(|a| a.to_vec()).collect();
            assert_eq!(argv, expected, "{:?}", String::from_utf8_lossy(line));
        }
        for bad in [
            &b"\"abc"[..],
            b"'abc",
            b"\"a\"b",
            b"'a'b",
            b"\"a\\\"",
            b"\"a\0\"",
        ] {
            let mut argv = Vec::new();
            assert_eq!(
                split_inline(bad, &mut argv),
                Err(ProtocolError::UnbalancedQuotes),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn inline_crlf_and_lf_terminators() {
        assert_eq!(
            whole(b"GET a\r\nGET b\nGET c\r\r\n").unwrap(),
            vec![
                args(&["GET", "a"]),
                args(&["GET", "b"]),
                args(&["GET", "c"])
            ]
        );
    }

    #[test]
    fn multibulk_takes_any_byte_in_elements() {
        let input = b"*2\r\n$4\r\n\r\n\0\xff\r\n$0\r\n\r\n";
        assert_eq!(
            whole(input).unwrap(),
            vec![vec![b"\r\n\0\xff".to_vec(), Vec::new()]]
        );
        assert_split_independent(input, Limits::default());
    }

    #[test]
    fn argv_buffers_are_reused_and_trimmed() {
        let mut parser = Parser::default();
        let mut argv = Vec::new();
        parser
            .parse(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n", &mut argv)
            .unwrap();
        assert_eq!(argv.len(), 3);
        argv[0].reserve(100);
        let ptr = argv[0].as_ptr();
        parser.parse(b"GET k\r\n", &mut argv).unwrap();
        assert_eq!(argv, args(&["GET", "k"]));
        assert_eq!(argv[0].as_ptr(), ptr);
        argv[1] = Vec::with_capacity(REUSE_MAX + 1);
        parser.parse(b"GET k\r\n", &mut argv).unwrap();
        assert!(argv[1].capacity() < REUSE_MAX);
    }

    #[test]
    fn a_shorter_input_restarts_the_command() {
        let mut parser = Parser::default();
        let mut argv = Vec::new();
        assert_eq!(parser.parse(b"*2\r\n$3\r\nGET\r\n$1", &mut argv), Ok(None));
        assert_eq!(parser.parse(b"PING\r\n", &mut argv), Ok(Some(6)));
        assert_eq!(argv, args(&["PING"]));
    }

    #[test]
    fn parse_i64_is_string2ll() {
        for (s, v) in [
            ("0", Some(0)),
            ("1", Some(1)),
            ("-1", Some(-1)),
            ("9223372036854775807", Some(i64::MAX)),
            ("-9223372036854775808", Some(i64::MIN)),
            ("9223372036854775808", None),
            ("-9223372036854775809", None),
            ("", None),
            ("-", None),
            ("-0", None),
            ("01", None),
            ("+1", None),
            (" 1", None),
            ("1 ", None),
            ("1a", None),
            ("000000000000000000001", None),
        ] {
            assert_eq!(parse_i64(s.as_bytes()), v, "{s:?}");
        }
    }
}
