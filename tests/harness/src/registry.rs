//! A container registry for tests and the sandbox: Debian's `docker-registry`
//! (distribution 2.8) on a free loopback port, plain HTTP, with filesystem storage in its
//! own dir, and pushes of OCI image layouts (as `umoci` writes them) with `skopeo`.
//!
//! The simulated node pulls from it over plain HTTP when its host is among the node's
//! insecure registries; a [`crate::Cluster`] started with `registry: true` does that.

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::{HarnessError, Result};
use crate::process::{self, ManagedProcess, POLL_INTERVAL};

/// How long the registry may take to answer `GET /v2/`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one push may take.
const PUSH_TIMEOUT: Duration = Duration::from_secs(300);

fn find_tool(name: &str, package: &str) -> Result<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| HarnessError::MissingTool {
            name: name.to_owned(),
            hint: format!("install Debian's {package} package (apt-get install {package})"),
        })
}

/// Where a registry answers, and pushes to it. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryEndpoint {
    host: String,
    /// The registry's dir and log, when this harness runs it.
    local: Option<(PathBuf, PathBuf)>,
}

impl RegistryEndpoint {
    /// A registry at `host` (`127.0.0.1:PORT`), plain HTTP.
    pub fn new(host: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            local: None,
        }
    }

    /// The dir of a registry this harness runs: `config.yml`, and `storage/` (the
    /// filesystem driver's tree: blobs in `docker/registry/v2/blobs/sha256/<2>/<hex>/data`).
    pub fn dir(&self) -> Option<&Path> {
        self.local.as_ref().map(|(dir, _)| dir.as_path())
    }

    /// The log of a registry this harness runs: one line per request.
    pub fn log(&self) -> Option<&Path> {
        self.local.as_ref().map(|(_, log)| log.as_path())
    }

    /// `127.0.0.1:PORT`: the registry part of image references (`127.0.0.1:PORT/app:v1`).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Pushes the image tagged `layout_tag` in the OCI image layout `layout_dir` to
    /// `dest` (`repo:tag`) with `skopeo copy --preserve-digests`, and returns its digest
    /// (`sha256:…`): the manifest digest a pod's `imageID` reports.
    pub async fn push_layout(
        &self,
        layout_dir: &Path,
        layout_tag: &str,
        dest: &str,
    ) -> Result<String> {
        let skopeo = find_tool("skopeo", "skopeo")?;
        let digest_file = tempfile::NamedTempFile::new()
            .map_err(|e| HarnessError::io("creating the digest file", e))?;
        let source = format!("oci:{}:{layout_tag}", layout_dir.display());
        let target = format!("docker://{}/{dest}", self.host);
        let what = format!("pushing {source} to {target}");
        let mut command = tokio::process::Command::new(&skopeo);
        command
            // No signature policy is wanted for a test registry; none may be installed.
            .arg("--insecure-policy")
            .arg("copy")
            .arg("--dest-tls-verify=false")
            .arg("--preserve-digests")
            .arg("--digestfile")
            .arg(digest_file.path())
            .arg(&source)
            .arg(&target)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let output = tokio::time::timeout(PUSH_TIMEOUT, command.output())
            .await
            .map_err(|_| HarnessError::Timeout {
                what: what.clone(),
                waited: PUSH_TIMEOUT,
                detail: None,
            })?
            .map_err(|e| HarnessError::io(format!("running {}", skopeo.display()), e))?;
        if !output.status.success() {
            return Err(HarnessError::Registry(format!(
                "{what}: skopeo {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        let digest = std::fs::read_to_string(digest_file.path())
            .map_err(|e| HarnessError::io("reading skopeo's digest file", e))?
            .trim()
            .to_owned();
        if !digest.starts_with("sha256:") {
            return Err(HarnessError::Registry(format!(
                "{what}: skopeo wrote no digest (got {digest:?})"
            )));
        }
        Ok(digest)
    }
}

/// A running `docker-registry`; stopped on drop.
#[derive(Debug)]
pub struct Registry {
    endpoint: RegistryEndpoint,
    dir: PathBuf,
    process: Option<ManagedProcess>,
}

impl Registry {
    /// Starts a registry storing under `dir` (created; `config.yml` and `storage/` go
    /// there), its output appended to `log`. Returns once `GET /v2/` answers 200.
    pub async fn start(dir: &Path, log: &Path) -> Result<Registry> {
        let program = find_tool("docker-registry", "docker-registry")?;
        std::fs::create_dir_all(dir.join("storage"))
            .map_err(|e| HarnessError::io(format!("creating {}", dir.display()), e))?;
        let mut attempt = 1;
        loop {
            let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .and_then(|l| l.local_addr())
                .map_err(|e| HarnessError::io("picking a free port", e))?
                .port();
            let config = dir.join("config.yml");
            std::fs::write(&config, config_yaml(dir, port))
                .map_err(|e| HarnessError::io(format!("writing {}", config.display()), e))?;
            let process = ManagedProcess::spawn(
                "docker-registry",
                &program,
                &["serve".into(), config.display().to_string()],
                dir,
                log,
            )?;
            let mut registry = Registry {
                endpoint: RegistryEndpoint {
                    host: format!("127.0.0.1:{port}"),
                    local: Some((dir.to_owned(), log.to_owned())),
                },
                dir: dir.to_owned(),
                process: Some(process),
            };
            match registry.wait_ready().await {
                Ok(()) => return Ok(registry),
                // The port picked as free was taken before the registry bound it.
                Err(e) if e.is_port_conflict() && attempt < 3 => attempt += 1,
                Err(e) => return Err(e),
            }
        }
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let started = Instant::now();
        loop {
            if let Some(p) = self.process.as_mut() {
                p.check_running()?;
            }
            let last = match get_status(self.host(), "/v2/").await {
                Ok(200) => return Ok(()),
                Ok(status) => format!("HTTP {status}"),
                Err(e) => e.to_string(),
            };
            if started.elapsed() >= READY_TIMEOUT {
                return Err(HarnessError::Timeout {
                    what: format!("docker-registry on {} to answer GET /v2/", self.host()),
                    waited: started.elapsed(),
                    detail: Some(format!(
                        "last answer: {last}\nlast lines of {}:\n{}",
                        self.log().display(),
                        process::log_tail(self.log(), 30)
                    )),
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> &str {
        self.endpoint.host()
    }

    /// Where it answers, for pushes from elsewhere (a cloneable handle).
    pub fn endpoint(&self) -> &RegistryEndpoint {
        &self.endpoint
    }

    /// See [`RegistryEndpoint::push_layout`].
    pub async fn push_layout(
        &self,
        layout_dir: &Path,
        layout_tag: &str,
        dest: &str,
    ) -> Result<String> {
        self.endpoint
            .push_layout(layout_dir, layout_tag, dest)
            .await
    }

    /// The registry's dir (`config.yml`, `storage/`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its log file (requests are logged, one line each).
    pub fn log(&self) -> &Path {
        self.process
            .as_ref()
            .map_or(Path::new(""), ManagedProcess::log)
    }

    /// Its process id.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ManagedProcess::pid)
    }

    /// Fails with the log tail if the registry has exited.
    pub(crate) fn check_running(&mut self) -> Result<()> {
        match self.process.as_mut() {
            Some(p) => p.check_running(),
            None => Ok(()),
        }
    }

    /// Stops the registry (SIGTERM, then SIGKILL after 3 s) and reaps it.
    pub fn stop(&mut self) {
        if let Some(p) = self.process.take() {
            process::stop_all(&mut [p], Duration::from_secs(3));
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The registry's configuration: plain HTTP on loopback, filesystem storage, deletes
/// allowed (tests may re-push tags), no upload purging or storage health checks.
fn config_yaml(dir: &Path, port: u16) -> String {
    let secret: String = (0..32)
        .map(|_| char::from(b'a' + rand::random_range(0..26u8)))
        .collect();
    format!(
        "version: 0.1\n\
         log:\n  level: info\n  formatter: text\n\
         storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  \
         maintenance:\n    uploadpurging:\n      enabled: false\n\
         http:\n  addr: 127.0.0.1:{port}\n  secret: {secret}\n\
         health:\n  storagedriver:\n    enabled: false\n",
        serde_json::to_string(&dir.join("storage").display().to_string()).unwrap_or_default(),
    )
}

/// The status code of a plain-HTTP `GET path` to `host` (no HTTP client in the harness).
async fn get_status(host: &str, path: &str) -> std::io::Result<u16> {
    let mut stream =
        tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(host))
            .await
            .map_err(|_| std::io::Error::other("connect timed out"))??;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await?;
    let mut head = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut head))
        .await
        .map_err(|_| std::io::Error::other("no answer"))??;
    let line = String::from_utf8_lossy(&head[..n]);
    line.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {line:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_binds_loopback_and_stores_in_its_dir() {
        let yaml = config_yaml(Path::new("/state/registry"), 5123);
        assert!(yaml.contains("addr: 127.0.0.1:5123"), "{yaml}");
        assert!(
            yaml.contains("rootdirectory: \"/state/registry/storage\""),
            "{yaml}"
        );
        let parsed: serde_yaml_ng::Value = serde_yaml_ng::from_str(&yaml).expect("valid YAML");
        assert_eq!(parsed["http"]["secret"].as_str().map(str::len), Some(32));
    }

    #[tokio::test]
    async fn starts_answers_and_stops() {
        if find_tool("docker-registry", "docker-registry").is_err() {
            eprintln!("skipped: docker-registry is not installed");
            return;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let mut registry = Registry::start(&dir.path().join("r"), &dir.path().join("r.log"))
            .await
            .expect("registry starts");
        assert_eq!(get_status(registry.host(), "/v2/").await.expect("GET"), 200);
        let pid = registry.pid().expect("pid");
        registry.stop();
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
        assert!(std::fs::read_to_string(dir.path().join("r.log"))
            .expect("log")
            .contains("/v2/"));
    }
}
