//! Identifier detectors for free text: one multi-pattern regex, compiled once at configure
//! time, run over FREE_TEXT values the caller may otherwise read.
//!
//! Patterns are byte-oriented and ASCII (`\d` is `[0-9]`, `\b` an ASCII word boundary): the
//! identifiers we look for are ASCII, and leaving out the Unicode tables keeps the wasm module
//! small. When two patterns match at the same position the earlier one in [`Detectors::new`]'s
//! list wins; the leftmost match always wins over a later one.

mod prefilter;

use std::ops::Range;
use std::sync::Mutex;

use regex_automata::hybrid::regex::{Cache, Regex};
use regex_automata::nfa::thompson;
use regex_automata::util::syntax;
use regex_automata::Input;

use crate::plan::Class;

/// US social security number.
pub const SSN_PATTERN: &str = r"\b[0-9]{3}-[0-9]{2}-[0-9]{4}\b";
/// Phone and fax numbers, national and international:
/// - with a `+` country code, E.164 and grouped (`+14155552671`, `+44 20 7946 0958`,
///   `+49 (0)30 1234567`, `+33 1 23 45 67 89`);
/// - national numbers of three or more digit groups joined by single `-`, `.` or space, the
///   first group 2–3 or 5 digits, parenthesised, or 4 digits followed by at least 3
///   (`555-013-4477`, `(555) 019-8822`, `555-0199-212`, `020 7946 0958`, `0207 946 0958`),
///   optionally after `1` and a separator;
/// - US local numbers `555-0199`.
///
/// Bare digit runs without `+` are not matched (they collide with record numbers and codes),
/// nor ISO dates (`2026-01-05`: 4 digits then 2). Dotted dates (`05.01.2026`) and dotted IPv4
/// addresses do match: in free text a false positive masks a little more, never less.
pub const PHONE_PATTERN: &str = concat!(
    r"(?:\+[1-9][0-9]{0,2}[-. ]?(?:\([0-9]{1,4}\)[-. ]?)?[0-9]{1,5}(?:[-. ]?[0-9]{2,5}){2,5}",
    r"|(?:\b1[-. ])?(?:\([0-9]{2,5}\)[-. ]?[0-9]{2,4}|\b[0-9]{2,3}[-. ][0-9]{2,4}",
    r"|\b[0-9]{5}[-. ][0-9]{2,6}|\b[0-9]{4}[-. ][0-9]{3,4})(?:[-. ][0-9]{2,4}){1,3}",
    r"|\b[0-9]{3}[-. ][0-9]{4})\b"
);
/// E-mail addresses (pragmatic, not RFC 5322).
pub const EMAIL_PATTERN: &str =
    r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b";
/// Default medical record number pattern: `MRN` then optional separators and one or more
/// dash-separated alphanumeric groups (`MRN 1234567`, `MRN-7Q4K-AB12`, `mrn: 42`).
pub const DEFAULT_MRN_PATTERN: &str = r"(?i)\bMRN[-:# ]*[A-Z0-9]+(?:-[A-Z0-9]+)*\b";

/// A compiled set of detectors, each tagged with the class its matches belong to.
///
/// A lazy DFA (built on demand, states cached): the meta regex engine would add a PikeVM and
/// literal optimisations for little gain here, and doubled the wasm module's size. In front
/// of it, a prefilter (`freetext::prefilter`) finds the windows of the text where some
/// pattern can match, from what the patterns require; the DFA searches only those. The cache sits behind
/// a `Mutex`, which is uncontended in a (single-threaded) proxy-wasm VM and lets native tests
/// and benches share one config across threads.
#[derive(Debug)]
pub struct Detectors {
    regex: Regex,
    prefilter: Option<prefilter::Prefilter>,
    scratch: Mutex<Scratch>,
    classes: Vec<Class>,
}

/// Per-search state kept between searches: the DFA's cache and the prefilter's buffers.
#[derive(Debug)]
struct Scratch {
    cache: Cache,
    windows: Vec<Range<usize>>,
    covered: Vec<usize>,
}

/// What is wrong with a pattern, in the parser's own words ("unclosed group"), on one line:
/// the kind alone, not regex-syntax's full message (the pattern reprinted with a caret), whose
/// formatter would also add to the wasm module.
fn syntax_reason(e: &regex_syntax::Error) -> String {
    match e {
        regex_syntax::Error::Parse(e) => e.kind().to_string(),
        regex_syntax::Error::Translate(e) => e.kind().to_string(),
        other => other.to_string(),
    }
}

/// The lazy DFA could not finish a search (it has no quit bytes and never gives up as
/// configured, so this is not expected; callers fail closed on it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanFailed;

/// One detected identifier: byte range in the text and its class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub start: usize,
    pub end: usize,
    pub class: Class,
}

impl Detectors {
    /// Compiles `(class, pattern)` pairs; `Err((index, reason))` names the failing pattern and
    /// says what is wrong with it (a phrase to follow "pattern"). A pattern that can match the
    /// empty string is refused: it finds nothing to mask, and as the leftmost match at a
    /// position it would hide a later detector's match there (an SSN after
    /// `(?:NPI[0-9]{10})?` went unmasked).
    pub fn new(patterns: &[(Class, String)]) -> Result<Self, (usize, String)> {
        let syntax = syntax::Config::new().unicode(false).utf8(false);
        // Compile one by one first so an error names its pattern; the syntax trees are kept
        // for the prefilter (the same trees the DFA is built from).
        let mut hirs = Vec::with_capacity(patterns.len());
        for (i, (_, p)) in patterns.iter().enumerate() {
            // Parsed first: the parser's error says what is wrong ("unclosed group"), the
            // builder's only "error building NFA" (left for what parses but does not build,
            // such as a pattern over the size limit).
            let hir = syntax::parse_with(p, &syntax)
                .map_err(|e| (i, format!("does not compile: {}", syntax_reason(&e))))?;
            Regex::builder()
                .syntax(syntax)
                .thompson(thompson::Config::new().utf8(false))
                .build(p)
                .map_err(|e| (i, format!("does not compile: {e}")))?;
            if hir.properties().minimum_len() == Some(0) {
                return Err((
                    i,
                    "can match the empty string (it would hide the detectors after it); \
                     require at least one character"
                        .into(),
                ));
            }
            hirs.push(hir);
        }
        let regex = Regex::builder()
            .syntax(syntax)
            .thompson(thompson::Config::new().utf8(false))
            .build_many(&patterns.iter().map(|(_, p)| p.as_str()).collect::<Vec<_>>())
            .map_err(|e| (0, format!("does not compile: {e}")))?;
        let prefilter = prefilter::Prefilter::new(&hirs);
        let scratch = Mutex::new(Scratch {
            cache: regex.create_cache(),
            windows: Vec::new(),
            covered: Vec::new(),
        });
        Ok(Self {
            regex,
            prefilter,
            scratch,
            classes: patterns.iter().map(|(c, _)| *c).collect(),
        })
    }

    /// Calls `f` for each non-overlapping, non-empty match, left to right.
    pub fn each(&self, text: &[u8], f: impl FnMut(Found)) -> Result<(), ScanFailed> {
        // Each search has a fixed cost (its start state, the reverse search for a match's
        // start). A short text, or one needing more than a window per 256 bytes, is searched
        // faster in one pass over every byte (measured on the demo's FHIR notes, ~100 bytes
        // with three identifiers each); the matches are the same either way.
        const PER_WINDOW: usize = 256;
        let max_windows = if text.len() < PER_WINDOW {
            0
        } else {
            text.len() / PER_WINDOW
        };
        self.scan(text, max_windows, f)
    }

    /// [`Detectors::each`], searching only the prefilter's windows unless there are more
    /// than `max_windows` of them.
    fn scan(
        &self,
        text: &[u8],
        max_windows: usize,
        mut f: impl FnMut(Found),
    ) -> Result<(), ScanFailed> {
        let mut guard = match self.scratch.lock() {
            Ok(guard) => guard,
            // A panic elsewhere mid-search: start over with a fresh cache.
            Err(poisoned) => {
                let mut guard = poisoned.into_inner();
                guard.cache = self.regex.create_cache();
                guard
            }
        };
        let scratch = &mut *guard;
        if let Some(pf) = self.prefilter.as_ref().filter(|_| max_windows > 0) {
            if pf.windows(
                text,
                max_windows,
                &mut scratch.windows,
                &mut scratch.covered,
            ) {
                for w in &scratch.windows {
                    self.search(&mut scratch.cache, text, w.clone(), &mut f)?;
                }
                return Ok(());
            }
        }
        self.search(&mut scratch.cache, text, 0..text.len(), &mut f)
    }

    /// The matches inside `span` of `text`; look-arounds see the whole text.
    fn search(
        &self,
        cache: &mut Cache,
        text: &[u8],
        span: Range<usize>,
        f: &mut impl FnMut(Found),
    ) -> Result<(), ScanFailed> {
        let end = span.end;
        let mut input = Input::new(text).range(span);
        // From `end` on, only an empty match is left, and those are skipped.
        while input.start() < end {
            let Some(m) = self
                .regex
                .try_search(cache, &input)
                .map_err(|_| ScanFailed)?
            else {
                break;
            };
            if m.is_empty() {
                // `new` refuses patterns that can match the empty string; were one to get
                // here anyway, it would insert text between characters and, without this
                // step, search again from the same place forever.
                input.set_start(m.end() + 1);
                continue;
            }
            if let Some(&class) = self.classes.get(m.pattern().as_usize()) {
                f(Found {
                    start: m.start(),
                    end: m.end(),
                    class,
                });
            }
            input.set_start(m.end());
        }
        Ok(())
    }

    /// The two searches [`Detectors::each`] chooses between, for differential tests and the
    /// `freetext_prefilter` fuzz target: through the prefilter's windows however many there
    /// are (`windowed`; every byte when the set has no prefilter), or every byte, the
    /// reference the prefilter is checked against.
    #[cfg(any(test, fuzzing))]
    #[doc(hidden)]
    pub fn each_by(
        &self,
        windowed: bool,
        text: &[u8],
        f: impl FnMut(Found),
    ) -> Result<(), ScanFailed> {
        // No window allowed: every byte.
        self.scan(text, if windowed { usize::MAX } else { 0 }, f)
    }

    /// Whether the set has a prefilter (for the fuzz target's statistics and tests).
    #[cfg(any(test, fuzzing))]
    #[doc(hidden)]
    pub fn has_prefilter(&self) -> bool {
        self.prefilter.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo() -> Detectors {
        Detectors::new(&[
            (7, EMAIL_PATTERN.into()),
            (1, SSN_PATTERN.into()),
            (6, PHONE_PATTERN.into()),
            (2, DEFAULT_MRN_PATTERN.into()),
        ])
        .unwrap()
    }

    fn found(d: &Detectors, text: &str) -> Vec<(String, Class)> {
        let mut v = Vec::new();
        d.each(text.as_bytes(), |f| {
            v.push((text[f.start..f.end].to_string(), f.class))
        })
        .unwrap();
        v
    }

    #[test]
    fn finds_each_kind() {
        let d = demo();
        let text = "Pt called from 555-013-4477 re SSN 900-55-1234; MRN MRN-7Q4K-CANARY. \
                    Mail zeb.c@example.test or (555) 019-8822, +1 555.123.4567.";
        assert_eq!(
            found(&d, text),
            vec![
                ("555-013-4477".into(), 6),
                ("900-55-1234".into(), 1),
                ("MRN MRN-7Q4K-CANARY".into(), 2),
                ("zeb.c@example.test".into(), 7),
                ("(555) 019-8822".into(), 6),
                ("+1 555.123.4567".into(), 6),
            ]
        );
    }

    #[test]
    fn finds_international_and_odd_grouped_phone_numbers() {
        let d = demo();
        // The issue's failing input: a 3-4-3 number beside an SSN in a comment.
        assert_eq!(
            found(&d, "call 555-0199-212 re SSN 900-55-1234"),
            vec![("555-0199-212".into(), 6), ("900-55-1234".into(), 1)]
        );
        for phone in [
            "+14155552671",
            "+44 20 7946 0958",
            "+49 (0)30 1234567",
            "+33 1 23 45 67 89",
            "+1 555.123.4567",
            "020 7946 0958",
            "0207 946 0958",
            "07700 900 123",
            "555-0199",
            "1-800-555-0199",
        ] {
            assert_eq!(
                found(&d, &format!("tel {phone}.")),
                vec![(phone.to_string(), 6)],
                "{phone}"
            );
        }
    }

    #[test]
    fn leaves_ordinary_numbers_alone() {
        let d = demo();
        assert!(found(
            &d,
            "BP 118/76, HR 72, code 300916003, 2026-01-05, 1234567890, +10 mmHg, v1.2.3, 118.76"
        )
        .is_empty());
        assert!(found(&d, "x900-55-12345").is_empty());
    }

    /// Detector sets the prefilter is checked on: the defaults, and custom patterns of the
    /// shapes a deployment writes (prefixed ids, case-insensitive words, classes with negation,
    /// non-ASCII literals, optional parts, alternations).
    fn sets() -> &'static [Detectors] {
        static SETS: std::sync::OnceLock<Vec<Detectors>> = std::sync::OnceLock::new();
        SETS.get_or_init(build_sets)
    }

    fn build_sets() -> Vec<Detectors> {
        let custom = [
            r"\bPT-[0-9]{6}\b",
            r"(?i)patient\s+id[: ]*[0-9]+",
            r"[^ ,]{2}@[a-z]+",
            "é+[0-9]{2}",
            r"(?:ab|cd)[0-9]",
            "x[0-9]*y",
            r"\(?[0-9]{3}\)?",
            r"^[0-9]{2}",
            r"[0-9]{2}$",
        ];
        let mut sets = vec![demo()];
        let with_custom: Vec<(Class, String)> = custom
            .iter()
            .enumerate()
            .map(|(i, p)| (10 + i as Class, p.to_string()))
            .chain([
                (7, EMAIL_PATTERN.into()),
                (1, SSN_PATTERN.into()),
                (6, PHONE_PATTERN.into()),
                (2, DEFAULT_MRN_PATTERN.into()),
            ])
            .collect();
        sets.push(Detectors::new(&with_custom).unwrap());
        for p in custom {
            sets.push(Detectors::new(&[(3, p.into()), (1, SSN_PATTERN.into())]).unwrap());
        }
        assert!(sets.iter().all(Detectors::has_prefilter));
        sets
    }

    fn all_found(d: &Detectors, text: &[u8], windowed: bool) -> Vec<Found> {
        let mut v = Vec::new();
        let push = |f| v.push(f);
        d.each_by(windowed, text, push).unwrap();
        v
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1000))]

        /// The prefilter changes how much is searched, never what is found.
        #[test]
        fn the_prefilter_finds_what_a_search_of_every_byte_finds(
            parts in proptest::collection::vec(proptest::sample::select(&[
                "555", "-", "0199", "900-55-1234", "12", "7", "MRN", "mrn", " ", "@", "ab",
                "example", ".", ".test", "+1", "(", ")", "é", "\u{fffd}", "x", "y", "PT-", ",",
                ":", "#", "\n", "Patient", " ID", "cd", "%", "_",
            ][..]), 0..40),
            raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..8),
        ) {
            let mut text = parts.concat().into_bytes();
            text.extend_from_slice(&raw);
            for d in sets() {
                proptest::prop_assert_eq!(all_found(d, &text, true), all_found(d, &text, false));
            }
        }
    }

    #[test]
    fn bad_patterns_are_named_with_what_is_wrong() {
        let err = Detectors::new(&[(1, SSN_PATTERN.into()), (2, "(".into())]).unwrap_err();
        assert_eq!(err.0, 1);
        assert!(err.1.ends_with("unclosed group"), "{}", err.1);
        assert!(!err.1.contains('\n'), "one line: {}", err.1);
    }

    #[test]
    fn patterns_that_can_match_nothing_at_all_are_refused() {
        // The trial's failing input: the optional NPI hid the SSN and the phone after it.
        for p in ["(?:NPI[0-9]{10})?", r"\b", "x*", "(?:|y)"] {
            let err = Detectors::new(&[(3, p.into()), (1, SSN_PATTERN.into())]).unwrap_err();
            assert_eq!(err.0, 0, "{p}");
            assert!(err.1.contains("empty string"), "{p}: {}", err.1);
        }
        let d = Detectors::new(&[(3, "NPI[0-9]{10}".into()), (1, SSN_PATTERN.into())]).unwrap();
        assert_eq!(
            found(&d, "SSN 900-55-1234 NPI1234567890").len(),
            2,
            "both detectors find theirs"
        );
    }

    #[test]
    fn works_on_invalid_utf8() {
        let d = demo();
        let mut text = b"\xff\xfe 900-55-1234 \xc3".to_vec();
        text.extend_from_slice(b"\x28");
        let mut n = 0;
        d.each(&text, |_| n += 1).unwrap();
        assert_eq!(n, 1);
    }
}
