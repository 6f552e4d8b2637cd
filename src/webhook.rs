//! Webhooks: JSON POSTs for events an operator must act on (a database stopped: fenced, corrupt, replaced; uploads
//! failing for a while), signed with HMAC-SHA256 over the body in `X-Walrust-Signature: sha256=<hex>`.
//!
//! Off the replication path: `notify` only pushes onto a bounded queue (events are dropped, with a log line, when
//! it is full); one thread sends them, retrying with backoff, and gives up on an event after a few attempts.

use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::log::{self, json_string};

const QUEUE: usize = 64;
const ATTEMPTS: u32 = 5;

/// Where and how to send events.
#[derive(Clone)]
pub struct WebhookConfig {
    /// The URL events are POSTed to.
    pub url: String,
    /// HMAC key; never logged.
    pub secret: Option<String>,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &self.url)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A handle to the sender thread; cheap to clone.
#[derive(Clone)]
pub struct Webhooks {
    tx: SyncSender<String>,
    /// Events queued and not yet sent or given up on (see `wait_sent`).
    pending: std::sync::Arc<(std::sync::Mutex<usize>, std::sync::Condvar)>,
}

impl Webhooks {
    /// Starts the sender thread.
    pub fn start(cfg: WebhookConfig) -> std::io::Result<Webhooks> {
        let (tx, rx) = sync_channel::<String>(QUEUE);
        let pending = std::sync::Arc::new((std::sync::Mutex::new(0usize), std::sync::Condvar::new()));
        let done = std::sync::Arc::clone(&pending);
        std::thread::Builder::new().name("walrust-webhooks".into()).stack_size(128 * 1024).spawn(move || {
            let agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(10)))
                .build()
                .new_agent();
            for body in rx {
                send(&agent, &cfg, &body);
                let mut n = done.0.lock().unwrap_or_else(|p| p.into_inner());
                *n = n.saturating_sub(1);
                done.1.notify_all();
            }
        })?;
        Ok(Webhooks { tx, pending })
    }

    /// Waits (at most `timeout`) until every queued event was sent or given up on: a process about to exit
    /// calls this so that the event explaining why is not lost with it.
    pub fn wait_sent(&self, timeout: Duration) {
        let end = std::time::Instant::now() + timeout;
        let mut n = self.pending.0.lock().unwrap_or_else(|p| p.into_inner());
        while *n > 0 {
            let Some(left) = end.checked_duration_since(std::time::Instant::now()) else { return };
            n = match self.pending.1.wait_timeout(n, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// Queues an event; never blocks.
    pub fn notify(&self, event: &str, db: &str, message: &str) {
        let body = format!(
            "{{\"event\":{},\"database\":{},\"message\":{},\"time\":{}}}",
            json_string(event),
            json_string(db),
            json_string(message),
            json_string(&crate::restore::fmt_ms(crate::watch::now_ms()))
        );
        let mut n = self.pending.0.lock().unwrap_or_else(|p| p.into_inner());
        match self.tx.try_send(body) {
            Ok(()) => *n += 1,
            Err(TrySendError::Full(_)) => log::warn(&format!("webhook queue full; dropped the {event} event for {db}")),
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

fn send(agent: &ureq::Agent, cfg: &WebhookConfig, body: &str) {
    for attempt in 1..=ATTEMPTS {
        let mut req = agent.post(cfg.url.as_str()).header("Content-Type", "application/json");
        if let Some(secret) = &cfg.secret {
            req = req.header(
                "X-Walrust-Signature",
                format!("sha256={}", hmac_sha256_hex(secret.as_bytes(), body.as_bytes())),
            );
        }
        match req.send(body) {
            Ok(r) if r.status().is_success() => return,
            Ok(r) => log::warn(&format!("webhook answered HTTP {} (attempt {attempt})", r.status().as_u16())),
            Err(e) => log::warn(&format!("webhook failed (attempt {attempt}): {e}")),
        }
        if attempt < ATTEMPTS {
            std::thread::sleep(Duration::from_millis(200u64 << attempt.min(6)));
        }
    }
    log::warn("webhook: giving up on an event");
}

/// HMAC-SHA256 (RFC 2104), hex.
pub fn hmac_sha256_hex(key: &[u8], msg: &[u8]) -> String {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |b: u8| k.iter().map(|x| x ^ b).collect::<Vec<u8>>();
    let inner = Sha256::new().chain_update(pad(0x36)).chain_update(msg).finalize();
    let outer = Sha256::new().chain_update(pad(0x5c)).chain_update(inner).finalize();
    crate::keys::to_hex(&outer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // RFC 4231 test cases 1 and 2.
        assert_eq!(
            hmac_sha256_hex(&[0x0b; 20], b"Hi There"),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        assert_eq!(
            hmac_sha256_hex(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // A key longer than the block is hashed first (test case 6).
        assert_eq!(
            hmac_sha256_hex(&[0xaa; 131], b"Test Using Larger Than Block-Size Key - Hash Key First"),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }
}
