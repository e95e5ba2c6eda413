//! Streaming ZIP archives (API.md §4.5): a list of files in, a stream of bytes out.
//!
//! By default every entry is Stored with its CRC-32 and sizes in the local header (no data
//! descriptor, which streaming readers such as Java's `ZipInputStream` refuse for Stored
//! entries), so the whole layout is known before the first byte: the exact length, and any
//! byte range of the archive can be produced on its own (resumable downloads). With
//! compression, compressible entries are Deflated behind a data descriptor, and the length
//! is not known in advance. ZIP64 records appear only where a size or offset needs them.
//! Nothing here holds a thread while the client is slow: reads are async, deflate runs a
//! chunk at a time on a short blocking task.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::{BufMut as _, Bytes, BytesMut};
use chrono::{DateTime, Datelike as _, Timelike as _, Utc};
use tokio::sync::mpsc;

use crate::store::pagecache::read_chunk;
use crate::store::read::DataOpener;

/// One file of the archive.
#[derive(Clone)]
pub struct ZipFile {
    /// The entry name (already made safe and unique).
    pub name: String,
    /// Where its bytes come from.
    pub open: Source,
    /// The size the bytes must have (a file that changed is not sent).
    pub size: u64,
    /// Its CRC-32.
    pub crc32: u32,
    /// Modification time, for the entry's date.
    pub modified: SystemTime,
    /// Deflate this entry (only when the archive is compressed).
    pub deflate: bool,
}

impl std::fmt::Debug for ZipFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZipFile")
            .field("name", &self.name)
            .field("size", &self.size)
            .field("crc32", &self.crc32)
            .field("deflate", &self.deflate)
            .finish_non_exhaustive()
    }
}

/// Where an entry's bytes come from.
#[derive(Clone)]
pub enum Source {
    /// A file on disk, opened (the store's no-symlink open) on a blocking thread.
    Disk(DataOpener),
    /// An object in the bucket, read by ranges (`start..end`).
    Object(ObjectOpener),
}

/// Streams bytes `start..end` of an object.
pub type ObjectOpener = Arc<
    dyn Fn(
            u64,
            u64,
        ) -> futures_util::future::BoxFuture<
            'static,
            std::io::Result<futures_util::stream::BoxStream<'static, std::io::Result<Bytes>>>,
        > + Send
        + Sync,
>;

impl From<DataOpener> for Source {
    fn from(o: DataOpener) -> Self {
        Self::Disk(o)
    }
}

/// An entry's bytes from an offset on, a chunk at a time.
enum Chunks {
    File {
        file: Arc<std::fs::File>,
        pos: u64,
        end: u64,
    },
    Object(futures_util::stream::BoxStream<'static, std::io::Result<Bytes>>),
}

impl Chunks {
    /// The next chunk; empty at the end.
    async fn next(&mut self) -> std::io::Result<Bytes> {
        use futures_util::StreamExt as _;
        match self {
            Self::File { file, pos, end } => {
                let want = usize::try_from(*end - *pos).map_or(CHUNK, |l| l.min(CHUNK));
                if want == 0 {
                    return Ok(Bytes::new());
                }
                let b = read_chunk(file, *pos, want).await?;
                *pos += b.len() as u64;
                Ok(b)
            }
            Self::Object(s) => Ok(s.next().await.transpose()?.unwrap_or_default()),
        }
    }
}

/// Bytes `from..from + len` of entry `f`, whose whole is `size` bytes (checked for a file).
async fn chunks(f: &ZipFile, size: u64, from: u64, len: u64) -> std::io::Result<Chunks> {
    match &f.open {
        Source::Disk(_) => Ok(Chunks::File {
            file: open(f, size).await?,
            pos: from,
            end: from + len,
        }),
        Source::Object(o) => Ok(Chunks::Object(o(from, from + len).await?)),
    }
}

const LOCAL_SIG: u32 = 0x0403_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const EOCD_SIG: u32 = 0x0605_4b50;
const EOCD64_SIG: u32 = 0x0606_4b50;
const LOCATOR64_SIG: u32 = 0x0706_4b50;
const DESCRIPTOR_SIG: u32 = 0x0807_4b50;
const FLAG_UTF8: u16 = 1 << 11;
const FLAG_DESCRIPTOR: u16 = 1 << 3;
const U32_MAX: u64 = 0xFFFF_FFFF;
/// Deflated entries this large get ZIP64 sizes (the compressed size is not known ahead).
const DEFLATE_ZIP64_FROM: u64 = 0xF000_0000;

fn dos_time(t: SystemTime) -> (u16, u16) {
    let dt: DateTime<Utc> = t.into();
    if dt.year() < 1980 {
        return (0, (1 << 5) | 1);
    }
    let year = dt.year().min(2107);
    let time = ((dt.hour() as u16) << 11) | ((dt.minute() as u16) << 5) | (dt.second() as u16 / 2);
    let date = (((year - 1980) as u16) << 9) | ((dt.month() as u16) << 5) | dt.day() as u16;
    (time, date)
}

fn unix_secs(t: SystemTime) -> u32 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs().min(u64::from(u32::MAX)) as u32)
        .unwrap_or(0)
}

/// A piece of the archive: bytes we made, or a run of a file.
#[derive(Debug, Clone)]
enum Segment {
    Bytes(Bytes),
    File { index: usize, len: u64 },
}

/// A fully laid-out Stored archive: every byte's origin is known.
#[derive(Debug, Clone)]
pub struct Layout {
    files: Vec<ZipFile>,
    segments: Vec<(u64, Segment)>,
    total: u64,
}

struct Entry<'a> {
    file: &'a ZipFile,
    offset: u64,
}

fn local_header(f: &ZipFile, deflated: bool) -> Bytes {
    let (time, date) = dos_time(f.modified);
    let name = f.name.as_bytes();
    let zip64 = if deflated {
        f.size >= DEFLATE_ZIP64_FROM
    } else {
        f.size >= U32_MAX
    };
    let mut extra = BytesMut::new();
    if zip64 {
        extra.put_u16_le(0x0001);
        extra.put_u16_le(16);
        // Stored: the sizes; deflated: zeros, the descriptor has them.
        let s = if deflated { 0 } else { f.size };
        extra.put_u64_le(s);
        extra.put_u64_le(s);
    }
    extra.put_u16_le(0x5455);
    extra.put_u16_le(5);
    extra.put_u8(1);
    extra.put_u32_le(unix_secs(f.modified));
    let mut b = BytesMut::with_capacity(30 + name.len() + extra.len());
    b.put_u32_le(LOCAL_SIG);
    b.put_u16_le(if zip64 { 45 } else { 20 });
    b.put_u16_le(FLAG_UTF8 | if deflated { FLAG_DESCRIPTOR } else { 0 });
    b.put_u16_le(if deflated { 8 } else { 0 });
    b.put_u16_le(time);
    b.put_u16_le(date);
    if deflated {
        b.put_u32_le(0);
        b.put_u32_le(if zip64 { u32::MAX } else { 0 });
        b.put_u32_le(if zip64 { u32::MAX } else { 0 });
    } else {
        b.put_u32_le(f.crc32);
        let s = if zip64 { u32::MAX } else { f.size as u32 };
        b.put_u32_le(s);
        b.put_u32_le(s);
    }
    b.put_u16_le(name.len() as u16);
    b.put_u16_le(extra.len() as u16);
    b.put_slice(name);
    b.put_slice(&extra);
    b.freeze()
}

/// What the central directory records of an entry.
struct Written<'a> {
    file: &'a ZipFile,
    offset: u64,
    compressed: u64,
    crc32: u32,
    deflated: bool,
}

fn central_directory(entries: &[Written<'_>], cd_offset: u64) -> Bytes {
    let mut b = BytesMut::new();
    for e in entries {
        let f = e.file;
        let (time, date) = dos_time(f.modified);
        let name = f.name.as_bytes();
        let big_u = f.size >= U32_MAX;
        let big_c = e.compressed >= U32_MAX;
        let big_o = e.offset >= U32_MAX;
        let mut extra = BytesMut::new();
        if big_u || big_c || big_o {
            let n = 8 * (u16::from(big_u) + u16::from(big_c) + u16::from(big_o));
            extra.put_u16_le(0x0001);
            extra.put_u16_le(n);
            if big_u {
                extra.put_u64_le(f.size);
            }
            if big_c {
                extra.put_u64_le(e.compressed);
            }
            if big_o {
                extra.put_u64_le(e.offset);
            }
        }
        extra.put_u16_le(0x5455);
        extra.put_u16_le(5);
        extra.put_u8(1);
        extra.put_u32_le(unix_secs(f.modified));
        let zip64 = big_u || big_c || big_o;
        b.put_u32_le(CENTRAL_SIG);
        b.put_u16_le(0x0300 | 45); // made by: Unix, 4.5
        b.put_u16_le(if zip64 { 45 } else { 20 });
        b.put_u16_le(FLAG_UTF8 | if e.deflated { FLAG_DESCRIPTOR } else { 0 });
        b.put_u16_le(if e.deflated { 8 } else { 0 });
        b.put_u16_le(time);
        b.put_u16_le(date);
        b.put_u32_le(e.crc32);
        b.put_u32_le(if big_c { u32::MAX } else { e.compressed as u32 });
        b.put_u32_le(if big_u { u32::MAX } else { f.size as u32 });
        b.put_u16_le(name.len() as u16);
        b.put_u16_le(extra.len() as u16);
        b.put_u16_le(0); // comment
        b.put_u16_le(0); // disk
        b.put_u16_le(0); // internal attributes
        b.put_u32_le(0o100_644 << 16); // regular file, rw-r--r--
        b.put_u32_le(if big_o { u32::MAX } else { e.offset as u32 });
        b.put_slice(name);
        b.put_slice(&extra);
    }
    let cd_size = b.len() as u64;
    let count = entries.len() as u64;
    let need64 = count >= 0xFFFF || cd_size >= U32_MAX || cd_offset >= U32_MAX;
    if need64 {
        let eocd64_offset = cd_offset + cd_size;
        b.put_u32_le(EOCD64_SIG);
        b.put_u64_le(44);
        b.put_u16_le(0x0300 | 45);
        b.put_u16_le(45);
        b.put_u32_le(0);
        b.put_u32_le(0);
        b.put_u64_le(count);
        b.put_u64_le(count);
        b.put_u64_le(cd_size);
        b.put_u64_le(cd_offset);
        b.put_u32_le(LOCATOR64_SIG);
        b.put_u32_le(0);
        b.put_u64_le(eocd64_offset);
        b.put_u32_le(1);
    }
    b.put_u32_le(EOCD_SIG);
    b.put_u16_le(0);
    b.put_u16_le(0);
    let c16 = if count >= 0xFFFF {
        0xFFFF
    } else {
        count as u16
    };
    b.put_u16_le(c16);
    b.put_u16_le(c16);
    b.put_u32_le(if cd_size >= U32_MAX {
        u32::MAX
    } else {
        cd_size as u32
    });
    b.put_u32_le(if cd_offset >= U32_MAX {
        u32::MAX
    } else {
        cd_offset as u32
    });
    b.put_u16_le(0);
    b.freeze()
}

impl Layout {
    /// Lays out a Stored archive of `files`.
    pub fn stored(files: Vec<ZipFile>) -> Self {
        let mut segments = Vec::new();
        let mut pos = 0u64;
        let mut entries = Vec::with_capacity(files.len());
        for (index, f) in files.iter().enumerate() {
            let header = local_header(f, false);
            entries.push(Entry {
                file: f,
                offset: pos,
            });
            segments.push((pos, Segment::Bytes(header.clone())));
            pos += header.len() as u64;
            if f.size > 0 {
                segments.push((pos, Segment::File { index, len: f.size }));
                pos += f.size;
            }
        }
        let written: Vec<Written<'_>> = entries
            .iter()
            .map(|e| Written {
                file: e.file,
                offset: e.offset,
                compressed: e.file.size,
                crc32: e.file.crc32,
                deflated: false,
            })
            .collect();
        let cd = central_directory(&written, pos);
        segments.push((pos, Segment::Bytes(cd.clone())));
        pos += cd.len() as u64;
        drop(written);
        Self {
            files,
            segments,
            total: pos,
        }
    }

    /// The archive's exact length.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// Whether the archive is empty (it never is: the end record is always there).
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Streams bytes `start..end` of the archive into `tx`. Stops when the receiver goes
    /// away (the client disconnected); fails if a file's size is no longer what was laid
    /// out. Reads go through `tokio::fs`, so a slow client holds no thread.
    pub async fn write_range(
        &self,
        start: u64,
        end: u64,
        tx: &mpsc::Sender<std::io::Result<Bytes>>,
    ) -> std::io::Result<()> {
        for (seg_start, seg) in &self.segments {
            let seg_len = match seg {
                Segment::Bytes(b) => b.len() as u64,
                Segment::File { len, .. } => *len,
            };
            let seg_end = seg_start + seg_len;
            if seg_end <= start || *seg_start >= end {
                continue;
            }
            let from = start.max(*seg_start) - seg_start;
            let to = end.min(seg_end) - seg_start;
            match seg {
                Segment::Bytes(b) => send(tx, b.slice(from as usize..to as usize)).await?,
                Segment::File { index, len } => {
                    let f = &self.files[*index];
                    let mut c = chunks(f, *len, from, to - from).await?;
                    send_chunks(&mut c, to - from, &f.name, tx).await?;
                }
            }
        }
        Ok(())
    }
}

/// Opens an entry's file and checks it still has the size laid out.
async fn open(f: &ZipFile, len: u64) -> std::io::Result<Arc<std::fs::File>> {
    let Source::Disk(opener) = &f.open else {
        return Err(std::io::Error::other("not a file on disk"));
    };
    let opener = Arc::clone(opener);
    let file = tokio::task::spawn_blocking(move || opener())
        .await
        .map_err(std::io::Error::other)??;
    if file.metadata()?.len() != len {
        return Err(std::io::Error::other(format!("{} changed size", f.name)));
    }
    Ok(Arc::new(file))
}

/// Sends `len` bytes from `c`; an entry that ends early fails the archive.
async fn send_chunks(
    c: &mut Chunks,
    len: u64,
    name: &str,
    tx: &mpsc::Sender<std::io::Result<Bytes>>,
) -> std::io::Result<()> {
    let mut done = 0;
    while done < len {
        // Room first, then the read: a client that stops reading leaves this task waiting
        // with no chunk in hand (only the channel and hyper hold bytes).
        let room = reserve(tx).await?;
        let mut buf = c.next().await?;
        if buf.is_empty() {
            return Err(std::io::Error::other(format!(
                "{name} shrank while being sent"
            )));
        }
        if buf.len() as u64 > len - done {
            buf.truncate((len - done) as usize);
        }
        done += buf.len() as u64;
        room.send(Ok(buf));
    }
    Ok(())
}

/// Bytes read from a file at a time.
const CHUNK: usize = 256 * 1024;

async fn send(tx: &mpsc::Sender<std::io::Result<Bytes>>, b: Bytes) -> std::io::Result<()> {
    tx.send(Ok(b)).await.map_err(|_| client_gone())
}

/// A place in the channel, waited for before the bytes that go in it are made.
async fn reserve(
    tx: &mpsc::Sender<std::io::Result<Bytes>>,
) -> std::io::Result<mpsc::Permit<'_, std::io::Result<Bytes>>> {
    tx.reserve().await.map_err(|_| client_gone())
}

fn client_gone() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away")
}

/// Streams a compressed archive of `files` into `tx` (entries marked `deflate` are
/// Deflated, a chunk at a time on a short blocking task; the others Stored).
pub async fn write_compressed(
    files: &[ZipFile],
    tx: &mpsc::Sender<std::io::Result<Bytes>>,
) -> std::io::Result<()> {
    use flate2::write::DeflateEncoder;
    use std::io::Write as _;
    let mut pos = 0u64;
    let mut written = Vec::with_capacity(files.len());
    for f in files {
        let header = local_header(f, f.deflate);
        let offset = pos;
        pos += header.len() as u64;
        send(tx, header).await?;
        let mut c = chunks(f, f.size, 0, f.size).await?;
        if !f.deflate {
            send_chunks(&mut c, f.size, &f.name, tx).await?;
            pos += f.size;
            written.push((f, offset, f.size, f.crc32, false));
            continue;
        }
        let mut crc = crc32fast::Hasher::new();
        let mut enc = Some(DeflateEncoder::new(
            Vec::with_capacity(CHUNK),
            flate2::Compression::new(6),
        ));
        let mut compressed = 0u64;
        let mut total = 0u64;
        loop {
            let room = reserve(tx).await?;
            let buf = c.next().await?;
            if buf.is_empty() {
                break;
            }
            total += buf.len() as u64;
            crc.update(&buf);
            let mut e = enc
                .take()
                .ok_or_else(|| std::io::Error::other("encoder lost"))?;
            let (e, out) = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
                e.write_all(&buf)?;
                let out = std::mem::take(e.get_mut());
                Ok((e, out))
            })
            .await
            .map_err(std::io::Error::other)??;
            enc = Some(e);
            if !out.is_empty() {
                compressed += out.len() as u64;
                room.send(Ok(Bytes::from(out)));
            }
        }
        let e = enc
            .take()
            .ok_or_else(|| std::io::Error::other("encoder lost"))?;
        let rest = tokio::task::spawn_blocking(move || e.finish())
            .await
            .map_err(std::io::Error::other)??;
        compressed += rest.len() as u64;
        if !rest.is_empty() {
            send(tx, Bytes::from(rest)).await?;
        }
        if total != f.size {
            return Err(std::io::Error::other(format!("{} changed size", f.name)));
        }
        let crc = crc.finalize();
        let mut d = BytesMut::with_capacity(24);
        d.put_u32_le(DESCRIPTOR_SIG);
        d.put_u32_le(crc);
        if f.size >= DEFLATE_ZIP64_FROM {
            d.put_u64_le(compressed);
            d.put_u64_le(f.size);
        } else {
            d.put_u32_le(compressed as u32);
            d.put_u32_le(f.size as u32);
        }
        pos += compressed + d.len() as u64;
        send(tx, d.freeze()).await?;
        written.push((f, offset, compressed, crc, true));
    }
    let entries: Vec<Written<'_>> = written
        .into_iter()
        .map(|(file, offset, compressed, crc32, deflated)| Written {
            file,
            offset,
            compressed,
            crc32,
            deflated,
        })
        .collect();
    send(tx, central_directory(&entries, pos)).await
}

/// Makes entry names safe and unique: the last segment of the name (as a browser saving
/// `../../etc/passwd` or `C:\x\y` keeps `passwd` or `y`), cleaned by the §7 rules (no NUL or
/// control or format characters, no leading dot), and `name_1.ext`, `name_2.ext` for repeats,
/// names that differ only in case counting as repeats.
pub fn entry_names(originals: &[String]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(originals.len());
    for o in originals {
        let last = o
            .rsplit(['/', '\\'])
            .find(|s| !s.trim().is_empty())
            .unwrap_or("");
        let base = crate::store::key::FileName::sanitize(last)
            .as_str()
            .to_owned();
        let (stem, ext) = match base.rfind('.') {
            Some(i) if i > 0 => (base[..i].to_owned(), base[i..].to_owned()),
            _ => (base.clone(), String::new()),
        };
        // Unique regardless of case: Windows and macOS extract `a.txt` and `A.TXT` to one file.
        let mut name = base.clone();
        let mut n = 1;
        while !seen.insert(name.to_lowercase()) {
            name = format!("{stem}_{n}{ext}");
            n += 1;
        }
        out.push(name);
    }
    out
}

/// Is this type worth deflating? Media, archives and PDFs are already compressed.
pub fn compressible(mime: &str) -> bool {
    let m = mime.to_ascii_lowercase();
    let already = m.starts_with("image/")
        || m.starts_with("audio/")
        || m.starts_with("video/")
        || m == "application/pdf"
        || m.contains("zip")
        || m.contains("compressed")
        || m.contains("x-7z")
        || m.contains("x-rar")
        || m.contains("x-bzip")
        || m.contains("x-xz")
        || m.contains("zstd")
        || m.contains("x-tar");
    !already
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names_are_safe_and_unique() {
        let names = entry_names(&[
            "a.txt".into(),
            "a.txt".into(),
            "../../etc/passwd".into(),
            "C:\\x\\y".into(),
            "a.txt".into(),
            "noext".into(),
            "noext".into(),
        ]);
        assert_eq!(names[0], "a.txt");
        assert_eq!(names[1], "a_1.txt");
        assert_eq!(names[2], "passwd");
        assert_eq!(names[3], "y");
        assert_eq!(names[4], "a_2.txt");
        assert_eq!(names[6], "noext_1");
        // Issue 16: case-only differences overwrite each other on Windows and macOS; a
        // right-to-left override disguised an executable.
        let names = entry_names(&[
            "a.txt".into(),
            "A.TXT".into(),
            "a_1.txt".into(),
            "Ä.txt".into(),
            "ä.TXT".into(),
            "\u{202E}gnp.exe".into(),
        ]);
        assert_eq!(
            names,
            [
                "a.txt",
                "A_1.TXT",
                "a_1_1.txt",
                "Ä.txt",
                "ä_1.TXT",
                "gnp.exe"
            ]
        );
    }

    #[tokio::test]
    async fn stored_layout_length_is_exact() {
        let dir = std::env::temp_dir().join(format!("zl-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut files = Vec::new();
        for (i, data) in [&b"hello"[..], b"", b"world!!"].iter().enumerate() {
            let p = dir.join(format!("f{i}"));
            std::fs::write(&p, data).unwrap();
            files.push(ZipFile {
                name: format!("f{i}.txt"),
                open: Source::Disk(Arc::new(move || std::fs::File::open(&p))),
                size: data.len() as u64,
                crc32: crc32fast::hash(data),
                modified: SystemTime::now(),
                deflate: false,
            });
        }
        let layout = Layout::stored(files);
        let (tx, mut rx) = mpsc::channel(1024);
        layout.write_range(0, layout.len(), &tx).await.unwrap();
        drop(tx);
        let mut all = Vec::new();
        while let Ok(Ok(b)) = rx.try_recv() {
            all.extend_from_slice(&b);
        }
        assert_eq!(all.len() as u64, layout.len());
        assert_eq!(&all[..4], &LOCAL_SIG.to_le_bytes());
        // Any range is the same slice of the whole.
        let (tx, mut rx) = mpsc::channel(1024);
        layout.write_range(40, 90, &tx).await.unwrap();
        drop(tx);
        let mut part = Vec::new();
        while let Ok(Ok(b)) = rx.try_recv() {
            part.extend_from_slice(&b);
        }
        assert_eq!(part, all[40..90]);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn dos_dates() {
        assert_eq!(dos_time(SystemTime::UNIX_EPOCH), (0, 33));
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let (time, date) = dos_time(t);
        assert_eq!(date >> 9, 2023 - 1980);
        assert_eq!(time >> 11, 22);
    }
}
