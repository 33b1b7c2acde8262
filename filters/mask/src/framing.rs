//! gRPC message framing over arbitrary DATA chunks.
//!
//! A gRPC message is 1 flag byte + 4-byte big-endian length + payload, and Envoy hands the
//! body over in chunks that do not align with messages. [`Framer`] cuts complete frames out of
//! the chunks, keeping only an incomplete frame in its own buffer (never more than
//! `max_message_bytes` + 5 bytes: the header is checked before the payload is buffered).
//! [`StreamMasker`] masks each complete frame and returns the bytes to emit for a chunk. After
//! the first error both stay failed: nothing more is emitted for the stream.

use std::io::{Read, Write};

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;

use crate::error::MaskError;
use crate::rewriter::{Counts, Rewriter};

/// The gRPC length-prefixed message header size.
pub const HEADER_LEN: usize = 5;
/// Default `max_message_bytes`: gRPC's usual default receive limit.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 << 20;
/// A buffer grown beyond this for one large message is released afterwards.
const KEEP_CAPACITY: usize = 64 << 10;

/// Cuts gRPC frames out of a chunked byte stream.
#[derive(Debug)]
pub struct Framer {
    buf: Vec<u8>,
    max_message_bytes: usize,
    failed: Option<MaskError>,
}

impl Framer {
    pub fn new(max_message_bytes: usize) -> Self {
        Framer {
            buf: Vec::new(),
            max_message_bytes,
            failed: None,
        }
    }

    /// Bytes of an incomplete frame held back.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Capacity of the hold-back buffer (what it really costs in memory).
    pub fn buffer_capacity(&self) -> usize {
        self.buf.capacity()
    }

    pub fn failed(&self) -> Option<MaskError> {
        self.failed
    }

    /// Validates a header and returns the payload length.
    fn check(&self, header: &[u8]) -> Result<usize, MaskError> {
        if header[0] > 1 {
            return Err(MaskError::BadFlag);
        }
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if len > self.max_message_bytes {
            return Err(MaskError::FrameTooLarge);
        }
        Ok(len)
    }

    /// Feeds one chunk; calls `on_frame(flag, payload)` for each frame it completes, in order.
    /// The first error (from framing or from `on_frame`) fails the framer for good.
    pub fn feed(
        &mut self,
        chunk: &[u8],
        mut on_frame: impl FnMut(u8, &[u8]) -> Result<(), MaskError>,
    ) -> Result<(), MaskError> {
        if let Some(err) = self.failed {
            return Err(err);
        }
        let result = self.feed_inner(chunk, &mut on_frame);
        if let Err(err) = result {
            self.failed = Some(err);
            self.buf = Vec::new();
        }
        result
    }

    fn feed_inner(
        &mut self,
        chunk: &[u8],
        on_frame: &mut impl FnMut(u8, &[u8]) -> Result<(), MaskError>,
    ) -> Result<(), MaskError> {
        let mut rest = chunk;
        if !self.buf.is_empty() {
            if self.buf.len() < HEADER_LEN {
                let take = (HEADER_LEN - self.buf.len()).min(rest.len());
                self.buf.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if self.buf.len() < HEADER_LEN {
                    return Ok(());
                }
            }
            let total = HEADER_LEN + self.check(&self.buf[..HEADER_LEN])?;
            let take = (total - self.buf.len()).min(rest.len());
            self.buf.reserve_exact(total - self.buf.len());
            self.buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.buf.len() < total {
                return Ok(());
            }
            on_frame(self.buf[0], &self.buf[HEADER_LEN..])?;
            self.buf.clear();
            if self.buf.capacity() > KEEP_CAPACITY {
                self.buf = Vec::new();
            }
        }
        // Whole frames straight from the chunk, without copying them into the buffer.
        while rest.len() >= HEADER_LEN {
            let total = HEADER_LEN + self.check(&rest[..HEADER_LEN])?;
            if rest.len() < total {
                self.buf.reserve_exact(total);
                break;
            }
            on_frame(rest[0], &rest[HEADER_LEN..total])?;
            rest = &rest[total..];
        }
        self.buf.extend_from_slice(rest);
        Ok(())
    }

    /// The stream ended: an incomplete frame left over is an error.
    pub fn finish(&mut self) -> Result<(), MaskError> {
        if let Some(err) = self.failed {
            return Err(err);
        }
        if !self.buf.is_empty() {
            self.failed = Some(MaskError::TruncatedFrame);
            self.buf = Vec::new();
            return Err(MaskError::TruncatedFrame);
        }
        Ok(())
    }
}

/// The response's `grpc-encoding`, which says how flag-1 frames are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// No header, or `identity`: a compressed frame is an error.
    Identity,
    Gzip,
    /// Anything else (`deflate`, `snappy`, `zstd`...): compressed frames are refused.
    Unsupported,
}

impl Encoding {
    pub fn from_header(value: Option<&str>) -> Self {
        match value.map(str::trim) {
            None | Some("") => Encoding::Identity,
            Some(v) if v.eq_ignore_ascii_case("identity") => Encoding::Identity,
            Some(v) if v.eq_ignore_ascii_case("gzip") => Encoding::Gzip,
            Some(_) => Encoding::Unsupported,
        }
    }
}

/// Masks one response stream: frames in, masked frames out.
#[derive(Debug)]
pub struct StreamMasker {
    framer: Framer,
    root: usize,
    encoding: Encoding,
    max_message_bytes: usize,
    /// Fields touched so far, per class and action.
    pub counts: Counts,
    /// Messages masked so far.
    pub messages: u64,
}

impl StreamMasker {
    pub fn new(root: usize, encoding: Encoding, max_message_bytes: usize) -> Self {
        StreamMasker {
            framer: Framer::new(max_message_bytes),
            root,
            encoding,
            max_message_bytes,
            counts: Counts::default(),
            messages: 0,
        }
    }

    pub fn framer(&self) -> &Framer {
        &self.framer
    }

    /// Masks every frame `chunk` completes and returns the bytes to send in its place. On
    /// error nothing of this chunk is returned (frames masked earlier in the same chunk are
    /// dropped too: simpler, and the stream is failing anyway).
    pub fn feed(&mut self, rw: &Rewriter<'_>, chunk: &[u8]) -> Result<Vec<u8>, MaskError> {
        let mut out = Vec::with_capacity(chunk.len() + chunk.len() / 8 + 16);
        let (root, encoding, max) = (self.root, self.encoding, self.max_message_bytes);
        let counts = &mut self.counts;
        let messages = &mut self.messages;
        self.framer.feed(chunk, |flag, payload| {
            mask_frame(rw, root, encoding, max, flag, payload, &mut out, counts)?;
            *messages += 1;
            Ok(())
        })?;
        Ok(out)
    }

    /// End of stream: fails if a frame was left incomplete.
    pub fn finish(&mut self) -> Result<(), MaskError> {
        self.framer.finish()
    }
}

#[allow(clippy::too_many_arguments)]
fn mask_frame(
    rw: &Rewriter<'_>,
    root: usize,
    encoding: Encoding,
    max: usize,
    flag: u8,
    payload: &[u8],
    out: &mut Vec<u8>,
    counts: &mut Counts,
) -> Result<(), MaskError> {
    // Counts of a frame that fails are not kept: the summary reports what reached the client.
    let mut frame_counts = Counts::default();
    let header_at = out.len();
    out.extend_from_slice(&[flag, 0, 0, 0, 0]);
    if flag == 0 {
        rw.rewrite(root, payload, out, &mut frame_counts)?;
    } else {
        if encoding != Encoding::Gzip {
            return Err(MaskError::UnsupportedEncoding);
        }
        let plain = gunzip(payload, max)?;
        let mut masked = Vec::with_capacity(plain.len() + 64);
        rw.rewrite(root, &plain, &mut masked, &mut frame_counts)?;
        // Fast compression: the gateway must not become the bottleneck of a streaming RPC.
        let mut enc = GzEncoder::new(std::mem::take(out), Compression::fast());
        enc.write_all(&masked).map_err(|_| MaskError::Compress)?;
        *out = enc.finish().map_err(|_| MaskError::Compress)?;
    }
    let len =
        u32::try_from(out.len() - header_at - HEADER_LEN).map_err(|_| MaskError::FrameTooLarge)?;
    out[header_at + 1..header_at + HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    counts.merge(&frame_counts);
    Ok(())
}

/// Decompresses one gzip payload, refusing more than `max` bytes of output.
pub(crate) fn gunzip(payload: &[u8], max: usize) -> Result<Vec<u8>, MaskError> {
    let mut plain = Vec::new();
    GzDecoder::new(payload)
        .take(max as u64 + 1)
        .read_to_end(&mut plain)
        .map_err(|_| MaskError::Decompress)?;
    if plain.len() > max {
        return Err(MaskError::DecompressedTooLarge);
    }
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(flag: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![flag];
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn collect(framer: &mut Framer, chunks: &[&[u8]]) -> Result<Vec<Vec<u8>>, MaskError> {
        let mut frames = Vec::new();
        for c in chunks {
            framer.feed(c, |_, p| {
                frames.push(p.to_vec());
                Ok(())
            })?;
        }
        framer.finish()?;
        Ok(frames)
    }

    #[test]
    fn frames_across_and_within_chunks() {
        let mut stream = frame(0, b"abc");
        stream.extend(frame(0, b""));
        stream.extend(frame(0, &[9u8; 300]));
        for split in 0..=stream.len() {
            let mut f = Framer::new(1024);
            let frames = collect(&mut f, &[&stream[..split], &stream[split..]]).unwrap();
            assert_eq!(
                frames,
                vec![b"abc".to_vec(), vec![], vec![9u8; 300]],
                "split {split}"
            );
        }
    }

    #[test]
    fn refuses_oversized_and_bad_flags_before_buffering() {
        let mut f = Framer::new(10);
        let big = frame(0, &[0u8; 11]);
        assert_eq!(
            f.feed(&big[..5], |_, _| Ok(())),
            Err(MaskError::FrameTooLarge)
        );
        assert_eq!(f.buffered(), 0);
        assert_eq!(
            f.feed(b"", |_, _| Ok(())),
            Err(MaskError::FrameTooLarge),
            "stays failed"
        );
        let mut f = Framer::new(10);
        assert_eq!(
            f.feed(&frame(2, b"x"), |_, _| Ok(())),
            Err(MaskError::BadFlag)
        );
    }

    #[test]
    fn truncated_stream_is_an_error() {
        let mut f = Framer::new(10);
        f.feed(&frame(0, b"abcd")[..6], |_, _| Ok(())).unwrap();
        assert_eq!(f.finish(), Err(MaskError::TruncatedFrame));
    }

    #[test]
    fn encodings() {
        assert_eq!(Encoding::from_header(None), Encoding::Identity);
        assert_eq!(Encoding::from_header(Some("identity")), Encoding::Identity);
        assert_eq!(Encoding::from_header(Some("GZIP")), Encoding::Gzip);
        assert_eq!(
            Encoding::from_header(Some("deflate")),
            Encoding::Unsupported
        );
    }

    #[test]
    fn gunzip_is_bounded() {
        let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
        enc.write_all(&[0u8; 1000]).unwrap();
        let gz = enc.finish().unwrap();
        assert_eq!(gunzip(&gz, 1000).unwrap().len(), 1000);
        assert_eq!(gunzip(&gz, 999), Err(MaskError::DecompressedTooLarge));
        assert_eq!(gunzip(b"not gzip", 1000), Err(MaskError::Decompress));
    }
}
