//! Where a batch's state lives: SQLite (a file, the default) or PostgreSQL (shared by workers on
//! many machines), through sqlx's runtime-chosen driver, with the same SQL for both but the claim.
//!
//! Every arrow of [`crate::machine`] is one method, one committed transaction; each `UPDATE`
//! names the state it moves a line from, so a transition the machine forbids cannot happen,
//! whatever two workers do at once. The module is split by concern:
//!
//! - `schema`: the tables, the migration of an older state, each connection's settings;
//! - `liveness`: a worker joining and leaving, its liveness lock, and reaping the dead;
//! - `claim`: taking a line (never one held back, nor one waiting out a setback);
//! - `arrows`: one function per arrow of the state table;
//! - `read`: counts, pages of lines, and summaries by reason, for reports.

mod arrows;
mod claim;
mod liveness;
mod read;
mod schema;
mod uploads;
mod url;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::{AnyConnection, AnyPool, Connection};

use crate::{Error, Source};

pub use arrows::{OutcomeToken, Retry, Submitting};
pub use claim::Claim;
pub use liveness::Worker;
pub use read::{LineRecord, Pages, Progress, Reason};
pub use url::StateUrl;

/// How long after a worker began its `submitting` commit its POST may still start: after that,
/// the submission is not sent at all (`Client::submit_fenced`).
pub const SEND_WINDOW: Duration = Duration::from_secs(2);

/// On systems where the API's connections cannot be told to give up unacknowledged data
/// (Linux's `TCP_USER_TIMEOUT`), how long the kernel may go on retransmitting a POST's bytes
/// after its process gave up on it, or died: Linux's own default (15 retries, about 924.6 s)
/// rounded up, as the longest a common kernel keeps trying.
const KERNEL_RETRANSMISSION: Duration = Duration::from_secs(16 * 60);

/// The longest after its commit began that a recorded submission's bytes may still reach the
/// service, with the client's request timeout `T`: its attempt starts within [`SEND_WINDOW`];
/// the request timeout bounds everything before its first byte is written (the connection,
/// the TLS handshake, a pooled connection's wait), so the write begins within `T` of the
/// attempt; and the connection gives up unacknowledged data `T` after it was sent
/// (`TCP_USER_TIMEOUT`, set on Linux), also after the process gave up on it or died. So
/// `S = SEND_WINDOW + 2T` on Linux; elsewhere the kernel's retransmission replaces the second
/// `T`.
pub fn send_bound(request_timeout: Duration) -> Duration {
    let after_write = if cfg!(any(target_os = "linux", target_os = "android")) {
        request_timeout
    } else {
        KERNEL_RETRANSMISSION.max(request_timeout)
    };
    SEND_WINDOW
        .saturating_add(request_timeout)
        .saturating_add(after_write)
}

/// The lock-delay of a submission: its line's outcome becomes settled (its token one
/// `--resubmit-unknown` accepts, and a counted-out sender's `submitting` line `unknown`) only
/// once the database's clock is past the commit's start plus [`send_bound`] `S` plus a margin
/// (a second and a tenth of `S`, for the two clocks' rates and the commit's own time), so that
/// nothing its worker sent can still arrive. The sender stores its own, so its platform decides.
pub fn lock_delay(request_timeout: Duration) -> Duration {
    let send = send_bound(request_timeout);
    send.saturating_add(Duration::from_secs(1))
        .saturating_add(send / 10)
}

/// How many times in a row a line may go back to `pending` unsent (a 429, a POST never sent,
/// no pacer turn) before it is refused for the run: the client's own limit on 429s in a row.
pub const MAX_DEFERRALS: u32 = 6;

/// A worker whose heartbeat (every 2 s, on the database's clock) is older than this is counted
/// out, even if its liveness lock looks held: a worker paused (SIGSTOP), or cut off behind a
/// pooler that keeps its server session (and so its lock) alive.
pub const HEARTBEAT_STALE: Duration = Duration::from_secs(25);

/// The advisory-lock namespace of gptimage workers in PostgreSQL ("gpti").
const PG_LOCK_CLASS: i32 = 0x6770_7469;

/// Which database the state is in: they differ in one statement (the claim) and in how a dead
/// worker is told from a live one.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Backend {
    Sqlite { path: PathBuf },
    Postgres,
}

/// The open state of a batch.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    url: StateUrl,
    backend: Backend,
    /// How each session commits (see [`schema::Commit`]).
    commit: schema::Commit,
}

/// How a state is opened.
#[derive(Debug, Clone, Copy, Default)]
#[non_exhaustive]
pub struct OpenOptions {
    /// Accept a PostgreSQL server with asynchronous standbys only. A failover to one of them
    /// (automatic with Patroni, CloudNativePG or a managed service) can take back a committed
    /// `submitting`, and a line would then be paid for twice; off by default, so such a server
    /// is refused with the reason.
    pub accept_async_replicas: bool,
}

impl OpenOptions {
    /// The defaults: asynchronous-only replication refused.
    pub fn new() -> Self {
        Self::default()
    }

    /// Accepts asynchronous-only replication (see the field).
    pub fn accept_async_replicas(mut self, accept: bool) -> Self {
        self.accept_async_replicas = accept;
        self
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("url", &self.url).finish()
    }
}

impl Store {
    /// Opens (creating when missing) the state at `url`, with the schema in place.
    pub async fn open(url: &StateUrl) -> Result<Self, Error> {
        Self::open_with(url, &OpenOptions::default()).await
    }

    /// Like [`open`](Self::open), as `options` say.
    pub async fn open_with(url: &StateUrl, options: &OpenOptions) -> Result<Self, Error> {
        Self::connect(url, true, options).await
    }

    /// Opens an existing state to look at it, changing nothing; a missing SQLite file is an
    /// error, not a new state.
    pub async fn open_existing(url: &StateUrl) -> Result<Self, Error> {
        if let StateUrl::Sqlite(path) = url
            && !path.is_file()
        {
            return Err(Error::NoState { url: url.clone() });
        }
        let options = OpenOptions::new().accept_async_replicas(true);
        let store = Self::connect(url, false, &options).await?;
        if store.backend == Backend::Postgres {
            let tables: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM information_schema.tables WHERE table_name = 'gptimage_batch'
                 AND table_schema = ANY (current_schemas(false))",
            )
            .fetch_one(&store.pool)
            .await
            .map_err(|e| store.error(e))?;
            if tables == 0 {
                return Err(Error::NoState { url: url.clone() });
            }
        }
        // A state an earlier version wrote gets the columns this one reads (added, never
        // changed: what it says stays as it was).
        let mut conn = store.pool.acquire().await.map_err(|e| store.error(e))?;
        let newer = schema::create(&mut conn, &store.backend)
            .await
            .map_err(|e| store.error(e))?;
        drop(conn);
        newer_format(url, newer)?;
        Ok(store)
    }

    async fn connect(url: &StateUrl, create: bool, options: &OpenOptions) -> Result<Self, Error> {
        sqlx::any::install_default_drivers();
        let backend = match url {
            StateUrl::Sqlite(path) => {
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
                    && create
                {
                    std::fs::create_dir_all(parent).map_err(|e| state_error(url, e))?;
                }
                refuse_network_file_system(path)?;
                private_files(path, create).map_err(|e| state_error(url, e))?;
                Backend::Sqlite { path: path.clone() }
            }
            StateUrl::Postgres(_) => Backend::Postgres,
        };
        let connect_url = url.connect_url(create)?;
        // SQLite: one process at a time opens (and creates, and turns to WAL) a state. Two that
        // race there can meet SQLite's deadlock rule (one holding a read lock it wants to make a
        // write lock while the other waits to make its write lock exclusive, for the switch to
        // WAL): the first gets "database is locked" at once, its busy timeout never asked.
        let _opening = match &backend {
            Backend::Sqlite { path } => {
                Some(opening_lock(path).await.map_err(|e| state_error(url, e))?)
            }
            Backend::Postgres => None,
        };
        // The first connection is made by hand: a pool retries a failing connect until its
        // timeout and then reports only that, where this reports the cause (a full disk, a
        // refused password) at once.
        let mut first = AnyConnection::connect(&connect_url)
            .await
            .map_err(|e| state_error(url, e))?;
        // Durable on the server that answers, and on any it fails over to.
        let commit = schema::durability(url, &mut first, options).await?;
        schema::configure(&mut first, commit)
            .await
            .map_err(|e| state_error(url, e))?;
        if backend == Backend::Postgres {
            liveness::refuse_a_transaction_pooler(url, &connect_url, &mut first, commit).await?;
        }
        if create {
            let newer = schema::create(&mut first, &backend)
                .await
                .map_err(|e| state_error(url, e))?;
            newer_format(url, newer)?;
        }
        first.close().await.map_err(|e| state_error(url, e))?;
        let pool = AnyPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(std::time::Duration::from_secs(60))
            .after_connect(move |conn, _| Box::pin(schema::configure(conn, commit)))
            .connect_lazy(&connect_url)
            .map_err(|e| state_error(url, e))?;
        Ok(Self {
            pool,
            url: url.clone(),
            backend,
            commit,
        })
    }

    /// The statement `template` with each `NOW_MS` replaced by the database's clock, in
    /// milliseconds since 1970: every time that spaces retries, holds a line back or counts a
    /// worker out is the database's, so the workers' own clocks never need to agree.
    fn sql(&self, template: &str) -> sqlx::AssertSqlSafe<String> {
        let now = match self.backend {
            Backend::Postgres => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
            Backend::Sqlite { .. } => {
                "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)"
            }
        };
        sqlx::AssertSqlSafe(template.replace("NOW_MS", now))
    }

    /// Where this state is.
    pub fn url(&self) -> &StateUrl {
        &self.url
    }

    fn error(&self, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
        state_error(&self.url, e)
    }

    /// A transaction that writes. On SQLite it takes the write lock up front (`BEGIN
    /// IMMEDIATE`), so a worker waits its turn behind another's write (busy_timeout): a
    /// deferred transaction whose read turns into a write fails at once instead (SQLITE_BUSY,
    /// which WAL gives without waiting when another connection wrote since the read began),
    /// and a worker would stop over a write it only had to wait for.
    pub(crate) async fn write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, Error> {
        let begun = match self.backend {
            Backend::Sqlite { .. } => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        };
        begun.map_err(|e| self.error(e))
    }

    fn lost(&self) -> Error {
        Error::LostWorker {
            url: self.url.clone(),
        }
    }

    /// Binds the state to `source`'s batch, or refuses a state that belongs to another file.
    pub async fn bind(&self, source: &Source) -> Result<(), Error> {
        let name = source
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        sqlx::query(
            "INSERT INTO gptimage_batch (one, batch_id, file_name, items, state_id)
             VALUES (1, $1, $2, $3, $4) ON CONFLICT (one) DO NOTHING",
        )
        .bind(source.id().to_owned())
        .bind(name)
        .bind(source.len() as i64)
        .bind(new_state_id())
        .execute(&self.pool)
        .await
        .map_err(|e| self.error(e))?;
        // A state made before states had an identity gets one now.
        sqlx::query("UPDATE gptimage_batch SET state_id = $1 WHERE one = 1 AND state_id IS NULL")
            .bind(new_state_id())
            .execute(&self.pool)
            .await
            .map_err(|e| self.error(e))?;
        let progress = self.progress().await?;
        if progress.batch_id != source.id() {
            return Err(Error::OtherBatch {
                url: self.url.clone(),
                file: source.path().to_path_buf(),
                theirs: progress.file_name,
                their_lines: progress.lines,
            });
        }
        Ok(())
    }

    /// The state's identity: random, made when the state was, and carried by its tokens.
    pub async fn state_id(&self) -> Result<String, Error> {
        let id: Option<String> =
            sqlx::query_scalar("SELECT state_id FROM gptimage_batch WHERE one = 1")
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| self.error(e))?
                .flatten();
        Ok(id.unwrap_or_default())
    }

    /// Sets the batch's credit budget, which every worker obeys from its next submission on,
    /// whether or not it was given one; returns the budget it replaces. The budget belongs to
    /// the batch, not to a run: a worker started without one keeps the stored one.
    pub async fn set_budget(&self, credits: u64) -> Result<Option<u64>, Error> {
        let mut tx = self.write().await?;
        let before: Option<i64> =
            sqlx::query_scalar("SELECT budget FROM gptimage_batch WHERE one = 1")
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| self.error(e))?
                .flatten();
        sqlx::query("UPDATE gptimage_batch SET budget = $1 WHERE one = 1")
            .bind(credits.min(i64::MAX as u64) as i64)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.error(e))?;
        tx.commit().await.map_err(|e| self.error(e))?;
        Ok(before.map(|b| b as u64))
    }

    /// Closes the connections.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// A new state's identity: 16 random hex digits (the standard library's per-process random
/// keys, hashed with the time and process).
fn new_state_id() -> String {
    use std::hash::{BuildHasher, RandomState};
    let seed = (std::process::id(), std::time::SystemTime::now());
    format!("{:016x}", RandomState::new().hash_one(seed))
}

/// A duration as the milliseconds a statement adds to `NOW_MS`.
fn ms(duration: Duration) -> i64 {
    duration.as_millis().min(i64::MAX as u128 / 4) as i64
}

/// A state of a newer format than this version writes: refused before anything changes.
fn newer_format(url: &StateUrl, newer: Option<i64>) -> Result<(), Error> {
    match newer {
        Some(format) => Err(Error::NewerState {
            url: url.clone(),
            format,
            known: schema::STATE_FORMAT,
        }),
        None => Ok(()),
    }
}

/// The lock a process holds while it opens the SQLite state at `db` (`….sqlite.open.lock`
/// beside it), taken within [`OPEN_WAIT`] (an open takes milliseconds) and given up when the
/// returned file is dropped.
async fn opening_lock(db: &Path) -> std::io::Result<std::fs::File> {
    let mut name = db.file_name().unwrap_or_default().to_os_string();
    name.push(".open.lock");
    let path = db.with_file_name(name);
    let mut options = std::fs::OpenOptions::new();
    options.create(true).truncate(false).write(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(&path)?;
    let started = std::time::Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if started.elapsed() < OPEN_WAIT => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(std::io::Error::other(format!(
                    "another process has been opening this state for {OPEN_WAIT:?} ({} is \
                     locked)",
                    path.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
    }
}

/// The longest a process waits for another to finish opening the same SQLite state.
const OPEN_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

fn state_error(url: &StateUrl, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
    Error::State {
        url: url.clone(),
        source: Arc::from(e.into()),
    }
}

/// File systems whose byte-range locks SQLite cannot rely on: two workers could both believe
/// they hold a line, and pay for it twice.
const NETWORK_FILE_SYSTEMS: &[&str] = &[
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "afs",
    "ncpfs",
    "fuse.sshfs",
    "fuse.rclone",
    // A host's folders seen from a VM or a container (WSL's /mnt/c, Docker Desktop, virtiofs)
    // and cluster or bucket file systems: their locks do not hold across machines.
    "9p",
    "virtiofs",
    "fuse.grpcfuse",
    "fuse.gcsfuse",
    "fuse.s3fs",
    "fuse.mountpoint-s3",
    "ceph",
    "fuse.ceph",
    "glusterfs",
    "fuse.glusterfs",
    "lustre",
    "gpfs",
    "beegfs",
];

/// The SQLite state and its companions readable by their owner alone: they hold the lines'
/// prompts, their input images' URLs (signed ones are secrets, valid for days) and their
/// results'. A new state is created so (SQLite gives its `-wal` and `-shm` files the database
/// file's mode); an older one is made so when opened.
#[cfg(unix)]
fn private_files(database: &Path, create: bool) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    if create {
        // `create_new` (O_EXCL): never through a symbolic link someone left in its place.
        let made = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(database);
        match made {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    // Whose files these must be: ours (a file just made beside them says who we are).
    let folder = database
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mine = match tempfile::NamedTempFile::new_in(folder) {
        Ok(probe) => Some(probe.as_file().metadata()?.uid()),
        // A folder we cannot write to: the state cannot be written either, and says so later.
        Err(_) => None,
    };
    for suffix in ["", "-wal", "-shm"] {
        let mut name = database.as_os_str().to_owned();
        name.push(suffix);
        let file = Path::new(&name);
        let Ok(meta) = std::fs::symlink_metadata(file) else {
            continue;
        };
        // A state decides what is paid for, and holds prompts and signed URLs: it must be a
        // file of this user's own, not a link, not another user's.
        if meta.file_type().is_symlink() {
            return Err(std::io::Error::other(format!(
                "{} is a symbolic link: a batch's state must be a file of its own",
                file.display()
            )));
        }
        if let Some(mine) = mine
            && meta.uid() != mine
        {
            return Err(std::io::Error::other(format!(
                "{} belongs to another user (uid {}): a batch's state decides what is paid for \
                 and holds its prompts and signed URLs, so it must be your own; use another --out \
                 or --state",
                file.display(),
                meta.uid()
            )));
        }
        if meta.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn private_files(_: &Path, _: bool) -> std::io::Result<()> {
    Ok(())
}

/// Refuses a SQLite state on a network file system, where it can be told (Linux's mount table).
fn refuse_network_file_system(database: &Path) -> Result<(), Error> {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Ok(());
    };
    let folder = database
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let Ok(folder) = folder.canonicalize() else {
        return Ok(());
    };
    match network_file_system(&mounts, &folder) {
        Some((file_system, mount)) => Err(Error::NetworkFileSystem {
            path: database.to_path_buf(),
            file_system,
            mount,
        }),
        None => Ok(()),
    }
}

/// The network file system (its type and mount point) that holds `folder`, according to the
/// mount table `mountinfo` (the format of `/proc/self/mountinfo`): the deepest mount that
/// contains it decides.
fn network_file_system(mountinfo: &str, folder: &Path) -> Option<(String, PathBuf)> {
    let mut best: Option<(PathBuf, String)> = None;
    for line in mountinfo.lines() {
        let (before, after) = line.split_once(" - ")?;
        let Some(mount) = before.split(' ').nth(4) else {
            continue;
        };
        let Some(file_system) = after.split(' ').next() else {
            continue;
        };
        // Spaces, tabs, newlines and backslashes in a mount point are written in octal.
        let mount = PathBuf::from(
            mount
                .replace("\\040", " ")
                .replace("\\011", "\t")
                .replace("\\012", "\n")
                .replace("\\134", "\\"),
        );
        let deeper = best
            .as_ref()
            .is_none_or(|(b, _)| mount.components().count() >= b.components().count());
        if folder.starts_with(&mount) && deeper {
            best = Some((mount, file_system.to_owned()));
        }
    }
    best.filter(|(_, fs)| NETWORK_FILE_SYSTEMS.contains(&fs.as_str()))
        .map(|(mount, fs)| (fs, mount))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTS: &str = "\
22 1 253:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 22 0:35 / /mnt/shared rw,relatime shared:20 - nfs4 filer:/export rw,vers=4.2
41 40 253:2 / /mnt/shared/local\\040disk rw shared:21 - xfs /dev/vdb rw
42 22 0:36 / /srv/smb rw - cifs //nas/share rw
";

    #[test]
    fn the_deepest_mount_decides_whether_a_folder_is_on_a_network() {
        let on = |p: &str| network_file_system(MOUNTS, Path::new(p));
        assert_eq!(
            on("/mnt/shared/results"),
            Some(("nfs4".into(), "/mnt/shared".into()))
        );
        assert_eq!(on("/srv/smb"), Some(("cifs".into(), "/srv/smb".into())));
        assert_eq!(on("/mnt/shared/local disk/results"), None);
        assert_eq!(on("/home/me/results"), None);
        // A name that merely starts like a mount point is not below it.
        assert_eq!(on("/mnt/sharedother"), None);
    }
}
