//! What an upload is, by its bytes (never by the header alone), and how long it plays,
//! measured from the audio itself.
//!
//! The formats browsers record and the upstreams take: WebM (Chrome, Firefox, Edge;
//! Opus inside), Ogg with Opus or Vorbis (Firefox), MP4/M4A (Safari), MP3, WAV.
//!
//! A header's claim is never the length: a file can claim any length, and a length too
//! short is quota and upstream money for nothing. Without decoding, the length is what
//! a decoder would play: WAV's data over a byte rate checked against the format fields;
//! MP3 frames counted one by one; the Opus packets of WebM and Ogg counted by their TOC
//! bytes (and at least the last timestamp or granule); MP4's sample tables. Where the
//! walk cannot account for the whole file, or the codec is one whose frames are not
//! counted here (Vorbis, compressed WAV), the length is unknown (`None`) and the caller
//! refuses the upload before any upstream call.
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

/// How long `bytes` (of `format`) plays, in seconds, as measured from the audio itself;
/// `None` when it cannot be established (the caller refuses the upload).
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

/// The samples (at 48 kHz) one Opus packet decodes to, from its TOC byte (RFC 6716
/// 3.1): the frame size of its configuration times its frame count. A packet the
/// decoder would reject still counts its most (120 ms), so a malformed packet never
/// makes a file shorter.
fn opus_packet_samples(packet: &[u8]) -> u64 {
    let Some(toc) = packet.first() else { return 0 };
    let config = toc >> 3;
    let frame: u64 = match config {
        0..=11 => [480, 960, 1920, 2880][usize::from(config % 4)],
        12..=15 => [480, 960][usize::from(config % 2)],
        _ => [120, 240, 480, 960][usize::from(config % 4)],
    };
    let frames = match toc & 3 {
        0 => 1,
        1 | 2 => 2,
        _ => packet.get(1).map_or(48, |b| u64::from(b & 0x3F)),
    };
    (frame * frames).clamp(frame, 5760)
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
const TRACKS: u64 = 0x1654_AE6B;
const TRACK_ENTRY: u64 = 0xAE;
const CODEC_ID: u64 = 0x86;
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
/// hold what we read (Segment, Info, Tracks, Cluster, BlockGroup, whose size MediaRecorder
/// often leaves unknown) and over everything else. The length is the longest of the
/// declared `Duration`, the last block's end and the sum of what every block decodes
/// to, so a header or a timestamp that understates it does not count. Established only
/// for Opus tracks (what browsers record) and when the walk accounts for every byte:
/// anything it cannot read could be audio a decoder would play.
fn webm_duration(bytes: &[u8]) -> Option<f64> {
    let mut scale_ns: u64 = 1_000_000;
    let mut declared: f64 = 0.0;
    let mut cluster_tc: u64 = 0;
    let mut last_end_ns: u64 = 0;
    let mut decoded: u64 = 0;
    let mut tracks = 0;
    let mut at = 0;
    while at < bytes.len() {
        let (id, data, size) = element(bytes, at)?;
        let value = |len: u64| bytes.get(data..skip(data, len));
        match (id, size) {
            (SEGMENT | INFO | TRACKS | TRACK_ENTRY | CLUSTER | BLOCK_GROUP, _) => {
                at = data;
                continue;
            }
            (_, None) => return None,
            (TIMECODE_SCALE, Some(len)) if len <= 8 => {
                scale_ns = value(len).map(|v| be(v, 0, v.len()).unwrap_or(0)).filter(|s| *s > 0)?;
            }
            (DURATION, Some(4)) => {
                declared = value(4).map_or(0.0, |v| f64::from(f32::from_bits(be(v, 0, 4).unwrap_or(0) as u32)));
            }
            (DURATION, Some(8)) => declared = value(8).map_or(0.0, |v| f64::from_bits(be(v, 0, 8).unwrap_or(0))),
            (CODEC_ID, Some(len)) => {
                if value(len)? != b"A_OPUS" {
                    return None;
                }
                tracks += 1;
            }
            (CLUSTER_TIMECODE, Some(len)) if len <= 8 => {
                cluster_tc = value(len).and_then(|v| be(v, 0, v.len())).unwrap_or(cluster_tc);
            }
            (SIMPLE_BLOCK | BLOCK, Some(len)) => {
                // Track number (a vint), the timecode relative to the cluster (i16), flags,
                // then the frame. Laced blocks (several frames) are not what recorders write.
                let block = bytes.get(data..skip(data, len).min(bytes.len()))?;
                let (_, track_len) = vint(block, 0, false)?;
                let relative = be(block, track_len, 2)? as u16 as i16;
                let flags = *block.get(track_len + 2)?;
                if flags & 0x06 != 0 {
                    return None;
                }
                let samples = opus_packet_samples(block.get(track_len + 3..)?);
                decoded = decoded.saturating_add(samples);
                let start = cluster_tc.saturating_add_signed(i64::from(relative)).saturating_mul(scale_ns);
                last_end_ns = last_end_ns.max(start.saturating_add(samples * 1_000_000 / 48));
            }
            _ => {}
        }
        at = skip(data, size?);
    }
    if tracks == 0 {
        return None;
    }
    let declared = if declared.is_finite() && declared > 0.0 { declared * scale_ns as f64 / 1e9 } else { 0.0 };
    Some(declared.max(last_end_ns as f64 / 1e9).max(decoded as f64 / 48_000.0))
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

/// Page by page over the whole file (one logical stream, nothing unread between pages):
/// the longest of the last granule position and the sum of what the audio packets
/// decode to, less the pre-skip. Only Opus: a Vorbis packet's length needs the codec's
/// setup header, so a Vorbis file's length is not established.
fn ogg_duration(bytes: &[u8]) -> Option<f64> {
    let head = ogg_first_packet(bytes)?;
    if !head.starts_with(b"OpusHead") {
        return None;
    }
    let pre_skip = le(head, 10, 2)?;
    let serial = le(bytes, 14, 4)?;
    let (mut at, mut packet, mut packet_start) = (0usize, 0u64, true);
    let (mut granule, mut decoded) = (0u64, 0u64);
    while at < bytes.len() {
        if bytes.get(at..at + 5)? != b"OggS\0" || le(bytes, at + 14, 4)? != serial {
            return None;
        }
        let page_granule = le(bytes, at + 6, 8)?;
        if page_granule != u64::MAX {
            granule = granule.max(page_granule);
        }
        let segments = *bytes.get(at + 26)? as usize;
        let lacing = bytes.get(at + 27..at + 27 + segments)?;
        let mut body = at + 27 + segments;
        for &len in lacing {
            // Packet 0 is OpusHead, 1 OpusTags; the rest is audio, counted by its first bytes.
            if packet_start && packet >= 2 {
                decoded = decoded.saturating_add(opus_packet_samples(bytes.get(body..body + 2.min(usize::from(len)))?));
            }
            body += usize::from(len);
            packet_start = len < 255;
            if packet_start {
                packet += 1;
            }
        }
        if body > bytes.len() {
            return None;
        }
        at = body;
    }
    Some(granule.max(decoded).saturating_sub(pre_skip) as f64 / 48_000.0)
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

fn child(bytes: &[u8], start: usize, end: usize, kind: &[u8; 4]) -> Option<(usize, usize)> {
    boxes(bytes, start, end).find(|(k, _, _)| k == kind).map(|(_, s, e)| (s, e))
}

/// One track's bookkeeping: what its sample tables say it plays.
struct Mp4Track {
    id: u64,
    timescale: u64,
    /// Sample rate of an AAC (`mp4a`) sound track, from its sample entry.
    aac_rate: Option<u64>,
    ticks: u64,
    samples: u64,
}

/// The length is measured from the sample tables a decoder plays (`stts` and `stsz`, and
/// each fragment's `trun`), never from `mvhd`/`mehd` alone, and an AAC track counts at
/// least its 1,024 samples a frame whatever durations the tables give. Every top-level
/// box must fit the file exactly, so nothing is left unread.
fn mp4_duration(bytes: &[u8]) -> Option<f64> {
    let mut covered = 0usize;
    for (_, _, end) in boxes(bytes, 0, bytes.len()) {
        covered = end;
    }
    if covered != bytes.len() {
        return None;
    }
    let (moov, moov_end) = child(bytes, 0, bytes.len(), b"moov")?;
    let mut tracks = Vec::new();
    for (kind, trak, trak_end) in boxes(bytes, moov, moov_end) {
        if &kind != b"trak" {
            continue;
        }
        let (tkhd, _) = child(bytes, trak, trak_end, b"tkhd")?;
        let id = be(bytes, tkhd + if bytes.get(tkhd)? == &1 { 20 } else { 12 }, 4)?;
        let (mdia, mdia_end) = child(bytes, trak, trak_end, b"mdia")?;
        let (mdhd, _) = child(bytes, mdia, mdia_end, b"mdhd")?;
        let timescale = be(bytes, mdhd + if bytes.get(mdhd)? == &1 { 20 } else { 12 }, 4)?;
        let (minf, minf_end) = child(bytes, mdia, mdia_end, b"minf")?;
        let (stbl, stbl_end) = child(bytes, minf, minf_end, b"stbl")?;
        let (stsd, stsd_end) = child(bytes, stbl, stbl_end, b"stsd")?;
        let aac_rate = boxes(bytes, stsd + 8, stsd_end)
            .find(|(k, _, _)| k == b"mp4a")
            .and_then(|(_, entry, _)| be(bytes, entry + 24, 2));
        let (stts, _) = child(bytes, stbl, stbl_end, b"stts")?;
        let (mut ticks, mut stts_samples) = (0u64, 0u64);
        for i in 0..be(bytes, stts + 4, 4)? as usize {
            let count = be(bytes, stts + 8 + i * 8, 4)?;
            ticks = ticks.saturating_add(count.saturating_mul(be(bytes, stts + 12 + i * 8, 4)?));
            stts_samples = stts_samples.saturating_add(count);
        }
        let (stsz, _) = child(bytes, stbl, stbl_end, b"stsz")?;
        if be(bytes, stsz + 8, 4)? != stts_samples {
            return None; // durations for samples that are not there, or samples without one
        }
        tracks.push(Mp4Track { id, timescale, aac_rate, ticks, samples: stts_samples });
    }
    let trex_default = |track: u64| {
        let (mvex, mvex_end) = child(bytes, moov, moov_end, b"mvex")?;
        boxes(bytes, mvex, mvex_end)
            .filter(|(k, _, _)| k == b"trex")
            .find(|(_, t, _)| be(bytes, t + 4, 4) == Some(track))
            .and_then(|(_, t, _)| be(bytes, t + 12, 4))
    };
    for (_, moof, moof_end) in boxes(bytes, 0, bytes.len()).filter(|(k, _, _)| k == b"moof") {
        for (_, traf, traf_end) in boxes(bytes, moof, moof_end).filter(|(k, _, _)| k == b"traf") {
            let (tfhd, _) = child(bytes, traf, traf_end, b"tfhd")?;
            let flags = be(bytes, tfhd + 1, 3)?;
            let id = be(bytes, tfhd + 4, 4)?;
            let mut field = tfhd + 8;
            if flags & 0x01 != 0 {
                field += 8;
            }
            if flags & 0x02 != 0 {
                field += 4;
            }
            let default = if flags & 0x08 != 0 { be(bytes, field, 4) } else { trex_default(id) };
            let track = tracks.iter_mut().find(|t| t.id == id)?;
            for (_, trun, _) in boxes(bytes, traf, traf_end).filter(|(k, _, _)| k == b"trun") {
                let flags = be(bytes, trun + 1, 3)?;
                let count = be(bytes, trun + 4, 4)?;
                let mut at = trun + 8 + if flags & 0x01 != 0 { 4 } else { 0 } + if flags & 0x04 != 0 { 4 } else { 0 };
                let per_sample = [0x100, 0x200, 0x400, 0x800].iter().filter(|f| flags & **f != 0).count() * 4;
                if count as usize > bytes.len() {
                    return None;
                }
                for _ in 0..count {
                    let duration = if flags & 0x100 != 0 { be(bytes, at, 4)? } else { default? };
                    track.ticks = track.ticks.saturating_add(duration);
                    at += per_sample;
                }
                track.samples = track.samples.saturating_add(count);
            }
        }
    }
    tracks
        .iter()
        .map(|t| {
            let by_table = if t.timescale > 0 { t.ticks as f64 / t.timescale as f64 } else { f64::INFINITY };
            let by_frames = t.aac_rate.filter(|r| *r > 0).map_or(0.0, |r| t.samples as f64 * 1024.0 / r as f64);
            by_table.max(by_frames)
        })
        .reduce(f64::max)
}

// --- WAV -----------------------------------------------------------------------------------

fn is_wav(bytes: &[u8]) -> bool {
    bytes.starts_with(b"RIFF") && bytes.get(8..12) == Some(b"WAVE")
}

/// The data's length over the byte rate, where the byte rate must be what the format
/// fields make it (sample rate x channels x bytes a sample) for uncompressed PCM, float
/// or G.711; other codecs inside WAV are not measured. The data runs to the end of the
/// file whatever its size field says: a decoder may read on, and it is never less.
fn wav_duration(bytes: &[u8]) -> Option<f64> {
    let mut byte_rate = None;
    let mut at = 12usize;
    while let Some(kind) = at.checked_add(4).and_then(|end| bytes.get(at..end)) {
        let size = le(bytes, at + 4, 4)? as usize;
        let data = at + 8;
        if kind == b"fmt " {
            let tag = le(bytes, data, 2)?;
            let channels = le(bytes, data + 2, 2)?;
            let rate = le(bytes, data + 4, 4)?;
            let claimed = le(bytes, data + 8, 4)?;
            let align = le(bytes, data + 12, 2)?;
            let bits = le(bytes, data + 14, 2)?;
            let plain = matches!(tag, 1 | 3 | 6 | 7 | 0xFFFE);
            let sane = (1..=8).contains(&channels)
                && (1_000..=384_000).contains(&rate)
                && matches!(bits, 8 | 16 | 24 | 32 | 64)
                && align == channels * bits / 8
                && claimed == rate * align;
            if !plain || !sane {
                return None;
            }
            byte_rate = Some(claimed);
        } else if kind == b"data" {
            return Some(bytes.len().saturating_sub(data) as f64 / byte_rate? as f64);
        }
        at = data.checked_add(size)?.checked_add(size & 1)?;
    }
    None
}

// --- MP3 -----------------------------------------------------------------------------------

/// One MPEG audio layer III frame header: its length and samples.
#[derive(Debug, Clone, Copy)]
struct Mp3Frame {
    len: usize,
    sample_rate: u32,
    samples: u32,
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
    Some(Mp3Frame { len, sample_rate, samples })
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

/// Frames counted one by one to the end of the file. A Xing/Info or VBRI frame count is
/// only the encoder's claim and is not used. Between frames, bytes that are no frame are
/// skipped to the next header a second one follows (how decoders resynchronise), and
/// if more than a tenth of the file is such bytes, the length is not established: a
/// decoder could find audio in what this walk could not read.
fn mp3_duration(bytes: &[u8]) -> Option<f64> {
    let (start, _) = mp3_first_frame(bytes)?;
    let mut at = start;
    let mut secs = 0.0;
    let mut unread = 0usize;
    // An ID3v1 tag closes many files; it is no audio.
    let end = if bytes.len() >= start + 128 && bytes[bytes.len() - 128..].starts_with(b"TAG") {
        bytes.len() - 128
    } else {
        bytes.len()
    };
    while at + 4 <= end {
        match mp3_frame(bytes, at) {
            Some(frame) if frame.len >= 4 => {
                secs += f64::from(frame.samples) / f64::from(frame.sample_rate);
                at += frame.len;
            }
            _ => {
                let next = (at + 1..end.saturating_sub(3)).find(|&i| {
                    bytes[i] == 0xFF
                        && mp3_frame(bytes, i).is_some_and(|f| {
                            f.len >= 4 && (i + f.len + 4 > end || mp3_frame(bytes, i + f.len).is_some())
                        })
                });
                let next = next.unwrap_or(end);
                unread += next - at;
                at = next;
            }
        }
    }
    unread += end.saturating_sub(at);
    (unread <= (end - start) / 10 + 1024).then_some(secs)
}

#[cfg(test)]
pub(crate) mod samples {
    //! Small but well-formed files of each format, as recorders write them.

    /// EBML header (DocType webm), a Segment and a Cluster of unknown size (as
    /// MediaRecorder writes them), an Opus track, blocks at 0 and 2,980 ms in a cluster
    /// at 2 s. The payload's first byte is the Opus TOC: 0x42 is two 10 ms frames.
    pub fn webm(payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0x1A, 0x45, 0xDF, 0xA3, 0x87, 0x42, 0x82, 0x84, b'w', b'e', b'b', b'm'];
        // Segment, unknown size.
        out.extend_from_slice(&[0x18, 0x53, 0x80, 0x67, 0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]);
        // Info { TimecodeScale 1,000,000 }.
        out.extend_from_slice(&[0x15, 0x49, 0xA9, 0x66, 0x87, 0x2A, 0xD7, 0xB1, 0x83, 0x0F, 0x42, 0x40]);
        // Tracks { TrackEntry { CodecID A_OPUS } }.
        out.extend_from_slice(&[0x16, 0x54, 0xAE, 0x6B, 0x8A, 0xAE, 0x88, 0x86, 0x86]);
        out.extend_from_slice(b"A_OPUS");
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

    /// An MP4 box.
    pub fn mp4_box(kind: &[u8; 4], content: &[u8]) -> Vec<u8> {
        let mut out = (8 + content.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(kind);
        out.extend_from_slice(content);
        out
    }

    /// ftyp M4A, then moov (mvhd claiming `mvhd_ms`; one AAC track at 48 kHz whose
    /// `stts` gives `frames` samples of 1,024 ticks) and an mdat.
    pub fn m4a_with(payload: &[u8], mvhd_ms: u32, frames: u32) -> Vec<u8> {
        let mut out = vec![0, 0, 0, 24];
        out.extend_from_slice(b"ftypM4A \0\0\0\0M4A isom");
        let mut mvhd = vec![0u8; 100];
        mvhd[12..16].copy_from_slice(&1000u32.to_be_bytes());
        mvhd[16..20].copy_from_slice(&mvhd_ms.to_be_bytes());
        let mut tkhd = vec![0u8; 84];
        tkhd[12..16].copy_from_slice(&1u32.to_be_bytes());
        let mut mdhd = vec![0u8; 24];
        mdhd[12..16].copy_from_slice(&48_000u32.to_be_bytes());
        let mut mp4a = vec![0u8; 28];
        mp4a[24..26].copy_from_slice(&48_000u16.to_be_bytes());
        let stsd = [&[0u8, 0, 0, 0, 0, 0, 0, 1][..], &mp4_box(b"mp4a", &mp4a)].concat();
        let stts = [&[0u8; 4][..], &1u32.to_be_bytes(), &frames.to_be_bytes(), &1024u32.to_be_bytes()].concat();
        let stsz = [&[0u8; 4][..], &6u32.to_be_bytes(), &frames.to_be_bytes()].concat();
        let stbl = [mp4_box(b"stsd", &stsd), mp4_box(b"stts", &stts), mp4_box(b"stsz", &stsz)].concat();
        let mdia = [mp4_box(b"mdhd", &mdhd), mp4_box(b"minf", &mp4_box(b"stbl", &stbl))].concat();
        let trak = [mp4_box(b"tkhd", &tkhd), mp4_box(b"mdia", &mdia)].concat();
        out.extend(mp4_box(b"moov", &[mp4_box(b"mvhd", &mvhd), mp4_box(b"trak", &trak)].concat()));
        out.extend(mp4_box(b"mdat", payload));
        out
    }

    /// 4.5 s as both mvhd and the sample table say (211 frames of 1,024 at 48 kHz is
    /// 4.501 s).
    pub fn m4a(payload: &[u8]) -> Vec<u8> {
        m4a_with(payload, 4500, 211)
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
            (webm(&payload), AudioFormat::Webm, 3.0),
            (ogg_opus(&payload), AudioFormat::Ogg, 3.0),
            (m4a(&payload), AudioFormat::Mp4, 211.0 * 1024.0 / 48_000.0),
            (wav(&vec![0; 64_000]), AudioFormat::Wav, 2.0),
            (mp3(100), AudioFormat::Mp3, 100.0 * 1152.0 / 44_100.0),
        ];
        for (bytes, format, secs) in cases {
            assert_eq!(sniff(&bytes), Some(format));
            let measured = duration_secs(format, &bytes);
            assert!(close(measured, secs), "{format:?}: {measured:?} != {secs}");
        }
    }

    #[test]
    fn an_mp3_xing_count_is_not_believed() {
        let mut bytes = mp3(3000);
        let tag = 20 + 4 + 32;
        bytes[tag..tag + 4].copy_from_slice(b"Xing");
        bytes[tag + 4..tag + 8].copy_from_slice(&1u32.to_be_bytes());
        bytes[tag + 8..tag + 12].copy_from_slice(&1u32.to_be_bytes());
        assert!(close(duration_secs(AudioFormat::Mp3, &bytes), 3000.0 * 1152.0 / 44_100.0));
    }

    #[test]
    fn mp3_frames_behind_junk_still_count_and_mostly_junk_is_unknown() {
        // A little junk after the first frames: the decoder resynchronises, so do we.
        let mut bytes = mp3(10);
        bytes.extend_from_slice(&[0x12; 300]);
        bytes.extend_from_slice(&mp3(1000)[20..]);
        assert!(close(duration_secs(AudioFormat::Mp3, &bytes), 1010.0 * 1152.0 / 44_100.0));
        // Two frames, then a megabyte nobody can read: refused, not taken as 52 ms.
        let mut bytes = mp3(2);
        bytes.extend(std::iter::repeat_n(0x33, 1_000_000));
        assert_eq!(duration_secs(AudioFormat::Mp3, &bytes), None);
    }

    #[test]
    fn a_wav_byte_rate_must_match_its_format() {
        let mut bytes = wav(&vec![0; 96_000]);
        // 0xFFFFFFFF bytes a second would make three seconds 0.00002 s.
        bytes[28..32].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(duration_secs(AudioFormat::Wav, &bytes), None);
        // A byte rate that agrees with an absurd sample rate is refused too.
        let mut bytes = wav(&vec![0; 96_000]);
        bytes[24..28].copy_from_slice(&100_000_000u32.to_le_bytes());
        bytes[28..32].copy_from_slice(&200_000_000u32.to_le_bytes());
        assert_eq!(duration_secs(AudioFormat::Wav, &bytes), None);
        // A data size that understates the data: the data counts.
        let mut bytes = wav(&vec![0; 96_000]);
        bytes[40..44].copy_from_slice(&2u32.to_le_bytes());
        assert!(close(duration_secs(AudioFormat::Wav, &bytes), 3.0));
        // Compressed WAV (ADPCM) is not measured.
        let mut bytes = wav(&vec![0; 96_000]);
        bytes[20] = 2;
        assert_eq!(duration_secs(AudioFormat::Wav, &bytes), None);
    }

    #[test]
    fn webm_duration_and_timestamps_that_understate_do_not_count() {
        // A declared Duration of 12.345 s over 3 s of blocks: the longer counts.
        let mut bytes = webm(b"\x42");
        bytes.extend_from_slice(&[0x15, 0x49, 0xA9, 0x66, 0x8B, 0x44, 0x89, 0x88]);
        bytes.extend_from_slice(&12_345.0f64.to_bits().to_be_bytes());
        assert!(close(duration_secs(AudioFormat::Webm, &bytes), 12.345));
        // A Duration of 10 ms over 3 s of blocks.
        let mut bytes = webm(b"\x42");
        bytes.extend_from_slice(&[0x15, 0x49, 0xA9, 0x66, 0x8B, 0x44, 0x89, 0x88]);
        bytes.extend_from_slice(&10.0f64.to_bits().to_be_bytes());
        assert!(close(duration_secs(AudioFormat::Webm, &bytes), 3.0));
        // 500 blocks of 120 ms (code 3, 6 frames of 20 ms), all stamped 0: 60 s.
        let mut bytes = webm(b"\x0b\x06");
        let block = [0xA3, 0x86, 0x81, 0, 0, 0x80, 0x0B, 0x06];
        for _ in 0..500 {
            bytes.extend_from_slice(&block);
        }
        assert!(close(duration_secs(AudioFormat::Webm, &bytes), 60.0 + 0.24));
    }

    #[test]
    fn webm_whose_length_cannot_be_established() {
        // Junk after the last block: a decoder might find audio there.
        let mut bytes = webm(b"\x42");
        bytes.extend_from_slice(&[0; 64]);
        assert_eq!(duration_secs(AudioFormat::Webm, &bytes), None);
        // Not Opus.
        let bytes: Vec<u8> = webm(b"\x42");
        let at = bytes.windows(6).position(|w| w == b"A_OPUS").unwrap();
        let mut vorbis = bytes.clone();
        vorbis[at..at + 6].copy_from_slice(b"A_VORB");
        assert_eq!(duration_secs(AudioFormat::Webm, &vorbis), None);
        // No track at all.
        let no_tracks: Vec<u8> = [&bytes[..36], &bytes[36 + 15..]].concat();
        assert_eq!(duration_secs(AudioFormat::Webm, &no_tracks), None);
    }

    #[test]
    fn ogg_granule_that_understates_does_not_count() {
        let mut bytes = ogg_opus(b"\x42");
        // The last granule says 0 s; 100 more pages of one 60 ms packet (config 11) say 6 s.
        let last = bytes.windows(4).rposition(|w| w == b"OggS").unwrap();
        bytes[last + 6..last + 14].copy_from_slice(&0u64.to_le_bytes());
        for _ in 0..100 {
            let mut page = b"OggS\0\0".to_vec();
            page.extend_from_slice(&0u64.to_le_bytes());
            page.extend_from_slice(&bytes[14..26]);
            page.extend_from_slice(&[1, 1, 0x58]);
            bytes.extend(page);
        }
        assert!(close(duration_secs(AudioFormat::Ogg, &bytes), 6.0 - 312.0 / 48_000.0));
        // Junk between pages: unknown.
        let mut junk = ogg_opus(b"\x42");
        junk.extend_from_slice(b"garbage");
        assert_eq!(duration_secs(AudioFormat::Ogg, &junk), None);
    }

    #[test]
    fn mp4_tables_not_the_movie_header() {
        // mvhd claims 10 ms; the table has 2,000 frames (42.7 s).
        assert!(close(duration_secs(AudioFormat::Mp4, &m4a_with(b"x", 10, 2000)), 2000.0 * 1024.0 / 48_000.0));
        // A table of 1-tick samples still counts 1,024 samples an AAC frame.
        let mut bytes = m4a_with(b"x", 10, 2000);
        let at = bytes.windows(4).position(|w| w == b"stts").unwrap() + 16;
        bytes[at..at + 4].copy_from_slice(&1u32.to_be_bytes());
        assert!(close(duration_secs(AudioFormat::Mp4, &bytes), 2000.0 * 1024.0 / 48_000.0));
        // Trailing bytes that are no box: unknown.
        let mut bytes = m4a(b"x");
        bytes.extend_from_slice(&[1, 2, 3]);
        assert_eq!(duration_secs(AudioFormat::Mp4, &bytes), None);
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
