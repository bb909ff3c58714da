//! The protocol tracker fed both directions: arbitrary client and server bytes, interleaved as the input
//! says, through the scanners and into the tracker, as the relay does. Never a panic; the state it reports
//! is always one of the SPEC's; the statement text it publishes stays within the cap.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pgwarden::protocol::scanner::Scanner;
use pgwarden::session::relay::tracker::{client_want, Tracker};

fuzz_target!(|data: &[u8]| {
    let Some((&cap_byte, mut rest)) = data.split_first() else { return };
    let cap = cap_byte as usize * 4;
    let mut tracker = Tracker::new(cap);
    let (mut client, mut server) = (Scanner::default(), Scanner::default());
    // Each step: one control byte (bit 7: direction, the rest: length), then that many bytes.
    while let Some((&control, tail)) = rest.split_first() {
        let n = ((control & 0x7f) as usize).min(tail.len());
        let (chunk, after) = tail.split_at(n);
        rest = after;
        let ok = if control & 0x80 == 0 {
            client.feed(chunk, |tag| client_want(cap, tag), |f| tracker.on_client(f)).is_ok()
        } else {
            server.feed(chunk, Tracker::server_want, |f| tracker.on_server(f)).is_ok()
        };
        if !ok {
            return;
        }
        let _ = tracker.state();
        let _ = tracker.awaits_answers();
        if let Some(text) = tracker.take_statement() {
            assert!(text.len() <= cap.max(16), "statement of {} bytes over the cap {cap}", text.len());
        }
    }
});
