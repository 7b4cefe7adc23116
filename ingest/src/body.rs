//! A request body as records: a JSON array, one object, or NDJSON lines.
//!
//! A JSON array is split into its elements' texts by one scan of its bytes that follows
//! strings and brackets but parses nothing; each element is then parsed once, by the
//! validation that reads its typed values ([`crate::service`]). The body is valid JSON
//! exactly when the scan finds `[`, elements separated by `,` and `]`, and every element
//! parses, so a syntax error inside an element still refuses the whole body (the
//! service answers it as [`IngestError::NotJson`], naming the record). The body's UTF-8
//! is checked once here, so no record is checked again. Splitting stops at the record
//! limit: a huge array of tiny values is refused before it is materialised.

use crate::error::IngestError;
use crate::service::RawRecord;

/// A JSON body's records (an array's elements, or the one object).
pub(crate) fn parse_json(bytes: &[u8], max: usize) -> Result<Vec<RawRecord<'_>>, IngestError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        IngestError::NotJson(format!(
            "the body is not UTF-8 (an invalid byte at offset {})",
            e.valid_up_to()
        ))
    })?;
    let b = text.as_bytes();
    let start = skip_ws(b, 0);
    match b.get(start) {
        None => Ok(Vec::new()),
        // One object: the body's text is the record (its parse refuses anything after it).
        Some(b'{') => {
            let end = b.iter().rposition(|c| !is_ws(*c)).map_or(start, |i| i + 1);
            Ok(vec![RawRecord::Element(&text[start..end])])
        }
        Some(b'[') => split_array(text, start, max),
        Some(_) => Err(not_json(
            text,
            start,
            "expected a JSON array of objects, or one object (or NDJSON with \
             Content-Type: application/x-ndjson)",
        )),
    }
}

/// An NDJSON body's lines, each checked as JSON: a line that is not JSON is a record
/// error (its line a dead letter), unless no line is JSON at all.
pub(crate) fn parse_ndjson(bytes: &[u8], max: usize) -> Result<Vec<RawRecord<'_>>, IngestError> {
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
                out.push(RawRecord::Text(line));
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

/// The elements of the array that starts at `open` (a `[`), as texts of the body.
fn split_array(text: &str, open: usize, max: usize) -> Result<Vec<RawRecord<'_>>, IngestError> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = skip_ws(b, open + 1);
    if b.get(i) == Some(&b']') {
        return end_of_body(text, i + 1).map(|()| out);
    }
    loop {
        match b.get(i) {
            None => return Err(not_json(text, i, "the array is not closed")),
            Some(b',' | b']') => return Err(not_json(text, i, "expected a record")),
            Some(_) => {}
        }
        if out.len() == max {
            return Err(IngestError::TooManyRecords {
                count: format!("more than {max}"),
                limit: max,
            });
        }
        let end = element_end(b, i);
        // `i` and `end` sit next to ASCII bytes, so both are character boundaries.
        out.push(RawRecord::Element(&text[i..end]));
        i = skip_ws(b, end);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b']') => return end_of_body(text, i + 1).map(|()| out),
            None => return Err(not_json(text, i, "the array is not closed")),
            Some(_) => return Err(not_json(text, i, "expected `,` or `]` after a record")),
        }
    }
}

/// One past the last byte of the value that starts at `start`, for a well-formed value.
/// A malformed one ends somewhere; its parse (or the separator check) then fails.
fn element_end(b: &[u8], start: usize) -> usize {
    match b[start] {
        b'"' => string_end(b, start + 1),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = start;
            while i < b.len() {
                match b[i] {
                    b'"' => {
                        i = string_end(b, i + 1);
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return i + 1;
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            b.len()
        }
        // A number, `true`, `false` or `null`: up to the next separator or space.
        _ => b[start..]
            .iter()
            .position(|c| matches!(c, b',' | b']') || is_ws(*c))
            .map_or(b.len(), |n| start + n),
    }
}

/// One past the closing quote of the string whose text starts at `i`.
fn string_end(b: &[u8], mut i: usize) -> usize {
    while i < b.len() {
        match b[i] {
            b'"' => return i + 1,
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
    b.len()
}

/// JSON's whitespace (not Unicode's: a no-break space is not allowed between values).
fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r')
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && is_ws(b[i]) {
        i += 1;
    }
    i
}

fn end_of_body(text: &str, i: usize) -> Result<(), IngestError> {
    let i = skip_ws(text.as_bytes(), i);
    if i == text.len() {
        Ok(())
    } else {
        Err(not_json(text, i, "trailing characters after the array"))
    }
}

/// A syntax error at byte `at`, with what is found there.
fn not_json(text: &str, at: usize, expected: &str) -> IngestError {
    let found = match text[at..].chars().next() {
        Some(c) => format!("found `{c}`"),
        None => "found the end of the body".to_string(),
    };
    IngestError::NotJson(format!("{expected}, {found} at byte {at}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(body: &str) -> Vec<String> {
        parse_json(body.as_bytes(), 100)
            .unwrap()
            .iter()
            .map(|r| match r {
                RawRecord::Element(t) => t.to_string(),
                _ => panic!("not an element"),
            })
            .collect()
    }

    #[test]
    fn json_body_forms() {
        assert_eq!(parse_json(b"[{\"a\":1},{\"a\":2}]", 10).unwrap().len(), 2);
        assert_eq!(parse_json(b"{\"a\":1}", 10).unwrap().len(), 1);
        assert_eq!(parse_json(b"  ", 10).unwrap().len(), 0);
        assert_eq!(parse_json(b" [ ] ", 10).unwrap().len(), 0);
        for bad in [
            "42", "[{}] x", "[", "[{}", "[{},", "[{},]", "[,{}]", "[{} {}]", "[{}]]", "\"x\"",
        ] {
            assert!(
                matches!(parse_json(bad.as_bytes(), 10), Err(IngestError::NotJson(_))),
                "{bad}"
            );
        }
        let Err(IngestError::NotJson(m)) = parse_json(b"[{},\xff]", 10) else {
            panic!("invalid UTF-8 taken");
        };
        assert!(m.contains("not UTF-8") && m.contains("offset 4"), "{m}");
    }

    /// Each element is the exact text it arrived as: strings with brackets, commas and
    /// escaped quotes inside, nested values, scalars, spaces between.
    #[test]
    fn each_record_keeps_the_text_it_arrived_as() {
        assert_eq!(
            texts(" [ {\"a\" : 1} ,\n{\"b\":[2, 3]} ] "),
            ["{\"a\" : 1}", "{\"b\":[2, 3]}"]
        );
        assert_eq!(
            texts(r#"[{"s":"a]}\",{["},{"t":"\\"},7,-1.5e3,"x,]",true,null,[[]]]"#),
            [
                r#"{"s":"a]}\",{["}"#,
                r#"{"t":"\\"}"#,
                "7",
                "-1.5e3",
                r#""x,]""#,
                "true",
                "null",
                "[[]]"
            ]
        );
        assert_eq!(texts("\n {\"a\": \"é\"}\n"), ["{\"a\": \"é\"}"]);
        // A no-break space is not JSON's whitespace: it stays, and the parse refuses it.
        assert_eq!(texts("{}\u{a0}"), ["{}\u{a0}"]);
        let lines = parse_ndjson(b"{\"a\" :1}\r\n", 10).unwrap();
        assert!(matches!(lines[0], RawRecord::Text(b"{\"a\" :1}")));
    }

    /// A split of a malformed body leaves a malformed element or fails itself: never a
    /// set of well-formed elements the body did not hold.
    #[test]
    fn a_malformed_body_never_splits_into_well_formed_records() {
        for body in [
            r#"[{"a":1]}]"#,
            r#"[{"a":"x}]"#,
            r#"[{"a":1},{"b":2]"#,
            r#"[{"a":1}},{"b":2}]"#,
            r#"[tru e]"#,
            r#"[{"a":1},{"b":[}]"#,
        ] {
            let whole_ok = serde_json::from_str::<serde::de::IgnoredAny>(body).is_ok();
            assert!(!whole_ok, "{body}");
            if let Ok(records) = parse_json(body.as_bytes(), 10) {
                let all_parse = records.iter().all(|r| match r {
                    RawRecord::Element(t) => {
                        serde_json::from_str::<serde::de::IgnoredAny>(t).is_ok()
                    }
                    _ => true,
                });
                assert!(!all_parse, "{body} split into well-formed records");
            }
        }
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
