//! Locating things the tests run: workspace binaries (built with cargo first, once per test
//! process, so a test never runs a stale build), fixture scripts, and external tools.
//!
//! A binary lives at `target/<profile>/<name>`, next to the running test binary's `deps/`.
//! [`external_tool`] decides whether a test that needs Python, Node or kubectl runs, skips
//! (locally) or fails (in CI).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `target/<profile>` of the running test binary (`target/<profile>/deps/<test>-<hash>`).
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().map(Path::to_path_buf);
    if dir
        .as_ref()
        .and_then(|d| d.file_name())
        .is_some_and(|n| n == "deps")
    {
        dir = dir.and_then(|d| d.parent().map(Path::to_path_buf));
    }
    dir.unwrap_or_else(|| workspace_root().join("target").join("debug"))
}

/// Binaries already built by this process.
fn built() -> &'static Mutex<HashSet<String>> {
    static BUILT: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    BUILT.get_or_init(|| Mutex::new(HashSet::new()))
}

/// Path of the workspace binary `name` of `package`, built first if needed.
///
/// Cargo is run once per binary and test process (it is a no-op when up to date, and it rebuilds
/// a stale binary); set `LOGFERRY_E2E_NO_BUILD=1` to use whatever is in `target/` as is. The lock
/// keeps parallel tests of one process from building at once; cargo's own lock handles several
/// processes.
pub fn binary(package: &str, name: &str) -> PathBuf {
    let dir = profile_dir();
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    let mut done = built().lock().unwrap_or_else(|e| e.into_inner());
    if done.contains(name) {
        return path;
    }
    let no_build = std::env::var_os("LOGFERRY_E2E_NO_BUILD").is_some_and(|v| v != "0");
    if !(no_build && path.exists()) {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.arg("build")
            .arg("--manifest-path")
            .arg(workspace_root().join("Cargo.toml"))
            .args(["-p", package, "--bin", name]);
        let profile = dir.file_name().and_then(|n| n.to_str()).unwrap_or("debug");
        match profile {
            "debug" => {}
            "release" => {
                cmd.arg("--release");
            }
            other => {
                cmd.args(["--profile", other]);
            }
        }
        if let Some(target_dir) = dir.parent() {
            cmd.arg("--target-dir").arg(target_dir);
        }
        eprintln!("e2e: building {name}: {cmd:?}");
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
        assert!(
            out.status.success(),
            "building {name} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(path.exists(), "{} does not exist", path.display());
    done.insert(name.to_string());
    path
}

/// `logferry-aggregator`.
pub fn aggregator_bin() -> PathBuf {
    binary("logferry-aggregator", "logferry-aggregator")
}

/// `logferry-loadtest`.
pub fn loadtest_bin() -> PathBuf {
    binary("logferry-loadtest", "logferry-loadtest")
}

/// Decides whether a test that needs an external tool runs.
///
/// Returns the variable's value when set. When unset: panics if `CI` is set (CI must run every
/// test), otherwise prints why the test is skipped and returns `None`.
pub fn external_tool(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            if std::env::var_os("CI").is_some() {
                panic!("{var} is not set but CI is: run the tests through scripts/test.sh");
            }
            eprintln!("skipping: {var} not set (run scripts/test.sh)");
            None
        }
    }
}

/// Fixture scripts (`tests/fixtures/NAME`).
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}
