//! Event-time windows of a view: tumbling (`date_bin`), hopping (`hop`) and session
//! (`session`) windows.
//!
//! A hopping window `hop(ts, INTERVAL size, INTERVAL slide)` puts each event into every
//! window of width `size` whose start is a multiple of `slide` and that contains the
//! event. Views stay plain DataFusion SQL: compilation rewrites `hop(…)` into a column
//! produced by `unnest(tributary_hop(ts, size, slide))` under the aggregate, so both
//! layers run the same partial plan and the states of one window still merge exactly.
//!
//! A session window `session(ts, INTERVAL gap)` is rewritten into
//! `tributary_session(ts, gap, keys…)`, which gives each event the start of its session
//! among the events of its input batch: the partial plan keeps one state per session of
//! a batch, and [`crate::view::CompiledView`] coalesces states whose distance is at most
//! the gap before it reduces or finalizes them (see `view/session.rs`).
//!
//! The [`WindowSpec`] also answers the event-time questions of the speed layer and
//! serving: when a window ends (for `complete`) and whether an event is late (it updates
//! a window the watermark has already passed).

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, ListBuilder, TimestampMicrosecondArray, TimestampMicrosecondBuilder,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, TimeUnit};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::{Result as DfResult, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use serde::Serialize;

/// The function views call for hopping windows.
pub const HOP_SQL_NAME: &str = "hop";
/// The function compilation rewrites it into (one row per window an event is in).
pub const HOP_FUNCTION: &str = "tributary_hop";
/// The column holding a hopping window's start below the aggregate.
pub const HOP_COLUMN: &str = "__window";
/// The function views call for session windows.
pub const SESSION_SQL_NAME: &str = "session";
/// The function compilation rewrites it into (an event's session start within its batch).
pub const SESSION_FUNCTION: &str = "tributary_session";
/// The output column compilation adds to a session view: the last event time plus the
/// gap (exclusive end, as Spark's `session_window.end`).
pub const SESSION_END: &str = "session_end";

/// How a view's windows tile event time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WindowKind {
    /// Windows as wide as their step, each event in exactly one.
    Tumbling,
    /// Windows wider than their step, each event in several (`tributary_hop`).
    Hopping,
    /// Per key, events at most a gap apart (`size_us` is the gap).
    Session,
}

/// Most windows one event may fall into (`hop`'s size over its slide): a day of
/// one-minute slides. Each is a row under the aggregate, so `hop(ts, INTERVAL '1 day',
/// INTERVAL '1 millisecond')` would turn one event into 86 million rows.
pub const MAX_HOP_WINDOWS: i64 = 1_440;

/// Refuse a hop whose slide exceeds its size (events would fall between windows) or
/// that puts an event into more than [`MAX_HOP_WINDOWS`] windows.
pub fn check_hop(size_us: i64, slide_us: i64) -> Result<(), String> {
    if slide_us > size_us {
        return Err("hop's slide must not exceed its size (windows would miss events)".into());
    }
    // Both are positive (checked by `interval_micros`): a ceiling division.
    let per_event = (size_us + slide_us - 1) / slide_us;
    if per_event > MAX_HOP_WINDOWS {
        return Err(format!(
            "hop puts each event into {per_event} windows (size / slide); at most {MAX_HOP_WINDOWS} are allowed: use a longer slide"
        ));
    }
    Ok(())
}

/// A view's window: its kind, width and step, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct WindowSpec {
    /// Tumbling or hopping.
    pub kind: WindowKind,
    /// Window width.
    pub size_us: i64,
    /// Distance between window starts (equal to `size_us` for tumbling windows).
    pub slide_us: i64,
    /// Window starts are `origin_us + k * slide_us`.
    pub origin_us: i64,
}

impl WindowSpec {
    /// The end (exclusive) of the window starting at `start_us`.
    pub fn end(&self, start_us: i64) -> i64 {
        start_us.saturating_add(self.size_us)
    }

    /// End of the earliest window that contains an event at `ts_us`: once the watermark
    /// has passed it, the event updates a window already marked complete (it is late).
    /// A session holding the event lasts at least until the event plus the gap.
    pub fn first_end(&self, ts_us: i64) -> i64 {
        if self.kind == WindowKind::Session {
            return ts_us.saturating_add(self.size_us);
        }
        let lo = ts_us - self.size_us;
        let first_start = lo - (lo - self.origin_us).rem_euclid(self.slide_us) + self.slide_us;
        first_start + self.size_us
    }

    /// Starts of every window containing `ts_us`, oldest first.
    pub fn starts(&self, ts_us: i64) -> impl Iterator<Item = i64> + use<> {
        let spec = *self;
        let last = ts_us - (ts_us - spec.origin_us).rem_euclid(spec.slide_us);
        let first = spec.first_end(ts_us) - spec.size_us;
        (0..)
            .map(move |k| first + k * spec.slide_us)
            .take_while(move |s| *s <= last)
    }
}

/// Microseconds of an interval literal; month-based intervals have no fixed width.
pub fn interval_micros(e: &Expr) -> Result<i64, String> {
    let value = match e {
        Expr::Literal(v, _) => v,
        Expr::Cast(c) => return interval_micros(&c.expr),
        Expr::Alias(a) => return interval_micros(&a.expr),
        other => {
            return Err(format!(
                "a window width must be an INTERVAL literal, not `{other}`"
            ));
        }
    };
    scalar_micros(value)
}

fn scalar_micros(value: &ScalarValue) -> Result<i64, String> {
    let micros = match value {
        ScalarValue::IntervalMonthDayNano(Some(v)) => {
            if v.months != 0 {
                return Err("window widths in months or years are not supported (months differ in length); use days".into());
            }
            if v.nanoseconds % 1_000 != 0 {
                return Err(
                    "window widths are whole microseconds (event times are kept in microseconds)"
                        .into(),
                );
            }
            v.days as i64 * 86_400_000_000 + v.nanoseconds / 1_000
        }
        ScalarValue::IntervalDayTime(Some(v)) => {
            v.days as i64 * 86_400_000_000 + v.milliseconds as i64 * 1_000
        }
        ScalarValue::IntervalYearMonth(Some(_)) => {
            return Err("window widths in months or years are not supported; use days".into());
        }
        other => return Err(format!("a window width must be an INTERVAL, not `{other}`")),
    };
    if micros <= 0 {
        return Err("a window width must be positive".into());
    }
    Ok(micros)
}

/// Microseconds since the epoch of a timestamp literal (a `date_bin` origin).
pub fn timestamp_micros(e: &Expr) -> Result<i64, String> {
    let ts = match e {
        Expr::Literal(v, _) => v.clone(),
        Expr::Cast(c) => {
            let Expr::Literal(v, _) = c.expr.as_ref() else {
                return Err(format!("a date_bin origin must be a literal, not `{e}`"));
            };
            v.cast_to(c.field.data_type())
                .map_err(|err| err.to_string())?
        }
        other => {
            return Err(format!(
                "a date_bin origin must be a literal, not `{other}`"
            ));
        }
    };
    let arr = ts.to_array().map_err(|e| e.to_string())?;
    let micros = cast(&arr, &DataType::Timestamp(TimeUnit::Microsecond, None))
        .map_err(|e| format!("a date_bin origin must be a timestamp: {e}"))?;
    let micros = micros
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .expect("cast to microseconds");
    if micros.is_null(0) {
        return Err("a date_bin origin must not be NULL".into());
    }
    Ok(micros.value(0))
}

/// `tributary_hop(ts, size, slide)`: the start of every hopping window containing `ts`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Hop {
    signature: Signature,
}

impl Hop {
    /// The `tributary_hop` function, to register with a session.
    pub fn udf() -> ScalarUDF {
        ScalarUDF::from(Hop {
            signature: Signature::any(3, Volatility::Immutable),
        })
    }
}

impl ScalarUDFImpl for Hop {
    fn name(&self) -> &str {
        HOP_FUNCTION
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> DfResult<DataType> {
        match &args[0] {
            DataType::Timestamp(_, tz) => Ok(list_of(tz.clone())),
            other => plan_err!("hop(ts, size, slide) needs a timestamp first, got {other}"),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let interval = |i: usize| -> DfResult<i64> {
            match &args.args[i] {
                ColumnarValue::Scalar(v) => {
                    scalar_micros(v).or_else(|e| exec_err!("hop argument {}: {e}", i + 1))
                }
                ColumnarValue::Array(_) => exec_err!("hop widths must be INTERVAL literals"),
            }
        };
        let (size_us, slide_us) = (interval(1)?, interval(2)?);
        if let Err(e) = check_hop(size_us, slide_us) {
            return exec_err!("{e}");
        }
        let spec = WindowSpec {
            kind: WindowKind::Hopping,
            size_us,
            slide_us,
            origin_us: 0,
        };
        let tz = match args.args[0].data_type() {
            DataType::Timestamp(_, tz) => tz,
            other => return exec_err!("hop needs a timestamp, got {other}"),
        };
        let ts = args.args[0].to_array(args.number_rows)?;
        let ts = cast(&ts, &DataType::Timestamp(TimeUnit::Microsecond, tz.clone()))?;
        let ts = ts
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .expect("cast to microseconds");
        let per_event = (size_us / slide_us + 1) as usize;
        let values = TimestampMicrosecondBuilder::with_capacity(ts.len() * per_event)
            .with_timezone_opt(tz.clone());
        let mut out = ListBuilder::with_capacity(values, ts.len())
            .with_field(Arc::new(Field::new_list_field(micros_type(tz), true)));
        for i in 0..ts.len() {
            if ts.is_null(i) {
                out.append_null();
                continue;
            }
            for s in spec.starts(ts.value(i)) {
                out.values().append_value(s);
            }
            out.append(true);
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish()) as ArrayRef))
    }
}

/// `tributary_session(ts, gap, keys…)`: per event, the start of its session among the
/// events of the same input batch with the same keys; coalescing joins the sessions of
/// different batches and layers.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Session {
    signature: Signature,
}

impl Session {
    /// The `tributary_session` function, to register with a session.
    pub fn udf() -> ScalarUDF {
        ScalarUDF::from(Session {
            signature: Signature::variadic_any(Volatility::Immutable),
        })
    }
}

impl ScalarUDFImpl for Session {
    fn name(&self) -> &str {
        SESSION_FUNCTION
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> DfResult<DataType> {
        match args.first() {
            _ if args.len() < 2 => plan_err!("session takes a timestamp and a gap"),
            Some(DataType::Timestamp(_, tz)) => Ok(micros_type(tz.clone())),
            Some(other) => plan_err!("session(ts, gap) needs a timestamp first, got {other}"),
            None => unreachable!("two arguments at least"),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let gap_us = match &args.args[1] {
            ColumnarValue::Scalar(v) => {
                scalar_micros(v).or_else(|e| exec_err!("session's gap: {e}"))?
            }
            ColumnarValue::Array(_) => {
                return exec_err!("a session gap must be an INTERVAL literal");
            }
        };
        let tz = match args.args[0].data_type() {
            DataType::Timestamp(_, tz) => tz,
            other => return exec_err!("session needs a timestamp, got {other}"),
        };
        let ts = as_micros(&args.args[0].to_array(args.number_rows)?)?;
        // The rest are the view's group keys: each event gets the start of its session
        // among the events of this input batch, so the partial aggregate keeps one
        // state per session of the batch rather than one per event time. Sessions of a
        // subset of the events are what coalescing joins, so this changes no answer.
        let keys = args.args[2..]
            .iter()
            .map(|k| k.to_array(args.number_rows))
            .collect::<DfResult<Vec<_>>>()?;
        let starts = session_starts(&keys, &ts, &ts, gap_us)?;
        let out = TimestampMicrosecondArray::from(starts).with_timezone_opt(tz);
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// Per row, the start of the session it belongs to among `starts`/`ends` (rows of
/// equal `keys`; a row's span is `start..=end`, an event's is its time twice): rows are
/// swept per key in start order, and a row at most `gap_us` after the latest end seen
/// so far joins the open session. Null starts stay null.
pub fn session_starts(
    keys: &[ArrayRef],
    starts: &TimestampMicrosecondArray,
    ends: &TimestampMicrosecondArray,
    gap_us: i64,
) -> datafusion::arrow::error::Result<Vec<Option<i64>>> {
    // Rows grouped by key (hashing the keys' row format), then each key's rows sorted by
    // start: cheaper than one sort over string keys and times together.
    let converter = RowConverter::new(
        keys.iter()
            .map(|c| SortField::new(c.data_type().clone()))
            .collect(),
    )?;
    let rows = converter.convert_columns(keys)?;
    let mut per_key: HashMap<&[u8], Vec<u32>> = HashMap::new();
    for i in (0..starts.len()).filter(|i| starts.is_valid(*i)) {
        // Without keys every row has the same key (the converter then holds no rows).
        let key: &[u8] = if keys.is_empty() {
            &[]
        } else {
            rows.row(i).data()
        };
        per_key.entry(key).or_default().push(i as u32);
    }
    let mut out: Vec<Option<i64>> = vec![None; starts.len()];
    for mut indices in per_key.into_values() {
        indices.sort_unstable_by_key(|i| starts.value(*i as usize));
        // The session being swept: its start and the latest end of its rows.
        let mut open: Option<(i64, i64)> = None;
        for i in indices.into_iter().map(|i| i as usize) {
            let start = starts.value(i);
            let end = if ends.is_null(i) {
                start
            } else {
                ends.value(i).max(start)
            };
            open = match open {
                Some((s, e)) if start.saturating_sub(e) <= gap_us => Some((s, e.max(end))),
                _ => Some((start, end)),
            };
            out[i] = open.map(|(s, _)| s);
        }
    }
    Ok(out)
}

/// Tributary's window functions, to register with every session that plans views
/// (`date_bin` replaces DataFusion's with one that bins the common case faster).
pub fn udfs() -> [ScalarUDF; 3] {
    [Hop::udf(), Session::udf(), crate::date_bin::DateBin::udf()]
}

/// Timestamps of any unit as microseconds since the epoch (the time zone dropped: the
/// values are UTC either way).
pub fn as_micros(c: &ArrayRef) -> datafusion::arrow::error::Result<TimestampMicrosecondArray> {
    let c = cast(c, &micros_type(None))?;
    Ok(c.as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .expect("cast to microseconds")
        .clone())
}

fn micros_type(tz: Option<Arc<str>>) -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, tz)
}

fn list_of(tz: Option<Arc<str>>) -> DataType {
    DataType::List(Arc::new(Field::new_list_field(micros_type(tz), true)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000_000;

    #[test]
    fn hopping_windows_cover_each_event_size_over_slide_times() {
        let spec = WindowSpec {
            kind: WindowKind::Hopping,
            size_us: 5 * MIN,
            slide_us: MIN,
            origin_us: 0,
        };
        let ts = 12 * MIN + 30_000_000;
        let starts: Vec<i64> = spec.starts(ts).collect();
        assert_eq!(starts, vec![8 * MIN, 9 * MIN, 10 * MIN, 11 * MIN, 12 * MIN]);
        assert_eq!(spec.first_end(ts), 13 * MIN);
        // On a boundary the event opens a window and has left the oldest one.
        let starts: Vec<i64> = spec.starts(10 * MIN).collect();
        assert_eq!(starts, vec![6 * MIN, 7 * MIN, 8 * MIN, 9 * MIN, 10 * MIN]);
    }

    #[test]
    fn sessions_are_per_key_and_keep_the_latest_end_seen() {
        use datafusion::arrow::array::StringArray;
        let keys: Vec<ArrayRef> = vec![Arc::new(StringArray::from(vec![
            Some("a"),
            Some("b"),
            Some("a"),
            Some("a"),
            None,
            Some("a"),
        ]))];
        let ts = |v: Vec<i64>| TimestampMicrosecondArray::from(v);
        let starts = ts(vec![0, MIN, 5 * MIN, 20 * MIN, 2 * MIN, 30 * MIN]);
        // The first `a` row spans to 14 minutes; the 5-minute row lies inside it; 20 is
        // six minutes after the latest end (14), more than the gap; a null key is a key.
        let ends = ts(vec![14 * MIN, MIN, 5 * MIN, 20 * MIN, 2 * MIN, 30 * MIN]);
        let got = session_starts(&keys, &starts, &ends, 5 * MIN).unwrap();
        assert_eq!(
            got,
            vec![
                Some(0),
                Some(MIN),
                Some(0),
                Some(20 * MIN),
                Some(2 * MIN),
                Some(30 * MIN)
            ]
        );
        // With a six-minute gap, 20 joins (the latest end, 14, not the 5-minute row's
        // own end, counts); 30 is ten minutes after 20 and stays apart.
        let got = session_starts(&keys, &starts, &ends, 6 * MIN).unwrap();
        assert_eq!(got[3], Some(0));
        assert_eq!(got[5], Some(30 * MIN));
    }

    #[test]
    fn tumbling_first_end_is_the_end_of_its_bin_with_origin() {
        let spec = WindowSpec {
            kind: WindowKind::Tumbling,
            size_us: 10 * MIN,
            slide_us: 10 * MIN,
            origin_us: 3 * MIN,
        };
        assert_eq!(spec.first_end(14 * MIN), 23 * MIN);
        assert_eq!(spec.first_end(13 * MIN), 23 * MIN);
        assert_eq!(spec.first_end(12 * MIN), 13 * MIN);
        assert_eq!(spec.starts(-MIN).collect::<Vec<_>>(), vec![-7 * MIN]);
    }
}
