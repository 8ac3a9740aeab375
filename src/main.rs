//! The im-server binary: parse arguments, start logging, open the store, run the loop (or
//! run the `backup` command).

use clap::Parser;
use im_server::config::{Command, Config};
use im_server::db_lock::DbLock;
use im_server::server::Server;
use im_server::store::Store;
use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let config = Config::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    if let Some(Command::Ctl { args }) = &config.command {
        return im_server::ctl::run_client(&config.db, args);
    }
    if let Some(Command::Backup { to }) = &config.command {
        return match im_server::store::backup(&config.db, to) {
            Ok(summary) => {
                println!("{summary}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                log::error!("backup of {} failed: {e}", config.db.display());
                ExitCode::FAILURE
            }
        };
    }
    // Held until the process ends, after the store is closed.
    let _db_lock = match DbLock::take(&config.db) {
        Ok(lock) => lock,
        Err(e) => {
            log::error!("{}: {e}", config.db.display());
            return ExitCode::FAILURE;
        }
    };
    let store = match Store::open(&config.db) {
        Ok(store) => store,
        Err(e) => {
            log::error!("{}: {e}", config.db.display());
            return ExitCode::FAILURE;
        }
    };
    let server = match Server::bind(config, store) {
        Ok(server) => server,
        Err(e) => {
            log::error!("cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match server.local_addr() {
        Ok(addr) => {
            println!("listening on {addr}");
            log::info!("listening on {addr}");
            if let Some(tls) = server.tls_addr() {
                println!("listening for TLS on {tls}");
                log::info!("listening for TLS on {tls}");
            }
            if let Some(http) = server.http_addr() {
                println!("listening for HTTP on {http}");
                log::info!("listening for HTTP on {http}");
            }
            let _ = std::io::stdout().flush();
        }
        Err(e) => {
            log::error!("cannot read the bound address: {e}");
            return ExitCode::FAILURE;
        }
    }
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("server failed: {e}");
            ExitCode::FAILURE
        }
    }
}
