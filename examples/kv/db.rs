//! The keyspace: keys mapped to strings, lists and hashes, with per-key expiry.
//!
//! Time is whatever the caller says: every operation takes `now` (milliseconds since an
//! epoch of the caller's choosing) and nothing here reads a clock, so tests use a fake one.
//! A key whose deadline has passed (`now > deadline`, as in Redis) is deleted lazily when an
//! operation touches it, and [`Db::active_expire`] deletes expired keys in deadline order
//! with bounded work per call (Redis samples keys at random; an ordered index finds every
//! expired key without scanning live ones).
//!
//! # Memory layout
//!
//! Per-key overhead is what decides RSS with many small keys, so each key is one
//! allocation, a [`Slot`]: a flags byte, the key length (LEB128), the key, the deadline
//! (8 bytes, only for keys with a TTL), then either the string value itself (strings of up
//! to [`INLINE_MAX`] bytes) or a 4-byte index into a side table holding bigger strings,
//! lists and hashes. The table of keys is a `HashSet` of these 16-byte boxes, looked up by
//! the key bytes through `Borrow<[u8]>`. Keys with a TTL also sit in a `BTreeSet` ordered
//! by deadline (with a copy of the key), which only costs memory for those keys.
//!
//! Measured (`cargo test --release --example kv -- --ignored --nocapture rss`): 1,000,000
//! `SET key:N xyz` grow the process by 66 MB (68 bytes a key: the 16-byte table entry at
//! the `HashSet`'s 2^21 buckets plus a 32-byte malloc chunk), to 69 MB VmRSS in all;
//! redis-server 7.0.15 (jemalloc) holds the same data set at 105-108 MB VmRSS (89 MB
//! `used_memory`). A key with a TTL costs 8 bytes more in its slot plus a copy of the key in
//! the deadline index.

use std::borrow::Borrow;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};

/// Strings of up to this many bytes are stored inside the key's own allocation; longer ones
/// get a buffer of their own that can grow in place (APPEND).
pub const INLINE_MAX: usize = 64;

/// A value kept in the side table: a long string, a list or a hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A string longer than [`INLINE_MAX`].
    Str(Vec<u8>),
    /// A list; never empty while its key exists.
    List(VecDeque<Vec<u8>>),
    /// A hash; never empty while its key exists.
    Hash(HashMap<Vec<u8>, Vec<u8>>),
}

/// A borrowed view of a key's value, whichever way it is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueRef<'a> {
    /// A string.
    Str(&'a [u8]),
    /// A list.
    List(&'a VecDeque<Vec<u8>>),
    /// A hash.
    Hash(&'a HashMap<Vec<u8>, Vec<u8>>),
}

impl ValueRef<'_> {
    /// The name TYPE reports: `string`, `list` or `hash`.
    pub fn type_name(&self) -> &'static str {
        match self {
            ValueRef::Str(_) => "string",
            ValueRef::List(_) => "list",
            ValueRef::Hash(_) => "hash",
        }
    }
}

/// The key holds a value of another type than the operation needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrongType;

/// What [`Db::set`] does with the key's time to live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// The key lives until deleted (plain SET: any old TTL is dropped).
    Persist,
    /// The old TTL, if any, stays (SET ... KEEPTTL, INCR, APPEND).
    Keep,
    /// The key expires once `now` passes this deadline (milliseconds).
    At(u64),
}

/// Counters for INFO's stats section.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DbStats {
    /// Keys deleted because their deadline passed (lazily or actively).
    pub expired_keys: u64,
    /// Reads ([`Db::get`]) that found their key.
    pub keyspace_hits: u64,
    /// Reads ([`Db::get`]) that did not.
    pub keyspace_misses: u64,
}

const FLAG_HEAP: u8 = 1;
const FLAG_TTL: u8 = 2;

/// One key with its deadline and its small value or side-table index, in one allocation
/// (layout in the module docs). Equality and hashing look at the key bytes only.
struct Slot(Box<[u8]>);

/// Where a slot's value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Payload<'a> {
    Inline(&'a [u8]),
    Heap(u32),
}

fn varint_len(mut n: usize) -> usize {
    let mut len = 1;
    while n >= 0x80 {
        n >>= 7;
        len += 1;
    }
    len
}

impl Slot {
    fn new(key: &[u8], deadline: Option<u64>, payload: Payload<'_>) -> Slot {
        let payload_len = match payload {
            Payload::Inline(v) => v.len(),
            Payload::Heap(_) => 4,
        };
        let ttl_len = if deadline.is_some() { 8 } else { 0 };
        let len = 1 + varint_len(key.len()) + key.len() + ttl_len + payload_len;
        let mut bytes = Vec::with_capacity(len);
        let mut flags = 0;
        bytes.push(0);
        let mut n = key.len();
        while n >= 0x80 {
            bytes.push((n as u8) | 0x80);
            n >>= 7;
        }
        bytes.push(n as u8);
        bytes.extend_from_slice(key);
        if let Some(deadline) = deadline {
            flags |= FLAG_TTL;
            bytes.extend_from_slice(&deadline.to_le_bytes());
        }
        match payload {
            Payload::Inline(v) => bytes.extend_from_slice(v),
            Payload::Heap(index) => {
                flags |= FLAG_HEAP;
                bytes.extend_from_slice(&index.to_le_bytes());
            }
        }
        bytes[0] = flags;
        debug_assert_eq!(bytes.len(), len);
        Slot(bytes.into_boxed_slice())
    }

    /// Where the key starts and where it ends.
    fn key_range(&self) -> (usize, usize) {
        let mut len = 0usize;
        let mut shift = 0;
        let mut i = 1;
        loop {
            let b = self.0[i];
            len |= usize::from(b & 0x7f) << shift;
            i += 1;
            if b < 0x80 {
                return (i, i + len);
            }
            shift += 7;
        }
    }

    fn key(&self) -> &[u8] {
        let (start, end) = self.key_range();
        &self.0[start..end]
    }

    fn deadline(&self) -> Option<u64> {
        if self.0[0] & FLAG_TTL == 0 {
            return None;
        }
        let (_, end) = self.key_range();
        let bytes: [u8; 8] = self.0[end..end + 8].try_into().expect("8 bytes");
        Some(u64::from_le_bytes(bytes))
    }

    fn payload(&self) -> Payload<'_> {
        let (_, mut start) = self.key_range();
        if self.0[0] & FLAG_TTL != 0 {
            start += 8;
        }
        if self.0[0] & FLAG_HEAP != 0 {
            let bytes: [u8; 4] = self.0[start..start + 4].try_into().expect("4 bytes");
            Payload::Heap(u32::from_le_bytes(bytes))
        } else {
            Payload::Inline(&self.0[start..])
        }
    }

    fn heap_index(&self) -> Option<u32> {
        match self.payload() {
            Payload::Heap(index) => Some(index),
            Payload::Inline(_) => None,
        }
    }

    fn expired(&self, now: u64) -> bool {
        self.deadline().is_some_and(|deadline| now > deadline)
    }
}

impl Borrow<[u8]> for Slot {
    fn borrow(&self) -> &[u8] {
        self.key()
    }
}

impl PartialEq for Slot {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Slot {}

impl Hash for Slot {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Must hash exactly as the borrowed `[u8]` does.
        self.key().hash(state);
    }
}

/// Gives a buffer taken from a request back its excess capacity, so that a stored value
/// does not keep a reused argv buffer's spare room.
pub fn compact(mut v: Vec<u8>) -> Vec<u8> {
    if v.capacity() - v.len() > v.len() / 8 + 16 {
        v.shrink_to_fit();
    }
    v
}

/// The keyspace of one database.
#[derive(Default)]
pub struct Db {
    keys: HashSet<Slot>,
    /// Long strings, lists and hashes, addressed by the index in their key's slot.
    heap: Vec<Option<Value>>,
    /// Free places in `heap`.
    free: Vec<u32>,
    /// Every key with a TTL, by deadline.
    ttl: BTreeSet<(u64, Box<[u8]>)>,
    stats: DbStats,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("keys", &self.keys.len())
            .field("expires", &self.ttl.len())
            .field("stats", &self.stats)
            .finish()
    }
}

impl Db {
    /// An empty keyspace.
    pub fn new() -> Db {
        Db::default()
    }

    /// The number of keys, counting expired ones not deleted yet (like Redis's DBSIZE).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when there are no keys at all.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The number of keys with a TTL.
    pub fn expires(&self) -> usize {
        self.ttl.len()
    }

    /// The counters for INFO.
    pub fn stats(&self) -> DbStats {
        self.stats
    }

    /// The earliest deadline of any key, for scheduling the next [`Db::active_expire`].
    pub fn next_expiry(&self) -> Option<u64> {
        self.ttl.first().map(|&(deadline, _)| deadline)
    }

    /// Reads a key's value, counting a keyspace hit or miss.
    pub fn get(&mut self, key: &[u8], now: u64) -> Option<ValueRef<'_>> {
        self.expire_if_needed(key, now);
        match self.keys.get(key) {
            None => {
                self.stats.keyspace_misses += 1;
                None
            }
            Some(slot) => {
                self.stats.keyspace_hits += 1;
                Some(view(&self.heap, slot))
            }
        }
    }

    /// Reads a key's value without counting it (for writes that look first).
    pub fn peek(&mut self, key: &[u8], now: u64) -> Option<ValueRef<'_>> {
        self.expire_if_needed(key, now);
        self.keys.get(key).map(|slot| view(&self.heap, slot))
    }

    /// True if the key exists.
    pub fn contains(&mut self, key: &[u8], now: u64) -> bool {
        self.get(key, now).is_some()
    }

    /// Sets `key` to a string copied from `value`, replacing a value of any type.
    pub fn set_bytes(&mut self, key: &[u8], value: &[u8], expiry: Expiry, now: u64) {
        if value.len() > INLINE_MAX {
            self.set(key, &mut value.to_vec(), expiry, now);
            return;
        }
        self.expire_if_needed(key, now);
        // One lookup when the new deadline does not depend on the old one (SET, MSET): the
        // old slot, if any, comes back from `replace`.
        let deadline = match expiry {
            Expiry::Keep => self.old_state(key).0,
            Expiry::Persist => None,
            Expiry::At(deadline) => Some(deadline),
        };
        let old = self
            .keys
            .replace(Slot::new(key, deadline, Payload::Inline(value)));
        let old_deadline = old.as_ref().and_then(Slot::deadline);
        if let Some(index) = old.as_ref().and_then(Slot::heap_index) {
            self.free_heap(index);
        }
        self.retime(key, old_deadline, deadline);
    }

    /// Sets `key` to the string in `value`, replacing a value of any type. A short value is
    /// copied and `value` left as it is; a long one is moved out (leaving it empty), so a
    /// big argument is never copied again.
    pub fn set(&mut self, key: &[u8], value: &mut Vec<u8>, expiry: Expiry, now: u64) {
        if value.len() <= INLINE_MAX {
            self.set_bytes(key, value, expiry, now);
            return;
        }
        self.expire_if_needed(key, now);
        let (old_deadline, old_heap) = self.old_state(key);
        let deadline = resolve(expiry, old_deadline);
        let value = Value::Str(compact(std::mem::take(value)));
        match old_heap {
            Some(index) => {
                self.heap[index as usize] = Some(value);
                if deadline == old_deadline {
                    return; // the slot stays as it is
                }
                self.keys
                    .replace(Slot::new(key, deadline, Payload::Heap(index)));
            }
            None => {
                let index = self.alloc_heap(value);
                self.keys
                    .replace(Slot::new(key, deadline, Payload::Heap(index)));
            }
        }
        self.retime(key, old_deadline, deadline);
    }

    /// Read-modify-write of a string whose new value is short (INCR and friends), in two
    /// hash lookups: `f` gets the current string (`None` if the key is missing) and writes
    /// the new value into the buffer it is lent, returning its length; the key keeps its TTL.
    /// If `f` fails the key stays as it was and its error is returned inside `Ok`. A list or
    /// hash is [`WrongType`] (and `f` is not called).
    pub fn update_short<E>(
        &mut self,
        key: &[u8],
        now: u64,
        f: impl FnOnce(Option<&[u8]>, &mut [u8; INLINE_MAX]) -> Result<usize, E>,
    ) -> Result<Result<(), E>, WrongType> {
        self.expire_if_needed(key, now);
        let old = self.keys.take(key);
        if let Some(Payload::Heap(index)) = old.as_ref().map(Slot::payload) {
            if heap_string(&self.heap, index).is_none() {
                self.keys.extend(old);
                return Err(WrongType);
            }
        }
        let mut buf = [0u8; INLINE_MAX];
        let current = match old.as_ref().map(Slot::payload) {
            None => None,
            Some(Payload::Inline(current)) => Some(current),
            Some(Payload::Heap(index)) => heap_string(&self.heap, index),
        };
        let made = f(current, &mut buf);
        let len = match made {
            Ok(len) => len,
            Err(e) => {
                self.keys.extend(old);
                return Ok(Err(e));
            }
        };
        let deadline = old.as_ref().and_then(Slot::deadline);
        if let Some(index) = old.as_ref().and_then(Slot::heap_index) {
            self.free_heap(index);
        }
        self.keys
            .insert(Slot::new(key, deadline, Payload::Inline(&buf[..len])));
        Ok(Ok(()))
    }

    /// Appends to the string at `key` (creating it) and returns the new length.
    pub fn append(&mut self, key: &[u8], tail: &[u8], now: u64) -> Result<usize, WrongType> {
        self.expire_if_needed(key, now);
        let joined = match self.keys.get(key) {
            None => {
                self.set_bytes(key, tail, Expiry::Persist, now);
                return Ok(tail.len());
            }
            Some(slot) => match slot.payload() {
                Payload::Heap(index) => match &mut self.heap[index as usize] {
                    Some(Value::Str(s)) => {
                        s.extend_from_slice(tail);
                        return Ok(s.len());
                    }
                    _ => return Err(WrongType),
                },
                Payload::Inline(old) => {
                    let mut joined = Vec::with_capacity(old.len() + tail.len());
                    joined.extend_from_slice(old);
                    joined.extend_from_slice(tail);
                    joined
                }
            },
        };
        let mut joined = joined;
        let len = joined.len();
        self.set(key, &mut joined, Expiry::Keep, now);
        Ok(len)
    }

    /// Deletes `key`; true if it existed (an expired key did not).
    pub fn remove(&mut self, key: &[u8], now: u64) -> bool {
        if self.expire_if_needed(key, now) {
            return false;
        }
        self.delete(key)
    }

    /// The key's deadline: `None` if there is no such key, `Some(None)` if it has no TTL.
    pub fn deadline(&mut self, key: &[u8], now: u64) -> Option<Option<u64>> {
        self.expire_if_needed(key, now);
        self.keys.get(key).map(Slot::deadline)
    }

    /// Sets (or with `None` clears) the deadline of an existing key; false if there is no
    /// such key. A deadline already past makes the key expire on its next access.
    pub fn set_deadline(&mut self, key: &[u8], deadline: Option<u64>, now: u64) -> bool {
        self.expire_if_needed(key, now);
        let Some(slot) = self.keys.get(key) else {
            return false;
        };
        let old = slot.deadline();
        if old == deadline {
            return true;
        }
        let rebuilt = Slot::new(key, deadline, slot.payload());
        self.keys.replace(rebuilt);
        self.retime(key, old, deadline);
        true
    }

    /// Runs `f` on the list at `key`. A missing key is `Ok(None)`, or with `create` a new
    /// empty list; a list that `f` leaves empty is deleted, as Redis does.
    pub fn with_list<R>(
        &mut self,
        key: &[u8],
        now: u64,
        create: bool,
        f: impl FnOnce(&mut VecDeque<Vec<u8>>) -> R,
    ) -> Result<Option<R>, WrongType> {
        let make = || Value::List(VecDeque::new());
        self.with_value(key, now, create.then_some(make), |value| match value {
            Value::List(list) => Ok(f(list)),
            _ => Err(WrongType),
        })
    }

    /// Runs `f` on the hash at `key`, like [`Db::with_list`].
    pub fn with_hash<R>(
        &mut self,
        key: &[u8],
        now: u64,
        create: bool,
        f: impl FnOnce(&mut HashMap<Vec<u8>, Vec<u8>>) -> R,
    ) -> Result<Option<R>, WrongType> {
        let make = || Value::Hash(HashMap::new());
        self.with_value(key, now, create.then_some(make), |value| match value {
            Value::Hash(hash) => Ok(f(hash)),
            _ => Err(WrongType),
        })
    }

    /// Deletes every key (FLUSHALL, FLUSHDB) and gives the memory back.
    pub fn flush(&mut self) {
        self.keys = HashSet::new();
        self.heap = Vec::new();
        self.free = Vec::new();
        self.ttl = BTreeSet::new();
    }

    /// Deletes up to `budget` keys whose deadline has passed, earliest first, and returns
    /// how many it deleted. Call it periodically (Redis does 10 times a second); a result
    /// equal to `budget` means more may be due.
    pub fn active_expire(&mut self, now: u64, budget: usize) -> usize {
        let mut removed = 0;
        while removed < budget {
            match self.ttl.first() {
                Some(&(deadline, _)) if now > deadline => {}
                _ => break,
            }
            let Some((_, key)) = self.ttl.pop_first() else {
                break;
            };
            if let Some(slot) = self.keys.take(&*key) {
                if let Some(index) = slot.heap_index() {
                    self.free_heap(index);
                }
            }
            self.stats.expired_keys += 1;
            removed += 1;
        }
        removed
    }

    fn with_value<R>(
        &mut self,
        key: &[u8],
        now: u64,
        create: Option<impl FnOnce() -> Value>,
        f: impl FnOnce(&mut Value) -> Result<R, WrongType>,
    ) -> Result<Option<R>, WrongType> {
        self.expire_if_needed(key, now);
        let index = match self.keys.get(key) {
            Some(slot) => match slot.payload() {
                Payload::Heap(index) => index,
                Payload::Inline(_) => return Err(WrongType),
            },
            None => match create {
                None => return Ok(None),
                Some(make) => {
                    let index = self.alloc_heap(make());
                    self.keys.insert(Slot::new(key, None, Payload::Heap(index)));
                    index
                }
            },
        };
        let value = self.heap[index as usize]
            .as_mut()
            .expect("a slot's heap index is live");
        let result = f(value);
        let empty = match value {
            Value::Str(_) => false,
            Value::List(list) => list.is_empty(),
            Value::Hash(hash) => hash.is_empty(),
        };
        if empty {
            self.delete(key);
        }
        result.map(Some)
    }

    /// The deadline and side-table index of the key as it is now.
    fn old_state(&self, key: &[u8]) -> (Option<u64>, Option<u32>) {
        match self.keys.get(key) {
            Some(slot) => (slot.deadline(), slot.heap_index()),
            None => (None, None),
        }
    }

    /// Deletes `key` if its deadline has passed; true if it did.
    fn expire_if_needed(&mut self, key: &[u8], now: u64) -> bool {
        if self.ttl.is_empty() {
            return false; // no key has a deadline: skip the lookup
        }
        if !self.keys.get(key).is_some_and(|slot| slot.expired(now)) {
            return false;
        }
        self.delete(key);
        self.stats.expired_keys += 1;
        true
    }

    /// Removes `key` with its side-table value and TTL entry; true if it was there.
    fn delete(&mut self, key: &[u8]) -> bool {
        let Some(slot) = self.keys.take(key) else {
            return false;
        };
        if let Some(index) = slot.heap_index() {
            self.free_heap(index);
        }
        if let Some(deadline) = slot.deadline() {
            self.ttl.remove(&(deadline, Box::from(key)));
        }
        true
    }

    /// Moves `key` in the deadline index from `old` to `new`.
    fn retime(&mut self, key: &[u8], old: Option<u64>, new: Option<u64>) {
        if old == new {
            return;
        }
        if let Some(deadline) = old {
            self.ttl.remove(&(deadline, Box::from(key)));
        }
        if let Some(deadline) = new {
            self.ttl.insert((deadline, Box::from(key)));
        }
    }

    fn alloc_heap(&mut self, value: Value) -> u32 {
        match self.free.pop() {
            Some(index) => {
                self.heap[index as usize] = Some(value);
                index
            }
            None => {
                let index = u32::try_from(self.heap.len()).expect("fewer than 2^32 big values");
                self.heap.push(Some(value));
                index
            }
        }
    }

    fn free_heap(&mut self, index: u32) {
        self.heap[index as usize] = None;
        self.free.push(index);
    }
}

/// The long string at `index` in the side table; `None` if it holds a list or hash.
fn heap_string(heap: &[Option<Value>], index: u32) -> Option<&[u8]> {
    match &heap[index as usize] {
        Some(Value::Str(s)) => Some(s),
        _ => None,
    }
}

/// The deadline a write leaves, given the key's current one.
fn resolve(expiry: Expiry, old: Option<u64>) -> Option<u64> {
    match expiry {
        Expiry::Persist => None,
        Expiry::Keep => old,
        Expiry::At(deadline) => Some(deadline),
    }
}

fn view<'a>(heap: &'a [Option<Value>], slot: &'a Slot) -> ValueRef<'a> {
    match slot.payload() {
        Payload::Inline(bytes) => ValueRef::Str(bytes),
        Payload::Heap(index) => match heap[index as usize]
            .as_ref()
            .expect("a slot's heap index is live")
        {
            Value::Str(s) => ValueRef::Str(s),
            Value::List(list) => ValueRef::List(list),
            Value::Hash(hash) => ValueRef::Hash(hash),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(db: &mut Db, key: &str, now: u64) -> Option<Vec<u8>> {
        match db.get(key.as_bytes(), now) {
            Some(ValueRef::Str(s)) => Some(s.to_vec()),
            None => None,
            Some(other) => panic!("{key} is a {}", other.type_name()),
        }
    }

    fn set(db: &mut Db, key: &str, value: &str, expiry: Expiry) {
        db.set(key.as_bytes(), &mut value.as_bytes().to_vec(), expiry, 0);
    }

    /// The deadline index holds exactly the keys whose slot has a deadline.
    fn check_index(db: &Db) {
        let mut from_slots: Vec<(u64, Vec<u8>)> = db
            .keys
            .iter()
            .filter_map(|slot| slot.deadline().map(|d| (d, slot.key().to_vec())))
            .collect();
        from_slots.sort();
        let from_index: Vec<(u64, Vec<u8>)> =
            db.ttl.iter().map(|(d, k)| (*d, k.to_vec())).collect();
        assert_eq!(from_slots, from_index);
        let live_heap = db.heap.iter().filter(|v| v.is_some()).count();
        let referenced = db.keys.iter().filter(|s| s.heap_index().is_some()).count();
        assert_eq!(live_heap, referenced);
        assert_eq!(db.heap.len(), live_heap + db.free.len());
    }

    #[test]
    fn slot_layout_round_trips() {
        let long_key = vec![b'k'; 300];
        for key in [&b""[..], b"a", b"key:1", &long_key] {
            for deadline in [None, Some(0), Some(u64::MAX), Some(12345)] {
                let slot = Slot::new(key, deadline, Payload::Inline(b"xyz"));
                assert_eq!(slot.key(), key);
                assert_eq!(slot.deadline(), deadline);
                assert_eq!(slot.payload(), Payload::Inline(b"xyz"));
                let slot = Slot::new(key, deadline, Payload::Heap(0xdead_beef));
                assert_eq!(slot.key(), key);
                assert_eq!(slot.deadline(), deadline);
                assert_eq!(slot.payload(), Payload::Heap(0xdead_beef));
            }
        }
        assert_eq!(std::mem::size_of::<Slot>(), 16);
        assert_eq!(
            Slot::new(b"key:123456", None, Payload::Inline(b"xyz"))
                .0
                .len(),
            15
        );
    }

    #[test]
    fn strings_inline_and_long() {
        let mut db = Db::new();
        set(&mut db, "a", "short", Expiry::Persist);
        let long = "x".repeat(INLINE_MAX + 1);
        set(&mut db, "b", &long, Expiry::Persist);
        assert_eq!(string(&mut db, "a", 0).unwrap(), b"short");
        assert_eq!(string(&mut db, "b", 0).unwrap(), long.as_bytes());
        // Overwrites across the two forms free and reuse side-table places.
        set(&mut db, "b", "tiny", Expiry::Persist);
        set(&mut db, "a", &long, Expiry::Persist);
        assert_eq!(string(&mut db, "a", 0).unwrap(), long.as_bytes());
        assert_eq!(string(&mut db, "b", 0).unwrap(), b"tiny");
        assert_eq!(db.heap.len(), 1);
        check_index(&db);
        assert_eq!(db.len(), 2);
        assert_eq!(db.stats().keyspace_hits, 4);
        assert_eq!(string(&mut db, "nope", 0), None);
        assert_eq!(db.stats().keyspace_misses, 1);
    }

    #[test]
    fn long_value_is_moved_not_copied() {
        let mut db = Db::new();
        let mut value = vec![7u8; 100_000];
        let ptr = value.as_ptr();
        db.set(b"k", &mut value, Expiry::Persist, 0);
        assert!(value.is_empty());
        match db.get(b"k", 0) {
            Some(ValueRef::Str(s)) => assert_eq!(s.as_ptr(), ptr),
            other => panic!("{other:?}"),
        }
        // A short value is copied and left in place for reuse.
        let mut short = b"abc".to_vec();
        db.set(b"k", &mut short, Expiry::Persist, 0);
        assert_eq!(short, b"abc");
    }

    #[test]
    fn append_grows_from_inline_to_own_buffer() {
        let mut db = Db::new();
        assert_eq!(db.append(b"k", b"abc", 0), Ok(3));
        let mut expected = b"abc".to_vec();
        for i in 0..100 {
            let piece = format!("{i},");
            expected.extend_from_slice(piece.as_bytes());
            assert_eq!(db.append(b"k", piece.as_bytes(), 0), Ok(expected.len()));
        }
        assert_eq!(string(&mut db, "k", 0).unwrap(), expected);
        db.with_list(b"l", 0, true, |l| l.push_back(b"x".to_vec()))
            .unwrap();
        assert_eq!(db.append(b"l", b"x", 0), Err(WrongType));
        check_index(&db);
    }

    #[test]
    fn update_short_keeps_the_ttl_and_the_key_on_failure() {
        let mut db = Db::new();
        let put = |db: &mut Db, key: &str, v: &str| {
            db.update_short(key.as_bytes(), 0, |_, out| {
                out[..v.len()].copy_from_slice(v.as_bytes());
                Ok::<_, ()>(v.len())
            })
        };
        assert_eq!(put(&mut db, "n", "1"), Ok(Ok(())));
        assert_eq!(string(&mut db, "n", 0).unwrap(), b"1");
        db.set_deadline(b"n", Some(100), 0);
        let seen = db.update_short(b"n", 0, |current, out| {
            assert_eq!(current, Some(&b"1"[..]));
            out[..2].copy_from_slice(b"22");
            Ok::<_, ()>(2)
        });
        assert_eq!(seen, Ok(Ok(())));
        assert_eq!(string(&mut db, "n", 0).unwrap(), b"22");
        assert_eq!(db.deadline(b"n", 0), Some(Some(100)));
        // A failure leaves the key, its value and its TTL.
        assert_eq!(db.update_short(b"n", 0, |_, _| Err("no")), Ok(Err("no")));
        assert_eq!(string(&mut db, "n", 0).unwrap(), b"22");
        assert_eq!(db.deadline(b"n", 0), Some(Some(100)));
        // A long string is offered too, and replaced by a short one.
        let long = "x".repeat(INLINE_MAX + 10);
        set(&mut db, "long", &long, Expiry::Persist);
        let seen = db.update_short(b"long", 0, |current, out| {
            assert_eq!(current.map(<[u8]>::len), Some(INLINE_MAX + 10));
            out[0] = b'7';
            Ok::<_, ()>(1)
        });
        assert_eq!(seen, Ok(Ok(())));
        assert_eq!(string(&mut db, "long", 0).unwrap(), b"7");
        // Lists and hashes are the wrong type and stay.
        db.with_list(b"l", 0, true, |l| l.push_back(b"a".to_vec()))
            .unwrap();
        assert_eq!(put(&mut db, "l", "1"), Err(WrongType));
        assert_eq!(db.get(b"l", 0).map(|v| v.type_name()), Some("list"));
        check_index(&db);
    }

    #[test]
    fn append_keeps_the_ttl() {
        let mut db = Db::new();
        set(&mut db, "k", "a", Expiry::At(100));
        db.append(b"k", &[b'b'; INLINE_MAX], 0).unwrap();
        assert_eq!(db.deadline(b"k", 0), Some(Some(100)));
        db.append(b"k", b"c", 0).unwrap();
        assert_eq!(db.deadline(b"k", 0), Some(Some(100)));
        check_index(&db);
    }

    #[test]
    fn lazy_expiry_with_a_fake_clock() {
        let mut db = Db::new();
        set(&mut db, "k", "v", Expiry::At(1000));
        set(&mut db, "long", &"v".repeat(100), Expiry::At(1000));
        assert_eq!(db.expires(), 2);
        assert_eq!(string(&mut db, "k", 999).unwrap(), b"v");
        // Alive at the deadline itself, gone after it, like Redis (`now > when`).
        assert_eq!(string(&mut db, "k", 1000).unwrap(), b"v");
        assert_eq!(string(&mut db, "k", 1001), None);
        assert!(!db.remove(b"long", 1001));
        assert_eq!(db.len(), 0);
        assert_eq!(db.expires(), 0);
        assert_eq!(db.stats().expired_keys, 2);
        check_index(&db);
    }

    #[test]
    fn ttl_changes_keep_the_index_exact() {
        let mut db = Db::new();
        set(&mut db, "k", "v", Expiry::At(10));
        set(&mut db, "k", "w", Expiry::Keep);
        assert_eq!(db.deadline(b"k", 0), Some(Some(10)));
        set(&mut db, "k", "x", Expiry::At(20));
        assert_eq!(db.deadline(b"k", 0), Some(Some(20)));
        check_index(&db);
        set(&mut db, "k", "y", Expiry::Persist);
        assert_eq!(db.deadline(b"k", 0), Some(None));
        assert_eq!(db.expires(), 0);
        assert!(db.set_deadline(b"k", Some(30), 0));
        assert_eq!(db.deadline(b"k", 0), Some(Some(30)));
        assert!(db.set_deadline(b"k", None, 0));
        assert_eq!(db.deadline(b"k", 0), Some(None));
        assert!(!db.set_deadline(b"nope", Some(1), 0));
        assert_eq!(db.deadline(b"nope", 0), None);
        check_index(&db);
        let long = "z".repeat(200);
        set(&mut db, "big", &long, Expiry::At(5));
        set(&mut db, "big", &long, Expiry::Keep);
        assert_eq!(db.deadline(b"big", 0), Some(Some(5)));
        set(&mut db, "big", &long, Expiry::Persist);
        assert_eq!(db.deadline(b"big", 0), Some(None));
        db.with_list(b"l", 0, true, |l| l.push_back(b"a".to_vec()))
            .unwrap();
        assert!(db.set_deadline(b"l", Some(7), 0));
        check_index(&db);
        assert!(db.remove(b"l", 0));
        assert!(db.remove(b"k", 0));
        assert!(!db.remove(b"k", 0));
        check_index(&db);
    }

    #[test]
    fn active_expire_is_bounded_and_ordered() {
        let mut db = Db::new();
        for i in 0..100u64 {
            let key = format!("k{i}");
            set(&mut db, &key, "v", Expiry::At(1000 + i));
        }
        set(&mut db, "forever", "v", Expiry::Persist);
        db.with_list(b"list", 0, true, |l| l.push_back(b"a".to_vec()))
            .unwrap();
        db.set_deadline(b"list", Some(1010), 0);
        assert_eq!(db.next_expiry(), Some(1000));
        assert_eq!(db.active_expire(1000, 50), 0);
        assert_eq!(db.active_expire(1020, 5), 5);
        assert_eq!(db.active_expire(1020, 1000), 16); // k5..k19 and the list
        assert_eq!(db.next_expiry(), Some(1020));
        assert!(db.contains(b"k20", 1020));
        assert!(!db.contains(b"k4", 1020));
        assert!(!db.contains(b"list", 1020));
        assert_eq!(db.active_expire(u64::MAX, 1000), 80);
        assert_eq!(db.len(), 1);
        assert_eq!(db.stats().expired_keys, 101);
        assert_eq!(db.next_expiry(), None);
        check_index(&db);
    }

    #[test]
    fn lists_and_hashes() {
        let mut db = Db::new();
        let n = db
            .with_list(b"l", 0, true, |l| {
                l.push_back(b"a".to_vec());
                l.push_back(b"b".to_vec());
                l.len()
            })
            .unwrap();
        assert_eq!(n, Some(2));
        assert_eq!(db.with_list(b"missing", 0, false, |l| l.len()), Ok(None));
        assert!(!db.contains(b"missing", 0));
        match db.get(b"l", 0) {
            Some(ValueRef::List(l)) => assert_eq!(l.len(), 2),
            other => panic!("{other:?}"),
        }
        assert_eq!(db.with_hash(b"l", 0, true, |h| h.len()), Err(WrongType));
        set(&mut db, "s", "v", Expiry::Persist);
        assert_eq!(db.with_list(b"s", 0, true, |l| l.len()), Err(WrongType));
        assert_eq!(db.with_hash(b"s", 0, false, |h| h.len()), Err(WrongType));
        // Emptying a list deletes its key.
        db.with_list(b"l", 0, false, |l| l.clear()).unwrap();
        assert!(db.get(b"l", 0).is_none());
        // Creating without adding anything leaves no key.
        db.with_hash(b"h", 0, true, |_| ()).unwrap();
        assert!(db.get(b"h", 0).is_none());
        db.with_hash(b"h", 0, true, |h| h.insert(b"f".to_vec(), b"v".to_vec()))
            .unwrap();
        assert_eq!(db.get(b"h", 0).map(|v| v.type_name()), Some("hash"));
        // SET replaces a hash.
        set(&mut db, "h", "now a string", Expiry::Persist);
        assert_eq!(string(&mut db, "h", 0).unwrap(), b"now a string");
        check_index(&db);
    }

    #[test]
    fn flush_empties_everything() {
        let mut db = Db::new();
        set(&mut db, "a", "1", Expiry::At(5));
        set(&mut db, "b", &"2".repeat(100), Expiry::Persist);
        db.flush();
        assert_eq!((db.len(), db.expires()), (0, 0));
        assert!(db.get(b"a", 0).is_none());
        check_index(&db);
    }

    #[test]
    fn compact_trims_spare_capacity() {
        let mut v = Vec::with_capacity(4096);
        v.extend_from_slice(b"abc");
        assert!(compact(v).capacity() < 64);
        let exact = vec![1u8; 1000];
        assert_eq!(compact(exact).capacity(), 1000);
    }

    fn vm_rss_kb() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// The memory figure quoted in the module docs.
    #[test]
    #[ignore = "slow in debug builds; run with --release -- --ignored --nocapture rss"]
    fn rss_of_a_million_small_keys() {
        let before = vm_rss_kb();
        let mut db = Db::new();
        let mut key = Vec::new();
        for i in 0..1_000_000u32 {
            key.clear();
            key.extend_from_slice(format!("key:{i}").as_bytes());
            db.set_bytes(&key, b"xyz", Expiry::Persist, 0);
        }
        let after = vm_rss_kb();
        println!(
            "1M keys: VmRSS {} kB before, {} kB after, {} kB grown ({:.1} bytes/key)",
            before,
            after,
            after - before,
            (after - before) as f64 * 1024.0 / 1e6
        );
        assert_eq!(db.len(), 1_000_000);
        assert_eq!(string(&mut db, "key:999999", 0).unwrap(), b"xyz");
    }
}
