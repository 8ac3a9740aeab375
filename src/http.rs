//! The little HTTP the server speaks: one `GET` per connection, for the browser client's files
//! (`src/web/`, embedded by `build.rs`) or for the upgrade of `GET /ws` to a WebSocket
//! (RFC 6455 §4.2). Every other request is answered and the connection closed.
//!
//! Request heads are parsed with `httparse` and bounded ([`MAX_HEAD`]). A WebSocket upgrade
//! must come from the page's own origin (the `Host` it was served from) or one listed with
//! `--web-origin`: another site's page cannot open a socket with its visitor's browser
//! (cross-site WebSocket hijacking). A client that sends no `Origin` is not a browser and is
//! let through; it could forge any header anyway.

use tungstenite::handshake::derive_accept_key;

include!(concat!(env!("OUT_DIR"), "/web_files.rs"));

/// Largest request head accepted, in bytes; a longer one gets 431 and a close.
pub const MAX_HEAD: usize = 8 * 1024;
/// Headers a request may have.
const MAX_HEADERS: usize = 32;

/// What the page may load and where it may connect: its own files and its own WebSocket,
/// nothing inline, nothing from another host, no framing by another site.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// How far the request head has arrived.
#[derive(Debug, PartialEq, Eq)]
pub enum Head {
    Incomplete,
    /// The head ends at this many bytes.
    Complete(usize),
    TooLarge,
}

/// Finds the end of the request head in `buf`.
pub fn head_length(buf: &[u8]) -> Head {
    match buf.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(at) if at + 4 <= MAX_HEAD => Head::Complete(at + 4),
        Some(_) => Head::TooLarge,
        None if buf.len() >= MAX_HEAD => Head::TooLarge,
        None => Head::Incomplete,
    }
}

/// The server's answer to one request.
#[derive(Debug)]
pub struct Answer {
    /// The whole response: status line, headers, body.
    pub response: Vec<u8>,
    /// The connection becomes a WebSocket after the response; otherwise it is closed.
    pub upgrade: bool,
    /// The status, for the log.
    pub status: u16,
}

/// Where the request came in, for the origin check.
pub struct Site<'a> {
    /// `https` on the TLS listener, `http` on `--http-listen`.
    pub scheme: &'static str,
    /// `--web-origin`: other origins whose pages may open the WebSocket.
    pub extra_origins: &'a [String],
}

/// Answers a complete request head.
pub fn answer(head: &[u8], site: &Site) -> Answer {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Err(httparse::Error::TooManyHeaders) => return error(431, "Request Header Fields Too Large"),
        Ok(httparse::Status::Partial) | Err(_) => return error(400, "Bad Request"),
    }
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    let path = request.path.unwrap_or("/");
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    if request.method != Some("GET") {
        return error(404, "Not Found");
    }
    if path == "/ws" {
        return upgrade(&header, site);
    }
    let name = if path == "/" { "index.html" } else { path.trim_start_matches('/') };
    match FILES.iter().find(|(file, _, _)| *file == name) {
        Some((_, content_type, body)) => file(content_type, body),
        None => error(404, "Not Found"),
    }
}

fn upgrade<'h>(header: &impl Fn(&str) -> Option<&'h str>, site: &Site) -> Answer {
    let has_token = |name: &str, token: &str| {
        header(name).is_some_and(|v| v.split(',').any(|part| part.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return error(400, "Bad Request");
    }
    if header("sec-websocket-version").map(str::trim) != Some("13") {
        let mut answer = error(426, "Upgrade Required");
        // RFC 6455 §4.4: say which version is spoken.
        answer.response = with_header(answer.response, "Sec-WebSocket-Version: 13");
        return answer;
    }
    let Some(key) = header("sec-websocket-key").map(str::trim).filter(|k| k.len() == 24) else {
        return error(400, "Bad Request");
    };
    let Some(host) = header("host") else { return error(400, "Bad Request") };
    if let Some(origin) = header("origin") {
        let own = format!("{}://{}", site.scheme, host);
        let allowed =
            origin.eq_ignore_ascii_case(&own) || site.extra_origins.iter().any(|o| origin.eq_ignore_ascii_case(o));
        if !allowed {
            log::info!("refused a WebSocket from origin {origin:?} (serving {own:?})");
            return error(403, "Forbidden");
        }
    }
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    Answer { response: response.into_bytes(), upgrade: true, status: 101 }
}

fn file(content_type: &str, body: &[u8]) -> Answer {
    let mut response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Content-Security-Policy: {CONTENT_SECURITY_POLICY}\r\nX-Content-Type-Options: nosniff\r\n\
         X-Frame-Options: DENY\r\nReferrer-Policy: no-referrer\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    response.extend_from_slice(body);
    Answer { response, upgrade: false, status: 200 }
}

/// A short plain-text error response.
pub fn error(status: u16, reason: &str) -> Answer {
    let body = format!("{status} {reason}\n");
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
         X-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    Answer { response: response.into_bytes(), upgrade: false, status }
}

/// Inserts a header line after the status line.
fn with_header(response: Vec<u8>, line: &str) -> Vec<u8> {
    let at = response.windows(2).position(|w| w == b"\r\n").map_or(response.len(), |p| p + 2);
    let mut out = response[..at].to_vec();
    out.extend_from_slice(line.as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&response[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SITE: Site = Site { scheme: "http", extra_origins: &[] };

    fn status_of(head: &str) -> u16 {
        answer(head.as_bytes(), &SITE).status
    }

    fn upgrade_request(extra: &str) -> String {
        format!(
            "GET /ws HTTP/1.1\r\nHost: chat.example:8080\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
        )
    }

    #[test]
    fn the_upgrade_answers_with_the_rfc_accept_key() {
        let a = answer(upgrade_request("Origin: http://chat.example:8080\r\n").as_bytes(), &SITE);
        assert!(a.upgrade);
        let text = String::from_utf8(a.response).unwrap();
        // RFC 6455 §1.3's example key and accept value.
        assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"), "{text}");
    }

    #[test]
    fn requests_get_their_defined_answers() {
        let cases = [
            ("another site's page", upgrade_request("Origin: http://evil.example\r\n"), 403),
            ("the same host on another scheme", upgrade_request("Origin: https://chat.example:8080\r\n"), 403),
            ("no origin: not a browser", upgrade_request(""), 101),
            ("an unknown path", "GET /etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n".to_string(), 404),
            ("a POST", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".to_string(), 404),
            ("not HTTP", "GET\r\n\r\n".to_string(), 400),
            ("an upgrade without a key", "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n".to_string(), 400),
            ("an old WebSocket version", "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".to_string(), 426),
            ("/ws without an upgrade", "GET /ws HTTP/1.1\r\nHost: x\r\n\r\n".to_string(), 400),
            ("the page", "GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_string(), 200),
            ("the page with a query", "GET /?x=1 HTTP/1.1\r\nHost: x\r\n\r\n".to_string(), 200),
        ];
        for (name, head, status) in cases {
            assert_eq!(status_of(&head), status, "{name}");
        }
    }

    #[test]
    fn listed_origins_may_open_the_socket() {
        let origins = ["https://app.example".to_string()];
        let site = Site { scheme: "http", extra_origins: &origins };
        assert!(answer(upgrade_request("Origin: https://app.example\r\n").as_bytes(), &site).upgrade);
    }

    #[test]
    fn a_head_is_bounded() {
        assert_eq!(head_length(b"GET / HTTP/1.1\r\n"), Head::Incomplete);
        assert_eq!(head_length(b"GET / HTTP/1.1\r\n\r\nrest"), Head::Complete(18));
        assert_eq!(head_length(&vec![b'a'; MAX_HEAD]), Head::TooLarge);
    }

    #[test]
    fn the_page_is_served_with_a_strict_policy() {
        let a = answer(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", &SITE);
        let text = String::from_utf8_lossy(&a.response);
        assert!(text.contains(&format!("Content-Security-Policy: {CONTENT_SECURITY_POLICY}\r\n")));
        assert!(text.contains("Content-Type: text/html"));
    }
}
