//! `margay`: the CNI plugin binary. See the library for everything.

use std::io::{Read, Write};

use cni_plugin::config::MAX_STDIN;
use cni_plugin::env::RawEnv;
use cni_plugin::error::{CniError, fallback_version};
use cni_plugin::{Output, run_in};

fn main() {
    let env = RawEnv::from_process();
    let mut stdin = Vec::new();
    // The runtime stays alive to the end: exiting closes its sockets.
    let (out, _runtime) = match std::io::stdin()
        .lock()
        .take(MAX_STDIN as u64 + 1)
        .read_to_end(&mut stdin)
    {
        Ok(_) => run_in(&env, &stdin),
        Err(source) => (
            Output::error(
                &CniError::Io {
                    what: "stdin",
                    source,
                },
                fallback_version(),
            ),
            None,
        ),
    };
    if let Some(s) = out.stdout {
        let mut so = std::io::stdout().lock();
        let _ = so.write_all(s.as_bytes());
        let _ = so.write_all(b"\n");
        let _ = so.flush();
    }
    // No destructors past this point (the result is out): the kernel
    // closes the netlink sockets and the agent's connection with the
    // process, and the runtime is not torn down task by task first.
    std::process::exit(if out.success { 0 } else { 1 })
}
