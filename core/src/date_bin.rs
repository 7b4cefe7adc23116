//! `date_bin` with a fast path for the call every tumbling view makes: a fixed stride
//! over a column of timestamps (nanoseconds, to which planning casts the column, or
//! microseconds).
//!
//! DataFusion's kernel scales each value to nanoseconds and bins it through a function
//! pointer with checked arithmetic: 7% of a full recompute's samples (1.4% this way).
//! When no value of a batch is near enough to the ends of `i64` for any of those steps to
//! overflow, the same bin is `origin + (t - origin).div_euclid(stride) * stride` in
//! the column's unit, without a call per row. Every other call (other units, month
//! strides, a stride or origin finer than the unit, values near the ends of the range,
//! a scalar) goes to DataFusion's own `date_bin`, so the answers are DataFusion's. The
//! wrapper keeps DataFusion's name, signature, return type and ordering, so plans and
//! the window checks of views see `date_bin` as before.

use datafusion::arrow::array::{Array, ArrayRef, AsArray, PrimitiveArray};
use datafusion::arrow::compute::{max, min};
use datafusion::arrow::datatypes::{
    ArrowTimestampType, DataType, IntervalDayTimeType, IntervalMonthDayNanoType, TimeUnit,
    TimestampMicrosecondType, TimestampNanosecondType,
};
use datafusion::common::Result;
use datafusion::logical_expr::sort_properties::{ExprProperties, SortProperties};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
};
use datafusion::scalar::ScalarValue;
use std::sync::Arc;

/// Nanoseconds whose magnitude stays below this cannot overflow any step of
/// DataFusion's binning: `t - origin`, the step back by one stride and `origin + delta`
/// each stay below 2^63 when `|t|`, `|origin|` and the stride are all below 2^61.
const SAFE_NANOS: i128 = 1 << 61;

/// `date_bin`, with the fast path described in the module docs.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct DateBin {
    /// DataFusion's `date_bin`: the slow path, and everything but `invoke`.
    inner: Arc<ScalarUDF>,
}

impl DateBin {
    /// The function, to register in place of DataFusion's `date_bin`.
    pub fn udf() -> ScalarUDF {
        ScalarUDF::from(DateBin {
            inner: datafusion::functions::datetime::date_bin(),
        })
    }
}

/// The stride in nanoseconds, when it is positive, has no months and stays safely
/// inside the range.
fn stride_nanos(v: &ColumnarValue) -> Option<i128> {
    let nanos: i128 = match v {
        ColumnarValue::Scalar(ScalarValue::IntervalMonthDayNano(Some(i))) => {
            let (months, days, nanos) = IntervalMonthDayNanoType::to_parts(*i);
            if months != 0 {
                return None;
            }
            days as i128 * 86_400_000_000_000 + nanos as i128
        }
        ColumnarValue::Scalar(ScalarValue::IntervalDayTime(Some(i))) => {
            let (days, ms) = IntervalDayTimeType::to_parts(*i);
            days as i128 * 86_400_000_000_000 + ms as i128 * 1_000_000
        }
        _ => return None,
    };
    (nanos > 0 && nanos < SAFE_NANOS).then_some(nanos)
}

/// The origin in nanoseconds (the epoch when left out), when it stays safely inside the
/// range.
fn origin_nanos(args: &[ColumnarValue]) -> Option<i128> {
    let nanos: i128 = match args.get(2) {
        None => 0,
        // Planning coerces a timestamp origin to nanoseconds; anything else (a TIME,
        // NULL) is DataFusion's to answer or refuse.
        Some(ColumnarValue::Scalar(ScalarValue::TimestampNanosecond(Some(v), _))) => *v as i128,
        Some(_) => return None,
    };
    (nanos.abs() < SAFE_NANOS).then_some(nanos)
}

/// The bins of a timestamp array, or `None` to leave the call to DataFusion.
fn fast_path(args: &[ColumnarValue]) -> Option<ColumnarValue> {
    let ColumnarValue::Array(values) = args.get(1)? else {
        return None;
    };
    let (stride, origin) = (stride_nanos(&args[0])?, origin_nanos(args)?);
    let binned: ArrayRef = match values.data_type() {
        // `date_bin(stride, ts)` casts the column to nanoseconds when planned.
        DataType::Timestamp(TimeUnit::Nanosecond, _) => {
            bin::<TimestampNanosecondType>(values.as_primitive(), 1, stride, origin)?
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            bin::<TimestampMicrosecondType>(values.as_primitive(), 1_000, stride, origin)?
        }
        _ => return None,
    };
    Some(ColumnarValue::Array(binned))
}

/// `values` (of `unit` nanoseconds each) binned, when the stride and origin are whole
/// units and no value can overflow DataFusion's nanosecond arithmetic.
fn bin<T: ArrowTimestampType>(
    values: &PrimitiveArray<T>,
    unit: i128,
    stride: i128,
    origin: i128,
) -> Option<ArrayRef> {
    if stride % unit != 0 || origin % unit != 0 {
        return None;
    }
    let (stride, origin) = ((stride / unit) as i64, (origin / unit) as i64);
    // Null slots hold arbitrary values; `min`/`max` skip them and the kernel below
    // computes them with wrapping arithmetic, so they can neither overflow nor matter.
    if let (Some(lo), Some(hi)) = (min(values), max(values)) {
        let safe = |t: i64| (t as i128 * unit).abs() < SAFE_NANOS;
        if !safe(lo) || !safe(hi) {
            return None;
        }
    }
    let binned = values
        .unary::<_, T>(|t| {
            origin.wrapping_add(
                t.wrapping_sub(origin)
                    .div_euclid(stride)
                    .wrapping_mul(stride),
            )
        })
        .with_timezone_opt(values.timezone().map(Arc::<str>::from));
    Some(Arc::new(binned))
}

impl ScalarUDFImpl for DateBin {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        match fast_path(&args.args) {
            Some(binned) => Ok(binned),
            None => self.inner.invoke_with_args(args),
        }
    }

    fn output_ordering(&self, input: &[ExprProperties]) -> Result<SortProperties> {
        self.inner.output_ordering(input)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{TimestampMicrosecondArray, TimestampNanosecondArray};
    use datafusion::arrow::datatypes::{Field, IntervalMonthDayNano};
    use datafusion::config::ConfigOptions;

    fn call(udf: &ScalarUDF, args: Vec<ColumnarValue>, rows: usize) -> ArrayRef {
        let arg_fields = args
            .iter()
            .map(|a| Arc::new(Field::new("a", a.data_type(), true)))
            .collect();
        let return_field = Arc::new(Field::new("r", args[1].data_type(), true));
        let out = udf
            .invoke_with_args(ScalarFunctionArgs {
                args,
                arg_fields,
                number_rows: rows,
                return_field,
                config_options: Arc::new(ConfigOptions::default()),
            })
            .unwrap();
        out.into_array(rows).unwrap()
    }

    #[test]
    fn bins_equal_datafusions_for_every_stride_origin_and_value() {
        let ours = DateBin::udf();
        let theirs = datafusion::functions::datetime::date_bin();
        // Values on both sides of the epoch and of the origin, on bin edges and off
        // them, a null, and values near the ends of the range (DataFusion's path).
        let mut values: Vec<Option<i64>> = vec![None, Some(0), Some(-1), Some(1)];
        let mut x: i64 = 0x2545_F491_4F6C_DD1D;
        for _ in 0..2_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Within 2^61 ns of the epoch (years 1897 to 2043): the fast path's range.
            values.push(Some(x % 2_000_000_000_000_000));
        }
        // One value near the end of the range sends the whole batch to DataFusion.
        let mut edge = values.clone();
        edge.push(Some(i64::MAX / 1_000 - 5));
        let strides = [
            IntervalMonthDayNano::new(0, 0, 1_000),
            IntervalMonthDayNano::new(0, 0, 600_000_000_000),
            IntervalMonthDayNano::new(0, 1, 0),
            IntervalMonthDayNano::new(0, 3, 7_000_000_000),
            IntervalMonthDayNano::new(0, 0, 1_500),
            IntervalMonthDayNano::new(1, 0, 0),
        ];
        let origins = [
            None,
            Some(ScalarValue::TimestampNanosecond(Some(0), None)),
            Some(ScalarValue::TimestampNanosecond(
                Some(-7_000_000_123_000),
                None,
            )),
            Some(ScalarValue::TimestampNanosecond(
                Some(1_767_268_800_000_000_001),
                None,
            )),
            Some(ScalarValue::TimestampNanosecond(
                Some(1_767_268_800_000_000),
                Some("UTC".into()),
            )),
        ];
        let mut fast = 0;
        for tz in [None, Some("UTC")] {
            let nanos = |v: &[Option<i64>]| -> ArrayRef {
                let v = v.iter().map(|t| t.map(|t| t.saturating_mul(1_000)));
                Arc::new(TimestampNanosecondArray::from_iter(v).with_timezone_opt(tz))
            };
            let micros = |v: &[Option<i64>]| -> ArrayRef {
                Arc::new(TimestampMicrosecondArray::from(v.to_vec()).with_timezone_opt(tz))
            };
            for array in [micros(&values), micros(&edge), nanos(&values), nanos(&edge)] {
                for stride in strides {
                    for origin in &origins {
                        let mut args = vec![
                            ColumnarValue::Scalar(ScalarValue::IntervalMonthDayNano(Some(stride))),
                            ColumnarValue::Array(array.clone()),
                        ];
                        if let Some(o) = origin {
                            args.push(ColumnarValue::Scalar(o.clone()));
                        }
                        fast += usize::from(fast_path(&args).is_some());
                        let a = call(&ours, args.clone(), array.len());
                        let b = call(&theirs, args, array.len());
                        assert_eq!(&a, &b, "stride {stride:?}, origin {origin:?}, tz {tz:?}");
                    }
                }
            }
        }
        // Two time zones, the safe arrays only: in microseconds the four strides and
        // four origins (the epoch twice) of whole microseconds; in nanoseconds every
        // stride without months (five) and every origin (five).
        assert_eq!(fast, 2 * (4 * 4 + 5 * 5));
    }

    #[test]
    fn the_fast_path_takes_whole_microsecond_strides_over_microsecond_columns() {
        let array: ArrayRef = Arc::new(TimestampMicrosecondArray::from(vec![Some(5), None]));
        let stride = |n| ColumnarValue::Scalar(ScalarValue::IntervalMonthDayNano(Some(n)));
        let taken = [ColumnarValue::Array(array.clone())];
        assert!(
            fast_path(&[
                stride(IntervalMonthDayNano::new(0, 0, 2_000)),
                taken[0].clone()
            ])
            .is_some()
        );
        // Months, a sub-microsecond stride: DataFusion's path.
        assert!(
            fast_path(&[stride(IntervalMonthDayNano::new(1, 0, 0)), taken[0].clone()]).is_none()
        );
        assert!(
            fast_path(&[
                stride(IntervalMonthDayNano::new(0, 0, 1_500)),
                taken[0].clone()
            ])
            .is_none()
        );
    }
}
