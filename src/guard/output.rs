//! guard's reports: the table on stderr, the `--json` document and the `--junit` XML (each finding a test
//! case: failing when its kind is in `--fail-on`, skipped otherwise; one passing case when nothing was
//! found, so a CI UI shows that the gate ran). Pure.

use super::findings::{Finding, Kind};
use serde::Serialize;
use std::fmt::Write;

/// How the run ended, for every report.
pub struct Outcome<'a> {
    pub findings: &'a [Finding],
    pub fail_on: &'a [Kind],
    /// COMMAND's exit code (`128 + N` when signal N ended it).
    pub command_status: i32,
    pub duration_seconds: f64,
    /// What guard exits with.
    pub exit_code: i32,
}

impl Outcome<'_> {
    fn fails(&self, f: &Finding) -> bool {
        self.fail_on.contains(&f.kind)
    }
}

/// One line per finding, worst kinds first within the order found.
pub fn text(o: &Outcome) -> String {
    let mut out = String::new();
    if o.findings.is_empty() {
        let _ = writeln!(
            out,
            "pgwarden guard: no connection leaks found ({:.1} s, command exited {})",
            o.duration_seconds, o.command_status
        );
        return out;
    }
    let failing = o.findings.iter().filter(|f| o.fails(f)).count();
    let _ = writeln!(
        out,
        "pgwarden guard: {} finding{} ({failing} failing) in {:.1} s, command exited {}",
        o.findings.len(),
        if o.findings.len() == 1 { "" } else { "s" },
        o.duration_seconds,
        o.command_status
    );
    let _ = writeln!(
        out,
        "  {:<24} {:<20} {:>8} {:<21} {:>7} {:>7} {:>8}  LAST STATEMENT",
        "KIND", "CLIENT", "PID", "STATE", "IDLE", "AGE", "FLAGGED"
    );
    for f in o.findings {
        let (pid, state, idle, age, statement) = match &f.connection {
            Some(c) => (
                pid(c),
                match &c.closed_reason {
                    Some(why) => format!("closed: {why}"),
                    None => c.state.clone(),
                },
                format!("{:.0}s", c.state_seconds),
                format!("{:.0}s", c.age_seconds),
                c.last_statement.as_deref().unwrap_or("-").replace(['\n', '\r'], " "),
            ),
            None => ("-".into(), format!("{} refused", f.refused.unwrap_or(0)), "-".into(), "-".into(), "-".into()),
        };
        let _ = writeln!(
            out,
            "  {:<24} {:<20} {pid:>8} {state:<21} {idle:>7} {age:>7} {:>7.1}s  {statement}{}",
            f.kind.as_str(),
            f.client,
            f.flagged_at_seconds,
            if o.fails(f) { "" } else { "  (not in --fail-on)" }
        );
    }
    out
}

#[derive(Serialize)]
struct Json<'a> {
    exit_code: i32,
    command_status: i32,
    duration_seconds: f64,
    fail_on: Vec<&'static str>,
    findings: Vec<JsonFinding<'a>>,
}

#[derive(Serialize)]
struct JsonFinding<'a> {
    #[serde(flatten)]
    finding: &'a Finding,
    failing: bool,
}

pub fn json(o: &Outcome) -> String {
    let doc = Json {
        exit_code: o.exit_code,
        command_status: o.command_status,
        duration_seconds: o.duration_seconds,
        fail_on: o.fail_on.iter().map(|k| k.as_str()).collect(),
        findings: o.findings.iter().map(|f| JsonFinding { finding: f, failing: o.fails(f) }).collect(),
    };
    serde_json::to_string_pretty(&doc).expect("plain data") + "\n"
}

pub fn junit(o: &Outcome) -> String {
    let failures = o.findings.iter().filter(|f| o.fails(f)).count();
    let skipped = o.findings.len() - failures;
    let tests = o.findings.len().max(1);
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites name=\"pgwarden guard\" tests=\"{tests}\" failures=\"{failures}\" skipped=\"{skipped}\" time=\"{:.3}\">",
        o.duration_seconds
    );
    let _ = writeln!(
        out,
        "  <testsuite name=\"pgwarden guard\" tests=\"{tests}\" failures=\"{failures}\" skipped=\"{skipped}\" errors=\"0\" time=\"{:.3}\">",
        o.duration_seconds
    );
    if o.findings.is_empty() {
        out.push_str("    <testcase classname=\"pgwarden.guard\" name=\"no connection leaks\" time=\"0\"/>\n");
    }
    for f in o.findings {
        let name = match &f.connection {
            Some(c) => format!("{} {} (backend pid {})", f.kind.as_str(), f.client, pid(c)),
            None => format!("{} {}", f.kind.as_str(), f.client),
        };
        let message = summary(f);
        let _ = writeln!(
            out,
            "    <testcase classname=\"pgwarden.guard.{}\" name=\"{}\" time=\"0\">",
            f.kind.as_str(),
            xml(&name)
        );
        if o.fails(f) {
            let _ = writeln!(
                out,
                "      <failure type=\"{}\" message=\"{}\">{}</failure>",
                f.kind.as_str(),
                xml(&message),
                xml(&details(f))
            );
        } else {
            let _ = writeln!(out, "      <skipped message=\"not in --fail-on: {}\"/>", xml(&message));
        }
        out.push_str("    </testcase>\n");
    }
    out.push_str("  </testsuite>\n</testsuites>\n");
    out
}

/// The backend pid, `-` when unknown.
fn pid(c: &super::findings::Evidence) -> String {
    c.backend_pid.map_or("-".to_string(), |p| p.to_string())
}

/// One line: what was found.
fn summary(f: &Finding) -> String {
    match (&f.connection, f.kind) {
        (None, _) => format!("client {} had {} connection(s) refused at a cap", f.client, f.refused.unwrap_or(0)),
        (Some(c), Kind::OpenAtExit) => {
            format!(
                "client {}: a connection {} for {:.0}s was still open when the command exited",
                f.client, c.state, c.state_seconds
            )
        }
        (Some(c), kind) => format!("client {}: {} for {:.0}s ({})", f.client, c.state, c.state_seconds, kind.as_str()),
    }
}

/// The evidence, several lines.
fn details(f: &Finding) -> String {
    let mut out = format!("{}\nflagged {:.1} s after the start\n", summary(f), f.flagged_at_seconds);
    if let Some(c) = &f.connection {
        let _ = writeln!(out, "backend pid: {}", pid(c));
        let _ = writeln!(out, "peer: {}", c.peer);
        let _ = writeln!(out, "connection age: {:.1} s", c.age_seconds);
        if let Some(why) = &c.closed_reason {
            let _ = writeln!(out, "closed by pgwarden: {why}");
        }
        let _ = writeln!(out, "last statement: {}", c.last_statement.as_deref().unwrap_or("-"));
        if let Some(code) = &c.code {
            let _ = writeln!(out, "code: {code}");
        }
        if let Some(trace) = &c.trace_id {
            let _ = writeln!(out, "trace id: {trace}");
        }
    }
    out
}

/// Text for XML content and attribute values: the five entities escaped; characters XML 1.0 forbids
/// (control characters other than tab, newline and carriage return) replaced.
fn xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(ch),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::findings::Evidence;

    fn findings() -> Vec<Finding> {
        vec![
            Finding {
                kind: Kind::IdleInTransaction,
                client: "app<1>".into(),
                flagged_at_seconds: 2.5,
                connection: Some(Evidence {
                    backend_pid: Some(4242),
                    peer: "127.0.0.1:5000".into(),
                    state: "idle in transaction".into(),
                    age_seconds: 9.0,
                    state_seconds: 7.0,
                    last_statement: Some("UPDATE t SET a = $1 WHERE \"id\" = $2 & 'x'\u{1}".into()),
                    trace_id: None,
                    code: None,
                    closed_reason: None,
                }),
                refused: None,
            },
            Finding {
                kind: Kind::RefusedAtCap,
                client: "worker".into(),
                flagged_at_seconds: 3.0,
                connection: None,
                refused: Some(2),
            },
        ]
    }

    fn outcome<'a>(f: &'a [Finding], fail_on: &'a [Kind]) -> Outcome<'a> {
        Outcome { findings: f, fail_on, command_status: 0, duration_seconds: 12.3, exit_code: 3 }
    }

    #[test]
    fn the_text_report_has_a_line_per_finding_with_its_statement() {
        let f = findings();
        let t = text(&outcome(&f, &[Kind::IdleInTransaction]));
        assert!(t.starts_with("pgwarden guard: 2 findings (1 failing) in 12.3 s"), "{t}");
        let line = t.lines().find(|l| l.contains("idle_in_transaction")).unwrap();
        assert!(line.contains("4242") && line.contains("UPDATE t SET a = $1") && line.contains("2.5s"), "{line}");
        assert!(t
            .lines()
            .any(|l| l.contains("refused_at_cap") && l.contains("2 refused") && l.contains("not in --fail-on")));
        assert!(text(&outcome(&[], &Kind::ALL)).contains("no connection leaks found"));
    }

    #[test]
    fn junit_is_well_formed_with_a_case_per_finding() {
        let f = findings();
        let x = junit(&outcome(&f, &[Kind::IdleInTransaction]));
        assert!(x.contains("tests=\"2\" failures=\"1\" skipped=\"1\""), "{x}");
        assert!(x.contains("name=\"idle_in_transaction app&lt;1&gt; (backend pid 4242)\""), "{x}");
        assert!(x.contains("&quot;id&quot; = $2 &amp; &apos;x&apos;\u{fffd}"), "{x}");
        assert!(
            x.contains("<skipped message=\"not in --fail-on: client worker had 2 connection(s) refused at a cap\"/>")
        );
        // Every element opened is closed, in order.
        let mut stack = Vec::new();
        for tag in x.split('<').skip(2) {
            let tag = tag.split('>').next().unwrap();
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(stack.pop(), Some(name.to_string()), "{x}");
            } else if !tag.ends_with('/') {
                stack.push(tag.split_whitespace().next().unwrap().to_string());
            }
        }
        assert!(stack.is_empty(), "{stack:?}");
        let empty = junit(&outcome(&[], &Kind::ALL));
        assert!(empty.contains("tests=\"1\" failures=\"0\"") && empty.contains("no connection leaks"));
    }

    #[test]
    fn json_has_the_same_findings() {
        let f = findings();
        let v: serde_json::Value = serde_json::from_str(&json(&outcome(&f, &[Kind::IdleInTransaction]))).unwrap();
        assert_eq!(v["exit_code"], 3);
        assert_eq!(v["findings"][0]["kind"], "idle_in_transaction");
        assert_eq!(v["findings"][0]["failing"], true);
        assert_eq!(v["findings"][0]["connection"]["backend_pid"], 4242);
        assert_eq!(v["findings"][1]["refused"], 2);
        assert_eq!(v["findings"][1]["failing"], false);
        assert_eq!(v["fail_on"], serde_json::json!(["idle_in_transaction"]));
    }
}
