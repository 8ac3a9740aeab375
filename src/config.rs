//! Every limit and default of the server, parsed from the command line.

use crate::login_throttle::LoginLimits;
use clap::Parser;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// im-server: a small, durable instant-messaging server.
///
/// Prints `listening on ADDR` as the first line of standard output once it accepts
/// connections. `RUST_LOG` sets the log level (info by default; debug shows each connection).
#[derive(Parser, Debug, Clone)]
#[command(version, about, long_about = None)]
pub struct Config {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:7878")]
    pub listen: SocketAddr,

    /// Address to listen on for TLS (TLS 1.3 and 1.2); needs --tls-cert and --tls-key.
    #[arg(long, requires_all = ["tls_cert", "tls_key"])]
    pub tls_listen: Option<SocketAddr>,

    /// PEM file with the TLS certificate chain, leaf first. Read again on SIGHUP.
    #[arg(long, requires = "tls_listen")]
    pub tls_cert: Option<PathBuf>,

    /// PEM file with the TLS private key (PKCS#8, PKCS#1 or SEC1). Read again on SIGHUP.
    #[arg(long, requires = "tls_listen")]
    pub tls_key: Option<PathBuf>,

    /// Address to serve the browser client on, in plain HTTP: `GET /` is the page, `GET /ws`
    /// its WebSocket. The TLS listener serves them too (https, wss).
    #[arg(long)]
    pub http_listen: Option<SocketAddr>,

    /// Another origin (scheme://host[:port]) whose pages may open the WebSocket, besides the
    /// page's own; repeat for several.
    #[arg(long)]
    pub web_origin: Vec<String>,

    /// SQLite database file; created with the schema if missing.
    #[arg(long, default_value = "./im-server.db", global = true)]
    pub db: PathBuf,

    /// Without a command: serve. `backup`: copy the database.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Connections served at once; the next one gets SERVER_FULL and is closed.
    #[arg(long, default_value_t = 19_000)]
    pub max_connections: usize,

    /// Seconds a client may wait in the listen backlog while the server has no file descriptor
    /// left (accepting is retried every 100 ms); then it gets SERVER_FULL and is closed.
    #[arg(long, default_value_t = 1)]
    pub out_of_fds_wait: u64,

    /// Largest frame accepted after login, in bytes (the length field's value).
    #[arg(long, default_value_t = 65_536)]
    pub max_frame: u32,

    /// Largest frame accepted before login, in bytes.
    #[arg(long, default_value_t = 4_096)]
    pub max_frame_before_login: u32,

    /// Seconds without a frame from the client before its connection is closed.
    #[arg(long, default_value_t = 120)]
    pub idle_timeout: u64,

    /// Seconds a frame may take to arrive once its first byte is in; a slower one gets
    /// FRAME_TIMEOUT and the connection is closed. Never longer than --idle-timeout.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub frame_timeout: u64,

    /// Lowest PBKDF2 iteration count REGISTER accepts.
    #[arg(long, default_value_t = 100_000)]
    pub min_kdf_iterations: u32,

    /// Largest message body, in bytes of UTF-8 (at most 65535).
    #[arg(long, default_value_t = 4_096, value_parser = clap::value_parser!(u32).range(1..=65_535))]
    pub max_body: u32,

    /// Recent messages whose client_msg_id is remembered (each sender's newest 256, this many
    /// in all), so that a retried SEND is answered with the original SENT, not stored twice.
    #[arg(long, default_value_t = 100_000)]
    pub dedup_window: usize,

    /// Seconds a connection has to log in (from connecting or from LOGOUT) before it is closed.
    #[arg(long, default_value_t = 10)]
    pub login_timeout: u64,

    /// Connections one user may have logged in at once; the next login gets TOO_MANY_SESSIONS.
    /// 0 means unlimited.
    #[arg(long, default_value_t = 8)]
    pub max_sessions: usize,

    /// Soft limit of a connection's write queue, in bytes: a connection above it stops being
    /// read, and is closed if it stays above it for --write-queue-soft-seconds.
    #[arg(long, default_value_t = 256 * 1024)]
    pub write_queue_soft_limit: usize,

    /// Seconds a write queue may stay above its soft limit.
    #[arg(long, default_value_t = 10)]
    pub write_queue_soft_seconds: u64,

    /// Hard limit of a connection's write queue, in bytes: above it the connection is closed.
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    pub write_queue_hard_limit: usize,

    /// Messages per second one user may send (SEND and GROUP_SEND, all devices together);
    /// 0 means unlimited.
    #[arg(long, default_value_t = 50)]
    pub send_rate: u32,

    /// Messages one user may send in a burst above --send-rate.
    #[arg(long, default_value_t = 100)]
    pub send_burst: u32,

    /// REGISTER attempts allowed per source address per --register-window, whatever their
    /// answer (USERNAME_TAKEN tells whether a name exists); 0 means unlimited.
    #[arg(long, default_value_t = 5)]
    pub register_limit: u32,

    /// The window of --register-limit, in seconds.
    #[arg(long, default_value_t = 600)]
    pub register_window: u64,

    /// Apply --register-limit to loopback addresses (127.0.0.0/8, ::1) too, which it exempts
    /// by default: for a local proxy that makes every client look like loopback.
    #[arg(long)]
    pub limit_loopback: bool,

    /// Accepted and ignored, for scripts written when loopback was limited by default.
    #[arg(long, hide = true)]
    pub trust_loopback: bool,

    /// Groups one user may be in, the lobby included; GROUP_CREATE or GROUP_INVITE past it
    /// gets TOO_MANY_GROUPS. At most 65,535, the most GROUP_LIST can count.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=65_535))]
    pub max_groups_per_user: u32,

    /// Members one group may have (not the lobby, which holds every user); GROUP_INVITE past
    /// it gets GROUP_FULL.
    #[arg(long, default_value_t = 1_024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_group_members: u32,

    /// Friend requests one user may have pending, sent and received each; FRIEND_REQUEST past
    /// either gets TOO_MANY_REQUESTS. At most 65,535, the most FRIEND_LIST can count.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=65_535))]
    pub max_pending_requests: u32,

    /// Friends one user may have; FRIEND_REQUEST or FRIEND_ACCEPT past it gets
    /// TOO_MANY_FRIENDS. At most 65,535, the most FRIEND_LIST can count.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..=65_535))]
    pub max_friends: u32,

    /// Failed logins as one account from one source (an IPv4 address or an IPv6 /64) before
    /// each further one makes that source wait, 1 s doubling up to 60 s (RETRY_LATER
    /// LOGIN_THROTTLED). 0 means unlimited.
    #[arg(long, default_value_t = 10)]
    pub login_failures_per_account: u32,

    /// Failed logins from one source, all accounts together, before each further one makes it
    /// wait the same way. 0 means unlimited.
    #[arg(long, default_value_t = 30)]
    pub login_failures_per_address: u32,

    /// Seconds without a failed login after which a source's failures are forgotten.
    #[arg(long, default_value_t = 300)]
    pub login_failure_window: u64,

    /// Undelivered direct messages held for one recipient; past it the sender gets
    /// RECIPIENT_QUEUE_FULL and nothing is stored. 0 means unlimited.
    #[arg(long, default_value_t = 10_000)]
    pub max_offline: u32,

    /// Devices one user may have; a login with a new device past it gets TOO_MANY_DEVICES.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    pub max_devices: u32,

    /// Entries of a device's conversations pushed at login at most; a device further behind
    /// gets SYNC_GAP and the newest ones, and reads the gap with forward HISTORY.
    #[arg(long, default_value_t = 10_000)]
    pub device_backlog_cap: usize,

    /// Days after which a device that has not logged in or acknowledged is forgotten.
    #[arg(long, default_value_t = 90)]
    pub device_expiry_days: u32,

    /// Days a deleted account's name stays reserved before it can be registered again.
    #[arg(long, default_value_t = 30)]
    pub name_cooling_days: u32,
}

/// What the binary does besides serving.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum Command {
    /// Make a consistent copy of the database at --db while the server runs (it may also be
    /// stopped). To restore, stop the server and start it with --db pointing at the copy.
    Backup {
        /// The copy to write; must not exist yet.
        #[arg(long)]
        to: PathBuf,
    },
    /// Talk to the running server of --db over its operator socket (<db>.ctl): `ctl help`
    /// lists the commands (stats, users, sessions, disable, enable, kick, delete).
    Ctl {
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

impl Config {
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout)
    }

    /// `--frame-timeout`, at most `--idle-timeout`: a frame slower than the idle timeout would
    /// have been cut off by it anyway.
    pub fn frame_timeout(&self) -> Duration {
        Duration::from_secs(self.frame_timeout.min(self.idle_timeout))
    }

    pub fn login_limits(&self) -> LoginLimits {
        LoginLimits {
            per_account: self.login_failures_per_account,
            per_source: self.login_failures_per_address,
            window: Duration::from_secs(self.login_failure_window),
        }
    }

    pub fn login_timeout(&self) -> Duration {
        Duration::from_secs(self.login_timeout)
    }

    /// Devices last seen before this wall-clock time (milliseconds) are forgotten.
    pub fn device_expiry_before(&self, now_ms: i64) -> i64 {
        now_ms - self.device_expiry_days as i64 * 86_400_000
    }

    /// Whether `--register-limit` applies to REGISTER from `peer`.
    pub fn limits_registrations_from(&self, peer: IpAddr) -> bool {
        self.register_limit > 0 && (self.limit_loopback || !peer.is_loopback())
    }

    /// A configuration with every default, listening on `listen` with the database at `db`.
    pub fn with_defaults(listen: SocketAddr, db: PathBuf) -> Self {
        let mut config = Config::parse_from(["im-server"]);
        config.listen = listen;
        config.db = db;
        config
    }
}

#[cfg(test)]
mod tests {
    use super::Config;
    use clap::Parser;

    #[test]
    fn loopback_registers_without_limit_unless_asked() {
        let parse = |args: &[&str]| Config::try_parse_from([&["im-server"], args].concat()).unwrap();
        let (loopback, loopback6, remote) =
            ("127.0.0.2".parse().unwrap(), "::1".parse().unwrap(), "192.0.2.1".parse().unwrap());
        let default = parse(&[]);
        assert!(!default.limits_registrations_from(loopback));
        assert!(!default.limits_registrations_from(loopback6));
        assert!(default.limits_registrations_from(remote));
        let strict = parse(&["--limit-loopback"]);
        assert!(strict.limits_registrations_from(loopback) && strict.limits_registrations_from(remote));
        assert!(!parse(&["--register-limit", "0"]).limits_registrations_from(remote));
        // The old flag is still accepted, and changes nothing.
        assert!(!parse(&["--trust-loopback"]).limits_registrations_from(loopback));
    }

    #[test]
    fn caps_that_feed_a_u16_count_cannot_exceed_it() {
        for flag in ["--max-groups-per-user", "--max-pending-requests", "--max-friends"] {
            assert!(Config::try_parse_from(["im-server", flag, "65535"]).is_ok(), "{flag}");
            assert!(Config::try_parse_from(["im-server", flag, "65536"]).is_err(), "{flag}");
            assert!(Config::try_parse_from(["im-server", flag, "0"]).is_err(), "{flag}");
        }
    }
}
