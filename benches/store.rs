//! Store micro-benchmark: how fast the message table takes inserts (the hot path) and serves
//! the two per-conversation reads (offline backlog, history), through the real `Store`.
//!
//! Run with `cargo bench --bench store` (add `-- --rows N` to change the size). It prints one
//! line per measurement; scripts/bench.sh records them in BENCHMARKS.md. Numbers are for
//! comparing layouts on one machine, not targets.

use im_server::store::{Channel, HistoryDirection, MessageKind, NewMessage, NewUser, Store};
use std::time::Instant;

const PAIRS: i64 = 1000;

fn main() {
    let rows: usize =
        std::env::args().skip_while(|a| a != "--rows").nth(1).and_then(|v| v.parse().ok()).unwrap_or(300_000);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let body = [b'x'; 64];
    println!("store micro-benchmark: {rows} rows per batch size, {PAIRS} fixed pairs, 64-byte bodies");
    for batch in [256usize, 4096, 16384] {
        let path = dir.path().join(format!("insert-{batch}.db"));
        let mut store = Store::open(&path).expect("open the store");
        create_users(&mut store);
        let start = Instant::now();
        let mut n = 0usize;
        while n < rows {
            for _ in 0..batch.min(rows - n) {
                let pair = (n as i64) % PAIRS;
                let message = NewMessage {
                    channel: Channel::direct(2 * pair + 1, 2 * pair + 2),
                    sender: 2 * pair + 1,
                    client_msg_id: n as u64,
                    kind: MessageKind::Text,
                    sent_at: 0,
                    body: &body,
                    device: 0,
                };
                store.insert_message(&message).expect("insert");
                n += 1;
            }
            assert!(store.finish_iteration(), "commit");
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "insert  batch {batch:>5}: {:>9.0} msgs/s  {:.2} µs/msg",
            rows as f64 / secs,
            secs * 1e6 / rows as f64
        );
    }
    let mut store = Store::open(&dir.path().join("reads.db")).expect("open the store");
    create_users(&mut store);
    read_paths(&mut store, &body);
}

/// Registers the 2 × PAIRS users the messages name (ids 1..=2000), as the reads join them.
fn create_users(store: &mut Store) {
    for i in 1..=2 * PAIRS {
        let name = format!("user{i}");
        let user = NewUser {
            name: &name,
            name_key: &name,
            salt: &[0; 16],
            iterations: 4096,
            stored_key: &[0; 32],
            server_key: &[0; 32],
            now_ms: 0,
        };
        assert_eq!(store.create_user(&user).expect("create user"), Some(i));
    }
    assert!(store.finish_iteration(), "commit");
}

/// Stores 100,000 messages of one conversation interleaved with as many of 999 others, then
/// reads that conversation's backlog oldest first and its history newest first, in pages.
fn read_paths(store: &mut Store, body: &[u8]) {
    const ONE: usize = 100_000;
    let channel = Channel::direct(1, 2);
    for n in 0..2 * ONE {
        let pair = if n % 2 == 0 { 0 } else { 1 + (n as i64 / 2) % (PAIRS - 1) };
        let message = NewMessage {
            channel: Channel::direct(2 * pair + 1, 2 * pair + 2),
            sender: 2 * pair + 1,
            client_msg_id: n as u64,
            kind: MessageKind::Text,
            sent_at: 0,
            body,
            device: 0,
        };
        store.insert_message(&message).expect("insert");
        if n % 4096 == 4095 {
            assert!(store.finish_iteration(), "commit");
        }
    }
    assert!(store.finish_iteration(), "commit");

    let start = Instant::now();
    let mut after = 0;
    let mut read = 0;
    loop {
        let ids = store.ids_after(channel, after, i64::MAX, 512).expect("backlog ids");
        let Some(&last) = ids.last() else { break };
        let rows = store.rows_with_ids(&ids).expect("backlog rows");
        after = last;
        read += rows.len();
    }
    assert_eq!(read, ONE);
    let secs = start.elapsed().as_secs_f64();
    println!("backlog rows by 512 ids: {:>9.0} rows/s ({read} rows of one conversation)", read as f64 / secs);

    let start = Instant::now();
    let mut before = 0;
    let mut read = 0;
    loop {
        let page = store.history(channel, HistoryDirection::Older, before, 200, usize::MAX).expect("history page");
        let Some(last) = page.rows.last() else { break };
        before = last.id;
        read += page.rows.len();
    }
    assert_eq!(read, ONE);
    let secs = start.elapsed().as_secs_f64();
    println!("history pages of 200: {:>9.0} rows/s ({read} rows of one conversation)", read as f64 / secs);
}
