//! Translation between wire formats through one canonical model.
//!
//! A client speaks OpenAI; a target may speak something else. Each foreign format is a pair of
//! translators to and from [`canonical`]: requests go client format → canonical → provider format;
//! answers and stream events come back provider format → canonical → client format. OpenAI → OpenAI
//! never comes here: it is forwarded as the same bytes.

pub mod anthropic;
pub mod canonical;
pub mod gemini;
pub mod openai;

use bytes::{Bytes, BytesMut};

use crate::sse::{SseSplitter, data_of};

/// A provider's SSE stream turned into OpenAI chunks as it arrives, event by event.
#[derive(Debug)]
pub struct StreamTranslation {
    splitter: SseSplitter,
    reader: Reader,
    writer: openai::ChunkWriter,
    events: Vec<canonical::Event>,
}

#[derive(Debug)]
enum Reader {
    Anthropic(anthropic::StreamReader),
    /// Gemini's chunks may omit the model: the target's model name fills in.
    Gemini(gemini::StreamReader, String),
}

impl StreamTranslation {
    pub fn anthropic(created: u64) -> Self {
        Self::new(Reader::Anthropic(anthropic::StreamReader::default()), created)
    }

    pub fn gemini(created: u64, model: &str) -> Self {
        Self::new(Reader::Gemini(gemini::StreamReader::default(), model.to_owned()), created)
    }

    fn new(reader: Reader, created: u64) -> Self {
        Self {
            splitter: SseSplitter::default(),
            reader,
            writer: openai::ChunkWriter::new(created),
            events: Vec::new(),
        }
    }

    /// Translates what `chunk` completes; returns OpenAI SSE bytes (possibly empty).
    pub fn feed(&mut self, chunk: &[u8]) -> Bytes {
        let (reader, events) = (&mut self.reader, &mut self.events);
        self.splitter.feed(chunk, |event| {
            if let Some(data) = data_of(event) {
                reader.read(data, events);
            }
        });
        self.write()
    }

    /// The upstream stream ended cleanly: translate what is left (a last event without its blank
    /// line, and for Gemini the end of the answer).
    pub fn finish(&mut self) -> Bytes {
        let rest = self.splitter.rest();
        if let Some(data) = data_of(&rest) {
            self.reader.read(data, &mut self.events);
        }
        if let Reader::Gemini(r, _) = &mut self.reader {
            r.finish(&mut self.events);
        }
        self.write()
    }

    fn write(&mut self) -> Bytes {
        let mut out = BytesMut::new();
        for e in self.events.drain(..) {
            self.writer.write(&e, &mut out);
        }
        out.freeze()
    }
}

impl Reader {
    fn read(&mut self, data: &[u8], out: &mut Vec<canonical::Event>) {
        match self {
            Reader::Anthropic(r) => r.read(data, out),
            Reader::Gemini(r, model) => r.read(data, model, out),
        }
    }
}

/// The forwarding path's OpenAI SSE turned into Anthropic's event sequence, for `/v1/messages`
/// clients of providers that are not Anthropic.
#[derive(Debug, Default)]
pub struct ToAnthropic {
    splitter: SseSplitter,
    reader: openai::StreamReader,
    writer: anthropic::EventWriter,
    events: Vec<canonical::Event>,
}

impl ToAnthropic {
    pub fn feed(&mut self, chunk: &[u8]) -> Bytes {
        let (reader, events) = (&mut self.reader, &mut self.events);
        self.splitter.feed(chunk, |event| {
            if let Some(data) = data_of(event) {
                reader.read(data, events);
            }
        });
        let mut out = BytesMut::new();
        for e in self.events.drain(..) {
            self.writer.write(&e, &mut out);
        }
        out.freeze()
    }
}

/// An OpenAI JSON answer (or error) as Anthropic's, for `/v1/messages` clients.
pub fn answer_for_anthropic(status: u16, body: &[u8]) -> Bytes {
    if (200..300).contains(&status)
        && let Ok(answer) = openai::answer_from_openai(body)
    {
        return Bytes::from(anthropic::answer_to_anthropic(&answer).to_string());
    }
    let message = crate::providers::openai::error_message(body);
    let e = sluice_core::GatewayError::new(sluice_core::ErrorKind::from_status(status), message);
    Bytes::from(e.to_anthropic_json())
}

/// Golden transcripts: recorded-shape provider streams in `tests/fixtures/*.sse`, translated and
/// compared with the expected streams next to them (`*.openai.sse`; `*.anthropic.sse` for OpenAI
/// streams bound for `/v1/messages` clients) — whole, and re-split at
/// every byte boundary, which must not change a byte of the output. `SLUICE_BLESS=1` rewrites the
/// expected files after a deliberate change; review their diff.
#[cfg(test)]
mod golden {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

    fn translate(name: &str, chunks: &[&[u8]]) -> Vec<u8> {
        if name.starts_with("openai") {
            // The /v1/messages direction: OpenAI chunks to Anthropic events.
            let mut t = ToAnthropic::default();
            return chunks.iter().flat_map(|c| t.feed(c).to_vec()).collect();
        }
        let mut t = if name.starts_with("gemini") {
            StreamTranslation::gemini(0, "gemini-model")
        } else {
            StreamTranslation::anthropic(0)
        };
        let mut out = Vec::new();
        for c in chunks {
            out.extend_from_slice(&t.feed(c));
        }
        out.extend_from_slice(&t.finish());
        out
    }

    fn check(name: &str) {
        let input = std::fs::read(format!("{FIXTURES}/{name}.sse")).unwrap();
        let out = if name.starts_with("openai") { "anthropic" } else { "openai" };
        let expected_path = format!("{FIXTURES}/{name}.{out}.sse");
        let whole = translate(name, &[&input]);
        if std::env::var_os("SLUICE_BLESS").is_some() {
            std::fs::write(&expected_path, &whole).unwrap();
        }
        let expected = std::fs::read(&expected_path).unwrap();
        assert_eq!(String::from_utf8_lossy(&whole), String::from_utf8_lossy(&expected), "{name}");
        for cut in 1..input.len() {
            let split = translate(name, &[&input[..cut], &input[cut..]]);
            assert_eq!(split, expected, "{name} split at byte {cut}");
        }
        let bytewise: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(translate(name, &bytewise), expected, "{name} fed one byte at a time");
    }

    #[test]
    fn anthropic_text_then_parallel_tool_calls() {
        check("anthropic_tools");
    }

    #[test]
    fn anthropic_error_inside_a_stream() {
        check("anthropic_error");
    }

    #[test]
    fn gemini_text_then_a_function_call() {
        check("gemini_text_and_call");
    }

    #[test]
    fn openai_text_then_parallel_tool_calls_for_an_anthropic_client() {
        check("openai_tools");
    }
}
