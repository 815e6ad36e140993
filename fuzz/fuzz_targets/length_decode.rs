//! `LengthDecoder::decode` on a loop's kept input: no panic, the unconsumed tail within
//! `max + 3` bytes, and the same frames and errors as `feed`, whatever the reads and
//! however often the callback stops decoding.
//!
//! Input layout: byte 0 picks the maximum frame size (0..=31), byte 1 the largest read
//! (1..=16), byte 2 the read seed and how often to stop; the rest is the stream.
#![no_main]

use evloop::framing::{FrameError, LengthDecoder};
use libfuzzer_sys::fuzz_target;
use std::ops::ControlFlow;

type Event = Result<Vec<u8>, FrameError>;

fuzz_target!(|input: &[u8]| {
    let [b0, b1, b2, data @ ..] = input else {
        return;
    };
    let max = usize::from(b0 % 32);
    let largest_read = usize::from(b1 % 16) + 1;
    let stop_every = usize::from(b2 >> 5); // 0: never stop
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64 ^ (u64::from(*b1) << 8 | u64::from(*b2));

    // The reference: `feed`, read by read, never stopping.
    let mut fed = LengthDecoder::new(max);
    let mut expected: Vec<Event> = Vec::new();
    // The loop: each read joined to the kept tail and presented to `decode`; after a
    // stop, the rest is presented again at once (as after `resume_read`).
    let mut decoder = LengthDecoder::new(max);
    let mut got: Vec<Event> = Vec::new();
    let mut kept: Vec<u8> = Vec::new();
    let mut since_stop = 0;
    let mut rest = data;
    while !rest.is_empty() {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let n = (rng % (largest_read as u64 + 1)) as usize;
        let read = &rest[..n.min(rest.len())];
        rest = &rest[read.len()..];
        fed.feed(read, |f| expected.push(f.map(<[u8]>::to_vec)));
        kept.extend_from_slice(read);
        loop {
            let mut stopped = false;
            let range = kept.as_ptr_range();
            let used = decoder.decode(&kept, |f| {
                if let Ok(frame) = f {
                    assert!(
                        frame.is_empty() || range.contains(&frame.as_ptr()),
                        "not lent"
                    );
                }
                got.push(f.map(<[u8]>::to_vec));
                since_stop += 1;
                if stop_every != 0 && since_stop == stop_every {
                    since_stop = 0;
                    stopped = true;
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            });
            assert!(used <= kept.len());
            kept.drain(..used);
            if !stopped {
                break;
            }
        }
        assert_eq!(decoder.buffered(), 0);
        assert!(kept.len() <= max + 3, "kept {}", kept.len());
        // `feed` holds the same bytes, but for a length prefix it has taken apart.
        assert!(kept.len() >= fed.buffered() && kept.len() <= fed.buffered() + 4);
        assert_eq!(got, expected);
    }
});
