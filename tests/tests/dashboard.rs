//! The live dashboard (`/dashboard` on the admin listener) in a real
//! headless Chromium: the page loads with the API key in its URL, polls its
//! data route, and shows a room's online count as SDK clients join.
//!
//! Needs Debian's `chromium` (`scripts/chromium.sh` installs it). Without a
//! browser the browser part is skipped with a note, unless `CI` is set: on
//! CI a missing browser fails the test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use roomcast_server::auth::Role;
use roomcast_tests::TestServer;

const ROOM: &str = "dashboard-lobby";

/// How long one browser run may take before it is killed: a cold start on
/// a loaded two-core machine takes a few seconds.
const BROWSER_RUN: Duration = Duration::from_secs(30);

/// How long a count may take to show: the page polls every second, and
/// each dump gives it three seconds of virtual time.
const SHOW_WITHIN: Duration = Duration::from_secs(12);

/// The browser: `chromium` on `PATH`, or Debian's `/usr/bin/chromium`.
fn find_browser() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("chromium"));
    on_path.chain([PathBuf::from("/usr/bin/chromium")]).find(|p| p.is_file())
}

/// Loads `url` in headless Chromium with a fresh profile, lets the page run
/// for three seconds of virtual time, and returns the DOM it then holds.
/// Blocking: call it off the runtime that serves the page.
fn dump_dom(browser: &Path, url: &str) -> Result<String, String> {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("roomcast-dashboard-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let profile = dir.join("profile");
    std::fs::create_dir_all(&profile).map_err(|e| e.to_string())?;
    // Output to files, not pipes: nobody reads a pipe while we wait, and a
    // full one would stall the browser.
    let out_path = dir.join("dom.html");
    let err_path = dir.join("stderr.txt");
    let out = std::fs::File::create(&out_path).map_err(|e| e.to_string())?;
    let err = std::fs::File::create(&err_path).map_err(|e| e.to_string())?;
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=3000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", browser.display()))?;
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if started.elapsed() > BROWSER_RUN => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!("the browser ran longer than {BROWSER_RUN:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => break Err(e.to_string()),
        }
    };
    let dom = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    match status {
        Ok(s) if s.success() && !dom.is_empty() => Ok(dom),
        Ok(s) => {
            Err(format!("the browser exited with {s} and {} bytes of DOM; stderr:\n{stderr}", dom.len()))
        }
        Err(e) => Err(format!("{e}; stderr:\n{stderr}")),
    }
}

/// The number the page shows for `room` in its `class` column (`online`,
/// `members`, `seq`): the text of that cell in `<tr data-room="room">`.
fn room_cell(dom: &str, room: &str, class: &str) -> Option<u64> {
    let start = dom.find(&format!("<tr data-room=\"{room}\""))?;
    let row = &dom[start..];
    let row = &row[..row.find("</tr>")?];
    number_after(row, &format!("class=\"{class}\">"))
}

/// The number in the element with `id`, as the page writes it (`1,234`).
fn by_id(dom: &str, id: &str) -> Option<u64> {
    number_after(dom, &format!("id=\"{id}\">"))
}

fn number_after(text: &str, marker: &str) -> Option<u64> {
    let rest = &text[text.find(marker)? + marker.len()..];
    rest[..rest.find('<')?].trim().replace(',', "").parse().ok()
}

/// The page's markup without its head and script, for failure messages (an
/// error from the browser is passed through whole).
fn page_body(dom: &str) -> &str {
    let start = dom.find("<body").unwrap_or(0);
    let end = dom[start..].find("<script").map_or(dom.len(), |i| start + i);
    &dom[start..end]
}

/// Dumps the page until it shows `want` online in `room`, for at most
/// [`SHOW_WITHIN`] (a dump started in time is waited for), and returns that
/// DOM; panics with the last one otherwise.
async fn wait_for_online(browser: &Path, url: &str, room: &str, want: u64) -> String {
    let deadline = Instant::now() + SHOW_WITHIN;
    loop {
        let (b, u) = (browser.to_path_buf(), url.to_string());
        let last = match tokio::task::spawn_blocking(move || dump_dom(&b, &u)).await.unwrap() {
            Ok(dom) if room_cell(&dom, room, "online") == Some(want) => {
                assert!(
                    dom.contains("data-state=\"live\""),
                    "the page shows the count but is not live:\n{dom}"
                );
                return dom;
            }
            Ok(dom) => dom,
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            panic!(
                "the dashboard did not show {want} online in {room} within {SHOW_WITHIN:?}; last:\n{}",
                page_body(&last)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_a_room_and_its_online_count_live() {
    let server = TestServer::start().await;
    let key = server.admin_key.clone();

    // Credentials first: without them neither route answers, and `?key=`
    // is judged like the header.
    for path in ["/dashboard", "/dashboard/data"] {
        let answer = server.admin_raw("GET", path, &[], b"").await;
        assert_eq!(answer.status, 401, "{path} without credentials: {answer:?}");
        let answer = server.admin_raw("GET", &format!("{path}?key=wrong-{key}"), &[], b"").await;
        assert_eq!(answer.status, 401, "{path} with a wrong key: {answer:?}");
    }
    let page = server.admin_raw("GET", &format!("/dashboard?key={key}"), &[], b"").await;
    assert_eq!(page.status, 200, "{page:?}");
    assert!(page.header("content-type").is_some_and(|c| c.starts_with("text/html")), "{page:?}");
    assert_eq!(page.header("cache-control"), Some("no-store"));

    let (alice, _alice_events) = server.connect("alice", Role::Viewer).await;
    alice.join(ROOM).await.unwrap();
    let data = server.admin("GET", "/dashboard/data", None).await;
    assert_eq!(data.status, 200, "{data:?}");
    assert!(data.body.contains(&format!("\"room\":\"{ROOM}\"")), "{data:?}");
    assert!(data.body.contains("\"deliveries\":"), "{data:?}");

    let Some(browser) = find_browser() else {
        if std::env::var_os("CI").is_some() {
            panic!("no chromium on PATH or at /usr/bin/chromium, and CI is set: run scripts/chromium.sh");
        }
        eprintln!(
            "note: dashboard browser check skipped: no chromium found (scripts/chromium.sh installs it)"
        );
        server.stop().await;
        return;
    };

    let url = format!("http://{}/dashboard?key={key}", server.admin_addr);
    wait_for_online(&browser, &url, ROOM, 1).await;

    // A second member, and a message: the count and the node's totals move.
    let (bob, _bob_events) = server.connect("bob", Role::Viewer).await;
    bob.join(ROOM).await.unwrap();
    alice.send_chat(ROOM, "hello dashboard").await.unwrap();
    let dom = wait_for_online(&browser, &url, ROOM, 2).await;
    assert_eq!(room_cell(&dom, ROOM, "members"), Some(2), "{}", page_body(&dom));
    assert!(by_id(&dom, "total-events-sequenced").is_some_and(|n| n >= 1), "{}", page_body(&dom));
    assert!(by_id(&dom, "connections").is_some_and(|n| n >= 2), "{}", page_body(&dom));

    server.stop().await;
}

#[test]
fn the_dom_readers_find_a_rooms_cells_and_totals() {
    let dom = r#"<span id="total-deliveries">1,234</span><tbody id="rooms"><tr data-room="a" data-online="3"><td class="room">a</td><td class="online">3</td></tr><tr data-room="ab"><td class="room">ab</td><td class="online">12</td><td class="seq">7</td></tr></tbody>"#;
    assert_eq!(room_cell(dom, "a", "online"), Some(3));
    assert_eq!(room_cell(dom, "ab", "online"), Some(12));
    assert_eq!(room_cell(dom, "a", "seq"), None);
    assert_eq!(room_cell(dom, "ab", "seq"), Some(7));
    assert_eq!(room_cell(dom, "b", "online"), None);
    assert_eq!(by_id(dom, "total-deliveries"), Some(1234));
}
