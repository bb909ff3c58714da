//! Hot reload: in-place write, rename over, ConfigMap symlink swap, SIGHUP-style request; invalid files.

use crate::support::proxy::sqlstate;
use crate::support::{start_proxy, test_config, TestProxy};
use pgwarden::config::overrides::Overrides;
use pgwarden::config::source::ConfigSource;
use pgwarden::config::{Config, Limit};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn yaml(cap: u32) -> String {
    let mut c: Config = test_config();
    c.defaults.max_connections = Limit(Some(cap));
    c.to_yaml()
}

fn source(path: &Path) -> ConfigSource {
    ConfigSource { config: Some(path.to_path_buf()), config_yaml: None, overrides: Overrides::default() }
}

/// Polls until a new connection of `app` is refused with 53300; returns how long that took.
async fn until_refused(p: &TestProxy, app: &str) -> Duration {
    let started = Instant::now();
    loop {
        match p.connect(app).await {
            Err(e) => {
                assert_eq!(sqlstate(&e).as_deref(), Some("53300"), "{e:?}");
                return started.elapsed();
            }
            Ok(c) => drop(c),
        }
        assert!(started.elapsed() < Duration::from_secs(5), "the lower cap never applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts a proxy whose config is `path` (cap 3), opens 2 connections, runs `lower` (which must make the
/// file say cap 1), and checks: refused within 2 s, the 2 open connections keep working.
async fn lowering_the_cap(dir: &Path, path: PathBuf, app: &str, lower: impl FnOnce()) {
    let config = Config::read_file(&path).unwrap();
    let p = start_proxy(config).await;
    let (_tx, rx) = tokio::sync::mpsc::channel(1);
    let reloader = pgwarden::server::reload::spawn(p.state.clone(), source(&path), rx, Duration::from_millis(100));
    let a = p.connect(app).await.unwrap();
    let b = p.connect(app).await.unwrap();
    lower();
    let took = until_refused(&p, app).await;
    assert!(took < Duration::from_secs(2), "took {took:?}");
    for c in [&a, &b] {
        assert_eq!(c.query_one("select 1", &[]).await.unwrap().get::<_, i32>(0), 1, "open connections kept");
    }
    // An invalid file changes nothing: the cap stays 1.
    std::fs::write(dir.join("garbage.yaml"), "defaults:\n  max_connections: 9\n  bogus_key: 1\n").unwrap();
    std::fs::rename(dir.join("garbage.yaml"), &path).ok();
    if path.is_symlink() {
        // A ConfigMap-style path: swap in the garbage through a new version directory.
        swap_configmap(dir, "defaults:\n  max_connections: 9\n  bogus_key: 1\n");
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let err = p.connect(app).await.err().expect("still capped at 1");
    assert_eq!(sqlstate(&err).as_deref(), Some("53300"));
    assert_eq!(p.state.settings().config.defaults.max_connections, Limit(Some(1)));
    reloader.abort();
    p.stop().await;
}

#[tokio::test]
async fn in_place_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgwarden.yaml");
    std::fs::write(&path, yaml(3)).unwrap();
    lowering_the_cap(dir.path(), path.clone(), "reload-inplace", || std::fs::write(&path, yaml(1)).unwrap()).await;
}

#[tokio::test]
async fn rename_over() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgwarden.yaml");
    std::fs::write(&path, yaml(3)).unwrap();
    let (d, p2) = (dir.path().to_path_buf(), path.clone());
    lowering_the_cap(dir.path(), path.clone(), "reload-rename", move || {
        std::fs::write(d.join(".new.yaml"), yaml(1)).unwrap();
        std::fs::rename(d.join(".new.yaml"), &p2).unwrap();
    })
    .await;
}

/// Kubernetes' atomic writer: `file -> ..data/file`, `..data -> ..<version>`, swapped by renaming a new link.
fn swap_configmap(dir: &Path, content: &str) {
    let version =
        format!("..v{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
    std::fs::create_dir(dir.join(&version)).unwrap();
    std::fs::write(dir.join(&version).join("pgwarden.yaml"), content).unwrap();
    std::os::unix::fs::symlink(&version, dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
}

#[tokio::test]
async fn configmap_symlink_swap() {
    let dir = tempfile::tempdir().unwrap();
    swap_configmap(dir.path(), &yaml(3));
    let path = dir.path().join("pgwarden.yaml");
    std::os::unix::fs::symlink("..data/pgwarden.yaml", &path).unwrap();
    let d = dir.path().to_path_buf();
    lowering_the_cap(dir.path(), path.clone(), "reload-symlink", move || swap_configmap(&d, &yaml(1))).await;
}

#[tokio::test]
async fn reload_request_and_timeouts_of_live_connections() {
    // SIGHUP sends on the request channel; live connections pick up new timeouts.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgwarden.yaml");
    std::fs::write(&path, yaml(5)).unwrap();
    let p = start_proxy(Config::read_file(&path).unwrap()).await;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    // A long poll interval: only the request triggers the reload.
    let reloader = pgwarden::server::reload::spawn(p.state.clone(), source(&path), rx, Duration::from_secs(3600));
    let mut idle = crate::support::raw::Raw::connect(p.addr, "postgres", "reload-live").await;
    let mut c = test_config();
    c.defaults.max_connections = Limit(Some(5));
    c.defaults.idle_timeout = pgwarden::config::Timeout(Some(Duration::from_secs(1)));
    std::fs::write(&path, c.to_yaml()).unwrap();
    tx.send(()).await.unwrap();
    let (tag, body) = tokio::time::timeout(Duration::from_secs(5), crate::support::raw::read_message(&mut idle.stream))
        .await
        .expect("the new idle_timeout applies to the open connection")
        .unwrap();
    assert_eq!((tag, crate::support::raw::error_code(&body).as_str()), (b'E', "57P05"));
    reloader.abort();
    p.stop().await;
}

/// The rollout the README recommends: report-only first, then enforcement. A connection already counted as
/// would-close is closed once enforcement is switched on.
#[tokio::test]
async fn switching_enforcement_on_acts_on_what_was_only_counted() {
    let mut config = test_config();
    config.enforce = false;
    config.defaults.idle_in_transaction_timeout = pgwarden::config::Timeout(Some(Duration::from_millis(500)));
    let p = start_proxy(config.clone()).await;
    let mut c = crate::support::raw::Raw::connect(p.addr, "postgres", "reload-enforce").await;
    c.send(&crate::support::raw::query("begin")).await;
    assert_eq!(c.until_ready().await.1, b'T');
    tokio::time::sleep(Duration::from_millis(1200)).await;
    config.enforce = true;
    p.state.update_settings(pgwarden::state::Settings::new(config).unwrap());
    let (tag, body) = tokio::time::timeout(Duration::from_secs(5), crate::support::raw::read_message(&mut c.stream))
        .await
        .expect("closed once enforcement is on")
        .unwrap();
    assert_eq!((tag, crate::support::raw::error_code(&body).as_str()), (b'E', "25P03"));
    p.stop().await;
}
