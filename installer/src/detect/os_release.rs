//! `/etc/os-release` parsing and distro classification (pure).
//!
//! The file format is a shell-compatible list of `KEY=value` assignments (os-release(5)).
//! Some distros are not visible in os-release at all (DietPi and 64-bit Raspberry Pi OS keep
//! Debian's file verbatim), so [`classify`] also takes [`DistroFacts`], which
//! [`super::probe::detect`] computes from marker files.
use super::{Distro, OsRelease};

/// Facts about the host that os-release does not carry, computed by the probe from files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DistroFacts {
    /// A graphical session is installed: a display manager or an Ubuntu desktop session
    /// (`/etc/X11/default-display-manager`, `/usr/share/xsessions/ubuntu.desktop`, …).
    /// Only used to tell Ubuntu desktop from Ubuntu server.
    pub desktop: bool,
    /// `/boot/dietpi/.version` or `/boot/dietpi` exists.
    pub dietpi: bool,
    /// `/etc/rpi-issue` exists (Raspberry Pi OS; the 64-bit images say `ID=debian`).
    pub rpi: bool,
}

/// Parse os-release text. Unknown keys are ignored, malformed lines skipped; a missing `ID`
/// defaults to `linux` as os-release(5) specifies.
pub fn parse(text: &str) -> OsRelease {
    let mut os = OsRelease::default();
    for line in text.lines() {
        let Some((key, value)) = outpost_core::kv::assignment(line) else {
            continue;
        };
        let opt = |v: String| if v.is_empty() { None } else { Some(v) };
        match key {
            "ID" => os.id = value,
            "ID_LIKE" => os.id_like = value.split_whitespace().map(str::to_owned).collect(),
            "VERSION_ID" => os.version_id = opt(value),
            "VERSION_CODENAME" => os.version_codename = opt(value),
            "PRETTY_NAME" => os.pretty_name = opt(value),
            "VARIANT_ID" => os.variant_id = opt(value),
            _ => {}
        }
    }
    if os.id.is_empty() {
        os.id = "linux".to_owned();
    }
    os
}

/// Which distro family this is. Precedence: DietPi marker, Raspberry Pi OS (`ID=raspbian`,
/// or `ID=debian` plus `/etc/rpi-issue`), then `ID` (`ubuntu`, `debian`, `alpine`); anything
/// else, including Ubuntu/Debian derivatives that only match via `ID_LIKE`, is
/// [`Distro::Other`] (untested).
pub fn classify(os: &OsRelease, facts: &DistroFacts) -> Distro {
    let version = os.version_id.clone();
    let debianish = os.id == "debian" || os.id == "raspbian";
    match os.id.as_str() {
        _ if facts.dietpi && debianish => Distro::DietPi,
        "raspbian" => Distro::RaspberryPiOs { version },
        "debian" if facts.rpi => Distro::RaspberryPiOs { version },
        "debian" => Distro::Debian { version },
        "ubuntu" => Distro::Ubuntu {
            version,
            desktop: facts.desktop,
        },
        "alpine" => Distro::Alpine { version },
        id => Distro::Other { id: id.to_owned() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    macro_rules! fixture {
        ($name:literal) => {
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../tests/fixtures/os-release/",
                $name
            ))
        };
    }

    fn v(s: &str) -> Option<String> {
        Some(s.to_owned())
    }

    #[test]
    fn classifies_fixtures() {
        let none = DistroFacts::default();
        let desktop = DistroFacts {
            desktop: true,
            ..none
        };
        let dietpi = DistroFacts {
            dietpi: true,
            ..none
        };
        let rpi = DistroFacts { rpi: true, ..none };
        let cases: &[(&str, &str, DistroFacts, Distro)] = &[
            (
                "ubuntu-22.04 server",
                fixture!("ubuntu-22.04"),
                none,
                Distro::Ubuntu {
                    version: v("22.04"),
                    desktop: false,
                },
            ),
            (
                "ubuntu-22.04 desktop",
                fixture!("ubuntu-22.04"),
                desktop,
                Distro::Ubuntu {
                    version: v("22.04"),
                    desktop: true,
                },
            ),
            (
                "ubuntu-24.04 server",
                fixture!("ubuntu-24.04"),
                none,
                Distro::Ubuntu {
                    version: v("24.04"),
                    desktop: false,
                },
            ),
            (
                "ubuntu-24.04 desktop",
                fixture!("ubuntu-24.04"),
                desktop,
                Distro::Ubuntu {
                    version: v("24.04"),
                    desktop: true,
                },
            ),
            (
                "debian-12",
                fixture!("debian-12"),
                none,
                Distro::Debian { version: v("12") },
            ),
            (
                "debian-12 with a desktop is still debian",
                fixture!("debian-12"),
                desktop,
                Distro::Debian { version: v("12") },
            ),
            (
                "debian-13",
                fixture!("debian-13"),
                none,
                Distro::Debian { version: v("13") },
            ),
            ("dietpi", fixture!("dietpi"), dietpi, Distro::DietPi),
            (
                "dietpi without marker is debian",
                fixture!("dietpi"),
                none,
                Distro::Debian { version: v("12") },
            ),
            (
                "dietpi on a raspberry pi",
                fixture!("dietpi"),
                DistroFacts {
                    dietpi: true,
                    rpi: true,
                    desktop: false,
                },
                Distro::DietPi,
            ),
            (
                "raspios arm64 (ID=debian)",
                fixture!("raspios-bookworm-arm64"),
                rpi,
                Distro::RaspberryPiOs { version: v("12") },
            ),
            (
                "raspios armhf (ID=raspbian)",
                fixture!("raspios-bookworm-armhf"),
                none,
                Distro::RaspberryPiOs { version: v("12") },
            ),
            (
                "alpine-3.20",
                fixture!("alpine-3.20"),
                none,
                Distro::Alpine {
                    version: v("3.20.3"),
                },
            ),
            (
                "fedora-40",
                fixture!("fedora-40"),
                none,
                Distro::Other {
                    id: "fedora".into(),
                },
            ),
            (
                "ubuntu marker facts do not leak to fedora",
                fixture!("fedora-40"),
                dietpi,
                Distro::Other {
                    id: "fedora".into(),
                },
            ),
            ("empty file", "", none, Distro::Other { id: "linux".into() }),
            (
                "derivative via ID_LIKE only",
                "ID=linuxmint\nID_LIKE=\"ubuntu debian\"\n",
                none,
                Distro::Other {
                    id: "linuxmint".into(),
                },
            ),
        ];
        for (name, text, facts, want) in cases {
            assert_eq!(&classify(&parse(text), facts), want, "{name}");
        }
    }

    #[test]
    fn parses_fixture_fields() {
        let os = parse(fixture!("ubuntu-22.04"));
        assert_eq!(
            os,
            OsRelease {
                id: "ubuntu".into(),
                id_like: vec!["debian".into()],
                version_id: v("22.04"),
                version_codename: v("jammy"),
                pretty_name: v("Ubuntu 22.04.4 LTS"),
                variant_id: None,
            }
        );
        let os = parse(fixture!("fedora-40"));
        assert_eq!(os.variant_id, v("server"));
        assert_eq!(os.version_codename, None, "empty value is None");
        assert_eq!(os.pretty_name, v("Fedora Linux 40 (Server Edition)"));
        let os = parse(fixture!("raspios-bookworm-armhf"));
        assert_eq!(
            (os.id.as_str(), os.id_like.as_slice()),
            ("raspbian", &["debian".to_owned()][..])
        );
    }

    #[test]
    fn shell_quoting() {
        let cases: &[(&str, &str)] = &[
            ("PRETTY_NAME=plain", "plain"),
            ("PRETTY_NAME=\"double quoted\"", "double quoted"),
            ("PRETTY_NAME='single \"quoted\"'", "single \"quoted\""),
            (
                "PRETTY_NAME=\"esc \\\"q\\\" \\\\ \\$HOME \\`x\\`\"",
                "esc \"q\" \\ $HOME `x`",
            ),
            (
                "PRETTY_NAME=\"keeps \\n unknown escapes\"",
                "keeps \\n unknown escapes",
            ),
            ("PRETTY_NAME='no \\ escapes'", "no \\ escapes"),
            ("PRETTY_NAME=bare\\ space", "bare space"),
            ("PRETTY_NAME=\"con\"'cat'enated", "concatenated"),
            ("PRETTY_NAME=value # trailing comment", "value"),
            ("  PRETTY_NAME=\"indented\"", "indented"),
            ("export PRETTY_NAME=exported", "exported"),
            ("PRETTY_NAME=\"a=b\"", "a=b"),
        ];
        for (line, want) in cases {
            assert_eq!(parse(line).pretty_name.as_deref(), Some(*want), "{line}");
        }
    }

    #[test]
    fn skips_garbage() {
        let cases: &[&str] = &[
            "# PRETTY_NAME=comment",
            "",
            "   ",
            "PRETTY_NAME=\"unterminated",
            "PRETTY_NAME='unterminated",
            "PRETTY NAME=x",
            "1PRETTY_NAME=x",
            "=x",
            "no equals sign",
            "PRETTY_NAME=",
        ];
        for line in cases {
            assert_eq!(parse(line).pretty_name, None, "{line:?}");
        }
        // Garbage does not stop parsing of later lines; later assignments win.
        let os = parse("junk\nID=debian\n\"bad\nID=ubuntu\n");
        assert_eq!(os.id, "ubuntu");
    }
}
