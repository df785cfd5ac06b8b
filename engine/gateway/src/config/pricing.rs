//! The price table: the embedded `conf/pricing.toml` (or `[pricing] file`), plus the config's own
//! `[pricing.models.*]` entries and optional `[pricing.default]`.

use std::collections::BTreeMap;

use serde::Deserialize;
use sluice_core::calendar::parse_date;
use sluice_core::money::{Micros, Price, Pricing};

/// The embedded price table.
pub const PRICING_TOML: &str = include_str!("../../../../conf/pricing.toml");

/// A price table file (`conf/pricing.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceTableFile {
    /// The day the prices were read off the providers' pages (`YYYY-MM-DD`).
    pub as_of: String,
    pub source: String,
    #[serde(default)]
    pub models: BTreeMap<String, PriceFile>,
}

/// One model's price: dollars per million tokens, as decimal strings (`"2.50"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceFile {
    pub input: String,
    pub output: String,
    pub cached_input: Option<String>,
    pub reasoning: Option<String>,
}

/// `[pricing]` in the gateway's config.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PricingFile {
    /// A price table replacing the embedded one.
    pub file: Option<String>,
    /// The price of every routed model the table does not know. Without it, such a model fails
    /// validation: nothing is free by accident.
    pub default: Option<PriceFile>,
    /// Entries added to (or replacing those of) the table.
    #[serde(default)]
    pub models: BTreeMap<String, PriceFile>,
}

impl PriceFile {
    fn parse(&self, key: &str) -> Result<Price, String> {
        let usd =
            |field: &str, text: &str| Micros::parse_usd(text).map_err(|e| format!("{key}.{field}: {e}"));
        let input = usd("input", &self.input)?;
        let output = usd("output", &self.output)?;
        Ok(Price {
            input,
            output,
            cached_input: self
                .cached_input
                .as_deref()
                .map(|t| usd("cached_input", t))
                .transpose()?
                .unwrap_or(input),
            reasoning: self.reasoning.as_deref().map(|t| usd("reasoning", t)).transpose()?.unwrap_or(output),
        })
    }
}

/// The loaded table, with where it came from (for messages).
#[derive(Debug, Clone)]
pub struct LoadedPricing {
    pub pricing: Pricing,
    pub as_of: String,
    pub origin: String,
}

pub fn load(config: &PricingFile) -> Result<LoadedPricing, String> {
    let (text, origin) = match &config.file {
        Some(path) => (
            std::fs::read_to_string(path).map_err(|e| format!("pricing.file: cannot read {path}: {e}"))?,
            path.clone(),
        ),
        None => (PRICING_TOML.to_owned(), "the embedded conf/pricing.toml".to_owned()),
    };
    let table: PriceTableFile = toml::from_str(&text).map_err(|e| format!("pricing.file: {origin}: {e}"))?;
    if parse_date(&table.as_of).is_none() {
        return Err(format!(
            "pricing.file: {origin}: as_of: `{}` is not a date like 2025-08-15",
            table.as_of
        ));
    }
    let mut prices = BTreeMap::new();
    for (model, p) in &table.models {
        prices.insert(model.clone(), p.parse(&format!("pricing.file: {origin}: models.{model}"))?);
    }
    for (model, p) in &config.models {
        prices.insert(model.clone(), p.parse(&format!("pricing.models.{model}"))?);
    }
    let default = config.default.as_ref().map(|d| d.parse("pricing.default")).transpose()?;
    Ok(LoadedPricing { pricing: Pricing::new(prices, default), as_of: table.as_of, origin })
}

/// Days from `as_of` (`YYYY-MM-DD`) to now, for the staleness warning.
pub fn age_days(as_of: &str) -> Option<i64> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?.as_secs() as i64;
    Some(now / 86_400 - parse_date(as_of)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_table_loads_and_prices_the_common_models() {
        let loaded = load(&PricingFile::default()).unwrap();
        for model in ["gpt-4o-mini", "gpt-4o-2024-08-06", "claude-3-5-haiku-latest", "gemini-2.0-flash-001"] {
            assert!(loaded.pricing.price(model).is_some(), "{model}");
        }
        assert_eq!(loaded.pricing.price("gpt-4o-mini").unwrap().input, Micros(150_000));
        assert!(!loaded.pricing.has_default());
    }

    #[test]
    fn config_entries_override_and_errors_name_the_key() {
        let mut config = PricingFile::default();
        config.models.insert(
            "gpt-4o-mini".into(),
            PriceFile { input: "1".into(), output: "2".into(), cached_input: None, reasoning: None },
        );
        let loaded = load(&config).unwrap();
        let p = loaded.pricing.price("gpt-4o-mini").unwrap();
        assert_eq!(
            (p.input, p.cached_input, p.reasoning),
            (Micros(1_000_000), Micros(1_000_000), Micros(2_000_000))
        );
        config.default =
            Some(PriceFile { input: "x".into(), output: "1".into(), cached_input: None, reasoning: None });
        assert!(load(&config).unwrap_err().starts_with("pricing.default.input"));
    }
}
