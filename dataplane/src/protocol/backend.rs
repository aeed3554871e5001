//! Messages Sluice writes itself (to clients as a server, to targets as a
//! client). These run once per connection or per error, never per row.

/// Start a tagged message; returns the offset to patch the length at.
fn begin(out: &mut Vec<u8>, tag: u8) -> usize {
    out.push(tag);
    let at = out.len();
    out.extend_from_slice(&[0, 0, 0, 0]);
    at
}

fn finish(out: &mut [u8], at: usize) {
    let len = (out.len() - at) as u32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_cstr(out: &mut Vec<u8>, s: &[u8]) {
    // A NUL inside would end the field early; drop it rather than corrupt the frame.
    out.extend(s.iter().copied().filter(|&b| b != 0));
    out.push(0);
}

/// Severity of an error or notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// ErrorResponse with severity, SQLSTATE, message and an optional detail.
pub fn error_response(
    out: &mut Vec<u8>,
    severity: Severity,
    code: &str,
    message: &str,
    detail: Option<&str>,
) {
    let at = begin(out, b'E');
    out.push(b'S');
    put_cstr(out, severity.as_str().as_bytes());
    out.push(b'V');
    put_cstr(out, severity.as_str().as_bytes());
    out.push(b'C');
    put_cstr(out, code.as_bytes());
    out.push(b'M');
    put_cstr(out, message.as_bytes());
    if let Some(d) = detail {
        out.push(b'D');
        put_cstr(out, d.as_bytes());
    }
    out.push(0);
    finish(out, at);
}

/// AuthenticationOk.
pub fn auth_ok(out: &mut Vec<u8>) {
    let at = begin(out, b'R');
    out.extend_from_slice(&0u32.to_be_bytes());
    finish(out, at);
}

/// AuthenticationCleartextPassword.
pub fn auth_cleartext(out: &mut Vec<u8>) {
    let at = begin(out, b'R');
    out.extend_from_slice(&3u32.to_be_bytes());
    finish(out, at);
}

/// AuthenticationSASL offering the given mechanisms.
pub fn auth_sasl(out: &mut Vec<u8>, mechanisms: &[&str]) {
    let at = begin(out, b'R');
    out.extend_from_slice(&10u32.to_be_bytes());
    for m in mechanisms {
        put_cstr(out, m.as_bytes());
    }
    out.push(0);
    finish(out, at);
}

/// AuthenticationSASLContinue (11) or AuthenticationSASLFinal (12).
pub fn auth_sasl_data(out: &mut Vec<u8>, code: u32, data: &[u8]) {
    let at = begin(out, b'R');
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(data);
    finish(out, at);
}

/// BackendKeyData.
pub fn backend_key_data(out: &mut Vec<u8>, pid: i32, secret: i32) {
    let at = begin(out, b'K');
    out.extend_from_slice(&pid.to_be_bytes());
    out.extend_from_slice(&secret.to_be_bytes());
    finish(out, at);
}

/// NegotiateProtocolVersion: newest minor version supported and the
/// protocol options (`_pq_.*`) not recognised.
pub fn negotiate_protocol_version(out: &mut Vec<u8>, minor: u32, unrecognised: &[&[u8]]) {
    let at = begin(out, b'v');
    out.extend_from_slice(&minor.to_be_bytes());
    out.extend_from_slice(&(unrecognised.len() as u32).to_be_bytes());
    for o in unrecognised {
        put_cstr(out, o);
    }
    finish(out, at);
}

/// A frontend message with a raw body (used towards targets).
pub fn message(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    let at = begin(out, tag);
    out.extend_from_slice(body);
    finish(out, at);
}

/// Parse of statement `name` (no parameter types given).
pub fn parse(out: &mut Vec<u8>, name: &[u8], query: &[u8]) {
    let at = begin(out, b'P');
    put_cstr(out, name);
    put_cstr(out, query);
    out.extend_from_slice(&[0, 0]);
    finish(out, at);
}

/// Describe of statement `name`.
pub fn describe_statement(out: &mut Vec<u8>, name: &[u8]) {
    let at = begin(out, b'D');
    out.push(b'S');
    put_cstr(out, name);
    finish(out, at);
}

/// Close of statement `name`.
pub fn close_statement(out: &mut Vec<u8>, name: &[u8]) {
    let at = begin(out, b'C');
    out.push(b'S');
    put_cstr(out, name);
    finish(out, at);
}

/// Sync.
pub fn sync(out: &mut Vec<u8>) {
    let at = begin(out, b'S');
    finish(out, at);
}

/// An ErrorResponse (or NoticeResponse, by `tag`) with the fields of `body`
/// but those of type `drop`.
pub fn error_without(out: &mut Vec<u8>, tag: u8, body: &[u8], drop: u8) {
    let at = begin(out, tag);
    let mut rest = body;
    while let Some((&kind, tail)) = rest.split_first() {
        let Some((val, tail)) = super::cstr(tail).filter(|_| kind != 0) else {
            break;
        };
        if kind != drop {
            out.push(kind);
            put_cstr(out, val);
        }
        rest = tail;
    }
    out.push(0);
    finish(out, at);
}

/// PasswordMessage carrying a NUL-terminated password (cleartext or md5).
pub fn password_message(out: &mut Vec<u8>, password: &[u8]) {
    let at = begin(out, b'p');
    put_cstr(out, password);
    finish(out, at);
}

/// SASLInitialResponse.
pub fn sasl_initial_response(out: &mut Vec<u8>, mechanism: &str, data: &[u8]) {
    let at = begin(out, b'p');
    put_cstr(out, mechanism.as_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    finish(out, at);
}

/// StartupMessage (protocol 3.0) with the given parameters.
pub fn startup_message(out: &mut Vec<u8>, params: &[(&[u8], &[u8])]) {
    let at = out.len();
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&super::startup::PROTOCOL_3_0.to_be_bytes());
    for (k, v) in params {
        put_cstr(out, k);
        put_cstr(out, v);
    }
    out.push(0);
    finish(out, at);
}

/// CancelRequest for a server's real process id and secret.
pub fn cancel_request(pid: i32, secret: i32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&16u32.to_be_bytes());
    b[4..8].copy_from_slice(&super::startup::CANCEL_REQUEST_CODE.to_be_bytes());
    b[8..12].copy_from_slice(&pid.to_be_bytes());
    b[12..16].copy_from_slice(&secret.to_be_bytes());
    b
}

/// SSLRequest.
pub fn ssl_request() -> [u8; 8] {
    let mut b = [0u8; 8];
    b[0..4].copy_from_slice(&8u32.to_be_bytes());
    b[4..8].copy_from_slice(&super::startup::SSL_REQUEST_CODE.to_be_bytes());
    b
}

/// Fields of an ErrorResponse/NoticeResponse body.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ErrorFields {
    pub severity: String,
    pub code: String,
    pub message: String,
}

/// The (name, value) of a ParameterStatus body.
pub fn parameter_status(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let (name, rest) = super::cstr(body)?;
    let (value, _) = super::cstr(rest)?;
    Some((name, value))
}

/// Parse the body of an ErrorResponse or NoticeResponse.
pub fn parse_error_fields(body: &[u8]) -> ErrorFields {
    let mut f = ErrorFields::default();
    let mut rest = body;
    while let Some((&kind, tail)) = rest.split_first() {
        if kind == 0 {
            break;
        }
        let Some((val, tail)) = super::cstr(tail) else {
            break;
        };
        let val = String::from_utf8_lossy(val).into_owned();
        match kind {
            b'S' => f.severity = val,
            b'C' => f.code = val,
            b'M' => f.message = val,
            _ => {}
        }
        rest = tail;
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_loses_one_field_type() {
        let mut e = Vec::new();
        error_response(&mut e, Severity::Error, "42703", "no column", Some("d"));
        let mut out = Vec::new();
        error_without(&mut out, b'E', &e[5..], b'D');
        let mut want = Vec::new();
        error_response(&mut want, Severity::Error, "42703", "no column", None);
        assert_eq!(out, want);
    }

    #[test]
    fn error_response_round_trips() {
        let mut out = Vec::new();
        error_response(&mut out, Severity::Fatal, "28P01", "bad\0 key", Some("d"));
        assert_eq!(out[0], b'E');
        let len = crate::protocol::be_u32(&out[1..5]) as usize;
        assert_eq!(len + 1, out.len());
        let f = parse_error_fields(&out[5..]);
        assert_eq!(f.code, "28P01");
        assert_eq!(f.message, "bad key");
        assert_eq!(f.severity, "FATAL");
    }
}
