//! Reads every message of a Kafka topic for `verify --kafka`.
//!
//! No consumer group is joined (brokers such as Tansu take long to settle a new group, and a
//! verifier must not move anyone's committed offsets): the partitions are assigned explicitly from
//! their low watermark and read up to the high watermark taken at the start and then until the
//! topic has been quiet for a second, so the read ends on its own. Values may be JSON or msgpack (`format = "msgpack"` of the Kafka output); msgpack is
//! transcoded to JSON with the project's own transcoder and then counted like any document.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};

use super::Tally;

/// How long one metadata or watermark request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The read ends once every partition reached its high watermark and no message came for this
/// long. Watermarks alone are not trusted: some Kafka-compatible brokers (Tansu) report the
/// high watermark of a partition as one past the last record batch's base offset.
const QUIET: Duration = Duration::from_secs(1);

/// Counts one message value.
pub fn count_value(t: &mut Tally, run_id: &str, value: &[u8], scratch: &mut Vec<u8>) {
    let first = value.iter().copied().find(|b| !b.is_ascii_whitespace());
    match first {
        // fixmap, map16, map32: a msgpack record.
        Some(0x80..=0x8f | 0xde | 0xdf) => {
            scratch.clear();
            match logferry_common::msgpack::write_json(value, scratch) {
                Ok(_) => t.json(run_id, scratch),
                Err(_) => {
                    t.documents += 1;
                    t.malformed += 1;
                }
            }
        }
        _ => t.json(run_id, value),
    }
}

/// Adds every message of `topic` to `t`.
pub fn read(
    t: &mut Tally,
    run_id: &str,
    brokers: &str,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("logferry-verify-{run_id}"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .create()
        .context("creating the Kafka consumer")?;
    let md = consumer
        .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
        .with_context(|| format!("fetching the metadata of topic {topic} from {brokers}"))?;
    let Some(tmd) = md.topics().iter().find(|x| x.name() == topic) else {
        bail!("topic {topic} not found at {brokers}");
    };
    if let Some(e) = tmd.error() {
        bail!("topic {topic} at {brokers}: {e:?}");
    }
    let mut assignment = TopicPartitionList::new();
    // (partition, high watermark) still to read.
    let mut remaining: Vec<(i32, i64)> = Vec::new();
    for p in tmd.partitions() {
        let (low, high) = consumer
            .fetch_watermarks(topic, p.id(), REQUEST_TIMEOUT)
            .with_context(|| format!("fetching the offsets of {topic}/{}", p.id()))?;
        if high > low {
            assignment
                .add_partition_offset(topic, p.id(), Offset::Offset(low))
                .context("building the assignment")?;
            remaining.push((p.id(), high));
        }
    }
    if remaining.is_empty() {
        return Ok(());
    }
    consumer
        .assign(&assignment)
        .context("assigning the partitions")?;
    let mut scratch = Vec::new();
    let mut last_message = Instant::now();
    while !remaining.is_empty() || last_message.elapsed() < QUIET {
        if Instant::now() >= deadline {
            let left: Vec<String> = remaining
                .iter()
                .map(|(p, h)| format!("{topic}/{p} up to offset {h}"))
                .collect();
            bail!(
                "gave up after {timeout:?} still reading {}",
                left.join(", ")
            );
        }
        let Some(msg) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let msg = msg.context("reading a message")?;
        last_message = Instant::now();
        match msg.payload() {
            Some(v) => count_value(t, run_id, v, &mut scratch),
            None => {
                t.documents += 1;
                t.malformed += 1;
            }
        }
        let (p, off) = (msg.partition(), msg.offset());
        remaining.retain(|&(rp, high)| !(rp == p && off + 1 >= high));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::Expect;

    #[test]
    fn counts_json_and_msgpack_values() {
        let mut t = Tally::default();
        let mut scratch = Vec::new();
        count_value(&mut t, "r", br#"{"run_id":"r","seq":0}"#, &mut scratch);
        let mut mp = Vec::new();
        rmp::encode::write_map_len(&mut mp, 3).unwrap();
        rmp::encode::write_str(&mut mp, "run_id").unwrap();
        rmp::encode::write_str(&mut mp, "r").unwrap();
        rmp::encode::write_str(&mut mp, "seq").unwrap();
        rmp::encode::write_uint(&mut mp, 1).unwrap();
        rmp::encode::write_str(&mut mp, "pod").unwrap();
        rmp::encode::write_str(&mut mp, "p").unwrap();
        count_value(&mut t, "r", &mp, &mut scratch);
        count_value(&mut t, "r", &[0x81, 0xa3], &mut scratch); // torn msgpack
        count_value(&mut t, "r", b"not json", &mut scratch);
        let r = t.report("r", "kafka", &Expect::Seen);
        assert_eq!(r.documents, 4);
        assert_eq!(r.malformed_lines, 2);
        assert_eq!(r.received, 2);
        assert_eq!(
            r.sources
                .iter()
                .map(|s| s.source.as_str())
                .collect::<Vec<_>>(),
            vec!["-", "p"]
        );
    }

    /// Against a real broker (Tansu): produces a run with a gap and a duplicate to a fresh
    /// 3-partition topic and reads it back.
    #[test]
    fn reads_a_topic_from_a_real_broker() {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
        let Some(broker) = crate::test_support::Broker::start() else {
            return;
        };
        let brokers = broker.addr.clone();
        let topic = format!("verify-{}", crate::forward::random_run_id());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let admin: AdminClient<_> = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .unwrap();
        let created = rt
            .block_on(admin.create_topics(
                &[NewTopic::new(&topic, 3, TopicReplication::Fixed(1))],
                &AdminOptions::new(),
            ))
            .unwrap();
        assert!(created.iter().all(|r| r.is_ok()), "{created:?}");
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .unwrap();
        for seq in (0..300u64).filter(|s| *s != 42).chain([7]) {
            let v = format!(r#"{{"run_id":"kr","seq":{seq},"log":"x"}}"#);
            let key = seq.to_string();
            let mut tries = 0;
            while let Err((e, _)) = producer.send(BaseRecord::to(&topic).key(&key).payload(&v)) {
                tries += 1;
                assert!(tries < 1000, "{e}");
                producer.poll(Duration::from_millis(10));
            }
        }
        producer.flush(Duration::from_secs(30)).unwrap();
        let mut t = Tally::default();
        read(&mut t, "kr", &brokers, &topic, Duration::from_secs(60)).unwrap();
        let r = t.report("kr", "kafka", &Expect::PerSource(300));
        assert_eq!(r.received, 300);
        assert_eq!(r.duplicates, 1);
        assert_eq!(r.missing, 1);
        assert_eq!(r.missing_ranges, vec![[42, 42]]);
        // An unknown topic is an error, or (on a broker that creates topics on demand) empty.
        let mut t = Tally::default();
        let unknown = format!("{topic}-unknown");
        if read(&mut t, "kr", &brokers, &unknown, Duration::from_secs(20)).is_ok() {
            assert_eq!(t.documents, 0);
        }
    }
}
