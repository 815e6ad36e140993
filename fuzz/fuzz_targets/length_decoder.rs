//! `LengthDecoder`: no panic, bounded `buffered()`, and the same frames and
//! errors whether the input is fed at once or in random pieces (with the
//! callback sometimes stopping decoding), both equal to a naive reference model.
//!
//! Input layout: byte 0 picks the maximum frame size (0..=31), byte 1 the
//! largest piece (1..=16), byte 2 the piece seed and how often to stop; the
//! rest is the stream.
#![no_main]

use evloop::framing::{FrameError, LengthDecoder};
use libfuzzer_sys::fuzz_target;
use std::ops::ControlFlow;

type Event = Result<Vec<u8>, FrameError>;

/// What the stream decides, computed the obvious way.
fn model(max: usize, mut data: &[u8]) -> Vec<Event> {
    let mut events = Vec::new();
    while data.len() >= 4 {
        let len = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize;
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

fuzz_target!(|input: &[u8]| {
    let [b0, b1, b2, data @ ..] = input else {
        return;
    };
    let max = usize::from(b0 % 32);
    let bound = max.max(3);
    let largest_piece = usize::from(b1 % 16) + 1;
    let stop_every = usize::from(b2 >> 5); // 0: never stop
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64 ^ (u64::from(*b1) << 8 | u64::from(*b2));

    // At once.
    let mut whole = LengthDecoder::new(max);
    let mut expected = Vec::new();
    let used = whole.feed(data, |f| expected.push(f.map(<[u8]>::to_vec)));
    assert_eq!(used, data.len());
    assert!(whole.buffered() <= bound);
    assert_eq!(expected, model(max, data));

    // In random pieces, stopping every `stop_every` events and resuming.
    let mut split = LengthDecoder::new(max);
    let mut got: Vec<Event> = Vec::new();
    let mut since_stop = 0;
    let mut rest = data;
    while !rest.is_empty() {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let n = (rng % (largest_piece as u64 + 1)) as usize;
        let mut piece = &rest[..n.min(rest.len())];
        rest = &rest[piece.len()..];
        loop {
            let used = split.feed(piece, |f| {
                got.push(f.map(<[u8]>::to_vec));
                since_stop += 1;
                if stop_every != 0 && since_stop == stop_every {
                    since_stop = 0;
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            });
            assert!(used <= piece.len());
            assert!(split.buffered() <= bound, "buffered {}", split.buffered());
            piece = &piece[used..];
            if piece.is_empty() {
                break;
            }
        }
    }
    assert_eq!(got, expected);
    assert_eq!(split.buffered(), whole.buffered());
});
