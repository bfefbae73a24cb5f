//! The decode pool: each thread reads a file, hashes its bytes (BLAKE3), decodes it (EXIF
//! orientation applied, pixel limit enforced before allocation), resizes it to 256x256 and
//! normalises it. A file that cannot be read or decoded goes to the writer as a failure with a
//! readable reason; a decoder panic is caught and reported the same way.

use std::panic::{catch_unwind, AssertUnwindSafe};

use crossbeam_channel::{Receiver, Sender};

use super::{Decoded, Job, Shutdown, WriterMsg};
use crate::data::image::{self as img, DecodeOptions, TUTORIAL_SIZE};

pub(crate) struct Worker {
    pub rx: Receiver<Job>,
    pub tx: Sender<Decoded>,
    pub writer: Sender<WriterMsg>,
    pub decode: DecodeOptions,
    pub max_file_bytes: u64,
    pub shutdown: Shutdown,
}

/// Why a file did not decode.
pub(crate) enum Failure {
    /// The file disappeared before it was read.
    Vanished,
    Bad {
        hash: Option<String>,
        error: String,
    },
}

impl Worker {
    pub fn run(self) {
        for job in self.rx.iter() {
            // After a shutdown request, queued files stay pending for the next start.
            if self.shutdown.is_requested() {
                continue;
            }
            let msg = match decode_job(job, &self.decode, self.max_file_bytes) {
                Ok(decoded) => {
                    if self.tx.send(decoded).is_err() {
                        return;
                    }
                    continue;
                }
                Err((job, Failure::Vanished)) => WriterMsg::Vanished { job },
                Err((job, Failure::Bad { hash, error })) => WriterMsg::Failed { job, hash, error },
            };
            if self.writer.send(msg).is_err() {
                return;
            }
        }
    }
}

pub(crate) fn decode_job(
    mut job: Job,
    opts: &DecodeOptions,
    max_file_bytes: u64,
) -> Result<Decoded, (Job, Failure)> {
    let bad = |hash: Option<String>, error: String| Failure::Bad { hash, error };
    let meta = match std::fs::metadata(&job.path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err((job, Failure::Vanished)),
        Err(e) => return Err((job, bad(None, format!("cannot read the file: {e}")))),
    };
    if meta.len() > max_file_bytes {
        let error = format!(
            "the file is {} bytes, over the limit of {max_file_bytes} (limits.max_file_bytes)",
            meta.len()
        );
        return Err((job, bad(None, error)));
    }
    // Record what was read, not what the watcher saw earlier: a later change then shows.
    job.size = meta.len();
    if let Some(t) = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
    {
        job.mtime_ns = t.as_nanos().min(i64::MAX as u128) as i64;
    }
    let bytes = match std::fs::read(&job.path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err((job, Failure::Vanished)),
        Err(e) => return Err((job, bad(None, format!("cannot read the file: {e}")))),
    };
    if bytes.len() as u64 > max_file_bytes {
        let error = format!(
            "the file is {} bytes, over the limit of {max_file_bytes} (limits.max_file_bytes)",
            bytes.len()
        );
        return Err((job, bad(None, error)));
    }
    let hash = blake3::hash(&bytes).to_hex().to_string();
    let decoded = catch_unwind(AssertUnwindSafe(|| {
        img::decode_bytes(&bytes, &job.path, opts).map(|image| {
            let (width, height) = (image.width(), image.height());
            let chw = img::rgb_to_chw(&img::to_rgb_resized(&image, TUTORIAL_SIZE));
            let mut pixels = vec![0f32; chw.len()];
            img::normalize_chw(&chw, &mut pixels);
            (width, height, pixels)
        })
    }));
    match decoded {
        Ok(Ok((width, height, pixels))) => Ok(Decoded {
            job,
            hash,
            width,
            height,
            pixels,
        }),
        Ok(Err(e)) => Err((job, bad(Some(hash), e.to_string().trim_end().to_string()))),
        Err(_) => Err((
            job,
            bad(Some(hash), "the image decoder crashed on this file".into()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn job(path: &Path) -> Job {
        Job {
            path: path.to_path_buf(),
            key: path.to_string_lossy().into_owned(),
            size: 0,
            mtime_ns: 0,
        }
    }

    #[test]
    fn decodes_and_reports_failures() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.png");
        image::RgbImage::from_pixel(40, 30, image::Rgb([10, 200, 30]))
            .save(&good)
            .unwrap();
        let d = decode_job(job(&good), &DecodeOptions::default(), 1 << 20)
            .ok()
            .unwrap();
        assert_eq!((d.width, d.height), (40, 30));
        assert_eq!(d.pixels.len(), 3 * 256 * 256);
        assert_eq!(
            d.hash,
            blake3::hash(&std::fs::read(&good).unwrap())
                .to_hex()
                .as_str()
        );
        assert!(d.job.size > 0 && d.job.mtime_ns > 0);

        let empty = dir.path().join("empty.jpg");
        std::fs::write(&empty, b"").unwrap();
        match decode_job(job(&empty), &DecodeOptions::default(), 1 << 20) {
            Err((_, Failure::Bad { hash, error })) => {
                assert!(hash.is_some());
                assert!(error.contains("empty"), "{error}");
            }
            _ => panic!("an empty file must fail"),
        }
        match decode_job(job(&good), &DecodeOptions::default(), 10) {
            Err((_, Failure::Bad { error, .. })) => {
                assert!(error.contains("max_file_bytes"), "{error}")
            }
            _ => panic!("an oversized file must fail"),
        }
        match decode_job(job(&good), &DecodeOptions { max_pixels: 100 }, 1 << 20) {
            Err((_, Failure::Bad { error, .. })) => {
                assert!(error.contains("decompression bomb"), "{error}")
            }
            _ => panic!("too many pixels must fail"),
        }
        let missing = dir.path().join("missing.png");
        assert!(matches!(
            decode_job(job(&missing), &DecodeOptions::default(), 1 << 20),
            Err((_, Failure::Vanished))
        ));
    }
}
