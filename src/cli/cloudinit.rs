//! `outpost cloud-init render`: cloud-init user-data that installs a pinned, verified outpost
//! release on a fresh host and enrolls it with the hub (docs/HETZNER.md). The rendering is
//! `outpost_cloudinit`, shared with `outpost-hub keys create --cloud-init`.
use clap::{Args, Subcommand};
use outpost_cloudinit as cloudinit;
use outpost_core::env;
use outpost_core::exit;
use outpost_installer::error::{Error, Result};
use outpost_release::Want;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Subcommand)]
pub enum CloudInitCommand {
    /// Print #cloud-config user-data that installs a pinned, verified release and enrolls the
    /// host (the key lands only in the 0600 secrets file; the user-data is itself a secret)
    Render(RenderArgs),
}

#[derive(Debug, Args)]
pub struct RenderArgs {
    /// Hub URL the host enrolls with
    #[arg(long, value_name = "URL", env = env::HUB_URL)]
    pub hub: String,
    /// Single-use enrollment key from `outpost-hub keys create` (prefer the
    /// OUTPOST_ENROLL_KEY environment variable: a flag shows up in `ps` and shell history)
    #[arg(long, value_name = "KEY", env = env::ENROLL_KEY, hide_env_values = true)]
    pub enroll_key: String,
    /// Release root the host downloads from, or github:OWNER/REPO (default: the hub, which
    /// serves its releases)
    #[arg(long, value_name = "URL", env = env::RELEASE_URL)]
    pub release_url: Option<String>,
    /// Pin this exact version (its sha256 comes from the signed manifest)
    #[arg(long, value_name = "X.Y.Z", conflicts_with = "channel")]
    pub version: Option<semver::Version>,
    /// Pin the channel's current version (default: stable)
    #[arg(long, value_name = "CHANNEL", value_parser = ["stable", "beta"])]
    pub channel: Option<String>,
    /// Target of the host
    #[arg(long, value_name = "TRIPLE", default_value = "x86_64-unknown-linux-musl",
          value_parser = outpost_release::TARGETS)]
    pub target: String,
    /// Trust this minisign public key (base64 line) as well as the compiled-in ones; repeat
    /// for several (OUTPOST_RELEASE_PUBKEYS: one per line)
    #[arg(long = "release-pubkey", value_name = "KEY", env = env::RELEASE_PUBKEYS, value_delimiter = '\n')]
    pub release_pubkeys: Vec<String>,
    /// Service mode on the host
    #[arg(long, value_name = "MODE", default_value = "system", value_parser = ["system", "user"])]
    pub mode: String,
    /// System mode: the service user (default: a new `outpost` system user); user mode: the
    /// existing user whose service it is (required)
    #[arg(long, value_name = "USER")]
    pub run_as: Option<String>,
    /// PEM CA for the hub and release host: used to fetch the release here, and written to the
    /// host (/etc/outpost/ca.pem) for curl and outpost
    #[arg(long, value_name = "PEM", env = env::CA_FILE)]
    pub ca_file: Option<PathBuf>,
    /// Write the user-data to FILE (mode 0600) instead of stdout
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// Resolve the release and render the user-data for `a` (no output written).
pub fn render(a: &RenderArgs) -> Result<(String, cloudinit::Pinned)> {
    let want = match (&a.version, &a.channel) {
        (Some(v), _) => Want::Exact(v.clone()),
        (None, c) => Want::Channel(c.clone().unwrap_or_else(|| "stable".into())),
    };
    let params = cloudinit::prepare(&cloudinit::Request {
        hub_url: &a.hub,
        enroll_key: Some(&a.enroll_key),
        release_url: a.release_url.as_deref(),
        release_pubkeys: &a.release_pubkeys,
        want,
        target: &a.target,
        mode: cloudinit::parse_mode(&a.mode)?,
        run_as: a.run_as.as_deref(),
        ca_file: a.ca_file.as_deref(),
    })?;
    let text = cloudinit::render(&params)?;
    Ok((text, params.release))
}

fn write_secret(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io("write", path, e))?;
    // An existing file keeps its mode on open: make it 0600 before the key goes in.
    use std::os::unix::fs::PermissionsExt;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io("set the mode of", path, e))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io("write", path, e))
}

pub fn run(command: CloudInitCommand, out: &mut dyn Write) -> Result<i32> {
    match command {
        CloudInitCommand::Render(a) => {
            let (text, pinned) = render(&a)?;
            match &a.output {
                Some(path) => {
                    write_secret(path, &text)?;
                    eprintln!(
                        "wrote {} ({} bytes, mode 0600): outpost {} for {}, sha256 {}",
                        path.display(),
                        text.len(),
                        pinned.version,
                        pinned.target,
                        pinned.sha256
                    );
                }
                None => {
                    out.write_all(text.as_bytes()).map_err(|e| {
                        Error::failed(
                            format!("cannot write the user-data: {e}"),
                            "check stdout is writable",
                        )
                    })?;
                    eprintln!(
                        "outpost {} for {} pinned (sha256 {}); the user-data holds the enrollment key: keep it secret",
                        pinned.version, pinned.target, pinned.sha256
                    );
                }
            }
            Ok(exit::OK)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct T {
        #[command(subcommand)]
        c: CloudInitCommand,
    }

    fn parse(argv: &[&str]) -> std::result::Result<T, clap::Error> {
        T::try_parse_from(std::iter::once("t").chain(argv.iter().copied()))
    }

    #[test]
    fn flags() {
        let ok = parse(&[
            "render",
            "--hub",
            "https://h",
            "--enroll-key",
            "opk_1",
            "--version",
            "1.2.3",
            "--release-pubkey",
            "A",
            "--release-pubkey",
            "B",
            "--mode",
            "user",
            "--run-as",
            "alice",
            "-o",
            "/tmp/x.yaml",
        ])
        .unwrap();
        let CloudInitCommand::Render(a) = ok.c;
        assert_eq!(a.release_pubkeys, ["A", "B"]);
        assert_eq!(a.target, "x86_64-unknown-linux-musl");
        assert!(parse(&[
            "render",
            "--hub",
            "https://h",
            "--enroll-key",
            "k",
            "--version",
            "1.2.3",
            "--channel",
            "beta"
        ])
        .is_err());
        assert!(parse(&[
            "render",
            "--hub",
            "https://h",
            "--enroll-key",
            "k",
            "--mode",
            "root"
        ])
        .is_err());
    }

    #[test]
    fn bad_input_fails_before_any_download() {
        let CloudInitCommand::Render(a) = parse(&[
            "render",
            "--hub",
            "https://h x",
            "--enroll-key",
            "opk_1",
            "--release-pubkey",
            "RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3",
            "--release-url",
            "https://unreachable.invalid",
        ])
        .unwrap()
        .c;
        let e = render(&a).unwrap_err();
        assert_eq!(e.exit_code(), exit::USAGE, "{e}");
        assert!(e.to_string().contains("--hub"), "{e}");
    }
}
