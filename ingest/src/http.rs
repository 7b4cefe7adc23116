//! `POST /api/v1/streams/{stream}/events`: a JSON array of objects (or one object), or
//! NDJSON with `Content-Type: application/x-ndjson`.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use axum::routing::post;
use serde_json::Value;

use crate::error::IngestError;
use crate::service::{Ingest, IngestReport, RawRecord};

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
) -> Result<Json<IngestReport>, IngestError> {
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
    let ndjson = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.starts_with("application/x-ndjson") || ct.starts_with("application/jsonl")
        });
    let records = if ndjson {
        parse_ndjson(&bytes)?
    } else {
        parse_json(&bytes)?
    };
    Ok(Json(state.ingest.ingest(&stream, records).await?))
}

fn parse_json(bytes: &[u8]) -> Result<Vec<RawRecord>, IngestError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| IngestError::NotJson(e.to_string()))?;
    match value {
        Value::Array(items) => Ok(items.into_iter().map(RawRecord::Parsed).collect()),
        obj @ Value::Object(_) => Ok(vec![RawRecord::Parsed(obj)]),
        _ => Err(IngestError::NotJson(
            "expected a JSON array of objects (or NDJSON with Content-Type: application/x-ndjson)"
                .into(),
        )),
    }
}

fn parse_ndjson(bytes: &[u8]) -> Result<Vec<RawRecord>, IngestError> {
    let mut out = Vec::new();
    let mut parsed_any = false;
    for line in bytes.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<Value>(line) {
            Ok(v) => {
                parsed_any = true;
                out.push(RawRecord::Parsed(v));
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
        assert_eq!(parse_json(b"[{\"a\":1},{\"a\":2}]").unwrap().len(), 2);
        assert_eq!(parse_json(b"{\"a\":1}").unwrap().len(), 1);
        assert_eq!(parse_json(b"  ").unwrap().len(), 0);
        assert!(matches!(parse_json(b"{nope"), Err(IngestError::NotJson(_))));
        assert!(matches!(parse_json(b"42"), Err(IngestError::NotJson(_))));
    }

    #[test]
    fn ndjson_keeps_good_lines_and_reports_bad_ones() {
        let recs = parse_ndjson(b"{\"a\":1}\n{bad\n\n{\"a\":3}\r\n").unwrap();
        assert_eq!(recs.len(), 3);
        assert!(matches!(recs[1], RawRecord::Malformed { .. }));
        assert!(matches!(
            parse_ndjson(b"bad\nworse\n"),
            Err(IngestError::NotJson(_))
        ));
    }
}
