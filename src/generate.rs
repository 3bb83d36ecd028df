//! Text generation on top of a `Session`: a `Generator` (prompt, then one sampled token at a time),
//! a UTF-8-safe text stream, and a multi-round `Chat` whose conversation lives in the KV cache.
//!
//! Everything here is plain Rust with no threads and no std clock, so it builds for wasm32. The
//! blocking methods (`prompt`, `next_token`, `stream`, `Chat::send`) are native-only; each is a
//! thin wrapper of a pure step (`begin_*`/`finish_*`), so async twins are a few lines each.

use std::collections::VecDeque;

use crate::chat::{ChatTemplate, Message};
use crate::engine::{Logits, Picked, Select, Session, SELECT_CAP, SELECT_RECENT};
use crate::error::{Error, Result};
use crate::sampler::Sampler;
#[cfg(not(target_arch = "wasm32"))]
use crate::tokenizer::StreamDecoder;
use crate::tokenizer::Tokenizer;

/// Seconds from an arbitrary origin. A plain function pointer so wasm can pass
/// `performance.now() / 1000` later without making every type generic.
pub type Clock = fn() -> f64;

/// The native monotonic clock; on wasm32 (where `Instant` panics) a clock that always says 0,
/// until the caller provides one with `Generator::with_clock`.
pub fn default_clock() -> f64 {
    #[cfg(not(target_arch = "wasm32"))]
    {
        static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        START
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_secs_f64()
    }
    #[cfg(target_arch = "wasm32")]
    {
        0.0
    }
}

/// How many of the latest tokens the repetition penalty looks at (llama.cpp's default window).
pub const PENALTY_WINDOW: usize = 64;

/// Counts and times of the latest prompt and the reply that followed it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Timing {
    pub prompt_tokens: u64,
    pub prompt_seconds: f64,
    pub generated_tokens: u64,
    pub generate_seconds: f64,
}

impl Timing {
    pub fn prompt_tokens_per_second(&self) -> f64 {
        rate(self.prompt_tokens, self.prompt_seconds)
    }
    pub fn tokens_per_second(&self) -> f64 {
        rate(self.generated_tokens, self.generate_seconds)
    }
}

fn rate(n: u64, s: f64) -> f64 {
    if s > 0.0 {
        n as f64 / s
    } else {
        0.0
    }
}

/// Why a stream of generated tokens ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The model chose an end token (its id); it was not fed to the cache.
    StopToken(u32),
    MaxTokens,
    /// `next_token` failed; the error was returned by the stream.
    Error,
}

/// What the next token is drawn from.
enum Next {
    /// The whole row of logits.
    Row(Vec<f32>),
    /// The row with the repetition penalty already applied (on the GPU).
    Penalised(Vec<f32>),
    /// The candidates the GPU picked (shaders/select.wgsl).
    Candidates(Vec<(u32, f32)>),
}

impl From<Picked> for Next {
    fn from(p: Picked) -> Next {
        match p {
            Picked::Candidates(c) => Next::Candidates(c),
            Picked::Row(r) => Next::Penalised(r),
        }
    }
}

/// A session plus a sampler: feed a prompt, then draw tokens one at a time.
pub struct Generator {
    session: Session,
    sampler: Sampler,
    stop: Vec<u32>,
    /// What predicts the next token; None before a prompt and after a stop token.
    logits: Option<Next>,
    recent: VecDeque<u32>,
    generated: Vec<u32>,
    /// Pick the sampler's candidates on the GPU where the configuration allows.
    gpu_select: bool,
    clock: Clock,
    timing: Timing,
    started: f64,
    stopped_on: Option<u32>,
}

impl Generator {
    /// `stop`: tokens that end a reply (usually `Model::stop_tokens()`; empty to never stop).
    pub fn new(session: Session, sampler: Sampler, stop: Vec<u32>) -> Generator {
        Generator {
            session,
            sampler,
            stop,
            logits: None,
            recent: VecDeque::with_capacity(PENALTY_WINDOW),
            generated: Vec::new(),
            gpu_select: true,
            clock: default_clock,
            timing: Timing::default(),
            started: 0.0,
            stopped_on: None,
        }
    }

    pub fn with_clock(mut self, clock: Clock) -> Generator {
        self.clock = clock;
        self
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    /// To reset the stream use `Generator::reset`, which also drops the pending logits.
    pub fn session_mut(&mut self) -> &mut Session {
        &mut self.session
    }

    /// Whether the sampler's candidates are picked on the GPU (the default; the draw is the same
    /// either way, only what is read back differs). Off: every row of logits comes back.
    pub fn set_gpu_select(&mut self, on: bool) {
        self.gpu_select = on;
    }

    /// The row of logits the next token will be drawn from, when it came back whole (the GPU
    /// candidate selection off, or a configuration that needs the whole row).
    pub fn pending_row(&self) -> Option<&[f32]> {
        match &self.logits {
            Some(Next::Row(r)) | Some(Next::Penalised(r)) => Some(r),
            _ => None,
        }
    }

    pub fn sampler(&self) -> &Sampler {
        &self.sampler
    }

    /// Changes how the next tokens are chosen; the stream (cache, pending logits) is kept.
    pub fn set_sampler(&mut self, sampler: Sampler) {
        self.sampler = sampler;
    }

    pub fn stop_tokens(&self) -> &[u32] {
        &self.stop
    }

    /// Tokens generated (and fed) since the latest prompt.
    pub fn generated(&self) -> &[u32] {
        &self.generated
    }

    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// The stop token that ended the latest reply, if one did.
    pub fn stopped_on(&self) -> Option<u32> {
        self.stopped_on
    }

    /// Forgets the stream (the session's cache) and any pending logits.
    pub fn reset(&mut self) {
        self.session.reset();
        self.logits = None;
        self.recent.clear();
        self.generated.clear();
        self.stopped_on = None;
    }

    /// Checks the prompt and starts its clock; feed it with `Logits::Last`, then `finish_prompt`.
    pub fn begin_prompt(&mut self, ids: &[u32]) -> Result<()> {
        if ids.is_empty() {
            return Err(Error::invalid("the prompt is empty (no tokens)"));
        }
        self.timing = Timing {
            prompt_tokens: ids.len() as u64,
            ..Timing::default()
        };
        self.generated.clear();
        self.logits = None;
        self.stopped_on = None;
        self.started = (self.clock)();
        Ok(())
    }

    pub fn finish_prompt(&mut self, ids: &[u32], logits: Vec<f32>) {
        self.finish_prompt_next(ids, Next::Row(logits));
    }

    fn finish_prompt_next(&mut self, ids: &[u32], next: Next) {
        self.timing.prompt_seconds = (self.clock)() - self.started;
        for &t in ids {
            self.remember(t);
        }
        self.logits = Some(next);
    }

    /// Feeds `ids` and keeps what the next draw needs: the sampler's candidates picked on the
    /// GPU where its configuration allows (a few bytes read back), else the row of logits.
    async fn feed_for_next(&mut self, ids: &[u32]) -> Result<Next> {
        match self.sampler.gpu_candidates(SELECT_CAP) {
            Some(k) if self.gpu_select => {
                let keep = SELECT_RECENT.min(PENALTY_WINDOW);
                let mut recent: Vec<u32> = self.recent.iter().chain(ids).copied().collect();
                let cut = recent.len().saturating_sub(keep);
                recent.drain(..cut);
                let c = self.sampler.config();
                let sel = Select {
                    k,
                    penalty: c.repetition_penalty,
                    recent,
                    span: 30.0 * c.temperature.max(1e-3),
                };
                Ok(self.session.feed_select(ids, &sel).await?.into())
            }
            _ => Ok(Next::Row(self.session.feed(ids, Logits::Last).await?)),
        }
    }

    /// Feeds a prompt (see `begin_prompt`) and keeps what predicts the first token.
    pub async fn feed_prompt(&mut self, ids: &[u32]) -> Result<()> {
        self.begin_prompt(ids)?;
        let next = self.feed_for_next(ids).await?;
        self.finish_prompt_next(ids, next);
        Ok(())
    }

    /// Draws the next token and feeds it; `None` when the model chose a stop token.
    pub async fn feed_token(&mut self) -> Result<Option<u32>> {
        let Some(id) = self.begin_token()? else {
            return Ok(None);
        };
        let next = self.feed_for_next(&[id]).await?;
        self.finish_token_next(id, next);
        Ok(Some(id))
    }

    /// Samples from the pending logits. `Ok(None)` is a stop token: nothing is left to feed.
    /// Otherwise feed the token (`Logits::Last`) and pass the result to `finish_token`.
    pub fn begin_token(&mut self) -> Result<Option<u32>> {
        let logits = self.logits.as_ref().ok_or_else(|| {
            Error::invalid("nothing to continue: feed a prompt first (a reply that hit a stop token needs a new prompt)")
        })?;
        self.started = (self.clock)();
        let id = match logits {
            Next::Row(row) => {
                let recent: Vec<u32> = self.recent.iter().copied().collect();
                self.sampler.sample(row, &recent)
            }
            Next::Penalised(row) => self.sampler.sample_penalised(row),
            // (if the sampler changed since they were picked, the draw is among them)
            Next::Candidates(c) => self.sampler.sample_candidates(c),
        };
        if self.stop.contains(&id) {
            // Not fed: the cache ends with the reply's text, and Chat closes the turn with the
            // template's own end marker, whichever stop token the model chose.
            self.logits = None;
            self.stopped_on = Some(id);
            self.timing.generate_seconds += (self.clock)() - self.started;
            return Ok(None);
        }
        Ok(Some(id))
    }

    pub fn finish_token(&mut self, id: u32, logits: Vec<f32>) {
        self.finish_token_next(id, Next::Row(logits));
    }

    fn finish_token_next(&mut self, id: u32, next: Next) {
        self.remember(id);
        self.generated.push(id);
        self.logits = Some(next);
        self.timing.generated_tokens += 1;
        self.timing.generate_seconds += (self.clock)() - self.started;
    }

    fn remember(&mut self, id: u32) {
        if self.recent.len() == PENALTY_WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(id);
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl Generator {
    /// Feeds the prompt (blocks of the session's batch size) and keeps what predicts the next
    /// token.
    pub fn prompt(&mut self, ids: &[u32]) -> Result<()> {
        pollster::block_on(self.feed_prompt(ids))
    }

    /// Samples the next token and feeds it; `None` when the model chose a stop token.
    pub fn next_token(&mut self) -> Result<Option<u32>> {
        pollster::block_on(self.feed_token())
    }

    /// Up to `max_tokens` tokens as text pieces (see `TextStream`).
    pub fn stream<'a>(&'a mut self, tokenizer: &'a Tokenizer, max_tokens: usize) -> TextStream<'a> {
        TextStream {
            gen: self,
            decoder: StreamDecoder::new(tokenizer),
            remaining: max_tokens,
            stop: None,
            flushed: false,
        }
    }
}

/// Generated text, one piece per token. A piece may be empty when a token ends in the middle of
/// a multi-byte character, which then comes out whole with the next piece, so printing the pieces
/// as they come never shows a broken character. The last item is whatever the decoder still held.
/// Dropping the stream early is fine: everything generated so far is in the cache.
#[cfg(not(target_arch = "wasm32"))]
pub struct TextStream<'a> {
    gen: &'a mut Generator,
    decoder: StreamDecoder<'a>,
    remaining: usize,
    stop: Option<StopReason>,
    flushed: bool,
}

#[cfg(not(target_arch = "wasm32"))]
impl TextStream<'_> {
    /// Why the stream ended (None while it runs or when it was dropped early).
    pub fn stop_reason(&self) -> Option<StopReason> {
        self.stop
    }

    /// Ends the stream early (e.g. on Ctrl-C): returns the text the decoder still held.
    pub fn finish(&mut self) -> String {
        self.remaining = 0;
        if self.flushed {
            return String::new();
        }
        self.flushed = true;
        self.decoder.flush()
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl Iterator for TextStream<'_> {
    type Item = Result<String>;

    fn next(&mut self) -> Option<Result<String>> {
        if self.stop.is_none() && self.remaining == 0 {
            self.stop = Some(StopReason::MaxTokens);
        }
        if self.stop.is_some() {
            let rest = self.finish();
            return (!rest.is_empty()).then_some(Ok(rest));
        }
        match self.gen.next_token() {
            Ok(Some(id)) => {
                self.remaining -= 1;
                Some(Ok(self.decoder.push(id)))
            }
            Ok(None) => {
                // next_token returns None only after recording the stop token.
                self.stop = Some(
                    self.gen
                        .stopped_on()
                        .map_or(StopReason::MaxTokens, StopReason::StopToken),
                );
                self.next()
            }
            Err(e) => {
                self.stop = Some(StopReason::Error);
                self.flushed = true;
                Some(Err(e))
            }
        }
    }
}

/// Marks where the assistant's reply sits in a rendered template (a private-use character no
/// tokenizer merges with its neighbours and no user types).
const REPLY_MARK: &str = "\u{E000}sinkstream-reply\u{E000}";

/// The text to feed for one user turn.
#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    /// True when the cache must be cleared first (the template could not be continued in place).
    pub restart: bool,
    pub text: String,
}

/// The text that continues a conversation whose cache holds everything up to (and including)
/// the last reply's text, to the generation prompt after `user`.
///
/// Why this way: the cache must hold exactly what the template would render for the whole
/// conversation, but we feed only what is new. Rendering the whole history every round and
/// slicing off what was fed would need the history forever (this is StreamingLLM: a chat may run
/// for millions of tokens) and breaks on templates that rewrite earlier text (trimmed or
/// filtered replies). Rendering turns on their own breaks templates with conversation-level
/// logic (SmolLM2 inserts a default system prompt when the first message is not one). So we
/// render a short stand-in conversation, [system] + [last user, assistant = MARK], with and
/// without the new user message: the difference is the new turn exactly as the full conversation
/// would render it, and what follows MARK is the template's end-of-reply text (`<|im_end|>\n`),
/// which closes the reply whichever stop token the model chose (stop tokens are not fed). The
/// new text starts with a special token in every template we know, so tokenizing it on its own
/// gives the same ids as tokenizing the whole conversation. If the template is not prefix-stable
/// we fall back to a restart from the stand-in conversation with the real reply.
pub fn turn_text(
    template: &ChatTemplate,
    system: Option<&str>,
    last: Option<(&str, &str)>,
    user: &str,
) -> Result<Turn> {
    let mut msgs: Vec<Message> = system
        .map(|s| Message::new("system", s))
        .into_iter()
        .collect();
    let Some((last_user, last_reply)) = last else {
        msgs.push(Message::new("user", user));
        return Ok(Turn {
            restart: false,
            text: template.render(&msgs, true)?,
        });
    };
    msgs.push(Message::new("user", last_user));
    msgs.push(Message::new("assistant", REPLY_MARK));
    let before = template.render(&msgs, false)?;
    msgs.push(Message::new("user", user));
    let after = template.render(&msgs, true)?;
    if let (Some(at), Some(new)) = (
        before.rfind(REPLY_MARK),
        after.strip_prefix(before.as_str()),
    ) {
        return Ok(Turn {
            restart: false,
            text: format!("{}{new}", &before[at + REPLY_MARK.len()..]),
        });
    }
    let n = msgs.len();
    msgs[n - 2].content = last_reply.to_string();
    Ok(Turn {
        restart: true,
        text: template.render(&msgs, true)?,
    })
}

/// A multi-round chat. Only the last exchange is kept as text (for rendering the next turn); the
/// conversation itself lives in the session's cache, so memory stays constant however long it runs.
pub struct Chat {
    gen: Generator,
    template: ChatTemplate,
    system: Option<String>,
    /// The last completed exchange (user, reply).
    last: Option<(String, String)>,
    /// The user message whose reply is being (or was last) generated.
    pending: Option<String>,
}

impl Chat {
    /// Starts from the generator's session as it is (normally empty).
    pub fn new(gen: Generator, template: ChatTemplate, system: Option<String>) -> Chat {
        Chat {
            gen,
            template,
            system,
            last: None,
            pending: None,
        }
    }

    pub fn generator(&self) -> &Generator {
        &self.gen
    }

    pub fn generator_mut(&mut self) -> &mut Generator {
        &mut self.gen
    }

    /// Forgets the conversation (the system prompt stays).
    pub fn reset(&mut self) {
        self.gen.reset();
        self.last = None;
        self.pending = None;
    }

    /// The tokens to feed for `user`'s message; clears the cache first if the template asks for a
    /// restart. Call `begin_prompt`/feed/`finish_prompt` (or `send`) with them next.
    pub fn begin_turn(&mut self, tokenizer: &Tokenizer, user: &str) -> Result<Vec<u32>> {
        if let Some(prev) = self.pending.take() {
            // Whatever the reply's state (stopped, cut short, interrupted) its tokens are in the cache.
            let reply = tokenizer.decode(self.gen.generated())?;
            self.last = Some((prev, reply));
        }
        let last = self.last.as_ref().map(|(u, r)| (u.as_str(), r.as_str()));
        let turn = turn_text(&self.template, self.system.as_deref(), last, user)?;
        let ids = tokenizer.encode(&turn.text)?;
        if turn.restart {
            self.gen.reset();
        }
        self.pending = Some(user.to_string());
        Ok(ids)
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl Chat {
    /// Feeds the user's turn and the generation prompt; then `reply` streams the answer.
    pub fn send(&mut self, tokenizer: &Tokenizer, user: &str) -> Result<()> {
        let ids = self.begin_turn(tokenizer, user)?;
        self.gen.prompt(&ids)
    }

    /// The assistant's reply, streamed. It may be dropped early (Ctrl-C): the next `send` closes it.
    pub fn reply<'a>(&'a mut self, tokenizer: &'a Tokenizer, max_tokens: usize) -> TextStream<'a> {
        self.gen.stream(tokenizer, max_tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_turns_concatenate_to_the_full_render() {
        let t = ChatTemplate::chatml();
        let first = turn_text(&t, Some("be brief"), None, "hi").unwrap();
        assert!(!first.restart);
        let second = turn_text(&t, Some("be brief"), Some(("hi", " Hello!")), "bye").unwrap();
        assert!(!second.restart);
        assert_eq!(
            second.text,
            "<|im_end|>\n<|im_start|>user\nbye<|im_end|>\n<|im_start|>assistant\n"
        );
        let fed = format!("{}{}{}", first.text, " Hello!", second.text);
        let full = t
            .render(
                &[
                    Message::new("system", "be brief"),
                    Message::new("user", "hi"),
                    Message::new("assistant", " Hello!"),
                    Message::new("user", "bye"),
                ],
                true,
            )
            .unwrap();
        assert_eq!(fed, full);
    }

    /// SmolLM2's template adds a default system prompt when the first message is not a system
    /// message: it must appear once, in the first turn only.
    #[test]
    fn default_system_prompt_only_once() {
        let src = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nDEFAULT<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
        let t = ChatTemplate::new(src, "", "").unwrap();
        let first = turn_text(&t, None, None, "a").unwrap().text;
        assert!(first.starts_with("<|im_start|>system\nDEFAULT"));
        let second = turn_text(&t, None, Some(("a", "b")), "c").unwrap();
        assert!(!second.restart);
        assert!(!second.text.contains("DEFAULT"));
        assert_eq!(
            format!("{first}b{}", second.text),
            t.render(
                &[
                    Message::new("user", "a"),
                    Message::new("assistant", "b"),
                    Message::new("user", "c")
                ],
                true
            )
            .unwrap()
        );
    }

    /// A template that trims replies still closes the turn in place.
    #[test]
    fn trimming_template_and_fallback() {
        let trim = "{% for m in messages %}<{{ m.role }}>{{ m.content | trim }}</s>{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}";
        let t = ChatTemplate::new(trim, "", "").unwrap();
        let turn = turn_text(&t, None, Some(("q", "  r  ")), "next").unwrap();
        assert_eq!(
            turn,
            Turn {
                restart: false,
                text: "</s><user>next</s><assistant>".into()
            }
        );
        // A template that numbers turns from the end is not prefix-stable: restart with the real reply.
        let odd = "{% for m in messages %}[{{ messages|length - loop.index }}]{{ m.content }}{% endfor %}";
        let t = ChatTemplate::new(odd, "", "").unwrap();
        let turn = turn_text(&t, None, Some(("q", "r")), "n").unwrap();
        assert_eq!(
            turn,
            Turn {
                restart: true,
                text: "[2]q[1]r[0]n".into()
            }
        );
    }
}
