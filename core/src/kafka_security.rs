//! `[log.security]`: how Tributary reaches a secured Kafka cluster (TLS, SASL), and
//! the librdkafka properties that says.
//!
//! Kept apart from `log.options` (librdkafka properties passed as they are) so that
//! the common cases are checked at start-up with the key at fault, and so that secrets
//! (`sasl-password`, `ssl-key-password`) are never printed: they are [`Secret`]s, whose
//! `Debug` and serialised forms are redacted, meant to come from the environment
//! (`TRIBUTARY_LOG__SECURITY__SASL_PASSWORD`). Azure Event Hubs' Kafka endpoint is
//! `protocol = "sasl-ssl"`, `sasl-mechanism = "PLAIN"`, `sasl-username =
//! "$ConnectionString"` and the connection string as the password (README).

use std::path::PathBuf;

use serde::{Deserialize, Serialize, Serializer};

/// A value that must not appear in logs or error messages.
#[derive(Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value itself, for the one place that hands it to the client library.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "Secret(<empty>)"
        } else {
            "Secret(***)"
        })
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

/// librdkafka's `security.protocol`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// No TLS, no SASL.
    #[default]
    Plaintext,
    /// TLS.
    Ssl,
    /// SASL without TLS.
    SaslPlaintext,
    /// SASL over TLS.
    SaslSsl,
}

impl Protocol {
    fn property(self) -> &'static str {
        match self {
            Protocol::Plaintext => "plaintext",
            Protocol::Ssl => "ssl",
            Protocol::SaslPlaintext => "sasl_plaintext",
            Protocol::SaslSsl => "sasl_ssl",
        }
    }

    fn uses_sasl(self) -> bool {
        matches!(self, Protocol::SaslPlaintext | Protocol::SaslSsl)
    }

    fn uses_tls(self) -> bool {
        matches!(self, Protocol::Ssl | Protocol::SaslSsl)
    }
}

/// SASL mechanisms librdkafka has built in (no Kerberos library is linked).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum Mechanism {
    /// User name and password in the clear (use with `sasl-ssl`).
    #[serde(rename = "PLAIN")]
    Plain,
    /// SCRAM with SHA-256.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// SCRAM with SHA-512.
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
    /// OAuth bearer tokens, as librdkafka obtains them.
    #[serde(rename = "OAUTHBEARER")]
    OAuthBearer,
}

impl Mechanism {
    fn property(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha512 => "SCRAM-SHA-512",
            Mechanism::OAuthBearer => "OAUTHBEARER",
        }
    }
}

/// `[log.security]`: TLS and SASL settings for the Kafka client, passed to librdkafka.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct KafkaSecurity {
    /// `plaintext` (default), `ssl`, `sasl-plaintext` or `sasl-ssl`.
    #[serde(default)]
    pub protocol: Protocol,
    /// PEM file of the CA certificates that sign the brokers' (default: the system's).
    #[serde(default)]
    pub ssl_ca_location: Option<PathBuf>,
    /// PEM client certificate, for brokers that authenticate clients by TLS.
    #[serde(default)]
    pub ssl_certificate_location: Option<PathBuf>,
    /// PEM private key of that certificate.
    #[serde(default)]
    pub ssl_key_location: Option<PathBuf>,
    /// Password of the private key, if it has one (from the environment).
    #[serde(default)]
    pub ssl_key_password: Option<Secret>,
    /// Check the broker's host name against its certificate (default on).
    #[serde(default = "yes")]
    pub ssl_verify_hostname: bool,
    /// `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512` or `OAUTHBEARER` (SASL protocols).
    #[serde(default)]
    pub sasl_mechanism: Option<Mechanism>,
    /// The SASL user name.
    #[serde(default)]
    pub sasl_username: Option<String>,
    /// From the environment: `TRIBUTARY_LOG__SECURITY__SASL_PASSWORD`.
    #[serde(default)]
    pub sasl_password: Option<Secret>,
}

fn yes() -> bool {
    true
}

impl KafkaSecurity {
    /// What is missing or contradictory: the key at fault and why.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let fail = |key: &str, message: String| (format!("log.security.{key}"), message);
        let p = self.protocol;
        if p.uses_sasl() {
            let Some(mechanism) = self.sasl_mechanism else {
                return Err(fail(
                    "sasl-mechanism",
                    "a SASL protocol needs a mechanism: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER".into(),
                ));
            };
            if mechanism != Mechanism::OAuthBearer {
                if self.sasl_username.as_deref().is_none_or(str::is_empty) {
                    return Err(fail(
                        "sasl-username",
                        "SASL PLAIN and SCRAM need a user name".into(),
                    ));
                }
                if self.sasl_password.as_ref().is_none_or(|s| s.0.is_empty()) {
                    return Err(fail(
                        "sasl-password",
                        "SASL PLAIN and SCRAM need a password: set TRIBUTARY_LOG__SECURITY__SASL_PASSWORD".into(),
                    ));
                }
            }
        } else if self.sasl_mechanism.is_some() || self.sasl_username.is_some() {
            return Err(fail(
                "protocol",
                format!(
                    "SASL settings are given but the protocol is `{}`: use sasl-ssl or sasl-plaintext",
                    p.property()
                ),
            ));
        }
        let files = [
            ("ssl-ca-location", &self.ssl_ca_location),
            ("ssl-certificate-location", &self.ssl_certificate_location),
            ("ssl-key-location", &self.ssl_key_location),
        ];
        for (key, file) in files {
            let Some(file) = file else { continue };
            if !p.uses_tls() {
                return Err(fail(
                    key,
                    format!(
                        "TLS files are given but the protocol is `{}`: use ssl or sasl-ssl",
                        p.property()
                    ),
                ));
            }
            if !file.is_file() {
                return Err(fail(
                    key,
                    format!("{} is not a readable file", file.display()),
                ));
            }
        }
        if self.ssl_certificate_location.is_some() != self.ssl_key_location.is_some() {
            return Err(fail(
                "ssl-key-location",
                "a client certificate and its key go together: set both or neither".into(),
            ));
        }
        Ok(())
    }

    /// The librdkafka properties this says (secrets included: hand them only to the
    /// client configuration, never to a log line).
    pub fn properties(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![("security.protocol", self.protocol.property().to_string())];
        if self.protocol.uses_tls() {
            let path = |p: &PathBuf| p.display().to_string();
            if let Some(p) = &self.ssl_ca_location {
                out.push(("ssl.ca.location", path(p)));
            }
            if let Some(p) = &self.ssl_certificate_location {
                out.push(("ssl.certificate.location", path(p)));
            }
            if let Some(p) = &self.ssl_key_location {
                out.push(("ssl.key.location", path(p)));
            }
            if let Some(s) = &self.ssl_key_password {
                out.push(("ssl.key.password", s.0.clone()));
            }
            let check = if self.ssl_verify_hostname {
                "https"
            } else {
                "none"
            };
            out.push(("ssl.endpoint.identification.algorithm", check.to_string()));
        }
        if self.protocol.uses_sasl() {
            if let Some(m) = self.sasl_mechanism {
                out.push(("sasl.mechanism", m.property().to_string()));
            }
            if let Some(u) = &self.sasl_username {
                out.push(("sasl.username", u.clone()));
            }
            if let Some(s) = &self.sasl_password {
                out.push(("sasl.password", s.0.clone()));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event_hubs() -> KafkaSecurity {
        KafkaSecurity {
            protocol: Protocol::SaslSsl,
            sasl_mechanism: Some(Mechanism::Plain),
            sasl_username: Some("$ConnectionString".into()),
            sasl_password: Some(Secret::new(
                "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKey=s3cr3t",
            )),
            ssl_verify_hostname: true,
            ..KafkaSecurity::default()
        }
    }

    #[test]
    fn event_hubs_settings_become_librdkafka_properties() {
        let s = event_hubs();
        s.validate().unwrap();
        let props: std::collections::HashMap<_, _> = s.properties().into_iter().collect();
        assert_eq!(props["security.protocol"], "sasl_ssl");
        assert_eq!(props["sasl.mechanism"], "PLAIN");
        assert_eq!(props["sasl.username"], "$ConnectionString");
        assert!(props["sasl.password"].contains("SharedAccessKey"));
        assert_eq!(props["ssl.endpoint.identification.algorithm"], "https");
    }

    #[test]
    fn secrets_are_never_printed() {
        let s = event_hubs();
        let shown = format!("{s:?} {}", toml_like(&s));
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("***"), "{shown}");
    }

    fn toml_like(s: &KafkaSecurity) -> String {
        serde_json::to_string(s).unwrap()
    }

    #[test]
    fn missing_and_contradictory_settings_name_their_key() {
        let shown = |e: (String, String)| format!("{}: {}", e.0, e.1);
        let mut s = event_hubs();
        s.sasl_password = None;
        let e = shown(s.validate().unwrap_err());
        assert!(
            e.contains("log.security.sasl-password")
                && e.contains("TRIBUTARY_LOG__SECURITY__SASL_PASSWORD"),
            "{e}"
        );
        let mut s = event_hubs();
        s.sasl_mechanism = None;
        assert!(shown(s.validate().unwrap_err()).contains("sasl-mechanism"));
        let s = KafkaSecurity {
            sasl_username: Some("u".into()),
            ..KafkaSecurity::default()
        };
        assert!(shown(s.validate().unwrap_err()).contains("log.security.protocol"));
        let s = KafkaSecurity {
            protocol: Protocol::Ssl,
            ssl_ca_location: Some("/no/such/ca.pem".into()),
            ..KafkaSecurity::default()
        };
        let e = shown(s.validate().unwrap_err());
        assert!(
            e.contains("ssl-ca-location") && e.contains("/no/such/ca.pem"),
            "{e}"
        );
        let s = KafkaSecurity {
            protocol: Protocol::Plaintext,
            ssl_ca_location: Some("/etc/hostname".into()),
            ..KafkaSecurity::default()
        };
        assert!(shown(s.validate().unwrap_err()).contains("use ssl or sasl-ssl"));
    }
}
