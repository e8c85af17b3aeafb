//! Connection limits per replica and per subject key. A [`ConnectionPermit`] holds the slots;
//! dropping it (however the stream ends) gives them back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::subject::{Subject, SubjectSet};

/// Which limit refused a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitExceeded {
    /// `RELAY_MAX_CONNECTIONS` reached.
    Replica,
    /// `RELAY_MAX_CONNECTIONS_PER_KEY` reached for this subject.
    Key(Subject),
}

#[derive(Debug)]
pub struct ConnectionLimits {
    max_total: usize,
    max_per_key: usize,
    counts: Mutex<Counts>,
    /// Told when the last open connection closes (a drain waits for it).
    emptied: Notify,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_key: HashMap<Subject, usize>,
}

impl ConnectionLimits {
    pub fn new(max_total: usize, max_per_key: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_key,
            counts: Mutex::new(Counts::default()),
            emptied: Notify::new(),
        })
    }

    /// Takes one replica slot and one slot for each subject, or none at all.
    pub fn acquire(
        self: &Arc<Self>,
        subjects: &SubjectSet,
    ) -> Result<ConnectionPermit, LimitExceeded> {
        let mut counts = self.lock();
        if counts.total >= self.max_total {
            return Err(LimitExceeded::Replica);
        }
        if let Some(full) = subjects
            .subjects()
            .iter()
            .find(|s| counts.per_key.get(*s).copied().unwrap_or(0) >= self.max_per_key)
        {
            return Err(LimitExceeded::Key(full.clone()));
        }
        counts.total += 1;
        for subject in subjects.subjects() {
            *counts.per_key.entry(subject.clone()).or_default() += 1;
        }
        Ok(ConnectionPermit {
            limits: self.clone(),
            subjects: subjects.subjects().to_vec(),
        })
    }

    /// Open connections on this replica.
    pub fn active(&self) -> usize {
        self.lock().total
    }

    /// Returns once no connection is open.
    pub async fn all_closed(&self) {
        loop {
            let emptied = self.emptied.notified();
            tokio::pin!(emptied);
            // Registered before the count is read: a close in between still wakes it.
            emptied.as_mut().enable();
            if self.active() == 0 {
                return;
            }
            emptied.await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        // A panic while holding this lock cannot leave the counts half-updated (every update
        // is a few integer operations), so a poisoned lock is still usable.
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Slots of one open connection.
#[derive(Debug)]
pub struct ConnectionPermit {
    limits: Arc<ConnectionLimits>,
    subjects: Vec<Subject>,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut counts = self.limits.lock();
        counts.total = counts.total.saturating_sub(1);
        for subject in &self.subjects {
            if let Some(n) = counts.per_key.get_mut(subject) {
                *n -= 1;
                if *n == 0 {
                    counts.per_key.remove(subject);
                }
            }
        }
        if counts.total == 0 {
            self.limits.emptied.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subject::SubjectKey;

    fn set(ids: &[&str]) -> SubjectSet {
        SubjectSet::new(
            ids.iter()
                .map(|id| Subject::deployment(SubjectKey::parse(id).expect("valid")))
                .collect(),
        )
        .expect("valid set")
    }

    #[test]
    fn per_key_and_replica_limits_and_release() {
        let limits = ConnectionLimits::new(3, 2);
        let a1 = limits.acquire(&set(&["a"])).expect("first a");
        let _a2 = limits.acquire(&set(&["a"])).expect("second a");
        assert!(matches!(
            limits.acquire(&set(&["a"])),
            Err(LimitExceeded::Key(_))
        ));
        let _b = limits.acquire(&set(&["b"])).expect("b");
        assert_eq!(
            limits.acquire(&set(&["c"])).unwrap_err(),
            LimitExceeded::Replica
        );
        assert_eq!(limits.active(), 3);
        drop(a1);
        assert_eq!(limits.active(), 2);
        let _a3 = limits.acquire(&set(&["a"])).expect("a slot freed");
    }

    #[tokio::test]
    async fn all_closed_waits_for_the_last_connection() {
        let limits = ConnectionLimits::new(3, 3);
        limits.all_closed().await; // none open
        let a = limits.acquire(&set(&["a"])).expect("a");
        let b = limits.acquire(&set(&["b"])).expect("b");
        let waiter = tokio::spawn({
            let limits = limits.clone();
            async move { limits.all_closed().await }
        });
        drop(a);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "b is still open");
        drop(b);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken when the last one closed")
            .expect("task");
    }

    #[test]
    fn multi_subject_takes_every_key_or_none() {
        let limits = ConnectionLimits::new(10, 1);
        let _b = limits.acquire(&set(&["b"])).expect("b");
        match limits.acquire(&set(&["a", "b"])) {
            Err(LimitExceeded::Key(s)) => assert_eq!(s.nats_subject(), "deploy.b"),
            other => panic!("{other:?}"),
        }
        // The failed attempt took nothing: "a" is still free.
        let ab = limits.acquire(&set(&["a"])).expect("a free");
        drop(ab);
        assert_eq!(limits.active(), 1);
    }
}
