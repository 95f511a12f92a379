//! S3 server errors and timeouts are retried with backoff: a proxy in front of the real S3 server
//! answers the first connections with 503 or never answers, and ingest still reads every document.
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dapt_core::Location;
use dapt_ingest::{IngestOptions, Job};

use crate::common::*;

#[derive(Clone, Copy)]
enum Fault {
    /// Answer `503 Service Unavailable` and close.
    Unavailable,
    /// Read the request and never answer (until the connection is dropped).
    Hang,
}

/// A TCP proxy to `upstream` that applies `faults[i]` to the i-th connection and forwards the rest.
/// Returns its endpoint and the count of faults served.
fn faulty_proxy(upstream: String, faults: Vec<Fault>) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let served = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&served);
    std::thread::spawn(move || {
        for (i, client) in listener.incoming().enumerate() {
            let Ok(mut client) = client else { continue };
            match faults.get(i) {
                Some(fault) => {
                    let fault = *fault;
                    let counter = Arc::clone(&counter);
                    std::thread::spawn(move || {
                        let mut buffer = [0u8; 4096];
                        let _ = client.read(&mut buffer);
                        counter.fetch_add(1, Ordering::SeqCst);
                        match fault {
                            Fault::Unavailable => {
                                let _ = client.write_all(
                                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                                );
                            }
                            Fault::Hang => std::thread::sleep(Duration::from_secs(20)),
                        }
                    });
                }
                None => {
                    let upstream = upstream.clone();
                    std::thread::spawn(move || {
                        let Ok(server) = TcpStream::connect(upstream) else {
                            return;
                        };
                        let (mut client_in, mut server_out) =
                            (client.try_clone().unwrap(), server.try_clone().unwrap());
                        let forward = std::thread::spawn(move || {
                            std::io::copy(&mut client_in, &mut server_out)
                        });
                        let (mut server_in, mut client_out) = (server, client);
                        let _ = std::io::copy(&mut server_in, &mut client_out);
                        let _ = client_out.shutdown(std::net::Shutdown::Both);
                        let _ = forward.join();
                    });
                }
            }
        }
    });
    (endpoint, served)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_and_timeouts_are_retried() {
    let bucket = s3_bucket("flaky");
    let direct = Location::parse(&format!("{bucket}/raw")).unwrap();
    let docs = docs("ru/debian-faq-ru.jsonl", 17);
    direct
        .write(
            "faq.jsonl.gz",
            gzip(jsonl(&docs, "faq").as_bytes()).await.into(),
        )
        .await
        .unwrap();
    direct
        .write("more.jsonl", Bytes::from(jsonl(&docs[..5], "more")))
        .await
        .unwrap();

    let upstream = std::env::var("AWS_ENDPOINT_URL")
        .unwrap()
        .trim_start_matches("http://")
        .to_string();
    let faults = vec![
        Fault::Unavailable,
        Fault::Hang,
        Fault::Unavailable,
        Fault::Unavailable,
    ];
    let (endpoint, served) = faulty_proxy(upstream, faults.clone());
    let storage = BTreeMap::from([
        ("aws_endpoint".to_string(), endpoint),
        ("timeout".to_string(), "2s".to_string()),
    ]);
    let settings = settings(
        vec![format!("{bucket}/raw")],
        IngestOptions {
            storage,
            concurrency: Some(1),
            ..Default::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let out = local(dir.path());
    let summary = run(&settings, &out, Job::ALL).await.unwrap();
    assert_eq!(
        served.load(Ordering::SeqCst),
        faults.len(),
        "every fault was met and retried"
    );
    assert_eq!(summary.documents, 22);
    let mut texts: Vec<String> = read_output(&out)
        .await
        .into_iter()
        .map(|o| o.text)
        .collect();
    let mut want: Vec<String> = docs
        .iter()
        .chain(&docs[..5])
        .map(|d| d.text.clone())
        .collect();
    texts.sort();
    want.sort();
    assert_eq!(texts, want);
}
