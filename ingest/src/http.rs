//! `POST /api/v1/streams/{stream}/events`: a JSON array of objects (or one object), or
//! NDJSON with `Content-Type: application/x-ndjson`.
//!
//! Only JSON media types are taken: a browser page on another site can send
//! `text/plain` or a form without asking (no CORS preflight), but not JSON. Bodies are
//! parsed no further than the record limit, so a huge array of tiny values is refused
//! before it is materialised. With `Idempotency-Key`, a retry adds nothing
//! ([`crate::idempotency`]).

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use axum::routing::post;
use serde_json::Value;

use crate::error::IngestError;
use crate::idempotency::IdempotencyKey;
use crate::service::{Ingest, IngestReport, RawRecord};

/// The header a client sets to make a request idempotent.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

#[derive(Clone)]
struct IngestState {
    ingest: Arc<Ingest>,
    max_body: usize,
}

/// The ingest routes, ready to merge into the server's router.
pub fn router(ingest: Arc<Ingest>, max_body: usize) -> Router {
    Router::new()
        .route("/api/v1/streams/{stream}/events", post(post_events))
        .with_state(IngestState { ingest, max_body })
}

async fn post_events(
    State(state): State<IngestState>,
    Path(stream): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<axum::response::Response, IngestError> {
    use axum::response::IntoResponse;
    if !state.ingest.has_stream(&stream) {
        return Err(IngestError::UnknownStream(stream));
    }
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        && len > state.max_body
    {
        return Err(IngestError::BodyTooLarge {
            size: len.to_string(),
            limit: state.max_body,
        });
    }
    let bytes = axum::body::to_bytes(body, state.max_body)
        .await
        .map_err(|_| IngestError::BodyTooLarge {
            size: "more than the limit".into(),
            limit: state.max_body,
        })?;
    let ndjson = match media_type(&headers)? {
        Media::Json => false,
        Media::Ndjson => true,
    };
    let key = headers
        .get(IDEMPOTENCY_KEY)
        .map(|v| {
            let key = v
                .to_str()
                .map_err(|_| IngestError::BadIdempotencyKey("not visible ASCII".into()))?;
            IdempotencyKey::new(key, &bytes)
        })
        .transpose()?;
    let max = state.ingest.max_records();
    let records = if ndjson {
        parse_ndjson(&bytes, max)?
    } else {
        parse_json(&bytes, max)?
    };
    let report: IngestReport = state.ingest.ingest_once(&stream, records, key).await?;
    // Nothing valid at all: a 400 that still names every record's problem.
    let status = if report.accepted == 0 && report.rejected > 0 {
        axum::http::StatusCode::BAD_REQUEST
    } else {
        axum::http::StatusCode::OK
    };
    Ok((status, Json(report)).into_response())
}

enum Media {
    Json,
    Ndjson,
}

/// The body's media type: JSON (`application/json`, `+json`) or NDJSON; anything else,
/// or none, is refused with 415.
fn media_type(headers: &HeaderMap) -> Result<Media, IngestError> {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return Err(IngestError::UnsupportedMediaType("(none)".into()));
    };
    let text = ct.to_str().unwrap_or("");
    let essence = text
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" => Ok(Media::Json),
        "application/x-ndjson" | "application/jsonl" | "application/jsonlines" => Ok(Media::Ndjson),
        e if e.starts_with("application/") && e.ends_with("+json") => Ok(Media::Json),
        _ => Err(IngestError::UnsupportedMediaType(format!(
            "`{}`",
            text.chars().take(100).collect::<String>()
        ))),
    }
}

fn parse_json(bytes: &[u8], max: usize) -> Result<Vec<RawRecord>, IngestError> {
    use serde::Deserializer;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    // One object: its text is the record (from_slice also refuses anything after it).
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
        let raw: &serde_json::value::RawValue =
            serde_json::from_slice(bytes).map_err(|e| IngestError::NotJson(e.to_string()))?;
        return Ok(vec![RawRecord::Text(raw.get().as_bytes().to_vec())]);
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let body = de
        .deserialize_any(BodyVisitor { max })
        .map_err(|e| match e.to_string() {
            m if m.starts_with(TOO_MANY) => IngestError::TooManyRecords {
                count: format!("more than {max}"),
                limit: max,
            },
            m => IngestError::NotJson(m),
        })?;
    de.end().map_err(|e| IngestError::NotJson(e.to_string()))?;
    Ok(body)
}

const TOO_MANY: &str = "too many records";

/// A body as records, stopping at the first record past `max`.
struct BodyVisitor {
    max: usize,
}

impl<'de> serde::de::Visitor<'de> for BodyVisitor {
    type Value = Vec<RawRecord>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(
            "a JSON array of objects, or one object (or NDJSON with Content-Type: application/x-ndjson)",
        )
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        // Each element's text, checked as JSON but not built into a tree: the service
        // validates it from the bytes and the log stores it as it is.
        while let Some(v) = seq.next_element::<&'de serde_json::value::RawValue>()? {
            if out.len() == self.max {
                return Err(serde::de::Error::custom(TOO_MANY));
            }
            out.push(RawRecord::Text(v.get().as_bytes().to_vec()));
        }
        Ok(out)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        use serde::Deserialize;
        let obj = Value::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
        Ok(vec![RawRecord::Parsed(obj)])
    }
}

fn parse_ndjson(bytes: &[u8], max: usize) -> Result<Vec<RawRecord>, IngestError> {
    // Count before parsing: the limit holds before anything is materialised.
    let lines = bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .count();
    if lines > max {
        return Err(IngestError::TooManyRecords {
            count: lines.to_string(),
            limit: max,
        });
    }
    let mut out = Vec::new();
    let mut parsed_any = false;
    for line in bytes.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        // A syntax check only (no tree): the service validates the line's bytes.
        match serde_json::from_slice::<serde::de::IgnoredAny>(line) {
            Ok(_) => {
                parsed_any = true;
                out.push(RawRecord::Text(line.to_vec()));
            }
            Err(e) => out.push(RawRecord::Malformed {
                text: String::from_utf8_lossy(line).into_owned(),
                error: e.to_string(),
            }),
        }
    }
    if !parsed_any && !out.is_empty() {
        return Err(IngestError::NotJson(
            "no line of the NDJSON body is JSON".into(),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_body_forms() {
        assert_eq!(parse_json(b"[{\"a\":1},{\"a\":2}]", 10).unwrap().len(), 2);
        assert_eq!(parse_json(b"{\"a\":1}", 10).unwrap().len(), 1);
        assert_eq!(parse_json(b"  ", 10).unwrap().len(), 0);
        assert!(matches!(
            parse_json(b"{nope", 10),
            Err(IngestError::NotJson(_))
        ));
        assert!(matches!(
            parse_json(b"42", 10),
            Err(IngestError::NotJson(_))
        ));
        assert!(matches!(
            parse_json(b"[{}] x", 10),
            Err(IngestError::NotJson(_))
        ));
    }

    #[test]
    fn each_record_keeps_the_text_it_arrived_as() {
        let text = |r: &RawRecord| match r {
            RawRecord::Text(b) => String::from_utf8(b.clone()).unwrap(),
            _ => panic!("not kept as text"),
        };
        let recs = parse_json(b" [ {\"a\" : 1} ,\n{\"b\":[2, 3]} ] ", 10).unwrap();
        assert_eq!(
            recs.iter().map(text).collect::<Vec<_>>(),
            ["{\"a\" : 1}", "{\"b\":[2, 3]}"]
        );
        let one = parse_json(b"\n {\"a\": \"x\"}\n", 10).unwrap();
        assert_eq!(text(&one[0]), "{\"a\": \"x\"}");
        let lines = parse_ndjson(b"{\"a\" :1}\r\n", 10).unwrap();
        assert_eq!(text(&lines[0]), "{\"a\" :1}");
    }

    #[test]
    fn the_record_limit_holds_before_the_body_is_materialised() {
        let mut body = b"[".to_vec();
        body.extend(std::iter::repeat_n(b"0,".as_slice(), 1_000_000).flatten());
        body.extend(b"0]");
        assert!(matches!(
            parse_json(&body, 100),
            Err(IngestError::TooManyRecords { limit: 100, .. })
        ));
        assert_eq!(parse_json(b"[{},{}]", 2).unwrap().len(), 2);
        assert!(matches!(
            parse_ndjson(b"{}\n{}\n{}\n", 2),
            Err(IngestError::TooManyRecords { .. })
        ));
    }

    #[test]
    fn ndjson_keeps_good_lines_and_reports_bad_ones() {
        let recs = parse_ndjson(b"{\"a\":1}\n{bad\n\n{\"a\":3}\r\n", 10).unwrap();
        assert_eq!(recs.len(), 3);
        assert!(matches!(recs[1], RawRecord::Malformed { .. }));
        assert!(matches!(
            parse_ndjson(b"bad\nworse\n", 10),
            Err(IngestError::NotJson(_))
        ));
    }
}
