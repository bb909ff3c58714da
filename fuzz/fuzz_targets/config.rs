//! The config parser: any YAML it accepts must give settings a session can run with: the policy of any
//! client and the next timer of a connection in every state compute without a panic (huge durations once
//! made `Instant + Duration` panic in every session). Rejections are errors, never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pgwarden::config::Config;
use pgwarden::identity::{ClientId, Field};
use pgwarden::policy::{effective, next_timer, TimerInput};
use pgwarden::vocab::ConnState;
use std::time::{Duration, Instant};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(config) = Config::from_yaml(text, "fuzz.yaml") else { return };
    let now = Instant::now();
    if let Ok(settings) = pgwarden::state::Settings::new(config.clone()) {
        let state = pgwarden::state::State::new(settings, Default::default());
        state.housekeeping(now);
        let _ = state.housekeeping_interval();
    }
    for app in ["", "api", "report-1", "-", "a/b"] {
        let client = ClientId::new(
            config
                .client_key
                .iter()
                .map(|&f| (f, if f == Field::ApplicationName { app.to_string() } else { "x".to_string() }))
                .collect(),
        );
        let (policy, _rule) = effective(&config, &client);
        for state in ConnState::ALL {
            for spent in [false, true] {
                let input = TimerInput {
                    state,
                    state_since: now,
                    opened: now,
                    login_deadline: config.client_login_timeout.0.and_then(|d| now.checked_add(d)),
                    drain_deadline: config.shutdown_grace.0.and_then(|d| now.checked_add(d)),
                    policy: &policy,
                    idle_timers_spent: spent,
                    transaction_since: Some(now),
                    transaction_timer_spent: spent,
                    query_timer_spent: spent,
                };
                if let Some((at, _)) = next_timer(&input) {
                    assert!(at >= now, "a timer in the past");
                    let _ = at.checked_add(Duration::from_secs(1));
                }
            }
        }
    }
});
