//! Helpers shared by the end-to-end tests.
use std::path::PathBuf;
use std::process::{Command, Output};

/// Runs the `dapt` binary with quiet logs.
pub fn dapt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dapt"))
        .args(args)
        .env("DAPT_LOG", "warn")
        .output()
        .expect("the dapt binary runs")
}

/// The shared test data (`shared/data` beside the repository; `DAPT_SHARED_DATA` overrides).
pub fn shared() -> PathBuf {
    std::env::var("DAPT_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data"))
}

/// The demo data shipped in the repository.
pub fn demo_data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("configs/demo/data")
}

/// `dapt ingest INPUT --out OUT`, failing the test with dapt's stderr if it fails.
pub fn ingest(input: &std::path::Path, out: &std::path::Path) -> anyhow::Result<()> {
    let output = dapt(&[
        "ingest",
        input.to_str().unwrap_or_default(),
        "--out",
        out.to_str().unwrap_or_default(),
    ]);
    anyhow::ensure!(
        output.status.success(),
        "dapt ingest failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// Runs `dapt ARGS`, failing with its stderr unless it succeeds; returns its stdout.
pub fn run_ok(args: &[&str]) -> anyhow::Result<String> {
    let output = dapt(args);
    anyhow::ensure!(
        output.status.success(),
        "dapt {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

/// Runs `dapt ARGS`, which must fail; returns its stderr.
pub fn run_fails(args: &[&str]) -> anyhow::Result<String> {
    let output = dapt(args);
    anyhow::ensure!(!output.status.success(), "dapt {args:?} succeeded");
    Ok(String::from_utf8_lossy(&output.stderr).into_owned())
}

/// A real S3-compatible server (moto, installed by scripts/setup) on 127.0.0.1 for one test, ended
/// when dropped; `env` gives the variables that point `dapt` at it.
pub struct S3Server {
    pub endpoint: String,
    child: std::process::Child,
}

impl S3Server {
    pub fn start() -> anyhow::Result<Self> {
        use std::net::TcpStream;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        // `timeout` ends the server even if the test process dies first.
        let child = Command::new("timeout")
            .args([
                "600",
                "moto_server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let started = std::time::Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            anyhow::ensure!(
                started.elapsed().as_secs() < 60,
                "moto_server did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Ok(Self {
            endpoint: format!("http://127.0.0.1:{port}"),
            child,
        })
    }

    /// Creates a bucket; returns its `s3://` URL.
    pub fn bucket(&self, name: &str) -> anyhow::Result<String> {
        use std::io::{Read, Write};
        let host = self.endpoint.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(host)?;
        write!(stream, "PUT /{name} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        anyhow::ensure!(
            response.starts_with("HTTP/1.1 200"),
            "create bucket: {response}"
        );
        Ok(format!("s3://{name}"))
    }

    /// The environment that points object_store at this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        // SIGTERM to `timeout`, which passes it on to the server (SIGKILL would orphan the server).
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}
