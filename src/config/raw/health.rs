//! `health`: which check a process has (HTTP path, TCP, or command) and its timings.

use super::*;

/// Which check `h` is: exactly one of `path` (HTTP), `tcp = true` or `command`. Returns the
/// path ("" unless HTTP) and the command (empty unless a command check).
pub(super) fn health_kind(
    cx: &Ctx<'_>,
    prefix: &str,
    h: &Spanned<RawHealth>,
) -> Result<(String, Vec<String>), ConfigError> {
    let r = h.get_ref();
    let given = [
        r.path.is_some(),
        r.tcp.unwrap_or(false),
        r.command.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        return cx.err(
            &h.span(),
            format!("{prefix}.path"),
            "give exactly one of path = \"/health\" (an HTTP check), tcp = true (a connect to $PORT) or command = [\"bin/check\"] (run in the container, healthy on exit 0)".into(),
        );
    }
    if let Some(c) = &r.command {
        let argv = c.get_ref();
        if argv.is_empty() || argv.iter().any(|a| a.is_empty() || a.contains('\0')) {
            return cx.err(
                &c.span(),
                format!("{prefix}.command"),
                "must be a non-empty list of non-empty arguments, e.g. [\"bin/healthcheck\", \"--quick\"]".into(),
            );
        }
        return Ok((String::new(), argv.clone()));
    }
    let Some(p) = &r.path else {
        return Ok((String::new(), Vec::new()));
    };
    let path = p.get_ref();
    if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return cx.err(
            &p.span(),
            format!("{prefix}.path"),
            format!("{path:?} must be an absolute URL path like \"/health\""),
        );
    }
    Ok((path.clone(), Vec::new()))
}

pub(super) fn validate_health(
    cx: &Ctx<'_>,
    prefix: &str,
    h: &Spanned<RawHealth>,
) -> Result<Health, ConfigError> {
    let r = h.get_ref();
    let (path, command) = health_kind(cx, prefix, h)?;
    let get = |v: &Option<Spanned<String>>, key: &str, default: Duration| match v {
        None => Ok(default),
        Some(s) => cx.duration(s, format!("{prefix}.{key}")),
    };
    let interval = get(&r.interval, "interval", Duration::from_secs(5))?;
    let timeout = get(&r.timeout, "timeout", Duration::from_secs(2))?;
    let start_period = get(&r.start_period, "start_period", Duration::from_secs(30))?;
    let span = |v: &Option<Spanned<String>>| v.as_ref().map(|s| s.span()).unwrap_or(h.span());
    if interval < Duration::from_secs(1) {
        return cx.err(
            &span(&r.interval),
            format!("{prefix}.interval"),
            "must be at least 1s (the probe runs at most once a second)".into(),
        );
    }
    if !command.is_empty() && timeout > Duration::from_secs(60) {
        return cx.err(
            &span(&r.timeout),
            format!("{prefix}.timeout"),
            "a command check's timeout is at most 60s (the probe run that makes it has a time limit)".into(),
        );
    }
    if timeout.is_zero() || timeout > interval {
        return cx.err(
            &span(&r.timeout),
            format!("{prefix}.timeout"),
            "must be more than 0 and not longer than interval".into(),
        );
    }
    let unhealthy_after = match &r.unhealthy_after {
        None => 3,
        Some(n) => {
            if !(1..=100).contains(n.get_ref()) {
                return cx.err(
                    &n.span(),
                    format!("{prefix}.unhealthy_after"),
                    format!("{} is out of range 1..100", n.get_ref()),
                );
            }
            *n.get_ref() as u32 // within 1..=100, checked just above
        }
    };
    Ok(Health {
        path,
        command,
        interval,
        timeout,
        unhealthy_after,
        start_period,
    })
}
