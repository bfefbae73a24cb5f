//! The batcher: groups decoded images into batches of at most `batch_size`, sending a batch
//! when it is full or `max_wait` after its first image arrived, whichever comes first. When
//! the decode pool has stopped, the last partial batch is sent and the batcher ends.

use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

pub(crate) fn run<T>(rx: Receiver<T>, tx: Sender<Vec<T>>, batch_size: usize, max_wait: Duration) {
    let batch_size = batch_size.max(1);
    while let Ok(first) = rx.recv() {
        let deadline = Instant::now() + max_wait;
        let mut batch = Vec::with_capacity(batch_size);
        batch.push(first);
        let mut upstream_done = false;
        while batch.len() < batch_size {
            match rx.recv_deadline(deadline) {
                Ok(item) => batch.push(item),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => {
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
        let t = std::thread::spawn(move || run(in_rx, out_tx, 3, Duration::from_millis(50)));
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
}
