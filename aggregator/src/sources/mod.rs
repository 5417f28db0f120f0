//! Sources: inputs besides the Forward listeners, configured as `[sources.NAME]`. A source
//! stores what it takes through the ingest room (`crate::ingest`) like a Forward connection,
//! and acknowledges upstream only what its commit tickets made durable.
//!
//! - `kafka` (cargo feature `kafka`): a consumer-group member; offsets are stored once the
//!   records are durable.
//!
//! Sources start after the outputs and tenant pipelines (so a record has somewhere to go) and
//! stop before the buffers close, draining what they have in flight.

#[cfg(feature = "kafka")]
pub mod kafka;

use std::sync::Arc;

use crate::config::{Config, SourceConfig};
use crate::ingest::Pipeline;

/// Why a source could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// A Kafka source.
    #[cfg(feature = "kafka")]
    #[error(transparent)]
    Kafka(#[from] kafka::KafkaSourceError),
    /// This build has no such source (validation reports it first).
    #[error("source {0}: this build has no such source type")]
    Unsupported(String),
}

/// The running sources.
#[derive(Debug, Default)]
pub struct Sources {
    #[cfg(feature = "kafka")]
    kafka: Vec<kafka::KafkaSource>,
}

/// The directory of a source's own files (its dead letters): `<buffer.path>/sources/<name>`.
pub fn dir(config: &Config, name: &str) -> std::path::PathBuf {
    config.buffer.path.join("sources").join(name)
}

impl Sources {
    /// Starts every `[sources.NAME]` of `config`, storing through `pipeline`.
    pub fn start(config: &Config, pipeline: &Arc<Pipeline>) -> Result<Sources, SourceError> {
        #[cfg(feature = "kafka")]
        let kafka = config
            .sources
            .iter()
            .map(|(name, source)| match source {
                SourceConfig::Kafka(c) => kafka::KafkaSource::start(
                    name,
                    c,
                    Arc::clone(pipeline),
                    dir(config, name),
                    config.server.max_decompressed_bytes().bytes() as usize,
                ),
            })
            .collect::<Result<Vec<_>, _>>()?;
        #[cfg(not(feature = "kafka"))]
        if let Some((name, SourceConfig::Kafka(_))) = config.sources.iter().next() {
            let _ = pipeline;
            return Err(SourceError::Unsupported(name.clone()));
        }
        Ok(Sources {
            #[cfg(feature = "kafka")]
            kafka,
        })
    }

    /// Checks that each source of `config` can reach what it consumes from (blocking; for
    /// `validate --check-outputs`): one `(name, result)` per source.
    pub fn check(config: &Config) -> Vec<(String, Result<String, String>)> {
        config
            .sources
            .iter()
            .map(|(name, source)| {
                let result = match source {
                    #[cfg(feature = "kafka")]
                    SourceConfig::Kafka(c) => kafka::check(c, std::time::Duration::from_secs(10)),
                    #[cfg(not(feature = "kafka"))]
                    SourceConfig::Kafka(_) => Err("this build has no kafka source".to_owned()),
                };
                (name.clone(), result)
            })
            .collect()
    }

    /// Stops every source: each stops taking data, drains what it has in flight and tells
    /// upstream what is durable.
    pub async fn shutdown(self) {
        #[cfg(feature = "kafka")]
        for source in self.kafka {
            source.shutdown().await;
        }
    }
}
