//! Stop strings over streamed text.
//!
//! Text arrives in pieces (one detokenized token at a time). A stop string may
//! straddle pieces, so the matcher holds back the longest tail of the pending
//! text that could still grow into a stop string, and releases it once it
//! cannot.

/// What the matcher says after each piece.
#[derive(Debug, PartialEq, Eq)]
pub struct StopStep {
    /// Text that is safe to show now.
    pub emit: String,
    /// A stop string was found; `emit` holds the text before it.
    pub stopped: bool,
}

pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
}

impl StopMatcher {
    /// Empty stop strings are ignored.
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            pending: String::new(),
        }
    }

    pub fn push(&mut self, piece: &str) -> StopStep {
        self.pending.push_str(piece);
        // Earliest full match wins.
        if let Some(pos) = self.stops.iter().filter_map(|s| self.pending.find(s)).min() {
            let emit = self.pending[..pos].to_string();
            self.pending.clear();
            return StopStep {
                emit,
                stopped: true,
            };
        }
        let hold = self.longest_partial_suffix();
        let cut = self.pending.len() - hold;
        let emit = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        StopStep {
            emit,
            stopped: false,
        }
    }

    /// Whatever is held back, at the end of generation.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }

    /// Length in bytes of the longest suffix of `pending` that is a proper
    /// prefix of some stop string (always on a char boundary).
    fn longest_partial_suffix(&self) -> usize {
        let mut best = 0;
        for s in &self.stops {
            let max = s.len().saturating_sub(1).min(self.pending.len());
            for len in (best + 1..=max).rev() {
                let start = self.pending.len() - len;
                if self.pending.is_char_boundary(start) && s.starts_with(&self.pending[start..]) {
                    best = len;
                    break;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut m = StopMatcher::new(&stops);
        let mut out = String::new();
        for p in pieces {
            let step = m.push(p);
            out.push_str(&step.emit);
            if step.stopped {
                return (out, true);
            }
        }
        out.push_str(&m.finish());
        (out, false)
    }

    #[test]
    fn stop_across_pieces() {
        assert_eq!(run(&["\n\n"], &["a", "b\n", "\nc"]), ("ab".into(), true));
        assert_eq!(run(&["END"], &["xE", "N", "Dy"]), ("x".into(), true));
    }

    #[test]
    fn partial_match_released_when_it_fails() {
        assert_eq!(run(&["END"], &["xE", "N", "o"]), ("xENo".into(), false));
    }

    #[test]
    fn holds_back_only_what_could_match() {
        let mut m = StopMatcher::new(&["</s>".to_string()]);
        assert_eq!(m.push("hello <").emit, "hello ");
        assert_eq!(m.push("b>").emit, "<b>");
    }

    #[test]
    fn earliest_of_several_stops_and_unicode() {
        assert_eq!(run(&["bb", "é"], &["aéb", "b"]), ("a".into(), true));
        assert_eq!(run(&["é!"], &["xé", "y"]), ("xéy".into(), false));
        assert_eq!(run(&[""], &["abc"]), ("abc".into(), false));
    }
}
