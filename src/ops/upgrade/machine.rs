//! The upgrade's steps and their legal order, as zincati's update agent does it: the driver
//! (`super::Run::tick`) performs one step and names the next; [`Machine::advance`] refuses
//! any transition not in [`Step::can_go_to`], so a step that is skipped or repeated by mistake
//! is an error, not a silent half-upgrade.
//!
//! ```text
//! fetch → lock → recover → plan → [crontab] → [singleton] → start → health → switch
//!      → [drain → stop-old] → record → probe → [cron] → done
//! ```
//!
//! The image is fetched (and every input checked) before the lock is taken, so that bad
//! input leaves not even a lock file behind; reconcile, which holds the lock already, goes
//! fetch → recover. A dry run goes fetch → plan → done. Any step may end in `failed` (the driver has already
//! bailed out: stopped what this run started, restored the upstream files).

use anyhow::{bail, Result};

/// One step of an upgrade (also of `start`, `rollback` and reconcile's repair).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    /// Nothing done yet.
    Init,
    Lock,
    Fetch,
    Recover,
    Plan,
    Crontab,
    Singleton,
    Start,
    Health,
    Switch,
    Drain,
    StopOld,
    Record,
    Probe,
    Cron,
    Done,
    Failed,
}

impl Step {
    /// The name printed in the step lines and in `--json`.
    pub fn name(self) -> &'static str {
        match self {
            Step::Init => "init",
            Step::Lock => "lock",
            Step::Fetch => "fetch",
            Step::Recover => "recover",
            Step::Plan => "plan",
            Step::Crontab => "crontab",
            Step::Singleton => "singleton",
            Step::Start => "start",
            Step::Health => "health",
            Step::Switch => "switch",
            Step::Drain => "drain",
            Step::StopOld => "stop-old",
            Step::Record => "record",
            Step::Probe => "probe",
            Step::Cron => "cron",
            Step::Done => "done",
            Step::Failed => "failed",
        }
    }

    /// Whether `next` may follow `self`.
    pub fn can_go_to(self, next: Step) -> bool {
        use Step::*;
        if next == Failed {
            return !matches!(self, Done | Failed);
        }
        matches!(
            (self, next),
            (Init, Fetch)
                | (Fetch, Lock)
                | (Lock, Recover)
                | (Fetch, Recover)
                | (Fetch, Plan)
                | (Recover, Plan)
                | (Plan, Done)
                | (Plan, Crontab)
                | (Plan, Singleton)
                | (Plan, Start)
                | (Crontab, Singleton)
                | (Crontab, Start)
                | (Singleton, Start)
                | (Start, Health)
                | (Health, Switch)
                | (Switch, Drain)
                | (Switch, StopOld)
                | (Switch, Record)
                | (Drain, StopOld)
                | (StopOld, Record)
                | (Record, Probe)
                | (Probe, Cron)
                | (Probe, Done)
                | (Cron, Done)
        )
    }
}

/// Where an upgrade is, and where it has been.
#[derive(Debug)]
pub struct Machine {
    step: Step,
    history: Vec<Step>,
}

impl Default for Machine {
    fn default() -> Self {
        Machine {
            step: Step::Init,
            history: vec![Step::Init],
        }
    }
}

impl Machine {
    pub fn step(&self) -> Step {
        self.step
    }

    /// The steps taken so far, `init` first.
    pub fn history(&self) -> &[Step] {
        &self.history
    }

    /// Moves to `next`, refusing a transition the upgrade does not have.
    pub fn advance(&mut self, next: Step) -> Result<()> {
        if !self.step.can_go_to(next) {
            bail!(
                "internal error: the upgrade cannot go from {} to {} (steps so far: {})",
                self.step.name(),
                next.name(),
                self.history
                    .iter()
                    .map(|s| s.name())
                    .collect::<Vec<_>>()
                    .join(" → ")
            );
        }
        self.step = next;
        self.history.push(next);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_full_path_and_the_dry_run_path_are_legal() {
        use Step::*;
        let full = [
            Fetch, Lock, Recover, Plan, Crontab, Singleton, Start, Health, Switch, Drain, StopOld,
            Record, Probe, Cron, Done,
        ];
        let mut m = Machine::default();
        for s in full {
            m.advance(s).unwrap();
        }
        assert_eq!(m.history().len(), full.len() + 1);
        let mut dry = Machine::default();
        for s in [Fetch, Plan, Done] {
            dry.advance(s).unwrap();
        }
        assert_eq!(dry.step(), Done);
    }

    #[test]
    fn skipping_health_or_going_back_is_refused_and_named() {
        let mut m = Machine::default();
        for s in [
            Step::Fetch,
            Step::Lock,
            Step::Recover,
            Step::Plan,
            Step::Start,
        ] {
            m.advance(s).unwrap();
        }
        let e = m.advance(Step::Switch).unwrap_err().to_string();
        assert!(e.contains("from start to switch"), "{e}");
        assert!(e.contains("fetch → lock → recover → plan → start"), "{e}");
        assert_eq!(
            m.step(),
            Step::Start,
            "a refused transition changes nothing"
        );
        assert!(m.advance(Step::Plan).is_err());
        m.advance(Step::Failed).unwrap();
        assert!(m.advance(Step::Failed).is_err(), "failed is terminal");
        assert!(!Step::Done.can_go_to(Step::Failed));
    }
}
