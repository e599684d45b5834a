//! A `[services.<id>.processes.<name>]` table: command, count, port, stop, proxy, and what
//! it adds to the service's defaults (limits, mounts, capabilities, secrets, seccomp).

use super::*;

/// Largest `count` accepted: a typo like `count = 4000` should not start thousands of units.
pub(super) const MAX_COUNT: i64 = 256;

pub(super) fn validate_process(
    cx: &Ctx<'_>,
    prefix: &str,
    name: Ident,
    p: &Spanned<RawProcess>,
) -> Result<ProcessDef, ConfigError> {
    let r = p.get_ref();
    let command = match &r.command {
        None => None,
        Some(c) => Some(validate_command(cx, prefix, c)?),
    };
    let count = match &r.count {
        None => 1,
        Some(c) => validate_count(cx, prefix, c)?,
    };
    let health = match &r.health {
        None => None,
        Some(h) => Some(validate_health(cx, &format!("{prefix}.health"), h)?),
    };
    let checks_port = health.as_ref().is_some_and(Health::needs_port);
    refuse_port_false(cx, prefix, p, checks_port)?;
    let (stop_timeout, stop_signal) = validate_stop(cx, prefix, r)?;
    let env = validate_env(cx, &r.env, prefix)?;
    let proxy = match &r.proxy {
        None => None,
        Some(px) => Some(validate_proxy(cx, prefix, px, health.is_some())?),
    };
    if let (Some(px), 0) = (&r.proxy, count) {
        return cx.err(
            &px.span(),
            format!("{prefix}.proxy"),
            "count = 0 with a proxy: nginx would be pointed at no instance (remove the proxy, or raise count)".into(),
        );
    }
    let drain = match &r.drain {
        None => Duration::from_secs(5),
        Some(d) => cx.duration(d, format!("{prefix}.drain"))?,
    };
    let limits = validate_limits(cx, prefix, (&r.memory, &r.cpus, &r.pids, &r.nofile))?;
    Ok(ProcessDef {
        limits,
        mounts: validate_mounts(cx, prefix, &r.mounts)?,
        cap_add: validate_caps(cx, &format!("{prefix}.cap_add"), &r.cap_add)?,
        cap_drop: validate_caps(cx, &format!("{prefix}.cap_drop"), &r.cap_drop)?,
        init: r.init.unwrap_or(false),
        secrets: validate_secrets(cx, prefix, &r.secrets)?,
        seccomp: match &r.seccomp {
            None => None,
            Some(v) => Some(parse_seccomp(cx, prefix, v)?),
        },
        name,
        command,
        count,
        port: r.port.unwrap_or(checks_port || r.proxy.is_some()),
        health,
        stop_timeout,
        stop_signal,
        read_only: r.read_only,
        env,
        proxy,
        drain,
        singleton: r.singleton,
    })
}

/// `port = false` where the process needs a port: a proxy, or an HTTP/TCP health check.
fn refuse_port_false(
    cx: &Ctx<'_>,
    prefix: &str,
    p: &Spanned<RawProcess>,
    checks_port: bool,
) -> Result<(), ConfigError> {
    let r = p.get_ref();
    if r.port == Some(false) && r.proxy.is_some() {
        return cx.err(
            &p.span(),
            format!("{prefix}.port"),
            "port = false but a proxied process needs a port for nginx to reach".into(),
        );
    }
    if r.port == Some(false) && checks_port {
        return cx.err(
            &p.span(),
            format!("{prefix}.port"),
            "port = false but HTTP and TCP health checks need a port to reach the instance (a command check does not)".into(),
        );
    }
    Ok(())
}

/// `stop_timeout` (30 s by default) and `stop_signal` (normalised, `None` if unset).
fn validate_stop(
    cx: &Ctx<'_>,
    prefix: &str,
    r: &RawProcess,
) -> Result<(Duration, Option<String>), ConfigError> {
    let stop_timeout = match &r.stop_timeout {
        None => Duration::from_secs(30),
        Some(s) => validate_stop_timeout(cx, prefix, s)?,
    };
    let stop_signal = match &r.stop_signal {
        None => None,
        Some(s) => Some(
            normalise_signal(s.get_ref())
                .or_else(|m| cx.err(&s.span(), format!("{prefix}.stop_signal"), m))?,
        ),
    };
    Ok((stop_timeout, stop_signal))
}

/// `seccomp = "default" | "unconfined" | "/abs/profile.json"` at `prefix`.
pub(super) fn parse_seccomp(
    cx: &Ctx<'_>,
    prefix: &str,
    v: &Spanned<String>,
) -> Result<crate::config::Seccomp, ConfigError> {
    Ok(match v.get_ref().as_str() {
        "default" => crate::config::Seccomp::Default,
        "unconfined" => crate::config::Seccomp::Unconfined,
        p if p.starts_with('/') => crate::config::Seccomp::Profile(PathBuf::from(p)),
        other => {
            return cx.err(
                &v.span(),
                format!("{prefix}.seccomp"),
                format!("{other:?}: use \"default\", \"unconfined\" or an absolute path to a seccomp profile"),
            )
        }
    })
}

/// `command`: names a program.
pub(super) fn validate_command(
    cx: &Ctx<'_>,
    prefix: &str,
    c: &Spanned<Vec<String>>,
) -> Result<Vec<String>, ConfigError> {
    if c.get_ref().is_empty() || c.get_ref()[0].is_empty() {
        return cx.err(
            &c.span(),
            format!("{prefix}.command"),
            "must name a program; leave it out to use the image's entrypoint and cmd".into(),
        );
    }
    Ok(c.get_ref().clone())
}

/// `count`: within 0..MAX_COUNT.
pub(super) fn validate_count(
    cx: &Ctx<'_>,
    prefix: &str,
    c: &Spanned<i64>,
) -> Result<u32, ConfigError> {
    let n = *c.get_ref();
    if !(0..=MAX_COUNT).contains(&n) {
        return cx.err(
            &c.span(),
            format!("{prefix}.count"),
            format!("{n} is out of range 0..{MAX_COUNT}"),
        );
    }
    Ok(n as u32) // within 0..=256, checked just above
}

/// `stop_timeout`: a duration above 0.
pub(super) fn validate_stop_timeout(
    cx: &Ctx<'_>,
    prefix: &str,
    s: &Spanned<String>,
) -> Result<Duration, ConfigError> {
    let d = cx.duration(s, format!("{prefix}.stop_timeout"))?;
    if d.is_zero() {
        return cx.err(
            &s.span(),
            format!("{prefix}.stop_timeout"),
            "must be more than 0".into(),
        );
    }
    Ok(d)
}

/// `proxy`: an nginx upstream name and an absolute .conf path, for a health-checked process.
pub(super) fn validate_proxy(
    cx: &Ctx<'_>,
    prefix: &str,
    px: &Spanned<RawProxy>,
    has_health: bool,
) -> Result<Proxy, ConfigError> {
    let px_r = px.get_ref();
    let up = px_r.upstream.get_ref();
    if up.is_empty()
        || !up
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return cx.err(
            &px_r.upstream.span(),
            format!("{prefix}.proxy.upstream"),
            format!("{up:?} is not an nginx upstream name (letters, digits, '_', '-')"),
        );
    }
    let file = PathBuf::from(px_r.file.get_ref());
    if !file.is_absolute() || file.extension().is_none_or(|e| e != "conf") {
        return cx.err(
            &px_r.file.span(),
            format!("{prefix}.proxy.file"),
            format!(
                "{:?} must be an absolute path ending in .conf",
                px_r.file.get_ref()
            ),
        );
    }
    if !has_health {
        return cx.err(&px.span(), format!("{prefix}.proxy"), "a proxied process needs a health check: nginx is only switched to instances that answer it".into());
    }
    Ok(Proxy {
        upstream: up.clone(),
        file,
    })
}

/// `"SIGTERM"`, `"TERM"` or `"sigterm"` → `"SIGTERM"`, refusing names the kernel does not know.
pub(crate) fn normalise_signal(s: &str) -> Result<String, String> {
    let upper = s.trim().to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    nix::sys::signal::Signal::from_str(&name)
        .map(|sig| sig.as_str().to_string())
        .map_err(|_| format!("{s:?} is not a signal name (e.g. SIGTERM, SIGINT, SIGQUIT)"))
}
