//! What presence counts, without I/O: one replica's own figures per subject, the figures its
//! peers wrote to the bucket, and their sum (`docs/api.md` §12).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::subject::Subject;

/// Users listed per subject at most (the sum's list is the first of them, sorted).
pub const MAX_USERS: usize = 100;

/// A user name longer than this is not listed (it is still a connection).
pub const MAX_USER_LEN: usize = 256;

/// A peer not heard from for this many of its intervals is left out of every count. Two: one
/// keep-alive may be late, and the sum a stream is sent at its next tick still drops a dead
/// replica within three intervals of its last write.
pub const SILENT_AFTER_INTERVALS: u32 = 2;

/// Who watches one subject: open streams, and the distinct users among them (sorted, at most
/// [`MAX_USERS`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watching {
    pub connections: u64,
    pub users: Vec<String>,
}

impl Watching {
    /// Adds another replica's figures. Each list holds its replica's first users in sorted order,
    /// so the first [`MAX_USERS`] of the merge are the first of all users, wherever they are.
    pub fn add(&mut self, other: &Watching) {
        self.connections += other.connections;
        if other.users.is_empty() {
            return;
        }
        let mut users: Vec<String> = Vec::with_capacity(self.users.len() + other.users.len());
        let (mut a, mut b) = (self.users.iter().peekable(), other.users.iter().peekable());
        while users.len() < MAX_USERS {
            let next = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) if x < y => a.next(),
                (Some(x), Some(y)) if x > y => b.next(),
                (Some(_), Some(_)) => {
                    b.next();
                    a.next()
                }
                (Some(_), None) => a.next(),
                (None, Some(_)) => b.next(),
                (None, None) => None,
            };
            match next {
                Some(user) => users.push(user.clone()),
                None => break,
            }
        }
        self.users = users;
    }
}

/// This replica's streams of one subject, and how many of them each user holds.
#[derive(Debug, Default)]
pub struct LocalCount {
    connections: u64,
    users: BTreeMap<String, u64>,
}

impl LocalCount {
    pub fn join(&mut self, user: Option<&str>) {
        self.connections += 1;
        if let Some(user) = user.filter(|u| u.len() <= MAX_USER_LEN) {
            *self.users.entry(user.to_owned()).or_default() += 1;
        }
    }

    /// Whether any stream is left.
    pub fn leave(&mut self, user: Option<&str>) -> bool {
        self.connections = self.connections.saturating_sub(1);
        if let Some(user) = user {
            if let Some(n) = self.users.get_mut(user) {
                *n -= 1;
                if *n == 0 {
                    self.users.remove(user);
                }
            }
        }
        self.connections > 0
    }

    pub fn watching(&self) -> Watching {
        Watching {
            connections: self.connections,
            users: self.users.keys().take(MAX_USERS).cloned().collect(),
        }
    }
}

/// A key of the bucket: `<replica>.alive`, or `<replica>.<kind>.<id>` for a subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceKey {
    /// A replica's keep-alive, written in an interval it wrote nothing else.
    Alive { replica: String },
    /// A replica's figures for one subject.
    Subject { replica: String, subject: Subject },
}

impl PresenceKey {
    pub fn parse(key: &str) -> Option<Self> {
        let (replica, rest) = key.split_once('.')?;
        if replica.is_empty() {
            return None;
        }
        let replica = replica.to_owned();
        if rest == "alive" {
            return Some(PresenceKey::Alive { replica });
        }
        let subject = Subject::parse_nats(rest)?;
        Some(PresenceKey::Subject { replica, subject })
    }

    pub fn alive(replica: &str) -> String {
        format!("{replica}.alive")
    }

    pub fn subject(replica: &str, subject: &Subject) -> String {
        format!("{replica}.{subject}")
    }

    pub fn replica(&self) -> &str {
        match self {
            PresenceKey::Alive { replica } | PresenceKey::Subject { replica, .. } => replica,
        }
    }
}

/// A value of the bucket: a subject's figures (none in a keep-alive) and the writer's interval,
/// by which its peers judge when it has fallen silent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    #[serde(default)]
    pub connections: u64,
    #[serde(default)]
    pub users: Vec<String>,
    pub interval_ms: u64,
}

/// What the other replicas wrote, as the watch reported it.
#[derive(Debug, Default)]
pub struct Peers {
    peers: HashMap<String, Peer>,
}

#[derive(Debug)]
struct Peer {
    last_heard: Instant,
    silent_after: Duration,
    subjects: HashMap<Subject, Watching>,
}

impl Peers {
    /// A write of `key` heard at `heard`: `None` for a deletion. A deleted keep-alive is a
    /// replica that stopped on purpose: it is forgotten at once.
    pub fn apply(&mut self, key: PresenceKey, record: Option<Record>, heard: Instant) {
        let replica = key.replica().to_owned();
        let Some(record) = record else {
            match key {
                PresenceKey::Alive { .. } => {
                    self.peers.remove(&replica);
                }
                PresenceKey::Subject { subject, .. } => {
                    if let Some(peer) = self.peers.get_mut(&replica) {
                        peer.subjects.remove(&subject);
                        peer.heard(heard);
                    }
                }
            }
            return;
        };
        let silent_after =
            Duration::from_millis(record.interval_ms.max(1)) * SILENT_AFTER_INTERVALS;
        let peer = self.peers.entry(replica).or_insert_with(|| Peer {
            last_heard: heard,
            silent_after,
            subjects: HashMap::new(),
        });
        peer.heard(heard);
        peer.silent_after = silent_after;
        if let PresenceKey::Subject { subject, .. } = key {
            let users = record
                .users
                .into_iter()
                .filter(|u| u.len() <= MAX_USER_LEN)
                .take(MAX_USERS)
                .collect();
            let watching = Watching {
                connections: record.connections,
                users,
            };
            if watching.connections == 0 {
                peer.subjects.remove(&subject);
            } else {
                peer.subjects.insert(subject, watching);
            }
        }
    }

    /// Adds the figures of every peer heard from recently enough to `into`.
    pub fn sum_into(&self, subject: &Subject, now: Instant, into: &mut Watching) {
        for peer in self.peers.values().filter(|p| !p.silent(now)) {
            if let Some(watching) = peer.subjects.get(subject) {
                into.add(watching);
            }
        }
    }

    /// Drops the peers that fell silent; returns how many are left.
    pub fn forget_silent(&mut self, now: Instant) -> usize {
        self.peers.retain(|_, peer| !peer.silent(now));
        self.peers.len()
    }
}

impl Peer {
    fn heard(&mut self, at: Instant) {
        self.last_heard = self.last_heard.max(at);
    }

    fn silent(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_heard) > self.silent_after
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subject::SubjectKey;

    fn subject(id: &str) -> Subject {
        Subject::deployment(SubjectKey::parse(id).expect("valid id"))
    }

    fn watching(connections: u64, users: &[&str]) -> Watching {
        Watching {
            connections,
            users: users.iter().map(|u| u.to_string()).collect(),
        }
    }

    fn record(connections: u64, users: &[&str]) -> Option<Record> {
        Some(Record {
            connections,
            users: users.iter().map(|u| u.to_string()).collect(),
            interval_ms: 1000,
        })
    }

    #[test]
    fn sums_add_connections_and_merge_users_sorted_and_distinct() {
        let mut sum = watching(2, &["ann", "cy"]);
        sum.add(&watching(3, &["bo", "cy", "dee"]));
        assert_eq!(sum, watching(5, &["ann", "bo", "cy", "dee"]));
    }

    #[test]
    fn the_merged_list_is_the_first_users_of_all_replicas() {
        let names = |range: std::ops::Range<u32>| -> Vec<String> {
            range.map(|i| format!("u{i:03}")).collect()
        };
        // Even users on one replica, odd on the other, 150 each: each lists its first 100.
        let even: Vec<String> = names(0..300).into_iter().step_by(2).collect();
        let odd: Vec<String> = names(0..300).into_iter().skip(1).step_by(2).collect();
        let mut sum = Watching {
            connections: 150,
            users: even[..MAX_USERS].to_vec(),
        };
        sum.add(&Watching {
            connections: 150,
            users: odd[..MAX_USERS].to_vec(),
        });
        assert_eq!(sum.connections, 300);
        assert_eq!(sum.users, names(0..100));
    }

    #[test]
    fn local_counts_hold_each_user_once_until_their_last_stream_leaves() {
        let mut count = LocalCount::default();
        count.join(Some("bo"));
        count.join(Some("ann"));
        count.join(Some("bo"));
        count.join(None);
        count.join(Some(&"x".repeat(MAX_USER_LEN + 1)));
        assert_eq!(count.watching(), watching(5, &["ann", "bo"]));
        assert!(count.leave(Some("bo")));
        assert_eq!(count.watching(), watching(4, &["ann", "bo"]));
        assert!(count.leave(Some("bo")));
        assert!(count.leave(None));
        assert!(count.leave(Some(&"x".repeat(MAX_USER_LEN + 1))));
        assert_eq!(count.watching(), watching(1, &["ann"]));
        assert!(!count.leave(Some("ann")));
    }

    #[test]
    fn keys_round_trip_and_nothing_else_parses() {
        let s = subject("d-1");
        let key = PresenceKey::subject("sser0001", &s);
        assert_eq!(key, "sser0001.deploy.d-1");
        assert_eq!(
            PresenceKey::parse(&key),
            Some(PresenceKey::Subject {
                replica: "sser0001".into(),
                subject: s
            })
        );
        assert_eq!(
            PresenceKey::parse(&PresenceKey::alive("sser0001")),
            Some(PresenceKey::Alive {
                replica: "sser0001".into()
            })
        );
        for bad in [
            "sser0001",
            ".alive",
            "sser0001.deploy",
            "sser0001.x.y",
            "a.deploy.b.c",
        ] {
            assert_eq!(PresenceKey::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn peers_count_until_silent_or_gone() {
        let t0 = Instant::now();
        let (a, b) = (subject("a"), subject("b"));
        let key = |replica: &str, s: &Subject| PresenceKey::Subject {
            replica: replica.into(),
            subject: s.clone(),
        };
        let mut peers = Peers::default();
        peers.apply(key("r1", &a), record(2, &["ann"]), t0);
        peers.apply(key("r2", &a), record(3, &["bo"]), t0);
        peers.apply(key("r2", &b), record(1, &[]), t0);
        let sum = |peers: &Peers, s: &Subject, now| {
            let mut w = Watching::default();
            peers.sum_into(s, now, &mut w);
            w
        };
        assert_eq!(sum(&peers, &a, t0), watching(5, &["ann", "bo"]));
        assert_eq!(sum(&peers, &b, t0), watching(1, &[]));

        // r2 deletes b and keeps writing; r1 falls silent after two of its intervals.
        let t1 = t0 + Duration::from_millis(1500);
        peers.apply(key("r2", &b), None, t1);
        let t2 = t0 + Duration::from_millis(2100);
        assert_eq!(sum(&peers, &a, t2), watching(3, &["bo"]));
        assert_eq!(sum(&peers, &b, t2), Watching::default());
        assert_eq!(peers.forget_silent(t2), 1);

        // A deleted keep-alive: the replica stopped; forgotten at once.
        peers.apply(
            PresenceKey::Alive {
                replica: "r2".into(),
            },
            None,
            t2,
        );
        assert_eq!(sum(&peers, &a, t2), Watching::default());
        assert_eq!(peers.forget_silent(t2), 0);
    }

    #[test]
    fn an_old_write_read_at_start_up_is_already_silent() {
        let now = Instant::now() + Duration::from_secs(10);
        let mut peers = Peers::default();
        let s = subject("a");
        peers.apply(
            PresenceKey::Subject {
                replica: "dead".into(),
                subject: s.clone(),
            },
            record(4, &[]),
            now - Duration::from_secs(5),
        );
        let mut w = Watching::default();
        peers.sum_into(&s, now, &mut w);
        assert_eq!(w, Watching::default());
    }
}
