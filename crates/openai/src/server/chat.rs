//! `POST /v1/chat/completions`: the messages through the served conversation template (a
//! LLaVA `--conv-mode`: system messages replace its system prompt, user and assistant turns
//! take its role names, an open assistant turn ends the prompt), BOS as the tokenizer's config
//! says, greedy by default, the template's separator as a stop string.

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use sightline_model::generate::GenerateOptions;
use sightline_vision::conversation::{template, SepStyle};

use super::stream::{self, ChunkFn, Piece};
use super::{admit_and_parse, json_ok, now, ApiError, AppState, Sampling};
use crate::wire::{
    ChatChoice, ChatMessage, ChatRequest, ChatResponse, Content, ContentPart, ReplyMessage, Usage,
};

pub(super) async fn handle(State(s): State<AppState>, body: Body) -> Response {
    match run(&s, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn run(s: &AppState, body: Body) -> Result<Response, ApiError> {
    let (permit, req): (_, ChatRequest) = admit_and_parse(s, body).await?;
    s.check_model(&req.model)?;
    let sampling = Sampling::check(req.temperature, req.top_p, req.seed, req.n)?;
    let (prompt, template_stop) = render(&s.opts.conv_mode, &req.messages)?;
    let facts = &s.engine.facts;
    let ids = facts
        .tokenizer
        .encode_prompt(&prompt)
        .map_err(|e| ApiError::bad("messages", e.to_string()))?;
    if ids.is_empty() || ids.len() >= facts.max_position {
        return Err(ApiError::bad(
            "messages",
            format!(
                "the conversation is {} tokens; the model has {} positions",
                ids.len(),
                facts.max_position
            ),
        )
        .code("context_length_exceeded"));
    }
    let room = facts.max_position - ids.len();
    let max_tokens = req.max_completion_tokens.or(req.max_tokens).unwrap_or(room);
    let mut stop = req.stop.clone().map(|s| s.into_vec()).unwrap_or_default();
    stop.extend(template_stop);
    let opts = GenerateOptions {
        max_new_tokens: max_tokens,
        stop,
        temperature: sampling.temperature,
        top_p: sampling.top_p,
        seed: sampling.seed,
        ..Default::default()
    };
    let (id, created, model) = (format!("chatcmpl-{}", now()), now(), req.model.clone());
    if req.stream {
        let chunk: ChunkFn = std::sync::Arc::new(move |p: Piece<'_>| {
            let (delta, finish) = match p {
                Piece::Start => (json!({"role": "assistant", "content": ""}), json!(null)),
                Piece::Text(t) => (json!({"content": t}), json!(null)),
                Piece::Finish(f) => (json!({}), json!(f)),
            };
            Some(
                json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}),
            )
        });
        return stream::stream(s, permit, ids, opts, chunk).await;
    }
    let prompt_tokens = ids.len() as u64;
    let gen = stream::generate(s, ids, opts).await?;
    let completion_tokens = gen.tokens.len() as u64;
    Ok(json_ok(&ChatResponse {
        id,
        object: "chat.completion".into(),
        created,
        model,
        choices: vec![ChatChoice {
            index: 0,
            finish_reason: Some(stream::finish_reason(&facts.tokenizer, &gen).into()),
            message: ReplyMessage {
                role: "assistant".into(),
                content: Some(gen.text),
            },
        }],
        usage: Some(Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }),
    }))
}

/// The prompt text of `messages` under template `mode`, and the template's stop string
/// (LLaVA's `KeywordsStoppingCriteria`: `sep` for single-separator styles, else `sep2`).
fn render(mode: &str, messages: &[ChatMessage]) -> Result<(String, Option<String>), ApiError> {
    let mut conv = template(mode)
        .ok_or_else(|| ApiError::internal(format!("unknown conversation template {mode}")))?;
    if messages.is_empty() {
        return Err(ApiError::bad("messages", "messages must not be empty"));
    }
    let mut system: Vec<String> = Vec::new();
    let mut last_role = "";
    for (i, m) in messages.iter().enumerate() {
        let text =
            text_of(&m.content).map_err(|e| ApiError::bad(&format!("messages[{i}].content"), e))?;
        match m.role.as_str() {
            "system" | "developer" => system.push(text),
            "user" => conv.push(conv.roles.0, Some(&text)),
            "assistant" => conv.push(conv.roles.1, Some(&text)),
            other => {
                return Err(ApiError::bad(
                    &format!("messages[{i}].role"),
                    format!("role `{other}` is not one of system, user, assistant"),
                ))
            }
        }
        if m.role != "system" && m.role != "developer" {
            last_role = if m.role == "user" {
                "user"
            } else {
                "assistant"
            };
        }
    }
    if last_role != "user" {
        return Err(ApiError::bad(
            "messages",
            "the last non-system message must be the user's",
        ));
    }
    if !system.is_empty() {
        conv.system = system.join("\n");
    }
    conv.push(conv.roles.1, None);
    let stop = match conv.style {
        SepStyle::Two | SepStyle::Llama2 => conv.sep2,
        SepStyle::Single => Some(conv.sep),
        SepStyle::Plain => None,
    };
    Ok((conv.prompt(), stop.map(str::to_string)))
}

/// A message's text; image parts are refused (this server runs the decoder only).
fn text_of(content: &Content) -> Result<String, String> {
    match content {
        Content::Text(t) => Ok(t.clone()),
        Content::Parts(parts) => parts
            .iter()
            .map(|p| match p {
                ContentPart::Text { text } => Ok(text.as_str()),
                ContentPart::ImageUrl { .. } => Err(
                    "image parts are not supported: sightline serve runs text-only (see README, API models)"
                        .to_string(),
                ),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|v| v.join("\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, text: &str) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: Content::Text(text.into()),
        }
    }

    #[test]
    fn messages_follow_the_template() {
        let (p, stop) = render("v1", &[msg("system", "Be brief."), msg("user", "Hi?")]).unwrap();
        assert_eq!(p, "Be brief. USER: Hi? ASSISTANT:");
        assert_eq!(stop.as_deref(), Some("</s>"));
        assert!(render("v1", &[msg("assistant", "x")]).is_err());
        assert!(render("v1", &[msg("tool", "x")]).is_err());
        assert!(render("v1", &[]).is_err());
    }
}
