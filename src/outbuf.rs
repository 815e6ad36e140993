//! `OutBuf`: the ordered output queue behind a connection's buffered sendall.
//!
//! Pure: it holds bytes and hands them to a write function it is given; it never touches a
//! socket or a clock, so it is tested (and property-tested) against scripted fake writers.
//! A queue that empties gives its memory back, so an idle connection holds no output buffer.
//!
//! The queue is a list of chunks: bytes copied in by `push` (appended to the last owned
//! chunk while it is small), shared, reference-counted [`Bytes`] queued by `push_shared`
//! without a copy (one broadcast to many congested connections is held once), and file
//! regions queued by `push_file`, which leave through the sink's `send_file` (sendfile(2):
//! the bytes never enter user space) in order with the rest.

use bytes::Bytes;
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, IoSlice};
use std::sync::Arc;

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
    /// `len` bytes of a file from `offset` on, advanced as they are sent.
    File {
        file: Arc<File>,
        offset: u64,
        len: usize,
    },
}

impl Chunk {
    /// The bytes of an in-memory chunk; empty for a file region.
    fn rest(&self) -> &[u8] {
        match self {
            Chunk::Owned(v, at) => &v[*at..],
            Chunk::Shared(b) => b,
            Chunk::File { .. } => &[],
        }
    }

    fn len(&self) -> usize {
        match self {
            Chunk::File { len, .. } => *len,
            c => c.rest().len(),
        }
    }
}

/// Where a flush writes: a socket, or a fake in tests.
pub trait Sink {
    /// A vectored write (sendmsg).
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
    /// Up to `len` bytes of `file` from `offset` (sendfile). `Ok(0)` means the file ended.
    fn send_file(&mut self, file: &File, offset: u64, len: usize) -> io::Result<usize>;
}

/// A closure that writes slices, as a sink without files.
struct Slices<F>(F);

impl<F: FnMut(&[IoSlice<'_>]) -> io::Result<usize>> Sink for Slices<F> {
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        (self.0)(bufs)
    }
    fn send_file(&mut self, _: &File, _: u64, _: usize) -> io::Result<usize> {
        Err(io::ErrorKind::Unsupported.into())
    }
}

/// Bytes accepted by `send` that the kernel has not taken yet, oldest first.
#[derive(Default)]
pub struct OutBuf {
    chunks: VecDeque<Chunk>,
    /// All queued bytes, file regions included.
    len: usize,
    /// Queued bytes held in memory (file regions excluded): what `max_output` bounds.
    in_memory: usize,
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
    /// The per-call file budget ran out with the writer still taking bytes: flush again
    /// later (no new writability edge will come for it).
    Yielded,
}

impl OutBuf {
    /// An empty queue; allocates nothing.
    pub fn new() -> OutBuf {
        OutBuf::default()
    }

    /// Queued bytes, file regions included.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Queued bytes held in memory (file regions are not).
    pub fn in_memory(&self) -> usize {
        self.in_memory
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
                Chunk::Shared(_) | Chunk::File { .. } => 0,
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
        self.in_memory += data.len();
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
        self.in_memory += data.len();
        self.chunks.push_back(Chunk::Shared(data));
    }

    /// Appends `len` bytes of `file` from `offset`, to be sent with the sink's `send_file`.
    pub fn push_file(&mut self, file: Arc<File>, offset: u64, len: usize) {
        if len == 0 {
            return;
        }
        self.len += len;
        self.chunks.push_back(Chunk::File { file, offset, len });
    }

    /// Drops everything queued and frees the memory.
    pub fn clear(&mut self) {
        self.chunks = VecDeque::new();
        self.len = 0;
        self.in_memory = 0;
    }

    /// Takes `n` written bytes off the front.
    fn consume(&mut self, mut n: usize) {
        self.len -= n;
        while n > 0 {
            let front = self.chunks.front_mut().expect("n <= len");
            let rest = front.len();
            let take = n.min(rest);
            if !matches!(front, Chunk::File { .. }) {
                self.in_memory -= take;
            }
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
                Chunk::File { offset, len, .. } => {
                    *offset += n as u64;
                    *len -= n;
                }
            }
            n = 0;
        }
    }

    /// Writes queued bytes in order through `write` (a vectored write of up to 16 chunks)
    /// until the queue is empty or `write` says `WouldBlock`. `Interrupted` is retried.
    /// Returns how many bytes left the queue, and whether it emptied; any other error is
    /// returned as is, with the unwritten bytes still queued. (A queue with file regions
    /// needs [`flush_to`](Self::flush_to).)
    pub fn flush_with(
        &mut self,
        write: impl FnMut(&[IoSlice<'_>]) -> io::Result<usize>,
    ) -> (usize, io::Result<Flush>) {
        self.flush_to(&mut Slices(write), usize::MAX)
    }

    /// Writes queued bytes in order into `sink`: memory chunks with vectored writes, file
    /// regions with `send_file`, at most `file_budget` file bytes this call (a per-turn cap,
    /// like nginx's `sendfile_max_chunk`, so one download cannot hold the loop). Stops at
    /// `WouldBlock` (`Blocked`), when empty (`Done`), or when the budget is spent with the
    /// sink still taking bytes (`Yielded`). A file that ends before its region does is an
    /// `UnexpectedEof` error.
    pub fn flush_to(
        &mut self,
        sink: &mut impl Sink,
        mut file_budget: usize,
    ) -> (usize, io::Result<Flush>) {
        let mut written = 0;
        while let Some(front) = self.chunks.front() {
            let result = match front {
                Chunk::File { file, offset, len } => {
                    if file_budget == 0 {
                        return (written, Ok(Flush::Yielded));
                    }
                    match sink.send_file(file, *offset, (*len).min(file_budget)) {
                        Ok(0) => Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!(
                                "file ended {len} bytes before its queued region did (truncated while sending?)"
                            ),
                        )),
                        Ok(n) => {
                            file_budget -= n.min(file_budget);
                            Ok(n)
                        }
                        Err(e) => Err(e),
                    }
                }
                _ => {
                    let mut slices = [IoSlice::new(&[]); MAX_SLICES];
                    let mut count = 0;
                    let memory = self
                        .chunks
                        .iter()
                        .take_while(|c| !matches!(c, Chunk::File { .. }));
                    for (slot, chunk) in slices.iter_mut().zip(memory) {
                        *slot = IoSlice::new(chunk.rest());
                        count += 1;
                    }
                    match sink.write_vectored(&slices[..count]) {
                        Ok(0) => Err(io::ErrorKind::WriteZero.into()),
                        r => r,
                    }
                }
            };
            match result {
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
        assert!(
            out.capacity() < 1024,
            "shared bytes are not this queue's own"
        );
        for _ in 0..100 {
            out.push(&[1; 4096]);
        }
        assert_eq!(out.len(), (1 << 20) + 409_600);
    }

    /// A fake socket that also "sends files" by reading them.
    struct FileSink {
        received: Vec<u8>,
        max: usize,
    }

    impl Sink for FileSink {
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.max - n);
                self.received.extend_from_slice(&b[..take]);
                n += take;
            }
            Ok(n)
        }
        fn send_file(&mut self, file: &File, offset: u64, len: usize) -> io::Result<usize> {
            use std::os::unix::fs::FileExt;
            let mut buf = vec![0; len.min(self.max)];
            let n = file.read_at(&mut buf, offset)?;
            self.received.extend_from_slice(&buf[..n]);
            Ok(n)
        }
    }

    fn temp_file(bytes: &[u8]) -> Arc<File> {
        use std::io::{Seek, Write};
        let path = std::env::temp_dir().join(format!(
            "evloop-outbuf-{}-{}",
            std::process::id(),
            bytes.len()
        ));
        let mut f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        f.write_all(bytes).unwrap();
        f.rewind().unwrap();
        Arc::new(f)
    }

    #[test]
    fn file_regions_go_out_in_order_with_memory_chunks_within_the_budget() {
        let file = temp_file(b"0123456789abcdefghij");
        let mut out = OutBuf::new();
        out.push(b"<");
        out.push_file(file.clone(), 5, 10);
        out.push(b">");
        out.push_file(file, 0, 3);
        assert_eq!((out.len(), out.in_memory()), (15, 2));
        let mut sink = FileSink {
            received: Vec::new(),
            max: 4,
        };
        // A budget of 6 file bytes a call: the first call stops part-way through the file.
        let (n, r) = out.flush_to(&mut sink, 6);
        assert_eq!(r.unwrap(), Flush::Yielded);
        assert_eq!(n, 7);
        let (_, r) = out.flush_to(&mut sink, 6);
        assert_eq!(r.unwrap(), Flush::Yielded);
        let (_, r) = out.flush_to(&mut sink, 6);
        assert_eq!(r.unwrap(), Flush::Done);
        assert_eq!(sink.received, b"<56789abcde>012");
        assert!(out.is_empty());
    }

    #[test]
    fn a_file_shorter_than_its_region_is_an_error() {
        let file = temp_file(b"short");
        let mut out = OutBuf::new();
        out.push_file(file, 0, 100);
        let mut sink = FileSink {
            received: Vec::new(),
            max: 1 << 20,
        };
        let (n, r) = out.flush_to(&mut sink, usize::MAX);
        assert_eq!(n, 5);
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(out.len(), 95);
    }
}
