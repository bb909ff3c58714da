//! A minimal PostgreSQL client for the demo's simulated services: trust authentication and simple queries
//! over the protocol pieces of `crate::protocol`. Not a driver: just enough to behave like one on the wire.

use crate::protocol::error_response;
use crate::protocol::scanner::encode;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Clone)]
pub struct DbError {
    pub code: String,
    pub message: String,
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.message)
    }
}

fn io_error(e: std::io::Error) -> DbError {
    DbError { code: "08006".into(), message: e.to_string() }
}

pub struct Client {
    stream: TcpStream,
    pub backend_pid: i32,
}

impl Client {
    pub async fn connect(addr: SocketAddr, user: &str, app: &str) -> Result<Client, DbError> {
        let mut stream = TcpStream::connect(addr).await.map_err(io_error)?;
        let packet = crate::protocol::startup::encode_startup(&[
            ("user", user),
            ("database", "postgres"),
            ("application_name", app),
        ]);
        stream.write_all(&packet).await.map_err(io_error)?;
        let mut client = Client { stream, backend_pid: 0 };
        loop {
            let (tag, body) = client.read().await?;
            match tag {
                b'K' if body.len() >= 4 => {
                    client.backend_pid = i32::from_be_bytes([body[0], body[1], body[2], body[3]])
                }
                b'E' => return Err(to_error(&body)),
                b'Z' => return Ok(client),
                _ => {}
            }
        }
    }

    /// Runs `sql` (simple protocol); returns the first column of each row.
    pub async fn query(&mut self, sql: &str) -> Result<Vec<Option<String>>, DbError> {
        let mut text = sql.as_bytes().to_vec();
        text.push(0);
        self.stream.write_all(&encode(b'Q', &text)).await.map_err(io_error)?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let (tag, body) = self.read().await?;
            match tag {
                b'D' if body.len() >= 6 => {
                    let len = i32::from_be_bytes([body[2], body[3], body[4], body[5]]);
                    rows.push((len >= 0).then(|| String::from_utf8_lossy(&body[6..6 + len as usize]).into_owned()));
                }
                b'E' => error = Some(to_error(&body)),
                b'Z' => return error.map_or(Ok(rows), Err),
                _ => {}
            }
        }
    }

    /// Ends the session properly (Terminate).
    pub async fn close(mut self) {
        let _ = self.stream.write_all(&crate::protocol::scanner::TERMINATE).await;
    }

    async fn read(&mut self) -> Result<(u8, Vec<u8>), DbError> {
        let mut header = [0u8; 5];
        self.stream.read_exact(&mut header).await.map_err(io_error)?;
        let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
        if !(4..=64 << 20).contains(&len) {
            return Err(DbError { code: "08P01".into(), message: format!("bad message length {len}") });
        }
        let mut body = vec![0u8; len as usize - 4];
        self.stream.read_exact(&mut body).await.map_err(io_error)?;
        if header[0] == b'E' && error_response::parse(&body).is_fatal() {
            return Err(to_error(&body));
        }
        Ok((header[0], body))
    }
}

fn to_error(body: &[u8]) -> DbError {
    let f = error_response::parse(body);
    let s = |v: Option<&[u8]>| String::from_utf8_lossy(v.unwrap_or_default()).into_owned();
    DbError { code: s(f.code), message: s(f.message) }
}
