//! `logferry-aggregator dead-letter replay` next to a running aggregator (audit finding #1, e6).
//!
//! Talks to: a real `logferry-aggregator` process with a file output, the real
//! `logferry-loadtest forward`/`verify` binaries, and the real `dead-letter replay` CLI.
//!
//! A dead letter is seeded the way any deployment gets one: the output's directory is a regular
//! file for a moment (every delivery fails, the 1s retry timeout sends the record to dead
//! letters), then it becomes a directory. The dead-letter file the aggregator wrote is kept and
//! copied back under a new chunk name before each replay, so every replay run has a record to
//! deliver into the live output directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use logferry_common::chunk::{chunk_file_name, ChunkState};
use logferry_e2e::chunks::chunk_files;
use logferry_e2e::{
    aggregator_bin, run_checked, unique_id, wait_for_records, wait_until, Aggregator,
    AggregatorConfig, Load,
};
use serde_json::Value;

/// EX_TEMPFAIL: the buffer is locked by a running aggregator whose admin cannot be reached.
const EXIT_TEMPFAIL: i32 = 75;

/// An aggregator with one dead letter for output `out`; returns it, the dead-letter directory,
/// that file's bytes and the seeded record's run id. The config on disk names the admin listener's real address, as a
/// deployed config does (the test configs listen on port 0).
fn seeded(config: AggregatorConfig) -> (Aggregator, PathBuf, Vec<u8>, String) {
    let agg = Aggregator::start_with(config);
    let dl_dir = agg.buffer_dir.join("outputs/out/dead-letter");
    std::fs::write(
        &agg.out_dir,
        b"a regular file where the output directory goes",
    )
    .unwrap();
    let seed_run = unique_id("seed");
    let out = Load::forward(&agg).records(1).ack().run_id(&seed_run).run();
    assert!(out.status.success(), "seeding failed");
    let file = wait_until("a dead letter", Duration::from_secs(60), || {
        chunk_files(&dl_dir).into_iter().next()
    });
    let bytes = std::fs::read(&file).unwrap();
    std::fs::remove_file(&agg.out_dir).unwrap();
    std::fs::create_dir(&agg.out_dir).unwrap();
    let text = std::fs::read_to_string(&agg.config_path).unwrap();
    let admin = "[admin]\nlisten = \"127.0.0.1:0\"";
    assert!(text.contains(admin), "{text}");
    std::fs::write(
        &agg.config_path,
        text.replacen(
            admin,
            &format!("[admin]\nlisten = \"{}\"", agg.admin_addr),
            1,
        ),
    )
    .unwrap();
    (agg, dl_dir, bytes, seed_run)
}

/// Puts a copy of the seeded dead letter back as `chunk-<seq>.sealed` (written aside, then
/// renamed, so a replay never reads half a file).
fn put_dead_letter(dl_dir: &Path, bytes: &[u8], seq: u64) {
    let tmp = dl_dir.join(format!("copy-{seq}.tmp"));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, dl_dir.join(chunk_file_name(seq, ChunkState::Sealed))).unwrap();
}

fn replay(config: &Path, extra: &[&str]) -> Output {
    let mut cmd = Command::new(aggregator_bin());
    cmd.args(["dead-letter", "replay", "--config"])
        .arg(config)
        .args(["--output", "out"])
        .args(extra);
    cmd.output().expect("running dead-letter replay")
}

fn verify(out_dir: &Path, run_id: &str, expect: u64) -> Value {
    let out = Load::verify(run_id)
        .output_dir(out_dir)
        .expect(expect)
        .json()
        .run();
    serde_json::from_slice(&out.stdout).expect("JSON report")
}

/// The e6 experiment: replay loops while 200,000 acked records are delivered to the same file
/// output. Before the fix, each replay built its own file output, whose torn-line repair cut
/// the live process's in-progress writes (records acked, chunks released, lines gone).
#[test]
fn replay_loops_next_to_a_running_aggregator_lose_no_acked_record() {
    const RECORDS: u64 = 200_000;
    const MAX_RUNS_PER_LOOP: u64 = 400;
    let (mut agg, dl_dir, seed, _) = seeded(AggregatorConfig {
        chunk_limit_size: "64MiB".into(),
        flush_interval: "1s".into(),
        total_limit_size: "4GiB".into(),
        shutdown_timeout: "60s".into(),
        extra_toml: "concurrency = 1\nretry = { initial = \"100ms\", max_interval = \"200ms\", timeout = \"1s\" }\n".into(),
        ..AggregatorConfig::default()
    });
    let run_id = unique_id("e6");
    let target = agg.target();
    let load = Load::forward(&target)
        .records(RECORDS)
        .ack()
        .run_id(&run_id)
        .record_bytes(200)
        .json()
        .spawn();

    let done = Arc::new(AtomicBool::new(false));
    let runs = Arc::new(AtomicU64::new(0));
    let loops: Vec<_> = (0..2u64)
        .map(|l| {
            let (done, runs) = (Arc::clone(&done), Arc::clone(&runs));
            let (dl_dir, seed, config) = (dl_dir.clone(), seed.clone(), agg.config_path.clone());
            std::thread::spawn(move || {
                for i in 0..MAX_RUNS_PER_LOOP {
                    if done.load(Ordering::SeqCst) {
                        break;
                    }
                    put_dead_letter(&dl_dir, &seed, 1_000_000 + l * MAX_RUNS_PER_LOOP + i);
                    // Its exit status does not matter here (two loops race for the same files,
                    // and one may find the other's replay running): only what reaches the
                    // output directory does.
                    let _ = replay(&config, &["--timeout", "10s"]);
                    runs.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();

    let out = load.wait(Duration::from_secs(600));
    let summary: Value = serde_json::from_slice(&out.stdout).expect("JSON summary");
    assert_eq!(summary["acked"], RECORDS, "{summary}");
    // Every acked chunk delivered (and released) while the replays keep running.
    let buffer = agg.buffer_dir.join("outputs/out");
    wait_until("the buffer drained", Duration::from_secs(300), || {
        chunk_files(&buffer).is_empty().then_some(())
    });
    done.store(true, Ordering::SeqCst);
    for l in loops {
        l.join().expect("replay loop");
    }
    let runs = runs.load(Ordering::SeqCst);
    eprintln!("e2e: {runs} replay runs");
    assert!(runs >= 10, "only {runs} replay runs");
    agg.stop(Duration::from_secs(90));

    let report = verify(&agg.out_dir, &run_id, RECORDS);
    assert_eq!(report["missing"], 0, "acked records lost: {report}");
    assert_eq!(report["malformed_lines"], 0, "{report}");
}

/// With the buffer locked by a running aggregator whose admin listener cannot be reached,
/// replay refuses (exit 75) and touches nothing; `--admin` reaches it and the running process
/// replays; with no aggregator running, replay takes the lock and replays itself.
#[test]
fn replay_goes_through_the_running_aggregator_refuses_without_it_and_runs_alone_when_stopped() {
    let (mut agg, dl_dir, seed, seed_run) = seeded(AggregatorConfig {
        extra_toml: "retry = { initial = \"50ms\", max_interval = \"100ms\", timeout = \"1s\" }\n"
            .into(),
        ..AggregatorConfig::default()
    });
    let list = run_checked(
        Command::new(aggregator_bin())
            .args(["dead-letter", "list", "--config"])
            .arg(&agg.config_path)
            .args(["--output", "out"]),
        Duration::from_secs(30),
    );
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(text.contains("1 file(s), 1 record(s)"), "{text}");

    // The config names an admin address nobody listens on.
    let text = std::fs::read_to_string(&agg.config_path).unwrap();
    let unreachable = format!("127.0.0.1:{}", logferry_e2e::services::free_port());
    let bad_config = agg.dir.path().join("unreachable-admin.toml");
    std::fs::write(
        &bad_config,
        text.replacen(&agg.admin_addr.to_string(), &unreachable, 1),
    )
    .unwrap();
    let refused = replay(&bad_config, &["--timeout", "5s"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(EXIT_TEMPFAIL), "{stderr}");
    assert!(stderr.contains("cannot be reached"), "{stderr}");
    assert!(stderr.contains("nothing was replayed"), "{stderr}");
    assert_eq!(chunk_files(&dl_dir).len(), 1, "the dead letter stays");
    assert!(
        logferry_e2e::output_files(&agg.out_dir).is_empty(),
        "nothing written to the output"
    );

    // --admin overrides the config: the running process replays, the summary is JSON.
    let through = replay(
        &bad_config,
        &[
            "--timeout",
            "5s",
            "--json",
            "--admin",
            &agg.admin_addr.to_string(),
        ],
    );
    assert!(
        through.status.success(),
        "{}",
        String::from_utf8_lossy(&through.stderr)
    );
    let summary: Value = serde_json::from_slice(&through.stdout).expect("JSON summary");
    assert_eq!(summary["delivered"], 1, "{summary}");
    assert_eq!(summary["files_done"], 1, "{summary}");
    assert_eq!(summary["still_failing"], 0, "{summary}");
    assert_eq!(summary["remaining_files"], 0, "{summary}");
    assert_eq!(summary["via"], "aggregator", "{summary}");
    assert!(chunk_files(&dl_dir).is_empty());
    wait_for_records(&agg.out_dir, &seed_run, 1, Duration::from_secs(10));

    // No aggregator: the CLI takes the buffer lock and replays itself, text summary as before.
    put_dead_letter(&dl_dir, &seed, 1);
    agg.stop(Duration::from_secs(30));
    let alone = run_checked(
        Command::new(aggregator_bin())
            .args(["dead-letter", "replay", "--timeout", "5s", "--config"])
            .arg(&agg.config_path)
            .args(["--output", "out"]),
        Duration::from_secs(60),
    );
    let text = String::from_utf8_lossy(&alone.stdout);
    assert!(
        text.contains(
            "replayed 1 file(s): 1 record(s) delivered, 0 dead again, 0 file(s) left to retry"
        ),
        "{text}"
    );
    assert!(chunk_files(&dl_dir).is_empty());
    let count = wait_for_records(&agg.out_dir, &seed_run, 1, Duration::from_secs(10));
    assert_eq!(count.received, 2, "once through the aggregator, once alone");
}
