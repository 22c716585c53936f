//! Processes the lab runs inside namespaces: a generic [`Daemon`] handle, and
//! starters for the real BGP peers we interoperate with (BIRD 2, FRR, GoBGP).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::error::{LabError, Result};
use super::netns::{Netns, describe, run};

/// A process started inside a namespace, stdout+stderr to a log file.
/// Dropping it stops it (SIGTERM, then SIGKILL) unless it was persisted.
#[derive(Debug)]
pub struct Daemon {
    name: String,
    child: Option<Child>,
    pid: i32,
    log: PathBuf,
    persist: bool,
}

impl Daemon {
    /// Starts `argv` in `ns`, logging to `log`.
    pub fn spawn(ns: &Netns, name: &str, argv: &[&str], log: &Path) -> Result<Daemon> {
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| LabError::Invalid("spawn: empty command".into()))?;
        let mut cmd = ns.command(program);
        cmd.args(args);
        Self::spawn_command(cmd, name, log)
    }

    /// Starts a prepared command (already wrapped for its namespace).
    pub fn spawn_command(mut cmd: Command, name: &str, log: &Path) -> Result<Daemon> {
        let out = File::create(log).map_err(|e| LabError::io(log, e))?;
        let err = out.try_clone().map_err(|e| LabError::io(log, e))?;
        let desc = describe(&cmd);
        // Own process group: a Ctrl-C at the terminal goes to the lab binary,
        // which then stops its daemons in order, not to every daemon at once.
        use std::os::unix::process::CommandExt as _;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|source| LabError::Spawn { cmd: desc, source })?;
        let pid = i32::try_from(child.id())
            .map_err(|_| LabError::Invalid(format!("{name}: pid out of range")))?;
        Ok(Daemon {
            name: name.to_string(),
            child: Some(child),
            pid,
            log: log.to_path_buf(),
            persist: false,
        })
    }

    /// The daemon's name in the lab.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Where its output goes.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// (peak RSS in MB, CPU seconds) of the live process: `VmHWM` and
    /// utime + stime since it started.
    pub fn usage(&self) -> Result<(f64, f64)> {
        process_usage(self.pid)
    }

    /// The log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => kill(Pid::from_raw(self.pid), None).is_ok(),
        }
    }

    /// Sends `sig` (e.g. SIGKILL to simulate a crash).
    pub fn signal(&self, sig: Signal) -> Result<()> {
        kill(Pid::from_raw(self.pid), sig)
            .map_err(|e| LabError::Invalid(format!("kill {} ({}): {e}", self.name, self.pid)))
    }

    /// Stops it: SIGTERM, wait up to `grace`, then SIGKILL; reaps it.
    pub fn stop(&mut self, grace: Duration) {
        if self.persist {
            return;
        }
        let _ = kill(Pid::from_raw(self.pid), Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        if let Some(child) = &mut self.child {
            while Instant::now() < deadline {
                if !matches!(child.try_wait(), Ok(None)) {
                    self.child = None;
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
            self.child = None;
        }
    }

    /// Waits for the process to exit by itself, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// Leave it running when the handle drops (the lab's `up`).
    pub fn persist(&mut self) {
        self.persist = true;
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(2));
    }
}

/// Polls `check` every 50 ms until it returns `Ok(Some(_))`, failing at once
/// on `Err` (e.g. the daemon died) and with `NotReady` after `timeout`.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = check()? {
            return Ok(v);
        }
        if start.elapsed() >= timeout {
            return Err(LabError::NotReady {
                what: what.to_string(),
                secs: start.elapsed().as_secs_f64(),
                detail: "condition not met".into(),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A BIRD 2 instance in a namespace, controlled through its own socket.
#[derive(Debug)]
pub struct Bird {
    /// The process.
    pub daemon: Daemon,
    ctl: PathBuf,
    conf: PathBuf,
}

impl Bird {
    /// Writes `config` to `<dir>/<name>.conf` and starts `bird -f` in `ns`;
    /// returns once `birdc` answers.
    pub fn start(ns: &Netns, dir: &Path, name: &str, config: &str) -> Result<Bird> {
        let conf = dir.join(format!("{name}.conf"));
        let ctl = dir.join(format!("{name}.ctl"));
        let pid = dir.join(format!("{name}.pid"));
        std::fs::write(&conf, config).map_err(|e| LabError::io(&conf, e))?;
        let log = dir.join(format!("{name}.log"));
        let (c, s, p) = (path_str(&conf)?, path_str(&ctl)?, path_str(&pid)?);
        let mut daemon = Daemon::spawn(ns, name, &["bird", "-f", "-c", c, "-s", s, "-P", p], &log)?;
        wait_for("bird control socket", Duration::from_secs(10), || {
            if !daemon.is_running() {
                return Err(LabError::Invalid(format!(
                    "bird {name} exited: {}",
                    daemon.log().trim()
                )));
            }
            Ok(birdc_at(&ctl, "show status").ok().map(|_| ()))
        })?;
        Ok(Bird { daemon, ctl, conf })
    }

    /// Runs one `birdc` command and returns its output.
    pub fn birdc(&self, command: &str) -> Result<String> {
        birdc_at(&self.ctl, command)
    }

    /// Replaces the configuration and reloads it.
    pub fn reconfigure(&self, config: &str) -> Result<String> {
        std::fs::write(&self.conf, config).map_err(|e| LabError::io(&self.conf, e))?;
        self.birdc("configure")
    }

    /// The control socket path (for `birdc -s`).
    pub fn ctl_path(&self) -> &Path {
        &self.ctl
    }
}

fn birdc_at(ctl: &Path, command: &str) -> Result<String> {
    let mut cmd = Command::new("birdc");
    cmd.arg("-s").arg(ctl);
    cmd.args(command.split_whitespace());
    let out = run(&mut cmd)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// FRR (zebra + bgpd, optionally bfdd) in a namespace, run in the
/// foreground (no watchfrr).
#[derive(Debug)]
pub struct Frr {
    /// bgpd (stopped first on drop: declared first).
    pub bgpd: Daemon,
    /// bfdd, when started with a BFD configuration.
    pub bfdd: Option<Daemon>,
    /// zebra.
    pub zebra: Daemon,
    vty_dir: PathBuf,
}

impl Frr {
    /// Starts zebra and bgpd in `ns` with `bgpd_config`, state under
    /// `<dir>/<name>/`; returns when `vtysh` answers.
    pub fn start(ns: &Netns, dir: &Path, name: &str, bgpd_config: &str) -> Result<Frr> {
        Self::start_with_bfd(ns, dir, name, bgpd_config, None)
    }

    /// [`Frr::start`], plus `bfdd` with `bfdd_config` when given (its
    /// control socket in the run directory, so labs do not share one).
    pub fn start_with_bfd(
        ns: &Netns,
        dir: &Path,
        name: &str,
        bgpd_config: &str,
        bfdd_config: Option<&str>,
    ) -> Result<Frr> {
        let run_dir = dir.join(name);
        std::fs::create_dir_all(&run_dir).map_err(|e| LabError::io(&run_dir, e))?;
        let conf = run_dir.join("bgpd.conf");
        std::fs::write(&conf, bgpd_config).map_err(|e| LabError::io(&conf, e))?;
        let bfd_conf = run_dir.join("bfdd.conf");
        if let Some(c) = bfdd_config {
            std::fs::write(&bfd_conf, c).map_err(|e| LabError::io(&bfd_conf, e))?;
        }
        run(Command::new("chown").args(["-R", "frr:frr"]).arg(&run_dir))?;
        let zserv = run_dir.join("zserv.api");
        let (rd, zs, cf) = (path_str(&run_dir)?, path_str(&zserv)?, path_str(&conf)?);
        let zpid = format!("{rd}/zebra.pid");
        let bpid = format!("{rd}/bgpd.pid");
        let zlog = run_dir.join("zebra.log");
        let mut zebra = Daemon::spawn(
            ns,
            &format!("{name}-zebra"),
            &[
                "/usr/lib/frr/zebra",
                "-u",
                "frr",
                "-g",
                "frr",
                "-i",
                &zpid,
                "-z",
                zs,
                "--vty_socket",
                rd,
                "-f",
                "/dev/null",
            ],
            &zlog,
        )?;
        wait_for("zebra socket", Duration::from_secs(10), || {
            if !zebra.is_running() {
                return Err(LabError::Invalid(format!("zebra exited: {}", zebra.log())));
            }
            Ok(zserv.exists().then_some(()))
        })?;
        let bfdd = match bfdd_config {
            None => None,
            Some(_) => {
                let pid = format!("{rd}/bfdd.pid");
                let ctl = format!("{rd}/bfdd.sock");
                let mut d = Daemon::spawn(
                    ns,
                    &format!("{name}-bfdd"),
                    &[
                        "/usr/lib/frr/bfdd",
                        "-u",
                        "frr",
                        "-g",
                        "frr",
                        "-i",
                        &pid,
                        "-z",
                        zs,
                        "--vty_socket",
                        rd,
                        "--bfdctl",
                        &ctl,
                        "-f",
                        path_str(&bfd_conf)?,
                    ],
                    &run_dir.join("bfdd.log"),
                )?;
                let vty = run_dir.clone();
                wait_for("bfdd vty", Duration::from_secs(10), || {
                    if !d.is_running() {
                        return Err(LabError::Invalid(format!("bfdd exited: {}", d.log())));
                    }
                    Ok(vtysh_at(&vty, &["show bfd peers"]).ok().map(|_| ()))
                })?;
                Some(d)
            }
        };
        let blog = run_dir.join("bgpd.log");
        let mut bgpd = Daemon::spawn(
            ns,
            &format!("{name}-bgpd"),
            &[
                "/usr/lib/frr/bgpd",
                "-u",
                "frr",
                "-g",
                "frr",
                "-i",
                &bpid,
                "-z",
                zs,
                "--vty_socket",
                rd,
                "-f",
                cf,
            ],
            &blog,
        )?;
        let vty_dir = run_dir.clone();
        wait_for("bgpd vty", Duration::from_secs(10), || {
            if !bgpd.is_running() {
                return Err(LabError::Invalid(format!("bgpd exited: {}", bgpd.log())));
            }
            Ok(vtysh_at(&vty_dir, &["show bgp summary"]).ok().map(|_| ()))
        })?;
        Ok(Frr {
            bgpd,
            bfdd,
            zebra,
            vty_dir,
        })
    }

    /// Runs one `vtysh -c` command.
    pub fn vtysh(&self, command: &str) -> Result<String> {
        vtysh_at(&self.vty_dir, &[command])
    }

    /// Runs several commands in one `vtysh` (one `-c` each; their outputs
    /// follow each other): one process instead of one per command.
    pub fn vtysh_many(&self, commands: &[&str]) -> Result<String> {
        vtysh_at(&self.vty_dir, commands)
    }
}

fn vtysh_at(dir: &Path, commands: &[&str]) -> Result<String> {
    let mut cmd = Command::new("vtysh");
    cmd.arg("--vty_socket").arg(dir);
    for c in commands {
        cmd.args(["-c", c]);
    }
    let out = run(&mut cmd)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// GoBGP (`gobgpd`) in a namespace, with its gRPC API on the namespace's own
/// loopback.
#[derive(Debug)]
pub struct Gobgp {
    /// The process.
    pub daemon: Daemon,
    ns_name: String,
}

impl Gobgp {
    /// Writes `config` (TOML) and starts gobgpd in `ns`; returns when the
    /// `gobgp` CLI answers.
    pub fn start(ns: &Netns, dir: &Path, name: &str, config: &str) -> Result<Gobgp> {
        let conf = dir.join(format!("{name}.toml"));
        std::fs::write(&conf, config).map_err(|e| LabError::io(&conf, e))?;
        let log = dir.join(format!("{name}.log"));
        let mut daemon = Daemon::spawn(
            ns,
            name,
            &[
                "gobgpd",
                "-f",
                path_str(&conf)?,
                "--api-hosts",
                "127.0.0.1:50051",
                "--pprof-disable",
            ],
            &log,
        )?;
        let ns_name = ns.name().to_string();
        wait_for("gobgp API", Duration::from_secs(15), || {
            if !daemon.is_running() {
                return Err(LabError::Invalid(format!(
                    "gobgpd exited: {}",
                    daemon.log()
                )));
            }
            Ok(gobgp_in(&ns_name, &["global"]).ok().map(|_| ()))
        })?;
        Ok(Gobgp { daemon, ns_name })
    }

    /// Runs the `gobgp` CLI in the daemon's namespace.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        gobgp_in(&self.ns_name, args)
    }
}

fn gobgp_in(ns: &str, args: &[&str]) -> Result<String> {
    let out = run(Command::new("ip")
        .args(["netns", "exec", ns, "gobgp"])
        .args(args))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .ok_or_else(|| LabError::Invalid(format!("non-UTF-8 path {}", p.display())))
}

/// (peak RSS in MB, CPU seconds) of a live process: `VmHWM` from
/// `/proc/<pid>/status`, utime + stime from `/proc/<pid>/stat` (in USER_HZ,
/// which Linux fixes at 100).
pub fn process_usage(pid: i32) -> Result<(f64, f64)> {
    let bad = |what: &str| LabError::Invalid(format!("/proc/{pid}: cannot read {what}"));
    let status_path = format!("/proc/{pid}/status");
    let status =
        std::fs::read_to_string(&status_path).map_err(|e| LabError::io(&status_path, e))?;
    let hwm_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| bad("VmHWM"))?;
    let stat_path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&stat_path).map_err(|e| LabError::io(&stat_path, e))?;
    let rest = stat.rsplit_once(')').ok_or_else(|| bad("stat"))?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, utime 14, stime 15 (1-based).
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
    let ticks = tick(11).zip(tick(12)).ok_or_else(|| bad("utime/stime"))?;
    Ok((hwm_kb / 1024.0, (ticks.0 + ticks.1) / 100.0))
}
