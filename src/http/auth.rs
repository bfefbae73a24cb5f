//! The bearer token: `Authorization: Bearer TOKEN`, or the cookie `gaze_token` that the
//! page's token form sets for a browser (which cannot add headers to the images it loads).

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};

use super::{ApiError, HttpOptions};

/// The cookie a browser carries the token in.
pub(crate) const COOKIE: &str = "gaze_token";

/// `None` when the request may go on; else the 401 to answer with.
pub(crate) fn refusal(opts: &HttpOptions, req: &Request) -> Option<Response> {
    let token = opts.token.as_ref()?;
    // A liveness probe needs no secret.
    if req.uri().path() == "/healthz" {
        return None;
    }
    let headers = req.headers();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        // The page's form stores it percent-escaped (encodeURIComponent).
        .map(|(_, value)| super::params::unescape(value, false).unwrap_or_default());
    let given = bearer.map(str::to_string).or(cookie);
    if given
        .as_deref()
        .is_some_and(|g| same(g.as_bytes(), token.as_bytes()))
    {
        return None;
    }
    let wants_page = req.uri().path() == "/"
        && headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/html"));
    let mut response = if wants_page {
        (StatusCode::UNAUTHORIZED, Html(TOKEN_FORM)).into_response()
    } else {
        let message = match given {
            None => "this server needs a token: send Authorization: Bearer TOKEN",
            Some(_) => "wrong token",
        };
        ApiError::new(StatusCode::UNAUTHORIZED, message).into_response()
    };
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    Some(response)
}

/// Compares without stopping at the first difference, so the time taken says nothing about
/// how much of a guess was right.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The page shown to a browser without the token: it sets the cookie and reloads.
const TOKEN_FORM: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>gaze: token needed</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{font-family:system-ui,sans-serif;max-width:28rem;margin:4rem auto;padding:0 1rem}
input,button{font:inherit;padding:.4rem}</style></head>
<body><main><h1>gaze</h1><p>This server needs its token.</p>
<form id="f"><label for="t">Token</label><br><input id="t" type="password" autocomplete="current-password" required autofocus>
<button>Open</button></form>
<script>document.getElementById("f").addEventListener("submit",function(e){e.preventDefault();
document.cookie="gaze_token="+encodeURIComponent(document.getElementById("t").value)+"; path=/; SameSite=Strict";
location.reload();});</script></main></body></html>
"#;

#[cfg(test)]
mod tests {
    use super::same;

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"secret", b"secret"));
        assert!(!same(b"secret", b"secreT"));
        assert!(!same(b"secret", b"secret2"));
    }
}
