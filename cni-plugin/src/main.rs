//! `margay`: the CNI plugin binary. See the library for everything.

use std::io::{Read, Write};
use std::process::ExitCode;

use cni_plugin::config::MAX_STDIN;
use cni_plugin::env::RawEnv;
use cni_plugin::error::{CniError, fallback_version};
use cni_plugin::{Output, run};

fn main() -> ExitCode {
    let env = RawEnv::from_process();
    let mut stdin = Vec::new();
    let out = match std::io::stdin()
        .lock()
        .take(MAX_STDIN as u64 + 1)
        .read_to_end(&mut stdin)
    {
        Ok(_) => run(&env, &stdin),
        Err(source) => Output::error(
            &CniError::Io {
                what: "stdin",
                source,
            },
            fallback_version(),
        ),
    };
    if let Some(s) = out.stdout {
        let mut so = std::io::stdout().lock();
        let _ = so.write_all(s.as_bytes());
        let _ = so.write_all(b"\n");
        let _ = so.flush();
    }
    if out.success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
