//! The batcher: groups decoded images into batches of at most `batch_size`, sending a batch
//! when it is full or `max_wait` after its first image arrived, whichever comes first. Images
//! come from the decode pool (watched files) and from HTTP uploads alike, so one batch may hold
//! both. When the decode pool has stopped, the last partial batch is sent and the batcher ends
//! (uploads then find their queue closed).

use std::time::{Duration, Instant};

use crossbeam_channel::{never, select, Receiver, Sender};

/// What one wait for an image gave.
enum Next<T> {
    Item(T),
    /// The decode pool has stopped.
    FilesDone,
    Timeout,
}

pub(crate) fn run<T>(
    files: Receiver<T>,
    uploads: Option<Receiver<T>>,
    tx: Sender<Vec<T>>,
    batch_size: usize,
    max_wait: Duration,
) {
    let batch_size = batch_size.max(1);
    let mut uploads = uploads.unwrap_or_else(never);
    // A closed upload queue (the HTTP server went) is no reason to stop captioning files.
    let mut next = |deadline: Option<Instant>| loop {
        let timeout = match deadline {
            Some(d) => crossbeam_channel::after(d.saturating_duration_since(Instant::now())),
            None => never(),
        };
        let closed = select! {
            recv(files) -> m => return m.map_or(Next::FilesDone, Next::Item),
            recv(uploads) -> m => match m {
                Ok(item) => return Next::Item(item),
                Err(_) => true,
            },
            recv(timeout) -> _ => return Next::Timeout,
        };
        if closed {
            uploads = never();
        }
    };
    while let Next::Item(first) = next(None) {
        let deadline = Instant::now() + max_wait;
        let mut batch = Vec::with_capacity(batch_size);
        batch.push(first);
        let mut upstream_done = false;
        while batch.len() < batch_size {
            match next(Some(deadline)) {
                Next::Item(item) => batch.push(item),
                Next::Timeout => break,
                Next::FilesDone => {
                    upstream_done = true;
                    break;
                }
            }
        }
        if tx.send(batch).is_err() || upstream_done {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::{bounded, unbounded};

    #[test]
    fn full_batches_then_a_timed_partial_one() {
        let (in_tx, in_rx) = unbounded();
        let (out_tx, out_rx) = bounded(10);
        let t = std::thread::spawn(move || run(in_rx, None, out_tx, 3, Duration::from_millis(50)));
        for i in 0..7 {
            in_tx.send(i).unwrap();
        }
        assert_eq!(out_rx.recv().unwrap(), vec![0, 1, 2]);
        assert_eq!(out_rx.recv().unwrap(), vec![3, 4, 5]);
        // The seventh waits for max_wait, not for more images.
        let started = Instant::now();
        assert_eq!(out_rx.recv().unwrap(), vec![6]);
        assert!(started.elapsed() < Duration::from_secs(5));
        in_tx.send(7).unwrap();
        drop(in_tx);
        assert_eq!(out_rx.recv().unwrap(), vec![7]);
        t.join().unwrap();
        assert!(out_rx.recv().is_err());
    }

    #[test]
    fn uploads_join_the_batches_of_files_and_their_end_stops_nothing() {
        let (files_tx, files_rx) = unbounded();
        let (up_tx, up_rx) = bounded(4);
        let (out_tx, out_rx) = bounded(10);
        let t = std::thread::spawn(move || {
            run(files_rx, Some(up_rx), out_tx, 2, Duration::from_secs(30))
        });
        files_tx.send("file").unwrap();
        up_tx.send("upload").unwrap();
        let mut first = out_rx.recv().unwrap();
        first.sort();
        assert_eq!(first, vec!["file", "upload"]);
        // The HTTP side going away leaves the files flowing.
        drop(up_tx);
        files_tx.send("a").unwrap();
        files_tx.send("b").unwrap();
        assert_eq!(out_rx.recv().unwrap(), vec!["a", "b"]);
        drop(files_tx);
        t.join().unwrap();
        assert!(out_rx.recv().is_err());
    }
}
