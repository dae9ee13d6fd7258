//! The unsigned records a verifier has seen and no checkpoint has sealed
//! yet, kept as runs of consecutive `seq`s (a checkpoint-mode writer's
//! records come in runs: one entry per run, not per record).

use std::collections::BTreeMap;

/// Consecutive unsigned records under one key id.
#[derive(Clone, Copy)]
struct Run {
    last: u64,
    /// The line of the run's first record (lines advance with `seq`).
    line: u64,
    kid: usize,
}

/// Why a checkpoint cannot seal a range it names.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum SealError {
    /// Some seq in the range is not an unsigned, unsealed record.
    NotAllUnsealed,
    /// This seq (the first such) was written under another key id.
    OtherKey(u64),
}

/// Runs by their first `seq`.
#[derive(Default)]
pub(super) struct Unsealed {
    runs: BTreeMap<u64, Run>,
}

impl Unsealed {
    /// Notes the unsigned record `seq` on `line`, under key id index `kid`;
    /// `seq` is above every seq noted before.
    pub fn insert(&mut self, seq: u64, line: u64, kid: usize) {
        if let Some(mut last) = self.runs.last_entry() {
            let offset = seq.wrapping_sub(*last.key());
            let run = last.get_mut();
            if run.kid == kid
                && run.last.checked_add(1) == Some(seq)
                && run.line.checked_add(offset) == Some(line)
            {
                run.last = seq;
                return;
            }
        }
        self.runs.insert(
            seq,
            Run {
                last: seq,
                line,
                kid,
            },
        );
    }

    /// Seals `first..=last`, which must all be unsealed records under `kid`
    /// (nothing changes otherwise).
    pub fn seal(&mut self, first: u64, last: u64, kid: usize) -> Result<(), SealError> {
        let start = match self.runs.range(..=first).next_back() {
            Some((&s, run)) if run.last >= first => s,
            _ => first,
        };
        let mut covered = 0u64;
        let mut other_key = None;
        let mut touched = Vec::new();
        for (&s, run) in self.runs.range(start..=last) {
            let (lo, hi) = (s.max(first), run.last.min(last));
            covered += hi - lo + 1;
            if run.kid != kid && other_key.is_none() {
                other_key = Some(lo);
            }
            touched.push(s);
        }
        if covered.checked_sub(1) != Some(last - first) {
            return Err(SealError::NotAllUnsealed);
        }
        if let Some(seq) = other_key {
            return Err(SealError::OtherKey(seq));
        }
        for s in touched {
            let Some(run) = self.runs.remove(&s) else {
                continue;
            };
            if s < first {
                let before = Run {
                    last: first - 1,
                    ..run
                };
                self.runs.insert(s, before);
            }
            if run.last > last {
                let after = Run {
                    line: run.line + (last + 1 - s),
                    ..run
                };
                self.runs.insert(last + 1, after);
            }
        }
        Ok(())
    }

    /// Forgets every record (a checkpoint that seals all before it).
    pub fn clear(&mut self) {
        self.runs.clear();
    }

    /// The earliest line still unsealed.
    pub fn first_line(&self) -> Option<u64> {
        self.runs.values().map(|r| r.line).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_seal_split_and_refuse() {
        let mut u = Unsealed::default();
        for seq in 1..=10 {
            u.insert(seq, seq + 100, 0);
        }
        u.insert(11, 111, 1); // another key
        for seq in 13..=15 {
            u.insert(seq, seq + 100, 0); // after a gap (12 was signed)
        }
        assert_eq!(u.runs.len(), 3);
        assert_eq!(u.seal(4, 6, 0), Ok(()));
        assert_eq!(
            u.seal(5, 5, 0),
            Err(SealError::NotAllUnsealed),
            "sealed twice"
        );
        assert_eq!(u.seal(3, 7, 0), Err(SealError::NotAllUnsealed));
        assert_eq!(
            u.seal(10, 13, 0),
            Err(SealError::NotAllUnsealed),
            "12 is not unsigned"
        );
        assert_eq!(u.seal(9, 11, 0), Err(SealError::OtherKey(11)));
        assert_eq!(u.seal(11, 11, 1), Ok(()));
        assert_eq!(u.seal(16, 16, 0), Err(SealError::NotAllUnsealed));
        assert_eq!(u.first_line(), Some(101));
        assert_eq!(u.seal(1, 3, 0), Ok(()));
        assert_eq!(u.first_line(), Some(107));
        assert_eq!(u.seal(7, 10, 0), Ok(()));
        assert_eq!(u.first_line(), Some(113));
        assert_eq!(u.seal(14, 14, 0), Ok(()));
        assert_eq!(u.seal(13, 13, 0), Ok(()));
        assert_eq!(u.first_line(), Some(115));
        u.clear();
        assert_eq!(u.first_line(), None);
    }
}
