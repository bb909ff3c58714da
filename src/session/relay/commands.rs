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

/// The commands of interest in `text`, in order.
pub fn commands(text: &[u8]) -> impl Iterator<Item = Command> + '_ {
    text.split(|&c| c == b';').filter_map(|stmt| command(skip_comments(stmt)))
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
    let end = t.iter().position(|&c| !(c.is_ascii_alphanumeric() || c == b'_' || c == b'*' || c >= 0x80));
    let end = end.unwrap_or(t.len());
    (end > 0).then(|| (&t[..end], &t[end..]))
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
