//! Encrypting what a backup sends: with recipients in the request, every
//! artifact leaves the agent as an age file, compressed first. The agent
//! holds public keys only; nothing here can open what it wrote.

use std::io::{self, Write};
use std::sync::Arc;
use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread::JoinHandle;

use hop3_proto::{Checksum, v1};
use hop3_wire::artifacts::FrameWriter;
use hop3_wire::encryption::Recipients;

use crate::error::{AgentError, Result};

type Frames = FrameWriter<v1::BackupAppEvent>;

/// What the encrypting thread hands back: the frames, and the plaintext's
/// digest and size.
type Encrypted = io::Result<(Frames, (Checksum, u64))>;

/// Bytes handed to the encrypting thread at a time.
const BLOCK: usize = 1024 * 1024;

/// Blocks waiting for the encrypting thread: what it may lag behind.
const BLOCKS_QUEUED: usize = 2;

/// Where an artifact's bytes go on a blocking thread: straight into frames,
/// or through age into frames.
pub enum Sink {
    Plain(Frames),
    Encrypted(Encrypter),
}

impl Sink {
    /// `frames`, encrypted to `recipients` when there are any.
    pub fn new(frames: Frames, recipients: Option<&Recipients>) -> Result<Self> {
        Ok(match recipients {
            None => Sink::Plain(frames),
            Some(r) => Sink::Encrypted(Encrypter::start(frames, r)?),
        })
    }

    /// Ends the artifact: age's last chunk, the last frame and the end.
    pub fn finish(self) -> Result<()> {
        match self {
            Sink::Plain(frames) => frames.finish()?,
            Sink::Encrypted(e) => {
                let (frames, plain) = e.finish()?;
                frames.finish_encrypted(Some(plain))?
            }
        };
        Ok(())
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sink::Plain(w) => w.write(buf),
            Sink::Encrypted(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Encrypts on a thread of its own: the thread that packs (tar, the files'
/// digests, feeding the compressor) is the backup's narrowest stage, and
/// ChaCha20 plus two SHA-256 passes (plaintext and ciphertext) would
/// otherwise run on it, in series.
pub struct Encrypter {
    block: Vec<u8>,
    tx: Option<SyncSender<Vec<u8>>>,
    worker: Option<JoinHandle<Encrypted>>,
}

impl Encrypter {
    fn start(frames: Frames, recipients: &Recipients) -> Result<Self> {
        let mut encrypting = recipients
            .encrypt_into(frames)
            .map_err(|e| AgentError::Protocol(format!("cannot encrypt: {e}")))?;
        let (tx, rx) = sync_channel::<Vec<u8>>(BLOCKS_QUEUED);
        let worker = std::thread::Builder::new()
            .name("hop3-encrypt".into())
            .spawn(move || {
                for block in rx {
                    encrypting.write_all(&block)?;
                }
                encrypting.finish()
            })
            .map_err(|e| AgentError::io("starting the encryption thread", e))?;
        Ok(Self {
            block: Vec::with_capacity(BLOCK),
            tx: Some(tx),
            worker: Some(worker),
        })
    }

    fn send_block(&mut self) -> io::Result<()> {
        if self.block.is_empty() {
            return Ok(());
        }
        let block = std::mem::replace(&mut self.block, Vec::with_capacity(BLOCK));
        let sent = self.tx.as_ref().is_some_and(|tx| tx.send(block).is_ok());
        if sent {
            return Ok(());
        }
        // The thread stopped: its error is the one to report.
        Err(match self.join() {
            Err(e) => e,
            Ok(_) => io::Error::new(io::ErrorKind::BrokenPipe, "the encryption thread stopped"),
        })
    }

    fn join(&mut self) -> Encrypted {
        self.tx = None;
        match self.worker.take() {
            Some(w) => w
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the encryption thread panicked"))),
            None => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the encryption thread stopped",
            )),
        }
    }

    /// Sends the last block and waits for age's last chunk; the frames and
    /// the plaintext's digest and size.
    fn finish(mut self) -> Result<(Frames, (Checksum, u64))> {
        self.send_block()
            .and_then(|()| self.join())
            .map_err(|e| AgentError::io("encrypting an artifact", e))
    }
}

impl Write for Encrypter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(BLOCK - self.block.len());
        self.block.extend_from_slice(&buf[..n]);
        if self.block.len() == BLOCK {
            self.send_block()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The recipients a request names, parsed; None when it names none.
pub fn recipients(req: &v1::BackupAppRequest) -> Result<Option<Arc<Recipients>>> {
    if req.recipients.is_empty() {
        return Ok(None);
    }
    Recipients::parse(&req.recipients)
        .map(|r| Some(Arc::new(r)))
        .map_err(|e| AgentError::Protocol(e.to_string()))
}
