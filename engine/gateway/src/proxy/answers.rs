//! Answer text checked by plugins before the client sees it (the `pii` plugin's response scanning).
//!
//! Only when a plugin [`checks_answers`](sluice_core::Plugin::checks_answers): otherwise answers
//! pass untouched and streams are forwarded as they come. A whole answer is checked at once. A
//! stream is checked as it goes: each choice's text (and each tool call's arguments) is held in a
//! buffer, the plugins say how much of it may go out now (they keep back a tail in which a value may
//! still be arriving), and the event carries that much; when the choice finishes, the rest goes out
//! with the finishing event. Events are rewritten only when their text changed. Everything works on
//! OpenAI's shapes: translated streams are checked after translation, before Anthropic's if the
//! client speaks it.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use serde_json::{Map, Value};
use sluice_core::{GatewayError, Plugin, RequestCtx};

use crate::sse::{SseSplitter, data_of};

/// Whether any plugin checks answers.
pub fn wanted(plugins: &[Arc<dyn Plugin>]) -> bool {
    plugins.iter().any(|p| p.checks_answers())
}

/// Runs the checking plugins on `text`; returns how many bytes may go out (a char boundary).
fn check(
    plugins: &[Arc<dyn Plugin>],
    core: &mut RequestCtx,
    text: &mut String,
    done: bool,
) -> Result<usize, GatewayError> {
    let mut release = text.len();
    for p in plugins.iter().filter(|p| p.checks_answers()) {
        release = release.min(p.on_answer_text(core, text, done)?);
    }
    let mut release = if done { text.len() } else { release.min(text.len()) };
    while !text.is_char_boundary(release) {
        release -= 1;
    }
    Ok(release)
}

/// Checks a whole (non-streamed) answer; `Some` when its text changed.
pub fn check_body(
    plugins: &[Arc<dyn Plugin>],
    core: &mut RequestCtx,
    body: &[u8],
) -> Result<Option<Bytes>, GatewayError> {
    let Ok(Value::Object(mut answer)) = serde_json::from_slice::<Value>(body) else { return Ok(None) };
    let mut changed = false;
    let mut one = |v: &mut Value| -> Result<(), GatewayError> {
        if let Value::String(s) = v {
            let before = s.clone();
            check(plugins, core, s, true)?;
            changed |= *s != before;
        }
        Ok(())
    };
    for choice in answer.get_mut("choices").and_then(Value::as_array_mut).into_iter().flatten() {
        if let Some(text) = choice.get_mut("text") {
            one(text)?;
        }
        let Some(message) = choice.get_mut("message") else { continue };
        if let Some(content) = message.get_mut("content") {
            one(content)?;
        }
        for call in message.get_mut("tool_calls").and_then(Value::as_array_mut).into_iter().flatten() {
            if let Some(arguments) = call.get_mut("function").and_then(|f| f.get_mut("arguments")) {
                one(arguments)?;
            }
        }
    }
    Ok(changed.then(|| Bytes::from(serde_json::to_vec(&answer).unwrap_or_default())))
}

/// Which text of a choice: its content (or completion text), or one tool call's arguments.
type Slot = (u64, Option<u64>);

/// The stream side: held text per choice and tool call.
#[derive(Default)]
pub struct AnswerGuard {
    splitter: SseSplitter,
    held: BTreeMap<Slot, String>,
    /// The last chunk seen, for the events that carry held text at the end.
    template: Option<Map<String, Value>>,
}

impl AnswerGuard {
    /// Takes upstream bytes (OpenAI SSE); returns the events to send now, checked.
    pub fn feed(
        &mut self,
        plugins: &[Arc<dyn Plugin>],
        core: &mut RequestCtx,
        chunk: &[u8],
    ) -> Result<Bytes, GatewayError> {
        let mut events = Vec::new();
        self.splitter.feed(chunk, |e| events.push(Bytes::copy_from_slice(e)));
        let mut out = BytesMut::new();
        for event in events {
            self.event(plugins, core, &event, &mut out)?;
        }
        Ok(out.freeze())
    }

    /// The end of the stream: whatever is still held goes out (checked as finished).
    pub fn finish(
        &mut self,
        plugins: &[Arc<dyn Plugin>],
        core: &mut RequestCtx,
    ) -> Result<Bytes, GatewayError> {
        let mut out = BytesMut::new();
        self.flush(plugins, core, &mut out)?;
        out.extend_from_slice(&self.splitter.rest());
        Ok(out.freeze())
    }

    fn event(
        &mut self,
        plugins: &[Arc<dyn Plugin>],
        core: &mut RequestCtx,
        event: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), GatewayError> {
        let Some(data) = data_of(event) else {
            out.extend_from_slice(event);
            return Ok(());
        };
        if data == b"[DONE]" {
            self.flush(plugins, core, out)?;
            out.extend_from_slice(event);
            return Ok(());
        }
        let Ok(Value::Object(mut chunk)) = serde_json::from_slice::<Value>(data) else {
            out.extend_from_slice(event);
            return Ok(());
        };
        let mut changed = false;
        for (position, choice) in
            chunk.get_mut("choices").and_then(Value::as_array_mut).into_iter().flatten().enumerate()
        {
            let index = choice.get("index").and_then(Value::as_u64).unwrap_or(position as u64);
            let finished = choice.get("finish_reason").is_some_and(|f| !f.is_null());
            changed |= self.choice(plugins, core, index, choice, finished)?;
        }
        self.template = Some(chunk.clone());
        if changed {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(&serde_json::to_vec(&chunk).unwrap_or_default());
            out.extend_from_slice(b"\n\n");
        } else {
            out.extend_from_slice(event);
        }
        Ok(())
    }

    /// Holds this chunk's text of one choice and puts back what may go out; `true` if it changed.
    fn choice(
        &mut self,
        plugins: &[Arc<dyn Plugin>],
        core: &mut RequestCtx,
        index: u64,
        choice: &mut Value,
        finished: bool,
    ) -> Result<bool, GatewayError> {
        let mut changed = false;
        // Completions put the text on the choice, chat on its delta.
        let delta_text = choice.get("delta").is_some();
        let text_slot = if delta_text {
            choice.get_mut("delta").and_then(|d| d.get_mut("content"))
        } else {
            choice.get_mut("text")
        };
        if let Some(Value::String(s)) = text_slot {
            let fresh = std::mem::take(s);
            let released = self.release(plugins, core, (index, None), fresh.clone(), finished)?;
            changed |= released != fresh;
            *s = released;
        } else if finished && self.held.contains_key(&(index, None)) {
            let released = self.release(plugins, core, (index, None), String::new(), true)?;
            if !released.is_empty() {
                let target = if delta_text { choice.get_mut("delta") } else { Some(&mut *choice) };
                if let Some(Value::Object(map)) = target {
                    map.insert(if delta_text { "content" } else { "text" }.into(), released.into());
                    changed = true;
                }
            }
        }
        let calls =
            choice.get_mut("delta").and_then(|d| d.get_mut("tool_calls")).and_then(Value::as_array_mut);
        for (position, call) in calls.into_iter().flatten().enumerate() {
            let tool = call.get("index").and_then(Value::as_u64).unwrap_or(position as u64);
            if let Some(Value::String(s)) = call.get_mut("function").and_then(|f| f.get_mut("arguments")) {
                let fresh = std::mem::take(s);
                let released = self.release(plugins, core, (index, Some(tool)), fresh.clone(), finished)?;
                changed |= released != fresh;
                *s = released;
            }
        }
        if finished {
            // Tool calls whose last fragment came in an earlier chunk.
            let rest: Vec<Slot> =
                self.held.keys().filter(|(c, t)| *c == index && t.is_some()).copied().collect();
            for slot in rest {
                let released = self.release(plugins, core, slot, String::new(), true)?;
                if !released.is_empty() {
                    changed = true;
                    let call = serde_json::json!({"index": slot.1, "function": {"arguments": released}});
                    if let Some(Value::Object(delta)) = choice.get_mut("delta") {
                        match delta.get_mut("tool_calls").and_then(Value::as_array_mut) {
                            Some(calls) => calls.push(call),
                            None => {
                                delta.insert("tool_calls".into(), Value::Array(vec![call]));
                            }
                        }
                    }
                }
            }
        }
        Ok(changed)
    }

    /// Appends `fresh` to the slot's held text and returns what may go out now.
    fn release(
        &mut self,
        plugins: &[Arc<dyn Plugin>],
        core: &mut RequestCtx,
        slot: Slot,
        fresh: String,
        done: bool,
    ) -> Result<String, GatewayError> {
        let held = self.held.entry(slot).or_default();
        held.push_str(&fresh);
        let n = check(plugins, core, held, done)?;
        let rest = held.split_off(n);
        let out = std::mem::replace(held, rest);
        if done || held.is_empty() {
            self.held.remove(&slot);
        }
        Ok(out)
    }

    /// Sends every held text in events shaped like the last chunk (before `[DONE]` or at the end).
    fn flush(
        &mut self,
        plugins: &[Arc<dyn Plugin>],
        core: &mut RequestCtx,
        out: &mut BytesMut,
    ) -> Result<(), GatewayError> {
        let slots: Vec<Slot> = self.held.keys().copied().collect();
        for slot in slots {
            let text = self.release(plugins, core, slot, String::new(), true)?;
            if text.is_empty() {
                continue;
            }
            let mut chunk = self.template.clone().unwrap_or_default();
            let completion = chunk
                .get("choices")
                .and_then(Value::as_array)
                .and_then(|c| c.first())
                .is_some_and(|c| c.get("delta").is_none() && c.get("text").is_some());
            let choice = match (slot.1, completion) {
                (None, true) => serde_json::json!({"index": slot.0, "text": text, "finish_reason": null}),
                (None, false) => {
                    serde_json::json!({"index": slot.0, "delta": {"content": text}, "finish_reason": null})
                }
                (Some(tool), _) => serde_json::json!({"index": slot.0, "delta": {"tool_calls": [
                    {"index": tool, "function": {"arguments": text}}]}, "finish_reason": null}),
            };
            chunk.insert("choices".into(), Value::Array(vec![choice]));
            chunk.remove("usage");
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(&serde_json::to_vec(&chunk).unwrap_or_default());
            out.extend_from_slice(b"\n\n");
        }
        Ok(())
    }
}
