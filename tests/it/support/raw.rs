//! A minimal protocol client over a raw socket, for what drivers hide: garbage input, SSLRequest before a
//! CancelRequest, pipelined batches, notifications.

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct Raw {
    pub stream: TcpStream,
    pub pid: i32,
    pub key: Vec<u8>,
}

pub fn startup_packet(params: &[(&str, &str)]) -> Vec<u8> {
    pgwarden::protocol::startup::encode_startup(params)
}

pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

pub fn query(sql: &str) -> Vec<u8> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    message(b'Q', &body)
}

/// Reads one message: (tag, body). `None` on EOF.
pub async fn read_message(stream: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut header = [0u8; 5];
    stream.read_exact(&mut header).await.ok()?;
    let len = i32::from_be_bytes(header[1..5].try_into().unwrap()) as usize;
    let mut body = vec![0u8; len - 4];
    stream.read_exact(&mut body).await.ok()?;
    Some((header[0], body))
}

/// The SQLSTATE (`C` field) of an ErrorResponse body.
pub fn error_code(body: &[u8]) -> String {
    let mut rest = body;
    while let Some((&f, tail)) = rest.split_first() {
        if f == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0).unwrap();
        if f == b'C' {
            return String::from_utf8_lossy(&tail[..end]).into_owned();
        }
        rest = &tail[end + 1..];
    }
    String::new()
}

/// Sends `bytes` and expects a FATAL ErrorResponse then EOF; returns its SQLSTATE.
pub async fn expect_error_after(addr: std::net::SocketAddr, bytes: &[u8], half_close: bool) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    if half_close {
        s.shutdown().await.unwrap();
    }
    let (tag, body) = tokio::time::timeout(Duration::from_secs(20), read_message(&mut s))
        .await
        .expect("an answer in time")
        .expect("an ErrorResponse, not a bare close");
    assert_eq!(tag, b'E', "expected ErrorResponse, got {:?}", tag as char);
    let mut rest = Vec::new();
    let eof = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(matches!(eof, Ok(Ok(0))), "socket closed after the error");
    error_code(&body)
}

impl Raw {
    /// Connects (trust auth) and reads up to the first ReadyForQuery.
    pub async fn connect(addr: std::net::SocketAddr, user: &str, app: &str) -> Raw {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let params = [("user", user), ("database", "postgres"), ("application_name", app)];
        stream.write_all(&startup_packet(&params)).await.unwrap();
        let (mut pid, mut key) = (0, Vec::new());
        loop {
            let (tag, body) = read_message(&mut stream).await.expect("startup answer");
            match tag {
                b'K' => {
                    pid = i32::from_be_bytes(body[..4].try_into().unwrap());
                    key = body[4..].to_vec();
                }
                b'E' => panic!("startup failed: {}", error_code(&body)),
                b'Z' => break,
                _ => {}
            }
        }
        Raw { stream, pid, key }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Reads messages until ReadyForQuery; returns all tags seen and the ReadyForQuery status.
    pub async fn until_ready(&mut self) -> (Vec<(u8, Vec<u8>)>, u8) {
        let mut seen = Vec::new();
        loop {
            let (tag, body) = read_message(&mut self.stream).await.expect("message before EOF");
            if tag == b'Z' {
                return (seen, body[0]);
            }
            seen.push((tag, body));
        }
    }
}
