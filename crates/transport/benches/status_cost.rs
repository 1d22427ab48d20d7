//! The cost of one status request through each client, against the plain HTTP stack doing the
//! same request (send, read the body, parse the envelope) to the same emulator.
//!
//! Run with `cargo bench -p gptimage-transport --bench status_cost`. The arms run interleaved,
//! round by round (A B C A B C …, `BENCH_ROUNDS` rounds of `BENCH_REQUESTS` sequential requests
//! over keep-alive connections), so machine noise lands on every arm alike; each ratio printed is
//! the median of the per-round ratios. The fair baseline is the plain stack configured with the
//! same connect and overall timeouts as the client (and, for reqwest, the same headers: ureq sends
//! its own User-Agent and Accept); the plain stack without timeouts shows what the timeouts
//! themselves cost. A last ureq arm bounds every phase but name resolution, which shows where
//! ureq's timeout cost comes from (a resolver thread per request).

use std::time::{Duration, Instant};

use gptimage_emulator::{Config, Emulator};
use gptimage_transport::{Client, blocking};
use gptimage_types::StatusResponse;

const CONNECT: Duration = Duration::from_secs(10);
const OVERALL: Duration = Duration::from_secs(60);

fn setting(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
        .clamp(1, 100_000)
}

/// Mean time per call of `f` over `n` calls.
fn time(n: u32, f: &mut dyn FnMut()) -> Duration {
    let started = Instant::now();
    for _ in 0..n {
        f();
    }
    started.elapsed() / n
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Runs the arms interleaved; prints each arm's median time and its median ratio to `arms[1]`
/// (the fair baseline) and, for the baseline and any later arm, to `arms[2]` (no timeouts).
fn compare(title: &str, arms: &mut [(&str, &mut dyn FnMut())], rounds: u32, requests: u32) {
    for (_, f) in arms.iter_mut() {
        time(requests.min(200), *f); // warm-up: connections, caches
    }
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); arms.len()];
    for _ in 0..rounds {
        for (i, (_, f)) in arms.iter_mut().enumerate() {
            times[i].push(time(requests, *f).as_secs_f64() * 1e6);
        }
    }
    let ratio =
        |a: usize, b: usize| median(times[a].iter().zip(&times[b]).map(|(x, y)| x / y).collect());
    println!("{title}");
    for (i, (name, _)) in arms.iter().enumerate() {
        let against = match i {
            0 => format!("{:.3}× the fair baseline", ratio(0, 1)),
            2 => String::new(),
            i => format!("{:.3}× the stack without timeouts", ratio(i, 2)),
        };
        println!(
            "  {name:<34} {:>8.1} µs/request   {against}",
            median(times[i].clone())
        );
    }
}

fn main() {
    let rounds = setting("BENCH_ROUNDS", 15);
    let requests = setting("BENCH_REQUESTS", 300);
    let emulator = Emulator::spawn(Config::instant()).expect("the emulator starts");
    let (base, key) = (
        emulator.base_url().to_owned(),
        emulator.api_key().to_owned(),
    );
    let blocking_client = blocking::Client::builder()
        .api_key(&key)
        .base_url(&base)
        .connect_timeout(CONNECT)
        .request_timeout(OVERALL)
        .build()
        .unwrap();
    let request = gptimage_types::GenerateRequest::text_to_image("bench")
        .build()
        .unwrap();
    let id = blocking_client.submit(&request).unwrap().task_id;
    let url = format!("{base}/status?task_id={id}");
    let auth = format!("Bearer {key}");
    println!("{rounds} rounds of {requests} status requests per arm, interleaved; medians");

    #[derive(Clone, Copy)]
    enum Timeouts {
        Same,
        None,
        /// Each phase bounded except name resolution: ureq resolves a name on a new thread for
        /// every request (pooled or not) whenever resolution has a time limit, and an overall
        /// limit gives it one. This arm shows what that thread costs.
        AllButResolve,
    }
    let ureq_agent = |timeouts: Timeouts| -> ureq::Agent {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .proxy(None);
        let some = Some(OVERALL);
        let config = match timeouts {
            Timeouts::Same => config.timeout_connect(Some(CONNECT)).timeout_global(some),
            Timeouts::None => config,
            Timeouts::AllButResolve => config
                .timeout_connect(Some(CONNECT))
                .timeout_send_request(some)
                .timeout_recv_response(some)
                .timeout_recv_body(some),
        };
        config.build().into()
    };
    let (fair, bare, phases) = (
        ureq_agent(Timeouts::Same),
        ureq_agent(Timeouts::None),
        ureq_agent(Timeouts::AllButResolve),
    );
    let plain = |agent: &ureq::Agent| {
        let mut response = agent
            .get(&url)
            .header("authorization", &auth)
            .call()
            .unwrap();
        let body = response.body_mut().read_to_vec().unwrap();
        let parsed: StatusResponse = serde_json::from_slice(&body).unwrap();
        assert!(parsed.data.is_some());
    };
    compare(
        "blocking client (ureq 3)",
        &mut [
            ("gptimage blocking::Client", &mut || {
                blocking_client.status(&id).unwrap();
            }),
            ("plain ureq, same timeouts", &mut || plain(&fair)),
            ("plain ureq, no timeouts", &mut || plain(&bare)),
            ("plain ureq, no limit on resolving", &mut || plain(&phases)),
        ],
        rounds,
        requests,
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let async_client = Client::builder()
        .api_key(&key)
        .base_url(&base)
        .connect_timeout(CONNECT)
        .request_timeout(OVERALL)
        .build()
        .unwrap();
    // The plain stack's reqwest has rustls without a provider (the client's feature turns it
    // on; the client hands it its own): the baseline installs ring, the same provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let reqwest_client = |timeouts: bool| -> reqwest::Client {
        let builder = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none());
        let builder = if timeouts {
            builder.connect_timeout(CONNECT)
        } else {
            builder
        };
        builder.build().unwrap()
    };
    let (fair, bare) = (reqwest_client(true), reqwest_client(false));
    let agent = concat!("gptimage-rust/", env!("CARGO_PKG_VERSION"));
    let plain = |http: &reqwest::Client, timeouts: bool| {
        runtime.block_on(async {
            // The same request on the wire as the client's: its User-Agent and Accept too.
            let request = http
                .get(&url)
                .bearer_auth(&key)
                .header("user-agent", agent)
                .header("accept", "application/json");
            let request = if timeouts {
                request.timeout(OVERALL)
            } else {
                request
            };
            let body = request.send().await.unwrap().bytes().await.unwrap();
            let parsed: StatusResponse = serde_json::from_slice(&body).unwrap();
            assert!(parsed.data.is_some());
        });
    };
    compare(
        "async client (reqwest 0.13)",
        &mut [
            ("gptimage Client", &mut || {
                runtime.block_on(async_client.status(&id)).unwrap();
            }),
            ("plain reqwest, same timeouts", &mut || plain(&fair, true)),
            ("plain reqwest, no timeouts", &mut || plain(&bare, false)),
        ],
        rounds,
        requests,
    );
}
