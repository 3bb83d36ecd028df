//! The cache rule of StreamingLLM in one place: which slot each stream token occupies, which
//! tokens a query attends to, and the position each of them takes (docs/ARCHITECTURE.md).
//!
//! Token n of the stream (n = 0, 1, ...) goes to sink slot n while n < S, otherwise to ring slot
//! S + (n - S) mod W. Query n attends to the sinks {0 .. min(S, n+1)} and to the ring tokens
//! {max(S, n-W+1) ..= n} (the current token counts in W). Positions are indices within the cache:
//! sink m sits at position m, ring token m at S + m - max(S, n-W+1). Positions therefore never
//! exceed S + W - 1, however long the stream runs.

use crate::error::{Error, Result};

/// The four policies of the paper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// First S tokens forever plus the last W.
    Sink { sinks: usize, window: usize },
    /// The last W tokens only (S = 0).
    Window { window: usize },
    /// Every token, absolute positions, up to `max` tokens, then an error.
    Dense { max: usize },
    /// For every token, the model re-run over the last W tokens with positions 0..W-1.
    Recompute { window: usize },
}

impl Policy {
    pub fn name(&self) -> &'static str {
        match self {
            Policy::Sink { .. } => "sink",
            Policy::Window { .. } => "window",
            Policy::Dense { .. } => "dense",
            Policy::Recompute { .. } => "recompute",
        }
    }

    /// The rule of the KV cache this policy streams through. Dense is a window as long as its
    /// maximum (nothing is ever evicted before the stream ends); recompute streams through a dense
    /// cache of W tokens that is refilled for every token.
    pub fn rule(&self) -> CacheRule {
        match *self {
            Policy::Sink { sinks, window } => CacheRule { sinks, window },
            Policy::Window { window } => CacheRule { sinks: 0, window },
            Policy::Dense { max } => CacheRule {
                sinks: 0,
                window: max,
            },
            Policy::Recompute { window } => CacheRule { sinks: 0, window },
        }
    }

    pub fn validate(&self) -> Result<()> {
        let (s, w) = match *self {
            Policy::Sink { sinks, window } => (sinks, window),
            Policy::Window { window } | Policy::Recompute { window } => (0, window),
            Policy::Dense { max } => (0, max),
        };
        if w == 0 {
            return Err(Error::invalid(format!(
                "the {} policy needs a window of at least 1 token (got 0)",
                self.name()
            )));
        }
        if s.checked_add(w).map_or(true, |c| c > 1 << 24) {
            return Err(Error::invalid(format!(
                "cache of {s}+{w} slots is too large"
            )));
        }
        Ok(())
    }
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Policy::Sink { sinks, window } => write!(f, "sink {sinks}+{window}"),
            Policy::Window { window } => write!(f, "window {window}"),
            Policy::Dense { max } => write!(f, "dense (up to {max})"),
            Policy::Recompute { window } => write!(f, "recompute {window}"),
        }
    }
}

/// S sink slots followed by a ring of W slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheRule {
    pub sinks: usize,
    pub window: usize,
}

impl CacheRule {
    pub fn slots(&self) -> usize {
        self.sinks + self.window
    }

    /// The slot stream token `m` is written to.
    pub fn slot(&self, m: u64) -> usize {
        let s = self.sinks as u64;
        if m < s {
            m as usize
        } else {
            (s + (m - s) % self.window as u64) as usize
        }
    }

    /// First ring token query `n` sees.
    pub fn ring_start(&self, n: u64) -> u64 {
        (self.sinks as u64).max((n + 1).saturating_sub(self.window as u64))
    }

    /// The tokens query `n` attends to, oldest first, with their positions (0, 1, 2, ...).
    pub fn attended(&self, n: u64) -> impl Iterator<Item = (u64, usize)> {
        let sinks = (self.sinks as u64).min(n + 1);
        let lo = self.ring_start(n);
        (0..sinks)
            .chain(lo.max(sinks)..=n)
            .enumerate()
            .map(|(p, m)| (m, p))
    }

    /// Number of tokens query `n` attends to (its own position is this minus one).
    pub fn attended_len(&self, n: u64) -> usize {
        let sinks = (self.sinks as u64).min(n + 1);
        let lo = self.ring_start(n).max(sinks).min(n + 1);
        (sinks + (n + 1 - lo)) as usize
    }

    /// Occupied slots once `count` tokens have been streamed.
    pub fn fill(&self, count: u64) -> usize {
        count.min(self.slots() as u64) as usize
    }

    /// The ring slot the next token will be written to (meaningful once the sinks are full).
    pub fn write_head(&self, count: u64) -> usize {
        self.slot(count.max(self.sinks as u64))
    }

    /// Which stream token each slot holds after `count` tokens (None for empty slots).
    pub fn slot_tokens(&self, count: u64) -> Vec<Option<u64>> {
        let mut out = vec![None; self.slots()];
        let lo = if count == 0 {
            0
        } else {
            self.ring_start(count - 1)
        };
        let sinks = (self.sinks as u64).min(count);
        for m in (0..sinks).chain(lo.max(sinks)..count) {
            out[self.slot(m)] = Some(m);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The paper's example: S=4, W=4, cache holds [0,1,2,3, 6,7,8] and token 9 is decoded:
    /// positions [0,1,2,3, 4,5,6, 7].
    #[test]
    fn paper_example() {
        let r = CacheRule {
            sinks: 4,
            window: 4,
        };
        let seen: Vec<_> = r.attended(9).collect();
        assert_eq!(
            seen,
            vec![
                (0, 0),
                (1, 1),
                (2, 2),
                (3, 3),
                (6, 4),
                (7, 5),
                (8, 6),
                (9, 7)
            ]
        );
        assert_eq!(r.attended_len(9), 8);
        // token 9 fills the ring's fourth slot... slots of 6,7,8,9 are a permutation of 4..8
        let mut slots: Vec<_> = (6..=9).map(|m| r.slot(m)).collect();
        slots.sort();
        assert_eq!(slots, vec![4, 5, 6, 7]);
    }

    #[test]
    fn filling() {
        let r = CacheRule {
            sinks: 2,
            window: 3,
        };
        for n in 0..5u64 {
            let seen: Vec<_> = r.attended(n).collect();
            // while the cache is not full, everything is seen at its absolute position
            assert_eq!(seen, (0..=n).map(|m| (m, m as usize)).collect::<Vec<_>>());
            assert_eq!(r.slot(n), n as usize);
        }
        assert_eq!(r.fill(0), 0);
        assert_eq!(r.fill(3), 3);
        assert_eq!(r.fill(100), 5);
    }

    #[test]
    fn window_only_and_dense() {
        let w = CacheRule {
            sinks: 0,
            window: 3,
        };
        assert_eq!(
            w.attended(10).collect::<Vec<_>>(),
            vec![(8, 0), (9, 1), (10, 2)]
        );
        let d = CacheRule {
            sinks: 0,
            window: 1000,
        };
        assert_eq!(d.attended(10).map(|x| x.1).last(), Some(10));
    }

    /// Thousands of wraps: slots never collide among the attended set, positions stay below S+W,
    /// and the slot of every attended token still holds that token.
    #[test]
    fn many_wraps() {
        for &(s, w) in &[(4usize, 60usize), (0, 7), (1, 1), (3, 2), (4, 1020)] {
            let r = CacheRule {
                sinks: s,
                window: w,
            };
            let mut holder: Vec<Option<u64>> = vec![None; r.slots()];
            let total = (w as u64) * 2500 + 17;
            let step = if w > 100 { 97 } else { 1 };
            for n in 0..total {
                holder[r.slot(n)] = Some(n);
                if n % step != 0 && n != total - 1 {
                    continue;
                }
                let seen: Vec<_> = r.attended(n).collect();
                assert_eq!(seen.len(), r.attended_len(n));
                assert!(seen.len() <= s + w);
                for (i, &(m, p)) in seen.iter().enumerate() {
                    assert_eq!(p, i);
                    assert_eq!(
                        holder[r.slot(m)],
                        Some(m),
                        "slot of {m} overwritten at n={n}"
                    );
                }
                assert_eq!(seen.last().unwrap().0, n);
                assert_eq!(r.slot_tokens(n + 1), holder);
            }
        }
    }
}
