//! Reading a Server-Sent Events stream (the watch stream): lines in, events out.
//!
//! Bounded while reading, not after: a line is read into a buffer that never
//! grows past `max_line` (the bytes beyond it are not taken from the reader),
//! and a [`Parser::bounded`] parser refuses a field that would take the event
//! past its bound before appending it. A peer that sends `data: ` and then
//! endless bytes without a newline, or endless short `data:` lines without
//! the blank line that ends the event, costs at most the two bounds; the
//! reader answers `InvalidData` and the caller drops the stream.

use futures_lite::{AsyncBufRead, AsyncBufReadExt};
use std::io;

/// One dispatched event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// `event:` field; "message" when absent.
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

/// What a line of the stream meant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Line {
    /// A blank line completed an event.
    Event(Event),
    /// A `:` comment, such as a keep-alive.
    Comment,
    /// A field of an event still being read.
    Field,
}

/// A field would have taken the event being read past the parser's bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventTooLong {
    pub max_event: usize,
}

impl std::fmt::Display for EventTooLong {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "event stream event longer than {} bytes (no blank line ended it)",
            self.max_event
        )
    }
}

impl std::error::Error for EventTooLong {}

/// Accumulates fields until a blank line dispatches the event.
#[derive(Debug)]
pub struct Parser {
    event: Option<String>,
    id: Option<String>,
    data: Option<String>,
    /// Most bytes of `event`, `id` and `data` held for one event.
    max_event: usize,
}

impl Default for Parser {
    /// Unbounded events, for streams the caller trusts (tests, benches).
    fn default() -> Self {
        Parser::bounded(usize::MAX)
    }
}

impl Parser {
    /// A parser that holds at most `max_event` bytes of fields for one event.
    pub fn bounded(max_event: usize) -> Parser {
        Parser {
            event: None,
            id: None,
            data: None,
            max_event,
        }
    }

    /// Feeds one line, without its line ending. A field that would take the
    /// event past the bound drops the event being read (the next one starts
    /// afresh) and is answered `Line::Field`; [`Parser::try_line`] says so.
    pub fn line(&mut self, line: &str) -> Line {
        self.try_line(line).unwrap_or(Line::Field)
    }

    /// Like [`Parser::line`], and says when a field would have taken the
    /// event past the bound (the event being read is dropped then).
    pub fn try_line(&mut self, line: &str) -> Result<Line, EventTooLong> {
        if line.is_empty() {
            return Ok(self.dispatch());
        }
        if line.starts_with(':') {
            return Ok(Line::Comment);
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => {
                self.fits(value.len(), self.event.as_ref().map_or(0, String::len))?;
                self.event = Some(value.to_string());
            }
            "id" => {
                self.fits(value.len(), self.id.as_ref().map_or(0, String::len))?;
                self.id = Some(value.to_string());
            }
            "data" => self.push_data(value)?,
            _ => {}
        }
        Ok(Line::Field)
    }

    fn dispatch(&mut self) -> Line {
        let data = self.data.take();
        let event = self.event.take();
        let id = self.id.take();
        match data {
            Some(data) => Line::Event(Event {
                event: event.unwrap_or_else(|| "message".into()),
                id,
                data,
            }),
            None => Line::Field,
        }
    }

    fn push_data(&mut self, value: &str) -> Result<(), EventTooLong> {
        match &self.data {
            // Joined with a newline (one more byte), as the SSE spec says.
            Some(held) => self.fits(held.len() + 1 + value.len(), held.len())?,
            None => self.fits(value.len(), 0)?,
        }
        match &mut self.data {
            Some(held) => {
                // Grown within the bound: doubling past it would hold up to
                // twice the bound for an event that is refused anyway.
                let want = held.len() + 1 + value.len();
                if want > held.capacity() {
                    let grown = held
                        .capacity()
                        .saturating_mul(2)
                        .min(self.max_event)
                        .max(want);
                    held.reserve_exact(grown - held.len());
                }
                held.push('\n');
                held.push_str(value);
            }
            None => self.data = Some(value.to_string()),
        }
        Ok(())
    }

    /// Whether the event stays within the bound when a field of `new` bytes
    /// replaces one of `old` bytes; if not, the event is dropped.
    fn fits(&mut self, new: usize, old: usize) -> Result<(), EventTooLong> {
        let len = |s: &Option<String>| s.as_ref().map_or(0, String::len);
        let held = len(&self.event) + len(&self.id) + len(&self.data);
        if held - old + new <= self.max_event {
            return Ok(());
        }
        (self.event, self.id, self.data) = (None, None, None);
        Err(EventTooLong {
            max_event: self.max_event,
        })
    }
}

/// Reads until the next event or comment; `None` at the end of the stream.
///
/// A line longer than `max_line` bytes (its line ending included), an event
/// past the parser's bound, or a line that is not UTF-8 is an `InvalidData`
/// error, raised as soon as the bound is passed: the stream cannot be read
/// on from there, so the caller drops it.
pub async fn next<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    parser: &mut Parser,
    max_line: usize,
) -> io::Result<Option<Line>> {
    let mut buf = Vec::new();
    loop {
        buf.clear();
        if !read_line(reader, &mut buf, max_line).await? {
            return Ok(None);
        }
        let text = std::str::from_utf8(&buf).map_err(|e| invalid(format!("event stream: {e}")))?;
        let line = text.trim_end_matches('\n').trim_end_matches('\r');
        match parser.try_line(line).map_err(|e| invalid(e.to_string()))? {
            Line::Field => continue,
            other => return Ok(Some(other)),
        }
    }
}

fn invalid(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

/// Appends one line (with its `\n`, if the stream did not end first) to
/// `buf`, taking from `reader` only what fits in `max` bytes. False at the
/// end of the stream with nothing read.
async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<bool> {
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(!buf.is_empty());
        }
        let (take, ended) = match available.iter().position(|b| *b == b'\n') {
            Some(at) => (at + 1, true),
            None => (available.len(), false),
        };
        if buf.len() + take > max {
            return Err(invalid(format!(
                "event stream line longer than {max} bytes (no newline ended it)"
            )));
        }
        if buf.len() + take > buf.capacity() {
            // Grown within the bound, as in `Parser::push_data`.
            let grown = buf
                .capacity()
                .saturating_mul(2)
                .min(max)
                .max(buf.len() + take);
            buf.reserve_exact(grown - buf.len());
        }
        buf.extend_from_slice(&available[..take]);
        reader.consume(take);
        if ended {
            return Ok(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::io::{AsyncRead, BufReader};
    use std::pin::Pin;
    use std::task::{Context, Poll};

    #[test]
    fn parses_events_and_comments() {
        let mut p = Parser::default();
        assert_eq!(p.line(": keep-alive"), Line::Comment);
        assert_eq!(p.line("event: instances"), Line::Field);
        assert_eq!(p.line("id: 3"), Line::Field);
        assert_eq!(p.line("data: {\"a\":1}"), Line::Field);
        assert_eq!(
            p.line(""),
            Line::Event(Event {
                event: "instances".into(),
                id: Some("3".into()),
                data: "{\"a\":1}".into()
            })
        );
        assert_eq!(
            p.line(""),
            Line::Field,
            "a blank line without data dispatches nothing"
        );
    }

    /// `head`, then `body` repeated for ever; counts the bytes handed out.
    struct Endless {
        head: Vec<u8>,
        body: &'static [u8],
        at: usize,
        given: usize,
    }

    impl Endless {
        fn new(head: &str, body: &'static [u8]) -> Endless {
            Endless {
                head: head.as_bytes().to_vec(),
                body,
                at: 0,
                given: 0,
            }
        }
    }

    impl AsyncRead for Endless {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            out: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            let this = &mut *self;
            for byte in out.iter_mut() {
                *byte = match this.head.get(this.at) {
                    Some(b) => *b,
                    None => this.body[(this.at - this.head.len()) % this.body.len()],
                };
                this.at += 1;
            }
            this.given += out.len();
            Poll::Ready(Ok(out.len()))
        }
    }

    const READ_BUF: usize = 4096;

    fn read_all(
        reader: &mut BufReader<Endless>,
        parser: &mut Parser,
        max_line: usize,
    ) -> io::Result<Option<Line>> {
        futures_lite::future::block_on(next(reader, parser, max_line))
    }

    #[test]
    fn a_line_without_end_is_refused_once_past_the_bound_and_never_read_further() {
        let mut reader = BufReader::with_capacity(READ_BUF, Endless::new("data: ", b"x"));
        let mut parser = Parser::bounded(1 << 20);
        let err = read_all(&mut reader, &mut parser, 64 * 1024).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("longer than 65536 bytes"), "{err}");
        let given = reader.get_ref().given;
        assert!(
            given <= 64 * 1024 + READ_BUF,
            "read {given} bytes for a 64 KiB bound"
        );
    }

    #[test]
    fn an_event_of_endless_short_data_lines_is_refused_past_its_bound() {
        let mut reader = BufReader::with_capacity(READ_BUF, Endless::new("", b"data: x\n"));
        let mut parser = Parser::bounded(256 * 1024);
        let err = read_all(&mut reader, &mut parser, 1024).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(
            err.to_string().contains("event longer than 262144"),
            "{err}"
        );
        let given = reader.get_ref().given;
        // Each `data: x` line adds 2 bytes (a newline and `x`) to the event.
        assert!(
            given <= 256 * 1024 / 2 * 8 + READ_BUF,
            "read {given} bytes for a 256 KiB event bound"
        );
        assert!(given >= 256 * 1024, "the bound was not reached early");
    }

    #[test]
    fn a_line_and_an_event_at_their_bounds_pass_and_one_byte_more_does_not() {
        let line = format!("data: {}\n", "d".repeat(100));
        let ok = |max_line: usize, max_event: usize| {
            let text = format!("{line}\n");
            let mut reader = futures_lite::io::Cursor::new(text.into_bytes());
            let mut parser = Parser::bounded(max_event);
            futures_lite::future::block_on(next(&mut reader, &mut parser, max_line))
        };
        let event = ok(line.len(), 100).unwrap();
        assert!(matches!(event, Some(Line::Event(e)) if e.data.len() == 100));
        assert!(ok(line.len() - 1, 100).is_err(), "line one byte over");
        assert!(ok(line.len(), 99).is_err(), "event one byte over");
    }

    #[test]
    fn events_are_bounded_by_all_their_fields_and_the_next_one_starts_afresh() {
        let mut p = Parser::bounded(10);
        assert_eq!(p.try_line("event: abcd"), Ok(Line::Field));
        assert_eq!(p.try_line("data: 12345"), Ok(Line::Field));
        assert_eq!(
            p.try_line("data: 6"),
            Err(EventTooLong { max_event: 10 }),
            "4 + 5 + 1 (the joining newline) + 1 is past 10"
        );
        assert_eq!(p.line(""), Line::Field, "the oversized event was dropped");
        assert_eq!(p.line("data: small"), Line::Field);
        assert!(matches!(p.line(""), Line::Event(e) if e.data == "small" && e.event == "message"));
    }

    #[test]
    fn a_stream_ending_mid_line_gives_that_line_then_the_end() {
        let mut reader = futures_lite::io::Cursor::new(b": hi".to_vec());
        let mut parser = Parser::default();
        let next = |r: &mut futures_lite::io::Cursor<Vec<u8>>, p: &mut Parser| {
            futures_lite::future::block_on(next(r, p, 1024)).unwrap()
        };
        assert_eq!(next(&mut reader, &mut parser), Some(Line::Comment));
        assert_eq!(next(&mut reader, &mut parser), None);
    }
}
