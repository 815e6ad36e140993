//! `OutBuf`: the ordered output queue behind a connection's buffered sendall.
//!
//! Pure: it holds bytes and hands them to a write function it is given; it never touches a
//! socket or a clock, so it is tested (and property-tested) against scripted fake writers.
//! A queue that empties gives its memory back, so an idle connection holds no output buffer.
//!
//! The queue is a list of chunks: bytes copied in by `push` (appended to the last owned
//! chunk while it is small) and shared, reference-counted [`Bytes`] queued by `push_shared`
//! without a copy, so one broadcast to many congested connections is held once.

use bytes::Bytes;
use std::collections::VecDeque;
use std::io::{self, IoSlice};

/// An owned chunk stops growing at this size; the next `push` starts a new one, so written
/// bytes at the front are freed chunk by chunk instead of being moved.
const CHUNK: usize = 64 * 1024;

/// Slices handed to one vectored write (Linux's IOV_MAX is 1024; a few suffice).
const MAX_SLICES: usize = 16;

enum Chunk {
    /// Copied bytes; `.1` of them are already written.
    Owned(Vec<u8>, usize),
    /// Shared bytes, advanced in place as they are written.
    Shared(Bytes),
}

impl Chunk {
    fn rest(&self) -> &[u8] {
        match self {
            Chunk::Owned(v, at) => &v[*at..],
            Chunk::Shared(b) => b,
        }
    }
}

/// Bytes accepted by `send` that the kernel has not taken yet, oldest first.
#[derive(Default)]
pub struct OutBuf {
    chunks: VecDeque<Chunk>,
    len: usize,
}

impl std::fmt::Debug for OutBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutBuf")
            .field("len", &self.len)
            .field("chunks", &self.chunks.len())
            .finish()
    }
}

/// What a [`OutBuf::flush_with`] call achieved.
#[derive(Debug, PartialEq, Eq)]
pub enum Flush {
    /// Everything queued was written.
    Done,
    /// The writer would block with bytes still queued.
    Blocked,
}

impl OutBuf {
    /// An empty queue; allocates nothing.
    pub fn new() -> OutBuf {
        OutBuf::default()
    }

    /// Queued bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of memory this queue holds of its own (owned chunks' capacity; shared chunks
    /// are counted by whoever else holds them too), for memory accounting.
    pub fn capacity(&self) -> usize {
        let owned: usize = self
            .chunks
            .iter()
            .map(|c| match c {
                Chunk::Owned(v, _) => v.capacity(),
                Chunk::Shared(_) => 0,
            })
            .sum();
        owned + self.chunks.capacity() * std::mem::size_of::<Chunk>()
    }

    /// Appends a copy of `data` after everything already queued.
    pub fn push(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        self.len += data.len();
        if let Some(Chunk::Owned(v, _)) = self.chunks.back_mut() {
            if v.len() < CHUNK {
                v.extend_from_slice(data);
                return;
            }
        }
        self.chunks.push_back(Chunk::Owned(data.to_vec(), 0));
    }

    /// Appends shared bytes after everything already queued, without copying them.
    pub fn push_shared(&mut self, data: Bytes) {
        if data.is_empty() {
            return;
        }
        self.len += data.len();
        self.chunks.push_back(Chunk::Shared(data));
    }

    /// Drops everything queued and frees the memory.
    pub fn clear(&mut self) {
        self.chunks = VecDeque::new();
        self.len = 0;
    }

    /// Takes `n` written bytes off the front.
    fn consume(&mut self, mut n: usize) {
        self.len -= n;
        while n > 0 {
            let front = self.chunks.front_mut().expect("n <= len");
            let rest = front.rest().len();
            if n >= rest {
                n -= rest;
                self.chunks.pop_front();
                continue;
            }
            match front {
                Chunk::Owned(_, at) => *at += n,
                Chunk::Shared(b) => {
                    let _ = b.split_to(n);
                }
            }
            n = 0;
        }
    }

    /// Writes queued bytes in order through `write` (a vectored write of up to 16 chunks)
    /// until the queue is empty or `write` says `WouldBlock`. `Interrupted` is retried.
    /// Returns how many bytes left the queue, and whether it emptied; any other error is
    /// returned as is, with the unwritten bytes still queued.
    pub fn flush_with(
        &mut self,
        mut write: impl FnMut(&[IoSlice<'_>]) -> io::Result<usize>,
    ) -> (usize, io::Result<Flush>) {
        let mut written = 0;
        while !self.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let mut count = 0;
            for (slot, chunk) in slices.iter_mut().zip(&self.chunks) {
                *slot = IoSlice::new(chunk.rest());
                count += 1;
            }
            match write(&slices[..count]) {
                Ok(0) => return (written, Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    let n = n.min(self.len);
                    self.consume(n);
                    written += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return (written, Ok(Flush::Blocked));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (written, Err(e)),
            }
        }
        self.clear();
        (written, Ok(Flush::Done))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `chunk` bytes a call and blocks every `block_every` calls.
    struct FakeSocket {
        received: Vec<u8>,
        chunk: usize,
        calls: usize,
        block_every: usize,
    }

    impl FakeSocket {
        fn write(&mut self, slices: &[IoSlice<'_>]) -> io::Result<usize> {
            self.calls += 1;
            if self.block_every > 0 && self.calls % self.block_every == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            if self.calls % 7 == 0 {
                return Err(io::ErrorKind::Interrupted.into());
            }
            let mut left = self.chunk;
            let mut n = 0;
            for s in slices {
                let take = s.len().min(left);
                self.received.extend_from_slice(&s[..take]);
                left -= take;
                n += take;
            }
            Ok(n)
        }
    }

    #[test]
    fn flush_delivers_in_order_through_short_writes_and_blocks() {
        let mut out = OutBuf::new();
        let mut sock = FakeSocket {
            received: Vec::new(),
            chunk: 3,
            calls: 0,
            block_every: 5,
        };
        let mut expected = Vec::new();
        for round in 0..50u32 {
            let data: Vec<u8> = (0..(round * 13 % 41)).map(|i| (i ^ round) as u8).collect();
            out.push(&data);
            expected.extend_from_slice(&data);
            let _ = out.flush_with(|s| sock.write(s));
        }
        while out.flush_with(|s| sock.write(s)).1.unwrap() == Flush::Blocked {}
        assert_eq!(sock.received, expected);
        assert!(out.is_empty());
        assert_eq!(out.capacity(), 0, "an emptied queue frees its memory");
    }

    #[test]
    fn error_keeps_unwritten_bytes() {
        let mut out = OutBuf::new();
        out.push(b"hello");
        let (n, r) = out.flush_with(|_| Err(io::ErrorKind::ConnectionReset.into()));
        assert_eq!(n, 0);
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::ConnectionReset);
        assert_eq!(out.len(), 5);
    }

    #[test]
    fn shared_chunks_keep_order_with_copied_ones_and_are_not_copied() {
        let shared = Bytes::from(vec![7u8; 100]);
        let mut out = OutBuf::new();
        out.push(b"ab");
        out.push_shared(shared.clone());
        out.push(b"cd");
        assert_eq!(out.len(), 104);
        // Partial writes cut through the shared chunk.
        let mut seen = Vec::new();
        let mut calls = 0;
        loop {
            let (_, r) = out.flush_with(|s| {
                calls += 1;
                if calls % 2 == 0 {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                let first = &s[0][..s[0].len().min(30)];
                seen.extend_from_slice(first);
                Ok(first.len())
            });
            if r.unwrap() == Flush::Done {
                break;
            }
        }
        let mut expected = b"ab".to_vec();
        expected.extend_from_slice(&[7; 100]);
        expected.extend_from_slice(b"cd");
        assert_eq!(seen, expected);
        assert!(out.is_empty());
        assert_eq!(out.capacity(), 0);
    }

    #[test]
    fn a_shared_chunk_is_counted_once_and_owned_chunks_are_bounded() {
        let mut out = OutBuf::new();
        out.push_shared(Bytes::from(vec![0u8; 1 << 20]));
        assert!(out.capacity() < 1024, "shared bytes are not this queue's own");
        for _ in 0..100 {
            out.push(&[1; 4096]);
        }
        assert_eq!(out.len(), (1 << 20) + 409_600);
    }
}
