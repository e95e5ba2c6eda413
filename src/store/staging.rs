//! How many bytes JSON parts may stage before their session is known (a `chunkBase64` sent
//! ahead of its `uploadId`, as encoders that sort keys do). Staged bytes are on disk but
//! belong to no session yet, so no quota reservation covers them: this budget does.
//!
//! - A user caller may stage, across all its requests in flight, at most what its ledger
//!   already reserves for its uploads in flight: a part must fit a session of that user
//!   anyway, and those bytes are counted against the quota. A user with no session open
//!   can stage nothing (issue 16: 47 MB were staged for a user with a 1 MiB quota).
//! - Service callers name the user only through the session, so theirs share one budget of
//!   `MAX_BODY_MB`: one largest body at a time, whatever the number of requests.
//!
//! The budget is per process (instances sharing a root each keep their own).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use super::key::UserId;
use super::StoreError;

/// Bytes being staged, by who stages them (`None`: service callers).
#[derive(Debug, Default)]
pub struct StagingBudget {
    staged: Mutex<HashMap<Option<UserId>, u64>>,
}

impl StagingBudget {
    /// A charge for one staged part of `who`, allowed `limit` bytes across all of `who`'s
    /// charges together.
    pub fn charge(self: &Arc<Self>, who: Option<UserId>, limit: u64) -> StagingCharge {
        StagingCharge {
            budget: Arc::clone(self),
            who,
            limit,
            charged: 0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Option<UserId>, u64>> {
        self.staged.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bytes `who` is staging now.
    pub fn staged(&self, who: Option<&UserId>) -> u64 {
        self.lock().get(&who.cloned()).copied().unwrap_or(0)
    }
}

/// The bytes one staged part holds of its caller's budget, given back on drop (the part
/// was committed to its session, refused, or cut off).
#[derive(Debug)]
pub struct StagingCharge {
    budget: Arc<StagingBudget>,
    who: Option<UserId>,
    limit: u64,
    charged: u64,
}

impl StagingCharge {
    /// Takes `n` more bytes, or refuses them when the caller's parts in staging would then
    /// hold more than the limit.
    pub fn take(&mut self, n: u64) -> Result<(), StoreError> {
        let mut staged = self.budget.lock();
        let now = staged.get(&self.who).copied().unwrap_or(0);
        if now.saturating_add(n) > self.limit {
            // Refused before an entry is made: a caller refused at once leaves none behind.
            return Err(StoreError::TooLarge);
        }
        staged.insert(self.who.clone(), now + n);
        self.charged += n;
        Ok(())
    }
}

impl Drop for StagingCharge {
    fn drop(&mut self) {
        if self.charged == 0 {
            return;
        }
        let mut staged = self.budget.lock();
        if let Some(now) = staged.get_mut(&self.who) {
            *now = now.saturating_sub(self.charged);
            if *now == 0 {
                staged.remove(&self.who);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn charges_share_a_limit_and_are_given_back() {
        let budget = Arc::new(StagingBudget::default());
        let u = UserId::parse("u1").unwrap();
        let mut a = budget.charge(Some(u.clone()), 100);
        let mut b = budget.charge(Some(u.clone()), 100);
        a.take(60).unwrap();
        assert!(matches!(b.take(41), Err(StoreError::TooLarge)));
        b.take(40).unwrap();
        // Another caller has a budget of its own.
        let mut s = budget.charge(None, 10);
        s.take(10).unwrap();
        assert_eq!(budget.staged(Some(&u)), 100);
        drop(a);
        assert_eq!(budget.staged(Some(&u)), 40);
        drop(b);
        drop(s);
        // A caller refused at its first bytes leaves no entry.
        let mut refused = budget.charge(Some(UserId::parse("u2").unwrap()), 0);
        assert!(refused.take(1).is_err());
        drop(refused);
        assert!(budget.lock().is_empty());
    }
}
