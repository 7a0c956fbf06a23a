//! The contract every [`Backend`] passes: one suite, run against each
//! implementation (a new backend adds itself to `contract_tests!`).

use std::io;
use std::sync::Arc;

use futures::StreamExt;
use hop3_proto::manifest::MANIFEST_FILE;

use super::{Backend, BackupKey, LocalDir, Memory, S3Bucket, S3Options, Store};
use hop3_tests::servers::Moto;

const APP: &str = "shop";
const ID: &str = "20261201_120000_abcdef";

fn key() -> BackupKey {
    BackupKey::new(APP, ID)
}

/// More than one frame, not a multiple of it.
fn big() -> Vec<u8> {
    (0..hop3_proto::FRAME_SIZE * 2 + 17)
        .map(|i| (i % 251) as u8)
        .collect()
}

async fn read_all(b: &dyn Backend, path: &str) -> io::Result<Vec<u8>> {
    let mut stream = b.open(&key(), path).await?;
    let mut out = Vec::new();
    while let Some(bytes) = stream.next().await {
        out.extend_from_slice(&bytes?);
    }
    Ok(out)
}

/// Writes a backup of two artifacts and, when `commit`, its manifest.
async fn write(b: &dyn Backend, commit: bool) {
    let mut staging = b.begin(&key()).await.unwrap();
    let mut sink = staging.create("data.tar.zst").await.unwrap();
    for piece in big().chunks(100_000) {
        sink.write(piece).await.unwrap();
    }
    sink.finish().await.unwrap();
    let mut sink = staging.create("services/postgres_db.sql").await.unwrap();
    sink.write(b"dump").await.unwrap();
    sink.finish().await.unwrap();
    if commit {
        staging
            .commit(
                vec![("metadata.seal".into(), b"seal".to_vec())],
                b"{}".to_vec(),
            )
            .await
            .unwrap();
    }
}

async fn artifacts_round_trip(b: &dyn Backend) {
    write(b, true).await;
    assert_eq!(read_all(b, "data.tar.zst").await.unwrap(), big());
    assert_eq!(
        read_all(b, "services/postgres_db.sql").await.unwrap(),
        b"dump"
    );
    assert!(b.has(&key(), "data.tar.zst").await.unwrap());
    assert!(!b.has(&key(), "source.tar.zst").await.unwrap());
    assert!(b.exists(&key()).await.unwrap());
    assert!(
        !b.exists(&BackupKey::new(APP, "20261201_120000_000000"))
            .await
            .unwrap()
    );
    let missing = read_all(b, "source.tar.zst").await.unwrap_err();
    assert_eq!(missing.kind(), io::ErrorKind::NotFound);
}

async fn the_manifest_is_the_commit(b: &dyn Backend) {
    write(b, false).await;
    let scan = b.scan(&|_| false).await.unwrap();
    assert!(scan.backups.is_empty(), "{:?}", scan.backups);
    assert_eq!(scan.removed, 1);
    assert!(!b.exists(&key()).await.unwrap(), "the leftover is gone");
    write(b, true).await;
    let scan = b.scan(&|_| false).await.unwrap();
    assert_eq!(scan.backups, [(APP.to_owned(), ID.to_owned())]);
    assert_eq!(scan.removed, 0);
    assert_eq!(
        b.read_small(&key(), MANIFEST_FILE, 1024).await.unwrap(),
        b"{}"
    );
    assert_eq!(
        b.read_small(&key(), "metadata.seal", 1024).await.unwrap(),
        b"seal"
    );
}

async fn a_scan_spares_the_backups_it_is_told_to(b: &dyn Backend) {
    // Being written (or deleted) while a scan runs: not a leftover.
    write(b, false).await;
    let scan = b.scan(&|k| k.id == ID).await.unwrap();
    assert_eq!((scan.backups.len(), scan.removed), (0, 0));
    assert!(
        b.exists(&key()).await.unwrap(),
        "a spared backup was removed"
    );
    assert_eq!(b.scan(&|_| false).await.unwrap().removed, 1);
    assert!(!b.exists(&key()).await.unwrap());
}

async fn an_artifact_is_written_once(b: &dyn Backend) {
    let mut staging = b.begin(&key()).await.unwrap();
    staging
        .create("env.json")
        .await
        .unwrap()
        .finish()
        .await
        .unwrap();
    let again = staging.create("env.json").await.err().unwrap();
    assert_eq!(again.kind(), io::ErrorKind::AlreadyExists);
    staging.abort().await;
    assert!(!b.exists(&key()).await.unwrap(), "abort leaves nothing");
}

async fn small_reads_are_bounded(b: &dyn Backend) {
    write(b, true).await;
    let err = b
        .read_small(&key(), "data.tar.zst", 1024)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::FileTooLarge);
    let err = b.read_small(&key(), "nope", 1024).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound);
    b.replace_small(&key(), "metadata.seal", b"new")
        .await
        .unwrap();
    assert_eq!(
        b.read_small(&key(), "metadata.seal", 1024).await.unwrap(),
        b"new"
    );
}

async fn delete_and_discard_leave_nothing(b: &dyn Backend) {
    write(b, true).await;
    b.delete(&key()).await.unwrap();
    assert!(!b.exists(&key()).await.unwrap());
    b.delete(&key()).await.unwrap();
    assert!(b.scan(&|_| false).await.unwrap().backups.is_empty());
    write(b, true).await;
    b.discard(&key()).await;
    assert!(!b.exists(&key()).await.unwrap());
    write(b, false).await;
    b.discard(&key()).await;
    assert_eq!(
        b.scan(&|_| false).await.unwrap().removed,
        0,
        "a discarded write is gone"
    );
}

async fn a_rewrite_adds_then_switches_and_aborts_cleanly(b: &dyn Backend) {
    let missing = b.rewrite(&key()).await.err().unwrap();
    assert_eq!(
        missing.kind(),
        io::ErrorKind::NotFound,
        "no backup to rewrite"
    );
    write(b, true).await;
    // Aborted: only what it wrote goes.
    let mut rewrite = b.rewrite(&key()).await.unwrap();
    let again = rewrite.create("data.tar.zst").await.err().unwrap();
    assert_eq!(again.kind(), io::ErrorKind::AlreadyExists, "write-once");
    let mut sink = rewrite.create("sealed-2/data.tar.zst.age").await.unwrap();
    sink.write(&big()).await.unwrap();
    sink.finish().await.unwrap();
    rewrite.abort().await;
    assert_eq!(
        b.list(&key()).await.unwrap(),
        [
            "data.tar.zst",
            MANIFEST_FILE,
            "metadata.seal",
            "services/postgres_db.sql"
        ]
    );
    assert_eq!(read_all(b, "data.tar.zst").await.unwrap(), big());

    let mut rewrite = b.rewrite(&key()).await.unwrap();
    for path in [
        "sealed-2/data.tar.zst.age",
        "sealed-2/services/postgres_db.sql.age",
    ] {
        let mut sink = rewrite.create(path).await.unwrap();
        sink.write(path.as_bytes()).await.unwrap();
        sink.finish().await.unwrap();
    }
    // Not switched yet: readers see the backup as it was.
    assert_eq!(
        b.read_small(&key(), MANIFEST_FILE, 1024).await.unwrap(),
        b"{}"
    );
    rewrite
        .commit(
            vec![("metadata.seal".into(), b"seal 2".to_vec())],
            b"{\"v\":2}".to_vec(),
        )
        .await
        .unwrap();
    assert_eq!(
        b.read_small(&key(), MANIFEST_FILE, 1024).await.unwrap(),
        b"{\"v\":2}"
    );
    assert_eq!(
        b.read_small(&key(), "metadata.seal", 1024).await.unwrap(),
        b"seal 2"
    );
    b.remove(&key(), "data.tar.zst").await.unwrap();
    b.remove(&key(), "services/postgres_db.sql").await.unwrap();
    b.remove(&key(), "services/postgres_db.sql").await.unwrap();
    assert_eq!(
        b.list(&key()).await.unwrap(),
        [
            MANIFEST_FILE,
            "metadata.seal",
            "sealed-2/data.tar.zst.age",
            "sealed-2/services/postgres_db.sql.age"
        ]
    );
    assert_eq!(
        read_all(b, "sealed-2/data.tar.zst.age").await.unwrap(),
        b"sealed-2/data.tar.zst.age"
    );
    let scan = b.scan(&|_| false).await.unwrap();
    assert_eq!(
        scan.backups,
        [(APP.to_owned(), ID.to_owned())],
        "still a backup"
    );
    assert_eq!(scan.removed, 0);
    b.delete(&key()).await.unwrap();
    assert!(
        !b.exists(&key()).await.unwrap(),
        "a delete takes the new objects too"
    );
}

async fn marks_stay_set(b: &dyn Backend) {
    assert!(!b.has_mark("sealed-once").await.unwrap());
    b.set_mark("sealed-once").await.unwrap();
    assert!(b.has_mark("sealed-once").await.unwrap());
}

/// Through the store above the backend: a sealed commit verifies, a
/// manifest naming another place is not a usable backup.
async fn documents_round_trip(b: &dyn Backend) {
    assert_eq!(
        b.list_docs("schedules").await.unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(b.read_doc("schedules", "a.json", 100).await.unwrap(), None);
    b.write_doc("schedules", "b.json", b"{}").await.unwrap();
    b.write_doc("schedules", "a.json", b"[1]").await.unwrap();
    b.write_doc("schedules", "a.json", b"[2]").await.unwrap();
    assert_eq!(
        b.list_docs("schedules").await.unwrap(),
        ["a.json", "b.json"]
    );
    assert_eq!(
        b.read_doc("schedules", "a.json", 100)
            .await
            .unwrap()
            .as_deref(),
        Some(&b"[2]"[..])
    );
    let err = b.read_doc("schedules", "a.json", 2).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::FileTooLarge);
    b.remove_doc("schedules", "a.json").await.unwrap();
    b.remove_doc("schedules", "a.json").await.unwrap();
    assert_eq!(b.list_docs("schedules").await.unwrap(), ["b.json"]);
    // Documents are no backups.
    assert!(b.scan(&|_| false).await.unwrap().backups.is_empty());
}

async fn the_store_seals_and_checks(b: Arc<dyn Backend>) {
    let keys = tempfile::tempdir().unwrap();
    let store = Store::with_backend(b, keys.path()).await.unwrap();
    let mut partial = store.begin(APP, ID).await.unwrap();
    partial.copy("env.json", &mut &b"{}"[..]).await.unwrap();
    let (sum, size) = partial.files()["env.json"];
    assert_eq!((sum, size), (hop3_proto::Checksum::of(b"{}"), 2));
    let manifest = sample_manifest(&partial);
    partial.commit(&manifest, true).await.unwrap();
    assert!(store.sealed(APP, ID).await);
    assert_eq!(store.read_manifest(APP, ID).await.unwrap(), manifest);
    let checks = store.verify(APP, ID, &manifest, &|_| {}).await;
    assert!(checks.iter().all(|c| c.valid()), "{checks:?}");
    let scan = store.scan(&|_| false).await.unwrap();
    assert_eq!((scan.backups.len(), scan.removed), (1, 0));
    let found = store.examine(APP, ID).await;
    assert_eq!(found.manifest.as_ref().unwrap(), &manifest);
}

fn sample_manifest(partial: &super::PartialBackup) -> hop3_proto::Manifest {
    hop3_proto::Manifest {
        backup_id: ID.into(),
        app_name: APP.into(),
        created_at: "2026-12-01T12:00:00Z".into(),
        format_version: hop3_proto::Format::DEFAULT.to_string(),
        hop3_version: hop3_proto::HOP3_VERSION.into(),
        size_bytes: 2,
        checksums: partial
            .files()
            .iter()
            .map(|(p, (c, _))| (p.clone(), *c))
            .collect(),
        encodings: Default::default(),
        app_metadata: Default::default(),
        services: vec![],
        env_vars_count: 0,
        expires_after: 0,
        services_included: true,
        host: None,
        layout: None,
        encrypted: None,
    }
}

/// A bucket of its own on a throwaway S3 server, which lives as long as
/// the returned handle.
async fn s3_bucket() -> (Moto, S3Bucket) {
    let moto = tokio::task::spawn_blocking(|| {
        let moto = Moto::start()?;
        moto.create_bucket("hop3-contract")?;
        anyhow::Ok(moto)
    })
    .await
    .unwrap()
    .unwrap();
    let opts = S3Options {
        access_key_id: Some(hop3_tests::servers::moto::ACCESS_KEY.into()),
        secret_access_key: Some(hop3_tests::servers::moto::SECRET_KEY.into()),
        region: Some("us-east-1".into()),
        endpoint: Some(moto.endpoint()),
        allow_http: true,
        ..S3Options::default()
    };
    let bucket = S3Bucket::open("hop3-contract", "prod/hop3", &opts).unwrap();
    (moto, bucket)
}

/// Bytes of more than two parts, the last one short.
fn parts() -> Vec<u8> {
    (0..super::PART_SIZE * 2 + 12_345)
        .map(|i| (i % 253) as u8)
        .collect()
}

#[tokio::test]
async fn s3_large_artifacts_go_up_in_parts_and_come_back_whole() {
    let (_moto, b) = s3_bucket().await;
    let mut staging = b.begin(&key()).await.unwrap();
    let mut sink = staging.create("data.tar.zst").await.unwrap();
    for piece in parts().chunks(1 << 20) {
        sink.write(piece).await.unwrap();
    }
    sink.finish().await.unwrap();
    staging.commit(vec![], b"{}".to_vec()).await.unwrap();
    assert_eq!(read_all(&b, "data.tar.zst").await.unwrap(), parts());
    assert_eq!(b.scan(&|_| false).await.unwrap().backups.len(), 1);
}

#[tokio::test]
async fn s3_an_interrupted_upload_is_aborted_and_its_objects_swept() {
    let (moto, b) = s3_bucket().await;
    let mut staging = b.begin(&key()).await.unwrap();
    let mut sink = staging.create("env.json").await.unwrap();
    sink.write(b"{}").await.unwrap();
    sink.finish().await.unwrap();
    let mut sink = staging.create("data.tar.zst").await.unwrap();
    sink.write(&parts()[..super::PART_SIZE + 1]).await.unwrap();
    // The controller dies here: nothing is finished, aborted or committed.
    drop(sink);
    drop(staging);
    let open = |m: &Moto| m.open_uploads("hop3-contract").unwrap();
    assert_eq!(
        open(&moto),
        ["prod/hop3/apps/shop/20261201_120000_abcdef/data.tar.zst"]
    );
    // Being written: a sweep leaves it alone.
    let busy = [key()].into_iter().collect();
    assert_eq!(b.sweep(&busy).await.unwrap(), 0);
    assert!(b.exists(&key()).await.unwrap());
    let scan = b.scan(&|_| false).await.unwrap();
    assert_eq!((scan.backups.len(), scan.removed), (0, 1));
    assert!(!b.exists(&key()).await.unwrap());
    assert_eq!(open(&moto), Vec::<String>::new(), "the upload was aborted");
}

#[tokio::test]
async fn s3_a_rewrite_under_way_survives_a_sweep_and_one_cut_short_is_aborted_at_start() {
    let (moto, b) = s3_bucket().await;
    write(&b, true).await;
    let mut rewrite = b.rewrite(&key()).await.unwrap();
    let mut sink = rewrite.create("sealed-2/data.tar.zst.age").await.unwrap();
    for piece in parts()[..super::PART_SIZE + 1].chunks(1 << 20) {
        sink.write(piece).await.unwrap();
    }
    let open = |m: &Moto| m.open_uploads("hop3-contract").unwrap();
    let upload = ["prod/hop3/apps/shop/20261201_120000_abcdef/sealed-2/data.tar.zst.age"];
    assert_eq!(open(&moto), upload);
    // Spared when the caller knows it is in use, and when it began lately.
    let busy = [key()].into_iter().collect();
    b.sweep(&busy).await.unwrap();
    b.sweep(&Default::default()).await.unwrap();
    assert_eq!(open(&moto), upload, "a sweep aborted a rewrite under way");
    sink.write(&parts()[super::PART_SIZE + 1..]).await.unwrap();
    sink.finish().await.unwrap();
    rewrite.commit(vec![], b"{\"v\":2}".to_vec()).await.unwrap();
    assert_eq!(
        read_all(&b, "sealed-2/data.tar.zst.age").await.unwrap(),
        parts()
    );

    // Killed halfway (nothing ran its abort): the scan at start aborts the
    // upload; the backup is the one its manifest says.
    let mut rewrite = b.rewrite(&key()).await.unwrap();
    let mut sink = rewrite.create("sealed-3/data.tar.zst.age").await.unwrap();
    for piece in parts()[..super::PART_SIZE + 1].chunks(1 << 20) {
        sink.write(piece).await.unwrap();
    }
    drop(sink);
    drop(rewrite);
    let scan = b.scan(&|_| false).await.unwrap();
    assert_eq!((scan.backups.len(), scan.removed), (1, 0));
    assert_eq!(open(&moto), Vec::<String>::new(), "the upload was aborted");
    assert_eq!(
        b.read_small(&key(), MANIFEST_FILE, 1024).await.unwrap(),
        b"{\"v\":2}"
    );
}

macro_rules! contract_tests {
    ($($case:ident),* $(,)?) => {
        mod local_dir {
            $(
                #[tokio::test]
                async fn $case() {
                    let tmp = tempfile::tempdir().unwrap();
                    let b = super::LocalDir::open(tmp.path()).await.unwrap();
                    super::$case(&b).await;
                }
            )*

            #[tokio::test]
            async fn the_store_seals_and_checks() {
                let tmp = tempfile::tempdir().unwrap();
                let b = super::LocalDir::open(tmp.path()).await.unwrap();
                super::the_store_seals_and_checks(std::sync::Arc::new(b)).await;
            }
        }
        mod s3 {
            $(
                #[tokio::test]
                async fn $case() {
                    let (_moto, b) = super::s3_bucket().await;
                    super::$case(&b).await;
                }
            )*

            #[tokio::test]
            async fn the_store_seals_and_checks() {
                let (_moto, b) = super::s3_bucket().await;
                super::the_store_seals_and_checks(std::sync::Arc::new(b)).await;
            }
        }
        mod memory {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(&super::Memory::new()).await;
                }
            )*

            #[tokio::test]
            async fn the_store_seals_and_checks() {
                super::the_store_seals_and_checks(std::sync::Arc::new(super::Memory::new())).await;
            }
        }
    };
}

contract_tests!(
    artifacts_round_trip,
    the_manifest_is_the_commit,
    a_scan_spares_the_backups_it_is_told_to,
    an_artifact_is_written_once,
    small_reads_are_bounded,
    delete_and_discard_leave_nothing,
    a_rewrite_adds_then_switches_and_aborts_cleanly,
    marks_stay_set,
    documents_round_trip,
);
