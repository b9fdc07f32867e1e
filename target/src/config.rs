//! The target's configuration: a TOML file, CLI flags on top, and one validation
//! pass whose errors name the offending field (`volumes[1].block_size: ...`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use mosaic_proto::chap::{ChapConfig, Credentials};
use serde::Deserialize;
use thiserror::Error;

/// Prefix of every target IQN; the volume name follows the colon.
pub const DEFAULT_IQN_PREFIX: &str = "iqn.2026-11.io.mosaic";
/// The portal a target listens on when none is configured (RFC 7143 §13.? port 3260).
pub const DEFAULT_PORTAL: &str = "127.0.0.1:3260";
/// Size of the demo volume started by a bare `mosaic`.
pub const DEMO_VOLUME_SIZE: u64 = 1 << 30;
/// Longest volume name we accept: it becomes part of an IQN, which is limited to
/// 223 bytes (RFC 3722 §3.1).
const MAX_VOLUME_NAME_LEN: usize = 64;

/// A configuration error, naming the field it is about.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not valid TOML or has a field of the wrong type or name.
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// A field has a value we cannot use.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// Where a volume's blocks live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backing {
    /// A sparse file under the data directory.
    File,
    /// Memory only: contents are lost when the process stops.
    Memory,
}

/// One exported volume.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeConfig {
    pub name: String,
    /// Size in bytes, or with a K/M/G/T suffix (powers of 1024).
    pub size: SizeValue,
    #[serde(default = "default_block_size")]
    pub block_size: u32,
    #[serde(default = "default_backing")]
    pub backing: Backing,
    /// Backing file; defaults to `<data_dir>/<name>.img`.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// CHAP an initiator must pass to log in to this volume's target.
    #[serde(default)]
    pub chap: Option<ChapSecrets>,
    /// Initiator names allowed to log in; empty allows all.
    #[serde(default)]
    pub initiators: Vec<String>,
    /// Thin provisioned (UNMAP frees space; the default) or fully provisioned.
    #[serde(default = "default_thin")]
    pub thin: bool,
    /// Write-protected: every write is refused with DATA PROTECT.
    #[serde(default)]
    pub read_only: bool,
}

fn default_thin() -> bool {
    true
}

/// CHAP secrets as written in the config (RFC 7143 §12.1.3).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChapSecrets {
    /// The name the initiator must give (CHAP_N).
    pub user: String,
    /// The secret it must prove it knows.
    pub secret: String,
    /// For mutual CHAP: the name we give back.
    #[serde(default)]
    pub mutual_user: Option<String>,
    /// For mutual CHAP: the secret we prove we know.
    #[serde(default)]
    pub mutual_secret: Option<String>,
}

/// Shortest CHAP secret we accept: RFC 7143 §12.1.3 requires at least 96 bits.
const MIN_CHAP_SECRET: usize = 12;
/// Longest CHAP secret we accept (RFC 7143 §12.1.3 suggests secrets fit 16 bytes
/// of entropy; 255 bounds what we store).
const MAX_CHAP_SECRET: usize = 255;

impl ChapSecrets {
    fn validate(&self, field: &str) -> Result<ChapConfig, ConfigError> {
        let check = |name: &str, s: &str| {
            if s.len() < MIN_CHAP_SECRET || s.len() > MAX_CHAP_SECRET {
                Err(invalid(
                    format!("{field}.{name}"),
                    format!(
                        "must be {MIN_CHAP_SECRET} to {MAX_CHAP_SECRET} bytes (RFC 7143 §12.1.3)"
                    ),
                ))
            } else {
                Ok(())
            }
        };
        if self.user.is_empty() {
            return Err(invalid(format!("{field}.user"), "must not be empty"));
        }
        check("secret", &self.secret)?;
        let target = match (&self.mutual_user, &self.mutual_secret) {
            (None, None) => None,
            (Some(u), Some(sec)) => {
                check("mutual_secret", sec)?;
                if sec == &self.secret {
                    return Err(invalid(
                        format!("{field}.mutual_secret"),
                        "must differ from secret (RFC 7143 §12.1.3)",
                    ));
                }
                Some(Credentials {
                    user: u.clone(),
                    secret: sec.clone(),
                })
            }
            _ => {
                return Err(invalid(
                    format!("{field}.mutual_user"),
                    "mutual_user and mutual_secret go together",
                ))
            }
        };
        Ok(ChapConfig {
            initiator: Credentials {
                user: self.user.clone(),
                secret: self.secret.clone(),
            },
            target,
        })
    }
}

fn default_block_size() -> u32 {
    512
}
fn default_backing() -> Backing {
    Backing::File
}

/// A size as written in TOML: an integer of bytes or a string such as "64M".
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SizeValue {
    Bytes(u64),
    Text(String),
}

impl SizeValue {
    fn resolve(&self, field: &str) -> Result<u64, ConfigError> {
        match self {
            SizeValue::Bytes(b) => Ok(*b),
            SizeValue::Text(t) => parse_size(t).map_err(|m| invalid(field, m)),
        }
    }
}

/// Parses "4096", "64K", "64M", "1G", "2T" (binary multiples).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => {
                    return Err(format!(
                        "unknown size suffix {c:?} in {s:?} (use K, M, G or T)"
                    ))
                }
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size (examples: 4096, 64M, 1G)"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Protocol limits the target offers in login negotiation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest data segment we accept (RFC 7143 §13.12).
    pub max_recv_data_segment_length: u32,
    /// Largest solicited or unsolicited burst we accept (RFC 7143 §13.13).
    pub max_burst_length: u32,
    /// Largest unsolicited burst we accept (RFC 7143 §13.14).
    pub first_burst_length: u32,
    /// R2Ts we keep outstanding per task (RFC 7143 §13.17).
    pub max_outstanding_r2t: u32,
    /// Whether we accept immediate data (RFC 7143 §13.11).
    pub immediate_data: bool,
    /// Whether we require an R2T before any Data-Out (RFC 7143 §13.10).
    pub initial_r2t: bool,
    /// Commands an initiator may have queued per session: the CmdSN window.
    pub queue_depth: u32,
    /// Sessions the target accepts at once.
    pub max_sessions: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_recv_data_segment_length: 256 * 1024,
            max_burst_length: 1024 * 1024,
            first_burst_length: 256 * 1024,
            max_outstanding_r2t: 8,
            immediate_data: true,
            initial_r2t: false,
            queue_depth: 128,
            max_sessions: 1024,
        }
    }
}

/// The whole configuration, as read from TOML.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Addresses to listen on.
    pub portals: Vec<String>,
    /// Where file-backed volumes live.
    pub data_dir: PathBuf,
    /// IQN prefix; each volume is `<prefix>:<name>`.
    pub iqn_prefix: String,
    /// Seconds of silence on a connection before we ping it with a NOP-In; 0 = never.
    pub nop_interval_secs: u64,
    /// Seconds we wait for the answer to a ping before dropping the connection.
    pub nop_timeout_secs: u64,
    pub limits: LimitsConfig,
    /// CHAP required for discovery sessions, if any.
    pub discovery_chap: Option<ChapSecrets>,
    pub volumes: Vec<VolumeConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            portals: vec![DEFAULT_PORTAL.to_string()],
            data_dir: PathBuf::from("data"),
            iqn_prefix: DEFAULT_IQN_PREFIX.to_string(),
            nop_interval_secs: 30,
            nop_timeout_secs: 15,
            limits: LimitsConfig::default(),
            discovery_chap: None,
            volumes: Vec::new(),
        }
    }
}

/// A volume after validation.
#[derive(Debug, Clone)]
pub struct Volume {
    pub name: String,
    pub iqn: String,
    pub size: u64,
    pub block_size: u32,
    pub backing: Backing,
    pub path: PathBuf,
    pub chap: Option<ChapConfig>,
    pub initiators: Vec<String>,
    pub thin: bool,
    pub read_only: bool,
}

/// The configuration after validation: what the server runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub portals: Vec<SocketAddr>,
    pub data_dir: PathBuf,
    pub nop_interval: Option<Duration>,
    pub nop_timeout: Duration,
    pub limits: LimitsConfig,
    pub discovery_chap: Option<ChapConfig>,
    pub volumes: Vec<Volume>,
}

impl Config {
    /// Reads a TOML file.
    pub fn from_file(path: &std::path::Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.to_string(),
        })
    }

    /// Parses a `--volume name=X,size=64M,block=512,backing=memory,path=P` flag.
    pub fn parse_volume_flag(spec: &str) -> Result<VolumeConfig, ConfigError> {
        let mut v = VolumeConfig {
            name: String::new(),
            size: SizeValue::Bytes(0),
            block_size: default_block_size(),
            backing: default_backing(),
            path: None,
            chap: None,
            initiators: Vec::new(),
            thin: true,
            read_only: false,
        };
        for part in spec.split(',').filter(|p| !p.is_empty()) {
            let (k, val) = part
                .split_once('=')
                .ok_or_else(|| invalid("--volume", format!("{part:?} is not key=value")))?;
            match k {
                "name" => v.name = val.to_string(),
                "size" => v.size = SizeValue::Text(val.to_string()),
                "block" | "block_size" => {
                    v.block_size = val.parse().map_err(|_| {
                        invalid("--volume block", format!("{val:?} is not a number"))
                    })?
                }
                "backing" => {
                    v.backing = match val {
                        "file" => Backing::File,
                        "memory" => Backing::Memory,
                        _ => {
                            return Err(invalid(
                                "--volume backing",
                                format!("{val:?}: use file or memory"),
                            ))
                        }
                    }
                }
                "path" => v.path = Some(PathBuf::from(val)),
                "provisioning" => {
                    v.thin = match val {
                        "thin" => true,
                        "thick" => false,
                        _ => {
                            return Err(invalid(
                                "--volume provisioning",
                                format!("{val:?}: use thin or thick"),
                            ))
                        }
                    }
                }
                "readonly" | "read_only" => {
                    v.read_only = match val {
                        "yes" | "true" => true,
                        "no" | "false" => false,
                        _ => {
                            return Err(invalid(
                                "--volume readonly",
                                format!("{val:?}: use yes or no"),
                            ))
                        }
                    }
                }
                _ => {
                    return Err(invalid(
                        "--volume",
                        format!("unknown key {k:?} (name, size, block, backing, path, provisioning, readonly)"),
                    ))
                }
            }
        }
        Ok(v)
    }

    /// Checks every field and resolves defaults.
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        if self.portals.is_empty() {
            return Err(invalid("portals", "at least one portal is needed"));
        }
        let mut portals = Vec::new();
        for (i, p) in self.portals.iter().enumerate() {
            let addr: SocketAddr = p.parse().map_err(|_| {
                invalid(
                    format!("portals[{i}]"),
                    format!("{p:?} is not an address:port such as 127.0.0.1:3260"),
                )
            })?;
            portals.push(addr);
        }
        let l = &self.limits;
        // RFC 7143 §13.12-§13.14: these lengths lie in 512..=2^24-1.
        for (name, v) in [
            (
                "limits.max_recv_data_segment_length",
                l.max_recv_data_segment_length,
            ),
            ("limits.max_burst_length", l.max_burst_length),
            ("limits.first_burst_length", l.first_burst_length),
        ] {
            if !(512..=16_777_215).contains(&v) {
                return Err(invalid(name, format!("{v} is outside 512..=16777215")));
            }
        }
        if l.first_burst_length > l.max_burst_length {
            return Err(invalid(
                "limits.first_burst_length",
                "must not exceed limits.max_burst_length",
            ));
        }
        if !(1..=65535).contains(&l.max_outstanding_r2t) {
            return Err(invalid("limits.max_outstanding_r2t", "must be 1..=65535"));
        }
        if !(1..=65536).contains(&l.queue_depth) {
            return Err(invalid("limits.queue_depth", "must be 1..=65536"));
        }
        if l.max_sessions == 0 {
            return Err(invalid("limits.max_sessions", "must be at least 1"));
        }
        if self.nop_interval_secs > 0 && self.nop_timeout_secs == 0 {
            return Err(invalid(
                "nop_timeout_secs",
                "must be at least 1 when pings are on",
            ));
        }
        let mut volumes = Vec::new();
        for (i, v) in self.volumes.iter().enumerate() {
            let f = |k: &str| format!("volumes[{i}].{k}");
            if v.name.is_empty() || v.name.len() > MAX_VOLUME_NAME_LEN {
                return Err(invalid(f("name"), "must be 1 to 64 characters"));
            }
            if !v
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            {
                return Err(invalid(
                    f("name"),
                    format!("{:?}: use lower-case letters, digits, '-' and '.' (it becomes part of an IQN)", v.name),
                ));
            }
            if volumes.iter().any(|o: &Volume| o.name == v.name) {
                return Err(invalid(f("name"), format!("{:?} is used twice", v.name)));
            }
            if v.block_size != 512 && v.block_size != 4096 {
                return Err(invalid(
                    f("block_size"),
                    format!("{} is not 512 or 4096", v.block_size),
                ));
            }
            let size = v.size.resolve(&f("size"))?;
            if size == 0 || size % v.block_size as u64 != 0 {
                return Err(invalid(
                    f("size"),
                    format!(
                        "{size} bytes is not a positive multiple of the block size {}",
                        v.block_size
                    ),
                ));
            }
            let path = v
                .path
                .clone()
                .unwrap_or_else(|| self.data_dir.join(format!("{}.img", v.name)));
            let chap = match &v.chap {
                Some(c) => Some(c.validate(&f("chap"))?),
                None => None,
            };
            volumes.push(Volume {
                name: v.name.clone(),
                iqn: format!("{}:{}", self.iqn_prefix, v.name),
                size,
                block_size: v.block_size,
                backing: v.backing,
                path,
                chap,
                initiators: v.initiators.clone(),
                thin: v.thin,
                read_only: v.read_only,
            });
        }
        if volumes.is_empty() {
            return Err(invalid("volumes", "at least one volume is needed"));
        }
        Ok(Settings {
            portals,
            data_dir: self.data_dir.clone(),
            nop_interval: (self.nop_interval_secs > 0)
                .then(|| Duration::from_secs(self.nop_interval_secs)),
            nop_timeout: Duration::from_secs(self.nop_timeout_secs.max(1)),
            limits: self.limits.clone(),
            discovery_chap: match &self.discovery_chap {
                Some(c) => Some(c.validate("discovery_chap")?),
                None => None,
            },
            volumes,
        })
    }

    /// The volume a bare `mosaic` serves.
    pub fn demo_volume() -> VolumeConfig {
        VolumeConfig {
            name: "demo".into(),
            size: SizeValue::Bytes(DEMO_VOLUME_SIZE),
            block_size: 512,
            backing: Backing::File,
            path: None,
            chap: None,
            initiators: Vec::new(),
            thin: true,
            read_only: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_volume(extra: &str) -> String {
        format!("[[volumes]]\nname = \"v\"\nsize = \"64M\"\n{extra}")
    }

    #[test]
    fn sizes_with_suffixes() {
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("abc").is_err());
    }

    #[test]
    fn block_size_error_names_the_field() {
        let c = Config::from_toml(&with_volume("block_size = 1000")).unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.starts_with("volumes[0].block_size"), "{e}");
    }

    #[test]
    fn unknown_field_is_refused() {
        let e = Config::from_toml("portal = \"x\"").unwrap_err().to_string();
        assert!(e.contains("portal"), "{e}");
    }

    #[test]
    fn bad_portal_names_index() {
        let mut c = Config::from_toml(&with_volume("")).unwrap();
        c.portals = vec!["127.0.0.1:3260".into(), "nonsense".into()];
        let e = c.validate().unwrap_err().to_string();
        assert!(e.starts_with("portals[1]"), "{e}");
    }

    #[test]
    fn volume_flag_parses() {
        let v = Config::parse_volume_flag(
            "name=a,size=1M,block=4096,backing=memory,provisioning=thick,readonly=yes",
        )
        .unwrap();
        assert_eq!(v.block_size, 4096);
        assert!(!v.thin && v.read_only);
        assert!(Config::parse_volume_flag("name=a,provisioning=fat").is_err());
        assert_eq!(v.backing, Backing::Memory);
        assert!(Config::parse_volume_flag("name=a,colour=red").is_err());
    }

    #[test]
    fn size_must_be_multiple_of_block() {
        let c = Config::from_toml("[[volumes]]\nname=\"v\"\nsize=1000\n").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.starts_with("volumes[0].size"), "{e}");
    }

    #[test]
    fn short_chap_secret_names_the_field() {
        let c =
            Config::from_toml(&with_volume("chap = { user = \"u\", secret = \"short\" }")).unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.starts_with("volumes[0].chap.secret"), "{e}");
    }

    #[test]
    fn mutual_chap_needs_both_halves() {
        let c = Config::from_toml(&with_volume(
            "chap = { user = \"u\", secret = \"0123456789ab\", mutual_user = \"t\" }",
        ))
        .unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.starts_with("volumes[0].chap.mutual_user"), "{e}");
    }

    #[test]
    fn first_burst_above_max_burst_is_refused() {
        let mut c = Config::from_toml(&with_volume("")).unwrap();
        c.limits.first_burst_length = 2 << 20;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.starts_with("limits.first_burst_length"), "{e}");
    }
}
