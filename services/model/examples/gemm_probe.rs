use candle_core::{Device, Tensor};
use std::time::Instant;
fn main() -> candle_core::Result<()> {
    let d = Device::Cpu;
    for (m, k, n) in [
        (2048usize, 1024usize, 8192usize),
        (2048, 4096, 1024),
        (2048, 1024, 2048),
    ] {
        let x = Tensor::randn(0f32, 1.0, (1, m, k), &d)?;
        let w = Tensor::randn(0f32, 1.0, (n, k), &d)?;
        let lin = candle_nn::Linear::new(w, None);
        use candle_core::Module;
        let _ = lin.forward(&x)?;
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t = Instant::now();
            let y = lin.forward(&x)?;
            let _ = y.dims();
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!(
            "{m}x{k}x{n}: {:.1} ms {:.1} GFLOP/s",
            best * 1e3,
            2.0 * (m * k * n) as f64 / best / 1e9
        );
    }
    Ok(())
}
