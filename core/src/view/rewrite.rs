//! The view's SQL as it is planned: one plain SELECT, with the hidden
//! `bit_or(_src) AS _src` aggregate added and a `hop(…)` window turned into a column of
//! the stream unnested per window.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    Expr as SqlExpr, Ident, Query, Select, SelectItem, SetExpr, Statement, TableFactor,
    visit_expressions_mut,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;

use super::SOURCE_COLUMN;
use crate::window::{HOP_COLUMN, HOP_FUNCTION, HOP_SQL_NAME};

/// Parse the view's SQL, check it is one plain SELECT, add `bit_or(_src) AS _src`, and
/// turn a `hop(…)` window into a column of the stream unnested per window.
pub(super) fn rewrite(sql: &str) -> std::result::Result<String, String> {
    let dialect = GenericDialect {};
    let mut statements =
        Parser::parse_sql(&dialect, sql).map_err(|e| format!("SQL does not parse: {e}"))?;
    if statements.len() != 1 {
        return Err(format!(
            "expected exactly one SELECT statement, got {}",
            statements.len()
        ));
    }
    let mut statement = statements.remove(0);
    let Statement::Query(query) = &mut statement else {
        return Err("a view must be a SELECT query".into());
    };
    if query.with.is_some() {
        return Err("WITH (common table expressions) is not supported in a view".into());
    }
    if query.order_by.is_some() {
        return Err(
            "ORDER BY is not supported in a view: order rows when you query it (`order`)".into(),
        );
    }
    if query.limit_clause.is_some() || query.fetch.is_some() {
        return Err("LIMIT/FETCH is not supported in a view: limit rows when you query it".into());
    }
    let hop_call = replace_hop_calls(query.as_mut())?;
    let SetExpr::Select(select) = query.body.as_mut() else {
        return Err(
            "a view must be a single SELECT (no UNION, INTERSECT, EXCEPT or VALUES)".into(),
        );
    };
    if select.distinct.is_some() {
        return Err("SELECT DISTINCT is not supported in a view".into());
    }
    if let Some(call) = hop_call {
        let [from] = select.from.as_mut_slice() else {
            return Err("a view reads exactly one stream in FROM".into());
        };
        let TableFactor::Table { name, alias, .. } = &from.relation else {
            return Err("hop(…) windows need the stream itself in FROM, not a subquery".into());
        };
        let alias = alias
            .as_ref()
            .map(|a| a.name.to_string())
            .unwrap_or_else(|| name.0.last().map(|p| p.to_string()).unwrap_or_default());
        let derived = format!(
            "SELECT * FROM (SELECT *, unnest({call}) AS {HOP_COLUMN} FROM {name}) AS {alias}"
        );
        from.relation = first_select(&derived).from[0].relation.clone();
    }
    let hidden = first_select(&format!(
        "SELECT bit_or({SOURCE_COLUMN}) AS {SOURCE_COLUMN}"
    ));
    let item: SelectItem = hidden.projection[0].clone();
    select.projection.push(item);
    Ok(statement.to_string())
}

/// Replace every `hop(ts, size, slide)` by the hopping-window column; return the call
/// that computes it (all occurrences must be the same window).
fn replace_hop_calls(query: &mut Query) -> std::result::Result<Option<String>, String> {
    let mut call: Option<String> = None;
    let mut problem: Option<String> = None;
    let _ = visit_expressions_mut(query, |e| {
        if let SqlExpr::Function(f) = e {
            let name = f.name.to_string().to_lowercase();
            if name == "session" || name == "session_window" {
                problem = Some(
                    "session windows are not supported: a late event can join two sessions whose \
                     states were already kept apart, so merged answers could not stay exact; use \
                     date_bin (tumbling) or hop (hopping) windows"
                        .into(),
                );
            } else if name == HOP_SQL_NAME {
                let this = format!("{HOP_FUNCTION}{}", f.args);
                if call.as_ref().is_some_and(|c| c != &this) {
                    problem = Some("a view may group by only one window".into());
                }
                call = Some(this);
                *e = SqlExpr::Identifier(Ident::new(HOP_COLUMN));
            }
        }
        ControlFlow::<()>::Continue(())
    });
    match problem {
        Some(p) => Err(p),
        None => Ok(call),
    }
}

fn first_select(sql: &str) -> Select {
    let parsed = Parser::parse_sql(&GenericDialect {}, sql).expect("generated SQL parses");
    let Statement::Query(q) = &parsed[0] else {
        unreachable!("generated SQL is a query")
    };
    let SetExpr::Select(s) = q.body.as_ref() else {
        unreachable!("generated SQL is a SELECT")
    };
    s.as_ref().clone()
}
