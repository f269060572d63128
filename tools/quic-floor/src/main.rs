//! quic-floor: how much server CPU does one 60-byte QUIC datagram cost, sent to N
//! connections every 33.3 ms, with stock quinn versus one loop driving quinn-proto?
//!
//! `server` runs one of the servers, `clients` runs N stock quinn clients that count
//! what they receive, `run` spawns both pinned to different cores and prints a table.

mod clients;
mod common;
mod looped;
mod run;
mod stock;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "Server CPU per QUIC datagram: stock quinn vs one quinn-proto loop")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve: send one 60-byte datagram to every connection every 33.3 ms.
    Server {
        #[arg(long, value_enum)]
        mode: common::Mode,
        #[arg(long, default_value_t = 4433)]
        port: u16,
        /// Where the self-signed certificate (DER) is written for the clients to trust.
        #[arg(long, default_value = "/tmp/quic-floor-cert.der")]
        cert_out: PathBuf,
        /// Ask clients to ACK every K ack-eliciting packets (0: QUIC's default of 2 or 25 ms).
        #[arg(long, default_value_t = 0)]
        ack_every: u32,
        /// Loop modes: least microseconds between two passes over the socket (0: every event).
        #[arg(long, default_value_t = 0)]
        coalesce_us: u64,
    },
    /// Open N connections (one UDP socket each) and count the datagrams received.
    Clients {
        #[arg(long)]
        n: usize,
        #[arg(long)]
        addr: SocketAddr,
        /// The server's certificate (DER), trusted explicitly as the only root.
        #[arg(long, default_value = "/tmp/quic-floor-cert.der")]
        cert: PathBuf,
        /// Also send one 32-byte input datagram per connection per tick, each from its own
        /// phase (tickforge's `network-split` load: states one way, inputs the other).
        #[arg(long)]
        inputs: bool,
    },
    /// Spawn server (taskset -c 0) and clients (taskset -c 1) per step and mode; print a table.
    Run {
        #[arg(long, value_delimiter = ',', default_value = "400,1000")]
        n: Vec<usize>,
        #[arg(long, value_delimiter = ',', value_enum, default_value = "stock,loop")]
        mode: Vec<common::Mode>,
        /// How many times each (n, mode) is measured; modes are interleaved.
        #[arg(long, default_value_t = 2)]
        repeat: usize,
        /// Seconds of measurement window after all connections are up and warmed.
        #[arg(long, default_value_t = 10)]
        window: u64,
        #[arg(long, default_value_t = 4433)]
        port: u16,
        /// Passed to the server: ask clients to ACK every K packets (0: default).
        #[arg(long, default_value_t = 0)]
        ack_every: u32,
        /// Passed to the server: least µs between socket passes in the loop modes.
        #[arg(long, default_value_t = 0)]
        coalesce_us: u64,
        /// Niceness for both children (the machine is shared with builds; negative = favoured).
        #[arg(long, default_value_t = -10, allow_hyphen_values = true)]
        nice: i32,
        /// Passed to the clients: each also sends one input datagram per tick.
        #[arg(long)]
        inputs: bool,
    },
}

fn main() -> anyhow::Result<()> {
    common::raise_fd_limit();
    match Cli::parse().command {
        Command::Server {
            mode,
            port,
            cert_out,
            ack_every,
            coalesce_us,
        } => {
            let coalesce = std::time::Duration::from_micros(coalesce_us);
            let identity = common::Identity::generate()?;
            identity.write_cert(&cert_out)?;
            match mode {
                common::Mode::Stock => stock::serve(port, identity, ack_every),
                common::Mode::Loop => looped::serve(
                    port,
                    identity,
                    looped::SendPath::PerTransmit,
                    ack_every,
                    coalesce,
                ),
                common::Mode::LoopMmsg => looped::serve(
                    port,
                    identity,
                    looped::SendPath::Sendmmsg,
                    ack_every,
                    coalesce,
                ),
            }
        }
        Command::Clients {
            n,
            addr,
            cert,
            inputs,
        } => clients::run(n, addr, &cert, inputs),
        Command::Run {
            n,
            mode,
            repeat,
            window,
            port,
            ack_every,
            coalesce_us,
            nice,
            inputs,
        } => run::run(
            &n,
            &mode,
            repeat,
            &run::Settings {
                window,
                port,
                ack_every,
                coalesce_us,
                nice,
                inputs,
            },
        ),
    }
}
