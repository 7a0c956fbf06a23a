//! A throwaway S3-compatible server: moto's `moto_server` (from PyPI's
//! `moto[server]`) on a free port, in memory, as a child process. It takes
//! any credentials; buckets are made with a plain `PUT /bucket`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rustix::process::Signal;
use tempfile::TempDir;

use super::{Daemon, clean_command, start_on_free_port};

/// The credentials a test gives the controller: moto checks none, but the
/// S3 client signs every request.
pub const ACCESS_KEY: &str = "hop3-test-key";
pub const SECRET_KEY: &str = "hop3-test-secret-Zx9";

/// An S3 server of its own; stopped on drop.
#[derive(Debug)]
pub struct Moto {
    port: u16,
    log: PathBuf,
    daemon: Option<Daemon>,
    _dir: TempDir,
}

impl Moto {
    /// Starts a server on a free port of 127.0.0.1.
    pub fn start() -> Result<Moto> {
        let dir = tempfile::Builder::new().prefix("hop3-moto-").tempdir()?;
        let mut moto = Moto {
            port: 0,
            log: dir.path().join("moto.log"),
            daemon: None,
            _dir: dir,
        };
        moto.launch(None)?;
        Ok(moto)
    }

    fn launch(&mut self, port: Option<u16>) -> Result<()> {
        let (port, daemon) = start_on_free_port(port, |port| {
            let mut cmd = clean_command("moto_server");
            cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
            let mut daemon = Daemon::spawn("moto_server", cmd, &self.log, Signal::TERM)?;
            daemon.wait_ready(|| request(port, "GET", "/").is_ok())?;
            Ok(daemon)
        })?;
        self.port = port;
        self.daemon = Some(daemon);
        Ok(())
    }

    /// `http://127.0.0.1:PORT`, for `AWS_ENDPOINT_URL`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates bucket `name`.
    pub fn create_bucket(&self, name: &str) -> Result<()> {
        let (status, _) = request(self.port, "PUT", &format!("/{name}"))?;
        if status != 200 {
            bail!(
                "PUT /{name} answered {status}\n{}",
                super::tail(&self.log, 20)
            );
        }
        Ok(())
    }

    /// The multipart uploads of `bucket` begun and neither completed nor
    /// aborted (S3's ListMultipartUploads), as their keys.
    pub fn open_uploads(&self, bucket: &str) -> Result<Vec<String>> {
        let (status, body) = request(self.port, "GET", &format!("/{bucket}?uploads"))?;
        if status != 200 {
            bail!("GET /{bucket}?uploads answered {status}: {body}");
        }
        Ok(body
            .split("<Upload>")
            .skip(1)
            .filter_map(|u| {
                let key = u.split_once("<Key>")?.1.split_once("</Key>")?.0;
                Some(key.to_owned())
            })
            .collect())
    }

    /// The keys of `bucket` (its first thousand), sorted.
    pub fn keys(&self, bucket: &str) -> Result<Vec<String>> {
        let (status, body) = request(self.port, "GET", &format!("/{bucket}?list-type=2"))?;
        if status != 200 {
            bail!("listing {bucket} answered {status}: {body}");
        }
        let mut keys: Vec<String> = body
            .split("<Key>")
            .skip(1)
            .filter_map(|k| Some(k.split_once("</Key>")?.0.to_owned()))
            .collect();
        keys.sort();
        Ok(keys)
    }

    /// Deletes every object of `bucket`, then the bucket: a lost bucket.
    /// Through boto3 (moto's own dependency): moto wants a signed DELETE.
    pub fn delete_bucket(&self, bucket: &str) -> Result<()> {
        self.boto3(
            "b = boto3.resource('s3', endpoint_url=sys.argv[1]).Bucket(sys.argv[2])\n\
             b.objects.all().delete()\n\
             b.delete()\n",
            &[bucket],
        )
        .with_context(|| format!("deleting bucket {bucket}"))?;
        Ok(())
    }

    /// The SHA-256 checksum the server checked `key` of `bucket` against
    /// at upload (`x-amz-checksum-sha256`; `DIGEST-N` for N parts), if any.
    pub fn sha256_checksum(&self, bucket: &str, key: &str) -> Result<Option<String>> {
        let out = self.boto3(
            "s3 = boto3.client('s3', endpoint_url=sys.argv[1])\n\
             h = s3.head_object(Bucket=sys.argv[2], Key=sys.argv[3], ChecksumMode='ENABLED')\n\
             print(h.get('ChecksumSHA256') or '')\n",
            &[bucket, key],
        )?;
        let sum = out.trim();
        Ok((!sum.is_empty()).then(|| sum.to_owned()))
    }

    /// Downloads every object of `bucket` under `prefix` into `dir`, each
    /// at its key's path below `dir`: the bytes as stored, for a test to
    /// search.
    pub fn download_all(&self, bucket: &str, prefix: &str, dir: &std::path::Path) -> Result<()> {
        let dir = dir.display().to_string();
        self.boto3(
            "import os\n\
             b = boto3.resource('s3', endpoint_url=sys.argv[1]).Bucket(sys.argv[2])\n\
             for o in b.objects.filter(Prefix=sys.argv[3]):\n\
             \x20   dest = os.path.join(sys.argv[4], o.key)\n\
             \x20   os.makedirs(os.path.dirname(dest), exist_ok=True)\n\
             \x20   b.download_file(o.key, dest)\n",
            &[bucket, prefix, &dir],
        )
        .with_context(|| format!("downloading {bucket}/{prefix}"))?;
        Ok(())
    }

    /// Runs `script` (after `import sys, boto3`) with the endpoint and
    /// `args` as `sys.argv[1..]`; its standard output.
    fn boto3(&self, script: &str, args: &[&str]) -> Result<String> {
        let out = clean_command("python3")
            .arg("-c")
            .arg(format!("import sys, boto3\n{script}"))
            .arg(self.endpoint())
            .args(args)
            .envs(self.env())
            .output()?;
        if !out.status.success() {
            bail!("boto3: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Stops the server: the service is unreachable until [`Self::restart`].
    pub fn stop(&mut self) -> Result<()> {
        match self.daemon.take() {
            Some(mut d) => d.stop(),
            None => Ok(()),
        }
    }

    /// Starts it again on the same port, empty (moto keeps nothing).
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.launch(Some(self.port))
    }

    /// The environment a controller or tool needs to reach it.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_owned()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_owned()),
            ("AWS_REGION", "us-east-1".to_owned()),
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".to_owned()),
        ]
    }
}

/// One plain HTTP/1.1 request with no body; the status code and the body.
fn request(port: u16, method: &str, target: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "{method} {target} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)?;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("not an HTTP answer: {text:?}"))?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((status, body.to_owned()))
}
