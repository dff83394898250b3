//! Import cycles between a crate's modules, read from its `src/` folder.
//!
//! Nodes are modules by file: `src/foo.rs` or `src/foo/mod.rs` is `foo`,
//! `src/foo/bar.rs` is `foo::bar`, and `lib.rs`/`main.rs` is the crate root
//! (written `crate`). `src/bin/` holds other crates and is not read.
//!
//! An edge A → B is every path in A's code that starts with `crate::`
//! (or `$crate::`), `super::`, `self::` or one of A's child modules, in `use`
//! trees (braces expanded) and inline alike, resolved to the longest prefix
//! that is a module: with `x::y` a module, `crate::x::y::Z` is an edge to
//! `x::y`; with only `x` one, to `x`; `crate::Item` (an item of the root) is
//! an edge to the root. `super::` and `self::` resolve from A's own module.
//! When the item named is one that module brought in by a `use` (`crate::Hub`
//! after `use watch::Hub;` in lib.rs, `crate::etcd::EtcdStore` after
//! `pub use store::EtcdStore;` in etcd/mod.rs), the path is also an edge to
//! where it came from (`watch`, `etcd::store`): that is what A depends on.
//!
//! Not counted: comments (doc comments and their links included) and string
//! literals; any item behind `#[cfg(test)]` (a `mod tests { .. }` block, or a
//! `mod tests;` file, which is then no node): tests may reach anywhere;
//! `mod x;` declarations; `pub(in crate::x)` visibilities; edges from the
//! root, which may name anything; edges from a module's own file (`foo.rs`
//! or `foo/mod.rs`) to its direct children, which it naturally names (to
//! re-export them, say). Edges up to an ancestor, and from a module to a
//! grandchild, do count.
//!
//! [`check`] reports every elementary cycle as a chain, `a -> b -> c -> a`,
//! with the file and line of each edge.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// A module's path inside its crate: `[]` is the root, `["foo", "bar"]` is `foo::bar`.
pub type Module = Vec<String>;

/// The readable name of a module: `crate` for the root, else `foo::bar`.
pub fn name(module: &[String]) -> String {
    if module.is_empty() {
        "crate".to_string()
    } else {
        module.join("::")
    }
}

/// Where one edge is written: a path in `file` on `line` (1-based).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Site {
    pub file: PathBuf,
    pub line: usize,
    /// The path as written, braces expanded: `crate::registry::Registry`.
    pub path: String,
    /// The module whose `use` the path names the item through, when the
    /// edge is to where that module brought it from.
    pub via: Option<Module>,
}

/// A crate's module graph: every module's file, and every counted edge with
/// the places it is written (first one first).
#[derive(Debug, Default)]
pub struct Graph {
    pub files: BTreeMap<Module, PathBuf>,
    pub edges: BTreeMap<Module, BTreeMap<Module, Vec<Site>>>,
}

/// One elementary cycle: `modules[0] -> modules[1] -> .. -> modules[0]`,
/// with the first place each of its edges is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cycle {
    pub modules: Vec<Module>,
    pub sites: Vec<Site>,
}

impl Cycle {
    /// `a -> b -> c -> a`.
    pub fn chain(&self) -> String {
        let mut names: Vec<String> = self.modules.iter().map(|m| name(m)).collect();
        names.push(name(&self.modules[0]));
        names.join(" -> ")
    }
}

/// More cycles than this in one crate are not listed one by one.
const MAX_CYCLES: usize = 200;

/// Reads `src` (a crate's `src/` folder) into its module graph. File paths in
/// the graph are as found under `src`.
pub fn graph(src: &Path) -> std::io::Result<Graph> {
    let mut files = BTreeMap::new();
    collect(src, src, &mut files)?;
    let mut texts = BTreeMap::new();
    let mut test_only = Vec::new();
    for (module, file) in &files {
        let source = std::fs::read_to_string(file)?;
        let code = blank_tests(&blank_comments_and_strings(&source), module, &mut test_only);
        texts.insert(module.clone(), code);
    }
    // A `#[cfg(test)] mod tests;` file is test code: no node, no edges.
    files.retain(|m, _| !test_only.iter().any(|t| m.starts_with(t)));
    texts.retain(|m, _| files.contains_key(m));

    let written: BTreeMap<Module, Vec<Written>> = texts
        .iter()
        .map(|(m, code)| (m.clone(), paths(code)))
        .collect();

    // What each module's `use`s bring in: name -> (module, item) it comes from.
    // Any `use`, not only `pub use`: a plain `use` in the root is seen by the
    // whole crate (`crate::Name`), one elsewhere by the module's descendants.
    type Origin = (Module, Option<String>);
    let mut exports: BTreeMap<&Module, BTreeMap<&str, Origin>> = BTreeMap::new();
    for (module, paths) in &written {
        for w in paths {
            let Some(name) = w.export.as_ref().filter(|_| w.inline.is_empty()) else {
                continue;
            };
            match resolve(&w.path, module, &files) {
                Some(origin) if &origin.0 != module => {
                    exports.entry(module).or_default().insert(name, origin);
                }
                _ => {}
            }
        }
    }

    let mut edges: BTreeMap<Module, BTreeMap<Module, Vec<Site>>> = BTreeMap::new();
    for (from, paths) in &written {
        if from.is_empty() {
            continue; // the root may name anything
        }
        for w in paths {
            let context: Module = from.iter().chain(&w.inline).cloned().collect();
            let Some((to, mut item)) = resolve(&w.path, &context, &files) else {
                continue;
            };
            // The module named, then where its `use` brings the item from (and on).
            let mut targets = vec![(to.clone(), None)];
            let mut at = to;
            while let Some((origin, next)) = item
                .as_deref()
                .and_then(|name| exports.get(&at)?.get(name))
                .filter(|_| targets.len() < 8)
            {
                targets.push((origin.clone(), Some(at.clone())));
                at = origin.clone();
                item = next.clone();
            }
            for (to, via) in targets {
                let own_child = to.len() == from.len() + 1 && to.starts_with(from);
                if &to == from || own_child {
                    continue;
                }
                edges
                    .entry(from.clone())
                    .or_default()
                    .entry(to)
                    .or_default()
                    .push(Site {
                        file: files[from].clone(),
                        line: w.line,
                        path: w.path.join("::"),
                        via,
                    });
            }
        }
    }
    for sites in edges.values_mut().flat_map(|to| to.values_mut()) {
        sites.sort();
    }
    Ok(Graph { files, edges })
}

/// Every elementary cycle of `graph`, each once, starting at its smallest
/// module; at most `MAX_CYCLES` of them (the bool says whether more were left out).
pub fn cycles(graph: &Graph) -> (Vec<Cycle>, bool) {
    let nodes: Vec<&Module> = graph.files.keys().collect();
    let index: BTreeMap<&Module, usize> = nodes.iter().enumerate().map(|(i, m)| (*m, i)).collect();
    let next: Vec<Vec<usize>> = nodes
        .iter()
        .map(|m| {
            graph
                .edges
                .get(*m)
                .map(|to| to.keys().filter_map(|t| index.get(t).copied()).collect())
                .unwrap_or_default()
        })
        .collect();

    struct Walk<'a> {
        next: &'a [Vec<usize>],
        start: usize,
        path: Vec<usize>,
        on_path: Vec<bool>,
        found: Vec<Vec<usize>>,
        more: bool,
    }
    impl Walk<'_> {
        fn from(&mut self, at: usize) {
            for &to in &self.next[at] {
                if self.found.len() >= MAX_CYCLES {
                    self.more = true;
                    return;
                }
                if to == self.start {
                    self.found.push(self.path.clone());
                } else if to > self.start && !self.on_path[to] {
                    self.path.push(to);
                    self.on_path[to] = true;
                    self.from(to);
                    self.on_path[to] = false;
                    self.path.pop();
                }
            }
        }
    }
    let mut walk = Walk {
        next: &next,
        start: 0,
        path: Vec::new(),
        on_path: vec![false; nodes.len()],
        found: Vec::new(),
        more: false,
    };
    for start in 0..nodes.len() {
        walk.start = start;
        walk.path = vec![start];
        walk.on_path[start] = true;
        walk.from(start);
        walk.on_path[start] = false;
    }
    let found = walk
        .found
        .iter()
        .map(|ring| {
            let modules: Vec<Module> = ring.iter().map(|&i| nodes[i].clone()).collect();
            let sites = (0..modules.len())
                .map(|k| {
                    let (a, b) = (&modules[k], &modules[(k + 1) % modules.len()]);
                    graph.edges[a][b][0].clone()
                })
                .collect();
            Cycle { modules, sites }
        })
        .collect();
    (found, walk.more)
}

/// `Ok` when the crate whose sources are in `src` has no import cycle; else
/// every cycle, readable, headed by `label`. File paths are shown relative
/// to `shown_from` where they lie under it.
pub fn check(label: &str, src: &Path, shown_from: &Path) -> Result<(), String> {
    let graph = graph(src).map_err(|e| format!("{label}: cannot read {}: {e}", src.display()))?;
    let (found, more) = cycles(&graph);
    if found.is_empty() {
        return Ok(());
    }
    let mut out = format!(
        "{label}: {}{} import cycle(s) between modules of {}\n",
        found.len(),
        if more { "+" } else { "" },
        src.display()
    );
    let mut caught: Vec<String> = found
        .iter()
        .flat_map(|c| c.modules.iter().map(|m| name(m)))
        .collect();
    caught.sort();
    caught.dedup();
    let _ = writeln!(out, "  modules on a cycle: {}", caught.join(", "));
    for (k, cycle) in found.iter().enumerate() {
        let _ = writeln!(out, "  {}. {}", k + 1, cycle.chain());
        for (i, site) in cycle.sites.iter().enumerate() {
            let from = name(&cycle.modules[i]);
            let to = name(&cycle.modules[(i + 1) % cycle.modules.len()]);
            let file = site.file.strip_prefix(shown_from).unwrap_or(&site.file);
            let via = match &site.via {
                Some(m) => format!(", through the `use` in {}", name(m)),
                None => String::new(),
            };
            let _ = writeln!(
                out,
                "       {from} -> {to}: {}:{} ({}{via})",
                file.display(),
                site.line,
                site.path
            );
        }
    }
    if more {
        let _ = writeln!(
            out,
            "  (more cycles than {MAX_CYCLES}; the rest not listed)"
        );
    }
    Err(out)
}

/// Every `.rs` file under `dir` as its module; `src/bin` is skipped.
fn collect(src: &Path, dir: &Path, out: &mut BTreeMap<Module, PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for path in entries {
        if path.is_dir() {
            if dir == src && path.file_name().is_some_and(|n| n == "bin") {
                continue;
            }
            collect(src, &path, out)?;
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let Ok(rel) = path.strip_prefix(src) else {
            continue;
        };
        let mut module: Module = rel
            .with_extension("")
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        let last = module.last().map(String::as_str);
        if last == Some("mod") || (module.len() == 1 && matches!(last, Some("lib" | "main"))) {
            module.pop();
        }
        // lib.rs and main.rs are both the root; lib.rs is the one shown.
        if module.is_empty() && out.contains_key(&module) {
            if path.file_name().is_some_and(|n| n == "lib.rs") {
                out.insert(module, path);
            }
            continue;
        }
        out.insert(module, path);
    }
    Ok(())
}

/// `source` with comments (line, block, doc) and the insides of string and
/// char literals turned to spaces; line breaks kept, so lines still count.
pub fn blank_comments_and_strings(source: &str) -> String {
    let s: Vec<char> = source.chars().collect();
    let mut out = s.clone();
    let blank = |out: &mut Vec<char>, from: usize, to: usize| {
        for c in &mut out[from..to.min(s.len())] {
            if *c != '\n' {
                *c = ' ';
            }
        }
    };
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        let at = |k: usize| s.get(k).copied().unwrap_or('\0');
        if c == '/' && at(i + 1) == '/' {
            let end = (i..s.len()).find(|&k| s[k] == '\n').unwrap_or(s.len());
            blank(&mut out, i, end);
            i = end;
        } else if c == '/' && at(i + 1) == '*' {
            let (mut depth, mut k) = (1, i + 2);
            while k < s.len() && depth > 0 {
                if s[k] == '/' && at(k + 1) == '*' {
                    depth += 1;
                    k += 2;
                } else if s[k] == '*' && at(k + 1) == '/' {
                    depth -= 1;
                    k += 2;
                } else {
                    k += 1;
                }
            }
            blank(&mut out, i, k);
            i = k;
        } else if c == '"' {
            let mut k = i + 1;
            while k < s.len() && s[k] != '"' {
                k += if s[k] == '\\' { 2 } else { 1 };
            }
            blank(&mut out, i + 1, k);
            i = k + 1;
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{..}'), or a lifetime ('a), left alone.
            if at(i + 1) == '\\' {
                // Past the backslash and the escaped char (`'\''` too).
                let mut k = i + 3;
                while k < s.len() && s[k] != '\'' && s[k] != '\n' {
                    k += 1;
                }
                blank(&mut out, i + 1, k);
                i = k + 1;
            } else if at(i + 2) == '\'' {
                blank(&mut out, i + 1, i + 2);
                i += 3;
            } else {
                i += 1;
            }
        } else if ident(c) {
            // A whole word, so a quote after it is read right: `r"..."`,
            // `r#"..."#` and `br".."` are raw strings, `b"..."` a byte string.
            let mut k = i;
            while k < s.len() && ident(s[k]) {
                k += 1;
            }
            let word: String = s[i..k].iter().collect();
            let mut hashes = 0;
            while at(k + hashes) == '#' {
                hashes += 1;
            }
            if (word == "r" || word == "br") && at(k + hashes) == '"' {
                let body = k + hashes + 1;
                let mut end = body;
                while end < s.len() && !(s[end] == '"' && (1..=hashes).all(|h| at(end + h) == '#'))
                {
                    end += 1;
                }
                blank(&mut out, body, end);
                i = end + 1 + hashes;
            } else {
                i = k;
            }
        } else {
            i += 1;
        }
    }
    out.into_iter().collect()
}

/// `code` (already without comments and strings) with every item behind
/// `#[cfg(test)]` turned to spaces. A `#[cfg(test)] mod name;` adds the
/// module's child `name` to `test_only`; `#![cfg(test)]` blanks the file.
fn blank_tests(code: &str, module: &Module, test_only: &mut Vec<Module>) -> String {
    let mut s: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < s.len() {
        if s[i] != '#' {
            i += 1;
            continue;
        }
        let Some(after) = cfg_test_at(&s, i) else {
            i += 1;
            continue;
        };
        if s[i + 1] == '!' {
            return s.iter().map(|&c| if c == '\n' { c } else { ' ' }).collect();
        }
        // The item: up to a `;` outside brackets, or the `}` closing its body.
        let mut depth = 0i32;
        let mut end = after;
        while end < s.len() {
            match s[end] {
                '{' | '(' | '[' => depth += 1,
                ')' | ']' => depth -= 1,
                '}' => {
                    depth -= 1;
                    if depth <= 0 {
                        end += 1;
                        break;
                    }
                }
                ';' if depth == 0 => {
                    end += 1;
                    break;
                }
                _ => {}
            }
            end += 1;
        }
        let end = end.min(s.len());
        let item: String = s[after..end].iter().collect();
        let words: Vec<&str> = item
            .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ';'))
            .filter(|w| !w.is_empty())
            .collect();
        if let Some(p) = words.iter().position(|w| *w == "mod") {
            if let Some(decl) = words.get(p + 1).and_then(|w| w.strip_suffix(';')) {
                let mut child = module.clone();
                child.push(decl.to_string());
                test_only.push(child);
            }
        }
        for c in &mut s[i..end] {
            if *c != '\n' {
                *c = ' ';
            }
        }
        i = end;
    }
    s.into_iter().collect()
}

/// The end of a `#[cfg(test)]` or `#![cfg(test)]` written at `s[from]`
/// (spaces allowed inside), if one is.
fn cfg_test_at(s: &[char], from: usize) -> Option<usize> {
    let want = if s.get(from + 1) == Some(&'!') {
        "#![cfg(test)]"
    } else {
        "#[cfg(test)]"
    };
    let mut k = from;
    for w in want.chars() {
        while w != '#' && s.get(k).is_some_and(|c| c.is_whitespace()) {
            k += 1;
        }
        if s.get(k) != Some(&w) {
            return None;
        }
        k += 1;
    }
    Some(k)
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Colons,
    Punct(char),
}

fn tokens(code: &str) -> Vec<(Token, usize)> {
    let s: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    while i < s.len() {
        let c = s[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c.is_alphanumeric() || c == '_' || (c == '$' && s.get(i + 1) == Some(&'c')) {
            let start = i;
            i += 1;
            while i < s.len() && (s[i].is_alphanumeric() || s[i] == '_') {
                i += 1;
            }
            let word: String = s[start..i].iter().collect();
            // A raw identifier r#name is the name.
            let word = match word.as_str() {
                "r" if s.get(i) == Some(&'#') => {
                    let from = i + 1;
                    i = from;
                    while i < s.len() && (s[i].is_alphanumeric() || s[i] == '_') {
                        i += 1;
                    }
                    s[from..i].iter().collect()
                }
                _ => word,
            };
            out.push((Token::Word(word), line));
        } else if c == ':' && s.get(i + 1) == Some(&':') {
            out.push((Token::Colons, line));
            i += 2;
        } else {
            out.push((Token::Punct(c), line));
            i += 1;
        }
    }
    out
}

/// One path written in a module's code.
#[derive(Debug, Clone)]
struct Written {
    path: Vec<String>,
    /// The line its last segment is on.
    line: usize,
    /// The inline modules (`mod x { .. }`) it is written in, outermost first:
    /// `super::` and `self::` start from there.
    inline: Vec<String>,
    /// The name a `use` leaf brings into its module (its alias or its last
    /// segment; none for `*` and `_`), by which other modules may name it
    /// through this one: `crate::Name` for a plain `use` in the root, say.
    export: Option<String>,
}

/// Every path in `code` of two segments or more: `use` trees expanded,
/// inline paths (`crate::x::f()`, `super::T`) as written.
fn paths(code: &str) -> Vec<Written> {
    let toks = tokens(code);
    let word = |k: usize| match toks.get(k) {
        Some((Token::Word(w), _)) => Some(w.as_str()),
        _ => None,
    };
    let is = |k: usize, t: &Token| toks.get(k).is_some_and(|(x, _)| x == t);
    let mut out = Vec::new();
    // Inline modules open around `toks[i]`, each with the depth inside its brace.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0;
    let mut i = 0;
    while i < toks.len() {
        let prev_colons = i > 0 && is(i - 1, &Token::Colons);
        match toks[i].0 {
            Token::Punct('{') => depth += 1,
            Token::Punct('}') => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                depth -= 1;
            }
            _ => {}
        }
        let inside = || inline.iter().map(|(m, _)| m.clone()).collect::<Vec<_>>();
        match word(i) {
            Some("mod") if is(i + 2, &Token::Punct('{')) => {
                if let Some(name) = word(i + 1) {
                    inline.push((name.to_string(), depth + 1));
                }
                i += 1;
            }
            Some("use") if !prev_colons => {
                let mut k = i + 1;
                let mut leaves = Vec::new();
                use_tree(&toks, &mut k, Vec::new(), &mut leaves);
                for (path, line, alias) in leaves {
                    let export = match alias {
                        Some(a) if a == "_" => None,
                        Some(a) => Some(a),
                        None => path.last().filter(|l| *l != "*").cloned(),
                    };
                    out.push(Written {
                        path,
                        line,
                        inline: inside(),
                        export,
                    });
                }
                // Past the `;` (or whatever stopped the tree).
                i = k.max(i + 1);
            }
            Some(w) if !prev_colons && is(i + 1, &Token::Colons) => {
                // `pub(in crate::x)` is a visibility, not a use.
                let visibility = i > 0 && word(i - 1) == Some("in");
                let mut path = vec![w.to_string()];
                let mut line = toks[i].1;
                let mut k = i + 1;
                while is(k, &Token::Colons) {
                    match toks.get(k + 1) {
                        Some((Token::Word(next), l)) => {
                            path.push(next.clone());
                            line = *l;
                            k += 2;
                        }
                        _ => break,
                    }
                }
                if !visibility {
                    out.push(Written {
                        path,
                        line,
                        inline: inside(),
                        export: None,
                    });
                }
                i = k;
            }
            _ => i += 1,
        }
    }
    out
}

/// A use tree's leaf: path, line, alias.
type Leaf = (Vec<String>, usize, Option<String>);

/// Reads one use tree at `toks[*k]` under `prefix` into `leaves`; `*k` ends
/// past what it read (the closing `;` included at the top level).
fn use_tree(toks: &[(Token, usize)], k: &mut usize, prefix: Vec<String>, leaves: &mut Vec<Leaf>) {
    let mut path = prefix;
    let mut line = toks.get(*k).map_or(0, |t| t.1);
    if toks.get(*k).is_some_and(|t| t.0 == Token::Colons) {
        *k += 1; // a leading `::` (an extern crate)
    }
    loop {
        match toks.get(*k) {
            Some((Token::Word(w), l)) => {
                // `{self, ..}` is the prefix itself.
                if w != "self" || path.is_empty() {
                    path.push(w.clone());
                }
                line = *l;
                *k += 1;
            }
            Some((Token::Punct('{'), _)) => {
                *k += 1;
                loop {
                    match toks.get(*k) {
                        None => return,
                        Some((Token::Punct('}'), _)) => {
                            *k += 1;
                            break;
                        }
                        Some((Token::Punct(','), _)) => *k += 1,
                        Some(_) => {
                            let before = *k;
                            use_tree(toks, k, path.clone(), leaves);
                            if *k == before {
                                *k += 1;
                            }
                        }
                    }
                }
                finish(toks, k);
                return;
            }
            Some((Token::Punct('*'), l)) => {
                path.push("*".into());
                line = *l;
                *k += 1;
                break;
            }
            _ => break,
        }
        if toks.get(*k).is_some_and(|t| t.0 == Token::Colons) {
            *k += 1;
        } else {
            break;
        }
    }
    let mut alias = None;
    if matches!(toks.get(*k), Some((Token::Word(w), _)) if w == "as") {
        if let Some((Token::Word(a), _)) = toks.get(*k + 1) {
            alias = Some(a.clone());
        }
        *k += 2;
    }
    if !path.is_empty() {
        leaves.push((path, line, alias));
    }
    finish(toks, k);
}

/// Steps over a `;` ending a use statement.
fn finish(toks: &[(Token, usize)], k: &mut usize) {
    if toks.get(*k).is_some_and(|t| t.0 == Token::Punct(';')) {
        *k += 1;
    }
}

/// The module a path written in `from` names: the longest prefix of it that
/// is a module of `files`, and the segment after that prefix (the item
/// named there, if any). `crate::`, `$crate::`, `super::` and `self::` paths,
/// and paths starting at one of `from`'s child modules; `None` for any other
/// (an extern crate, a local item) and for a `super` above the root.
fn resolve(
    path: &[String],
    from: &Module,
    files: &BTreeMap<Module, PathBuf>,
) -> Option<(Module, Option<String>)> {
    let mut full: Module = from.clone();
    let mut rest = path;
    match path[0].as_str() {
        "crate" | "$crate" => {
            full.clear();
            rest = &path[1..];
        }
        "self" => rest = &path[1..],
        "super" => {
            while rest.first().is_some_and(|s| s == "super") {
                full.pop()?;
                rest = &rest[1..];
            }
        }
        child => {
            let mut child_path = from.clone();
            child_path.push(child.to_string());
            if !files.contains_key(&child_path) {
                return None;
            }
        }
    }
    full.extend(rest.iter().filter(|s| *s != "*").cloned());
    let whole = full.clone();
    while !files.contains_key(&full) {
        full.pop()?;
    }
    let item = whole.get(full.len()).cloned();
    Some((full, item))
}
