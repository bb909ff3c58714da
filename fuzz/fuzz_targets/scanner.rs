//! The message scanner: one chunk or the same bytes in any split must give the same frames (tag, declared
//! length, captured body prefix) and the same error, and never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pgwarden::protocol::scanner::Scanner;

type Frames = Vec<(u8, usize, Vec<u8>)>;

fn scan(chunks: &[&[u8]], keep: usize) -> (Frames, bool) {
    let mut scanner = Scanner::default();
    let mut out = Vec::new();
    for chunk in chunks {
        if scanner.feed(chunk, |tag| keep + (tag as usize % 3), |f| out.push((f.tag, f.len, f.body.to_vec()))).is_err()
        {
            return (out, true);
        }
    }
    (out, false)
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, bytes)) = data.split_first() else { return };
    let keep = (control & 0x3f) as usize;
    let whole = scan(&[bytes], keep);
    // Split points from the bytes themselves, so the fuzzer explores them.
    let mut chunks = Vec::new();
    let mut rest = bytes;
    let mut step = (control >> 6) as usize + 1;
    while !rest.is_empty() {
        let n = step.min(rest.len());
        chunks.push(&rest[..n]);
        rest = &rest[n..];
        step = (step * 7 + 3) % 11 + 1;
    }
    let split = scan(&chunks, keep);
    assert_eq!(whole, split, "one chunk and {} chunks disagree", chunks.len());
});
