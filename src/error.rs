//! The crate's error type and the CLI's stable exit codes.

use std::fmt;
use std::io;

use crate::storage::StorageError;

/// Stable process exit codes (documented in README.md).
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// Runtime failure: storage unreachable, I/O error, ...
    pub const FAILURE: i32 = 1;
    /// Bad command line or configuration.
    pub const USAGE: i32 = 2;
    /// The named backup (or point in time) does not exist.
    pub const NOT_FOUND: i32 = 3;
    /// A stored object is corrupt, missing from the chain, or verification failed.
    pub const CORRUPT: i32 = 4;
    /// Another writer owns this backup (fencing), or the remote is ahead of the local database.
    pub const FENCED: i32 = 5;
    /// The output file exists and --force was not given.
    pub const EXISTS: i32 = 6;
}

/// Every error the library returns. The variant is the kind of failure and decides the CLI's exit code
/// ([`Error::exit_code`]); `Display` gives the whole message, context first.
#[derive(Debug)]
pub enum Error {
    /// Bad command line, configuration or API use (e.g. a database added twice). Exit code [`exit::USAGE`].
    Usage(String),
    /// The named backup, point in time or database does not exist. Exit code [`exit::NOT_FOUND`].
    NotFound(String),
    /// Corruption or verification failure; the message names the object.
    Corrupt(String),
    /// Another writer owns this backup (fencing), or the remote is ahead of the local database. Exit code
    /// [`exit::FENCED`].
    Fenced(String),
    /// The output file exists and overwriting was not asked for. Exit code [`exit::EXISTS`].
    Exists(String),
    /// A storage backend failed.
    Storage {
        /// What was being done (may be empty).
        context: String,
        /// The backend's error; [`StorageError::is_transient`] tells whether retrying may help.
        source: StorageError,
    },
    /// A local file-system operation failed.
    Io {
        /// The file or operation involved.
        context: String,
        /// The underlying error.
        source: io::Error,
    },
    /// SQLite failed (opening, reading or checking a database).
    Sqlite {
        /// The database or operation involved.
        context: String,
        /// The underlying error.
        source: rusqlite::Error,
    },
    /// A read raced with a concurrent change (the WAL restarted under a snapshot being read); nothing was kept
    /// and the operation can simply be tried again. Exit code [`exit::FAILURE`].
    Interrupted(String),
    /// Any other failure. Exit code [`exit::FAILURE`].
    Other(String),
}

/// The crate's result type; the error defaults to [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The process exit code for this error (see [`exit`]): the kind's code, [`exit::USAGE`] for a storage
    /// configuration error, [`exit::FAILURE`] for any other storage, I/O, SQLite or other failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) => exit::USAGE,
            Error::NotFound(_) => exit::NOT_FOUND,
            Error::Corrupt(_) => exit::CORRUPT,
            Error::Fenced(_) => exit::FENCED,
            Error::Exists(_) => exit::EXISTS,
            Error::Storage { source: StorageError::Config(_), .. } => exit::USAGE,
            _ => exit::FAILURE,
        }
    }

    /// An [`Error::Io`] with `context` (the file or operation involved).
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io { context: context.into(), source }
    }

    /// An [`Error::Sqlite`] with `context` (the database or operation involved).
    pub fn sqlite(context: impl Into<String>, source: rusqlite::Error) -> Self {
        Error::Sqlite { context: context.into(), source }
    }

    /// Adds a phrase of context in front of the message, keeping the kind (and so the exit code).
    pub fn context(self, ctx: impl fmt::Display) -> Self {
        match self {
            Error::Usage(m) => Error::Usage(format!("{ctx}: {m}")),
            Error::NotFound(m) => Error::NotFound(format!("{ctx}: {m}")),
            Error::Corrupt(m) => Error::Corrupt(format!("{ctx}: {m}")),
            Error::Fenced(m) => Error::Fenced(format!("{ctx}: {m}")),
            Error::Exists(m) => Error::Exists(format!("{ctx}: {m}")),
            Error::Interrupted(m) => Error::Interrupted(format!("{ctx}: {m}")),
            Error::Other(m) => Error::Other(format!("{ctx}: {m}")),
            Error::Io { context, source } => Error::Io { context: format!("{ctx}: {context}"), source },
            Error::Sqlite { context, source } => Error::Sqlite { context: format!("{ctx}: {context}"), source },
            Error::Storage { context, source } => {
                let context = if context.is_empty() { ctx.to_string() } else { format!("{ctx}: {context}") };
                Error::Storage { context, source }
            }
        }
    }

    /// True for failures that may go away by themselves (network, throttling).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Storage { source, .. } => source.is_transient(),
            Error::Interrupted(_) => true,
            _ => false,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(m)
            | Error::NotFound(m)
            | Error::Corrupt(m)
            | Error::Fenced(m)
            | Error::Exists(m)
            | Error::Interrupted(m)
            | Error::Other(m) => f.write_str(m),
            Error::Storage { context, source } if context.is_empty() => write!(f, "{source}"),
            Error::Storage { context, source } => write!(f, "{context}: {source}"),
            Error::Io { context, source } => write!(f, "{context}: {source}"),
            Error::Sqlite { context, source } => write!(f, "{context}: {}", one_line(&source.to_string())),
        }
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl std::error::Error for Error {}

impl From<StorageError> for Error {
    fn from(e: StorageError) -> Self {
        Error::Storage { context: String::new(), source: e }
    }
}
