//! `pairs`: N pairs of friends, each sender keeping a window of unacknowledged messages to its
//! partner.

use super::traffic::{self, Plan};
use crate::im::{self, Credentials, Dest, ImWire};
use crate::net::Net;
use crate::redis::{self, RedisWire};
use crate::stats::Report;
use crate::{Common, Rng, Target};

pub struct Args {
    pub pairs: usize,
    pub window: usize,
    pub body: usize,
}

pub fn run(common: &Common, args: &Args, rng: &mut Rng) -> Result<Report, String> {
    let mut net = Net::new(common.sources, common.tls.clone(), common.ws).map_err(|e| e.to_string())?;
    let n = args.pairs;
    let mut report = Report::new("pairs", common.target.name());
    match common.target {
        Target::Im => {
            let creds = Credentials::new(common.kdf_iterations, rng);
            let senders = im::names(&common.prefix, "s", n);
            let receivers = im::names(&common.prefix, "r", n);
            let all: Vec<String> = senders.iter().chain(&receivers).cloned().collect();
            im::register_users(&mut net, common, &creds, &all)?;
            let sessions = im::login_all(&mut net, common, &creds, &all, rng)?;
            let t = &sessions.tokens;
            let pairs: Vec<(usize, &str, usize, &str)> =
                (0..n).map(|i| (t[i], senders[i].as_str(), t[n + i], receivers[i].as_str())).collect();
            im::befriend(&mut net, common, &pairs)?;
            let wire = ImWire { dests: receivers.into_iter().map(Dest::User).collect() };
            traffic::run(&mut net, common, wire, plan(&t[..n], &t[n..], args), &mut report)?;
        }
        Target::Redis(store) => {
            let wire = RedisWire::new(store, &common.prefix, n);
            let subs: Vec<Option<String>> =
                (0..n).map(|_| None).chain(wire.channels.iter().map(|c| Some(c.clone()))).collect();
            let t = redis::open(&mut net, common, &subs)?;
            traffic::run(&mut net, common, wire, plan(&t[..n], &t[n..], args), &mut report)?;
        }
    }
    Ok(report)
}

/// Sender i writes to destination i, which receiver i hears.
fn plan(senders: &[usize], receivers: &[usize], args: &Args) -> Plan {
    Plan {
        senders: senders.iter().enumerate().map(|(i, &t)| (t, i)).collect(),
        receivers: receivers.iter().enumerate().map(|(i, &t)| (t, i)).collect(),
        fanout: 1,
        window: args.window,
        body: args.body,
    }
}
