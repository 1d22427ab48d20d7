//! The state store against real databases (a SQLite file, and a PostgreSQL cluster started by
//! the test): one winner for every claim under racing workers, a dead worker's lines settled by
//! the machine's rules, and a state that refuses another file.

mod support;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;

use std::time::Duration;

use gptimage_batch::{Error, LineState, OutcomeToken, Retry, Source, StateUrl, Store, Worker};
use support::postgres::Postgres;

fn batch_file(dir: &Path, lines: usize, tag: &str) -> Source {
    let path = dir.join(format!("{tag}.jsonl"));
    let mut file = std::fs::File::create(&path).unwrap();
    for i in 0..lines {
        writeln!(file, r#"{{"prompt": "{tag} {i}"}}"#).unwrap();
    }
    Source::open(&path).unwrap()
}

async fn open(url: &StateUrl, source: &Source) -> Store {
    let store = Store::open(url).await.unwrap();
    store.bind(source).await.unwrap();
    store
}

/// Three workers, each with its own connection pool (as separate processes would have), claim
/// as fast as they can: every line is claimed exactly once.
async fn claims_are_won_once(url: StateUrl, dir: &Path) {
    let source = batch_file(dir, 300, "race");
    let mut handles = Vec::new();
    // Workers leave only when all have finished claiming: leaving lets go of the pending lines a
    // worker holds, which others may then claim (as they should).
    let all_claimed = std::sync::Arc::new(tokio::sync::Barrier::new(3));
    for _ in 0..3 {
        let store = open(&url, &source).await;
        let all_claimed = all_claimed.clone();
        handles.push(tokio::spawn(async move {
            let worker = store.join(Path::new("out")).await.unwrap();
            let mut claimed = Vec::new();
            // Eight claims in flight per worker, like a worker with concurrency 8.
            loop {
                let batch = claim_up_to(&store, &worker, 8).await;
                if batch.is_empty() {
                    break;
                }
                claimed.extend(batch);
            }
            all_claimed.wait().await;
            store.leave(&worker).await.unwrap();
            claimed
        }));
    }
    let mut all = Vec::new();
    for handle in handles {
        let claimed = handle.await.unwrap();
        assert!(!claimed.is_empty(), "every worker got some lines");
        all.extend(claimed);
    }
    let unique: BTreeSet<u64> = all.iter().copied().collect();
    assert_eq!(all.len(), 300, "no line was claimed twice");
    assert_eq!(unique, (0..300).collect());
}

/// Up to `n` claims by one worker, one after another (a worker's claims are sequential; the race
/// is between workers).
async fn claim_up_to(store: &Store, worker: &Worker, n: usize) -> Vec<u64> {
    let mut items = Vec::new();
    for _ in 0..n {
        match store.claim(worker).await.unwrap() {
            Some(claim) => items.push(claim.item),
            None => break,
        }
    }
    items
}

/// A worker dies holding a line it was submitting and a line it was waiting for: the first
/// becomes `unknown` and is never claimable; the second is taken over by another worker.
async fn a_dead_workers_lines_follow_the_rules(url: StateUrl, dir: &Path) {
    let source = batch_file(dir, 3, "reap");
    let store = open(&url, &source).await;
    let doomed = store.join(Path::new("a")).await.unwrap();
    let first = store.claim(&doomed).await.unwrap().unwrap();
    let second = store.claim(&doomed).await.unwrap().unwrap();
    store
        .start_submitting(
            &doomed,
            first.item,
            1,
            &["one".into()],
            "reap 0",
            Duration::ZERO,
        )
        .await
        .unwrap();
    store
        .start_submitting(
            &doomed,
            second.item,
            2,
            &["two".into()],
            "reap 1",
            Duration::ZERO,
        )
        .await
        .unwrap();
    store
        .submitted(&doomed, second.item, "task-2")
        .await
        .unwrap();
    // A name is unique across lines, without regard to case: the second choice is taken when
    // the first is taken in another case.
    let third = store.claim(&doomed).await.unwrap().unwrap();
    let name = store
        .start_submitting(
            &doomed,
            third.item,
            3,
            &["ONE".into(), "one-line-3".into()],
            "x",
            Duration::ZERO,
        )
        .await
        .unwrap();
    assert_eq!(name, gptimage_batch::Submitting::Named("one-line-3".into()));
    store
        .not_submitted(&doomed, third.item, (LineState::Refused, 0), "api", "401")
        .await
        .unwrap();

    // The process dies: its lock goes with it.
    drop(doomed);
    let other = Store::open(&url).await.unwrap();
    let survivor = other.join(Path::new("b")).await.unwrap();
    assert_eq!(other.reap(&survivor).await.unwrap(), 1);
    let first = other.line(first.item).await.unwrap().unwrap();
    assert_eq!(first.state, LineState::Unknown);
    assert_eq!(first.error.unwrap().0, "outcome_unknown");

    let taken = other.claim(&survivor).await.unwrap().unwrap();
    assert_eq!(taken.item, second.item);
    assert_eq!(taken.state, LineState::Submitted);
    assert_eq!(taken.task_id.as_deref(), Some("task-2"));
    assert_eq!(
        other.claim(&survivor).await.unwrap(),
        None,
        "the unknown and refused lines are not claimable"
    );
    // A new start gives the refused line another chance; the unknown one needs the user.
    assert_eq!(other.start_run().await.unwrap(), 1);
    assert_eq!(
        other.claim(&survivor).await.unwrap().unwrap().item,
        third.item
    );
    assert_eq!(other.claim(&survivor).await.unwrap(), None);
    // The user names the outcome they checked: line 1's first submission. A token of another
    // submission, or of another line, sends nothing.
    let unknown = other.line(0).await.unwrap().unwrap();
    let state = other.state_id().await.unwrap();
    let state = &state[..6];
    assert_eq!(
        unknown.outcome_token().unwrap().to_string(),
        format!("{state}.1.1")
    );
    let token = |text: &str| format!("{state}.{text}").parse().unwrap();
    let stale = [token("1.2"), token("2.1")];
    assert_eq!(other.resubmit_unknown(&stale).await.unwrap(), stale);
    assert_eq!(other.claim(&survivor).await.unwrap(), None);
    let checked = [token("1.1")];
    assert!(other.resubmit_unknown(&checked).await.unwrap().is_empty());
    assert_eq!(other.claim(&survivor).await.unwrap().unwrap().item, 0);

    // Transitions the machine forbids are refused, not applied.
    assert!(matches!(
        other.done(&survivor, 2, &[], &[], None).await,
        Err(Error::LostWorker { .. })
    ));
    let progress = other.progress().await.unwrap();
    assert_eq!(progress.lines, 3);
    assert_eq!(progress.count(LineState::Submitted), 1);
}

/// Three workers race to submit 40 lines under a budget of 95 credits: exactly nine tasks are
/// committed, however the race goes; a refusal gives its credits back.
async fn the_budget_is_exact_under_racing_workers(url: StateUrl, dir: &Path) {
    let source = batch_file(dir, 40, "budget");
    // The budget is the batch's: set once, obeyed by every worker.
    assert_eq!(
        open(&url, &source).await.set_budget(95).await.unwrap(),
        None
    );
    let mut handles = Vec::new();
    for _ in 0..3 {
        let store = open(&url, &source).await;
        handles.push(tokio::spawn(async move {
            let worker = store.join(Path::new("out")).await.unwrap();
            let mut committed = Vec::new();
            while let Some(claim) = store.claim(&worker).await.unwrap() {
                let name = format!("n{}", claim.item);
                let line = claim.item + 1;
                match store
                    .start_submitting(&worker, claim.item, line, &[name], "p", Duration::ZERO)
                    .await
                    .unwrap()
                {
                    gptimage_batch::Submitting::Named(_) => committed.push(claim.item),
                    gptimage_batch::Submitting::OverBudget { budget } => {
                        assert_eq!(budget, 95);
                        break;
                    }
                }
            }
            (store, worker, committed)
        }));
    }
    let mut all = Vec::new();
    let mut kept = Vec::new();
    for handle in handles {
        let (store, worker, committed) = handle.await.unwrap();
        all.extend(committed.iter().copied());
        kept.push((store, worker, committed));
    }
    assert_eq!(all.len(), 9, "95 credits buy nine tasks: {all:?}");
    let (store, worker, committed) = &kept[0];
    assert_eq!(store.progress().await.unwrap().committed, 90);
    if let Some(item) = committed.first() {
        store
            .not_submitted(worker, *item, (LineState::Refused, 0), "api", "401")
            .await
            .unwrap();
        assert_eq!(
            store.progress().await.unwrap().committed,
            80,
            "a refusal is refunded"
        );
    }
}

/// A line whose wait failed waits out its setback, then comes back; one that cannot progress
/// is held until a later run, keeping its task id.
async fn setbacks_hold_lines_back(url: StateUrl, dir: &Path) {
    let source = batch_file(dir, 1, "setback");
    let store = open(&url, &source).await;
    let worker = store.join(Path::new("out")).await.unwrap();
    let claim = store.claim(&worker).await.unwrap().unwrap();
    store
        .start_submitting(&worker, claim.item, 1, &["s".into()], "p", Duration::ZERO)
        .await
        .unwrap();
    store
        .submitted(&worker, claim.item, "task-s")
        .await
        .unwrap();
    let reason = ("transport", "could not connect");
    store
        .set_back(
            &worker,
            claim.item,
            reason,
            (Retry::After(Duration::from_millis(400)), 0),
        )
        .await
        .unwrap();
    assert_eq!(
        store.claim(&worker).await.unwrap(),
        None,
        "not before its time"
    );
    let next = store
        .next_retry(&worker)
        .await
        .unwrap()
        .expect("a setback is pending");
    assert!(next <= Duration::from_millis(400), "{next:?}");
    tokio::time::sleep(Duration::from_millis(450)).await;
    let again = store
        .claim(&worker)
        .await
        .unwrap()
        .expect("back after its setback");
    assert_eq!(
        (again.setbacks, again.task_id.as_deref()),
        (1, Some("task-s"))
    );
    store
        .set_back(&worker, claim.item, ("api", "404"), (Retry::NextRun, 0))
        .await
        .unwrap();
    assert_eq!(store.claim(&worker).await.unwrap(), None);
    assert_eq!(
        store.next_retry(&worker).await.unwrap(),
        None,
        "this run is done with it"
    );
    let progress = store.progress().await.unwrap();
    assert_eq!(
        (progress.held, progress.count(LineState::Submitted)),
        (1, 1)
    );
    let line = store.line(claim.item).await.unwrap().unwrap();
    assert!(line.held && line.task_id.as_deref() == Some("task-s"));
    // A later run (a worker started after the hold) tries it again: at once, since this was
    // its first hold.
    let later = store.join(Path::new("out")).await.unwrap();
    store.start_run().await.unwrap();
    let back = store
        .claim(&later)
        .await
        .unwrap()
        .expect("a new run retries it");
    assert_eq!(back.setbacks, 2);
    // Held again, its third setback: the spacing its history earned (a minute) holds it back
    // even from a later run.
    store
        .set_back(
            &later,
            back.item,
            ("api", "404"),
            (Retry::NextRun, back.setbacks),
        )
        .await
        .unwrap();
    let third = store.join(Path::new("out")).await.unwrap();
    assert_eq!(store.claim(&third).await.unwrap(), None, "spaced");
    assert_eq!(
        store.next_retry(&third).await.unwrap(),
        None,
        "a run never waits for a hold: it ends, and a later one takes the line"
    );
    let line = store.line(back.item).await.unwrap().unwrap();
    let next = line.retry_in.expect("due later");
    assert!(
        line.held && next > Duration::from_secs(55) && next <= Duration::from_secs(60),
        "{line:?}"
    );
}

/// A worker counted out while `submitting`: its line stays `submitting` until the lock-delay it
/// declared has passed on the database's clock (its POST may still be on the wire), and only
/// then becomes `unknown`.
async fn a_counted_out_senders_line_waits_out_its_lock_delay(url: StateUrl, dir: &Path) {
    let source = batch_file(dir, 1, "delay");
    let store = open(&url, &source).await;
    let doomed = store.join(Path::new("a")).await.unwrap();
    let claim = store.claim(&doomed).await.unwrap().unwrap();
    store
        .start_submitting(
            &doomed,
            claim.item,
            1,
            &["d".into()],
            "p",
            Duration::from_millis(1500),
        )
        .await
        .unwrap();
    drop(doomed);
    let other = Store::open(&url).await.unwrap();
    let reaper = other.join(Path::new("b")).await.unwrap();
    assert_eq!(other.reap(&reaper).await.unwrap(), 1);
    let line = other.line(claim.item).await.unwrap().unwrap();
    assert_eq!(line.state, LineState::Submitting, "within its lock-delay");
    assert!(
        line.outcome_token().is_none(),
        "no token to resend it by yet"
    );
    tokio::time::sleep(Duration::from_millis(1600)).await;
    other.reap(&reaper).await.unwrap();
    let line = other.line(claim.item).await.unwrap().unwrap();
    assert_eq!(line.state, LineState::Unknown, "past its lock-delay");
    let token = line.outcome_token().unwrap();
    let state = other.state_id().await.unwrap();
    assert_eq!(token.to_string(), format!("{}.1.1", &state[..6]));
}

/// A worker that records an unknown outcome itself (its POST timed out, its connection was
/// reset) gets no token for it, and a token built for it is refused by name, until the
/// lock-delay it declared has passed: its bytes may still be on the wire.
async fn a_worker_recorded_unknown_is_settled_only_after_its_lock_delay(url: StateUrl, dir: &Path) {
    let source = batch_file(dir, 1, "settle");
    let store = open(&url, &source).await;
    let worker = store.join(Path::new("a")).await.unwrap();
    let claim = store.claim(&worker).await.unwrap().unwrap();
    store
        .start_submitting(
            &worker,
            claim.item,
            1,
            &["s".into()],
            "p",
            Duration::from_millis(2500),
        )
        .await
        .unwrap();
    store
        .not_submitted(
            &worker,
            claim.item,
            (LineState::Unknown, 0),
            "outcome_unknown",
            "timed out",
        )
        .await
        .unwrap();
    let line = store.line(claim.item).await.unwrap().unwrap();
    assert_eq!(line.state, LineState::Unknown);
    assert!(line.outcome_token().is_none(), "no token yet: {line:?}");
    let wait = line.settles_in.expect("it says when it settles");
    assert!(wait <= Duration::from_millis(2500), "{wait:?}");
    let state = store.state_id().await.unwrap();
    let token: OutcomeToken = format!("{}.1.1", &state[..6]).parse().unwrap();
    let error = store.resubmit_unknown(&[token]).await.unwrap_err();
    assert!(matches!(error, Error::Unsettled { .. }), "{error}");
    assert!(error.to_string().contains("not yet settled"), "{error}");
    assert_eq!(
        store.line(claim.item).await.unwrap().unwrap().state,
        LineState::Unknown,
        "nothing resent"
    );
    tokio::time::sleep(wait + Duration::from_millis(200)).await;
    let line = store.line(claim.item).await.unwrap().unwrap();
    assert_eq!(line.outcome_token(), Some(token));
    assert!(line.settles_in.is_none());
    assert!(store.resubmit_unknown(&[token]).await.unwrap().is_empty());
    assert_eq!(
        store.line(claim.item).await.unwrap().unwrap().state,
        LineState::Pending
    );
}

/// A token names its state: one kept from another state is refused by name, and nothing is
/// resent.
async fn a_token_of_another_state_is_refused(url: StateUrl, other_url: StateUrl, dir: &Path) {
    let source = batch_file(dir, 1, "tokens");
    let mut tokens = Vec::new();
    for url in [&url, &other_url] {
        let store = open(url, &source).await;
        let doomed = store.join(Path::new("a")).await.unwrap();
        let claim = store.claim(&doomed).await.unwrap().unwrap();
        store
            .start_submitting(&doomed, claim.item, 1, &["t".into()], "p", Duration::ZERO)
            .await
            .unwrap();
        drop(doomed);
        let reaper = store.join(Path::new("b")).await.unwrap();
        store.reap(&reaper).await.unwrap();
        tokens.push(
            store
                .line(0)
                .await
                .unwrap()
                .unwrap()
                .outcome_token()
                .unwrap(),
        );
    }
    assert_eq!(
        tokens[0].line, tokens[1].line,
        "line 1, first submission, in both"
    );
    assert_ne!(tokens[0].state(), tokens[1].state());
    let store = Store::open(&url).await.unwrap();
    let error = store.resubmit_unknown(&[tokens[1]]).await.unwrap_err();
    assert!(matches!(error, Error::ForeignToken { .. }), "{error}");
    assert!(
        error.to_string().contains(&tokens[1].to_string()),
        "{error}"
    );
    assert_eq!(
        store.line(0).await.unwrap().unwrap().state,
        LineState::Unknown
    );
    assert!(
        store
            .resubmit_unknown(&[tokens[0]])
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.line(0).await.unwrap().unwrap().state,
        LineState::Pending
    );
}

/// A worker counted out while still running (its session ended: a partition, a restarted
/// server) can move nothing another worker has taken: every arrow is a compare-and-set on the
/// line's holder and state, so a healed worker cannot make a line be paid for twice.
async fn a_counted_out_worker_moves_nothing(cluster: &Postgres, database: &str, dir: &Path) {
    let url = StateUrl::Postgres(cluster.create_database(database));
    let source = batch_file(dir, 3, "fenced");
    let store = open(&url, &source).await;
    let cut = store.join(Path::new("a")).await.unwrap();
    let waiting = store.claim(&cut).await.unwrap().unwrap();
    store
        .start_submitting(&cut, waiting.item, 1, &["w".into()], "p", Duration::ZERO)
        .await
        .unwrap();
    store.submitted(&cut, waiting.item, "task-w").await.unwrap();
    let sending = store.claim(&cut).await.unwrap().unwrap();
    store
        .start_submitting(&cut, sending.item, 2, &["s".into()], "p", Duration::ZERO)
        .await
        .unwrap();
    let unsent = store.claim(&cut).await.unwrap().unwrap();

    // The server ends the worker's session (as it does a client it cannot hear from).
    cluster.sql(
        database,
        &format!(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' \
             AND classid = 1735423081 AND objid = {} AND objsubid = 2",
            cut.id()
        ),
    );
    let alive = store.still_alive(&cut).await;
    assert!(matches!(alive, Err(Error::LostWorker { .. })), "{alive:?}");
    let other = Store::open(&url).await.unwrap();
    let taker = other.join(Path::new("b")).await.unwrap();
    assert_eq!(other.reap(&taker).await.unwrap(), 1);
    let taken: BTreeSet<u64> = [
        other.claim(&taker).await.unwrap().unwrap().item,
        other.claim(&taker).await.unwrap().unwrap().item,
    ]
    .into();
    assert_eq!(taken, BTreeSet::from([waiting.item, unsent.item]));

    // The healed worker tries every arrow it had in hand: each is refused, nothing moves.
    let submitting = store
        .start_submitting(&cut, unsent.item, 3, &["u".into()], "p", Duration::ZERO)
        .await;
    assert!(
        matches!(submitting, Err(Error::LostWorker { .. })),
        "{submitting:?}"
    );
    for refused in [
        store.done(&cut, waiting.item, &[], &[], None).await,
        store.failed(&cut, waiting.item, "x", None).await,
        store.release(&cut, unsent.item, None).await,
        store
            .set_back(&cut, waiting.item, ("api", "x"), (Retry::NextRun, 0))
            .await,
    ] {
        assert!(
            matches!(refused, Err(Error::LostWorker { .. })),
            "{refused:?}"
        );
    }
    let sent = other.line(sending.item).await.unwrap().unwrap();
    assert_eq!(
        sent.state,
        LineState::Unknown,
        "its POST may be out: never resent"
    );
    assert_eq!(other.progress().await.unwrap().committed, 20);
    assert_eq!(other.claim(&taker).await.unwrap(), None);
}

async fn another_file_is_refused(url: StateUrl, dir: &Path) {
    let source = batch_file(dir, 2, "mine");
    let _store = open(&url, &source).await;
    let other = batch_file(dir, 2, "theirs");
    let store = Store::open(&url).await.unwrap();
    let error = store.bind(&other).await.unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, Error::OtherBatch { .. }), "{message}");
    assert!(
        message.contains("mine.jsonl") && message.contains("theirs.jsonl"),
        "{message}"
    );
}

fn sqlite(dir: &Path) -> StateUrl {
    StateUrl::Sqlite(dir.join("state.sqlite"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_claims_are_won_once() {
    let dir = tempfile::tempdir().unwrap();
    claims_are_won_once(sqlite(dir.path()), dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_dead_workers_lines_follow_the_rules() {
    let dir = tempfile::tempdir().unwrap();
    a_dead_workers_lines_follow_the_rules(sqlite(dir.path()), dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_budget_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    the_budget_is_exact_under_racing_workers(sqlite(dir.path()), dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_refuses_another_file() {
    let dir = tempfile::tempdir().unwrap();
    another_file_is_refused(sqlite(dir.path()), dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_setbacks_hold_lines_back() {
    let dir = tempfile::tempdir().unwrap();
    setbacks_hold_lines_back(sqlite(dir.path()), dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_lock_delay_and_tokens() {
    let dir = tempfile::tempdir().unwrap();
    a_counted_out_senders_line_waits_out_its_lock_delay(sqlite(dir.path()), dir.path()).await;
    let settle = tempfile::tempdir().unwrap();
    a_worker_recorded_unknown_is_settled_only_after_its_lock_delay(
        sqlite(settle.path()),
        settle.path(),
    )
    .await;
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    a_token_of_another_state_is_refused(sqlite(a.path()), sqlite(b.path()), dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store() {
    let cluster = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let url = |name: &str| StateUrl::Postgres(cluster.create_database(name));
    claims_are_won_once(url("race"), dir.path()).await;
    a_dead_workers_lines_follow_the_rules(url("reap"), dir.path()).await;
    the_budget_is_exact_under_racing_workers(url("budget"), dir.path()).await;
    another_file_is_refused(url("refuse"), dir.path()).await;
    setbacks_hold_lines_back(url("setback"), dir.path()).await;
    a_counted_out_worker_moves_nothing(&cluster, "fenced", dir.path()).await;
    a_counted_out_senders_line_waits_out_its_lock_delay(url("delay"), dir.path()).await;
    a_worker_recorded_unknown_is_settled_only_after_its_lock_delay(url("settle"), dir.path()).await;
    a_token_of_another_state_is_refused(url("tokens_a"), url("tokens_b"), dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_that_cannot_be_written_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let blocked = dir.path().join("not-a-folder");
    std::fs::write(&blocked, "a file where the state's folder should be").unwrap();
    let url = StateUrl::Sqlite(blocked.join("state.sqlite"));
    let error = Store::open(&url).await.unwrap_err();
    assert!(error.is_state());
    assert!(
        error.to_string().contains("the batch state sqlite:"),
        "{error}"
    );
    let missing = StateUrl::Sqlite(dir.path().join("none.sqlite"));
    let error = Store::open_existing(&missing).await.unwrap_err();
    assert!(matches!(error, Error::NoState { .. }), "{error}");
}

/// A state an earlier version wrote (without the columns added since, and a line held back
/// until a later run marked by the largest retry time): `batch-status` reads it, and the next
/// run takes the held line, instead of failing on a missing column or waiting for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_an_earlier_version_wrote_is_read_and_its_held_line_resumed() {
    use sqlx::Connection;
    let dir = tempfile::tempdir().unwrap();
    let source = batch_file(dir.path(), 1, "old");
    let url = sqlite(dir.path());
    {
        let store = open(&url, &source).await;
        let worker = store.join(Path::new("a")).await.unwrap();
        let claim = store.claim(&worker).await.unwrap().unwrap();
        store
            .start_submitting(&worker, claim.item, 1, &["o".into()], "p", Duration::ZERO)
            .await
            .unwrap();
        store
            .submitted(&worker, claim.item, "task-1")
            .await
            .unwrap();
        store.leave(&worker).await.unwrap();
    }
    let path = dir.path().join("state.sqlite");
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    sqlx::raw_sql(
        "ALTER TABLE gptimage_lines DROP COLUMN deferrals;
         ALTER TABLE gptimage_lines DROP COLUMN held_ms;
         ALTER TABLE gptimage_batch DROP COLUMN state_id;
         UPDATE gptimage_lines SET retry_at = 9223372036854775807, owner = NULL",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();

    let existing = Store::open_existing(&url).await.unwrap();
    let progress = existing.progress().await.unwrap();
    assert_eq!(progress.lines, 1, "{progress:?}");
    let line = existing.line(0).await.unwrap().unwrap();
    assert!(line.held, "{line:?}");
    let store = Store::open(&url).await.unwrap();
    let worker = store.join(Path::new("b")).await.unwrap();
    let claim = tokio::time::timeout(Duration::from_secs(10), store.claim(&worker))
        .await
        .unwrap()
        .unwrap()
        .expect("the next run takes the held line");
    assert_eq!(claim.task_id.as_deref(), Some("task-1"));
}

/// A state's format: a version that finds a newer one changes nothing, and an older version's
/// unfenced move to `submitting` (no fresh commit time) is refused by the state itself.
async fn formats_are_kept(url: StateUrl, dir: &Path, raw: impl AsyncFn(&str)) {
    let source = batch_file(dir, 2, "format");
    let store = open(&url, &source).await;
    let worker = store.join(Path::new("a")).await.unwrap();
    let claim = store.claim(&worker).await.unwrap().unwrap();
    // As an older worker would take it: no sent_ms.
    raw(&format!(
        "UPDATE gptimage_lines SET state = 'submitting', worker = {} WHERE item = {}",
        worker.id(),
        claim.item
    ))
    .await;
    let line = store.line(claim.item).await.unwrap().unwrap();
    assert_eq!(
        line.state,
        LineState::Pending,
        "the unfenced move was refused"
    );
    store
        .start_submitting(&worker, claim.item, 1, &["f".into()], "p", Duration::ZERO)
        .await
        .unwrap();
    store.leave(&worker).await.unwrap();
    drop(store);
    raw("UPDATE gptimage_format SET format = 99").await;
    let error = Store::open(&url).await.unwrap_err();
    assert!(
        matches!(error, Error::NewerState { format: 99, .. }),
        "{error}"
    );
    assert!(error.to_string().contains("newer gptimage"), "{error}");
    let error = Store::open_existing(&url).await.unwrap_err();
    assert!(matches!(error, Error::NewerState { .. }), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_formats_are_kept() {
    use sqlx::Connection;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.sqlite");
    let raw = async |statement: &str| {
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        // An older version's statement fails on the trigger; what matters is what it left.
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(statement.to_owned()))
            .execute(&mut conn)
            .await;
        conn.close().await.unwrap();
    };
    formats_are_kept(sqlite(dir.path()), dir.path(), raw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_formats_are_kept() {
    let cluster = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let url = StateUrl::Postgres(cluster.create_database("format"));
    let raw = async |statement: &str| {
        let _ = cluster.try_sql("format", statement);
    };
    formats_are_kept(url, dir.path(), raw).await;
}
