//! Statement text as stats show it: literals replaced by `?` (`redacted`), as sent (`full`), or nothing.
//!
//! Redaction is a small lexer, not a parser: string constants (`'…'` with `''` escapes, `E'…'` with
//! backslash escapes, `$$…$$` and `$tag$…$tag$`) and numeric constants become `?`; identifiers (also
//! quoted ones), keywords, parameters (`$1`) and comments stay. An unterminated literal (a statement cut at
//! `statement_max_length`) is redacted to the end.
//!
//! Redaction fails closed. Whether a backslash escapes a quote in a plain `'…'` string depends on
//! `standard_conforming_strings`, which any session, role, database or startup `options` may turn off, and
//! which pgwarden does not see. Where the two readings disagree (a plain string whose closing quote follows
//! an odd run of backslashes), everything from that string to the end is redacted.

pub mod tags;

use crate::config::StatementText;

/// Renders `text` per `mode`, cut to `max_len` bytes (at a character boundary). `None` for `off`.
pub fn render(text: &str, mode: StatementText, max_len: usize) -> Option<String> {
    let out = match mode {
        StatementText::Off => return None,
        StatementText::Full => text.to_string(),
        StatementText::Redacted => redact(text),
    };
    Some(truncate(out, max_len))
}

fn truncate(mut s: String, max_len: usize) -> String {
    if s.len() > max_len {
        let mut cut = max_len;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// Replaces every literal in `sql` with `?`.
pub fn redact(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    // Start of the current run of bytes copied unchanged.
    let mut copy_from = 0;
    lex(
        sql,
        |start, end| {
            out.push_str(&sql[copy_from..start]);
            out.push('?');
            copy_from = end;
        },
        |_, _| {},
    );
    out.push_str(&sql[copy_from.min(sql.len())..]);
    out
}

/// The block comments of `sql` outside its literals, innermost delimiters included in nesting (each as the
/// text between its outer `/*` and `*/`). Fails closed as redaction does: nothing after a string whose end
/// the two readings of backslashes disagree on.
pub fn comments(sql: &str) -> Vec<&str> {
    let mut found = Vec::new();
    lex(
        sql,
        |_, _| {},
        |start, end| {
            let inner = &sql[start + 2..end];
            found.push(inner.strip_suffix("*/").unwrap_or(inner));
        },
    );
    found
}

/// The lexer: `literal(start, end)` for each literal (string, dollar-quoted or numeric constant; an
/// unterminated or ambiguous one runs to the end), `comment(start, end)` for each block comment.
fn lex(sql: &str, mut literal: impl FnMut(usize, usize), mut comment: impl FnMut(usize, usize)) {
    let b = sql.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let prev_ident = i > 0 && is_ident(b[i - 1]);
        if c == b'\'' || ((c == b'E' || c == b'e') && b.get(i + 1) == Some(&b'\'') && !prev_ident) {
            let backslash = c != b'\'';
            let start = i;
            i += if backslash { 2 } else { 1 };
            loop {
                match b.get(i) {
                    None => break,
                    Some(b'\\') if backslash => i += 2,
                    // Before the `''` pair: in `'a\''E's'` the pair's first quote is escaped with
                    // standard_conforming_strings off, where the string then ends and `E's'` is a literal.
                    Some(b'\'') if !backslash && escaped_by_backslashes(&b[start + 1..i]) => {
                        // With standard_conforming_strings off this quote is escaped and the string goes
                        // on: the two readings part here, so nothing after this point is shown.
                        i = b.len();
                        break;
                    }
                    Some(b'\'') if b.get(i + 1) == Some(&b'\'') => i += 2,
                    Some(b'\'') => {
                        i += 1;
                        break;
                    }
                    Some(_) => i += 1,
                }
            }
            literal(start, i.min(b.len()));
        } else if c == b'"' {
            // Quoted identifier: copy as is.
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += 1;
            }
            i += 1;
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            // Block comment (they nest in PostgreSQL): kept as is, quotes inside it open nothing.
            let start = i;
            let mut depth = 0;
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            comment(start, i.min(b.len()));
        } else if c == b'-' && b.get(i + 1) == Some(&b'-') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'$' && !prev_ident {
            match dollar_tag(&b[i..]) {
                Some(tag_len) => {
                    let tag = &b[i..i + tag_len];
                    let start = i;
                    let body = i + tag_len;
                    let end = b[body..].windows(tag_len).position(|w| w == tag).map(|p| body + p + tag_len);
                    i = end.unwrap_or(b.len());
                    literal(start, i);
                }
                None => {
                    // `$1` parameter: keep.
                    i += 1;
                    while i < b.len() && b[i].is_ascii_digit() {
                        i += 1;
                    }
                }
            }
        } else if c.is_ascii_digit() && !prev_ident
            || (c == b'.' && !prev_ident && b.get(i + 1).is_some_and(u8::is_ascii_digit))
        {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_') {
                // Exponent sign: 1e-5.
                if (b[i] == b'e' || b[i] == b'E') && matches!(b.get(i + 1), Some(b'-' | b'+')) {
                    i += 1;
                }
                i += 1;
            }
            literal(start, i.min(b.len()));
        } else {
            i += 1;
        }
    }
}

/// The string contents before a closing quote end in an odd run of backslashes.
fn escaped_by_backslashes(before_quote: &[u8]) -> bool {
    before_quote.iter().rev().take_while(|&&c| c == b'\\').count() % 2 == 1
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80 || c == b'$'
}

/// Length of a `$tag$` opening (`$$` is 2), or `None` when this `$` is not one.
fn dollar_tag(b: &[u8]) -> Option<usize> {
    let mut j = 1;
    while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_' || b[j] >= 0x80) {
        if j == 1 && b[j].is_ascii_digit() {
            return None;
        }
        j += 1;
    }
    (b.get(j) == Some(&b'$')).then_some(j + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_literal_form() {
        let cases = [
            ("select * from t where name = 'alice'", "select * from t where name = ?"),
            ("select 'it''s'", "select ?"),
            ("select E'a\\'b' , e'x'", "select ? , ?"),
            ("select $$body 'x' 1$$", "select ?"),
            ("select $fn$ a $$ b $fn$ || 'z'", "select ? || ?"),
            ("select 42, 3.14, .5, 1e10, 2.5E-3 from t1", "select ?, ?, ?, ?, ? from t1"),
            ("select $1, $2::int", "select $1, $2::int"),
            ("select col2, \"Weird 'quoted' 7\" from t", "select col2, \"Weird 'quoted' 7\" from t"),
            ("select 1 -- comment 'x' 2\n, 3", "select ? -- comment 'x' 2\n, ?"),
            (
                "update accounts set balance = balance - 100 where id = 7",
                "update accounts set balance = balance - ? where id = ?",
            ),
            ("insert into t values ('a', 1), ('b', 2)", "insert into t values (?, ?), (?, ?)"),
            ("select 'unterminated", "select ?"),
            ("/* don't */ SELECT * FROM users WHERE pw = 'hunter2'", "/* don't */ SELECT * FROM users WHERE pw = ?"),
            ("/* a /* nested ' */ still */ select 'x'", "/* a /* nested ' */ still */ select ?"),
            ("select 1 /* 'unterminated comment", "select ? /* 'unterminated comment"),
            ("select $$unterminated", "select ?"),
            ("select x from tbl_9 where café = 'é'", "select x from tbl_9 where café = ?"),
        ];
        for (input, want) in cases {
            assert_eq!(redact(input), want, "{input}");
        }
    }

    /// No literal's content survives, whatever surrounds it.
    #[test]
    fn secrets_never_survive() {
        let secret = "s3cr3t";
        let wrappers = ["'{}'", "E'{}'", "$${}$$", "$q${}$q$", "'a''{}'", "E'\\'{}'"];
        let contexts = [
            "select {} ",
            "/* it's */ select {}",
            "-- it's\nselect {}",
            "select \"it's\", {}",
            "select x from t where a = {} and b = 'x'",
        ];
        for w in wrappers {
            for c in contexts {
                let sql = c.replace("{}", &w.replace("{}", secret));
                let out = redact(&sql);
                assert!(!out.contains(secret), "{sql:?} -> {out:?}");
            }
        }
    }

    #[test]
    fn an_escaped_quote_pair_cannot_unredact() {
        // Found by the redact fuzz target: with standard_conforming_strings off, `'a\''` ends after `\'`
        // and `E's3cr3t'` is a literal; with it on, `'a\''E'` is the literal and `s3cr3t` a name.
        let out = redact("select 'a\\''E's3cr3t'");
        assert!(!out.contains("s3cr3t"), "{out}");
        assert_eq!(out, "select ?");
    }

    #[test]
    fn standard_conforming_strings_off_cannot_unredact() {
        // Found in review: `'a\' hunter2'` showed as `? hunter2?`.
        assert_eq!(redact("ALTER ROLE x PASSWORD 'a\\' hunter2'"), "ALTER ROLE x PASSWORD ?");
        assert_eq!(redact("select 'a\\\\', 'b'"), "select ?, ?", "an even run escapes nothing either way");
        assert_eq!(redact("select 'no backslash', 2"), "select ?, ?");
    }

    use proptest::strategy::Just;

    proptest::proptest! {
        /// A secret inside a string literal never shows, whichever way standard_conforming_strings is set
        /// and whatever the literal holds (quotes and backslashes escaped for that setting).
        #[test]
        fn no_literal_survives(
            before in "[a-z ,=()']{0,12}",
            raw in proptest::collection::vec(proptest::prop_oneof![Just("a"), Just("\\"), Just("'"), Just(" "), Just("s3cr3t")], 0..12),
            after in "[a-z ,=()'\\\\]{0,12}",
            backslash_escapes in proptest::bool::ANY,
        ) {
            let mut lit = String::from("s3cr3t");
            for part in &raw {
                lit.push_str(match (*part, backslash_escapes) {
                    ("'", false) => "''",
                    ("'", true) => "\\'",
                    ("\\", true) => "\\\\",
                    (p, _) => p,
                });
            }
            // The prefix must not leave a literal open (it would swallow the one under test anyway).
            let before = if before.matches('\'').count() % 2 == 1 { format!("{before}'") } else { before };
            let sql = format!("{before} '{lit}' {after}");
            let out = redact(&sql);
            proptest::prop_assert!(!out.contains("s3cr3t"), "{:?} -> {:?}", sql, out);
        }
    }

    #[test]
    fn modes_and_truncation() {
        let q = "select 'secret'";
        assert_eq!(render(q, StatementText::Redacted, 100).as_deref(), Some("select ?"));
        assert_eq!(render(q, StatementText::Full, 100).as_deref(), Some(q));
        assert_eq!(render(q, StatementText::Off, 100), None);
        assert_eq!(render(q, StatementText::Full, 6).as_deref(), Some("select"));
        assert_eq!(render("select 'é'", StatementText::Full, 9).as_deref(), Some("select '"));
    }

    #[test]
    fn never_panics_on_prefixes() {
        let q = "select E'\\\\', $a$x$a$, 'q''q', \"id\", 1.5e+3 -- c\n";
        for cut in 0..=q.len() {
            if q.is_char_boundary(cut) {
                let _ = redact(&q[..cut]);
            }
        }
    }
}
