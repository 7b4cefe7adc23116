//! API tokens with scopes. Once any token is configured (`[auth] tokens`), ingest
//! endpoints need the `ingest` scope, reads (views, SQL, live push, runs, stats, the
//! dashboard) `read`, and starting batch runs `admin`; `admin` includes the other two.
//! `/health` stays open. A token comes as `Authorization: Bearer <token>`, or as
//! `?access_token=<token>` where a browser cannot set headers (EventSource), or as the
//! dashboard's session cookie [`COOKIE`] (set by its login form, `SameSite=Strict` so
//! other sites cannot ride on it). Tokens are compared in constant time.

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use subtle::ConstantTimeEq;
use tributary_core::config::{AuthConfig, Scope};

/// The dashboard's session cookie, holding the token typed into its login field.
pub const COOKIE: &str = "tributary_token";

/// The configured tokens, shared by every guarded router.
#[derive(Clone, Default)]
pub struct Auth {
    tokens: Arc<Vec<Token>>,
    /// Session cookies carry `Secure` (the server speaks HTTPS).
    secure_cookies: bool,
}

struct Token {
    name: String,
    secret: Vec<u8>,
    scopes: Vec<Scope>,
}

impl Auth {
    /// The tokens `config` names (none: every request is let through).
    pub fn new(config: &AuthConfig) -> Self {
        Auth {
            tokens: Arc::new(
                config
                    .tokens
                    .iter()
                    .map(|t| Token {
                        name: t.name.clone(),
                        secret: t.token.as_bytes().to_vec(),
                        scopes: t.scopes.clone(),
                    })
                    .collect(),
            ),
            secure_cookies: false,
        }
    }

    /// Mark session cookies `Secure`, for a server that speaks HTTPS only.
    pub fn with_secure_cookies(mut self, secure: bool) -> Self {
        self.secure_cookies = secure;
        self
    }

    /// The attributes of the dashboard's session cookie.
    pub fn cookie_attributes(&self) -> &'static str {
        if self.secure_cookies {
            "Path=/; HttpOnly; SameSite=Strict; Secure"
        } else {
            "Path=/; HttpOnly; SameSite=Strict"
        }
    }

    /// Whether any token is configured.
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// `router` with every route requiring `scope` (a no-op without tokens).
    pub fn require(&self, scope: Scope, router: Router) -> Router {
        if !self.enabled() {
            return router;
        }
        let auth = self.clone();
        router.layer(axum::middleware::from_fn(
            move |req: Request, next: Next| {
                let auth = auth.clone();
                async move {
                    match auth.check(&req, scope) {
                        Ok(()) => next.run(req).await,
                        Err((status, message)) => refuse(status, message),
                    }
                }
            },
        ))
    }

    /// Whether the request may use endpoints of `scope` (always, without tokens).
    pub fn allows(&self, req: &Request, scope: Scope) -> bool {
        !self.enabled() || self.check(req, scope).is_ok()
    }

    /// Whether `token` is a configured token with `scope`.
    pub fn token_allows(&self, token: &str, scope: Scope) -> bool {
        self.verify(token, scope).is_ok()
    }

    fn check(&self, req: &Request, scope: Scope) -> Result<(), (StatusCode, String)> {
        let Some(presented) = presented_token(req) else {
            return Err((
                StatusCode::UNAUTHORIZED,
                format!(
                    "missing API token: send `Authorization: Bearer <token>` with the `{}` scope",
                    scope.name()
                ),
            ));
        };
        self.verify(&presented, scope)
    }

    fn verify(&self, presented: &str, scope: Scope) -> Result<(), (StatusCode, String)> {
        if presented.is_empty() {
            // Configured tokens are never empty (checked at start), but say it plainly.
            return Err((StatusCode::UNAUTHORIZED, "empty API token".into()));
        }
        // Compare against every token, so timing does not tell which one nearly matched.
        let mut found: Option<&Token> = None;
        for t in self.tokens.iter() {
            if bool::from(t.secret.as_slice().ct_eq(presented.as_bytes())) {
                found = Some(t);
            }
        }
        let Some(token) = found else {
            return Err((StatusCode::UNAUTHORIZED, "unknown API token".into()));
        };
        if token.scopes.contains(&scope) || token.scopes.contains(&Scope::Admin) {
            Ok(())
        } else {
            Err((
                StatusCode::FORBIDDEN,
                format!(
                    "token `{}` lacks the `{}` scope this endpoint needs",
                    token.name,
                    scope.name()
                ),
            ))
        }
    }
}

fn presented_token(req: &Request) -> Option<String> {
    if let Some(v) = req.headers().get(header::AUTHORIZATION) {
        let v = v.to_str().ok()?;
        return v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
            .map(|t| t.trim().to_string());
    }
    if let Some(query) = req.uri().query()
        && let Some((_, v)) =
            url::form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "access_token")
    {
        return Some(v.into_owned());
    }
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| {
            url::form_urlencoded::parse(format!("t={v}").as_bytes())
                .next()
                .map(|(_, t)| t.into_owned())
                .unwrap_or_default()
        })
}

fn refuse(status: StatusCode, message: String) -> Response {
    let mut r = (status, axum::Json(json!({ "error": message }))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"tributary\""),
        );
    }
    r
}
