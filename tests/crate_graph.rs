//! docs/ARCHITECTURE.md's crate graph is the workspace's: every normal dependency between
//! workspace crates that `cargo metadata` reports is in the table and every one in the table
//! is real, each crate sits in the folder the table names, and no crate depends on a crate
//! in its own or a higher layer.
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

struct Row {
    folder: String,
    layer: u32,
    deps: BTreeSet<String>,
}

fn documented(root: &Path) -> BTreeMap<String, Row> {
    let doc = std::fs::read_to_string(root.join("docs/ARCHITECTURE.md")).unwrap();
    let start = doc.find("<!-- crate-graph").expect("crate-graph marker");
    let end = doc
        .find("<!-- /crate-graph -->")
        .expect("crate-graph end marker");
    let tick = |s: &str| -> Vec<String> {
        s.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    };
    let mut rows = BTreeMap::new();
    for line in doc[start..end].lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        assert_eq!(cells.len(), 4, "crate-graph row needs 4 cells: {line}");
        let name = tick(cells[0]).remove(0);
        let folder = tick(cells[1]).remove(0);
        let layer = cells[2]
            .parse()
            .unwrap_or_else(|_| panic!("layer of {name}"));
        let deps = tick(cells[3]).into_iter().collect();
        assert!(
            rows.insert(
                name.clone(),
                Row {
                    folder,
                    layer,
                    deps
                }
            )
            .is_none(),
            "{name} twice"
        );
    }
    rows
}

#[test]
fn architecture_crate_graph_matches_cargo_metadata() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(root)
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages = meta["packages"].as_array().unwrap();
    let names: BTreeSet<String> = packages
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    let doc = documented(root);
    assert_eq!(
        doc.keys().cloned().collect::<BTreeSet<_>>(),
        names,
        "the table's crates are not the workspace's"
    );
    for p in packages {
        let name = p["name"].as_str().unwrap();
        let row = &doc[name];
        let real: BTreeSet<String> = p["dependencies"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["kind"].is_null() && names.contains(d["name"].as_str().unwrap()))
            .map(|d| d["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(row.deps, real, "{name}: documented vs real dependencies");
        let manifest = Path::new(p["manifest_path"].as_str().unwrap());
        let folder = manifest.parent().unwrap().strip_prefix(root).unwrap();
        let want = row.folder.trim_end_matches('/');
        assert!(
            folder == Path::new(if want == "." { "" } else { want }),
            "{name} lives in {folder:?}, the table says {}",
            row.folder
        );
        for d in &row.deps {
            assert!(
                doc[d].layer < row.layer,
                "{name} (layer {}) depends on {d} (layer {}): a crate may only depend on lower layers",
                row.layer,
                doc[d].layer
            );
        }
    }
}
