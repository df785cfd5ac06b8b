//! Token usage of one request, as reported by the provider or estimated by us.

use serde::{Deserialize, Serialize};

use crate::json::Json;

/// Token counts. `estimated` is true when the provider did not report them and we counted
/// characters instead (about four per token).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    pub reasoning_tokens: u64,
    pub estimated: bool,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }

    /// Our estimate for a text the provider did not count: about four characters per token,
    /// rounded up, so a non-empty text is never free.
    pub fn estimate_tokens(chars: usize) -> u64 {
        chars.div_ceil(4) as u64
    }

    /// Reads OpenAI's `usage` object (also the shape inside a streamed usage chunk), where it lies
    /// (a parsed answer's document, or `serde_json` values): no tree is built.
    pub fn from_openai(v: Json<'_>) -> Option<Self> {
        // One pass over the object for the four fields.
        let [prompt, completion, prompt_details, completion_details] = v.fields([
            "prompt_tokens",
            "completion_tokens",
            "prompt_tokens_details",
            "completion_tokens_details",
        ]);
        let prompt = prompt?.as_u64()?;
        let completion = completion.and_then(Json::as_u64).unwrap_or(0);
        let detail = |d: Option<Json<'_>>, inner: &str| {
            d.and_then(|d| d.get(inner)).and_then(Json::as_u64).unwrap_or(0)
        };
        let cached = detail(prompt_details, "cached_tokens");
        let reasoning = detail(completion_details, "reasoning_tokens");
        Some(Self {
            prompt_tokens: prompt,
            completion_tokens: completion,
            cached_tokens: cached,
            reasoning_tokens: reasoning,
            estimated: false,
        })
    }
}

impl Usage {
    /// Reads Anthropic's `usage` object. In streams it comes in two halves (`message_start` has the
    /// input, `message_delta` the output), so absent counts are `None`.
    pub fn from_anthropic(v: Json<'_>) -> (Option<u64>, Option<u64>, u64) {
        let n = |k: &str| v.get(k).and_then(Json::as_u64);
        let cached = n("cache_read_input_tokens").unwrap_or(0);
        let input = n("input_tokens").map(|i| i + cached + n("cache_creation_input_tokens").unwrap_or(0));
        (input, n("output_tokens"), cached)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_openai_usage_with_details() {
        let v = serde_json::json!({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
            "prompt_tokens_details": {"cached_tokens": 4}, "completion_tokens_details": {"reasoning_tokens": 2}});
        let u = Usage::from_openai(Json::from(&v)).unwrap();
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens, u.cached_tokens, u.reasoning_tokens),
            (10, 5, 4, 2)
        );
        assert_eq!(u.total(), 15);
        assert!(!u.estimated);
    }

    #[test]
    fn estimate_rounds_up() {
        assert_eq!(Usage::estimate_tokens(0), 0);
        assert_eq!(Usage::estimate_tokens(1), 1);
        assert_eq!(Usage::estimate_tokens(8), 2);
        assert_eq!(Usage::estimate_tokens(9), 3);
    }
}
