//! Chat prompts: renders a conversation through the model's own Jinja chat template (as Hugging Face
//! transformers does, via minijinja), with a ChatML fallback for models that ship none.

use std::collections::BTreeMap;

use minijinja::{context, Environment, ErrorKind, Value};

use crate::error::{Error, Result};

/// One turn of a conversation: role is "system", "user" or "assistant" (templates may accept others).
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

const TEMPLATE_NAME: &str = "chat_template";

/// ChatML without a default system prompt: what SmolLM2 and many other models are trained on.
const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// A compiled chat template.
#[derive(Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source", &self.source)
            .finish()
    }
}

/// Templates call raise_exception("...") to reject conversations they cannot format
/// (e.g. roles out of order); the message becomes our render error.
fn raise_exception(msg: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
}

fn template_err(what: &str, e: minijinja::Error) -> Error {
    Error::Tokenizer(format!("chat template {what}: {e}"))
}

impl ChatTemplate {
    /// From the Jinja source (tokenizer.chat_template in GGUF, or chat_template in tokenizer_config.json).
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<ChatTemplate> {
        let mut env = Environment::new();
        // transformers compiles templates with trim_blocks and lstrip_blocks; without them the
        // whitespace around {% %} tags of multi-line templates would end up in the prompt.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        // Python string/dict methods (.strip(), .startswith(), .items(), ...) that HF templates use.
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned(TEMPLATE_NAME, source.to_string())
            .map_err(|e| template_err("does not parse", e))?;
        Ok(ChatTemplate {
            env,
            source: source.to_string(),
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        })
    }

    /// ChatML fallback when a model has no template.
    pub fn chatml() -> ChatTemplate {
        ChatTemplate::new(CHATML, "<|im_start|>", "<|im_end|>")
            .expect("the built-in ChatML template parses")
    }

    /// The Jinja source this template was built from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders messages; add_generation_prompt appends the assistant header.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        // Messages are plain dicts in HF templates: message['role'] and message.role both work.
        let messages: Vec<BTreeMap<&str, &str>> = messages
            .iter()
            .map(|m| BTreeMap::from([("role", m.role.as_str()), ("content", m.content.as_str())]))
            .collect();
        let tmpl = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| template_err("is missing", e))?;
        tmpl.render(context! {
            messages => Value::from_serialize(&messages),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
        })
        .map_err(|e| template_err("failed to render", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_renders_turns_and_header() {
        let out = ChatTemplate::chatml()
            .render(
                &[
                    Message::new("user", "hi"),
                    Message::new("assistant", "hello"),
                ],
                true,
            )
            .unwrap();
        assert_eq!(out, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n<|im_start|>assistant\n");
        let out = ChatTemplate::chatml()
            .render(&[Message::new("user", "hi")], false)
            .unwrap();
        assert_eq!(out, "<|im_start|>user\nhi<|im_end|>\n");
    }

    #[test]
    fn hf_template_features() {
        // raise_exception, namespace, loop, python string methods, bos_token, trim/lstrip blocks.
        let src = "{{ bos_token }}{% set ns = namespace(n=0) %}\n\
                   {% for m in messages %}\n\
                     {% if m.role not in ['user', 'assistant'] %}{{ raise_exception('bad role ' + m.role) }}{% endif %}\n\
                     {% set ns.n = ns.n + 1 %}\n\
                     [{{ loop.index }}:{{ m['content'].strip().upper() }}]\n\
                   {% endfor %}\n\
                   {{ ns.n }}{{ eos_token }}";
        let t = ChatTemplate::new(src, "<s>", "</s>").unwrap();
        let out = t
            .render(
                &[Message::new("user", "  a "), Message::new("assistant", "b")],
                false,
            )
            .unwrap();
        assert_eq!(out, "<s>[1:A]\n[2:B]\n2</s>");
        let err = t
            .render(&[Message::new("tool", "x")], false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad role tool"), "{err}");
    }

    #[test]
    fn syntax_error_is_an_error() {
        let err = ChatTemplate::new("{% for m in messages %}", "", "")
            .unwrap_err()
            .to_string();
        assert!(err.contains("chat template"), "{err}");
    }
}
