//! Which files are tailed: `[input] paths` globs minus `exclude` globs.
//!
//! Kubernetes puts every container log in one flat directory (`/var/log/containers/*.log`,
//! symlinks into `/var/log/pods/...`), so a pattern is a fixed directory plus a wildcard file
//! name; wildcards in directory parts are rejected at validation rather than half supported.
//! Matching is done here (a few dozen lines) instead of with a glob crate: the directory is
//! listed once per rescan and each name is matched, which is all the forwarder needs. An
//! exclude pattern with a `/` is matched against the whole path (directory joined with the
//! name), one without against the file name only.

use std::path::{Path, PathBuf};

/// A pattern that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// `[` without `]`.
    #[error("unclosed character class in {0:?}")]
    UnclosedClass(String),
    /// A wildcard outside the last path component.
    #[error("wildcards are only supported in the file name, not in directories: {0:?}")]
    WildcardInDirectory(String),
    /// Nothing to match.
    #[error("empty pattern")]
    Empty,
}

/// A shell-style wildcard pattern: `*` (any run of characters but `/`), `?` (one character but
/// `/`), `[abc]`, `[a-z]`, `[!a-z]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    tokens: Vec<Token>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(char),
    Any,
    Star,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl Glob {
    /// Parses a pattern.
    pub fn parse(pattern: &str) -> Result<Glob, PatternError> {
        if pattern.is_empty() {
            return Err(PatternError::Empty);
        }
        let mut tokens = Vec::new();
        let mut chars = pattern.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '*' => {
                    if tokens.last() != Some(&Token::Star) {
                        tokens.push(Token::Star);
                    }
                }
                '?' => tokens.push(Token::Any),
                '[' => {
                    let mut negated = false;
                    if matches!(chars.peek(), Some('!') | Some('^')) {
                        negated = true;
                        chars.next();
                    }
                    let mut ranges = Vec::new();
                    let mut first = true;
                    loop {
                        let Some(c) = chars.next() else {
                            return Err(PatternError::UnclosedClass(pattern.to_owned()));
                        };
                        if c == ']' && !first {
                            break;
                        }
                        first = false;
                        if chars.peek() == Some(&'-') {
                            let mut look = chars.clone();
                            look.next();
                            match look.peek() {
                                Some(&end) if end != ']' => {
                                    chars.next();
                                    chars.next();
                                    ranges.push((c, end));
                                    continue;
                                }
                                _ => {}
                            }
                        }
                        ranges.push((c, c));
                    }
                    tokens.push(Token::Class { negated, ranges });
                }
                c => tokens.push(Token::Literal(c)),
            }
        }
        Ok(Glob { tokens })
    }

    /// Whether the pattern has any wildcard.
    pub fn has_wildcards(&self) -> bool {
        self.tokens.iter().any(|t| !matches!(t, Token::Literal(_)))
    }

    /// Whether `text` matches the whole pattern.
    pub fn matches(&self, text: &str) -> bool {
        let text: Vec<char> = text.chars().collect();
        // Iterative matching with one backtrack point per star (linear-ish, no recursion).
        let (mut t, mut p) = (0usize, 0usize);
        let mut star: Option<(usize, usize)> = None;
        while t < text.len() {
            if p < self.tokens.len() {
                match &self.tokens[p] {
                    Token::Star => {
                        star = Some((p, t));
                        p += 1;
                        continue;
                    }
                    tok if one(tok, text[t]) => {
                        t += 1;
                        p += 1;
                        continue;
                    }
                    _ => {}
                }
            }
            match star {
                Some((sp, st)) if text[st] != '/' => {
                    star = Some((sp, st + 1));
                    p = sp + 1;
                    t = st + 1;
                }
                _ => return false,
            }
        }
        self.tokens[p..].iter().all(|t| *t == Token::Star)
    }
}

fn one(tok: &Token, c: char) -> bool {
    match tok {
        Token::Literal(l) => *l == c,
        Token::Any => c != '/',
        Token::Class { negated, ranges } => {
            let hit = ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi);
            c != '/' && hit != *negated
        }
        Token::Star => true,
    }
}

/// One `[input] paths` entry: a directory and a file-name pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    /// The directory (as written; relative paths are resolved against the working directory).
    pub dir: PathBuf,
    /// The file-name pattern.
    pub name: Glob,
}

impl PathPattern {
    /// Parses `dir/pattern`.
    pub fn parse(pattern: &str) -> Result<PathPattern, PatternError> {
        let (dir, name) = match pattern.rsplit_once('/') {
            Some(("", name)) => ("/", name),
            Some((dir, name)) => (dir, name),
            None => (".", pattern),
        };
        if dir.contains(['*', '?', '[']) {
            return Err(PatternError::WildcardInDirectory(pattern.to_owned()));
        }
        Ok(PathPattern {
            dir: PathBuf::from(dir),
            name: Glob::parse(name)?,
        })
    }
}

/// The file set: patterns and exclusions, resolved against a base directory.
#[derive(Debug, Clone)]
pub struct Discovery {
    patterns: Vec<PathPattern>,
    /// Patterns, and whether each is matched against the whole path (it has a `/`).
    exclude: Vec<(Glob, bool)>,
    base: PathBuf,
}

impl Discovery {
    /// Builds the set from validated config values; `base` resolves relative directories.
    pub fn new(paths: &[String], exclude: &[String], base: &Path) -> Result<Self, PatternError> {
        Ok(Discovery {
            patterns: paths
                .iter()
                .map(|p| PathPattern::parse(p))
                .collect::<Result<_, _>>()?,
            exclude: exclude
                .iter()
                .map(|p| Ok((Glob::parse(p)?, p.contains('/'))))
                .collect::<Result<_, PatternError>>()?,
            base: base.to_path_buf(),
        })
    }

    /// The directories listed (absolute), for inotify watches.
    pub fn dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = self.patterns.iter().map(|p| self.abs(&p.dir)).collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }

    fn abs(&self, dir: &Path) -> PathBuf {
        if dir.is_absolute() {
            dir.to_path_buf()
        } else {
            normalize(&self.base.join(dir))
        }
    }

    /// Lists every matching regular file (symlinks followed), as absolute paths, sorted.
    /// A directory that does not exist (yet) yields nothing.
    pub fn scan(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for pattern in &self.patterns {
            let dir = self.abs(&pattern.dir);
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                if !pattern.name.matches(name) {
                    continue;
                }
                let path = dir.join(name);
                if self.is_excluded(&path) {
                    continue;
                }
                // Follows symlinks: /var/log/containers/* are links into /var/log/pods.
                if std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
                    out.push(path);
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// Whether `path` matches an exclude pattern.
    pub fn is_excluded(&self, path: &Path) -> bool {
        let Some(text) = path.to_str() else {
            return true;
        };
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or(text);
        self.exclude
            .iter()
            .any(|(g, whole)| g.matches(if *whole { text } else { name }))
    }
}

/// Removes `.` components and resolves `..` lexically (no symlink resolution), so tags built
/// from paths are stable.
pub fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match() {
        let g = Glob::parse("*.log").unwrap();
        assert!(g.matches("a.log"));
        assert!(g.matches(".log"));
        assert!(!g.matches("a.log.1"));
        assert!(!g.matches("dir/a.log"));
        let g = Glob::parse("app-?_[a-c]*.log*").unwrap();
        assert!(g.matches("app-1_b-x.log"));
        assert!(g.matches("app-1_c.log.20240101"));
        assert!(!g.matches("app-1_d.log"));
        let g = Glob::parse("[!x]*").unwrap();
        assert!(g.matches("a"));
        assert!(!g.matches("xa"));
        let g = Glob::parse("/var/log/containers/*_kube-system_*").unwrap();
        assert!(g.matches("/var/log/containers/coredns-1_kube-system_coredns-abc.log"));
        assert!(!g.matches("/var/log/containers/web_default_web-abc.log"));
        assert!(Glob::parse("[abc").is_err());
        assert!(Glob::parse("").is_err());
        let g = Glob::parse("a*b*c").unwrap();
        assert!(g.matches("aXbYc"));
        assert!(g.matches("abc"));
        assert!(!g.matches("aXbY"));
    }

    #[test]
    fn path_patterns_split() {
        let p = PathPattern::parse("/var/log/containers/*.log").unwrap();
        assert_eq!(p.dir, PathBuf::from("/var/log/containers"));
        assert!(p.name.matches("x.log"));
        assert!(PathPattern::parse("/var/*/x.log").is_err());
        assert_eq!(PathPattern::parse("x.log").unwrap().dir, PathBuf::from("."));
    }

    #[test]
    fn scans_with_exclusions_and_symlinks() {
        let d = tempfile::tempdir().unwrap();
        let pods = d.path().join("pods");
        let containers = d.path().join("containers");
        std::fs::create_dir_all(&pods).unwrap();
        std::fs::create_dir_all(&containers).unwrap();
        std::fs::write(pods.join("0.log"), b"x\n").unwrap();
        std::os::unix::fs::symlink(pods.join("0.log"), containers.join("a_ns_c-1.log")).unwrap();
        std::os::unix::fs::symlink(pods.join("gone.log"), containers.join("dangling.log")).unwrap();
        std::fs::write(containers.join("b_kube-system_c-2.log"), b"y\n").unwrap();
        std::fs::write(containers.join("c.txt"), b"z\n").unwrap();
        let pattern = format!("{}/*.log", containers.display());
        let disc = Discovery::new(&[pattern], &["*_kube-system_*".into()], d.path()).unwrap();
        assert_eq!(disc.scan(), vec![containers.join("a_ns_c-1.log")]);
        let disc = Discovery::new(&["containers/*.log".into()], &[], d.path()).unwrap();
        assert_eq!(disc.scan().len(), 2);
        assert_eq!(disc.dirs(), vec![containers.clone()]);
    }
}
