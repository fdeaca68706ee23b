//! Channel patterns: `*` matches any run of characters except `/`, `**` any run including `/`;
//! `\*` and `\\` are a literal star and backslash.
//!
//! Besides matching a concrete channel name, a pattern can be checked to lie within another
//! ([`Pattern::covers`]), which is how a token's `channels` are kept inside its key's patterns.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Literal(char),
    /// `*`: any run without `/`.
    Star,
    /// `**`: any run.
    DoubleStar,
}

#[derive(Clone, PartialEq, Eq)]
pub struct Pattern {
    source: String,
    tokens: Vec<Token>,
}

impl Pattern {
    pub fn new(source: &str) -> Self {
        let mut tokens = Vec::new();
        let mut chars = source.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.peek() {
                    Some(&next @ ('*' | '\\')) => {
                        chars.next();
                        tokens.push(Token::Literal(next));
                    }
                    _ => tokens.push(Token::Literal('\\')),
                },
                '*' => {
                    let mut run = 1;
                    while chars.peek() == Some(&'*') {
                        chars.next();
                        run += 1;
                    }
                    tokens.push(if run == 1 {
                        Token::Star
                    } else {
                        Token::DoubleStar
                    });
                }
                other => tokens.push(Token::Literal(other)),
            }
        }
        Self {
            source: source.to_owned(),
            tokens,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the concrete channel `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        let subject: Vec<Token> = name.chars().map(Token::Literal).collect();
        self.matches_tokens(&subject)
    }

    /// Whether every name `other` matches is matched by `self` too. Sound (never claims
    /// containment that does not hold) and exact for the patterns people write.
    pub fn covers(&self, other: &Pattern) -> bool {
        self.matches_tokens(&other.tokens)
    }

    /// Dynamic programming over (pattern position, subject position). A subject token may itself
    /// be a wildcard: `*` is consumed by `*` or `**`, and `**` only by `**`.
    fn matches_tokens(&self, subject: &[Token]) -> bool {
        let (p, s) = (&self.tokens, subject);
        // row[j]: does p[i..] match s[j..]? Computed from the last pattern token backwards.
        let mut next = vec![false; s.len() + 1];
        next[s.len()] = true;
        for i in (0..p.len()).rev() {
            let mut row = vec![false; s.len() + 1];
            for j in (0..=s.len()).rev() {
                row[j] = match p[i] {
                    Token::Literal(c) => j < s.len() && s[j] == Token::Literal(c) && next[j + 1],
                    Token::Star => {
                        next[j]
                            || (j < s.len()
                                && matches!(s[j], Token::Literal(c) if c != '/' )
                                && row[j + 1])
                            || (j < s.len() && s[j] == Token::Star && row[j + 1])
                    }
                    Token::DoubleStar => next[j] || (j < s.len() && row[j + 1]),
                };
            }
            next = row;
        }
        next[0]
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", self.source)
    }
}

/// The all-digit names a key's patterns cover: the realtime names of persistent channels, `"42"`
/// for channel 42. What the channel list filters `id::text` by.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DigitNames {
    /// Every one (a pattern covers `*`, or `**`).
    #[default]
    All,
    /// Only these: exact ids, ranges of ids (inclusive), and the names a regular expression over
    /// digits matches.
    Some {
        ids: Vec<i64>,
        ranges: Vec<(i64, i64)>,
        regex: Option<String>,
    },
}

impl DigitNames {
    pub fn of(patterns: &[Pattern]) -> Self {
        let star = Pattern::new("*");
        if patterns.iter().any(|p| p.covers(&star)) {
            return Self::All;
        }
        let mut ids = Vec::new();
        let mut ranges = Vec::new();
        let mut alternatives = Vec::new();
        for pattern in patterns {
            // A literal other than a digit (`/`, a letter, an escaped star) matches no digit name.
            let digits_only = pattern
                .tokens
                .iter()
                .all(|t| !matches!(t, Token::Literal(c) if !c.is_ascii_digit()));
            if !digits_only {
                continue;
            }
            if pattern
                .tokens
                .iter()
                .all(|t| matches!(t, Token::Literal(_)))
            {
                // Channel names have no leading zero: `007` names no channel.
                if let Ok(id) = pattern.source.parse::<i64>()
                    && id.to_string() == pattern.source
                {
                    ids.push(id);
                }
                continue;
            }
            if let Some(prefix) = digit_prefix(&pattern.tokens) {
                // `0…` names no channel (ids have no leading zero), nor does a prefix longer
                // than any id.
                if !prefix.starts_with('0')
                    && let Ok(number) = prefix.parse::<i64>()
                {
                    ranges.extend(prefix_ranges(number));
                }
                continue;
            }
            let regex: String = pattern
                .tokens
                .iter()
                .map(|t| match t {
                    Token::Literal(c) => c.to_string(),
                    // Within a digit name, `*` and `**` both stand for any run of digits.
                    Token::Star | Token::DoubleStar => "[0-9]*".to_owned(),
                })
                .collect();
            alternatives.push(regex);
        }
        Self::Some {
            ids,
            ranges,
            regex: (!alternatives.is_empty()).then(|| format!("^(?:{})$", alternatives.join("|"))),
        }
    }
}

/// The digits a pattern of digits ending in its only star starts with (`4711*`, `4711**`).
fn digit_prefix(tokens: &[Token]) -> Option<String> {
    let (last, digits) = tokens.split_last()?;
    if !matches!(last, Token::Star | Token::DoubleStar) {
        return None;
    }
    let prefix: String = digits
        .iter()
        .map(|t| match t {
            Token::Literal(c) if c.is_ascii_digit() => Some(*c),
            _ => None,
        })
        .collect::<Option<String>>()?;
    // An empty prefix is `*`, every name (handled before).
    (!prefix.is_empty()).then_some(prefix)
}

/// The ids whose decimal form starts with `prefix`: `prefix` itself, then for each further
/// digit count `k` the block `[prefix·10^k, (prefix+1)·10^k - 1]`, up to `i64::MAX`. Each block
/// is one range of the primary key.
fn prefix_ranges(prefix: i64) -> Vec<(i64, i64)> {
    let mut ranges = vec![(prefix, prefix)];
    let mut scale: i64 = 10;
    while let Some(low) = prefix.checked_mul(scale) {
        let high = (prefix + 1)
            .checked_mul(scale)
            .map_or(i64::MAX, |end| end - 1);
        ranges.push((low, high));
        match scale.checked_mul(10) {
            Some(next) => scale = next,
            None => break,
        }
    }
    ranges
}

/// Whether any of `patterns` matches `name`.
pub fn any_matches(patterns: &[Pattern], name: &str) -> bool {
    patterns.iter().any(|p| p.matches(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digit_names_are_what_the_patterns_say_of_persistent_channels() {
        let of = |patterns: &[&str]| {
            DigitNames::of(&patterns.iter().map(|p| Pattern::new(p)).collect::<Vec<_>>())
        };
        assert_eq!(of(&["**"]), DigitNames::All);
        assert_eq!(of(&["tenant_a/**", "*"]), DigitNames::All);
        assert_eq!(
            of(&["tenant_a/**", "42", "007", "4*2", "app_*"]),
            DigitNames::Some {
                ids: vec![42],
                ranges: vec![],
                regex: Some("^(?:4[0-9]*2)$".into())
            }
        );
        assert_eq!(
            of(&["tenant_b/**"]),
            DigitNames::Some {
                ids: vec![],
                ranges: vec![],
                regex: None
            }
        );
        let regex = match of(&["1*2", "2**3"]) {
            DigitNames::Some { regex, .. } => regex.unwrap(),
            DigitNames::All => panic!("not all"),
        };
        assert_eq!(regex, "^(?:1[0-9]*2|2[0-9]*3)$");
        // A prefix is ranges of ids, each one range of the primary key.
        let DigitNames::Some { ranges, regex, .. } = of(&["47*", "0*"]) else {
            panic!("not all");
        };
        assert_eq!(regex, None);
        assert_eq!(&ranges[..3], [(47, 47), (470, 479), (4700, 4799)]);
        let covered = |id: i64| ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&id));
        for id in [47, 470, 479, 4712345, 47 * 10_i64.pow(17), i64::MAX / 1000] {
            assert_eq!(covered(id), id.to_string().starts_with("47"), "{id}");
        }
        for id in [4, 48, 480, 4800, 1470] {
            assert!(!covered(id), "{id}");
        }
        let DigitNames::Some { ranges, .. } = of(&["9**"]) else {
            panic!("not all");
        };
        assert_eq!(ranges.last(), Some(&(9 * 10_i64.pow(18), i64::MAX)));
    }

    #[test]
    fn single_star_stops_at_slashes_and_double_star_crosses_them() {
        let cases = [
            ("app_abc/*", "app_abc/room-1", true),
            ("app_abc/*", "app_abc/a/b", false),
            ("app_abc/*", "app_abc/", true),
            ("app_abc/**", "app_abc/room-1", true),
            ("app_abc/**", "app_abc/a/b", true),
            ("app_abc/**", "app_xyz/a", false),
            ("room-*", "room-42", true),
            ("room-*", "room-4/2", false),
            ("**", "anything/at/all", true),
            ("*", "no-slash", true),
            ("*", "a/b", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            (r"lit\*", "lit*", true),
            (r"lit\*", "literal", false),
            (r"back\\slash", r"back\slash", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
        ];
        for (pattern, name, expected) in cases {
            assert_eq!(
                Pattern::new(pattern).matches(name),
                expected,
                "{pattern} ~ {name}"
            );
        }
    }

    #[test]
    fn covers_admits_only_narrower_patterns() {
        let cases = [
            ("app_abc/**", "app_abc/*", true),
            ("app_abc/**", "app_abc/room-1", true),
            ("app_abc/**", "app_abc/**", true),
            ("app_abc/*", "app_abc/room-*", true),
            ("app_abc/*", "app_abc/**", false),
            ("app_abc/*", "app_abc/*/x", false),
            ("app_abc/*", "app_xyz/*", false),
            ("**", "**", true),
            ("room-1", "room-*", false),
            (r"lit\*", r"lit\*", true),
            (r"lit\*", "lit*", false),
        ];
        for (outer, inner, expected) in cases {
            assert_eq!(
                Pattern::new(outer).covers(&Pattern::new(inner)),
                expected,
                "{outer} ⊇ {inner}"
            );
        }
    }
}
