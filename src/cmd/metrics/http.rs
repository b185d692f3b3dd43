//! The HTTP of the endpoint: a bounded request head read and parsed, and the whole response to it.
//!
//! The bound is on the head itself (request line and headers, up to the empty line), however its
//! bytes arrive; a request line past it is a URI too long (414), other heads past it 431. The
//! target may be in origin form (`/metrics`) or absolute form (`http://host/metrics`, which
//! RFC 9112 §3.2.2 says a server must accept). Content-Length values that disagree are a bad
//! request (§6.3).

use std::io::{self, Read};
use std::net::TcpStream;

use prometheus_client::encoding::prometheus_text;

/// The longest request head taken; a longer one is answered 431.
const MAX_HEAD: usize = 8 * 1024;
/// Most headers in a request head; more is answered 431.
const MAX_HEADERS: usize = 32;

/// What a complete request head asks for.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Request {
    /// A head that is not HTTP/1.x.
    Bad,
    /// A head over the size or header-count bound.
    TooLarge,
    /// A request line over the size bound.
    UriTooLong,
    /// A well-formed request for `path` with `method`.
    Valid { method: String, path: String },
}

/// Reads what the client sent; a request once the head is complete (or known bad), `None` while
/// more is needed, `Err` when the client closed or failed before that.
pub(super) fn read_head(stream: &mut TcpStream, head: &mut Vec<u8>) -> Result<Option<Request>, ()> {
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return Err(()),
            Ok(n) => {
                head.extend_from_slice(&chunk[..n]);
                if let Some(request) = parse_head(head) {
                    return Ok(Some(request));
                }
            }
            // Non-blocking: never interrupted, so any other error ends the scrape.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(_) => return Err(()),
        }
    }
}

/// The request in `head`, or `None` while it is incomplete and within the bound.
fn parse_head(head: &[u8]) -> Option<Request> {
    let line = head
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(head.len());
    if line > MAX_HEAD {
        return Some(Request::UriTooLong);
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Complete(len)) if len > MAX_HEAD => Some(Request::TooLarge),
        Ok(httparse::Status::Complete(_)) if !one_length(request.headers) => Some(Request::Bad),
        Ok(httparse::Status::Complete(_)) => Some(Request::Valid {
            method: request.method.unwrap_or_default().to_string(),
            path: origin_form(request.path.unwrap_or_default()).to_string(),
        }),
        Ok(httparse::Status::Partial) if head.len() > MAX_HEAD => Some(Request::TooLarge),
        Ok(httparse::Status::Partial) => None,
        Err(httparse::Error::TooManyHeaders) => Some(Request::TooLarge),
        Err(_) => Some(Request::Bad),
    }
}

/// Whether every Content-Length (each header, each comma-separated value) gives one number.
fn one_length(headers: &[httparse::Header]) -> bool {
    let mut values = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
        .flat_map(|h| h.value.split(|&b| b == b','))
        .map(|v| {
            std::str::from_utf8(v)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
        });
    match values.next() {
        None => true,
        Some(None) => false,
        Some(first) => values.all(|v| v == first),
    }
}

/// The path of a target in absolute form (`http://host:port/metrics?x` gives `/metrics?x`);
/// any other target as it is.
fn origin_form(target: &str) -> &str {
    let scheme = target.split_once("://").filter(|(scheme, _)| {
        scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")
    });
    match scheme {
        Some((_, rest)) => match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => &rest[i..],
            _ => "/",
        },
        None => target,
    }
}

/// The whole response to `request` (the connection closes after it).
pub(super) fn respond(request: Request, metrics: &dyn Fn() -> Option<String>) -> Vec<u8> {
    const TEXT: &str = "text/plain; charset=utf-8";
    let (method, path) = match request {
        Request::Bad => return response("400 Bad Request", TEXT, "bad request\n", true, &[]),
        Request::TooLarge => {
            let body = "request header fields too large\n";
            return response("431 Request Header Fields Too Large", TEXT, body, true, &[]);
        }
        Request::UriTooLong => {
            let body = "request target too long\n";
            return response("414 URI Too Long", TEXT, body, true, &[]);
        }
        Request::Valid { method, path } => (method, path),
    };
    // A query string (`?name[]=...` from some scrapers) does not change the answer.
    if path.split('?').next() != Some("/metrics") {
        let body = "not found: the metrics are at /metrics\n";
        return response("404 Not Found", TEXT, body, true, &[]);
    }
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        let allow = [("Allow", "GET, HEAD")];
        let body = "method not allowed: use GET\n";
        return response("405 Method Not Allowed", TEXT, body, true, &allow);
    }
    match metrics() {
        Some(text) => response(
            "200 OK",
            prometheus_text::CONTENT_TYPE,
            &text,
            !head_only,
            &[],
        ),
        None => {
            let body = "cannot encode the metrics\n";
            response("500 Internal Server Error", TEXT, body, true, &[])
        }
    }
}

fn response(
    status: &str,
    content_type: &str,
    body: &str,
    with_body: bool,
    extra: &[(&str, &str)],
) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    if with_body {
        bytes.extend_from_slice(body.as_bytes());
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_parsed_bounded_and_refused() {
        let valid = |method: &str, path: &str| {
            Some(Request::Valid {
                method: method.into(),
                path: path.into(),
            })
        };
        let get = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(parse_head(get), valid("GET", "/metrics"));
        // Every prefix of a good head asks for more.
        for end in 0..get.len() {
            assert_eq!(parse_head(&get[..end]), None, "{end}");
        }
        assert_eq!(
            parse_head(b"\x00\x01\x02 nonsense\r\n\r\n"),
            Some(Request::Bad)
        );
        assert_eq!(
            parse_head(b"GET /metrics HTTP/9.9\r\n\r\n"),
            Some(Request::Bad)
        );
        let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        huge.resize(MAX_HEAD + 1, b'a');
        assert_eq!(parse_head(&huge), Some(Request::TooLarge));
        // The same bound for a head that arrives whole: 9,000 bytes, complete.
        let mut whole = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        whole.resize(9_000 - 4, b'a');
        whole.extend_from_slice(b"\r\n\r\n");
        assert_eq!(parse_head(&whole), Some(Request::TooLarge));
        let mut long_url = b"GET /metrics?".to_vec();
        long_url.resize(MAX_HEAD + 1, b'a');
        assert_eq!(parse_head(&long_url), Some(Request::UriTooLong));
        long_url.extend_from_slice(b" HTTP/1.1\r\n\r\n");
        assert_eq!(parse_head(&long_url), Some(Request::UriTooLong));
        // At the bound, not past it: 8 KiB, the documented limit, is taken.
        let mut at_bound = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        at_bound.resize(8 * 1024 - 4, b'a');
        at_bound.extend_from_slice(b"\r\n\r\n");
        assert_eq!(parse_head(&at_bound), valid("GET", "/metrics"));
        // A request line of 8 KiB is not too long (414), though with its line end the head is (431).
        let mut url_at_bound = b"GET /metrics?".to_vec();
        url_at_bound.resize(8 * 1024 - b" HTTP/1.1".len(), b'a');
        url_at_bound.extend_from_slice(b" HTTP/1.1\r\n");
        assert_eq!(parse_head(&url_at_bound), Some(Request::TooLarge));
        let mut many = b"GET /metrics HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(parse_head(&many), Some(Request::TooLarge));
    }

    #[test]
    fn absolute_targets_are_taken_and_lengths_must_agree() {
        let valid = |path: &str| {
            Some(Request::Valid {
                method: "GET".into(),
                path: path.into(),
            })
        };
        for (target, path) in [
            ("http://localhost:9100/metrics", "/metrics"),
            ("HTTP://[::1]:9100/metrics?x=1", "/metrics?x=1"),
            ("http://host", "/"),
            ("http://host?x", "/"),
            ("/metrics", "/metrics"),
        ] {
            let head = format!("GET {target} HTTP/1.1\r\nHost: h\r\n\r\n");
            assert_eq!(parse_head(head.as_bytes()), valid(path), "{target}");
        }
        let with = |lengths: &str| format!("GET /metrics HTTP/1.1\r\n{lengths}\r\n");
        for agree in [
            "Content-Length: 0\r\n",
            "Content-Length: 3\r\nContent-Length: 3\r\n",
            "Content-Length: 3, 3\r\n",
        ] {
            assert_eq!(
                parse_head(with(agree).as_bytes()),
                valid("/metrics"),
                "{agree}"
            );
        }
        for conflict in [
            "Content-Length: 3\r\nContent-Length: 4\r\n",
            "Content-Length: 3, 4\r\n",
            "Content-Length: x\r\n",
        ] {
            assert_eq!(
                parse_head(with(conflict).as_bytes()),
                Some(Request::Bad),
                "{conflict}"
            );
        }
    }

    /// The status line of the response to `request`.
    fn status(request: Request) -> String {
        let bytes = respond(request, &|| Some("x 1\n".into()));
        let text = String::from_utf8(bytes).expect("text");
        text.lines().next().unwrap_or_default().to_string()
    }

    #[test]
    fn each_request_gets_its_status() {
        let valid = |method: &str, path: &str| Request::Valid {
            method: method.into(),
            path: path.into(),
        };
        assert_eq!(status(valid("GET", "/metrics")), "HTTP/1.1 200 OK");
        assert_eq!(status(valid("GET", "/metrics?x=1")), "HTTP/1.1 200 OK");
        assert_eq!(status(valid("HEAD", "/metrics")), "HTTP/1.1 200 OK");
        assert_eq!(status(valid("GET", "/")), "HTTP/1.1 404 Not Found");
        assert_eq!(
            status(valid("POST", "/metrics")),
            "HTTP/1.1 405 Method Not Allowed"
        );
        assert_eq!(status(Request::Bad), "HTTP/1.1 400 Bad Request");
        assert_eq!(
            status(Request::TooLarge),
            "HTTP/1.1 431 Request Header Fields Too Large"
        );
        assert_eq!(status(Request::UriTooLong), "HTTP/1.1 414 URI Too Long");
        let head = respond(valid("HEAD", "/metrics"), &|| Some("x 1\n".into()));
        assert!(head.ends_with(b"Content-Length: 4\r\nConnection: close\r\n\r\n"));
    }
}
