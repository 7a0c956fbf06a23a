//! A format 2 blob opens by hand with the standard tools, as the guide's
//! manual checks do for format 1: `age -d -i identity.txt | zstd -d`
//! (`.ci/run` installs both).

use std::process::Command;
use std::sync::Arc;

use hop3_wire::chunking::{Chunker, DedupKey};
use hop3_wire::encryption::{Identities, Recipients};
use hop3_wire::pack::{PackWriter, read_index};

#[test]
fn an_encrypted_blob_opens_with_the_age_and_zstd_clis() {
    let dir = tempfile::tempdir().unwrap();
    let identity = Identities::generate();
    let identity_file = dir.path().join("identity.txt");
    std::fs::write(&identity_file, Identities::file_text(&identity, "now")).unwrap();
    let to = Arc::new(Recipients::parse(&[identity.to_public().to_string()]).unwrap());
    let data: Vec<u8> = (0..3_000_000u32)
        .flat_map(|i| (i % 9_973).to_le_bytes())
        .collect();
    let mut w = PackWriter::new(Some(to));
    let chunks: Vec<_> = Chunker::new(Some(DedupKey::generate()))
        .chunks(&data[..])
        .map(Result::unwrap)
        .collect();
    for c in &chunks {
        w.add(c.id, &c.data).unwrap();
    }
    let pack = w.finish();
    let index = read_index(&pack.bytes, pack.bytes.len() as u64).unwrap();
    assert_eq!(index.len(), chunks.len());
    for (entry, chunk) in index.iter().zip(&chunks) {
        let blob = dir.path().join("blob.age");
        let at = entry.offset as usize;
        std::fs::write(&blob, &pack.bytes[at..at + entry.length as usize]).unwrap();
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "age -d -i '{}' '{}' | zstd -d -c",
                identity_file.display(),
                blob.display()
            ))
            .output()
            .expect("sh runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stdout == chunk.data,
            "blob {} opened to other bytes",
            entry.id
        );
    }
}
