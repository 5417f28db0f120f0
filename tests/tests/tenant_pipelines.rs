//! Talks to: a real `logferry-aggregator` process with `[pipelines]` on, over raw Forward
//! connections from this test (one connection carrying every tenant, as a forwarder's does),
//! and its admin listener (`/pipelines`). Outputs are files; every record is counted by its
//! sequence number.
//!
//! What is shown: each tenant's records reach exactly its own pipelines' outputs; a file with
//! several errors is rejected with all of them (in `validate --pipeline` and in the status)
//! while every other pipeline keeps delivering; an edit that breaks a running pipeline keeps
//! its last good version delivering, and the fix applies within seconds; editing one
//! pipeline's output leaves another pipeline's buffer and worker alone.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use logferry_e2e::client::{send_tagged_acked, tcp};
use logferry_e2e::{
    aggregator_bin, http_get, read_output, toml_path, unique_id, wait_for_records, wait_until,
    Aggregator, AggregatorConfig,
};
use serde_json::Value;

/// The forwarder's tag of a container `container` of pod `pod` in namespace `ns`.
fn kube_tag(pod: &str, ns: &str, container: &str) -> String {
    format!(
        "kube.var.log.containers.{pod}_{ns}_{container}-{}.log",
        "0f".repeat(32)
    )
}

struct Tenants {
    dir: tempfile::TempDir,
}

impl Tenants {
    fn new() -> Tenants {
        let t = Tenants {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir_all(t.pipelines()).unwrap();
        std::fs::create_dir_all(t.files()).unwrap();
        t
    }

    fn pipelines(&self) -> PathBuf {
        self.dir.path().join("pipelines")
    }

    fn files(&self) -> PathBuf {
        self.dir.path().join("files")
    }

    /// Where `tenant`'s pipeline `name` writes (its file output).
    fn out(&self, tenant: &str, name: &str) -> PathBuf {
        self.files().join(tenant).join(name)
    }

    fn policy(&self) -> PathBuf {
        self.dir.path().join("policy.toml")
    }

    /// Writes a pipeline file atomically (as a ConfigMap update does), dated in the past so
    /// the next rescan takes it at once.
    fn write(&self, tenant: &str, name: &str, text: &str) {
        let dir = self.pipelines().join(tenant);
        std::fs::create_dir_all(&dir).unwrap();
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        let past = std::time::SystemTime::now() - Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&tmp)
            .unwrap()
            .set_modified(past)
            .unwrap();
        std::fs::rename(&tmp, dir.join(format!("{name}.toml"))).unwrap();
    }

    /// A pipeline of `tenant` with one file output into [`Tenants::out`], plus `extra`.
    fn file_pipeline(&self, tenant: &str, name: &str, extra: &str) -> String {
        format!(
            "{extra}\n[outputs.out]\ntype = \"file\"\npath = {}\n",
            toml_path(&self.out(tenant, name))
        )
    }

    /// Writes [`Tenants::file_pipeline`] as `tenant`'s pipeline `name`.
    fn write_file_pipeline(&self, tenant: &str, name: &str, extra: &str) {
        self.write(tenant, name, &self.file_pipeline(tenant, name, extra));
    }

    /// [`Tenants::config`] with `[pipelines]` key `key` set to `value` (a duration).
    fn config_with(&self, key: &str, value: &str) -> AggregatorConfig {
        let mut config = self.config();
        let (start, end) = config
            .extra_toml
            .find(&format!("\n{key} = "))
            .and_then(|at| Some((at + 1, at + 1 + config.extra_toml[at + 1..].find('\n')?)))
            .expect("a [pipelines] key of the test config");
        config
            .extra_toml
            .replace_range(start..end, &format!("{key} = \"{value}\""));
        config
    }

    fn config(&self) -> AggregatorConfig {
        std::fs::write(
            self.policy(),
            format!(
                "[default]\noutput_types = [\"file\"]\nfile_root = {}\nmax_pipelines = 4\n[tenants.shop]\nhosts = [\"es.shop.svc\"]\noutput_types = [\"file\", \"elasticsearch\"]\n",
                toml_path(&self.files())
            ),
        )
        .unwrap();
        AggregatorConfig {
            extra_toml: format!(
                "\n[pipelines]\ndir = {}\npolicy = {}\nrescan_interval = \"200ms\"\ndrain_timeout = \"5s\"\n",
                toml_path(&self.pipelines()),
                toml_path(&self.policy())
            ),
            ..AggregatorConfig::default()
        }
    }
}

fn status(agg: &Aggregator, path: &str) -> Value {
    let (code, body) = http_get(agg.admin_addr, path).unwrap();
    assert_eq!(code, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

fn wait_for_state(agg: &Aggregator, tenant: &str, name: &str, state: &str) -> Value {
    let path = format!("/pipelines/{tenant}/{name}");
    wait_until(
        &format!("{tenant}/{name} to be {state}"),
        Duration::from_secs(20),
        || {
            let (code, body) = http_get(agg.admin_addr, &path).ok()?;
            let v: Value = serde_json::from_str(&body).ok().filter(|_| code == 200)?;
            (v["state"] == state).then_some(v)
        },
    )
}

/// The `run_id`s found under `dir`.
fn runs_in(dir: &Path) -> BTreeSet<String> {
    read_output(dir)
        .iter()
        .filter_map(|v| v["record"]["run_id"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn every_tenant_gets_exactly_its_own_records_over_one_shared_connection() {
    let t = Tenants::new();
    let tenants: Vec<String> = (0..10).map(|i| format!("team-{i}")).collect();
    for tenant in &tenants {
        t.write(tenant, "all", &t.file_pipeline(tenant, "all", ""));
        // The second pipeline takes only the `api` container.
        t.write(
            tenant,
            "api",
            &t.file_pipeline(tenant, "api", "[match]\ncontainers = [\"api\"]\n"),
        );
    }
    let agg = Aggregator::start_with(t.config());
    for tenant in &tenants {
        wait_for_state(&agg, tenant, "all", "active");
        wait_for_state(&agg, tenant, "api", "active");
    }
    let (per_request, requests) = (50u64, 4u64);
    let n = per_request * requests;
    let mut stream = tcp(agg.forward_addr).await;
    let run = |tenant: &str, container: &str| format!("{}-{tenant}-{container}", unique_id("mix"));
    let runs: Vec<(String, String, String)> = tenants
        .iter()
        .chain(std::iter::once(&"nobody".to_owned()))
        .flat_map(|tenant| ["web", "api"].map(|c| (tenant.clone(), c.to_owned(), run(tenant, c))))
        .collect();
    // Interleaved: request k of every tenant and container, then request k + 1.
    for k in 0..requests {
        for (tenant, container, run_id) in &runs {
            let tag = kube_tag(&format!("pod-{container}"), tenant, container);
            send_tagged_acked(&mut stream, &tag, run_id, k * per_request, per_request)
                .await
                .unwrap();
        }
    }
    for (tenant, container, run_id) in &runs {
        // The admin's catch-all route gets everything, tenants or not.
        wait_for_records(&agg.out_dir, run_id, n, Duration::from_secs(60));
        if tenant == "nobody" {
            continue;
        }
        let all = wait_for_records(&t.out(tenant, "all"), run_id, n, Duration::from_secs(60));
        assert_eq!(all.unique, n, "{tenant}/{container}");
        if container == "api" {
            wait_for_records(&t.out(tenant, "api"), run_id, n, Duration::from_secs(60));
        }
    }
    // Nothing of another tenant, nor of another container where one was chosen.
    for tenant in &tenants {
        let own = |c: &str| {
            runs.iter()
                .find(|r| r.0 == *tenant && r.1 == c)
                .unwrap()
                .2
                .clone()
        };
        assert_eq!(
            runs_in(&t.out(tenant, "all")),
            BTreeSet::from([own("web"), own("api")]),
            "{tenant}/all"
        );
        assert_eq!(
            runs_in(&t.out(tenant, "api")),
            BTreeSet::from([own("api")]),
            "{tenant}/api"
        );
        let s = status(&agg, &format!("/pipelines/{tenant}/all"));
        assert_eq!(s["records_in"], 2 * n, "{s}");
        // Younger than 5 minutes: the window holds everything since the pipeline started.
        assert_eq!(s["records_in_5m"], 2 * n, "{s}");
        assert!(s["window_seconds"].as_u64().is_some_and(|w| w < 300), "{s}");
        let path = format!("/pipelines/{tenant}/all");
        wait_until(
            "records out over 5 minutes",
            Duration::from_secs(10),
            || {
                let s = status(&agg, &path);
                (s["records_out_5m"] == 2 * n && s["records_out"] == 2 * n).then_some(())
            },
        );
    }
    assert_eq!(
        status(&agg, "/pipelines").as_array().unwrap().len(),
        2 * tenants.len()
    );
}

#[tokio::test]
async fn a_broken_file_is_rejected_with_every_error_and_never_stops_the_running_version() {
    let t = Tenants::new();
    t.write("shop", "web", &t.file_pipeline("shop", "web", ""));
    t.write("other", "web", &t.file_pipeline("other", "web", ""));
    // Three errors of three kinds: an unknown key, a regex that does not compile, and a
    // destination the policy does not allow.
    let bad = r#"[match]
containerz = ["web"]

[parse]
format = "regex"
pattern = "(?P<unclosed"

[outputs.es]
type = "elasticsearch"
endpoints = ["http://es.elsewhere.svc:9200"]
"#;
    t.write("shop", "bad", bad);
    let agg = Aggregator::start_with(t.config());
    wait_for_state(&agg, "shop", "web", "active");
    wait_for_state(&agg, "other", "web", "active");
    let rejected = wait_for_state(&agg, "shop", "bad", "rejected");
    let keys: Vec<&str> = rejected["rejected"]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["match", "parse.pattern", "outputs.es"], "{rejected}");

    // The same three from the command line the team's CI runs, with their lines.
    let out = std::process::Command::new(aggregator_bin())
        .args(["validate", "--pipeline"])
        .arg(t.pipelines().join("shop/bad.toml"))
        .arg("--policy")
        .arg(t.policy())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("3 error(s)"), "{stderr}");
    assert!(
        stderr.contains("match (line 2)") && stderr.contains("containerz"),
        "{stderr}"
    );
    assert!(stderr.contains("parse.pattern"), "{stderr}");
    assert!(stderr.contains("es.elsewhere.svc:9200"), "{stderr}");

    let mut stream = tcp(agg.forward_addr).await;
    let shop = kube_tag("web-1", "shop", "web");
    let other = kube_tag("web-1", "other", "web");
    let (shop_run, other_run) = (unique_id("shop"), unique_id("other"));
    let per = 100u64;
    let mut sent = 0u64;
    // `per` records of each tenant from `sent` on, both acked.
    macro_rules! send {
        () => {
            send_tagged_acked(&mut stream, &shop, &shop_run, sent, per)
                .await
                .unwrap();
            send_tagged_acked(&mut stream, &other, &other_run, sent, per)
                .await
                .unwrap();
            sent += per;
        };
    }
    send!();

    // Break the running pipeline: its last good version keeps delivering.
    t.write(
        "shop",
        "web",
        &t.file_pipeline("shop", "web", "[buffer]\ntotal_limit_size = \"lots\"\n"),
    );
    let stale = wait_for_state(&agg, "shop", "web", "stale");
    assert_eq!(
        stale["rejected"]["errors"][0]["key"], "buffer.total_limit_size",
        "{stale}"
    );
    for _ in 0..3 {
        send!();
    }
    wait_for_records(
        &t.out("shop", "web"),
        &shop_run,
        sent,
        Duration::from_secs(60),
    );

    // Fix it with a change of its parse and filters (its output is the same): it applies.
    t.write(
        "shop",
        "web",
        &t.file_pipeline(
            "shop",
            "web",
            "[[filter]]\ntype = \"add_field\"\nkey = \"team\"\nvalue = \"shop\"\n",
        ),
    );
    let active = wait_for_state(&agg, "shop", "web", "active");
    assert!(active["rejected"].is_null(), "{active}");
    let fixed_from = sent;
    for _ in 0..2 {
        send!();
    }
    wait_for_records(
        &t.out("shop", "web"),
        &shop_run,
        sent,
        Duration::from_secs(60),
    );
    let tagged = read_output(&t.out("shop", "web"))
        .into_iter()
        .filter(|v| v["record"]["seq"].as_u64().is_some_and(|s| s >= fixed_from))
        .all(|v| v["record"]["team"] == "shop");
    assert!(tagged, "records after the fix carry the added field");

    // The other tenant's pipeline never noticed: every record, one applied version.
    wait_for_records(
        &t.out("other", "web"),
        &other_run,
        sent,
        Duration::from_secs(60),
    );
    let other_status = status(&agg, "/pipelines/other/web");
    assert_eq!(other_status["state"], "active");
    assert_eq!(other_status["records_in"], sent, "{other_status}");
}

#[tokio::test]
async fn editing_one_pipelines_output_leaves_the_others_buffer_and_worker_alone() {
    let t = Tenants::new();
    t.write("shop", "web", &t.file_pipeline("shop", "web", ""));
    t.write("shop", "api", &t.file_pipeline("shop", "api", ""));
    let agg = Aggregator::start_with(t.config());
    let web_before = wait_for_state(&agg, "shop", "web", "active");
    let api_before = wait_for_state(&agg, "shop", "api", "active");
    // An output's buffer is opened (and recovered) once per start of its worker.
    let opened = |output: &str| {
        agg.logs()
            .iter()
            .filter(|l| l.contains("buffer recovered") && l.contains(&format!("\"{output}\"")))
            .count()
    };
    assert_eq!((opened("shop/web/out"), opened("shop/api/out")), (1, 1));

    let mut stream = tcp(agg.forward_addr).await;
    let (web_run, api_run) = (unique_id("web"), unique_id("api"));
    let web = kube_tag("web-1", "shop", "web");
    let api = kube_tag("api-1", "shop", "api");
    let old_dest = t.out("shop", "web");
    let new_dest = t.out("shop", "web-moved");
    send_tagged_acked(&mut stream, &web, &web_run, 0, 100)
        .await
        .unwrap();
    send_tagged_acked(&mut stream, &api, &api_run, 0, 100)
        .await
        .unwrap();
    // A new destination for `web` only.
    t.write(
        "shop",
        "web",
        &format!(
            "[outputs.out]\ntype = \"file\"\npath = {}\n",
            toml_path(&new_dest)
        ),
    );
    wait_until("web's new version", Duration::from_secs(20), || {
        let v = status(&agg, "/pipelines/shop/web");
        (v["applied"]["hash"] != web_before["applied"]["hash"] && v["state"] == "active")
            .then_some(())
    });
    send_tagged_acked(&mut stream, &web, &web_run, 100, 100)
        .await
        .unwrap();
    send_tagged_acked(&mut stream, &api, &api_run, 100, 100)
        .await
        .unwrap();
    // Every record of `web` is delivered, to the old destination or the new one (what the
    // old output had not delivered, the new one delivers from the same buffer directory).
    wait_until("all 200 records of web", Duration::from_secs(60), || {
        let seqs: BTreeSet<u64> = read_output(&new_dest)
            .into_iter()
            .chain(read_output(&old_dest))
            .filter(|v| v["record"]["run_id"] == web_run.as_str())
            .filter_map(|v| v["record"]["seq"].as_u64())
            .collect();
        (seqs.len() == 200).then_some(())
    });
    wait_for_records(
        &t.out("shop", "api"),
        &api_run,
        200,
        Duration::from_secs(60),
    );
    // `web`'s output was started again; `api` kept its version, buffer and worker.
    assert_eq!((opened("shop/web/out"), opened("shop/api/out")), (2, 1));
    let api_after = status(&agg, "/pipelines/shop/api");
    assert_eq!(api_after["applied"], api_before["applied"]);
}

// The load runs on its own task while this one waits and kills (blocking calls).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_around_an_apply_under_load_loses_no_acked_record_of_any_pipeline() {
    let t = Tenants::new();
    let tenants = ["alpha", "beta", "gamma"];
    for tenant in tenants {
        t.write(tenant, "main", &t.file_pipeline(tenant, "main", ""));
    }
    let mut agg = Aggregator::start_with(t.config());
    for tenant in tenants {
        wait_for_state(&agg, tenant, "main", "active");
    }
    let runs: Vec<String> = tenants.iter().map(|t| unique_id(t)).collect();
    let per = 100u64;
    // Load until the connection breaks: the records of every acked request, per tenant.
    let acked: Arc<Vec<AtomicU64>> = Arc::new(tenants.iter().map(|_| AtomicU64::new(0)).collect());
    let mut stream = tcp(agg.forward_addr).await;
    let load = {
        let (acked, runs) = (Arc::clone(&acked), runs.clone());
        tokio::spawn(async move {
            for round in 0..1000u64 {
                for (i, (tenant, run)) in tenants.iter().zip(&runs).enumerate() {
                    let tag = kube_tag("app-1", tenant, "app");
                    if send_tagged_acked(&mut stream, &tag, run, round * per, per)
                        .await
                        .is_err()
                    {
                        return;
                    }
                    acked[i].store((round + 1) * per, Ordering::SeqCst);
                }
            }
        })
    };
    wait_until("some load", Duration::from_secs(30), || {
        (acked[2].load(Ordering::SeqCst) >= 5 * per).then_some(())
    });
    // An apply of every pipeline (a new filter each) while the load runs, and the kill
    // while it is being applied or just after.
    for tenant in tenants {
        t.write(
            tenant,
            "main",
            &t.file_pipeline(
                tenant,
                "main",
                "[[filter]]\ntype = \"add_field\"\nkey = \"v\"\nvalue = \"2\"\n",
            ),
        );
    }
    std::thread::sleep(Duration::from_millis(200));
    agg.sigkill();
    load.await.unwrap();
    agg.restart();
    for tenant in tenants {
        wait_for_state(&agg, tenant, "main", "active");
    }
    for (i, (tenant, run)) in tenants.iter().zip(&runs).enumerate() {
        let n = acked[i].load(Ordering::SeqCst);
        assert!(n >= 5 * per, "{tenant}: {n} acked");
        let count = wait_for_records(&t.out(tenant, "main"), run, n, Duration::from_secs(60));
        assert_eq!(count.missing, 0, "{tenant}");
        // Nothing of the other tenants.
        assert_eq!(
            runs_in(&t.out(tenant, "main")),
            BTreeSet::from([run.clone()])
        );
    }
}

#[test]
fn json_regex_and_logfmt_parse_real_lines_and_failures_are_shown_to_the_team() {
    let t = Tenants::new();
    t.write(
        "shop",
        "json",
        &t.file_pipeline(
            "shop",
            "json",
            "[match]\ncontainers = [\"api\"]\n[parse]\nformat = \"json\"\nkeep_original = false\n",
        ),
    );
    t.write(
        "shop",
        "nginx",
        &t.file_pipeline(
            "shop",
            "nginx",
            r#"[match]
containers = ["nginx"]
[parse]
format = "regex"
pattern = '^(?P<remote>\S+) \S+ \S+ \[(?P<when>[^\]]+)\] "(?P<method>\S+) (?P<path>\S+) \S+" (?P<status>\d{3}) (?P<size>\d+)'
"#,
        ),
    );
    t.write(
        "shop",
        "go",
        &t.file_pipeline(
            "shop",
            "go",
            "[match]\ncontainers = [\"worker\"]\n[parse]\nformat = \"logfmt\"\non_error = \"dead_letter\"\n",
        ),
    );
    let agg = Aggregator::start_with(t.config());
    for name in ["json", "nginx", "go"] {
        wait_for_state(&agg, "shop", name, "active");
    }
    let addr = agg.forward_addr.to_string();
    let line = |log: &str| serde_json::json!({ "log": log, "stream": "stdout" });
    // A docker line split at 16 KiB: the first piece is 16384 bytes of a JSON object.
    let head = r#"{"level":"info","msg":""#;
    let long = format!("{head}{}", "x".repeat(16384 - head.len()));
    assert_eq!(long.len(), 16384);
    logferry_e2e::client::send_json_acked(
        &addr,
        &kube_tag("api-1", "shop", "api"),
        &[
            line(r#"{"level":"error","msg":"payment failed","order":1234,"latency_ms":12.5}"#),
            line(&long),
        ],
        2,
    );
    logferry_e2e::client::send_json_acked(
        &addr,
        &kube_tag("web-1", "shop", "nginx"),
        &[line(
            r#"10.1.2.3 - - [07/Dec/2026:21:00:00 +0000] "GET /cart?id=7 HTTP/1.1" 200 5123 "-" "curl/8.5""#,
        )],
        1,
    );
    logferry_e2e::client::send_json_acked(
        &addr,
        &kube_tag("worker-1", "shop", "worker"),
        &[
            line(r#"level=info msg="job done" job=resize dur=1.2ms ok"#),
            line(r#"level=warn msg="unterminated"#),
        ],
        2,
    );
    let records = |name: &str, n: usize| {
        wait_until(
            &format!("{n} records of {name}"),
            Duration::from_secs(30),
            || {
                let lines = read_output(&t.out("shop", name));
                (lines.len() >= n).then_some(lines)
            },
        )
    };
    let json = records("json", 2);
    let parsed = json
        .iter()
        .find(|v| v["record"]["order"] == 1234)
        .expect("parsed JSON");
    assert_eq!(parsed["record"]["level"], "error");
    assert!(
        parsed["record"].get("log").is_none(),
        "keep_original = false: {parsed}"
    );
    let raw = json
        .iter()
        .find(|v| v["record"].get("_parse_error").is_some())
        .expect("kept raw");
    assert_eq!(raw["record"]["log"].as_str().map(str::len), Some(16384));

    let nginx = records("nginx", 1);
    assert_eq!(nginx[0]["record"]["method"], "GET", "{}", nginx[0]);
    assert_eq!(nginx[0]["record"]["path"], "/cart?id=7");
    assert_eq!(nginx[0]["record"]["status"], "200");

    let go = records("go", 1);
    assert_eq!(go[0]["record"]["msg"], "job done", "{}", go[0]);
    assert_eq!(go[0]["record"]["ok"], true);

    // The team sees its parse errors: the split line with its hint.
    let json_status = status(&agg, "/pipelines/shop/json");
    assert_eq!(
        json_status["parse_errors"]["invalid_json"], 1,
        "{json_status}"
    );
    let sample = &json_status["parse_error_samples"][0];
    assert_eq!(sample["split_hint"], true, "{json_status}");
    assert!(sample["sample"].as_str().unwrap().len() <= 256);
    // dead_letter: the raw record is kept in the output's dead letters, not delivered.
    wait_until("the logfmt dead letter", Duration::from_secs(30), || {
        let dir = agg.buffer_dir.join("pipelines/shop/go/out/dead-letter");
        let files = std::fs::read_dir(dir).ok()?.count();
        (files > 0).then_some(())
    });
    assert_eq!(read_output(&t.out("shop", "go")).len(), 1);
    let go_status = status(&agg, "/pipelines/shop/go");
    assert_eq!(
        go_status["parse_errors"]["invalid_logfmt"], 1,
        "{go_status}"
    );
}

/// p99 of `samples` (sorted in place).
fn p99(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[(samples.len() * 99 / 100).min(samples.len() - 1)]
}

// Two tasks: the healthy tenant's sender and the dead one's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenants_dead_destination_fills_only_its_own_buffer() {
    let t = Tenants::new();
    t.write("good", "main", &t.file_pipeline("good", "main", ""));
    // A destination that can never be written: its directory's parent is a file.
    let blocker = t.files().join("dead/blocker");
    std::fs::create_dir_all(blocker.parent().unwrap()).unwrap();
    std::fs::write(&blocker, "not a directory").unwrap();
    t.write(
        "dead",
        "main",
        &format!(
            "[buffer]\ntotal_limit_size = \"64KiB\"\n[outputs.out]\ntype = \"file\"\npath = {}\nretry = {{ initial = \"50ms\", max_interval = \"200ms\", forever = true }}\n",
            toml_path(&blocker.join("out"))
        ),
    );
    let agg = Aggregator::start_with(AggregatorConfig {
        chunk_limit_size: "16KiB".into(),
        ..t.config()
    });
    wait_for_state(&agg, "good", "main", "active");
    wait_for_state(&agg, "dead", "main", "active");

    // The healthy tenant's ack latency alone, beside a healthy tenant as busy as the dead one
    // will be, and beside the dead one: isolation means the last two are alike (the first is
    // lower: the other sender shares the two cores and the admin output's fsyncs).
    let good_tag = kube_tag("app-1", "good", "app");
    let per = 50u64;
    let mut good = tcp(agg.forward_addr).await;
    let good_run = unique_id("good");
    let mut sent = 0u64;
    let mut phase = |other: Option<(&'static str, String)>| {
        let addr = agg.forward_addr;
        let load = other.map(|(tenant, run)| {
            tokio::spawn(async move {
                let mut s = tcp(addr).await;
                let tag = kube_tag("app-1", tenant, "app");
                for i in 0..200u64 {
                    send_tagged_acked(&mut s, &tag, &run, i * per, per)
                        .await
                        .unwrap();
                }
            })
        });
        let from = sent;
        sent += 100;
        (load, from)
    };
    let mut latencies = Vec::new();
    let busy_run = unique_id("busy");
    let dead_run = unique_id("dead");
    t.write("busy", "main", &t.file_pipeline("busy", "main", ""));
    wait_for_state(&agg, "busy", "main", "active");
    for other in [
        None,
        Some(("busy", busy_run.clone())),
        Some(("dead", dead_run.clone())),
    ] {
        let (load, from) = phase(other);
        let mut samples = Vec::new();
        for i in from..from + 100 {
            let start = std::time::Instant::now();
            send_tagged_acked(&mut good, &good_tag, &good_run, i * per, per)
                .await
                .unwrap();
            samples.push(start.elapsed());
        }
        if let Some(load) = load {
            load.await.unwrap();
        }
        latencies.push(p99(&mut samples));
    }
    wait_for_records(
        &t.out("good", "main"),
        &good_run,
        sent * per,
        Duration::from_secs(60),
    );
    wait_for_records(
        &t.out("busy", "main"),
        &busy_run,
        200 * per,
        Duration::from_secs(60),
    );
    eprintln!(
        "p99 ack latency of the healthy tenant ({per} records a request): alone {:?}, beside a busy healthy tenant {:?}, beside a dead tenant {:?}",
        latencies[0], latencies[1], latencies[2]
    );
    // The dead tenant's buffer filled and dropped its own oldest chunks; its status says why.
    let dead = status(&agg, "/pipelines/dead/main");
    let out = &dead["outputs"][0];
    assert_eq!(out["delivering"], false, "{dead}");
    assert!(
        out["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{dead}"
    );
    assert!(out["buffer_bytes"].as_u64().unwrap() <= 64 * 1024, "{dead}");
    let dropped = logferry_e2e::metric(
        &agg,
        "logferry_dropped_records_total{reason=\"drop_oldest_chunk\"}",
    );
    assert!(dropped > 0.0, "the dead tenant's buffer dropped nothing");
    assert_eq!(
        status(&agg, "/pipelines/good/main")["outputs"][0]["delivering"],
        true
    );
    // The admin's catch-all output got everything of both.
    wait_for_records(&agg.out_dir, &dead_run, 200 * per, Duration::from_secs(60));
}

// The tap's HTTP request blocks a thread while this task sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tap_shows_only_that_pipelines_records_and_stops_at_its_limit() {
    let t = Tenants::new();
    t.write(
        "shop",
        "web",
        &t.file_pipeline(
            "shop",
            "web",
            "[[filter]]\ntype = \"add_field\"\nkey = \"team\"\nvalue = \"shop\"\n",
        ),
    );
    t.write("other", "web", &t.file_pipeline("other", "web", ""));
    let agg = Aggregator::start_with(t.config());
    wait_for_state(&agg, "shop", "web", "active");
    wait_for_state(&agg, "other", "web", "active");
    let admin = agg.admin_addr;
    let tap = std::thread::spawn(move || {
        http_get(admin, "/pipelines/shop/web/tap?limit=5&wait=30s").unwrap()
    });
    // Records of both tenants until the tap has answered.
    let mut stream = tcp(agg.forward_addr).await;
    let (shop_run, other_run) = (unique_id("tap-shop"), unique_id("tap-other"));
    let mut from = 0;
    while !tap.is_finished() && from < 100_000 {
        for (tenant, run) in [("other", &other_run), ("shop", &shop_run)] {
            let tag = kube_tag("web-1", tenant, "web");
            send_tagged_acked(&mut stream, &tag, run, from, 20)
                .await
                .unwrap();
        }
        from += 20;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, body) = tap.join().unwrap();
    assert_eq!(code, 200, "{body}");
    let lines: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5, "{body}");
    for line in &lines {
        // After the filters, and of shop only.
        assert_eq!(line["record"]["run_id"], shop_run.as_str(), "{line}");
        assert_eq!(line["record"]["team"], "shop", "{line}");
    }
    let (code, _) = http_get(agg.admin_addr, "/pipelines/nobody/web/tap?limit=1&wait=1s").unwrap();
    assert_eq!(code, 404);
}

/// Pipelines `ext` of tenants `shop` and `other`, an aggregator with `server_extra` (its auth),
/// and 100 records sent after a handshake with `k3y` (and `user`) under a tag that names no
/// tenant: they must reach shop's pipeline only. Returns the aggregator.
async fn sent_from_outside_the_cluster(
    t: &Tenants,
    server_extra: &str,
    user: Option<(&str, &str)>,
) -> Aggregator {
    t.write_file_pipeline("shop", "ext", "");
    t.write_file_pipeline("other", "ext", "");
    let agg = Aggregator::start_with(AggregatorConfig {
        server_extra: server_extra.into(),
        ..t.config()
    });
    wait_for_state(&agg, "shop", "ext", "active");
    wait_for_state(&agg, "other", "ext", "active");
    let mut stream = tcp(agg.forward_addr).await;
    logferry_e2e::client::auth(&mut stream, "k3y", user)
        .await
        .unwrap();
    // Neither a Kubernetes tag nor a namespace in the records: the connection says whose
    // they are.
    let run = unique_id("ext");
    send_tagged_acked(&mut stream, "batch.nightly", &run, 0, 100)
        .await
        .unwrap();
    wait_for_records(&t.out("shop", "ext"), &run, 100, Duration::from_secs(30));
    assert!(runs_in(&t.out("other", "ext")).is_empty());
    agg
}

#[tokio::test]
async fn an_authenticated_user_outside_the_cluster_sends_as_its_tenant() {
    let t = Tenants::new();
    sent_from_outside_the_cluster(
        &t,
        r#"
[server.auth]
shared_key = "k3y"
[[server.auth.users]]
username = "shop-batch"
password = "pw"
tenant = "shop"
"#,
        Some(("shop-batch", "pw")),
    )
    .await;
}

#[tokio::test]
async fn a_sender_matched_by_an_auth_client_entry_sends_as_its_tenant() {
    let t = Tenants::new();
    // The client entry's tenant wins over the listener's.
    let agg = sent_from_outside_the_cluster(
        &t,
        r#"
tenant = "other"
[server.auth]
shared_key = "k3y"
[[server.auth.clients]]
network = "127.0.0.0/8"
tenant = "shop"
"#,
        None,
    )
    .await;
    assert_eq!(status(&agg, "/pipelines/shop/ext")["records_in"], 100);
    assert_eq!(status(&agg, "/pipelines/other/ext")["records_in"], 0);
}

#[tokio::test]
async fn a_deleted_pipeline_drains_what_it_buffered_and_can_come_back() {
    let t = Tenants::new();
    t.write("shop", "web", &t.file_pipeline("shop", "web", ""));
    let agg = Aggregator::start_with(t.config());
    wait_for_state(&agg, "shop", "web", "active");
    let mut stream = tcp(agg.forward_addr).await;
    let tag = kube_tag("web-1", "shop", "web");
    let run = unique_id("deleted");
    send_tagged_acked(&mut stream, &tag, &run, 0, 300)
        .await
        .unwrap();
    // Deleted right after the ack: what it stored is still delivered.
    std::fs::remove_file(t.pipelines().join("shop/web.toml")).unwrap();
    wait_for_records(&t.out("shop", "web"), &run, 300, Duration::from_secs(30));
    wait_until("the pipeline gone", Duration::from_secs(30), || {
        let (code, _) = http_get(agg.admin_addr, "/pipelines/shop/web").ok()?;
        (code == 404).then_some(())
    });
    // Records sent now are not the pipeline's; written again, it takes them.
    send_tagged_acked(&mut stream, &tag, &run, 300, 100)
        .await
        .unwrap();
    t.write("shop", "web", &t.file_pipeline("shop", "web", ""));
    wait_for_state(&agg, "shop", "web", "active");
    send_tagged_acked(&mut stream, &tag, &run, 400, 100)
        .await
        .unwrap();
    wait_until(
        "the records after its return",
        Duration::from_secs(30),
        || {
            let seqs: BTreeSet<u64> = read_output(&t.out("shop", "web"))
                .into_iter()
                .filter_map(|v| v["record"]["seq"].as_u64())
                .collect();
            ((400..500).all(|s| seqs.contains(&s)) && !(300..400).any(|s| seqs.contains(&s)))
                .then_some(())
        },
    );
}

#[tokio::test]
async fn a_pipeline_invalid_at_restart_keeps_its_buffered_records_and_delivers_them_once_fixed() {
    let t = Tenants::new();
    // Its destination cannot be written yet (its parent is a file): records stay buffered.
    let blocker = t.files().join("shop/blocked");
    std::fs::create_dir_all(blocker.parent().unwrap()).unwrap();
    std::fs::write(&blocker, "not a directory").unwrap();
    let pipeline = format!(
        "[outputs.out]\ntype = \"file\"\npath = {}\nretry = {{ initial = \"50ms\", max_interval = \"200ms\", forever = true }}\n",
        toml_path(&blocker.join("out"))
    );
    t.write("shop", "web", &pipeline);
    let mut agg = Aggregator::start_with(t.config());
    wait_for_state(&agg, "shop", "web", "active");
    let mut stream = tcp(agg.forward_addr).await;
    let run = unique_id("kept");
    send_tagged_acked(&mut stream, &kube_tag("web-1", "shop", "web"), &run, 0, 200)
        .await
        .unwrap();
    drop(stream);
    agg.sigkill();
    // Restarted with a file that no longer validates: not started, its records kept.
    t.write("shop", "web", &format!("{pipeline}bogus = 1\n"));
    agg.restart();
    let rejected = wait_for_state(&agg, "shop", "web", "rejected");
    assert!(
        rejected["unstarted_bytes"].as_u64().is_some_and(|b| b > 0),
        "{rejected}"
    );
    // Fixed (and its destination writable): every record is delivered.
    std::fs::remove_file(&blocker).unwrap();
    t.write("shop", "web", &pipeline);
    wait_for_state(&agg, "shop", "web", "active");
    wait_for_records(&blocker.join("out"), &run, 200, Duration::from_secs(60));
}

#[tokio::test]
async fn a_written_file_is_applied_at_once_without_waiting_for_the_rescan() {
    let t = Tenants::new();
    t.write("shop", "web", &t.file_pipeline("shop", "web", ""));
    // Only inotify can apply anything within this test's time.
    let agg = Aggregator::start_with(t.config_with("rescan_interval", "1h"));
    wait_for_state(&agg, "shop", "web", "active");
    t.write("shop", "api", &t.file_pipeline("shop", "api", ""));
    wait_for_state(&agg, "shop", "api", "active");
    t.write(
        "shop",
        "web",
        &t.file_pipeline("shop", "web", "[match]\nbogus = 1\n"),
    );
    wait_for_state(&agg, "shop", "web", "stale");
}

#[tokio::test]
async fn a_version_whose_output_cannot_be_built_leaves_the_running_one_alone() {
    let t = Tenants::new();
    let pipeline = t.file_pipeline("shop", "web", "");
    t.write("shop", "web", &pipeline);
    let agg = Aggregator::start_with(t.config());
    wait_for_state(&agg, "shop", "web", "active");
    let mut stream = tcp(agg.forward_addr).await;
    let tag = kube_tag("web-1", "shop", "web");
    let run = unique_id("unbuildable");
    send_tagged_acked(&mut stream, &tag, &run, 0, 100)
        .await
        .unwrap();
    // Valid on paper, but its CA file is no certificate: the sink cannot be built.
    let ca = t.files().join("shop/ca.pem");
    std::fs::create_dir_all(ca.parent().unwrap()).unwrap();
    std::fs::write(&ca, "not a certificate").unwrap();
    t.write(
        "shop",
        "web",
        &format!(
            "{pipeline}[outputs.es]\ntype = \"elasticsearch\"\nendpoints = [\"https://es.shop.svc:9200\"]\ntls = {{ ca = {} }}\n",
            toml_path(&ca)
        ),
    );
    let stale = wait_for_state(&agg, "shop", "web", "stale");
    assert_eq!(
        stale["rejected"]["errors"][0]["key"], "outputs.es",
        "{stale}"
    );
    assert_eq!(stale["outputs"].as_array().unwrap().len(), 1, "{stale}");
    send_tagged_acked(&mut stream, &tag, &run, 100, 100)
        .await
        .unwrap();
    wait_for_records(&t.out("shop", "web"), &run, 200, Duration::from_secs(30));
}

/// `dead-letter list|replay --pipeline shop/web --output out` on `agg`'s config.
fn dead_letter_cmd(agg: &Aggregator, command: &str, extra: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(aggregator_bin());
    cmd.args(["dead-letter", command, "--config"])
        .arg(&agg.config_path)
        .args(["--pipeline", "shop/web", "--output", "out"])
        .args(extra);
    cmd
}

/// `dead-letter replay` of shop/web through the running `agg`'s admin listener, which must
/// deliver the 5 dead letters there are and leave none.
fn replay_five_in(agg: &Aggregator) {
    let admin = agg.admin_addr.to_string();
    let replay = dead_letter_cmd(
        agg,
        "replay",
        &["--timeout", "10s", "--json", "--admin", &admin],
    )
    .output()
    .unwrap();
    let summary: Value = serde_json::from_slice(&replay.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON summary ({e}): {}",
            String::from_utf8_lossy(&replay.stderr)
        )
    });
    assert_eq!(summary["via"], "aggregator", "{summary}");
    assert_eq!(summary["pipeline"], "shop/web", "{summary}");
    assert_eq!(summary["delivered"], 5, "{summary}");
    assert_eq!(summary["dead_again"], 0, "{summary}");
    assert_eq!(summary["remaining_files"], 0, "{summary}");
    assert!(replay.status.success(), "{summary}");
}

/// [`dead_letter_cmd`], which must succeed.
fn dead_letter_cli(agg: &Aggregator, command: &str, extra: &[&str]) -> std::process::Output {
    logferry_e2e::run_checked(
        &mut dead_letter_cmd(agg, command, extra),
        Duration::from_secs(60),
    )
}

#[tokio::test]
async fn a_pipelines_parse_dead_letters_are_listed_and_replayed_as_they_were_kept() {
    let t = Tenants::new();
    t.write_file_pipeline(
        "shop",
        "web",
        "[parse]\nformat = \"json\"\non_error = \"dead_letter\"\n",
    );
    let mut agg = Aggregator::start_with(t.config());
    wait_for_state(&agg, "shop", "web", "active");
    let out = t.out("shop", "web");
    let raw = |i: usize| serde_json::json!({ "log": format!("not json {i}"), "stream": "stdout" });
    let mut lines: Vec<Value> = (0..5).map(raw).collect();
    lines.push(serde_json::json!({ "log": r#"{"ok":true}"#, "stream": "stdout" }));
    logferry_e2e::client::send_json_acked(
        &agg.forward_addr.to_string(),
        &kube_tag("web-1", "shop", "web"),
        &lines,
        6,
    );
    let dl_dir = agg.buffer_dir.join("pipelines/shop/web/out/dead-letter");
    let file = wait_until("a dead letter", Duration::from_secs(30), || {
        logferry_e2e::chunks::chunk_files(&dl_dir)
            .into_iter()
            .next()
    });
    let kept = std::fs::read(&file).unwrap();
    // The raw records, exactly as they arrived; the parsed one went out.
    let raw_out = || {
        read_output(&out)
            .into_iter()
            .filter(|v| {
                v["record"]["log"]
                    .as_str()
                    .is_some_and(|l| l.starts_with("not json"))
            })
            .map(|v| v["record"].clone())
            .collect::<Vec<Value>>()
    };
    wait_until("the parsed record", Duration::from_secs(30), || {
        (read_output(&out).len() == 1).then_some(())
    });
    assert!(raw_out().is_empty());

    // A newer version that is invalid: the last good one keeps running (stale), and its dead
    // letters are listed and replayed through it all the same.
    let valid = std::fs::read_to_string(t.pipelines().join("shop/web.toml")).unwrap();
    t.write_file_pipeline("shop", "web", "[parse]\nformat = \"yaml\"\n");
    wait_for_state(&agg, "shop", "web", "stale");
    let list = dead_letter_cli(&agg, "list", &[]);
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        text.contains("1 file(s), 5 record(s): parse_error=5"),
        "{text}"
    );
    assert!(text.contains(&dl_dir.display().to_string()), "{text}");

    // Running: through the pipeline's own output worker, found by the admin listener.
    replay_five_in(&agg);
    let replayed = wait_until("5 replayed records", Duration::from_secs(10), || {
        let r = raw_out();
        (r.len() == 5).then_some(r)
    });
    // Sent as kept: not parsed again (that would only make them dead letters again).
    assert_eq!(replayed, (0..5).map(raw).collect::<Vec<_>>());
    assert_eq!(read_output(&out).len(), 6);

    // An output that is not in the running pipeline: 404, nothing done.
    let (code, body) = logferry_e2e::http_post(
        agg.admin_addr,
        "/dead-letter/replay?output=gone&pipeline=shop/web",
    )
    .unwrap();
    assert_eq!(code, 404, "{body}");

    // Stopped: the command builds the output from the pipeline file and replays alone; not
    // from an invalid file (exit 78, nothing done).
    let name =
        logferry_common::chunk::chunk_file_name(1, logferry_common::chunk::ChunkState::Sealed);
    std::fs::write(dl_dir.join(name), &kept).unwrap();
    agg.stop(Duration::from_secs(30));
    let refused = dead_letter_cmd(&agg, "replay", &["--timeout", "5s"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("parse.format"), "{stderr}");
    assert_eq!(logferry_e2e::chunks::chunk_files(&dl_dir).len(), 1);
    t.write("shop", "web", &valid);
    let alone = dead_letter_cli(&agg, "replay", &["--timeout", "5s"]);
    let text = String::from_utf8_lossy(&alone.stdout);
    assert!(
        text.contains(
            "replayed 1 file(s): 5 record(s) delivered, 0 dead again, 0 file(s) left to retry"
        ),
        "{text}"
    );
    assert!(logferry_e2e::chunks::chunk_files(&dl_dir).is_empty());
    assert_eq!(
        raw_out().len(),
        10,
        "once through the aggregator, once alone"
    );
}

#[tokio::test]
async fn a_draining_pipelines_dead_letters_are_replayed_through_its_draining_output() {
    let t = Tenants::new();
    t.write_file_pipeline(
        "shop",
        "web",
        "[parse]\nformat = \"json\"\non_error = \"dead_letter\"\n",
    );
    let agg = Aggregator::start_with(t.config_with("drain_timeout", "120s"));
    wait_for_state(&agg, "shop", "web", "active");
    let addr = agg.forward_addr.to_string();
    let line = |log: String| serde_json::json!({ "log": log, "stream": "stdout" });
    let bad: Vec<Value> = (0..5).map(|i| line(format!("not json {i}"))).collect();
    logferry_e2e::client::send_json_acked(&addr, &kube_tag("web-1", "shop", "web"), &bad, 5);
    let dl_dir = agg.buffer_dir.join("pipelines/shop/web/out/dead-letter");
    wait_until("a dead letter", Duration::from_secs(30), || {
        (logferry_e2e::chunks::chunk_files(&dl_dir).len() == 1).then_some(())
    });
    // Records of another pod whose file (one per tag and hour) is a directory, this hour and
    // the next: they cannot be delivered, so the output still drains when its file goes.
    let out = t.out("shop", "web");
    let held_tag = kube_tag("web-2", "shop", "web");
    let now = chrono::Utc::now();
    let held: Vec<PathBuf> = [now, now + chrono::Duration::hours(1)]
        .iter()
        .map(|h| out.join(format!("{held_tag}.{}.jsonl", h.format("%Y%m%d%H"))))
        .collect();
    for dir in &held {
        std::fs::create_dir_all(dir).unwrap();
    }
    let good: Vec<Value> = (0..3).map(|i| line(format!("{{\"n\":{i}}}"))).collect();
    logferry_e2e::client::send_json_acked(&addr, &held_tag, &good, 3);
    std::fs::remove_file(t.pipelines().join("shop/web.toml")).unwrap();
    wait_for_state(&agg, "shop", "web", "draining");

    // Found while it drains (no pipeline file to read): replayed through its output.
    replay_five_in(&agg);
    assert_eq!(read_output(&out).len(), 5);
    // And the drain delivers what it held once it can.
    for dir in &held {
        std::fs::remove_dir(dir).unwrap();
    }
    wait_until("3 drained records", Duration::from_secs(30), || {
        (read_output(&out).len() == 8).then_some(())
    });
    wait_until("the pipeline gone", Duration::from_secs(30), || {
        let (code, _) = http_get(agg.admin_addr, "/pipelines/shop/web").ok()?;
        (code == 404).then_some(())
    });
    // Drained and gone: nothing to replay through.
    let (code, body) = logferry_e2e::http_post(
        agg.admin_addr,
        "/dead-letter/replay?pipeline=shop/web&output=out",
    )
    .unwrap();
    assert_eq!(code, 404, "{body}");
}
