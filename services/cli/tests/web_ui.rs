//! The web UI in a real browser, and the HTTP API with a plain HTTP client, over `vidx serve`
//! (the real binary) and an index made by `vidx index` of a clip with subtitles.
//!
//! Browser: Debian's headless `chromium` driven by `chromedriver` over WebDriver (both
//! installed by `scripts/setup-test.sh`): search a paraphrase, the right moment's thumbnail
//! comes first; click it: the `<video>` plays the clip from the moment's start. A screenshot
//! goes to `target/test-output/web-ui.png`.
//!
//! HTTP: bearer tokens of two tenants, each confined to its own moments, thumbnails and clips;
//! missing or wrong tokens get 401; a body over `server.max_request_bytes` gets 413; clips
//! answer Range requests (206, `Content-Range`, 416 past the end).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

const VIDX: &str = env!("CARGO_BIN_EXE_vidx");

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// 30 s in three 10 s scenes (test pattern, colour bars, a red field) with a subtitle each.
fn make_clip(directory: &Path, name: &str, lines: [&str; 3]) -> Result<PathBuf> {
    let video = directory.join(name);
    vidx_testkit::ffmpeg(&[
        "-filter_complex",
        "testsrc2=s=320x240:r=25:d=10[a];smptebars=s=320x240:r=25:d=10[b];\
         color=c=red:s=320x240:r=25:d=10[c];[a][b][c]concat=n=3:v=1[v]",
        "-map",
        "[v]",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-g",
        "50",
        "-pix_fmt",
        "yuv420p",
        video.to_str().context("path")?,
    ])?;
    let srt: String = lines
        .iter()
        .enumerate()
        .map(|(index, line)| {
            let start = index * 10 + 3;
            format!(
                "{}\n00:00:{start:02},000 --> 00:00:{:02},000\n{line}\n\n",
                index + 1,
                start + 4
            )
        })
        .collect();
    std::fs::write(video.with_extension("srt"), srt)?;
    Ok(video)
}

fn index(video: &Path, data_dir: &Path, tenant: &str) -> Result<()> {
    let output = Command::new(VIDX)
        .arg("index")
        .arg(video)
        .arg("--data-dir")
        .arg(data_dir)
        .env("VIDX__GENERAL__TENANT", tenant)
        .env("VIDX__MEDIA__SEGMENT_SECS", "10")
        .env("VIDX__MEDIA__FRAMES_PER_SEGMENT", "4")
        .env("HF_HUB_OFFLINE", "1")
        .output()?;
    ensure!(
        output.status.success(),
        "vidx index: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// A process killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `vidx serve` on a free port, once `/healthz` says it serves.
fn serve(
    data_dir: &Path,
    environment: &[(&str, String)],
    log: &Path,
) -> Result<(Process, SocketAddr)> {
    let port = free_port()?;
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let mut command = Command::new(VIDX);
    command
        .args(["serve", "--listen", &address.to_string(), "--data-dir"])
        .arg(data_dir)
        .env("HF_HUB_OFFLINE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?);
    for (key, value) in environment {
        command.env(key, value);
    }
    let mut process = Process(command.spawn()?);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = process.0.try_wait()? {
            bail!(
                "vidx serve exited ({status}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if matches!(
            vidx_testkit::http::request(address, "GET", "/healthz", &[], None),
            Ok((200, _, _))
        ) {
            return Ok((process, address));
        }
        ensure!(
            Instant::now() < deadline,
            "vidx serve not ready after 120 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

fn search(address: SocketAddr, token: Option<&str>, query: &str) -> Result<(u16, Value)> {
    let bearer = token.map(|token| format!("Bearer {token}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(bearer) = &bearer {
        headers.push(("Authorization", bearer));
    }
    let body = json!({"query": query, "top_k": 5}).to_string();
    let (status, _, body) = vidx_testkit::http::request(
        address,
        "POST",
        "/v1/search",
        &headers,
        Some(body.as_bytes()),
    )?;
    Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

/// A WebDriver session on chromedriver.
struct Browser {
    driver: Process,
    address: SocketAddr,
    session: String,
}

impl Browser {
    fn start() -> Result<Self> {
        let port = free_port()?;
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("chromedriver (Debian: chromium-driver; scripts/setup-test.sh installs it)")?;
        let driver = Process(driver);
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(20);
        while vidx_testkit::http::request(address, "GET", "/status", &[], None).is_err() {
            ensure!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut browser = Self {
            driver,
            address,
            session: String::new(),
        };
        let created = browser.call(
            "POST",
            "/session",
            json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {"args": [
                    "--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                    "--disable-gpu", "--window-size=1280,900",
                    "--autoplay-policy=no-user-gesture-required"
                ]}
            }}}),
        )?;
        browser.session = created["sessionId"]
            .as_str()
            .context("no session id")?
            .to_string();
        Ok(browser)
    }

    fn call(&self, method: &str, path: &str, body: Value) -> Result<Value> {
        let body = body.to_string();
        let (status, _, response) = vidx_testkit::http::request(
            self.address,
            method,
            path,
            &[("Content-Type", "application/json")],
            Some(body.as_bytes()),
        )?;
        let value: Value = serde_json::from_slice(&response)?;
        ensure!(status == 200, "WebDriver {method} {path}: {status} {value}");
        Ok(value["value"].clone())
    }

    fn session_call(&self, method: &str, path: &str, body: Value) -> Result<Value> {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    fn script(&self, script: &str) -> Result<Value> {
        self.session_call(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
    }

    /// Poll `script` (returning a truthy value when done) for up to `limit`.
    fn wait_for(&self, what: &str, script: &str, limit: Duration) -> Result<Value> {
        let deadline = Instant::now() + limit;
        loop {
            let value = self.script(script)?;
            if !(value.is_null() || value == json!(false)) {
                return Ok(value);
            }
            ensure!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &format!("/session/{}", self.session), json!({}));
        }
        let _ = &self.driver;
    }
}

fn screenshot_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/test-output")
        .join("web-ui.png")
}

#[test]
fn the_web_ui_finds_a_paraphrase_and_plays_its_clip_from_the_moment() -> Result<()> {
    let directory = tempfile::tempdir()?;
    let video = make_clip(
        directory.path(),
        "kitchen.mp4",
        [
            "The chef slices a ripe tomato on the cutting board",
            "A dog runs across the beach chasing a ball",
            "Fireworks explode over the harbour at midnight",
        ],
    )?;
    let data_dir = directory.path().join("data");
    index(&video, &data_dir, "default")?;
    let (_server, address) = serve(&data_dir, &[], &directory.path().join("serve.log"))?;

    let browser = Browser::start()?;
    browser.session_call("POST", "/url", json!({"url": format!("http://{address}/")}))?;
    browser.wait_for(
        "the page",
        "return document.getElementById('query') !== null",
        Duration::from_secs(20),
    )?;
    // Type the paraphrase and submit, as a user does.
    let input = browser.session_call(
        "POST",
        "/element",
        json!({"using": "css selector", "value": "#query"}),
    )?;
    let element = input
        .as_object()
        .and_then(|object| object.values().next())
        .and_then(Value::as_str)
        .context("no #query element")?
        .to_string();
    browser.session_call(
        "POST",
        &format!("/element/{element}/value"),
        json!({"text": "a puppy chasing something on the sand\n"}),
    )?;
    browser.wait_for(
        "hits",
        "return document.querySelectorAll('#hits .hit').length > 0",
        Duration::from_secs(30),
    )?;
    let first = browser.script(
        "const hit = document.querySelector('#hits .hit'); \
         return {id: hit.dataset.id, start: Number(hit.dataset.startMs), \
                 caption: hit.querySelector('.caption').textContent};",
    )?;
    let start_ms = first["start"].as_u64().context("start")?;
    ensure!(
        first["caption"].as_str().is_some_and(|c| c.contains("dog")) && start_ms == 13_000,
        "the first hit is not the beach moment: {first}"
    );
    // Its thumbnail loaded, and it is the colour bars of the second scene, not another.
    let thumbnail = browser.wait_for(
        "the first thumbnail",
        "const img = document.querySelector('#hits .hit img'); \
         if (!img.complete || img.naturalWidth === 0) return null; \
         const canvas = document.createElement('canvas'); \
         canvas.width = 32; canvas.height = 24; \
         const context = canvas.getContext('2d'); context.drawImage(img, 0, 0, 32, 24); \
         const pixels = context.getImageData(0, 0, 32, 24).data; \
         let columns = []; for (let x = 2; x < 32; x += 4) { const i = (12 * 32 + x) * 4; \
           columns.push([pixels[i], pixels[i + 1], pixels[i + 2]]); } \
         return {width: img.naturalWidth, height: img.naturalHeight, columns};",
        Duration::from_secs(20),
    )?;
    ensure!(
        thumbnail["width"] == 320 && thumbnail["height"] == 240,
        "thumbnail size: {thumbnail}"
    );
    // Colour bars: the row across the middle changes colour several times.
    let columns: Vec<Vec<u64>> = serde_json::from_value(thumbnail["columns"].clone())?;
    let changes = columns
        .windows(2)
        .filter(|pair| {
            pair[0]
                .iter()
                .zip(&pair[1])
                .map(|(a, b)| a.abs_diff(*b))
                .sum::<u64>()
                > 120
        })
        .count();
    ensure!(
        changes >= 4,
        "the thumbnail does not show the colour bars: {columns:?}"
    );

    // Click it: the clip plays from the moment.
    browser.script("document.querySelector('#hits .hit').click(); return true;")?;
    let playing = browser.wait_for(
        "the video",
        "const v = document.getElementById('player'); \
         if (!v || v.readyState < 2 || !v.dataset.clipStartMs) return null; \
         return {ready: v.readyState, time: v.currentTime, \
                 clipStart: Number(v.dataset.clipStartMs), hitStart: Number(v.dataset.hitStartMs)};",
        Duration::from_secs(60),
    )?;
    let position_ms = playing["clipStart"].as_f64().context("clipStart")?
        + playing["time"].as_f64().context("time")? * 1000.0;
    ensure!(
        (position_ms - start_ms as f64).abs() <= 1_000.0,
        "the video is at {position_ms} ms of the source, the moment starts at {start_ms}: {playing}"
    );
    let screenshot = browser.session_call("GET", "/screenshot", json!({}))?;
    let png = base64_decode(screenshot.as_str().context("screenshot")?)?;
    let path = screenshot_path();
    std::fs::create_dir_all(path.parent().context("parent")?)?;
    std::fs::write(&path, png)?;
    println!("screenshot: {}", path.display());
    Ok(())
}

fn base64_decode(text: &str) -> Result<Vec<u8>> {
    let value = |c: u8| -> Result<u32> {
        Ok(match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => bail!("not base64: {c}"),
        })
    };
    let bytes: Vec<u8> = text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut word = 0u32;
        for (index, c) in chunk.iter().enumerate() {
            word |= value(*c)? << (18 - 6 * index);
        }
        let produced = chunk.len().saturating_sub(1);
        for index in 0..produced {
            out.push((word >> (16 - 8 * index)) as u8);
        }
    }
    Ok(out)
}

#[test]
fn the_http_api_confines_tenants_and_serves_clips_in_ranges() -> Result<()> {
    let directory = tempfile::tempdir()?;
    let data_dir = directory.path().join("data");
    let acme = make_clip(
        directory.path(),
        "acme.mp4",
        [
            "A forklift lifts a pallet in the warehouse",
            "Workers unload boxes from a truck",
            "The loading dock is empty at night",
        ],
    )?;
    let globex = make_clip(
        directory.path(),
        "globex.mp4",
        [
            "A surgeon washes her hands before the operation",
            "Nurses wheel a patient down the corridor",
            "The waiting room is full of people",
        ],
    )?;
    index(&acme, &data_dir, "acme")?;
    index(&globex, &data_dir, "globex")?;
    let tokens = "[{tenant = \"acme\", token = \"acme-token-0123456789abcdef\"}, \
                  {tenant = \"globex\", token = \"globex-token-0123456789abcdef\"}]";
    let (_server, address) = serve(
        &data_dir,
        &[
            ("VIDX__SERVER__TOKENS", tokens.to_string()),
            ("VIDX__SERVER__MAX_REQUEST_BYTES", "4096".to_string()),
        ],
        &directory.path().join("serve.log"),
    )?;
    let (acme_token, globex_token) = (
        "acme-token-0123456789abcdef",
        "globex-token-0123456789abcdef",
    );

    // Who may ask.
    for (token, expected) in [(None, 401), (Some("wrong-token"), 401)] {
        let (status, body) = search(address, token, "forklift")?;
        ensure!(status == expected, "token {token:?}: {status} {body}");
    }
    let (status, _, _) = vidx_testkit::http::request(address, "GET", "/openapi.json", &[], None)?;
    ensure!(status == 200, "the OpenAPI document is public: {status}");

    // Each tenant finds its own moments only, even with the other's words.
    let (status, acme_hits) = search(address, Some(acme_token), "a surgeon washing hands")?;
    ensure!(status == 200, "{acme_hits}");
    let acme_hits = acme_hits["hits"].as_array().context("hits")?.clone();
    ensure!(
        !acme_hits.is_empty()
            && acme_hits.iter().all(|hit| hit["stream_id"]
                .as_str()
                .is_some_and(|s| s.ends_with("acme.mp4"))),
        "acme sees another tenant's moments: {acme_hits:?}"
    );
    let (_, globex_hits) = search(address, Some(globex_token), "a surgeon washing hands")?;
    let globex_top = globex_hits["hits"][0].clone();
    ensure!(
        globex_top["caption"]
            .as_str()
            .is_some_and(|caption| caption.contains("surgeon")),
        "{globex_hits}"
    );
    let id = globex_top["id"].as_str().context("id")?;
    let thumbnail = globex_top["thumbnail_url"]
        .as_str()
        .context("thumbnail_url")?;
    let clip = format!("/v1/clips/{id}.mp4");
    let globex_auth = format!("Bearer {globex_token}");
    let acme_auth = format!("Bearer {acme_token}");

    // Another tenant's thumbnail and clip do not exist for acme.
    for path in [thumbnail, clip.as_str()] {
        let (status, _, _) = vidx_testkit::http::request(
            address,
            "GET",
            path,
            &[("Authorization", &acme_auth)],
            None,
        )?;
        ensure!(status == 404, "acme got {path}: {status}");
        let (status, _, _) = vidx_testkit::http::request(address, "GET", path, &[], None)?;
        ensure!(status == 401, "{path} without a token: {status}");
    }
    let (status, headers, jpeg) = vidx_testkit::http::request(
        address,
        "GET",
        thumbnail,
        &[("Authorization", &globex_auth)],
        None,
    )?;
    ensure!(
        status == 200
            && header(&headers, "content-type") == Some("image/jpeg")
            && jpeg.starts_with(&[0xFF, 0xD8]),
        "thumbnail: {status} {headers:?}"
    );

    // The clip: whole, in ranges, and past its end.
    let (status, headers, whole) = vidx_testkit::http::request(
        address,
        "GET",
        &clip,
        &[("Authorization", &globex_auth)],
        None,
    )?;
    ensure!(
        status == 200 && header(&headers, "accept-ranges") == Some("bytes") && whole.len() > 1000,
        "clip: {status} {headers:?} {} bytes",
        whole.len()
    );
    ensure!(
        header(&headers, "x-vidx-clip-start-ms") == Some("2000")
            && header(&headers, "x-vidx-hit-offset-ms") == Some("1000"),
        "the moment at 3 s starts 1 s into a clip from the keyframe at 2 s: {headers:?}"
    );
    let size = whole.len();
    for (range, from, to) in [
        ("bytes=0-99", 0, 99),
        (
            &format!("bytes={}-", size - 50) as &str,
            size - 50,
            size - 1,
        ),
        ("bytes=-10", size - 10, size - 1),
    ] {
        let (status, headers, part) = vidx_testkit::http::request(
            address,
            "GET",
            &clip,
            &[("Authorization", &globex_auth), ("Range", range)],
            None,
        )?;
        ensure!(
            status == 206
                && part == whole[from..=to]
                && header(&headers, "content-range")
                    == Some(&format!("bytes {from}-{to}/{size}") as &str),
            "{range}: {status} {headers:?}"
        );
    }
    let past = format!("bytes={}-", size + 10);
    let (status, headers, _) = vidx_testkit::http::request(
        address,
        "GET",
        &clip,
        &[("Authorization", &globex_auth), ("Range", &past)],
        None,
    )?;
    ensure!(
        status == 416
            && header(&headers, "content-range") == Some(&format!("bytes */{size}") as &str),
        "{past}: {status} {headers:?}"
    );

    // A body over server.max_request_bytes.
    let big = json!({"query": "x".repeat(8192)}).to_string();
    let (status, _, _) = vidx_testkit::http::request(
        address,
        "POST",
        "/v1/search",
        &[
            ("Authorization", &acme_auth),
            ("Content-Type", "application/json"),
        ],
        Some(big.as_bytes()),
    )?;
    ensure!(status == 413, "an 8 kB body against a 4 kB limit: {status}");

    // Jobs: globex's job is globex's alone.
    let submit = json!({"source": globex.display().to_string(), "stream_id": "again"}).to_string();
    let (status, _, accepted) = vidx_testkit::http::request(
        address,
        "POST",
        "/v1/jobs",
        &[
            ("Authorization", &globex_auth),
            ("Content-Type", "application/json"),
        ],
        Some(submit.as_bytes()),
    )?;
    ensure!(
        status == 202,
        "submit: {status} {}",
        String::from_utf8_lossy(&accepted)
    );
    let job_id = serde_json::from_slice::<Value>(&accepted)?["job_id"]
        .as_str()
        .context("job_id")?
        .to_string();
    let (status, _, job) = vidx_testkit::http::request(
        address,
        "GET",
        &format!("/v1/jobs/{job_id}"),
        &[("Authorization", &globex_auth)],
        None,
    )?;
    ensure!(
        status == 200 && serde_json::from_slice::<Value>(&job)?["job_id"] == job_id.as_str(),
        "globex's own job: {status}"
    );
    for (method, path) in [
        ("GET", format!("/v1/jobs/{job_id}")),
        ("POST", format!("/v1/streams/{job_id}/stop")),
    ] {
        let (status, _, _) = vidx_testkit::http::request(
            address,
            method,
            &path,
            &[("Authorization", &acme_auth)],
            None,
        )?;
        ensure!(status == 404, "acme {method} {path}: {status}");
    }
    let (status, _, listed) = vidx_testkit::http::request(
        address,
        "GET",
        "/v1/jobs",
        &[("Authorization", &acme_auth)],
        None,
    )?;
    ensure!(
        status == 200 && serde_json::from_slice::<Value>(&listed)?["jobs"] == json!([]),
        "acme lists globex's jobs: {}",
        String::from_utf8_lossy(&listed)
    );
    let (status, _, _) = vidx_testkit::http::request(address, "GET", "/v1/jobs", &[], None)?;
    ensure!(status == 401, "jobs without a token: {status}");
    // Sources the rules refuse are named.
    let refused = json!({"source": "file:///etc/passwd"}).to_string();
    let (status, _, body) = vidx_testkit::http::request(
        address,
        "POST",
        "/v1/jobs",
        &[
            ("Authorization", &acme_auth),
            ("Content-Type", "application/json"),
        ],
        Some(refused.as_bytes()),
    )?;
    let body = String::from_utf8_lossy(&body);
    ensure!(
        status == 400 && body.contains("source"),
        "file:// refused: {status} {body}"
    );

    // Deletes: globex cannot delete acme's stream; acme can, with its thumbnails.
    let acme_stream = acme_hits[0]["stream_id"].as_str().context("stream_id")?;
    let acme_thumbnail = acme_hits[0]["thumbnail_url"]
        .as_str()
        .context("thumbnail_url")?;
    let delete = |auth: &str, body: &Value| -> Result<(u16, Value)> {
        let body = body.to_string();
        let mut headers = vec![("Content-Type", "application/json")];
        if !auth.is_empty() {
            headers.push(("Authorization", auth));
        }
        let (status, _, answer) = vidx_testkit::http::request(
            address,
            "POST",
            "/v1/index/delete",
            &headers,
            Some(body.as_bytes()),
        )?;
        Ok((
            status,
            serde_json::from_slice(&answer).unwrap_or(Value::Null),
        ))
    };
    let by_stream = json!({ "stream_id": acme_stream });
    let (status, answer) = delete(&globex_auth, &by_stream)?;
    ensure!(
        status == 200 && answer["points"] == 0,
        "globex deleted acme's: {status} {answer}"
    );
    let (_, still) = search(address, Some(acme_token), "a surgeon washing hands")?;
    ensure!(
        !still["hits"].as_array().context("hits")?.is_empty(),
        "{still}"
    );
    let (status, answer) = delete("", &by_stream)?;
    ensure!(status == 401, "a delete without a token: {status} {answer}");
    let (status, answer) = delete(&acme_auth, &json!({}))?;
    ensure!(status == 400, "an empty delete: {status} {answer}");
    let (status, answer) = delete(&acme_auth, &by_stream)?;
    ensure!(
        status == 200 && answer["points"].as_u64().unwrap_or(0) > 0,
        "acme's delete: {status} {answer}"
    );
    let (_, gone) = search(address, Some(acme_token), "a surgeon washing hands")?;
    ensure!(gone["hits"] == json!([]), "{gone}");
    let (status, _, _) = vidx_testkit::http::request(
        address,
        "GET",
        acme_thumbnail,
        &[("Authorization", &acme_auth)],
        None,
    )?;
    ensure!(status == 404, "a deleted hit's thumbnail: {status}");
    let (status, answer) = delete(&acme_auth, &by_stream)?;
    ensure!(
        status == 200 && answer["points"] == 0,
        "again: {status} {answer}"
    );
    // A reindex rebuilds every tenant's index: not a tenant's to start (only general.tenant's).
    for method in ["GET", "POST"] {
        let (status, _, answer) = vidx_testkit::http::request(
            address,
            method,
            "/v1/index/reindex",
            &[("Authorization", &acme_auth)],
            None,
        )?;
        ensure!(
            status == 403,
            "{method} /v1/index/reindex as acme: {status} {}",
            String::from_utf8_lossy(&answer)
        );
    }
    Ok(())
}

/// The element id WebDriver gives for `selector`.
fn element(browser: &Browser, selector: &str) -> Result<String> {
    let found = browser.session_call(
        "POST",
        "/element",
        json!({"using": "css selector", "value": selector}),
    )?;
    found
        .as_object()
        .and_then(|object| object.values().next())
        .and_then(Value::as_str)
        .map(str::to_string)
        .with_context(|| format!("no {selector} element"))
}

/// Type `text` into the element `selector`, as a user does.
fn type_into(browser: &Browser, selector: &str, text: &str) -> Result<()> {
    let id = element(browser, selector)?;
    browser.session_call(
        "POST",
        &format!("/element/{id}/value"),
        json!({ "text": text }),
    )?;
    Ok(())
}

fn save_screenshot(browser: &Browser, name: &str) -> Result<PathBuf> {
    let screenshot = browser.session_call("GET", "/screenshot", json!({}))?;
    let png = base64_decode(screenshot.as_str().context("screenshot")?)?;
    let path = screenshot_path().with_file_name(name);
    std::fs::create_dir_all(path.parent().context("parent")?)?;
    std::fs::write(&path, png)?;
    println!("screenshot: {}", path.display());
    Ok(path)
}

/// The jobs and streams pages of `vidx serve` (its in-process ingest): a file added on the
/// jobs page is indexed, with its progress shown, and found; a camera added there is followed
/// on the streams page (live, segments counting) and stopped with its button.
#[test]
fn the_jobs_page_indexes_a_file_and_the_streams_page_follows_and_stops_a_camera() -> Result<()> {
    let directory = tempfile::tempdir()?;
    let video = make_clip(
        directory.path(),
        "harbour.mp4",
        [
            "Sailors tie the boat to the pier",
            "A crane loads containers onto the ship",
            "Fireworks explode over the harbour at midnight",
        ],
    )?;
    let camera_port = free_port()?;
    let _camera = vidx_testkit::Camera::start(camera_port)?;
    let (_server, address) = serve(
        &directory.path().join("data"),
        &[
            ("VIDX__MEDIA__SEGMENT_SECS", "2".to_string()),
            ("VIDX__MEDIA__FRAMES_PER_SEGMENT", "1".to_string()),
            (
                "VIDX__MEDIA__ALLOWED_URL_SCHEMES",
                "[\"http\", \"https\", \"tcp\"]".to_string(),
            ),
            ("VIDX__MEDIA__ALLOW_PRIVATE_HOSTS", "true".to_string()),
        ],
        &directory.path().join("serve.log"),
    )?;
    let browser = Browser::start()?;
    browser.session_call(
        "POST",
        "/url",
        json!({"url": format!("http://{address}/#jobs")}),
    )?;
    browser.wait_for(
        "the jobs page",
        "return !document.getElementById('page-jobs').hidden",
        Duration::from_secs(20),
    )?;

    // A file: its row shows the progress until it is done.
    type_into(&browser, "#job-source", &video.display().to_string())?;
    type_into(&browser, "#job-labels", "site=harbour, group=docks")?;
    type_into(&browser, "#job-stream", "harbour\n")?;
    let done = browser.wait_for(
        "the file's job done",
        "const row = document.querySelector('#jobs tbody tr');          if (!row || row.dataset.state !== 'done') return null;          return {progress: row.querySelector('progress').value,                  segments: row.cells[3].textContent, source: row.cells[0].textContent};",
        Duration::from_secs(120),
    )?;
    // 30 s with a keyframe every 2 s: 2 s segments, all of them indexed.
    let segments = done["segments"].as_str().unwrap_or_default();
    ensure!(
        done["progress"] == 1.0
            && segments.split_once(" / ").is_some_and(
                |(indexed, total)| indexed == total && total.parse().unwrap_or(0) >= 14
            )
            && done["source"]
                .as_str()
                .is_some_and(|s| s.ends_with("harbour.mp4")),
        "the finished job: {done}"
    );
    // And it is found.
    browser.script("location.hash = '#search'; return true;")?;
    type_into(
        &browser,
        "#query",
        "rockets bursting in the night sky over the port\n",
    )?;
    let first = browser.wait_for(
        "hits",
        "const hit = document.querySelector('#hits .hit');          return hit && hit.querySelector('.caption').textContent;",
        Duration::from_secs(30),
    )?;
    ensure!(
        first
            .as_str()
            .is_some_and(|caption| caption.contains("Fireworks")),
        "the indexed file's moment is not first: {first}"
    );
    // Its labels are on the hit, and the labels filter keeps it or drops it.
    let title = browser.script("return document.querySelector('#hits .hit .where').title;")?;
    ensure!(
        title
            .as_str()
            .is_some_and(|title| title.contains("group=docks") && title.contains("site=harbour")),
        "the hit's labels: {title}"
    );
    for (labels, expected) in [("site=elsewhere", 0), ("site=harbour", 1)] {
        let found = browser.wait_for(
            "a search with a labels filter",
            &format!(
                "if (window.__labelled === undefined) {{ window.__labelled = String(document.body.dataset.searched);                   document.getElementById('labels').value = '{labels}';                   document.getElementById('search').requestSubmit(); return null; }}                 if (String(document.body.dataset.searched) === window.__labelled) return null;                 window.__labelled = undefined;                 return document.querySelectorAll('#hits .hit').length;"
            ),
            Duration::from_secs(30),
        )?;
        let found = found.as_u64().unwrap_or(u64::MAX);
        ensure!(
            (expected == 0 && found == 0) || (expected > 0 && found > 0),
            "labels {labels}: {found} hits"
        );
    }

    // A camera: live on the streams page, then stopped from it.
    browser.script("location.hash = '#jobs'; return true;")?;
    type_into(
        &browser,
        "#job-source",
        &format!("tcp://127.0.0.1:{camera_port}"),
    )?;
    type_into(&browser, "#job-stream", "dock-cam\n")?;
    browser.wait_for(
        "the camera's job",
        "return document.querySelectorAll('#jobs tbody tr').length === 2",
        Duration::from_secs(20),
    )?;
    save_screenshot(&browser, "web-ui-jobs.png")?;
    browser.script("location.hash = '#streams'; return true;")?;
    let live = browser.wait_for(
        "the camera live with 2 segments",
        "const row = document.querySelector('#streams tbody tr');          if (!row || row.dataset.state !== 'live' || Number(row.cells[4].textContent) < 2) return null;          return {stream: row.cells[0].textContent, last: row.cells[5].textContent};",
        Duration::from_secs(60),
    )?;
    ensure!(
        live["stream"] == "dock-cam"
            && live["last"]
                .as_str()
                .is_some_and(|last| last.starts_with("20") && last.ends_with('Z')),
        "the live row: {live}"
    );
    save_screenshot(&browser, "web-ui-streams.png")?;
    browser.script("document.querySelector('#streams .stop').click(); return true;")?;
    browser.wait_for(
        "the camera stopped",
        "const row = document.querySelector('#streams tbody tr');          return row && row.dataset.state === 'stopped';",
        Duration::from_secs(30),
    )?;
    Ok(())
}

/// The jobs page's reindex: the operator clicks Reindex, the progress bar fills as the
/// sources are indexed again, and the page reports the switch to the new generation; search
/// answers afterwards.
#[test]
fn the_jobs_page_reindexes_the_index_with_a_progress_bar() -> Result<()> {
    let directory = tempfile::tempdir()?;
    let data_dir = directory.path().join("data");
    for (name, lines) in [
        (
            "harbour.mp4",
            [
                "Sailors tie the boat to the pier",
                "A crane loads containers onto the ship",
                "Fireworks explode over the harbour at midnight",
            ],
        ),
        (
            "kitchen.mp4",
            [
                "A chef slices ripe tomatoes",
                "Onions sizzle in a pan",
                "The soup is served in white bowls",
            ],
        ),
    ] {
        let video = make_clip(directory.path(), name, lines)?;
        index(&video, &data_dir, "default")?;
    }
    let (_server, address) = serve(
        &data_dir,
        &[("VIDX__STORE__REINDEX_GRACE_SECS", "0".to_string())],
        &directory.path().join("serve.log"),
    )?;
    let browser = Browser::start()?;
    browser.session_call(
        "POST",
        "/url",
        json!({"url": format!("http://{address}/#jobs")}),
    )?;
    browser.wait_for(
        "the reindex panel",
        "return !document.getElementById('reindex-panel').hidden",
        Duration::from_secs(20),
    )?;
    browser.script("document.getElementById('reindex-start').click(); return true;")?;
    let done = browser.wait_for(
        "the reindex done",
        "const panel = document.getElementById('reindex-panel');          if (panel.dataset.state !== 'done') return null;          const bar = document.getElementById('reindex-progress');          return {value: bar.value, max: bar.max,                  text: document.getElementById('reindex-status').textContent};",
        Duration::from_secs(120),
    )?;
    save_screenshot(&browser, "web-ui-reindex.png")?;
    ensure!(
        done["value"] == 2.0
            && done["max"] == 2.0
            && done["text"]
                .as_str()
                .is_some_and(|text| text.contains("generation 0 → 1") && text.contains("2 / 2")),
        "the finished reindex: {done}"
    );
    assert_eq!(
        std::fs::read_to_string(data_dir.join("index/CURRENT"))?.trim(),
        "1"
    );
    ensure!(
        !data_dir.join("index/shard").exists(),
        "generation 0 dropped"
    );
    let (status, answer) = search(address, None, "fireworks over the harbour")?;
    ensure!(
        status == 200
            && answer["hits"][0]["caption"]
                .as_str()
                .is_some_and(|caption| caption.contains("Fireworks")),
        "search after the reindex: {status} {answer}"
    );
    Ok(())
}
