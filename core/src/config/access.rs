//! `[auth]`: API tokens and their scopes.

use serde::{Deserialize, Serialize};

/// API tokens. None configured: every endpoint is open, and Tributary listens on a
/// loopback address only unless `allow-unauthenticated` says otherwise.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AuthConfig {
    /// Bearer tokens and the scopes each grants.
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// Listen on a non-loopback address without tokens.
    #[serde(default)]
    pub allow_unauthenticated: bool,
}

/// Shortest API token accepted: a token is a password that never expires.
pub const MIN_TOKEN_LEN: usize = 16;

impl AuthConfig {
    /// The first token that must not be used, and why: empty, short, with spaces or
    /// control characters, or the same as another. (An empty token would let
    /// `?access_token=` with nothing in it through.) Never says the token itself.
    pub fn weak_token(&self) -> Option<(usize, String)> {
        for (i, t) in self.tokens.iter().enumerate() {
            let name = &t.name;
            if t.token.len() < MIN_TOKEN_LEN {
                return Some((
                    i,
                    format!(
                        "token `{name}` has {} characters; use at least {MIN_TOKEN_LEN} random ones (e.g. `openssl rand -hex 24`)",
                        t.token.len()
                    ),
                ));
            }
            if !t.token.bytes().all(|b| b.is_ascii_graphic()) {
                return Some((
                    i,
                    format!("token `{name}` has spaces or control characters; use visible ASCII"),
                ));
            }
            if self.tokens[..i].iter().any(|o| o.token == t.token) {
                return Some((i, format!("token `{name}` is the same as another token")));
            }
            if t.scopes.is_empty() {
                return Some((i, format!("token `{name}` has no scopes")));
            }
        }
        None
    }
}

/// One API token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TokenConfig {
    /// Who holds it (named in refusals and logs, never the token itself).
    pub name: String,
    /// The secret a client sends as `Authorization: Bearer …`.
    pub token: String,
    /// What the token may do.
    pub scopes: Vec<Scope>,
}

/// What a token may do.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Posting events.
    Ingest,
    /// Reading views, status, runs and the SQL endpoint.
    Read,
    /// Starting batch runs; includes `ingest` and `read`.
    Admin,
}

impl Scope {
    /// The scope's name as the configuration spells it.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Ingest => "ingest",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }
}
