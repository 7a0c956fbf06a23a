//! Cutting a byte stream into the chunks that travel in stream messages,
//! and reading chunks back as a byte stream on a blocking thread.

use bytes::Bytes;
use hop3_proto::FRAME_SIZE;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Reads the next chunk: `FRAME_SIZE` bytes, fewer only at the end of the
/// stream, `None` once it is exhausted. Full chunks keep the number of
/// messages (and their per-message costs) low.
pub async fn next_chunk<R: AsyncRead + Unpin>(reader: &mut R) -> std::io::Result<Option<Bytes>> {
    let mut buf = vec![0u8; FRAME_SIZE];
    let mut filled = 0;
    while filled < FRAME_SIZE {
        let n = reader.read(&mut buf[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    if filled == 0 {
        return Ok(None);
    }
    buf.truncate(filled);
    Ok(Some(Bytes::from(buf)))
}

/// A `std::io::Read` over chunks arriving on a channel, for a consumer on a
/// blocking thread. The end of the channel is the end of the stream; an
/// error on it is the reader's error.
pub struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
    current: Bytes,
}

impl ChannelReader {
    /// Reads what arrives on `rx`.
    pub fn new(rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>) -> Self {
        Self {
            rx,
            current: Bytes::new(),
        }
    }
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.current = chunk?,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn full_chunks_then_the_rest() {
        let data = vec![7u8; FRAME_SIZE * 2 + 5];
        let mut r = &data[..];
        let mut sizes = Vec::new();
        while let Some(c) = next_chunk(&mut r).await.unwrap() {
            sizes.push(c.len());
        }
        assert_eq!(sizes, [FRAME_SIZE, FRAME_SIZE, 5]);
    }
}
