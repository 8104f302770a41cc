//! outpost-release: make, sign, publish, bundle and verify outpost releases.
//! The release format is documented in docs/RELEASES.md.
use clap::{Parser, Subcommand};
use outpost_release::packtools::{self, PackBuildOptions};
use outpost_release::tools::{self, BuildInput, PublishOptions, Signer};
use outpost_release::{bundle, Error, Source, TrustedKeys};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

/// Make, sign, publish, bundle and verify outpost releases.
#[derive(Parser)]
#[command(name = "outpost-release", version = outpost_release::VERSION)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate a minisign key pair (outpost-release.pub, outpost-release.key) in DIR.
    /// The secret key is encrypted with OUTPOST_RELEASE_PASSWORD or a password asked on the TTY.
    Keygen {
        #[arg(long)]
        out: PathBuf,
        /// Leave the secret key unencrypted (for throwaway CI keys only).
        #[arg(long)]
        unencrypted: bool,
    },
    /// Build OUT/vV/outpost-V-T.tar.gz and update OUT/vV/SHA256SUMS.
    Build {
        #[arg(long)]
        version: semver::Version,
        #[arg(long)]
        target: String,
        /// The static outpost binary for TARGET.
        #[arg(long)]
        binary: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "LICENSE")]
        license: PathBuf,
        #[arg(long, default_value = "README.md")]
        readme: PathBuf,
    },
    /// Sign every tarball and SHA256SUMS in DIR (FILE.minisig next to each).
    Sign {
        #[arg(long)]
        key: PathBuf,
        dir: PathBuf,
    },
    /// Publish built versions into a release root: manifest.json (+ signature), channels/*,
    /// install.sh.
    Publish {
        #[arg(long)]
        from: PathBuf,
        #[arg(long)]
        to: PathBuf,
        #[arg(long)]
        key: PathBuf,
        /// Point this channel at the newest version published now (stable also moves beta).
        #[arg(long, value_parser = ["stable", "beta"])]
        channel: Option<String>,
        /// install.sh template [default: scripts/install.sh when it exists].
        #[arg(long)]
        install_template: Option<PathBuf>,
        /// Release URL baked into install.sh: https://HOST/PATH, or github:OWNER/REPO.
        #[arg(long)]
        base_url: Option<String>,
        /// Another public key (file) to embed in install.sh, e.g. the next key of a rotation.
        #[arg(long)]
        extra_pubkey: Vec<PathBuf>,
    },
    /// Write an offline bundle (one tar) of VERSION for TARGET from a release root or URL,
    /// then verify it as an install would (signed manifest, sha256, signatures) when a
    /// trusted key is given or compiled in.
    Bundle {
        #[arg(long)]
        release: String,
        #[arg(long)]
        version: semver::Version,
        #[arg(long)]
        target: String,
        #[arg(long)]
        out: PathBuf,
        /// Trusted public key file(s) [default: the keys compiled into this binary].
        #[arg(long)]
        pubkey: Vec<PathBuf>,
    },
    /// Check a release root, URL or bundle end to end: manifest signature, every tarball's
    /// sha256 and signature, SHA256SUMS signatures, channels.
    Verify {
        /// Release directory, https:// URL, or bundle file.
        release: String,
        /// Trusted public key file(s) [default: the keys compiled into this binary].
        #[arg(long)]
        pubkey: Vec<PathBuf>,
        /// PEM CA roots for an https release.
        #[arg(long)]
        ca_file: Option<PathBuf>,
    },
    /// Signed pack releases: build and publish a pack into a release site, bundle, verify.
    Pack {
        #[command(subcommand)]
        cmd: PackCmd,
    },
}

#[derive(Subcommand)]
enum PackCmd {
    /// Validate the pack in DIR, build its deterministic tarball, sign it and publish it into
    /// the release site OUT (OUT/packs/NAME/: manifest.json + .minisig, vV/NAME-V.tar.gz +
    /// .minisig), then verify the result with the key's public key.
    Build {
        /// The pack directory (with pack.toml).
        dir: PathBuf,
        #[arg(long)]
        key: PathBuf,
        /// The release site (kept between builds: the pack manifest is merged).
        #[arg(long)]
        out: PathBuf,
        /// Also write an offline bundle of the version built to this file.
        #[arg(long)]
        bundle: Option<PathBuf>,
    },
    /// Write an offline pack bundle (one tar) of VERSION (default: latest) from a pack
    /// release root (SITE/packs/NAME) or its URL, then verify it.
    Bundle {
        /// The pack release root: SITE/packs/NAME, or its https:// URL.
        release: String,
        #[arg(long)]
        version: Option<semver::Version>,
        #[arg(long)]
        out: PathBuf,
        /// Trusted public key file(s) [default: the keys compiled into this binary].
        #[arg(long)]
        pubkey: Vec<PathBuf>,
    },
    /// Check a pack release root, URL or bundle end to end: manifest signature and name,
    /// every tarball's size, sha256 and signature, its pack.toml and tree hash.
    Verify {
        /// SITE/packs/NAME, its https:// URL, or a pack bundle.
        release: String,
        #[arg(long)]
        pubkey: Vec<PathBuf>,
        /// PEM CA roots for an https release.
        #[arg(long)]
        ca_file: Option<PathBuf>,
    },
}

fn password(confirm: bool) -> Result<String, Error> {
    if let Ok(p) = std::env::var("OUTPOST_RELEASE_PASSWORD") {
        return Ok(p);
    }
    let no_tty = || Error::Usage {
        message:
            "no password: OUTPOST_RELEASE_PASSWORD is not set and there is no terminal to ask on"
                .into(),
        hint: "export OUTPOST_RELEASE_PASSWORD, or use --unencrypted for a throwaway key".into(),
    };
    if !std::io::stdin().is_terminal() {
        return Err(no_tty());
    }
    let p = rpassword::prompt_password("secret key password: ").map_err(|_| no_tty())?;
    if confirm {
        let again = rpassword::prompt_password("again: ").map_err(|_| no_tty())?;
        if again != p {
            return Err(Error::Usage {
                message: "the passwords differ".into(),
                hint: "run keygen again".into(),
            });
        }
    }
    Ok(p)
}

fn run(cli: Cli) -> Result<(), Error> {
    match cli.cmd {
        Cmd::Keygen { out, unencrypted } => {
            let pw = if unencrypted {
                None
            } else {
                Some(password(true)?)
            };
            let (pk, sk) = tools::keygen(&out, pw)?;
            println!("public key: {}", pk.display());
            println!("secret key: {}", sk.display());
        }
        Cmd::Build {
            version,
            target,
            binary,
            out,
            license,
            readme,
        } => {
            let mtime = source_mtime();
            let p = tools::build_tarball(&BuildInput {
                version,
                target,
                binary,
                license,
                readme,
                out,
                mtime,
            })?;
            println!("{}", p.display());
        }
        Cmd::Sign { key, dir } => {
            let signer = Signer::load(&key, || password(false))?;
            for p in tools::sign_dir(&signer, &dir)? {
                println!("{}", p.display());
            }
        }
        Cmd::Publish {
            from,
            to,
            key,
            channel,
            install_template,
            base_url,
            extra_pubkey,
        } => {
            let signer = Signer::load(&key, || password(false))?;
            let install_template = install_template.or_else(|| {
                let p = PathBuf::from("scripts/install.sh");
                if p.exists() {
                    Some(p)
                } else {
                    eprintln!("warning: no install.sh template (scripts/install.sh); publishing without install.sh");
                    None
                }
            });
            let mut extra_pubkeys = Vec::new();
            for p in &extra_pubkey {
                extra_pubkeys.push(fs_err::read_to_string(p).map_err(|e| Error::Usage {
                    message: e.to_string(),
                    hint: "give a minisign .pub file".into(),
                })?);
            }
            let m = tools::publish(
                &signer,
                &PublishOptions {
                    from,
                    to: to.clone(),
                    channel,
                    install_template,
                    base_url,
                    extra_pubkeys,
                    now: None,
                },
            )?;
            println!("published {} (timestamp {})", to.display(), m.timestamp);
            for (c, v) in &m.channels {
                println!("  {c}: {v}");
            }
        }
        Cmd::Bundle {
            release,
            version,
            target,
            out,
            pubkey,
        } => {
            let keys = trusted_keys(&pubkey)?;
            bundle::write_bundle(&Source::parse(&release)?, &version, &target, &out)?;
            if keys.is_empty() {
                eprintln!("warning: {} is not verified: no --pubkey and no compiled-in key (`outpost-release verify` it, or pass --pubkey)", out.display());
            } else if let Err(e) = tools::verify_release(&Source::Bundle(out.clone()), &keys) {
                let _ = fs_err::remove_file(&out); // best effort: never leave a bad bundle
                return Err(e);
            }
            println!("{}", out.display());
        }
        Cmd::Verify {
            release,
            pubkey,
            ca_file,
        } => {
            let keys = trusted_keys(&pubkey)?;
            let source = Source::parse(&release)?.with_ca_file(ca_file);
            for line in tools::verify_release(&source, &keys)? {
                println!("ok {line}");
            }
        }
        Cmd::Pack { cmd } => pack(cmd)?,
    }
    Ok(())
}

fn source_mtime() -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn pack(cmd: PackCmd) -> Result<(), Error> {
    match cmd {
        PackCmd::Build {
            dir,
            key,
            out,
            bundle,
        } => {
            let signer = Signer::load(&key, || password(false))?;
            let b = packtools::build_pack(
                &signer,
                &PackBuildOptions {
                    dir,
                    site: out,
                    mtime: source_mtime(),
                    now: None,
                },
            )?;
            println!(
                "pack {} {} {}: tree sha256 {}, tarball sha256 {} ({} bytes)",
                b.name,
                b.version,
                if b.unchanged {
                    "already published"
                } else {
                    "published"
                },
                b.tree_sha256,
                b.tarball_sha256,
                b.size
            );
            println!("{}", b.root.display());
            if let Some(path) = bundle {
                packtools::write_pack_bundle(
                    &Source::Dir(b.root.clone()),
                    Some(&b.version),
                    &path,
                    &signer.trusted_keys(),
                )?;
                println!("{}", path.display());
            }
        }
        PackCmd::Bundle {
            release,
            version,
            out,
            pubkey,
        } => {
            let keys = trusted_keys(&pubkey)?;
            let v = packtools::write_pack_bundle(
                &Source::parse(&release)?,
                version.as_ref(),
                &out,
                &keys,
            )?;
            if keys.is_empty() {
                eprintln!("warning: {} is not verified: no --pubkey and no compiled-in key (`outpost-release pack verify` it, or pass --pubkey)", out.display());
            }
            println!("{} ({v})", out.display());
        }
        PackCmd::Verify {
            release,
            pubkey,
            ca_file,
        } => {
            let keys = trusted_keys(&pubkey)?;
            let source = Source::parse(&release)?.with_ca_file(ca_file);
            for line in packtools::verify_pack(&source, &keys)? {
                println!("ok {line}");
            }
        }
    }
    Ok(())
}

/// The keys of `files`, or the compiled-in keys when none is given.
fn trusted_keys(files: &[PathBuf]) -> Result<TrustedKeys, Error> {
    if files.is_empty() {
        return Ok(TrustedKeys::builtin());
    }
    let mut keys = TrustedKeys::empty();
    for p in files {
        keys.add_file(p)?;
    }
    Ok(keys)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            eprintln!("hint: {}", e.hint());
            ExitCode::from(if matches!(e, Error::Usage { .. } | Error::Source { .. }) {
                2
            } else {
                1
            })
        }
    }
}
