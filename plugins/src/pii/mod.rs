//! Plugin `pii`: personal data and secrets never leave unnoticed.
//!
//! Every text the model will see is scanned (see [`scanner`]): message contents (strings and text
//! parts), tool-call arguments, tool results, `system`, `/v1/completions` prompts, `/v1/messages`
//! blocks, embeddings input. Each kind has an action — `block` (400 naming the kinds found, never
//! the values), `redact` (the value is replaced by a token like `[EMAIL_1]`, the same value by the
//! same token within a request, and the provider sees only the token), `log` (counted, passed) or
//! `off` — set per kind and per team. Defaults: block `ssn`, `card`, `secret`; redact `email`,
//! `phone`, `iban`. A scanner failure refuses the request (500): it never forwards unscanned text.
//!
//! With `responses = true`, answers are scanned too (`content`, completion `text`, tool-call
//! `arguments`), streams included: the engine holds the last `response_holdback` bytes of each
//! choice's text, so a value split across chunks is still caught before any of it goes out. An
//! answer cannot be taken back, so in answers every kind set to `block` or `redact` is replaced by
//! its token (numbered on from the request's, the same value keeping its token); a scanner failure
//! withholds the answer (500, or the stream cut with an error event).

pub mod scanner;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::Value;
use sluice_core::ctx::Endpoint;
use sluice_core::json::{Json, Kind as JsonKind};
use sluice_core::wire::Request;
use sluice_core::{Flow, GatewayError, Phases, Plugin, RequestCtx};

use scanner::{Found, Kind, Scanner};

pub const NAME: &str = "pii";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Block,
    Redact,
    Log,
    Off,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PiiConfig {
    /// Action per kind, replacing the default (`ssn = "redact"`, ...).
    #[serde(default)]
    pub actions: BTreeMap<String, Action>,
    /// Per team: actions replacing the configured ones.
    #[serde(default)]
    pub teams: BTreeMap<String, BTreeMap<String, Action>>,
    /// Patterns of your own: `custom.employee_id = { pattern = "EMP-\\d{6}", action = "redact" }`.
    #[serde(default)]
    pub custom: BTreeMap<String, CustomKind>,
    /// Scan answers too (streams included).
    #[serde(default)]
    pub responses: bool,
    /// Bytes of a streamed answer held back until more text shows whether they start a value (at
    /// least as long as the longest value to catch).
    #[serde(default = "default_holdback")]
    pub response_holdback: usize,
}

fn default_holdback() -> usize {
    256
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomKind {
    /// A Vectorscan (PCRE-like) pattern.
    pub pattern: String,
    pub action: Action,
    /// The redaction token's word (default: the name in capitals).
    pub token: Option<String>,
}

pub struct Pii {
    scanner: Scanner,
    /// Action per kind index, and per team.
    actions: Vec<Action>,
    teams: HashMap<String, Vec<Action>>,
    /// Answers are scanned, with this many bytes held back on streams.
    responses: Option<usize>,
}

/// The request's tokens, kept for its answer: a value keeps its token, new ones number on.
#[derive(Default)]
struct Tokens {
    tokens: HashMap<String, String>,
    next: HashMap<usize, usize>,
}

fn default_action(kind: &str) -> Action {
    match kind {
        "ssn" | "card" | "secret" => Action::Block,
        _ => Action::Redact,
    }
}

impl Pii {
    pub fn new(config: &PiiConfig) -> Result<Self, String> {
        let mut kinds: Vec<(Kind, Vec<String>)> = scanner::builtin()
            .into_iter()
            .map(|b| {
                (
                    Kind {
                        name: b.name.into(),
                        token: b.token.into(),
                        validate: b.validate,
                        candidate: b.candidate,
                    },
                    b.patterns.into_iter().map(str::to_owned).collect(),
                )
            })
            .collect();
        for (name, c) in &config.custom {
            let token = c.token.clone().unwrap_or_else(|| name.to_ascii_uppercase());
            kinds.push((
                Kind { name: name.clone(), token, validate: None, candidate: None },
                vec![c.pattern.clone()],
            ));
        }
        let scanner = Scanner::new(kinds).map_err(|e| format!("custom: {e}"))?;
        let resolve = |overrides: &BTreeMap<String, Action>| -> Result<Vec<Action>, String> {
            for name in overrides.keys() {
                if !scanner.kinds().iter().any(|k| &k.name == name) {
                    return Err(format!(
                        "`{name}` is not a kind (ssn, card, secret, email, phone, iban, or custom)"
                    ));
                }
            }
            Ok(scanner
                .kinds()
                .iter()
                .map(|k| {
                    overrides
                        .get(&k.name)
                        .or_else(|| config.actions.get(&k.name))
                        .copied()
                        .or_else(|| config.custom.get(&k.name).map(|c| c.action))
                        .unwrap_or_else(|| default_action(&k.name))
                })
                .collect())
        };
        let actions = resolve(&BTreeMap::new()).map_err(|e| format!("actions: {e}"))?;
        resolve(&config.actions).map_err(|e| format!("actions: {e}"))?;
        let mut teams = HashMap::new();
        for (team, overrides) in &config.teams {
            teams.insert(team.clone(), resolve(overrides).map_err(|e| format!("teams.{team}: {e}"))?);
        }
        if config.responses && config.response_holdback == 0 {
            return Err("response_holdback: must be above 0 (bytes held back on streamed answers)".into());
        }
        Ok(Self { scanner, actions, teams, responses: config.responses.then_some(config.response_holdback) })
    }

    fn actions_for(&self, ctx: &RequestCtx) -> &[Action] {
        ctx.identity
            .as_ref()
            .and_then(|who| self.teams.get(&who.team))
            .map_or(self.actions.as_slice(), Vec::as_slice)
    }

    pub fn scanner(&self) -> &Scanner {
        &self.scanner
    }
}

/// What one request's scan found and did.
#[derive(Debug, Default)]
pub struct Findings {
    /// Count per kind name.
    pub counts: BTreeMap<String, usize>,
    /// Kinds that block, found.
    pub blocked: Vec<String>,
    /// Kinds replaced by tokens.
    pub redacted: Vec<String>,
}

/// Redaction state of one request: the same value gets the same token.
struct Redactor<'a> {
    pii: &'a Pii,
    actions: &'a [Action],
    tokens: HashMap<String, String>,
    next: HashMap<usize, usize>,
    findings: Findings,
    failed: Option<String>,
}

impl Redactor<'_> {
    fn text(&mut self, s: &mut String) {
        if self.failed.is_some() {
            return;
        }
        let found = match self.pii.scanner.scan(s.as_bytes()) {
            Ok(f) => f,
            Err(e) => {
                self.failed = Some(e);
                return;
            }
        };
        if found.is_empty() {
            return;
        }
        let mut out = String::with_capacity(s.len());
        let mut at = 0;
        for Found { kind, from, to } in found {
            let action = self.actions[kind];
            if action == Action::Off {
                continue;
            }
            let k = &self.pii.scanner.kinds()[kind];
            *self.findings.counts.entry(k.name.clone()).or_default() += 1;
            match action {
                Action::Block => {
                    if !self.findings.blocked.contains(&k.name) {
                        self.findings.blocked.push(k.name.clone());
                    }
                }
                Action::Redact if s.is_char_boundary(from) && s.is_char_boundary(to) => {
                    let value = s[from..to].to_owned();
                    let next = &mut self.next;
                    let token = self
                        .tokens
                        .entry(value)
                        .or_insert_with(|| {
                            let n = next.entry(kind).or_insert(0);
                            *n += 1;
                            format!("[{}_{}]", k.token, n)
                        })
                        .clone();
                    out.push_str(&s[at..from]);
                    out.push_str(&token);
                    at = to;
                    if !self.findings.redacted.contains(&k.name) {
                        self.findings.redacted.push(k.name.clone());
                    }
                }
                // A match that cannot be cut cleanly is not forwarded either.
                Action::Redact => self.findings.blocked.push(k.name.clone()),
                Action::Log | Action::Off => {}
            }
        }
        if at > 0 {
            out.push_str(&s[at..]);
            *s = out;
        }
    }

    /// Every string inside `v`, except fields that are not text the model reads.
    fn value(&mut self, v: &mut Value) {
        match v {
            Value::String(s) => self.text(s),
            Value::Array(items) => items.iter_mut().for_each(|i| self.value(i)),
            Value::Object(map) => {
                for (k, v) in map.iter_mut() {
                    if is_text_field(k) {
                        self.value(v);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Whether a field's strings are text the model reads (ids, roles, types and media are not).
fn is_text_field(key: &str) -> bool {
    !matches!(
        key,
        "role"
            | "type"
            | "id"
            | "tool_call_id"
            | "tool_use_id"
            | "name"
            | "image_url"
            | "source"
            | "cache_control"
            | "media_type"
    )
}

/// The strings of `v` that [`Redactor::value`] scans.
fn texts_of<'a>(v: Json<'a>, out: &mut Vec<&'a str>) {
    match v.kind() {
        JsonKind::String => out.extend(v.as_str()),
        JsonKind::Array => v.items().for_each(|i| texts_of(i, out)),
        JsonKind::Object => {
            v.entries().filter(|(k, _)| is_text_field(k)).for_each(|(_, v)| texts_of(v, out));
        }
        _ => {}
    }
}

/// The scanned fields of a request body.
const FIELDS: [&str; 4] = ["messages", "system", "prompt", "input"];

impl Pii {
    /// Whether no string of the request that [`Redactor::value`] would scan has a candidate
    /// match, in one scan (a failed scan is not clean: the redacting pass then meets the failure
    /// and refuses).
    fn clean(&self, body: Json<'_>) -> bool {
        let mut texts = Vec::new();
        for v in body.fields(FIELDS).into_iter().flatten() {
            texts_of(v, &mut texts);
        }
        texts.is_empty() || matches!(self.scanner.detect_all(texts.into_iter()), Ok(false))
    }
}

#[async_trait]
impl Plugin for Pii {
    fn name(&self) -> &'static str {
        NAME
    }

    fn phases(&self) -> Phases {
        Phases { headers: false, request: true, complete: false }
    }

    async fn on_request(&self, ctx: &mut RequestCtx, request: &mut Request) -> Result<Flow, GatewayError> {
        if request.endpoint == Endpoint::Models {
            return Ok(Flow::Continue);
        }
        let actions = self.actions_for(ctx);
        let mut r = Redactor {
            pii: self,
            actions,
            tokens: HashMap::new(),
            next: HashMap::new(),
            findings: Findings::default(),
            failed: None,
        };
        // Most requests carry nothing to find: a read-only pass first leaves the body untouched, so
        // it goes upstream as the client's own bytes. Only a body with a candidate is walked mutably.
        let clean = self.clean(request.body.json());
        if !clean {
            for field in FIELDS {
                if let Some(v) = request.body.get_mut(field) {
                    r.value(v);
                }
            }
        }
        if let Some(e) = r.failed {
            log::error!("pii: the scanner failed on request {}: {e}; refusing it", ctx.request_id);
            return Err(GatewayError::internal(
                "The gateway could not check this request for personal data, so it was not sent. Please retry.",
            )
            .with_code("pii_scan_failed"));
        }
        let findings = r.findings;
        if self.responses.is_some() {
            ctx.extensions.insert(Tokens { tokens: r.tokens, next: r.next });
        }
        if !findings.counts.is_empty() {
            log::info!("pii: request {} found {:?}", ctx.request_id, findings.counts);
        }
        let blocked = (!findings.blocked.is_empty()).then(|| findings.blocked.join(", "));
        if !findings.redacted.is_empty() {
            ctx.response_headers.push(("x-sluice-pii-redacted", findings.redacted.join(", ")));
        }
        // Kept for the audit trail, blocked requests included.
        ctx.extensions.insert(findings);
        if let Some(kinds) = blocked {
            return Err(GatewayError::invalid_request(format!(
                "The request contains data that may not be sent to a model provider: {kinds}. Remove it and retry."
            ))
            .with_code("pii_blocked"));
        }
        Ok(Flow::Continue)
    }

    fn checks_answers(&self) -> bool {
        self.responses.is_some()
    }

    fn on_answer_text(
        &self,
        ctx: &mut RequestCtx,
        text: &mut String,
        done: bool,
    ) -> Result<usize, GatewayError> {
        let holdback = self.responses.unwrap_or(0);
        let scanned = if scanner::injected("pii_answer_scan") {
            Err("injected fault (SLUICE_FAULTS=pii_answer_scan)".to_owned())
        } else {
            self.scanner.scan(text.as_bytes())
        };
        let found = scanned.map_err(|e| {
            log::error!(
                "pii: the scanner failed on the answer to request {}: {e}; withholding it",
                ctx.request_id
            );
            GatewayError::internal(
                "The gateway could not check the answer for personal data, so it was withheld.",
            )
            .with_code("pii_scan_failed")
        })?;
        // What may go out: all of a finished text, else all but the held-back tail, and never the
        // start of a value that runs past that point.
        let mut release = if done { text.len() } else { text.len().saturating_sub(holdback) };
        while !text.is_char_boundary(release) {
            release -= 1;
        }
        for f in &found {
            if f.from < release && f.to > release {
                release = f.from;
            }
        }
        let actions = self.actions_for(ctx).to_vec();
        let mut state = ctx.extensions.get_mut::<Tokens>().map(std::mem::take).unwrap_or_default();
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        let mut counted: Vec<String> = Vec::new();
        for f in found.iter().filter(|f| f.to <= release) {
            let action = actions[f.kind];
            let k = &self.scanner.kinds()[f.kind];
            if action == Action::Off || !text.is_char_boundary(f.from) || !text.is_char_boundary(f.to) {
                continue;
            }
            counted.push(format!("answer.{}", k.name));
            if action == Action::Log {
                continue;
            }
            let value = text[f.from..f.to].to_owned();
            let next = &mut state.next;
            let token = state
                .tokens
                .entry(value)
                .or_insert_with(|| {
                    let n = next.entry(f.kind).or_insert(0);
                    *n += 1;
                    format!("[{}_{}]", k.token, n)
                })
                .clone();
            out.push_str(&text[at..f.from]);
            out.push_str(&token);
            at = f.to;
        }
        ctx.extensions.insert(state);
        if !counted.is_empty() {
            log::info!("pii: the answer to request {} had {counted:?}", ctx.request_id);
            if let Some(findings) = ctx.extensions.get_mut::<Findings>() {
                for name in counted {
                    *findings.counts.entry(name).or_default() += 1;
                }
            }
        }
        if at == 0 {
            return Ok(release);
        }
        out.push_str(&text[at..]);
        let grown = out.len() as isize - text.len() as isize;
        *text = out;
        Ok((release as isize + grown).max(0) as usize)
    }
}
