//! The frontend messages of a Postgres-wire connection, checked as their bytes arrive: each
//! message's declared length against the limit, and the structure of the messages whose
//! decoders trust it (pgwire reads a Bind's counts without bounds checks, and a Parse without its
//! terminator reads into the next message), so a malformed message ends the connection with
//! PostgreSQL's `08P01` instead of a panic or a desynchronised stream.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The request codes of startup-phase messages after which more untyped messages may come.
pub const SSL_REQUEST: u32 = 80877103;
/// GSSAPI encryption, answered "no".
pub const GSSENC_REQUEST: u32 = 80877104;
const CANCEL_REQUEST: u32 = 80877102;

/// The bytes of a connection read through a check of each message's length header: a message
/// declared longer than the limit ends the reading there, so a client cannot make the server
/// buffer a gigabyte (PostgreSQL's own ceiling) before it is refused.
pub struct FrameLimit<S> {
    inner: S,
    max: usize,
    /// Startup-phase messages carry no type byte: length and a request code.
    typed: bool,
    header: [u8; 8],
    have: usize,
    /// Bytes left of the message being read.
    body_left: u64,
    /// The type of the message being read, and its body so far when its structure is checked.
    kind: u8,
    body: Option<Vec<u8>>,
    /// Bytes checked and ready to hand on, from `sent` on: a structured message is handed on
    /// whole, once checked, so nothing of it reaches pgwire before it is.
    ready: Vec<u8>,
    sent: usize,
    /// Why the connection was refused, once it was.
    pub refusal: Option<String>,
}

/// The most rows one Execute may ask for: pgwire reserves room for as many as asked at once
/// (2^31 - 1 asked for 61 GB and aborted the process), so a larger limit is lowered to this;
/// the client gets PortalSuspended after these rows and asks again, as the protocol has it.
pub const MAX_ROWS_PER_EXECUTE: i32 = 65_536;

impl<S> FrameLimit<S> {
    /// Checks messages of at most `max` bytes from the start of the startup phase.
    pub fn new(inner: S, max: usize) -> Self {
        FrameLimit {
            inner,
            max,
            typed: false,
            header: [0; 8],
            have: 0,
            body_left: 0,
            kind: 0,
            body: None,
            ready: Vec::new(),
            sent: 0,
            refusal: None,
        }
    }

    /// Bytes read before this limit saw the connection (during TLS negotiation): checked like
    /// the rest, then handed on first.
    pub fn take_buffered(&mut self, buffered: &mut bytes::BytesMut) {
        let bytes = buffered.split();
        self.observe(&bytes);
    }

    /// Follows the message boundaries through `bytes`, queueing what may be handed on; records
    /// a refusal when a header declares a message past the limit (or shorter than its own
    /// length field) or a structured message is malformed.
    pub fn observe(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && self.refusal.is_none() {
            if self.body_left > 0 {
                let n = self.body_left.min(bytes.len() as u64) as usize;
                match &mut self.body {
                    Some(body) => body.extend_from_slice(&bytes[..n]),
                    None => self.ready.extend_from_slice(&bytes[..n]),
                }
                self.body_left -= n as u64;
                bytes = &bytes[n..];
                if self.body_left == 0 {
                    self.check_body();
                }
                continue;
            }
            let need = if self.typed { 5 } else { 8 };
            let n = (need - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have < need {
                return;
            }
            self.have = 0;
            let field = |at: usize| {
                u32::from_be_bytes([
                    self.header[at],
                    self.header[at + 1],
                    self.header[at + 2],
                    self.header[at + 3],
                ])
            };
            let (length, read) = if self.typed {
                (field(1), 4)
            } else {
                (field(0), 8)
            };
            if (length as usize) < read || length > i32::MAX as u32 {
                self.refusal = Some(format!("invalid message length {length}"));
                return;
            }
            if length as usize > self.max {
                self.refusal = Some(format!(
                    "message of {length} bytes exceeds the server's limit of {} bytes \
                     (--max-message-size)",
                    self.max
                ));
                return;
            }
            self.body_left = u64::from(length) - read as u64;
            if self.typed {
                self.kind = self.header[0];
                if !KNOWN.contains(&self.kind) {
                    self.refusal = Some(format!(
                        "invalid frontend message type '{}'",
                        self.kind.escape_ascii()
                    ));
                    return;
                }
                if STRUCTURED.contains(&self.kind) {
                    // Grown as the bytes come, not reserved from what the header claims.
                    self.body = Some(Vec::with_capacity((self.body_left as usize).min(1 << 16)));
                    if self.body_left == 0 {
                        self.check_body();
                    }
                } else {
                    self.ready.extend_from_slice(&self.header[..5]);
                }
            } else {
                let fixed = match field(4) {
                    SSL_REQUEST | GSSENC_REQUEST => Some(8),
                    CANCEL_REQUEST => Some(16),
                    _ => None,
                };
                match fixed {
                    Some(expected) if length != expected => {
                        self.refusal = Some(format!("invalid message length {length}"));
                        return;
                    }
                    Some(_) => self.ready.extend_from_slice(&self.header),
                    None => {
                        // The startup message, held back until its parameters are checked:
                        // typed messages follow it.
                        self.typed = true;
                        self.kind = STARTUP;
                        self.body = Some(Vec::with_capacity(self.body_left as usize));
                        if self.body_left == 0 {
                            self.check_body();
                        }
                    }
                }
            }
        }
    }

    /// The connection beneath, for writing and draining once a refusal was said.
    pub fn inner_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    fn check_body(&mut self) {
        let Some(mut body) = self.body.take() else {
            return;
        };
        if let Err(why) = well_formed(self.kind, &body) {
            self.refusal = Some(format!(
                "invalid message format: {why} in a '{}' message",
                self.kind.escape_ascii()
            ));
            return;
        }
        let head = if self.kind == STARTUP { 8 } else { 5 };
        if self.kind == b'E' {
            // Execute: a portal name, then the row limit (0: all rows).
            let at = body.len() - 4;
            let asked = i32::from_be_bytes([body[at], body[at + 1], body[at + 2], body[at + 3]]);
            if asked > MAX_ROWS_PER_EXECUTE {
                body[at..].copy_from_slice(&MAX_ROWS_PER_EXECUTE.to_be_bytes());
            }
        }
        self.ready.extend_from_slice(&self.header[..head]);
        self.ready.extend_from_slice(&body);
    }
}

/// The frontend message types pgwire knows; any other ends the connection here, before pgwire
/// resynchronises on it in its own way.
const KNOWN: &[u8] = b"QPBEDCSHXcdfp";

/// The startup message's place among the types: it has no type byte of its own.
const STARTUP: u8 = 0;

/// The message types whose structure is checked: those pgwire decodes with its own reads
/// (CopyData is raw bytes; password messages are read by the authentication that expects them).
const STRUCTURED: &[u8] = b"QPBEDCSHXcf";

/// Whether a message's body has the structure its type says, ending where its length says.
pub fn well_formed(kind: u8, body: &[u8]) -> Result<(), &'static str> {
    let mut r = Body(body);
    match kind {
        // Parameter names and values, ended by an empty name that is the message's last byte
        // (pgwire reads to that terminator whatever the length says).
        STARTUP => loop {
            let before = r.0.len();
            r.cstring()?;
            if before - r.0.len() == 1 {
                break;
            }
            r.cstring()?;
        },
        b'Q' | b'f' => r.cstring()?,
        b'P' => {
            r.cstring()?;
            r.cstring()?;
            let types = r.u16()?;
            r.take(4 * types as usize)?;
        }
        b'B' => {
            r.cstring()?;
            r.cstring()?;
            let formats = r.u16()?;
            r.take(2 * formats as usize)?;
            for _ in 0..r.u16()? {
                match r.i32()? {
                    -1 => {}
                    n if n < 0 => return Err("a negative parameter length"),
                    n => {
                        r.take(n as usize)?;
                    }
                }
            }
            let results = r.u16()?;
            r.take(2 * results as usize)?;
        }
        b'E' => {
            r.cstring()?;
            r.i32()?;
        }
        b'D' | b'C' => {
            if !matches!(r.take(1)?, [b'S' | b'P']) {
                return Err("neither a statement nor a portal");
            }
            r.cstring()?;
        }
        _ => {}
    }
    if r.0.is_empty() {
        Ok(())
    } else {
        Err("bytes past its end")
    }
}

/// A message body read front to back.
struct Body<'a>(&'a [u8]);

impl Body<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], &'static str> {
        if n > self.0.len() {
            return Err("a field past its end");
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn cstring(&mut self) -> Result<(), &'static str> {
        let end = self
            .0
            .iter()
            .position(|b| *b == 0)
            .ok_or("a string without its terminator")?;
        self.0 = &self.0[end + 1..];
        Ok(())
    }

    fn u16(&mut self) -> Result<u16, &'static str> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self) -> Result<i32, &'static str> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FrameLimit<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            // What is checked goes first, even when a refusal follows it.
            if this.sent < this.ready.len() {
                let n = buf.remaining().min(this.ready.len() - this.sent);
                buf.put_slice(&this.ready[this.sent..this.sent + n]);
                this.sent += n;
                if this.sent == this.ready.len() {
                    this.ready.clear();
                    this.sent = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.refusal.is_some() {
                return Poll::Ready(Err(io::ErrorKind::InvalidData.into()));
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                // The end of the stream: said as it is, with nothing read.
                Poll::Ready(Ok(())) if read.filled().is_empty() => return Poll::Ready(Ok(())),
                // Read on while all of it is held back (a structured message not yet whole):
                // handing on nothing would read as the end of the stream.
                Poll::Ready(Ok(())) => this.observe(read.filled()),
                other => return other,
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FrameLimit<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup() -> Vec<u8> {
        let body = b"\0\x03\0\0user\0u\0\0";
        let mut m = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        m.extend_from_slice(body);
        m
    }

    fn typed(kind: u8, len: u32) -> Vec<u8> {
        let mut m = vec![kind];
        m.extend_from_slice(&len.to_be_bytes());
        m
    }

    #[test]
    fn an_execute_asking_too_many_rows_asks_fewer() {
        let mut limit = FrameLimit::new((), 1 << 20);
        let execute = |rows: i32| {
            [
                typed(b'E', 4 + 3 + 4),
                b"p1\0".to_vec(),
                rows.to_be_bytes().to_vec(),
                typed(b'S', 4),
            ]
            .concat()
        };
        let sent = [startup(), execute(i32::MAX), execute(100)].concat();
        for b in &sent {
            limit.observe(std::slice::from_ref(b));
        }
        // Handed on whole and in order, the first limit lowered, the second as asked.
        let expected = [startup(), execute(MAX_ROWS_PER_EXECUTE), execute(100)].concat();
        assert_eq!(limit.ready, expected);
        assert_eq!(limit.refusal, None);
    }

    #[test]
    fn messages_within_the_limit_pass_byte_by_byte() {
        let mut limit = FrameLimit::new((), 100);
        let mut stream = 8u32.to_be_bytes().to_vec();
        stream.extend_from_slice(&SSL_REQUEST.to_be_bytes());
        stream.extend(startup());
        let mut query = typed(b'Q', 13);
        query.extend_from_slice(b"SELECT 1\0");
        stream.extend(query.clone());
        stream.extend(query);
        for b in &stream {
            limit.observe(std::slice::from_ref(b));
        }
        assert_eq!(limit.refusal, None);
        assert!(limit.typed && limit.body_left == 0 && limit.have == 0);
    }

    #[test]
    fn a_header_past_the_limit_is_refused_before_its_body() {
        let mut limit = FrameLimit::new((), 1 << 20);
        limit.observe(&startup());
        limit.observe(&typed(b'Q', (1 << 20) + 1)[..3]);
        assert_eq!(limit.refusal, None);
        limit.observe(&typed(b'Q', (1 << 20) + 1)[3..]);
        let refusal = limit.refusal.clone().unwrap();
        assert!(refusal.contains("1048577") && refusal.contains("--max-message-size"));

        // A length shorter than the length field itself, in the startup phase and after.
        let mut limit = FrameLimit::new((), 100);
        limit.observe(&[0, 0, 0, 2, 0, 3, 0, 0]);
        assert_eq!(limit.refusal.as_deref(), Some("invalid message length 2"));
        let mut limit = FrameLimit::new((), 100);
        limit.observe(&startup());
        limit.observe(&typed(b'P', 0xffff_ffff));
        assert!(limit.refusal.unwrap().contains("invalid message length"));
    }

    fn message(kind: u8, body: &[u8]) -> Vec<u8> {
        [typed(kind, body.len() as u32 + 4), body.to_vec()].concat()
    }

    #[test]
    fn malformed_messages_are_refused_whole_ones_pass() {
        let bind_ok = message(b'B', b"\0\0\0\x01\0\0\0\x01\0\0\0\x011\0\0");
        let parse_ok = message(b'P', b"\0SELECT $1\0\0\x01\0\0\0\x17");
        for ok in [
            message(b'Q', b"SELECT 1\0"),
            parse_ok,
            bind_ok,
            message(b'E', b"\0\0\0\0\0"),
            message(b'D', b"Sname\0"),
            message(b'S', b""),
            message(b'd', b"raw copy bytes"),
        ] {
            let mut limit = FrameLimit::new((), 1 << 20);
            limit.observe(&startup());
            for b in &ok {
                limit.observe(std::slice::from_ref(b));
            }
            assert_eq!(limit.refusal, None, "{ok:?}");
        }
        for (bad, why) in [
            // A Bind naming 65,535 format codes it lacks: pgwire's decoder panicked on it.
            (message(b'B', b"\0\0\xff\xff\0\0"), "past its end"),
            (
                message(b'B', b"\0\0\0\0\0\x01\xff\xff\xff\xfe\0\0"),
                "negative",
            ),
            (message(b'P', b"\0SELEC"), "terminator"),
            (message(b'Q', b"SELECT 1\0trailing"), "past its end"),
            (message(b'D', b"Xname\0"), "neither"),
            (message(b'S', b"x"), "past its end"),
        ] {
            let mut limit = FrameLimit::new((), 1 << 20);
            limit.observe(&startup());
            limit.observe(&bad);
            let refusal = limit.refusal.unwrap_or_default();
            assert!(
                refusal.starts_with("invalid message format") && refusal.contains(why),
                "{bad:?}: {refusal}"
            );
        }
        // A type pgwire does not know: refused before pgwire resynchronises on it its own way.
        let mut limit = FrameLimit::new((), 1 << 20);
        limit.observe(&startup());
        limit.observe(&message(b'1', b"\0\0"));
        assert!(limit.refusal.unwrap().contains("message type '1'"));
        // A startup message running past its parameters' terminator (found by pgwire_frames:
        // pgwire read the rest as the next messages): refused.
        let body = b"\0\x03\0\0user\0u\0\0D\0\0\0\x08Ss";
        let long = [
            ((body.len() + 4) as u32).to_be_bytes().to_vec(),
            body.to_vec(),
        ]
        .concat();
        let mut limit = FrameLimit::new((), 1 << 20);
        limit.observe(&long);
        assert!(limit.refusal.unwrap().contains("past its end"));
        // A cancel request of the wrong length.
        let mut limit = FrameLimit::new((), 1 << 20);
        limit.observe(&[&[0, 0, 0, 12][..], &CANCEL_REQUEST.to_be_bytes(), &[0; 4]].concat());
        assert!(limit.refusal.unwrap().contains("invalid message length 12"));
    }
}
