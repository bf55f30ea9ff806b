//! The pages' static files, compiled into the binary. Each is served under a name that
//! changes with its content (htmx's pinned version, or a hash of our own files), so browsers
//! may keep it for a year without ever using a stale one.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

const HTMX: &[u8] = include_bytes!("assets/htmx-2.0.4.min.js");
const CSS: &[u8] = include_bytes!("assets/console.css");
const JS: &[u8] = include_bytes!("assets/console.js");

pub struct Asset {
    pub name: String,
    body: &'static [u8],
    content_type: &'static str,
}

pub struct Assets {
    pub htmx: Asset,
    pub css: Asset,
    pub js: Asset,
}

impl Assets {
    fn all(&self) -> [&Asset; 3] {
        [&self.htmx, &self.css, &self.js]
    }
}

/// `stem.HASH.ext`, HASH the first 12 hex digits of the content's SHA-256.
fn hashed(stem: &str, ext: &str, body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    format!("{stem}.{}.{ext}", &hex::encode(digest)[..12])
}

pub static ASSETS: LazyLock<Assets> = LazyLock::new(|| Assets {
    htmx: Asset {
        name: "htmx-2.0.4.min.js".to_owned(),
        body: HTMX,
        content_type: "text/javascript; charset=utf-8",
    },
    css: Asset {
        name: hashed("console", "css", CSS),
        body: CSS,
        content_type: "text/css; charset=utf-8",
    },
    js: Asset {
        name: hashed("console", "js", JS),
        body: JS,
        content_type: "text/javascript; charset=utf-8",
    },
});

/// The URL a page links an asset with.
pub fn url(asset: &Asset) -> String {
    format!("{}/assets/{}", super::PREFIX, asset.name)
}

pub async fn serve(Path(name): Path<String>) -> Response {
    match ASSETS.all().into_iter().find(|a| a.name == name) {
        Some(a) => (
            StatusCode::OK,
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(a.content_type),
                ),
                (
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("public, max-age=31536000, immutable"),
                ),
            ],
            a.body,
        )
            .into_response(),
        None => super::html(
            StatusCode::NOT_FOUND,
            "<!doctype html><title>Not found</title><p>No such file.</p>".to_owned(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_change_with_content_and_htmx_keeps_its_licence_header() {
        assert!(ASSETS.css.name.starts_with("console.") && ASSETS.css.name.ends_with(".css"));
        assert_ne!(hashed("a", "css", b"x"), hashed("a", "css", b"y"));
        let head = std::str::from_utf8(&HTMX[..400]).unwrap();
        assert!(
            head.contains("htmx 2.0.4") && head.contains("0BSD"),
            "{head}"
        );
    }
}
