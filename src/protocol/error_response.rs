//! ErrorResponse: encoding the errors pgwarden sends and reading the ones the server sends.

/// Encodes a FATAL ErrorResponse (`S`, `V`, `C`, `M` fields) as PostgreSQL would send it.
pub fn fatal(sqlstate: &str, message: &str) -> Vec<u8> {
    encode("FATAL", sqlstate, message)
}

pub fn encode(severity: &str, sqlstate: &str, message: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(32 + message.len());
    for (field, value) in [(b'S', severity), (b'V', severity), (b'C', sqlstate), (b'M', message)] {
        body.push(field);
        // A NUL inside a value would end the field early; PostgreSQL never sends one.
        body.extend(value.bytes().filter(|&b| b != 0));
        body.push(0);
    }
    body.push(0);
    let mut out = Vec::with_capacity(5 + body.len());
    out.push(b'E');
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// An error in the format before protocol 3.0 (`E`, the text, NUL), what PostgreSQL sends a 1.x or 2.x
/// client it refuses.
pub fn old_style_fatal(message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 10);
    out.push(b'E');
    out.extend_from_slice(b"FATAL:  ");
    out.extend(message.bytes().filter(|&b| b != 0));
    out.extend_from_slice(b"\n\0");
    out
}

/// The fields of an ErrorResponse body that pgwarden looks at.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ErrorFields<'a> {
    pub severity: Option<&'a [u8]>,
    pub code: Option<&'a [u8]>,
    pub message: Option<&'a [u8]>,
}

impl ErrorFields<'_> {
    /// FATAL or PANIC: the server closes the session after sending it.
    pub fn is_fatal(&self) -> bool {
        matches!(self.severity, Some(b"FATAL") | Some(b"PANIC"))
    }
}

/// Reads the fields of an ErrorResponse body (without tag and length). A truncated body yields what it holds.
pub fn parse(body: &[u8]) -> ErrorFields<'_> {
    let mut fields = ErrorFields::default();
    let mut rest = body;
    while let Some((&field, tail)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        let value = &tail[..end];
        match field {
            // `V` (non-localized, 9.6+) wins over the localized `S`.
            b'V' => fields.severity = Some(value),
            b'S' if fields.severity.is_none() => fields.severity = Some(value),
            b'C' => fields.code = Some(value),
            b'M' => fields.message = Some(value),
            _ => {}
        }
        rest = tail.get(end + 1..).unwrap_or(&[]);
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_and_parses_back() {
        let bytes = fatal("53300", "too many connections for client \"api/alice\"");
        assert_eq!(bytes[0], b'E');
        let len = i32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
        assert_eq!(len + 1, bytes.len());
        let fields = parse(&bytes[5..]);
        assert!(fields.is_fatal());
        assert_eq!(fields.code, Some(&b"53300"[..]));
        assert_eq!(fields.message, Some(&b"too many connections for client \"api/alice\""[..]));
    }

    #[test]
    fn nul_in_message_is_dropped() {
        let bytes = fatal("08P01", "a\0b");
        assert_eq!(parse(&bytes[5..]).message, Some(&b"ab"[..]));
    }

    #[test]
    fn parses_truncated_and_non_fatal() {
        let bytes = encode("ERROR", "42P01", "relation does not exist");
        let fields = parse(&bytes[5..]);
        assert!(!fields.is_fatal());
        for cut in 0..bytes.len() - 5 {
            let _ = parse(&bytes[5..5 + cut]);
        }
        assert_eq!(parse(b"SFATAL"), ErrorFields { severity: Some(b"FATAL"), ..Default::default() });
    }
}
