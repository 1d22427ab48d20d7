//! `gptimage`: generate, edit, check, wait for and batch GPT Image 1.5 tasks from a terminal.

mod batch;
mod cli;
mod commands;
mod progress;
mod report;
mod say;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use crate::cli::{Cli, Command, Shell};
use crate::report::{code, describe};
use crate::say::{out, say};

/// The file-size-limit signal's number (the same on Linux and the BSDs).
#[cfg(unix)]
const SIGXFSZ: i32 = 25;

fn main() -> ExitCode {
    let cli = Cli::parse();
    say::know(cli.secrets());
    if let Command::Completions(args) = &cli.command {
        let shell = match args.shell {
            Shell::Bash => clap_complete::Shell::Bash,
            Shell::Zsh => clap_complete::Shell::Zsh,
            Shell::Fish => clap_complete::Shell::Fish,
            Shell::Elvish => clap_complete::Shell::Elvish,
            Shell::Powershell => clap_complete::Shell::PowerShell,
        };
        clap_complete::generate(
            shell,
            &mut Cli::command(),
            "gptimage",
            &mut std::io::stdout(),
        );
        return ExitCode::SUCCESS;
    }
    // Requests are checked before anything else, so a bad one needs no key and sends nothing:
    // local input files too (readable, an image, within the limit), with stand-in URLs.
    let request = match &cli.command {
        Command::Generate(args) => {
            let checked = commands::inputs(args).and_then(|inputs| {
                let stand_ins = commands::stand_ins(&inputs);
                commands::request(args, stand_ins)
                    .map(|_| inputs)
                    .map_err(gptimage::Error::from)
            });
            match checked {
                Ok(inputs) => Some(inputs),
                Err(error) => {
                    say!("error: {}", describe(&error, None));
                    if args.output.json {
                        out!("{}", report::Report::failure(None, &error).to_json());
                    }
                    return ExitCode::from(code::USAGE);
                }
            }
        }
        _ => None,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            say!("error: could not start the async runtime: {e}");
            return ExitCode::from(code::TRANSPORT);
        }
    };
    ExitCode::from(runtime.block_on(run(cli, request)))
}

async fn run(cli: Cli, inputs: Option<Vec<commands::Input>>) -> u8 {
    // A write past the file-size limit (`ulimit -f`) must be an error the command reports, not
    // a signal that kills it mid-batch: listening for SIGXFSZ turns its default action off.
    #[cfg(unix)]
    let _file_size_signal =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(SIGXFSZ));
    // Looking at a batch needs its state, not the API.
    if let Command::BatchStatus(args) = &cli.command {
        return batch::status(args).await;
    }
    if let Command::Batch(args) = &cli.command
        && args.dry_run
    {
        return batch::dry_run(args).await;
    }
    let listen = match &cli.command {
        Command::Generate(args) => Some(&args.listen),
        Command::Batch(args) => Some(&args.listen),
        _ => None,
    };
    let rate = match &cli.command {
        Command::Batch(args) => Some(args.rate),
        _ => None,
    };
    let context = match commands::Context::new(&cli.global, listen, rate).await {
        Ok(context) => context,
        Err((message, exit)) => {
            say!("error: {message}");
            return exit;
        }
    };
    let quiet = cli.global.quiet;
    let (report, json) = match &cli.command {
        Command::Generate(args) => {
            let inputs = inputs.expect("a generate command has its inputs");
            // Where the images go is checked before anything is hosted or paid for.
            let destination = match commands::destination(&context, &args.output).await {
                Ok(destination) => destination,
                Err((message, exit)) => {
                    say!("error: {message}");
                    return exit;
                }
            };
            let images = match context
                .host_inputs(inputs, args.image_host.as_deref())
                .await
            {
                Ok(images) => images,
                Err((message, exit)) => {
                    say!("error: {message}");
                    return exit;
                }
            };
            let request = match commands::request(args, images) {
                Ok(request) => request,
                Err(error) => {
                    say!("error: {}", describe(&gptimage::Error::from(error), None));
                    return code::USAGE;
                }
            };
            (
                commands::generate(&context, args, request, &destination).await,
                args.output.json,
            )
        }
        Command::Status(args) => (commands::status(&context, args).await, args.json),
        Command::Wait(args) => (commands::wait(&context, args).await, args.output.json),
        Command::Batch(args) => return batch::run(&context, args).await,
        Command::Completions(_) | Command::BatchStatus(_) => return code::OK,
    };
    report.print(json, quiet);
    report.exit_code()
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap's own checks (conflicts and requirements name real arguments, …) over every command.
    #[test]
    fn the_command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
