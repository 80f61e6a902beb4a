//! The `roomcast-server` binary, for tests that run it as a process.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Builds the `roomcast-server` binary of this profile (quickly, when it is
/// up to date) and returns its path.
pub fn server_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|deps| deps.parent()).unwrap().to_path_buf();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let profile = if cfg!(debug_assertions) { None } else { Some("--release") };
    let mut build = Command::new(cargo)
        .args(["build", "-q", "-p", "roomcast-server", "--bin", "roomcast-server"])
        .args(profile)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .spawn()
        .unwrap();
    let status =
        wait_child(&mut build, Duration::from_secs(300)).expect("building roomcast-server timed out");
    assert!(status.success(), "building roomcast-server failed");
    dir.join("roomcast-server")
}

/// Waits for `child` to exit, at most `bound`; kills it past the bound.
pub fn wait_child(child: &mut Child, bound: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + bound;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}
