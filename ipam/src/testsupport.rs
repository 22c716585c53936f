//! Shared by the test suites of every crate that depends on `ipam` (the
//! CNI plugin, the agent, the integration tests): the record of skipped
//! tests that `scripts/test` prints at the end of a run.

/// Reports a skipped test: `SKIPPED: <why>` on stderr, and a line
/// `<test>: <why>` appended to the file named by `$MARGAY_SKIP_LOG` (set
/// by `scripts/test`). The test is the current thread's name, which is the
/// test's name under the standard test harness.
pub fn skip(why: &str) {
    eprintln!("SKIPPED: {why}");
    let Some(path) = std::env::var_os("MARGAY_SKIP_LOG") else {
        return;
    };
    let test = std::thread::current()
        .name()
        .unwrap_or("unnamed test")
        .to_string();
    let line = format!("{test}: {why}\n");
    let _ = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes()));
}
