//! Integration tests of the `dropless` binary: one module per subcommand.

mod disk;
mod fixtures;
mod help;
mod load;
mod reload;
mod serve;
mod sessions;
mod trial;
