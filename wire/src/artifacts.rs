//! The one framing of artifacts on a stream, both ways (the agent's backup
//! stream to the controller, the controller's restore stream to the agent):
//! each artifact is a start (its path and an id unique within the stream),
//! data frames tagged with that id, and an end with its SHA-256 and size.
//! Artifacts may interleave. One encoder (async and blocking) and one
//! decoder, which hash and count every byte with [`Tally`].

use std::collections::{HashMap, HashSet};
use std::io;

use hop3_proto::v1::{self, ArtifactData, ArtifactEnd, ArtifactStart};
use hop3_proto::{Checksum, FRAME_SIZE, Tally};
use tokio::io::AsyncRead;

use crate::chunks::next_chunk;
use crate::events::{Closed, EventSender};

/// One frame of an artifact.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Start(ArtifactStart),
    Data(ArtifactData),
    End(ArtifactEnd),
}

/// A stream message that carries artifact frames.
pub trait Carrier: Send + 'static {
    /// The message carrying `frame`.
    fn carry(frame: Frame) -> Self;
}

impl Carrier for v1::BackupAppEvent {
    fn carry(frame: Frame) -> Self {
        use v1::backup_app_event::Event;
        let event = match frame {
            Frame::Start(s) => Event::Start(s),
            Frame::Data(d) => Event::Data(d),
            Frame::End(e) => Event::End(e),
        };
        Self { event: Some(event) }
    }
}

impl Carrier for v1::RestoreAppMessage {
    fn carry(frame: Frame) -> Self {
        use v1::restore_app_message::Msg;
        let msg = match frame {
            Frame::Start(s) => Msg::Start(s),
            Frame::Data(d) => Msg::Data(d),
            Frame::End(e) => Msg::End(e),
        };
        Self { msg: Some(msg) }
    }
}

/// Why an artifact could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Its bytes could not be read.
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    /// The receiving end went away.
    #[error(transparent)]
    Closed(#[from] Closed),
}

/// Sends one artifact: its start, the bytes of `reader` in frames of
/// [`FRAME_SIZE`], and its end. Returns the digest and size sent.
pub async fn send<M: Carrier, R: AsyncRead + Unpin>(
    out: &EventSender<M>,
    start: ArtifactStart,
    reader: &mut R,
) -> Result<(Checksum, u64), SendError> {
    let id = start.id;
    let path = start.path.clone();
    out.send(M::carry(Frame::Start(start))).await?;
    let mut tally = Tally::default();
    while let Some(data) = next_chunk(reader).await.map_err(|source| SendError::Read {
        path: path.clone(),
        source,
    })? {
        tally.add(&data);
        out.send(M::carry(Frame::Data(ArtifactData { id, data })))
            .await?;
    }
    let (checksum, size) = tally.finish();
    out.send(M::carry(Frame::End(end_of(id, checksum, size))))
        .await?;
    Ok((checksum, size))
}

fn end_of(id: u32, checksum: Checksum, size: u64) -> ArtifactEnd {
    ArtifactEnd {
        sha256: checksum.to_string(),
        size,
        id,
        ..Default::default()
    }
}

/// The `Write` end of one artifact for a producer on a blocking thread:
/// cuts what is written into frames and sends each once full, waiting for
/// room on the stream. Never used on a runtime thread.
pub struct FrameWriter<M> {
    id: u32,
    buf: Vec<u8>,
    tally: Tally,
    out: EventSender<M>,
}

impl<M: Carrier> FrameWriter<M> {
    /// Sends `start` and returns the writer of the artifact's bytes.
    pub fn start(out: EventSender<M>, start: ArtifactStart) -> Result<Self, Closed> {
        let id = start.id;
        out.blocking_send(M::carry(Frame::Start(start)))?;
        Ok(Self {
            id,
            buf: Vec::with_capacity(FRAME_SIZE),
            tally: Tally::default(),
            out,
        })
    }

    fn send_frame(&mut self) -> Result<(), Closed> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(FRAME_SIZE));
        self.tally.add(&data);
        self.out.blocking_send(M::carry(Frame::Data(ArtifactData {
            id: self.id,
            data: data.into(),
        })))
    }

    /// Sends the last frame and the artifact's end; returns its digest and size.
    pub fn finish(self) -> Result<(Checksum, u64), Closed> {
        self.finish_encrypted(None)
    }

    /// [`finish`](Self::finish) for an encrypted artifact: its end also carries
    /// the digest and size of the plaintext.
    pub fn finish_encrypted(
        mut self,
        plain: Option<(Checksum, u64)>,
    ) -> Result<(Checksum, u64), Closed> {
        self.send_frame()?;
        let (checksum, size) = self.tally.finish();
        let mut end = end_of(self.id, checksum, size);
        if let Some((plain, plain_size)) = plain {
            end.plain_sha256 = plain.to_string();
            end.plain_size = plain_size;
        }
        self.out.blocking_send(M::carry(Frame::End(end)))?;
        Ok((checksum, size))
    }
}

impl<M: Carrier> io::Write for FrameWriter<M> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(FRAME_SIZE - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == FRAME_SIZE {
            self.send_frame()
                .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the other end hung up"))?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A stream whose frames do not add up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("{0} sent twice")]
    Twice(String),
    #[error("artifact id {0} started while open")]
    IdInUse(u32),
    #[error("data outside an artifact")]
    DataOutside,
    #[error("end outside an artifact")]
    EndOutside,
}

/// Receives interleaved artifacts: ties each frame to its artifact's sink
/// (whatever the receiver writes the bytes to) and counts every byte.
pub struct Decoder<S> {
    open: HashMap<u32, Open<S>>,
    seen: HashSet<String>,
}

struct Open<S> {
    path: String,
    tally: Tally,
    sink: S,
}

/// An artifact whose end has arrived.
pub struct Ended<S> {
    pub path: String,
    pub sink: S,
    /// What arrived.
    pub checksum: Checksum,
    pub size: u64,
    /// What the sender said it sent.
    pub claimed: ArtifactEnd,
}

impl<S> Ended<S> {
    /// Whether what arrived is what the sender sent.
    pub fn intact(&self) -> bool {
        self.claimed.sha256 == self.checksum.to_string() && self.claimed.size == self.size
    }
}

impl<S> Default for Decoder<S> {
    fn default() -> Self {
        Self {
            open: HashMap::new(),
            seen: HashSet::new(),
        }
    }
}

impl<S> Decoder<S> {
    /// Checks a start before its sink is made: a path once per stream, an
    /// id once at a time.
    pub fn check_start(&self, start: &ArtifactStart) -> Result<(), DecodeError> {
        if self.seen.contains(&start.path) {
            return Err(DecodeError::Twice(start.path.clone()));
        }
        if self.open.contains_key(&start.id) {
            return Err(DecodeError::IdInUse(start.id));
        }
        Ok(())
    }

    /// Opens the artifact `start` names, its bytes going to `sink`.
    pub fn start(&mut self, start: &ArtifactStart, sink: S) -> Result<(), DecodeError> {
        self.check_start(start)?;
        self.seen.insert(start.path.clone());
        self.open.insert(
            start.id,
            Open {
                path: start.path.clone(),
                tally: Tally::default(),
                sink,
            },
        );
        Ok(())
    }

    /// Counts a data frame; returns its artifact's path and sink, to which
    /// the caller writes it.
    pub fn data(&mut self, data: &ArtifactData) -> Result<(&str, &mut S), DecodeError> {
        let open = self
            .open
            .get_mut(&data.id)
            .ok_or(DecodeError::DataOutside)?;
        open.tally.add(&data.data);
        Ok((&open.path, &mut open.sink))
    }

    /// Closes the artifact `end` names.
    pub fn end(&mut self, end: ArtifactEnd) -> Result<Ended<S>, DecodeError> {
        let open = self.open.remove(&end.id).ok_or(DecodeError::EndOutside)?;
        let (checksum, size) = open.tally.finish();
        Ok(Ended {
            path: open.path,
            sink: open.sink,
            checksum,
            size,
            claimed: end,
        })
    }

    /// Whether no artifact is open.
    pub fn is_idle(&self) -> bool {
        self.open.is_empty()
    }

    /// Whether an artifact at `path` started in this stream.
    pub fn started(&self, path: &str) -> bool {
        self.seen.contains(path)
    }

    /// The artifacts still open, for cleaning up after a failure.
    pub fn drain(&mut self) -> impl Iterator<Item = (String, S)> + '_ {
        self.open.drain().map(|(_, o)| (o.path, o.sink))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventReceiver;

    fn start(id: u32, path: &str) -> ArtifactStart {
        ArtifactStart {
            path: path.into(),
            id,
            ..Default::default()
        }
    }

    fn frames(mut rx: EventReceiver<v1::RestoreAppMessage>) -> Vec<v1::restore_app_message::Msg> {
        let mut out = Vec::new();
        while let Ok(m) = rx.try_recv() {
            out.push(m.unwrap().msg.unwrap());
        }
        out
    }

    /// Feeds `msgs` to a decoder whose sinks collect the bytes.
    fn decode(msgs: Vec<v1::restore_app_message::Msg>) -> Result<Vec<Ended<Vec<u8>>>, DecodeError> {
        use v1::restore_app_message::Msg;
        let mut d = Decoder::default();
        let mut ended = Vec::new();
        for m in msgs {
            match m {
                Msg::Start(s) => d.start(&s, Vec::new())?,
                Msg::Data(data) => d.data(&data)?.1.extend_from_slice(&data.data),
                Msg::End(e) => ended.push(d.end(e)?),
                _ => unreachable!(),
            }
        }
        assert!(d.is_idle());
        Ok(ended)
    }

    #[tokio::test]
    async fn interleaved_artifacts_come_apart_intact() {
        let (out, rx) = EventSender::<v1::RestoreAppMessage>::channel();
        let a = vec![1u8; FRAME_SIZE + 10];
        let b = b"small".to_vec();
        let (mut ra, mut rb) = (&a[..], &b[..]);
        let (sa, sb) = tokio::join!(
            send(&out, start(1, "data.tar.zst"), &mut ra),
            send(&out, start(2, "env.json"), &mut rb),
        );
        assert_eq!(sa.unwrap(), (Checksum::of(&a), a.len() as u64));
        assert_eq!(sb.unwrap().1, 5);
        let ended = decode(frames(rx)).unwrap();
        assert_eq!(ended.len(), 2);
        for e in &ended {
            assert!(e.intact(), "{}", e.path);
            let want = if e.path == "env.json" { &b } else { &a };
            assert_eq!(&e.sink, want);
        }
    }

    #[tokio::test]
    async fn the_blocking_writer_frames_the_same() {
        let (out, rx) = EventSender::<v1::RestoreAppMessage>::channel();
        let bytes = vec![9u8; 2 * FRAME_SIZE + 1];
        let copy = bytes.clone();
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut w = FrameWriter::start(out, start(7, "source.tar.gz")).unwrap();
            w.write_all(&copy).unwrap();
            w.finish().unwrap()
        })
        .await
        .unwrap();
        let msgs = frames(rx);
        assert_eq!(msgs.len(), 5, "start, three frames, end");
        let ended = decode(msgs).unwrap();
        assert!(ended[0].intact());
        assert_eq!(ended[0].sink, bytes);
    }

    #[test]
    fn frames_that_do_not_add_up_are_refused() {
        use v1::restore_app_message::Msg;
        let data = |id| {
            Msg::Data(ArtifactData {
                id,
                data: b"x".to_vec().into(),
            })
        };
        let end = |id| {
            Msg::End(ArtifactEnd {
                id,
                ..Default::default()
            })
        };
        let err = |msgs| decode(msgs).err().map(|e| e.to_string());
        assert_eq!(
            err(vec![data(1)]).as_deref(),
            Some("data outside an artifact")
        );
        assert_eq!(
            err(vec![end(1)]).as_deref(),
            Some("end outside an artifact")
        );
        assert_eq!(
            err(vec![
                Msg::Start(start(1, "a")),
                end(1),
                Msg::Start(start(2, "a"))
            ])
            .as_deref(),
            Some("a sent twice")
        );
        assert_eq!(
            err(vec![Msg::Start(start(1, "a")), Msg::Start(start(1, "b"))]).as_deref(),
            Some("artifact id 1 started while open")
        );
        // A damaged frame is counted as it arrived: the end no longer matches.
        let ended = decode(vec![
            Msg::Start(start(1, "a")),
            data(1),
            Msg::End(end_of(1, Checksum::of(b"y"), 1)),
        ])
        .unwrap();
        assert!(!ended[0].intact());
    }
}
