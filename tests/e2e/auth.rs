//! JWT auth: every bad token is a 401, a token that does not grant the subject a 403, and a
//! granting token works from the header, the cookie and the query.

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;

use crate::support::*;

const SECRET: &str = "test-secret-that-is-long-enough-for-hs256";
const AUDIENCE: &str = "sse-relay";

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture")
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn claims(subscribe: &[&str]) -> serde_json::Value {
    json!({"sub": "user-1", "aud": AUDIENCE, "exp": now() + 600, "relay": {"subscribe": subscribe}})
}

fn hs256(claims: &serde_json::Value, secret: &[u8]) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("token")
}

fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n =
            chunk.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// Status and error code of a GET with the given token placement.
async fn status(url: &str, bearer: Option<&str>, cookie: Option<&str>) -> (u16, String) {
    let mut request = http().get(url);
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    if let Some(token) = cookie {
        request = request.header("cookie", format!("theme=dark; relay_token={token}"));
    }
    // Streams answer 200 with headers at once; the body is not read.
    let response = request.send().await.expect("request");
    let code = response.status().as_u16();
    if code == 200 {
        return (code, String::new());
    }
    let body: serde_json::Value = response.json().await.expect("JSON error");
    (code, body["error"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hs256_tokens_are_checked_and_scoped() {
    let nats = Nats::start().await;
    let relay = Relay::start(
        &nats.url(),
        &[
            ("RELAY_AUTH", "jwt"),
            ("RELAY_JWT_SECRET", SECRET),
            ("RELAY_JWT_AUDIENCE", AUDIENCE),
        ],
    )
    .await;
    let url = relay.url("/v1/deployments/d-1/events");
    let good = hs256(&claims(&["deploy.d-1", "pavilion.*"]), SECRET.as_bytes());

    let mut expired = claims(&["deploy.d-1"]);
    expired["exp"] = json!(now() - 3600);
    let mut early = claims(&["deploy.d-1"]);
    early["nbf"] = json!(now() + 3600);
    let mut wrong_aud = claims(&["deploy.d-1"]);
    wrong_aud["aud"] = json!("someone-else");
    let mut no_exp = claims(&["deploy.d-1"]);
    no_exp.as_object_mut().expect("object").remove("exp");
    let alg_none = format!(
        "{}.{}.",
        base64url(br#"{"alg":"none","typ":"JWT"}"#),
        base64url(claims(&["deploy.d-1"]).to_string().as_bytes())
    );
    let unauthorized = [
        ("expired", hs256(&expired, SECRET.as_bytes())),
        ("not yet valid", hs256(&early, SECRET.as_bytes())),
        (
            "wrong signature",
            hs256(&claims(&["deploy.d-1"]), b"another-secret-another-secret!!"),
        ),
        ("wrong audience", hs256(&wrong_aud, SECRET.as_bytes())),
        ("no exp", hs256(&no_exp, SECRET.as_bytes())),
        ("alg none", alg_none),
        ("garbage", "not.a.jwt".to_owned()),
    ];
    assert_eq!(
        status(&url, None, None).await,
        (401, "unauthorized".into()),
        "missing"
    );
    for (what, token) in &unauthorized {
        assert_eq!(
            status(&url, Some(token), None).await,
            (401, "unauthorized".into()),
            "{what}"
        );
        assert_eq!(
            status(&url, None, Some(token)).await,
            (401, "unauthorized".into()),
            "{what}"
        );
    }

    // A valid token whose patterns do not cover the subject.
    let other = relay.url("/v1/deployments/d-2/events");
    assert_eq!(
        status(&other, Some(&good), None).await,
        (403, "forbidden".into())
    );
    let other_timeline = relay.url("/v1/deployments/d-2/timeline");
    assert_eq!(
        status(&other_timeline, Some(&good), None).await,
        (403, "forbidden".into())
    );

    // Header, cookie and query each work.
    assert_eq!(status(&url, Some(&good), None).await.0, 200);
    assert_eq!(status(&url, None, Some(&good)).await.0, 200);
    assert_eq!(
        status(&format!("{url}?access_token={good}"), None, None)
            .await
            .0,
        200
    );
    let pavilion = relay.url("/v1/pavilions/p-9/events");
    assert_eq!(
        status(&pavilion, Some(&good), None).await.0,
        200,
        "wildcard grant"
    );
    assert_eq!(
        status(
            &relay.url("/v1/deployments/d-1/timeline"),
            Some(&good),
            None
        )
        .await
        .0,
        200
    );

    // Multi-subject: denied if any one subject is not covered.
    let multi_ok = relay.url("/v1/events?deployment=d-1&pavilion=p-1&pavilion=p-2");
    assert_eq!(status(&multi_ok, Some(&good), None).await.0, 200);
    let multi_bad = relay.url("/v1/events?deployment=d-1&deployment=d-2&pavilion=p-1");
    assert_eq!(
        status(&multi_bad, Some(&good), None).await,
        (403, "forbidden".into())
    );

    // Operations endpoints need no token: all three on the admin listener, the probes on the
    // public one too.
    for url in [
        relay.admin_url("/healthz"),
        relay.admin_url("/readyz"),
        relay.admin_url("/metrics"),
        relay.url("/healthz"),
        relay.url("/readyz"),
    ] {
        assert_eq!(
            http()
                .get(&url)
                .send()
                .await
                .expect("req")
                .status()
                .as_u16(),
            200,
            "{url}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_key_tokens_refuse_algorithm_confusion() {
    let nats = Nats::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let rsa_public = dir.path().join("rsa.pem");
    std::fs::write(&rsa_public, fixture("rsa-public.pem")).expect("write key");
    let relay = Relay::start(
        &nats.url(),
        &[
            ("RELAY_AUTH", "jwt"),
            (
                "RELAY_JWT_PUBLIC_KEY_FILE",
                rsa_public.to_str().expect("utf-8"),
            ),
        ],
    )
    .await;
    let url = relay.url("/v1/deployments/d-1/events");
    let body = claims(&["deploy.>"]);

    let rs256 = encode(
        &Header::new(Algorithm::RS256),
        &body,
        &EncodingKey::from_rsa_pem(&fixture("rsa-private.pem")).expect("rsa key"),
    )
    .expect("token");
    assert_eq!(status(&url, Some(&rs256), None).await.0, 200);

    // HS256 signed with the public key as the HMAC secret: the classic confusion attack.
    let confused = hs256(&body, &fixture("rsa-public.pem"));
    assert_eq!(
        status(&url, Some(&confused), None).await,
        (401, "unauthorized".into())
    );
    // A token from another key type.
    let es256 = encode(
        &Header::new(Algorithm::ES256),
        &body,
        &EncodingKey::from_ec_pem(&fixture("ec-private.pem")).expect("ec key"),
    )
    .expect("token");
    assert_eq!(
        status(&url, Some(&es256), None).await,
        (401, "unauthorized".into())
    );

    // ES256 with an EC key file.
    let ec_public = dir.path().join("ec.pem");
    std::fs::write(&ec_public, fixture("ec-public.pem")).expect("write key");
    let ec_relay = Relay::start(
        &nats.url(),
        &[
            ("RELAY_AUTH", "jwt"),
            (
                "RELAY_JWT_PUBLIC_KEY_FILE",
                ec_public.to_str().expect("utf-8"),
            ),
        ],
    )
    .await;
    let ec_url = ec_relay.url("/v1/deployments/d-1/events");
    assert_eq!(status(&ec_url, Some(&es256), None).await.0, 200);
    assert_eq!(status(&ec_url, Some(&rs256), None).await.0, 401);
}

/// Key rotation (docs/operations.md): a key file holding the old and the new public key accepts
/// tokens of either, and a confused or foreign token still fails; the file without the old key
/// refuses the old tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_file_with_the_old_and_the_new_key_accepts_both_during_a_rotation() {
    let nats = Nats::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let both = dir.path().join("keys.pem");
    let mut bundle = fixture("rsa-public.pem");
    bundle.extend(fixture("ec-public.pem"));
    std::fs::write(&both, &bundle).expect("write keys");
    let relay = Relay::start(
        &nats.url(),
        &[
            ("RELAY_AUTH", "jwt"),
            ("RELAY_JWT_PUBLIC_KEY_FILE", both.to_str().expect("utf-8")),
        ],
    )
    .await;
    let url = relay.url("/v1/deployments/d-1/events");
    let body = claims(&["deploy.>"]);
    let old = encode(
        &Header::new(Algorithm::RS256),
        &body,
        &EncodingKey::from_rsa_pem(&fixture("rsa-private.pem")).expect("rsa key"),
    )
    .expect("token");
    let new = encode(
        &Header::new(Algorithm::ES256),
        &body,
        &EncodingKey::from_ec_pem(&fixture("ec-private.pem")).expect("ec key"),
    )
    .expect("token");
    assert_eq!(
        status(&url, Some(&old), None).await.0,
        200,
        "the old key's token"
    );
    assert_eq!(
        status(&url, Some(&new), None).await.0,
        200,
        "the new key's token"
    );
    let confused = hs256(&body, &fixture("rsa-public.pem"));
    assert_eq!(status(&url, Some(&confused), None).await.0, 401);
    let foreign = hs256(&body, b"some other secret");
    assert_eq!(status(&url, Some(&foreign), None).await.0, 401);

    // The rotation done: only the new key; the old tokens are refused.
    let only_new = dir.path().join("new.pem");
    std::fs::write(&only_new, fixture("ec-public.pem")).expect("write key");
    let rotated = Relay::start(
        &nats.url(),
        &[
            ("RELAY_AUTH", "jwt"),
            (
                "RELAY_JWT_PUBLIC_KEY_FILE",
                only_new.to_str().expect("utf-8"),
            ),
        ],
    )
    .await;
    let url = rotated.url("/v1/deployments/d-1/events");
    assert_eq!(status(&url, Some(&new), None).await.0, 200);
    assert_eq!(status(&url, Some(&old), None).await.0, 401);

    // A file with a block that is no key refuses to start, naming the block.
    let broken = dir.path().join("broken.pem");
    let mut text = fixture("ec-public.pem");
    text.extend(b"-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n");
    std::fs::write(&broken, text).expect("write keys");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sse-relay"))
        .arg("serve")
        .env("RELAY_AUTH", "jwt")
        .env("RELAY_JWT_PUBLIC_KEY_FILE", &broken)
        .env("RELAY_NATS_URL", nats.url())
        .env("RELAY_LISTEN", "127.0.0.1:0")
        .env("RELAY_ADMIN_LISTEN", "127.0.0.1:0")
        .output();
    let out = tokio::time::timeout(WAIT, out)
        .await
        .expect("exits in time")
        .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("RELAY_JWT_PUBLIC_KEY_FILE") && stderr.contains("PEM block 2"),
        "{stderr}"
    );
}
