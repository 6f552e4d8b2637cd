//! AWS credentials and region, resolved the way the AWS CLI does for the sources walrust supports:
//! environment variables first (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN), then the profile
//! AWS_PROFILE (default `default`) in the shared credentials file (AWS_SHARED_CREDENTIALS_FILE or
//! ~/.aws/credentials) and the config file (AWS_CONFIG_FILE or ~/.aws/config).
//! Region: AWS_REGION, AWS_DEFAULT_REGION, the profile's `region`, else `us-east-1`.
//!
//! Without static credentials, the providers used on servers, in this order (as the AWS SDKs do):
//! web identity (AWS_WEB_IDENTITY_TOKEN_FILE + AWS_ROLE_ARN, via STS AssumeRoleWithWebIdentity; STS endpoint
//! from AWS_ENDPOINT_URL_STS), the ECS/EKS container endpoint (AWS_CONTAINER_CREDENTIALS_RELATIVE_URI or
//! _FULL_URI, with AWS_CONTAINER_AUTHORIZATION_TOKEN[_FILE]), and the EC2 instance metadata service with
//! IMDSv2 tokens (AWS_EC2_METADATA_SERVICE_ENDPOINT; off with AWS_EC2_METADATA_DISABLED=true). Their
//! temporary credentials are fetched when first needed and refreshed five minutes before they expire.
//!
//! Secrets live in [`Secret`], whose Debug and Display never show the value.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::StorageError;

/// A string that must never be printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The value, for signing only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Static credentials. The access key id is not secret (it appears in S3 server logs); the secret and the
/// session token are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AwsCredentials {
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
    /// Where they came from, for `explain` and error messages ("environment", "profile default in ...").
    pub source: String,
}

/// Everything resolved from the environment and the AWS files.
#[derive(Clone, Debug)]
pub struct AwsSettings {
    pub credentials: Option<AwsCredentials>,
    /// Where temporary credentials come from when there are no static ones.
    pub provider: Option<Provider>,
    pub region: String,
}

/// A source of temporary credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Provider {
    WebIdentity { token_file: PathBuf, role_arn: String, session_name: String, sts_endpoint: String },
    Container { url: String, authorization: Option<Secret>, authorization_file: Option<PathBuf> },
    Imds { endpoint: String },
}

/// Temporary credentials and when they stop working (ms since the epoch).
#[derive(Clone, Debug)]
pub struct Temporary {
    pub credentials: AwsCredentials,
    pub expires_ms: Option<u64>,
}

const FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl Provider {
    fn agent() -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(FETCH_TIMEOUT))
            .timeout_connect(Some(std::time::Duration::from_secs(1)))
            .build()
            .new_agent()
    }

    /// Fetches fresh credentials.
    pub fn fetch(&self) -> Result<Temporary, StorageError> {
        let agent = Self::agent();
        match self {
            Provider::WebIdentity { token_file, role_arn, session_name, sts_endpoint } => {
                let token = std::fs::read_to_string(token_file).map_err(|e| {
                    StorageError::Config(format!(
                        "cannot read AWS_WEB_IDENTITY_TOKEN_FILE {}: {e}",
                        token_file.display()
                    ))
                })?;
                let form = [
                    ("Action", "AssumeRoleWithWebIdentity"),
                    ("Version", "2011-06-15"),
                    ("RoleArn", role_arn.as_str()),
                    ("RoleSessionName", session_name.as_str()),
                    ("WebIdentityToken", token.trim()),
                ];
                let body =
                    get_text(agent.post(sts_endpoint.as_str()).send_form(form), "STS AssumeRoleWithWebIdentity")?;
                let field = |t: &str| xml_text(&body, t);
                let (Some(id), Some(secret), Some(token)) =
                    (field("AccessKeyId"), field("SecretAccessKey"), field("SessionToken"))
                else {
                    return Err(StorageError::Auth {
                        code: "AssumeRoleWithWebIdentity".into(),
                        message: "STS answered without credentials".into(),
                    });
                };
                Ok(Temporary {
                    credentials: AwsCredentials {
                        access_key_id: id,
                        secret_access_key: Secret(secret),
                        session_token: Some(Secret(token)),
                        source: format!("web identity ({role_arn})"),
                    },
                    expires_ms: field("Expiration").as_deref().and_then(parse_rfc3339_ms),
                })
            }
            Provider::Container { url, authorization, authorization_file } => {
                let mut req = agent.get(url.as_str());
                let auth = match authorization_file {
                    Some(f) => Some(std::fs::read_to_string(f).map_err(|e| {
                        StorageError::Config(format!(
                            "cannot read AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE {}: {e}",
                            f.display()
                        ))
                    })?),
                    None => authorization.as_ref().map(|s| s.expose().to_string()),
                };
                if let Some(a) = auth {
                    req = req.header("Authorization", a.trim());
                }
                let body = get_text(req.call(), "container credentials endpoint")?;
                json_credentials(&body, "container credentials endpoint")
            }
            Provider::Imds { endpoint } => {
                let token = get_text(
                    agent
                        .put(format!("{endpoint}/latest/api/token"))
                        .header("X-aws-ec2-metadata-token-ttl-seconds", "21600")
                        .send_empty(),
                    "instance metadata token (IMDSv2)",
                )
                .map_err(|e| match e {
                    // The last resort did not answer: most likely not on EC2 at all.
                    StorageError::Transport { .. } => StorageError::Config(format!(
                        "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE \
                         (the EC2 instance metadata service at {endpoint} did not answer; \
                         AWS_EC2_METADATA_DISABLED=true sends requests unsigned)"
                    )),
                    e => e,
                })?;
                let base = format!("{endpoint}/latest/meta-data/iam/security-credentials/");
                let roles = get_text(
                    agent.get(base.as_str()).header("X-aws-ec2-metadata-token", token.trim()).call(),
                    "instance metadata role",
                )?;
                let role = roles.lines().next().map(str::trim).filter(|r| !r.is_empty()).ok_or_else(|| {
                    StorageError::Config("the instance metadata service lists no IAM role for this instance".into())
                })?;
                let body = get_text(
                    agent.get(format!("{base}{role}")).header("X-aws-ec2-metadata-token", token.trim()).call(),
                    "instance metadata credentials",
                )?;
                json_credentials(&body, "instance metadata")
            }
        }
    }
}

fn get_text(
    r: std::result::Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    what: &str,
) -> Result<String, StorageError> {
    let mut resp = r.map_err(|e| StorageError::Transport { message: format!("{what}: {e}") })?;
    let status = resp.status().as_u16();
    let text = resp
        .body_mut()
        .with_config()
        .limit(1 << 20)
        .read_to_string()
        .map_err(|e| StorageError::Transport { message: format!("{what}: {e}") })?;
    match status {
        200..=299 => Ok(text),
        401 | 403 => Err(StorageError::Auth { code: format!("HTTP {status}"), message: format!("{what} refused") }),
        500..=599 => Err(StorageError::Service {
            status,
            code: String::new(),
            message: format!("{what} failed"),
            key: String::new(),
        }),
        _ => Err(StorageError::Config(format!("{what} answered HTTP {status}"))),
    }
}

/// The JSON the container endpoint and IMDS answer. (nanoserde's derive trips clippy::question_mark.)
#[allow(clippy::question_mark)]
mod wire {
    #[derive(nanoserde::DeJson)]
    pub struct JsonCredentials {
        #[nserde(rename = "AccessKeyId")]
        pub access_key_id: String,
        #[nserde(rename = "SecretAccessKey")]
        pub secret_access_key: String,
        #[nserde(rename = "Token")]
        pub token: Option<String>,
        #[nserde(rename = "Expiration")]
        pub expiration: Option<String>,
    }
}
use wire::JsonCredentials;

fn json_credentials(body: &str, source: &str) -> Result<Temporary, StorageError> {
    let c: JsonCredentials = nanoserde::DeJson::deserialize_json(body)
        .map_err(|e| StorageError::Config(format!("{source} answered unreadable credentials: {e}")))?;
    Ok(Temporary {
        credentials: AwsCredentials {
            access_key_id: c.access_key_id,
            secret_access_key: Secret(c.secret_access_key),
            session_token: c.token.map(Secret),
            source: source.to_string(),
        },
        expires_ms: c.expiration.as_deref().and_then(parse_rfc3339_ms),
    })
}

fn xml_text(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let len = xml[start..].find(&format!("</{tag}>"))?;
    Some(xml[start..start + len].trim().replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))
}

fn parse_rfc3339_ms(s: &str) -> Option<u64> {
    let t = humantime::parse_rfc3339_weak(s.trim()).ok()?;
    Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as u64)
}

/// The inputs of resolution, so that tests can supply them without touching the process environment.
pub struct Env<'a> {
    pub var: &'a dyn Fn(&str) -> Option<String>,
    pub home: Option<PathBuf>,
}

impl Env<'_> {
    fn get(&self, name: &str) -> Option<String> {
        (self.var)(name).filter(|v| !v.is_empty())
    }
}

/// Resolves credentials and region from the real process environment.
pub fn resolve() -> Result<AwsSettings, StorageError> {
    let var = |k: &str| std::env::var(k).ok();
    resolve_with(&Env { var: &var, home: std::env::var_os("HOME").map(PathBuf::from) })
}

pub fn resolve_with(env: &Env<'_>) -> Result<AwsSettings, StorageError> {
    let profile = env.get("AWS_PROFILE").unwrap_or_else(|| "default".to_string());
    let explicit_profile = env.get("AWS_PROFILE").is_some();
    let creds_path = env.get("AWS_SHARED_CREDENTIALS_FILE").map(PathBuf::from).or_else(|| aws_file(env, "credentials"));
    let config_path = env.get("AWS_CONFIG_FILE").map(PathBuf::from).or_else(|| aws_file(env, "config"));

    let creds_file = match &creds_path {
        Some(p) => read_ini(p)?,
        None => HashMap::new(),
    };
    let config_file = match &config_path {
        Some(p) => read_ini(p)?,
        None => HashMap::new(),
    };
    // In the credentials file sections are `[name]`; in the config file `[profile name]`, except `[default]`.
    let from_creds = creds_file.get(&profile);
    let from_config = config_file.get(&format!("profile {profile}")).or_else(|| {
        if profile == "default" {
            config_file.get("default")
        } else {
            None
        }
    });
    if explicit_profile && from_creds.is_none() && from_config.is_none() {
        return Err(StorageError::Config(format!(
            "AWS_PROFILE names profile '{profile}', which is in neither {} nor {}",
            shown(&creds_path),
            shown(&config_path)
        )));
    }

    let region = env
        .get("AWS_REGION")
        .or_else(|| env.get("AWS_DEFAULT_REGION"))
        .or_else(|| from_config.and_then(|s| s.get("region").cloned()))
        .or_else(|| from_creds.and_then(|s| s.get("region").cloned()))
        .unwrap_or_else(|| "us-east-1".to_string());

    let credentials = match (env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")) {
        (Some(id), Some(secret)) => Some(AwsCredentials {
            access_key_id: id,
            secret_access_key: Secret(secret),
            session_token: env.get("AWS_SESSION_TOKEN").map(Secret),
            source: "environment".to_string(),
        }),
        (Some(_), None) | (None, Some(_)) => {
            return Err(StorageError::Config(
                "set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or neither".to_string(),
            ));
        }
        (None, None) => {
            let mut found = None;
            for (section, path) in [(from_creds, &creds_path), (from_config, &config_path)] {
                let Some(section) = section else { continue };
                match (section.get("aws_access_key_id"), section.get("aws_secret_access_key")) {
                    (Some(id), Some(secret)) => {
                        found = Some(AwsCredentials {
                            access_key_id: id.clone(),
                            secret_access_key: Secret(secret.clone()),
                            session_token: section.get("aws_session_token").cloned().map(Secret),
                            source: format!("profile {profile} in {}", shown(path)),
                        });
                        break;
                    }
                    (None, None) => {}
                    _ => {
                        return Err(StorageError::Config(format!(
                            "profile {profile} in {} has only one of aws_access_key_id and aws_secret_access_key",
                            shown(path)
                        )));
                    }
                }
            }
            found
        }
    };
    let provider = if credentials.is_some() { None } else { provider_from_env(env, &region) };
    Ok(AwsSettings { credentials, provider, region })
}

fn provider_from_env(env: &Env<'_>, region: &str) -> Option<Provider> {
    if let (Some(token_file), Some(role_arn)) = (env.get("AWS_WEB_IDENTITY_TOKEN_FILE"), env.get("AWS_ROLE_ARN")) {
        return Some(Provider::WebIdentity {
            token_file: PathBuf::from(token_file),
            role_arn,
            session_name: env.get("AWS_ROLE_SESSION_NAME").unwrap_or_else(|| "walrust".into()),
            sts_endpoint: env
                .get("AWS_ENDPOINT_URL_STS")
                .unwrap_or_else(|| format!("https://sts.{region}.amazonaws.com"))
                .trim_end_matches('/')
                .to_string()
                + "/",
        });
    }
    let container_url = env
        .get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
        .map(|rel| format!("http://169.254.170.2{rel}"))
        .or_else(|| env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI"));
    if let Some(url) = container_url {
        return Some(Provider::Container {
            url,
            authorization: env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN").map(Secret),
            authorization_file: env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE").map(PathBuf::from),
        });
    }
    if env.get("AWS_EC2_METADATA_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return None;
    }
    Some(Provider::Imds {
        endpoint: env
            .get("AWS_EC2_METADATA_SERVICE_ENDPOINT")
            .unwrap_or_else(|| "http://169.254.169.254".into())
            .trim_end_matches('/')
            .to_string(),
    })
}

fn aws_file(env: &Env<'_>, name: &str) -> Option<PathBuf> {
    env.home.as_ref().map(|h| h.join(".aws").join(name))
}

fn shown(p: &Option<PathBuf>) -> String {
    p.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "(no home directory)".to_string())
}

type Ini = HashMap<String, HashMap<String, String>>;

/// A missing file is empty; an unreadable one is an error (a silently ignored permission problem would
/// become a confusing auth error later).
fn read_ini(path: &Path) -> Result<Ini, StorageError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(parse_ini(&text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HashMap::new()),
        Err(e) => Err(StorageError::Config(format!("cannot read {}: {e}", path.display()))),
    }
}

/// The subset of INI the AWS files use: `[section]`, `key = value`, `#`/`;` comments. Keys are lowercased.
fn parse_ini(text: &str) -> Ini {
    let mut out: Ini = HashMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.split_whitespace().collect::<Vec<_>>().join(" ");
            out.entry(name.clone()).or_default();
            current = Some(name);
            continue;
        }
        if let (Some(section), Some((k, v))) = (&current, line.split_once('=')) {
            out.entry(section.clone()).or_default().insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn resolve_env(vars: &[(&str, &str)], home: Option<&Path>) -> Result<AwsSettings, StorageError> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let var = move |k: &str| map.get(k).cloned();
        resolve_with(&Env { var: &var, home: home.map(Path::to_path_buf) })
    }

    fn home_with(creds: &str, config: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "walrust-creds-{}-{}",
            std::process::id(),
            super::super::retry::jitter(1 << 40)
        ));
        std::fs::create_dir_all(dir.join(".aws")).unwrap();
        std::fs::write(dir.join(".aws/credentials"), creds).unwrap();
        std::fs::write(dir.join(".aws/config"), config).unwrap();
        dir
    }

    #[test]
    fn environment_wins_and_region_defaults() {
        let s = resolve_env(&[("AWS_ACCESS_KEY_ID", "AKID"), ("AWS_SECRET_ACCESS_KEY", "s3cr3t")], None).unwrap();
        let c = s.credentials.unwrap();
        assert_eq!(c.access_key_id, "AKID");
        assert_eq!(c.secret_access_key.expose(), "s3cr3t");
        assert_eq!(s.region, "us-east-1");
        let s = resolve_env(&[("AWS_DEFAULT_REGION", "eu-west-1")], None).unwrap();
        assert!(s.credentials.is_none());
        assert_eq!(s.region, "eu-west-1");
        assert!(resolve_env(&[("AWS_ACCESS_KEY_ID", "AKID")], None).is_err());
    }

    #[test]
    fn profiles_from_files() {
        let home = home_with(
            "[default]\naws_access_key_id = DEF\naws_secret_access_key = defsecret\n\n[work]\n\
             aws_access_key_id=WORK\naws_secret_access_key=worksecret\naws_session_token = tok\n",
            "[default]\nregion = us-west-2\n[profile work]\nregion = ap-south-1\n",
        );
        let s = resolve_env(&[], Some(&home)).unwrap();
        assert_eq!(s.credentials.as_ref().unwrap().access_key_id, "DEF");
        assert_eq!(s.region, "us-west-2");
        let s = resolve_env(&[("AWS_PROFILE", "work")], Some(&home)).unwrap();
        let c = s.credentials.unwrap();
        assert_eq!((c.access_key_id.as_str(), c.session_token.unwrap().expose()), ("WORK", "tok"));
        assert_eq!(s.region, "ap-south-1");
        let s = resolve_env(&[("AWS_PROFILE", "work"), ("AWS_REGION", "ca-central-1")], Some(&home)).unwrap();
        assert_eq!(s.region, "ca-central-1");
        let e = resolve_env(&[("AWS_PROFILE", "nope")], Some(&home)).unwrap_err();
        assert!(e.to_string().contains("'nope'"), "{e}");
        std::fs::remove_dir_all(home).unwrap();
    }

    /// A one-thread HTTP server answering canned responses by path; records "METHOD PATH" and headers.
    pub(crate) struct Fake {
        pub url: String,
        pub seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    }

    pub(crate) fn fake(routes: Vec<(&'static str, u16, String)>) -> Fake {
        use std::io::{BufRead, BufReader, Read as _, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { break };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request = String::new();
                let mut len = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                    request.push_str(&line);
                }
                let mut body = vec![0u8; len];
                reader.read_exact(&mut body).unwrap();
                request.push_str(&String::from_utf8_lossy(&body));
                let first = request.lines().next().unwrap_or("").to_string();
                let path = first.split_whitespace().nth(1).unwrap_or("").to_string();
                log.lock().unwrap().push(request.clone());
                let (status, text) = routes
                    .iter()
                    .find(|(p, _, _)| path.starts_with(p))
                    .map(|(_, s, t)| (*s, t.clone()))
                    .unwrap_or((404, String::new()));
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                    text.len()
                );
            }
        });
        Fake { url, seen }
    }

    pub(crate) fn in_ms(ms: i64) -> String {
        let now = std::time::SystemTime::now();
        let t = if ms >= 0 {
            now + std::time::Duration::from_millis(ms as u64)
        } else {
            now - std::time::Duration::from_millis((-ms) as u64)
        };
        humantime::format_rfc3339_seconds(t).to_string()
    }

    #[test]
    fn imds_v2_uses_a_session_token() {
        let creds = format!(
            "{{\"Code\":\"Success\",\"LastUpdated\":\"x\",\"Type\":\"AWS-HMAC\",\"AccessKeyId\":\"ASIAIMDS\",\
             \"SecretAccessKey\":\"imdssecret\",\"Token\":\"imdstoken\",\"Expiration\":\"{}\"}}",
            in_ms(3_600_000)
        );
        let f = fake(vec![
            ("/latest/api/token", 200, "TOKEN123".into()),
            ("/latest/meta-data/iam/security-credentials/app-role", 200, creds),
            ("/latest/meta-data/iam/security-credentials/", 200, "app-role\n".into()),
        ]);
        let s = resolve_env(&[("AWS_EC2_METADATA_SERVICE_ENDPOINT", &f.url)], None).unwrap();
        let t = s.provider.unwrap().fetch().unwrap();
        assert_eq!(t.credentials.access_key_id, "ASIAIMDS");
        assert_eq!(t.credentials.session_token.unwrap().expose(), "imdstoken");
        assert!(t.expires_ms.is_some());
        let seen = f.seen.lock().unwrap();
        assert!(
            seen[0].starts_with("PUT /latest/api/token")
                && seen[0].to_lowercase().contains("x-aws-ec2-metadata-token-ttl-seconds")
        );
        assert!(seen[1].to_lowercase().contains("x-aws-ec2-metadata-token: token123"), "{}", seen[1]);
        assert!(resolve_env(&[("AWS_EC2_METADATA_DISABLED", "true")], None).unwrap().provider.is_none());
    }

    #[test]
    fn container_endpoint_with_authorization() {
        let creds = format!(
            "{{\"AccessKeyId\":\"ASIAECS\",\"SecretAccessKey\":\"ecssecret\",\"Token\":\"ecstoken\",\"Expiration\":\"{}\"}}",
            in_ms(3_600_000)
        );
        let f = fake(vec![("/creds", 200, creds)]);
        let url = format!("{}/creds", f.url);
        let s = resolve_env(
            &[("AWS_CONTAINER_CREDENTIALS_FULL_URI", &url), ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "Bearer abc")],
            None,
        )
        .unwrap();
        let t = s.provider.unwrap().fetch().unwrap();
        assert_eq!(t.credentials.access_key_id, "ASIAECS");
        assert!(f.seen.lock().unwrap()[0].to_lowercase().contains("authorization: bearer abc"));
    }

    #[test]
    fn web_identity_via_sts() {
        let xml = format!(
            "<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult><Credentials>\
             <AccessKeyId>ASIAWEB</AccessKeyId><SecretAccessKey>websecret</SecretAccessKey>\
             <SessionToken>webtoken</SessionToken><Expiration>{}</Expiration></Credentials>\
             </AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>",
            in_ms(3_600_000)
        );
        let f = fake(vec![("/", 200, xml)]);
        let dir = std::env::temp_dir().join(format!("walrust-wi-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let token = dir.join("token");
        std::fs::write(&token, "eyJ.jwt.token\n").unwrap();
        let s = resolve_env(
            &[
                ("AWS_WEB_IDENTITY_TOKEN_FILE", token.to_str().unwrap()),
                ("AWS_ROLE_ARN", "arn:aws:iam::123:role/app"),
                ("AWS_ENDPOINT_URL_STS", &f.url),
            ],
            None,
        )
        .unwrap();
        let t = s.provider.unwrap().fetch().unwrap();
        assert_eq!(t.credentials.access_key_id, "ASIAWEB");
        let req = f.seen.lock().unwrap()[0].clone();
        assert!(
            req.starts_with("POST /") && req.contains("AssumeRoleWithWebIdentity") && req.contains("eyJ.jwt.token")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn secrets_never_print() {
        let s = resolve_env(
            &[
                ("AWS_ACCESS_KEY_ID", "AKID"),
                ("AWS_SECRET_ACCESS_KEY", "verysecret"),
                ("AWS_SESSION_TOKEN", "tokentok"),
            ],
            None,
        )
        .unwrap();
        let shown = format!("{s:?} {:?}", s.credentials);
        assert!(!shown.contains("verysecret") && !shown.contains("tokentok"), "{shown}");
        assert!(shown.contains("AKID"));
    }
}
