//! Integration tests of the `dropless` binary: one module per subcommand.

mod check;
mod disk;
mod fixtures;
mod help;
mod load;
mod orchestrator;
mod reload;
mod serve;
mod sessions;
mod trial;
mod upgrade;
