//! A progress line for long transfers (restore): bytes, rate and ETA, redrawn in place on stderr. Shown only
//! when stderr is a terminal, the transfer has run for a moment, and `--quiet` was not given; scripts and logs
//! get nothing.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Nothing is drawn for transfers shorter than this (`WALRUST_PROGRESS_AFTER_MS` changes it, for tests).
const SHOW_AFTER: Duration = Duration::from_secs(1);
/// Redraw at most this often.
const REDRAW: Duration = Duration::from_millis(200);

pub struct Meter {
    label: String,
    enabled: bool,
    start: Instant,
    show_after: Duration,
    last_draw: Option<Instant>,
}

impl Meter {
    pub fn new(label: &str, quiet: bool) -> Meter {
        let show_after = std::env::var("WALRUST_PROGRESS_AFTER_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis)
            .unwrap_or(SHOW_AFTER);
        Meter {
            label: label.to_string(),
            enabled: !quiet && std::io::stderr().is_terminal(),
            start: Instant::now(),
            show_after,
            last_draw: None,
        }
    }

    /// Records `done` of `total` bytes; redraws when due.
    pub fn update(&mut self, done: u64, total: u64) {
        if !self.enabled {
            return;
        }
        let elapsed = self.start.elapsed();
        if elapsed < self.show_after || self.last_draw.is_some_and(|t| t.elapsed() < REDRAW) {
            return;
        }
        self.last_draw = Some(Instant::now());
        let _ = write!(std::io::stderr(), "\r\x1b[K{}", line(&self.label, done, total, elapsed));
    }

    /// Ends the line, if one was drawn.
    pub fn finish(&mut self, done: u64, total: u64) {
        if self.last_draw.is_some() {
            let line = line(&self.label, done, total, self.start.elapsed());
            let _ = writeln!(std::io::stderr(), "\r\x1b[K{line}");
        }
    }
}

fn line(label: &str, done: u64, total: u64, elapsed: Duration) -> String {
    let rate = done as f64 / elapsed.as_secs_f64().max(0.001);
    let pct = if total == 0 { 100.0 } else { done as f64 * 100.0 / total as f64 };
    let eta = if rate > 0.0 && total > done {
        format!(
            ", ETA {}",
            humantime::format_duration(Duration::from_secs(((total - done) as f64 / rate).ceil() as u64))
        )
    } else {
        String::new()
    };
    format!("{label}: {} of {} ({pct:.0}%), {}/s{eta}", bytes(done), bytes(total), bytes(rate as u64))
}

/// 1536 -> "1.5 KiB".
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_bytes_rate_and_eta() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
        let l = line("restoring app", 50 << 20, 100 << 20, Duration::from_secs(5));
        assert_eq!(l, "restoring app: 50.0 MiB of 100.0 MiB (50%), 10.0 MiB/s, ETA 5s");
    }
}
