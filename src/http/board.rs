//! `GET /`: a minimal live page, embedded in the binary.

use axum::response::Html;

const BOARD_HTML: &str = include_str!("board.html");

pub async fn board() -> Html<&'static str> {
    Html(BOARD_HTML)
}
