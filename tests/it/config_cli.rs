//! The command line: exit codes and precedence (flag > env > file), through the real binary.

use super::lifecycle::bin;
use std::io::Write;

fn config_file(yaml: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(yaml.as_bytes()).unwrap();
    f
}

#[test]
fn bad_key_or_value_exits_64_naming_it() {
    for (yaml, named) in [
        ("defaults:\n  idle_timout: 5s\n", "idle_timout"),
        ("defaults:\n  idle_timeout: soon\n", "defaults.idle_timeout"),
        ("max_total_connections: many\n", "max_total_connections"),
        ("rules:\n  - match: { pod: 'x' }\n", "rules[0].match.pod"),
        ("listen: [1, 2]\n", "listen"),
        ("{ not yaml", "line"),
    ] {
        let f = config_file(yaml);
        for sub in ["check-config", "proxy"] {
            let mut cmd = bin();
            if sub == "proxy" {
                cmd.args(["proxy", "--config"]).arg(f.path());
            } else {
                cmd.arg("check-config").arg(f.path());
            }
            let out = cmd.env_remove("PGWARDEN_CONFIG_YAML").output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(64), "{sub} {yaml:?}: {stderr}");
            assert!(stderr.contains(named), "{sub} {yaml:?}: {stderr}");
        }
    }
}

#[test]
fn bad_flags_and_env_exit_64_naming_them() {
    let out = bin().args(["proxy", "--no-such-flag"]).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let out = bin().args(["proxy", "--idle-timeout", "whenever"]).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--idle-timeout"));
    // A value the flag's parser accepts but validation refuses still names the flag, not a file key.
    let out = bin().args(["proxy", "--idle-timeout", "0"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64));
    assert!(stderr.contains("--idle-timeout (or PGWARDEN_IDLE_TIMEOUT)") && stderr.contains("write `off`"), "{stderr}");
    assert!(!stderr.contains("defaults.idle_timeout"), "{stderr}");
    // An admin URL without its scheme is bad usage; an admin URL that is no pgwarden says which URL.
    for cmd in ["top", "leaks"] {
        let out = bin().args([cmd, "--admin", "127.0.0.1:9187"]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{cmd}: {stderr}");
        assert!(stderr.contains("--admin") && stderr.contains("http://"), "{stderr}");
    }
    let not_http = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", not_http.local_addr().unwrap());
    let closer = std::thread::spawn(move || {
        let (mut s, _) = not_http.accept().unwrap();
        std::io::Write::write_all(&mut s, b"not http at all\r\n").unwrap();
    });
    let out = bin().args(["top", "--once", "--admin", &url]).output().unwrap();
    closer.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&url), "the error names the URL: {stderr}");
    let out = bin().args(["proxy"]).env("PGWARDEN_MAX_CONNECTIONS", "lots").output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PGWARDEN_MAX_CONNECTIONS"));
    let out = bin().args(["proxy"]).env("PGWARDEN_CONFIG_YAML", "enforce: maybe").output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PGWARDEN_CONFIG_YAML: config key `enforce`"));
    let out = bin().args(["check-config", "/nonexistent/pgwarden.yaml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let out = bin().args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(out.status.code(), Some(64), "an unknown shell is bad usage");
    for shell in ["bash", "zsh", "fish"] {
        let out = bin().args(["completions", shell]).output().unwrap();
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && script.contains("fleet") && script.contains("idle-timeout"), "{shell}");
    }
    let out = bin().arg("--version").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn env_overrides_file_and_flag_overrides_env() {
    let f = config_file("defaults:\n  idle_timeout: 1m\n  max_connections: 5\nupstream: db.example:5432\n");
    let effective = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = bin();
        cmd.arg("check-config").arg(f.path()).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let file_only = effective(&[], &[]);
    assert!(file_only.contains("idle_timeout: 1m") && file_only.contains("max_connections: 5"), "{file_only}");
    assert!(file_only.contains("upstream: db.example:5432"));
    let env = effective(&[], &[("PGWARDEN_IDLE_TIMEOUT", "2m"), ("PGWARDEN_UPSTREAM", "other:6543")]);
    assert!(env.contains("idle_timeout: 2m") && env.contains("upstream: other:6543"), "{env}");
    assert!(env.contains("max_connections: 5"), "untouched keys keep the file's value");
    let flag = effective(&["--idle-timeout", "3m"], &[("PGWARDEN_IDLE_TIMEOUT", "2m")]);
    assert!(flag.contains("idle_timeout: 3m"), "{flag}");
    let yaml = bin()
        .args(["proxy", "--listen", "127.0.0.1:1"])
        .env("PGWARDEN_CONFIG_YAML", "defaults:\n  max_connections: nope")
        .output()
        .unwrap();
    assert_eq!(yaml.status.code(), Some(64), "PGWARDEN_CONFIG_YAML is read and validated");
}
