//! Kernel image formats: telling a vmlinux from a bzImage, and reading
//! the embedded configuration (IKCONFIG) out of either.

use std::io::Read;
use std::path::Path;

/// Offset of the `HdrS` magic in a bzImage (Documentation/arch/x86/boot.rst).
const BZIMAGE_HEADER_MAGIC_OFFSET: usize = 0x202;
const BZIMAGE_HEADER_MAGIC: &[u8; 4] = b"HdrS";
/// `setup_sects`: 512-byte sectors of real-mode setup after the boot sector.
const BZIMAGE_SETUP_SECTS_OFFSET: usize = 0x1f1;
/// `payload_offset` / `payload_length` (boot protocol 2.08+), relative to
/// the start of the protected-mode code.
const BZIMAGE_PAYLOAD_OFFSET_OFFSET: usize = 0x248;
const BZIMAGE_PAYLOAD_LENGTH_OFFSET: usize = 0x24c;
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
/// Markers around the gzipped .config in kernel/configs.c.
const IKCONFIG_START: &[u8] = b"IKCFG_ST";
const IKCONFIG_END: &[u8] = b"IKCFG_ED";
/// A decompressed kernel larger than this is not a kernel we built.
const MAX_DECOMPRESSED_KERNEL: u64 = 512 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    /// Uncompressed ELF, entered directly in 64-bit mode.
    Vmlinux,
    /// Compressed image with the x86 boot protocol setup header.
    BzImage,
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{path}: not a kernel image (neither an ELF vmlinux nor a bzImage with a HdrS header)"
    )]
    UnknownFormat { path: String },
    #[error(
        "{path}: bzImage payload at {offset:#x}+{length:#x} lies outside the {size}-byte file"
    )]
    BadPayload {
        path: String,
        offset: usize,
        length: usize,
        size: usize,
    },
    #[error("{path}: bzImage payload is compressed with {method}, which schedrig cannot read (gzip and zstd are supported)")]
    UnsupportedCompression { path: String, method: &'static str },
    #[error("{path}: cannot decompress the bzImage payload: {reason}")]
    Decompress { path: String, reason: String },
}

/// Detects the format from the first bytes of the file.
pub fn detect(path: &Path) -> Result<ImageFormat, ImageError> {
    let mut head = vec![0u8; BZIMAGE_HEADER_MAGIC_OFFSET + 4];
    let mut f = std::fs::File::open(path).map_err(|e| io(path, e))?;
    let n = read_up_to(&mut f, &mut head).map_err(|e| io(path, e))?;
    classify(&head[..n]).ok_or_else(|| ImageError::UnknownFormat {
        path: path.display().to_string(),
    })
}

fn classify(head: &[u8]) -> Option<ImageFormat> {
    if head.starts_with(ELF_MAGIC) {
        return Some(ImageFormat::Vmlinux);
    }
    let magic = head.get(BZIMAGE_HEADER_MAGIC_OFFSET..BZIMAGE_HEADER_MAGIC_OFFSET + 4)?;
    (magic == BZIMAGE_HEADER_MAGIC).then_some(ImageFormat::BzImage)
}

fn read_up_to(f: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn io(path: &Path, source: std::io::Error) -> ImageError {
    ImageError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Reads the kernel's embedded `.config` (CONFIG_IKCONFIG), or `None`
/// when the image has none.
pub fn read_ikconfig(path: &Path) -> Result<Option<String>, ImageError> {
    match detect(path)? {
        // A vmlinux with DWARF is hundreds of MiB: scanned in chunks,
        // only the config's own bytes kept.
        ImageFormat::Vmlinux => {
            let f = std::fs::File::open(path).map_err(|e| io(path, e))?;
            ikconfig_scan(f, SCAN_CHUNK).map_err(|e| io(path, e))
        }
        ImageFormat::BzImage => {
            let data = std::fs::read(path).map_err(|e| io(path, e))?;
            Ok(ikconfig_from_kernel(&decompress_payload(path, &data)?))
        }
    }
}

/// How much of a vmlinux is read at a time when looking for IKCONFIG.
const SCAN_CHUNK: usize = 1 << 20;
/// The gzipped config is tens of KiB; markers further apart than this
/// are not IKCONFIG's.
const IKCONFIG_GZ_MAX: usize = 4 << 20;

/// IKCONFIG out of a stream read `chunk` bytes at a time.
fn ikconfig_scan(mut r: impl Read, chunk: usize) -> std::io::Result<Option<String>> {
    let mut buf = vec![0u8; chunk.max(1)];
    // Before the start marker: the tail that may hold its first part.
    let mut window: Vec<u8> = Vec::new();
    // After it: the gzip bytes so far.
    let mut gz: Option<Vec<u8>> = None;
    loop {
        let n = read_up_to(&mut r, &mut buf)?;
        if n == 0 {
            return Ok(None);
        }
        let g = match gz.as_mut() {
            Some(g) => {
                g.extend_from_slice(&buf[..n]);
                g
            }
            None => {
                window.extend_from_slice(&buf[..n]);
                let Some(i) = memchr::memmem::find(&window, IKCONFIG_START) else {
                    let keep = window.len().saturating_sub(IKCONFIG_START.len() - 1);
                    window.drain(..keep);
                    continue;
                };
                gz.insert(window.split_off(i + IKCONFIG_START.len()))
            }
        };
        if let Some(len) = memchr::memmem::find(g, IKCONFIG_END) {
            return Ok(gunzip_config(&g[..len]));
        }
        if g.len() > IKCONFIG_GZ_MAX {
            return Ok(None);
        }
    }
}

fn u32_at(data: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(off..off + 4)?.try_into().ok()?))
}

fn decompress_payload(path: &Path, data: &[u8]) -> Result<Vec<u8>, ImageError> {
    let p = path.display().to_string();
    let setup_sects = match data.get(BZIMAGE_SETUP_SECTS_OFFSET).copied() {
        Some(0) | None => 4, // boot.rst: 0 means 4
        Some(n) => n as usize,
    };
    let pm_start = (setup_sects + 1) * 512;
    let offset = u32_at(data, BZIMAGE_PAYLOAD_OFFSET_OFFSET).unwrap_or(0) as usize;
    let length = u32_at(data, BZIMAGE_PAYLOAD_LENGTH_OFFSET).unwrap_or(0) as usize;
    let start = pm_start.saturating_add(offset);
    let payload = data
        .get(start..start.saturating_add(length))
        .filter(|p| !p.is_empty())
        .ok_or(ImageError::BadPayload {
            path: p.clone(),
            offset: start,
            length,
            size: data.len(),
        })?;
    let mut out = Vec::new();
    let limit = MAX_DECOMPRESSED_KERNEL;
    let result = if payload.starts_with(&[0x1f, 0x8b]) {
        flate2::read::GzDecoder::new(payload)
            .take(limit)
            .read_to_end(&mut out)
            .map_err(|e| e.to_string())
    } else if payload.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        ruzstd::decoding::StreamingDecoder::new(payload)
            .map_err(|e| e.to_string())
            .and_then(|d| {
                d.take(limit)
                    .read_to_end(&mut out)
                    .map_err(|e| e.to_string())
            })
    } else {
        let method = match payload {
            [0xfd, b'7', b'z', b'X', b'Z', ..] => "xz",
            [0x02, 0x21, 0x4c, 0x18, ..] => "lz4",
            [b'B', b'Z', b'h', ..] => "bzip2",
            [0x5d, 0x00, 0x00, ..] => "lzma",
            [0x89, b'L', b'Z', b'O', ..] => "lzo",
            _ => "an unknown method",
        };
        return Err(ImageError::UnsupportedCompression { path: p, method });
    };
    // The kernel's own trailer (size, padding) may follow the stream:
    // what decompressed before an error is still the kernel.
    match result {
        Ok(_) => Ok(out),
        Err(_) if !out.is_empty() => Ok(out),
        Err(reason) => Err(ImageError::Decompress { path: p, reason }),
    }
}

/// Finds the IKCONFIG blob in an uncompressed kernel and gunzips it.
pub fn ikconfig_from_kernel(kernel: &[u8]) -> Option<String> {
    let start = memchr::memmem::find(kernel, IKCONFIG_START)? + IKCONFIG_START.len();
    let len = memchr::memmem::find(&kernel[start..], IKCONFIG_END)?;
    gunzip_config(&kernel[start..start + len])
}

fn gunzip_config(gz: &[u8]) -> Option<String> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(gz)
        .take(4 << 20)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn classifies_by_magic() {
        assert_eq!(classify(b"\x7fELF\x02\x01"), Some(ImageFormat::Vmlinux));
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(classify(&bz), Some(ImageFormat::BzImage));
        assert_eq!(classify(b"#!/bin/sh\n"), None);
        assert_eq!(classify(&[]), None);
    }

    fn gz(text: &str) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(text.as_bytes()).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn finds_ikconfig_between_markers() {
        let mut k = b"junk...IKCFG_ST".to_vec();
        k.extend(gz("CONFIG_SCHED_CLASS_EXT=y\n"));
        k.extend(b"IKCFG_ED more junk");
        assert_eq!(
            ikconfig_from_kernel(&k).as_deref(),
            Some("CONFIG_SCHED_CLASS_EXT=y\n")
        );
        assert_eq!(ikconfig_from_kernel(b"no markers here"), None);
    }

    #[test]
    fn scans_ikconfig_across_every_chunk_boundary() {
        let mut k = b"\x7fELF junk IKCFG_ S junk IKCFG_ST".to_vec();
        k.extend(gz("CONFIG_SCHED_CLASS_EXT=y\n"));
        k.extend(b"IKCFG_ED more junk");
        for chunk in 1..=k.len() + 1 {
            assert_eq!(
                ikconfig_scan(&k[..], chunk).unwrap().as_deref(),
                Some("CONFIG_SCHED_CLASS_EXT=y\n"),
                "chunk {chunk}"
            );
        }
        for bad in [
            &b"no markers"[..],
            b"IKCFG_ST but no end",
            b"IKCFG_ED before IKCFG_S",
        ] {
            for chunk in [1, 3, 64] {
                assert_eq!(ikconfig_scan(bad, chunk).unwrap(), None);
            }
        }
        // Markers too far apart are not IKCONFIG's: the scan stops.
        let mut far = b"IKCFG_ST".to_vec();
        far.resize(IKCONFIG_GZ_MAX + 2 * SCAN_CHUNK, 0);
        far.extend(b"IKCFG_ED");
        assert_eq!(ikconfig_scan(&far[..], SCAN_CHUNK).unwrap(), None);
        // A vmlinux file goes through the scan.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("vmlinux");
        std::fs::write(&p, &k).unwrap();
        assert_eq!(
            read_ikconfig(&p).unwrap().as_deref(),
            Some("CONFIG_SCHED_CLASS_EXT=y\n")
        );
    }

    #[test]
    fn reads_ikconfig_from_a_synthetic_bzimage() {
        let mut kernel = b"\x7fELF....IKCFG_ST".to_vec();
        kernel.extend(gz("CONFIG_X=y\n"));
        kernel.extend(b"IKCFG_ED");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&kernel).unwrap();
        let payload = enc.finish().unwrap();
        let setup_sects = 1u8;
        let pm_start = (setup_sects as usize + 1) * 512;
        let mut image = vec![0u8; pm_start + 16];
        image[0x1f1] = setup_sects;
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x248..0x24c].copy_from_slice(&16u32.to_le_bytes());
        image[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        image.extend(&payload);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bzImage");
        std::fs::write(&p, &image).unwrap();
        assert_eq!(detect(&p).unwrap(), ImageFormat::BzImage);
        assert_eq!(read_ikconfig(&p).unwrap().as_deref(), Some("CONFIG_X=y\n"));
    }

    #[test]
    fn bad_payload_bounds_are_an_error_not_a_panic() {
        let mut image = vec![0u8; 0x400];
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x248..0x24c].copy_from_slice(&u32::MAX.to_le_bytes());
        image[0x24c..0x250].copy_from_slice(&u32::MAX.to_le_bytes());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bzImage");
        std::fs::write(&p, &image).unwrap();
        assert!(matches!(
            read_ikconfig(&p),
            Err(ImageError::BadPayload { .. })
        ));
    }
}
