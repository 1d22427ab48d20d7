//! `gptimage-emulator`: serves the emulated GPT Image 1.5 API from a terminal until Ctrl-C.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use gptimage_emulator::{Config, Emulator, Endpoint, Fault, FaultKind, KeyConfig};

/// A local emulator of the GPT Image 1.5 API that makes real images.
///
/// Point a client at the printed base URL with the printed key, e.g.
///   GPTIMAGE_BASE_URL=http://127.0.0.1:8080/api GPTIMAGE_API_KEY=sk-emulator-local gptimage generate "a red fox"
#[derive(Debug, Parser)]
#[command(version, about, long_about = None, after_help = EXAMPLES)]
struct Args {
    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "GPTIMAGE_EMULATOR_PORT", default_value_t = 8080)]
    port: u16,
    /// Address to listen on. Keep it on loopback unless you know why not.
    #[arg(long, env = "GPTIMAGE_EMULATOR_HOST", default_value = "127.0.0.1")]
    host: IpAddr,
    /// An API key to accept (repeat for several). Default: sk-emulator-local.
    #[arg(
        long = "key",
        env = "GPTIMAGE_EMULATOR_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    keys: Vec<String>,
    /// Starting credits of every key (a task costs 10).
    #[arg(long, default_value_t = gptimage_emulator::DEFAULT_CREDITS)]
    credits: u64,
    /// How long a task stays PENDING, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pending_ms: u64,
    /// How long a task then stays IN_PROGRESS, in milliseconds.
    #[arg(long, default_value_t = 3000)]
    running_ms: u64,
    /// A prompt containing this phrase fails with "Content policy violation detected".
    #[arg(long, default_value = "policy-violation")]
    fail_phrase: String,
    /// Share of API requests answered 500 (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Share of API requests answered 429 with Retry-After: 1 (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    throttle_rate: f64,
    /// Share of API requests whose connection is dropped after the request was processed.
    #[arg(long, default_value_t = 0.0)]
    drop_rate: f64,
    /// Milliseconds added to every API answer.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Limit new tasks per key, as COUNT/SECONDS (e.g. 20/10).
    #[arg(long, value_parser = parse_rate)]
    rate_limit: Option<(u32, Duration)>,
    /// Seed of the fault generator, for repeatable runs.
    #[arg(long)]
    seed: Option<u64>,
    /// Seconds finished tasks and their images are kept.
    #[arg(long, default_value_t = 3600)]
    task_ttl_secs: u64,
    /// Allow input images and webhooks on hosts other than loopback.
    #[arg(long)]
    allow_remote_urls: bool,
    /// Answer API errors with HTTP 200, the outcome only in the body's code.
    #[arg(long)]
    errors_as_http_200: bool,
    /// Accept (and ignore) request fields the API does not document; by default such a field
    /// is a 400 naming it.
    #[arg(long)]
    allow_unknown_fields: bool,
    /// Trust the CA certificates of this PEM file for https input images and webhooks (by
    /// default none is trusted).
    #[arg(long, value_name = "FILE")]
    trust_ca: Option<std::path::PathBuf>,
}

const EXAMPLES: &str = "Examples:
  gptimage-emulator --port 8080
  gptimage-emulator --port 0 --pending-ms 0 --running-ms 0
  gptimage-emulator --error-rate 0.2 --rate-limit 20/10 --seed 7
  gptimage-emulator --key sk-alice --key sk-bob --credits 100";

fn parse_rate(s: &str) -> Result<(u32, Duration), String> {
    let (count, seconds) = s
        .split_once('/')
        .ok_or_else(|| format!("expected COUNT/SECONDS such as 20/10, got {s:?}"))?;
    let count = count
        .trim()
        .parse()
        .map_err(|_| format!("{count:?} is not a whole number of tasks"))?;
    let seconds: f64 = seconds
        .trim()
        .parse()
        .map_err(|_| format!("{seconds:?} is not a number of seconds"))?;
    if !(seconds > 0.0 && seconds < 86_400.0) {
        return Err("the window must be between 0 and 86400 seconds".to_owned());
    }
    Ok((count, Duration::from_secs_f64(seconds)))
}

fn config(args: &Args) -> Config {
    let mut config = Config::default()
        .with_timings(
            Duration::from_millis(args.pending_ms),
            Duration::from_millis(args.running_ms),
        )
        .with_fail_phrase(args.fail_phrase.clone())
        .with_task_ttl(Duration::from_secs(args.task_ttl_secs))
        .with_remote_urls(args.allow_remote_urls)
        .with_unknown_fields_allowed(args.allow_unknown_fields)
        .with_errors_as_http_200(args.errors_as_http_200);
    let keys: Vec<&String> = args.keys.iter().filter(|k| !k.trim().is_empty()).collect();
    config = if keys.is_empty() {
        config.with_keys([KeyConfig::new(
            "default",
            gptimage_emulator::DEFAULT_KEY,
            args.credits,
        )])
    } else {
        config.with_keys(
            keys.iter()
                .enumerate()
                .map(|(i, k)| KeyConfig::new(format!("key{}", i + 1), k.trim(), args.credits)),
        )
    };
    if let Some((count, window)) = args.rate_limit {
        config = config.with_rate_limit(count, window);
    }
    if let Some(seed) = args.seed {
        config = config.with_seed(seed);
    }
    for endpoint in [Endpoint::Generate, Endpoint::Status] {
        if args.error_rate > 0.0 {
            let fault = Fault::new(FaultKind::ServerError).on(endpoint);
            config = config.with_fault(fault.probability(args.error_rate));
        }
        if args.throttle_rate > 0.0 {
            let fault = Fault::new(FaultKind::RateLimited {
                retry_after_secs: 1,
            })
            .on(endpoint);
            config = config.with_fault(fault.probability(args.throttle_rate));
        }
        if args.drop_rate > 0.0 {
            let fault = Fault::new(FaultKind::DropConnection).on(endpoint);
            config = config.with_fault(fault.probability(args.drop_rate));
        }
    }
    if args.latency_ms > 0 {
        let latency = FaultKind::Latency(Duration::from_millis(args.latency_ms));
        config = config.with_fault(Fault::new(latency));
    }
    config
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let mut config = config(&args);
    if let Some(path) = &args.trust_ca {
        match std::fs::read(path) {
            Ok(pem) => config = config.with_trusted_roots_pem(pem),
            Err(e) => {
                eprintln!(
                    "gptimage-emulator: cannot read --trust-ca {}: {e}",
                    path.display()
                );
                return ExitCode::from(2);
            }
        }
    }
    // The well-known default key is shown; keys the user chose are not (they may be copies of
    // real ones, and a terminal's output travels).
    let chosen = args.keys.iter().any(|k| !k.trim().is_empty());
    let keys: Vec<String> = config.keys.iter().map(|k| k.key.clone()).collect();
    let emulator = match Emulator::bind(config, SocketAddr::new(args.host, args.port)).await {
        Ok(emulator) => emulator,
        Err(e) => {
            eprintln!(
                "gptimage-emulator: cannot listen on {}:{}: {e}; try another --port (0 picks a free one)",
                args.host, args.port
            );
            return ExitCode::from(1);
        }
    };
    println!("gptimage-emulator listening on {}", emulator.base_url());
    if chosen {
        println!(
            "  API keys: the {} given with --key (not shown)",
            keys.len()
        );
        println!(
            "  try: GPTIMAGE_BASE_URL={} GPTIMAGE_API_KEY=<one of them> gptimage generate \"a red fox in snow\"",
            emulator.base_url()
        );
    } else {
        for key in &keys {
            println!("  API key: {key}");
        }
        println!(
            "  try: GPTIMAGE_BASE_URL={} GPTIMAGE_API_KEY={} gptimage generate \"a red fox in snow\"",
            emulator.base_url(),
            keys.first().map_or("", String::as_str)
        );
    }
    println!(
        "  OpenAPI document: {}/openapi.json; counters: {}/_emulator/counters",
        emulator.origin(),
        emulator.origin()
    );
    println!("  press Ctrl-C to stop");
    if let Err(e) = tokio::signal::ctrl_c().await {
        eprintln!("gptimage-emulator: cannot wait for Ctrl-C ({e}); stopping");
    }
    eprintln!("gptimage-emulator: stopping");
    emulator.shutdown().await;
    ExitCode::SUCCESS
}
