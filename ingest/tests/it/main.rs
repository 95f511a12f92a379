//! Integration tests of dapt-ingest: real text from the test corpus written as shards in every
//! supported format, read from local disk and from a real S3-compatible server (moto) on 127.0.0.1,
//! with the exact documents, errors and skip records checked.
mod bad_input;
mod common;
mod faults;
mod formats;
mod jobs;
