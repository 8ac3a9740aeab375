//! im-bench: drives a running im-server (or Redis, for comparison) with many raw non-blocking
//! sockets on one thread and one `mio::Poll`, and reports what it measured.
//!
//! # Layout
//! - [`net`]: the sockets, the poll loop, and the [`net::Phase`] trait every step implements.
//! - [`im`]: im-server credentials, SCRAM login, and setup (register, log in, friends, group).
//! - [`redis`]: a minimal RESP client for the Redis comparison (pub/sub, streams).
//! - [`shapes`]: one file per shape; `traffic` is the loop `pairs` and `fanout` share.
//! - [`window`]: warm-up, measured span and drain; [`procstat`]: CPU and RSS from `/proc`.
//! - [`stats`]: the latency histogram and the report (a table, or one JSON line).
//!
//! Users are registered through the protocol with one shared salt, so PBKDF2 runs once per
//! run; their names carry a random prefix, so runs can repeat against one database. Start the
//! server with a `--min-kdf-iterations` at or below `--kdf-iterations` (4096 by default).

mod im;
mod net;
mod procstat;
mod redis;
mod shapes;
mod stats;
mod window;

use clap::{Parser, Subcommand, ValueEnum};
use net::SourceAddrs;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// im-bench: measure a running im-server (or Redis) with many raw sockets.
///
/// Prints a table; with --json, one JSON line on standard output (the table goes to standard
/// error). Exits 1 when delivery could not be verified, 2 when the run failed.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    /// Address of the server under test.
    #[arg(long, global = true, default_value = "127.0.0.1:7878")]
    addr: SocketAddr,

    /// What the address serves.
    #[arg(long, global = true, value_enum, default_value_t = TargetArg::ImServer)]
    target: TargetArg,

    /// PID of the server, for its CPU use and resident memory (from /proc).
    #[arg(long, global = true)]
    server_pid: Option<u32>,

    /// Seconds of measurement (after the warm-up) for timed shapes, or of holding for idle.
    #[arg(long, global = true, default_value_t = 10.0)]
    seconds: f64,

    /// Seconds of load before measuring starts.
    #[arg(long, global = true, default_value_t = 1.0)]
    warmup: f64,

    /// Seconds any setup step (or the drain shape) may take before the run fails.
    #[arg(long, global = true, default_value_t = 120.0)]
    timeout: f64,

    /// Print one JSON line on standard output.
    #[arg(long, global = true)]
    json: bool,

    /// PBKDF2 iterations the bench users register with (the server's minimum must allow it).
    #[arg(long, global = true, default_value_t = 4096)]
    kdf_iterations: u32,

    /// Connections being opened and logged in at once during setup.
    #[arg(long, global = true, default_value_t = 256)]
    concurrency: usize,

    /// Receivers do not send ACK for what they got (im-server only; by default each receiver
    /// acknowledges the newest message of every read, as a real client would).
    #[arg(long, global = true)]
    no_receiver_ack: bool,

    /// Bind every client socket to 127.0.0.(2 + i mod N) before connecting. 0: let the kernel
    /// choose, and rotate through 127.0.0.2 onwards only once its ports run out.
    #[arg(long, global = true, default_value_t = 0)]
    source_ips: u8,

    /// Speak TLS to the server (im-server's --tls-listen, Redis's --tls-port).
    #[arg(long, global = true)]
    tls: bool,

    /// With --tls: trust only this certificate (PEM), e.g. a self-signed server's.
    #[arg(long, global = true, requires = "tls")]
    tls_ca: Option<std::path::PathBuf>,

    /// Speak the protocol inside WebSocket messages (im-server's --http-listen, or its TLS
    /// port with --tls): one frame per binary message.
    #[arg(long, global = true)]
    ws: bool,

    /// With --tls: the name the server's certificate must carry.
    #[arg(long, global = true, default_value = "localhost")]
    tls_name: String,

    #[command(subcommand)]
    shape: Shape,
}

#[derive(Subcommand, Debug)]
enum Shape {
    /// N pairs of friends; each sender keeps W messages of B bytes unacknowledged.
    Pairs {
        #[arg(long, default_value_t = 100)]
        pairs: usize,
        #[arg(long, default_value_t = 16)]
        window: usize,
        #[arg(long, default_value_t = 64)]
        body: usize,
    },
    /// One sender, a group of K online members.
    Fanout {
        #[arg(long, default_value_t = 1000)]
        members: usize,
        #[arg(long, default_value_t = 16)]
        window: usize,
        #[arg(long, default_value_t = 64)]
        body: usize,
    },
    /// C authenticated connections held open: server memory per connection.
    Idle {
        #[arg(long, default_value_t = 1000)]
        connections: usize,
    },
    /// SCRAM logins per second from C concurrent connections (im-server only).
    Login {
        #[arg(long, default_value_t = 64)]
        connections: usize,
    },
    /// M messages queued for an offline user, then the time to deliver them after login
    /// (im-server only).
    Drain {
        #[arg(long, default_value_t = 100_000)]
        messages: usize,
        #[arg(long, default_value_t = 64)]
        window: usize,
        #[arg(long, default_value_t = 64)]
        body: usize,
        /// Devices the user logs in on at once after the fill; each receives all M messages.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
        devices: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TargetArg {
    ImServer,
    Redis,
    RedisStreams,
}

/// The server under test, as the shapes see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Im,
    Redis(redis::Store),
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Im => "im-server",
            Target::Redis(redis::Store::PubSub) => "redis",
            Target::Redis(redis::Store::Streams) => "redis-streams",
        }
    }
}

/// What every shape needs to know about the run.
pub struct Common {
    pub addr: SocketAddr,
    pub target: Target,
    pub server_pid: Option<u32>,
    pub seconds: f64,
    pub warmup: f64,
    pub timeout: Duration,
    pub kdf_iterations: u32,
    pub concurrency: usize,
    pub receiver_ack: bool,
    pub sources: SourceAddrs,
    /// With `--tls`: every connection's TLS configuration.
    pub tls: Option<net::Tls>,
    /// With `--ws`: every connection speaks WebSocket.
    pub ws: bool,
    /// Prepended to every user, channel and stream name; random per run.
    pub prefix: String,
    /// The origin of the send times carried in message bodies.
    pub started: Instant,
}

impl Common {
    /// When a setup step that starts now must have finished.
    pub fn setup_deadline(&self) -> Instant {
        Instant::now() + self.timeout
    }
}

/// xorshift64*: nonces and name prefixes need to differ, not to be secret.
pub struct Rng(u64);

impl Rng {
    pub fn from_os() -> Self {
        Rng(getrandom::u64().unwrap_or(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// The TLS client configuration of `--tls`: the system's roots are not read (a benchmark talks
/// to a server it started), so `--tls-ca` names the certificate to trust.
fn tls_config(args: &Args) -> Result<Option<net::Tls>, String> {
    use rustls::pki_types::pem::PemObject;
    if !args.tls {
        return Ok(None);
    }
    let ca = args.tls_ca.as_ref().ok_or("--tls needs --tls-ca FILE (the server's certificate)")?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))? {
        roots.add(cert.map_err(|e| format!("{}: {e}", ca.display()))?).map_err(|e| e.to_string())?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(args.tls_name.clone()).map_err(|e| e.to_string())?;
    Ok(Some(net::Tls { config: std::sync::Arc::new(config), name }))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut rng = Rng::from_os();
    let target = match args.target {
        TargetArg::ImServer => Target::Im,
        TargetArg::Redis => Target::Redis(redis::Store::PubSub),
        TargetArg::RedisStreams => Target::Redis(redis::Store::Streams),
    };
    let common = Common {
        addr: args.addr,
        target,
        server_pid: args.server_pid,
        seconds: args.seconds.max(0.0),
        warmup: args.warmup.max(0.0),
        timeout: Duration::from_secs_f64(args.timeout.max(1.0)),
        kdf_iterations: args.kdf_iterations,
        concurrency: args.concurrency.max(1),
        receiver_ack: !args.no_receiver_ack,
        sources: if args.source_ips == 0 { SourceAddrs::Auto } else { SourceAddrs::Rotate(args.source_ips) },
        ws: args.ws,
        tls: match tls_config(&args) {
            Ok(tls) => tls,
            Err(e) => {
                eprintln!("im-bench: {e}");
                return ExitCode::from(2);
            }
        },
        prefix: format!("b{:08x}_", rng.next_u64() as u32),
        started: Instant::now(),
    };
    let (shape, result) = match &args.shape {
        Shape::Pairs { pairs, window, body } => (
            "pairs",
            shapes::pairs::run(&common, &shapes::pairs::Args { pairs: *pairs, window: *window, body: *body }, &mut rng),
        ),
        Shape::Fanout { members, window, body } => (
            "fanout",
            shapes::fanout::run(
                &common,
                &shapes::fanout::Args { members: *members, window: *window, body: *body },
                &mut rng,
            ),
        ),
        Shape::Idle { connections } => {
            ("idle", shapes::idle::run(&common, &shapes::idle::Args { connections: *connections }, &mut rng))
        }
        Shape::Login { connections } => {
            ("login", shapes::login::run(&common, &shapes::login::Args { connections: *connections }, &mut rng))
        }
        Shape::Drain { messages, window, body, devices } => (
            "drain",
            shapes::drain::run(
                &common,
                &shapes::drain::Args { messages: *messages, window: *window, body: *body, devices: *devices },
                &mut rng,
            ),
        ),
    };
    let (report, code) = match result {
        Ok(report) => {
            let code = if report.verified { ExitCode::SUCCESS } else { ExitCode::from(1) };
            (report, code)
        }
        Err(e) => {
            let mut report = stats::Report::new(shape, target.name());
            report.fail(format!("error: {e}"));
            (report, ExitCode::from(2))
        }
    };
    if args.json {
        eprint!("{}", report.human());
        println!("{}", report.json());
    } else {
        print!("{}", report.human());
    }
    code
}
