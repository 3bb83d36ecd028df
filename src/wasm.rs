//! The browser API (wasm-bindgen): load a model from bytes or a URL, stream text from it with a
//! callback per piece, chat, change the cache and the sampling, read live statistics and the
//! cache's slot map, reset, and stop a generation in flight.
//!
//! This is the only browser-specific file: it drives the same `Session`, `Generator`, tokenizer
//! and chat template as the CLI through their async steps (`Session::feed` awaits the GPU).
//! `web/index.js` wraps it in a friendlier JavaScript API (async iterators) for the npm package.
//!
//! Concurrency: JavaScript may call any method while a generation is awaiting the GPU (`stop`,
//! `stats`, `cacheMap` are meant for exactly that). The state lives behind `Rc<Shared>` and the
//! running generation takes the `Generator` out of it, so no `RefCell` borrow is ever held across
//! an `await`; a second generation while one runs is a clear error, never a panic.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;

use js_sys::{Array, Function, Object, Promise, Reflect, Uint8Array};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::{future_to_promise, JsFuture};

use crate::cache::{CacheRule, Policy};
use crate::chat::ChatTemplate;
use crate::engine::{GpuModel, Session, Stats};
use crate::error::Error;
use crate::generate::{turn_text, Generator, Timing};
use crate::gpu::Gpu;
use crate::hf::{self, CheckpointFiles, MemoryFiles};
use crate::model::{Config, Model};
use crate::sampler::{Sampler, SamplingConfig};
use crate::tokenizer::{StreamDecoder, Tokenizer};

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_name = fetch, catch)]
    fn global_fetch(url: &str) -> Result<Promise, JsValue>;
    #[wasm_bindgen(js_namespace = performance, js_name = now)]
    fn performance_now() -> f64;
    #[wasm_bindgen(js_name = setTimeout)]
    fn set_timeout(f: &Function, ms: i32) -> JsValue;
}

/// Rust panics reach the console with their message and location, not as a bare "unreachable".
#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
}

/// The library's version (Cargo.toml).
#[wasm_bindgen]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

fn now_seconds() -> f64 {
    performance_now() / 1000.0
}

/// A JavaScript `Error` named "SinkstreamError" with the message.
fn js_error(msg: impl std::fmt::Display) -> JsValue {
    let e = js_sys::Error::new(&msg.to_string());
    e.set_name("SinkstreamError");
    e.into()
}

impl From<Error> for JsValue {
    fn from(e: Error) -> JsValue {
        js_error(e)
    }
}

/// The message of a thrown JavaScript value.
fn describe(v: &JsValue) -> String {
    if let Some(e) = v.dyn_ref::<js_sys::Error>() {
        return String::from(e.message());
    }
    v.as_string().unwrap_or_else(|| format!("{v:?}"))
}

/// Lets the browser paint (progress bars) between long synchronous steps.
async fn yield_now() {
    let p = Promise::new(&mut |resolve, _| {
        set_timeout(&resolve, 0);
    });
    let _ = JsFuture::from(p).await;
}

fn set(o: &Object, key: &str, v: impl Into<JsValue>) {
    let _ = Reflect::set(o, &JsValue::from_str(key), &v.into());
}

/// An options object from JavaScript: unknown keys are an error, so a typo never goes unnoticed.
struct Opts {
    obj: Option<Object>,
    what: &'static str,
}

impl Opts {
    fn new(v: &JsValue, what: &'static str, allowed: &[&str]) -> Result<Opts, JsValue> {
        if v.is_undefined() || v.is_null() {
            return Ok(Opts { obj: None, what });
        }
        if !v.is_object() || v.is_function() || Array::is_array(v) {
            return Err(js_error(format!("{what} must be an object")));
        }
        let obj: Object = v.clone().unchecked_into();
        for k in Object::keys(&obj).iter() {
            let k = k.as_string().unwrap_or_default();
            if !allowed.contains(&k.as_str()) {
                return Err(js_error(format!(
                    "unknown option {k:?} in {what}; known options: {}",
                    allowed.join(", ")
                )));
            }
        }
        Ok(Opts {
            obj: Some(obj),
            what,
        })
    }

    fn get(&self, key: &str) -> Option<JsValue> {
        let v = Reflect::get(self.obj.as_ref()?, &JsValue::from_str(key)).ok()?;
        (!v.is_undefined() && !v.is_null()).then_some(v)
    }

    fn num(&self, key: &str) -> Result<Option<f64>, JsValue> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_f64() {
                Some(x) if x.is_finite() => Ok(Some(x)),
                _ => Err(js_error(format!(
                    "{}.{key} must be a finite number, got {}",
                    self.what,
                    describe(&v)
                ))),
            },
        }
    }

    fn uint(&self, key: &str) -> Result<Option<usize>, JsValue> {
        match self.num(key)? {
            None => Ok(None),
            Some(x) if x >= 0.0 && x.fract() == 0.0 && x <= u32::MAX as f64 => Ok(Some(x as usize)),
            Some(x) => Err(js_error(format!(
                "{}.{key} must be a whole number >= 0, got {x}",
                self.what
            ))),
        }
    }

    fn string(&self, key: &str) -> Result<Option<String>, JsValue> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_string()
                .map(Some)
                .ok_or_else(|| js_error(format!("{}.{key} must be a string", self.what))),
        }
    }

    fn boolean(&self, key: &str) -> Result<Option<bool>, JsValue> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| js_error(format!("{}.{key} must be true or false", self.what))),
        }
    }

    fn func(&self, key: &str) -> Result<Option<Function>, JsValue> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .dyn_into::<Function>()
                .map(Some)
                .map_err(|_| js_error(format!("{}.{key} must be a function", self.what))),
        }
    }
}

const CACHE_KEYS: [&str; 5] = ["policy", "sinks", "window", "maxContext", "batch"];
const SAMPLING_KEYS: [&str; 5] = ["temperature", "topK", "topP", "repetitionPenalty", "seed"];
const LOAD_KEYS: [&str; 4] = ["name", "onProgress", "cacheName", "system"];

/// The cache settings: the policy's parameters are kept even when another policy is chosen, so
/// switching back and forth keeps the user's numbers.
#[derive(Clone, Copy, Debug)]
struct CacheSettings {
    policy: &'static str,
    sinks: usize,
    window: usize,
    max_context: usize,
    batch: usize,
}

impl CacheSettings {
    fn defaults(config: &Config) -> CacheSettings {
        CacheSettings {
            policy: "sink",
            sinks: 4,
            window: 1020,
            max_context: config.context_len,
            batch: 64,
        }
    }

    fn merged(mut self, o: &Opts) -> Result<CacheSettings, JsValue> {
        if let Some(p) = o.string("policy")? {
            self.policy = match p.as_str() {
                "sink" => "sink",
                "window" => "window",
                "dense" => "dense",
                "recompute" => "recompute",
                other => {
                    return Err(js_error(format!(
                        "unknown cache policy {other:?}: use \"sink\", \"window\", \"dense\" or \"recompute\""
                    )))
                }
            };
        }
        self.sinks = o.uint("sinks")?.unwrap_or(self.sinks);
        self.window = o.uint("window")?.unwrap_or(self.window);
        self.max_context = o.uint("maxContext")?.unwrap_or(self.max_context);
        self.batch = o.uint("batch")?.unwrap_or(self.batch);
        if self.batch == 0 || self.batch > 512 {
            return Err(js_error(format!(
                "batch must be between 1 and 512 tokens, got {}",
                self.batch
            )));
        }
        let p = self.policy();
        p.validate()?;
        Ok(self)
    }

    fn policy(&self) -> Policy {
        match self.policy {
            "window" => Policy::Window {
                window: self.window,
            },
            "dense" => Policy::Dense {
                max: self.max_context,
            },
            "recompute" => Policy::Recompute {
                window: self.window,
            },
            _ => Policy::Sink {
                sinks: self.sinks,
                window: self.window,
            },
        }
    }
}

fn merged_sampling(mut c: SamplingConfig, o: &Opts) -> Result<SamplingConfig, JsValue> {
    if let Some(t) = o.num("temperature")? {
        c.temperature = t as f32;
    }
    c.top_k = o.uint("topK")?.unwrap_or(c.top_k);
    if let Some(p) = o.num("topP")? {
        c.top_p = p as f32;
    }
    if let Some(r) = o.num("repetitionPenalty")? {
        c.repetition_penalty = r as f32;
    }
    if let Some(s) = o.num("seed")? {
        if !(s >= 0.0 && s.fract() == 0.0 && s <= 9007199254740991.0) {
            return Err(js_error(format!(
                "seed must be a whole number between 0 and 2^53-1, got {s}"
            )));
        }
        c.seed = s as u64;
    }
    c.validate()?;
    Ok(c)
}

/// The stream's token ids, as far as the cache picture needs them: the first S (the sinks) and
/// the last S+W (everything the ring can hold).
#[derive(Default)]
struct Mirror {
    sinks: usize,
    keep: usize,
    first: Vec<u32>,
    last: VecDeque<u32>,
    total: u64,
}

impl Mirror {
    fn new(rule: CacheRule) -> Mirror {
        Mirror {
            sinks: rule.sinks,
            keep: rule.slots(),
            ..Default::default()
        }
    }

    fn push(&mut self, ids: &[u32]) {
        for &id in ids {
            if self.first.len() < self.sinks {
                self.first.push(id);
            }
            if self.last.len() == self.keep {
                self.last.pop_front();
            }
            self.last.push_back(id);
            self.total += 1;
        }
    }

    /// The id of stream token `g` (0-based), if it is still known.
    fn id(&self, g: u64) -> Option<u32> {
        if (g as usize) < self.first.len() {
            return Some(self.first[g as usize]);
        }
        let base = self.total - self.last.len() as u64;
        (g >= base && g < self.total).then(|| self.last[(g - base) as usize])
    }
}

/// What JavaScript can read while a generation runs: refreshed after every block.
struct Live {
    stats: Stats,
    timing: Timing,
    rule: CacheRule,
    /// The session's own count (the recompute policy counts only the re-run window).
    session_count: u64,
    mirror: Mirror,
}

impl Live {
    fn of(gen: &Generator, mirror: Mirror) -> Live {
        let s = gen.session();
        Live {
            stats: s.stats(),
            timing: gen.timing(),
            rule: s.rule(),
            session_count: s.count(),
            mirror,
        }
    }

    fn refresh(&mut self, gen: &Generator) {
        let s = gen.session();
        self.stats = s.stats();
        self.timing = gen.timing();
        self.session_count = s.count();
    }
}

/// The last exchange of a chat (for rendering the next turn through the template).
#[derive(Default)]
struct ChatState {
    last: Option<(String, String)>,
    system: Option<String>,
}

struct Shared {
    source: String,
    config: Config,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    stop_tokens: Vec<u32>,
    gpu_model: Arc<GpuModel>,
    /// None while a generation holds it.
    gen: RefCell<Option<Generator>>,
    cache: Cell<CacheSettings>,
    sampling: Cell<SamplingConfig>,
    /// Sampling changed while a generation ran: applied when the next one starts.
    sampling_dirty: Cell<bool>,
    chat: RefCell<ChatState>,
    live: RefCell<Live>,
    busy: Cell<bool>,
    stop: Cell<bool>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Why {
    StopToken,
    MaxTokens,
    Stopped,
}

impl Why {
    fn name(self) -> &'static str {
        match self {
            Why::StopToken => "stopToken",
            Why::MaxTokens => "maxTokens",
            Why::Stopped => "stopped",
        }
    }
}

struct Reply {
    text: String,
    ids: Vec<u32>,
    why: Why,
    timing: Timing,
}

impl Shared {
    fn new_generator(&self, policy: Policy, batch: usize) -> Result<Generator, JsValue> {
        let session = Session::new(self.gpu_model.clone(), policy, batch)?;
        let sampler = Sampler::new(self.sampling.get())?;
        Ok(Generator::new(session, sampler, self.stop_tokens.clone()).with_clock(now_seconds))
    }

    fn check_idle(&self, what: &str) -> Result<(), JsValue> {
        if self.busy.get() {
            return Err(js_error(format!(
                "cannot {what} while a generation is running: call stop() and wait for it to finish"
            )));
        }
        Ok(())
    }

    /// Forgets the stream: the cache, the chat and the picture.
    fn reset(&self) -> Result<(), JsValue> {
        self.check_idle("reset")?;
        let mut g = self.gen.borrow_mut();
        let gen = g
            .as_mut()
            .ok_or_else(|| js_error("the engine has no session"))?;
        gen.reset();
        let mut c = self.chat.borrow_mut();
        c.last = None;
        *self.live.borrow_mut() = Live::of(gen, Mirror::new(gen.session().rule()));
        Ok(())
    }

    /// Feeds `ids` and streams up to `max_tokens` generated tokens to `on_piece`.
    async fn run(
        self: Rc<Self>,
        ids: Vec<u32>,
        restart: bool,
        max_tokens: usize,
        on_piece: Option<Function>,
    ) -> Result<Reply, JsValue> {
        let mut gen = self
            .gen
            .borrow_mut()
            .take()
            .ok_or_else(|| js_error("the engine has no session"))?;
        if self.sampling_dirty.replace(false) {
            match Sampler::new(self.sampling.get()) {
                Ok(s) => gen.set_sampler(s),
                Err(e) => {
                    *self.gen.borrow_mut() = Some(gen);
                    return Err(e.into());
                }
            }
        }
        let out = self
            .clone()
            .run_with(&mut gen, ids, restart, max_tokens, on_piece)
            .await;
        self.live.borrow_mut().refresh(&gen);
        *self.gen.borrow_mut() = Some(gen);
        out
    }

    async fn run_with(
        self: Rc<Self>,
        gen: &mut Generator,
        ids: Vec<u32>,
        restart: bool,
        max_tokens: usize,
        on_piece: Option<Function>,
    ) -> Result<Reply, JsValue> {
        if restart {
            gen.reset();
            let rule = gen.session().rule();
            self.live.borrow_mut().mirror = Mirror::new(rule);
        }
        gen.feed_prompt(&ids).await?;
        {
            let mut live = self.live.borrow_mut();
            live.mirror.push(&ids);
            live.refresh(gen);
        }
        let mut decoder = StreamDecoder::new(&self.tokenizer);
        let mut text = String::new();
        let emit = |piece: &str| -> Result<(), JsValue> {
            if let Some(f) = &on_piece {
                if !piece.is_empty() {
                    f.call1(&JsValue::NULL, &JsValue::from_str(piece))
                        .map_err(|e| {
                            js_error(format!("the onPiece callback threw: {}", describe(&e)))
                        })?;
                }
            }
            Ok(())
        };
        let mut why = Why::MaxTokens;
        for _ in 0..max_tokens {
            if self.stop.get() {
                why = Why::Stopped;
                break;
            }
            let Some(id) = gen.feed_token().await? else {
                why = Why::StopToken;
                break;
            };
            {
                let mut live = self.live.borrow_mut();
                live.mirror.push(&[id]);
                live.refresh(gen);
            }
            let piece = decoder.push(id);
            text.push_str(&piece);
            emit(&piece)?;
        }
        let rest = decoder.flush();
        text.push_str(&rest);
        emit(&rest)?;
        Ok(Reply {
            text,
            ids: gen.generated().to_vec(),
            why,
            timing: gen.timing(),
        })
    }
}

fn reply_object(r: &Reply, live: &Live) -> Object {
    let o = Object::new();
    set(&o, "text", r.text.as_str());
    set(&o, "ids", js_sys::Uint32Array::from(&r.ids[..]));
    set(&o, "tokens", r.ids.len() as f64);
    set(&o, "stopReason", r.why.name());
    set(&o, "promptTokens", r.timing.prompt_tokens as f64);
    set(&o, "promptSeconds", r.timing.prompt_seconds);
    set(&o, "generateSeconds", r.timing.generate_seconds);
    set(&o, "tokensPerSecond", r.timing.tokens_per_second());
    set(&o, "tokensStreamed", live.mirror.total as f64);
    o
}

/// A model on the GPU with one stream (KV cache) through it.
#[wasm_bindgen]
pub struct Engine {
    inner: Rc<Shared>,
}

fn progress(f: &Option<Function>, phase: &str, loaded: f64, total: f64) {
    progress_file(f, phase, loaded, total, None)
}

/// Progress of one file of a checkpoint (`file` names it).
fn progress_file(f: &Option<Function>, phase: &str, loaded: f64, total: f64, file: Option<&str>) {
    if let Some(f) = f {
        let o = Object::new();
        set(&o, "phase", phase);
        set(&o, "loaded", loaded);
        set(&o, "total", total);
        if let Some(name) = file {
            set(&o, "file", name);
        }
        if let Err(e) = f.call1(&JsValue::NULL, &o) {
            web_sys::console::warn_1(&format!("onProgress threw: {}", describe(&e)).into());
        }
    }
}

/// The largest model file a page can load: wasm32 memory ends at 4 GiB, and loading holds the
/// file and a copy of its weights at once.
const MAX_MODEL_BYTES: f64 = 1.8e9;

fn too_large(bytes: f64) -> JsValue {
    js_error(format!(
        "the model ({:.0} MB) is too large for the browser: WebAssembly memory ends at 4 GiB and loading needs about twice the file size (at most {:.0} MB); use a smaller or more quantised model",
        bytes / 1e6,
        MAX_MODEL_BYTES / 1e6
    ))
}

fn check_model_size(bytes: f64) -> Result<(), JsValue> {
    if bytes > MAX_MODEL_BYTES {
        return Err(too_large(bytes));
    }
    Ok(())
}

/// Reads a response body into memory, reporting progress.
async fn read_body(
    resp: &web_sys::Response,
    phase: &str,
    on_progress: &Option<Function>,
    file: Option<&str>,
) -> Result<Vec<u8>, JsValue> {
    let total = resp
        .headers()
        .get("content-length")
        .ok()
        .flatten()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    let body = resp
        .body()
        .ok_or_else(|| js_error("the response has no body"))?;
    let reader: web_sys::ReadableStreamDefaultReader = body.get_reader().unchecked_into();
    check_model_size(total)?;
    let mut out: Vec<u8> = Vec::new();
    out.try_reserve_exact(total as usize)
        .map_err(|_| too_large(total))?;
    progress_file(on_progress, phase, 0.0, total, file);
    loop {
        let r = JsFuture::from(reader.read())
            .await
            .map_err(|e| js_error(format!("reading the model failed: {}", describe(&e))))?;
        let r: web_sys::ReadableStreamReadResult = r.unchecked_into();
        if r.get_done().unwrap_or(true) {
            break;
        }
        let chunk: Uint8Array = r.get_value().unchecked_into();
        let n = out.len();
        let grown = n as f64 + chunk.length() as f64;
        check_model_size(grown)?;
        out.try_reserve(chunk.length() as usize)
            .map_err(|_| too_large(grown))?;
        out.resize(n + chunk.length() as usize, 0);
        chunk.copy_to(&mut out[n..]);
        progress_file(
            on_progress,
            phase,
            out.len() as f64,
            total.max(out.len() as f64),
            file,
        );
    }
    Ok(out)
}

async fn open_cache(name: &str) -> Option<web_sys::Cache> {
    let caches = Reflect::get(&js_sys::global(), &JsValue::from_str("caches")).ok()?;
    if caches.is_undefined() || caches.is_null() {
        return None; // not a secure context
    }
    let caches: web_sys::CacheStorage = caches.unchecked_into();
    match JsFuture::from(caches.open(name)).await {
        Ok(c) => Some(c.unchecked_into()),
        Err(e) => {
            web_sys::console::warn_1(
                &format!("sinkstream: Cache Storage unavailable: {}", describe(&e)).into(),
            );
            None
        }
    }
}

/// One file from Cache Storage or the network, with progress. `Ok(None)`: an optional file the
/// server does not have (404). The bool says whether it was stored into the cache just now.
async fn fetch_file(
    url: &str,
    file: Option<&str>,
    cache: &Option<web_sys::Cache>,
    on_progress: &Option<Function>,
    optional: bool,
) -> Result<Option<(Vec<u8>, bool)>, JsValue> {
    let mut cached = None;
    if let Some(c) = cache {
        if let Ok(hit) = JsFuture::from(c.match_with_str(url)).await {
            if !hit.is_undefined() {
                cached = Some(hit.unchecked_into::<web_sys::Response>());
            }
        }
    }
    let from_cache = cached.is_some();
    let (resp, phase) = match cached {
        Some(r) => (r, "cache"),
        None => {
            let p = global_fetch(url)
                .map_err(|e| js_error(format!("cannot fetch {url}: {}", describe(&e))))?;
            let r = JsFuture::from(p).await.map_err(|e| {
                js_error(format!(
                    "cannot fetch {url}: {} (is the server running, and is the URL on this origin or CORS-enabled?)",
                    describe(&e)
                ))
            })?;
            (r.unchecked_into::<web_sys::Response>(), "download")
        }
    };
    if optional && resp.status() == 404 {
        return Ok(None);
    }
    if !resp.ok() {
        return Err(js_error(format!(
            "cannot fetch {url}: HTTP {} {}",
            resp.status(),
            resp.status_text()
        )));
    }
    let mut data = read_body(&resp, phase, on_progress, file).await?;
    let mut put = false;
    if let (Some(c), false) = (cache, from_cache) {
        // The body is copied by the Response constructor; an entry that then fails to load as
        // a model is deleted again by the caller.
        match web_sys::Response::new_with_opt_u8_array(Some(&mut data)) {
            Ok(r) => match JsFuture::from(c.put_with_str(url, &r)).await {
                Ok(_) => put = true,
                Err(e) => web_sys::console::warn_1(
                    &format!("sinkstream: could not cache {url}: {}", describe(&e)).into(),
                ),
            },
            Err(e) => web_sys::console::warn_1(&e),
        }
    }
    Ok(Some((data, put)))
}

/// `base` + `file` through `fetch_file`, remembering what went into the cache.
async fn dir_file(
    base: &str,
    file: &str,
    optional: bool,
    cache: &Option<web_sys::Cache>,
    on_progress: &Option<Function>,
    stored: &mut Vec<String>,
) -> Result<Option<Vec<u8>>, JsValue> {
    let url = format!("{base}{file}");
    let got = fetch_file(&url, Some(file), cache, on_progress, optional).await?;
    Ok(got.map(|(data, put)| {
        if put {
            stored.push(url);
        }
        data
    }))
}

#[wasm_bindgen]
impl Engine {
    /// Loads a GGUF model from a `Uint8Array` or `ArrayBuffer` (a Hugging Face checkpoint is
    /// several files: `fromFiles`). Options: `name` (for messages),
    /// `onProgress({phase, loaded, total})`, `system` (chat system prompt), the cache settings
    /// (`policy`, `sinks`, `window`, `maxContext`, `batch`) and the sampling settings
    /// (`temperature`, `topK`, `topP`, `repetitionPenalty`, `seed`).
    #[wasm_bindgen(js_name = fromBytes)]
    pub async fn from_bytes(bytes: JsValue, options: JsValue) -> Result<Engine, JsValue> {
        let arr = if let Some(a) = bytes.dyn_ref::<Uint8Array>() {
            a.clone()
        } else if let Some(b) = bytes.dyn_ref::<js_sys::ArrayBuffer>() {
            Uint8Array::new(b)
        } else {
            return Err(js_error(
                "fromBytes needs the model file as a Uint8Array or an ArrayBuffer",
            ));
        };
        check_model_size(arr.length() as f64)?;
        let data = arr.to_vec();
        let opts = Opts::new(&options, "options", &all_load_keys())?;
        let name = opts.string("name")?.unwrap_or_else(|| "model.gguf".into());
        Engine::build(move || Model::from_gguf_bytes(&data, &name), &opts).await
    }

    /// Fetches a model and loads it, reporting download progress: a GGUF file, or a Hugging Face
    /// checkpoint directory when the URL ends with "/" (config.json, tokenizer.json,
    /// tokenizer_config.json when present, chat_template.jinja when it holds no template,
    /// model.safetensors or the
    /// index and its shards). With `cacheName` (for example "sinkstream-models") the files are
    /// kept in Cache Storage and later loads of the same URL read them from there instead of
    /// the network.
    #[wasm_bindgen(js_name = fromUrl)]
    pub async fn from_url(url: String, options: JsValue) -> Result<Engine, JsValue> {
        let opts = Opts::new(&options, "options", &all_load_keys())?;
        let on_progress = opts.func("onProgress")?;
        let cache = match opts.string("cacheName")? {
            Some(n) => open_cache(&n).await,
            None => None,
        };
        let name = opts.string("name")?.unwrap_or_else(|| url.clone());
        let mut stored = Vec::new();
        let out = if url.ends_with('/') {
            Engine::from_dir_url(&url, &name, &opts, &cache, &on_progress, &mut stored).await
        } else {
            match fetch_file(&url, None, &cache, &on_progress, false).await {
                Ok(Some((data, put))) => {
                    if put {
                        stored.push(url.clone());
                    }
                    Engine::build(move || Model::from_gguf_bytes(&data, &name), &opts).await
                }
                Ok(None) => Err(js_error(format!("cannot fetch {url}"))),
                Err(e) => Err(e),
            }
        };
        // Files that do not make a model must not be served from the cache next time.
        if out.is_err() {
            if let Some(c) = &cache {
                for u in &stored {
                    let _ = JsFuture::from(c.delete_with_str(u)).await;
                }
            }
        }
        out
    }

    /// The files of a Hugging Face checkpoint directory at `base` (ending with "/").
    async fn from_dir_url(
        base: &str,
        name: &str,
        opts: &Opts,
        cache: &Option<web_sys::Cache>,
        on_progress: &Option<Function>,
        stored: &mut Vec<String>,
    ) -> Result<Engine, JsValue> {
        let mut files = MemoryFiles::new();
        let mut total = 0.0;
        for (file, optional) in [
            (hf::CONFIG, false),
            (hf::TOKENIZER, false),
            (hf::TOKENIZER_CONFIG, true),
        ] {
            if let Some(d) = dir_file(base, file, optional, cache, on_progress, stored).await? {
                files.insert(file, d);
            }
        }
        // chat_template.jinja only exists where tokenizer_config.json has no template: asking for
        // it otherwise would only log a 404 in the console.
        let has_template = files.peek(hf::TOKENIZER_CONFIG).is_some_and(|b| {
            serde_json::from_slice::<serde_json::Value>(b)
                .is_ok_and(|j| j.get("chat_template").is_some_and(|t| !t.is_null()))
        });
        if !has_template {
            if let Some(d) =
                dir_file(base, hf::CHAT_TEMPLATE, true, cache, on_progress, stored).await?
            {
                files.insert(hf::CHAT_TEMPLATE, d);
            }
        }
        match dir_file(base, hf::WEIGHTS, true, cache, on_progress, stored).await? {
            Some(d) => files.insert(hf::WEIGHTS, d),
            None => {
                let index = dir_file(base, hf::INDEX, true, cache, on_progress, stored)
                    .await?
                    .ok_or_else(|| {
                        js_error(format!(
                        "{base} has neither {} nor {}: is it a Hugging Face checkpoint directory?",
                        hf::WEIGHTS,
                        hf::INDEX
                    ))
                    })?;
                let shards = hf::shard_names(&index)?;
                files.insert(hf::INDEX, index);
                for shard in shards {
                    let d = dir_file(base, &shard, false, cache, on_progress, stored)
                        .await?
                        .unwrap_or_default();
                    total += d.len() as f64;
                    check_model_size(total)?;
                    files.insert(&shard, d);
                }
            }
        }
        let name = name.to_string();
        Engine::build(move || Model::from_hf_files(&mut files, &name), opts).await
    }

    /// Loads a model from a set of files given as bytes: a `Map` or a plain object from file
    /// name to `Uint8Array` or `ArrayBuffer`. A Hugging Face checkpoint needs config.json,
    /// tokenizer.json and model.safetensors (or model.safetensors.index.json and its shards);
    /// tokenizer_config.json (the chat template) is read when given. Directory parts of names
    /// ("SmolLM2/config.json", from a picked folder) are ignored. A set holding a .gguf file and
    /// no config.json loads the GGUF. Options as `fromBytes`.
    #[wasm_bindgen(js_name = fromFiles)]
    pub async fn from_files(files: JsValue, options: JsValue) -> Result<Engine, JsValue> {
        let opts = Opts::new(&options, "options", &all_load_keys())?;
        let entries: Vec<(JsValue, JsValue)> = if let Some(m) = files.dyn_ref::<js_sys::Map>() {
            let mut v = Vec::new();
            m.for_each(&mut |value, key| v.push((key, value)));
            v
        } else if files.is_object() && !files.is_function() && !Array::is_array(&files) {
            Object::entries(files.unchecked_ref::<Object>())
                .iter()
                .map(|e| {
                    let e: Array = e.unchecked_into();
                    (e.get(0), e.get(1))
                })
                .collect()
        } else {
            return Err(js_error(
                "fromFiles needs a Map or an object from file name to Uint8Array or ArrayBuffer",
            ));
        };
        let mut mem = MemoryFiles::new();
        let mut gguf = None;
        let mut total = 0.0;
        for (key, value) in entries {
            let name = key
                .as_string()
                .ok_or_else(|| js_error("fromFiles: file names must be strings"))?;
            let arr = if let Some(a) = value.dyn_ref::<Uint8Array>() {
                a.clone()
            } else if let Some(b) = value.dyn_ref::<js_sys::ArrayBuffer>() {
                Uint8Array::new(b)
            } else {
                return Err(js_error(format!(
                    "fromFiles: {name} must be a Uint8Array or an ArrayBuffer"
                )));
            };
            total += arr.length() as f64;
            check_model_size(total)?;
            if name.ends_with(".gguf") {
                gguf = Some((name, arr.to_vec()));
            } else {
                mem.insert(&name, arr.to_vec());
            }
        }
        match gguf {
            Some((gname, data)) if !mem.contains(hf::CONFIG) => {
                let name = opts.string("name")?.unwrap_or(gname);
                Engine::build(move || Model::from_gguf_bytes(&data, &name), &opts).await
            }
            _ => {
                let name = opts
                    .string("name")?
                    .unwrap_or_else(|| "the Hugging Face checkpoint".into());
                Engine::build(move || Model::from_hf_files(&mut mem, &name), &opts).await
            }
        }
    }

    // The engine's API shares the device and weights through Arc; on wasm32 nothing is Send
    // and there is one thread, so the Arc is only a reference count.
    #[allow(clippy::arc_with_non_send_sync)]
    async fn build(
        parse: impl FnOnce() -> Result<Model, Error>,
        opts: &Opts,
    ) -> Result<Engine, JsValue> {
        let on_progress = opts.func("onProgress")?;
        let system = opts.string("system")?;
        progress(&on_progress, "parse", 0.0, 0.0);
        yield_now().await;
        // The file bytes live in `parse` and are freed when it returns.
        let model = parse()?;
        let cache = CacheSettings::defaults(&model.config).merged(opts)?;
        let sampling = merged_sampling(SamplingConfig::default(), opts)?;
        progress(&on_progress, "gpu", 0.0, 0.0);
        yield_now().await;
        let gpu = Arc::new(Gpu::new().await?);
        let stop_tokens = model.stop_tokens();
        let Model {
            config,
            weights,
            tokenizer,
            chat_template,
            source,
        } = model;
        let gpu_model = Arc::new(GpuModel::new(gpu, &config, &weights)?);
        drop(weights);
        let shared = Shared {
            source,
            config,
            tokenizer,
            template: chat_template,
            stop_tokens,
            gpu_model,
            gen: RefCell::new(None),
            cache: Cell::new(cache),
            sampling: Cell::new(sampling),
            sampling_dirty: Cell::new(false),
            chat: RefCell::new(ChatState {
                system,
                ..Default::default()
            }),
            live: RefCell::new(Live {
                stats: Stats::default(),
                timing: Timing::default(),
                rule: cache.policy().rule(),
                session_count: 0,
                mirror: Mirror::default(),
            }),
            busy: Cell::new(false),
            stop: Cell::new(false),
        };
        let gen = shared.new_generator(cache.policy(), cache.batch)?;
        *shared.live.borrow_mut() = Live::of(&gen, Mirror::new(gen.session().rule()));
        *shared.gen.borrow_mut() = Some(gen);
        progress(&on_progress, "ready", 1.0, 1.0);
        Ok(Engine {
            inner: Rc::new(shared),
        })
    }

    /// The model and the GPU: `{source, adapter, vocab, dim, layers, heads, kvHeads, headDim,
    /// ffnDim, contextLength}`.
    pub fn info(&self) -> Object {
        let s = &self.inner;
        let c = &s.config;
        let o = Object::new();
        set(&o, "source", s.source.as_str());
        let gpu = &s.gpu_model.gpu;
        let adapter = if gpu.info.name.is_empty() {
            // The browser does not name its adapter through wgpu.
            format!("WebGPU ({:?})", gpu.info.device_type)
        } else {
            gpu.describe()
        };
        set(&o, "adapter", adapter);
        set(&o, "vocab", c.vocab as f64);
        set(&o, "dim", c.dim as f64);
        set(&o, "layers", c.n_layers as f64);
        set(&o, "heads", c.n_heads as f64);
        set(&o, "kvHeads", c.n_kv_heads as f64);
        set(&o, "headDim", c.head_dim as f64);
        set(&o, "ffnDim", c.ffn_dim as f64);
        set(&o, "contextLength", c.context_len as f64);
        o
    }

    /// Continues the stream with `prompt` (plain text; `chat: true` wraps it in the chat template
    /// as a single user turn) and generates up to `maxTokens` (default 256) tokens, calling
    /// `onPiece(text)` for each piece. Resolves to `{text, ids, tokens, stopReason, promptTokens,
    /// promptSeconds, generateSeconds, tokensPerSecond, tokensStreamed}`; stopReason is
    /// "stopToken", "maxTokens" or "stopped". Options: `maxTokens`, `chat`.
    pub fn generate(&self, prompt: String, on_piece: JsValue, options: JsValue) -> Promise {
        let s = self.inner.clone();
        let prepared = (|| -> Result<_, JsValue> {
            let opts = Opts::new(&options, "options", &["maxTokens", "chat"])?;
            let max_tokens = opts.uint("maxTokens")?.unwrap_or(256);
            let on_piece = callback(on_piece)?;
            if prompt.is_empty() {
                return Err(js_error("the prompt is empty"));
            }
            let text = if opts.boolean("chat")?.unwrap_or(false) {
                let c = s.chat.borrow();
                turn_text(&s.template, c.system.as_deref(), None, &prompt)?.text
            } else {
                prompt
            };
            let ids = s.tokenizer.encode(&text)?;
            if ids.is_empty() {
                return Err(js_error("the prompt gives no tokens"));
            }
            Ok((ids, max_tokens, on_piece))
        })();
        Engine::guarded(
            s.clone(),
            "generate",
            prepared,
            move |(ids, max_tokens, on_piece)| {
                // Plain text is not a chat turn: the next chat message starts a fresh exchange.
                s.chat.borrow_mut().last = None;
                s.run(ids, false, max_tokens, on_piece)
            },
        )
    }

    /// Sends a user message in a multi-round chat (the conversation lives in the cache) and
    /// streams the reply like `generate`. Options: `maxTokens` (default 512).
    pub fn chat(&self, message: String, on_piece: JsValue, options: JsValue) -> Promise {
        let s = self.inner.clone();
        let prepared = (|| -> Result<_, JsValue> {
            let opts = Opts::new(&options, "options", &["maxTokens"])?;
            let max_tokens = opts.uint("maxTokens")?.unwrap_or(512);
            let on_piece = callback(on_piece)?;
            let c = s.chat.borrow();
            let last = c.last.as_ref().map(|(u, r)| (u.as_str(), r.as_str()));
            let turn = turn_text(&s.template, c.system.as_deref(), last, &message)?;
            let ids = s.tokenizer.encode(&turn.text)?;
            Ok((ids, turn.restart, max_tokens, on_piece))
        })();
        Engine::guarded(
            s.clone(),
            "chat",
            prepared,
            move |(ids, restart, max_tokens, on_piece)| async move {
                let r = s.clone().run(ids, restart, max_tokens, on_piece).await?;
                s.chat.borrow_mut().last = Some((message, r.text.clone()));
                Ok(r)
            },
        )
    }

    /// Starts a generation: checks and marks the engine busy synchronously (so `busy`, `stop()`
    /// and a second call behave at once), then runs `f` and clears the mark when it ends.
    fn guarded<P, F>(
        s: Rc<Shared>,
        what: &str,
        prepared: Result<P, JsValue>,
        f: impl FnOnce(P) -> F,
    ) -> Promise
    where
        F: std::future::Future<Output = Result<Reply, JsValue>> + 'static,
    {
        if s.busy.get() {
            return Promise::reject(&js_error(format!(
                "cannot {what}: a generation is already running (await it, or call stop() first)"
            )));
        }
        let p = match prepared {
            Ok(p) => p,
            Err(e) => return Promise::reject(&e),
        };
        s.busy.set(true);
        s.stop.set(false);
        let fut = f(p);
        future_to_promise(async move {
            let r = fut.await;
            s.busy.set(false);
            s.stop.set(false);
            let r = r?;
            let live = s.live.borrow();
            Ok(reply_object(&r, &live).into())
        })
    }

    /// Stops a generation in flight after the token being computed; its promise then resolves
    /// with stopReason "stopped". Does nothing when idle.
    pub fn stop(&self) {
        if self.inner.busy.get() {
            self.inner.stop.set(true);
        }
    }

    /// True while a generation runs.
    #[wasm_bindgen(getter)]
    pub fn busy(&self) -> bool {
        self.inner.busy.get()
    }

    /// Forgets the stream (cache and chat); the GPU memory stays allocated.
    pub fn reset(&self) -> Result<(), JsValue> {
        self.inner.reset()
    }

    /// Changes the cache (`policy`: "sink" | "window" | "dense" | "recompute", `sinks`, `window`,
    /// `maxContext`, `batch`); omitted keys keep their values. The stream starts over.
    #[wasm_bindgen(js_name = setCache)]
    pub fn set_cache(&self, options: JsValue) -> Result<(), JsValue> {
        let s = &self.inner;
        s.check_idle("change the cache")?;
        let opts = Opts::new(&options, "cache options", &CACHE_KEYS)?;
        let old = s.cache.get();
        let new = old.merged(&opts)?;
        // The old cache is freed first, so memory never holds both.
        drop(s.gen.borrow_mut().take());
        let gen = match s.new_generator(new.policy(), new.batch) {
            Ok(g) => g,
            Err(e) => {
                let g = s.new_generator(old.policy(), old.batch)?;
                *s.live.borrow_mut() = Live::of(&g, Mirror::new(g.session().rule()));
                *s.gen.borrow_mut() = Some(g);
                return Err(e);
            }
        };
        s.cache.set(new);
        s.sampling_dirty.set(false);
        *s.live.borrow_mut() = Live::of(&gen, Mirror::new(gen.session().rule()));
        *s.gen.borrow_mut() = Some(gen);
        let mut c = s.chat.borrow_mut();
        c.last = None;
        Ok(())
    }

    /// Changes the sampling (`temperature` (0 = greedy), `topK`, `topP`, `repetitionPenalty`,
    /// `seed`); omitted keys keep their values. The stream is kept; during a generation the
    /// change applies from the next one.
    #[wasm_bindgen(js_name = setSampling)]
    pub fn set_sampling(&self, options: JsValue) -> Result<(), JsValue> {
        let s = &self.inner;
        let opts = Opts::new(&options, "sampling options", &SAMPLING_KEYS)?;
        let c = merged_sampling(s.sampling.get(), &opts)?;
        s.sampling.set(c);
        match s.gen.borrow_mut().as_mut() {
            Some(g) => g.set_sampler(Sampler::new(c)?),
            None => s.sampling_dirty.set(true),
        }
        Ok(())
    }

    /// Sets the chat's system prompt (null or "" for the template's default) and starts over.
    #[wasm_bindgen(js_name = setSystem)]
    pub fn set_system(&self, system: Option<String>) -> Result<(), JsValue> {
        self.inner.check_idle("change the system prompt")?;
        self.inner.chat.borrow_mut().system = system.filter(|s| !s.is_empty());
        self.inner.reset()
    }

    /// The current settings: `{policy, sinks, window, maxContext, batch, temperature, topK, topP,
    /// repetitionPenalty, seed, system}`.
    pub fn settings(&self) -> Object {
        let s = &self.inner;
        let c = s.cache.get();
        let p = s.sampling.get();
        let o = Object::new();
        set(&o, "policy", c.policy);
        set(&o, "sinks", c.sinks as f64);
        set(&o, "window", c.window as f64);
        set(&o, "maxContext", c.max_context as f64);
        set(&o, "batch", c.batch as f64);
        set(&o, "temperature", p.temperature as f64);
        set(&o, "topK", p.top_k as f64);
        set(&o, "topP", p.top_p as f64);
        set(&o, "repetitionPenalty", p.repetition_penalty as f64);
        set(&o, "seed", p.seed as f64);
        set(
            &o,
            "system",
            s.chat
                .borrow()
                .system
                .as_deref()
                .map_or(JsValue::NULL, JsValue::from_str),
        );
        o
    }

    /// Live numbers, cheap enough to poll every frame: `{tokensStreamed, cacheSlots, cacheFill,
    /// sinks, window, writeHead, policy, gpuBytes, gpuBuffers, wasmBytes, tokensPerSecond,
    /// generatedTokens, promptTokens, promptTokensPerSecond, submissions, dispatches, busy}`.
    pub fn stats(&self) -> Object {
        let s = &self.inner;
        let live = s.live.borrow();
        let st = &live.stats;
        let o = Object::new();
        set(&o, "tokensStreamed", live.mirror.total as f64);
        set(&o, "cacheSlots", st.cache_slots as f64);
        set(&o, "cacheFill", st.cache_fill as f64);
        set(&o, "sinks", st.sinks as f64);
        set(&o, "window", st.window as f64);
        set(&o, "writeHead", st.write_head as f64);
        set(&o, "policy", s.cache.get().policy);
        set(&o, "gpuBytes", st.gpu_bytes as f64);
        set(&o, "gpuBuffers", st.gpu_buffers as f64);
        set(&o, "wasmBytes", wasm_memory_bytes());
        set(&o, "tokensPerSecond", live.timing.tokens_per_second());
        set(&o, "generatedTokens", live.timing.generated_tokens as f64);
        set(&o, "promptTokens", live.timing.prompt_tokens as f64);
        set(
            &o,
            "promptTokensPerSecond",
            live.timing.prompt_tokens_per_second(),
        );
        set(&o, "submissions", st.submissions as f64);
        set(&o, "dispatches", st.dispatches as f64);
        set(&o, "busy", s.busy.get());
        o
    }

    /// The cache as a picture needs it: `{sinks, window, writeHead, fill, tokensStreamed, slots}`
    /// where `slots[i]` is null (empty) or `{n, id, text}`: slot i holds stream token n (0-based),
    /// whose id is `id` and whose text is `text`. Slots 0..sinks are the sinks, the rest the ring.
    #[wasm_bindgen(js_name = cacheMap)]
    pub fn cache_map(&self) -> Object {
        let s = &self.inner;
        let live = s.live.borrow();
        let m = &live.mirror;
        let offset = m.total.saturating_sub(live.session_count);
        let slots = Array::new();
        for n in live.rule.slot_tokens(live.session_count) {
            let v = match n
                .map(|n| n + offset)
                .and_then(|g| m.id(g).map(|id| (g, id)))
            {
                Some((g, id)) => {
                    let e = Object::new();
                    set(&e, "n", g as f64);
                    set(&e, "id", id);
                    set(&e, "text", s.tokenizer.token_str(id));
                    e.into()
                }
                None => JsValue::NULL,
            };
            slots.push(&v);
        }
        let o = Object::new();
        set(&o, "sinks", live.rule.sinks as f64);
        set(&o, "window", live.rule.window as f64);
        set(&o, "writeHead", live.stats.write_head as f64);
        set(&o, "fill", live.stats.cache_fill as f64);
        set(&o, "tokensStreamed", m.total as f64);
        set(&o, "slots", slots);
        o
    }

    /// Token ids of `text` (no BOS is added; special tokens written out become their ids).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, JsValue> {
        Ok(self.inner.tokenizer.encode(text)?)
    }

    /// The text of token ids.
    pub fn decode(&self, ids: Vec<u32>) -> Result<String, JsValue> {
        Ok(self.inner.tokenizer.decode(&ids)?)
    }

    /// The text one token stands for (lossy for partial UTF-8 characters).
    #[wasm_bindgen(js_name = tokenText)]
    pub fn token_text(&self, id: u32) -> String {
        self.inner.tokenizer.token_str(id)
    }
}

fn all_load_keys() -> Vec<&'static str> {
    LOAD_KEYS
        .iter()
        .chain(CACHE_KEYS.iter())
        .chain(SAMPLING_KEYS.iter())
        .copied()
        .collect()
}

fn callback(v: JsValue) -> Result<Option<Function>, JsValue> {
    if v.is_undefined() || v.is_null() {
        return Ok(None);
    }
    v.dyn_into::<Function>()
        .map(Some)
        .map_err(|_| js_error("onPiece must be a function (or null)"))
}

fn wasm_memory_bytes() -> f64 {
    (core::arch::wasm32::memory_size(0) * 65536) as f64
}
