//! Prompt-prefix reuse (llama-server's `cache_prompt`): after a call, its
//! KV slot keeps the cache of every token it decoded, and remembers those
//! tokens. A new call goes to the free slot whose kept tokens share the
//! longest prefix with its prompt; the engine removes the slot's cache past
//! that prefix and decodes only the rest.
//!
//! A slot's kept tokens are reused only by a call of the same partition
//! (the caller's identity, `WorkerRequest.cache_partition`): another
//! caller's prompt is never reused, so neither the reported cached tokens
//! nor the time to the first token tell one caller about another's prompt.
//!
//! Pure bookkeeping over token ids, so the choice is unit-tested without a
//! model.

/// Where a new call goes, and how much of its prompt is already decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    /// The slot (llama.cpp sequence id).
    pub slot: usize,
    /// Leading prompt tokens whose KV the slot keeps: always less than the
    /// prompt's length, so at least one token is decoded and the call has
    /// logits to sample from.
    pub reused: usize,
}

/// The tokens each slot's KV cache holds, and when each slot was last used.
#[derive(Debug, Clone)]
pub struct Slots<T> {
    kept: Vec<Vec<T>>,
    /// The partition of the call that left each slot's tokens.
    owner: Vec<String>,
    /// Logical clock of the last start or end in each slot (0: never).
    used: Vec<u64>,
    clock: u64,
}

impl<T: PartialEq + Clone> Slots<T> {
    /// `n` empty slots.
    pub fn new(n: usize) -> Self {
        Slots {
            kept: vec![Vec::new(); n],
            owner: vec![String::new(); n],
            used: vec![0; n],
            clock: 0,
        }
    }

    /// The slot among `free` for `prompt` of a call in `partition`: the
    /// longest common prefix with its kept tokens (none with a slot another
    /// partition left); on a tie the least recently used; when none shares
    /// anything, an empty slot before the least recently used one (so kept
    /// prefixes survive for the calls that may want them). `None` when
    /// `free` is empty.
    pub fn choose(&self, free: &[usize], prompt: &[T], partition: &str) -> Option<Choice> {
        let shared = |s: usize| {
            if self.owner[s] == partition {
                common_prefix(&self.kept[s], prompt)
            } else {
                0
            }
        };
        let best = free.iter().copied().max_by_key(|&s| {
            let common = shared(s);
            let empty = self.kept[s].is_empty();
            // Larger is better: longer prefix, then empty, then older, then
            // the lower index (max_by_key keeps the last maximum).
            (
                common,
                empty,
                std::cmp::Reverse(self.used[s]),
                std::cmp::Reverse(s),
            )
        })?;
        let common = shared(best);
        Some(Choice {
            slot: best,
            reused: common.min(prompt.len().saturating_sub(1)),
        })
    }

    /// A call of `partition` starts in `slot` reusing `reused` kept
    /// tokens: the slot's tokens are cut to them (the engine removes the KV
    /// past them), and the slot is the partition's.
    pub fn start(&mut self, slot: usize, reused: usize, partition: &str) {
        self.kept[slot].truncate(reused);
        partition.clone_into(&mut self.owner[slot]);
        self.touch(slot);
    }

    /// A call in `slot` ended with these tokens in its KV cache.
    pub fn keep(&mut self, slot: usize, tokens: Vec<T>) {
        self.kept[slot] = tokens;
        self.touch(slot);
    }

    /// The slot's KV cache was cleared.
    pub fn forget(&mut self, slot: usize) {
        self.kept[slot].clear();
    }

    /// Tokens kept in `slot`.
    pub fn kept(&self, slot: usize) -> &[T] {
        &self.kept[slot]
    }

    fn touch(&mut self, slot: usize) {
        self.clock += 1;
        self.used[slot] = self.clock;
    }
}

/// Length of the common prefix of two token lists.
pub fn common_prefix<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(kept: &[&[i32]]) -> Slots<i32> {
        let mut s = Slots::new(kept.len());
        for (i, k) in kept.iter().enumerate() {
            s.keep(i, k.to_vec());
        }
        s
    }

    #[test]
    fn the_longest_common_prefix_wins() {
        let s = slots(&[&[1, 2, 9], &[1, 2, 3, 4, 7], &[5, 6]]);
        let c = s.choose(&[0, 1, 2], &[1, 2, 3, 4, 5, 6], "").unwrap();
        assert_eq!(c, Choice { slot: 1, reused: 4 });
        // Only free slots count.
        let c = s.choose(&[0, 2], &[1, 2, 3, 4, 5, 6], "").unwrap();
        assert_eq!(c, Choice { slot: 0, reused: 2 });
        assert_eq!(s.choose(&[], &[1], ""), None);
    }

    #[test]
    fn a_tie_goes_to_the_least_recently_used_slot() {
        let mut s = slots(&[&[1, 2, 3], &[1, 2, 4], &[1, 2, 5]]);
        // Slot 0 was kept first, so it is the oldest.
        assert_eq!(s.choose(&[0, 1, 2], &[1, 2, 8], "").unwrap().slot, 0);
        s.keep(0, vec![1, 2, 3]);
        assert_eq!(s.choose(&[0, 1, 2], &[1, 2, 8], "").unwrap().slot, 1);
        s.start(1, 2, "");
        assert_eq!(s.choose(&[0, 1, 2], &[1, 2, 8], "").unwrap().slot, 2);
    }

    #[test]
    fn with_nothing_shared_an_empty_slot_comes_before_the_lru_one() {
        let mut s = slots(&[&[1, 2], &[3, 4], &[]]);
        let c = s.choose(&[0, 1, 2], &[9, 9], "").unwrap();
        assert_eq!(c, Choice { slot: 2, reused: 0 });
        s.keep(2, vec![5]);
        // No empty slot: the least recently used one (slot 0).
        assert_eq!(s.choose(&[0, 1, 2], &[9, 9], "").unwrap().slot, 0);
        // Two never-used empty slots: the lower index.
        let fresh: Slots<i32> = Slots::new(3);
        assert_eq!(fresh.choose(&[1, 2], &[9], "").unwrap().slot, 1);
    }

    #[test]
    fn a_whole_prompt_kept_still_decodes_its_last_token() {
        let s = slots(&[&[1, 2, 3, 4, 5]]);
        // The prompt is a prefix of the kept tokens, or equal to them.
        assert_eq!(s.choose(&[0], &[1, 2, 3], "").unwrap().reused, 2);
        assert_eq!(s.choose(&[0], &[1, 2, 3, 4, 5], "").unwrap().reused, 4);
        assert_eq!(s.choose(&[0], &[1], "").unwrap().reused, 0);
    }

    #[test]
    fn start_cuts_the_kept_tokens_at_the_divergence() {
        let mut s = slots(&[&[1, 2, 3, 4]]);
        let c = s.choose(&[0], &[1, 2, 7, 8], "").unwrap();
        s.start(c.slot, c.reused, "");
        assert_eq!(s.kept(0), &[1, 2]);
        s.forget(0);
        assert!(s.kept(0).is_empty());
        assert_eq!(common_prefix(&[1, 2, 3], &[1, 2]), 2);
        assert_eq!(common_prefix::<i32>(&[], &[1]), 0);
    }

    #[test]
    fn another_partitions_prefix_is_never_reused() {
        let mut s: Slots<i32> = Slots::new(2);
        let c = s.choose(&[0, 1], &[1, 2, 3, 4], "token:alice").unwrap();
        s.start(c.slot, c.reused, "token:alice");
        s.keep(c.slot, vec![1, 2, 3, 4, 5]);
        // Bob's identical prompt shares nothing with Alice's slot: it goes
        // to the empty one and reuses nothing.
        let bob = s.choose(&[0, 1], &[1, 2, 3, 4, 9], "token:bob").unwrap();
        assert_eq!(bob, Choice { slot: 1, reused: 0 });
        // Nor when Alice's slot is the only free one.
        let bob = s.choose(&[0], &[1, 2, 3, 4, 9], "token:bob").unwrap();
        assert_eq!(bob, Choice { slot: 0, reused: 0 });
        s.start(bob.slot, bob.reused, "token:bob");
        assert!(s.kept(0).is_empty(), "Bob's start cut Alice's tokens");
        s.keep(0, vec![1, 2, 3, 4, 9]);
        // The slot is Bob's now: Alice's next call reuses nothing of it.
        let alice = s.choose(&[0], &[1, 2, 3, 4, 5, 6], "token:alice").unwrap();
        assert_eq!(alice.reused, 0);
        let bob = s.choose(&[0], &[1, 2, 3, 4, 9, 7], "token:bob").unwrap();
        assert_eq!(bob.reused, 5);
    }
}
