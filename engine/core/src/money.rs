//! Money: integer micro-dollars, never floats.
//!
//! Prices are written as decimal strings (`"2.50"` dollars per million tokens) and parsed exactly;
//! a request's cost is computed once, in integer arithmetic, and rounded up to the next micro-dollar
//! so that a request that used tokens is never free.

use serde::{Deserialize, Serialize};

use crate::usage::Usage;

/// An amount of US dollars in millionths (1 = $0.000001).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Micros(pub u64);

impl Micros {
    /// Parses a decimal dollar amount (`"0.15"`, `"10"`, `"0.000001"`) exactly. More than six
    /// decimals, signs, exponents and empty strings are refused.
    pub fn parse_usd(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() && frac.is_empty() || !digits(whole) || !digits(frac) {
            return Err(format!("`{text}` is not a dollar amount like \"2.50\""));
        }
        if frac.len() > 6 {
            return Err(format!("`{text}` has more than six decimals (a micro-dollar is the unit)"));
        }
        let whole: u64 =
            if whole.is_empty() { 0 } else { whole.parse().map_err(|_| format!("`{text}` is too large"))? };
        let frac_micros: u64 = if frac.is_empty() {
            0
        } else {
            let padded = format!("{frac:0<6}");
            padded.parse().map_err(|_| format!("`{text}` is not a dollar amount"))?
        };
        whole
            .checked_mul(1_000_000)
            .and_then(|w| w.checked_add(frac_micros))
            .map(Micros)
            .ok_or_else(|| format!("`{text}` is too large"))
    }

    /// Dollars with six decimals, e.g. `0.000150`: exact, for JSON and logs.
    pub fn usd(self) -> String {
        Usd(self).to_string()
    }

    pub fn saturating_add(self, other: Micros) -> Micros {
        Micros(self.0.saturating_add(other.0))
    }
}

impl std::fmt::Display for Micros {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "${}", Usd(*self))
    }
}

/// An amount as [`Micros::usd`] writes it, for writing it without a string of its own.
#[derive(Clone, Copy)]
pub struct Usd(pub Micros);

impl Usd {
    /// The amount as `12.345678`, written digit by digit on the stack: an access-log line and a
    /// dashboard row carry one per request.
    pub fn text(self) -> UsdText {
        let mut buf = [0u8; UsdText::LONGEST];
        let mut whole = itoa::Buffer::new();
        let digits = whole.format(self.0.0 / 1_000_000).as_bytes();
        let len = digits.len() + 7;
        buf[..digits.len()].copy_from_slice(digits);
        buf[digits.len()] = b'.';
        crate::calendar::put_digits(&mut buf[digits.len() + 1..len], self.0.0 % 1_000_000);
        UsdText { buf, len }
    }
}

/// [`Usd::text`]'s result.
pub struct UsdText {
    buf: [u8; UsdText::LONGEST],
    len: usize,
}

impl UsdText {
    /// `u64::MAX` micro-dollars: 14 digits, the point and six decimals.
    const LONGEST: usize = 21;

    pub fn as_str(&self) -> &str {
        // Digits and a point only.
        std::str::from_utf8(self.buf.get(..self.len).unwrap_or_default()).unwrap_or_default()
    }
}

impl std::fmt::Display for Usd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.text().as_str())
    }
}

/// A model's price, per million tokens of each kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price {
    pub input: Micros,
    pub output: Micros,
    /// Prompt tokens served from the provider's prompt cache (default: the input price).
    pub cached_input: Micros,
    /// Reasoning tokens, which providers count inside the output (default: the output price).
    pub reasoning: Micros,
}

impl Price {
    /// The cost of one request's usage. Providers count cached tokens inside the prompt and reasoning
    /// tokens inside the completion, so each is priced at its own rate and the rest at the base rate.
    /// Rounded up once, at the end: a request that used tokens costs at least one micro-dollar.
    pub fn cost(&self, usage: &Usage) -> Micros {
        let cached = usage.cached_tokens.min(usage.prompt_tokens);
        let reasoning = usage.reasoning_tokens.min(usage.completion_tokens);
        let per_million = u128::from(usage.prompt_tokens - cached) * u128::from(self.input.0)
            + u128::from(cached) * u128::from(self.cached_input.0)
            + u128::from(usage.completion_tokens - reasoning) * u128::from(self.output.0)
            + u128::from(reasoning) * u128::from(self.reasoning.0);
        Micros(u64::try_from(per_million.div_ceil(1_000_000)).unwrap_or(u64::MAX))
    }
}

/// The price table: prices by the model name a provider knows, and an optional default.
#[derive(Debug, Clone, Default)]
pub struct Pricing {
    models: std::collections::HashMap<String, Price>,
    default: Option<Price>,
}

impl Pricing {
    pub fn new(models: impl IntoIterator<Item = (String, Price)>, default: Option<Price>) -> Self {
        Self { models: models.into_iter().collect(), default }
    }

    /// The price of an upstream model: its own entry; else the entry it is a dated or `-latest`
    /// snapshot of (`gpt-4o-mini-2024-07-18`, `claude-3-5-haiku-20241022`, `gemini-2.0-flash-001`);
    /// else the default price. `None`: unpriced, which configuration refuses.
    pub fn price(&self, model: &str) -> Option<Price> {
        if let Some(p) = self.models.get(model) {
            return Some(*p);
        }
        let mut cut = model.len();
        while let Some(dash) = model[..cut].rfind('-') {
            if !is_snapshot_suffix(&model[dash + 1..cut]) {
                break;
            }
            if let Some(p) = self.models.get(&model[..dash]) {
                return Some(*p);
            }
            cut = dash;
        }
        self.default
    }

    pub fn has_default(&self) -> bool {
        self.default.is_some()
    }

    pub fn len(&self) -> usize {
        self.models.len()
    }

    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }
}

/// What providers append to a model name for a snapshot of it: `latest`, a date (`20241022`, or
/// `2024-07-18` seen as three parts) or a revision number (`001`).
fn is_snapshot_suffix(part: &str) -> bool {
    part == "latest" || (!part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollar_amounts_parse_exactly() {
        assert_eq!(Micros::parse_usd("0.15"), Ok(Micros(150_000)));
        assert_eq!(Micros::parse_usd("2.50"), Ok(Micros(2_500_000)));
        assert_eq!(Micros::parse_usd("10"), Ok(Micros(10_000_000)));
        assert_eq!(Micros::parse_usd(".5"), Ok(Micros(500_000)));
        assert_eq!(Micros::parse_usd("0.000001"), Ok(Micros(1)));
        assert_eq!(Micros::parse_usd("0"), Ok(Micros(0)));
        for bad in ["", ".", "-1", "1e3", "0.0000001", "1,5", "99999999999999999999"] {
            assert!(Micros::parse_usd(bad).is_err(), "{bad}");
        }
        assert_eq!(Micros(1_234_567).usd(), "1.234567");
        assert_eq!(Micros(150).to_string(), "$0.000150");
        assert_eq!(Micros(0).usd(), "0.000000");
        assert_eq!(Micros(7_000_000).usd(), "7.000000");
        assert_eq!(Micros(u64::MAX).usd(), "18446744073709.551615");
        for n in [0, 1, 999_999, 1_000_000, 1_000_001, 123_456_789_012] {
            assert_eq!(Micros::parse_usd(&Micros(n).usd()), Ok(Micros(n)), "{n}");
        }
    }

    #[test]
    fn cached_and_reasoning_tokens_take_their_own_rates_and_cost_rounds_up() {
        let price = Price {
            input: Micros(2_500_000),
            output: Micros(10_000_000),
            cached_input: Micros(1_250_000),
            reasoning: Micros(10_000_000),
        };
        let usage = Usage {
            prompt_tokens: 1_000,
            completion_tokens: 500,
            cached_tokens: 400,
            reasoning_tokens: 100,
            estimated: false,
        };
        // 600 × 2.50 + 400 × 1.25 + 500 × 10.00, per million: 0.0015 + 0.0005 + 0.005 dollars.
        assert_eq!(price.cost(&usage), Micros(7_000));
        let one = Usage { prompt_tokens: 1, ..Default::default() };
        assert_eq!(price.cost(&one), Micros(3), "2.5 micro-dollars round up");
        assert_eq!(price.cost(&Usage::default()), Micros(0));
    }

    #[test]
    fn snapshots_take_their_model_price_but_variants_do_not() {
        let p = |n: u64| Price {
            input: Micros(n),
            output: Micros(n),
            cached_input: Micros(n),
            reasoning: Micros(n),
        };
        let pricing = Pricing::new(
            [
                ("gpt-4o".to_owned(), p(1)),
                ("gpt-4o-mini".to_owned(), p(2)),
                ("claude-3-5-haiku".to_owned(), p(3)),
            ],
            None,
        );
        assert_eq!(pricing.price("gpt-4o-mini"), Some(p(2)));
        assert_eq!(pricing.price("gpt-4o-mini-2024-07-18"), Some(p(2)));
        assert_eq!(pricing.price("gpt-4o-2024-08-06"), Some(p(1)));
        assert_eq!(pricing.price("claude-3-5-haiku-latest"), Some(p(3)));
        assert_eq!(pricing.price("claude-3-5-haiku-20241022"), Some(p(3)));
        assert_eq!(pricing.price("gpt-4o-audio-preview"), None, "a variant is not its base model");
        assert_eq!(pricing.price("llama3"), None);
        let with_default = Pricing::new([], Some(p(9)));
        assert_eq!(with_default.price("anything"), Some(p(9)));
    }
}
