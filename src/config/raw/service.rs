//! A `[services.<id>]` table: its id, image, env, env files, cron, and its processes
//! (each validated by `process.rs`, over the service's defaults).

use super::*;

pub(super) fn validate_env(
    cx: &Ctx<'_>,
    env: &BTreeMap<Spanned<String>, String>,
    prefix: &str,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut out = BTreeMap::new();
    for (k, v) in env {
        let name = k.get_ref();
        let ok = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return cx.err(
                &k.span(),
                format!("{prefix}.env.{name}"),
                format!("{name:?} is not a valid environment variable name (letters, digits and '_', not starting with a digit)"),
            );
        }
        if v.contains('\0') {
            return cx.err(
                &k.span(),
                format!("{prefix}.env.{name}"),
                "value contains a NUL byte".into(),
            );
        }
        out.insert(name.clone(), v.clone());
    }
    Ok(out)
}

/// Ids whose service unit `shim-<id>.service` is one the package ships.
pub(super) const RESERVED_SERVICE_IDS: [&str; 1] = ["reconcile"];

pub(super) fn refuse_reserved(
    cx: &Ctx<'_>,
    id: &Spanned<String>,
    prefix: &str,
) -> Result<(), ConfigError> {
    if !RESERVED_SERVICE_IDS.contains(&id.get_ref().as_str()) {
        return Ok(());
    }
    cx.err(
        &id.span(),
        prefix.to_string(),
        format!(
            "service id {:?} is reserved: its unit shim-{0}.service would be shim's own",
            id.get_ref()
        ),
    )
}

pub(super) fn validate_service(
    cx: &Ctx<'_>,
    id: &Spanned<String>,
    svc: &Spanned<RawService>,
) -> Result<ServiceDef, ConfigError> {
    let prefix = format!("services.{}", id.get_ref());
    let ident = Ident::parse(id.get_ref())
        .or_else(|m| cx.err(&id.span(), prefix.clone(), format!("service id {m}")))?;
    refuse_reserved(cx, id, &prefix)?;
    let line = Some(line_of(cx.text, id.span().start));
    let r = svc.get_ref();

    let image = validate_image(cx, &prefix, id, &r.image)?;
    let env = validate_env(cx, &r.env, &prefix)?;
    let env_files = validate_env_files(cx, &prefix, &r.env_files)?;
    let user = match &r.user {
        None => None,
        Some(u) => {
            crate::config::parse_user_spec(u.get_ref())
                .or_else(|m| cx.err(&u.span(), format!("{prefix}.user"), m))?;
            Some(u.get_ref().clone())
        }
    };
    let cron = match &r.cron {
        None => None,
        Some(c) => Some(validate_cron(cx, &prefix, c)?),
    };
    let seccomp = match &r.seccomp {
        None => crate::config::Seccomp::Default,
        Some(v) => parse_seccomp(cx, &prefix, v)?,
    };
    let limits = validate_limits(cx, &prefix, (&r.memory, &r.cpus, &r.pids, &r.nofile))?;
    let surface = Surface {
        limits,
        mounts: validate_mounts(cx, &prefix, &r.mounts)?,
        cap_add: validate_caps(cx, &format!("{prefix}.cap_add"), &r.cap_add)?,
        cap_drop: validate_caps(cx, &format!("{prefix}.cap_drop"), &r.cap_drop)?,
        init: r.init.unwrap_or(false),
        secrets: validate_secrets(cx, &prefix, &r.secrets)?,
    };
    let processes = validate_processes(cx, &prefix, id, &r.processes, &surface)?;
    if *r.runtime.get_ref() == Runtime::Podman {
        for (name, p) in &processes {
            let command_check = p.health.as_ref().is_some_and(|h| !h.command.is_empty());
            if !p.mounts.is_empty()
                || !p.cap_add.is_empty()
                || !p.cap_drop.is_empty()
                || p.init
                || command_check
                || !p.secrets.is_empty()
                || p.seccomp.is_some()
            {
                return cx.err(
                    &r.runtime.span(),
                    format!("{prefix}.processes.{name}"),
                    "mounts, cap_add, cap_drop, init, secrets, a process's own seccomp and command health checks are not supported with runtime = \"podman\" yet: use runc or crun".into(),
                );
            }
        }
    }

    Ok(ServiceDef {
        id: ident,
        source: cx.file.to_path_buf(),
        line,
        image: image.get_ref().clone(),
        image_line: Some(line_of(cx.text, image.span().start)),
        runtime: *r.runtime.get_ref(),
        env,
        env_files,
        user,
        seccomp,
        cron,
        processes,
    })
}

/// `image`: present, and a reference that parses once a revision is filled in.
pub(super) fn validate_image<'a>(
    cx: &Ctx<'_>,
    prefix: &str,
    id: &Spanned<String>,
    image: &'a Option<Spanned<String>>,
) -> Result<&'a Spanned<String>, ConfigError> {
    let Some(image) = image else {
        return cx.err(
            &id.span(),
            format!("{prefix}.image"),
            "missing: every service needs an image, e.g. \"oci:/var/lib/images/app:{revision}\""
                .into(),
        );
    };
    if image.get_ref().trim().is_empty() {
        return cx.err(&image.span(), format!("{prefix}.image"), "is empty".into());
    }
    // The reference must parse once a revision is filled in; catching a typo here keeps it from
    // surfacing half way through a deploy.
    let probe = image.get_ref().replace("{revision}", "0000000");
    if let Err(e) = crate::image::ImageRef::parse(&probe) {
        return cx.err(&image.span(), format!("{prefix}.image"), e.to_string());
    }
    Ok(image)
}

/// `env_files`: absolute paths.
pub(super) fn validate_env_files(
    cx: &Ctx<'_>,
    prefix: &str,
    files: &[Spanned<String>],
) -> Result<Vec<PathBuf>, ConfigError> {
    let mut env_files = Vec::new();
    for f in files {
        let p = PathBuf::from(f.get_ref());
        if !p.is_absolute() {
            return cx.err(
                &f.span(),
                format!("{prefix}.env_files"),
                format!("{:?} must be an absolute path", f.get_ref()),
            );
        }
        env_files.push(p);
    }
    Ok(env_files)
}

/// `cron`: the path of the crontab generator in the image.
pub(super) fn validate_cron(
    cx: &Ctx<'_>,
    prefix: &str,
    c: &Spanned<String>,
) -> Result<String, ConfigError> {
    let v = c.get_ref();
    if v.trim().is_empty() || v.contains('\0') || v.trim() != v {
        return cx.err(
            &c.span(),
            format!("{prefix}.cron"),
            format!(
                "{v:?} must be the path of a program in the image that prints a crontab, \
                 e.g. \"bin/generate-cron\" (relative to the image's working directory) \
                 or \"/app/bin/generate-cron\""
            ),
        );
    }
    Ok(v.clone())
}

/// `processes`: at least one, each with a valid name.
fn validate_processes(
    cx: &Ctx<'_>,
    prefix: &str,
    id: &Spanned<String>,
    raw: &BTreeMap<Spanned<String>, Spanned<RawProcess>>,
    service: &Surface,
) -> Result<BTreeMap<Ident, ProcessDef>, ConfigError> {
    if raw.is_empty() {
        return cx.err(
            &id.span(),
            format!("{prefix}.processes"),
            "missing: define at least one process, e.g. [services.ID.processes.web]".into(),
        );
    }
    let mut processes = BTreeMap::new();
    for (pname, p) in raw {
        let pprefix = format!("{prefix}.processes.{}", pname.get_ref());
        let pident = Ident::parse(pname.get_ref())
            .or_else(|m| cx.err(&pname.span(), pprefix.clone(), format!("process name {m}")))?;
        let mut def = validate_process(cx, &pprefix, pident.clone(), p)?;
        let r = p.get_ref();
        def.limits = def.limits.or(service.limits);
        if r.mounts.is_none() {
            def.mounts = service.mounts.clone();
        }
        if r.cap_add.is_none() {
            def.cap_add = service.cap_add.clone();
        }
        if r.cap_drop.is_none() {
            def.cap_drop = service.cap_drop.clone();
        }
        if r.init.is_none() {
            def.init = service.init;
        }
        if r.secrets.is_none() {
            def.secrets = service.secrets.clone();
        }
        if let Some(s) = def
            .secrets
            .iter()
            .find(|s| def.mounts.iter().any(|m| m.target() == s.target))
        {
            return cx.err(
                &p.span(),
                format!("{pprefix}.secrets"),
                format!("target {:?} is both a secret and a mount", s.target),
            );
        }
        processes.insert(pident, def);
    }
    Ok(processes)
}

/// What a service gives its processes by default: limits, mounts, capabilities.
struct Surface {
    limits: Limits,
    mounts: Vec<MountDef>,
    cap_add: Vec<String>,
    cap_drop: Vec<String>,
    init: bool,
    secrets: Vec<SecretFile>,
}
