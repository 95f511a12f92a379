//! A real S3-compatible server (moto, installed by scripts/setup) on 127.0.0.1 for tests, shared by
//! the test binaries of the `dapt` package and of `dapt-ingest` (included with `#[path]`).
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

/// The server; ended (SIGTERM) when dropped. `env` gives the variables that point object_store at it.
pub struct S3Server {
    pub endpoint: String,
    child: Child,
}

fn failure(message: String) -> std::io::Error {
    std::io::Error::other(message)
}

impl S3Server {
    pub fn start() -> std::io::Result<Self> {
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
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                failure(format!(
                    "moto_server (from scripts/setup) does not start: {e}"
                ))
            })?;
        let server = Self {
            endpoint: format!("http://127.0.0.1:{port}"),
            child,
        };
        let started = std::time::Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if started.elapsed().as_secs() >= 60 {
                return Err(failure("moto_server did not start".into()));
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Ok(server)
    }

    /// The process id of the `timeout` that runs the server (SIGTERM to it ends the server).
    #[allow(dead_code)]
    pub fn process_id(&self) -> u32 {
        self.child.id()
    }

    /// Creates a bucket; returns its `s3://` URL.
    pub fn bucket(&self, name: &str) -> std::io::Result<String> {
        let host = self.endpoint.trim_start_matches("http://");
        let mut stream = TcpStream::connect(host)?;
        write!(
            stream,
            "PUT /{name} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        if !response.starts_with("HTTP/1.1 200") {
            return Err(failure(format!("create bucket: {response}")));
        }
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

    /// The same settings as object_store options (a test's own `Location::parse_with`).
    #[allow(dead_code)]
    pub fn storage(&self) -> std::collections::BTreeMap<String, String> {
        self.env()
            .into_iter()
            .map(|(k, v)| {
                (
                    k.to_lowercase().replace("aws_endpoint_url", "aws_endpoint"),
                    v,
                )
            })
            .collect()
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
