//! Streaming evaluation (src/eval.rs) and its CLI (`ppl --plot`, `ppl --sinks LIST --cache C`,
//! `compare`): chunked evaluation equals token by token on caches that wrap many times, on a
//! tiny random model and on the real one; recompute equals the CPU reference; the ablation keeps
//! S+W; the plot is an SVG with a line per run; compare writes its table with four policies.
//!
//! Tolerance: per-token NLLs agree to 1e-3 nats absolute (f32 GPU arithmetic in a different
//! order: blocks vs single tokens; observed differences are around 1e-5).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use common::{gpu, model, tiny_model, Rng, TinySpec};
use sinkstream::cpu::CpuModel;
use sinkstream::eval::{self, EvalOptions, StreamEval};
use sinkstream::{GpuModel, Policy};

const TOL: f64 = 1e-3;

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

fn run(m: &Arc<GpuModel>, p: Policy, ids: &[u32], chunk: usize) -> StreamEval {
    let opts = EvalOptions {
        chunk,
        recompute_batch: 64,
        memory_every: 50,
    };
    eval::evaluate(m, p, ids, 1..ids.len(), &opts, &mut |_| {}).unwrap()
}

fn tiny() -> (Arc<GpuModel>, CpuModel, Vec<u32>) {
    let spec = TinySpec::default();
    let (cfg, w) = tiny_model(&spec, 11);
    let gm = Arc::new(GpuModel::new(gpu(), &cfg, &w).unwrap());
    let cm = CpuModel::new(&cfg, &w);
    let mut rng = Rng(5);
    let ids: Vec<u32> = (0..200).map(|_| rng.below(spec.vocab as u32)).collect();
    (gm, cm, ids)
}

/// A 2+6 cache over 200 tokens wraps 32 times; chunks of 1, 5 (not dividing the window) and
/// 64 (far larger than the cache) give the same NLLs, under sink, window and dense, and match
/// the CPU reference.
#[test]
fn tiny_chunked_equals_token_by_token() {
    let (gm, cm, ids) = tiny();
    for p in [
        Policy::Sink {
            sinks: 2,
            window: 6,
        },
        Policy::Window { window: 8 },
        Policy::Dense { max: 256 },
    ] {
        let one = run(&gm, p, &ids, 1);
        assert_eq!(one.nll.len(), 199);
        assert_eq!(one.targets, 1..200);
        let cpu = eval::cpu_nll(&cm, p, &ids).unwrap();
        let d = max_diff(&one.nll, &cpu);
        assert!(d < TOL, "{p}: token by token vs CPU differ by {d}");
        for chunk in [5, 64] {
            let c = run(&gm, p, &ids, chunk);
            let d = max_diff(&one.nll, &c.nll);
            assert!(d < TOL, "{p}: chunk {chunk} vs 1 differ by {d}");
        }
    }
    // Sinks matter on this model too: sink and window really are different evaluations.
    let s = run(
        &gm,
        Policy::Sink {
            sinks: 2,
            window: 6,
        },
        &ids,
        64,
    );
    let w = run(&gm, Policy::Window { window: 8 }, &ids, 64);
    assert!(max_diff(&s.nll, &w.nll) > 1e-2);
}

/// Memory is sampled at the start, every 50 fed tokens and at the end, and the GPU's share never
/// moves while a 2+6 cache wraps 32 times. (A GPU of its own: the byte count is per device and
/// the other tests allocate on the shared one concurrently.)
#[test]
fn memory_is_sampled_and_constant() {
    let (cfg, w) = tiny_model(&TinySpec::default(), 11);
    let g = Arc::new(sinkstream::Gpu::new_blocking().unwrap());
    let gm = Arc::new(GpuModel::new(g, &cfg, &w).unwrap());
    let mut rng = Rng(5);
    let ids: Vec<u32> = (0..200).map(|_| rng.below(cfg.vocab as u32)).collect();
    let r = run(
        &gm,
        Policy::Sink {
            sinks: 2,
            window: 6,
        },
        &ids,
        16,
    );
    assert!(r.memory.len() >= 4, "{:?}", r.memory);
    assert!(
        r.memory
            .iter()
            .all(|m| m.gpu_bytes == r.memory[0].gpu_bytes),
        "{:?}",
        r.memory
    );
    assert_eq!(r.memory[0].token, 0);
    assert_eq!(r.memory.last().unwrap().token, 199);
    #[cfg(target_os = "linux")]
    assert!(r.memory.iter().all(|m| m.rss_bytes.unwrap_or(0) > 0));
}

/// Recompute evaluation equals the CPU reference's Policy::Recompute token by token, and
/// starting in the middle gives the same NLLs as the full run there.
#[test]
fn tiny_recompute_equals_cpu_reference() {
    let (gm, cm, ids) = tiny();
    let ids = &ids[..80];
    let p = Policy::Recompute { window: 8 };
    let full = run(&gm, p, ids, 64);
    let cpu = eval::cpu_nll(&cm, p, ids).unwrap();
    let d = max_diff(&full.nll, &cpu);
    assert!(d < TOL, "recompute vs CPU differ by {d}");
    assert_eq!(
        full.tokens_fed,
        (1..80).map(|t: usize| t.min(8)).sum::<usize>()
    );
    let opts = EvalOptions {
        chunk: 1,
        recompute_batch: 3,
        memory_every: 0,
    };
    let part = eval::evaluate(&gm, p, ids, 30..45, &opts, &mut |_| {}).unwrap();
    assert_eq!(part.nll.len(), 15);
    assert!(max_diff(&part.nll, full.nll_in(30..45)) < TOL);
    // For t <= W recompute sees the whole prefix at absolute positions: dense exactly.
    let dense = eval::cpu_nll(&cm, Policy::Dense { max: 100 }, ids).unwrap();
    assert!(max_diff(&cpu[..8], &dense[..8]) < 1e-9);
}

/// The real model, a 4+12 cache over 60 tokens of Emma (wraps 3 times): chunk 16 and 64 equal
/// token by token under sink, window and dense.
#[test]
fn real_model_chunked_equals_token_by_token() {
    let m = model();
    let gm = Arc::new(GpuModel::new(gpu(), &m.config, &m.weights).unwrap());
    let text = common::austen("emma.txt");
    let ids: Vec<u32> = m
        .tokenizer
        .encode(&text.chars().take(2000).collect::<String>())
        .unwrap()[..60]
        .to_vec();
    for p in [
        Policy::Sink {
            sinks: 4,
            window: 12,
        },
        Policy::Window { window: 16 },
        Policy::Dense { max: 64 },
    ] {
        let one = run(&gm, p, &ids, 1);
        for chunk in [16, 64] {
            let c = run(&gm, p, &ids, chunk);
            let d = max_diff(&one.nll, &c.nll);
            assert!(d < TOL, "{p}: chunk {chunk} vs 1 differ by {d}");
        }
        // The reference NLLs of docs/model.md (dense attention, t = 1..10); the cache is
        // still filling there, so every policy sees the same thing.
        let want = [
            12.254426, 2.942214, 1.943699, 5.790131, 7.804026, 5.603176, 13.881198, 0.251448,
            7.218052, 5.625321,
        ];
        let d = max_diff(&one.nll[..10], &want);
        assert!(d < 2e-2, "{p}: first NLLs differ from the reference by {d}");
    }
}

#[test]
fn ablation_keeps_the_cache_size() {
    let ps = eval::ablation_policies(&[0, 1, 2, 4, 8], 128).unwrap();
    let sw: Vec<(usize, usize)> = ps
        .iter()
        .map(|p| (p.rule().sinks, p.rule().window))
        .collect();
    assert_eq!(sw, [(0, 128), (1, 127), (2, 126), (4, 124), (8, 120)]);
    assert!(eval::ablation_policies(&[16], 16).is_err());
}

// ---- the CLI ----

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sinkstream"));
    c.current_dir(std::env::temp_dir());
    c
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sinkstream-eval-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn emma_file(dir: &std::path::Path) -> PathBuf {
    let f = dir.join("emma.txt");
    let text: String = common::austen("emma.txt").chars().take(1500).collect();
    std::fs::write(&f, text).unwrap();
    f
}

fn ok(args: &[&str]) -> String {
    let o = bin().args(args).output().expect("run sinkstream");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{args:?} failed: {err}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A valid SVG with one drawn line per series.
fn check_svg(path: &std::path::Path, series: usize) -> String {
    let svg = std::fs::read_to_string(path).unwrap();
    assert!(svg.trim_start().starts_with("<svg"), "{}", &svg[..100]);
    assert!(svg.trim_end().ends_with("</svg>"));
    let lines = svg.matches("<polyline").count() + svg.matches("<path").count();
    assert!(lines >= series, "{lines} lines for {series} series");
    svg
}

/// `ppl --plot` and the JSON's memory fields; then the ablation `--sinks 0,1,4 --cache 16`.
#[test]
fn cli_ppl_plot_and_ablation() {
    let dir = temp_dir("ppl");
    let f = emma_file(&dir);
    let f = f.to_str().unwrap();
    let svg = dir.join("nll.svg");
    let out = ok(&[
        "ppl",
        "--text",
        f,
        "--tokens",
        "40",
        "--sinks",
        "4",
        "--window",
        "12",
        "--json",
        "--plot",
        svg.to_str().unwrap(),
    ]);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["predicted"], 39);
    assert_eq!(j["gpu_bytes_start"], j["gpu_bytes_end"]);
    assert!(j["gpu_bytes_start"].as_u64().unwrap() > 50_000_000, "{j}");
    #[cfg(target_os = "linux")]
    assert!(j["rss_start"].as_u64().unwrap() > 0 && j["rss_end"].as_u64().unwrap() > 0);
    assert!(!j["segments"].as_array().unwrap().is_empty());
    let s = check_svg(&svg, 1);
    assert!(s.contains("sink 4+12"), "the legend names the run");

    let svg2 = dir.join("ablation.svg");
    let out = ok(&[
        "ppl",
        "--text",
        f,
        "--tokens",
        "40",
        "--sinks",
        "0,1,4",
        "--cache",
        "16",
        "--json",
        "--plot",
        svg2.to_str().unwrap(),
    ]);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    let runs = j["runs"].as_array().unwrap();
    let sw: Vec<(u64, u64)> = runs
        .iter()
        .map(|r| (r["sinks"].as_u64().unwrap(), r["window"].as_u64().unwrap()))
        .collect();
    assert_eq!(sw, [(0, 16), (1, 15), (4, 12)]);
    assert!(runs.iter().all(|r| r["cache_slots"] == 16));
    check_svg(&svg2, 3);
    // A list of sinks without --cache is refused with a message.
    let o = bin()
        .args(["ppl", "--text", f, "--sinks", "0,4"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--cache"));
    std::fs::remove_dir_all(&dir).ok();
}

/// `--chunk 16,1`: both in one run, equal NLLs, a speed ratio.
#[test]
fn cli_ppl_chunk_list_compares_speed() {
    let dir = temp_dir("speed");
    let f = emma_file(&dir);
    let out = ok(&[
        "ppl",
        "--text",
        f.to_str().unwrap(),
        "--tokens",
        "40",
        "--sinks",
        "4",
        "--window",
        "12",
        "--chunk",
        "16,1",
        "--json",
    ]);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    let runs = j["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(
        (runs[0]["chunk"].as_u64(), runs[1]["chunk"].as_u64()),
        (Some(16), Some(1))
    );
    assert!(runs[1]["max_abs_nll_diff_vs_first"].as_f64().unwrap() < TOL);
    assert!(runs[0]["speedup_vs_last"].as_f64().unwrap() > 0.0);
    std::fs::remove_dir_all(&dir).ok();
}

/// `compare` on 48 tokens with a cache of 16: four policies in the markdown, the JSON and the
/// plot; recompute covers t = 17..22.
#[test]
fn cli_compare_writes_four_policies() {
    let dir = temp_dir("compare");
    let f = emma_file(&dir);
    let (md, js, svg) = (dir.join("t.md"), dir.join("t.json"), dir.join("t.svg"));
    let out = ok(&[
        "compare",
        "--text",
        f.to_str().unwrap(),
        "--tokens",
        "48",
        "--cache",
        "16",
        "--recompute-tokens",
        "6",
        "--md",
        md.to_str().unwrap(),
        "--json",
        js.to_str().unwrap(),
        "--plot",
        svg.to_str().unwrap(),
    ]);
    let table = std::fs::read_to_string(&md).unwrap();
    for name in ["dense", "window 16", "recompute 16", "sink 4+12"] {
        assert!(
            table.contains(&format!("| {name} |")),
            "{name} missing: {table}"
        );
        assert!(out.contains(name));
    }
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&js).unwrap()).unwrap();
    let runs = j["runs"].as_array().unwrap();
    let names: Vec<&str> = runs.iter().map(|r| r["policy"].as_str().unwrap()).collect();
    assert_eq!(names, ["dense", "window", "recompute", "sink"]);
    assert_eq!(runs[2]["first_target"], 17);
    assert_eq!(runs[2]["predicted"], 6);
    assert_eq!(j["common_targets"], serde_json::json!([17, 22]));
    for r in runs {
        let p = r["ppl_common"].as_f64().unwrap();
        assert!(p.is_finite() && p > 1.0, "{r}");
    }
    check_svg(&svg, 4);
    std::fs::remove_dir_all(&dir).ok();
}
