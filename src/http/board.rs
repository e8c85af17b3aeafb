//! `GET /`: a minimal live page, and `GET /client.js` + `GET /client.d.ts`: the browser client
//! module it uses (`docs/api.md` §1), all embedded in the binary.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};

const BOARD_HTML: &str = include_str!("board.html");
const CLIENT_JS: &str = include_str!("client.js");
const CLIENT_TYPES: &str = include_str!("client.d.ts");

pub async fn board() -> Html<&'static str> {
    Html(BOARD_HTML)
}

pub async fn client_js(headers: HeaderMap) -> Response {
    asset(&headers, CLIENT_JS, "text/javascript; charset=utf-8")
}

pub async fn client_types(headers: HeaderMap) -> Response {
    asset(
        &headers,
        CLIENT_TYPES,
        "application/typescript; charset=utf-8",
    )
}

/// A static text asset with a strong ETag of its content: a browser revalidates it with
/// `If-None-Match` and gets 304 until the relay is upgraded with a different file.
fn asset(headers: &HeaderMap, body: &'static str, content_type: &'static str) -> Response {
    let etag = etag_of(body);
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut response = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, content_type)], body).into_response()
    };
    let h = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, value);
    }
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300, must-revalidate"),
    );
    response
}

/// FNV-1a of the content, quoted: stable across builds of the same file.
fn etag_of(body: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in body.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("\"{hash:016x}\"")
}
