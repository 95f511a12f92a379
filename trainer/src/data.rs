//! Where training rows come from, and where a run stands in them (the data cursor a checkpoint keeps).
//! [`PackedShards`] streams packed Parquet from a packer output directory (local or object store) in a
//! background thread that reads ahead; shards are visited in a seeded order per epoch, rows in file
//! order. [`InMemoryRows`] walks rows held in memory in a seeded order per epoch.
use std::sync::mpsc::{sync_channel, Receiver};
use std::thread::JoinHandle;

use dapt_core::manifest::{Manifest, ShardEntry, MANIFEST_NAME};
use dapt_core::{Location, PackedMetadata, PackedRow};
use serde::{Deserialize, Serialize};

use crate::error::{io_error, json_error};
use crate::{Error, Result};

/// Position of the next row: epoch, index of the shard in that epoch's order, row within the shard.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataCursor {
    /// Epoch (0-based).
    pub epoch: u64,
    /// Index of the shard in that epoch's order.
    pub shard: usize,
    /// Row within the shard.
    pub row: usize,
}

/// A source of training rows that can say where it stands and start again from there.
pub trait RowSource {
    /// The next row.
    fn next_row(&mut self) -> Result<PackedRow>;
    /// Where the next row comes from.
    fn cursor(&self) -> DataCursor;
    /// Continues from `cursor`.
    fn seek(&mut self, cursor: DataCursor) -> Result<()>;
}

/// Rows in memory, visited in a seeded order per epoch.
pub struct InMemoryRows {
    rows: Vec<PackedRow>,
    keys: Vec<String>,
    seed: u64,
    cursor: DataCursor,
    order: Vec<usize>,
}

impl InMemoryRows {
    /// Rows held in memory, served in an order seeded by `seed` per epoch.
    pub fn new(rows: Vec<PackedRow>, seed: u64) -> Result<Self> {
        if rows.is_empty() {
            return Err(Error::Setting {
                key: "train.data".into(),
                reason: "no training rows".into(),
            });
        }
        let keys: Vec<String> = (0..rows.len()).map(|i| i.to_string()).collect();
        let order = dapt_core::order::ordered(seed, "train-order", 0, &keys);
        Ok(Self {
            rows,
            keys,
            seed,
            cursor: DataCursor::default(),
            order,
        })
    }
}

impl RowSource for InMemoryRows {
    fn next_row(&mut self) -> Result<PackedRow> {
        if self.cursor.row == self.rows.len() {
            self.seek(DataCursor {
                epoch: self.cursor.epoch + 1,
                shard: 0,
                row: 0,
            })?;
        }
        let row = self.rows[self.order[self.cursor.row]].clone();
        self.cursor.row += 1;
        Ok(row)
    }

    fn cursor(&self) -> DataCursor {
        self.cursor
    }

    fn seek(&mut self, cursor: DataCursor) -> Result<()> {
        if cursor.epoch != self.cursor.epoch || self.order.is_empty() {
            self.order =
                dapt_core::order::ordered(self.seed, "train-order", cursor.epoch, &self.keys);
        }
        self.cursor = DataCursor {
            row: cursor.row.min(self.rows.len()),
            ..cursor
        };
        Ok(())
    }
}

type Item = Result<(PackedRow, DataCursor)>;

/// Packed Parquet shards of a packer output directory, read ahead in a background thread.
pub struct PackedShards {
    location: Location,
    metadata: PackedMetadata,
    shards: Vec<ShardEntry>,
    seed: u64,
    prefetch_rows: usize,
    cursor: DataCursor,
    receiver: Option<Receiver<Item>>,
    worker: Option<JoinHandle<()>>,
}

impl PackedShards {
    /// Opens the directory's manifest; reading starts at the first row of epoch 0.
    /// The identity of a packed directory (the content hash of what produced its rows, from its
    /// manifest), without reading a shard.
    pub fn identity(location: &Location) -> Result<String> {
        let bytes = runtime()?.block_on(location.read(MANIFEST_NAME))?;
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(json_error(location.url_of(&location.child(MANIFEST_NAME))))?;
        Ok(PackedMetadata::from_manifest(&manifest, &location.url())?.config_hash)
    }

    /// Opens a packed directory (checking its manifest and metadata); shards are read as rows are needed, `prefetch_rows` ahead.
    pub fn open(location: Location, seed: u64, prefetch_rows: usize) -> Result<Self> {
        let runtime = runtime()?;
        let bytes = runtime.block_on(location.read(MANIFEST_NAME))?;
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(json_error(location.url_of(&location.child(MANIFEST_NAME))))?;
        let metadata = PackedMetadata::from_manifest(&manifest, &location.url())?;
        if !manifest.complete {
            tracing::warn!(url = %location.url(), "the packed directory is not complete; training on its finished shards");
        }
        let shards: Vec<ShardEntry> = manifest.shards.into_iter().filter(|s| s.rows > 0).collect();
        if shards.is_empty() {
            return Err(Error::File {
                path: location.url(),
                reason: "no packed rows (no shard with rows in _manifest.json)".into(),
            });
        }
        Ok(Self {
            location,
            metadata,
            shards,
            seed,
            prefetch_rows: prefetch_rows.max(1),
            cursor: DataCursor::default(),
            receiver: None,
            worker: None,
        })
    }

    /// What the directory's manifest declares about its rows (tokenizer, seq_len, pad id, highest id).
    pub fn metadata(&self) -> &PackedMetadata {
        &self.metadata
    }

    /// Every row of one epoch, in shard order (held-out evaluation).
    pub fn into_rows(mut self) -> Result<Vec<PackedRow>> {
        let count = self.rows_per_epoch();
        (0..count).map(|_| self.next_row()).collect()
    }

    /// Rows in one epoch.
    pub fn rows_per_epoch(&self) -> u64 {
        self.shards.iter().map(|s| s.rows).sum()
    }

    fn start(&mut self) {
        self.stop();
        let (sender, receiver) = sync_channel::<Item>(self.prefetch_rows);
        let location = self.location.clone();
        let shards = self.shards.clone();
        let seed = self.seed;
        let start = self.cursor;
        self.worker = Some(std::thread::spawn(move || {
            let runtime = match runtime() {
                Ok(r) => r,
                Err(e) => {
                    let _ = sender.send(Err(e));
                    return;
                }
            };
            let names: Vec<String> = shards.iter().map(|s| s.name.clone()).collect();
            let mut cursor = start;
            loop {
                let order = dapt_core::order::ordered(seed, "shard-order", cursor.epoch, &names);
                while cursor.shard < order.len() {
                    let shard = &shards[order[cursor.shard]];
                    let rows = runtime
                        .block_on(location.read(&shard.name))
                        .map_err(Error::from)
                        .and_then(|bytes| {
                            let url = location.url_of(&location.child(&shard.name));
                            let (batches, _) = dapt_core::parquet_io::decode(bytes, &url)?;
                            let mut rows = Vec::new();
                            for batch in &batches {
                                rows.extend(dapt_core::packed::batch_to_rows(batch)?);
                            }
                            Ok(rows)
                        });
                    let rows = match rows {
                        Ok(rows) => rows,
                        Err(e) => {
                            let _ = sender.send(Err(e));
                            return;
                        }
                    };
                    let count = rows.len();
                    for (i, row) in rows.into_iter().enumerate().skip(cursor.row) {
                        let after = if i + 1 < count {
                            DataCursor {
                                row: i + 1,
                                ..cursor
                            }
                        } else if cursor.shard + 1 < order.len() {
                            DataCursor {
                                epoch: cursor.epoch,
                                shard: cursor.shard + 1,
                                row: 0,
                            }
                        } else {
                            DataCursor {
                                epoch: cursor.epoch + 1,
                                shard: 0,
                                row: 0,
                            }
                        };
                        if sender.send(Ok((row, after))).is_err() {
                            return; // the reader stopped
                        }
                    }
                    cursor.shard += 1;
                    cursor.row = 0;
                }
                cursor = DataCursor {
                    epoch: cursor.epoch + 1,
                    shard: 0,
                    row: 0,
                };
            }
        }));
        self.receiver = Some(receiver);
    }

    fn stop(&mut self) {
        self.receiver = None; // the worker's next send fails and it ends
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

impl Drop for PackedShards {
    fn drop(&mut self) {
        self.stop();
    }
}

impl RowSource for PackedShards {
    fn next_row(&mut self) -> Result<PackedRow> {
        if self.receiver.is_none() {
            self.start();
        }
        let received = self.receiver.as_ref().and_then(|r| r.recv().ok());
        match received {
            Some(Ok((row, after))) => {
                self.cursor = after;
                Ok(row)
            }
            Some(Err(e)) => {
                self.stop();
                Err(e)
            }
            None => Err(Error::File {
                path: self.location.url(),
                reason: "the shard reader stopped".into(),
            }),
        }
    }

    fn cursor(&self) -> DataCursor {
        self.cursor
    }

    fn seek(&mut self, cursor: DataCursor) -> Result<()> {
        self.stop();
        self.cursor = cursor;
        Ok(())
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io_error("the async runtime"))
}
