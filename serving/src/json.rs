//! Arrow cells to JSON values, with timestamps as RFC 3339 text.

use datafusion::arrow::array::{
    Array, BooleanArray, Float32Array, Float64Array, Int8Array, Int16Array, Int32Array, Int64Array,
    StringArray, StringViewArray, TimestampMicrosecondArray, UInt8Array, UInt16Array, UInt32Array,
    UInt64Array,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::arrow::util::display::array_value_to_string;
use serde_json::Value;
use tributary_core::time::rfc3339;

macro_rules! num {
    ($array:expr, $ty:ty, $i:expr) => {
        Value::from(
            $array
                .as_any()
                .downcast_ref::<$ty>()
                .expect("type checked")
                .value($i),
        )
    };
}

/// The JSON value of row `i` of `array`.
pub fn cell(array: &dyn Array, i: usize) -> Value {
    if array.is_null(i) {
        return Value::Null;
    }
    match array.data_type() {
        DataType::Boolean => Value::Bool(
            array
                .as_any()
                .downcast_ref::<BooleanArray>()
                .expect("type checked")
                .value(i),
        ),
        DataType::Int8 => num!(array, Int8Array, i),
        DataType::Int16 => num!(array, Int16Array, i),
        DataType::Int32 => num!(array, Int32Array, i),
        DataType::Int64 => num!(array, Int64Array, i),
        DataType::UInt8 => num!(array, UInt8Array, i),
        DataType::UInt16 => num!(array, UInt16Array, i),
        DataType::UInt32 => num!(array, UInt32Array, i),
        DataType::UInt64 => num!(array, UInt64Array, i),
        DataType::Float32 => num!(array, Float32Array, i),
        DataType::Float64 => {
            let v = array
                .as_any()
                .downcast_ref::<Float64Array>()
                .expect("type checked")
                .value(i);
            serde_json::Number::from_f64(v)
                .map(Value::Number)
                .unwrap_or(Value::Null)
        }
        DataType::Utf8 => Value::String(
            array
                .as_any()
                .downcast_ref::<StringArray>()
                .expect("type checked")
                .value(i)
                .to_string(),
        ),
        DataType::Utf8View => Value::String(
            array
                .as_any()
                .downcast_ref::<StringViewArray>()
                .expect("type checked")
                .value(i)
                .to_string(),
        ),
        DataType::Timestamp(TimeUnit::Microsecond, _) => Value::String(rfc3339(
            array
                .as_any()
                .downcast_ref::<TimestampMicrosecondArray>()
                .expect("type checked")
                .value(i),
        )),
        DataType::Timestamp(_, tz) => {
            let micros = cast(
                &array.slice(i, 1),
                &DataType::Timestamp(TimeUnit::Microsecond, tz.clone()),
            );
            match micros {
                Ok(m) => cell(m.as_ref(), 0),
                Err(_) => Value::String(array_value_to_string(array, i).unwrap_or_default()),
            }
        }
        _ => Value::String(array_value_to_string(array, i).unwrap_or_default()),
    }
}

/// Groups a view could not compute a row for, as answers list them: each group's key
/// columns and window start, and the error.
pub fn failed_rows(failed: &[tributary_core::quarantine::FailedRow]) -> Vec<Value> {
    failed
        .iter()
        .map(|f| {
            let keys: serde_json::Map<String, Value> = f
                .keys
                .schema()
                .fields()
                .iter()
                .zip(f.keys.columns())
                .map(|(field, column)| (field.name().clone(), cell(column.as_ref(), 0)))
                .collect();
            serde_json::json!({ "keys": keys, "error": f.error.to_string() })
        })
        .collect()
}
