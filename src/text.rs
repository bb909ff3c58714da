//! Text from clients and peers made safe for where it goes. Pure.
//!
//! A client chooses its `application_name`, user and database names and statement text; a pod chooses what
//! its admin API answers. None of it may move a terminal's cursor, write its clipboard (`ESC ] 52`) or forge
//! a log line: control characters are replaced at each text sink (the CLI's tables and verdicts, text logs),
//! and the names that form client keys are cleaned where they enter, as PostgreSQL cleans
//! `application_name` and cuts identifiers to 63 bytes.

pub mod traceparent;

use serde::de::DeserializeOwned;
use std::borrow::Cow;

/// PostgreSQL's NAMEDATALEN - 1: the bytes it keeps of a user, database or application name.
pub const NAME_BYTES: usize = 63;

/// A name a client sent (application_name, user, database) as it is kept in its client key: cut to
/// [`NAME_BYTES`] at a character boundary, control characters (C0, DEL, C1) replaced with `?`.
pub fn clean_name(s: &str) -> String {
    let mut end = s.len().min(NAME_BYTES);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].chars().map(|c| if c.is_control() { '?' } else { c }).collect()
}

/// `s` for a terminal: line breaks and tabs as spaces, any other control character as `?`.
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        s.chars()
            .map(|c| match c {
                '\n' | '\r' | '\t' => ' ',
                c if c.is_control() => '?',
                c => c,
            })
            .collect(),
    )
}

/// Parses JSON from a peer with every string in it (and every object key) made [`printable`]: what the CLI
/// reads from an admin API, a pod or Prometheus can reach a terminal only as text.
pub fn from_json_printable<T: DeserializeOwned>(bytes: &[u8]) -> serde_json::Result<T> {
    let mut value: serde_json::Value = serde_json::from_slice(bytes)?;
    make_printable(&mut value);
    serde_json::from_value(value)
}

fn make_printable(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::String(s) => {
            if let Cow::Owned(clean) = printable(s) {
                *s = clean;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(make_printable),
        Value::Object(map) => {
            let dirty: Vec<String> = map.keys().filter(|k| matches!(printable(k), Cow::Owned(_))).cloned().collect();
            for key in dirty {
                if let Some(value) = map.remove(&key) {
                    map.insert(printable(&key).into_owned(), value);
                }
            }
            map.values_mut().for_each(make_printable);
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// One formatted log line with the control bytes its values carried escaped (`\n`, `\r`, `\xNN`): all but a
/// tab, the line's own final newline and, when `colour`, the escape bytes of the formatter's own colours
/// (the formatter already escapes every ESC a value carries, so any left in the line are its own).
pub fn escape_log_line(line: &[u8], colour: bool) -> Cow<'_, [u8]> {
    let body = line.strip_suffix(b"\n").unwrap_or(line);
    let unsafe_byte = |b: u8| (b < 0x20 && b != b'\t' && !(colour && b == 0x1b)) || b == 0x7f;
    if !body.iter().any(|&b| unsafe_byte(b)) {
        return Cow::Borrowed(line);
    }
    let mut out = Vec::with_capacity(line.len() + 16);
    for &b in body {
        match b {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b if unsafe_byte(b) => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
            b => out.push(b),
        }
    }
    if body.len() < line.len() {
        out.push(b'\n');
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_cut_and_cleaned_as_postgresql_does() {
        assert_eq!(clean_name("web"), "web");
        assert_eq!(clean_name("a\x1b]52;c;aGk=\x07b\nc\u{9b}"), "a?]52;c;aGk=?b?c?");
        let long = "x".repeat(4096);
        assert_eq!(clean_name(&long).len(), NAME_BYTES);
        // Cut at a character boundary: 62 ASCII bytes and a two-byte character keep 62.
        let s = format!("{}é", "y".repeat(62));
        assert_eq!(clean_name(&s), "y".repeat(62));
    }

    #[test]
    fn printable_text_has_no_control_character() {
        assert!(matches!(printable("select 1"), Cow::Borrowed(_)));
        assert_eq!(
            printable("select\n  1\r\n\tfrom t -- \x1b[2J\x7f"),
            "select   1  \tfrom t -- ?[2J?".replace('\t', " ")
        );
        assert_eq!(printable("ünïcode ok"), "ünïcode ok");
    }

    #[test]
    fn json_from_a_peer_is_printable_in_values_and_keys() {
        let body = br#"{"a\u001b[2J": ["x\u001b]52;c;aGk=\u0007", {"n": 1, "s": "line\nbreak"}]}"#;
        let v: serde_json::Value = from_json_printable(body).unwrap();
        let text = v.to_string();
        assert_eq!(text, r#"{"a?[2J":["x?]52;c;aGk=?",{"n":1,"s":"line break"}]}"#);
    }

    #[test]
    fn log_lines_keep_their_newline_and_the_formatters_colours_only() {
        let line = b"2026 WARN conn{client=a\nb} forged\r\x01\n";
        assert_eq!(&*escape_log_line(line, false), &b"2026 WARN conn{client=a\\nb} forged\\r\\x01\n"[..]);
        assert!(matches!(escape_log_line(b"plain\tline\n", false), Cow::Borrowed(_)));
        assert!(matches!(escape_log_line(b"\x1b[33mWARN\x1b[0m x\n", true), Cow::Borrowed(_)));
        assert_eq!(&*escape_log_line(b"\x1b[2J\n", false), &b"\\x1b[2J\n"[..]);
    }
}
