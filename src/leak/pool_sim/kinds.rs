//! The pools pgwarden meets, as the simulator models them.

use super::{Order, PoolKind, Retire};
use std::time::Duration;

/// The pools of SPEC's list, with their real defaults scaled to simulated seconds.
pub const POOLS: [PoolKind; 8] = [
    // No pool: a connection per request, closed when it is done.
    PoolKind {
        name: "connect per request",
        order: Order::Lifo,
        max: 1000,
        min: 0,
        max_idle: 0,
        idle_timeout: None,
        lifetime: None,
        retire: Retire::CloseThenOpen,
    },
    PoolKind {
        name: "HikariCP",
        order: Order::Lifo,
        max: 10,
        min: 10,
        max_idle: 10,
        idle_timeout: None,
        lifetime: Some(Duration::from_secs(30)),
        retire: Retire::CloseThenOpen,
    },
    PoolKind {
        name: "node-postgres",
        order: Order::Lifo,
        max: 10,
        min: 0,
        max_idle: 10,
        idle_timeout: Some(Duration::from_secs(10)),
        lifetime: None,
        retire: Retire::CloseThenOpen,
    },
    PoolKind {
        name: "Go database/sql",
        order: Order::Lifo,
        max: 10,
        min: 0,
        max_idle: 2,
        idle_timeout: None,
        lifetime: Some(Duration::from_secs(60)),
        retire: Retire::CloseThenOpen,
    },
    PoolKind {
        name: "pgx",
        order: Order::Lifo,
        max: 10,
        min: 4,
        max_idle: 10,
        idle_timeout: Some(Duration::from_secs(8)),
        lifetime: Some(Duration::from_secs(40)),
        retire: Retire::OpenThenClose,
    },
    PoolKind {
        name: "psycopg_pool",
        order: Order::Fifo,
        max: 10,
        min: 4,
        max_idle: 10,
        idle_timeout: Some(Duration::from_secs(8)),
        lifetime: Some(Duration::from_secs(40)),
        retire: Retire::OpenThenClose,
    },
    PoolKind {
        name: "SQLAlchemy QueuePool",
        order: Order::Fifo,
        max: 15,
        min: 0,
        max_idle: 5,
        idle_timeout: None,
        lifetime: None,
        retire: Retire::CloseThenOpen,
    },
    PoolKind {
        name: "psycopg_pool 1..6 (issue 17's workers)",
        order: Order::Fifo,
        max: 6,
        min: 1,
        max_idle: 6,
        idle_timeout: Some(Duration::from_secs(8)),
        lifetime: None,
        retire: Retire::OpenThenClose,
    },
];
