//! The `sinkstream` binary end to end with the real model on whatever GPU wgpu finds (lavapipe
//! in CI): generate, chat, ppl (chunked vs token by token), info, and every bad input's message.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

const PROMPT: &str = "The capital of France is Paris. The capital of Germany is";

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sinkstream"));
    // The default model is found relative to the source tree, whatever the test's directory.
    c.current_dir(std::env::temp_dir());
    c
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run sinkstream")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A file in a fresh temp directory (removed by the caller's `dir`).
fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sinkstream-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn generate_greedy_says_berlin() {
    let o = run(&[
        "generate",
        "--temperature",
        "0",
        "--max-tokens",
        "8",
        "--prompt",
        PROMPT,
    ]);
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    assert!(o.status.success(), "stderr: {err}");
    assert!(out.starts_with(" Berlin"), "stdout: {out:?}");
    assert!(!out.contains("tokens/s"), "logs leaked to stdout: {out:?}");
    assert!(
        err.contains("tokens/s") && err.contains("cache") && err.contains("sink 4+1020"),
        "stderr: {err}"
    );
}

#[test]
fn chat_answers_and_keeps_going() {
    let mut child = bin()
        .args(["chat", "--temperature", "0", "--max-tokens", "4"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Hi!\n/stats\n/reset\n/quit\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    assert!(o.status.success(), "stderr: {err}");
    assert!(!out.trim().is_empty(), "no reply");
    assert!(
        err.contains("tokens streamed") && err.contains("write head"),
        "stderr: {err}"
    );
}

fn ppl_json(file: &str, chunk: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "ppl", "--text", file, "--tokens", "30", "--sinks", "4", "--window", "12", "--json",
        "--chunk", chunk,
    ];
    args.extend_from_slice(extra);
    let o = run(&args);
    assert!(o.status.success(), "stderr: {}", text(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o.stdout)))
}

/// 30 tokens through a 4+12 cache: chunks of 64 and token by token agree, the CSV has a line
/// per predicted token, and the perplexity after the cache filled covers t = 17..29.
#[test]
fn ppl_chunked_equals_token_by_token() {
    let dir = temp_dir("ppl");
    let file = dir.join("text.txt");
    std::fs::write(&file, "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife. However little known the feelings or views of such a man may be.").unwrap();
    let csv = dir.join("nll.csv");
    let f = file.to_str().unwrap();
    let a = ppl_json(f, "64", &["--csv", csv.to_str().unwrap()]);
    let b = ppl_json(f, "1", &[]);
    for j in [&a, &b] {
        assert_eq!(j["tokens"], 30, "{j}");
        assert_eq!(j["predicted"], 29, "{j}");
        assert_eq!(j["tokens_after_fill"], 13, "{j}");
        assert_eq!(j["policy"], "sink");
        assert_eq!(
            (j["sinks"].as_u64(), j["window"].as_u64()),
            (Some(4), Some(12))
        );
        for k in ["ppl", "ppl_after_fill", "seconds", "tokens_per_second"] {
            let v = j[k].as_f64().unwrap_or(f64::NAN);
            assert!(v.is_finite() && v > 0.0, "{k} = {v} in {j}");
        }
    }
    let (pa, pb) = (a["ppl"].as_f64().unwrap(), b["ppl"].as_f64().unwrap());
    assert!(
        ((pa - pb) / pb).abs() < 1e-3,
        "chunked {pa} vs token by token {pb}"
    );
    let lines: Vec<String> = std::fs::read_to_string(&csv)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(lines.len(), 30);
    assert_eq!(lines[0], "index,nll");
    assert!(
        lines[1].starts_with("1,") && lines[29].starts_with("29,"),
        "{lines:?}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn info_names_the_adapter() {
    let o = run(&["info"]);
    let out = text(&o.stdout);
    assert!(o.status.success(), "stderr: {}", text(&o.stderr));
    let name = out
        .lines()
        .find_map(|l| l.strip_prefix("adapter"))
        .map(str::trim)
        .unwrap_or("");
    assert!(!name.is_empty(), "{out}");
    assert!(
        out.contains("max_storage_buffer_binding_size") && out.contains("SHADER_F16"),
        "{out}"
    );
}

/// Every bad input: non-zero exit, one `error:` line naming the problem, never a panic.
#[test]
fn bad_inputs_fail_cleanly() {
    let dir = temp_dir("bad");
    let bin_file = dir.join("latin1.txt");
    std::fs::write(&bin_file, b"caf\xe9 au lait").unwrap();
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, b"").unwrap();
    let one = dir.join("one.txt");
    std::fs::write(&one, b"Hello").unwrap();
    let (b, e, o) = (
        bin_file.to_str().unwrap(),
        empty.to_str().unwrap(),
        one.to_str().unwrap(),
    );
    let cases: &[(&[&str], &str)] = &[
        (&["generate", "--prompt", "x", "--window", "0"], "--window"),
        (
            &["generate", "--prompt", "x", "--sinks", "2000000"],
            "--sinks",
        ),
        (&["generate", "--prompt", "x", "--top-p", "2"], "top-p"),
        (
            &["generate", "--prompt", "x", "--temperature", "-1"],
            "temperature",
        ),
        (
            &["generate", "--prompt", "x", "--max-tokens", "0"],
            "--max-tokens",
        ),
        (&["generate", "--prompt", ""], "prompt"),
        (
            &[
                "generate",
                "--prompt",
                "x",
                "--model",
                "/no/such/model.gguf",
            ],
            "scripts/fetch-model.sh",
        ),
        (&["ppl", "--text", b], "not UTF-8"),
        (&["ppl", "--text", e], "empty"),
        (&["ppl", "--text", o], "at least 2"),
        (&["ppl", "--text", "/no/such/file.txt"], "cannot read"),
    ];
    for (args, word) in cases {
        let out = run(args);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
        let line = err
            .lines()
            .find(|l| l.starts_with("error: "))
            .unwrap_or_else(|| panic!("{args:?}: no error line in {err}"));
        assert!(line.contains(word), "{args:?}: {line}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
