//! What the tutorial examples share: logging set-up and a small command-line reader (no
//! clap, so each example stays one readable file plus this one). Included with `mod common;`.
#![allow(dead_code)]

use std::fmt::Display;
use std::str::FromStr;

/// Logs to stderr through env_logger; `RUST_LOG` overrides `default` (e.g. "info").
pub fn init_logging(default: &str) {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default)).init();
}

/// The command line, read one argument at a time:
///
/// ```ignore
/// let mut args = Args::new("usage: echo [--addr ADDR]");
/// while let Some(arg) = args.next() {
///     match arg.as_str() {
///         "--addr" => addr = args.value(&arg),
///         _ => args.unexpected(&arg),
///     }
/// }
/// ```
pub struct Args {
    rest: std::iter::Skip<std::env::Args>,
    usage: &'static str,
}

impl Args {
    pub fn new(usage: &'static str) -> Args {
        Args {
            rest: std::env::args().skip(1),
            usage,
        }
    }

    /// The next argument; `--help` or `-h` prints the usage and exits 0.
    pub fn next(&mut self) -> Option<String> {
        let arg = self.rest.next()?;
        if arg == "--help" || arg == "-h" {
            println!("{}", self.usage);
            std::process::exit(0);
        }
        Some(arg)
    }

    /// The value that follows `flag`, parsed; a missing or bad value exits 2.
    pub fn value<T: FromStr<Err: Display>>(&mut self, flag: &str) -> T {
        let Some(text) = self.rest.next() else {
            self.fail(format_args!("{flag} needs a value"))
        };
        text.parse()
            .unwrap_or_else(|e| self.fail(format_args!("{flag} {text}: {e}")))
    }

    /// An argument the example does not take: exits 2.
    pub fn unexpected(&self, arg: &str) -> ! {
        self.fail(format_args!("unexpected argument {arg}"))
    }

    /// Prints `why` and the usage, exits 2.
    pub fn fail(&self, why: impl Display) -> ! {
        eprintln!("{why}\n{}", self.usage);
        std::process::exit(2);
    }
}
