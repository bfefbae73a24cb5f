//! METEOR 1.5's English function-word list, as data.
//!
//! Source: `function/english.words` inside `meteor-1.5.jar` (METEOR 1.5, Michael Denkowski,
//! Carnegie Mellon University), the jar shipped in pycocoevalcap 1.2. METEOR is distributed
//! under the GNU Lesser General Public License 2.1; this list is reproduced unchanged, in the
//! file's order, one entry per line of the original. Curly quotes and dashes are written as
//! `\u{..}` escapes.

/// The 93 English function words METEOR 1.5 weights with `1 - delta`.
pub const ENGLISH_FUNCTION_WORDS: [&str; 93] = [
    "the", ",", ".", "to", "of", "and", "a", "in", "that", "for", "\"", "is", "on", "'s", "it",
    "with", "was", "as", "said", "at", "he", "by", "be", "from", "have", "has", "are", "his",
    "but", "an", "this", "not", "i", "will", "\u{2019}", "they", ")", "-rrb-", "(", "-lrb-", "who",
    "their", "had", "we", "which", "were", "been", "more", "or", "s", "its", "would", "about",
    "new", "one", "after", "you", ":", "also", "up", "when", "there", "than", "$", "all", "out",
    "her", "people", "she", "year", "two", "-", "can", "if", "last", "first", "\u{201c}", "over",
    "other", "\u{201d}", "into", "some", "what", "so", "--", "no", "time", "years", "could", "?",
    "'t", "\u{2014}", "'",
];
