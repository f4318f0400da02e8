//! warren-perf: load generator for AMQP 0-9-1 brokers. See the warren_perf crate.

use std::process::ExitCode;

use warren_perf::{self as perf, report, Args};

fn main() -> ExitCode {
    let args = match Args::parse_with_presets(std::env::args().collect()) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let primary = perf::run(&args);
    let Some(other_uri) = args.compare.clone() else {
        if args.json {
            println!("{}", primary.json());
        } else {
            print!("{}", primary.human());
        }
        return exit(&[&primary]);
    };
    let mut second = args.clone();
    second.uri = other_uri;
    second.broker_pid = args.compare_pid;
    if !args.quiet {
        eprintln!("--- now the same run against --compare");
    }
    let other = perf::run(&second);
    if args.json {
        println!("{}", report::compare_json(&primary, &other));
    } else {
        println!("# {}", args.uri_without_password());
        print!("{}", primary.human());
        println!("\n# {}", second.uri_without_password());
        print!("{}", other.human());
        println!();
        print!(
            "{}",
            report::compare_table("primary", &primary, "compare", &other)
        );
    }
    exit(&[&primary, &other])
}

fn exit(reports: &[&perf::Report]) -> ExitCode {
    if reports.iter().all(|r| r.ok()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
