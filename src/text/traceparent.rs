//! W3C trace context in `application_name`: OpenTelemetry's Npgsql, node and collector instrumentations
//! put the current `traceparent` (`00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`) there, alone or
//! after a service name, to link a database session to its trace. Pure.

/// Length of a version-00 traceparent.
pub const LEN: usize = 55;

/// The trace id of `s` if `s` is exactly a traceparent (version `00`–`fe`, trace and span ids not all zero).
pub fn trace_id(s: &str) -> Option<&str> {
    let b = s.as_bytes();
    if b.len() != LEN || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let hex = |r: std::ops::Range<usize>| b[r].iter().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c));
    let zeros = |r: std::ops::Range<usize>| b[r].iter().all(|&c| c == b'0');
    let ok =
        hex(0..2) && &s[0..2] != "ff" && hex(3..35) && hex(36..52) && hex(53..55) && !zeros(3..35) && !zeros(36..52);
    ok.then(|| &s[3..35])
}

/// `s` without a traceparent at its end, and the trace id: `checkout-api 00-4bf9…-00f0…-01` is
/// (`checkout-api`, the id); the separator before it (spaces, `-`, `_`, `:`, `/`, `|`, `@`) goes too. A value
/// that is only a traceparent gives an empty name.
pub fn split(s: &str) -> (&str, Option<&str>) {
    let Some(start) = s.len().checked_sub(LEN) else { return (s, None) };
    if !s.is_char_boundary(start) {
        return (s, None);
    }
    match trace_id(&s[start..]) {
        Some(id) => {
            let name = s[..start].trim_end_matches(|c: char| c.is_whitespace() || "-_:/|@".contains(c));
            (name, Some(id))
        }
        None => (s, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparents_alone_and_after_a_name() {
        assert_eq!(trace_id(TP), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(split(TP), ("", Some("4bf92f3577b34da6a3ce929d0e0e4736")));
        assert_eq!(split(&format!("checkout-api {TP}")), ("checkout-api", Some("4bf92f3577b34da6a3ce929d0e0e4736")));
        assert_eq!(split(&format!("checkout-api-{TP}")).0, "checkout-api");
        assert_eq!(split("checkout-api"), ("checkout-api", None));
        assert_eq!(split(""), ("", None));
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
        ] {
            assert_eq!(trace_id(bad), None, "{bad}");
        }
        // A multi-byte character just before where a traceparent would start is no boundary problem.
        assert_eq!(split(&format!("é{}", &TP[1..])).1, None);
    }
}
