//! Where a client's events start: the resume point checked against the stream's state, decided
//! once when a stream opens (`docs/api.md` §5: `relay.gap`, `relay.reset`).

use async_nats::jetstream::stream;

use crate::subject::ResumePoint;

/// What the client must be told before the first event, decided once when the stream opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opening {
    /// The resume point is older than the stream retains; delivery continues from what is left.
    Gap {
        requested: u64,
        first_available: u64,
    },
    /// The resume point is beyond the stream's last sequence (the stream was recreated);
    /// every retained event follows.
    Reset { requested: u64, last_seq: u64 },
}

/// Where delivery starts for one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartPlan {
    /// Delivery starts after this sequence: the resume point, or the one before the first
    /// retained event (a shared ring may still hold older events; the client must not get what
    /// the stream no longer retains).
    pub after: u64,
    /// What to tell the client first.
    pub opening: Option<Opening>,
    /// The stream's last sequence when the client opened: events above it are live, the rest
    /// are a replay (`relay_live_lag_seconds` counts only the live ones).
    pub live_after: u64,
}

impl StartPlan {
    /// The plan for `resume` against the stream's current state.
    pub fn new(resume: Option<ResumePoint>, state: &stream::State) -> Self {
        let before_first = state.first_sequence.saturating_sub(1);
        let live_after = state.last_sequence;
        let Some(ResumePoint(requested)) = resume else {
            return Self {
                after: before_first,
                opening: None,
                live_after,
            };
        };
        if requested > state.last_sequence {
            return Self {
                after: before_first,
                opening: Some(Opening::Reset {
                    requested,
                    last_seq: state.last_sequence,
                }),
                live_after,
            };
        }
        // requested <= last_sequence < u64::MAX, so +1 cannot overflow.
        if requested + 1 < state.first_sequence {
            // Delivery continues with what is retained (a ring may still hold older events;
            // the client is told they are gone, so it must not get them).
            return Self {
                after: before_first,
                opening: Some(Opening::Gap {
                    requested,
                    first_available: state.first_sequence,
                }),
                live_after,
            };
        }
        Self {
            after: requested,
            opening: None,
            live_after,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(first: u64, last: u64) -> stream::State {
        let messages = if last >= first { last - first + 1 } else { 0 };
        serde_json::from_value(serde_json::json!({
            "messages": messages, "bytes": 0, "first_seq": first,
            "first_ts": "2026-11-23T00:00:00Z", "last_seq": last,
            "last_ts": "2026-11-23T00:00:00Z", "consumer_count": 0
        }))
        .expect("valid state")
    }

    fn plan(resume: Option<u64>, first: u64, last: u64) -> StartPlan {
        StartPlan::new(resume.map(ResumePoint), &state(first, last))
    }

    #[test]
    fn no_resume_point_delivers_everything() {
        assert_eq!(
            plan(None, 5, 10),
            StartPlan {
                after: 4,
                opening: None,
                live_after: 10
            }
        );
    }

    #[test]
    fn resume_inside_the_stream_starts_after_it() {
        assert_eq!(
            plan(Some(7), 5, 10),
            StartPlan {
                after: 7,
                opening: None,
                live_after: 10
            }
        );
        // Exactly at the end: nothing to replay, no reset.
        assert_eq!(plan(Some(10), 5, 10).opening, None);
        // Just before the first retained one: no gap either.
        assert_eq!(plan(Some(4), 5, 10).opening, None);
    }

    #[test]
    fn resume_before_the_retained_start_is_a_gap() {
        assert_eq!(
            plan(Some(2), 5, 10),
            StartPlan {
                after: 4,
                opening: Some(Opening::Gap {
                    requested: 2,
                    first_available: 5
                }),
                live_after: 10
            }
        );
    }

    #[test]
    fn resume_beyond_the_end_is_a_reset() {
        assert_eq!(
            plan(Some(11), 5, 10),
            StartPlan {
                after: 4,
                opening: Some(Opening::Reset {
                    requested: 11,
                    last_seq: 10
                }),
                live_after: 10
            }
        );
        assert!(matches!(
            plan(Some(u64::MAX), 0, 0).opening,
            Some(Opening::Reset { .. })
        ));
    }
}
