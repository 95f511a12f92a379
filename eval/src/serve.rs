//! An OpenAI-compatible endpoint (`POST /v1/completions`, `POST /v1/chat/completions`,
//! `GET /v1/models`) over plain HTTP/1.1, so that lm-evaluation-harness (`local-completions`,
//! `local-chat-completions`), chat clients and other tools evaluate a dapt checkpoint unchanged. Chat
//! requests are rendered with the model's chat template (generation prompt added) and generated like
//! completions (stop strings, `max_tokens`, `temperature`, `top_p`, `seed`); each generation's
//! tokens per second are logged and returned in `usage`. `prompt` may be a string, a list of strings, a list of token ids or a list of
//! such lists; `echo` returns the prompt with its per-token `logprobs` (`token_logprobs`, `top_logprobs`,
//! `tokens`, `text_offset`), which is how log-likelihood evaluation is asked for. Requests are served
//! one at a time.
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};

use dapt_encoder::TokenizerFile;
use dapt_trainer::CausalLm;
use serde_json::{json, Value};
use tch::Device;

use crate::generate::{generate, FinishReason, GenerateOptions};
use crate::scorer::Scorer;

/// What the server serves.
pub struct Server<'a> {
    /// The model served.
    pub model: &'a CausalLm,
    /// Its tokenizer.
    pub tokenizer: &'a TokenizerFile,
    /// The name clients pass as `model` (any name is accepted).
    pub name: String,
    /// Where it runs.
    pub device: Device,
    /// Longest input in tokens for log-probabilities.
    pub max_length: usize,
    /// The chat template `/v1/chat/completions` renders messages with (none: chat is refused).
    pub chat_template: Option<dapt_packer::ChatTemplate>,
}

struct HttpError(u16, String);

fn bad_request(reason: impl Into<String>) -> HttpError {
    HttpError(400, reason.into())
}

impl Server<'_> {
    /// Serves until `stop` returns true (checked between requests) or the listener fails.
    pub fn run(&self, listener: TcpListener, stop: &dyn Fn() -> bool) -> std::io::Result<()> {
        for stream in listener.incoming() {
            let stream = match stream {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            };
            if let Err(e) = self.handle(stream) {
                tracing::warn!(error = %e, "request failed");
            }
            if stop() {
                break;
            }
        }
        Ok(())
    }

    fn handle(&self, stream: TcpStream) -> std::io::Result<()> {
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut request_line = String::new();
        reader.read_line(&mut request_line)?;
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.trim().eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        let mut parts = request_line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let path = path.split('?').next().unwrap_or("");
        let result = match (method, path) {
            ("GET", "/v1/models") => Ok(json!({
                "object": "list",
                "data": [{"id": self.name, "object": "model", "owned_by": "dapt"}],
            })),
            ("POST", "/v1/completions") => serde_json::from_slice::<Value>(&body)
                .map_err(|e| bad_request(format!("invalid JSON: {e}")))
                .and_then(|request| self.completions(&request)),
            ("POST", "/v1/chat/completions") => serde_json::from_slice::<Value>(&body)
                .map_err(|e| bad_request(format!("invalid JSON: {e}")))
                .and_then(|request| self.chat_completions(&request)),
            _ => Err(HttpError(404, format!("no route {method} {path}"))),
        };
        let (status, value) = match result {
            Ok(v) => (200, v),
            Err(HttpError(status, message)) => (
                status,
                json!({"error": {"message": message, "type": "invalid_request_error"}}),
            ),
        };
        let text = value.to_string();
        let reason = match status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            _ => "Error",
        };
        let mut stream = stream;
        write!(
            stream,
            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
            text.len()
        )?;
        stream.flush()
    }

    fn prompts(&self, prompt: &Value) -> Result<Vec<Vec<u32>>, HttpError> {
        let encode = |text: &str| {
            self.tokenizer
                .encode("prompt", text)
                .map_err(|e| bad_request(e.to_string()))
        };
        let ids = |list: &[Value]| -> Result<Vec<u32>, HttpError> {
            list.iter()
                .map(|v| {
                    v.as_u64()
                        .map(|i| i as u32)
                        .ok_or_else(|| bad_request("a token id is not a non-negative integer"))
                })
                .collect()
        };
        match prompt {
            Value::String(s) => Ok(vec![encode(s)?]),
            Value::Array(list) if list.is_empty() => Err(bad_request("empty prompt list")),
            Value::Array(list) => match &list[0] {
                Value::Number(_) => Ok(vec![ids(list)?]),
                Value::String(_) => list
                    .iter()
                    .map(|v| encode(v.as_str().unwrap_or_default()))
                    .collect(),
                Value::Array(_) => list
                    .iter()
                    .map(|v| ids(v.as_array().map(Vec::as_slice).unwrap_or_default()))
                    .collect(),
                _ => Err(bad_request(
                    "prompt must be a string, token ids, or a list of either",
                )),
            },
            _ => Err(bad_request(
                "prompt must be a string, token ids, or a list of either",
            )),
        }
    }

    /// Generates, logging the rate; returns the generation and its tokens per second.
    fn generate(
        &self,
        ids: &[u32],
        options: &GenerateOptions,
    ) -> Result<(crate::Generation, f64), HttpError> {
        let started = std::time::Instant::now();
        let generation = generate(self.model, self.tokenizer, ids, options, self.device)
            .map_err(|e| HttpError(500, e.to_string()))?;
        let seconds = started.elapsed().as_secs_f64();
        let tokens_per_second = generation.tokens.len() as f64 / seconds.max(1e-9);
        tracing::info!(
            prompt_tokens = ids.len(),
            completion_tokens = generation.tokens.len(),
            seconds,
            tokens_per_second,
            "generated"
        );
        Ok((generation, tokens_per_second))
    }

    fn chat_completions(&self, request: &Value) -> Result<Value, HttpError> {
        let template = self.chat_template.as_ref().ok_or_else(|| {
            bad_request("this server has no chat template (serve a model with tokenizer_config.json, or pass --chat-template)")
        })?;
        let messages: Vec<dapt_packer::Message> = request
            .get("messages")
            .ok_or_else(|| bad_request("`messages` is required"))
            .and_then(|m| {
                serde_json::from_value::<Vec<Value>>(m.clone())
                    .map_err(|e| bad_request(format!("`messages`: {e}")))
            })?
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let field = |key: &str| {
                    m.get(key)
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .ok_or_else(|| bad_request(format!("messages[{i}] has no string `{key}`")))
                };
                Ok(dapt_packer::Message {
                    role: field("role")?,
                    content: field("content")?,
                })
            })
            .collect::<Result<_, HttpError>>()?;
        if messages.is_empty() {
            return Err(bad_request("`messages` is empty"));
        }
        let max_tokens = request
            .get("max_completion_tokens")
            .or_else(|| request.get("max_tokens"))
            .and_then(Value::as_u64)
            .unwrap_or(256) as usize;
        let options = options(request, max_tokens)?;
        let prompt = template
            .render(&messages, true)
            .map_err(|e| bad_request(e.to_string()))?;
        let ids = self
            .tokenizer
            .encode("chat", &prompt)
            .map_err(|e| bad_request(e.to_string()))?;
        if ids.is_empty() {
            return Err(bad_request("the rendered conversation is empty"));
        }
        let (generation, tokens_per_second) = self.generate(&ids, &options)?;
        Ok(json!({
            "id": format!("chatcmpl-{}", dapt_core::hash::sha256_hex(request.to_string().as_bytes()).get(..16).unwrap_or("0")),
            "object": "chat.completion",
            "created": 0,
            "model": self.name,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": generation.text},
                "logprobs": Value::Null,
                "finish_reason": finish_reason(generation.finish_reason),
            }],
            "usage": {
                "prompt_tokens": ids.len(),
                "completion_tokens": generation.tokens.len(),
                "total_tokens": ids.len() + generation.tokens.len(),
                "completion_tokens_per_second": tokens_per_second,
            },
        }))
    }

    fn completions(&self, request: &Value) -> Result<Value, HttpError> {
        let prompt = request
            .get("prompt")
            .ok_or_else(|| bad_request("`prompt` is required"))?;
        let prompts = self.prompts(prompt)?;
        let max_tokens = request
            .get("max_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(16) as usize;
        let echo = request
            .get("echo")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let logprobs = request
            .get("logprobs")
            .and_then(Value::as_u64)
            .map(|n| n as usize);
        let options = options(request, max_tokens)?;
        let scorer = Scorer {
            model: self.model,
            device: self.device,
            max_length: self.max_length,
            batch_size: 1,
        };
        let (mut prompt_tokens, mut completion_tokens) = (0, 0);
        let mut choices = Vec::new();
        for (index, ids) in prompts.iter().enumerate() {
            if ids.is_empty() {
                return Err(bad_request(format!("prompt {index} is empty")));
            }
            prompt_tokens += ids.len();
            let (generated, text, finish) = if max_tokens > 0 {
                let (g, _) = self.generate(ids, &options)?;
                (g.tokens, g.text, g.finish_reason)
            } else {
                (Vec::new(), String::new(), FinishReason::Length)
            };
            completion_tokens += generated.len();
            let decode = |t: &[u32]| {
                self.tokenizer
                    .decode(t)
                    .map_err(|e| HttpError(500, e.to_string()))
            };
            let prompt_text = decode(ids)?;
            let shown: Vec<u32> = if echo {
                ids.iter().chain(&generated).copied().collect()
            } else {
                generated.clone()
            };
            let logprobs_value = match logprobs {
                None => Value::Null,
                Some(top) => {
                    let all: Vec<u32> = ids.iter().chain(&generated).copied().collect();
                    let scores = scorer.token_scores(&all, top);
                    let skip = if echo { 0 } else { ids.len() };
                    let mut tokens = Vec::new();
                    let mut offsets = Vec::new();
                    let mut offset = if echo { 0 } else { prompt_text.chars().count() };
                    let mut token_logprobs = Vec::new();
                    let mut top_logprobs = Vec::new();
                    for score in scores.iter().skip(skip).take(shown.len()) {
                        let piece = decode(&[score.id])?;
                        offsets.push(offset);
                        offset += piece.chars().count();
                        tokens.push(piece);
                        token_logprobs.push(score.logprob.map_or(Value::Null, |l| json!(l)));
                        if score.logprob.is_none() {
                            top_logprobs.push(Value::Null);
                        } else {
                            let mut map = serde_json::Map::new();
                            for (id, l) in &score.top {
                                map.insert(decode(&[*id])?, json!(l));
                            }
                            top_logprobs.push(Value::Object(map));
                        }
                    }
                    json!({
                        "tokens": tokens,
                        "token_logprobs": token_logprobs,
                        "top_logprobs": top_logprobs,
                        "text_offset": offsets,
                    })
                }
            };
            choices.push(json!({
                "index": index,
                "text": if echo { format!("{prompt_text}{text}") } else { text },
                "logprobs": logprobs_value,
                "finish_reason": finish_reason(finish),
            }));
        }
        Ok(json!({
            "id": format!("cmpl-{}", dapt_core::hash::sha256_hex(request.to_string().as_bytes()).get(..16).unwrap_or("0")),
            "object": "text_completion",
            "created": 0,
            "model": self.name,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }))
    }
}

fn finish_reason(finish: FinishReason) -> &'static str {
    match finish {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

/// Generation options of a request: `temperature` (default 1), `top_p`, `seed`, `stop` (a string or
/// a list); only `n` = 1.
fn options(request: &Value, max_tokens: usize) -> Result<GenerateOptions, HttpError> {
    if request.get("n").and_then(Value::as_u64).unwrap_or(1) != 1 {
        return Err(bad_request("only n = 1 is supported"));
    }
    let stop = match request.get("stop") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    Ok(GenerateOptions {
        max_tokens,
        temperature: request
            .get("temperature")
            .and_then(Value::as_f64)
            .unwrap_or(1.0),
        top_p: request.get("top_p").and_then(Value::as_f64).unwrap_or(1.0),
        seed: request.get("seed").and_then(Value::as_u64).unwrap_or(0),
        stop,
    })
}
