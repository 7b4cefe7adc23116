//! How deep a SQL statement nests, measured on its tokens before anything parses or
//! plans it.
//!
//! Parser, planner and optimizer are recursive: a statement nested deep enough (or a
//! chain of thousands of `+`) overflows the stack of whatever thread handles it, which
//! aborts the whole process. The tokenizer is iterative, so counting on the tokens is
//! safe at any size. The SQL endpoint holds queries to `[sql]`'s limits; view
//! definitions (from the file, the API or the dashboard) to [`VIEW_MAX_DEPTH`] and
//! [`VIEW_MAX_BYTES`], since every role plans them.

use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

/// Deepest nesting and longest operator chain a view's SQL may have.
pub const VIEW_MAX_DEPTH: usize = 128;
/// Longest view SQL, in bytes.
pub const VIEW_MAX_BYTES: usize = 64 * 1024;

/// What the limits are checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nesting {
    /// Deepest nesting of parentheses and brackets.
    pub deepest: usize,
    /// Binary and unary operators (each is one more level of a left-deep tree).
    pub operators: usize,
}

/// Measure `sql` (an error when it does not even tokenize).
pub fn nesting(sql: &str) -> Result<Nesting, String> {
    let tokens = Tokenizer::new(&GenericDialect {}, sql)
        .tokenize()
        .map_err(|e| format!("SQL does not parse: {e}"))?;
    let (mut depth, mut deepest, mut operators) = (0usize, 0usize, 0usize);
    for t in &tokens {
        match t {
            Token::LParen | Token::LBracket => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            Token::RParen | Token::RBracket => depth = depth.saturating_sub(1),
            Token::Plus
            | Token::Minus
            | Token::Mul
            | Token::Div
            | Token::Mod
            | Token::StringConcat
            | Token::Eq
            | Token::Neq
            | Token::Lt
            | Token::Gt
            | Token::LtEq
            | Token::GtEq
            | Token::Ampersand
            | Token::Pipe
            | Token::Caret => operators += 1,
            Token::Word(w)
                if matches!(w.value.to_ascii_uppercase().as_str(), "AND" | "OR" | "NOT") =>
            {
                operators += 1
            }
            _ => {}
        }
    }
    Ok(Nesting { deepest, operators })
}

/// Refuse `sql` when it is longer than `max_bytes`, or nests or chains deeper than
/// `max_depth`; `key` names the setting in the message (`sql.max-expression-depth`).
pub fn check(sql: &str, max_bytes: (usize, &str), max_depth: (usize, &str)) -> Result<(), String> {
    let (max, key) = max_bytes;
    if sql.len() > max {
        return Err(format!(
            "statement is {} bytes; the limit is {max} ({key})",
            sql.len()
        ));
    }
    let n = nesting(sql)?;
    let (max, key) = max_depth;
    if n.deepest > max {
        return Err(format!(
            "statement nests parentheses {} deep; the limit is {max} ({key})",
            n.deepest
        ));
    }
    if n.operators > max {
        return Err(format!(
            "statement has {} operators; the limit is {max} ({key})",
            n.operators
        ));
    }
    Ok(())
}

/// [`check`] with a view's limits.
pub fn check_view(sql: &str) -> Result<(), String> {
    check(
        sql,
        (VIEW_MAX_BYTES, "for a view's SQL"),
        (VIEW_MAX_DEPTH, "for a view's SQL"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_nesting_and_long_chains_are_measured_on_tokens() {
        let chain = format!("SELECT {}", vec!["1"; 5_000].join("+"));
        assert_eq!(nesting(&chain).unwrap().operators, 4_999);
        let nested = format!("SELECT {}1{}", "abs(".repeat(5_000), ")".repeat(5_000));
        assert_eq!(nesting(&nested).unwrap().deepest, 5_000);
        let nots = format!("SELECT {} true", "NOT ".repeat(300));
        assert!(check_view(&nots).unwrap_err().contains("300 operators"));
        assert!(check_view(&chain).unwrap_err().contains("4999 operators"));
        assert!(check_view(&nested).unwrap_err().contains("5000 deep"));
        let long = format!("SELECT 1 AS {}", "a".repeat(VIEW_MAX_BYTES));
        assert!(check_view(&long).unwrap_err().contains("bytes"));
        assert!(check_view("SELECT (1 + 2) * 3").is_ok());
    }
}
