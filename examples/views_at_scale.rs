//! Benchmark (run by `bench/run.py`, not a test): the admin views with 10,000 connections over 2,000 clients,
//! through the real admin HTTP server on the production runtime (one thread).
//!
//! Reports, as one JSON line: the time per `GET /metrics`, `/clients`, `/connections` (median and max over
//! the requests), and the lag of a 1 ms ticker on the same runtime thread, idle and while the views are
//! scraped back to back. Every session relays on that thread, so the ticker's lag is the latency a scrape
//! adds to queries in flight.
//!
//! `cargo run --release --example views_at_scale [-- CONNECTIONS CLIENTS]`

use pgwarden::config::Config;
use pgwarden::identity::{ClientId, Field, Peer, PodIdentity};
use pgwarden::state::{Settings, State};
use pgwarden::vocab::ConnState;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

fn get(addr: SocketAddr, path: &str) -> (Duration, usize) {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut body = Vec::new();
    s.read_to_end(&mut body).unwrap();
    assert!(body.starts_with(b"HTTP/1.1 200"), "{path}: {}", String::from_utf8_lossy(&body[..body.len().min(200)]));
    (started.elapsed(), body.len())
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let (connections, clients) = (args.first().copied().unwrap_or(10_000), args.get(1).copied().unwrap_or(2_000));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let config = Config { max_tracked_clients: 200, ..Config::default() };
        let state = State::new(Settings::new(config).unwrap(), PodIdentity::default());
        let ids: Vec<Arc<ClientId>> = (0..clients)
            .map(|i| {
                Arc::new(ClientId::new(vec![
                    (Field::ApplicationName, format!("worker-{i}")),
                    (Field::User, "app".to_string()),
                ]))
            })
            .collect();
        let now = Instant::now();
        let peer = Peer::Tcp("127.0.0.1:40000".parse().unwrap());
        let mut guards = Vec::with_capacity(connections);
        for n in 0..connections {
            let id = &ids[n % clients];
            let _ = state.clients.entry(id);
            let guard = state.registry.register(id.clone(), peer, now);
            let conn = guard.conn();
            let s = [ConnState::Idle, ConnState::Active, ConnState::IdleInTransaction][n % 3];
            conn.set_state(s, now);
            conn.set_last_statement(format!("select * from orders where id = {n} and status = 'open'").as_bytes().into());
            guards.push(guard);
        }
        state.housekeeping(Instant::now());

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(pgwarden::views::admin::serve(state.clone(), listener, stop.clone()));

        // The ticker: how late each 1 ms tick runs on this thread.
        let lags = Arc::new(Mutex::new(Vec::new()));
        let ticking = Arc::new(AtomicBool::new(true));
        let ticker = {
            let (lags, ticking) = (lags.clone(), ticking.clone());
            tokio::spawn(async move {
                while ticking.load(Relaxed) {
                    let due = Instant::now() + Duration::from_millis(1);
                    tokio::time::sleep_until(due.into()).await;
                    lags.lock().unwrap().push(Instant::now().saturating_duration_since(due));
                }
            })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut idle: Vec<Duration> = std::mem::take(&mut *lags.lock().unwrap());

        // Scrape back to back from another thread for a few seconds.
        let scraper = std::thread::spawn(move || {
            let mut times: Vec<(String, Duration, usize)> = Vec::new();
            let until = Instant::now() + Duration::from_secs(4);
            while Instant::now() < until {
                for path in ["/metrics", "/clients", "/connections"] {
                    let (took, bytes) = get(addr, path);
                    times.push((path.to_string(), took, bytes));
                }
            }
            times
        });
        while !scraper.is_finished() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let times = scraper.join().unwrap();
        let mut scraped: Vec<Duration> = std::mem::take(&mut *lags.lock().unwrap());
        ticking.store(false, Relaxed);
        let _ = ticker.await;
        stop.cancel();

        idle.sort();
        scraped.sort();
        let mut out = format!("{{\"connections\": {connections}, \"clients\": {clients}");
        for path in ["/metrics", "/clients", "/connections"] {
            let mut t: Vec<Duration> = times.iter().filter(|x| x.0 == path).map(|x| x.1).collect();
            let bytes = times.iter().find(|x| x.0 == path).map_or(0, |x| x.2);
            t.sort();
            let key = path.trim_start_matches('/');
            out.push_str(&format!(
                ", \"{key}_ms_median\": {:.2}, \"{key}_ms_max\": {:.2}, \"{key}_bytes\": {bytes}, \"{key}_requests\": {}",
                percentile(&t, 0.5),
                percentile(&t, 1.0),
                t.len()
            ));
        }
        out.push_str(&format!(
            ", \"lag_idle_ms_p50\": {:.3}, \"lag_idle_ms_p99\": {:.3}, \"lag_scraped_ms_p50\": {:.3}, \
             \"lag_scraped_ms_p99\": {:.3}, \"lag_scraped_ms_max\": {:.3}}}",
            percentile(&idle, 0.5),
            percentile(&idle, 0.99),
            percentile(&scraped, 0.5),
            percentile(&scraped, 0.99),
            percentile(&scraped, 1.0)
        ));
        println!("{out}");
        drop(guards);
    });
}
