//! The part of coco-caption's PTB tokenisation that caption text needs, without a JVM.
//!
//! coco-caption runs Stanford CoreNLP 3.4.1's `PTBTokenizer -preserveLines -lowerCase` on every
//! caption and then drops the tokens `'' ' `` ` -LRB- -RRB- -LCB- -RCB- . ? ! , : - -- ... ;`.
//! [`tokenize`] reproduces that pipeline for caption-like English text.
//!
//! Covered (checked against the jar; the strings are in `tests/fixtures/metrics/golden.json`,
//! key `ptb`):
//! - `\n` becomes a space; whitespace separates tokens; everything is lowercased;
//! - the six splits `cannot gonna gotta wanna lemme gimme` -> `can not`, `gon na`, `got ta`,
//!   `wan na`, `lem me`, `gim me`;
//! - clitics: `'s 're 've 'll 'd 'm` and `n't` are split off (`don't` -> `do n't`,
//!   `can't` -> `ca n't`); a trailing `'` (`dogs'`) and opening/closing quotes
//!   (`"`, `'`, `` ` ``, curly quotes) are dropped; `’` counts as `'`;
//! - punctuation `, ; : ! ? .` at token ends is split off and dropped, except commas and
//!   colons between digits (`1,000`, `3:30`); a run of several `!`/`?` (`!!!`, `?!`) stays as
//!   one token, as in the jar;
//! - a final `.` is split off unless the word is a dotted abbreviation of single letters
//!   (`u.s.`, `e.g.`, `a.m.`) or one of the titles/abbreviations the jar keeps
//!   ([`KEPT_ABBREVIATIONS`]); dots inside a word stay (`3.5`, `dog.cat`); `..`, `...` and `…`
//!   are dropped;
//! - `--` and stray `-` are dropped, while `t-shirt` stays one token;
//! - brackets become `-lrb- -rrb- -lsb- -rsb- -lcb- -rcb-` and, because of `-lowerCase`, are
//!   **kept** (the drop list is upper case);
//! - `$ % # @` are split off as their own (kept) tokens (`$5` -> `$ 5`, `50%` -> `50 %`);
//!   `& / \ < >` stay inside words (`<unk>`, `a&w`, `1/2`).
//!
//! Not covered (the jar may differ): other currency signs (the jar maps `£` to `#`, `€` to
//! `$`), `+/-` and other symbol runs, URLs, e-mail addresses, emoticons, SGML/XML markup,
//! `'n'`/`'tis` forms, abbreviations outside [`KEPT_ABBREVIATIONS`] that the jar happens to know,
//! sentence splitting inside one caption, and non-English text. For Karpathy tokens and
//! vocabulary words (lowercase alphanumeric) the result is exact: only the six splits change
//! anything.

/// Tokens coco-caption removes after PTB tokenisation (upper-case bracket names never occur
/// after `-lowerCase`, so they are listed only for completeness).
pub const DROPPED_TOKENS: [&str; 17] = [
    "''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--",
    "...", ";",
];

/// Words ending in `.` that the jar keeps whole (checked one by one, mid-caption and final).
pub const KEPT_ABBREVIATIONS: [&str; 33] = [
    "mr", "mrs", "ms", "dr", "st", "jr", "sr", "prof", "inc", "co", "ltd", "corp", "ave", "mt",
    "ft", "vs", "etc", "jan", "feb", "sept", "gen", "gov", "sen", "rep", "capt", "lt", "col",
    "sgt", "rev", "bros", "dept", "univ", "est",
];

const CLITICS: [&str; 6] = ["'s", "'re", "'ve", "'ll", "'d", "'m"];

/// Tokenises one caption the way coco-caption's PTB step does (see the module docs for the
/// exact scope) and joins the tokens with single spaces.
pub fn tokenize(caption: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    let lower = caption.to_lowercase();
    for token in lower.split_whitespace() {
        split_token(token, &mut out);
    }
    out.retain(|t| !t.is_empty() && !DROPPED_TOKENS.contains(&t.as_str()));
    out.join(" ")
}

/// Tokenises every caption (see [`tokenize`]).
pub fn tokenize_all<S: AsRef<str>>(captions: &[S]) -> Vec<String> {
    captions.iter().map(|c| tokenize(c.as_ref())).collect()
}

fn is_quote(c: char) -> bool {
    matches!(c, '"' | '`' | '\u{201c}' | '\u{201d}' | '\u{2018}')
}

fn bracket_name(c: char) -> Option<&'static str> {
    Some(match c {
        '(' => "-lrb-",
        ')' => "-rrb-",
        '[' => "-lsb-",
        ']' => "-rsb-",
        '{' => "-lcb-",
        '}' => "-rcb-",
        _ => return None,
    })
}

/// Splits one whitespace-separated, lowercased token into PTB tokens (punctuation included;
/// the caller drops the listed punctuation).
fn split_token(token: &str, out: &mut Vec<String>) {
    let chars: Vec<char> = token
        .chars()
        .map(|c| if c == '\u{2019}' { '\'' } else { c })
        .collect();
    let mut word = String::new();
    let mut i = 0;
    let digit_at = |j: usize| chars.get(j).is_some_and(|c| c.is_ascii_digit());
    while i < chars.len() {
        let c = chars[i];
        if is_quote(c) || c == '\u{2026}' {
            flush(&mut word, false, out);
            i += 1;
        } else if let Some(name) = bracket_name(c) {
            flush(&mut word, false, out);
            out.push(name.to_string());
            i += 1;
        } else if matches!(c, '$' | '%' | '#' | '@') {
            flush(&mut word, false, out);
            out.push(c.to_string());
            i += 1;
        } else if (c == ',' || c == ':')
            && i > 0
            && digit_at(i - 1)
            && digit_at(i + 1)
            && !word.is_empty()
        {
            word.push(c);
            i += 1;
        } else if matches!(c, ',' | ':' | ';') {
            flush(&mut word, false, out);
            i += 1;
        } else if c == '!' || c == '?' {
            flush(&mut word, false, out);
            let start = i;
            while i < chars.len() && matches!(chars[i], '!' | '?') {
                i += 1;
            }
            out.push(chars[start..i].iter().collect());
        } else if c == '-' {
            let start = i;
            while i < chars.len() && chars[i] == '-' {
                i += 1;
            }
            let inside = !word.is_empty() && i < chars.len() && chars[i].is_alphanumeric();
            if i - start == 1 && inside {
                word.push('-');
            } else {
                flush(&mut word, false, out);
            }
        } else if c == '.' {
            let start = i;
            while i < chars.len() && chars[i] == '.' {
                i += 1;
            }
            let run = i - start;
            let followed_by_word = i < chars.len() && chars[i].is_alphanumeric();
            if run == 1 && !word.is_empty() && followed_by_word {
                word.push('.');
            } else if run == 1 && !word.is_empty() {
                // A final dot: kept only on abbreviations.
                flush(&mut word, true, out);
            } else {
                flush(&mut word, false, out);
            }
        } else if c == '\'' {
            // A quote at the start of a word opens a quotation unless a clitic follows
            // ('s, 're, ...); elsewhere the apostrophe belongs to the word for now.
            if word.is_empty() {
                let rest: String = chars[i..]
                    .iter()
                    .take_while(|c| c.is_alphanumeric() || **c == '\'')
                    .collect();
                if CLITICS.contains(&rest.as_str()) {
                    out.push(rest.clone());
                    i += rest.chars().count();
                    continue;
                }
                i += 1;
            } else {
                word.push(c);
                i += 1;
            }
        } else {
            word.push(c);
            i += 1;
        }
    }
    flush(&mut word, false, out);
}

/// Emits a finished word: clitics and the six contractions split; with `dotted`, the word was
/// followed by a single final `.` that stays only on abbreviations.
fn flush(word: &mut String, dotted: bool, out: &mut Vec<String>) {
    if word.is_empty() {
        return;
    }
    let mut w = std::mem::take(word);
    if dotted {
        let keeps_dot = KEPT_ABBREVIATIONS.contains(&w.as_str()) || is_letter_dotted(&w);
        if keeps_dot {
            w.push('.');
            out.push(w);
            return;
        }
    }
    // A trailing apostrophe (dogs') closes a quotation or marks a plural possessive; PTB
    // splits it off and coco-caption drops it.
    while w.ends_with('\'') {
        w.pop();
    }
    if w.is_empty() {
        return;
    }
    let mut pieces: Vec<String> = Vec::new();
    if let Some(stem) = w.strip_suffix("n't").filter(|s| !s.is_empty()) {
        pieces.push(stem.to_string());
        pieces.push("n't".to_string());
    } else if let Some((stem, clitic)) = CLITICS.iter().find_map(|c| {
        w.strip_suffix(c)
            .filter(|s| !s.is_empty())
            .map(|s| (s.to_string(), *c))
    }) {
        pieces.push(stem);
        pieces.push(clitic.to_string());
    } else {
        pieces.push(w);
    }
    for piece in pieces {
        match piece.as_str() {
            "cannot" => out.extend(["can".to_string(), "not".to_string()]),
            "gonna" => out.extend(["gon".to_string(), "na".to_string()]),
            "gotta" => out.extend(["got".to_string(), "ta".to_string()]),
            "wanna" => out.extend(["wan".to_string(), "na".to_string()]),
            "lemme" => out.extend(["lem".to_string(), "me".to_string()]),
            "gimme" => out.extend(["gim".to_string(), "me".to_string()]),
            _ => out.push(piece),
        }
    }
}

/// `u.s`, `e.g`, `a.m`: single letters joined by dots (the final dot not included).
fn is_letter_dotted(w: &str) -> bool {
    let parts: Vec<&str> = w.split('.').collect();
    parts.len() >= 2
        && parts
            .iter()
            .all(|p| p.chars().count() == 1 && p.chars().all(char::is_alphabetic))
}

#[cfg(test)]
mod tests {
    use super::tokenize;

    #[test]
    fn vocabulary_words_change_only_by_the_six_splits() {
        assert_eq!(
            tokenize("a man riding a horse on the beach"),
            "a man riding a horse on the beach"
        );
        assert_eq!(
            tokenize("cannot gonna gotta wanna lemme gimme"),
            "can not gon na got ta wan na lem me gim me"
        );
        assert_eq!(tokenize("a <unk> near a <unk>"), "a <unk> near a <unk>");
        assert_eq!(tokenize(""), "");
    }

    #[test]
    fn common_caption_punctuation() {
        assert_eq!(
            tokenize("A man riding a horse on the beach."),
            "a man riding a horse on the beach"
        );
        assert_eq!(
            tokenize("He doesn't know, they can't see."),
            "he does n't know they ca n't see"
        );
        assert_eq!(
            tokenize("A man's hat (brown)."),
            "a man 's hat -lrb- brown -rrb-"
        );
        assert_eq!(
            tokenize("a t-shirt costs $5 at 3:30, 1,000 dogs"),
            "a t-shirt costs $ 5 at 3:30 1,000 dogs"
        );
        assert_eq!(
            tokenize("the u.s. army. mr. smith"),
            "the u.s. army mr. smith"
        );
        assert_eq!(tokenize("hello!!! what?!"), "hello !!! what ?!");
        assert_eq!(
            tokenize("\"Quoted\" text and 'single' quotes."),
            "quoted text and single quotes"
        );
        assert_eq!(tokenize("a line\nbreak"), "a line break");
    }
}
