//! The machines, after quinn-proto: each operation (one call with its retries, a wait, a download
//! with its redirects) is a state machine that owns its state. A driver asks it what to do now
//! ([`Machine::poll`]) and tells it what came back ([`Machine::handle`]), with the time as an
//! argument; the machine never reads a clock, sleeps or does IO.
//!
//! A wait's deadline is a point in time inside the machine: no request is sent with a timeout
//! that reaches past it, and no sleep either, so a wait ends by its deadline whatever the server
//! does.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use gptimage_types::{CreatedTask, GenerateRequest, TaskInfo, TaskStatus};

use super::answer::{self, Came, Fetched, Judged, judge};
use super::pace::Pacer;
use super::request::{Call, Op};
use super::schedule::{Jitter, backoff};
use super::{Image, later};
use crate::config::{Config, PollSchedule};
use crate::error::{Error, Result, TransportError};
use crate::transport::{HttpRequest, HttpResponse, SendOptions};

/// The most redirects a download follows.
pub(crate) const MAX_DOWNLOAD_REDIRECTS: usize = 5;

/// What a driver must do next.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "returned once per step and moved straight into the transport; boxing would cost               an allocation per request for nothing"
)]
pub(crate) enum Next<T> {
    /// Send this request within these limits, then call [`Machine::handle`] with what came back.
    Send(HttpRequest, SendOptions, Op),
    /// Do nothing until this instant, then poll again.
    SleepUntil(Instant),
    /// The operation is over.
    Done(Result<T>),
}

/// An operation driven by a client's loop.
pub(crate) trait Machine {
    /// What the operation gives.
    type Output;
    /// What to do at `now`.
    fn poll(&mut self, now: Instant) -> Next<Self::Output>;
    /// What came back from the request the last [`poll`](Self::poll) asked for, at `now`.
    fn handle(&mut self, now: Instant, answer: std::result::Result<HttpResponse, TransportError>);
    /// A hint came at `now` (a genuine callback): the operation may want to look again at once.
    fn hint(&mut self, _now: Instant) {}
    /// The span the operation runs in.
    #[cfg(feature = "tracing")]
    fn span(&self) -> tracing::Span {
        tracing::Span::none()
    }
}

/// How a call reads an answer.
type Reader<T> = fn(&Call, &Config, std::result::Result<HttpResponse, TransportError>) -> Came<T>;

/// One call and its retries: send, judge the answer, sleep and send again while the judgement
/// and the retry budget allow, never past the deadline if it has one.
pub(crate) struct CallMachine<'a, T> {
    config: &'a Config,
    call: Call,
    read: Reader<T>,
    deadline: Option<Instant>,
    retries: u32,
    jitter: Jitter,
    last_error: Option<Error>,
    cut_off: bool,
    state: CallState<T>,
    /// A submission's pacing: the client's shared pacer, its slot, its 429s, and how long it
    /// may be kept waiting for a slot (the wait timeout, from its first step).
    pacer: Option<&'a Mutex<Pacer>>,
    booked: bool,
    rate_limited: u32,
    patience: Option<Instant>,
    /// A fenced submission: no attempt starts after this instant.
    send_by: Option<Instant>,
}

enum CallState<T> {
    Ready,
    Sent,
    Sleeping(Instant),
    Finished(Option<Result<T>>),
}

impl<'a> CallMachine<'a, CreatedTask> {
    /// `POST /generate`, with `callback` as its `callback_url` when the request names none,
    /// paced by the client's `pacer`.
    pub(crate) fn submit(
        config: &'a Config,
        request: &GenerateRequest,
        callback: Option<&str>,
        pacer: &'a Mutex<Pacer>,
        seed: u64,
    ) -> Self {
        let call = Call::submit(config, request, callback);
        let mut machine = Self::new(config, call, answer::read_submit, seed);
        machine.pacer = Some(pacer);
        machine
    }
}

impl<'a> CallMachine<'a, TaskInfo> {
    /// `GET /status` for `task_id`.
    pub(crate) fn status(config: &'a Config, task_id: &str, seed: u64) -> Result<Self> {
        Ok(Self::new(
            config,
            Call::status(config, task_id)?,
            answer::read_status,
            seed,
        ))
    }
}

impl<'a, T> CallMachine<'a, T> {
    fn new(config: &'a Config, call: Call, read: Reader<T>, seed: u64) -> Self {
        Self {
            config,
            call,
            read,
            deadline: None,
            retries: 0,
            jitter: Jitter::new(seed),
            last_error: None,
            cut_off: false,
            state: CallState::Ready,
            pacer: None,
            booked: false,
            rate_limited: 0,
            patience: None,
            send_by: None,
        }
    }

    fn pacer(&self) -> Option<MutexGuard<'a, Pacer>> {
        self.pacer
            .map(|p| p.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Bounds every request and sleep of the call by `deadline`.
    fn with_deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Whether the call ended because its deadline came.
    fn was_cut_off(&self) -> bool {
        self.cut_off
    }

    fn finish(&mut self, result: Result<T>) {
        self.state = CallState::Finished(Some(result));
    }

    /// Ends the call at its deadline (or, for a submission, its patience), with the last
    /// failure seen, or an error saying why it never went. A submission cut off before it is
    /// sent again was never sent since its last answer, which made no task: `NotSent`.
    fn cut(&mut self, why: &str) {
        self.cut_off = true;
        let last = self.last_error.take();
        let error = match self.call.op {
            Op::Submit => Error::not_sent(why, last),
            _ => last.unwrap_or_else(|| {
                Error::deadline(self.call.task_id.as_deref().unwrap_or(""), Duration::ZERO)
            }),
        };
        self.finish(Err(error));
    }

    /// A submission whose pacer turn was already taken (see [`TurnMachine`]), and which may
    /// send no attempt after `send_by`: an attempt that would start later ends the call
    /// `NotSent`. A 429 ends it too (no task was made; the pacer slows every submission), so
    /// that a caller who recorded the submission before it decides when to send it again.
    #[cfg_attr(not(feature = "async"), allow(dead_code))]
    pub(crate) fn fenced(mut self, send_by: Instant) -> Self {
        self.booked = true;
        self.send_by = Some(send_by);
        self
    }
}

impl<T> Machine for CallMachine<'_, T> {
    type Output = T;

    fn poll(&mut self, now: Instant) -> Next<T> {
        loop {
            match &mut self.state {
                CallState::Ready if !self.booked && self.pacer.is_some() => {
                    // A submission goes in its turn, asking the pacer until it is given one,
                    // never later than its patience allows.
                    let patience = *self
                        .patience
                        .get_or_insert_with(|| later(now, self.config.wait_timeout));
                    let turn = self.pacer().map_or(Ok(()), |mut p| p.reserve(now));
                    match turn {
                        Ok(()) => self.booked = true,
                        Err(later)
                            if later > patience || self.send_by.is_some_and(|by| later > by) =>
                        {
                            self.cut(
                                "the client's pacing (after the service's 429s) found it no turn \
                             in time",
                            )
                        }
                        Err(later) => self.state = CallState::Sleeping(later),
                    }
                }
                CallState::Ready => {
                    if self.send_by.is_some_and(|by| now > by) {
                        self.cut("its send window closed before an attempt could start");
                        continue;
                    }
                    self.booked = false;
                    let mut timeout = self.config.request_timeout;
                    if let Some(deadline) = self.deadline {
                        let left = deadline.saturating_duration_since(now);
                        if left.is_zero() {
                            self.cut("its deadline came");
                            continue;
                        }
                        timeout = timeout.min(left);
                    }
                    self.state = CallState::Sent;
                    return Next::Send(
                        self.call.to_http(self.config),
                        self.call.options(self.config, timeout),
                        self.call.op,
                    );
                }
                // A driver that polls before answering gets an error, never a second request.
                CallState::Sent => {
                    return Next::Done(Err(Error::invalid_response(
                        "the client's driver asked for the next step before answering the last",
                        None,
                        None,
                    )));
                }
                CallState::Sleeping(until) if now < *until => return Next::SleepUntil(*until),
                CallState::Sleeping(_) => self.state = CallState::Ready,
                CallState::Finished(result) => {
                    return Next::Done(result.take().unwrap_or_else(|| {
                        Err(Error::invalid_response(
                            "the call was already over",
                            None,
                            None,
                        ))
                    }));
                }
            }
        }
    }

    fn handle(&mut self, now: Instant, answer: std::result::Result<HttpResponse, TransportError>) {
        if !matches!(self.state, CallState::Sent) {
            return;
        }
        let policy = &self.config.retry;
        match judge(&self.call, (self.read)(&self.call, self.config, answer)) {
            Judged::Done(value) => {
                if let Some(mut pacer) = self.pacer() {
                    pacer.accepted();
                }
                self.finish(Ok(value));
            }
            Judged::Fail(error) => self.finish(Err(error)),
            // A paced submission that was pushed back: no task was made. Its own budget; the
            // pacer slows every submission of the client and gives this one its next turn.
            Judged::Retry {
                error,
                retry_after,
                rate_limited: true,
            } if self.pacer.is_some() => {
                // What the pacer holds every submission for is bounded by the policy, whatever
                // the service asked: a Retry-After of a day (or of 10^19 s) ends this call, and
                // holds the others for the policy's longest at most.
                let hold = retry_after.map(|asked| asked.min(policy.max_retry_after));
                if let Some(mut pacer) = self.pacer() {
                    pacer.refused(now, hold);
                    #[cfg(feature = "tracing")]
                    tracing::warn!(
                        target: "gptimage",
                        retry_after_ms = retry_after.map(|d| d.as_millis() as u64),
                        per_second = pacer.pacing().per_second,
                        pushbacks = pacer.pacing().pushbacks,
                        "the service pushed back on a submission (429): every submission of the client slows down"
                    );
                }
                let too_long = retry_after.is_some_and(|a| a > policy.max_retry_after);
                if self.rate_limited >= policy.max_rate_limited
                    || too_long
                    || self.send_by.is_some()
                {
                    self.finish(Err(error));
                    return;
                }
                self.rate_limited += 1;
                self.last_error = Some(error);
                self.state = CallState::Ready;
            }
            Judged::Retry { error, .. } if self.retries >= policy.max_retries => {
                self.finish(Err(error));
            }
            Judged::Retry {
                error,
                retry_after: Some(asked),
                ..
            } if asked > policy.max_retry_after => self.finish(Err(error)),
            Judged::Retry {
                error, retry_after, ..
            } => {
                let delay = retry_after
                    .unwrap_or_else(|| backoff(policy, self.retries, self.jitter.next()));
                self.retries += 1;
                #[cfg(feature = "tracing")]
                tracing::info!(
                    target: "gptimage",
                    op = ?self.call.op,
                    task_id = self.call.task_id.as_deref(),
                    attempt = self.retries,
                    delay_ms = delay.as_millis() as u64,
                    reason = %error,
                    "retrying"
                );
                self.last_error = Some(error);
                let wake = later(now, delay);
                // A fenced submission's retry that could not start within its window is not
                // waited for: it ends now, never sent since an answer that made no task.
                if self.send_by.is_some_and(|by| wake > by) {
                    self.cut("its send window would close before the retry");
                    return;
                }
                self.state = CallState::Sleeping(self.deadline.map_or(wake, |d| wake.min(d)));
            }
        }
    }
}

/// A turn of the client's pacer for one submission, taken before the submission is recorded
/// and sent (see [`CallMachine::fenced`]): it sleeps until the pacer gives one, or ends
/// `NotSent` if none comes within the wait timeout. It sends nothing.
#[cfg_attr(not(feature = "async"), allow(dead_code))]
pub(crate) struct TurnMachine<'a> {
    pacer: &'a Mutex<Pacer>,
    wait_timeout: Duration,
    patience: Option<Instant>,
}

#[cfg_attr(not(feature = "async"), allow(dead_code))]
impl<'a> TurnMachine<'a> {
    pub(crate) fn new(config: &Config, pacer: &'a Mutex<Pacer>) -> Self {
        Self {
            pacer,
            wait_timeout: config.wait_timeout,
            patience: None,
        }
    }
}

impl Machine for TurnMachine<'_> {
    type Output = ();

    fn poll(&mut self, now: Instant) -> Next<()> {
        let patience = *self
            .patience
            .get_or_insert_with(|| later(now, self.wait_timeout));
        let turn = self
            .pacer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .reserve(now);
        match turn {
            Ok(()) => Next::Done(Ok(())),
            Err(at) if at > patience => Next::Done(Err(Error::not_sent(
                "the client's pacing (after the service's 429s) found it no turn within the \
                 wait timeout",
                None,
            ))),
            Err(at) => Next::SleepUntil(at),
        }
    }

    fn handle(&mut self, _: Instant, _: std::result::Result<HttpResponse, TransportError>) {}
}

/// A wait: status polls on the configured schedule until the task ends or the deadline comes.
/// `on_update` sees every status read. While a callback is expected, the schedule is the slower
/// fallback, and a hint (a genuine callback) makes it poll at once.
pub(crate) struct WaitMachine<'a, F> {
    config: &'a Config,
    task_id: String,
    deadline: Option<Instant>,
    polls: u32,
    schedule: PollSchedule,
    /// With a callback expected and no schedule chosen by the caller, the first poll waits one
    /// fallback interval: the callback should come first.
    first_after: Option<Duration>,
    jitter: Jitter,
    on_update: F,
    /// A watch: the status last reported (see [`WaitMachine::watching`]).
    watching: Option<Option<TaskStatus>>,
    /// The status last read, for the tracing event of each change.
    #[cfg(feature = "tracing")]
    last_seen: Option<TaskStatus>,
    state: WaitState<'a>,
}

enum WaitState<'a> {
    Polling(Box<CallMachine<'a, TaskInfo>>),
    Sleeping(Instant),
    /// A watch's change to report, and when to poll next.
    Changed(Option<TaskInfo>, Instant),
    Finished(Option<Result<TaskInfo>>),
}

impl<'a, F: FnMut(&TaskInfo)> WaitMachine<'a, F> {
    /// A wait for `task_id`; its deadline is set at the first poll, `wait_timeout` later.
    pub(crate) fn new(config: &'a Config, task_id: &str, seed: u64, on_update: F) -> Result<Self> {
        let first = CallMachine::status(config, task_id, seed)?;
        Ok(Self {
            config,
            task_id: task_id.to_owned(),
            deadline: None,
            polls: 0,
            schedule: config.poll,
            first_after: None,
            jitter: Jitter::new(seed.rotate_left(17)),
            on_update,
            watching: None,
            #[cfg(feature = "tracing")]
            last_seen: None,
            state: WaitState::Polling(Box::new(first)),
        })
    }

    /// A watch rather than a wait: each status that differs from the last one reported ends a
    /// step as `Done(Ok(status))`, and the next `poll` goes on with the same deadline and
    /// schedule. The terminal status (a failed task's included) is the last step, reported as
    /// a status, not an error; a deadline or an error ends the watch as it ends a wait.
    pub(crate) fn watching(mut self) -> Self {
        self.watching = Some(None);
        self
    }

    /// A callback is expected for this task: poll on the fallback schedule.
    pub(crate) fn expecting_callback(mut self) -> Self {
        self.schedule = self.config.fallback_poll();
        if !self.config.poll_explicit {
            self.first_after = Some(self.schedule.initial);
        }
        self
    }

    fn finish(&mut self, result: Result<TaskInfo>) {
        self.state = WaitState::Finished(Some(result));
    }

    fn deadline_passed(&mut self) {
        #[cfg(feature = "tracing")]
        tracing::warn!(
            target: "gptimage",
            task_id = %self.task_id,
            wait_timeout_ms = self.config.wait_timeout.as_millis() as u64,
            "the wait's deadline passed; the task goes on at the service"
        );
        let error = Error::deadline(&self.task_id, self.config.wait_timeout);
        self.finish(Err(error));
    }

    /// When to poll next, after a status read at `now`: the schedule's next turn, but see
    /// [`last_chance`].
    fn next_poll(&self, now: Instant, deadline: Instant) -> Instant {
        let wanted = later(now, self.schedule.delay(self.polls));
        last_chance(Some(now), now, deadline, wanted, self.config)
    }

    /// After a status was read: done, failed, or another poll (never one past the deadline).
    fn after(&mut self, now: Instant, deadline: Instant, info: TaskInfo) {
        (self.on_update)(&info);
        #[cfg(feature = "tracing")]
        if self.last_seen.as_ref() != Some(&info.status) {
            tracing::debug!(
                target: "gptimage",
                task_id = %self.task_id,
                status = %info.status,
                "status changed"
            );
            self.last_seen = Some(info.status.clone());
        }
        if let Some(last) = &mut self.watching {
            let changed = last.as_ref() != Some(&info.status);
            if info.status.is_terminal() {
                self.finish(Ok(info));
                return;
            }
            *last = Some(info.status.clone());
            let next = self.next_poll(now, deadline);
            self.polls += 1;
            self.state = if changed {
                WaitState::Changed(Some(info), next)
            } else {
                WaitState::Sleeping(next)
            };
            return;
        }
        match info.status {
            TaskStatus::Success => self.finish(Ok(info)),
            TaskStatus::Failed => {
                let error = Error::task_failed(&info.task_id, info.error_message.clone());
                self.finish(Err(error));
            }
            // Pending, running, or a status this client does not know: keep waiting.
            _ => {
                let next = self.next_poll(now, deadline);
                self.polls += 1;
                self.state = WaitState::Sleeping(next);
            }
        }
    }
}

impl<F: FnMut(&TaskInfo)> Machine for WaitMachine<'_, F> {
    type Output = TaskInfo;

    fn poll(&mut self, now: Instant) -> Next<TaskInfo> {
        let deadline = match self.deadline {
            Some(deadline) => deadline,
            None => {
                // A wait timeout too long for the clock (`Duration::MAX`) is no deadline.
                let deadline = later(now, self.config.wait_timeout);
                self.deadline = Some(deadline);
                if let Some(after) = self.first_after {
                    let first = last_chance(None, now, deadline, later(now, after), self.config);
                    self.state = WaitState::Sleeping(first);
                }
                deadline
            }
        };
        loop {
            match &mut self.state {
                WaitState::Polling(call) => {
                    if call.deadline.is_none() {
                        call.deadline = Some(deadline);
                    }
                    match call.poll(now) {
                        Next::Done(Ok(info)) => self.after(now, deadline, info),
                        Next::Done(Err(_)) if call.was_cut_off() => self.deadline_passed(),
                        Next::Done(Err(error)) => {
                            let error = error.with_task_id(&self.task_id);
                            self.finish(Err(error));
                        }
                        next => return next,
                    }
                }
                WaitState::Changed(info, next) => {
                    let info = info.take();
                    self.state = WaitState::Sleeping(*next);
                    if let Some(info) = info {
                        return Next::Done(Ok(info));
                    }
                }
                WaitState::Sleeping(until) if now < *until => return Next::SleepUntil(*until),
                WaitState::Sleeping(_) if now >= deadline => self.deadline_passed(),
                WaitState::Sleeping(_) => {
                    let seed = (self.jitter.next() * u64::MAX as f64) as u64;
                    let call = CallMachine::status(self.config, &self.task_id, seed)
                        .map(|call| call.with_deadline(deadline));
                    match call {
                        Ok(call) => self.state = WaitState::Polling(Box::new(call)),
                        Err(error) => self.finish(Err(error)),
                    }
                }
                WaitState::Finished(result) => {
                    return Next::Done(result.take().unwrap_or_else(|| {
                        Err(Error::invalid_response(
                            "the wait was already over",
                            None,
                            None,
                        ))
                    }));
                }
            }
        }
    }

    fn handle(&mut self, now: Instant, answer: std::result::Result<HttpResponse, TransportError>) {
        if let WaitState::Polling(call) = &mut self.state {
            call.handle(now, answer);
        }
    }

    /// A genuine callback: if the wait is pausing, it polls now. (A hint during a status request
    /// is seen by the driver at the next pause, and comes back here then.)
    fn hint(&mut self, now: Instant) {
        #[cfg(feature = "tracing")]
        tracing::debug!(target: "gptimage", task_id = %self.task_id, "webhook hint: asking for the status now");
        if let WaitState::Sleeping(until) = &mut self.state {
            *until = now.min(*until);
        }
    }

    #[cfg(feature = "tracing")]
    fn span(&self) -> tracing::Span {
        tracing::debug_span!(target: "gptimage", "gptimage.wait", task_id = %self.task_id)
    }
}

/// How long before its deadline a wait asks for the status one last time, at most: the time a
/// status request is given then (or the request timeout, or a quarter of the wait, if shorter).
pub(crate) const LAST_ASK: Duration = Duration::from_secs(1);

/// The poll at `wanted`, unless it would come too close to the deadline (less than half of
/// the margin, [`LAST_ASK`] or less, before it) or after it: then a poll at the wait's last
/// moment to ask (`deadline` less the margin, and not before `now`), so that a wait whose deadline falls before its next
/// turn (a short deadline, or one shorter than the slow fallback schedule of a wait expecting a
/// callback) still asks before it gives up. A status read (`read_at`) within that last moment
/// already was the last ask: the wait then pauses until its deadline.
fn last_chance(
    read_at: Option<Instant>,
    now: Instant,
    deadline: Instant,
    wanted: Instant,
    config: &Config,
) -> Instant {
    let margin = LAST_ASK
        .min(config.request_timeout)
        .min(config.wait_timeout / 4);
    let last = deadline.checked_sub(margin).unwrap_or(now).max(now);
    if later(wanted, margin / 2) <= deadline {
        wanted
    } else if read_at.is_none_or(|read| read < last) {
        last
    } else {
        deadline
    }
}

/// A download of one result image: its retries, and up to [`MAX_DOWNLOAD_REDIRECTS`] redirects,
/// each followed without the key.
pub(crate) struct DownloadMachine<'a> {
    config: &'a Config,
    url: String,
    hops: usize,
    jitter: Jitter,
    hop: CallMachine<'a, Fetched>,
}

impl<'a> DownloadMachine<'a> {
    /// A download of `url`.
    pub(crate) fn new(config: &'a Config, url: &str, seed: u64) -> Result<Self> {
        let mut jitter = Jitter::new(seed);
        let hop = Self::hop(config, url, &mut jitter)?;
        Ok(Self {
            config,
            url: url.to_owned(),
            hops: 0,
            jitter,
            hop,
        })
    }

    fn hop(config: &'a Config, url: &str, jitter: &mut Jitter) -> Result<CallMachine<'a, Fetched>> {
        let seed = (jitter.next() * u64::MAX as f64) as u64;
        Ok(CallMachine::new(
            config,
            Call::download(url)?,
            answer::read_download,
            seed,
        ))
    }
}

impl Machine for DownloadMachine<'_> {
    type Output = Image;

    fn poll(&mut self, now: Instant) -> Next<Image> {
        loop {
            let fetched = match self.hop.poll(now) {
                Next::Done(Ok(fetched)) => fetched,
                Next::Done(Err(error)) => return Next::Done(Err(error)),
                Next::Send(request, options, op) => return Next::Send(request, options, op),
                Next::SleepUntil(until) => return Next::SleepUntil(until),
            };
            let next = match fetched {
                Fetched::Bytes(bytes, extension) => {
                    let url = self.url.clone();
                    return Next::Done(Ok(Image {
                        url,
                        bytes,
                        extension,
                    }));
                }
                Fetched::Redirect(next) => next,
            };
            if self.hops >= MAX_DOWNLOAD_REDIRECTS {
                let what = format!("{} redirected too many times", self.url);
                return Next::Done(Err(Error::download(what, None)));
            }
            self.hops += 1;
            match Self::hop(self.config, &next, &mut self.jitter) {
                Ok(hop) => self.hop = hop,
                Err(error) => return Next::Done(Err(error)),
            }
        }
    }

    fn handle(&mut self, now: Instant, answer: std::result::Result<HttpResponse, TransportError>) {
        self.hop.handle(now, answer);
    }
}
