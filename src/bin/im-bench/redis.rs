//! Redis as a comparison target: a minimal RESP2 encoder and parser, the connection setup
//! (SUBSCRIBE per receiver), and the [`Wire`] that publishes (optionally storing with XADD).
//!
//! The parser handles what these shapes receive: simple strings, errors, integers, bulk
//! strings, and flat arrays of up to four of those (pub/sub pushes and SUBSCRIBE answers).

use crate::Common;
use crate::net::{Net, Phase, drive};
use crate::shapes::traffic::Wire;
use std::time::Instant;

/// Stream length kept by `XADD … MAXLEN ~`.
const STREAM_MAXLEN: &[u8] = b"100000";

/// One RESP value that is not an array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resp<'a> {
    Simple(&'a [u8]),
    Error(&'a [u8]),
    Integer(i64),
    Bulk(Option<&'a [u8]>),
}

/// A whole reply or push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply<'a> {
    One(Resp<'a>),
    /// A flat array: its length and first (at most four) items.
    Array(usize, [Resp<'a>; 4]),
}

/// Appends a command as an array of bulk strings.
pub fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.push(b'*');
    push_decimal(out, args.len());
    out.extend_from_slice(b"\r\n");
    for arg in args {
        out.push(b'$');
        push_decimal(out, arg.len());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

fn push_decimal(out: &mut Vec<u8>, mut v: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

fn line(buf: &[u8]) -> Option<(&[u8], usize)> {
    let end = buf.windows(2).position(|w| w == b"\r\n")?;
    Some((&buf[..end], end + 2))
}

fn parse_int(s: &[u8]) -> Result<i64, String> {
    std::str::from_utf8(s)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad RESP integer {:?}", String::from_utf8_lossy(s)))
}

/// One RESP item: a value, or the header of an array (its length, -1 for a null array).
enum Item<'a> {
    Value(Resp<'a>),
    ArrayHeader(i64),
}

/// One RESP item at the front of `buf` and its size; `Ok(None)` when incomplete.
fn item(buf: &[u8]) -> Result<Option<(Item<'_>, usize)>, String> {
    let Some(&kind) = buf.first() else { return Ok(None) };
    let Some((text, used)) = line(&buf[1..]) else { return Ok(None) };
    let used = used + 1;
    Ok(Some(match kind {
        b'+' => (Item::Value(Resp::Simple(text)), used),
        b'-' => (Item::Value(Resp::Error(text)), used),
        b':' => (Item::Value(Resp::Integer(parse_int(text)?)), used),
        b'$' => {
            let len = parse_int(text)?;
            if len < 0 {
                (Item::Value(Resp::Bulk(None)), used)
            } else {
                let len = len as usize;
                if buf.len() < used + len + 2 {
                    return Ok(None);
                }
                if &buf[used + len..used + len + 2] != b"\r\n" {
                    return Err("a RESP bulk string lacks its CRLF".into());
                }
                (Item::Value(Resp::Bulk(Some(&buf[used..used + len]))), used + len + 2)
            }
        }
        b'*' => (Item::ArrayHeader(parse_int(text)?), used),
        other => return Err(format!("unknown RESP type byte {other:#04x}")),
    }))
}

/// Parses one reply at the front of `buf`: `Ok(None)` when more bytes are needed.
pub fn parse(buf: &[u8]) -> Result<Option<(Reply<'_>, usize)>, String> {
    let Some((first, mut used)) = item(buf)? else { return Ok(None) };
    let len = match first {
        Item::Value(one) => return Ok(Some((Reply::One(one), used))),
        Item::ArrayHeader(..=0) => return Ok(Some((Reply::Array(0, [Resp::Bulk(None); 4]), used))),
        Item::ArrayHeader(n) => n as usize,
    };
    if len > 4 {
        return Err(format!("a RESP array of {len} items is more than this parser handles"));
    }
    let mut items = [Resp::Bulk(None); 4];
    for slot in items.iter_mut().take(len) {
        match item(&buf[used..])? {
            None => return Ok(None),
            Some((Item::Value(v), n)) => {
                *slot = v;
                used += n;
            }
            Some((Item::ArrayHeader(_), _)) => return Err("nested RESP arrays are not handled".into()),
        }
    }
    Ok(Some((Reply::Array(len, items), used)))
}

/// Calls `f` for every whole reply at the front of `data`; returns the bytes consumed.
pub fn replies<'a>(data: &'a [u8], mut f: impl FnMut(Reply<'a>) -> Result<(), String>) -> Result<usize, String> {
    let mut used = 0;
    while let Some((reply, n)) = parse(&data[used..])? {
        used += n;
        f(reply)?;
    }
    Ok(used)
}

fn error_text(reply: &Reply) -> String {
    match reply {
        Reply::One(Resp::Error(e)) => format!("Redis error: {}", String::from_utf8_lossy(e)),
        other => format!("unexpected Redis reply {other:?}"),
    }
}

/// Opens one connection per entry: `Some(channel)` subscribes to it, `None` only checks with
/// PING. Returns the tokens in order once every answer has arrived.
pub fn open(net: &mut Net, common: &Common, subscriptions: &[Option<String>]) -> Result<Vec<usize>, String> {
    let mut phase =
        Opener { common, subscriptions, tokens: vec![usize::MAX; subscriptions.len()], next: 0, active: 0, done: 0 };
    drive(net, &mut phase, common.setup_deadline(), "connecting to Redis")?;
    Ok(phase.tokens)
}

struct Opener<'a> {
    common: &'a Common,
    subscriptions: &'a [Option<String>],
    tokens: Vec<usize>,
    next: usize,
    active: usize,
    done: usize,
}

impl Phase for Opener<'_> {
    fn tick(&mut self, net: &mut Net, _now: Instant) -> Result<(), String> {
        while self.active < self.common.concurrency && self.next < self.subscriptions.len() {
            let i = self.next;
            let token =
                net.connect(self.common.addr, i).map_err(|e| format!("connect to {}: {e}", self.common.addr))?;
            match &self.subscriptions[i] {
                Some(channel) => command(net.out(token), &[b"SUBSCRIBE", channel.as_bytes()]),
                None => command(net.out(token), &[b"PING"]),
            }
            self.tokens[i] = token;
            self.next += 1;
            self.active += 1;
        }
        Ok(())
    }

    fn on_data(&mut self, net: &mut Net, token: usize, data: &[u8], _now: Instant) -> Result<usize, String> {
        let _ = net;
        replies(data, |reply| {
            match reply {
                Reply::One(Resp::Simple(b"PONG")) => {}
                Reply::Array(3, [Resp::Bulk(Some(b"subscribe")), _, Resp::Integer(_), _]) => {}
                other => return Err(error_text(&other)),
            }
            self.active -= 1;
            self.done += 1;
            let _ = token;
            Ok(())
        })
    }

    fn done(&self) -> bool {
        self.done == self.subscriptions.len()
    }
}

/// How messages are published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// PUBLISH only: Redis keeps nothing.
    PubSub,
    /// XADD to the conversation's stream, then PUBLISH; the PUBLISH reply is the ack.
    Streams,
}

/// Redis as a [`Wire`]: per destination a channel (and a stream when storing).
pub struct RedisWire {
    pub store: Store,
    pub channels: Vec<String>,
    pub streams: Vec<String>,
}

impl RedisWire {
    pub fn new(store: Store, prefix: &str, destinations: usize) -> Self {
        RedisWire {
            store,
            channels: (0..destinations).map(|i| format!("{prefix}c{i}")).collect(),
            streams: (0..destinations).map(|i| format!("{prefix}s{i}")).collect(),
        }
    }
}

impl Wire for RedisWire {
    fn send(&mut self, net: &mut Net, token: usize, dest: usize, _seq: u64, body: &str) {
        let out = net.out(token);
        if self.store == Store::Streams {
            let stream = self.streams[dest].as_bytes();
            command(out, &[b"XADD", stream, b"MAXLEN", b"~", STREAM_MAXLEN, b"*", b"b", body.as_bytes()]);
        }
        command(out, &[b"PUBLISH", self.channels[dest].as_bytes(), body.as_bytes()]);
    }

    fn sender_frames<F: FnMut(u64, Option<i64>) -> Result<(), String>>(
        &mut self,
        data: &[u8],
        mut on_ack: F,
    ) -> Result<usize, String> {
        replies(data, |reply| match reply {
            Reply::One(Resp::Integer(n)) => on_ack(0, Some(n)),
            // The stream entry id of XADD; the PUBLISH that follows is the acknowledgement.
            Reply::One(Resp::Bulk(Some(_))) if self.store == Store::Streams => Ok(()),
            other => Err(error_text(&other)),
        })
    }

    fn receiver_frames<'a, F: FnMut(u64, &'a [u8]) -> Result<(), String>>(
        &mut self,
        data: &'a [u8],
        mut on_deliver: F,
    ) -> Result<usize, String> {
        replies(data, |reply| match reply {
            Reply::Array(3, [Resp::Bulk(Some(b"message")), _, Resp::Bulk(Some(body)), _]) => on_deliver(0, body),
            other => Err(error_text(&other)),
        })
    }

    fn receiver_ack(&mut self, _net: &mut Net, _token: usize, _message_id: u64) {}

    fn has_message_ids(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_commands() {
        let mut out = Vec::new();
        command(&mut out, &[b"PUBLISH", b"c1", b""]);
        assert_eq!(out, b"*3\r\n$7\r\nPUBLISH\r\n$2\r\nc1\r\n$0\r\n\r\n");
    }

    #[test]
    fn parses_replies_split_anywhere() {
        let stream: &[u8] =
            b":1\r\n$15\r\n1700000000000-0\r\n*3\r\n$7\r\nmessage\r\n$2\r\nc1\r\n$3\r\nhi!\r\n-ERR no\r\n+PONG\r\n";
        let expected = [
            Reply::One(Resp::Integer(1)),
            Reply::One(Resp::Bulk(Some(b"1700000000000-0"))),
            Reply::Array(
                3,
                [Resp::Bulk(Some(b"message")), Resp::Bulk(Some(b"c1")), Resp::Bulk(Some(b"hi!")), Resp::Bulk(None)],
            ),
            Reply::One(Resp::Error(b"ERR no")),
            Reply::One(Resp::Simple(b"PONG")),
        ];
        for cut in 0..stream.len() {
            let mut got = Vec::new();
            let used = replies(&stream[..cut], |r| {
                got.push(r);
                Ok(())
            })
            .unwrap();
            replies(&stream[used..], |r| {
                got.push(r);
                Ok(())
            })
            .unwrap();
            assert_eq!(got, expected, "cut at {cut}");
        }
    }

    #[test]
    fn refuses_garbage() {
        assert!(parse(b"?x\r\n").is_err());
        assert!(parse(b":x\r\n").is_err());
        assert!(parse(b"*5\r\n").is_err());
        assert!(parse(b"$2\r\nabXY").is_err());
    }
}
