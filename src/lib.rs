//! walrust: continuous replication of SQLite databases (WAL mode) to S3-compatible storage, and exact restore.
//!
//! See ARCHITECTURE.md for the data flow and FORMAT.md for the on-storage format.

pub mod cli;
pub mod compact;
pub mod config;
pub mod error;
pub mod hadbp;
pub mod keys;
pub mod log;
pub mod metrics;
pub mod object;
pub mod remote;
pub mod restore;
pub mod sqlite;
pub mod state;
pub mod storage;
pub mod verify;
pub mod wal;
pub mod watch;
pub mod webhook;

pub use error::{Error, Result};
