//! The store in S3 or an S3-compatible service (R2, B2, MinIO, Garage,
//! Ceph, Wasabi), through `object_store`. Keys keep the local layout under
//! the bucket's prefix (`apps/<app>/<id>/metadata.json`, ...), so any S3
//! client finds and checks a backup by hand.
//!
//! Object storage has no rename, so the contract is kept this way:
//! - `apps/<app>/<id>.partial` marks a backup being written; it also lists
//!   the multipart uploads the backup started, which S3 keeps (and bills)
//!   until they are aborted, so that a controller killed mid-upload leaves
//!   nothing a later sweep cannot find;
//! - artifacts are created once: a small one with a conditional PUT
//!   (`If-None-Match: *`), a large one (a part's size or more) as a
//!   multipart upload of fixed-size parts, several in flight, after a HEAD
//!   that finds no object there; each is checked by a HEAD of its size;
//! - `metadata.json` is written last, conditionally, and is the commit;
//!   the mark goes after it;
//! - deleting removes `metadata.json` first.

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use hop3_proto::manifest::MANIFEST_FILE;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey, Checksum};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{
    GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tokio::task::JoinSet;

use super::backend::{ArtifactSink, Backend, BackupKey, ByteStream, Scan, Spare, Staging};

/// The size of every part of a multipart upload but the last: S3 wants 5 MiB
/// at least, R2 equal sizes.
pub const PART_SIZE: usize = 8 << 20;

/// Parts uploading at once in the whole store, whatever the number of
/// artifacts being written (a backup writes its archives and dumps side by
/// side): with one part being filled per artifact, uploads hold at most
/// `(PARTS_IN_FLIGHT + artifacts) * PART_SIZE` bytes.
pub const PARTS_IN_FLIGHT: usize = 4;

/// Artifacts are read as ranged GETs of this size, the next one asked for
/// while the last streams, so that a read holds no more than the sockets'
/// buffers.
const READ_RANGE: u64 = 16 << 20;

/// A sweep leaves alone a backup marked this recently, whatever the
/// catalog says.
const SWEEP_MARGIN: chrono::TimeDelta = chrono::TimeDelta::hours(1);

/// How the controller reaches a bucket. Unset values come from the
/// standard `AWS_*` variables, as every AWS tool reads them.
#[derive(Clone, Default)]
pub struct S3Options {
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    pub region: Option<String>,
    /// For services other than AWS (`https://...`), or a test server.
    pub endpoint: Option<String>,
    /// Whether a plain `http://` endpoint is allowed.
    pub allow_http: bool,
    /// How long a request is retried before it fails [default: 3 minutes].
    pub retry_timeout: Option<Duration>,
    /// The checksum sent with every object and part, checked by the service.
    pub checksum: UploadChecksum,
}

/// The checksum the service checks each upload against before it keeps it
/// (`x-amz-checksum-*`), so bytes damaged between the controller and the
/// bucket are refused at upload, not found by the next restore.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UploadChecksum {
    /// SHA-256 of every PUT and part (AWS, R2, MinIO, Ceph, Garage >= 1.1).
    #[default]
    Sha256,
    /// CRC-64/NVME: cheaper on the controller, newer on the services.
    Crc64Nvme,
    /// None: for a service that refuses the headers.
    Off,
}

impl std::str::FromStr for UploadChecksum {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "sha256" => Ok(Self::Sha256),
            "crc64nvme" => Ok(Self::Crc64Nvme),
            "off" | "none" => Ok(Self::Off),
            _ => Err(format!("{s}: expected sha256, crc64nvme or off")),
        }
    }
}

impl std::fmt::Debug for S3Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The keys never reach a log.
        f.debug_struct("S3Options")
            .field("access_key_id", &self.access_key_id.as_ref().map(|_| "..."))
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("allow_http", &self.allow_http)
            .field("checksum", &self.checksum)
            .finish_non_exhaustive()
    }
}

/// A bucket, or a prefix in one.
#[derive(Clone)]
pub struct S3Bucket {
    s3: Arc<AmazonS3>,
    bucket: String,
    /// Empty, or `a/b` (no slash at either end).
    prefix: String,
    /// One permit per part that may be uploading ([`PARTS_IN_FLIGHT`]).
    parts: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for S3Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "S3Bucket({})", self.url())
    }
}

/// What `apps/<app>/<id>.partial` holds: the multipart uploads begun.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Journal {
    uploads: Vec<Upload>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Upload {
    path: String,
    upload_id: String,
}

/// The objects of one backup's place, as a listing found them.
#[derive(Debug, Default)]
struct Found {
    /// When `<id>.partial` was written, if it is there.
    marked: Option<chrono::DateTime<chrono::Utc>>,
    manifest: bool,
    objects: usize,
}

impl S3Bucket {
    /// A store in `bucket` under `prefix`; nothing is asked of the service
    /// yet (`store check` does that).
    pub fn open(bucket: &str, prefix: &str, opts: &S3Options) -> io::Result<Self> {
        // The AWS_* variables, as `from_env` reads them, except the
        // checksum, which is `opts.checksum`'s alone.
        let mut b = AmazonS3Builder::new().with_bucket_name(bucket);
        // `vars_os`: one variable that is not UTF-8 must not stop a start.
        for (key, value) in std::env::vars_os() {
            if let (Some(key), Some(value)) = (key.to_str(), value.to_str())
                && key.starts_with("AWS_")
                && key != "AWS_CHECKSUM_ALGORITHM"
                && let Ok(k) = key.to_ascii_lowercase().parse::<AmazonS3ConfigKey>()
            {
                b = b.with_config(k, value);
            }
        }
        if let Some(v) = &opts.access_key_id {
            b = b.with_access_key_id(v);
        }
        if let Some(v) = &opts.secret_access_key {
            b = b.with_secret_access_key(v);
        }
        if let Some(v) = &opts.session_token {
            b = b.with_token(v);
        }
        if let Some(v) = &opts.region {
            b = b.with_region(v);
        }
        if let Some(v) = &opts.endpoint {
            b = b.with_endpoint(v);
        }
        if opts.allow_http {
            b = b.with_allow_http(true);
        }
        if let Some(t) = opts.retry_timeout {
            b = b.with_retry(RetryConfig {
                retry_timeout: t,
                ..RetryConfig::default()
            });
        }
        // SigV4 would hash every part's bytes once more, on top of the
        // SHA-256 the store computes of each artifact: unsigned payloads
        // (as boto3 sends over HTTPS) leave the signature over the headers,
        // and every object's size is checked after upload and every
        // artifact's digest on each read.
        b = b.with_unsigned_payload(true);
        b = match opts.checksum {
            UploadChecksum::Sha256 => b.with_checksum_algorithm(Checksum::SHA256),
            UploadChecksum::Crc64Nvme => b.with_checksum_algorithm(Checksum::CRC64NVME),
            UploadChecksum::Off => b,
        };
        let s3 = b.build().map_err(to_io)?;
        Ok(Self {
            s3: Arc::new(s3),
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
            parts: Arc::new(tokio::sync::Semaphore::new(PARTS_IN_FLIGHT)),
        })
    }

    /// `s3://bucket/prefix`.
    pub fn url(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }

    fn path(&self, rel: &str) -> Path {
        if self.prefix.is_empty() {
            Path::from(rel)
        } else {
            Path::from(format!("{}/{rel}", self.prefix))
        }
    }

    fn dir(&self, key: &BackupKey) -> Path {
        self.path(&format!("apps/{}/{}", key.app, key.id))
    }

    fn object(&self, key: &BackupKey, path: &str) -> Path {
        self.path(&format!("apps/{}/{}/{path}", key.app, key.id))
    }

    fn marker(&self, key: &BackupKey) -> Path {
        self.path(&format!("apps/{}/{}.partial", key.app, key.id))
    }

    /// The object's size; None when there is none.
    async fn size_of(&self, path: &Path) -> io::Result<Option<u64>> {
        match self.s3.head(path).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(to_io(e)),
        }
    }

    /// Writes a small object whole; `create` refuses one that exists.
    async fn put(&self, path: &Path, bytes: Bytes, create: bool) -> io::Result<()> {
        let len = bytes.len() as u64;
        let mode = if create {
            PutMode::Create
        } else {
            PutMode::Overwrite
        };
        self.s3
            .put_opts(path, PutPayload::from(bytes), PutOptions::from(mode))
            .await
            .map_err(to_io)?;
        self.check_size(path, len).await
    }

    /// After a write: the service holds `len` bytes at `path`, or the
    /// backup must not be COMPLETED.
    async fn check_size(&self, path: &Path, len: u64) -> io::Result<()> {
        match self.size_of(path).await? {
            Some(n) if n == len => Ok(()),
            found => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{path}: the service holds {} after {len} bytes were sent",
                    found.map_or("no object".to_owned(), |n| format!("{n} bytes"))
                ),
            )),
        }
    }

    async fn get_small(&self, path: &Path, limit: u64) -> io::Result<Vec<u8>> {
        let got = self.s3.get(path).await.map_err(to_io)?;
        if got.meta.size > limit {
            return Err(io::Error::new(io::ErrorKind::FileTooLarge, "too large"));
        }
        Ok(got.bytes().await.map_err(to_io)?.to_vec())
    }

    async fn delete_quietly(&self, path: &Path) -> io::Result<()> {
        match self.s3.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(to_io(e)),
        }
    }

    /// Deletes every object under `dir/`.
    async fn delete_under(&self, dir: &Path) -> io::Result<()> {
        let listed = self.s3.list(Some(dir)).map_ok(|m| m.location).boxed();
        let mut deleted = self.s3.delete_stream(listed);
        while let Some(done) = deleted.next().await {
            match done {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(to_io(e)),
            }
        }
        Ok(())
    }

    async fn journal(&self, key: &BackupKey) -> io::Result<Option<Journal>> {
        match self.get_small(&self.marker(key), 1 << 20).await {
            Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).unwrap_or_default())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Removes whatever exists of backup `key`: its multipart uploads, its
    /// objects, its mark.
    async fn remove_all(&self, key: &BackupKey) -> io::Result<()> {
        if let Some(journal) = self.journal(key).await? {
            for u in journal.uploads {
                let path = self.object(key, &u.path);
                // A completed upload cannot be aborted: nothing is lost.
                if let Err(e) = self.s3.abort_multipart(&path, &u.upload_id).await {
                    tracing::debug!(%path, error = %e, "multipart upload not aborted");
                }
            }
        }
        self.delete_under(&self.dir(key)).await?;
        self.delete_quietly(&self.marker(key)).await
    }

    /// Every backup place under `apps/`, and what it holds. Memory grows
    /// with the number of backups, not of objects.
    async fn survey(&self) -> io::Result<BTreeMap<BackupKey, Found>> {
        let apps = self.path("apps");
        let skip = apps.parts().count();
        let mut found: BTreeMap<BackupKey, Found> = BTreeMap::new();
        let mut listing = self.s3.list(Some(&apps));
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(to_io)?;
            let parts: Vec<String> = meta
                .location
                .parts()
                .skip(skip)
                .map(|p| p.as_ref().to_owned())
                .collect();
            let [app, entry, rest @ ..] = parts.as_slice() else {
                continue;
            };
            if rest.is_empty() {
                if let Some(id) = entry.strip_suffix(".partial") {
                    found.entry(BackupKey::new(app, id)).or_default().marked =
                        Some(meta.last_modified);
                }
                continue;
            }
            let f = found.entry(BackupKey::new(app, entry)).or_default();
            f.objects += 1;
            f.manifest |= rest.len() == 1 && rest[0] == MANIFEST_FILE;
        }
        Ok(found)
    }

    /// Removes what interrupted writes and deletes left, except what
    /// `spare` names and the marks newer than `fresh` (begun after the
    /// caller learnt what is busy); returns what is left that may be
    /// backups, and how many places were cleaned.
    async fn clean(
        &self,
        spare: Spare<'_>,
        fresh: Option<chrono::DateTime<chrono::Utc>>,
    ) -> io::Result<Scan> {
        let mut scan = Scan::default();
        for (key, f) in self.survey().await? {
            let young = matches!((f.marked, fresh), (Some(at), Some(fresh)) if at > fresh);
            if !f.manifest && (young || spare(&key)) {
                continue;
            }
            match (f.manifest, f.marked.is_some()) {
                (true, false) => scan.backups.push((key.app, key.id)),
                // Being rewritten (spared, or begun after the caller learnt
                // what is busy), or committed and the mark's removal did
                // not happen: an hour later.
                (true, true) if spare(&key) || young => scan.backups.push((key.app, key.id)),
                (true, true) => {
                    self.remove_all_uploads(&key).await;
                    self.delete_quietly(&self.marker(&key)).await?;
                    scan.backups.push((key.app, key.id));
                }
                (false, _) => {
                    tracing::info!(app = %key.app, backup_id = %key.id, objects = f.objects,
                        "removing the objects of an interrupted backup or delete");
                    self.remove_all(&key).await?;
                    scan.removed += 1;
                }
            }
        }
        Ok(scan)
    }

    async fn remove_all_uploads(&self, key: &BackupKey) {
        if let Ok(Some(journal)) = self.journal(key).await {
            for u in journal.uploads {
                let _ = self
                    .s3
                    .abort_multipart(&self.object(key, &u.path), &u.upload_id)
                    .await;
            }
        }
    }
}

/// One step of [`S3Bucket::check`]: what was tried, and what went wrong.
#[derive(Debug)]
pub struct CheckStep {
    pub what: &'static str,
    pub outcome: Result<(), String>,
}

impl S3Bucket {
    /// Tries what backups need of the service, on canary objects under
    /// `hop3-check/` that it removes: a write, a ranged read, a 2-part
    /// multipart upload, a conditional create that must conflict, a
    /// listing, deletes. Stops at the first step that cannot go on.
    pub async fn check(&self) -> Vec<CheckStep> {
        let nonce: u64 = rand::random();
        let dir = self.path(&format!("hop3-check/{nonce:016x}"));
        let canary = dir.clone().join("canary");
        let parts = dir.clone().join("multipart");
        let body: Bytes = (0..4096u32)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<_>>()
            .into();
        let mut steps = Vec::new();
        let mut step = |what, outcome: Result<(), String>| {
            let ok = outcome.is_ok();
            steps.push(CheckStep { what, outcome });
            ok
        };
        let s3 = &self.s3;
        let wrote = self.put(&canary, body.clone(), true).await;
        if !step(
            "write (a conditional PUT, checked by a HEAD)",
            wrote.map_err(|e| e.to_string()),
        ) {
            return steps;
        }
        let read = match s3.get_range(&canary, 100..200).await {
            Ok(b) if b[..] == body[100..200] => Ok(()),
            Ok(b) => Err(format!(
                "bytes 100..200 came back as {} other bytes",
                b.len()
            )),
            Err(e) => Err(e.to_string()),
        };
        step("read back (a ranged GET)", read);
        let multipart = async {
            let id = s3.create_multipart(&parts).await?;
            let first = s3
                .put_part(&parts, &id, 0, Bytes::from(vec![7u8; PART_SIZE]).into())
                .await?;
            let second = s3.put_part(&parts, &id, 1, body.clone().into()).await?;
            s3.complete_multipart(&parts, &id, vec![first, second])
                .await?;
            let size = s3.head(&parts).await?.size;
            Ok::<_, object_store::Error>(size)
        };
        let want = (PART_SIZE + body.len()) as u64;
        let multipart = match multipart.await {
            Ok(size) if size == want => Ok(()),
            Ok(size) => Err(format!("{size} bytes stored of {want}")),
            Err(e) => Err(e.to_string()),
        };
        step("multipart upload (2 parts)", multipart);
        let again = s3
            .put_opts(
                &canary,
                PutPayload::from(Bytes::from_static(b"x")),
                PutMode::Create.into(),
            )
            .await;
        let conflict = match again {
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => Ok(()),
            Ok(_) => Err("the service overwrote the object: it ignores If-None-Match, so it cannot keep backups write-once".into()),
            Err(e) => Err(e.to_string()),
        };
        step(
            "conditional create of an existing object conflicts",
            conflict,
        );
        let listed: Result<Vec<_>, _> = s3.list(Some(&dir)).try_collect().await;
        let listed = match listed {
            Ok(l) if l.len() == 2 => Ok(()),
            Ok(l) => Err(format!("{} objects listed of 2", l.len())),
            Err(e) => Err(e.to_string()),
        };
        step("list", listed);
        let deleted = async {
            for p in [&canary, &parts] {
                self.delete_quietly(p).await?;
                if self.size_of(p).await?.is_some() {
                    return Err(io::Error::other(format!("{p} is still there")));
                }
            }
            Ok(())
        };
        step("delete", deleted.await.map_err(|e| e.to_string()));
        steps
    }
}

#[async_trait::async_trait]
impl Backend for S3Bucket {
    fn location(&self, key: &BackupKey) -> String {
        format!("{}/apps/{}/{}", self.url(), key.app, key.id)
    }

    fn describe(&self) -> String {
        self.url()
    }

    async fn begin(&self, key: &BackupKey) -> io::Result<Box<dyn Staging>> {
        if self.exists(key).await? {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists", self.location(key)),
            ));
        }
        let journal = Journal::default();
        let body = serde_json::to_vec(&journal).expect("a journal serialises");
        self.put(&self.marker(key), body.into(), true).await?;
        Ok(Box::new(S3Staging {
            bucket: self.clone(),
            key: key.clone(),
            journal: Arc::new(Mutex::new(journal)),
            created: HashSet::new(),
            rewrite: false,
        }))
    }

    async fn rewrite(&self, key: &BackupKey) -> io::Result<Box<dyn Staging>> {
        if self
            .size_of(&self.object(key, MANIFEST_FILE))
            .await?
            .is_none()
        {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} holds no backup", self.location(key)),
            ));
        }
        // The mark of a rewrite that was cut short: its uploads are aborted
        // and its objects, which no manifest names, are the caller's to remove.
        self.remove_all_uploads(key).await;
        let journal = Journal::default();
        let body = serde_json::to_vec(&journal).expect("a journal serialises");
        // The mark journals the multipart uploads, as for a new backup; a
        // sweep finds it beside a manifest and aborts what it lists.
        self.put(&self.marker(key), body.into(), false).await?;
        Ok(Box::new(S3Staging {
            bucket: self.clone(),
            key: key.clone(),
            journal: Arc::new(Mutex::new(journal)),
            created: HashSet::new(),
            rewrite: true,
        }))
    }

    async fn list(&self, key: &BackupKey) -> io::Result<Vec<String>> {
        let dir = self.dir(key);
        let skip = dir.parts().count();
        let mut out: Vec<String> = self
            .s3
            .list(Some(&dir))
            .map_ok(|m| {
                m.location
                    .parts()
                    .skip(skip)
                    .map(|p| p.as_ref().to_owned())
                    .collect::<Vec<_>>()
                    .join("/")
            })
            .try_collect()
            .await
            .map_err(to_io)?;
        out.sort();
        Ok(out)
    }

    async fn remove(&self, key: &BackupKey, path: &str) -> io::Result<()> {
        self.delete_quietly(&self.object(key, path)).await
    }

    async fn read_small(&self, key: &BackupKey, path: &str, limit: u64) -> io::Result<Vec<u8>> {
        self.get_small(&self.object(key, path), limit).await
    }

    async fn replace_small(&self, key: &BackupKey, path: &str, bytes: &[u8]) -> io::Result<()> {
        self.put(
            &self.object(key, path),
            Bytes::copy_from_slice(bytes),
            false,
        )
        .await
    }

    async fn open(&self, key: &BackupKey, path: &str) -> io::Result<ByteStream> {
        let path = self.object(key, path);
        let meta = self.s3.head(&path).await.map_err(to_io)?;
        let s3 = self.s3.clone();
        let etag = meta.e_tag.clone();
        let ranges = (0..meta.size.div_ceil(READ_RANGE))
            .map(move |i| i * READ_RANGE..((i + 1) * READ_RANGE).min(meta.size));
        let stream = futures::stream::iter(ranges)
            .map(move |range| {
                let (s3, path) = (s3.clone(), path.clone());
                let opts = GetOptions {
                    range: Some(GetRange::Bounded(range)),
                    // Write-once: a changed object is an error, not a mix.
                    if_match: etag.clone(),
                    ..GetOptions::default()
                };
                async move {
                    let got = s3.get_opts(&path, opts).await.map_err(to_io)?;
                    Ok::<_, io::Error>(got.into_stream().map_err(to_io))
                }
            })
            .buffered(2)
            .try_flatten();
        Ok(stream.boxed())
    }

    async fn has(&self, key: &BackupKey, path: &str) -> io::Result<bool> {
        Ok(self.size_of(&self.object(key, path)).await?.is_some())
    }

    async fn exists(&self, key: &BackupKey) -> io::Result<bool> {
        if self.size_of(&self.marker(key)).await?.is_some() {
            return Ok(true);
        }
        let mut listing = self.s3.list(Some(&self.dir(key)));
        match listing.next().await {
            Some(Ok(_)) => Ok(true),
            Some(Err(e)) => Err(to_io(e)),
            None => Ok(false),
        }
    }

    async fn delete(&self, key: &BackupKey) -> io::Result<()> {
        self.delete_quietly(&self.object(key, MANIFEST_FILE))
            .await?;
        self.delete_under(&self.dir(key)).await
    }

    async fn discard(&self, key: &BackupKey) {
        if let Err(e) = self.remove_all(key).await {
            tracing::warn!(location = %self.location(key), error = %e,
                "could not remove a partial backup; the next sweep will");
        }
    }

    async fn scan(&self, spare: Spare<'_>) -> io::Result<Scan> {
        self.clean(spare, None).await
    }

    async fn sweep(&self, busy: &HashSet<BackupKey>) -> io::Result<usize> {
        // A backup begun after `busy` was read is not in it: its mark is
        // young. The margin covers the service's clock against ours.
        let fresh = chrono::Utc::now() - SWEEP_MARGIN;
        Ok(self
            .clean(&|k| busy.contains(k), Some(fresh))
            .await?
            .removed)
    }

    async fn free_space(&self) -> io::Result<Option<u64>> {
        Ok(None)
    }

    async fn has_mark(&self, name: &str) -> io::Result<bool> {
        Ok(self
            .size_of(&self.path(&format!(".{name}")))
            .await?
            .is_some())
    }

    async fn set_mark(&self, name: &str) -> io::Result<()> {
        self.put(&self.path(&format!(".{name}")), Bytes::new(), false)
            .await
    }

    async fn read_doc(&self, dir: &str, name: &str, limit: u64) -> io::Result<Option<Vec<u8>>> {
        match self
            .get_small(&self.path(&format!("{dir}/{name}")), limit)
            .await
        {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn write_doc(&self, dir: &str, name: &str, bytes: &[u8]) -> io::Result<()> {
        let path = self.path(&format!("{dir}/{name}"));
        self.put(&path, Bytes::copy_from_slice(bytes), false).await
    }

    async fn remove_doc(&self, dir: &str, name: &str) -> io::Result<()> {
        self.delete_quietly(&self.path(&format!("{dir}/{name}")))
            .await
    }

    async fn list_docs(&self, dir: &str) -> io::Result<Vec<String>> {
        let listed = self
            .s3
            .list_with_delimiter(Some(&self.path(dir)))
            .await
            .map_err(to_io)?;
        let mut names: Vec<String> = listed
            .objects
            .iter()
            .filter_map(|m| m.location.filename().map(str::to_owned))
            .collect();
        names.sort();
        Ok(names)
    }
}

/// A backup being written to the bucket.
struct S3Staging {
    bucket: S3Bucket,
    key: BackupKey,
    journal: Arc<Mutex<Journal>>,
    /// Artifacts created by this staging (a HEAD cannot see one whose
    /// upload is still going).
    created: HashSet<String>,
    /// Adding to a complete backup: the commit replaces its manifest, an
    /// abort removes only what was created.
    rewrite: bool,
}

#[async_trait::async_trait]
impl Staging for S3Staging {
    async fn create(&mut self, path: &str) -> io::Result<Box<dyn ArtifactSink>> {
        let object = self.bucket.object(&self.key, path);
        if self.created.contains(path) || self.bucket.size_of(&object).await?.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{object} exists"),
            ));
        }
        self.created.insert(path.to_owned());
        Ok(Box::new(S3Sink {
            bucket: self.bucket.clone(),
            key: self.key.clone(),
            rel: path.to_owned(),
            object,
            journal: self.journal.clone(),
            // Most artifacts (ENV, app.json, env.json, small dumps) are
            // far below a part: the part's room is taken once one is not.
            buf: BytesMut::new(),
            upload: None,
            in_flight: JoinSet::new(),
            parts: Vec::new(),
            written: 0,
        }))
    }

    async fn commit(
        self: Box<Self>,
        extra: Vec<(String, Vec<u8>)>,
        manifest: Vec<u8>,
    ) -> io::Result<()> {
        let create = !self.rewrite;
        for (name, bytes) in extra {
            let path = self.bucket.object(&self.key, &name);
            self.bucket.put(&path, bytes.into(), create).await?;
        }
        let path = self.bucket.object(&self.key, MANIFEST_FILE);
        self.bucket.put(&path, manifest.into(), create).await?;
        // Committed: a mark left behind is only removed by the next sweep.
        if let Err(e) = self
            .bucket
            .delete_quietly(&self.bucket.marker(&self.key))
            .await
        {
            tracing::warn!(location = %self.bucket.location(&self.key), error = %e,
                "could not remove the mark of a committed backup");
        }
        Ok(())
    }

    async fn abort(self: Box<Self>) {
        if !self.rewrite {
            return self.bucket.discard(&self.key).await;
        }
        self.bucket.remove_all_uploads(&self.key).await;
        for path in &self.created {
            if let Err(e) = self.bucket.remove(&self.key, path).await {
                tracing::warn!(location = %self.bucket.location(&self.key), path, error = %e,
                    "could not remove an object of an unfinished rewrite");
            }
        }
        let _ = self
            .bucket
            .delete_quietly(&self.bucket.marker(&self.key))
            .await;
    }
}

/// What an artifact's buffer grows to before it takes a whole part's room.
const SMALL_ARTIFACT: usize = 256 * 1024;

/// One artifact going up: small ones in one PUT at the end, others as a
/// multipart upload of [`PART_SIZE`] parts, [`PARTS_IN_FLIGHT`] at a time.
struct S3Sink {
    bucket: S3Bucket,
    key: BackupKey,
    rel: String,
    object: Path,
    journal: Arc<Mutex<Journal>>,
    buf: BytesMut,
    upload: Option<String>,
    in_flight: JoinSet<(usize, object_store::Result<PartId>)>,
    parts: Vec<Option<PartId>>,
    written: u64,
}

impl S3Sink {
    /// Starts the multipart upload, recorded in the backup's mark first
    /// so that it is never lost.
    async fn upload_id(&mut self) -> io::Result<String> {
        if let Some(id) = &self.upload {
            return Ok(id.clone());
        }
        let id = self
            .bucket
            .s3
            .create_multipart(&self.object)
            .await
            .map_err(to_io)?;
        let mut journal = self.journal.lock().await;
        journal.uploads.push(Upload {
            path: self.rel.clone(),
            upload_id: id.clone(),
        });
        let body = serde_json::to_vec(&*journal).expect("a journal serialises");
        let marker = self.bucket.marker(&self.key);
        if let Err(e) = self.bucket.put(&marker, body.into(), false).await {
            let _ = self.bucket.s3.abort_multipart(&self.object, &id).await;
            return Err(e);
        }
        self.upload = Some(id.clone());
        Ok(id)
    }

    /// Waits for one part in flight.
    async fn settle_one(&mut self) -> io::Result<()> {
        if let Some(done) = self.in_flight.join_next().await {
            let (idx, part) = done.map_err(io::Error::other)?;
            self.parts[idx] = Some(part.map_err(to_io)?);
        }
        Ok(())
    }

    async fn send_part(&mut self) -> io::Result<()> {
        let id = self.upload_id().await?;
        let permit = self
            .bucket
            .parts
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        // What finished meanwhile is collected, so that a failed part stops
        // this upload at once.
        while let Some(done) = self.in_flight.try_join_next() {
            let (idx, part) = done.map_err(io::Error::other)?;
            self.parts[idx] = Some(part.map_err(to_io)?);
        }
        let data = std::mem::replace(&mut self.buf, BytesMut::with_capacity(PART_SIZE)).freeze();
        let idx = self.parts.len();
        self.parts.push(None);
        let (s3, object) = (self.bucket.s3.clone(), self.object.clone());
        self.in_flight.spawn(async move {
            let part = s3.put_part(&object, &id, idx, data.into()).await;
            drop(permit);
            (idx, part)
        });
        Ok(())
    }
}

#[async_trait::async_trait]
impl ArtifactSink for S3Sink {
    async fn write(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        self.written += bytes.len() as u64;
        while !bytes.is_empty() {
            let room = PART_SIZE - self.buf.len();
            let (now, later) = bytes.split_at(room.min(bytes.len()));
            if self.buf.capacity() < PART_SIZE && self.buf.len() + now.len() > SMALL_ARTIFACT {
                self.buf.reserve(PART_SIZE - self.buf.len());
            }
            self.buf.extend_from_slice(now);
            bytes = later;
            if self.buf.len() == PART_SIZE {
                self.send_part().await?;
            }
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> io::Result<()> {
        if self.upload.is_none() {
            let data = std::mem::take(&mut self.buf).freeze();
            return self.bucket.put(&self.object, data, true).await;
        }
        if !self.buf.is_empty() {
            self.send_part().await?;
        }
        while !self.in_flight.is_empty() {
            self.settle_one().await?;
        }
        let parts: Vec<PartId> = self.parts.drain(..).map(|p| p.expect("settled")).collect();
        let id = self.upload.clone().expect("started");
        self.bucket
            .s3
            .complete_multipart(&self.object, &id, parts)
            .await
            .map_err(to_io)?;
        self.bucket.check_size(&self.object, self.written).await
    }
}

/// An `object_store` error as the store's I/O error kinds.
fn to_io(e: object_store::Error) -> io::Error {
    use object_store::Error as E;
    let kind = match &e {
        E::NotFound { .. } => io::ErrorKind::NotFound,
        E::AlreadyExists { .. } | E::Precondition { .. } => io::ErrorKind::AlreadyExists,
        E::NotImplemented { .. } | E::NotSupported { .. } => io::ErrorKind::Unsupported,
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => io::ErrorKind::PermissionDenied,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e)
}
