//! `POST /v1/caption` throughput and latency at several numbers of concurrent clients.
//!
//! Starts the daemon (on an empty folder) and its HTTP server in this process, on a free
//! loopback port, then for each client count runs that many client threads, each sending
//! images one request at a time (a new connection per request, as a script with curl would),
//! until `--requests` have been answered. Prints images/s and the p50 / p99 latency of a
//! request. Uploads from all clients are batched together by the daemon's batcher, so more
//! clients fill bigger batches.
//!
//! ```text
//! cargo run --release --example bench_http -- --model gaze-demo/model/best.safetensors \
//!     [--clients 1,8,32] [--requests 96] [--batch-size 32] [--max-wait-ms 20] [--beam-size 3]
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use gaze::config::Config;
use gaze::daemon::{Daemon, DaemonOptions};
use gaze::model::{CaptionModel, LoadOptions};

struct Args {
    model: PathBuf,
    clients: Vec<usize>,
    requests: usize,
    batch_size: usize,
    max_wait_ms: u64,
    beam_size: usize,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        model: PathBuf::new(),
        clients: vec![1, 8, 32],
        requests: 96,
        batch_size: 32,
        max_wait_ms: 20,
        beam_size: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--model" => args.model = value.into(),
            "--clients" => {
                args.clients = value
                    .split(',')
                    .map(|s| s.trim().parse())
                    .collect::<Result<_, _>>()?
            }
            "--requests" => args.requests = value.parse()?,
            "--batch-size" => args.batch_size = value.parse()?,
            "--max-wait-ms" => args.max_wait_ms = value.parse()?,
            "--beam-size" => args.beam_size = value.parse()?,
            other => bail!("unknown flag {other}"),
        }
    }
    if args.model.as_os_str().is_empty() {
        bail!("--model FILE is required (for example the demo's: cargo run --release -- demo)");
    }
    Ok(args)
}

/// A 320x240 JPEG whose content depends on `seed`.
fn image_bytes(seed: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(320, 240, |x, y| {
        let cx = 60 + (seed * 41) % 200;
        let d = (x as i32 - cx as i32).pow(2) + (y as i32 - 120).pow(2);
        if d < 2500 {
            image::Rgb([(seed * 70 % 255) as u8, 180, 40])
        } else {
            image::Rgb([(x / 3) as u8, (y / 2) as u8, ((seed * 13) % 255) as u8])
        }
    });
    let mut out = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(
            &mut std::io::Cursor::new(&mut out),
            image::ImageFormat::Jpeg,
        )
        .expect("JPEG encodes");
    out
}

/// One `POST /v1/caption`; the status code.
fn post(addr: SocketAddr, body: &[u8]) -> Result<u16> {
    let mut s = TcpStream::connect(addr)?;
    write!(
        s,
        "POST /v1/caption HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )?;
    s.write_all(body)?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)?;
    let head = String::from_utf8_lossy(&answer[..answer.len().min(32)]).into_owned();
    head.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("not an HTTP answer: {head:?}"))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let tmp = tempfile::tempdir()?;
    let inbox = tmp.path().join("inbox");
    std::fs::create_dir_all(&inbox)?;
    let model = CaptionModel::load(
        &args.model,
        &LoadOptions::default(),
        &candle_core::Device::Cpu,
    )?;
    let mut cfg = Config::default();
    cfg.watch.folders = vec![inbox];
    cfg.model.beam_size = args.beam_size;
    cfg.pipeline.batch_size = args.batch_size;
    cfg.pipeline.max_wait_ms = args.max_wait_ms;
    cfg.http.listen = "127.0.0.1:0".into();
    cfg.http.queue_depth = 256;
    let opts = DaemonOptions::from_config(&cfg)?;
    let db = gaze::store::Location::from_setting(&tmp.path().join("bench.db"));
    let daemon = Daemon::start(&db, Some(Arc::new(model)), opts)?;
    let server = gaze::http::Server::start(
        gaze::http::HttpOptions::from_config(&cfg)?,
        gaze::http::DaemonLink::of(&daemon),
    )?;
    let addr = server.local_addr();
    let images: Arc<Vec<Vec<u8>>> = Arc::new((0..64).map(image_bytes).collect());
    // Warm up: the first batches pay for allocations.
    for body in images.iter().take(4) {
        post(addr, body)?;
    }
    println!(
        "model {} | beam {} | batch size {} | max wait {} ms | {} requests per row",
        args.model.display(),
        args.beam_size,
        args.batch_size,
        args.max_wait_ms,
        args.requests
    );
    println!("| clients | images/s | p50 ms | p99 ms |");
    println!("|---:|---:|---:|---:|");
    for &clients in &args.clients {
        let next = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let threads: Vec<_> = (0..clients)
            .map(|_| {
                let (next, images) = (next.clone(), images.clone());
                let requests = args.requests;
                std::thread::spawn(move || -> Result<Vec<Duration>> {
                    let mut latencies = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= requests {
                            return Ok(latencies);
                        }
                        let t = Instant::now();
                        let code = post(addr, &images[i % images.len()])?;
                        if code != 200 {
                            bail!("request {i} answered {code}");
                        }
                        latencies.push(t.elapsed());
                    }
                })
            })
            .collect();
        let mut latencies = Vec::new();
        for t in threads {
            latencies.extend(t.join().expect("a client thread")?);
        }
        let seconds = started.elapsed().as_secs_f64();
        latencies.sort();
        println!(
            "| {clients} | {:.2} | {:.0} | {:.0} |",
            latencies.len() as f64 / seconds,
            percentile(&latencies, 0.5).as_secs_f64() * 1e3,
            percentile(&latencies, 0.99).as_secs_f64() * 1e3
        );
    }
    daemon.shutdown_handle().request();
    daemon.wait()?;
    server.stop();
    Ok(())
}
