//! Query tags: the code location applications put in a comment of each statement, read before redaction.
//!
//! - sqlcommenter (Django, Flask, Rails 7.1+ `query_log_tags_format = :sqlcommenter`, Spring/Hibernate,
//!   Prisma, Knex, Sequelize, OpenTelemetry): `/*action='resize',route='%2Fupload',traceparent='00-…'*/`,
//!   values percent-encoded, `\'` escaped;
//! - Rails' and marginalia's own format: `/*application:Shop,controller:uploads,action:resize*/`.
//!
//! Only comments outside literals count ([`super::comments`], which fails closed as redaction does), only
//! keys of the allowlist ([`KEYS`] and the config's extras), values cut to [`MAX_VALUE`] bytes with control
//! characters escaped (`\x07`), so a tag can carry no literal of the SQL and no terminal escape. Pure.

use std::fmt::Write as _;

/// The keys read unless the config adds others (`stats.query_tag_keys`).
pub const KEYS: [&str; 8] =
    ["route", "controller", "action", "job", "framework", "application", "db_driver", "traceparent"];
/// Bytes of a value kept.
pub const MAX_VALUE: usize = 128;
/// Tags kept per statement.
pub const MAX_TAGS: usize = 16;

/// The tags of one statement, in the order written (a key once: its first value).
pub type Tags = Vec<(String, String)>;

/// The allowlisted tags in the comments of `sql`.
pub fn extract(sql: &str, extra_keys: &[String]) -> Tags {
    let mut tags = Tags::new();
    if !sql.contains("/*") {
        return tags;
    }
    for comment in super::comments(sql) {
        for item in split_items(comment.trim()) {
            // `key='value'` (sqlcommenter) or `key:value` (Rails, marginalia): whichever comes first.
            let Some(at) = item.find(['=', ':']) else { continue };
            let (key, value) = (&item[..at], &item[at + 1..]);
            let key = percent_decode(key.trim());
            let allowed = KEYS.contains(&key.as_str()) || extra_keys.iter().any(|k| k == &key);
            if !allowed || tags.iter().any(|(k, _)| k == &key) || tags.len() >= MAX_TAGS {
                continue;
            }
            let value = value.trim();
            let value = match value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
                Some(quoted) => percent_decode(&quoted.replace("\\'", "'")),
                None => value.to_string(),
            };
            tags.push((key, escape(&value)));
        }
    }
    tags
}

/// `k=v k=v` of `tags` (for a log line or a summary).
pub fn line(tags: &Tags) -> String {
    let mut out = String::new();
    for (k, v) in tags {
        if !out.is_empty() {
            out.push(' ');
        }
        let _ = write!(out, "{k}={v}");
    }
    out
}

/// The items of a comment: split at commas outside single quotes (a quoted value may hold `\'`).
fn split_items(c: &str) -> Vec<&str> {
    let b = c.as_bytes();
    let (mut items, mut start, mut quoted, mut i) = (Vec::new(), 0, false, 0);
    while i < b.len() {
        match b[i] {
            b'\\' if quoted => i += 1,
            b'\'' => quoted = !quoted,
            b',' if !quoted => {
                items.push(&c[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    items.push(&c[start..]);
    items
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |j: usize| b.get(j).and_then(|c| (*c as char).to_digit(16));
        match (b[i], hex(i + 1), hex(i + 2)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Cut to [`MAX_VALUE`] bytes at a character boundary, control characters as `\xNN`.
fn escape(v: &str) -> String {
    let mut end = v.len().min(MAX_VALUE);
    while !v.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = String::with_capacity(end);
    for ch in v[..end].chars() {
        if ch.is_control() {
            let _ = write!(out, "\\x{:02x}", ch as u32);
        } else {
            out.push(ch);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(sql: &str) -> Vec<(&'static str, String)> {
        extract(sql, &[])
            .into_iter()
            .map(|(k, v)| (KEYS.iter().find(|x| **x == k).copied().unwrap_or("extra"), v))
            .collect()
    }

    #[test]
    fn sqlcommenter_and_rails_formats() {
        let sql = "SELECT * FROM images WHERE id = 42 /*action='resize',controller='uploads',framework='django%3A4.2',route='%2Fupload%2F%3Cid%3E',traceparent='00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01',secret='x'*/";
        assert_eq!(
            tags(sql),
            vec![
                ("action", "resize".to_string()),
                ("controller", "uploads".to_string()),
                ("framework", "django:4.2".to_string()),
                ("route", "/upload/<id>".to_string()),
                ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_string()),
            ]
        );
        let rails = "/*application:Shop,controller:uploads,action:resize*/ UPDATE images SET done = true WHERE id = 7";
        assert_eq!(
            tags(rails),
            vec![
                ("application", "Shop".to_string()),
                ("controller", "uploads".to_string()),
                ("action", "resize".to_string())
            ]
        );
        assert_eq!(line(&extract(rails, &[])), "application=Shop controller=uploads action=resize");
        let extra = extract("select 1 /*tenant='acme',route='%2F'*/", &["tenant".to_string()]);
        assert_eq!(extra, vec![("tenant".into(), "acme".into()), ("route".into(), "/".into())]);
    }

    #[test]
    fn literals_never_become_tags_and_values_are_escaped() {
        // A comment-shaped literal is a literal.
        assert!(extract("select '/*controller=''secret''*/' as x", &[]).is_empty());
        assert!(extract("select $$ /*action:leak*/ $$", &[]).is_empty());
        // After a string the two backslash readings disagree on, nothing is read (fails closed).
        assert!(extract(r"select 'a\' /*action:leak*/ '", &[]).is_empty());
        let v = extract("select 1 /*action='res%07ize%1B%5B2J',route='a\\'b'*/", &[]);
        assert_eq!(v, vec![("action".into(), "res\\x07ize\\x1b[2J".into()), ("route".into(), "a'b".into())]);
        let long = format!("select 1 /*route='{}'*/", "é".repeat(100));
        assert!(extract(&long, &[])[0].1.len() <= MAX_VALUE);
        assert!(extract("select 1 -- controller:uploads", &[]).is_empty(), "line comments are not read");
    }
}
