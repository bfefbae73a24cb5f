//! The decode pool: each thread reads a file, hashes its bytes (BLAKE3), decodes it (EXIF
//! orientation applied, pixel limit enforced before allocation), resizes it to 256x256 and
//! normalises it. A file that cannot be read or decoded goes to the writer as a failure with a
//! readable reason; a decoder panic is caught and reported the same way.

use std::panic::{catch_unwind, AssertUnwindSafe};

use crossbeam_channel::{Receiver, Sender};

use super::msg::{Decoded, Job, WriterMsg};
use super::Shutdown;
use crate::data::image::{self as img, DecodeOptions, TUTORIAL_SIZE};
use crate::telemetry::{FailureKind, Telemetry};

pub(crate) struct Worker {
    pub rx: Receiver<Job>,
    pub tx: Sender<Decoded>,
    pub writer: Sender<WriterMsg>,
    pub decode: DecodeOptions,
    pub max_file_bytes: u64,
    pub follow_symlinks: bool,
    pub shutdown: Shutdown,
    pub telemetry: std::sync::Arc<Telemetry>,
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
        yield_to_inference();
        for job in self.rx.iter() {
            // After a shutdown request, queued files stay pending for the next start.
            if self.shutdown.is_requested() {
                continue;
            }
            let started = std::time::Instant::now();
            let decoded = decode_job(job, &self.decode, self.max_file_bytes, self.follow_symlinks);
            self.telemetry
                .decode_seconds
                .observe_duration(started.elapsed());
            let msg = match decoded {
                Ok(decoded) => {
                    if self.tx.send(decoded).is_err() {
                        return;
                    }
                    continue;
                }
                Err((job, Failure::Vanished)) => {
                    self.telemetry.failed(FailureKind::Vanished);
                    WriterMsg::Vanished { job }
                }
                Err((job, Failure::Bad { hash, error })) => {
                    // Read but not decoded, or not read at all.
                    self.telemetry.failed(match hash {
                        Some(_) => FailureKind::Undecodable,
                        None => FailureKind::Unreadable,
                    });
                    WriterMsg::Failed { job, hash, error }
                }
            };
            if self.writer.send(msg).is_err() {
                return;
            }
        }
    }
}

/// Lowers this thread's scheduling priority (nice 10). Decoding the next batch overlaps the
/// inference of this one; where cores are few, a decode thread that preempts one of the
/// model's threads stalls all of them at their next barrier, so the model's threads go first
/// and decoding takes the time they leave.
fn yield_to_inference() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain system calls on this thread's own id.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        if libc::setpriority(libc::PRIO_PROCESS, tid, 10) != 0 {
            tracing::debug!("could not lower the decode thread's priority");
        }
    }
}

// The error hands the job back to be recorded; it moves once per failed file, so boxing it
// would buy nothing.
#[allow(clippy::result_large_err)]
pub(crate) fn decode_job(
    mut job: Job,
    opts: &DecodeOptions,
    max_file_bytes: u64,
    follow_symlinks: bool,
) -> Result<Decoded, (Job, Failure)> {
    let bad = |hash: Option<String>, error: String| Failure::Bad { hash, error };
    // Opened without blocking and checked on the handle: a FIFO, a device or (with links not
    // followed) a link swapped in after discovery saw a regular file is refused here.
    let (bytes, meta) = match crate::files::read_limited(
        &job.path,
        max_file_bytes,
        follow_symlinks,
        Some("limits.max_file_bytes"),
    ) {
        Ok(read) => read,
        Err(e) if e.is_not_found() => return Err((job, Failure::Vanished)),
        Err(e) => {
            let reason = e.reason();
            return Err((job, bad(None, reason)));
        }
    };
    // Record what was read, not what discovery saw earlier: a later change then shows.
    job.size = meta.len();
    if let Some(t) = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
    {
        job.mtime_ns = t.as_nanos().min(i64::MAX as u128) as i64;
    }
    let hash = blake3::hash(&bytes).to_hex().to_string();
    match prepare(&bytes, &job.path, opts) {
        Ok((width, height, pixels)) => Ok(Decoded {
            job,
            hash,
            width,
            height,
            pixels,
            reply: None,
        }),
        Err(error) => Err((job, bad(Some(hash), error))),
    }
}

/// Decodes image bytes (`path` names them in errors) and makes the model's input: the
/// original width and height, and the 3 x 256 x 256 normalised pixels. A decoder panic is
/// caught and reported as an error.
pub(crate) fn prepare(
    bytes: &[u8],
    path: &std::path::Path,
    opts: &DecodeOptions,
) -> Result<(u32, u32, Vec<f32>), String> {
    let decoded = catch_unwind(AssertUnwindSafe(|| {
        img::decode_bytes(bytes, path, opts).map(|image| {
            let (width, height) = (image.width(), image.height());
            let chw = img::rgb_to_chw(&img::to_rgb_resized(&image, TUTORIAL_SIZE));
            let mut pixels = vec![0f32; chw.len()];
            img::normalize_chw(&chw, &mut pixels);
            (width, height, pixels)
        })
    }));
    match decoded {
        Ok(Ok(prepared)) => Ok(prepared),
        Ok(Err(e)) => Err(e.to_string().trim_end().to_string()),
        Err(_) => Err("the image decoder crashed on this file".into()),
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
            lease: None,
        }
    }

    #[test]
    fn decodes_and_reports_failures() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.png");
        image::RgbImage::from_pixel(40, 30, image::Rgb([10, 200, 30]))
            .save(&good)
            .unwrap();
        let d = decode_job(job(&good), &DecodeOptions::default(), 1 << 20, false)
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
        match decode_job(job(&empty), &DecodeOptions::default(), 1 << 20, false) {
            Err((_, Failure::Bad { hash, error })) => {
                assert!(hash.is_some());
                assert!(error.contains("empty"), "{error}");
            }
            _ => panic!("an empty file must fail"),
        }
        match decode_job(job(&good), &DecodeOptions::default(), 10, false) {
            Err((_, Failure::Bad { error, .. })) => {
                assert!(error.contains("max_file_bytes"), "{error}")
            }
            _ => panic!("an oversized file must fail"),
        }
        match decode_job(
            job(&good),
            &DecodeOptions {
                max_pixels: 100,
                ..DecodeOptions::default()
            },
            1 << 20,
            false,
        ) {
            Err((_, Failure::Bad { error, .. })) => {
                assert!(error.contains("decompression bomb"), "{error}")
            }
            _ => panic!("too many pixels must fail"),
        }
        let missing = dir.path().join("missing.png");
        assert!(matches!(
            decode_job(job(&missing), &DecodeOptions::default(), 1 << 20, false),
            Err((_, Failure::Vanished))
        ));
    }

    #[test]
    fn special_files_fail_fast_and_are_never_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe.jpg");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let zero = dir.path().join("zero.jpg");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let start = std::time::Instant::now();
        for follow in [false, true] {
            for (path, want) in [
                (&fifo, "named pipe"),
                (
                    &zero,
                    if follow {
                        "character device"
                    } else {
                        "symbolic link"
                    },
                ),
            ] {
                match decode_job(job(path), &DecodeOptions::default(), 1 << 20, follow) {
                    Err((_, Failure::Bad { hash: None, error })) => {
                        assert!(error.contains(want), "{error}")
                    }
                    _ => panic!("{} must fail", path.display()),
                }
            }
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
    }
}
