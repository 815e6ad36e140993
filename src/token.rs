//! Typed ids for the loop's entries, and their mapping to mio tokens.
//!
//! Every listener, connection and datagram socket lives in one slab slot. A slot is reused
//! after its entry is freed, so an id is the slot *and* the generation the entry got when it
//! was inserted. The loop checks both before it acts on an id or an event: an event or a call
//! meant for a closed entry never reaches the entry that took its slot.

use mio::Token;
use std::fmt;

const _: () = assert!(
    usize::BITS >= 64,
    "evloop packs slot and generation into a 64-bit mio Token"
);

/// Slot and generation of one slab entry. Generation 0 is never given to an entry: tokens
/// with generation 0 are the loop's own (the waker, the signal source).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Key {
    pub(crate) slot: u32,
    pub(crate) generation: u32,
}

impl Key {
    pub(crate) fn token(self) -> Token {
        Token(((self.generation as usize) << 32) | self.slot as usize)
    }

    pub(crate) fn from_token(token: Token) -> Key {
        Key {
            slot: token.0 as u32,
            generation: (token.0 >> 32) as u32,
        }
    }
}

/// The waker's token: the cross-thread handle posts work through it.
pub(crate) const WAKER: Token = Token(0);
/// The token of the signal source, when one is installed.
pub(crate) const SIGNALS: Token = Token(1);

macro_rules! ids {
    ($($(#[$doc:meta])* $name:ident, $tag:literal;)*) => {$(
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub(crate) Key);

        impl $name {
            /// The slab slot. Slots are reused after an entry closes: to key a map, use the
            /// whole id, which also holds the generation.
            pub fn slot(self) -> usize {
                self.0.slot as usize
            }

            /// The generation the entry got when it took its slot; never 0.
            pub fn generation(self) -> u32 {
                self.0.generation
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($tag, "#{}.{}"), self.0.slot, self.0.generation)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(self, f)
            }
        }
    )*};
}

ids! {
    /// Names one TCP or Unix stream connection, accepted or outbound.
    ConnId, "conn";
    /// Names one TCP or Unix stream listener.
    ListenerId, "listener";
    /// Names one UDP or Unix datagram socket.
    UdpId, "udp";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trips_slot_and_generation() {
        for (slot, generation) in [(0, 1), (7, 3), (u32::MAX, u32::MAX), (12345, 1 << 31)] {
            let key = Key { slot, generation };
            assert_eq!(Key::from_token(key.token()), key);
        }
    }

    #[test]
    fn reserved_tokens_have_generation_zero() {
        assert_eq!(Key::from_token(WAKER).generation, 0);
        assert_eq!(Key::from_token(SIGNALS).generation, 0);
    }

    #[test]
    fn ids_show_slot_and_generation() {
        let id = ConnId(Key {
            slot: 4,
            generation: 9,
        });
        assert_eq!(format!("{id}"), "conn#4.9");
        assert_eq!((id.slot(), id.generation()), (4, 9));
    }
}
