//! Admission of an SSE request: auth, readiness and limits, in that order, then the client's
//! feed — a refused request never touches NATS, and the permit is taken before a consumer (or a
//! place in the live tail) exists. Refusals are counted by reason (`docs/api.md` §9).

use axum::http::HeaderMap;
use metrics::counter;

use super::error::ApiError;
use super::extract::QueryPairs;
use super::limits::{ConnectionPermit, LimitExceeded};
use super::AppState;
use crate::fanout::Opened;
use crate::readiness::NotReady;
use crate::subject::{ResumePoint, SubjectSet};
use crate::telemetry::metrics::{CONNECTIONS_REJECTED, RESUMES};

/// An admitted stream: its slots, its feed, and who opened it (the token's `sub`).
pub struct Admitted {
    pub permit: ConnectionPermit,
    pub opened: Opened,
    pub user: Option<String>,
}

/// Admits a stream of `subjects` from `resume`: its slots and its feed.
pub async fn admit(
    state: &AppState,
    subjects: &SubjectSet,
    query: &QueryPairs,
    headers: &HeaderMap,
    resume: Option<ResumePoint>,
) -> Result<Admitted, ApiError> {
    let admitted = check_and_open(state, subjects, query, headers, resume).await;
    match &admitted {
        Ok(_) if resume.is_some() => counter!(RESUMES).increment(1),
        Ok(_) => {}
        Err(err) => {
            if let Some(reason) = rejection_reason(err) {
                counter!(CONNECTIONS_REJECTED, "reason" => reason).increment(1);
            }
        }
    }
    admitted
}

async fn check_and_open(
    state: &AppState,
    subjects: &SubjectSet,
    query: &QueryPairs,
    headers: &HeaderMap,
    resume: Option<ResumePoint>,
) -> Result<Admitted, ApiError> {
    let user = state.authorizer.authorize(headers, query, subjects)?;
    state.readiness.check().map_err(|why| match why {
        NotReady::Draining => ApiError::Draining,
        NotReady::Unavailable => ApiError::NotReady("NATS or the stream is unreachable".into()),
        NotReady::LiveTailPending => ApiError::NotReady("the live tail is starting".into()),
        NotReady::Lagging => {
            ApiError::NotReady("this replica delivers late; another one will serve".into())
        }
    })?;
    let permit = state.limits.acquire(subjects).map_err(|over| {
        let (reason, message, subject) = match over {
            LimitExceeded::Replica => (
                "limit",
                "this replica holds its maximum of connections".to_owned(),
                subjects.subjects()[0].clone(),
            ),
            LimitExceeded::Key(subject) => (
                "key_limit",
                format!("too many connections for {subject} on this replica"),
                subject,
            ),
        };
        let after = resume.map_or(0, |r| r.0);
        ApiError::TooManyConnections {
            reason,
            message: format!("{message}; poll the timeline meanwhile"),
            poll: format!("{}?after={after}", subject.timeline_path()),
        }
    })?;
    let opened = state.fanout.open(subjects, resume).await?;
    Ok(Admitted {
        permit,
        opened,
        user,
    })
}

fn rejection_reason(err: &ApiError) -> Option<&'static str> {
    Some(match err {
        ApiError::TooManyConnections { reason, .. } => reason,
        ApiError::NotReady(_) => "not_ready",
        ApiError::Draining => "draining",
        ApiError::Unauthorized(_) => "unauthorized",
        ApiError::Forbidden(_) => "forbidden",
        _ => return None,
    })
}
