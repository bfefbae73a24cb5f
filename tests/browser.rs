//! The web page in a real browser: Debian's headless Chromium, driven through ChromeDriver's
//! WebDriver protocol, loads the page from a `gaze serve` started here, searches, opens an
//! image, clicks words and checks that the attention overlay changed (its `data-word` and its
//! pixels), then uploads a file and sees its caption.
//!
//! Without `chromium` and `chromedriver` the test says it was skipped; with
//! `GAZE_REQUIRE_BROWSER=1` (as `.ci/run` sets) their absence is a failure. With
//! `GAZE_SCREENSHOT=FILE` it also saves a screenshot of the page with a word's attention shown
//! (docs/serve-page.png was made so, with `GAZE_BROWSER_MODEL` naming the demo's model).

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;
use common::http::{get, request, serve_command, Served};
use common::model::tiny_model;

const BIN: &str = env!("CARGO_BIN_EXE_gaze");

fn find(candidates: &[&str]) -> Option<PathBuf> {
    candidates.iter().map(PathBuf::from).find(|p| p.exists())
}

/// A WebDriver session of a headless Chromium.
struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    _profile: tempfile::TempDir,
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    fn start(chromium: &Path, chromedriver: &Path) -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let started = Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "chromedriver did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--window-size=1200,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        }}});
        let mut browser = Browser {
            driver,
            addr,
            session: String::new(),
            _profile: profile,
        };
        let v = browser.call("POST", "/session", Some(caps));
        browser.session = v["sessionId"].as_str().expect("a session").to_string();
        browser
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let r = request(
            self.addr,
            method,
            path,
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        );
        let v = r.json();
        assert_eq!(r.status, 200, "{method} {path}: {v}");
        v["value"].clone()
    }

    fn session_call(&self, method: &str, rest: &str, body: Option<Value>) -> Value {
        self.call(method, &format!("/session/{}{rest}", self.session), body)
    }

    fn goto(&self, url: &str) {
        self.session_call("POST", "/url", Some(json!({ "url": url })));
    }

    fn element(&self, css: &str) -> String {
        let v = self.session_call(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        );
        v[ELEMENT].as_str().unwrap().to_string()
    }

    fn click(&self, css: &str) {
        let id = self.element(css);
        self.session_call("POST", &format!("/element/{id}/click"), Some(json!({})));
    }

    fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css);
        self.session_call(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        );
    }

    fn script(&self, body: &str) -> Value {
        self.session_call(
            "POST",
            "/execute/sync",
            Some(json!({"script": body, "args": []})),
        )
    }

    /// Waits until `body` (a script returning a value) returns something truthy.
    fn wait_for(&self, what: &str, body: &str) -> Value {
        let started = Instant::now();
        loop {
            let v = self.script(body);
            if !(v.is_null() || v == json!(false) || v == json!(0) || v == json!("")) {
                return v;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "timed out waiting for {what}; the page says: {}",
                self.script("return document.body.innerText")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn screenshot(&self) -> Vec<u8> {
        let v = self.session_call("GET", "/screenshot", None);
        base64_decode(v.as_str().unwrap())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = request(
                self.addr,
                "DELETE",
                &format!("/session/{}", self.session),
                &[],
                &[],
            );
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let clean: Vec<u8> = text
        .bytes()
        .filter(|&c| c != b'=' && !c.is_ascii_whitespace())
        .collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= value(c) << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

/// A picture with shapes, so attention has something to look at.
fn photo(path: &Path, seed: u32) {
    let img = image::RgbImage::from_fn(160, 120, |x, y| {
        let cx = 40 + (seed * 37) % 80;
        let d = (x as i32 - cx as i32).pow(2) + (y as i32 - 60).pow(2);
        if d < 900 {
            image::Rgb([200, (seed * 50 % 255) as u8, 40])
        } else {
            image::Rgb([(x / 2) as u8, 120, (y * 2) as u8])
        }
    });
    img.save(path).unwrap();
}

#[test]
fn the_page_searches_shows_attention_per_word_and_captions_an_upload() {
    let required = std::env::var("GAZE_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
    let chromium = find(&["/usr/bin/chromium", "/usr/bin/chromium-browser"]);
    let chromedriver = find(&["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]);
    let (Some(chromium), Some(chromedriver)) = (chromium, chromedriver) else {
        assert!(
            !required,
            "GAZE_REQUIRE_BROWSER=1 but chromium or chromedriver is missing \
             (apt-get install chromium chromium-driver)"
        );
        eprintln!("SKIPPED: chromium and chromedriver are not installed");
        return;
    };

    let tmp = tempfile::tempdir().unwrap();
    // GAZE_BROWSER_MODEL: a trained model instead (for a screenshot with real captions).
    let model = std::env::var_os("GAZE_BROWSER_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| tiny_model(tmp.path(), 8));
    let photos = tmp.path().join("photos");
    fs::create_dir_all(&photos).unwrap();
    for i in 0..4 {
        photo(&photos.join(format!("photo{i}.png")), i);
    }
    let served = Served::start(serve_command(
        BIN,
        &model,
        &tmp.path().join("gaze.db"),
        &[&photos],
    ));
    let addr = served.addr;
    served.wait_done(4, None);

    // The caption to search for, and a word of it.
    let listed = get(addr, "/v1/images?recent=10").json();
    let target = &listed["images"][0];
    let target_id = target["id"].as_i64().unwrap();
    let text = target["captions"][0]["text"].as_str().unwrap().to_string();
    let word = text
        .split_whitespace()
        .max_by_key(|w| w.len())
        .unwrap()
        .to_string();

    let browser = Browser::start(&chromium, &chromedriver);
    browser.goto(&format!("http://{addr}/"));
    browser.wait_for(
        "the grid of recent images",
        "return document.querySelectorAll('#grid .card').length == 4",
    );
    // Alt text is the caption.
    let alt = browser.script(&format!(
        "return document.querySelector('#grid .card[data-image-id=\"{target_id}\"] img').alt"
    ));
    assert_eq!(alt, json!(text));

    // Search.
    browser.type_into("#search", &format!("{word}\n"));
    browser.wait_for(
        "search results",
        &format!(
            "return document.querySelector('#grid-title').textContent.includes('{word}') && \
             document.querySelector('#grid .card[data-image-id=\"{target_id}\"]') != null"
        ),
    );

    // Open the image; its caption's words appear.
    browser.click(&format!("#grid .card[data-image-id=\"{target_id}\"]"));
    let words = browser.wait_for(
        "the viewer's words",
        "return !document.querySelector('#viewer').hidden && \
         document.querySelectorAll('#viewer-caption .word').length",
    );
    assert!(words.as_u64().unwrap() >= 2, "{words}");
    browser.wait_for(
        "the image in the viewer",
        "const i = document.querySelector('#viewer-img'); return i.complete && i.naturalWidth > 0",
    );
    let overlay_state = "const c = document.querySelector('#overlay'); \
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; \
        let sum = 0; for (let i = 3; i < d.length; i += 4) sum += d[i]; \
        return [c.dataset.word, sum, c.width, c.height];";
    // The state once word `n` is drawn (its index shown and some pixels set), else null.
    let drawn = |n: usize| {
        overlay_state.replace("return [", "const s = [")
            + &format!("; return s[0] == '{n}' && s[1] > 0 ? s : null")
    };
    let before = browser.script(overlay_state);
    assert_eq!(before[0], json!(""), "{before}");
    assert_eq!(
        before[1],
        json!(0),
        "nothing drawn before a word is chosen: {before}"
    );

    // Clicking a word draws its attention over the image.
    browser.click("#viewer-caption .word[data-index=\"1\"]");
    let first = browser.wait_for("the overlay of word 1", &drawn(1));
    assert!(first[2].as_u64().unwrap() > 0 && first[3].as_u64().unwrap() > 0);
    let pressed = browser.script(
        "return document.querySelector('#viewer-caption .word[data-index=\"1\"]').getAttribute('aria-pressed')",
    );
    assert_eq!(pressed, json!("true"));
    if let Ok(path) = std::env::var("GAZE_SCREENSHOT") {
        fs::write(&path, browser.screenshot()).unwrap();
    }
    // Another word: another map (a different overlay, or at least a different word shown).
    browser.click("#viewer-caption .word[data-index=\"0\"]");
    let second = browser.wait_for("the overlay of word 0", &drawn(0));
    assert_ne!(first[0], second[0]);
    let png = browser.screenshot();
    assert!(image::load_from_memory(&png).unwrap().width() > 0);

    // Close it and upload a file: the caption is the one the API gives the same bytes.
    browser.click("#viewer-close");
    browser.wait_for(
        "the viewer closed",
        "return document.querySelector('#viewer').hidden",
    );
    let upload = tmp.path().join("upload.png");
    photo(&upload, 9);
    let expected = request(
        addr,
        "POST",
        "/v1/caption",
        &[("Content-Type", "image/png")],
        &fs::read(&upload).unwrap(),
    )
    .json();
    let expected = expected["caption"].as_str().unwrap().to_string();
    browser.type_into("#upload", upload.to_str().unwrap());
    let shown = browser.wait_for(
        "the upload's caption",
        "return !document.querySelector('#viewer').hidden && \
         document.querySelectorAll('#viewer-caption .word').length > 0 && \
         Array.from(document.querySelectorAll('#viewer-caption .word')).map(w => w.textContent)",
    );
    let shown: Vec<String> = shown
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap().to_string())
        .filter(|w| w != "<end>")
        .collect();
    assert_eq!(shown.join(" "), expected);
    let status = browser.script("return document.querySelector('#upload-status').textContent");
    assert!(status.as_str().unwrap().contains(&expected), "{status}");
    // Its words show attention too.
    browser.click("#viewer-caption .word[data-index=\"0\"]");
    browser.wait_for("the upload's overlay", &drawn(0));
}
