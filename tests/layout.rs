//! The source layout's two rules, checked on every test run so that they do
//! not erode one convenient import at a time:
//!
//! 1. Layers only import downwards: `clock` and `mutex` are leaves;
//!    `schedule` reads the clock; `due_index` (the index layout) is pure; `config` sits on them; `store` on `config`; `sweep` on `store`;
//!    `metrics` and `auth` beside the sweep; `daemon` on all of those; the
//!    binary (`main.rs`, `cli/`) on top. A module naming a module of its own
//!    layer or above (through `crate::`) is a circle in the making.
//! 2. No source file grows past the size a newcomer reads in one sitting.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Each library module and the layer it sits on; a module may use only
/// modules on lower layers.
const LAYERS: &[(&str, u8)] = &[
    ("clock", 0),
    ("mutex", 0),
    ("due_index", 1),
    ("schedule", 1),
    ("config", 2),
    ("logging", 3),
    ("store", 3),
    ("sweep", 4),
    ("auth", 5),
    ("metrics", 5),
    ("daemon", 6),
];

/// Lines a source file may have, unit tests included: the issue's "about
/// 400", with room for a file's tests.
const MAX_LINES: usize = 450;

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The top-level module a file under `src/` belongs to (`None` for the
/// crate root and the binary).
fn module_of(path: &Path) -> Option<String> {
    let rel = path.strip_prefix(src()).unwrap();
    let first = rel.components().next()?.as_os_str().to_str()?.to_owned();
    let name = first.strip_suffix(".rs").unwrap_or(&first).to_owned();
    (!matches!(name.as_str(), "lib" | "main" | "cli")).then_some(name)
}

/// The crate modules a file names through `crate::<module>`.
fn uses(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in text.lines() {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            found.push(name);
        }
    }
    found
}

#[test]
fn layers_only_import_downwards() {
    let layer: BTreeMap<&str, u8> = LAYERS.iter().copied().collect();
    let mut files = Vec::new();
    sources(&src(), &mut files);
    let mut wrong = Vec::new();
    for file in &files {
        let Some(module) = module_of(file) else {
            continue;
        };
        let Some(&own) = layer.get(module.as_str()) else {
            wrong.push(format!("{}: module {module} has no layer", file.display()));
            continue;
        };
        for used in uses(&std::fs::read_to_string(file).unwrap()) {
            if used == module {
                continue;
            }
            match layer.get(used.as_str()) {
                Some(&theirs) if theirs < own => {}
                _ => wrong.push(format!(
                    "{}: {module} (layer {own}) uses crate::{used}",
                    file.display()
                )),
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn no_source_file_is_longer_than_a_sitting() {
    let mut files = Vec::new();
    sources(&src(), &mut files);
    let long: Vec<String> = files
        .iter()
        .filter_map(|file| {
            let lines = std::fs::read_to_string(file).unwrap().lines().count();
            (lines > MAX_LINES).then(|| format!("{}: {lines} lines", file.display()))
        })
        .collect();
    assert!(
        long.is_empty(),
        "files over {MAX_LINES} lines:\n{}",
        long.join("\n")
    );
}
