//! Where in a text a detector can match at all, worked out from the patterns' syntax trees, so
//! the lazy DFA runs only over those windows instead of over every byte.
//!
//! For each pattern two facts are read off its HIR (`regex-syntax`'s high-level IR, the same
//! tree the DFA is compiled from):
//! - its **alphabet**: every byte a match can consume. A match lies inside one run of
//!   alphabet bytes, at least as long as the pattern's shortest match;
//! - its **anchors**: short byte sequences (up to [`MAX_ANCHOR`] positions, each a byte set)
//!   of which every match contains at least one, chosen as the rarest by `regex-syntax`'s byte
//!   frequency ranks. `\b[0-9]{3}-[0-9]{2}-[0-9]{4}\b` has the anchor "two digits, `-`"; the
//!   e-mail pattern has `@`; `(?i)\bMRN…` has `[Mm][Rr][Nn]`.
//!
//! One pass over the text looks each byte up in a table of the patterns whose anchors start
//! with it; where an anchor matches, the run of that pattern's alphabet around it becomes a
//! window if it is long enough to hold a match. The windows of all patterns, merged, are
//! disjoint and every match of every pattern lies inside one of them, so searching each window
//! (with the whole text as the haystack, so `\b` and `^` see the bytes around it) finds exactly
//! the matches a search of the whole text finds, in the same order (a property test in `super`
//! checks it against the whole-text search).
//!
//! It pays on prose, where few bytes start an anchor (a 64 KiB note: 4–5× faster natively).
//! Text dense in digits (vitals, doses, dates) makes windows everywhere; the pass then gives
//! up early and the whole text is searched, as before. A pattern set without anchors for some
//! pattern (one that can match the empty string, say) or of more than 64 patterns has no
//! prefilter.

use std::ops::Range;

use regex_syntax::hir::{literal, Class, Hir, HirKind};

/// Longest anchor, in byte positions: long enough that digit runs and `MRN` are rare, short
/// enough that checking one where its first byte appears stays cheap.
pub const MAX_ANCHOR: usize = 3;
/// At most this many patterns (one bit each in the trigger table).
const MAX_PATTERNS: usize = 64;

/// A set of bytes, one bit per byte value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct ByteSet([u64; 4]);

impl ByteSet {
    fn add(&mut self, b: u8) {
        self.0[usize::from(b >> 6)] |= 1 << (b & 63);
    }
    fn add_range(&mut self, lo: u8, hi: u8) {
        for b in lo..=hi {
            self.add(b);
        }
    }
    fn contains(&self, b: u8) -> bool {
        self.0[usize::from(b >> 6)] & (1 << (b & 63)) != 0
    }
    fn union(&mut self, other: &ByteSet) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a |= b;
        }
    }
    fn bytes(&self) -> impl Iterator<Item = u8> + '_ {
        (0..=255u8).filter(|&b| self.contains(b))
    }
    /// How likely a byte of ordinary text is in this set, estimated from `regex-syntax`'s byte
    /// frequency ranks (0–255, higher: more common) read as a log scale, halving every 8 ranks:
    /// a space is 1, `e` 0.8, `m` 0.14, a digit about 0.01, `@` 0.00001. Only compared.
    fn weight(&self) -> f64 {
        self.bytes()
            .map(|b| ((f64::from(literal::rank(b)) - 255.0) / 8.0).exp2())
            .sum::<f64>()
            .min(1.0)
    }

    /// The bytes one match of a class consumes. Unicode classes (the detectors are compiled
    /// without Unicode, but a pattern may still hold a non-ASCII literal) count every
    /// non-ASCII byte, as each byte of a multi-byte UTF-8 sequence is one.
    fn of_class(class: &Class) -> Self {
        let mut set = ByteSet::default();
        match class {
            Class::Bytes(c) => {
                for r in c.ranges() {
                    set.add_range(r.start(), r.end());
                }
            }
            Class::Unicode(c) => {
                for r in c.ranges() {
                    let (lo, hi) = (u32::from(r.start()), u32::from(r.end()));
                    if lo < 0x80 {
                        set.add_range(lo as u8, hi.min(0x7f) as u8);
                    }
                    if hi >= 0x80 {
                        set.add_range(0x80, 0xff);
                    }
                }
            }
        }
        set
    }
}

/// Consecutive byte positions, each one of a set: some match of the pattern holds them.
type Anchor = Vec<ByteSet>;

/// What one pattern's matches must consist of and contain.
#[derive(Debug, Clone)]
struct PatternFilter {
    alphabet: ByteSet,
    /// The shortest match, in bytes: a shorter run cannot hold one.
    min_len: usize,
    /// Every match contains at least one of these (never empty).
    anchors: Vec<Anchor>,
}

/// The prefilter of a pattern set; see the module docs.
#[derive(Debug, Clone)]
pub struct Prefilter {
    patterns: Vec<PatternFilter>,
    /// For each byte, one bit per pattern with an anchor that starts with it.
    triggers: Box<[u64; 256]>,
    /// For each byte, 1 when it starts some anchor (so eight bytes are tested at once).
    any: Box<[u8; 256]>,
}

impl Prefilter {
    /// `None` when some pattern has no anchor (it can match the empty string, or only a
    /// variable-width part is required) or there are more than 64 patterns: then every byte
    /// has to be searched.
    pub fn new(hirs: &[Hir]) -> Option<Self> {
        if hirs.len() > MAX_PATTERNS {
            return None;
        }
        let mut patterns = Vec::with_capacity(hirs.len());
        let mut triggers = Box::new([0u64; 256]);
        for (k, hir) in hirs.iter().enumerate() {
            let anchors = required(hir)?;
            if anchors.is_empty() {
                return None;
            }
            for anchor in &anchors {
                for b in anchor.first()?.bytes() {
                    triggers[usize::from(b)] |= 1 << k;
                }
            }
            patterns.push(PatternFilter {
                alphabet: alphabet(hir),
                // No minimum: the pattern matches nothing.
                min_len: hir.properties().minimum_len().unwrap_or(usize::MAX),
                anchors,
            });
        }
        let mut any = Box::new([0u8; 256]);
        for (a, t) in any.iter_mut().zip(triggers.iter()) {
            *a = u8::from(*t != 0);
        }
        Some(Self {
            patterns,
            triggers,
            any,
        })
    }

    /// Replaces `windows` with the sorted, disjoint byte ranges of `text` outside of which no
    /// pattern can match, and returns `true`; returns `false` (give up, search every byte)
    /// when the text is dense in anchor bytes or would need more than `max_windows` windows,
    /// as then the windows cost more than they save. `covered` is scratch space.
    pub fn windows(
        &self,
        text: &[u8],
        max_windows: usize,
        windows: &mut Vec<Range<usize>>,
        covered: &mut Vec<usize>,
    ) -> bool {
        windows.clear();
        covered.clear();
        covered.resize(self.patterns.len(), 0);
        // Most bytes of prose start no anchor: test eight at a time and look closer only at
        // a block with one that does. Looking closer costs about what the DFA spends on the
        // block, so past one block in three (of at least 32 seen) the windows are given up.
        let any = |b: u8| self.any[usize::from(b)];
        let (mut seen, mut inspected) = (0usize, 0usize);
        let mut block = 0;
        while block < text.len() {
            let end = (block + 8).min(text.len());
            seen += 1;
            if let [a, b, c, d, e, f, g, h] = text[block..end] {
                if any(a) | any(b) | any(c) | any(d) | any(e) | any(f) | any(g) | any(h) == 0 {
                    block = end;
                    continue;
                }
            }
            inspected += 1;
            if seen >= 32 && inspected * 3 > seen {
                return false;
            }
            for i in block..end {
                self.open(text, i, windows, covered);
            }
            if windows.len() > max_windows {
                return false;
            }
            block = end;
        }
        true
    }
}

impl Prefilter {
    /// The windows of the patterns with an anchor at `text[i]`, unless `i` lies in a window
    /// of that pattern already.
    fn open(&self, text: &[u8], i: usize, windows: &mut Vec<Range<usize>>, covered: &mut [usize]) {
        let mut hits = self.triggers[usize::from(text[i])];
        while hits != 0 {
            let k = hits.trailing_zeros() as usize;
            hits &= hits - 1;
            let (Some(p), Some(done)) = (self.patterns.get(k), covered.get_mut(k)) else {
                continue;
            };
            if i < *done || !p.anchors.iter().any(|a| anchor_at(a, &text[i..])) {
                continue;
            }
            let mut start = i;
            while start > *done && p.alphabet.contains(text[start - 1]) {
                start -= 1;
            }
            let mut end = i + 1;
            while end < text.len() && p.alphabet.contains(text[end]) {
                end += 1;
            }
            *done = end;
            if end - start < p.min_len {
                continue;
            }
            // Kept sorted and disjoint as they come: a window opened here starts at or before
            // `i`, after every window that ends before it, so it can only overlap the last
            // ones.
            let mut window = start..end;
            while let Some(last) = windows.last() {
                if window.start > last.end {
                    break;
                }
                window = window.start.min(last.start)..window.end.max(last.end);
                windows.pop();
            }
            windows.push(window);
        }
    }
}

/// Whether every member of `class` is a single byte.
fn one_byte(class: &Class) -> bool {
    match class {
        Class::Bytes(_) => true,
        Class::Unicode(c) => c.ranges().iter().all(|r| u32::from(r.end()) < 0x80),
    }
}

fn anchor_at(anchor: &Anchor, text: &[u8]) -> bool {
    anchor.len() <= text.len() && anchor.iter().zip(text).all(|(set, &b)| set.contains(b))
}

/// Every byte a match of `hir` can consume.
fn alphabet(hir: &Hir) -> ByteSet {
    let mut set = ByteSet::default();
    match hir.kind() {
        HirKind::Empty | HirKind::Look(_) => {}
        HirKind::Literal(lit) => lit.0.iter().for_each(|&b| set.add(b)),
        HirKind::Class(class) => set = ByteSet::of_class(class),
        HirKind::Repetition(rep) => set = alphabet(&rep.sub),
        HirKind::Capture(cap) => set = alphabet(&cap.sub),
        HirKind::Concat(subs) | HirKind::Alternation(subs) => {
            subs.iter().for_each(|s| set.union(&alphabet(s)))
        }
    }
    set
}

/// The byte positions of `hir` when it always matches the same number of bytes: `None` for
/// variable width. Look-arounds are zero-width, so they keep the positions around them
/// consecutive.
fn fixed(hir: &Hir) -> Option<Vec<ByteSet>> {
    match hir.kind() {
        HirKind::Empty | HirKind::Look(_) => Some(Vec::new()),
        HirKind::Literal(lit) => Some(
            lit.0
                .iter()
                .map(|&b| {
                    let mut set = ByteSet::default();
                    set.add(b);
                    set
                })
                .collect(),
        ),
        // A class whose members are not all one byte long (non-ASCII in a Unicode class)
        // has no fixed width.
        HirKind::Class(class) => one_byte(class).then(|| vec![ByteSet::of_class(class)]),
        HirKind::Capture(cap) => fixed(&cap.sub),
        HirKind::Repetition(rep) if rep.max == Some(rep.min) => {
            Some(repeated(&fixed(&rep.sub)?, rep.min))
        }
        HirKind::Concat(subs) => {
            let mut out = Vec::new();
            for s in subs {
                out.extend(fixed(s)?);
            }
            Some(out)
        }
        // A class of single bytes in every branch would be fixed too; the detectors do not
        // need it.
        HirKind::Repetition(_) | HirKind::Alternation(_) => None,
    }
}

/// The positions of `min` copies of `one` back to back, at most [`MAX_ANCHOR`] copies: the
/// copies repeat, so every window of up to `MAX_ANCHOR` positions of the shortened run, also
/// one reaching into what comes before or after it, is a window of the whole run too.
fn repeated(one: &[ByteSet], min: u32) -> Vec<ByteSet> {
    let copies = (min as usize).min(MAX_ANCHOR);
    one.iter()
        .copied()
        .cycle()
        .take(one.len() * copies)
        .collect()
}

/// Anchors every match of `hir` contains at least one of; `None` when there is no such
/// guarantee (the pattern can match without consuming a byte we can point at).
fn required(hir: &Hir) -> Option<Vec<Anchor>> {
    if let Some(positions) = fixed(hir) {
        return best_window(&positions).map(|a| vec![a]);
    }
    match hir.kind() {
        // Not one byte per member (else `fixed` took it): each member still consumes at
        // least one byte of the set.
        HirKind::Class(class) => Some(vec![vec![ByteSet::of_class(class)]]),
        HirKind::Capture(cap) => required(&cap.sub),
        HirKind::Repetition(rep) if rep.min >= 1 => {
            // At least `min` copies back to back: a fixed sub gives that many consecutive
            // positions, a variable one its own anchors.
            match fixed(&rep.sub) {
                Some(one) if !one.is_empty() => {
                    best_window(&repeated(&one, rep.min)).map(|a| vec![a])
                }
                _ => required(&rep.sub),
            }
        }
        HirKind::Alternation(subs) => {
            let mut all = Vec::new();
            for s in subs {
                all.extend(required(s)?);
            }
            Some(all)
        }
        HirKind::Concat(subs) => {
            // Runs of fixed-width parts are consecutive positions; any part's own anchors hold
            // too. Keep the rarest candidate.
            let mut best: Option<(f64, Vec<Anchor>)> = None;
            let mut consider = |anchors: Vec<Anchor>| {
                let w = weight(&anchors);
                if best.as_ref().is_none_or(|(bw, _)| w < *bw) {
                    best = Some((w, anchors));
                }
            };
            let mut run: Vec<ByteSet> = Vec::new();
            for s in subs {
                match fixed(s) {
                    Some(positions) => run.extend(positions),
                    None => {
                        if let Some(a) = best_window(&run) {
                            consider(vec![a]);
                        }
                        run.clear();
                        if let Some(anchors) = required(s) {
                            consider(anchors);
                        }
                    }
                }
            }
            if let Some(a) = best_window(&run) {
                consider(vec![a]);
            }
            best.map(|(_, anchors)| anchors)
        }
        _ => None,
    }
}

/// The rarest window of up to [`MAX_ANCHOR`] consecutive positions; `None` when there are
/// no positions.
fn best_window(positions: &[ByteSet]) -> Option<Anchor> {
    let len = positions.len().min(MAX_ANCHOR);
    if len == 0 {
        return None;
    }
    positions
        .windows(len)
        .map(|w| (anchor_weight(w), w))
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, w)| w.to_vec())
}

/// How often an anchor is expected to appear: the product of its positions' weights.
fn anchor_weight(anchor: &[ByteSet]) -> f64 {
    anchor.iter().map(ByteSet::weight).product()
}

/// A set of alternative anchors appears about as often as the sum of its members.
fn weight(anchors: &[Anchor]) -> f64 {
    anchors.iter().map(|a| anchor_weight(a)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use regex_automata::util::syntax;

    fn hir(p: &str) -> Hir {
        syntax::parse_with(p, &syntax::Config::new().unicode(false).utf8(false)).unwrap()
    }

    fn prefilter(ps: &[&str]) -> Option<Prefilter> {
        Prefilter::new(&ps.iter().map(|p| hir(p)).collect::<Vec<_>>())
    }

    fn windows(pf: &Prefilter, text: &str) -> Vec<String> {
        let (mut w, mut c) = (Vec::new(), Vec::new());
        assert!(pf.windows(text.as_bytes(), usize::MAX, &mut w, &mut c));
        w.into_iter().map(|r| text[r].to_string()).collect()
    }

    fn shown(anchor: &Anchor) -> String {
        anchor
            .iter()
            .map(|set| set.bytes().map(char::from).collect::<String>())
            .collect::<Vec<_>>()
            .join("|")
    }

    #[test]
    fn anchors_are_the_rarest_required_bytes() {
        let one = |p: &str| {
            required(&hir(p))
                .unwrap()
                .iter()
                .map(shown)
                .collect::<Vec<_>>()
        };
        // `-` is rarer in text than a digit.
        assert_eq!(one(super::super::SSN_PATTERN), ["0123456789|0123456789|-"]);
        assert_eq!(one(super::super::EMAIL_PATTERN), ["@"]);
        assert_eq!(one(super::super::DEFAULT_MRN_PATTERN), ["Mm|Rr|Nn"]);
        // Every branch of an alternation contributes one.
        assert_eq!(one("cat|dog").len(), 2);
        // Nothing can be required of a pattern that may match the empty string.
        for p in ["a*", "", r"\b", "(?:x|)"] {
            assert!(required(&hir(p)).is_none_or(|a| a.is_empty()), "{p}");
        }
    }

    #[test]
    fn windows_are_runs_of_the_alphabet_around_an_anchor() {
        let pf = prefilter(&[super::super::SSN_PATTERN, super::super::EMAIL_PATTERN]).unwrap();
        assert_eq!(
            windows(
                &pf,
                "Vitals stable. SSN 900-55-1234, mail a.b@c.test; BP 118/76, 12-4."
            ),
            // `12-4` has the SSN's anchor, but its run is shorter than any SSN.
            ["900-55-1234", "a.b@c.test"]
        );
        assert!(windows(&pf, "No identifiers in this note, none at all.").is_empty());
        // Overlapping windows of two patterns merge.
        let pf = prefilter(&["[a-z]+@[a-z]+", "[0-9]{3}[a-z@]*"]).unwrap();
        assert_eq!(windows(&pf, "x 123ab@cd y"), ["123ab@cd"]);
    }

    #[test]
    fn dense_text_gives_up_the_windows() {
        let pf = prefilter(&[super::super::SSN_PATTERN]).unwrap();
        let (mut w, mut c) = (Vec::new(), Vec::new());
        let dense = "12-45 ".repeat(100);
        assert!(!pf.windows(dense.as_bytes(), usize::MAX, &mut w, &mut c));
        let sparse = format!("{} 900-55-1234 {}", "x".repeat(400), "y".repeat(400));
        assert!(pf.windows(sparse.as_bytes(), usize::MAX, &mut w, &mut c));
        assert_eq!(w.len(), 1);
        assert!(
            !pf.windows(sparse.as_bytes(), 0, &mut w, &mut c),
            "too many windows"
        );
    }

    #[test]
    fn unfilterable_sets_search_everything() {
        assert!(prefilter(&[super::super::SSN_PATTERN, "x*"]).is_none());
        let many: Vec<String> = (0..65).map(|i| format!("id{i}")).collect();
        assert!(Prefilter::new(&many.iter().map(|p| hir(p)).collect::<Vec<_>>()).is_none());
    }
}
