//! Chat templates: the Jinja template a model ships (GGUF `tokenizer.chat_template`,
//! `tokenizer_config.json`'s `chat_template`, or `chat_template.jinja`), rendered with
//! minijinja the way Hugging Face transformers renders it (`trim_blocks`, `lstrip_blocks`,
//! Python string methods, `raise_exception`).

use minijinja::syntax::SyntaxConfig;
use minijinja::{context, Environment, Error as JinjaError, ErrorKind};
use serde::Serialize;

use super::error::{Result, TokenizerError};

const TEMPLATE_NAME: &str = "chat_template";

/// Bound on template instructions per render, so a hostile template cannot loop for ever
/// (a real chat template uses a few hundred per message).
const FUEL_PER_RENDER: u64 = 10_000_000;

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    /// "system", "user" or "assistant" (templates may accept others, e.g. "tool").
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }

    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// A parsed chat template with the BOS/EOS texts it may print.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

/// `raise_exception(msg)`: templates call it to reject a conversation (e.g. roles that do not
/// alternate); it becomes a render error carrying the template's message.
fn raise_exception(message: String) -> std::result::Result<String, JinjaError> {
    Err(JinjaError::new(ErrorKind::InvalidOperation, message))
}

impl ChatTemplate {
    /// Parses `source`. `bos` / `eos` are the texts of the model's BOS/EOS tokens, which
    /// templates print as `{{ bos_token }}` / `{{ eos_token }}`. Errors name the line that
    /// does not parse.
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<Self> {
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| TokenizerError::TemplateSyntax(e.to_string()))?;
        env.set_syntax(syntax);
        env.set_fuel(Some(FUEL_PER_RENDER));
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned(TEMPLATE_NAME, source.to_string())
            .map_err(|e| TokenizerError::TemplateSyntax(e.to_string()))?;
        Ok(Self {
            env,
            bos_token: bos.to_string(),
            eos_token: eos.to_string(),
        })
    }

    /// Renders the conversation; with `add_generation_prompt` the text ends where the
    /// assistant's reply begins. Encode the result with
    /// [`super::Tokenizer::encode_chat_prompt`], which adds BOS only if the template did not.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| TokenizerError::TemplateRender(e.to_string()))?;
        template
            .render(context! {
                messages => minijinja::value::Serde(messages),
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|e| TokenizerError::TemplateRender(e.to_string()))
    }

    /// The BOS text the template was given.
    pub fn bos_token(&self) -> &str {
        &self.bos_token
    }

    /// The EOS text the template was given.
    pub fn eos_token(&self) -> &str {
        &self.eos_token
    }
}
