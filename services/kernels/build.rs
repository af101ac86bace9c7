//! With the `cuda` feature: compiles `kernels/*.cu` to PTX with the CUDA toolkit's `nvcc`
//! (`$CUDA_ROOT/bin/nvcc`, else `nvcc` on `PATH`) for `CUDA_COMPUTE_CAP` (default 80: the
//! kernels use bf16 tensor cores), into `OUT_DIR`, where `src/attention.rs` and
//! `src/elementwise.rs` embed it.
//! Without the feature it does nothing.

use std::path::PathBuf;
use std::process::Command;

const KERNELS: &[&str] = &["attention", "attention_mma", "elementwise"];

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=CUDA_ROOT");
    println!("cargo::rerun-if-env-changed=CUDA_COMPUTE_CAP");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let nvcc = std::env::var_os("CUDA_ROOT")
        .map(|root| PathBuf::from(root).join("bin/nvcc"))
        .filter(|path| path.is_file())
        .unwrap_or_else(|| PathBuf::from("nvcc"));
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "80".into());
    let cap: u32 = cap
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("CUDA_COMPUTE_CAP={cap}: expected a number such as 90"));
    if cap < 80 {
        panic!("CUDA_COMPUTE_CAP={cap}: vidx's attention kernel needs bf16 tensor cores (80+)");
    }
    println!("cargo::rerun-if-changed=kernels/precision.cuh");
    for kernel in KERNELS {
        let source = format!("kernels/{kernel}.cu");
        println!("cargo::rerun-if-changed={source}");
        let status = Command::new(&nvcc)
            .args(["--ptx", "-O3", "-std=c++17", &format!("-arch=sm_{cap}")])
            .arg("-o")
            .arg(out.join(format!("{kernel}.ptx")))
            .arg(&source)
            .status()
            .unwrap_or_else(|error| {
                panic!(
                    "running {} for {source}: {error} (set CUDA_ROOT, see scripts/setup-cuda.sh)",
                    nvcc.display()
                )
            });
        if !status.success() {
            panic!("{} failed on {source}: {status}", nvcc.display());
        }
    }
}
