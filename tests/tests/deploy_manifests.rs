//! The Kubernetes manifests in deploy/: every overlay renders with the real `kubectl
//! kustomize`, every rendered object validates against the Kubernetes OpenAPI schemas in strict
//! mode (kubernetes-validate, offline), checkov (a static security scanner) has no finding that
//! is not explained in the manifests, hadolint accepts the Dockerfiles, and the objects agree
//! with each other and with the daemons' configs: Services and NetworkPolicies select real pods
//! and target real ports, probes hit the admin port the config listens on, config paths lie on
//! mounted volumes, every `${ENV}` a config uses is set, buffers fit their volume, grace periods
//! outlast shutdown timeouts, a listener behind a LoadBalancer limits connections per source,
//! and the alert rules and dashboard parse as PromQL.
//!
//! Real components: kubectl (kustomize), kubernetes-validate, checkov, hadolint, PyYAML,
//! tomllib and promql-parser (through deploy/tools/k8s_facts.py). No cluster is needed.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use logferry_e2e::deploy::*;
use serde_json::Value;

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn overlays_render_and_pass_strict_kubernetes_schema_validation() {
    let Some(t) = tools() else { return };
    let validate = t.venv_tool("kubernetes-validate");
    for overlay in OVERLAYS {
        let yaml = render(&t, &format!("overlays/{overlay}"));
        let objects = yaml_objects(&t, &yaml);
        assert!(
            objects.len() >= 8,
            "{overlay}: only {} objects",
            objects.len()
        );
        let (_dir, file) = temp_file(&format!("{overlay}.yaml"), &yaml);
        for version in KUBERNETES_VERSIONS {
            let out = run(
                Command::new(&validate)
                    .args(["--strict", "-k", version])
                    .arg(&file),
                None,
                Duration::from_secs(120),
            );
            let report = text(&out);
            let passed = report
                .lines()
                .filter(|l| l.starts_with("INFO") && l.contains("passed for resource"))
                .count();
            assert!(
                out.status.success() && !report.contains("ERROR") && !report.contains("WARN"),
                "{overlay} against Kubernetes {version}:\n{report}"
            );
            // Every object was checked against a schema (an unknown kind only warns).
            assert_eq!(
                passed,
                objects.len(),
                "{overlay} against Kubernetes {version}: {passed} of {} objects passed:\n{report}",
                objects.len()
            );
        }
    }
}

/// The validator really is strict: an unknown field in a StatefulSet fails.
#[test]
fn strict_schema_validation_rejects_an_unknown_field() {
    let Some(t) = tools() else { return };
    let yaml = render(&t, "overlays/cluster");
    let broken = yaml.replacen(
        "  serviceName: logferry-aggregator\n",
        "  serviceName: logferry-aggregator\n  serviceNameTypo: x\n",
        1,
    );
    assert_ne!(
        broken, yaml,
        "the StatefulSet's serviceName line was not found"
    );
    let (_dir, file) = temp_file("broken.yaml", &broken);
    let out = run(
        Command::new(t.venv_tool("kubernetes-validate"))
            .args(["--strict", "-k", KUBERNETES_VERSIONS[1]])
            .arg(&file),
        None,
        Duration::from_secs(120),
    );
    assert!(
        !out.status.success() && text(&out).contains("serviceNameTypo"),
        "an unknown field was accepted:\n{}",
        text(&out)
    );
}

/// checkov's JSON report (one object, or a list with one per framework).
fn checkov(t: &Tools, framework: &str, files: &[&std::path::Path]) -> Vec<Value> {
    let mut cmd = Command::new(t.venv_tool("checkov"));
    cmd.args([
        "--framework",
        framework,
        "-o",
        "json",
        "--compact",
        "--skip-download",
    ]);
    for f in files {
        cmd.arg("-f").arg(f);
    }
    let out = run(&mut cmd, None, Duration::from_secs(300));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("checkov printed no JSON ({e}):\n{}", text(&out));
    });
    match report {
        Value::Array(items) => items,
        other => vec![other],
    }
}

/// No failed check, every skipped check carries its reason, and checks did run.
fn assert_clean(what: &str, reports: &[Value]) {
    let mut problems = Vec::new();
    let mut passed = 0;
    for r in reports {
        passed += r["summary"]["passed"].as_u64().unwrap_or(0);
        assert_eq!(
            r["summary"]["parsing_errors"].as_u64().unwrap_or(0),
            0,
            "{what}: checkov could not parse some files: {}",
            r["summary"]
        );
        for c in r["results"]["failed_checks"]
            .as_array()
            .into_iter()
            .flatten()
        {
            problems.push(format!(
                "FAILED {} {} ({})",
                c["check_id"].as_str().unwrap_or("?"),
                c["check_name"].as_str().unwrap_or("?"),
                c["resource"].as_str().unwrap_or("?")
            ));
        }
        for c in r["results"]["skipped_checks"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let reason = c["check_result"]["suppress_comment"]
                .as_str()
                .unwrap_or("")
                .trim();
            if reason.len() < 20 {
                problems.push(format!(
                    "SKIPPED without a reason: {} ({})",
                    c["check_id"].as_str().unwrap_or("?"),
                    c["resource"].as_str().unwrap_or("?")
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{what}: checkov findings that are neither fixed nor explained:\n{}",
        problems.join("\n")
    );
    assert!(passed >= 20, "{what}: checkov ran only {passed} checks");
}

#[test]
fn checkov_finds_nothing_unexplained_in_manifests_or_dockerfiles() {
    let Some(t) = tools() else { return };
    // One overlay per checkov run: checkov's graph checks (e.g. "has a NetworkPolicy") would
    // otherwise let one overlay's objects satisfy another's.
    let rendered: Vec<(String, String)> = OVERLAYS
        .iter()
        .map(|o| (o.to_string(), render(&t, &format!("overlays/{o}"))))
        .collect();
    std::thread::scope(|s| {
        let mut handles = Vec::new();
        for (overlay, yaml) in &rendered {
            let t = t.clone();
            handles.push(s.spawn(move || {
                let (_dir, file) = temp_file(&format!("{overlay}.yaml"), yaml);
                let reports = checkov(&t, "kubernetes", &[&file]);
                assert_clean(&format!("overlay {overlay}"), &reports);
            }));
        }
        let docker = deploy_dir().join("docker");
        let reports = checkov(
            &t,
            "dockerfile",
            &[
                &docker.join("Dockerfile.aggregator"),
                &docker.join("Dockerfile.forwarder"),
            ],
        );
        assert_clean("Dockerfiles", &reports);
        for h in handles {
            if let Err(e) = h.join() {
                std::panic::resume_unwind(e);
            }
        }
    });
}

#[test]
fn hadolint_accepts_the_dockerfiles_and_rejects_a_bad_one() {
    let Some(t) = tools() else { return };
    let hadolint = t.venv_tool("hadolint");
    let docker = deploy_dir().join("docker");
    for name in ["Dockerfile.aggregator", "Dockerfile.forwarder"] {
        let out = run(
            Command::new(&hadolint).arg(docker.join(name)),
            None,
            Duration::from_secs(60),
        );
        assert!(out.status.success(), "hadolint {name}:\n{}", text(&out));
    }
    // The linter does lint: `latest` and a root user with unpinned installs are findings.
    let (_dir, bad) = temp_file(
        "Dockerfile.bad",
        "FROM debian:latest\nRUN apt-get update && apt-get install curl\nCMD curl http://x\n",
    );
    let out = run(
        Command::new(&hadolint).arg(&bad),
        None,
        Duration::from_secs(60),
    );
    assert!(
        !out.status.success() && text(&out).contains("DL3007"),
        "hadolint accepted a bad Dockerfile:\n{}",
        text(&out)
    );
}

#[test]
fn services_policies_and_budgets_select_real_pods_and_ports() {
    let Some(t) = tools() else { return };
    for overlay in OVERLAYS {
        let objects = overlay_objects(&t, overlay);
        let workloads = workloads(&objects);
        let selected = |selector: &BTreeMap<String, String>| -> Vec<&Value> {
            workloads
                .iter()
                .copied()
                .filter(|w| selects(selector, &pod_labels(w)))
                .collect()
        };
        let ports_of = |w: &Value| -> BTreeMap<String, u64> {
            containers(w)
                .iter()
                .flat_map(|c| container_ports(c))
                .collect()
        };

        for svc in of_kind(&objects, "Service") {
            let selector = string_map(&svc["spec"]["selector"]);
            let pods = selected(&selector);
            assert!(
                !pods.is_empty(),
                "{overlay}: {} selects no pods ({selector:?})",
                id(svc)
            );
            for port in svc["spec"]["ports"].as_array().expect("ports") {
                for w in &pods {
                    let ports = ports_of(w);
                    let ok = match &port["targetPort"] {
                        Value::String(name) => ports.contains_key(name),
                        Value::Number(n) => ports.values().any(|p| Some(*p) == n.as_u64()),
                        _ => false,
                    };
                    assert!(
                        ok,
                        "{overlay}: {} port {} targets {} which {} does not expose ({ports:?})",
                        id(svc),
                        port["name"],
                        port["targetPort"],
                        id(w)
                    );
                }
            }
        }

        for sts in of_kind(&objects, "StatefulSet") {
            let name = sts["spec"]["serviceName"].as_str().expect("serviceName");
            let svc = find(&objects, "Service", name);
            assert_eq!(
                svc["spec"]["clusterIP"],
                "None",
                "{overlay}: the governing Service {name} of {} must be headless",
                id(sts)
            );
            assert!(
                selects(&string_map(&svc["spec"]["selector"]), &pod_labels(sts)),
                "{overlay}: {name} does not select the pods of {}",
                id(sts)
            );
            assert!(
                selects(
                    &string_map(&sts["spec"]["selector"]["matchLabels"]),
                    &pod_labels(sts)
                ),
                "{overlay}: {} selector does not match its own pods",
                id(sts)
            );
            let pdbs: Vec<_> = of_kind(&objects, "PodDisruptionBudget")
                .into_iter()
                .filter(|p| {
                    selects(
                        &string_map(&p["spec"]["selector"]["matchLabels"]),
                        &pod_labels(sts),
                    )
                })
                .collect();
            assert_eq!(
                pdbs.len(),
                1,
                "{overlay}: {} needs exactly one PodDisruptionBudget",
                id(sts)
            );
        }

        for np in of_kind(&objects, "NetworkPolicy") {
            let pods = selected(&string_map(&np["spec"]["podSelector"]["matchLabels"]));
            assert!(!pods.is_empty(), "{overlay}: {} selects no pods", id(np));
            for rule in np["spec"]["ingress"].as_array().into_iter().flatten() {
                for port in rule["ports"].as_array().into_iter().flatten() {
                    for w in &pods {
                        let ports = ports_of(w);
                        let ok = match &port["port"] {
                            Value::String(name) => ports.contains_key(name),
                            Value::Number(n) => ports.values().any(|p| Some(*p) == n.as_u64()),
                            _ => false,
                        };
                        assert!(
                            ok,
                            "{overlay}: {} allows port {} which {} does not expose",
                            id(np),
                            port["port"],
                            id(w)
                        );
                    }
                }
            }
        }
        // Every workload is covered by a NetworkPolicy, and every port it exposes is allowed
        // by one (a port nobody may reach is a port a probe or a sender will miss).
        for w in &workloads {
            let mut allowed = BTreeSet::new();
            for np in of_kind(&objects, "NetworkPolicy") {
                if !selects(
                    &string_map(&np["spec"]["podSelector"]["matchLabels"]),
                    &pod_labels(w),
                ) {
                    continue;
                }
                for rule in np["spec"]["ingress"].as_array().into_iter().flatten() {
                    for port in rule["ports"].as_array().into_iter().flatten() {
                        if let Some(p) = port["port"].as_str() {
                            allowed.insert(p.to_owned());
                        }
                    }
                }
            }
            let exposed: BTreeSet<String> = ports_of(w).into_keys().collect();
            assert_eq!(
                exposed,
                allowed,
                "{overlay}: ports of {} vs ports its NetworkPolicies allow",
                id(w)
            );
        }

        // Probes use named container ports.
        for w in &workloads {
            for c in containers(w) {
                let ports = container_ports(c);
                for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
                    if c[probe].is_null() {
                        continue;
                    }
                    let port = c[probe]["httpGet"]["port"].as_str().unwrap_or_else(|| {
                        panic!(
                            "{overlay}: {} {probe} is not an httpGet on a named port",
                            id(w)
                        )
                    });
                    assert!(
                        ports.contains_key(port),
                        "{overlay}: {} {probe} uses port {port} that the container lacks",
                        id(w)
                    );
                }
            }
        }

        // References to other objects resolve within the overlay.
        for w in &workloads {
            let spec = pod_spec(w);
            if let Some(sa) = spec["serviceAccountName"].as_str() {
                find(&objects, "ServiceAccount", sa);
            }
            if let Some(pc) = spec["priorityClassName"].as_str() {
                if !pc.starts_with("system-") {
                    find(&objects, "PriorityClass", pc);
                }
            }
            for v in spec["volumes"].as_array().into_iter().flatten() {
                if let Some(cm) = v["configMap"]["name"].as_str() {
                    find(&objects, "ConfigMap", cm);
                }
            }
        }
    }
}

/// What every logferry-aggregator StatefulSet needs (the edge's and the processors').
fn check_aggregator_workload(overlay: &str, sts: &Value) {
    let what = format!("{overlay}: {}", id(sts));
    let spec = &sts["spec"];
    assert_eq!(spec["podManagementPolicy"], "Parallel", "{what}");
    assert_eq!(spec["updateStrategy"]["type"], "RollingUpdate", "{what}");
    assert_eq!(
        spec["persistentVolumeClaimRetentionPolicy"]["whenScaled"], "Retain",
        "{what}: a scaled-down pod's buffer must be kept"
    );
    let claims = spec["volumeClaimTemplates"].as_array().expect("claims");
    assert_eq!(claims.len(), 1, "{what}");
    let pod = pod_spec(sts);
    assert!(
        pod["topologySpreadConstraints"].is_array()
            || pod["affinity"]["podAntiAffinity"].is_object(),
        "{what}: aggregators must spread over nodes"
    );
    let agg = container(sts, "aggregator");
    let sc = &agg["securityContext"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{what}");
    assert_eq!(sc["readOnlyRootFilesystem"], true, "{what}");
    assert_eq!(sc["allowPrivilegeEscalation"], false, "{what}");
    assert_eq!(
        sc["capabilities"]["drop"],
        serde_json::json!(["ALL"]),
        "{what}"
    );
    assert!(
        agg["lifecycle"]["preStop"]["sleep"]["seconds"].as_u64() >= Some(1),
        "{what}: the aggregator needs a preStop pause so it leaves the endpoints first"
    );
    for probe in ["livenessProbe", "readinessProbe"] {
        assert!(agg[probe].is_object(), "{what}: aggregator {probe}");
    }
    assert_eq!(
        agg["livenessProbe"]["httpGet"]["path"], "/healthz",
        "{what}"
    );
    assert_eq!(
        agg["readinessProbe"]["httpGet"]["path"], "/readyz",
        "{what}"
    );
    for kind in ["requests", "limits"] {
        for res in ["cpu", "memory"] {
            assert!(
                agg["resources"][kind][res].is_string(),
                "{what}: aggregator {kind}.{res}"
            );
        }
    }
}

#[test]
fn workloads_meet_the_deployment_requirements() {
    let Some(t) = tools() else { return };
    for overlay in OVERLAYS {
        let objects = overlay_objects(&t, overlay);
        for sts in aggregator_statefulsets(&objects) {
            check_aggregator_workload(overlay, sts);
        }

        let Some(ds) = of_kind(&objects, "DaemonSet").into_iter().next() else {
            assert_eq!(
                overlay, "aggregator-only",
                "only aggregator-only has no forwarders"
            );
            let ns = find(&objects, "Namespace", "logferry");
            assert_eq!(
                ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "restricted",
                "without forwarders the namespace stays restricted"
            );
            let lb: Vec<_> = of_kind(&objects, "Service")
                .into_iter()
                .filter(|s| s["spec"]["type"] == "LoadBalancer")
                .collect();
            assert_eq!(lb.len(), 1, "aggregator-only exposes one LoadBalancer");
            continue;
        };
        let ns = find(&objects, "Namespace", "logferry");
        assert_eq!(
            ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "privileged",
            "{overlay}: hostPath volumes need the privileged Pod Security level"
        );
        let pod = pod_spec(ds);
        assert_eq!(
            pod["tolerations"],
            serde_json::json!([{"operator": "Exists"}]),
            "{overlay}: the forwarder must tolerate every taint"
        );
        assert!(pod["priorityClassName"].is_string(), "{overlay}");
        assert_eq!(
            ds["spec"]["updateStrategy"]["rollingUpdate"]["maxSurge"], 0,
            "{overlay}: two forwarders must never share a node's buffer"
        );
        let fwd = container(ds, "forwarder");
        let sc = &fwd["securityContext"];
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{overlay}");
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{overlay}");
        assert_eq!(sc["privileged"], false, "{overlay}");
        assert_eq!(
            sc["capabilities"]["drop"],
            serde_json::json!(["ALL"]),
            "{overlay}"
        );
        assert!(
            sc["capabilities"]["add"].is_null(),
            "{overlay}: the forwarder adds no capability"
        );
        let node_name = fwd["env"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["name"] == "NODE_NAME")
            .unwrap_or_else(|| panic!("{overlay}: forwarder has no NODE_NAME"));
        assert_eq!(
            node_name["valueFrom"]["fieldRef"]["fieldPath"],
            "spec.nodeName"
        );
        let mounts = mounts(ds, fwd);
        let host = |path: &str| {
            mounts
                .iter()
                .find(|(m, _, _)| m == path)
                .unwrap_or_else(|| panic!("{overlay}: forwarder does not mount {path}"))
        };
        let (_, ro, vol) = host("/var/log");
        assert!(*ro, "{overlay}: /var/log must be read-only");
        assert_eq!(vol["hostPath"]["path"], "/var/log");
        let (_, ro, vol) = host("/var/lib/logferry");
        assert!(!*ro, "{overlay}: the buffer directory must be writable");
        assert_eq!(vol["hostPath"]["path"], "/var/lib/logferry");
        assert_eq!(fwd["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(fwd["readinessProbe"]["httpGet"]["path"], "/readyz");
        for kind in ["requests", "limits"] {
            for res in ["cpu", "memory"] {
                assert!(
                    fwd["resources"][kind][res].is_string(),
                    "{overlay}: forwarder {kind}.{res}"
                );
            }
        }
        // RBAC: read pods, nothing else, bound to the forwarder's own account.
        let role = find(&objects, "ClusterRole", "logferry-forwarder");
        let rules = role["rules"].as_array().expect("rules");
        for rule in rules {
            assert_eq!(rule["apiGroups"], serde_json::json!([""]), "{overlay}");
            for r in rule["resources"].as_array().expect("resources") {
                assert!(
                    r == "pods" || r == "namespaces",
                    "{overlay}: the forwarder may read pods (and namespaces) only, not {r}"
                );
            }
            for v in rule["verbs"].as_array().expect("verbs") {
                assert!(
                    ["get", "list", "watch"].contains(&v.as_str().unwrap_or("")),
                    "{overlay}: verb {v} is not read-only"
                );
            }
        }
        let binding = find(&objects, "ClusterRoleBinding", "logferry-forwarder");
        assert_eq!(binding["roleRef"]["name"], "logferry-forwarder");
        let subject = &binding["subjects"][0];
        assert_eq!(subject["kind"], "ServiceAccount");
        assert_eq!(subject["name"], pod["serviceAccountName"]);
        assert_eq!(subject["namespace"], ds["metadata"]["namespace"]);
    }
}

/// The aggregator's listeners, as `[server]` or `[[server]]`.
fn server_tables(config: &Value) -> Vec<&Value> {
    match &config["server"] {
        Value::Array(items) => items.iter().collect(),
        Value::Object(_) => vec![&config["server"]],
        _ => Vec::new(),
    }
}

/// Checks shared by both daemons: admin port, shutdown vs grace, paths on mounts, env refs.
fn check_daemon_config(
    overlay: &str,
    workload: &Value,
    container: &Value,
    config: &Value,
    config_path: &str,
) {
    let what = format!("{overlay}: {} config", id(workload));
    let ports = container_ports(container);
    let admin = config["admin"]["listen"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: admin.listen must be set (the default is loopback)"));
    assert!(
        admin.starts_with("0.0.0.0:") || admin.starts_with("[::]:"),
        "{what}: admin.listen {admin} must listen on all addresses for kubelet's probes"
    );
    assert_eq!(
        Some(&listen_port(admin)),
        ports.get("admin"),
        "{what}: admin.listen vs the container port `admin`"
    );
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        if !container[probe].is_null() {
            assert_eq!(
                container[probe]["httpGet"]["port"], "admin",
                "{what}: {probe} must query the admin listener"
            );
        }
    }

    // Grace period > preStop + shutdown_timeout.
    let shutdown = config_seconds(config["shutdown_timeout"].as_str().unwrap_or("25s"));
    let pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_f64()
        .unwrap_or(0.0);
    let grace = pod_spec(workload)["terminationGracePeriodSeconds"]
        .as_f64()
        .unwrap_or(30.0);
    assert!(
        grace >= pre_stop + shutdown + 5.0,
        "{what}: terminationGracePeriodSeconds {grace} must exceed preStop {pre_stop}s + shutdown_timeout {shutdown}s by 5s"
    );

    // Env references are set in the container.
    let env = env_names(container);
    for (key, value) in strings(config) {
        for var in env_refs(&value) {
            let is_env_name = var
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
            if is_env_name {
                assert!(
                    env.contains(&var),
                    "{what}: {key} uses ${{{var}}} but the container has no such variable ({env:?})"
                );
            }
        }
    }

    // Absolute paths are on mounted volumes; files from Secrets are keys of the Secret volume.
    let mounts = mounts(workload, container);
    for (key, value) in strings(config) {
        if !value.starts_with('/') || value.contains(' ') {
            continue;
        }
        let (mount, ro, volume) = mounts
            .iter()
            .filter(|(m, _, _)| is_under(&value, m))
            .max_by_key(|(m, _, _)| m.len())
            .unwrap_or_else(|| panic!("{what}: {key} = {value} is on no mounted volume"));
        if let Some(items) = volume["secret"]["items"].as_array() {
            let rel = value[mount.len()..].trim_start_matches('/');
            assert!(
                items.iter().any(|i| i["path"] == rel),
                "{what}: {key} = {value} is not among the Secret's items {items:?}"
            );
        }
        let writable = key.ends_with("path") && !key.starts_with("input");
        if writable {
            assert!(!ro, "{what}: {key} = {value} is on a read-only mount");
        }
    }
    assert!(
        mounts.iter().any(|(m, _, _)| is_under(config_path, m)),
        "{what}: --config {config_path} is not mounted"
    );
}

/// An aggregator StatefulSet's config against its pod: mounts, env, ports, the claim.
fn check_aggregator_config(t: &Tools, overlay: &str, objects: &[Value], sts: &Value) {
    let agg = container(sts, "aggregator");
    let (path, text) = workload_config(objects, sts, "aggregator");
    let config = toml_to_json(t, &text);
    check_daemon_config(overlay, sts, agg, &config, &path);
    let ports = container_ports(agg);
    // A listener is either on all addresses and a container port, or on loopback and not
    // exposed (the processors: the config needs a listener, their input is Kafka).
    let listen: BTreeSet<u64> = server_tables(&config)
        .iter()
        .filter_map(|s| {
            let l = s["listen"].as_str().expect("server.listen");
            if l.starts_with("127.0.0.1:") || l.starts_with("[::1]:") {
                return None;
            }
            assert!(
                l.starts_with("0.0.0.0:") || l.starts_with("[::]:"),
                "{overlay}: Forward listener {l} must listen on all addresses (or on loopback only)"
            );
            Some(listen_port(l))
        })
        .collect();
    let exposed: BTreeSet<u64> = ports
        .iter()
        .filter(|(name, _)| name.as_str() != "admin")
        .map(|(_, p)| *p)
        .collect();
    assert_eq!(
        listen, exposed,
        "{overlay}: Forward listeners in the config vs container ports"
    );
    // Every TLS listener has a certificate and key; the plain one is the in-cluster port.
    for s in server_tables(&config) {
        if !s["tls"].is_null() {
            assert!(s["tls"]["cert"].is_string() && s["tls"]["key"].is_string());
        }
    }
    // Anyone can reach a listener behind a LoadBalancer: without a per-source limit one
    // peer can hold every connection slot (docs/SECURITY.md recommends 16).
    let load_balancers = of_kind(objects, "Service").into_iter().filter(|s| {
        s["spec"]["type"] == "LoadBalancer"
            && selects(&string_map(&s["spec"]["selector"]), &pod_labels(sts))
    });
    for svc in load_balancers {
        for p in svc["spec"]["ports"].as_array().into_iter().flatten() {
            let port = match &p["targetPort"] {
                Value::String(name) => ports.get(name).copied(),
                other => other.as_u64(),
            }
            .unwrap_or_else(|| panic!("{overlay}: {} targets no container port", id(svc)));
            let listener = server_tables(&config)
                .into_iter()
                .find(|s| s["listen"].as_str().map(listen_port) == Some(port))
                .unwrap_or_else(|| panic!("{overlay}: no listener on port {port}"));
            let per_source = listener["max_connections_per_source"].as_u64().unwrap_or(0);
            let total = listener["max_connections"].as_u64().unwrap_or(1024);
            assert!(
                per_source > 0 && per_source < total,
                "{overlay}: the listener on port {port} behind the LoadBalancer {} needs \
                 max_connections_per_source (set: {per_source}, max_connections {total})",
                id(svc)
            );
        }
    }

    // The buffer is on the claim, and the buffers fit it with headroom.
    let claim = &sts["spec"]["volumeClaimTemplates"][0];
    let claim_name = claim["metadata"]["name"].as_str().expect("claim name");
    let claim_mount = agg["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["name"] == claim_name)
        .and_then(|m| m["mountPath"].as_str())
        .expect("the claim is mounted");
    let buffer_path = config["buffer"]["path"].as_str().expect("buffer.path");
    assert!(
        is_under(buffer_path, claim_mount),
        "{overlay}: buffer.path {buffer_path} is not on the claim mounted at {claim_mount}"
    );
    let claim_bytes = quantity_bytes(
        claim["spec"]["resources"]["requests"]["storage"]
            .as_str()
            .expect("storage request"),
    );
    let total_limit = config_bytes(
        config["buffer"]["total_limit_size"]
            .as_str()
            .unwrap_or("1GiB"),
    );
    let outputs = config["outputs"].as_object().expect("outputs");
    let dead_letters = |item: &Value| {
        if item["dead_letter"]["enabled"] == false {
            0
        } else {
            config_bytes(item["dead_letter"]["max_size"].as_str().unwrap_or("1GiB"))
        }
    };
    // A source's dead letters (poison messages) are on the claim too.
    let mut needed: u64 = config["sources"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(_, source)| dead_letters(source))
        .sum();
    for (name, output) in outputs {
        needed += total_limit + dead_letters(output);
        assert!(
            output["type"] != "file"
                || !is_under(output["path"].as_str().unwrap_or(""), claim_mount),
            "{overlay}: output {name} writes files onto the buffer volume"
        );
    }
    assert!(
        (needed as f64) <= 0.85 * claim_bytes as f64,
        "{overlay}: {} outputs x (total_limit_size + dead_letter.max_size) + sources' \
         dead_letter.max_size = {needed} bytes leave less than 15% of the {claim_bytes}-byte \
         claim for the dedupe index",
        outputs.len()
    );
}

#[test]
fn daemon_configs_agree_with_their_workloads() {
    let Some(t) = tools() else { return };
    for overlay in OVERLAYS {
        let objects = overlay_objects(&t, overlay);

        for sts in aggregator_statefulsets(&objects) {
            check_aggregator_config(&t, overlay, &objects, sts);
        }

        // Forwarder.
        let Some(ds) = of_kind(&objects, "DaemonSet").into_iter().next() else {
            continue;
        };
        let fwd = container(ds, "forwarder");
        let (path, text) = workload_config(&objects, ds, "forwarder");
        let config = toml_to_json(&t, &text);
        check_daemon_config(overlay, ds, fwd, &config, &path);
        let mounts = mounts(ds, fwd);
        let on_mount = |p: &str| {
            mounts
                .iter()
                .filter(|(m, _, _)| is_under(p, m))
                .max_by_key(|(m, _, _)| m.len())
                .unwrap_or_else(|| panic!("{overlay}: forwarder path {p} is on no mount"))
        };
        for p in config["input"]["paths"].as_array().expect("input.paths") {
            let p = p.as_str().expect("path");
            let (_, _, vol) = on_mount(p);
            assert!(
                vol["hostPath"].is_object(),
                "{overlay}: input path {p} is not on a hostPath volume"
            );
        }
        let buffer = config["buffer"]["path"].as_str().expect("buffer.path");
        let (_, ro, vol) = on_mount(buffer);
        assert!(
            vol["hostPath"].is_object() && !ro,
            "{overlay}: the forwarder's buffer {buffer} must be on a writable hostPath volume"
        );
        // Servers: the aggregators' headless Service, on its Forward port.
        for server in config["output"]["servers"].as_array().expect("servers") {
            let server = server.as_str().expect("host:port");
            let (host, port) = server.rsplit_once(':').expect("host:port");
            let svc_name = host.split('.').next().unwrap_or(host);
            let svc = find(&objects, "Service", svc_name);
            assert_eq!(
                svc["spec"]["clusterIP"], "None",
                "{overlay}: forwarders must resolve every aggregator (headless Service)"
            );
            let svc_port = svc["spec"]["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["name"] == "forward")
                .expect("a forward port");
            assert_eq!(
                svc_port["port"].as_u64(),
                port.parse().ok(),
                "{overlay}: output.servers {server} vs Service {svc_name}"
            );
            if let Some(ns) = host.split('.').nth(1) {
                assert_eq!(Some(ns), svc["metadata"]["namespace"].as_str());
            }
        }
        // The forwarder's own logs are excluded (they would loop back through it).
        let excluded = config["input"]["exclude"].to_string();
        assert!(
            excluded.contains("logferry-forwarder"),
            "{overlay}: exclude the forwarder's own logs"
        );
    }
}

#[test]
fn every_secret_the_overlays_need_is_documented() {
    let Some(t) = tools() else { return };
    let docs = std::fs::read_to_string(logferry_e2e::workspace_root().join("docs/DEPLOY.md"))
        .expect("docs/DEPLOY.md");
    let mut needed: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for overlay in OVERLAYS {
        let objects = overlay_objects(&t, overlay);
        assert!(
            of_kind(&objects, "Secret").is_empty(),
            "{overlay}: secrets must not be committed; document how to create them"
        );
        for w in workloads(&objects) {
            for c in containers(w) {
                for e in c["env"].as_array().into_iter().flatten() {
                    let r = &e["valueFrom"]["secretKeyRef"];
                    if let (Some(n), Some(k)) = (r["name"].as_str(), r["key"].as_str()) {
                        needed.entry(n.into()).or_default().insert(k.into());
                    }
                }
            }
            for v in pod_spec(w)["volumes"].as_array().into_iter().flatten() {
                if let Some(n) = v["secret"]["secretName"].as_str() {
                    let keys = needed.entry(n.into()).or_default();
                    for i in v["secret"]["items"].as_array().into_iter().flatten() {
                        keys.insert(i["key"].as_str().unwrap_or("").into());
                    }
                }
            }
        }
    }
    assert!(needed.len() >= 3, "secrets found: {needed:?}");
    for (name, keys) in &needed {
        // The doc's `kubectl create secret` line names the Secret and each key.
        let line = docs
            .lines()
            .find(|l| l.contains("kubectl") && l.contains("create secret") && l.contains(name))
            .unwrap_or_else(|| {
                panic!("docs/DEPLOY.md has no `kubectl ... create secret ... {name}` line")
            });
        let block: String = docs[docs.find(line).unwrap_or(0)..]
            .lines()
            .take_while(|l| !l.trim().is_empty() && !l.starts_with("```"))
            .collect::<Vec<_>>()
            .join("\n");
        for key in keys {
            assert!(
                block.contains(key.as_str()),
                "docs/DEPLOY.md: the command creating {name} does not set key {key}:\n{block}"
            );
        }
    }
}

#[test]
fn monitoring_renders_and_selects_the_workloads() {
    let Some(t) = tools() else { return };
    let objects = yaml_objects(&t, &render(&t, "monitoring"));
    // The plain objects validate against the schemas; the Operator's kinds are checked below.
    let plain: Vec<&Value> = objects.iter().filter(|o| o["apiVersion"] == "v1").collect();
    assert_eq!(
        plain.len(),
        1,
        "the dashboard ConfigMap: {:?}",
        ids(&objects)
    );
    let dash = find(&objects, "ConfigMap", "logferry-grafana-dashboard");
    assert_eq!(dash["metadata"]["labels"]["grafana_dashboard"], "1");
    let embedded: Value = serde_json::from_str(
        dash["data"]["logferry.json"]
            .as_str()
            .expect("dashboard key"),
    )
    .expect("the embedded dashboard is JSON");
    assert_eq!(embedded, dashboard());
    let (_dir, file) = temp_file(
        "plain.json",
        &serde_json::to_string(plain[0]).expect("JSON"),
    );
    let out = run(
        Command::new(t.venv_tool("kubernetes-validate"))
            .args(["--strict", "-k", KUBERNETES_VERSIONS[1]])
            .arg(&file),
        None,
        Duration::from_secs(120),
    );
    assert!(
        out.status.success() && text(&out).contains("passed for resource"),
        "{}",
        text(&out)
    );

    let rule = find(&objects, "PrometheusRule", "logferry");
    let alerts = yaml_files(&t, &[&deploy_dir().join("monitoring/alerts.yaml")]);
    assert_eq!(
        rule["spec"]["groups"], alerts[0]["doc"]["groups"],
        "prometheusrule.yaml and alerts.yaml must hold the same groups"
    );

    for overlay in OVERLAYS {
        let deployed = overlay_objects(&t, overlay);
        // ServiceMonitor: exactly the headless Service of each aggregator StatefulSet (one
        // target per pod; kafka-tier has the edge's and the processors'), with the admin port.
        let sm = find(&objects, "ServiceMonitor", "logferry-aggregator");
        let sel = string_map(&sm["spec"]["selector"]["matchLabels"]);
        let services: Vec<&Value> = of_kind(&deployed, "Service")
            .into_iter()
            .filter(|s| selects(&sel, &string_map(&s["metadata"]["labels"])))
            .collect();
        let scraped: BTreeSet<String> = services.iter().map(|s| id(s)).collect();
        let governing: BTreeSet<String> = of_kind(&deployed, "StatefulSet")
            .into_iter()
            .map(|sts| {
                format!(
                    "Service/{}",
                    sts["spec"]["serviceName"].as_str().unwrap_or("")
                )
            })
            .collect();
        assert_eq!(
            scraped, governing,
            "{overlay}: the ServiceMonitor must select the StatefulSets' headless Services"
        );
        let port = sm["spec"]["endpoints"][0]["port"].as_str().expect("port");
        let job_label = sm["spec"]["jobLabel"].as_str().expect("jobLabel");
        for svc in &services {
            assert!(
                svc["spec"]["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|p| p["name"] == port),
                "{overlay}: the scraped {} has no port {port}",
                id(svc)
            );
            assert_eq!(
                svc["metadata"]["labels"][job_label],
                "logferry-aggregator",
                "{overlay}: job of {} must be logferry-aggregator, as the alerts expect",
                id(svc)
            );
        }
        // PodMonitor: the forwarder pods' admin port.
        if let Some(ds) = of_kind(&deployed, "DaemonSet").into_iter().next() {
            let pm = find(&objects, "PodMonitor", "logferry-forwarder");
            assert!(selects(
                &string_map(&pm["spec"]["selector"]["matchLabels"]),
                &pod_labels(ds)
            ));
            let port = pm["spec"]["podMetricsEndpoints"][0]["port"]
                .as_str()
                .expect("port");
            assert!(container_ports(container(ds, "forwarder")).contains_key(port));
            assert_eq!(
                pod_labels(ds).get(pm["spec"]["jobLabel"].as_str().expect("jobLabel")),
                Some(&"logferry-forwarder".to_owned())
            );
        }
        // The plain scrape config keeps pods labelled part-of=logferry on their `admin` port.
        for w in workloads(&deployed) {
            assert_eq!(
                pod_labels(w)
                    .get("app.kubernetes.io/part-of")
                    .map(String::as_str),
                Some("logferry"),
                "{overlay}: {} pods lack the label scrape-config.yaml keeps",
                id(w)
            );
            assert!(containers(w)
                .iter()
                .any(|c| container_ports(c).contains_key("admin")));
        }
    }
}

#[test]
fn alert_rules_and_dashboard_queries_parse() {
    let Some(t) = tools() else { return };
    let alerts = alert_exprs(&t);
    let dashboard = dashboard_exprs();
    assert!(alerts.len() >= 10 && dashboard.len() >= 20);
    let all: Vec<String> = alerts
        .iter()
        .chain(&dashboard)
        .map(|(_, e)| e.clone())
        .collect();
    let parsed = promql(&t, &all);
    let names: Vec<&String> = alerts.iter().chain(&dashboard).map(|(n, _)| n).collect();
    let errors: Vec<String> = parsed
        .iter()
        .zip(&names)
        .filter(|(p, _)| !p["error"].is_null())
        .map(|(p, n)| format!("{n}: {} in {}", p["error"], p["expr"]))
        .collect();
    assert!(errors.is_empty(), "PromQL errors:\n{}", errors.join("\n"));

    // The parser does reject bad PromQL (the check above can fail).
    let bad = promql(&t, &["sum by (x (rate(y[5m]))".to_owned()]);
    assert!(!bad[0]["error"].is_null(), "{bad:?}");

    // Each rule says how bad it is and what it means; the alerts the issue asks for exist.
    let file = deploy_dir().join("monitoring/alerts.yaml");
    let docs = yaml_files(&t, &[&file]);
    let mut alert_names = BTreeSet::new();
    for group in docs[0]["doc"]["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let name = rule["alert"].as_str().expect("alert");
            alert_names.insert(name.to_owned());
            assert!(
                ["critical", "warning"]
                    .contains(&rule["labels"]["severity"].as_str().unwrap_or("")),
                "{name}: severity"
            );
            assert!(
                rule["annotations"]["summary"].is_string(),
                "{name}: summary"
            );
            assert!(
                rule["annotations"]["description"].is_string(),
                "{name}: description"
            );
            if let Some(d) = rule["for"].as_str() {
                config_seconds(d);
            }
        }
    }
    let deploy_doc = std::fs::read_to_string(logferry_e2e::workspace_root().join("docs/DEPLOY.md"))
        .expect("docs/DEPLOY.md");
    for name in &alert_names {
        assert!(
            deploy_doc.contains(name.as_str()),
            "docs/DEPLOY.md does not explain alert {name}"
        );
    }

    // Dashboard: unique panel ids, every panel on the Prometheus data source variable,
    // panels inside the 24-column grid without overlaps.
    let dash = logferry_e2e::deploy::dashboard();
    let mut ids = BTreeSet::new();
    let mut cells = BTreeSet::new();
    for p in dash["panels"].as_array().expect("panels") {
        assert!(
            ids.insert(p["id"].as_u64().expect("id")),
            "duplicate id {}",
            p["id"]
        );
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64().expect("x"),
            g["y"].as_u64().expect("y"),
            g["w"].as_u64().expect("w"),
            g["h"].as_u64().expect("h"),
        );
        assert!(x + w <= 24, "panel {} is wider than the grid", p["title"]);
        for cx in x..x + w {
            for cy in y..y + h {
                assert!(
                    cells.insert((cx, cy)),
                    "panel {} overlaps another",
                    p["title"]
                );
            }
        }
        if p["type"] != "row" {
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        }
    }
}
