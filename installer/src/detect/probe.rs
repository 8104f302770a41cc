//! The one I/O seam for detection, and [`detect`], which turns what a [`Probe`] sees into a
//! [`Detection`].
//!
//! [`HostProbe`] reads files under a filesystem root. Detection runs at most two commands,
//! `pkaction --version` and (only as a fallback) `systemctl --version`, and only when the
//! root is `/`: a probe of a test root must not describe the machine running the tests.
//! Controlling services never shells out (see `svc`).
use super::os_release::{self, DistroFacts};
use super::topology::{container_from, parse_polkit_version, parse_systemd_version, recommend};
use super::{Account, Detection, Init, Polkit, PolkitFlavor, TargetUser, Topology};
use crate::users;
use outpost_core::env;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The `container` variable systemd and container managers set for PID 1.
/// (Not in `outpost_core::env`: it is not an outpost setting, only a hint we read.)
const ENV_CONTAINER: &str = "container";
/// Login name, used only when the invoking uid has no `/etc/passwd` entry (directory users).
const ENV_USER: &str = "USER";

/// What detection may look at. Paths are host-absolute (`/etc/os-release`); implementations
/// resolve them under their root.
pub trait Probe {
    /// A file's contents; `None` when missing or unreadable.
    fn read(&self, path: &str) -> Option<String>;
    /// Whether a file or directory exists (following symlinks).
    fn exists(&self, path: &str) -> bool;
    fn env(&self, name: &str) -> Option<String>;
    fn euid(&self) -> u32;
    /// `uname -m` style architecture of this binary.
    fn arch(&self) -> String;
    /// `pkaction --version` output; `None` when pkaction is not installed.
    fn pkaction_version(&self) -> Option<String>;
    /// Something [`parse_systemd_version`] understands; `None` when unknown.
    fn systemd_version(&self) -> Option<String>;
}

/// The real host (or a prepared directory tree standing in for one).
#[derive(Debug, Clone)]
pub struct HostProbe {
    pub root: PathBuf,
}

impl HostProbe {
    pub fn new(root: impl Into<PathBuf>) -> HostProbe {
        HostProbe { root: root.into() }
    }

    fn host(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    /// Run a detection command with the C locale; `None` unless the root is `/`, the program
    /// exists and it exits 0.
    fn run(&self, program: &str, arg: &str) -> Option<String> {
        if self.root != Path::new("/") {
            return None;
        }
        let out = Command::new(program)
            .arg(arg)
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// systemd's version from the name of its private shared library,
    /// `libsystemd-shared-NNN[.x-y].so`, which every systemd since 231 installs next to its
    /// binaries: `/usr/lib/systemd/` (Ubuntu 22.04, Arch), `/usr/lib/<multiarch>/systemd/`
    /// (Debian 12+, Ubuntu 24.04), `/usr/lib64/systemd/` (Fedora), `/lib/systemd/` (no
    /// usrmerge). Works unprivileged and without a bus. The highest version wins when an
    /// upgrade left an old copy behind.
    fn systemd_shared_lib_version(&self) -> Option<String> {
        let mut dirs: Vec<PathBuf> = ["/usr/lib/systemd", "/usr/lib64/systemd", "/lib/systemd"]
            .iter()
            .map(|d| self.host(d))
            .collect();
        if let Ok(entries) = fs_err::read_dir(self.host("/usr/lib")) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().contains("-linux-") {
                    dirs.push(e.path().join("systemd"));
                }
            }
        }
        dirs.iter()
            .filter_map(|d| fs_err::read_dir(d).ok())
            .flat_map(|entries| entries.flatten())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let v = name
                    .strip_prefix("libsystemd-shared-")?
                    .strip_suffix(".so")?
                    .to_owned();
                Some((parse_systemd_version(&v)?, v))
            })
            .max()
            .map(|(_, v)| v)
    }
}

impl Probe for HostProbe {
    fn read(&self, path: &str) -> Option<String> {
        fs_err::read_to_string(self.host(path)).ok()
    }
    fn exists(&self, path: &str) -> bool {
        self.host(path).exists()
    }
    fn env(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
    fn euid(&self) -> u32 {
        rustix::process::geteuid().as_raw()
    }
    fn arch(&self) -> String {
        uname_arch(std::env::consts::ARCH).to_owned()
    }
    fn pkaction_version(&self) -> Option<String> {
        self.run("pkaction", "--version")
    }
    /// The shared-library file name first (no process, no privileges), then
    /// `systemctl --version` (root `/` only).
    fn systemd_version(&self) -> Option<String> {
        self.systemd_shared_lib_version()
            .or_else(|| self.run("systemctl", "--version"))
    }
}

/// Rust's `std::env::consts::ARCH` → `uname -m`. 32-bit ARM reports `armv7l` (our arm
/// builds target ARMv7; an ARMv6 Pi Zero runs the same binary as armv7l would not, but we do
/// not ship for it).
pub fn uname_arch(rust_arch: &str) -> &str {
    match rust_arch {
        "x86" => "i686",
        "arm" => "armv7l",
        "powerpc" => "ppc",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "powerpc64" => "ppc64",
        other => other,
    }
}

fn distro_facts(p: &dyn Probe) -> DistroFacts {
    let any = |paths: &[&str]| paths.iter().any(|f| p.exists(f));
    DistroFacts {
        desktop: any(&[
            "/etc/X11/default-display-manager",
            "/etc/systemd/system/display-manager.service",
            "/usr/share/xsessions/ubuntu.desktop",
            "/usr/share/wayland-sessions/ubuntu.desktop",
            "/usr/share/wayland-sessions/ubuntu-wayland.desktop",
            "/usr/share/doc/ubuntu-desktop",
            "/usr/share/doc/ubuntu-desktop-minimal",
        ]),
        dietpi: any(&["/boot/dietpi/.version", "/boot/dietpi"]),
        rpi: any(&["/etc/rpi-issue"]),
    }
}

/// PID 1: `/proc/1/comm`, and like `sd_booted(3)` systemd only counts when
/// `/run/systemd/system` exists. When `/proc/1/comm` is unreadable (`hidepid=`) the
/// directory alone decides.
fn init(p: &dyn Probe) -> Init {
    let comm = p
        .read("/proc/1/comm")
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty());
    let booted = p.exists("/run/systemd/system");
    let version = || {
        p.systemd_version()
            .as_deref()
            .and_then(parse_systemd_version)
    };
    match (comm, booted) {
        (Some(c), true) if c == "systemd" => Init::Systemd { version: version() },
        (None, true) => Init::Systemd { version: version() },
        (Some(c), false) if c == "systemd" => Init::Other {
            name: "systemd without /run/systemd/system".to_owned(),
        },
        (Some(c), _) => Init::Other { name: c },
        (None, false) => Init::Other {
            name: "an unknown init (/proc/1/comm unreadable)".to_owned(),
        },
    }
}

/// `pkaction --version` when pkaction exists. Otherwise guess from directories:
/// `/etc/polkit-1/rules.d` is created only by polkit ≥ 0.106; `/etc/polkit-1/localauthority`
/// means 0.105 (checked second because Debian's compatibility package `polkitd-pkla` adds it
/// to new polkits too); `/usr/share/polkit-1/rules.d` only counts together with a polkitd
/// binary, because systemd ships rules there whether or not polkit is installed.
fn polkit(p: &dyn Probe) -> Option<Polkit> {
    if let Some(out) = p.pkaction_version() {
        return parse_polkit_version(&out);
    }
    let daemon = [
        "/usr/lib/polkit-1/polkitd",
        "/usr/libexec/polkitd",
        "/usr/lib/polkit/polkitd",
        "/usr/libexec/polkit-1/polkitd",
    ]
    .iter()
    .any(|f| p.exists(f));
    let flavor = if p.exists("/etc/polkit-1/rules.d") {
        PolkitFlavor::Rules
    } else if p.exists("/etc/polkit-1/localauthority") {
        PolkitFlavor::Pkla
    } else if daemon && p.exists("/usr/share/polkit-1/rules.d") {
        PolkitFlavor::Rules
    } else {
        return None;
    };
    Some(Polkit {
        version: None,
        flavor,
    })
}

fn target_user(p: &dyn Probe, account: Account) -> TargetUser {
    TargetUser {
        linger: p.exists(&format!("/var/lib/systemd/linger/{}", account.name)),
        manager_running: p.exists(&format!("/run/user/{}/systemd", account.uid)),
        bus: p.exists(&format!("/run/user/{}/bus", account.uid)),
        account,
    }
}

/// Look at the host through `p` and decide. Never fails: what cannot be read is reported as
/// unknown, a warning, or an `unsupported` reason.
pub fn detect(p: &dyn Probe) -> Detection {
    let mut warnings = Vec::new();

    let os_text = p
        .read("/etc/os-release")
        .or_else(|| p.read("/usr/lib/os-release"));
    if os_text.is_none() {
        warnings
            .push("cannot read /etc/os-release or /usr/lib/os-release; distro unknown".to_owned());
    }
    let os = os_release::parse(os_text.as_deref().unwrap_or(""));
    let distro = os_release::classify(&os, &distro_facts(p));

    let euid = p.euid();
    let accounts = match p.read("/etc/passwd") {
        Some(text) => users::parse_passwd(&text),
        None => {
            warnings.push(
                "cannot read /etc/passwd; user names are guessed from the environment".to_owned(),
            );
            Vec::new()
        }
    };
    let invoking = match accounts.iter().find(|a| a.uid == euid) {
        Some(a) => a.clone(),
        None if euid == 0 => Account {
            name: "root".into(),
            uid: 0,
            gid: 0,
            home: PathBuf::from("/root"),
        },
        None => {
            let name = p
                .env(ENV_USER)
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| euid.to_string());
            let home = PathBuf::from(
                p.env(env::HOME)
                    .filter(|h| h.starts_with('/'))
                    .unwrap_or_else(|| "/".into()),
            );
            warnings.push(format!(
                "uid {euid} has no entry in /etc/passwd (a directory-service account?); assuming user {name} with home {}",
                home.display()
            ));
            Account {
                name,
                uid: euid,
                gid: euid,
                home,
            }
        }
    };

    let sudo_user = match p
        .env(env::SUDO_USER)
        .filter(|n| euid == 0 && !n.is_empty() && n != "root")
    {
        Some(name) => {
            let found = accounts
                .iter()
                .find(|a| a.name == name && a.uid != 0)
                .cloned();
            if found.is_none() {
                warnings.push(format!(
                    "SUDO_USER={name} has no non-root entry in /etc/passwd; ignoring it"
                ));
            }
            found
        }
        None => None,
    };
    let target = match &sudo_user {
        Some(a) => Some(a.clone()),
        None if euid != 0 => Some(invoking.clone()),
        None => None,
    };

    let topology = Topology {
        init: init(p),
        container: container_from(
            p.read("/run/systemd/container").as_deref(),
            p.env(ENV_CONTAINER).as_deref(),
        ),
        invoking,
        sudo_user,
        target_user: target.map(|a| target_user(p, a)),
        polkit: polkit(p),
        arch: p.arch(),
    };

    let (recommendation, more, unsupported) = recommend(&distro, &topology, euid);
    warnings.extend(more);
    Detection {
        os_release: os,
        distro,
        topology,
        unsupported,
        recommendation,
        warnings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::Distro;
    use outpost_core::layout::Mode;
    use std::collections::BTreeMap;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures");

    fn fixture(rel: &str) -> String {
        fs_err::read_to_string(Path::new(FIXTURES).join(rel)).expect("fixture")
    }

    /// An in-memory host: files (directories are entries with empty content), environment,
    /// euid and command outputs.
    #[derive(Clone)]
    struct Fake {
        files: BTreeMap<String, String>,
        env: BTreeMap<String, String>,
        euid: u32,
        pkaction: Option<String>,
        systemd: Option<String>,
    }

    impl Fake {
        /// A booted systemd host with the given os-release fixture and the passwd fixture.
        fn booted(os_release: &str, euid: u32) -> Fake {
            Fake {
                files: BTreeMap::new(),
                env: BTreeMap::new(),
                euid,
                pkaction: Some("pkaction version 122\n".into()),
                systemd: Some("252".into()),
            }
            .file(
                "/etc/os-release",
                &fixture(&format!("os-release/{os_release}")),
            )
            .file("/etc/passwd", &fixture("passwd/passwd"))
            .file("/proc/1/comm", "systemd\n")
            .file("/run/systemd/system", "")
        }
        fn file(mut self, path: &str, text: &str) -> Fake {
            self.files.insert(path.into(), text.into());
            self
        }
        fn rm(mut self, path: &str) -> Fake {
            self.files.remove(path);
            self
        }
        fn env(mut self, k: &str, v: &str) -> Fake {
            self.env.insert(k.into(), v.into());
            self
        }
        fn pkaction(mut self, out: Option<&str>) -> Fake {
            self.pkaction = out.map(str::to_owned);
            self
        }
        fn systemd(mut self, out: Option<&str>) -> Fake {
            self.systemd = out.map(str::to_owned);
            self
        }
    }

    impl Probe for Fake {
        fn read(&self, path: &str) -> Option<String> {
            self.files.get(path).cloned()
        }
        fn exists(&self, path: &str) -> bool {
            self.files.contains_key(path)
        }
        fn env(&self, name: &str) -> Option<String> {
            self.env.get(name).cloned()
        }
        fn euid(&self) -> u32 {
            self.euid
        }
        fn arch(&self) -> String {
            "aarch64".into()
        }
        fn pkaction_version(&self) -> Option<String> {
            self.pkaction.clone()
        }
        fn systemd_version(&self) -> Option<String> {
            self.systemd.clone()
        }
    }

    fn rules(v: Option<&str>) -> Option<Polkit> {
        Some(Polkit {
            version: v.map(str::to_owned),
            flavor: PolkitFlavor::Rules,
        })
    }
    fn pkla(v: Option<&str>) -> Option<Polkit> {
        Some(Polkit {
            version: v.map(str::to_owned),
            flavor: PolkitFlavor::Pkla,
        })
    }

    #[derive(Clone)]
    struct Want {
        distro: Distro,
        init: Init,
        mode: Mode,
        linger: bool,
        invoking: &'static str,
        sudo_user: Option<&'static str>,
        /// (name, linger, manager_running, bus)
        target: Option<(&'static str, bool, bool, bool)>,
        polkit: Option<Polkit>,
        container: Option<&'static str>,
        warnings: &'static [&'static str],
        unsupported: Option<&'static str>,
    }

    #[test]
    fn detect_table() {
        let v = |s: &str| Some(s.to_owned());
        let sd = |n| Init::Systemd { version: Some(n) };
        let base = Want {
            distro: Distro::Debian { version: v("12") },
            init: sd(252),
            mode: Mode::System,
            linger: false,
            invoking: "root",
            sudo_user: None,
            target: None,
            polkit: rules(Some("122")),
            container: None,
            warnings: &[],
            unsupported: None,
        };
        let alice_session = |f: Fake| {
            f.file("/run/user/1000/systemd", "")
                .file("/run/user/1000/bus", "")
        };
        let cases: Vec<(&str, Fake, Want)> = vec![
            ("debian 12 root", Fake::booted("debian-12", 0), Want { ..base.clone() }),
            (
                "debian 13 alice, no session, no linger",
                Fake::booted("debian-13", 1000).systemd(Some("257.8-1~deb13u2")),
                Want { distro: Distro::Debian { version: v("13") }, init: sd(257), mode: Mode::User, linger: true, invoking: "alice", target: Some(("alice", false, false, false)), ..base.clone() },
            ),
            (
                "ubuntu 24.04 desktop alice logged in",
                alice_session(Fake::booted("ubuntu-24.04", 1000).file("/etc/X11/default-display-manager", "/usr/sbin/gdm3\n").pkaction(Some("pkaction version 124\n"))),
                Want { distro: Distro::Ubuntu { version: v("24.04"), desktop: true }, mode: Mode::User, linger: true, invoking: "alice", target: Some(("alice", false, true, true)), polkit: rules(Some("124")), ..base.clone() },
            ),
            (
                "ubuntu 24.04 server alice lingering",
                alice_session(Fake::booted("ubuntu-24.04", 1000).file("/var/lib/systemd/linger/alice", "")),
                Want { distro: Distro::Ubuntu { version: v("24.04"), desktop: false }, mode: Mode::User, linger: false, invoking: "alice", target: Some(("alice", true, true, true)), ..base.clone() },
            ),
            (
                "ubuntu 22.04 sudo from alice, polkit 0.105",
                alice_session(Fake::booted("ubuntu-22.04", 0).env("SUDO_USER", "alice").pkaction(Some("pkaction version 0.105\n")).systemd(Some("systemd 249 (249.11-0ubuntu3.12)"))),
                Want {
                    distro: Distro::Ubuntu { version: v("22.04"), desktop: false },
                    init: sd(249),
                    sudo_user: Some("alice"),
                    target: Some(("alice", false, true, true)),
                    polkit: pkla(Some("0.105")),
                    warnings: &["polkit 0.105 only reads .pkla files, which cannot limit a grant to one unit, so outpost writes no polkit rule: upgrades and restarts need sudo on this host"],
                    ..base.clone()
                },
            ),
            ("sudo -i from root", Fake::booted("debian-12", 0).env("SUDO_USER", "root"), Want { ..base.clone() }),
            (
                "SUDO_USER unknown",
                Fake::booted("debian-12", 0).env("SUDO_USER", "mallory"),
                Want { warnings: &["SUDO_USER=mallory has no non-root entry in /etc/passwd; ignoring it"], ..base.clone() },
            ),
            (
                "SUDO_USER ignored when not root",
                Fake::booted("debian-12", 1001).env("SUDO_USER", "alice"),
                Want { mode: Mode::User, linger: true, invoking: "bob", target: Some(("bob", false, false, false)), ..base.clone() },
            ),
            (
                "dietpi root without polkit",
                Fake::booted("dietpi", 0).file("/boot/dietpi/.version", "G_DIETPI_VERSION_CORE=9\n").file("/boot/dietpi", "").pkaction(None),
                Want { distro: Distro::DietPi, polkit: None, warnings: &["polkit not found: the service user cannot restart outpost.service without sudo"], ..base.clone() },
            ),
            (
                "raspios arm64, pkaction missing, /etc/polkit-1/rules.d",
                Fake::booted("raspios-bookworm-arm64", 0).file("/etc/rpi-issue", "Raspberry Pi reference 2024-07-04\n").pkaction(None).file("/etc/polkit-1/rules.d", ""),
                Want { distro: Distro::RaspberryPiOs { version: v("12") }, polkit: rules(None), ..base.clone() },
            ),
            (
                "raspios armhf, pkaction missing, localauthority",
                Fake::booted("raspios-bookworm-armhf", 0).pkaction(None).file("/etc/polkit-1/localauthority", ""),
                Want {
                    distro: Distro::RaspberryPiOs { version: v("12") },
                    polkit: pkla(None),
                    warnings: &["polkit < 0.106 only reads .pkla files, which cannot limit a grant to one unit, so outpost writes no polkit rule: upgrades and restarts need sudo on this host"],
                    ..base.clone()
                },
            ),
            (
                "systemd's own rules.d without polkitd is no polkit",
                Fake::booted("debian-12", 0).pkaction(None).file("/usr/share/polkit-1/rules.d", ""),
                Want { polkit: None, warnings: &["polkit not found: the service user cannot restart outpost.service without sudo"], ..base.clone() },
            ),
            (
                "/usr/share rules.d with polkitd",
                Fake::booted("debian-12", 0).pkaction(None).file("/usr/share/polkit-1/rules.d", "").file("/usr/lib/polkit-1/polkitd", ""),
                Want { polkit: rules(None), ..base.clone() },
            ),
            (
                "fedora",
                Fake::booted("fedora-40", 0).systemd(Some("255.13-1.fc40")),
                Want { distro: Distro::Other { id: "fedora".into() }, init: sd(255), warnings: &["untested distro fedora; systemd 255 found, proceeding"], ..base.clone() },
            ),
            (
                "alpine in docker",
                Fake::booted("alpine-3.20", 0).file("/proc/1/comm", "sh\n").rm("/run/systemd/system").env("container", "docker").systemd(None).pkaction(None),
                Want {
                    distro: Distro::Alpine { version: v("3.20.3") },
                    init: Init::Other { name: "sh".into() },
                    polkit: None,
                    container: Some("docker"),
                    warnings: &[
                        "running inside a container (docker): outpost installs into the container's own systemd, so the service lives and dies with the container",
                        "polkit not found: the service user cannot restart outpost.service without sudo",
                    ],
                    unsupported: Some("outpost needs systemd as PID 1; found Alpine Linux 3.20.3 (OpenRC). supported: Debian 12/13, Ubuntu 22.04/24.04, Raspberry Pi OS, DietPi, other systemd distros (untested)"),
                    ..base.clone()
                },
            ),
            (
                "nspawn container with systemd",
                Fake::booted("debian-12", 0).file("/run/systemd/container", "systemd-nspawn\n"),
                Want { container: Some("systemd-nspawn"), warnings: &["running inside a container (systemd-nspawn): outpost installs into the container's own systemd, so the service lives and dies with the container"], ..base.clone() },
            ),
            (
                "systemd in comm but not booted",
                Fake::booted("debian-12", 0).rm("/run/systemd/system"),
                Want {
                    init: Init::Other { name: "systemd without /run/systemd/system".into() },
                    unsupported: Some("outpost needs systemd as PID 1; found systemd without /run/systemd/system. supported: Debian 12/13, Ubuntu 22.04/24.04, Raspberry Pi OS, DietPi, other systemd distros (untested)"),
                    ..base.clone()
                },
            ),
            ("hidepid: comm unreadable, booted", Fake::booted("debian-12", 0).rm("/proc/1/comm"), Want { ..base.clone() }),
            (
                "os-release only in /usr/lib",
                Fake::booted("debian-12", 0).rm("/etc/os-release").file("/usr/lib/os-release", &fixture("os-release/debian-13")),
                Want { distro: Distro::Debian { version: v("13") }, ..base.clone() },
            ),
            (
                "directory user not in passwd",
                Fake::booted("debian-12", 5000).env("USER", "carol").env("HOME", "/home/carol"),
                Want {
                    mode: Mode::User,
                    linger: true,
                    invoking: "carol",
                    target: Some(("carol", false, false, false)),
                    warnings: &["uid 5000 has no entry in /etc/passwd (a directory-service account?); assuming user carol with home /home/carol"],
                    ..base.clone()
                },
            ),
            (
                "unknown systemd version",
                Fake::booted("debian-12", 0).systemd(None),
                Want { init: Init::Systemd { version: None }, ..base.clone() },
            ),
        ];
        for (name, probe, want) in cases {
            let d = detect(&probe);
            let t = &d.topology;
            assert_eq!(d.distro, want.distro, "{name}");
            assert_eq!(t.init, want.init, "{name}");
            assert_eq!(d.recommendation.mode, want.mode, "{name}");
            assert_eq!(d.recommendation.enable_linger, want.linger, "{name}");
            assert_eq!(t.invoking.name, want.invoking, "{name}");
            assert_eq!(
                t.sudo_user.as_ref().map(|a| a.name.as_str()),
                want.sudo_user,
                "{name}"
            );
            let target = t
                .target_user
                .as_ref()
                .map(|u| (u.account.name.as_str(), u.linger, u.manager_running, u.bus));
            assert_eq!(target, want.target, "{name}");
            assert_eq!(t.polkit, want.polkit, "{name}");
            assert_eq!(t.container.as_deref(), want.container, "{name}");
            assert_eq!(t.arch, "aarch64", "{name}");
            assert_eq!(d.warnings, want.warnings, "{name}");
            assert_eq!(d.unsupported.as_deref(), want.unsupported, "{name}");
        }
    }

    #[test]
    fn nothing_readable() {
        let empty = Fake {
            files: BTreeMap::new(),
            env: BTreeMap::new(),
            euid: 0,
            pkaction: None,
            systemd: None,
        };
        let d = detect(&empty);
        assert_eq!(d.distro, Distro::Other { id: "linux".into() });
        assert_eq!(d.topology.invoking.name, "root");
        assert!(d.unsupported.is_some());
        assert!(
            d.warnings.iter().any(|w| w.contains("/etc/os-release")),
            "{:?}",
            d.warnings
        );
        assert!(
            d.warnings.iter().any(|w| w.contains("/etc/passwd")),
            "{:?}",
            d.warnings
        );
    }

    #[test]
    fn uname_arches() {
        let cases = [
            ("x86_64", "x86_64"),
            ("aarch64", "aarch64"),
            ("x86", "i686"),
            ("arm", "armv7l"),
            ("riscv64", "riscv64"),
        ];
        for (rust, uname) in cases {
            assert_eq!(uname_arch(rust), uname);
        }
    }

    /// A Debian 12 host tree from the fixtures.
    fn host_tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("tempdir");
        let r = d.path();
        let put = |rel: &str, text: &str| {
            let p = r.join(rel);
            fs_err::create_dir_all(p.parent().expect("has parent")).expect("mkdir");
            fs_err::write(p, text).expect("write");
        };
        put("etc/os-release", &fixture("os-release/debian-12"));
        put("etc/passwd", &fixture("passwd/passwd"));
        put("proc/1/comm", "systemd\n");
        put(
            "usr/lib/x86_64-linux-gnu/systemd/libsystemd-shared-252.so",
            "",
        );
        put(
            "usr/lib/x86_64-linux-gnu/systemd/libsystemd-core-252.so",
            "",
        );
        put("lib/systemd/libsystemd-shared-247.so", "");
        put("var/lib/systemd/linger/alice", "");
        for dir in [
            "run/systemd/system",
            "etc/polkit-1/rules.d",
            "run/user/1000/systemd",
        ] {
            fs_err::create_dir_all(r.join(dir)).expect("mkdir");
        }
        d
    }

    #[test]
    fn host_probe_reads_under_root() {
        let tree = host_tree();
        let p = HostProbe::new(tree.path());
        assert_eq!(p.read("/proc/1/comm").as_deref(), Some("systemd\n"));
        assert_eq!(p.read("/etc/missing"), None);
        assert!(p.exists("/run/systemd/system"));
        assert!(p.exists("/var/lib/systemd/linger/alice"));
        assert!(!p.exists("/var/lib/systemd/linger/bob"));
        assert_eq!(
            p.systemd_version().as_deref(),
            Some("252"),
            "highest libsystemd-shared wins"
        );
        assert_eq!(p.pkaction_version(), None, "no commands under a test root");
        assert!(!p.arch().is_empty());

        let d = detect(&p);
        assert_eq!(
            d.distro,
            Distro::Debian {
                version: Some("12".into())
            }
        );
        assert_eq!(d.topology.init, Init::Systemd { version: Some(252) });
        assert_eq!(d.topology.polkit, rules(None));
    }

    #[test]
    fn host_probe_version_variants() {
        let cases: &[(&str, Option<&str>)] = &[
            ("usr/lib/systemd/libsystemd-shared-249.so", Some("249")),
            (
                "usr/lib64/systemd/libsystemd-shared-255.13-1.fc40.so",
                Some("255.13-1.fc40"),
            ),
            (
                "usr/lib/aarch64-linux-gnu/systemd/libsystemd-shared-257.so",
                Some("257"),
            ),
            ("usr/lib/systemd/libsystemd-shared-garbage.so", None),
            ("usr/lib/systemd/systemd", None),
        ];
        for (rel, want) in cases {
            let d = tempfile::tempdir().expect("tempdir");
            let p = d.path().join(rel);
            fs_err::create_dir_all(p.parent().expect("has parent")).expect("mkdir");
            fs_err::write(&p, "").expect("write");
            assert_eq!(
                HostProbe::new(d.path()).systemd_version().as_deref(),
                *want,
                "{rel}"
            );
        }
    }
}
