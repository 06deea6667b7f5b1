//! Where a response body ends, found as its bytes pass through unchanged:
//! a `Content-Length` count, or a small state machine over chunked framing.
//! The same machine decodes a chunked body for the hyper path
//! ([`Body::take_data`]): its data, and its trailer section.

use super::head::Framing;

/// Largest trailer section kept from a decoded chunked body.
const MAX_TRAILERS: usize = 16 * 1024;

/// Follows a response body as it passes through, to find where it ends.
#[derive(Debug)]
pub(super) struct Body {
    framing: Framing,
    /// Bytes left of a `Content-Length` body or of the current chunk.
    remaining: u64,
    chunk: ChunkState,
    /// The trailer section of a chunked body being decoded, once it began
    /// (`None` while passing bytes through).
    trailers: Option<Vec<u8>>,
}

/// Where a chunked body is, between the bytes seen so far and the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// In the hex size of a chunk (`digits` read so far).
    Size { digits: u8 },
    /// In a chunk extension, up to the CR.
    Extension,
    /// Expecting the LF of the size line.
    SizeLf,
    /// In chunk data.
    Data,
    /// Expecting the CR after chunk data.
    DataCr,
    /// Expecting the LF after chunk data.
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// In a trailer line, up to the CR.
    Trailer,
    /// Expecting the LF of a trailer line.
    TrailerLf,
    /// Expecting the LF of the final empty line.
    EndLf,
    /// The body ended.
    Done,
}

impl Body {
    pub(super) fn new(framing: Framing) -> Self {
        Self {
            framing,
            remaining: match framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            chunk: ChunkState::Size { digits: 0 },
            trailers: None,
        }
    }

    /// A body to decode: [`Body::take_data`] separates the data of a chunked
    /// body from its framing, and keeps its trailer section.
    pub(super) fn decoding(framing: Framing) -> Self {
        Self {
            trailers: Some(Vec::new()),
            ..Self::new(framing)
        }
    }

    /// The framing of the body.
    pub(super) fn framing(&self) -> Framing {
        self.framing
    }

    /// Bytes of the body still to come, when its length is known.
    pub(super) fn remaining(&self) -> Option<u64> {
        match self.framing {
            Framing::Empty => Some(0),
            Framing::Length(_) => Some(self.remaining),
            Framing::Chunked | Framing::UntilClose => None,
        }
    }

    /// The trailer section of a decoded chunked body (its lines, each with
    /// its CRLF, and the final CRLF), once the body is done; empty when it
    /// had none.
    pub(super) fn take_trailers(&mut self) -> Vec<u8> {
        self.trailers.take().unwrap_or_default()
    }

    /// Takes bytes from the front of `bytes` up to the end of the next run
    /// of body data (a chunked body's framing is consumed, not returned);
    /// returns how many were taken and where the data is among them (an
    /// empty range when only framing was). A decoding body (see
    /// [`Body::decoding`]) keeps the trailer section.
    pub(super) fn take_data(
        &mut self,
        bytes: &[u8],
    ) -> Result<(usize, std::ops::Range<usize>), String> {
        if self.framing != Framing::Chunked {
            let n = self.take(bytes)?;
            return Ok((n, 0..n));
        }
        let mut i = 0;
        while i < bytes.len() && self.chunk != ChunkState::Done {
            if self.chunk == ChunkState::Data {
                let start = i;
                i += self.take_chunk_data(bytes.len() - i);
                return Ok((i, start..i));
            }
            self.step(bytes[i])?;
            i += 1;
        }
        Ok((i, i..i))
    }

    /// Whether the whole body went by.
    pub(super) fn done(&self) -> bool {
        match self.framing {
            Framing::Empty => true,
            Framing::Length(_) => self.remaining == 0,
            Framing::Chunked => self.chunk == ChunkState::Done,
            Framing::UntilClose => false,
        }
    }

    /// Takes the body's bytes from the front of `bytes`; returns how many
    /// belong to it (fewer than given only when the body ended).
    pub(super) fn take(&mut self, bytes: &[u8]) -> Result<usize, String> {
        match self.framing {
            Framing::Empty => Ok(0),
            Framing::UntilClose => Ok(bytes.len()),
            Framing::Length(_) => {
                let n = bytes
                    .len()
                    .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                self.remaining -= n as u64;
                Ok(n)
            }
            Framing::Chunked => self.take_chunked(bytes),
        }
    }

    fn take_chunked(&mut self, bytes: &[u8]) -> Result<usize, String> {
        let mut i = 0;
        while i < bytes.len() && self.chunk != ChunkState::Done {
            if self.chunk == ChunkState::Data {
                i += self.take_chunk_data(bytes.len() - i);
                continue;
            }
            self.step(bytes[i])?;
            i += 1;
        }
        Ok(i)
    }

    /// Takes up to `available` bytes of the current chunk's data; returns
    /// how many.
    fn take_chunk_data(&mut self, available: usize) -> usize {
        let n = available.min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        self.remaining -= n as u64;
        if self.remaining == 0 {
            self.chunk = ChunkState::DataCr;
        }
        n
    }

    /// Moves the chunked framing's state over one byte that is not chunk
    /// data.
    fn step(&mut self, b: u8) -> Result<(), String> {
        use ChunkState::*;
        if let (Some(trailers), TrailerStart | Trailer | TrailerLf | EndLf) =
            (&mut self.trailers, self.chunk)
        {
            if trailers.len() >= MAX_TRAILERS {
                return Err("trailer section too large".into());
            }
            trailers.push(b);
        }
        self.chunk = match (self.chunk, b) {
            (Size { digits }, b) if b.is_ascii_hexdigit() => {
                if digits >= 15 {
                    return Err("chunk size too large".into());
                }
                let d = (b as char).to_digit(16).unwrap_or_default();
                self.remaining = self.remaining * 16 + u64::from(d);
                Size { digits: digits + 1 }
            }
            (Size { digits }, b';' | b' ' | b'\t') if digits > 0 => Extension,
            (Size { digits }, b'\r') if digits > 0 => SizeLf,
            (Extension, b'\r') => SizeLf,
            (Extension, _) => Extension,
            (SizeLf, b'\n') if self.remaining == 0 => TrailerStart,
            (SizeLf, b'\n') => Data,
            (DataCr, b'\r') => DataLf,
            (DataLf, b'\n') => Size { digits: 0 },
            (TrailerStart, b'\r') => EndLf,
            (Trailer, b'\r') => TrailerLf,
            (TrailerStart | Trailer, _) => Trailer,
            (TrailerLf, b'\n') => TrailerStart,
            (EndLf, b'\n') => Done,
            (state, b) => return Err(format!("invalid chunked body at {state:?} ({b:#04x})")),
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunked_body_ends_where_its_last_chunk_and_trailers_end() {
        let body = b"3;x=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nT: 1\r\n\r\nNEXT";
        // Whole, and a byte at a time: the end is found at the same place.
        let mut whole = Body::new(Framing::Chunked);
        assert_eq!(whole.take(body).unwrap(), body.len() - 4);
        assert!(whole.done());
        let mut bytewise = Body::new(Framing::Chunked);
        let mut taken = 0;
        for b in body.chunks(1) {
            if bytewise.done() {
                break;
            }
            taken += bytewise.take(b).unwrap();
        }
        assert_eq!(taken, body.len() - 4);
        let mut bad = Body::new(Framing::Chunked);
        assert!(bad.take(b"zz\r\n").is_err());
        let mut bad_end = Body::new(Framing::Chunked);
        assert!(bad_end.take(b"1\r\naXY").is_err());
    }

    #[test]
    fn a_length_body_takes_what_it_is_owed() {
        let mut body = Body::new(Framing::Length(5));
        assert_eq!(body.take(b"abc").unwrap(), 3);
        assert!(!body.done());
        assert_eq!(body.take(b"deEXTRA").unwrap(), 2);
        assert!(body.done());
    }
}
