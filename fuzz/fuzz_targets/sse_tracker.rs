//! Arbitrary bytes as an upstream SSE stream, cut into chunks at arbitrary places: no panic, and
//! with nothing to hide, the bytes forwarded are exactly the bytes received, in order.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sluice::sse::SseTracker;

fuzz_target!(|data: &[u8]| {
    let Some((&cuts, stream)) = data.split_first() else { return };
    let step = usize::from(cuts).max(1);
    for hide in [false, true] {
        let mut t = SseTracker::new(hide);
        let mut out = Vec::new();
        for chunk in stream.chunks(step) {
            out.extend_from_slice(&t.feed(Bytes::copy_from_slice(chunk), |event| {
                assert!(!event.is_empty());
            }));
        }
        out.extend_from_slice(&t.finish());
        if !hide {
            assert_eq!(out, stream);
        } else {
            assert!(out.len() <= stream.len());
        }
    }
});
