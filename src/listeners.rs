//! The listening sockets: plain frames (`--listen`), TLS (`--tls-listen`, frames or the web
//! client) and plain HTTP (`--http-listen`), and how their connections join the table.
//!
//! A TLS listener keeps the certificate new connections get; `SIGHUP` replaces it
//! ([`Listeners::reload_certificates`]) while connections keep the one they started with.

use crate::acceptor::Acceptor;
use crate::cmd::Core;
use crate::config::Config;
use crate::conns::Conns;
use crate::protocol::ErrorCode;
use crate::session::{CloseReason, Session};
use crate::transport::{Codec, Stream, Transport, tls};
use mio::{Interest, Registry, Token};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Listeners' tokens, outside the slab's range.
pub const PLAIN: Token = Token(usize::MAX - 1);
pub const TLS: Token = Token(usize::MAX - 3);
pub const HTTP: Token = Token(usize::MAX - 4);

/// One listening socket and how its connections speak.
struct Listener {
    token: Token,
    acceptor: Acceptor,
    /// `None` for plain text; for TLS, the configuration new connections get.
    tls: Option<Arc<rustls::ServerConfig>>,
    /// What its clients speak first: frames, HTTP, or either (TLS).
    codec: fn() -> Codec,
}

pub struct Listeners {
    /// Empty once stopped.
    list: Vec<Listener>,
}

impl Listeners {
    /// Binds every listener the configuration asks for and registers it with the poll.
    pub fn bind(config: &Config, registry: &Registry) -> io::Result<Listeners> {
        let wait = Duration::from_secs(config.out_of_fds_wait);
        let frames = || Codec::Frames;
        let mut list =
            vec![Listener { token: PLAIN, acceptor: Acceptor::bind(config.listen, wait)?, tls: None, codec: frames }];
        if !config.listen.ip().is_loopback() {
            log::warn!("{} accepts plain text from the network: use --tls-listen for clients elsewhere", config.listen);
        }
        if let (Some(address), Some(cert), Some(key)) = (config.tls_listen, &config.tls_cert, &config.tls_key) {
            let tls = tls::load_config(cert, key).map_err(io::Error::other)?;
            let acceptor = Acceptor::bind_silent(address, wait)?;
            list.push(Listener { token: TLS, acceptor, tls: Some(tls), codec: || Codec::Sniff });
        }
        if let Some(address) = config.http_listen {
            if !address.ip().is_loopback() {
                log::warn!("{address} serves the web client in plain HTTP: use --tls-listen for browsers elsewhere");
            }
            let acceptor = Acceptor::bind_silent(address, wait)?;
            list.push(Listener { token: HTTP, acceptor, tls: None, codec: || Codec::Http });
        }
        for listener in &mut list {
            registry.register(listener.acceptor.listener_mut(), listener.token, Interest::READABLE)?;
        }
        Ok(Listeners { list })
    }

    pub fn owns(&self, token: Token) -> bool {
        matches!(token, PLAIN | TLS | HTTP)
    }

    /// The address a listener actually bound (useful with port 0).
    pub fn address_of(&self, token: Token) -> io::Result<SocketAddr> {
        let listener = self.list.iter().find(|l| l.token == token);
        listener.map_or(Err(io::ErrorKind::NotConnected.into()), |l| l.acceptor.local_addr())
    }

    /// How soon to accept again without an event: only while clients wait for a descriptor.
    pub fn retry_in(&self) -> Option<Duration> {
        self.list.iter().filter_map(|l| l.acceptor.retry_in()).min()
    }

    /// Accepts for every listener whose clients wait for a descriptor: they get no event of
    /// their own.
    pub fn retry_waiting(&mut self, now: Instant, registry: &Registry, conns: &mut Conns, core: &mut Core) {
        for listener in self.list.iter_mut().filter(|l| l.acceptor.retry_in().is_some()) {
            listener.accept_all(now, registry, conns, core);
        }
    }

    /// Takes every waiting connection of the listener `token`.
    pub fn accept_all(&mut self, token: Token, now: Instant, registry: &Registry, conns: &mut Conns, core: &mut Core) {
        if let Some(listener) = self.list.iter_mut().find(|l| l.token == token) {
            listener.accept_all(now, registry, conns, core);
        }
    }

    /// SIGHUP: reads the TLS certificate and key again, for connections accepted from now on.
    /// A file that does not load leaves the certificate in use as it was.
    pub fn reload_certificates(&mut self, config: &Config) {
        let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
            log::info!("received SIGHUP; no TLS certificate to reload");
            return;
        };
        let Some(listener) = self.list.iter_mut().find(|l| l.token == TLS) else { return };
        match tls::load_config(cert, key) {
            Ok(tls) => {
                listener.tls = Some(tls);
                log::info!("reloaded the TLS certificate {} for new connections", cert.display());
            }
            Err(e) => log::error!("cannot reload the TLS certificate, keeping the one in use: {e}"),
        }
    }

    /// Closes every listening socket: nothing new is accepted.
    pub fn stop(&mut self, registry: &Registry) {
        for mut listener in self.list.drain(..) {
            let _ = registry.deregister(listener.acceptor.listener_mut());
        }
    }
}

impl Listener {
    /// Takes every waiting connection. One over `--max-connections` is still taken, to be
    /// told `SERVER_FULL` through its own transport (over TLS too) and closed once that is
    /// written.
    fn accept_all(&mut self, now: Instant, registry: &Registry, conns: &mut Conns, core: &mut Core) {
        while let Some((mut socket, addr)) = self.acceptor.next(now) {
            if let Err(e) = registry.register(&mut socket, Token(conns.next_token()), Interest::READABLE) {
                log::error!("cannot register a connection: {e}");
                continue;
            }
            let _ = socket.set_nodelay(true);
            let stream = match &self.tls {
                None => Stream::Plain(socket),
                Some(config) => match tls::TlsStream::new(socket, Arc::clone(config)) {
                    Ok(tls) => Stream::Tls(Box::new(tls)),
                    Err(e) => {
                        log::error!("cannot start TLS for {addr}: {e}");
                        continue;
                    }
                },
            };
            let full = conns.count() >= core.config.max_connections;
            let token = conns.insert(Session::new(addr.ip(), now), Transport::new(stream, (self.codec)()));
            if !full {
                log::debug!("connection {token} from {addr}");
                continue;
            }
            log::warn!("refusing {addr}: {} connections open", conns.count() - 1);
            let Some(conn) = conns.get_mut(token) else { continue };
            if conn.transport.is_handshaking() {
                // Told once its handshake is done (see `Server::read_conn`): bytes before it
                // would not be read as a frame.
                conn.session.refuse_when_ready();
            } else {
                core.outbox.error(token, 0, ErrorCode::ServerFull, "the server is full; try again later");
                conns.close(token, CloseReason::ServerFull);
            }
        }
    }
}
