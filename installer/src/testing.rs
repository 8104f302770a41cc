//! Test doubles shared by the installer's and the upgrader's unit tests: a recording service
//! manager, logind and host (`Fake`). Built for this crate's tests and, with the `testing`
//! feature, for the tests of crates above it; never in a shipped binary.
use crate::apply::Host;
use outpost_systemd::{Logind, Scope, ServiceManager, SvcError, UnitStatus, Whom};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

#[derive(Default)]
pub struct FakeState {
    pub calls: Vec<String>,
    pub active: bool,
    pub enabled: bool,
    pub loaded: bool,
    pub users: BTreeMap<String, (u32, u32)>,
    /// uids whose linger is on (set through [`Logind::set_linger`]).
    pub lingering: BTreeSet<u32>,
    pub fail_start: bool,
    /// Fail only this many start/restart jobs, then succeed.
    pub fail_next_starts: u32,
    /// The unit's start limit, as systemd keeps it (`StartLimitBurst=`, the whole test inside
    /// one `StartLimitIntervalSec=`): a start/restart job past this many since the last
    /// `reset_failed` fails with `start-limit-hit`. `None`: no limit.
    pub start_limit_burst: Option<u32>,
    /// Start/restart jobs since the last `reset_failed` (the start-limit counter).
    pub starts_since_reset: u32,
}

#[derive(Clone, Default)]
pub struct Fake(pub Rc<RefCell<FakeState>>);

impl Fake {
    /// Record `call` and hand out the state to change.
    pub fn call(&self, call: String) -> std::cell::RefMut<'_, FakeState> {
        let mut s = self.0.borrow_mut();
        s.calls.push(call);
        s
    }

    /// Names of the users whose linger is on (what `install` observes on a host).
    pub fn lingering_users(&self) -> BTreeSet<String> {
        let s = self.0.borrow();
        s.users
            .iter()
            .filter(|(_, (uid, _))| s.lingering.contains(uid))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// start/restart: fails when `fail_start` is set, else the unit is active.
    fn run_job(&self, action: &str, u: &str) -> Result<(), SvcError> {
        let mut s = self.call(format!("{action} {u}"));
        s.starts_since_reset += 1;
        if s.start_limit_burst
            .is_some_and(|b| s.starts_since_reset > b)
        {
            return Err(SvcError::Job {
                action: action.into(),
                unit: u.into(),
                result: "start-limit-hit".into(),
            });
        }
        let once = s.fail_next_starts > 0;
        if once {
            s.fail_next_starts -= 1;
        }
        if s.fail_start || once {
            return Err(SvcError::Job {
                action: action.into(),
                unit: u.into(),
                result: "failed".into(),
            });
        }
        s.active = true;
        Ok(())
    }
}

impl ServiceManager for Fake {
    fn scope(&self) -> Scope {
        Scope::System
    }
    fn daemon_reload(&self) -> Result<(), SvcError> {
        self.call("daemon-reload".into()).loaded = true;
        Ok(())
    }
    fn enable(&self, u: &str) -> Result<(), SvcError> {
        self.call(format!("enable {u}")).enabled = true;
        Ok(())
    }
    fn disable(&self, u: &str) -> Result<(), SvcError> {
        let mut s = self.call(format!("disable {u}"));
        s.enabled = false;
        s.loaded = false;
        Ok(())
    }
    fn start(&self, u: &str) -> Result<(), SvcError> {
        self.run_job("start", u)
    }
    fn stop(&self, u: &str) -> Result<(), SvcError> {
        self.call(format!("stop {u}")).active = false;
        Ok(())
    }
    fn restart(&self, u: &str) -> Result<(), SvcError> {
        self.run_job("restart", u)
    }
    fn reset_failed(&self, _u: &str) -> Result<(), SvcError> {
        // Not recorded as a call (the call lists of the tests stay what they were); clears
        // the start-limit counter, as ResetFailedUnit does.
        self.0.borrow_mut().starts_since_reset = 0;
        Ok(())
    }
    fn start_transient(&self, u: &str, _d: &str, argv: &[String]) -> Result<(), SvcError> {
        self.call(format!("start-transient {u} {}", argv.join(" ")));
        Ok(())
    }
    fn kill(&self, u: &str, whom: Whom, signal: i32) -> Result<(), SvcError> {
        self.call(format!("kill {u} {} {signal}", whom.as_str()));
        Ok(())
    }
    fn status(&self, _u: &str) -> Result<UnitStatus, SvcError> {
        let s = self.0.borrow();
        Ok(UnitStatus {
            load_state: if s.loaded { "loaded" } else { "not-found" }.into(),
            active_state: if s.active { "active" } else { "inactive" }.into(),
            sub_state: if s.active { "running" } else { "dead" }.into(),
            unit_file_state: if s.enabled { "enabled" } else { "disabled" }.into(),
            main_pid: if s.active { 4242 } else { 0 },
            ..Default::default()
        })
    }
}

impl Logind for Fake {
    fn set_linger(&self, uid: u32, enable: bool) -> Result<(), SvcError> {
        let mut s = self.call(format!("linger {uid} {enable}"));
        if enable {
            s.lingering.insert(uid);
        } else {
            s.lingering.remove(&uid);
        }
        Ok(())
    }
}

impl Host for Fake {
    fn service_manager(&self, _scope: Scope) -> Result<Box<dyn ServiceManager>, SvcError> {
        Ok(Box::new(self.clone()))
    }
    fn logind(&self) -> Result<Box<dyn Logind>, SvcError> {
        Ok(Box::new(self.clone()))
    }
    fn wait_user_manager(&self, uid: u32, _t: std::time::Duration) -> Result<(), SvcError> {
        self.call(format!("wait user@{uid}"));
        Ok(())
    }
    fn run(&self, argv: &[String]) -> Result<(), String> {
        let mut s = self.0.borrow_mut();
        s.calls.push(argv.join(" "));
        let name = argv.last().cloned().unwrap_or_default();
        if argv[0] == "useradd" {
            s.users.insert(name, (999, 999));
        } else {
            s.users.remove(&name);
        }
        Ok(())
    }
    fn user_ids(&self, name: &str) -> Option<(u32, u32)> {
        self.0.borrow().users.get(name).copied()
    }
}
