//! `POST /v1/chat/completions`: the messages through the served conversation template (a
//! LLaVA `--conv-mode`, rendered by [`render_chat`]: system messages replace its system
//! prompt, user and assistant turns take its role names, an open assistant turn ends the
//! prompt), BOS as the tokenizer's config says, greedy by default, the template's separator as
//! a stop string.
//!
//! **Images** (when a LLaVA model is served): an `image_url` part must be a `data:` URL
//! (base64; the server fetches nothing). Parts are joined with `\n` and each image part
//! becomes `<image>`, so `[image, text]` is LLaVA's own `"<image>\n{text}"`. A request with
//! images runs through the batched LLaVA decoder (the one `sightline eval` runs image tasks
//! with), which also honours vLLM's `top_k` and `min_tokens`; its `usage.prompt_tokens`
//! counts the text tokens with one per image.

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::json;
use sightline_model::generate::GenerateOptions;
use sightline_vision::batch_generate::{Decoding, Sampling as ImageSampling};
use sightline_vision::conversation::{render_chat, ChatRole};
use sightline_vision::llava::IMAGE_PLACEHOLDER;
use sightline_vision::RgbImage;

use super::stream::{self, ChunkFn, Piece, Work};
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
    let chat = parse_messages(&req.messages, s.engine.facts.vision)?;
    let turns: Vec<(ChatRole, &str)> = chat.turns.iter().map(|(r, t)| (*r, t.as_str())).collect();
    let (prompt, template_stop) = render_chat(&s.opts.conv_mode, &turns)
        .map_err(|e| ApiError::bad("messages", e.to_string()))?;
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
    stop.extend(template_stop.map(str::to_string));
    let prompt_tokens = ids.len() as u64;
    let work = if chat.images.is_empty() {
        if req.min_tokens.is_some_and(|m| m > 0) {
            return Err(ApiError::bad(
                "min_tokens",
                "min_tokens is supported for requests with images only",
            ));
        }
        Work::Text {
            prompt: ids,
            opts: GenerateOptions {
                max_new_tokens: max_tokens,
                stop,
                temperature: sampling.temperature,
                top_k: req.top_k.unwrap_or(0),
                top_p: sampling.top_p,
                seed: sampling.seed,
                ..Default::default()
            },
        }
    } else {
        if sampling.top_p != 1.0 {
            return Err(ApiError::bad(
                "top_p",
                "top_p is not supported with images (the LLaVA decoder samples with temperature and top_k)",
            ));
        }
        let images = decode_images(chat.images).await?;
        Work::Image {
            prompt,
            images,
            decoding: Decoding {
                max_new_tokens: max_tokens,
                min_new_tokens: req.min_tokens.unwrap_or(0),
                sampling: (sampling.temperature > 0.0).then_some(ImageSampling {
                    temperature: sampling.temperature,
                    top_k: req.top_k.unwrap_or(0),
                }),
                stop,
            },
            seed: sampling.seed,
        }
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
        return stream::stream(s, permit, work, chunk).await;
    }
    let gen = stream::generate(s, work).await?;
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

/// The turns of a chat (image parts written as `<image>`) and its images' bytes, in order.
#[derive(Debug)]
struct ParsedChat {
    turns: Vec<(ChatRole, String)>,
    images: Vec<(String, Vec<u8>)>,
}

fn parse_messages(messages: &[ChatMessage], vision: bool) -> Result<ParsedChat, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::bad("messages", "messages must not be empty"));
    }
    let mut chat = ParsedChat {
        turns: Vec::with_capacity(messages.len()),
        images: Vec::new(),
    };
    for (i, m) in messages.iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => ChatRole::System,
            "user" => ChatRole::User,
            "assistant" => ChatRole::Assistant,
            other => {
                return Err(ApiError::bad(
                    &format!("messages[{i}].role"),
                    format!("role `{other}` is not one of system, user, assistant"),
                ))
            }
        };
        let text = match &m.content {
            Content::Text(t) => t.clone(),
            Content::Parts(parts) => {
                let mut pieces = Vec::with_capacity(parts.len());
                for (j, p) in parts.iter().enumerate() {
                    match p {
                        ContentPart::Text { text } => pieces.push(text.clone()),
                        ContentPart::ImageUrl { image_url } => {
                            let param = format!("messages[{i}].content[{j}].image_url");
                            if !vision {
                                return Err(ApiError::bad(
                                    &param,
                                    "image parts need a vision-language model: this server runs a text decoder (start sightline serve on a LLaVA checkpoint, or with --mm-projector)",
                                ));
                            }
                            if role != ChatRole::User {
                                return Err(ApiError::bad(&param, "images go in user messages"));
                            }
                            let bytes = data_url_bytes(&image_url.url)
                                .map_err(|msg| ApiError::bad(&param, msg))?;
                            chat.images.push((param, bytes));
                            pieces.push(IMAGE_PLACEHOLDER.to_string());
                        }
                    }
                }
                pieces.join("\n")
            }
        };
        chat.turns.push((role, text));
    }
    Ok(chat)
}

/// The bytes of a base64 `data:` URL.
fn data_url_bytes(url: &str) -> Result<Vec<u8>, String> {
    let Some(rest) = url.strip_prefix("data:") else {
        return Err(
            "only data: URLs are accepted (data:image/png;base64,...): the server fetches nothing"
                .into(),
        );
    };
    let Some((meta, data)) = rest.split_once(',') else {
        return Err("a data: URL needs a comma before its data".into());
    };
    if !meta.ends_with(";base64") {
        return Err("the data: URL must be base64-encoded (data:image/...;base64,...)".into());
    }
    base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| format!("the data: URL's base64 is invalid: {e}"))
}

/// Decodes the images off the async threads (a large JPEG takes a while).
async fn decode_images(images: Vec<(String, Vec<u8>)>) -> Result<Vec<RgbImage>, ApiError> {
    tokio::task::spawn_blocking(move || {
        images
            .iter()
            .map(|(param, bytes)| {
                sightline_vision::preprocess::decode_rgb(bytes, std::path::Path::new(param))
                    .map_err(|e| ApiError::bad(param, e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|_| ApiError::internal("image decoding stopped"))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ImageUrl;

    fn msg(role: &str, text: &str) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: Content::Text(text.into()),
        }
    }

    fn render(messages: &[ChatMessage]) -> Result<(String, Option<&'static str>), String> {
        let chat = parse_messages(messages, true).map_err(|e| format!("{e:?}"))?;
        let turns: Vec<(ChatRole, &str)> =
            chat.turns.iter().map(|(r, t)| (*r, t.as_str())).collect();
        render_chat("v1", &turns).map_err(|e| e.to_string())
    }

    #[test]
    fn messages_follow_the_template() {
        let (p, stop) = render(&[msg("system", "Be brief."), msg("user", "Hi?")]).unwrap();
        assert_eq!(p, "Be brief. USER: Hi? ASSISTANT:");
        assert_eq!(stop, Some("</s>"));
        assert!(render(&[msg("assistant", "x")]).is_err());
        assert!(render(&[msg("tool", "x")]).is_err());
        assert!(render(&[]).is_err());
    }

    #[test]
    fn an_image_part_becomes_the_llava_placeholder() {
        let url = |u: &str| ContentPart::ImageUrl {
            image_url: ImageUrl { url: u.into() },
        };
        let parts = |p: Vec<ContentPart>| ChatMessage {
            role: "user".into(),
            content: Content::Parts(p),
        };
        let text = ContentPart::Text {
            text: "What is it?".into(),
        };
        let ok = parse_messages(
            &[parts(vec![url("data:image/png;base64,AAEC"), text.clone()])],
            true,
        )
        .unwrap();
        assert_eq!(ok.turns[0].1, "<image>\nWhat is it?");
        assert_eq!(ok.images[0].1, vec![0u8, 1, 2]);
        // A text-only server, a fetchable URL, bad base64: each a 400 naming the part.
        for (m, vision) in [
            (parts(vec![url("data:image/png;base64,AAEC")]), false),
            (parts(vec![url("https://example.com/x.png")]), true),
            (parts(vec![url("data:image/png;base64,!!")]), true),
            (parts(vec![url("data:image/png,AAEC")]), true),
        ] {
            let e = parse_messages(&[m], vision).unwrap_err();
            assert!(
                format!("{e:?}").contains("messages[0].content[0].image_url"),
                "{e:?}"
            );
        }
    }
}
