//! `sinkstream bench` on a tiny random model: the counts it reports are the engine's promises
//! (one submission and no GPU object created per decode token, the same session memory at every
//! stream position, recompute slower than the sink cache), and every field is there. Speeds are
//! not asserted (shared machines are noisy; docs/performance.md records them).

mod common;
use common::*;
use sinkstream::bench::{self, BenchOptions};
use sinkstream::GpuModel;
use std::sync::Arc;

#[test]
fn bench_counts_and_fields() {
    let (cfg, w) = tiny_model(&TinySpec::default(), 3);
    let gm = Arc::new(GpuModel::new(gpu(), &cfg, &w).unwrap());
    for fast_forward in [true, false] {
        let o = BenchOptions {
            prompt_tokens: 20,
            decode_tokens: 40,
            positions: vec![30, 100, 400],
            latency_tokens: 6,
            sinks: 2,
            window: 14,
            batch: 8,
            fast_forward,
            recompute_tokens: 2,
            profile: false,
        };
        let mut lines = Vec::new();
        let r = bench::run(&gm, &o, &mut |l| lines.push(l.to_string())).unwrap();
        assert!(!lines.is_empty(), "progress lines");
        assert_eq!(r.submissions_per_token, 1.0);
        assert_eq!(r.objects_created_per_token, 0.0);
        assert!(r.dispatches_per_token >= 1.0);
        assert!(r.prefill_tokens_per_s > 0.0 && r.decode_tokens_per_s > 0.0);
        assert!(r.decode_pipelined_tokens_per_s > 0.0);
        let sink: Vec<_> = r
            .latency
            .iter()
            .filter(|l| l.policy.starts_with("sink"))
            .collect();
        assert_eq!(
            sink.iter().map(|l| l.position).collect::<Vec<_>>(),
            [30, 100, 400]
        );
        assert!(
            sink.iter()
                .all(|l| l.gpu_bytes == sink[0].gpu_bytes && l.gpu_bytes > 0),
            "session memory differs between positions: {sink:?}"
        );
        assert!(sink
            .iter()
            .all(|l| l.p95_ms >= l.median_ms && l.median_ms > 0.0));
        let (window, rec_ms, sink_ms) = r.recompute.expect("recompute measured");
        assert_eq!(window, 16);
        assert!(
            rec_ms > sink_ms,
            "recompute {rec_ms} ms vs sink {sink_ms} ms"
        );
        let j = r.to_json();
        for key in [
            "adapter",
            "prefill_tokens_per_s",
            "decode_tokens_per_s",
            "decode_pipelined_tokens_per_s",
            "latency",
            "recompute",
            "dispatches_per_token",
            "submissions_per_token",
            "gpu_objects_created_per_token",
            "gpu_bytes",
            "peak_rss_bytes",
        ] {
            assert!(!j[key].is_null(), "{key} missing from {j}");
        }
        assert!(r.to_text().contains("submissions"));
    }
}
