//! Keeps other web sites out of the console: while requests are trusted (no user exists, the
//! listener is loopback only) a request must name a loopback host (a DNS-rebinding page names
//! its own); and always, when a browser says where it comes from, it must come from the console
//! itself (a cross-site form or `fetch` would stop pipelines otherwise, with the credentials
//! the browser holds).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Refuses, with 403 and the API's JSON error, what [`refusal`] refuses; once users exist (every
/// request authenticates) the Host may name the server by any name its certificate holds.
pub(super) async fn same_origin(
    State(state): State<Arc<super::HttpState>>,
    request: Request,
    next: Next,
) -> Response {
    let any_host = state.engine.catalog().requires_authentication();
    match refusal_for(request.headers(), request.method().is_safe(), any_host) {
        None => next.run(request).await,
        Some(message) => {
            tracing::warn!(%message, uri = %request.uri(), "Refused an HTTP request.");
            let body = serde_json::json!({"error": {"code": "42501", "message": message}});
            (StatusCode::FORBIDDEN, axum::Json(body)).into_response()
        }
    }
}

/// Why a request with `headers` is refused, if it is: a Host that is not loopback, an Origin
/// other than the Host's own, or, for a request that changes something (`safe` false: a POST),
/// a browser's `Sec-Fetch-Site: cross-site` (a link to the console from another site is a safe
/// GET and opens it). Clients that are not browsers (curl, Prometheus) send no Origin and pass.
#[cfg(test)]
pub(super) fn refusal(headers: &HeaderMap, safe: bool) -> Option<String> {
    refusal_for(headers, safe, false)
}

/// [`refusal`], with any Host accepted when `any_host`.
fn refusal_for(headers: &HeaderMap, safe: bool, any_host: bool) -> Option<String> {
    let host = match headers.get(header::HOST).map(|h| h.to_str()) {
        None => None,
        Some(Ok(host)) if any_host || is_loopback_host(host) => Some(host),
        Some(_) => {
            return Some(
                "the Host header must name this machine's loopback address (localhost, \
                 127.0.0.1 or [::1]); this server serves no other name"
                    .into(),
            )
        }
    };
    if let Some(origin) = headers.get(header::ORIGIN) {
        let same = match (origin.to_str(), host) {
            (Ok(origin), Some(host)) => origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
                .is_some_and(|rest| rest.eq_ignore_ascii_case(host)),
            _ => false,
        };
        if !same {
            return Some(
                "requests from other web sites are refused (Origin differs from Host)".into(),
            );
        }
    }
    if !safe
        && headers
            .get("sec-fetch-site")
            .is_some_and(|site| site.as_bytes() == b"cross-site")
    {
        return Some(
            "requests from other web sites are refused (Sec-Fetch-Site: cross-site)".into(),
        );
    }
    None
}

/// Whether `host` (a Host header: a name or address, with an optional port) is loopback.
fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [::1] or [::1]:port
        match rest.split_once(']') {
            Some((address, "")) => address,
            Some((address, port)) if port.strip_prefix(':').is_some_and(is_port) => address,
            _ => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if is_port(port) => name,
            Some(_) => return false,
            None => host,
        }
    };
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    name.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

/// A port number.
fn is_port(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) && text.parse::<u16>().is_ok()
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn loopback_hosts_pass_and_others_do_not() {
        for host in [
            "localhost",
            "localhost:7480",
            "127.0.0.1:7480",
            "127.3.4.5",
            "[::1]:80",
            "[::1]",
            "LOCALHOST:1",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:7480",
            "10.0.0.1:7480",
            "localhost.evil.example",
            "[::2]:80",
            "127.0.0.1:x",
            "127.0.0.1:",
            "[::1]x",
            "localhost:99999",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    fn refusal_post(headers: &HeaderMap) -> Option<String> {
        refusal(headers, false)
    }

    #[test]
    fn a_link_from_another_site_opens_the_console_but_cannot_post() {
        let link = headers(&[("host", "127.0.0.1:7480"), ("sec-fetch-site", "cross-site")]);
        assert_eq!(refusal(&link, true), None);
        assert!(refusal(&link, false).is_some());
    }

    #[test]
    fn a_rebinding_page_or_another_site_is_refused() {
        // curl and Prometheus: no Origin.
        assert_eq!(refusal_post(&headers(&[("host", "127.0.0.1:7480")])), None);
        assert_eq!(refusal_post(&headers(&[])), None);
        // The console itself.
        assert_eq!(
            refusal_post(&headers(&[
                ("host", "127.0.0.1:7480"),
                ("origin", "http://127.0.0.1:7480"),
                ("sec-fetch-site", "same-origin")
            ])),
            None
        );
        // DNS rebinding: the browser names the attacker's host.
        assert!(refusal_post(&headers(&[
            ("host", "rebind.evil.example:7480"),
            ("origin", "http://rebind.evil.example:7480")
        ]))
        .is_some());
        // A cross-site form post or fetch.
        assert!(refusal_post(&headers(&[
            ("host", "127.0.0.1:7480"),
            ("origin", "https://evil.example")
        ]))
        .is_some());
        assert!(
            refusal_post(&headers(&[("host", "127.0.0.1:7480"), ("origin", "null")])).is_some()
        );
        assert!(refusal_post(&headers(&[
            ("host", "127.0.0.1:7480"),
            ("origin", "http://127.0.0.1:7481")
        ]))
        .is_some());
        assert!(refusal_post(&headers(&[
            ("host", "127.0.0.1:7480"),
            ("sec-fetch-site", "cross-site")
        ]))
        .is_some());
    }
}
