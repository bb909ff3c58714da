//! Who a connection belongs to: the client key built from startup parameters and the pod's identity.
//!
//! Owns: the identity fields, the display key (`api/alice`, `-` for an empty value), and the pod identity
//! read from the Downward API environment. Does not own: rules or policy (see `policy`).

use crate::protocol::startup::StartupParams;
use crate::text::clean_name;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::SocketAddr;

/// A field that can name a client in `client_key` and be matched by rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    ApplicationName,
    User,
    Database,
    Pod,
    Namespace,
    Workload,
    PeerIp,
    /// A Unix-socket peer's process id (SO_PEERCRED): one client per worker process of a pod. Empty over TCP,
    /// and when the kernel cannot name the peer in pgwarden's pid namespace (a pod without
    /// `shareProcessNamespace: true`: the peer's pid reads 0).
    PeerPid,
}

impl Field {
    pub fn name(self) -> &'static str {
        match self {
            Field::ApplicationName => "application_name",
            Field::User => "user",
            Field::Database => "database",
            Field::Pod => "pod",
            Field::Namespace => "namespace",
            Field::Workload => "workload",
            Field::PeerIp => "peer_ip",
            Field::PeerPid => "peer_pid",
        }
    }
}

/// The pod this pgwarden runs in (all `None` outside Kubernetes).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodIdentity {
    pub pod: Option<String>,
    pub namespace: Option<String>,
    pub workload: Option<String>,
    pub node: Option<String>,
    pub service_account: Option<String>,
}

impl PodIdentity {
    /// Reads the Downward API variables through `get` (pass `std::env::var`-like lookups; tests pass a map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        let get = |k: &str| get(k).filter(|v| !v.is_empty());
        PodIdentity {
            pod: get("PGWARDEN_POD_NAME"),
            namespace: get("PGWARDEN_POD_NAMESPACE"),
            workload: get("PGWARDEN_WORKLOAD"),
            node: get("PGWARDEN_NODE_NAME"),
            service_account: get("PGWARDEN_SERVICE_ACCOUNT"),
        }
    }

    /// Gateway mode, a peer that no known pod carries: `pod` and `workload` are `peer:<address>`, so such
    /// clients stay apart by address and say how they were identified; `namespace` is unknown.
    pub fn unknown_peer(peer: &Peer) -> Self {
        let named = format!("peer:{}", peer.ip_label());
        PodIdentity { pod: Some(named.clone()), workload: Some(named), ..Default::default() }
    }

    pub fn in_kubernetes(&self) -> bool {
        self.pod.is_some()
    }
}

/// Where a connection comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Tcp(SocketAddr),
    /// A Unix-domain socket: the peer process's credentials (SO_PEERCRED), when the kernel gives them.
    Unix {
        uid: Option<u32>,
        pid: Option<i32>,
        /// The peer process's pidfd inode (SO_PEERPIDFD on a pidfs kernel, Linux 6.9+): unique per process
        /// even when its pid is not visible here (another PID namespace, where `pid` reads 0).
        process_ino: Option<u64>,
    },
}

impl Peer {
    /// The `peer_ip` value: the address, or `unix`.
    pub fn ip_label(&self) -> String {
        match self {
            Peer::Tcp(addr) => addr.ip().to_string(),
            Peer::Unix { .. } => "unix".to_string(),
        }
    }

    /// Which process this is, when the kernel can tell (a Unix-socket peer): the pid when it is visible
    /// here, else the pidfd inode (with the top bit set, so the two never collide). The leak detector keeps
    /// one history per process: each worker process's pool is judged on its own.
    pub fn process(&self) -> Option<u64> {
        match *self {
            Peer::Unix { pid: Some(pid), .. } if pid > 0 => Some(pid as u64),
            Peer::Unix { process_ino: Some(ino), .. } => Some(ino | 1 << 63),
            _ => None,
        }
    }

    /// The `peer_pid` value: a Unix-socket peer's pid when the kernel gave one (0 is "not visible here").
    pub fn pid_label(&self) -> String {
        match self {
            Peer::Unix { pid: Some(pid), .. } if *pid > 0 => pid.to_string(),
            _ => String::new(),
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Tcp(addr) => write!(f, "{addr}"),
            Peer::Unix { .. } => f.write_str("unix"),
        }
    }
}

/// A client: the values of the `client_key` fields, in key order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientId {
    values: Vec<(Field, String)>,
    display: String,
}

impl ClientId {
    /// The display key joins the values with `/` and shows an empty value as `-`; a value's own `%` and
    /// `/`, and a value that is exactly `-`, are percent-encoded, so two different clients never share a
    /// display key (which names them in the client table, the views and the metrics).
    pub fn new(values: Vec<(Field, String)>) -> Self {
        let mut display = String::new();
        for (i, (_, v)) in values.iter().enumerate() {
            if i > 0 {
                display.push('/');
            }
            match v.as_str() {
                "" => display.push('-'),
                "-" => display.push_str("%2D"),
                v => {
                    for ch in v.chars() {
                        match ch {
                            '%' => display.push_str("%25"),
                            '/' => display.push_str("%2F"),
                            ch => display.push(ch),
                        }
                    }
                }
            }
        }
        ClientId { values, display }
    }

    /// Builds the client of a connection from its startup parameters, the pod and the peer address. The names
    /// a client sent are kept as PostgreSQL keeps them: 63 bytes at most, control characters as `?`.
    pub fn from_startup(key: &[Field], params: &StartupParams, pod: &PodIdentity, peer: &Peer) -> Self {
        let value = |f: Field| -> String {
            match f {
                // A traceparent at the end (OpenTelemetry's instrumentations) is the request, not the client:
                // the key keeps the name before it (empty if there is none), never one key per trace.
                Field::ApplicationName => {
                    clean_name(crate::text::traceparent::split(params.get("application_name").unwrap_or_default()).0)
                }
                Field::User => clean_name(params.get("user").unwrap_or_default()),
                Field::Database => clean_name(params.get("database").unwrap_or_default()),
                Field::Pod => pod.pod.clone().unwrap_or_default(),
                Field::Namespace => pod.namespace.clone().unwrap_or_default(),
                Field::Workload => pod.workload.clone().unwrap_or_default(),
                Field::PeerIp => peer.ip_label(),
                Field::PeerPid => peer.pid_label(),
            }
        };
        ClientId::new(key.iter().map(|&f| (f, value(f))).collect())
    }

    /// The display key used in JSON, metrics and logs.
    pub fn display(&self) -> &str {
        &self.display
    }

    /// The value of `field`, or `None` when the field is not part of the key.
    pub fn get(&self, field: Field) -> Option<&str> {
        self.values.iter().find(|(f, _)| *f == field).map(|(_, v)| v.as_str())
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn params(p: &[(&str, &str)]) -> StartupParams {
        StartupParams { major: 3, minor: 0, params: p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() }
    }

    #[test]
    fn display_key_uses_dash_for_missing_values() {
        let peer = Peer::Tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, 5000)));
        let key = [Field::ApplicationName, Field::User];
        let pod = PodIdentity::default();
        let c = ClientId::from_startup(&key, &params(&[("user", "alice"), ("application_name", "api")]), &pod, &peer);
        assert_eq!(c.display(), "api/alice");
        let c = ClientId::from_startup(&key, &params(&[("user", "alice")]), &pod, &peer);
        assert_eq!(c.display(), "-/alice");
        assert_eq!(c.get(Field::ApplicationName), Some(""));
        assert_eq!(c.get(Field::Database), None);
        let c = ClientId::from_startup(&key, &params(&[("user", "alice"), ("application_name", "")]), &pod, &peer);
        assert_eq!(c.display(), "-/alice");
    }

    #[test]
    fn different_clients_never_share_a_display_key() {
        let id = |a: &str, b: &str| ClientId::new(vec![(Field::ApplicationName, a.into()), (Field::User, b.into())]);
        assert_ne!(id("a/b", "c").display(), id("a", "b/c").display());
        assert_eq!(id("a/b", "c").display(), "a%2Fb/c");
        assert_ne!(id("-", "x").display(), id("", "x").display());
        assert_eq!(id("-", "x").display(), "%2D/x");
        assert_eq!(id("100%", "x").display(), "100%25/x");
        assert_ne!(id("%2F", "x").display(), id("/", "x").display());
        assert_eq!(id("api-v2", "alice").display(), "api-v2/alice", "the common case is unchanged");
    }

    proptest::proptest! {
        #[test]
        fn display_keys_are_injective(a in "[-a/%2F]{0,4}", b in "[-a/%2F]{0,4}", c in "[-a/%2F]{0,4}", d in "[-a/%2F]{0,4}") {
            let id = |x: &str, y: &str| ClientId::new(vec![(Field::ApplicationName, x.into()), (Field::User, y.into())]);
            proptest::prop_assert_eq!(id(&a, &b).display() == id(&c, &d).display(), a == c && b == d);
        }
    }

    #[test]
    fn kubernetes_fields_and_peer() {
        let env: std::collections::HashMap<&str, &str> =
            [("PGWARDEN_POD_NAME", "api-7d9f-x"), ("PGWARDEN_POD_NAMESPACE", "shop"), ("PGWARDEN_WORKLOAD", "")].into();
        let pod = PodIdentity::from_lookup(|k| env.get(k).map(|v| v.to_string()));
        assert!(pod.in_kubernetes());
        assert_eq!(pod.workload, None);
        let key = [Field::Namespace, Field::Pod, Field::Workload, Field::PeerIp];
        let c = ClientId::from_startup(
            &key,
            &params(&[]),
            &pod,
            &Peer::Tcp(SocketAddr::from((Ipv4Addr::new(10, 0, 0, 7), 1))),
        );
        assert_eq!(c.display(), "shop/api-7d9f-x/-/10.0.0.7");
        let c = ClientId::from_startup(
            &key,
            &params(&[]),
            &pod,
            &Peer::Unix { uid: Some(1000), pid: Some(7), process_ino: None },
        );
        assert_eq!(c.get(Field::PeerIp), Some("unix"));
        let by_pid = [Field::ApplicationName, Field::PeerPid];
        let app = params(&[("application_name", "web")]);
        let unix =
            |pid| ClientId::from_startup(&by_pid, &app, &pod, &Peer::Unix { uid: Some(1000), pid, process_ino: None });
        assert_eq!(unix(Some(4242)).display(), "web/4242", "a worker process of its own");
        assert_eq!(unix(Some(0)).display(), "web/-", "pid 0: the peer is in another pid namespace");
        assert_eq!(unix(None).display(), "web/-");
        let tcp = ClientId::from_startup(&by_pid, &app, &pod, &Peer::Tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, 9))));
        assert_eq!(tcp.display(), "web/-", "TCP has no peer pid");
        let peer = |pid, process_ino| Peer::Unix { uid: Some(1000), pid, process_ino };
        assert_eq!(peer(Some(4242), Some(9)).process(), Some(4242), "a visible pid names the process");
        assert_eq!(peer(Some(0), Some(9)).process(), Some(9 | 1 << 63), "else its pidfd inode");
        assert_ne!(peer(Some(9), None).process(), peer(Some(0), Some(9)).process(), "the two never collide");
        assert_eq!(peer(Some(0), None).process(), None);
        assert_eq!(Peer::Tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, 9))).process(), None);
        let c = ClientId::from_startup(
            &key,
            &params(&[]),
            &pod,
            &Peer::Tcp(SocketAddr::from((Ipv4Addr::new(10, 0, 0, 7), 1))),
        );
        assert_eq!(c.display(), "shop/api-7d9f-x/-/10.0.0.7");
    }
}
