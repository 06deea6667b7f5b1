//! Integration tests of the `dropless` binary: one module per subcommand.

mod load;
mod trial;
