use super::*;
use crate::test_support::block_on;

fn pii() -> Pii {
    Pii::new(&PiiConfig::default()).unwrap()
}

/// Kinds found in `text`, in order.
fn kinds(p: &Pii, text: &str) -> Vec<String> {
    p.scanner()
        .scan(text.as_bytes())
        .unwrap()
        .iter()
        .map(|f| p.scanner().kinds()[f.kind].name.clone())
        .collect()
}

/// Positive and negative samples per kind, near misses included.
const CORPUS: &[(&str, &str, bool)] = &[
    ("ssn", "my ssn is 123-45-6789.", true),
    ("ssn", "SSN 078 05 1120 on file", true),
    ("ssn", "000-12-3456 is not issued", false),
    ("ssn", "666-12-3456 is never issued", false),
    ("ssn", "912-12-3456 is an ITIN range", false),
    ("ssn", "123-00-4567 has no group", false),
    ("ssn", "order 123-45-67890 shipped", false),
    ("card", "visa 4111 1111 1111 1111 exp 12/29", true),
    ("card", "mc 5555-5555-5555-4444", true),
    ("card", "amex 378282246310005", true),
    ("card", "4111 1111 1111 1112 fails Luhn", false),
    ("card", "tracking 1234567890123456", false),
    ("card", "phone 4155552671 only", false),
    ("secret", "key sk-proj-abcdefghijklmnopqrstuvwxyz0123", true),
    ("secret", "anthropic sk-ant-api03-abcdefghijklmnopqrstuv", true),
    ("secret", "aws AKIAIOSFODNN7EXAMPLE here", true),
    ("secret", "ghp_0123456789abcdefghijklmnopqrstuvwxyzAB", true),
    ("secret", "slack xoxb-1234567890-abcdefghij", true),
    ("secret", "-----BEGIN RSA PRIVATE KEY-----\nMIIE", true),
    (
        "secret",
        "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        true,
    ),
    ("secret", "the word sk-learn is a library", false),
    ("secret", "task-abcdefghijklmnopqrstuvwxyz is a job id", false),
    ("email", "write to jane.doe+work@example.co.uk today", true),
    ("email", "not an email: jane@localhost", false),
    ("phone", "call +14155552671 now", true),
    ("phone", "call (415) 555-2671 now", true),
    ("phone", "call 415-555-2671 now", true),
    ("phone", "call +44 20 7946 0958 now", true),
    ("phone", "version 1.2.3 released", false),
    ("iban", "pay DE89 3704 0044 0532 0130 00 please", true),
    ("iban", "GB82WEST12345698765432", true),
    ("iban", "DE89 3704 0044 0532 0130 01 has a bad check", false),
];

#[test]
fn the_corpus_is_classified_right() {
    let p = pii();
    let mut wrong = Vec::new();
    for (kind, text, positive) in CORPUS {
        let found = kinds(&p, text);
        if found.iter().any(|k| k == kind) != *positive {
            wrong.push(format!("{kind} {positive}: {text:?} -> {found:?}"));
        }
    }
    assert!(wrong.is_empty(), "misclassified:\n{}", wrong.join("\n"));
}

fn ctx(team: &str) -> RequestCtx {
    crate::test_support::ctx(team)
}

fn request(body: &str) -> Request {
    Request::parse(Endpoint::ChatCompletions, &mut body.as_bytes().to_vec()).unwrap()
}

#[test]
fn emails_are_redacted_consistently_and_ssns_block_without_echoing_the_value() {
    let p = pii();
    let mut r = request(
        r#"{"model":"m","messages":[{"role":"user","content":"mail a@x.com, then b@y.org, then a@x.com"},
            {"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"send","arguments":"{\"to\":\"b@y.org\"}"}}]}]}"#,
    );
    let mut c = ctx("t");
    block_on(p.on_request(&mut c, &mut r)).unwrap();
    assert_eq!(r.body["messages"][0]["content"], "mail [EMAIL_1], then [EMAIL_2], then [EMAIL_1]");
    assert_eq!(r.body["messages"][1]["tool_calls"][0]["function"]["arguments"], "{\"to\":\"[EMAIL_2]\"}");
    assert!(c.response_headers.contains(&("x-sluice-pii-redacted", "email".into())));

    let mut r = request(
        r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"ssn 123-45-6789"}]}]}"#,
    );
    let e = block_on(p.on_request(&mut ctx("t"), &mut r)).unwrap_err();
    assert_eq!((e.status(), e.code), (400, Some("pii_blocked")));
    assert!(e.message.contains("ssn") && !e.message.contains("6789"), "{}", e.message);
}

#[test]
fn team_actions_and_custom_patterns_apply() {
    let mut config = PiiConfig::default();
    config.teams.insert("research".into(), BTreeMap::from([("email".to_owned(), Action::Off)]));
    config.custom.insert(
        "employee_id".into(),
        CustomKind { pattern: r"\bEMP-\d{6}\b".into(), action: Action::Redact, token: None },
    );
    let p = Pii::new(&config).unwrap();
    let mut r = request(r#"{"model":"m","messages":[{"role":"user","content":"EMP-123456 is jo@x.io"}]}"#);
    block_on(p.on_request(&mut ctx("research"), &mut r)).unwrap();
    assert_eq!(r.body["messages"][0]["content"], "[EMPLOYEE_ID_1] is jo@x.io");
    assert!(
        Pii::new(&PiiConfig {
            actions: BTreeMap::from([("colour".to_owned(), Action::Off)]),
            ..Default::default()
        })
        .err()
        .unwrap()
        .contains("colour")
    );
}

#[test]
fn an_answer_tail_that_may_start_a_value_is_held_back_and_released_once_whole() {
    let p = Pii::new(&PiiConfig { responses: true, response_holdback: 10, ..PiiConfig::default() }).unwrap();
    let mut ctx = crate::test_support::ctx("t");
    // The email runs past the point 10 bytes from the end: nothing of it may go out yet.
    let mut text = "mail jane@example.com now".to_owned();
    let n = p.on_answer_text(&mut ctx, &mut text, false).unwrap();
    assert_eq!((n, text.as_str()), (5, "mail jane@example.com now"));
    // Later text shows where it ends: it goes out replaced, the new tail is held.
    let mut text = "jane@example.com now, or call me later".to_owned();
    let n = p.on_answer_text(&mut ctx, &mut text, false).unwrap();
    assert_eq!(&text[..n], "[EMAIL_1] now, or cal");
    // The end of the answer releases everything; a card is masked in an answer, not refused.
    let mut text = "card 4111 1111 1111 1111".to_owned();
    let n = p.on_answer_text(&mut ctx, &mut text, true).unwrap();
    assert_eq!((n, text.as_str()), (13, "card [CARD_1]"));
}

#[test]
fn one_scan_of_all_texts_finds_what_a_scan_of_each_finds() {
    let p = pii();
    let s = p.scanner();
    let clean = ["You are a helpful assistant.", "Where is my order 4411?", ""];
    assert!(!s.detect_all(clean.iter().copied()).unwrap());
    // Every corpus sample, behind clean texts: a candidate wherever the sample alone has one.
    for (_, text, _) in CORPUS {
        let alone = s.detect(text.as_bytes()).unwrap();
        let joined = s.detect_all(clean.iter().copied().chain([*text, "and then some"])).unwrap();
        assert!(joined || !alone, "{text:?}");
    }
}

#[test]
fn patterns_anchored_to_a_text_are_still_found_in_every_message() {
    let mut config = PiiConfig::default();
    config.custom.insert(
        "badge".into(),
        CustomKind { pattern: r"^B-\d{4}$".into(), action: Action::Redact, token: None },
    );
    let p = Pii::new(&config).unwrap();
    let mut r = request(
        r#"{"model":"m","messages":[{"role":"user","content":"hello"},{"role":"user","content":"B-1234"}]}"#,
    );
    block_on(p.on_request(&mut ctx("t"), &mut r)).unwrap();
    assert_eq!(r.body["messages"][1]["content"], "[BADGE_1]");
    assert_eq!(r.body["messages"][0]["content"], "hello");
}

#[test]
fn a_kinds_candidate_form_matches_wherever_its_patterns_do() {
    use hyperscan::prelude::*;
    let matches = |expr: &str, text: &str| -> bool {
        let db: BlockDatabase =
            Pattern::with_flags(expr, CompileFlags::SINGLEMATCH).unwrap().build().unwrap();
        let scratch = db.alloc_scratch().unwrap();
        let mut hit = false;
        let scanned = db.scan(text, &scratch, |_, _, _, _| {
            hit = true;
            Matching::Terminate
        });
        assert!(hit || scanned.is_ok(), "{expr}: {scanned:?}");
        hit
    };
    let texts = [
        "write to jane.doe+work@example.co.uk today",
        "a@b.cc",
        "x-y_z%1@mail-1.example.org.",
        "(mail: first.last@sub.domain.museum)",
        "two: a@x.io, b@y.io",
        "jane@localhost",
        "@example.com",
        "no address here",
    ];
    let with_candidates: Vec<_> =
        super::scanner::builtin().into_iter().filter(|b| b.candidate.is_some()).collect();
    assert!(with_candidates.iter().any(|b| b.name == "email"));
    for b in with_candidates {
        let candidate = b.candidate.unwrap();
        let mut found = 0;
        for text in texts {
            if b.patterns.iter().any(|p| matches(p, text)) {
                found += 1;
                assert!(matches(candidate, text), "{}: the candidate form misses {text:?}", b.name);
            }
        }
        assert!(found >= 4, "{}: the samples must exercise the patterns", b.name);
    }
    // The scanner finds an address through the candidate form, joined with other texts too.
    let p = pii();
    assert!(p.scanner().detect_all(["clean text", "mail jane.doe@example.com now"].into_iter()).unwrap());
    assert!(!p.scanner().detect_all(["clean text", "jane@localhost"].into_iter()).unwrap());
}
