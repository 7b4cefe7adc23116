//! Requests a browser can be tricked into sending are refused before any handler runs.
//!
//! - **DNS rebinding.** A server on a loopback address answers only to a `Host` that
//!   names loopback (`localhost`, `*.localhost`, `127.0.0.1`, `[::1]`) or is listed
//!   in `http.allowed-hosts`: a page on `evil.example` whose name was rebound to
//!   127.0.0.1 sends `Host: evil.example` and gets 421, so it can read nothing.
//! - **Cross-site writes (CSRF).** A request that changes state (any method but GET,
//!   HEAD, OPTIONS) and carries an `Origin` must come from this server's own origin or
//!   one of `http.cors-origins`. Browsers always send `Origin` on such requests, so a
//!   page on another site cannot post events, start runs or replay dead letters, with
//!   or without the session cookie. Clients that are not browsers send no `Origin`
//!   and are not affected. Ingest also refuses bodies that are not JSON, which a page
//!   could send without a preflight.

use axum::Router;
use axum::extract::Request;
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::IntoResponse;
use serde_json::json;
use tributary_core::config::HttpConfig;

#[derive(Clone)]
struct Guard {
    /// Check `Host` (the server listens on loopback only).
    check_host: bool,
    allowed_hosts: Vec<String>,
    cors_origins: Vec<String>,
}

/// `app` behind the checks above.
pub fn with_guard(app: Router, http: &HttpConfig) -> Router {
    let loopback = match http.addr.parse::<std::net::SocketAddr>() {
        Ok(a) => a.ip().is_loopback(),
        Err(_) => http.addr.starts_with("localhost:"),
    };
    let guard = Guard {
        check_host: loopback && !http.allowed_hosts.iter().any(|h| h == "*"),
        allowed_hosts: http
            .allowed_hosts
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
        cors_origins: http.cors_origins.clone(),
    };
    app.layer(axum::middleware::from_fn(
        move |req: Request, next: Next| {
            let guard = guard.clone();
            async move {
                match guard.check(&req) {
                    Ok(()) => next.run(req).await,
                    Err((status, message)) => {
                        (status, axum::Json(json!({ "error": message }))).into_response()
                    }
                }
            }
        },
    ))
}

impl Guard {
    fn check(&self, req: &Request) -> Result<(), (StatusCode, String)> {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_ascii_lowercase)
            .or_else(|| {
                req.uri()
                    .authority()
                    .map(|a| a.as_str().to_ascii_lowercase())
            });
        if self.check_host
            && let Some(host) = &host
            && !self.host_allowed(host)
        {
            return Err((
                StatusCode::MISDIRECTED_REQUEST,
                format!(
                    "Host `{}` is not a name of this server, which listens on loopback only; add it to http.allowed-hosts if it is",
                    truncate(host)
                ),
            ));
        }
        let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
        if !safe && let Some(origin) = req.headers().get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("null").to_ascii_lowercase();
            let same = origin
                .split_once("://")
                .map(|(_, authority)| Some(authority) == host.as_deref())
                .unwrap_or(false);
            let listed = self
                .cors_origins
                .iter()
                .any(|o| o == "*" || o.eq_ignore_ascii_case(&origin));
            if !(same || listed) {
                return Err((
                    StatusCode::FORBIDDEN,
                    format!(
                        "cross-site request refused: Origin `{}` is neither this server nor one of http.cors-origins",
                        truncate(&origin)
                    ),
                ));
            }
        }
        Ok(())
    }

    fn host_allowed(&self, host: &str) -> bool {
        let name = match host.strip_prefix('[') {
            // [::1]:8080
            Some(rest) => rest.split(']').next().unwrap_or(""),
            None => host.rsplit_once(':').map_or(host, |(n, port)| {
                if port.chars().all(|c| c.is_ascii_digit()) {
                    n
                } else {
                    host
                }
            }),
        };
        name == "localhost"
            || name.ends_with(".localhost")
            || name
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
            || self.allowed_hosts.iter().any(|h| h == host || h == name)
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(100).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    fn guard() -> Guard {
        Guard {
            check_host: true,
            allowed_hosts: vec!["tributary.internal".into()],
            cors_origins: vec!["https://grafana.example.com".into()],
        }
    }

    fn req(method: &str, host: &str, origin: Option<&str>) -> Request {
        let mut b = Request::builder()
            .method(method)
            .uri("/api/v1/batch/runs")
            .header("host", host);
        if let Some(o) = origin {
            b = b.header("origin", o);
        }
        b.body(Body::empty()).unwrap()
    }

    #[test]
    fn loopback_names_pass_and_rebound_names_do_not() {
        let g = guard();
        for host in [
            "localhost:8080",
            "127.0.0.1:8080",
            "[::1]:8080",
            "app.localhost",
            "127.0.0.1",
            "tributary.internal:8080",
        ] {
            assert!(g.check(&req("GET", host, None)).is_ok(), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:8080",
            "127.0.0.1.evil.example",
        ] {
            assert_eq!(
                g.check(&req("GET", host, None)).unwrap_err().0,
                StatusCode::MISDIRECTED_REQUEST,
                "{host}"
            );
        }
    }

    #[test]
    fn cross_site_writes_are_refused_and_same_site_ones_pass() {
        let g = guard();
        assert!(
            g.check(&req(
                "POST",
                "localhost:8080",
                Some("http://localhost:8080")
            ))
            .is_ok()
        );
        assert!(
            g.check(&req("POST", "localhost:8080", None)).is_ok(),
            "not a browser"
        );
        assert!(
            g.check(&req(
                "POST",
                "localhost:8080",
                Some("https://grafana.example.com")
            ))
            .is_ok()
        );
        for origin in ["https://evil.example", "null", "http://localhost:9999"] {
            assert_eq!(
                g.check(&req("POST", "localhost:8080", Some(origin)))
                    .unwrap_err()
                    .0,
                StatusCode::FORBIDDEN,
                "{origin}"
            );
        }
        // Reads are not state-changing (CORS keeps their answers from other sites).
        assert!(
            g.check(&req("GET", "localhost:8080", Some("https://evil.example")))
                .is_ok()
        );
    }
}
