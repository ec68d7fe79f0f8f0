//! Measurement knobs: environment variables that switch one optimisation off
//! (or force one) so that a benchmark can compare both sides in the same run
//! (`MARLIN_INT4_PAIR=0`, `MARLIN_CUDA_ATTN_EARLY_KV=0`, ...; docs/CUDA.md
//! lists them with the change that measured them).
//!
//! Each knob is read once per process. A value that is set but not
//! understood is reported once on stderr and the default is used: an A/B
//! with a mistyped value must not quietly measure the default twice.

use std::ops::RangeInclusive;
use std::sync::OnceLock;

/// An on/off knob with a default: `0` turns it off, `1` on, unset or empty
/// keeps the default.
pub struct Switch {
    name: &'static str,
    default: bool,
    value: OnceLock<bool>,
}

impl Switch {
    pub const fn new(name: &'static str, default: bool) -> Self {
        Self {
            name,
            default,
            value: OnceLock::new(),
        }
    }

    /// The knob's value (the environment is read at the first call).
    pub fn get(&self) -> bool {
        *self.value.get_or_init(|| {
            let raw = std::env::var(self.name).ok();
            match parse_bool(raw.as_deref()) {
                Ok(v) => v.unwrap_or(self.default),
                Err(bad) => {
                    warn_ignored(self.name, &bad, "0 or 1");
                    self.default
                }
            }
        })
    }
}

/// A knob that forces a choice either way or leaves it to a heuristic:
/// `0` / `1`, or None when unset (or set to something else, with a warning).
pub struct Force {
    name: &'static str,
    value: OnceLock<Option<bool>>,
}

impl Force {
    pub const fn new(name: &'static str) -> Self {
        Self {
            name,
            value: OnceLock::new(),
        }
    }

    pub fn get(&self) -> Option<bool> {
        *self.value.get_or_init(|| {
            let raw = std::env::var(self.name).ok();
            parse_bool(raw.as_deref()).unwrap_or_else(|bad| {
                warn_ignored(self.name, &bad, "0 or 1");
                None
            })
        })
    }
}

/// A count knob: a whole number in `range`, or None when unset (or out of
/// range / not a number, with a warning).
pub struct Count {
    name: &'static str,
    range: RangeInclusive<usize>,
    value: OnceLock<Option<usize>>,
}

impl Count {
    pub const fn new(name: &'static str, range: RangeInclusive<usize>) -> Self {
        Self {
            name,
            range,
            value: OnceLock::new(),
        }
    }

    pub fn get(&self) -> Option<usize> {
        *self.value.get_or_init(|| {
            let raw = std::env::var(self.name).ok();
            parse_count(raw.as_deref(), &self.range).unwrap_or_else(|bad| {
                let want = format!(
                    "a whole number in {}..={}",
                    self.range.start(),
                    self.range.end()
                );
                warn_ignored(self.name, &bad, &want);
                None
            })
        })
    }
}

/// A knob that picks one of a few listed counts (a ring depth of 8 or 16
/// stages, say), or None when unset (or set to anything else, with a
/// warning): values between the listed ones mean nothing.
pub struct OneOf {
    name: &'static str,
    values: &'static [usize],
    value: OnceLock<Option<usize>>,
}

impl OneOf {
    pub const fn new(name: &'static str, values: &'static [usize]) -> Self {
        Self {
            name,
            values,
            value: OnceLock::new(),
        }
    }

    pub fn get(&self) -> Option<usize> {
        *self.value.get_or_init(|| {
            let raw = std::env::var(self.name).ok();
            parse_one_of(raw.as_deref(), self.values).unwrap_or_else(|bad| {
                let listed: Vec<String> = self.values.iter().map(usize::to_string).collect();
                warn_ignored(self.name, &bad, &format!("one of {}", listed.join(", ")));
                None
            })
        })
    }
}

/// A knob that names one of a few listed words (`0`, `1`, `bcast`, ...),
/// each standing for a value (the `flags` bits of a kernel, say), or None
/// when unset (or set to anything else, with a warning).
pub struct Choice {
    name: &'static str,
    choices: &'static [(&'static str, i32)],
    value: OnceLock<Option<i32>>,
}

impl Choice {
    pub const fn new(name: &'static str, choices: &'static [(&'static str, i32)]) -> Self {
        Self {
            name,
            choices,
            value: OnceLock::new(),
        }
    }

    pub fn get(&self) -> Option<i32> {
        *self.value.get_or_init(|| {
            let raw = std::env::var(self.name).ok();
            parse_choice(raw.as_deref(), self.choices).unwrap_or_else(|bad| {
                let words: Vec<&str> = self.choices.iter().map(|&(w, _)| w).collect();
                let want = match words.split_last() {
                    Some((last, rest)) if !rest.is_empty() => {
                        format!("{} or {last}", rest.join(", "))
                    }
                    _ => words.join(""),
                };
                warn_ignored(self.name, &bad, &want);
                None
            })
        })
    }
}

/// `Ok(None)` unset or empty, `Ok(Some(_))` for `0` / `1`, `Err(value)`
/// otherwise.
fn parse_bool(raw: Option<&str>) -> Result<Option<bool>, String> {
    match raw.map(str::trim) {
        None | Some("") => Ok(None),
        Some("0") => Ok(Some(false)),
        Some("1") => Ok(Some(true)),
        Some(other) => Err(other.to_string()),
    }
}

fn parse_count(raw: Option<&str>, range: &RangeInclusive<usize>) -> Result<Option<usize>, String> {
    match raw.map(str::trim) {
        None | Some("") => Ok(None),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if range.contains(&n) => Ok(Some(n)),
            _ => Err(v.to_string()),
        },
    }
}

fn parse_one_of(raw: Option<&str>, values: &[usize]) -> Result<Option<usize>, String> {
    match raw.map(str::trim) {
        None | Some("") => Ok(None),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if values.contains(&n) => Ok(Some(n)),
            _ => Err(v.to_string()),
        },
    }
}

fn parse_choice(raw: Option<&str>, choices: &[(&str, i32)]) -> Result<Option<i32>, String> {
    match raw.map(str::trim) {
        None | Some("") => Ok(None),
        Some(v) => choices
            .iter()
            .find(|&&(w, _)| w == v)
            .map(|&(_, value)| Some(value))
            .ok_or_else(|| v.to_string()),
    }
}

fn warn_ignored(name: &str, value: &str, want: &str) {
    eprintln!("marlin: ignoring {name}={value:?} (expected {want}); using the default");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switches_parse_zero_one_and_nothing_else() {
        assert_eq!(parse_bool(None), Ok(None));
        assert_eq!(parse_bool(Some("  ")), Ok(None));
        assert_eq!(parse_bool(Some("0")), Ok(Some(false)));
        assert_eq!(parse_bool(Some(" 1\n")), Ok(Some(true)));
        assert_eq!(parse_bool(Some("off")), Err("off".to_string()));
        assert_eq!(parse_bool(Some("2")), Err("2".to_string()));
    }

    #[test]
    fn counts_must_be_in_range() {
        let r = 1..=64;
        assert_eq!(parse_count(None, &r), Ok(None));
        assert_eq!(parse_count(Some("16"), &r), Ok(Some(16)));
        assert_eq!(parse_count(Some(" 64 "), &r), Ok(Some(64)));
        assert_eq!(parse_count(Some("0"), &r), Err("0".to_string()));
        assert_eq!(parse_count(Some("65"), &r), Err("65".to_string()));
        assert_eq!(parse_count(Some("-1"), &r), Err("-1".to_string()));
        assert_eq!(parse_count(Some("x"), &r), Err("x".to_string()));
    }

    #[test]
    fn one_of_takes_only_the_listed_values() {
        let v = &[8, 16];
        assert_eq!(parse_one_of(None, v), Ok(None));
        assert_eq!(parse_one_of(Some(""), v), Ok(None));
        assert_eq!(parse_one_of(Some("8"), v), Ok(Some(8)));
        assert_eq!(parse_one_of(Some(" 16 "), v), Ok(Some(16)));
        assert_eq!(parse_one_of(Some("12"), v), Err("12".to_string()));
        assert_eq!(parse_one_of(Some("4"), v), Err("4".to_string()));
        assert_eq!(parse_one_of(Some("x"), v), Err("x".to_string()));
    }

    #[test]
    fn choices_take_only_the_listed_words() {
        let c = &[("0", 0), ("1", 8), ("bcast", 24)];
        assert_eq!(parse_choice(None, c), Ok(None));
        assert_eq!(parse_choice(Some(" "), c), Ok(None));
        assert_eq!(parse_choice(Some("0"), c), Ok(Some(0)));
        assert_eq!(parse_choice(Some(" bcast\n"), c), Ok(Some(24)));
        assert_eq!(parse_choice(Some("2"), c), Err("2".to_string()));
        assert_eq!(parse_choice(Some("Bcast"), c), Err("Bcast".to_string()));
    }

    #[test]
    fn a_knob_reads_its_default_when_unset() {
        // Names no test or binary sets.
        static ON: Switch = Switch::new("MARLIN_TEST_KNOB_UNSET_ON", true);
        static OFF: Switch = Switch::new("MARLIN_TEST_KNOB_UNSET_OFF", false);
        static FORCE: Force = Force::new("MARLIN_TEST_KNOB_UNSET_FORCE");
        static COUNT: Count = Count::new("MARLIN_TEST_KNOB_UNSET_COUNT", 1..=4);
        static ONE_OF: OneOf = OneOf::new("MARLIN_TEST_KNOB_UNSET_ONE_OF", &[8, 16]);
        assert_eq!(ONE_OF.get(), None);
        assert!(ON.get());
        assert!(!OFF.get());
        assert_eq!(FORCE.get(), None);
        assert_eq!(COUNT.get(), None);
    }
}
