//! AWS credentials and region, resolved the way the AWS CLI does for the sources walrust supports:
//! environment variables first (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN), then the profile
//! AWS_PROFILE (default `default`) in the shared credentials file (AWS_SHARED_CREDENTIALS_FILE or
//! ~/.aws/credentials) and the config file (AWS_CONFIG_FILE or ~/.aws/config).
//! Region: AWS_REGION, AWS_DEFAULT_REGION, the profile's `region`, else `us-east-1`.
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
    pub region: String,
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
    Ok(AwsSettings { credentials, region })
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
mod tests {
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
