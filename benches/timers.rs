//! Cost of the timer store: ns per insert+cancel and per insert+pop, with no other timers and
//! with 1,000,000 live timers at random deadlines. Harness-less; runs for a few seconds.
//!
//! `cargo bench --bench timers`

use std::hint::black_box;
use std::time::{Duration, Instant};

use evloop::internals::Timers;

/// Live timers in the "full" cases.
const LIVE: u64 = 1_000_000;
/// Spread of the random deadlines: one hour, in nanoseconds.
const SPREAD_NS: u64 = 3_600_000_000_000;
/// Time spent measuring each case (after a short warm-up).
const BUDGET: Duration = Duration::from_millis(400);
/// Operations between clock reads.
const BATCH: u64 = 10_000;

/// xorshift64*: deterministic and cheap enough (~1 ns) not to blur the figures.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Runs `op` in batches until `BUDGET` has passed; returns ns per call.
fn measure(mut op: impl FnMut()) -> f64 {
    for _ in 0..BATCH {
        op();
    }
    let start = Instant::now();
    let mut calls = 0u64;
    loop {
        for _ in 0..BATCH {
            op();
        }
        calls += BATCH;
        let elapsed = start.elapsed();
        if elapsed >= BUDGET {
            return elapsed.as_nanos() as f64 / calls as f64;
        }
    }
}

fn row(case: &str, live: &str, ns: f64) {
    println!("{case:<40} {live:>10} {ns:>10.1}");
}

fn main() {
    let base = Instant::now();
    // Random deadlines start an hour out, so nothing in the pre-filled set is due at `base`.
    let random_deadline = |rng: &mut XorShift| {
        base + Duration::from_secs(3600) + Duration::from_nanos(rng.next() % SPREAD_NS)
    };
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut payload = 0u64;

    println!("{:<40} {:>10} {:>10}", "case", "live", "ns/op");

    // Empty store.
    let mut timers = Timers::new();
    let ns = measure(|| {
        payload += 1;
        let id = timers.insert(black_box(base), None, payload);
        black_box(timers.cancel(black_box(id)));
    });
    row("insert + cancel", "0", ns);
    let ns = measure(|| {
        payload += 1;
        timers.insert(black_box(base), None, payload);
        black_box(timers.pop_expired(black_box(base)));
    });
    row("insert + pop_expired", "0", ns);
    assert!(timers.is_empty());

    // 1,000,000 live timers at random deadlines.
    let mut timers = Timers::new();
    let start = Instant::now();
    for _ in 0..LIVE {
        payload += 1;
        timers.insert(random_deadline(&mut rng), None, payload);
    }
    let fill = start.elapsed().as_nanos() as f64 / LIVE as f64;
    row("insert (filling 0 -> 1M, random)", "0..1M", fill);

    let ns = measure(|| {
        payload += 1;
        let id = timers.insert(black_box(random_deadline(&mut rng)), None, payload);
        black_box(timers.cancel(black_box(id)));
    });
    row("insert (random) + cancel", "1M", ns);

    let ns = measure(|| {
        payload += 1;
        timers.insert(black_box(base), None, payload);
        black_box(timers.pop_expired(black_box(base)));
    });
    row("insert (due now) + pop_expired", "1M", ns);

    // Steady churn: everything is due; each round adds a random timer and fires the earliest.
    let far = base + Duration::from_secs(3 * 3600);
    let ns = measure(|| {
        payload += 1;
        timers.insert(black_box(random_deadline(&mut rng)), None, payload);
        black_box(timers.pop_expired(black_box(far)));
    });
    row("insert (random) + pop_expired (earliest)", "1M", ns);
    assert_eq!(timers.len() as u64, LIVE);
}
