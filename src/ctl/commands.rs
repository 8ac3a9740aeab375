//! The operator's commands: each takes the words of one line and answers text. A first line
//! starting with `error:` is a refusal (the `ctl` verb then exits 1).

use crate::cmd::{Core, Refusal, operator};
use crate::conns::Conns;
use std::fmt::Write;
use std::time::Instant;

/// Users listed at most by `users`.
const USERS_LISTED: usize = 1000;

const HELP: &str = "\
commands:
  stats [--prometheus]   connections by transport, online users, messages stored per second,
                         commit times, bytes queued, database and WAL size, uptime
                         (--prometheus: the Prometheus text exposition format)
  users [PATTERN]        accounts whose name contains PATTERN (all without it)
  sessions NAME          the connections a user is logged in on: peer, transport, device, since
  disable NAME           refuse the user's logins and close their sessions
  enable NAME            allow the user to log in again
  kick GROUP_ID NAME     remove the user from a group (the members are told)
  delete NAME            delete the account, as the user could (friends and groups are told)
  help                   this list
";

/// Runs one command line; returns the answer and whether it changed the database (the answer
/// then waits for the commit).
pub fn execute(line: &str, core: &mut Core, conns: &Conns, started: Instant) -> (String, bool) {
    let words: Vec<&str> = line.split_whitespace().collect();
    let now = Instant::now();
    let answer = match words.as_slice() {
        [] | ["help"] => Ok((HELP.to_string(), false)),
        ["stats"] => Ok((stats(core, conns, started, now).human(), false)),
        ["stats", "--prometheus"] => Ok((stats(core, conns, started, now).prometheus(), false)),
        ["users"] => users(core, ""),
        ["users", pattern] => users(core, pattern),
        ["sessions", name] => sessions(core, conns, name),
        ["disable", name] => {
            change(core, now, name, "disabled", |ctx, user, _| operator::set_disabled(ctx, user, true))
        }
        ["enable", name] => change(core, now, name, "enabled", |ctx, user, _| operator::set_disabled(ctx, user, false)),
        ["delete", name] => change(core, now, name, "deleted", |ctx, user, _| operator::delete(ctx, user)),
        ["kick", group, name] => match group.parse::<i64>() {
            Ok(group) => change(core, now, name, "removed from the group", |ctx, user, name| {
                operator::kick(ctx, group, user, name)
            }),
            Err(_) => Err(format!("{group} is not a group id")),
        },
        [command, ..] => Err(format!("unknown command or arguments: {command} (try help)")),
    };
    match answer {
        Ok(answer) => answer,
        Err(message) => (format!("error: {message}\n"), false),
    }
}

fn describe(refusal: Refusal) -> String {
    match refusal {
        Refusal::Error(_, message) | Refusal::RetryLater(_, _, message) => message.to_string(),
        Refusal::Store(e) => format!("the database failed: {e}"),
    }
}

/// Runs a change to the account `name` as an operator command of the batch.
fn change(
    core: &mut Core,
    now: Instant,
    name: &str,
    done: &str,
    action: impl FnOnce(&mut crate::cmd::Ctx, crate::store::UserId, &str) -> crate::cmd::Outcome,
) -> Result<(String, bool), String> {
    let mut ctx = core.ctx(now);
    let (user, display) = operator::find(&ctx, name).map_err(describe)?;
    let wrote = operator::run(&mut ctx, |ctx| action(ctx, user, &display)).map_err(describe)?;
    log::info!("operator: {display} {done}");
    Ok((format!("{display} {done}\n"), wrote))
}

fn users(core: &Core, pattern: &str) -> Result<(String, bool), String> {
    let (users, total) = core.store.list_users(pattern, USERS_LISTED).map_err(|e| e.to_string())?;
    let mut out = String::from("name\tcreated\tdevices\tonline\tdisabled\n");
    for u in &users {
        let created = crate::ctl::commands::iso_date(u.created_at_ms);
        let online = if core.world.is_online(u.id) { "yes" } else { "no" };
        let disabled = if u.disabled { "yes" } else { "no" };
        let _ = writeln!(out, "{}\t{created}\t{}\t{online}\t{disabled}", u.name, u.devices);
    }
    if total > users.len() as u64 {
        let _ = writeln!(out, "… and {} more; narrow the pattern", total - users.len() as u64);
    }
    Ok((out, false))
}

fn sessions(core: &Core, conns: &Conns, name: &str) -> Result<(String, bool), String> {
    let (user, display) = match core.store.find_user_id(&name.to_ascii_lowercase()) {
        Ok(Some(found)) => found,
        Ok(None) => return Err("no such user".into()),
        Err(e) => return Err(e.to_string()),
    };
    let devices = core.store.devices_of(user).map_err(|e| e.to_string())?;
    let mut out = format!("{display}: ");
    let Some(online) = core.world.user(user) else {
        out.push_str("offline\n");
        return Ok((out, false));
    };
    let _ = writeln!(out, "{} session(s)", online.sessions.len());
    out.push_str("connection\tpeer\ttransport\tdevice\tsince\n");
    for (&token, device) in online.sessions.iter().zip(&online.devices) {
        let device = devices
            .iter()
            .find(|d| d.id == *device)
            .map_or("?".to_string(), |d| format!("{} ({})", d.name, d.client_id));
        // Every session the world lists is in the table and logged in; "?" is never expected.
        let (peer, transport, since) = match conns.describe(token) {
            Some(c) => (c.peer.to_string(), c.transport, c.logged_in_at_ms.map_or("?".into(), iso_time)),
            None => ("?".into(), "?", "?".into()),
        };
        let _ = writeln!(out, "{token}\t{peer}\t{transport}\t{device}\t{since}");
    }
    Ok((out, false))
}

/// What `stats` reports.
struct Stats {
    connections: usize,
    by_transport: [(&'static str, usize); crate::transport::KINDS.len()],
    online_users: usize,
    messages_per_second: f64,
    messages_stored: u64,
    items_per_second: f64,
    items_stored: u64,
    commit_p50_us: Option<u128>,
    commit_p99_us: Option<u128>,
    queued_bytes: usize,
    database_bytes: u64,
    wal_bytes: u64,
    uptime_seconds: u64,
}

fn stats(core: &Core, conns: &Conns, started: Instant, now: Instant) -> Stats {
    let size = |path: &std::path::Path| std::fs::metadata(path).map_or(0, |m| m.len());
    let mut wal = core.config.db.as_os_str().to_owned();
    wal.push("-wal");
    Stats {
        connections: conns.count(),
        by_transport: conns.count_by_transport(),
        online_users: core.world.users.len(),
        messages_per_second: core.store.stats.messages_per_second(now),
        messages_stored: core.store.stats.messages_stored,
        items_per_second: core.store.stats.items_per_second(now),
        items_stored: core.store.stats.items_stored,
        commit_p50_us: core.store.stats.commit_quantile(0.5).map(|d| d.as_micros()),
        commit_p99_us: core.store.stats.commit_quantile(0.99).map(|d| d.as_micros()),
        queued_bytes: conns.queued_bytes_total(),
        database_bytes: size(&core.config.db),
        wal_bytes: size(std::path::Path::new(&wal)),
        uptime_seconds: now.duration_since(started).as_secs(),
    }
}

impl Stats {
    fn human(&self) -> String {
        let us = |v: Option<u128>| v.map_or("—".to_string(), |v| format!("{v} µs"));
        let by_transport: Vec<String> = self.by_transport.iter().map(|(kind, n)| format!("{kind} {n}")).collect();
        format!(
            "connections          {} ({})\nonline users         {}\n\
             messages stored/s    {:.1} (last 10 s)\nmessages stored      {} (since start)\n\
             items stored/s       {:.1} (last 10 s; messages, receipts and events)\n\
             items stored         {} (since start)\ncommit p50           {}\ncommit p99           {}\n\
             bytes queued         {}\ndatabase             {} bytes\nWAL                  {} bytes\n\
             uptime               {} s\n",
            self.connections,
            by_transport.join(", "),
            self.online_users,
            self.messages_per_second,
            self.messages_stored,
            self.items_per_second,
            self.items_stored,
            us(self.commit_p50_us),
            us(self.commit_p99_us),
            self.queued_bytes,
            self.database_bytes,
            self.wal_bytes,
            self.uptime_seconds
        )
    }

    /// The Prometheus text exposition format (version 0.0.4).
    fn prometheus(&self) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, lines: &[(String, String)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in lines {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let one = |v: String| [(String::new(), v)];
        let by_transport: Vec<(String, String)> =
            self.by_transport.iter().map(|(kind, n)| (format!("{{transport=\"{kind}\"}}"), n.to_string())).collect();
        metric("im_server_connections", "gauge", "Connections open, by transport.", &by_transport);
        metric(
            "im_server_online_users",
            "gauge",
            "Users logged in on at least one connection.",
            &one(self.online_users.to_string()),
        );
        metric(
            "im_server_messages_per_second",
            "gauge",
            "Messages (direct and group) stored per second over the last 10 s.",
            &one(format!("{:.3}", self.messages_per_second)),
        );
        metric(
            "im_server_messages_stored_total",
            "counter",
            "Messages (direct and group) stored since the server started.",
            &one(self.messages_stored.to_string()),
        );
        metric(
            "im_server_items_stored_per_second",
            "gauge",
            "Items (messages, read receipts and events) stored per second over the last 10 s.",
            &one(format!("{:.3}", self.items_per_second)),
        );
        metric(
            "im_server_items_stored_total",
            "counter",
            "Items (messages, read receipts and events) stored since the server started.",
            &one(self.items_stored.to_string()),
        );
        let quantiles: Vec<(String, String)> = [("0.5", self.commit_p50_us), ("0.99", self.commit_p99_us)]
            .iter()
            .filter_map(|(q, v)| v.map(|v| (format!("{{quantile=\"{q}\"}}"), format!("{:.6}", v as f64 / 1e6))))
            .collect();
        metric("im_server_commit_seconds", "summary", "Time of the latest COMMITs.", &quantiles);
        metric(
            "im_server_queued_bytes",
            "gauge",
            "Bytes waiting in connections' write queues.",
            &one(self.queued_bytes.to_string()),
        );
        metric(
            "im_server_database_bytes",
            "gauge",
            "Size of the database file.",
            &one(self.database_bytes.to_string()),
        );
        metric("im_server_wal_bytes", "gauge", "Size of the write-ahead log.", &one(self.wal_bytes.to_string()));
        metric(
            "im_server_uptime_seconds",
            "counter",
            "Seconds since the server started.",
            &one(self.uptime_seconds.to_string()),
        );
        out
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` (UTC) of a time in milliseconds since the Unix epoch.
pub fn iso_time(ms: i64) -> String {
    let seconds = ms.div_euclid(1000).rem_euclid(86_400);
    format!("{}T{:02}:{:02}:{:02}Z", iso_date(ms), seconds / 3600, seconds / 60 % 60, seconds % 60)
}

/// `YYYY-MM-DD` (UTC) of a time in milliseconds since the Unix epoch.
pub fn iso_date(ms: i64) -> String {
    // Days to civil date, after Howard Hinnant's algorithm.
    let z = ms.div_euclid(86_400_000) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates_are_civil() {
        assert_eq!(super::iso_date(0), "1970-01-01");
        assert_eq!(super::iso_date(951_782_400_000), "2000-02-29");
        assert_eq!(super::iso_date(1_795_824_000_000), "2026-11-28");
        assert_eq!(super::iso_time(1_795_824_000_000 + 75_599_999), "2026-11-28T20:59:59Z");
        assert_eq!(super::iso_time(-1), "1969-12-31T23:59:59Z");
    }
}
