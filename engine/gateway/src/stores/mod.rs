//! State stores behind the core's store traits. The embedded default keeps everything in memory;
//! Redis and PostgreSQL stores plug in behind the same traits.

pub mod memory;
pub mod redis;
pub mod spend;
