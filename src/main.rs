//! The `sinkstream` command line: generate, chat, measure perplexity and describe the GPU, all
//! through the library's streaming session. Errors become one `error: ...` line and exit code 1.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use sinkstream::chat::{ChatTemplate, Message};
use sinkstream::convert::{self as hf_convert, OutDType};
use sinkstream::eval::{self, EvalOptions, StreamEval};
use sinkstream::generate::{Chat, Generator, StopReason, Timing};
use sinkstream::hub;
use sinkstream::plot::{line_plot, PlotSpec, Series};
use sinkstream::sampler::{Sampler, SamplingConfig};
use sinkstream::tokenizer::Tokenizer;
use sinkstream::{Config, Gpu, GpuModel, Model, Policy, Session, Stats};

const DEFAULT_MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
/// Above this many slots a cache is almost surely a typo (it would need gigabytes per layer).
const MAX_CACHE_FLAG: usize = 1 << 20;

#[derive(Parser)]
#[command(
    name = "sinkstream",
    version,
    about = "Run Llama-family language models on the GPU through WebGPU, streaming forever in constant memory with an attention-sink KV cache (StreamingLLM).",
    after_help = "Logs and statistics go to stderr; generated text and results to stdout."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Continue a prompt; only the generated text goes to stdout, streamed as it is produced.
    Generate(GenerateArgs),
    /// Talk to the model in the terminal (/reset, /stats, /quit; Ctrl-C stops a reply).
    Chat(ChatArgs),
    /// Perplexity of a text file streamed through the cache (the paper's evaluation).
    Ppl(PplArgs),
    /// The paper's comparison in one go: dense, window, recompute and sink on one text, as a
    /// table (markdown, JSON) and one plot with a line per policy.
    Compare(CompareArgs),
    /// Describe the GPU adapter (and, with --model, the model).
    Info(InfoArgs),
    /// Measure speed and memory: prefill, decode, per-token latency deep into a stream, recompute
    /// against the sink cache, dispatches and allocations per token (docs/performance.md).
    Bench(BenchArgs),
    /// Write a Hugging Face checkpoint (config.json, model.safetensors, tokenizer.json,
    /// tokenizer_config.json with the chat template) from a GGUF model. llama.cpp's Q/K row
    /// permutation is undone, so the result uses the Hugging Face rotate-half RoPE layout and
    /// loads in sinkstream and in transformers alike.
    Convert(ConvertArgs),
}

#[derive(Args)]
struct ModelArgs {
    /// A GGUF file, a Hugging Face checkpoint directory (config.json, model.safetensors or
    /// shards, tokenizer.json, tokenizer_config.json), or a Hugging Face repo id such as
    /// HuggingFaceTB/SmolLM2-135M-Instruct (taken from the Hugging Face cache, else downloaded
    /// into it; HF_HOME moves the cache, HF_HUB_OFFLINE=1 forbids the network)
    /// [default: models/SmolLM2-135M-Instruct.Q4_1.gguf in the current directory, else in the
    /// sinkstream source tree; scripts/fetch-model.sh downloads it]
    #[arg(long, value_name = "MODEL")]
    model: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum PolicyKind {
    /// The first S tokens forever plus the last W (StreamingLLM).
    Sink,
    /// The last W tokens only (perplexity explodes once the first token is evicted).
    Window,
    /// Every token at its absolute position, up to --max-context tokens, then an error.
    Dense,
    /// For every token, re-run the model over the last W tokens (good quality, O(W^2) work per token).
    Recompute,
}

#[derive(Args)]
#[command(next_help_heading = "KV cache")]
struct CacheArgs {
    /// Which tokens the KV cache keeps
    #[arg(long, value_enum, default_value = "sink")]
    policy: PolicyKind,
    /// Attention sinks: the first S tokens, kept forever (sink policy). `ppl --cache C` also
    /// takes a list (0,1,2,4,8): the sink-count ablation, each run with the window C - S
    #[arg(long, value_name = "S", default_value = "4", value_delimiter = ',')]
    sinks: Vec<usize>,
    /// Recent tokens kept in the ring, the current token included (sink, window, recompute)
    #[arg(long, value_name = "W", default_value_t = 1020)]
    window: usize,
    /// Most tokens the dense policy holds [default: the model's context length]
    #[arg(long, value_name = "N")]
    max_context: Option<usize>,
    /// Tokens per GPU block when feeding a prompt; more is faster and takes more GPU memory
    #[arg(long, value_name = "N", default_value_t = 64)]
    batch: usize,
}

impl CacheArgs {
    /// Checks that need no model, so a typo fails before seconds of loading.
    fn check(&self) -> Result<()> {
        if self.window == 0 {
            bail!("--window must be at least 1 (got 0)");
        }
        if self.sinks.is_empty() {
            bail!("--sinks needs a number");
        }
        if self.window > MAX_CACHE_FLAG || self.sinks.iter().any(|&s| s > MAX_CACHE_FLAG) {
            bail!(
                "--sinks {:?} / --window {}: at most {MAX_CACHE_FLAG} each",
                self.sinks,
                self.window
            );
        }
        if self.max_context == Some(0) {
            bail!("--max-context must be at least 1 (got 0)");
        }
        if self.max_context.is_some_and(|m| m > 1 << 24) {
            bail!(
                "--max-context {} is too large (at most {})",
                self.max_context.unwrap_or(0),
                1 << 24
            );
        }
        if self.batch == 0 || self.batch > 4096 {
            bail!("--batch must be between 1 and 4096 (got {})", self.batch);
        }
        Ok(())
    }

    fn policy(&self, config: &Config) -> Result<Policy> {
        let sinks = match self.sinks[..] {
            [s] => s,
            _ => bail!(
                "--sinks takes one number here (a list is for `ppl --cache C`, the sink ablation)"
            ),
        };
        let p = match self.policy {
            PolicyKind::Sink => Policy::Sink {
                sinks,
                window: self.window,
            },
            PolicyKind::Window => Policy::Window {
                window: self.window,
            },
            PolicyKind::Dense => Policy::Dense {
                max: self.max_context.unwrap_or(config.context_len),
            },
            PolicyKind::Recompute => Policy::Recompute {
                window: self.window,
            },
        };
        p.validate()?;
        let slots = p.rule().slots();
        if slots > config.context_len {
            eprintln!(
                "warning: a cache of {slots} slots hands out positions up to {}, beyond the model's training context of {} tokens",
                slots - 1,
                config.context_len
            );
        }
        Ok(p)
    }
}

#[derive(Args)]
#[command(next_help_heading = "Sampling")]
struct SamplingArgs {
    /// Softmax temperature; 0 = greedy (always the most likely token) [default: 0 in generate, 0.3 in chat]
    #[arg(long, value_name = "T", allow_negative_numbers = true)]
    temperature: Option<f32>,
    /// Sample only among the K most likely tokens; 0 = off [default: 40]
    #[arg(long, value_name = "K")]
    top_k: Option<usize>,
    /// Sample only among the most likely tokens whose probabilities add up to P, in (0, 1]; 1 = off [default: 0.9]
    #[arg(long, value_name = "P", allow_negative_numbers = true)]
    top_p: Option<f32>,
    /// Penalize the last 64 tokens: positive logits are divided by R, negative ones multiplied; 1 = off [default: 1 in generate, 1.1 in chat]
    #[arg(long, value_name = "R", allow_negative_numbers = true)]
    repetition_penalty: Option<f32>,
    /// Random seed; the same seed and settings give the same text [default: from the clock, printed on stderr]
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
}

impl SamplingArgs {
    fn config(&self, temperature: f32, repetition_penalty: f32) -> Result<SamplingConfig> {
        let seed = self.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
        let c = SamplingConfig {
            temperature: self.temperature.unwrap_or(temperature),
            top_k: self.top_k.unwrap_or(40),
            top_p: self.top_p.unwrap_or(0.9),
            repetition_penalty: self.repetition_penalty.unwrap_or(repetition_penalty),
            seed,
        };
        c.validate()?;
        Ok(c)
    }
}

#[derive(Args)]
struct GenerateArgs {
    /// The text to continue
    #[arg(long, short)]
    prompt: String,
    /// Most tokens to generate
    #[arg(long, short = 'n', value_name = "N", default_value_t = 128)]
    max_tokens: usize,
    /// Wrap the prompt in the model's chat template as a user message (for instruct models)
    #[arg(long)]
    chat: bool,
    /// System message for --chat
    #[arg(long, value_name = "TEXT", requires = "chat")]
    system: Option<String>,
    /// Keep generating past end-of-text and end-of-turn tokens, up to --max-tokens
    #[arg(long)]
    ignore_eos: bool,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    cache: CacheArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
}

#[derive(Args)]
#[command(
    after_help = "Ctrl-C while a reply is being written stops that reply after the token in \
flight; what was shown of it stays in the conversation and the chat goes on. Ctrl-C at the prompt \
quits with exit status 130 (as for any program stopped by Ctrl-C); /quit or the end of input quits \
with status 0."
)]
struct ChatArgs {
    /// System message that opens the conversation (the template's default if omitted)
    #[arg(long, value_name = "TEXT")]
    system: Option<String>,
    /// Most tokens per reply
    #[arg(long, short = 'n', value_name = "N", default_value_t = 512)]
    max_tokens: usize,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    cache: CacheArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
}

#[derive(Args)]
struct PplArgs {
    /// UTF-8 text file to evaluate (tokenized without BOS)
    #[arg(long, value_name = "FILE")]
    text: PathBuf,
    /// Evaluate the first N tokens; 0 = the whole file
    #[arg(long, value_name = "N", default_value_t = 0)]
    tokens: usize,
    /// Tokens per GPU block; 1 = token by token (the paper's protocol). Every chunk size gives
    /// the same result up to rounding; the recompute policy always goes token by token. A list
    /// (128,1) evaluates each in turn in one run and compares their speed
    #[arg(long, value_name = "C", default_value = "64", value_delimiter = ',')]
    chunk: Vec<usize>,
    /// Cache size S+W for the sink ablation: each value of --sinks gets the window C - S
    #[arg(long = "cache", value_name = "C")]
    cache_slots: Option<usize>,
    /// Draw the NLL per token (a moving average) against the token index into this SVG file
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
    /// Moving-average window of --plot, in tokens [default: about a fiftieth of the run]
    #[arg(long, value_name = "N")]
    smooth: Option<usize>,
    /// Logarithmic y axis in --plot
    #[arg(long)]
    log_y: bool,
    /// Print one JSON object instead of the text report
    #[arg(long)]
    json: bool,
    /// Also write every token's negative log-likelihood to FILE as `index,nll` lines
    #[arg(long, value_name = "FILE")]
    csv: Option<PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    cache: CacheArgs,
}

#[derive(Args)]
struct CompareArgs {
    /// UTF-8 text file to evaluate (tokenized without BOS)
    #[arg(long, value_name = "FILE")]
    text: PathBuf,
    /// Evaluate the first N tokens; 0 = the whole file
    #[arg(long, value_name = "N", default_value_t = 2000)]
    tokens: usize,
    /// Cache size C: window C, recompute C, sink S+(C-S)
    #[arg(long, value_name = "C", default_value_t = 128)]
    cache: usize,
    /// Attention sinks of the sink policy
    #[arg(long, value_name = "S", default_value_t = 4)]
    sinks: usize,
    /// Targets evaluated under recompute (each re-runs the model over C tokens), starting
    /// right after the cache filled; 0 = skip recompute
    #[arg(long, value_name = "K", default_value_t = 64)]
    recompute_tokens: usize,
    /// Targets evaluated under dense attention, from the start [default: the model's context length]
    #[arg(long, value_name = "N")]
    dense_tokens: Option<usize>,
    /// Tokens per GPU block for dense, window and sink (exact for any size)
    #[arg(long, value_name = "N", default_value_t = 64)]
    chunk: usize,
    /// Write one SVG with a line per policy (moving average of the NLL)
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
    /// Write the table and every run's numbers as JSON
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write the table as markdown
    #[arg(long, value_name = "FILE")]
    md: Option<PathBuf>,
    /// Moving-average window of --plot, in tokens [default: about a fiftieth of the run]
    #[arg(long, value_name = "N")]
    smooth: Option<usize>,
    /// Logarithmic y axis in --plot
    #[arg(long)]
    log_y: bool,
    #[command(flatten)]
    model: ModelArgs,
}

#[derive(Args)]
struct BenchArgs {
    /// Prompt length of the prefill measurement
    #[arg(long, value_name = "N", default_value_t = 512)]
    prompt_tokens: usize,
    /// Greedy tokens of the decode measurement
    #[arg(long, value_name = "N", default_value_t = 128)]
    decode_tokens: usize,
    /// Stream positions at which the per-token latency of the sink cache is measured
    #[arg(
        long,
        value_name = "N,N,..",
        default_value = "1000,10000,100000",
        value_delimiter = ','
    )]
    positions: Vec<u64>,
    /// Decode steps timed at each position (median and p95 are reported)
    #[arg(long, value_name = "N", default_value_t = 32)]
    latency_tokens: usize,
    /// Reach each position without computing the tokens before it. The per-token work depends
    /// only on the cache's size, so the timing is the same; use it where streaming 100,000
    /// tokens first would take too long (software GPUs). Reported as "fast-forward"
    #[arg(long)]
    fast_forward: bool,
    /// Tokens timed under recompute with a window of S+W (each re-runs the model over S+W
    /// tokens); 0 = skip
    #[arg(long, value_name = "N", default_value_t = 2)]
    recompute_tokens: usize,
    /// Attention sinks of the sink cache
    #[arg(long, value_name = "S", default_value_t = 4)]
    sinks: usize,
    /// Ring of the sink cache
    #[arg(long, value_name = "W", default_value_t = 1020)]
    window: usize,
    /// Tokens per GPU block when prefilling and streaming
    #[arg(long, value_name = "N", default_value_t = 64)]
    batch: usize,
    /// Also time each kind of kernel in one decode step and one prefill block (GPU timestamps)
    #[arg(long)]
    profile: bool,
    /// Print one JSON object instead of the text report
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    model: ModelArgs,
}

#[derive(Args)]
struct InfoArgs {
    /// Also describe this model: a GGUF file, a Hugging Face checkpoint directory or repo id
    #[arg(long, value_name = "MODEL")]
    model: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum DTypeArg {
    /// 4 bytes a weight; exact for every GGUF type sinkstream reads
    F32,
    /// 2 bytes a weight, 10-bit mantissa: rounds quantised weights slightly
    F16,
    /// 2 bytes a weight, 7-bit mantissa: rounds more, never overflows
    Bf16,
}

#[derive(Args)]
struct ConvertArgs {
    /// The model to convert: a .gguf file (a Hugging Face directory or repo id also works, to
    /// change its dtype)
    #[arg(value_name = "MODEL")]
    model: PathBuf,
    /// The checkpoint directory to create; it must not exist yet. The files are written into a
    /// hidden directory beside it and renamed at the end, so a failed or interrupted conversion
    /// leaves nothing under this name
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Element type of the written weights
    #[arg(long, value_enum, default_value = "f32")]
    dtype: DTypeArg,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Generate(a) => generate(a),
        Command::Chat(a) => chat(a),
        Command::Ppl(a) => ppl(a),
        Command::Compare(a) => compare(a),
        Command::Info(a) => info(a),
        Command::Bench(a) => bench(a),
        Command::Convert(a) => convert(a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // {:#} puts the whole chain of causes on one line.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The --model argument, or the default model next to us: the current directory first, then the
/// source tree this binary was built from (so `target/release/sinkstream` works from anywhere).
fn model_path(arg: &ModelArgs) -> Result<PathBuf> {
    let candidates = match &arg.model {
        Some(p) => vec![p.clone()],
        None => vec![
            PathBuf::from(DEFAULT_MODEL),
            Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_MODEL),
        ],
    };
    if let Some(p) = candidates.iter().find(|p| p.exists()) {
        return Ok(p.clone());
    }
    // Not a path here: a repo id such as HuggingFaceTB/SmolLM2-135M-Instruct?
    if let Some(id) = arg.model.as_ref().and_then(|p| p.to_str()) {
        if hub::is_repo_id(id) {
            let h = hub::Hub::from_env()?;
            return Ok(h.resolve(id)?);
        }
    }
    let looked: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
    bail!(
        "model not found ({}); run scripts/fetch-model.sh to download the default model, or pass --model with a .gguf file, a Hugging Face checkpoint directory or a repo id such as HuggingFaceTB/SmolLM2-135M-Instruct",
        looked.join(", ")
    )
}

/// What every command that runs the model needs; the host copy of the weights is dropped once
/// they are on the GPU.
struct Loaded {
    config: Config,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    stop: Vec<u32>,
    gpu_model: Arc<GpuModel>,
    path: PathBuf,
}

fn load(arg: &ModelArgs) -> Result<Loaded> {
    let path = model_path(arg)?;
    let t0 = Instant::now();
    let model = Model::load(&path)?;
    let stop = model.stop_tokens();
    let gpu = Arc::new(Gpu::new_blocking()?);
    let gpu_model = Arc::new(GpuModel::new(gpu.clone(), &model.config, &model.weights)?);
    let Model {
        config,
        tokenizer,
        chat_template,
        ..
    } = model;
    eprintln!(
        "sinkstream: {} on {} in {:.1} s",
        path.display(),
        gpu.describe(),
        t0.elapsed().as_secs_f64()
    );
    Ok(Loaded {
        config,
        tokenizer,
        template: chat_template,
        stop,
        gpu_model,
        path,
    })
}

/// Writes to stdout and flushes, so text shows up as it is generated. Returns false once the
/// reader has gone away (`| head`): the caller stops quietly instead of failing.
fn emit(out: &mut impl Write, text: &str) -> Result<bool> {
    if text.is_empty() {
        return Ok(true);
    }
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e).context("writing to stdout"),
    }
}

fn stats_line(
    t: &Timing,
    s: &Stats,
    policy: Policy,
    stop: Option<StopReason>,
    tok: &Tokenizer,
) -> String {
    let why = match stop {
        Some(StopReason::StopToken(id)) => format!("stopped at {:?}", tok.token_str(id)),
        Some(StopReason::MaxTokens) => "reached --max-tokens".into(),
        Some(StopReason::Error) => "failed".into(),
        None => "cut short".into(),
    };
    format!(
        "sinkstream: {} tokens in {:.2} s ({:.2} tokens/s), prefill {} tokens at {:.1} tokens/s, cache {}/{} slots, policy {policy}, {why}",
        t.generated_tokens,
        t.generate_seconds,
        t.tokens_per_second(),
        t.prompt_tokens,
        t.prompt_tokens_per_second(),
        s.cache_fill,
        s.cache_slots,
    )
}

fn generate(a: GenerateArgs) -> Result<()> {
    if a.prompt.is_empty() {
        bail!("the prompt is empty: pass some text with --prompt");
    }
    if a.max_tokens == 0 {
        bail!("--max-tokens must be at least 1");
    }
    a.cache.check()?;
    let sampling = a.sampling.config(0.0, 1.0)?;
    let m = load(&a.model)?;
    let policy = a.cache.policy(&m.config)?;
    let text = if a.chat {
        let mut msgs: Vec<Message> = a.system.iter().map(|s| Message::new("system", s)).collect();
        msgs.push(Message::new("user", &a.prompt));
        m.template.render(&msgs, true)?
    } else {
        a.prompt.clone()
    };
    let ids = m.tokenizer.encode(&text)?;
    if ids.is_empty() {
        bail!("the prompt gives no tokens");
    }
    if sampling.temperature > 0.0 {
        eprintln!("sinkstream: sampling with seed {}", sampling.seed);
    }
    let session = Session::new(m.gpu_model.clone(), policy, a.cache.batch)?;
    let stop = if a.ignore_eos {
        Vec::new()
    } else {
        m.stop.clone()
    };
    let mut gen = Generator::new(session, Sampler::new(sampling)?, stop);
    gen.prompt(&ids)?;
    let mut out = std::io::stdout().lock();
    let mut stream = gen.stream(&m.tokenizer, a.max_tokens);
    let mut open = true;
    for piece in stream.by_ref() {
        if !emit(&mut out, &piece?)? {
            open = false;
            break;
        }
    }
    if open {
        let rest = stream.finish();
        emit(&mut out, &rest)?;
        if out.is_terminal() {
            emit(&mut out, "\n")?;
        }
    }
    let stop = stream.stop_reason();
    drop(stream);
    eprintln!(
        "{}",
        stats_line(
            &gen.timing(),
            &gen.session().stats(),
            policy,
            stop,
            &m.tokenizer
        )
    );
    Ok(())
}

/// Ctrl-C: at the prompt it quits (status 130); from sending a message to the end of its reply it
/// only raises INTERRUPTED, so the reply stops after the token in flight and the session (whose
/// feeds are never cut in half, and whose reply so far is closed by the next turn) stays usable.
static IN_REPLY: AtomicU8 = AtomicU8::new(0);
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn chat(a: ChatArgs) -> Result<()> {
    if a.max_tokens == 0 {
        bail!("--max-tokens must be at least 1");
    }
    a.cache.check()?;
    // SmolLM2's model card suggests a low temperature; the penalty keeps a small model out of loops.
    let sampling = a.sampling.config(0.3, 1.1)?;
    let m = load(&a.model)?;
    let policy = a.cache.policy(&m.config)?;
    let session = Session::new(m.gpu_model.clone(), policy, a.cache.batch)?;
    let gen = Generator::new(session, Sampler::new(sampling)?, m.stop.clone());
    let mut chat = Chat::new(gen, m.template.clone(), a.system.clone());
    ctrlc::set_handler(|| {
        if IN_REPLY.load(Ordering::SeqCst) == 1 {
            INTERRUPTED.store(true, Ordering::SeqCst);
        } else {
            eprintln!();
            std::process::exit(130);
        }
    })
    .context("installing the Ctrl-C handler")?;
    let interactive = std::io::stdin().is_terminal();
    let seed = if sampling.temperature > 0.0 {
        format!(", seed {}", sampling.seed)
    } else {
        String::new()
    };
    eprintln!(
        "sinkstream: chat with {} (policy {policy}{seed}); /reset, /stats, /quit; Ctrl-C stops a reply",
        m.path.display()
    );
    let mut out = std::io::stdout();
    let mut stdin = std::io::stdin().lock();
    let mut line = String::new();
    loop {
        if interactive {
            emit(&mut out, "> ")?;
        }
        line.clear();
        if stdin.read_line(&mut line).context("reading stdin")? == 0 {
            if interactive {
                emit(&mut out, "\n")?;
            }
            return Ok(());
        }
        let msg = line.trim_end_matches(['\n', '\r']);
        match msg.trim() {
            "" => continue,
            "/quit" | "/exit" => return Ok(()),
            "/reset" => {
                chat.reset();
                eprintln!("(conversation forgotten; the cache is empty)");
                continue;
            }
            "/stats" => {
                let g = chat.generator();
                let s = g.session().stats();
                let t = g.timing();
                eprintln!(
                    "tokens streamed {} | cache {}/{} slots ({} sinks + {} window), write head {} | last reply {} tokens at {:.2} tokens/s, prompt {:.1} tokens/s | GPU memory {:.1} MiB",
                    s.tokens_streamed,
                    s.cache_fill,
                    s.cache_slots,
                    s.sinks,
                    s.window,
                    s.write_head,
                    t.generated_tokens,
                    t.tokens_per_second(),
                    t.prompt_tokens_per_second(),
                    s.gpu_bytes as f64 / (1 << 20) as f64
                );
                continue;
            }
            s if s.starts_with('/') => {
                eprintln!("commands: /reset (forget the conversation), /stats, /quit");
                continue;
            }
            _ => {}
        }
        INTERRUPTED.store(false, Ordering::SeqCst);
        IN_REPLY.store(1, Ordering::SeqCst);
        if let Err(e) = chat.send(&m.tokenizer, msg) {
            IN_REPLY.store(0, Ordering::SeqCst);
            eprintln!("error: {e}");
            continue;
        }
        let mut stream = chat.reply(&m.tokenizer, a.max_tokens);
        let mut failed = false;
        while !INTERRUPTED.load(Ordering::SeqCst) {
            match stream.next() {
                Some(Ok(piece)) => {
                    emit(&mut out, &piece)?;
                }
                Some(Err(e)) => {
                    eprintln!("\nerror: {e}");
                    failed = true;
                    break;
                }
                None => break,
            }
        }
        // The reply is over: from here Ctrl-C quits again. Done before anything is printed so
        // that a Ctrl-C sent after seeing the end of a reply always finds the prompt.
        IN_REPLY.store(0, Ordering::SeqCst);
        let interrupted = INTERRUPTED.load(Ordering::SeqCst);
        if !failed {
            let rest = stream.finish();
            emit(&mut out, &rest)?;
        }
        if interrupted {
            emit(&mut out, " [interrupted]")?;
        }
        emit(&mut out, "\n")?;
    }
}

/// Writes `write` to a temporary file beside `path`, then renames it into place, so a reader
/// never sees a half-written file.
fn write_atomic(
    path: &Path,
    flag: &str,
    write: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> std::io::Result<()>,
) -> Result<()> {
    let name = path
        .file_name()
        .with_context(|| format!("{flag} {}: not a file name", path.display()))?;
    let tmp = path.with_file_name(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let run = || -> std::io::Result<()> {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        write(&mut w)?;
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    run().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow::anyhow!("writing {}: {e}", path.display())
    })
}

/// Writes `index,nll` lines (or `index,<run>,<run>...` for several runs over the same targets).
fn write_csv(path: &Path, runs: &[StreamEval], names: &[String]) -> Result<()> {
    write_atomic(path, "--csv", |w| {
        if runs.len() == 1 {
            writeln!(w, "index,nll")?;
        } else {
            writeln!(w, "index,{}", names.join(","))?;
        }
        let first = runs[0].targets.start;
        for k in 0..runs[0].nll.len() {
            write!(w, "{}", first + k)?;
            for r in runs {
                write!(w, ",{:.6}", r.nll[k])?;
            }
            writeln!(w)?;
        }
        Ok(())
    })
}

fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{} is not UTF-8 text (invalid byte at offset {})",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })?;
    if text.is_empty() {
        bail!("{} is empty", path.display());
    }
    Ok(text)
}

/// The moving-average window of a plot: the flag, or about a fiftieth of the run.
fn smooth_window(flag: Option<usize>, targets: usize) -> usize {
    flag.unwrap_or((targets / 50).clamp(8, 1000)).max(1)
}

/// One SVG: the moving average of each run's NLL against the token index.
fn plot_runs(
    path: &Path,
    title: &str,
    runs: &[StreamEval],
    names: &[String],
    smooth: usize,
    log_y: bool,
) -> Result<()> {
    let series: Vec<Series> = runs
        .iter()
        .zip(names)
        .map(|(r, name)| Series {
            name: if r.targets.start == 1 {
                format!("{name} (ppl {:.2})", r.ppl())
            } else {
                format!(
                    "{name} (ppl {:.2} on t={}..{})",
                    r.ppl(),
                    r.targets.start,
                    r.targets.end - 1
                )
            },
            points: eval::smoothed_series(r, smooth, 2000),
        })
        .collect();
    let spec = PlotSpec {
        title: title.to_string(),
        x_label: "token index".into(),
        y_label: format!("NLL, moving average of {smooth} tokens (nats)"),
        log_y,
        ..PlotSpec::default()
    };
    line_plot(path, &spec, &series).with_context(|| format!("--plot {}", path.display()))
}

/// Progress over tokens: a bar on a terminal; where stderr is a file or a pipe (a long run under
/// nohup), a plain line every 60 seconds instead (SINKSTREAM_PROGRESS_SECONDS), so that a log
/// shows how far the run is.
struct Progress {
    bar: ProgressBar,
    len: u64,
    every: f64,
    plain: Option<std::cell::Cell<(Instant, u64, Instant)>>,
}

impl Progress {
    fn inc(&self, k: u64) {
        self.bar.inc(k);
        let Some(state) = &self.plain else { return };
        let (start, done, last) = state.get();
        let done = done + k;
        let now = Instant::now();
        if now.duration_since(last).as_secs_f64() >= self.every {
            let secs = now.duration_since(start).as_secs_f64();
            let rate = done as f64 / secs.max(1e-9);
            let eta = (self.len.saturating_sub(done)) as f64 / rate.max(1e-9);
            eprintln!(
                "sinkstream: {done}/{} tokens, {rate:.1} tokens/s, {:.0} s elapsed, eta {:.0} s",
                self.len, secs, eta
            );
            state.set((start, done, now));
        } else {
            state.set((start, done, last));
        }
    }

    fn suspend(&self, f: impl FnOnce()) {
        self.bar.suspend(f)
    }

    fn finish(&self) {
        self.bar.finish_and_clear()
    }
}

fn progress_bar(len: u64) -> Progress {
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{bar:40} {pos}/{len} tokens, {per_sec}, eta {eta}")
    {
        bar.set_style(style);
    }
    let now = Instant::now();
    let plain = (!std::io::stderr().is_terminal()).then(|| std::cell::Cell::new((now, 0, now)));
    let every = std::env::var("SINKSTREAM_PROGRESS_SECONDS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| *v >= 0.0)
        .unwrap_or(60.0);
    Progress {
        bar,
        len,
        every,
        plain,
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

fn ppl(a: PplArgs) -> Result<()> {
    if a.chunk.is_empty() || a.chunk.iter().any(|&c| c == 0 || c > 4096) {
        bail!("--chunk must be between 1 and 4096 (got {:?})", a.chunk);
    }
    a.cache.check()?;
    if a.chunk.len() > 1 && a.cache.sinks.len() > 1 {
        bail!(
            "give a list to --sinks (the ablation) or to --chunk (the speed comparison), not both"
        );
    }
    if a.cache.sinks.len() > 1 && a.cache_slots.is_none() {
        bail!("a list of --sinks is the sink ablation: give the constant cache size with --cache C (each run gets the window C - S)");
    }
    if a.cache_slots.is_some() && !matches!(a.cache.policy, PolicyKind::Sink) {
        bail!("--cache is for the sink policy (each run gets the window C - S)");
    }
    let text = read_text(&a.text)?;
    let m = load(&a.model)?;
    let policies = match a.cache_slots {
        Some(c) => eval::ablation_policies(&a.cache.sinks, c)?,
        None => vec![a.cache.policy(&m.config)?],
    };
    let mut ids = m.tokenizer.encode(&text)?;
    if a.tokens > 0 {
        ids.truncate(a.tokens);
    }
    let n = ids.len();
    if n < 2 {
        bail!(
            "{} gives {n} token(s); perplexity needs at least 2",
            a.text.display()
        );
    }
    // The last token is only ever a target, never fed.
    let fed = n - 1;
    for p in &policies {
        if let Policy::Dense { max } = *p {
            if fed > max {
                bail!("the dense policy holds {max} tokens but {fed} must be fed; raise --max-context or use --policy sink");
            }
        }
    }
    let mut plan: Vec<(Policy, usize)> = Vec::new();
    for &p in &policies {
        for &c in &a.chunk {
            plan.push((p, c));
        }
    }
    let bar = progress_bar((fed * plan.len()) as u64);
    let mut runs = Vec::new();
    for &(policy, chunk) in &plan {
        let opts = EvalOptions {
            chunk,
            recompute_batch: a.cache.batch,
            memory_every: (fed / 10).max(1),
        };
        runs.push(eval::evaluate(
            &m.gpu_model,
            policy,
            &ids,
            1..n,
            &opts,
            &mut |k| bar.inc(k as u64),
        )?);
    }
    bar.finish();
    let speed = a.chunk.len() > 1;
    let names: Vec<String> = runs
        .iter()
        .map(|r| {
            if speed {
                format!("{} chunk {}", r.label(), r.chunk)
            } else {
                r.label()
            }
        })
        .collect();
    if let Some(path) = &a.csv {
        write_csv(path, &runs, &names)?;
    }
    if let Some(path) = &a.plot {
        let title = format!(
            "{}: {} tokens, SmolLM2 via sinkstream",
            a.text.file_name().unwrap_or_default().to_string_lossy(),
            n
        );
        plot_runs(
            path,
            &title,
            &runs,
            &names,
            smooth_window(a.smooth, fed),
            a.log_y,
        )?;
    }
    if runs.len() == 1 {
        return ppl_report_one(&a, &m, n, &runs[0]);
    }
    // Several runs: the ablation or the speed comparison, as a table.
    let first = &runs[0];
    let rows: Vec<serde_json::Value> = runs
        .iter()
        .map(|r| {
            let mut j = r.summary_json();
            let diff = r
                .nll
                .iter()
                .zip(&first.nll)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f64::max);
            j["max_abs_nll_diff_vs_first"] = serde_json::json!(diff);
            j["speedup_vs_last"] =
                serde_json::json!(r.tokens_per_second() / runs[runs.len() - 1].tokens_per_second());
            j
        })
        .collect();
    if a.json {
        let j = serde_json::json!({
            "file": a.text.display().to_string(),
            "model": m.path.display().to_string(),
            "tokens": n,
            "predicted": fed,
            "mode": if speed { "chunk comparison" } else { "sink ablation" },
            "runs": rows,
        });
        println!("{j}");
    } else {
        println!("file {}, {n} tokens ({fed} predicted)\n", a.text.display());
        println!(
            "| run | cache slots | ppl | ppl after fill | tokens/s | max abs NLL diff vs first |"
        );
        println!("|---|---|---|---|---|---|");
        for (r, (j, name)) in runs.iter().zip(rows.iter().zip(&names)) {
            let after = r
                .ppl_after_fill()
                .map_or("-".to_string(), |p| format!("{p:.3}"));
            println!(
                "| {name} | {} | {:.3} | {after} | {:.2} | {:.2e} |",
                r.policy.rule().slots(),
                r.ppl(),
                r.tokens_per_second(),
                j["max_abs_nll_diff_vs_first"].as_f64().unwrap_or(f64::NAN)
            );
        }
        if speed {
            let (f, l) = (first, &runs[runs.len() - 1]);
            println!(
                "\nchunk {} is {:.2}x as fast as chunk {}",
                f.chunk,
                f.tokens_per_second() / l.tokens_per_second(),
                l.chunk
            );
        }
    }
    Ok(())
}

fn ppl_report_one(a: &PplArgs, m: &Loaded, n: usize, r: &StreamEval) -> Result<()> {
    let policy = r.policy;
    let rule = policy.rule();
    let slots = rule.slots();
    let ppl = r.ppl();
    let ppl_after = r.ppl_after_fill();
    let after = r.nll_in(slots + 1..usize::MAX).len();
    let tps = r.tokens_per_second();
    let seconds = r.seconds;
    let chunk = r.chunk;
    let (m0, m1) = r
        .memory_start_end()
        .context("the evaluation recorded no memory samples")?;
    let segments = eval::segment_ppl(1, &r.nll, r.nll.len().div_ceil(10).max(1));
    if a.json {
        let mut j = serde_json::json!({
            "file": a.text.display().to_string(),
            "model": m.path.display().to_string(),
            "tokens": n,
            "predicted": r.nll.len(),
            "ppl": ppl,
            "mean_nll": r.mean_nll(),
            "ppl_after_fill": ppl_after,
            "tokens_after_fill": after,
            "seconds": seconds,
            "tokens_per_second": tps,
            "policy": policy.name(),
            "sinks": rule.sinks,
            "window": rule.window,
            "cache_slots": slots,
            "chunk": chunk,
            "gpu_bytes_start": m0.gpu_bytes,
            "gpu_bytes_end": m1.gpu_bytes,
            "rss_start": m0.rss_bytes,
            "rss_end": m1.rss_bytes,
            "segments": segments
                .iter()
                .map(|&(s, e, p)| serde_json::json!({"first": s, "last": e - 1, "ppl": p}))
                .collect::<Vec<_>>(),
        });
        j["memory"] = r.summary_json()["memory"].clone();
        println!("{j}");
    } else {
        println!("file              {}", a.text.display());
        println!("tokens            {n} ({} predicted)", r.nll.len());
        println!("policy            {policy} ({slots} slots)");
        println!("perplexity        {ppl:.4}");
        match ppl_after {
            Some(p) => println!("after cache fill  {p:.4} (the {after} tokens past {slots})"),
            None => println!("after cache fill  n/a (the cache of {slots} slots never filled)"),
        }
        println!("time              {seconds:.2} s ({tps:.1} tokens/s, chunks of {chunk})");
        let rss = |b: Option<u64>| b.map_or("n/a".to_string(), |b| format!("{:.1} MiB", mib(b)));
        println!(
            "memory            GPU {:.1} -> {:.1} MiB, RSS {} -> {}",
            mib(m0.gpu_bytes),
            mib(m1.gpu_bytes),
            rss(m0.rss_bytes),
            rss(m1.rss_bytes)
        );
    }
    Ok(())
}

fn compare(a: CompareArgs) -> Result<()> {
    if a.chunk == 0 || a.chunk > 4096 {
        bail!("--chunk must be between 1 and 4096 (got {})", a.chunk);
    }
    if a.cache < 2 || a.cache > MAX_CACHE_FLAG {
        bail!(
            "--cache must be between 2 and {MAX_CACHE_FLAG} (got {})",
            a.cache
        );
    }
    if a.sinks >= a.cache {
        bail!(
            "--sinks {} leaves no window in a cache of {}",
            a.sinks,
            a.cache
        );
    }
    let text = read_text(&a.text)?;
    let m = load(&a.model)?;
    let mut ids = m.tokenizer.encode(&text)?;
    if a.tokens > 0 {
        ids.truncate(a.tokens);
    }
    let n = ids.len();
    if n < 2 {
        bail!(
            "{} gives {n} token(s); perplexity needs at least 2",
            a.text.display()
        );
    }
    let dense_limit = a.dense_tokens.unwrap_or(m.config.context_len);
    let plan = eval::compare_plan(n, a.cache, a.sinks, a.recompute_tokens, dense_limit)?;
    let total: usize = plan.iter().map(|p| p.targets.len()).sum();
    let bar = progress_bar(total as u64);
    let opts = EvalOptions {
        chunk: a.chunk,
        recompute_batch: a.cache.min(256),
        memory_every: 0,
    };
    let mut runs = Vec::new();
    for p in &plan {
        let r = eval::evaluate(
            &m.gpu_model,
            p.policy,
            &ids,
            p.targets.clone(),
            &opts,
            &mut |k| bar.inc(k as u64),
        )?;
        bar.suspend(|| {
            eprintln!(
                "sinkstream: {} on t={}..{}: ppl {:.3} in {:.1} s ({:.2} tokens/s)",
                r.label(),
                r.targets.start,
                r.targets.end - 1,
                r.ppl(),
                r.seconds,
                r.tokens_per_second()
            )
        });
        runs.push(r);
    }
    bar.finish();
    let name = a.text.file_name().unwrap_or_default().to_string_lossy();
    let table = eval::table_markdown(&runs);
    println!("{name}, {n} tokens, cache {} slots\n\n{table}", a.cache);
    if let Some(path) = &a.md {
        let head = format!(
            "{name}, {n} tokens ({} predicted), cache {} slots, model {}\n\n",
            n - 1,
            a.cache,
            m.path.file_name().unwrap_or_default().to_string_lossy()
        );
        write_atomic(path, "--md", |w| {
            w.write_all(head.as_bytes())?;
            w.write_all(table.as_bytes())
        })?;
    }
    if let Some(path) = &a.json {
        let mut j = eval::table_json(&runs);
        j["file"] = serde_json::json!(a.text.display().to_string());
        j["model"] = serde_json::json!(m.path.display().to_string());
        j["tokens"] = serde_json::json!(n);
        j["cache"] = serde_json::json!(a.cache);
        j["chunk"] = serde_json::json!(a.chunk);
        let s = serde_json::to_string_pretty(&j)?;
        write_atomic(path, "--json", |w| w.write_all(s.as_bytes()))?;
    }
    if let Some(path) = &a.plot {
        let names: Vec<String> = runs.iter().map(|r| r.label()).collect();
        let title = format!(
            "{name}: {n} tokens, cache {} slots, SmolLM2 via sinkstream",
            a.cache
        );
        plot_runs(
            path,
            &title,
            &runs,
            &names,
            smooth_window(a.smooth, n - 1),
            a.log_y,
        )?;
    }
    Ok(())
}

fn bench(a: BenchArgs) -> Result<()> {
    if a.prompt_tokens == 0 || a.decode_tokens == 0 || a.latency_tokens == 0 {
        bail!("--prompt-tokens, --decode-tokens and --latency-tokens must be at least 1");
    }
    if a.window == 0 || a.batch == 0 || a.batch > 4096 {
        bail!("--window must be at least 1 and --batch between 1 and 4096");
    }
    let m = load(&a.model)?;
    let o = sinkstream::bench::BenchOptions {
        prompt_tokens: a.prompt_tokens,
        decode_tokens: a.decode_tokens,
        positions: a.positions,
        latency_tokens: a.latency_tokens,
        sinks: a.sinks,
        window: a.window,
        batch: a.batch,
        fast_forward: a.fast_forward,
        recompute_tokens: a.recompute_tokens,
        profile: a.profile,
    };
    let r = sinkstream::bench::run(&m.gpu_model, &o, &mut |line| eprintln!("bench: {line}"))?;
    if a.json {
        println!("{}", r.to_json());
    } else {
        print!("{}", r.to_text());
    }
    Ok(())
}

fn info(a: InfoArgs) -> Result<()> {
    let gpu = Gpu::new_blocking()?;
    let i = &gpu.info;
    println!("adapter      {}", i.name);
    println!("backend      {:?}", i.backend);
    println!("device type  {:?}", i.device_type);
    println!("driver       {} {}", i.driver, i.driver_info);
    println!("vendor       {:#06x}, device {:#06x}", i.vendor, i.device);
    println!(
        "subgroups    {} (sizes {}..{}){}",
        if gpu.subgroups { "used" } else { "not used" },
        i.subgroup_min_size,
        i.subgroup_max_size,
        if gpu.subgroups || !gpu.features.contains(wgpu::Features::SUBGROUP) {
            ""
        } else {
            " (SINKSTREAM_SUBGROUPS=0, or subgroups smaller than 8)"
        }
    );
    let l = &gpu.limits;
    println!("device limits (as sinkstream requests them):");
    println!(
        "  max_storage_buffer_binding_size      {}",
        l.max_storage_buffer_binding_size
    );
    println!(
        "  max_buffer_size                      {}",
        l.max_buffer_size
    );
    println!(
        "  max_storage_buffers_per_shader_stage {}",
        l.max_storage_buffers_per_shader_stage
    );
    println!(
        "  max_compute_workgroup_size           {} x {} x {}",
        l.max_compute_workgroup_size_x,
        l.max_compute_workgroup_size_y,
        l.max_compute_workgroup_size_z
    );
    println!(
        "  max_compute_invocations_per_workgroup {}",
        l.max_compute_invocations_per_workgroup
    );
    println!(
        "  max_compute_workgroups_per_dimension {}",
        l.max_compute_workgroups_per_dimension
    );
    println!(
        "  max_compute_workgroup_storage_size   {}",
        l.max_compute_workgroup_storage_size
    );
    println!("adapter features:");
    for (name, f) in [
        ("SHADER_F16", wgpu::Features::SHADER_F16),
        ("SUBGROUP", wgpu::Features::SUBGROUP),
        ("TIMESTAMP_QUERY", wgpu::Features::TIMESTAMP_QUERY),
    ] {
        println!(
            "  {name:<16} {}",
            if gpu.features.contains(f) {
                "yes"
            } else {
                "no"
            }
        );
    }
    if let Some(path) = &a.model {
        let path = model_path(&ModelArgs {
            model: Some(path.clone()),
        })?;
        let m = Model::load(&path)?;
        let c = &m.config;
        let params: usize = std::iter::once(&m.weights.embed)
            .chain(m.weights.lm_head.iter())
            .chain(
                m.weights
                    .layers
                    .iter()
                    .flat_map(|l| [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down]),
            )
            .map(|t| t.rows * t.cols)
            .sum();
        println!("model        {}", path.display());
        let format = if path.is_dir() || path.extension().is_some_and(|e| e != "gguf") {
            "Hugging Face checkpoint (safetensors, tokenizer.json)"
        } else {
            "GGUF"
        };
        println!("  format           {format}");
        let dtype = m
            .weights
            .layers
            .first()
            .map_or("-".to_string(), |l| format!("{:?}", l.wq.dtype));
        println!(
            "  parameters       {:.1} M in matrices, stored as {dtype}",
            params as f64 / 1e6
        );
        println!("  vocab            {}", c.vocab);
        println!("  dim              {}", c.dim);
        println!("  layers           {}", c.n_layers);
        println!(
            "  heads            {} query, {} key/value, head dim {}",
            c.n_heads, c.n_kv_heads, c.head_dim
        );
        println!("  ffn dim          {}", c.ffn_dim);
        println!(
            "  rope theta       {} ({:?} pairs)",
            c.rope_theta, c.rope_layout
        );
        println!("  norm eps         {}", c.norm_eps);
        println!("  context length   {}", c.context_len);
        let per_slot = c.n_layers * 2 * c.kv_dim() * 4;
        println!(
            "  KV cache         {per_slot} bytes per slot; 4+1020 slots = {:.1} MiB",
            (per_slot * 1024) as f64 / (1 << 20) as f64
        );
        let stop: Vec<String> = m
            .stop_tokens()
            .iter()
            .map(|&id| format!("{id} {:?}", m.tokenizer.token_str(id)))
            .collect();
        println!("  stop tokens      {}", stop.join(", "));
        println!(
            "  tied LM head     {}",
            if m.weights.lm_head.is_none() {
                "yes"
            } else {
                "no"
            }
        );
        let biased = m.weights.layers.iter().any(|l| l.bq.is_some());
        println!("  q/k/v biases     {}", if biased { "yes" } else { "no" });
    }
    Ok(())
}

fn convert(a: ConvertArgs) -> Result<()> {
    // Fail on the output before spending seconds loading the model.
    if a.out.exists() {
        bail!(
            "{} already exists; remove it or choose another --out",
            a.out.display()
        );
    }
    let dtype = match a.dtype {
        DTypeArg::F32 => OutDType::F32,
        DTypeArg::F16 => OutDType::F16,
        DTypeArg::Bf16 => OutDType::BF16,
    };
    let path = model_path(&ModelArgs {
        model: Some(a.model.clone()),
    })?;
    let t0 = Instant::now();
    let m = Model::load(&path)?;
    let tmp = hf_convert::temp_dir_for(&a.out)?;
    // Ctrl-C: remove the partial output, so only a finished checkpoint is ever left behind.
    let cleanup = tmp.clone();
    ctrlc::set_handler(move || {
        let _ = std::fs::remove_dir_all(&cleanup);
        eprintln!();
        std::process::exit(130);
    })
    .context("installing the Ctrl-C handler")?;
    let total = hf_convert::weights_bytes(&m, dtype);
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes}, {bytes_per_sec}, eta {eta}")
    {
        bar.set_style(style);
    }
    hf_convert::write_dir(&m, dtype, &a.out, &|n| bar.inc(n))?;
    bar.finish_and_clear();
    eprintln!(
        "sinkstream: wrote {} ({} weights, {:.1} MB) from {} in {:.1} s",
        a.out.display(),
        dtype.torch_name(),
        total as f64 / 1e6,
        path.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
