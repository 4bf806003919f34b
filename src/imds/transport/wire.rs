//! The bytes of an IMDS request and what an answer's head says about its body, pure: the
//! connection in the parent moves them. Request heads are a few fixed lines; answers are
//! parsed by `httparse` and their bodies framed as RFC 9112 §6.3 says.

use hyper::StatusCode;

/// IMDS sends about six headers.
pub(super) const MAX_HEADERS: usize = 64;

/// The two requests IMDS is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::imds) enum Method {
    Get,
    /// Only for the token, with an empty body.
    Put,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
        }
    }
}

/// The request head in origin form, into `out`: the target is the base URL's path
/// (without its trailing slash) followed by the request's path.
pub(super) fn write_head(
    out: &mut Vec<u8>,
    method: Method,
    host: &str,
    (prefix, path): (&str, &str),
    header: Option<(&str, &[u8])>,
) {
    out.clear();
    for part in [
        method.as_str(),
        " ",
        prefix,
        path,
        " HTTP/1.1\r\nhost: ",
        host,
        "\r\n",
    ] {
        out.extend_from_slice(part.as_bytes());
    }
    if method == Method::Put {
        // An empty body said as such.
        out.extend_from_slice(b"content-length: 0\r\n");
    }
    if let Some((name, value)) = header {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// A path and a header that cannot break the request head they go into.
pub(super) fn check_request(path: &str, header: Option<(&str, &[u8])>) -> Result<(), String> {
    if path.as_bytes().first() != Some(&b'/') || !path.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("invalid path {path:?}"));
    }
    if let Some((name, value)) = header {
        let name_ok = !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':');
        let value_ok = value
            .iter()
            .all(|&b| b == b'\t' || (b >= b' ' && b != 0x7f));
        if !name_ok || !value_ok {
            return Err(format!("invalid header {name:?}"));
        }
    }
    Ok(())
}

/// How an answer's body ends (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BodyEnd {
    Length(usize),
    Chunked,
    Close,
}

/// What the head of an answer says.
pub(super) struct Head {
    pub(super) status: StatusCode,
    /// The head's length in bytes.
    pub(super) length: usize,
    pub(super) body: BodyEnd,
    pub(super) keep_alive: bool,
    pub(super) wanted: Option<String>,
}

/// The status, body framing and keep-alive of a parsed final answer (RFC 9112 §6.3, §9.3).
pub(super) fn head(
    response: &httparse::Response<'_, '_>,
    length: usize,
    wanted: Option<&str>,
) -> Result<Head, String> {
    let code = response.code.unwrap_or_default();
    let status = StatusCode::from_u16(code).map_err(|_| format!("status {code}"))?;
    if code == 101 {
        return Err("IMDS switched protocols".to_string());
    }
    let mut content_length: Option<usize> = None;
    let mut transfer_encoding: Option<&[u8]> = None;
    let mut keep_alive = response.version == Some(1);
    let mut wanted_value = None;
    for header in response.headers.iter() {
        let name = header.name;
        if wanted.is_some_and(|wanted| name.eq_ignore_ascii_case(wanted)) && wanted_value.is_none()
        {
            wanted_value = std::str::from_utf8(header.value).ok().map(str::to_string);
        }
        if name.eq_ignore_ascii_case("content-length") {
            let digits = header.value.trim_ascii();
            let value = std::str::from_utf8(digits)
                .ok()
                .filter(|_| digits.iter().all(u8::is_ascii_digit))
                .and_then(|v| v.parse::<usize>().ok())
                .ok_or("malformed content-length")?;
            if content_length.is_some_and(|known| known != value) {
                return Err("conflicting content-length headers".to_string());
            }
            content_length = Some(value);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = Some(header.value);
        } else if name.eq_ignore_ascii_case("connection") {
            for option in header.value.split(|&b| b == b',') {
                let option = option.trim_ascii();
                if option.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if option.eq_ignore_ascii_case(b"keep-alive") && response.version == Some(0)
                {
                    keep_alive = true;
                }
            }
        }
    }
    if transfer_encoding.is_some() && content_length.is_some() {
        // Framing two ways at once is how responses are split: this one is read as
        // chunked, and the connection is not trusted with another (RFC 9112 §6.3).
        keep_alive = false;
    }
    let body = if code == 204 || code == 304 {
        BodyEnd::Length(0)
    } else if let Some(codings) = transfer_encoding {
        let last = codings.rsplit(|&b| b == b',').next().unwrap_or_default();
        if last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
            BodyEnd::Chunked
        } else {
            BodyEnd::Close
        }
    } else {
        content_length.map_or(BodyEnd::Close, BodyEnd::Length)
    };
    Ok(Head {
        status,
        length,
        body,
        keep_alive,
        wanted: wanted_value,
    })
}
