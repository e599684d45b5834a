//! Operations: what each command does, driving the host adapters (`crate::host`) with the
//! pure core's decisions (`crate::plan`, `crate::config`, `crate::crontab`). Every operation
//! takes the one [`crate::host::Host`] built in `main`; none connects to anything itself.
//! They return models (reports, status rows) that the CLI renders.

pub mod cron;
pub mod instances;
pub mod probe;
pub mod probe_timer;
pub mod proxy;
pub mod reconcile;
pub mod run;
pub mod service_unit;
pub mod show;
pub mod status;
pub mod stop;
pub mod supervise;
pub mod upgrade;
pub mod view;
pub mod volumes;

#[cfg(test)]
pub mod testkit;
