//! Everything a plan of one service at one revision needs, gathered by the host adapter
//! (`host::images`) before anything changes: a plain value, so the planning below is pure.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{anyhow, Result};

use crate::config::ServiceDef;
use crate::error::BadInput;
use crate::image::ResolvedImage;
use crate::plan::{self, Deployment, InstancePlan, PlanContext, ResolvedUser};

/// Everything a plan of one service at one revision needs, gathered before anything changes.
pub struct Prepared {
    pub service: ServiceDef,
    pub revision: String,
    pub image: ResolvedImage,
    /// The image's layer directories, lowest first (see `PlanContext::lowers`).
    pub lowers: Vec<PathBuf>,
    pub secrets: Vec<(String, String)>,
    /// The secret files' contents by source, for a new deployment to store
    /// (`host::secrets::save_files`) before its first instance starts; empty otherwise.
    pub secret_file_contents: BTreeMap<String, Vec<u8>>,
    /// Where the service's secret files are stored (mounted from there read-only).
    pub secret_files_dir: PathBuf,
    pub user: ResolvedUser,
    /// A note for `shim show` when the user could not be resolved without unpacking.
    pub user_note: Option<String>,
    pub runtime_bin: PathBuf,
    pub shim_exe: PathBuf,
    pub instances_dir: PathBuf,
    pub host_files: Vec<PathBuf>,
    pub port_range: (u16, u16),
    pub restrict_devices: bool,
    pub restart: plan::RestartPolicy,
    pub podman: plan::PodmanStorage,
    /// The seccomp profile's text, None for `seccomp = "unconfined"`.
    pub seccomp: Option<String>,
    /// The host kernel's (major, minor).
    pub kernel: (u32, u32),
    /// The deployment this is the plan of: gathered fresh by an upgrade (then recorded before
    /// anything starts), or read back from the record by every later start. `service`,
    /// `revision`, `user`, `seccomp` and the image's config above are its values.
    pub deployment: Deployment,
    /// Where the service's volumes are (`/var/lib/shim/volumes/<service>`).
    pub volumes_dir: PathBuf,
    /// The static init for `init = true` (checked to exist when a process asks for it).
    pub init_bin: PathBuf,
}

impl Prepared {
    /// The plan context; `secrets` lets `shim show` pass redacted values.
    pub fn context<'a>(&'a self, secrets: &'a [(String, String)]) -> PlanContext<'a> {
        PlanContext {
            service: &self.service,
            revision: &self.revision,
            image: &self.image.config,
            lowers: &self.lowers,
            secrets,
            user: self.user,
            runtime_bin: &self.runtime_bin,
            shim_exe: &self.shim_exe,
            instances_dir: &self.instances_dir,
            host_files: &self.host_files,
            restrict_devices: self.restrict_devices,
            restart: self.restart,
            podman: &self.podman,
            seccomp: self.seccomp.as_deref(),
            kernel: self.kernel,
            deployment: Some(&self.deployment),
            volumes_dir: &self.volumes_dir,
            init_bin: &self.init_bin,
            secret_files_dir: &self.secret_files_dir,
        }
    }

    /// Plans the given (process, index) instances with the given ports.
    pub fn plan(
        &self,
        secrets: &[(String, String)],
        wanted: &[(String, u32)],
        ports: &BTreeMap<(String, u32), u16>,
    ) -> Result<Vec<InstancePlan>> {
        let cx = self.context(secrets);
        wanted
            .iter()
            .map(|(p, i)| {
                let process = self
                    .service
                    .processes
                    .iter()
                    .find(|(k, _)| k.as_str() == p)
                    .map(|(_, v)| v)
                    .ok_or_else(|| anyhow!("process {p} not defined"))?;
                let port = ports.get(&(p.clone(), *i)).copied();
                plan::plan_instance(&cx, process, *i, port).map_err(|m| anyhow!(BadInput(m)))
            })
            .collect()
    }

    /// Every (process, index) the definition asks for.
    pub fn all_instances(&self) -> Vec<(String, u32)> {
        plan::instance_keys(&self.deployment)
            .map(|(k, _)| (k.process.to_string(), k.index))
            .collect()
    }
}
