//! `GET /admin/spend`: cost and tokens grouped by one dimension over a day, a week or a month.
//!
//! `?group_by=team|app|user|model|org|key&period=day|week|month[&date=YYYY-MM-DD][&team=..&org=..&app=..]`.
//! Periods are UTC: the day of `date` (default today), its ISO week (Monday to Sunday) or its month.

use serde_json::{Value, json};
use sluice_core::money::Micros;
use sluice_core::record::CostRecord;

use sluice_core::calendar::{date, month_of, parse_date};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dimension {
    Org,
    Team,
    App,
    User,
    Model,
    Key,
}

impl Dimension {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "org" => Self::Org,
            "team" => Self::Team,
            "app" => Self::App,
            "user" => Self::User,
            "model" => Self::Model,
            "key" => Self::Key,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Org => "org",
            Self::Team => "team",
            Self::App => "app",
            Self::User => "user",
            Self::Model => "model",
            Self::Key => "key",
        }
    }

    /// The ledger column (quoted where SQL needs it).
    pub fn column(self) -> &'static str {
        match self {
            Self::User => "\"user\"",
            Self::Key => "key_id",
            other => other.name(),
        }
    }

    fn of(self, r: &CostRecord) -> Option<&str> {
        match self {
            Self::Org => r.org.as_deref(),
            Self::Team => r.team.as_deref(),
            Self::App => r.app.as_deref(),
            Self::User => r.user.as_deref(),
            Self::Model => r.model.as_deref(),
            Self::Key => r.key_id.as_deref(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpendQuery {
    pub group_by: Dimension,
    pub period: &'static str,
    /// First day included and first day excluded, as days since 1970-01-01.
    pub from_day: i64,
    pub to_day: i64,
    pub filters: Vec<(Dimension, String)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpendRow {
    pub key: Option<String>,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    pub reasoning_tokens: u64,
    pub cost_micros: u64,
}

impl SpendQuery {
    /// Parses the query string; `today` is the current UTC day number. Errors are sentences.
    pub fn parse(query: &str, today: i64) -> Result<Self, String> {
        let mut group_by = Dimension::Team;
        let mut period = "day";
        let mut day = today;
        let mut filters = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v);
            match k {
                "group_by" => {
                    group_by = Dimension::parse(&v).ok_or_else(|| {
                        format!("group_by: `{v}` is not one of team, app, user, model, org, key")
                    })?;
                }
                "period" => {
                    period = match v.as_str() {
                        "day" => "day",
                        "week" => "week",
                        "month" => "month",
                        _ => return Err(format!("period: `{v}` is not one of day, week, month")),
                    };
                }
                "date" => {
                    day =
                        parse_date(&v).ok_or_else(|| format!("date: `{v}` is not a date like 2026-11-30"))?
                }
                "org" | "team" | "app" | "user" | "model" | "key" => {
                    if let Some(d) = Dimension::parse(k) {
                        filters.push((d, v));
                    }
                }
                _ => return Err(format!("unknown parameter `{k}`")),
            }
        }
        let (from_day, to_day) = match period {
            "week" => {
                // 1970-01-01 was a Thursday: Monday-based weekday is (day + 3) mod 7.
                let monday = day - (day + 3).rem_euclid(7);
                (monday, monday + 7)
            }
            "month" => month_of(day),
            _ => (day, day + 1),
        };
        Ok(Self { group_by, period, from_day, to_day, filters })
    }

    pub fn matches(&self, r: &CostRecord) -> bool {
        let day = r.day();
        day >= self.from_day
            && day < self.to_day
            && self.filters.iter().all(|(d, v)| d.of(r) == Some(v.as_str()))
    }

    /// Aggregates records held in memory (the embedded default's ledger).
    pub fn aggregate<'a>(&self, records: impl Iterator<Item = &'a CostRecord>) -> Vec<SpendRow> {
        let mut groups: std::collections::BTreeMap<Option<String>, SpendRow> = Default::default();
        for r in records.filter(|r| self.matches(r)) {
            let key = self.group_by.of(r).map(str::to_owned);
            let row = groups.entry(key.clone()).or_insert_with(|| SpendRow { key, ..Default::default() });
            row.requests += 1;
            row.prompt_tokens += r.prompt_tokens;
            row.completion_tokens += r.completion_tokens;
            row.cached_tokens += r.cached_tokens;
            row.reasoning_tokens += r.reasoning_tokens;
            row.cost_micros += r.cost.0;
        }
        let mut rows: Vec<SpendRow> = groups.into_values().collect();
        rows.sort_by(|a, b| b.cost_micros.cmp(&a.cost_micros).then_with(|| a.key.cmp(&b.key)));
        rows
    }

    /// The answer's JSON.
    pub fn render(&self, rows: &[SpendRow], pending: u64) -> Value {
        let dim = self.group_by.name();
        let total: u64 = rows.iter().map(|r| r.cost_micros).sum();
        let rows: Vec<Value> = rows
            .iter()
            .map(|r| {
                json!({
                    dim: r.key,
                    "requests": r.requests,
                    "prompt_tokens": r.prompt_tokens,
                    "completion_tokens": r.completion_tokens,
                    "cached_tokens": r.cached_tokens,
                    "reasoning_tokens": r.reasoning_tokens,
                    "cost_micros": r.cost_micros,
                    "cost_usd": Micros(r.cost_micros).usd(),
                })
            })
            .collect();
        json!({
            "object": "spend",
            "group_by": dim,
            "period": self.period,
            "from": date(self.from_day),
            "to": date(self.to_day),
            "filters": self.filters.iter().map(|(d, v)| (d.name().to_owned(), Value::from(v.as_str()))).collect::<serde_json::Map<_, _>>(),
            "total_cost_micros": total,
            "total_cost_usd": Micros(total).usd(),
            "data": rows,
            "records_pending": pending,
        })
    }
}

/// Decodes `%XX` and `+` in a query value.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOV_30_2026: i64 = 20_787; // a Monday

    #[test]
    fn periods_are_utc_days_iso_weeks_and_months() {
        let q = SpendQuery::parse("", NOV_30_2026).unwrap();
        assert_eq!((q.group_by, q.from_day, q.to_day), (Dimension::Team, NOV_30_2026, NOV_30_2026 + 1));
        let q = SpendQuery::parse("period=week&date=2026-12-03", 0).unwrap();
        assert_eq!((date(q.from_day), date(q.to_day)), ("2026-11-30".into(), "2026-12-07".into()));
        let q = SpendQuery::parse("period=month&group_by=model&team=pay%20ments", NOV_30_2026).unwrap();
        assert_eq!((date(q.from_day), date(q.to_day)), ("2026-11-01".into(), "2026-12-01".into()));
        assert_eq!(q.filters, vec![(Dimension::Team, "pay ments".to_owned())]);
        let q = SpendQuery::parse("period=month&date=2026-12-15", 0).unwrap();
        assert_eq!(date(q.to_day), "2027-01-01");
    }

    #[test]
    fn bad_parameters_are_named() {
        assert!(SpendQuery::parse("group_by=color", 0).unwrap_err().starts_with("group_by"));
        assert!(SpendQuery::parse("period=year", 0).unwrap_err().starts_with("period"));
        assert!(SpendQuery::parse("date=2026-02-30", 0).unwrap_err().starts_with("date"));
        assert!(SpendQuery::parse("colour=red", 0).unwrap_err().contains("colour"));
        assert_eq!(percent_decode("%é%4"), "%é%4", "a broken escape is kept, never a panic");
    }
}
