//! A chat template (hostile: loops, recursion, huge repetitions) rendered
//! over a conversation, both taken from the input. Rendering must end in an
//! error or a string, within the fuel bound (libFuzzer's -timeout catches a
//! render that runs away) and the memory bound (-rss_limit_mb).
//!
//! Input: template, then messages, separated by `common::SECTION_SEPARATOR`;
//! the messages section is split at `\n\n` into contents whose roles cycle
//! through system, user, assistant.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use marlin_io::tokenizer::{ChatMessage, ChatTemplate};

fuzz_target!(|data: &[u8]| {
    let parts = common::sections(data, 2);
    let Ok(source) = std::str::from_utf8(parts[0]) else {
        return;
    };
    let conversation = String::from_utf8_lossy(parts[1]);
    let roles = ["system", "user", "assistant"];
    let messages: Vec<ChatMessage> = conversation
        .split("\n\n")
        .enumerate()
        .map(|(i, content)| ChatMessage::new(roles[i % roles.len()], content))
        .collect();
    let Ok(template) = ChatTemplate::new(source, "<s>", "</s>") else {
        return;
    };
    for add_generation_prompt in [false, true] {
        let _ = template.render(&messages, add_generation_prompt);
    }
});
