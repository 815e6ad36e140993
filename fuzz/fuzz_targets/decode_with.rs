//! `framing::decode_with` on a loop's kept input, for a format of one length byte `n`
//! then `n` bytes: no panic, the unconsumed tail within `max` bytes, and the same frames
//! and error whatever the reads and however often the callback stops, equal to a naive
//! reference model.
//!
//! Input layout: byte 0 picks the maximum frame size (0..=63), byte 1 the largest read
//! (1..=16), byte 2 the read seed and whether to stop after every frame; the rest is the
//! stream (length bytes taken modulo 64, so that frames fit often).
#![no_main]

use evloop::framing::{FrameError, decode_with};
use libfuzzer_sys::fuzz_target;
use std::ops::ControlFlow;

type Event = Result<Vec<u8>, FrameError>;

fn frame_len(bytes: &[u8]) -> Option<usize> {
    let n = 1 + usize::from(*bytes.first()? % 64);
    (bytes.len() >= n).then_some(n)
}

/// What the stream decides, computed the obvious way.
fn model(max: usize, mut data: &[u8]) -> Vec<Event> {
    let mut events = Vec::new();
    while let Some(&b) = data.first() {
        let n = 1 + usize::from(b % 64);
        if n > max {
            if data.len() > max {
                events.push(Err(FrameError::FrameTooLarge { len: max + 1, max }));
            }
            break;
        }
        if data.len() < n {
            break;
        }
        events.push(Ok(data[..n].to_vec()));
        data = &data[n..];
    }
    events
}

fuzz_target!(|input: &[u8]| {
    let [b0, b1, b2, data @ ..] = input else {
        return;
    };
    let max = usize::from(b0 % 64);
    let largest_read = usize::from(b1 % 16) + 1;
    let stop = b2 & 1 == 1;
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64 ^ (u64::from(*b1) << 8 | u64::from(*b2));

    let mut got: Vec<Event> = Vec::new();
    let mut kept: Vec<u8> = Vec::new();
    let mut rest = data;
    'reads: while !rest.is_empty() {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let n = (rng % (largest_read as u64 + 1)) as usize;
        let read = &rest[..n.min(rest.len())];
        rest = &rest[read.len()..];
        kept.extend_from_slice(read);
        loop {
            let before = got.len();
            let range = kept.as_ptr_range();
            let on_frame = |f: &[u8]| {
                assert!(range.contains(&f.as_ptr()), "not lent");
                got.push(Ok(f.to_vec()));
                if stop {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            };
            match decode_with(&kept, max, frame_len, on_frame) {
                Ok(used) => drop(kept.drain(..used)),
                Err(e) => {
                    got.push(Err(e));
                    break 'reads; // the stream ends at its error
                }
            }
            if !stop || got.len() == before {
                break;
            }
        }
        assert!(kept.len() <= max, "kept {}", kept.len());
    }
    assert_eq!(got, model(max, data));
});
