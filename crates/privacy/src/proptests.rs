//! Property tests of the privacy guarantees: the lexer and obfuscator never panic and lose no text,
//! no literal body of any style reaches the output (whole or cut at any point), and fingerprints
//! depend on the query shape only.

use proptest::prelude::*;

use super::lexer::tokens;
use super::{fingerprint, obfuscate, obfuscate_with, ObfuscateOptions, StringMode};

/// A marker every generated secret carries, so the assertion cannot be satisfied by accident and a
/// coincidental match with the query template is impossible.
const MARK: &str = "Zq9Scrt";

/// Query templates with one or more `{}` slots, sqlcommenter comments and parameters.
const TEMPLATES: &[&str] = &[
    "SELECT * FROM users WHERE email = {} AND id = $1",
    "/*controller='users',action='show',traceparent='00-4bf92f-00f067-01'*/ SELECT u.id FROM users u WHERE u.token = {} LIMIT 1",
    "INSERT INTO audit (who, what, at) VALUES ({}, {}, now()) RETURNING id -- app:web",
    "UPDATE accounts SET note = {} WHERE id IN ({}, {})",
    "SELECT {}::text || \"Quoted Col\" FROM t /* a /* nested */ comment */ WHERE x > {}",
];

/// The body of a secret in any character mix, quotes, backslashes and dollars included.
fn body() -> impl Strategy<Value = String> {
    (
        "[a-zA-Z0-9 '\"\\\\$;:/*\\-\n\u{e9}\u{65e5}]{0,12}",
        "[a-zA-Z0-9 '\"\\\\$;:/*\\-\n\u{e9}\u{65e5}]{0,12}",
    )
        .prop_map(|(a, b)| format!("{a}{MARK}{b}"))
}

/// A literal of one style holding `body`, escaped as that style requires, plus the text a leak
/// would show (the body, or the digits of a number / bits of a bit string).
fn literal(style: u8, body: &str, digits: &str) -> (String, String) {
    match style % 8 {
        0 => (format!("'{}'", body.replace('\'', "''")), body.to_string()),
        1 => (
            format!("E'{}'", body.replace('\\', "\\\\").replace('\'', "\\'")),
            body.to_string(),
        ),
        2 => (
            format!("U&'{}'", body.replace('\\', "\\\\").replace('\'', "''")),
            body.to_string(),
        ),
        3 => {
            let body = body.replace("$tg$", "");
            (format!("$tg${body}$tg$"), body)
        }
        4 => (
            format!("$${}$$", body.replace('$', "")),
            body.replace('$', ""),
        ),
        5 => {
            let bits: String = digits
                .chars()
                .map(|c| if c < '5' { '0' } else { '1' })
                .collect();
            (format!("B'{bits}'"), bits)
        }
        6 => (format!("X'{digits}ABCDEF'"), format!("{digits}ABCDEF")),
        _ => (format!("{digits}.5e7"), digits.to_string()),
    }
}

fn fill(template: &str, literals: &[String]) -> String {
    let mut out = String::new();
    let mut parts = template.split("{}");
    out.push_str(parts.next().unwrap_or(""));
    for (i, part) in parts.enumerate() {
        out.push_str(&literals[i % literals.len()]);
        out.push_str(part);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn never_panics_and_lexing_is_lossless(
        s in prop_oneof![any::<String>(), "[a-zEUBXNP'\"$\\\\/*\\-&_0-9 \n():=,;.\u{e9}]{0,80}"]
    ) {
        let joined: String = tokens(&s).map(|t| t.text(&s)).collect();
        prop_assert_eq!(&joined, &s);
        // The masking pass's literal-only walk meets exactly the iterator's literals.
        let literals: Vec<_> = tokens(&s).filter(|t| t.is_literal()).collect();
        let mut lexer = tokens(&s);
        let walked: Vec<_> = std::iter::from_fn(|| lexer.next_literal()).collect();
        prop_assert_eq!(walked, literals);
        let _ = obfuscate(&s);
        let _ = obfuscate_with(&s, ObfuscateOptions { strings: StringMode::Escape, numbers: false });
        let _ = fingerprint(&s);
        let _ = super::redact::credential_spans(&s);
        let all = super::Privacy { redact: super::RedactClasses::ALL, ..super::Privacy::default() };
        for prefix in ["", "duration: 1 ms  statement: ", "execute x: ", "duration: 1 ms  plan:\nQuery Text: ", "parameters: ", "Key (a)=(", "SQL statement \"", "COPY t, line 1: \""] {
            let text = format!("{prefix}{s}");
            let mut f: [Option<String>; 6] = std::array::from_fn(|_| Some(text.clone()));
            let [m, d, h, c, st, q] = &mut f;
            all.apply_to_log(super::LogFields { sqlstate: Some("42601"), message: m, detail: d, hint: h, context: c, statement: st, query: q });
            let _ = super::obfuscate_message(&text);
            let _ = super::obfuscate_parameters(&text);
        }
    }

    #[test]
    fn no_literal_body_of_any_style_reaches_the_output(
        t in 0..TEMPLATES.len(),
        styles in proptest::collection::vec(any::<u8>(), 3),
        bodies in proptest::collection::vec(body(), 3),
        digits in "[0-9]{12}",
        cut in any::<prop::sample::Index>(),
    ) {
        let lits: Vec<(String, String)> = styles
            .iter()
            .zip(&bodies)
            .map(|(s, b)| literal(*s, b, &digits))
            .collect();
        let sql = fill(TEMPLATES[t], &lits.iter().map(|l| l.0.clone()).collect::<Vec<_>>());
        let out = obfuscate(&sql);
        for (_, leak) in &lits {
            prop_assert!(!out.contains(leak.as_str()), "leaked {leak:?}: {sql:?} -> {out:?}");
        }
        prop_assert!(!out.contains(MARK), "{sql:?} -> {out:?}");
        // Cut anywhere, as track_activity_query_size does: no piece of the marker shows.
        let mut at = cut.index(sql.len() + 1);
        while !sql.is_char_boundary(at) {
            at -= 1;
        }
        let cut_out = obfuscate(&sql[..at]);
        for w in 0..MARK.len() - 3 {
            prop_assert!(!cut_out.contains(&MARK[w..w + 4]), "{:?} -> {cut_out:?}", &sql[..at]);
        }
        // The comments and identifiers of the template survive.
        if let Some(comment) = TEMPLATES[t].split("*/").next().filter(|c| c.starts_with("/*")) {
            prop_assert!(out.starts_with(comment));
        }
    }

    #[test]
    fn no_literal_body_leaks_whatever_the_sessions_string_setting(
        t in 0..TEMPLATES.len(),
        off in any::<bool>(),
        styles in proptest::collection::vec(any::<u8>(), 3),
        bodies in proptest::collection::vec(body(), 3),
        digits in "[0-9]{12}",
    ) {
        // A statement from a session with standard_conforming_strings on or off (plain strings
        // with backslash escapes), among every other style: the agent cannot know which.
        let lits: Vec<(String, String)> = styles
            .iter()
            .zip(&bodies)
            .map(|(s, b)| match s % 8 {
                0 if off => (
                    format!("'{}'", b.replace('\\', "\\\\").replace('\'', "\\'")),
                    b.to_string(),
                ),
                _ => literal(*s, b, &digits),
            })
            .collect();
        let sql = fill(TEMPLATES[t], &lits.iter().map(|l| l.0.clone()).collect::<Vec<_>>());
        let either = ObfuscateOptions { strings: StringMode::Either, numbers: true };
        let out = obfuscate_with(&sql, either);
        for (_, leak) in &lits {
            prop_assert!(!out.contains(leak.as_str()), "leaked {leak:?}: {sql:?} -> {out:?}");
        }
        prop_assert!(!out.contains(MARK), "{sql:?} -> {out:?}");
    }

    #[test]
    fn fingerprints_ignore_literal_values(
        t in 0..TEMPLATES.len(),
        a in proptest::collection::vec(body(), 3),
        b in proptest::collection::vec(body(), 3),
        style in any::<u8>(),
        digits in "[0-9]{12}",
    ) {
        let make = |bodies: &[String]| {
            let lits: Vec<String> = bodies.iter().map(|x| literal(style, x, &digits).0).collect();
            fill(TEMPLATES[t], &lits)
        };
        prop_assert_eq!(fingerprint(&make(&a)), fingerprint(&make(&b)));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The one-pass path of the log pipeline equals the two passes it replaces: the same
    /// fingerprint and the same masked text, and `apply_to_log_fingerprinting` leaves every field as
    /// `apply_to_log` does, whatever the policy.
    #[test]
    fn one_pass_equals_fingerprint_then_obfuscate(
        s in prop_oneof![any::<String>(), "[a-zEUBXNP'\"$\\\\/*\\-&_0-9 \n():=,;.\u{e9}]{0,80}"],
        mode in 0..3u8,
        policy in 0..3u8,
    ) {
        let strings = [StringMode::Standard, StringMode::Escape, StringMode::Either][mode as usize];
        let opts = ObfuscateOptions { strings, numbers: true };
        let (fp, masked) = super::fingerprint_and_obfuscate(&s, opts, &mut super::PrivacyCounts::default());
        prop_assert_eq!(format!("{fp:016x}"), fingerprint(&s));
        prop_assert_eq!(masked, obfuscate_with(&s, opts));
        let privacy = match policy {
            0 => super::Privacy { strings, ..super::Privacy::default() },
            1 => super::Privacy { redact: super::RedactClasses::ALL, strings, ..super::Privacy::default() },
            _ => super::Privacy { obfuscate_queries: false, strings, ..super::Privacy::default() },
        };
        for (prefix, source) in [
            ("duration: 1 ms  statement: ", super::SqlSource::Message),
            ("execute x: ", super::SqlSource::Message),
            ("", super::SqlSource::Statement),
        ] {
            let text = format!("{prefix}{s}");
            let mut one: [Option<String>; 6] = std::array::from_fn(|_| Some(text.clone()));
            let mut two = one.clone();
            let [m, d, h, c, st, q] = &mut one;
            let (_, got) = privacy.apply_to_log_fingerprinting(super::LogFields { sqlstate: None, message: m, detail: d, hint: h, context: c, statement: st, query: q }, source);
            let [m, d, h, c, st, q] = &mut two;
            privacy.apply_to_log(super::LogFields { sqlstate: None, message: m, detail: d, hint: h, context: c, statement: st, query: q });
            prop_assert_eq!(&one, &two);
            prop_assert_eq!(got.map(|f| format!("{f:016x}")), Some(fingerprint(&s)));
        }
    }
}

#[test]
fn different_templates_have_different_fingerprints() {
    let lit = vec!["'v'".to_string()];
    let prints: Vec<String> = TEMPLATES
        .iter()
        .map(|t| fingerprint(&fill(t, &lit)))
        .collect();
    for i in 0..prints.len() {
        for j in i + 1..prints.len() {
            assert_ne!(prints[i], prints[j], "templates {i} and {j}");
        }
    }
}

/// Cut a query holding every literal style at every character boundary, as
/// `track_activity_query_size` would: no 4-character piece of any literal body may appear.
#[test]
fn truncation_at_every_cut_point_never_leaks() {
    let bodies = [
        "Kx7!Wz@9#Lp",
        "Qv2%Rt^8&Mn",
        "Hy5*Uj(3)Bg",
        "Fd4<Se>6+Ck",
        "Ja1~Ol`0|Pi",
        "10110011100",
        "D3ADBEEF42",
        "918273645",
    ];
    let sql = format!(
        "/*traceparent='00-abc-01'*/ SELECT a, 'it''s {}' AS x, E'\\'{}\\\\' y,\n\
         U&'{}' z, $tag${}$tag$, $${}$$ FROM t\n\
         WHERE b = B'{}' AND c = X'{}' AND n = {} -- end",
        bodies[0], bodies[1], bodies[2], bodies[3], bodies[4], bodies[5], bodies[6], bodies[7]
    );
    let windows: Vec<&str> = bodies
        .iter()
        .flat_map(|b| (0..=b.len() - 4).map(move |i| &b[i..i + 4]))
        .collect();
    let full = obfuscate(&sql);
    assert!(
        full.starts_with("/*traceparent='00-abc-01'*/ SELECT a, ? AS x"),
        "{full}"
    );
    for cut in (0..=sql.len()).filter(|i| sql.is_char_boundary(*i)) {
        let out = obfuscate(&sql[..cut]);
        for w in &windows {
            assert!(!out.contains(w), "cut at {cut}: {w:?} leaked in {out:?}");
        }
    }
}
