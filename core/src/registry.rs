//! The reader registry: where each live reader stands, and which batches all have passed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use crate::error::{Error, Result};

/// The position of one reader, shared between the reader and the registry.
#[derive(Debug)]
pub(crate) struct ReaderSlot {
    next: AtomicU64,
}

impl ReaderSlot {
    /// Record that the reader has passed every batch before `position`.
    pub fn advance_to(&self, position: u64) {
        self.next.store(position, Ordering::Release);
    }
}

#[derive(Debug)]
pub(crate) struct ReaderRegistry {
    max_readers: Option<u64>,
    created: u64,
    live: Vec<Weak<ReaderSlot>>,
    evicted_below: u64,
}

impl ReaderRegistry {
    pub fn new(max_readers: Option<u64>) -> Self {
        Self {
            max_readers,
            created: 0,
            live: Vec::new(),
            evicted_below: 0,
        }
    }

    /// Whether readers are capped (`max_readers`), so that passed batches are evicted.
    pub fn caps(&self) -> bool {
        self.max_readers.is_some()
    }

    pub fn created(&self) -> u64 {
        self.created
    }

    pub fn live(&mut self) -> u64 {
        self.prune();
        self.live.len() as u64
    }

    /// Claim a reader slot starting at `start`.
    pub fn register(&mut self, start: u64) -> Result<Arc<ReaderSlot>> {
        if let Some(max) = self.max_readers {
            if self.created >= max {
                return Err(Error::ReaderCap {
                    max_readers: max,
                    evicted_below: self.evicted_below,
                });
            }
        }
        self.prune();
        let slot = Arc::new(ReaderSlot {
            next: AtomicU64::new(start),
        });
        self.live.push(Arc::downgrade(&slot));
        self.created += 1;
        Ok(slot)
    }

    /// The first position some reader may still need, when batches before it can go.
    ///
    /// Until all `max_readers` readers exist, a future reader may start at 0, so nothing goes.
    pub fn evictable_below(&mut self, frontier: u64) -> Option<u64> {
        let max = self.max_readers?;
        if self.created < max {
            return None;
        }
        self.prune();
        let needed = self
            .live
            .iter()
            .filter_map(Weak::upgrade)
            .map(|slot| slot.next.load(Ordering::Acquire))
            .fold(frontier, u64::min);
        (needed > self.evicted_below).then_some(needed)
    }

    /// The position of the live reader furthest ahead that has not finished; 0 with none.
    pub fn fastest_position(&mut self) -> u64 {
        self.prune();
        self.live
            .iter()
            .filter_map(Weak::upgrade)
            .map(|slot| slot.next.load(Ordering::Acquire))
            .filter(|&position| position != u64::MAX)
            .max()
            .unwrap_or(0)
    }

    pub fn evicted_below(&self) -> u64 {
        self.evicted_below
    }

    pub fn mark_evicted_below(&mut self, position: u64) {
        self.evicted_below = self.evicted_below.max(position);
    }

    fn prune(&mut self) {
        self.live.retain(|slot| slot.strong_count() > 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_evicts_until_every_reader_exists() {
        let mut registry = ReaderRegistry::new(Some(2));
        let first = registry.register(0).unwrap();
        first.advance_to(5);
        assert_eq!(registry.evictable_below(10), None);
        let second = registry.register(0).unwrap();
        second.advance_to(3);
        assert_eq!(registry.evictable_below(10), Some(3));
        registry.mark_evicted_below(3);
        drop(second);
        assert_eq!(registry.evictable_below(10), Some(5));
        let refused = registry.register(0).unwrap_err();
        let expected = Error::ReaderCap {
            max_readers: 2,
            evicted_below: 3,
        };
        assert_eq!(refused, expected, "cap of 2 reached");
        let text = refused.to_string();
        assert!(
            text.contains("max_readers=2") && text.contains("before 3 were evicted"),
            "{text}"
        );
    }
}
