use super::*;

fn chat(body: &str) -> Result<GenerationParams, ApiError> {
    parse(body.as_bytes(), Endpoint::Chat)
}

fn completion(body: &str) -> Result<GenerationParams, ApiError> {
    parse(body.as_bytes(), Endpoint::Completions)
}

const MSG: &str = r#""messages":[{"role":"user","content":"hi"}]"#;

fn with(extra: &str) -> String {
    format!(r#"{{"model":"m",{MSG}{extra}}}"#)
}

#[test]
fn minimal_chat_gets_openai_defaults() {
    let p = chat(&with("")).unwrap();
    assert_eq!(p.model, "m");
    assert_eq!(
        p.prompt,
        PromptInput::Chat(vec![ChatMessage {
            role: Role::User,
            content: "hi".into()
        }])
    );
    assert_eq!((p.temperature, p.top_p, p.top_k, p.n), (1.0, 1.0, 0, 1));
    assert_eq!(p.max_tokens, None);
    assert!(!p.stream && !p.include_usage && !p.json_object);
    assert_eq!(p.logprobs, None);
}

#[test]
fn full_chat_request_parses_every_field() {
    let p = chat(&with(
        r#","max_completion_tokens":7,"max_tokens":99,"temperature":0.5,"top_p":0.9,"top_k":20,
        "min_p":0.1,"seed":-3,"stop":["a","bc"],"n":2,"presence_penalty":1.5,"frequency_penalty":-1,
        "logprobs":true,"top_logprobs":3,"stream":true,"stream_options":{"include_usage":true},
        "response_format":{"type":"json_object"},"user":"u""#,
    ))
    .unwrap();
    assert_eq!(p.max_tokens, Some(7), "max_completion_tokens wins");
    assert_eq!(
        (p.temperature, p.top_p, p.top_k, p.min_p),
        (0.5, 0.9, 20, 0.1)
    );
    assert_eq!(p.seed, Some((-3i64) as u64));
    assert_eq!(p.stop, vec!["a".to_string(), "bc".to_string()]);
    assert_eq!(
        (p.n, p.presence_penalty, p.frequency_penalty),
        (2, 1.5, -1.0)
    );
    assert_eq!(p.logprobs, Some(3));
    assert!(p.stream && p.include_usage && p.json_object);
}

#[test]
fn content_parts_and_roles() {
    let p = chat(
        r#"{"model":"m","messages":[{"role":"developer","content":"s"},
        {"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]},
        {"role":"assistant","content":null}]}"#,
    )
    .unwrap();
    let PromptInput::Chat(m) = p.prompt else {
        panic!("chat expected")
    };
    assert_eq!(m[0].role, Role::System);
    assert_eq!(m[1].content, "ab");
    assert_eq!(
        m[2],
        ChatMessage {
            role: Role::Assistant,
            content: String::new()
        }
    );
}

#[test]
fn completion_prompts() {
    assert_eq!(
        completion(r#"{"model":"m","prompt":"x"}"#).unwrap().prompt,
        PromptInput::Text("x".into())
    );
    assert_eq!(
        completion(r#"{"model":"m","prompt":["x"]}"#)
            .unwrap()
            .prompt,
        PromptInput::Text("x".into())
    );
    assert_eq!(
        completion(r#"{"model":"m","prompt":[1,2,3]}"#)
            .unwrap()
            .prompt,
        PromptInput::Tokens(vec![1, 2, 3])
    );
    assert_eq!(
        completion(r#"{"model":"m","prompt":"x","logprobs":2}"#)
            .unwrap()
            .logprobs,
        Some(2)
    );
}

/// The bad-request matrix at the parsing level: (body, endpoint, the
/// parameter the error must name, or None for whole-body errors).
#[test]
fn bad_requests_name_the_parameter() {
    let cases: Vec<(String, Endpoint, Option<&str>)> = vec![
        ("".into(), Endpoint::Chat, None),
        ("   ".into(), Endpoint::Chat, None),
        ("{".into(), Endpoint::Chat, None),
        ("[1,2]".into(), Endpoint::Chat, None),
        ("\"str\"".into(), Endpoint::Chat, None),
        (
            r#"{"model":"m","messages":[{"role":"user","content":"\ud800"}]}"#.into(),
            Endpoint::Chat,
            None,
        ),
        (format!(r#"{{{MSG}}}"#), Endpoint::Chat, Some("model")),
        (
            format!(r#"{{"model":5,{MSG}}}"#),
            Endpoint::Chat,
            Some("model"),
        ),
        (
            format!(r#"{{"model":"",{MSG}}}"#),
            Endpoint::Chat,
            Some("model"),
        ),
        (r#"{"model":"m"}"#.into(), Endpoint::Chat, Some("messages")),
        (
            r#"{"model":"m","messages":[]}"#.into(),
            Endpoint::Chat,
            Some("messages"),
        ),
        (
            r#"{"model":"m","messages":"hi"}"#.into(),
            Endpoint::Chat,
            Some("messages"),
        ),
        (
            r#"{"model":"m","messages":[5]}"#.into(),
            Endpoint::Chat,
            Some("messages[0]"),
        ),
        (
            r#"{"model":"m","messages":[{"role":"wizard","content":"x"}]}"#.into(),
            Endpoint::Chat,
            Some("messages[0].role"),
        ),
        (
            r#"{"model":"m","messages":[{"content":"x"}]}"#.into(),
            Endpoint::Chat,
            Some("messages[0].role"),
        ),
        (
            r#"{"model":"m","messages":[{"role":"user"}]}"#.into(),
            Endpoint::Chat,
            Some("messages[0].content"),
        ),
        (
            r#"{"model":"m","messages":[{"role":"user","content":7}]}"#.into(),
            Endpoint::Chat,
            Some("messages[0].content"),
        ),
        (
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#.into(),
            Endpoint::Chat,
            Some("messages[0].content[0]"),
        ),
        (
            with(r#","max_tokens":-1"#),
            Endpoint::Chat,
            Some("max_tokens"),
        ),
        (
            with(r#","max_tokens":0"#),
            Endpoint::Chat,
            Some("max_tokens"),
        ),
        (
            with(r#","max_tokens":"10""#),
            Endpoint::Chat,
            Some("max_tokens"),
        ),
        (
            with(r#","max_tokens":1.5"#),
            Endpoint::Chat,
            Some("max_tokens"),
        ),
        (
            with(r#","max_completion_tokens":0"#),
            Endpoint::Chat,
            Some("max_completion_tokens"),
        ),
        (
            with(r#","temperature":-0.1"#),
            Endpoint::Chat,
            Some("temperature"),
        ),
        (
            with(r#","temperature":2.5"#),
            Endpoint::Chat,
            Some("temperature"),
        ),
        (
            with(r#","temperature":"hot""#),
            Endpoint::Chat,
            Some("temperature"),
        ),
        (with(r#","temperature":1e400"#), Endpoint::Chat, None),
        (with(r#","top_p":0"#), Endpoint::Chat, Some("top_p")),
        (with(r#","top_p":1.01"#), Endpoint::Chat, Some("top_p")),
        (with(r#","top_k":-5"#), Endpoint::Chat, Some("top_k")),
        (with(r#","top_k":2.5"#), Endpoint::Chat, Some("top_k")),
        (with(r#","min_p":2"#), Endpoint::Chat, Some("min_p")),
        (
            with(r#","presence_penalty":3"#),
            Endpoint::Chat,
            Some("presence_penalty"),
        ),
        (
            with(r#","frequency_penalty":-2.5"#),
            Endpoint::Chat,
            Some("frequency_penalty"),
        ),
        (
            with(r#","repetition_penalty":0"#),
            Endpoint::Chat,
            Some("repetition_penalty"),
        ),
        (with(r#","seed":"abc""#), Endpoint::Chat, Some("seed")),
        (with(r#","seed":1.5"#), Endpoint::Chat, Some("seed")),
        (with(r#","stop":5"#), Endpoint::Chat, Some("stop")),
        (with(r#","stop":["a",1]"#), Endpoint::Chat, Some("stop")),
        (
            with(r#","stop":["a","b","c","d","e"]"#),
            Endpoint::Chat,
            Some("stop"),
        ),
        (with(r#","stop":"""#), Endpoint::Chat, Some("stop")),
        (with(r#","n":0"#), Endpoint::Chat, Some("n")),
        (with(r#","n":1000"#), Endpoint::Chat, Some("n")),
        (
            with(r#","logprobs":"yes""#),
            Endpoint::Chat,
            Some("logprobs"),
        ),
        (
            with(r#","top_logprobs":3"#),
            Endpoint::Chat,
            Some("top_logprobs"),
        ),
        (
            with(r#","logprobs":true,"top_logprobs":21"#),
            Endpoint::Chat,
            Some("top_logprobs"),
        ),
        (with(r#","stream":"yes""#), Endpoint::Chat, Some("stream")),
        (
            with(r#","stream_options":{"include_usage":true}"#),
            Endpoint::Chat,
            Some("stream_options"),
        ),
        (
            with(r#","stream":true,"stream_options":{"include_usage":1}"#),
            Endpoint::Chat,
            Some("stream_options.include_usage"),
        ),
        (
            with(r#","response_format":{"type":"json_schema"}"#),
            Endpoint::Chat,
            Some("response_format"),
        ),
        (
            with(r#","response_format":"json""#),
            Endpoint::Chat,
            Some("response_format"),
        ),
        (
            with(r#","response_format":{}"#),
            Endpoint::Chat,
            Some("response_format"),
        ),
        (
            with(r#","tools":[{"type":"function"}]"#),
            Endpoint::Chat,
            Some("tools"),
        ),
        (with(r#","user":5"#), Endpoint::Chat, Some("user")),
        (
            r#"{"model":"m"}"#.into(),
            Endpoint::Completions,
            Some("prompt"),
        ),
        (
            r#"{"model":"m","prompt":5}"#.into(),
            Endpoint::Completions,
            Some("prompt"),
        ),
        (
            r#"{"model":"m","prompt":["a","b"]}"#.into(),
            Endpoint::Completions,
            Some("prompt"),
        ),
        (
            r#"{"model":"m","prompt":[1,-2]}"#.into(),
            Endpoint::Completions,
            Some("prompt"),
        ),
        (
            r#"{"model":"m","prompt":"x","logprobs":6}"#.into(),
            Endpoint::Completions,
            Some("logprobs"),
        ),
        (
            r#"{"model":"m","prompt":"x","echo":true}"#.into(),
            Endpoint::Completions,
            Some("echo"),
        ),
        (
            r#"{"model":"m","prompt":"x","suffix":"y"}"#.into(),
            Endpoint::Completions,
            Some("suffix"),
        ),
    ];
    assert!(cases.len() >= 50);
    for (body, endpoint, param) in &cases {
        let err = parse(body.as_bytes(), *endpoint).expect_err(body);
        assert_eq!(err.status.as_u16(), 400, "{body}: {err}");
        assert_eq!(err.param.as_deref(), *param, "{body}: {err}");
        assert!(!err.message.is_empty());
        let b = err.body();
        assert_eq!(b["error"]["type"], "invalid_request_error", "{body}");
    }
}
