//! Translation between wire formats through one canonical model.
//!
//! A client speaks OpenAI; a target may speak something else. Each foreign format is a pair of
//! translators to and from [`canonical`]: requests go client format → canonical → provider format;
//! answers and stream events come back provider format → canonical → client format. OpenAI → OpenAI
//! never comes here: it is forwarded as the same bytes.

pub mod anthropic;
pub mod canonical;
pub mod openai;

use bytes::{Bytes, BytesMut};

use crate::sse::{SseSplitter, data_of};

/// A provider's SSE stream turned into OpenAI chunks as it arrives, event by event.
#[derive(Debug)]
pub struct StreamTranslation {
    splitter: SseSplitter,
    reader: anthropic::StreamReader,
    writer: openai::ChunkWriter,
    events: Vec<canonical::Event>,
}

impl StreamTranslation {
    pub fn anthropic(created: u64) -> Self {
        Self {
            splitter: SseSplitter::default(),
            reader: anthropic::StreamReader::default(),
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
        let mut out = BytesMut::new();
        for e in self.events.drain(..) {
            self.writer.write(&e, &mut out);
        }
        out.freeze()
    }
}
