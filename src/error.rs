//! The crate's error type and the CLI's stable exit codes.

use std::fmt;
use std::io;

use crate::storage::StorageError;

/// Stable process exit codes (documented in README.md).
pub mod exit {
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

#[derive(Debug)]
pub enum Error {
    Usage(String),
    NotFound(String),
    /// Corruption or verification failure; the message names the object.
    Corrupt(String),
    Fenced(String),
    Exists(String),
    Storage {
        context: String,
        source: StorageError,
    },
    Io {
        context: String,
        source: io::Error,
    },
    Sqlite {
        context: String,
        source: rusqlite::Error,
    },
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
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

    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io { context: context.into(), source }
    }

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
