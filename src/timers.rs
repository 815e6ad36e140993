//! Timer store for the reactor: one-shot and repeating timers ordered by deadline.
//!
//! [`Timers`] is pure bookkeeping. It never reads the clock, sleeps or touches a socket: every
//! method that needs the current time takes `now` as an argument, so the reactor reads the clock
//! once per turn and tests can drive time by hand.
//!
//! A reactor turn uses it like this:
//!
//! 1. [`Timers::timeout`] gives the poll timeout (`None`: no timers, block until an event).
//! 2. After polling, call [`Timers::pop_expired`] with the new `now` until it returns `None`,
//!    running each timer's callback in between. Callbacks may insert and cancel timers freely,
//!    including the one being handled.
//!
//! Timers fire earliest deadline first; equal deadlines fire in [`TimerId`] order, that is in
//! insertion order. A repeating timer keeps its id and is re-armed by `pop_expired` itself, at
//! `deadline + period`, or at `now + period` if that is already due: after a stall it fires once,
//! not once per missed period.
//!
//! # Cost
//!
//! Timers live in a `BTreeMap` keyed by `(deadline, id)` plus a `HashMap` from id to deadline
//! (the layout smol's `async-io` uses). With `n` pending timers, [`insert`](Timers::insert),
//! [`cancel`](Timers::cancel), [`pop_expired`](Timers::pop_expired) and
//! [`next_deadline`](Timers::next_deadline) are `O(log n)`; [`contains`](Timers::contains) and
//! [`len`](Timers::len) are `O(1)`. Firing a timer allocates nothing beyond what `BTreeMap` does
//! for its nodes; the id index only grows (amortized) on insert.

use std::collections::btree_map::BTreeMap;
use std::collections::hash_map::{Entry, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

/// Names one timer in a [`Timers`].
///
/// Ids come from a `u64` sequence starting at 1 and are never reused within one `Timers`, so the
/// id of a cancelled or fired timer can't be confused with a later timer's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TimerId(u64);

impl TimerId {
    /// The id as a plain number, for logs or for keys in the caller's own maps.
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

/// One-shot and repeating timers, each carrying a small `Copy` payload (typically a token or
/// slab key saying what to do when it fires).
///
/// See the [module documentation](self) for the contract and the cost of each operation.
///
/// # Examples
///
/// ```
/// # use evloop::internals::Timers;
/// use std::time::{Duration, Instant};
///
/// let start = Instant::now();
/// let mut timers = Timers::new();
/// let once = timers.insert(start + Duration::from_millis(10), None, "once");
/// let tick = timers.insert(start + Duration::from_millis(5), Some(Duration::from_millis(5)), "tick");
/// assert_eq!(timers.timeout(start), Some(Duration::from_millis(5)));
///
/// // Nothing is due yet.
/// assert_eq!(timers.pop_expired(start), None);
///
/// // At +10 ms both are due: the repeating one first (earlier deadline), then the one-shot.
/// let now = start + Duration::from_millis(10);
/// assert_eq!(timers.pop_expired(now), Some((tick, "tick")));
/// assert_eq!(timers.pop_expired(now), Some((once, "once")));
/// assert_eq!(timers.pop_expired(now), None);
///
/// // The repeating timer is re-armed under the same id until it is cancelled.
/// assert_eq!(timers.next_deadline(), Some(start + Duration::from_millis(15)));
/// assert_eq!(timers.cancel(tick), Some("tick"));
/// assert_eq!(timers.cancel(once), None); // already fired
/// assert!(timers.is_empty());
/// ```
#[derive(Debug)]
pub struct Timers<T> {
    /// Pending timers in firing order: `(deadline, id) -> payload`.
    by_deadline: BTreeMap<(Instant, u64), T>,
    /// `id -> (current deadline, period)` for every pending timer; finds the `by_deadline` key.
    by_id: HashMap<u64, (Instant, Option<Duration>), BuildIdHasher>,
    /// The next id to hand out.
    next_id: u64,
}

impl<T> Default for Timers<T> {
    fn default() -> Self {
        Timers {
            by_deadline: BTreeMap::new(),
            by_id: HashMap::default(),
            next_id: 1,
        }
    }
}

impl<T: Copy> Timers<T> {
    /// Creates an empty timer store. Allocates nothing until the first insert.
    pub fn new() -> Self {
        Self::default()
    }

    /// Arms a timer due at `deadline` and returns its id.
    ///
    /// A `deadline` already in the past is fine: the timer fires at the next
    /// [`pop_expired`](Self::pop_expired). With `period: Some(p)` the timer repeats every `p`
    /// until cancelled; a zero period is treated as 1 ns, so a repeating timer is never due
    /// again at the `now` it just fired at and a `pop_expired` loop always ends.
    pub fn insert(&mut self, deadline: Instant, period: Option<Duration>, payload: T) -> TimerId {
        let id = self.next_id;
        self.next_id += 1; // u64: a billion timers a second would take 584 years to wrap.
        let period = period.map(|p| p.max(Duration::from_nanos(1)));
        self.by_deadline.insert((deadline, id), payload);
        self.by_id.insert(id, (deadline, period));
        TimerId(id)
    }

    /// Removes a pending timer and returns its payload.
    ///
    /// Returns `None` if the timer already fired (one-shot), was already cancelled, or never
    /// existed. A repeating timer is pending until cancelled, including right after it fired:
    /// cancelling it from its own callback removes the re-armed entry.
    pub fn cancel(&mut self, id: TimerId) -> Option<T> {
        let (deadline, _) = self.by_id.remove(&id.0)?;
        let payload = self.by_deadline.remove(&(deadline, id.0));
        debug_assert!(payload.is_some(), "timer indexes out of sync");
        payload
    }

    /// When pending timer `id` is next due.
    pub fn deadline(&self, id: TimerId) -> Option<Instant> {
        self.by_id.get(&id.0).map(|(deadline, _)| *deadline)
    }

    /// The payload of pending timer `id`.
    pub fn get(&self, id: TimerId) -> Option<&T> {
        let (deadline, _) = self.by_id.get(&id.0)?;
        self.by_deadline.get(&(*deadline, id.0))
    }

    /// Whether `id` names a pending timer (one that [`cancel`](Self::cancel) would remove).
    pub fn contains(&self, id: TimerId) -> bool {
        self.by_id.contains_key(&id.0)
    }

    /// The earliest pending deadline, or `None` when there are no timers.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.by_deadline
            .first_key_value()
            .map(|(&(deadline, _), _)| deadline)
    }

    /// Pops one timer whose deadline is `<= now`: the earliest, ties broken by id (insertion
    /// order). Returns `None` when no timer is due.
    ///
    /// Call it in a loop until `None`, handling each timer in between; timers inserted or
    /// cancelled while handling are taken into account by the next call.
    ///
    /// A one-shot timer is removed. A repeating timer stays armed under the same id, next due at
    /// `deadline + period`, or at `now + period` if that is already `<= now` (one firing after a
    /// stall, not a burst of catch-up firings). If the next deadline is not representable as an
    /// `Instant` (an absurdly long period), the timer is removed as if it were one-shot.
    pub fn pop_expired(&mut self, now: Instant) -> Option<(TimerId, T)> {
        let first = self.by_deadline.first_entry()?;
        if first.key().0 > now {
            return None;
        }
        let ((deadline, id), payload) = first.remove_entry();
        let Entry::Occupied(mut entry) = self.by_id.entry(id) else {
            debug_assert!(false, "timer indexes out of sync");
            return Some((TimerId(id), payload));
        };
        let next = entry
            .get()
            .1
            .and_then(|period| match deadline.checked_add(period) {
                Some(next) if next > now => Some(next),
                _ => now.checked_add(period),
            });
        match next {
            Some(next) => {
                entry.get_mut().0 = next;
                self.by_deadline.insert((next, id), payload);
            }
            None => {
                entry.remove();
            }
        }
        Some((TimerId(id), payload))
    }

    /// The number of pending timers (repeating timers count until cancelled).
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether there are no pending timers.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// How long from `now` until the next deadline, zero if a timer is already due, `None` when
    /// there are no timers. Suitable as the poll timeout.
    pub fn timeout(&self, now: Instant) -> Option<Duration> {
        self.next_deadline()
            .map(|deadline| deadline.saturating_duration_since(now))
    }
}

/// How far ahead "never" is: a deadline past what `Instant` can represent becomes this far
/// from now instead (about 100 years), so it never fires yet stays cancellable.
const NEVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `now + after`, saturating: an `after` too long to represent (`Duration::MAX`, a
/// configured timeout of 1e19 s) means "never", not a panic.
pub(crate) fn deadline_after(now: Instant, after: Duration) -> Instant {
    now.checked_add(after.min(NEVER))
        .or_else(|| now.checked_add(NEVER))
        .unwrap_or(now)
}

/// Hasher for the id index. Ids are generated here (no untrusted keys, so no need for SipHash's
/// flooding resistance) and sequential; a Fibonacci multiply spreads them over the high bits the
/// hash table uses for tags while keeping the low bits a permutation.
#[derive(Default)]
struct IdHasher(u64);

type BuildIdHasher = BuildHasherDefault<IdHasher>;

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not reached for u64 keys; kept correct for completeness.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_past_the_representable_range_mean_never() {
        let now = Instant::now();
        let far = deadline_after(now, Duration::MAX);
        assert!(far > now + Duration::from_secs(50 * 365 * 24 * 3600));
        assert_eq!(
            deadline_after(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
        let mut timers = Timers::new();
        let id = timers.insert(far, None, ());
        assert!(
            timers
                .pop_expired(now + Duration::from_secs(3600))
                .is_none()
        );
        assert!(timers.cancel(id).is_some());
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Pops everything due at `now`.
    fn drain(timers: &mut Timers<u32>, now: Instant) -> Vec<(TimerId, u32)> {
        std::iter::from_fn(|| timers.pop_expired(now)).collect()
    }

    #[test]
    fn fires_in_deadline_order() {
        let t0 = Instant::now();
        let mut timers = Timers::new();
        let c = timers.insert(t0 + ms(30), None, 3);
        let a = timers.insert(t0 + ms(10), None, 1);
        let b = timers.insert(t0 + ms(20), None, 2);
        assert_eq!(timers.pop_expired(t0 + ms(9)), None);
        assert_eq!(drain(&mut timers, t0 + ms(20)), [(a, 1), (b, 2)]);
        assert_eq!(drain(&mut timers, t0 + ms(100)), [(c, 3)]);
        assert!(timers.is_empty());
    }

    #[test]
    fn ties_fire_in_insertion_order() {
        let t0 = Instant::now();
        let mut timers = Timers::new();
        let ids: Vec<_> = (0..5).map(|i| timers.insert(t0, None, i)).collect();
        let fired = drain(&mut timers, t0);
        assert_eq!(fired, ids.into_iter().zip(0..5).collect::<Vec<_>>());
    }

    #[test]
    fn deadline_equal_to_now_is_due() {
        let t0 = Instant::now();
        let mut timers = Timers::new();
        let id = timers.insert(t0 + ms(5), None, 7);
        assert_eq!(timers.pop_expired(t0 + ms(5)), Some((id, 7)));
    }

    #[test]
    fn past_deadline_fires_at_once() {
        let t0 = Instant::now();
        let mut timers = Timers::new();
        let id = timers.insert(t0, None, 7);
        assert_eq!(timers.timeout(t0 + ms(5)), Some(Duration::ZERO));
        assert_eq!(timers.pop_expired(t0 + ms(5)), Some((id, 7)));
    }

    #[test]
    fn one_shot_fires_once() {
        let t0 = Instant::now();
        let mut timers = Timers::new();
        let id = timers.insert(t0 + ms(1), None, 1);
        assert_eq!(timers.pop_expired(t0 + ms(1)), Some((id, 1)));
        assert_eq!(timers.pop_expired(t0 + ms(1)), None);
        assert_eq!(timers.pop_expired(t0 + ms(1000)), None);
        assert!(!timers.contains(id));
        assert!(timers.is_empty());
        assert_eq!(timers.next_deadline(), None);
    }

    #[test]
    fn repeating_fires_every_period_and_keeps_its_id() {
        let t0 = Instant::now();
        let mut timers = Timers::new();
        let id = timers.insert(t0 + ms(10), Some(ms(10)), 5);
        for k in 1..=5 {
            let now = t0 + ms(10 * k);
            assert_eq!(timers.pop_expired(now - ms(1)), None);
            assert_eq!(drain(&mut timers, now), [(id, 5)]);
            assert!(timers.contains(id));
            assert_eq!(timers.len(), 1);
            assert_eq!(timers.next_deadline(), Some(now + ms(10)));
        }
    }

    #[test]
    fn repeating_keeps_its_phase_when_handled_late() {
        let t0 = Instant::now();
        let mut timers = Timers::new();
        let id = timers.insert(t0 + ms(10), Some(ms(10)), 5);
        // Handled 3 ms late: the next deadline stays on the 10 ms grid.
        assert_eq!(drain(&mut timers, t0 + ms(13)), [(id, 5)]);
        assert_eq!(timers.next_deadline(), Some(t0 + ms(20)));
    }

    #[test]
    fn repeating_does_not_catch_up_after_a_stall() {
        let t0 = Instant::now();
        let mut timers = Timers::new();
        let id = timers.insert(t0 + ms(10), Some(ms(10)), 5);
        // Stalled for 10 periods: one firing, then re-armed a full period after now.
        let now = t0 + ms(105);
        assert_eq!(drain(&mut timers, now), [(id, 5)]);
        assert_eq!(timers.next_deadline(), Some(now + ms(10)));
        timers.cancel(id);
        // deadline + period == now is "already <= now": re-armed at now + period too.
        let id2 = timers.insert(now - ms(10), Some(ms(10)), 6);
        assert_eq!(drain(&mut timers, now), [(id2, 6)]);
        assert_eq!(timers.next_deadline(), Some(now + ms(10)));
    }

    #[test]
    fn zero_period_is_one_nanosecond() {
        let t0 = Instant::now();
        let mut timers = Timers::new();
        let id = timers.insert(t0, Some(Duration::ZERO), 1);
        // The drain at a fixed `now` terminates: one firing.
        assert_eq!(drain(&mut timers, t0 + ms(1)), [(id, 1)]);
        assert_eq!(
            timers.next_deadline(),
            Some(t0 + ms(1) + Duration::from_nanos(1))
        );
    }

    #[test]
    fn unrepresentable_next_deadline_drops_the_timer() {
        let t0 = Instant::now();
        let mut timers = Timers::new();
        let id = timers.insert(t0, Some(Duration::MAX), 1);
        assert_eq!(drain(&mut timers, t0), [(id, 1)]);
        assert!(!timers.contains(id));
        assert!(timers.is_empty());
        assert_eq!(timers.cancel(id), None);
    }

    #[test]
    fn cancel_before_fire() {
        let t0 = Instant::now();
        let mut timers = Timers::new();
        let a = timers.insert(t0 + ms(10), None, 1);
        let b = timers.insert(t0 + ms(20), Some(ms(5)), 2);
        assert!(timers.contains(a));
        assert_eq!(timers.cancel(a), Some(1));
        assert!(!timers.contains(a));
        assert_eq!(timers.cancel(a), None);
        assert_eq!(timers.next_deadline(), Some(t0 + ms(20)));
        assert_eq!(timers.cancel(b), Some(2));
        assert_eq!(drain(&mut timers, t0 + ms(1000)), []);
        assert!(timers.is_empty());
    }

    #[test]
    fn cancel_after_fire_returns_none() {
        let t0 = Instant::now();
        let mut timers = Timers::new();
        let a = timers.insert(t0, None, 1);
        let b = timers.insert(t0 + ms(10), None, 2);
        assert_eq!(drain(&mut timers, t0), [(a, 1)]);
        assert_eq!(timers.cancel(a), None);
        // The other timer is untouched.
        assert_eq!(timers.len(), 1);
        assert_eq!(drain(&mut timers, t0 + ms(10)), [(b, 2)]);
    }

    #[test]
    fn cancel_of_unknown_id_returns_none() {
        let mut timers = Timers::<u32>::new();
        assert_eq!(timers.cancel(TimerId(1)), None);
        assert_eq!(timers.cancel(TimerId(u64::MAX)), None);
        assert!(!timers.contains(TimerId(1)));
    }

    #[test]
    fn repeating_cancelled_from_its_own_handler() {
        let t0 = Instant::now();
        let mut timers = Timers::new();
        let id = timers.insert(t0 + ms(10), Some(ms(10)), 9);
        let other = timers.insert(t0 + ms(15), None, 1);
        let (fired, payload) = timers.pop_expired(t0 + ms(10)).unwrap();
        assert_eq!((fired, payload), (id, 9));
        // The "callback" cancels the timer that is being handled: the re-armed entry goes.
        assert_eq!(timers.cancel(fired), Some(9));
        assert!(!timers.contains(id));
        assert_eq!(timers.len(), 1);
        assert_eq!(timers.next_deadline(), Some(t0 + ms(15)));
        assert_eq!(drain(&mut timers, t0 + ms(1000)), [(other, 1)]);
        assert!(timers.is_empty());
    }

    #[test]
    fn timer_cancelled_by_an_earlier_handler_is_not_popped() {
        let t0 = Instant::now();
        let mut timers = Timers::new();
        let a = timers.insert(t0 + ms(1), None, 1);
        let b = timers.insert(t0 + ms(2), None, 2);
        let c = timers.insert(t0 + ms(3), Some(ms(1)), 3);
        let d = timers.insert(t0 + ms(4), None, 4);
        let now = t0 + ms(10);
        let mut fired = Vec::new();
        while let Some((id, payload)) = timers.pop_expired(now) {
            fired.push((id, payload));
            if id == a {
                // a's handler cancels b and c, both also due at `now`.
                assert_eq!(timers.cancel(b), Some(2));
                assert_eq!(timers.cancel(c), Some(3));
            }
        }
        assert_eq!(fired, [(a, 1), (d, 4)]);
        assert!(timers.is_empty());
    }

    #[test]
    fn timer_inserted_by_a_handler_that_is_due_fires_in_the_same_drain() {
        let t0 = Instant::now();
        let mut timers = Timers::new();
        let a = timers.insert(t0, None, 1);
        let mut fired = Vec::new();
        let mut b = None;
        while let Some((id, payload)) = timers.pop_expired(t0) {
            fired.push((id, payload));
            if id == a {
                b = Some(timers.insert(t0, None, 2));
            }
        }
        assert_eq!(fired, [(a, 1), (b.unwrap(), 2)]);
    }

    #[test]
    fn ids_are_never_reused() {
        let t0 = Instant::now();
        let mut timers = Timers::new();
        let first = timers.insert(t0, None, 0);
        assert_eq!(first.as_u64(), 1);
        let mut seen = vec![first];
        timers.cancel(first);
        for i in 1..100 {
            let id = timers.insert(t0, None, i);
            assert!(seen.iter().all(|&old| old < id));
            seen.push(id);
            if i % 2 == 0 {
                timers.cancel(id);
            } else {
                drain(&mut timers, t0);
            }
        }
        assert!(timers.is_empty());
        assert_eq!(seen.last().unwrap().as_u64(), 100);
        // An old id does not name the new timer.
        let new = timers.insert(t0, None, 1000);
        assert_eq!(new.as_u64(), 101);
        assert!(seen.iter().all(|&old| !timers.contains(old)));
        assert!(seen.iter().all(|&old| timers.cancel(old).is_none()));
        assert!(timers.contains(new));
    }

    #[test]
    fn next_deadline_and_timeout() {
        let t0 = Instant::now();
        let mut timers = Timers::new();
        assert_eq!(timers.next_deadline(), None);
        assert_eq!(timers.timeout(t0), None);
        let a = timers.insert(t0 + ms(50), None, 1);
        let b = timers.insert(t0 + ms(20), None, 2);
        assert_eq!(timers.next_deadline(), Some(t0 + ms(20)));
        assert_eq!(timers.timeout(t0), Some(ms(20)));
        assert_eq!(timers.timeout(t0 + ms(15)), Some(ms(5)));
        assert_eq!(timers.timeout(t0 + ms(20)), Some(Duration::ZERO));
        assert_eq!(timers.timeout(t0 + ms(30)), Some(Duration::ZERO));
        timers.cancel(b);
        assert_eq!(timers.next_deadline(), Some(t0 + ms(50)));
        assert_eq!(timers.timeout(t0), Some(ms(50)));
        timers.cancel(a);
        assert_eq!(timers.next_deadline(), None);
        assert_eq!(timers.timeout(t0), None);
    }

    #[test]
    fn len_and_is_empty() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        assert_eq!(timers.len(), 0);
        assert!(timers.is_empty());
        let a = timers.insert(t0 + ms(1), None, 1);
        let b = timers.insert(t0 + ms(2), Some(ms(1)), 2);
        let _c = timers.insert(t0 + ms(3), None, 3);
        assert_eq!(timers.len(), 3);
        timers.cancel(a);
        assert_eq!(timers.len(), 2);
        timers.cancel(a);
        assert_eq!(timers.len(), 2);
        // The one-shot leaves, the repeating one stays.
        drain(&mut timers, t0 + ms(3));
        assert_eq!(timers.len(), 1);
        assert!(!timers.is_empty());
        timers.cancel(b);
        assert_eq!(timers.len(), 0);
        assert!(timers.is_empty());
    }

    /// Deterministic xorshift64* PRNG for the model test.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Naive reference: a Vec of pending timers, scanned linearly.
    #[derive(Default)]
    struct Model {
        pending: Vec<(u64, Instant, Option<Duration>, u32)>,
        next_id: u64,
    }

    impl Model {
        fn insert(&mut self, deadline: Instant, period: Option<Duration>, payload: u32) -> u64 {
            self.next_id += 1;
            let period = period.map(|p| p.max(Duration::from_nanos(1)));
            self.pending.push((self.next_id, deadline, period, payload));
            self.next_id
        }

        fn cancel(&mut self, id: u64) -> Option<u32> {
            let i = self.pending.iter().position(|t| t.0 == id)?;
            Some(self.pending.remove(i).3)
        }

        fn next_deadline(&self) -> Option<Instant> {
            self.pending.iter().map(|t| t.1).min()
        }

        fn pop_expired(&mut self, now: Instant) -> Option<(u64, u32)> {
            let i = (0..self.pending.len())
                .filter(|&i| self.pending[i].1 <= now)
                .min_by_key(|&i| (self.pending[i].1, self.pending[i].0))?;
            let (id, deadline, period, payload) = self.pending[i];
            match period {
                None => {
                    self.pending.remove(i);
                }
                Some(p) => {
                    let next = if deadline + p <= now {
                        now + p
                    } else {
                        deadline + p
                    };
                    self.pending[i].1 = next;
                }
            }
            Some((id, payload))
        }
    }

    #[test]
    fn matches_naive_model() {
        let base = Instant::now();
        let us = Duration::from_micros;
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let mut timers = Timers::new();
        let mut model = Model::default();
        let mut now = base;
        let mut fired = 0;
        for op in 0..5000u32 {
            match rng.below(10) {
                // Insert: deadlines from a bit in the past to a while ahead, on a coarse grid
                // so that ties are common; a third of the timers repeat.
                0..=3 => {
                    let deadline = now - us(rng.below(3) * 10) + us(rng.below(50) * 10);
                    let period = match rng.below(3) {
                        0 => Some(us(rng.below(30) * 10)),
                        _ => None,
                    };
                    let id = timers.insert(deadline, period, op);
                    assert_eq!(id.as_u64(), model.insert(deadline, period, op));
                }
                // Cancel an id that may be pending, fired, cancelled or not yet issued.
                4..=5 => {
                    let id = 1 + rng.below(model.next_id + 2);
                    assert_eq!(timers.cancel(TimerId(id)), model.cancel(id), "cancel {id}");
                }
                // Advance time and drain; handlers sometimes cancel other timers (or themselves).
                6..=8 => {
                    now += us(rng.below(100) * 10);
                    loop {
                        let got = timers.pop_expired(now);
                        assert_eq!(got.map(|(id, p)| (id.as_u64(), p)), model.pop_expired(now));
                        let Some((id, _)) = got else { break };
                        fired += 1;
                        if rng.below(4) == 0 {
                            let victim = match rng.below(2) {
                                0 => id.as_u64(),
                                _ => 1 + rng.below(model.next_id),
                            };
                            let got = timers.cancel(TimerId(victim));
                            assert_eq!(got, model.cancel(victim), "cancel {victim} in handler");
                        }
                    }
                }
                // Just before the earliest deadline nothing is due.
                _ => {
                    if let Some(first) = model.next_deadline() {
                        let early = first - Duration::from_nanos(1);
                        assert_eq!(timers.pop_expired(early), None);
                    }
                }
            }
            assert_eq!(timers.len(), model.pending.len());
            assert_eq!(timers.is_empty(), model.pending.is_empty());
            assert_eq!(timers.next_deadline(), model.next_deadline());
            assert_eq!(
                timers.timeout(now),
                model
                    .next_deadline()
                    .map(|d| d.saturating_duration_since(now))
            );
            let probe = 1 + rng.below(model.next_id + 1);
            assert_eq!(
                timers.contains(TimerId(probe)),
                model.pending.iter().any(|t| t.0 == probe)
            );
        }
        // The run exercised firing and kept a non-trivial population.
        assert!(fired > 500, "only {fired} firings");
        assert!(model.next_id > 1000);
    }
}
