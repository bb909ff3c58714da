//! A raw HTTP/1.1 GET for the admin port of a proxy the test runs as a binary (no TestProxy to ask).

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The whole response (status line, headers, body) of `GET path` from `authority` (`host:port`).
pub async fn get(authority: &str, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(authority).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    resp
}

/// The status code of `GET path`.
pub async fn status(authority: &str, path: &str) -> u16 {
    get(authority, path).await.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The JSON body of `GET path`.
pub async fn json(authority: &str, path: &str) -> serde_json::Value {
    serde_json::from_str(get(authority, path).await.split_once("\r\n\r\n").unwrap().1).unwrap()
}
