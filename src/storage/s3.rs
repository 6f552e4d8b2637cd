//! S3 backend: requests signed with rusty-s3 (SigV4 presigned URLs, with the conditional and integrity headers
//! signed too) and sent with one shared ureq agent (connection reuse, explicit timeouts, TLS verified against the
//! webpki roots or AWS_CA_BUNDLE).
//!
//! - Every PUT body goes with its `Content-MD5` (a body cut off in transit is refused, not stored). Bodies up to
//!   [`PART_SIZE`] go in one PUT; larger ones stream through a multipart upload, one part in memory
//!   at a time, each part retried on its own. Create-if-absent sends `If-None-Match: *` on the PUT or on
//!   CompleteMultipartUpload; a 412 is [`PutOutcome::AlreadyExists`].
//! - Error bodies are parsed for `<Code>`; status and code decide the typed error (404 NoSuchKey is
//!   `NotFound`, NoSuchBucket, 401/403 are `Auth`). Messages name the key, never the signed URL (it carries the
//!   session token).
//! - Every request is counted per kind ([`RequestCounts`]), for tests and metrics.

use std::fmt;
use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use md5::Digest;
use rusty_s3::actions::{
    CompleteMultipartUpload, CreateMultipartUpload, DeleteObjectsResponse, ListObjectsV2, ObjectIdentifier,
};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};

use crate::semaphore::Semaphore;

use super::credentials::{self, AwsCredentials, AwsSettings, Provider};
use super::retry::{Breaker, RetryPolicy};
use super::{
    ListPage, ObjectInfo, ObjectReader, OpenOptions, PutOutcome, RequestCounts, Result, Storage, StorageError,
};

/// Size of a multipart part (and the largest body sent as a single PUT). Grows for very large objects so that
/// 10 000 parts are never exceeded.
pub const PART_SIZE: usize = 8 * 1024 * 1024;
const SIGN_EXPIRY: Duration = Duration::from_secs(3600);
const ERROR_BODY_MAX: u64 = 64 * 1024;
const LIST_BODY_MAX: u64 = 16 * 1024 * 1024;

/// Refresh temporary credentials this long before they expire.
const REFRESH_MARGIN_MS: u64 = 5 * 60 * 1000;

/// How requests are signed.
enum CredentialSource {
    /// No credentials found: requests go unsigned (public buckets).
    Anonymous,
    Static(Arc<Credentials>),
    /// Temporary credentials from a provider, with their expiry (ms since the epoch).
    Refreshing {
        provider: Provider,
        current: Mutex<Option<(Arc<Credentials>, Option<u64>)>>,
    },
}

fn to_signing(c: AwsCredentials) -> Credentials {
    match c.session_token {
        Some(t) => Credentials::new_with_token(c.access_key_id, c.secret_access_key.expose(), t.expose()),
        None => Credentials::new(c.access_key_id, c.secret_access_key.expose()),
    }
}

/// `--endpoint`, else AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL; `None` means AWS itself.
pub fn endpoint_or_env(explicit: Option<String>) -> Option<String> {
    let var = |k: &str| std::env::var(k).ok().filter(|s| !s.is_empty());
    explicit.or_else(|| var("AWS_ENDPOINT_URL_S3")).or_else(|| var("AWS_ENDPOINT_URL"))
}

/// The S3 backend: objects under one bucket and key prefix, requests signed with SigV4 and sent through one
/// shared HTTP agent, transient failures retried. Every request is counted ([`S3Storage::counts`]).
pub struct S3Storage {
    bucket: Bucket,
    prefix: String,
    credentials: CredentialSource,
    agent: ureq::Agent,
    retry: RetryPolicy,
    /// Shared by every request of this handle (every database of a watch): see `retry.rs`.
    breaker: Breaker,
    endpoint: String,
    counts: Arc<Counters>,
    /// Requests in flight at once through this handle (every database of a watch shares it): each connection
    /// holds buffers, and a thousand databases uploading at the same moment once held 777 connections and
    /// 430 MiB. A database waiting here keeps its frames in its WAL: back-pressure, not memory.
    in_flight: Semaphore,
}

/// How long a conditional multipart upload waits after completing before it checks it won (see there).
const RACE_SETTLE: Duration = Duration::from_millis(200);
/// See `S3Storage::in_flight`; also the most idle connections kept for reuse.
const MAX_IN_FLIGHT: usize = 16;
/// ureq's default is 128 KiB each way per connection; S3 answers carry small headers and bodies stream through.
const CONNECTION_BUFFER: usize = 16 * 1024;

#[derive(Default)]
struct Counters {
    get: AtomicU64,
    put: AtomicU64,
    list: AtomicU64,
    delete: AtomicU64,
    other: AtomicU64,
}

impl fmt::Debug for S3Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Storage")
            .field("bucket", &self.bucket.name())
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.bucket.region())
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Get,
    Put,
    List,
    Delete,
    Other,
}

/// A request body: nothing, or bytes already in memory (S3 needs a Content-Length; bodies are never chunked).
#[derive(Clone, Copy)]
enum Body<'a> {
    Empty,
    Bytes(&'a [u8]),
}

impl S3Storage {
    /// Resolves endpoint, region and credentials from `opts` and the environment.
    pub fn open(bucket: &str, prefix: &str, opts: &OpenOptions) -> Result<Self> {
        let settings = credentials::resolve()?;
        let endpoint = endpoint_or_env(opts.endpoint.clone());
        Self::with_settings(bucket, prefix, endpoint.as_deref(), settings, opts.retry.clone())
    }

    /// Like [`S3Storage::open`], with the region and credentials in `settings` and `endpoint` given rather than
    /// read from the environment. `None` means AWS itself (virtual-hosted-style URLs unless the bucket name holds
    /// a `.`); a custom endpoint (`http://HOST` or `https://HOST`) gets path-style URLs. Sends no request.
    pub fn with_settings(
        bucket: &str,
        prefix: &str,
        endpoint: Option<&str>,
        settings: AwsSettings,
        retry: RetryPolicy,
    ) -> Result<Self> {
        // Custom endpoints (MinIO, SeaweedFS, R2...) get path-style URLs; AWS gets virtual-hosted style unless
        // the bucket name cannot be a host label (dots break TLS names).
        let (endpoint, style) = match endpoint {
            Some(e) => (e.trim_end_matches('/').to_string(), UrlStyle::Path),
            None => {
                let style = if bucket.contains('.') { UrlStyle::Path } else { UrlStyle::VirtualHost };
                (format!("https://s3.{}.amazonaws.com", settings.region), style)
            }
        };
        let https = if let Some(rest) = endpoint.strip_prefix("https://") {
            !rest.is_empty()
        } else if endpoint.strip_prefix("http://").is_some_and(|r| !r.is_empty()) {
            false
        } else {
            return Err(StorageError::Config(format!(
                "invalid endpoint '{endpoint}': expected http://HOST or https://HOST"
            )));
        };
        let url = endpoint.parse().map_err(|e| StorageError::Config(format!("invalid endpoint '{endpoint}': {e}")))?;
        let bucket_handle = Bucket::new(url, style, bucket.to_string(), settings.region.clone())
            .map_err(|e| StorageError::Config(format!("invalid bucket '{bucket}' for endpoint {endpoint}: {e}")))?;
        let credentials = match (settings.credentials, settings.provider) {
            (Some(c), _) => CredentialSource::Static(Arc::new(to_signing(c))),
            (None, Some(provider)) => CredentialSource::Refreshing { provider, current: Mutex::new(None) },
            (None, None) => CredentialSource::Anonymous,
        };
        Ok(S3Storage {
            bucket: bucket_handle,
            prefix: prefix.to_string(),
            credentials,
            agent: build_agent(https, std::env::var_os("AWS_CA_BUNDLE").filter(|p| !p.is_empty()).as_deref())?,
            retry,
            breaker: Breaker::default(),
            endpoint,
            counts: Arc::new(Counters::default()),
            in_flight: Semaphore::new(MAX_IN_FLIGHT),
        })
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// The credentials to sign with now; temporary ones are refreshed five minutes before they expire.
    fn creds(&self) -> Result<Option<Arc<Credentials>>> {
        match &self.credentials {
            CredentialSource::Anonymous => Ok(None),
            CredentialSource::Static(c) => Ok(Some(Arc::clone(c))),
            CredentialSource::Refreshing { provider, current } => {
                let mut cur = current.lock().unwrap_or_else(|p| p.into_inner());
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0);
                let fresh = matches!(&*cur, Some((_, exp)) if exp.is_none_or(|e| e > now + REFRESH_MARGIN_MS));
                if !fresh {
                    let t = provider.fetch()?;
                    *cur = Some((Arc::new(to_signing(t.credentials)), t.expires_ms));
                }
                Ok(cur.as_ref().map(|(c, _)| Arc::clone(c)))
            }
        }
    }

    fn count(&self, kind: Kind) {
        let c = &self.counts;
        let counter = match kind {
            Kind::Get => &c.get,
            Kind::Put => &c.put,
            Kind::List => &c.list,
            Kind::Delete => &c.delete,
            Kind::Other => &c.other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Sends one signed request. Non-2xx answers become typed errors (the body is read for the S3 error code),
    /// except the statuses in `pass`, which are returned to the caller.
    fn send(
        &self,
        kind: Kind,
        signed: Signed,
        body: Body<'_>,
        key: &str,
        pass: &[u16],
    ) -> Result<ureq::http::Response<ureq::Body>> {
        self.count(kind);
        let _permit = self.in_flight.acquire();
        let mut req = ureq::http::Request::builder().method(signed.method).uri(signed.url.as_str());
        for (name, value) in &signed.headers {
            req = req.header(*name, value.as_str());
        }
        let sent = match body {
            Body::Empty => {
                let req = req.body(()).map_err(|e| StorageError::Config(format!("bad request for {key}: {e}")))?;
                self.agent.run(req)
            }
            Body::Bytes(b) => {
                let req = req.body(b).map_err(|e| StorageError::Config(format!("bad request for {key}: {e}")))?;
                self.agent.run(req)
            }
        };
        let mut resp = sent.map_err(|e| transport_error(e, &self.endpoint))?;
        let status = resp.status().as_u16();
        if (200..300).contains(&status) || pass.contains(&status) {
            return Ok(resp);
        }
        let text =
            resp.body_mut().with_config().limit(ERROR_BODY_MAX).lossy_utf8(true).read_to_string().unwrap_or_default();
        Err(status_error(status, &text, self.bucket.name(), key))
    }

    fn put_single(&self, key: &str, data: &[u8], if_absent: bool) -> Result<PutOutcome> {
        let full = self.full_key(key);
        let md5 = content_md5(data);
        self.retry.run_with(Some(&self.breaker), || {
            let c = self.creds()?;
            let mut headers = if_none_match(if_absent);
            headers.push(md5.clone());
            let a = sign(self.bucket.put_object(c.as_deref(), &full), headers);
            let resp = self.send(Kind::Put, a, Body::Bytes(data), key, &[412])?;
            Ok(if resp.status().as_u16() == 412 { PutOutcome::AlreadyExists } else { PutOutcome::Created })
        })
    }

    fn put_body(&self, key: &str, body: &mut dyn Read, if_absent: bool) -> Result<PutOutcome> {
        // Only as much memory as the body needs: most objects are a few KiB (a zero-filled 8 MiB buffer per
        // upload, kept by the allocator, once cost 8 MiB per database uploading at that moment).
        let mut buf = Vec::new();
        Read::take(&mut *body, PART_SIZE as u64).read_to_end(&mut buf).map_err(|e| read_error(key, e))?;
        if buf.len() < PART_SIZE {
            return self.put_single(key, &buf, if_absent);
        }
        self.put_multipart(key, body, buf, if_absent)
    }

    fn put_multipart(&self, key: &str, body: &mut dyn Read, mut buf: Vec<u8>, if_absent: bool) -> Result<PutOutcome> {
        let full = self.full_key(key);
        let upload_id = self.retry.run_with(Some(&self.breaker), || {
            let c = self.creds()?;
            let a = sign(self.bucket.create_multipart_upload(c.as_deref(), &full), Vec::new());
            let mut resp = self.send(Kind::Other, a, Body::Empty, key, &[])?;
            let text = read_small(&mut resp, key, LIST_BODY_MAX)?;
            let parsed = CreateMultipartUpload::parse_response(&text).map_err(|e| bad_xml(key, e))?;
            Ok(parsed.upload_id().to_string())
        })?;
        let result = self.upload_parts_and_complete(key, &full, &upload_id, body, &mut buf, if_absent);
        if !matches!(result, Ok(PutOutcome::Created)) {
            // Best effort: an upload left behind costs storage until the bucket's lifecycle rule removes it.
            let _ = self.retry.run_with(Some(&self.breaker), || {
                let c = self.creds()?;
                let a = sign(self.bucket.abort_multipart_upload(c.as_deref(), &full, &upload_id), Vec::new());
                self.send(Kind::Delete, a, Body::Empty, key, &[404]).map(|_| ())
            });
        }
        result
    }

    fn upload_parts_and_complete(
        &self,
        key: &str,
        full: &str,
        upload_id: &str,
        body: &mut dyn Read,
        buf: &mut Vec<u8>,
        if_absent: bool,
    ) -> Result<PutOutcome> {
        let mut etags: Vec<String> = Vec::new();
        let mut len = buf.len();
        loop {
            let part_number = u16::try_from(etags.len() + 1)
                .ok()
                .filter(|n| *n <= 10_000)
                .ok_or_else(|| StorageError::Config(format!("{key}: object too large for a multipart upload")))?;
            let data = &buf[..len];
            let md5 = content_md5(data);
            let etag = self.retry.run_with(Some(&self.breaker), || {
                let c = self.creds()?;
                let a = sign(self.bucket.upload_part(c.as_deref(), full, part_number, upload_id), vec![md5.clone()]);
                let resp = self.send(Kind::Put, a, Body::Bytes(data), key, &[])?;
                resp.headers()
                    .get("etag")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
                    .ok_or_else(|| service(200, "MissingETag", "upload part answered without an ETag", key))
            })?;
            etags.push(etag);
            // Parts grow after every 1000 so that 10 000 parts reach far beyond any SQLite database.
            let size = PART_SIZE * (1 + etags.len() / 1000);
            buf.resize(size, 0);
            len = super::read_full(body, &mut buf[..]).map_err(|e| read_error(key, e))?;
            if len == 0 {
                break;
            }
        }
        buf.clear();
        buf.shrink_to_fit();
        self.retry.run_with(Some(&self.breaker), || {
            let c = self.creds()?;
            let parts = || etags.iter().map(String::as_str);
            let xml = CompleteMultipartUpload::body(self.bucket.complete_multipart_upload(
                c.as_deref(),
                full,
                upload_id,
                parts(),
            ));
            let a = self.bucket.complete_multipart_upload(c.as_deref(), full, upload_id, parts());
            let mut resp =
                self.send(Kind::Other, sign(a, if_none_match(if_absent)), Body::Bytes(xml.as_bytes()), key, &[412])?;
            if resp.status().as_u16() == 412 {
                return Ok(PutOutcome::AlreadyExists);
            }
            // S3 may answer 200 and still report an error in the body.
            let text = read_small(&mut resp, key, ERROR_BODY_MAX)?;
            if text.contains("<Error>") {
                return Err(status_error(500, &text, self.bucket.name(), key));
            }
            // Some stores let two racing conditional completes both succeed (SeaweedFS 4.48 under load, about one
            // race in twenty): the later one replaced the earlier. The writer whose upload the object now is
            // wins; the other is told the object already existed. The look waits a moment so that a racing
            // complete has landed (multipart objects are large and rare: snapshots over 8 MiB).
            if if_absent {
                std::thread::sleep(RACE_SETTLE);
                if let (Some(ours), Ok(Some(now))) = (etag_in(&text), self.head_etag(key, full)) {
                    if ours != now {
                        return Ok(PutOutcome::AlreadyExists);
                    }
                }
            }
            Ok(PutOutcome::Created)
        })
    }

    /// The object's ETag (quotes removed), None when it does not exist or has none.
    fn head_etag(&self, key: &str, full: &str) -> Result<Option<String>> {
        let c = self.creds()?;
        let a = sign(self.bucket.head_object(c.as_deref(), full), Vec::new());
        let resp = self.send(Kind::Other, a, Body::Empty, key, &[404])?;
        if resp.status().as_u16() == 404 {
            return Ok(None);
        }
        Ok(resp.headers().get("etag").and_then(|v| v.to_str().ok()).map(unquote).filter(|e| !e.is_empty()))
    }

    /// Counts of requests sent so far.
    pub fn counts(&self) -> RequestCounts {
        let c = &self.counts;
        RequestCounts {
            get: c.get.load(Ordering::Relaxed),
            put: c.put.load(Ordering::Relaxed),
            list: c.list.load(Ordering::Relaxed),
            delete: c.delete.load(Ordering::Relaxed),
            other: c.other.load(Ordering::Relaxed),
        }
    }

    fn get_with_range(&self, key: &str, range: Option<(u64, u64)>) -> Result<ObjectReader> {
        let full = self.full_key(key);
        let resp = self.retry.run_with(Some(&self.breaker), || {
            let c = self.creds()?;
            let headers = match range {
                Some((offset, len)) => vec![("range", format!("bytes={}-{}", offset, offset + len.max(1) - 1))],
                None => Vec::new(),
            };
            self.send(Kind::Get, sign(self.bucket.get_object(c.as_deref(), &full), headers), Body::Empty, key, &[])
        })?;
        let status = resp.status().as_u16();
        let mut reader: ObjectReader = Box::new(resp.into_body().into_with_config().limit(u64::MAX).reader());
        if let Some((offset, len)) = range {
            // A server that ignores Range answers 200 with the whole object: skip to the offset ourselves.
            if status == 200 && offset > 0 {
                io::copy(&mut (&mut reader).take(offset), &mut io::sink()).map_err(|e| read_error(key, e))?;
            }
            return Ok(Box::new(reader.take(len)));
        }
        Ok(reader)
    }
}

impl Storage for S3Storage {
    fn put(&self, key: &str, body: &mut dyn Read) -> Result<()> {
        self.put_body(key, body, false).map(|_| ())
    }

    fn put_if_absent(&self, key: &str, body: &mut dyn Read) -> Result<PutOutcome> {
        self.put_body(key, body, true)
    }

    fn get(&self, key: &str) -> Result<ObjectReader> {
        self.get_with_range(key, None)
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<ObjectReader> {
        self.get_with_range(key, Some((offset, len)))
    }

    fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        delimiter: bool,
        token: Option<&str>,
    ) -> Result<ListPage> {
        let full_prefix = self.full_key(prefix);
        let full_start = start_after.map(|s| self.full_key(s));
        let parsed = self.retry.run_with(Some(&self.breaker), || {
            let c = self.creds()?;
            let mut a = self.bucket.list_objects_v2(c.as_deref());
            a.with_prefix(full_prefix.as_str());
            a.with_max_keys(super::LIST_PAGE_KEYS_MAX);
            if let Some(s) = &full_start {
                a.with_start_after(s.as_str());
            }
            if delimiter {
                a.with_delimiter("/");
            }
            if let Some(t) = token {
                a.with_continuation_token(t);
            }
            let mut resp = self.send(Kind::List, sign(a, Vec::new()), Body::Empty, prefix, &[])?;
            let text = read_small(&mut resp, prefix, LIST_BODY_MAX)?;
            ListObjectsV2::parse_response(&text).map_err(|e| bad_xml(prefix, e))
        })?;
        let strip = |k: String| -> Result<String> {
            match k.strip_prefix(self.prefix.as_str()) {
                Some(rest) => Ok(rest.to_string()),
                None => {
                    Err(service(200, "BadListing", &format!("listing returned a key outside the prefix: {k}"), prefix))
                }
            }
        };
        let mut page = ListPage::default();
        for c in parsed.contents {
            page.objects.push(ObjectInfo { size: c.size.unwrap_or(0), key: strip(c.key)? });
        }
        for p in parsed.common_prefixes {
            page.common_prefixes.push(strip(p.prefix)?);
        }
        page.next = parsed.next_continuation_token;
        Ok(page)
    }

    fn delete_many(&self, keys: &[String]) -> Result<()> {
        for batch in keys.chunks(super::DELETE_BATCH_KEYS_MAX) {
            let ids: Vec<ObjectIdentifier> = batch.iter().map(|k| ObjectIdentifier::new(self.full_key(k))).collect();
            let first = batch.first().map(String::as_str).unwrap_or("");
            let parsed = self.retry.run_with(Some(&self.breaker), || {
                let c = self.creds()?;
                // Quiet mode: the answer lists only the keys that failed.
                let mut body = self.bucket.delete_objects(c.as_deref(), ids.iter());
                body.set_quiet(true);
                let (xml, md5) = body.body_with_md5();
                let a = sign(self.bucket.delete_objects(c.as_deref(), ids.iter()), vec![("content-md5", md5)]);
                let mut resp = self.send(Kind::Delete, a, Body::Bytes(xml.as_bytes()), first, &[])?;
                let text = read_small(&mut resp, first, LIST_BODY_MAX)?;
                DeleteObjectsResponse::parse(&text).map_err(|e| bad_xml(first, e))
            })?;
            if let Some(e) = parsed.errors.into_iter().find(|e| e.code != "NoSuchKey") {
                let key = e.key.strip_prefix(self.prefix.as_str()).unwrap_or(&e.key).to_string();
                return Err(status_error_code(0, &e.code, &e.message, self.bucket.name(), &key));
            }
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("s3://{}/{}", self.bucket.name(), self.prefix)
    }

    fn request_counts(&self) -> RequestCounts {
        self.counts()
    }
}

/// A signed request, ready to send: rusty-s3 signs the URL and the headers given here, which must then be sent
/// exactly as signed.
struct Signed {
    method: &'static str,
    url: String,
    headers: Vec<(&'static str, String)>,
}

fn sign<'a, A: S3Action<'a>>(mut action: A, headers: Vec<(&'static str, String)>) -> Signed {
    for (name, value) in &headers {
        action.headers_mut().insert(*name, value.clone());
    }
    let method = match A::METHOD {
        rusty_s3::Method::Head => "HEAD",
        rusty_s3::Method::Get => "GET",
        rusty_s3::Method::Post => "POST",
        rusty_s3::Method::Put => "PUT",
        rusty_s3::Method::Delete => "DELETE",
    };
    Signed { method, url: action.sign(SIGN_EXPIRY).to_string(), headers }
}

/// The shared agent. For https endpoints the roots are webpki's, or only the certificates in `ca_bundle`
/// (AWS_CA_BUNDLE) when given, like the AWS CLI.
fn build_agent(https: bool, ca_bundle: Option<&std::ffi::OsStr>) -> Result<ureq::Agent> {
    let mut cfg = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(10)))
        .timeout_resolve(Some(Duration::from_secs(10)))
        .timeout_per_read(Some(Duration::from_secs(30)))
        .timeout_per_write(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .max_idle_connections(MAX_IN_FLIGHT)
        .max_idle_connections_per_host(MAX_IN_FLIGHT)
        .input_buffer_size(CONNECTION_BUFFER)
        .output_buffer_size(CONNECTION_BUFFER)
        .max_idle_age(Duration::from_secs(30))
        .user_agent(concat!("walrust/", env!("CARGO_PKG_VERSION")));
    if https {
        if let Some(path) = ca_bundle {
            let shown = std::path::Path::new(path).display().to_string();
            let pem = std::fs::read(path)
                .map_err(|e| StorageError::Config(format!("cannot read AWS_CA_BUNDLE {shown}: {e}")))?;
            let mut certs = Vec::new();
            for item in ureq::tls::parse_pem(&pem) {
                match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c),
                    Ok(_) => {}
                    Err(e) => return Err(StorageError::Config(format!("AWS_CA_BUNDLE {shown}: {e}"))),
                }
            }
            if certs.is_empty() {
                return Err(StorageError::Config(format!("AWS_CA_BUNDLE {shown} holds no certificate")));
            }
            let tls = ureq::tls::TlsConfig::builder().root_certs(ureq::tls::RootCerts::new_with_certs(&certs)).build();
            cfg = cfg.tls_config(tls);
        }
    }
    Ok(cfg.build().new_agent())
}

/// The `Content-MD5` header of a body. The store checks the body against it, so a PUT cut off in transit is
/// refused instead of kept (SeaweedFS keeps an empty object when the client dies right after the headers;
/// Content-Length alone does not stop it). Content-MD5 rather than x-amz-checksum-sha256: every S3-compatible
/// store knows it, and Backblaze B2 refuses the other.
fn content_md5(body: &[u8]) -> (&'static str, String) {
    ("content-md5", base64(&md5::Md5::digest(body)))
}

/// Standard base64 with padding (RFC 4648), for Content-MD5.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn if_none_match(if_absent: bool) -> Vec<(&'static str, String)> {
    if if_absent {
        vec![("if-none-match", "*".to_string())]
    } else {
        Vec::new()
    }
}

/// An ETag without its quotes (plain or XML-escaped).
fn unquote(etag: &str) -> String {
    etag.replace("&quot;", "").replace("&#34;", "").replace('"', "").trim().to_string()
}

/// The `<ETag>` of a CompleteMultipartUpload answer.
fn etag_in(xml: &str) -> Option<String> {
    let start = xml.find("<ETag>")? + "<ETag>".len();
    let end = start + xml[start..].find("</ETag>")?;
    Some(unquote(&xml[start..end])).filter(|e| !e.is_empty())
}

fn read_small(resp: &mut ureq::http::Response<ureq::Body>, key: &str, limit: u64) -> Result<String> {
    resp.body_mut().with_config().limit(limit).read_to_string().map_err(|e| StorageError::Transport {
        message: format!("reading the answer for {key}: {}", scrub(&e.to_string())),
    })
}

fn read_error(key: &str, e: io::Error) -> StorageError {
    StorageError::Io { path: format!("body of {key}"), source: e }
}

fn bad_xml(key: &str, e: impl fmt::Display) -> StorageError {
    service(200, "MalformedResponse", &format!("unparsable XML answer: {e}"), key)
}

fn service(status: u16, code: &str, message: &str, key: &str) -> StorageError {
    StorageError::Service { status, code: code.to_string(), message: message.to_string(), key: key.to_string() }
}

/// A failure before any HTTP status: connection refused/reset, timeouts, DNS, TLS.
fn transport_error(e: ureq::Error, endpoint: &str) -> StorageError {
    let message = scrub(&e.to_string());
    match e {
        ureq::Error::Tls(_) | ureq::Error::Pem(_) | ureq::Error::Rustls(_) => StorageError::Config(format!(
            "tls error talking to {endpoint}: {message} (a private CA needs AWS_CA_BUNDLE)"
        )),
        ureq::Error::BadUri(_) | ureq::Error::Http(_) => {
            StorageError::Config(format!("bad request to {endpoint}: {message}"))
        }
        _ => StorageError::Transport { message: format!("{endpoint}: {message}") },
    }
}

/// Removes anything that looks like a query string (signed URLs carry the session token).
fn scrub(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut skipping = false;
    for ch in s.chars() {
        if ch == '?' {
            skipping = true;
            out.push_str("?…");
            continue;
        }
        if skipping && (ch.is_whitespace() || ch == '"' || ch == '\'' || ch == ')') {
            skipping = false;
        }
        if !skipping {
            out.push(ch);
        }
    }
    out
}

/// The text between `<tag>` and `</tag>`, XML entities decoded.
fn xml_field(xml: &str, tag: &str) -> String {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let Some(start) = xml.find(&open).map(|i| i + open.len()) else { return String::new() };
    let Some(len) = xml[start..].find(&close) else { return String::new() };
    xml[start..start + len]
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// Maps an HTTP error answer to a typed error from its status and S3 error code.
fn status_error(status: u16, body: &str, bucket: &str, key: &str) -> StorageError {
    let code = xml_field(body, "Code");
    let message = xml_field(body, "Message");
    status_error_code(status, &code, &message, bucket, key)
}

fn status_error_code(status: u16, code: &str, message: &str, bucket: &str, key: &str) -> StorageError {
    let message: String = scrub(message).chars().take(300).collect();
    match (status, code) {
        (_, "NoSuchBucket") => StorageError::NoSuchBucket { bucket: bucket.to_string() },
        (_, "NoSuchKey") | (404, "") => StorageError::NotFound { key: key.to_string() },
        (
            _,
            "AccessDenied"
            | "SignatureDoesNotMatch"
            | "InvalidAccessKeyId"
            | "ExpiredToken"
            | "InvalidToken"
            | "TokenRefreshRequired"
            | "AllAccessDisabled"
            | "AccountProblem"
            | "InvalidSecurity",
        )
        | (401 | 403, _) => StorageError::Auth {
            code: if code.is_empty() { format!("HTTP {status}") } else { code.to_string() },
            message,
        },
        _ => StorageError::Service { status, code: code.to_string(), message, key: key.to_string() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        let cases =
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE=")];
        for (plain, encoded) in cases {
            assert_eq!(base64(plain.as_bytes()), encoded, "{plain:?}");
        }
        assert_eq!(base64(&[0xfb, 0xff, 0xfe]), "+//+");
        // Content-MD5 of an empty body and of RFC 1321's "abc".
        assert_eq!(base64(&md5::Md5::digest(b"")), "1B2M2Y8AsgTpgAmY7PhCfg==");
        assert_eq!(base64(&md5::Md5::digest(b"abc")), "kAFQmDzST7DWlj99KOF/cg==");
    }

    #[test]
    fn errors_are_typed_from_status_and_code() {
        let xml =
            |c: &str| format!("<?xml version=\"1.0\"?><Error><Code>{c}</Code><Message>m &amp; n</Message></Error>");
        assert!(matches!(status_error(404, &xml("NoSuchKey"), "b", "k"), StorageError::NotFound { .. }));
        assert!(matches!(status_error(404, "", "b", "k"), StorageError::NotFound { .. }));
        assert!(matches!(status_error(404, &xml("NoSuchBucket"), "b", "k"), StorageError::NoSuchBucket { .. }));
        let e = status_error(403, &xml("SignatureDoesNotMatch"), "b", "k");
        assert!(
            matches!(&e, StorageError::Auth { code, message } if code == "SignatureDoesNotMatch" && message == "m & n")
        );
        assert!(!e.is_transient());
        let e = status_error(503, &xml("SlowDown"), "b", "k");
        assert!(e.is_transient());
        let e = status_error(400, &xml("InvalidArgument"), "b", "k");
        assert!(!e.is_transient() && e.to_string().contains("InvalidArgument"));
    }

    #[test]
    fn ca_bundle_is_read_and_checked() {
        let dir = std::env::temp_dir().join(format!("walrust-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        let e = build_agent(true, Some(missing.as_os_str())).unwrap_err();
        assert!(e.to_string().contains("cannot read AWS_CA_BUNDLE"), "{e}");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = build_agent(true, Some(empty.as_os_str())).unwrap_err();
        assert!(e.to_string().contains("holds no certificate"), "{e}");
        // The system bundle parses; plain http ignores the variable.
        for system in ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"] {
            if std::path::Path::new(system).exists() {
                build_agent(true, Some(std::ffi::OsStr::new(system))).unwrap();
            }
        }
        build_agent(false, Some(missing.as_os_str())).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn temporary_credentials_are_refreshed_before_they_expire() {
        use crate::storage::credentials::tests::{fake, in_ms};
        let body = |ms: i64| {
            format!(
                "{{\"AccessKeyId\":\"ASIA\",\"SecretAccessKey\":\"s\",\"Token\":\"t\",\"Expiration\":\"{}\"}}",
                in_ms(ms)
            )
        };
        for (expires_in_ms, fetches) in [(3_600_000i64, 1usize), (60_000, 3)] {
            let f = fake(vec![("/creds", 200, body(expires_in_ms))]);
            let provider =
                Provider::Container { url: format!("{}/creds", f.url), authorization: None, authorization_file: None };
            let settings = AwsSettings { credentials: None, provider: Some(provider), region: "us-east-1".into() };
            let s =
                S3Storage::with_settings("b", "", Some("http://127.0.0.1:9"), settings, RetryPolicy::none()).unwrap();
            for _ in 0..3 {
                assert!(s.creds().unwrap().is_some());
            }
            assert_eq!(f.seen.lock().unwrap().len(), fetches, "expiring in {expires_in_ms} ms");
        }
    }

    #[test]
    fn scrub_removes_query_strings() {
        let s = scrub("error for http://h/b/k?X-Amz-Security-Token=SECRET&X-Amz-Signature=abc: reset");
        assert!(!s.contains("SECRET") && s.contains("http://h/b/k"), "{s}");
    }
}
