//! The upgrader's test double on top of the installer's (`outpost_installer::testing`): a
//! stager serving stub releases.
use std::cell::RefCell;

pub use outpost_installer::testing::Fake;

/// A release host with stub builds: `stage` writes `versions/V/outpost`, a script whose
/// `self-test` succeeds unless the version is in `broken`.
#[derive(Default)]
pub struct FakeStager {
    pub newest: Option<semver::Version>,
    pub broken: Vec<semver::Version>,
    pub staged: RefCell<Vec<semver::Version>>,
}

impl crate::Stager for FakeStager {
    fn newest(&self, _channel: &str) -> outpost_installer::error::Result<Option<semver::Version>> {
        Ok(self.newest.clone())
    }

    fn stage(
        &self,
        version: &semver::Version,
        versions_dir: &std::path::Path,
    ) -> outpost_installer::error::Result<std::path::PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let dir = versions_dir.join(version.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let code = if self.broken.contains(version) { 1 } else { 0 };
        let bin = dir.join("outpost");
        std::fs::write(
            &bin,
            format!("#!/bin/sh\necho stub {version}\nexit {code}\n"),
        )
        .unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        self.staged.borrow_mut().push(version.clone());
        Ok(dir)
    }
}
