//! What the two drive loops share. The loops themselves are in `client.rs` (awaiting) and
//! `blocking.rs` (blocking): each asks a machine what to do, does it, and reports back.

use gptimage_types::{CreatedTask, GenerateRequest, TaskInfo};

use crate::config::Config;
use crate::core::WaitMachine;
use crate::error::{ErrorKind, Result};
use crate::webhook::{Hints, Lost, Watch};

/// The callback URL a submission carries: one of the client's receiver's, unless the request
/// names its own (then no hint can come, and the wait polls as usual).
pub(crate) fn watch(config: &Config, request: &GenerateRequest) -> Result<Option<Watch>> {
    match &config.webhooks {
        Some(receiver) if request.callback_url().is_none() => receiver.issue().map(Some),
        _ => Ok(None),
    }
}

/// After a submission: the callback URL now belongs to the task; or, the answer lost, it is
/// kept so the task can be recovered from its callback (the error carries it); or (no task
/// made) it is forgotten.
pub(crate) fn settle(
    config: &Config,
    watch: Option<Watch>,
    result: Result<CreatedTask>,
) -> Result<CreatedTask> {
    let (Some(receiver), Some(watch)) = (&config.webhooks, watch) else {
        return result;
    };
    match result {
        Ok(created) => {
            receiver.bind(&watch, &created.task_id);
            Ok(created)
        }
        Err(error) if error.kind() == ErrorKind::OutcomeUnknown => {
            Err(error.with_lost(receiver.lose(&watch)))
        }
        Err(error) => {
            receiver.forget(&watch);
            Err(error)
        }
    }
}

/// Whether `info`, the status of a task a lost submission's callback named, confirms it as
/// that submission's task: the service knows it under this key (it answered), and the request
/// it echoes carries the submission's own callback URL (a secret no one else sent) and prompt.
/// A status that echoes no request confirms nothing: the task stays unknown.
pub(crate) fn confirms(lost: &Lost, request: &GenerateRequest, info: &TaskInfo) -> bool {
    let echoed = match &info.request {
        Some(serde_json::Value::String(text)) => serde_json::from_str(text).ok(),
        Some(value) => Some(value.clone()),
        None => None,
    };
    let Some(echoed) = echoed else {
        return false;
    };
    echoed.get("callback_url").and_then(|v| v.as_str()) == Some(lost.url())
        && echoed.get("prompt").and_then(|v| v.as_str()) == Some(request.prompt())
}

/// The hints a wait for `task_id` listens to, if this client's receiver gave its submission a
/// callback URL.
pub(crate) fn hints(config: &Config, task_id: &str) -> Option<Hints> {
    config.webhooks.as_ref()?.hints(task_id)
}

/// After a wait: a task that ended needs its callback URL no more. (After a deadline it is
/// kept, for a wait resumed later.)
pub(crate) fn waited(config: &Config, task_id: &str, result: &Result<TaskInfo>) {
    let ended = match result {
        Ok(_) => true,
        Err(e) => e.kind() == ErrorKind::TaskFailed,
    };
    if let (Some(receiver), true) = (&config.webhooks, ended) {
        receiver.finish(task_id);
    }
}

/// The on-update of a watch's machine: a watch reports its steps, not every status.
pub(crate) fn skip(_: &TaskInfo) {}

/// A watch's machine: a wait that reports its steps.
pub(crate) type Watching<'a> = WaitMachine<'a, fn(&TaskInfo)>;

/// A watch of `task_id` (see `WaitMachine::watching`), on the fallback schedule when this
/// client's receiver gave its submission a callback URL, and the hints it listens to.
pub(crate) fn watch_machine<'a>(
    config: &'a Config,
    task_id: &str,
) -> Result<(Watching<'a>, Option<Hints>)> {
    let hints = hints(config, task_id);
    let mut machine = WaitMachine::new(config, task_id, seed(), skip as fn(&_))?.watching();
    if hints.is_some() {
        machine = machine.expecting_callback();
    }
    Ok((machine, hints))
}

/// After a watch's last step: a task that ended needs its callback URL no more.
pub(crate) fn watched(config: &Config, task_id: &str, step: &Result<TaskInfo>) {
    if let (Some(receiver), Ok(info)) = (&config.webhooks, step)
        && info.status.is_terminal()
    {
        receiver.finish(task_id);
    }
}

/// A watch's last step as a wait's result: a failed task is an error.
pub(crate) fn as_wait(step: Result<TaskInfo>) -> Result<TaskInfo> {
    match step {
        Ok(info) if info.status == gptimage_types::TaskStatus::Failed => Err(
            crate::error::Error::task_failed(&info.task_id, info.error_message.clone()),
        ),
        other => other,
    }
}

/// A fresh random seed for one operation's jitter, from the standard library's per-process
/// random keys (the core takes randomness as an input, like time).
pub(crate) fn seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    RandomState::new().hash_one(COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// The parts of a client that do not depend on how it does IO: what it holds, its constructors,
/// its configuration, `Debug` and `FromConfig`. Each client module invokes it once, beside its
/// own `Client` struct and drive loop.
macro_rules! client_shell {
    ($transport:ident, $default:ty, $path:literal) => {
        struct Inner {
            transport: Box<dyn $transport>,
            pacer: std::sync::Mutex<crate::core::pace::Pacer>,
            /// Submissions under way (see `in_flight`).
            submitting: std::sync::atomic::AtomicUsize,
        }

        /// Counts a submission under way while it lives.
        struct Submitting<'a>(&'a std::sync::atomic::AtomicUsize);

        impl<'a> Submitting<'a> {
            fn new(count: &'a std::sync::atomic::AtomicUsize) -> Self {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Self(count)
            }
        }

        impl Drop for Submitting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            }
        }

        impl std::fmt::Debug for Client {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct("Client")
                    .field("config", &self.config)
                    .finish_non_exhaustive()
            }
        }

        impl sealed::Sealed for Client {}

        impl FromConfig for Client {
            fn from_config(config: Config) -> Result<Self> {
                let transport = <$default>::new(&config)?;
                Ok(Self::with_transport(config, transport))
            }
        }

        impl Client {
            /// A builder with every default and no key.
            pub fn builder() -> ClientBuilder<Self> {
                ClientBuilder::new()
            }

            /// A client configured from `GPTIMAGE_API_KEY` and `GPTIMAGE_BASE_URL`.
            pub fn from_env() -> Result<Self> {
                ClientBuilder::from_env().build()
            }

            /// A client over another transport: another HTTP stack, or a function in a test.
            pub fn with_transport(config: Config, transport: impl $transport) -> Self {
                let pacer = crate::core::pace::Pacer::new(config.rate);
                Self {
                    inner: Arc::new(Inner {
                        transport: Box::new(transport),
                        pacer: std::sync::Mutex::new(pacer),
                        submitting: std::sync::atomic::AtomicUsize::new(0),
                    }),
                    config: Arc::new(config),
                }
            }

            /// The same client with other settings for the calls made through the returned
            /// handle: another wait deadline, request timeout, retry policy or poll schedule.
            /// It shares this client's connections, its pacer (so submissions through both
            /// still take turns at one rate) and its webhook receiver. Cheap: make one per
            /// call if you like.
            ///
            /// ```
            /// # use gptimage_transport::{CallOptions, Error};
            #[doc = concat!("# use gptimage_transport::", $path, ";")]
            /// use std::time::Duration;
            ///
            /// # fn run() -> Result<(), Error> {
            /// let client = Client::builder().api_key("sk-test").build()?;
            /// // A user is waiting on this one: give up after 30 s rather than the default.
            /// let impatient = client.with_options(&CallOptions::new().wait_timeout(Duration::from_secs(30)))?;
            /// assert_eq!(impatient.config().wait_timeout(), Duration::from_secs(30));
            /// assert_ne!(client.config().wait_timeout(), Duration::from_secs(30));
            /// # Ok(())
            /// # }
            /// # run().unwrap();
            /// ```
            pub fn with_options(&self, options: &crate::CallOptions) -> Result<Self> {
                Ok(Self {
                    inner: Arc::clone(&self.inner),
                    config: Arc::new(self.config.with_options(options)?),
                })
            }

            /// How hard the service is pushing back on this client's submissions (shared by
            /// its clones), for progress displays.
            pub fn pacing(&self) -> crate::Pacing {
                self.inner
                    .pacer
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .pacing()
            }

            /// The configuration.
            pub fn config(&self) -> &Config {
                &self.config
            }

            /// How many submissions of this client (and its clones) are under way now, those
            /// whose callers went away included: a service about to shut down waits for them
            /// with `drain`, so that the runtime or the process does not end a POST on the wire
            /// before its task id reached the `on_submission` sink.
            pub fn in_flight(&self) -> usize {
                self.inner
                    .submitting
                    .load(std::sync::atomic::Ordering::SeqCst)
            }
        }
    };
}
pub(crate) use client_shell;

/// The span of one HTTP exchange.
#[cfg(feature = "tracing")]
pub(crate) fn span(op: crate::core::request::Op) -> tracing::Span {
    tracing::debug_span!(target: "gptimage", "gptimage.request", op = ?op)
}

#[cfg(test)]
mod tests {
    #[test]
    fn seeds_vary() {
        let seeds: Vec<u64> = (0..16).map(|_| super::seed()).collect();
        assert!(seeds.windows(2).any(|w| w[0] != w[1]));
    }
}
