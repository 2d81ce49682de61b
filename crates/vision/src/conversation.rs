//! LLaVA's conversation templates (`llava/conversation.py` of Sight-Beyond-Text @ 47f96a32, the
//! same as haotian-liu/LLaVA @ 8d596d8), shared by generation, multimodal evaluation and
//! training.
//!
//! [`Conversation::prompt`] reproduces `Conversation.get_prompt()` byte for byte, quirks
//! included: the LLaMA-2 style strips the *characters* `<`, `s`, `>` from the left of the
//! prompt (Python's `str.lstrip("<s>")`), and an assistant turn of `None` ends the prompt
//! with `"ROLE:"` so the model writes the reply.

/// How turns are joined (`SeparatorStyle`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SepStyle {
    /// `system###Human: m###Assistant:` (`v0`).
    Single,
    /// `system USER: m ASSISTANT: r</s>` (`v1`).
    Two,
    /// `[INST] <<SYS>>…<</SYS>>\n\nm [/INST] r </s><s>[INST] …` (`llava_llama_2`).
    Llama2,
    /// Messages concatenated with `sep`/`sep2`, no roles (`plain`, stage-1 captions).
    Plain,
}

/// One chat template with its messages so far.
#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    /// The name it was looked up by.
    pub name: &'static str,
    pub system: String,
    /// (user role, assistant role).
    pub roles: (&'static str, &'static str),
    /// `(role, message)`; `None` asks the model to continue from that role.
    pub messages: Vec<(String, Option<String>)>,
    /// How many leading `messages` are canned examples (v0's renewable-energy exchange).
    pub offset: usize,
    pub style: SepStyle,
    pub sep: &'static str,
    pub sep2: Option<&'static str>,
    /// LLaVA's `version` field (only informational here: the serving-path `<image>` handling
    /// that depends on it applies to image tuples, which sightline never puts in messages).
    pub version: &'static str,
}

/// The system prompt of `v0`, `llava_v0` and `llava_v1` (S0 in the spec).
pub const SYSTEM_HUMAN: &str = "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the human's questions.";
/// The system prompt of `v1` / `vicuna_v1` (S1).
pub const SYSTEM_USER: &str = "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions.";
/// The system prompt of `llava_llama_2` (S2).
pub const SYSTEM_LLAVA_LLAMA_2: &str = "You are a helpful language and vision assistant. You are able to understand the visual content that the user provides, and assist the user with a variety of tasks using natural language.";
/// Meta's default LLaMA-2 chat system prompt (`llama_2`), two spaces after "safe." included.
pub const SYSTEM_LLAMA_2: &str = "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being safe.  Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or illegal content. Please ensure that your responses are socially unbiased and positive in nature.\n\nIf a question does not make any sense, or is not factually coherent, explain why instead of answering something not correct. If you don't know the answer to a question, please don't share false information.";

/// The canned first exchange of `v0` (`conv_vicuna_v0`); every SBT evaluation prompt has it.
pub const V0_EXAMPLE_QUESTION: &str =
    "What are the key differences between renewable and non-renewable energy sources?";
/// The canned answer of `v0`; it ends with `\n`, so `…instability.\n###Human:` appears.
pub const V0_EXAMPLE_ANSWER: &str = "Renewable energy sources are those that can be replenished naturally in a relatively short amount of time, such as solar, wind, hydro, geothermal, and biomass. Non-renewable energy sources, on the other hand, are finite and will eventually be depleted, such as coal, oil, and natural gas. Here are some key differences between renewable and non-renewable energy sources:\n1. Availability: Renewable energy sources are virtually inexhaustible, while non-renewable energy sources are finite and will eventually run out.\n2. Environmental impact: Renewable energy sources have a much lower environmental impact than non-renewable sources, which can lead to air and water pollution, greenhouse gas emissions, and other negative effects.\n3. Cost: Renewable energy sources can be more expensive to initially set up, but they typically have lower operational costs than non-renewable sources.\n4. Reliability: Renewable energy sources are often more reliable and can be used in more remote locations than non-renewable sources.\n5. Flexibility: Renewable energy sources are often more flexible and can be adapted to different situations and needs, while non-renewable sources are more rigid and inflexible.\n6. Sustainability: Renewable energy sources are more sustainable over the long term, while non-renewable sources are not, and their depletion can lead to economic and social instability.\n";

/// Template names accepted by [`template`] (LLaVA's `conv_templates` keys, plus `plain` for
/// `v0_plain`).
pub const TEMPLATE_NAMES: &[&str] = &[
    "v0",
    "default",
    "v1",
    "vicuna_v1",
    "llava_v0",
    "llava_v1",
    "llama_2",
    "llava_llama_2",
    "plain",
    "v0_plain",
];

/// Looks a template up by LLaVA's `--conv-mode` / `--version` name.
pub fn template(name: &str) -> Option<Conversation> {
    let canned = |q: &str, a: &str| {
        vec![
            ("Human".to_string(), Some(q.to_string())),
            ("Assistant".to_string(), Some(a.to_string())),
        ]
    };
    let c = |name, system: &str, roles, messages, offset, style, sep, sep2, version| Conversation {
        name,
        system: system.to_string(),
        roles,
        messages,
        offset,
        style,
        sep,
        sep2,
        version,
    };
    Some(match name {
        "v0" | "default" => c(
            if name == "v0" { "v0" } else { "default" },
            SYSTEM_HUMAN,
            ("Human", "Assistant"),
            canned(V0_EXAMPLE_QUESTION, V0_EXAMPLE_ANSWER),
            2,
            SepStyle::Single,
            "###",
            None,
            "Unknown",
        ),
        "llava_v0" => c(
            "llava_v0",
            SYSTEM_HUMAN,
            ("Human", "Assistant"),
            canned("Hi!", "Hi there! How can I help you today?"),
            2,
            SepStyle::Single,
            "###",
            None,
            "Unknown",
        ),
        "v1" | "vicuna_v1" => c(
            if name == "v1" { "v1" } else { "vicuna_v1" },
            SYSTEM_USER,
            ("USER", "ASSISTANT"),
            vec![],
            0,
            SepStyle::Two,
            " ",
            Some("</s>"),
            "v1",
        ),
        "llava_v1" => c(
            "llava_v1",
            SYSTEM_HUMAN,
            ("USER", "ASSISTANT"),
            vec![],
            0,
            SepStyle::Two,
            " ",
            Some("</s>"),
            "v1",
        ),
        "llama_2" => c(
            "llama_2",
            SYSTEM_LLAMA_2,
            ("USER", "ASSISTANT"),
            vec![],
            0,
            SepStyle::Llama2,
            "<s>",
            Some("</s>"),
            "llama_v2",
        ),
        "llava_llama_2" => c(
            "llava_llama_2",
            SYSTEM_LLAVA_LLAMA_2,
            ("USER", "ASSISTANT"),
            vec![],
            0,
            SepStyle::Llama2,
            "<s>",
            Some("</s>"),
            "llama_v2",
        ),
        "plain" | "v0_plain" => c(
            if name == "plain" { "plain" } else { "v0_plain" },
            "",
            ("", ""),
            vec![],
            0,
            SepStyle::Plain,
            "\n",
            None,
            "Unknown",
        ),
        _ => return None,
    })
}

impl Conversation {
    /// Appends a message; `None` leaves the turn open for the model.
    pub fn push(&mut self, role: &str, message: Option<&str>) {
        self.messages
            .push((role.to_string(), message.map(str::to_string)));
    }

    /// Appends one user question and an open assistant turn — what LLaVA's eval scripts do
    /// before `get_prompt()`.
    pub fn ask(&mut self, question: &str) {
        let (user, assistant) = self.roles;
        self.push(user, Some(question));
        self.push(assistant, None);
    }

    /// The string generation stops at (LLaVA's `KeywordsStoppingCriteria` keyword): `sep` for
    /// single-separator styles, `sep2` otherwise, none for `plain`.
    pub fn stop(&self) -> Option<&'static str> {
        match self.style {
            SepStyle::Two | SepStyle::Llama2 => self.sep2,
            SepStyle::Single => Some(self.sep),
            SepStyle::Plain => None,
        }
    }

    /// `Conversation.get_prompt()`.
    pub fn prompt(&self) -> String {
        let sep2 = self.sep2.unwrap_or("");
        let mut ret = String::new();
        match self.style {
            SepStyle::Single => {
                ret.push_str(&self.system);
                ret.push_str(self.sep);
                for (role, msg) in &self.messages {
                    match non_empty(msg) {
                        Some(m) => {
                            ret.push_str(&format!("{role}: {m}{}", self.sep));
                        }
                        None => ret.push_str(&format!("{role}:")),
                    }
                }
            }
            SepStyle::Two => {
                ret.push_str(&self.system);
                ret.push_str(self.sep);
                for (i, (role, msg)) in self.messages.iter().enumerate() {
                    match non_empty(msg) {
                        Some(m) => {
                            let sep = if i % 2 == 0 { self.sep } else { sep2 };
                            ret.push_str(&format!("{role}: {m}{sep}"));
                        }
                        None => ret.push_str(&format!("{role}:")),
                    }
                }
            }
            SepStyle::Llama2 => {
                for (i, (_, msg)) in self.messages.iter().enumerate() {
                    let Some(m) = non_empty(msg) else { continue };
                    let m = if i == 0 {
                        format!("<<SYS>>\n{}\n<</SYS>>\n\n{m}", self.system)
                    } else {
                        m.to_string()
                    };
                    if i % 2 == 0 {
                        ret.push_str(&format!("{}[INST] {m} [/INST]", self.sep));
                    } else {
                        ret.push_str(&format!(" {m} {sep2}"));
                    }
                }
                ret = lstrip_chars(&ret, self.sep).to_string();
            }
            SepStyle::Plain => {
                ret.push_str(&self.system);
                for (i, (_, msg)) in self.messages.iter().enumerate() {
                    if let Some(m) = non_empty(msg) {
                        ret.push_str(m);
                        ret.push_str(if i % 2 == 0 { self.sep } else { sep2 });
                    }
                }
            }
        }
        ret
    }
}

/// Who speaks a turn of an OpenAI-style chat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatRole {
    /// Replaces the template's system prompt (several are joined with `\n`).
    System,
    User,
    Assistant,
}

/// The prompt a chat renders to under template `mode`, and the template's stop string: what
/// `sightline serve`'s `/v1/chat/completions` sends to the model, and what a local
/// `sightline eval --chat-template MODE` run sends for the same message, so that the two
/// compare on equal terms. System turns replace the system prompt, user and assistant turns
/// take the template's role names after its canned messages (v0's example exchange stays),
/// and an open assistant turn ends the prompt. The last non-system turn must be the user's.
pub fn render_chat(
    mode: &str,
    turns: &[(ChatRole, &str)],
) -> crate::Result<(String, Option<&'static str>)> {
    let mut conv = template(mode).ok_or_else(|| {
        crate::Error::Request(format!(
            "`{mode}` is not a known conversation template (expected one of: {})",
            TEMPLATE_NAMES.join(", ")
        ))
    })?;
    let mut system: Vec<&str> = Vec::new();
    let mut last = None;
    for &(role, text) in turns {
        match role {
            ChatRole::System => system.push(text),
            ChatRole::User => conv.push(conv.roles.0, Some(text)),
            ChatRole::Assistant => conv.push(conv.roles.1, Some(text)),
        }
        if role != ChatRole::System {
            last = Some(role);
        }
    }
    if last != Some(ChatRole::User) {
        return Err(crate::Error::Request(
            "the last non-system message must be the user's".into(),
        ));
    }
    if !system.is_empty() {
        conv.system = system.join("\n");
    }
    conv.push(conv.roles.1, None);
    Ok((conv.prompt(), conv.stop()))
}

/// Python's truthiness of an `Optional[str]` message: `None` and `""` both count as absent.
fn non_empty(msg: &Option<String>) -> Option<&str> {
    msg.as_deref().filter(|m| !m.is_empty())
}

/// Python's `s.lstrip(chars)`: removes leading characters that occur anywhere in `chars`.
fn lstrip_chars<'a>(s: &'a str, chars: &str) -> &'a str {
    s.trim_start_matches(|c: char| chars.contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt_for(name: &str, q: &str) -> String {
        let mut c = template(name).expect("known template");
        c.ask(q);
        c.prompt()
    }

    #[test]
    fn v1_prompt_ends_with_open_assistant_turn() {
        assert_eq!(
            prompt_for("v1", "<image>\nWhat is this?"),
            format!("{SYSTEM_USER} USER: <image>\nWhat is this? ASSISTANT:")
        );
    }

    #[test]
    fn v0_prompt_carries_the_canned_exchange() {
        let p = prompt_for("v0", "Q?");
        assert!(p.starts_with(&format!("{SYSTEM_HUMAN}###Human: What are the key")));
        assert!(p.contains("social instability.\n###Human: Q?###Assistant:"));
        assert!(p.ends_with("###Assistant:"));
    }

    #[test]
    fn llama_2_strips_leading_sep_characters() {
        let mut c = template("llava_llama_2").unwrap();
        c.push("USER", Some("Q1"));
        c.push("ASSISTANT", Some("A1"));
        c.push("USER", Some("Q2"));
        c.push("ASSISTANT", None);
        assert_eq!(
            c.prompt(),
            format!(
                "[INST] <<SYS>>\n{SYSTEM_LLAVA_LLAMA_2}\n<</SYS>>\n\nQ1 [/INST] A1 </s><s>[INST] Q2 [/INST]"
            )
        );
    }

    #[test]
    fn plain_joins_messages_with_newline() {
        let mut c = template("plain").unwrap();
        c.push("", Some("<image>"));
        c.push("", Some("a caption"));
        // sep2 is None in LLaVA, i.e. nothing after the caption in get_prompt().
        assert_eq!(c.prompt(), "<image>\na caption");
    }

    #[test]
    fn every_listed_name_resolves() {
        for n in TEMPLATE_NAMES {
            assert!(template(n).is_some(), "{n}");
        }
        assert!(template("mpt_text").is_none());
    }

    #[test]
    fn v0_example_answer_is_the_upstream_length() {
        // The spec gives its length as 1,383 characters.
        assert_eq!(V0_EXAMPLE_ANSWER.chars().count(), 1383);
    }
}
