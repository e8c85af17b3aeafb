//! JWT authorization (`RELAY_AUTH=jwt`): the token grants NATS-style subject patterns, and every
//! subject a request asks for must match one of them.
//!
//! The accepted algorithm follows the configured key alone (HS256 for a secret, RS256 or ES256
//! for a PEM public key), so `alg: none` and algorithm confusion (an HS256 token signed with the
//! public key) are refused. Tokens are never logged.
//!
//! The public key file may hold several keys (PEM blocks one after the other): a token signed by
//! any of them is accepted, so an issuer's key can be rotated without refusing anyone — add the
//! new key, roll out, switch the issuer, remove the old key once its tokens have expired
//! (`docs/operations.md`, *Rotating the JWT key*).

use axum::http::{header, HeaderMap};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::error::ApiError;
use super::extract::QueryPairs;
use crate::config::{Config, ConfigError, JwtKey};
use crate::subject::SubjectSet;

/// Allowed clock skew for `exp` and `nbf`.
const LEEWAY_SECS: u64 = 5;

pub enum Authorizer {
    Open,
    Jwt(Box<JwtVerifier>),
}

/// The keys and the rules a token is checked with: each key with its own algorithm.
pub struct JwtVerifier {
    keys: Vec<(DecodingKey, Validation)>,
}

#[derive(Debug, Deserialize)]
struct Claims {
    /// Who the token speaks for: the user presence lists (`docs/api.md` §12).
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    relay: RelayClaim,
}

#[derive(Debug, Default, Deserialize)]
struct RelayClaim {
    #[serde(default)]
    subscribe: Vec<String>,
}

impl Authorizer {
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        let Some(jwt_key) = config.jwt_key()? else {
            return Ok(Authorizer::Open);
        };
        let keys: Vec<(DecodingKey, Algorithm)> = match jwt_key {
            JwtKey::Secret(secret) => vec![(
                DecodingKey::from_secret(secret.as_bytes()),
                Algorithm::HS256,
            )],
            JwtKey::PublicKeyFile(path) => {
                let pem = std::fs::read_to_string(&path).map_err(|e| {
                    ConfigError::new(
                        "RELAY_JWT_PUBLIC_KEY_FILE",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                public_keys(&pem)?
            }
        };
        let keys = keys
            .into_iter()
            .map(|(key, algorithm)| {
                let mut validation = Validation::new(algorithm);
                validation.leeway = LEEWAY_SECS;
                validation.validate_nbf = true;
                match &config.jwt_audience {
                    Some(aud) => validation.set_audience(&[aud]),
                    None => validation.validate_aud = false,
                }
                (key, validation)
            })
            .collect();
        Ok(Authorizer::Jwt(Box::new(JwtVerifier { keys })))
    }

    /// Checks the request's token grants every subject; the token's `sub`, if it has one (none
    /// without auth).
    pub fn authorize(
        &self,
        headers: &HeaderMap,
        query: &QueryPairs,
        subjects: &SubjectSet,
    ) -> Result<Option<String>, ApiError> {
        let Authorizer::Jwt(verifier) = self else {
            return Ok(None);
        };
        let token = token_from(headers, query)
            .ok_or_else(|| ApiError::Unauthorized("a token is required".into()))?;
        let claims = verifier.decode(&token)?;
        for subject in subjects.subjects() {
            let nats_subject = subject.nats_subject();
            if !claims
                .relay
                .subscribe
                .iter()
                .any(|pattern| subject_matches(pattern, &nats_subject))
            {
                return Err(ApiError::Forbidden(format!(
                    "the token does not grant {nats_subject}"
                )));
            }
        }
        Ok(claims.sub)
    }
}

impl JwtVerifier {
    /// The token's claims, if any key verifies it; else the first key's reason.
    fn decode(&self, token: &str) -> Result<Claims, ApiError> {
        let mut first_error = None;
        for (key, validation) in &self.keys {
            match jsonwebtoken::decode::<Claims>(token, key, validation) {
                Ok(data) => return Ok(data.claims),
                Err(err) => {
                    first_error.get_or_insert(err);
                }
            }
        }
        let reason = first_error.map_or_else(|| "no key".to_owned(), |e| describe(&e).to_string());
        Err(ApiError::Unauthorized(format!("invalid token: {reason}")))
    }
}

/// Every public key of a PEM file (one or several blocks), each with the algorithm it verifies.
fn public_keys(pem: &str) -> Result<Vec<(DecodingKey, Algorithm)>, ConfigError> {
    const BEGIN: &str = "-----BEGIN ";
    let starts: Vec<usize> = pem.match_indices(BEGIN).map(|(at, _)| at).collect();
    let blocks: Vec<&str> = starts
        .iter()
        .enumerate()
        .map(|(n, &start)| &pem[start..starts.get(n + 1).copied().unwrap_or(pem.len())])
        .collect();
    if blocks.is_empty() {
        return Err(ConfigError::new(
            "RELAY_JWT_PUBLIC_KEY_FILE",
            "no PEM block: expected RSA or EC (P-256) public keys in PEM format",
        ));
    }
    blocks
        .iter()
        .enumerate()
        .map(|(i, block)| {
            if let Ok(key) = DecodingKey::from_rsa_pem(block.as_bytes()) {
                Ok((key, Algorithm::RS256))
            } else if let Ok(key) = DecodingKey::from_ec_pem(block.as_bytes()) {
                Ok((key, Algorithm::ES256))
            } else {
                Err(ConfigError::new(
                    "RELAY_JWT_PUBLIC_KEY_FILE",
                    format!("PEM block {} is not an RSA or EC (P-256) public key", i + 1),
                ))
            }
        })
        .collect()
}

/// `Authorization: Bearer`, else cookie `relay_token`, else query `access_token`.
fn token_from(headers: &HeaderMap, query: &QueryPairs) -> Option<String> {
    if let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        if let Some(token) = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
        {
            return Some(token.trim().to_owned());
        }
    }
    for cookies in headers.get_all(header::COOKIE) {
        let Ok(cookies) = cookies.to_str() else {
            continue;
        };
        for cookie in cookies.split(';') {
            if let Some((name, value)) = cookie.trim().split_once('=') {
                if name == "relay_token" && !value.is_empty() {
                    return Some(value.to_owned());
                }
            }
        }
    }
    query
        .get("access_token")
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
}

/// A short reason that never includes the token.
fn describe(err: &jsonwebtoken::errors::Error) -> &'static str {
    use jsonwebtoken::errors::ErrorKind;
    match err.kind() {
        ErrorKind::ExpiredSignature => "expired",
        ErrorKind::ImmatureSignature => "not yet valid",
        ErrorKind::InvalidAudience => "wrong audience",
        ErrorKind::InvalidSignature => "bad signature",
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => "algorithm not accepted",
        ErrorKind::MissingRequiredClaim(_) => "missing a required claim",
        _ => "malformed",
    }
}

/// NATS wildcard semantics: `*` matches one token, a final `>` one or more.
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut pattern = pattern.split('.');
    let mut subject = subject.split('.');
    loop {
        match (pattern.next(), subject.next()) {
            (Some(">"), Some(_)) => return pattern.next().is_none(),
            (Some("*"), Some(_)) => continue,
            (Some(p), Some(s)) if p == s && !p.is_empty() => continue,
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_wildcards() {
        assert!(subject_matches("deploy.d-1", "deploy.d-1"));
        assert!(!subject_matches("deploy.d-1", "deploy.d-2"));
        assert!(subject_matches("deploy.*", "deploy.d-1"));
        assert!(!subject_matches("deploy.*", "pavilion.p-1"));
        assert!(!subject_matches("deploy.*", "deploy"));
        assert!(subject_matches(">", "deploy.d-1"));
        assert!(subject_matches("pavilion.>", "pavilion.p-7"));
        assert!(!subject_matches("pavilion.>", "pavilion"));
        assert!(subject_matches("*.d-1", "deploy.d-1"));
        assert!(
            !subject_matches("deploy.>.x", "deploy.a.x"),
            "> only at the end"
        );
        assert!(!subject_matches("", "deploy.d-1"));
        assert!(!subject_matches("deploy.d-1.extra", "deploy.d-1"));
    }

    #[test]
    fn token_sources_in_order() {
        let mut headers = HeaderMap::new();
        let query = QueryPairs(vec![("access_token".into(), "from-query".into())]);
        assert_eq!(token_from(&headers, &query).as_deref(), Some("from-query"));
        headers.insert(
            header::COOKIE,
            "a=b; relay_token=from-cookie".parse().expect("header"),
        );
        assert_eq!(token_from(&headers, &query).as_deref(), Some("from-cookie"));
        headers.insert(
            header::AUTHORIZATION,
            "Bearer from-header".parse().expect("header"),
        );
        assert_eq!(token_from(&headers, &query).as_deref(), Some("from-header"));
        assert_eq!(token_from(&HeaderMap::new(), &QueryPairs(vec![])), None);
    }
}
