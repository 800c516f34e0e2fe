//! The order in which a model's waiting calls are served: deficit round
//! robin over client classes, priority then arrival within a class. Pure:
//! no clock, no locks, no tasks.
//!
//! Every call costs 1 and the quantum is 1, so a class's deficit is the
//! number of calls it may still be served in its current visit: each visit
//! grants `weight`, and a class whose queue empties loses what is left
//! (classic DRR). With every class backlogged, a round serves each class
//! exactly its weight; a backlogged class waits at most the sum of the
//! other classes' weights between two of its services.

use std::collections::BTreeMap;

/// Where a waiting call is, to take it out again (its caller left).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    /// Its class.
    pub class: usize,
    rank: u8,
    seq: u64,
}

/// Which bound refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// The class already has `bound` calls waiting.
    Class {
        /// The class.
        class: usize,
        /// Its bound.
        bound: usize,
    },
    /// The model already has `bound` calls waiting.
    Total {
        /// The model's bound.
        bound: usize,
    },
}

#[derive(Debug)]
struct Class<T> {
    weight: u32,
    bound: usize,
    /// Calls this class may still be served in its current visit.
    deficit: u32,
    /// By (rank, arrival): rank 0 first.
    queue: BTreeMap<(u8, u64), T>,
}

/// The waiting calls of one model.
#[derive(Debug)]
pub struct Drr<T> {
    classes: Vec<Class<T>>,
    total: usize,
    total_bound: usize,
    cursor: usize,
    seq: u64,
}

impl<T> Drr<T> {
    /// Classes as (weight, bound); `total_bound` over all of them.
    pub fn new(classes: &[(u32, usize)], total_bound: usize) -> Drr<T> {
        Drr {
            classes: classes
                .iter()
                .map(|&(weight, bound)| Class {
                    weight: weight.max(1),
                    bound,
                    deficit: 0,
                    queue: BTreeMap::new(),
                })
                .collect(),
            total: 0,
            total_bound,
            cursor: 0,
            seq: 0,
        }
    }

    /// Calls waiting.
    pub fn len(&self) -> usize {
        self.total
    }

    /// No call waits.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Calls of `class` waiting.
    pub fn class_len(&self, class: usize) -> usize {
        self.classes.get(class).map_or(0, |c| c.queue.len())
    }

    /// Queues `item` in `class` at `rank` (0 is served first), or says
    /// which bound is reached: the class's when it is the tighter one,
    /// else the model's.
    pub fn push(&mut self, class: usize, rank: u8, item: T) -> Result<Key, Full> {
        let c = &mut self.classes[class];
        let class_full = c.queue.len() >= c.bound;
        if class_full && c.bound < self.total_bound {
            return Err(Full::Class {
                class,
                bound: c.bound,
            });
        }
        if self.total >= self.total_bound {
            return Err(Full::Total {
                bound: self.total_bound,
            });
        }
        if class_full {
            return Err(Full::Class {
                class,
                bound: c.bound,
            });
        }
        self.seq += 1;
        c.queue.insert((rank, self.seq), item);
        self.total += 1;
        Ok(Key {
            class,
            rank,
            seq: self.seq,
        })
    }

    /// Takes a waiting call out (its caller left); `None` when it was
    /// served already.
    pub fn remove(&mut self, key: Key) -> Option<T> {
        let n = self.classes.len();
        let c = self.classes.get_mut(key.class)?;
        let item = c.queue.remove(&(key.rank, key.seq))?;
        self.total -= 1;
        if c.queue.is_empty() {
            // Its visit is over: a class emptied by its callers leaving
            // and filled again waits for its next turn, instead of a
            // fresh quantum at the cursor (which would let it take more
            // than its weight in one round).
            c.deficit = 0;
            if self.cursor == key.class {
                self.cursor = (key.class + 1) % n;
            }
        }
        Some(item)
    }

    /// The next call to serve.
    pub fn pop(&mut self) -> Option<(usize, T)> {
        if self.total == 0 {
            return None;
        }
        let n = self.classes.len();
        loop {
            let i = self.cursor;
            let c = &mut self.classes[i];
            if let Some((_, item)) = c.queue.pop_first() {
                if c.deficit == 0 {
                    // A new visit.
                    c.deficit = c.weight;
                }
                c.deficit -= 1;
                if c.deficit == 0 || c.queue.is_empty() {
                    c.deficit = 0;
                    self.cursor = (i + 1) % n;
                }
                self.total -= 1;
                return Some((i, item));
            }
            c.deficit = 0;
            self.cursor = (i + 1) % n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_flooding_class_waits_its_turn() {
        // Class 0 (weight 1) has 5 waiting, then class 1 gets one call.
        let mut d = Drr::new(&[(1, 5), (1, 5)], 100);
        for i in 0..5 {
            d.push(0, 1, i).expect("room");
        }
        assert_eq!(d.push(0, 1, 99), Err(Full::Class { class: 0, bound: 5 }));
        d.push(1, 1, 100).expect("room");
        let order: Vec<_> = std::iter::from_fn(|| d.pop()).collect();
        assert_eq!(order, [(0, 0), (1, 100), (0, 1), (0, 2), (0, 3), (0, 4)]);
        assert!(d.is_empty());
    }

    #[test]
    fn weights_share_rounds_and_priority_goes_first() {
        let mut d = Drr::new(&[(3, 10), (1, 10)], 100);
        for i in 0..6 {
            d.push(0, 1, i).expect("room");
            d.push(1, 1, 10 + i).expect("room");
        }
        let classes: Vec<_> = (0..8).map(|_| d.pop().expect("waiting").0).collect();
        assert_eq!(classes, [0, 0, 0, 1, 0, 0, 0, 1]);
        let mut d = Drr::new(&[(1, 10)], 100);
        d.push(0, 2, "low").expect("room");
        d.push(0, 1, "normal").expect("room");
        d.push(0, 0, "high").expect("room");
        d.push(0, 1, "normal2").expect("room");
        let order: Vec<_> = std::iter::from_fn(|| d.pop().map(|x| x.1)).collect();
        assert_eq!(order, ["high", "normal", "normal2", "low"]);
    }

    #[test]
    fn the_tighter_bound_is_named() {
        // A class as long as the model's queue: the model's bound is named.
        let mut d = Drr::new(&[(1, 2)], 2);
        d.push(0, 1, 1).expect("room");
        d.push(0, 1, 2).expect("room");
        assert_eq!(d.push(0, 1, 3), Err(Full::Total { bound: 2 }));
    }

    #[test]
    fn the_total_bound_and_removal() {
        let mut d = Drr::new(&[(1, 10), (1, 10)], 3);
        let a = d.push(0, 1, 'a').expect("room");
        d.push(1, 1, 'b').expect("room");
        d.push(1, 1, 'c').expect("room");
        assert_eq!(d.push(0, 1, 'd'), Err(Full::Total { bound: 3 }));
        assert_eq!(d.remove(a), Some('a'));
        assert_eq!(d.remove(a), None, "removed once");
        assert_eq!((d.len(), d.class_len(0), d.class_len(1)), (2, 0, 2));
        d.push(0, 1, 'd').expect("room again");
        assert_eq!(d.len(), 3);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push(usize, u8),
        Pop,
        Remove(usize),
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        prop::collection::vec(
            prop_oneof![
                (0usize..4, 0u8..3).prop_map(|(c, r)| Op::Push(c, r)),
                Just(Op::Pop),
                (0usize..64).prop_map(Op::Remove),
            ],
            0..400,
        )
    }

    proptest! {
        /// Bounds hold; no backlogged class waits more than the other
        /// classes' weights between two services (no starvation); within
        /// a class, rank then arrival.
        #[test]
        fn bounds_hold_and_no_class_starves(
            weights in prop::collection::vec(1u32..5, 4),
            bounds in prop::collection::vec(1usize..12, 4),
            total in 1usize..30,
            ops in ops(),
        ) {
            let spec: Vec<_> = weights.iter().copied().zip(bounds.iter().copied()).collect();
            let mut d = Drr::new(&spec, total);
            let mut keys = Vec::new();
            // Pops since each class was last served or became backlogged.
            let mut waited = [0u32; 4];
            let sum: u32 = weights.iter().sum();
            for op in ops {
                match op {
                    Op::Push(c, r) => {
                        let was = d.class_len(c);
                        match d.push(c, r, (r, keys.len())) {
                            Ok(k) => keys.push(k),
                            Err(Full::Class { class, bound }) => {
                                prop_assert_eq!(class, c);
                                prop_assert_eq!(d.class_len(c), bound);
                            }
                            Err(Full::Total { bound }) => prop_assert_eq!(d.len(), bound),
                        }
                        if was == 0 {
                            waited[c] = 0;
                        }
                    }
                    Op::Remove(i) => {
                        if let Some(k) = keys.get(i).copied() {
                            let _ = d.remove(k);
                        }
                    }
                    Op::Pop => {
                        let before: Vec<_> = (0..4).map(|c| d.class_len(c)).collect();
                        let best: Vec<_> = (0..4).map(|c| d.classes[c].queue.keys().next().copied()).collect();
                        if let Some((c, (rank, _))) = d.pop() {
                            prop_assert_eq!(Some(rank), best[c].map(|k| k.0), "rank order");
                            waited[c] = 0;
                            for o in 0..4 {
                                if o != c && before[o] > 0 {
                                    waited[o] += 1;
                                    prop_assert!(waited[o] <= sum - weights[o],
                                        "class {} waited {} pops (weights {:?})", o, waited[o], weights);
                                }
                            }
                        } else {
                            prop_assert!(d.is_empty());
                        }
                    }
                }
                prop_assert!(d.len() <= total);
                prop_assert_eq!(d.len(), (0..4).map(|c| d.class_len(c)).sum::<usize>());
                for (c, bound) in bounds.iter().enumerate() {
                    prop_assert!(d.class_len(c) <= *bound);
                }
            }
        }

        /// With every class backlogged, R rounds serve each class R times
        /// its weight, give or take one visit.
        #[test]
        fn weights_are_respected(
            weights in prop::collection::vec(1u32..6, 1..5),
            rounds in 1u32..8,
        ) {
            let n = weights.len();
            let spec: Vec<_> = weights.iter().map(|&w| (w, 10_000)).collect();
            let mut d = Drr::new(&spec, 100_000);
            for c in 0..n {
                for i in 0..200 {
                    d.push(c, 1, i).expect("room");
                }
            }
            let sum: u32 = weights.iter().sum();
            let mut served = vec![0u32; n];
            for _ in 0..rounds * sum {
                served[d.pop().expect("backlogged").0] += 1;
            }
            for c in 0..n {
                prop_assert_eq!(served[c], rounds * weights[c], "class {} of {:?}", c, weights);
            }
        }
    }
}
