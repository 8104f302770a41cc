//! `outpost self-test`: proves this binary can run the installed service.
//!
//! It loads the live config and checks the state directory. The upgrader runs it on a new
//! version before it stops the old one.
use crate::run::RunError;
use outpost_core::config::Config;
use std::path::Path;

/// Check that `dir` exists, is a directory and is writable by the current user.
pub fn check_state_dir(dir: &Path) -> Result<(), RunError> {
    let err = |source| RunError::StateDir {
        path: dir.to_path_buf(),
        source,
    };
    let meta = fs_err::metadata(dir).map_err(|e| err(std::io::Error::new(e.kind(), "missing")))?;
    if !meta.is_dir() {
        return Err(err(std::io::Error::other("not a directory")));
    }
    rustix::fs::access(
        dir,
        rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK,
    )
    .map_err(|e| err(std::io::Error::from(e)))?;
    Ok(())
}

pub struct SelfTest {
    pub version: &'static str,
    pub config: Config,
}

pub fn self_test(config_path: &Path, state_dir: &Path) -> Result<SelfTest, RunError> {
    let config = Config::load(config_path)?;
    check_state_dir(state_dir)?;
    Ok(SelfTest {
        version: outpost_release::VERSION,
        config,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_dir_checks() {
        let d = tempfile::tempdir().unwrap();
        check_state_dir(d.path()).unwrap();
        assert!(check_state_dir(&d.path().join("missing")).is_err());
        let f = d.path().join("file");
        std::fs::write(&f, "").unwrap();
        assert!(check_state_dir(&f).is_err());
    }

    #[test]
    fn self_test_loads_config() {
        let d = tempfile::tempdir().unwrap();
        let c = d.path().join("config.toml");
        std::fs::write(&c, Config::TEMPLATE).unwrap();
        let r = self_test(&c, d.path()).unwrap();
        assert_eq!(r.version, outpost_release::VERSION);
        std::fs::write(&c, "bogus = 1").unwrap();
        assert!(self_test(&c, d.path()).is_err());
    }
}
