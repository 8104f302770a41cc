//! Pure parsers for what the probe reads, and the install-mode recommendation.
use super::{Distro, Init, Polkit, PolkitFlavor, Recommendation, Topology};
use outpost_core::layout::Mode;

/// The support statement every "unsupported" message ends with.
pub const SUPPORTED: &str =
    "supported: Debian 12/13, Ubuntu 22.04/24.04, Raspberry Pi OS, DietPi, other systemd distros (untested)";

/// systemd's major version from `systemctl --version`'s first line, a package version or a
/// `libsystemd-shared-NNN.so` suffix: `"252"`, `"252.33-1~deb12u1"`,
/// `"systemd 255 (255.4-1ubuntu8)"` → 252, 252, 255.
pub fn parse_systemd_version(s: &str) -> Option<u32> {
    let first = s.lines().next()?.trim();
    let word = first
        .strip_prefix("systemd")
        .map(str::trim_start)
        .unwrap_or(first);
    let digits: &str = &word[..word
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(word.len())];
    digits.parse().ok()
}

/// Polkit flavour from `pkaction --version` output (`"pkaction version 0.105"`).
/// Versions below 0.106 only understand `.pkla` files; 0.106 and later (including the
/// 121+ numbering) use JavaScript `.rules`.
pub fn parse_polkit_version(pkaction_version_output: &str) -> Option<Polkit> {
    let line = pkaction_version_output.lines().next()?.trim();
    let version = line.rsplit(char::is_whitespace).next()?;
    let mut parts = version.split('.');
    let major: u32 = parts.next()?.parse().ok()?;
    let minor: u32 = match parts.next() {
        Some(m) => m
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()?,
        None => 0,
    };
    let flavor = if (major, minor) < (0, 106) {
        PolkitFlavor::Pkla
    } else {
        PolkitFlavor::Rules
    };
    Some(Polkit {
        version: Some(version.to_owned()),
        flavor,
    })
}

/// The container we run in, from `/run/systemd/container` (written by systemd inside
/// containers, preferred) or the `container` environment variable. Blank means none.
pub fn container_from(
    run_systemd_container: Option<&str>,
    env_container: Option<&str>,
) -> Option<String> {
    [run_systemd_container, env_container]
        .into_iter()
        .flatten()
        .map(str::trim)
        .find(|s| !s.is_empty())
        .map(str::to_owned)
}

fn distro_name(d: &Distro) -> String {
    let with = |name: &str, v: &Option<String>| match v {
        Some(v) => format!("{name} {v}"),
        None => name.to_owned(),
    };
    match d {
        Distro::Ubuntu { version, .. } => with("Ubuntu", version),
        Distro::Debian { version } => with("Debian", version),
        Distro::DietPi => "DietPi".to_owned(),
        Distro::RaspberryPiOs { version } => with("Raspberry Pi OS", version),
        Distro::Alpine { version } => with("Alpine Linux", version),
        Distro::Other { id } => id.clone(),
    }
}

/// Decide the install mode and collect warnings.
///
/// Returns `(recommendation, warnings, unsupported reason)`. Root (including via sudo) →
/// system mode; anyone else → user mode, turning linger on when it is off (without it the
/// user's manager only runs while they are logged in). The polkit warnings only apply to
/// system mode: in user mode the user controls their own manager without polkit.
pub fn recommend(
    distro: &Distro,
    topo: &Topology,
    euid: u32,
) -> (Recommendation, Vec<String>, Option<String>) {
    let mut warnings = Vec::new();

    let systemd_version = match &topo.init {
        Init::Systemd { version } => Some(*version),
        Init::Other { .. } => None,
    };
    let unsupported = match (distro, &topo.init) {
        (Distro::Alpine { .. }, _) => Some(format!(
            "outpost needs systemd as PID 1; found {} (OpenRC). {SUPPORTED}",
            distro_name(distro)
        )),
        (_, Init::Other { name }) => Some(format!(
            "outpost needs systemd as PID 1; found {name}. {SUPPORTED}"
        )),
        (_, Init::Systemd { .. }) => None,
    };

    let found = match systemd_version.flatten() {
        Some(v) => format!("systemd {v} found"),
        None => "systemd found (version unknown)".to_owned(),
    };
    match distro {
        Distro::Other { id } if unsupported.is_none() => {
            warnings.push(format!("untested distro {id}; {found}, proceeding"));
        }
        Distro::Ubuntu {
            version: Some(v), ..
        } if !matches!(v.as_str(), "22.04" | "24.04") => {
            warnings.push(format!(
                "untested Ubuntu release {v} (tested: 22.04, 24.04); {found}, proceeding"
            ));
        }
        Distro::Debian { version: Some(v) } if !matches!(v.as_str(), "12" | "13") => {
            warnings.push(format!(
                "untested Debian release {v} (tested: 12, 13); {found}, proceeding"
            ));
        }
        _ => {}
    }

    if let Some(c) = &topo.container {
        warnings.push(format!(
            "running inside a container ({c}): outpost installs into the container's own systemd, so the service lives and dies with the container"
        ));
    }

    let mode = if euid == 0 { Mode::System } else { Mode::User };
    if mode == Mode::System {
        match topo.polkit.as_ref().map(|p| p.flavor) {
            None => warnings.push(
                "polkit not found: the service user cannot restart outpost.service without sudo".to_owned(),
            ),
            Some(PolkitFlavor::Pkla) => warnings.push(format!(
                "polkit {} only reads .pkla files, which cannot limit a grant to one unit, so outpost writes no polkit rule: upgrades and restarts need sudo on this host",
                topo.polkit.as_ref().and_then(|p| p.version.as_deref()).unwrap_or("< 0.106"),
            )),
            Some(PolkitFlavor::Rules) => {}
        }
    }

    let recommendation = match mode {
        Mode::System => {
            let reason = match &topo.sudo_user {
                Some(u) => format!(
                    "invoked as root through sudo by {}: install a system service (use --user to install it for {} instead)",
                    u.name, u.name
                ),
                None => "invoked as root: install a system service running as a dedicated unprivileged user".to_owned(),
            };
            Recommendation {
                mode,
                enable_linger: false,
                reason,
            }
        }
        Mode::User => {
            let (name, linger) = match &topo.target_user {
                Some(t) => (t.account.name.as_str(), t.linger),
                None => (topo.invoking.name.as_str(), false),
            };
            let desktop = matches!(distro, Distro::Ubuntu { desktop: true, .. });
            let reason = match (linger, desktop) {
                (true, _) => format!(
                    "not root: install a user service for {name}, whose lingering is already on so it runs without a login"
                ),
                (false, true) => format!(
                    "not root: install a user service for {name} and enable lingering, or the service stops when {name} logs out of the desktop"
                ),
                (false, false) => format!(
                    "not root: install a user service for {name} and enable lingering so it starts at boot without a login"
                ),
            };
            Recommendation {
                mode,
                enable_linger: !linger,
                reason,
            }
        }
    };

    (recommendation, warnings, unsupported)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::{Account, TargetUser};
    use std::path::PathBuf;

    macro_rules! fixture {
        ($name:literal) => {
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../tests/fixtures/polkit/",
                $name
            ))
        };
    }

    #[test]
    fn systemd_versions() {
        let cases: &[(&str, Option<u32>)] = &[
            ("252", Some(252)),
            ("252.33-1~deb12u1", Some(252)),
            (
                "systemd 255 (255.4-1ubuntu8)\n+PAM +AUDIT +SELINUX",
                Some(255),
            ),
            ("systemd 249 (249.11-0ubuntu3.12)", Some(249)),
            ("255.13-1.fc40", Some(255)),
            ("  257\n", Some(257)),
            ("", None),
            ("systemd", None),
            ("systemd unknown", None),
            ("v252", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_systemd_version(input), *want, "{input:?}");
        }
    }

    #[test]
    fn polkit_versions() {
        let cases: &[(&str, Option<(&str, PolkitFlavor)>)] = &[
            (
                fixture!("pkaction-0.105-ubuntu-22.04"),
                Some(("0.105", PolkitFlavor::Pkla)),
            ),
            (
                fixture!("pkaction-122-debian-12"),
                Some(("122", PolkitFlavor::Rules)),
            ),
            (
                fixture!("pkaction-124-ubuntu-24.04"),
                Some(("124", PolkitFlavor::Rules)),
            ),
            (
                fixture!("pkaction-0.120"),
                Some(("0.120", PolkitFlavor::Rules)),
            ),
            (
                "pkaction version 0.106",
                Some(("0.106", PolkitFlavor::Rules)),
            ),
            ("pkaction version 0.96", Some(("0.96", PolkitFlavor::Pkla))),
            (
                "pkaction version 0.105-33",
                Some(("0.105-33", PolkitFlavor::Pkla)),
            ),
            ("pkaction version", None),
            ("", None),
            ("bash: pkaction: command not found", None),
        ];
        for (input, want) in cases {
            let got = parse_polkit_version(input);
            let want = want.map(|(v, flavor)| Polkit {
                version: Some(v.to_owned()),
                flavor,
            });
            assert_eq!(got, want, "{input:?}");
        }
    }

    #[test]
    fn containers() {
        let cases: &[(Option<&str>, Option<&str>, Option<&str>)] = &[
            (None, None, None),
            (Some("systemd-nspawn\n"), None, Some("systemd-nspawn")),
            (None, Some("docker"), Some("docker")),
            (Some("lxc"), Some("podman"), Some("lxc")),
            (Some("  \n"), Some("podman"), Some("podman")),
            (Some(""), Some(""), None),
        ];
        for (file, env, want) in cases {
            assert_eq!(
                container_from(*file, *env).as_deref(),
                *want,
                "{file:?} {env:?}"
            );
        }
    }

    fn account(name: &str, uid: u32) -> Account {
        Account {
            name: name.into(),
            uid,
            gid: uid,
            home: PathBuf::from(format!("/home/{name}")),
        }
    }

    fn topo(init: Init, euid: u32, linger: bool) -> Topology {
        let invoking = if euid == 0 {
            account("root", 0)
        } else {
            account("alice", euid)
        };
        let target_user = (euid != 0).then(|| TargetUser {
            account: invoking.clone(),
            linger,
            manager_running: true,
            bus: true,
        });
        Topology {
            init,
            container: None,
            invoking,
            sudo_user: None,
            target_user,
            polkit: Some(Polkit {
                version: Some("122".into()),
                flavor: PolkitFlavor::Rules,
            }),
            arch: "x86_64".into(),
        }
    }

    #[test]
    fn recommendations() {
        let sd = || Init::Systemd { version: Some(252) };
        let deb = Distro::Debian {
            version: Some("12".into()),
        };
        let ubu_srv = Distro::Ubuntu {
            version: Some("24.04".into()),
            desktop: false,
        };
        let ubu_desk = Distro::Ubuntu {
            version: Some("22.04".into()),
            desktop: true,
        };
        let rpi = Distro::RaspberryPiOs {
            version: Some("12".into()),
        };
        let fedora = Distro::Other {
            id: "fedora".into(),
        };
        let alpine = Distro::Alpine {
            version: Some("3.20.3".into()),
        };
        let pkla = Some(Polkit {
            version: Some("0.105".into()),
            flavor: PolkitFlavor::Pkla,
        });

        struct Case {
            name: &'static str,
            distro: Distro,
            topo: Topology,
            euid: u32,
            mode: Mode,
            linger: bool,
            reason: &'static str,
            warnings: &'static [&'static str],
            unsupported: Option<&'static str>,
        }
        let with = |mut t: Topology, f: &dyn Fn(&mut Topology)| {
            f(&mut t);
            t
        };
        let cases = vec![
            Case { name: "debian root", distro: deb.clone(), topo: topo(sd(), 0, false), euid: 0, mode: Mode::System, linger: false, reason: "invoked as root:", warnings: &[], unsupported: None },
            Case { name: "debian via sudo", distro: deb.clone(), topo: with(topo(sd(), 0, false), &|t| t.sudo_user = Some(account("alice", 1000))), euid: 0, mode: Mode::System, linger: false, reason: "through sudo by alice", warnings: &[], unsupported: None },
            Case { name: "debian user no linger", distro: deb.clone(), topo: topo(sd(), 1000, false), euid: 1000, mode: Mode::User, linger: true, reason: "starts at boot without a login", warnings: &[], unsupported: None },
            Case { name: "debian user lingering", distro: deb.clone(), topo: topo(sd(), 1000, true), euid: 1000, mode: Mode::User, linger: false, reason: "already on", warnings: &[], unsupported: None },
            Case { name: "ubuntu server user", distro: ubu_srv.clone(), topo: topo(sd(), 1000, false), euid: 1000, mode: Mode::User, linger: true, reason: "starts at boot", warnings: &[], unsupported: None },
            Case { name: "ubuntu desktop user", distro: ubu_desk.clone(), topo: topo(sd(), 1000, false), euid: 1000, mode: Mode::User, linger: true, reason: "logs out of the desktop", warnings: &[], unsupported: None },
            Case { name: "ubuntu desktop user lingering", distro: ubu_desk.clone(), topo: topo(sd(), 1000, true), euid: 1000, mode: Mode::User, linger: false, reason: "already on", warnings: &[], unsupported: None },
            Case { name: "ubuntu 22.04 root pkla", distro: ubu_desk.clone(), topo: with(topo(sd(), 0, false), &|t| t.polkit = pkla.clone()), euid: 0, mode: Mode::System, linger: false, reason: "invoked as root", warnings: &["polkit 0.105 only reads .pkla files, which cannot limit a grant to one unit, so outpost writes no polkit rule: upgrades and restarts need sudo on this host"], unsupported: None },
            Case { name: "pkla irrelevant in user mode", distro: ubu_srv.clone(), topo: with(topo(sd(), 1000, false), &|t| t.polkit = pkla.clone()), euid: 1000, mode: Mode::User, linger: true, reason: "not root", warnings: &[], unsupported: None },
            Case { name: "no polkit root", distro: deb.clone(), topo: with(topo(sd(), 0, false), &|t| t.polkit = None), euid: 0, mode: Mode::System, linger: false, reason: "invoked as root", warnings: &["polkit not found: the service user cannot restart outpost.service without sudo"], unsupported: None },
            Case { name: "no polkit user", distro: deb.clone(), topo: with(topo(sd(), 1000, false), &|t| t.polkit = None), euid: 1000, mode: Mode::User, linger: true, reason: "not root", warnings: &[], unsupported: None },
            Case { name: "raspios user", distro: rpi.clone(), topo: topo(sd(), 1000, false), euid: 1000, mode: Mode::User, linger: true, reason: "starts at boot", warnings: &[], unsupported: None },
            Case { name: "dietpi root", distro: Distro::DietPi, topo: topo(sd(), 0, false), euid: 0, mode: Mode::System, linger: false, reason: "invoked as root", warnings: &[], unsupported: None },
            Case { name: "fedora", distro: fedora.clone(), topo: topo(Init::Systemd { version: Some(255) }, 0, false), euid: 0, mode: Mode::System, linger: false, reason: "invoked as root", warnings: &["untested distro fedora; systemd 255 found, proceeding"], unsupported: None },
            Case { name: "fedora unknown systemd version", distro: fedora.clone(), topo: topo(Init::Systemd { version: None }, 1000, false), euid: 1000, mode: Mode::User, linger: true, reason: "not root", warnings: &["untested distro fedora; systemd found (version unknown), proceeding"], unsupported: None },
            Case { name: "old debian", distro: Distro::Debian { version: Some("11".into()) }, topo: topo(Init::Systemd { version: Some(247) }, 0, false), euid: 0, mode: Mode::System, linger: false, reason: "invoked as root", warnings: &["untested Debian release 11 (tested: 12, 13); systemd 247 found, proceeding"], unsupported: None },
            Case { name: "old ubuntu", distro: Distro::Ubuntu { version: Some("20.04".into()), desktop: false }, topo: topo(Init::Systemd { version: Some(245) }, 0, false), euid: 0, mode: Mode::System, linger: false, reason: "invoked as root", warnings: &["untested Ubuntu release 20.04 (tested: 22.04, 24.04); systemd 245 found, proceeding"], unsupported: None },
            Case { name: "container", distro: deb.clone(), topo: with(topo(sd(), 0, false), &|t| t.container = Some("systemd-nspawn".into())), euid: 0, mode: Mode::System, linger: false, reason: "invoked as root", warnings: &["running inside a container (systemd-nspawn): outpost installs into the container's own systemd, so the service lives and dies with the container"], unsupported: None },
            Case { name: "docker without systemd", distro: deb.clone(), topo: with(topo(Init::Other { name: "bash".into() }, 0, false), &|t| t.container = Some("docker".into())), euid: 0, mode: Mode::System, linger: false, reason: "invoked as root", warnings: &["running inside a container (docker): outpost installs into the container's own systemd, so the service lives and dies with the container"], unsupported: Some("outpost needs systemd as PID 1; found bash. supported: Debian 12/13, Ubuntu 22.04/24.04, Raspberry Pi OS, DietPi, other systemd distros (untested)") },
            Case { name: "alpine", distro: alpine.clone(), topo: topo(Init::Other { name: "init".into() }, 0, false), euid: 0, mode: Mode::System, linger: false, reason: "invoked as root", warnings: &[], unsupported: Some("outpost needs systemd as PID 1; found Alpine Linux 3.20.3 (OpenRC). supported: Debian 12/13, Ubuntu 22.04/24.04, Raspberry Pi OS, DietPi, other systemd distros (untested)") },
            Case { name: "unknown init on unknown distro: no untested warning", distro: Distro::Other { id: "void".into() }, topo: topo(Init::Other { name: "runit".into() }, 1000, false), euid: 1000, mode: Mode::User, linger: true, reason: "not root", warnings: &[], unsupported: Some("outpost needs systemd as PID 1; found runit. supported: Debian 12/13, Ubuntu 22.04/24.04, Raspberry Pi OS, DietPi, other systemd distros (untested)") },
        ];
        for c in cases {
            let (rec, warnings, unsupported) = recommend(&c.distro, &c.topo, c.euid);
            assert_eq!(rec.mode, c.mode, "{}", c.name);
            assert_eq!(rec.enable_linger, c.linger, "{}", c.name);
            assert!(rec.reason.contains(c.reason), "{}: {}", c.name, rec.reason);
            assert!(!rec.reason.contains('\n'), "{}", c.name);
            assert_eq!(warnings, c.warnings, "{}", c.name);
            assert_eq!(unsupported.as_deref(), c.unsupported, "{}", c.name);
        }
    }
}
