//! What an upload is, by its bytes (never by the header alone), and how long it plays
//! when the container says.
//!
//! The formats browsers record and the upstreams take: WebM (Chrome, Firefox, Edge;
//! Opus inside), Ogg with Opus or Vorbis (Firefox), MP4/M4A (Safari), MP3, WAV.
//!
//! The duration is read from the container's own bookkeeping, without decoding:
//! WAV's data size and byte rate; the last Ogg page's granule position; WebM's `Duration`
//! or else the last block's timestamp (MediaRecorder writes no `Duration`); MP4's
//! `mvhd` (or `mehd` for a fragmented file); MP3's Xing/Info frame count, or the size
//! over the bitrate. It is a bound for honest clients, not a proof: a file can claim any
//! length. Where the container does not say, the duration is unknown (`None`).
//!
//! Every read is bounds-checked; nothing here panics or loops without progress on any
//! input (proptests below, and the `transcribe_upload` fuzz target).

/// The audio formats accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioFormat {
    Webm,
    Ogg,
    Mp4,
    Mp3,
    Wav,
}

impl AudioFormat {
    pub fn name(self) -> &'static str {
        match self {
            AudioFormat::Webm => "webm",
            AudioFormat::Ogg => "ogg",
            AudioFormat::Mp4 => "mp4",
            AudioFormat::Mp3 => "mp3",
            AudioFormat::Wav => "wav",
        }
    }

    /// The file name sent upstream: OpenAI picks the decoder by its extension.
    pub fn filename(self) -> &'static str {
        match self {
            AudioFormat::Webm => "audio.webm",
            AudioFormat::Ogg => "audio.ogg",
            AudioFormat::Mp4 => "audio.m4a",
            AudioFormat::Mp3 => "audio.mp3",
            AudioFormat::Wav => "audio.wav",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            AudioFormat::Webm => "audio/webm",
            AudioFormat::Ogg => "audio/ogg",
            AudioFormat::Mp4 => "audio/mp4",
            AudioFormat::Mp3 => "audio/mpeg",
            AudioFormat::Wav => "audio/wav",
        }
    }
}

/// The format of `bytes`, or `None` when they are none of the accepted ones.
pub fn sniff(bytes: &[u8]) -> Option<AudioFormat> {
    if is_webm(bytes) {
        Some(AudioFormat::Webm)
    } else if is_ogg_audio(bytes) {
        Some(AudioFormat::Ogg)
    } else if is_mp4(bytes) {
        Some(AudioFormat::Mp4)
    } else if is_wav(bytes) {
        Some(AudioFormat::Wav)
    } else if mp3_first_frame(bytes).is_some() {
        Some(AudioFormat::Mp3)
    } else {
        None
    }
}

/// How long `bytes` (of `format`) plays, in seconds, when the container says.
pub fn duration_secs(format: AudioFormat, bytes: &[u8]) -> Option<f64> {
    let secs = match format {
        AudioFormat::Webm => webm_duration(bytes),
        AudioFormat::Ogg => ogg_duration(bytes),
        AudioFormat::Mp4 => mp4_duration(bytes),
        AudioFormat::Mp3 => mp3_duration(bytes),
        AudioFormat::Wav => wav_duration(bytes),
    }?;
    (secs.is_finite() && secs >= 0.0).then_some(secs)
}

fn be(bytes: &[u8], at: usize, len: usize) -> Option<u64> {
    let slice = bytes.get(at..at.checked_add(len)?)?;
    Some(slice.iter().fold(0u64, |n, b| (n << 8) | u64::from(*b)))
}

/// `at + len` for a size read from the file; past any slice (never wrapping) when it
/// does not fit, so a lying size ends the walk instead of moving it backwards.
fn skip(at: usize, len: u64) -> usize {
    usize::try_from(len).ok().and_then(|len| at.checked_add(len)).unwrap_or(usize::MAX)
}

fn le(bytes: &[u8], at: usize, len: usize) -> Option<u64> {
    let slice = bytes.get(at..at.checked_add(len)?)?;
    Some(slice.iter().rev().fold(0u64, |n, b| (n << 8) | u64::from(*b)))
}

// --- WebM / Matroska (EBML) -------------------------------------------------------------

const EBML: u64 = 0x1A45_DFA3;
const DOC_TYPE: u64 = 0x4282;
const SEGMENT: u64 = 0x1853_8067;
const INFO: u64 = 0x1549_A966;
const TIMECODE_SCALE: u64 = 0x2A_D7B1;
const DURATION: u64 = 0x4489;
const CLUSTER: u64 = 0x1F43_B675;
const CLUSTER_TIMECODE: u64 = 0xE7;
const BLOCK_GROUP: u64 = 0xA0;
const BLOCK: u64 = 0xA1;
const SIMPLE_BLOCK: u64 = 0xA3;

/// An EBML variable-length integer at `at`: (value, length). For ids the marker bit is
/// kept; for sizes it is dropped and all-ones means "unknown size" (`None` value).
fn vint(bytes: &[u8], at: usize, keep_marker: bool) -> Option<(Option<u64>, usize)> {
    let first = *bytes.get(at)?;
    let len = first.leading_zeros() as usize + 1;
    if len > 8 {
        return None;
    }
    let raw = be(bytes, at, len)?;
    if keep_marker {
        return Some((Some(raw), len));
    }
    let value = raw & ((1u64 << (7 * len)) - 1);
    let unknown = value == (1u64 << (7 * len)) - 1;
    Some(((!unknown).then_some(value), len))
}

/// One EBML element header at `at`: (id, data start, data size or `None` if unknown).
fn element(bytes: &[u8], at: usize) -> Option<(u64, usize, Option<u64>)> {
    let (id, id_len) = vint(bytes, at, true)?;
    let (size, size_len) = vint(bytes, at + id_len, false)?;
    Some((id?, at + id_len + size_len, size))
}

fn is_webm(bytes: &[u8]) -> bool {
    let Some((EBML, start, Some(size))) = element(bytes, 0) else { return false };
    let end = skip(start, size).min(bytes.len());
    let mut at = start;
    while at < end {
        let Some((id, data, Some(len))) = element(bytes, at) else { return false };
        let next = skip(data, len);
        if id == DOC_TYPE {
            let doc_type = bytes.get(data..next.min(bytes.len())).unwrap_or_default();
            return doc_type.starts_with(b"webm") || doc_type.starts_with(b"matroska");
        }
        at = next;
    }
    false
}

/// The WebM walk: a flat pass over the elements, stepping *into* the containers that
/// hold what we read (Segment, Info, Cluster, BlockGroup, whose size MediaRecorder often
/// leaves unknown) and over everything else.
fn webm_duration(bytes: &[u8]) -> Option<f64> {
    let mut scale_ns: u64 = 1_000_000;
    let mut declared: Option<f64> = None;
    let mut cluster_tc: u64 = 0;
    let mut last_block: Option<u64> = None;
    let mut at = 0;
    while at < bytes.len() {
        let Some((id, data, size)) = element(bytes, at) else { break };
        let value = |len: u64| bytes.get(data..skip(data, len));
        match (id, size) {
            (SEGMENT | INFO | CLUSTER | BLOCK_GROUP, _) => {
                at = data;
                continue;
            }
            (_, None) => break,
            (TIMECODE_SCALE, Some(len)) if len <= 8 => {
                scale_ns = value(len).map(|v| be(v, 0, v.len()).unwrap_or(0)).filter(|s| *s > 0)?;
            }
            (DURATION, Some(4)) => {
                declared = value(4).map(|v| f64::from(f32::from_bits(be(v, 0, 4).unwrap_or(0) as u32)));
            }
            (DURATION, Some(8)) => declared = value(8).map(|v| f64::from_bits(be(v, 0, 8).unwrap_or(0))),
            (CLUSTER_TIMECODE, Some(len)) if len <= 8 => {
                cluster_tc = value(len).and_then(|v| be(v, 0, v.len())).unwrap_or(cluster_tc);
            }
            (SIMPLE_BLOCK | BLOCK, Some(_)) => {
                // Track number (a vint), then the timecode relative to the cluster (i16).
                if let Some((_, track_len)) = vint(bytes, data, false) {
                    if let Some(relative) = be(bytes, data + track_len, 2) {
                        let t = cluster_tc.saturating_add_signed(i64::from(relative as u16 as i16));
                        last_block = Some(last_block.map_or(t, |l| l.max(t)));
                    }
                }
            }
            _ => {}
        }
        let Some(len) = size else { break };
        at = skip(data, len);
    }
    let ticks = match declared.filter(|d| d.is_finite() && *d > 0.0) {
        Some(d) => d,
        None => last_block? as f64,
    };
    Some(ticks * scale_ns as f64 / 1e9)
}

// --- Ogg ----------------------------------------------------------------------------------

/// An Ogg stream whose first packet is an Opus or Vorbis header.
fn is_ogg_audio(bytes: &[u8]) -> bool {
    ogg_first_packet(bytes).is_some_and(|p| p.starts_with(b"OpusHead") || p.starts_with(b"\x01vorbis"))
}

fn ogg_first_packet(bytes: &[u8]) -> Option<&[u8]> {
    if !bytes.starts_with(b"OggS") || bytes.get(4) != Some(&0) {
        return None;
    }
    let segments = *bytes.get(26)? as usize;
    let start = 27 + segments;
    let len: usize = bytes.get(27..start)?.iter().map(|s| *s as usize).sum();
    bytes.get(start..start + len)
}

/// The granule position of the last page, in samples at the codec's rate (48 kHz for
/// Opus, less its pre-skip; Vorbis names its rate).
fn ogg_duration(bytes: &[u8]) -> Option<f64> {
    let head = ogg_first_packet(bytes)?;
    let (rate, pre_skip) =
        if head.starts_with(b"OpusHead") { (48_000u64, le(head, 10, 2)?) } else { (le(head, 12, 4)?, 0) };
    if rate == 0 {
        return None;
    }
    // An Ogg page is at most 65,307 bytes: the last one starts within that of the end.
    let tail_start = bytes.len().saturating_sub(65_307 + 4);
    let tail = &bytes[tail_start..];
    let last_page = tail.windows(4).rposition(|w| w == b"OggS")?;
    let granule = le(tail, last_page + 6, 8)?;
    if granule == u64::MAX {
        return None; // "no packet ends on this page"
    }
    Some(granule.saturating_sub(pre_skip) as f64 / rate as f64)
}

// --- MP4 / M4A -----------------------------------------------------------------------------

/// `ftyp` first, with a brand of an audio or video file (not a HEIF/AVIF image, which
/// shares the box format).
fn is_mp4(bytes: &[u8]) -> bool {
    const BRANDS: [&[u8; 4]; 22] = [
        b"M4A ", b"M4B ", b"M4V ", b"isom", b"iso2", b"iso3", b"iso4", b"iso5", b"iso6", b"iso8", b"iso9", b"mp41",
        b"mp42", b"mp71", b"dash", b"qt  ", b"3gp4", b"3gp5", b"3gp6", b"3g2a", b"avc1", b"mmp4",
    ];
    const IMAGES: [&[u8; 4]; 8] = [b"heic", b"heix", b"mif1", b"msf1", b"avif", b"avis", b"heim", b"heis"];
    if bytes.get(4..8) != Some(b"ftyp") {
        return false;
    }
    let Some(size) = be(bytes, 0, 4).map(|s| s as usize) else { return false };
    if !(16..=4096).contains(&size) {
        return false;
    }
    let Some(major) = bytes.get(8..12) else { return false };
    if IMAGES.iter().any(|b| &b[..] == major) {
        return false;
    }
    let compatible = bytes.get(16..size.min(bytes.len())).unwrap_or_default();
    BRANDS.iter().any(|b| &b[..] == major || compatible.chunks_exact(4).any(|c| c == &b[..]))
}

/// The boxes directly inside `bytes[start..end]`: (type, content start, content end).
fn boxes(bytes: &[u8], start: usize, end: usize) -> impl Iterator<Item = ([u8; 4], usize, usize)> + '_ {
    let end = end.min(bytes.len());
    let mut at = start;
    std::iter::from_fn(move || {
        let size = be(bytes, at, 4)?;
        let kind: [u8; 4] = bytes.get(at + 4..at + 8)?.try_into().ok()?;
        let (header, size) = match size {
            0 => (8, end.saturating_sub(at) as u64),
            1 => (16, be(bytes, at + 8, 8)?),
            n => (8, n),
        };
        let next = at.checked_add(usize::try_from(size).ok()?)?;
        if size < header as u64 || next > end {
            return None;
        }
        let item = (kind, at + header, next);
        at = next;
        Some(item)
    })
}

fn mp4_duration(bytes: &[u8]) -> Option<f64> {
    let (_, moov, moov_end) = boxes(bytes, 0, bytes.len()).find(|(k, _, _)| k == b"moov")?;
    let (_, mvhd, _) = boxes(bytes, moov, moov_end).find(|(k, _, _)| k == b"mvhd")?;
    let (timescale, duration) = match bytes.get(mvhd)? {
        0 => (be(bytes, mvhd + 12, 4)?, be(bytes, mvhd + 16, 4)?),
        1 => (be(bytes, mvhd + 20, 4)?, be(bytes, mvhd + 24, 8)?),
        _ => return None,
    };
    // A fragmented file (Safari's MediaRecorder) may leave mvhd at 0 and give the whole
    // length in mvex/mehd.
    let duration = if duration == 0 || duration == u64::MAX || duration == u64::from(u32::MAX) {
        let (_, mvex, mvex_end) = boxes(bytes, moov, moov_end).find(|(k, _, _)| k == b"mvex")?;
        let (_, mehd, _) = boxes(bytes, mvex, mvex_end).find(|(k, _, _)| k == b"mehd")?;
        match bytes.get(mehd)? {
            0 => be(bytes, mehd + 4, 4)?,
            1 => be(bytes, mehd + 4, 8)?,
            _ => return None,
        }
    } else {
        duration
    };
    (timescale > 0 && duration > 0).then(|| duration as f64 / timescale as f64)
}

// --- WAV -----------------------------------------------------------------------------------

fn is_wav(bytes: &[u8]) -> bool {
    bytes.starts_with(b"RIFF") && bytes.get(8..12) == Some(b"WAVE")
}

fn wav_duration(bytes: &[u8]) -> Option<f64> {
    let mut byte_rate = None;
    let mut at = 12usize;
    while let Some(kind) = at.checked_add(4).and_then(|end| bytes.get(at..end)) {
        let size = le(bytes, at + 4, 4)? as usize;
        let data = at + 8;
        if kind == b"fmt " {
            byte_rate = le(bytes, data + 8, 4).filter(|r| *r > 0);
        } else if kind == b"data" {
            // A recorder that could not seek back writes 0 or 0xFFFFFFFF: the rest of
            // the file is the data.
            let available = bytes.len().saturating_sub(data);
            let size = if size == 0 || size == u32::MAX as usize { available } else { size.min(available) };
            return Some(size as f64 / byte_rate? as f64);
        }
        at = data.checked_add(size)?.checked_add(size & 1)?;
    }
    None
}

// --- MP3 -----------------------------------------------------------------------------------

/// One MPEG audio layer III frame header: its length, bitrate and samples.
#[derive(Debug, Clone, Copy)]
struct Mp3Frame {
    len: usize,
    bitrate_bps: u32,
    sample_rate: u32,
    samples: u32,
    /// Bytes from the frame start to the Xing/Info tag (after the side info).
    xing_offset: usize,
}

fn mp3_frame(bytes: &[u8], at: usize) -> Option<Mp3Frame> {
    let h = be(bytes, at, 4)? as u32;
    if h >> 21 != 0x7FF {
        return None;
    }
    let version = (h >> 19) & 3; // 0: MPEG 2.5, 2: MPEG 2, 3: MPEG 1 (1 reserved)
    let layer = (h >> 17) & 3; // 1: layer III
    let bitrate_index = ((h >> 12) & 0xF) as usize;
    let rate_index = ((h >> 10) & 3) as usize;
    if version == 1 || layer != 1 || bitrate_index == 0 || bitrate_index == 15 || rate_index == 3 {
        return None;
    }
    const V1: [u32; 15] = [0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320];
    const V2: [u32; 15] = [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160];
    const RATES: [u32; 3] = [44_100, 48_000, 32_000];
    let mpeg1 = version == 3;
    let bitrate_bps = if mpeg1 { V1[bitrate_index] } else { V2[bitrate_index] } * 1000;
    let sample_rate = RATES[rate_index]
        >> if mpeg1 {
            0
        } else if version == 2 {
            1
        } else {
            2
        };
    let samples = if mpeg1 { 1152 } else { 576 };
    let padding = ((h >> 9) & 1) as usize;
    let len = (samples as usize / 8) * bitrate_bps as usize / sample_rate as usize + padding;
    let mono = (h >> 6) & 3 == 3;
    let side_info = match (mpeg1, mono) {
        (true, false) => 32,
        (true, true) => 17,
        (false, false) => 17,
        (false, true) => 9,
    };
    Some(Mp3Frame { len, bitrate_bps, sample_rate, samples, xing_offset: 4 + side_info })
}

/// Where the audio starts: after an ID3v2 tag, if any.
fn mp3_audio_start(bytes: &[u8]) -> Option<usize> {
    if !bytes.starts_with(b"ID3") {
        return Some(0);
    }
    let size = bytes.get(6..10)?.iter().try_fold(0usize, |n, b| (b & 0x80 == 0).then_some((n << 7) | *b as usize))?;
    let footer = if bytes.get(5)? & 0x10 != 0 { 10 } else { 0 };
    Some(10 + size + footer)
}

/// The first frame (and where it starts), when the bytes are MP3: a valid frame header
/// where the audio starts, and another right after it unless the file ends first.
fn mp3_first_frame(bytes: &[u8]) -> Option<(usize, Mp3Frame)> {
    let start = mp3_audio_start(bytes)?;
    let frame = mp3_frame(bytes, start)?;
    let next = start.checked_add(frame.len)?;
    if next + 4 <= bytes.len() && mp3_frame(bytes, next).is_none() {
        return None;
    }
    Some((start, frame))
}

fn mp3_duration(bytes: &[u8]) -> Option<f64> {
    let (start, frame) = mp3_first_frame(bytes)?;
    let tag = start + frame.xing_offset;
    if matches!(bytes.get(tag..tag + 4), Some(b"Xing") | Some(b"Info")) && be(bytes, tag + 4, 4)? & 1 == 1 {
        let frames = be(bytes, tag + 8, 4)?;
        return Some(frames as f64 * f64::from(frame.samples) / f64::from(frame.sample_rate));
    }
    // No frame count: constant bitrate assumed.
    Some(bytes.len().saturating_sub(start) as f64 * 8.0 / f64::from(frame.bitrate_bps))
}

#[cfg(test)]
pub(crate) mod samples {
    //! Small but well-formed files of each format, as recorders write them.

    /// EBML header (DocType webm), a Segment and a Cluster of unknown size (as
    /// MediaRecorder writes them), blocks at 0 and 2,980 ms in a cluster at 2 s.
    pub fn webm(payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0x1A, 0x45, 0xDF, 0xA3, 0x87, 0x42, 0x82, 0x84, b'w', b'e', b'b', b'm'];
        // Segment, unknown size.
        out.extend_from_slice(&[0x18, 0x53, 0x80, 0x67, 0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]);
        // Info { TimecodeScale 1,000,000 }.
        out.extend_from_slice(&[0x15, 0x49, 0xA9, 0x66, 0x87, 0x2A, 0xD7, 0xB1, 0x83, 0x0F, 0x42, 0x40]);
        for (cluster_ms, block_ms) in [(0u16, 0i16), (2000, 980)] {
            out.extend_from_slice(&[0x1F, 0x43, 0xB6, 0x75, 0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]);
            out.extend_from_slice(&[0xE7, 0x82]);
            out.extend_from_slice(&cluster_ms.to_be_bytes());
            let size = 4 + payload.len();
            out.push(0xA3);
            out.extend_from_slice(&(0x0100_0000_0000_0000u64 | size as u64).to_be_bytes());
            out.push(0x81); // track 1
            out.extend_from_slice(&block_ms.to_be_bytes());
            out.push(0x80); // flags: keyframe
            out.extend_from_slice(payload);
        }
        out
    }

    /// Two Ogg pages: OpusHead (pre-skip 312) and one whose granule is 3 s + pre-skip.
    pub fn ogg_opus(payload: &[u8]) -> Vec<u8> {
        let page = |granule: u64, packet: &[u8]| {
            let mut p = b"OggS\0\x02".to_vec();
            p.extend_from_slice(&granule.to_le_bytes());
            p.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            let mut lacing = vec![255u8; packet.len() / 255];
            lacing.push((packet.len() % 255) as u8);
            p.push(lacing.len() as u8);
            p.extend_from_slice(&lacing);
            p.extend_from_slice(packet);
            p
        };
        let mut head = b"OpusHead\x01\x01".to_vec();
        head.extend_from_slice(&312u16.to_le_bytes());
        head.extend_from_slice(&48_000u32.to_le_bytes());
        head.extend_from_slice(&[0, 0, 0]);
        let mut out = page(0, &head);
        out.extend(page(3 * 48_000 + 312, &payload[..payload.len().min(250 * 255)]));
        out
    }

    /// ftyp M4A, then moov/mvhd (timescale 1000, 4,500) and an mdat.
    pub fn m4a(payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0, 0, 0, 24];
        out.extend_from_slice(b"ftypM4A \0\0\0\0M4A isom");
        let mut mvhd = vec![0u8; 100];
        mvhd[12..16].copy_from_slice(&1000u32.to_be_bytes());
        mvhd[16..20].copy_from_slice(&4500u32.to_be_bytes());
        out.extend_from_slice(&(8 + 8 + mvhd.len() as u32).to_be_bytes());
        out.extend_from_slice(b"moov");
        out.extend_from_slice(&(8 + mvhd.len() as u32).to_be_bytes());
        out.extend_from_slice(b"mvhd");
        out.extend_from_slice(&mvhd);
        out.extend_from_slice(&(8 + payload.len() as u32).to_be_bytes());
        out.extend_from_slice(b"mdat");
        out.extend_from_slice(payload);
        out
    }

    /// 16 kHz 16-bit mono PCM: 32,000 bytes a second.
    pub fn wav(payload: &[u8]) -> Vec<u8> {
        let mut out = b"RIFF".to_vec();
        out.extend_from_slice(&(36 + payload.len() as u32).to_le_bytes());
        out.extend_from_slice(b"WAVEfmt ");
        out.extend_from_slice(&16u32.to_le_bytes());
        out.extend_from_slice(&[1, 0, 1, 0]);
        out.extend_from_slice(&16_000u32.to_le_bytes());
        out.extend_from_slice(&32_000u32.to_le_bytes());
        out.extend_from_slice(&[2, 0, 16, 0]);
        out.extend_from_slice(b"data");
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// An ID3v2 tag, then `frames` MPEG-1 layer III frames, 128 kbit/s, 44.1 kHz (417
    /// bytes each, 1,152 samples).
    pub fn mp3(frames: usize) -> Vec<u8> {
        let mut out = b"ID3\x04\x00\x00\x00\x00\x00\x0a".to_vec();
        out.extend_from_slice(&[0; 10]);
        for _ in 0..frames {
            out.extend_from_slice(&[0xFF, 0xFB, 0x90, 0x64]);
            out.extend(std::iter::repeat_n(0x55, 413));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::samples::*;
    use super::*;
    use proptest::prelude::*;

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 0.01)
    }

    #[test]
    fn each_format_by_its_bytes_with_its_duration() {
        let payload = vec![0x42; 3000];
        let cases = [
            (webm(&payload), AudioFormat::Webm, 2.98),
            (ogg_opus(&payload), AudioFormat::Ogg, 3.0),
            (m4a(&payload), AudioFormat::Mp4, 4.5),
            (wav(&vec![0; 64_000]), AudioFormat::Wav, 2.0),
            (mp3(100), AudioFormat::Mp3, 100.0 * 417.0 * 8.0 / 128_000.0),
        ];
        for (bytes, format, secs) in cases {
            assert_eq!(sniff(&bytes), Some(format));
            let measured = duration_secs(format, &bytes);
            assert!(close(measured, secs), "{format:?}: {measured:?} != {secs}");
        }
    }

    #[test]
    fn webm_declared_duration_wins_and_scale_applies() {
        let mut bytes = webm(b"x");
        // Info { TimecodeScale 1,000,000; Duration 12,345.0 (f64) } appended as a second Info.
        bytes.extend_from_slice(&[0x15, 0x49, 0xA9, 0x66, 0x8B, 0x44, 0x89, 0x88]);
        bytes.extend_from_slice(&12_345.0f64.to_bits().to_be_bytes());
        assert!(close(duration_secs(AudioFormat::Webm, &bytes), 12.345));
    }

    #[test]
    fn mp3_xing_frame_count() {
        let mut bytes = mp3(3);
        let tag = 20 + 4 + 32;
        bytes[tag..tag + 4].copy_from_slice(b"Xing");
        bytes[tag + 4..tag + 8].copy_from_slice(&1u32.to_be_bytes());
        bytes[tag + 8..tag + 12].copy_from_slice(&1000u32.to_be_bytes());
        assert!(close(duration_secs(AudioFormat::Mp3, &bytes), 1000.0 * 1152.0 / 44_100.0));
    }

    #[test]
    fn not_audio() {
        let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        let heic = b"\0\0\0\x18ftypheic\0\0\0\0mif1heic".to_vec();
        let avi = b"RIFF\0\0\0\0AVI LIST".to_vec();
        let theora = {
            let mut b = ogg_opus(b"x");
            b[28..36].copy_from_slice(b"\x80theora\0");
            b
        };
        let mkv_other = b"\x1a\x45\xdf\xa3\x87\x42\x82\x84abcd".to_vec();
        let one_mp3_header_then_junk = [&[0xFF, 0xFB, 0x90, 0x64][..], &[0u8; 500][..]].concat();
        for bytes in [
            b"".to_vec(),
            b"{\"text\":\"hi\"}".to_vec(),
            b"%PDF-1.7".to_vec(),
            png,
            heic,
            avi,
            theora,
            mkv_other,
            one_mp3_header_then_junk,
            b"ID3\x04\0\0\x7f\x7f\x7f\x7f".to_vec(),
        ] {
            assert_eq!(sniff(&bytes), None, "{:?}", String::from_utf8_lossy(&bytes));
        }
    }

    #[test]
    fn truncated_files_never_panic() {
        for full in [webm(&[1; 100]), ogg_opus(&[1; 100]), m4a(&[1; 100]), wav(&[1; 100]), mp3(3)] {
            for cut in 0..full.len() {
                let bytes = &full[..cut];
                if let Some(format) = sniff(bytes) {
                    let _ = duration_secs(format, bytes);
                }
            }
        }
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            for format in [AudioFormat::Webm, AudioFormat::Ogg, AudioFormat::Mp4, AudioFormat::Mp3, AudioFormat::Wav] {
                let d = duration_secs(format, &bytes);
                prop_assert!(d.is_none_or(|d| d.is_finite() && d >= 0.0));
            }
            let _ = sniff(&bytes);
        }

        #[test]
        fn never_panics_on_mutated_samples(which in 0usize..5, flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
            let mut bytes = [webm(&[7; 64]), ogg_opus(&[7; 64]), m4a(&[7; 64]), wav(&[7; 64]), mp3(4)][which].clone();
            for (at, value) in flips {
                let len = bytes.len();
                bytes[at % len] = value;
            }
            if let Some(format) = sniff(&bytes) {
                let _ = duration_secs(format, &bytes);
            }
        }
    }
}
