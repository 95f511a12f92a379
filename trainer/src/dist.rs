//! Data-parallel training across processes: a process group of LibTorch's c10d (TCPStore rendezvous,
//! gloo collectives over TCP), reached through `csrc/dist.cpp` because tch binds none of it.
//!
//! Ranks find each other from the launcher's environment — `RANK`, `WORLD_SIZE`, `MASTER_ADDR`,
//! `MASTER_PORT` (and `LOCAL_RANK`), as `torchrun --no-python dapt train …`, Slurm's `srun` wrapper
//! scripts or `dapt train --nproc N` set them. Every collective waits at most the group's timeout
//! (`DAPT_DIST_TIMEOUT_S`, 300 s by default); a rank that died makes its peers' next collective fail
//! (gloo sees the closed connection) rather than hang.
//!
//! Collectives run on CPU tensors (gloo); tensors on an accelerator are staged through the CPU.
use std::ffi::{c_char, c_void, CStr, CString};
use std::time::Duration;

use tch::{Device, Kind, Tensor};

use crate::{Error, Result};

#[repr(C)]
struct RawGroup {
    _private: [u8; 0],
}

#[repr(C)]
struct RawWork {
    _private: [u8; 0],
}

extern "C" {
    fn dapt_dist_init(
        host: *const c_char,
        port: u16,
        rank: i32,
        world: i32,
        serve_store: bool,
        prefix: *const c_char,
        bind_host: *const c_char,
        timeout_ms: i64,
        out: *mut *mut RawGroup,
    ) -> *mut c_char;
    fn dapt_dist_free(group: *mut RawGroup);
    fn dapt_dist_allreduce(
        group: *mut RawGroup,
        tensor: *const c_void,
        out: *mut *mut RawWork,
    ) -> *mut c_char;
    fn dapt_dist_broadcast(
        group: *mut RawGroup,
        tensor: *const c_void,
        root: i32,
        out: *mut *mut RawWork,
    ) -> *mut c_char;
    fn dapt_dist_reduce_scatter(
        group: *mut RawGroup,
        output: *const c_void,
        input: *const c_void,
        out: *mut *mut RawWork,
    ) -> *mut c_char;
    fn dapt_dist_allgather(
        group: *mut RawGroup,
        output: *const c_void,
        input: *const c_void,
        out: *mut *mut RawWork,
    ) -> *mut c_char;
    fn dapt_dist_barrier(group: *mut RawGroup, out: *mut *mut RawWork) -> *mut c_char;
    fn dapt_dist_wait(group: *mut RawGroup, work: *mut RawWork) -> *mut c_char;
    fn free(pointer: *mut c_void);
}

/// The shim's collectives of an output and an input tensor.
type OutputInputFn = unsafe extern "C" fn(
    *mut RawGroup,
    *const c_void,
    *const c_void,
    *mut *mut RawWork,
) -> *mut c_char;

/// Gradients are all-reduced in buckets of about this many bytes (a few large messages instead of
/// one per tensor, all in flight at once).
pub const BUCKET_BYTES: usize = 25 << 20;

/// Tensors (any device and kind) as one flat float32 tensor on the CPU, in order.
pub(crate) fn flatten(tensors: impl IntoIterator<Item = Tensor>) -> Tensor {
    let pieces: Vec<Tensor> = tensors
        .into_iter()
        .map(|t| t.to_device(Device::Cpu).to_kind(Kind::Float).flatten(0, -1))
        .collect();
    Tensor::cat(&pieces, 0)
}

/// Hands each tensor its piece of `flat` (laid out as [`flatten`] lays them), shaped like it.
fn unflatten<'t>(
    tensors: impl IntoIterator<Item = &'t Tensor>,
    flat: &Tensor,
    mut write: impl FnMut(&Tensor, &Tensor),
) {
    let mut offset = 0;
    for t in tensors {
        let n = t.numel() as i64;
        write(t, &flat.narrow(0, offset, n).view_as(t));
        offset += n;
    }
}

/// A variable's gradient, or zeros shaped like it when it has none.
fn grad_or_zeros(t: &Tensor) -> Tensor {
    let grad = t.grad();
    if grad.defined() {
        grad
    } else {
        t.zeros_like()
    }
}

/// Copies `value` into `target`, on `target`'s device and in its kind.
fn assign(target: &Tensor, value: &Tensor) {
    target
        .shallow_clone()
        .copy_(&value.to_device(target.device()).to_kind(target.kind()));
}

/// Copies `value` into a variable's gradient, when it has one.
fn assign_grad(t: &Tensor, value: &Tensor) {
    let grad = t.grad();
    if grad.defined() {
        assign(&grad, value);
    }
}

/// Where a rank learns its place in the group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    /// This process's rank, 0-based.
    pub rank: usize,
    /// Ranks in the group.
    pub world: usize,
    /// Rank on this machine (picks the CUDA device).
    pub local_rank: usize,
    /// Host of rank 0's TCPStore.
    pub master_addr: String,
    /// Port of rank 0's TCPStore.
    pub master_port: u16,
    /// How long a collective may wait for its peers.
    pub timeout: Duration,
    /// The launcher already serves the store at MASTER_ADDR:MASTER_PORT (torchrun's agent store,
    /// `TORCHELASTIC_USE_AGENT_STORE=True`): rank 0 connects to it instead of serving one.
    pub agent_store: bool,
    /// torchrun's restart count (`TORCHELASTIC_RESTART_COUNT`): each attempt rendezvous under its
    /// own key prefix, so keys of a failed attempt in the agent's store are not read again.
    pub attempt: u64,
}

impl Launch {
    /// The launch a launcher described in the environment, or `None` outside one (no `WORLD_SIZE`,
    /// or a world of one process). Malformed values are refused by name.
    pub fn from_env() -> Result<Option<Self>> {
        Self::from_vars(|key| std::env::var(key).ok())
    }

    /// As [`Launch::from_env`], reading variables through `var`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Self>> {
        let number = |key: &str| -> Result<Option<u64>> {
            var(key)
                .map(|v| {
                    v.trim().parse::<u64>().map_err(|_| Error::Setting {
                        key: key.into(),
                        reason: format!("{v:?} is not a whole number"),
                    })
                })
                .transpose()
        };
        let Some(world) = number("WORLD_SIZE")? else {
            return Ok(None);
        };
        if world <= 1 {
            return Ok(None);
        }
        let rank = number("RANK")?.ok_or_else(|| Error::Setting {
            key: "RANK".into(),
            reason: "WORLD_SIZE is set but RANK is not".into(),
        })?;
        if rank >= world {
            return Err(Error::Setting {
                key: "RANK".into(),
                reason: format!("{rank} is not below WORLD_SIZE {world}"),
            });
        }
        let port = number("MASTER_PORT")?.unwrap_or(29500);
        let master_port = u16::try_from(port).map_err(|_| Error::Setting {
            key: "MASTER_PORT".into(),
            reason: format!("{port} is not a port"),
        })?;
        let timeout = number("DAPT_DIST_TIMEOUT_S")?.unwrap_or(300).max(1);
        Ok(Some(Self {
            rank: rank as usize,
            world: world as usize,
            local_rank: number("LOCAL_RANK")?.unwrap_or(0) as usize,
            master_addr: var("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into()),
            master_port,
            timeout: Duration::from_secs(timeout),
            agent_store: var("TORCHELASTIC_USE_AGENT_STORE")
                .is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1"),
            attempt: number("TORCHELASTIC_RESTART_COUNT")?.unwrap_or(0),
        }))
    }
}

/// A process group: this rank's handle on the collectives of all ranks.
pub struct Dist {
    group: *mut RawGroup,
    rank: usize,
    world: usize,
    local_rank: usize,
}

// SAFETY: c10d process groups are used from several threads in PyTorch itself (each collective is
// queued to gloo's worker threads under the group's own lock); the handle is never aliased mutably.
unsafe impl Send for Dist {}
// SAFETY: as above; every method takes `&self` and the C++ side synchronises.
unsafe impl Sync for Dist {}

impl std::fmt::Debug for Dist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dist")
            .field("rank", &self.rank)
            .field("world", &self.world)
            .finish()
    }
}

impl Drop for Dist {
    fn drop(&mut self) {
        // SAFETY: `group` came from `dapt_dist_init` and is freed once, here.
        unsafe { dapt_dist_free(self.group) };
    }
}

/// A collective in flight; dropping it unwaited (an error between start and wait) waits for it.
struct Work {
    group: *mut RawGroup,
    raw: *mut RawWork,
}

fn take_error(error: *mut c_char) -> Option<String> {
    if error.is_null() {
        return None;
    }
    // SAFETY: a non-null result of the shim is a NUL-terminated string it malloc'd for us to free.
    unsafe {
        let message = CStr::from_ptr(error).to_string_lossy().into_owned();
        free(error.cast());
        Some(message)
    }
}

impl Dist {
    /// Joins the group `launch` describes (rank 0 serves the rendezvous store); returns once every
    /// rank has joined, or fails after the timeout.
    pub fn join(launch: &Launch) -> Result<Self> {
        let fail = |message: String| Error::Distributed {
            rank: launch.rank,
            world: launch.world,
            what: format!(
                "joining the group at {}:{}",
                launch.master_addr, launch.master_port
            ),
            message,
        };
        let host = CString::new(launch.master_addr.as_str())
            .map_err(|_| fail("MASTER_ADDR holds a NUL byte".into()))?;
        // On one machine (a loopback rendezvous) the ranks talk over loopback too; elsewhere gloo
        // binds to this machine's hostname (or GLOO_SOCKET_IFNAME).
        let loopback = launch.master_addr == "localhost"
            || launch
                .master_addr
                .parse::<std::net::IpAddr>()
                .is_ok_and(|a| a.is_loopback());
        let bind = CString::new(if loopback { "127.0.0.1" } else { "" }).unwrap_or_default();
        let prefix = CString::new(format!("dapt/attempt_{}", launch.attempt)).unwrap_or_default();
        let mut group: *mut RawGroup = std::ptr::null_mut();
        // SAFETY: the strings outlive the call; on success the shim writes a heap handle we own.
        let error = unsafe {
            dapt_dist_init(
                host.as_ptr(),
                launch.master_port,
                launch.rank as i32,
                launch.world as i32,
                !launch.agent_store && launch.rank == 0,
                prefix.as_ptr(),
                bind.as_ptr(),
                i64::try_from(launch.timeout.as_millis()).unwrap_or(i64::MAX),
                &mut group,
            )
        };
        if let Some(message) = take_error(error) {
            return Err(fail(message));
        }
        tracing::info!(
            rank = launch.rank,
            world = launch.world,
            master = %format!("{}:{}", launch.master_addr, launch.master_port),
            "joined the process group (gloo)"
        );
        Ok(Self {
            group,
            rank: launch.rank,
            world: launch.world,
            local_rank: launch.local_rank,
        })
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Ranks in the group.
    pub fn world(&self) -> usize {
        self.world
    }

    /// This process's rank on its machine (which GPU it trains on).
    pub fn local_rank(&self) -> usize {
        self.local_rank
    }

    fn error(&self, what: &str, message: String) -> Error {
        Error::Distributed {
            rank: self.rank,
            world: self.world,
            what: what.into(),
            message,
        }
    }

    fn started(&self, what: &str, error: *mut c_char, raw: *mut RawWork) -> Result<Work> {
        match take_error(error) {
            Some(message) => Err(self.error(what, message)),
            None => Ok(Work {
                group: self.group,
                raw,
            }),
        }
    }

    fn wait(&self, what: &str, mut work: Work) -> Result<()> {
        let raw = std::mem::replace(&mut work.raw, std::ptr::null_mut());
        // SAFETY: `raw` is a live handle of this group; the shim frees it.
        let error = unsafe { dapt_dist_wait(self.group, raw) };
        match take_error(error) {
            Some(message) => Err(self.error(what, message)),
            None => Ok(()),
        }
    }

    /// Waits for every collective in `works` (all of them, even after a failure), then reports the
    /// first failure.
    fn wait_all(&self, what: &str, works: Vec<Work>) -> Result<()> {
        let mut first = Ok(());
        for work in works {
            let result = self.wait(what, work);
            if first.is_ok() {
                first = result;
            }
        }
        first
    }

    fn start_all_reduce(&self, tensor: &Tensor) -> Result<Work> {
        let mut raw = std::ptr::null_mut();
        // SAFETY: `tensor` is a live tch tensor (an `at::Tensor*`); the work keeps its storage alive.
        let error = unsafe { dapt_dist_allreduce(self.group, tensor.as_ptr().cast(), &mut raw) };
        self.started("all-reduce", error, raw)
    }

    fn start_broadcast(&self, tensor: &Tensor, root: usize) -> Result<Work> {
        let mut raw = std::ptr::null_mut();
        // SAFETY: as in `start_all_reduce`.
        let error = unsafe {
            dapt_dist_broadcast(self.group, tensor.as_ptr().cast(), root as i32, &mut raw)
        };
        self.started("broadcast", error, raw)
    }

    /// Sums each tensor over every rank, in place. The tensors must be contiguous and on the CPU.
    pub fn all_reduce_sum(&self, tensors: &[&Tensor]) -> Result<()> {
        let mut works = Vec::with_capacity(tensors.len());
        for tensor in tensors {
            match self.start_all_reduce(tensor) {
                Ok(work) => works.push(work),
                Err(e) => {
                    let _ = self.wait_all("all-reduce", works);
                    return Err(e);
                }
            }
        }
        self.wait_all("all-reduce", works)
    }

    /// Copies rank `root`'s tensor into every rank's, in place (contiguous, on the CPU).
    pub fn broadcast(&self, tensor: &Tensor, root: usize) -> Result<()> {
        let work = self.start_broadcast(tensor, root)?;
        self.wait("broadcast", work)
    }

    /// Runs a collective of an output and an input tensor (reduce-scatter, all-gather) and waits.
    fn output_input(
        &self,
        what: &str,
        start: OutputInputFn,
        output: &Tensor,
        input: &Tensor,
    ) -> Result<()> {
        let mut raw = std::ptr::null_mut();
        // SAFETY: both are live tch tensors (`at::Tensor*`); the work keeps their storage alive
        // until it is waited for.
        let error = unsafe {
            start(
                self.group,
                output.as_ptr().cast(),
                input.as_ptr().cast(),
                &mut raw,
            )
        };
        let work = self.started(what, error, raw)?;
        self.wait(what, work)
    }

    /// Sums `input` (`[world × n]`, contiguous, CPU) over every rank; this rank's `output` (`[n]`)
    /// receives part `rank` of the sum.
    pub fn reduce_scatter_sum(&self, output: &Tensor, input: &Tensor) -> Result<()> {
        self.output_input("reduce-scatter", dapt_dist_reduce_scatter, output, input)
    }

    /// Concatenates every rank's `input` (`[n]`, contiguous, CPU) into `output` (`[world × n]`) in
    /// rank order.
    pub fn all_gather(&self, output: &Tensor, input: &Tensor) -> Result<()> {
        self.output_input("all-gather", dapt_dist_allgather, output, input)
    }

    /// Returns once every rank has reached it.
    pub fn barrier(&self) -> Result<()> {
        let mut raw = std::ptr::null_mut();
        // SAFETY: the group is live; the shim writes a work handle we own.
        let error = unsafe { dapt_dist_barrier(self.group, &mut raw) };
        let work = self.started("barrier", error, raw)?;
        self.wait("barrier", work)
    }

    /// A number summed over every rank (token counts, loss sums).
    pub fn sum_f64(&self, values: &[f64]) -> Result<Vec<f64>> {
        let tensor = Tensor::from_slice(values).to_kind(Kind::Double);
        self.all_reduce_sum(&[&tensor])?;
        Ok(Vec::<f64>::try_from(&tensor).unwrap_or_default())
    }

    /// Sums the gradients of `parameters` over every rank, in place: they are flattened into
    /// buckets of about [`BUCKET_BYTES`], all buckets are reduced at once, and the sums are copied
    /// back. A parameter without a gradient contributes zeros (and gets none back). Every rank must
    /// pass the same parameters in the same order.
    pub fn all_reduce_gradients(&self, parameters: &[Tensor]) -> Result<()> {
        tch::no_grad(|| {
            let mut buckets: Vec<Vec<&Tensor>> = vec![Vec::new()];
            let mut bytes = 0;
            for p in parameters {
                let size = p.numel() * 4;
                if bytes > 0 && bytes + size > BUCKET_BYTES {
                    buckets.push(Vec::new());
                    bytes = 0;
                }
                bytes += size;
                if let Some(last) = buckets.last_mut() {
                    last.push(p);
                }
            }
            let flat: Vec<(Vec<&Tensor>, Tensor)> = buckets
                .into_iter()
                .filter(|b| !b.is_empty())
                .map(|bucket| {
                    let sum = flatten(bucket.iter().map(|p| grad_or_zeros(p)));
                    (bucket, sum)
                })
                .collect();
            let refs: Vec<&Tensor> = flat.iter().map(|(_, t)| t).collect();
            self.all_reduce_sum(&refs)?;
            for (bucket, sum) in &flat {
                unflatten(bucket.iter().copied(), sum, assign_grad);
            }
            Ok(())
        })
    }

    /// Copies the values of each tensor from `root` to every rank (staged through the CPU, in one
    /// flat message).
    pub fn broadcast_tensors(&self, tensors: &[Tensor], root: usize) -> Result<()> {
        if tensors.is_empty() {
            return Ok(());
        }
        tch::no_grad(|| {
            let flat = flatten(tensors.iter().map(Tensor::shallow_clone));
            self.broadcast(&flat, root)?;
            if self.rank != root {
                unflatten(tensors, &flat, assign);
            }
            Ok(())
        })
    }
}

/// ZeRO-1's flat layout: the variables grouped by owner, each owner's group padded to one shard
/// length, so that a reduce-scatter hands every rank the summed gradients of exactly its variables
/// and an all-gather hands every rank the updated values of all.
pub struct ShardLayout {
    /// Per rank, the variables it owns, in name order.
    groups: Vec<Vec<Tensor>>,
    /// Values per shard (the largest group's size).
    shard: i64,
}

impl ShardLayout {
    /// The layout of `(variable, owner)` pairs (every rank passes the same list) over `world` ranks.
    pub fn new(owners: Vec<(Tensor, usize)>, world: usize) -> Self {
        let mut groups: Vec<Vec<Tensor>> = (0..world).map(|_| Vec::new()).collect();
        for (tensor, owner) in owners {
            groups[owner.min(world - 1)].push(tensor);
        }
        let shard = groups
            .iter()
            .map(|g| g.iter().map(|t| t.numel() as i64).sum::<i64>())
            .max()
            .unwrap_or(0)
            .max(1);
        Self { groups, shard }
    }

    /// `value` of each tensor, flattened and padded with zeros to one shard.
    fn padded(&self, tensors: &[Tensor], value: impl Fn(&Tensor) -> Tensor) -> Tensor {
        let used: i64 = tensors.iter().map(|t| t.numel() as i64).sum();
        let padding = Tensor::zeros([self.shard - used], (Kind::Float, Device::Cpu));
        flatten(tensors.iter().map(value).chain(std::iter::once(padding)))
    }

    /// Reduce-scatters the gradients: afterwards the variables this rank owns hold the gradients
    /// summed over all ranks (the others keep their local ones, which nothing reads).
    pub fn reduce_scatter_gradients(&self, dist: &Dist) -> Result<()> {
        tch::no_grad(|| {
            let input = Tensor::cat(
                &self
                    .groups
                    .iter()
                    .map(|g| self.padded(g, grad_or_zeros))
                    .collect::<Vec<_>>(),
                0,
            );
            let output = Tensor::zeros([self.shard], (Kind::Float, Device::Cpu));
            dist.reduce_scatter_sum(&output, &input)?;
            unflatten(&self.groups[dist.rank()], &output, assign_grad);
            Ok(())
        })
    }

    /// All-gathers the values: every rank's variables take the values their owners hold.
    pub fn all_gather_values(&self, dist: &Dist) -> Result<()> {
        tch::no_grad(|| {
            let input = self.padded(&self.groups[dist.rank()], Tensor::shallow_clone);
            let output = Tensor::zeros(
                [self.shard * self.groups.len() as i64],
                (Kind::Float, Device::Cpu),
            );
            dist.all_gather(&output, &input)?;
            for (rank, group) in self.groups.iter().enumerate() {
                let part = output.narrow(0, rank as i64 * self.shard, self.shard);
                unflatten(group, &part, assign);
            }
            Ok(())
        })
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        if self.raw.is_null() {
            return;
        }
        // SAFETY: `raw` is a live handle of `group`, which outlives its works; the shim frees it.
        let error = unsafe { dapt_dist_wait(self.group, self.raw) };
        drop(take_error(error));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |key| {
            pairs
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| (*v).to_string())
        }
    }

    #[test]
    fn the_launch_comes_from_the_launchers_variables() {
        assert_eq!(Launch::from_vars(vars(&[])).unwrap(), None);
        assert_eq!(
            Launch::from_vars(vars(&[("WORLD_SIZE", "1")])).unwrap(),
            None
        );
        let launch = Launch::from_vars(vars(&[
            ("WORLD_SIZE", "2"),
            ("RANK", "1"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "10.0.0.5"),
            ("MASTER_PORT", "29400"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            launch,
            Launch {
                rank: 1,
                world: 2,
                local_rank: 1,
                master_addr: "10.0.0.5".into(),
                master_port: 29400,
                timeout: Duration::from_secs(300),
                agent_store: false,
                attempt: 0,
            }
        );
        // Under torchrun the agent serves the store; a restart rendezvous under its own prefix.
        let launch = Launch::from_vars(vars(&[
            ("WORLD_SIZE", "4"),
            ("RANK", "0"),
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
            ("TORCHELASTIC_RESTART_COUNT", "2"),
        ]))
        .unwrap()
        .unwrap();
        assert!(launch.agent_store && launch.attempt == 2 && launch.master_port == 29500);
        for (pairs, key) in [
            (&[("WORLD_SIZE", "2")][..], "RANK"),
            (&[("WORLD_SIZE", "2"), ("RANK", "2")][..], "RANK"),
            (&[("WORLD_SIZE", "two")][..], "WORLD_SIZE"),
            (
                &[("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_PORT", "70000")][..],
                "MASTER_PORT",
            ),
        ] {
            let error = Launch::from_vars(vars(pairs)).unwrap_err().to_string();
            assert!(error.contains(key), "{key}: {error}");
        }
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap()
    }

    /// What a rank of the test saw: sums, a broadcast tensor, two gradients.
    type Seen = (Vec<f64>, Vec<f32>, Vec<f32>, Vec<f32>);

    /// Two ranks (threads of this test) on loopback: sums, broadcasts and bucketed gradients.
    #[test]
    fn two_ranks_sum_broadcast_and_reduce_gradients() {
        let port = free_port();
        let ranks: Vec<_> = (0..2)
            .map(|rank| {
                std::thread::spawn(move || -> Result<Seen> {
                    let dist = Dist::join(&Launch {
                        rank,
                        world: 2,
                        local_rank: rank,
                        master_addr: "127.0.0.1".into(),
                        master_port: port,
                        timeout: Duration::from_secs(60),
                        agent_store: false,
                        attempt: 0,
                    })?;
                    let sums = dist.sum_f64(&[1.0 + rank as f64, 10.0])?;
                    let shared = Tensor::from_slice(&[rank as f32 + 5.0, 7.0]);
                    dist.broadcast_tensors(&[shared.shallow_clone()], 1)?;
                    // Two parameters with gradients of rank-dependent values, one without.
                    let a = Tensor::from_slice(&[1.0f32, 2.0]).set_requires_grad(true);
                    let b = Tensor::from_slice(&[3.0f32]).set_requires_grad(true);
                    let c = Tensor::from_slice(&[4.0f32]).set_requires_grad(true);
                    let scale = (rank + 1) as f64;
                    ((&a * &a).sum(Kind::Float) * scale + (&b * scale).sum(Kind::Float)).backward();
                    dist.all_reduce_gradients(&[a.shallow_clone(), b.shallow_clone(), c])?;
                    dist.barrier()?;
                    Ok((
                        sums,
                        Vec::<f32>::try_from(&shared).unwrap(),
                        Vec::<f32>::try_from(&a.grad()).unwrap(),
                        Vec::<f32>::try_from(&b.grad()).unwrap(),
                    ))
                })
            })
            .collect();
        for handle in ranks {
            let (sums, shared, a, b) = handle.join().unwrap().unwrap();
            assert_eq!(sums, vec![3.0, 20.0]);
            assert_eq!(shared, vec![6.0, 7.0]);
            // d/da of (a·a)·s summed over s = 1, 2: 2a·3.
            assert_eq!(a, vec![6.0, 12.0]);
            assert_eq!(b, vec![3.0]);
        }
    }
}
