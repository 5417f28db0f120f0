//! The container images, as far as they can be checked without a Docker engine (none runs on
//! these machines): the `cargo build` each Dockerfile runs is taken from the Dockerfile itself
//! and run here (the same package, binary, features and `--locked`; in the test profile unless
//! `LOGFERRY_DEPLOY_RELEASE_BUILD=1`, to keep CI within its time), the binary it produces needs
//! no shared library that the distroless/cc runtime image lacks, and the forwarder image's
//! binary links none of the Kafka, Elasticsearch or Cloud Logging clients.
//!
//! Real components: cargo, readelf (binutils), the workspace's crates. hadolint and checkov
//! lint the Dockerfiles in deploy_manifests.rs.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use logferry_e2e::deploy::*;

/// The `cargo build ...` command of a Dockerfile's RUN instruction (continuations joined,
/// `${ARG}` replaced by the ARG's default), and the binary it copies out of target/release.
fn dockerfile_build(name: &str) -> (Vec<String>, String) {
    let path = deploy_dir().join("docker").join(name);
    let text = std::fs::read_to_string(&path).expect("reading the Dockerfile");
    let joined = text.replace("\\\n", " ");
    let mut args: Vec<(String, String)> = Vec::new();
    for line in joined.lines() {
        if let Some(rest) = line.trim().strip_prefix("ARG ") {
            if let Some((k, v)) = rest.split_once('=') {
                args.push((k.trim().to_owned(), v.trim().to_owned()));
            }
        }
    }
    let run = joined
        .lines()
        .find(|l| l.contains("cargo build"))
        .unwrap_or_else(|| panic!("{name} runs no cargo build"));
    let cmd = run
        .split("cargo build")
        .nth(1)
        .and_then(|rest| rest.split("&&").next())
        .expect("the cargo command");
    let mut words = Vec::new();
    for w in cmd.split_whitespace() {
        let mut w = w.trim_matches('"').to_owned();
        for (k, v) in &args {
            w = w.replace(&format!("${{{k}}}"), v);
        }
        assert!(!w.contains('$'), "{name}: unresolved variable in {w}");
        words.push(w);
    }
    let binary = run
        .split("cp target/release/")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("{name} copies no binary out of target/release"))
        .to_owned();
    let copied = text
        .lines()
        .find(|l| l.starts_with("COPY --from=build"))
        .unwrap_or_else(|| panic!("{name}: the runtime stage copies nothing from the build"));
    assert!(
        copied.contains(&binary),
        "{name}: the runtime stage copies {copied:?}, not {binary}"
    );
    (words, binary)
}

/// Runs a Dockerfile's cargo build in this workspace and returns the binary it built.
fn build_like(dockerfile: &str) -> PathBuf {
    let (mut words, binary) = dockerfile_build(dockerfile);
    assert!(
        words.contains(&"--release".to_owned()),
        "{dockerfile}: {words:?}"
    );
    assert!(
        words.contains(&"--locked".to_owned()),
        "{dockerfile}: {words:?}"
    );
    let pkg = words
        .windows(2)
        .find(|w| w[0] == "-p")
        .map(|w| w[1].clone())
        .expect("-p PACKAGE");
    let bin = words
        .windows(2)
        .find(|w| w[0] == "--bin")
        .map(|w| w[1].clone())
        .expect("--bin NAME");
    assert_eq!(
        bin, binary,
        "{dockerfile}: builds {bin} but copies {binary}"
    );
    assert!(pkg.ends_with(&bin), "{dockerfile}: -p {pkg} --bin {bin}");
    let release = std::env::var_os("LOGFERRY_DEPLOY_RELEASE_BUILD").is_some_and(|v| v == "1");
    if !release {
        words.retain(|w| w != "--release");
    }
    let root = logferry_e2e::workspace_root();
    // The target directory the tests' own binaries are in, so nothing is built twice.
    let target_dir = logferry_e2e::profile_dir()
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = run(
        Command::new(cargo)
            .arg("build")
            .args(&words)
            .arg("--manifest-path")
            .arg(root.join("Cargo.toml"))
            .arg("--target-dir")
            .arg(&target_dir)
            .current_dir(&root),
        None,
        Duration::from_secs(3000),
    );
    assert!(
        out.status.success(),
        "{dockerfile}: cargo build {words:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let profile = if release { "release" } else { "debug" };
    let path = target_dir.join(profile).join(&bin);
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// Shared libraries of gcr.io/distroless/cc-debian12: glibc (libc6), libgcc-s1, libstdc++6,
/// libgomp1 and OpenSSL 3 (libssl3).
const DISTROLESS_CC_LIBS: [&str; 14] = [
    "libc.so.6",
    "libm.so.6",
    "libdl.so.2",
    "libpthread.so.0",
    "librt.so.1",
    "libutil.so.1",
    "libresolv.so.2",
    "ld-linux-x86-64.so.2",
    "libgcc_s.so.1",
    "libstdc++.so.6",
    "libgomp.so.1",
    "libssl.so.3",
    "libcrypto.so.3",
    "libanl.so.1",
];

fn needed_libraries(binary: &std::path::Path) -> Vec<String> {
    let out = run(
        Command::new("readelf").arg("-d").arg(binary),
        None,
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "readelf -d {}", binary.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| l.split('[').nth(1)?.split(']').next().map(str::to_owned))
        .collect()
}

/// Shared libraries a Dockerfile stages in /runtime-libs of the build stage and copies into
/// the runtime image.
fn staged_libraries(text: &str) -> Vec<String> {
    let copies_stage = text
        .lines()
        .any(|l| l.starts_with("COPY --from=build /runtime-libs/"));
    if !copies_stage {
        return Vec::new();
    }
    text.lines()
        .filter(|l| l.contains("/runtime-libs") && l.contains("cp "))
        .flat_map(|l| l.split_whitespace())
        .map(|w| w.trim_matches('"'))
        .filter(|w| w.contains(".so."))
        .filter_map(|w| w.rsplit('/').next().map(str::to_owned))
        .collect()
}

fn check_image_binary(dockerfile: &str) {
    let text =
        std::fs::read_to_string(deploy_dir().join("docker").join(dockerfile)).expect("Dockerfile");
    let binary = build_like(dockerfile);
    let needed = needed_libraries(&binary);
    assert!(
        needed.iter().any(|l| l == "libc.so.6"),
        "{}: readelf found no NEEDED entries: {needed:?}",
        binary.display()
    );
    let staged = staged_libraries(&text);
    let missing: Vec<&String> = needed
        .iter()
        .filter(|l| !DISTROLESS_CC_LIBS.contains(&l.as_str()) && !staged.contains(l))
        .collect();
    assert!(
        missing.is_empty(),
        "{dockerfile}: {} needs {missing:?}, which neither distroless/cc nor the Dockerfile's \
         /runtime-libs ({staged:?}) provide",
        binary.display()
    );
    // Nothing is copied in that the binary does not need.
    for lib in &staged {
        assert!(
            needed.contains(lib),
            "{dockerfile}: copies {lib} into the image, but {} does not need it",
            binary.display()
        );
    }
    // The runtime stage's CMD names the config the manifests mount.
    assert!(text.contains("/etc/logferry/config/"), "{dockerfile}: CMD");
    assert!(
        text.contains("USER 65532:65532"),
        "{dockerfile}: non-root user"
    );
}

#[test]
fn aggregator_image_binary_builds_and_fits_the_runtime_image() {
    check_image_binary("Dockerfile.aggregator");
}

#[test]
fn forwarder_image_binary_builds_and_fits_the_runtime_image() {
    check_image_binary("Dockerfile.forwarder");
}

/// The forwarder runs on every node: it must not carry the sinks' clients (DESIGN.md).
#[test]
fn forwarder_links_no_sink_clients() {
    let root = logferry_e2e::workspace_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let tree = |pkg: &str| -> Vec<String> {
        let out = run(
            Command::new(&cargo)
                .args([
                    "tree",
                    "--locked",
                    "-p",
                    pkg,
                    "-e",
                    "normal,build",
                    "--prefix",
                    "none",
                    "--format",
                    "{p}",
                ])
                .arg("--manifest-path")
                .arg(root.join("Cargo.toml")),
            None,
            Duration::from_secs(300),
        );
        assert!(out.status.success(), "cargo tree -p {pkg} failed");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect()
    };
    let is_sink = |c: &String| {
        c.starts_with("rdkafka") || c.starts_with("elasticsearch") || c.starts_with("google-cloud")
    };
    let forwarder = tree("logferry-forwarder");
    assert!(
        forwarder.iter().any(|c| c == "logferry-common"),
        "cargo tree printed nothing useful: {forwarder:?}"
    );
    let sinks: Vec<&String> = forwarder.iter().filter(|c| is_sink(c)).collect();
    assert!(sinks.is_empty(), "the forwarder depends on {sinks:?}");
    // The check can fail: the aggregator does carry them.
    let aggregator = tree("logferry-aggregator");
    assert!(
        aggregator.iter().any(is_sink),
        "the aggregator has no sink client, so this check proves nothing"
    );
}
