//! walrust: continuous replication of SQLite databases (WAL mode) to S3-compatible storage, and exact restore.
//!
//! See ARCHITECTURE.md for the data flow and FORMAT.md for the on-storage format.

pub mod storage;
