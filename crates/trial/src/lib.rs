//! dropless-trial: load plus scripted deploy events, and the verdict.
//!
//! It will own scenario files, the event script, the audit of asynchronous
//! work and the report writers (JSON, HTML). Filled by the `dropless trial`
//! issue.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
