//! The few SQL commands whose effect the tracker must know, read from the first words of each statement of
//! a Query (never a parse of the SQL: statements are split at `;`, comments skipped). No I/O.
//!
//! `LISTEN` makes idling a session's job (never a leak suspect); `UNLISTEN *` and `DISCARD ALL` undo that;
//! `DEALLOCATE` and `DISCARD ALL` drop prepared statements.

/// A command of interest at the start of one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Listen,
    /// `UNLISTEN *` (`all`) or `UNLISTEN channel`.
    Unlisten {
        all: bool,
    },
    /// `DEALLOCATE [PREPARE] name` with the name as PostgreSQL reads it; `None` is `DEALLOCATE ALL`.
    Deallocate(Option<Vec<u8>>),
    DiscardAll,
}

/// `SET [SESSION | LOCAL] application_name {= | TO} '...'` whose value is or ends in a W3C traceparent, as
/// the first statement of `text`: the trace id and the rest of `text` after that statement (often empty).
/// OpenTelemetry's instrumentations send it before a command; it is the trace, not the evidence statement.
pub fn traced_set(text: &[u8]) -> Option<(&str, &[u8])> {
    let t = skip_comments(text);
    // Most statements are told apart by their first four bytes (issue 31: every Query passes here).
    if !(t.len() > 3 && t[..3].eq_ignore_ascii_case(b"set") && !is_word_byte(t[3])) {
        return None;
    }
    let (w, t) = word(t)?;
    if !is(w, "set") {
        return None;
    }
    let (mut w, mut t) = word(t)?;
    if is(w, "session") || is(w, "local") {
        (w, t) = word(t)?;
    }
    if !is(w, "application_name") {
        return None;
    }
    let t = t.trim_ascii_start();
    let t = match t.strip_prefix(b"=") {
        Some(rest) => rest,
        None => {
            let (w, rest) = word(t)?;
            if !is(w, "to") {
                return None;
            }
            rest
        }
    };
    let t = t.trim_ascii_start().strip_prefix(b"'")?;
    let end = t.iter().position(|&c| c == b'\'')?;
    let value = std::str::from_utf8(&t[..end]).ok()?;
    let trace = crate::text::traceparent::split(value).1?;
    let rest = t[end + 1..].trim_ascii_start();
    let rest = rest.strip_prefix(b";").unwrap_or(rest).trim_ascii();
    Some((trace, rest))
}

/// `text` only opens a transaction (`BEGIN …` or `START TRANSACTION …`, one statement): the code that borrowed
/// the connection speaks in the statement after it.
pub fn opens_transaction_only(text: &[u8]) -> bool {
    // The first word first: every other statement is told apart without reading further.
    match word(skip_comments(text)) {
        Some((w, _)) if is(w, "begin") || is(w, "start") => {}
        _ => return false,
    }
    statements(text).filter(|s| !skip_comments(s).is_empty()).nth(1).is_none()
}

/// The commands of interest in `text`, in order.
pub fn commands(text: &[u8]) -> impl Iterator<Item = Command> + '_ {
    statements(text).filter_map(|stmt| command(skip_comments(stmt)))
}

/// `text` split at every `;`, as `split` would (a trailing empty piece after a final `;`), with the `;` found by
/// `memchr`: every simple-protocol query passes here, and most hold one statement (issue 31).
fn statements(text: &[u8]) -> impl Iterator<Item = &[u8]> + '_ {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let t = rest?;
        match memchr::memchr(b';', t) {
            Some(i) => {
                rest = Some(&t[i + 1..]);
                Some(&t[..i])
            }
            None => {
                rest = None;
                Some(t)
            }
        }
    })
}

fn skip_comments(mut t: &[u8]) -> &[u8] {
    loop {
        t = t.trim_ascii_start();
        if let Some(rest) = t.strip_prefix(b"/*") {
            let end = rest.windows(2).position(|w| w == b"*/").map_or(rest.len(), |p| p + 2);
            t = &rest[end..];
        } else if let Some(rest) = t.strip_prefix(b"--") {
            let end = rest.iter().position(|&c| c == b'\n').unwrap_or(rest.len());
            t = &rest[end..];
        } else {
            return t;
        }
    }
}

/// The next word (letters, digits, `_`, `*`, or a double-quoted identifier) and the rest.
fn word(t: &[u8]) -> Option<(&[u8], &[u8])> {
    let t = t.trim_ascii_start();
    if t.first() == Some(&b'"') {
        let mut i = 1;
        while i < t.len() {
            if t[i] == b'"' {
                if t.get(i + 1) == Some(&b'"') {
                    i += 2;
                    continue;
                }
                return Some((&t[..=i], &t[i + 1..]));
            }
            i += 1;
        }
        return None;
    }
    let end = t.iter().position(|&c| !is_word_byte(c));
    let end = end.unwrap_or(t.len());
    (end > 0).then(|| (&t[..end], &t[end..]))
}

fn is_word_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'*' || c >= 0x80
}

fn is(w: &[u8], keyword: &str) -> bool {
    w.eq_ignore_ascii_case(keyword.as_bytes())
}

/// An identifier as PostgreSQL reads it: quoted kept (with `""` unescaped), unquoted folded to lower case.
fn identifier(w: &[u8]) -> Vec<u8> {
    match w.strip_prefix(b"\"").and_then(|r| r.strip_suffix(b"\"")) {
        Some(inner) => {
            let mut out = Vec::with_capacity(inner.len());
            let mut i = 0;
            while i < inner.len() {
                out.push(inner[i]);
                i += if inner[i] == b'"' && inner.get(i + 1) == Some(&b'"') { 2 } else { 1 };
            }
            out
        }
        None => w.to_ascii_lowercase(),
    }
}

fn command(stmt: &[u8]) -> Option<Command> {
    // Every simple-protocol query passes here: its first letter rules out nearly all of them (issue 31).
    if !matches!(stmt.first(), Some(b'l' | b'L' | b'u' | b'U' | b'd' | b'D')) {
        return None;
    }
    let (first, rest) = word(stmt)?;
    if is(first, "listen") {
        return Some(Command::Listen);
    }
    if is(first, "unlisten") {
        return Some(Command::Unlisten { all: word(rest).is_some_and(|(w, _)| w == b"*") });
    }
    if is(first, "discard") {
        return word(rest).filter(|(w, _)| is(w, "all")).map(|_| Command::DiscardAll);
    }
    if is(first, "deallocate") {
        let (mut name, mut after) = word(rest)?;
        if is(name, "prepare") {
            (name, after) = word(after)?;
        }
        let _ = after;
        return Some(Command::Deallocate((!is(name, "all")).then(|| identifier(name))));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transaction_openers() {
        for yes in ["BEGIN", "begin isolation level serializable;", "/* x */ START TRANSACTION READ ONLY"] {
            assert!(opens_transaction_only(yes.as_bytes()), "{yes}");
        }
        for no in ["BEGIN; select 1", "select 1", "", "COMMIT"] {
            assert!(!opens_transaction_only(no.as_bytes()), "{no}");
        }
    }

    #[test]
    fn a_set_of_a_traceparent_is_the_trace() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        for sql in [
            format!("SET application_name = '{tp}'"),
            format!("set session application_name to 'checkout {tp}';"),
            format!("/* otel */ SET LOCAL application_name='{tp}'  "),
        ] {
            assert_eq!(traced_set(sql.as_bytes()), Some((id, &b""[..])), "{sql}");
        }
        let batched = format!("SET application_name = '{tp}'; select * from images where id = 7");
        assert_eq!(traced_set(batched.as_bytes()), Some((id, &b"select * from images where id = 7"[..])));
        for not in ["SET application_name = 'checkout'", "SET search_path = 'x'", "select 1", "SET application_name"] {
            assert_eq!(traced_set(not.as_bytes()), None, "{not}");
        }
    }

    #[test]
    fn statements_split_as_split_does() {
        for text in ["", ";", "select 1", "select 1;", "a;b", ";;a;", "begin; select 1; commit ;  "] {
            let ours: Vec<&[u8]> = statements(text.as_bytes()).collect();
            let std: Vec<&[u8]> = text.as_bytes().split(|&c| c == b';').collect();
            assert_eq!(ours, std, "{text:?}");
        }
    }

    fn all(text: &str) -> Vec<Command> {
        commands(text.as_bytes()).collect()
    }

    #[test]
    fn listen_anywhere_and_not_in_other_words() {
        assert_eq!(all("  LISTEN jobs"), [Command::Listen]);
        assert_eq!(all("/* app */ listen jobs"), [Command::Listen]);
        assert_eq!(all("select 1; listen jobs"), [Command::Listen]);
        assert_eq!(all("-- worker\nLISTEN jobs"), [Command::Listen]);
        assert!(all("listener").is_empty());
        assert!(all("select 'listen here'").is_empty());
    }

    #[test]
    fn unlisten_discard_deallocate() {
        assert_eq!(all("UNLISTEN *"), [Command::Unlisten { all: true }]);
        assert_eq!(all("unlisten jobs"), [Command::Unlisten { all: false }]);
        assert_eq!(all("DISCARD ALL"), [Command::DiscardAll]);
        assert!(all("discard plans").is_empty());
        assert_eq!(all("DEALLOCATE ALL"), [Command::Deallocate(None)]);
        assert_eq!(all("deallocate prepare all"), [Command::Deallocate(None)]);
        assert_eq!(all("DEALLOCATE A1"), [Command::Deallocate(Some(b"a1".to_vec()))]);
        assert_eq!(all("DEALLOCATE PREPARE \"Q\"\"x\""), [Command::Deallocate(Some(b"Q\"x".to_vec()))]);
        assert_eq!(all("begin; deallocate s1; commit"), [Command::Deallocate(Some(b"s1".to_vec()))]);
        assert!(all("deallocate").is_empty());
    }
}
