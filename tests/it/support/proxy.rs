//! pgwarden in-process on a free port, and client helpers that go through it.

use super::pg::pg;
use pgwarden::config::{Config, HostPort, TlsMode};
use pgwarden::identity::PodIdentity;
use pgwarden::registry::Conn;
use pgwarden::server::Server;
use pgwarden::state::{Settings, State};
use pgwarden::vocab::ConnState;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub struct TestProxy {
    pub addr: SocketAddr,
    /// The admin API (`http://{admin}`).
    pub admin: SocketAddr,
    pub state: Arc<State>,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
}

/// A config pointing at the test PostgreSQL, TLS off (TLS tests set it themselves).
pub fn test_config() -> Config {
    Config {
        upstream: HostPort { host: "127.0.0.1".into(), port: pg().port },
        upstream_tls: TlsMode::Disable,
        ..Config::default()
    }
}

pub async fn start_proxy(config: Config) -> TestProxy {
    start_proxy_as(config, PodIdentity::default()).await
}

/// A proxy that believes it runs in `pod` (as a sidecar reads it from the Downward API).
pub async fn start_proxy_as(config: Config, pod: PodIdentity) -> TestProxy {
    let settings = Settings::new(config).expect("valid test config");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = State::new(settings, pod);
    let shutdown = CancellationToken::new();
    let admin_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = admin_listener.local_addr().unwrap();
    let task = tokio::spawn({
        let mut server = Server::new(state.clone());
        if let Some(dir) = &state.settings().config.listen_unix {
            // The socket is named after the TCP port, as libpq expects.
            let socket =
                pgwarden::server::unix::UnixSocket::bind(dir, addr.port(), state.settings().config.listen_unix_mode)
                    .expect("bind the Unix socket");
            server.listen_unix(socket);
        }
        let shutdown = shutdown.clone();
        async move { server.run(listener, admin_listener, shutdown).await.expect("no background task failed") }
    });
    TestProxy { addr, admin, state, shutdown, task }
}

impl TestProxy {
    pub fn pg_config(&self, user: &str, app: &str) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host("127.0.0.1").port(self.addr.port()).user(user).dbname("postgres").application_name(app);
        c.connect_timeout(Duration::from_secs(10));
        c
    }

    /// Connects through the proxy as `postgres` with `application_name = app`.
    pub async fn connect(&self, app: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        connect(self.pg_config("postgres", app)).await
    }

    /// The live connections of `app` in the registry.
    pub fn conns_of(&self, app: &str) -> Vec<Arc<Conn>> {
        self.state
            .registry
            .snapshot()
            .into_iter()
            .filter(|c| c.client.get(pgwarden::identity::Field::ApplicationName) == Some(app))
            .collect()
    }

    /// Waits until `app` has exactly one connection in `state`; returns it.
    pub async fn wait_state(&self, app: &str, state: ConnState) -> Arc<Conn> {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let conns = self.conns_of(app);
            if let [c] = conns.as_slice() {
                if c.state() == state {
                    return c.clone();
                }
            }
            assert!(
                Instant::now() < until,
                "{app}: never reached {state:?}; now {:?}",
                conns.iter().map(|c| c.state()).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    /// GETs an admin endpoint as JSON.
    pub async fn admin_json(&self, path: &str) -> serde_json::Value {
        pgwarden::views::report::get_json(&self.admin_url(), path).await.unwrap()
    }

    /// Waits until `app` has `n` connections past startup.
    pub async fn wait_state_count(&self, app: &str, n: usize) {
        let ok = eventually(Duration::from_secs(10), || {
            let conns = self.conns_of(app);
            conns.len() == n && conns.iter().all(|c| !matches!(c.state(), ConnState::Startup | ConnState::Active))
        })
        .await;
        assert!(ok, "{app}: never had {n} settled connections");
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(35), self.task).await;
    }
}

/// Connects with tokio-postgres and drives the connection in a task.
pub async fn connect(config: tokio_postgres::Config) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// The SQLSTATE of a tokio-postgres error, if the server (or pgwarden) sent one.
pub fn sqlstate(e: &tokio_postgres::Error) -> Option<String> {
    e.code().map(|c| c.code().to_string())
}

/// Polls `cond` every 10 ms until true or `within` passes.
pub async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
