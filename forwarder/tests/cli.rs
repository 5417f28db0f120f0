//! Talks to: the real `logferry-forwarder` binary (`validate --config`, `offsets`).
//!
//! Shows: a valid config exits 0; an invalid one exits 78 listing every error with its key;
//! `offsets` on an empty buffer directory fails cleanly.

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_logferry-forwarder"))
}

#[test]
fn validate_exit_codes() {
    let d = tempfile::tempdir().unwrap();
    let good = d.path().join("good.toml");
    std::fs::write(
        &good,
        "[input]\npaths = [\"/var/log/containers/*.log\"]\n[output]\nservers = [\"agg:24224\"]\n",
    )
    .unwrap();
    let out = bin()
        .args(["validate", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let bad = d.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[input]\npaths = [\"/var/*/x.log\"]\n[output]\nservers = [\"nohost\"]\nwindow = 0\n",
    )
    .unwrap();
    let out = bin()
        .args(["validate", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in ["input.paths[0]", "output.servers[0]", "output.window"] {
        assert!(err.contains(key), "{key} not reported: {err}");
    }

    let unknown = d.path().join("unknown.toml");
    std::fs::write(&unknown, "[input]\npathz = []\n").unwrap();
    let out = bin()
        .args(["validate", "--config"])
        .arg(&unknown)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("pathz"));
}

#[test]
fn offsets_of_a_missing_buffer_fail_cleanly() {
    let d = tempfile::tempdir().unwrap();
    let out = bin()
        .arg("offsets")
        .arg(d.path().join("nope"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
