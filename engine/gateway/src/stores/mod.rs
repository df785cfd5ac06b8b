//! State stores behind the core's store traits. The embedded default keeps everything in memory;
//! Redis and PostgreSQL stores plug in behind the same traits.

pub mod memory;
pub mod redis;
pub mod spend;

/// The plugins' timer: tokio's, on the worker's own runtime.
#[derive(Debug, Clone, Copy)]
pub struct TokioTimer;

#[async_trait::async_trait]
impl sluice_core::limits::Timer for TokioTimer {
    async fn sleep(&self, d: std::time::Duration) {
        tokio::time::sleep(d).await;
    }
}
