//! The emulator's state: keys and balances, tasks and their images, rate windows, fault rules and
//! the counters tests read.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gptimage_types::{CREDITS_PER_TASK, GenerateRequest, TaskInfo, TaskStatus, Timestamp};
use serde::Serialize;

use crate::config::{Config, Endpoint, FaultKind};
use crate::render::SplitMix;

/// What the emulator has counted since it started. Read it in-process with
/// [`Emulator::counters`](crate::Emulator::counters) or over HTTP at `GET /_emulator/counters`.
///
/// ```
/// let counters = gptimage_emulator::Counters::default();
/// assert_eq!(counters.tasks_created, 0);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct Counters {
    /// Requests to `/api/generate`, whatever their outcome.
    pub generate_requests: u64,
    /// Requests to `/api/status`.
    pub status_requests: u64,
    /// Requests for result images under `/files/`.
    pub file_requests: u64,
    /// Requests for result images that carried an `Authorization` header (a client leaking its
    /// key to the image host).
    pub file_requests_with_authorization: u64,
    /// Requests to any other path.
    pub other_requests: u64,
    /// Tasks created.
    pub tasks_created: u64,
    /// Tasks created, per key name.
    pub tasks_created_by_key: BTreeMap<String, u64>,
    /// Tasks created, per prompt: a test that gives each item its own prompt counts what was
    /// paid for each, not only in total.
    pub tasks_created_by_prompt: BTreeMap<String, u64>,
    /// Tasks that ended `SUCCESS`.
    pub tasks_succeeded: u64,
    /// Tasks that ended `FAILED`.
    pub tasks_failed: u64,
    /// Credits charged, net of refunds for failed tasks.
    pub credits_charged: u64,
    /// Credits charged, net of refunds, per key name.
    pub credits_charged_by_key: BTreeMap<String, u64>,
    /// Credits given back for failed tasks.
    pub credits_refunded: u64,
    /// Faults injected.
    pub faults_injected: u64,
    /// Webhook POSTs attempted (each retry counts).
    pub webhook_attempts: u64,
    /// Webhooks delivered (a 2xx answer).
    pub webhooks_delivered: u64,
    /// Webhooks given up after every attempt failed, or refused because of their host.
    pub webhooks_abandoned: u64,
    /// Webhook deliveries lost on purpose (a [`FaultKind::Duplicate`]'s extra ones count as
    /// delivered; a dropped one counts here).
    ///
    /// [`FaultKind::Duplicate`]: crate::FaultKind::Duplicate
    pub webhooks_dropped: u64,
    /// Tasks dropped because they expired or the store was full.
    pub tasks_expired: u64,
    /// Requests under `/uploads/` (`PUT` an input image, `GET` it back).
    pub upload_requests: u64,
    /// Input images stored by a `PUT` under `/uploads/` (one already there is not stored again).
    pub uploads_stored: u64,
}

/// Where a task is in its lifecycle.
#[derive(Debug, Clone)]
pub(crate) enum Phase {
    Pending,
    Running,
    Succeeded(Vec<Arc<Vec<u8>>>),
    Failed(String),
}

#[derive(Debug)]
pub(crate) struct Task {
    pub(crate) owner: String,
    pub(crate) request: GenerateRequest,
    pub(crate) created_at: Timestamp,
    pub(crate) phase: Phase,
    pub(crate) finished: Option<Instant>,
}

#[derive(Debug)]
struct Account {
    name: String,
    balance: u64,
    recent: VecDeque<Instant>,
}

/// Why a new task was refused.
pub(crate) enum Refusal {
    RateLimited { retry_after: Duration },
    InsufficientCredits { balance: u64 },
}

#[derive(Debug)]
struct Inner {
    accounts: HashMap<String, Account>,
    tasks: HashMap<String, Task>,
    order: VecDeque<String>,
    /// Decides fault probabilities: seeded, so a run is repeatable.
    rng: SplitMix,
    /// Makes task ids: seeded afresh each start, so ids are not reissued after a restart.
    ids: SplitMix,
    fault_fired: Vec<u64>,
    /// Matching requests each fault rule has seen, for [`Fault::after`](crate::Fault::after).
    fault_seen: Vec<u64>,
    counters: Counters,
    /// Uploaded input images by name, and the order they came in (the oldest go first beyond
    /// [`MAX_UPLOADS`]).
    uploads: HashMap<String, Arc<Vec<u8>>>,
    upload_order: VecDeque<String>,
}

/// Uploaded input images kept at once.
const MAX_UPLOADS: usize = 256;

/// The shared state behind every handler.
#[derive(Debug)]
pub(crate) struct Store {
    pub(crate) config: Config,
    inner: Mutex<Inner>,
    files_base: OnceLock<String>,
}

impl Store {
    pub(crate) fn new(config: Config) -> Self {
        let accounts = config
            .keys
            .iter()
            .map(|k| {
                let account = Account {
                    name: k.name.clone(),
                    balance: k.credits,
                    recent: VecDeque::new(),
                };
                (k.key.clone(), account)
            })
            .collect();
        let inner = Inner {
            accounts,
            tasks: HashMap::new(),
            order: VecDeque::new(),
            rng: SplitMix(config.seed),
            ids: SplitMix(RandomState::new().hash_one(SystemTime::now())),
            fault_fired: vec![0; config.faults.len()],
            fault_seen: vec![0; config.faults.len()],
            counters: Counters::default(),
            uploads: HashMap::new(),
            upload_order: VecDeque::new(),
        };
        Self {
            config,
            inner: Mutex::new(inner),
            files_base: OnceLock::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the data inconsistent in a way that matters
        // to an emulator; keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn counters(&self) -> Counters {
        self.lock().counters.clone()
    }

    /// Keeps an uploaded input image under `name`; whether it was new.
    pub(crate) fn upload(&self, name: &str, bytes: Vec<u8>) -> bool {
        let mut inner = self.lock();
        if inner.uploads.contains_key(name) {
            return false;
        }
        if inner.upload_order.len() >= MAX_UPLOADS
            && let Some(oldest) = inner.upload_order.pop_front()
        {
            inner.uploads.remove(&oldest);
        }
        inner.uploads.insert(name.to_owned(), Arc::new(bytes));
        inner.upload_order.push_back(name.to_owned());
        inner.counters.uploads_stored += 1;
        true
    }

    /// An uploaded input image.
    pub(crate) fn uploaded(&self, name: &str) -> Option<Arc<Vec<u8>>> {
        self.lock().uploads.get(name).cloned()
    }

    pub(crate) fn count(&self, f: impl FnOnce(&mut Counters)) {
        f(&mut self.lock().counters);
    }

    /// The name of the account a bearer token belongs to.
    pub(crate) fn account(&self, key: &str) -> Option<String> {
        self.lock().accounts.get(key).map(|a| a.name.clone())
    }

    /// The first fault rule that fires for a request to `endpoint`, if any.
    pub(crate) fn fault(&self, endpoint: Endpoint) -> Option<FaultKind> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        for (i, fault) in self.config.faults.iter().enumerate() {
            // A rule for every endpoint means the API's; webhook faults are asked for by name.
            let applies = match fault.endpoint {
                Some(e) => e == endpoint,
                None => endpoint != Endpoint::Webhook,
            };
            if !applies {
                continue;
            }
            inner.fault_seen[i] += 1;
            if inner.fault_seen[i] <= fault.after {
                continue;
            }
            if fault.times.is_some_and(|t| inner.fault_fired[i] >= t) {
                continue;
            }
            if fault.probability < 1.0 && inner.rng.unit_f64() >= fault.probability {
                continue;
            }
            inner.fault_fired[i] += 1;
            inner.counters.faults_injected += 1;
            return Some(fault.kind.clone());
        }
        None
    }

    /// Charges `key` for a new task and stores it, or says why not.
    pub(crate) fn create(
        &self,
        key: &str,
        request: GenerateRequest,
        now: Instant,
    ) -> Result<String, Refusal> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let account = inner
            .accounts
            .get_mut(key)
            .expect("the key was authenticated");
        if let Some((limit, window)) = self.config.rate_limit {
            while account
                .recent
                .front()
                .is_some_and(|t| now.duration_since(*t) >= window)
            {
                account.recent.pop_front();
            }
            if account.recent.len() >= limit as usize {
                let oldest = account.recent.front().copied().unwrap_or(now);
                let retry_after = window.saturating_sub(now.duration_since(oldest));
                return Err(Refusal::RateLimited { retry_after });
            }
        }
        if account.balance < CREDITS_PER_TASK {
            return Err(Refusal::InsufficientCredits {
                balance: account.balance,
            });
        }
        account.balance -= CREDITS_PER_TASK;
        account.recent.push_back(now);
        let owner = account.name.clone();

        let id = loop {
            let id = task_id(&mut inner.ids);
            if !inner.tasks.contains_key(&id) {
                break id;
            }
        };
        let prompt = request.prompt().to_owned();
        inner.tasks.insert(
            id.clone(),
            Task {
                owner: owner.clone(),
                request,
                created_at: wall_clock(),
                phase: Phase::Pending,
                finished: None,
            },
        );
        inner.order.push_back(id.clone());
        let c = &mut inner.counters;
        c.tasks_created += 1;
        *c.tasks_created_by_key.entry(owner.clone()).or_default() += 1;
        *c.tasks_created_by_prompt.entry(prompt).or_default() += 1;
        c.credits_charged += CREDITS_PER_TASK;
        *c.credits_charged_by_key.entry(owner).or_default() += CREDITS_PER_TASK;
        Self::evict(inner, &self.config, now);
        Ok(id)
    }

    /// Moves a task to a new phase; an ended task refunds its credits if it failed.
    pub(crate) fn set_phase(&self, id: &str, phase: Phase, now: Instant) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let Some(task) = inner.tasks.get_mut(id) else {
            return;
        };
        let owner = task.owner.clone();
        match &phase {
            Phase::Succeeded(_) => {
                inner.counters.tasks_succeeded += 1;
                task.finished = Some(now);
            }
            Phase::Failed(_) => {
                inner.counters.tasks_failed += 1;
                inner.counters.credits_refunded += CREDITS_PER_TASK;
                inner.counters.credits_charged -= CREDITS_PER_TASK;
                if let Some(c) = inner.counters.credits_charged_by_key.get_mut(&owner) {
                    *c -= CREDITS_PER_TASK;
                }
                if let Some(account) = inner.accounts.values_mut().find(|a| a.name == owner) {
                    account.balance += CREDITS_PER_TASK;
                }
                task.finished = Some(now);
            }
            Phase::Pending | Phase::Running => {}
        }
        task.phase = phase;
    }

    /// The status document of a task, as the key's owner sees it.
    pub(crate) fn status(&self, owner: &str, id: &str, now: Instant) -> Option<TaskInfo> {
        let mut inner = self.lock();
        Self::expire(&mut inner, &self.config, id, now);
        let task = inner.tasks.get(id).filter(|t| t.owner == owner)?;
        Some(self.describe(id, task))
    }

    /// The status document of a task, whoever owns it (for webhooks).
    pub(crate) fn task_finished(&self, id: &str) -> Option<Instant> {
        self.lock().tasks.get(id).and_then(|t| t.finished)
    }

    /// The ids of the tasks whose request had `prompt`.
    pub(crate) fn task_ids_for(&self, prompt: &str) -> Vec<String> {
        let mut ids: Vec<String> = self
            .lock()
            .tasks
            .iter()
            .filter(|(_, task)| task.request.prompt() == prompt)
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    pub(crate) fn task_request(&self, id: &str) -> Option<GenerateRequest> {
        self.lock().tasks.get(id).map(|t| t.request.clone())
    }

    pub(crate) fn describe_task(&self, id: &str) -> Option<TaskInfo> {
        let inner = self.lock();
        inner.tasks.get(id).map(|t| self.describe(id, t))
    }

    fn describe(&self, id: &str, task: &Task) -> TaskInfo {
        let status = match task.phase {
            Phase::Pending => TaskStatus::Pending,
            Phase::Running => TaskStatus::InProgress,
            Phase::Succeeded(_) => TaskStatus::Success,
            Phase::Failed(_) => TaskStatus::Failed,
        };
        let mut info = TaskInfo::new(id, status);
        info.created_at = Some(task.created_at);
        info.consumed_credits = Some(CREDITS_PER_TASK);
        match &task.phase {
            Phase::Succeeded(images) => {
                info.request = serde_json::to_value(&task.request).ok();
                let signature = if self.config.signed_results {
                    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
                    let sig = BuildHasherDefault::<DefaultHasher>::default().hash_one(id);
                    format!(
                        "?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Expires=3600&\
                         X-Amz-Signature={sig:016x}{sig:016x}"
                    )
                } else {
                    String::new()
                };
                info.response = Some(
                    (0..images.len())
                        .map(|n| format!("{}/files/{id}/{n}.png{signature}", self.files_base()))
                        .collect(),
                );
            }
            Phase::Failed(message) => {
                info.consumed_credits = Some(0);
                info.error_message = Some(message.clone());
                info.request = serde_json::to_value(&task.request).ok();
            }
            Phase::Pending | Phase::Running => {}
        }
        info
    }

    /// One result image, if the task exists and has it.
    pub(crate) fn image(&self, id: &str, index: usize, now: Instant) -> Option<Arc<Vec<u8>>> {
        let mut inner = self.lock();
        Self::expire(&mut inner, &self.config, id, now);
        match &inner.tasks.get(id)?.phase {
            Phase::Succeeded(images) => images.get(index).cloned(),
            _ => None,
        }
    }

    /// The request a task was created with.
    pub(crate) fn request(&self, id: &str) -> Option<GenerateRequest> {
        self.lock().tasks.get(id).map(|t| t.request.clone())
    }

    /// Drops expired finished tasks, and the oldest finished ones beyond the store's capacity.
    ///
    /// It runs when a task is created, the only time the store grows; so memory stays bounded
    /// without sweeping the whole store on every lookup.
    fn evict(inner: &mut Inner, config: &Config, now: Instant) {
        let before = inner.tasks.len();
        inner.tasks.retain(|_, task| !expired(task, config, now));
        if inner.tasks.len() > config.max_tasks {
            let excess = inner.tasks.len() - config.max_tasks;
            let oldest_finished: Vec<String> = inner
                .order
                .iter()
                .filter(|id| inner.tasks.get(*id).is_some_and(|t| t.finished.is_some()))
                .take(excess)
                .cloned()
                .collect();
            for id in oldest_finished {
                inner.tasks.remove(&id);
            }
        }
        let dropped = before - inner.tasks.len();
        if dropped > 0 {
            inner.counters.tasks_expired += dropped as u64;
            let tasks = &inner.tasks;
            inner.order.retain(|id| tasks.contains_key(id));
        }
    }

    /// Drops task `id` if it has expired, so a lookup never serves an expired task.
    fn expire(inner: &mut Inner, config: &Config, id: &str, now: Instant) {
        if inner.tasks.get(id).is_some_and(|t| expired(t, config, now)) {
            inner.tasks.remove(id);
            inner.order.retain(|o| o != id);
            inner.counters.tasks_expired += 1;
        }
    }

    /// The base URL of result images: this emulator's file server, once it is bound.
    pub(crate) fn files_base(&self) -> &str {
        self.files_base
            .get()
            .map_or("http://127.0.0.1", String::as_str)
    }

    /// Records the base URL of result images; only the first call counts.
    pub(crate) fn set_files_base(&self, base: String) {
        let _ = self.files_base.set(base);
    }
}

/// Whether a finished task has outlived the configured time to live.
fn expired(task: &Task, config: &Config, now: Instant) -> bool {
    task.finished
        .is_some_and(|f| now.duration_since(f) >= config.task_ttl)
}

/// A task id in the service's style: `n`, 14 random lowercase letters and digits, `gptimg`.
fn task_id(rng: &mut SplitMix) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let random: String = (0..14)
        .map(|_| ALPHABET[(rng.next_u64() % ALPHABET.len() as u64) as usize] as char)
        .collect();
    format!("n{random}gptimg")
}

fn wall_clock() -> Timestamp {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp::from_unix(since.as_secs() as i64, 0)
}
