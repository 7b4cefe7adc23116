//! Query parameters of the view endpoints (`GET /api/v1/views/{view}` and its live
//! push), of time travel, and of the endpoints that only page.
//!
//! [`ViewParams`] is the one definition: the OpenAPI document is derived from it and
//! [`parse_view_query`] fills it, field by field, before it becomes a [`ViewQuery`].
//! Key columns are parameters too (`?device_type=pump`), named by each view.

use tributary_core::delta::AsOf;
use tributary_core::time::parse_rfc3339;

use crate::error::ServingError;
use crate::merge::{Merger, ViewQuery};

/// The fixed parameters of a view query (key columns come beside them).
#[derive(Debug, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ViewParams {
    /// Windows starting at or after this (RFC 3339).
    pub from: Option<String>,
    /// Windows starting before this (RFC 3339).
    pub to: Option<String>,
    /// Column to order by; a leading `-` for descending.
    pub order: Option<String>,
    /// Rows to skip.
    #[param(minimum = 0)]
    pub offset: Option<u64>,
    /// Most rows to return.
    #[param(minimum = 0)]
    pub limit: Option<u64>,
    /// The N rows with the largest `by`.
    #[param(minimum = 0)]
    pub top: Option<u64>,
    /// The column `top` ranks by.
    pub by: Option<String>,
    /// `false` leaves out `_source` and `complete`.
    pub meta: Option<bool>,
    /// Time travel: the view as its batch-view table was at this Delta version (batch
    /// layer only).
    #[param(minimum = 0)]
    pub as_of_version: Option<u64>,
    /// Time travel: the view as its batch-view table was at this time (RFC 3339).
    pub as_of: Option<String>,
}

const FIXED: &str = "from, to, order, offset, limit, top and by, meta, as_of_version or as_of";

impl ViewParams {
    /// Take one `name=value` pair; `Ok(false)` when `name` is not a fixed parameter.
    fn take(&mut self, name: &str, value: &str) -> Result<bool, ServingError> {
        let text = || Some(value.to_string());
        match name {
            "from" => self.from = text(),
            "to" => self.to = text(),
            "order" => self.order = text(),
            "by" => self.by = text(),
            "as_of" => self.as_of = text(),
            "offset" => self.offset = Some(count(name, value)?),
            "limit" => self.limit = Some(count(name, value)?),
            "top" => self.top = Some(count(name, value)?),
            "meta" => self.meta = Some(boolean(name, value)?),
            "as_of_version" => {
                self.as_of_version = Some(value.parse().map_err(|_| {
                    ServingError::bad(
                        name,
                        format!("expected a Delta version (a whole number), got `{value}`"),
                    )
                })?)
            }
            // A token for browsers that cannot send headers; checked by auth.
            "access_token" => {}
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// Refuse a parameter given more than once, unless `repeatable` says it may be (a key
/// column filters by IN when repeated): `from=…&from=…` must not take one of them
/// silently.
pub(crate) fn once(
    params: &[(String, String)],
    repeatable: impl Fn(&str) -> bool,
) -> Result<(), ServingError> {
    let mut seen = std::collections::HashSet::new();
    for (k, _) in params {
        if !seen.insert(k.as_str()) && !repeatable(k) {
            return Err(ServingError::bad(k, "given more than once; send it once"));
        }
    }
    Ok(())
}

pub(crate) fn count(name: &str, value: &str) -> Result<u64, ServingError> {
    value.parse().map_err(|_| {
        ServingError::bad(
            name,
            format!("expected a non-negative integer, got `{value}`"),
        )
    })
}

fn boolean(name: &str, value: &str) -> Result<bool, ServingError> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(ServingError::bad(
            name,
            format!("expected true or false, got `{value}`"),
        )),
    }
}

pub(crate) fn time(name: &str, value: &str) -> Result<i64, ServingError> {
    parse_rfc3339(value).ok_or_else(|| {
        ServingError::bad(
            name,
            format!("expected an RFC 3339 timestamp, got `{value}`"),
        )
    })
}

/// Parse a view query's parameters; refuse anything else by name.
///
/// `from`/`to` (RFC 3339) bound window starts; a key column filters by equality, or by
/// IN when repeated (`?device_type=pump&device_type=fan`); `order=col` or `order=-col`
/// (descending); `offset` and `limit` page; `top=N&by=col` is the N rows with the
/// largest `col`; `meta=false` leaves out `_source` and `complete`.
pub fn parse_view_query(
    merger: &Merger,
    view: &str,
    params: &[(String, String)],
) -> Result<ViewQuery, ServingError> {
    if let Some(why) = merger.not_ready(view) {
        return Err(ServingError::not_ready(view, why));
    }
    let v = merger
        .pipeline()
        .view(view)
        .ok_or_else(|| ServingError::UnknownView(view.to_string()))?;
    once(params, |k| v.keys.iter().any(|x| x == k))?;
    let mut fixed = ViewParams::default();
    let mut q = ViewQuery::default();
    for (k, val) in params {
        if fixed.take(k, val)? {
            continue;
        }
        if !v.keys.iter().any(|x| x == k) {
            let keys = if v.keys.is_empty() {
                "none".to_string()
            } else {
                v.keys.join(", ")
            };
            return Err(ServingError::bad(
                k,
                format!("unknown parameter; use {FIXED}, or a key column of `{view}` ({keys})"),
            ));
        }
        match q.keys.iter_mut().find(|(n, _)| n == k) {
            Some((_, values)) => values.push(val.clone()),
            None => q.keys.push((k.clone(), vec![val.clone()])),
        }
    }
    let columns: Vec<&str> = v
        .output_schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .filter(|n| *n != tributary_core::view::SOURCE_COLUMN)
        .collect();
    let column = |k: &str, name: &str| -> Result<String, ServingError> {
        if columns.contains(&name) {
            return Ok(name.to_string());
        }
        Err(ServingError::bad(
            k,
            format!(
                "`{name}` is not a column of `{view}` ({})",
                columns.join(", ")
            ),
        ))
    };
    q.from = fixed.from.as_deref().map(|t| time("from", t)).transpose()?;
    q.to = fixed.to.as_deref().map(|t| time("to", t)).transpose()?;
    q.offset = fixed.offset.unwrap_or(0) as usize;
    q.limit = fixed.limit.map(|n| n as usize);
    q.meta = fixed.meta.unwrap_or(true);
    if let Some(order) = &fixed.order {
        let (name, desc) = match order.strip_prefix('-') {
            Some(n) => (n, true),
            None => (order.as_str(), false),
        };
        q.order = Some((column("order", name)?, desc));
    }
    q.as_of = parse_as_of(fixed.as_of_version, fixed.as_of.as_deref())?;
    let by = fixed.by.as_deref().map(|b| column("by", b)).transpose()?;
    match (fixed.top, by) {
        (Some(_), Some(_)) if q.order.is_some() || q.limit.is_some() => Err(ServingError::bad(
            "top",
            "top already orders and limits: leave out order and limit",
        )),
        (Some(n), Some(col)) => {
            q.order = Some((col, true));
            q.limit = Some(n as usize);
            Ok(q)
        }
        (Some(_), None) => Err(ServingError::bad(
            "top",
            "needs `by`, the column to rank by",
        )),
        (None, Some(_)) => Err(ServingError::bad("by", "goes with `top`")),
        (None, None) => Ok(q),
    }
}

/// A time-travel point from `as_of_version` or `as_of` (RFC 3339), not both.
pub fn parse_as_of(version: Option<u64>, time: Option<&str>) -> Result<Option<AsOf>, ServingError> {
    match (version, time) {
        (None, None) => Ok(None),
        (Some(v), None) => Ok(Some(AsOf::Version(v))),
        (None, Some(t)) => {
            parse_rfc3339(t).ok_or_else(|| {
                ServingError::bad("as_of", format!("expected an RFC 3339 time, got `{t}`"))
            })?;
            Ok(Some(AsOf::Time(t.to_string())))
        }
        (Some(_), Some(_)) => Err(ServingError::bad(
            "as_of",
            "give as_of_version or as_of, not both",
        )),
    }
}

/// The `limit` of an endpoint that takes no other parameter (`access_token` aside).
pub fn limit_param(params: &[(String, String)], default: usize) -> Result<usize, ServingError> {
    once(params, |_| false)?;
    let mut limit = default;
    for (k, v) in params {
        match k.as_str() {
            "limit" => limit = count(k, v)? as usize,
            "access_token" => {}
            other => return Err(ServingError::bad(other, "unknown parameter; use limit")),
        }
    }
    Ok(limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_parameter_twice_is_refused_unless_it_may_repeat() {
        let twice = pairs(&[("limit", "5"), ("device", "a"), ("limit", "6")]);
        let e = once(&twice, |k| k == "device").unwrap_err().to_string();
        assert!(e.contains("`limit`") && e.contains("more than once"), "{e}");
        let keys = pairs(&[("device", "a"), ("device", "b"), ("limit", "5")]);
        assert!(once(&keys, |k| k == "device").is_ok());
        assert!(limit_param(&twice[..1], 1).is_ok());
        assert!(limit_param(&pairs(&[("limit", "1"), ("limit", "1")]), 1).is_err());
    }
}
