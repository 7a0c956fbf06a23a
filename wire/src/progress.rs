//! Progress reporting, passed into archive and restore code.

/// Receives progress of long operations. Calls must be cheap and never
/// block: implementations drop events rather than slow the data path.
pub trait Progress: Send + Sync {
    /// A new step starts, e.g. "data". A non-zero `total` is the bytes the
    /// step expects and restarts the count; 0 continues the previous count.
    fn step(&self, _step: &str, _total: u64) {}
    /// `bytes` more bytes of the current step are done.
    fn advance(&self, _bytes: u64) {}
}

/// Reports nothing.
pub struct NoProgress;

impl Progress for NoProgress {}
