//! Talks to: the real `logferry-aggregator` binary, through its command line only.
//!
//! `validate` is part of the interface contract: exit 0 for a valid file, exit 78 listing every
//! error with its key path otherwise.

use std::process::Command;

/// What `logferry-aggregator <args> --config <file holding text>` did.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn with_config(args: &[&str], text: &str) -> Ran {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_logferry-aggregator"))
        .args(args)
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    Ran {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn validate_lists_every_error_and_exits_78() {
    let ran = with_config(
        &["validate"],
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
    );
    let stderr = ran.stderr;
    assert_eq!(ran.code, Some(78), "{stderr}");
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
    let ran = with_config(
        &["validate"],
        "[server]\nlisten = \"127.0.0.1:1\"\nlisten_port = 3\n",
    );
    let stderr = ran.stderr;
    assert_eq!(ran.code, Some(78), "{stderr}");
    assert!(
        stderr.contains("listen_port") && stderr.contains("line 3"),
        "{stderr}"
    );
}

#[test]
fn validate_accepts_a_valid_file() {
    let out_dir = tempfile::tempdir().unwrap();
    let ran = with_config(
        &["validate", "--check-outputs"],
        &format!(
            "[[route]]\nmatch = \"**\"\noutputs = [\"f\"]\n[outputs.f]\ntype = \"file\"\npath = {:?}\n",
            out_dir.path().join("out").display().to_string()
        ),
    );
    let stdout = ran.stdout;
    assert_eq!(ran.code, Some(0), "{stdout}{}", ran.stderr);
    assert!(stdout.contains("output f: ok"), "{stdout}");
}

#[test]
fn run_with_an_invalid_config_exits_78_like_validate() {
    // Parses, but the route names an output that does not exist.
    let ran = with_config(
        &["run"],
        "[[route]]\nmatch = \"**\"\noutputs = [\"nowhere\"]\n[outputs.out]\ntype = \"null\"\n",
    );
    let stderr = ran.stderr;
    assert_eq!(ran.code, Some(78), "{stderr}");
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
    let ran = with_config(&[command], FOUR_ERRORS);
    let stderr = ran.stderr;
    assert_eq!(ran.code, Some(78), "{stderr}");
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

#[test]
fn dead_letter_of_a_pipeline_needs_pipelines_on_and_an_output_name_that_is_a_dns_label() {
    let tail = "[[route]]\nmatch = \"**\"\noutputs = [\"n\"]\n[outputs.n]\ntype = \"null\"\n";
    let args = |output| {
        [
            "dead-letter",
            "list",
            "--pipeline",
            "shop/web",
            "--output",
            output,
        ]
    };
    let off = with_config(&args("out"), tail);
    assert_eq!(off.code, Some(78), "{}", off.stderr);
    assert!(off.stderr.contains("no [pipelines] dir"), "{}", off.stderr);
    let on = format!("[pipelines]\ndir = \"/nonexistent\"\n{tail}");
    for bad in ["../outputs/n", "Out", ""] {
        let ran = with_config(&args(bad), &on);
        assert_eq!(ran.code, Some(78), "{bad}: {}", ran.stderr);
        assert!(
            ran.stderr.contains("no output name"),
            "{bad}: {}",
            ran.stderr
        );
    }
    // Listing needs no pipeline file: an empty directory lists nothing.
    let ran = with_config(&args("out"), &on);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert!(
        ran.stdout.contains("0 file(s), 0 record(s)"),
        "{}",
        ran.stdout
    );
}
