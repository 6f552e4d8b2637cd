//! An application that embeds walrust: it replicates its own database while it writes, acknowledges an order
//! only once it is in storage (`Replicator::flush`), then proves the backup by restoring and verifying it
//! through the library.
//!
//! ```sh
//! cargo run --example embedded -- file:///tmp/walrust-embedded-backups
//! AWS_ENDPOINT_URL_S3=http://127.0.0.1:8333 cargo run --example embedded -- s3://bucket/prefix
//! ```

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use walrust::{Replicator, RestoreOptions, Target, WatchOptions};

/// What the demo did, for its caller (and the test that runs it).
#[derive(Debug)]
pub struct Summary {
    pub orders: i64,
    pub flushes: u64,
    pub durable_seq: u64,
    pub restored_orders: i64,
    pub verified_objects: usize,
}

fn main() -> ExitCode {
    let location = std::env::args().nth(1).unwrap_or_else(|| "file:///tmp/walrust-embedded-backups".into());
    let dir = std::env::temp_dir().join(format!("walrust-embedded-{}", std::process::id()));
    let result = run(&location, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    match result {
        Ok(s) => {
            println!(
                "{} orders written, {} acknowledged after flush (durable up to seq {}); restored copy has {} orders; \
                 {} objects verified",
                s.orders, s.flushes, s.durable_seq, s.restored_orders, s.verified_objects
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("embedded: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

/// Opens `location` (credentials and endpoint from the environment) and runs the demo in `dir`.
pub fn run(location: &str, dir: &Path) -> walrust::Result<Summary> {
    let replicator = Replicator::open(location)?;
    demo(replicator, dir, &format!("orders-{}", std::process::id()))
}

/// The application: writes orders, acknowledges each batch once durable, then restores and verifies.
pub fn demo(replicator: Replicator, dir: &Path, name: &str) -> walrust::Result<Summary> {
    std::fs::create_dir_all(dir).map_err(|e| walrust::Error::io(dir.display().to_string(), e))?;
    let db = dir.join("app.db");
    let sql = |e| walrust::Error::Sqlite { context: "the application's database".into(), source: e };
    let conn = rusqlite::Connection::open(&db).map_err(sql)?;
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA busy_timeout=5000;
         CREATE TABLE IF NOT EXISTS orders(id INTEGER PRIMARY KEY, item TEXT NOT NULL, qty INTEGER NOT NULL);",
    )
    .map_err(sql)?;

    // A long upload interval: without flush, these orders would wait up to a minute to be shipped.
    let mut opts = WatchOptions::new(name);
    opts.sync_interval = Duration::from_secs(60);
    replicator.add(&db, opts)?;

    let mut flushes = 0;
    let mut durable_seq = 0;
    for batch in 0..10 {
        conn.execute_batch("BEGIN").map_err(sql)?;
        for i in 0..10 {
            conn.execute("INSERT INTO orders(item, qty) VALUES (?1, ?2)", (format!("item-{batch}-{i}"), i + 1))
                .map_err(sql)?;
        }
        conn.execute_batch("COMMIT").map_err(sql)?;
        // Acknowledge the batch only when it would survive losing this machine.
        let durable = replicator.flush(&db, Duration::from_secs(30))?;
        flushes += 1;
        durable_seq = durable.seq;
    }
    let orders: i64 = conn.query_row("SELECT count(*) FROM orders", [], |r| r.get(0)).map_err(sql)?;

    // While replication still runs: what was flushed is already restorable from storage.
    let restored = dir.join("restored.db");
    let ropts = RestoreOptions { output: restored.clone(), force: true, target: Target::Latest, write_state: false };
    walrust::restore(replicator.storage().as_ref(), name, &ropts)?;
    let restored_orders: i64 = rusqlite::Connection::open(&restored)
        .and_then(|c| c.query_row("SELECT count(*) FROM orders", [], |r| r.get(0)))
        .map_err(sql)?;

    let storage = std::sync::Arc::clone(replicator.storage());
    replicator.shutdown()?;
    let report = walrust::verify(storage.as_ref(), name, Target::Latest)?;
    Ok(Summary { orders, flushes, durable_seq, restored_orders, verified_objects: report.objects })
}
