//! The demo's three simulated services, each a loop of real protocol traffic through the proxy.

use super::client::Client;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What a service saw.
#[derive(Default, Debug)]
pub struct Tally {
    pub attempts: AtomicU64,
    pub ok: AtomicU64,
    pub refused: AtomicU64,
    pub failed: AtomicU64,
}

impl Tally {
    fn record<T>(&self, r: &Result<T, super::client::DbError>) {
        self.attempts.fetch_add(1, Relaxed);
        match r {
            Ok(_) => self.ok.fetch_add(1, Relaxed),
            Err(e) if e.code == "53300" => self.refused.fetch_add(1, Relaxed),
            Err(_) => self.failed.fetch_add(1, Relaxed),
        };
    }
}

/// A healthy pool of 4 connections serving a steady stream of short queries.
pub async fn checkout_api(addr: SocketAddr, stop: CancellationToken, tally: Arc<Tally>) {
    let workers = (0..4).map(|i| {
        let (stop, tally) = (stop.clone(), tally.clone());
        tokio::spawn(async move {
            let mut conn: Option<Client> = None;
            while !stop.is_cancelled() {
                if conn.is_none() {
                    let c = Client::connect(addr, "app", "checkout-api").await;
                    if c.is_err() {
                        tally.record(&c);
                    }
                    conn = c.ok();
                }
                if let Some(c) = conn.as_mut() {
                    let r = c
                        .query(&format!("SELECT count(*), sum(total) FROM orders WHERE customer_id = {}", 17 + i))
                        .await;
                    tally.record(&r);
                    if r.is_err() {
                        conn = None;
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    _ = stop.cancelled() => {}
                }
            }
            if let Some(c) = conn {
                c.close().await;
            }
        })
    });
    futures_join(workers.collect()).await;
}

/// Borrows a connection every second to fetch an image and never gives it back (the bug). Its pool would
/// grow to 20; pgwarden names it after a few, and its cap of 12 stops it there: every further borrow is
/// refused.
pub async fn image_processor(addr: SocketAddr, stop: CancellationToken, tally: Arc<Tally>) {
    let mut leaked = Vec::new();
    let mut image = 1000;
    while !stop.is_cancelled() {
        if leaked.len() < 20 {
            let c = Client::connect(addr, "app", "image-processor").await;
            tally.record(&c);
            if let Ok(mut c) = c {
                image += 1;
                // Tagged as sqlcommenter writes it (Django, Rails, Spring, Node): the evidence names the code.
                let tags = "/*action='resize',controller='uploads',route='%2Fupload%2F%3Cid%3E'*/";
                let _ = c
                    .query(&format!("SELECT id, data FROM images WHERE id = {image} AND format = 'webp' {tags}"))
                    .await;
                leaked.push(c); // never returned to the pool
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.cancelled() => {}
        }
    }
    for c in leaked {
        c.close().await;
    }
}

/// Starts a transaction, updates a row, and forgets to commit (its process waits on something else).
pub async fn report_cron(addr: SocketAddr, stop: CancellationToken, tally: Arc<Tally>) {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let c = Client::connect(addr, "app", "report-cron").await;
    tally.record(&c);
    let Ok(mut c) = c else { return };
    for sql in ["BEGIN", "UPDATE reports SET status = 'running', started_at = now() WHERE id = 42"] {
        let r = c.query(sql).await;
        tally.record(&r);
    }
    stop.cancelled().await;
    c.close().await;
}

async fn futures_join(handles: Vec<tokio::task::JoinHandle<()>>) {
    for h in handles {
        let _ = h.await;
    }
}
