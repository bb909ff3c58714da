//! Redaction fails closed: SQL built by the input from well-formed tokens (keywords, identifiers, quoted
//! identifiers, comments, operators) and literals of every kind PostgreSQL has ('…', E'…', $$…$$,
//! $tag$…$tag$, U&'…', numbers), each literal holding a secret, must come out with no secret left, whichever
//! way `standard_conforming_strings` reads backslashes. A property, not a snapshot. And any text at all is
//! redacted and truncated without a panic. Query tags are read from comments outside literals only: no secret
//! of a literal ever becomes a tag.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pgwarden::config::StatementText;
use pgwarden::redact::tags::extract;
use pgwarden::redact::{redact, render};

const SECRET: &str = "SECRET";
const SECRET_NUMBER: &str = "9876543210";

/// Takes the next byte of the input (0 when it is used up).
fn next(input: &mut &[u8]) -> u8 {
    match input.split_first() {
        Some((&b, rest)) => {
            *input = rest;
            b
        }
        None => 0,
    }
}

/// Literal content from the input: `specials` are the characters this kind of literal may hold as they are.
fn content(input: &mut &[u8], pieces: &[&str]) -> String {
    let n = next(input) % 8;
    let mut s = String::from(SECRET);
    for _ in 0..n {
        s.push_str(pieces[next(input) as usize % pieces.len()]);
    }
    s
}

fn token(input: &mut &[u8]) -> String {
    match next(input) % 15 {
        0 => "select".into(),
        1 => " ".into(),
        2 => ", ".into(),
        3 => "abc".into(),
        4 => "\"it's \\ id\"".into(),
        5 => format!("/* it's {} \\ */", "x".repeat(next(input) as usize % 3)),
        6 => "-- it's \\ \n".into(),
        // Literals start with a space: `'a''b'` is one string, and after an identifier character `$`
        // continues the identifier (`text$$x` is one name), so adjacent tokens would not be what they seem.
        7 => format!(" '{}'", content(input, &["a", "''", "\\", " ", "\"", "$", "\n", SECRET])),
        8 => format!(" E'{}'", content(input, &["a", "''", "\\'", "\\\\", " ", "$", SECRET])),
        9 => format!(" $${}$$", content(input, &["a", "'", "\\", " ", "\n", SECRET])),
        10 => format!(" $q${}$q$", content(input, &["a", "'", "\\", "$", " ", SECRET])),
        11 => format!(" U&'{}'", content(input, &["a", "''", " ", SECRET])),
        12 => format!(" {SECRET_NUMBER}{} ", [".5", "e3", "", ".0e-2"][next(input) as usize % 4]),
        13 => " /*route='%2Fup%27load',action:resize*/ ".into(),
        _ => [" = ", "(", ")", "::text", " and ", ";"][next(input) as usize % 6].into(),
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = redact(&text);
    let _ = extract(&text, &["tenant".to_string()]);
    let _ = pgwarden::text::traceparent::split(&text);
    for max in [0, 1, 7, 64] {
        if let Some(out) = render(&text, StatementText::Redacted, max) {
            assert!(out.len() <= max);
        }
    }

    let mut input = data;
    let mut sql = String::new();
    while !input.is_empty() {
        sql.push_str(&token(&mut input));
    }
    let out = redact(&sql);
    assert!(!out.contains(SECRET), "a literal survived: {sql:?} -> {out:?}");
    // Query tags come from comments outside literals only: no literal's secret becomes a tag.
    for (k, v) in extract(&sql, &[]) {
        assert!(!v.contains(SECRET) && !v.contains(SECRET_NUMBER), "a literal became tag {k}: {sql:?}");
    }
    assert!(!out.contains(SECRET_NUMBER), "a number survived: {sql:?} -> {out:?}");
});
