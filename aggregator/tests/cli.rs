//! Talks to: the real `logferry-aggregator` binary, through its command line only.
//!
//! `validate` is part of the interface contract: exit 0 for a valid file, exit 78 listing every
//! error with its key path otherwise.

use std::process::Command;

fn aggregator() -> Command {
    Command::new(env!("CARGO_BIN_EXE_logferry-aggregator"))
}

#[test]
fn validate_lists_every_error_and_exits_78() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"
[server]
listen = "not an address"
max_connections = 0
[buffer]
total_limit_size = "1KiB"
[[route]]
match = "app.{web"
outputs = ["nowhere"]
[outputs.out]
type = "file"
path = "/tmp/x"
"#,
    )
    .unwrap();
    let out = aggregator()
        .arg("validate")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    for key in [
        "server.listen",
        "server.max_connections",
        "buffer.total_limit_size",
        "route[0].match",
        "route[0].outputs",
        "outputs.out",
    ] {
        assert!(stderr.contains(key), "{key} missing from:\n{stderr}");
    }
}

#[test]
fn validate_reports_syntax_errors_with_a_line_and_exits_78() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("typo.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = \"127.0.0.1:1\"\nlisten_port = 3\n",
    )
    .unwrap();
    let out = aggregator()
        .arg("validate")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("listen_port") && stderr.contains("line 3"),
        "{stderr}"
    );
}

#[test]
fn validate_accepts_a_valid_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("good.toml");
    let out_dir = dir.path().join("out");
    std::fs::write(
        &path,
        format!(
            "[[route]]\nmatch = \"**\"\noutputs = [\"f\"]\n[outputs.f]\ntype = \"file\"\npath = {:?}\n",
            out_dir.display().to_string()
        ),
    )
    .unwrap();
    let out = aggregator()
        .args(["validate", "--check-outputs", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("output f: ok"), "{stdout}");
}

#[test]
fn run_with_an_invalid_config_exits_78_like_validate() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    // Parses, but the route names an output that does not exist.
    std::fs::write(
        &path,
        "[[route]]\nmatch = \"**\"\noutputs = [\"nowhere\"]\n[outputs.out]\ntype = \"null\"\n",
    )
    .unwrap();
    let out = aggregator()
        .arg("run")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("route[0].outputs"), "{stderr}");
}

/// Two misspelled keys in different sections, a bad size and a semantic error.
const FOUR_ERRORS: &str = r#"
[admin]
lisen = "127.0.0.1:24231"
[ingest]
memory_limit = "lots"
[[route]]
match = "app.{web"
outputs = ["out"]
[outputs.out]
type = "null"
concurency = 2
"#;

fn assert_four_errors(command: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, FOUR_ERRORS).unwrap();
    let out = aggregator()
        .arg(command)
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    for expected in ["lisen", "lots", "concurency", "route[0].match"] {
        assert!(
            stderr.contains(expected),
            "{expected} missing from:\n{stderr}"
        );
    }
}

#[test]
fn validate_reports_parse_and_semantic_errors_of_every_section_in_one_run() {
    assert_four_errors("validate");
}

#[test]
fn run_reports_parse_and_semantic_errors_of_every_section_in_one_run() {
    assert_four_errors("run");
}
