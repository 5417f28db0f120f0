//! Routing by tag, with Fluentd's pattern language.
//!
//! A `[[route]]` has a `match` of one or more space-separated patterns and a list of outputs.
//! Routes are tried in order and the first whose pattern matches the tag wins (Fluentd's
//! `<match>` order); a route that lists several outputs copies each record to all of them.
//!
//! Pattern language (as Fluentd's):
//! ```text
//! *        one tag part, or any characters within a part ("a.*" matches "a.b", not "a.b.c")
//! **       zero or more parts ("a.**" matches "a", "a.b" and "a.b.c")
//! {x,y}    either alternative ("app.{web,db}.*")
//! a b      either pattern (space-separated)
//! ```
//! Matching runs once per request (a batch of records), never per record, and takes time
//! linear in the tag (at most `2 * pattern length + 2` steps per tag byte): tags come from the
//! network, so no pattern may make a long tag cost quadratic time.

use std::fmt;

/// A compiled `match` value: several alternatives, any of which may match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    alternatives: Vec<Vec<Token>>,
    source: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Byte(u8),
    /// `*`: any run of bytes without a `.`.
    Star,
    /// `**`: any run of bytes.
    DoubleStar,
    /// `.**`: nothing, or a `.` followed by anything.
    DotDoubleStar,
}

/// Why a pattern did not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// The pattern is empty or only spaces.
    #[error("a match pattern must not be empty")]
    Empty,
    /// `{` without `}` or the reverse.
    #[error("unbalanced braces in match pattern {0:?}")]
    Unbalanced(String),
    /// Too many `{a,b}` combinations to expand.
    #[error("match pattern {0:?} expands to too many alternatives")]
    TooManyAlternatives(String),
}

/// Most alternatives one `match` may expand to; a guard against `{a,b}{c,d}...` blow-up.
const MAX_ALTERNATIVES: usize = 256;

impl Pattern {
    /// Compiles a `match` value.
    pub fn parse(source: &str) -> Result<Pattern, PatternError> {
        let mut alternatives = Vec::new();
        for word in source.split_whitespace() {
            for expanded in expand_braces(word)? {
                alternatives.push(tokenize(&expanded));
                if alternatives.len() > MAX_ALTERNATIVES {
                    return Err(PatternError::TooManyAlternatives(source.to_owned()));
                }
            }
        }
        if alternatives.is_empty() {
            return Err(PatternError::Empty);
        }
        Ok(Pattern {
            alternatives,
            source: source.to_owned(),
        })
    }

    /// Whether `tag` matches any alternative.
    pub fn matches(&self, tag: &str) -> bool {
        self.alternatives
            .iter()
            .any(|tokens| match_tokens(tokens, tag.as_bytes()))
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

fn expand_braces(word: &str) -> Result<Vec<String>, PatternError> {
    let Some(open) = word.find('{') else {
        if word.contains('}') {
            return Err(PatternError::Unbalanced(word.to_owned()));
        }
        return Ok(vec![word.to_owned()]);
    };
    let close = word[open..]
        .find('}')
        .map(|i| open + i)
        .ok_or_else(|| PatternError::Unbalanced(word.to_owned()))?;
    let (head, inner, tail) = (&word[..open], &word[open + 1..close], &word[close + 1..]);
    if inner.contains('{') {
        return Err(PatternError::Unbalanced(word.to_owned()));
    }
    let mut out = Vec::new();
    for rest in expand_braces(tail)? {
        for choice in inner.split(',') {
            out.push(format!("{head}{choice}{rest}"));
            if out.len() > MAX_ALTERNATIVES {
                return Err(PatternError::TooManyAlternatives(word.to_owned()));
            }
        }
    }
    Ok(out)
}

fn tokenize(pattern: &str) -> Vec<Token> {
    let bytes = pattern.as_bytes();
    let mut tokens = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(b".**") {
            tokens.push(Token::DotDoubleStar);
            i += 3;
        } else if bytes[i..].starts_with(b"**") {
            // `**.x` also matches "x": match_tokens lets the dot after `**` stand alone.
            tokens.push(Token::DoubleStar);
            i += 2;
        } else if bytes[i] == b'*' {
            tokens.push(Token::Star);
            i += 1;
        } else {
            tokens.push(Token::Byte(bytes[i]));
            i += 1;
        }
    }
    tokens
}

fn match_tokens(tokens: &[Token], tag: &[u8]) -> bool {
    match_counting(tokens, tag, &mut 0)
}

/// The matcher: a simulation of the pattern's NFA, one set of live states per tag byte, so
/// it takes at most `(2 * tokens.len() + 2) * (tag.len() + 1)` steps (added to `steps`):
/// linear in the tag, whatever the wildcards (trying every split point recursively was
/// quadratic with two of them, audit #8).
///
/// States: `i <= n` is "tokens `i..` are still to match" (`n` is the accepting end);
/// `n + 1 + i` is "inside the run of the `**` (after one byte) or `.**` (after its dot) at
/// `i`". The transitions are the tokens' meanings: `Byte(b)` consumes `b`; `*` consumes a
/// non-dot and stays, or steps on; `**` steps on, and when followed by `.` it may also skip
/// that dot (`**.x` matches `x`, only when `**` matched nothing), or consumes a byte and
/// enters its run; `.**` steps on, or consumes a `.` and enters its run. A run consumes
/// anything and may step on to the next token at any point.
fn match_counting(tokens: &[Token], tag: &[u8], steps: &mut u64) -> bool {
    let n = tokens.len();
    let mut nfa = Nfa {
        tokens,
        seen: vec![usize::MAX; 2 * n + 2],
        next: Vec::with_capacity(2 * n + 2),
        pending: Vec::new(),
    };
    let mut live = Vec::with_capacity(2 * n + 2);
    nfa.add(0, 0);
    std::mem::swap(&mut live, &mut nfa.next);
    for (at, &c) in tag.iter().enumerate() {
        // States entered after byte `at` are marked with generation `at + 1`.
        let generation = at + 1;
        for &state in &live {
            *steps += 1;
            let target = match tokens.get(state) {
                Some(Token::Byte(b)) if *b == c => Some(state + 1),
                Some(Token::Star) if c != b'.' => Some(state),
                Some(Token::DoubleStar) => Some(n + 1 + state),
                Some(Token::DotDoubleStar) if c == b'.' => Some(n + 1 + state),
                Some(_) => None,
                // The end accepts nothing more; a dot run consumes anything.
                None if state == n => None,
                None => Some(state),
            };
            if let Some(target) = target {
                nfa.add(target, generation);
            }
        }
        live.clear();
        std::mem::swap(&mut live, &mut nfa.next);
        if live.is_empty() {
            return false;
        }
    }
    live.contains(&n)
}

/// The state sets of [`match_counting`].
struct Nfa<'a> {
    tokens: &'a [Token],
    /// The generation (tag position) at which each state was last added, to add it once.
    seen: Vec<usize>,
    /// The states live after the current byte.
    next: Vec<usize>,
    /// Work list of the epsilon closure.
    pending: Vec<usize>,
}

impl Nfa<'_> {
    /// Adds `state` and every state reachable from it without consuming a byte.
    fn add(&mut self, state: usize, generation: usize) {
        let n = self.tokens.len();
        self.pending.push(state);
        while let Some(s) = self.pending.pop() {
            match self.seen.get_mut(s) {
                Some(g) if *g != generation => *g = generation,
                _ => continue,
            }
            self.next.push(s);
            match self.tokens.get(s) {
                Some(Token::Byte(_)) => {}
                Some(Token::Star | Token::DotDoubleStar) => self.pending.push(s + 1),
                Some(Token::DoubleStar) => {
                    self.pending.push(s + 1);
                    if self.tokens.get(s + 1) == Some(&Token::Byte(b'.')) {
                        self.pending.push(s + 2);
                    }
                }
                None if s == n => {}
                // The run of the `**` or `.**` at `s - n - 1` may end here.
                None => self.pending.push(s - n),
            }
        }
    }
}

/// The compiled routing table: tag -> output indices.
#[derive(Debug, Clone)]
pub struct Router {
    routes: Vec<(Pattern, Vec<usize>)>,
}

impl Router {
    /// Builds a router from `(pattern, output indices)` pairs, in priority order.
    pub fn new(routes: Vec<(Pattern, Vec<usize>)>) -> Router {
        Router { routes }
    }

    /// The outputs of the first route matching `tag`, or `None` when no route matches.
    pub fn route(&self, tag: &str) -> Option<&[usize]> {
        self.routes
            .iter()
            .find(|(p, _)| p.matches(tag))
            .map(|(_, outputs)| outputs.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, tag: &str) -> bool {
        Pattern::parse(pattern).unwrap().matches(tag)
    }

    #[test]
    fn single_star_is_one_part() {
        assert!(m("a.*", "a.b"));
        assert!(!m("a.*", "a.b.c"));
        assert!(!m("a.*", "a"));
        assert!(m("a.b*", "a.bcd"));
        assert!(m("*", "anything"));
        assert!(!m("*", "any.thing"));
    }

    #[test]
    fn double_star_is_zero_or_more_parts() {
        assert!(m("a.**", "a"));
        assert!(m("a.**", "a.b"));
        assert!(m("a.**", "a.b.c"));
        assert!(!m("a.**", "ab"));
        assert!(m("**", ""));
        assert!(m("**", "x.y.z"));
        assert!(m("**.z", "z"));
        assert!(m("**.z", "x.y.z"));
        assert!(!m("**.z", "xz"));
        assert!(m("a.**.z", "a.z"));
        assert!(m("a.**.z", "a.b.c.z"));
    }

    #[test]
    fn alternatives_and_several_patterns() {
        assert!(m("app.{web,db}.*", "app.web.1"));
        assert!(m("app.{web,db}.*", "app.db.1"));
        assert!(!m("app.{web,db}.*", "app.cache.1"));
        assert!(m("a.* b.**", "b.x.y"));
        assert!(m(
            "kube.var.log.containers.**",
            "kube.var.log.containers.p_ns_c-1.log"
        ));
    }

    #[test]
    fn bad_patterns_are_errors() {
        assert_eq!(Pattern::parse("  "), Err(PatternError::Empty));
        assert!(matches!(
            Pattern::parse("a.{b"),
            Err(PatternError::Unbalanced(_))
        ));
        assert!(matches!(
            Pattern::parse("a.b}"),
            Err(PatternError::Unbalanced(_))
        ));
        let many = "{a,b,c,d}{a,b,c,d}{a,b,c,d}{a,b,c,d}{a,b,c,d}";
        assert!(matches!(
            Pattern::parse(many),
            Err(PatternError::TooManyAlternatives(_))
        ));
    }

    /// The recursive matcher this module used before audit #8: the definition of the
    /// semantics, kept as the oracle of `same_as_the_recursive_matcher`.
    fn old_match(tokens: &[Token], tag: &[u8]) -> bool {
        match tokens.split_first() {
            None => tag.is_empty(),
            Some((Token::Byte(b), rest)) => tag.first() == Some(b) && old_match(rest, &tag[1..]),
            Some((Token::Star, rest)) => {
                let limit = tag.iter().position(|&c| c == b'.').unwrap_or(tag.len());
                (0..=limit).any(|n| old_match(rest, &tag[n..]))
            }
            Some((Token::DoubleStar, rest)) => {
                // `**.` also matches with nothing before the dot (Fluentd's `(.*\.)?`).
                if rest.first() == Some(&Token::Byte(b'.')) && old_match(&rest[1..], tag) {
                    return true;
                }
                (0..=tag.len()).any(|n| old_match(rest, &tag[n..]))
            }
            Some((Token::DotDoubleStar, rest)) => {
                old_match(rest, tag)
                    || (tag.first() == Some(&b'.')
                        && (1..=tag.len()).any(|n| old_match(rest, &tag[n..])))
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]
        #[test]
        fn same_as_the_recursive_matcher(
            pattern in "[ab.*]{0,8}",
            tag in "[ab.]{0,10}",
        ) {
            let tokens = tokenize(&pattern);
            proptest::prop_assert_eq!(
                match_tokens(&tokens, tag.as_bytes()),
                old_match(&tokens, tag.as_bytes()),
                "pattern {:?} tag {:?}", pattern, tag
            );
        }
    }

    /// Audit #8: every pattern shape against 1 MiB tags stays within the linear step bound.
    #[test]
    fn long_tags_match_in_linear_steps() {
        let tags = [
            ".error".repeat((1 << 20) / 6) + ".x",
            "a".repeat(1 << 20),
            "a.".repeat(1 << 19),
            ".".repeat(1 << 20),
            ".error".repeat((1 << 20) / 6) + ".log",
        ];
        let patterns = [
            "**.error.**.log",
            "**.**.**.x",
            "*.*.*.*",
            "a*a*a*a*b",
            "**a**a**b",
            "a.**.**.**.b",
            ".**.**.**",
            "**",
            "kube.var.log.containers.**",
            "{**.error,**.warn}.**.log",
        ];
        for pattern in patterns {
            let compiled = Pattern::parse(pattern).unwrap();
            for tag in &tags {
                for tokens in &compiled.alternatives {
                    let mut steps = 0;
                    match_counting(tokens, tag.as_bytes(), &mut steps);
                    let bound = (2 * tokens.len() as u64 + 2) * (tag.len() as u64 + 1);
                    assert!(
                        steps <= bound,
                        "{pattern:?} on a {} byte tag: {steps} steps > {bound}",
                        tag.len()
                    );
                }
            }
        }
        let long = ".error".repeat((1 << 20) / 6);
        assert!(Pattern::parse("**.error.**.log")
            .unwrap()
            .matches(&(long.clone() + ".log")));
        assert!(!Pattern::parse("**.error.**.log")
            .unwrap()
            .matches(&(long + ".x")));
    }

    #[test]
    fn first_matching_route_wins() {
        let router = Router::new(vec![
            (Pattern::parse("kube.**").unwrap(), vec![0, 1]),
            (Pattern::parse("**").unwrap(), vec![2]),
        ]);
        assert_eq!(router.route("kube.x"), Some(&[0, 1][..]));
        assert_eq!(router.route("other"), Some(&[2][..]));
        let none = Router::new(vec![(Pattern::parse("a").unwrap(), vec![0])]);
        assert_eq!(none.route("b"), None);
    }
}
