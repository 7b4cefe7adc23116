//! The view's SQL as it is planned: one plain SELECT, with the hidden
//! `bit_or(_src) AS _src` aggregate added, a `hop(…)` window turned into a column of
//! the stream unnested per window, and a `session(…)` window turned into
//! `tributary_session(ts, gap, keys…)` with a `session_end` column added.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    Expr as SqlExpr, Ident, Query, Select, SelectItem, SetExpr, Statement, TableFactor,
    visit_expressions_mut,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;

use super::SOURCE_COLUMN;
use crate::window::{HOP_COLUMN, HOP_FUNCTION, HOP_SQL_NAME, SESSION_END, SESSION_FUNCTION};

/// A view's SQL as every layer plans it, and as the one-pass reference runs it.
pub(super) struct Rewritten {
    /// What both layers plan (partial and final sides).
    pub(super) exec: String,
    /// A LEFT join of two streams: its INNER and matching variants.
    pub(super) outer: Option<super::outer_join::OuterSql>,
    /// A session view's reference: sessions made by window functions in one pass,
    /// independently of the coalescing the layers use. `None`: `exec` is the reference.
    pub(super) reference: Option<String>,
}

/// The arguments of a view's `session(ts, gap)` call, as SQL text.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct SessionCall {
    pub(super) ts: String,
    pub(super) gap: String,
}

/// Parse the view's SQL, check it is one plain SELECT, add `bit_or(_src) AS _src`, turn
/// a `hop(…)` window into a column of the stream unnested per window and a `session(…)`
/// window into `tributary_session` (plus `session_end` and the one-pass reference).
pub(super) fn rewrite(sql: &str, streams: &[&str]) -> std::result::Result<Rewritten, String> {
    let dialect = GenericDialect {};
    let mut statements =
        Parser::parse_sql(&dialect, sql).map_err(|e| format!("SQL does not parse: {e}"))?;
    refuse_source_column(&dialect, sql)?;
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
    let original = query.as_ref().clone();
    let (hop_call, session) = replace_window_calls(query.as_mut())?;
    if session.is_some() {
        super::session::pass_keys(query.as_mut(), &super::session::group_keys(&original)?);
    }
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
        let (name, alias) = stream_in_from(&from.relation, "hop(…) windows")?;
        // The stream keeps its alias inside too: the call may name `alias.ts`.
        let derived = format!(
            "SELECT * FROM (SELECT *, unnest({call}) AS {HOP_COLUMN} FROM {name} AS {alias}) AS {alias}"
        );
        from.relation = first_select(&derived).from[0].relation.clone();
    }
    if let Some(call) = &session {
        let taken = select.projection.iter().any(|item| {
            matches!(item, SelectItem::ExprWithAlias { alias, .. }
                if alias.value.eq_ignore_ascii_case(SESSION_END))
        });
        if taken {
            return Err(format!(
                "`{SESSION_END}` is the column a session view adds (its last event time plus the gap); name yours otherwise"
            ));
        }
        select.projection.push(session_end(call));
    }
    let qualifier = joined_stream_qualifier(select, streams);
    select.projection.push(source_item(qualifier.as_deref()));
    let left_join = super::outer_join::left_stream_join(select, |r| reads_stream(r, streams));
    let mut reference = match session {
        Some(call) => Some(super::session::reference_sql(original, &call)?),
        None => None,
    };
    let outer = match left_join {
        Some(join) => {
            // The reference runs the SQL as written (plus `_src`), not the rewrite.
            reference = Some(statement.to_string());
            let outer =
                super::outer_join::rewrite_outer(&mut statement, join, qualifier.as_deref())?;
            Some(outer)
        }
        None => None,
    };
    Ok(Rewritten {
        exec: statement.to_string(),
        outer,
        reference,
    })
}

/// `_src` is the hidden input column that tells the layers apart (1 batch, 2 speed): a
/// view that read it would compute different values in each layer, and one that named
/// an output column so would clash with the aggregate the rewrite adds.
fn refuse_source_column(dialect: &GenericDialect, sql: &str) -> std::result::Result<(), String> {
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
    let tokens = Tokenizer::new(dialect, sql)
        .tokenize()
        .map_err(|e| format!("SQL does not parse: {e}"))?;
    let named = tokens
        .iter()
        .any(|t| matches!(t, Token::Word(w) if w.value.eq_ignore_ascii_case(SOURCE_COLUMN)));
    if named {
        return Err(format!(
            "`{SOURCE_COLUMN}` is reserved (the column Tributary adds to tell the speed and batch layers apart): a view can neither read it nor name a column so"
        ));
    }
    Ok(())
}

/// `bit_or(_src) AS _src`: which layers a row's states came from. In a join of two
/// streams both have `_src` (the same tag: a layer reads both sides), so it is read
/// from the left one, named by `qualifier`.
pub(super) fn source_item(qualifier: Option<&str>) -> SelectItem {
    let column = match qualifier {
        Some(q) => format!("{q}.{SOURCE_COLUMN}"),
        None => SOURCE_COLUMN.to_string(),
    };
    first_select(&format!("SELECT bit_or({column}) AS {SOURCE_COLUMN}")).projection[0].clone()
}

/// The name the query gives its first relation, when a stream is joined to it (the
/// hidden `_src` is then in both sides).
fn joined_stream_qualifier(select: &Select, streams: &[&str]) -> Option<String> {
    let [from] = select.from.as_slice() else {
        return None;
    };
    let joins_a_stream = from
        .joins
        .iter()
        .any(|j| reads_stream(&j.relation, streams));
    if !joins_a_stream {
        return None;
    }
    match &from.relation {
        TableFactor::Table { name, alias, .. } => Some(
            alias
                .as_ref()
                .map(|a| a.name.to_string())
                .unwrap_or_else(|| name.to_string()),
        ),
        TableFactor::Derived { alias, .. } => alias.as_ref().map(|a| a.name.to_string()),
        _ => None,
    }
}

/// Whether a relation of FROM reads one of `streams`.
fn reads_stream(relation: &TableFactor, streams: &[&str]) -> bool {
    let is_stream = |name: &str| streams.iter().any(|s| name.eq_ignore_ascii_case(s));
    match relation {
        TableFactor::Table { name, .. } => is_stream(&name.to_string()),
        // A subquery over a stream (`JOIN (SELECT … FROM orders WHERE …) o`).
        TableFactor::Derived { subquery, .. } => subquery
            .to_string()
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .any(is_stream),
        _ => false,
    }
}

/// `max(ts) + gap AS session_end`: a session ends a gap after its last event.
pub(super) fn session_end(call: &SessionCall) -> SelectItem {
    let SessionCall { ts, gap } = call;
    first_select(&format!("SELECT max({ts}) + {gap} AS {SESSION_END}")).projection[0].clone()
}

/// Replace every `hop(ts, size, slide)` by the hopping-window column and every
/// `session(ts, gap)` by `tributary_session(ts, gap)`; return the hop call that computes
/// the column and the session's arguments (all occurrences must be the same window).
#[allow(clippy::type_complexity)]
fn replace_window_calls(
    query: &mut Query,
) -> std::result::Result<(Option<String>, Option<SessionCall>), String> {
    let mut call: Option<String> = None;
    let mut session: Option<SessionCall> = None;
    let mut problem: Option<String> = None;
    let _ = visit_expressions_mut(query, |e| {
        let is_session = super::session::is_session(e);
        if let SqlExpr::Function(f) = e {
            let name = f.name.to_string().to_lowercase();
            if is_session {
                match session_call(&f.args.to_string()) {
                    Ok(this) if session.as_ref().is_some_and(|s| s != &this) => {
                        problem = Some("a view may group by only one window".into());
                    }
                    Ok(this) => session = Some(this),
                    Err(p) => problem = Some(p),
                }
                f.name = datafusion::sql::sqlparser::ast::ObjectName::from(vec![Ident::new(
                    SESSION_FUNCTION,
                )]);
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
    if call.is_some() && session.is_some() {
        problem = Some("a view may group by only one window".into());
    }
    match problem {
        Some(p) => Err(p),
        None => Ok((call, session)),
    }
}

/// The two arguments of `session(ts, gap)` (given as `(ts, gap)`); a session needs a gap,
/// or it would never end.
fn session_call(args: &str) -> std::result::Result<SessionCall, String> {
    let parsed = first_select(&format!("SELECT f{args}"));
    let SelectItem::UnnamedExpr(SqlExpr::Function(f)) = &parsed.projection[0] else {
        unreachable!("a function call parses as one")
    };
    let datafusion::sql::sqlparser::ast::FunctionArguments::List(list) = &f.args else {
        return Err(SESSION_USAGE.into());
    };
    match list.args.as_slice() {
        [ts, gap] => Ok(SessionCall {
            ts: ts.to_string(),
            gap: gap.to_string(),
        }),
        [_] => Err(format!(
            "a session window needs a gap, or a session would never end: {SESSION_USAGE}"
        )),
        _ => Err(SESSION_USAGE.into()),
    }
}

const SESSION_USAGE: &str = "session takes two arguments: session(ts, INTERVAL '5 minutes')";

/// The stream a window rewrite wraps (`FROM` must name it, not a subquery), and the
/// name the query refers to it by (its alias, else its own name).
pub(super) fn stream_in_from(
    relation: &TableFactor,
    what: &str,
) -> std::result::Result<(String, String), String> {
    let TableFactor::Table { name, alias, .. } = relation else {
        return Err(format!(
            "{what} need the stream itself in FROM, not a subquery"
        ));
    };
    let alias = alias
        .as_ref()
        .map(|a| a.name.to_string())
        .unwrap_or_else(|| name.0.last().map(|p| p.to_string()).unwrap_or_default());
    Ok((name.to_string(), alias))
}

pub(super) fn first_select(sql: &str) -> Select {
    let parsed = Parser::parse_sql(&GenericDialect {}, sql).expect("generated SQL parses");
    let Statement::Query(q) = &parsed[0] else {
        unreachable!("generated SQL is a query")
    };
    let SetExpr::Select(s) = q.body.as_ref() else {
        unreachable!("generated SQL is a SELECT")
    };
    s.as_ref().clone()
}
