//! `fanout`: one sender, a group of K online members; every message reaches all of them.

use super::traffic::{self, Plan};
use crate::im::{self, Credentials, Dest, ImWire};
use crate::net::Net;
use crate::redis::{self, RedisWire};
use crate::stats::Report;
use crate::{Common, Rng, Target};

pub struct Args {
    pub members: usize,
    pub window: usize,
    pub body: usize,
}

pub fn run(common: &Common, args: &Args, rng: &mut Rng) -> Result<Report, String> {
    let mut net = Net::new(common.sources, common.tls.clone(), common.ws).map_err(|e| e.to_string())?;
    let k = args.members;
    let mut report = Report::new("fanout", common.target.name());
    let plan = |sender: usize, members: &[usize]| Plan {
        senders: vec![(sender, 0)],
        receivers: members.iter().map(|&t| (t, 0)).collect(),
        fanout: k as i64,
        window: args.window,
        body: args.body,
    };
    match common.target {
        Target::Im => {
            let creds = Credentials::new(common.kdf_iterations, rng);
            let owner = im::names(&common.prefix, "o", 1);
            let members = im::names(&common.prefix, "m", k);
            let all: Vec<String> = owner.iter().chain(&members).cloned().collect();
            im::register_users(&mut net, common, &creds, &all)?;
            // Members may be invited by a friend only (PROTOCOL.md §6): each asks the owner,
            // who asks back. Every member then hears of the joins after its own.
            let owner_session = im::login_all(&mut net, common, &creds, &owner, rng)?;
            let sessions = im::login_all(&mut net, common, &creds, &members, rng)?;
            let owner_token = owner_session.tokens[0];
            let pairs: Vec<(usize, &str, usize, &str)> = members
                .iter()
                .zip(&sessions.tokens)
                .map(|(m, &t)| (t, m.as_str(), owner_token, owner[0].as_str()))
                .collect();
            im::befriend(&mut net, common, &pairs)?;
            let group_id = im::create_group(&mut net, common, owner_token, &members)?;
            let wire = ImWire { dests: vec![Dest::Group(group_id)] };
            traffic::run(&mut net, common, wire, plan(owner_session.tokens[0], &sessions.tokens), &mut report)?;
        }
        Target::Redis(store) => {
            let wire = RedisWire::new(store, &common.prefix, 1);
            let subs: Vec<Option<String>> =
                std::iter::once(None).chain((0..k).map(|_| Some(wire.channels[0].clone()))).collect();
            let tokens = redis::open(&mut net, common, &subs)?;
            traffic::run(&mut net, common, wire, plan(tokens[0], &tokens[1..]), &mut report)?;
        }
    }
    report.int("members", k as u64);
    Ok(report)
}
