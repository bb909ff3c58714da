//! The value types of the config file: durations, counts, addresses; parsed from the strings users write.

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::time::Duration;

/// A duration that may be `off`. `None` is off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Timeout(pub Option<Duration>);

/// A count where `0` or `off` means unlimited. `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limit(pub Option<u32>);

/// A file mode such as `0777`, written as for chmod (the digits are octal, quoted or not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMode(pub u32);

pub fn parse_file_mode(s: &str) -> Result<FileMode, String> {
    let bad = || format!("invalid file mode {s:?} (expected an octal mode such as \"0770\" or \"0777\")");
    let digits = s.trim();
    if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(bad());
    }
    u32::from_str_radix(digits, 8).map(FileMode).map_err(|_| bad())
}

impl fmt::Display for FileMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

impl<'de> Deserialize<'de> for FileMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Scalar::deserialize(d).map_err(|_| de::Error::custom("expected an octal file mode such as \"0777\""))? {
            // An unquoted 0777 arrives as the number 777: its digits are the mode, as for chmod.
            Scalar::Int(n) => parse_file_mode(&n.to_string()).map_err(de::Error::custom),
            Scalar::Str(s) => parse_file_mode(&s).map_err(de::Error::custom),
            Scalar::Bool(_) => Err(de::Error::custom("expected an octal file mode such as \"0777\"")),
        }
    }
}

impl Serialize for FileMode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `host:port`, with `[v6]:port` for IPv6 literals. The host is resolved when used, never cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

/// The longest duration a config accepts: a year (`off` is the way to say "never").
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

pub fn parse_duration(s: &str) -> Result<Timeout, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("off") {
        return Ok(Timeout(None));
    }
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let bad = || format!("invalid duration {s:?} (expected e.g. 500ms, 30s, 5m, 1h, off, or whole seconds)");
    let n: u64 = num.parse().map_err(|_| bad())?;
    let d = match unit.trim() {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(bad)?),
        "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(bad)?),
        _ => return Err(bad()),
    };
    if d > MAX_DURATION {
        return Err(format!("duration {s:?} is longer than a year (8760h); write `off` for no limit"));
    }
    Ok(Timeout(Some(d)))
}

pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(3_600_000) && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

pub fn parse_limit(s: &str) -> Result<Limit, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("off") {
        return Ok(Limit(None));
    }
    match s.parse::<u32>() {
        Ok(0) => Ok(Limit(None)),
        Ok(n) => Ok(Limit(Some(n))),
        Err(_) => Err(format!("invalid count {s:?} (expected a whole number; 0 or off means unlimited)")),
    }
}

pub fn parse_host_port(s: &str) -> Result<HostPort, String> {
    let bad = || format!("invalid address {s:?} (expected host:port, e.g. 127.0.0.1:5432 or [::1]:5432)");
    let (host, port) = s.trim().rsplit_once(':').ok_or_else(bad)?;
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.strip_suffix(']').ok_or_else(bad)?,
        None if host.contains(':') => return Err(bad()),
        None => host,
    };
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(bad());
    }
    let port = port.parse::<u16>().map_err(|_| bad())?;
    Ok(HostPort { host: host.to_string(), port })
}

pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err(format!("invalid boolean {s:?} (expected true or false)")),
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for Timeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("off"),
            Some(d) => f.write_str(&format_duration(d)),
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("off"),
            Some(n) => write!(f, "{n}"),
        }
    }
}

/// YAML scalars arrive as strings, integers or booleans (YAML 1.1 reads a bare `off` as false).
#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    Int(i64),
    Bool(bool),
    Str(String),
}

impl Scalar {
    fn text(self) -> String {
        match self {
            Scalar::Int(n) => n.to_string(),
            Scalar::Bool(false) => "off".into(),
            Scalar::Bool(true) => "on".into(),
            Scalar::Str(s) => s,
        }
    }
}

macro_rules! scalar_serde {
    ($ty:ty, $parse:path) => {
        scalar_serde!($ty, $parse, |_: &$ty| None::<u32>);
    };
    ($ty:ty, $parse:path, $as_int:expr) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = Scalar::deserialize(d).map_err(|_| de::Error::custom("expected a scalar value"))?;
                $parse(&raw.text()).map_err(de::Error::custom)
            }
        }
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                match ($as_int)(self) {
                    Some(n) => s.serialize_u32(n),
                    None => s.collect_str(self),
                }
            }
        }
    };
}

scalar_serde!(Timeout, parse_duration);
scalar_serde!(Limit, parse_limit, |l: &Limit| l.0);
scalar_serde!(HostPort, parse_host_port);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ok = |s: &str, d: Option<Duration>| assert_eq!(parse_duration(s), Ok(Timeout(d)), "{s}");
        ok("500ms", Some(Duration::from_millis(500)));
        ok("30s", Some(Duration::from_secs(30)));
        ok("5m", Some(Duration::from_secs(300)));
        ok("1h", Some(Duration::from_secs(3600)));
        ok("15", Some(Duration::from_secs(15)));
        ok("0", Some(Duration::ZERO));
        ok("off", None);
        ok("OFF", None);
        ok("8760h", Some(MAX_DURATION));
        for bad in
            ["", "5x", "-1s", "1.5s", "s", "ms", "5 mins", "99999999999999999999h", "8761h", "9223372036854775807"]
        {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_round_trip_through_display() {
        for s in ["500ms", "30s", "5m", "1h", "0s", "90s", "1500ms"] {
            assert_eq!(parse_duration(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn limits() {
        assert_eq!(parse_limit("10"), Ok(Limit(Some(10))));
        assert_eq!(parse_limit("0"), Ok(Limit(None)));
        assert_eq!(parse_limit("off"), Ok(Limit(None)));
        for bad in ["lots", "-1", "1.5", "", "4294967296"] {
            assert!(parse_limit(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn host_ports() {
        assert_eq!(parse_host_port("db.svc:5432"), Ok(HostPort { host: "db.svc".into(), port: 5432 }));
        assert_eq!(parse_host_port("[::1]:6432").unwrap().host, "::1");
        assert_eq!(parse_host_port("[::1]:6432").unwrap().to_string(), "[::1]:6432");
        for bad in ["db", ":5432", "db:", "db:99999", "::1:5432", "[::1:5432", "a b:1"] {
            assert!(parse_host_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn file_modes_as_for_chmod() {
        for (yaml, mode) in [("0777", 0o777), ("\"0770\"", 0o770), ("660", 0o660), ("'0700'", 0o700)] {
            assert_eq!(serde_norway::from_str::<FileMode>(yaml).unwrap(), FileMode(mode), "{yaml}");
        }
        for bad in ["0778", "\"rwx\"", "99999", "true"] {
            assert!(serde_norway::from_str::<FileMode>(bad).is_err(), "{bad}");
        }
        assert_eq!(FileMode(0o770).to_string(), "0770");
    }

    #[test]
    fn yaml_scalars() {
        let t: Timeout = serde_norway::from_str("off").unwrap();
        assert_eq!(t, Timeout(None));
        let t: Timeout = serde_norway::from_str("30").unwrap();
        assert_eq!(t, Timeout(Some(Duration::from_secs(30))));
        let l: Limit = serde_norway::from_str("false").unwrap();
        assert_eq!(l, Limit(None));
        assert!(serde_norway::from_str::<Limit>("[1]").is_err());
    }
}
