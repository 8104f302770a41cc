//! docs/ENVIRONMENT.md against the code: every variable of the registry
//! (`outpost_core::env::ALL`) and every `OUTPOST_*` name the sources of any crate mention is
//! documented there, and the page names no `OUTPOST_*` variable the code never mentions.
use std::collections::BTreeSet;
use std::path::Path;

fn names_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("OUTPOST_") {
        let start = i + pos;
        let mut end = start + "OUTPOST_".len();
        while end < b.len()
            && (b[end].is_ascii_uppercase() || b[end].is_ascii_digit() || b[end] == b'_')
        {
            end += 1;
        }
        let name = text[start..end].trim_end_matches('_');
        if name.len() > "OUTPOST_".len() {
            out.insert(name.to_string());
        }
        i = end;
    }
    out
}

fn sources(dir: &Path, out: &mut String) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            if !["target", "fixtures"].contains(&p.file_name().unwrap().to_str().unwrap()) {
                sources(&p, out);
            }
        } else if p.extension().is_some_and(|x| x == "rs" || x == "sh") {
            out.push_str(&std::fs::read_to_string(&p).unwrap());
        }
    }
}

#[test]
fn environment_page_matches_the_code() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/ENVIRONMENT.md")).unwrap();
    let documented = names_in(&doc);
    for v in outpost_core::env::ALL {
        assert!(
            doc.contains(&format!("`{v}`")),
            "{v} (core/src/env.rs) is not in docs/ENVIRONMENT.md"
        );
    }
    let mut code = String::new();
    // Every top-level folder but the docs and build output: a crate added later is scanned
    // without anyone remembering to list it.
    for e in std::fs::read_dir(root).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if p.is_dir() && !["target", "docs", ".git"].contains(&name.as_str()) {
            sources(&p, &mut code);
        }
    }
    // Names in the code that are not environment variables anyone sets.
    let not_variables = [
        "OUTPOST_BIN",            // a shell variable inside install.sh
        "OUTPOST_EMBEDDED",       // the prefix of install.sh's publish-time placeholders
        "OUTPOST_ENROLL_KEY_OLD", // a look-alike in the secrets-file scrub table test
        "OUTPOST_HUB",            // a look-alike in the bootstrap key-parsing test
        "OUTPOST_PARAM_LEVEL",    // one OUTPOST_PARAM_<NAME> in the pack tests
        "OUTPOST_PARAM_LOUD",     // … in the runs planning tests
        "OUTPOST_PARAM_TONE",     // … in the runs e2e pack
        "OUTPOST_TOKEN",          // a look-alike in the pack tests' reserved-names table
    ];
    let used: BTreeSet<String> = names_in(&code)
        .into_iter()
        .filter(|n| !not_variables.contains(&n.as_str()))
        .collect();
    let undocumented: Vec<_> = used.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "read by the code, missing from docs/ENVIRONMENT.md: {undocumented:?}"
    );
    let stale: Vec<_> = documented.difference(&used).collect();
    assert!(
        stale.is_empty(),
        "in docs/ENVIRONMENT.md, never read by the code: {stale:?}"
    );
}
