//! The check of one move number against the previous one.

/// What one confirmed move number says about its session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Check {
    /// The previous number plus one (or plus up to the number of moves whose
    /// outcome was unknown: a timed-out move may have been applied).
    Ok,
    /// The number went back: the session's state was lost.
    Reset,
    /// The number skipped: a move was applied that the client never sent.
    LostUpdate,
    /// The same number again: a move was not applied, or applied twice
    /// with one answer replayed.
    Duplicate,
}

/// Checks move number `n` after the confirmed `last`, with `unconfirmed`
/// moves sent since whose outcome is unknown.
pub(crate) fn check(last: u64, unconfirmed: u64, n: u64) -> Check {
    if n == 0 || (n == 1 && last >= 1) || n < last {
        // Move 1 again is a session started over, even after one move.
        Check::Reset
    } else if n == last {
        Check::Duplicate
    } else if n > last + 1 + unconfirmed {
        Check::LostUpdate
    } else {
        Check::Ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn move_numbers_are_classified() {
        assert_eq!(check(0, 0, 1), Check::Ok);
        assert_eq!(check(7, 0, 8), Check::Ok);
        assert_eq!(check(7, 0, 3), Check::Reset);
        assert_eq!(check(1, 0, 1), Check::Reset, "started over after one move");
        assert_eq!(check(7, 0, 1), Check::Reset);
        assert_eq!(check(7, 0, 7), Check::Duplicate);
        assert_eq!(check(7, 0, 9), Check::LostUpdate);
        // Two moves timed out: either may have been applied.
        assert_eq!(check(7, 2, 9), Check::Ok);
        assert_eq!(check(7, 2, 10), Check::Ok);
        assert_eq!(check(7, 2, 11), Check::LostUpdate);
    }
}
