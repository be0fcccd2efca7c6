//! The figures' arithmetic every benchmark example shares (included with `#[path]`).
#![allow(dead_code)]

use std::time::Duration;

/// The `p` quantile (0..=1) of `samples`, nearest rank; sorts them.
pub fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort_unstable();
    let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[index.min(samples.len() - 1)]
}

/// A duration in milliseconds, as printed in the tables.
pub fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}
