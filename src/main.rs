//! The `outpost` binary: a thin shim. All logic lives in the workspace crates.
fn main() {
    std::process::exit(outpost_installer::cli::main());
}
