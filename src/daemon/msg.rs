//! The messages between the daemon's stages, in the order a file meets them:
//!
//! ```text
//! discover --Found--> admit --Job--> decode --Decoded--> batcher --Vec<Decoded>--> inference
//!                       |  \                 \                                       |
//!                       |   `--WriterMsg------`--------------WriterMsg::Batch--------'
//!                       |                              v
//!                       `<------------Ack------------ writer
//! ```
//!
//! HTTP uploads (`gaze serve`) arrive decoded, with a [`Reply`], on a queue of their own into
//! the batcher; their answer goes back on the reply's channel.
//!
//! Each type says what one stage hands the next; no stage reads another's state.

use std::path::PathBuf;
use std::time::Duration;

/// What discovery found: a complete file, an entry that is not a regular file, a path that
/// went, the end of a full walk, or a change in whether discovery has anything left to do.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Found {
    /// A regular file whose writer has finished (closed it, or left it unchanged for the
    /// stability window), with the size and time it settled at.
    File {
        path: PathBuf,
        size: u64,
        mtime_ns: i64,
    },
    /// A pipe, device or socket the include globs take (reported once until it changes).
    Special { path: PathBuf, kind: &'static str },
    /// A path (file or folder) no longer exists.
    Gone { path: PathBuf },
    /// A full walk of every watched folder ended: what the store holds under them and the
    /// walk did not meet may be gone.
    WalkDone,
    /// Whether discovery is idle (first walk done, nothing walking or settling): with nothing
    /// in flight, an idle daemon may exit when asked to.
    Idle(bool),
}

/// A file admitted to the pipeline.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Job {
    pub path: PathBuf,
    /// The path as stored in the database (UTF-8).
    pub key: String,
    pub size: u64,
    pub mtime_ns: i64,
    /// The lease a `gaze worker` claimed the file with; `None` in `gaze watch`.
    pub lease: Option<JobLease>,
}

/// A claimed image's lease: the token its commit must present, and its failed attempts so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct JobLease {
    pub token: i64,
    pub attempts: u32,
}

/// A decoded, normalised image on its way to a batch.
pub(crate) struct Decoded {
    pub job: Job,
    pub hash: String,
    pub width: u32,
    pub height: u32,
    /// CHW, 3 x 256 x 256, normalised.
    pub pixels: Vec<f32>,
    /// An image uploaded over HTTP: who waits for its caption, and how it is wanted.
    pub reply: Option<Reply>,
}

/// What an HTTP client asked of an uploaded image, and where its answer goes.
pub(crate) struct Reply {
    /// Beams for this image; `None`: the configured search.
    pub beam_size: Option<usize>,
    /// Record the image and its caption in the store (then the writer answers, after the
    /// commit, with the stored image's id).
    pub store: bool,
    pub tx: tokio::sync::oneshot::Sender<Result<Answer, String>>,
}

/// The caption of an uploaded image.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub model_id: i64,
    pub model_name: String,
    pub caption: StoredCaption,
    /// The stored image, when the client asked for it to be recorded.
    pub image_id: Option<i64>,
}

impl Answer {
    /// What the client of an upload with `outcome` is told.
    pub fn of(
        outcome: &Outcome,
        model_id: i64,
        model_name: &str,
        image_id: Option<i64>,
    ) -> Result<Answer, String> {
        match outcome {
            Outcome::Captioned(c) => Ok(Answer {
                model_id,
                model_name: model_name.to_string(),
                caption: c.clone(),
                image_id,
            }),
            Outcome::Failed(e) => Err(e.clone()),
            Outcome::AlreadyCaptioned => Err("the image was not captioned".into()),
        }
    }
}

impl Reply {
    /// Answers the client; one that stopped waiting is no one's concern.
    pub fn send(self, answer: Result<Answer, String>) {
        let _ = self.tx.send(answer);
    }
}

/// A caption as the writer stores it.
#[derive(Debug, Clone)]
pub(crate) struct StoredCaption {
    pub text: String,
    pub tokens: Vec<String>,
    pub token_ids: Vec<u32>,
    pub score: f32,
    pub finished: bool,
    pub alphas: Vec<Vec<f32>>,
    pub grid: usize,
    pub beam_size: usize,
}

pub(crate) enum Outcome {
    Captioned(StoredCaption),
    /// The content already has (or, earlier in this batch, gets) a caption by this model.
    AlreadyCaptioned,
    Failed(String),
}

pub(crate) struct ItemResult {
    pub job: Job,
    pub hash: String,
    pub width: u32,
    pub height: u32,
    pub outcome: Outcome,
    /// An upload to be recorded: answered by the writer once committed.
    pub reply: Option<Reply>,
}

pub(crate) struct BatchResult {
    pub model_id: i64,
    pub model_name: String,
    pub infer_time: Duration,
    pub items: Vec<ItemResult>,
}

/// What the writer commits.
pub(crate) enum WriterMsg {
    /// A complete file is queued.
    Pending {
        key: String,
        size: u64,
        mtime_ns: i64,
    },
    /// A path (file or folder) no longer exists.
    Gone {
        key: String,
    },
    /// A pipe, device or socket the include globs take: counted, never read.
    Skipped {
        key: String,
        kind: &'static str,
    },
    /// A skipped entry went, or is no longer a pipe, device or socket.
    Unskipped {
        key: String,
    },
    /// A queued file disappeared before it was read.
    Vanished {
        job: Job,
    },
    Failed {
        job: Job,
        hash: Option<String>,
        error: String,
    },
    Batch(BatchResult),
    /// The inference worker switched to `model_id`: queue stored images again as `recaption`
    /// says (after every batch of the old model, which came before on the queue).
    Swapped {
        model_id: i64,
        recaption: crate::config::Recaption,
    },
}

/// What the writer tells admission once a transaction has committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ack {
    /// The work on these files (keys) is durable: done, failed or gone. Their in-flight slots
    /// are free.
    Committed(Vec<String>),
    /// A model swap committed with its requeue: the new model's work waits as pending rows.
    Swapped,
}

impl WriterMsg {
    /// The files whose in-flight slot this message ends once committed.
    pub(crate) fn finished_keys(&self) -> Vec<&str> {
        match self {
            WriterMsg::Vanished { job } | WriterMsg::Failed { job, .. } => vec![&job.key],
            WriterMsg::Batch(b) => b.items.iter().map(|i| i.job.key.as_str()).collect(),
            WriterMsg::Pending { .. }
            | WriterMsg::Gone { .. }
            | WriterMsg::Skipped { .. }
            | WriterMsg::Unskipped { .. }
            | WriterMsg::Swapped { .. } => Vec::new(),
        }
    }
}
