//! How a request ended: ok, or exactly one failure class.

use std::error::Error as StdError;
use std::fmt;
use std::io;

/// The class of a failed request, as it appears in the report
/// (`http_503`, `refused`, `reset`, `eof`, `timeout`, `tls`, `other`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FailureClass {
    /// A complete response whose status is not expected.
    Http(u16),
    /// The connection was refused.
    Refused,
    /// The connection was reset by the peer (ECONNRESET/EPIPE), or an HTTP/2
    /// stream was reset or refused by a GOAWAY.
    Reset,
    /// The server closed the connection before a complete response.
    Eof,
    /// No complete response within the timeout (or the end-of-run grace).
    Timeout,
    /// The TLS handshake failed.
    Tls,
    /// Anything else (an invalid response, an unexpected body, ...).
    Other,
}

/// The classes every report lists, even at zero.
pub(crate) const STANDARD_CLASSES: [FailureClass; 6] = [
    FailureClass::Refused,
    FailureClass::Reset,
    FailureClass::Eof,
    FailureClass::Timeout,
    FailureClass::Tls,
    FailureClass::Other,
];

/// A failed request: its class, and for `other` what happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Failure {
    pub(crate) class: FailureClass,
    pub(crate) message: Option<String>,
}

impl fmt::Display for FailureClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureClass::Http(code) => write!(f, "http_{code}"),
            FailureClass::Refused => f.write_str("refused"),
            FailureClass::Reset => f.write_str("reset"),
            FailureClass::Eof => f.write_str("eof"),
            FailureClass::Timeout => f.write_str("timeout"),
            FailureClass::Tls => f.write_str("tls"),
            FailureClass::Other => f.write_str("other"),
        }
    }
}

impl Failure {
    pub(crate) fn new(class: FailureClass) -> Self {
        Failure {
            class,
            message: None,
        }
    }

    pub(crate) fn other(message: impl Into<String>) -> Self {
        Failure {
            class: FailureClass::Other,
            message: Some(message.into()),
        }
    }

    /// Classify a connect, TLS or HTTP error by walking its source chain:
    /// the innermost OS error decides, then HTTP/2 and TLS errors, then what
    /// hyper knows about the exchange.
    pub(crate) fn classify(err: &(dyn StdError + 'static)) -> Self {
        let mut source = Some(err);
        while let Some(e) = source {
            if let Some(class) = classify_one(e) {
                return Failure::new(class);
            }
            source = e.source();
        }
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() || h.is_canceled() || h.is_closed() {
                return Failure::new(FailureClass::Eof);
            }
            if h.is_timeout() {
                return Failure::new(FailureClass::Timeout);
            }
        }
        Failure::other(dropless_lifecycle::error_chain(err))
    }
}

fn classify_one(e: &(dyn StdError + 'static)) -> Option<FailureClass> {
    if let Some(io) = e.downcast_ref::<io::Error>() {
        return match io.kind() {
            io::ErrorKind::ConnectionRefused => Some(FailureClass::Refused),
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted => Some(FailureClass::Reset),
            io::ErrorKind::UnexpectedEof => Some(FailureClass::Eof),
            io::ErrorKind::TimedOut => Some(FailureClass::Timeout),
            // `io::Error::source` skips the wrapped error itself, so look at it here.
            _ => io.get_ref().and_then(|inner| classify_one(inner)),
        };
    }
    if let Some(h2) = e.downcast_ref::<h2::Error>() {
        if let Some(io) = h2.get_io() {
            return classify_one(io);
        }
        if h2.is_reset() || h2.is_go_away() {
            return Some(FailureClass::Reset);
        }
    }
    if e.is::<rustls::Error>() {
        return Some(FailureClass::Tls);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_map_to_classes() {
        let class = |kind| Failure::classify(&io::Error::from(kind)).class;
        assert_eq!(
            class(io::ErrorKind::ConnectionRefused),
            FailureClass::Refused
        );
        assert_eq!(class(io::ErrorKind::ConnectionReset), FailureClass::Reset);
        assert_eq!(class(io::ErrorKind::BrokenPipe), FailureClass::Reset);
        assert_eq!(class(io::ErrorKind::UnexpectedEof), FailureClass::Eof);
        assert_eq!(class(io::ErrorKind::TimedOut), FailureClass::Timeout);
        let other = Failure::classify(&io::Error::other("weird"));
        assert_eq!(
            (other.class, other.message.as_deref()),
            (FailureClass::Other, Some("weird"))
        );
    }

    #[test]
    fn tls_errors_inside_io_errors_are_tls() {
        let err = io::Error::new(io::ErrorKind::InvalidData, rustls::Error::DecryptError);
        assert_eq!(Failure::classify(&err).class, FailureClass::Tls);
    }

    #[test]
    fn classes_print_as_report_keys() {
        assert_eq!(FailureClass::Http(503).to_string(), "http_503");
        let keys: Vec<_> = STANDARD_CLASSES.iter().map(|c| c.to_string()).collect();
        assert_eq!(keys, ["refused", "reset", "eof", "timeout", "tls", "other"]);
    }
}
