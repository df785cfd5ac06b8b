//! The PII scanner: one Vectorscan database of every kind's pattern, compiled at start, and the
//! validators that cut false positives (SSN number rules, Luhn and card prefixes, IBAN mod 97).
//!
//! A text is first scanned in single-match mode (each pattern reports at most once, no start
//! offsets: the cheapest scan, and most texts are clean); only a text with a hit is scanned again
//! with a start-of-match database for the offsets, and each match is validated. The first pass
//! may use a kind's *candidate* form instead of its patterns: a pattern that every match of them
//! also matches, cheaper to run, compiled into a database of its own (see [`Builtin::candidate`]).
//! Scratch space is per thread (Vectorscan's scratch may not be shared).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use hyperscan::prelude::*;

/// A kind of personal data or secret, with its pattern and validator.
#[derive(Debug, Clone)]
pub struct Kind {
    /// `ssn`, `card`, `secret`, `email`, `phone`, `iban`, or a custom name.
    pub name: String,
    /// The redaction token's word, e.g. `EMAIL` for `[EMAIL_1]`.
    pub token: String,
    pub validate: Option<Validator>,
    /// The kind's candidate form for the first pass, if it has one ([`Builtin::candidate`]).
    pub candidate: Option<&'static str>,
}

/// One match: the kind (index into the scanner's kinds) and its byte range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub kind: usize,
    pub from: usize,
    pub to: usize,
}

pub struct Scanner {
    id: u64,
    kinds: Vec<Kind>,
    /// Pattern id → kind index.
    pattern_kind: Vec<usize>,
    /// The first pass: the patterns of the kinds without a candidate form, then (a database of
    /// their own) the candidate forms. Either may be absent when it would be empty.
    detect: Vec<BlockDatabase>,
    locate: BlockDatabase,
    /// No pattern anchors to the start or end of a text (`^`, `$`, `\A`, `\z`, `\Z`), so a scan of
    /// several texts joined by newlines finds a candidate wherever a scan of each alone would.
    joinable: bool,
}

thread_local! {
    /// Per thread, per scanner: one scratch grown to fit each of its databases (scans of one
    /// thread run one after the other, never nested).
    static SCRATCH: RefCell<HashMap<u64, Scratch>> = RefCell::new(HashMap::new());
    /// Per thread: the texts of one [`Scanner::detect_all`] call, joined.
    static JOINED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Joined texts up to this size reuse the thread's buffer; a larger one is let go after its scan.
const JOINED_KEPT: usize = 64 * 1024;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A validator of a candidate match's bytes.
pub type Validator = fn(&[u8]) -> bool;

/// A built-in kind.
#[derive(Debug, Clone)]
pub struct Builtin {
    pub name: &'static str,
    /// The redaction token's word.
    pub token: &'static str,
    pub patterns: Vec<&'static str>,
    pub validate: Option<Validator>,
    /// A pattern for the first pass that every match of `patterns` also matches (a superset:
    /// a candidate only means "look closer"), scanned in a database apart from the others'.
    /// For a kind whose patterns cost Vectorscan far more than their candidate form, alone and
    /// above all beside the other kinds' (`email`: measured in docs/benchmarks.md).
    pub candidate: Option<&'static str>,
}

/// The built-in kinds.
pub fn builtin() -> Vec<Builtin> {
    let kind = |name, token, patterns, validate| Builtin { name, token, patterns, validate, candidate: None };
    vec![
        kind("ssn", "SSN", vec![r"\b\d{3}[- ]\d{2}[- ]\d{4}\b"], Some(valid_ssn as Validator)),
        kind("card", "CARD", vec![r"\b\d(?:[ -]?\d){12,18}\b"], Some(valid_card)),
        kind(
            "secret",
            "SECRET",
            vec![
                r"sk-ant-[A-Za-z0-9_\-]{20,}",
                r"\bsk-[A-Za-z0-9_\-]{20,}",
                r"\bAKIA[0-9A-Z]{16}\b",
                r"\bgh[pousr]_[A-Za-z0-9]{36,}",
                r"\bxox[baprs]-[A-Za-z0-9\-]{10,}",
                r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED )?PRIVATE KEY-----",
                r"\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}",
            ],
            None,
        ),
        Builtin { candidate: Some(EMAIL_CANDIDATE), ..kind("email", "EMAIL", vec![EMAIL], None) },
        kind(
            "phone",
            "PHONE",
            vec![
                r"\+[1-9]\d{7,14}\b",
                r"\+[1-9]\d{0,2}[ .\-]\d{1,4}(?:[ .\-]\d{2,4}){2,4}\b",
                r"(?:\(\d{3}\)\s?|\b\d{3}[.\-])\d{3}[.\-]\d{4}\b",
            ],
            None,
        ),
        kind(
            "iban",
            "IBAN",
            vec![r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b"],
            Some(valid_iban),
        ),
    ]
}

const EMAIL: &str = r"\b[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}\b";
/// [`EMAIL`] from the last character before the `@` on: whatever `EMAIL` matches ends with a match
/// of this. Without the unbounded run before the `@`, Vectorscan need not follow every word of a
/// text as the start of an address.
const EMAIL_CANDIDATE: &str = r"[A-Za-z0-9._%+\-]@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}\b";

impl Scanner {
    /// Compiles the database of `kinds` (each with its patterns). Errors name the bad pattern.
    pub fn new(kinds: Vec<(Kind, Vec<String>)>) -> Result<Self, String> {
        let mut detect = Vec::new();
        let mut candidates = Vec::new();
        let mut locate = Vec::new();
        let mut pattern_kind = Vec::new();
        let mut out_kinds = Vec::new();
        let mut joinable = true;
        let first_pass = |expr: &str, id: usize, k: &Kind| {
            let mut d = Pattern::with_flags(expr, CompileFlags::SINGLEMATCH)
                .map_err(|e| format!("{}: `{expr}`: {e}", k.name))?;
            d.id = Some(id);
            Ok::<_, String>(d)
        };
        for (k, patterns) in kinds {
            for expr in patterns {
                joinable &= !anchored(&expr);
                let id = pattern_kind.len();
                if k.candidate.is_none() {
                    detect.push(first_pass(&expr, id, &k)?);
                }
                let mut l = Pattern::with_flags(expr.clone(), CompileFlags::SOM_LEFTMOST)
                    .map_err(|e| format!("{}: `{expr}`: {e}", k.name))?;
                l.id = Some(id);
                locate.push(l);
                pattern_kind.push(out_kinds.len());
            }
            if let Some(candidate) = k.candidate {
                joinable &= !anchored(candidate);
                // Its id is the kind's last pattern's (the first pass reads no ids anyway).
                candidates.push(first_pass(candidate, pattern_kind.len().saturating_sub(1), &k)?);
            }
            out_kinds.push(k);
        }
        let compile = |patterns: Vec<Pattern>| -> Result<BlockDatabase, String> {
            Patterns::from(patterns).build().map_err(|e| format!("cannot compile the PII patterns: {e}"))
        };
        let detect = [detect, candidates]
            .into_iter()
            .filter(|p| !p.is_empty())
            .map(compile)
            .collect::<Result<Vec<_>, _>>()?;
        let locate = compile(locate)?;
        Ok(Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            kinds: out_kinds,
            pattern_kind,
            detect,
            locate,
            joinable,
        })
    }

    /// Whether any pattern matches somewhere in any of `texts`, before validation: [`detect`]
    /// over many texts, in one scan when the patterns allow it (each scan has a cost of its own,
    /// and a request's messages are several short texts). A joined scan may also report a
    /// candidate spanning two texts; callers treat a candidate as "look closer", never as a find.
    ///
    /// [`detect`]: Scanner::detect
    pub fn detect_all<'t>(&self, texts: impl Iterator<Item = &'t str>) -> Result<bool, String> {
        if !self.joinable {
            for text in texts {
                if self.detect(text.as_bytes())? {
                    return Ok(true);
                }
            }
            return Ok(false);
        }
        if injected("pii_scan") {
            return Err("injected fault (SLUICE_FAULTS=pii_scan)".into());
        }
        JOINED.with(|cell| {
            let mut own = Vec::new();
            let mut kept = cell.try_borrow_mut();
            let joined = match kept.as_deref_mut() {
                Ok(buffer) => buffer,
                Err(_) => &mut own,
            };
            joined.clear();
            for text in texts {
                joined.extend_from_slice(text.as_bytes());
                joined.push(b'\n');
            }
            let hit = self.with_scratch(|scratch| self.detect_in(joined, scratch));
            if joined.capacity() > JOINED_KEPT {
                *joined = Vec::new();
            }
            hit
        })
    }

    pub fn kinds(&self) -> &[Kind] {
        &self.kinds
    }

    /// Whether any pattern matches somewhere in `text`, before validation (a candidate may still
    /// fail its validator): the cheap first scan. `Err`: the scanner failed.
    pub fn detect(&self, text: &[u8]) -> Result<bool, String> {
        if injected("pii_scan") {
            return Err("injected fault (SLUICE_FAULTS=pii_scan)".into());
        }
        self.with_scratch(|scratch| self.detect_in(text, scratch))
    }

    fn detect_in(&self, text: &[u8], scratch: &Scratch) -> Result<bool, String> {
        for db in &self.detect {
            let mut hit = false;
            db.scan(text, scratch, |_, _, _, _| {
                hit = true;
                Matching::Terminate
            })
            .or_else(|e| if hit { Ok(()) } else { Err(e) })
            .map_err(|e| format!("scan: {e}"))?;
            if hit {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Runs `f` with this thread's scratch for this scanner's databases.
    fn with_scratch<T>(&self, f: impl FnOnce(&Scratch) -> Result<T, String>) -> Result<T, String> {
        SCRATCH.with(|cell| {
            let mut map = cell.borrow_mut();
            let scratch = match map.entry(self.id) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    let mut scratch = self.locate.alloc_scratch().map_err(|e| format!("scratch: {e}"))?;
                    for db in &self.detect {
                        db.realloc_scratch(&mut scratch).map_err(|e| format!("scratch: {e}"))?;
                    }
                    e.insert(scratch)
                }
            };
            f(scratch)
        })
    }

    /// Every validated match in `text`, non-overlapping (leftmost, then longest). `Err`: the
    /// scanner failed, and the caller must not let the text through.
    pub fn scan(&self, text: &[u8]) -> Result<Vec<Found>, String> {
        if injected("pii_scan") {
            return Err("injected fault (SLUICE_FAULTS=pii_scan)".into());
        }
        self.with_scratch(|scratch| {
            if !self.detect_in(text, scratch)? {
                return Ok(Vec::new());
            }
            let mut found = Vec::new();
            self.locate
                .scan(text, scratch, |id, from, to, _| {
                    if let Some(kind) = self.pattern_kind.get(id as usize) {
                        found.push(Found { kind: *kind, from: from as usize, to: to as usize });
                    }
                    Matching::Continue
                })
                .map_err(|e| format!("scan: {e}"))?;
            // SOM_LEFTMOST reports every end for a start: keep the longest per start, then drop
            // overlaps, then validate.
            found.sort_by(|a, b| a.from.cmp(&b.from).then(b.to.cmp(&a.to)));
            let mut kept: Vec<Found> = Vec::new();
            for f in found {
                let Some(slice) = text.get(f.from..f.to) else { continue };
                let valid = self.kinds[f.kind].validate.is_none_or(|v| v(slice));
                if !valid || kept.last().is_some_and(|k| f.from < k.to) {
                    continue;
                }
                kept.push(f);
            }
            Ok(kept)
        })
    }
}

/// Whether a pattern may anchor to the start or end of the scanned text: `^`, `$` (also inside
/// a class, to stay on the safe side), `\A`, `\z`, `\Z`.
fn anchored(expr: &str) -> bool {
    expr.contains(['^', '$']) || ["\\A", "\\z", "\\Z"].iter().any(|a| expr.contains(a))
}

/// Debug builds only: `SLUICE_FAULTS=pii_scan` makes every scan fail (`pii_answer_scan`: scans of
/// answers only), so the fail-closed paths can be proven through the real port (Vectorscan gives
/// no input that makes it fail). Release builds have no such switch.
#[cfg(debug_assertions)]
pub fn injected(fault: &str) -> bool {
    static FAULTS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    FAULTS
        .get_or_init(|| {
            std::env::var("SLUICE_FAULTS").map_or(Vec::new(), |v| v.split(',').map(str::to_owned).collect())
        })
        .iter()
        .any(|f| f == fault)
}

#[cfg(not(debug_assertions))]
pub fn injected(_fault: &str) -> bool {
    false
}

fn digits(s: &[u8]) -> Vec<u8> {
    s.iter().filter(|b| b.is_ascii_digit()).map(|b| b - b'0').collect()
}

/// SSN rules: area 001–899 but not 666, group 01–99, serial 0001–9999.
pub fn valid_ssn(s: &[u8]) -> bool {
    let d = digits(s);
    if d.len() != 9 {
        return false;
    }
    let n = |r: std::ops::Range<usize>| d[r].iter().fold(0u32, |a, x| a * 10 + u32::from(*x));
    let (area, group, serial) = (n(0..3), n(3..5), n(5..9));
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
}

/// Payment cards: 13–19 digits, a known issuer prefix, and the Luhn checksum.
pub fn valid_card(s: &[u8]) -> bool {
    let d = digits(s);
    if !(13..=19).contains(&d.len()) {
        return false;
    }
    let prefix = |n: usize| d[..n].iter().fold(0u32, |a, x| a * 10 + u32::from(*x));
    let issuer = d[0] == 4
        || (51..=55).contains(&prefix(2))
        || (2221..=2720).contains(&prefix(4))
        || matches!(prefix(2), 34 | 37 | 35 | 36 | 38 | 30 | 62 | 65)
        || prefix(4) == 6011
        || (644..=649).contains(&prefix(3));
    if !issuer {
        return false;
    }
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, x)| {
            let x = u32::from(*x);
            if i % 2 == 1 {
                let y = x * 2;
                if y > 9 { y - 9 } else { y }
            } else {
                x
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// IBAN: 15–34 characters, and the ISO 13616 mod-97 check equals 1.
pub fn valid_iban(s: &[u8]) -> bool {
    let chars: Vec<u8> = s.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
    if !(15..=34).contains(&chars.len()) {
        return false;
    }
    let rotated = chars[4..].iter().chain(&chars[..4]);
    let mut rem: u32 = 0;
    for c in rotated {
        let v = match c {
            b'0'..=b'9' => u32::from(c - b'0'),
            b'A'..=b'Z' => u32::from(c - b'A') + 10,
            _ => return false,
        };
        rem = if v >= 10 { (rem * 100 + v) % 97 } else { (rem * 10 + v) % 97 };
    }
    rem == 1
}
