//! `response_format: {"type": "json_object"}`: constrains generation to one
//! JSON object.
//!
//! [`JsonPrefix`] is an incremental validator: it accepts text chunk by chunk
//! and says whether the text so far can still be extended into one valid
//! JSON object (RFC 8259 grammar, top-level object, whitespace allowed
//! around tokens) and when the object is complete. [`JsonConstraint`] uses it
//! to pick tokens: candidates are tried in the sampler's order and the first
//! whose text keeps the prefix valid wins, so the constraint never changes a
//! choice that was already valid.

/// Where the validator is inside the grammar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Before the top-level `{` (whitespace allowed).
    Start,
    /// A value is expected (after `:` or `,` in an array, or after `[`
    /// when `allow_close` is set).
    Value {
        allow_close: bool,
    },
    /// After `{` (`allow_close`) or `,` in an object: a key string.
    Key {
        allow_close: bool,
    },
    Colon,
    /// After a complete value inside a container.
    CommaOrClose,
    /// Inside a string; `key` says what follows it.
    Str {
        key: bool,
        escape: bool,
        hex_left: u8,
    },
    Number(NumState),
    /// Inside `true`/`false`/`null`: the bytes still expected.
    Literal {
        rest: &'static [u8],
    },
    /// The top-level object is closed.
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NumState {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    Exp,
    ExpSign,
    ExpDigits,
}

impl NumState {
    /// Whether the number may end here.
    fn complete(self) -> bool {
        matches!(
            self,
            NumState::Zero | NumState::Int | NumState::Frac | NumState::ExpDigits
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Container {
    Object,
    Array,
}

/// Most nesting accepted (a runaway generation must not grow the stack
/// without bound).
const MAX_DEPTH: usize = 64;

#[derive(Clone, Debug)]
pub struct JsonPrefix {
    state: State,
    stack: Vec<Container>,
}

impl Default for JsonPrefix {
    fn default() -> Self {
        Self::new()
    }
}

impl JsonPrefix {
    pub fn new() -> Self {
        Self {
            state: State::Start,
            stack: Vec::new(),
        }
    }

    /// True once the top-level object is closed.
    pub fn is_complete(&self) -> bool {
        self.state == State::Done
    }

    /// Feeds `text`; false (and the state unchanged) if the result is not a
    /// prefix of any JSON object.
    pub fn push_str(&mut self, text: &str) -> bool {
        let saved = self.clone();
        for &b in text.as_bytes() {
            if !self.push_byte(b) {
                *self = saved;
                return false;
            }
        }
        true
    }

    /// Whether `text` would keep the prefix valid, without changing it.
    pub fn accepts(&self, text: &str) -> bool {
        self.clone().push_str(text)
    }

    /// The state after a value ends inside the current container.
    fn after_value(&self) -> State {
        if self.stack.is_empty() {
            State::Done
        } else {
            State::CommaOrClose
        }
    }

    fn open(&mut self, c: Container) -> Option<State> {
        if self.stack.len() >= MAX_DEPTH {
            return None;
        }
        self.stack.push(c);
        Some(match c {
            Container::Object => State::Key { allow_close: true },
            Container::Array => State::Value { allow_close: true },
        })
    }

    /// Closes the innermost container if it is `c`.
    fn close(&mut self, c: Container) -> Option<State> {
        if self.stack.last() != Some(&c) {
            return None;
        }
        self.stack.pop();
        Some(self.after_value())
    }

    fn start_value(&mut self, b: u8) -> Option<State> {
        Some(match b {
            b'{' => return self.open(Container::Object),
            b'[' => return self.open(Container::Array),
            b'"' => State::Str {
                key: false,
                escape: false,
                hex_left: 0,
            },
            b'-' => State::Number(NumState::Minus),
            b'0' => State::Number(NumState::Zero),
            b'1'..=b'9' => State::Number(NumState::Int),
            b't' => State::Literal { rest: b"rue" },
            b'f' => State::Literal { rest: b"alse" },
            b'n' => State::Literal { rest: b"ull" },
            _ => return None,
        })
    }

    fn push_byte(&mut self, b: u8) -> bool {
        let ws = matches!(b, b' ' | b'\t' | b'\n' | b'\r');
        let next = match self.state {
            State::Start => match b {
                _ if ws => Some(State::Start),
                b'{' => self.open(Container::Object),
                _ => None,
            },
            State::Done => None,
            State::Value { allow_close } => match b {
                _ if ws => Some(self.state),
                b']' if allow_close => self.close(Container::Array),
                _ => self.start_value(b),
            },
            State::Key { allow_close } => match b {
                _ if ws => Some(self.state),
                b'}' if allow_close => self.close(Container::Object),
                b'"' => Some(State::Str {
                    key: true,
                    escape: false,
                    hex_left: 0,
                }),
                _ => None,
            },
            State::Colon => match b {
                _ if ws => Some(State::Colon),
                b':' => Some(State::Value { allow_close: false }),
                _ => None,
            },
            State::CommaOrClose => match b {
                _ if ws => Some(State::CommaOrClose),
                b',' => match self.stack.last() {
                    Some(Container::Object) => Some(State::Key { allow_close: false }),
                    Some(Container::Array) => Some(State::Value { allow_close: false }),
                    None => None,
                },
                b'}' => self.close(Container::Object),
                b']' => self.close(Container::Array),
                _ => None,
            },
            State::Str {
                key,
                escape,
                hex_left,
            } => {
                if hex_left > 0 {
                    b.is_ascii_hexdigit().then_some(State::Str {
                        key,
                        escape: false,
                        hex_left: hex_left - 1,
                    })
                } else if escape {
                    match b {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {
                            Some(State::Str {
                                key,
                                escape: false,
                                hex_left: 0,
                            })
                        }
                        b'u' => Some(State::Str {
                            key,
                            escape: false,
                            hex_left: 4,
                        }),
                        _ => None,
                    }
                } else {
                    match b {
                        b'"' if key => Some(State::Colon),
                        b'"' => Some(self.after_value()),
                        b'\\' => Some(State::Str {
                            key,
                            escape: true,
                            hex_left: 0,
                        }),
                        0x00..=0x1f => None,
                        _ => Some(self.state),
                    }
                }
            }
            State::Number(n) => {
                use NumState::*;
                let cont = match (n, b) {
                    (Minus, b'0') => Some(Zero),
                    (Minus, b'1'..=b'9') => Some(Int),
                    (Int, b'0'..=b'9') => Some(Int),
                    (Zero | Int, b'.') => Some(Dot),
                    (Dot | Frac, b'0'..=b'9') => Some(Frac),
                    (Zero | Int | Frac, b'e' | b'E') => Some(Exp),
                    (Exp, b'+' | b'-') => Some(ExpSign),
                    (Exp | ExpSign | ExpDigits, b'0'..=b'9') => Some(ExpDigits),
                    _ => None,
                };
                match cont {
                    Some(c) => Some(State::Number(c)),
                    // The number ends here; the byte belongs to what follows.
                    None if n.complete() => {
                        self.state = self.after_value();
                        return self.push_byte(b);
                    }
                    None => None,
                }
            }
            State::Literal { rest } => match rest.split_first() {
                Some((&want, tail)) if want == b => Some(if tail.is_empty() {
                    self.after_value()
                } else {
                    State::Literal { rest: tail }
                }),
                _ => None,
            },
        };
        match next {
            Some(s) => {
                self.state = s;
                true
            }
            None => false,
        }
    }
}

/// Token selection under the JSON-object constraint.
pub struct JsonConstraint {
    prefix: JsonPrefix,
}

impl Default for JsonConstraint {
    fn default() -> Self {
        Self::new()
    }
}

impl JsonConstraint {
    pub fn new() -> Self {
        Self {
            prefix: JsonPrefix::new(),
        }
    }

    pub fn is_complete(&self) -> bool {
        self.prefix.is_complete()
    }

    /// The first of `candidates` (in preference order) whose text keeps the
    /// output a valid JSON-object prefix; `token_text` gives a token's text.
    /// Empty-text tokens (special tokens) are never chosen: they would end
    /// or stall the object.
    pub fn choose<'a>(
        &self,
        candidates: impl IntoIterator<Item = u32>,
        token_text: impl Fn(u32) -> Option<&'a str>,
    ) -> Option<u32> {
        candidates.into_iter().find(|&id| match token_text(id) {
            Some(t) if !t.is_empty() => self.prefix.accepts(t),
            _ => false,
        })
    }

    /// Records the chosen token's text.
    pub fn accept(&mut self, text: &str) -> bool {
        self.prefix.push_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid_prefix(s: &str) -> bool {
        JsonPrefix::new().push_str(s)
    }

    #[test]
    fn accepts_every_prefix_of_valid_objects() {
        for doc in [
            r#"{}"#,
            r#" { "a" : 1 } "#.trim_end(),
            r#"{"name": "Ana", "age": 31, "tags": ["x", "y\n\u00e9"], "ok": true, "n": null}"#,
            r#"{"a": {"b": [1, -2.5e+3, 0.0, 1E9, [], {}]}, "c": false}"#,
            r#"{"s": "quote \" and backslash \\ and \/"}"#,
            "{\"é\": \"日本\"}",
        ] {
            let mut p = JsonPrefix::new();
            for (i, ch) in doc.char_indices() {
                assert!(
                    p.push_str(&doc[i..i + ch.len_utf8()]),
                    "{doc:?} rejected at {i}"
                );
            }
            assert!(p.is_complete(), "{doc:?} not complete");
            assert!(
                !p.push_str("x") && !p.push_str("{"),
                "{doc:?} accepts text after the end"
            );
        }
    }

    #[test]
    fn rejects_invalid_text() {
        for bad in [
            "[1]",
            "\"s\"",
            "1",
            "x",
            "{a",
            "{\"a\" 1",
            "{\"a\":}",
            "{,",
            "{\"a\":1,}",
            "{\"a\":01",
            "{\"a\":1.}",
            "{\"a\":-}",
            "{\"a\":tru}",
            "{\"a\":\"\\x\"}",
            "{\"a\":\"\n\"}",
            "{]",
            "{\"a\":[1,]}",
            "{\"a\":1e}",
            "{\"a\":\"\\u12g\"}",
            "}",
        ] {
            assert!(!valid_prefix(bad), "{bad:?} accepted");
        }
    }

    #[test]
    fn numbers_end_at_the_next_token() {
        let mut p = JsonPrefix::new();
        assert!(p.push_str("{\"a\":12"));
        assert!(!p.is_complete());
        assert!(p.push_str("}"));
        assert!(p.is_complete());
    }

    #[test]
    fn a_rejected_chunk_leaves_the_state_unchanged() {
        let mut p = JsonPrefix::new();
        assert!(p.push_str("{\"a\":[1"));
        assert!(!p.push_str("]]"));
        assert!(
            p.push_str("]}"),
            "state must be the one before the bad chunk"
        );
        assert!(p.is_complete());
        let mut q = JsonPrefix::new();
        assert!(q.push_str("{\"a\":{}"));
        assert!(!q.push_str("}}"));
        assert!(q.push_str("}"));
        assert!(q.is_complete());
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = format!("{{\"a\":{}", "[".repeat(MAX_DEPTH));
        assert!(!valid_prefix(&deep));
    }

    #[test]
    fn constraint_picks_the_first_valid_candidate() {
        let vocab = ["Sure", " {", "\"", "name", "\":", " 1", "}", ""];
        let text = |id: u32| vocab.get(id as usize).copied();
        let mut c = JsonConstraint::new();
        let mut out = String::new();
        // The model prefers prose; the constraint takes the best valid token.
        for prefs in [
            [0u32, 1, 2],
            [7, 2, 0],
            [3, 6, 0],
            [4, 6, 1],
            [5, 0, 1],
            [6, 0, 1],
        ] {
            let id = c.choose(prefs, text).expect("a valid token");
            let t = text(id).unwrap_or_default();
            assert!(c.accept(t));
            out.push_str(t);
        }
        assert_eq!(out, " {\"name\": 1}");
        assert!(c.is_complete());
        assert_eq!(c.choose([0, 1, 6], text), None);
    }
}
