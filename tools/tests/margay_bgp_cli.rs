//! `margay-bgp` refuses bad configuration with an error that names the file
//! and what is wrong, and exits non-zero, before it touches any socket.
//! (Being a test of this package also makes `cargo test --workspace` build
//! the binary, which the BGP interop suites and `bench_bgp` / `bench_rr`
//! run.)

use std::process::Command;

fn run(config: &std::path::Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_margay-bgp"))
        .arg("--config")
        .arg(config)
        .output()
        .expect("run margay-bgp");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_missing_config_file_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("absent.yaml");
    let (ok, err) = run(&path);
    assert!(!ok, "must fail");
    assert!(err.contains("absent.yaml"), "{err}");
}

#[test]
fn malformed_and_unknown_keys_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "local_as: 65001\nrouter_id: 198.18.0.11\npeers: []\nbogus: 1\n",
    )
    .expect("write");
    let (ok, err) = run(&path);
    assert!(!ok, "must fail");
    assert!(err.contains("bad.yaml") && err.contains("bogus"), "{err}");
    std::fs::write(&path, "local_as: [\n").expect("write");
    let (ok, err) = run(&path);
    assert!(!ok, "must fail");
    assert!(err.contains("parsing"), "{err}");
}
