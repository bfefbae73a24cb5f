//! Drives the real `gaze serve` over HTTP with a tiny random model: uploads captioned as
//! `gaze caption` captions the same file, every read route, search and paging, the attention
//! PNG, the image file (and the paths that must not be served), metrics that parse as
//! Prometheus text, the OpenAPI file against the server's routes and answers, bad inputs with
//! their documented status, and the token.

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::http::{get, request, serve_command, Response, Served};
use common::model::{png, tiny_model};

const BIN: &str = env!("CARGO_BIN_EXE_gaze");

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/images")
        .join(name)
}

/// What the OpenAPI file says: each (method, path) and the status codes it documents.
fn openapi() -> Vec<(String, String, BTreeSet<u16>)> {
    let text = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json"))
        .unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut out = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            if !["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                continue;
            }
            let codes = op["responses"]
                .as_object()
                .unwrap()
                .keys()
                .map(|k| k.parse::<u16>().unwrap())
                .collect();
            out.push((method.to_uppercase(), path.clone(), codes));
        }
    }
    out
}

/// Records every (route, status) a test saw, to check them against the OpenAPI file.
#[derive(Default)]
struct Seen(Vec<(&'static str, &'static str, u16)>);

impl Seen {
    fn note(&mut self, method: &'static str, route: &'static str, r: &Response) {
        self.0.push((method, route, r.status));
    }
    fn check_documented(&self) {
        let spec = openapi();
        for (method, route, status) in &self.0 {
            let (_, _, codes) = spec
                .iter()
                .find(|(m, p, _)| m == method && p == route)
                .unwrap_or_else(|| panic!("{method} {route} is not in docs/openapi.json"));
            assert!(
                codes.contains(status),
                "{method} {route} answered {status}, which docs/openapi.json does not document"
            );
        }
    }
}

#[test]
fn the_openapi_file_names_exactly_the_servers_routes() {
    let documented: BTreeSet<(String, String)> =
        openapi().into_iter().map(|(m, p, _)| (m, p)).collect();
    let served: BTreeSet<(String, String)> = gaze::http::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, served);
}

fn caption_cli(model: &Path, image: &Path, beam: usize) -> serde_json::Value {
    let out = Command::new(BIN)
        .args([
            "caption",
            "--json",
            "--beam-size",
            &beam.to_string(),
            "--model",
        ])
        .arg(model)
        .arg(image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(out.stdout.split(|&b| b == b'\n').next().unwrap()).unwrap()
}

fn post_image(addr: std::net::SocketAddr, query: &str, body: &[u8]) -> Response {
    request(
        addr,
        "POST",
        &format!("/v1/caption{query}"),
        &[("Content-Type", "application/octet-stream")],
        body,
    )
}

fn error_of(r: &Response) -> String {
    r.json()["error"].as_str().unwrap_or_default().to_string()
}

#[test]
fn the_api_captions_uploads_serves_reads_and_refuses_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), 3);
    let photos = tmp.path().join("photos");
    let outside = tmp.path().join("outside");
    fs::create_dir_all(photos.join("sub")).unwrap();
    fs::create_dir_all(&outside).unwrap();
    for i in 0..5u32 {
        fs::write(photos.join(format!("p{i}.png")), png(40 + i, 30, i)).unwrap();
    }
    fs::write(photos.join("sub/deep.png"), png(33, 33, 77)).unwrap();
    fs::copy(fixture("truncated.jpg"), photos.join("broken.jpg")).unwrap();
    // A link inside the watched folder to a file outside it.
    fs::write(outside.join("secret.png"), png(20, 20, 99)).unwrap();
    std::os::unix::fs::symlink(outside.join("secret.png"), photos.join("escape.png")).unwrap();
    let config = tmp.path().join("gaze.toml");
    fs::write(
        &config,
        "[watch]\nfollow_symlinks = true\n[http]\nmax_body_bytes = 400000\n",
    )
    .unwrap();
    let db = tmp.path().join("gaze.db");
    let mut cmd = serve_command(BIN, &model, &db, &[&photos]);
    cmd.arg("--config").arg(&config);
    let served = Served::start(cmd);
    let addr = served.addr;
    let mut seen = Seen::default();

    let status = served.wait_done(7, None);
    assert_eq!(status["by_status"]["failed"], 1, "{status}");

    // An upload gets the caption `gaze caption` gives the same file with the same model.
    let upload = tmp.path().join("upload.png");
    fs::write(&upload, png(64, 48, 1234)).unwrap();
    let bytes = fs::read(&upload).unwrap();
    let want = caption_cli(&model, &upload, 3);
    let r = post_image(addr, "?attention=true", &bytes);
    seen.note("POST", "/v1/caption", &r);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["caption"], want["caption"], "{v}");
    assert_eq!(v["beam_size"], 3);
    assert_eq!(
        (v["width"].as_u64(), v["height"].as_u64()),
        (Some(64), Some(48))
    );
    assert!(v["image_id"].is_null());
    assert_eq!(v["model"]["name"], "tiny-3");
    let tokens = v["tokens"].as_array().unwrap();
    assert_eq!(tokens[0], "<start>");
    let maps = v["attention"]["maps"].as_array().unwrap();
    let grid = v["attention"]["grid"].as_u64().unwrap() as usize;
    assert_eq!(maps.len(), tokens.len() - 1);
    for m in maps {
        let m = m.as_array().unwrap();
        assert_eq!(m.len(), grid * grid);
        let sum: f64 = m.iter().map(|x| x.as_f64().unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-3, "attention sums to {sum}");
    }
    // Greedy, as a multipart form, and without attention.
    let want1 = caption_cli(&model, &upload, 1);
    let boundary = "gazeboundary42";
    let mut form = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"u.png\"\r\n\
         Content-Type: image/png\r\n\r\n"
    )
    .into_bytes();
    form.extend_from_slice(&bytes);
    form.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let ctype = format!("multipart/form-data; boundary={boundary}");
    let r = request(
        addr,
        "POST",
        "/v1/caption?beam_size=1",
        &[("Content-Type", &ctype)],
        &form,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["caption"], want1["caption"]);
    assert_eq!(r.json()["beam_size"], 1);
    assert!(r.json().get("attention").is_none());

    // Many clients at once are batched together and each gets its own image's caption.
    let uploads: Vec<Vec<u8>> = (0..12).map(|i| png(50, 50, 500 + i)).collect();
    let answers: Vec<Response> = std::thread::scope(|s| {
        let handles: Vec<_> = uploads
            .iter()
            .map(|b| s.spawn(move || post_image(addr, "", b)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (a, b) in answers.iter().zip(&uploads) {
        assert_eq!(a.status, 200, "{}", a.text());
        assert_eq!(
            a.json()["content_hash"].as_str().unwrap(),
            blake3::hash(b).to_hex().as_str()
        );
    }

    // store=true records it: an image row with the caption, answered after the commit.
    let r = post_image(addr, "?store=true", &png(70, 20, 4242));
    assert_eq!(r.status, 200, "{}", r.text());
    let stored_id = r.json()["image_id"].as_i64().expect("a stored image id");
    let r = get(addr, &format!("/v1/images/{stored_id}"));
    seen.note("GET", "/v1/images/{id}", &r);
    assert_eq!(r.status, 200);
    let img = r.json();
    assert!(img["path"].as_str().unwrap().starts_with("upload:/"));
    assert_eq!(img["status"], "done");
    let r = get(addr, &format!("/v1/images/{stored_id}/file"));
    seen.note("GET", "/v1/images/{id}/file", &r);
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(error_of(&r).contains("uploaded"));

    // Bad uploads: each its status and a message saying what is wrong.
    let r = post_image(addr, "", b"");
    seen.note("POST", "/v1/caption", &r);
    assert_eq!(r.status, 400);
    assert!(error_of(&r).contains("empty"), "{}", r.text());
    let noise: Vec<u8> = (0..5000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let r = post_image(addr, "", &noise);
    seen.note("POST", "/v1/caption", &r);
    assert_eq!(r.status, 415, "{}", r.text());
    assert!(error_of(&r).contains("not an image"));
    let r = post_image(addr, "", &fs::read(fixture("truncated.jpg")).unwrap());
    seen.note("POST", "/v1/caption", &r);
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(error_of(&r).contains("decode"), "{}", r.text());
    let r = post_image(addr, "", &vec![0u8; 500_000]);
    seen.note("POST", "/v1/caption", &r);
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(error_of(&r).contains("max_body_bytes"));
    let r = post_image(addr, "?beam_size=0", &bytes);
    seen.note("POST", "/v1/caption", &r);
    assert_eq!(r.status, 400);
    assert!(error_of(&r).contains("beam_size"));
    let r = post_image(addr, "?beamsize=2", &bytes);
    assert_eq!(r.status, 400);
    assert!(error_of(&r).contains("unknown query parameter"));

    // The daemon kept captioning through all of that.
    fs::write(photos.join("late.png"), png(31, 29, 555)).unwrap();
    served.wait_done(9, None);

    // Listing: recent images with their captions, paged whole images at a time.
    let r = get(addr, "/v1/images");
    seen.note("GET", "/v1/images", &r);
    assert_eq!(r.status, 200);
    let all = r.json();
    let total = all["images"].as_array().unwrap().len();
    assert_eq!(total, 9, "{all}");
    let mut ids = HashSet::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let target = match &cursor {
            Some(c) => format!("/v1/images?limit=2&cursor={c}"),
            None => "/v1/images?limit=2".into(),
        };
        let page = get(addr, &target).json();
        for img in page["images"].as_array().unwrap() {
            assert!(
                ids.insert(img["id"].as_i64().unwrap()),
                "an image on two pages"
            );
            assert_eq!(img["captions"].as_array().unwrap().len(), 1);
        }
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!((ids.len(), pages), (9, 5));
    let r = get(addr, "/v1/images?cursor=zzz");
    seen.note("GET", "/v1/images", &r);
    assert_eq!(r.status, 400);
    assert_eq!(get(addr, "/v1/images?limit=0").status, 400);
    assert_eq!(get(addr, "/v1/images?search=a&failed=true").status, 400);

    // Search finds an image by a word of its caption; failures list the broken file.
    let p0_key = fs::canonicalize(photos.join("p0.png")).unwrap();
    let p0 = get(addr, &format!("/v1/images?path={}", p0_key.display())).json();
    let p0 = &p0["images"][0];
    let text = p0["captions"][0]["text"].as_str().unwrap().to_string();
    let word = text.split_whitespace().max_by_key(|w| w.len()).unwrap();
    let found = get(addr, &format!("/v1/images?search={word}")).json();
    assert!(
        found["images"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["id"] == p0["id"]),
        "search {word:?}: {found}"
    );
    let failed = get(addr, "/v1/images?failed=true").json();
    let failed = failed["images"].as_array().unwrap();
    assert_eq!(failed.len(), 1);
    assert!(failed[0]["path"].as_str().unwrap().ends_with("broken.jpg"));
    assert!(failed[0]["error"].as_str().unwrap().contains("decode"));

    // One image: captions with tokens and attention; 404 and 400 for what is not one.
    let id = p0["id"].as_i64().unwrap();
    let one = get(addr, &format!("/v1/images/{id}")).json();
    let cap = &one["captions"][0];
    assert_eq!(cap["tokens"][0], "<start>");
    assert_eq!(
        cap["attention"]["maps"].as_array().unwrap().len(),
        cap["tokens"].as_array().unwrap().len() - 1
    );
    let slim = get(addr, &format!("/v1/images/{id}?attention=false")).json();
    assert!(slim["captions"][0].get("attention").is_none());
    let r = get(addr, "/v1/images/999999");
    seen.note("GET", "/v1/images/{id}", &r);
    assert_eq!(r.status, 404);
    let r = get(addr, "/v1/images/..%2F..%2Fetc%2Fpasswd");
    seen.note("GET", "/v1/images/{id}", &r);
    assert_eq!(r.status, 400);

    // The attention picture, whole or one word's panel.
    let r = get(addr, &format!("/v1/images/{id}/attention.png"));
    seen.note("GET", "/v1/images/{id}/attention.png", &r);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("image/png"));
    let whole = image::load_from_memory(&r.body).unwrap();
    let r = get(addr, &format!("/v1/images/{id}/attention.png?word=0"));
    assert_eq!(r.status, 200);
    let panel = image::load_from_memory(&r.body).unwrap();
    assert!(panel.width() < whole.width() || panel.height() < whole.height());
    let r = get(addr, &format!("/v1/images/{id}/attention.png?word=9999"));
    seen.note("GET", "/v1/images/{id}/attention.png", &r);
    assert_eq!(r.status, 404);

    // The file itself; nothing outside the watched folders.
    let r = get(addr, &format!("/v1/images/{id}/file"));
    seen.note("GET", "/v1/images/{id}/file", &r);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, fs::read(photos.join("p0.png")).unwrap());
    assert_eq!(r.header("content-type"), Some("image/png"));
    let escape_key = photos.join("escape.png");
    let escape = get(addr, &format!("/v1/images?path={}", escape_key.display())).json();
    let escape_id = escape["images"][0]["id"]
        .as_i64()
        .expect("the link was captioned");
    let r = get(addr, &format!("/v1/images/{escape_id}/file"));
    seen.note("GET", "/v1/images/{id}/file", &r);
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(error_of(&r).contains("outside the watched folders"));
    // A captioned file replaced by a link to a file outside.
    let deep = get(
        addr,
        &format!("/v1/images?path={}", photos.join("sub/deep.png").display()),
    )
    .json();
    let deep_id = deep["images"][0]["id"].as_i64().unwrap();
    fs::remove_file(photos.join("sub/deep.png")).unwrap();
    std::os::unix::fs::symlink("../../outside/secret.png", photos.join("sub/deep.png")).unwrap();
    let r = get(addr, &format!("/v1/images/{deep_id}/file"));
    assert_eq!(r.status, 403, "{}", r.text());
    // The watcher takes the changed file (links are followed here) again: wait until its row
    // holds the new content, captioned.
    let secret_hash = blake3::hash(&fs::read(outside.join("secret.png")).unwrap())
        .to_hex()
        .to_string();
    let started = Instant::now();
    loop {
        let v = get(addr, &format!("/v1/images/{deep_id}?attention=false")).json();
        if v["status"] == "done" && v["content_hash"] == secret_hash.as_str() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{v}");
        std::thread::sleep(Duration::from_millis(100));
    }
    served.wait_done(9, None);
    // Dot segments in the request path match no route.
    let r = get(addr, &format!("/v1/images/{id}/../../../../etc/passwd"));
    assert_eq!(r.status, 404);
    assert!(!r.text().contains("root:"));

    // Status, models, health, readiness.
    let r = get(addr, "/v1/status");
    seen.note("GET", "/v1/status", &r);
    assert_eq!(r.status, 200);
    let st = r.json();
    assert_eq!(st["active_model"]["name"], "tiny-3");
    assert!(st["by_status"]["done"].as_i64().unwrap() >= 9, "{st}");
    let r = get(addr, "/v1/models");
    seen.note("GET", "/v1/models", &r);
    let models = r.json();
    assert_eq!(models["serving"]["name"], "tiny-3");
    assert_eq!(models["models"].as_array().unwrap().len(), 1);
    let r = request(addr, "POST", "/v1/models/1/activate", &[], &[]);
    seen.note("POST", "/v1/models/{id}/activate", &r);
    assert_eq!(r.status, 403, "no token configured: {}", r.text());
    for (route, want) in [("/healthz", "ok"), ("/readyz", "ready")] {
        let r = get(addr, route);
        seen.note(
            "GET",
            if route == "/healthz" {
                "/healthz"
            } else {
                "/readyz"
            },
            &r,
        );
        assert_eq!((r.status, r.text().trim()), (200, want));
    }
    let r = get(addr, "/");
    seen.note("GET", "/", &r);
    assert_eq!(r.status, 200);
    assert!(r.text().contains("id=\"search\""));
    assert_eq!(get(addr, "/nothing-here").status, 404);

    // Metrics parse as Prometheus text and say what happened.
    let r = get(addr, "/metrics");
    seen.note("GET", "/metrics", &r);
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = r.text();
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
    let value = |name: &str, label: Option<(&str, &str)>| -> f64 {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                prometheus_parse::Value::Histogram(ref h) => {
                    h.iter().map(|b| b.count).fold(0.0, f64::max)
                }
                prometheus_parse::Value::Summary(_) => f64::NAN,
            })
            .unwrap_or_else(|| panic!("no {name} {label:?} in\n{text}"))
    };
    assert!(value("gaze_images", Some(("status", "done"))) >= 9.0);
    assert_eq!(value("gaze_images", Some(("status", "failed"))), 1.0);
    assert_eq!(value("gaze_backlog_images", None), 0.0);
    assert!(value("gaze_captioned_total", None) >= 9.0);
    assert!(value("gaze_failures_total", Some(("kind", "undecodable"))) >= 1.0);
    assert!(value("gaze_inference_seconds", None) >= 1.0);
    assert!(value("gaze_decode_seconds", None) >= 8.0);
    assert!(value("gaze_commit_seconds", None) >= 1.0);
    assert!(value("gaze_batch_size", None) >= 1.0);
    assert_eq!(value("gaze_active_model", Some(("name", "tiny-3"))), 1.0);
    assert!(value("gaze_http_requests_total", Some(("route", "/v1/caption"))) >= 1.0);
    assert!(text.contains("gaze_http_requests_total{route=\"/v1/caption\",code=\"415\"} 1"));

    seen.check_documented();
}

#[test]
fn a_token_guards_every_route_but_healthz_and_limits_hold() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), 5);
    let db = tmp.path().join("gaze.db");
    // Off loopback, no token: refused before anything starts.
    let out = serve_command(BIN, &model, &db, &[])
        .args(["--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("token"));

    let mut cmd = serve_command(BIN, &model, &db, &[]);
    // A long batch wait and a short timeout: an upload waits past its deadline.
    cmd.env("GAZE_HTTP_TOKEN", "s3cret-token")
        .args(["--max-wait-ms", "10000"]);
    let config = tmp.path().join("gaze.toml");
    fs::write(
        &config,
        "[http]\nrequest_timeout_ms = 3000\nmax_concurrent_uploads = 1\n",
    )
    .unwrap();
    cmd.arg("--config").arg(&config);
    let served = Served::start(cmd);
    let addr = served.addr;
    let mut seen = Seen::default();
    let good = [("Authorization", "Bearer s3cret-token")];

    assert_eq!(get(addr, "/healthz").status, 200);
    for route in [
        "/v1/status",
        "/v1/images",
        "/metrics",
        "/readyz",
        "/v1/models",
        "/",
    ] {
        let r = get(addr, route);
        assert_eq!(r.status, 401, "{route}");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    }
    let r = request(
        addr,
        "GET",
        "/v1/status",
        &[("Authorization", "Bearer wrong")],
        &[],
    );
    seen.note("GET", "/v1/status", &r);
    assert_eq!(r.status, 401);
    assert_eq!(error_of(&r), "wrong token");
    let r = request(addr, "GET", "/v1/status", &good, &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = request(
        addr,
        "GET",
        "/v1/status",
        &[("Cookie", "a=b; gaze_token=s3cret-token")],
        &[],
    );
    assert_eq!(r.status, 200);
    // A browser without the token is given the form that sets the cookie.
    let r = request(addr, "GET", "/", &[("Accept", "text/html")], &[]);
    seen.note("GET", "/", &r);
    assert_eq!(r.status, 401);
    assert!(r.text().contains("gaze_token"));

    // Activation with the token: the model serving now, activated again.
    let r = request(addr, "POST", "/v1/models/1/activate", &good, &[]);
    seen.note("POST", "/v1/models/{id}/activate", &r);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["active"]["name"], "tiny-5");
    let r = request(addr, "POST", "/v1/models/77/activate", &good, &[]);
    seen.note("POST", "/v1/models/{id}/activate", &r);
    assert_eq!(r.status, 404);

    // A client trickling its body holds the one upload slot: the next upload gets 503 with
    // Retry-After, and the trickler gets 408 once request_timeout_ms has passed.
    let mut slow = std::net::TcpStream::connect(addr).unwrap();
    std::io::Write::write_all(
        &mut slow,
        format!(
            "POST /v1/caption HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer s3cret-token\r\n\
             Content-Length: 1000\r\n\r\npartial"
        )
        .as_bytes(),
    )
    .unwrap();
    // Time for the server to take the headers (and the slot); well inside its 3 s.
    std::thread::sleep(Duration::from_millis(1000));
    let r = request(
        addr,
        "POST",
        "/v1/caption",
        &[good[0], ("Content-Type", "image/png")],
        &png(30, 30, 2),
    );
    seen.note("POST", "/v1/caption", &r);
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(error_of(&r).contains("max_concurrent_uploads"));
    let mut answer = String::new();
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let _ = std::io::Read::read_to_string(&mut slow, &mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    // The caption does not come within request_timeout_ms.
    let started = Instant::now();
    let r = request(
        addr,
        "POST",
        "/v1/caption",
        &[good[0], ("Content-Type", "image/png")],
        &png(30, 30, 1),
    );
    seen.note("POST", "/v1/caption", &r);
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(started.elapsed() < Duration::from_secs(8));
    assert!(served.log().contains("HTTP server listening"));
    seen.check_documented();
}

#[test]
fn gaze_watch_serves_the_same_api_with_http() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), 6);
    let photos = tmp.path().join("photos");
    fs::create_dir_all(&photos).unwrap();
    fs::write(photos.join("a.png"), png(30, 30, 6)).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args([
        "watch",
        "--stable-ms",
        "100",
        "--http",
        "127.0.0.1:0",
        "--model",
    ])
    .arg(&model)
    .arg("--db")
    .arg(tmp.path().join("gaze.db"))
    .arg(&photos)
    .env_remove("GAZE_CONFIG")
    .env("GAZE_LOG", "info")
    .env("NO_COLOR", "1");
    let served = Served::start(cmd);
    served.wait_done(1, None);
    let r = post_image(served.addr, "", &png(41, 17, 60));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["model"]["name"], "tiny-6");
    let listed = get(served.addr, "/v1/images").json();
    assert_eq!(listed["images"].as_array().unwrap().len(), 1);
}

#[test]
fn the_api_reads_a_postgresql_store_too() {
    let Some(url) = common::pg::database_or_skip("the_api_reads_a_postgresql_store_too") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), 7);
    let photos = tmp.path().join("photos");
    fs::create_dir_all(&photos).unwrap();
    for i in 0..3 {
        fs::write(photos.join(format!("p{i}.png")), png(30, 20, 70 + i)).unwrap();
    }
    fs::write(photos.join("bad.jpg"), b"not an image at all").unwrap();
    let served = Served::start(serve_command(BIN, &model, Path::new(&url), &[&photos]));
    let addr = served.addr;
    served.wait_done(3, None);
    let listed = get(addr, "/v1/images?limit=2").json();
    assert_eq!(listed["images"].as_array().unwrap().len(), 2);
    let next = listed["next_cursor"].as_str().unwrap();
    let rest = get(addr, &format!("/v1/images?limit=2&cursor={next}")).json();
    assert_eq!(rest["images"].as_array().unwrap().len(), 1);
    assert!(rest["next_cursor"].is_null());
    let id = listed["images"][0]["id"].as_i64().unwrap();
    let one = get(addr, &format!("/v1/images/{id}")).json();
    let text = one["captions"][0]["text"].as_str().unwrap().to_string();
    assert!(one["captions"][0]["attention"]["grid"].as_u64().unwrap() > 0);
    let word = text.split_whitespace().next().unwrap();
    let found = get(addr, &format!("/v1/images?search={word}")).json();
    assert!(found["images"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["id"] == id));
    let failed = get(addr, "/v1/images?failed=true").json();
    assert_eq!(failed["images"].as_array().unwrap().len(), 1);
    assert_eq!(
        get(addr, &format!("/v1/images/{id}/attention.png")).status,
        200
    );
    assert_eq!(get(addr, &format!("/v1/images/{id}/file")).status, 200);
    let r = post_image(addr, "?store=true", &png(50, 40, 3));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["image_id"].as_i64().is_some());
    assert_eq!(get(addr, "/readyz").status, 200);
    let metrics = get(addr, "/metrics").text();
    assert!(
        metrics.contains("gaze_images{status=\"done\"} 4"),
        "{metrics}"
    );
}
