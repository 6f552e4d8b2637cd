//! walrust: continuous replication of SQLite databases (WAL mode) to S3-compatible storage, and exact restore.
//!
//! The library is what the `walrust` CLI is built on. It is synchronous (no async runtime): replication runs on
//! one OS thread per database; every other call blocks until done.
//!
//! # API
//!
//! - [`Replicator`] replicates databases from inside an application, exactly as `walrust watch` does.
//!   [`Replicator::open`] a location, [`Replicator::add`] each database (WAL mode) with its [`WatchOptions`]
//!   (its name in storage, intervals); each then ships its commits in the background. [`Replicator::flush`]
//!   waits until everything the database committed before the call is in storage and returns where it stands
//!   ([`Durable`]): acknowledge a write only after it to survive the loss of the machine.
//!   [`Replicator::shutdown`] ships what is committed and stops every database.
//! - [`restore()`] rebuilds a database from storage into a new file: the newest state, a point in time or a
//!   sequence number ([`Target`]), every object's hash and the chain verified and `PRAGMA integrity_check` run
//!   before the file is renamed into place ([`RestoreOptions`]).
//! - [`verify()`] downloads and checks every stored object of a database, then rebuilds a restore point in a
//!   temp file and integrity-checks it.
//! - [`storage`]: [`storage::parse_location`] and [`storage::open`] turn `s3://BUCKET[/PREFIX]` or
//!   `file:///ABS/DIR` into a [`storage::StorageRef`] (S3 credentials, region and endpoint from the
//!   environment); [`restore()`] and [`verify()`] take one, and [`Replicator::storage`] gives the replicator's.
//! - [`compact`] thins a database's backups to a retention policy; [`metrics`] serves Prometheus metrics and a
//!   health check; [`webhook`] sends signed notifications.
//!
//! Every fallible call returns [`Result`]; the kind of an [`Error`] decides the CLI's exit code.
//!
//! ```no_run
//! use std::time::Duration;
//! use walrust::{Replicator, RestoreOptions, Target, WatchOptions};
//!
//! # fn main() -> walrust::Result<()> {
//! let replicator = Replicator::open("s3://my-bucket/backups")?;
//! replicator.add("/var/lib/app/app.db", WatchOptions::new("app"))?;
//! // ... after the application commits: wait until the commit is in storage.
//! let durable = replicator.flush("/var/lib/app/app.db", Duration::from_secs(10))?;
//! println!("durable up to seq {} of generation {:016x}", durable.seq, durable.generation);
//!
//! // Restore the newest state into a new file, then check every stored object.
//! let storage = replicator.storage().clone();
//! let opts =
//!     RestoreOptions { output: "/tmp/app.db".into(), force: false, target: Target::Latest, write_state: false };
//! walrust::restore(storage.as_ref(), "app", &opts)?;
//! let report = walrust::verify(storage.as_ref(), "app", Target::Latest)?;
//! println!("{} objects verified", report.objects);
//! replicator.shutdown()?;
//! # Ok(())
//! # }
//! ```
//!
//! Without a replicator, open the storage directly:
//!
//! ```no_run
//! # fn main() -> walrust::Result<()> {
//! use walrust::storage::{self, OpenOptions};
//! let storage = storage::open(&storage::parse_location("file:///var/backups/walrust")?, &OpenOptions::default())?;
//! let report = walrust::verify(storage.as_ref(), "app", walrust::Target::Latest)?;
//! println!("restore point seq {} verified", report.seq);
//! # Ok(())
//! # }
//! ```
//!
//! `examples/embedded.rs` is a complete application: it acknowledges each batch of orders after
//! [`Replicator::flush`], then restores and verifies its backup through the library
//! (`cargo run --example embedded -- file:///tmp/walrust-embedded-backups`).
//!
//! See ARCHITECTURE.md for the data flow and FORMAT.md for the on-storage format.

#![warn(missing_docs)]

// `#[doc(hidden)]` modules are public only for the test suite and tools (the CLI), not a stable API.
#[doc(hidden)]
pub mod cli;
pub mod compact;
#[doc(hidden)]
pub mod config;
pub mod error;
#[doc(hidden)]
pub mod hadbp;
#[doc(hidden)]
pub mod keys;
#[doc(hidden)]
pub mod log;
pub mod metrics;
#[doc(hidden)]
pub mod notify;
#[doc(hidden)]
pub mod object;
#[doc(hidden)]
pub mod prefetch;
#[doc(hidden)]
pub mod priority;
#[doc(hidden)]
pub mod remote;
pub mod replicate;
pub mod replicator;
pub mod restore;
#[doc(hidden)]
pub mod semaphore;
#[doc(hidden)]
pub mod sqlite;
#[doc(hidden)]
pub mod stack;
#[doc(hidden)]
pub mod state;
pub mod storage;
#[doc(hidden)]
pub mod uploads;
pub mod verify;
#[doc(hidden)]
pub mod wal;
pub mod watch;
pub mod webhook;

pub use error::{Error, Result};
pub use replicator::Replicator;
pub use restore::{restore, RestoreOptions, Target};
pub use verify::verify;
pub use watch::{Durable, WatchOptions};
