//! Tenant pipelines.

pub mod transform;
