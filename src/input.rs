//! `Input`: the bytes a handler left unconsumed, kept by the loop and presented again joined
//! with the next bytes read.
//!
//! Pure: no socket, no clock. Empty, it holds no memory; a buffer grown past 8 KiB is freed
//! once consumed, so an idle connection stays small.

/// A buffer that grew past this is freed when it empties instead of kept for the next frame.
const RETAIN: usize = 8 * 1024;

/// Unconsumed input of one connection, oldest byte first.
#[derive(Debug, Default)]
pub(crate) struct Input {
    buf: Vec<u8>,
}

impl Input {
    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(crate) fn append(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.buf
    }

    /// Drops the first `n` bytes (all of them if `n` is larger).
    pub(crate) fn consume(&mut self, n: usize) {
        if n >= self.buf.len() {
            if self.buf.capacity() > RETAIN {
                self.buf = Vec::new();
            } else {
                self.buf.clear();
            }
        } else {
            self.buf.drain(..n);
        }
    }

    /// Moves the buffer out (the handler reads it while the loop is borrowed) ...
    pub(crate) fn take(&mut self) -> Input {
        std::mem::take(self)
    }

    /// ... and back.
    pub(crate) fn restore(&mut self, input: Input) {
        *self = input;
    }

    pub(crate) fn clear(&mut self) {
        self.buf = Vec::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_tail_and_frees_large_buffers() {
        let mut input = Input::default();
        input.append(b"hello world");
        input.consume(6);
        assert_eq!(input.as_slice(), b"world");
        input.append(&[0; 20_000]);
        input.consume(usize::MAX);
        assert!(input.is_empty());
        assert_eq!(input.buf.capacity(), 0);
        input.append(b"x");
        input.consume(1);
        assert!(
            input.buf.capacity() > 0,
            "small buffers are kept for the next frame"
        );
    }
}
