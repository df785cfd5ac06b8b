//! The canonical model: what every supported wire format can say about a chat, its answer and its
//! stream, in one vocabulary.

use serde_json::Value;
use sluice_core::Usage;

/// A chat request.
#[derive(Debug, Clone, PartialEq)]
pub struct Chat {
    /// System instructions, in order.
    pub system: Vec<String>,
    pub turns: Vec<Turn>,
    pub tools: Vec<Tool>,
    pub tool_choice: Option<ToolChoice>,
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub stop: Vec<String>,
    pub stream: bool,
    pub user: Option<String>,
    pub response_format: ResponseFormat,
}

/// What shape the answer must take (OpenAI's `response_format`).
#[derive(Debug, Clone, PartialEq)]
pub enum ResponseFormat {
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON matching this JSON Schema.
    JsonSchema(Value),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
}

/// One turn of the conversation. Tool results are user turns, as most providers have them.
#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    pub role: Role,
    pub parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Text(String),
    Image(Image),
    /// A call the assistant made; `arguments` is the JSON text of the arguments.
    ToolCall {
        id: String,
        name: String,
        arguments: String,
    },
    ToolResult {
        call_id: String,
        content: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Image {
    Url(String),
    Base64 { media_type: String, data: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    /// JSON Schema of the arguments.
    pub parameters: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ToolChoice {
    Auto,
    None,
    Required,
    Named(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    Stop,
    Length,
    ToolCalls,
    ContentFilter,
}

/// A complete (non-streamed) answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub id: String,
    pub model: String,
    pub text: Option<String>,
    pub tool_calls: Vec<(String, String, String)>,
    pub finish: Finish,
    pub usage: Usage,
}

/// One event of a streamed answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Start {
        id: String,
        model: String,
    },
    Text(String),
    /// A tool call begins; `index` counts tool calls from 0 in the order they start.
    ToolStart {
        index: u32,
        id: String,
        name: String,
    },
    ToolArguments {
        index: u32,
        fragment: String,
    },
    Finish(Finish),
    Usage(Usage),
    /// A provider error inside the stream.
    Error {
        message: String,
    },
    /// The provider said the answer is complete.
    End,
}

/// A chat every translator's tests start from: a system prompt, a user turn, an assistant tool call
/// `c1` to `w` with `{"a":1}`, its result `cold`, and the tool `w`.
#[cfg(test)]
pub fn sample_chat() -> Chat {
    Chat {
        system: vec!["be brief".into()],
        turns: vec![
            Turn { role: Role::User, parts: vec![Part::Text("hi".into())] },
            Turn {
                role: Role::Assistant,
                parts: vec![Part::ToolCall {
                    id: "c1".into(),
                    name: "w".into(),
                    arguments: "{\"a\":1}".into(),
                }],
            },
            Turn {
                role: Role::User,
                parts: vec![Part::ToolResult { call_id: "c1".into(), content: "cold".into() }],
            },
        ],
        tools: vec![Tool {
            name: "w".into(),
            description: Some("weather".into()),
            parameters: serde_json::json!({"type": "object"}),
        }],
        tool_choice: None,
        max_tokens: None,
        temperature: None,
        top_p: None,
        stop: vec![],
        stream: false,
        user: None,
        response_format: ResponseFormat::Text,
    }
}
