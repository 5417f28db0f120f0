//! Harness for logferry's whole-system tests. One module per concern; the items the test files
//! use most are re-exported here.
//!
//! - [`build`]: workspace binaries (built with cargo first), fixtures, external tools.
//! - [`process`]: child processes that never outlive a test, polling.
//! - [`aggregator`]: a `logferry-aggregator` per test, from a generated config.
//! - [`load`]: `logferry-loadtest` command lines ([`Load`]).
//! - [`http`]: the admin endpoint and `/metrics`.
//! - [`output`]: what the file output holds.
//! - [`client`]: a Forward client for hand-made requests (TLS, auth, acks).
//! - [`chunks`]: chunk files of a buffer directory.
//! - [`pki`]: throwaway certificate authorities.
//! - [`forwarder`], [`services`], [`deploy`]: `logferry-forwarder`, external services
//!   (Kafka, Elasticsearch, ...) and the Kubernetes deployment.

pub mod aggregator;
pub mod build;
pub mod chunks;
pub mod client;
pub mod deploy;
pub mod forwarder;
pub mod http;
pub mod load;
pub mod output;
pub mod pki;
pub mod process;
pub mod services;

pub use aggregator::{listening_line, toml_path, Aggregator, AggregatorConfig};
pub use build::{
    aggregator_bin, binary, external_tool, fixture, loadtest_bin, profile_dir, workspace_root,
};
pub use http::{http_get, http_post, metric, metric_value, metrics};
pub use load::Load;
pub use output::{
    assert_expected_records, output_files, read_output, unique_id, unix_nanos, wait_for_lines,
    wait_for_records, SeqCount,
};
pub use pki::TestPki;
pub use process::{proc_status_kib, run_checked, wait_until, Background};
