//! What a process exposes and presents: it listens beyond loopback only with API
//! tokens (or when told it may), and a serving process presents an `admin` token to
//! the speed processes' internal endpoint.

use anyhow::bail;
use tributary_core::config::{Config, Scope};

/// Without API tokens, only a loopback address unless the configuration says otherwise.
pub fn check_exposure(config: &Config) -> anyhow::Result<()> {
    if !config.auth.tokens.is_empty() || config.auth.allow_unauthenticated {
        return Ok(());
    }
    let loopback = match config.http.addr.parse::<std::net::SocketAddr>() {
        Ok(a) => a.ip().is_loopback(),
        Err(_) => config.http.addr.starts_with("localhost:"),
    };
    if !loopback {
        bail!(
            "refusing to listen on {} without API tokens: configure [auth] tokens \
             (see README, \"Security\") or set auth.allow-unauthenticated = true",
            config.http.addr
        );
    }
    Ok(())
}

/// The token `serve` presents to the speed process's internal endpoint, which asks for
/// scope `admin` once tokens are configured: the first configured token with it.
pub fn speed_token(auth: &tributary_core::config::AuthConfig) -> anyhow::Result<Option<String>> {
    if auth.tokens.is_empty() {
        return Ok(None);
    }
    match auth
        .tokens
        .iter()
        .find(|t| t.scopes.contains(&Scope::Admin))
    {
        Some(t) => Ok(Some(t.token.clone())),
        None => bail!(
            "auth.tokens: `tributary serve` calls the speed process's internal endpoint, which \
             needs a token with scope \"admin\"; none of the configured tokens has it"
        ),
    }
}
