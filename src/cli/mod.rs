//! The command line's parts (the binary's side, not the library's).

// The healthcheck's HTTP client.
pub mod healthcheck;
