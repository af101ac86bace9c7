//! vidx's element-wise CUDA kernels checked without a GPU: `kernels/elementwise.cu` is compiled
//! for the CPU by the system's C++ compiler inside `tests/kernels/elementwise_host.cpp`, which
//! runs each GPU thread as a CPU thread and compares every kernel with a plain loop on both of
//! its paths (16 bytes per access and one value per access). The same source the `cuda`
//! feature compiles to PTX, so an indexing mistake fails here in CI, not only on a GPU.

use std::path::Path;
use std::process::Command;

#[test]
fn element_wise_kernels_match_plain_loops_on_the_cpu() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let source = std::fs::read_to_string(root.join("kernels/elementwise.cu"))
        .expect("reading kernels/elementwise.cu");
    // The kernels live in an anonymous namespace; the `extern "C"` entry points after it are
    // CUDA-only and the header is replaced by the harness's CPU stand-ins.
    let end = source
        .find("}  // namespace")
        .expect("elementwise.cu closes its anonymous namespace");
    let body = source[..end + "}  // namespace".len()].replace("#include \"precision.cuh\"", "");
    let work = tempfile::tempdir().expect("temp dir");
    std::fs::write(work.path().join("elementwise_body.inc"), body).expect("writing the kernels");
    let binary = work.path().join("elementwise_host");
    let compiler = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let built = Command::new(&compiler)
        .args(["-std=c++20", "-O1", "-pthread", "-I"])
        .arg(work.path())
        .arg(root.join("tests/kernels/elementwise_host.cpp"))
        .arg("-o")
        .arg(&binary)
        .output()
        .unwrap_or_else(|error| {
            panic!("running {compiler} (scripts/setup.sh installs g++): {error}")
        });
    assert!(
        built.status.success(),
        "{compiler} failed:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let run = Command::new(&binary).output().expect("running the kernels");
    let report = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "kernel cases failed:\n{report}");
    // Every kernel ran on both paths.
    for case in [
        "epilogue 7x200",
        "epilogue 7x36",
        "swiglu 5x304",
        "swiglu 5x300",
        "rope 2x5x3x8",
        "rope 2x5x3x6",
        "norm 11x1024",
        "norm 11x36",
    ] {
        assert!(report.contains(case), "no {case} case in:\n{report}");
    }
    assert!(report.contains("0 failures"), "{report}");
}
