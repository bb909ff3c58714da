//! One kept-alive HTTPS connection from a sidecar to the injector, for its long polls: a TLS handshake
//! when there is no open connection, none per request.
//!
//! Owns: the injector's address (parsed once), connecting (TCP + TLS within [`CONNECT_TIMEOUT`]), sending a
//! GET with the projected token and reading an answer of at most `max_answer` bytes within a limit, and
//! dropping the connection after any failure so the next request starts afresh.

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

/// Connect and TLS handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the injector is, and how it is trusted.
#[derive(Clone)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub authority: String,
    tls: tokio_rustls::TlsConnector,
}

impl Target {
    /// `url` is `https://HOST[:PORT][/...]`; `key` names the config key in errors.
    pub fn new(url: &str, key: &str, tls: Arc<rustls::ClientConfig>) -> anyhow::Result<Target> {
        let rest = url.strip_prefix("https://").with_context(|| format!("{key} must be an https:// URL"))?;
        let authority = rest.split('/').next().unwrap_or_default().to_string();
        // HTTPS's port when the URL names none (`host`, `[::1]`); the config's own host:port parser does the rest.
        let with_port = if authority.ends_with(']') || !authority.contains(':') {
            format!("{authority}:443")
        } else {
            authority.clone()
        };
        let at = crate::config::values::parse_host_port(&with_port).map_err(|e| anyhow!("{key}: {e}"))?;
        Ok(Target { host: at.host, port: at.port, authority, tls: tokio_rustls::TlsConnector::from(tls) })
    }
}

/// A kept-alive connection to the injector (opened on first use and after a failure).
pub struct Channel {
    target: Target,
    sender: Option<SendRequest<Full<Bytes>>>,
    /// TLS handshakes made so far (one per connection).
    pub handshakes: u64,
}

impl Channel {
    pub fn new(target: Target) -> Channel {
        Channel { target, sender: None, handshakes: 0 }
    }

    pub fn authority(&self) -> &str {
        &self.target.authority
    }

    async fn connect(&mut self) -> anyhow::Result<SendRequest<Full<Bytes>>> {
        let t = &self.target;
        let connect = async {
            let tcp = TcpStream::connect((t.host.as_str(), t.port)).await?;
            let name = crate::tls::server_name(&t.host).map_err(|e| anyhow!(e))?;
            anyhow::Ok(t.tls.connect(name, tcp).await?)
        };
        let tls = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| anyhow!("connecting to {} timed out", t.authority))?
            .with_context(|| format!("cannot reach the injector at {}", t.authority))?;
        self.handshakes += 1;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        Ok(sender)
    }

    /// GET `path` with `Authorization: Bearer token`; the status and body, within `limit` (connecting aside).
    /// Any failure drops the connection.
    pub async fn get(
        &mut self,
        path: &str,
        token: &str,
        limit: Duration,
        max_answer: usize,
    ) -> anyhow::Result<(hyper::StatusCode, Bytes)> {
        self.send(hyper::Method::GET, path, token, Bytes::new(), limit, max_answer).await
    }

    /// POST `body` (JSON) to `path`, as [`Channel::get`].
    pub async fn post(
        &mut self,
        path: &str,
        token: &str,
        body: Bytes,
        limit: Duration,
        max_answer: usize,
    ) -> anyhow::Result<(hyper::StatusCode, Bytes)> {
        self.send(hyper::Method::POST, path, token, body, limit, max_answer).await
    }

    /// One request; any failure drops the connection, so the next request starts afresh.
    async fn send(
        &mut self,
        method: hyper::Method,
        path: &str,
        token: &str,
        body: Bytes,
        limit: Duration,
        max_answer: usize,
    ) -> anyhow::Result<(hyper::StatusCode, Bytes)> {
        let kept = match self.sender.take() {
            Some(mut s) => s.ready().await.is_ok().then_some(s),
            None => None,
        };
        let mut sender = match kept {
            Some(s) => s,
            None => self.connect().await?,
        };
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.target.authority)
            .header("authorization", format!("Bearer {}", token.trim()));
        if !body.is_empty() {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(Full::new(body))?;
        let exchange = async {
            let resp = sender.send_request(req).await?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), max_answer).collect().await.map_err(|e| anyhow!(e))?.to_bytes();
            anyhow::Ok((status, body))
        };
        let (status, body) = tokio::time::timeout(limit, exchange)
            .await
            .map_err(|_| anyhow!("the injector did not answer in time"))??;
        self.sender = Some(sender);
        if status.is_server_error() && body.is_empty() {
            bail!("the injector answered {status}");
        }
        Ok((status, body))
    }
}

/// `d` plus up to a quarter of it, at random (retries of a fleet of sidecars do not come back in step).
pub fn jittered(d: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
    d + d.mul_f64((random % 1000) as f64 / 4000.0)
}
