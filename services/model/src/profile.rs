//! Opt-in stage timing for benchmarks (`VIDX_PROFILE=1`): each stage synchronises the device
//! before and after it, so on a GPU the stages add up to the wall time (and the run is slower
//! than without). Off by default, when a stage costs one check of a cached flag.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use candle_core::{Device, Result};

fn enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var_os("VIDX_PROFILE").is_some_and(|value| value != "0"))
}

fn totals() -> &'static Mutex<BTreeMap<&'static str, (f64, u64)>> {
    static TOTALS: OnceLock<Mutex<BTreeMap<&'static str, (f64, u64)>>> = OnceLock::new();
    TOTALS.get_or_init(|| Mutex::new(BTreeMap::new()))
}

/// Run `work` as the stage `name` on `device`: timed (and synchronised) when profiling.
pub fn stage<T>(
    name: &'static str,
    device: &Device,
    work: impl FnOnce() -> Result<T>,
) -> Result<T> {
    if !enabled() {
        return work();
    }
    device.synchronize()?;
    let started = Instant::now();
    let output = work()?;
    device.synchronize()?;
    let secs = started.elapsed().as_secs_f64();
    if let Ok(mut totals) = totals().lock() {
        let entry = totals.entry(name).or_insert((0.0, 0));
        entry.0 += secs;
        entry.1 += 1;
    }
    Ok(output)
}

/// The totals so far (stage, seconds, calls), which are reset.
pub fn take() -> Vec<(&'static str, f64, u64)> {
    totals()
        .lock()
        .map(|mut totals| {
            std::mem::take(&mut *totals)
                .into_iter()
                .map(|(name, (secs, calls))| (name, secs, calls))
                .collect()
        })
        .unwrap_or_default()
}
