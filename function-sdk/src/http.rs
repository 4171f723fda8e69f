//! HTTP requests and responses as invocation payloads: the envelope `tariff gateway` speaks.
//!
//! The gateway turns each HTTP request into one invocation whose payload is the request in
//! HTTP/1.1 message form (request line, header lines, an empty line, then the body, which runs
//! to the end of the payload), and turns the function's output back into the HTTP response
//! from a CGI-style form (optional `Status:` line, header lines, an empty line, the body).
//! Both forms are text a shell script can read and write with `read` and `printf`, so an exec
//! function needs no library; a Rust function uses [`serve_http`] (persistent) or
//! [`handle_http_once`] (exec). The format is specified in `docs/gateway.md`; this module is
//! its one implementation, which the gateway links too, so the two ends cannot drift apart.
//!
//! ```no_run
//! use tariff_function::http::{serve_http, Response};
//! fn main() -> std::io::Result<()> {
//!     serve_http(|request| Response::ok(format!("hello from {}", request.path())))
//! }
//! ```
//!
//! Why not JSON with a base64 body: this crate is std only (functions link it and should
//! start fast), and the HTTP/1.1 message form needs no parser beyond splitting lines, keeps a
//! binary body as it is (no 33 % base64 growth on image uploads), and is what CGI scripts
//! have read and written for thirty years.

use std::io::{self, Read, Write};

/// The version written on the envelope's request line. The envelope is always this form,
/// whatever version the client spoke to the gateway (HTTP/1.1 or HTTP/2).
pub const ENVELOPE_VERSION: &str = "HTTP/1.1";
/// The response header that carries the status code in the function's answer (as in CGI).
pub const STATUS_HEADER: &str = "Status";
/// The status of an answer without a `Status:` line.
pub const DEFAULT_STATUS: u16 = 200;

/// Why an envelope could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvelopeError {
    /// There is no empty line ending the head: the bytes are not an envelope at all.
    NoHeadEnd,
    /// The request line is not `METHOD TARGET VERSION`.
    BadRequestLine(String),
    /// A header line has no colon.
    BadHeader(String),
    /// The `Status:` value is not a three-digit code from 100 to 999.
    BadStatus(String),
}

impl std::fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoHeadEnd => write!(f, "no empty line ends the envelope's head"),
            Self::BadRequestLine(line) => write!(f, "bad request line `{line}`"),
            Self::BadHeader(line) => write!(f, "header line without a colon: `{line}`"),
            Self::BadStatus(value) => write!(f, "bad status `{value}`"),
        }
    }
}

impl std::error::Error for EnvelopeError {}

/// An HTTP request as a function receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path and query as the client sent them, e.g. `/profile/42?tab=photos`.
    pub target: String,
    /// Header names and values in the order received; names as sent (HTTP/2 sends them in
    /// lower case), values decoded lossily as UTF-8.
    pub headers: Vec<(String, String)>,
    /// The request body.
    pub body: Vec<u8>,
}

impl Request {
    /// The path without the query.
    pub fn path(&self) -> &str {
        self.target.split_once('?').map_or(&self.target, |(p, _)| p)
    }

    /// The query string (after `?`), if any.
    pub fn query(&self) -> Option<&str> {
        self.target.split_once('?').map(|(_, q)| q)
    }

    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header_value(&self.headers, name)
    }

    /// The envelope's bytes (what the gateway sends as the payload).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.target.len() + self.body.len() + 256);
        out.extend_from_slice(
            format!("{} {} {ENVELOPE_VERSION}\r\n", self.method, self.target).as_bytes(),
        );
        write_head_and_body(&mut out, &self.headers, &self.body);
        out
    }

    /// Reads an envelope. Lines may end in `\r\n` or `\n`.
    pub fn decode(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        let (head, body) = split_head(bytes)?;
        let mut lines = head.lines();
        let first = lines.next().unwrap_or_default();
        let mut parts = first.split(' ');
        let (Some(method), Some(target), Some(_version), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(EnvelopeError::BadRequestLine(first.to_owned()));
        };
        if method.is_empty() || !target.starts_with('/') {
            return Err(EnvelopeError::BadRequestLine(first.to_owned()));
        }
        Ok(Self {
            method: method.to_owned(),
            target: target.to_owned(),
            headers: parse_headers(lines)?,
            body: body.to_vec(),
        })
    }
}

/// An HTTP response as a function answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header names and values; `Content-Length` is set by the gateway and ignored here.
    pub headers: Vec<(String, String)>,
    /// The response body.
    pub body: Vec<u8>,
}

impl Response {
    /// A response with `status` and no headers or body.
    pub fn new(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// `200 OK` with `body` as plain UTF-8 text.
    pub fn ok(body: impl Into<Vec<u8>>) -> Self {
        Self::new(DEFAULT_STATUS)
            .with_header("Content-Type", "text/plain; charset=utf-8")
            .with_body(body)
    }

    /// This response with one more header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// This response with `body`.
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header_value(&self.headers, name)
    }

    /// The answer's bytes: a `Status:` line, the headers, an empty line, the body.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body.len() + 128);
        out.extend_from_slice(format!("{STATUS_HEADER}: {}\r\n", self.status).as_bytes());
        write_head_and_body(&mut out, &self.headers, &self.body);
        out
    }

    /// Reads a function's answer (what the gateway does). A `Status:` header (`404` or
    /// `404 Not Found`) sets the status, else it is [`DEFAULT_STATUS`]; it is not kept among
    /// the headers.
    pub fn decode(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        let (head, body) = split_head(bytes)?;
        let mut status = DEFAULT_STATUS;
        let mut headers = Vec::new();
        for (name, value) in parse_headers(head.lines())? {
            if name.eq_ignore_ascii_case(STATUS_HEADER) {
                let code = value.split(' ').next().unwrap_or_default();
                status = code
                    .parse()
                    .ok()
                    .filter(|c| (100..1000).contains(c) && code.len() == 3)
                    .ok_or_else(|| EnvelopeError::BadStatus(value.clone()))?;
            } else {
                headers.push((name, value));
            }
        }
        Ok(Self {
            status,
            headers,
            body: body.to_vec(),
        })
    }
}

/// Serves HTTP requests on a persistent instance: [`crate::serve`] with the envelope decoded
/// and the answer encoded. A payload that is not an envelope is answered `400`.
pub fn serve_http<F>(mut handler: F) -> io::Result<()>
where
    F: FnMut(Request) -> Response,
{
    crate::serve(|payload| Ok(answer(payload, &mut handler)))
}

/// Handles one HTTP request in an exec function: reads the envelope from stdin to its end and
/// writes the answer to stdout.
pub fn handle_http_once<F>(handler: F) -> io::Result<()>
where
    F: FnOnce(Request) -> Response,
{
    let mut payload = Vec::new();
    io::stdin().lock().read_to_end(&mut payload)?;
    let mut handler = Some(handler);
    let output = answer(&payload, &mut |request| match handler.take() {
        Some(handler) => handler(request),
        None => Response::new(500),
    });
    let mut stdout = io::stdout().lock();
    stdout.write_all(&output)?;
    stdout.flush()
}

/// The encoded answer to one payload.
fn answer(payload: &[u8], handler: &mut dyn FnMut(Request) -> Response) -> Vec<u8> {
    match Request::decode(payload) {
        Ok(request) => handler(request).encode(),
        Err(e) => Response::new(400)
            .with_body(format!("not an HTTP envelope: {e}\n"))
            .encode(),
    }
}

fn header_value<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn write_head_and_body(out: &mut Vec<u8>, headers: &[(String, String)], body: &[u8]) {
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// The head (decoded lossily) and the body: split at the first empty line.
fn split_head(bytes: &[u8]) -> Result<(String, &[u8]), EnvelopeError> {
    let mut start = 0;
    while let Some(offset) = bytes[start..].iter().position(|&b| b == b'\n') {
        let end = start + offset;
        let line = &bytes[start..end];
        if line.is_empty() || line == b"\r" {
            let head = String::from_utf8_lossy(&bytes[..start]).into_owned();
            return Ok((head, &bytes[end + 1..]));
        }
        start = end + 1;
    }
    Err(EnvelopeError::NoHeadEnd)
}

fn parse_headers<'a>(
    lines: impl Iterator<Item = &'a str>,
) -> Result<Vec<(String, String)>, EnvelopeError> {
    lines
        .map(|line| {
            let (name, value) = line
                .split_once(':')
                .filter(|(name, _)| !name.is_empty() && !name.contains(' '))
                .ok_or_else(|| EnvelopeError::BadHeader(line.to_owned()))?;
            Ok((name.to_owned(), value.trim().to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_request() -> Request {
        Request {
            method: "POST".into(),
            target: "/images?width=100".into(),
            headers: vec![
                ("content-type".into(), "image/x-portable-pixmap".into()),
                ("x-two".into(), "a: b".into()),
            ],
            body: vec![0, 13, 10, 13, 10, 255],
        }
    }

    #[test]
    fn request_round_trips_with_a_binary_body() {
        let request = sample_request();
        assert_eq!(Request::decode(&request.encode()).unwrap(), request);
        assert_eq!(request.path(), "/images");
        assert_eq!(request.query(), Some("width=100"));
        assert_eq!(
            request.header("Content-Type"),
            Some("image/x-portable-pixmap")
        );
    }

    #[test]
    fn request_layout_is_an_http_message() {
        let request = Request {
            method: "GET".into(),
            target: "/".into(),
            headers: vec![("host".into(), "h".into())],
            body: b"x".to_vec(),
        };
        assert_eq!(request.encode(), b"GET / HTTP/1.1\r\nhost: h\r\n\r\nx");
    }

    #[test]
    fn response_round_trips_and_status_is_not_a_header() {
        let response = Response::new(418)
            .with_header("Content-Type", "text/plain")
            .with_body(b"\r\n\r\nteapot".to_vec());
        let decoded = Response::decode(&response.encode()).unwrap();
        assert_eq!(decoded, response);
    }

    #[test]
    fn script_style_answers_are_read() {
        let decoded = Response::decode(b"Content-Type: text/html\n\n<p>hi</p>\n").unwrap();
        assert_eq!(decoded.status, DEFAULT_STATUS);
        assert_eq!(decoded.header("content-type"), Some("text/html"));
        assert_eq!(decoded.body, b"<p>hi</p>\n");
        let decoded = Response::decode(b"Status: 404 Not Found\n\n").unwrap();
        assert_eq!(decoded.status, 404);
        assert!(decoded.headers.is_empty());
    }

    #[test]
    fn malformed_envelopes_are_refused() {
        assert_eq!(Response::decode(b"hello"), Err(EnvelopeError::NoHeadEnd));
        assert!(matches!(
            Response::decode(b"no colon here\n\n"),
            Err(EnvelopeError::BadHeader(_))
        ));
        assert!(matches!(
            Response::decode(b"Status: 42\n\n"),
            Err(EnvelopeError::BadStatus(_))
        ));
        assert!(matches!(
            Request::decode(b"GET\r\n\r\n"),
            Err(EnvelopeError::BadRequestLine(_))
        ));
    }

    #[test]
    fn a_payload_that_is_not_an_envelope_is_answered_400() {
        let output = answer(b"plain", &mut |_| Response::ok("unreachable"));
        assert_eq!(Response::decode(&output).unwrap().status, 400);
        let output = answer(&sample_request().encode(), &mut |r| Response::ok(r.method));
        assert_eq!(Response::decode(&output).unwrap().body, b"POST");
    }
}
