//! The axum application: routes, auth, body handling, and the bridge from
//! the backend's blocking event streams to HTTP responses and SSE.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::json;
use tokio::sync::mpsc;

use crate::backend::{Backend, BackendEvent, BackendRequest, SubmitError};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::request::{self, Endpoint, GenerationParams, PromptInput};
use crate::response::{self, ChoiceAccum, ResponseMeta};

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 4 << 20;

pub struct AppState {
    /// Set once the model has loaded; until then generation answers 503.
    backend: OnceLock<Arc<dyn Backend>>,
    pub served_model_name: String,
    pub api_key: Option<String>,
    pub metrics: Arc<Metrics>,
    /// Set at shutdown: new requests get 503.
    pub draining: AtomicBool,
    pub started: u64,
    next_id: AtomicU64,
}

impl AppState {
    /// A server whose backend is still loading: `/health` and generation
    /// answer 503 until [`AppState::set_backend`].
    pub fn new(served_model_name: String, api_key: Option<String>) -> Self {
        let metrics = Arc::new(Metrics::new(&served_model_name));
        Self {
            backend: OnceLock::new(),
            served_model_name,
            api_key,
            metrics,
            draining: AtomicBool::new(false),
            started: unix_now(),
            next_id: AtomicU64::new(1),
        }
    }
}

impl AppState {
    /// Marks the model loaded. A second call is ignored.
    pub fn set_backend(&self, backend: Arc<dyn Backend>) {
        let _ = self.backend.set(backend);
    }

    pub fn backend(&self) -> Result<&Arc<dyn Backend>, ApiError> {
        self.backend.get().ok_or_else(ApiError::loading)
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(list_models))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// Only `/metrics` (for `--metrics-port`).
pub fn metrics_app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(state)
}

async fn not_found(method: Method, uri: Uri) -> Response {
    ApiError::route_not_found(method.as_str(), uri.path()).into_response()
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    ApiError::method_not_allowed(method.as_str(), uri.path()).into_response()
}

async fn health(State(st): State<Arc<AppState>>) -> Response {
    if let Err(e) = st.backend() {
        return e.into_response();
    }
    (StatusCode::OK, axum::Json(json!({"status": "ok"}))).into_response()
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    let stats = st.backend().map(|b| b.stats()).unwrap_or_default();
    let body = st.metrics.render(&stats);
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

fn check_auth(st: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &st.api_key else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    // Constant-time comparison: the key must not leak through timing.
    match given {
        Some(g)
            if g.len() == key.len()
                && g.bytes()
                    .zip(key.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0 =>
        {
            Ok(())
        }
        _ => Err(ApiError::unauthorized()),
    }
}

async fn list_models(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(e) = check_auth(&st, &headers) {
        return e.into_response();
    }
    let max_model_len = st.backend().map(|b| b.max_model_len()).ok();
    axum::Json(json!({
        "object": "list",
        "data": [{
            "id": st.served_model_name,
            "object": "model",
            "created": st.started,
            "owned_by": "marlin",
            "max_model_len": max_model_len,
        }]
    }))
    .into_response()
}

async fn chat_completions(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(st, headers, body, Endpoint::Chat).await
}

async fn completions(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    handle(st, headers, body, Endpoint::Completions).await
}

async fn handle(st: Arc<AppState>, headers: HeaderMap, body: Body, endpoint: Endpoint) -> Response {
    let arrival = Instant::now();
    match prepare(&st, &headers, body, endpoint).await {
        Ok((params, prompt_tokens, reqs)) => match launch(&st, reqs) {
            Ok(events) => {
                let id_num = st.next_id.fetch_add(1, Ordering::Relaxed);
                let id = match endpoint {
                    Endpoint::Chat => format!("chatcmpl-{id_num:016x}"),
                    Endpoint::Completions => format!("cmpl-{id_num:016x}"),
                };
                let job = Job {
                    st: Arc::clone(&st),
                    id,
                    created: unix_now(),
                    endpoint,
                    want_logprobs: params.logprobs.is_some(),
                    n: params.n,
                    prompt_tokens,
                    include_usage: params.include_usage,
                    arrival,
                };
                if params.stream {
                    stream_response(job, events)
                } else {
                    full_response(job, events).await
                }
            }
            Err(e) => reject(&st, e),
        },
        Err(e) => reject(&st, e),
    }
}

fn reject(st: &AppState, e: ApiError) -> Response {
    st.metrics.with(|m| {
        if e.status == StatusCode::TOO_MANY_REQUESTS {
            m.rejected_429 += 1;
        } else if e.status.is_client_error() {
            m.rejected_4xx += 1;
        }
    });
    e.into_response()
}

/// Auth, body, validation, tokenization and length checks: everything that
/// can reject a request before any generation work starts.
async fn prepare(
    st: &AppState,
    headers: &HeaderMap,
    body: Body,
    endpoint: Endpoint,
) -> Result<(GenerationParams, usize, Vec<BackendRequest>), ApiError> {
    check_auth(st, headers)?;
    if st.draining.load(Ordering::Acquire) {
        return Err(ApiError::shutting_down());
    }
    let backend = Arc::clone(st.backend()?);
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("<non-ASCII>");
        let essence = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if essence != "application/json" {
            return Err(ApiError::unsupported_media_type(ct));
        }
    }
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| {
            let mut e = ApiError::bad_request(format!(
                "The request body is larger than {MAX_BODY_BYTES} bytes or could not be read."
            ));
            e.status = StatusCode::PAYLOAD_TOO_LARGE;
            e
        })?;
    let params = request::parse(&bytes, endpoint)?;
    if params.model != st.served_model_name {
        return Err(ApiError::model_not_found(&params.model));
    }

    // Tokenizing a long prompt is CPU work: keep it off the async workers.
    let tokenizer = Arc::clone(&backend);
    let prompt_input = params.prompt.clone();
    let prompt = tokio::task::spawn_blocking(move || match prompt_input {
        PromptInput::Chat(msgs) => tokenizer.encode_chat(&msgs).map_err(|e| {
            ApiError::invalid_param(
                "messages",
                format!("The chat template could not be applied: {e}"),
            )
        }),
        PromptInput::Text(text) => tokenizer.encode_text(&text).map_err(|e| {
            ApiError::invalid_param("prompt", format!("The prompt could not be tokenized: {e}"))
        }),
        PromptInput::Tokens(ids) => {
            let vocab = tokenizer.vocab_size();
            match ids.iter().find(|&&t| t as usize >= vocab) {
                Some(bad) => Err(ApiError::invalid_param(
                    "prompt",
                    format!("Token id {bad} is out of range (vocabulary size {vocab})."),
                )),
                None => Ok(ids),
            }
        }
    })
    .await
    .map_err(|e| ApiError::internal(format!("tokenizer task failed: {e}")))??;
    if prompt.is_empty() {
        return Err(ApiError::invalid_param(
            "prompt",
            "The prompt is empty after tokenization.",
        ));
    }

    let limit = backend.max_model_len();
    let max_tokens = match params.max_tokens {
        Some(m) => m,
        None => limit.saturating_sub(prompt.len()),
    };
    if max_tokens == 0 || prompt.len().saturating_add(max_tokens) > limit {
        return Err(ApiError::context_length(prompt.len(), max_tokens, limit));
    }

    let reqs = (0..params.n)
        .map(|i| BackendRequest {
            prompt: prompt.clone(),
            sampling: marlin_engine::SamplingParams {
                temperature: params.temperature,
                top_k: params.top_k,
                top_p: params.top_p,
                min_p: params.min_p,
                repetition_penalty: params.repetition_penalty,
                penalty_last_n: 64,
                presence_penalty: params.presence_penalty,
                frequency_penalty: params.frequency_penalty,
                // n choices from one seed must still differ from each other.
                seed: params.seed.map(|s| s.wrapping_add(i as u64)),
            },
            max_tokens,
            stop: params.stop.clone(),
            logprobs: params.logprobs,
            json_object: params.json_object,
        })
        .collect();
    let prompt_tokens = prompt.len();
    Ok((params, prompt_tokens, reqs))
}

fn submit_error(e: SubmitError) -> ApiError {
    match e {
        SubmitError::QueueFull { retry_after_secs } => ApiError::queue_full(retry_after_secs),
        SubmitError::PromptTooLong {
            prompt_tokens,
            max_tokens,
            limit,
        } => ApiError::context_length(prompt_tokens, max_tokens, limit),
        SubmitError::Invalid { param, message } => ApiError::invalid_param(&param, message),
        SubmitError::ShuttingDown => ApiError::shutting_down(),
        SubmitError::Internal(m) => ApiError::internal(m),
    }
}

/// Submits every choice and forwards their events, tagged with the choice
/// index, into one channel. Each forwarder owns its backend stream: when the
/// receiver is dropped (client gone), the forwarder's send fails, it drops
/// the stream, and the engine cancels that request.
fn launch(
    st: &AppState,
    reqs: Vec<BackendRequest>,
) -> Result<mpsc::Receiver<(usize, BackendEvent)>, ApiError> {
    let mut streams = Vec::with_capacity(reqs.len());
    for r in reqs {
        // An error drops the streams submitted so far, cancelling them.
        streams.push(st.backend()?.submit(r).map_err(submit_error)?);
    }
    let (tx, rx) = mpsc::channel(64);
    for (i, mut stream) in streams.into_iter().enumerate() {
        let tx = tx.clone();
        tokio::task::spawn_blocking(move || {
            while let Some(ev) = stream.next_event() {
                if tx.blocking_send((i, ev)).is_err() {
                    break;
                }
            }
        });
    }
    Ok(rx)
}

struct Job {
    st: Arc<AppState>,
    id: String,
    created: u64,
    endpoint: Endpoint,
    want_logprobs: bool,
    n: usize,
    prompt_tokens: usize,
    include_usage: bool,
    arrival: Instant,
}

impl Job {
    fn meta(&self) -> ResponseMeta<'_> {
        ResponseMeta {
            id: &self.id,
            created: self.created,
            model: &self.st.served_model_name,
            endpoint: self.endpoint,
            want_logprobs: self.want_logprobs,
        }
    }
}

/// Per-request latency bookkeeping for the histograms.
struct Timing {
    arrival: Instant,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Timing {
    fn token(&mut self, m: &Metrics) {
        let now = Instant::now();
        match self.last {
            None => m.with(|h| {
                h.time_to_first_token
                    .observe((now - self.arrival).as_secs_f64())
            }),
            Some(prev) => m.with(|h| h.inter_token_latency.observe((now - prev).as_secs_f64())),
        }
        self.first.get_or_insert(now);
        self.last = Some(now);
    }

    fn finish(&self, m: &Metrics, reason: Option<&str>) {
        m.with(|h| {
            h.e2e_latency.observe(self.arrival.elapsed().as_secs_f64());
            match reason {
                Some("stop") => h.finished_stop += 1,
                Some("length") => h.finished_length += 1,
                Some(_) => h.finished_cancelled += 1,
                None => h.finished_error += 1,
            }
        });
    }
}

async fn full_response(job: Job, mut events: mpsc::Receiver<(usize, BackendEvent)>) -> Response {
    let mut choices: Vec<ChoiceAccum> = (0..job.n).map(|_| ChoiceAccum::default()).collect();
    let mut timing = Timing {
        arrival: job.arrival,
        first: None,
        last: None,
    };
    let metrics = Arc::clone(&job.st.metrics);
    let mut error = None;
    while let Some((i, ev)) = events.recv().await {
        let Some(c) = choices.get_mut(i) else {
            continue;
        };
        match ev {
            BackendEvent::Token { text, logprob } => {
                timing.token(&metrics);
                c.text.push_str(&text);
                if let Some(lp) = logprob {
                    c.logprobs.push(lp);
                }
            }
            BackendEvent::Finished {
                reason,
                completion_tokens,
                ..
            } => {
                c.finish_reason = Some(reason.as_openai());
                c.completion_tokens = completion_tokens;
            }
            BackendEvent::Error(e) => error = Some(e),
        }
    }
    if let Some(e) = error {
        timing.finish(&metrics, None);
        return ApiError::internal(format!("generation failed: {e}")).into_response();
    }
    timing.finish(&metrics, choices.first().and_then(|c| c.finish_reason));
    axum::Json(response::full_response(
        &job.meta(),
        &choices,
        job.prompt_tokens,
    ))
    .into_response()
}

fn stream_response(job: Job, mut events: mpsc::Receiver<(usize, BackendEvent)>) -> Response {
    let (tx, rx) = mpsc::channel::<Event>(64);
    tokio::spawn(async move {
        let meta = job.meta();
        let metrics = Arc::clone(&job.st.metrics);
        let mut timing = Timing {
            arrival: job.arrival,
            first: None,
            last: None,
        };
        let mut offsets = vec![0usize; job.n];
        let mut completion_tokens = 0usize;
        let mut last_reason = None;
        let send = |v: serde_json::Value| Event::default().data(v.to_string());
        if job.endpoint == Endpoint::Chat {
            for i in 0..job.n {
                if tx
                    .send(send(response::chunk(&meta, i, true, "", None, 0, None)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
        while let Some((i, ev)) = events.recv().await {
            let event = match ev {
                BackendEvent::Token { text, logprob } => {
                    timing.token(&metrics);
                    if text.is_empty() && logprob.is_none() {
                        continue;
                    }
                    let off = offsets.get(i).copied().unwrap_or(0);
                    if let Some(o) = offsets.get_mut(i) {
                        *o += text.len();
                    }
                    send(response::chunk(
                        &meta,
                        i,
                        false,
                        &text,
                        logprob.as_ref(),
                        off,
                        None,
                    ))
                }
                BackendEvent::Finished {
                    reason,
                    completion_tokens: c,
                    ..
                } => {
                    completion_tokens += c;
                    last_reason = Some(reason.as_openai());
                    send(response::chunk(
                        &meta,
                        i,
                        false,
                        "",
                        None,
                        0,
                        Some(reason.as_openai()),
                    ))
                }
                BackendEvent::Error(e) => {
                    timing.finish(&metrics, None);
                    let _ = tx
                        .send(send(
                            ApiError::internal(format!("generation failed: {e}")).body(),
                        ))
                        .await;
                    let _ = tx.send(Event::default().data("[DONE]")).await;
                    return;
                }
            };
            if tx.send(event).await.is_err() {
                // Client gone: dropping `events` cancels the requests.
                timing.finish(&metrics, Some("abort"));
                return;
            }
        }
        timing.finish(&metrics, last_reason);
        if job.include_usage {
            let _ = tx
                .send(send(response::usage_chunk(
                    &meta,
                    job.prompt_tokens,
                    completion_tokens,
                )))
                .await;
        }
        let _ = tx.send(Event::default().data("[DONE]")).await;
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}
