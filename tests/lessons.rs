//! The lessons in `lessons/` against the code: snippets, citations, transcripts, the state
//! diagram and the RFC index must all match what is really in `src/` and `transcripts/`.
//!
//! With `SMTPLAB_BLESS=1` the generated parts (snippet blocks, the Mermaid block and
//! `lessons/rfc-index.md`) are rewritten from the code instead of failing, so code can move
//! without hand-editing lessons. Citations and coverage are never blessed: a person fixes those.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

const BLESS_VAR: &str = "SMTPLAB_BLESS";
const BLESS_HINT: &str = "run SMTPLAB_BLESS=1 cargo test --test lessons";
const SNIPPET_MARK: &str = "<!-- snippet: ";
const MERMAID_MARK: &str = "<!-- mermaid: smtplab states --mermaid -->";
/// `<!-- mermaid: smtplab states ARGS -->`: any diagram the binary draws.
const MERMAID_PREFIX: &str = "<!-- mermaid: smtplab states ";
const POP3_LESSON: &str = "lessons/14-pop3.md";
const RFC_INDEX: &str = "lessons/rfc-index.md";
const STATE_LESSON: &str = "lessons/06-the-state-machine.md";

/// Blessing rewrites lesson files; tests that read them wait for the writer.
static FILES: Mutex<()> = Mutex::new(());

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn blessing() -> bool {
    std::env::var(BLESS_VAR).is_ok_and(|v| v == "1")
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Every `lessons/*.md` file as (path relative to the root, text), sorted by name.
fn lesson_files() -> Vec<(String, String)> {
    let dir = root().join("lessons");
    let mut files: Vec<(String, String)> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".md"))
        .map(|name| {
            let text = read(&dir.join(&name));
            (format!("lessons/{name}"), text)
        })
        .collect();
    files.sort();
    files
}

/// The numbered lessons (`lessons/NN-*.md`): the ones that count for coverage.
fn numbered_lessons() -> Vec<(String, String)> {
    lesson_files()
        .into_iter()
        .filter(|(path, _)| {
            let name = path.trim_start_matches("lessons/");
            name.len() > 3 && name.as_bytes()[..2].iter().all(u8::is_ascii_digit)
        })
        .collect()
}

/// Every `.rs` file under `src/`, as a path relative to `src/` (`smtp/session.rs`), sorted.
/// The walk is recursive, so a module moved into a folder stays covered by every check.
fn modules() -> Vec<String> {
    let mut names = Vec::new();
    collect_modules(&root().join("src"), "", &mut names);
    names.sort();
    names
}

fn collect_modules(dir: &Path, prefix: &str, names: &mut Vec<String>) {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if path.is_dir() {
            collect_modules(&path, &format!("{prefix}{name}/"), names);
        } else if name.ends_with(".rs") {
            names.push(format!("{prefix}{name}"));
        }
    }
}

fn fail_if_any(problems: &[String], what: &str) {
    assert!(
        problems.is_empty(),
        "{what}: {} problem(s):\n  - {}\n",
        problems.len(),
        problems.join("\n  - ")
    );
}

// ---------------------------------------------------------------------------------------------
// Citations: `src/file.rs`, `src/file.rs::Type::name`, `transcripts/NN-name.txt`
// ---------------------------------------------------------------------------------------------

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/')
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every `prefix...suffix` path in `text` that starts a word (not inside a longer path).
fn paths_with(text: &str, prefix: &str, suffix: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (at, _) in text.match_indices(prefix) {
        if text[..at].chars().next_back().is_some_and(is_path_char) {
            continue;
        }
        let len = text[at..]
            .find(|c| !is_path_char(c))
            .unwrap_or(text.len() - at);
        // `src/smtp/session.rs.` at the end of a sentence: the dot is not part of the path.
        let path = text[at..at + len].trim_end_matches('.');
        if path.ends_with(suffix) && path.len() > prefix.len() + suffix.len() {
            found.push((at, path.to_string()));
        }
    }
    found
}

/// A code citation: the file, and the `::` segments after it (maybe none).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct CodeCitation {
    file: String,
    symbols: Vec<String>,
}

impl std::fmt::Display for CodeCitation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.file)?;
        for symbol in &self.symbols {
            write!(f, "::{symbol}")?;
        }
        Ok(())
    }
}

fn code_citations(text: &str) -> Vec<CodeCitation> {
    paths_with(text, "src/", ".rs")
        .into_iter()
        .map(|(at, file)| {
            let mut rest = &text[at + file.len()..];
            let mut symbols = Vec::new();
            while let Some(after) = rest.strip_prefix("::") {
                let len = after.find(|c| !is_ident_char(c)).unwrap_or(after.len());
                if len == 0 {
                    break;
                }
                symbols.push(after[..len].to_string());
                rest = &after[len..];
            }
            CodeCitation { file, symbols }
        })
        .collect()
}

fn transcript_citations(text: &str) -> Vec<String> {
    paths_with(text, "transcripts/", ".txt")
        .into_iter()
        .map(|(_, path)| path)
        .collect()
}

/// Does `source` declare `name` (as an item, an enum variant or a struct field)? A textual check.
fn declares(source: &str, name: &str) -> bool {
    const ITEMS: [&str; 8] = [
        "fn", "struct", "enum", "const", "trait", "type", "mod", "static",
    ];
    let followed_by_boundary = |text: &str| !text.starts_with(is_ident_char);
    source.lines().any(|line| {
        let mut line = line.trim_start();
        for visibility in ["pub(crate) ", "pub "] {
            line = line.strip_prefix(visibility).unwrap_or(line);
        }
        let item = ITEMS.iter().any(|keyword| {
            line.strip_prefix(keyword)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|rest| rest.strip_prefix(name))
                .is_some_and(followed_by_boundary)
        });
        // `Connected,` / `MailGiven { envelope },` / `Helo(String),` / `max_size: u64,`
        let member = line.strip_prefix(name).is_some_and(|rest| {
            rest.starts_with([',', '(', ':']) || rest.starts_with(" {") || rest.is_empty()
        }) && !line.starts_with("//");
        item || member
    })
}

#[test]
fn every_cited_source_file_and_symbol_exists() {
    let _guard = FILES.lock().unwrap_or_else(|e| e.into_inner());
    let mut problems = Vec::new();
    for (lesson, text) in lesson_files() {
        let cited: BTreeSet<CodeCitation> = code_citations(&text).into_iter().collect();
        for citation in cited {
            let path = root().join(&citation.file);
            let Ok(source) = fs::read_to_string(&path) else {
                problems.push(format!(
                    "{lesson} cites {citation}, but {} does not exist: fix the path in the lesson",
                    citation.file
                ));
                continue;
            };
            for symbol in &citation.symbols {
                if !declares(&source, symbol) {
                    problems.push(format!(
                        "{lesson} cites {citation}, but {} declares no `{symbol}` \
                         (fn, struct, enum, const, trait, type, mod, variant or field): \
                         fix the citation or the name",
                        citation.file
                    ));
                }
            }
        }
    }
    fail_if_any(&problems, "stale code citations in lessons/");
}

#[test]
fn every_module_is_taught_by_a_lesson() {
    let _guard = FILES.lock().unwrap_or_else(|e| e.into_inner());
    let cited: BTreeSet<String> = numbered_lessons()
        .iter()
        .flat_map(|(_, text)| code_citations(text))
        .map(|citation| citation.file)
        .collect();
    let problems: Vec<String> = modules()
        .into_iter()
        // `lib.rs` and each folder's `mod.rs` are maps of the files below them, not a step of
        // the message's way; the files they list are the ones a lesson must teach.
        .filter(|name| name != "lib.rs" && !name.ends_with("mod.rs"))
        .map(|name| format!("src/{name}"))
        .filter(|path| !cited.contains(path))
        .map(|path| {
            format!(
                "{path} is cited by no numbered lesson: explain it in the lesson that follows \
                 the message through it (and add it to the table in lessons/README.md)"
            )
        })
        .collect();
    fail_if_any(&problems, "modules without a lesson");
}

#[test]
fn every_cited_transcript_exists() {
    let _guard = FILES.lock().unwrap_or_else(|e| e.into_inner());
    let mut problems = Vec::new();
    for (lesson, text) in lesson_files() {
        let cited: BTreeSet<String> = transcript_citations(&text).into_iter().collect();
        for path in cited {
            if !root().join(&path).is_file() {
                problems.push(format!(
                    "{lesson} cites {path}, which does not exist: record it, or fix the name"
                ));
            }
        }
    }
    fail_if_any(&problems, "missing transcripts");
}

#[test]
fn every_transcript_is_cited_by_a_lesson() {
    let _guard = FILES.lock().unwrap_or_else(|e| e.into_inner());
    let dir = root().join("transcripts");
    let Ok(entries) = fs::read_dir(&dir) else {
        return; // no transcripts yet: nothing can be left uncited
    };
    let cited: BTreeSet<String> = numbered_lessons()
        .iter()
        .flat_map(|(_, text)| transcript_citations(text))
        .collect();
    let mut problems: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".txt"))
        .map(|name| format!("transcripts/{name}"))
        .filter(|path| !cited.contains(path))
        .map(|path| {
            format!("{path} is cited by no numbered lesson: quote it in a \"Try it\" section")
        })
        .collect();
    problems.sort();
    fail_if_any(&problems, "transcripts no lesson uses");
}

#[test]
fn links_between_lessons_exist() {
    let _guard = FILES.lock().unwrap_or_else(|e| e.into_inner());
    let mut problems = Vec::new();
    for (lesson, text) in lesson_files() {
        for (at, _) in text.match_indices("](") {
            let target = &text[at + 2..];
            let target = &target[..target.find([')', '#']).unwrap_or(target.len())];
            let local = !target.contains(':') && !target.is_empty();
            if local && !root().join("lessons").join(target).exists() {
                problems.push(format!("{lesson} links to {target}, which does not exist"));
            }
        }
    }
    fail_if_any(&problems, "broken links in lessons/");
}

// ---------------------------------------------------------------------------------------------
// One `step`: what lessons 6 and 14 promise about where the state changes
// ---------------------------------------------------------------------------------------------

/// Lessons 6 and 14 say `step` is the one place where a session's state changes: every
/// assignment of `self.state` in these files is inside the `step` snippet, and there is one.
#[test]
fn only_step_assigns_the_state() {
    let mut problems = Vec::new();
    for file in [
        "src/smtp/session.rs",
        "src/pop3/session.rs",
        "src/imap/session.rs",
    ] {
        let source = read(&root().join(file));
        let Some(step) = anchor(&source, "step") else {
            problems.push(format!("{file}: no `// ANCHOR: step` region"));
            continue;
        };
        for pattern in [
            "self.state =",
            "replace(&mut self.state",
            "take(&mut self.state",
        ] {
            let (all, in_step) = (
                source.matches(pattern).count(),
                step.matches(pattern).count(),
            );
            if all != in_step {
                problems.push(format!("{file}: `{pattern}` outside step ({all} in all)"));
            }
        }
        if step.matches("self.state =").count() != 1 {
            problems.push(format!("{file}: step should assign the state exactly once"));
        }
    }
    fail_if_any(&problems, "state changes outside Session::step");
}

// ---------------------------------------------------------------------------------------------
// Snippets and the Mermaid diagram: generated from the code, blessable
// ---------------------------------------------------------------------------------------------

/// The text between `// ANCHOR: name` and `// ANCHOR_END: name`, nested marker lines removed.
fn anchor(source: &str, name: &str) -> Option<String> {
    let start = format!("// ANCHOR: {name}");
    let end = format!("// ANCHOR_END: {name}");
    let mut lines = source.lines().skip_while(|l| l.trim() != start);
    lines.next()?;
    let mut body = String::new();
    for line in lines {
        if line.trim() == end {
            return Some(body);
        }
        let marker = line.trim_start();
        if !marker.starts_with("// ANCHOR:") && !marker.starts_with("// ANCHOR_END:") {
            body.push_str(line);
            body.push('\n');
        }
    }
    None
}

/// One generated block in a lesson: where its body lines are, and what they should be.
struct Block {
    label: String,
    body_start: usize,
    body_end: usize,
    expected: Result<String, String>,
}

/// Find `marker` lines followed by a ```` ```lang ```` fence; `expect` computes each body.
fn blocks(
    lines: &[&str],
    lesson: &str,
    is_marker: impl Fn(&str) -> Option<String>,
    lang: &str,
    expect: impl Fn(&str) -> Result<String, String>,
    problems: &mut Vec<String>,
) -> Vec<Block> {
    let mut found = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(label) = is_marker(line) else {
            continue;
        };
        let fence = format!("```{lang}");
        if lines.get(i + 1).map(|l| l.trim_end()) != Some(fence.as_str()) {
            problems.push(format!(
                "{lesson}, {label}: the marker must be followed at once by a {fence} fence"
            ));
            continue;
        }
        let Some(close) = lines[i + 2..].iter().position(|l| l.trim_end() == "```") else {
            problems.push(format!(
                "{lesson}, {label}: the {fence} block is never closed"
            ));
            continue;
        };
        found.push(Block {
            expected: expect(&label),
            label,
            body_start: i + 2,
            body_end: i + 2 + close,
        });
    }
    found
}

fn snippet_blocks(lines: &[&str], lesson: &str, problems: &mut Vec<String>) -> Vec<Block> {
    let marker = |line: &str| {
        line.trim()
            .strip_prefix(SNIPPET_MARK)
            .and_then(|rest| rest.strip_suffix("-->"))
            .map(|label| label.trim().to_string())
    };
    let expect = |label: &str| {
        let (file, name) = label
            .split_once('#')
            .ok_or_else(|| format!("`{label}` should be `src/file.rs#anchor`"))?;
        let source = fs::read_to_string(root().join(file))
            .map_err(|_| format!("{file} does not exist: fix the snippet marker"))?;
        anchor(&source, name).ok_or_else(|| {
            format!("{file} has no `// ANCHOR: {name}` ... `// ANCHOR_END: {name}` region: add the markers around the code, or fix the name")
        })
    };
    blocks(lines, lesson, marker, "rust", expect, problems)
}

/// The diagram `smtplab states ARGS` prints (`--mermaid` for SMTP, `--pop3` for POP3).
fn mermaid_from_binary(args: &str) -> Result<String, String> {
    let output = Command::new(env!("CARGO_BIN_EXE_smtplab"))
        .arg("states")
        .args(args.split_whitespace())
        .output()
        .map_err(|e| format!("cannot run smtplab states {args}: {e}"))?;
    if !output.status.success() {
        return Err(format!("smtplab states {args} failed: {}", output.status));
    }
    String::from_utf8(output.stdout).map_err(|_| "smtplab states printed non-UTF-8".to_string())
}

/// `<!-- mermaid: smtplab states ARGS -->` before a ```mermaid block: the diagram the binary
/// draws from the state table.
fn mermaid_blocks(lines: &[&str], lesson: &str, problems: &mut Vec<String>) -> Vec<Block> {
    let marker = |line: &str| {
        line.trim()
            .strip_prefix(MERMAID_PREFIX)
            .and_then(|rest| rest.strip_suffix("-->"))
            .map(|args| args.trim().to_string())
    };
    blocks(
        lines,
        lesson,
        marker,
        "mermaid",
        mermaid_from_binary,
        problems,
    )
}

/// Compare each block with its expected body; when blessing, return the rewritten text.
fn check_blocks(
    lesson: &str,
    lines: &[&str],
    blocks: Vec<Block>,
    problems: &mut Vec<String>,
) -> Option<String> {
    let mut out: Vec<String> = Vec::new();
    let mut next = 0;
    let mut changed = false;
    for block in blocks {
        let expected = match block.expected {
            Ok(text) => text,
            Err(why) => {
                problems.push(format!("{lesson}, {}: {why}", block.label));
                continue;
            }
        };
        let actual: String = lines[block.body_start..block.body_end]
            .iter()
            .map(|l| format!("{l}\n"))
            .collect();
        if actual == expected {
            continue;
        }
        changed = true;
        if !blessing() {
            problems.push(format!(
                "{lesson}, {}: the block differs from the code; {BLESS_HINT}",
                block.label
            ));
            continue;
        }
        out.extend(lines[next..block.body_start].iter().map(|l| l.to_string()));
        out.extend(expected.lines().map(str::to_string));
        next = block.body_end;
    }
    if !changed || !blessing() {
        return None;
    }
    out.extend(lines[next..].iter().map(|l| l.to_string()));
    Some(out.join("\n") + "\n")
}

#[test]
fn snippets_and_the_diagram_match_the_code() {
    let _guard = FILES.lock().unwrap_or_else(|e| e.into_inner());
    let mut problems = Vec::new();
    let (mut saw_mermaid, mut saw_pop3) = (false, false);
    for (lesson, text) in lesson_files() {
        let lines: Vec<&str> = text.lines().collect();
        let mut found = snippet_blocks(&lines, &lesson, &mut problems);
        let diagrams = mermaid_blocks(&lines, &lesson, &mut problems);
        saw_mermaid |= lesson == STATE_LESSON && diagrams.iter().any(|d| d.label == "--mermaid");
        saw_pop3 |= lesson == POP3_LESSON && diagrams.iter().any(|d| d.label == "--pop3");
        found.extend(diagrams);
        found.sort_by_key(|b| b.body_start);
        if let Some(new_text) = check_blocks(&lesson, &lines, found, &mut problems) {
            fs::write(root().join(&lesson), new_text)
                .unwrap_or_else(|e| panic!("cannot bless {lesson}: {e}"));
            eprintln!("blessed {lesson}");
        }
    }
    if !saw_mermaid {
        problems.push(format!(
            "{STATE_LESSON} must embed the state diagram: a line `{MERMAID_MARK}` followed by a ```mermaid block"
        ));
    }
    if !saw_pop3 {
        problems.push(format!(
            "{POP3_LESSON} must embed the POP3 diagram: a line `{MERMAID_PREFIX}--pop3 -->` followed by a ```mermaid block"
        ));
    }
    fail_if_any(&problems, "lesson snippets out of date");
}

// ---------------------------------------------------------------------------------------------
// The `Standards:` lines and the generated RFC index
// ---------------------------------------------------------------------------------------------

/// `RFC 5321 §4.1.1.2` or `RFC 5321 Appendix F.3`, split for sorting.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Section {
    rfc: u32,
    /// 0 for a `§` section, 1 for an appendix: appendices sort after the body.
    appendix: u8,
    /// An appendix letter (as a number), then the numbered parts.
    parts: Vec<u32>,
    text: String,
}

fn parse_section(rfc: u32, item: &str) -> Result<Section, String> {
    let (appendix, rest) = if let Some(rest) = item.strip_prefix('§') {
        (0, rest)
    } else if let Some(rest) = item.strip_prefix("Appendix ") {
        (1, rest)
    } else {
        return Err(format!("`{item}` is neither `§x.y` nor `Appendix X`"));
    };
    let mut parts = Vec::new();
    for (i, part) in rest.split('.').enumerate() {
        let number = match part.parse::<u32>() {
            Ok(n) if appendix == 0 || i > 0 => n,
            _ if appendix == 1
                && i == 0
                && part.len() == 1
                && part.chars().all(|c| c.is_ascii_uppercase()) =>
            {
                u32::from(part.as_bytes()[0])
            }
            _ => return Err(format!("`{item}`: `{part}` is not a section number")),
        };
        parts.push(number);
    }
    Ok(Section {
        rfc,
        appendix,
        parts,
        text: format!("RFC {rfc} {item}"),
    })
}

/// The sections of a `Standards:` line. An item that is only `§x.y` (or `Appendix X`)
/// continues the RFC number of the item before it.
fn parse_standards(line: &str) -> Result<Vec<Section>, String> {
    let mut rfc: Option<u32> = None;
    let mut sections = Vec::new();
    for item in line.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let section = match item.strip_prefix("RFC ") {
            Some(rest) => {
                let (number, section) = rest
                    .split_once(' ')
                    .ok_or_else(|| format!("`{item}` names no section: write `RFC {rest} §x.y`"))?;
                let number = number
                    .parse()
                    .map_err(|_| format!("`{item}`: `{number}` is not an RFC number"))?;
                rfc = Some(number);
                section
            }
            None => item,
        };
        let number = rfc.ok_or_else(|| format!("`{item}` comes before any `RFC NNNN`"))?;
        sections.push(parse_section(number, section)?);
    }
    if sections.is_empty() {
        return Err("the line names no section".to_string());
    }
    Ok(sections)
}

/// The text after `Standards:` in a file's `//!` header. The line may wrap: each following
/// `//!` line that starts with spaces (`//!   RFC 3463 §3`) continues it.
fn standards_line(source: &str) -> Option<String> {
    let mut header = source.lines().take_while(|l| l.starts_with("//!"));
    let first = header.find_map(|l| {
        l.trim_start_matches("//!")
            .trim()
            .strip_prefix("Standards:")
    })?;
    let mut line = first.trim().to_string();
    for more in header.map_while(|l| l.strip_prefix("//!  ")) {
        line.push(' ');
        line.push_str(more.trim());
    }
    Some(line)
}

/// Each module's sections, from the `//! Standards:` line of its header.
fn standards() -> (BTreeMap<String, Vec<Section>>, Vec<String>) {
    let mut by_module = BTreeMap::new();
    let mut problems = Vec::new();
    for name in modules() {
        let path = format!("src/{name}");
        let source = read(&root().join(&path));
        let line = standards_line(&source);
        // A map (`lib.rs`, a folder's `mod.rs`) or `main.rs` implements no section itself.
        if line.as_deref().map(str::trim) == Some("none") {
            continue;
        }
        match line.as_deref().map(parse_standards) {
            None => problems.push(format!(
                "{path}: the `//!` header has no `Standards:` line; add one such as \
                 `//! Standards: RFC 5321 §4.1.1`"
            )),
            Some(Err(why)) => problems.push(format!(
                "{path}: bad `Standards:` line: {why} (the form is `RFC 5321 §4.1.1, §4.2` or \
                 `RFC 5321 Appendix F.3`)"
            )),
            Some(Ok(sections)) => {
                by_module.insert(path, sections);
            }
        }
    }
    (by_module, problems)
}

/// `lessons/rfc-index.md` as it should be.
fn rfc_index(by_module: &BTreeMap<String, Vec<Section>>) -> String {
    let mut index: BTreeMap<Section, BTreeSet<&str>> = BTreeMap::new();
    for (module, sections) in by_module {
        for section in sections {
            index.entry(section.clone()).or_default().insert(module);
        }
    }
    let mut out = String::from(
        "# RFC index\n\n\
         Which module implements which RFC section, gathered from the `Standards:` line in the \
         `//!` header of every `src/*.rs` file. The lessons in [README.md](README.md) explain the \
         modules; the RFC texts are the originals.\n\n\
         This file is generated by `tests/lessons.rs`; do not edit it by hand. After changing a \
         `Standards:` line, run `SMTPLAB_BLESS=1 cargo test --test lessons`.\n\n",
    );
    let mut rfc = None;
    for (section, modules) in &index {
        if rfc != Some(section.rfc) {
            if rfc.is_some() {
                out.push('\n');
            }
            rfc = Some(section.rfc);
            out.push_str(&format!("## RFC {}\n\n", section.rfc));
        }
        let modules: Vec<String> = modules.iter().map(|m| format!("`{m}`")).collect();
        out.push_str(&format!("- {} → {}\n", section.text, modules.join(", ")));
    }
    out
}

#[test]
fn every_module_names_its_standards_and_the_rfc_index_is_current() {
    let _guard = FILES.lock().unwrap_or_else(|e| e.into_inner());
    let (by_module, mut problems) = standards();
    let expected = rfc_index(&by_module);
    let path = root().join(RFC_INDEX);
    let actual = fs::read_to_string(&path).unwrap_or_default();
    if actual != expected {
        if blessing() {
            fs::write(&path, &expected).unwrap_or_else(|e| panic!("cannot bless {RFC_INDEX}: {e}"));
            eprintln!("blessed {RFC_INDEX}");
        } else {
            problems.push(format!(
                "{RFC_INDEX} does not match the `Standards:` lines in src/; {BLESS_HINT}"
            ));
        }
    }
    let written = if blessing() { expected } else { actual };
    for (module, sections) in &by_module {
        for section in sections {
            let line_start = format!("- {} → ", section.text);
            let listed = written
                .lines()
                .any(|l| l.starts_with(&line_start) && l.contains(&format!("`{module}`")));
            if !listed {
                problems.push(format!(
                    "{RFC_INDEX} does not list {} for {module}; {BLESS_HINT}",
                    section.text
                ));
            }
        }
    }
    fail_if_any(&problems, "Standards lines and the RFC index");
}

// ---------------------------------------------------------------------------------------------
// The checker's own rules, on small inputs
// ---------------------------------------------------------------------------------------------

#[test]
fn checker_finds_citations_and_declarations() {
    let text =
        "See `src/smtp/session.rs::Session::command` and src/net/line.rs. Not /x/src/a.rs nor src/*.rs; \
                try transcripts/01-seed-session.txt, not my-transcripts/x.txt.";
    let cited = code_citations(text);
    assert_eq!(cited.len(), 2, "{cited:?}");
    assert_eq!(
        cited[0].to_string(),
        "src/smtp/session.rs::Session::command"
    );
    assert_eq!(cited[1].to_string(), "src/net/line.rs");
    assert_eq!(
        transcript_citations(text),
        vec!["transcripts/01-seed-session.txt".to_string()]
    );
    let source = "pub enum State {\n    Connected,\n    MailGiven { envelope: Envelope },\n}\n\
                  pub const TRANSITIONS: &[T] = &[];\n    fn command(&mut self) {}\n    max_size: u64,\n";
    for name in [
        "State",
        "Connected",
        "MailGiven",
        "TRANSITIONS",
        "command",
        "max_size",
    ] {
        assert!(declares(source, name), "{name}");
    }
    for name in ["Stat", "comma", "Envelope", "TRANSITION"] {
        assert!(!declares(source, name), "{name}");
    }
}

#[test]
fn checker_reads_standards_lines() {
    let sections = parse_standards("RFC 5321 §4.1.1, §4.2, RFC 5321 Appendix F.3, RFC 1870 §6")
        .expect("a good line");
    let texts: Vec<&str> = sections.iter().map(|s| s.text.as_str()).collect();
    assert_eq!(
        texts,
        [
            "RFC 5321 §4.1.1",
            "RFC 5321 §4.2",
            "RFC 5321 Appendix F.3",
            "RFC 1870 §6"
        ]
    );
    assert!(parse_standards("RFC 5321").is_err());
    assert!(parse_standards("§4.1").is_err());
    assert!(parse_standards("RFC 5321 section 4").is_err());
    assert!(sections[0] < sections[1] && sections[1] < sections[2]);
    let mut with_nine = [
        parse_section(5321, "§4.10").unwrap(),
        parse_section(5321, "§4.9").unwrap(),
    ];
    with_nine.sort();
    assert_eq!(
        with_nine[0].text, "RFC 5321 §4.9",
        "sections sort by number, not text"
    );
}

#[test]
fn a_wrapped_standards_line_is_read_whole() {
    let source = "//! What it does.\n//!\n//! Standards: RFC 5321 §4.1.1, §4.2,\n//!   RFC 3463 §3\n\nuse x;\n";
    assert_eq!(
        standards_line(source).as_deref(),
        Some("RFC 5321 §4.1.1, §4.2, RFC 3463 §3")
    );
    let sections = parse_standards(&standards_line(source).unwrap()).unwrap();
    let texts: Vec<&str> = sections.iter().map(|s| s.text.as_str()).collect();
    assert_eq!(texts, ["RFC 5321 §4.1.1", "RFC 5321 §4.2", "RFC 3463 §3"]);
    let unwrapped = "//! Standards: RFC 5321 §4.2\n//! - a list item after it\n";
    assert_eq!(standards_line(unwrapped).as_deref(), Some("RFC 5321 §4.2"));
}

#[test]
fn checker_extracts_anchors() {
    let source = "a\n    // ANCHOR: outer\n    x\n    // ANCHOR: inner\n    y\n    // ANCHOR_END: inner\n    // ANCHOR_END: outer\n";
    assert_eq!(anchor(source, "outer").as_deref(), Some("    x\n    y\n"));
    assert_eq!(anchor(source, "inner").as_deref(), Some("    y\n"));
    assert_eq!(anchor(source, "missing"), None);
}

// ---------------------------------------------------------------------------------------------
// EHLO lists: checked against the real binary, blessable
// ---------------------------------------------------------------------------------------------

/// `<!-- ehlo: OPTIONS -->` before a fence: the EHLO lists in the block are what the binary,
/// started with OPTIONS, answers. `starttls` among the options asks after STARTTLS, inside TLS.
const EHLO_MARK: &str = "<!-- ehlo:";
const INSIDE_TLS: &str = "starttls";
/// A line of only this (after the prefix) inside a list says "some keywords left out here".
const ELISION: &str = "...";

/// What to ask the binary for one list: its options, its host name, the client's name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct EhloRequest {
    options: Vec<String>,
    host: String,
    client: String,
}

/// One EHLO list in a lesson: lines `start..end` of the file, each `prefix` + a reply line.
#[derive(Debug)]
struct EhloList {
    start: usize,
    end: usize,
    prefix: String,
    shown: Vec<String>,
    request: EhloRequest,
}

/// `250-HOST greets CLIENT` after any prefix (`S: `, `[S1] S: `): the first line of a list.
fn ehlo_first_line(line: &str) -> Option<(String, String, String)> {
    let at = line.find("250-")?;
    let mut words = line[at + 4..].split_whitespace();
    let (host, greets, client) = (words.next()?, words.next()?, words.next()?);
    (greets == "greets").then(|| (line[..at].to_string(), host.to_string(), client.to_string()))
}

/// Every EHLO list in `lines`, with the options of the marker before its code block. A list
/// whose block has no marker is a problem: it could drift.
fn ehlo_lists(lines: &[&str], file: &str, problems: &mut Vec<String>) -> Vec<EhloList> {
    let mut found = Vec::new();
    let mut options: Option<Vec<String>> = None;
    let mut in_block = false;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if line.trim_start().starts_with("```") {
            if in_block {
                options = None;
            } else {
                // The marker is the line before the fence, or the one before it when another
                // marker (`<!-- session: ... -->` in LAB.md) sits between.
                options = lines[i.saturating_sub(2)..i]
                    .iter()
                    .filter_map(|l| l.trim().strip_prefix(EHLO_MARK))
                    .find_map(|rest| rest.strip_suffix("-->"))
                    .map(|rest| rest.split_whitespace().map(str::to_string).collect());
            }
            in_block = !in_block;
            i += 1;
            continue;
        }
        let Some((prefix, host, client)) = in_block.then(|| ehlo_first_line(line)).flatten() else {
            i += 1;
            continue;
        };
        let start = i;
        let mut shown = vec![line[prefix.len()..].to_string()];
        i += 1;
        while let Some(next) = lines.get(i).and_then(|l| l.strip_prefix(prefix.as_str())) {
            if !(next.starts_with("250-") || next.starts_with("250 ") || next == ELISION) {
                break;
            }
            shown.push(next.to_string());
            i += 1;
            if next.starts_with("250 ") {
                break;
            }
        }
        match &options {
            Some(options) => found.push(EhloList {
                start,
                end: i,
                prefix,
                shown,
                request: EhloRequest {
                    options: options.clone(),
                    host,
                    client,
                },
            }),
            None => problems.push(format!(
                "{file}:{}: an EHLO list in a block without a `{EHLO_MARK} OPTIONS -->` line \
                 before its fence; add one (the options the server runs with) so the list is \
                 checked against the binary",
                start + 1
            )),
        }
    }
    found
}

/// Do the lines shown match the real reply? All of them, in order; a list with `...` may leave
/// lines out, but what it shows must be there, in that order.
fn ehlo_matches(shown: &[String], actual: &[String]) -> bool {
    if !shown.iter().any(|l| l == ELISION) {
        return shown == actual;
    }
    let mut rest = actual.iter();
    shown
        .iter()
        .filter(|l| *l != ELISION)
        .all(|l| rest.any(|a| a == l))
}

/// Check (and with `bless` rewrite) the EHLO lists of one file; `ask` runs the binary.
fn check_ehlo_lists(
    file: &str,
    text: &str,
    bless: bool,
    ask: &mut impl FnMut(&EhloRequest) -> Result<Vec<String>, String>,
    problems: &mut Vec<String>,
) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out: Vec<String> = Vec::new();
    let mut next = 0;
    for list in ehlo_lists(&lines, file, problems) {
        let actual = match ask(&list.request) {
            Ok(actual) => actual,
            Err(why) => {
                problems.push(format!("{file}:{}: {why}", list.start + 1));
                continue;
            }
        };
        if ehlo_matches(&list.shown, &actual) {
            continue;
        }
        if !bless || list.shown.iter().any(|l| l == ELISION) {
            problems.push(format!(
                "{file}:{}: the EHLO list differs from what `smtplab {}` answers:\n      {}\n    \
                 The binary says:\n      {}\n    {BLESS_HINT}",
                list.start + 1,
                list.request.options.join(" "),
                list.shown.join("\n      "),
                actual.join("\n      ")
            ));
            continue;
        }
        out.extend(lines[next..list.start].iter().map(|l| l.to_string()));
        out.extend(actual.iter().map(|l| format!("{}{l}", list.prefix)));
        next = list.end;
    }
    if next == 0 {
        return None;
    }
    out.extend(lines[next..].iter().map(|l| l.to_string()));
    Some(out.join("\n") + "\n")
}

/// The binary started in `dir` as host `host` with `options` on a port of its own; its banner.
fn start_for_lesson(
    dir: &common::TempDir,
    host: &str,
    options: &[&String],
) -> (common::Killed, String) {
    let (child, stdout) = common::spawn_collecting(
        Command::new(env!("CARGO_BIN_EXE_smtplab"))
            .current_dir(dir.path())
            .args(["--listen", "127.0.0.1:0", "--hostname", host])
            .args(options)
            .stderr(std::process::Stdio::null()),
    );
    stdout.wait_for("Try: telnet");
    (child, stdout.text())
}

/// The EHLO reply of the real binary: started with the request's options on a port of its
/// own, asked `EHLO client` (inside TLS after STARTTLS when the options say `starttls`).
fn ehlo_from_binary(request: &EhloRequest) -> Result<Vec<String>, String> {
    use std::io::{BufReader, Write};
    let dir = common::TempDir::new("lessons-ehlo");
    let inside_tls = request.options.iter().any(|o| o == INSIDE_TLS);
    let options: Vec<&String> = request
        .options
        .iter()
        .filter(|o| *o != INSIDE_TLS)
        .collect();
    let (_child, banner) = start_for_lesson(&dir, &request.host, &options);
    let addr = *common::banner_listeners(&banner)
        .get("SMTP")
        .ok_or("no SMTP listener in the banner")?;
    let tcp = common::connect_with_timeouts(addr);
    let mut reader = BufReader::new(tcp);
    let ask = |reader: &mut BufReader<_>, line: &str| -> Result<common::Reply, String> {
        let stream: &mut std::net::TcpStream = reader.get_mut();
        stream
            .write_all(format!("{line}\r\n").as_bytes())
            .map_err(|e| e.to_string())?;
        common::read_reply(reader).ok_or_else(|| format!("no reply to {line}"))
    };
    common::read_reply(&mut reader).ok_or("no greeting")?;
    let ehlo = format!("EHLO {}", request.client);
    let reply = if inside_tls {
        ask(&mut reader, &ehlo)?;
        ask(&mut reader, "STARTTLS")?;
        let tls = common::tls_connector()
            .connect(common::TLS_HOST, reader.into_inner())
            .map_err(|e| format!("TLS: {e}"))?;
        let mut tls = BufReader::new(tls);
        tls.get_mut()
            .write_all(format!("{ehlo}\r\n").as_bytes())
            .map_err(|e| e.to_string())?;
        common::read_reply(&mut tls).ok_or("no EHLO reply inside TLS")?
    } else {
        ask(&mut reader, &ehlo)?
    };
    let last = reply.lines.len() - 1;
    Ok(reply
        .lines
        .iter()
        .enumerate()
        .map(|(i, text)| format!("{}{}{text}", reply.code, if i == last { ' ' } else { '-' }))
        .collect())
}

/// The README and the lessons: every file a student reads an EHLO list in.
fn student_files() -> Vec<(String, String)> {
    let mut files = lesson_files();
    files.push(("README.md".to_string(), read(&root().join("README.md"))));
    files
}

#[test]
fn every_ehlo_list_comes_from_the_binary() {
    let _guard = FILES.lock().unwrap_or_else(|e| e.into_inner());
    let mut cache: BTreeMap<EhloRequest, Result<Vec<String>, String>> = BTreeMap::new();
    let mut ask = |request: &EhloRequest| {
        cache
            .entry(request.clone())
            .or_insert_with(|| ehlo_from_binary(request))
            .clone()
    };
    let mut problems = Vec::new();
    for (file, text) in student_files() {
        if let Some(new_text) = check_ehlo_lists(&file, &text, blessing(), &mut ask, &mut problems)
        {
            fs::write(root().join(&file), new_text)
                .unwrap_or_else(|e| panic!("cannot bless {file}: {e}"));
            eprintln!("blessed {file}");
        }
    }
    fail_if_any(&problems, "EHLO lists in README.md and lessons/");
}

#[test]
fn the_ehlo_check_fails_on_a_changed_list() {
    let lesson = |list: &str| {
        format!(
            "Connect:\n\n<!-- ehlo: --max-size 1000 -->\n```text\n220 vm ready\nEHLO client.example\n{list}MAIL FROM:<a@b>\n```\n"
        )
    };
    let mut ask = |request: &EhloRequest| ehlo_from_binary(request);
    let actual = ehlo_from_binary(&EhloRequest {
        options: vec!["--max-size".into(), "1000".into()],
        host: "vm".into(),
        client: "client.example".into(),
    })
    .expect("the binary answers EHLO");
    let good: String = actual.iter().map(|l| format!("{l}\n")).collect();
    let mut problems = Vec::new();
    assert_eq!(
        check_ehlo_lists("good.md", &lesson(&good), false, &mut ask, &mut problems),
        None
    );
    assert!(problems.is_empty(), "{problems:#?}");

    // One keyword changed, one left out, one added: each is caught, and `...` is no excuse for
    // a keyword the server does not send.
    let changed = good.replace("250-SIZE 1000", "250-SIZE 10485760");
    let dropped = good.replace("250-PIPELINING\n", "");
    let added = good.replace("250 HELP", "250-XFOO\n250 HELP");
    let elided = format!("{}...\n250-XFOO\n250 HELP\n", actual[0]);
    for (name, list) in [
        ("changed", changed),
        ("dropped", dropped),
        ("added", added),
        ("elided", elided),
    ] {
        let mut problems = Vec::new();
        check_ehlo_lists(name, &lesson(&list), false, &mut ask, &mut problems);
        assert_eq!(problems.len(), 1, "{name}: {problems:#?}");
        assert!(problems[0].contains("differs from what `smtplab --max-size 1000` answers"));
    }
    // A list in a block without a marker cannot be checked, so it is a problem too.
    let unmarked = lesson(&good).replace("<!-- ehlo: --max-size 1000 -->\n", "");
    let mut problems = Vec::new();
    check_ehlo_lists("unmarked.md", &unmarked, false, &mut ask, &mut problems);
    assert!(
        problems[0].contains("without a `<!-- ehlo:"),
        "{problems:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Start-up banners: checked against the real binary
// ---------------------------------------------------------------------------------------------

/// `<!-- banner: OPTIONS -->` before a ```text fence: the block is the banner the binary prints
/// when started with OPTIONS in an empty directory. Ports and spacing may differ (the test
/// cannot take 2525); every word must be the same.
const BANNER_MARK: &str = "<!-- banner:";

/// The banner as the lesson shows it: the binary's, with the lesson's addresses in place of
/// the ones it really bound, and runs of spaces made one.
fn banner_as_shown(actual: &str, shown: &str) -> Vec<String> {
    let (real, doc) = (
        common::banner_listeners(actual),
        common::banner_listeners(shown),
    );
    let mut text = actual.to_string();
    for (role, addr) in &real {
        if let Some(wanted) = doc.get(role) {
            text = text
                .replace(&addr.to_string(), &wanted.to_string())
                .replace(
                    &format!("telnet {} {}", addr.ip(), addr.port()),
                    &format!("telnet {} {}", wanted.ip(), wanted.port()),
                );
        }
    }
    words_per_line(&text)
}

fn words_per_line(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

#[test]
fn start_up_banners_come_from_the_binary() {
    let _guard = FILES.lock().unwrap_or_else(|e| e.into_inner());
    let mut problems = Vec::new();
    let mut seen = 0;
    for (file, text) in student_files() {
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let Some(options) = line
                .trim()
                .strip_prefix(BANNER_MARK)
                .and_then(|r| r.strip_suffix("-->"))
            else {
                continue;
            };
            seen += 1;
            let Some(close) = lines[i + 2..].iter().position(|l| l.trim() == "```") else {
                problems.push(format!(
                    "{file}:{}: the banner block is never closed",
                    i + 1
                ));
                continue;
            };
            let shown = lines[i + 2..i + 2 + close].join("\n");
            let host = shown
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("smtplab listening as "))
                .and_then(|l| l.strip_suffix(':'))
                .unwrap_or("localhost");
            let options: Vec<String> = options.split_whitespace().map(str::to_string).collect();
            let dir = common::TempDir::new("lessons-banner");
            let (_child, actual) =
                start_for_lesson(&dir, host, &options.iter().collect::<Vec<_>>());
            if banner_as_shown(&actual, &shown) != words_per_line(&shown) {
                problems.push(format!(
                    "{file}:{}: the banner differs from what the binary prints:\n{shown}\n  The binary says:\n{actual}",
                    i + 1
                ));
            }
        }
    }
    assert!(seen > 0, "no `{BANNER_MARK} -->` banner in the lessons");
    fail_if_any(&problems, "start-up banners in README.md and lessons/");
}
