//! `telecho`: the command-line tool that wires the telecho nodes together.
//!
//! The binary stays thin: it parses arguments, loads files and calls the libraries.

mod audit;
mod bag;
mod bench;
mod certs;
mod cli_error;
mod console;
mod demo;
mod igtl;
mod kin;
mod node;
mod perception;
mod record;
mod scan;
mod sim;
pub(crate) mod soak;
mod teleop;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::cli_error::CliError;

/// Open robotic tele-echography: robot-held ultrasound of the lumbar spine, teleoperated or
/// autonomous, co-registered with cone-beam CT.
#[derive(Debug, Parser)]
#[command(name = "telecho", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole system on the built-in simulator, headless (today: the kinematics self-check
    /// of the bundled arms).
    Demo(demo::DemoArgs),
    /// Kinematics of any serial chain in a URDF: forward kinematics, Jacobian, inverse kinematics.
    Kin {
        #[command(subcommand)]
        command: kin::KinCommand,
    },
    /// The built-in simulator: simulated patients (phantom, CBCT, landmarks).
    Sim {
        #[command(subcommand)]
        command: sim::SimCommand,
    },
    /// Run a scan protocol on the simulated patient of a seed: prints a summary (one JSON object
    /// with --json) and writes the patient's CBCT, the tracked ultrasound sweep and the
    /// evaluator's ground truth into DIR. Exit code 1 when the scan does not complete.
    Scan(scan::ScanArgs),
    /// The perception node: US-CBCT registration, fusion overlays, detector evaluation.
    Perception {
        #[command(subcommand)]
        command: perception::PerceptionCommand,
    },
    /// The site PKI of the teleoperation link (CA, server and client certificates).
    Certs {
        #[command(subcommand)]
        command: certs::CertsCommand,
    },
    /// OpenIGTLink for 3D Slicer / SlicerIGT: `igtl serve` streams a tracked sweep (probe pose,
    /// ultrasound frames, landmarks, status) in millimetres and LPS.
    Igtl {
        #[command(subcommand)]
        command: igtl::IgtlCommand,
    },
    /// Benchmarks of the control node: force control over many seeded scans, real-time loop
    /// timing.
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
    /// Run one node as its own process over ROS 2 (DDS): `node control --sim` is the control
    /// node on the simulator at 1 kHz with its ROS 2 adapter.
    Node {
        #[command(subcommand)]
        command: node::NodeCommand,
    },
    /// The teleoperation link: the patient side on the simulator (`teleop serve --sim`) and
    /// the QUIC-against-TCP command-latency benchmark (`teleop bench`).
    Teleop {
        #[command(subcommand)]
        command: teleop::TeleopCommand,
    },
    /// The hash-chained audit log of the teleoperation link: `audit verify FILE`.
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
    /// Long run of the whole teleoperation loop (patient side on the simulator, remote operator
    /// over QUIC through an impaired link) with faults injected in rotation; checks memory
    /// growth, force-limit violations, panics and recovery from every fault. Exit code 1 when a
    /// criterion fails.
    Soak(soak::SoakArgs),
    /// The remote sonographer's console: connects to `telecho teleop serve` with a certificate
    /// of the site PKI and shows the arm, the measured and predicted probe, skin, ultrasound
    /// plane and image, registered CBCT bone and landmarks, force gauge and latency (kiss3d);
    /// steers from the keyboard. `--screenshot FILE` renders headless and exits.
    Console(console::ConsoleArgs),
    /// Record telecho's ROS 2 topics from DDS into an MCAP file (as `ros2 bag record`):
    /// joint states, wrench, poses, tf, robot description, commands, ultrasound, safety events,
    /// audit entries. Until Ctrl-C or --duration-s.
    Record(bag::RecordArgs),
    /// Publish a recording's messages on DDS again with their recorded spacing (as
    /// `ros2 bag play`), so the nodes receive them as if live.
    Replay(bag::ReplayArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return cli_error::clap_exit(e),
    };
    if cli.command.long_running() {
        bound_heap_fragmentation();
    }
    let result = match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::Kin { command } => kin::run(&command),
        Command::Sim { command } => sim::run(&command),
        Command::Scan(args) => scan::run(&args),
        Command::Bench { command } => bench::run(&command),
        Command::Node { command } => node::run(&command),
        Command::Perception { command } => perception::run(&command),
        Command::Certs { command } => certs::run(&command),
        Command::Igtl { command } => igtl::run(&command),
        Command::Teleop { command } => teleop::run(&command),
        Command::Audit { command } => audit::run(&command),
        Command::Soak(args) => soak::run(&args),
        Command::Console(args) => console::run(&args),
        Command::Record(args) => bag::record(&args),
        Command::Replay(args) => bag::replay(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => e.report(),
    }
}

impl Command {
    /// Services that run for hours and move ultrasound frames through the heap all the time.
    fn long_running(&self) -> bool {
        matches!(
            self,
            Command::Node { .. } | Command::Igtl { .. } | Command::Soak(_) | Command::Record(_)
        ) || matches!(
            self,
            Command::Teleop {
                command: teleop::TeleopCommand::Serve(_)
            }
        )
    }
}

/// glibc's allocator serves the ~20–130 kB buffers of ultrasound frames (encoded frames, QUIC
/// stream chunks) from its main heap, where freed blocks of varying sizes fragment it: a
/// 6-minute `telecho soak` grew its RSS by 16.6 %, 30-minute ones by 57 %, with nothing leaked
/// (heaptrack: all of it released at exit). Serving every block of 32 kB and more from its own
/// mapping returns it to the system when freed: the same soak then grew 4.3 %. Measured with
/// `MALLOC_MMAP_THRESHOLD_=32768 telecho soak --minutes 6 --json` beside a default run; see
/// docs/BENCHMARK_NOTES.md. Costs a page-fault round per large allocation, so only the long-running
/// network services ask for it (not the batch commands, whose volumes and point sets are large).
fn bound_heap_fragmentation() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator tuning; called before any thread is started.
        let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 32 * 1024) };
        if ok != 1 {
            tracing::warn!("mallopt(M_MMAP_THRESHOLD) refused; RSS may grow by fragmentation");
        }
    }
}

/// Result type of every subcommand.
type CliResult = Result<(), CliError>;
