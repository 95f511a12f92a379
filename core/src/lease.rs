//! One writer per output in an object store: a lease object beside the manifest.
//!
//! A local output is locked with `flock` (see [`OutputDir`](crate::OutputDir)); an object store has no
//! locks, so a writer of `s3://…/out/` creates the object `out/.MANIFEST.lease` with a conditional put
//! (`If-None-Match: *`) holding its owner (host, process, a random tag) and the time of its last
//! renewal. A task renews it every quarter of its time to live with a put conditional on the
//! object's last ETag (`If-Match`), and the writer deletes it when the output is finished.
//!
//! A second writer finds the object and is refused, naming the holder, unless the lease is dead: not
//! renewed for longer than its time to live (a writer killed on another machine), or held by a
//! process of this host that no longer runs (a killed or failed run rerun on the same machine is not
//! kept waiting). It then takes the lease over with a put conditional on the ETag it read, so of two
//! writers racing for a dead lease one wins. A writer whose renewal finds another holder, or that
//! could not renew for a whole time to live, has lost its lease: its next shard or manifest write
//! fails instead of mixing its output with the new holder's.
//!
//! Time to live: `DAPT_LEASE_TTL_S` seconds (default 60). Clocks of the writers' machines are
//! compared, so they should agree to well within that. A store without conditional puts (plain HTTP)
//! gets no lease, with a warning.
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};

use crate::{Error, Location, Result};

/// Default time to live of a lease, in seconds.
pub const DEFAULT_TTL_S: f64 = 60.0;

/// What a lease object holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Holder {
    /// `host/pid/tag`, unique per writer.
    owner: String,
    host: String,
    pid: u32,
    /// Milliseconds since the Unix epoch at the last renewal.
    renewed_unix_ms: u64,
    /// The holder's time to live in milliseconds.
    ttl_ms: u64,
}

/// Leases held by this process (their URLs), so that a lease of this process's own id is taken over
/// only when nothing here holds it any more.
static HELD: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

fn held() -> std::sync::MutexGuard<'static, BTreeSet<String>> {
    HELD.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// This machine's host name (as leases and failure records name their writers).
pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into())
}

/// Whether process `pid` of this host runs (Linux; elsewhere every process is taken to run, so only
/// the time to live ends a lease).
fn process_runs(pid: u32) -> bool {
    if !std::path::Path::new("/proc/self").exists() {
        return true;
    }
    std::path::Path::new("/proc").join(pid.to_string()).exists()
}

fn ttl() -> Result<Duration> {
    let Ok(text) = std::env::var("DAPT_LEASE_TTL_S") else {
        return Ok(Duration::from_secs_f64(DEFAULT_TTL_S));
    };
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.1)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| Error::Setting {
            name: "DAPT_LEASE_TTL_S".into(),
            reason: format!("{text:?} is not a number of seconds ≥ 0.1"),
        })
}

/// The renewal state shared with the renewing task.
#[derive(Debug)]
struct State {
    version: UpdateVersion,
    /// Why the lease was lost, once it was.
    lost: Option<String>,
    /// Set when the writer released the lease; the task stops.
    released: bool,
    /// A renewal is on its way to the store.
    renewing: bool,
    last_renewal: std::time::Instant,
}

/// The lease object of an output's manifest `manifest_name`.
fn lease_name(manifest_name: &str) -> String {
    format!(".{manifest_name}.lease")
}

/// Who writes output `location`'s manifest `manifest_name` now, by its lease: the holder's owner and
/// how long ago it renewed, when the lease is alive (renewed within its time to live, and — for a
/// holder on this host — its process runs); `None` when there is no live lease.
pub async fn live_holder(location: &Location, manifest_name: &str) -> Result<Option<String>> {
    let Some(bytes) = location.read_optional(&lease_name(manifest_name)).await? else {
        return Ok(None);
    };
    let Ok(holder) = serde_json::from_slice::<Holder>(&bytes) else {
        return Ok(None);
    };
    let age_ms = now_ms().saturating_sub(holder.renewed_unix_ms);
    let alive = age_ms <= holder.ttl_ms && (holder.host != host_name() || process_runs(holder.pid));
    Ok(alive.then(|| {
        format!(
            "{} (lease renewed {:.1} s ago)",
            holder.owner,
            age_ms as f64 / 1000.0
        )
    }))
}

/// A held lease; renewed until released or dropped.
#[derive(Debug)]
pub(crate) struct Lease {
    location: Location,
    path: Path,
    url: String,
    state: Arc<tokio::sync::Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Lease {
    /// Takes the lease of output `location`'s manifest `manifest_name`; `None` for local outputs
    /// (they are locked with `flock`) and for stores without conditional puts.
    pub(crate) async fn acquire(location: &Location, manifest_name: &str) -> Result<Option<Self>> {
        if location.local_path().is_some() {
            return Ok(None);
        }
        Self::acquire_for(location, manifest_name, ttl()?).await
    }

    /// [`Lease::acquire`] with a time to live.
    async fn acquire_for(
        location: &Location,
        manifest_name: &str,
        ttl: Duration,
    ) -> Result<Option<Self>> {
        let path = location.child(&lease_name(manifest_name));
        let url = location.url_of(&path);
        let host = host_name();
        let pid = std::process::id();
        let tag = format!(
            "{:016x}",
            xxhash_rust::xxh3::xxh3_64(format!("{host}/{pid}/{}/{url}", now_ms()).as_bytes())
        );
        let holder = Holder {
            owner: format!("{host}/{pid}/{tag}"),
            host,
            pid,
            renewed_unix_ms: now_ms(),
            ttl_ms: ttl.as_millis() as u64,
        };
        let store = location.store();
        let created = store
            .put_opts(
                &path,
                payload(&holder)?,
                PutOptions {
                    mode: PutMode::Create,
                    ..Default::default()
                },
            )
            .await;
        let version = match created {
            Ok(put) => UpdateVersion {
                e_tag: put.e_tag,
                version: put.version,
            },
            Err(object_store::Error::NotImplemented { .. }) => {
                tracing::warn!(output = %location.url(), "the store has no conditional puts: the output is written without a lease, so nothing stops a second writer");
                return Ok(None);
            }
            Err(object_store::Error::AlreadyExists { .. }) => {
                Self::take_over_dead(location, &path, &url, &holder).await?
            }
            Err(e) => return Err(location.error(&path, e)),
        };
        if version.e_tag.is_none() && version.version.is_none() {
            tracing::warn!(output = %location.url(), "the store returns no ETag: the lease cannot be renewed, so the output is written without one");
            return Ok(None);
        }
        held().insert(url.clone());
        let state = Arc::new(tokio::sync::Mutex::new(State {
            version,
            lost: None,
            released: false,
            renewing: false,
            last_renewal: std::time::Instant::now(),
        }));
        let task = tokio::spawn(renew(
            Arc::clone(store),
            path.clone(),
            url.clone(),
            holder,
            ttl,
            Arc::clone(&state),
        ));
        Ok(Some(Self {
            location: location.clone(),
            path,
            url,
            state,
            task,
        }))
    }

    /// Takes over a lease that already exists when it is dead; refuses otherwise.
    async fn take_over_dead(
        location: &Location,
        path: &Path,
        url: &str,
        holder: &Holder,
    ) -> Result<UpdateVersion> {
        let store = location.store();
        let found = store.get(path).await.map_err(|e| location.error(path, e))?;
        let seen = UpdateVersion {
            e_tag: found.meta.e_tag.clone(),
            version: found.meta.version.clone(),
        };
        let bytes = found.bytes().await.map_err(|e| location.error(path, e))?;
        let refused = |reason: String| Error::Manifest {
            url: location.url(),
            reason,
        };
        let current: Option<Holder> = serde_json::from_slice(&bytes).ok();
        let why_dead = match &current {
            // An unreadable lease object is no one's lease.
            None => Some(format!("its lease object {url} is unreadable")),
            Some(other) => {
                let age_ms = now_ms().saturating_sub(other.renewed_unix_ms);
                if age_ms > other.ttl_ms {
                    Some(format!(
                        "its writer {} stopped renewing its lease {:.1} s ago",
                        other.owner,
                        age_ms as f64 / 1000.0
                    ))
                } else if other.host == holder.host
                    && (!process_runs(other.pid)
                        || (other.pid == holder.pid && !held().contains(url)))
                {
                    Some(format!(
                        "its writer {} (a process of this host) no longer runs",
                        other.owner
                    ))
                } else {
                    return Err(refused(format!(
                        "another writer ({}) is writing this output now: it holds the lease {url}, renewed {:.1} s ago; \
                         wait for it to finish (a writer that died loses the lease {:.0} s after its last renewal), \
                         or choose another output directory",
                        other.owner,
                        age_ms as f64 / 1000.0,
                        other.ttl_ms as f64 / 1000.0
                    )));
                }
            }
        };
        let taken = store
            .put_opts(
                path,
                payload(holder)?,
                PutOptions {
                    mode: PutMode::Update(seen),
                    ..Default::default()
                },
            )
            .await;
        match taken {
            Ok(put) => {
                if let Some(why) = why_dead {
                    tracing::warn!(output = %location.url(), "took over the output's lease: {why}");
                }
                Ok(UpdateVersion {
                    e_tag: put.e_tag,
                    version: put.version,
                })
            }
            Err(object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. }) => {
                Err(refused(format!(
                    "another writer took over the dead lease {url} just now; choose another output directory or wait for it"
                )))
            }
            Err(e) => Err(location.error(path, e)),
        }
    }

    /// An error when the lease was lost (another writer holds it now).
    pub(crate) async fn check(&self) -> Result<()> {
        let state = self.state.lock().await;
        match &state.lost {
            None => Ok(()),
            Some(why) => Err(Error::Manifest {
                url: self.location.url(),
                reason: format!(
                    "this writer lost its lease {} ({why}); it stops so that two writers' shards never mix",
                    self.url
                ),
            }),
        }
    }

    /// Stops renewing and deletes the lease object (when it is still this writer's).
    pub(crate) async fn release(mut self) -> Result<()> {
        let (lost, renewing) = {
            let mut state = self.state.lock().await;
            state.released = true;
            (state.lost.is_some(), state.renewing)
        };
        // A renewal on its way lands before the delete (or is given up after a while); a task that
        // waits for its next renewal sees `released` whenever it wakes, so it can end now.
        if !renewing
            || tokio::time::timeout(Duration::from_secs(10), &mut self.task)
                .await
                .is_err()
        {
            self.task.abort();
        }
        if !lost {
            match self.location.store().delete(&self.path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.location.error(&self.path, e)),
            }
        }
        Ok(())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.task.abort();
        held().remove(&self.url);
    }
}

fn payload(holder: &Holder) -> Result<PutPayload> {
    let json = serde_json::to_vec(holder).map_err(|source| Error::Json {
        what: "lease".into(),
        source,
    })?;
    Ok(PutPayload::from(Bytes::from(json)))
}

/// Renews the lease every quarter of its time to live until released; marks it lost when another
/// writer holds it or when no renewal succeeded for a whole time to live.
async fn renew(
    store: Arc<dyn ObjectStore>,
    path: Path,
    url: String,
    mut holder: Holder,
    ttl: Duration,
    state: Arc<tokio::sync::Mutex<State>>,
) {
    loop {
        tokio::time::sleep(ttl / 4).await;
        let version = {
            let mut state = state.lock().await;
            if state.released || state.lost.is_some() {
                return;
            }
            state.renewing = true;
            state.version.clone()
        };
        holder.renewed_unix_ms = now_ms();
        let Ok(body) = payload(&holder) else { return };
        // Not under the lock: a store that retries for long must not hold up the writer's checks.
        let put = store
            .put_opts(
                &path,
                body,
                PutOptions {
                    mode: PutMode::Update(version),
                    ..Default::default()
                },
            )
            .await;
        let mut state = state.lock().await;
        state.renewing = false;
        if state.released {
            return;
        }
        match put {
            Ok(put) => {
                state.version = UpdateVersion {
                    e_tag: put.e_tag,
                    version: put.version,
                };
                state.last_renewal = std::time::Instant::now();
            }
            Err(
                object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. },
            ) => {
                tracing::error!(lease = %url, "another writer took this output's lease over");
                state.lost = Some("another writer took it over".into());
                return;
            }
            Err(error) => {
                tracing::warn!(lease = %url, %error, "cannot renew the output's lease; retrying");
                if state.last_renewal.elapsed() > ttl {
                    state.lost = Some(format!(
                        "no renewal succeeded for {:.0} s: {error}",
                        ttl.as_secs_f64()
                    ));
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh store; `name` keeps the lease URLs of tests (run at once, one process) apart.
    fn memory(name: &str) -> Location {
        Location::from_store(
            Arc::new(object_store::memory::InMemory::new()),
            Path::from(name),
            "memory://",
        )
    }

    async fn holder_of(location: &Location) -> Option<Holder> {
        let bytes = location
            .read_optional("._manifest.json.lease")
            .await
            .unwrap()?;
        Some(serde_json::from_slice(&bytes).unwrap())
    }

    async fn plant(location: &Location, host: &str, pid: u32, age_ms: u64) {
        let holder = Holder {
            owner: format!("{host}/{pid}/x"),
            host: host.into(),
            pid,
            renewed_unix_ms: now_ms() - age_ms,
            ttl_ms: 60_000,
        };
        let json = serde_json::to_vec(&holder).unwrap();
        location
            .write("._manifest.json.lease", Bytes::from(json))
            .await
            .unwrap();
    }

    const TTL: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn a_second_writer_is_refused_while_the_first_holds_the_lease() {
        let location = memory("first");
        let first = Lease::acquire_for(&location, "_manifest.json", TTL)
            .await
            .unwrap()
            .unwrap();
        let err = Lease::acquire_for(&location, "_manifest.json", TTL)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("is writing this output now"), "{err}");
        assert!(err.contains(&format!("/{}/", std::process::id())), "{err}");
        // A dropped writer of this process (a failed run) no longer holds it: the next one takes over.
        drop(first);
        let second = Lease::acquire_for(&location, "_manifest.json", TTL)
            .await
            .unwrap()
            .unwrap();
        second.release().await.unwrap();
        assert!(
            holder_of(&location).await.is_none(),
            "release leaves the lease object"
        );
    }

    #[tokio::test]
    async fn a_live_lease_of_another_host_refuses_and_a_dead_one_is_taken_over() {
        let location = memory("hosts");
        plant(&location, "other-host", 7, 1_000).await;
        let err = Lease::acquire_for(&location, "_manifest.json", TTL)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("other-host/7/x"), "{err}");
        // Not renewed for longer than its time to live: dead.
        plant(&location, "other-host", 7, 61_000).await;
        let lease = Lease::acquire_for(&location, "_manifest.json", TTL)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(holder_of(&location).await.unwrap().pid, std::process::id());
        lease.release().await.unwrap();
        // A process of this host that no longer runs: dead at once.
        let mut gone = std::process::Command::new("true").spawn().unwrap();
        let pid = gone.id();
        gone.wait().unwrap();
        plant(&location, &host_name(), pid, 0).await;
        let lease = Lease::acquire_for(&location, "_manifest.json", TTL)
            .await
            .unwrap()
            .unwrap();
        lease.release().await.unwrap();
    }

    #[tokio::test]
    async fn a_writer_whose_lease_was_taken_over_fails_its_next_check() {
        let location = memory("lost");
        let ttl = Duration::from_millis(200);
        let lease = Lease::acquire_for(&location, "_manifest.json", ttl)
            .await
            .unwrap()
            .unwrap();
        // Renewals keep it.
        tokio::time::sleep(ttl * 2).await;
        lease.check().await.unwrap();
        let renewed = holder_of(&location).await.unwrap();
        assert!(now_ms() - renewed.renewed_unix_ms < 200, "{renewed:?}");
        // Another writer overwrites it: the next renewal finds out.
        plant(&location, "other-host", 7, 0).await;
        tokio::time::sleep(ttl).await;
        let err = lease.check().await.unwrap_err().to_string();
        assert!(err.contains("lost its lease"), "{err}");
        lease.release().await.unwrap();
        assert_eq!(holder_of(&location).await.unwrap().host, "other-host");
    }
}
