//! Which KV blocks are free, shared or cached.
//!
//! Every block has a reference count (sequences whose block table names it).
//! A block whose count drops to 0 is either plain free or, when it holds a
//! full block of known tokens (registered for prefix caching), kept as
//! evictable: a later sequence with the same prefix takes it back instead of
//! recomputing it; allocation evicts the least recently released one only
//! when no plain free block is left.
//!
//! A cached block is named by its tokens and its parent block (id and
//! generation: a block's generation changes each time it is reallocated, so
//! a stale parent never matches), which chains a block to its whole prefix
//! exactly, without trusting a hash.

use std::collections::{BTreeMap, HashMap};

/// Identity of a full block of tokens after a given prefix.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct BlockKey {
    /// (block id, generation) of the previous block; `None` for the first.
    parent: Option<(u32, u64)>,
    tokens: Vec<u32>,
}

pub(crate) struct BlockManager {
    block_size: usize,
    refcount: Vec<u32>,
    generation: Vec<u64>,
    /// Refcount 0, nothing cached: allocated first.
    free: Vec<u32>,
    /// Refcount 0, cached: release tick -> block (oldest first).
    evictable: BTreeMap<u64, u32>,
    released_at: Vec<u64>,
    cached: HashMap<BlockKey, u32>,
    key_of: Vec<Option<BlockKey>>,
    tick: u64,
}

impl BlockManager {
    pub(crate) fn new(n_blocks: usize, block_size: usize) -> Self {
        Self {
            block_size,
            refcount: vec![0; n_blocks],
            generation: vec![0; n_blocks],
            // Reversed so that block 0 is handed out first.
            free: (0..n_blocks as u32).rev().collect(),
            evictable: BTreeMap::new(),
            released_at: vec![0; n_blocks],
            cached: HashMap::new(),
            key_of: vec![None; n_blocks],
            tick: 0,
        }
    }

    pub(crate) fn block_size(&self) -> usize {
        self.block_size
    }

    pub(crate) fn n_blocks(&self) -> usize {
        self.refcount.len()
    }

    /// Blocks that an allocation can take (free or evictable).
    pub(crate) fn n_available(&self) -> usize {
        self.free.len() + self.evictable.len()
    }

    /// Blocks some sequence holds.
    pub(crate) fn n_used(&self) -> usize {
        self.n_blocks() - self.n_available()
    }

    /// A block for one sequence (refcount 1), evicting the least recently
    /// released cached block when no plain free one is left.
    pub(crate) fn allocate(&mut self) -> Option<u32> {
        let b = match self.free.pop() {
            Some(b) => b,
            None => {
                let (_, b) = self.evictable.pop_first()?;
                if let Some(key) = self.key_of[b as usize].take() {
                    self.cached.remove(&key);
                }
                b
            }
        };
        let i = b as usize;
        self.generation[i] += 1;
        self.refcount[i] = 1;
        Some(b)
    }

    /// Drops one reference to `b`.
    pub(crate) fn release(&mut self, b: u32) {
        let i = b as usize;
        debug_assert!(self.refcount[i] > 0, "block {b} released twice");
        self.refcount[i] = self.refcount[i].saturating_sub(1);
        if self.refcount[i] > 0 {
            return;
        }
        if self.key_of[i].is_some() {
            self.tick += 1;
            self.released_at[i] = self.tick;
            self.evictable.insert(self.tick, b);
        } else {
            self.free.push(b);
        }
    }

    fn key(&self, parent: Option<u32>, tokens: &[u32]) -> BlockKey {
        BlockKey {
            parent: parent.map(|p| (p, self.generation[p as usize])),
            tokens: tokens.to_vec(),
        }
    }

    /// The cached block holding `tokens` after the block `parent` (`None`:
    /// at the start), with one more reference taken.
    pub(crate) fn lookup(&mut self, parent: Option<u32>, tokens: &[u32]) -> Option<u32> {
        let b = *self.cached.get(&self.key(parent, tokens))?;
        let i = b as usize;
        if self.refcount[i] == 0 {
            self.evictable.remove(&self.released_at[i]);
        }
        self.refcount[i] += 1;
        Some(b)
    }

    /// Records that block `b` (held by the caller) holds the full block
    /// `tokens` after `parent`. A block already cached under that key is
    /// kept, and `b` stays uncached.
    pub(crate) fn register(&mut self, b: u32, parent: Option<u32>, tokens: &[u32]) {
        if tokens.len() != self.block_size || self.key_of[b as usize].is_some() {
            return;
        }
        let key = self.key(parent, tokens);
        if self.cached.contains_key(&key) {
            return;
        }
        self.cached.insert(key.clone(), b);
        self.key_of[b as usize] = Some(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocate_release_and_exhaustion() {
        let mut m = BlockManager::new(3, 4);
        let got: Vec<u32> = (0..3).filter_map(|_| m.allocate()).collect();
        assert_eq!(got, vec![0, 1, 2]);
        assert_eq!(m.allocate(), None);
        assert_eq!(m.n_used(), 3);
        m.release(1);
        assert_eq!(m.n_available(), 1);
        assert_eq!(m.allocate(), Some(1));
    }

    #[test]
    fn prefix_chain_hits_and_lru_eviction() {
        let mut m = BlockManager::new(3, 2);
        let (a, b) = (m.allocate().unwrap(), m.allocate().unwrap());
        m.register(a, None, &[1, 2]);
        m.register(b, Some(a), &[3, 4]);
        m.release(a);
        m.release(b);
        // Both are cached, nothing is held.
        assert_eq!((m.n_used(), m.n_available()), (0, 3));
        assert_eq!(m.lookup(None, &[1, 2]), Some(a));
        assert_eq!(m.lookup(Some(a), &[3, 4]), Some(b));
        assert_eq!(m.lookup(Some(a), &[3, 5]), None);
        assert_eq!(m.lookup(None, &[3, 4]), None, "same tokens, other parent");
        m.release(b);
        m.release(a);
        // b was released first: the free block goes first, then b, then a.
        let c = m.allocate().unwrap();
        assert!(c != a && c != b);
        assert_eq!(m.allocate(), Some(b));
        assert_eq!(m.lookup(Some(a), &[3, 4]), None, "evicted");
        // a's generation changes when it is reused: its old children are
        // unreachable even if a is registered again.
        assert_eq!(m.allocate(), Some(a));
        assert_eq!(m.lookup(None, &[1, 2]), None);
    }

    #[test]
    fn shared_block_survives_one_release() {
        let mut m = BlockManager::new(2, 2);
        let a = m.allocate().unwrap();
        m.register(a, None, &[7, 7]);
        assert_eq!(m.lookup(None, &[7, 7]), Some(a));
        m.release(a);
        assert_eq!(m.n_used(), 1);
        m.release(a);
        assert_eq!(m.n_used(), 0);
        // Duplicate registration keeps the first block.
        let b = m.allocate().unwrap();
        m.register(b, None, &[7, 7]);
        assert_eq!(m.lookup(None, &[7, 7]), Some(a));
    }
}
