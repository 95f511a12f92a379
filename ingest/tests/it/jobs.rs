//! Job arrays: n jobs over the same inputs cover every file exactly once, and their manifests merge.
use bytes::Bytes;
use dapt_core::Location;
use dapt_ingest::{IngestOptions, Job};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_jobs_equal_one_job() {
    let bucket = s3_bucket("jobs");
    let input = Location::parse(&format!("{bucket}/c4/en")).unwrap();
    let all = docs("en/fortunes.jsonl", 240);
    for (i, chunk) in all.chunks(20).enumerate() {
        let data = gzip(jsonl(chunk, &format!("p{i}")).as_bytes()).await;
        input
            .write(
                &format!("c4-train.{i:05}-of-00012.json.gz"),
                Bytes::from(data),
            )
            .await
            .unwrap();
    }
    let settings = settings(
        vec![format!("{bucket}/c4/en/*.json.gz")],
        IngestOptions::default(),
    );

    let whole = Location::parse(&format!("{bucket}/whole")).unwrap();
    run(&settings, &whole, Job::ALL).await.unwrap();

    let split = Location::parse(&format!("{bucket}/split")).unwrap();
    let mut files = 0;
    let mut merged = Vec::new();
    for index in 0..3 {
        let summary = run(&settings, &split, Job { index, count: 3 })
            .await
            .unwrap();
        files += summary.files;
        merged.push(summary.merged);
    }
    assert_eq!(files, 12, "every file taken by exactly one job");
    assert_eq!(
        merged,
        [false, false, true],
        "the last job to finish merges"
    );
    assert_eq!(read_output(&split).await, read_output(&whole).await);
    let whole_manifest = manifest(&whole, "_manifest.json").await;
    let split_manifest = manifest(&split, "_manifest.json").await;
    assert_eq!(
        split_manifest.shards, whole_manifest.shards,
        "same shard bytes"
    );
    assert_eq!(split_manifest.summary["documents"], 240);

    // Rerunning a job reads nothing.
    let again = run(&settings, &split, Job { index: 1, count: 3 })
        .await
        .unwrap();
    assert_eq!(again.files_read, 0);
}
