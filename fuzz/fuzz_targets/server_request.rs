//! A request body to the server's validator, for both endpoints; whatever it
//! accepts must become sampling parameters the engine accepts (a request that
//! passes validation and then fails in the engine would be a 500), and must
//! sample and stop-match without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use marlin_engine::stop::StopMatcher;
use marlin_engine::{Sampler, SamplingParams};
use marlin_server::request::{self, Endpoint, PromptInput, MAX_N, MAX_STOP};

fuzz_target!(|data: &[u8]| {
    for endpoint in [Endpoint::Chat, Endpoint::Completions] {
        let Ok(params) = request::parse(data, endpoint) else {
            continue;
        };
        assert!((1..=MAX_N).contains(&params.n));
        assert!(params.stop.len() <= MAX_STOP);
        assert!(params.max_tokens != Some(0));
        match &params.prompt {
            PromptInput::Chat(messages) => assert!(!messages.is_empty()),
            PromptInput::Tokens(ids) => assert!(!ids.is_empty()),
            PromptInput::Text(_) => {}
        }
        // As routes.rs builds them.
        let sampling = SamplingParams {
            temperature: params.temperature,
            top_k: params.top_k,
            top_p: params.top_p,
            min_p: params.min_p,
            repetition_penalty: params.repetition_penalty,
            penalty_last_n: 64,
            presence_penalty: params.presence_penalty,
            frequency_penalty: params.frequency_penalty,
            seed: Some(params.seed.unwrap_or(0)),
        };
        let mut sampler = Sampler::new(sampling).expect("validated parameters the engine rejects");
        if let PromptInput::Tokens(ids) = &params.prompt {
            sampler.observe_prompt(ids);
        }
        let mut logits: Vec<f32> = (0..32).map(|i| ((i * 7) % 13) as f32 * 0.5).collect();
        for _ in 0..4 {
            let token = sampler.sample(&mut logits.clone()).expect("sampling");
            assert!((token as usize) < logits.len());
            sampler.accept(token);
            logits.rotate_left(3);
        }
        let mut stops = StopMatcher::new(&params.stop);
        let mut shown = String::new();
        for piece in ["Hel", "lo wor", "ld\u{e9}", "\u{1f600}!", ""] {
            let step = stops.push(piece);
            shown.push_str(&step.emit);
            if step.stopped {
                break;
            }
        }
        shown.push_str(&stops.finish());
        assert!("Hello world\u{e9}\u{1f600}!".starts_with(&shown));
    }
});
