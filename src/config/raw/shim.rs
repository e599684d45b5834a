//! The `[shim]` table: host settings (port range, nginx unit, ...).

use super::*;

/// The `[shim]` table.
pub(super) fn validate_shim(cx: &Ctx<'_>, shim: &RawShim) -> Result<HostSettings, ConfigError> {
    let mut s = HostSettings::default();
    if let Some(range) = &shim.port_range {
        s.port_range = validate_port_range(cx, range)?;
    }
    if let Some(unit) = &shim.nginx_unit {
        let u = unit.get_ref();
        let ok = u.ends_with(".service")
            && u.len() > 8
            && u.chars()
                .all(|c| c.is_ascii_alphanumeric() || ":_.@-".contains(c));
        if !ok {
            return cx.err(
                &unit.span(),
                "shim.nginx_unit".into(),
                format!("{u:?} is not a service unit name like \"nginx.service\""),
            );
        }
        s.nginx_unit = u.clone();
    }
    if let Some(sw) = &shim.switch {
        s.switch = match sw.get_ref().as_str() {
            "reload" => crate::config::SwitchMode::Reload,
            "nftables" => crate::config::SwitchMode::Nftables,
            other => {
                return cx.err(
                    &sw.span(),
                    "shim.switch".into(),
                    format!("{other:?} is not a switch: use \"reload\" (rewrite the upstream file, reload nginx) or \"nftables\" (a stable address per process, the switch in the kernel)"),
                )
            }
        };
    }
    if let Some(d) = &shim.restart_max_delay {
        let key = "shim.restart_max_delay".to_string();
        let v = cx.duration(d, key.clone())?;
        if v < crate::config::RESTART_SEC {
            return cx.err(
                &d.span(),
                key,
                format!(
                    "must be at least the first restart delay ({})",
                    crate::config::format_duration(crate::config::RESTART_SEC)
                ),
            );
        }
        s.restart_max_delay = v;
    }
    for r in shim.insecure_registries.iter().flatten() {
        if let Err(m) = crate::image::validate_registry_host(r.get_ref()) {
            return cx.err(&r.span(), "shim.insecure_registries".into(), m);
        }
        s.insecure_registries.push(r.get_ref().to_ascii_lowercase());
    }
    if let Some(f) = &shim.auth_file {
        let path = PathBuf::from(f.get_ref());
        if !path.is_absolute() {
            return cx.err(
                &f.span(),
                "shim.auth_file".into(),
                format!("{:?} must be an absolute path", f.get_ref()),
            );
        }
        s.auth_file = path;
    }
    Ok(s)
}

/// `[shim] port_range`: two ports within 1024..65535, the first not above the second.
pub(super) fn validate_port_range(
    cx: &Ctx<'_>,
    range: &Spanned<[i64; 2]>,
) -> Result<(u16, u16), ConfigError> {
    let [lo, hi] = *range.get_ref();
    let key = "shim.port_range".to_string();
    if !(1024..=65535).contains(&lo) || !(1024..=65535).contains(&hi) {
        return cx.err(
            &range.span(),
            key,
            format!("[{lo}, {hi}]: ports must be within 1024..65535"),
        );
    }
    if lo > hi {
        return cx.err(
            &range.span(),
            key,
            format!("[{lo}, {hi}]: the first port must not be above the second"),
        );
    }
    // Proven by the range checks just above.
    Ok((lo as u16, hi as u16))
}
