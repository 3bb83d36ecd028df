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

/// A running `sinkstream chat` with its stdout and stderr collected by threads, so the test can
/// wait for text to appear while the process keeps running.
#[cfg(unix)]
struct LiveChat {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    stderr: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

#[cfg(unix)]
impl LiveChat {
    fn start(args: &[&str]) -> LiveChat {
        use std::io::Read;
        use std::sync::{Arc, Mutex};
        let mut child = bin()
            .arg("chat")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run sinkstream chat");
        let collect = |mut r: Box<dyn Read + Send>| {
            let buf = Arc::new(Mutex::new(Vec::new()));
            let b = buf.clone();
            std::thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                while let Ok(n @ 1..) = r.read(&mut chunk) {
                    b.lock().unwrap().extend_from_slice(&chunk[..n]);
                }
            });
            buf
        };
        let stdout = collect(Box::new(child.stdout.take().unwrap()));
        let stderr = collect(Box::new(child.stderr.take().unwrap()));
        let stdin = child.stdin.take().unwrap();
        LiveChat {
            child,
            stdin,
            stdout,
            stderr,
        }
    }

    fn send(&mut self, text: &str) {
        use std::io::Write;
        self.stdin.write_all(text.as_bytes()).unwrap();
        self.stdin.flush().unwrap();
    }

    fn out(&self) -> String {
        text(&self.stdout.lock().unwrap())
    }

    fn err(&self) -> String {
        text(&self.stderr.lock().unwrap())
    }

    /// Waits until `done(stdout, stderr)` holds; fails if the process exits first or time runs out.
    fn wait_for(&mut self, what: &str, done: impl Fn(&str, &str) -> bool) {
        let t0 = std::time::Instant::now();
        while !done(&self.out(), &self.err()) {
            if let Some(st) = self.child.try_wait().unwrap() {
                // The reader threads may still hold the last bytes: give them a moment.
                std::thread::sleep(std::time::Duration::from_millis(200));
                panic!(
                    "chat exited ({st}) while waiting for {what}; stdout {:?}; stderr {}",
                    self.out(),
                    self.err()
                );
            }
            if t0.elapsed().as_secs() > 600 {
                let _ = self.child.kill();
                panic!(
                    "timed out waiting for {what}; stdout {:?}; stderr {}",
                    self.out(),
                    self.err()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// SIGINT, as Ctrl-C in a terminal sends it. Through the shell's built-in `kill`, which every
    /// Unix has, rather than a libc binding the tests would otherwise not need.
    fn interrupt(&self) {
        let st = Command::new("sh")
            .args(["-c", &format!("kill -INT {}", self.child.id())])
            .status()
            .expect("run sh");
        assert!(st.success(), "kill -INT failed");
    }

    /// Waits (at most ten minutes) for the process to exit.
    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let t0 = std::time::Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                std::thread::sleep(std::time::Duration::from_millis(200));
                return st;
            }
            if t0.elapsed().as_secs() > 600 {
                let _ = self.child.kill();
                panic!(
                    "chat did not exit; stdout {:?}; stderr {}",
                    self.out(),
                    self.err()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// A failed test must not leave a chat generating in the background.
#[cfg(unix)]
impl Drop for LiveChat {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `tokens streamed` and `last reply` counts of every /stats line so far.
#[cfg(unix)]
fn stats_counts(stderr: &str) -> Vec<(u64, u64)> {
    let num = |l: &str, after: &str| -> u64 {
        let rest = &l[l.find(after).unwrap() + after.len()..];
        rest.split_whitespace().next().unwrap().parse().unwrap()
    };
    stderr
        .lines()
        .filter(|l| l.starts_with("tokens streamed "))
        .map(|l| (num(l, "tokens streamed "), num(l, "last reply ")))
        .collect()
}

const STORY: &str = "Tell me a long story about a dragon who learns to read.";

/// Ctrl-C while a reply streams stops that reply only: the process lives on, the next message
/// gets a reply, /quit exits with 0, and the cache holds exactly the conversation: the first
/// turn, the part of the reply that was shown, then the second turn and its reply.
#[cfg(unix)]
#[test]
fn chat_ctrl_c_stops_the_reply_and_the_chat_goes_on() {
    const MAX: u64 = 32;
    let mut c = LiveChat::start(&["--temperature", "0", "--max-tokens", &MAX.to_string()]);
    c.send(&format!("{STORY}\n"));
    c.wait_for("the first words of the reply", |o, _| !o.is_empty());
    c.interrupt();
    c.wait_for("the reply to stop", |o, _| o.contains(" [interrupted]\n"));
    assert!(c.child.try_wait().unwrap().is_none(), "Ctrl-C killed chat");
    c.send("/stats\n");
    c.wait_for("/stats", |_, e| stats_counts(e).len() == 1);
    let first_out = c.out();
    c.send("What is the capital of France?\n/stats\n/quit\n");
    let st = c.wait_exit();
    let (out, err) = (c.out(), c.err());
    assert_eq!(st.code(), Some(0), "stdout {out:?}; stderr {err}");
    assert!(
        !err.contains("panicked") && !err.contains("error:"),
        "{err}"
    );
    let second = out[first_out.len()..].trim();
    assert!(
        !second.is_empty(),
        "no reply after the interruption: {out:?}"
    );
    assert!(!second.contains("[interrupted]"), "{out:?}");

    // Token accounting: what the chat fed is what the template makes of the conversation.
    let counts = stats_counts(&err);
    assert_eq!(counts.len(), 2, "{err}");
    let ((streamed1, reply1), (streamed2, reply2)) = (counts[0], counts[1]);
    assert!(
        (1..MAX).contains(&reply1),
        "the first reply was not cut short: {reply1} tokens"
    );
    assert!(reply2 >= 1, "{err}");
    let m = sinkstream::Model::load(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf"),
    )
    .unwrap();
    let turn = |last: Option<(&str, &str)>, user: &str| {
        let t = sinkstream::generate::turn_text(&m.chat_template, None, last, user).unwrap();
        assert!(!t.restart);
        m.tokenizer.encode(&t.text).unwrap().len() as u64
    };
    let shown = first_out.strip_suffix(" [interrupted]\n").unwrap();
    assert_eq!(streamed1, turn(None, STORY) + reply1, "{err}");
    assert_eq!(
        streamed2,
        streamed1 + turn(Some((STORY, shown)), "What is the capital of France?") + reply2,
        "{err}"
    );
}

/// Ctrl-C at the prompt, after a first one stopped a reply, quits with status 130 and no error.
#[cfg(unix)]
#[test]
fn chat_ctrl_c_at_the_prompt_quits() {
    let mut c = LiveChat::start(&["--temperature", "0", "--max-tokens", "32"]);
    c.send(&format!("{STORY}\n"));
    c.wait_for("the first words of the reply", |o, _| !o.is_empty());
    c.interrupt();
    c.wait_for("the reply to stop", |o, _| o.contains(" [interrupted]\n"));
    c.interrupt();
    let st = c.wait_exit();
    let err = c.err();
    assert_eq!(st.code(), Some(130), "stderr {err}");
    assert!(
        !err.contains("panicked") && !err.contains("error:"),
        "{err}"
    );
    let help = run(&["chat", "--help"]);
    let h = text(&help.stdout);
    assert!(
        h.contains("Ctrl-C at the prompt") && h.contains("130"),
        "{h}"
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
    // stderr is a pipe here: progress comes as plain lines, one per step with an interval of 0
    let o = bin()
        .args([
            "ppl", "--text", f, "--tokens", "30", "--window", "12", "--chunk", "8",
        ])
        .env("SINKSTREAM_PROGRESS_SECONDS", "0")
        .output()
        .unwrap();
    let err = text(&o.stderr);
    assert!(o.status.success(), "{err}");
    for done in [8, 16, 24, 29] {
        assert!(
            err.contains(&format!("sinkstream: {done}/29 tokens, ")),
            "progress line for {done} tokens missing: {err}"
        );
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
