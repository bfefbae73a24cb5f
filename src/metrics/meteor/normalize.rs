//! METEOR 1.5's `-norm` text normalisation for English, with punctuation kept.
//!
//! The jar normalises every hypothesis and reference before aligning them (a Moses-style
//! tokeniser with METEOR's own additions), then lowercases. The steps below follow the jar's
//! order exactly, because later steps see the output of earlier ones:
//! 1. pad with spaces; put spaces around every character that is not alphanumeric (METEOR's
//!    Latin/Cyrillic ranges), whitespace, `.`, `'`, `` ` ``, `,`, `-`, `‘` or `’`;
//! 2. protect runs of dots (`DOTMULTI` markers);
//! 3. split commas except between digits;
//! 4. quotes: `` ` ‘ ’ `` become `'`; `“ ” ''` become ` " `;
//! 5. dashes: `–` and `--` become `-`; a dash between alphanumerics (or after a dot) becomes
//!    a space (`t-shirt` -> `t shirt`);
//! 6. English apostrophes: `'` between non-letters is isolated; before a letter after a
//!    non-letter/non-digit it is isolated (`'s` -> `' s`); after a letter before a non-letter
//!    it is isolated; between letters it starts the next token (`don't` -> `don 't`); digit
//!    `'s` becomes `digit 's`;
//! 7. a word ending in `.` keeps its dot when it mixes dots and letters (then all its dots
//!    are dropped: `u.s.` -> `us`), is a non-breaking prefix, or is followed by a word that
//!    starts with a lower-case letter (or a number, for numeric-only prefixes); otherwise the
//!    dot is split off;
//! 8. restore the dot runs; collapse Unicode spaces; trim.
//!
//! Checked against the jar's own `Normalizer` class on the fixture strings.

use std::collections::HashMap;
use std::sync::OnceLock;

use regex::Regex;

use super::nonbreaking::{NONBREAKING_ANY, NONBREAKING_NUMERIC_ONLY};

/// METEOR's letter ranges (Latin-1, Latin Extended-A, Cyrillic and some phonetic blocks).
const ALPHA: &str = "A-Za-z\u{160}\u{17d}\u{161}\u{17e}\u{178}\u{c0}-\u{d6}\u{d8}-\u{f6}\u{f8}-\u{17e}\
                     \u{400}-\u{4ff}\u{500}-\u{527}\u{a640}-\u{a66e}\u{a67e}-\u{a697}\u{1d00}-\u{1d7f}";
/// Java's `\s` (ASCII whitespace only).
const JAVA_SPACE: &str = " \\t\\n\\x0B\\x0C\\r";

struct Patterns {
    sep_other: Regex,
    multi_dot: Regex,
    multi_dot2: Regex,
    comma: Regex,
    comma2: Regex,
    comma3: Regex,
    quote_single: Regex,
    quote_double: Regex,
    rm_dash: Regex,
    cont1: Regex,
    cont2: Regex,
    cont3: Regex,
    cont4: Regex,
    cont5: Regex,
    has_alpha: Regex,
    white: Regex,
    nonbreaking: HashMap<&'static str, bool>,
}

fn patterns() -> &'static Patterns {
    static PATTERNS: OnceLock<Patterns> = OnceLock::new();
    PATTERNS.get_or_init(|| {
        let re = |p: &str| Regex::new(p).expect("METEOR normaliser pattern is valid");
        let alnum = format!("0-9{ALPHA}");
        let mut nonbreaking = HashMap::new();
        for p in NONBREAKING_ANY {
            nonbreaking.insert(p, false);
        }
        for p in NONBREAKING_NUMERIC_ONLY {
            nonbreaking.insert(p, true);
        }
        Patterns {
            sep_other: re(&format!("([^{alnum}{JAVA_SPACE}.'`,\\-\u{2018}\u{2019}])")),
            multi_dot: re(r"\.(\.+)"),
            multi_dot2: re(r"DOTMULTI\.([^.])"),
            comma: re(r"([^0-9]),([^0-9])"),
            comma2: re(r"([0-9]),([^0-9])"),
            comma3: re(r"([^0-9]),([0-9])"),
            quote_single: re("[`\u{2018}\u{2019}]"),
            quote_double: re("[\u{201c}\u{201d}]|''"),
            rm_dash: re(&format!("([{alnum}.])-([{alnum}])")),
            cont1: re(&format!("([^{ALPHA}])'([^{ALPHA}])")),
            cont2: re(&format!("([^{ALPHA}0-9])'([{ALPHA}])")),
            cont3: re(&format!("([{ALPHA}])'([^{ALPHA}])")),
            cont4: re(&format!("([{ALPHA}])'([{ALPHA}])")),
            cont5: re(r"([0-9])'(s)"),
            has_alpha: re(&format!("[{ALPHA}]")),
            white: re("[ \u{2000}-\u{200a}\u{202f}\u{205f}\u{3000}\u{a0}]+"),
            nonbreaking,
        }
    })
}

/// Java's `String.trim()`: strips every char at or below U+0020 from both ends.
fn java_trim(s: &str) -> &str {
    s.trim_matches(|c: char| c <= ' ')
}

/// Java's `StringTokenizer` default delimiters.
pub(crate) fn java_tokens(s: &str) -> impl Iterator<Item = &str> {
    s.split([' ', '\t', '\n', '\r', '\u{c}'])
        .filter(|t| !t.is_empty())
}

/// The jar's `Normalizer.normalizeLine(line, English, keepPunctuation = true)`.
pub fn normalize_line(line: &str) -> String {
    // Lowercase ASCII letters, digits and spaces pass every rule unchanged except the
    // whitespace collapse (the `DOTMULTI` markers are upper case, so none can be forged).
    if line
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b' ')
    {
        return line
            .split(' ')
            .filter(|w| !w.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
    }
    let p = patterns();
    let mut s = format!(" {line} ");
    s = p.sep_other.replace_all(&s, " ${1} ").into_owned();

    s = p.multi_dot.replace_all(&s, " DOTMULTI${1}").into_owned();
    while s.contains("DOTMULTI.") {
        s = p
            .multi_dot2
            .replace_all(&s, "DOTDOTMULTI ${1}")
            .into_owned();
        s = s.replace("DOTMULTI.", "DOTDOTMULTI");
    }

    s = p.comma.replace_all(&s, "${1} , ${2}").into_owned();
    s = p.comma2.replace_all(&s, "${1} , ${2}").into_owned();
    s = p.comma3.replace_all(&s, "${1} , ${2}").into_owned();

    s = p.quote_single.replace_all(&s, "'").into_owned();
    s = p.quote_double.replace_all(&s, " \" ").into_owned();

    s = s.replace('\u{2013}', "-");
    s = s.replace("--", "-");
    s = p.rm_dash.replace_all(&s, "${1} ${2}").into_owned();

    s = p.cont1.replace_all(&s, "${1} ' ${2}").into_owned();
    s = p.cont2.replace_all(&s, "${1} ' ${2}").into_owned();
    s = p.cont3.replace_all(&s, "${1} ' ${2}").into_owned();
    s = p.cont4.replace_all(&s, "${1} '${2}").into_owned();
    s = p.cont5.replace_all(&s, "${1} '${2}").into_owned();

    let words: Vec<&str> = java_tokens(&s).collect();
    let mut rebuilt = String::with_capacity(s.len() + 8);
    for (i, word) in words.iter().enumerate() {
        let next = words.get(i + 1);
        if word.encode_utf16().count() > 1 && word.ends_with('.') {
            let prefix = &word[..word.len() - 1];
            let kind = p.nonbreaking.get(prefix).copied();
            if prefix.contains('.') && p.has_alpha.is_match(prefix) {
                rebuilt.push_str(&word.replace('.', ""));
            } else if kind == Some(false)
                || next.is_some_and(|n| n.starts_with(|c: char| c.is_ascii_lowercase()))
                || (kind == Some(true)
                    && next.is_some_and(|n| n.starts_with(|c: char| c.is_ascii_digit())))
            {
                // Non-breaking: always, before a lower-case word, or (numeric-only) before a number.
                rebuilt.push_str(word);
            } else {
                rebuilt.push_str(prefix);
                rebuilt.push_str(" .");
            }
        } else {
            rebuilt.push_str(word);
        }
        rebuilt.push(' ');
    }
    s = rebuilt;

    while s.contains("DOTDOTMULTI") {
        s = s.replace("DOTDOTMULTI", "DOTMULTI.");
    }
    s = s.replace("DOTMULTI", ".");

    s = p.white.replace_all(&s, " ").into_owned();
    java_trim(&s).to_string()
}

#[cfg(test)]
mod tests {
    use super::normalize_line;

    #[test]
    fn matches_the_jar_on_caption_text() {
        // Outputs of `java -cp meteor-1.5.jar edu.cmu.meteor.util.Normalizer en true`.
        assert_eq!(
            normalize_line("A man's t-shirt <unk> costs $5 , 50% & 3:30 u.s. dr. o'clock don't"),
            "A man 's t shirt < unk > costs $ 5 , 50 % & 3 : 30 us dr. o 'clock don 't"
        );
        assert_eq!(normalize_line(" a dog 's ball ."), "a dog ' s ball .");
        assert_eq!(
            normalize_line("the 1990's were 1,000 dogs 3.5 years"),
            "the 1990 's were 1,000 dogs 3.5 years"
        );
        assert_eq!(normalize_line(""), "");
    }
}
