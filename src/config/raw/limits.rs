//! Resource limits (`memory`, `cpus`, `pids`, `nofile`) and capabilities (`cap_add`, `cap_drop`).

use super::*;

/// `cap_add`/`cap_drop`: capability names (`NET_RAW`, `CAP_NET_RAW`, any case), as `CAP_NAME`.
pub(super) fn validate_caps(
    cx: &Ctx<'_>,
    key: &str,
    raw: &Option<Spanned<Vec<Spanned<String>>>>,
) -> Result<Vec<String>, ConfigError> {
    let Some(list) = raw else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for c in list.get_ref() {
        let cap = crate::config::parse_capability(c.get_ref())
            .ok_or(())
            .or_else(|_| {
                cx.err(
                    &c.span(),
                    key.to_string(),
                    format!(
                        "{:?} is not a capability Linux knows (e.g. \"NET_RAW\", \"SYS_PTRACE\")",
                        c.get_ref()
                    ),
                )
            })?;
        let name = format!("CAP_{cap}");
        if !out.contains(&name) {
            out.push(name);
        }
    }
    Ok(out)
}

/// The raw limit keys of a service or process.
pub(super) type RawLimits<'a> = (
    &'a Option<Spanned<String>>,
    &'a Option<Spanned<toml::Value>>,
    &'a Option<Spanned<i64>>,
    &'a Option<Spanned<i64>>,
);

/// Largest `nofile`: the kernel's default `fs.nr_open`.
pub(super) const MAX_NOFILE: i64 = 1 << 20;

/// `memory`, `cpus`, `pids`, `nofile`.
pub(super) fn validate_limits(
    cx: &Ctx<'_>,
    prefix: &str,
    (memory, cpus, pids, nofile): RawLimits<'_>,
) -> Result<Limits, ConfigError> {
    let memory = match memory {
        None => None,
        Some(m) => Some(
            crate::config::parse_bytes(m.get_ref())
                .filter(|b| *b >= 1 << 20)
                .ok_or(())
                .or_else(|_| {
                    cx.err(
                        &m.span(),
                        format!("{prefix}.memory"),
                        format!("{:?}: give bytes with K, M, G or T (powers of 1024), at least 1M, e.g. \"512M\"", m.get_ref()),
                    )
                })?,
        ),
    };
    let cpus_milli = match cpus {
        None => None,
        Some(c) => {
            let v = match c.get_ref() {
                toml::Value::Integer(i) => Some(*i as f64),
                toml::Value::Float(f) => Some(*f),
                _ => None,
            };
            match v {
                Some(v) if (0.01..=1024.0).contains(&v) => Some((v * 1000.0).round() as u32),
                _ => {
                    return cx.err(
                        &c.span(),
                        format!("{prefix}.cpus"),
                        format!(
                            "{}: a number of CPUs from 0.01 to 1024, e.g. 1.5",
                            c.get_ref()
                        ),
                    )
                }
            }
        }
    };
    let count =
        |v: &Option<Spanned<i64>>, key: &str, max: i64| -> Result<Option<u64>, ConfigError> {
            match v {
                None => Ok(None),
                Some(n) if (1..=max).contains(n.get_ref()) => Ok(Some(*n.get_ref() as u64)),
                Some(n) => cx.err(
                    &n.span(),
                    format!("{prefix}.{key}"),
                    format!("{}: from 1 to {max}", n.get_ref()),
                ),
            }
        };
    Ok(Limits {
        memory,
        cpus_milli,
        pids: count(pids, "pids", 4_194_304)?,
        nofile: count(nofile, "nofile", MAX_NOFILE)?,
    })
}
