//! vidx's CUDA kernels checked without a GPU: the kernels' source is compiled for the CPU by
//! the system's C++ compiler inside the harnesses of `tests/kernels/` (`host.h`: each GPU
//! thread a CPU thread, shared memory and warp-wide operations at barriers; the attention
//! harness adds CPU versions of ldmatrix, mma.sync and cp.async) and compared with plain loops.
//! It is the same source the `cuda` feature compiles to PTX, so an indexing mistake fails here
//! in CI, not only on a GPU.

use std::path::Path;
use std::process::Command;

/// Compiles `tests/kernels/{harness}.cpp` around the anonymous namespace of `kernels/{kernel}.cu`
/// and runs it; returns its report after checking that it exited cleanly.
fn run_on_cpu(kernel: &str, harness: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = root.join(format!("kernels/{kernel}.cu"));
    let source = std::fs::read_to_string(&path).expect("reading the kernel source");
    // The `extern "C"` entry points after the namespace are CUDA-only; the header is replaced
    // by the harness's stand-ins.
    let marker = "}  // namespace";
    let end = source
        .find(marker)
        .expect("the kernel closes its anonymous namespace")
        + marker.len();
    let body = source[..end].replace("#include \"precision.cuh\"", "");
    let work = tempfile::tempdir().expect("temp dir");
    std::fs::write(work.path().join("kernel_body.inc"), body).expect("writing the kernel");
    let binary = work.path().join(harness);
    let compiler = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let built = Command::new(&compiler)
        .args(["-std=c++20", "-O1", "-pthread", "-I"])
        .arg(work.path())
        .arg(root.join(format!("tests/kernels/{harness}.cpp")))
        .arg("-o")
        .arg(&binary)
        .output()
        .unwrap_or_else(|error| {
            panic!("running {compiler} (scripts/setup-test.sh installs g++): {error}")
        });
    assert!(
        built.status.success(),
        "{compiler} failed on {harness}:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let run = Command::new(&binary).output().expect("running the harness");
    let report = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(run.status.success(), "{harness}: cases failed:\n{report}");
    assert!(report.contains("0 failures"), "{report}");
    report
}

#[test]
fn element_wise_kernels_match_plain_loops_on_the_cpu() {
    let report = run_on_cpu("elementwise", "elementwise_host");
    // Every kernel ran on both paths (16 bytes and one value per access).
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
}

#[test]
fn mma_attention_kernel_matches_softmax_attention_on_the_cpu() {
    let report = run_on_cpu("attention_mma", "attention_host");
    for case in ["prefill causal", "decode", "vision"] {
        assert!(
            report.contains(&format!("attention {case} ")),
            "no {case} case in:\n{report}"
        );
    }
}
