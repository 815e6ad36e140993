//! `OutBuf`: the ordered output queue behind a connection's buffered sendall.
//!
//! Pure: it holds bytes and hands them to a write function it is given; it never touches a
//! socket or a clock, so it is tested (and property-tested) against scripted fake writers.
//! A queue that empties gives its memory back, so an idle connection holds no output buffer.

use std::collections::VecDeque;
use std::io::{self, IoSlice};

/// Bytes accepted by `send` that the kernel has not taken yet, oldest first.
#[derive(Default, Debug)]
pub struct OutBuf {
    bytes: VecDeque<u8>,
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
        self.bytes.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Bytes of memory held (capacity), for memory accounting.
    pub fn capacity(&self) -> usize {
        self.bytes.capacity()
    }

    /// Appends bytes after everything already queued.
    pub fn push(&mut self, data: &[u8]) {
        self.bytes.extend(data);
    }

    /// Drops everything queued and frees the memory.
    pub fn clear(&mut self) {
        self.bytes = VecDeque::new();
    }

    /// Writes queued bytes in order through `write` (a vectored write of at most two slices:
    /// the ring buffer's two halves) until the queue is empty or `write` says `WouldBlock`.
    /// `Interrupted` is retried. Returns how many bytes left the queue, and whether it emptied;
    /// any other error is returned as is, with the unwritten bytes still queued.
    pub fn flush_with(
        &mut self,
        mut write: impl FnMut(&[IoSlice<'_>]) -> io::Result<usize>,
    ) -> (usize, io::Result<Flush>) {
        let mut written = 0;
        while !self.bytes.is_empty() {
            let (a, b) = self.bytes.as_slices();
            let slices = [IoSlice::new(a), IoSlice::new(b)];
            let count = if b.is_empty() { 1 } else { 2 };
            match write(&slices[..count]) {
                Ok(0) => return (written, Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    let n = n.min(self.bytes.len());
                    self.bytes.drain(..n);
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
    fn wrapped_ring_goes_out_as_two_slices() {
        let mut out = OutBuf::new();
        out.push(&[1; 6]);
        let mut first = true;
        let (n, r) = out.flush_with(|s| {
            assert_eq!(s.len(), 1);
            if std::mem::take(&mut first) {
                Ok(4)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            }
        });
        assert_eq!((n, r.unwrap()), (4, Flush::Blocked));
        out.push(&[2; 20]);
        let mut seen = Vec::new();
        let (n, r) = out.flush_with(|s| {
            let total: usize = s.iter().map(|s| s.len()).sum();
            for s in s {
                seen.extend_from_slice(s);
            }
            Ok(total)
        });
        assert_eq!((n, r.unwrap()), (22, Flush::Done));
        assert_eq!(&seen[..2], &[1, 1]);
        assert!(seen[2..].iter().all(|&b| b == 2));
    }
}
