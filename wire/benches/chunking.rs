//! Format 2's agent side on 256 MiB of half-compressible bytes, beside the
//! baseline every backup pays already: SHA-256 of the same bytes (a
//! format 1 backup hashes every file). Chunking (FastCDC, plain and keyed)
//! must stay well above the disk; packing adds zstd (and age) per chunk.
//! Medians of 5 runs, MiB/s of input on one thread.
//!
//!   cargo bench -p hop3-wire --bench chunking

use std::sync::Arc;
use std::time::{Duration, Instant};

use hop3_wire::chunking::{ChunkId, Chunker, DedupKey};
use hop3_wire::encryption::{Identities, Recipients};
use hop3_wire::pack::{PACK_TARGET, PackWriter};
use sha2::{Digest, Sha256};

/// Half incompressible, half text-like, in 64 KiB runs.
fn data(mib: usize) -> Vec<u8> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let words = b"backup restore chunk pack store agent controller ";
    (0..mib << 20)
        .map(|i| {
            if (i >> 16) % 2 == 0 {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
            } else {
                words[i % words.len()]
            }
        })
        .collect()
}

fn median(mut runs: Vec<Duration>) -> Duration {
    runs.sort();
    runs[runs.len() / 2]
}

fn time(runs: usize, mut f: impl FnMut()) -> Duration {
    median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect(),
    )
}

/// Chunks `input` and packs every chunk, closing packs at the target size.
fn pack_all(input: &[u8], chunker: &Chunker, to: Option<Arc<Recipients>>) -> (usize, usize) {
    let (mut packs, mut stored) = (0, 0);
    let mut w = PackWriter::new(to.clone());
    for c in chunker.chunks(input) {
        let c = c.unwrap();
        w.add(c.id, &c.data).unwrap();
        if w.len() >= PACK_TARGET {
            let p = std::mem::replace(&mut w, PackWriter::new(to.clone())).finish();
            packs += 1;
            stored += p.bytes.len();
        }
    }
    if !w.is_empty() {
        packs += 1;
        stored += w.finish().bytes.len();
    }
    (packs, stored)
}

fn main() {
    const MIB: usize = 256;
    let input = data(MIB);
    let rate = |d: Duration| MIB as f64 / d.as_secs_f64();
    let key = DedupKey::from_bytes([3; 32]);
    let (plain, keyed) = (Chunker::new(None), Chunker::new(Some(key)));
    let to =
        Arc::new(Recipients::parse(&[Identities::generate().to_public().to_string()]).unwrap());

    let sha = time(5, || {
        std::hint::black_box(Sha256::digest(&input));
    });
    let count = |chunker: &Chunker| {
        let mut n = 0;
        for c in chunker.chunks(&input[..]) {
            std::hint::black_box(c.unwrap().id);
            n += 1;
        }
        n
    };
    let mut n = 0;
    let cut = time(5, || n = count(&plain));
    let cut_keyed = time(5, || {
        count(&keyed);
    });
    let ids_only = time(5, || {
        for c in input.chunks(1 << 20) {
            std::hint::black_box(ChunkId::of(c, None));
        }
    });
    let mut packed = (0, 0);
    let pack_plain = time(3, || packed = pack_all(&input, &plain, None));
    let pack_age = time(3, || {
        pack_all(&input, &keyed, Some(to.clone()));
    });

    println!("=== format 2 on the agent: {MIB} MiB, one thread, medians ===");
    println!(
        "SHA-256 of the bytes (baseline)          {:>7.0} MiB/s",
        rate(sha)
    );
    println!(
        "SHA-256 in 1 MiB pieces                  {:>7.0} MiB/s",
        rate(ids_only)
    );
    println!(
        "FastCDC + SHA-256 ids ({n} chunks)       {:>7.0} MiB/s  {:.2}x the baseline's time",
        rate(cut),
        cut.as_secs_f64() / sha.as_secs_f64()
    );
    println!(
        "FastCDC seeded + HMAC ids                {:>7.0} MiB/s  {:.2}x",
        rate(cut_keyed),
        cut_keyed.as_secs_f64() / sha.as_secs_f64()
    );
    println!(
        "chunk + zstd + pack ({} packs, {} MiB)   {:>7.0} MiB/s  {:.2}x",
        packed.0,
        packed.1 >> 20,
        rate(pack_plain),
        pack_plain.as_secs_f64() / sha.as_secs_f64()
    );
    println!(
        "chunk keyed + zstd + age + pack          {:>7.0} MiB/s  {:.2}x",
        rate(pack_age),
        pack_age.as_secs_f64() / sha.as_secs_f64()
    );
}
