//! Integration tests of the `dropless` binary: one module per subcommand.

mod fixtures;
mod help;
mod load;
mod serve;
mod trial;
