//! Where the database is and how COMMAND is pointed at the proxy instead: the upstream from `--upstream`,
//! `PGHOST`/`PGPORT` or a `postgres://` URL, and that URL rewritten to the proxy's address with its user,
//! password, database and parameters intact. Pure: the environment comes in as a lookup function.

use crate::config::values::parse_host_port;
use crate::config::HostPort;

/// Where the upstream came from (said in guard's first line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Flag,
    PgEnv,
    Url(String),
}

/// The database guard's proxy relays to: `--upstream`, else `PGHOST`/`PGPORT` (either set), else the first
/// of `urls` that is set (`DATABASE_URL` by default).
pub fn upstream(
    flag: Option<&str>,
    urls: &[String],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(HostPort, Origin), String> {
    if let Some(flag) = flag {
        return parse_host_port(flag).map(|hp| (hp, Origin::Flag)).map_err(|m| format!("--upstream: {m}"));
    }
    let (host, port) = (env("PGHOST").filter(|v| !v.is_empty()), env("PGPORT").filter(|v| !v.is_empty()));
    if host.is_some() || port.is_some() {
        let host = first(host.as_deref().unwrap_or("localhost"));
        if is_socket_dir(host) {
            return Err(format!(
                "PGHOST={host} is a Unix socket directory; guard reaches the database over TCP: pass --upstream HOST:PORT"
            ));
        }
        let port = first(port.as_deref().unwrap_or("5432"));
        let port = port.parse::<u16>().map_err(|_| format!("PGPORT={port:?} is not a port number"))?;
        return Ok((HostPort { host: host.to_string(), port }, Origin::PgEnv));
    }
    for var in urls {
        if let Some(url) = env(var).filter(|v| !v.is_empty()) {
            let parsed = Url::parse(&url).map_err(|m| format!("{var}: {m}"))?;
            let (host, port) = parsed.upstream().map_err(|m| format!("{var}: {m}"))?;
            return Ok((HostPort { host, port }, Origin::Url(var.clone())));
        }
    }
    Err("no database to guard: pass --upstream HOST:PORT, or set PGHOST/PGPORT or DATABASE_URL".to_string())
}

/// `url` with its host and port replaced by `to` (any `host`, `hostaddr` and `port` parameters dropped, since
/// they would override it); everything else byte for byte.
pub fn rewrite(url: &str, to: &HostPort) -> Result<String, String> {
    let u = Url::parse(url)?;
    let userinfo = u.userinfo.map(|ui| format!("{ui}@")).unwrap_or_default();
    let query = u.query.map(|q| {
        q.split('&').filter(|p| !matches!(param_name(p), "host" | "hostaddr" | "port")).collect::<Vec<_>>().join("&")
    });
    let query = query.filter(|q| !q.is_empty()).map(|q| format!("?{q}")).unwrap_or_default();
    Ok(format!("{}://{userinfo}{to}{}{query}", u.scheme, u.path))
}

/// `url` with its password (in the user info or a `password` parameter) shown as `***`: what guard prints.
pub fn redact(url: &str) -> String {
    let Ok(u) = Url::parse(url) else { return "(a URL that is not a postgres:// URL)".to_string() };
    let userinfo = u.userinfo.map(|ui| match ui.split_once(':') {
        Some((user, _)) => format!("{user}:***@"),
        None => format!("{ui}@"),
    });
    let query = u.query.map(|q| {
        let params: Vec<String> = q
            .split('&')
            .map(|p| if param_name(p) == "password" { "password=***".to_string() } else { p.to_string() })
            .collect();
        format!("?{}", params.join("&"))
    });
    format!("{}://{}{}{}{}", u.scheme, userinfo.unwrap_or_default(), u.hosts, u.path, query.unwrap_or_default())
}

/// The parts of a libpq connection URI: `postgres[ql]://[userinfo@][hosts][/path][?query]`. libpq has no
/// fragment: a `#` is part of whatever it is in (a password, the database, a parameter's value).
struct Url<'a> {
    scheme: &'a str,
    userinfo: Option<&'a str>,
    hosts: &'a str,
    /// From the `/` on (the database), possibly empty.
    path: &'a str,
    query: Option<&'a str>,
}

impl<'a> Url<'a> {
    /// Never puts a piece of the URL in its error: it may be a piece of the password.
    fn parse(url: &'a str) -> Result<Url<'a>, String> {
        let (scheme, rest) = url
            .split_once("://")
            .filter(|(s, _)| matches!(*s, "postgres" | "postgresql"))
            .ok_or("not a postgres:// or postgresql:// URL")?;
        let (userinfo, rest) = split_userinfo(rest)
            .ok_or("its hosts could not be told from its user info (percent-encode `@`, `/` and `:` in a password)")?;
        let (hosts, rest) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        Ok(Url { scheme, userinfo, hosts, path, query })
    }

    /// The first host and port, where a `host`/`port` parameter overrides the authority (as in libpq).
    fn upstream(&self) -> Result<(String, u16), String> {
        let param = |name: &str| {
            self.query?.split('&').find(|p| param_name(p) == name).and_then(|p| p.split_once('=')).map(|(_, v)| v)
        };
        let entry = first(self.hosts);
        let (mut host, mut port) = match entry.strip_prefix('[') {
            Some(v6) => {
                let (h, rest) = v6.split_once(']').ok_or("an IPv6 host without its closing `]`")?;
                (h.to_string(), rest.strip_prefix(':').map(str::to_string))
            }
            None => match entry.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p.to_string())),
                None => (entry.to_string(), None),
            },
        };
        if let Some(h) = param("host").or(param("hostaddr")) {
            host = first(h).to_string();
        }
        if let Some(p) = param("port") {
            port = Some(first(p).to_string());
        }
        if host.is_empty() {
            host = "localhost".to_string();
        }
        if is_socket_dir(&host) {
            return Err(format!(
                "its host {host} is a Unix socket directory; guard reaches the database over TCP: pass --upstream HOST:PORT"
            ));
        }
        let port = match port.as_deref() {
            None | Some("") => 5432,
            Some(p) => p.parse::<u16>().map_err(|_| "its port is not a port number (1 to 65535)".to_string())?,
        };
        Ok((host, port))
    }
}

/// Where the user info ends, as libpq reads it and beyond: none when the text before the first `/` or `?` is
/// already a host list; else at the first `@` followed by a host list (then `/`, `?` or the end). libpq ends
/// the user info at the first `@` before the first `/`, so a password with `#` or `?` works there as it is;
/// one with an unencoded `@` or `/` (which libpq cannot read) is still told from the hosts here, so the URL
/// handed on keeps it byte for byte. `None`: no reading makes sense.
fn split_userinfo(rest: &str) -> Option<(Option<&str>, &str)> {
    let host_part = |s: &str| s.find(['/', '?']).map_or(s.len(), |i| i);
    if is_host_list(&rest[..host_part(rest)]) {
        return Some((None, rest));
    }
    rest.match_indices('@').map(|(i, _)| i).find_map(|i| {
        let after = &rest[i + 1..];
        is_host_list(&after[..host_part(after)]).then_some((Some(&rest[..i]), after))
    })
}

/// `host[:port]` entries separated by commas, each possibly empty (libpq's default), a host a name, an IPv4
/// address, a percent-encoded socket path or a bracketed IPv6 address, a port digits.
fn is_host_list(s: &str) -> bool {
    let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    s.split(',').all(|entry| match entry.strip_prefix('[') {
        Some(v6) => v6.split_once(']').is_some_and(|(addr, rest)| {
            addr.bytes().all(|b| b.is_ascii_hexdigit() || b":.%".contains(&b))
                && (rest.is_empty() || rest.strip_prefix(':').is_some_and(digits))
        }),
        None => {
            let (host, port) = entry.rsplit_once(':').unwrap_or((entry, ""));
            host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._%~".contains(&b)) && digits(port)
        }
    })
}

fn param_name(p: &str) -> &str {
    p.split_once('=').map_or(p, |(name, _)| name)
}

/// The first of a comma-separated list (libpq's multi-host form): guard relays to one database.
fn first(list: &str) -> &str {
    list.split(',').next().unwrap_or(list)
}

/// libpq takes a host starting with `/` (or `@`, an abstract socket) as a Unix socket directory; so is its
/// percent-encoded form in a URL.
fn is_socket_dir(host: &str) -> bool {
    host.starts_with('/') || host.starts_with('@') || host.to_ascii_lowercase().starts_with("%2f")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    fn proxy() -> HostPort {
        HostPort { host: "127.0.0.1".into(), port: 40123 }
    }

    #[test]
    fn the_upstream_comes_from_the_flag_then_the_pg_variables_then_the_url() {
        let urls = vec!["DATABASE_URL".to_string()];
        let all = env(&[("PGHOST", "db.internal"), ("PGPORT", "6543"), ("DATABASE_URL", "postgres://u@url:1/app")]);
        let (hp, origin) = upstream(Some("flag:7"), &urls, &all).unwrap();
        assert_eq!((hp.to_string(), origin), ("flag:7".into(), Origin::Flag));
        let (hp, origin) = upstream(None, &urls, &all).unwrap();
        assert_eq!((hp.to_string(), origin), ("db.internal:6543".into(), Origin::PgEnv));
        let (hp, _) = upstream(None, &urls, &env(&[("PGPORT", "6000")])).unwrap();
        assert_eq!(hp.to_string(), "localhost:6000", "PGPORT alone: libpq's default host");
        let (hp, origin) = upstream(None, &urls, &env(&[("DATABASE_URL", "postgres://u@url:1/app")])).unwrap();
        assert_eq!((hp.to_string(), origin), ("url:1".into(), Origin::Url("DATABASE_URL".into())));
        assert!(upstream(None, &urls, &env(&[])).unwrap_err().contains("--upstream"));
        assert!(upstream(Some("nope"), &urls, &env(&[])).unwrap_err().starts_with("--upstream"));
        assert!(upstream(None, &urls, &env(&[("PGHOST", "/var/run/postgresql")])).unwrap_err().contains("Unix socket"));
        assert!(upstream(None, &urls, &env(&[("PGPORT", "x")])).is_err());
    }

    #[test]
    fn url_hosts_in_every_form_libpq_accepts() {
        let cases = [
            ("postgres://u:p@db:5433/app", "db:5433"),
            ("postgresql://db/app", "db:5432"),
            ("postgres://u@[::1]:6000/app", "[::1]:6000"),
            ("postgres://u@[::1]/app", "[::1]:5432"),
            ("postgres://u@a:1,b:2/app", "a:1"),
            ("postgres:///app?host=h&port=9", "h:9"),
            ("postgres://u:p%40ss@db:5433", "db:5433"),
            ("postgres://us@r:p@ss@db:7/app", "db:7"),
        ];
        for (url, want) in cases {
            let (host, port) = Url::parse(url).unwrap().upstream().unwrap();
            assert_eq!(HostPort { host, port }.to_string(), want, "{url}");
        }
        assert!(Url::parse("mysql://db/app").is_err());
        assert!(Url::parse("postgres:///app?host=/tmp").unwrap().upstream().unwrap_err().contains("socket"));
        assert!(Url::parse("postgres://%2Ftmp/app").unwrap().upstream().is_err());
        let err = Url::parse("postgres://db:notaport/app").err().unwrap();
        assert!(!err.contains("notaport"), "{err}");
    }

    /// libpq reads `#` and `?` in a password as they are (its user info ends at the first `@`); an unencoded
    /// `/` or `@` it cannot read is still told from the hosts, and a `@` in a parameter is not user info.
    #[test]
    fn passwords_with_url_delimiters_stay_whole_and_unshown() {
        for pw in ["Xy#9k?zz", "Xy/9k", "Xy@9k", "a:b#c/d?e@f"] {
            let url = format!("postgresql://pw:{pw}@db.internal:6000/app?sslmode=disable");
            let (host, port) = Url::parse(&url).unwrap().upstream().unwrap();
            assert_eq!(HostPort { host, port }.to_string(), "db.internal:6000", "{pw}");
            let rewritten = rewrite(&url, &proxy()).unwrap();
            assert_eq!(rewritten, format!("postgresql://pw:{pw}@127.0.0.1:40123/app?sslmode=disable"));
            let shown = redact(&rewritten);
            assert_eq!(shown, "postgresql://pw:***@127.0.0.1:40123/app?sslmode=disable", "{pw}");
        }
        let (host, port) = Url::parse("postgres://u:p@db:7/app?user=a@b").unwrap().upstream().unwrap();
        assert_eq!((host.as_str(), port), ("db", 7));
        let (host, _) = Url::parse("postgres://db/app?options=x@y").unwrap().upstream().unwrap();
        assert_eq!(host, "db");
    }

    #[test]
    fn a_rewritten_url_keeps_user_password_database_and_parameters() {
        let url = "postgres://u:p@db:5432/app?sslmode=disable&application_name=tests";
        assert_eq!(
            rewrite(url, &proxy()).unwrap(),
            "postgres://u:p@127.0.0.1:40123/app?sslmode=disable&application_name=tests"
        );
        assert_eq!(rewrite("postgresql://db", &proxy()).unwrap(), "postgresql://127.0.0.1:40123");
        assert_eq!(
            rewrite("postgres://u@a:1,b:2/app?host=x&port=3&hostaddr=1.2.3.4&connect_timeout=5#f", &proxy()).unwrap(),
            "postgres://u@127.0.0.1:40123/app?connect_timeout=5#f",
            "host, hostaddr and port parameters would win over the authority"
        );
        assert_eq!(rewrite("postgres://u@db/app?port=1", &proxy()).unwrap(), "postgres://u@127.0.0.1:40123/app");
        let v6 = HostPort { host: "::1".into(), port: 5 };
        assert_eq!(rewrite("postgres://db/app", &v6).unwrap(), "postgres://[::1]:5/app");
        assert!(rewrite("not a url", &proxy()).is_err());
    }

    #[test]
    fn redaction_hides_every_password() {
        let shown = redact("postgres://u:s3cret@db:5432/app?sslmode=disable&password=s3cret2");
        assert_eq!(shown, "postgres://u:***@db:5432/app?sslmode=disable&password=***");
        assert!(!shown.contains("s3cret"));
        assert_eq!(redact("postgres://u@db/app"), "postgres://u@db/app");
        assert_eq!(redact("host=db password=x"), "(a URL that is not a postgres:// URL)");
    }
}
