//! The domain's names: which subjects a client may ask for and where it resumes.
//!
//! These types can only hold valid values, so nothing a client sends can widen a NATS
//! subscription: a [`SubjectKey`] never contains `.`, `*`, `>` or whitespace, and a [`Subject`]
//! is always exactly `deploy.<key>` or `pavilion.<key>`.

use std::fmt;

/// Most subjects one multi-subject connection may ask for.
pub const MAX_SUBJECTS: usize = 16;

/// A deployment or pavilion id: `^[A-Za-z0-9_-]{1,128}$`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubjectKey(String);

/// Why a string is not a [`SubjectKey`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidId {
    #[error("id is empty")]
    Empty,
    #[error("id is longer than 128 characters")]
    TooLong,
    #[error("id may only contain A-Z, a-z, 0-9, '_' and '-'")]
    BadCharacter,
}

impl SubjectKey {
    pub const MAX_LEN: usize = 128;

    pub fn parse(s: &str) -> Result<Self, InvalidId> {
        if s.is_empty() {
            return Err(InvalidId::Empty);
        }
        if s.len() > Self::MAX_LEN {
            return Err(InvalidId::TooLong);
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(InvalidId::BadCharacter);
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SubjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The two kinds of subject the stream holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SubjectKind {
    Deployment,
    Pavilion,
}

impl SubjectKind {
    /// The subject's first token.
    pub fn prefix(self) -> &'static str {
        match self {
            SubjectKind::Deployment => "deploy",
            SubjectKind::Pavilion => "pavilion",
        }
    }

    /// The HTTP path segment (`/v1/<segment>/{id}/...`).
    pub fn path_segment(self) -> &'static str {
        match self {
            SubjectKind::Deployment => "deployments",
            SubjectKind::Pavilion => "pavilions",
        }
    }
}

/// One concrete subject: `deploy.<key>` or `pavilion.<key>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subject {
    pub kind: SubjectKind,
    pub key: SubjectKey,
}

impl Subject {
    pub fn new(kind: SubjectKind, key: SubjectKey) -> Self {
        Self { kind, key }
    }

    pub fn deployment(key: SubjectKey) -> Self {
        Self::new(SubjectKind::Deployment, key)
    }

    pub fn pavilion(key: SubjectKey) -> Self {
        Self::new(SubjectKind::Pavilion, key)
    }

    /// The NATS subject string.
    pub fn nats_subject(&self) -> String {
        format!("{}.{}", self.kind.prefix(), self.key)
    }

    /// A NATS subject (`deploy.<key>` or `pavilion.<key>`) read back, e.g. from another replica's
    /// presence key; anything else is `None`.
    pub fn parse_nats(s: &str) -> Option<Self> {
        let (prefix, key) = s.split_once('.')?;
        let kind = [SubjectKind::Deployment, SubjectKind::Pavilion]
            .into_iter()
            .find(|kind| kind.prefix() == prefix)?;
        Some(Self::new(kind, SubjectKey::parse(key).ok()?))
    }

    /// The polling fallback for this subject.
    pub fn timeline_path(&self) -> String {
        format!("/v1/{}/{}/timeline", self.kind.path_segment(), self.key)
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.kind.prefix(), self.key)
    }
}

/// 1 to [`MAX_SUBJECTS`] distinct subjects, sorted; what one SSE connection follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectSet(Vec<Subject>);

/// Why a list of subjects cannot be followed by one connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidSubjectSet {
    #[error("at least one deployment or pavilion is required")]
    Empty,
    #[error("at most {MAX_SUBJECTS} subjects per connection")]
    TooMany,
}

impl SubjectSet {
    /// Deduplicates (overlapping consumer filters are rejected by the server) and sorts.
    pub fn new(mut subjects: Vec<Subject>) -> Result<Self, InvalidSubjectSet> {
        subjects.sort();
        subjects.dedup();
        match subjects.len() {
            0 => Err(InvalidSubjectSet::Empty),
            n if n > MAX_SUBJECTS => Err(InvalidSubjectSet::TooMany),
            _ => Ok(Self(subjects)),
        }
    }

    pub fn one(subject: Subject) -> Self {
        Self(vec![subject])
    }

    pub fn subjects(&self) -> &[Subject] {
        &self.0
    }

    pub fn nats_subjects(&self) -> Vec<String> {
        self.0.iter().map(Subject::nats_subject).collect()
    }

    /// `deployment`, `pavilion` or `multi`: the `kind` label of connection metrics.
    pub fn kind_label(&self) -> &'static str {
        match self.0.as_slice() {
            [one] => match one.kind {
                SubjectKind::Deployment => "deployment",
                SubjectKind::Pavilion => "pavilion",
            },
            _ => "multi",
        }
    }
}

/// The last stream sequence a client has seen; the stream resumes at `seq + 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ResumePoint(pub u64);

/// A `Last-Event-ID` that is not a base-10 unsigned 64-bit integer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Last-Event-ID must be a base-10 unsigned 64-bit integer")]
pub struct InvalidResumePoint;

impl ResumePoint {
    /// Strict: ASCII digits only (no sign, no blanks), at most `u64::MAX`.
    pub fn parse(s: &str) -> Result<Self, InvalidResumePoint> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(InvalidResumePoint);
        }
        s.parse().map(ResumePoint).map_err(|_| InvalidResumePoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_accept_only_the_safe_alphabet() {
        for ok in ["d-42", "p_7", "A", &"x".repeat(128)] {
            assert_eq!(SubjectKey::parse(ok).expect(ok).as_str(), ok);
        }
        assert_eq!(SubjectKey::parse(""), Err(InvalidId::Empty));
        assert_eq!(SubjectKey::parse(&"x".repeat(129)), Err(InvalidId::TooLong));
        for bad in ["*", ">", "a.b", "a b", "a/b", "é", "a\n", "%2A", "a>"] {
            assert_eq!(
                SubjectKey::parse(bad),
                Err(InvalidId::BadCharacter),
                "{bad}"
            );
        }
    }

    #[test]
    fn subjects_render_and_sets_dedupe() {
        let d = |s: &str| Subject::deployment(SubjectKey::parse(s).expect("valid"));
        let p = Subject::pavilion(SubjectKey::parse("p-7").expect("valid"));
        assert_eq!(d("d-1").nats_subject(), "deploy.d-1");
        assert_eq!(p.nats_subject(), "pavilion.p-7");
        assert_eq!(p.timeline_path(), "/v1/pavilions/p-7/timeline");
        assert_eq!(Subject::parse_nats("pavilion.p-7"), Some(p.clone()));
        assert_eq!(Subject::parse_nats("deploy.d-1"), Some(d("d-1")));
        for bad in [
            "deploy",
            "deploy.",
            "deploy.a.b",
            "deploy.*",
            "other.a",
            ".a",
        ] {
            assert_eq!(Subject::parse_nats(bad), None, "{bad}");
        }
        let set = SubjectSet::new(vec![d("b"), p.clone(), d("a"), d("b")]).expect("valid");
        assert_eq!(
            set.nats_subjects(),
            vec!["deploy.a", "deploy.b", "pavilion.p-7"]
        );
        assert_eq!(set.kind_label(), "multi");
        assert_eq!(SubjectSet::one(p).kind_label(), "pavilion");
        assert_eq!(SubjectSet::new(vec![]), Err(InvalidSubjectSet::Empty));
        let many = (0..17).map(|i| d(&format!("d{i}"))).collect();
        assert_eq!(SubjectSet::new(many), Err(InvalidSubjectSet::TooMany));
    }

    #[test]
    fn resume_points_are_strict_u64() {
        assert_eq!(ResumePoint::parse("0"), Ok(ResumePoint(0)));
        assert_eq!(ResumePoint::parse("42"), Ok(ResumePoint(42)));
        assert_eq!(
            ResumePoint::parse("18446744073709551615"),
            Ok(ResumePoint(u64::MAX))
        );
        for bad in [
            "",
            "abc",
            "-1",
            "+1",
            " 1",
            "1 ",
            "18446744073709551616",
            "1e3",
            "0x10",
        ] {
            assert_eq!(ResumePoint::parse(bad), Err(InvalidResumePoint), "{bad:?}");
        }
    }
}
