//! Reading a Server-Sent Events stream (the watch stream): lines in, events out.

use futures_lite::{AsyncBufRead, AsyncBufReadExt};

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

/// Accumulates fields until a blank line dispatches the event.
#[derive(Debug, Default)]
pub struct Parser {
    event: Option<String>,
    id: Option<String>,
    data: Option<String>,
}

impl Parser {
    /// Feeds one line, without its line ending.
    pub fn line(&mut self, line: &str) -> Line {
        if line.is_empty() {
            let data = self.data.take();
            let event = self.event.take();
            let id = self.id.take();
            return match data {
                Some(data) => Line::Event(Event {
                    event: event.unwrap_or_else(|| "message".into()),
                    id,
                    data,
                }),
                None => Line::Field,
            };
        }
        if line.starts_with(':') {
            return Line::Comment;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = Some(value.to_string()),
            "id" => self.id = Some(value.to_string()),
            "data" => match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            },
            _ => {}
        }
        Line::Field
    }
}

/// Reads until the next event or comment; `None` at the end of the stream.
pub async fn next<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    parser: &mut Parser,
    max_line: usize,
) -> std::io::Result<Option<Line>> {
    let mut buf = String::new();
    loop {
        buf.clear();
        let n = reader.read_line(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        if buf.len() > max_line {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("event stream line longer than {max_line} bytes"),
            ));
        }
        let line = buf.trim_end_matches('\n').trim_end_matches('\r');
        match parser.line(line) {
            Line::Field => continue,
            other => return Ok(Some(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
