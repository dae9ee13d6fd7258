//! The decisions a verifier remembers so that later completions and
//! approvals can be linked to them: every decision still open (allowed and
//! not finished) or closed without running (denied, approval refused).
//!
//! A log of a million `check()` calls holds a million open decisions, so an
//! entry is 32 bytes: the id (a UUID's 16 bytes, or for any other id the
//! first 16 bytes of its SHA-256, with the name kept aside to print it) and a
//! 120-bit fingerprint of the decision's digest plus its state. A completion
//! links only when it names the id and a digest with the same fingerprint:
//! forging a digest that differs but matches takes a second preimage of
//! SHA-256 cut to 120 bits. The table is split in 256 shards (by a random
//! byte of the id), so growing never holds two copies of the whole table.

use std::collections::{BinaryHeap, HashMap};

use sha2::{Digest, Sha256};

const SHARDS: usize = 256;

type Key = [u8; 16];

/// A decision's digest fingerprint and whether its call may still finish.
#[derive(Clone, Copy)]
pub(super) struct Entry {
    fingerprint: [u8; 15],
    open: u8,
}

impl Entry {
    pub fn is_open(&self) -> bool {
        self.open != 0
    }

    pub fn close(&mut self) {
        self.open = 0;
    }
}

pub(super) struct Authorizations {
    shards: Vec<HashMap<Key, Entry>>,
    /// Ids that are not UUIDs, by key, to name them in a report.
    names: HashMap<Key, String>,
}

impl Default for Authorizations {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| HashMap::new()).collect(),
            names: HashMap::new(),
        }
    }
}

/// The key of a record id: a canonical (lowercase, hyphenated) UUID's bytes,
/// else a hash; `true` when it is a hash.
fn key_of(id: &str) -> (Key, bool) {
    if let Ok(u) = uuid::Uuid::try_parse(id) {
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        if u.hyphenated().encode_lower(&mut buf) == id {
            return (*u.as_bytes(), false);
        }
    }
    let mut out = [0u8; 16];
    out.copy_from_slice(&Sha256::digest(id.as_bytes())[..16]);
    (out, true)
}

fn fingerprint(digest: &str) -> [u8; 15] {
    let mut out = [0u8; 15];
    out.copy_from_slice(&Sha256::digest(digest.as_bytes())[..15]);
    out
}

impl Authorizations {
    fn shard(&mut self, key: &Key) -> &mut HashMap<Key, Entry> {
        let i = usize::from(key[15]) % SHARDS;
        &mut self.shards[i]
    }

    /// Remembers a decision; `false` when its id was seen before.
    pub fn insert(&mut self, id: &str, digest: &str, open: bool) -> bool {
        let (key, hashed) = key_of(id);
        let entry = Entry {
            fingerprint: fingerprint(digest),
            open: u8::from(open),
        };
        if self.shard(&key).insert(key, entry).is_some() {
            return false;
        }
        if hashed {
            self.names.insert(key, id.to_string());
        }
        true
    }

    /// The decision `id`, when `digest` is the digest it was recorded with.
    pub fn link(&mut self, id: &str, digest: &str) -> Option<&mut Entry> {
        let (key, _) = key_of(id);
        let fp = fingerprint(digest);
        self.shard(&key)
            .get_mut(&key)
            .filter(|e| e.fingerprint == fp)
    }

    /// Forgets a finished decision (so memory follows the calls still open).
    pub fn remove(&mut self, id: &str) {
        let (key, hashed) = key_of(id);
        self.shard(&key).remove(&key);
        if hashed {
            self.names.remove(&key);
        }
    }

    /// How many decisions are open, and the ids of the first `listed` of them
    /// (UUIDs first, in byte order, which for UUIDv7 is time order), sorted.
    pub fn open(&self, listed: usize) -> (u64, Vec<String>) {
        let mut count = 0u64;
        // The `listed` smallest (named, key) pairs: a max-heap of that size.
        let mut heap: BinaryHeap<(bool, Key)> = BinaryHeap::with_capacity(listed + 1);
        for (key, _) in self
            .shards
            .iter()
            .flat_map(HashMap::iter)
            .filter(|(_, e)| e.is_open())
        {
            count += 1;
            heap.push((self.names.contains_key(key), *key));
            if heap.len() > listed {
                heap.pop();
            }
        }
        let mut ids: Vec<String> = heap
            .into_iter()
            .map(|(named, key)| match (named, self.names.get(&key)) {
                (true, Some(name)) => name.clone(),
                _ => uuid::Uuid::from_bytes(key).to_string(),
            })
            .collect();
        ids.sort();
        (count, ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_by_id_and_digest_and_lists_the_earliest_open() {
        let mut a = Authorizations::default();
        let ids: Vec<String> = (0..3000)
            .map(|_| uuid::Uuid::now_v7().to_string())
            .collect();
        for (i, id) in ids.iter().enumerate() {
            assert!(a.insert(id, &format!("d{i}"), i % 3 != 0));
        }
        assert!(!a.insert(&ids[5], "d5", true), "a duplicate id");
        assert!(a.insert("not-a-uuid", "dx", true));
        assert!(a.link(&ids[1], "d2").is_none(), "another decision's digest");
        assert!(a.link(&ids[1], "d1").is_some_and(|e| e.is_open()));
        assert!(a.link(&ids[0], "d0").is_some_and(|e| !e.is_open()));
        a.remove(&ids[1]);
        assert!(a.link(&ids[1], "d1").is_none());
        let (count, listed) = a.open(10);
        assert_eq!(count, 3000 - 1000 - 1 + 1);
        // UUIDv7 order is creation order: the earliest open ones, 1 removed.
        let expected: Vec<String> = ids
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 3 != 0 && *i != 1)
            .map(|(_, id)| id.clone())
            .take(10)
            .collect();
        assert_eq!(listed, expected);
        let (_, all) = a.open(5000);
        assert!(all.contains(&"not-a-uuid".to_string()));
    }
}
