//! Limits a SQL statement must meet before anything parses or plans it, and the guards
//! that keep one query from taking the process down with it.
//!
//! Parser, planner and optimizer are recursive: a statement nested deep enough (or a
//! chain of 100,000 `+`) overflows the stack of whatever thread handles it. So the
//! statement's size is bounded, and its tokens (the tokenizer is iterative) are
//! counted for nesting depth and operators first (tributary_core::sql_limits, which
//! view definitions go through too). Queries then run on their own
//! runtime ([`runtime`]) with large stacks, so the request's deadline fires on time
//! however long a query computes between two yields, and a slow query never holds up
//! the server's own threads. Functions that make one value from a count
//! (`repeat`, `lpad`, `rpad`) are replaced by guarded versions that refuse a value
//! larger than the query's memory limit before allocating it: such an allocation is
//! not one the memory pool sees.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock};

use datafusion::arrow::array::AsArray;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, FieldRef, Int64Type};
use datafusion::common::{Result as DfResult, exec_err};
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, simplify::ExprSimplifyResult,
};
use datafusion::prelude::SessionContext;
use tributary_core::config::SqlConfig;

use crate::error::ServingError;

/// Refuse a statement that is too long, nested too deep or chains too many operators
/// (measured on its tokens: tributary_core::sql_limits).
pub fn check_limits(sql: &str, limits: &SqlConfig) -> Result<(), ServingError> {
    tributary_core::sql_limits::check(
        sql,
        (limits.max_statement_bytes, "sql.max-statement-bytes"),
        (limits.max_expression_depth, "sql.max-expression-depth"),
    )
    .map_err(ServingError::Sql)
}

/// The runtime SQL queries run on: two workers with 64 MiB stacks. One for the whole
/// process, like a thread pool, because queries from every request share the cores;
/// it lives as long as the process.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tributary-sql")
            .thread_stack_size(64 * 1024 * 1024)
            .enable_all()
            .build()
            .expect("the SQL runtime starts")
    })
}

/// Replace the functions that build one value from a count by guarded versions.
pub fn register_guards(ctx: &SessionContext, limit_bytes: usize) {
    for name in ["repeat", "lpad", "rpad"] {
        if let Some(inner) = ctx.state().scalar_functions().get(name).cloned() {
            ctx.register_udf(ScalarUDF::new_from_impl(Guarded { inner, limit_bytes }));
        }
    }
}

/// A function that refuses to make a value over `limit_bytes`, then does what `inner`
/// does.
#[derive(Debug)]
struct Guarded {
    inner: Arc<ScalarUDF>,
    limit_bytes: usize,
}

impl PartialEq for Guarded {
    fn eq(&self, other: &Self) -> bool {
        self.inner.name() == other.inner.name() && self.limit_bytes == other.limit_bytes
    }
}
impl Eq for Guarded {}
impl Hash for Guarded {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.inner.name().hash(state);
        self.limit_bytes.hash(state);
    }
}

/// The largest value of argument `i` over the rows (as a number), if it is numeric.
fn largest(args: &[ColumnarValue], i: usize, rows: usize) -> DfResult<i64> {
    let Some(arg) = args.get(i) else { return Ok(0) };
    let array = arg.to_array(rows.max(1))?;
    let ints = cast(&array, &DataType::Int64)?;
    Ok(datafusion::arrow::compute::max(ints.as_primitive::<Int64Type>()).unwrap_or(0))
}

/// The longest string of argument `i` over the rows, in bytes.
fn longest(args: &[ColumnarValue], i: usize, rows: usize) -> DfResult<i64> {
    let Some(arg) = args.get(i) else { return Ok(0) };
    let array = arg.to_array(rows.max(1))?;
    let lengths = datafusion::arrow::compute::kernels::length::length(&array)?;
    let lengths = cast(&lengths, &DataType::Int64)?;
    Ok(datafusion::arrow::compute::max(lengths.as_primitive::<Int64Type>()).unwrap_or(0))
}

impl ScalarUDFImpl for Guarded {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn signature(&self) -> &Signature {
        self.inner.signature()
    }
    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        self.inner.return_type(arg_types)
    }
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> DfResult<FieldRef> {
        self.inner.return_field_from_args(args)
    }
    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }
    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> DfResult<ExprSimplifyResult> {
        self.inner.simplify(args, info)
    }
    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let rows = args.number_rows;
        let largest_value = match self.inner.name() {
            // repeat(text, n): |text| × n bytes per row.
            "repeat" => longest(&args.args, 0, rows)?.saturating_mul(largest(&args.args, 1, rows)?),
            // lpad/rpad(text, n, ...): n characters, up to four bytes each.
            _ => largest(&args.args, 1, rows)?.saturating_mul(4),
        };
        if largest_value > self.limit_bytes as i64 {
            return exec_err!(
                "{}() would make a value of {largest_value} bytes, more than the query's memory limit of {} bytes (sql.memory-limit-mb)",
                self.inner.name(),
                self.limit_bytes
            );
        }
        self.inner.invoke_with_args(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_long_and_chained_statements_are_refused_before_parsing() {
        let limits = SqlConfig::default();
        assert!(check_limits("SELECT 1 + 2 * (3 - 4)", &limits).is_ok());
        let chain = format!("SELECT 1{}", "+1".repeat(100_000));
        assert!(check_limits(&chain, &limits).is_err());
        let nested = format!("SELECT {}1{}", "(".repeat(1000), ")".repeat(1000));
        assert!(check_limits(&nested, &limits).is_err());
        let chain = format!("SELECT 1{}", "+1".repeat(300));
        let e = check_limits(&chain, &limits).unwrap_err().to_string();
        assert!(e.contains("operators"), "{e}");
        let long = format!("SELECT '{}'", "x".repeat(100_000));
        let e = check_limits(&long, &limits).unwrap_err().to_string();
        assert!(e.contains("max-statement-bytes"), "{e}");
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 500, failure_persistence: None, ..ProptestConfig::default() })]

        /// Any text is either refused with a reason or passed on; the guard itself never
        /// panics, and whatever it passes parses without running out of stack.
        #[test]
        fn the_guard_never_panics_and_what_it_passes_is_bounded(
            sql in prop_oneof![
                any::<String>(),
                "(SELECT|select|[()+*/,'1a -]){0,400}",
                (1usize..2000).prop_map(|n| format!("SELECT {}1{}", "(".repeat(n), ")".repeat(n))),
                (1usize..2000).prop_map(|n| format!("SELECT 1{}", " OR 1".repeat(n))),
            ]
        ) {
            let limits = SqlConfig::default();
            if check_limits(&sql, &limits).is_ok() {
                let _ = crate::sql::check_read_only(&sql);
            }
        }
    }
}
