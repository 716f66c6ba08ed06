//! The `schedrig` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::kernel::{self, BuildOptions, KernelRequest};

#[derive(Debug, Parser)]
#[command(
    name = "schedrig",
    version,
    about = "Test Linux process schedulers (sched_ext) in real KVM virtual machines",
    long_about = None
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build, locate and check the kernels tests boot.
    #[command(subcommand)]
    Kernel(KernelCommand),
}

#[derive(Debug, Subcommand)]
enum KernelCommand {
    /// Build the project kernel (Debian linux-source + kernels/schedrig.config)
    /// into the cache; returns at once when it is already cached. The last
    /// line printed is the cache entry's directory.
    Build {
        /// Parallel make jobs [default: number of CPUs].
        #[arg(long, short = 'j')]
        jobs: Option<usize>,
        /// Rebuild even when the cache entry exists.
        #[arg(long)]
        force: bool,
    },
    /// Show which kernel a run would boot, and check it has sched_ext.
    Resolve {
        #[command(flatten)]
        kernel: KernelArgs,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// How a command picks its kernel.
#[derive(Debug, Args, Clone, Default)]
pub struct KernelArgs {
    /// A vmlinux or bzImage to boot [default: the cached project kernel].
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// The unstripped vmlinux for introspection, when it is not beside --kernel.
    #[arg(long, value_name = "PATH")]
    pub vmlinux: Option<PathBuf>,
}

impl KernelArgs {
    pub fn request(&self) -> KernelRequest {
        KernelRequest {
            kernel: self.kernel.clone(),
            vmlinux: self.vmlinux.clone(),
        }
    }
}

/// Entry point: parses flags, runs, and turns any error into one line
/// on stderr and a non-zero exit.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("schedrig: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Kernel(KernelCommand::Build { jobs, force }) => {
            let mut opts = BuildOptions::default();
            if let Some(j) = jobs {
                anyhow::ensure!(j > 0, "--jobs must be at least 1");
                opts.jobs = j;
            }
            opts.force = force;
            let out = kernel::build(&opts)?;
            if out.cached {
                eprintln!(
                    "schedrig: kernel is cached ({:.2}s)",
                    out.duration.as_secs_f64()
                );
            } else {
                eprintln!(
                    "schedrig: kernel built in {}m{:02}s",
                    out.duration.as_secs() / 60,
                    out.duration.as_secs() % 60
                );
            }
            println!("{}", out.entry.dir.display());
        }
        Command::Kernel(KernelCommand::Resolve { kernel, json }) => {
            let r = kernel::resolve(&kernel.request())?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!("image:   {} ({:?})", r.image.display(), r.format);
                match &r.vmlinux {
                    Some(v) => println!("vmlinux: {}", v.display()),
                    None => println!("vmlinux: none (host-side introspection unavailable)"),
                }
                println!("config:  {} (sched_ext: yes)", r.config_source);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
