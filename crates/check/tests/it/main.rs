//! dropless-check against programs whose shutdown is known: the demo's
//! profiles and two backends that misbehave on purpose.
//!
//! The programs are this test binary itself, run again as
//! `it fixture_program --exact` with `DROPLESS_CHECK_FIXTURE` naming the
//! program (see [`fixtures`]).

mod backends;
mod demo;
mod fixtures;

/// Not a test: the entry point of the fixture programs, a no-op unless
/// `DROPLESS_CHECK_FIXTURE` is set.
#[test]
fn fixture_program() {
    fixtures::run_if_asked();
}
