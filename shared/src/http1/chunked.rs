//! An incremental, strict decoder of the chunked transfer coding.
//!
//! Strict where leniency has enabled smuggling: sizes are 1 to 16 hex
//! digits, every line ends in CRLF (no bare LF), chunk data is followed by
//! exactly CRLF, and extensions and trailers are bounded.

/// Longest chunk-size line, extensions included.
const MAX_LINE: usize = 4096;
/// Largest trailer section.
const MAX_TRAILERS: usize = 16 * 1024;

/// A malformed chunked body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkError(pub &'static str);

impl std::fmt::Display for ChunkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for ChunkError {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Size,
    SizeSpace,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    TrailerLf,
    FinalLf,
    Done,
}

/// Decodes a chunked body fed in pieces of any size.
#[derive(Clone, Debug)]
pub struct ChunkedDecoder {
    state: State,
    size: u64,
    digits: u8,
    line: usize,
    remaining: u64,
    trailers: usize,
    total: u64,
    /// The trailer fields, each line with its CRLF, when kept.
    kept: Option<Vec<u8>>,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            state: State::Size,
            size: 0,
            digits: 0,
            line: 0,
            remaining: 0,
            trailers: 0,
            total: 0,
            kept: None,
        }
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// A decoder that keeps the trailer fields, for [`ChunkedDecoder::trailers`].
    pub fn keeping_trailers() -> Self {
        ChunkedDecoder {
            kept: Some(Vec::new()),
            ..Self::default()
        }
    }

    /// The trailer fields read so far, each line with its CRLF (empty unless
    /// made by [`ChunkedDecoder::keeping_trailers`]).
    pub fn trailers(&self) -> &[u8] {
        self.kept.as_deref().unwrap_or_default()
    }

    /// True once the last chunk and the trailer section have been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Bytes of chunk data declared so far (to hold a body limit).
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Consumes as much of `input` as belongs to the body and returns how much
    /// that was; chunk data is appended to `data` when given. Stops at the end
    /// of the body: what follows belongs to the next message.
    pub fn decode(
        &mut self,
        input: &[u8],
        mut data: Option<&mut Vec<u8>>,
    ) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                State::Done => break,
                State::Data => {
                    let take = (input.len() - i)
                        .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                    if let Some(out) = data.as_deref_mut() {
                        out.extend_from_slice(&input[i..i + take]);
                    }
                    i += take;
                    self.remaining -= take as u64;
                    if self.remaining == 0 {
                        self.state = State::DataCr;
                    }
                    continue;
                }
                _ => {}
            }
            let b = input[i];
            i += 1;
            let next = self.step(b)?;
            self.keep(b, next);
            self.state = next;
        }
        Ok(i)
    }

    /// Keeps `b` when it belongs to a trailer line (the section's last CRLF does not).
    fn keep(&mut self, b: u8, next: State) {
        use State::*;
        if let Some(kept) = self.kept.as_mut() {
            if matches!(
                (self.state, next),
                (TrailerStart | TrailerLine, TrailerLine)
                    | (TrailerLine, TrailerLf)
                    | (TrailerLf, TrailerStart)
            ) {
                kept.push(b);
            }
        }
    }

    fn step(&mut self, b: u8) -> Result<State, ChunkError> {
        use State::*;
        let next = match (self.state, b) {
            (Size, _) if b.is_ascii_hexdigit() => {
                if self.digits == 16 {
                    return Err(ChunkError("chunk size too large"));
                }
                self.digits += 1;
                self.size = (self.size << 4) | u64::from(hex(b));
                Size
            }
            (Size, b'\r') if self.digits > 0 => SizeLf,
            (Size, b';') if self.digits > 0 => Extension,
            (Size, b' ' | b'\t') if self.digits > 0 => SizeSpace,
            (SizeSpace, b' ' | b'\t') => SizeSpace,
            (SizeSpace, b';') => Extension,
            (Extension, b'\r') => SizeLf,
            (Extension, _) if b == b'\t' || (b >= 0x20 && b != 0x7f) => {
                self.line += 1;
                if self.line > MAX_LINE {
                    return Err(ChunkError("chunk extension too long"));
                }
                Extension
            }
            (SizeLf, b'\n') => {
                let size = std::mem::take(&mut self.size);
                self.digits = 0;
                self.line = 0;
                if size == 0 {
                    TrailerStart
                } else {
                    self.remaining = size;
                    self.total = self.total.saturating_add(size);
                    Data
                }
            }
            (DataCr, b'\r') => DataLf,
            (DataLf, b'\n') => Size,
            (TrailerStart, b'\r') => FinalLf,
            (TrailerLine, b'\r') => TrailerLf,
            (TrailerStart | TrailerLine, _) if b == b'\t' || (b >= 0x20 && b != 0x7f) => {
                self.trailers += 1;
                if self.trailers > MAX_TRAILERS {
                    return Err(ChunkError("chunked trailer section too large"));
                }
                TrailerLine
            }
            (TrailerLf, b'\n') => TrailerStart,
            (FinalLf, b'\n') => Done,
            (Size | SizeSpace, _) => return Err(ChunkError("invalid chunk size line")),
            (DataCr | DataLf, _) => return Err(ChunkError("chunk data not followed by CRLF")),
            _ => return Err(ChunkError("invalid line in a chunked body")),
        };
        Ok(next)
    }
}

fn hex(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(input: &[u8]) -> Result<(Vec<u8>, usize), ChunkError> {
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        let n = d.decode(input, Some(&mut out))?;
        assert!(
            d.is_done(),
            "incomplete: {:?}",
            String::from_utf8_lossy(input)
        );
        Ok((out, n))
    }

    #[test]
    fn keeps_the_trailer_fields_when_asked_and_only_then() {
        let body = b"3\r\nabc\r\n0\r\nX-T: 1\r\nSet-Cookie: a=b\r\n\r\nNEXT";
        let mut d = ChunkedDecoder::keeping_trailers();
        let used = d.decode(body, None).unwrap();
        assert!(d.is_done());
        assert_eq!(&body[used..], b"NEXT");
        assert_eq!(d.trailers(), b"X-T: 1\r\nSet-Cookie: a=b\r\n");
        let mut plain = ChunkedDecoder::new();
        plain.decode(body, None).unwrap();
        assert_eq!(plain.trailers(), b"");
        let mut none = ChunkedDecoder::keeping_trailers();
        none.decode(b"0\r\n\r\n", None).unwrap();
        assert!(none.is_done());
        assert_eq!(none.trailers(), b"");
    }

    #[test]
    fn decodes_chunks_extensions_and_trailers() {
        let body = b"5\r\nhello\r\n6;name=\"v\"\r\n world\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let (out, used) = decode_all(body).unwrap();
        assert_eq!(out, b"hello world");
        assert_eq!(&body[used..], b"NEXT", "stops at the end of the body");
        assert_eq!(
            decode_all(b"A \t;x\r\n0123456789\r\n0\r\n\r\n").unwrap().0,
            b"0123456789"
        );
    }

    #[test]
    fn refuses_malformed_bodies() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"-1\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloX\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"0x5\r\n",
            b"1 2\r\n",
            b"11111111111111111\r\n",
            b"5;\0\r\n",
            b"0\r\nX: 1\n\r\n",
        ] {
            let mut d = ChunkedDecoder::new();
            assert!(
                d.decode(bad, None).is_err(),
                "accepted {:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    fn encode(pieces: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in pieces.iter().filter(|p| !p.is_empty()) {
            out.extend_from_slice(format!("{:x}\r\n", p.len()).as_bytes());
            out.extend_from_slice(p);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    }

    proptest! {
        #[test]
        fn any_split_decodes_the_same(pieces in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..8),
                                      cuts in prop::collection::vec(1usize..64, 1..40)) {
            let wire = encode(&pieces);
            let mut d = ChunkedDecoder::new();
            let mut out = Vec::new();
            let mut at = 0;
            for cut in cuts.iter().cycle() {
                if at >= wire.len() { break; }
                let end = (at + cut).min(wire.len());
                let used = d.decode(&wire[at..end], Some(&mut out)).unwrap();
                prop_assert_eq!(used, end - at);
                at = end;
            }
            prop_assert!(d.is_done());
            prop_assert_eq!(out, pieces.concat());
        }

        #[test]
        fn random_bytes_never_panic(input in prop::collection::vec(any::<u8>(), 0..512)) {
            let mut d = ChunkedDecoder::new();
            let _ = d.decode(&input, Some(&mut Vec::new()));
        }
    }
}
