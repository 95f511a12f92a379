//! Runs untrusted Python (a model's completion and the problem's tests) in a sandboxed child process,
//! through the `hakoniwa` crate (Linux namespaces and resource limits):
//! - a new network namespace: no interface but a down loopback, so nothing can be reached;
//! - a new mount namespace whose root holds the host's `/usr`, `/bin`, `/lib*`, `/sbin`, `/etc` (and
//!   the interpreter's prefix) read-only, a fresh `/tmp` (tmpfs, the working directory) and a minimal
//!   `/dev`: nothing of the host is writable;
//! - a new PID namespace: when the program ends or is killed, every process it started dies with it;
//! - limits on CPU seconds, address space, processes (a fork bomb stops at the limit), file size, and
//!   a wall-clock timeout.
//!
//! As root (where `RLIMIT_NPROC` does not apply to uid 0), the program first drops to `nobody`
//! (uid/gid 65534) before anything untrusted runs; as another user, a new user namespace maps the
//! user to itself and the process limit counts the sandbox's processes only.
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Resource limits of one sandboxed run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxLimits {
    /// Wall-clock seconds before the run (and every process it started) is killed.
    pub wall_seconds: u64,
    /// CPU seconds per process.
    pub cpu_seconds: u64,
    /// Address space per process, bytes.
    pub memory_bytes: u64,
    /// Processes (and threads) the run may have at once.
    pub processes: u64,
    /// Largest file (or standard error) it may write, bytes.
    pub file_bytes: u64,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        Self {
            wall_seconds: 10,
            cpu_seconds: 10,
            memory_bytes: 1 << 30,
            processes: 16,
            file_bytes: 1 << 20,
        }
    }
}

/// How a sandboxed run ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum RunStatus {
    /// Exit code 0.
    Passed,
    /// Another exit code (an exception, a failed assertion).
    Failed {
        /// The exit code.
        code: i32,
    },
    /// Killed at the wall-clock limit.
    TimedOut,
    /// Ended by a signal (CPU limit, file size limit, memory).
    Killed {
        /// What the sandbox said of it.
        reason: String,
    },
}

/// The outcome of one run (no timings: the same program gives the same outcome).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunOutcome {
    /// How it ended.
    pub status: RunStatus,
    /// The last lines of its standard error (at most 2,000 bytes).
    pub stderr_tail: String,
}

impl RunOutcome {
    /// Whether the program exited with 0.
    pub fn passed(&self) -> bool {
        self.status == RunStatus::Passed
    }
}

/// A Python interpreter and the limits to run programs under.
#[derive(Clone, Debug)]
pub struct Sandbox {
    /// The interpreter (absolute path, as `sys.executable` gives it).
    python: PathBuf,
    /// Host directories mounted read-only besides the system ones (the interpreter's prefixes).
    extra_mounts: Vec<String>,
    /// The limits.
    limits: SandboxLimits,
}

/// Runs first in the sandbox: as root, drop to `nobody` so that the process limit applies and no
/// root-owned file is writable; then run the program from a fresh namespace.
const PRELUDE: &str = "import os as _o\nif _o.getuid() == 0:\n    _o.setgroups([]); _o.setgid(65534); _o.setuid(65534)\ndel _o\n";

const SYSTEM_DIRS: [&str; 7] = ["/usr", "/bin", "/lib", "/lib64", "/lib32", "/sbin", "/etc"];

impl Sandbox {
    /// A sandbox for `python` (a name on `PATH` or a path), checked by running it once unsandboxed
    /// to learn its executable and prefixes.
    pub fn new(python: &str, limits: SandboxLimits) -> Result<Self> {
        let setting = |reason: String| Error::Setting {
            key: "python".into(),
            reason,
        };
        let output = std::process::Command::new(python)
            .args([
                "-c",
                "import sys; print(sys.executable); print(sys.base_prefix); print(sys.prefix)",
            ])
            .output()
            .map_err(|e| setting(format!("{python}: {e}")))?;
        if !output.status.success() {
            return Err(setting(format!(
                "{python} exited with {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        let lines: Vec<String> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        let [executable, base_prefix, prefix] = lines.as_slice() else {
            return Err(setting(format!("{python}: unexpected output {lines:?}")));
        };
        let executable =
            std::fs::canonicalize(executable).map_err(|e| setting(format!("{executable}: {e}")))?;
        let mut extra_mounts = Vec::new();
        for dir in [base_prefix, prefix] {
            let Ok(dir) = std::fs::canonicalize(dir) else {
                continue;
            };
            let dir = dir.to_string_lossy().to_string();
            let under_system = SYSTEM_DIRS
                .iter()
                .any(|s| dir == *s || dir.starts_with(&format!("{s}/")));
            if !under_system && dir != "/" && !extra_mounts.contains(&dir) {
                extra_mounts.push(dir);
            }
        }
        Ok(Self {
            python: executable,
            extra_mounts,
            limits,
        })
    }

    /// The limits runs use.
    pub fn limits(&self) -> &SandboxLimits {
        &self.limits
    }

    /// Runs `program` (Python source) in the sandbox.
    pub fn run_python(&self, program: &str) -> Result<RunOutcome> {
        let started = Instant::now();
        let io = |what: &str, source: std::io::Error| Error::Io {
            path: PathBuf::from(format!("<sandbox {what}>")),
            source,
        };
        let stderr_file = tempfile::tempfile().map_err(|e| io("stderr", e))?;
        let stdout_file = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .map_err(|e| io("stdout", e))?;
        let limits = &self.limits;
        let mut container = self.container()?;
        use hakoniwa::Rlimit;
        container
            .setrlimit(
                Rlimit::Cpu,
                limits.cpu_seconds.max(1),
                limits.cpu_seconds.max(1) + 1,
            )
            .setrlimit(Rlimit::As, limits.memory_bytes, limits.memory_bytes)
            .setrlimit(Rlimit::Nproc, limits.processes, limits.processes)
            .setrlimit(Rlimit::Fsize, limits.file_bytes, limits.file_bytes)
            .setrlimit(Rlimit::Core, 0, 0);
        let python = self.python.to_string_lossy().to_string();
        let mut child = container
            .command(&python)
            .args(["-I", "-"])
            .current_dir("/tmp")
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", "/tmp")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .wait_timeout(limits.wall_seconds.max(1))
            .stdin(hakoniwa::Stdio::piped())
            .stdout(hakoniwa::Stdio::from(stdout_file))
            .stderr(hakoniwa::Stdio::from(
                stderr_file.try_clone().map_err(|e| io("stderr", e))?,
            ))
            .spawn()
            .map_err(|e| Error::Sandbox {
                reason: e.to_string(),
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            // A program that dies before reading its source closes the pipe: that is its outcome,
            // not an error of ours.
            let _ = stdin.write_all(format!("{PRELUDE}{program}\n").as_bytes());
        }
        let status = child.wait().map_err(|e| Error::Sandbox {
            reason: e.to_string(),
        })?;
        let wall = started.elapsed();
        let status = classify(&status, wall, Duration::from_secs(limits.wall_seconds));
        Ok(RunOutcome {
            status,
            stderr_tail: tail(stderr_file, 2000),
        })
    }

    /// The namespaces and mounts.
    fn container(&self) -> Result<hakoniwa::Container> {
        use hakoniwa::{Container, Namespace};
        let as_root = std::fs::metadata("/proc/self").is_ok_and(|m| {
            use std::os::unix::fs::MetadataExt;
            m.uid() == 0
        });
        let mut container = if as_root {
            // Root needs no user namespace (and one mapping root to itself would keep RLIMIT_NPROC
            // off); the prelude drops to nobody instead.
            let mut c = Container::empty();
            c.unshare(Namespace::Mount).unshare(Namespace::Pid);
            c.procfsmount("/proc");
            c
        } else {
            Container::new()
        };
        container
            .rootfs("/")
            .map_err(|e| Error::Sandbox {
                reason: e.to_string(),
            })?
            .unshare(Namespace::Network)
            .unshare(Namespace::Ipc)
            .unshare(Namespace::Uts)
            .devfsmount("/dev")
            .tmpfsmount("/tmp");
        for dir in &self.extra_mounts {
            container.bindmount_ro(dir, dir);
        }
        Ok(container)
    }
}

fn classify(status: &hakoniwa::ExitStatus, wall: Duration, limit: Duration) -> RunStatus {
    match status.exit_code {
        Some(0) => RunStatus::Passed,
        Some(code) if code >= 0 => RunStatus::Failed { code },
        _ if wall >= limit => RunStatus::TimedOut,
        _ => RunStatus::Killed {
            reason: status.reason.clone(),
        },
    }
}

/// The last `bytes` bytes of a file (at a character boundary).
fn tail(mut file: std::fs::File, bytes: u64) -> String {
    let length = file.seek(SeekFrom::End(0)).unwrap_or(0);
    let start = length.saturating_sub(bytes);
    let mut buffer = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_ok() {
        let _ = file.take(bytes).read_to_end(&mut buffer);
    }
    String::from_utf8_lossy(&buffer).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox(wall_seconds: u64) -> Sandbox {
        Sandbox::new(
            "python3",
            SandboxLimits {
                wall_seconds,
                cpu_seconds: wall_seconds,
                ..SandboxLimits::default()
            },
        )
        .unwrap()
    }

    #[test]
    fn a_program_runs_and_its_exit_code_is_its_verdict() {
        let sandbox = sandbox(10);
        let ok = sandbox
            .run_python("import math\nassert math.gcd(12, 18) == 6\n")
            .unwrap();
        assert!(ok.passed(), "{ok:?}");
        let failed = sandbox
            .run_python("assert 1 + 1 == 3, 'planted'\n")
            .unwrap();
        assert_eq!(failed.status, RunStatus::Failed { code: 1 });
        assert!(failed.stderr_tail.contains("planted"), "{failed:?}");
    }

    #[test]
    fn nothing_outside_the_sandbox_is_writable_or_reachable() {
        let sandbox = sandbox(10);
        // The working directory is a fresh tmpfs, writable.
        let local = sandbox
            .run_python("open('x.txt', 'w').write('x')\nassert open('x.txt').read() == 'x'\n")
            .unwrap();
        assert!(local.passed(), "{local:?}");
        // The host's files are not: /etc is there, read-only; this crate's directory is absent.
        let here = env!("CARGO_MANIFEST_DIR");
        let program = format!(
            "import os\nassert os.path.exists('/etc/passwd')\n\
             for p in ['/etc/dapt-sandbox-test', '/usr/dapt-sandbox-test', {here:?} + '/x']:\n\
             \x20   try:\n\
             \x20       open(p, 'w').write('x')\n\
             \x20   except OSError:\n\
             \x20       continue\n\
             \x20   raise SystemExit('wrote ' + p)\n"
        );
        let outcome = sandbox.run_python(&program).unwrap();
        assert!(outcome.passed(), "{outcome:?}");
        assert!(!std::path::Path::new(here).join("x").exists());
        // A server on the host's loopback answers the host, not the sandbox.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let program = format!(
            "import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=3).close()\n"
        );
        std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let outcome = sandbox.run_python(&program).unwrap();
        assert!(
            matches!(outcome.status, RunStatus::Failed { .. }),
            "{outcome:?}"
        );
        assert!(
            outcome.stderr_tail.contains("unreachable") || outcome.stderr_tail.contains("refused"),
            "{outcome:?}"
        );
    }

    #[test]
    fn loops_forks_and_memory_hogs_are_stopped() {
        let sandbox = sandbox(3);
        let started = Instant::now();
        let spin = sandbox.run_python("while True:\n    pass\n").unwrap();
        assert!(
            matches!(spin.status, RunStatus::TimedOut | RunStatus::Killed { .. }),
            "{spin:?}"
        );
        let sleeper = sandbox.run_python("import time\ntime.sleep(60)\n").unwrap();
        assert_eq!(sleeper.status, RunStatus::TimedOut, "{sleeper:?}");
        // Forks stop at the process limit; the bomb is killed at the wall limit with all its
        // children.
        let count = sandbox
            .run_python(
                "import os, time\nn = 0\nfor _ in range(64):\n    try:\n        pid = os.fork()\n    except OSError:\n        break\n    if pid == 0:\n        time.sleep(2)\n        os._exit(0)\n    n += 1\nassert n < 16, n\n",
            )
            .unwrap();
        assert!(count.passed(), "{count:?}");
        let bomb = sandbox
            .run_python("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n")
            .unwrap();
        assert!(
            matches!(bomb.status, RunStatus::TimedOut | RunStatus::Killed { .. }),
            "{bomb:?}"
        );
        let hog = sandbox.run_python("x = bytearray(4 << 30)\n").unwrap();
        assert!(hog.stderr_tail.contains("MemoryError"), "{hog:?}");
        assert!(started.elapsed() < Duration::from_secs(30));
    }
}
